//! `diffkeeper snapshot`: what the operator's snapshot Pods run. Asks the node's agent for a dead
//! container's files at a moment, unpacks them into the snapshot PVC, and reports the outcome in
//! the Pod's termination message (JSON: `files`, `bytes`, or `error`), which the operator reads.

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use diffkeeper_api::SnapshotReport;
use diffkeeper_rpc::export_request::Tree;
use diffkeeper_rpc::{ContainerSelector, ExportRequest, ExportSummary, RpcError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent may be restarting (a node under pressure is often why a container died): keep
/// trying this long before giving up.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Kubernetes keeps at most this much of a termination message; longer JSON would be cut and
/// no longer parse.
const TERMINATION_MESSAGE_MAX: usize = 4096;

#[derive(Clone, Copy, clap::ValueEnum)]
enum TreeArg {
    /// The container's whole view: image files plus its changes.
    Full,
    /// Only what the container created or changed.
    Changes,
}

#[derive(clap::Args)]
pub struct Args {
    /// The node's agent: HOST:PORT or https://HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    agent: String,
    /// The CA certificate (PEM) the agent's certificate must come from (ConfigMap
    /// diffkeeper-agent-ca, key ca.crt).
    #[arg(long, value_name = "PATH")]
    agent_ca: PathBuf,
    /// The name to check in the agent's certificate (default: the host of --agent).
    #[arg(long, value_name = "NAME")]
    agent_server_name: Option<String>,
    /// The recorded pod's namespace.
    #[arg(long)]
    namespace: String,
    #[arg(long, value_name = "UID")]
    pod_uid: String,
    /// The container's name in the pod.
    #[arg(long, value_name = "NAME")]
    container: String,
    /// The incarnation (default: the latest).
    #[arg(long, value_name = "ID", default_value = "")]
    container_id: String,
    /// The moment: exit (the container's last change), exit-5s, 2m14s (since its start), an
    /// RFC3339 time, end, @seq:N.
    #[arg(long, default_value = "exit", allow_hyphen_values = true)]
    time: String,
    #[arg(long, value_enum, default_value = "full")]
    tree: TreeArg,
    /// Only paths matching this glob (e.g. '/var/log/**'); repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// Where to unpack the files (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The bearer token the agent checks (it must allow get recordings/export).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    token_file: PathBuf,
    /// Where the outcome is written as JSON for the operator.
    #[arg(long, value_name = "PATH", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(snapshot(&a));
    let report = termination_message(&result);
    if let Err(e) = std::fs::write(&a.termination_log, report) {
        // The outcome still shows in the exit code and on stderr; do not hide the real error.
        eprintln!(
            "diffkeeper: warning: cannot write the termination message to {}: {e}",
            a.termination_log.display()
        );
    }
    let summary = result?;
    eprintln!(
        "diffkeeper: snapshot of container {} of pod {} at {} unpacked into {}: {summary}",
        a.container,
        a.pod_uid,
        summary.time,
        a.out.display(),
    );
    if !summary.inexact.is_empty() {
        eprintln!(
            "diffkeeper: warning: {} file(s) were not known byte-exactly at that moment (capture \
             records were lost, or they existed before recording): {}",
            summary.inexact.len(),
            summary.inexact.join(", ")
        );
    }
    if !summary.scope.is_empty() {
        eprintln!(
            "diffkeeper: note: the Recording's spec.paths kept {}: other paths were not recorded",
            summary.scope
        );
    }
    for skipped in &summary.skipped {
        eprintln!("diffkeeper: warning: left out {skipped}");
    }
    Ok(())
}

async fn snapshot(a: &Args) -> anyhow::Result<ExportSummary> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| {
            format!(
                "reading the bearer token {} (a snapshot Pod needs its ServiceAccount token \
                 mounted; elsewhere pass --token-file)",
                a.token_file.display()
            )
        })?
        .trim()
        .to_string();
    let ca = std::fs::read(&a.agent_ca).with_context(|| {
        format!(
            "reading the agents' CA certificate {} (ConfigMap diffkeeper-agent-ca, key ca.crt)",
            a.agent_ca.display()
        )
    })?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating the output directory {}", a.out.display()))?;
    let request = ExportRequest {
        container: Some(ContainerSelector {
            namespace: a.namespace.clone(),
            pod_uid: a.pod_uid.clone(),
            container: a.container.clone(),
            container_id: a.container_id.clone(),
        }),
        time: a.time.clone(),
        path_globs: a.paths.clone(),
        tree: match a.tree {
            TreeArg::Full => Tree::Full,
            TreeArg::Changes => Tree::Changes,
        }
        .into(),
    };
    let attempt = || export_once(a, &ca, &token, request.clone(), &a.out);
    let summary = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(8))
                .with_total_delay(Some(RETRY_FOR))
                .without_max_times(),
        )
        .when(RpcError::is_retryable)
        .notify(|e, wait| {
            eprintln!(
                "diffkeeper: {e}; trying again in {:.1}s",
                wait.as_secs_f64()
            )
        })
        .await
        .with_context(|| format!("exporting from the agent at {}", a.agent))?;
    Ok(summary)
}

