//! `diffkeeper report` rendered in a real headless browser (Debian's chromium): the page of a
//! real failed recording draws one row per recorded path, says how the command ended, and
//! selecting a moment shows its log lines and its diff. Needs root, BPF and chromium
//! (`scripts/setup.sh` installs it).

mod command;

use command::{diffkeeper, ok, record_sh};
use std::path::Path;
use std::process::Command;

fn chromium() -> &'static str {
    let path = "/usr/bin/chromium";
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run `sudo bash scripts/setup.sh` (it installs Debian's chromium)"
    );
    path
}

/// Chromium as root in a sandboxless VM, with nothing that would reach the network.
fn browser(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn record(work: &Path, state: &Path) {
    // Three files, a rename, a name that would break naive HTML (it must show as text), and a
    // failing exit.
    let script = "printf 'a: 1\\n' > app.yaml; sleep 0.1; printf 'a: 2\\n' > app.yaml; \
                  echo start > run.log; echo '<b>bold</b></script>' > 'odd <name>.txt'; \
                  sleep 0.1; mv run.log run.log.1; exit 3";
    let status = record_sh(work, state, script);
    assert_eq!(
        status.code(),
        Some(3),
        "record passes the command's exit code"
    );
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn the_report_renders_in_a_browser_and_shows_a_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    record(&work, &state);
    let html = tmp.path().join("report.html");
    ok(&[
        "report",
        &format!("--state-dir={}", state.display()),
        &format!("--out={}", html.display()),
    ]);
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing is fetched from anywhere.
    for external in ["http://", "https://", " src=", "<link", "@import"] {
        assert!(!page.contains(external), "the page refers to {external:?}");
    }

    // The paths the log names, to compare with the rows the page draws.
    let log = diffkeeper(&["log", &format!("--state-dir={}", state.display()), "--json"]);
    let mut paths = std::collections::BTreeSet::new();
    let mut write_seq = None;
    for line in String::from_utf8(log.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let op = &v["summary"]["op"];
        if let Some(first) = op["paths"].as_array().and_then(|p| p.first()) {
            // A path is a string, or its raw bytes where the JSON form keeps them exact.
            let path = match first {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(bytes) => String::from_utf8_lossy(
                    &bytes
                        .iter()
                        .map(|b| b.as_u64().unwrap() as u8)
                        .collect::<Vec<_>>(),
                )
                .into_owned(),
                other => panic!("a path in log --json is {other}"),
            };
            if op["kind"] == "Write" && path.ends_with("app.yaml") {
                write_seq = v["summary"]["seq"].as_u64();
            }
            paths.insert(path);
        }
    }
    let seq = write_seq.expect("the log shows the write of app.yaml's second version");

    let profile = tmp.path().join("profile");
    let dom = browser(&profile)
        .arg("--dump-dom")
        .arg(format!("file://{}#seq={seq}", html.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not finish:\n{dom}"
    );
    assert_eq!(
        count(&dom, "class=\"label file-row\""),
        paths.len(),
        "one row per recorded path ({paths:?})"
    );
    assert!(
        dom.contains("command exited with code 3"),
        "the exit is shown"
    );
    // The selected moment: its log line is highlighted and its diff is the second version.
    assert!(dom.contains("class=\"current\""), "no log line is selected");
    assert!(
        dom.contains("<span class=\"del\">-a: 1\n</span>")
            && dom.contains("<span class=\"add\">+a: 2\n</span>"),
        "the moment's diff is missing:\n{dom}"
    );
    // The odd name arrived as text, not markup.
    assert!(
        dom.contains("odd &lt;name&gt;.txt"),
        "the name was not escaped"
    );
    assert!(!dom.contains("<b>bold</b>"));

    let shot = tmp.path().join("report.png");
    let status = browser(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}#seq={seq}", html.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1400, 900));
    // A blank page compresses to a few KB; this one draws rows, marks and text.
    assert!(
        png.len() > 40_000,
        "the screenshot is nearly empty ({} bytes)",
        png.len()
    );
}
