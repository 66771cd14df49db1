//! The listener and the HTTP side of each connection: Engine.IO handshakes, long-polling
//! requests, and WebSocket upgrades; other paths go to a fallback service.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http as http_types;

use tokio::net::{TcpListener, TcpStream};

use super::engine::{Engine, EngineInner, OpenRequest};
use super::frame;
use super::http::{self, Chunked, Head, HeadError, Method, Response};
use super::packet::{self, Eio, Outbound};
use super::session::{CloseReason, GetReply, Session};
use super::websocket;

/// Serves requests for paths the engine does not own (the HTTP API, pages). The
/// connection stays with the engine's HTTP loop, so one keep-alive connection may carry
/// API requests and long-polling requests alike.
pub trait Fallback: Send + Sync + 'static {
    /// Answers one request, whose body has been read in full.
    fn call(
        &self,
        request: http_types::Request<bytes::Bytes>,
    ) -> Pin<Box<dyn Future<Output = http_types::Response<bytes::Bytes>> + Send>>;
    /// Largest request body accepted, in bytes.
    fn max_body(&self) -> usize;
    /// The answer to a request whose body exceeds [`Fallback::max_body`].
    fn too_large(&self) -> http_types::Response<bytes::Bytes>;
}

struct Shared {
    engine: Arc<EngineInner>,
    fallback: Option<Arc<dyn Fallback>>,
    /// Open TCP connections, bounded by `max_connections`.
    connections: AtomicUsize,
}

/// Decrements the connection count when a connection's task ends.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then closes every
/// session (each client gets a clean close) and returns.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    fallback: Option<Arc<dyn Fallback>>,
    shutdown: impl Future<Output = ()>,
) {
    engine.spawn_heartbeat();
    engine.spawn_flushers();
    let shared = Arc::new(Shared {
        engine: engine.inner.clone(),
        fallback,
        connections: AtomicUsize::new(0),
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let n = shared.connections.fetch_add(1, Ordering::Relaxed);
                let slot = ConnectionSlot(shared.clone());
                if n >= shared.engine.config.max_connections {
                    shared.engine.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(slot, stream, remote));
            }
        }
    }
    engine.close_all();
}

/// What a connection does after a request.
enum Next {
    KeepAlive,
    Close,
}

async fn handle(slot: ConnectionSlot, stream: TcpStream, remote: SocketAddr) {
    let shared = slot.0.clone();
    let engine = &shared.engine;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head = match read_head(engine, &stream, &mut buf).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(status) => {
                engine.metrics.http_errors.inc();
                let _ = write(&stream, &Response::new(status).body(b"", false)).await;
                return;
            }
        };
        let endpoint = engine
            .endpoints
            .iter()
            .position(|e| path_matches(head.path(), &e.path));
        let Some(endpoint) = endpoint else {
            let keep_alive = match &shared.fallback {
                Some(f) => fallback(engine, f.as_ref(), &stream, &head, &mut buf, remote).await,
                None => {
                    buf.drain(..head.len);
                    let resp = Response::new(404).body(b"Not Found", head.keep_alive);
                    write(&stream, &resp).await.is_ok() && head.keep_alive
                }
            };
            if !keep_alive {
                return;
            }
            continue;
        };
        buf.drain(..head.len);
        let cors = cors_headers(engine, &head);
        if head.upgrade && is_websocket(&head) {
            let engine = engine.clone();
            return upgrade(
                &engine,
                slot,
                stream,
                head,
                buf,
                endpoint as u8,
                remote,
                &cors,
            )
            .await;
        }
        match polling(
            engine,
            &stream,
            &head,
            &mut buf,
            endpoint as u8,
            remote,
            &cors,
        )
        .await
        {
            Ok(Next::KeepAlive) if head.keep_alive => continue,
            _ => return,
        }
    }
}

fn path_matches(path: &str, endpoint: &str) -> bool {
    // `/socket.io/` also answers `/socket.io`.
    path == endpoint || endpoint.strip_suffix('/') == Some(path)
}

fn is_websocket(head: &Head) -> bool {
    http::query_param(head.query(), "transport").as_deref() == Some("websocket")
}

