//! Webhooks: receipts for the backend. The store writes events to its outbox in the
//! transaction that causes them (an ack, a read, the undelivered scan; delivery adds
//! user presence); the sender here claims due events, POSTs each one signed, and
//! removes it once the receiver answers 2xx, or schedules a retry with exponential
//! backoff and jitter, until the event is older than `max_age_secs`.
//!
//! It runs beside pushes, never in their way: a slow or dead receiver only makes the
//! outbox deeper (visible in `/metrics` and `GET /api/v1/webhooks`).

mod client;
mod sign;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

pub use client::{Endpoint, PostError};
pub use sign::signature;

use crate::metrics::{counter, gauge, IntCounter, IntGauge, Registry};
use crate::store::{EventOutcome, HookKind, Hooks, OutboxEvent, OutboxGate, Store, StoreError};
use crate::vocab::now_ms;

/// Webhook settings (`[webhooks]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed, `http://…` or `https://…`. Default empty: no webhooks.
    pub url: String,
    /// Key of the `Herald-Signature` HMAC; required with `url`.
    pub secret: String,
    /// Events to send. Default all: `message.delivered`, `message.read`,
    /// `message.undelivered`, `user.online`, `user.offline`.
    pub events: Vec<String>,
    /// Seconds after which a stored message no device acked is reported
    /// `message.undelivered`. Default 60.
    pub undelivered_after_secs: u64,
    /// Milliseconds a receiver has to answer one event. Default 10,000.
    pub timeout_ms: u64,
    /// An event still failing after this many seconds is given up (logged and counted).
    /// Default 86,400.
    pub max_age_secs: u64,
    /// First retry delay, ms; doubled per failure, with ±50% jitter. Default 1,000.
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms. Default 300,000.
    pub retry_max_ms: u64,
    /// Events in flight at once per node. Default 16.
    pub concurrency: usize,
    /// PEM file of extra CA certificates trusted for an `https` receiver (besides the
    /// built-in web roots). Default none.
    pub ca_file: String,
    /// Most events waiting in the outbox (cluster-wide); while it is this full, new
    /// events are not written (counted in `herald_webhooks_skipped_total`). Checked once
    /// a second. Default 1,000,000.
    pub max_outbox: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            events: HookKind::ALL
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            undelivered_after_secs: 60,
            timeout_ms: 10_000,
            max_age_secs: 86_400,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            concurrency: 16,
            ca_file: String::new(),
            max_outbox: 1_000_000,
        }
    }
}

/// A webhook setting that cannot work, named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("webhooks.url: {0}")]
    Url(String),
    #[error("webhooks.secret must not be empty when webhooks.url is set")]
    Secret,
    #[error("webhooks.events: unknown event `{0}` (known: message.delivered, message.read, message.undelivered, user.online, user.offline)")]
    Event(String),
    #[error("webhooks.{0} must be positive")]
    Zero(&'static str),
    #[error("webhooks.events is empty: list the events to send, or leave it out for all")]
    NoEvents,
    #[error("webhooks.retry_initial_ms ({0}) is above webhooks.retry_max_ms ({1})")]
    Retry(u64, u64),
    #[error("webhooks.ca_file: {0}")]
    Ca(String),
}

impl WebhookConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The events asked for, each checked.
    pub fn kinds(&self) -> Result<Vec<HookKind>, ConfigError> {
        self.events
            .iter()
            .map(|e| HookKind::parse(e).ok_or_else(|| ConfigError::Event(e.clone())))
            .collect()
    }

    /// Checks what the types alone cannot; `Ok` for no webhooks at all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kinds()?;
        if !self.enabled() {
            return Ok(());
        }
        if self.events.is_empty() {
            return Err(ConfigError::NoEvents);
        }
        Endpoint::parse(&self.url)?;
        if self.secret.is_empty() {
            return Err(ConfigError::Secret);
        }
        for (name, v) in [
            ("timeout_ms", self.timeout_ms),
            ("max_age_secs", self.max_age_secs),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("undelivered_after_secs", self.undelivered_after_secs),
            ("concurrency", self.concurrency as u64),
            ("max_outbox", self.max_outbox),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err(ConfigError::Retry(self.retry_initial_ms, self.retry_max_ms));
        }
        Ok(())
    }

    /// Which receipts the store writes itself.
    pub fn store_hooks(&self) -> Hooks {
        let kinds = if self.enabled() {
            self.kinds().unwrap_or_default()
        } else {
            Vec::new()
        };
        Hooks {
            delivered: kinds.contains(&HookKind::Delivered),
            read: kinds.contains(&HookKind::Read),
            gate: Arc::default(),
        }
    }

    /// Whether `kind` is sent.
    pub fn wants(&self, kind: HookKind) -> bool {
        self.enabled() && self.kinds().is_ok_and(|k| k.contains(&kind))
    }
}

