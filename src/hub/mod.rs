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
use std::sync::{Arc, OnceLock, Weak};

use crate::protocol::packet;
use crate::protocol::{Args, Socket};
use crate::transport::engine::Counter;
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

/// Fans out the broadcasts that arrive, a batch at a time, until the hub is dropped.
async fn fan_out_task(b: Arc<Broadcasts>, hub: Weak<Hub>) {
    loop {
        b.notify.notified().await;
        // Let the tasks that are ready (often more broadcasts) run first.
        tokio::task::yield_now().await;
        let Some(hub) = hub.upgrade() else { break };
        hub.flush_broadcasts();
    }
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// One connection in a user's room.
struct Member {
    socket: Socket,
    /// Highest stored seq queued to this connection; stored messages at or below it are
    /// not sent again. 0 until the first one.
    last_seq: u64,
    /// The user's last seq when a live connection joined: where a catch-up starts if the
    /// connection has had nothing since (cluster only).
    floor: u64,
    /// Set while the connection replays stored messages: live stored messages wait here.
    replay: Option<Box<Replay>>,
    /// The stored seqs queued to this connection: the only ones it may acknowledge.
    sent: Sent,
}

/// The stored seqs queued to one connection, as ranges. A connection is sent a run of
/// consecutive seqs (from where it resumed, or joined, on), so this is almost always
/// one range; a message its full queue refused starts another.
#[derive(Debug, Default)]
struct Sent {
    /// The latest range, `first..=last`; none while `first` is 0 (seqs start at 1).
    first: u64,
    last: u64,
    /// Earlier ranges, oldest first, at most [`MAX_SENT_RANGES`]: acks for ranges
    /// forgotten beyond that are ignored, the safe side (a redelivery, never a loss).
    older: Option<Box<[(u64, u64)]>>,
}

/// Earlier ranges of sent seqs kept per connection.
const MAX_SENT_RANGES: usize = 16;

impl Sent {
    fn record(&mut self, seq: u64) {
        if self.first != 0 {
            if seq == self.last + 1 {
                self.last = seq;
                return;
            }
            if (self.first..=self.last).contains(&seq) {
                return;
            }
            // Rare (a message refused by a full queue), so the list is rebuilt rather
            // than kept with room to grow: it costs an idle connection nothing.
            let mut older = self.older.take().map_or_else(Vec::new, Vec::from);
            if older.len() == MAX_SENT_RANGES {
                older.remove(0);
            }
            older.push((self.first, self.last));
            self.older = Some(older.into_boxed_slice());
        }
        self.first = seq;
        self.last = seq;
    }

    fn contains(&self, seq: u64) -> bool {
        (self.first != 0 && (self.first..=self.last).contains(&seq))
            || self
                .older
                .as_ref()
                .is_some_and(|o| o.iter().any(|&(a, b)| (a..=b).contains(&seq)))
    }
}

/// Live stored messages held during a replay.
#[derive(Default)]
struct Replay {
    held: Vec<(u64, Vec<Outbound>)>,
    /// More arrived than the buffer holds; the replay must read on from the store.
    overflowed: bool,
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

/// Broadcasts waiting for the fan-out task.
#[derive(Default)]
struct Broadcasts {
    pending: Mutex<Vec<Vec<Outbound>>>,
    notify: tokio::sync::Notify,
    started: OnceLock<()>,
}

/// Broadcasts waiting beyond this are fanned out by the pusher itself (which slows a
/// flood of broadcasts down to the pace of fanning them out).
const MAX_PENDING_BROADCASTS: usize = 1024;

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
        let member = Member {
            socket: socket.clone(),
            last_seq: 0,
            floor: 0,
            replay: resuming.then(Box::default),
            sent: Sent::default(),
        };
        let mut shard = self.shard(user).lock();
        if let Some(members) = shard.get_mut(user) {
            if members.len() >= self.config.max_connections_per_user {
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

    /// Every user held here, with their connection count.
    pub fn user_counts(&self) -> Vec<(String, usize)> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .map(|(u, ms)| (u.to_string(), ms.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
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
                    let at = m.last_seq.max(m.floor);
                    if m.replay.is_none() && at > 0 {
                        m.replay = Some(Box::default());
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
            m.floor = seq;
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
                for user in users {
                    let shard = self.shard(user).lock();
                    if let Some(members) = shard.get(user.as_str()) {
                        queued += self.send(members.iter().map(|m| &m.socket), &packets);
                    }
                }
            }
            Target::All => {
                // Answered with the sockets in rooms now; the fan-out follows shortly.
                queued = self.held.load(Ordering::Relaxed);
                self.broadcast(encode_live(msg));
            }
            Target::Stored(seqs) => {
                for (user, seq) in seqs {
                    let mut shard = self.shard(user).lock();
                    let Some(members) = shard.get_mut(user.as_str()) else {
                        continue;
                    };
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
            }
        }
        Delivery { queued, gaps }
    }

    /// Hands a broadcast to the fan-out task (started on first use), or fans out at
    /// once where there is no runtime, or too many broadcasts wait.
    fn broadcast(&self, packets: Vec<Outbound>) {
        let b = &self.broadcasts;
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.fan_out_now(packets);
        };
        b.started.get_or_init(|| {
            rt.spawn(fan_out_task(b.clone(), self.me.clone()));
        });
        let mut pending = b.pending.lock();
        if pending.len() >= MAX_PENDING_BROADCASTS {
            drop(pending);
            return self.fan_out_now(packets);
        }
        pending.push(packets);
        let first = pending.len() == 1;
        drop(pending);
        if first {
            b.notify.notify_one();
        }
    }

    /// Fans out `packets` now, after every broadcast accepted before it.
    fn fan_out_now(&self, packets: Vec<Outbound>) {
        let _order = self.fanning_out.lock();
        let mut batch = self.take_pending();
        batch.push(packets);
        self.fan_out_locked(&batch);
    }

    /// Finishes the fan-out of every broadcast accepted so far (waiting for one in
    /// progress); used before a push to users, and at shutdown.
    pub fn flush_broadcasts(&self) {
        let _order = self.fanning_out.lock();
        let batch = self.take_pending();
        if !batch.is_empty() {
            self.fan_out_locked(&batch);
        }
    }

    /// Takes the waiting broadcasts; call with `fanning_out` held, and fan them out
    /// before letting go of it.
    fn take_pending(&self) -> Vec<Vec<Outbound>> {
        std::mem::take(&mut *self.broadcasts.pending.lock())
    }

    /// Queues every broadcast of `batch`, in order, on every socket: one visit each.
    /// Call with `fanning_out` held.
    fn fan_out_locked(&self, batch: &[Vec<Outbound>]) {
        let mut ok = 0;
        let mut sockets = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for members in shard.values() {
                for m in members {
                    ok += m.socket.send_each(batch);
                    sockets += 1;
                }
            }
        }
        self.metrics.deliveries.add(ok as u64);
        self.metrics
            .delivery_failures
            .add((sockets * batch.len() - ok) as u64);
        // Every broadcast was counted when it was accepted.
        self.unfinished.fetch_sub(batch.len(), Ordering::AcqRel);
    }

    /// Sends or holds one stored copy for one connection.
    fn offer(&self, m: &mut Member, seq: u64, packets: &[Outbound]) -> Offer {
        if let Some(replay) = m.replay.as_mut() {
            if replay.overflowed {
                return Offer::Queued(0);
            }
            if replay.held.len() >= self.config.max_replay_buffer {
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
            m.replay = Some(Box::new(Replay {
                held: vec![(seq, packets.to_vec())],
                overflowed: false,
            }));
            return Offer::Gap(m.last_seq);
        }
        m.last_seq = seq;
        Offer::Queued(self.send_stored(m, seq, packets))
    }

    /// Sends one stored message to one connection and notes that it did.
    fn send_stored(&self, m: &mut Member, seq: u64, packets: &[Outbound]) -> usize {
        let n = self.send(std::iter::once(&m.socket), packets);
        if n > 0 {
            m.sent.record(seq);
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
        let Some(replay) = m.replay.as_mut() else {
            return ReplayEnd::Live;
        };
        if replay.overflowed {
            replay.overflowed = false;
            return ReplayEnd::ReadOn(m.last_seq);
        }
        let held = std::mem::take(&mut replay.held);
        m.replay = None;
        for (seq, packets) in held {
            if seq > m.last_seq {
                m.last_seq = seq;
                self.send_stored(m, seq, &packets);
            }
        }
        ReplayEnd::Live
    }

    /// Whether `seq` has been queued to this connection (acks for anything else are
    /// ignored: a client cannot mark delivered what it was never sent).
    pub fn was_sent(&self, user: &str, socket: &Socket, seq: u64) -> bool {
        let shard = self.shard(user).lock();
        shard
            .get(user)
            .and_then(|ms| ms.iter().find(|m| &m.socket == socket))
            .is_some_and(|m| m.sent.contains(seq))
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

    fn send<'a>(&self, sockets: impl Iterator<Item = &'a Socket>, packets: &[Outbound]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::Sent;

    #[test]
    fn sent_seqs_are_ranges_and_only_they_count() {
        let mut s = Sent::default();
        assert!(!s.contains(0) && !s.contains(1));
        // Resumed after 3: sent 4 and 5.
        s.record(4);
        s.record(5);
        assert!(!s.contains(1) && !s.contains(2) && !s.contains(3));
        assert!(s.contains(4) && s.contains(5) && !s.contains(6));
        // 6 was refused by a full queue; 7 and 8 went out.
        s.record(7);
        s.record(8);
        assert!(s.contains(5) && !s.contains(6) && s.contains(7) && s.contains(8));
        // Bounded: the oldest ranges are forgotten.
        for i in 0..40 {
            s.record(100 + 2 * i);
        }
        assert!(!s.contains(4), "the oldest ranges are dropped");
        assert!(s.contains(178));
        assert!(s.older.as_ref().unwrap().len() <= super::MAX_SENT_RANGES);
    }
}
