//! The node's live state: which sockets belong to which user. The hub is the only place
//! that writes pushes to sockets; a message is encoded once and the same bytes are
//! queued for every recipient.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::protocol::packet;
use crate::protocol::{Args, Socket};
use crate::transport::engine::Counter;
use crate::transport::Outbound;

/// Hub settings (`[hub]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Largest number of simultaneous connections of one user; more are refused at
    /// connect. Default 64.
    pub max_connections_per_user: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections_per_user: 64,
        }
    }
}

/// Whom a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Users(Vec<String>),
    All,
}

/// A message on its way to devices.
#[derive(Debug)]
pub struct Message {
    pub id: String,
    /// Milliseconds since the Unix epoch when it was accepted.
    pub ts: u64,
    pub event: String,
    pub data: Box<RawValue>,
    pub target: Target,
}

impl Message {
    /// The Socket.IO packets every recipient gets: `event(data, {id, ts})`.
    pub fn encode(&self) -> Vec<Outbound> {
        let meta = serde_json::json!({"id": self.id, "ts": self.ts});
        let args = format!("[{},{}]", self.data.get(), meta);
        packet::encode_event("/", &self.event, &Args::from_raw(args, Vec::new()), None)
    }
}

/// Why a socket could not join its user's room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("too many connections for this user")]
    TooManyConnections,
}

/// Hub counters.
#[derive(Debug, Default)]
pub struct HubMetrics {
    /// Packets queued to sockets by pushes.
    pub deliveries: Counter,
    /// Deliveries that failed because a socket's queue was full or it had closed.
    pub delivery_failures: Counter,
}

const SHARDS: usize = 32;

/// One shard of the user index.
type Shard = Mutex<HashMap<Arc<str>, Vec<Socket>>>;

/// The user index: user id → that user's sockets on this node.
pub struct Hub {
    config: HubConfig,
    /// Sharded by user id so that connects of different users rarely contend.
    shards: Box<[Shard]>,
    pub metrics: HubMetrics,
}

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics: HubMetrics::default(),
        }
    }

    fn shard(&self, user: &str) -> &Shard {
        // FNV-1a: cheap, and user ids are not attacker-chosen keys of a hash table
        // here (each shard's HashMap keeps its own random seed).
        let mut h: u32 = 0x811c9dc5;
        for b in user.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x01000193);
        }
        &self.shards[h as usize % SHARDS]
    }

    /// Adds a socket to its user's room, unless the user is at the connection limit.
    pub fn join(&self, user: &str, socket: &Socket) -> Result<(), JoinError> {
        let mut shard = self.shard(user).lock();
        if let Some(sockets) = shard.get_mut(user) {
            if sockets.len() >= self.config.max_connections_per_user {
                return Err(JoinError::TooManyConnections);
            }
            sockets.push(socket.clone());
        } else {
            shard.insert(Arc::from(user), vec![socket.clone()]);
        }
        Ok(())
    }

    /// Removes a socket from its user's room; the room goes when it is empty.
    pub fn leave(&self, user: &str, socket: &Socket) {
        let mut shard = self.shard(user).lock();
        if let Some(sockets) = shard.get_mut(user) {
            sockets.retain(|s| s != socket);
            if sockets.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Number of this user's connections on this node.
    pub fn connections(&self, user: &str) -> usize {
        self.shard(user).lock().get(user).map_or(0, Vec::len)
    }

    /// Number of users with at least one connection.
    pub fn users(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Number of sockets in all rooms.
    pub fn sockets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Queues a message for every local connection of its target; returns how many
    /// connections it was queued to.
    pub fn deliver(&self, msg: &Message) -> usize {
        let packets = msg.encode();
        let mut queued = 0;
        match &msg.target {
            Target::Users(users) => {
                for user in users {
                    let shard = self.shard(user).lock();
                    if let Some(sockets) = shard.get(user.as_str()) {
                        queued += self.send(sockets, &packets);
                    }
                }
            }
            Target::All => {
                for shard in self.shards.iter() {
                    let shard = shard.lock();
                    for sockets in shard.values() {
                        queued += self.send(sockets, &packets);
                    }
                }
            }
        }
        queued
    }

    fn send(&self, sockets: &[Socket], packets: &[Outbound]) -> usize {
        let mut ok = 0;
        for s in sockets {
            match s.send(packets) {
                Ok(()) => ok += 1,
                Err(_) => self.metrics.delivery_failures.inc(),
            }
        }
        self.metrics.deliveries.add(ok as u64);
        ok
    }
}
