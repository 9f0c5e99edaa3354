//! diffkeeper-bench: measures what recording costs, side by side with not recording and strace.

mod floor;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "What recording costs: DiffKeeper vs. not recording vs. strace, interleaved")]
struct Args {
    /// The diffkeeper binary (default: next to this one).
    #[arg(long)]
    diffkeeper: Option<PathBuf>,
    /// Repetitions of the write() microbenchmarks.
    #[arg(long, default_value_t = 5)]
    micro_reps: usize,
    /// Repetitions of the real workloads and exports.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Total bytes of the export benchmark's tree (10,000 files).
    #[arg(long, default_value_t = 1 << 30)]
    export_bytes: u64,
    /// Scale every size down (smoke test of the driver, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Only these sections (micro, outside, scope, workloads, storage, export, ingest); default
    /// all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to put the scratch files (default: $TMPDIR).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Also write every sample as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the recorder prints when it is done.
#[derive(Clone, Debug, Default)]
struct Summary {
    events: u64,
    captured: u64,
    healed: u64,
    lost: u64,
    store: u64,
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.trim().parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

fn parse_summary(stderr: &str) -> Option<Summary> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("diffkeeper: recorded"))?;
    let body = line.split_once("s: ")?.1;
    let num_before = |key: &str| -> Option<&str> {
        let i = body.find(key)?;
        let head = body[..i].trim_end();
        Some(head.rsplit([',', '(', ':']).next()?.trim())
    };
    Some(Summary {
        events: num_before(" events")?.parse().ok()?,
        captured: parse_size(num_before(" captured")?)?,
        healed: num_before(" drops healed")?.parse().ok()?,
        lost: num_before(" records lost")?.parse().ok()?,
        store: parse_size(body.split_once("store ")?.1.split(" at ").next()?)?,
    })
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    med: f64,
    min: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Stats {
        med,
        min: *s.first().unwrap_or(&f64::NAN),
        max: *s.last().unwrap_or(&f64::NAN),
    }
}

/// Median of per-pair ratios.
fn ratio(num: &[f64], den: &[f64]) -> Stats {
    let r: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
    stats(&r)
}

fn fmt_num(x: f64, unit: &str) -> String {
    match unit {
        "s" if x < 1.0 => format!("{:.0} ms", x * 1e3),
        "s" => format!("{x:.2} s"),
        "ns" => format!("{x:.0} ns"),
        "MB" => format!("{:.1} MB", x / 1e6),
        "MiB" => format!("{:.0} MiB", x / 1048576.0),
        _ => format!("{x:.2}{unit}"),
    }
}

fn fmt_stats(s: Stats, unit: &str) -> String {
    if (s.max - s.min).abs() < f64::EPSILON * s.med.abs().max(1.0) {
        fmt_num(s.med, unit)
    } else {
        format!(
            "{} [{}–{}]",
            fmt_num(s.med, unit),
            fmt_num(s.min, unit),
            fmt_num(s.max, unit)
        )
    }
}

struct Table {
    out: String,
    json: Vec<serde_json::Value>,
}

impl Table {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.out, "\n## {title}");
    }
    fn row(&mut self, what: &str, figure: &str, target: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "",
        };
        let _ = writeln!(self.out, "{what:<46} {figure:<46} {target:<14} {verdict}");
        eprintln!("  {what}: {figure} {target} {verdict}");
    }
    fn note(&mut self, s: &str) {
        let _ = writeln!(self.out, "  {s}");
        eprintln!("  {s}");
    }
    fn sample(&mut self, v: serde_json::Value) {
        self.json.push(v);
    }
}

struct Bench {
    dk: PathBuf,
    writer: PathBuf,
    root: PathBuf,
    args: Args,
    t: Table,
    /// Peak RSS of the recorder per scenario (VmHWM, KiB) and /usr/bin/time -v figures.
    rss: BTreeMap<String, Vec<(u64, u64)>>,
    startup: Vec<f64>,
    /// (captured, du of the state dir, store size reported) of the recorded sqlite runs.
    sqlite_store: Vec<(u64, u64, u64)>,
}

/// A finished command: wall time, output, and the recorder's peak RSS if it was watched.
struct Run {
    secs: f64,
    out: Output,
    hwm_kib: u64,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn check(self, what: &str) -> Result<Self> {
        if !self.out.status.success() {
            bail!(
                "{what} failed ({}):\n{}\n{}",
                self.out.status,
                self.stdout(),
                self.stderr()
            );
        }
        Ok(self)
    }
    fn ns_per_call(&self) -> Result<f64> {
        self.printed("ns_per_call")
    }
    fn ns_per_write(&self) -> Result<f64> {
        self.printed("ns_per_write")
    }
    /// The number dk-writer printed as `KEY=…`.
    fn printed(&self, key: &str) -> Result<f64> {
        let s = self.stdout();
        let prefix = format!("{key}=");
        let v = s
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {key} in {s:?} / {}", self.stderr()))?;
        Ok(v.parse()?)
    }
    fn summary(&self) -> Result<Summary> {
        parse_summary(&self.stderr())
            .with_context(|| format!("no recorder summary in {:?}", self.stderr()))
    }
}

/// Peak RSS (VmHWM) of `pid` or, if `pid` is /usr/bin/time, of its child.
fn watch_hwm(pid: u32, through_time: bool) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let hwm = Arc::new(AtomicU64::new(0));
    let h = hwm.clone();
    let handle = std::thread::spawn(move || {
        let mut target = if through_time { None } else { Some(pid) };
        loop {
            if target.is_none() {
                let kids = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
                match kids {
                    Ok(k) => target = k.split_whitespace().next().and_then(|p| p.parse().ok()),
                    Err(_) => return,
                }
            }
            if let Some(t) = target {
                let Ok(st) = fs::read_to_string(format!("/proc/{t}/status")) else {
                    return;
                };
                let Some(line) = st.lines().find(|l| l.starts_with("VmHWM:")) else {
                    return; // a zombie: its memory is gone, the last figure stands
                };
                let kib: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                h.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (hwm, handle)
}

fn run(cmd: &mut Command, watch: Option<bool>) -> Result<Run> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child: Child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let watcher = watch.map(|through| watch_hwm(child.id(), through));
    let out = child.wait_with_output()?;
    let secs = start.elapsed().as_secs_f64();
    let hwm_kib = match watcher {
        Some((h, j)) => {
            let _ = j.join();
            h.load(Ordering::Relaxed)
        }
        None => 0,
    };
    Ok(Run { secs, out, hwm_kib })
}

fn du_bytes(p: &Path) -> Result<u64> {
    let out = Command::new("du").arg("-sB1").arg(p).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace().next().context("du output")?.parse()?)
}

/// Bytes of the files under `p` (their sizes, not the blocks they take).
fn apparent_bytes(p: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sB1", "--apparent-size"])
        .arg(p)
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace().next().context("du output")?.parse()?)
}

