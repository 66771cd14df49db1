//! The listener and the HTTP side of each connection: Engine.IO handshakes, long-polling
//! requests, and WebSocket upgrades; other paths go to a fallback service.

use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http as http_types;

use tokio::net::{TcpListener, TcpStream};

use super::engine::{Engine, EngineInner, OpenRequest};
use super::frame;
use super::http::{self, BodyReader, BodyStep, Head, HeadError, Method, Response};
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
    /// Looks at a request before its body is read: an answer here (say, 401 for a
    /// missing API key) is sent at once, the body is never read, and the connection
    /// closes. Default: none.
    fn precheck(
        &self,
        _request: &http_types::request::Parts,
    ) -> Option<http_types::Response<bytes::Bytes>> {
        None
    }
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

/// Gives back a connection's place in the counts (total, and its address's) when the
/// connection's task ends.
struct ConnectionSlot {
    shared: Arc<Shared>,
    /// The client's address, when the per-address limits count it.
    counted: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.counted {
            let engine = &self.shared.engine;
            engine.per_ip.close(ip, engine.now_ms());
        }
    }
}

/// The answer to a connection or handshake over its address's limit.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: 75\r\nConnection: close\r\n\r\n{\"code\":3,\"message\":\"Too many connections or handshakes from this address\"}";

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
                let mut slot = ConnectionSlot { shared: shared.clone(), counted: None };
                let engine = &shared.engine;
                if n >= engine.config.max_connections {
                    engine.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                }
                let ip = remote.ip();
                if engine.per_ip.limited(ip) {
                    if engine.per_ip.open(ip, engine.now_ms()).is_err() {
                        engine.metrics.connections_refused_per_ip.inc();
                        // One attempt, never waiting: the answer fits any socket buffer.
                        let _ = stream.try_write(TOO_MANY);
                        drop(stream);
                        continue;
                    }
                    slot.counted = Some(ip);
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
    let shared = slot.shared.clone();
    let engine = &shared.engine;
    let mut buf: Vec<u8> = Vec::new();
    // A new connection has one request timeout to send its first request; later ones
    // may idle for the keep-alive time first.
    let mut idle = engine.config.request_timeout;
    loop {
        let head = match read_head(engine, &stream, &mut buf, idle).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(status) => {
                engine.metrics.http_errors.inc();
                let _ = write(engine, &stream, &Response::new(status).body(b"", false)).await;
                return;
            }
        };
        idle = engine.config.keepalive_timeout;
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
                    write(engine, &stream, &resp).await.is_ok() && head.keep_alive
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

/// Reads until a full request head is buffered: the first byte within `idle`, the whole
/// head within the request timeout from then (however the bytes trickle in).
/// `Ok(None)`: the client closed the connection, or sent nothing in time.
/// `Err(status)`: answer with that status and close.
async fn read_head(
    engine: &EngineInner,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
) -> Result<Option<Head>, u16> {
    let max = engine.config.max_header_bytes;
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, max) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(HeadError::TooLarge) => return Err(431),
                Err(HeadError::Malformed) => return Err(400),
            }
        }
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, read_some(stream, buf)).await,
            None => tokio::time::timeout(idle, read_some(stream, buf)).await,
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Ok(None),
            Err(_) if buf.is_empty() => return Ok(None),
            Err(_) => {
                engine.metrics.request_timeouts.inc();
                return Err(408);
            }
        };
        if n == 0 {
            return Ok(None);
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + engine.config.request_timeout);
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

