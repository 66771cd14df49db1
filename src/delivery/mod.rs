//! The one home of delivery rules: everything between a message that was accepted (and,
//! when durable, committed) and the hub.
//!
//! - Live delivery: a message goes to this node's connections through the hub, and to
//!   the other nodes holding its users through the broker.
//! - Resume: a connection that asks for `since` (or comes back with a `deviceId`) gets
//!   every stored message after that point, in order, before live ones; live stored
//!   messages that arrive meanwhile are held by the hub and follow without gap or
//!   duplicate ([`Delivery::catch_up`]).
//! - Gaps: a stored message that arrives past a gap (nodes publish out of order, a
//!   broker drops some) holds the connection and catches it up from the store; after a
//!   broker outage every connection does ([`Inbound::Resync`]).
//! - Acks and read state: an ack counts only for a seq that connection was sent; a read
//!   position is stored and shown to the user's other devices.
//!
//! It is the only caller of the hub's deliver and replay functions. [`devices`] is the
//! root namespace: it admits clients and hands them to the rules here.

pub mod devices;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::broker::{Broker, Inbound};
use crate::hub::{Hub, JoinError, ReplayEnd};
use crate::protocol::Socket;
use crate::store::{Store, StoreError};
use crate::vocab::Message;

/// Delivery for one node. Cheap to share (`Arc`).
pub struct Delivery {
    hub: Arc<Hub>,
    store: Store,
    broker: Arc<dyn Broker>,
    /// Whether messages for this node's users can arrive from elsewhere and be missed
    /// (a broker that can drop out): then a live connection's position is read at
    /// connect, so that a resync knows where it stands.
    may_miss: bool,
}

/// Where a connecting client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Live messages only.
    Live,
    /// Every stored message after this seq, then live ones.
    Since(u64),
    /// After the last seq this device acknowledged (live only for a new device).
    Device,
}

