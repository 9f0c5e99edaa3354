//! The default way to an agent: the API server's port-forward to the agent pod of the node that
//! keeps the history, as `kubectl port-forward` does. It needs no route from this machine to the
//! node, only `create pods/portforward` in the agent's namespace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::DuplexStream;

/// A connector for tonic: every connection it is asked for is a new port-forward stream to the
/// agent pod's port, so a reconnecting channel gets a fresh tunnel rather than a dead one.
#[derive(Clone)]
pub struct PortForwardConnector {
    pods: Api<Pod>,
    namespace: String,
    pod: String,
    port: u16,
}

impl PortForwardConnector {
    pub fn new(pods: Api<Pod>, namespace: &str, pod: &str, port: u16) -> Self {
        PortForwardConnector {
            pods,
            namespace: namespace.into(),
            pod: pod.into(),
            port,
        }
    }
}

impl tower::Service<http::Uri> for PortForwardConnector {
    type Response = TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _destination: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut forwarder = this
                .pods
                .portforward(&this.pod, &[this.port])
                .await
                .map_err(|e| this.refused(e))?;
            let stream = forwarder.take_stream(this.port).ok_or_else(|| {
                std::io::Error::other("the port-forward gave no stream for the agent's port")
            })?;
            // The kubelet reports a failed connection to the pod's port on the error channel,
            // while the stream itself just closes: keep what it says for the log.
            if let Some(error) = forwarder.take_error(this.port) {
                let (pod, port) = (this.pod.clone(), this.port);
                tokio::spawn(async move {
                    if let Some(message) = error.await {
                        tracing::warn!(%pod, port, "port-forward to the agent failed: {message}");
                    }
                });
            }
            // Dropping the forwarder detaches (does not stop) its task, which carries the bytes
            // for as long as the stream is open.
            drop(forwarder);
            Ok(TokioIo::new(stream))
        })
    }
}

impl PortForwardConnector {
    fn refused(&self, e: kube::Error) -> std::io::Error {
        let ns = &self.namespace;
        let pod = &self.pod;
        let what = match &e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "you may not port-forward to the agent pod {ns}/{pod}: you need `create \
                 pods/portforward` in namespace {ns}, or reach the agent directly with --direct \
                 or --agent-address ({})",
                s.message
            ),
            // 404: the pod was replaced since we looked, or this API server has no port-forward.
            kube::Error::Api(s) if s.code == 404 => format!(
                "port-forward to the agent pod {ns}/{pod} found nothing ({}): if the agent pod \
                 was just replaced, try again; if this API server cannot port-forward, reach the \
                 agent directly with --direct or --agent-address",
                s.message
            ),
            _ => format!(
                "port-forward to the agent pod {ns}/{pod} through the API server failed: {e}; \
                 reach the agent directly with --direct or --agent-address if the API server \
                 cannot"
            ),
        };
        std::io::Error::other(what)
    }
}
