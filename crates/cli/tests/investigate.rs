//! `grep` and `bisect` on a real recording: a workload rewrites a config through versions and
//! appends to a log, and the tools must name the moments a person would find by exporting
//! every moment by hand. Needs root and BPF (the workload really runs under `record`).

mod command;

use command::{ok, record_sh, refused};
use serde_json::Value;
use std::path::Path;

/// Six versions of cfg.yaml (`retries: 3` from v4 on), a log line per version and a panic line
/// at the end; then the config is renamed away.
fn record(work: &Path, state: &Path) {
    let script = "for v in 1 2 3 4 5 6; do \
                    if [ $v -ge 4 ]; then r=3; else r=0; fi; \
                    printf 'version: %s\\nretries: %s\\n' $v $r > cfg.yaml; \
                    echo \"started v$v\" >> app.log; sleep 0.05; \
                  done; echo 'PANIC: retries exhausted' >> app.log; mv cfg.yaml cfg.yaml.bak";
    assert!(record_sh(work, state, script).success(), "record failed");
}

fn lines(json: &str) -> Vec<Value> {
    json.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn grep_names_when_a_file_started_and_stopped_matching() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    record(&work, &state);
    let st = format!("--state-dir={}", state.display());
    let cfg = format!("{}/cfg.yaml", work.display());

    let found = lines(&ok(&["grep", &st, "retries: 3", "--json"]));
    let seen: Vec<(String, bool)> = found
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_string(),
                t["matches"].as_bool().unwrap(),
            )
        })
        .collect();
    // cfg.yaml starts matching once (v4; v5 and v6 keep matching: the half-written state of
    // each rewrite is not a moment), then the rename moves the match to the backup name (both
    // at the rename's seq, in path order).
    assert_eq!(seen.len(), 3, "{found:#?}");
    assert_eq!(seen[0], (cfg.clone(), true), "{found:#?}");
    let mut at_rename = seen[1..].to_vec();
    at_rename.sort();
    assert_eq!(
        at_rename,
        [(cfg.clone(), false), (format!("{cfg}.bak"), true)],
        "{found:#?}"
    );
    assert_eq!(found[1]["seq"], found[2]["seq"]);
    assert_eq!(found[1]["cause"]["op"]["kind"], "Rename");
    // At the moment it starts matching, the exported file says v4.
    let seq = found[0]["seq"].as_u64().unwrap();
    let out = tmp.path().join("at");
    ok(&[
        "export",
        &st,
        &format!("--out={}", out.display()),
        &format!("--time=@seq:{seq}"),
    ]);
    let exported = std::fs::read_to_string(out.join(cfg.trim_start_matches('/'))).unwrap();
    assert_eq!(exported, "version: 4\nretries: 3\n");
    // And just before, it did not match.
    let before = tmp.path().join("before");
    ok(&[
        "export",
        &st,
        &format!("--out={}", before.display()),
        &format!("--time=@seq:{}", seq - 1),
    ]);
    let earlier =
        std::fs::read_to_string(before.join(cfg.trim_start_matches('/'))).unwrap_or_default();
    assert!(!earlier.contains("retries: 3"), "{earlier:?}");

    // Every event: each rewrite's truncate shows as a stop, and its write as a start again.
    let every = lines(&ok(&["grep", &st, "retries: 3", "--json", "--each-event"]));
    assert!(every.len() > found.len(), "{every:#?}");

    // Appends: the log starts matching at the write that added the line, case-insensitively.
    let log = lines(&ok(&[
        "grep",
        &st,
        "-i",
        "panic",
        "--path",
        "**/app.log",
        "--json",
    ]));
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["cause"]["op"]["kind"], "Write");
    let text = ok(&["grep", &st, "-F", "started v2", "--path", "**/*.log"]);
    assert!(
        text.contains("starts matching") && text.contains("app.log"),
        "{text}"
    );

    let msg = refused(&["grep", &st, "retries: ("]);
    assert!(
        msg.contains("not a valid regular expression") && msg.contains("-F"),
        "{msg}"
    );
    let msg = refused(&["grep", &st, "x", "--from=end", "--to=start"]);
    assert!(msg.contains("--from is after --to"), "{msg}");
}

#[test]
fn bisect_finds_the_first_bad_version_of_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    record(&work, &state);
    let st = format!("--state-dir={}", state.display());
    let cfg = format!("{}/cfg.yaml", work.display());
    let tested = tmp.path().join("tested");
    // The check records what it saw, so the test can tell how many moments it was run on.
    let check = format!(
        "cat \"$DK_BISECT_FILE\" >> {} 2>/dev/null; echo --- >> {}; \
         ! grep -qs 'retries: 3' \"$DK_BISECT_FILE\"",
        tested.display(),
        tested.display()
    );
    // --bad before the rename, so that the bad state is one of cfg.yaml's own versions.
    let grep = lines(&ok(&["grep", &st, "retries: 3", "--json"]));
    let renamed = grep[1]["seq"].as_u64().unwrap();
    let out = ok(&[
        "bisect",
        &st,
        &format!("--path={cfg}"),
        &format!("--bad=@seq:{}", renamed - 1),
        "--",
        "sh",
        "-c",
        &check,
    ]);
    let first_bad = grep[0]["seq"].as_u64().unwrap();
    assert!(
        out.contains(&format!("first bad change of {cfg}"))
            && out.contains(&format!("@seq:{first_bad}")),
        "bisect says:\n{out}\ngrep said it starts matching at @seq:{first_bad}"
    );
    // Six versions: the good end, the bad end and a binary search between — not all six, and
    // never a half-written (empty) file.
    let seen = std::fs::read_to_string(&tested).unwrap();
    let runs: Vec<&str> = seen.split("---\n").filter(|s| !s.is_empty()).collect();
    assert!(runs.len() <= 5, "{runs:?}");
    assert!(
        runs.iter().all(|r| r.starts_with("version: ")),
        "a check ran on a half-written file: {runs:?}"
    );

    // A check that fails at --good, or a file that never changed, is refused with the reason.
    let msg = refused(&["bisect", &st, &format!("--path={cfg}"), "--", "false"]);
    assert!(msg.contains("must pass there"), "{msg}");
    let msg = refused(&["bisect", &st, "--path=/no/such/file", "--", "true"]);
    assert!(msg.contains("did not change"), "{msg}");
    let msg = refused(&[
        "bisect",
        &st,
        &format!("--path={cfg}"),
        "--good=end",
        "--bad=start",
        "--",
        "true",
    ]);
    assert!(msg.contains("is not before --bad"), "{msg}");
}
