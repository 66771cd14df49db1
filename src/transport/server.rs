//! The listener and the HTTP side of each connection: Engine.IO handshakes, long-polling
//! requests, and WebSocket upgrades; other paths go to a fallback service.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ::http as http_types;

use tokio::net::{TcpListener, TcpStream};

use super::cors::cors_headers;
use super::engine::{Engine, EngineInner};
use super::http::{self, Head, Response};
use super::polling::polling;
use super::request::{read_body, read_head, write, BodyError};
use super::upgrade::upgrade;

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
pub(super) struct ConnectionSlot {
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
    serve_until(listener, engine.clone(), fallback, shutdown).await;
    engine.close_all();
}

/// Accepts connections on `listener` until `shutdown` completes, and returns: the
/// connections accepted go on being served (a drain closes their sessions, see
/// [`Engine::close_gradually`]).
pub async fn serve_until(
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
    // Failed accepts are logged at most once a second, with how many there were.
    let mut failed_accepts = (None::<std::time::Instant>, 0u64);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        failed_accepts.1 += 1;
                        if failed_accepts.0.is_none_or(|t| t.elapsed().as_secs() >= 1) {
                            tracing::warn!(error = %e, failures = failed_accepts.1, "accept failed (out of file descriptors? see transport.max_connections)");
                            failed_accepts = (Some(std::time::Instant::now()), 0);
                        }
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
}

/// What a connection does after a request.
pub(super) enum Next {
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
    // Counted while its body is read and it is answered: a drain waits for these.
    engine.requests.fetch_add(1, Ordering::Relaxed);
    let _answered = InFlight(&engine.requests);
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

/// Gives back a place in the count of requests in flight.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
