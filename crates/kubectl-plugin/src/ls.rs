//! `kubectl diffkeeper ls`: the recorded containers, read from the ContainerRecords the agents
//! keep up to date, so it works without reaching any agent.

use std::io::Write;

use anyhow::Context;
use diffkeeper_api::{ContainerRecord, RecordPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::cluster::ClusterArgs;

#[derive(clap::Args)]
pub struct Args {
    /// List the recorded containers of every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    all_namespaces: bool,
    /// Output format: json, or wide (more columns). Default: a table.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    output: Option<Output>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Json,
    Wide,
}

pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<()> {
    let cluster = cluster.connect().await?;
    let (api, scope): (Api<ContainerRecord>, String) = if args.all_namespaces {
        (
            Api::all(cluster.client.clone()),
            "ContainerRecords in all namespaces".into(),
        )
    } else {
        (
            Api::namespaced(cluster.client.clone(), &cluster.namespace),
            format!("ContainerRecords in namespace {}", cluster.namespace),
        )
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain_list_error(e, &scope))?;
    let mut records = list.items;
    records.sort_by_key(|r| {
        (
            r.namespace(),
            r.spec.pod.name.clone(),
            r.spec.container.clone(),
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.spec.restart_count,
        )
    });

    let mut out = std::io::stdout().lock();
    if args.output == Some(Output::Json) {
        let rows: Vec<serde_json::Value> = records.iter().map(json_row).collect();
        serde_json::to_writer_pretty(&mut out, &rows).context("writing JSON")?;
        writeln!(out).context("writing JSON")?;
        return Ok(());
    }
    if records.is_empty() {
        // kubectl's wording, on stderr, so a script reading stdout sees nothing.
        if args.all_namespaces {
            eprintln!("No recorded containers found.");
        } else {
            eprintln!(
                "No recorded containers found in {} namespace.",
                cluster.namespace
            );
        }
        return Ok(());
    }
    let wide = args.output == Some(Output::Wide);
    let mut header = Vec::new();
    if args.all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend([
        "POD",
        "CONTAINER",
        "NODE",
        "PHASE",
        "FIRST EVENT",
        "LAST EVENT",
        "BYTES",
        "ENDED",
        "EXIT CODE",
    ]);
    if wide {
        header.extend([
            "CONTAINER ID",
            "POD UID",
            "RECORDING",
            "EVENTS",
            "GAPS",
            "AGENT",
        ]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for r in &records {
        let status = r.status.clone().unwrap_or_default();
        let mut row = Vec::new();
        if args.all_namespaces {
            row.push(r.namespace().unwrap_or_default());
        }
        row.extend([
            r.spec.pod.name.clone(),
            r.spec.container.clone(),
            r.spec.node.clone(),
            status.phase.map_or("-", phase_name).to_string(),
            time_or_dash(&status.first_event),
            time_or_dash(&status.last_event),
            bytesize::ByteSize(status.bytes).to_string(),
            time_or_dash(&status.ended_at),
            status.exit_code.map_or("-".into(), |c| c.to_string()),
        ]);
        if wide {
            row.extend([
                r.spec.container_id.clone(),
                r.spec.pod.uid.clone(),
                r.spec.recording.clone(),
                status.events.to_string(),
                status.gaps.to_string(),
                status.agent.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        rows.push(row);
    }
    write_table(&mut out, &rows).context("writing the table")?;
    Ok(())
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints them.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn json_row(r: &ContainerRecord) -> serde_json::Value {
    let status = r.status.clone().unwrap_or_default();
    json!({
        "namespace": r.namespace(),
        "pod": r.spec.pod.name,
        "podUid": r.spec.pod.uid,
        "container": r.spec.container,
        "containerId": r.spec.container_id,
        "restartCount": r.spec.restart_count,
        "node": r.spec.node,
        "recording": r.spec.recording,
        "record": r.name_any(),
        "phase": status.phase.map(phase_name),
        "agent": status.agent,
        "firstEvent": status.first_event.as_ref().map(format_time),
        "lastEvent": status.last_event.as_ref().map(format_time),
        "endedAt": status.ended_at.as_ref().map(format_time),
        "exitCode": status.exit_code,
        "events": status.events,
        "bytes": status.bytes,
        "gaps": status.gaps,
        "message": status.message,
    })
}

fn phase_name(phase: RecordPhase) -> &'static str {
    match phase {
        RecordPhase::Recording => "Recording",
        RecordPhase::Ended => "Ended",
        RecordPhase::Failed => "Failed",
    }
}

/// RFC 3339 in UTC, to the second, as Kubernetes stores it: a time that `--time` takes back.
pub fn format_time(t: &Time) -> String {
    t.0.to_string()
}

fn time_or_dash(t: &Option<Time>) -> String {
    t.as_ref().map_or("-".into(), format_time)
}

/// An API server refusal of a list, said with what to do about it.
pub fn explain_list_error(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "the cluster does not know ContainerRecords: DiffKeeper's CRDs are not installed \
             (`helm install diffkeeper charts/diffkeeper -n diffkeeper --create-namespace`, \
             or `kubectl apply -f crds/`)"
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "you may not list {what}: you need `list containerrecords.diffkeeper.io` there \
             (the view role grants it). The API server said: {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
            "the API server did not accept your credentials ({}): check your kubeconfig user",
            s.message
        ),
        _ => anyhow::Error::new(e).context(format!("listing {what}")),
    }
}
