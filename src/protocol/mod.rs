//! Socket.IO v5 (for Engine.IO v4 clients) and v4 (for Engine.IO v3 clients) on top of
//! the transport: [`packet`] encodes and decodes packets, [`socket`] serves namespaces.

pub mod packet;
pub mod socket;

pub use packet::Args;
pub use socket::{
    AckError, ConnectError, DisconnectReason, Event, Handler, Handshake, Namespace, Socket,
    SocketIo, SocketIoConfig,
};
