//! What an application sees of Socket.IO: its settings, the handler of a namespace and
//! what it is told (handshakes, events, disconnects), and the errors it can give or get.

use std::time::Duration;

use super::packet::Args;
use super::socket::Socket;
use crate::transport::{CloseReason, SendError};

/// Socket.IO settings.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Time an Engine.IO v4 client has to connect to a namespace after its handshake.
    /// Default 45 s (as the reference server).
    pub connect_timeout: Duration,
    /// Largest number of binary attachments in one packet. Default 10.
    pub max_attachments: usize,
    /// Largest total size of one packet's attachments, in bytes. Default 1,000,000.
    pub max_attachment_bytes: usize,
    /// Largest number of server-to-client acks awaiting an answer per socket; emits with
    /// an ack beyond it fail with [`AckError::TooMany`]. Default 256.
    pub max_pending_acks: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            connect_timeout: Duration::from_secs(45),
            max_attachments: 10,
            max_attachment_bytes: 1_000_000,
            max_pending_acks: 256,
        }
    }
}

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client disconnected from the namespace.
    ClientNamespaceDisconnect,
    /// The server disconnected the socket ([`Socket::disconnect`]).
    ServerNamespaceDisconnect,
    /// The underlying connection ended.
    Transport(CloseReason),
}

impl DisconnectReason {
    /// The reason as the reference server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Transport(CloseReason::ServerClose) => "server shutting down",
            DisconnectReason::Transport(r) => r.as_str(),
        }
    }
}

/// A refused namespace connection: sent to the client as CONNECT_ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// What the client's `connect_error` shows as `err.message`.
    pub message: String,
    /// Optional JSON details (`err.data`, v5 clients only).
    pub data: Option<String>,
}

impl ConnectError {
    pub fn new(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }
}

/// What a client presented when connecting to a namespace.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The `auth` object (v5 clients), as JSON text.
    pub auth: Option<&'a str>,
    /// The handshake request's query string.
    pub query: &'a str,
    /// The query a v4 (2.x) client attached to this namespace's CONNECT, if any.
    pub connect_query: Option<&'a str>,
}

impl Handshake<'_> {
    /// A query parameter, from the namespace CONNECT first, then the handshake request.
    pub fn query_param(&self, name: &str) -> Option<String> {
        use crate::transport::http::query_param;
        self.connect_query
            .and_then(|q| query_param(q, name))
            .or_else(|| query_param(self.query, name))
            .map(|c| c.into_owned())
    }
}

/// An event from a client.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub args: Args,
    /// Set when the client waits for an answer: reply with [`Socket::ack`].
    pub ack: Option<u64>,
}

/// Why a server-to-client ack callback got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("socket disconnected before acknowledging")]
    Disconnected,
    #[error("too many acks pending for this socket")]
    TooMany,
    #[error("could not send: {0}")]
    Send(#[from] SendError),
}

/// What an application does with a namespace's sockets. All methods run on the
/// connection's task: keep them short, and spawn for anything that waits.
pub trait Handler: Send + Sync + 'static {
    /// Decides whether the client may join; runs before CONNECT is answered. The default
    /// admits everyone.
    fn authorize(&self, _socket: &Socket, _hs: &Handshake<'_>) -> Result<(), ConnectError> {
        Ok(())
    }
    /// The socket joined (its CONNECT answer is queued); emits now follow it.
    fn on_connect(&self, _socket: &Socket, _hs: &Handshake<'_>) {}
    /// An event arrived.
    fn on_event(&self, _socket: &Socket, _event: Event) {}
    /// The client acknowledged an id the server did not ask for with
    /// [`Socket::emit_with_ack`] (an application that numbers its own packets, such as
    /// herald's stored pushes whose ack id is the message seq).
    fn on_ack(&self, _socket: &Socket, _id: u64, _args: Args) {}
    /// The socket left; it is already out of its session.
    fn on_disconnect(&self, _socket: &Socket, _reason: DisconnectReason) {}
}
