//! The push service: validates a push, stamps it with an id and time, stores it when it
//! is durable, and hands it to the router. The HTTP API and the demo ticker both push
//! through here.
//!
//! Durable pushes reach the router through the dispatcher, in the order the store
//! committed them, so each user's messages arrive in seq order. Volatile pushes go to the
//! router at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::value::RawValue;

mod data;

pub use data::check_data;

use crate::delivery::Delivery;
use crate::metrics::{
    counter_vec, histogram, Histogram, IntCounter, IntCounterVec, Registry, LATENCY,
};
use crate::store::{NewMessage, Store, StoreError};
use crate::vocab::{now_ms, Message, Target, UserId};

/// Push settings (part of `[api]` in the config file).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Largest number of users in one push. Default 10,000.
    pub max_users_per_push: usize,
    /// How long an idempotency key is remembered. Default 24 h.
    pub idempotency_window: Duration,
    /// Largest number of idempotency keys remembered; the oldest are forgotten first.
    /// Default 100,000.
    pub max_idempotency_keys: usize,
    /// Deepest nesting of arrays and objects in a push's `data`. Default 64.
    pub max_data_depth: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_users_per_push: 10_000,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_idempotency_keys: 100_000,
            max_data_depth: 64,
        }
    }
}

/// Longest event name accepted.
pub const MAX_EVENT: usize = 128;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Event names a push may not use: those socket.io-client 4.x and 2.x reserve for
/// themselves (a handler for them would never see the push, or would take it for the
/// client's own event), and herald's own (`read` syncs read state between devices,
/// `inbox` tells a connection where its inbox stands).
pub const RESERVED: [&str; 18] = [
    // socket.io-client 4.x (and 3.x)
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    // socket.io-client 2.x
    "error",
    "connecting",
    "connect_timeout",
    "reconnect",
    "reconnect_attempt",
    "reconnect_error",
    "reconnect_failed",
    "reconnecting",
    "ping",
    "pong",
    // herald
    "read",
    "inbox",
];

/// A push as the API receives it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushRequest {
    pub to: To,
    pub event: String,
    pub data: Box<RawValue>,
    /// Live delivery only: not stored, no seq, not replayed. Pushes to users are durable
    /// unless this is true; broadcasts are always live only.
    #[serde(default)]
    pub volatile: Option<bool>,
    /// Makes a retried request a no-op that returns the first answer.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The target of a push: `{"users": [...]}` or `{"all": true}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub users: Option<Vec<String>>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushResult {
    pub id: String,
    pub ts: u64,
    /// Durable pushes: each user's seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seqs: Option<std::collections::BTreeMap<String, u64>>,
    /// Volatile pushes: connections on this node the message was queued to (for a
    /// broadcast, the connections in rooms here when it was accepted; its fan-out
    /// follows at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

/// A push that cannot be accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    Invalid(String),
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    Store(StoreError),
}

impl PartialEq for PushError {
    fn eq(&self, other: &PushError) -> bool {
        self.to_string() == other.to_string()
    }
}

impl From<StoreError> for PushError {
    fn from(e: StoreError) -> PushError {
        match e {
            StoreError::IdempotencyConflict => PushError::IdempotencyConflict,
            other => PushError::Store(other),
        }
    }
}

/// What an idempotency key remembers: a fingerprint of the request and its answer.
struct Remembered {
    fingerprint: u64,
    result: PushResult,
    at: Instant,
}

/// Remembered idempotency keys, bounded in count and age.
#[derive(Default)]
struct Idempotency {
    keys: HashMap<String, Remembered>,
    /// Keys in the order they were first seen, for expiry.
    order: VecDeque<String>,
}

/// Accepts pushes.
pub struct PushService {
    config: PushConfig,
    delivery: Arc<Delivery>,
    store: Store,
    /// Idempotency keys of volatile pushes (durable ones are kept in the store).
    idempotency: Mutex<Idempotency>,
    pub metrics: PushMetrics,
}

