//! Takes an accepted message to the nodes that hold its users. On one node that is the
//! local hub; the cluster router (through Redis) implements the same seam.

use std::sync::Arc;

use crate::hub::{Hub, Message};

/// Where messages go once accepted.
pub trait Router: Send + Sync + 'static {
    /// Delivers `msg` to its target's connections wherever they are; returns the number
    /// of connections reached on this node.
    fn route(&self, msg: &Message) -> usize;
}

/// A single node: every connection is local.
pub struct LocalRouter {
    hub: Arc<Hub>,
}

impl LocalRouter {
    pub fn new(hub: Arc<Hub>) -> LocalRouter {
        LocalRouter { hub }
    }
}

impl Router for LocalRouter {
    fn route(&self, msg: &Message) -> usize {
        self.hub.deliver(msg)
    }
}
