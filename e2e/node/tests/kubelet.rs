//! The node simulator playing kubelet against a real API server (`scripts/e2e-apiserver.sh`)
//! and a real containerd (`scripts/e2e-runtime.sh`), run as the built binary. Needs root and
//! what both scripts' `install` brings; it fails (never skips) without them, saying what to run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use diffkeeper_node_sim::pod_cgroups::{pod_cgroup_dirs, pod_cgroup_parent};
use diffkeeper_node_sim::{Runtime, RuntimeEnv};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::json;

mod common;
use common::{
    is_running, mounts_under, processes_mentioning, read_env, script, wait_for, Daemon, StopGuard,
    FIX,
};

const NS: &str = "e2e";

/// The tests share the host's kubepods/ cgroup trees: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// API server, containerd and the simulator, all under one temp dir; torn down on drop.
struct Cluster {
    scratch: tempfile::TempDir,
    client: Client,
    runtime: Runtime,
    runtime_env: RuntimeEnv,
    agent_token: String,
    node: String,
    sim: Option<Daemon>,
    up: Vec<(&'static str, PathBuf)>,
    timings: Vec<String>,
}

impl Cluster {
    async fn start(node: &str) -> Result<Cluster> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "this test runs real containers: {FIX}"
        );
        let t = Instant::now();
        script("e2e-apiserver.sh", &["install"])?;
        script("e2e-runtime.sh", &["install"])?;
        let install = t.elapsed();
        let scratch = tempfile::tempdir()?;
        let mut cluster_up = Vec::new();
        let api_dir = scratch.path().join("api");
        let rt_dir = scratch.path().join("rt");
        let t = Instant::now();
        script("e2e-apiserver.sh", &["start", api_dir.to_str().unwrap()])?;
        cluster_up.push(("e2e-apiserver.sh", api_dir.clone()));
        let guard = StopGuard(cluster_up);
        script("e2e-runtime.sh", &["start", rt_dir.to_str().unwrap()])?;
        let mut cluster_up = guard.defuse();
        cluster_up.push(("e2e-runtime.sh", rt_dir.clone()));
        let start = t.elapsed();
        let env = read_env(&api_dir.join("env"))?;
        let kubeconfig = Kubeconfig::read_from(&env["KUBECONFIG"])?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config)?;
        let runtime_env = RuntimeEnv::load(&rt_dir)?;
        let runtime = Runtime::connect(&runtime_env.containerd_address).await?;
        let agent_token = env["DK_E2E_AGENT_TOKEN"].clone();
        std::fs::write(scratch.path().join("token"), &agent_token)?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
            )
            .await?;
        let mut cluster = Cluster {
            scratch,
            client,
            runtime,
            runtime_env,
            agent_token,
            node: node.to_string(),
            sim: None,
            up: cluster_up,
            timings: vec![format!(
                "install {install:.1?}, API server + containerd start {start:.1?}"
            )],
        };
        cluster.start_simulator()?;
        Ok(cluster)
    }

    fn state_dir(&self) -> PathBuf {
        self.scratch.path().join("state")
    }

    fn volumes_dir(&self) -> PathBuf {
        self.scratch.path().join("volumes")
    }

    fn start_simulator(&mut self) -> Result<()> {
        let log = self.scratch.path().join(format!(
            "sim-{}.log",
            std::fs::read_dir(self.scratch.path())?.count()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_diffkeeper-node-sim"))
            .arg("--node-name")
            .arg(&self.node)
            .arg("--kubeconfig")
            .arg(self.scratch.path().join("api/kubeconfig"))
            .arg("--containerd-socket")
            .arg(&self.runtime_env.containerd_address)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--volumes-dir")
            .arg(self.volumes_dir())
            .arg("--service-account-token-file")
            .arg(self.scratch.path().join("token"))
            .arg("--image-alias")
            .arg(format!("sleepy={}", self.runtime_env.busybox_image))
            .args(["--heartbeat-seconds", "2", "--poll-ms", "200"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting diffkeeper-node-sim")?;
        self.sim = Some(Daemon {
            child,
            log,
            name: "the simulator",
        });
        Ok(())
    }

    fn sim(&mut self) -> &mut Daemon {
        self.sim.as_mut().expect("the simulator runs")
    }

    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let tail = self.sim.as_ref().map(Daemon::log_tail).unwrap_or_default();
        error.context(format!("--- diffkeeper-node-sim log (tail) ---\n{tail}"))
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create_pod(&self, pod: serde_json::Value) -> Result<Pod> {
        let mut pod: Pod = serde_json::from_value(pod)?;
        pod.metadata.namespace = Some(NS.into());
        let spec = pod.spec.as_mut().context("pod spec")?;
        spec.node_name = Some(self.node.clone());
        Ok(self.pods().create(&PostParams::default(), &pod).await?)
    }

    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let pods = self.pods();
        wait_for(&format!("pod {name}: {what}"), timeout, async || {
            let pod = pods.get(name).await?;
            Ok(check(&pod).then_some(pod))
        })
        .await
    }

    async fn wait_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let pods = self.pods();
        wait_for(&format!("pod {name} to disappear"), timeout, async || {
            Ok(pods.get_opt(name).await?.is_none().then_some(()))
        })
        .await
    }

    /// Nothing of the pod is left on the node: sandbox, cgroups, directories.
    async fn check_pod_removed(&self, uid: &str) -> Result<()> {
        let sandboxes = self.runtime.list_pods().await?;
        ensure!(
            sandboxes.iter().all(|s| s.uid != uid),
            "the runtime still has pod {uid}"
        );
        let cgroups = pod_cgroup_dirs(&pod_cgroup_parent(uid))?;
        ensure!(cgroups.is_empty(), "pod cgroups left: {cgroups:?}");
        let dir = self.state_dir().join("pods").join(uid);
        ensure!(!dir.exists(), "{} is left", dir.display());
        Ok(())
    }

    async fn container_pid(&self, container_id: &str) -> Result<u32> {
        let id = container_id.trim_start_matches("containerd://");
        self.runtime
            .container_status(id)
            .await?
            .pid
            .context("the container runs no process")
    }

    /// Stops the simulator (SIGTERM), then the runtime and API server, and checks nothing is
    /// left: processes, mounts, pod cgroups.
    /// `stopped` names the pods that ran until then: kubelet's node shutdown marks them Failed.
    async fn shut_down(
        mut self,
        pod_uids: &[String],
        pids: &[u32],
        stopped: &[&str],
    ) -> Result<Vec<String>> {
        let t = Instant::now();
        let status = self.sim().stop(libc::SIGTERM, Duration::from_secs(40))?;
        let stop = t.elapsed();
        ensure!(status.success(), "the simulator exited with {status}");
        self.timings
            .push(format!("simulator SIGTERM to exit {stop:.1?}"));
        for name in stopped {
            let pod = self.pods().get(name).await?;
            let status = pod.status.unwrap_or_default();
            ensure!(
                status.phase.as_deref() == Some("Failed")
                    && status.reason.as_deref() == Some("Terminated"),
                "pod {name} after the node's shutdown: {status:?}"
            );
        }
        let sandboxes = self.runtime.list_pods().await?;
        ensure!(
            sandboxes.is_empty(),
            "sandboxes left after SIGTERM: {sandboxes:?}"
        );
        for uid in pod_uids {
            self.check_pod_removed(uid).await?;
        }
        for pid in pids {
            ensure!(!is_running(*pid), "container process {pid} survived");
        }
        let mounts = mounts_under(self.scratch.path())?;
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        let entries: Vec<_> = std::fs::read_dir(self.state_dir().join("pods"))?.collect();
        ensure!(entries.is_empty(), "pod directories left: {entries:?}");
        // Last started, first stopped; what fails to stop stays in `up` for Drop to retry.
        while let Some((name, dir)) = self.up.last().cloned() {
            script(name, &["stop", dir.to_str().unwrap()])?;
            self.up.pop();
        }
        let processes = processes_mentioning(self.scratch.path());
        ensure!(processes.is_empty(), "processes left: {processes:?}");
        Ok(std::mem::take(&mut self.timings))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sim.take();
        for (name, dir) in std::mem::take(&mut self.up).into_iter().rev() {
            if let Err(error) = script(name, &["stop", dir.to_str().unwrap()]) {
                eprintln!("cleanup: {error:#}");
            }
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn container_status(pod: &Pod) -> serde_json::Value {
    serde_json::to_value(
        &pod.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0],
    )
    .unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_runs_pods_against_a_real_api_server() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("node-a").await?;
    match pods_scenario(&cluster).await {
        Ok((uids, pids, timings)) => {
            let mut all = cluster.shut_down(&uids, &pids, &["last"]).await?;
            all.extend(timings);
            println!("timings: {}", all.join("; "));
            Ok(())
        }
        Err(error) => Err(cluster.explain(error)),
    }
}

async fn pods_scenario(c: &Cluster) -> Result<(Vec<String>, Vec<u32>, Vec<String>)> {
    let mut timings = Vec::new();
    let t = Instant::now();
    // The Node: registered Ready, with a heartbeat.
    let nodes: Api<Node> = Api::all(c.client.clone());
    // The simulator, like a kubelet, creates the Node and then patches its status in a second
    // request: a Node without conditions in between is registration in progress, not a defect.
    let node = wait_for(
        "the Node to be registered with its status",
        MINUTE,
        async || {
            Ok(nodes
                .get_opt(&c.node)
                .await?
                .filter(|n| n.status.as_ref().is_some_and(|s| s.conditions.is_some())))
        },
    )
    .await?;
    timings.push(format!("node registered {:.1?}", t.elapsed()));
    let status = serde_json::to_value(node.status.context("node status")?)?;
    let ready = status["conditions"]
        .as_array()
        .context("conditions")?
        .iter()
        .find(|c| c["type"] == "Ready")
        .context("Ready condition")?
        .clone();
    ensure!(ready["status"] == "True", "{ready}");
    ensure!(
        status["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://1.")),
        "{}",
        status["nodeInfo"]
    );
    ensure!(status["addresses"][0] == json!({"type": "InternalIP", "address": "127.0.0.1"}));
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let first_renewal = wait_for("the node Lease", MINUTE, async || {
        Ok(leases
            .get_opt(&c.node)
            .await?
            .and_then(|l| l.spec?.renew_time))
    })
    .await?;
    wait_for(
        "the Lease to be renewed",
        Duration::from_secs(10),
        async || {
            let lease = leases.get(&c.node).await?;
            Ok(
                (lease.spec.and_then(|s| s.renew_time) != Some(first_renewal.clone()))
                    .then_some(()),
            )
        },
    )
    .await?;
    let heartbeat = |node: Node| {
        serde_json::to_value(node.status).ok()?["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?["lastHeartbeatTime"]
            .as_str()
            .map(str::to_string)
    };
    let first_heartbeat = heartbeat(nodes.get(&c.node).await?);
    wait_for(
        "a newer Ready heartbeat",
        Duration::from_secs(10),
        async || Ok((heartbeat(nodes.get(&c.node).await?) != first_heartbeat).then_some(())),
    )
    .await?;

    // A pod writing into a claim and failing: the claim is provisioned and bound, the file is
    // in the volume directory, the status says Failed with exit code 1 and the termination
    // message (environment from fieldRefs, service account files).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), NS);
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}},
            }))?,
        )
        .await?;
    let t = Instant::now();
    let writer = c
        .create_pod(json!({
            "metadata": {"name": "writer", "labels": {"app": "writer"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "writer",
                    "image": "busybox:1.36",
                    "command": ["/bin/sh", "-c"],
                    "args": ["echo $(GREETING) > /data/out.txt \
                        && cat /var/run/secrets/kubernetes.io/serviceaccount/token > /data/token \
                        && cp /var/run/secrets/kubernetes.io/serviceaccount/ca.crt /data/ca.crt \
                        && echo \"$POD $NS $NODE $IP $UID $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace) $KUBERNETES_SERVICE_HOST\" > /dev/termination-log \
                        && exit 1"],
                    "env": [
                        {"name": "GREETING", "value": "hello"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        }))
        .await?;
    let writer_uid = writer.metadata.uid.clone().unwrap();
    let writer = c
        .wait_pod("writer", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await?;
    timings.push(format!("PVC pod created to Failed {:.1?}", t.elapsed()));
    let status = container_status(&writer);
    let terminated = &status["state"]["terminated"];
    ensure!(
        terminated["exitCode"] == 1 && terminated["reason"] == "Error",
        "{status}"
    );
    let container_id = status["containerID"].as_str().unwrap_or_default();
    ensure!(
        container_id.starts_with("containerd://") && terminated["containerID"] == container_id,
        "{status}"
    );
    ensure!(
        status["restartCount"] == 0 && status["image"] == "busybox:1.36",
        "{status}"
    );
    ensure!(
        terminated["message"]
            == format!(
                "writer {NS} {} 127.0.0.1 {writer_uid} {NS} 127.0.0.1\n",
                c.node
            ),
        "{status}"
    );
    let pod_status = writer.status.as_ref().unwrap();
    ensure!(pod_status.host_ip.as_deref() == Some("127.0.0.1") && pod_status.start_time.is_some());
    let data = c.volumes_dir().join(NS).join("data");
    ensure!(std::fs::read_to_string(data.join("out.txt"))? == "hello\n");
    ensure!(std::fs::read_to_string(data.join("token"))? == c.agent_token);
    ensure!(
        std::fs::read_to_string(data.join("ca.crt"))?.starts_with("-----BEGIN CERTIFICATE-----")
    );
    let claim = claims.get("data").await?;
    let volume = claim
        .spec
        .and_then(|s| s.volume_name)
        .context("claim not bound")?;
    ensure!(claim.status.and_then(|s| s.phase).as_deref() == Some("Bound"));
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let pv = pvs.get(&volume).await?;
    ensure!(
        pv.spec
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
            == Some(data.clone()),
        "the volume's hostPath is not {}",
        data.display()
    );

    // restartPolicy OnFailure: fails once, then succeeds (a marker in an emptyDir).
    let t = Instant::now();
    c.create_pod(json!({
        "metadata": {"name": "flaky"},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": "flaky",
                "image": "busybox",
                "command": ["/bin/sh", "-c",
                    "if [ -e /scratch/marker ]; then echo second > /dev/termination-log; exit 0; fi; \
                     touch /scratch/marker; echo first > /dev/termination-log; exit 3"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }))
    .await?;
    let flaky = c
        .wait_pod("flaky", "Succeeded", MINUTE, |p| phase(p) == "Succeeded")
        .await?;
    timings.push(format!(
        "OnFailure pod created to Succeeded after a restart {:.1?}",
        t.elapsed()
    ));
    let status = container_status(&flaky);
    let last = &status["lastState"]["terminated"];
    let now = &status["state"]["terminated"];
    ensure!(status["restartCount"] == 1, "{status}");
    ensure!(
        last["exitCode"] == 3 && last["message"] == "first\n",
        "{status}"
    );
    ensure!(
        now["exitCode"] == 0 && now["message"] == "second\n",
        "{status}"
    );
    ensure!(
        last["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("containerd://"))
            && last["containerID"] != now["containerID"]
            && now["containerID"] == status["containerID"],
        "{status}"
    );

    // A ConfigMap volume whose ConfigMap is missing: Pending with FailedMount until it exists.
    c.create_pod(json!({
        "metadata": {"name": "needs-ca"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "c",
                "image": "busybox",
                "command": ["/bin/sh", "-c", "cat /etc/ca/ca.crt > /dev/termination-log"],
                "volumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}],
            }],
            "volumes": [{"name": "ca", "configMap": {"name": "diffkeeper-agent-ca"}}],
        },
    }))
    .await?;
    let events: Api<Event> = Api::namespaced(c.client.clone(), NS);
    let failed_mount = wait_for("a FailedMount event", MINUTE, async || {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=needs-ca"))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedMount")))
    })
    .await?;
    ensure!(
        failed_mount
            .message
            .as_deref()
            .is_some_and(|m| m.contains("configmap \"diffkeeper-agent-ca\" not found")),
        "{failed_mount:?}"
    );
    let pending = c.pods().get("needs-ca").await?;
    ensure!(phase(&pending) == "Pending", "{:?}", pending.status);
    ensure!(container_status(&pending)["state"]["waiting"]["reason"] == "ContainerCreating");
    let config_maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "diffkeeper-agent-ca"},
                "data": {"ca.crt": "PEM"},
            }))?,
        )
        .await?;
    let done = c
        .wait_pod("needs-ca", "Succeeded", MINUTE, |p| phase(p) == "Succeeded")
        .await?;
    ensure!(container_status(&done)["state"]["terminated"]["message"] == "PEM");

    // Deleting a running pod: SIGTERM (its trap exits 0), then the object disappears.
    let sleeper = c
        .create_pod(json!({
            "metadata": {"name": "sleeper"},
            "spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [{
                    "name": "sleeper",
                    "image": "sleepy:v1",
                    "command": ["/bin/sh", "-c",
                        "trap 'echo bye > /dev/termination-log; exit 0' TERM; \
                         while true; do sleep 0.1; done"],
                }],
            },
        }))
        .await?;
    let sleeper_uid = sleeper.metadata.uid.clone().unwrap();
    let running = c
        .wait_pod("sleeper", "Running and Ready", MINUTE, |p| {
            phase(p) == "Running" && container_status(p)["ready"] == true
        })
        .await?;
    let sleeper_pid = c
        .container_pid(container_status(&running)["containerID"].as_str().unwrap())
        .await?;
    let t = Instant::now();
    c.pods().delete("sleeper", &DeleteParams::default()).await?;
    c.wait_gone("sleeper", MINUTE).await?;
    let deletion = t.elapsed();
    timings.push(format!(
        "delete of a running pod to object gone {deletion:.1?}"
    ));
    ensure!(
        deletion < Duration::from_secs(15),
        "the trap should end it well within its grace"
    );
    ensure!(
        !is_running(sleeper_pid),
        "the sleeper's process {sleeper_pid} still runs"
    );
    c.check_pod_removed(&sleeper_uid).await?;

    // One pod left running for the shutdown.
    let last = c
        .create_pod(json!({
            "metadata": {"name": "last"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "last", "image": "busybox", "command": ["sleep", "1000"]}],
            },
        }))
        .await?;
    let running = c
        .wait_pod("last", "Running", MINUTE, |p| phase(p) == "Running")
        .await?;
    let last_pid = c
        .container_pid(container_status(&running)["containerID"].as_str().unwrap())
        .await?;
    let mut uids = vec![writer_uid, sleeper_uid, last.metadata.uid.unwrap()];
    for name in ["flaky", "needs-ca"] {
        uids.push(c.pods().get(name).await?.metadata.uid.unwrap_or_default());
    }
    Ok((uids, vec![sleeper_pid, last_pid], timings))
}

