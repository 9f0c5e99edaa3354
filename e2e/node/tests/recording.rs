//! The whole product on one node with real containers: a real API server, a real containerd
//! driven through the CRI by the node simulator (kubelet's part), and the real operator, agent
//! (eBPF on this kernel), snapshot Pods and kubectl plugin, each as its built binary.
//!
//! What it shows (issue 6):
//! 1. a Recording selecting `app=flaky` records a pod that writes for a few seconds and exits 1;
//!    the operator's snapshot Pod writes the files at the moment of death into a PVC, byte-identical
//!    to what the container had; a pod without the label on the same node is never recorded;
//! 2. the same for a pod with the annotation `diffkeeper.io/record: "true"` and no Recording;
//! 3. `kubectl diffkeeper export pod/<dead pod> --time=<a moment in the middle>` returns the files
//!    the container itself copied aside at that moment;
//! 4. gRPC calls without credentials, or with a token not allowed to export, are refused;
//! 5. the agent killed with SIGKILL and restarted mid-recording keeps recording, keeps what it
//!    had flushed, and the hole is a marked gap in the log;
//! 6. (issue 14) a selected container the agent cannot attach to, because the node's state dir
//!    went read-only, gets a ContainerRecord in phase Failed saying so, and its Recording
//!    Degraded=True/AttachFailed and a Warning Event; a container that ends meanwhile has its
//!    Failed record deleted (nothing of it was recorded); once the state dir is writable again
//!    the agent attaches and the record is Recording;
//! 7. (issue 14) a Recording's `spec.paths` and `spec.maxWriteCapture` hold for its container:
//!    the export holds exactly the included files, byte-exact, and says what was left out; the
//!    kernel copied neither the writes of excluded files nor writes above the cap (the agent's
//!    captured-bytes metric for that container stays far below what it wrote);
//! 8. (issue 14) six recorded containers and two unrecorded ones write at once through a ring
//!    far too small for them: records are lost, yet each recorded container's export equals its
//!    own copy of its files (healed from its own files, nobody else's), and the agent's metrics
//!    count the losses per container.
//! 9. (issue 14) the plugin's default way to the agent: the real `kubectl` finds
//!    `kubectl-diffkeeper` on PATH, and `kubectl diffkeeper log` and `export` reach the agent
//!    through the API server's `pods/portforward`, which the API server hands to the node's
//!    kubelet streaming endpoint (the simulator's), which dials the agent pod's port; a user
//!    with `get` but not `create pods/portforward` is refused, saying what is missing.
//!
//! Needs root, BPF, and what `scripts/e2e-apiserver.sh install` and `scripts/e2e-runtime.sh
//! install` bring, plus the workspace's binaries built (`cargo build --workspace --bins`); it
//! fails, never skips, without them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use diffkeeper_api::{ContainerRecord, Recording, SnapshotPhase};
use diffkeeper_node_sim::RuntimeEnv;
use diffkeeper_rpc::{export_request::Tree, ContainerSelector, ExportRequest, TimelineRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

mod common;
use common::{read_env, repo, script, wait_for, Daemon, StopGuard, FIX};

const NS: &str = "shop";
const NODE: &str = "node-e2e";
const IMAGE: &str = "docker.io/library/diffkeeper:e2e";
const MINUTE: Duration = Duration::from_secs(60);

/// The workload: writes under /data in steps, and after each step copies /data aside into the
/// hostPath volume /truth (the ground truth of that moment) and marks the step done. The first
/// file is written before recording can have started: the agent's baseline must catch it.
fn workload(steps: u32, pause: &str, exit: u32) -> String {
    format!(
        "mkdir -p /data && echo early > /data/early && sleep 2; i=1; \
         while [ $i -le {steps} ]; do \
           echo \"step $i $(cat /proc/sys/kernel/random/uuid)\" > /data/f$i; \
           dd if=/dev/urandom of=/data/blob bs=1k count=$((i*8)) 2>/dev/null; \
           echo \"line $i\" >> /data/log; \
           mkdir -p /truth/$i && cp -a /data/. /truth/$i/ && touch /truth/$i.done; \
           sleep {pause}; i=$((i+1)); \
         done; \
         rm /data/f1; mkdir /data/sub && echo last > /data/sub/last; \
         mkdir -p /truth/final && cp -a /data/. /truth/final/; exit {exit}"
    )
}

fn binary(name: &str) -> Result<PathBuf> {
    // The simulator is this package's binary; the others are built beside it.
    let dir = Path::new(env!("CARGO_BIN_EXE_diffkeeper-node-sim"))
        .parent()
        .context("target dir")?
        .to_path_buf();
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    Ok(path)
}

struct Node {
    scratch: tempfile::TempDir,
    client: Client,
    kubeconfig: PathBuf,
    api_env: BTreeMap<String, String>,
    agent_port: u16,
    /// The agent's gRPC socket, held by the test and passed to each agent it starts: the port
    /// stays the agent's across the SIGKILL and restart, and no other process can take it.
    agent_listener: std::net::TcpListener,
    /// The operator's metrics socket, held the same way.
    operator_listener: std::net::TcpListener,
    /// Where each agent serves /metrics (bound by the agent itself: it has one passed socket).
    agent_metrics_port: u16,
    agent: Option<Daemon>,
    operator: Option<Daemon>,
    sim: Option<Daemon>,
    up: Vec<(&'static str, PathBuf)>,
}

impl Node {
    async fn start() -> Result<Node> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "this test runs real containers and eBPF: {FIX}"
        );
        script("e2e-apiserver.sh", &["install"])?;
        script("e2e-runtime.sh", &["install"])?;
        let scratch = tempfile::tempdir()?;
        let api_dir = scratch.path().join("api");
        let rt_dir = scratch.path().join("rt");
        script("e2e-apiserver.sh", &["start", api_dir.to_str().unwrap()])?;
        let guard = StopGuard(vec![("e2e-apiserver.sh", api_dir.clone())]);
        script("e2e-runtime.sh", &["start", rt_dir.to_str().unwrap()])?;
        let mut up = guard.defuse();
        up.push(("e2e-runtime.sh", rt_dir.clone()));
        let guard = StopGuard(up);
        let diffkeeper = binary("diffkeeper")?;
        script(
            "e2e-image.sh",
            &[
                "build",
                diffkeeper.to_str().unwrap(),
                IMAGE,
                rt_dir.to_str().unwrap(),
            ],
        )?;
        let up = guard.defuse();
        let api_env = read_env(&api_dir.join("env"))?;
        let kubeconfig = PathBuf::from(&api_env["KUBECONFIG"]);
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = Client::try_from(config)?;
        let runtime_env = RuntimeEnv::load(&rt_dir)?;
        let agent_listener = diffkeeper_test_cluster::loopback_listener();
        let mut node = Node {
            scratch,
            client,
            kubeconfig,
            api_env,
            agent_port: agent_listener.local_addr()?.port(),
            agent_listener,
            operator_listener: diffkeeper_test_cluster::loopback_listener(),
            agent_metrics_port: diffkeeper_test_cluster::loopback_listener()
                .local_addr()?
                .port(),
            agent: None,
            operator: None,
            sim: None,
            up,
        };
        node.install().await?;
        node.sim = Some(
            node.daemon(
                "the node simulator",
                "sim",
                Command::new(env!("CARGO_BIN_EXE_diffkeeper-node-sim"))
                    .arg("--node-name")
                    .arg(NODE)
                    .arg("--kubeconfig")
                    .arg(&node.kubeconfig)
                    .arg("--containerd-socket")
                    .arg(&runtime_env.containerd_address)
                    .arg("--state-dir")
                    .arg(node.scratch.path().join("sim"))
                    .arg("--volumes-dir")
                    .arg(node.volumes())
                    .arg("--image-alias")
                    .arg(format!("ghcr.io/diffkeeper/diffkeeper={IMAGE}"))
                    .args(["--heartbeat-seconds", "2", "--poll-ms", "200"]),
            )?,
        );
        let mut operator = Command::new(&diffkeeper);
        operator
            .arg("operator")
            .args(["--operator-namespace", "diffkeeper", "--identity", "op-1"]);
        diffkeeper_test_cluster::pass_listener(&mut operator, &node.operator_listener);
        node.operator = Some(node.daemon("the operator", "operator", &mut operator)?);
        node.start_agent()?;
        Ok(node)
    }

    /// CRDs, namespaces, and the chart's RBAC for what runs with its own identity here: the
    /// agent (as the test API server's `system:serviceaccount:diffkeeper:agent`, so the chart's
    /// least-privilege rules are what it gets) and the snapshot Pods' ClusterRole.
    async fn install(&self) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in diffkeeper_api::crds() {
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&crd),
            )
            .await?;
            wait_for(&format!("CRD {name} established"), MINUTE, async || {
                let crd = crds.get(&name).await?;
                let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                Ok(established.then_some(()))
            })
            .await?;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for ns in ["diffkeeper", NS] {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
                )
                .await?;
        }
        let rendered = std::fs::read_to_string(repo().join("deploy/diffkeeper.yaml"))?;
        let mut applied = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&rendered) {
            let mut value = serde_json::to_value(serde_yaml_ng::Value::deserialize(doc)?)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let wanted = match kind.as_str() {
                "ClusterRole" => name == "diffkeeper-agent" || name == "diffkeeper-snapshot",
                "ClusterRoleBinding" | "Role" | "RoleBinding" => name == "diffkeeper-agent",
                _ => false,
            };
            if !wanted {
                continue;
            }
            if let Some(subjects) = value["subjects"].as_array_mut() {
                // The test API server's agent identity is the ServiceAccount `agent`.
                for subject in subjects {
                    subject["name"] = json!("agent");
                }
            }
            let (group, version) = ("rbac.authorization.k8s.io", "v1");
            let resource = kube::discovery::ApiResource {
                kind: kind.clone(),
                plural: format!("{}s", kind.to_lowercase()),
                group: group.into(),
                version: version.into(),
                api_version: format!("{group}/{version}"),
            };
            let object: kube::api::DynamicObject = serde_json::from_value(value)?;
            let api: Api<kube::api::DynamicObject> = match object.metadata.namespace.as_deref() {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
            api.create(&PostParams::default(), &object).await?;
            applied.push(format!("{kind}/{name}"));
        }
        ensure!(
            applied.len() == 5,
            "deploy/diffkeeper.yaml should hold the agent's ClusterRole, ClusterRoleBinding, Role \
             and RoleBinding and the snapshot ClusterRole; found {applied:?}"
        );
        Ok(())
    }

    fn volumes(&self) -> PathBuf {
        self.scratch.path().join("volumes")
    }

    fn truth(&self, pod: &str) -> PathBuf {
        self.scratch.path().join("truth").join(pod)
    }

    fn daemon(&self, name: &'static str, log: &str, command: &mut Command) -> Result<Daemon> {
        let n = std::fs::read_dir(self.scratch.path())?.count();
        let log = self.scratch.path().join(format!("{log}-{n}.log"));
        if command.get_envs().all(|(key, _)| key != "KUBECONFIG") {
            command.env("KUBECONFIG", &self.kubeconfig);
        }
        let child = command
            .env("RUST_LOG", "info")
            .env("DIFFKEEPER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon { child, log, name })
    }

    fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        let port = self.agent_port;
        let mut agent = Command::new(binary("diffkeeper")?);
        agent
            .arg("agent")
            .args(["--node-name", NODE])
            .arg(format!("--advertise=https://127.0.0.1:{port}"))
            .arg(format!(
                "--metrics-addr=127.0.0.1:{}",
                self.agent_metrics_port
            ))
            .arg("--state-dir")
            .arg(self.scratch.path().join("agent"))
            .args(["--ca-secret", "diffkeeper/diffkeeper-ca"])
            .args(extra);
        diffkeeper_test_cluster::pass_listener(&mut agent, &self.agent_listener);
        self.agent = Some(self.daemon("the agent", "agent", &mut agent)?);
        Ok(())
    }

    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let mut logs = String::new();
        for daemon in [&self.agent, &self.operator, &self.sim]
            .into_iter()
            .flatten()
        {
            logs.push_str(&format!(
                "\n--- {} (tail) ---\n{}",
                daemon.name,
                daemon.log_tail()
            ));
        }
        error.context(logs)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn run_pod(
        &self,
        name: &str,
        labels: serde_json::Value,
        annotations: serde_json::Value,
        script: &str,
    ) -> Result<()> {
        let truth = self.truth(name);
        std::fs::create_dir_all(&truth)?;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels, "annotations": annotations },
            "spec": {
                "nodeName": NODE,
                "restartPolicy": "Never",
                "containers": [{
                    "name": "app", "image": "busybox",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "truth", "mountPath": "/truth" }],
                }],
                "volumes": [{ "name": "truth", "hostPath": { "path": truth, "type": "Directory" } }],
            },
        }))?;
        self.pods().create(&PostParams::default(), &pod).await?;
        Ok(())
    }

    async fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> Result<Pod> {
        let pods = self.pods();
        wait_for(&format!("pod {name} {phase}"), timeout, async || {
            let pod = pods.get(name).await?;
            let now = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok((now.as_deref() == Some(phase)).then_some(pod))
        })
        .await
    }

    async fn records_of(&self, pod: &str) -> Result<Vec<ContainerRecord>> {
        let api: Api<ContainerRecord> = Api::namespaced(self.client.clone(), NS);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|r| r.spec.pod.name == pod)
            .collect())
    }

    /// Waits for the snapshot of `pod` to succeed in `recording`'s status; returns its PVC dir.
    async fn snapshot_of(&self, recording: &str, pod: &str) -> Result<PathBuf> {
        let api: Api<Recording> = Api::namespaced(self.client.clone(), NS);
        let snapshot = wait_for(
            &format!("the snapshot of {pod} in Recording {recording}"),
            2 * MINUTE,
            async || {
                let Some(rec) = api.get_opt(recording).await? else {
                    return Ok(None);
                };
                let snap = rec
                    .status
                    .unwrap_or_default()
                    .snapshots
                    .into_iter()
                    .find(|s| s.pod == pod);
                match snap {
                    Some(s) if s.phase == SnapshotPhase::Failed => {
                        bail!("the snapshot of {pod} failed: {:?}", s.message)
                    }
                    Some(s) if s.phase == SnapshotPhase::Succeeded => Ok(Some(s)),
                    _ => Ok(None),
                }
            },
        )
        .await?;
        ensure!(snapshot.files > 0, "an empty snapshot: {snapshot:?}");
        Ok(self.volumes().join(NS).join(&snapshot.pvc))
    }

    async fn agent_ca(&self) -> Result<String> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        let map = wait_for("ConfigMap diffkeeper-agent-ca", MINUTE, async || {
            Ok(maps.get_opt("diffkeeper-agent-ca").await?)
        })
        .await?;
        map.data
            .and_then(|d| d.get("ca.crt").cloned())
            .context("diffkeeper-agent-ca has no ca.crt")
    }

    async fn connect(&self, token: Option<&str>) -> Result<diffkeeper_rpc::AgentConnection> {
        let ca = self.agent_ca().await?;
        Ok(diffkeeper_rpc::connect(
            &format!("127.0.0.1:{}", self.agent_port),
            ca.as_bytes(),
            None,
            token.map(String::from),
        )
        .await?)
    }

    /// The agent's /metrics, as a scraper reads it.
    fn scrape_agent(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(("127.0.0.1", self.agent_metrics_port))
            .context("connecting to the agent's metrics port")?;
        http.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
        let mut answer = String::new();
        http.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("an HTTP answer from /metrics")?;
        ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "/metrics answered {head}"
        );
        Ok(body.to_string())
    }

    async fn shut_down(mut self) -> Result<()> {
        for daemon in [self.agent.take(), self.operator.take()]
            .into_iter()
            .flatten()
        {
            let mut daemon = daemon;
            daemon.stop(libc::SIGTERM, Duration::from_secs(30))?;
        }
        // Pods first (the simulator stops them on SIGTERM), then the runtime and API server.
        if let Some(mut sim) = self.sim.take() {
            sim.stop(libc::SIGTERM, Duration::from_secs(60))?;
        }
        while let Some((name, dir)) = self.up.last().cloned() {
            script(name, &["stop", dir.to_str().unwrap()])?;
            self.up.pop();
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent.take();
        self.operator.take();
        self.sim.take();
        for (name, dir) in std::mem::take(&mut self.up).into_iter().rev() {
            if let Err(error) = script(name, &["stop", dir.to_str().unwrap()]) {
                eprintln!("cleanup: {error:#}");
            }
        }
    }
}

