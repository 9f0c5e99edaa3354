//! The Agent service: TLS only, every call authenticated and authorized before anything recorded
//! is read.

use crate::authorizer::{Access, Authorizer, Caller};
use crate::pb::agent_server::{Agent, AgentServer};
use crate::pb::export_request::Tree;
use crate::pb::{
    ContainerSelector, ExportChunk, ExportRequest, ExportSummary, HealthRequest, HealthResponse,
    ListContainersRequest, ListContainersResponse, TimelineEvent, TimelineRequest,
};
use crate::tar_chunks::{ChunkSender, ChunkWriter};
use crate::timeline::{timeline_event, EventFilter};
use crate::{HistoryError, HistoryView, NodeHistory, RpcError, TlsIdentity};
use diffkeeper_export::{compile_globs, ExportOptions, ImageLayers};
use diffkeeper_store::{format_wall, Point, Seq, Store, TimeError, TimeExpr};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

/// Requests are a selector, a time and a few globs: anything near this size is a mistake or an
/// attack, and is refused before it is decoded.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How often a following Timeline looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Chunks buffered between the exporter and the client: a little read-ahead, bounded memory.
const EXPORT_CHUNKS_BUFFERED: usize = 4;
const TIMELINE_EVENTS_BUFFERED: usize = 256;

/// Serves the Agent service over TLS on `listener` until `shutdown` resolves. The caller binds
/// (or is passed) the socket, so it knows the address before anyone connects.
pub async fn serve_on<H: NodeHistory>(
    listener: TcpListener,
    history: Arc<H>,
    authorizer: Authorizer,
    identity: TlsIdentity,
    max_request_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RpcError> {
    let address = listener.local_addr().ok();
    // tonic builds its TLS config from rustls's process-wide provider, which rustls cannot pick
    // by itself when a build enables two; ring is the workspace's (kube's too). A provider the
    // program installed first is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (stop_tx, stopping) = watch::channel(false);
    let service = AgentService {
        history,
        authorizer,
        stopping,
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        identity.cert_pem.as_bytes(),
        identity.key_pem.as_bytes(),
    ));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    info!(?address, "serving the agent's gRPC API over TLS");
    Server::builder()
        .tls_config(tls)
        .map_err(RpcError::ServerTls)?
        // Notices clients that vanished without closing (a node or a laptop gone) during long
        // follows and exports.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AgentServer::new(service).max_decoding_message_size(max_request_bytes))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Ends following Timelines, which would otherwise hold the graceful shutdown open.
            let _ = stop_tx.send(true);
        })
        .await
        .map_err(RpcError::Serve)
}

