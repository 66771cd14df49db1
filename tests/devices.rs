//! Device positions from the first connect, the `inbox` state a connection is told
//! before anything else, and per-device receipts, through the running server, against
//! SQLite and PostgreSQL; positions also across a restart.

use std::net::SocketAddr;
use std::sync::Arc;

use herald::app::config::Config;
use herald::app::Node;
use herald::push::{PushError, PushRequest, PushService};
use herald::store::Store;
use tokio::sync::oneshot;

#[macro_use]
mod common;
use common::pg::Postgres;
use common::{http, Ws};

/// A node running on a store that outlives it.
struct Running {
    addr: SocketAddr,
    push: Arc<PushService>,
    store: Store,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn run(url: &str) -> Running {
    run_with(url, |_| {}).await
}

async fn run_with(url: &str, configure: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        dev_auth: true,
        ..Config::default()
    };
    config.store.url = url.to_owned();
    configure(&mut config);
    let node = Node::new(config).await.unwrap();
    let (push, store) = (node.push.clone(), node.store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        push,
        store,
        stop,
        done,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap();
    }

    async fn push(&self, user: &str, n: u64) -> u64 {
        let body = format!(r#"{{"to":{{"users":["{user}"]}},"event":"n","data":{n}}}"#);
        let req: PushRequest = serde_json::from_str(&body).unwrap();
        let a = self.push.push(req).await.unwrap();
        a.seqs.as_ref().and_then(|s| s.get(user).copied()).unwrap()
    }

    /// Waits until `device`'s acks up to `seq` are stored.
    async fn acked(&self, user: &str, device: &str, seq: u64) {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        while self.store.device_acked(user, device).await.unwrap() != Some(seq) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{device}'s ack of {seq} not stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A fixture: the store's URL and what keeps it alive.
struct Fixture {
    url: String,
    _dir: tempfile::TempDir,
    _pg: Option<Postgres>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        url: format!("sqlite:{}/herald.db", dir.path().display()),
        _dir: dir,
        _pg: None,
    }
}

async fn postgres() -> Fixture {
    let pg = Postgres::start();
    Fixture {
        url: pg.database("herald_devices"),
        _dir: tempfile::tempdir().unwrap(),
        _pg: Some(pg),
    }
}

both!(
    a_new_device_gets_what_arrived_while_it_was_away,
    two_devices_resume_each_from_their_own_position,
    since_wins_over_the_device_position,
    a_device_position_survives_a_restart,
    the_inbox_state_comes_first_then_the_replay,
    each_device_that_acked_is_listed_in_the_message_state,
    a_client_inventing_device_ids_cannot_grow_the_devices_kept,
);

/// The `inbox` state the connection was told at connect.
fn inbox(ws: &Ws) -> serde_json::Value {
    ws.inbox.clone().expect("connected with Ws::device")
}

/// Reads `n` stored messages; returns their seqs.
async fn seqs(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let t = ws.text().await;
        let Some(rest) = t.strip_prefix("42") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(seq) = digits.parse() {
            out.push(seq);
        }
    }
    out
}

/// Asserts nothing stored arrives for a moment (a push to another user marks the end).
async fn nothing_more(s: &Running, ws: &mut Ws, user: &str) {
    // A volatile push to the same user is live-only; it arrives after anything queued.
    let body = format!(r#"{{"to":{{"users":["{user}"]}},"event":"end","data":0,"volatile":true}}"#);
    s.push
        .push(serde_json::from_str(&body).unwrap())
        .await
        .unwrap();
    loop {
        let t = ws.text().await;
        if t.starts_with(r#"42["end""#) {
            return;
        }
        assert!(!t.starts_with("42"), "unexpected: {t}");
    }
}

async fn a_new_device_gets_what_arrived_while_it_was_away(f: Fixture) {
    let s = run(&f.url).await;
    // As the issue tells it: a new device connects, acks nothing, goes away.
    let ws = Ws::device(s.addr, r#"{"userId":"al","deviceId":"tablet"}"#).await;
    assert_eq!(inbox(&ws)["lastSeq"], 0);
    drop(ws);
    s.push("al", 1).await;
    s.push("al", 2).await;
    let mut ws = Ws::device(s.addr, r#"{"userId":"al","deviceId":"tablet"}"#).await;
    assert_eq!(
        inbox(&ws),
        serde_json::json!({"unread": 2, "lastSeq": 2, "readUpTo": 0})
    );
    assert_eq!(seqs(&mut ws, 2).await, vec![1, 2]);
    nothing_more(&s, &mut ws, "al").await;
    // Still unacked: it comes back to the same again.
    drop(ws);
    let mut ws = Ws::device(s.addr, r#"{"userId":"al","deviceId":"tablet"}"#).await;
    assert_eq!(seqs(&mut ws, 2).await, vec![1, 2]);
    s.stop().await;
}

async fn two_devices_resume_each_from_their_own_position(f: Fixture) {
    let s = run(&f.url).await;
    s.push("bo", 1).await;
    // Both first seen now, at seq 1: neither gets it.
    let mut phone = Ws::device(s.addr, r#"{"userId":"bo","deviceId":"phone"}"#).await;
    let mut tablet = Ws::device(s.addr, r#"{"userId":"bo","deviceId":"tablet"}"#).await;
    assert_eq!(inbox(&phone)["lastSeq"], 1);
    assert_eq!(inbox(&tablet)["lastSeq"], 1);
    s.push("bo", 2).await;
    s.push("bo", 3).await;
    assert_eq!(seqs(&mut phone, 2).await, vec![2, 3]);
    assert_eq!(seqs(&mut tablet, 2).await, vec![2, 3]);
    phone.send_text("432[]").await;
    phone.send_text("433[]").await;
    s.acked("bo", "phone", 3).await;
    drop((phone, tablet));
    s.push("bo", 4).await;
    let mut phone = Ws::device(s.addr, r#"{"userId":"bo","deviceId":"phone"}"#).await;
    assert_eq!(seqs(&mut phone, 1).await, vec![4]);
    nothing_more(&s, &mut phone, "bo").await;
    let mut tablet = Ws::device(s.addr, r#"{"userId":"bo","deviceId":"tablet"}"#).await;
    assert_eq!(seqs(&mut tablet, 3).await, vec![2, 3, 4]);
    s.stop().await;
}

async fn since_wins_over_the_device_position(f: Fixture) {
    let s = run(&f.url).await;
    for n in 1..=3 {
        s.push("cy", n).await;
    }
    let mut ws = Ws::device(s.addr, r#"{"userId":"cy","deviceId":"tv"}"#).await;
    assert_eq!(inbox(&ws)["lastSeq"], 3);
    nothing_more(&s, &mut ws, "cy").await;
    drop(ws);
    let mut ws = Ws::device(s.addr, r#"{"userId":"cy","deviceId":"tv","since":1}"#).await;
    assert_eq!(seqs(&mut ws, 2).await, vec![2, 3]);
    s.stop().await;
}

async fn a_device_position_survives_a_restart(f: Fixture) {
    let s = run(&f.url).await;
    s.push("di", 1).await;
    let ws = Ws::device(s.addr, r#"{"userId":"di","deviceId":"laptop"}"#).await;
    drop(ws);
    s.stop().await;
    let s = run(&f.url).await;
    s.push("di", 2).await;
    let mut ws = Ws::device(s.addr, r#"{"userId":"di","deviceId":"laptop"}"#).await;
    assert_eq!(inbox(&ws)["lastSeq"], 2);
    assert_eq!(seqs(&mut ws, 1).await, vec![2]);
    nothing_more(&s, &mut ws, "di").await;
    s.stop().await;
}

async fn the_inbox_state_comes_first_then_the_replay(f: Fixture) {
    let s = run(&f.url).await;
    for n in 1..=3 {
        s.push("ed", n).await;
    }
    s.store.mark_read("ed", 1).await.unwrap();
    let mut ws = Ws::device(s.addr, r#"{"userId":"ed","since":0}"#).await;
    // Told before the replay (`Ws::device` fails on an event before `inbox`).
    assert_eq!(
        inbox(&ws),
        serde_json::json!({"lastSeq": 3, "readUpTo": 1, "unread": 2})
    );
    assert_eq!(seqs(&mut ws, 3).await, vec![1, 2, 3]);
    // A `since` past the end (the client's inbox was reset): told lastSeq, sent nothing
    // old; the next push follows.
    let mut ahead = Ws::device(s.addr, r#"{"userId":"ed","since":10}"#).await;
    assert_eq!(inbox(&ahead)["lastSeq"], 3);
    s.push("ed", 4).await;
    assert_eq!(seqs(&mut ahead, 1).await, vec![4]);
    // A plain live connection is told too.
    let live = Ws::device(s.addr, r#"{"userId":"ed"}"#).await;
    assert_eq!(inbox(&live)["lastSeq"], 4);
    // `inbox` is herald's: the push API refuses it as an event name.
    let err = s
        .push
        .push(serde_json::from_str(r#"{"to":{"users":["ed"]},"event":"inbox","data":1}"#).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PushError::Invalid(ref m) if m.contains("reserved")),
        "{err}"
    );
    s.stop().await;
}

async fn each_device_that_acked_is_listed_in_the_message_state(f: Fixture) {
    let s = run(&f.url).await;
    let mut phone = Ws::device(s.addr, r#"{"userId":"fay","deviceId":"phone"}"#).await;
    let mut tablet = Ws::device(s.addr, r#"{"userId":"fay","deviceId":"tablet"}"#).await;
    let mut plain = Ws::device(s.addr, r#"{"userId":"fay"}"#).await;
    let body = r#"{"to":{"users":["fay","gus"]},"event":"n","data":1}"#;
    let a = s
        .push
        .push(serde_json::from_str(body).unwrap())
        .await
        .unwrap();
    let id = a.id.clone();
    for ws in [&mut phone, &mut tablet, &mut plain] {
        assert_eq!(seqs(ws, 1).await, vec![1]);
    }
    // The connection without a deviceId acks first: the copy is delivered, but it is no
    // device, so it is not listed.
    plain.send_text("431[]").await;
    phone.send_text("431[]").await;
    s.acked("fay", "phone", 1).await;
    tablet.send_text("431[]").await;
    s.acked("fay", "tablet", 1).await;
    // A second ack from the same device changes nothing.
    phone.send_text("431[]").await;
    s.store.mark_read("nobody", 0).await.unwrap();
    let req = format!("GET /api/v1/messages/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, text) = http(s.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fay = &state["recipients"][0];
    assert_eq!(fay["user"], "fay");
    let devices = fay["devices"].as_array().unwrap();
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["phone", "tablet"], "{state}");
    // The first ack (the plain connection's) is the copy's delivery.
    assert!(fay["deliveredAt"].as_u64().unwrap() <= devices[0]["ackedAt"].as_u64().unwrap());
    assert!(devices
        .iter()
        .all(|d| d["ackedAt"].as_u64().unwrap() >= a.ts));
    // A recipient no device acked lists none.
    let gus = &state["recipients"][1];
    assert_eq!(gus["user"], "gus");
    assert_eq!(gus["devices"], serde_json::json!([]));
    assert!(gus.get("deliveredAt").is_none());
    s.stop().await;
}

async fn a_client_inventing_device_ids_cannot_grow_the_devices_kept(f: Fixture) {
    let s = run_with(&f.url, |c| c.store.max_devices_per_user = 3).await;
    s.push("ivy", 1).await;
    // Over real sockets, one new deviceId after another.
    for i in 0..12 {
        let ws = Ws::device(s.addr, &format!(r#"{{"userId":"ivy","deviceId":"d{i}"}}"#)).await;
        assert_eq!(inbox(&ws)["lastSeq"], 1);
    }
    let mut kept = 0;
    for i in 0..12 {
        if s.store
            .device_acked("ivy", &format!("d{i}"))
            .await
            .unwrap()
            .is_some()
        {
            kept += 1;
        }
    }
    assert_eq!(kept, 3);
    // A healthy client of another user is served meanwhile.
    let mut ok = Ws::device(s.addr, r#"{"userId":"joe","deviceId":"phone"}"#).await;
    s.push("joe", 1).await;
    assert_eq!(seqs(&mut ok, 1).await, vec![1]);
    s.stop().await;
}
