//! The binary's edge: configuration, wiring the layers together, signals, shutdown.

pub mod config;
mod demo;
mod help;
pub mod tools;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::{self, ApiState, HttpService, Keys};
use crate::auth::Authenticator;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;
use crate::delivery::devices::Devices;
use crate::delivery::Delivery;
use crate::hub::Hub;
use crate::protocol::{Handler, SocketIo};
use crate::push::{self, PushService};
use crate::store::{HookKind, Store};
use crate::transport::{self, Engine, EngineHandler, Fallback};
use crate::webhooks::{self, WebhookMetrics};

/// One herald node: its layers, wired together. Built from the configuration, then run
/// on a listener until a shutdown future completes.
pub struct Node {
    pub config: config::Config,
    pub hub: Arc<Hub>,
    pub push: Arc<PushService>,
    pub store: Store,
    pub engine: Engine,
    pub delivery: Arc<Delivery>,
    /// The Redis broker, when `[cluster] redis` is set.
    pub cluster: Option<RedisBroker>,
    http: Arc<HttpService>,
    /// What the admin listener serves (metrics, health, the admin page).
    admin: Arc<dyn Fallback>,
    /// Set when the node starts draining; `/readyz` reads it.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Node {
    /// Wires the layers and opens the store; fails on settings that cannot work.
    pub async fn new(config: config::Config) -> anyhow::Result<Node> {
        let auth = Authenticator::new(&config.auth, config.dev_auth)?;
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let hub = Hub::new(config.hub.clone());
        let (committed, to_dispatch) = tokio::sync::mpsc::channel(4096);
        let mut store_config = config.store.clone();
        store_config.hooks = config.webhooks.store_hooks();
        let webhook_metrics = Arc::new(WebhookMetrics::new(store_config.hooks.gate.clone()));
        let store = Store::open(store_config, committed)
            .await
            .context("cannot open the message store")?;
        let (inbound_tx, inbound) = tokio::sync::mpsc::channel(4096);
        let (broker, cluster): (Arc<dyn Broker>, _) = if config.cluster.redis.is_empty() {
            (Arc::new(MemoryBroker::single()), None)
        } else {
            let c = RedisBroker::start(&config.cluster, inbound_tx)?;
            tracing::info!(node = c.node(), "cluster mode");
            (Arc::new(c.clone()), Some(c))
        };
        let delivery = Delivery::new(hub.clone(), store.clone(), broker, cluster.is_some());
        delivery.keep_revocations(config.auth.revocation_ttl_secs);
        let revoked = delivery
            .load_revocations()
            .await
            .context("cannot read token revocations from the store")?;
        if revoked > 0 {
            tracing::info!(users = revoked, "token revocations in force");
        }
        tokio::spawn(delivery.clone().run_inbound(inbound));
        if config.webhooks.enabled() {
            let w = &config.webhooks;
            let sender = webhooks::Sender::new(store.clone(), w.clone(), webhook_metrics.clone())?;
            tokio::spawn(sender.run());
            if w.wants(HookKind::Undelivered) {
                let after = std::time::Duration::from_secs(w.undelivered_after_secs);
                tokio::spawn(webhooks::scan_undelivered(store.clone(), after));
            }
            delivery.report_presence(w.wants(HookKind::Online), w.wants(HookKind::Offline));
            tracing::info!(url = %w.url, events = ?w.events, "webhooks on");
        }
        tokio::spawn(push::dispatch(to_dispatch, delivery.clone()));
        tokio::spawn(
            store
                .clone()
                .sweeper(config.api.idempotency_window_secs.saturating_mul(1000)),
        );
        let push = Arc::new(PushService::new(
            config.push(),
            delivery.clone(),
            store.clone(),
        ));
        let devices = Arc::new(
            Devices::new(
                auth,
                (config.auth.on_expiry, config.auth.leeway_secs),
                delivery.clone(),
            )
            .with_anonymous(config.auth.anonymous),
        );
        let sio = SocketIo::new(config.socketio()).namespace("/", devices as Arc<dyn Handler>);
        let engine = Engine::new(
            config.engine(),
            vec![(config.path.clone(), Arc::new(sio) as Arc<dyn EngineHandler>)],
        );
        let webhooks = config.webhooks.enabled().then_some(webhook_metrics);
        let mut registries = vec![
            engine.metrics().registry.clone(),
            hub.metrics.registry.clone(),
            delivery.metrics.registry.clone(),
            push.metrics.registry.clone(),
            store.metrics().clone(),
        ];
        registries.extend(cluster.as_ref().map(|c| c.metrics().registry.clone()));
        registries.extend(webhooks.as_ref().map(|w| w.registry.clone()));
        let node_id = match &cluster {
            Some(c) => c.node().to_owned(),
            None if !config.cluster.node_id.is_empty() => config.cluster.node_id.clone(),
            None => "local".to_owned(),
        };
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = ApiState {
            push: push.clone(),
            hub: hub.clone(),
            store: store.clone(),
            delivery: delivery.clone(),
            engine: engine.clone(),
            cluster: cluster.clone(),
            keys: Arc::new(Keys::new(
                &config.api.keys,
                &config.api.scoped_keys,
                config.dev_auth,
            )),
            webhooks,
            metrics: Arc::new(api::metrics::NodeMetrics::new(registries)),
            node: Arc::new((node_id, crate::vocab::now_ms())),
            draining: draining.clone(),
        };
        let mut routes = api::routes(state.clone());
        if config.demo.enabled {
            routes = routes.merge(demo::routes(&config.demo)?);
        }
        let http = Arc::new(
            HttpService::new(routes, config.api.max_body_bytes)
                .with_keys(state.keys.clone(), state.metrics.api.clone()),
        );
        let admin = api::admin::service(state, &config.admin.password);
        Ok(Node {
            config,
            hub,
            push,
            store,
            engine,
            delivery,
            cluster,
            http,
            admin,
            draining,
        })
    }

