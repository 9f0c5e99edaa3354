//! Two recordings served by one probe, as on a node: one cgroup overruns a starved ring buffer,
//! the other writes only while the ring has room. The kernel's loss counts, read-back marks and
//! unsent names are each recording's own: the one that lost records gets the gap marker and is
//! healed with its own names, the other's history has no gap and none of the first's files.
//! On the real kernel (root and BTF needed; without them this fails, it does not skip).

use diffkeeper_capture::{Event as Captured, Probe, ProbeConfig, RingReader};
use diffkeeper_recorder::{monotonic_ns, wall_ns, Recorder, RecordingCgroup};
use diffkeeper_store::{EntryKind, MarkerKind, OpKind, RecordingInfo, Store, Writer};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Runs `script` with `sh` inside `cgroup`, to its end.
fn run_in(cgroup: &RecordingCgroup, script: &str) {
    let procs = cgroup.procs_handle().unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(script);
    // SAFETY: join_from_child only calls write(2).
    unsafe {
        cmd.pre_exec(move || RecordingCgroup::join_from_child(&procs));
    }
    assert!(cmd.status().unwrap().success(), "{script}");
}

/// One recording: its cgroup, its work dir (baselined while empty) and its recorder.
struct Recording {
    cgroup: RecordingCgroup,
    work: std::path::PathBuf,
    recorder: Recorder,
}

fn recording(base: &Path, name: &str, probe: &mut Probe) -> Recording {
    let cgroup = RecordingCgroup::create(&format!("dk-shared-{name}-{}", std::process::id()))
        .expect("a cgroup of its own (root and cgroup v2 needed)");
    let work = base.join(name);
    fs::create_dir(&work).unwrap();
    let state = base.join(format!("{name}-state"));
    let info = RecordingInfo {
        started_mono_ns: monotonic_ns(),
        started_wall_ns: wall_ns(),
        ..Default::default()
    };
    let writer = Writer::create(&state, info).unwrap();
    let mut recorder = Recorder::new(writer, "/".into(), vec![state.clone()], cgroup.id());
    probe.record_cgroup(cgroup.id(), cgroup.level()).unwrap();
    recorder.baseline(&work, monotonic_ns()).unwrap();
    for file in recorder.known_files().collect::<Vec<_>>() {
        probe.mark_known(file).unwrap();
    }
    Recording {
        cgroup,
        work,
        recorder,
    }
}

/// Empties the ring into the recorder of each event's cgroup, as the agent routes them.
fn drain_into(reader: &mut RingReader, probe: &mut Probe, recordings: &mut [&mut Recording]) {
    let mut events: Vec<Captured> = Vec::new();
    reader.drain(|ev| events.push(ev));
    for ev in events {
        if let Some(r) = recordings
            .iter_mut()
            .find(|r| r.cgroup.id() == ev.origin.cgroup)
        {
            r.recorder.apply(ev, probe).unwrap();
        }
    }
}

/// The files of the recording's last moment, by path, with their bytes.
fn files_at_end(state: &Path) -> (BTreeMap<String, Vec<u8>>, usize) {
    let store = Store::open(state).unwrap();
    let last = store.span().last_seq;
    let tree = store.tree_at(last).unwrap();
    let mut files = BTreeMap::new();
    for (path, entry) in &tree.entries {
        if let EntryKind::File { .. } = entry.kind {
            let data = store.read_content(entry.node, last).unwrap();
            files.insert(path.to_string(), data);
        }
    }
    let gaps = store
        .summaries(1, last)
        .map(Result::unwrap)
        .filter(|s| s.op.kind == OpKind::Marker && s.op.marker == Some(MarkerKind::Gap))
        .count();
    (files, gaps)
}

