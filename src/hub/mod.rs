//! The node's live state: which sockets belong to which user. The hub is the only place
//! that writes pushes to sockets; a message is encoded once and the same bytes are
//! queued for every recipient.
//!
//! Broadcasts are fanned out by one task per hub rather than by the caller: it waits
//! until the tasks ready to run have had their turn, then visits each socket once for
//! all the broadcasts that arrived meanwhile. Visiting 10,000 sockets costs far more
//! than queueing a packet on each, so a burst of broadcasts costs little more than one.
//! Order is kept all the same: broadcasts reach every socket in the order they were
//! pushed, and a push to users first finishes the fan-out of any broadcast accepted
//! before it, so no socket sees a later push before an earlier broadcast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

mod broadcast;
mod member;
mod probe;

use broadcast::Broadcasts;
use member::{Member, Replay};
use probe::AckProbe;

use crate::metrics::{counter, histogram, Histogram, IntCounter, Registry, LATENCY};
use crate::protocol::packet;
use crate::protocol::{Args, Socket};
use crate::transport::Outbound;
use crate::vocab::{Message, StoredMessage, Target};
use parking_lot::Mutex;

/// Hub settings (`[hub]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Largest number of simultaneous connections of one user; more are refused at
    /// connect. Default 64.
    pub max_connections_per_user: usize,
    /// Live messages held for a connection while it replays stored ones; past this the
    /// held ones are dropped and the replay reads them from the store instead.
    /// Default 1024.
    pub max_replay_buffer: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections_per_user: 64,
            max_replay_buffer: 1024,
        }
    }
}

/// The room of anonymous connections: broadcasts reach it; no user push can, since no
/// user id is empty.
pub const ANONYMOUS: &str = "";

/// The packets of a live message: `event(data, {id, ts})`, the same for everyone.
pub fn encode_live(msg: &Message) -> Vec<Outbound> {
    let args = format!(
        "[{},{{\"id\":{},\"ts\":{}}}]",
        msg.data.get(),
        json_string(&msg.id),
        msg.ts
    );
    packet::encode_event("/", &msg.event, &Args::from_raw(args, Vec::new()), None)
}

/// The packets of one user's stored copy, the one with `seq`: `event(data, {id, seq,
/// ts})`, asking for an ack whose id is the seq, so that all of one user's devices share
/// the same bytes.
pub fn encode_stored(id: &str, seq: u64, ts: u64, event: &str, data: &str) -> Vec<Outbound> {
    let id = json_string(id);
    let args = format!("[{data},{{\"id\":{id},\"seq\":{seq},\"ts\":{ts}}}]");
    packet::encode_event("/", event, &Args::from_raw(args, Vec::new()), Some(seq))
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// What a delivery did.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Connections the message was queued to (or held for, during a replay); for a
    /// broadcast, the sockets in rooms when it was accepted.
    pub queued: usize,
    /// Connections that missed stored messages (a seq arrived past a gap, as can happen
    /// when nodes publish out of order): `(user, socket, last seq sent)`. They now hold
    /// live messages; the caller catches them up from the store.
    pub gaps: Vec<(String, Socket, u64)>,
}

enum Offer {
    Queued(usize),
    Gap(u64),
}

/// What a replay should do after [`Hub::finish_replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayEnd {
    /// The connection is live.
    Live,
    /// Live messages overflowed the buffer: read on from the store after this seq.
    ReadOn(u64),
    /// The connection has gone.
    Gone,
}

/// Why a socket could not join its user's room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("too many connections for this user")]
    TooManyConnections,
}

/// Hub metrics.
#[derive(Debug)]
pub struct HubMetrics {
    pub registry: Registry,
    /// Packets queued to sockets by pushes.
    pub deliveries: IntCounter,
    /// Deliveries that failed because a socket's queue was full or it had closed.
    pub delivery_failures: IntCounter,
    /// From a push being ready (accepted if live, committed if stored; on whichever
    /// node) to its packets queued for this node's connections: once per push and node.
    pub latency: Histogram,
    /// Acks received for stored messages.
    pub acks: IntCounter,
    /// Ack round trips, sampled.
    probe: AckProbe,
}

