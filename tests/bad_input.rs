//! Bad input over real sockets: each case ends or rejects only the offending connection,
//! with the protocol's error, while a healthy client on the same server keeps working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::protocol::{Args, Event, Handler, Socket, SocketIo, SocketIoConfig};
use herald::transport::{self, Engine, EngineConfig, EngineHandler, OverflowPolicy};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

mod common;
use common::{get, http, masked, Frame, Ws, WAIT};

/// Echoes `echo` events and remembers connected sockets so tests can push to them.
#[derive(Default)]
struct Echo {
    sockets: Mutex<Vec<Socket>>,
}

impl Handler for Echo {
    fn on_connect(&self, socket: &Socket, _: &herald::protocol::Handshake<'_>) {
        self.sockets.lock().push(socket.clone());
    }
    fn on_event(&self, socket: &Socket, event: Event) {
        if event.name == "echo" {
            let _ = socket.emit("echo", &event.args);
        }
    }
    fn on_disconnect(&self, socket: &Socket, _: herald::protocol::DisconnectReason) {
        self.sockets.lock().retain(|s| s != socket);
    }
}

struct Server {
    addr: SocketAddr,
    engine: Engine,
    echo: Arc<Echo>,
    _stop: oneshot::Sender<()>,
}

async fn start(config: EngineConfig) -> Server {
    let echo = Arc::new(Echo::default());
    let sio = SocketIo::new(SocketIoConfig {
        max_attachments: 2,
        ..SocketIoConfig::default()
    })
    .namespace("/", echo.clone());
    let engine = Engine::new(
        config,
        vec![(
            "/socket.io/".into(),
            Arc::new(sio) as Arc<dyn EngineHandler>,
        )],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(transport::serve(listener, engine.clone(), None, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        engine,
        echo,
        _stop: stop,
    }
}

async fn default_server() -> Server {
    start(EngineConfig {
        max_payload: 10_000,
        ..EngineConfig::default()
    })
    .await
}

/// Opens a v4 polling session; returns its sid.
async fn polling_sid(addr: SocketAddr) -> String {
    let (status, body) = http(addr, &get("/socket.io/?EIO=4&transport=polling")).await;
    assert_eq!(status, 200);
    let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn malformed_engine_packet_closes_only_that_connection() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_text("abc").await;
    assert_eq!(bad.close_code().await, 1002);
    healthy.assert_alive().await;
    assert!(srv.engine.metrics().protocol_errors.get() >= 1);
}

#[tokio::test]
async fn malformed_socketio_packets_close_the_connection() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    for packet in [
        "4abc",
        "42{}",
        "42abc[\"echo\"]",
        "42[\"echo\"",
        "49",
        "44{\"message\":\"x\"}",
    ] {
        let mut bad = Ws::socketio(srv.addr).await;
        bad.send_text(packet).await;
        assert_eq!(bad.close_code().await, 1002, "{packet}");
    }
    healthy.assert_alive().await;
}

#[tokio::test]
async fn truncated_utf8_closes_with_1007() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let mut bad = Ws::socketio(srv.addr).await;
    // "42[\"é" cut inside the two-byte é.
    bad.send_frame(1, b"42[\"\xC3").await;
    assert_eq!(bad.close_code().await, 1007);
    healthy.assert_alive().await;
}

#[tokio::test]
async fn oversized_frame_and_message_close_with_1009() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let mut bad = Ws::socketio(srv.addr).await;
    let big = format!("42[\"echo\",\"{}\"]", "x".repeat(20_000));
    bad.send_text(&big).await;
    assert_eq!(bad.close_code().await, 1009);
    // The same size in fragments that are each small enough.
    let mut frag = Ws::socketio(srv.addr).await;
    let bytes = big.as_bytes();
    frag.send_raw(&masked(1, false, &bytes[..6000])).await;
    frag.send_raw(&masked(0, false, &bytes[6000..12000])).await;
    frag.send_raw(&masked(0, true, &bytes[12000..])).await;
    assert_eq!(frag.close_code().await, 1009);
    healthy.assert_alive().await;
}