impl Delivery {
    /// `may_miss`: the broker connects this node to others and may drop out (a resync
    /// must then know where each live connection started).
    pub fn new(
        hub: Arc<Hub>,
        store: Store,
        broker: Arc<dyn Broker>,
        may_miss: bool,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            hub,
            store,
            broker,
            may_miss,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Delivers an accepted message: to this node's connections, and through the broker
    /// to the other nodes holding its users. Returns the connections reached here.
    pub fn route(self: &Arc<Self>, msg: &Message) -> usize {
        let queued = self.deliver_here(msg);
        self.broker.publish(msg);
        queued
    }

    /// Delivers to this node's connections; those that missed stored messages are caught
    /// up from the store.
    fn deliver_here(self: &Arc<Self>, msg: &Message) -> usize {
        let delivery = self.hub.deliver(msg);
        for (user, socket, after) in delivery.gaps {
            tokio::spawn(self.clone().catch_up(socket, user, after));
        }
        delivery.queued
    }

    /// Handles what the broker brings from other nodes, until it stops.
    pub async fn run_inbound(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(event) = inbound.recv().await {
            self.inbound(event);
        }
    }

    /// One event from the broker.
    pub fn inbound(self: &Arc<Self>, event: Inbound) {
        match event {
            Inbound::Message(msg) => {
                self.deliver_here(&msg);
            }
            Inbound::Resync => {
                for (user, socket, after) in self.hub.hold_all() {
                    tokio::spawn(self.clone().catch_up(socket, user, after));
                }
            }
        }
    }

    /// Adds a connection to its user's room; a resuming one holds live stored messages
    /// until its replay is done.
    pub fn join(&self, user: &str, socket: &Socket, resume: Resume) -> Result<usize, JoinError> {
        let here = self.hub.join(user, socket, resume != Resume::Live)?;
        self.broker.hold(user, here);
        Ok(here)
    }

    /// Takes a connection out of its user's room.
    pub fn leave(&self, user: &str, socket: &Socket) {
        let here = self.hub.leave(user, socket);
        self.broker.hold(user, here);
    }

    /// Starts a joined connection: replays what it asked for, or notes where a live one
    /// stands.
    pub fn start(
        self: &Arc<Self>,
        socket: &Socket,
        user: &str,
        device: Option<&str>,
        resume: Resume,
    ) {
        let (this, socket, user) = (self.clone(), socket.clone(), user.to_owned());
        let device = device.map(str::to_owned);
        match resume {
            Resume::Live if self.may_miss => {
                tokio::spawn(async move {
                    if let Ok(u) = this.store.unread(&user).await {
                        this.hub.set_floor(&user, &socket, u.last_seq);
                    }
                });
            }
            Resume::Live => {}
            Resume::Since(after) => {
                tokio::spawn(this.catch_up(socket, user, after));
            }
            Resume::Device => {
                tokio::spawn(async move {
                    let device = device.unwrap_or_default();
                    let after = match this.store.device_acked(&user, &device).await {
                        Ok(Some(n)) => n,
                        // A device seen for the first time starts live: it gets what
                        // arrived since it joined (held meanwhile), and nothing older.
                        Ok(None) => match this.hub.finish_replay(&user, &socket) {
                            ReplayEnd::Live | ReplayEnd::Gone => return,
                            // More arrived than could be held: read them from the store.
                            ReplayEnd::ReadOn(_) => match this.store.unread(&user).await {
                                Ok(u) => u
                                    .last_seq
                                    .saturating_sub(this.hub.max_replay_buffer() as u64),
                                Err(_) => return socket.close_transport(),
                            },
                        },
                        Err(_) => return socket.close_transport(),
                    };
                    this.catch_up(socket, user, after).await;
                });
            }
        }
    }

    /// Sends a connection (already holding live messages) every stored message after
    /// `after`, page by page, then makes it live: held live messages the pages did not
    /// cover follow, so the client sees every seq once, in order.
    pub async fn catch_up(self: Arc<Self>, socket: Socket, user: String, mut after: u64) {
        let page = self.store.config().max_page.min(500);
        loop {
            let msgs = match self.store.messages(&user, after, page).await {
                Ok(m) => m,
                Err(e) => {
                    // The client reconnects and resumes again; nothing is skipped.
                    tracing::warn!(user, error = %e, "catch-up failed; closing the connection");
                    return socket.close_transport();
                }
            };
            if !self.hub.replay_page(&user, &socket, &msgs) {
                return;
            }
            if let Some(last) = msgs.last() {
                after = last.seq;
            }
            if msgs.len() == page {
                continue;
            }
            match self.hub.finish_replay(&user, &socket) {
                ReplayEnd::Live | ReplayEnd::Gone => return,
                ReplayEnd::ReadOn(seq) => after = seq,
            }
        }
    }

    /// A connection acknowledged `seq`: recorded as delivered (to `device`), if that
    /// connection was sent it.
    pub fn ack(&self, user: &str, socket: &Socket, seq: u64, device: Option<&str>) {
        if self.hub.was_sent(user, socket, seq) {
            self.store.mark_delivered(user, seq, device);
        }
    }

    /// Moves a user's read position; their other connections (all but `except`) are
    /// told. Returns the position stored.
    pub async fn read(
        &self,
        user: &str,
        up_to: u64,
        except: Option<&Socket>,
    ) -> Result<u64, StoreError> {
        let stored = self.store.mark_read(user, up_to).await?;
        self.hub.read_up_to(user, stored, except);
        Ok(stored)
    }

    /// A user's connections, on this node and the others.
    pub async fn presence(&self, user: &str) -> usize {
        self.hub.connections(user) + self.broker.remote_presence(user).await
    }

    /// Whether messages reach the other nodes now.
    pub fn healthy(&self) -> bool {
        self.broker.healthy()
    }

    /// On shutdown: broadcasts accepted before are queued before sessions close.
    pub fn flush(&self) {
        self.hub.flush_broadcasts();
    }

    /// Leaves the other nodes' view.
    pub async fn leave_cluster(&self) {
        self.broker.leave().await;
    }
}
