//! herald: a real-time push server speaking Socket.IO.
//!
//! The modules follow the layers a message crosses, from the wire up:
//!
//! - [`transport`]: Engine.IO v3/v4 over WebSocket and HTTP long-polling;
//! - [`protocol`]: Socket.IO v4/v5 packets, namespaces, acks, binary attachments;
//! - [`hub`]: the node's live state, user rooms; the only writer of pushes to sockets;
//! - [`delivery`]: the rules between an accepted message and the hub: live delivery,
//!   resume, replay, gap catch-up, acks, read state;
//! - [`broker`]: publish, subscribe and presence across nodes (memory, or Redis);
//! - [`store`]: the durable inbox (SQLite embedded, PostgreSQL for clusters);
//! - [`push`]: validates and stamps pushes;
//! - [`auth`]: who a connecting client is (JWT, or development mode);
//! - [`api`]: the HTTP API for backends;
//! - [`webhooks`]: sends the store's outbox of receipts (delivered, read, undelivered,
//!   online, offline) to the backend, signed;
//! - [`metrics`]: the Prometheus metrics every layer keeps, and the scrape; imports no
//!   layer;
//! - [`app`]: configuration, start-up and shutdown of the `herald` binary;
//! - [`vocab`]: the words all of them share (message, target, stored message, user id,
//!   time); it imports none of them.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod delivery;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod push;
pub mod store;
pub mod transport;
pub mod vocab;
pub mod webhooks;

#[doc(hidden)]
pub mod fuzzing;
