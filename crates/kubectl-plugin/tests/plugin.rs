//! `kubectl-diffkeeper` as a user runs it, against a real API server (KUBECONFIG: the test API
//! server `scripts/e2e-apiserver.sh` starts, or a real cluster): `ls` lists the ContainerRecords
//! the tests write as agents do, in tables and JSON; `log` and `export` find the record of a
//! pod, dead or alive, and every way of not reaching its agent ends in a sentence saying why and
//! what to do. Reading history through a real agent is the end-to-end suite's part.

use std::path::Path;
use std::process::{Command, Output};

use diffkeeper_api::ContainerRecord;
use diffkeeper_test_cluster::{client, install_crds, ReservedPort, TestNamespace};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

/// Writes a ContainerRecord and its status, as a node's agent does.
async fn agent_records(
    client: &Client,
    ns: &str,
    pod: (&str, &str),
    container: &str,
    id: &str,
    node: &str,
    status: Value,
) {
    let api: Api<ContainerRecord> = Api::namespaced(client.clone(), ns);
    let name = format!("{}-{container}-{}", pod.0, &id[..6]);
    let record: ContainerRecord = serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
        "metadata": { "name": name },
        "spec": { "recording": "flaky", "pod": { "name": pod.0, "uid": pod.1 },
                  "container": container, "containerId": format!("containerd://{id}"),
                  "restartCount": 0, "node": node },
    }))
    .unwrap();
    api.create(&PostParams::default(), &record)
        .await
        .unwrap_or_else(|e| panic!("creating ContainerRecord {name}: {e}"));
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("writing the status of ContainerRecord {name}: {e}"));
}

/// A pod `web` that died (container `app`, restarted once) and kept a `sidecar`, on node-a.
async fn dead_web_pod(client: &Client, ns: &str) {
    let pod = ("web", "uid-web-1");
    agent_records(
        client,
        ns,
        pod,
        "app",
        "aaaa11112222333344445555",
        "node-a",
        json!({
            "phase": "Ended", "agent": "https://127.0.0.1:1", "firstEvent": "2025-03-01T10:00:00Z",
            "lastEvent": "2025-03-01T10:01:00Z", "endedAt": "2025-03-01T10:01:02Z", "exitCode": 137,
            "events": 40, "bytes": 2048, "gaps": 1,
        }),
    )
    .await;
    agent_records(client, ns, pod, "sidecar", "bbbb11112222333344445555", "node-a", json!({
        "phase": "Recording", "agent": "https://127.0.0.1:1", "firstEvent": "2025-03-01T10:00:00Z",
        "lastEvent": "2025-03-01T10:05:00Z", "events": 3, "bytes": 10,
    }))
    .await;
}

// ---------------------------------------------------------------------------------------------
// Running the plugin

