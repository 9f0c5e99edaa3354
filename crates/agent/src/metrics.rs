//! The agent's Prometheus metrics, served on `/metrics` (with `/healthz`) over plain HTTP for a
//! scraper: what a platform engineer alerts on first is records lost and not healed, per
//! container, and a ring buffer or consumer that cannot keep up.
//!
//! The capture thread owns the counts and pushes them here once a second (the delta since its
//! last push, so counters stay counters); the gRPC side counts exports as they are answered.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Which container a per-container series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name in the pod.
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type Ratio = Gauge<f64, AtomicU64>;

/// One push of a container's counts, as totals since its history began on this agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerCounts {
    /// Kernel events recorded.
    pub events: u64,
    /// Payload bytes the kernel copied for it.
    pub captured_bytes: u64,
    /// Records of it the ring buffer could not hold.
    pub records_lost: u64,
    /// Read-backs that healed lost records.
    pub drops_healed: u64,
    /// Its history's size on disk.
    pub store_bytes: u64,
}

/// Every series the agent serves.
pub struct Metrics {
    registry: Registry,
    events: Family<ContainerLabels, Counter>,
    captured: Family<ContainerLabels, Counter>,
    lost: Family<ContainerLabels, Counter>,
    healed: Family<ContainerLabels, Counter>,
    store: Family<ContainerLabels, Gauge>,
    node_lost: Counter,
    ring_fill: Ratio,
    ring_size: Gauge,
    consumer_lag: Ratio,
    histories: Gauge,
    live: Gauge,
    attach_failures: Family<ReasonLabels, Counter>,
    export_requests: Family<CodeLabels, Counter>,
    export_errors: Family<CodeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("diffkeeper");
        let metrics = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            captured: Family::default(),
            lost: Family::default(),
            healed: Family::default(),
            store: Family::default(),
            node_lost: Counter::default(),
            ring_fill: Ratio::default(),
            ring_size: Gauge::default(),
            consumer_lag: Ratio::default(),
            histories: Gauge::default(),
            live: Gauge::default(),
            attach_failures: Family::default(),
            export_requests: Family::default(),
            export_errors: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "events",
            "File-system events recorded, per container",
            metrics.events.clone(),
        );
        r.register_with_unit(
            "captured",
            "Payload bytes the kernel copied, per container",
            Unit::Bytes,
            metrics.captured.clone(),
        );
        r.register(
            "records_lost",
            "Capture records the ring buffer could not hold, per container",
            metrics.lost.clone(),
        );
        r.register(
            "drops_healed",
            "Files read back to heal lost records, per container",
            metrics.healed.clone(),
        );
        r.register_with_unit(
            "store",
            "A history's size on disk, per container",
            Unit::Bytes,
            metrics.store.clone(),
        );
        r.register(
            "node_records_lost",
            "Capture records the ring buffer could not hold, every recording of the node",
            metrics.node_lost.clone(),
        );
        r.register_with_unit(
            "ring_fill",
            "Share of the ring buffer that waited for the reader at its fullest in the last second",
            Unit::Other("ratio".into()),
            metrics.ring_fill.clone(),
        );
        r.register_with_unit(
            "ring_size",
            "The ring buffer's size",
            Unit::Bytes,
            metrics.ring_size.clone(),
        );
        r.register_with_unit(
            "consumer_lag",
            "Age of the newest event the recorders took in the last second, when they took it",
            Unit::Seconds,
            metrics.consumer_lag.clone(),
        );
        r.register(
            "histories",
            "Container histories kept on this node, live and ended",
            metrics.histories.clone(),
        );
        r.register(
            "live_histories",
            "Containers being recorded now",
            metrics.live.clone(),
        );
        r.register(
            "attach_failures",
            "Containers the agent could not start recording, by reason",
            metrics.attach_failures.clone(),
        );
        r.register(
            "export_requests",
            "Export requests answered, by gRPC code",
            metrics.export_requests.clone(),
        );
        r.register(
            "export_errors",
            "Export requests refused or failed, by gRPC code",
            metrics.export_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Adds what a container did since `before` (both totals).
    pub fn container(
        &self,
        labels: &ContainerLabels,
        before: ContainerCounts,
        now: ContainerCounts,
    ) {
        let add = |family: &Family<ContainerLabels, Counter>, old: u64, new: u64| {
            // Created at zero even with nothing to add: the series exists from the attach on.
            family.get_or_create(labels).inc_by(new.saturating_sub(old));
        };
        add(&self.events, before.events, now.events);
        add(&self.captured, before.captured_bytes, now.captured_bytes);
        add(&self.lost, before.records_lost, now.records_lost);
        add(&self.healed, before.drops_healed, now.drops_healed);
        self.store
            .get_or_create(labels)
            .set(i64::try_from(now.store_bytes).unwrap_or(i64::MAX));
    }

    /// The node-wide kernel loss counter went from `before` to `now`.
    pub fn node_lost(&self, before: u64, now: u64) {
        self.node_lost.inc_by(now.saturating_sub(before));
    }

    /// The ring's size and its fullest moment of the last second.
    pub fn ring(&self, size: u32, peak_waiting_bytes: u64) {
        self.ring_size.set(size.into());
        self.ring_fill
            .set((peak_waiting_bytes as f64 / f64::from(size.max(1))).min(1.0));
    }

    /// How old the newest routed event was when routed.
    pub fn consumer_lag(&self, seconds: f64) {
        self.consumer_lag.set(seconds);
    }

    /// Histories on disk, and how many of them are being recorded.
    pub fn histories(&self, kept: usize, live: usize) {
        self.histories.set(kept as i64);
        self.live.set(live as i64);
    }

    /// A container could not be attached to.
    pub fn attach_failed(&self, reason: &'static str) {
        self.attach_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// An Export request was answered with gRPC code `code` ("Ok" once its stream started).
    pub fn export_answered(&self, code: &str) {
        let labels = CodeLabels {
            code: code.to_string(),
        };
        self.export_requests.get_or_create(&labels).inc();
        if code != "Ok" {
            self.export_errors.get_or_create(&labels).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves /metrics and /healthz on `listener` until the process ends.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app).await
}
