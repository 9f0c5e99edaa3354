//! Moments a person can name ("2m14s", "-5s", an RFC3339 time, "end", "@seq:N") and how they map
//! onto the recording's monotonic clock and event log.

use crate::model::Seq;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// After the end, this much is still taken to mean "the end": people type the duration they saw.
const END_SLACK_NS: u64 = 1_000_000_000;

const ACCEPTED: &str = "expected an offset like 2m14s, an RFC3339 time like \
                        2026-11-25T10:00:03.250Z, -5s (before the end), \"start\", \"end\", or @seq:N";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeExpr {
    /// Since the start of the recording: "2m14s", "0s", "1.5s".
    Offset(Duration),
    /// A wall-clock moment: RFC3339 with any offset and fractions.
    Absolute {
        wall_ns: i128,
    },
    /// Before the end: "-5s".
    BeforeEnd(Duration),
    End,
    Start,
    /// Right after event N: "@seq:N".
    AfterSeq(Seq),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("cannot read time {input:?}: {ACCEPTED} ({reason})")]
    Unparseable { input: String, reason: String },

    #[error(
        "time {input} is outside the recording: it ran from {start_wall} to {end_wall} ({duration})"
    )]
    OutOfRange {
        input: String,
        start_wall: String,
        end_wall: String,
        duration: String,
    },

    #[error(
        "time {input} is outside the recording: its events are @seq:1 to @seq:{last_seq}; it ran \
         from {start_wall} to {end_wall} ({duration})"
    )]
    SeqOutOfRange {
        input: String,
        last_seq: Seq,
        start_wall: String,
        end_wall: String,
        duration: String,
    },

    #[error(
        "cannot place time {input} in the recording because the store could not be read: {reason}"
    )]
    Unreadable { input: String, reason: String },
}

/// A resolved moment: the state right after event `seq` (0 = before any event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub seq: Seq,
    pub mono_ns: u64,
}

/// Extent of a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// 1 when there are events, 0 when there are none.
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub start_mono_ns: u64,
    /// When the recorder finished, or the last event's time if it has not (yet).
    pub end_mono_ns: u64,
    pub started_wall_ns: i128,
    pub finished: bool,
}

impl Span {
    pub fn wall_of(&self, mono_ns: u64) -> i128 {
        self.started_wall_ns + (i128::from(mono_ns) - i128::from(self.start_mono_ns))
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_mono_ns.saturating_sub(self.start_mono_ns))
    }
}

/// Formats wall-clock ns since the epoch as RFC3339 UTC (fractions only when present).
pub fn format_wall(wall_ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(wall_ns)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{wall_ns}ns since the epoch"))
}

/// Formats a duration to the millisecond, e.g. "2m 31s 250ms".
pub fn format_duration(d: Duration) -> String {
    let ms = Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64);
    humantime::format_duration(ms).to_string()
}

impl FromStr for TimeExpr {
    type Err = TimeError;

    fn from_str(input: &str) -> Result<Self, TimeError> {
        let s = input.trim();
        let unparseable = |reason: String| TimeError::Unparseable {
            input: input.to_string(),
            reason,
        };
        if s.eq_ignore_ascii_case("start") {
            return Ok(TimeExpr::Start);
        }
        if s.eq_ignore_ascii_case("end") {
            return Ok(TimeExpr::End);
        }
        if let Some(n) = s.strip_prefix("@seq:") {
            return n
                .parse()
                .map(TimeExpr::AfterSeq)
                .map_err(|_| unparseable(format!("{n:?} is not an event number")));
        }
        if let Some(rest) = s.strip_prefix('-') {
            return humantime::parse_duration(rest.trim())
                .map(TimeExpr::BeforeEnd)
                .map_err(|e| unparseable(e.to_string()));
        }
        let b = s.as_bytes();
        let looks_like_date =
            b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
        if looks_like_date {
            return OffsetDateTime::parse(s, &Rfc3339)
                .map(|t| TimeExpr::Absolute {
                    wall_ns: t.unix_timestamp_nanos(),
                })
                .map_err(|e| unparseable(e.to_string()));
        }
        humantime::parse_duration(s.strip_prefix('+').unwrap_or(s))
            .map(TimeExpr::Offset)
            .map_err(|e| unparseable(e.to_string()))
    }
}