/// Every file and directory below `dir`, relative, with file contents and symlink targets.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(dir)?.to_path_buf();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&path)?
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

fn same_tree(what: &str, got: &Path, want: &Path) -> Result<()> {
    let (got_tree, want_tree) = (tree(got)?, tree(want)?);
    ensure!(
        !want_tree.is_empty(),
        "{what}: the ground truth {} is empty",
        want.display()
    );
    if got_tree != want_tree {
        let names = |t: &BTreeMap<PathBuf, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
        let differing: Vec<_> = want_tree
            .iter()
            .filter(|(k, v)| got_tree.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        bail!(
            "{what}: {} differs from the ground truth {}\n got: {:?}\nwant: {:?}\ndiffering: {differing:?}",
            got.display(),
            want.display(),
            names(&got_tree),
            names(&want_tree),
        );
    }
    Ok(())
}

/// The wall-clock moment a file was last modified, in ns since the epoch.
/// The value of the one sample of metric `name` whose labels include `labels`.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let found: Vec<f64> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
        .collect();
    match found[..] {
        [value] => Ok(value),
        _ => bail!(
            "{} samples of {name} with {labels:?}:\n{exposition}",
            found.len()
        ),
    }
}

fn mtime_ns(path: &Path) -> Result<i128> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()))
}

