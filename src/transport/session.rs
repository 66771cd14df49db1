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
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::config::OverflowPolicy;
use super::engine::EngineInner;
use super::packet::{Eio, Kind, Outbound, Packet};

/// A session id: 20 URL-safe base64 characters from 120 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 20]);

impl Sid {
    /// A fresh, unguessable id from the thread-local CSPRNG.
    pub fn random() -> Sid {
        use base64::Engine as _;
        let raw: [u8; 15] = rand::random();
        let mut out = [0u8; 20];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .expect("15 bytes encode to 20");
        debug_assert_eq!(n, 20);
        Sid(out)
    }

    /// Parses a sid from a request; anything that is not 20 base64url bytes is no sid.
    pub fn parse(s: &str) -> Option<Sid> {
        let b = s.as_bytes();
        if b.len() != 20
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return None;
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(b);
        Some(Sid(out))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from base64url characters.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet or closed its connection cleanly.
    TransportClose,
    /// The connection failed: reset, broken frame, polling request abandoned.
    TransportError,
    /// The client did not answer a ping (v4) or stopped pinging (v3) in time.
    PingTimeout,
    /// The client sent something that is not valid Engine.IO or Socket.IO.
    ParseError,
    /// The client's outbound queue overflowed under [`OverflowPolicy::Disconnect`].
    QueueOverflow,
    /// The upper layer's deadline passed (the Socket.IO connect timeout).
    HandshakeTimeout,
    /// The server closed the session (kick, shutdown).
    ServerClose,
    /// The client's credentials expired and the server is set to end such sessions.
    CredentialsExpired,
}

impl CloseReason {
    /// The reason as the Node reference server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ParseError => "parse error",
            CloseReason::QueueOverflow => "queue overflow",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::ServerClose => "server close",
            CloseReason::CredentialsExpired => "credentials expired",
        }
    }
}

/// A message a client sent, as the layer above sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// The layer above's per-session state, created when the session opens.
pub trait Connection: Send + Sync + 'static {
    /// A message arrived. An error closes the session with [`CloseReason::ParseError`].
    fn on_message(&self, session: &Arc<Session>, msg: Message<'_>) -> Result<(), MessageError>;
    /// The session ended; called exactly once, never while a push holds a lock.
    fn on_close(&self, session: &Arc<Session>, reason: CloseReason);
}

/// A message the layer above could not accept; the session is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MessageError(pub String);

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
    get_active: bool,
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