async fn export_once(
    a: &Args,
    ca: &[u8],
    token: &str,
    request: ExportRequest,
    out: &Path,
) -> Result<ExportSummary, RpcError> {
    let mut client = diffkeeper_rpc::connect(
        &a.agent,
        ca,
        a.agent_server_name.as_deref(),
        Some(token.to_string()),
    )
    .await?;
    diffkeeper_rpc::export_to_dir(&mut client, request, out, |_| {}).await
}

/// The JSON the operator reads from the snapshot Pod's termination message.
fn termination_message(result: &anyhow::Result<ExportSummary>) -> String {
    let json = |report: &SnapshotReport| {
        serde_json::to_string(report).expect("a report of numbers and strings serializes")
    };
    match result {
        Ok(s) => json(&SnapshotReport {
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            bytes: s.bytes,
            time: Some(s.time.clone()),
            inexact: s.inexact.len() as u64,
            skipped: s.skipped.len() as u64,
            error: None,
        }),
        Err(e) => {
            let mut error = format!("{e:#}");
            loop {
                let message = json(&SnapshotReport::failed(error.clone()));
                if message.len() <= TERMINATION_MESSAGE_MAX {
                    return message;
                }
                // Cut in characters, not bytes; the rest is on the Pod's log.
                let keep = error.chars().count() * 3 / 4;
                error = error.chars().take(keep).collect::<String>() + "…";
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use diffkeeper_rpc::{
        HistoryError, HistoryView, NodeHistory, RecordedContainer, DEFAULT_MAX_REQUEST_BYTES,
    };
    use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Writer};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    /// `diffkeeper snapshot` as the operator's snapshot Pod runs it.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Snapshot(Args),
    }

    /// One finished recording: /app/data.txt holds "v1\n" from 2s and "v2\n" from 4s (of 5s).
    struct OneRecording {
        dir: PathBuf,
    }

    impl NodeHistory for OneRecording {
        fn node(&self) -> String {
            "node-1".into()
        }
        fn containers(&self) -> Vec<RecordedContainer> {
            vec![self.container()]
        }
        fn open(
            &self,
            selector: &diffkeeper_rpc::ContainerSelector,
        ) -> Result<HistoryView, HistoryError> {
            if selector.pod_uid != "uid-1" || selector.container != "app" {
                return Err(HistoryError::NotFound("no such container".into()));
            }
            Ok(HistoryView {
                container: self.container(),
                store: Store::open(&self.dir)
                    .map_err(|e| HistoryError::Unavailable(e.to_string()))?,
                image_layers: Vec::new(),
            })
        }
        fn store_bytes(&self) -> u64 {
            0
        }
    }

    impl OneRecording {
        fn container(&self) -> RecordedContainer {
            RecordedContainer {
                namespace: "shop".into(),
                pod_uid: "uid-1".into(),
                container: "app".into(),
                container_id: "containerd://abc".into(),
                ..Default::default()
            }
        }

        fn write(dir: &Path) -> OneRecording {
            const S: u64 = 1_000_000_000;
            let mut w = Writer::create(
                dir,
                RecordingInfo {
                    started_wall_ns: 1_795_600_800_000_000_000,
                    started_mono_ns: S,
                    ..Default::default()
                },
            )
            .unwrap();
            let node = w.new_node();
            let path = RecPath::normalize(b"/app/data.txt").unwrap();
            let ops = [
                (
                    2,
                    Op::Create {
                        node,
                        path,
                        mode: 0o640,
                    },
                ),
                (
                    2,
                    Op::Write {
                        node,
                        offset: 0,
                        data: b"v1\n".to_vec(),
                    },
                ),
                (
                    4,
                    Op::Write {
                        node,
                        offset: 0,
                        data: b"v2\n".to_vec(),
                    },
                ),
            ];
            for (at, op) in ops {
                w.append(Event {
                    time: S + at * S,
                    process: None,
                    op,
                })
                .unwrap();
            }
            w.finish(6 * S).unwrap();
            OneRecording {
                dir: dir.to_path_buf(),
            }
        }
    }

    fn new_ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The arguments of the operator's snapshot Pod for this death, with its mount paths moved
    /// under `tmp` and the token and termination log of the test.
    fn operator_args(agent: &str, at: &str, tmp: &Path, token: &str) -> Vec<String> {
        let recording: diffkeeper_api::Recording = serde_json::from_value(serde_json::json!({
            "apiVersion": <diffkeeper_api::Recording as kube::Resource>::api_version(&()),
            "kind": "Recording",
            "metadata": { "name": "rec", "namespace": "shop", "uid": "r-1" },
            "spec": { "selector": {}, "snapshot": { "at": at, "tree": "Changes" } },
        }))
        .unwrap();
        let death = diffkeeper_operator::snapshot::Death {
            key: diffkeeper_api::DeathKey {
                pod_uid: "uid-1".into(),
                container: "app".into(),
                container_id: "containerd://abc".into(),
            },
            pod_name: "web-1".into(),
            node: "node-1".into(),
            cause: diffkeeper_operator::snapshot::Cause::PodDeleted,
            died_at: None,
        };
        let template = diffkeeper_operator::SnapshotTemplate {
            image: "diffkeeper:test".into(),
            service_account: "diffkeeper-snapshot".into(),
            agent_ca_configmap: "diffkeeper-agent-ca".into(),
        };
        let pod = diffkeeper_operator::snapshot::pod_for(&recording, &death, agent, &template);
        let container = &pod.spec.unwrap().containers[0];
        let mut args: Vec<String> = container.command.clone().unwrap();
        for arg in container.args.clone().unwrap() {
            args.push(match arg.as_str() {
                "/snapshot" => tmp.join("out").display().to_string(),
                "/etc/diffkeeper/agent-ca/ca.crt" => tmp.join("ca.crt").display().to_string(),
                _ => arg,
            });
        }
        std::fs::write(tmp.join("token"), format!("{token}\n")).unwrap();
        args.extend([
            "--token-file".into(),
            tmp.join("token").display().to_string(),
        ]);
        args.extend([
            "--termination-log".into(),
            tmp.join("termination-log").display().to_string(),
        ]);
        args
    }

    fn run_as_pod(args: Vec<String>) -> anyhow::Result<()> {
        let Command::Snapshot(a) = Cli::parse_from(args).command;
        run(a)
    }

    fn token(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: this test needs the test Kubernetes API server. Run `sudo \
                 bash scripts/test.sh`, or `bash scripts/e2e-apiserver.sh start DIR` and export \
                 the variables of DIR/env"
            )
        })
    }

    #[test]
    fn a_snapshot_pod_unpacks_the_moment_and_reports_it_to_the_operator() {
        if std::env::var_os("KUBECONFIG").is_none() {
            token("KUBECONFIG");
        }
        let (admin, bob) = (token("DK_E2E_ADMIN_TOKEN"), token("DK_E2E_BOB_TOKEN"));
        let tmp = tempfile::tempdir().unwrap();
        let history = Arc::new(OneRecording::write(&tmp.path().join("rec")));
        let (ca_pem, ca_key) = new_ca();
        std::fs::write(tmp.path().join("ca.crt"), &ca_pem).unwrap();
        let identity = diffkeeper_rpc::mint_serving_identity(
            &ca_pem,
            &ca_key,
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
        .unwrap();
        // Bound but not listening until the agent starts: the Pod's first tries are refused,
        // and no other process can take the port meanwhile.
        let port = diffkeeper_test_cluster::ReservedPort::new();
        let agent = format!("https://{}", port.addr());

        // The Pod starts before the agent does: it keeps trying until the agent answers.
        // `exit-500ms` is 4.5s, after the second write.
        let args = operator_args(&agent, "-500ms", tmp.path(), &admin);
        assert!(
            args.windows(2).any(|w| w == ["--time", "exit-500ms"]),
            "{args:?}"
        );
        let pod = std::thread::spawn(move || run_as_pod(args));
        std::thread::sleep(Duration::from_millis(1500));
        let server = tokio::runtime::Runtime::new().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        server.block_on(async {
            let client = kube::Client::try_default().await.unwrap();
            let listener = port.listen();
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::spawn(diffkeeper_rpc::serve_on(
                listener,
                history.clone(),
                diffkeeper_rpc::Authorizer::kubernetes(client),
                identity,
                DEFAULT_MAX_REQUEST_BYTES,
                async move {
                    let _ = stopped.await;
                },
            ));
        });
        pod.join().unwrap().expect("the snapshot succeeds");
        let out = tmp.path().join("out");
        assert_eq!(std::fs::read(out.join("app/data.txt")).unwrap(), b"v2\n");
        let report = std::fs::read_to_string(tmp.path().join("termination-log")).unwrap();
        let report: SnapshotReport = serde_json::from_str(&report).unwrap();
        assert_eq!((report.files, report.bytes), (1, 3));
        assert_eq!(report.error, None);

        // What the operator makes of that message.
        let record = snapshot_status(&tmp.path().join("termination-log"), "Succeeded");
        assert_eq!((record.files, record.bytes), (1, 3));

        // Refused (bob may not export): a non-zero exit and the reason, for the operator.
        let tmp2 = tempfile::tempdir().unwrap();
        std::fs::write(tmp2.path().join("ca.crt"), &ca_pem).unwrap();
        let args = operator_args(&agent, "exit", tmp2.path(), &bob);
        let e = run_as_pod(args).unwrap_err();
        assert!(format!("{e:#}").contains("PermissionDenied"), "{e:#}");
        let record = snapshot_status(&tmp2.path().join("termination-log"), "Failed");
        let message = record.message.unwrap();
        assert!(
            message.contains("may not get recordings/export"),
            "{message}"
        );
        let _ = stop.send(());
    }

    /// The operator's status line for a snapshot Pod that ended with this termination message.
    fn snapshot_status(log: &Path, phase: &str) -> diffkeeper_api::SnapshotRecord {
        let message = std::fs::read_to_string(log).unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "snap", "namespace": "shop" },
            "status": { "phase": phase, "containerStatuses": [{
                "name": "snapshot", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": 0, "message": message } } }] },
        }))
        .unwrap();
        let recording: diffkeeper_api::Recording = serde_json::from_value(serde_json::json!({
            "apiVersion": <diffkeeper_api::Recording as kube::Resource>::api_version(&()),
            "kind": "Recording",
            "metadata": { "name": "rec", "namespace": "shop", "uid": "r-1" },
            "spec": { "selector": {} },
        }))
        .unwrap();
        let death = diffkeeper_operator::snapshot::Death {
            key: diffkeeper_api::DeathKey {
                pod_uid: "uid-1".into(),
                container: "app".into(),
                container_id: "containerd://abc".into(),
            },
            pod_name: "web-1".into(),
            node: "node-1".into(),
            cause: diffkeeper_operator::snapshot::Cause::PodDeleted,
            died_at: None,
        };
        diffkeeper_operator::snapshot::snapshot_record(&recording, &death, Some(&pod))
    }
}
