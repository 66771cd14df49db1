//! The Engine.IO engine: the session registry, the shared heartbeat walker, counters, and
//! the endpoints (paths) it serves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::EngineConfig;
use super::limits::PerIp;
use super::packet::Eio;
use super::session::{Connection, Session, Sid};
use crate::metrics::{
    counter, counter_vec, gauge_vec, IntCounter, IntCounterVec, IntGaugeVec, Registry,
};

impl Drop for EngineInner {
    fn drop(&mut self) {
        // Let the flushers see that the engine is gone.
        for list in self.flush.iter() {
            list.notify.notify_one();
        }
    }
}

/// Transport metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Every metric below, for the scrape.
    pub registry: Registry,
    /// Sessions opened (Engine.IO handshakes completed).
    pub sessions_opened: IntCounter,
    /// Open sessions by transport and revision; set at each scrape.
    pub connections: IntGaugeVec,
    /// Sessions ended, by reason.
    pub disconnects: IntCounterVec,
    /// TCP connections refused at `max_connections`.
    pub connections_refused: IntCounter,
    /// Connections refused because their address held `max_connections_per_ip`.
    pub connections_refused_per_ip: IntCounter,
    /// Handshakes refused because their address exceeded `max_handshakes_per_ip_per_sec`.
    pub handshakes_refused: IntCounter,
    /// Requests whose head or body did not arrive within its deadline.
    pub request_timeouts: IntCounter,
    pub protocol_errors: IntCounter,
    /// Packets dropped at a full client queue (`overflow = "drop"`).
    pub queue_overflow_drops: IntCounter,
    pub queue_overflow_disconnects: IntCounter,
    pub upgrades: IntCounter,
    pub http_errors: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let m = Metrics {
            sessions_opened: counter(&r, "herald_handshakes_total", "Engine.IO sessions opened."),
            connections: gauge_vec(
                &r,
                "herald_connections",
                "Open Engine.IO sessions, by transport (polling, websocket) and Engine.IO revision (3, 4).",
                &["transport", "eio"],
            ),
            disconnects: counter_vec(
                &r,
                "herald_disconnects_total",
                "Engine.IO sessions ended, by reason.",
                &["reason"],
            ),
            connections_refused: counter(
                &r,
                "herald_connections_refused_total",
                "TCP connections refused at transport.max_connections.",
            ),
            connections_refused_per_ip: counter(
                &r,
                "herald_connections_refused_per_ip_total",
                "TCP connections refused at transport.max_connections_per_ip.",
            ),
            handshakes_refused: counter(
                &r,
                "herald_handshakes_refused_total",
                "Handshakes refused at transport.max_handshakes_per_ip_per_sec or max_sessions.",
            ),
            request_timeouts: counter(
                &r,
                "herald_request_timeouts_total",
                "Requests whose head or body, or responses, did not arrive in time.",
            ),
            protocol_errors: counter(
                &r,
                "herald_protocol_errors_total",
                "Connections ended for a protocol violation.",
            ),
            queue_overflow_drops: counter(
                &r,
                "herald_deliveries_dropped_total",
                "Packets dropped at a full client queue (transport.overflow = drop).",
            ),
            queue_overflow_disconnects: counter(
                &r,
                "herald_queue_overflow_disconnects_total",
                "Clients disconnected at a full queue (transport.overflow = disconnect).",
            ),
            upgrades: counter(
                &r,
                "herald_upgrades_total",
                "Sessions upgraded from polling to WebSocket.",
            ),
            http_errors: counter(
                &r,
                "herald_http_errors_total",
                "HTTP requests answered with an error by the transport.",
            ),
            registry: r,
        };
        // Every reason shows from the first scrape, at 0.
        for reason in super::CloseReason::ALL {
            m.disconnects.with_label_values(&[reason.as_str()]);
        }
        m
    }
}

impl Metrics {
    /// Sessions ended, whatever the reason.
    pub fn sessions_closed(&self) -> u64 {
        super::CloseReason::ALL
            .iter()
            .map(|r| self.disconnects.with_label_values(&[r.as_str()]).get())
            .sum()
    }
}

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionsFull {
    /// The node holds `max_sessions`.
    Node,
    /// The client's address holds `max_sessions_per_ip`.
    Address,
}

/// What the layer above gets when a session opens.
#[derive(Debug)]
pub struct OpenRequest<'a> {
    /// The raw query string of the handshake request (without `?`).
    pub query: &'a str,
    /// The client's address.
    pub remote: std::net::SocketAddr,
}

/// The layer above an endpoint: creates the per-session state when a session opens.
pub trait EngineHandler: Send + Sync + 'static {
    /// A session opened (its handshake packet is already queued). May queue packets.
    fn on_open(&self, session: &Arc<Session>, req: &OpenRequest<'_>) -> Box<dyn Connection>;
}

/// One path served by the engine, e.g. `/socket.io/`.
pub(crate) struct Endpoint {
    pub(crate) path: String,
    pub(crate) handler: Arc<dyn EngineHandler>,
}

