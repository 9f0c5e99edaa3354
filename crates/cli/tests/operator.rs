//! The Recording API and the operator against a real API server (KUBECONFIG): the schema refuses
//! bad Recordings with messages a person can act on; the operator reports what it matches,
//! snapshots each recorded death exactly once (across restarts), and cleans up behind its
//! finalizer. The tests play the node agent's part by writing ContainerRecords, as agents do.

mod cluster;

use std::time::Duration;

use cluster::{eventually, Operator};
use diffkeeper_api::{
    ContainerRecord, Recording, SnapshotPhase, DEATH_LABEL, NODE_DATA_FINALIZER, RECORDING_LABEL,
};
use diffkeeper_test_cluster::{client, install_crds, TestNamespace};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn recording(name: &str, spec: Value) -> Recording {
    serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
        "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap()
}

fn untyped(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
        "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap()
}

async fn create_pod(
    api: &Api<Pod>,
    name: &str,
    labels: Value,
    annotations: Value,
    node: &str,
) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{ "name": "app", "image": "busybox:test", "imagePullPolicy": "Never",
                             "terminationMessagePath": "/dev/termination-log",
                             "terminationMessagePolicy": "File" }],
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"))
}

async fn set_pod_status(api: &Api<Pod>, name: &str, status: Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("patching status of pod {name}: {e}"));
}

