//! One Engine.IO session: its outbound queue, its transport state, and its heartbeat.
//!
//! A session is shared (`Arc`) between whoever pushes to it and whoever drains its queue.
//! Pushing never touches the socket: it queues a shared, already encoded packet, so a
//! slow client only ever costs its own bounded queue. A long-polling session's pending
//! `GET` is woken to answer. A WebSocket session is instead put on its engine's flush
//! list: a flusher task writes every listed session's queue straight to its socket once
//! the tasks that are ready to run have had their turn, so a burst of pushes to a
//! session leaves in one `writev` and an idle connection task is not woken at all. The
//! connection task takes over only what the socket refuses, once it is writable again.
//! All writes to a WebSocket happen under the session's lock, so frames never interleave.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;

use parking_lot::Mutex;
use tokio::net::TcpStream;

mod heartbeat;
mod polling;
mod ws;

pub use super::connection::{CloseReason, Connection, Message, MessageError};
pub use super::sid::Sid;
pub(crate) use polling::GetReply;
pub(crate) use ws::WsEnd;

use super::config::OverflowPolicy;
use super::engine::EngineInner;
use super::packet::{Eio, Kind, Outbound, Packet};

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("session is closed")]
    Closed,
    #[error("client queue full; message dropped")]
    Dropped,
    #[error("client queue full; session closed")]
    Overflow,
}

/// Why a request cannot take its part in a session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Busy {
    /// The session is not (or no longer) on long-polling.
    #[error("the session does not poll")]
    NotPolling,
    /// Another request of the same kind is pending (which, for a `GET`, ends the
    /// session, as in the reference server).
    #[error("another request of this kind is pending")]
    Duplicate,
    /// The previous `GET`'s answer is still being written: the next one waits for it.
    #[error("the previous answer is still being written")]
    Answering,
}

/// Where a session's polling `GET` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Get {
    Idle,
    /// One waits for packets (at most one may).
    Waiting,
    /// Its answer has been taken from the queue and is being written: the next `GET`
    /// waits until it is, so that answers are never copied out one after another and
    /// left unread.
    Answering,
    /// Closed by the client's close packet while no `GET` waited: one `GET` sent with
    /// that close (and so possibly handled after it) still gets its noop.
    Lingering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Long-polling; a `GET` drains the queue.
    Polling,
    /// A WebSocket has probed; the queue waits until the upgrade completes.
    Upgrading,
    /// On a WebSocket: the flusher writes the queue (the connection task only what the
    /// socket refused).
    WebSocket,
    /// The server closed the session; the queue is flushed, then the session ends.
    Closing,
    /// Ended; nothing more is sent.
    Closed,
}

struct Inner {
    /// Packets waiting for the client, in order. Allocates on first use.
    queue: VecDeque<Outbound>,
    /// Sum of the queued packets' lengths, bounded by `max_queue_bytes`.
    queued_bytes: usize,
    state: State,
    /// Set while a long-polling `GET` waits on this session (at most one may).
    get: Get,
    /// Set while a long-polling `POST` is being read (at most one may).
    post_active: bool,
    /// The pending polling `GET` must be answered with a noop (an upgrade is probing).
    noop: bool,
    /// The task that drains the queue: the WebSocket task or the pending `GET`.
    waker: Option<Waker>,
    /// The WebSocket task while an upgrade is in progress.
    ws_waker: Option<Waker>,
    /// Set when the session leaves the open states; `on_close` runs once for it.
    reason: Option<CloseReason>,
    /// The WebSocket, once its task has attached it: the flusher writes to it.
    ws: Option<Arc<TcpStream>>,
    /// Bytes that go to the WebSocket before the queue: the rest of a partly written
    /// frame, and frames the connection writes itself (pong, close). Empty, unallocated,
    /// almost always.
    raw: Vec<u8>,
    /// The close frame is in `raw`: nothing from the queue follows it.
    ws_closing: bool,
    /// The session is on its engine's flush list.
    flush_pending: bool,
    /// The socket refused bytes: the connection task writes once it is writable, and
    /// until then new packets only queue (no flush attempt that would be refused too).
    ws_blocked: bool,
}