    /// Marks the node as draining: `/readyz` answers 503 `draining` from now on.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves the admin listener (metrics, health, the admin page) on `listener` until
    /// `shutdown` completes.
    pub fn run_admin(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        // Its own small engine: no Socket.IO endpoint, a few connections, a few per
        // address (a scraper holds one or two, a browser six).
        let config = transport::EngineConfig {
            max_connections: 256,
            max_connections_per_ip: 16,
            ..transport::EngineConfig::default()
        };
        let engine = Engine::new(config, Vec::new());
        tokio::spawn(transport::serve(
            listener,
            engine,
            Some(self.admin.clone()),
            shutdown,
        ))
    }

    /// Serves on `listener` until `shutdown` completes, then closes every session.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.run_draining(listener, shutdown, std::time::Duration::ZERO)
            .await;
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, closes the
    /// sessions' transports spread over `drain`, waits for the API requests being
    /// answered (at most `drain` more) and for the store to commit what was queued, and
    /// leaves the cluster.
    pub async fn run_draining(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: std::time::Duration,
    ) {
        let demo = self
            .config
            .demo
            .enabled
            .then(|| tokio::spawn(demo::ticker(self.push.clone())));
        let delivery = self.delivery.clone();
        let shutdown = async move {
            shutdown.await;
            delivery.flush();
        };
        transport::serve_until(
            listener,
            self.engine.clone(),
            Some(self.http.clone() as Arc<dyn Fallback>),
            shutdown,
        )
        .await;
        if let Some(d) = demo {
            d.abort();
        }
        let sessions = self.engine.sessions();
        if !drain.is_zero() && sessions > 0 {
            tracing::info!(
                sessions,
                secs = drain.as_secs_f64(),
                "draining: closing the clients' transports"
            );
        }
        self.engine.close_gradually(drain).await;
        let deadline = tokio::time::Instant::now() + drain.max(std::time::Duration::from_secs(1));
        while self.engine.requests_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "the store could not commit what was queued at shutdown");
        }
        self.delivery.leave_cluster().await;
    }
}

/// File descriptors kept for everything but client connections: the listener, the
/// store's files, PostgreSQL and Redis connections, logs.
const RESERVED_FDS: u64 = 128;

