//! `/metrics`: counters and gauges in the Prometheus text format.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::{authorize, ApiError, ApiState};

/// Counters in the Prometheus text format.
pub(super) async fn metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let t = state.engine.metrics();
    let h = &state.hub.metrics;
    let mut out = String::new();
    let mut line = |name: &str, help: &str, kind: &str, v: u64| {
        out.push_str(&format!(
            "# HELP herald_{name} {help}\n# TYPE herald_{name} {kind}\nherald_{name} {v}\n"
        ));
    };
    line(
        "sessions",
        "Open Engine.IO sessions.",
        "gauge",
        state.engine.sessions() as u64,
    );
    line(
        "users",
        "Users with a connection on this node.",
        "gauge",
        state.hub.users() as u64,
    );
    line(
        "anonymous_connections",
        "Connections admitted without credentials (auth.anonymous): broadcasts only.",
        "gauge",
        state.hub.anonymous() as u64,
    );
    line(
        "sessions_opened_total",
        "Sessions opened.",
        "counter",
        t.sessions_opened.get(),
    );
    line(
        "sessions_closed_total",
        "Sessions closed.",
        "counter",
        t.sessions_closed.get(),
    );
    line(
        "connections_refused_total",
        "Connections refused at max_connections.",
        "counter",
        t.connections_refused.get(),
    );
    line(
        "connections_refused_per_ip_total",
        "Connections refused at max_connections_per_ip.",
        "counter",
        t.connections_refused_per_ip.get(),
    );
    line(
        "handshakes_refused_total",
        "Handshakes refused at max_handshakes_per_ip_per_sec.",
        "counter",
        t.handshakes_refused.get(),
    );
    line(
        "request_timeouts_total",
        "Requests whose head or body, or responses, did not arrive in time.",
        "counter",
        t.request_timeouts.get(),
    );
    line(
        "protocol_errors_total",
        "Connections ended for a protocol violation.",
        "counter",
        t.protocol_errors.get(),
    );
    line(
        "queue_overflow_drops_total",
        "Messages dropped at a full client queue.",
        "counter",
        t.queue_overflow_drops.get(),
    );
    line(
        "queue_overflow_disconnects_total",
        "Clients disconnected at a full queue.",
        "counter",
        t.queue_overflow_disconnects.get(),
    );
    line(
        "deliveries_total",
        "Packets queued to sockets by pushes.",
        "counter",
        h.deliveries.get(),
    );
    line(
        "delivery_failures_total",
        "Pushes not queued to a socket.",
        "counter",
        h.delivery_failures.get(),
    );
    if let Some(c) = &state.cluster {
        let m = c.metrics();
        line("cluster_up", "Redis reachable.", "gauge", c.is_up() as u64);
        line(
            "cluster_published_total",
            "Messages published to Redis.",
            "counter",
            m.published.get(),
        );
        line(
            "cluster_received_total",
            "Messages received from Redis.",
            "counter",
            m.received.get(),
        );
        line(
            "cluster_publish_failures_total",
            "Publishes lost while Redis was away.",
            "counter",
            m.publish_failures.get(),
        );
        line(
            "cluster_connects_total",
            "Connections to Redis made.",
            "counter",
            m.connects.get(),
        );
    }
    if let Some(m) = &state.webhooks {
        use std::sync::atomic::Ordering::Relaxed;
        line(
            "webhooks_sent_total",
            "Webhook events the receiver took (2xx).",
            "counter",
            m.sent.load(Relaxed),
        );
        line(
            "webhooks_failed_total",
            "Webhook attempts that failed (retried later).",
            "counter",
            m.failed.load(Relaxed),
        );
        line(
            "webhooks_skipped_total",
            "Webhook events not stored because the outbox was full (webhooks.max_outbox).",
            "counter",
            m.gate.skipped(),
        );
        line(
            "webhooks_dropped_total",
            "Webhook events given up after webhooks.max_age_secs.",
            "counter",
            m.dropped.load(Relaxed),
        );
        // The outbox is shared by the cluster: every node reports the same depth.
        if let Ok(o) = state.store.outbox().await {
            line(
                "webhooks_outbox_depth",
                "Webhook events waiting to be sent (cluster-wide).",
                "gauge",
                o.depth,
            );
            line(
                "webhooks_outbox_failing",
                "Waiting webhook events that failed at least once (cluster-wide).",
                "gauge",
                o.failing,
            );
            let age = o
                .oldest_at
                .map_or(0, |at| crate::vocab::now_ms().saturating_sub(at) / 1000);
            line(
                "webhooks_outbox_oldest_seconds",
                "Age of the oldest waiting webhook event.",
                "gauge",
                age,
            );
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
