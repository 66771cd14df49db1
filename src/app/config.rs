//! Configuration in layers: built-in defaults, then a TOML file (`--config`), then
//! `HERALD_*` environment variables, then flags. Validated once into a typed struct;
//! unknown keys in the file are errors, so a typo never passes silently.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use toml::{Table, Value};

use crate::api::admin::AdminConfig;
use crate::api::ApiConfig;
use crate::auth::AuthConfig;
use crate::broker::redis::ClusterConfig;
use crate::hub::HubConfig;
use crate::protocol::SocketIoConfig;
use crate::push::PushConfig;
use crate::store::StoreConfig;
use crate::transport::{EngineConfig, OverflowPolicy};
use crate::webhooks::WebhookConfig;

/// herald: a real-time push server speaking Socket.IO.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration (secrets hidden) and exit.
    Config,
    /// Check the configuration (file, environment, flags) as a start would, without
    /// starting: exits 0 if herald would start with it, 2 with the reason.
    CheckConfig,
    /// Print every setting with its default and a line of help: a configuration file
    /// that `check-config` accepts.
    GenConfig,
    /// Print a client token (JWT) for a user, signed with `auth.jwt_secret`: for
    /// development and tests.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime: seconds, or with a unit: `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// Flags: the last layer.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:3000].
    #[arg(long, global = true)]
    pub listen: Option<String>,
    /// Development mode: take `userId` from clients unverified, and open the API when no
    /// key is configured. Refused unless listening on a loopback address.
    #[arg(long, global = true)]
    pub dev_auth: bool,
    /// Run the demo: a ticker pushing `hello` {x, y} every second, and a page at /demo.
    #[arg(long, global = true)]
    pub demo: bool,
    /// Directory of the embedded message store [default: ./herald-data].
    #[arg(long, global = true)]
    pub data_dir: Option<String>,
}

/// Transport settings (`[transport]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSection {
    /// Milliseconds between heartbeats. Default 25,000.
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a heartbeat. Default 20,000.
    pub ping_timeout_ms: u64,
    /// Largest message or polling body from a client, bytes. Default 1,000,000.
    pub max_payload: usize,
    /// Packets queued for one client. Default 4096.
    pub max_queue_packets: usize,
    /// Bytes queued for one client. Default 4 MiB.
    pub max_queue_bytes: usize,
    /// Largest message or polling body from a client that has not joined a namespace.
    /// Default 64 KiB.
    pub max_payload_before_connect: usize,
    /// Longest handshake query string, bytes. Default 8 KiB.
    pub max_query_bytes: usize,
    /// Bytes queued for a client that has not joined a namespace. Default 64 KiB.
    pub max_queue_bytes_before_connect: usize,
    /// `disconnect` or `drop` when a client's queue is full. Default `disconnect`.
    pub overflow: OverflowPolicy,
    /// Origins allowed for cross-origin polling; `*` for any, without credentials.
    pub cors_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to listed origins. Default false.
    pub cors_credentials: bool,
    /// Simultaneous TCP connections. Default 100,000.
    pub max_connections: usize,
    /// Simultaneous TCP connections from one address (IPv6: one /64); 0 for no limit.
    /// Default 1,000.
    pub max_connections_per_ip: usize,
    /// Engine.IO handshakes one address may open per second (bursts of as many); 0 for
    /// no limit. Default 100.
    pub max_handshakes_per_ip_per_sec: u32,
    /// Engine.IO sessions on this node. Default 100,000.
    pub max_sessions: usize,
    /// Engine.IO sessions of one address; 0 for no limit. Default 1,000.
    pub max_sessions_per_ip: usize,
    /// Addresses or CIDR blocks the per-address limits do not apply to (a load
    /// balancer, a reverse proxy). Default: none.
    pub ip_limit_exempt: Vec<String>,
    /// Largest HTTP request head, bytes. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Milliseconds for a whole request head (from its first byte) and a whole request
    /// body (plus `min_body_rate` time for a large one); also how long a response may
    /// take to be read. Default 10,000.
    pub request_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may idle between requests. Default 60,000.
    pub keepalive_timeout_ms: u64,
    /// Slowest request body (and response) transfer tolerated, bytes per second.
    /// Default 16,384.
    pub min_body_rate: usize,
}

