//! Server-side controls on the public API: disconnect a user everywhere (and refuse their
//! older tokens), erase what is stored for them, list the nodes; API keys with scopes.
//! Through a running node, with real sockets and tokens; across two nodes sharing Redis.

use std::net::SocketAddr;

use herald::api::{Scope, ScopedKey};
use herald::app::config::Config;
use herald::app::Node;
use tokio::sync::oneshot;

mod common;
use common::pg::Postgres;
use common::redis::Redis;
use common::{http, Ws};

const SECRET: &str = "a-test-secret-of-32-bytes-000000";
const FULL: &str = "full-key-0123456789abcdef";
const READER: &str = "read-key-0123456789abcdef";
const PUSHER: &str = "push-key-0123456789abcdef";

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap();
    }
}

fn config(data: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.auth.jwt_secret = SECRET.into();
    c.api.keys = vec![FULL.into()];
    c.api.scoped_keys = vec![
        ScopedKey {
            name: "dashboard".into(),
            key: READER.into(),
            scopes: vec![Scope::Read],
        },
        ScopedKey {
            name: "backend".into(),
            key: PUSHER.into(),
            scopes: vec![Scope::Push],
        },
    ];
    c.store.data_dir = data.to_string_lossy().into_owned();
    c.admin.listen = String::new();
    c
}

async fn run(config: Config) -> Running {
    let node = Node::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    Running { addr, stop, done }
}

fn now() -> u64 {
    herald::vocab::now_ms() / 1000
}