/// Push metrics.
#[derive(Debug)]
pub struct PushMetrics {
    pub registry: Registry,
    /// Pushes accepted: durable, volatile, broadcast (resolved once, by [`Kind`]).
    accepted: [IntCounter; 3],
    /// Pushes refused, by reason.
    pub refused: IntCounterVec,
    /// A durable push from acceptance to its commit.
    commit_seconds: Histogram,
}

/// What a push is, for the metrics.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Durable,
    Volatile,
    Broadcast,
}

impl Kind {
    fn of(req: &PushRequest) -> Kind {
        if req.to.all == Some(true) {
            Kind::Broadcast
        } else if req.volatile == Some(true) {
            Kind::Volatile
        } else {
            Kind::Durable
        }
    }
}

impl Default for PushMetrics {
    fn default() -> Self {
        let r = Registry::new();
        let accepted = counter_vec(
            &r,
            "herald_pushes_total",
            "Pushes accepted, by kind (durable, volatile, broadcast).",
            &["kind"],
        );
        let refused = counter_vec(
            &r,
            "herald_pushes_refused_total",
            "Pushes refused by the push service, by reason (invalid, idempotency_conflict, store_unavailable); refusals before it (401, 403, 413, malformed JSON) are in herald_api_requests_total.",
            &["reason"],
        );
        for reason in ["invalid", "idempotency_conflict", "store_unavailable"] {
            refused.with_label_values(&[reason]);
        }
        PushMetrics {
            accepted: ["durable", "volatile", "broadcast"]
                .map(|k| accepted.with_label_values(&[k])),
            refused,
            commit_seconds: histogram(
                &r,
                "herald_push_commit_seconds",
                "A durable push from its acceptance to its commit in the store.",
                LATENCY,
            ),
            registry: r,
        }
    }
}

impl PushError {
    /// The reason label of `herald_pushes_refused_total`.
    fn reason(&self) -> &'static str {
        match self {
            PushError::Invalid(_) => "invalid",
            PushError::IdempotencyConflict => "idempotency_conflict",
            PushError::Store(StoreError::IdempotencyConflict) => "idempotency_conflict",
            PushError::Store(_) => "store_unavailable",
        }
    }
}

/// Delivers committed messages, one at a time, in commit order.
pub async fn dispatch(
    mut committed: tokio::sync::mpsc::Receiver<Arc<Message>>,
    delivery: Arc<Delivery>,
) {
    while let Some(msg) = committed.recv().await {
        delivery.route(&msg);
    }
}

impl PushService {
    pub fn new(config: PushConfig, delivery: Arc<Delivery>, store: Store) -> PushService {
        PushService {
            config,
            delivery,
            store,
            idempotency: Mutex::new(Idempotency::default()),
            metrics: PushMetrics::default(),
        }
    }

    /// Validates a push and delivers it; a durable push answers once it is stored.
    pub async fn push(&self, req: PushRequest) -> Result<PushResult, PushError> {
        let kind = Kind::of(&req);
        let result = self.accept(req).await;
        match &result {
            Ok(_) => self.metrics.accepted[kind as usize].inc(),
            Err(e) => self.metrics.refused.with_label_values(&[e.reason()]).inc(),
        }
        result
    }

    async fn accept(&self, req: PushRequest) -> Result<PushResult, PushError> {
        let target = self.validate(&req)?;
        if let Target::Users(users) = &target {
            if req.volatile != Some(true) {
                return self.push_durable(&req, users.clone()).await;
            }
        }
        let Some(key) = req.idempotency_key.clone() else {
            return Ok(self.send(req, target));
        };
        if self.store.idempotency_key_used(&key).await? {
            // Taken by a durable push.
            return Err(PushError::IdempotencyConflict);
        }
        let users = match &target {
            Target::Users(u) => Some(u.as_slice()),
            Target::All | Target::Stored(_) => None,
        };
        let fingerprint = fingerprint(&req, users, false);
        // The lock is held across the send so that two concurrent retries of one key
        // deliver once.
        let mut idem = self.idempotency.lock();
        self.expire(&mut idem);
        if let Some(r) = idem.keys.get(&key) {
            return if r.fingerprint == fingerprint {
                Ok(r.result.clone())
            } else {
                Err(PushError::IdempotencyConflict)
            };
        }
        let result = self.send(req, target);
        idem.order.push_back(key.clone());
        idem.keys.insert(
            key,
            Remembered {
                fingerprint,
                result: result.clone(),
                at: Instant::now(),
            },
        );
        Ok(result)
    }

