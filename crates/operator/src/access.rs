//! What snapshot Pods need to reach an agent, provisioned by the operator so that nothing has to
//! be set up by hand per namespace:
//! - one CA for the whole install (Secret `diffkeeper-ca` in the operator's namespace); agents
//!   mint their serving certificates from it, clients trust it;
//! - in each namespace with a Recording: ConfigMap `diffkeeper-agent-ca` (the CA certificate),
//!   ServiceAccount `diffkeeper-snapshot`, and a RoleBinding of it to ClusterRole
//!   `diffkeeper-snapshot` (`get recordings/export`), which the agent checks with a
//!   SubjectAccessReview before it exports anything.

use std::collections::BTreeMap;

use diffkeeper_api::OPERATOR_MANAGER;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ByteString, Resource as _};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// The Secret (in the operator's namespace) holding the CA: `ca.crt` and `ca.key`.
pub const CA_SECRET: &str = "diffkeeper-ca";
/// The ClusterRole the chart defines for snapshot Pods.
pub const SNAPSHOT_CLUSTER_ROLE: &str = "diffkeeper-snapshot";

/// Why snapshot access could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// An API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// The CA could not be generated.
    #[error("generating the CA: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The CA Secret exists without its certificate.
    #[error(
        "Secret {namespace}/{CA_SECRET} has no ca.crt; delete it and the operator makes a new CA"
    )]
    BrokenSecret {
        /// The Secret's namespace.
        namespace: String,
    },
}

/// The CA certificate (PEM), creating the CA the first time. Two replicas racing both try to
/// create it; the loser reads the winner's.
pub async fn ensure_ca(client: &Client, namespace: &str) -> Result<String, AccessError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if secrets.get_opt(CA_SECRET).await?.is_none() {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "diffkeeper agents CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                labels: Some(managed()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                ("ca.crt".to_string(), ByteString(cert.pem().into_bytes())),
                (
                    "ca.key".to_string(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => tracing::info!(%namespace, "created the agents' CA in Secret {CA_SECRET}"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let secret = secrets.get(CA_SECRET).await?;
    secret
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .ok_or_else(|| AccessError::BrokenSecret {
            namespace: namespace.into(),
        })
}

/// Makes sure a namespace has what its snapshot Pods need (server-side apply: idempotent).
pub async fn ensure_namespace(
    client: &Client,
    namespace: &str,
    service_account: &str,
    ca_configmap: &str,
    ca_pem: &str,
) -> Result<(), AccessError> {
    let apply = PatchParams::apply(OPERATOR_MANAGER).force();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        labels: Some(managed()),
        ..Default::default()
    };
    let account = ServiceAccount {
        metadata: meta(service_account),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .patch(service_account, &apply, &Patch::Apply(&account))
        .await?;
    let binding = RoleBinding {
        metadata: meta(service_account),
        role_ref: RoleRef {
            api_group: ClusterRole::GROUP.into(),
            kind: ClusterRole::KIND.into(),
            name: SNAPSHOT_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: ServiceAccount::KIND.into(),
            name: service_account.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .patch(service_account, &apply, &Patch::Apply(&binding))
        .await?;
    let ca = ConfigMap {
        metadata: meta(ca_configmap),
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(ca_configmap, &apply, &Patch::Apply(&ca))
        .await?;
    Ok(())
}

/// Removes them when a namespace's last Recording is gone, so nothing is left that nobody owns.
pub async fn remove_namespace(
    client: &Client,
    namespace: &str,
    service_account: &str,
    ca_configmap: &str,
) -> Result<(), AccessError> {
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(AccessError::from(e)),
    };
    let dp = DeleteParams::default();
    gone(
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .delete(service_account, &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .delete(service_account, &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .delete(ca_configmap, &dp)
            .await
            .map(|_| ()),
    )?;
    Ok(())
}

fn managed() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        OPERATOR_MANAGER.to_string(),
    )])
}