/// What the sender has done since start, and the outbox (for `/metrics`).
#[derive(Debug)]
pub struct WebhookMetrics {
    pub registry: Registry,
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
    /// Mirrors `gate.skipped()` at each scrape.
    skipped: IntCounter,
    /// The outbox (cluster-wide), read from the store at each scrape.
    depth: IntGauge,
    failing: IntGauge,
    oldest_seconds: IntGauge,
    /// The outbox's gate: events not written while it was full.
    pub gate: Arc<OutboxGate>,
}

impl WebhookMetrics {
    pub fn new(gate: Arc<OutboxGate>) -> WebhookMetrics {
        let r = Registry::new();
        WebhookMetrics {
            sent: counter(
                &r,
                "herald_webhooks_sent_total",
                "Webhook events the receiver took (2xx).",
            ),
            failed: counter(
                &r,
                "herald_webhooks_failed_total",
                "Webhook attempts that failed (retried later).",
            ),
            dropped: counter(
                &r,
                "herald_webhooks_dropped_total",
                "Webhook events given up after webhooks.max_age_secs.",
            ),
            skipped: counter(
                &r,
                "herald_webhooks_skipped_total",
                "Webhook events not stored because the outbox was full (webhooks.max_outbox).",
            ),
            depth: gauge(
                &r,
                "herald_webhooks_outbox_depth",
                "Webhook events waiting to be sent (cluster-wide).",
            ),
            failing: gauge(
                &r,
                "herald_webhooks_outbox_failing",
                "Waiting webhook events that failed at least once (cluster-wide).",
            ),
            oldest_seconds: gauge(
                &r,
                "herald_webhooks_outbox_oldest_seconds",
                "Age of the oldest waiting webhook event.",
            ),
            registry: r,
            gate,
        }
    }

    /// Brings the figures read rather than counted up to date, before a scrape.
    pub async fn refresh(&self, store: &Store) {
        self.skipped
            .inc_by(self.gate.skipped().saturating_sub(self.skipped.get()));
        if let Ok(o) = store.outbox().await {
            self.depth.set(o.depth as i64);
            self.failing.set(o.failing as i64);
            let age = o
                .oldest_at
                .map_or(0, |at| crate::vocab::now_ms().saturating_sub(at) / 1000);
            self.oldest_seconds.set(age as i64);
        }
    }
}

/// Failure warnings are logged at most this often; the rest are counted into the next.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Claims and sends events until the store closes.
pub struct Sender {
    store: Store,
    endpoint: Endpoint,
    config: WebhookConfig,
    metrics: Arc<WebhookMetrics>,
    /// When a failure was last logged as a warning, and failures since.
    warned: parking_lot::Mutex<(Option<tokio::time::Instant>, u64)>,
}

/// How often an idle sender looks for due events.
const POLL: Duration = Duration::from_millis(200);

impl Sender {
    pub fn new(
        store: Store,
        config: WebhookConfig,
        metrics: Arc<WebhookMetrics>,
    ) -> Result<Sender, ConfigError> {
        let endpoint = Endpoint::parse(&config.url)?.with_ca_file(&config.ca_file)?;
        Ok(Sender {
            store,
            endpoint,
            config,
            metrics,
            warned: parking_lot::Mutex::new((None, 0)),
        })
    }

    /// Sends due events, `concurrency` at a time, until the store closes.
    pub async fn run(self) {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        // Long enough that a send still running is never claimed by another node.
        let lease = self
            .config
            .timeout_ms
            .saturating_mul(2)
            .saturating_add(5_000);
        let limit = self.config.concurrency.saturating_mul(4).max(1);
        let mut checked: Option<tokio::time::Instant> = None;
        loop {
            if checked.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                checked = Some(tokio::time::Instant::now());
                self.watch_depth().await;
            }
            let events = match self.store.claim_events(limit, lease).await {
                Ok(e) => e,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable; retrying");
                    tokio::time::sleep(POLL * 5).await;
                    continue;
                }
            };
            let full = events.len() == limit;
            futures_util::stream::iter(events)
                .for_each_concurrent(self.config.concurrency, |event| self.send(event, timeout))
                .await;
            if !full {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Closes the outbox's gate while it holds `max_outbox` events, and opens it again.
    async fn watch_depth(&self) {
        let Ok(stats) = self.store.outbox().await else {
            return;
        };
        let full = stats.depth >= self.config.max_outbox;
        if self.metrics.gate.set_full(full) {
            if full {
                tracing::warn!(
                    depth = stats.depth,
                    "webhook outbox full (webhooks.max_outbox): new events are not stored until it drains"
                );
            } else {
                tracing::info!(
                    depth = stats.depth,
                    skipped = self.metrics.gate.skipped(),
                    "webhook outbox takes events again"
                );
            }
        }
    }

    /// Logs a failure as a warning at most every [`WARN_EVERY`], with the count since.
    fn failed(&self, event: &OutboxEvent, error: &PostError, retry_in_ms: u64) {
        let mut warned = self.warned.lock();
        let due = warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            let more = std::mem::take(&mut warned.1);
            warned.0 = Some(tokio::time::Instant::now());
            drop(warned);
            tracing::warn!(id = %event.id, kind = %event.kind, attempts = event.attempts + 1, %error, retry_in_ms, failures_since_last_warning = more, "webhook failed; will retry");
        } else {
            warned.1 += 1;
            drop(warned);
            tracing::debug!(id = %event.id, attempts = event.attempts + 1, %error, "webhook failed; will retry");
        }
    }

