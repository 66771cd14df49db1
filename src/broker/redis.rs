//! The Redis broker: nodes share pushes through Redis, and a push costs work only on the
//! nodes holding its users.
//!
//! - Each node subscribes to the channel `herald:u:<user>` while it holds at least one
//!   connection of that user, and to `herald:all` for broadcasts. A push is delivered to
//!   the entry node's own connections directly and published to each target user's
//!   channel: Redis hands it only to the nodes subscribed, so a node holding none of the
//!   user's connections receives nothing. The routing table is the set of subscriptions,
//!   which Redis drops with a node's connection when the node dies.
//! - Presence: `{herald}:presence:<user>` is a hash of node id → connections there; a node
//!   is alive while its key `{herald}:node:<id>` exists (refreshed every third of
//!   `presence_ttl_secs`). Presence counts only live nodes, so a killed node drops out
//!   within the TTL; a janitor on every node then removes the dead node's entries
//!   (listed in `{herald}:node:<id>:users`) so nothing stays behind.
//! - Redis down: pushes are still stored and delivered on the entry node; when Redis is
//!   back each node resubscribes and tells its node to resync ([`Inbound::Resync`]):
//!   delivery catches every local connection up from the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::resp::{Commands, Published, RedisError, Reply, Subscriber};
use super::{BoxFuture, Broker, Inbound, NodeInfo};
use crate::metrics::{
    counter, gauge, histogram, Histogram, IntCounter, IntGauge, Registry, LATENCY,
};
use crate::vocab::{Message, Target};

/// Cluster settings (`[cluster]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port` of the Redis the nodes share; empty for a single
    /// node. Default empty.
    pub redis: String,
    /// This node's id in presence; empty picks a random one at start. Default empty.
    pub node_id: String,
    /// Seconds after which a node that stopped refreshing its liveness key drops out of
    /// presence. Default 10.
    pub presence_ttl_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: String::new(),
            node_id: String::new(),
            presence_ttl_secs: 10,
        }
    }
}

/// Cluster metrics.
#[derive(Debug)]
pub struct ClusterMetrics {
    pub registry: Registry,
    /// Redis reachable and this node's subscriptions in place (1), or not (0).
    pub up: IntGauge,
    /// Messages this node published to Redis.
    pub published: IntCounter,
    /// Messages this node received from Redis (pushes for users it holds, broadcasts).
    pub received: IntCounter,
    /// Publishes that failed because Redis was unreachable.
    pub publish_failures: IntCounter,
    /// Times this node (re)connected to Redis.
    pub connects: IntCounter,
    /// Commands that failed (connection lost, or an error reply).
    pub errors: IntCounter,
    /// From a PUBLISH queued to Redis's answer.
    pub publish_seconds: Histogram,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        let r = Registry::new();
        ClusterMetrics {
            up: gauge(
                &r,
                "herald_redis_up",
                "Redis reachable and this node's subscriptions in place.",
            ),
            published: counter(
                &r,
                "herald_redis_published_total",
                "Messages published to Redis.",
            ),
            received: counter(
                &r,
                "herald_redis_received_total",
                "Messages received from Redis.",
            ),
            publish_failures: counter(
                &r,
                "herald_redis_publish_failures_total",
                "Publishes lost while Redis was away (the other nodes catch up from the store).",
            ),
            connects: counter(
                &r,
                "herald_redis_connects_total",
                "Connections to Redis made (the first and every reconnect).",
            ),
            errors: counter(
                &r,
                "herald_redis_errors_total",
                "Redis connections lost or commands refused.",
            ),
            publish_seconds: histogram(
                &r,
                "herald_redis_publish_seconds",
                "A PUBLISH queued to Redis's answer.",
                LATENCY,
            ),
            registry: r,
        }
    }
}

/// A push as it crosses Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<'a> {
    /// Origin node: it skips its own messages, having delivered them directly.
    o: &'a str,
    i: &'a str,
    t: u64,
    e: &'a str,
    #[serde(borrow)]
    d: &'a RawValue,
    /// The user's seq, for stored messages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    s: Option<u64>,
    /// When the push became deliverable, µs since the epoch (for the latency metric).
    #[serde(default)]
    u: u64,
}