/// Raises the open-files limit to its hard maximum and makes `max_connections` fit in
/// it: past the limit, accepts fail and every client (and the API) is refused, where
/// `max_connections` would refuse only the newest.
fn fit_file_limit(config: &mut config::Config) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(files) = limit.current else { return };
    let room = usize::try_from(files.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let t = &mut config.transport;
    if t.max_connections > room {
        tracing::warn!(
            max_connections = t.max_connections,
            open_files = files,
            now = room,
            "transport.max_connections is above what the open-files limit allows; lowered (raise the limit, e.g. LimitNOFILE=, to allow more)"
        );
        t.max_connections = room;
    }
}

/// Binds the configured address and runs until SIGINT or SIGTERM.
pub async fn serve(mut config: config::Config) -> anyhow::Result<()> {
    fit_file_limit(&mut config);
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
    let admin = bind_admin(&node.config.admin).await?;
    let admin_addr = admin
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or("off".to_owned(), |a| a.to_string());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|listener| {
        node.run_admin(listener, async {
            let _ = admin_stopped.await;
        })
    });
    summary(&node.config, local, &admin_addr);
    let first = signals();
    let grace = std::time::Duration::from_secs(node.config.shutdown.grace_secs);
    let drain_for = std::time::Duration::from_secs(node.config.shutdown.drain_secs);
    let draining = node.draining.clone();
    let stop_accepting = async move {
        let _ = first.await;
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            grace_secs = grace.as_secs(),
            drain_secs = drain_for.as_secs(),
            "draining: /readyz answers 503; accepting during the grace period, then closing connections (a second signal exits at once)"
        );
        tokio::time::sleep(grace).await;
    };
    node.run_draining(listener, stop_accepting, drain_for).await;
    let _ = stop_admin.send(());
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the admin listener, if one is configured. The default address taken by
/// something else (say a node exporter, or another herald on this machine) is a
/// warning; an address configured on purpose that cannot be bound stops the start.
async fn bind_admin(admin: &api::admin::AdminConfig) -> anyhow::Result<Option<TcpListener>> {
    if admin.listen.is_empty() {
        return Ok(None);
    }
    match TcpListener::bind(&admin.listen).await {
        Ok(l) => {
            let local = l.local_addr().context("admin listener address")?;
            tracing::info!(addr = %local, "admin listener (metrics, health, admin page)");
            // Whoever reads stdout may have stopped after the first line (`listening on`).
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "admin listener on {local}");
            Ok(Some(l))
        }
        Err(e) if admin.listen == api::admin::AdminConfig::default().listen => {
            tracing::warn!(addr = %admin.listen, error = %e, "admin listener not started: its default address is taken; set admin.listen to a free port (or empty for none)");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on admin.listen {}", admin.listen)),
    }
}

/// The start-up summary: what this node serves, where its messages live, who may
/// connect, and the main limits.
fn summary(config: &config::Config, local: std::net::SocketAddr, admin: &str) {
    let auth = if config.dev_auth {
        "dev (userId unverified)"
    } else if !config.auth.jwt_secret.is_empty() {
        "jwt (secret)"
    } else if !config.auth.jwt_public_key_file.is_empty() {
        "jwt (public key)"
    } else {
        "none (every client refused)"
    };
    let store = if config.store.url.starts_with("postgres") {
        "postgres".to_owned()
    } else if config.store.url.is_empty() {
        format!("sqlite:{}", config.store.data_dir)
    } else {
        config.store.url.clone()
    };
    let cluster = if config.cluster.redis.is_empty() {
        "single node".to_owned()
    } else {
        config::redact_url(&config.cluster.redis)
    };
    let t = &config.transport;
    tracing::info!(
        listen = %local,
        admin,
        store = %store,
        cluster = %cluster,
        auth,
        anonymous = config.auth.anonymous,
        api_keys = config.api.keys.len() + config.api.scoped_keys.len(),
        webhooks = config.webhooks.enabled(),
        max_connections = t.max_connections,
        max_connections_per_ip = t.max_connections_per_ip,
        max_sessions = t.max_sessions,
        max_payload = t.max_payload,
        max_connections_per_user = config.hub.max_connections_per_user,
        "herald started"
    );
}

/// The first SIGTERM or SIGINT completes the receiver; a second one, while the node
/// drains, ends the process at once (exit code 1).
fn signals() -> tokio::sync::oneshot::Receiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch for SIGTERM and SIGINT: stop herald with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("a second signal while draining: exiting now");
        std::process::exit(1);
    });
    rx
}
