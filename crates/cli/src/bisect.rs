//! `diffkeeper bisect`: find the change to a file that broke something, as `git bisect` does for
//! commits: CHECK-CMD runs against the files exported at the moments the file changed, and a
//! binary search names the first bad one.

use anyhow::{bail, Context};
use diffkeeper_export::{export_store_dir, ExportOptions};
use diffkeeper_store::{format_wall, OpKind, RecPath, Seq, Store, Summary};
use std::path::Path;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// The file whose changes are searched (its recorded absolute path).
    #[arg(long = "path", value_name = "FILE")]
    path: String,
    /// A moment known good (default: the start).
    #[arg(long, allow_hyphen_values = true, default_value = "start")]
    good: String,
    /// A moment known bad (default: the end).
    #[arg(long, allow_hyphen_values = true, default_value = "end")]
    bad: String,
    /// Test after every event. By default a rewrite of the file (the truncate and the writes
    /// from offset 0 that follow it, as `echo x > f` makes) counts as one change, so
    /// half-written states are not tested.
    #[arg(long)]
    each_event: bool,
    /// The check: exit 0 = good, 125 = cannot tell (that moment is skipped), anything else =
    /// bad. It runs in the exported tree, with DK_BISECT_ROOT (the tree), DK_BISECT_FILE (FILE
    /// in it) and DK_BISECT_TIME (the moment) set.
    #[arg(last = true, required = true, value_name = "CHECK-CMD")]
    check: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Good,
    Bad,
    Skip,
}

struct Bisect<'a> {
    store: &'a Store,
    args: &'a Args,
    file: RecPath,
    scratch: tempfile::TempDir,
    tested: usize,
}

impl Bisect<'_> {
    /// Exports the tree right after `seq` and runs the check in it.
    fn test(&mut self, seq: Seq, time: u64) -> anyhow::Result<Verdict> {
        self.tested += 1;
        let root = self.scratch.path().join(format!("at-{seq}"));
        export_store_dir(self.store, seq, None, &root, &ExportOptions::default())
            .with_context(|| format!("exporting the files at @seq:{seq}"))?;
        let span = self.store.span();
        let label = crate::offset_label(&span, time);
        let file_in_root = root.join(
            Path::new(&self.file.to_string())
                .strip_prefix("/")
                .unwrap_or(Path::new("")),
        );
        let status = Command::new(&self.args.check[0])
            .args(&self.args.check[1..])
            .current_dir(&root)
            .env("DK_BISECT_ROOT", &root)
            .env("DK_BISECT_FILE", &file_in_root)
            .env("DK_BISECT_TIME", &label)
            .status()
            .with_context(|| format!("running the check {:?}", self.args.check[0]))?;
        let verdict = match status.code() {
            Some(0) => Verdict::Good,
            Some(125) => Verdict::Skip,
            Some(_) => Verdict::Bad,
            None => bail!(
                "the check was killed by a signal at {label} ({status}); a check must exit, \
                 0 for good and 1-124 for bad"
            ),
        };
        eprintln!(
            "diffkeeper: {label:>12} @seq:{seq:<8} {}",
            match verdict {
                Verdict::Good => "good",
                Verdict::Bad => "bad",
                Verdict::Skip => "skip (exit 125)",
            }
        );
        let _ = std::fs::remove_dir_all(&root);
        Ok(verdict)
    }
}

/// Events that can change what is at FILE: its content, its name, its kind.
fn changes_file(s: &Summary) -> bool {
    !matches!(s.op.kind, OpKind::Marker)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = crate::open_store(&a.state)?;
    let span = store.span();
    let file = RecPath::normalize(a.path.as_bytes())
        .map_err(|e| anyhow::anyhow!("--path {:?} is not a recorded absolute path: {e}", a.path))?;
    let good = crate::moment(&store, &a.good)?;
    let bad = crate::moment(&store, &a.bad)?;
    if good.seq >= bad.seq {
        bail!(
            "--good ({}, @seq:{}) is not before --bad ({}, @seq:{}); give the good moment first",
            a.good,
            good.seq,
            a.bad,
            bad.seq
        );
    }
    let history: Vec<Summary> = store
        .history(&file)?
        .into_iter()
        .filter(|s| s.seq > good.seq && s.seq <= bad.seq && changes_file(s))
        .collect();
    let mut rewrites = crate::grep::Rewrites::default();
    let candidates: Vec<Summary> = history
        .iter()
        .enumerate()
        .filter(|(i, s)| !rewrites.mid_rewrite(s, history.get(i + 1)) || a.each_event)
        .map(|(_, s)| s.clone())
        .collect();
    if candidates.is_empty() {
        bail!(
            "{file} did not change between --good and --bad: nothing to bisect (`diffkeeper log \
             --path {file}` shows its history)"
        );
    }
    let mut b = Bisect {
        store: &store,
        args: &a,
        file: file.clone(),
        scratch: tempfile::Builder::new()
            .prefix("diffkeeper-bisect-")
            .tempdir()?,
        tested: 0,
    };
    eprintln!(
        "diffkeeper: bisecting {} changes of {file} between {} and {}",
        candidates.len(),
        crate::offset_label(&span, good.mono_ns),
        crate::offset_label(&span, bad.mono_ns)
    );
    match b.test(good.seq, good.mono_ns)? {
        Verdict::Good => {}
        v => bail!(
            "the check says {v:?} at --good ({}): it must pass there; pick an earlier --good or \
             fix the check",
            a.good
        ),
    }
    let last = candidates.last().expect("not empty");
    match b.test(last.seq, last.time)? {
        Verdict::Bad => {}
        v => bail!(
            "the check says {v:?} after the last change of {file} before --bad ({}): the change \
             that broke it is not a change of this file; check another --path",
            a.bad
        ),
    }
    // Invariant: everything before `lo` (exclusive) is good, `hi` is bad.
    let mut pool: Vec<&Summary> = candidates.iter().collect();
    let (mut lo, mut hi) = (0usize, pool.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match b.test(pool[mid].seq, pool[mid].time)? {
            Verdict::Good => lo = mid + 1,
            Verdict::Bad => hi = mid,
            Verdict::Skip => {
                pool.remove(mid);
                hi -= 1;
            }
        }
    }
    let first_bad = pool[hi];
    let skipped = candidates.len() - pool.len();
    println!(
        "first bad change of {file}: {}  {}  @seq:{}\n  {}",
        crate::offset_label(&span, first_bad.time),
        format_wall(span.wall_of(first_bad.time)),
        first_bad.seq,
        crate::log::describe(first_bad)
    );
    let last_good = if hi > 0 {
        let before = pool[hi - 1];
        println!(
            "last good change before it: {}  @seq:{}",
            crate::offset_label(&span, before.time),
            before.seq
        );
        before.seq
    } else {
        good.seq
    };
    eprintln!(
        "diffkeeper: ran the check at {} of {} moments{}; see them with `diffkeeper diff \
         --state-dir={} --from=@seq:{} --to=@seq:{} --path={file}`",
        b.tested,
        candidates.len() + 1,
        if skipped > 0 {
            format!(" ({skipped} skipped)")
        } else {
            String::new()
        },
        a.state.state_dir.display(),
        last_good,
        first_bad.seq
    );
    Ok(())
}