    fn expire(&self, idem: &mut Idempotency) {
        while let Some(oldest) = idem.order.front() {
            let stale = idem.keys.get(oldest).is_none_or(|r| {
                r.at.elapsed() > self.config.idempotency_window
                    || idem.keys.len() >= self.config.max_idempotency_keys
            });
            if !stale {
                break;
            }
            if let Some(k) = idem.order.pop_front() {
                idem.keys.remove(&k);
            }
        }
    }

    async fn push_durable(
        &self,
        req: &PushRequest,
        users: Vec<String>,
    ) -> Result<PushResult, PushError> {
        if let Some(key) = &req.idempotency_key {
            if self.idempotency.lock().keys.contains_key(key) {
                // Taken by a volatile push.
                return Err(PushError::IdempotencyConflict);
            }
        }
        let fingerprint = req
            .idempotency_key
            .as_ref()
            .map(|_| format!("{:016x}", fingerprint(req, Some(&users), true)));
        let msg = NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            ts: now_ms(),
            event: req.event.clone(),
            data: req.data.get().to_owned(),
            users,
            idempotency: req.idempotency_key.clone().zip(fingerprint),
        };
        let started = std::time::Instant::now();
        let stored = self.store.append(msg).await?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(PushResult {
            id: stored.id,
            ts: stored.ts,
            seqs: Some(stored.seqs.into_iter().collect()),
            connections: None,
        })
    }

    fn validate(&self, req: &PushRequest) -> Result<Target, PushError> {
        let invalid = |m: &str| Err(PushError::Invalid(m.to_owned()));
        if req.event.is_empty() || req.event.len() > MAX_EVENT {
            return invalid("event must be 1 to 128 characters");
        }
        if RESERVED.contains(&req.event.as_str()) {
            return Err(PushError::Invalid(format!(
                "event name `{}` is reserved by Socket.IO clients or herald",
                req.event
            )));
        }
        check_data(req.data.get(), self.config.max_data_depth).map_err(PushError::Invalid)?;
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                return invalid("idempotencyKey must be 1 to 256 characters");
            }
        }
        match (&req.to.users, req.to.all) {
            (Some(_), Some(_)) => invalid("to takes either users or all, not both"),
            (None, Some(true)) if req.volatile == Some(false) => {
                invalid("broadcasts are live only: volatile cannot be false with all")
            }
            (None, Some(true)) => Ok(Target::All),
            (None, Some(false)) | (None, None) => invalid("to needs users or all: true"),
            (Some(users), None) => {
                if users.is_empty() {
                    return invalid("to.users must not be empty");
                }
                if users.len() > self.config.max_users_per_push {
                    return Err(PushError::Invalid(format!(
                        "to.users has more than {} users",
                        self.config.max_users_per_push
                    )));
                }
                for u in users {
                    // The rules a client's id is held to at connect: a push to an id no
                    // client can have would be stored for nobody.
                    UserId::check(u).map_err(|e| {
                        PushError::Invalid(format!("to.users: {e}, got {}", json_quoted(u)))
                    })?;
                }
                let mut users = users.clone();
                users.sort_unstable();
                users.dedup();
                Ok(Target::Users(users))
            }
        }
    }

    fn send(&self, req: PushRequest, target: Target) -> PushResult {
        let ready_us = crate::metrics::now_us();
        let ts = ready_us / 1000;
        let msg = Message {
            id: uuid::Uuid::now_v7().to_string(),
            ts,
            ready_us,
            event: req.event,
            data: req.data,
            target,
        };
        let connections = self.delivery.route(&msg);
        PushResult {
            id: msg.id,
            ts,
            seqs: None,
            connections: Some(connections),
        }
    }
}