async fn scenarios(node: &mut Node) -> Result<Vec<String>> {
    let mut timings = Vec::new();
    let t = Instant::now();
    let recordings: Api<Recording> = Api::namespaced(node.client.clone(), NS);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "flaky" },
                "spec": { "selector": { "matchLabels": { "app": "flaky" } } },
            }))?,
        )
        .await?;

    // 1 + 2: a labelled pod, an annotated one, and a bystander, side by side.
    node.run_pod(
        "flaky",
        json!({"app": "flaky"}),
        json!({}),
        &workload(4, "1", 1),
    )
    .await?;
    node.run_pod(
        "noted",
        json!({"app": "other"}),
        json!({"diffkeeper.io/record": "true"}),
        &workload(2, "1", 1),
    )
    .await?;
    node.run_pod(
        "bystander",
        json!({"app": "other"}),
        json!({}),
        &workload(2, "1", 0),
    )
    .await?;
    node.wait_phase("flaky", "Failed", 2 * MINUTE).await?;
    node.wait_phase("noted", "Failed", 2 * MINUTE).await?;
    node.wait_phase("bystander", "Succeeded", 2 * MINUTE)
        .await?;
    let pvc = node.snapshot_of("flaky", "flaky").await?;
    same_tree(
        "flaky's snapshot",
        &pvc.join("data"),
        &node.truth("flaky").join("final"),
    )?;
    ensure!(
        pvc.join("bin/busybox").is_file(),
        "a full-tree snapshot holds the image's files too: no bin/busybox in {}",
        pvc.display()
    );
    let pvc = node.snapshot_of("annotated-pods", "noted").await?;
    same_tree(
        "noted's snapshot",
        &pvc.join("data"),
        &node.truth("noted").join("final"),
    )?;
    let bystander = node.records_of("bystander").await?;
    ensure!(
        bystander.is_empty(),
        "the bystander was recorded: {bystander:?}"
    );
    let mut admin = node
        .connect(Some(&node.api_env["DK_E2E_ADMIN_TOKEN"]))
        .await?;
    let listed = admin
        .list_containers(diffkeeper_rpc::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    let pods: Vec<&str> = listed.iter().map(|c| c.pod_name.as_str()).collect();
    ensure!(
        pods.contains(&"flaky") && pods.contains(&"noted") && !pods.contains(&"bystander"),
        "the agent's containers: {pods:?}"
    );
    timings.push(format!("snapshots of two dead pods {:.1?}", t.elapsed()));

    // 3: the plugin, through the API server for everything but the agent's address, for a pod
    // that no longer exists, at the moment the container copied step 2 aside.
    let t = Instant::now();
    let pods_api = node.pods();
    pods_api.delete("flaky", &DeleteParams::default()).await?;
    wait_for("pod flaky deleted", MINUTE, async || {
        Ok(pods_api.get_opt("flaky").await?.is_none().then_some(()))
    })
    .await?;
    let moment = mtime_ns(&node.truth("flaky").join("2.done"))? + 300_000_000;
    let out = node.scratch.path().join("exported");
    let output = Command::new(binary("kubectl-diffkeeper")?)
        .args(["export", "pod/flaky", "-n", NS])
        .arg(format!("--time={}", diffkeeper_store::format_wall(moment)))
        .arg("--out")
        .arg(&out)
        .arg(format!("--agent-address=127.0.0.1:{}", node.agent_port))
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .output()?;
    ensure!(
        output.status.success(),
        "kubectl diffkeeper export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    same_tree(
        "the plugin's export",
        &out.join("data"),
        &node.truth("flaky").join("2"),
    )?;
    timings.push(format!("plugin export {:.1?}", t.elapsed()));

    // 4: refusals.
    let flaky = node.records_of("flaky").await?;
    let record = flaky.first().context("flaky's ContainerRecord")?;
    let export = ExportRequest {
        container: Some(ContainerSelector {
            namespace: NS.into(),
            pod_uid: record.spec.pod.uid.clone(),
            container: "app".into(),
            container_id: String::new(),
        }),
        time: "end".into(),
        path_globs: Vec::new(),
        tree: Tree::Changes as i32,
    };
    let mut anonymous = node.connect(None).await?;
    let refused = anonymous.export(export.clone()).await;
    let code = match refused {
        Err(status) => status.code(),
        Ok(stream) => match stream.into_inner().message().await {
            Err(status) => status.code(),
            Ok(_) => bail!("an export without credentials was served"),
        },
    };
    ensure!(
        code == tonic::Code::Unauthenticated,
        "without a token: {code:?}"
    );
    let mut bob = node
        .connect(Some(&node.api_env["DK_E2E_BOB_TOKEN"]))
        .await?;
    let code = match bob.export(export.clone()).await {
        Err(status) => status.code(),
        Ok(stream) => match stream.into_inner().message().await {
            Err(status) => status.code(),
            Ok(_) => bail!("an export by a user without `get recordings/export` was served"),
        },
    };
    ensure!(
        code == tonic::Code::PermissionDenied,
        "bob's export: {code:?}"
    );

    // The agent's metrics: what flaky did, its history on disk, the exports answered so far
    // (the snapshot's, the plugin's, and the two refused above).
    let metrics = node.scrape_agent()?;
    let flaky_series = [("namespace", NS), ("pod", "flaky"), ("container", "app")];
    for name in [
        "diffkeeper_events_total",
        "diffkeeper_captured_bytes_total",
        "diffkeeper_store_bytes",
    ] {
        let value = sample(&metrics, name, &flaky_series)?;
        ensure!(value > 0.0, "{name} of flaky is {value}:\n{metrics}");
        eprintln!("flaky's {name}: {value}");
    }
    for (name, labels) in [
        ("diffkeeper_records_lost_total", &flaky_series[..]),
        ("diffkeeper_drops_healed_total", &flaky_series[..]),
        ("diffkeeper_ring_fill_ratio", &[][..]),
        ("diffkeeper_consumer_lag_seconds", &[][..]),
    ] {
        sample(&metrics, name, labels)?;
    }
    ensure!(
        sample(&metrics, "diffkeeper_histories", &[])? >= 2.0,
        "flaky's and noted's histories are kept:\n{metrics}"
    );
    ensure!(
        sample(&metrics, "diffkeeper_ring_size_bytes", &[])? > 0.0,
        "{metrics}"
    );
    ensure!(
        sample(
            &metrics,
            "diffkeeper_export_requests_total",
            &[("code", "Ok")]
        )? >= 2.0,
        "the snapshots' and the plugin's exports:\n{metrics}"
    );
    for code in ["Unauthenticated", "PermissionDenied"] {
        ensure!(
            sample(
                &metrics,
                "diffkeeper_export_errors_total",
                &[("code", code)]
            )? >= 1.0,
            "the {code} export is counted:\n{metrics}"
        );
    }

    // 5: the agent killed mid-recording, and restarted.
    let t = Instant::now();
    node.run_pod(
        "killed",
        json!({"app": "flaky"}),
        json!({}),
        &workload(20, "0.5", 1),
    )
    .await?;
    let truth = node.truth("killed");
    // Steps are half a second apart and the agent flushes every second: by step 5, what
    // steps 1 and 2 wrote is durable.
    wait_for("the killed pod's step 5", MINUTE, async || {
        Ok(truth.join("5.done").exists().then_some(()))
    })
    .await?;
    let records = node.records_of("killed").await?;
    ensure!(records.len() == 1, "records of the killed pod: {records:?}");
    node.agent
        .as_mut()
        .context("agent")?
        .stop(libc::SIGKILL, Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.start_agent()?;
    node.wait_phase("killed", "Failed", 2 * MINUTE).await?;
    let pvc = node.snapshot_of("flaky", "killed").await?;
    same_tree(
        "the killed agent's snapshot",
        &pvc.join("data"),
        &truth.join("final"),
    )?;
    let mut admin = node
        .connect(Some(&node.api_env["DK_E2E_ADMIN_TOKEN"]))
        .await?;
    let mut timeline = admin
        .timeline(TimelineRequest {
            container: Some(ContainerSelector {
                namespace: NS.into(),
                pod_uid: records[0].spec.pod.uid.clone(),
                container: "app".into(),
                container_id: String::new(),
            }),
            ..TimelineRequest::default()
        })
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = timeline.message().await? {
        events.push(event);
    }
    let gap = events
        .iter()
        .position(|e| e.gap && e.note.contains("agent was not running"))
        .with_context(|| format!("no gap marker for the agent's restart in {events:?}"))?;
    for early in ["/data/f1", "/data/f2"] {
        ensure!(
            events[..gap].iter().any(|e| e.path == early),
            "{early}, written and flushed before the kill, is missing before the gap"
        );
    }
    ensure!(
        events[gap..]
            .iter()
            .any(|e| e.path.starts_with("/data/f") && !e.gap),
        "nothing was recorded after the restart"
    );
    timings.push(format!(
        "agent SIGKILL + restart scenario {:.1?}",
        t.elapsed()
    ));

    // Retention: a Recording keeping histories 3 s after their container ends.
    let t = Instant::now();
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "brief" },
                "spec": {
                    "selector": { "matchLabels": { "app": "brief" } },
                    "retention": { "maxAge": "3s" },
                    "snapshot": { "onTermination": false },
                },
            }))?,
        )
        .await?;
    node.run_pod(
        "brief",
        json!({"app": "brief"}),
        json!({}),
        &workload(1, "0", 0),
    )
    .await?;
    node.wait_phase("brief", "Succeeded", MINUTE).await?;
    let histories = node.scratch.path().join("agent/containers");
    let brief = wait_for("brief's ContainerRecord", MINUTE, async || {
        Ok(node.records_of("brief").await?.into_iter().next())
    })
    .await?;
    let brief = history_id(&brief);
    ensure!(
        histories.join(&brief).is_dir(),
        "brief's history is not on the node"
    );
    wait_for("retention to drop brief's history", MINUTE, async || {
        let gone = node.records_of("brief").await?.is_empty() && !histories.join(&brief).exists();
        Ok(gone.then_some(()))
    })
    .await?;
    timings.push(format!("retention {:.1?}", t.elapsed()));

    // Deleting a Recording removes its records, and the agent their histories, before the
    // Recording goes (the agent's finalizer on each record); other Recordings' stay.
    let t = Instant::now();
    let mut doomed = node.records_of("killed").await?;
    doomed.extend(flaky);
    ensure!(doomed.len() == 2, "flaky's records: {doomed:?}");
    recordings.delete("flaky", &DeleteParams::default()).await?;
    wait_for("Recording flaky to be deleted", MINUTE, async || {
        Ok(recordings.get_opt("flaky").await?.is_none().then_some(()))
    })
    .await?;
    for record in &doomed {
        let id = history_id(record);
        ensure!(
            !histories.join(&id).exists(),
            "history {id} outlived its Recording"
        );
    }
    let noted = node.records_of("noted").await?;
    let noted = noted.first().context("noted's record")?;
    ensure!(
        histories.join(history_id(noted)).is_dir(),
        "the annotated pod's history went with another Recording"
    );
    timings.push(format!("Recording deletion {:.1?}", t.elapsed()));
    Ok(timings)
}

