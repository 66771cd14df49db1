//! The durable inbox: every message to a user gets the next per-user sequence number and
//! is kept until retention removes it; read state, delivery state, device positions and
//! idempotency keys live here too.
//!
//! Two backends behind one type: SQLite, embedded (the default; `:memory:` gives the
//! in-memory twin for tests), and PostgreSQL for clusters. Writes go through one writer
//! per node that commits whatever is waiting in one transaction (group commit), and
//! publishes committed messages, in commit order, to the node's dispatcher.

mod health;
mod outbox;
mod postgres;
mod sqlite;

pub(crate) use outbox::HookOp;
pub use outbox::{HookKind, Hooks, OutboxEvent, OutboxGate, OutboxStats};

use health::{Health, PROBE_FRESH_MS, PROBE_TIMEOUT};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Registry;
pub use crate::vocab::{now_ms, StoredMessage};
use crate::vocab::{Message, Target};

/// Store settings (`[store]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://…` to use PostgreSQL; empty for the embedded SQLite store in
    /// `data_dir`. Default empty.
    pub url: String,
    /// Directory of the embedded store. Default `./herald-data`.
    pub data_dir: String,
    /// Most operations committed in one transaction. Default 1024.
    pub max_batch: usize,
    /// SQLite: how long the writer waits for more operations before a commit, µs, so
    /// that more share its `fsync` and page writes (added to a durable push's latency).
    /// Default 0.
    pub commit_delay_us: u64,
    /// Messages older than this are removed, seconds. Default 30 days.
    pub retention_max_age_secs: u64,
    /// Most messages kept per user; older ones are removed first. Default 10,000.
    pub retention_max_messages: u64,
    /// Seconds between retention sweeps. Default 60.
    pub sweep_interval_secs: u64,
    /// Largest page of `GET /users/{id}/messages`. Default 1000.
    pub max_page: usize,
    /// A page of stored messages ends once their data passes this many bytes (it holds
    /// at least one message). Default 4 MiB.
    pub max_page_bytes: usize,
    /// Device positions kept per user. A new device past this takes the place of the
    /// one furthest behind (which, if it comes back, starts again from that moment).
    /// Default 1000.
    pub max_devices_per_user: u64,
    /// SQLite: `full` fsyncs every commit (survives power loss), `normal` only
    /// checkpoints (survives a crashed process). Default `full`.
    pub sqlite_sync: SqliteSync,
    /// Which receipts the store writes to the webhook outbox (set from `[webhooks]`).
    #[serde(skip)]
    pub hooks: Hooks,
}

/// How SQLite makes a commit durable (`store.sqlite_sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every commit is fsynced: it survives a power loss.
    #[default]
    Full,
    /// Only checkpoints are fsynced: a commit survives a crashed process, not a power
    /// loss.
    Normal,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: String::new(),
            data_dir: "./herald-data".into(),
            max_batch: 1024,
            commit_delay_us: 0,
            retention_max_age_secs: 30 * 86_400,
            retention_max_messages: 10_000,
            sweep_interval_secs: 60,
            max_page: 1000,
            max_page_bytes: 4 << 20,
            max_devices_per_user: 1000,
            sqlite_sync: SqliteSync::Full,
            hooks: Hooks::default(),
        }
    }
}

/// A store failure. The request that hit it gets an error; nothing is half-stored.
/// Cheap to clone (a failed batch answers each of its callers), and keeps its source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// A file or directory of the embedded store.
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database file was removed or replaced under the running process.
    #[error("the database file {0} was removed or replaced while herald ran; nothing more is written to it: restore it, or restart herald to open the file now at that path")]
    Lost(String),
    /// A stored answer that does not read back (an idempotency key's first answer).
    #[error("a stored answer is unreadable: {0}")]
    Corrupt(#[source] Arc<serde_json::Error>),
    #[error("store.url must be postgres://… or empty, got `{0}`")]
    Url(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(Arc::new(e))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres(Arc::new(e))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError::Corrupt(Arc::new(e))
    }
}

/// A message to store for some users.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub ts: u64,
    pub event: String,
    /// JSON text.
    pub data: String,
    /// Recipients, sorted and without duplicates.
    pub users: Vec<String>,
    /// An idempotency key and the fingerprint of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// What storing a message gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    pub id: String,
    pub ts: u64,
    /// Each recipient's sequence number.
    pub seqs: Vec<(String, u64)>,
    /// True when an idempotency key matched an earlier push: nothing new was stored.
    #[serde(skip)]
    pub duplicate: bool,
}