/// `s` as a JSON string, for error messages (ids may hold anything).
fn json_quoted(s: &str) -> String {
    let mut short: String = s.chars().take(64).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    serde_json::to_string(&short).unwrap_or_default()
}

/// What a retried request must repeat to get the first answer: the event, the data (as
/// a JSON value: key order and whitespace do not count), the set of users (order and
/// duplicates do not count) or `all`, and whether it is durable. The same key with a
/// volatile and a durable push is a conflict.
fn fingerprint(req: &PushRequest, users: Option<&[String]>, durable: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.event.hash(&mut h);
    let mut canon = String::with_capacity(req.data.get().len());
    if data::canonical(req.data.get(), &mut canon).is_err() {
        // Checked at validation, so this does not happen; the text itself will do.
        canon = req.data.get().to_owned();
    }
    canon.hash(&mut h);
    // Sorted and without duplicates (see `validate`); `None` is a broadcast.
    users.hash(&mut h);
    durable.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::hub::Hub;
    use crate::store::StoreConfig;

    async fn service() -> PushService {
        let hub = Hub::new(Default::default());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = Store::open(
            StoreConfig {
                url: "sqlite::memory:".into(),
                ..StoreConfig::default()
            },
            tx,
        )
        .await
        .unwrap();
        let delivery = Delivery::new(hub, store.clone(), Arc::new(MemoryBroker::single()), false);
        tokio::spawn(dispatch(rx, delivery.clone()));
        PushService::new(PushConfig::default(), delivery, store)
    }

    fn req(json: &str) -> PushRequest {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn validates_targets_and_events() {
        let s = service().await;
        for bad in [
            r#"{"to":{"users":[]},"event":"e","data":1}"#,
            r#"{"to":{},"event":"e","data":1}"#,
            r#"{"to":{"all":false},"event":"e","data":1}"#,
            r#"{"to":{"all":true,"users":["a"]},"event":"e","data":1}"#,
            r#"{"to":{"all":true},"event":"e","data":1,"volatile":false}"#,
            r#"{"to":{"users":["a"]},"event":"","data":1}"#,
            r#"{"to":{"users":["a"]},"event":"connect","data":1}"#,
            r#"{"to":{"users":[""]},"event":"e","data":1}"#,
            r#"{"to":{"users":["a\nb"]},"event":"e","data":1}"#,
            r#"{"to":{"users":["\u0000"]},"event":"e","data":1}"#,
            r#"{"to":{"users":["a"]},"event":"e","data":1,"idempotencyKey":""}"#,
        ] {
            assert!(
                matches!(s.push(req(bad)).await, Err(PushError::Invalid(_))),
                "{bad}"
            );
        }
        let live = s
            .push(req(
                r#"{"to":{"users":["a","a"]},"event":"e","data":{"x":1},"volatile":true}"#,
            ))
            .await
            .unwrap();
        assert_eq!(live.connections, Some(0));
        let stored = s
            .push(req(
                r#"{"to":{"users":["b","a","a"]},"event":"e","data":{"x":1}}"#,
            ))
            .await
            .unwrap();
        let seqs = stored.seqs.unwrap();
        assert_eq!(seqs.len(), 2);
        assert_eq!((seqs["a"], seqs["b"]), (1, 1));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<PushRequest, _> =
            serde_json::from_str(r#"{"to":{"users":["a"]},"event":"e","data":1,"bogus":1}"#);
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_first_answer() {
        let s = service().await;
        for volatile in ["true", "false"] {
            let body = format!(
                r#"{{"to":{{"users":["a"]}},"event":"e","data":1,"volatile":{volatile},"idempotencyKey":"k-{volatile}"}}"#
            );
            let first = s.push(req(&body)).await.unwrap();
            let again = s.push(req(&body)).await.unwrap();
            assert_eq!(first, again);
            let other = body.replace(r#""data":1"#, r#""data":2"#);
            assert_eq!(
                s.push(req(&other)).await,
                Err(PushError::IdempotencyConflict)
            );
        }
    }

    #[test]
    fn data_that_a_path_cannot_carry_is_refused() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check_data(&deep(64), 64).is_ok());
        let e = check_data(&deep(65), 64).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
        let e = check_data(&deep(10_000), 64).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
        let objects = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert!(check_data(&objects, 64).is_err());
        for bad in [
            r#""\ud800""#,
            r#"{"\udc00x":1}"#,
            "1e999999",
            "-1e400",
            r#"[1, 2e308]"#,
        ] {
            assert!(check_data(bad, 64).is_err(), "{bad}");
        }
        for plain in [r#"{"ok":true,"n":[1,2.5,-3],"s":"x"}"#, "null", "false"] {
            assert!(data::plainly_fine(plain.as_bytes(), 64), "{plain}");
        }
        for needs_parse in ["1e5", r#""\u0041""#, "1234567890123456"] {
            assert!(
                !data::plainly_fine(needs_parse.as_bytes(), 64),
                "{needs_parse}"
            );
        }
        for good in [
            r#""\ud83d\ude00""#,
            "1e300",
            "18446744073709551615",
            "-9223372036854775808",
            r#"{"a":[null,true,"x",1.5,{"b":{}}]}"#,
        ] {
            assert!(check_data(good, 64).is_ok(), "{good}");
        }
    }

    #[test]
    fn canonical_data_keeps_numbers_as_written() {
        let canon = |s: &str| {
            let mut out = String::new();
            data::canonical(s, &mut out).unwrap();
            out
        };
        assert_eq!(
            canon(r#" { "b" : [1, 2.50] , "a" : "\u0041" } "#),
            r#"{"a":"A","b":[1,2.50]}"#
        );
        assert_ne!(
            canon("0.1000000000000000000001"),
            canon("0.1000000000000000000009")
        );
        assert_ne!(
            canon("123456789012345678901"),
            canon("123456789012345678902")
        );
    }

    #[tokio::test]
    async fn idempotency_ignores_order_and_whitespace_and_separates_kinds() {
        let s = service().await;
        for volatile in ["true", "false"] {
            let key = format!("order-{volatile}");
            let a = format!(
                r#"{{"to":{{"users":["a","b"]}},"event":"e","data":{{"x":1,"y":[1,2]}},"volatile":{volatile},"idempotencyKey":"{key}"}}"#
            );
            let b = format!(
                r#"{{"to":{{"users":["b","a","b"]}},"event":"e","data":{{ "y" : [1, 2], "x" : 1 }},"volatile":{volatile},"idempotencyKey":"{key}"}}"#
            );
            let first = s.push(req(&a)).await.unwrap();
            assert_eq!(s.push(req(&b)).await.unwrap(), first);
        }
        // One key, one kind: a durable push cannot reuse a volatile one's key, nor the
        // other way round.
        let volatile =
            r#"{"to":{"users":["a"]},"event":"e","data":1,"volatile":true,"idempotencyKey":"k1"}"#;
        s.push(req(volatile)).await.unwrap();
        let durable = r#"{"to":{"users":["a"]},"event":"e","data":1,"idempotencyKey":"k1"}"#;
        assert_eq!(
            s.push(req(durable)).await,
            Err(PushError::IdempotencyConflict)
        );
        let durable = r#"{"to":{"users":["a"]},"event":"e","data":1,"idempotencyKey":"k2"}"#;
        s.push(req(durable)).await.unwrap();
        let volatile =
            r#"{"to":{"users":["a"]},"event":"e","data":1,"volatile":true,"idempotencyKey":"k2"}"#;
        assert_eq!(
            s.push(req(volatile)).await,
            Err(PushError::IdempotencyConflict)
        );
    }

    #[tokio::test]
    async fn reserved_event_names_of_both_client_generations_are_refused() {
        let s = service().await;
        for name in [
            "connect",
            "error",
            "reconnect",
            "ping",
            "pong",
            "connect_timeout",
            "read",
        ] {
            let body = format!(r#"{{"to":{{"users":["a"]}},"event":"{name}","data":1}}"#);
            match s.push(req(&body)).await {
                Err(PushError::Invalid(m)) => assert!(m.contains("reserved"), "{m}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
