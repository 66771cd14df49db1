//! How a message reaches the other nodes that hold its users: publish, subscribe,
//! presence, and nothing else. A broker never touches the hub or the store; what it
//! receives from other nodes it hands to its node as [`Inbound`] events, and delivery
//! takes it from there.
//!
//! - [`memory`]: one node on its own ([`memory::MemoryBroker::single`]), or several nodes
//!   in one process sharing a [`memory::MemoryBus`] (tests);
//! - [`redis`]: nodes sharing a Redis, each subscribed to the users it holds.

pub mod memory;
pub mod redis;
pub mod resp;

use std::future::Future;
use std::pin::Pin;

use crate::vocab::Message;

/// What a broker hands to its node.
#[derive(Debug)]
pub enum Inbound {
    /// A message another node published for users held here (or for everyone). Its
    /// target names only users this node subscribed to.
    Message(Message),
    /// Messages may have been missed (the broker was disconnected and is back): every
    /// local connection is to catch up from the store.
    Resync,
    /// Another node was asked to disconnect a user everywhere (and, with
    /// `revoke_before`, to refuse the user's tokens issued before that Unix second).
    Kick {
        user: String,
        revoke_before: Option<u64>,
    },
}

/// A node of the cluster, as the broker last heard from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: String,
    /// Connections of signed-in users on the node.
    pub connections: u64,
    /// Users with a connection on the node.
    pub users: u64,
    pub version: String,
    /// Unix ms at which the node started.
    pub started_at: u64,
    /// Unix ms of the figures above (refreshed every third of the presence TTL).
    pub updated_at: u64,
}

/// A boxed future, for the broker's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publish, subscribe, presence across nodes.
pub trait Broker: Send + Sync + 'static {
    /// Sends `msg` to the other nodes holding its users (every node, for a broadcast).
    /// Never waits: a message that cannot be published now is counted as lost to the
    /// other nodes, which catch up from the store once the broker is back.
    fn publish(&self, msg: &Message);
    /// This node now holds `connections` of `user`'s connections (after a join or a
    /// leave): subscribes to the user at 1, unsubscribes at 0, records presence.
    fn hold(&self, user: &str, connections: usize);
    /// `user`'s connections on the other nodes.
    fn remote_presence<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize>;
    /// Tells the other nodes to disconnect `user` (and, with `revoke_before`, to refuse
    /// their tokens issued before that Unix second). Best effort, like a publish.
    fn kick(&self, _user: &str, _revoke_before: Option<u64>) {}
    /// The other nodes (alive), as they last reported themselves.
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeInfo>> {
        Box::pin(async { Vec::new() })
    }
    /// Whether messages flow to and from the other nodes now.
    fn healthy(&self) -> bool {
        true
    }
    /// Leaves the other nodes' view (a clean shutdown).
    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
