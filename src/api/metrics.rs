//! `/metrics` (on the admin listener): every layer's metrics, after bringing up to date
//! the few figures that are read rather than counted (connections by transport, users,
//! the webhook outbox). Also the admin page's live figures, from the same metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use prometheus::proto::{MetricFamily, MetricType};

use super::service::ApiMetrics;
use super::ApiState;
use crate::metrics::{gauge, IntGauge, Registry};

/// Every registry of a node, and the node-wide gauges set at each scrape.
#[derive(Debug)]
pub struct NodeMetrics {
    /// The layers' registries (transport, hub, delivery, push, store, cluster, webhooks)
    /// and the process's.
    registries: Vec<Registry>,
    own: Registry,
    users: IntGauge,
    anonymous: IntGauge,
    /// Counted by the public listener's HTTP service.
    pub api: Arc<ApiMetrics>,
}

impl NodeMetrics {
    pub fn new(mut registries: Vec<Registry>) -> NodeMetrics {
        let own = Registry::new();
        let api = Arc::new(ApiMetrics::default());
        registries.push(api.registry.clone());
        registries.push(crate::metrics::process_registry());
        NodeMetrics {
            registries,
            users: gauge(
                &own,
                "herald_users",
                "Signed-in users with a connection on this node.",
            ),
            anonymous: gauge(
                &own,
                "herald_anonymous_connections",
                "Connections admitted without credentials (auth.anonymous): broadcasts only.",
            ),
            own,
            api,
        }
    }

    /// Every metric family, with the read figures brought up to date.
    async fn gather(&self, state: &ApiState) -> Vec<MetricFamily> {
        state.engine.count_connections();
        self.users.set(state.hub.users() as i64);
        self.anonymous.set(state.hub.anonymous() as i64);
        if let Some(w) = &state.webhooks {
            w.refresh(&state.store).await;
        }
        let mut families = self.own.gather();
        for r in &self.registries {
            families.extend(r.gather());
        }
        families
    }

    /// The text of a scrape.
    pub async fn render(&self, state: &ApiState) -> String {
        crate::metrics::encode(self.gather(state).await)
    }
}

/// `GET /metrics`.
pub(super) async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let text = state.metrics.render(&state).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// The sum of a counter's or gauge's samples (every label set).
fn sum(families: &[MetricFamily], name: &str) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            let kind = f.get_field_type();
            f.get_metric().iter().map(move |m| match kind {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => 0.0,
            })
        })
        .sum()
}

/// A histogram's cumulative bucket counts (summed over label sets) and upper bounds.
fn buckets(families: &[MetricFamily], name: &str) -> serde_json::Value {
    let mut le = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let h = m.get_histogram();
            for (i, b) in h.get_bucket().iter().enumerate() {
                if le.len() <= i {
                    le.push(b.upper_bound());
                    counts.push(0);
                }
                counts[i] += b.cumulative_count();
            }
        }
    }
    serde_json::json!({ "le": le, "counts": counts })
}

/// `GET /admin/api/stats`: the figures the admin page charts, as totals; the page
/// turns them into rates and percentiles between two polls.
pub(super) async fn stats(State(state): State<ApiState>) -> impl IntoResponse {
    let f = state.metrics.gather(&state).await;
    let errors = [
        "herald_store_errors_total",
        "herald_redis_errors_total",
        "herald_redis_publish_failures_total",
        "herald_delivery_failures_total",
        "herald_protocol_errors_total",
        "herald_webhooks_failed_total",
    ]
    .iter()
    .map(|n| sum(&f, n))
    .sum::<f64>();
    Json(serde_json::json!({
        "at": crate::vocab::now_ms(),
        "connections": sum(&f, "herald_connections"),
        "users": sum(&f, "herald_users"),
        "anonymous": sum(&f, "herald_anonymous_connections"),
        "pushes": sum(&f, "herald_pushes_total"),
        "deliveries": sum(&f, "herald_deliveries_total"),
        "refused": sum(&f, "herald_client_connects_refused_total") + sum(&f, "herald_pushes_refused_total"),
        "errors": errors,
        "delivery": buckets(&f, "herald_delivery_seconds"),
        "commit": buckets(&f, "herald_store_commit_seconds"),
        "rss": sum(&f, "process_resident_memory_bytes"),
        "cpu": sum(&f, "process_cpu_seconds_total"),
    }))
}
