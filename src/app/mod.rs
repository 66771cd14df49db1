//! The binary's edge: configuration, wiring the layers together, signals, shutdown; and
//! the root namespace's behaviour (auth, rooms, resume, acks, read state).

pub mod config;
mod demo;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::{self, ApiState, HttpService};
use crate::auth::{Authenticator, OnExpiry};
use crate::hub::{Hub, ReplayEnd};
use crate::protocol::{
    Args, ConnectError, DisconnectReason, Event, Handler, Handshake, Socket, SocketIo,
};
use crate::push::{self, PushService};
use crate::router::cluster::ClusterRouter;
use crate::router::{self, LocalRouter, Router};
use crate::store::Store;
use crate::transport::{self, Engine, EngineHandler, Fallback};

/// Longest device id accepted.
const MAX_DEVICE_ID: usize = 128;

/// Who a socket is and where it resumes from, read from its handshake once, at connect.
struct Client {
    user: String,
    device: Option<String>,
    resume: Resume,
    /// When the client's token expires (Unix seconds), if it does.
    expires: Option<u64>,
}

/// Where a connecting client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Live messages only.
    Live,
    /// Every stored message after this seq, then live ones.
    Since(u64),
    /// After the last seq this device acknowledged (live only for a new device).
    Device,
}

/// The root namespace: every socket joins its user's room in the hub.
struct Devices {
    auth: Authenticator,
    /// What happens when a connected client's token expires, and the leeway on `exp`.
    on_expiry: (OnExpiry, u64),
    hub: Arc<Hub>,
    store: Store,
    router: Arc<dyn Router>,
}

/// A credential from the `auth` object (v5 clients), else the query (v4 clients).
fn param(hs: &Handshake<'_>, name: &str) -> Option<String> {
    hs.auth
        .and_then(|a| {
            let v: serde_json::Value = serde_json::from_str(a).ok()?;
            match v.get(name)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                other => Some(other.to_string()),
            }
        })
        .or_else(|| hs.query_param(name))
}

fn resume_of(hs: &Handshake<'_>) -> Result<(Resume, Option<String>), ConnectError> {
    let device = param(hs, "deviceId").filter(|d| !d.is_empty());
    if device.as_ref().is_some_and(|d| d.len() > MAX_DEVICE_ID) {
        return Err(ConnectError::new(
            "invalid deviceId: longer than 128 characters",
        ));
    }
    let resume = match param(hs, "since") {
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Resume::Since(n),
            Err(_) => {
                return Err(ConnectError::new(format!(
                    "invalid since: expected a whole number from 0 up, got `{s}`"
                )))
            }
        },
        None if device.is_some() => Resume::Device,
        None => Resume::Live,
    };
    Ok((resume, device))
}

impl Handler for Devices {
    fn authorize(&self, socket: &Socket, hs: &Handshake<'_>) -> Result<(), ConnectError> {
        let identity = self
            .auth
            .identify(hs)
            .map_err(|e| ConnectError::new(format!("unauthorized: {e}")))?;
        let user = identity.user;
        let (resume, device) = resume_of(hs)?;
        let here = self
            .hub
            .join(&user, socket, resume != Resume::Live)
            .map_err(|e| ConnectError::new(e.to_string()))?;
        self.router.local_presence(&user, here);
        tracing::debug!(user = %user, socket = %socket.id(), ?resume, "connected");
        socket.set_data(Client {
            user,
            device,
            resume,
            expires: identity.expires,
        });
        Ok(())
    }

