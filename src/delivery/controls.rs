//! Server-side controls of a user, cluster-wide: disconnect every connection, refuse
//! tokens issued before a moment (logout everywhere, a banned account), erase what is
//! stored for them.
//!
//! Revocations are stored (so they outlive a restart and reach every node sharing the
//! store) and kept in memory on every node, so that checking one at connect costs a
//! map lookup, never a store read. A node learns of a new one from the broker at once,
//! and reloads them all after a broker outage.

use std::collections::HashMap;
use std::sync::Arc;

use super::Delivery;
use crate::broker::Inbound;
use crate::metrics::{counter_vec, IntCounterVec, Registry};
use crate::store::StoreError;
use crate::vocab::now_ms;

/// Revocations in force on this node: user → (tokens issued before this Unix second are
/// refused, Unix ms at which it was set).
#[derive(Debug, Default)]
pub(super) struct Revoked {
    by_user: parking_lot::RwLock<HashMap<String, (u64, u64)>>,
    /// How long a revocation stands, ms (`auth.revocation_ttl_secs`).
    keep_ms: std::sync::atomic::AtomicU64,
}

/// Delivery's metrics.
#[derive(Debug)]
pub struct DeliveryMetrics {
    pub registry: Registry,
    /// Client connects refused, by reason.
    pub connects_refused: IntCounterVec,
    /// Connections ended by a server-side control, by control.
    pub kicked: IntCounterVec,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        let r = Registry::new();
        let m = DeliveryMetrics {
            connects_refused: counter_vec(
                &r,
                "herald_client_connects_refused_total",
                "Socket.IO connects refused, by reason (missing_token, expired, invalid_token, bad_user, not_configured, revoked, bad_request, too_many_connections).",
                &["reason"],
            ),
            kicked: counter_vec(
                &r,
                "herald_connections_kicked_total",
                "Connections ended by DELETE /api/v1/users/{id}/connections (on any node), on this node.",
                &["revoked"],
            ),
            registry: r,
        };
        for reason in REFUSALS {
            m.connects_refused.with_label_values(&[reason]);
        }
        for revoked in ["true", "false"] {
            m.kicked.with_label_values(&[revoked]);
        }
        m
    }
}

/// The reasons of `herald_client_connects_refused_total`.
pub(super) const REFUSALS: [&str; 8] = [
    "missing_token",
    "expired",
    "invalid_token",
    "bad_user",
    "not_configured",
    "revoked",
    "bad_request",
    "too_many_connections",
];

/// What disconnecting a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kicked {
    /// Connections ended on this node (the other nodes end theirs as they hear of it).
    pub disconnected: usize,
    /// Tokens issued before this Unix second are refused, if a revocation was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<u64>,
}

impl Delivery {
    /// How long revocations stand (default 30 days).
    pub fn keep_revocations(&self, secs: u64) {
        self.revoked.keep_ms.store(
            secs.saturating_mul(1000),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn keep_ms(&self) -> u64 {
        match self
            .revoked
            .keep_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => 30 * 86_400_000,
            ms => ms,
        }
    }

    /// Reads the revocations in force from the store (at start, and after the broker
    /// was away and may have missed some).
    pub async fn load_revocations(&self) -> Result<usize, StoreError> {
        let since = now_ms().saturating_sub(self.keep_ms());
        let all = self.store.revocations(since).await?;
        let mut map = HashMap::with_capacity(all.len());
        for r in all {
            map.insert(r.user, (r.before, r.at));
        }
        let n = map.len();
        *self.revoked.by_user.write() = map;
        Ok(n)
    }

    /// Whether a token of `user` issued at `issued` (Unix seconds; `None`: no `iat`
    /// claim, counted as issued before any revocation) is refused.
    pub fn is_revoked(&self, user: &str, issued: Option<u64>) -> bool {
        let map = self.revoked.by_user.read();
        let Some(&(before, at)) = map.get(user) else {
            return false;
        };
        if now_ms().saturating_sub(at) > self.keep_ms() {
            return false;
        }
        issued.is_none_or(|iat| iat < before)
    }

    /// Disconnects every connection of `user`, on every node; with `revoke_before`,
    /// also refuses their tokens issued before that Unix second from now on (stored
    /// first: if the store fails, nothing is done).
    pub async fn disconnect_user(
        self: &Arc<Self>,
        user: &str,
        revoke_before: Option<u64>,
    ) -> Result<Kicked, StoreError> {
        let revoked_before = match revoke_before {
            Some(before) => Some(self.store.revoke(user, before, self.keep_ms()).await?),
            None => None,
        };
        self.broker.kick(user, revoked_before);
        let disconnected = self.kick_here(user, revoked_before);
        Ok(Kicked {
            disconnected,
            revoked_before,
        })
    }

    /// Erases what is stored for `user`; their connections are not touched.
    pub async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        self.store.erase_user(user).await
    }

    /// Records a revocation (if any) and ends `user`'s connections on this node: each
    /// is told it was disconnected by the server (Socket.IO clients then stay away),
    /// then its transport closes once that is flushed.
    pub(super) fn kick_here(&self, user: &str, revoked_before: Option<u64>) -> usize {
        if let Some(before) = revoked_before {
            let mut map = self.revoked.by_user.write();
            let entry = map.entry(user.to_owned()).or_insert((0, 0));
            *entry = (entry.0.max(before), now_ms());
        }
        let sockets = self.hub.user_sockets(user);
        for socket in &sockets {
            socket.disconnect();
            socket.session().disconnect();
        }
        self.metrics
            .kicked
            .with_label_values(&[if revoked_before.is_some() {
                "true"
            } else {
                "false"
            }])
            .inc_by(sockets.len() as u64);
        sockets.len()
    }

    /// An order from another node.
    pub(super) fn kicked_elsewhere(self: &Arc<Self>, event: Inbound) {
        if let Inbound::Kick {
            user,
            revoke_before,
        } = event
        {
            self.kick_here(&user, revoke_before);
        }
    }
}
