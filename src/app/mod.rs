//! The binary's edge: command line and environment, start-up, signals, graceful drain.

pub mod config;

use std::sync::Arc;

use anyhow::Context as _;

use crate::protocol::{Handler, SocketIo};
use crate::transport::{self, Engine, EngineHandler};

/// Root-namespace behaviour until the push layers arrive: accept every client.
struct Accept;

impl Handler for Accept {}

/// Runs the server until SIGINT or SIGTERM, then closes every session and returns.
pub async fn serve(config: config::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(addr = %local, "listening");
    println!("listening on {local}");
    let sio = SocketIo::new(config.socketio()).namespace("/", Arc::new(Accept) as Arc<dyn Handler>);
    let engine = Engine::new(
        config.engine(),
        vec![(config.path.clone(), Arc::new(sio) as Arc<dyn EngineHandler>)],
    );
    transport::serve(listener, engine, None, shutdown_signal()).await;
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
