//! Which recorded container a command means. `pod/NAME`, `-c` and `--container-id` are looked up
//! in the ContainerRecords rather than the Pods, so a pod that no longer exists is found just the
//! same: its records stay as long as its history does.

use anyhow::{bail, Context};
use diffkeeper_api::ContainerRecord;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// The container flags of `log` and `export`.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// The pod, as pod/NAME (or just NAME). It may have been deleted long ago.
    #[arg(value_name = "pod/NAME", value_parser = parse_pod)]
    pub pod: String,
    /// The container (default: the only container recorded in the pod).
    #[arg(short = 'c', long, value_name = "CONTAINER")]
    pub container: Option<String>,
    /// One incarnation of the container, by its runtime id (containerd://... or a unique prefix
    /// of the hex id); default: the newest.
    #[arg(long = "container-id", value_name = "ID")]
    pub container_id: Option<String>,
}

/// `pod/NAME`, `pods/NAME`, `po/NAME` or `NAME`, as kubectl takes a pod.
fn parse_pod(arg: &str) -> Result<String, String> {
    let name = match arg.split_once('/') {
        Some(("pod" | "pods" | "po", name)) => name,
        Some((kind, _)) => {
            return Err(format!(
                "only pods have recorded containers, not {kind}: name one as pod/NAME \
                 (`kubectl diffkeeper ls` lists them)"
            ))
        }
        None => arg,
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("{arg:?} is not a pod: name one as pod/NAME"));
    }
    Ok(name.to_string())
}

/// The record of the container incarnation the flags name, in `namespace`.
pub async fn find_record(
    client: &Client,
    namespace: &str,
    args: &TargetArgs,
) -> anyhow::Result<ContainerRecord> {
    let api: Api<ContainerRecord> = Api::namespaced(client.clone(), namespace);
    // The pod name is not a selectable field of ContainerRecords: filter here. A namespace holds
    // one record per recorded container incarnation, few enough to list.
    let records = api.list(&ListParams::default()).await.map_err(|e| {
        crate::ls::explain_list_error(e, &format!("ContainerRecords in namespace {namespace}"))
    })?;
    let of_pod: Vec<ContainerRecord> = records
        .items
        .into_iter()
        .filter(|r| r.spec.pod.name == args.pod)
        .collect();
    choose(of_pod, namespace, args).with_context(|| format!("finding pod/{}", args.pod))
}

