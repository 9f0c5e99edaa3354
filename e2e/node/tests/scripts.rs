//! The test scripts run under `set -o pipefail`, where a pipeline whose reader stops early fails
//! at random: `ctr images ls -q | grep -q NAME` died of SIGPIPE (exit 141) whenever grep found
//! NAME before ctr had written the lines after it, and made the node e2e test fail about one
//! fresh run in twenty. This keeps that class of flake out of every script.

use std::path::{Path, PathBuf};

/// Readers that may stop before their input ends.
const EARLY_READERS: [&str; 4] = ["grep -q", "grep -xq", "grep -qx", "head"];

fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with(".git") {
                shell_scripts(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "sh") || path.ends_with(".ci/run") {
            out.push(path);
        }
    }
}

/// `X | grep -q P` or `X | head` in a script that sets pipefail.
fn early_exit_pipelines(script: &str) -> Vec<(usize, String)> {
    if !script.contains("pipefail") {
        return Vec::new();
    }
    script
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with('#'))
        .filter(|(_, line)| {
            line.split('|').skip(1).any(|stage| {
                let stage = stage.trim_start();
                EARLY_READERS.iter().any(|reader| {
                    stage.starts_with(reader)
                        || (stage.starts_with("grep -") && {
                            let flags = stage[5..].split_whitespace().next().unwrap_or("");
                            !flags.starts_with('-') && flags.contains('q')
                        })
                })
            })
        })
        .map(|(n, line)| (n + 1, line.trim().to_string()))
        .collect()
}

#[test]
fn no_script_cuts_a_pipeline_short_under_pipefail() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut scripts = Vec::new();
    shell_scripts(&root, &mut scripts);
    assert!(
        scripts.iter().any(|s| s.ends_with("scripts/e2e-image.sh")),
        "found no scripts under {}",
        root.display()
    );
    let mut found = Vec::new();
    for script in &scripts {
        let text = std::fs::read_to_string(script).unwrap();
        for (line, code) in early_exit_pipelines(&text) {
            found.push(format!("{}:{line}: {code}", script.display()));
        }
    }
    assert!(
        found.is_empty(),
        "pipelines that fail at random under pipefail (the reader exits early and the writer \
         dies of SIGPIPE); read the output first, e.g. `grep -q P <<<\"$(X)\"`:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_what_made_the_image_import_flaky() {
    let old = "set -euo pipefail\n    ctr images ls -q | grep -qxF \"$repo:$tag\" ||\n";
    assert_eq!(early_exit_pipelines(old).len(), 1);
    assert_eq!(
        early_exit_pipelines("set -o pipefail\nx=$(kubectl version | head -1)\n").len(),
        1
    );
    // Reading everything first, or no pipefail, is fine.
    assert!(early_exit_pipelines("set -o pipefail\ngrep -q P <<<\"$(ctr ls)\"\n").is_empty());
    assert!(early_exit_pipelines("set -o pipefail\nctr ls | grep -v P | sort\n").is_empty());
    assert!(early_exit_pipelines("ctr ls | grep -q P\n").is_empty());
}
