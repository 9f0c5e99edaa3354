//! A pod's volumes, made into host directories the runtime binds into containers (CRI mounts,
//! so nothing is mounted in the host's own mount namespace):
//!
//! - `hostPath`: the path as it is (`DirectoryOrCreate`/`FileOrCreate` create it,
//!   `Directory`/`File`/`Socket`... must exist).
//! - `emptyDir`: `STATE/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, removed with the pod.
//! - `persistentVolumeClaim`: the simulator is also the local provisioner. An unbound claim gets
//!   a `hostPath` PersistentVolume `pvc-<claim uid>` at `VOLUMES/<namespace>/<claim>` (Retain,
//!   pinned to this node), and the claim is bound to it (`spec.volumeName`, status `Bound`); a
//!   bound claim's volume path (`hostPath` or `local`) is used as it is.
//! - `configMap`, `secret`, `downwardAPI`, `projected`: their keys written as files under
//!   `STATE/pods/<uid>/volumes/...` and bound read-only. A missing ConfigMap or Secret that is not
//!   `optional` fails the mount (kubelet's `FailedMount`), and the pod waits.
//! - The service account volume kubelet's admission would add (`kube-api-access-*`): unless
//!   `automountServiceAccountToken` is false, every container gets
//!   `/var/run/secrets/kubernetes.io/serviceaccount` with `token`, `ca.crt` (the API server's CA,
//!   from the kubeconfig) and `namespace`. The token is `--service-account-token-file`'s when
//!   given, else one from the TokenRequest API for the pod's service account; with neither (the
//!   service account does not exist) there is no `token` file. Tokens are not refreshed.
//!
//! Files are written once per pod start (not kept in sync with later ConfigMap changes).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount, Volume,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use super::spec::{field_value, resource_value};
use super::Ctx;

/// Where kubelet mounts the service account volume.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The field manager of every write the simulator makes.
pub const MANAGER: &str = "diffkeeper-node-sim";

/// Why a pod cannot start yet; it is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepError {
    pub kind: PrepKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepKind {
    /// A volume could not be set up: event `FailedMount`, containers `ContainerCreating`.
    Mount,
    /// A container's config (env from a ConfigMap, a volume mount) is wrong: event `Failed`,
    /// container waiting `CreateContainerConfigError`.
    Config,
}

impl PrepError {
    pub fn mount(message: impl Into<String>) -> PrepError {
        PrepError {
            kind: PrepKind::Mount,
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> PrepError {
        PrepError {
            kind: PrepKind::Config,
            message: message.into(),
        }
    }
}

/// A volume on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub path: PathBuf,
    /// configMap, secret, downwardAPI, projected and read-only claims are bound read-only.
    pub read_only: bool,
}

/// The pod's volumes, by name, plus the service account directory if one is mounted.
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    pub by_name: HashMap<String, HostVolume>,
    pub service_account: Option<PathBuf>,
}

pub fn pod_volume_dir(ctx: &Ctx, uid: &str, plugin: &str, name: &str) -> PathBuf {
    ctx.pod_dir(uid)
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

/// Sets up every volume of the pod (idempotent: a second call rewrites the same files).
pub async fn prepare(ctx: &Ctx, pod: &Pod) -> Result<Volumes, PrepError> {
    let uid = pod.uid().unwrap_or_default();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PrepError::config("pod has no spec"))?;
    let mut volumes = Volumes::default();
    for volume in spec.volumes.iter().flatten() {
        let host = prepare_one(ctx, pod, &uid, volume)
            .await
            .map_err(|mut error| {
                error.message = format!(
                    "MountVolume.SetUp failed for volume \"{}\" : {}",
                    volume.name, error.message
                );
                error
            })?;
        volumes.by_name.insert(volume.name.clone(), host);
    }
    if spec.automount_service_account_token != Some(false) {
        let dir = pod_volume_dir(ctx, &uid, "projected", "kube-api-access-sim");
        let mut files = Vec::new();
        if let Some(token) = service_account_token(ctx, pod, None, None).await? {
            files.push(file("token", token.into_bytes(), 0o644));
        }
        if let Some(ca) = &ctx.api.ca_pem {
            files.push(file("ca.crt", ca.clone().into_bytes(), 0o644));
        }
        files.push(file(
            "namespace",
            pod.namespace().unwrap_or_default().into_bytes(),
            0o644,
        ));
        write_files(&dir, &files)
            .map_err(|e| io_failed("writing the service account volume", &dir, e))?;
        volumes.service_account = Some(dir);
    }
    Ok(volumes)
}

