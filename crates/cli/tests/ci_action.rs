//! The GitHub Action (action.yml) and its script, run step by step on this machine as a runner
//! would run them: install from a release (a file:// mirror here), record the job, pack and
//! "upload" only when it failed, pass the job's exit code through. The runner below knows the
//! few expression forms action.yml uses and refuses any other, so a change to the action that it
//! cannot follow fails here instead of on a user's runner.
//!
//! Needs root and BPF (the job really runs under `diffkeeper record`).

mod command;

use command::ok;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test records a real job with eBPF: run it as root (sudo bash scripts/test.sh)"
    );
}

/// What a run of the action left: its exit code, which steps ran, what was "uploaded".
struct Outcome {
    code: i32,
    ran: Vec<String>,
    outputs: BTreeMap<String, String>,
    /// name -> (file path, retention-days)
    artifacts: BTreeMap<String, (PathBuf, String)>,
    log: String,
}

struct Runner {
    inputs: BTreeMap<String, String>,
    temp: PathBuf,
    workspace: PathBuf,
    artifacts_dir: PathBuf,
    steps: BTreeMap<String, BTreeMap<String, String>>,
    path_additions: Vec<String>,
}

impl Runner {
    /// `inputs.x`, `steps.id.outputs.x`, `runner.temp`: the contexts action.yml may read.
    fn lookup(&self, name: &str) -> String {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["inputs", input] => self
                .inputs
                .get(*input)
                .unwrap_or_else(|| panic!("action.yml reads undeclared input {input}"))
                .clone(),
            ["steps", id, "outputs", key] => self
                .steps
                .get(*id)
                .and_then(|o| o.get(*key))
                .cloned()
                .unwrap_or_default(),
            ["runner", "temp"] => self.temp.display().to_string(),
            _ => {
                panic!("action.yml uses the expression `{name}`, which this runner cannot evaluate")
            }
        }
    }

    /// `${{ ... }}` replaced in a string.
    fn substitute(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("unclosed ${{") + start;
            out.push_str(&self.lookup(rest[start + 3..end].trim()));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// An `if:` condition: `||`, `&&`, parentheses, and `name == 'literal'` / `!=`.
    fn condition(&self, expr: &str) -> bool {
        let tokens = tokenize(expr);
        let mut at = 0;
        let value = self.or_expr(&tokens, &mut at);
        assert_eq!(at, tokens.len(), "trailing tokens in `if: {expr}`");
        value
    }

    fn or_expr(&self, t: &[String], at: &mut usize) -> bool {
        let mut v = self.and_expr(t, at);
        while t.get(*at).map(String::as_str) == Some("||") {
            *at += 1;
            v |= self.and_expr(t, at);
        }
        v
    }

    fn and_expr(&self, t: &[String], at: &mut usize) -> bool {
        let mut v = self.atom(t, at);
        while t.get(*at).map(String::as_str) == Some("&&") {
            *at += 1;
            v &= self.atom(t, at);
        }
        v
    }

    fn atom(&self, t: &[String], at: &mut usize) -> bool {
        if t[*at] == "(" {
            *at += 1;
            let v = self.or_expr(t, at);
            assert_eq!(t[*at], ")", "unbalanced parentheses");
            *at += 1;
            return v;
        }
        let left = self.lookup(&t[*at]);
        let op = t[*at + 1].clone();
        let right = t[*at + 2]
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .unwrap_or_else(|| panic!("compare with a 'literal', not {}", t[*at + 2]))
            .to_string();
        *at += 3;
        match op.as_str() {
            "==" => left == right,
            "!=" => left != right,
            other => panic!("unknown operator {other}"),
        }
    }

    fn run(mut self, action: &Value) -> Outcome {
        let mut outcome = Outcome {
            code: 0,
            ran: Vec::new(),
            outputs: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            log: String::new(),
        };
        assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
        for step in action["runs"]["steps"].as_sequence().unwrap() {
            let id = step["id"]
                .as_str()
                .expect("every step has an id")
                .to_string();
            // Default `if` is success(): after a failed step, nothing more runs.
            if outcome.code != 0 {
                continue;
            }
            if let Some(cond) = step["if"].as_str() {
                if !self.condition(cond) {
                    continue;
                }
            }
            outcome.ran.push(id.clone());
            let mut outputs = BTreeMap::new();
            if let Some(uses) = step["uses"].as_str() {
                assert!(
                    uses.starts_with("actions/upload-artifact@"),
                    "this runner can stand in for actions/upload-artifact only, not {uses}"
                );
                let with = &step["with"];
                let name = self.substitute(with["name"].as_str().unwrap());
                let path = PathBuf::from(self.substitute(with["path"].as_str().unwrap()));
                let days = self.substitute(with["retention-days"].as_str().unwrap());
                assert!(
                    path.is_file(),
                    "upload-artifact: no file at {}",
                    path.display()
                );
                let kept = self.artifacts_dir.join(path.file_name().unwrap());
                std::fs::copy(&path, &kept).unwrap();
                outcome.artifacts.insert(name, (kept, days));
            } else {
                let script = step["run"].as_str().expect("a step runs or uses");
                assert_eq!(
                    step["shell"].as_str(),
                    Some("bash"),
                    "step {id}: shell: bash"
                );
                let output_file = self.temp.join(format!("output-{id}"));
                let path_file = self.temp.join(format!("path-{id}"));
                std::fs::write(&output_file, "").unwrap();
                std::fs::write(&path_file, "").unwrap();
                let cwd = match step["working-directory"].as_str() {
                    Some(dir) => self.workspace.join(self.substitute(dir)),
                    None => self.workspace.clone(),
                };
                let mut path = self.path_additions.clone();
                path.push(std::env::var("PATH").unwrap());
                let mut cmd = Command::new("bash");
                // What GitHub runs for `shell: bash`.
                cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
                    .current_dir(cwd)
                    .env_clear()
                    .env("PATH", path.join(":"))
                    .env("HOME", &self.temp)
                    .env("GITHUB_ACTION_PATH", repo_root())
                    .env("GITHUB_OUTPUT", &output_file)
                    .env("GITHUB_PATH", &path_file)
                    .env("RUNNER_TEMP", &self.temp);
                if let Some(env) = step["env"].as_mapping() {
                    for (k, v) in env {
                        let v = v.as_str().map(|s| self.substitute(s)).unwrap_or_default();
                        cmd.env(k.as_str().unwrap(), v);
                    }
                }
                let out = cmd.output().unwrap();
                outcome.log.push_str(&String::from_utf8_lossy(&out.stdout));
                outcome.log.push_str(&String::from_utf8_lossy(&out.stderr));
                for line in std::fs::read_to_string(&output_file).unwrap().lines() {
                    let (k, v) = line.split_once('=').expect("KEY=VALUE in GITHUB_OUTPUT");
                    outputs.insert(k.to_string(), v.to_string());
                }
                for line in std::fs::read_to_string(&path_file).unwrap().lines() {
                    self.path_additions.insert(0, line.to_string());
                }
                outcome.code = out.status.code().unwrap_or(128);
            }
            self.steps.insert(id, outputs);
        }
        for (name, spec) in action["outputs"].as_mapping().unwrap() {
            let value = self.substitute(spec["value"].as_str().unwrap());
            outcome
                .outputs
                .insert(name.as_str().unwrap().to_string(), value);
        }
        outcome
    }
}