/// One Engine.IO session.
pub struct Session {
    sid: Sid,
    eio: Eio,
    /// v3 polling clients that asked for base64 (`b64=1`) instead of binary payloads.
    b64: bool,
    /// Which endpoint (path) the session belongs to.
    endpoint: u8,
    /// The engine: registry, config, clock, counters.
    engine: Arc<EngineInner>,
    inner: Mutex<Inner>,
    /// v4: engine-clock ms at which the next ping is due; `NEVER` while one is unanswered.
    ping_due: AtomicU64,
    /// Engine-clock ms by which the client must show life (pong, v3 ping), or by which a
    /// closing session must have flushed.
    deadline: AtomicU64,
    /// Engine-clock ms at which the layer above gives up (Socket.IO connect timeout, or
    /// the client's credentials expiring).
    app_deadline: AtomicU64,
    /// Why the session closes at `app_deadline`: set with it.
    app_reason: std::sync::atomic::AtomicBool,
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

/// What a pending polling `GET` answers with.
pub(crate) enum GetReply {
    /// Queued packets (or a single noop).
    Packets(Vec<Outbound>),
    /// The session is gone: answer with these packets, then forget it.
    Final(Vec<Outbound>),
}

impl Session {
    pub(crate) fn new(
        engine: Arc<EngineInner>,
        eio: Eio,
        b64: bool,
        endpoint: u8,
        websocket: bool,
    ) -> Arc<Session> {
        let now = engine.now_ms();
        let (ping_due, deadline) = engine.initial_heartbeat(eio, now);
        Arc::new(Session {
            sid: Sid::random(),
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
                get_active: false,
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
            app_reason: false.into(),
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

    pub(crate) fn endpoint(&self) -> u8 {
        self.endpoint
    }

    pub(crate) fn set_connection(&self, conn: Box<dyn Connection>) {
        let _ = self.conn.set(conn);
    }

    /// Whether the session has ended (or is flushing its last packets).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().reason.is_some()
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
        self.app_reason.store(false, Ordering::Relaxed);
        self.app_deadline.store(at, Ordering::Relaxed);
    }

    /// Closes the session with [`CloseReason::CredentialsExpired`] once `after` has
    /// passed (replacing any earlier deadline).
    pub fn expire_after(&self, after: std::time::Duration) {
        let at = self
            .engine
            .now_ms()
            .saturating_add(after.as_millis().min(u64::MAX as u128) as u64);
        self.app_reason.store(true, Ordering::Relaxed);
        self.app_deadline.store(at, Ordering::Relaxed);
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
                || inner.queued_bytes + inner.raw.len() + bytes > cfg.max_queue_bytes
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
            || inner.queued_bytes + inner.raw.len() + packet.len() > cfg.max_queue_bytes
        {
            return self.overflow(inner);
        }
        inner.queued_bytes += packet.len();
        inner.queue.push_back(packet);
        self.kick(inner);
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
        let wakers = Self::end(&mut inner, reason, State::Closed);
        drop(inner);
        if first {
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
        self.engine.metrics.sessions_closed.inc();
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
            Err(_) => run(),
        }
    }

    /// Handles one packet from the client (any transport).
    pub(crate) fn receive(self: &Arc<Self>, packet: Packet<'_>) {
        match packet {
            Packet::Control(Kind::Close, _) => self.close(CloseReason::TransportClose),
            Packet::Control(Kind::Ping, data) => {
                if self.eio == Eio::V3 {
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
                if self.eio == Eio::V4 {
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

    /// Called by the heartbeat walker: sends due pings, closes expired sessions.
    pub(crate) fn tick(self: &Arc<Self>, now: u64) {
        if now >= self.deadline.load(Ordering::Relaxed) {
            let closing = self.inner.lock().state == State::Closing;
            self.close(if closing {
                CloseReason::ServerClose
            } else {
                CloseReason::PingTimeout
            });
            return;
        }
        if now >= self.app_deadline.load(Ordering::Relaxed) {
            self.close(if self.app_reason.load(Ordering::Relaxed) {
                CloseReason::CredentialsExpired
            } else {
                CloseReason::HandshakeTimeout
            });
            return;
        }
        let ping_due = self.ping_due.load(Ordering::Relaxed);
        if self.eio == Eio::V4 && now >= ping_due {
            // The answer is due one timeout after the ping was scheduled, not after the
            // walker got to it, so a tick's delay never extends a dead session's life.
            let timeout = self.engine.config.ping_timeout.as_millis() as u64;
            self.ping_due.store(NEVER, Ordering::Relaxed);
            self.deadline.store(ping_due + timeout, Ordering::Relaxed);
            self.send_control(Outbound::control(Kind::Ping));
        }
    }

    /// Whether the heartbeat walker has something to do for this session at `now`.
    pub(crate) fn due(&self, now: u64) -> bool {
        now >= self.deadline.load(Ordering::Relaxed)
            || now >= self.app_deadline.load(Ordering::Relaxed)
            || (self.eio == Eio::V4 && now >= self.ping_due.load(Ordering::Relaxed))
    }

    /// Closes the session if its liveness deadline has passed (checked on each request,
    /// so a client never sees a session the walker has not yet reaped).
    pub(crate) fn expire_if_due(self: &Arc<Self>) -> bool {
        let now = self.engine.now_ms();
        if now >= self.deadline.load(Ordering::Relaxed) {
            self.tick(now);
            return true;
        }
        false
    }

    // --- long-polling ---

    /// Starts a polling `GET`. Fails if one is already waiting (which, as in the
    /// reference server, ends the session) or the session no longer polls.
    pub(crate) fn begin_get(self: &Arc<Self>) -> Result<(), ()> {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Polling | State::Upgrading | State::Closing => {}
            State::WebSocket | State::Closed => return Err(()),
        }
        if inner.get_active {
            drop(inner);
            self.close(CloseReason::TransportError);
            return Err(());
        }
        inner.get_active = true;
        Ok(())
    }

    /// Ends a polling `GET` (answered or abandoned).
    pub(crate) fn end_get(&self) {
        let mut inner = self.inner.lock();
        inner.get_active = false;
        if matches!(inner.state, State::Polling | State::Closing) {
            inner.waker = None;
        }
    }

    /// Polls for the answer to a pending `GET`.
    pub(crate) fn poll_get(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<GetReply> {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => {
                // A client that closed gets a noop; a session the server ended, a close.
                let kind = match inner.reason {
                    Some(CloseReason::TransportClose) => Kind::Noop,
                    _ => Kind::Close,
                };
                Poll::Ready(GetReply::Final(vec![Outbound::control(kind)]))
            }
            State::Closing => {
                let mut out: Vec<Outbound> = inner.queue.drain(..).collect();
                inner.queued_bytes = 0;
                out.push(Outbound::control(Kind::Close));
                inner.state = State::Closed;
                drop(inner);
                self.engine.remove(self);
                Poll::Ready(GetReply::Final(out))
            }
            State::WebSocket => Poll::Ready(GetReply::Packets(vec![Outbound::control(Kind::Noop)])),
            State::Upgrading => {
                if inner.noop {
                    inner.noop = false;
                    Poll::Ready(GetReply::Packets(vec![Outbound::control(Kind::Noop)]))
                } else {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
            State::Polling => {
                if inner.queue.is_empty() {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    let out: Vec<Outbound> = inner.queue.drain(..).collect();
                    inner.queue = VecDeque::new();
                    inner.queued_bytes = 0;
                    Poll::Ready(GetReply::Packets(out))
                }
            }
        }
    }

    /// Starts a polling `POST`; at most one at a time.
    pub(crate) fn begin_post(&self) -> Result<(), ()> {
        let mut inner = self.inner.lock();
        if inner.post_active || !matches!(inner.state, State::Polling | State::Upgrading) {
            return Err(());
        }
        inner.post_active = true;
        Ok(())
    }

    pub(crate) fn end_post(&self) {
        self.inner.lock().post_active = false;
    }

    // --- WebSocket ---

    /// A WebSocket with this sid wants to upgrade the polling session.
    pub(crate) fn begin_upgrade(&self) -> Result<(), ()> {
        let mut inner = self.inner.lock();
        if inner.state != State::Polling {
            return Err(());
        }
        inner.state = State::Upgrading;
        Ok(())
    }

    /// The upgrading WebSocket answered the probe: the pending `GET` gets a noop so the
    /// client can pause polling.
    pub(crate) fn probed(&self) {
        let mut inner = self.inner.lock();
        if inner.state != State::Upgrading {
            return;
        }
        inner.noop = true;
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The client sent the upgrade packet: the WebSocket now drains the queue.
    pub(crate) fn complete_upgrade(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.state != State::Upgrading {
            return false;
        }
        inner.state = State::WebSocket;
        inner.noop = false;
        // Wake the pending GET (it answers noop) and let the WebSocket task register.
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The upgrading WebSocket went away before completing: back to polling.
    pub(crate) fn abort_upgrade(&self) {
        let mut inner = self.inner.lock();
        if inner.state == State::Upgrading {
            inner.state = State::Polling;
            inner.noop = false;
            inner.ws_waker = None;
            let waker = inner.waker.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// The WebSocket task hands writing to the session, and so to the flusher (at its
    /// start, or when an upgrade has completed); `pending` holds bytes the task has not
    /// yet written, which go first.
    pub(crate) fn attach_ws(&self, stream: Arc<TcpStream>, pending: Vec<u8>) {
        let mut inner = self.inner.lock();
        inner.raw = pending;
        if matches!(inner.state, State::WebSocket | State::Closing) {
            inner.ws = Some(stream);
        }
    }

    /// For an upgrading WebSocket: ready with the reason once the session has ended
    /// (the task then closes its connection), else registered for a wake-up.
    pub(crate) fn poll_upgrade_end(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut inner = self.inner.lock();
        match inner.reason {
            Some(reason) if inner.state == State::Closed => Poll::Ready(reason),
            _ => {
                inner.ws_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Queues a frame the WebSocket task writes itself (an RFC 6455 pong) after what is
    /// pending. It counts against the queue's byte limit; one that does not fit ends the
    /// session (returns false).
    pub(crate) fn ws_raw(self: &Arc<Self>, frame: &[u8]) -> bool {
        let inner = self.inner.lock();
        if inner.reason.is_some() {
            return false;
        }
        if inner.queued_bytes + inner.raw.len() + frame.len() > self.engine.config.max_queue_bytes {
            let mut inner = inner;
            // The connection is dropped with it: nothing more is written.
            inner.raw = Vec::new();
            self.overflow(inner);
            return false;
        }
        let mut inner = inner;
        inner.raw.extend_from_slice(frame);
        true
    }

    /// Whether the socket refused what was last written to it: the connection reads no
    /// more from its client until it has been written (back pressure), so a client that
    /// does not read cannot make it queue answers without end.
    pub(crate) fn ws_backlogged(&self) -> bool {
        self.inner.lock().ws_blocked
    }

    /// Queues the close frame; nothing is written after it.
    pub(crate) fn ws_close(&self, frame: &[u8]) {
        let mut inner = self.inner.lock();
        if !inner.ws_closing {
            inner.raw.extend_from_slice(frame);
            inner.ws_closing = true;
            inner.ws = None;
        }
    }

    /// Writes on behalf of the WebSocket task: pending bytes, then the queue. Pending
    /// means the task is registered for a wake-up (socket writable, or more to write);
    /// `Ready(Ok(WsEnd::Closed))` that the close frame is written; `WsEnd::Ended` that
    /// the session ended and the task is to queue the close frame and poll again;
    /// `WsEnd::Stuck` that the session ended and the socket refuses what is left.
    pub(crate) fn poll_ws_write(
        &self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
    ) -> Poll<io::Result<WsEnd>> {
        let mut inner = self.inner.lock();
        loop {
            match inner.write_ws(stream, self.eio) {
                Ok(()) => inner.ws_blocked = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    inner.ws_blocked = true;
                    match stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // Woken by writability, or by the session ending meanwhile.
                            inner.waker = Some(cx.waker().clone());
                            if inner.reason.is_some() {
                                return Poll::Ready(Ok(WsEnd::Stuck));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if inner.ws_closing {
                return Poll::Ready(Ok(WsEnd::Closed));
            }
            return match inner.state {
                State::Upgrading | State::Polling => {
                    inner.ws_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                State::Closed => Poll::Ready(Ok(WsEnd::Ended(
                    inner.reason.unwrap_or(CloseReason::ServerClose),
                ))),
                State::Closing if inner.queue.is_empty() => {
                    Poll::Ready(Ok(WsEnd::Ended(CloseReason::ServerClose)))
                }
                State::WebSocket | State::Closing => {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
    }
}

#[cfg(test)]
impl Session {
    /// The text of every packet queued so far, taken off the queue (tests).
    pub(crate) fn take_queued(&self) -> Vec<String> {
        let mut inner = self.inner.lock();
        inner.queued_bytes = 0;
        inner
            .queue
            .drain(..)
            .map(|p| String::from_utf8_lossy(p.body()).into_owned())
            .collect()
    }
}

/// How a WebSocket's writing ended.
pub(crate) enum WsEnd {
    /// The close frame is written.
    Closed,
    /// The session ended for this reason; the close frame is still to be queued.
    Ended(CloseReason),
    /// The session has ended and the socket refuses what is left; the task is registered
    /// for a wake-up, and gives up if the peer does not read in time.
    Stuck,
}

impl Inner {
    /// Writes `raw`, then queued packets (unless the close frame is in `raw`), until all
    /// is written or the socket refuses more (`WouldBlock`).
    fn write_ws(&mut self, stream: &TcpStream, eio: Eio) -> io::Result<()> {
        loop {
            if !self.raw.is_empty() {
                let n = stream.try_write(&self.raw)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.raw.drain(..n);
                if !self.raw.is_empty() {
                    continue;
                }
                self.raw = Vec::new();
            }
            if self.ws_closing
                || self.queue.is_empty()
                || !matches!(self.state, State::WebSocket | State::Closing)
            {
                return Ok(());
            }
            let (front, back) = self.queue.as_slices();
            let batch = if front.is_empty() { back } else { front };
            let consumed = super::websocket::write_frames(stream, batch, eio, &mut self.raw)?;
            for _ in 0..consumed {
                if let Some(p) = self.queue.pop_front() {
                    self.queued_bytes -= p.len();
                }
            }
            if self.queue.is_empty() && self.queue.capacity() > 16 {
                // Give back a burst's worth of queue memory once it is drained.
                self.queue = VecDeque::new();
            }
        }
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
