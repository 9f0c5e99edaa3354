//! The vocabulary of statuses and Events: the snapshot Pod's report, the Recording's condition
//! types and reasons, and the Events' reasons. One type each, so the writer and the reader of a
//! string cannot spell it differently.

use serde::{Deserialize, Serialize};

/// What `diffkeeper snapshot` writes as its Pod's termination message (JSON), and the operator
/// reads back into the Recording's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Regular files written into the PVC.
    #[serde(default)]
    pub files: u64,
    /// Directories written.
    #[serde(default)]
    pub dirs: u64,
    /// Symbolic links written.
    #[serde(default)]
    pub symlinks: u64,
    /// Bytes of file content written.
    #[serde(default)]
    pub bytes: u64,
    /// The moment exported, resolved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Files whose content at that moment is known only up to a gap.
    #[serde(default)]
    pub inexact: u64,
    /// Entries left out (paths that could climb out of the PVC, or below a recorded symlink).
    #[serde(default)]
    pub skipped: u64,
    /// Why the snapshot failed; None when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SnapshotReport {
    /// The report of a snapshot that failed for `error`.
    pub fn failed(error: String) -> SnapshotReport {
        SnapshotReport {
            error: Some(error),
            ..Default::default()
        }
    }
}

macro_rules! names {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),*
        }

        impl $name {
            /// The name as the API carries it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The `type` of a Recording's status conditions.
    ConditionType {
        /// The spec is valid and was reconciled.
        Ready,
        /// Some selected container is being recorded.
        Recording,
        /// Something recorded is at risk (a failed attach or snapshot, a gap, a waiting snapshot).
        Degraded,
    }
}

names! {
    /// The `reason` of a Recording's status conditions.
    ConditionReason {
        /// Ready: the spec is valid.
        Valid,
        /// Ready is False: the spec has globs or quantities that do not parse.
        InvalidSpec,
        /// Recording: agents report recording selected containers.
        ContainersRecording,
        /// Recording is False: the selector matches no pod.
        NoPodsSelected,
        /// Recording is False: pods match but no agent reports recording them.
        NoContainersRecording,
        /// Degraded: an agent could not attach to a container.
        AttachFailed,
        /// Degraded: a snapshot Pod failed.
        SnapshotFailed,
        /// Degraded: a dead container's agent reported no endpoint, so its snapshot waits.
        NoAgentEndpoint,
        /// Degraded: the history has gaps that could not be healed.
        Gaps,
        /// Degraded is False: nothing recorded is at risk.
        Healthy,
    }
}

names! {
    /// The `reason` of the Events the operator publishes about snapshots and failed attaches.
    EventReason {
        /// An agent could not attach to a selected container (Warning, on the Recording).
        AttachFailed,
        /// A snapshot's PVC and Pod were created.
        SnapshotStarted,
        /// A snapshot's files are in its PVC.
        SnapshotSucceeded,
        /// A snapshot Pod failed.
        SnapshotFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_what_was_written_and_what_older_writers_wrote() {
        let report = SnapshotReport {
            files: 3,
            bytes: 42,
            time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<SnapshotReport>(&json).unwrap(),
            report
        );
        let short: SnapshotReport = serde_json::from_str(r#"{"files":3,"bytes":42}"#).unwrap();
        assert_eq!((short.files, short.bytes, short.error), (3, 42, None));
        let failed = serde_json::to_value(SnapshotReport::failed("no".into())).unwrap();
        assert_eq!(failed["error"], "no");
    }

    #[test]
    fn names_are_the_variants() {
        assert_eq!(
            ConditionReason::NoAgentEndpoint.to_string(),
            "NoAgentEndpoint"
        );
        assert_eq!(ConditionType::Degraded.as_str(), "Degraded");
        assert_eq!(EventReason::SnapshotFailed.as_str(), "SnapshotFailed");
    }
}