/// A user's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unread {
    pub unread: u64,
    pub last_seq: u64,
    pub read_up_to: u64,
}

/// One recipient's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub user: String,
    pub seq: u64,
    pub stored_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<u64>,
    /// Each device that acked this copy, and when it first did (connections without a
    /// `deviceId` are no device: their ack only sets `delivered_at`).
    pub devices: Vec<DeviceReceipt>,
}

/// A device's ack of one copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReceipt {
    pub device: String,
    pub acked_at: u64,
}

/// The most devices listed per copy in a message's state.
pub(crate) const MAX_RECEIPTS_PER_COPY: usize = 100;
/// A copy's stored receipts stop growing past this many bytes (about 100 devices).
pub(crate) const MAX_RECEIPTS_BYTES: usize = 16 * 1024;

/// A copy's receipts as stored (`{"device": acked_at_ms, …}`), earliest first, at most
/// [`MAX_RECEIPTS_PER_COPY`].
pub(crate) fn receipts_of(stored: Option<&str>) -> Vec<DeviceReceipt> {
    let Some(map) = stored.and_then(|s| serde_json::from_str::<HashMap<String, u64>>(s).ok())
    else {
        return Vec::new();
    };
    let mut out: Vec<DeviceReceipt> = map
        .into_iter()
        .map(|(device, acked_at)| DeviceReceipt { device, acked_at })
        .collect();
    out.sort_by(|a, b| (a.acked_at, &a.device).cmp(&(b.acked_at, &b.device)));
    out.truncate(MAX_RECEIPTS_PER_COPY);
    out
}

/// A message and the state of each of its copies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageState {
    pub id: String,
    pub event: String,
    pub ts: u64,
    pub recipients: Vec<Recipient>,
}

/// What a retention sweep removes.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now_ms: u64,
    pub max_age_ms: u64,
    pub max_messages: u64,
    pub idempotency_window_ms: u64,
}