/// A directory made read-only in place (a read-only bind mount over itself), as a host
/// filesystem remounted read-only after I/O errors is, until dropped.
struct ReadOnlyDir(PathBuf);

impl ReadOnlyDir {
    fn new(dir: &Path) -> Result<ReadOnlyDir> {
        mount(&[OsStr::new("--bind"), dir.as_os_str(), dir.as_os_str()])?;
        let guard = ReadOnlyDir(dir.to_path_buf());
        mount(&[
            OsStr::new("-o"),
            OsStr::new("remount,bind,ro"),
            dir.as_os_str(),
        ])?;
        Ok(guard)
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.0).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("cleanup: umount {} failed", self.0.display());
        }
    }
}

fn mount(args: &[&OsStr]) -> Result<()> {
    let output = Command::new("mount").args(args).output()?;
    ensure!(
        output.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The real kubectl against the test API server, as the admin; its stdout.
fn kubectl(node: &Node, args: &[&str]) -> Result<String> {
    let output = Command::new(&node.api_env["DK_E2E_KUBECTL"])
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .args(["-n", NS])
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// 6: an attach that fails for a real reason is reported where people look, and retried.
async fn attach_failure(node: &Node) -> Result<String> {
    let t = Instant::now();
    let recordings: Api<Recording> = Api::namespaced(node.client.clone(), NS);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "stuck" },
                "spec": {
                    "selector": { "matchLabels": { "app": "stuck" } },
                    "snapshot": { "onTermination": false },
                },
            }))?,
        )
        .await?;
    // Where the agent makes each container's history: made at its start, read-only from now.
    let histories = node.scratch.path().join("agent/containers");
    wait_for("the agent's state dir", MINUTE, async || {
        Ok(histories.is_dir().then_some(()))
    })
    .await?;
    let read_only = ReadOnlyDir::new(&histories)?;
    node.run_pod(
        "stuck",
        json!({"app": "stuck"}),
        json!({}),
        "trap 'exit 0' TERM; mkdir -p /data; while true; do date > /data/now; sleep 0.2; done",
    )
    .await?;
    // One that ends while it cannot be attached to: nothing of it was recorded.
    node.run_pod("fleeting", json!({"app": "stuck"}), json!({}), "sleep 6")
        .await?;
    // `pod/container phase: message`, one line per record.
    let records_said = || -> Result<Vec<String>> {
        let template = "{range .items[*]}{.spec.pod.name}/{.spec.container} {.status.phase}: \
                        {.status.message}{\"\\n\"}{end}";
        let said = kubectl(
            node,
            &[
                "get",
                "crec",
                "-ldiffkeeper.io/recording=stuck",
                &format!("-ojsonpath={template}"),
            ],
        )?;
        Ok(said.lines().map(|l| l.trim_end().to_string()).collect())
    };
    let said = wait_for(
        "stuck's and fleeting's ContainerRecords in phase Failed",
        MINUTE,
        async || {
            let said = records_said()?;
            let failed = ["stuck/app Failed: ", "fleeting/app Failed: "]
                .iter()
                .all(|start| said.iter().any(|l| l.starts_with(start)));
            Ok(failed.then_some(said))
        },
    )
    .await?;
    let failed = said
        .iter()
        .find(|l| l.starts_with("stuck/"))
        .context("stuck's record")?;
    for cause in [
        "cannot use the state dir",
        "Read-only file system",
        histories.to_str().unwrap(),
    ] {
        ensure!(
            failed.contains(cause),
            "the record does not say {cause:?}: {failed}"
        );
    }
    let degraded = "-ojsonpath={.status.conditions[?(@.type==\"Degraded\")]}";
    let condition = wait_for(
        "Recording stuck Degraded by AttachFailed",
        MINUTE,
        async || {
            let said = kubectl(node, &["get", "recording", "stuck", degraded])?;
            let condition: serde_json::Value = match serde_json::from_str(&said) {
                Ok(c) => c,
                Err(_) => return Ok(None),
            };
            // Once the operator has seen stuck's record fail, not only fleeting's.
            let said_stuck = condition["message"]
                .as_str()
                .is_some_and(|m| m.contains("stuck/app: "));
            Ok((condition["reason"] == "AttachFailed" && said_stuck).then_some(condition))
        },
    )
    .await?;
    ensure!(
        condition["status"] == "True"
            && condition["message"]
                .as_str()
                .is_some_and(|m| m.contains("stuck/app: ") && m.contains("Read-only file system")),
        "the Degraded condition: {condition}"
    );
    let event = wait_for("a Warning AttachFailed Event on Recording stuck", MINUTE, async || {
        let said = kubectl(
            node,
            &[
                "get",
                "events",
                "--field-selector=reason=AttachFailed,involvedObject.kind=Recording,involvedObject.name=stuck",
                "-ojsonpath={range .items[*]}{.type} {.message}{\"\\n\"}{end}",
            ],
        )?;
        Ok(said.contains("stuck/app: ").then_some(said))
    })
    .await?;
    ensure!(
        event.starts_with("Warning ") && event.contains("Read-only file system"),
        "the AttachFailed Event: {event}"
    );
    node.wait_phase("fleeting", "Succeeded", MINUTE).await?;
    wait_for(
        "fleeting's Failed record deleted once its container ended",
        MINUTE,
        async || {
            let said = records_said()?;
            let gone = !said.iter().any(|l| l.starts_with("fleeting/"));
            Ok(gone.then_some(()))
        },
    )
    .await?;
    // Retried every second meanwhile, and each container counted once.
    let metrics = node.scrape_agent()?;
    let failures = sample(
        &metrics,
        "diffkeeper_attach_failures_total",
        &[("reason", "store")],
    )?;
    ensure!(
        failures == 2.0,
        "attach failures counted: {failures}\n{metrics}"
    );

    // The state dir is writable again: the next attempt records the container.
    drop(read_only);
    let recording_now = wait_for(
        "stuck's ContainerRecord in phase Recording",
        MINUTE,
        async || {
            let said = records_said()?;
            let recording = said.iter().any(|l| l.starts_with("stuck/app Recording"));
            Ok(recording.then_some(said))
        },
    )
    .await?;
    ensure!(
        recording_now == ["stuck/app Recording:"],
        "the records after the failure: {recording_now:?}"
    );
    wait_for("Recording stuck no longer Degraded", MINUTE, async || {
        let said = kubectl(node, &["get", "recording", "stuck", degraded])?;
        let condition: serde_json::Value = serde_json::from_str(&said).unwrap_or_default();
        Ok((condition["reason"] == "Healthy").then_some(()))
    })
    .await?;

    node.pods()
        .delete("stuck", &DeleteParams::default())
        .await?;
    recordings.delete("stuck", &DeleteParams::default()).await?;
    wait_for("Recording stuck to be deleted", MINUTE, async || {
        Ok(recordings.get_opt("stuck").await?.is_none().then_some(()))
    })
    .await?;
    Ok(format!("attach failure and recovery {:.1?}", t.elapsed()))
}

