//! One file that carries a recording: a state dir packed into a compressed, checksummed archive,
//! and unpacked back only if every byte checks.
//!
//! A CI job that failed uploads one file, and the person chasing the failure downloads it and
//! runs `diffkeeper unpack` then `export`/`log`/`diff` as if the recording had been made on
//! their machine. A pack is a zstd-compressed tar:
//!
//! | entry                   | what                                                        |
//! |-------------------------|-------------------------------------------------------------|
//! | `recording/...`         | the state dir's directories and files (never `LOCK`, `live.sock`)|
//! | `DIFFKEEPER-PACK.json`  | last: [`Manifest`] — format, what was recorded, a SHA-256 of every file |
//!
//! The manifest comes last so that packing reads every file once; unpacking hashes as it writes
//! and compares at the end. A pack cut short (an interrupted upload) therefore has no manifest
//! and is refused as such, and nothing is put in place until everything checked.

#![warn(missing_docs)]

use diffkeeper_store::{RecordingInfo, Store, StoreError};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The pack layout this build writes and reads.
pub const PACK_FORMAT: u32 = 1;
/// Name of the manifest entry, the last in every pack.
pub const MANIFEST_NAME: &str = "DIFFKEEPER-PACK.json";
const ROOT: &str = "recording";
/// The store's own lock file: a property of a live dir, not of the recording.
const LOCK_FILE: &str = "LOCK";
/// A trace is written once and read rarely; level 9 costs little more than 3 on stores that are
/// already mostly zstd blocks.
const ZSTD_LEVEL: i32 = 9;

/// What a pack says about itself and its contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`PACK_FORMAT`] of the build that wrote it.
    pub format: u32,
    /// The recorded command and when it started, so that a pack can be told apart unopened.
    pub recording: RecordingInfo,
    /// Every file of the state dir, by its path below the dir ('/'-separated).
    pub files: BTreeMap<String, FileSum>,
}

/// Size and digest of one packed file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// What packing or unpacking moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackSummary {
    /// Files in the recording.
    pub files: usize,
    /// Their bytes, uncompressed.
    pub bytes: u64,
}