    async fn send(&self, event: OutboxEvent, timeout: Duration) {
        let now = now_ms();
        if now.saturating_sub(event.created_at) > self.config.max_age_secs.saturating_mul(1000) {
            tracing::warn!(
                id = %event.id,
                kind = %event.kind,
                attempts = event.attempts,
                "webhook event given up: still failing after webhooks.max_age_secs"
            );
            self.metrics.dropped.inc();
            return self.store.settle_event(event.id, EventOutcome::Dropped);
        }
        let t = now / 1000;
        let headers = [
            ("Herald-Event-Id", event.id.clone()),
            (
                "Herald-Signature",
                signature(&self.config.secret, t, &event.body),
            ),
        ];
        match self
            .endpoint
            .post(event.body.as_bytes(), &headers, timeout)
            .await
        {
            Ok(()) => {
                self.metrics.sent.inc();
                self.store.settle_event(event.id, EventOutcome::Sent);
            }
            Err(e) => {
                self.metrics.failed.inc();
                let delay = backoff(
                    event.attempts,
                    self.config.retry_initial_ms,
                    self.config.retry_max_ms,
                );
                self.failed(&event, &e, delay);
                self.store.settle_event(
                    event.id,
                    EventOutcome::Retry {
                        next_at: now_ms().saturating_add(delay),
                        error: e.to_string(),
                    },
                );
            }
        }
    }
}

/// The delay before attempt `attempts + 1`: `initial · 2^attempts`, at most `max`, then
/// scaled by a random factor in [0.5, 1.5) so that failed events do not retry in step.
pub fn backoff(attempts: u32, initial: u64, max: u64) -> u64 {
    let base = initial
        .saturating_mul(1u64.checked_shl(attempts.min(40)).unwrap_or(u64::MAX))
        .min(max);
    let jitter: f64 = rand::random::<f64>() + 0.5;
    ((base as f64) * jitter) as u64
}

/// Runs the undelivered scan every second until the store closes: copies stored more
/// than `after` ago that no device acked become `message.undelivered`.
pub async fn scan_undelivered(store: Store, after: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let upto = now_ms().saturating_sub(after.as_millis() as u64);
        match store.scan_undelivered(upto).await {
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "undelivered scan failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for _ in 0..100 {
            let first = backoff(0, 1000, 300_000);
            assert!((500..1500).contains(&first), "{first}");
            let third = backoff(2, 1000, 300_000);
            assert!((2000..6000).contains(&third), "{third}");
            let capped = backoff(30, 1000, 300_000);
            assert!((150_000..450_000).contains(&capped), "{capped}");
            let huge = backoff(u32::MAX, u64::MAX, u64::MAX);
            assert!(huge > 0);
        }
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let ok = WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s".into(),
            ..WebhookConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut WebhookConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.url = "ftp://x/".into()).contains("webhooks.url"));
        assert!(bad(|c| c.events.clear()).contains("webhooks.events is empty"));
        assert!(bad(|c| c.max_outbox = 0).contains("webhooks.max_outbox"));
        assert!(bad(|c| {
            c.retry_initial_ms = 10_000;
            c.retry_max_ms = 10;
        })
        .contains("retry_initial_ms (10000) is above"));
        assert!(bad(|c| c.url = "127.0.0.1:80".into()).contains("webhooks.url"));
        assert!(bad(|c| c.secret.clear()).contains("webhooks.secret"));
        assert!(bad(|c| c.events = vec!["message.sent".into()]).contains("`message.sent`"));
        assert!(bad(|c| c.timeout_ms = 0).contains("webhooks.timeout_ms"));
        // Unknown events are refused even with webhooks off: the typo would bite later.
        let off = WebhookConfig {
            events: vec!["user.onlin".into()],
            ..WebhookConfig::default()
        };
        assert!(off.validate().is_err());
        assert_eq!(WebhookConfig::default().validate(), Ok(()));
    }

    #[test]
    fn store_hooks_follow_the_events() {
        let c = WebhookConfig {
            url: "http://127.0.0.1:9/".into(),
            secret: "s".into(),
            events: vec!["message.read".into()],
            ..WebhookConfig::default()
        };
        let h = c.store_hooks();
        assert_eq!((h.delivered, h.read), (false, true));
        let off = WebhookConfig::default().store_hooks();
        assert_eq!((off.delivered, off.read), (false, false));
    }
}