const SHARDS: usize = 32;

/// One shard of the session registry.
type Shard = Mutex<HashMap<Sid, Arc<Session>>>;

/// Sessions whose queued packets wait to be written to their WebSocket.
struct FlushList {
    pending: Mutex<Vec<Arc<Session>>>,
    notify: tokio::sync::Notify,
}

pub(crate) struct EngineInner {
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) endpoints: Vec<Endpoint>,
    /// Live sessions by sid, sharded so that opening and closing sessions on different
    /// cores rarely contend; the heartbeat walker visits one shard at a time.
    shards: Box<[Shard]>,
    /// Origin of the engine clock used for heartbeat deadlines (milliseconds).
    epoch: Instant,
    /// One flush list (and flusher task) per core, sessions spread by sid.
    flush: Arc<[FlushList]>,
    /// Connections and handshakes per client address.
    pub(crate) per_ip: PerIp,
    /// Registered sessions (and places reserved for sessions being opened).
    sessions: AtomicUsize,
    /// HTTP requests to the fallback (the API) being answered, for a drain to wait on.
    pub(crate) requests: AtomicUsize,
}

impl EngineInner {
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn hash(sid: &Sid) -> usize {
        let b = sid.as_str().as_bytes();
        b[0] as usize ^ (b[1] as usize) << 3 ^ (b[2] as usize) << 6
    }

    fn shard(&self, sid: &Sid) -> &Shard {
        &self.shards[Self::hash(sid) % SHARDS]
    }

    /// Puts a session with newly queued packets on its flush list.
    pub(crate) fn schedule_flush(&self, session: Arc<Session>) {
        let list = &self.flush[Self::hash(&session.sid()) % self.flush.len()];
        let mut pending = list.pending.lock();
        pending.push(session);
        let first = pending.len() == 1;
        drop(pending);
        if first {
            list.notify.notify_one();
        }
    }

    pub(crate) fn insert(&self, session: &Arc<Session>) {
        self.shard(&session.sid())
            .lock()
            .insert(session.sid(), session.clone());
        self.metrics.sessions_opened.inc();
    }

    /// Takes a session out of the registry (once; later calls do nothing) and gives back
    /// its place in the session counts.
    pub(crate) fn remove(&self, session: &Session) {
        if self
            .shard(&session.sid())
            .lock()
            .remove(&session.sid())
            .is_some()
        {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = session.counted_ip() {
                self.per_ip.close_session(ip, self.now_ms());
            }
        }
    }

    /// Takes a place for a new session: refused at `max_sessions`, or at the address's
    /// `max_sessions_per_ip`. A place taken is given back by [`EngineInner::remove`] once
    /// the session is registered, or by [`EngineInner::unreserve`] if it never is.
    pub(crate) fn reserve(&self, ip: IpAddr) -> Result<Option<IpAddr>, SessionsFull> {
        if self.sessions.fetch_add(1, Ordering::Relaxed) >= self.config.max_sessions {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(SessionsFull::Node);
        }
        if !self.per_ip.limited(ip) {
            return Ok(None);
        }
        if self.per_ip.open_session(ip, self.now_ms()).is_err() {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(SessionsFull::Address);
        }
        Ok(Some(ip))
    }

