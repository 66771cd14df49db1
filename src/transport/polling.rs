//! Long-polling requests: the handshake `GET`, a `GET` that waits for packets, a `POST`
//! of packets, and `OPTIONS` preflights.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use super::cors::with_cors;
use super::engine::EngineInner;
use super::handshake::{admit, error_response, lookup, open_session, parse_query, EioError};
use super::http::{self, Head, Method, Response};
use super::packet::{self, Eio};
use super::request::{read_body, write, BodyError};
use super::server::Next;
use super::session::{Busy, CloseReason, GetReply, Session};

#[allow(clippy::too_many_arguments)]
pub(super) async fn polling(
    engine: &Arc<EngineInner>,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    endpoint: u8,
    remote: SocketAddr,
    cors: &[(&'static str, String)],
) -> io::Result<Next> {
    let ka = head.keep_alive;
    if head.method == Method::Options {
        let mut r = with_cors(Response::new(204), cors);
        if !cors.is_empty() {
            r = r
                .header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
                .header("Access-Control-Max-Age", "86400");
            if let Some(h) = &head.access_control_request_headers {
                r = r.header("Access-Control-Allow-Headers", h);
            }
        }
        write(engine, stream, &r.body(b"", ka)).await?;
        return Ok(Next::KeepAlive);
    }
    let eio = match parse_query(head) {
        Ok(e) => e,
        Err(code) => {
            engine.metrics.http_errors.inc();
            eio_error(engine, stream, code, ka, cors).await?;
            return Ok(Next::KeepAlive);
        }
    };
    let has_sid = http::query_param(head.query(), "sid").is_some();
    match (head.method, has_sid) {
        (Method::Get, false) => {
            let ticket = match admit(engine, remote, head) {
                Ok(t) => t,
                Err(refusal) => {
                    write(engine, stream, &refusal.answer()).await?;
                    return Ok(Next::Close);
                }
            };
            let b64 =
                http::query_param(head.query(), "b64").is_some_and(|v| v == "1" || v == "true");
            let session = open_session(
                engine,
                ticket,
                eio,
                b64,
                endpoint,
                false,
                head.query(),
                remote,
            );
            let reply = poll_fn(|cx| session.poll_get(cx)).await;
            respond_get(engine, stream, &session, reply, ka, cors).await?;
            Ok(Next::KeepAlive)
        }
        (Method::Get, true) => {
            let Some(session) = lookup(engine, head, endpoint) else {
                eio_error(engine, stream, EioError::SessionIdUnknown, ka, cors).await?;
                return Ok(Next::KeepAlive);
            };
            settle_upgrade(&session).await;
            if session.expire_if_due() || !begin_get(engine, &session).await {
                let code = if session.is_closed() {
                    EioError::SessionIdUnknown
                } else {
                    EioError::BadRequest
                };
                eio_error(engine, stream, code, ka, cors).await?;
                return Ok(Next::KeepAlive);
            }
            let reply = wait_get(&session, stream, buf).await;
            // The GET stays the session's one pending GET until its answer is written, so
            // a client cannot have one answer after another copied and left unread.
            let next = match reply {
                Some(reply) => {
                    session.answering_get();
                    respond_get(engine, stream, &session, reply, ka, cors)
                        .await
                        .map(|()| Next::KeepAlive)
                }
                None => Ok(Next::Close),
            };
            if !matches!(next, Ok(Next::KeepAlive)) {
                // Gone, or the answer was not taken: what it carried is lost to the
                // client, which reconnects and resumes.
                session.close(CloseReason::TransportError);
            }
            session.end_get();
            next
        }
        (Method::Post, true) => post(engine, stream, head, buf, endpoint, cors).await,
        (_, false) => {
            eio_error(engine, stream, EioError::BadHandshakeMethod, ka, cors).await?;
            Ok(Next::KeepAlive)
        }
        (_, true) => {
            eio_error(engine, stream, EioError::BadRequest, ka, cors).await?;
            Ok(Next::KeepAlive)
        }
    }
}

/// How long a `GET` waits for an upgrade in progress to settle.
const UPGRADE_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A `GET` that arrives while a WebSocket takes the session over may have been sent
/// after the WebSocket's probe and upgrade packets, yet be handled first (they are read
/// by another task): it waits briefly for the upgrade to settle, so that it is refused
/// (400) once upgraded, whichever runs first. A client's GET rarely meets an upgrade in
/// progress (clients pause polling once probed), and then waits at most 100 ms.
async fn settle_upgrade(session: &Arc<Session>) {
    let deadline = tokio::time::Instant::now() + UPGRADE_SETTLE;
    while session.upgrading() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Starts a polling `GET`. A client may send its next `GET` as soon as it has read the
/// last answer, before this server has marked that answer written: that one waits for
/// it (briefly, within the request timeout) instead of counting as a second `GET`.
async fn begin_get(engine: &EngineInner, session: &Arc<Session>) -> bool {
    let deadline = tokio::time::Instant::now() + engine.config.request_timeout;
    loop {
        match session.begin_get() {
            Ok(()) => return true,
            Err(Busy::Answering) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Waits for a polling `GET`'s answer, watching the connection: `None` if the client
/// went away first.
pub(super) async fn wait_get(
    session: &Arc<Session>,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
) -> Option<GetReply> {
    poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(r) = session.poll_get(cx) {
            return Poll::Ready(Some(r));
        }
        loop {
            match stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            let mut chunk = [0u8; 1024];
            match stream.try_read(&mut chunk) {
                Ok(0) => return Poll::Ready(None),
                Ok(n) => {
                    // A pipelined next request; keep it, within the head limit.
                    if buf.len() + n > 64 << 10 {
                        return Poll::Ready(None);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(None),
            }
        }
    })
    .await
}

pub(super) async fn respond_get(
    engine: &EngineInner,
    stream: &TcpStream,
    session: &Arc<Session>,
    reply: GetReply,
    keep_alive: bool,
    cors: &[(&'static str, String)],
) -> io::Result<()> {
    let packets = match reply {
        GetReply::Packets(p) | GetReply::Final(p) => p,
    };
    let (body, binary) = packet::encode_payload(session.eio(), session.b64(), &packets);
    let ctype = if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=UTF-8"
    };
    let resp = with_cors(Response::new(200), cors)
        .header("Content-Type", ctype)
        .header("Cache-Control", "no-store")
        .body(&body, keep_alive);
    write(engine, stream, &resp).await
}

pub(super) async fn post(
    engine: &Arc<EngineInner>,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    endpoint: u8,
    cors: &[(&'static str, String)],
) -> io::Result<Next> {
    let ka = head.keep_alive;
    let Some(session) = lookup(engine, head, endpoint) else {
        eio_error(engine, stream, EioError::SessionIdUnknown, ka, cors).await?;
        return Ok(Next::Close);
    };
    if session.expire_if_due() || session.begin_post().is_err() {
        eio_error(engine, stream, EioError::BadRequest, ka, cors).await?;
        return Ok(Next::Close);
    }
    let body = read_body(engine, stream, head, buf, session.max_payload()).await;
    session.end_post();
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            session.close(CloseReason::TransportError);
            eio_error(engine, stream, EioError::PayloadTooLarge, false, cors).await?;
            return Ok(Next::Close);
        }
        Err(BodyError::Malformed) => {
            session.close(CloseReason::TransportError);
            eio_error(engine, stream, EioError::BadRequest, false, cors).await?;
            return Ok(Next::Close);
        }
        Err(BodyError::Gone) => {
            session.close(CloseReason::TransportError);
            return Ok(Next::Close);
        }
    };
    let decoded = match session.eio() {
        Eio::V4 => std::str::from_utf8(&body)
            .map_err(|_| packet::DecodeError::Utf8)
            .and_then(packet::decode_payload_v4),
        Eio::V3 => {
            if head.octet_stream || matches!(body.first(), Some(0 | 1)) {
                packet::decode_payload_v3_binary(&body)
            } else {
                std::str::from_utf8(&body)
                    .map_err(|_| packet::DecodeError::Utf8)
                    .and_then(packet::decode_payload_v3_text)
            }
        }
    };
    match decoded {
        Ok(packets) => {
            for (i, p) in packets.into_iter().enumerate() {
                if session.is_closed() {
                    break;
                }
                if i % PACKETS_PER_TURN == PACKETS_PER_TURN - 1 {
                    // A body of many small packets must not hold the worker from others.
                    tokio::task::yield_now().await;
                }
                session.receive(p);
            }
            let resp = with_cors(Response::new(200), cors)
                .header("Content-Type", "text/html")
                .body(b"ok", ka);
            write(engine, stream, &resp).await?;
            Ok(Next::KeepAlive)
        }
        Err(e) => {
            tracing::debug!(sid = %session.sid(), error = %e, "bad polling payload");
            engine.metrics.protocol_errors.inc();
            session.close(CloseReason::ParseError);
            eio_error(engine, stream, EioError::BadRequest, false, cors).await?;
            Ok(Next::Close)
        }
    }
}

/// Packets of one polling body handled before the task lets others run.
pub(super) const PACKETS_PER_TURN: usize = 256;

/// Writes Engine.IO's error answer.
async fn eio_error(
    engine: &EngineInner,
    stream: &TcpStream,
    error: EioError,
    keep_alive: bool,
    cors: &[(&'static str, String)],
) -> io::Result<()> {
    write(engine, stream, &error_response(error, keep_alive, cors)).await
}