/// Reads until a full request head is buffered. `Ok(None)`: the client closed the
/// connection between requests. `Err(status)`: answer with that status and close.
async fn read_head(
    engine: &EngineInner,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Head>, u16> {
    let max = engine.config.max_header_bytes;
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, max) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(HeadError::TooLarge) => return Err(431),
                Err(HeadError::Malformed) => return Err(400),
            }
        }
        let n = match tokio::time::timeout(engine.config.request_timeout, read_some(stream, buf))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Ok(None),
            Err(_) if buf.is_empty() => return Ok(None),
            Err(_) => return Err(408),
        };
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Reads what is available (at least one byte, or 0 at end of stream) onto `buf`.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The CORS headers for a request, from the configured allow-list.
fn cors_headers(engine: &EngineInner, head: &Head) -> Vec<(&'static str, String)> {
    let cfg = &engine.config;
    let Some(origin) = &head.origin else {
        return Vec::new();
    };
    let listed = cfg.cors_origins.iter().any(|o| o == origin);
    let wildcard = cfg.cors_origins.iter().any(|o| o == "*");
    let mut out = Vec::new();
    if listed {
        out.push(("Access-Control-Allow-Origin", origin.clone()));
        out.push(("Vary", "Origin".to_owned()));
        if cfg.cors_credentials {
            out.push(("Access-Control-Allow-Credentials", "true".to_owned()));
        }
    } else if wildcard {
        // Any origin, but never with credentials.
        out.push(("Access-Control-Allow-Origin", "*".to_owned()));
    }
    out
}

