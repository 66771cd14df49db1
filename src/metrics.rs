//! Metrics: the Prometheus counters, gauges and histograms the layers keep, and the
//! scrape that gathers them. Each layer builds its set into a [`Registry`] of its own at
//! construction (so tests with several nodes in one process never mix their figures);
//! the admin listener's `/metrics` gathers every node registry and writes them in the
//! Prometheus text format. Imports no layer.
//!
//! On the hot path a counter is one relaxed atomic add and a histogram observation a
//! few: handles are resolved once (labels included) and kept, never looked up per event.

pub use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

/// Latency buckets, seconds: 50 µs to 10 s.
pub const LATENCY: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Size buckets (items in a batch): 1 to 4096.
pub const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Registers `m`; a name used twice in one registry is a programming error.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    if let Err(e) = r.register(Box::new(m.clone())) {
        panic!("metric registered twice: {e}");
    }
    m
}

/// A counter named `name` (which ends in `_total`).
pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric name"))
}

/// A counter with labels.
pub fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let opts = prometheus::Opts::new(name, help);
    register(
        r,
        IntCounterVec::new(opts, labels).expect("valid metric name"),
    )
}

/// A gauge.
pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric name"))
}

/// A gauge with labels.
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let opts = prometheus::Opts::new(name, help);
    register(
        r,
        IntGaugeVec::new(opts, labels).expect("valid metric name"),
    )
}

/// A histogram with `buckets`.
pub fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, Histogram::with_opts(opts).expect("valid metric name"))
}

/// A histogram with labels.
pub fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        r,
        HistogramVec::new(opts, labels).expect("valid metric name"),
    )
}

/// Microseconds since the Unix epoch: when a push was accepted, carried with it across
/// nodes so that a delivery anywhere can tell how long it took.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Seconds since `since_us` ([`now_us`]), never negative (clocks of two nodes differ).
pub fn seconds_since(since_us: u64) -> f64 {
    now_us().saturating_sub(since_us) as f64 / 1e6
}

/// The process's own figures (CPU, memory, open files, start time) and the build.
pub fn process_registry() -> Registry {
    let r = Registry::new();
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    if let Err(e) = r.register(Box::new(pc)) {
        panic!("process metrics registered twice: {e}");
    }
    let info = gauge_vec(
        &r,
        "herald_build_info",
        "The running build: always 1, labelled with its version and commit.",
        &["version", "commit"],
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("BUILD_GIT_COMMIT")])
        .set(1);
    r
}

/// Metric families (from [`Registry::gather`]) in the Prometheus text format (0.0.4).
pub fn encode(mut families: Vec<prometheus::proto::MetricFamily>) -> String {
    use prometheus::Encoder as _;
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    // Writing to a Vec cannot fail; a family the encoder rejects is a programming error
    // that the scrape tests catch.
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