/// Writes, committed in batches by the writer.
pub(crate) enum WriteOp {
    Append(NewMessage, oneshot::Sender<Result<Appended, StoreError>>),
    Read {
        user: String,
        up_to: u64,
        at: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Delivered {
        user: String,
        seq: u64,
        device: Option<String>,
        at: u64,
    },
    Sweep(Retention, oneshot::Sender<Result<u64, StoreError>>),
    /// A device's position: the seq it resumes after. A device seen for the first time
    /// is given the user's last seq, stored now.
    Device {
        user: String,
        device: String,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Erases a user's stored messages, device positions and read state; answers the
    /// copies erased.
    Erase {
        user: String,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Refuses a user's tokens issued before `before` (Unix seconds), for `keep_ms`;
    /// answers the (highest) `before` stored.
    Revoke {
        user: String,
        before: u64,
        at: u64,
        keep_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// The webhook outbox.
    Hook(HookOp),
    /// A write that changes nothing, to learn whether the store can write now.
    Probe(oneshot::Sender<Result<u64, StoreError>>),
}

/// Reads, answered by the reader.
pub(crate) enum ReadOp {
    Messages {
        user: String,
        after: u64,
        limit: usize,
        /// Bytes of data after which the page ends.
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<StoredMessage>, StoreError>>,
    },
    Unread {
        user: String,
        reply: oneshot::Sender<Result<Unread, StoreError>>,
    },
    DeviceAcked {
        user: String,
        device: String,
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    State {
        id: String,
        reply: oneshot::Sender<Result<Option<MessageState>, StoreError>>,
    },
    IdempotencyKey {
        key: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Outbox {
        reply: oneshot::Sender<Result<OutboxStats, StoreError>>,
    },
    /// Revocations made at or after `since` (Unix ms).
    Revocations {
        since: u64,
        reply: oneshot::Sender<Result<Vec<Revocation>, StoreError>>,
    },
}

/// A user's tokens issued before `before` (Unix seconds) are refused; set at `at` (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub user: String,
    pub before: u64,
    pub at: u64,
}

/// The durable inbox. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<WriteOp>,
    reads: mpsc::Sender<ReadOp>,
    config: Arc<StoreConfig>,
    health: Arc<Health>,
}

/// Queue lengths in front of the writer and the reader.
const QUEUE: usize = 8192;

impl Store {
    /// Opens the configured backend, applies migrations, and starts its writer and
    /// reader. Committed messages are sent, in commit order, to `committed`.
    pub async fn open(
        config: StoreConfig,
        committed: mpsc::Sender<Arc<Message>>,
    ) -> Result<Store, StoreError> {
        let (wtx, wrx) = mpsc::channel(QUEUE);
        let (rtx, rrx) = mpsc::channel(QUEUE);
        let health = Arc::new(Health::new());
        if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://") {
            postgres::start(&config, wrx, rrx, committed, health.clone()).await?;
        } else if config.url.is_empty() || config.url.starts_with("sqlite:") {
            sqlite::start(&config, wrx, rrx, committed, health.clone())?;
        } else {
            return Err(StoreError::Url(config.url.clone()));
        }
        Ok(Store {
            writes: wtx,
            reads: rtx,
            config: Arc::new(config),
            health,
        })
    }

    /// The store's metrics.
    pub fn metrics(&self) -> &Registry {
        &self.health.metrics.registry
    }

    /// Whether the store can write now: yes if a commit succeeded within the last
    /// second, else as a probe write finds (at most one a second, shared by callers).
    pub async fn writable(&self) -> bool {
        use std::sync::atomic::Ordering;
        let h = &self.health;
        let fresh = |at: u64| now_ms().saturating_sub(at) < PROBE_FRESH_MS;
        if h.writable.load(Ordering::Relaxed) && fresh(h.last_ok.load(Ordering::Relaxed)) {
            return true;
        }
        let mut last = h.probe.lock().await;
        if fresh(last.0) {
            return last.1;
        }
        let probe = self.write(WriteOp::Probe);
        let ok = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
        *last = (now_ms(), ok);
        ok
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> ReadOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a message for its users; answers once it is committed.
    pub async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.write(|tx| WriteOp::Append(msg, tx)).await
    }

    /// Moves a user's read position to `up_to`, clamped to their last seq and never
    /// backwards; returns the position now stored.
    pub async fn mark_read(&self, user: &str, up_to: u64) -> Result<u64, StoreError> {
        let at = now_ms();
        self.write(|reply| WriteOp::Read {
            user: user.to_owned(),
            up_to,
            at,
            reply,
        })
        .await
    }

    /// Records that a device acknowledged `seq` (the first ack marks it delivered).
    /// Fire and forget: an ack is advisory, and a lost one only means a redelivery.
    pub fn mark_delivered(&self, user: &str, seq: u64, device: Option<&str>) {
        let _ = self.writes.try_send(WriteOp::Delivered {
            user: user.to_owned(),
            seq,
            device: device.map(str::to_owned),
            at: now_ms(),
        });
    }

    /// Removes what retention says is too old; returns the number of copies removed.
    pub async fn sweep(&self, retention: Retention) -> Result<u64, StoreError> {
        self.write(|tx| WriteOp::Sweep(retention, tx)).await
    }

    /// A page of a user's messages after `after`, ascending; `limit` is capped.
    pub async fn messages(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = limit.clamp(1, self.config.max_page);
        let max_bytes = self.config.max_page_bytes.max(1);
        self.read(|reply| ReadOp::Messages {
            user: user.to_owned(),
            after,
            limit,
            max_bytes,
            reply,
        })
        .await
    }

    pub async fn unread(&self, user: &str) -> Result<Unread, StoreError> {
        self.read(|reply| ReadOp::Unread {
            user: user.to_owned(),
            reply,
        })
        .await
    }

    /// The last seq a device acknowledged.
    pub async fn device_acked(&self, user: &str, device: &str) -> Result<Option<u64>, StoreError> {
        self.read(|reply| ReadOp::DeviceAcked {
            user: user.to_owned(),
            device: device.to_owned(),
            reply,
        })
        .await
    }

    /// Where a device resumes: after the last seq it acked, or, for a device seen for
    /// the first time, after the user's last seq now (stored, so it holds from here on).
    pub async fn device_position(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        self.write(|reply| WriteOp::Device {
            user: user.to_owned(),
            device: device.to_owned(),
            reply,
        })
        .await
    }

    /// Adds a webhook event (user presence) to the outbox.
    pub async fn add_event(
        &self,
        kind: HookKind,
        data: serde_json::Value,
    ) -> Result<u64, StoreError> {
        let at = now_ms();
        self.write(|reply| {
            WriteOp::Hook(HookOp::Add {
                kind,
                at,
                data,
                reply,
            })
        })
        .await
    }

    /// Claims up to `limit` due webhook events for `lease_ms`.
    pub async fn claim_events(
        &self,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = now_ms();
        self.write(|reply| {
            WriteOp::Hook(HookOp::Claim {
                now,
                lease_ms,
                limit,
                reply,
            })
        })
        .await
    }

    /// Settles a claimed event: sent (or given up) removes it; a failure schedules the
    /// next attempt. Fire and forget: a result that is lost only means a resend.
    pub fn settle_event(&self, id: String, outcome: EventOutcome) {
        let op = match outcome {
            EventOutcome::Sent => HookOp::Sent { id },
            EventOutcome::Dropped => HookOp::Dropped { id },
            EventOutcome::Retry { next_at, error } => HookOp::Failed { id, next_at, error },
        };
        let _ = self.writes.try_send(WriteOp::Hook(op));
    }

    /// Adds `message.undelivered` for copies stored before `upto` (ms) that no device
    /// acked and that no earlier scan (on any node) covered.
    pub async fn scan_undelivered(&self, upto: u64) -> Result<u64, StoreError> {
        let now = now_ms();
        self.write(|reply| WriteOp::Hook(HookOp::ScanUndelivered { upto, now, reply }))
            .await
    }

    /// How the webhook outbox stands.
    pub async fn outbox(&self) -> Result<OutboxStats, StoreError> {
        self.read(|reply| ReadOp::Outbox { reply }).await
    }

    /// Whether a durable push within the idempotency window used `key`.
    /// Waits until every write queued before it is committed (or has failed).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(WriteOp::Probe).await.map(drop)
    }

    /// Erases `user`'s stored messages (their copies, and messages no one else holds),
    /// device positions and read state (a deletion request). The user's seq counter
    /// stays, so that the seqs their devices hold keep their meaning. Answers the
    /// copies erased.
    pub async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.write(|reply| WriteOp::Erase { user, reply }).await
    }

    /// Refuses `user`'s tokens issued before `before` (Unix seconds) from now on, for
    /// `keep_ms`. Answers the `before` in force (a later one already stored wins).
    pub async fn revoke(&self, user: &str, before: u64, keep_ms: u64) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.write(|reply| WriteOp::Revoke {
            user,
            before,
            at: now_ms(),
            keep_ms,
            reply,
        })
        .await
    }

