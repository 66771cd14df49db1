//! Whether the store can write: what its commits and probes last found, for `/readyz`
//! and for the error logged when it stops; and the writer's figures, for `/metrics`.

use super::{now_ms, StoreError};
use crate::metrics::{counter, histogram, Histogram, IntCounter, Registry, LATENCY, SIZES};

/// The store's metrics.
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    pub(crate) registry: Registry,
    /// One batch's transaction, from its first statement to its commit (fsync included).
    pub(crate) commit_seconds: Histogram,
    /// Operations committed together.
    pub(crate) batch_size: Histogram,
    /// Batches that failed to commit.
    pub(crate) errors: IntCounter,
    /// Connections to PostgreSQL made again after one broke.
    pub(crate) reconnects: IntCounter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let r = Registry::new();
        StoreMetrics {
            commit_seconds: histogram(
                &r,
                "herald_store_commit_seconds",
                "One group commit of the store's writer, first statement to commit.",
                LATENCY,
            ),
            batch_size: histogram(
                &r,
                "herald_store_batch_size",
                "Operations (pushes, acks, reads, ...) committed in one transaction.",
                SIZES,
            ),
            errors: counter(
                &r,
                "herald_store_errors_total",
                "Store transactions that failed (their callers got 503).",
            ),
            reconnects: counter(
                &r,
                "herald_store_reconnects_total",
                "Connections to PostgreSQL made again after one broke.",
            ),
            registry: r,
        }
    }
}

impl StoreMetrics {
    /// Records one batch of `ops` operations whose transaction began at `started`.
    pub(super) fn batch(&self, ops: usize, started: std::time::Instant) {
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.batch_size.observe(ops as f64);
    }
}

/// Whether the store can write, as its commits (and probes) last found.
#[derive(Debug)]
pub(crate) struct Health {
    pub(super) writable: std::sync::atomic::AtomicBool,
    /// Unix ms of the last commit that succeeded.
    pub(super) last_ok: std::sync::atomic::AtomicU64,
    /// The last probe: when (Unix ms) and its answer. One probe at a time; its answer
    /// serves every readiness check for a second.
    pub(super) probe: tokio::sync::Mutex<(u64, bool)>,
    pub(crate) metrics: StoreMetrics,
}

impl Health {
    pub(super) fn new() -> Health {
        Health {
            writable: true.into(),
            last_ok: 0.into(),
            probe: tokio::sync::Mutex::new((0, true)),
            metrics: StoreMetrics::default(),
        }
    }

    pub(super) fn ok(&self) {
        use std::sync::atomic::Ordering;
        self.last_ok.store(now_ms(), Ordering::Relaxed);
        if !self.writable.swap(true, Ordering::Relaxed) {
            tracing::info!("the store writes again; pushes are accepted");
        }
    }

    pub(super) fn failed(&self, err: &StoreError) {
        use std::sync::atomic::Ordering;
        self.metrics.errors.inc();
        if self.writable.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %err, "the store cannot write: pushes are refused (503) and /readyz fails until it can");
        } else {
            tracing::error!(error = %err, "store commit failed");
        }
    }
}

/// How long a probe's answer (or a commit's success) stands for readiness checks.
pub(super) const PROBE_FRESH_MS: u64 = 1000;
/// How long a probe may take before the store counts as unable to write.
pub(super) const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
