//! Webhooks through the `herald` binary, to a real HTTP receiver the test runs: every
//! event kind arrives signed; a receiver that fails or hangs and then recovers gets
//! every event; events in the outbox outlive a SIGKILL; two nodes sharing PostgreSQL
//! send each event once; bad settings are refused at start, by name.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod common;
use common::{http, Ws};

const SECRET: &str = "whsec-test";

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail,
    /// Reads the request and never answers.
    Hang,
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    event: serde_json::Value,
}

/// A webhook receiver on a port of its own.
struct Receiver {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    got: mpsc::UnboundedReceiver<Received>,
    /// Connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let (tx, got) = mpsc::unbounded_channel();
        let m = mode.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (tx, m) = (tx.clone(), m.clone());
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    // Keep-alive: one connection carries event after event.
                    while let Some(r) = read_request(&mut s).await {
                        let mode = *m.lock().unwrap();
                        let answer: &[u8] = match mode {
                            Mode::Ok => {
                                let _ = tx.send(r);
                                b"HTTP/1.1 204 No Content\r\n\r\n"
                            }
                            Mode::Fail => b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops",
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            mode,
            got,
            connections,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/herald", self.addr)
    }

    /// The next event taken (2xx), within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.got.recv()).await.ok()?
    }

    /// Events taken until one of each `kinds` (in any order) has arrived.
    async fn until_kinds(&mut self, kinds: &[&str]) -> Vec<Received> {
        let mut out: Vec<Received> = Vec::new();
        while !kinds
            .iter()
            .all(|k| out.iter().any(|r| r.event["type"] == *k))
        {
            let seen: Vec<_> = out.iter().map(|r| r.event["type"].clone()).collect();
            let r = self
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("waiting for {kinds:?}; got {seen:?}"));
            out.push(r);
        }
        out
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    assert!(
        request_line.starts_with("POST /hooks/herald HTTP/1.1"),
        "{request_line}"
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).ok()?;
    let event = serde_json::from_str(&body).ok()?;
    Some(Received {
        headers,
        body,
        event,
    })
}

/// Checks `Herald-Signature` as a receiver would: HMAC-SHA256 of `"<t>.<body>"`.
fn verify(r: &Received) {
    let sig = &r.headers["herald-signature"];
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("bad signature header {sig}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(now.abs_diff(t) < 60, "t={t} far from now={now}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let expected = ring::hmac::sign(&key, format!("{t}.{}", r.body).as_bytes());
    let hex: String = expected
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, hex, "signature of {}", r.body);
    assert_eq!(
        r.headers["herald-event-id"],
        r.event["id"].as_str().unwrap()
    );
    assert_eq!(r.headers["content-type"], "application/json");
}

