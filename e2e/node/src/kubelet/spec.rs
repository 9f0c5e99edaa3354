//! A bound Pod turned into what the runtime runs: per container its image (through the
//! [`super::images::ImageAliases`]), command and args, environment, working directory and mounts,
//! as kubelet computes them.
//!
//! Environment: `envFrom` (ConfigMaps, Secrets), then `env` (`value` with `$(VAR)` expansion;
//! `valueFrom` `fieldRef`, `configMapKeyRef`, `secretKeyRef`, `resourceFieldRef`), then the
//! `kubernetes` service's variables kubelet always adds: `KUBERNETES_SERVICE_HOST` and
//! `KUBERNETES_SERVICE_PORT` name the API server itself (pods are host-network and there is no
//! kube-proxy), so in-cluster clients work. `command` and `args` get `$(VAR)` expansion too.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use kube::ResourceExt;

use super::volumes::{PrepError, Volumes, SERVICE_ACCOUNT_MOUNT};
use super::Ctx;
use crate::pod_spec::{BindMount, ContainerSpecLite};

/// The pod's and the host's IP: pods run in the host's network namespace, on loopback.
pub const HOST_IP: &str = "127.0.0.1";
/// Kubernetes' default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// kubelet reads at most this much of a termination message file.
pub const MAX_TERMINATION_MESSAGE: usize = 4096;

/// One container, ready to start any number of times.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub api: Container,
    /// Everything but the termination message file, which is new for each incarnation.
    pub base: ContainerSpecLite,
    /// Where the container writes its termination message.
    pub termination_path: String,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub fallback_to_logs: bool,
}

