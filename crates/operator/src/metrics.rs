//! Prometheus metrics and the health endpoints, served over plain HTTP for the kubelet's probes
//! and a scraper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

/// The operator's counters, shared by every reconcile.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciliations: Counter,
    failures: Family<ErrorLabels, Counter>,
    /// How long reconciles take.
    pub reconcile_seconds: Histogram,
    /// Snapshots of dead containers started.
    pub snapshots_started: Counter,
    /// Snapshots whose Pod failed.
    pub snapshots_failed: Counter,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Set once the process can serve: it is the leader and reconciling, or a standby waiting.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("diffkeeper_operator");
        let metrics = Metrics {
            reconciliations: Counter::default(),
            failures: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            snapshots_started: Counter::default(),
            snapshots_failed: Counter::default(),
            leader: Gauge::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "reconciliations",
            "Recording reconciles run",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Recording reconciles that failed, by error",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "snapshots_started",
            "Snapshots of dead containers started",
            metrics.snapshots_started.clone(),
        );
        registry.register(
            "snapshots_failed",
            "Snapshots whose Pod failed",
            metrics.snapshots_failed.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a failed reconcile under its error's label.
    pub fn failure(&self, error: &'static str) {
        self.failures.get_or_create(&ErrorLabels { error }).inc();
    }

    fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves /metrics, /healthz and /readyz on `listener` until the process ends.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app).await
}