/// What a node's agent writes when it starts recording a container.
async fn agent_records(
    client: &Client,
    ns: &str,
    rec: &Recording,
    pod: &Pod,
    node: &str,
    container_id: &str,
) -> ContainerRecord {
    let api: Api<ContainerRecord> = Api::namespaced(client.clone(), ns);
    let name = format!("{}-app", pod.name_any());
    let record: ContainerRecord = serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
        "metadata": {
            "name": name,
            "labels": { RECORDING_LABEL: rec.name_any() },
            "finalizers": [NODE_DATA_FINALIZER],
            "ownerReferences": [{ "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                                  "name": rec.name_any(), "uid": rec.uid().unwrap() }],
        },
        "spec": {
            "recording": rec.name_any(),
            "pod": { "name": pod.name_any(), "uid": pod.uid().unwrap() },
            "container": "app", "containerId": container_id, "node": node,
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &record)
        .await
        .expect("creating the ContainerRecord");
    let status = json!({ "status": {
        "phase": "Recording", "agent": format!("https://{node}.test:7443"), "bytes": 4096, "events": 12, "dropsHealed": 1,
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("record status")
}

async fn status_of(api: &Api<Recording>, name: &str) -> Option<diffkeeper_api::RecordingStatus> {
    api.get(name).await.ok()?.status
}

fn condition<'a>(
    status: &'a diffkeeper_api::RecordingStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_recordings_are_refused_with_messages_that_say_the_fix() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dk-invalid").await;
    // Untyped, so that Recordings the Rust type could not even hold reach the server too.
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<Recording>(&()),
    );
    let app = json!({ "matchLabels": { "app": "x" } });
    let cases = [
        (json!({ "selector": {} }), "spec.selector is empty"),
        (
            json!({ "selector": app, "snapshot": { "at": "5s" } }),
            "spec.snapshot.at must be \"exit\" or a duration before death",
        ),
        (
            json!({ "selector": app, "retention": { "maxAge": "forever" } }),
            "spec.retention.maxAge must be a duration",
        ),
        (
            json!({ "selector": app, "containers": ["Bad_Name"] }),
            "spec.containers holds container names",
        ),
        (
            json!({ "selector": app, "maxWriteCapture": "2Mi" }),
            "spec.maxWriteCapture must be a byte quantity between 0 and 1Mi",
        ),
        (
            json!({ "selector": app, "paths": { "include": ["var/log"] } }),
            "must be absolute paths inside the container",
        ),
        (
            json!({ "selector": app, "snapshot": { "keep": 0 } }),
            "spec.snapshot.keep must be at least 1",
        ),
        (
            json!({ "containers": ["app"] }),
            "spec.selector: Required value",
        ),
    ];
    for (i, (spec, expected)) in cases.iter().enumerate() {
        let err = api
            .create(
                &PostParams::default(),
                &untyped(&format!("bad-{i}"), spec.clone()),
            )
            .await
            .expect_err(&format!(
                "the API server accepted an invalid Recording: {spec}"
            ));
        let message = match err {
            kube::Error::Api(e) => {
                assert_eq!(
                    e.code, 422,
                    "refusal of {spec} should be 422 Invalid: {e:?}"
                );
                e.message
            }
            other => panic!("unexpected error for {spec}: {other}"),
        };
        assert!(
            message.contains(expected),
            "refusal of {spec}:\n  {message}\nshould say: {expected}"
        );
    }
    // And a good one passes, with the documented defaults filled in by the API server.
    let ok: Recording = api
        .create(
            &PostParams::default(),
            &untyped(
                "good",
                json!({ "selector": app, "snapshot": { "at": "-5s" } }),
            ),
        )
        .await
        .expect("a valid Recording is accepted")
        .try_parse()
        .unwrap();
    assert_eq!(ok.spec.retention.max_age, "72h");
    assert_eq!(ok.spec.snapshot.keep, 5);
    assert_eq!(ok.spec.snapshot.at, "-5s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_death_gets_exactly_one_snapshot_even_across_operator_restarts() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dk-snap").await;
    let recs: Api<Recording> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let records: Api<ContainerRecord> = Api::namespaced(client.clone(), &ns.name);

    let operator = Operator::start(&ns.name, "first");
    let rec = recs
        .create(
            &PostParams::default(),
            &recording(
                "flaky",
                json!({ "selector": { "matchLabels": { "app": "flaky" } } }),
            ),
        )
        .await
        .unwrap();
    let flaky = create_pod(
        &pods,
        "flaky-1",
        json!({ "app": "flaky" }),
        json!({}),
        "node-a",
    )
    .await;
    create_pod(
        &pods,
        "bystander",
        json!({ "app": "other" }),
        json!({}),
        "node-a",
    )
    .await;

    // The operator takes its finalizer, matches one pod (not the bystander), reports Ready.
    eventually(WAIT, "Recording Ready with 1 matched pod", || async {
        let s = status_of(&recs, "flaky").await?;
        (s.matched_pods == 1 && condition(&s, "Ready")?.status == "True").then_some(())
    })
    .await;
    let rec_now = recs.get("flaky").await.unwrap();
    assert!(rec_now
        .finalizers()
        .iter()
        .any(|f| f == diffkeeper_api::RECORDING_FINALIZER));
    // Snapshot Pods of this namespace get an identity the agent can authorize, and the CA.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    accounts
        .get("diffkeeper-snapshot")
        .await
        .expect("snapshot ServiceAccount");
    let binding = bindings
        .get("diffkeeper-snapshot")
        .await
        .expect("snapshot RoleBinding");
    assert_eq!(binding.role_ref.name, "diffkeeper-snapshot");
    let ca = configmaps
        .get("diffkeeper-agent-ca")
        .await
        .expect("CA ConfigMap");
    assert!(ca.data.unwrap()["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----"));

    // The agent on node-a starts recording the container: the operator sums what it reports.
    let container_id = "containerd://0123456789abcdef";
    set_pod_status(&pods, "flaky-1", json!({ "phase": "Running", "containerStatuses": [{
        "name": "app", "image": "busybox:test", "imageID": "", "ready": true, "restartCount": 0,
        "containerID": container_id, "state": { "running": { "startedAt": "2026-11-25T10:00:00Z" } } }] })).await;
    agent_records(&client, &ns.name, &rec, &flaky, "node-a", container_id).await;
    let s = eventually(WAIT, "status sums the agent's record", || async {
        let s = status_of(&recs, "flaky").await?;
        (s.recording_containers == 1 && s.bytes_recorded == 4096).then_some(s)
    })
    .await;
    assert_eq!(s.drops_healed, 1);
    assert_eq!(condition(&s, "Recording").unwrap().status, "True");

    // The container dies; the operator is killed the moment the snapshot's PVC appears, and a
    // second replica takes over.
    set_pod_status(&pods, "flaky-1", json!({ "phase": "Failed", "containerStatuses": [{
        "name": "app", "image": "busybox:test", "imageID": "", "ready": false, "restartCount": 0,
        "containerID": container_id, "state": { "terminated": { "exitCode": 1, "reason": "Error",
        "containerID": container_id, "startedAt": "2026-11-25T10:00:00Z", "finishedAt": "2026-11-25T10:00:04Z" } } }] })).await;
    let snapshots = ListParams::default().labels(&format!("{RECORDING_LABEL}=flaky,{DEATH_LABEL}"));
    eventually(WAIT, "a snapshot PVC", || async {
        (!pvcs.list(&snapshots).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    operator.kill();
    // The killed leader's Lease must expire before the next replica leads (15 s).
    let operator = Operator::start(&ns.name, "second");
    // A repeated event for the same death changes nothing.
    set_pod_status(&pods, "flaky-1", json!({ "message": "seen again" })).await;

    let snap = eventually(
        Duration::from_secs(60),
        "the snapshot in the Recording's status",
        || async {
            let s = status_of(&recs, "flaky").await?;
            s.snapshots.first().cloned()
        },
    )
    .await;
    let snap_pods = pods.list(&snapshots).await.unwrap().items;
    let snap_pvcs = pvcs.list(&snapshots).await.unwrap().items;
    assert_eq!(
        snap_pods.len(),
        1,
        "exactly one snapshot Pod: {:?}",
        snap_pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(snap_pvcs.len(), 1, "exactly one snapshot PVC");
    let snap_pod = &snap_pods[0];
    let spec = snap_pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some("node-a"),
        "pinned to the node the container ran on"
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    for owned in [snap_pod.owner_references(), snap_pvcs[0].owner_references()] {
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].uid, rec.uid().unwrap(), "owned by the Recording");
        assert_eq!(owned[0].controller, Some(true));
    }
    let args = spec.containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.contains(&format!("--pod-uid {}", flaky.uid().unwrap())),
        "{args}"
    );
    assert!(
        args.contains("--agent https://node-a.test:7443") && args.contains("--time exit"),
        "{args}"
    );
    assert_eq!(snap.pvc, snap_pvcs[0].name_any());
    assert_eq!(
        (snap.pod.as_str(), snap.node.as_str(), snap.phase),
        ("flaky-1", "node-a", SnapshotPhase::Pending)
    );

    // The snapshot Pod finishes (the node's kubelet would say so): its result reaches the status.
    set_pod_status(&pods, &snap_pod.name_any(), json!({ "phase": "Succeeded", "containerStatuses": [{
        "name": "snapshot", "image": "diffkeeper:test", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": { "exitCode": 0, "reason": "Completed",
                   "message": "{\"files\":3,\"bytes\":42}" } } }] })).await;
    let done = eventually(WAIT, "snapshot Succeeded in status", || async {
        let s = status_of(&recs, "flaky").await?;
        s.snapshots
            .first()
            .filter(|s| s.phase == SnapshotPhase::Succeeded)
            .cloned()
    })
    .await;
    assert_eq!((done.files, done.bytes), (3, 42));

    // Its metrics and health endpoints tell a scraper and the kubelet the same story.
    let (code, _) = cluster::http_get(&operator.http, "/readyz");
    assert_eq!(code, 200, "/readyz");
    let (code, metrics) = cluster::http_get(&operator.http, "/metrics");
    assert_eq!(code, 200, "/metrics");
    // (How many snapshots this replica started depends on when its predecessor was killed.)
    for line in [
        "diffkeeper_operator_leader 1",
        "diffkeeper_operator_snapshots_started_total ",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("diffkeeper_operator_reconciliations_total"),
        "{metrics}"
    );

    // A third replica after a clean stop: still exactly one snapshot of that death.
    assert!(operator.stop().success(), "operator exits 0 on SIGTERM");
    let operator = Operator::start(&ns.name, "third");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pods.list(&snapshots).await.unwrap().items.len(), 1);
    assert_eq!(pvcs.list(&snapshots).await.unwrap().items.len(), 1);

    // People see it happen as Events on the Recording.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("flaky"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SnapshotStarted"),
        "events on the Recording: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "SnapshotSucceeded"),
        "events on the Recording: {reasons:?}"
    );

    // Deleting the Recording runs the finalizer: records are released by the agent, snapshot
    // objects are removed (retention.onDelete defaults to Delete), then the Recording goes.
    recs.delete("flaky", &DeleteParams::default())
        .await
        .unwrap();
    let record_name = "flaky-1-app";
    eventually(WAIT, "the operator deletes the ContainerRecord", || async {
        records
            .get(record_name)
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    assert!(
        recs.get("flaky").await.is_ok(),
        "the Recording waits for the agent to release its record"
    );
    // The agent drops the node's history and lifts its finalizer.
    records
        .patch(
            record_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    eventually(WAIT, "the Recording is gone", || async {
        recs.get_opt("flaky").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        pods.list(&snapshots).await.unwrap().items.is_empty(),
        "snapshot Pod removed"
    );
    assert!(
        pvcs.list(&snapshots).await.unwrap().items.is_empty(),
        "snapshot PVC removed"
    );
    assert!(pods.get("bystander").await.is_ok(), "nothing else touched");
    assert!(
        accounts
            .get_opt("diffkeeper-snapshot")
            .await
            .unwrap()
            .is_none(),
        "the last Recording took its ServiceAccount"
    );
    assert!(bindings
        .get_opt("diffkeeper-snapshot")
        .await
        .unwrap()
        .is_none());
    assert!(configmaps
        .get_opt("diffkeeper-agent-ca")
        .await
        .unwrap()
        .is_none());
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_the_implicit_recording() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "dk-annot").await;
    let recs: Api<Recording> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let _operator = Operator::start(&ns.name, "only");
    create_pod(&pods, "plain", json!({ "app": "web" }), json!({}), "node-a").await;
    create_pod(
        &pods,
        "opted-in",
        json!({ "app": "web" }),
        json!({ "diffkeeper.io/record": "true" }),
        "node-a",
    )
    .await;
    let s = eventually(
        WAIT,
        "implicit Recording annotated-pods matching the annotated pod",
        || async {
            let s = status_of(&recs, diffkeeper_api::IMPLICIT_RECORDING).await?;
            (s.matched_pods == 1).then_some(s)
        },
    )
    .await;
    assert_eq!(condition(&s, "Ready").unwrap().status, "True");
    let implicit = recs.get(diffkeeper_api::IMPLICIT_RECORDING).await.unwrap();
    assert!(implicit.spec.require_annotation);
    assert_eq!(implicit.spec.snapshot.at, "exit", "defaults apply");
}
