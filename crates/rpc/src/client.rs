//! Reaching one node's agent: a TLS channel that trusts the install's CA and sends the caller's
//! Kubernetes token on every call, and the Export stream turned into a tar or a directory.

use crate::pb::agent_client::AgentClient;
use crate::pb::{ExportRequest, ExportSummary};
use crate::RpcError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// A client of one node's agent.
pub type AgentConnection = AgentClient<InterceptedService<Channel, BearerToken>>;

/// Puts `authorization: Bearer <token>` on every call (nothing when there is no token).
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token`; refuses a token no HTTP header can carry.
    pub fn new(token: Option<String>) -> Result<Self, RpcError> {
        let value = token
            .map(|t| {
                let mut value: MetadataValue<Ascii> = format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| RpcError::BadToken)?;
                // Keeps it out of HPACK's shared tables and out of debug output.
                value.set_sensitive(true);
                Ok::<_, RpcError>(value)
            })
            .transpose()?;
        Ok(BearerToken(value))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A dead or unreachable agent should fail a call in seconds, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one node's agent. `endpoint` "host:port" (or `https://host:port`, as
/// ContainerRecords report it); `ca_pem` the CA to trust; `server_name` overrides the name
/// checked in the certificate (else the host of endpoint); `token` is sent as
/// `authorization: Bearer` on every call (None: no credentials).
pub async fn connect(
    endpoint: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
    token: Option<String>,
) -> Result<AgentConnection, RpcError> {
    let (uri, host) = https_uri(endpoint)?;
    let name = server_name.unwrap_or(&host).to_string();
    let channel = tls_endpoint(uri, ca_pem, &name)?
        .connect()
        .await
        .map_err(|source| RpcError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(AgentClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}

/// Same, over connections made by `connector` (e.g. a Kubernetes port-forward stream per
/// connection). TLS is still applied over each connection, checking `server_name` (usually
/// [`crate::AGENT_SERVER_NAME`]).
pub async fn connect_with<C>(
    connector: C,
    ca_pem: &[u8],
    server_name: &str,
    token: Option<String>,
) -> Result<AgentConnection, RpcError>
where
    C: Service<Uri> + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Send + Unpin,
    C::Future: Send,
    Box<dyn std::error::Error + Send + Sync>: From<C::Error> + Send,
{
    let endpoint = format!("https://{server_name}");
    let (uri, _) = https_uri(&endpoint)?;
    let channel = tls_endpoint(uri, ca_pem, server_name)?
        .connect_with_connector(connector)
        .await
        .map_err(|source| RpcError::Connect { endpoint, source })?;
    Ok(AgentClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}

fn tls_endpoint(uri: Uri, ca_pem: &[u8], server_name: &str) -> Result<Endpoint, RpcError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    Ok(Endpoint::from(uri)
        .tls_config(tls)
        .map_err(RpcError::TrustedCa)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// `host:port` or `https://host:port` as an https URI, and its host (without IPv6 brackets).
fn https_uri(endpoint: &str) -> Result<(Uri, String), RpcError> {
    let bad = |reason: &str| RpcError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let text = match endpoint.split_once("://") {
        Some(("https", _)) => endpoint.to_string(),
        Some(_) => return Err(bad("the agent serves https only")),
        None => format!("https://{endpoint}"),
    };
    let uri: Uri = text.parse().map_err(|_| bad("not a host and port"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((uri, host))
}

/// Runs an Export and writes the tar it streams to `out`; `progress` is called with the tar
/// bytes received so far after each chunk. Returns the summary the last chunk carries.
///
/// Writes happen on the calling task: pass a writer that does not block for long (a file, a
/// pipe), or use [`export_to_dir`].
pub async fn export_to_writer(
    client: &mut AgentConnection,
    request: ExportRequest,
    mut out: impl Write,
    mut progress: impl FnMut(u64),
) -> Result<ExportSummary, RpcError> {
    let mut stream = client.export(request).await?.into_inner();
    let mut received = 0u64;
    let mut summary = None;
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.tar).map_err(RpcError::Output)?;
        received += chunk.tar.len() as u64;
        progress(received);
        if chunk.summary.is_some() {
            summary = chunk.summary;
        }
    }
    out.flush().map_err(RpcError::Output)?;
    summary.ok_or(RpcError::Incomplete)
}

/// Runs an Export and unpacks it into `dir` (created if missing) as it arrives, with
/// [`unpack_tar_safely`]'s rules. `progress` as for [`export_to_writer`].
pub async fn export_to_dir(
    client: &mut AgentConnection,
    request: ExportRequest,
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<ExportSummary, RpcError> {
    let mut stream = client.export(request).await?.into_inner();
    // The tar reader is synchronous: it runs on a blocking thread and pulls the chunks this task
    // receives through a small channel, so neither side holds more than a few chunks.
    let (tx, rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let reader = SyncIoBridge::new(StreamReader::new(ReceiverStream::new(rx)));
    let target = dir.to_path_buf();
    let unpacking = tokio::task::spawn_blocking(move || unpack_tar_safely(reader, &target));
    let mut received = 0u64;
    let mut summary = None;
    let mut unpacker_done = false;
    let outcome = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                received += chunk.tar.len() as u64;
                progress(received);
                if chunk.summary.is_some() {
                    summary = chunk.summary;
                }
                // Once the unpacker has read the end of the archive it stops reading; what
                // follows is padding.
                if !unpacker_done && tx.send(Ok(chunk.tar.into())).await.is_err() {
                    unpacker_done = true;
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => {
                // Makes the unpacker stop at once rather than wait for bytes that never come.
                let _ = tx
                    .send(Err(std::io::Error::other("the export stream failed")))
                    .await;
                break Err(RpcError::Status(status));
            }
        }
    };
    drop(tx);
    let unpacked = unpacking.await.map_err(|e| RpcError::Unpack {
        dir: dir.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    outcome?;
    unpacked?;
    summary.ok_or(RpcError::Incomplete)
}

/// Unpacks a tar into `dir` (created if missing), never writing outside it: absolute paths are
/// taken as relative to `dir`, entries with `..` are skipped, and an entry that would be written
/// through a symlink pointing outside `dir` fails the unpack (the tar crate's `unpack_in` rules).
/// Modes and mtimes are kept; owners are not (everything belongs to the unpacking user).
pub fn unpack_tar_safely(tar: impl Read, dir: &Path) -> Result<(), RpcError> {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    archive.unpack(dir).map_err(|source| RpcError::Unpack {
        dir: PathBuf::from(dir),
        source,
    })
}