/// A simulator killed (SIGKILL, no cleanup) and started again: it adopts the sandbox of a pod
/// that still exists (same container, then restarted by restartPolicy Always when it dies) and
/// removes the sandbox of a pod deleted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_simulator_adopts_and_cleans_up() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("node-b").await?;
    match resync_scenario(&mut cluster).await {
        Ok((uids, pids, timings)) => {
            let mut all = cluster.shut_down(&uids, &pids, &["survivor"]).await?;
            all.extend(timings);
            println!("timings: {}", all.join("; "));
            Ok(())
        }
        Err(error) => Err(cluster.explain(error)),
    }
}

async fn resync_scenario(c: &mut Cluster) -> Result<(Vec<String>, Vec<u32>, Vec<String>)> {
    let mut timings = Vec::new();
    let sleeper = |name: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}],
            },
        })
    };
    let survivor = c.create_pod(sleeper("survivor")).await?;
    let orphan = c.create_pod(sleeper("orphan")).await?;
    let mut ids = BTreeMap::new();
    for name in ["survivor", "orphan"] {
        let pod = c
            .wait_pod(name, "Running", MINUTE, |p| phase(p) == "Running")
            .await?;
        ids.insert(
            name,
            container_status(&pod)["containerID"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let orphan_pid = c.container_pid(&ids["orphan"]).await?;
    let status = c.sim().stop(libc::SIGKILL, Duration::from_secs(10))?;
    ensure!(!status.success());
    // Gone at once (grace 0): no kubelet sees it go.
    c.pods()
        .delete(
            "orphan",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    c.wait_gone("orphan", MINUTE).await?;
    let t = Instant::now();
    c.start_simulator()?;
    let orphan_uid = orphan.metadata.uid.clone().unwrap();
    wait_for("the orphan's sandbox to be removed", MINUTE, async || {
        let sandboxes = c.runtime.list_pods().await?;
        Ok(sandboxes.iter().all(|s| s.uid != orphan_uid).then_some(()))
    })
    .await?;
    timings.push(format!("restart to orphan removed {:.1?}", t.elapsed()));
    c.check_pod_removed(&orphan_uid).await?;
    ensure!(
        !is_running(orphan_pid),
        "the orphan's process {orphan_pid} survived"
    );
    let adopted = c.pods().get("survivor").await?;
    let status = container_status(&adopted);
    ensure!(
        phase(&adopted) == "Running" && status["containerID"] == ids["survivor"].as_str(),
        "{status}"
    );

    // The adopted pod's container dies: restartPolicy Always starts it again.
    let pid = c.container_pid(&ids["survivor"]).await?;
    // SAFETY: kill has no memory preconditions; pid is the container's init.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let t = Instant::now();
    let restarted = c
        .wait_pod("survivor", "restarted", MINUTE, |p| {
            let s = container_status(p);
            s["restartCount"] == 1 && s["state"]["running"].is_object()
        })
        .await?;
    timings.push(format!(
        "adopted container killed to running again {:.1?}",
        t.elapsed()
    ));
    let status = container_status(&restarted);
    let last = &status["lastState"]["terminated"];
    ensure!(
        last["exitCode"] == 137 && last["containerID"] == ids["survivor"].as_str(),
        "{status}"
    );
    let new_pid = c
        .container_pid(status["containerID"].as_str().unwrap())
        .await?;
    let uids = vec![survivor.metadata.uid.unwrap(), orphan_uid];
    Ok((uids, vec![pid, new_pid, orphan_pid], timings))
}
