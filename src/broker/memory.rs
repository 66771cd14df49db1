//! Brokers in memory: a node on its own, or nodes in one process sharing a bus.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{BoxFuture, Broker, Inbound};
use crate::vocab::{Message, Target};

/// A node on its own: there is no other node to publish to, subscribe with, or count.
/// It keeps nothing per user.
#[derive(Debug, Default)]
pub struct MemoryBroker {
    /// The bus shared with other nodes in this process, and this node's place on it.
    bus: Option<(Arc<MemoryBus>, usize)>,
}

/// Nodes in one process: each holds some users; a message goes to the nodes holding
/// its users, as Redis would take it.
#[derive(Debug, Default)]
pub struct MemoryBus {
    nodes: Mutex<Vec<Node>>,
}

#[derive(Debug)]
struct Node {
    /// Connections held per user.
    held: HashMap<String, usize>,
    inbound: mpsc::UnboundedSender<Inbound>,
}

impl MemoryBroker {
    /// The broker of a node on its own.
    pub fn single() -> MemoryBroker {
        MemoryBroker { bus: None }
    }

    /// Joins `bus` as a new node; its inbound events arrive on the receiver.
    pub fn join(bus: &Arc<MemoryBus>) -> (MemoryBroker, mpsc::UnboundedReceiver<Inbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut nodes = bus.nodes.lock();
        nodes.push(Node {
            held: HashMap::new(),
            inbound: tx,
        });
        let me = nodes.len() - 1;
        (
            MemoryBroker {
                bus: Some((bus.clone(), me)),
            },
            rx,
        )
    }
}

impl MemoryBus {
    pub fn new() -> Arc<MemoryBus> {
        Arc::default()
    }

    /// Tells every node that messages may have been missed (as a broker coming back
    /// after an outage does).
    pub fn resync_all(&self) {
        for n in self.nodes.lock().iter() {
            let _ = n.inbound.send(Inbound::Resync);
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, msg: &Message) {
        let Some((bus, me)) = &self.bus else { return };
        let nodes = bus.nodes.lock();
        for (i, node) in nodes.iter().enumerate() {
            if i == *me {
                continue;
            }
            // As with per-user channels: each node gets the users it holds.
            let target = match &msg.target {
                Target::All => Target::All,
                Target::Users(users) => Target::Users(
                    users
                        .iter()
                        .filter(|u| node.held.contains_key(u.as_str()))
                        .cloned()
                        .collect(),
                ),
                Target::Stored(seqs) => Target::Stored(
                    seqs.iter()
                        .filter(|(u, _)| node.held.contains_key(u.as_str()))
                        .cloned()
                        .collect(),
                ),
            };
            let empty = match &target {
                Target::All => false,
                Target::Users(u) => u.is_empty(),
                Target::Stored(s) => s.is_empty(),
            };
            if !empty {
                let _ = node.inbound.send(Inbound::Message(Message {
                    target,
                    ..msg.clone()
                }));
            }
        }
    }

    fn kick(&self, user: &str, revoke_before: Option<u64>) {
        let Some((bus, me)) = &self.bus else { return };
        for (i, node) in bus.nodes.lock().iter().enumerate() {
            if i != *me {
                let _ = node.inbound.send(Inbound::Kick {
                    user: user.to_owned(),
                    revoke_before,
                });
            }
        }
    }

    fn hold(&self, user: &str, connections: usize) {
        let Some((bus, me)) = &self.bus else { return };
        let mut nodes = bus.nodes.lock();
        let held = &mut nodes[*me].held;
        if connections == 0 {
            held.remove(user);
        } else {
            held.insert(user.to_owned(), connections);
        }
    }

    fn remote_presence<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize> {
        let n = self.bus.as_ref().map_or(0, |(bus, me)| {
            let nodes = bus.nodes.lock();
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| i != me)
                .filter_map(|(_, n)| n.held.get(user))
                .sum()
        });
        Box::pin(async move { n })
    }
}