/// What can go wrong; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Opening the recording to pack it failed (not a recording, locked by a live recorder, ...).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The recording is still being written: its open segment grows while it would be packed.
    #[error(
        "{} is still being recorded (recorder pid {pid}); pack it once that recorder has \
         finished",
        dir.display()
    )]
    Live {
        /// The recorder's pid.
        pid: u32,
        /// The state dir.
        dir: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },

    /// The state dir holds something a recorder never writes there.
    #[error(
        "{} is {what}, which a recording never holds; pack only a state dir that `diffkeeper \
         record` wrote",
        path.display()
    )]
    UnexpectedFile {
        /// The offending path.
        path: PathBuf,
        /// What it is (a symlink, a device, ...).
        what: &'static str,
    },

    /// The input does not decode as a zstd tar.
    #[error(
        "this is not a diffkeeper pack, or it is damaged ({0}); make one with `diffkeeper pack`"
    )]
    NotAPack(String),

    /// The archive ended without its manifest.
    #[error(
        "the pack ends before its manifest: it was cut short (an interrupted upload or \
         download?); fetch or copy it again"
    )]
    Truncated,

    /// An entry whose name or kind could escape the destination or that no pack holds.
    #[error("the pack holds an entry diffkeeper never writes ({0}); it was not made by `diffkeeper pack`")]
    ForeignEntry(String),

    /// A file's bytes differ from what the manifest says.
    #[error(
        "the pack is damaged: {path} has SHA-256 {found} and {found_bytes} bytes, its manifest \
         says {expected} and {expected_bytes} bytes; fetch or copy it again"
    )]
    Checksum {
        /// The file, below the state dir.
        path: String,
        /// What the manifest says.
        expected: String,
        /// Its size in the manifest.
        expected_bytes: u64,
        /// What was unpacked.
        found: String,
        /// Its size as unpacked.
        found_bytes: u64,
    },

    /// The manifest lists files the pack does not hold, or the other way round.
    #[error("the pack is damaged: {0}; fetch or copy it again")]
    Incomplete(String),

    /// Written by a newer build.
    #[error(
        "the pack was written by a newer diffkeeper (pack format {found}, this build reads \
         {PACK_FORMAT}); unpack it with a newer diffkeeper"
    )]
    NewerFormat {
        /// The format it declares.
        found: u32,
    },

    /// Unpacking would overwrite something.
    #[error(
        "{} exists and is not an empty directory; unpack into a new --state-dir",
        path.display()
    )]
    DestinationInUse {
        /// The destination given.
        path: PathBuf,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Passes bytes through while hashing and counting them.
struct Hashing<R> {
    inner: R,
    context: Context,
    bytes: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            context: Context::new(&SHA256),
            bytes: 0,
        }
    }

    fn sum(self) -> FileSum {
        FileSum {
            bytes: self.bytes,
            sha256: hex(self.context.finish().as_ref()),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The state dir's directories and files below `dir`, sorted, as '/'-separated relative paths.
fn walk(
    root: &Path,
    rel: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<String>,
) -> Result<(), PackError> {
    let here = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(&here).map_err(io_at(&here))? {
        let entry = entry.map_err(io_at(&here))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| PackError::UnexpectedFile {
                path: entry.path(),
                what: "a name that is not UTF-8",
            })?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // A live recorder's socket (or one a killed recorder left) is no part of the recording.
        if child_rel == LOCK_FILE || child_rel == diffkeeper_store::LIVE_SOCKET {
            continue;
        }
        let path = root.join(&child_rel);
        // Never followed: a recording holds no links, and following one would pack whatever it
        // points at.
        let kind = fs::symlink_metadata(&path)
            .map_err(io_at(&path))?
            .file_type();
        if kind.is_dir() {
            dirs.push(child_rel.clone());
            walk(root, &child_rel, dirs, files)?;
        } else if kind.is_file() {
            files.push(child_rel);
        } else {
            return Err(PackError::UnexpectedFile {
                path,
                what: if kind.is_symlink() {
                    "a symlink"
                } else {
                    "not a regular file or directory"
                },
            });
        }
    }
    Ok(())
}

/// Packs the recording in `state_dir` into `out`. The recording is held open (and so locked)
/// throughout, so a recorder cannot change it midway; a live one is refused by the lock.
pub fn pack<W: Write>(state_dir: &Path, out: W) -> Result<PackSummary, PackError> {
    let store = Store::open(state_dir)?;
    if let Some(pid) = store.live_recorder() {
        return Err(PackError::Live {
            pid,
            dir: state_dir.to_path_buf(),
        });
    }
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    walk(state_dir, "", &mut dirs, &mut files)?;

    let encoder = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(io_at(state_dir))?;
    let mut encoder = encoder;
    encoder.include_checksum(true).map_err(io_at(state_dir))?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o700);
        header.set_size(0);
        header.set_mtime(0);
        tar.append_data(&mut header, format!("{ROOT}/{dir}/"), io::empty())
            .map_err(io_at(&state_dir.join(dir)))?;
    }
    let mut sums = BTreeMap::new();
    let mut total = 0;
    for rel in &files {
        let path = state_dir.join(rel);
        let file = File::open(&path).map_err(io_at(&path))?;
        let len = file.metadata().map_err(io_at(&path))?.len();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o600);
        header.set_size(len);
        header.set_mtime(0);
        // Exactly `len` bytes: a file that grew meanwhile would otherwise corrupt the tar.
        let mut hashing = Hashing::new(file.take(len));
        tar.append_data(&mut header, format!("{ROOT}/{rel}"), &mut hashing)
            .map_err(io_at(&path))?;
        let sum = hashing.sum();
        if sum.bytes != len {
            return Err(PackError::Io {
                path,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "shrank while packed"),
            });
        }
        total += len;
        sums.insert(rel.clone(), sum);
    }
    let manifest = Manifest {
        format: PACK_FORMAT,
        recording: store.info().clone(),
        files: sums,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_size(json.len() as u64);
    header.set_mtime(0);
    tar.append_data(&mut header, MANIFEST_NAME, json.as_slice())
        .map_err(io_at(state_dir))?;
    let encoder = tar.into_inner().map_err(io_at(state_dir))?;
    encoder.finish().map_err(io_at(state_dir))?;
    drop(store);
    Ok(PackSummary {
        files: files.len(),
        bytes: total,
    })
}

/// The path below the state dir that a `recording/...` entry names, refusing anything that
/// could land outside it.
fn entry_rel(name: &Path) -> Result<Option<String>, PackError> {
    let foreign = || PackError::ForeignEntry(format!("{}", name.display()));
    let mut parts = name.components();
    match parts.next() {
        Some(Component::Normal(first)) if first == ROOT => {}
        _ => return Err(foreign()),
    }
    let mut rel = Vec::new();
    for part in parts {
        match part {
            Component::Normal(p) => rel.push(p.to_str().ok_or_else(foreign)?.to_string()),
            _ => return Err(foreign()),
        }
    }
    Ok((!rel.is_empty()).then(|| rel.join("/")))
}