struct AgentService<H> {
    history: Arc<H>,
    authorizer: Authorizer,
    stopping: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl<H: NodeHistory> Agent for AgentService<H> {
    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let caller = self.authorizer.authenticate(request.metadata()).await?;
        let wanted = request.into_inner().namespace;
        if !wanted.is_empty() {
            // Asked for one namespace: say so plainly when it is not allowed, rather than
            // answering with an empty list that looks like "nothing recorded".
            self.authorizer
                .require(&caller, &Access::list(&wanted))
                .await?;
        }
        let history = self.history.clone();
        let mut containers = blocking(move || history.containers()).await?;
        containers.retain(|c| wanted.is_empty() || c.namespace == wanted);
        let namespaces: BTreeSet<String> = containers.iter().map(|c| c.namespace.clone()).collect();
        let mut allowed = BTreeSet::new();
        for namespace in namespaces {
            if self
                .authorizer
                .allowed(&caller, &Access::list(&namespace))
                .await?
            {
                allowed.insert(namespace);
            }
        }
        containers.retain(|c| allowed.contains(&c.namespace));
        debug!(user = %caller.name(), shown = containers.len(), "ListContainers");
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type TimelineStream = ReceiverStream<Result<TimelineEvent, Status>>;

    async fn timeline(
        &self,
        request: Request<TimelineRequest>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let caller = self.authorizer.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let selector = required_selector(req.container)?;
        let from = optional_time("from", &req.from)?;
        let to = optional_time("to", &req.to)?;
        if req.follow && to.is_some() {
            return Err(Status::invalid_argument(
                "follow streams new events until the container ends, so it takes no `to`; leave \
                 `to` empty, or leave out follow",
            ));
        }
        let filter = EventFilter {
            globs: compile_globs(&req.path_globs).map_err(invalid_argument)?,
        };
        let view = self
            .open_authorized(&caller, &selector, Access::log(&selector.namespace))
            .await?;
        info!(
            user = %caller.name(),
            namespace = %selector.namespace,
            pod_uid = %selector.pod_uid,
            container = %selector.container,
            follow = req.follow,
            "Timeline"
        );
        let (view, first, last) = blocking(move || {
            let first = match &from {
                Some(t) => resolve(&view.store, t)?.seq + 1,
                None => 1,
            };
            let last = to.as_ref().map(|t| resolve(&view.store, t)).transpose()?;
            Ok::<_, Status>((view, first, last.map(|p| p.seq)))
        })
        .await??;

        // Re-opens must find this incarnation, not a newer one that started meanwhile.
        let mut pinned = selector;
        pinned.container_id = view.container.container_id.clone();
        let (tx, rx) = mpsc::channel(TIMELINE_EVENTS_BUFFERED);
        let feed = TimelineFeed {
            history: self.history.clone(),
            selector: pinned,
            filter: Arc::new(filter),
            tx,
            stopping: self.stopping.clone(),
        };
        tokio::spawn(feed.run(view, first, last, req.follow));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let answer = self.start_export(request).await;
        let code = match &answer {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.history.export_answered(&format!("{code:?}"));
        answer
    }

    async fn health(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.authorizer.authenticate(request.metadata()).await?;
        let history = self.history.clone();
        let (node, containers, store_bytes) =
            blocking(move || (history.node(), history.containers(), history.store_bytes())).await?;
        Ok(Response::new(HealthResponse {
            node,
            version: env!("CARGO_PKG_VERSION").to_string(),
            recording: containers.iter().filter(|c| c.live).count() as u32,
            store_bytes,
        }))
    }
}

impl<H: NodeHistory> AgentService<H> {
    /// An Export up to the start of its stream: what the request's answer code is about.
    async fn start_export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ReceiverStream<Result<ExportChunk, Status>>>, Status> {
        let caller = self.authorizer.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let tree = req.tree();
        let selector = required_selector(req.container)?;
        let at = export_time(&req.time)?;
        let opts = ExportOptions {
            paths: compile_globs(&req.path_globs).map_err(invalid_argument)?,
            progress: false,
            no_owner: false,
        };
        let view = self
            .open_authorized(&caller, &selector, Access::export(&selector.namespace))
            .await?;
        info!(
            user = %caller.name(),
            namespace = %selector.namespace,
            pod_uid = %selector.pod_uid,
            container = %selector.container,
            container_id = %view.container.container_id,
            time = %at,
            ?tree,
            "Export"
        );
        let (view, point) = blocking(move || {
            let point = resolve(&view.store, &at)?;
            Ok::<_, Status>((view, point))
        })
        .await??;
        let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_BUFFERED);
        tokio::task::spawn_blocking(move || export_into(view, point, tree, &opts, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl<H: NodeHistory> AgentService<H> {
    /// The history of the selected container, once `caller` may `access` it.
    ///
    /// Authorization comes first, on the namespace the request names: an unauthorized caller
    /// learns nothing (not even whether the container exists) and costs no store opening. The
    /// recorded container's own namespace must then be that one; a container of another
    /// namespace is "not found", exactly like a container that does not exist.
    async fn open_authorized(
        &self,
        caller: &Caller,
        selector: &ContainerSelector,
        access: Access,
    ) -> Result<HistoryView, Status> {
        self.authorizer.require(caller, &access).await?;
        let history = self.history.clone();
        let wanted = selector.clone();
        let opened = blocking(move || history.open(&wanted)).await?;
        let not_found = || {
            Status::not_found(format!(
                "node {} has no recording of container {:?} (id {:?}) of pod uid {} in namespace \
                 {}; it may have run on another node (kubectl diffkeeper list shows where), or its \
                 history was deleted",
                self.history.node(),
                selector.container,
                selector.container_id,
                selector.pod_uid,
                selector.namespace
            ))
        };
        match opened {
            Ok(view) if view.container.namespace == selector.namespace => Ok(view),
            Ok(view) => {
                warn!(
                    user = %caller.name(),
                    asked = %selector.namespace,
                    recorded = %view.container.namespace,
                    "a request named the wrong namespace for a pod uid; answered not found"
                );
                Err(not_found())
            }
            Err(HistoryError::NotFound(detail)) => {
                debug!(%detail, "container not found");
                Err(not_found())
            }
            Err(HistoryError::Unavailable(reason)) => Err(Status::unavailable(reason)),
        }
    }
}

fn required_selector(selector: Option<ContainerSelector>) -> Result<ContainerSelector, Status> {
    let selector = selector.ok_or_else(|| {
        Status::invalid_argument(
            "no container given: set container.namespace, container.pod_uid and \
             container.container",
        )
    })?;
    if selector.namespace.is_empty() || selector.pod_uid.is_empty() {
        return Err(Status::invalid_argument(
            "container.namespace and container.pod_uid are required: authorization is checked in \
             the recorded pod's namespace, and the pod uid names the pod",
        ));
    }
    Ok(selector)
}

/// An Export's moment: `exit` (default) is the end of the history, `exit-5s` that much before
/// it; anything else is a time expression as `diffkeeper export --time` takes it.
fn export_time(raw: &str) -> Result<TimeExpr, Status> {
    parse_time("time", raw)
}

/// A Timeline bound: empty means the start (`from`) or the end (`to`).
fn optional_time(field: &str, raw: &str) -> Result<Option<TimeExpr>, Status> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    parse_time(field, raw).map(Some)
}

fn parse_time(field: &str, raw: &str) -> Result<TimeExpr, Status> {
    let t = raw.trim();
    let before_exit = t
        .get(..4)
        .filter(|word| word.eq_ignore_ascii_case("exit"))
        .and_then(|_| t.get(4..))
        .filter(|rest| rest.starts_with('-'));
    let parsed = if t.is_empty() || t.eq_ignore_ascii_case("exit") {
        Ok(TimeExpr::End)
    } else if let Some(offset) = before_exit {
        offset.parse()
    } else {
        t.parse()
    };
    parsed.map_err(|e| bad_time(field, raw, e))
}

fn bad_time(field: &str, raw: &str, e: TimeError) -> Status {
    Status::invalid_argument(format!(
        "bad {field} {raw:?}: {e}; `exit` (the container's last change) and `exit-5s` (before \
         it) are accepted too"
    ))
}

fn resolve(store: &Store, expr: &TimeExpr) -> Result<Point, Status> {
    store.resolve(expr).map_err(|e| match e {
        TimeError::Unreadable { .. } => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    })
}

fn invalid_argument(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Runs `f` on a blocking thread: stores and NodeHistory touch the disk.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "a worker thread of the agent failed");
        Status::internal(format!("the agent failed while reading the history: {e}"))
    })
}

/// Writes the tar of `view` at `point` into the response stream; on a blocking thread.
fn export_into(view: HistoryView, point: Point, tree: Tree, opts: &ExportOptions, tx: ChunkSender) {
    let mut out = ChunkWriter::new(tx.clone());
    let span = view.store.span();
    let scope = view.store.scope();
    let scope = if scope.is_everything() {
        String::new()
    } else {
        scope.to_string()
    };
    let written = write_tar(&view, point.seq, tree, &mut out, opts);
    // Frees the store (its lock and database) as soon as the export ends, however it ends.
    drop(view);
    match written {
        Ok(summary) => {
            let summary = ExportSummary {
                time: format_wall(span.wall_of(point.mono_ns)),
                files: summary.files,
                dirs: summary.dirs,
                symlinks: summary.symlinks,
                bytes: summary.bytes,
                inexact: summary.inexact.iter().map(|p| p.to_string()).collect(),
                // A damaged file is left out like a refused one, and its line says why: the
                // plugin and the snapshot Pods print these, so the loss is never silent.
                skipped: summary
                    .skipped
                    .iter()
                    .map(|(p, why)| format!("{p}: {why}"))
                    .chain(
                        summary
                            .damaged
                            .iter()
                            .map(|(p, why)| format!("{p}: the recording is damaged here: {why}")),
                    )
                    .collect(),
                scope,
            };
            let files = summary.files;
            if out.finish(summary).is_err() {
                debug!("the client went away before the last chunk");
            } else {
                info!(files, seq = point.seq, "export sent");
            }
        }
        Err(_) if out.client_gone() => info!("export cancelled by the client; store released"),
        Err(e) => {
            warn!(error = %e, "export failed");
            let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
        }
    }
}

/// The tar of the container's files right after event `seq`: FULL lays the recorded tree over
/// the image's layers when they are known, CHANGES is the recorded tree alone.
fn write_tar(
    view: &HistoryView,
    seq: Seq,
    tree: Tree,
    out: &mut ChunkWriter,
    opts: &ExportOptions,
) -> Result<diffkeeper_export::ExportSummary, diffkeeper_export::ExportError> {
    let image = ImageLayers::new(view.image_layers.clone());
    let image = (tree == Tree::Full && !image.is_empty()).then_some(&image);
    diffkeeper_export::export_store_tar(&view.store, seq, image, out, opts)
}

/// One Timeline stream: the events asked for, then (when following) new ones as they are
/// committed, until the container ends or the client goes away.
struct TimelineFeed<H> {
    history: Arc<H>,
    selector: ContainerSelector,
    filter: Arc<EventFilter>,
    tx: mpsc::Sender<Result<TimelineEvent, Status>>,
    stopping: watch::Receiver<bool>,
}

impl<H: NodeHistory> TimelineFeed<H> {
    async fn run(mut self, view: HistoryView, mut next: Seq, last: Option<Seq>, follow: bool) {
        let mut view = Some(view);
        loop {
            let current = match view.take() {
                Some(v) => v,
                None => match self.reopen().await {
                    Ok(Some(v)) => v,
                    // Busy for a moment (e.g. being written): the next poll tries again.
                    Ok(None) => {
                        if !self.pause().await {
                            return;
                        }
                        continue;
                    }
                    Err(status) => {
                        let _ = self.tx.send(Err(status)).await;
                        return;
                    }
                },
            };
            let live = current.container.live;
            let upto = last.unwrap_or_else(|| current.store.span().last_seq);
            let (tx, filter) = (self.tx.clone(), self.filter.clone());
            let sent = blocking(move || send_events(current, next, upto, &filter, &tx)).await;
            match sent {
                Ok(Some(after)) => next = after,
                Ok(None) => return, // client gone or failed: already reported
                Err(status) => {
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            }
            if !follow || !live || !self.pause().await {
                return;
            }
        }
    }

    /// Waits one poll interval; false when the stream should end instead.
    async fn pause(&mut self) -> bool {
        if *self.stopping.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => true,
            _ = self.tx.closed() => false,
            _ = self.stopping.changed() => false,
        }
    }