/// A `herald` process with a config file of the test's own and a data dir that
/// outlives restarts.
struct Herald {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

fn herald(config: &str, dir: &std::path::Path) -> Herald {
    let file = dir.join("herald.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = common::herald_cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-auth", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("HERALD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald binary");
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let addr = common::listening_addr(&mut child);
    Herald { child, addr, log }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hooks(url: &str, extra: &str) -> String {
    format!(
        "[webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nretry_initial_ms = 100\nretry_max_ms = 400\n{extra}\n"
    )
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> serde_json::Value {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(addr, req.as_bytes()).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

async fn push(addr: SocketAddr, user: &str) -> serde_json::Value {
    let body = format!(r#"{{"to":{{"users":["{user}"]}},"event":"note","data":{{"hi":1}}}}"#);
    api(addr, "POST", "/api/v1/push", &body).await
}

/// Reads until the stored message `seq` arrives.
async fn wait_seq(ws: &mut Ws, seq: u64) {
    let prefix = format!("42{seq}[");
    while !ws.text().await.starts_with(&prefix) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_arrives_signed() {
    let mut rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald(&hooks(&rx.url(), "undelivered_after_secs = 1"), dir.path());
    let mut ws = Ws::device(h.addr, r#"{"userId":"ann","deviceId":"phone"}"#).await;
    let online = rx.until_kinds(&["user.online"]).await;
    assert_eq!(online[0].event["data"]["user"], "ann");
    let pushed = push(h.addr, "ann").await;
    let id = pushed["id"].as_str().unwrap().to_owned();
    wait_seq(&mut ws, 1).await;
    ws.send_text("431[]").await;
    let got = rx.until_kinds(&["message.delivered"]).await;
    let delivered = &got.last().unwrap().event;
    assert_eq!(
        delivered["data"],
        serde_json::json!({"messageId": id, "user": "ann", "seq": 1, "device": "phone",
                           "deliveredAt": delivered["data"]["deliveredAt"]})
    );
    ws.send_text(r#"42["read",{"upTo":1}]"#).await;
    let got = rx.until_kinds(&["message.read"]).await;
    let read = &got.last().unwrap().event;
    assert_eq!(read["data"]["messageId"], id.as_str());
    assert_eq!(read["data"]["user"], "ann");
    // Nobody acks bob's copy: reported once the second has passed.
    let to_bob = push(h.addr, "bob").await;
    let got = rx.until_kinds(&["message.undelivered"]).await;
    let undelivered = &got.last().unwrap().event;
    assert_eq!(undelivered["data"]["user"], "bob");
    assert_eq!(undelivered["data"]["messageId"], to_bob["id"]);
    assert_eq!(undelivered["data"]["seq"], 1);
    drop(ws);
    let got = rx.until_kinds(&["user.offline"]).await;
    let offline = got.last().unwrap();
    assert_eq!(offline.event["data"]["user"], "ann");
    for r in online.iter().chain(&got) {
        verify(r);
        let e = &r.event;
        assert!(e["ts"].as_u64().unwrap() > 1_600_000_000_000, "{e}");
        assert_eq!(e.as_object().unwrap().len(), 4, "{e}");
    }
    verify(offline);
    // ann's copy was acked: no undelivered event for it, ever.
    while let Some(r) = rx.next(Duration::from_millis(1500)).await {
        assert!(
            !(r.event["type"] == "message.undelivered" && r.event["data"]["user"] == "ann"),
            "{:?}",
            r.event
        );
    }
    // Kept-alive connections carried them, not one connection per event.
    let connections = rx.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(connections < 5, "{connections} connections");
    let state = api(h.addr, "GET", "/api/v1/webhooks", "").await;
    assert_eq!(state["enabled"], true);
    assert_eq!(state["outbox"]["depth"], 0, "{state}");
    assert!(state["sent"].as_u64().unwrap() >= 5, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_receiver_gets_every_event_once_it_recovers() {
    let mut rx = Receiver::start().await;
    rx.set(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let h = herald(
        &hooks(
            &rx.url(),
            "timeout_ms = 300\nevents = [\"message.delivered\"]",
        ),
        dir.path(),
    );
    let mut ws = Ws::device(h.addr, r#"{"userId":"cat","deviceId":"d"}"#).await;
    for seq in 1..=20u64 {
        push(h.addr, "cat").await;
        wait_seq(&mut ws, seq).await;
        ws.send_text(&format!("43{seq}[]")).await;
    }
    // Failing: nothing is taken, the outbox fills and says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = api(h.addr, "GET", "/api/v1/webhooks", "").await;
        if state["outbox"]["depth"] == 20 && state["outbox"]["failing"].as_u64() > Some(0) {
            assert!(state["failed"].as_u64().unwrap() > 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rx.next(Duration::from_millis(300)).await.is_none());
    // Hanging past the timeout, then well again.
    rx.set(Mode::Hang);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    rx.set(Mode::Ok);
    let mut seqs = std::collections::BTreeSet::new();
    while seqs.len() < 20 {
        let r = rx
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {seqs:?} arrived"));
        verify(&r);
        assert_eq!(r.event["type"], "message.delivered");
        seqs.insert(r.event["data"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=20).collect());
    // (`herald_webhooks_failed_total` counts the same; tests/admin.rs scrapes it.)
    let state = api(h.addr, "GET", "/api/v1/webhooks", "").await;
    assert!(state["failed"].as_u64().unwrap() > 0, "{state}");
    assert!(h.log.lock().unwrap().contains("webhook failed; will retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_the_outbox_outlive_a_sigkill() {
    // A receiver address with nothing listening yet.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}/hooks/herald");
    let dir = tempfile::tempdir().unwrap();
    let config = hooks(&url, "events = [\"message.delivered\", \"user.online\"]");
    let mut h = herald(&config, dir.path());
    let mut ws = Ws::device(h.addr, r#"{"userId":"dee","deviceId":"d"}"#).await;
    for seq in 1..=5u64 {
        push(h.addr, "dee").await;
        wait_seq(&mut ws, seq).await;
        ws.send_text(&format!("43{seq}[]")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api(h.addr, "GET", "/api/v1/webhooks", "").await["outbox"]["depth"] != 6 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    drop(ws);
    let mut rx = Receiver::on(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    let _h = herald(&config, dir.path());
    let mut got = Vec::new();
    while got.len() < 6 {
        let r = rx
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {got:?} arrived"));
        verify(&r);
        got.push(r.event["type"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got.iter().filter(|t| *t == "message.delivered").count(), 5);
    assert_eq!(got.iter().filter(|t| *t == "user.online").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_each_event_once() {
    let pg = common::pg::Postgres::start();
    let redis = common::redis::Redis::start();
    let url = pg.database("herald_webhooks");
    let mut rx = Receiver::start().await;
    let config = format!(
        "{}[store]\nurl = \"{url}\"\n[cluster]\nredis = \"{}\"\n",
        hooks(
            &rx.url(),
            "events = [\"message.delivered\", \"message.read\"]"
        ),
        redis.url()
    );
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = herald(&config, d1.path());
    let b = herald(&config, d2.path());
    // A user on each node; pushes through either; each device acks what it gets.
    let mut on_a = Ws::device(a.addr, r#"{"userId":"eve","deviceId":"a"}"#).await;
    let mut on_b = Ws::device(b.addr, r#"{"userId":"fox","deviceId":"b"}"#).await;
    for seq in 1..=15u64 {
        push(b.addr, "eve").await;
        push(a.addr, "fox").await;
        wait_seq(&mut on_a, seq).await;
        wait_seq(&mut on_b, seq).await;
        on_a.send_text(&format!("43{seq}[]")).await;
        on_b.send_text(&format!("43{seq}[]")).await;
    }
    on_a.send_text(r#"42["read",{"upTo":15}]"#).await;
    let mut ids = HashMap::new();
    while ids.len() < 45 {
        let r = rx
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {} events arrived", ids.len()));
        verify(&r);
        let id = r.event["id"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(id, r.event.clone()).is_none(),
            "sent twice: {:?}",
            r.event
        );
    }
    // Nothing more comes: both nodes claimed from one outbox, neither sent twice.
    if let Some(r) = rx.next(Duration::from_secs(2)).await {
        panic!("an extra event: {:?}", r.event);
    }
    let kinds: Vec<_> = ids.values().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "message.delivered").count(),
        30
    );
    assert_eq!(kinds.iter().filter(|k| **k == "message.read").count(), 15);
}

#[test]
fn bad_settings_are_refused_at_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (config, names) in [
        (
            "[webhooks]\nurl = \"http://127.0.0.1:9/\"\nsecret = \"s\"\nevents = [\"message.sent\"]\n",
            "`message.sent`",
        ),
        (
            "[webhooks]\nurl = \"ftp://127.0.0.1/\"\nsecret = \"s\"\n",
            "webhooks.url",
        ),
        (
            "[webhooks]\nurl = \"http://127.0.0.1:9/\"\nsecret = \"\"\n",
            "webhooks.secret",
        ),
        (
            "[webhooks]\nurl = \"https://127.0.0.1:9/\"\nsecret = \"s\"\nca_file = \"/nonexistent.pem\"\n",
            "webhooks.ca_file",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, config).unwrap();
        let out = common::herald_cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--dev-auth", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(names), "{config}: {stderr}");
    }
}

/// A CA and a certificate it signed for 127.0.0.1, made with the openssl CLI.
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=herald test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_is_trusted_through_ca_file_only() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = certificates(dir.path());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hooks/herald", listener.local_addr().unwrap());
    let (tx, mut got) = mpsc::unbounded_channel::<Received>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(r) = read_request(&mut tls).await {
                    let _ = tx.send(r);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let events = "events = [\"user.online\"]";
    // Not trusted without the CA: the event waits, and the log says why.
    let untrusting = tempfile::tempdir().unwrap();
    let h = herald(&hooks(&url, events), untrusting.path());
    let _ws = Ws::device(h.addr, r#"{"userId":"ida"}"#).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.log.lock().unwrap().contains("TLS") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            h.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got.try_recv().is_err());
    drop(h);
    // Trusted through ca_file: delivered, signed.
    let trusting = tempfile::tempdir().unwrap();
    let config = hooks(&url, &format!("{events}\nca_file = \"{}\"", ca.display()));
    let h = herald(&config, trusting.path());
    let _ws = Ws::device(h.addr, r#"{"userId":"jo"}"#).await;
    let r = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .expect("no event over https")
        .unwrap();
    verify(&r);
    assert_eq!(r.event["type"], "user.online");
    assert_eq!(r.event["data"]["user"], "jo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_churning_while_the_receiver_is_down_cannot_grow_the_outbox_past_its_bound() {
    // Nothing listens at the receiver's address.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/herald", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let h = herald(
        &hooks(
            &url,
            "events = [\"user.online\", \"user.offline\"]\nmax_outbox = 4",
        ),
        dir.path(),
    );
    let depth = || async { api(h.addr, "GET", "/api/v1/webhooks", "").await };
    // A client that comes and goes: each cycle an online and an offline event.
    let churn = |n: usize| async move {
        for _ in 0..n {
            drop(Ws::device(h.addr, r#"{"userId":"churner"}"#).await);
            // The disconnect is seen before the next connect.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    churn(5).await;
    // The sender checks the depth once a second: past the bound, the gate closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = depth().await;
        if s["outbox"]["depth"].as_u64().unwrap() >= 4 && s["skipped"].as_u64() == Some(0) {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = depth().await["outbox"]["depth"].as_u64().unwrap();
    churn(20).await;
    // Settled: nothing more was stored, and what was not is counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = depth().await;
    assert_eq!(
        after["outbox"]["depth"].as_u64().unwrap(),
        before,
        "{after}"
    );
    assert!(after["skipped"].as_u64().unwrap() >= 30, "{after}");
    assert!(h.log.lock().unwrap().contains("webhook outbox full"));
    // A healthy client on the same server is served meanwhile.
    let mut healthy = Ws::device(h.addr, r#"{"userId":"fine"}"#).await;
    push(h.addr, "fine").await;
    wait_seq(&mut healthy, 1).await;
}