#[tokio::test]
async fn fragmented_message_within_limits_is_reassembled() {
    let srv = default_server().await;
    let mut ws = Ws::socketio(srv.addr).await;
    let msg = b"42[\"echo\",\"in three parts\"]";
    ws.send_raw(&masked(1, false, &msg[..5])).await;
    // A ping may arrive between fragments.
    ws.send_raw(&masked(9, true, b"hi")).await;
    ws.send_raw(&masked(0, false, &msg[5..12])).await;
    ws.send_raw(&masked(0, true, &msg[12..])).await;
    // The pong comes first, then the echo.
    assert!(matches!(ws.frame().await, Some(Frame::Pong(p)) if p == b"hi"));
    assert_eq!(ws.text().await, "42[\"echo\",\"in three parts\"]");
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let cases: Vec<Vec<u8>> = vec![
        // Unmasked client frame.
        vec![0x81, 0x02, b'4', b'2'],
        // Reserved bit set.
        {
            let mut f = masked(1, true, b"42");
            f[0] |= 0x40;
            f
        },
        // Unknown opcode.
        masked(3, true, b"x"),
        // Continuation with nothing to continue.
        masked(0, true, b"x"),
        // Fragmented ping.
        masked(9, false, b"x"),
        // Invalid close code.
        masked(8, true, &[0x03, 0xED]),
    ];
    for frame in cases {
        let mut bad = Ws::socketio(srv.addr).await;
        bad.send_raw(&frame).await;
        assert_eq!(bad.close_code().await, 1002, "{frame:?}");
    }
    healthy.assert_alive().await;
}

#[tokio::test]
async fn too_many_attachments_close_the_connection() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_text("453-[\"echo\",{\"_placeholder\":true,\"num\":0}]")
        .await;
    assert_eq!(bad.close_code().await, 1002);
    // A placeholder that points past the attachments.
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_text("451-[\"echo\",{\"_placeholder\":true,\"num\":5}]")
        .await;
    assert_eq!(bad.close_code().await, 1002);
    // Binary data with no binary packet announced.
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_frame(2, &[1, 2, 3]).await;
    assert_eq!(bad.close_code().await, 1002);
    // Text while attachments are awaited.
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_text("451-[\"echo\",{\"_placeholder\":true,\"num\":0}]")
        .await;
    bad.send_text("42[\"echo\"]").await;
    assert_eq!(bad.close_code().await, 1002);
    healthy.assert_alive().await;
}

#[tokio::test]
async fn binary_attachments_round_trip() {
    let srv = default_server().await;
    let mut ws = Ws::socketio(srv.addr).await;
    ws.send_text("452-[\"echo\",{\"_placeholder\":true,\"num\":0},{\"a\":{\"_placeholder\":true,\"num\":1}}]")
        .await;
    ws.send_frame(2, &[1, 2, 3]).await;
    ws.send_frame(2, &[4, 5]).await;
    assert_eq!(
        ws.text().await,
        "452-[\"echo\",{\"_placeholder\":true,\"num\":0},{\"a\":{\"_placeholder\":true,\"num\":1}}]"
    );
    assert!(matches!(ws.frame().await, Some(Frame::Binary(b)) if b == [1, 2, 3]));
    assert!(matches!(ws.frame().await, Some(Frame::Binary(b)) if b == [4, 5]));
}

#[tokio::test]
async fn duplicate_connect_closes_the_connection() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let mut bad = Ws::socketio(srv.addr).await;
    bad.send_text("40").await;
    assert_eq!(bad.close_code().await, 1002);
    healthy.assert_alive().await;
}

#[tokio::test]
async fn unknown_namespace_gets_connect_error_and_stays_open() {
    let srv = default_server().await;
    let mut ws = Ws::socketio(srv.addr).await;
    ws.send_text("40/nope,").await;
    assert_eq!(
        ws.text().await,
        "44/nope,{\"message\":\"Invalid namespace\"}"
    );
    ws.assert_alive().await;
}

