//! WebSocket upgrades: a new session over WebSocket, or a polling session moving to one.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::cors::origin_allowed;
use super::engine::EngineInner;
use super::frame;
use super::handshake::{admit, error_response, lookup, open_session, parse_query, EioError};
use super::http::{self, Head, Method, Response};
use super::request::write;
use super::server::ConnectionSlot;
use super::websocket;

/// Answers a WebSocket upgrade and hands the connection to its own small task.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upgrade(
    engine: &Arc<EngineInner>,
    slot: ConnectionSlot,
    stream: TcpStream,
    head: Head,
    leftover: Vec<u8>,
    endpoint: u8,
    remote: SocketAddr,
    cors: &[(&'static str, String)],
) {
    let reject = |e: EioError| error_response(e, false, cors);
    let eio = match parse_query(&head) {
        Ok(e) => e,
        Err(code) => {
            let _ = write(engine, &stream, &reject(code)).await;
            return;
        }
    };
    if !origin_allowed(engine, &head) {
        tracing::debug!(origin = ?head.origin, "websocket from an origin not in cors_origins refused");
        let body = error_response(EioError::Forbidden, false, cors);
        let _ = write(engine, &stream, &body).await;
        return;
    }
    let (Method::Get, Some(key), Some("13")) = (
        head.method,
        head.ws_key.as_deref(),
        head.ws_version.as_deref(),
    ) else {
        let _ = write(engine, &stream, &reject(EioError::BadRequest)).await;
        return;
    };
    let accept = frame::accept_key(key.as_bytes());
    let resp = Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", &accept)
        .finish();
    // An upgrade of a polling session, or a new session over WebSocket (which takes a
    // place among the sessions first).
    let (existing, ticket) = if http::query_param(head.query(), "sid").is_some() {
        match lookup(engine, &head, endpoint) {
            Some(s) if !s.expire_if_due() && s.begin_upgrade().is_ok() => (Some(s), None),
            _ => {
                // As the reference server does: accept the WebSocket, then close it, so
                // the client sees a close rather than a failed handshake.
                let mut bytes = resp;
                bytes.extend_from_slice(&frame::close_frame(frame::CloseCode::Policy));
                let _ = write(engine, &stream, &bytes).await;
                return;
            }
        }
    } else {
        match admit(engine, remote, &head) {
            Ok(t) => (None, Some(t)),
            Err(refusal) => {
                let _ = write(engine, &stream, &refusal.answer()).await;
                return;
            }
        }
    };
    if write(engine, &stream, &resp).await.is_err() {
        if let Some(s) = existing {
            s.abort_upgrade();
        }
        return;
    }
    let upgrading = existing.is_some();
    let session = match (existing, ticket) {
        (Some(s), _) => {
            engine.metrics.upgrades.inc();
            s
        }
        (None, Some(ticket)) => open_session(
            engine,
            ticket,
            eio,
            false,
            endpoint,
            true,
            head.query(),
            remote,
        ),
        (None, None) => return,
    };
    drop(head);
    let max = engine.config.max_payload;
    let linger = engine.config.ping_timeout;
    tokio::spawn(async move {
        websocket::run(stream, session, upgrading, leftover, max, linger).await;
        drop(slot);
    });
}
