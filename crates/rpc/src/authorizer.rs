//! Who is calling (TokenReview) and may they (SubjectAccessReview), asked of the Kubernetes API
//! server so that access to recordings follows the RBAC people already manage.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The API group of Recordings: RBAC rules for the agent's API name its resources.
pub(crate) const GROUP: &str = "diffkeeper.io";
pub(crate) const RESOURCE: &str = "recordings";

/// How long an answer is reused: long enough that a stream of calls (a follow, a retrying
/// snapshot) is not a stream of reviews, short enough that a revoked binding or token stops
/// working almost at once.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Bounds the memory a flood of distinct (garbage) tokens can take.
const CACHE_MAX_ENTRIES: usize = 4096;

/// Authenticates (TokenReview) and authorizes (SubjectAccessReview) callers against the
/// Kubernetes API server, caching answers briefly by token hash.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    users: Mutex<ExpiringMap<TokenKey, Option<Arc<UserInfo>>>>,
    decisions: Mutex<ExpiringMap<(TokenKey, Access), bool>>,
}

/// SHA-256 of a bearer token: what the caches hold instead of the token itself.
type TokenKey = [u8; 32];

/// The user a token belongs to, as the TokenReview said.
#[derive(Debug)]
struct UserInfo {
    name: String,
    uid: Option<String>,
    groups: Option<Vec<String>>,
    extra: Option<BTreeMap<String, Vec<String>>>,
}

/// An authenticated caller of one RPC.
#[derive(Clone)]
pub(crate) struct Caller {
    key: TokenKey,
    user: Arc<UserInfo>,
}

impl Caller {
    pub(crate) fn name(&self) -> &str {
        &self.user.name
    }
}

/// One question for the SubjectAccessReview: `verb` on recordings (or a subresource of them) in
/// `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Access {
    pub verb: &'static str,
    pub subresource: Option<&'static str>,
    pub namespace: String,
}

impl Access {
    pub(crate) fn export(namespace: &str) -> Access {
        Access {
            verb: "get",
            subresource: Some("export"),
            namespace: namespace.to_string(),
        }
    }

    pub(crate) fn log(namespace: &str) -> Access {
        Access {
            verb: "get",
            subresource: Some("log"),
            namespace: namespace.to_string(),
        }
    }

    pub(crate) fn list(namespace: &str) -> Access {
        Access {
            verb: "list",
            subresource: None,
            namespace: namespace.to_string(),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {RESOURCE}", self.verb)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        write!(f, " (API group {GROUP}) in namespace {}", self.namespace)
    }
}

impl Authorizer {
    /// Asks the API server `client` talks to. Its identity needs `create` on
    /// tokenreviews.authentication.k8s.io and subjectaccessreviews.authorization.k8s.io
    /// (ClusterRole system:auth-delegator).
    pub fn kubernetes(client: kube::Client) -> Self {
        Authorizer {
            inner: Arc::new(Inner {
                client,
                users: Mutex::new(ExpiringMap::default()),
                decisions: Mutex::new(ExpiringMap::default()),
            }),
        }
    }

    /// The caller of a request, from its `authorization: Bearer` metadata.
    pub(crate) async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        let key = token_key(token);
        let cached = self.inner.users.lock().expect("cache lock").get(&key);
        let user = match cached {
            Some(user) => user,
            None => {
                let user = self.review_token(token).await?.map(Arc::new);
                self.inner
                    .users
                    .lock()
                    .expect("cache lock")
                    .insert(key, user.clone());
                user
            }
        };
        match user {
            Some(user) => Ok(Caller { key, user }),
            None => Err(Status::unauthenticated(
                "the Kubernetes API server does not accept this bearer token (expired, revoked \
                 or from another cluster); use a current token of this cluster (log in again, or \
                 `kubectl create token SERVICEACCOUNT`)",
            )),
        }
    }

    /// Ok when `caller` may do `access`; PERMISSION_DENIED naming what is missing otherwise.
    pub(crate) async fn require(&self, caller: &Caller, access: &Access) -> Result<(), Status> {
        if self.allowed(caller, access).await? {
            return Ok(());
        }
        tracing::info!(user = %caller.name(), %access, "denied");
        Err(Status::permission_denied(format!(
            "user {:?} may not {access}; ask a cluster administrator for a Role granting it and a \
             RoleBinding to you in that namespace (ClusterRole diffkeeper-snapshot grants get \
             recordings/export; the admin role includes it)",
            caller.name()
        )))
    }

    /// Whether `caller` may do `access`.
    pub(crate) async fn allowed(&self, caller: &Caller, access: &Access) -> Result<bool, Status> {
        let cache_key = (caller.key, access.clone());
        let cached = self
            .inner
            .decisions
            .lock()
            .expect("cache lock")
            .get(&cache_key);
        if let Some(allowed) = cached {
            return Ok(allowed);
        }
        let allowed = self.review_access(&caller.user, access).await?;
        self.inner
            .decisions
            .lock()
            .expect("cache lock")
            .insert(cache_key, allowed);
        Ok(allowed)
    }

    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| api_failure("TokenReview", e))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            tracing::info!(
                reason = status.error.as_deref().unwrap_or("not authenticated"),
                "token rejected by the API server"
            );
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups,
            extra: user.extra,
        }))
    }

    async fn review_access(&self, user: &UserInfo, access: &Access) -> Result<bool, Status> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_string()),
                    group: Some(GROUP.to_string()),
                    resource: Some(RESOURCE.to_string()),
                    subresource: access.subresource.map(str::to_string),
                    namespace: Some(access.namespace.clone()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.inner.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| api_failure("SubjectAccessReview", e))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    const MISSING: &str = "no bearer token: pass your Kubernetes token as `authorization: Bearer \
                           <token>` metadata (kubectl diffkeeper sends your kubeconfig's \
                           credentials; snapshot Pods send their ServiceAccount token)";
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated(MISSING))?;
    let value = value.to_str().map_err(|_| {
        Status::unauthenticated("the authorization metadata is not text; send `Bearer <token>`")
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Status::unauthenticated(MISSING));
    }
    Ok(token)
}

fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

/// A failed review is the agent's problem, not the caller's: UNAVAILABLE when the API server
/// could not be reached (try again), INTERNAL when it refused the agent (fix its RBAC).
fn api_failure(what: &str, e: kube::Error) -> Status {
    tracing::warn!(error = %e, "{what} failed");
    match &e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            Status::internal(format!(
                "the agent may not create {what}s ({e}); bind its ServiceAccount to ClusterRole \
                 system:auth-delegator (the chart does)"
            ))
        }
        _ => Status::unavailable(format!(
            "the agent cannot check callers with the Kubernetes API server right now ({what}: \
             {e}); try again shortly"
        )),
    }
}

/// A map whose entries vanish `CACHE_TTL` after insertion. Hand-made because it is this small:
/// a few lookups per call and at most `CACHE_MAX_ENTRIES` entries.
struct ExpiringMap<K, V> {
    entries: HashMap<K, (Instant, V)>,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V: Clone> ExpiringMap<K, V> {
    fn get(&mut self, key: &K) -> Option<V> {
        match self.entries.get(key) {
            Some((at, value)) if at.elapsed() < CACHE_TTL => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= CACHE_MAX_ENTRIES {
            self.entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if self.entries.len() >= CACHE_MAX_ENTRIES {
                // All fresh: a flood. Forgetting costs only repeated reviews.
                self.entries.clear();
            }
        }
        self.entries.insert(key, (Instant::now(), value));
    }
}
