//! Real containers through the CRI, as kubelet drives them: a private containerd started by
//! `scripts/e2e-runtime.sh`, a busybox pod that writes files and fails, and everything gone again
//! afterwards. Needs root and the packages `scripts/e2e-runtime.sh install` brings; it fails
//! (never skips) without them, saying what to run.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use diffkeeper_node_sim::mountinfo::{cgroup2_mount, read_mountinfo};
use diffkeeper_node_sim::pod_cgroups::pod_cgroup_dirs;
use diffkeeper_node_sim::{
    BindMount, ContainerSpecLite, ContainerState, PodHandle, PodPhaseLite, PodSpecLite, Runtime,
    RuntimeEnv,
};

mod common;
use common::{is_running, mounts_under, processes_mentioning, wait_for};

const FIX: &str = "run as root, after `sudo bash scripts/e2e-runtime.sh install` (Debian packages \
                   containerd, runc, umoci, busybox-static, jq; builds the test images)";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/e2e-runtime.sh")
}

fn run_script(args: &[&str]) -> Result<()> {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .context("running bash")?;
    if !output.status.success() {
        bail!(
            "scripts/e2e-runtime.sh {} failed ({}):\n{}\nFix: {FIX}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Stops the private containerd however the test ends (a failed assertion panics).
struct RuntimeDir {
    dir: PathBuf,
    stopped: bool,
}

impl RuntimeDir {
    fn start(dir: &Path) -> Result<RuntimeDir> {
        run_script(&["start", dir.to_str().context("temp dir path is not UTF-8")?])?;
        Ok(RuntimeDir {
            dir: dir.to_path_buf(),
            stopped: false,
        })
    }

    fn stop(&mut self) -> Result<()> {
        self.stopped = true;
        run_script(&[
            "stop",
            self.dir.to_str().context("temp dir path is not UTF-8")?,
        ])
    }

    fn containerd_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(error) = self.stop() {
                eprintln!("cleanup: {error:#}");
            }
        }
    }
}

fn unique_uid() -> String {
    // Pod uids are UUIDs in Kubernetes; any unique string does for the CRI and cgroup names.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("e2e-{}-{nanos:x}", std::process::id())
}

fn container_log(pod: &PodHandle) -> String {
    pod.containers
        .iter()
        .filter_map(|c| c.log_path.as_ref())
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect()
}

/// The tests share the host's kubepods/ cgroup trees, which `stop` prunes: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private containerd in a temp dir, and a CRI client for it.
struct Fixture {
    scratch: tempfile::TempDir,
    runtime_dir: RuntimeDir,
    env: RuntimeEnv,
    runtime: Runtime,
    timings: String,
}

impl Fixture {
    async fn start() -> Result<Fixture> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        ensure!(euid == 0, "this test runs real containers: {FIX}");
        let started = Instant::now();
        run_script(&["install"])?;
        let install_time = started.elapsed();
        let scratch = tempfile::tempdir()?;
        let dir = scratch.path().join("runtime");
        let started = Instant::now();
        let runtime_dir = RuntimeDir::start(&dir)?;
        let start_time = started.elapsed();
        let env = RuntimeEnv::load(&dir)?;
        let runtime = Runtime::connect(&env.containerd_address)
            .await?
            .with_log_root(scratch.path().join("logs"));
        let version = runtime.version().await?;
        ensure!(version.starts_with("containerd"), "runtime is {version}");
        Ok(Fixture {
            scratch,
            runtime_dir,
            env,
            runtime,
            timings: format!("install {install_time:?}, start {start_time:?}"),
        })
    }

    /// `scripts/e2e-runtime.sh stop`, then checks that nothing of the runtime survived it:
    /// processes, mounts, the given pods' cgroups, containerd's root and state.
    fn stop_and_check(mut self, container_pids: &[u32], pods: &[&PodHandle]) -> Result<String> {
        let started = Instant::now();
        self.runtime_dir.stop()?;
        let stop_time = started.elapsed();
        let containerd = self.env.containerd_pid;
        ensure!(
            !is_running(containerd),
            "containerd {containerd} still runs"
        );
        for pid in container_pids {
            ensure!(!is_running(*pid), "container process {pid} survived stop");
        }
        let processes = processes_mentioning(self.scratch.path());
        ensure!(processes.is_empty(), "processes left: {processes:?}");
        let mounts = mounts_under(self.scratch.path())?;
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        for pod in pods {
            let cgroups = pod_cgroup_dirs(&pod.cgroup_parent)?;
            ensure!(cgroups.is_empty(), "pod cgroups left by stop: {cgroups:?}");
        }
        let dir = &self.runtime_dir.dir;
        ensure!(
            !dir.join("root").exists() && !dir.join("state").exists(),
            "containerd's root or state is left under {}",
            dir.display()
        );
        Ok(format!("{}, stop {stop_time:?}", self.timings))
    }

    /// What went wrong, with containerd's side of it.
    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!(
            "--- containerd.log (tail) ---\n{}",
            self.runtime_dir.containerd_log_tail()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_pod_writes_fails_and_leaves_nothing_behind() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let fixture = Fixture::start().await?;
    let (running_pid, left_running, timings) =
        pods_scenario(&fixture.env, &fixture.runtime, fixture.scratch.path())
            .await
            .map_err(|error| fixture.explain(error))?;
    let stop_timings = fixture.stop_and_check(&[running_pid], &[&left_running])?;
    println!("{stop_timings}, {timings} (stop with one pod left running)");
    Ok(())
}

/// `stop` after containerd died: its shims and their containers are still there, and only runc's
/// state still knows the containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cleans_up_after_containerd_crashed() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let fixture = Fixture::start().await?;
    let (pod, pid) = run_sleeper(&fixture.env, &fixture.runtime)
        .await
        .map_err(|error| fixture.explain(error))?;
    // SAFETY: kill has no memory preconditions; the pid is the containerd this test started.
    let killed = unsafe { libc::kill(fixture.env.containerd_pid as libc::pid_t, libc::SIGKILL) };
    ensure!(
        killed == 0,
        "kill containerd: {}",
        std::io::Error::last_os_error()
    );
    let timings = fixture.stop_and_check(&[pid], &[&pod])?;
    println!("{timings} (stop after containerd was SIGKILLed with a pod running)");
    Ok(())
}