fn with_cors(mut r: Response, cors: &[(&'static str, String)]) -> Response {
    for (k, v) in cors {
        r = r.header(k, v);
    }
    r
}

/// Engine.IO's error answer: HTTP 400 (or `status`) with `{"code","message"}`.
fn error_response(
    status: u16,
    code: u8,
    keep_alive: bool,
    cors: &[(&'static str, String)],
) -> Vec<u8> {
    let message = match code {
        0 => "Transport unknown",
        1 => "Session ID unknown",
        2 => "Bad handshake method",
        3 => "Bad request",
        4 => "Forbidden",
        5 => "Unsupported protocol version",
        _ => "Payload too large",
    };
    let body = format!("{{\"code\":{code},\"message\":\"{message}\"}}");
    with_cors(Response::new(status), cors)
        .header("Content-Type", "application/json")
        .body(body.as_bytes(), keep_alive)
}

/// The handshake query: protocol revision and transport, validated.
fn parse_query(head: &Head) -> Result<Eio, u8> {
    let q = head.query();
    match http::query_param(q, "transport").as_deref() {
        Some("polling") | Some("websocket") => {}
        _ => return Err(0),
    }
    match http::query_param(q, "EIO").as_deref() {
        Some("4") => Ok(Eio::V4),
        Some("3") => Ok(Eio::V3),
        _ => Err(5),
    }
}

fn open_packet(engine: &EngineInner, session: &Session, websocket: bool) -> Outbound {
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

/// Creates a session, queues its handshake, lets the layer above open, and registers it.
fn open_session(
    engine: &Arc<EngineInner>,
    eio: Eio,
    b64: bool,
    endpoint: u8,
    websocket: bool,
    query: &str,
    remote: SocketAddr,
) -> Arc<Session> {
    let session = Session::new(engine.clone(), eio, b64, endpoint, websocket);
    let _ = session.send(open_packet(engine, &session, websocket));
    let handler = engine.endpoints[endpoint as usize].handler.clone();
    let conn = handler.on_open(&session, &OpenRequest { query, remote });
    session.set_connection(conn);
    engine.insert(&session);
    session
}

fn lookup(engine: &EngineInner, head: &Head, endpoint: u8) -> Option<Arc<Session>> {
    let sid = http::query_param(head.query(), "sid")?;
    let sid = super::session::Sid::parse(&sid)?;
    let s = engine.get(&sid)?;
    (s.endpoint() == endpoint).then_some(s)
}

/// Hands a request to the fallback service and writes its answer. Returns whether the
/// connection may carry another request.
async fn fallback(
    engine: &EngineInner,
    f: &dyn Fallback,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    remote: SocketAddr,
) -> bool {
    let request = {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
            return false;
        }
        let mut builder = http_types::Request::builder()
            .method(req.method.unwrap_or("GET"))
            .uri(req.path.unwrap_or("/"));
        for h in req.headers.iter() {
            builder = builder.header(h.name, h.value);
        }
        builder.extension(remote)
    };
    buf.drain(..head.len);
    let response = match read_body(engine, stream, head, buf, f.max_body()).await {
        Ok(body) => match request.body(bytes::Bytes::from(body)) {
            Ok(req) => f.call(req).await,
            Err(_) => {
                let resp = Response::new(400).body(b"Bad Request", false);
                let _ = write(stream, &resp).await;
                return false;
            }
        },
        Err(BodyError::TooLarge) => {
            let r = f.too_large();
            let _ = write(stream, &encode_response(&r, false)).await;
            return false;
        }
        Err(BodyError::Malformed) => {
            let resp = Response::new(400).body(b"Bad Request", false);
            let _ = write(stream, &resp).await;
            return false;
        }
        Err(BodyError::Gone) => return false,
    };
    write(stream, &encode_response(&response, head.keep_alive))
        .await
        .is_ok()
        && head.keep_alive
}

/// Serializes a fallback response with a `Content-Length`.
fn encode_response(r: &http_types::Response<bytes::Bytes>, keep_alive: bool) -> Vec<u8> {
    let mut out = Response::new(r.status().as_u16());
    for (name, value) in r.headers() {
        if name == http_types::header::CONTENT_LENGTH || name == http_types::header::CONNECTION {
            continue;
        }
        if let Ok(v) = value.to_str() {
            out = out.header(name.as_str(), v);
        }
    }
    out.body(r.body(), keep_alive)
}

#[allow(clippy::too_many_arguments)]
async fn polling(
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
        write(stream, &r.body(b"", ka)).await?;
        return Ok(Next::KeepAlive);
    }
    let eio = match parse_query(head) {
        Ok(e) => e,
        Err(code) => {
            engine.metrics.http_errors.inc();
            write(stream, &error_response(400, code, ka, cors)).await?;
            return Ok(Next::KeepAlive);
        }
    };
    let has_sid = http::query_param(head.query(), "sid").is_some();
    match (head.method, has_sid) {
        (Method::Get, false) => {
            let b64 =
                http::query_param(head.query(), "b64").is_some_and(|v| v == "1" || v == "true");
            let session = open_session(engine, eio, b64, endpoint, false, head.query(), remote);
            let reply = poll_fn(|cx| session.poll_get(cx)).await;
            respond_get(stream, &session, reply, ka, cors).await?;
            Ok(Next::KeepAlive)
        }
        (Method::Get, true) => {
            let Some(session) = lookup(engine, head, endpoint) else {
                write(stream, &error_response(400, 1, ka, cors)).await?;
                return Ok(Next::KeepAlive);
            };
            if session.expire_if_due() || session.begin_get().is_err() {
                let code = if session.is_closed() { 1 } else { 3 };
                write(stream, &error_response(400, code, ka, cors)).await?;
                return Ok(Next::KeepAlive);
            }
            let reply = wait_get(&session, stream, buf).await;
            session.end_get();
            match reply {
                Some(reply) => {
                    respond_get(stream, &session, reply, ka, cors).await?;
                    Ok(Next::KeepAlive)
                }
                None => {
                    session.close(CloseReason::TransportError);
                    Ok(Next::Close)
                }
            }
        }
        (Method::Post, true) => post(engine, stream, head, buf, endpoint, cors).await,
        (_, false) => {
            write(stream, &error_response(400, 2, ka, cors)).await?;
            Ok(Next::KeepAlive)
        }
        (_, true) => {
            write(stream, &error_response(400, 3, ka, cors)).await?;
            Ok(Next::KeepAlive)
        }
    }
}

/// Waits for a polling `GET`'s answer, watching the connection: `None` if the client
/// went away first.
async fn wait_get(
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

async fn respond_get(
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
    write(stream, &resp).await
}

async fn post(
    engine: &Arc<EngineInner>,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    endpoint: u8,
    cors: &[(&'static str, String)],
) -> io::Result<Next> {
    let ka = head.keep_alive;
    let Some(session) = lookup(engine, head, endpoint) else {
        write(stream, &error_response(400, 1, ka, cors)).await?;
        return Ok(Next::Close);
    };
    if session.expire_if_due() || session.begin_post().is_err() {
        write(stream, &error_response(400, 3, ka, cors)).await?;
        return Ok(Next::Close);
    }
    let body = read_body(engine, stream, head, buf, engine.config.max_payload).await;
    session.end_post();
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            session.close(CloseReason::TransportError);
            write(stream, &error_response(413, 6, false, cors)).await?;
            return Ok(Next::Close);
        }
        Err(BodyError::Malformed) => {
            session.close(CloseReason::TransportError);
            write(stream, &error_response(400, 3, false, cors)).await?;
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
            for p in packets {
                session.receive(p);
            }
            let resp = with_cors(Response::new(200), cors)
                .header("Content-Type", "text/html")
                .body(b"ok", ka);
            write(stream, &resp).await?;
            Ok(Next::KeepAlive)
        }
        Err(e) => {
            tracing::debug!(sid = %session.sid(), error = %e, "bad polling payload");
            engine.metrics.protocol_errors.inc();
            session.close(CloseReason::ParseError);
            write(stream, &error_response(400, 3, false, cors)).await?;
            Ok(Next::Close)
        }
    }
}

enum BodyError {
    TooLarge,
    Malformed,
    Gone,
}

/// Reads a request body (fixed length or chunked), at most `max` bytes.
async fn read_body(
    engine: &EngineInner,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let timeout = engine.config.request_timeout;
    async fn read(
        stream: &TcpStream,
        buf: &mut Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<(), BodyError> {
        match tokio::time::timeout(timeout, read_some(stream, buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            _ => Err(BodyError::Gone),
        }
    }
    if head.chunked {
        loop {
            match http::decode_chunked(buf, max) {
                Chunked::Done(body, used) => {
                    buf.drain(..used);
                    return Ok(body);
                }
                Chunked::TooLarge => return Err(BodyError::TooLarge),
                Chunked::Malformed => return Err(BodyError::Malformed),
                Chunked::Incomplete => read(stream, buf, timeout).await?,
            }
        }
    }
    let len = head.content_length.unwrap_or(0);
    if len > max {
        return Err(BodyError::TooLarge);
    }
    while buf.len() < len {
        read(stream, buf, timeout).await?;
    }
    let rest = buf.split_off(len);
    Ok(std::mem::replace(buf, rest))
}

/// Answers a WebSocket upgrade and hands the connection to its own small task.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    engine: &Arc<EngineInner>,
    slot: ConnectionSlot,
    stream: TcpStream,
    head: Head,
    leftover: Vec<u8>,
    endpoint: u8,
    remote: SocketAddr,
    cors: &[(&'static str, String)],
) {
    let reject = |code: u8| error_response(400, code, false, cors);
    let eio = match parse_query(&head) {
        Ok(e) => e,
        Err(code) => {
            let _ = write(&stream, &reject(code)).await;
            return;
        }
    };
    let (Method::Get, Some(key), Some("13")) = (
        head.method,
        head.ws_key.as_deref(),
        head.ws_version.as_deref(),
    ) else {
        let _ = write(&stream, &reject(3)).await;
        return;
    };
    let accept = frame::accept_key(key.as_bytes());
    let resp = Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", &accept)
        .finish();
    let existing = if http::query_param(head.query(), "sid").is_some() {
        match lookup(engine, &head, endpoint) {
            Some(s) if !s.expire_if_due() && s.begin_upgrade().is_ok() => Some(s),
            _ => {
                // As the reference server does: accept the WebSocket, then close it, so
                // the client sees a close rather than a failed handshake.
                let mut bytes = resp;
                bytes.extend_from_slice(&frame::close_frame(frame::CLOSE_POLICY));
                let _ = write(&stream, &bytes).await;
                return;
            }
        }
    } else {
        None
    };
    if write(&stream, &resp).await.is_err() {
        if let Some(s) = existing {
            s.abort_upgrade();
        }
        return;
    }
    let upgrading = existing.is_some();
    let session = match existing {
        Some(s) => {
            engine.metrics.upgrades.inc();
            s
        }
        None => open_session(engine, eio, false, endpoint, true, head.query(), remote),
    };
    drop(head);
    let max = engine.config.max_payload;
    let linger = engine.config.ping_timeout;
    tokio::spawn(async move {
        websocket::run(stream, session, upgrading, leftover, max, linger).await;
        drop(slot);
    });
}