#[tokio::test]
async fn engineio_v3_client_is_connected_to_root_at_once() {
    let srv = default_server().await;
    let mut ws = Ws::connect(srv.addr, "EIO=3&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    assert_eq!(ws.text().await, "40");
    ws.send_text("40/nope?token=a,").await;
    assert_eq!(ws.text().await, "44/nope,\"Invalid namespace\"");
    ws.send_text("2").await;
    assert_eq!(ws.text().await, "3");
    ws.assert_alive().await;
}

#[tokio::test]
async fn http_errors_use_the_protocol_codes() {
    let srv = default_server().await;
    let cases: [(&str, u16, &str); 5] = [
        (
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
            400,
            "\"code\":1",
        ),
        (
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            400,
            "\"code\":0",
        ),
        ("/socket.io/?EIO=5&transport=polling", 400, "\"code\":5"),
        (
            "/socket.io/?EIO=4&transport=polling&sid=../../etc",
            400,
            "\"code\":1",
        ),
        ("/elsewhere", 404, ""),
    ];
    for (path, status, body) in cases {
        let (s, b) = http(srv.addr, &get(path)).await;
        assert_eq!(s, status, "{path}");
        assert!(b.contains(body), "{path}: {b}");
    }
    let put =
        b"PUT /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let (s, b) = http(srv.addr, put).await;
    assert_eq!(s, 400);
    assert!(b.contains("\"code\":2"), "{b}");
}

#[tokio::test]
async fn garbage_and_oversized_heads_get_an_http_error() {
    let srv = default_server().await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let (s, _) = http(
        srv.addr,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    )
    .await;
    assert_eq!(s, 400);
    let huge = format!(
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (s, _) = http(srv.addr, huge.as_bytes()).await;
    assert_eq!(s, 431);
    healthy.assert_alive().await;
}

#[tokio::test]
async fn polling_payload_errors() {
    let srv = default_server().await;
    // Oversized body: 413, and the session is gone.
    let sid = polling_sid(srv.addr).await;
    let body = "4".repeat(20_000);
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (s, _) = http(srv.addr, req.as_bytes()).await;
    assert_eq!(s, 413);
    let (s, _) = http(
        srv.addr,
        &get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")),
    )
    .await;
    assert_eq!(s, 400);
    // Undecodable payload: 400, and the session is gone.
    let sid = polling_sid(srv.addr).await;
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    );
    let (s, _) = http(srv.addr, req.as_bytes()).await;
    assert_eq!(s, 400);
    // A chunked body is accepted.
    let sid = polling_sid(srv.addr).await;
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n40\r\n0\r\n\r\n"
    );
    let (s, b) = http(srv.addr, req.as_bytes()).await;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let (s, b) = http(
        srv.addr,
        &get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b.starts_with("40{\"sid\""), "{b}");
}