/// 7: a Recording limited to /data (but not /data/cache nor *.tmp), with writes above 4 KiB
/// read back instead of copied.
async fn scoped(node: &Node) -> Result<String> {
    let t = Instant::now();
    let recordings: Api<Recording> = Api::namespaced(node.client.clone(), NS);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "scoped" },
                "spec": {
                    "selector": { "matchLabels": { "app": "scoped" } },
                    "paths": { "include": ["/data"], "exclude": ["/data/cache", "**/*.tmp"] },
                    "maxWriteCapture": "4Ki",
                    "snapshot": { "onTermination": false },
                },
            }))?,
        )
        .await?;
    // Each excluded file is first written, then, once the agent has seen its name, written
    // 8 MiB more in 4 KiB writes: what the kernel must stop copying.
    let script = "mkdir -p /data/cache && echo early > /data/early && sleep 3; \
        echo kept > /data/kept; echo cached > /data/cache/c; echo x > /data/s.tmp; \
        echo x > /etc/outside; sleep 1; \
        dd if=/dev/zero bs=4k count=2048 2>/dev/null >> /etc/outside; \
        dd if=/dev/zero bs=4k count=2048 2>/dev/null >> /data/s.tmp; \
        dd if=/dev/urandom of=/data/big bs=64k count=16 2>/dev/null; \
        echo more >> /data/kept; mv /data/cache/c /data/from-cache; \
        mkdir -p /truth/final && cp -a /data/. /truth/final/ && \
        rm -rf /truth/final/cache /truth/final/s.tmp; sleep 1";
    node.run_pod("scoped", json!({"app": "scoped"}), json!({}), script)
        .await?;
    node.wait_phase("scoped", "Succeeded", 2 * MINUTE).await?;
    let out = node.scratch.path().join("scoped-export");
    let output = Command::new(binary("kubectl-diffkeeper")?)
        .args([
            "export",
            "pod/scoped",
            "-n",
            NS,
            "--time=end",
            "--tree=changes",
        ])
        .arg("--out")
        .arg(&out)
        .arg(format!("--agent-address=127.0.0.1:{}", node.agent_port))
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .output()?;
    let said = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "kubectl diffkeeper export failed: {said}"
    );
    ensure!(
        said.contains("spec.paths kept only /data; not /data/cache, **/*.tmp"),
        "the export does not say what the Recording left out: {said}"
    );
    same_tree(
        "scoped's export",
        &out.join("data"),
        &node.truth("scoped").join("final"),
    )?;
    let top: Vec<_> = std::fs::read_dir(&out)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    ensure!(
        top == [OsStr::new("data")],
        "scoped's export holds more than /data: {top:?}"
    );
    let metrics = node.scrape_agent()?;
    let series = [("namespace", NS), ("pod", "scoped"), ("container", "app")];
    let captured = sample(&metrics, "diffkeeper_captured_bytes_total", &series)?;
    ensure!(
        captured < 256.0 * 1024.0,
        "the kernel copied {captured} bytes for scoped, which wrote 17 MiB outside its scope or \
         above its maxWriteCapture"
    );
    recordings
        .delete("scoped", &DeleteParams::default())
        .await?;
    Ok(format!(
        "spec.paths ({captured} bytes captured) {:.1?}",
        t.elapsed()
    ))
}

