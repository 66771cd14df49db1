//! Whether the store can write: what its commits and probes last found, for `/readyz`
//! and for the error logged when it stops.

use super::{now_ms, StoreError};

/// Whether the store can write, as its commits (and probes) last found.
#[derive(Debug)]
pub(crate) struct Health {
    pub(super) writable: std::sync::atomic::AtomicBool,
    /// Unix ms of the last commit that succeeded.
    pub(super) last_ok: std::sync::atomic::AtomicU64,
    /// The last probe: when (Unix ms) and its answer. One probe at a time; its answer
    /// serves every readiness check for a second.
    pub(super) probe: tokio::sync::Mutex<(u64, bool)>,
}

impl Health {
    pub(super) fn new() -> Health {
        Health {
            writable: true.into(),
            last_ok: 0.into(),
            probe: tokio::sync::Mutex::new((0, true)),
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