#[tokio::test]
async fn cors_follows_the_allow_list() {
    let srv = start(EngineConfig {
        cors_origins: vec!["http://app.example".into()],
        cors_credentials: true,
        ..EngineConfig::default()
    })
    .await;
    let req = |origin: &str| {
        format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n")
    };
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(req("http://app.example").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.contains("Access-Control-Allow-Origin: http://app.example"),
        "{out}"
    );
    assert!(
        out.contains("Access-Control-Allow-Credentials: true"),
        "{out}"
    );
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(req("http://evil.example").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(!out.contains("Access-Control-Allow"), "{out}");
}

#[tokio::test]
async fn default_cors_never_echoes_an_origin() {
    let srv = default_server().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
    assert!(!out.contains("Access-Control-Allow"), "{out}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_at_the_queue_limit() {
    let srv = start(EngineConfig {
        max_queue_bytes: 256 << 10,
        overflow: OverflowPolicy::Disconnect,
        ..EngineConfig::default()
    })
    .await;
    let mut healthy = Ws::socketio(srv.addr).await;
    let _stalled = Ws::socketio(srv.addr).await;
    let big = Args::one(&"x".repeat(64 << 10));
    // Push until the stalled client's socket buffers and queue fill up.
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.engine.metrics().queue_overflow_disconnects.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no overflow");
        let stalled = srv.echo.sockets.lock().get(1).cloned();
        if let Some(s) = stalled {
            let _ = s.emit("flood", &big);
        }
        tokio::task::yield_now().await;
    }
    // Only the stalled socket left.
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.echo.sockets.lock().len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled socket not removed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    healthy.assert_alive().await;
}

#[tokio::test]
async fn drop_policy_keeps_the_slow_client_and_counts() {
    let srv = start(EngineConfig {
        max_queue_packets: 4,
        overflow: OverflowPolicy::Drop,
        ..EngineConfig::default()
    })
    .await;
    let mut ws = Ws::socketio(srv.addr).await;
    let socket = srv.echo.sockets.lock()[0].clone();
    // Queued faster than the task can drain: some are dropped, the socket stays.
    let mut dropped = 0;
    for i in 0..100 {
        if socket.emit("n", &Args::one(&i)).is_err() {
            dropped += 1;
        }
    }
    assert!(dropped > 0);
    assert_eq!(srv.engine.metrics().queue_overflow_drops.get(), dropped);
    // Every message that was not dropped arrives, then the echo.
    ws.send_text("42[\"echo\",\"still here\"]").await;
    let mut received = 0;
    loop {
        let t = ws.text().await;
        if t.starts_with("42[\"n\"") {
            received += 1;
        } else {
            assert_eq!(t, "42[\"echo\",\"still here\"]");
            break;
        }
    }
    assert_eq!(received, 100 - dropped);
}

#[tokio::test]
async fn heartbeat_timeout_ends_a_silent_client() {
    let srv = start(EngineConfig {
        ping_interval: Duration::from_millis(50),
        ping_timeout: Duration::from_millis(50),
        ..EngineConfig::default()
    })
    .await;
    let mut ws = Ws::socketio(srv.addr).await;
    // Never answer the ping.
    assert_eq!(ws.text().await, "2");
    let code = ws.close_code().await;
    assert_eq!(code, 1000);
    assert_eq!(srv.engine.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_everything_once_it_reads_again() {
    const N: usize = 20_000;
    let srv = start(EngineConfig {
        max_queue_packets: N + 10,
        max_queue_bytes: 64 << 20,
        ..EngineConfig::default()
    })
    .await;
    let mut ws = Ws::socketio(srv.addr).await;
    let socket = srv.echo.sockets.lock()[0].clone();
    // 20 MB while the client reads nothing: more than both ends' socket buffers hold
    // (a few MB on loopback), so writes are refused and the rest waits in the queue.
    let pad = "x".repeat(1000);
    for i in 0..N {
        socket.emit("n", &Args::one(&(i, &pad))).unwrap();
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 0..N {
        let expected = format!("42[\"n\",[{i},\"{pad}\"]]");
        assert_eq!(ws.text().await, expected);
    }
    // Writable again: what is pushed now goes out at once.
    socket.emit("n", &Args::one(&"after")).unwrap();
    assert_eq!(ws.text().await, "42[\"n\",\"after\"]");
    assert_eq!(srv.engine.metrics().queue_overflow_drops.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_cannot_hold_its_connection() {
    // One connection at most: the stalled one must give its slot back.
    let srv = start(EngineConfig {
        max_connections: 1,
        max_queue_bytes: 64 << 20,
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    })
    .await;
    let _stalled = Ws::socketio(srv.addr).await;
    let socket = srv.echo.sockets.lock()[0].clone();
    // 12 MB it never reads: both ends' socket buffers fill up and the rest waits.
    let big = Args::one(&"x".repeat(64 << 10));
    for i in 0..200 {
        let _ = socket.emit("flood", &big);
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // It does not answer pings either, so its session ends; what is left to write (the
    // rest of a frame, the close frame) cannot be. One ping timeout later the server
    // lets go of the connection, and a new one fits.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if accepts_a_connection(srv.addr).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled connection still holds its slot"
        );
    }
}

/// Whether the server answers a WebSocket handshake now (a refused connection is closed
/// without an answer).
async fn accepts_a_connection(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf.starts_with(b"HTTP/1.1 101")
    )
}