const NEVER: u64 = u64::MAX;
/// How long a session closed by its client stays findable for a `GET` sent with the close.
const LINGER_GET: std::time::Duration = std::time::Duration::from_secs(2);
/// Set in `app_deadline` when it is a credentials expiry (engine-clock ms stay far
/// below it).
const EXPIRY: u64 = 1 << 62;

/// One Engine.IO session.
pub struct Session {
    sid: Sid,
    /// The client's address, when the per-address limits count this session (boxed:
    /// eight bytes, and none at all where the limits are off).
    ip: Option<Box<IpAddr>>,
    eio: Eio,
    /// v3 polling clients that asked for base64 (`b64=1`) instead of binary payloads.
    b64: bool,
    /// Which endpoint (path) the session belongs to.
    endpoint: u8,
    /// The layer above admitted the client (see [`Session::admit`]). Beside the other
    /// small fields, where it costs nothing: a session stays in its allocation size.
    admitted: AtomicBool,
    /// The engine: registry, config, clock, counters.
    engine: Arc<EngineInner>,
    inner: Mutex<Inner>,
    /// v4: engine-clock ms at which the next ping is due; `NEVER` while one is unanswered.
    ping_due: AtomicU64,
    /// Engine-clock ms by which the client must show life (pong, v3 ping), or by which a
    /// closing session must have flushed.
    deadline: AtomicU64,
    /// Engine-clock ms at which the layer above gives up: the Socket.IO connect timeout,
    /// or (with [`EXPIRY`] set) the client's credentials expiring.
    app_deadline: AtomicU64,
    /// The layer above's state; set once, right after the session opens.
    conn: OnceLock<Box<dyn Connection>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("eio", &self.eio)
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        engine: Arc<EngineInner>,
        eio: Eio,
        b64: bool,
        endpoint: u8,
        websocket: bool,
        ip: Option<IpAddr>,
    ) -> Arc<Session> {
        let now = engine.now_ms();
        let (ping_due, deadline) = engine.initial_heartbeat(eio, now);
        Arc::new(Session {
            sid: Sid::random(),
            ip: ip.map(Box::new),
            eio,
            b64,
            endpoint,
            engine,
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                queued_bytes: 0,
                state: if websocket {
                    State::WebSocket
                } else {
                    State::Polling
                },
                get: Get::Idle,
                post_active: false,
                noop: false,
                waker: None,
                ws_waker: None,
                reason: None,
                ws: None,
                raw: Vec::new(),
                ws_closing: false,
                flush_pending: false,
                ws_blocked: false,
            }),
            ping_due: AtomicU64::new(ping_due),
            deadline: AtomicU64::new(deadline),
            app_deadline: AtomicU64::new(NEVER),
            admitted: AtomicBool::new(false),
            conn: OnceLock::new(),
        })
    }

    /// The session id.
    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// The Engine.IO revision the client speaks.
    pub fn eio(&self) -> Eio {
        self.eio
    }

    pub(crate) fn b64(&self) -> bool {
        self.b64
    }

    pub(crate) fn counted_ip(&self) -> Option<IpAddr> {
        self.ip.as_deref().copied()
    }

    pub(crate) fn endpoint(&self) -> u8 {
        self.endpoint
    }

    pub(crate) fn set_connection(&self, conn: Box<dyn Connection>) {
        let _ = self.conn.set(conn);
    }

    /// Tells the layer above that the session is attached and registered.
    pub(crate) fn opened(self: &Arc<Self>) {
        if let Some(conn) = self.conn.get() {
            conn.on_opened(self);
        }
    }

    /// Whether the session has ended (or is flushing its last packets).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().reason.is_some()
    }

    /// The transport the session is on now (`websocket` once upgraded, `polling`
    /// before), or `None` while it closes.
    pub fn transport(&self) -> Option<&'static str> {
        match self.inner.lock().state {
            State::Polling | State::Upgrading => Some("polling"),
            State::WebSocket => Some("websocket"),
            _ => None,
        }
    }

    /// Whether the client currently uses WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.inner.lock().state == State::WebSocket
    }

    /// Sets (or clears, with `None`) a deadline after which the session closes with
    /// [`CloseReason::HandshakeTimeout`]; used for the Socket.IO connect timeout.
    pub fn set_app_deadline(&self, after: Option<std::time::Duration>) {
        let at = match after {
            Some(d) => self.engine.now_ms().saturating_add(d.as_millis() as u64),
            None => NEVER,
        };
        self.app_deadline.store(at, Ordering::Relaxed);
    }

    /// Clears the connect timeout set with [`Session::set_app_deadline`]; an expiry set
    /// with [`Session::expire_after`] stays.
    pub fn clear_connect_deadline(&self) {
        let v = self.app_deadline.load(Ordering::Relaxed);
        if v == NEVER || v & EXPIRY == 0 {
            self.app_deadline.store(NEVER, Ordering::Relaxed);
        }
    }

    /// Closes the session with [`CloseReason::CredentialsExpired`] once `after` has
    /// passed (replacing any earlier deadline).
    pub fn expire_after(&self, after: std::time::Duration) {
        let at = self
            .engine
            .now_ms()
            .saturating_add(after.as_millis().min(u64::MAX as u128) as u64);
        self.app_deadline
            .store(at.min(EXPIRY - 1) | EXPIRY, Ordering::Relaxed);
    }

    /// Queues one packet for the client.
    pub fn send(self: &Arc<Self>, packet: Outbound) -> Result<(), SendError> {
        self.send_all(std::slice::from_ref(&packet))
    }

    /// Queues packets that belong together (a binary event and its attachments): all of
    /// them or none.
    pub fn send_all(self: &Arc<Self>, packets: &[Outbound]) -> Result<(), SendError> {
        match self.send_each([packets]) {
            (1, _) => Ok(()),
            (_, e) => Err(e.unwrap_or(SendError::Closed)),
        }
    }

    /// Queues several messages under one lock, each a group of packets that belong
    /// together (all of a group or none). Returns how many groups were queued and, if
    /// any were not, why (under [`OverflowPolicy::Drop`] a group that does not fit is
    /// skipped and later smaller ones may still fit; an overflow under
    /// [`OverflowPolicy::Disconnect`] ends the session).
    pub fn send_each<'a>(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = &'a [Outbound]>,
    ) -> (usize, Option<SendError>) {
        let cfg = &self.engine.config;
        let mut inner = self.inner.lock();
        if inner.reason.is_some() {
            return (0, Some(SendError::Closed));
        }
        let mut queued = 0;
        let mut refused = None;
        for packets in messages {
            let bytes: usize = packets.iter().map(Outbound::len).sum();
            if inner.queue.len() + packets.len() > cfg.max_queue_packets
                || inner.queued_bytes + inner.raw.len() + bytes > self.byte_limit()
            {
                match cfg.overflow {
                    OverflowPolicy::Drop => {
                        self.engine.metrics.queue_overflow_drops.inc();
                        refused = Some(SendError::Dropped);
                        continue;
                    }
                    OverflowPolicy::Disconnect => {
                        self.overflow(inner);
                        return (0, Some(SendError::Overflow));
                    }
                }
            }
            inner.queue.extend(packets.iter().cloned());
            inner.queued_bytes += bytes;
            queued += 1;
        }
        if queued > 0 {
            self.kick(inner);
        }
        (queued, refused)
    }

    /// Queues a control packet (a ping, a pong). It counts against the queue limits
    /// like any packet, but one that does not fit ends the session under either
    /// overflow policy: a client that does not read its heartbeats, or sends pings
    /// faster than it reads the pongs, is not to be kept.
    fn send_control(self: &Arc<Self>, packet: Outbound) {
        let cfg = &self.engine.config;
        let mut inner = self.inner.lock();
        if inner.reason.is_some() {
            return;
        }
        if inner.queue.len() >= cfg.max_queue_packets
            || inner.queued_bytes + inner.raw.len() + packet.len() > self.byte_limit()
        {
            return self.overflow(inner);
        }
        inner.queued_bytes += packet.len();
        inner.queue.push_back(packet);
        self.kick(inner);
    }

    /// The bytes the queue may hold: a session that has not joined a namespace (no
    /// client has shown credentials on it) gets only `max_queue_bytes_before_connect`.
    fn byte_limit(&self) -> usize {
        let cfg = &self.engine.config;
        if self.admitted.load(Ordering::Relaxed) {
            cfg.max_queue_bytes
        } else {
            cfg.max_queue_bytes_before_connect.min(cfg.max_queue_bytes)
        }
    }

    /// Whether the layer above has admitted the client.
    pub(crate) fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Relaxed)
    }

    /// The largest message or polling body the client may send now: before it has joined
    /// a namespace, only `max_payload_before_connect`.
    pub(crate) fn max_payload(&self) -> usize {
        let cfg = &self.engine.config;
        if self.is_admitted() {
            cfg.max_payload
        } else {
            cfg.max_payload_before_connect.min(cfg.max_payload)
        }
    }

    /// The layer above admitted the client (it joined a namespace): its queue may now
    /// hold `max_queue_bytes`.
    pub fn admit(&self) {
        self.admitted.store(true, Ordering::Relaxed);
    }

    /// The client left every namespace: back to the limits of [`Session::admit`]'s
    /// before.
    pub fn unadmit(&self) {
        self.admitted.store(false, Ordering::Relaxed);
    }

    /// Ends the session for an overflowing queue.
    fn overflow(self: &Arc<Self>, mut inner: parking_lot::MutexGuard<'_, Inner>) {
        self.engine.metrics.queue_overflow_disconnects.inc();
        let wakers = Self::end(&mut inner, CloseReason::QueueOverflow, State::Closed);
        drop(inner);
        self.after_end(wakers, CloseReason::QueueOverflow);
    }

    /// Gets newly queued packets moving: an attached WebSocket goes on the flush list
    /// (once), anything else wakes the task that drains the queue.
    fn kick(self: &Arc<Self>, mut inner: parking_lot::MutexGuard<'_, Inner>) {
        if inner.ws.is_none() {
            return wake_drainer(inner);
        }
        if !inner.flush_pending && !inner.ws_blocked {
            inner.flush_pending = true;
            drop(inner);
            self.engine.schedule_flush(self.clone());
        }
    }

    /// Called by the flusher: writes what is queued to the attached WebSocket. What the
    /// socket refuses stays queued and the connection task is woken to wait for it.
    pub(crate) fn flush(&self) {
        let mut inner = self.inner.lock();
        inner.flush_pending = false;
        // Taken out and put back under the lock, rather than cloned: no reference-count
        // traffic per delivery.
        let Some(stream) = inner.ws.take() else {
            return;
        };
        let written = inner.write_ws(&stream, self.eio).is_ok();
        inner.ws = Some(stream);
        inner.ws_blocked = !written;
        if !written || inner.state != State::WebSocket {
            // Would block or broken (the connection task finds out on its own write), or
            // the session is closing (the task sends the close frame once all is out).
            let waker = inner.waker.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Ends the session at once, dropping anything still queued.
    pub fn close(self: &Arc<Self>, reason: CloseReason) {
        let mut inner = self.inner.lock();
        if inner.state == State::Closed {
            return;
        }
        let first = inner.reason.is_none();
        // A polling client may send its close and its next GET together; whichever is
        // handled first, that GET gets its noop (as a single-threaded server answers
        // them in arrival order). The session stays findable for it, briefly.
        let linger = first
            && reason == CloseReason::TransportClose
            && inner.state == State::Polling
            && inner.get == Get::Idle
            && tokio::runtime::Handle::try_current().is_ok();
        let wakers = Self::end(&mut inner, reason, State::Closed);
        if linger {
            inner.get = Get::Lingering;
        }
        drop(inner);
        if linger {
            wake_all(wakers);
            self.notify_close(reason);
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(LINGER_GET).await;
                this.engine.remove(&this);
            });
        } else if first {
            self.after_end(wakers, reason);
        } else {
            // Was closing: already notified; just finish.
            self.engine.remove(self);
            wake_all(wakers);
        }
    }

    /// Ends the session from the server side after flushing what is queued (so a final
    /// Socket.IO disconnect packet reaches the client).
    pub fn disconnect(self: &Arc<Self>) {
        let mut inner = self.inner.lock();
        if inner.reason.is_some() {
            return;
        }
        let wakers = Self::end(&mut inner, CloseReason::ServerClose, State::Closing);
        drop(inner);
        let grace = self.engine.config.ping_timeout.as_millis() as u64;
        self.deadline.store(
            self.engine.now_ms().saturating_add(grace),
            Ordering::Relaxed,
        );
        wake_all(wakers);
        self.notify_close(CloseReason::ServerClose);
    }

    fn end(inner: &mut Inner, reason: CloseReason, to: State) -> [Option<Waker>; 2] {
        if inner.reason.is_none() {
            inner.reason = Some(reason);
        }
        inner.state = to;
        if to == State::Closed {
            inner.queue = VecDeque::new();
            inner.queued_bytes = 0;
            inner.ws = None;
        }
        [inner.waker.take(), inner.ws_waker.take()]
    }

    fn after_end(self: &Arc<Self>, wakers: [Option<Waker>; 2], reason: CloseReason) {
        self.engine.remove(self);
        wake_all(wakers);
        self.notify_close(reason);
    }

    /// Runs the layer above's `on_close` outside of any lock the caller may hold: a push
    /// that overflows a queue happens under the pusher's locks.
    fn notify_close(self: &Arc<Self>, reason: CloseReason) {
        self.engine
            .metrics
            .disconnects
            .with_label_values(&[reason.as_str()])
            .inc();
        let this = self.clone();
        let run = move || {
            if let Some(conn) = this.conn.get() {
                conn.on_close(&this, reason);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { run() });
            }
            // Closed from a thread outside the runtime (a store thread, a test): still
            // never inline, where the caller may hold the very locks `on_close` takes.
            Err(_) => {
                let _ = std::thread::Builder::new()
                    .name("herald-session-close".into())
                    .spawn(run);
            }
        }
    }

    /// Handles one packet from the client (any transport).
    pub(crate) fn receive(self: &Arc<Self>, packet: Packet<'_>) {
        match packet {
            Packet::Control(Kind::Close, _) => self.close(CloseReason::TransportClose),
            Packet::Control(Kind::Ping, data) => {
                if self.eio == Eio::V3 && !self.is_closed() {
                    let now = self.engine.now_ms();
                    self.deadline
                        .store(self.engine.v3_deadline(now), Ordering::Relaxed);
                }
                let mut pong = Vec::with_capacity(1 + data.len());
                pong.push(b'3');
                pong.extend_from_slice(data.as_bytes());
                self.send_control(Outbound::Text(pong.into()));
            }
            Packet::Control(Kind::Pong, _) => {
                // A closing session keeps its grace deadline: a pong does not extend it.
                if self.eio == Eio::V4 && !self.is_closed() {
                    let now = self.engine.now_ms();
                    self.deadline.store(NEVER, Ordering::Relaxed);
                    let interval = self.engine.config.ping_interval.as_millis() as u64;
                    self.ping_due.store(now + interval, Ordering::Relaxed);
                }
            }
            Packet::Control(_, _) => {}
            Packet::Text(text) => self.deliver(Message::Text(&text)),
            Packet::Binary(data) => self.deliver(Message::Binary(&data)),
        }
    }

    fn deliver(self: &Arc<Self>, msg: Message<'_>) {
        if self.inner.lock().reason.is_some() {
            return;
        }
        if let Some(conn) = self.conn.get() {
            if let Err(e) = conn.on_message(self, msg) {
                tracing::debug!(sid = %self.sid, error = %e, "closing session on bad message");
                self.engine.metrics.protocol_errors.inc();
                self.close(CloseReason::ParseError);
            }
        }
    }

    /// Counts a client's protocol violation.
    pub(crate) fn count_protocol_error(&self) {
        self.engine.metrics.protocol_errors.inc();
    }
}

/// Wakes the task that drains the queue (unless an upgrade holds it), after unlocking.
fn wake_drainer(mut inner: parking_lot::MutexGuard<'_, Inner>) {
    let waker = if inner.state == State::Upgrading {
        None
    } else {
        inner.waker.take()
    };
    drop(inner);
    if let Some(w) = waker {
        w.wake();
    }
}

fn wake_all(wakers: [Option<Waker>; 2]) {
    for w in wakers.into_iter().flatten() {
        w.wake();
    }
}

#[cfg(test)]
mod tests;