    /// Gives back a place taken by [`EngineInner::reserve`] for a session never opened.
    pub(crate) fn unreserve(&self, ip: Option<IpAddr>) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = ip {
            self.per_ip.close_session(ip, self.now_ms());
        }
    }

    pub(crate) fn get(&self, sid: &Sid) -> Option<Arc<Session>> {
        self.shard(sid).lock().get(sid).cloned()
    }

    /// `(ping_due, deadline)` for a new session at `now`.
    pub(crate) fn initial_heartbeat(&self, eio: Eio, now: u64) -> (u64, u64) {
        match eio {
            Eio::V4 => {
                let interval = self.config.ping_interval.as_millis() as u64;
                let timeout = self.config.ping_timeout.as_millis() as u64;
                // The first ping goes out between half an interval and one interval after
                // the handshake, at random, and every interval after that: clients that
                // connected together (a mass reconnect) do not all get pinged in the same
                // moment for ever after. An early ping is within the protocol (a client
                // waits for one at most interval + timeout). Unanswered, the session ends
                // one timeout later.
                use rand::Rng;
                let first = interval - rand::thread_rng().gen_range(0..=interval / 2);
                (now + first, now + first + timeout)
            }
            Eio::V3 => (u64::MAX, self.v3_deadline(now)),
        }
    }

    /// v3 clients ping every interval; allow one timeout of grace.
    pub(crate) fn v3_deadline(&self, now: u64) -> u64 {
        now + (self.config.ping_interval + self.config.ping_timeout).as_millis() as u64
    }

    /// Number of live sessions.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Open sessions by transport and Engine.IO revision: `[polling, websocket]` ×
    /// `[v3, v4]`. Walks the registry (for a scrape, never per event).
    fn census(&self) -> [[u64; 2]; 2] {
        let mut n = [[0u64; 2]; 2];
        for s in self.all_sessions() {
            let t = match s.transport() {
                Some("polling") => 0,
                Some(_) => 1,
                None => continue,
            };
            n[t][usize::from(s.eio() == Eio::V4)] += 1;
        }
        n
    }

    /// Every registered session, taken shard by shard (each lock held only to clone).
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// A cheap handle to the engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl Engine {
    /// Builds an engine serving `endpoints` (path, handler), e.g. `("/socket.io/", sio)`.
    pub fn new(config: EngineConfig, endpoints: Vec<(String, Arc<dyn EngineHandler>)>) -> Engine {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let flush = (0..cores)
            .map(|_| FlushList {
                pending: Mutex::new(Vec::new()),
                notify: tokio::sync::Notify::new(),
            })
            .collect();
        let per_ip = PerIp::new(&config).unwrap_or_else(|e| {
            // The configuration is validated at start; a caller that skipped that gets
            // the limits without the exemptions.
            tracing::warn!(error = %e, "ignoring transport.ip_limit_exempt");
            PerIp::new(&EngineConfig {
                ip_limit_exempt: Vec::new(),
                ..config.clone()
            })
            .expect("no exemptions to parse")
        });
        Engine {
            inner: Arc::new(EngineInner {
                per_ip,
                sessions: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                config,
                metrics: Metrics::default(),
                endpoints: endpoints
                    .into_iter()
                    .map(|(path, handler)| Endpoint { path, handler })
                    .collect(),
                shards,
                epoch: Instant::now(),
                flush,
            }),
        }
    }

    /// The transport counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Number of open sessions.
    pub fn sessions(&self) -> usize {
        self.inner.len()
    }

    /// Sets `herald_connections{transport, eio}` from the registry, for a scrape.
    pub fn count_connections(&self) {
        let n = self.inner.census();
        for (t, transport) in ["polling", "websocket"].into_iter().enumerate() {
            for (v, eio) in ["3", "4"].into_iter().enumerate() {
                self.inner
                    .metrics
                    .connections
                    .with_label_values(&[transport, eio])
                    .set(n[t][v] as i64);
            }
        }
    }

    /// Looks up a live session by id.
    pub fn session(&self, sid: &str) -> Option<Arc<Session>> {
        Sid::parse(sid).and_then(|sid| self.inner.get(&sid))
    }

    /// Closes every session's transport, spread evenly over `over` (a drain: clients
    /// reconnect, to other nodes, a few at a time rather than all at once). Each is a
    /// transport close after its queue is flushed, never a Socket.IO DISCONNECT, which
    /// would stop a client from reconnecting.
    pub async fn close_gradually(&self, over: std::time::Duration) {
        let all = self.inner.all_sessions();
        // At most 100 steps: one every `over / 100`.
        let steps = all.len().clamp(1, 100);
        let per_step = all.len().div_ceil(steps).max(1);
        let pause = over / steps as u32;
        for (i, batch) in all.chunks(per_step).enumerate() {
            if i > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            for s in batch {
                s.disconnect();
            }
        }
    }

    /// API requests being answered now.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Closes every session (used on shutdown).
    pub fn close_all(&self) {
        for s in self.inner.all_sessions() {
            s.disconnect();
        }
    }

    /// Spawns the flusher tasks, one per flush list. Each waits until sessions are
    /// listed, yields once so that the tasks already ready to run (more pushes, often)
    /// queue their packets too, then writes every listed session's queue. A flusher
    /// stops when the engine is dropped.
    pub(crate) fn spawn_flushers(&self) {
        for i in 0..self.inner.flush.len() {
            let lists = self.inner.flush.clone();
            let engine: Weak<EngineInner> = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let list = &lists[i];
                let mut batch = Vec::new();
                loop {
                    list.notify.notified().await;
                    if engine.strong_count() == 0 {
                        break;
                    }
                    tokio::task::yield_now().await;
                    std::mem::swap(&mut batch, &mut *list.pending.lock());
                    for s in batch.drain(..) {
                        s.flush();
                    }
                }
            });
        }
    }

    /// Spawns the heartbeat walker: one task for all sessions, instead of a timer per
    /// session. It stops when the engine is dropped.
    pub(crate) fn spawn_heartbeat(&self) {
        let cfg = &self.inner.config;
        // Ticks of at most 50 ms keep each tick's share of pings small (the first pings
        // are spread over half an interval), so that no push waits long behind them.
        let tick = (cfg.ping_interval.min(cfg.ping_timeout) / 8)
            .clamp(Duration::from_millis(5), Duration::from_millis(50));
        let weak: Weak<EngineInner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut due = Vec::new();
            loop {
                interval.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                let now = engine.now_ms();
                for shard in engine.shards.iter() {
                    due.extend(shard.lock().values().filter(|s| s.due(now)).cloned());
                }
                for s in due.drain(..) {
                    s.tick(now);
                }
            }
        });
    }
}
