//! The Node object and its heartbeat, kubelet's way: the Node is registered with server-side
//! apply (labels, then status: Ready, addresses, capacity, nodeInfo), then every heartbeat the
//! Ready condition's `lastHeartbeatTime` is renewed and so is the node's Lease in
//! `kube-node-lease` (created if missing; without it, the Node status alone is the heartbeat).

use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::clock;
use super::volumes::MANAGER;
use super::Ctx;

/// What kubelet reports as its version.
pub const KUBELET_VERSION: &str = "v1.33.0";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;

/// The host, as the Node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub architecture: String,
}

impl NodeFacts {
    /// Read from the host; `state_dir`'s filesystem is the node's ephemeral storage.
    pub fn gather(state_dir: &Path) -> NodeFacts {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        NodeFacts {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: memory_kib * 1024,
            storage_bytes: filesystem_bytes(state_dir),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64".into(),
                "aarch64" => "arm64".into(),
                other => other.into(),
            },
        }
    }
}

/// The size of the filesystem holding `path` (or its nearest existing ancestor).
fn filesystem_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = path.ancestors().find(|p| p.exists()) else {
        return 0;
    };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes only into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) == 0 {
            stat.f_blocks as u64 * stat.f_frsize as u64
        } else {
            0
        }
    }
}

/// The Node's status at `now`; `ready_since` is the Ready condition's lastTransitionTime.
pub fn node_status(ctx: &Ctx, runtime_version: &str, ready_since: &str, now: &str) -> Value {
    let facts = &ctx.facts;
    let resources = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        "ephemeral-storage": facts.storage_bytes.to_string(),
        "pods": "110",
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str, since: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    };
    json!({
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available", ready_since),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure", ready_since),
            condition("PIDPressure", "False", "KubeletHasSufficientPID",
                "kubelet has sufficient PID available", ready_since),
            condition("Ready", "True", "KubeletReady",
                "kubelet is posting ready status (diffkeeper-node-sim)", ready_since),
        ],
        "addresses": [
            {"type": "InternalIP", "address": super::spec::HOST_IP},
            {"type": "Hostname", "address": ctx.config.node_name},
        ],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.streaming_port}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel_version,
            "osImage": facts.os_image,
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
    })
}

/// `containerd 1.6.20~ds1` (the CRI's name and version) → `containerd://1.6.20~ds1`.
pub fn runtime_version_uri(version: &str) -> String {
    match version.split_once(' ') {
        Some((name, version)) => format!("{name}://{version}"),
        None => version.to_string(),
    }
}

/// Registers the Node and returns its uid.
pub async fn register(ctx: &Ctx, runtime_version: &str, ready_since: &str) -> kube::Result<String> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let name = &ctx.config.node_name;
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": ctx.facts.architecture,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": ctx.facts.architecture,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
    });
    let params = PatchParams::apply(MANAGER).force();
    let applied = nodes.patch(name, &params, &Patch::Apply(node)).await?;
    update_status(ctx, runtime_version, ready_since).await?;
    Ok(applied.uid().unwrap_or_default())
}

async fn update_status(ctx: &Ctx, runtime_version: &str, ready_since: &str) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.config.node_name},
        "status": node_status(ctx, runtime_version, ready_since, &clock::now()),
    });
    nodes
        .patch_status(
            &ctx.config.node_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(status),
        )
        .await?;
    Ok(())
}

/// Whether `kube-node-lease` exists or could be created.
async fn lease_namespace(ctx: &Ctx) -> bool {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match namespaces.get_opt(LEASE_NAMESPACE).await {
        Ok(Some(_)) => true,
        Ok(None) => {
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": LEASE_NAMESPACE}
            }))
            .expect("a valid Namespace");
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => true,
                Err(kube::Error::Api(status)) if status.code == 409 => true,
                Err(error) => {
                    tracing::warn!("no {LEASE_NAMESPACE} namespace ({error}): no node Lease");
                    false
                }
            }
        }
        Err(error) => {
            tracing::warn!("cannot read namespace {LEASE_NAMESPACE} ({error}): no node Lease");
            false
        }
    }
}

async fn renew_lease(ctx: &Ctx, node_uid: &str) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let name = &ctx.config.node_name;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid,
            }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": clock::micro_time(SystemTime::now()),
        },
    });
    leases
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

/// Registers the node, then heartbeats until dropped (run it as a task and abort it).
pub async fn heartbeat(
    ctx: std::sync::Arc<Ctx>,
    runtime_version: String,
    node_uid: String,
    ready_since: String,
) {
    let with_lease = lease_namespace(&ctx).await;
    let interval = ctx.config.heartbeat_interval;
    loop {
        if with_lease {
            if let Err(error) = renew_lease(&ctx, &node_uid).await {
                tracing::warn!("renewing the node Lease: {error}");
            }
        }
        if let Err(error) = update_status(&ctx, &runtime_version, &ready_since).await {
            tracing::warn!("updating the Node status: {error}");
        }
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_version_becomes_a_uri() {
        assert_eq!(
            runtime_version_uri("containerd 1.6.20~ds1"),
            "containerd://1.6.20~ds1"
        );
    }

    #[test]
    fn facts_are_read_from_the_host() {
        let facts = NodeFacts::gather(Path::new("/"));
        assert!(facts.cpus >= 1 && facts.memory_bytes > 0 && facts.storage_bytes > 0);
        assert!(!facts.kernel_version.is_empty());
    }
}
