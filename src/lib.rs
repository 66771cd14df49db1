//! herald: a real-time push server speaking Socket.IO.
//!
//! The modules follow the layers a message crosses, from the wire up:
//!
//! - [`transport`]: Engine.IO v3/v4 over WebSocket and HTTP long-polling;
//! - [`protocol`]: Socket.IO v4/v5 packets, namespaces, acks, binary attachments;
//! - [`app`]: configuration, start-up and shutdown of the `herald` binary.

pub mod app;
pub mod protocol;
pub mod transport;

#[doc(hidden)]
pub mod fuzzing;