    fn on_connect(&self, socket: &Socket, _hs: &Handshake<'_>) {
        let Some(client) = socket.data::<Client>() else {
            return;
        };
        let resume = client.resume;
        if let (OnExpiry::Disconnect, leeway) = self.on_expiry {
            if let Some(exp) = client.expires {
                // A token is good through its `exp` second (as the check at connect
                // counts it), so the connection ends as the next one begins.
                let end_ms = exp
                    .saturating_add(leeway)
                    .saturating_add(1)
                    .saturating_mul(1000);
                let left = end_ms.saturating_sub(crate::vocab::now_ms());
                socket
                    .session()
                    .expire_after(std::time::Duration::from_millis(left));
            }
        }
        let (hub, store, socket) = (self.hub.clone(), self.store.clone(), socket.clone());
        if resume != Resume::Live {
            tokio::spawn(async move { resume_from(hub, store, socket, resume).await });
        } else if self.router.is_cluster() {
            // In a cluster this node may miss messages while Redis is away; a live
            // connection's position lets it be caught up then.
            tokio::spawn(async move {
                let Some(client) = socket.data::<Client>() else {
                    return;
                };
                if let Ok(u) = store.unread(&client.user).await {
                    hub.set_floor(&client.user, &socket, u.last_seq);
                }
            });
        }
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        if event.name != "read" {
            return;
        }
        let Some(client) = socket.data::<Client>() else {
            return;
        };
        let up_to = event
            .args
            .parse::<Vec<serde_json::Value>>()
            .ok()
            .and_then(|a| {
                a.first()
                    .and_then(|v| v.get("upTo"))
                    .and_then(|v| v.as_u64())
            });
        let Some(up_to) = up_to else {
            if let Some(id) = event.ack {
                let error = serde_json::json!({"error": "read needs {upTo: seq}, a whole number"});
                let _ = socket.ack(id, &Args::one(&error));
            }
            return;
        };
        let (hub, store, socket, user) = (
            self.hub.clone(),
            self.store.clone(),
            socket.clone(),
            client.user.clone(),
        );
        tokio::spawn(async move {
            let reply = match store.mark_read(&user, up_to).await {
                Ok(stored) => {
                    hub.read_up_to(&user, stored, Some(&socket));
                    serde_json::json!({"upTo": stored})
                }
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            if let Some(id) = event.ack {
                let _ = socket.ack(id, &Args::one(&reply));
            }
        });
    }

    fn on_ack(&self, socket: &Socket, seq: u64, _args: Args) {
        let Some(client) = socket.data::<Client>() else {
            return;
        };
        // Only what this connection was actually sent can be acknowledged.
        if self.hub.was_sent(&client.user, socket, seq) {
            self.store
                .mark_delivered(&client.user, seq, client.device.as_deref());
        }
    }

    fn on_disconnect(&self, socket: &Socket, reason: DisconnectReason) {
        if let Some(client) = socket.data::<Client>() {
            let here = self.hub.leave(&client.user, socket);
            self.router.local_presence(&client.user, here);
            tracing::debug!(user = %client.user, socket = %socket.id(), reason = reason.as_str(), "disconnected");
        }
    }
}

/// Replays stored messages to a resuming socket from where it asked, then makes it live.
async fn resume_from(hub: Arc<Hub>, store: Store, socket: Socket, resume: Resume) {
    let Some(client) = socket.data::<Client>() else {
        return;
    };
    let user = client.user.clone();
    let after = match resume {
        Resume::Since(n) => n,
        Resume::Device => {
            let device = client.device.as_deref().unwrap_or_default();
            match store.device_acked(&user, device).await {
                Ok(Some(n)) => n,
                // A device seen for the first time starts live: it gets what arrived
                // since it joined (held meanwhile), and nothing older.
                Ok(None) => match hub.finish_replay(&user, &socket) {
                    ReplayEnd::Live | ReplayEnd::Gone => return,
                    // More arrived than could be held: read them from the store.
                    ReplayEnd::ReadOn(_) => match store.unread(&user).await {
                        Ok(u) => u.last_seq.saturating_sub(hub.max_replay_buffer() as u64),
                        Err(_) => return socket.close_transport(),
                    },
                },
                Err(_) => return socket.close_transport(),
            }
        }
        Resume::Live => return,
    };
    router::catch_up(hub, store, socket, user, after).await;
}

/// One herald node: its layers, wired together. Built from the configuration, then run
/// on a listener until a shutdown future completes.
pub struct Node {
    pub config: config::Config,
    pub hub: Arc<Hub>,
    pub push: Arc<PushService>,
    pub store: Store,
    pub engine: Engine,
    pub router: Arc<dyn Router>,
    /// The cluster router, when `[cluster] redis` is set.
    pub cluster: Option<ClusterRouter>,
    http: Arc<HttpService>,
}

impl Node {
    /// Wires the layers and opens the store; fails on settings that cannot work.
    pub async fn new(config: config::Config) -> anyhow::Result<Node> {
        let auth = Authenticator::new(&config.auth, config.dev_auth)?;
        if !auth.is_configured() {
            tracing::warn!(
                "no client authentication configured (auth.jwt_secret or auth.jwt_public_key_file): \
                 every client will be refused; use --dev-auth to try herald locally"
            );
        }
        if config.api.keys.is_empty() && !config.dev_auth {
            tracing::warn!("no API keys configured (api.keys): every API call will be refused");
        }
        let hub = Hub::new(config.hub.clone());
        let (committed, to_dispatch) = tokio::sync::mpsc::channel(4096);
        let store = Store::open(config.store.clone(), committed)
            .await
            .context("cannot open the message store")?;
        let (router, cluster): (Arc<dyn Router>, _) = if config.cluster.redis.is_empty() {
            (Arc::new(LocalRouter::new(hub.clone(), store.clone())), None)
        } else {
            let c = ClusterRouter::start(&config.cluster, hub.clone(), store.clone())
                .map_err(anyhow::Error::msg)?;
            tracing::info!(node = c.node(), "cluster mode");
            (Arc::new(c.clone()), Some(c))
        };
        tokio::spawn(push::dispatch(to_dispatch, router.clone()));
        tokio::spawn(
            store
                .clone()
                .sweeper(config.api.idempotency_window_secs.saturating_mul(1000)),
        );
        let push = Arc::new(PushService::new(
            config.push(),
            router.clone(),
            store.clone(),
        ));
        let devices = Arc::new(Devices {
            auth,
            on_expiry: (config.auth.on_expiry, config.auth.leeway_secs),
            hub: hub.clone(),
            store: store.clone(),
            router: router.clone(),
        });
        let sio = SocketIo::new(config.socketio()).namespace("/", devices as Arc<dyn Handler>);
        let engine = Engine::new(
            config.engine(),
            vec![(config.path.clone(), Arc::new(sio) as Arc<dyn EngineHandler>)],
        );
        let state = ApiState {
            push: push.clone(),
            hub: hub.clone(),
            store: store.clone(),
            router: router.clone(),
            engine: engine.clone(),
            cluster: cluster.clone(),
            keys: Arc::new(config.api.keys.clone()),
            open: config.dev_auth,
        };
        let mut routes = api::routes(state.clone());
        if config.demo.enabled {
            routes = routes.merge(demo::routes(&config.demo)?);
        }
        let http = Arc::new(HttpService::new(routes, config.api.max_body_bytes).with_keys(&state));
        Ok(Node {
            config,
            hub,
            push,
            store,
            engine,
            router,
            cluster,
            http,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then closes every session.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let demo = self
            .config
            .demo
            .enabled
            .then(|| tokio::spawn(demo::ticker(self.push.clone())));
        let hub = self.hub.clone();
        let shutdown = async move {
            shutdown.await;
            // Broadcasts accepted before shutdown are queued before sessions close.
            hub.flush_broadcasts();
        };
        transport::serve(
            listener,
            self.engine.clone(),
            Some(self.http.clone() as Arc<dyn Fallback>),
            shutdown,
        )
        .await;
        if let Some(d) = demo {
            d.abort();
        }
        if let Some(c) = &self.cluster {
            c.leave_cluster().await;
        }
    }
}

/// Binds the configured address and runs until SIGINT or SIGTERM.
pub async fn serve(config: config::Config) -> anyhow::Result<()> {
    let node = Node::new(config).await?;
    let listener = TcpListener::bind(&node.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", node.config.listen))?;
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(
        addr = %local,
        demo = node.config.demo.enabled,
        dev_auth = node.config.dev_auth,
        "listening"
    );
    println!("listening on {local}");
    node.run(listener, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