/// A pod whose container sleeps, and that container's pid.
async fn run_sleeper(env: &RuntimeEnv, runtime: &Runtime) -> Result<(PodHandle, u32)> {
    let sleeper = PodSpecLite::new("sleeper", "e2e", unique_uid()).container(
        ContainerSpecLite::new("sleeper", &env.busybox_image).command(["sleep", "1000"]),
    );
    let sleeper = runtime.run_pod(&sleeper).await?;
    let pid = wait_for("the sleeper's pid", Duration::from_secs(10), async || {
        Ok(runtime
            .container_status(&sleeper.containers[0].id)
            .await?
            .pid)
    })
    .await?;
    Ok((sleeper, pid))
}

/// Returns the pid of a container left running for `stop` to clean up, its pod, and timings.
async fn pods_scenario(
    env: &RuntimeEnv,
    runtime: &Runtime,
    scratch: &Path,
) -> Result<(u32, PodHandle, String)> {
    // The pod sees the host directory `control` at /control: its "I wrote" and the test's "go".
    let control = scratch.join("control");
    std::fs::create_dir(&control)?;
    let uid = unique_uid();
    let pod = PodSpecLite::new("writer", "e2e", &uid)
        .label("app", "writer")
        .annotation("diffkeeper.io/test", "cri-runtime")
        .container(
            ContainerSpecLite::new("writer", &env.busybox_image)
                .command(["/bin/sh", "-c"])
                .args([
                    "mkdir -p /work/sub && echo one > /work/a.txt && echo two > /work/sub/b.txt \
                     && printf \"$GREETING\" > /greeting && touch /control/written \
                     && while [ ! -e /control/go ]; do sleep 0.02; done; echo failing; exit 1",
                ])
                .env("GREETING", "hello")
                .mount(BindMount::read_write(&control, "/control")),
        );
    let started = Instant::now();
    let handle = runtime.run_pod(&pod).await?;
    let run_time = started.elapsed();
    let writer = &handle.containers[0];

    wait_for(
        "the container's files",
        Duration::from_secs(10),
        async || Ok(control.join("written").exists().then_some(())),
    )
    .await
    .with_context(|| format!("container log: {}", container_log(&handle)))?;
    let status = runtime.container_status(&writer.id).await?;
    ensure!(status.state == ContainerState::Running, "{status:?}");
    let pid = status.pid.context("a running container has a pid")?;
    for namespace in ["pid", "mnt"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{namespace}"))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{namespace}"))?;
        ensure!(
            theirs != ours,
            "the container shares our {namespace} namespace"
        );
    }

    // The mapping the agent needs: container -> cgroup v2 id and overlay upper dir.
    let location = runtime.locate(&writer.id).await?;
    ensure!(location.pid == pid);
    let expected_cgroup = format!("{}/{}", handle.cgroup_parent, writer.id);
    ensure!(
        location.cgroup_path == expected_cgroup
            && status.cgroups_path.as_deref() == Some(expected_cgroup.as_str()),
        "cgroup path {} (runtime spec says {:?}), expected {expected_cgroup}",
        location.cgroup_path,
        status.cgroups_path
    );
    let mounts = read_mountinfo(None)?;
    let unified = cgroup2_mount(&mounts).context("no cgroup2 mount")?;
    let cgroup_dir = unified.join(expected_cgroup.trim_start_matches('/'));
    ensure!(location.cgroup_dir == cgroup_dir);
    ensure!(location.cgroup_id == std::fs::metadata(&cgroup_dir)?.ino() && location.cgroup_id > 1);
    let procs = std::fs::read_to_string(cgroup_dir.join("cgroup.procs"))?;
    ensure!(
        procs.lines().any(|line| line == pid.to_string()),
        "pid {pid} not in {}: {procs}",
        cgroup_dir.display()
    );
    let upper = &location.upper_dir;
    let read_upper = |relative: &str| std::fs::read_to_string(upper.join(relative));
    ensure!(read_upper("work/a.txt")? == "one\n");
    ensure!(read_upper("work/sub/b.txt")? == "two\n");
    ensure!(read_upper("greeting")? == "hello");
    ensure!(
        !upper.join("bin/busybox").exists()
            && location
                .lower_dirs
                .iter()
                .any(|l| l.join("bin/busybox").exists()),
        "the image's files are in the lower layers, not the upper one"
    );

    std::fs::write(control.join("go"), b"")?;
    let exited = wait_for(
        "the container's exit",
        Duration::from_secs(10),
        async || {
            let status = runtime.status(&handle).await?;
            Ok((status.phase() == PodPhaseLite::Failed).then_some(status))
        },
    )
    .await?;
    let writer_status = exited.container("writer").context("writer status")?;
    ensure!(writer_status.exit_code == Some(1), "{writer_status:?}");
    ensure!(writer_status.pid.is_none() && writer_status.reason == "Error");
    let (start, finish) = (
        writer_status.started_at.context("started_at")?,
        writer_status.finished_at.context("finished_at")?,
    );
    ensure!(
        start <= finish,
        "started {start:?} after finishing {finish:?}"
    );
    ensure!(container_log(&handle).contains("failing"));
    // The writable layer outlives the process until the container is removed.
    ensure!(read_upper("work/a.txt")? == "one\n");

    let listed = runtime.list_pods().await?;
    let relisted = listed
        .iter()
        .find(|p| p.sandbox_id == handle.sandbox_id)
        .context("list_pods misses the pod")?;
    ensure!(relisted.uid == uid && relisted.name == "writer" && relisted.namespace == "e2e");
    ensure!(relisted.containers.iter().map(|c| &c.id).eq([&writer.id]));

    runtime.stop_pod(&handle, Duration::from_secs(1)).await?;
    runtime.remove_pod(&handle).await?;
    let cgroups = pod_cgroup_dirs(&handle.cgroup_parent)?;
    ensure!(
        cgroups.is_empty(),
        "remove_pod left pod cgroups: {cgroups:?}"
    );
    // (The upper dir itself goes later, with containerd's garbage collection of the snapshot.)
    ensure!(runtime
        .list_pods()
        .await?
        .iter()
        .all(|p| p.sandbox_id != handle.sandbox_id));

    // A pod left running, for `stop` to clean up as after a failed test.
    let (sleeper, sleeper_pid) = run_sleeper(env, runtime).await?;
    let timings = format!("run_pod (sandbox + container started) {run_time:?}");
    Ok((sleeper_pid, sleeper, timings))
}
