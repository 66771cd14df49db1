//! Opening sessions: the handshake query, the open packet, the per-address handshake
//! rate, finding a session by sid, and Engine.IO's error answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::cors::with_cors;
use super::engine::{EngineInner, OpenRequest, SessionsFull};
use super::http::{self, Head, Response};
use super::packet::{Eio, Outbound};
use super::session::Session;

/// Engine.IO's error answers, numbered as the reference server numbers them (herald
/// adds 6 for a body over the payload limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EioError {
    TransportUnknown,
    SessionIdUnknown,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedProtocolVersion,
    PayloadTooLarge,
}

impl EioError {
    fn code(self) -> u8 {
        match self {
            EioError::TransportUnknown => 0,
            EioError::SessionIdUnknown => 1,
            EioError::BadHandshakeMethod => 2,
            EioError::BadRequest => 3,
            EioError::Forbidden => 4,
            EioError::UnsupportedProtocolVersion => 5,
            EioError::PayloadTooLarge => 6,
        }
    }

    fn message(self) -> &'static str {
        match self {
            EioError::TransportUnknown => "Transport unknown",
            EioError::SessionIdUnknown => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
            EioError::PayloadTooLarge => "Payload too large",
        }
    }

    fn status(self) -> u16 {
        match self {
            EioError::Forbidden => 403,
            EioError::PayloadTooLarge => 413,
            _ => 400,
        }
    }
}

/// Engine.IO's error answer: `{"code","message"}` with the error's HTTP status.
pub(super) fn error_response(
    error: EioError,
    keep_alive: bool,
    cors: &[(&'static str, String)],
) -> Vec<u8> {
    let body = format!(
        "{{\"code\":{},\"message\":\"{}\"}}",
        error.code(),
        error.message()
    );
    with_cors(Response::new(error.status()), cors)
        .header("Content-Type", "application/json")
        .body(body.as_bytes(), keep_alive)
}

/// The handshake query: protocol revision and transport, validated.
pub(super) fn parse_query(head: &Head) -> Result<Eio, EioError> {
    let q = head.query();
    match http::query_param(q, "transport").as_deref() {
        Some("polling") | Some("websocket") => {}
        _ => return Err(EioError::TransportUnknown),
    }
    match http::query_param(q, "EIO").as_deref() {
        Some("4") => Ok(Eio::V4),
        Some("3") => Ok(Eio::V3),
        _ => Err(EioError::UnsupportedProtocolVersion),
    }
}

pub(super) fn open_packet(engine: &EngineInner, session: &Session, websocket: bool) -> Outbound {
    let cfg = &engine.config;
    let upgrades = if websocket { "[]" } else { "[\"websocket\"]" };
    Outbound::Text(
        format!(
            "0{{\"sid\":\"{}\",\"upgrades\":{},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            session.sid(),
            upgrades,
            cfg.ping_interval.as_millis(),
            cfg.ping_timeout.as_millis(),
            cfg.max_payload
        )
        .into(),
    )
}

/// A place for a new session, taken by [`admit`]; given back if dropped unused.
pub(super) struct Ticket<'a> {
    engine: &'a EngineInner,
    ip: Option<IpAddr>,
    used: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.engine.unreserve(self.ip);
        }
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The address opens sessions faster than `max_handshakes_per_ip_per_sec`.
    Rate,
    /// The address holds `max_sessions_per_ip`.
    Address,
    /// The node holds `max_sessions`.
    Node,
    /// The handshake query is longer than `max_query_bytes`.
    Query,
}

impl Refusal {
    /// The HTTP answer, after which the connection closes.
    pub(super) fn answer(self) -> Vec<u8> {
        let (status, message) = match self {
            Refusal::Rate | Refusal::Address => {
                (429, "Too many connections or handshakes from this address")
            }
            Refusal::Node => (503, "The server holds as many sessions as it may"),
            Refusal::Query => (400, "Handshake query too long"),
        };
        let body = format!("{{\"code\":3,\"message\":\"{message}\"}}");
        Response::new(status)
            .header("Content-Type", "application/json")
            .header("Retry-After", "1")
            .body(body.as_bytes(), false)
    }
}

/// Whether `remote` may open another session now: its address's handshake rate and
/// session count, and the node's session count.
pub(super) fn admit<'a>(
    engine: &'a EngineInner,
    remote: SocketAddr,
    head: &Head,
) -> Result<Ticket<'a>, Refusal> {
    if head.query().len() > engine.config.max_query_bytes {
        // The query is kept with the session: it is bounded like everything kept.
        return Err(Refusal::Query);
    }
    let ip = remote.ip();
    if engine.per_ip.limited(ip) && engine.per_ip.handshake(ip, engine.now_ms()).is_err() {
        engine.metrics.handshakes_refused.inc();
        return Err(Refusal::Rate);
    }
    match engine.reserve(ip) {
        Ok(ip) => Ok(Ticket {
            engine,
            ip,
            used: false,
        }),
        Err(full) => {
            engine.metrics.handshakes_refused.inc();
            Err(match full {
                SessionsFull::Address => Refusal::Address,
                SessionsFull::Node => Refusal::Node,
            })
        }
    }
}

/// Creates a session in the place `ticket` holds, queues its handshake, lets the layer
/// above open, and registers it.
#[allow(clippy::too_many_arguments)]
pub(super) fn open_session(
    engine: &Arc<EngineInner>,
    mut ticket: Ticket<'_>,
    eio: Eio,
    b64: bool,
    endpoint: u8,
    websocket: bool,
    query: &str,
    remote: SocketAddr,
) -> Arc<Session> {
    ticket.used = true;
    let session = Session::new(engine.clone(), eio, b64, endpoint, websocket, ticket.ip);
    let _ = session.send(open_packet(engine, &session, websocket));
    let handler = engine.endpoints[endpoint as usize].handler.clone();
    let conn = handler.on_open(&session, &OpenRequest { query, remote });
    session.set_connection(conn);
    engine.insert(&session);
    session.opened();
    session
}

pub(super) fn lookup(engine: &EngineInner, head: &Head, endpoint: u8) -> Option<Arc<Session>> {
    let sid = http::query_param(head.query(), "sid")?;
    let sid = super::session::Sid::parse(&sid)?;
    let s = engine.get(&sid)?;
    (s.endpoint() == endpoint).then_some(s)
}