/// A tar of the first files of /usr/share/doc (in path order) up to `limit` bytes; returns
/// their total size.
fn make_doc_tar(tar: &Path, limit: u64) -> Result<u64> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>, total: &mut u64, limit: u64) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if *total >= limit {
                return;
            }
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                walk(&p, out, total, limit);
            } else if meta.is_file() {
                *total += meta.len();
                out.push((p, meta.len()));
            }
        }
    }
    let (mut files, mut total) = (Vec::new(), 0);
    walk(Path::new("/usr/share/doc"), &mut files, &mut total, limit);
    if files.is_empty() {
        bail!("/usr/share/doc has no files to make the tar benchmark from");
    }
    let list = tar.with_extension("list");
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.strip_prefix("/").unwrap_or(p).display().to_string())
        .collect();
    fs::write(&list, names.join("\n") + "\n")?;
    let status = Command::new("tar")
        .arg("-cf")
        .arg(tar)
        .args(["-C", "/", "-T"])
        .arg(&list)
        .status()?;
    if !status.success() {
        bail!("tar -cf {} failed: {status}", tar.display());
    }
    Ok(total)
}

/// A tar of `files` generated files (`file(i)`: the path below `src`, the text) at `tarball`,
/// made through the scratch dir `src`.
fn tar_of_files(
    src: &Path,
    tarball: &Path,
    files: u64,
    file: impl Fn(u64) -> (String, String),
) -> Result<()> {
    fresh(src)?;
    for i in 0..files {
        let (name, body) = file(i);
        let path = src.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, body)?;
    }
    let st = Command::new("tar")
        .arg("cf")
        .arg(tarball)
        .arg("-C")
        .arg(src)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar cf {} failed: {st}", tarball.display());
    }
    fs::remove_dir_all(src)?;
    Ok(())
}

