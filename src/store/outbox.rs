//! The webhook outbox: receipts for the backend, written in the same transaction as what
//! they report (an ack, a read), so an event is stored exactly when its cause is, and
//! sent at least once from here by whichever node claims it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::StoreError;

/// The kinds of webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HookKind {
    /// A stored message's first ack from any device of a recipient.
    #[serde(rename = "message.delivered")]
    Delivered,
    /// A recipient's read position passed a stored message.
    #[serde(rename = "message.read")]
    Read,
    /// No device of a recipient acked a stored message in time.
    #[serde(rename = "message.undelivered")]
    Undelivered,
    /// A user's first connection in the cluster.
    #[serde(rename = "user.online")]
    Online,
    /// A user's last connection in the cluster is gone.
    #[serde(rename = "user.offline")]
    Offline,
}

impl HookKind {
    pub const ALL: [HookKind; 5] = [
        HookKind::Delivered,
        HookKind::Read,
        HookKind::Undelivered,
        HookKind::Online,
        HookKind::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Delivered => "message.delivered",
            HookKind::Read => "message.read",
            HookKind::Undelivered => "message.undelivered",
            HookKind::Online => "user.online",
            HookKind::Offline => "user.offline",
        }
    }

    pub fn parse(s: &str) -> Option<HookKind> {
        HookKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which events the store itself writes to the outbox as part of an ack or a read
/// (none unless webhooks are configured for them), and whether the outbox takes more.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub delivered: bool,
    pub read: bool,
    /// Closed while the outbox is full; shared with the sender, which watches its depth.
    pub gate: Arc<OutboxGate>,
}

/// Whether new events may enter the outbox (`webhooks.max_outbox`), and how many did
/// not because it was full.
#[derive(Debug, Default)]
pub struct OutboxGate {
    full: AtomicBool,
    skipped: AtomicU64,
}

impl OutboxGate {
    /// Whether `n` new events may be written; if not, they are counted as skipped.
    pub fn admit(&self, n: u64) -> bool {
        if self.full.load(Ordering::Relaxed) {
            self.skipped.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Marks the outbox full or not; returns whether that changed.
    pub fn set_full(&self, full: bool) -> bool {
        self.full.swap(full, Ordering::Relaxed) != full
    }

    /// Events not written since start because the outbox was full.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// An event claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: String,
    pub kind: String,
    /// The JSON body, exactly as POSTed.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub created_at: u64,
}

/// How the outbox stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStats {
    /// Events waiting to be sent.
    pub depth: u64,
    /// Of those, events that failed at least once.
    pub failing: u64,
    /// When the oldest waiting event was created, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_at: Option<u64>,
}

/// A new event: its id and the body to POST, `{"id", "type", "ts", "data"}`.
pub(crate) fn event(kind: HookKind, ts: u64, data: serde_json::Value) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let body = serde_json::json!({"id": id, "type": kind.as_str(), "ts": ts, "data": data});
    (id, body.to_string())
}

/// `message.delivered`: a recipient's copy was first acked, by `device`.
pub(crate) fn delivered(
    message: &str,
    user: &str,
    seq: u64,
    device: Option<&str>,
    at: u64,
) -> (String, String) {
    event(
        HookKind::Delivered,
        at,
        serde_json::json!({"messageId": message, "user": user, "seq": seq, "device": device, "deliveredAt": at}),
    )
}

/// `message.read`: a recipient's read position passed their copy.
pub(crate) fn read(message: &str, user: &str, seq: u64, at: u64) -> (String, String) {
    event(
        HookKind::Read,
        at,
        serde_json::json!({"messageId": message, "user": user, "seq": seq, "readAt": at}),
    )
}

/// `message.undelivered`: no device acked a copy within the configured time.
pub(crate) fn undelivered(
    message: &str,
    user: &str,
    seq: u64,
    stored_at: u64,
    now: u64,
) -> (String, String) {
    event(
        HookKind::Undelivered,
        now,
        serde_json::json!({"messageId": message, "user": user, "seq": seq, "storedAt": stored_at}),
    )
}

/// Outbox operations, run by the store's writer (claims and results are writes).
pub(crate) enum HookOp {
    /// Adds an event (user presence, from delivery).
    Add {
        kind: HookKind,
        at: u64,
        data: serde_json::Value,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Claims up to `limit` due events for `lease_ms`: no other node sends them meanwhile.
    Claim {
        now: u64,
        lease_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<OutboxEvent>, StoreError>>,
    },
    /// The receiver took the event: removed.
    Sent { id: String },
    /// The event is given up (too old): removed.
    Dropped { id: String },
    /// The receiver failed: tried again at `next_at`.
    Failed {
        id: String,
        next_at: u64,
        error: String,
    },
    /// Adds `message.undelivered` for each copy stored up to `upto` (ms) that no device
    /// acked, past the cluster-wide watermark of the last scan; returns how many.
    ScanUndelivered {
        upto: u64,
        now: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// Name of the watermark row of the undelivered scan.
pub(crate) const UNDELIVERED_MARK: &str = "undelivered";