/// A client token for `user`, issued at `iat` (none if `None`).
fn token(user: &str, iat: Option<u64>) -> String {
    let mut claims = serde_json::json!({"sub": user, "exp": now() + 3600});
    if let Some(iat) = iat {
        claims["iat"] = iat.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends an API request with `key`; returns status and body.
async fn api(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Opens a session and asks to join `/` with `token`; returns the socket and herald's
/// answer to the join (`40{...}` or `44{...}`).
async fn join(addr: SocketAddr, token: &str) -> (Ws, String) {
    let mut ws = Ws::connect(addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text(&format!(r#"40{{"token":"{token}"}}"#)).await;
    let answer = ws.text().await;
    (ws, answer)
}

/// Reads until the server's Socket.IO DISCONNECT (`41`), then the end of the connection.
async fn disconnected(ws: &mut Ws) {
    tokio::time::timeout(common::WAIT, async {
        loop {
            match ws.frame().await {
                Some(common::Frame::Text(t)) if t == "41" => break,
                Some(_) => {}
                None => panic!("closed before the DISCONNECT packet"),
            }
        }
        // Then the transport ends (a close frame, or the end of the stream).
        while let Some(f) = ws.frame().await {
            if matches!(f, common::Frame::Close(_)) {
                break;
            }
        }
    })
    .await
    .expect("disconnected in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_what_a_key_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let node = run(config(dir.path())).await;
    let a = node.addr;
    let push = r#"{"to":{"users":["u1"]},"event":"e","data":1}"#;
    // The read-only key reads, and is refused anything else with 403 naming it.
    assert_eq!(
        api(a, "GET", "/api/v1/users/u1/unread", READER, "").await.0,
        200
    );
    let (status, body) = api(a, "POST", "/api/v1/push", READER, push).await;
    assert_eq!(status, 403, "{body}");
    let e = json(&body);
    assert_eq!(e["error"]["code"], "forbidden");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dashboard")
            && e["error"]["message"].as_str().unwrap().contains("push"),
        "{body}"
    );
    let (status, _) = api(a, "DELETE", "/api/v1/users/u1/connections", READER, "").await;
    assert_eq!(status, 403);
    // The push key pushes, but cannot read or administer.
    assert_eq!(api(a, "POST", "/api/v1/push", PUSHER, push).await.0, 200);
    assert_eq!(
        api(a, "GET", "/api/v1/users/u1/messages", PUSHER, "")
            .await
            .0,
        403
    );
    assert_eq!(
        api(a, "DELETE", "/api/v1/users/u1/messages", PUSHER, "")
            .await
            .0,
        403
    );
    // An unknown key is 401, whatever the route.
    assert_eq!(api(a, "GET", "/api/v1/nodes", "nope", "").await.0, 401);
    // A full key does everything.
    assert_eq!(api(a, "GET", "/api/v1/nodes", FULL, "").await.0, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_the_controls_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = run(config(dir.path())).await;
    let a = node.addr;
    let path = "/api/v1/users/u1/connections";
    for (body, says) in [
        (r#"{"revokeBefore":"soon"}"#, "revokeBefore"),
        (r#"{"revokeBefore":-1}"#, "revokeBefore"),
        (r#"{"revokeAfter":1}"#, "revokeAfter"),
        ("[1]", "object"),
        ("{", "invalid JSON"),
    ] {
        let (status, text) = api(a, "DELETE", path, FULL, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    // Milliseconds where seconds belong: refused rather than banning for centuries.
    let ms = format!(r#"{{"revokeBefore":{}}}"#, herald::vocab::now_ms());
    let (status, text) = api(a, "DELETE", path, FULL, &ms).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("milliseconds"), "{text}");
    // A user id no client can have.
    let long = "x".repeat(300);
    let (status, _) = api(
        a,
        "DELETE",
        &format!("/api/v1/users/{long}/messages"),
        FULL,
        "",
    )
    .await;
    assert_eq!(status, 400);
    // A user nobody knows: nothing to do, and said so.
    let (status, text) = api(a, "DELETE", "/api/v1/users/nobody/connections", FULL, "").await;
    assert_eq!(
        (status, json(&text)),
        (200, serde_json::json!({"disconnected": 0}))
    );
    let (status, text) = api(a, "DELETE", "/api/v1/users/nobody/messages", FULL, "").await;
    assert_eq!(
        (status, json(&text)),
        (200, serde_json::json!({"erased": 0}))
    );
    node.stop().await;
}

/// A node's configuration on `store` (empty: SQLite in `data`).
fn config_on(data: &std::path::Path, store: &str) -> Config {
    let mut c = config(data);
    c.store.url = store.to_owned();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_connect_even_after_a_restart_sqlite() {
    revoked_token_refused_after_restart("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_connect_even_after_a_restart_postgres() {
    let pg = Postgres::start();
    revoked_token_refused_after_restart(&pg.database("controls_revoke")).await
}

async fn revoked_token_refused_after_restart(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = run(config_on(dir.path(), store)).await;
    let a = node.addr;
    let old = token("u1", Some(now() - 60));
    let (mut phone, answer) = join(a, &old).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    let (mut laptop, answer) = join(a, &old).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    let (_other, answer) = join(a, &token("u2", Some(now() - 60))).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");

    let body = format!(r#"{{"revokeBefore":{}}}"#, now());
    let (status, text) = api(a, "DELETE", "/api/v1/users/u1/connections", FULL, &body).await;
    assert_eq!(status, 200, "{text}");
    let k = json(&text);
    assert_eq!(k["disconnected"], 2);
    assert_eq!(k["revokedBefore"], now_within(&k["revokedBefore"]));
    disconnected(&mut phone).await;
    disconnected(&mut laptop).await;

    // The old token, and a token that does not say when it was issued, are refused; a
    // token issued after the revocation, and another user's, are not.
    let (_, answer) = join(a, &old).await;
    assert!(
        answer.starts_with("44") && answer.contains("revoked"),
        "{answer}"
    );
    let (_, answer) = join(a, &token("u1", None)).await;
    assert!(
        answer.starts_with("44") && answer.contains("revoked"),
        "{answer}"
    );
    let (_, answer) = join(a, &token("u1", Some(now() + 1))).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    let (_, answer) = join(a, &token("u2", Some(now() - 60))).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    node.stop().await;

    // Stored: a restarted node still refuses it.
    let node = run(config_on(dir.path(), store)).await;
    let (_, answer) = join(node.addr, &old).await;
    assert!(
        answer.starts_with("44") && answer.contains("revoked"),
        "{answer}"
    );
    node.stop().await;
}

/// `v` if it is a Unix second within a minute of now (the value herald stored).
fn now_within(v: &serde_json::Value) -> serde_json::Value {
    let t = v.as_u64().expect("a number");
    assert!(t.abs_diff(now()) < 60, "{t}");
    v.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_removes_their_messages_and_positions_and_nobody_elses_sqlite() {
    erase_removes_only_the_users_data("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_removes_their_messages_and_positions_and_nobody_elses_postgres() {
    let pg = Postgres::start();
    erase_removes_only_the_users_data(&pg.database("controls_erase")).await
}

async fn erase_removes_only_the_users_data(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = run(config_on(dir.path(), store)).await;
    let a = node.addr;
    for n in 0..3 {
        let body = format!(r#"{{"to":{{"users":["u1"]}},"event":"e","data":{n}}}"#);
        assert_eq!(api(a, "POST", "/api/v1/push", FULL, &body).await.0, 200);
    }
    let shared = r#"{"to":{"users":["u1","u2"]},"event":"e","data":"both"}"#;
    let (_, text) = api(a, "POST", "/api/v1/push", FULL, shared).await;
    let shared_id = json(&text)["id"].as_str().unwrap().to_owned();
    // A device with a position.
    let (phone, answer) = join(a, &token("u1", Some(now()))).await;
    assert!(answer.starts_with("40"), "{answer}");
    drop(phone.into_stream());
    let phone = Ws::device(
        a,
        &format!(
            r#"{{"token":"{}","deviceId":"phone"}}"#,
            token("u1", Some(now()))
        ),
    )
    .await;
    assert_eq!(phone.inbox.as_ref().unwrap()["unread"], 4);
    drop(phone.into_stream());

    let (status, text) = api(a, "DELETE", "/api/v1/users/u1/messages", FULL, "").await;
    assert_eq!(
        (status, json(&text)),
        (200, serde_json::json!({"erased": 4}))
    );
    let (_, text) = api(a, "GET", "/api/v1/users/u1/messages", FULL, "").await;
    assert_eq!(json(&text)["messages"], serde_json::json!([]));
    let (_, text) = api(a, "GET", "/api/v1/users/u1/unread", FULL, "").await;
    assert_eq!(json(&text)["unread"], 0);
    // u2's copy of the shared message stays, and with it the message.
    let (_, text) = api(a, "GET", "/api/v1/users/u2/messages", FULL, "").await;
    assert_eq!(json(&text)["messages"][0]["data"], "both");
    let (status, text) = api(a, "GET", &format!("/api/v1/messages/{shared_id}"), FULL, "").await;
    assert_eq!(status, 200, "{text}");
    let users: Vec<String> = json(&text)["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["u2"]);
    // The phone's position is gone: it comes back as a new device, with nothing to
    // replay; a new push reaches it with the next seq.
    let mut phone = Ws::device(
        a,
        &format!(
            r#"{{"token":"{}","deviceId":"phone"}}"#,
            token("u1", Some(now()))
        ),
    )
    .await;
    assert_eq!(phone.inbox.as_ref().unwrap()["unread"], 0);
    let body = r#"{"to":{"users":["u1"]},"event":"e","data":"after"}"#;
    let (_, text) = api(a, "POST", "/api/v1/push", FULL, body).await;
    assert_eq!(json(&text)["seqs"]["u1"], 5, "seqs carry on: {text}");
    let got = phone.text().await;
    assert!(got.contains("\"after\""), "{got}");
    drop(phone.into_stream());
    node.stop().await;
    // The seq counter outlives the erase and a restart: no seq is handed out twice.
    let node = run(config_on(dir.path(), store)).await;
    let (_, text) = api(node.addr, "POST", "/api/v1/push", FULL, body).await;
    assert_eq!(json(&text)["seqs"]["u1"], 6, "{text}");
    let (_, text) = api(node.addr, "GET", "/api/v1/users/u1/unread", FULL, "").await;
    assert_eq!(json(&text)["lastSeq"], 6, "{text}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_disconnected_on_every_node_and_nodes_are_listed() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.database("controls_cluster");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut c = config_on(dir.path(), &store);
        c.cluster.redis = redis.url();
        c.cluster.node_id = format!("n{i}");
        nodes.push(run(c).await);
    }
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    // Both nodes list each other once each has reported in.
    let deadline = tokio::time::Instant::now() + common::WAIT * 2;
    loop {
        let (_, text) = api(a, "GET", "/api/v1/nodes", READER, "").await;
        let v = json(&text);
        let ids: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        if ids == ["n0", "n1"] {
            assert_eq!(v["self"], "n0");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (mut on_b, answer) = join(b, &token("u1", Some(now() - 60))).await;
    assert!(answer.starts_with("40"), "{answer}");
    let (status, text) = api(
        a,
        "DELETE",
        "/api/v1/users/u1/connections",
        FULL,
        &format!(r#"{{"revokeBefore":{}}}"#, now()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json(&text)["disconnected"], 0, "none on the node asked");
    disconnected(&mut on_b).await;
    // Node b refuses the old token too (it heard of the revocation).
    let (_, answer) = join(b, &token("u1", Some(now() - 60))).await;
    assert!(answer.contains("revoked"), "{answer}");
    // A node started later reads it from the shared store.
    let late_dir = tempfile::tempdir().unwrap();
    let mut c = config_on(late_dir.path(), &store);
    c.cluster.redis = redis.url();
    c.cluster.node_id = "n2".into();
    let late = run(c).await;
    let (_, answer) = join(late.addr, &token("u1", Some(now() - 60))).await;
    assert!(answer.contains("revoked"), "{answer}");
    late.stop().await;
    for n in nodes {
        n.stop().await;
    }
}
