//! Takes an accepted message to the nodes that hold its users: the local hub on a single
//! node ([`LocalRouter`]), or through Redis to exactly the nodes holding each user
//! ([`cluster::ClusterRouter`]). Also catches connections up from the store when they
//! missed stored messages (a resume, a gap, Redis coming back).

pub mod cluster;
pub mod resp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::hub::{Hub, ReplayEnd};
use crate::protocol::Socket;
use crate::store::Store;
use crate::vocab::Message;

/// Where messages go once accepted.
pub trait Router: Send + Sync + 'static {
    /// Delivers `msg` to its target's connections wherever they are; returns the number
    /// of connections reached on this node.
    fn route(&self, msg: &Message) -> usize;
    /// A user's connection count on this node is now `connections` (after a join or a
    /// leave).
    fn local_presence(&self, _user: &str, _connections: usize) {}
    /// A user's connections across the cluster.
    fn presence<'a>(&'a self, user: &'a str) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>>;
    /// Whether routing works fully (the cluster router: Redis is reachable).
    fn healthy(&self) -> bool {
        true
    }
    /// Whether other nodes may deliver to this node's users.
    fn is_cluster(&self) -> bool {
        false
    }
}

/// A single node: every connection is local.
pub struct LocalRouter {
    hub: Arc<Hub>,
    store: Store,
}

impl LocalRouter {
    pub fn new(hub: Arc<Hub>, store: Store) -> LocalRouter {
        LocalRouter { hub, store }
    }
}

impl Router for LocalRouter {
    fn route(&self, msg: &Message) -> usize {
        let delivery = self.hub.deliver(msg);
        catch_up_gaps(&self.hub, &self.store, delivery.gaps);
        delivery.queued
    }

    fn presence<'a>(&'a self, user: &'a str) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>> {
        let n = self.hub.connections(user);
        Box::pin(async move { n })
    }
}

/// Starts catching up connections that missed stored messages.
pub(crate) fn catch_up_gaps(hub: &Arc<Hub>, store: &Store, gaps: Vec<(String, Socket, u64)>) {
    for (user, socket, after) in gaps {
        tokio::spawn(catch_up(hub.clone(), store.clone(), socket, user, after));
    }
}

/// Sends a connection (already holding live messages) every stored message after
/// `after`, page by page, then makes it live: held live messages the pages did not cover
/// follow, so the client sees every seq once, in order.
pub async fn catch_up(hub: Arc<Hub>, store: Store, socket: Socket, user: String, mut after: u64) {
    let page = store.config().max_page.min(500);
    loop {
        let msgs = match store.messages(&user, after, page).await {
            Ok(m) => m,
            Err(e) => {
                // The client reconnects and resumes again; nothing is skipped.
                tracing::warn!(user, error = %e, "catch-up failed; closing the connection");
                return socket.close_transport();
            }
        };
        if !hub.replay_page(&user, &socket, &msgs) {
            return;
        }
        if let Some(last) = msgs.last() {
            after = last.seq;
        }
        if msgs.len() == page {
            continue;
        }
        match hub.finish_replay(&user, &socket) {
            ReplayEnd::Live | ReplayEnd::Gone => return,
            ReplayEnd::ReadOn(seq) => after = seq,
        }
    }
}