impl Default for TransportSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        TransportSection {
            ping_interval_ms: e.ping_interval.as_millis() as u64,
            ping_timeout_ms: e.ping_timeout.as_millis() as u64,
            max_payload: e.max_payload,
            max_payload_before_connect: e.max_payload_before_connect,
            max_query_bytes: e.max_query_bytes,
            max_queue_packets: e.max_queue_packets,
            max_queue_bytes: e.max_queue_bytes,
            max_queue_bytes_before_connect: e.max_queue_bytes_before_connect,
            overflow: e.overflow,
            cors_origins: e.cors_origins,
            cors_credentials: e.cors_credentials,
            max_connections: e.max_connections,
            max_connections_per_ip: e.max_connections_per_ip,
            max_handshakes_per_ip_per_sec: e.max_handshakes_per_ip_per_sec,
            max_sessions: e.max_sessions,
            max_sessions_per_ip: e.max_sessions_per_ip,
            ip_limit_exempt: e.ip_limit_exempt,
            max_header_bytes: e.max_header_bytes,
            request_timeout_ms: e.request_timeout.as_millis() as u64,
            keepalive_timeout_ms: e.keepalive_timeout.as_millis() as u64,
            min_body_rate: e.min_body_rate,
        }
    }
}

/// Socket.IO settings (`[socketio]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoSection {
    /// Milliseconds a client has to join a namespace after its handshake. Default 45,000.
    pub connect_timeout_ms: u64,
    /// Binary attachments in one packet. Default 10.
    pub max_attachments: usize,
    /// Server-to-client acks awaiting an answer per socket. Default 256.
    pub max_pending_acks: usize,
}

impl Default for SocketIoSection {
    fn default() -> Self {
        let s = SocketIoConfig::default();
        SocketIoSection {
            connect_timeout_ms: s.connect_timeout.as_millis() as u64,
            max_attachments: s.max_attachments,
            max_pending_acks: s.max_pending_acks,
        }
    }
}

/// Demo settings (`[demo]`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSection {
    /// Run the demo ticker and page. Default false.
    pub enabled: bool,
    /// File served as the socket.io-client 4.x library for the page (e.g.
    /// `node_modules/socket.io-client/dist/socket.io.min.js`). Default: none, the page
    /// loads it from a CDN.
    pub client_v4: String,
    /// File served as the socket.io-client 2.x library (`/demo?client=2`). Default: none,
    /// the page loads it from a CDN.
    pub client_v2: String,
    /// herald-client's browser bundle (`clients/js/dist/herald-client.browser.js`, made
    /// by `npm run build` in `clients/js`): the page's inbox then runs on it. Default:
    /// none, the page uses socket.io-client alone.
    pub client_herald: String,
}

/// What a node does on SIGTERM or SIGINT (`[shutdown]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSection {
    /// Seconds a draining node goes on accepting, `/readyz` answering 503, so that a
    /// load balancer notices before connections are refused. Default 5.
    pub grace_secs: u64,
    /// Seconds over which a draining node then closes its clients' transports (they
    /// reconnect, and resume, elsewhere). Default 10.
    pub drain_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            grace_secs: 5,
            drain_secs: 10,
        }
    }
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log settings (`[log]`); the filter is `HERALD_LOG` (e.g. `info`, `herald=debug`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

/// The whole configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on. Default `127.0.0.1:3000`.
    pub listen: String,
    /// Socket.IO endpoint path. Default `/socket.io/`.
    pub path: String,
    /// Development authentication (see `--dev-auth`). Default false.
    pub dev_auth: bool,
    pub transport: TransportSection,
    pub socketio: SocketIoSection,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub hub: HubConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub webhooks: WebhookConfig,
    pub admin: AdminConfig,
    pub log: LogSection,
    pub shutdown: ShutdownSection,
    pub demo: DemoSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:3000".into(),
            path: "/socket.io/".into(),
            dev_auth: false,
            transport: TransportSection::default(),
            socketio: SocketIoSection::default(),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            hub: HubConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            webhooks: WebhookConfig::default(),
            admin: AdminConfig::default(),
            log: LogSection::default(),
            shutdown: ShutdownSection::default(),
            demo: DemoSection::default(),
        }
    }
}

/// Variables with the `HERALD_` prefix that are not settings.
const NOT_SETTINGS: [&str; 1] = ["HERALD_LOG"];

impl Config {
    /// Loads the layers: defaults, `flags.config`, `env` (`HERALD_*` pairs), `flags`.
    pub fn load(
        flags: &Flags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let file = Config::read_file(flags)?;
        Config::load_with(flags, file.as_deref(), env)
    }