async fn prepare_one(
    ctx: &Ctx,
    pod: &Pod,
    uid: &str,
    volume: &Volume,
) -> Result<HostVolume, PrepError> {
    let namespace = pod.namespace().unwrap_or_default();
    let read_write = |path: PathBuf| HostVolume {
        path,
        read_only: false,
    };
    if let Some(host_path) = &volume.host_path {
        let path = PathBuf::from(&host_path.path);
        check_host_path(&path, host_path.type_.as_deref().unwrap_or(""))?;
        return Ok(read_write(path));
    }
    if volume.empty_dir.is_some() {
        let dir = pod_volume_dir(ctx, uid, "empty-dir", &volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_failed("creating", &dir, e))?;
        // Like kubelet's: world-writable, so a container running as any user can use it.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        return Ok(read_write(dir));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let path = claim_path(ctx, &namespace, &claim.claim_name).await?;
        return Ok(HostVolume {
            path,
            read_only: claim.read_only == Some(true),
        });
    }
    let (plugin, files) = if let Some(source) = &volume.config_map {
        let mode = source.default_mode.unwrap_or(0o644);
        let files = config_map_files(
            ctx,
            &namespace,
            &source.name,
            source.items.as_deref(),
            source.optional == Some(true),
            mode,
        )
        .await?;
        ("configmap", files)
    } else if let Some(source) = &volume.secret {
        let mode = source.default_mode.unwrap_or(0o644);
        let name = source.secret_name.clone().unwrap_or_default();
        let files = secret_files(
            ctx,
            &namespace,
            &name,
            source.items.as_deref(),
            source.optional == Some(true),
            mode,
        )
        .await?;
        ("secret", files)
    } else if let Some(source) = &volume.downward_api {
        let mode = source.default_mode.unwrap_or(0o644);
        let files = downward_files(ctx, pod, source.items.as_deref().unwrap_or(&[]), mode)?;
        ("downward-api", files)
    } else if let Some(source) = &volume.projected {
        let mode = source.default_mode.unwrap_or(0o644);
        let mut files = Vec::new();
        for projection in source.sources.iter().flatten() {
            if let Some(p) = &projection.config_map {
                files.extend(
                    config_map_files(
                        ctx,
                        &namespace,
                        &p.name,
                        p.items.as_deref(),
                        p.optional == Some(true),
                        mode,
                    )
                    .await?,
                );
            } else if let Some(p) = &projection.secret {
                files.extend(
                    secret_files(
                        ctx,
                        &namespace,
                        &p.name,
                        p.items.as_deref(),
                        p.optional == Some(true),
                        mode,
                    )
                    .await?,
                );
            } else if let Some(p) = &projection.downward_api {
                files.extend(downward_files(
                    ctx,
                    pod,
                    p.items.as_deref().unwrap_or(&[]),
                    mode,
                )?);
            } else if let Some(p) = &projection.service_account_token {
                let token =
                    service_account_token(ctx, pod, p.audience.clone(), p.expiration_seconds)
                        .await?;
                if let Some(token) = token {
                    files.push(file(&p.path, token.into_bytes(), mode as u32));
                }
            } else {
                return Err(PrepError::mount(
                    "projected source not supported by the node simulator (only configMap, \
                     secret, downwardAPI, serviceAccountToken)",
                ));
            }
        }
        ("projected", files)
    } else {
        return Err(PrepError::mount(
            "volume type not supported by the node simulator (hostPath, emptyDir, \
             persistentVolumeClaim, configMap, secret, downwardAPI, projected are)",
        ));
    };
    let dir = pod_volume_dir(ctx, uid, plugin, &volume.name);
    write_files(&dir, &files).map_err(|e| io_failed("writing", &dir, e))?;
    Ok(HostVolume {
        path: dir,
        read_only: true,
    })
}

fn check_host_path(path: &Path, kind: &str) -> Result<(), PrepError> {
    let missing = |what: &str| {
        Err(PrepError::mount(format!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        )))
    };
    match kind {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(path).map_err(|e| io_failed("creating", path, e))?;
        }
        "FileOrCreate" if !path.exists() => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_failed("creating", parent, e))?;
            }
            std::fs::File::create(path).map_err(|e| io_failed("creating", path, e))?;
        }
        "Directory" if !path.is_dir() => return missing("directory"),
        "File" if !path.is_file() => return missing("file"),
        "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => return missing(kind),
        _ => {}
    }
    Ok(())
}