fn fresh(p: &Path) -> Result<PathBuf> {
    if p.exists() {
        fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    }
    fs::create_dir_all(p)?;
    Ok(p.to_path_buf())
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn verdict(ok: bool) -> Option<bool> {
    Some(ok)
}

impl Bench {
    fn record(&self, state: &Path, cwd: &Path, cmd: &[&str]) -> Command {
        self.record_with(state, cwd, &[], cmd)
    }

    /// `diffkeeper record` with `flags` of its own before the `--`.
    fn record_with(&self, state: &Path, cwd: &Path, flags: &[String], cmd: &[&str]) -> Command {
        let mut c = Command::new(&self.dk);
        c.arg("record")
            .arg(format!("--state-dir={}", state.display()))
            .args(flags)
            .arg("--")
            .args(cmd)
            .current_dir(cwd);
        c
    }

    /// `diffkeeper record` under `/usr/bin/time -v`, with the recorder's own VmHWM watched.
    fn record_timed(
        &mut self,
        scenario: &str,
        state: &Path,
        cwd: &Path,
        cmd: &[&str],
    ) -> Result<Run> {
        let tv = state.with_extension("time");
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v")
            .arg("-o")
            .arg(&tv)
            .arg(&self.dk)
            .arg("record")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--")
            .args(cmd)
            .current_dir(cwd);
        let r = run(&mut c, Some(true))?.check(scenario)?;
        let tvs = fs::read_to_string(&tv).unwrap_or_default();
        let maxrss = tvs
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes): ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let _ = fs::remove_file(&tv);
        self.rss
            .entry(scenario.to_string())
            .or_default()
            .push((r.hwm_kib, maxrss));
        Ok(r)
    }

    fn plain(&self, cwd: &Path, cmd: &[&str]) -> Command {
        let mut c = Command::new(cmd[0]);
        c.args(&cmd[1..]).current_dir(cwd);
        c
    }

    fn strace(&self, cwd: &Path, cmd: &[&str]) -> Command {
        let mut c = Command::new("strace");
        c.args(["-f", "-e", "trace=%file,write", "-o", "/dev/null"])
            .args(cmd)
            .current_dir(cwd);
        c
    }

    fn w(&self) -> &str {
        self.writer.to_str().unwrap()
    }

    fn want(&self, s: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|o| o == s)
    }

    // 1. write() microbenchmark ------------------------------------------------------------

    fn micro(&mut self) -> Result<()> {
        let n64: u64 = if self.args.quick { 100_000 } else { 1_000_000 };
        let n4k: u64 = if self.args.quick { 25_000 } else { 250_000 };
        self.t
            .section("1. write() microbenchmark (ns per write, timed inside dk-writer)");
        for (count, size, target) in [(n64, 64u64, 1.5), (n4k, 4096, 1.1)] {
            let dir = fresh(&self.root.join("micro"))?;
            let (mut a, mut b, mut lost, mut healed) = (vec![], vec![], 0, 0);
            for rep in 0..self.args.micro_reps {
                let file = dir.join("w.bin");
                let (cs, ss) = (count.to_string(), size.to_string());
                let argv = [self.w(), &cs, &ss, file.to_str().unwrap()];
                let ra = run(&mut self.plain(&dir, &argv), None)?.check("dk-writer")?;
                a.push(ra.ns_per_write()?);
                fs::remove_file(&file)?;
                let state = self.root.join("micro-state");
                let _ = fs::remove_dir_all(&state);
                let rb = run(&mut self.record(&state, &dir, &argv), None)?.check("recorded")?;
                b.push(rb.ns_per_write()?);
                let s = rb.summary()?;
                lost += s.lost;
                healed += s.healed;
                fs::remove_dir_all(&state)?;
                fs::remove_file(&file)?;
                eprintln!(
                    "micro {size} B rep {rep}: plain {:.0} ns, recorded {:.0} ns",
                    a[rep], b[rep]
                );
                self.t.sample(
                    serde_json::json!({"bench": "micro", "size": size, "count": count,
                    "plain_ns": a[rep], "recorded_ns": b[rep], "lost": s.lost}),
                );
            }
            let r = ratio(&b, &a);
            let label = format!("{count} × {size} B writes");
            self.t.row(
                &format!("{label}: not recorded"),
                &fmt_stats(stats(&a), "ns"),
                "",
                None,
            );
            self.t.row(
                &format!("{label}: recorded"),
                &fmt_stats(stats(&b), "ns"),
                "",
                None,
            );
            self.t.row(
                &format!("{label}: ratio recorded/not"),
                &fmt_stats(r, "x"),
                &format!("<= {target}x"),
                verdict(r.med <= target),
            );
            if lost > 0 || healed > 0 {
                self.t.note(&format!(
                    "({lost} records lost, {healed} drops healed over the recorded runs)"
                ));
            }
        }
        Ok(())
    }

    // 1c. writes outside a recording's scope -----------------------------------------------

    fn scope(&mut self) -> Result<()> {
        let count: u64 = if self.args.quick { 25_000 } else { 250_000 };
        self.t
            .section("1c. 4 KiB writes to a file outside the recording's scope (record --exclude)");
        let dir = fresh(&self.root.join("scope"))?;
        let out = dir.join("out");
        fs::create_dir_all(&out)?;
        let exclude = format!("--exclude={}", out.display());
        let (mut plain, mut all, mut scoped) = (vec![], vec![], vec![]);
        let (mut captured_all, mut captured_scoped) = (0, 0);
        for rep in 0..self.args.micro_reps {
            let file = out.join("w.bin");
            let (cs, ss) = (count.to_string(), "4096".to_string());
            let argv = [self.w(), &cs, &ss, file.to_str().unwrap()];
            let r = run(&mut self.plain(&dir, &argv), None)?.check("dk-writer")?;
            plain.push(r.ns_per_write()?);
            fs::remove_file(&file)?;
            let state = self.root.join("scope-state");
            for scoped_run in [false, true] {
                let _ = fs::remove_dir_all(&state);
                let mut c = Command::new(&self.dk);
                c.arg("record")
                    .arg(format!("--state-dir={}", state.display()))
                    .args(scoped_run.then_some(&exclude))
                    .arg("--")
                    .args(argv)
                    .current_dir(&dir);
                let r = run(&mut c, None)?.check("recorded")?;
                let s = r.summary()?;
                if scoped_run {
                    scoped.push(r.ns_per_write()?);
                    captured_scoped += s.captured;
                } else {
                    all.push(r.ns_per_write()?);
                    captured_all += s.captured;
                }
                fs::remove_file(&file)?;
            }
            let _ = fs::remove_dir_all(&state);
            eprintln!(
                "scope rep {rep}: plain {:.0} ns, recorded {:.0} ns, outside the scope {:.0} ns",
                plain[rep], all[rep], scoped[rep]
            );
            self.t
                .sample(serde_json::json!({"bench": "scope", "count": count,
                "plain_ns": plain[rep], "recorded_ns": all[rep], "outside_scope_ns": scoped[rep]}));
        }
        let reps = self.args.micro_reps.max(1) as u64;
        let label = format!("{count} × 4 KiB writes");
        self.t.row(
            &format!("{label}: recorded/not"),
            &fmt_stats(ratio(&all, &plain), "x"),
            "",
            None,
        );
        let r = ratio(&scoped, &plain);
        self.t.row(
            &format!("{label}: outside the scope/not"),
            &fmt_stats(r, "x"),
            "<= recorded",
            verdict(r.med <= ratio(&all, &plain).med),
        );
        self.t.row(
            "bytes copied per run: recorded / outside the scope",
            &format!(
                "{} / {}",
                fmt_num((captured_all / reps) as f64, "MB"),
                fmt_num((captured_scoped / reps) as f64, "MB")
            ),
            "",
            None,
        );
        Ok(())
    }

    // 1b. cost to processes outside the filter ---------------------------------------------

    fn outside(&mut self) -> Result<()> {
        let count: u64 = if self.args.quick { 100_000 } else { 1_000_000 };
        self.t.section(
            "1b. Processes OUTSIDE the filter while programs are attached (64 B writes, getppid)",
        );
        let dir = fresh(&self.root.join("outside"))?;
        let recdir = fresh(&self.root.join("outside-rec"))?;
        // An older build (--diffkeeper) may know only the raw tracepoints.
        let help = Command::new(&self.dk).args(["record", "--help"]).output()?;
        let points: &[&str] = if String::from_utf8_lossy(&help.stdout).contains("--attach-point") {
            &["raw", "syscalls"]
        } else {
            eprintln!("outside: this diffkeeper has no --attach-point; raw tracepoints only");
            &["raw"]
        };
        // Per configuration, per workload (0: 64 B write, hooked; 1: getppid, not hooked).
        const NONE: usize = 0;
        let configs = ["none", "floor raw", "floor syscalls", "raw", "syscalls"];
        let mut ns: Vec<[Vec<f64>; 2]> = configs.iter().map(|_| [vec![], vec![]]).collect();
        let cs = count.to_string();
        let file = dir.join("w.bin");
        let w = self.w().to_string();
        let write_argv = [w.as_str(), &cs, "64", file.to_str().unwrap()];
        let getppid_argv = [w.as_str(), "--getppid", &cs];
        let measure = |b: &Bench, ns: &mut [Vec<f64>; 2]| -> Result<()> {
            let r = run(&mut b.plain(&dir, &write_argv), None)?.check("dk-writer")?;
            ns[0].push(r.ns_per_write()?);
            fs::remove_file(&file)?;
            let r = run(&mut b.plain(&dir, &getppid_argv), None)?.check("dk-writer")?;
            ns[1].push(r.ns_per_call()?);
            Ok(())
        };
        for rep in 0..self.args.micro_reps {
            measure(self, &mut ns[NONE])?;
            for (i, at) in [(1, floor::FloorAt::Raw), (2, floor::FloorAt::Syscalls)] {
                let floor = floor::Floor::attach(at)?;
                measure(self, &mut ns[i])?;
                drop(floor);
            }
            for (i, point) in [(3, "raw"), (4, "syscalls")] {
                if !points.contains(&point) {
                    continue;
                }
                // A recorder attached for another cgroup (a sleeping shell).
                let state = self.root.join("outside-state");
                let _ = fs::remove_dir_all(&state);
                let ready = recdir.join("READY");
                let _ = fs::remove_file(&ready);
                let script = format!(": > {} && exec sleep 600", ready.display());
                // An older build without the flag has its one attach point.
                let flags: Vec<String> = if points.len() > 1 {
                    vec![format!("--attach-point={point}")]
                } else {
                    vec![]
                };
                let mut bg = self.record_with(&state, &recdir, &flags, &["sh", "-c", &script]);
                bg.stdout(Stdio::null()).stderr(Stdio::piped());
                let mut bg = bg.spawn()?;
                let t0 = Instant::now();
                while !ready.exists() {
                    if t0.elapsed() > Duration::from_secs(60) {
                        bail!("background recorder did not start");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                measure(self, &mut ns[i])?;
                unsafe { libc::kill(bg.id() as i32, libc::SIGTERM) };
                bg.wait()?;
                fs::remove_dir_all(&state)?;
            }
            let last = |c: usize, w: usize| ns[c][w].last().copied().unwrap_or(f64::NAN);
            eprintln!(
                "outside rep {rep}: write none {:.0} / floors {:.0}, {:.0} / attached {:.0}, {:.0} ns; \
                 getppid none {:.0} / floors {:.0}, {:.0} / attached {:.0}, {:.0} ns",
                last(0, 0), last(1, 0), last(2, 0), last(3, 0), last(4, 0),
                last(0, 1), last(1, 1), last(2, 1), last(3, 1), last(4, 1),
            );
            self.t.sample(serde_json::json!({"bench": "outside",
                "write_ns": configs.iter().zip(&ns).map(|(c, n)| (c.to_string(), n[0].last().copied())).collect::<std::collections::BTreeMap<_, _>>(),
                "getppid_ns": configs.iter().zip(&ns).map(|(c, n)| (c.to_string(), n[1].last().copied())).collect::<std::collections::BTreeMap<_, _>>()}));
        }
        let diff =
            |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p - q).collect() };
        let fmt_diff = |d: Stats| format!("{:+.0} ns [{:+.0}–{:+.0}]", d.med, d.min, d.max);
        for (w, what) in [
            (0, "64 B write() (a hooked syscall)"),
            (1, "getppid() (a syscall DiffKeeper does not hook)"),
        ] {
            self.t.row(what, "", "", None);
            self.t.row(
                "  no programs attached",
                &fmt_stats(stats(&ns[NONE][w]), "ns"),
                "",
                None,
            );
            for (floor, attached, label) in [
                (1, 3, "raw syscall tracepoints"),
                (2, 4, "per-syscall tracepoints"),
            ] {
                self.t.row(
                    &format!("  empty programs, {label}"),
                    &fmt_stats(stats(&ns[floor][w]), "ns"),
                    "",
                    None,
                );
                self.t.row(
                    "    added by them (the kernel's floor)",
                    &fmt_diff(stats(&diff(&ns[floor][w], &ns[NONE][w]))),
                    "",
                    None,
                );
                if ns[attached][w].is_empty() {
                    self.t.row(
                        &format!("  DiffKeeper at {label}"),
                        "not in this build",
                        "",
                        None,
                    );
                    continue;
                }
                self.t.row(
                    &format!("  DiffKeeper at {label}, other cgroup"),
                    &fmt_stats(stats(&ns[attached][w]), "ns"),
                    "",
                    None,
                );
                let own = stats(&diff(&ns[attached][w], &ns[floor][w]));
                self.t.row(
                    "    added by DiffKeeper beyond the floor",
                    &fmt_diff(own),
                    "<= +20 ns",
                    verdict(own.med <= 20.0),
                );
                let total = stats(&diff(&ns[attached][w], &ns[NONE][w]));
                self.t.row(
                    "    added in all (median of pair diffs)",
                    &format!(
                        "{} ({:.2}x)",
                        fmt_diff(total),
                        ratio(&ns[attached][w], &ns[NONE][w]).med
                    ),
                    "",
                    None,
                );
            }
        }
        Ok(())
    }

    // 2. real workloads ----------------------------------------------------------------------

    fn gen_crate(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir.join("src"))?;
        fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"benchcrate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
        )?;
        let modules = if self.args.quick { 2 } else { 8 };
        let mut main = String::new();
        for m in 0..modules {
            let _ = writeln!(main, "mod m{m};");
            let mut s = String::new();
            for f in 0..40 {
                let _ = writeln!(
                    s,
                    "#[derive(Debug, Clone, PartialEq)]\npub struct S{f} {{ pub a: Vec<u64>, pub b: String, pub c: std::collections::HashMap<String, u64> }}\n\
                     impl S{f} {{\n    pub fn new(n: u64) -> Self {{ let mut c = std::collections::HashMap::new(); for i in 0..n {{ c.insert(format!(\"k{{i}}\"), i * {f}); }} Self {{ a: (0..n).collect(), b: format!(\"{m}-{f}-{{n}}\"), c }} }}\n    \
                     pub fn score(&self) -> u64 {{ self.a.iter().map(|x| x.wrapping_mul({f} + 1)).sum::<u64>() + self.c.values().sum::<u64>() + self.b.len() as u64 }}\n}}\n\
                     pub fn run{f}() -> u64 {{ let v: Vec<S{f}> = (0..10).map(S{f}::new).collect(); v.iter().map(|s| s.score()).sum() }}"
                );
            }
            let _ = writeln!(
                s,
                "pub fn all() -> u64 {{ 0 {} }}",
                (0..40).map(|f| format!("+ run{f}()")).collect::<String>()
            );
            fs::write(dir.join(format!("src/m{m}.rs")), s)?;
        }
        let _ = writeln!(
            main,
            "fn main() {{ println!(\"{{}}\", 0 {}); }}",
            (0..modules)
                .map(|m| format!("+ m{m}::all()"))
                .collect::<String>()
        );
        fs::write(dir.join("src/main.rs"), main)?;
        Ok(())
    }

    fn workloads(&mut self) -> Result<()> {
        let wl = fresh(&self.root.join("wl"))?;
        // (a) a small crate with no dependencies.
        let krate = wl.join("crate");
        self.gen_crate(&krate)?;
        // (b) a tarball of ~5,000 small files.
        let nfiles = if self.args.quick { 500 } else { 5000 };
        let tarball = wl.join("files.tar");
        tar_of_files(&wl.join("tarsrc"), &tarball, nfiles, |i| {
            let body: String = (0..(200 + (i * 37) % 3000))
                .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
                .collect();
            (format!("dir{:02}/file{i:05}.txt", i % 50), body)
        })?;
        // (c) sqlite: 20,000 inserts in 200 transactions.
        let (tx, per) = if self.args.quick {
            (20, 100)
        } else {
            (200, 100)
        };
        let mut sql = String::from(
            "PRAGMA journal_mode=WAL;\nCREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT, v REAL, note TEXT);\n",
        );
        for t in 0..tx {
            sql.push_str("BEGIN;\n");
            for i in 0..per {
                let k = t * per + i;
                let _ = writeln!(
                    sql,
                    "INSERT INTO t (name, v, note) VALUES ('name-{k}', {}, 'note {} for row {k}');",
                    k as f64 * 1.5,
                    (k * 7919) % 100_003
                );
            }
            sql.push_str("COMMIT;\n");
        }
        let sqlfile = wl.join("inserts.sql");
        fs::write(&sqlfile, sql)?;

        let targets = wl.join("targets");
        let cargo_cwd = krate.clone();
        let tar_out = wl.join("untar");
        let sq_dir = wl.join("sq");
        let tarball_s = tarball.to_str().unwrap().to_string();
        let sqlread = format!(".read {}", sqlfile.display());

        struct Workload {
            name: &'static str,
            cwd: PathBuf,
            argv: Vec<String>,
            env: Option<PathBuf>,
        }
        let mut list = vec![
            Workload {
                name: "cargo build --offline (8 modules, no deps)",
                cwd: cargo_cwd.clone(),
                argv: vec![
                    "cargo".into(),
                    "build".into(),
                    "--offline".into(),
                    "-q".into(),
                ],
                env: Some(targets.clone()),
            },
            Workload {
                name: "tar xf (5,000 small files)",
                cwd: tar_out.clone(),
                argv: vec!["tar".into(), "xf".into(), tarball_s.clone()],
                env: None,
            },
            Workload {
                name: "sqlite3: 20,000 inserts in 200 transactions",
                cwd: sq_dir.clone(),
                argv: vec!["sqlite3".into(), "bench.db".into(), sqlread.clone()],
                env: None,
            },
        ];
        if self.args.quick {
            list[0].name = "cargo build --offline (2 modules, no deps)";
            list[1].name = "tar xf (500 small files)";
            list[2].name = "sqlite3: 2,000 inserts in 20 transactions";
        }

        // Warm caches once (and create Cargo.lock), unmeasured.
        for w in &list {
            fresh(&w.cwd).ok();
            if w.name.starts_with("cargo") {
                self.gen_crate(&w.cwd)?;
            }
            let mut c = self.plain(
                &w.cwd,
                &w.argv.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            if let Some(t) = &w.env {
                c.env("CARGO_TARGET_DIR", fresh(&t.join("warm"))?);
            }
            run(&mut c, None)?.check(w.name)?;
        }

        self.t
            .section("2. Real workloads (whole-command wall time, recorder start-up included)");
        let mut sqlite_store = vec![];
        for w in &list {
            let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
            // Timed from inside: the workload's own wall time, without the recorder's start-up
            // and finish, as a pod sees it under an agent that attached long ago.
            let (mut inner_plain, mut inner_recorded) = (vec![], vec![]);
            let mut lost = 0;
            for rep in 0..self.args.reps {
                // Start-up, interleaved with the workloads.
                let state = self.root.join("startup-state");
                let _ = fs::remove_dir_all(&state);
                let empty = fresh(&self.root.join("empty"))?;
                let r =
                    run(&mut self.record(&state, &empty, &["true"]), None)?.check("record true")?;
                self.startup.push(r.secs);
                fs::remove_dir_all(&state)?;

                let argv: Vec<&str> = w.argv.iter().map(String::as_str).collect();
                for variant in 0..5 {
                    if w.cwd != cargo_cwd {
                        fresh(&w.cwd)?;
                    }
                    sync();
                    let state = self.root.join("wl-state");
                    let _ = fs::remove_dir_all(&state);
                    let target = match &w.env {
                        Some(t) => Some(fresh(&t.join(format!("r{rep}v{variant}")))?),
                        None => None,
                    };
                    let r = match variant {
                        0 => {
                            let mut cmd = self.plain(&w.cwd, &argv);
                            if let Some(t) = &target {
                                cmd.env("CARGO_TARGET_DIR", t);
                            }
                            run(&mut cmd, None)?.check(w.name)?
                        }
                        1 => {
                            // /usr/bin/time -v, watched, with CARGO_TARGET_DIR if any.
                            let mut full: Vec<String> = vec![];
                            if let Some(t) = &target {
                                full.extend([
                                    "env".into(),
                                    format!("CARGO_TARGET_DIR={}", t.display()),
                                ]);
                            }
                            full.extend(w.argv.iter().cloned());
                            let full: Vec<&str> = full.iter().map(String::as_str).collect();
                            let r = self.record_timed(w.name, &state, &w.cwd, &full)?;
                            let s = r.summary()?;
                            lost += s.lost;
                            if w.name.starts_with("sqlite") {
                                sqlite_store.push((s.captured, du_bytes(&state)?, s.store));
                            }
                            r
                        }
                        3 | 4 => {
                            let timefile = self.root.join("inner.ns");
                            let _ = fs::remove_file(&timefile);
                            let mut wrapped = vec![
                                "sh",
                                "-c",
                                "a=$(date +%s%N); \"$@\"; s=$?; b=$(date +%s%N); \
                                 echo $((b - a)) > \"$DK_TIMEFILE\"; exit $s",
                                "sh",
                            ];
                            wrapped.extend(argv.iter().copied());
                            let mut cmd = if variant == 3 {
                                self.plain(&w.cwd, &wrapped)
                            } else {
                                self.record(&state, &w.cwd, &wrapped)
                            };
                            cmd.env("DK_TIMEFILE", &timefile);
                            if let Some(t) = &target {
                                cmd.env("CARGO_TARGET_DIR", t);
                            }
                            let r = run(&mut cmd, None)?.check(w.name)?;
                            let ns: f64 = fs::read_to_string(&timefile)
                                .with_context(|| format!("{}: the inner timing", w.name))?
                                .trim()
                                .parse()
                                .with_context(|| format!("{}: the inner timing", w.name))?;
                            [&mut inner_plain, &mut inner_recorded][variant - 3].push(ns / 1e9);
                            r
                        }
                        _ => {
                            let mut cmd = self.strace(&w.cwd, &argv);
                            if let Some(t) = &target {
                                cmd.env("CARGO_TARGET_DIR", t);
                            }
                            run(&mut cmd, None)?.check(w.name)?
                        }
                    };
                    if variant < 3 {
                        [&mut a, &mut b, &mut c][variant].push(r.secs);
                    }
                    let _ = fs::remove_dir_all(&state);
                    if let Some(t) = &target {
                        let _ = fs::remove_dir_all(t);
                    }
                }
                eprintln!(
                    "{} rep {rep}: plain {:.3}s recorded {:.3}s strace {:.3}s; timed inside: \
                     plain {:.3}s recorded {:.3}s",
                    w.name, a[rep], b[rep], c[rep], inner_plain[rep], inner_recorded[rep]
                );
                self.t
                    .sample(serde_json::json!({"bench": "workload", "name": w.name,
                    "plain_s": a[rep], "recorded_s": b[rep], "strace_s": c[rep],
                    "inner_plain_s": inner_plain[rep], "inner_recorded_s": inner_recorded[rep]}));
            }
            let su = stats(&self.startup).med;
            let rb = ratio(&b, &a);
            let rc = ratio(&c, &a);
            let b_minus: Vec<f64> = b.iter().map(|x| x - su).collect();
            let rbm = ratio(&b_minus, &a);
            self.t.row(w.name, "", "", None);
            self.t
                .row("  not recorded", &fmt_stats(stats(&a), "s"), "", None);
            self.t.row(
                "  recorded (DiffKeeper)",
                &fmt_stats(stats(&b), "s"),
                "",
                None,
            );
            self.t.row(
                "  strace -f -e trace=%file,write",
                &fmt_stats(stats(&c), "s"),
                "",
                None,
            );
            self.t.row(
                "  ratio recorded/not",
                &fmt_stats(rb, "x"),
                "<= 1.03x",
                verdict(rb.med <= 1.03),
            );
            self.t.row(
                "  ratio recorded/not, minus median start-up",
                &fmt_stats(rbm, "x"),
                "(derived)",
                None,
            );
            let inner = ratio(&inner_recorded, &inner_plain);
            self.t.row(
                "  timed inside, programs attached: recorded/not",
                &fmt_stats(inner, "x"),
                "<= 1.03x",
                verdict(inner.med <= 1.03),
            );
            self.t
                .row("  ratio strace/not", &fmt_stats(rc, "x"), "", None);
            if lost > 0 {
                self.t
                    .note(&format!("({lost} records lost over the recorded runs)"));
            }
        }
        let s = stats(&self.startup);
        self.t.row(
            "recorder start-up: `diffkeeper record -- true`",
            &fmt_stats(s, "s"),
            "",
            None,
        );
        self.sqlite_store = sqlite_store;
        Ok(())
    }

    // 3. storage -----------------------------------------------------------------------------

    fn storage(&mut self) -> Result<()> {
        self.t
            .section("3. Storage: bytes the store holds (du of the state dir) / bytes written");
        let dir = fresh(&self.root.join("storage"))?;
        let state = self.root.join("storage-state");
        let lines: u64 = if self.args.quick { 1280 } else { 12_800 };
        let cases: Vec<(&str, Vec<String>, &str, f64)> = vec![
            (
                "append-only log (4 KiB lines, O_APPEND)",
                vec![
                    self.w().into(),
                    lines.to_string(),
                    "4096".into(),
                    dir.join("app.log").display().to_string(),
                    "--append".into(),
                    "--text".into(),
                ],
                "<= 1.0x",
                1.0,
            ),
            (
                "rewrite-heavy config (2,000 atomic saves)",
                vec![
                    self.w().into(),
                    "--config".into(),
                    (if self.args.quick { 200 } else { 2000 }).to_string(),
                    dir.join("app.json").display().to_string(),
                ],
                "<= 15%",
                0.15,
            ),
        ];
        for (name, argv, target, limit) in cases {
            fresh(&dir)?;
            let _ = fs::remove_dir_all(&state);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let r = run(&mut self.record(&state, &dir, &argv), None)?.check(name)?;
            let s = r.summary()?;
            let written: u64 = r
                .stdout()
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(s.captured);
            let du = du_bytes(&state)?;
            let q = du as f64 / written as f64;
            self.t.row(
                name,
                &format!(
                    "{} / {} = {:.3}x ({:.1}%)",
                    fmt_num(du as f64, "MB"),
                    fmt_num(written as f64, "MB"),
                    q,
                    q * 100.0
                ),
                target,
                verdict(q <= limit),
            );
            self.t.sample(
                serde_json::json!({"bench": "storage", "name": name, "written": written,
                "du": du, "store_reported": s.store, "captured": s.captured}),
            );
            fs::remove_dir_all(&state)?;
        }
        // Real files, where the bytes of the tree are what was written: text (about half of
        // /usr/share/doc is gzipped already) unpacked by tar, and incompressible data.
        let doc_tar = self.root.join("doc.tar");
        let doc_bytes = make_doc_tar(&doc_tar, if self.args.quick { 3 << 20 } else { 30 << 20 })?;
        let tar_name = format!(
            "tar -x of {} of /usr/share/doc (store / tree)",
            fmt_num(doc_bytes as f64, "MB")
        );
        let random_mib = if self.args.quick { 8 } else { 64 };
        let random_name = format!("{random_mib} MiB of random data (store / tree)");
        let tree_cases: Vec<(&str, Vec<String>, &str, f64)> = vec![
            (
                &tar_name,
                vec!["tar".into(), "-xf".into(), doc_tar.display().to_string()],
                "<= 0.65x",
                0.65,
            ),
            (
                &random_name,
                vec![
                    "sh".into(),
                    "-c".into(),
                    format!("head -c {random_mib}M /dev/urandom > random.bin"),
                ],
                "<= 1.05x",
                1.05,
            ),
        ];
        for (name, argv, target, limit) in tree_cases {
            fresh(&dir)?;
            let _ = fs::remove_dir_all(&state);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(&mut self.record(&state, &dir, &argv), None)?.check(name)?;
            let tree = apparent_bytes(&dir)?;
            let du = du_bytes(&state)?;
            let q = du as f64 / tree as f64;
            self.t.row(
                name,
                &format!(
                    "{} / {} = {:.3}x",
                    fmt_num(du as f64, "MB"),
                    fmt_num(tree as f64, "MB"),
                    q
                ),
                target,
                verdict(q <= limit),
            );
            self.t.sample(
                serde_json::json!({"bench": "storage", "name": name, "tree": tree, "du": du}),
            );
            fs::remove_dir_all(&state)?;
        }
        self.small_files_storage(&dir, &state)?;
        if self.sqlite_store.is_empty() {
            self.t.note("(sqlite: run the workloads section too)");
        } else {
            let q: Vec<f64> = self
                .sqlite_store
                .iter()
                .map(|(w, du, _)| *du as f64 / *w as f64)
                .collect();
            let (w, du, _) = self.sqlite_store[0];
            self.t.row(
                "sqlite database (the inserts of 2c; written = captured)",
                &format!(
                    "{} / {} = {}",
                    fmt_num(du as f64, "MB"),
                    fmt_num(w as f64, "MB"),
                    fmt_stats(stats(&q), "x")
                ),
                "",
                None,
            );
        }
        Ok(())
    }

    /// Many small files, where what a file costs the index, not its bytes, decides the size:
    /// a tar of 20,000 text files of 40-200 B unpacked under `record`.
    fn small_files_storage(&mut self, dir: &Path, state: &Path) -> Result<()> {
        let files: u64 = if self.args.quick { 2_000 } else { 20_000 };
        let tarball = self.root.join("small.tar");
        tar_of_files(&self.root.join("small-src"), &tarball, files, |i| {
            let line = format!("file {i}: what a small config, source or lock file holds\n");
            (
                format!("d{:02}/f{i:05}.txt", i % 50),
                line.repeat(1 + (i as usize % 3)),
            )
        })?;
        let name = format!("tar -x of {files} small files: index bytes a file");
        fresh(dir)?;
        let _ = fs::remove_dir_all(state);
        let empty = self.root.join("small-empty");
        let _ = fs::remove_dir_all(&empty);
        run(&mut self.record(&empty, dir, &["true"]), None)?.check("record -- true")?;
        let tar = tarball.display().to_string();
        run(&mut self.record(state, dir, &["tar", "-xf", &tar]), None)?.check(&name)?;
        let tree = apparent_bytes(dir)?;
        let du = du_bytes(state)?;
        let index = du_bytes(&state.join("db"))?.saturating_sub(du_bytes(&empty.join("db"))?);
        let per_file = index as f64 / files as f64;
        self.t.row(
            &name,
            &format!(
                "{per_file:.0} B a file on disk; store / tree {} / {} = {:.2}x",
                fmt_num(du as f64, "MB"),
                fmt_num(tree as f64, "MB"),
                du as f64 / tree as f64
            ),
            "a few dozen B",
            verdict(per_file <= 60.0),
        );
        self.t.sample(
            serde_json::json!({"bench": "storage", "name": name, "files": files,
            "tree": tree, "du": du, "index": index}),
        );
        fs::remove_dir_all(state)?;
        fs::remove_dir_all(&empty)?;
        Ok(())
    }

    // 4. export --------------------------------------------------------------------------------

    fn export(&mut self) -> Result<()> {
        let files: u64 = if self.args.quick { 1000 } else { 10_000 };
        let bytes = if self.args.quick {
            64 << 20
        } else {
            self.args.export_bytes
        };
        let dir = fresh(&self.root.join("export-src"))?;
        let state = self.root.join("export-state");
        let _ = fs::remove_dir_all(&state);
        let scenario = format!("recording {files} files / {}", fmt_num(bytes as f64, "MiB"));
        let (fs_s, bs) = (files.to_string(), bytes.to_string());
        let w = self.w().to_string();
        let d = dir.display().to_string();
        let r = self.record_timed(&scenario, &state, &dir, &[&w, "--tree", &fs_s, &bs, &d])?;
        let s = r.summary()?;
        let rec_secs = r.secs;
        let out = r.stdout();
        let middle_bytes: u64 = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("middle_bytes="))
            .and_then(|v| v.parse().ok())
            .context("middle_bytes")?;
        // The middle moment: just after the MIDDLE marker was created.
        let log = Command::new(&self.dk)
            .arg("log")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--json")
            .arg(format!("--path={}/MIDDLE", dir.display()))
            .output()?;
        let log = String::from_utf8_lossy(&log.stdout);
        let first: serde_json::Value =
            serde_json::from_str(log.lines().next().context("no MIDDLE in the log")?)?;
        let seq = first["summary"]["seq"].as_u64().context("seq")?;
        let moment = format!("@seq:{seq}");
        let store_du = du_bytes(&state)?;

        self.t.section(&format!(
            "4. Export of a middle moment: {files} files, {} (phase 1 of {scenario}, then 10% rewritten)",
            fmt_num(middle_bytes as f64, "MB"),
        ));
        let (mut exported_files, mut exported_bytes) = (0u64, 0u64);
        let mut warned = false;
        let (mut a, mut b) = (vec![], vec![]);
        let outs = self.root.join("export-out");
        for rep in 0..self.args.reps {
            let o = outs.join(format!("x{rep}"));
            let _ = fs::remove_dir_all(&outs);
            fs::create_dir_all(&outs)?;
            sync();
            let r = run(
                Command::new(&self.dk)
                    .arg("export")
                    .arg(format!("--state-dir={}", state.display()))
                    .arg(format!("--out={}", o.display()))
                    .arg(format!("--time={moment}")),
                None,
            )?
            .check("export")?;
            if r.stderr().contains("warning") && !warned {
                warned = true;
                self.t
                    .note(&format!("export warned: {}", r.stderr().trim()));
            }
            b.push(r.secs);
            sync();
            let tree = o.join(dir.strip_prefix("/").unwrap());
            let c = outs.join(format!("c{rep}"));
            let rc = run(Command::new("cp").arg("-a").arg(&tree).arg(&c), None)?.check("cp -a")?;
            a.push(rc.secs);
            // The exported tree must be the middle moment: every file of phase 1.
            if rep == 0 {
                let n = Command::new("find")
                    .arg(&tree)
                    .args(["-type", "f"])
                    .output()?;
                exported_files = String::from_utf8_lossy(&n.stdout).lines().count() as u64;
                let sz = Command::new("du").args(["-sb"]).arg(&tree).output()?;
                exported_bytes = String::from_utf8_lossy(&sz.stdout)
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
            eprintln!(
                "export rep {rep}: export {:.2}s cp -a {:.2}s",
                b[rep], a[rep]
            );
            self.t
                .sample(serde_json::json!({"bench": "export", "export_s": b[rep], "cp_s": a[rep]}));
        }
        let _ = fs::remove_dir_all(&outs);
        let r = ratio(&b, &a);
        self.t.row(
            "cp -a of the same tree",
            &fmt_stats(stats(&a), "s"),
            "",
            None,
        );
        self.t.row(
            &format!("diffkeeper export --time={moment}"),
            &fmt_stats(stats(&b), "s"),
            "",
            None,
        );
        self.t.row(
            "ratio export/cp -a",
            &fmt_stats(r, "x"),
            "<= 2x",
            verdict(r.med <= 2.0),
        );
        // Files of phase 1 plus the MIDDLE marker, which is at the moment itself.
        let complete = exported_files == files + 1;
        self.t.row(
            "middle moment complete (phase-1 files + marker)",
            &format!(
                "{exported_files} of {} files, {} of {}{}",
                files + 1,
                fmt_num(exported_bytes as f64, "MB"),
                fmt_num(middle_bytes as f64, "MB"),
                if warned {
                    " (export warned, see above)"
                } else {
                    ""
                }
            ),
            "all files",
            verdict(complete),
        );
        self.t.note(&format!(
            "recording: {:.1} s wall, {} events, {} captured, store {} (du), {} lost",
            rec_secs,
            s.events,
            fmt_num(s.captured as f64, "MB"),
            fmt_num(store_du as f64, "MB"),
            s.lost
        ));
        fs::remove_dir_all(&state)?;
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

/// One step of the ingest ladder.
struct Step {
    writers: u32,
    size: u64,
    /// Writes per second per writer (0: as fast as it can).
    rate: u64,
    count: u64,
    ring: Option<&'static str>,
}

impl Bench {
    // 5. ingest --------------------------------------------------------------------------------

    fn ingest(&mut self) -> Result<()> {
        let q = if self.args.quick { 10 } else { 1 };
        let st = |writers, size, rate, count: u64, ring| Step {
            writers,
            size,
            rate,
            count: count / q,
            ring,
        };
        let steps = [
            st(1, 64, 50_000, 100_000, None),
            st(1, 64, 100_000, 200_000, None),
            st(1, 64, 0, 500_000, None),
            st(2, 64, 0, 500_000, None),
            st(1, 4096, 5_000, 10_000, None),
            st(1, 4096, 20_000, 40_000, None),
            st(1, 4096, 0, 60_000, None),
            st(2, 4096, 0, 60_000, None),
            st(2, 64, 0, 500_000, Some("256KiB")),
            st(2, 4096, 0, 30_000, Some("256KiB")),
        ];
        self.t.section(
            "5. Ingest: increasing write rates (each writer its own file; --vary payloads)",
        );
        let _ = writeln!(
            self.t.out,
            "{:<30} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>7}",
            "step", "offered/s", "writes/s", "MB/s", "events", "lost", "healed", "exact"
        );
        let dir = self.root.join("ingest");
        let state = self.root.join("ingest-state");
        let out = self.root.join("ingest-out");
        let mut best: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let mut all_exact = true;
        let mut any_loss = false;
        for s in &steps {
            fresh(&dir)?;
            let _ = fs::remove_dir_all(&state);
            let mut script = String::new();
            for i in 0..s.writers {
                let _ = write!(
                    script,
                    "{} {} {} {}/f{i}.bin --vary --rate {} & ",
                    self.w(),
                    s.count,
                    s.size,
                    dir.display(),
                    s.rate
                );
            }
            script.push_str("wait");
            let mut c = Command::new(&self.dk);
            c.arg("record")
                .arg(format!("--state-dir={}", state.display()));
            if let Some(r) = s.ring {
                c.arg(format!("--ring-size={r}"));
            }
            c.args(["--", "sh", "-c", &script]).current_dir(&dir);
            let r = run(&mut c, None)?.check("ingest step")?;
            let sum = r.summary()?;
            let secs = r
                .stdout()
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("secs="))
                .filter_map(|v| v.parse::<f64>().ok())
                .fold(0.0, f64::max);
            let evs = s.count as f64 * s.writers as f64 / secs;
            let mbs = sum.captured as f64 / secs / 1e6;
            // Export the end and compare with the real files.
            let _ = fs::remove_dir_all(&out);
            let e = run(
                Command::new(&self.dk)
                    .arg("export")
                    .arg(format!("--state-dir={}", state.display()))
                    .arg(format!("--out={}", out.display())),
                None,
            )?
            .check("export")?;
            let mut exact = !e.stderr().contains("warning");
            for i in 0..s.writers {
                let real = dir.join(format!("f{i}.bin"));
                let got = out.join(real.strip_prefix("/").unwrap());
                exact &= fs::read(&real).ok() == fs::read(&got).ok();
            }
            all_exact &= exact;
            if sum.lost > 0 {
                any_loss = true;
                // Lost records must be reported and healed.
                all_exact &= sum.healed > 0;
            }
            let label = format!(
                "{}×{} B {}{}",
                s.writers,
                s.size,
                if s.rate == 0 {
                    "max".to_string()
                } else {
                    format!("@{}k/s", s.rate / 1000)
                },
                s.ring.map(|r| format!(" ring {r}")).unwrap_or_default()
            );
            let offered = if s.rate == 0 {
                "max".to_string()
            } else {
                format!("{}", s.rate * s.writers as u64)
            };
            let line = format!(
                "{:<30} {:>11} {:>11.0} {:>9.1} {:>9} {:>8} {:>8} {:>7}",
                label,
                offered,
                evs,
                mbs,
                sum.events,
                sum.lost,
                sum.healed,
                if exact { "yes" } else { "NO" }
            );
            eprintln!("  {line}");
            let _ = writeln!(self.t.out, "{line}");
            self.t.sample(
                serde_json::json!({"bench": "ingest", "step": label, "writes_per_s": evs,
                "mb_per_s": mbs, "events": sum.events, "lost": sum.lost, "healed": sum.healed,
                "exact": exact, "secs": secs}),
            );
            if sum.lost == 0 && s.ring.is_none() {
                let b = best.entry(s.size).or_insert((0.0, 0.0));
                if evs > b.0 {
                    *b = (evs, mbs);
                }
            }
            let _ = fs::remove_dir_all(&out);
            let _ = fs::remove_dir_all(&state);
        }
        for (size, (evs, mbs)) in &best {
            self.t.row(
                &format!("highest rate with 0 lost, {size} B writes"),
                &format!("{evs:.0} writes/s, {mbs:.1} MB/s"),
                "",
                None,
            );
        }
        self.t.row(
            "no silent drop (lost => reported+healed, export exact)",
            &format!(
                "{} ({})",
                if all_exact {
                    "every step exact"
                } else {
                    "SOME STEP INEXACT"
                },
                if any_loss {
                    "losses occurred and were healed"
                } else {
                    "no losses at all"
                }
            ),
            "always",
            verdict(all_exact),
        );
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    // 6. memory --------------------------------------------------------------------------------

    fn memory(&mut self) {
        let rss = std::mem::take(&mut self.rss);
        // Only sections 2 and 4 measure it: with neither run, there is nothing to show.
        if rss.is_empty() {
            return;
        }
        self.t.section("6. Memory: recorder peak RSS");
        for (scenario, v) in &rss {
            let hwm: Vec<f64> = v.iter().map(|x| x.0 as f64 * 1024.0).collect();
            let tv: Vec<f64> = v.iter().map(|x| x.1 as f64 * 1024.0).collect();
            self.t.row(
                scenario,
                &format!(
                    "{} (time -v: {})",
                    fmt_stats(stats(&hwm), "MiB"),
                    fmt_stats(stats(&tv), "MiB")
                ),
                "",
                None,
            );
        }
        self.t
            .note("first figure: the recorder's own VmHWM; `/usr/bin/time -v` \"Maximum resident");
        self.t
            .note("set size\" is the max over the recorder AND the recorded command it reaped.");
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name(name))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: recording loads eBPF programs");
    }
    let dk = match &args.diffkeeper {
        Some(p) => p.clone(),
        None => sibling("diffkeeper")?,
    };
    let writer = sibling("dk-writer")?;
    for p in [&dk, &writer] {
        if !p.exists() {
            bail!(
                "{} not found: cargo build --release --bin diffkeeper --bin dk-writer",
                p.display()
            );
        }
    }
    let base = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("dk-bench-")
        .tempdir_in(&base)?;
    let started = Instant::now();
    let mut b = Bench {
        dk,
        writer,
        root: tmp.path().to_path_buf(),
        args,
        t: Table {
            out: String::new(),
            json: vec![],
        },
        rss: BTreeMap::new(),
        startup: vec![],
        sqlite_store: vec![],
    };
    if b.want("micro") {
        b.micro()?;
    }
    if b.want("outside") {
        b.outside()?;
    }
    if b.want("scope") {
        b.scope()?;
    }
    if b.want("workloads") {
        b.workloads()?;
    }
    if b.want("storage") {
        b.storage()?;
    }
    if b.want("export") {
        b.export()?;
    }
    if b.want("ingest") {
        b.ingest()?;
    }
    b.memory();

    let mut head = String::new();
    let _ =
        writeln!(
        head,
        "DiffKeeper benchmarks — {} repetitions (micro) / {} (workloads, export), interleaved; \
         figures are median [min–max], ratios the median of per-pair ratios.{}",
        b.args.micro_reps,
        b.args.reps,
        if b.args.quick { " QUICK MODE: sizes scaled down, not a measurement." } else { "" }
    );
    let _ = writeln!(
        head,
        "{:<46} {:<46} {:<14} verdict",
        "measurement", "figure", "target"
    );
    let met = b.t.out.matches(" MET").count();
    let missed = b.t.out.matches(" MISSED").count();
    println!("{head}{}", b.t.out);
    println!(
        "\n{met} targets MET, {missed} MISSED; suite took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(j) = &b.args.json {
        fs::write(j, serde_json::to_string_pretty(&b.t.json)?)?;
    }
    Ok(())
}