/// Removes the staging dir unless unpacking got as far as putting it in place.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Unpacks a pack read from `input` into the new state dir `dest` (which must not exist, or be
/// an empty directory). Everything is written into a private staging dir beside `dest`, checked
/// against the manifest, opened as a recording, and only then renamed into place.
pub fn unpack<R: Read>(input: R, dest: &Path) -> Result<(Manifest, PackSummary), PackError> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(PackError::DestinationInUse {
                    path: dest.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) if dest.exists() => {
            return Err(PackError::DestinationInUse {
                path: dest.to_path_buf(),
            })
        }
        Err(e) => return Err(io_at(dest)(e)),
    }
    let name = dest
        .file_name()
        .ok_or_else(|| PackError::DestinationInUse {
            path: dest.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    let staging_dir = parent.join(format!(".{name}.unpacking-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging_dir);
    create_private_dir(&staging_dir)?;
    let mut staging = Staging(Some(staging_dir.clone()));

    let decoder = zstd::Decoder::new(input).map_err(|e| PackError::NotAPack(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    let mut found = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let entries = archive
        .entries()
        .map_err(|e| PackError::NotAPack(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(decode_error)?;
        if manifest.is_some() {
            return Err(PackError::ForeignEntry(
                "an entry after the manifest".to_string(),
            ));
        }
        let name = entry.path().map_err(decode_error)?.into_owned();
        if name == Path::new(MANIFEST_NAME) {
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map_err(decode_error)?;
            let parsed: Manifest = serde_json::from_slice(&json)
                .map_err(|e| PackError::NotAPack(format!("its manifest does not parse: {e}")))?;
            if parsed.format > PACK_FORMAT {
                return Err(PackError::NewerFormat {
                    found: parsed.format,
                });
            }
            manifest = Some(parsed);
            continue;
        }
        let Some(rel) = entry_rel(&name)? else {
            continue;
        };
        let target = staging_dir.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => create_private_dir(&target)?,
            tar::EntryType::Regular => {
                if rel == LOCK_FILE {
                    return Err(PackError::ForeignEntry(rel));
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_at(&target))?;
                let mut hashing = Hashing::new(&mut entry);
                io::copy(&mut hashing, &mut file).map_err(decode_error)?;
                file.sync_all().map_err(io_at(&target))?;
                found.insert(rel, hashing.sum());
            }
            other => {
                return Err(PackError::ForeignEntry(format!(
                    "{} of type {other:?}",
                    name.display()
                )))
            }
        }
    }
    let manifest = manifest.ok_or(PackError::Truncated)?;
    for (path, want) in &manifest.files {
        let Some(got) = found.get(path) else {
            return Err(PackError::Incomplete(format!(
                "{path} is in the manifest but not in the pack"
            )));
        };
        if got != want {
            return Err(PackError::Checksum {
                path: path.clone(),
                expected: want.sha256.clone(),
                expected_bytes: want.bytes,
                found: got.sha256.clone(),
                found_bytes: got.bytes,
            });
        }
    }
    if let Some(extra) = found.keys().find(|p| !manifest.files.contains_key(*p)) {
        return Err(PackError::Incomplete(format!(
            "{extra} is in the pack but not in its manifest"
        )));
    }
    // It must open as what it claims to be before it takes the destination's name.
    drop(Store::open(&staging_dir)?);
    if dest.exists() {
        fs::remove_dir(dest).map_err(io_at(dest))?;
    }
    fs::rename(&staging_dir, dest).map_err(io_at(dest))?;
    staging.0 = None;
    let summary = PackSummary {
        files: found.len(),
        bytes: found.values().map(|s| s.bytes).sum(),
    };
    Ok((manifest, summary))
}

/// A read error inside the archive: the zstd frame or the tar is damaged or ends early.
fn decode_error(e: io::Error) -> PackError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => PackError::Truncated,
        _ => PackError::NotAPack(e.to_string()),
    }
}

/// A recording's dirs are private: it holds whatever the recorded workload wrote.
fn create_private_dir(path: &Path) -> Result<(), PackError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_at(path))
}