impl fmt::Display for TimeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compact = |d: &Duration| humantime::format_duration(*d).to_string().replace(' ', "");
        match self {
            TimeExpr::Offset(d) if d.is_zero() => f.write_str("0s"),
            TimeExpr::Offset(d) => f.write_str(&compact(d)),
            TimeExpr::BeforeEnd(d) => write!(f, "-{}", compact(d)),
            TimeExpr::Absolute { wall_ns } => f.write_str(&format_wall(*wall_ns)),
            TimeExpr::End => f.write_str("end"),
            TimeExpr::Start => f.write_str("start"),
            TimeExpr::AfterSeq(n) => write!(f, "@seq:{n}"),
        }
    }
}

/// What `resolve` needs to know about where each event lies in time.
pub(crate) trait EventTimes {
    /// Time of event `seq` (1..=last).
    fn time_of(&self, seq: Seq) -> Result<u64, String>;
}

/// Maps `expr` onto the recording described by `span`.
pub(crate) fn resolve(
    span: &Span,
    expr: &TimeExpr,
    times: &dyn EventTimes,
) -> Result<Point, TimeError> {
    let start = span.start_mono_ns;
    let end = span.end_mono_ns.max(start);
    let out_of_range = || TimeError::OutOfRange {
        input: expr.to_string(),
        start_wall: format_wall(span.started_wall_ns),
        end_wall: format_wall(span.wall_of(end)),
        duration: format_duration(span.duration()),
    };
    let unreadable = |reason| TimeError::Unreadable {
        input: expr.to_string(),
        reason,
    };
    let within = |mono: Option<u64>| match mono {
        Some(m) if m <= end => Ok(m),
        Some(m) if m - end <= END_SLACK_NS => Ok(end),
        _ => Err(out_of_range()),
    };
    let mono = match expr {
        TimeExpr::Start => start,
        TimeExpr::End => {
            return Ok(Point {
                seq: span.last_seq,
                mono_ns: end,
            })
        }
        TimeExpr::Offset(d) => within(nanos(d).and_then(|ns| start.checked_add(ns)))?,
        TimeExpr::BeforeEnd(d) => match nanos(d) {
            Some(ns) if ns <= end - start => end - ns,
            _ => return Err(out_of_range()),
        },
        TimeExpr::Absolute { wall_ns } => {
            let since_start = wall_ns - span.started_wall_ns;
            let mono = u64::try_from(since_start)
                .ok()
                .and_then(|ns| start.checked_add(ns));
            within(mono)?
        }
        TimeExpr::AfterSeq(seq) => {
            if *seq > span.last_seq {
                return Err(TimeError::SeqOutOfRange {
                    input: expr.to_string(),
                    last_seq: span.last_seq,
                    start_wall: format_wall(span.started_wall_ns),
                    end_wall: format_wall(span.wall_of(end)),
                    duration: format_duration(span.duration()),
                });
            }
            let mono_ns = if *seq == 0 {
                start
            } else {
                times.time_of(*seq).map_err(unreadable)?
            };
            return Ok(Point { seq: *seq, mono_ns });
        }
    };
    let seq = last_event_at_or_before(span.last_seq, mono, times).map_err(unreadable)?;
    Ok(Point { seq, mono_ns: mono })
}

fn nanos(d: &Duration) -> Option<u64> {
    u64::try_from(d.as_nanos()).ok()
}

/// Binary search over the log (times never decrease along it): O(log n) header reads.
fn last_event_at_or_before(last: Seq, mono: u64, times: &dyn EventTimes) -> Result<Seq, String> {
    let (mut lo, mut hi) = (0, last); // invariant: answer in lo..=hi; events 1..=lo are <= mono
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if times.time_of(mid)? <= mono {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}