/// The chart's DaemonSet pod of this node, as the plugin looks for it. The agent under test runs
/// as a process on the host, not under the simulator; pods share the host's network here, as
/// the chart's agent pod (hostNetwork) does on a real node, so a port-forward into this pod's
/// `grpc` port reaches that agent exactly as it would reach the DaemonSet's.
async fn agent_pod(node: &Node) -> Result<String> {
    let name = format!("diffkeeper-agent-{NODE}");
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), "diffkeeper");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "diffkeeper",
                "app.kubernetes.io/component": "agent",
                "app.kubernetes.io/instance": "diffkeeper",
            },
        },
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "containers": [{
                "name": "agent", "image": "busybox",
                "command": ["sleep", "3600"],
                "ports": [{ "name": "grpc", "containerPort": node.agent_port }],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(
        &format!("agent pod {name} Running"),
        2 * MINUTE,
        async || {
            let pod = pods.get(&name).await?;
            let phase = pod.status.and_then(|s| s.phase);
            Ok((phase.as_deref() == Some("Running")).then_some(()))
        },
    )
    .await?;
    Ok(name)
}

/// `kubectl diffkeeper ARGS` run by the real kubectl, with the plugin found on PATH and
/// KUBECONFIG naming `kubeconfig`, as a user types it.
fn kubectl_plugin(node: &Node, kubeconfig: &Path, args: &[&str]) -> Result<std::process::Output> {
    let plugin = binary("kubectl-diffkeeper")?;
    let dir = plugin.parent().context("the plugin's directory")?;
    let path = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    Command::new(&node.api_env["DK_E2E_KUBECTL"])
        .arg("diffkeeper")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("running kubectl")
}

/// `kubectl diffkeeper export pod/noted --time=end` into `out` (plus `extra`), as the admin;
/// how long it took.
fn export_noted(node: &Node, out: &Path, extra: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let mut args = vec!["export", "pod/noted", "-n", NS, "--time=end", "--out"];
    args.push(out.to_str().context("scratch path")?);
    args.extend_from_slice(extra);
    let export = kubectl_plugin(node, &node.kubeconfig, &args)?;
    ensure!(
        export.status.success(),
        "kubectl diffkeeper {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&export.stderr)
    );
    Ok(started.elapsed())
}

/// 9: the plugin's default path, through `pods/portforward`.
async fn port_forward(node: &Node) -> Result<String> {
    let t = Instant::now();
    let agent = agent_pod(node).await?;
    let listed = kubectl_plugin(node, &node.kubeconfig, &["--help"])?;
    ensure!(
        listed.status.success(),
        "kubectl does not find the plugin on PATH: {}",
        String::from_utf8_lossy(&listed.stderr)
    );

    let log = kubectl_plugin(node, &node.kubeconfig, &["log", "pod/noted", "-n", NS])?;
    let said = String::from_utf8_lossy(&log.stdout);
    ensure!(
        log.status.success() && said.contains("/data/f1") && said.contains("/data/f2"),
        "kubectl diffkeeper log pod/noted through the port-forward: {}\n{said}",
        String::from_utf8_lossy(&log.stderr)
    );
    let out = node.scratch.path().join("port-forward-export");
    let tunnelled = export_noted(node, &out, &[])?;
    same_tree(
        "noted's export through the port-forward",
        &out.join("data"),
        &node.truth("noted").join("final"),
    )?;
    // The same export straight to the agent's port, for what the tunnel costs.
    let direct = export_noted(
        node,
        &node.scratch.path().join("direct-export"),
        &[&format!("--agent-address=127.0.0.1:{}", node.agent_port)],
    )?;
    // The simulator's kubelet carried them: nothing else could have, with no address given.
    let sim_log = node.sim.as_ref().context("the simulator")?.log_text();
    ensure!(
        sim_log
            .lines()
            .any(|l| l.contains("port-forward opened") && l.contains(&agent)),
        "the node's streaming endpoint never forwarded to {agent}:\n{}",
        node.sim.as_ref().map(|d| d.log_tail()).unwrap_or_default()
    );

    // alice may find the agent pod and `get` its port-forward, but not `create` it: what kube
    // 1.35+ asks of a WebSocket port-forward (a GET), so the API server refuses the upgrade.
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": "e2e-half-portforward" },
        "rules": [
            { "apiGroups": ["diffkeeper.io"], "resources": ["containerrecords", "recordings"],
              "verbs": ["get", "list"] },
            { "apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["get", "list"] },
            { "apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get"] },
        ],
    }))?;
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "e2e-half-portforward" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "e2e-half-portforward" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice" }],
    }))?;
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(node.client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(node.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let alice = PathBuf::from(&node.api_env["DK_E2E_KUBECONFIG_ALICE"]);
    let want = format!(
        "you may not port-forward to the agent pod diffkeeper/{agent}: you need `create \
         pods/portforward` in namespace diffkeeper"
    );
    // RBAC is read from informers: the binding takes a moment to count.
    let refused = wait_for(
        "alice's port-forward refused for the missing verb",
        MINUTE,
        async || {
            let out = kubectl_plugin(node, &alice, &["log", "pod/noted", "-n", NS])?;
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            Ok((!out.status.success() && said.contains(&want)).then_some(said))
        },
    )
    .await?;
    ensure!(
        refused.contains("cannot create resource \"pods/portforward\""),
        "the refusal does not carry the API server's reason: {refused}"
    );
    Api::<Pod>::namespaced(node.client.clone(), "diffkeeper")
        .delete(&agent, &DeleteParams::default())
        .await?;
    Ok(format!(
        "plugin through pods/portforward {:.1?} (export {tunnelled:.2?} tunnelled, {direct:.2?} \
         direct)",
        t.elapsed()
    ))
}

/// 8: many containers at once through a small ring. Runs last: it restarts the agent with a
/// 128 KiB ring (the default is 64 MiB).
async fn crowd(node: &mut Node) -> Result<String> {
    const RECORDED: [&str; 6] = [
        "crowd-1", "crowd-2", "crowd-3", "crowd-4", "crowd-5", "crowd-6",
    ];
    const UNRECORDED: [&str; 2] = ["aside-1", "aside-2"];
    let t = Instant::now();
    node.agent
        .as_mut()
        .context("agent")?
        .stop(libc::SIGTERM, Duration::from_secs(20))?;
    node.start_agent_with(&["--ring-size", "131072"])?;
    let recordings: Api<Recording> = Api::namespaced(node.client.clone(), NS);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "crowd" },
                "spec": {
                    "selector": { "matchLabels": { "app": "crowd" } },
                    "snapshot": { "onTermination": false },
                },
            }))?,
        )
        .await?;
    // Every container writes the same paths, with its own bytes: a history holding another
    // container's file differs from its truth. Bursts of 4 KiB writes overrun the ring; the
    // pause at the end lets the agent heal from the container's files while they exist.
    let script = |name: &str| {
        format!(
            "mkdir -p /data && sleep 4; i=0; while [ $i -lt 40 ]; do \
               dd if=/dev/urandom of=/data/f$((i % 8)) bs=4k count=32 conv=notrunc 2>/dev/null; \
               echo \"{name} $i\" >> /data/log; i=$((i+1)); \
             done; echo {name} > /data/who; \
             mkdir -p /truth/final && cp -a /data/. /truth/final/; sleep 4"
        )
    };
    for name in RECORDED {
        node.run_pod(name, json!({"app": "crowd"}), json!({}), &script(name))
            .await?;
    }
    for name in UNRECORDED {
        node.run_pod(name, json!({"app": "aside"}), json!({}), &script(name))
            .await?;
    }
    for name in RECORDED.iter().chain(&UNRECORDED) {
        node.wait_phase(name, "Succeeded", 3 * MINUTE).await?;
    }
    let metrics = node.scrape_agent()?;
    let mut lost = Vec::new();
    for name in RECORDED {
        let out = node.scratch.path().join(format!("{name}-export"));
        let output = Command::new(binary("kubectl-diffkeeper")?)
            .args(["export", &format!("pod/{name}"), "-n", NS])
            .args(["--time=end", "--tree=changes", "--out"])
            .arg(&out)
            .arg(format!("--agent-address=127.0.0.1:{}", node.agent_port))
            .arg("--kubeconfig")
            .arg(&node.kubeconfig)
            .output()?;
        ensure!(
            output.status.success(),
            "kubectl diffkeeper export pod/{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        same_tree(
            &format!("{name}'s export"),
            &out.join("data"),
            &node.truth(name).join("final"),
        )?;
        let series = [("namespace", NS), ("pod", name), ("container", "app")];
        lost.push(sample(&metrics, "diffkeeper_records_lost_total", &series)?);
    }
    let total: f64 = lost.iter().sum();
    ensure!(
        total > 0.0,
        "no records were lost through a 128 KiB ring, so nothing was healed: {lost:?}"
    );
    for name in UNRECORDED {
        ensure!(
            node.records_of(name).await?.is_empty(),
            "{name} was recorded"
        );
        ensure!(
            !metrics.contains(&format!("pod=\"{name}\"")),
            "the agent's metrics have a series of unrecorded {name}"
        );
    }
    recordings.delete("crowd", &DeleteParams::default()).await?;
    Ok(format!(
        "6 containers through a 128 KiB ring ({total} records lost: {lost:?}) {:.1?}",
        t.elapsed()
    ))
}

