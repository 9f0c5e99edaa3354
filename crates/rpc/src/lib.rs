//! The node agent's gRPC API: a TLS server that checks every caller with the Kubernetes API server, and its client.
//!
//! The contract is `proto/diffkeeper/v1/agent.proto`; the security model is docs/security.md.
//! The agent implements [`NodeHistory`] (what it recorded) and runs [`serve_on`]; snapshot Pods and
//! `kubectl diffkeeper` [`connect`] and read with [`export_to_dir`] / [`export_to_writer`] or the
//! generated [`agent_client::AgentClient`] directly.

#![warn(missing_docs)]

mod authorizer;
mod client;
mod identity;
mod server;
mod tar_chunks;
mod timeline;

/// The messages, server and client generated from agent.proto (whose comments are their docs;
/// what the proto leaves uncommented, such as generated plumbing, is not required to have one).
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("diffkeeper.v1");

    /// What an export wrote, as every command says it: `3 files, 1 directories, 0 symlinks,
    /// 42 B`.
    impl std::fmt::Display for ExportSummary {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&diffkeeper_export::describe_counts(
                self.files,
                self.dirs,
                self.symlinks,
                self.bytes,
            ))
        }
    }
}

pub use authorizer::Authorizer;
pub use client::{
    connect, connect_with, export_to_dir, export_to_writer, unpack_tar_safely, AgentConnection,
    BearerToken,
};
pub use identity::{mint_serving_identity, TlsIdentity};
pub use pb::*;
pub use server::{serve_on, DEFAULT_MAX_REQUEST_BYTES};

use std::path::PathBuf;

/// Well-known name every agent certificate carries, for clients that reach an agent by a tunnel
/// (port-forward) rather than by its address.
pub const AGENT_SERVER_NAME: &str = "diffkeeper-agent";

/// What the node agent exposes to the server. Implemented by the agent crate.
///
/// The server calls these from blocking threads (they may touch the disk), never from the async
/// runtime's workers.
pub trait NodeHistory: Send + Sync + 'static {
    /// The node's name.
    fn node(&self) -> String;
    /// Every container incarnation recorded on this node, live and dead.
    fn containers(&self) -> Vec<pb::RecordedContainer>;
    /// A consistent read view of one incarnation's history. pod_uid+container pick the
    /// incarnations, container_id (if non-empty) picks one, else the latest.
    fn open(&self, selector: &pb::ContainerSelector) -> Result<HistoryView, HistoryError>;
    /// Bytes the node's recordings take on disk.
    fn store_bytes(&self) -> u64;
    /// An Export request was answered with this gRPC code (`Ok` once its stream started;
    /// `PermissionDenied`, `NotFound`, ... otherwise): for the node's metrics.
    fn export_answered(&self, _code: &str) {}
}

/// One incarnation's history, held open for one request. Dropping it frees the store.
pub struct HistoryView {
    /// Its namespace field is the truth used for authorization (never the request's).
    pub container: pb::RecordedContainer,
    /// The history's store, viewed at one commit.
    pub store: diffkeeper_store::Store,
    /// The container image's layers (overlay lower dirs, topmost first) for FULL-tree exports;
    /// empty when unknown or gone.
    pub image_layers: Vec<PathBuf>,
}

/// Why a history cannot be opened (the message goes to the caller).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// No such container was recorded here (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// It exists but cannot be read now (UNAVAILABLE: shutting down, store busy).
    #[error("{0}")]
    Unavailable(String),
}

/// Why serving, connecting or exporting failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The serving certificate or key is unusable.
    #[error(
        "cannot use the serving certificate and key: {0}; mint them with mint_serving_identity \
         from the CA in Secret diffkeeper-ca"
    )]
    ServerTls(#[source] tonic::transport::Error),

    /// The server stopped with a transport error.
    #[error("the gRPC server stopped with an error: {}", chain(.0))]
    Serve(#[source] tonic::transport::Error),

    /// A certificate could not be minted from the CA.
    #[error(
        "cannot {what}: {source}; Secret diffkeeper-ca must hold the CA certificate (ca.crt) and \
         its private key (ca.key) in PEM; delete the Secret and the operator makes a new CA"
    )]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: rcgen::Error,
    },

    /// The CA certificate to trust is unusable.
    #[error(
        "cannot use the CA certificate to trust the agent: {}; pass the PEM ca.crt of ConfigMap \
         diffkeeper-agent-ca",
        chain(.0)
    )]
    TrustedCa(#[source] tonic::transport::Error),

    /// The agent's address does not parse.
    #[error("agent endpoint {endpoint:?} is not usable: {reason}; give it as HOST:PORT or https://HOST:PORT")]
    Endpoint {
        /// The address given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The agent could not be reached.
    #[error(
        "cannot connect to the agent at {endpoint}: {}; check that the diffkeeper agent runs on \
         that node, that its port is reachable from here, and that its certificate is from the \
         CA you trust",
        chain(source)
    )]
    Connect {
        /// The agent's address.
        endpoint: String,
        /// Why the connection failed.
        source: tonic::transport::Error,
    },

    /// The bearer token cannot be an HTTP header.
    #[error(
        "the bearer token contains characters an HTTP header cannot carry; pass the token exactly \
         as Kubernetes issued it"
    )]
    BadToken,

    /// The agent refused or failed the call.
    #[error("the agent answered {:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),

    /// The export stream ended before its summary.
    #[error(
        "the agent ended the export before its last chunk (it may have restarted); run the export \
         again"
    )]
    Incomplete,

    /// The exported tar could not be written.
    #[error("cannot write the exported tar: {0}; check that the output is writable and has room")]
    Output(#[source] std::io::Error),

    /// The exported files could not be unpacked.
    #[error(
        "cannot unpack the exported files into {}: {source}; check that the directory is writable \
         and has room",
        dir.display()
    )]
    Unpack {
        /// The destination directory.
        dir: PathBuf,
        /// Why unpacking failed.
        source: std::io::Error,
    },
}

impl RpcError {
    /// Whether trying again later may succeed: the agent was unreachable or went away mid-call
    /// (it may be restarting), as opposed to a refusal that will be repeated.
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Connect { .. } | RpcError::Incomplete => true,
            RpcError::Status(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// An error with its sources: tonic's transport errors say only "transport error" at the top.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