struct Shared {
    node: String,
    /// Where messages from other nodes (and resyncs) go: this node's delivery.
    inbound: mpsc::Sender<Inbound>,
    /// Connections held here per user: the subscriptions and presence to restore when
    /// Redis comes back.
    held: Mutex<HashMap<String, usize>>,
    addr: String,
    password: Option<String>,
    ttl: Duration,
    /// The current command connection, while Redis is reachable.
    commands: Mutex<Option<Commands>>,
    /// The current subscriber connection, while Redis is reachable.
    subscriber: Mutex<Option<Subscriber>>,
    /// Redis reachable and this node's subscriptions in place.
    up: AtomicBool,
    /// Unix ms at which this node started.
    started_at: u64,
    metrics: ClusterMetrics,
}

/// A broker through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker(Arc<Shared>);

fn channel(user: &str) -> Vec<u8> {
    let mut c = b"herald:u:".to_vec();
    c.extend_from_slice(user.as_bytes());
    c
}

const ALL: &[u8] = b"herald:all";

/// Orders for every node (disconnect a user, revoke their tokens).
const CONTROL: &[u8] = b"herald:ctl";

/// An order on [`CONTROL`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Control {
    /// Origin node: it has done it already.
    o: String,
    /// Disconnect this user's connections.
    kick: String,
    /// And refuse their tokens issued before this Unix second.
    #[serde(default)]
    before: Option<u64>,
}

/// Every node's id. All of herald's keys share the hash tag `{herald}`, so on a Redis
/// Cluster they live in one slot, on one shard, and one connection reaches them all.
const NODES: &[u8] = b"{herald}:nodes";

/// Why the broker cannot start, or cannot connect.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cluster.redis must be redis://[:password@]host[:port], got `{0}`")]
    Url(String),
    #[error("cannot connect to Redis at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("Redis keeps redirecting herald's keys (last to {0})")]
    Redirects(String),
}

