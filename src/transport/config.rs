//! Engine.IO transport settings. Every limit has a default that suits a production push
//! server; the Node reference server's defaults are given where they differ.

use std::time::Duration;

/// What to do when a client's outbound queue is full (it reads slower than we push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Close the connection; the client reconnects and, with a durable inbox, resumes.
    /// Counted in `queue_overflow_disconnects`. The default.
    Disconnect,
    /// Drop the new message for that client only and keep the connection. Counted in
    /// `queue_overflow_drops`.
    Drop,
}

/// Configuration of the Engine.IO layer.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Time between server pings (v4) or expected client pings (v3). Default 25 s.
    pub ping_interval: Duration,
    /// Time a client has to answer a ping (v4), or extra grace for a client ping (v3).
    /// Default 20 s.
    pub ping_timeout: Duration,
    /// Largest message or polling payload a client may send, in bytes. Default 1,000,000
    /// (as Node's `maxHttpBufferSize`).
    pub max_payload: usize,
    /// Largest message or polling body from a client that has not joined a namespace
    /// (shown no credentials): a CONNECT with its token needs little. Default 64 KiB.
    pub max_payload_before_connect: usize,
    /// Longest handshake query string (kept with the session for its namespace
    /// handshakes). Default 8 KiB.
    pub max_query_bytes: usize,
    /// Largest number of packets queued for one client, control packets (pings, pongs,
    /// noops) included. Default 4096.
    pub max_queue_packets: usize,
    /// Largest number of bytes queued for one client. Default 4 MiB.
    pub max_queue_bytes: usize,
    /// Largest number of bytes queued for a client that has not joined a namespace (has
    /// shown no credentials): its handshake, heartbeats and a refusal need little.
    /// Default 64 KiB.
    pub max_queue_bytes_before_connect: usize,
    /// What happens when a client's queue is full. Default [`OverflowPolicy::Disconnect`].
    /// A control packet (a pong, a ping, an RFC 6455 pong frame) that does not fit
    /// disconnects under either policy: the client is not reading.
    pub overflow: OverflowPolicy,
    /// Origins allowed to make cross-origin polling requests, e.g. `https://app.example`.
    /// `*` allows any origin but then never with credentials. Default: none (same-origin
    /// pages and non-browser clients work; cross-origin browser polling is refused).
    pub cors_origins: Vec<String>,
    /// Whether `Access-Control-Allow-Credentials: true` is sent for a listed origin.
    /// Default false.
    pub cors_credentials: bool,
    /// Development mode (loopback only): cross-origin polling from any origin, with
    /// credentials, the `null` origin of a page opened from a file included. Default
    /// false.
    pub cors_any_origin: bool,
    /// Largest HTTP request head (request line plus headers). Default 16 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a whole request head (from its first byte, or from the
    /// connection's start for its first request), and a whole request body (plus what
    /// [`EngineConfig::min_body_rate`] allows a large body). Default 10 s.
    pub request_timeout: Duration,
    /// Idle time allowed between two requests on a keep-alive connection. Default 60 s.
    pub keepalive_timeout: Duration,
    /// Slowest transfer of a request body tolerated, in bytes per second: a body of `n`
    /// bytes gets `request_timeout + n / min_body_rate` to arrive. Default 16 KiB/s.
    pub min_body_rate: usize,
    /// Largest number of simultaneous TCP connections; more are closed at once and
    /// counted in `connections_refused`. Default 100,000.
    pub max_connections: usize,
    /// Largest number of simultaneous TCP connections from one address (IPv6: one /64);
    /// more are answered 429 and closed. 0: no limit. Default 1,000.
    pub max_connections_per_ip: usize,
    /// Largest number of Engine.IO sessions (a long-polling one holds no connection
    /// between requests); more handshakes are answered 503. Default 100,000.
    pub max_sessions: usize,
    /// Largest number of Engine.IO sessions of one address; more handshakes are answered
    /// 429. 0: no limit. Default 1,000.
    pub max_sessions_per_ip: usize,
    /// Engine.IO handshakes (new sessions) one address may open per second, with bursts
    /// of as many; more are answered 429. 0: no limit. Default 100.
    pub max_handshakes_per_ip_per_sec: u32,
    /// Addresses or CIDR blocks (a load balancer, a reverse proxy) that the per-address
    /// limits do not apply to. Default: none.
    pub ip_limit_exempt: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_payload_before_connect: 64 << 10,
            max_query_bytes: 8 << 10,
            max_queue_packets: 4096,
            max_queue_bytes: 4 << 20,
            max_queue_bytes_before_connect: 64 << 10,
            overflow: OverflowPolicy::Disconnect,
            cors_origins: Vec::new(),
            cors_credentials: false,
            cors_any_origin: false,
            max_header_bytes: 16 << 10,
            request_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            min_body_rate: 16 << 10,
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            max_sessions: 100_000,
            max_sessions_per_ip: 1_000,
            max_handshakes_per_ip_per_sec: 100,
            ip_limit_exempt: Vec::new(),
        }
    }
}