/// A downward API field (`fieldRef.fieldPath`). Whole label and annotation maps are allowed in
/// volumes only, as in Kubernetes.
pub fn field_value(pod: &Pod, path: &str, volume: bool) -> Option<String> {
    let spec = pod.spec.as_ref();
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    let map_lines = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Some(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => HOST_IP.into(),
        "metadata.labels" if volume => map_lines(pod.labels()),
        "metadata.annotations" if volume => map_lines(pod.annotations()),
        _ => {
            if let Some(key) = quoted("metadata.labels['") {
                pod.labels().get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = quoted("metadata.annotations['") {
                pod.annotations().get(&key).cloned().unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// A `resourceFieldRef`: pods have no requests or limits here (BestEffort), so a limit is the
/// node's capacity, as kubelet reports it, and a request is 0. Divisors are ignored.
pub fn resource_value(ctx: &Ctx, resource: &str) -> Option<String> {
    Some(match resource {
        "limits.cpu" => ctx.facts.cpus.to_string(),
        "limits.memory" => ctx.facts.memory_bytes.to_string(),
        "limits.ephemeral-storage" => ctx.facts.storage_bytes.to_string(),
        "requests.cpu" | "requests.memory" | "requests.ephemeral-storage" => "0".into(),
        _ => return None,
    })
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, and `$$` is a literal `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    let name = &inner[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[close + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Every container of the pod, planned (API reads for env sources happen here).
pub async fn plan_containers(
    ctx: &Ctx,
    pod: &Pod,
    volumes: &Volumes,
) -> Result<Vec<ContainerPlan>, PrepError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PrepError::config("pod has no spec"))?;
    let mut plans = Vec::with_capacity(spec.containers.len());
    for container in &spec.containers {
        plans.push(plan_container(ctx, pod, container, volumes).await?);
    }
    Ok(plans)
}

async fn plan_container(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    volumes: &Volumes,
) -> Result<ContainerPlan, PrepError> {
    let image = container
        .image
        .as_deref()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| PrepError::config(format!("container {} has no image", container.name)))?;
    let env = environment(ctx, pod, container).await?;
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let mut base = ContainerSpecLite::new(&container.name, ctx.config.images.resolve(image));
    base.command = container
        .command
        .iter()
        .flatten()
        .map(|c| expand(c, lookup))
        .collect();
    base.args = container
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, lookup))
        .collect();
    base.working_dir = container.working_dir.clone().filter(|d| !d.is_empty());
    for mount in container.volume_mounts.iter().flatten() {
        let host = volumes.by_name.get(&mount.name).ok_or_else(|| {
            PrepError::config(format!(
                "container {} mounts volume {:?}, which the pod does not have",
                container.name, mount.name
            ))
        })?;
        let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => sub.clone(),
            (_, Some(expr)) if !expr.is_empty() => expand(expr, lookup),
            _ => String::new(),
        };
        let host_path = if sub_path.is_empty() {
            host.path.clone()
        } else {
            let relative = Path::new(&sub_path);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(PrepError::config(format!(
                    "subPath {sub_path:?} must be relative, without .."
                )));
            }
            let path = host.path.join(relative);
            if !path.exists() && !host.read_only {
                std::fs::create_dir_all(&path).map_err(|e| {
                    PrepError::config(format!("creating subPath {}: {e}", path.display()))
                })?;
            }
            path
        };
        base.mounts.push(BindMount {
            host_path,
            container_path: mount.mount_path.clone(),
            read_only: mount.read_only == Some(true) || host.read_only,
        });
    }
    if let Some(dir) = &volumes.service_account {
        if !base
            .mounts
            .iter()
            .any(|m| m.container_path.trim_end_matches('/') == SERVICE_ACCOUNT_MOUNT)
        {
            base.mounts
                .push(BindMount::read_only(dir, SERVICE_ACCOUNT_MOUNT));
        }
    }
    base.env = env;
    Ok(ContainerPlan {
        api: container.clone(),
        base,
        termination_path: container
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.into()),
        fallback_to_logs: container.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
    })
}

fn set_var(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

async fn environment(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<(String, String)>, PrepError> {
    let namespace = pod.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let api_failed = |e: kube::Error| PrepError::config(format!("API: {e}"));
    let service_env = [
        ("KUBERNETES_SERVICE_HOST", ctx.api.host.clone()),
        ("KUBERNETES_SERVICE_PORT", ctx.api.port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", ctx.api.port.to_string()),
        (
            "KUBERNETES_PORT",
            format!("tcp://{}:{}", ctx.api.host, ctx.api.port),
        ),
    ];
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data: Vec<(String, String)> = if let Some(r) = &source.config_map_ref {
            match config_maps.get_opt(&r.name).await.map_err(api_failed)? {
                Some(cm) => cm.data.unwrap_or_default().into_iter().collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => {
                    return Err(PrepError::config(format!(
                        "configmap \"{}\" not found",
                        r.name
                    )))
                }
            }
        } else if let Some(r) = &source.secret_ref {
            match secrets.get_opt(&r.name).await.map_err(api_failed)? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => {
                    return Err(PrepError::config(format!(
                        "secret \"{}\" not found",
                        r.name
                    )))
                }
            }
        } else {
            Vec::new()
        };
        for (key, value) in data {
            set_var(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(field) = &source.field_ref {
                field_value(pod, &field.field_path, false).ok_or_else(|| {
                    PrepError::config(format!("unsupported fieldRef {:?}", field.field_path))
                })?
            } else if let Some(r) = &source.config_map_key_ref {
                let value = config_maps
                    .get_opt(&r.name)
                    .await
                    .map_err(api_failed)?
                    .and_then(|cm| cm.data.unwrap_or_default().remove(&r.key));
                match value {
                    Some(value) => value,
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(PrepError::config(format!(
                            "couldn't find key {} in ConfigMap {namespace}/{}",
                            r.key, r.name
                        )))
                    }
                }
            } else if let Some(r) = &source.secret_key_ref {
                let value = secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(api_failed)?
                    .and_then(|s| s.data.unwrap_or_default().remove(&r.key));
                match value {
                    Some(value) => String::from_utf8_lossy(&value.0).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(PrepError::config(format!(
                            "couldn't find key {} in Secret {namespace}/{}",
                            r.key, r.name
                        )))
                    }
                }
            } else if let Some(r) = &source.resource_field_ref {
                resource_value(ctx, &r.resource).ok_or_else(|| {
                    PrepError::config(format!("unsupported resourceFieldRef {:?}", r.resource))
                })?
            } else {
                String::new()
            }
        } else {
            let value = var.value.clone().unwrap_or_default();
            expand(&value, |name| {
                env.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| {
                        service_env
                            .iter()
                            .find(|(k, _)| *k == name)
                            .map(|(_, v)| v.clone())
                    })
            })
        };
        set_var(&mut env, var.name.clone(), value);
    }
    for (key, value) in service_env {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_string(), value));
        }
    }
    Ok(env)
}

/// The host file bound at the container's termination message path, one per incarnation.
pub fn termination_log_file(ctx: &Ctx, uid: &str, container: &str, attempt: u32) -> PathBuf {
    ctx.pod_dir(uid)
        .join("containers")
        .join(container)
        .join(format!("{attempt}-termination-log"))
}

/// The container spec for one incarnation: the plan plus a fresh, empty termination message
/// file (world-writable, as kubelet makes it, for containers running as any user).
pub fn spec_for_attempt(
    ctx: &Ctx,
    uid: &str,
    plan: &ContainerPlan,
    attempt: u32,
) -> io::Result<ContainerSpecLite> {
    let file = termination_log_file(ctx, uid, &plan.api.name, attempt);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(&file)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    let mut spec = plan.base.clone();
    spec.mounts
        .push(BindMount::read_write(file, plan.termination_path.clone()));
    Ok(spec)
}

/// What kubelet puts in `terminated.message`: the termination message file (at most 4096
/// bytes), or with `FallbackToLogsOnError` and a failed, silent container, the end of its log
/// (80 lines, 2048 bytes at most).
pub fn termination_message(
    ctx: &Ctx,
    pod: &Pod,
    plan: &ContainerPlan,
    attempt: u32,
    exit_code: i32,
) -> String {
    let uid = pod.uid().unwrap_or_default();
    let file = termination_log_file(ctx, &uid, &plan.api.name, attempt);
    let mut message = std::fs::read(&file).unwrap_or_default();
    message.truncate(MAX_TERMINATION_MESSAGE);
    let message = String::from_utf8_lossy(&message).into_owned();
    if !message.is_empty() || !plan.fallback_to_logs || exit_code == 0 {
        return message;
    }
    let log = ctx
        .log_dir(pod)
        .join(&plan.api.name)
        .join(format!("{attempt}.log"));
    log_tail(&std::fs::read_to_string(log).unwrap_or_default(), 80, 2048)
}

/// The last `lines` lines (at most `bytes` bytes) of a CRI log, prefixes stripped.
fn log_tail(log: &str, lines: usize, bytes: usize) -> String {
    let text: Vec<&str> = log
        .lines()
        .map(|line| line.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect();
    let mut tail = text[text.len().saturating_sub(lines)..].join("\n");
    if tail.len() > bytes {
        let mut cut = tail.len() - bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)/$(B)", lookup), "x/$(B)");
        assert_eq!(expand("$$(A) $$ $", lookup), "$(A) $ $");
        assert_eq!(expand("cost: $5 $(A", lookup), "cost: $5 $(A");
        assert_eq!(expand("plain", lookup), "plain");
    }

    #[test]
    fn downward_fields() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "w".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: None,
        };
        let get = |path| field_value(&pod, path, false);
        assert_eq!(get("metadata.name").as_deref(), Some("p"));
        assert_eq!(get("metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(get("metadata.uid").as_deref(), Some("u-1"));
        assert_eq!(get("spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(get("status.podIP").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("metadata.labels['app']").as_deref(), Some("w"));
        assert_eq!(get("metadata.labels"), None);
        assert_eq!(
            field_value(&pod, "metadata.labels", true).as_deref(),
            Some("app=\"w\"\n")
        );
        assert_eq!(get("spec.bogus"), None);
    }

    #[test]
    fn log_tail_strips_cri_prefixes() {
        let log = "2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:00Z stderr F two words\n";
        assert_eq!(log_tail(log, 80, 2048), "one\ntwo words");
        assert_eq!(log_tail(log, 1, 2048), "two words");
        assert_eq!(log_tail(log, 80, 5), "words");
    }
}