/// Writes all of `bytes`, within the request timeout plus what the slowest tolerated
/// rate needs for them: a client that does not read its answer cannot hold the
/// connection.
async fn write(engine: &EngineInner, stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    // Most answers fit the socket's buffer: written at once, with no timer to set up.
    match stream.try_write(bytes) {
        Ok(n) => bytes = &bytes[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    if bytes.is_empty() {
        return Ok(());
    }
    let cfg = &engine.config;
    let allowed = cfg.request_timeout
        + std::time::Duration::from_secs_f64(bytes.len() as f64 / cfg.min_body_rate.max(1) as f64);
    let all = async {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(allowed, all).await {
        Ok(r) => r,
        Err(_) => {
            engine.metrics.request_timeouts.inc();
            Err(io::ErrorKind::TimedOut.into())
        }
    }
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

/// Whether `remote` may open another session now (its address's handshake rate).
fn handshake_allowed(engine: &EngineInner, remote: SocketAddr) -> bool {
    let ip = remote.ip();
    if !engine.per_ip.limited(ip) || engine.per_ip.handshake(ip, engine.now_ms()).is_ok() {
        return true;
    }
    engine.metrics.handshakes_refused.inc();
    false
}

/// Whether a browser page from `head.origin` may open a WebSocket: always when no
/// allow-list is configured (as before), else when the origin is listed, `*` is, or the
/// page is this server's own (its origin names the `Host` it connects to).
fn origin_allowed(engine: &EngineInner, head: &Head) -> bool {
    let list = &engine.config.cors_origins;
    let Some(origin) = &head.origin else {
        // Not a browser: origins are a browser's notion.
        return true;
    };
    if list.is_empty() || list.iter().any(|o| o == origin || o == "*") {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map_or(origin.as_str(), |(_, rest)| rest);
    head.host
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(authority))
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
        builder.extension(remote).body(())
    };
    buf.drain(..head.len);
    let Ok(request) = request else {
        let resp = Response::new(400).body(b"Bad Request", false);
        let _ = write(engine, stream, &resp).await;
        return false;
    };
    let (parts, ()) = request.into_parts();
    if let Some(early) = f.precheck(&parts) {
        // The body is left unread, so the connection cannot carry another request.
        let _ = write(engine, stream, &encode_response(&early, false)).await;
        return false;
    }
    let response = match read_body(engine, stream, head, buf, f.max_body()).await {
        Ok(body) => {
            f.call(http_types::Request::from_parts(
                parts,
                bytes::Bytes::from(body),
            ))
            .await
        }
        Err(BodyError::TooLarge) => {
            let r = f.too_large();
            let _ = write(engine, stream, &encode_response(&r, false)).await;
            return false;
        }
        Err(BodyError::Malformed) => {
            let resp = Response::new(400).body(b"Bad Request", false);
            let _ = write(engine, stream, &resp).await;
            return false;
        }
        Err(BodyError::Gone) => return false,
    };
    write(engine, stream, &encode_response(&response, head.keep_alive))
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
        write(engine, stream, &r.body(b"", ka)).await?;
        return Ok(Next::KeepAlive);
    }
    let eio = match parse_query(head) {
        Ok(e) => e,
        Err(code) => {
            engine.metrics.http_errors.inc();
            write(engine, stream, &error_response(400, code, ka, cors)).await?;
            return Ok(Next::KeepAlive);
        }
    };
    let has_sid = http::query_param(head.query(), "sid").is_some();
    match (head.method, has_sid) {
        (Method::Get, false) => {
            if !handshake_allowed(engine, remote) {
                write(engine, stream, TOO_MANY).await?;
                return Ok(Next::Close);
            }
            let b64 =
                http::query_param(head.query(), "b64").is_some_and(|v| v == "1" || v == "true");
            let session = open_session(engine, eio, b64, endpoint, false, head.query(), remote);
            let reply = poll_fn(|cx| session.poll_get(cx)).await;
            respond_get(engine, stream, &session, reply, ka, cors).await?;
            Ok(Next::KeepAlive)
        }
        (Method::Get, true) => {
            let Some(session) = lookup(engine, head, endpoint) else {
                write(engine, stream, &error_response(400, 1, ka, cors)).await?;
                return Ok(Next::KeepAlive);
            };
            if session.expire_if_due() || session.begin_get().is_err() {
                let code = if session.is_closed() { 1 } else { 3 };
                write(engine, stream, &error_response(400, code, ka, cors)).await?;
                return Ok(Next::KeepAlive);
            }
            let reply = wait_get(&session, stream, buf).await;
            session.end_get();
            match reply {
                Some(reply) => {
                    respond_get(engine, stream, &session, reply, ka, cors).await?;
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
            write(engine, stream, &error_response(400, 2, ka, cors)).await?;
            Ok(Next::KeepAlive)
        }
        (_, true) => {
            write(engine, stream, &error_response(400, 3, ka, cors)).await?;
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
        write(engine, stream, &error_response(400, 1, ka, cors)).await?;
        return Ok(Next::Close);
    };
    if session.expire_if_due() || session.begin_post().is_err() {
        write(engine, stream, &error_response(400, 3, ka, cors)).await?;
        return Ok(Next::Close);
    }
    let body = read_body(engine, stream, head, buf, engine.config.max_payload).await;
    session.end_post();
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            session.close(CloseReason::TransportError);
            write(engine, stream, &error_response(413, 6, false, cors)).await?;
            return Ok(Next::Close);
        }
        Err(BodyError::Malformed) => {
            session.close(CloseReason::TransportError);
            write(engine, stream, &error_response(400, 3, false, cors)).await?;
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
            write(engine, stream, &error_response(400, 3, false, cors)).await?;
            Ok(Next::Close)
        }
    }
}

/// Packets of one polling body handled before the task lets others run.
const PACKETS_PER_TURN: usize = 256;

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
    let cfg = &engine.config;
    let start = tokio::time::Instant::now();
    // The whole body within the request timeout, plus time for a large body at the
    // slowest rate tolerated: a trickle cannot hold the connection.
    let deadline = |size: usize| {
        let rate = cfg.min_body_rate.max(1) as f64;
        start + cfg.request_timeout + std::time::Duration::from_secs_f64(size as f64 / rate)
    };
    async fn read(
        engine: &EngineInner,
        stream: &TcpStream,
        buf: &mut Vec<u8>,
        at: tokio::time::Instant,
    ) -> Result<(), BodyError> {
        match tokio::time::timeout_at(at, read_some(stream, buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) => Err(BodyError::Gone),
            Err(_) => {
                engine.metrics.request_timeouts.inc();
                Err(BodyError::Gone)
            }
        }
    }
    let mut body = BodyReader::new(head);
    loop {
        match body.step(buf, max) {
            BodyStep::Done(b) => return Ok(b),
            BodyStep::TooLarge => return Err(BodyError::TooLarge),
            BodyStep::Malformed => return Err(BodyError::Malformed),
            BodyStep::Incomplete => {
                let at = deadline(body.size(buf));
                read(engine, stream, buf, at).await?
            }
        }
    }
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
            let _ = write(engine, &stream, &reject(code)).await;
            return;
        }
    };
    if !origin_allowed(engine, &head) {
        tracing::debug!(origin = ?head.origin, "websocket from an origin not in cors_origins refused");
        let body = error_response(403, 4, false, cors);
        let _ = write(engine, &stream, &body).await;
        return;
    }
    let (Method::Get, Some(key), Some("13")) = (
        head.method,
        head.ws_key.as_deref(),
        head.ws_version.as_deref(),
    ) else {
        let _ = write(engine, &stream, &reject(3)).await;
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
                let _ = write(engine, &stream, &bytes).await;
                return;
            }
        }
    } else {
        if !handshake_allowed(engine, remote) {
            let _ = write(engine, &stream, TOO_MANY).await;
            return;
        }
        None
    };
    if write(engine, &stream, &resp).await.is_err() {
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
