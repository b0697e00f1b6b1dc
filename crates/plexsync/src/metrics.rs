//! Counters of what this process did, for the daemon's `/metrics`
//! (Prometheus text format, `prometheus-client`). The clients and the
//! pipeline count here; gauges of the queue are read from the store at
//! scrape time by the daemon and handed to [`render`], so they are right
//! whichever process (plugin worker or daemon) delivered.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;

use crate::error::ErrorClass;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    outcome: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    server: String,
    /// The HTTP status, or `error` when no answer came (refused, timeout).
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Server {
    server: String,
}

struct Metrics {
    deliveries: Family<Delivery, Counter>,
    requests: Family<Request, Counter>,
    latency: Family<Server, Histogram>,
    concurrency: Gauge,
}

/// 5 ms … 41 s, doubling: a LAN Plex answers in tens of milliseconds, a
/// busy one in seconds, a hung one at the request timeout.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    deliveries: Family::default(),
    requests: Family::default(),
    latency: Family::new_with_constructor(latency_buckets),
    concurrency: Gauge::default(),
});

/// The adaptive limit of deliveries at once just became `n`.
pub(crate) fn concurrency(n: usize) {
    METRICS.concurrency.set(crate::units::to_i64(n));
}

/// Sends a request to `server` (`plex`, `stash`) and records its status
/// (`error` when no answer came) and how long it took.
pub(crate) async fn timed(
    server: &str,
    send: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) -> reqwest::Result<reqwest::Response> {
    let started = std::time::Instant::now();
    let sent = send.await;
    let status = sent.as_ref().map_or_else(|_| "error".to_string(), |r| r.status().as_u16().to_string());
    METRICS.requests.get_or_create(&Request { server: server.into(), status }).inc();
    METRICS.latency.get_or_create(&Server { server: server.into() }).observe(started.elapsed().as_secs_f64());
    sent
}
/// Serializes scrapes (the registry is rebuilt for each).
static SCRAPE: Mutex<()> = Mutex::new(());

/// One delivery that ended with `outcome`.
pub(crate) fn delivered(outcome: &str) {
    METRICS.deliveries.get_or_create(&Delivery { outcome: outcome.into(), class: String::new() }).inc();
}

/// One delivery that failed with `class`.
pub(crate) fn failed(class: ErrorClass) {
    let label = Delivery { outcome: "failed".into(), class: class.as_str().into() };
    METRICS.deliveries.get_or_create(&label).inc();
}

/// The Prometheus text exposition of this process's counters and the
/// queue's state.
/// The queue as the store holds it at scrape time.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueGauges {
    pub pending: i64,
    /// Waiting rows by the class of their last failure.
    pub by_class: BTreeMap<String, i64>,
    pub dead: i64,
    pub synced: i64,
    pub breaker_open: bool,
    pub last_sync_ms: i64,
    pub last_capture_ms: i64,
}

pub(crate) fn render(stats: &QueueGauges) -> String {
    let _one = SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
    let mut registry = Registry::with_prefix("plexsync");
    registry.register(
        "deliveries",
        "Deliveries by this process, by outcome and failure class",
        METRICS.deliveries.clone(),
    );
    registry.register("requests", "HTTP requests to Plex and Stash, by status", METRICS.requests.clone());
    registry.register("request_duration_seconds", "HTTP request latency to Plex and Stash", METRICS.latency.clone());
    registry.register(
        "delivery_concurrency",
        "Deliveries this process lets run at once (adaptive, capped by plexConcurrency)",
        METRICS.concurrency.clone(),
    );
    let depth = Family::<Class, Gauge>::default();
    let fresh = stats.pending - stats.by_class.values().sum::<i64>();
    depth.get_or_create(&Class { class: "new".into() }).set(fresh.max(0));
    for (class, n) in &stats.by_class {
        depth.get_or_create(&Class { class: class.clone() }).set(*n);
    }
    registry.register("queue_depth", "Scenes waiting, by the class of their last failure (new: not tried yet)", depth);
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    registry.register("dead_letters", "Scenes given up on", gauge(stats.dead));
    registry.register("synced_scenes", "Scenes with a sync record", gauge(stats.synced));
    registry.register(
        "breaker_open",
        "1 while Plex is unreachable and the queue waits",
        gauge(i64::from(stats.breaker_open)),
    );
    let seconds = |ms: i64| gauge(ms / 1000);
    registry.register(
        "last_sync_timestamp_seconds",
        "When a delivery last succeeded (Unix time)",
        seconds(stats.last_sync_ms),
    );
    registry.register(
        "last_capture_timestamp_seconds",
        "When Stash was last asked for changes (Unix time)",
        seconds(stats.last_capture_ms),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
