//! The cluster an integration test runs against: a client for the cluster KUBECONFIG names (the
//! test API server `scripts/e2e-apiserver.sh` starts, or a real cluster), DiffKeeper's CRDs, and
//! a namespace of the test's own.
//!
//! The test API server has no kubelet, no controllers (no garbage collector, no namespace
//! controller) and no built-in type defaulting, so nothing here relies on any of them; the same
//! tests run unchanged against kind or k3s.

#![warn(missing_docs)]

pub mod sockets;

pub use sockets::{loopback_listener, pass_listener, ReservedPort};

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// A client for the cluster under test. Fails loudly when there is none: these tests never skip.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "no cluster to test against: KUBECONFIG is not set. Run `sudo bash scripts/test.sh`, \
             which starts the test API server; or start it yourself with `bash \
             scripts/e2e-apiserver.sh install && bash scripts/e2e-apiserver.sh start DIR` and \
             export the variables of DIR/env (`set -a; source DIR/env; set +a`); or point \
             KUBECONFIG at a cluster"
        );
    }
    Client::try_default()
        .await
        .expect("connecting to the cluster named by KUBECONFIG")
}

/// Applies DiffKeeper's CRDs (server-side, as `kubectl apply --server-side` would) and waits
/// until the API server serves them.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in diffkeeper_api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("diffkeeper-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status?.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not established after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A namespace of the test's own, named `{prefix}-{pid}-{n}` (keep `prefix` short: a namespace's
/// name is at most 63 characters), deleted when dropped. Best effort: the test API server runs no
/// namespace controller to empty it.
///
/// The tests must run on a multi-threaded runtime (`#[tokio::test(flavor = "multi_thread")]`):
/// the drop blocks one worker while the client's connection is driven on another.
pub struct TestNamespace {
    /// The namespace's generated name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a namespace named `prefix` and a unique suffix, deleted again on drop.
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating the test namespace {name}: {e}"));
        TestNamespace {
            name,
            client: client.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Drop cannot await; a short thread of its own deletes the namespace.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::default())
                        .await;
                });
        })
        .join();
    }
}
