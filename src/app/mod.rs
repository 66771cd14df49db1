//! The binary's edge: configuration, wiring the layers together, signals, shutdown.

pub mod config;
mod demo;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::{self, ApiState, HttpService};
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::protocol::{ConnectError, DisconnectReason, Handler, Handshake, Socket, SocketIo};
use crate::push::PushService;
use crate::router::LocalRouter;
use crate::transport::{self, Engine, EngineHandler, Fallback};

/// The user a socket belongs to, attached at connect.
struct UserId(String);

/// The root namespace: every socket joins its user's room in the hub.
struct Devices {
    auth: Authenticator,
    hub: Arc<Hub>,
}

impl Handler for Devices {
    fn authorize(&self, socket: &Socket, hs: &Handshake<'_>) -> Result<(), ConnectError> {
        let user = self
            .auth
            .user(hs)
            .map_err(|e| ConnectError::new(format!("unauthorized: {e}")))?;
        self.hub
            .join(&user, socket)
            .map_err(|e| ConnectError::new(e.to_string()))?;
        tracing::debug!(user = %user, socket = %socket.id(), "connected");
        socket.set_data(UserId(user));
        Ok(())
    }

    fn on_disconnect(&self, socket: &Socket, reason: DisconnectReason) {
        if let Some(UserId(user)) = socket.data::<UserId>() {
            self.hub.leave(user, socket);
            tracing::debug!(user = %user, socket = %socket.id(), reason = reason.as_str(), "disconnected");
        }
    }
}

/// One herald node: its layers, wired together. Built from the configuration, then run
/// on a listener until a shutdown future completes.
pub struct Node {
    pub config: config::Config,
    pub hub: Arc<Hub>,
    pub push: Arc<PushService>,
    pub engine: Engine,
    http: Arc<HttpService>,
}

impl Node {
    /// Wires the layers; fails on settings that cannot work (a bad key file, say).
    pub fn new(config: config::Config) -> anyhow::Result<Node> {
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
        let hub = Arc::new(Hub::new(config.hub.clone()));
        let router = Arc::new(LocalRouter::new(hub.clone()));
        let push = Arc::new(PushService::new(config.push(), router));
        let devices = Arc::new(Devices {
            auth,
            hub: hub.clone(),
        });
        let sio = SocketIo::new(config.socketio()).namespace("/", devices as Arc<dyn Handler>);
        let engine = Engine::new(
            config.engine(),
            vec![(config.path.clone(), Arc::new(sio) as Arc<dyn EngineHandler>)],
        );
        let state = ApiState {
            push: push.clone(),
            hub: hub.clone(),
            keys: Arc::new(config.api.keys.clone()),
            open: config.dev_auth,
        };
        let mut routes = api::routes(state);
        if config.demo.enabled {
            routes = routes.merge(demo::routes(&config.demo)?);
        }
        let http = Arc::new(HttpService::new(routes, config.api.max_body_bytes));
        Ok(Node {
            config,
            hub,
            push,
            engine,
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
    }
}

/// Binds the configured address and runs until SIGINT or SIGTERM.
pub async fn serve(config: config::Config) -> anyhow::Result<()> {
    let node = Node::new(config)?;
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
