//! Socket.IO v5 (for Engine.IO v4 clients) and v4 (for Engine.IO v3 clients) on top of
//! the transport: [`packet`] encodes and decodes packets, [`socket`] serves namespaces,
//! [`handler`] is what an application implements for a namespace.

pub mod handler;
pub mod packet;
pub mod socket;

pub use handler::{
    AckError, ConnectError, DisconnectReason, Event, Handler, Handshake, SocketIoConfig,
};
pub use packet::Args;
pub use socket::{Namespace, Socket, SocketIo};
