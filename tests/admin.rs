//! The admin listener of the `herald` binary: its metrics pass Prometheus's own
//! `promtool check metrics` and hold every metric the Grafana dashboard queries; its
//! credential is required off loopback and whenever set; `/metrics` is off the public
//! port; JSON logs are one object per line.

use std::net::SocketAddr;
use std::process::Stdio;

mod common;
use common::redis::Redis;
use common::{http, Spawned, Ws};

/// A running herald with its two listeners.
struct Herald {
    _run: Spawned,
    public: SocketAddr,
    admin: SocketAddr,
}

/// Starts herald with an admin listener on a free port, and `env`.
fn start(env: &[(&str, &str)], stderr: Stdio) -> Herald {
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
    .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0")
    .stderr(stderr);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut run = Spawned::new(c);
    let public = run.line_addr("listening on ");
    let admin = run.line_addr("admin listener on ");
    Herald {
        _run: run,
        public,
        admin,
    }
}

/// A GET to the admin listener, for `localhost` (the only name it answers without a
/// password), with an `Authorization` header.
fn get_with(path: &str, auth: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await
}

/// Metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word.starts_with("herald_") || word.starts_with("process_") {
            names.push(word.clone());
        }
        rest = &rest[at + word.len()..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_hold_every_metric_of_the_dashboard() {
    // Cluster and webhooks on, so that their metrics exist too.
    let redis = Redis::start();
    let herald = start(
        &[
            ("HERALD_CLUSTER_REDIS", &redis.url()),
            ("HERALD_WEBHOOKS_URL", "http://127.0.0.1:9/hooks"),
            ("HERALD_WEBHOOKS_SECRET", "a-webhook-secret-0123456789"),
        ],
        Stdio::null(),
    )
    .await_ready()
    .await;
    // Some traffic: a device that gets a durable push and acks it, a volatile push, a
    // refused one.
    let mut ws = Ws::device(herald.public, r#"{"userId":"u1","deviceId":"d1"}"#).await;
    let (status, _) = post(
        herald.public,
        "/api/v1/push",
        r#"{"to":{"users":["u1"]},"event":"e","data":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    let got = ws.text().await;
    assert!(got.starts_with("421[\"e\""), "{got}");
    ws.send_text("431[]").await;
    post(
        herald.public,
        "/api/v1/push",
        r#"{"to":{"all":true},"event":"e","data":2}"#,
    )
    .await;
    post(
        herald.public,
        "/api/v1/push",
        r#"{"to":{"users":[]},"event":"e","data":3}"#,
    )
    .await;

    let (status, scrape) = http(herald.admin, &get_with("/metrics", "none")).await;
    assert_eq!(status, 200, "{scrape}");
    // Prometheus's own checker (Debian's `prometheus` package).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/test installs it)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The figures moved with the traffic.
    for line in [
        "herald_pushes_total{kind=\"durable\"} 1",
        "herald_pushes_total{kind=\"broadcast\"} 1",
        "herald_pushes_refused_total{reason=\"invalid\"} 1",
        "herald_connections{eio=\"4\",transport=\"websocket\"} 1",
        "herald_users 1",
        "herald_redis_up 1",
    ] {
        assert!(scrape.contains(line), "no `{line}` in\n{scrape}");
    }
    assert!(
        scrape.contains("herald_api_requests_total{route=\"/api/v1/push\",status=\"200\"} 2"),
        "{scrape}"
    );
    // Every metric the dashboard queries is in the scrape.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/herald.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    assert!(exprs.len() > 30, "{} queries", exprs.len());
    let mut checked = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            let present = scrape
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
            assert!(
                present,
                "the dashboard queries `{name}` ({expr}), which is not in the scrape"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} metric uses checked");
    drop(herald);
}

impl Herald {
    /// Waits for `/readyz` to be 200 on the admin listener (Redis connected).
    async fn await_ready(self) -> Herald {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        while http(self.admin, &common::get("/readyz")).await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "not ready");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_credential_is_required_when_set_and_metrics_are_off_the_public_port() {
    let herald = start(
        &[("HERALD_ADMIN_PASSWORD", "an-admin-password-0123")],
        Stdio::null(),
    );
    let (status, body) = http(herald.admin, &common::get("/metrics")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("admin.password"), "{body}");
    let (status, _) = http(
        herald.admin,
        &get_with("/metrics", "Basic d3Jvbmc6d3Jvbmc="),
    )
    .await;
    assert_eq!(status, 401);
    // HTTP Basic with any user name, or a bearer token.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("ops:an-admin-password-0123");
    let (status, body) = http(
        herald.admin,
        &get_with("/metrics", &format!("Basic {basic}")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("herald_build_info"), "{body}");
    let (status, _) = http(
        herald.admin,
        &get_with("/admin/api/stats", "Bearer an-admin-password-0123"),
    )
    .await;
    assert_eq!(status, 200);
    // Probes need no credential.
    assert_eq!(http(herald.admin, &common::get("/healthz")).await.0, 200);
    assert_eq!(http(herald.admin, &common::get("/readyz")).await.0, 200);
    // Nothing but the test push takes a body: no one can make the listener hold one.
    let post = "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    let (status, body) = http(herald.admin, post.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    // ...and the listener goes on serving its scraper.
    let bearer = get_with("/metrics", "Bearer an-admin-password-0123");
    assert_eq!(http(herald.admin, &bearer).await.0, 200);
    // The public port serves no metrics, but still its probes.
    assert_eq!(http(herald.public, &common::get("/metrics")).await.0, 404);
    assert_eq!(http(herald.public, &common::get("/readyz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_the_admin_listener_answers_only_for_localhost() {
    let herald = start(&[], Stdio::null());
    let with_host = |host: &str| {
        format!("GET /admin/api/stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for host in ["localhost:9100", "127.0.0.1", "[::1]:9100", "LOCALHOST"] {
        let (status, body) = http(herald.admin, with_host(host).as_bytes()).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A page whose own name was rebound to 127.0.0.1 sends its own name.
    for host in [
        "evil.example.com",
        "evil.example.com:9100",
        "127.0.0.1.evil.example",
    ] {
        let (status, body) = http(herald.admin, with_host(host).as_bytes()).await;
        assert_eq!(status, 403, "{host}: {body}");
    }
    // What no browser sends is refused too, rather than guessed at: no Host, two, one
    // that is not text, a target naming another host.
    for request in [
        &b"GET /admin/api/stats HTTP/1.0\r\n\r\n"[..],
        b"GET /admin/api/stats HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
        b"GET /admin/api/stats HTTP/1.1\r\nHost: evil\xff.com\r\nConnection: close\r\n\r\n",
        b"GET http://evil.com/admin/api/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let (status, body) = http(herald.admin, request).await;
        assert_eq!(status, 403, "{}: {body}", String::from_utf8_lossy(request));
    }
    // Only a POST of the test push takes a body.
    let get = "GET /admin/api/push HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n";
    assert_eq!(http(herald.admin, get.as_bytes()).await.0, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_admin_connection() {
    let herald = start(&[], Stdio::null());
    // 16 idle connections from 127.0.0.1 hold every place that address gets.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(herald.admin).await.unwrap());
    }
    // The 17th from that address is refused at once...
    let (status, _) = http(herald.admin, &get_with("/admin/api/stats", "none")).await;
    assert_eq!(status, 429);
    // ...while a scraper on another address is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(herald.admin).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    other
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A place given back is taken again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while http(herald.admin, &get_with("/admin/api/stats", "none"))
        .await
        .0
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn an_admin_listener_off_loopback_needs_a_password() {
    let check = |env: &[(&str, &str)]| {
        let mut c = common::herald_cmd();
        c.arg("check-config").env_remove("HERALD_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = check(&[("HERALD_ADMIN_LISTEN", "0.0.0.0:9100")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.password") && err.contains("loopback"),
        "{err}"
    );
    let out = check(&[
        ("HERALD_ADMIN_LISTEN", "0.0.0.0:9100"),
        ("HERALD_ADMIN_PASSWORD", "an-admin-password-0123"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key listed twice (so with unclear scopes) is refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(
        &file,
        "[api]\nkeys = [\"dup-key-0123456789\"]\n[[api.scoped_keys]]\nname = \"ro\"\nkey = \"dup-key-0123456789\"\nscopes = [\"read\"]\n",
    )
    .unwrap();
    let out = check(&[("HERALD_ADMIN_LISTEN", "")]);
    assert!(out.status.success());
    let mut c = common::herald_cmd();
    let out = c
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listed twice"));
    // The same port as the public listener is refused too.
    let out = check(&[("HERALD_ADMIN_LISTEN", "127.0.0.1:3000")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = common::herald_cmd();
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("HERALD_LOG", "info")
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_AUTH_JWT_SECRET", "a-test-secret-of-32-bytes-000000")
        .env("HERALD_API_KEYS", "full-key-0123456789abcdef")
        .stderr(Stdio::piped());
    let mut run = Spawned::new(c);
    let public = run.line_addr("listening on ");
    // A refused client and a refused API call log lines of their own.
    let mut ws = Ws::connect(public, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text(r#"40{"token":"nope"}"#).await;
    assert!(ws.text().await.starts_with("44"));
    let (status, _) = http(public, &get_with("/api/v1/nodes", "Bearer wrong")).await;
    assert_eq!(status, 401);
    // Logged before the answers were sent; stop and read everything.
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read as _;
    run.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` line in {err}"))
    };
    let started = find("herald started");
    assert_eq!(started["auth"], "jwt (secret)");
    assert_eq!(started["listen"], public.to_string());
    let refused = find("client connect refused");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("invalid token"),
        "{refused}"
    );
    assert_eq!(refused["remote"], "127.0.0.1");
    let api = find("API request refused");
    assert_eq!(api["status"], 401);
    assert_eq!(api["key"], "none");
    assert!(
        !err.contains("wrong") && !err.contains("nope"),
        "a credential was logged: {err}"
    );
}