/// Picks one record among those of the pod: `--container-id` names one; otherwise the container
/// (`-c`, or the only one recorded) and its newest incarnation.
fn choose(
    mut records: Vec<ContainerRecord>,
    namespace: &str,
    args: &TargetArgs,
) -> anyhow::Result<ContainerRecord> {
    if records.is_empty() {
        bail!(
            "no recorded container of pod {} in namespace {namespace}: DiffKeeper records only \
             pods a Recording selects or annotated diffkeeper.io/record=true. \
             `kubectl diffkeeper ls -n {namespace}` lists what is recorded",
            args.pod
        );
    }
    if let Some(c) = &args.container {
        let names = container_names(&records);
        records.retain(|r| &r.spec.container == c);
        if records.is_empty() {
            bail!(
                "container {c} is not recorded in pod {}; recorded: {}",
                args.pod,
                names.join(", ")
            );
        }
    }
    if let Some(id) = &args.container_id {
        let ids: Vec<String> = records
            .iter()
            .map(|r| r.spec.container_id.clone())
            .collect();
        records.retain(|r| id_matches(&r.spec.container_id, id));
        return match records.len() {
            1 => Ok(records.remove(0)),
            0 => bail!(
                "no recorded incarnation of pod {} has container id {id}; recorded: {}",
                args.pod,
                ids.join(", ")
            ),
            _ => bail!(
                "container id {id} is ambiguous in pod {}: it starts {}; give more of it",
                args.pod,
                records
                    .iter()
                    .map(|r| r.spec.container_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    if args.container.is_none() {
        let names = container_names(&records);
        if names.len() > 1 {
            // kubectl's own wording for a pod of several containers.
            bail!(
                "a container name must be specified for pod {}, choose one of: [{}] (with -c)",
                args.pod,
                names.join(" ")
            );
        }
    }
    // Several incarnations (restarts, or a new pod of the same name): the newest, as kubectl
    // logs shows the current one. Restart count breaks ties within one second.
    records.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.spec.restart_count,
        )
    });
    Ok(records.pop().expect("not empty: checked above"))
}

fn container_names(records: &[ContainerRecord]) -> Vec<String> {
    let mut names: Vec<String> = records.iter().map(|r| r.spec.container.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// `containerd://0123abcd...` matches itself, `0123abcd...` and any prefix of the hex id.
fn id_matches(recorded: &str, given: &str) -> bool {
    let bare = recorded.split_once("://").map_or(recorded, |(_, id)| id);
    !given.is_empty() && (recorded == given || bare.starts_with(given))
}

/// How a record is named to people: `pod/NAME container C (containerd://0123456789ab)`.
/// The agent's name for the incarnation a record reports on.
pub fn selector(record: &ContainerRecord) -> diffkeeper_rpc::ContainerSelector {
    diffkeeper_rpc::ContainerSelector {
        namespace: record.namespace().unwrap_or_default(),
        pod_uid: record.spec.pod.uid.clone(),
        container: record.spec.container.clone(),
        container_id: record.spec.container_id.clone(),
    }
}

pub fn describe(record: &ContainerRecord) -> String {
    let id = &record.spec.container_id;
    let short = match id.split_once("://") {
        Some((_, hex)) if hex.len() > 12 => &id[..id.len() - hex.len() + 12],
        _ => id,
    };
    format!(
        "pod/{} container {} ({short}) in namespace {}",
        record.spec.pod.name,
        record.spec.container,
        record.namespace().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(container: &str, id: &str, created: &str, restarts: i32) -> ContainerRecord {
        serde_json::from_value(json!({
            "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
            "metadata": { "name": format!("r-{id}"), "namespace": "ci", "creationTimestamp": created },
            "spec": { "recording": "rec", "pod": { "name": "web", "uid": "u1" },
                      "container": container, "containerId": format!("containerd://{id}"),
                      "restartCount": restarts, "node": "n1" },
        }))
        .unwrap()
    }

    fn args(container: Option<&str>, id: Option<&str>) -> TargetArgs {
        TargetArgs {
            pod: "web".into(),
            container: container.map(String::from),
            container_id: id.map(String::from),
        }
    }

    #[test]
    fn pod_arguments_take_kubectl_forms() {
        assert_eq!(parse_pod("pod/web").unwrap(), "web");
        assert_eq!(parse_pod("po/web").unwrap(), "web");
        assert_eq!(parse_pod("web").unwrap(), "web");
        assert!(parse_pod("deployment/web")
            .unwrap_err()
            .contains("only pods"));
        assert!(parse_pod("pod/").is_err());
    }

    #[test]
    fn the_newest_incarnation_of_the_only_container_is_chosen() {
        let records = vec![
            record("app", "aaa111", "2025-01-01T10:00:00Z", 0),
            record("app", "bbb222", "2025-01-01T10:05:00Z", 1),
            record("app", "ccc333", "2025-01-01T10:05:00Z", 2),
        ];
        let r = choose(records, "ci", &args(None, None)).unwrap();
        assert_eq!(r.spec.container_id, "containerd://ccc333");
    }

    #[test]
    fn several_containers_need_c_and_the_error_lists_them() {
        let records = vec![
            record("app", "aaa111", "2025-01-01T10:00:00Z", 0),
            record("sidecar", "bbb222", "2025-01-01T10:00:00Z", 0),
        ];
        let e = choose(records.clone(), "ci", &args(None, None)).unwrap_err();
        assert!(e.to_string().contains("[app sidecar]"), "{e}");
        let r = choose(records.clone(), "ci", &args(Some("sidecar"), None)).unwrap();
        assert_eq!(r.spec.container, "sidecar");
        let e = choose(records, "ci", &args(Some("db"), None)).unwrap_err();
        assert!(e.to_string().contains("recorded: app, sidecar"), "{e}");
    }

    #[test]
    fn container_ids_match_whole_bare_or_by_prefix() {
        let records = vec![
            record("app", "aaa111", "2025-01-01T10:00:00Z", 0),
            record("app", "aab222", "2025-01-01T10:05:00Z", 1),
        ];
        let pick = |id| choose(records.clone(), "ci", &args(None, Some(id)));
        assert_eq!(
            pick("containerd://aaa111").unwrap().spec.container_id,
            "containerd://aaa111"
        );
        assert_eq!(
            pick("aab").unwrap().spec.container_id,
            "containerd://aab222"
        );
        assert!(pick("aa").unwrap_err().to_string().contains("ambiguous"));
        assert!(pick("fff").unwrap_err().to_string().contains("recorded:"));
    }

    #[test]
    fn descriptions_shorten_the_id() {
        let r = record("app", "0123456789abcdef0123", "2025-01-01T10:00:00Z", 0);
        assert_eq!(
            describe(&r),
            "pod/web container app (containerd://0123456789ab) in namespace ci"
        );
    }
}
