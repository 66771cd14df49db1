//! The push service: validates a push, stamps it with an id and time, and hands it to the
//! router. The HTTP API and the demo ticker both push through here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::hub::{Message, Target};
use crate::router::Router;

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
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_users_per_push: 10_000,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_idempotency_keys: 100_000,
        }
    }
}

/// Longest event name accepted.
pub const MAX_EVENT: usize = 128;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Event names the Socket.IO client reserves for itself.
const RESERVED: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A push as the API receives it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushRequest {
    pub to: To,
    pub event: String,
    pub data: Box<RawValue>,
    /// Live delivery only. Until the durable inbox exists every push is live only, so
    /// this is accepted and changes nothing.
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
    /// Connections on this node the message was queued to.
    pub connections: usize,
}

/// A push that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    Invalid(String),
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
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
    router: Arc<dyn Router>,
    idempotency: Mutex<Idempotency>,
}

impl PushService {
    pub fn new(config: PushConfig, router: Arc<dyn Router>) -> PushService {
        PushService {
            config,
            router,
            idempotency: Mutex::new(Idempotency::default()),
        }
    }

    /// Validates and delivers a push.
    pub fn push(&self, req: PushRequest) -> Result<PushResult, PushError> {
        let target = self.validate(&req)?;
        let Some(key) = req.idempotency_key.clone() else {
            return Ok(self.send(req, target));
        };
        let fingerprint = fingerprint(&req);
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

    fn validate(&self, req: &PushRequest) -> Result<Target, PushError> {
        let invalid = |m: &str| Err(PushError::Invalid(m.to_owned()));
        if req.event.is_empty() || req.event.len() > MAX_EVENT {
            return invalid("event must be 1 to 128 characters");
        }
        if RESERVED.contains(&req.event.as_str()) {
            return invalid("event name is reserved by Socket.IO clients");
        }
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                return invalid("idempotencyKey must be 1 to 256 characters");
            }
        }
        match (&req.to.users, req.to.all) {
            (Some(_), Some(_)) => invalid("to takes either users or all, not both"),
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
                if users
                    .iter()
                    .any(|u| u.is_empty() || u.len() > crate::auth::MAX_USER_ID)
                {
                    return invalid("user ids must be 1 to 256 characters");
                }
                let mut users = users.clone();
                users.sort_unstable();
                users.dedup();
                Ok(Target::Users(users))
            }
        }
    }

    fn send(&self, req: PushRequest, target: Target) -> PushResult {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let msg = Message {
            id: uuid::Uuid::now_v7().to_string(),
            ts,
            event: req.event,
            data: req.data,
            target,
        };
        let connections = self.router.route(&msg);
        PushResult {
            id: msg.id,
            ts,
            connections,
        }
    }
}

fn fingerprint(req: &PushRequest) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.event.hash(&mut h);
    req.data.get().hash(&mut h);
    req.to.users.hash(&mut h);
    req.to.all.hash(&mut h);
    req.volatile.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::router::LocalRouter;

    fn service() -> PushService {
        let hub = Arc::new(Hub::new(Default::default()));
        PushService::new(PushConfig::default(), Arc::new(LocalRouter::new(hub)))
    }

    fn req(json: &str) -> PushRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn validates_targets_and_events() {
        let s = service();
        for bad in [
            r#"{"to":{"users":[]},"event":"e","data":1}"#,
            r#"{"to":{},"event":"e","data":1}"#,
            r#"{"to":{"all":false},"event":"e","data":1}"#,
            r#"{"to":{"all":true,"users":["a"]},"event":"e","data":1}"#,
            r#"{"to":{"users":["a"]},"event":"","data":1}"#,
            r#"{"to":{"users":["a"]},"event":"connect","data":1}"#,
            r#"{"to":{"users":[""]},"event":"e","data":1}"#,
            r#"{"to":{"users":["a"]},"event":"e","data":1,"idempotencyKey":""}"#,
        ] {
            assert!(
                matches!(s.push(req(bad)), Err(PushError::Invalid(_))),
                "{bad}"
            );
        }
        let ok = s.push(req(
            r#"{"to":{"users":["a","a"]},"event":"e","data":{"x":1}}"#,
        ));
        assert_eq!(ok.unwrap().connections, 0);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<PushRequest, _> =
            serde_json::from_str(r#"{"to":{"users":["a"]},"event":"e","data":1,"bogus":1}"#);
        assert!(r.is_err());
    }

    #[test]
    fn idempotency_key_returns_the_first_answer() {
        let s = service();
        let body = r#"{"to":{"users":["a"]},"event":"e","data":1,"idempotencyKey":"k1"}"#;
        let first = s.push(req(body)).unwrap();
        let again = s.push(req(body)).unwrap();
        assert_eq!(first, again);
        let other = r#"{"to":{"users":["a"]},"event":"e","data":2,"idempotencyKey":"k1"}"#;
        assert_eq!(s.push(req(other)), Err(PushError::IdempotencyConflict));
    }
}