async fn all_scenarios(node: &mut Node) -> Result<Vec<String>> {
    let mut timings = vec![attach_failure(node).await?, scoped(node).await?];
    timings.extend(scenarios(node).await?);
    timings.push(port_forward(node).await?);
    timings.push(crowd(node).await?);
    Ok(timings)
}

/// The directory name of a record's history on the node.
fn history_id(record: &ContainerRecord) -> String {
    diffkeeper_api::DeathKey::of_record(record).id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_snapshots_real_containers_on_a_node() -> Result<()> {
    let mut node = Node::start().await?;
    match all_scenarios(&mut node).await {
        Ok(timings) => {
            node.shut_down().await?;
            println!("timings: {}", timings.join("; "));
            Ok(())
        }
        Err(error) => Err(node.explain(error)),
    }
}

/// What the agent costs on a node with many recorded containers (issue 14's benchmark row):
/// RSS and CPU of the agent alone, then while it records 50 idle-ish containers and 6 busy ones.
/// A benchmark, not a check of behaviour: `scripts/bench-agent.sh` runs it explicitly (it takes
/// minutes) and docs/benchmarks.md keeps its figures. Needs what the test above needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark; run by scripts/bench-agent.sh"]
async fn agent_footprint_with_many_containers() -> Result<()> {
    let mut node = Node::start().await?;
    match footprint(&mut node).await {
        Ok(table) => {
            node.shut_down().await?;
            println!("{table}");
            Ok(())
        }
        Err(error) => Err(node.explain(error)),
    }
}

/// What the agent holds at one moment.
struct Usage {
    /// VmRSS (KiB), the figure `top` and the kubelet's cAdvisor report.
    rss_kib: u64,
    /// Of that, what the BPF ring's mappings count (KiB). The kernel maps the ring's data pages
    /// twice in a row (so that a record wrapping around the end reads as one), and every page
    /// is mapped from the start: a 64 MiB ring counts 128 MiB in VmRSS for 64 MiB of kernel
    /// memory, charged once to the agent's cgroup.
    ring_kib: u64,
    /// CPU time (s) so far.
    cpu_s: f64,
}

impl Usage {
    /// The agent's own memory: VmRSS less the ring's mappings (KiB).
    fn own_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.ring_kib)
    }
}