/// One file of a configMap/secret/downwardAPI/projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

fn file(path: &str, data: Vec<u8>, mode: u32) -> VolumeFile {
    VolumeFile {
        path: path.to_string(),
        data,
        mode,
    }
}

/// Picks `items` (or every key, when there are none) out of `data`.
fn select_keys(
    what: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: i32,
) -> Result<Vec<VolumeFile>, PrepError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(key, value)| file(key, value.clone(), mode as u32))
            .collect()),
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(value) => files.push(file(
                        &item.path,
                        value.clone(),
                        item.mode.unwrap_or(mode) as u32,
                    )),
                    None if optional => {}
                    None => {
                        return Err(PrepError::mount(format!(
                            "{what} references non-existent key {:?}",
                            item.key
                        )))
                    }
                }
            }
            Ok(files)
        }
    }
}

async fn config_map_files(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: i32,
) -> Result<Vec<VolumeFile>, PrepError> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(config_map) = api.get_opt(name).await.map_err(api_failed)? else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(PrepError::mount(format!("configmap \"{name}\" not found")))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        config_map
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    select_keys(
        &format!("configmap \"{name}\""),
        &data,
        items,
        optional,
        mode,
    )
}

async fn secret_files(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: i32,
) -> Result<Vec<VolumeFile>, PrepError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = api.get_opt(name).await.map_err(api_failed)? else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(PrepError::mount(format!("secret \"{name}\" not found")))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    select_keys(&format!("secret \"{name}\""), &data, items, optional, mode)
}

fn downward_files(
    ctx: &Ctx,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
) -> Result<Vec<VolumeFile>, PrepError> {
    let mut files = Vec::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            field_value(pod, &field.field_path, true).ok_or_else(|| {
                PrepError::mount(format!("unsupported fieldRef {:?}", field.field_path))
            })?
        } else if let Some(resource) = &item.resource_field_ref {
            resource_value(ctx, &resource.resource).ok_or_else(|| {
                PrepError::mount(format!(
                    "unsupported resourceFieldRef {:?}",
                    resource.resource
                ))
            })?
        } else {
            return Err(PrepError::mount(format!(
                "item {:?} has no source",
                item.path
            )));
        };
        files.push(file(
            &item.path,
            value.into_bytes(),
            item.mode.unwrap_or(mode) as u32,
        ));
    }
    Ok(files)
}

/// The token for the pod's service account (see the module docs).
async fn service_account_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: Option<i64>,
) -> Result<Option<String>, PrepError> {
    if let Some(token) = &ctx.config.service_account_token {
        return Ok(Some(token.clone()));
    }
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> =
        Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3607).max(600)),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    match api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
    {
        Ok(response) => Ok(response.status.map(|s| s.token)),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::debug!(
                pod = %pod.name_any(),
                "service account {account} does not exist: no token in the pod"
            );
            Ok(None)
        }
        Err(error) => Err(PrepError::mount(format!(
            "requesting a token for service account {account}: {error}"
        ))),
    }
}

/// The host directory of a claim, provisioning and binding a volume for it if it has none.
async fn claim_path(ctx: &Ctx, namespace: &str, claim: &str) -> Result<PathBuf, PrepError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pvc = claims
        .get_opt(claim)
        .await
        .map_err(api_failed)?
        .ok_or_else(|| PrepError::mount(format!("persistentvolumeclaim \"{claim}\" not found")))?;
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(PrepError::mount(format!(
            "persistentvolumeclaim \"{claim}\" is being deleted"
        )));
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let bound_to = spec.volume_name.clone().filter(|name| !name.is_empty());
    let volume_name = match &bound_to {
        Some(name) => name.clone(),
        None => provision(ctx, &volumes, &pvc).await?,
    };
    let pv = volumes
        .get_opt(&volume_name)
        .await
        .map_err(api_failed)?
        .ok_or_else(|| {
            PrepError::mount(format!(
                "persistentvolume \"{volume_name}\" of claim \"{claim}\" not found"
            ))
        })?;
    let pv_spec = pv.spec.clone().unwrap_or_default();
    let path = pv_spec
        .host_path
        .as_ref()
        .map(|h| PathBuf::from(&h.path))
        .or_else(|| pv_spec.local.as_ref().map(|l| PathBuf::from(&l.path)))
        .ok_or_else(|| {
            PrepError::mount(format!(
                "persistentvolume \"{volume_name}\" is neither hostPath nor local"
            ))
        })?;
    std::fs::create_dir_all(&path).map_err(|e| io_failed("creating", &path, e))?;
    let claim_bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound_to.is_none() || !claim_bound {
        bind_claim(&claims, &volumes, &pvc, &pv).await?;
    }
    Ok(path)
}

