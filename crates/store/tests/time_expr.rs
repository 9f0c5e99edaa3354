//! Naming moments: parsing, resolving onto the log, and errors a person can act on.

use diffkeeper_store::{
    Event, Op, RecPath, RecordingInfo, Store, StoreError, TimeError, TimeExpr, Writer,
};
use std::time::Duration;

const SEC: u64 = 1_000_000_000;
const MONO0: u64 = 7 * SEC;
/// 2026-11-25T10:00:00Z
const WALL0: i128 = 1_795_600_800 * 1_000_000_000;

fn parse(s: &str) -> TimeExpr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn parses_every_form() {
    assert_eq!(parse("2m14s"), TimeExpr::Offset(Duration::from_secs(134)));
    assert_eq!(parse("0s"), TimeExpr::Offset(Duration::ZERO));
    assert_eq!(parse("0"), TimeExpr::Offset(Duration::ZERO));
    assert_eq!(parse("1.5s"), TimeExpr::Offset(Duration::from_millis(1500)));
    assert_eq!(parse("-5s"), TimeExpr::BeforeEnd(Duration::from_secs(5)));
    assert_eq!(parse("end"), TimeExpr::End);
    assert_eq!(parse("start"), TimeExpr::Start);
    assert_eq!(parse("@seq:12"), TimeExpr::AfterSeq(12));
    assert_eq!(
        parse("2026-11-25T10:00:03.250Z"),
        TimeExpr::Absolute {
            wall_ns: WALL0 + 3_250_000_000
        }
    );
    assert_eq!(
        parse("2026-11-25T11:00:03.250+01:00"),
        TimeExpr::Absolute {
            wall_ns: WALL0 + 3_250_000_000
        }
    );
    // What is shown in messages reads back as the same moment.
    for s in [
        "2m14s",
        "-5s",
        "1.5s",
        "end",
        "start",
        "@seq:3",
        "2026-11-25T10:00:03.25Z",
    ] {
        assert_eq!(parse(&parse(s).to_string()), parse(s), "{s}");
    }
}

#[test]
fn unparseable_input_says_what_is_accepted() {
    for bad in [
        "2mm",
        "",
        "@seq:x",
        "2026-13-45T10:00:00Z",
        "yesterday",
        "-",
        "--5s",
    ] {
        let err = bad.parse::<TimeExpr>().unwrap_err();
        assert!(
            matches!(err, TimeError::Unparseable { .. }),
            "{bad}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot read time {bad:?}: expected an offset like 2m14s"
            )),
            "{msg}"
        );
        for accepted in [
            "2026-11-25T10:00:03.250Z",
            "-5s (before the end)",
            "\"end\"",
            "@seq:N",
        ] {
            assert!(msg.contains(accepted), "{msg} lacks {accepted}");
        }
    }
}

/// Events at 1s, 2s, ... 100s after the start; finished at 2m31s.
fn recording(dir: &std::path::Path, finish: bool) {
    let info = RecordingInfo {
        started_wall_ns: WALL0,
        started_mono_ns: MONO0,
        ..Default::default()
    };
    let mut w = Writer::create(dir, info).unwrap();
    let node = w.new_node();
    let path = RecPath::normalize(b"/f").unwrap();
    w.append(Event {
        time: MONO0 + SEC,
        process: None,
        op: Op::Create {
            node,
            path,
            mode: 0o644,
        },
    })
    .unwrap();
    for i in 2..=100u64 {
        let op = Op::Write {
            node,
            offset: i,
            data: vec![i as u8],
        };
        w.append(Event {
            time: MONO0 + i * SEC,
            process: None,
            op,
        })
        .unwrap();
    }
    if finish {
        w.finish(MONO0 + 151 * SEC).unwrap();
    } else {
        w.flush().unwrap();
    }
}

fn at(store: &Store, s: &str) -> (u64, u64) {
    let p = store
        .resolve(&parse(s))
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    (p.seq, (p.mono_ns - MONO0) / 1_000_000)
}

