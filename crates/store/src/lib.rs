//! Time-indexed change store: an ordered, durable log of file operations that rebuilds any moment byte-exactly.
//!
//! A recording lives in a state dir: `LOCK` (flock + owner pid), `db/` (one sled tree: the
//! index; see [`codec`] for the key layout) and, since format 4, `segments/NNNNNN.seg` (the
//! data bytes, compressed, in checksummed blocks; see [`segment`]); while a recorder that
//! serves readers runs, `live.sock` (see [`live`]). [`Writer`] appends events in atomic batches; [`Store`] is the
//! read-only view that answers "what did the tree look like at T".

mod codec;
mod content;
mod delta;
mod error;
mod live;
mod lock;
pub mod model;
mod namespace;
mod reader;
mod records;
mod segment;
mod summary;
mod time;
mod verify;
mod writer;

pub use content::ContentReader;
pub use error::StoreError;
pub use live::{LiveServer, LIVE_SOCKET};
pub use model::*;
pub use reader::Store;
pub use records::ReadStats;
pub use summary::{Change, ChangeKind, OpKind, OpSummary, Summary};
pub use time::{format_duration, format_wall, Point, Span, TimeError, TimeExpr};
pub use verify::{Damage, SegmentUse, Verification};
pub use writer::{Writer, WriterOptions, WriterStats};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The paths a recording was limited to, as globs on the recorded path (`/var/log/**`): the
/// history holds nothing of a path outside it, and readers say so. Written once, after
/// creation; a recording without one recorded every path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Scope {
    /// Only paths matching one of these (or lying below a match); empty means every path.
    pub include: Vec<String>,
    /// Never paths matching one of these (or lying below a match), even if included.
    pub exclude: Vec<String>,
}

impl Scope {
    /// Whether this scope records every path.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

impl std::fmt::Display for Scope {
    /// "only /var/log/**, not /tmp/**": what a person reads beside an export.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_everything() {
            return f.write_str("every path");
        }
        if !self.include.is_empty() {
            write!(f, "only {}", self.include.join(", "))?;
        }
        if !self.exclude.is_empty() {
            let sep = if self.include.is_empty() { "" } else { "; " };
            write!(f, "{sep}not {}", self.exclude.join(", "))?;
        }
        Ok(())
    }
}

/// What was recorded, where and when; written once when the recording is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RecordingInfo {
    pub command: Vec<String>,
    /// Wall clock at the start, ns since the Unix epoch.
    pub started_wall_ns: i128,
    /// CLOCK_MONOTONIC at the start: the clock of `Event::time`.
    pub started_mono_ns: u64,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
}

const DB_DIR: &str = "db";