/// Creates (or finds) the claim's volume `pvc-<claim uid>` under `VOLUMES/<namespace>/<claim>`.
async fn provision(
    ctx: &Ctx,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
) -> Result<String, PrepError> {
    let namespace = pvc.namespace().unwrap_or_default();
    let claim = pvc.name_any();
    let name = format!("pvc-{}", pvc.uid().unwrap_or_default());
    let dir = ctx.config.volumes_dir.join(&namespace).join(&claim);
    std::fs::create_dir_all(&dir).map_err(|e| io_failed("creating", &dir, e))?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|modes| !modes.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let mut pv_spec = json!({
        "capacity": {"storage": storage},
        "accessModes": access_modes,
        "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
        "persistentVolumeReclaimPolicy": "Retain",
        "volumeMode": "Filesystem",
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": namespace,
            "name": claim,
            "uid": pvc.uid().unwrap_or_default(),
        },
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
            "key": "kubernetes.io/hostname", "operator": "In",
            "values": [ctx.config.node_name],
        }]}]}},
    });
    if let Some(class) = spec.storage_class_name.as_ref().filter(|c| !c.is_empty()) {
        pv_spec["storageClassName"] = json!(class);
    }
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": MANAGER},
        },
        "spec": pv_spec,
    });
    volumes
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(pv),
        )
        .await
        .map_err(api_failed)?;
    tracing::info!(%namespace, %claim, volume = %name, dir = %dir.display(), "provisioned a volume");
    Ok(name)
}

/// Binds claim and volume to each other as the PV controller would.
async fn bind_claim(
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), PrepError> {
    let pv_name = pv.name_any();
    let pv_spec = pv.spec.clone().unwrap_or_default();
    volumes
        .patch_status(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .map_err(api_failed)?;
    claims
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                }},
                "spec": {"volumeName": pv_name},
            })),
        )
        .await
        .map_err(api_failed)?;
    claims
        .patch_status(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Bound",
                "accessModes": pv_spec.access_modes.unwrap_or_default(),
                "capacity": pv_spec.capacity.unwrap_or_default(),
            }})),
        )
        .await
        .map_err(api_failed)?;
    Ok(())
}

/// Writes the files under `dir` (created if needed); a path may not leave `dir`.
pub fn write_files(dir: &Path, files: &[VolumeFile]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in files {
        let relative = Path::new(&f.path);
        let escapes = relative.is_absolute()
            || relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)));
        if escapes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("volume file path {:?} must be relative, without ..", f.path),
            ));
        }
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &f.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(f.mode & 0o777))?;
    }
    Ok(())
}

fn io_failed(what: &str, path: &Path, error: io::Error) -> PrepError {
    PrepError::mount(format!("{what} {}: {error}", path.display()))
}

fn api_failed(error: kube::Error) -> PrepError {
    PrepError::mount(format!("API: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                file("a", b"1".to_vec(), 0o644),
                file("sub/b", b"2".to_vec(), 0o600),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        let mode = std::fs::metadata(dir.path().join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        for bad in ["../x", "/etc/x", "a/../../x", ""] {
            assert!(
                write_files(dir.path(), &[file(bad, Vec::new(), 0o644)]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn items_select_and_rename_keys() {
        let data = BTreeMap::from([
            ("ca.crt".to_string(), b"pem".to_vec()),
            ("other".to_string(), b"x".to_vec()),
        ]);
        let all = select_keys("cm", &data, None, false, 0o644).unwrap();
        assert_eq!(all.len(), 2);
        let items = [KeyToPath {
            key: "ca.crt".into(),
            path: "certs/ca.pem".into(),
            mode: Some(0o400),
        }];
        let picked = select_keys("cm", &data, Some(&items), false, 0o644).unwrap();
        assert_eq!(picked, vec![file("certs/ca.pem", b"pem".to_vec(), 0o400)]);
        let missing = [KeyToPath {
            key: "nope".into(),
            path: "n".into(),
            mode: None,
        }];
        assert!(select_keys("cm", &data, Some(&missing), false, 0o644).is_err());
        assert!(select_keys("cm", &data, Some(&missing), true, 0o644)
            .unwrap()
            .is_empty());
    }
}