fn agent_usage(node: &Node) -> Result<Usage> {
    let pid = node.agent.as_ref().context("agent")?.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("VmRSS in /proc/{pid}/status"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut in_bpf_map = false;
    let mut ring_kib = 0;
    for line in smaps.lines() {
        // A mapping's first line starts with its address range: "7f94c11cd000-7f94c91ce000 r--s".
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_bpf_map = line.ends_with("anon_inode:bpf-map");
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if in_bpf_map {
                ring_kib += v.trim().trim_end_matches(" kB").trim().parse::<u64>()?;
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Usage {
        rss_kib,
        ring_kib,
        cpu_s: ticks / hz,
    })
}

/// Over `window`, sampled each second: the highest VmRSS, the ring's part of it, the highest
/// own memory (KiB), and the CPU share of one core.
struct Window {
    rss_max_kib: u64,
    ring_kib: u64,
    own_max_kib: u64,
    cpu_share: f64,
}

async fn measure(node: &Node, window: Duration) -> Result<Window> {
    let first = agent_usage(node)?;
    let t = Instant::now();
    let mut out = Window {
        rss_max_kib: first.rss_kib,
        ring_kib: first.ring_kib,
        own_max_kib: first.own_kib(),
        cpu_share: 0.0,
    };
    let mut last = first.cpu_s;
    while t.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = agent_usage(node)?;
        out.rss_max_kib = out.rss_max_kib.max(now.rss_kib);
        out.ring_kib = out.ring_kib.max(now.ring_kib);
        out.own_max_kib = out.own_max_kib.max(now.own_kib());
        last = now.cpu_s;
    }
    out.cpu_share = (last - first.cpu_s) / t.elapsed().as_secs_f64();
    Ok(out)
}

async fn footprint(node: &mut Node) -> Result<String> {
    const IDLE: usize = 50;
    const BUSY: usize = 6;
    const WINDOW: Duration = Duration::from_secs(30);
    let alone = measure(node, WINDOW).await?;
    ensure!(
        alone.ring_kib > 0,
        "no BPF map mapping found in the agent's /proc/PID/smaps: the ring's share of VmRSS \
         cannot be told apart"
    );
    let recordings: Api<Recording> = Api::namespaced(node.client.clone(), NS);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "fleet" },
                "spec": {
                    "selector": { "matchLabels": { "app": "fleet" } },
                    "snapshot": { "onTermination": false },
                },
            }))?,
        )
        .await?;
    // Idle-ish: a heartbeat file every 5 s. Busy: 1 MiB of 4 KiB writes every second.
    let idle = "mkdir -p /data; while true; do date > /data/now; sleep 5; done";
    let busy = "mkdir -p /data; while true; do \
                dd if=/dev/urandom of=/data/busy bs=4k count=256 conv=notrunc 2>/dev/null; \
                echo tick >> /data/log; sleep 1; done";
    for i in 0..IDLE {
        node.run_pod(
            &format!("idle-{i}"),
            json!({"app": "fleet"}),
            json!({}),
            idle,
        )
        .await?;
    }
    for i in 0..BUSY {
        node.run_pod(
            &format!("busy-{i}"),
            json!({"app": "fleet"}),
            json!({}),
            busy,
        )
        .await?;
    }
    let started = Instant::now();
    wait_for("56 containers recorded", 10 * MINUTE, async || {
        let said = kubectl(
            node,
            &[
                "get",
                "containerrecords",
                "-l",
                "diffkeeper.io/recording=fleet",
                "-ojsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
            ],
        )?;
        let recording = said.lines().filter(|l| *l == "Recording").count();
        Ok((recording == IDLE + BUSY).then_some(()))
    })
    .await?;
    let attach_all = started.elapsed();
    let loaded = measure(node, WINDOW).await?;
    let ring_mib = 64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let row = |what: &str, w: &Window| {
        format!(
            "| {what} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1}% |\n",
            mib(w.rss_max_kib),
            mib(w.ring_kib),
            mib(w.own_max_kib),
            w.cpu_share * 100.0
        )
    };
    Ok(format!(
        "agent footprint ({} s windows, sampled each second; ring {ring_mib} MiB):\n\
         | | VmRSS max | of it the ring's mappings (mapped twice) | agent's own max | CPU (share of one core) |\n\
         |---|---|---|---|---|\n{}{}\
         ratio loaded/alone (own): {:.2}x; all {} attached in {attach_all:.1?}; \
         target own <= 64 MiB plus the {ring_mib} MiB ring: {}",
        WINDOW.as_secs(),
        row("no container recorded", &alone),
        row(&format!("{IDLE} idle + {BUSY} busy recorded"), &loaded),
        loaded.own_max_kib as f64 / alone.own_max_kib.max(1) as f64,
        IDLE + BUSY,
        if mib(loaded.own_max_kib) <= 64.0 {
            "MET"
        } else {
            "MISSED"
        },
    ))
}