    /// The text of `flags.config`, read once (it may be a pipe, readable only once).
    pub fn read_file(flags: &Flags) -> anyhow::Result<Option<String>> {
        flags
            .config
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))
            })
            .transpose()
    }

    /// [`Config::load`] with the configuration file's text already read.
    pub fn load_with(
        flags: &Flags,
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table = match Value::try_from(Config::default()).context("default configuration")? {
            Value::Table(t) => t,
            _ => bail!("default configuration is not a table"),
        };
        if let (Some(path), Some(text)) = (&flags.config, file) {
            let file: Table = toml::from_str(text)
                .with_context(|| format!("invalid TOML in {}", path.display()))?;
            merge(&mut table, file);
        }
        let defaults = table.clone();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("HERALD_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let key = key.to_ascii_lowercase();
            match set_from_env(&mut table, &defaults, &key, &value) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(variable = %name, "not a setting; ignored"),
                Err(e) => bail!("{name}: {e}"),
            }
        }
        let mut config: Config = Value::Table(table)
            .try_into()
            .context("invalid configuration")?;
        if let Some(l) = &flags.listen {
            config.listen = l.clone();
        }
        config.dev_auth |= flags.dev_auth;
        if let Some(d) = &flags.data_dir {
            config.store.data_dir = d.clone();
        }
        config.demo.enabled |= flags.demo;
        // The demo's page, like the seed's, connects with no credentials at all.
        config.auth.anonymous |= flags.demo;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        // A host name (`localhost:3000`) is resolved; development mode needs every
        // address it names to be a loopback one.
        let addrs: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&self.listen)
                .with_context(|| {
                    format!(
                        "listen must be HOST:PORT or ADDRESS:PORT, got `{}`",
                        self.listen
                    )
                })?
                .collect();
        if addrs.is_empty() {
            bail!("listen `{}` names no address", self.listen);
        }
        if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            if self.dev_auth {
                bail!(
                    "dev-auth takes user ids unverified and is refused on the non-loopback address {addr}"
                );
            }
        }
        if !self.path.starts_with('/') || !self.path.ends_with('/') {
            bail!("path must start and end with `/`, got `{}`", self.path);
        }
        let t = &self.transport;
        if t.ping_interval_ms == 0 || t.ping_timeout_ms == 0 {
            bail!("transport.ping_interval_ms and ping_timeout_ms must be positive");
        }
        if t.max_payload == 0 || t.max_queue_packets == 0 || t.max_queue_bytes == 0 {
            bail!("transport payload and queue limits must be positive");
        }
        if t.request_timeout_ms == 0 || t.keepalive_timeout_ms == 0 || t.min_body_rate == 0 {
            bail!("transport.request_timeout_ms, keepalive_timeout_ms and min_body_rate must be positive");
        }
        crate::transport::check_exemptions(&t.ip_limit_exempt)
            .context("transport.ip_limit_exempt")?;
        if self.api.max_body_bytes == 0 || self.hub.max_connections_per_user == 0 {
            bail!("api.max_body_bytes and hub.max_connections_per_user must be positive");
        }
        let url = &self.store.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bail!(
                "store.url must be postgres://…, sqlite:PATH or empty, got `{}`",
                redact_url(url)
            );
        }
        if !self.cluster.redis.is_empty() {
            crate::broker::redis::parse_url(&self.cluster.redis)?;
            if self.store.url.is_empty() || self.store.url.starts_with("sqlite:") {
                tracing::warn!(
                    "cluster mode with an embedded store: each node has its own inbox; \
                     set store.url to a shared PostgreSQL"
                );
            }
        }
        if self.store.max_batch == 0 || self.store.max_page == 0 {
            bail!("store.max_batch and store.max_page must be positive");
        }
        if self.store.max_devices_per_user == 0 {
            bail!("store.max_devices_per_user must be positive");
        }
        if !(1..=100).contains(&self.api.max_data_depth) {
            bail!(
                "api.max_data_depth must be from 1 to 100, got {}",
                self.api.max_data_depth
            );
        }
        if self.api.keys.iter().any(String::is_empty) {
            bail!("api.keys must not contain an empty key");
        }
        let mut secrets = std::collections::HashSet::new();
        let all = self
            .api
            .keys
            .iter()
            .chain(self.api.scoped_keys.iter().map(|k| &k.key));
        for k in all {
            if k.trim() != k {
                bail!("an API key (api.keys, api.scoped_keys) starts or ends with whitespace: it could never match");
            }
            if !secrets.insert(k.as_str()) {
                bail!("an API key is listed twice (api.keys, api.scoped_keys): which scopes it has would be unclear");
            }
        }
        let mut names = std::collections::HashSet::new();
        for k in &self.api.scoped_keys {
            if k.name.is_empty() || k.key.is_empty() || k.scopes.is_empty() {
                bail!("each api.scoped_keys entry needs a name, a key and at least one scope (push, read, admin)");
            }
            if !names.insert(k.name.as_str()) || k.name.starts_with("keys[") {
                bail!(
                    "api.scoped_keys: the name `{}` is used twice (or looks like keys[N])",
                    k.name
                );
            }
        }
        self.admin.validate().map_err(anyhow::Error::msg)?;
        if !self.admin.listen.is_empty()
            && self.admin.listen == self.listen
            && !self.listen.ends_with(":0")
        {
            bail!("admin.listen and listen are the same address ({}): give the admin listener its own port, or turn it off with admin.listen = \"\"", self.listen);
        }
        if self.auth.revocation_ttl_secs == 0 {
            bail!("auth.revocation_ttl_secs must be positive");
        }
        self.webhooks.validate()?;
        Ok(())
    }

    /// What works but is unwise, for the log at start and for `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let a = &self.auth;
        if !self.dev_auth && a.jwt_secret.is_empty() && a.jwt_public_key_file.is_empty() {
            w.push("no client authentication configured (auth.jwt_secret or auth.jwt_public_key_file): every client will be refused; use --dev-auth to try herald locally".to_owned());
        }
        if !a.jwt_secret.is_empty() && a.jwt_secret.len() < 16 {
            w.push(format!("auth.jwt_secret is shorter than 16 bytes ({}): tokens signed with it can be forged by guessing it; use 32 random bytes or more", a.jwt_secret.len()));
        }
        let keys = &self.api;
        if keys.keys.iter().any(|k| k.len() < 16)
            || keys.scoped_keys.iter().any(|k| k.key.len() < 16)
        {
            w.push("an API key (api.keys, api.scoped_keys) is shorter than 16 bytes: easy to guess; use 32 random bytes or more".to_owned());
        }
        if !self.webhooks.secret.is_empty() && self.webhooks.secret.len() < 16 {
            w.push("webhooks.secret is shorter than 16 bytes: a receiver's signatures could be forged by guessing it; use 32 random bytes or more".to_owned());
        }
        if !self.admin.password.is_empty() && self.admin.password.len() < 16 {
            w.push("admin.password is shorter than 16 bytes: easy to guess; use 32 random bytes or more".to_owned());
        }
        if self.demo.enabled && !self.dev_auth {
            w.push("the demo page's inbox needs --dev-auth (the page names its user unverified); without it the page connects anonymously and gets the x, y feed only".to_owned());
        }
        if keys.keys.is_empty() && keys.scoped_keys.is_empty() && !self.dev_auth {
            w.push("no API keys configured (api.keys): every API call will be refused".to_owned());
        }
        w
    }

    /// The configuration as TOML with secrets hidden.
    pub fn redacted(&self) -> anyhow::Result<String> {
        let mut c = self.clone();
        c.store.url = redact_url(&c.store.url);
        c.cluster.redis = redact_url(&c.cluster.redis);
        c.webhooks.url = redact_url(&c.webhooks.url);
        if !c.auth.jwt_secret.is_empty() {
            c.auth.jwt_secret = "<hidden>".into();
        }
        for k in &mut c.api.keys {
            *k = "<hidden>".into();
        }
        for k in &mut c.api.scoped_keys {
            k.key = "<hidden>".into();
        }
        if !c.admin.password.is_empty() {
            c.admin.password = "<hidden>".into();
        }
        if !c.webhooks.secret.is_empty() {
            c.webhooks.secret = "<hidden>".into();
        }
        Ok(toml::to_string(&c)?)
    }

    pub fn engine(&self) -> EngineConfig {
        let t = &self.transport;
        EngineConfig {
            ping_interval: Duration::from_millis(t.ping_interval_ms),
            ping_timeout: Duration::from_millis(t.ping_timeout_ms),
            max_payload: t.max_payload,
            max_payload_before_connect: t.max_payload_before_connect,
            max_query_bytes: t.max_query_bytes,
            max_queue_packets: t.max_queue_packets,
            max_queue_bytes: t.max_queue_bytes,
            max_queue_bytes_before_connect: t.max_queue_bytes_before_connect,
            overflow: t.overflow,
            cors_origins: t.cors_origins.clone(),
            cors_credentials: t.cors_credentials,
            // Development mode is refused off loopback (see `validate`); an allow-list
            // configured even then is kept.
            cors_any_origin: self.dev_auth && t.cors_origins.is_empty(),
            max_header_bytes: t.max_header_bytes,
            request_timeout: Duration::from_millis(t.request_timeout_ms),
            keepalive_timeout: Duration::from_millis(t.keepalive_timeout_ms),
            min_body_rate: t.min_body_rate,
            max_connections: t.max_connections,
            max_connections_per_ip: t.max_connections_per_ip,
            max_handshakes_per_ip_per_sec: t.max_handshakes_per_ip_per_sec,
            max_sessions: t.max_sessions,
            max_sessions_per_ip: t.max_sessions_per_ip,
            ip_limit_exempt: t.ip_limit_exempt.clone(),
        }
    }

    pub fn socketio(&self) -> SocketIoConfig {
        SocketIoConfig {
            connect_timeout: Duration::from_millis(self.socketio.connect_timeout_ms),
            max_attachments: self.socketio.max_attachments,
            max_attachment_bytes: self.transport.max_payload,
            max_pending_acks: self.socketio.max_pending_acks,
        }
    }

    pub fn push(&self) -> PushConfig {
        PushConfig {
            max_users_per_push: self.api.max_users_per_push,
            idempotency_window: Duration::from_secs(self.api.idempotency_window_secs),
            max_data_depth: self.api.max_data_depth,
            ..PushConfig::default()
        }
    }
}

