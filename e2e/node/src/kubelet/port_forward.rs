//! kubelet's streaming port-forward endpoint, `GET /portForward/{namespace}/{pod}?ports=P,...`,
//! in its WebSocket form (subprotocol `v4.channel.k8s.io`): what the API server's
//! `pods/portforward` hands a client's connection to. The wire is kubelet's: every WebSocket
//! message starts with a channel byte; port number i has data channel 2i and error channel
//! 2i+1, and the first message on each channel is that port, two bytes little-endian. Bytes on a
//! data channel go to the pod's port and back; a port that cannot be dialled gets its error on
//! the error channel. Pods share the host's network here (see the module above), so the pod's
//! port is 127.0.0.1:P. kubelet's SPDY form and its client-certificate check are left out: the
//! node is reached on loopback, by clients (kube-rs, kubectl 1.31+) that speak WebSocket.

use std::convert::Infallible;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::Ctx;

/// The one subprotocol kubelet's WebSocket port-forward speaks in binary.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Serves the endpoint on `listener` until the task is aborted.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("port-forward: accept: {error}");
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(ctx.clone(), req));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(%peer, "port-forward connection: {error}");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn plain(status: StatusCode, message: String) -> Reply {
    tracing::info!(%status, "port-forward refused: {message}");
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

async fn respond(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    Ok(match accept(&ctx, req).await {
        Ok(reply) => reply,
        Err((status, message)) => plain(status, message),
    })
}

/// Checks the request as kubelet does, then answers 101 and forwards in a task of its own.
async fn accept(ctx: &Ctx, mut req: Request<Incoming>) -> Result<Reply, (StatusCode, String)> {
    let path = req.uri().path().to_string();
    let Some((namespace, pod)) = path
        .strip_prefix("/portForward/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(ns, pod)| !ns.is_empty() && !pod.is_empty() && !pod.contains('/'))
    else {
        return Err((StatusCode::NOT_FOUND, format!("no such endpoint: {path}")));
    };
    let (namespace, pod) = (namespace.to_string(), pod.to_string());
    if req.method() != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "this node forwards ports over WebSocket (GET) only, not SPDY".into(),
        ));
    }
    let ports = ports(req.uri().query().unwrap_or_default())
        .map_err(|message| (StatusCode::BAD_REQUEST, message))?;
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let offered = header(SEC_WEBSOCKET_PROTOCOL);
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "port-forward needs the WebSocket subprotocol {PROTOCOL}; offered: {offered:?}"
            ),
        ));
    }
    let key = header(hyper::header::SEC_WEBSOCKET_KEY);
    if !header(UPGRADE).eq_ignore_ascii_case("websocket") || key.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "port-forward is a WebSocket upgrade; this request is not one".into(),
        ));
    }
    // kubelet forwards only into a pod it runs: one with a sandbox in the runtime.
    let sandboxes = ctx.runtime.list_pods().await.map_err(|error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("asking the runtime for pod {namespace}/{pod}: {error}"),
        )
    })?;
    if !sandboxes
        .iter()
        .any(|s| s.namespace == namespace && s.name == pod)
    {
        return Err((
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not running on this node"),
        ));
    }

    let upgrade = hyper::upgrade::on(&mut req);
    let label = format!("{namespace}/{pod}");
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                tracing::info!(pod = %label, ?ports, "port-forward opened");
                forward(socket, &ports, &label).await;
                tracing::info!(pod = %label, ?ports, "port-forward closed");
            }
            Err(error) => tracing::warn!(pod = %label, "port-forward upgrade: {error}"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a header"),
    );
    headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    Ok(response)
}

/// The `ports` query parameter, as kubelet reads it: repeated or comma-separated, 1-65535.
fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "ports" {
            continue;
        }
        for port in value.split(',').filter(|p| !p.is_empty()) {
            match port.trim().parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("invalid port {port:?}: must be 1-65535")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be given (ports=...)".into());
    }
    Ok(ports)
}

/// Carries one WebSocket connection: each port's data both ways until the client closes or
/// every port's pod side has ended.
async fn forward<S>(socket: WebSocketStream<S>, ports: &[u16], label: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = socket.split();
    // Everything that goes to the client passes one queue: the pod-side readers and the
    // error reports share the sink.
    let (to_client, mut outgoing) = mpsc::channel::<Message>(64);
    let mut to_pods = Vec::with_capacity(ports.len());
    for (index, &port) in ports.iter().enumerate() {
        let (data, error) = (2 * index as u8, 2 * index as u8 + 1);
        for channel in [data, error] {
            let mut first = vec![channel];
            first.extend_from_slice(&port.to_le_bytes());
            if to_client.send(Message::binary(first)).await.is_err() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
        to_pods.push(tx);
        tokio::spawn(pump(
            port,
            data,
            error,
            rx,
            to_client.clone(),
            label.to_string(),
        ));
    }
    drop(to_client);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // Every port's pod side has ended: say so the way kubelet does, by closing.
        let _ = sink.send(Message::Close(None)).await;
    });
    while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Binary(bytes) if bytes.len() > 1 => {
                let channel = bytes[0] as usize;
                // Only data channels carry bytes to the pod; anything else is ignored, as kubelet
                // ignores writes to an error channel.
                if channel.is_multiple_of(2) {
                    if let Some(tx) = to_pods.get(channel / 2) {
                        let _ = tx.send(bytes[1..].to_vec()).await;
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    // The client is gone: the pumps see their queues close and shut their connections.
    drop(to_pods);
    writer.abort();
}

/// One port: dials the pod's port, then copies both ways.
async fn pump(
    port: u16,
    data: u8,
    error: u8,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    to_client: mpsc::Sender<Message>,
    label: String,
) {
    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(e) => {
            let mut message = vec![error];
            message.extend_from_slice(
                format!(
                    "error forwarding port {port} to pod {label}: dial tcp 127.0.0.1:{port}: {e}"
                )
                .as_bytes(),
            );
            let _ = to_client.send(Message::binary(message)).await;
            return;
        }
    };
    let (mut read, mut write) = stream.into_split();
    let upstream = async move {
        while let Some(bytes) = from_client.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match read.read(&mut buffer[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buffer[0] = data;
                    if to_client
                        .send(Message::binary(buffer[..n + 1].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    // The pod closing its side ends this port for the client; the client closing ends both.
    tokio::select! {
        _ = downstream => {}
        _ = upstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_kubelet_reads_them() {
        assert_eq!(ports("&ports=80%2C1234").unwrap(), vec![80, 1234]);
        assert_eq!(ports("ports=80&ports=81").unwrap(), vec![80, 81]);
        assert!(ports("ports=0").unwrap_err().contains("1-65535"));
        assert!(ports("ports=http").unwrap_err().contains("\"http\""));
        assert!(ports("other=1").unwrap_err().contains("at least one port"));
    }
}
