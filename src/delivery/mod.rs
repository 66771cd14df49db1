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

pub mod controls;
pub mod devices;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use crate::broker::{Broker, Inbound};
use crate::hub::{Hub, JoinError, ReplayEnd};
use crate::protocol::Socket;
use crate::store::{HookKind, Store, StoreError};
use crate::vocab::{now_ms, Message};

/// Delivery for one node. Cheap to share (`Arc`).
pub struct Delivery {
    hub: Arc<Hub>,
    store: Store,
    broker: Arc<dyn Broker>,
    /// Whether messages for this node's users can arrive from elsewhere and be missed
    /// (a broker that can drop out): then a live connection's position is read at
    /// connect, so that a resync knows where it stands.
    may_miss: bool,
    /// Where a user's first connection here and their last one going are reported, for
    /// `user.online` / `user.offline` webhooks (unset when neither is wanted).
    presence: OnceLock<PresenceReports>,
    /// Tokens refused per user (see [`controls`]).
    revoked: controls::Revoked,
    pub metrics: controls::DeliveryMetrics,
}

/// Presence changes on their way to the outbox, in the order they happened here.
struct PresenceReports {
    online: bool,
    offline: bool,
    /// To the task that checks the other nodes and stores the event.
    changes: mpsc::Sender<(String, HookKind, u64)>,
}

/// Presence changes waiting to be checked and stored; more are dropped (and logged).
const PRESENCE_QUEUE: usize = 16_384;

/// Where a connecting client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Live messages only.
    Live,
    /// Every stored message after this seq, then live ones.
    Since(u64),
    /// After this device's position: the last seq it acknowledged, or for a device seen
    /// for the first time the user's last seq at that connect (stored then).
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
            presence: OnceLock::new(),
            revoked: controls::Revoked::default(),
            metrics: controls::DeliveryMetrics::default(),
        })
    }

    /// Reports users coming online (their first connection in the cluster) and going
    /// offline (their last one gone) to the webhook outbox. A change here counts when no
    /// other node holds the user; two nodes gaining a user's first connections in the
    /// same instant can both report it (receivers order and dedupe by `ts` and user).
    pub fn report_presence(&self, online: bool, offline: bool) {
        if !online && !offline {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<(String, HookKind, u64)>(PRESENCE_QUEUE);
        let reports = PresenceReports {
            online,
            offline,
            changes: tx,
        };
        if self.presence.set(reports).is_err() {
            return;
        }
        let (broker, store) = (self.broker.clone(), self.store.clone());
        tokio::spawn(async move {
            while let Some((user, kind, at)) = rx.recv().await {
                if broker.remote_presence(&user).await > 0 {
                    continue;
                }
                let data = serde_json::json!({"user": user, "at": at});
                if let Err(e) = store.add_event(kind, data).await {
                    tracing::warn!(user, kind = kind.as_str(), error = %e, "presence event not stored");
                }
            }
        });
    }

    fn presence_changed(&self, user: &str, here: usize) {
        let Some(p) = self.presence.get() else {
            return;
        };
        let kind = match here {
            0 if p.offline => HookKind::Offline,
            1 if p.online => HookKind::Online,
            _ => return,
        };
        if p.changes
            .try_send((user.to_owned(), kind, now_ms()))
            .is_err()
        {
            tracing::warn!(
                user,
                kind = kind.as_str(),
                "presence event dropped: too many waiting"
            );
        }
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
                // Orders sent while the broker was away were missed too.
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.load_revocations().await {
                        tracing::warn!(error = %e, "cannot reload token revocations");
                    }
                });
            }
            kick @ Inbound::Kick { .. } => self.kicked_elsewhere(kick),
        }
    }

    /// Adds a connection to its user's room; a resuming one holds live stored messages
    /// until its replay is done.
    pub fn join(&self, user: &str, socket: &Socket, resume: Resume) -> Result<usize, JoinError> {
        let here = self.hub.join(user, socket, resume != Resume::Live)?;
        // Anonymous connections get broadcasts, which reach every node anyway.
        if user != crate::hub::ANONYMOUS {
            self.broker.hold(user, here);
            self.presence_changed(user, here);
        }
        Ok(here)
    }

    /// Takes a connection out of its user's room.
    pub fn leave(&self, user: &str, socket: &Socket) {
        let here = self.hub.leave(user, socket);
        if user != crate::hub::ANONYMOUS {
            self.broker.hold(user, here);
            self.presence_changed(user, here);
        }
    }

    /// Starts a joined connection: tells it where its inbox stands (`inbox`), then
    /// replays what it asked for, or notes where a live one stands.
    pub fn start(
        self: &Arc<Self>,
        socket: &Socket,
        user: &str,
        device: Option<&str>,
        resume: Resume,
    ) {
        let (this, socket, user) = (self.clone(), socket.clone(), user.to_owned());
        let device = device.map(str::to_owned);
        tokio::spawn(async move {
            // A device's position is read (or, for a new device, stored) before the
            // inbox state, so a new device's position is at or below the lastSeq it is
            // told: nothing stored after it can be missed.
            // Every device gets a position at its first connect, also one resuming with
            // `since`, so that it can come back without.
            let position = match &device {
                Some(device) => match this.store.device_position(&user, device).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(user, error = %e, "device position unreadable; closing the connection");
                        return socket.close_transport();
                    }
                },
                None => None,
            };
            let state = match this.store.unread(&user).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(user, error = %e, "inbox state unreadable; closing the connection");
                    return socket.close_transport();
                }
            };
            this.hub
                .emit_to(&socket, "inbox", &serde_json::json!(state));
            match resume {
                Resume::Live => {
                    if this.may_miss {
                        this.hub.set_floor(&user, &socket, state.last_seq);
                    }
                }
                Resume::Since(after) => this.catch_up(socket, user, after).await,
                Resume::Device => {
                    let after = position.unwrap_or(state.last_seq);
                    this.catch_up(socket, user, after).await;
                }
            }
        });
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
