//! Configuration from flags and `HERALD_*` environment variables (flags win), validated
//! into the typed settings of each layer.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::protocol::SocketIoConfig;
use crate::transport::{EngineConfig, OverflowPolicy};

/// herald: a real-time push server speaking Socket.IO.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration and exit.
    Config,
}

/// Every setting, each with its default; `HERALD_<NAME>` sets it from the environment.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "HERALD_LISTEN",
        default_value = "127.0.0.1:3000",
        global = true
    )]
    pub listen: String,
    /// Path of the Socket.IO endpoint.
    #[arg(
        long,
        env = "HERALD_PATH",
        default_value = "/socket.io/",
        global = true
    )]
    pub path: String,
    /// Milliseconds between heartbeats.
    #[arg(
        long,
        env = "HERALD_PING_INTERVAL_MS",
        default_value_t = 25_000,
        global = true
    )]
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a heartbeat.
    #[arg(
        long,
        env = "HERALD_PING_TIMEOUT_MS",
        default_value_t = 20_000,
        global = true
    )]
    pub ping_timeout_ms: u64,
    /// Largest message or polling payload a client may send, in bytes.
    #[arg(
        long,
        env = "HERALD_MAX_PAYLOAD",
        default_value_t = 1_000_000,
        global = true
    )]
    pub max_payload: usize,
    /// Largest number of packets queued for one client.
    #[arg(
        long,
        env = "HERALD_MAX_QUEUE_PACKETS",
        default_value_t = 4096,
        global = true
    )]
    pub max_queue_packets: usize,
    /// Largest number of bytes queued for one client.
    #[arg(long, env = "HERALD_MAX_QUEUE_BYTES", default_value_t = 4 << 20, global = true)]
    pub max_queue_bytes: usize,
    /// What to do when a client's queue is full: `disconnect` or `drop`.
    #[arg(long, env = "HERALD_OVERFLOW", default_value = "disconnect", value_parser = parse_overflow, global = true)]
    pub overflow: OverflowPolicy,
    /// Origins allowed for cross-origin polling (comma-separated; `*` for any, without
    /// credentials).
    #[arg(
        long,
        env = "HERALD_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to listed origins.
    #[arg(long, env = "HERALD_CORS_CREDENTIALS", global = true)]
    pub cors_credentials: bool,
    /// Largest number of simultaneous TCP connections.
    #[arg(
        long,
        env = "HERALD_MAX_CONNECTIONS",
        default_value_t = 100_000,
        global = true
    )]
    pub max_connections: usize,
    /// Milliseconds a client has to join a namespace after its handshake.
    #[arg(
        long,
        env = "HERALD_CONNECT_TIMEOUT_MS",
        default_value_t = 45_000,
        global = true
    )]
    pub connect_timeout_ms: u64,
    /// Largest number of binary attachments in one packet.
    #[arg(
        long,
        env = "HERALD_MAX_ATTACHMENTS",
        default_value_t = 10,
        global = true
    )]
    pub max_attachments: usize,
}

fn parse_overflow(s: &str) -> Result<OverflowPolicy, String> {
    match s {
        "disconnect" => Ok(OverflowPolicy::Disconnect),
        "drop" => Ok(OverflowPolicy::Drop),
        other => Err(format!("expected `disconnect` or `drop`, got `{other}`")),
    }
}

impl Config {
    /// Checks what flags cannot express on their own.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || !self.path.ends_with('/') {
            return Err(format!(
                "path must start and end with `/`, got `{}`",
                self.path
            ));
        }
        if self.ping_interval_ms == 0 || self.ping_timeout_ms == 0 {
            return Err("ping interval and timeout must be positive".into());
        }
        if self.max_payload == 0 || self.max_queue_packets == 0 || self.max_queue_bytes == 0 {
            return Err("payload and queue limits must be positive".into());
        }
        Ok(())
    }

    /// The Engine.IO settings.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            max_payload: self.max_payload,
            max_queue_packets: self.max_queue_packets,
            max_queue_bytes: self.max_queue_bytes,
            overflow: self.overflow,
            cors_origins: self.cors_origins.clone(),
            cors_credentials: self.cors_credentials,
            max_connections: self.max_connections,
            ..EngineConfig::default()
        }
    }

    /// The Socket.IO settings.
    pub fn socketio(&self) -> SocketIoConfig {
        SocketIoConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_attachments: self.max_attachments,
            max_attachment_bytes: self.max_payload,
            ..SocketIoConfig::default()
        }
    }
}
