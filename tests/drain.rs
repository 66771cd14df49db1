//! SIGTERM drains the `herald` binary: `/readyz` answers 503 `draining` at once, the
//! node keeps accepting for `shutdown.grace_secs`, then closes its clients' transports
//! (never a Socket.IO DISCONNECT, which would stop them reconnecting) spread over
//! `shutdown.drain_secs`, and exits 0. A second signal exits at once.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, Frame, Spawned, Ws};

struct Herald {
    run: Spawned,
    addr: SocketAddr,
}

fn start(grace: &str, drain: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = common::herald_cmd();
    c.args([
        "serve",
        "--dev-auth",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .env("HERALD_LOG", "warn")
    .env("HERALD_SHUTDOWN_GRACE_SECS", grace)
    .env("HERALD_SHUTDOWN_DRAIN_SECS", drain)
    .stderr(Stdio::null());
    let mut run = Spawned::new(c);
    let addr = run.line_addr("listening on ");
    Herald { run, addr }
}

fn signal(child: &Child, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Waits for the child to exit, at most `within`.
fn exited(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn push(addr: SocketAddr, user: &str) -> u16 {
    let body = format!(r#"{{"to":{{"users":["{user}"]}},"event":"e","data":1}}"#);
    let req = format!(
        "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await.0
}

/// Reads a connection until it ends: when (since `t0`), and whether a Socket.IO
/// DISCONNECT came first.
async fn until_closed(mut ws: Ws, t0: Instant) -> (Duration, bool) {
    let mut disconnect = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.frame()).await {
            Ok(Some(Frame::Text(t))) if t == "41" => disconnect = true,
            Ok(Some(Frame::Close(_))) | Ok(None) => return (t0.elapsed(), disconnect),
            Ok(Some(_)) => {}
            Err(_) => panic!("not closed within 15 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gradually_and_exits_0() {
    let mut h = start("1", "2");
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(Ws::device(h.addr, &format!(r#"{{"userId":"u{i}"}}"#)).await);
    }
    let t0 = Instant::now();
    signal(&h.run.child, "TERM");
    // Not ready at once, so the load balancer stops sending new clients.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = http(h.addr, &common::get("/readyz")).await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(t0.elapsed() < Duration::from_millis(900));
    // During the grace period the node still serves: a push, a new client.
    assert_eq!(push(h.addr, "u0").await, 200);
    clients.push(Ws::device(h.addr, r#"{"userId":"late"}"#).await);
    let waits: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(until_closed(ws, t0)))
        .collect();
    let mut closed = Vec::new();
    for w in waits {
        let (at, disconnect) = w.await.unwrap();
        assert!(
            !disconnect,
            "a Socket.IO DISCONNECT would stop the client reconnecting"
        );
        closed.push(at);
    }
    closed.sort();
    let (first, last) = (closed[0], closed[closed.len() - 1]);
    assert!(
        first >= Duration::from_millis(900),
        "closed before the grace period ended: {first:?}"
    );
    assert!(
        last <= Duration::from_millis(4500),
        "the drain took {last:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes not spread over the drain: {first:?} to {last:?}"
    );
    let status = exited(&mut h.run.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(h.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut h = start("30", "30");
    let _client = Ws::device(h.addr, r#"{"userId":"u"}"#).await;
    signal(&h.run.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    while http(h.addr, &common::get("/readyz")).await.0 != 503 {
        assert!(Instant::now() < deadline, "not draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    signal(&h.run.child, "INT");
    let status = exited(&mut h.run.child, Duration::from_secs(3));
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}
