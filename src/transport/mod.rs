//! Engine.IO v3 and v4: handshake, long-polling (both payload encodings), WebSocket (our
//! own RFC 6455 framing), upgrade, heartbeats, limits.
//!
//! - [`packet`]: packets and polling payloads;
//! - [`frame`]: WebSocket frames;
//! - `frame_reader`: a WebSocket byte stream read into messages;
//! - [`http`]: the bit of HTTP/1.1 Engine.IO needs;
//! - [`session`]: one client session and its bounded outbound queue;
//! - [`engine`]: the session registry, heartbeat walker, counters;
//! - `limits`: connections and handshakes per client address;
//! - [`websocket`]: the per-connection WebSocket task;
//! - [`server`]: the listener and the HTTP side of connections.

pub mod config;
mod connection;
mod cors;
pub mod engine;
pub mod frame;
pub(crate) mod frame_reader;
mod handshake;
pub mod http;
mod limits;
pub mod packet;
mod polling;
mod request;
pub mod server;
pub mod session;
mod sid;
mod upgrade;
mod websocket;

pub use config::{EngineConfig, OverflowPolicy};
pub use engine::{Engine, EngineHandler, Metrics, OpenRequest};
pub use limits::{check_exemptions, CidrError};
pub use packet::{Eio, Outbound};
pub use server::{serve, serve_until, Fallback};
pub use session::{CloseReason, Connection, Message, MessageError, SendError, Session, Sid};
