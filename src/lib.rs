//! herald: a real-time push server speaking Socket.IO.
//!
//! The modules follow the layers a message crosses, from the wire up:
//!
//! - [`transport`]: Engine.IO v3/v4 over WebSocket and HTTP long-polling;
//! - [`protocol`]: Socket.IO v4/v5 packets, namespaces, acks, binary attachments;
//! - [`hub`]: the node's live state, user rooms; the only writer of pushes to sockets;
//! - [`router`]: takes an accepted message to the nodes holding its users;
//! - [`store`]: the durable inbox (SQLite embedded, PostgreSQL for clusters);
//! - [`push`]: validates and stamps pushes;
//! - [`auth`]: who a connecting client is (JWT, or development mode);
//! - [`api`]: the HTTP API for backends;
//! - [`app`]: configuration, start-up and shutdown of the `herald` binary;
//! - [`vocab`]: the words all of them share (message, target, stored message, user id,
//!   time); it imports none of them.

pub mod api;
pub mod app;
pub mod auth;
pub mod hub;
pub mod protocol;
pub mod push;
pub mod router;
pub mod store;
pub mod transport;
pub mod vocab;

#[doc(hidden)]
pub mod fuzzing;
