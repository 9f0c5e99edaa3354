//! deploy/ holds the Helm chart charts/diffkeeper rendered into plain manifests by
//! `bash scripts/render-chart.sh deploy` (a stand-in for `helm template` built from the libraries
//! helm renders with: see e2e/chart-render). These tests keep deploy/ in step with the chart,
//! check that the chart's values schema refuses bad values, and have a real API server
//! (KUBECONFIG) accept what deploy/ holds, with `kubectl apply --dry-run=server`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const OUT_OF_DATE: &str =
    "deploy/ is out of date: run `bash scripts/render-chart.sh deploy` and commit it";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// `bash scripts/render-chart.sh ARGS` from the repository root (the first run builds the
/// renderer: see the script).
fn render_chart(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("scripts/render-chart.sh"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running bash scripts/render-chart.sh")
}

fn render_ok(args: &[&str]) -> String {
    let out = render_chart(args);
    assert!(
        out.status.success(),
        "bash scripts/render-chart.sh {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the rendered manifests are UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Where two texts first differ, by line (numbered from `offset` + 1), for a person to look at.
fn first_difference(file: &str, offset: usize, committed: &str, current: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), current.lines().collect());
    let i = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "{file} first differs at line {}:\n  committed: {}\n  rendered:  {}\n({} lines committed, {} rendered)",
        offset + i + 1,
        a.get(i).copied().unwrap_or("<end of file>"),
        b.get(i).copied().unwrap_or("<end of file>"),
        a.len(),
        b.len()
    )
}

/// The kinds of a rendered stream's documents, in order.
fn kinds(stream: &str) -> Vec<&str> {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

#[test]
fn deploy_is_rendered_from_the_chart() {
    let rendered = render_ok(&["render"]);
    let committed = read(&repo().join("deploy/diffkeeper.yaml"));
    // deploy/diffkeeper.yaml is a header of comment lines, then the stream as rendered.
    let header_lines = committed.lines().take_while(|l| l.starts_with('#')).count();
    let body: String = committed.split_inclusive('\n').skip(header_lines).collect();
    if body != rendered {
        let hint = first_difference("deploy/diffkeeper.yaml", header_lines, &body, &rendered);
        panic!("{OUT_OF_DATE}\n{hint}");
    }
    // Byte for byte, header and namespace.yaml included: what `deploy` would write now.
    let fresh = tempfile::tempdir().unwrap();
    render_ok(&["deploy", fresh.path().to_str().unwrap()]);
    for file in ["diffkeeper.yaml", "namespace.yaml"] {
        let committed = read(&repo().join("deploy").join(file));
        let current = read(&fresh.path().join(file));
        if committed != current {
            let hint = first_difference(&format!("deploy/{file}"), 0, &committed, &current);
            panic!("{OUT_OF_DATE}\n{hint}");
        }
    }

    // The stream is in helm's order: CRDs, then templates by kind.
    let k = kinds(&rendered);
    assert_eq!(&k[..2], ["CustomResourceDefinition"; 2], "{k:?}");
    assert_eq!(k.last(), Some(&"Deployment"), "{k:?}");
    assert!(!rendered.contains("ServiceMonitor"), "off by default");

    // Variants render too: --set, and a values file.
    let monitored = render_ok(&["render", "--set", "metrics.serviceMonitor.enabled=true"]);
    assert_eq!(
        kinds(&monitored).last(),
        Some(&"ServiceMonitor"),
        "a kind helm does not know goes last"
    );
    let values = fresh.path().join("no-operator.yaml");
    std::fs::write(
        &values,
        "operator:\n  enabled: false\nimage:\n  tag: v9.9.9\n",
    )
    .unwrap();
    let agent_only = render_ok(&["render", "-f", values.to_str().unwrap()]);
    assert!(!kinds(&agent_only).contains(&"Deployment"), "{agent_only}");
    assert!(
        agent_only.contains("image: ghcr.io/diffkeeper/diffkeeper:v9.9.9"),
        "{agent_only}"
    );
}

/// kubectl ARGS (DK_E2E_KUBECTL, else kubectl on PATH) against KUBECONFIG, from the repository
/// root; panics with its output if it fails.
fn kubectl(args: &[&str]) -> String {
    let bin = std::env::var("DK_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("running {bin} (set DK_E2E_KUBECTL, or put kubectl on PATH): {e}")
        });
    assert!(
        out.status.success(),
        "{bin} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects `kubectl apply -o json` printed (a List when there are several).
fn applied(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).expect("kubectl -o json prints JSON");
    match v["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![v],
    }
}

#[test]
fn rendered_manifests_apply_to_the_api_server_with_server_dry_run() {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "no cluster to test against: KUBECONFIG is not set. Run `sudo bash scripts/test.sh`, \
             which starts the test API server, or `bash scripts/e2e-apiserver.sh start DIR` and \
             set KUBECONFIG and DK_E2E_KUBECTL as DIR/env says"
        );
    }

    // The chart's values.schema.json refuses what cannot work, naming the value.
    let bad = render_chart(&["render", "--set", "agent.port=99999"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "agent.port=99999 was accepted");
    assert!(stderr.contains("agent.port"), "{stderr}");

    // helm template does not create the namespace; deploy/namespace.yaml does, for real.
    kubectl(&["apply", "-f", "deploy/namespace.yaml"]);
    // The API server validates everything (strict field validation, admission) but stores
    // nothing: the CRDs are checked, not created.
    let objects = applied(&kubectl(&[
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "deploy/diffkeeper.yaml",
    ]));
    let names: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "CustomResourceDefinition/recordings.diffkeeper.io",
        "DaemonSet/diffkeeper-agent",
        "Deployment/diffkeeper-operator",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not applied: {names:?}"
        );
    }

    // A variant, rendered with --set: the server sees the value.
    let variant = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        variant.path(),
        render_ok(&["render", "--set", "operator.replicas=3"]),
    )
    .unwrap();
    let objects = applied(&kubectl(&[
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        variant.path().to_str().unwrap(),
    ]));
    let operator = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the operator's Deployment");
    assert_eq!(operator["spec"]["replicas"], 3, "{operator}");
}