fn on_disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn one_recordings_losses_heal_it_alone_and_leave_the_others_history_whole() {
    let tmp = tempfile::tempdir().unwrap();
    // One page of ring, and nobody draining it while `lossy` writes: most of its records are
    // lost, and every one of its files must come back from its own unsent names and marks.
    let config = ProbeConfig {
        ring_bytes: 4096,
        ..ProbeConfig::default()
    };
    let mut probe = Probe::load(&config).unwrap();
    let mut reader = probe.take_reader().unwrap();
    let mut lossy = recording(tmp.path(), "lossy", &mut probe);
    let mut whole = recording(tmp.path(), "whole", &mut probe);

    let l = lossy.work.display();
    run_in(
        &lossy.cgroup,
        &format!("for i in $(seq 1 300); do echo \"lossy file $i\" > {l}/f$i; done"),
    );
    drain_into(&mut reader, &mut probe, &mut [&mut lossy, &mut whole]);
    // The ring is empty again: `whole` writes with room to spare.
    let w = whole.work.display();
    run_in(
        &whole.cgroup,
        &format!("echo one > {w}/one; echo two > {w}/two; echo three > {w}/three"),
    );
    drain_into(&mut reader, &mut probe, &mut [&mut lossy, &mut whole]);

    let lost = probe.cgroup_losses(lossy.cgroup.id()).unwrap().unwrap();
    let whole_lost = probe.cgroup_losses(whole.cgroup.id()).unwrap().unwrap();
    let node_wide = probe.counters().unwrap();
    eprintln!("lost: lossy {lost:?}, whole {whole_lost:?}, node-wide {node_wide:?}");
    assert!(lost.lost > 0, "a starved 4 KiB ring must lose records");
    assert_eq!(
        whole_lost.lost, 0,
        "the test's premise: `whole` lost nothing"
    );
    assert_eq!(
        node_wide.lost,
        lost.lost + whole_lost.lost,
        "every loss is some recording's"
    );

    // The recording that did not lose checks first: it used to take every unsent name.
    let now = monotonic_ns();
    whole.recorder.check_losses(&mut probe, now).unwrap();
    lossy.recorder.check_losses(&mut probe, now).unwrap();
    whole.recorder.finish_healing(&mut probe, now).unwrap();
    lossy.recorder.finish_healing(&mut probe, now).unwrap();
    let (whole_stats, lossy_stats) = (whole.recorder.stats(), lossy.recorder.stats());
    eprintln!("stats: whole {whole_stats:?}, lossy {lossy_stats:?}");
    assert_eq!(whole_stats.rescans, 0, "`whole` lost nothing to rescan for");
    assert_eq!(whole_stats.resyncs, 0, "`whole` read nothing back");
    assert!(lossy_stats.drops_healed > 0 || lossy_stats.resyncs > 0);
    for r in [lossy, whole] {
        r.recorder.into_writer().finish(monotonic_ns()).unwrap();
    }

    let (whole_files, whole_gaps) = files_at_end(&tmp.path().join("whole-state"));
    assert_eq!(
        whole_gaps, 0,
        "`whole` lost nothing: its history has no gap"
    );
    assert_eq!(
        whole_files,
        on_disk(&tmp.path().join("whole")),
        "`whole` holds its own three files, none of `lossy`'s"
    );
    let (lossy_files, lossy_gaps) = files_at_end(&tmp.path().join("lossy-state"));
    assert!(lossy_gaps > 0, "`lossy`'s losses are marked in its history");
    let want = on_disk(&tmp.path().join("lossy"));
    assert_eq!(want.len(), 300);
    assert_eq!(lossy_files, want, "`lossy` healed byte-exact at its end");
    assert!(
        probe.take_unsent_names(0).unwrap().is_empty(),
        "no name was left untagged"
    );
}

#[test]
fn the_recording_loop_commits_by_size_so_a_fast_writer_is_not_held_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut probe = Probe::load(&ProbeConfig::default()).unwrap();
    let mut reader = probe.take_reader().unwrap();
    let mut rec = recording(tmp.path(), "fast", &mut probe);
    const LIMIT: u64 = 64 << 10;
    rec.recorder = {
        let writer =
            Writer::create(&tmp.path().join("fast-state-2"), RecordingInfo::default()).unwrap();
        Recorder::new(writer, "/".into(), Vec::new(), rec.cgroup.id()).commit_past(LIMIT)
    };
    let w = rec.work.display();
    // 2 MiB in 4 KiB writes: 512 write records, each at most one chunk of payload.
    run_in(
        &rec.cgroup,
        &format!("dd if=/dev/urandom of={w}/big bs=4096 count=512 status=none"),
    );
    let mut events: Vec<Captured> = Vec::new();
    reader.drain(|ev| events.push(ev));
    let mut held = 0;
    let mut written = 0;
    for ev in events {
        if let diffkeeper_capture::Change::Write { data, .. } = &ev.change {
            written += data.len() as u64;
        }
        rec.recorder.record(ev, &mut probe).unwrap();
        held = held.max(rec.recorder.writer().uncommitted_payload_bytes());
    }
    eprintln!("{written} bytes recorded, at most {held} held uncommitted");
    assert_eq!(
        written,
        2 << 20,
        "every byte was captured (a 64 MiB ring holds 2 MiB)"
    );
    assert!(
        held < LIMIT + 4096,
        "at most the commit size plus one write is held: {held}"
    );
}
