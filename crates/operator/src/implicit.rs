//! The implicit Recording: a pod annotated `diffkeeper.io/record: "true"` is recorded with the
//! defaults even where no Recording selects it. The operator keeps one Recording named
//! `annotated-pods` in each namespace that has such a pod; it selects exactly the annotated pods
//! (`requireAnnotation: true`, empty selector). It stays when the pods go, because it owns their
//! history; delete it to drop that.

use diffkeeper_api::{pod_is_annotated, Recording, IMPLICIT_RECORDING, OPERATOR_MANAGER};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

/// Watches pods and makes sure every namespace with an annotated pod has its implicit Recording.
pub async fn run(client: Client, namespace: Option<String>) {
    let pods: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut stream = watcher(pods, watcher::Config::default().any_semantic())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let pod = match stream.try_next().await {
            Ok(Some(pod)) => pod,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "watching pods for the record annotation");
                continue;
            }
        };
        let Some(namespace) = pod.namespace() else {
            continue;
        };
        if !pod_is_annotated(&pod) {
            continue;
        }
        match ensure(&client, &namespace).await {
            // Applied on every event of an annotated pod: a no-op when nothing changed, and it
            // brings the Recording back if someone deleted it while the pod still asks for it.
            Ok(()) => {
                info!(%namespace, pod = %pod.name_any(), "annotated pod: implicit Recording {IMPLICIT_RECORDING} ensured")
            }
            Err(e) => {
                warn!(%namespace, error = %e, "could not create the implicit Recording; will retry on the next pod event")
            }
        }
    }
}

async fn ensure(client: &Client, namespace: &str) -> Result<(), kube::Error> {
    let api: Api<Recording> = Api::namespaced(client.clone(), namespace);
    // Apply only what makes it the implicit one; defaults fill the rest, and a person's later
    // edits to other fields (retention, snapshot) are theirs to keep.
    let recording = json!({
        "apiVersion": Recording::api_version(&()),
        "kind": Recording::kind(&()),
        "metadata": {
            "name": IMPLICIT_RECORDING,
            "labels": { "app.kubernetes.io/managed-by": OPERATOR_MANAGER },
        },
        "spec": { "selector": {}, "requireAnnotation": true },
    });
    api.patch(
        IMPLICIT_RECORDING,
        &PatchParams::apply(OPERATOR_MANAGER),
        &Patch::Apply(&recording),
    )
    .await?;
    Ok(())
}