impl Default for HubMetrics {
    fn default() -> Self {
        let r = Registry::new();
        HubMetrics {
            deliveries: counter(
                &r,
                "herald_deliveries_total",
                "Packets queued to connections by pushes (live, resumed and replayed).",
            ),
            delivery_failures: counter(
                &r,
                "herald_delivery_failures_total",
                "Packets not queued because the connection's queue was full or it had closed.",
            ),
            latency: histogram(
                &r,
                "herald_delivery_seconds",
                "A push ready (accepted if live, committed if stored; on any node) to its packets queued on this node's connections: one observation per push and node.",
                LATENCY,
            ),
            acks: counter(
                &r,
                "herald_acks_total",
                "Acks of stored messages received from clients.",
            ),
            probe: AckProbe::new(histogram(
                &r,
                "herald_ack_round_trip_seconds",
                "A stored message queued to a connection until that connection acks it (sampled: one in flight per node).",
                LATENCY,
            )),
            registry: r,
        }
    }
}

const SHARDS: usize = 32;

/// One shard of the user index.
type Shard = Mutex<HashMap<Arc<str>, Vec<Member>>>;

/// The user index: user id → that user's sockets on this node.
pub struct Hub {
    config: HubConfig,
    /// Sharded by user id so that connects of different users rarely contend.
    shards: Box<[Shard]>,
    pub metrics: HubMetrics,
    /// Sockets in all rooms.
    held: AtomicUsize,
    broadcasts: Arc<Broadcasts>,
    /// Broadcasts accepted and not yet fanned out (pending, or being fanned out).
    unfinished: AtomicUsize,
    /// Fan-outs of broadcasts run one at a time, so that they stay in order.
    fanning_out: Mutex<()>,
    me: Weak<Hub>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Let the fan-out task see that the hub is gone.
        self.broadcasts.notify.notify_one();
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics: HubMetrics::default(),
            held: AtomicUsize::new(0),
            broadcasts: Arc::default(),
            unfinished: AtomicUsize::new(0),
            fanning_out: Mutex::new(()),
            me: me.clone(),
        })
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
    /// A `resuming` socket holds live stored messages until its replay finishes.
    pub fn join(&self, user: &str, socket: &Socket, resuming: bool) -> Result<usize, JoinError> {
        let member = Member::new(socket.clone(), resuming);
        let mut shard = self.shard(user).lock();
        if let Some(members) = shard.get_mut(user) {
            if members.len() >= self.config.max_connections_per_user && user != ANONYMOUS {
                return Err(JoinError::TooManyConnections);
            }
            members.push(member);
            self.held.fetch_add(1, Ordering::Relaxed);
            Ok(members.len())
        } else {
            shard.insert(Arc::from(user), vec![member]);
            self.held.fetch_add(1, Ordering::Relaxed);
            Ok(1)
        }
    }

    /// Removes a socket from its user's room (the room goes when it is empty); returns
    /// how many connections the user has left here.
    pub fn leave(&self, user: &str, socket: &Socket) -> usize {
        let mut shard = self.shard(user).lock();
        let Some(members) = shard.get_mut(user) else {
            return 0;
        };
        let before = members.len();
        members.retain(|m| &m.socket != socket);
        let left = members.len();
        self.held.fetch_sub(before - left, Ordering::Relaxed);
        if left == 0 {
            shard.remove(user);
        }
        left
    }

    /// Puts every live connection that has a known position into replay mode (holding
    /// live messages) and returns them with that position, to be caught up from the
    /// store after this node missed messages.
    pub fn hold_all(&self) -> Vec<(String, Socket, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (user, members) in shard.iter_mut() {
                for m in members.iter_mut() {
                    let at = m.last_seq.max(m.floor());
                    if !m.is_replaying() && at > 0 {
                        m.start_replay(Replay::default());
                        out.push((user.to_string(), m.socket.clone(), at));
                    }
                }
            }
        }
        out
    }

    /// Records where a live connection started (its user's last seq when it joined),
    /// so that a catch-up after this node missed messages knows where it stands. Only a
    /// catch-up uses it: live delivery does not skip anything because of it.
    pub fn set_floor(&self, user: &str, socket: &Socket, seq: u64) {
        let mut shard = self.shard(user).lock();
        if let Some(m) = shard
            .get_mut(user)
            .and_then(|ms| ms.iter_mut().find(|m| &m.socket == socket))
        {
            m.set_floor(seq);
        }
    }

    /// Live messages held per connection during a replay.
    pub fn max_replay_buffer(&self) -> usize {
        self.config.max_replay_buffer
    }

    /// Number of this user's connections on this node.
    pub fn connections(&self, user: &str) -> usize {
        self.shard(user).lock().get(user).map_or(0, Vec::len)
    }

    /// `user`'s connections on this node.
    pub fn user_sockets(&self, user: &str) -> Vec<Socket> {
        self.shard(user)
            .lock()
            .get(user)
            .map(|ms| ms.iter().map(|m| m.socket.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of users with at least one connection.
    pub fn users(&self) -> usize {
        let rooms: usize = self.shards.iter().map(|s| s.lock().len()).sum();
        // The anonymous connections' room is no user's.
        rooms - usize::from(self.connections(ANONYMOUS) > 0)
    }

    /// Number of sockets in all rooms.
    pub fn sockets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Queues a message for every local connection of its target.
    pub fn deliver(&self, msg: &Message) -> Delivery {
        let mut queued = 0;
        let mut gaps = Vec::new();
        if !matches!(msg.target, Target::All) && self.unfinished.load(Ordering::Acquire) > 0 {
            self.flush_broadcasts();
        }
        match &msg.target {
            Target::Users(users) => {
                let packets = encode_live(msg);
                let mut reached = 0;
                for user in users {
                    let shard = self.shard(user).lock();
                    if let Some(members) = shard.get(user.as_str()) {
                        queued += self.send(members.iter().map(|m| &m.socket), &packets);
                        reached += 1;
                    }
                }
                self.observe_latency(msg, reached);
            }
            Target::All => {
                // Answered with the sockets in rooms now; the fan-out follows shortly.
                queued = self.held.load(Ordering::Relaxed);
                self.broadcast(encode_live(msg), msg.ready_us);
            }
            Target::Stored(seqs) => {
                let mut reached = 0;
                for (user, seq) in seqs {
                    let mut shard = self.shard(user).lock();
                    let Some(members) = shard.get_mut(user.as_str()) else {
                        continue;
                    };
                    reached += 1;
                    // Encoded once per user: the ack id (the seq) differs between users.
                    let packets = encode_stored(&msg.id, *seq, msg.ts, &msg.event, msg.data.get());
                    for m in members.iter_mut() {
                        match self.offer(m, *seq, &packets) {
                            Offer::Queued(n) => queued += n,
                            Offer::Gap(after) => {
                                queued += 1;
                                gaps.push((user.clone(), m.socket.clone(), after));
                            }
                        }
                    }
                }
                self.observe_latency(msg, reached);
            }
        }
        Delivery { queued, gaps }
    }

    /// Records how long `msg` took to reach this node's connections, if it reached
    /// any (one observation per push and node, whatever the number of users).
    fn observe_latency(&self, msg: &Message, users: u64) {
        if users > 0 && msg.ready_us > 0 {
            let took = crate::metrics::seconds_since(msg.ready_us);
            self.metrics.latency.observe(took);
        }
    }

    /// Sends or holds one stored copy for one connection.
    fn offer(&self, m: &mut Member, seq: u64, packets: &[Outbound]) -> Offer {
        let max_held = self.config.max_replay_buffer;
        if let Some(replay) = m.replay() {
            if replay.overflowed {
                return Offer::Queued(0);
            }
            if replay.held.len() >= max_held {
                replay.held = Vec::new();
                replay.overflowed = true;
                return Offer::Queued(0);
            }
            replay.held.push((seq, packets.to_vec()));
            return Offer::Queued(1);
        }
        if seq <= m.last_seq {
            return Offer::Queued(0);
        }
        if m.last_seq > 0 && seq > m.last_seq + 1 {
            // Something between was missed: hold this one and read the rest first.
            m.start_replay(Replay {
                held: vec![(seq, packets.to_vec())],
                overflowed: false,
            });
            return Offer::Gap(m.last_seq);
        }
        m.last_seq = seq;
        Offer::Queued(self.send_stored(m, seq, packets))
    }

    /// Sends one stored message to one connection and notes that it did.
    fn send_stored(&self, m: &mut Member, seq: u64, packets: &[Outbound]) -> usize {
        let n = self.send(std::iter::once(&m.socket), packets);
        if n > 0 {
            self.metrics.probe.sent(m.socket.session().sid(), seq);
            m.sent(seq);
        } else {
            m.refused(seq);
        }
        n
    }

    /// Sends a page of stored messages to a replaying connection, skipping what it
    /// already has. Returns false if the connection has gone.
    pub fn replay_page(&self, user: &str, socket: &Socket, page: &[StoredMessage]) -> bool {
        let mut shard = self.shard(user).lock();
        let Some(m) = shard
            .get_mut(user)
            .and_then(|ms| ms.iter_mut().find(|m| &m.socket == socket))
        else {
            return false;
        };
        for msg in page {
            if msg.seq <= m.last_seq {
                continue;
            }
            let packets = encode_stored(&msg.id, msg.seq, msg.ts, &msg.event, msg.data.get());
            m.last_seq = msg.seq;
            self.send_stored(m, msg.seq, &packets);
        }
        true
    }

    /// Ends a replay: sends the held live messages the replay did not cover and makes
    /// the connection live, unless the buffer overflowed.
    pub fn finish_replay(&self, user: &str, socket: &Socket) -> ReplayEnd {
        let mut shard = self.shard(user).lock();
        let Some(m) = shard
            .get_mut(user)
            .and_then(|ms| ms.iter_mut().find(|m| &m.socket == socket))
        else {
            return ReplayEnd::Gone;
        };
        let last = m.last_seq;
        let Some(replay) = m.replay() else {
            return ReplayEnd::Live;
        };
        if replay.overflowed {
            replay.overflowed = false;
            return ReplayEnd::ReadOn(last);
        }
        let held = m.end_replay().map(|r| r.held).unwrap_or_default();
        for (seq, packets) in held {
            if seq > m.last_seq {
                m.last_seq = seq;
                self.send_stored(m, seq, &packets);
            }
        }
        ReplayEnd::Live
    }

    /// A connection acked `seq` (counted, and timed if probed): whether `seq` has been
    /// queued to it (acks for anything else are ignored: a client cannot mark delivered
    /// what it was never sent).
    pub fn was_sent(&self, user: &str, socket: &Socket, seq: u64) -> bool {
        self.metrics.acks.inc();
        self.metrics.probe.acked(socket.session().sid(), seq);
        let shard = self.shard(user).lock();
        shard
            .get(user)
            .and_then(|ms| ms.iter().find(|m| &m.socket == socket))
            .is_some_and(|m| m.was_sent(seq))
    }

    /// Tells a user's connections (but `except`) that they have read up to `up_to`.
    pub fn read_up_to(&self, user: &str, up_to: u64, except: Option<&Socket>) -> usize {
        let packets = packet::encode_event(
            "/",
            "read",
            &Args::one(&serde_json::json!({"upTo": up_to})),
            None,
        );
        let shard = self.shard(user).lock();
        shard.get(user).map_or(0, |ms| {
            self.send(
                ms.iter().map(|m| &m.socket).filter(|s| Some(*s) != except),
                &packets,
            )
        })
    }

    /// Anonymous connections (`auth.anonymous`) on this node.
    pub fn anonymous(&self) -> usize {
        self.connections(ANONYMOUS)
    }

    /// Sends one of herald's own events (`inbox`) to one connection; not a push, so not
    /// counted as a delivery.
    pub fn emit_to(&self, socket: &Socket, event: &str, data: &serde_json::Value) -> bool {
        let packets = packet::encode_event("/", event, &Args::one(data), None);
        socket.send(&packets).is_ok()
    }

    fn send<'a>(&self, sockets: impl Iterator<Item = &'a Socket>, packets: &[Outbound]) -> usize {
        let mut ok = 0;
        for s in sockets {
            match s.send(packets) {
                Ok(()) => ok += 1,
                Err(_) => self.metrics.delivery_failures.inc(),
            }
        }
        self.metrics.deliveries.inc_by(ok as u64);
        ok
    }
}