    /// Revocations made at or after `since` (Unix ms).
    pub async fn revocations(&self, since: u64) -> Result<Vec<Revocation>, StoreError> {
        self.read(|reply| ReadOp::Revocations { since, reply })
            .await
    }

    pub async fn idempotency_key_used(&self, key: &str) -> Result<bool, StoreError> {
        self.read(|reply| ReadOp::IdempotencyKey {
            key: key.to_owned(),
            reply,
        })
        .await
    }

    pub async fn message_state(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        self.read(|reply| ReadOp::State {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    /// Runs retention sweeps every `sweep_interval_secs` until the store closes.
    pub async fn sweeper(self, idempotency_window_ms: u64) {
        let every = std::time::Duration::from_secs(self.config.sweep_interval_secs.max(1));
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let r = Retention {
                now_ms: now_ms(),
                max_age_ms: self.config.retention_max_age_secs.saturating_mul(1000),
                max_messages: self.config.retention_max_messages,
                idempotency_window_ms,
            };
            match self.sweep(r).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "retention sweep"),
                Ok(_) => {}
                Err(StoreError::Closed) => break,
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
    }
}

/// What became of a claimed webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Sent,
    /// Older than the configured age: given up.
    Dropped,
    Retry {
        next_at: u64,
        error: String,
    },
}

/// A write's answer, sent once its transaction has committed.
pub(crate) enum Done {
    Append(
        oneshot::Sender<Result<Appended, StoreError>>,
        Result<Appended, StoreError>,
        Option<Arc<Message>>,
    ),
    Read(oneshot::Sender<Result<u64, StoreError>>, u64),
    Sweep(oneshot::Sender<Result<u64, StoreError>>, u64),
    Claim(
        oneshot::Sender<Result<Vec<OutboxEvent>, StoreError>>,
        Vec<OutboxEvent>,
    ),
    Nothing,
}

/// The answer to storing `msg`, with the message to route once committed (none for a
/// duplicate, or a failure).
pub(crate) fn appended(
    msg: &NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    result: Result<Appended, StoreError>,
) -> Done {
    let routed = match &result {
        Ok(a) if !a.duplicate => committed_message(msg, &a.seqs),
        _ => None,
    };
    Done::Append(reply, result, routed)
}

/// An op that did not run, so that its caller gets the batch's error.
pub(crate) fn pending(op: WriteOp) -> Done {
    match op {
        WriteOp::Append(_, reply) => Done::Append(reply, Err(StoreError::Closed), None),
        WriteOp::Read { reply, .. } => Done::Read(reply, 0),
        WriteOp::Delivered { .. } => Done::Nothing,
        WriteOp::Sweep(_, reply) | WriteOp::Probe(reply) => Done::Sweep(reply, 0),
        WriteOp::Device { reply, .. }
        | WriteOp::Erase { reply, .. }
        | WriteOp::Revoke { reply, .. } => Done::Read(reply, 0),
        WriteOp::Hook(op) => match op {
            HookOp::Add { reply, .. } | HookOp::ScanUndelivered { reply, .. } => {
                Done::Sweep(reply, 0)
            }
            HookOp::Claim { reply, .. } => Done::Claim(reply, Vec::new()),
            HookOp::Sent { .. } | HookOp::Dropped { .. } | HookOp::Failed { .. } => Done::Nothing,
        },
    }
}

/// Answers a batch: on commit, hands each new message to `forward` (in batch order,
/// which is commit order) and each caller its result; on failure, everyone the error.
pub(crate) fn settle(
    done: Vec<Done>,
    result: Result<(), StoreError>,
    health: &Health,
    mut forward: impl FnMut(Arc<Message>),
) {
    match result {
        Ok(()) => {
            health.ok();
            let committed_us = crate::metrics::now_us();
            for d in done {
                match d {
                    Done::Append(reply, r, msg) => {
                        if let Some(mut m) = msg {
                            if let Some(m) = Arc::get_mut(&mut m) {
                                m.ready_us = committed_us;
                            }
                            forward(m);
                        }
                        let _ = reply.send(r);
                    }
                    Done::Read(reply, v) | Done::Sweep(reply, v) => {
                        let _ = reply.send(Ok(v));
                    }
                    Done::Claim(reply, v) => {
                        let _ = reply.send(Ok(v));
                    }
                    Done::Nothing => {}
                }
            }
        }
        Err(err) => {
            health.failed(&err);
            for d in done {
                match d {
                    Done::Append(reply, _, _) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Done::Read(reply, _) | Done::Sweep(reply, _) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Done::Claim(reply, _) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Done::Nothing => {}
                }
            }
        }
    }
}

/// The message the dispatcher routes once `msg` is committed.
fn committed_message(msg: &NewMessage, seqs: &[(String, u64)]) -> Option<Arc<Message>> {
    let data = serde_json::value::RawValue::from_string(msg.data.clone()).ok()?;
    Some(Arc::new(Message {
        id: msg.id.clone(),
        ts: msg.ts,
        // Stamped when the batch's commit is answered (see `settle`).
        ready_us: 0,
        event: msg.event.clone(),
        data,
        target: Target::Stored(seqs.to_vec()),
    }))
}

/// Schema steps, applied in order; the store records how many have run.
const MIGRATIONS: [&str; 3] = [
    r#"
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0,
    read_upto BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    ts BIGINT NOT NULL
);
CREATE TABLE inbox (
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    delivered_at BIGINT,
    read_at BIGINT,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_message ON inbox (message_id);
CREATE INDEX inbox_ts ON inbox (ts);
CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    acked_seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at);
"#,
    // Per-device receipts (a JSON object, device → first ack, on the copy's row, so that
    // recording one dirties no page the ack does not already) and the webhook outbox.
    r#"
ALTER TABLE inbox ADD COLUMN receipts TEXT;
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);
CREATE TABLE webhook_marks (
    name TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
"#,
    // Tokens refused per user (`DELETE /api/v1/users/{id}/connections` with revokeBefore).
    r#"
CREATE TABLE revocations (
    user_id TEXT PRIMARY KEY,
    issued_before BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX revocations_at ON revocations (at);
"#,
];