fn plugin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-diffkeeper"))
        .args(args)
        .env("DIFFKEEPER_LOG", "error")
        .output()
        .expect("running kubectl-diffkeeper")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeds(args: &[&str]) -> String {
    let out = plugin(args);
    assert!(
        out.status.success(),
        "kubectl-diffkeeper {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command that must fail with kubectl's exit status 1 and an "error: " line; returns
/// what it said.
fn fails(args: &[&str]) -> String {
    let out = plugin(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kubectl-diffkeeper {} should fail with status 1; stdout:\n{}\nstderr:\n{err}",
        args.join(" "),
        stdout(&out)
    );
    assert!(
        err.starts_with("error: "),
        "not kubectl's error form: {err}"
    );
    err
}

fn assert_says(text: &str, what: &[&str]) {
    for w in what {
        assert!(text.contains(w), "expected {w:?} in:\n{text}");
    }
}

/// The CA certificate of the test API server: a real PEM the agent client accepts as a CA.
fn some_ca() -> String {
    if let Ok(ca) = std::env::var("DK_E2E_CA") {
        return ca;
    }
    let dir = std::env::temp_dir().join(format!("dk-plugin-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join("ca.crt");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// ls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_lists_the_recorded_containers_as_tables_and_json() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-ls").await;
    let other = TestNamespace::new(&client, "plugin-ls-other").await;
    dead_web_pod(&client, &ns.name).await;
    agent_records(
        &client,
        &other.name,
        ("db", "uid-db"),
        "postgres",
        "cccc11112222333344445555",
        "node-b",
        json!({ "phase": "Recording", "bytes": 5 }),
    )
    .await;

    let table = succeeds(&["ls", "-n", &ns.name]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two containers:\n{table}");
    assert_says(
        lines[0],
        &[
            "POD",
            "CONTAINER",
            "NODE",
            "PHASE",
            "FIRST EVENT",
            "LAST EVENT",
            "BYTES",
            "ENDED",
            "EXIT CODE",
        ],
    );
    assert!(!lines[0].contains("NAMESPACE"), "{table}");
    assert_says(
        lines[1],
        &[
            "web",
            "app",
            "node-a",
            "Ended",
            "2025-03-01T10:00:00Z",
            "2025-03-01T10:01:02Z",
            "137",
        ],
    );
    assert_says(lines[2], &["web", "sidecar", "node-a", "Recording"]);
    assert!(
        !table.contains("postgres"),
        "another namespace's record:\n{table}"
    );

    // The namespace also comes from the kubeconfig's context, and flags go after the command too.
    let wide = succeeds(&["-n", &ns.name, "ls", "-o", "wide"]);
    assert_says(
        &wide,
        &[
            "CONTAINER ID",
            "POD UID",
            "containerd://aaaa11112222333344445555",
            "uid-web-1",
            "flaky",
            "https://127.0.0.1:1",
        ],
    );

    let all = succeeds(&["ls", "-A"]);
    assert!(
        all.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all}"
    );
    assert_says(&all, &[&ns.name, &other.name, "postgres", "node-b"]);

    let json: Value = serde_json::from_str(&succeeds(&["ls", "-n", &ns.name, "-o", "json"]))
        .expect("ls -o json prints JSON");
    let rows = json.as_array().expect("a JSON array of containers");
    assert_eq!(rows.len(), 2);
    let app = &rows[0];
    assert_eq!(app["namespace"], ns.name.as_str());
    assert_eq!(app["pod"], "web");
    assert_eq!(app["podUid"], "uid-web-1");
    assert_eq!(app["container"], "app");
    assert_eq!(app["containerId"], "containerd://aaaa11112222333344445555");
    assert_eq!(app["node"], "node-a");
    assert_eq!(app["phase"], "Ended");
    assert_eq!(app["exitCode"], 137);
    assert_eq!(app["bytes"], 2048);
    assert_eq!(app["gaps"], 1);
    assert_eq!(app["endedAt"], "2025-03-01T10:01:02Z");
    assert_eq!(rows[1]["endedAt"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_of_a_namespace_without_records_says_so_on_stderr() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-empty").await;
    let out = plugin(&["ls", "-n", &ns.name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out).trim(),
        format!("No recorded containers found in {} namespace.", ns.name)
    );
    let json: Value =
        serde_json::from_str(&succeeds(&["ls", "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!(json, json!([]));
}

// ---------------------------------------------------------------------------------------------
// log and export: finding the record, then the agent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_never_recorded_is_a_clear_error() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-gone").await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("files");
    let err = fails(&[
        "export",
        "pod/gone",
        "-n",
        &ns.name,
        "--time=exit",
        "--out",
        out.to_str().unwrap(),
        "--agent-ca",
        &some_ca(),
    ]);
    assert_says(
        &err,
        &[
            "no recorded container of pod gone in namespace",
            &ns.name,
            "kubectl diffkeeper ls -n",
        ],
    );
    assert!(!out.exists(), "nothing is written for a failed export");
    let err = fails(&["log", "gone", "-n", &ns.name, "--agent-ca", &some_ca()]);
    assert_says(&err, &["no recorded container of pod gone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_is_chosen_like_kubectl_does() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-choose").await;
    dead_web_pod(&client, &ns.name).await;
    let ca = some_ca();
    let err = fails(&["log", "pod/web", "-n", &ns.name, "--agent-ca", &ca]);
    assert_says(
        &err,
        &["a container name must be specified for pod web, choose one of: [app sidecar]"],
    );
    let err = fails(&[
        "log",
        "pod/web",
        "-c",
        "db",
        "-n",
        &ns.name,
        "--agent-ca",
        &ca,
    ]);
    assert_says(
        &err,
        &["container db is not recorded in pod web; recorded: app, sidecar"],
    );
    let err = fails(&[
        "log",
        "pod/web",
        "--container-id",
        "ffff",
        "-n",
        &ns.name,
        "--agent-ca",
        &ca,
    ]);
    assert_says(
        &err,
        &["no recorded incarnation of pod web has container id ffff"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_said_with_the_node_that_keeps_the_history() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-reach").await;
    dead_web_pod(&client, &ns.name).await;
    let ca = some_ca();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("files");

    // --agent-address: a real TCP connection refused (a port bound for the test's lifetime but
    // not listening, so nothing else can answer on it).
    let closed = ReservedPort::new();
    let address = closed.addr().to_string();
    let err = fails(&[
        "export",
        "pod/web",
        "-c",
        "app",
        "-n",
        &ns.name,
        "--time=exit-5s",
        "--out",
        out.to_str().unwrap(),
        "--agent-address",
        &address,
        "--agent-ca",
        &ca,
    ]);
    assert_says(
        &err,
        &[
            &format!("could not reach the agent at {address}"),
            "lives only on node node-a",
            "pod/web container app (containerd://aaaa11112222)",
        ],
    );
    assert!(
        !out.exists(),
        "nothing is written when the agent is not reached"
    );

    // --direct: the address the record advertises (status.agent).
    let err = fails(&[
        "log",
        "pod/web",
        "--container-id",
        "bbbb",
        "-n",
        &ns.name,
        "--direct",
        "--agent-ca",
        &ca,
    ]);
    assert_says(
        &err,
        &[
            "could not reach the agent at 127.0.0.1:1 (advertised by node node-a)",
            "container sidecar",
        ],
    );

    // Through the API server: the agent pods run on other nodes only.
    let agents = TestNamespace::new(&client, "plugin-agents").await;
    agent_pod(&client, &agents.name, "diffkeeper-agent-b", "node-b").await;
    let through_api = [
        "log",
        "pod/web",
        "-c",
        "app",
        "-n",
        &ns.name,
        "--agent-namespace",
        &agents.name,
        "--agent-ca",
        &ca,
    ];
    let err = fails(&through_api);
    assert_says(
        &err,
        &[
            "no running DiffKeeper agent on node node-a",
            &agents.name,
            "lives only on that node",
            "--agent-namespace",
        ],
    );

    // With node-a's agent pod running, the plugin asks the API server for a port-forward to it.
    // The API server forwards to the kubelet of the pod's node, and there is no Node node-a:
    // refused, saying why, with the way around it. (The path that succeeds, through a node's
    // kubelet, is e2e/node's scenario 9.)
    agent_pod(&client, &agents.name, "diffkeeper-agent-a", "node-a").await;
    let err = fails(&through_api);
    assert_says(
        &err,
        &[
            &format!(
                "port-forward to the agent pod {}/diffkeeper-agent-a",
                agents.name
            ),
            "--direct or --agent-address",
            "nodes \"node-a\" not found",
            "lives only on node node-a",
        ],
    );
}

/// A pod as the chart's agent DaemonSet makes them (labels, the grpc port), bound to `node` and
/// reported running, as its kubelet would.
async fn agent_pod(client: &Client, ns: &str, name: &str, node: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": {
            "app.kubernetes.io/name": "diffkeeper", "app.kubernetes.io/instance": "diffkeeper",
            "app.kubernetes.io/component": "agent" } },
        "spec": {
            "nodeName": node, "hostNetwork": true, "restartPolicy": "Always",
            "containers": [{ "name": "agent", "image": "diffkeeper:test", "imagePullPolicy": "Never",
                             "ports": [{ "name": "grpc", "containerPort": 7443, "protocol": "TCP" }],
                             "terminationMessagePath": "/dev/termination-log",
                             "terminationMessagePolicy": "File" }],
            "dnsPolicy": "ClusterFirstWithHostNet", "schedulerName": "default-scheduler",
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": { "phase": "Running" } })),
    )
    .await
    .unwrap_or_else(|e| panic!("reporting pod {name} running: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_ca_comes_from_the_operators_configmap() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-ca").await;
    dead_web_pod(&client, &ns.name).await;
    let err = fails(&["log", "pod/web", "-c", "app", "-n", &ns.name, "--direct"]);
    assert_says(
        &err,
        &[
            &format!("ConfigMap {}/diffkeeper-agent-ca", ns.name),
            "is missing",
            "--agent-ca",
        ],
    );

    // With the ConfigMap in place, the plugin gets as far as the agent (which is not there).
    let pem = std::fs::read_to_string(some_ca()).unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "diffkeeper-agent-ca" }, "data": { "ca.crt": pem },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let err = fails(&["log", "pod/web", "-c", "app", "-n", &ns.name, "--direct"]);
    assert_says(&err, &["could not reach the agent at 127.0.0.1:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_a_bearer_token_are_told_to_pass_one() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-cert").await;
    dead_web_pod(&client, &ns.name).await;
    let dir = tempfile::tempdir().unwrap();
    // The same cluster, as a user with a client certificate only.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["someone".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = std::env::var("DK_E2E_SERVER").unwrap_or_else(|_| cluster_server());
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "c", "cluster": { "server": server, "insecure-skip-tls-verify": true } }],
            "users": [{ "name": "someone", "user": {
                "client-certificate-data": b64(cert.pem().as_bytes()),
                "client-key-data": b64(key.serialize_pem().as_bytes()) } }],
            "contexts": [{ "name": "c", "context": { "cluster": "c", "user": "someone", "namespace": ns.name } }],
            "current-context": "c",
        }))
        .unwrap(),
    )
    .unwrap();
    let err = fails(&[
        "export",
        "pod/web",
        "-c",
        "app",
        "--time=exit",
        "--tar=-",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--agent-address",
        "127.0.0.1:1",
    ]);
    assert_says(
        &err,
        &[
            "authenticates with a client certificate",
            "--token",
            "--token-file",
            "kubectl create token",
        ],
    );

    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let err = fails(&[
        "log",
        "pod/web",
        "-c",
        "app",
        "-n",
        &ns.name,
        "--token-file",
        empty.to_str().unwrap(),
        "--agent-address",
        "127.0.0.1:1",
    ]);
    assert_says(&err, &["the token file", "is empty"]);
}

// ---------------------------------------------------------------------------------------------
// Arguments (refused before any cluster is asked)

#[test]
fn argument_errors_say_what_is_wrong() {
    let usage = |args: &[&str], what: &[&str]| {
        let out = plugin(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} is a usage error:\n{}",
            stderr(&out)
        );
        assert_says(&stderr(&out), what);
    };
    usage(&["export", "pod/web", "--out", "/tmp/x"], &["--time"]);
    usage(&["export", "pod/web", "--time=exit"], &["--out", "--tar"]);
    usage(
        &[
            "export",
            "pod/web",
            "--time=exit",
            "--out",
            "/tmp/x",
            "--tar",
            "x.tar",
        ],
        &["cannot be used with"],
    );
    usage(
        &["export", "deployment/web", "--time=exit", "--tar=-"],
        &["only pods have recorded containers"],
    );
    usage(
        &[
            "export",
            "pod/web",
            "--time=exit",
            "--tar=-",
            "--tree",
            "some",
        ],
        &["full", "changes"],
    );
    usage(&["log", "pod/web", "-o", "yaml"], &["json"]);
    usage(
        &["log", "pod/web", "--direct", "--agent-address", "h:1"],
        &["cannot be used with"],
    );
    usage(&["ls", "-o", "yaml"], &["json", "wide"]);
    usage(&["log"], &["pod/NAME"]);
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The API server's URL from the KUBECONFIG file, for a kubeconfig of another user.
fn cluster_server() -> String {
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let text = std::fs::read_to_string(Path::new(&path)).expect("reading KUBECONFIG");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server: line in KUBECONFIG")
        .trim()
        .to_string()
}