/// How long to wait for sled's own file lock once we hold `LOCK`.
const DB_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the database; the caller must hold the dir's `LOCK`.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir.join(DB_DIR))
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Durability points are ours (`Writer::flush`), not a background timer's.
        .flush_every_ms(None);
    let deadline = Instant::now() + DB_LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled releases its file lock only when its last background thread lets go of a
            // dropped database, a moment after the drop; since we hold `LOCK`, nobody else can.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() > deadline {
                    return Err(sled::Error::Io(e).into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Indexes larger than this (only format-3 stores, which kept the data in sled, grow so big)
/// are opened in place rather than copied.
const MAX_INDEX_COPY_BYTES: u64 = 1 << 30;

/// A private copy of `dir`'s index for a reader: sled has no read-only mode and tidies its files
/// when it opens them, so reading in place would change the recording (and fail on a read-only
/// copy). Since format 4 the index is small: a few MiB per GiB recorded. None when the index is
/// too large to copy (old stores), which are then opened in place.
fn copy_index(dir: &Path) -> Result<Option<tempfile::TempDir>, StoreError> {
    let source = dir.join(DB_DIR);
    if tree_bytes(&source)? > MAX_INDEX_COPY_BYTES {
        tracing::warn!(
            dir = %dir.display(),
            "the index is too large to copy (a store written before format 4): reading it in place"
        );
        return Ok(None);
    }
    let copy = tempfile::Builder::new()
        .prefix("diffkeeper-index-")
        .tempdir()?;
    copy_tree(&source, &copy.path().join(DB_DIR))?;
    Ok(Some(copy))
}

fn tree_bytes(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Refuses (before touching anything) a dir that holds no recording, so that opening a mistyped
/// path does not create an empty database there.
fn require_recording_dir(dir: &Path) -> Result<(), StoreError> {
    let not_a_recording = |reason: &str| StoreError::NotARecording {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    };
    if !dir.is_dir() {
        return Err(not_a_recording("no such directory"));
    }
    if !dir.join(DB_DIR).is_dir() {
        return Err(not_a_recording("it has no db/ subdirectory"));
    }
    Ok(())
}

/// Metadata every reader and resuming writer starts from.
struct Meta {
    info: RecordingInfo,
    scope: Scope,
    format: u32,
    committed: u64,
    next_node: u64,
    end_mono_ns: Option<u64>,
}

fn read_meta(dir: &Path, db: &sled::Db) -> Result<Meta, StoreError> {
    let Some(info) = db.get(codec::META_INFO)? else {
        return Err(StoreError::NotARecording {
            dir: dir.to_path_buf(),
            reason: "its database holds no recording".into(),
        });
    };
    let info: RecordingInfo = codec::decode("the recording info", &info)?;
    let u64_of = |key: &[u8], what: &str| -> Result<Option<u64>, StoreError> {
        db.get(key)?
            .map(|v| codec::decode_u64(what, &v))
            .transpose()
    };
    let format = u64_of(codec::META_FORMAT, "the format version")?.unwrap_or(0);
    let readable = u64::from(codec::OLDEST_READABLE_FORMAT)..=u64::from(codec::FORMAT_VERSION);
    if !readable.contains(&format) {
        return Err(StoreError::UnsupportedFormat {
            found: format as u32,
            supported: codec::FORMAT_VERSION,
        });
    }
    let scope = match db.get(codec::META_SCOPE)? {
        Some(raw) => codec::decode("the recording's scope", &raw)?,
        None => Scope::default(),
    };
    Ok(Meta {
        info,
        scope,
        format: format as u32,
        committed: u64_of(codec::META_COMMITTED, "the committed seq")?.unwrap_or(0),
        next_node: u64_of(codec::META_NEXT_NODE, "the next node id")?.unwrap_or(1),
        end_mono_ns: u64_of(codec::META_END, "the end time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format-3 fixture (tests/format3_fixture.rs) must exercise every old decoding path
    /// that format 4 keeps: delta payloads, whole and patch keyframes, checkpoints.
    #[test]
    fn format3_fixture_holds_every_old_record_kind() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format3");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(DB_DIR)).unwrap();
        for name in ["conf", "db"] {
            std::fs::copy(
                fixture.join(DB_DIR).join(name),
                tmp.path().join(DB_DIR).join(name),
            )
            .unwrap();
        }
        let db = open_db(tmp.path(), 1 << 20).unwrap();
        assert_eq!(read_meta(tmp.path(), &db).unwrap().format, 3);
        let (mut deltas, mut whole_keyframes, mut patch_keyframes, mut checkpoints) = (0, 0, 0, 0);
        for item in db.iter() {
            let (key, value) = item.unwrap();
            match key[0] {
                b'p' if value[0] == 2 => deltas += 1,
                b'k' => {
                    let kf: codec::Keyframe = codec::decode("a keyframe", &value).unwrap();
                    if kf.base.is_some() {
                        patch_keyframes += 1;
                    } else {
                        whole_keyframes += 1;
                    }
                }
                b'c' => checkpoints += 1,
                _ => {}
            }
        }
        assert!(deltas > 0, "no delta payloads");
        assert!(whole_keyframes > 0, "no whole keyframes");
        assert!(patch_keyframes > 0, "no patch keyframes");
        assert!(checkpoints > 0, "no checkpoints");
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused_naming_its_version() {
        let tmp = tempfile::tempdir().unwrap();
        Writer::create(tmp.path(), RecordingInfo::default())
            .unwrap()
            .finish(1)
            .unwrap();
        {
            let db = open_db(tmp.path(), 1 << 20).unwrap();
            db.insert(codec::META_FORMAT, &codec::u64_value(9)).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("format 9") && err.contains("newer"), "{err}");
        let err = Writer::resume(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}
