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
        })
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
    node.run(listener, shutdown_signal()).await;
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