/// Connects the command connection to the Redis node that holds herald's keys: on a
/// Redis Cluster, the node given may answer `MOVED <slot> <host:port>`, and herald
/// follows it (a single Redis never does).
async fn connect_commands(
    addr: &str,
    password: Option<&str>,
) -> Result<(Commands, tokio::sync::oneshot::Receiver<()>), BrokerError> {
    let mut addr = addr.to_owned();
    for _ in 0..3 {
        let (cmds, closed) =
            Commands::connect(&addr)
                .await
                .map_err(|source| BrokerError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
        if let Some(pw) = password {
            cmds.call(&[b"AUTH", pw.as_bytes()]).await?;
        }
        match cmds.call(&[b"EXISTS", NODES]).await {
            Ok(_) => return Ok((cmds, closed)),
            Err(RedisError::Server(e)) if e.starts_with("MOVED ") => {
                addr = e.split(' ').nth(2).unwrap_or_default().to_owned();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(BrokerError::Redirects(addr))
}

/// `(host:port, password)` from `redis://[:password@]host[:port][/db]`.
pub fn parse_url(url: &str) -> Result<(String, Option<String>), BrokerError> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| BrokerError::Url(url.to_owned()))?;
    let rest = rest.split('/').next().unwrap_or_default();
    let (password, host) = match rest.rsplit_once('@') {
        Some((creds, host)) => {
            let pw = creds.split_once(':').map_or(creds, |(_, p)| p);
            (Some(pw.to_owned()).filter(|p| !p.is_empty()), host)
        }
        None => (None, rest),
    };
    if host.is_empty() {
        return Err(BrokerError::Url(url.to_owned()));
    }
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    Ok((host, password))
}

impl RedisBroker {
    /// Starts the broker's connection supervisor and heartbeat; it connects (and
    /// reconnects) to Redis in the background, so a node starts even with Redis down.
    /// What other nodes publish for users held here arrives on `inbound`.
    pub fn start(
        config: &ClusterConfig,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<RedisBroker, BrokerError> {
        let (addr, password) = parse_url(&config.redis)?;
        let node = if config.node_id.is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else {
            config.node_id.clone()
        };
        let shared = Arc::new(Shared {
            node,
            inbound,
            held: Mutex::new(HashMap::new()),
            addr,
            password,
            ttl: Duration::from_secs(config.presence_ttl_secs.max(2)),
            commands: Mutex::new(None),
            subscriber: Mutex::new(None),
            up: AtomicBool::new(false),
            started_at: crate::vocab::now_ms(),
            metrics: ClusterMetrics::default(),
        });
        let broker = RedisBroker(shared);
        tokio::spawn(broker.clone().supervise());
        tokio::spawn(broker.clone().heartbeat());
        Ok(broker)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.0.node
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.0.metrics
    }

    /// Whether Redis is reachable and this node's subscriptions are in place.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    fn commands(&self) -> Option<Commands> {
        self.0.commands.lock().clone()
    }

    /// Connects, subscribes, registers presence; on every reconnect also asks its node to
    /// resync. Runs until the process ends.
    async fn supervise(self) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            match self.connect().await {
                Ok((cmd_closed, sub_closed)) => {
                    backoff = Duration::from_millis(100);
                    self.0.metrics.connects.inc();
                    self.0.up.store(true, Ordering::Relaxed);
                    self.0.metrics.up.set(1);
                    tracing::info!(node = %self.0.node, redis = %self.0.addr, "cluster connected");
                    if !first {
                        let _ = self.0.inbound.send(Inbound::Resync).await;
                    }
                    first = false;
                    tokio::select! {
                        _ = cmd_closed => {}
                        _ = sub_closed => {}
                    }
                    self.0.up.store(false, Ordering::Relaxed);
                    self.0.metrics.up.set(0);
                    self.0.metrics.errors.inc();
                    *self.0.commands.lock() = None;
                    *self.0.subscriber.lock() = None;
                    tracing::warn!(node = %self.0.node, "cluster connection to Redis lost; pushes stay local until it is back");
                }
                Err(e) => {
                    self.0.metrics.errors.inc();
                    tracing::debug!(error = %e, "cannot reach Redis");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            tokio::sync::oneshot::Receiver<()>,
            tokio::sync::oneshot::Receiver<()>,
        ),
        BrokerError,
    > {
        let (cmds, cmd_closed) = connect_commands(&self.0.addr, self.0.password.as_deref()).await?;
        let (tx, rx) = mpsc::channel::<Published>(65_536);
        let (sub, sub_closed) = Subscriber::connect(&self.0.addr, tx)
            .await
            .map_err(|source| BrokerError::Connect {
                addr: self.0.addr.clone(),
                source,
            })?;
        if let Some(pw) = &self.0.password {
            // The subscriber authenticates before it subscribes (commands are ordered).
            let mut auth = Vec::new();
            super::resp::encode(&[b"AUTH", pw.as_bytes()], &mut auth);
            sub.raw(auth)?;
        }
        tokio::spawn(self.clone().receive(rx));
        // Subscriptions and presence for every user held here.
        let users: Vec<(String, usize)> = self
            .0
            .held
            .lock()
            .iter()
            .map(|(u, n)| (u.clone(), *n))
            .collect();
        let mut channels: Vec<Vec<u8>> = users.iter().map(|(u, _)| channel(u)).collect();
        channels.push(ALL.to_vec());
        channels.push(CONTROL.to_vec());
        for chunk in channels.chunks(512) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            sub.subscribe(&refs)?;
        }
        let node = self.0.node.as_bytes();
        let ttl = self.0.ttl.as_secs().to_string();
        cmds.call(&[
            b"SET",
            &node_key(&self.0.node),
            &self.info(),
            b"EX",
            ttl.as_bytes(),
        ])
        .await?;
        cmds.call(&[b"SADD", NODES, node]).await?;
        for (user, n) in &users {
            register(&cmds, &self.0.node, user, *n);
        }
        *self.0.commands.lock() = Some(cmds);
        *self.0.subscriber.lock() = Some(sub);
        Ok((cmd_closed, sub_closed))
    }

    /// `user`'s connections on each other live node.
    pub async fn presence_by_node(&self, user: &str) -> Vec<(String, u64)> {
        let Some(cmds) = self.commands() else {
            return Vec::new();
        };
        let Ok(reply) = cmds.call(&[b"HGETALL", &presence_key(user)]).await else {
            return Vec::new();
        };
        let items = reply.into_array();
        let mut out = Vec::new();
        for pair in items.chunks(2) {
            let (Some(node), Some(n)) = (pair[0].as_text(), pair.get(1).and_then(Reply::as_int))
            else {
                continue;
            };
            let alive = cmds
                .call(&[b"EXISTS", &node_key(&node)])
                .await
                .ok()
                .and_then(|r| r.as_int())
                == Some(1);
            if node != self.0.node && alive {
                out.push((node, n.max(0) as u64));
            }
        }
        out
    }

    /// This node as the others see it in the nodes list (the value of its liveness key).
    fn info(&self) -> Vec<u8> {
        // Summed from `held` every third of the TTL, rather than kept on every join.
        let (users, connections) = {
            let held = self.0.held.lock();
            (held.len() as u64, held.values().sum::<usize>() as u64)
        };
        serde_json::to_vec(&NodeInfo {
            id: self.0.node.clone(),
            connections,
            users,
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.0.started_at,
            updated_at: crate::vocab::now_ms(),
        })
        .unwrap_or_default()
    }

    /// Delivers what other nodes publish.
    async fn receive(self, mut rx: mpsc::Receiver<Published>) {
        while let Some(p) = rx.recv().await {
            if p.channel == CONTROL {
                match serde_json::from_slice::<Control>(&p.payload) {
                    Ok(c) if c.o != self.0.node => {
                        let kick = Inbound::Kick {
                            user: c.kick,
                            revoke_before: c.before,
                        };
                        if self.0.inbound.send(kick).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tracing::warn!("undecodable cluster order ignored"),
                }
                continue;
            }
            let Ok(w) = serde_json::from_slice::<Wire<'_>>(&p.payload) else {
                tracing::warn!("undecodable cluster message ignored");
                continue;
            };
            if w.o == self.0.node {
                continue;
            }
            self.0.metrics.received.inc();
            let target = if p.channel == ALL {
                Target::All
            } else {
                let Some(user) = p.channel.strip_prefix(b"herald:u:") else {
                    continue;
                };
                let user = String::from_utf8_lossy(user).into_owned();
                match w.s {
                    Some(seq) => Target::Stored(vec![(user, seq)]),
                    None => Target::Users(vec![user]),
                }
            };
            let msg = Message {
                id: w.i.to_owned(),
                ts: w.t,
                ready_us: w.u,
                event: w.e.to_owned(),
                data: w.d.to_owned(),
                target,
            };
            if self.0.inbound.send(Inbound::Message(msg)).await.is_err() {
                break;
            }
        }
    }

    /// Keeps this node's liveness key fresh and clears dead nodes' presence.
    async fn heartbeat(self) {
        let mut tick = tokio::time::interval(self.0.ttl / 3);
        loop {
            tick.tick().await;
            let Some(cmds) = self.commands() else {
                continue;
            };
            let ttl = self.0.ttl.as_secs().to_string();
            let _ = cmds.send(&[
                b"SET",
                &node_key(&self.0.node),
                &self.info(),
                b"EX",
                ttl.as_bytes(),
            ]);
            let _ = cmds.send(&[b"SADD", NODES, self.0.node.as_bytes()]);
            if let Err(e) = janitor(&cmds, &self.0.node).await {
                tracing::debug!(error = %e, "presence janitor");
            }
        }
    }

    fn publish_to(&self, channel: &[u8], payload: &[u8]) {
        let Some(cmds) = self.commands() else {
            self.0.metrics.publish_failures.inc();
            return;
        };
        match cmds.send_timed(
            &[b"PUBLISH", channel, payload],
            &self.0.metrics.publish_seconds,
        ) {
            Ok(()) => self.0.metrics.published.inc(),
            Err(_) => self.0.metrics.publish_failures.inc(),
        }
    }
}

fn node_key(node: &str) -> Vec<u8> {
    format!("{{herald}}:node:{node}").into_bytes()
}

fn presence_key(user: &str) -> Vec<u8> {
    format!("{{herald}}:presence:{user}").into_bytes()
}

fn node_users_key(node: &str) -> Vec<u8> {
    format!("{{herald}}:node:{node}:users").into_bytes()
}

/// Records `n` connections of `user` on `node` (0 removes the entry).
fn register(cmds: &Commands, node: &str, user: &str, n: usize) {
    if n == 0 {
        let _ = cmds.send(&[b"HDEL", &presence_key(user), node.as_bytes()]);
        let _ = cmds.send(&[b"SREM", &node_users_key(node), user.as_bytes()]);
    } else {
        let count = n.to_string();
        let _ = cmds.send(&[
            b"HSET",
            &presence_key(user),
            node.as_bytes(),
            count.as_bytes(),
        ]);
        let _ = cmds.send(&[b"SADD", &node_users_key(node), user.as_bytes()]);
    }
}

/// Removes every presence entry of `node`.
async fn remove_node(cmds: &Commands, node: &str) -> Result<(), super::resp::RedisError> {
    let users = cmds
        .call(&[b"SMEMBERS", &node_users_key(node)])
        .await?
        .into_array();
    for u in users {
        if let Some(u) = u.as_text() {
            let _ = cmds.send(&[b"HDEL", &presence_key(&u), node.as_bytes()]);
        }
    }
    cmds.call(&[b"DEL", &node_users_key(node)]).await?;
    cmds.call(&[b"SREM", NODES, node.as_bytes()]).await?;
    Ok(())
}

/// Clears the presence of nodes whose liveness key has expired.
async fn janitor(cmds: &Commands, me: &str) -> Result<(), super::resp::RedisError> {
    let nodes = cmds.call(&[b"SMEMBERS", NODES]).await?.into_array();
    for n in nodes {
        let Some(n) = n.as_text() else { continue };
        if n == me {
            continue;
        }
        let alive = cmds.call(&[b"EXISTS", &node_key(&n)]).await?.as_int() == Some(1);
        if !alive {
            tracing::info!(node = %n, "removing a dead node's presence");
            remove_node(cmds, &n).await?;
        }
    }
    Ok(())
}

impl Broker for RedisBroker {
    fn publish(&self, msg: &Message) {
        let data = msg.data.as_ref();
        let wire = |seq: Option<u64>| {
            serde_json::to_vec(&Wire {
                o: &self.0.node,
                i: &msg.id,
                t: msg.ts,
                e: &msg.event,
                d: data,
                s: seq,
                u: msg.ready_us,
            })
            .unwrap_or_default()
        };
        match &msg.target {
            Target::All => self.publish_to(ALL, &wire(None)),
            Target::Users(users) => {
                let payload = wire(None);
                for u in users {
                    self.publish_to(&channel(u), &payload);
                }
            }
            Target::Stored(seqs) => {
                for (u, seq) in seqs {
                    self.publish_to(&channel(u), &wire(Some(*seq)));
                }
            }
        }
    }

    fn hold(&self, user: &str, connections: usize) {
        {
            let mut held = self.0.held.lock();
            if connections == 0 {
                held.remove(user);
            } else {
                held.insert(user.to_owned(), connections);
            }
        }
        if connections <= 1 {
            let sub = self.0.subscriber.lock();
            if let Some(sub) = sub.as_ref() {
                let ch = channel(user);
                let _ = if connections == 1 {
                    sub.subscribe(&[&ch])
                } else {
                    sub.unsubscribe(&[&ch])
                };
            }
        }
        if let Some(cmds) = self.commands() {
            register(&cmds, &self.0.node, user, connections);
        }
    }

    fn remote_presence<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let by_node = self.presence_by_node(user).await;
            by_node.iter().map(|(_, n)| *n as usize).sum()
        })
    }

    fn healthy(&self) -> bool {
        self.is_up()
    }

    fn kick(&self, user: &str, revoke_before: Option<u64>) {
        let order = Control {
            o: self.0.node.clone(),
            kick: user.to_owned(),
            before: revoke_before,
        };
        if let Ok(payload) = serde_json::to_vec(&order) {
            self.publish_to(CONTROL, &payload);
        }
    }

    fn nodes(&self) -> BoxFuture<'_, Vec<NodeInfo>> {
        Box::pin(async move {
            let Some(cmds) = self.commands() else {
                return Vec::new();
            };
            let Ok(ids) = cmds.call(&[b"SMEMBERS", NODES]).await else {
                return Vec::new();
            };
            let mut nodes = Vec::new();
            for id in ids.into_array().iter().filter_map(Reply::as_text) {
                if id == self.0.node {
                    continue;
                }
                // A node whose liveness key has expired is gone (the janitor removes it).
                if let Ok(Some(info)) = cmds
                    .call(&[b"GET", &node_key(&id)])
                    .await
                    .map(|r| r.as_text())
                {
                    if let Ok(n) = serde_json::from_str::<NodeInfo>(&info) {
                        nodes.push(n);
                    }
                }
            }
            nodes
        })
    }

    /// Removes this node from presence.
    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(cmds) = self.commands() {
                let _ = remove_node(&cmds, &self.0.node).await;
                let _ = cmds.call(&[b"DEL", &node_key(&self.0.node)]).await;
            }
        })
    }
}
