//! What can go wrong opening, writing or reading a recording. Every message says what happened
//! and what the person running DiffKeeper can do about it.

use crate::model::{NodeId, Seq};
use crate::time::TimeError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state dir {} is locked by pid {pid} (a recorder is still running, or another diffkeeper \
         command has it open); wait for it to finish or use another --state-dir",
        dir.display()
    )]
    Locked { pid: u32, dir: PathBuf },

    #[error(
        "reading the live recording {} through its recorder failed: {reason}; wait for the \
         recorder to finish and read it then",
        dir.display()
    )]
    Live { dir: PathBuf, reason: String },

    #[error(
        "{} is not a DiffKeeper recording ({reason}); point --state-dir at a directory a recorder \
         wrote",
        dir.display()
    )]
    NotARecording { dir: PathBuf, reason: String },

    #[error(
        "{} already holds a recording; resume it, or choose an empty --state-dir for a new one",
        dir.display()
    )]
    AlreadyRecorded { dir: PathBuf },

    #[error(
        "the recording was written by a newer DiffKeeper (store format {found}, this build reads \
         {supported}); use a newer diffkeeper to read it"
    )]
    UnsupportedFormat { found: u32, supported: u32 },

    #[error(
        "the recording is damaged: {what}; moments before the damage may still export, otherwise \
         record again"
    )]
    Corrupt { what: String },

    #[error(
        "cannot access the state dir: {0}; check that it exists, is writable and has free space"
    )]
    Io(#[from] std::io::Error),

    #[error("the store database failed: {0}; check disk space and permissions of the state dir")]
    Sled(#[from] sled::Error),

    #[error(transparent)]
    Time(#[from] TimeError),

    #[error(
        "@seq:{seq} is beyond the end of the recording (its last event is @seq:{last}); pick a \
         time within the recording"
    )]
    SeqBeyondEnd { seq: Seq, last: Seq },

    #[error(
        "node {node} has no content at @seq:{seq} (it is a directory, or it did not exist yet); \
         read content only for files and symlinks of the tree at that moment"
    )]
    NoContent { node: NodeId, seq: Seq },
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        StoreError::Corrupt { what: what.into() }
    }
}