    async fn reopen(&self) -> Result<Option<HistoryView>, Status> {
        let history = self.history.clone();
        let selector = self.selector.clone();
        match blocking(move || history.open(&selector)).await? {
            Ok(view) => Ok(Some(view)),
            Err(HistoryError::Unavailable(reason)) => {
                debug!(%reason, "history busy while following; trying again");
                Ok(None)
            }
            Err(HistoryError::NotFound(reason)) => Err(Status::not_found(format!(
                "the followed container's history is gone ({reason})"
            ))),
        }
    }
}

/// Sends events `next..=upto` that the filter wants; on a blocking thread. The next seq to send,
/// or None when the stream is over (client gone, or a read failed and was reported).
fn send_events(
    view: HistoryView,
    next: Seq,
    upto: Seq,
    filter: &EventFilter,
    tx: &mpsc::Sender<Result<TimelineEvent, Status>>,
) -> Option<Seq> {
    if next > upto {
        return Some(next);
    }
    let span = view.store.span();
    for summary in view.store.summaries(next, upto) {
        let item = match summary {
            Ok(s) if !filter.wants(&s) => continue,
            Ok(s) => Ok(timeline_event(&span, &s)),
            Err(e) => Err(Status::internal(format!("reading the history failed: {e}"))),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return None;
        }
    }
    Some(upto + 1)
}