fn tokenize(expr: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' {
            tokens.push(c.to_string());
            i += 1;
        } else if c == '\'' {
            let end = chars[i + 1..].iter().position(|&c| c == '\'').unwrap() + i + 1;
            tokens.push(chars[i..=end].iter().collect());
            i = end + 1;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"()'".contains(chars[i]) {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        }
    }
    tokens
}

/// A release mirror as the action downloads from: the tarball and its .sha256.
fn release_mirror(dir: &Path, version: &str, tamper: bool) -> String {
    let download = dir.join("download").join(version);
    std::fs::create_dir_all(&download).unwrap();
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_diffkeeper"), stage.join("diffkeeper")).unwrap();
    let tarball = download.join("diffkeeper-x86_64-unknown-linux-gnu.tar.gz");
    let status = Command::new("tar")
        .args(["-I", "gzip -1", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg("diffkeeper")
        .status()
        .unwrap();
    assert!(status.success());
    let sum = Command::new("sha256sum").arg(&tarball).output().unwrap();
    let mut sum = String::from_utf8(sum.stdout).unwrap();
    if tamper {
        sum = format!("{}{}", "0".repeat(64), &sum[64..]);
    }
    std::fs::write(tarball.with_extension("gz.sha256"), sum).unwrap();
    format!("file://{}", dir.display())
}

fn runner(tmp: &Path, job: &str, mirror: String) -> Runner {
    let action: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo_root().join("action.yml")).unwrap())
            .unwrap();
    let mut inputs = BTreeMap::new();
    for (name, spec) in action["inputs"].as_mapping().unwrap() {
        let default = spec["default"].as_str().unwrap_or_default().to_string();
        inputs.insert(name.as_str().unwrap().to_string(), default);
    }
    inputs.insert("run".into(), job.into());
    inputs.insert("retention-days".into(), "5".into());
    inputs.insert("version".into(), "v0.1.0".into());
    inputs.insert("release-url".into(), mirror);
    let runner = Runner {
        inputs,
        temp: tmp.join("runner-temp"),
        workspace: tmp.join("workspace"),
        artifacts_dir: tmp.join("artifacts"),
        steps: BTreeMap::new(),
        path_additions: Vec::new(),
    };
    for dir in [&runner.temp, &runner.workspace, &runner.artifacts_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    runner
}

fn action() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo_root().join("action.yml")).unwrap())
        .unwrap()
}

