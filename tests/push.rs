//! The push server on one node, in-process: user rooms, the push API, and what a closed
//! connection leaves behind (nothing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::app::config::Config;
use herald::app::Node;
use herald::hub::Hub;
use herald::transport::Engine;
use tokio::sync::oneshot;

mod common;
use common::{http, Ws, WAIT};

struct Running {
    addr: SocketAddr,
    hub: Arc<Hub>,
    engine: Engine,
    _stop: oneshot::Sender<()>,
}

async fn start(configure: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        dev_auth: true,
        ..Config::default()
    };
    config.store.url = "sqlite::memory:".into();
    configure(&mut config);
    let node = Node::new(config).await.unwrap();
    let (hub, engine) = (node.hub.clone(), node.engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        hub,
        engine,
        _stop: stop,
    }
}

/// A v4 (socket.io-client 4.x) connection of `user`, in development mode.
async fn device_v4(addr: SocketAddr, user: &str) -> Ws {
    Ws::device(addr, &format!("{{\"userId\":\"{user}\"}}")).await
}

/// A v3 (socket.io-client 2.x) connection of `user`: credentials in the query.
async fn device_v3(addr: SocketAddr, user: &str) -> Ws {
    let mut ws = Ws::connect(addr, &format!("EIO=3&transport=websocket&userId={user}")).await;
    assert!(ws.text().await.starts_with("0{"));
    assert_eq!(ws.text().await, "40");
    let inbox = ws.text().await;
    assert!(inbox.starts_with(r#"42["inbox",{"lastSeq":"#), "{inbox}");
    ws
}

async fn push(addr: SocketAddr, body: &str) -> (u16, String) {
    let req = format!(
        "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_push_reaches_every_device_of_its_user_only() {
    let node = start(|_| {}).await;
    let mut phone = device_v4(node.addr, "alice").await;
    let mut laptop = device_v3(node.addr, "alice").await;
    let mut other = device_v4(node.addr, "bob").await;
    assert_eq!(node.hub.connections("alice"), 2);

    let (status, body) = push(
        node.addr,
        r#"{"to":{"users":["alice"]},"event":"note","data":{"text":"hi"},"volatile":true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["connections"], 2);
    let id = answer["id"].as_str().unwrap().to_owned();
    let ts = answer["ts"].as_u64().unwrap();
    let expected = format!(r#"42["note",{{"text":"hi"}},{{"id":"{id}","ts":{ts}}}]"#);
    assert_eq!(phone.text().await, expected);
    assert_eq!(laptop.text().await, expected);

    // Bob got nothing: his first event is the broadcast that follows.
    let (status, _) = push(node.addr, r#"{"to":{"all":true},"event":"all","data":1}"#).await;
    assert_eq!(status, 200);
    assert!(other.text().await.starts_with(r#"42["all",1,"#));
    assert!(phone.text().await.starts_with(r#"42["all",1,"#));
    assert!(laptop.text().await.starts_with(r#"42["all",1,"#));
}

#[tokio::test]
async fn per_user_connection_limit_refuses_at_connect() {
    let node = start(|c| c.hub.max_connections_per_user = 2).await;
    let _a = device_v4(node.addr, "carol").await;
    let _b = device_v4(node.addr, "carol").await;
    let mut c = Ws::connect(node.addr, "EIO=4&transport=websocket").await;
    assert!(c.text().await.starts_with("0{"));
    c.send_text(r#"40{"userId":"carol"}"#).await;
    assert_eq!(
        c.text().await,
        r#"44{"message":"too many connections for this user"}"#
    );
    assert_eq!(node.hub.connections("carol"), 2);
}

#[tokio::test]
async fn unauthenticated_clients_are_refused_with_a_reason() {
    let node = start(|c| {
        c.dev_auth = false;
        c.auth.jwt_secret = "secret".into();
    })
    .await;
    let mut ws = Ws::connect(node.addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text(r#"40{"userId":"mallory"}"#).await;
    assert_eq!(
        ws.text().await,
        r#"44{"message":"unauthorized: missing token (userId is taken only in development mode, --dev-auth)"}"#
    );
    ws.send_text(r#"40{"token":"not.a.jwt"}"#).await;
    assert_eq!(
        ws.text().await,
        r#"44{"message":"unauthorized: invalid token: not a JWT"}"#
    );
    assert_eq!(node.hub.users(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_get_broadcasts_only() {
    let node = start(|c| {
        c.dev_auth = false;
        c.auth.jwt_secret = "a-secret-of-more-than-16-bytes".into();
        c.auth.anonymous = true;
        c.hub.max_connections_per_user = 1;
    })
    .await;
    // No credentials at all: admitted, past the per-user limit, and told no inbox.
    let mut anon = Ws::socketio(node.addr).await;
    let mut second = Ws::socketio(node.addr).await;
    assert_eq!(node.hub.anonymous(), 2);
    assert_eq!(node.hub.users(), 0, "anonymous connections are no user");
    // A bad token is still refused, not taken for anonymous.
    let mut bad = Ws::connect(node.addr, "EIO=4&transport=websocket").await;
    assert!(bad.text().await.starts_with("0{"));
    bad.send_text(r#"40{"token":"not.a.jwt"}"#).await;
    assert!(bad
        .text()
        .await
        .starts_with(r#"44{"message":"unauthorized: invalid token"#));
    // A broadcast reaches them; they have no inbox to read.
    let news = herald::vocab::Message {
        id: "n1".into(),
        ts: 1,
        ready_us: 0,
        event: "news".into(),
        data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        target: herald::vocab::Target::All,
    };
    assert_eq!(node.hub.deliver(&news).queued, 2);
    for ws in [&mut anon, &mut second] {
        assert!(ws.text().await.starts_with(r#"42["news",1,"#));
    }
    anon.send_text(r#"421["read",{"upTo":1}]"#).await;
    assert_eq!(
        anon.text().await,
        r#"431[{"error":"an anonymous connection has no inbox"}]"#
    );
    drop((anon, second));
    eventually("anonymous connections gone", || node.hub.anonymous() == 0).await;
}

#[tokio::test]
async fn without_anonymous_no_credentials_is_refused() {
    let node = start(|c| {
        c.dev_auth = false;
        c.auth.jwt_secret = "a-secret-of-more-than-16-bytes".into();
    })
    .await;
    let mut ws = Ws::connect(node.addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text("40").await;
    assert_eq!(
        ws.text().await,
        r#"44{"message":"unauthorized: missing token"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    // All from one address, as fast as it goes: the per-address limits would refuse it.
    let node = start(|c| {
        c.transport.max_handshakes_per_ip_per_sec = 0;
        c.transport.max_connections_per_ip = 0;
    })
    .await;
    // One round trip first, so the server's own tasks (listener, heartbeat) are running.
    drop(device_v4(node.addr, "warm-up").await);
    eventually("warm-up gone", || node.engine.sessions() == 0).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let addr = node.addr;
    let workers: Vec<_> = (0..32)
        .map(|w| {
            tokio::spawn(async move {
                for i in (w..10_000).step_by(32) {
                    let user = format!("user{}", i % 500);
                    let mut ws = if i % 2 == 0 {
                        device_v4(addr, &user).await
                    } else {
                        device_v3(addr, &user).await
                    };
                    match i % 3 {
                        // Vanish without a word.
                        0 => drop(ws),
                        // A clean WebSocket close.
                        1 => {
                            ws.send_raw(&common::masked(8, true, &[0x03, 0xE8])).await;
                            let _ = ws.close_code().await;
                        }
                        // Leave the namespace, then close the Engine.IO session.
                        _ => {
                            ws.send_text("41").await;
                            ws.send_text("1").await;
                            let _ = ws.close_code().await;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    eventually("rooms empty", || {
        node.hub.users() == 0 && node.hub.sockets() == 0
    })
    .await;
    eventually("sessions gone", || node.engine.sessions() == 0).await;
    eventually("tasks back to where they were", || {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    assert_eq!(node.engine.metrics().sessions_opened.get(), 10_001);
    assert_eq!(node.engine.metrics().sessions_closed(), 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_in_a_flood_arrive_once_each_and_in_order() {
    let node = start(|_| {}).await;
    let mut v4 = device_v4(node.addr, "ann").await;
    let mut v3 = device_v3(node.addr, "bob").await;
    // More than the hub lets wait for its fan-out task, pushed without yielding: the
    // first ones wait and go out together, the rest are fanned out by the pusher.
    const N: usize = 3000;
    for n in 0..N {
        let msg = herald::vocab::Message {
            id: format!("b{n}"),
            ts: 1,
            ready_us: 0,
            event: "flood".into(),
            data: serde_json::value::RawValue::from_string(n.to_string()).unwrap(),
            target: herald::vocab::Target::All,
        };
        assert_eq!(node.hub.deliver(&msg).queued, 2);
    }
    for ws in [&mut v4, &mut v3] {
        for n in 0..N {
            let expected = format!(r#"42["flood",{n},{{"id":"b{n}","ts":1}}]"#);
            let got = loop {
                let t = ws.text().await;
                // Heartbeats may come in between.
                if !(t == "2" || t == "3") {
                    break t;
                }
            };
            assert_eq!(got, expected);
        }
    }
    assert_eq!(node.hub.metrics.deliveries.get(), 2 * N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_accepted_after_a_broadcast_never_overtakes_it() {
    let node = start(|_| {}).await;
    let mut ann = device_v4(node.addr, "ann").await;
    let live = |n: usize, target: herald::vocab::Target| herald::vocab::Message {
        id: format!("m{n}"),
        ts: 1,
        ready_us: 0,
        event: "e".into(),
        data: serde_json::value::RawValue::from_string(n.to_string()).unwrap(),
        target,
    };
    // Broadcasts wait for the fan-out task; each push to ann right after one must not
    // reach her first.
    for n in 0..200 {
        let target = if n % 2 == 0 {
            herald::vocab::Target::All
        } else {
            herald::vocab::Target::Users(vec!["ann".into()])
        };
        node.hub.deliver(&live(n, target));
    }
    for n in 0..200 {
        let got = loop {
            let t = ann.text().await;
            if t != "2" {
                break t;
            }
        };
        assert_eq!(got, format!(r#"42["e",{n},{{"id":"m{n}","ts":1}}]"#));
    }
}

#[tokio::test]
async fn api_bodies_are_objects_and_the_key_scheme_takes_any_case() {
    let node = start(|c| {
        c.dev_auth = false;
        c.auth.jwt_secret = "a-secret-of-more-than-16-bytes".into();
        c.api.keys = vec!["k-0123456789abcdef".into()];
    })
    .await;
    let call = |auth: &'static str, body: &'static str| {
        let req = format!(
            "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        async move { http(node.addr, req.as_bytes()).await }
    };
    // A struct written as an array of its fields would deserialize; it is refused.
    let (status, body) = call(
        "Bearer k-0123456789abcdef",
        r#"[{"users":["arr"]},"e",{"x":1},false,null]"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("the request body must be a JSON object"),
        "{body}"
    );
    let (status, body) = call(
        "bearer k-0123456789abcdef",
        r#"{"to":{"users":["ok"]},"event":"e","data":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