#[test]
fn resolves_onto_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    recording(tmp.path(), true);
    let store = Store::open(tmp.path()).unwrap();
    let span = store.span();
    assert_eq!(
        (span.first_seq, span.last_seq, span.finished),
        (1, 100, true)
    );
    assert_eq!(span.end_mono_ns, MONO0 + 151 * SEC);

    assert_eq!(at(&store, "start"), (0, 0));
    assert_eq!(at(&store, "0s"), (0, 0));
    assert_eq!(at(&store, "999ms"), (0, 999));
    assert_eq!(at(&store, "1s"), (1, 1000));
    assert_eq!(at(&store, "1.5s"), (1, 1500));
    assert_eq!(at(&store, "1m"), (60, 60_000));
    assert_eq!(at(&store, "2026-11-25T10:00:03.250Z"), (3, 3250));
    assert_eq!(at(&store, "-51s"), (100, 100_000));
    assert_eq!(at(&store, "-51.5s"), (99, 99_500));
    assert_eq!(at(&store, "-2m31s"), (0, 0));
    assert_eq!(at(&store, "end"), (100, 151_000));
    // Exactly at the end is inside; a little after the end means the end.
    assert_eq!(at(&store, "2m31s"), (100, 151_000));
    assert_eq!(at(&store, "2m31.9s"), (100, 151_000));
    assert_eq!(at(&store, "@seq:50"), (50, 50_000));
    assert_eq!(at(&store, "@seq:0"), (0, 0));
}

#[test]
fn out_of_range_names_the_recording_extent() {
    let tmp = tempfile::tempdir().unwrap();
    recording(tmp.path(), true);
    let store = Store::open(tmp.path()).unwrap();
    let extent = "it ran from 2026-11-25T10:00:00Z to 2026-11-25T10:02:31Z (2m 31s)";
    let err = |s: &str| store.resolve(&parse(s)).unwrap_err();

    assert_eq!(
        err("10m").to_string(),
        format!("time 10m is outside the recording: {extent}")
    );
    for s in [
        "2m33s",
        "-2m32s",
        "-1h",
        "2026-11-25T09:59:59Z",
        "2026-11-25T10:05:00Z",
    ] {
        let e = err(s);
        assert!(matches!(e, TimeError::OutOfRange { .. }), "{s}: {e:?}");
        assert!(e.to_string().ends_with(extent), "{s}: {e}");
    }
    let e = err("@seq:101");
    assert!(
        matches!(e, TimeError::SeqOutOfRange { last_seq: 100, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "time @seq:101 is outside the recording: its events are @seq:1 to @seq:100"
        ),
        "{msg}"
    );
    assert!(msg.ends_with(extent), "{msg}");
    // Wrapped in a StoreError the message is unchanged.
    assert_eq!(
        StoreError::from(err("10m")).to_string(),
        err("10m").to_string()
    );
}

#[test]
fn unfinished_recording_ends_at_its_last_event() {
    let tmp = tempfile::tempdir().unwrap();
    recording(tmp.path(), false);
    let store = Store::open(tmp.path()).unwrap();
    let span = store.span();
    assert!(!span.finished);
    assert_eq!(span.end_mono_ns, MONO0 + 100 * SEC);
    assert_eq!(at(&store, "end"), (100, 100_000));
    assert_eq!(at(&store, "-1s"), (99, 99_000));
    assert_eq!(at(&store, "1m40.5s"), (100, 100_000));
    assert!(store.resolve(&parse("1m42s")).is_err());
}

#[test]
fn times_going_backwards_are_clamped() {
    let tmp = tempfile::tempdir().unwrap();
    let info = RecordingInfo {
        started_wall_ns: WALL0,
        started_mono_ns: MONO0,
        ..Default::default()
    };
    let mut w = Writer::create(tmp.path(), info).unwrap();
    let marker = |t: u64| Event {
        time: t,
        process: None,
        op: Op::Marker {
            kind: diffkeeper_store::MarkerKind::Note,
            detail: String::new(),
        },
    };
    for t in [5, 9, 8, 12, 3] {
        w.append(marker(MONO0 + t)).unwrap();
    }
    w.finish(MONO0).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let times: Vec<u64> = store
        .events(1, 5)
        .map(|e| e.unwrap().1.time - MONO0)
        .collect();
    assert_eq!(times, [5, 9, 9, 12, 12]);
    // The end is never before the last event.
    assert_eq!(store.span().end_mono_ns, MONO0 + 12);
}
