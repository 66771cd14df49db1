//! Hostile clients against the real `herald` binary, over real sockets: floods of control
//! packets, slow requests, data a path cannot carry, acks for what was never sent, a store
//! that disappears, requests without a key, origins and tokens that are not allowed.
//!
//! Each case checks what the attacker gets, that a healthy client on the same server is
//! still served meanwhile, and that the server's memory and open files come back near
//! where they started once the attacker is gone.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;
use common::{http, masked, Frame, Ws, WAIT};

/// A running herald binary.
struct Herald {
    child: Child,
    addr: SocketAddr,
    /// What it logged (warnings and errors).
    log: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    /// The API key, when one is configured.
    key: Option<String>,
}

impl Herald {
    /// Starts herald with `--dev-auth` (unless `jwt` is set) and `env` on a free port.
    fn start(env: &[(&str, &str)]) -> Herald {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().join("data");
        let mut cmd = common::herald_cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("HERALD_LOG", "warn")
            // Freed memory goes back to the system at once, so RSS shows what is held.
            .env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "HERALD_AUTH_JWT_SECRET") {
            cmd.arg("--dev-auth");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("herald binary");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = common::listening_addr(&mut child);
        let key = env
            .iter()
            .find(|(k, _)| *k == "HERALD_API_KEYS")
            .map(|(_, v)| v.to_string());
        Herald {
            child,
            addr,
            log,
            _data: data,
            data_dir,
            key,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Open file descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Memory and open files now, once a healthy client has been served.
    async fn baseline(&self) -> (u64, usize) {
        self.healthy("baseline").await;
        (self.rss_kib(), self.fds())
    }

    /// A well-behaved device connects and gets a push.
    async fn healthy(&self, user: &str) {
        let mut ws = Ws::device(self.addr, &format!(r#"{{"userId":"{user}"}}"#)).await;
        let (status, body) = self.push(user, "hi", r#"{"ok":true}"#).await;
        assert_eq!(status, 200, "{body}");
        let frame = ws.text().await;
        assert!(frame.contains(r#""hi",{"ok":true}"#), "{frame}");
    }

    async fn push(&self, user: &str, event: &str, data: &str) -> (u16, String) {
        let body = format!(r#"{{"to":{{"users":["{user}"]}},"event":"{event}","data":{data}}}"#);
        let auth = self
            .key
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        http(self.addr, &post("/api/v1/push", &body, &auth)).await
    }

    /// Waits until open files are back to `base` and memory within `slack_kib` of it.
    async fn settles(&self, base: (u64, usize), slack_kib: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (rss, fds) = (self.rss_kib(), self.fds());
            if fds <= base.1 + 2 && rss <= base.0 + slack_kib {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "did not settle: rss {rss} KiB (was {}), fds {fds} (was {})",
                base.0,
                base.1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS until dropped; `peak()` is the highest seen.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PeakRss { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn post(path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    common::get(path)
}

/// Writes `bytes` unless the peer stops taking them for `patience`; returns whether all
/// of it went out.
async fn write_patiently(s: &mut TcpStream, bytes: &[u8], patience: Duration) -> bool {
    matches!(
        tokio::time::timeout(patience, s.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Opens a polling session; returns its sid.
async fn polling_sid(addr: SocketAddr) -> String {
    let (status, body) = http(addr, &get("/socket.io/?EIO=4&transport=polling")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim_start_matches('0')).unwrap();
    v["sid"].as_str().unwrap().to_owned()
}

const MIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_packet_floods_cannot_exhaust_memory() {
    let h = Herald::start(&[]);
    let base = h.baseline().await;
    let peak = PeakRss::watch(h.pid());

    // Long-polling, by a client that has joined (so that its bodies may be large):
    // bodies of 333,000 pings each, never polling for the pongs. Before the queue counted
    // control packets, 20 such bodies held 320 MB.
    let sid = polling_sid(h.addr).await;
    let join = r#"40{"userId":"flood"}"#;
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{join}",
        join.len()
    );
    assert_eq!(http(h.addr, req.as_bytes()).await.0, 200);
    let body = vec!["2"; 333_000].join("\u{1e}");
    for _ in 0..8 {
        let req = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // Once the session is gone the server answers 400 without reading the body, so
        // the write may fail: that is a refusal too.
        if let Some((status, _)) = common::try_http(h.addr, req.as_bytes()).await {
            assert!(status == 200 || status == 400, "{status}");
        }
    }
    // The session overflowed and is gone: its sid is unknown now.
    let (status, text) = http(
        h.addr,
        &get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    h.healthy("during-polling-flood").await;

    // WebSocket, never read: Engine.IO pings carrying 900 KB each (every pong echoes
    // them), then RFC 6455 pings. The connection stops reading while its writes are
    // refused, and its queue (pongs included) is bounded.
    let mut ws = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    let mut big = String::from("2");
    big.push_str(&"p".repeat(900_000));
    let frame = masked(1, true, big.as_bytes());
    let mut raw = ws.into_stream();
    let mut sent = 0;
    for _ in 0..100 {
        if !write_patiently(&mut raw, &frame, Duration::from_secs(2)).await {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 100,
        "the server kept reading while its writes were refused"
    );
    h.healthy("during-ws-flood").await;
    drop(raw);

    ws = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    let ping: Vec<u8> = (0..1000).flat_map(|_| masked(9, true, &[7; 125])).collect();
    let mut raw = ws.into_stream();
    let mut batches = 0;
    for _ in 0..600 {
        if !write_patiently(&mut raw, &ping, Duration::from_secs(2)).await {
            break;
        }
        batches += 1;
    }
    assert!(
        batches < 600,
        "the server kept reading while its writes were refused"
    );
    h.healthy("during-ping-flood").await;
    drop(raw);

    let grew = peak.peak().saturating_sub(base.0);
    assert!(
        grew < 48 * MIB,
        "RSS grew by {} MiB under control floods",
        grew / MIB
    );
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_cannot_hold_connections() {
    let h = Herald::start(&[
        ("HERALD_TRANSPORT_REQUEST_TIMEOUT_MS", "1000"),
        ("HERALD_TRANSPORT_MIN_BODY_RATE", "100000"),
        ("HERALD_TRANSPORT_MAX_CONNECTIONS", "60"),
        ("HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP", "0"),
    ]);
    let base = h.baseline().await;
    let addr = h.addr;
    let started = Instant::now();
    // 40 heads at a byte every 100 ms, and 10 API bodies of 100 KB at 100 bytes every
    // 100 ms: each keeps sending, so only a deadline on the whole request ends it.
    // `slow` goes out a byte every 100 ms, then the body 100 bytes every 100 ms: each
    // keeps sending, so only a deadline on the whole request ends it.
    let trickle = |fast: Vec<u8>, slow: Vec<u8>, body_len: usize| {
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&fast).await.unwrap();
            let cut = |s: &mut TcpStream| {
                let mut b = [0u8; 256];
                match s.try_read(&mut b) {
                    Ok(0) => true,
                    Ok(n) => {
                        let answer = String::from_utf8_lossy(&b[..n]);
                        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                        true
                    }
                    Err(_) => false,
                }
            };
            let pieces = slow.chunks(1).map(<[u8]>::to_vec);
            let body = (0..body_len / 100).map(|_| vec![b'x'; 100]);
            for piece in pieces.chain(body) {
                if s.write_all(&piece).await.is_err() || cut(&mut s) {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("a trickled request was never cut off");
        })
    };
    let mut slow = Vec::new();
    for _ in 0..40 {
        let head =
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        slow.push(trickle(Vec::new(), head.to_vec(), 0));
    }
    for _ in 0..10 {
        let head = "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
        slow.push(trickle(head.as_bytes().to_vec(), Vec::new(), 100_000));
    }
    // Meanwhile the server answers others.
    let (status, _) = http(addr, &get("/healthz")).await;
    assert_eq!(status, 200);
    h.healthy("while-slow").await;
    for s in slow {
        let cut = s.await.unwrap();
        // The request timeout (1 s), plus 1 s for a 100 KB body at 100 KB/s, plus slack.
        assert!(cut < Duration::from_secs(4), "cut off after {cut:?}");
    }
    h.healthy("after-slow").await;
    h.settles(base, 16 * MIB).await;
}

/// A connection from `source` (an address on the loopback network).
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_limited_in_connections_and_handshakes() {
    let h = Herald::start(&[
        ("HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP", "10"),
        ("HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC", "5"),
        ("HERALD_TRANSPORT_IP_LIMIT_EXEMPT", "127.0.0.9"),
    ]);
    let base = h.baseline().await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from("127.0.0.2", h.addr).await);
    }
    // Accepted connections are counted once the server has taken them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut eleventh = connect_from("127.0.0.2", h.addr).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, eleventh.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    // Another address is not affected, nor an exempt one.
    for source in ["127.0.0.3", "127.0.0.9"] {
        let mut s = connect_from(source, h.addr).await;
        s.write_all(&get("/healthz")).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{source}: {out}");
    }
    drop(held);

    // Handshakes: 5 a second from one address.
    let mut refused = 0;
    for _ in 0..12 {
        let mut s = connect_from("127.0.0.4", h.addr).await;
        s.write_all(&get("/socket.io/?EIO=4&transport=polling"))
            .await
            .unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await;
        if out.starts_with("HTTP/1.1 429") {
            refused += 1;
        } else {
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        }
    }
    assert!(
        refused >= 5,
        "only {refused} of 12 quick handshakes refused"
    );
    h.healthy("other-address").await;
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_is_accepted_reads_back_identically() {
    let h = Herald::start(&[]);
    let base = h.baseline().await;
    // What no path can carry is refused at push, with the reason.
    let deep = format!("{}1{}", "[".repeat(128), "]".repeat(128));
    for (data, why) in [
        (deep.as_str(), "deeper than 64"),
        (r#""\ud800""#, "surrogate"),
        ("1e999999", "out of range"),
    ] {
        let (status, body) = h.push("carol", "n", data).await;
        assert_eq!(status, 400, "{data}: {body}");
        assert!(body.contains(why), "{body}");
    }
    // What is accepted comes back byte for byte: from the inbox, live and replayed.
    let nested = format!("{}\"end\"{}", "[".repeat(64), "]".repeat(64));
    let odd = [
        nested.as_str(),
        r#"{ "b" : 1,  "a" : [ 1e300, -0.0, 18446744073709551615 ] }"#,
        r#""\ud83d\ude00 \u0000 \" é""#,
    ];
    let mut live = Ws::device(h.addr, r#"{"userId":"carol"}"#).await;
    for data in odd {
        let (status, body) = h.push("carol", "n", data).await;
        assert_eq!(status, 200, "{body}");
        let frame = live.text().await;
        assert!(frame.contains(data), "live: {frame}");
    }
    let (status, page) = http(h.addr, &get("/api/v1/users/carol/messages")).await;
    assert_eq!(status, 200, "{page}");
    for data in odd {
        assert!(page.contains(data), "inbox page lacks {data}: {page}");
    }
    let mut replay = Ws::device(h.addr, r#"{"userId":"carol","since":0}"#).await;
    for data in odd {
        let frame = replay.text().await;
        assert!(frame.contains(data), "replay: {frame}");
    }
    drop((live, replay));
    h.settles(base, 16 * MIB).await;
}

/// The seq and id of a stored message frame `42<seq>["event",data,{"id":..}]`.
fn stored_seq(frame: &str) -> u64 {
    let rest = frame.strip_prefix("42").unwrap();
    rest[..rest.find('[').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_count_only_for_messages_this_connection_was_sent() {
    let h = Herald::start(&[]);
    let base = h.baseline().await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        let (status, body) = h.push("dave", "n", &i.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let mut ws = Ws::device(h.addr, r#"{"userId":"dave","since":3}"#).await;
    assert_eq!(stored_seq(&ws.text().await), 4);
    assert_eq!(stored_seq(&ws.text().await), 5);
    // Acks for seqs 1 and 2 (never sent here), then for 4.
    for seq in [1, 2, 4] {
        ws.send_text(&format!("43{seq}[]")).await;
    }
    let delivered = |i: usize| {
        let id = ids[i].clone();
        async move {
            let (_, body) = http(h.addr, &get(&format!("/api/v1/messages/{id}"))).await;
            body.contains("deliveredAt")
        }
    };
    let deadline = Instant::now() + WAIT;
    while !delivered(3).await {
        assert!(
            Instant::now() < deadline,
            "the ack of seq 4 was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in [0, 1, 4] {
        assert!(!delivered(i).await, "seq {} counted as delivered", i + 1);
    }
    h.healthy("after-acks").await;
    drop(ws);
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_removed_under_the_server_refuses_pushes_and_fails_readiness() {
    for replace in [false, true] {
        let h = Herald::start(&[]);
        let (status, _) = h.push("erin", "n", "1").await;
        assert_eq!(status, 200);
        let (status, _) = http(h.addr, &get("/readyz")).await;
        assert_eq!(status, 200);
        let db = h.data_dir.join("herald.db");
        if replace {
            let copy = h.data_dir.join("copy.db");
            std::fs::copy(&db, &copy).unwrap();
            std::fs::rename(&copy, &db).unwrap();
        } else {
            std::fs::remove_dir_all(&h.data_dir).unwrap();
        }
        let (status, body) = h.push("erin", "n", "2").await;
        assert_eq!(status, 503, "replace={replace}: {body}");
        let (status, body) = h.push("erin", "n", "3").await;
        assert_eq!(status, 503, "replace={replace}: {body}");
        let (status, body) = http(h.addr, &get("/readyz")).await;
        assert_eq!(status, 503, "replace={replace}: {body}");
        assert!(body.contains(r#""writable":false"#), "{body}");
        let log = h.log();
        assert!(
            log.contains("ERROR") && log.contains("removed or replaced"),
            "nothing logged: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_checked_before_anything_else() {
    let h = Herald::start(&[("HERALD_API_KEYS", "k1")]);
    let fds = h.fds();
    let huge = "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n";
    let cases: [(&[u8], &str); 4] = [
        (huge.as_bytes(), "oversized body, no key"),
        (&post("/api/v1/push", "{not json", ""), "malformed, no key"),
        (
            b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
            "wrong type, no key",
        ),
        (
            &post("/api/v1/push", "{}", "Authorization: Bearer nope\r\n"),
            "wrong key",
        ),
    ];
    for (req, what) in cases {
        let (status, body) = http(h.addr, req).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains("unauthorized"), "{what}: {body}");
    }
    let (status, _) = http(
        h.addr,
        &post("/api/v1/push", "{not json", "Authorization: Bearer k1\r\n"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(h.addr, &get("/api/v1/openapi.json")).await;
    assert_eq!(status, 200);
    // Refused requests leave nothing open.
    let deadline = Instant::now() + WAIT;
    while h.fds() > fds + 2 {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a WebSocket upgrade with `headers`; returns the status line.
async fn upgrade_status(addr: SocketAddr, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n{headers}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_from_origins_outside_the_allow_list_are_refused() {
    let h = Herald::start(&[("HERALD_TRANSPORT_CORS_ORIGINS", "https://app.example")]);
    let base = h.baseline().await;
    let host = format!("Host: {}\r\n", h.addr);
    for (origin, want) in [
        ("Origin: https://evil.example\r\n".to_owned(), "403"),
        ("Origin: https://app.example\r\n".to_owned(), "101"),
        (format!("Origin: http://{}\r\n", h.addr), "101"),
        (String::new(), "101"),
    ] {
        let line = upgrade_status(h.addr, &format!("{host}{origin}")).await;
        assert!(line.contains(want), "{origin:?}: {line}");
    }
    h.settles(base, 16 * MIB).await;
}

fn token(user: &str, expires_in: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": now + expires_in}),
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_its_connection_when_so_configured() {
    let h = Herald::start(&[
        ("HERALD_AUTH_JWT_SECRET", "s3cret"),
        ("HERALD_AUTH_ON_EXPIRY", "disconnect"),
    ]);
    let t = token("fay", 2);
    let auth = format!(r#"{{"token":"{t}"}}"#);
    let mut ws = Ws::device(h.addr, &auth).await;
    let long = Ws::device(h.addr, &format!(r#"{{"token":"{}"}}"#, token("gus", 3600))).await;
    let started = Instant::now();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.frame()).await {
            Ok(Some(Frame::Close(c))) => break c,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without a close frame"),
            Err(_) => panic!("still connected 5 s after its token expired"),
        }
    };
    assert_eq!(code, 1008);
    // The token is good through its `exp` second, so the close comes within 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Coming back with the same token: refused, with a reason the client can read.
    let mut again = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    assert!(again.text().await.starts_with("0{"));
    again.send_text(&format!("40{auth}")).await;
    let refused = again.text().await;
    assert!(
        refused.starts_with("44") && refused.contains("token expired"),
        "{refused}"
    );
    // A connection whose token is still good is untouched.
    let mut long = long;
    long.send_text("2probe").await;
    assert_eq!(long.text().await, "3probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_credentials_are_bounded_in_number_memory_and_time() {
    let h = Herald::start(&[
        ("HERALD_AUTH_JWT_SECRET", "s3cret"),
        ("HERALD_SOCKETIO_CONNECT_TIMEOUT_MS", "1000"),
        ("HERALD_TRANSPORT_MAX_SESSIONS_PER_IP", "40"),
        ("HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC", "0"),
    ]);
    let base = (h.rss_kib(), h.fds());
    let peak = PeakRss::watch(h.pid());
    // Long-polling sessions hold no connection between requests: they count on their
    // own. v3 (whose root CONNECT is implicit, and refused here for want of a token) and
    // v4 alike.
    let mut sids = Vec::new();
    let mut refused = 0;
    for i in 0..50 {
        let eio = if i % 2 == 0 { 3 } else { 4 };
        let (status, body) = http(
            h.addr,
            &get(&format!("/socket.io/?EIO={eio}&transport=polling")),
        )
        .await;
        match status {
            200 => {
                let start = body.find("{\"sid\":\"").unwrap() + 8;
                sids.push((eio, body[start..start + 20].to_owned()));
            }
            429 => refused += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((sids.len(), refused), (40, 10));
    // Each asks for pongs echoing 600 KB, never polling them: more than a session that
    // has shown no credentials may queue.
    let ping = format!("2{}", "p".repeat(600_000));
    for (eio, sid) in &sids {
        let body = if *eio == 3 {
            format!("{}:{ping}", ping.len())
        } else {
            ping.clone()
        };
        let req = format!(
            "POST /socket.io/?EIO={eio}&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = common::try_http(h.addr, req.as_bytes()).await;
    }
    let grew = peak.peak().saturating_sub(base.0);
    assert!(grew < 24 * MIB, "RSS grew by {} MiB", grew / MIB);
    // Past the connect timeout no session is left, v3 included.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (eio, sid) in &sids {
        let (status, body) = http(
            h.addr,
            &get(&format!(
                "/socket.io/?EIO={eio}&transport=polling&sid={sid}"
            )),
        )
        .await;
        assert_eq!(status, 400, "EIO={eio}: {body}");
    }
    // And the address may open sessions again.
    let (status, _) = http(h.addr, &get("/socket.io/?EIO=4&transport=polling")).await;
    assert_eq!(status, 200);
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_its_namespace_is_timed_out_again() {
    let h = Herald::start(&[
        ("HERALD_AUTH_JWT_SECRET", "s3cret"),
        ("HERALD_SOCKETIO_CONNECT_TIMEOUT_MS", "1000"),
        ("HERALD_API_KEYS", "k1"),
    ]);
    let auth = format!(r#"{{"token":"{}"}}"#, token("hal", 3600));
    let mut ws = Ws::device(h.addr, &auth).await;
    ws.send_text("41").await;
    let code = tokio::time::timeout(Duration::from_secs(5), ws.close_code())
        .await
        .expect("still open 5 s after leaving its namespace");
    assert_eq!(code, 1000);
    let presence = "GET /api/v1/users/hal/presence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n";
    let (_, body) = http(h.addr, presence.as_bytes()).await;
    assert!(body.contains(r#""connections":0"#), "{body}");
    // Leaving a namespace it never joined does not restart the timer: a client that
    // keeps sending `41` is closed on time all the same.
    let mut idle = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    assert!(idle.text().await.starts_with("0{"));
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(4) {
        idle.send_text("41").await;
        match tokio::time::timeout(Duration::from_millis(300), idle.frame()).await {
            Ok(Some(Frame::Close(_))) | Ok(None) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a session sending 41 outlived its connect timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_framing_and_bodies_outside_the_api_are_not_held() {
    let h = Herald::start(&[("HERALD_API_KEYS", "k1")]);
    let base = h.baseline().await;
    // Outside the API no body is read at all.
    let req = "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    let (status, body) = http(h.addr, req.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    // A push body in 1-byte chunks with 28-byte extensions: 35 bytes on the wire per
    // byte of body. Only the body counts, and only it is kept.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    let chunk = b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n";
    let burst: Vec<u8> = chunk
        .iter()
        .copied()
        .cycle()
        .take(chunk.len() * 10_000)
        .collect();
    let peak = PeakRss::watch(h.pid());
    for _ in 0..90 {
        s.write_all(&burst).await.unwrap();
    }
    // 900,000 bytes of body (under the 1 MiB limit) arrived as 31 MB.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grew = peak.peak().saturating_sub(base.0);
    assert!(grew < 12 * MIB, "RSS grew by {} MiB", grew / MIB);
    drop(s);
    h.healthy("after-chunks").await;
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_is_folded_and_pushes_still_arrive() {
    let h = Herald::start(&[]);
    let base = h.baseline().await;
    for _ in 0..3 {
        h.push("ida", "n", "1").await;
    }
    let mut ws = Ws::device(h.addr, r#"{"userId":"ida"}"#).await;
    let peak = PeakRss::watch(h.pid());
    let reads: Vec<u8> = (0..100_000u64)
        .flat_map(|i| {
            masked(
                1,
                true,
                format!("42{i}[\"read\",{{\"upTo\":{}}}]", i % 4).as_bytes(),
            )
        })
        .collect();
    ws.send_raw(&reads).await;
    let started = Instant::now();
    h.healthy("during-reads").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let grew = peak.peak().saturating_sub(base.0);
    assert!(grew < 48 * MIB, "RSS grew by {} MiB", grew / MIB);
    let (_, unread) = http(h.addr, &get("/api/v1/users/ida/unread")).await;
    drop(ws);
    // The highest position asked for is the one stored.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, unread) = http(h.addr, &get("/api/v1/users/ida/unread")).await;
        if unread.contains(r#""readUpTo":3"#) {
            break;
        }
        assert!(Instant::now() < deadline, "{unread}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = unread;
    h.settles(base, 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_has_not_joined_may_send_little_and_no_events() {
    let h = Herald::start(&[("HERALD_AUTH_JWT_SECRET", "s3cret")]);
    let base = (h.rss_kib(), h.fds());
    // An incomplete 999 KB message, then a frame announcing as much: over the 64 KiB
    // allowed before a namespace is joined, the connection is closed (1009).
    let mut ws = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    let mut first = masked(1, false, &vec![b'4'; 999_000]);
    first.truncate(200_000);
    ws.send_raw(&first).await;
    assert_eq!(ws.close_code().await, 1009);
    // A polling body as large is refused (413) without being read in full.
    let sid = polling_sid(h.addr).await;
    let big = "4".repeat(200_000);
    let req = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    if let Some((status, _)) = common::try_http(h.addr, req.as_bytes()).await {
        assert_eq!(status, 413);
    }
    // An event before any CONNECT ends the session at once (it is not even parsed).
    let mut ws = Ws::connect(h.addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    let args: Vec<String> = (0..10_000).map(|_| "1".to_owned()).collect();
    ws.send_text(&format!("42[\"e\",{}]", args.join(","))).await;
    assert_eq!(ws.close_code().await, 1002);
    // A handshake query longer than max_query_bytes is refused.
    let long = format!(
        "/socket.io/?EIO=4&transport=polling&pad={}",
        "q".repeat(9_000)
    );
    let (status, body) = http(h.addr, &get(&long)).await;
    assert_eq!(status, 400, "{body}");
    h.settles(base, 16 * MIB).await;
}
