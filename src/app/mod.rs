//! The binary's edge: configuration, wiring the layers together, signals, shutdown.

pub mod config;
mod demo;

use std::sync::Arc;

use anyhow::Context as _;

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

/// Runs the server until SIGINT or SIGTERM, then closes every session and returns.
pub async fn serve(config: config::Config) -> anyhow::Result<()> {
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
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("listener address")?;

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
        tokio::spawn(demo::ticker(push.clone()));
    }
    let http = Arc::new(HttpService::new(routes, config.api.max_body_bytes));

    tracing::info!(addr = %local, demo = config.demo.enabled, dev_auth = config.dev_auth, "listening");
    println!("listening on {local}");
    transport::serve(
        listener,
        engine,
        Some(http as Arc<dyn Fallback>),
        shutdown_signal(),
    )
    .await;
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
