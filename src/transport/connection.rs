//! What the transport and the layer above (Socket.IO) tell each other about a session:
//! the messages a client sends, and why a session ended.

use std::sync::Arc;

use super::session::Session;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet or closed its connection cleanly.
    TransportClose,
    /// The connection failed: reset, broken frame, polling request abandoned.
    TransportError,
    /// The client did not answer a ping (v4) or stopped pinging (v3) in time.
    PingTimeout,
    /// The client sent something that is not valid Engine.IO or Socket.IO.
    ParseError,
    /// The client's outbound queue overflowed under [`OverflowPolicy::Disconnect`].
    QueueOverflow,
    /// The upper layer's deadline passed (the Socket.IO connect timeout).
    HandshakeTimeout,
    /// The server closed the session (kick, shutdown).
    ServerClose,
    /// The client's credentials expired and the server is set to end such sessions.
    CredentialsExpired,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::TransportClose,
        CloseReason::TransportError,
        CloseReason::PingTimeout,
        CloseReason::ParseError,
        CloseReason::QueueOverflow,
        CloseReason::HandshakeTimeout,
        CloseReason::ServerClose,
        CloseReason::CredentialsExpired,
    ];

    /// The reason as the Node reference server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ParseError => "parse error",
            CloseReason::QueueOverflow => "queue overflow",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::ServerClose => "server close",
            CloseReason::CredentialsExpired => "credentials expired",
        }
    }
}

/// A message a client sent, as the layer above sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// The layer above's per-session state, created when the session opens.
pub trait Connection: Send + Sync + 'static {
    /// The session is attached and registered: what the layer above does at once (a v3
    /// client's implicit CONNECT) happens here, where a session that closes meanwhile is
    /// accounted for like any other. Default: nothing.
    fn on_opened(&self, _session: &Arc<Session>) {}
    /// A message arrived. An error closes the session with [`CloseReason::ParseError`].
    fn on_message(&self, session: &Arc<Session>, msg: Message<'_>) -> Result<(), MessageError>;
    /// The session ended; called exactly once, never while a push holds a lock.
    fn on_close(&self, session: &Arc<Session>, reason: CloseReason);
}

/// A message the layer above could not accept; the session is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MessageError(pub String);