#[test]
fn a_failing_job_keeps_its_recording_and_its_exit_code() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mirror = release_mirror(&tmp.path().join("releases"), "v0.1.0", false);
    let job = "mkdir -p out; echo 'config: v1' > out/config.yaml; sleep 0.3; \
               echo 'config: broken' > out/config.yaml; echo 'failing on purpose' >&2; exit 3";
    let outcome = runner(tmp.path(), job, mirror).run(&action());
    assert_eq!(
        outcome.code, 3,
        "the job's exit code passes through:\n{}",
        outcome.log
    );
    assert_eq!(outcome.ran, ["install", "run", "pack", "upload", "exit"]);
    assert_eq!(outcome.outputs["exit-code"], "3");
    let (pack, days) = &outcome.artifacts["diffkeeper-trace"];
    assert_eq!(days, "5", "retention-days reaches the upload");
    assert_eq!(
        outcome.outputs["pack"].rsplit('/').next(),
        pack.file_name().unwrap().to_str()
    );

    // What the person chasing the failure does with the artifact, elsewhere.
    let trace = tmp.path().join("trace");
    ok(&[
        "unpack",
        &format!("--in={}", pack.display()),
        &format!("--state-dir={}", trace.display()),
    ]);
    let log = ok(&["log", &format!("--state-dir={}", trace.display())]);
    assert!(log.contains("out/config.yaml"), "{log}");
    let exported = tmp.path().join("exported");
    ok(&[
        "export",
        &format!("--state-dir={}", trace.display()),
        &format!("--out={}", exported.display()),
        "--time=end",
    ]);
    let config = exported.join(
        tmp.path()
            .join("workspace/out/config.yaml")
            .strip_prefix("/")
            .unwrap(),
    );
    assert_eq!(std::fs::read_to_string(config).unwrap(), "config: broken\n");
}

#[test]
fn a_passing_job_uploads_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mirror = release_mirror(&tmp.path().join("releases"), "v0.1.0", false);
    let outcome = runner(tmp.path(), "echo ok > ok.txt", mirror).run(&action());
    assert_eq!(outcome.code, 0, "{}", outcome.log);
    assert_eq!(outcome.ran, ["install", "run", "exit"]);
    assert!(outcome.artifacts.is_empty());
    assert_eq!(outcome.outputs["pack"], "");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("workspace/ok.txt")).unwrap(),
        "ok\n"
    );
}

#[test]
fn a_release_whose_checksum_does_not_match_is_not_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = release_mirror(&tmp.path().join("releases"), "v0.1.0", true);
    let outcome = runner(tmp.path(), "echo never", mirror).run(&action());
    assert_ne!(outcome.code, 0);
    assert_eq!(
        outcome.ran,
        ["install"],
        "nothing runs after a failed install"
    );
    assert!(outcome.log.contains("checksum mismatch"), "{}", outcome.log);
    assert!(!tmp
        .path()
        .join("runner-temp/diffkeeper/bin/diffkeeper")
        .exists());
}

#[test]
fn the_runner_evaluates_the_conditions_action_yml_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), "true", String::new());
    r.steps.insert(
        "run".into(),
        BTreeMap::from([("failed".to_string(), "true".to_string())]),
    );
    let cond = "inputs.upload == 'always' || (inputs.upload == 'on-failure' && steps.run.outputs.failed == 'true')";
    assert!(r.condition(cond));
    r.inputs.insert("upload".into(), "never".into());
    assert!(!r.condition(cond));
    r.inputs.insert("upload".into(), "always".into());
    assert!(r.condition(cond));
    assert!(!r.condition("steps.pack.outputs.pack != ''"));
}