/// Hides the secrets of a URL: the password of `scheme://user:password@host/…`, and
/// the values of query parameters that name one (`password`, `token`, `secret`, `key`,
/// `sig`, `auth`). A string that is not a URL (a `key=value` connection string) is not
/// shown at all.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.contains('=') || url.contains('@') {
            return "<hidden: not a URL>".to_owned();
        }
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = match rest.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<hidden>@{host}"),
            None => format!("{scheme}://{rest}"),
        },
        None => format!("{scheme}://{rest}"),
    };
    if let Some(q) = query {
        const SECRET: [&str; 6] = ["password", "token", "secret", "key", "sig", "auth"];
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if SECRET.iter().any(|s| percent_decoded(k).contains(s)) => {
                    format!("{k}=<hidden>")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `s` with `%XX` escapes decoded, lower-cased (for matching parameter names, which
/// a client library decodes before it reads them).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// Deep-merges `over` into `base`.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets `key` (`listen`, or `<section>_<name>` such as `auth_jwt_secret`) from an
/// environment value, typed after the setting's current value. `Ok(false)`: no such
/// setting.
fn set_from_env(table: &mut Table, defaults: &Table, key: &str, raw: &str) -> Result<bool, String> {
    if let Some(current) = defaults.get(key).filter(|v| !v.is_table()) {
        table.insert(key.to_owned(), typed(current, raw)?);
        return Ok(true);
    }
    for (section, inner) in defaults.iter() {
        let Value::Table(inner) = inner else { continue };
        let Some(name) = key
            .strip_prefix(section.as_str())
            .and_then(|r| r.strip_prefix('_'))
        else {
            continue;
        };
        if let Some(current) = inner.get(name) {
            let v = typed(current, raw)?;
            if let Some(Value::Table(t)) = table.get_mut(section) {
                t.insert(name.to_owned(), v);
            }
            return Ok(true);
        }
    }
    Ok(false)
}

fn typed(current: &Value, raw: &str) -> Result<Value, String> {
    Ok(match current {
        Value::Boolean(_) => Value::Boolean(match raw {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" | "" => false,
            other => return Err(format!("expected true or false, got `{other}`")),
        }),
        Value::Integer(_) => Value::Integer(
            raw.parse()
                .map_err(|_| format!("expected a whole number, got `{raw}`"))?,
        ),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => Value::String(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            config: None,
            listen: None,
            dev_auth: false,
            demo: false,
            data_dir: None,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("herald.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:4000\"\n[transport]\nping_interval_ms = 1000\n[api]\nkeys = [\"file-key-0123456789\"]\n",
        )
        .unwrap();
        let mut f = flags();
        f.config = Some(file);
        let c = Config::load(
            &f,
            env(&[
                ("HERALD_TRANSPORT_PING_INTERVAL_MS", "2000"),
                ("HERALD_AUTH_JWT_SECRET", "s"),
                ("HERALD_STORE_URL", "postgres://herald:pw@db/herald"),
                ("HERALD_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:4000");
        assert_eq!(c.transport.ping_interval_ms, 2000);
        assert_eq!(c.auth.jwt_secret, "s");
        assert_eq!(c.api.keys, vec!["file-key-0123456789"]);
        f.listen = Some("127.0.0.1:5000".into());
        let c = Config::load(&f, env(&[("HERALD_LISTEN", "127.0.0.1:4500")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000");
        let shown = c.redacted().unwrap();
        assert!(!shown.contains("file-key"), "{shown}");
        let c = Config::load(
            &f,
            env(&[("HERALD_STORE_URL", "postgres://herald:pw@db/herald")]),
        )
        .unwrap();
        let shown = c.redacted().unwrap();
        assert!(
            shown.contains("postgres://herald:<hidden>@db/herald"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_in_urls_are_hidden() {
        for (url, shown) in [
            ("postgres://h:pw@db/x", "postgres://h:<hidden>@db/x"),
            (
                "postgres://h@db/x?password=pw&sslmode=require",
                "postgres://h@db/x?password=<hidden>&sslmode=require",
            ),
            (
                "https://hooks.example/in?token=t1",
                "https://hooks.example/in?token=<hidden>",
            ),
            ("host=db password=pw", "<hidden: not a URL>"),
            ("postgres:/u:pw@h/db", "<hidden: not a URL>"),
            (
                "postgres://u@h/db?pass%77ord=pw",
                "postgres://u@h/db?pass%77ord=<hidden>",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let e = Config::load(
            &flags(),
            env(&[("HERALD_STORE_URL", "host=db password=pw")]),
        )
        .unwrap_err();
        assert!(!format!("{e:#}").contains("pw"), "{e:#}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e =
            Config::load(&flags(), env(&[("HERALD_TRANSPORT_MAX_PAYLOAD", "lots")])).unwrap_err();
        assert!(
            format!("{e:#}").contains("HERALD_TRANSPORT_MAX_PAYLOAD"),
            "{e:#}"
        );
        let e =
            Config::load(&flags(), env(&[("HERALD_TRANSPORT_OVERFLOW", "explode")])).unwrap_err();
        assert!(format!("{e:#}").contains("invalid configuration"), "{e:#}");
        let e = Config::load(&flags(), env(&[("HERALD_LISTEN", "nowhere")])).unwrap_err();
        assert!(format!("{e:#}").contains("listen"), "{e:#}");
        // An unknown sync mode is refused, not taken for `full`.
        let e = Config::load(&flags(), env(&[("HERALD_STORE_SQLITE_SYNC", "fsync")])).unwrap_err();
        assert!(format!("{e:#}").contains("fsync"), "{e:#}");
        for bad in ["10.0.0.0/33", "not-an-address"] {
            let e = Config::load(&flags(), env(&[("HERALD_TRANSPORT_IP_LIMIT_EXEMPT", bad)]))
                .unwrap_err();
            assert!(format!("{e:#}").contains("ip_limit_exempt"), "{e:#}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("herald-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[transport]\nping_intervall_ms = 5\n").unwrap();
        let mut f = flags();
        f.config = Some(file);
        let e = Config::load(&f, Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("ping_intervall_ms"), "{e:#}");
    }

    #[test]
    fn example_cluster_configs_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
        for n in 1..=3 {
            let mut f = flags();
            f.config = Some(dir.join(format!("node{n}.toml")));
            let c = Config::load(&f, Vec::new()).unwrap();
            assert_eq!(c.cluster.node_id, format!("node{n}"));
            assert!(c.store.url.starts_with("postgres://"));
        }
    }

    #[test]
    fn dev_auth_is_refused_off_loopback() {
        let mut f = flags();
        f.dev_auth = true;
        f.listen = Some("0.0.0.0:3000".into());
        let e = Config::load(&f, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("dev-auth"), "{e}");
        f.listen = Some("127.0.0.1:3000".into());
        assert!(Config::load(&f, Vec::new()).is_ok());
        f.listen = Some("[::1]:3000".into());
        assert!(Config::load(&f, Vec::new()).is_ok());
    }
}
