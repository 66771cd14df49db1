//! The durable inbox through the running server, against SQLite and PostgreSQL: stored
//! pushes with seq and acks, resume with `since` while pushes stream in, read state
//! across devices, bad input, and a SIGKILL in the middle of a stream.

use std::net::SocketAddr;
use std::sync::Arc;

use herald::app::config::Config;
use herald::app::Node;
use herald::push::{PushRequest, PushService};
use herald::store::Store;
use tokio::sync::oneshot;

#[macro_use]
mod common;
use common::pg::Postgres;
use common::{http, Ws};

struct Running {
    addr: SocketAddr,
    push: Arc<PushService>,
    store: Store,
    _stop: oneshot::Sender<()>,
    _pg: Option<Postgres>,
}

async fn start(url: String, pg: Option<Postgres>) -> Running {
    let mut config = Config {
        dev_auth: true,
        ..Config::default()
    };
    config.store.url = url;
    let node = Node::new(config).await.unwrap();
    let (push, store) = (node.push.clone(), node.store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        push,
        store,
        _stop: stop,
        _pg: pg,
    }
}

async fn sqlite() -> Running {
    start("sqlite::memory:".into(), None).await
}

async fn postgres() -> Running {
    let pg = Postgres::start();
    let url = pg.database("herald_inbox");
    start(url, Some(pg)).await
}

both!(
    a_stored_push_carries_its_seq_and_an_ack_marks_it_delivered,
    resuming_while_a_thousand_pushes_stream_in_sees_each_seq_once_in_order,
    reading_on_one_device_tells_the_others,
    a_device_resumes_after_what_it_acknowledged,
    bad_resume_and_read_input_is_refused_or_clamped,
    inbox_api,
);

fn req(json: &str) -> PushRequest {
    serde_json::from_str(json).unwrap()
}

/// Reads stored pushes (`42<seq>[...]`) until `n` have arrived; returns their seqs and
/// the texts. Other packets (pings, read events) are skipped.
async fn stored(ws: &mut Ws, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let t = ws.text().await;
        let Some(rest) = t.strip_prefix("42") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(seq) = digits.parse() {
            out.push((seq, t));
        }
    }
    out
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(addr, req.as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn a_stored_push_carries_its_seq_and_an_ack_marks_it_delivered(s: Running) {
    let mut ws = Ws::device(s.addr, r#"{"userId":"ann"}"#).await;
    let (status, answer) = api(
        s.addr,
        "POST",
        "/api/v1/push",
        r#"{"to":{"users":["ann"]},"event":"note","data":{"x":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seqs"]["ann"], 1);
    let id = answer["id"].as_str().unwrap().to_owned();
    let ts = answer["ts"].as_u64().unwrap();
    assert_eq!(
        ws.text().await,
        format!(r#"421["note",{{"x":1}},{{"id":"{id}","seq":1,"ts":{ts}}}]"#)
    );
    let (_, state) = api(s.addr, "GET", &format!("/api/v1/messages/{id}"), "").await;
    assert!(
        state["recipients"][0].get("deliveredAt").is_none(),
        "{state}"
    );
    ws.send_text("431[]").await;
    // The ack is recorded asynchronously; wait for it with a deadline.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, state) = api(s.addr, "GET", &format!("/api/v1/messages/{id}"), "").await;
        if state["recipients"][0]["deliveredAt"].is_u64() {
            assert_eq!(state["recipients"][0]["user"], "ann");
            assert_eq!(state["recipients"][0]["seq"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack not recorded: {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn resuming_while_a_thousand_pushes_stream_in_sees_each_seq_once_in_order(s: Running) {
    const N: u64 = 1000;
    let push = s.push.clone();
    let (started_tx, started) = oneshot::channel();
    let stream = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        for i in 1..=N {
            let body = format!(r#"{{"to":{{"users":["bob"]}},"event":"n","data":{i}}}"#);
            push.push(req(&body)).await.unwrap();
            if i == 100 {
                let _ = started_tx.take().map(|t| t.send(()));
            }
        }
    });
    // Join mid-stream, asking for everything since the start.
    started.await.unwrap();
    let mut ws = Ws::device(s.addr, r#"{"userId":"bob","since":0}"#).await;
    let got = stored(&mut ws, N as usize).await;
    stream.await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    // The data follows the seq: message i carries data i.
    for (seq, text) in &got {
        assert!(text.contains(&format!(r#"["n",{seq},"#)), "{text}");
    }
}

async fn reading_on_one_device_tells_the_others(s: Running) {
    let mut phone = Ws::device(s.addr, r#"{"userId":"cat"}"#).await;
    let mut laptop = Ws::device(s.addr, r#"{"userId":"cat"}"#).await;
    for i in 1..=3 {
        let body = format!(r#"{{"to":{{"users":["cat"]}},"event":"n","data":{i}}}"#);
        s.push.push(req(&body)).await.unwrap();
    }
    stored(&mut phone, 3).await;
    stored(&mut laptop, 3).await;
    // The phone reads up to 2, asking for an ack with the stored position.
    phone.send_text(r#"4277["read",{"upTo":2}]"#).await;
    assert_eq!(phone.text().await, r#"4377[{"upTo":2}]"#);
    assert_eq!(laptop.text().await, r#"42["read",{"upTo":2}]"#);
    let u = s.store.unread("cat").await.unwrap();
    assert_eq!((u.unread, u.read_up_to, u.last_seq), (1, 2, 3));
    // The API reads too, and every device hears of it.
    let (status, body) = api(s.addr, "POST", "/api/v1/users/cat/read", r#"{"upTo":99}"#).await;
    assert_eq!((status, &body), (200, &serde_json::json!({"upTo": 3})));
    assert_eq!(phone.text().await, r#"42["read",{"upTo":3}]"#);
    assert_eq!(laptop.text().await, r#"42["read",{"upTo":3}]"#);
    let (_, unread) = api(s.addr, "GET", "/api/v1/users/cat/unread", "").await;
    assert_eq!(
        unread,
        serde_json::json!({"unread": 0, "lastSeq": 3, "readUpTo": 3})
    );
}

async fn a_device_resumes_after_what_it_acknowledged(s: Running) {
    let mut ws = Ws::device(s.addr, r#"{"userId":"dan","deviceId":"tablet"}"#).await;
    for i in 1..=3 {
        let body = format!(r#"{{"to":{{"users":["dan"]}},"event":"n","data":{i}}}"#);
        s.push.push(req(&body)).await.unwrap();
    }
    stored(&mut ws, 3).await;
    ws.send_text("431[]").await;
    ws.send_text("432[]").await;
    // Wait until the acks are in: a read commits after them.
    s.store.mark_read("dan", 0).await.unwrap();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while s.store.device_acked("dan", "tablet").await.unwrap() != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "acks not recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(ws);
    for i in 4..=5 {
        let body = format!(r#"{{"to":{{"users":["dan"]}},"event":"n","data":{i}}}"#);
        s.push.push(req(&body)).await.unwrap();
    }
    // Back without `since`: everything after seq 2.
    let mut ws = Ws::device(s.addr, r#"{"userId":"dan","deviceId":"tablet"}"#).await;
    let seqs: Vec<u64> = stored(&mut ws, 3).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    // A new device starts live: its first message is the next push.
    let mut fresh = Ws::device(s.addr, r#"{"userId":"dan","deviceId":"watch"}"#).await;
    s.push
        .push(req(r#"{"to":{"users":["dan"]},"event":"n","data":6}"#))
        .await
        .unwrap();
    assert_eq!(stored(&mut fresh, 1).await[0].0, 6);
}

async fn bad_resume_and_read_input_is_refused_or_clamped(s: Running) {
    for (auth, error) in [
        (r#"{"userId":"eve","since":-1}"#, "invalid since"),
        (r#"{"userId":"eve","since":"abc"}"#, "invalid since"),
        (r#"{"userId":"eve","since":1.5}"#, "invalid since"),
        (
            r#"{"userId":"eve","since":99999999999999999999999}"#,
            "invalid since",
        ),
        // Only a string names a device; null is no device (below).
        (
            r#"{"userId":"eve","deviceId":5}"#,
            "invalid deviceId: expected a string, got `5`",
        ),
        (
            r#"{"userId":"eve","deviceId":{"a":1}}"#,
            "invalid deviceId: expected a string",
        ),
        (
            r#"{"userId":"eve","deviceId":""}"#,
            "invalid deviceId: empty",
        ),
        // 128 bytes at most: 32 four-byte characters pass, 33 do not.
        (
            &format!(r#"{{"userId":"eve","deviceId":"{}"}}"#, "😀".repeat(33)),
            "invalid deviceId: longer than 128 bytes",
        ),
    ] {
        let mut ws = Ws::connect(s.addr, "EIO=4&transport=websocket").await;
        ws.text().await;
        ws.send_text(&format!("40{auth}")).await;
        let answer = ws.text().await;
        assert!(
            answer.starts_with("44{\"message\":\"") && answer.contains(error),
            "{auth}: {answer}"
        );
    }
    let ok = Ws::device(
        s.addr,
        &format!(r#"{{"userId":"eve","deviceId":"{}"}}"#, "😀".repeat(32)),
    )
    .await;
    drop(ok);
    // JSON null is the same as leaving it out: no device, live only.
    let ws = Ws::device(s.addr, r#"{"userId":"eve","deviceId":null,"since":null}"#).await;
    drop(ws);
    assert_eq!(s.store.device_acked("eve", "null").await.unwrap(), None);
    // A since beyond the last seq replays nothing, then the next push arrives.
    s.push
        .push(req(r#"{"to":{"users":["eve"]},"event":"n","data":1}"#))
        .await
        .unwrap();
    let mut ws = Ws::device(s.addr, r#"{"userId":"eve","since":18446744073709551615}"#).await;
    s.push
        .push(req(r#"{"to":{"users":["eve"]},"event":"n","data":2}"#))
        .await
        .unwrap();
    assert_eq!(stored(&mut ws, 1).await[0].0, 2);
    // A read without a number is answered with an error and changes nothing.
    ws.send_text(r#"425["read",{"upTo":"all"}]"#).await;
    let answer = ws.text().await;
    assert!(answer.starts_with("435[{\"error\""), "{answer}");
    assert_eq!(s.store.unread("eve").await.unwrap().read_up_to, 0);
    // A read beyond the last seq is clamped to it.
    ws.send_text(r#"426["read",{"upTo":1000}]"#).await;
    assert_eq!(ws.text().await, r#"436[{"upTo":2}]"#);
    // Acks for seqs never sent are ignored.
    ws.send_text("4399[]").await;
    ws.send_text(r#"427["read",{"upTo":0}]"#).await;
    assert_eq!(ws.text().await, r#"437[{"upTo":2}]"#);
    assert!(s
        .store
        .messages("eve", 0, 10)
        .await
        .unwrap()
        .iter()
        .all(|m| m.delivered_at.is_none()));
}

async fn inbox_api(s: Running) {
    for i in 1..=5 {
        let body = format!(r#"{{"to":{{"users":["fay","gus"]}},"event":"n","data":{i}}}"#);
        s.push.push(req(&body)).await.unwrap();
    }
    let (status, page) = api(
        s.addr,
        "GET",
        "/api/v1/users/fay/messages?after=2&limit=2",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(page["messages"][0]["data"], 3);
    assert_eq!(page["messages"][0]["event"], "n");
    for bad in ["after=-1", "after=abc", "limit=0", "limit=x"] {
        let (status, body) = api(
            s.addr,
            "GET",
            &format!("/api/v1/users/fay/messages?{bad}"),
            "",
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, body) = api(s.addr, "GET", "/api/v1/messages/nope", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = api(s.addr, "POST", "/api/v1/users/fay/read", r#"{"upTo":-3}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // An idempotency key reused with another body is a conflict, and stores nothing.
    let first = r#"{"to":{"users":["fay"]},"event":"n","data":1,"idempotencyKey":"k"}"#;
    let (status, a) = api(s.addr, "POST", "/api/v1/push", first).await;
    assert_eq!(status, 200);
    let (_, b) = api(s.addr, "POST", "/api/v1/push", first).await;
    assert_eq!(a, b);
    let other = r#"{"to":{"users":["fay"]},"event":"n","data":2,"idempotencyKey":"k"}"#;
    let (status, body) = api(s.addr, "POST", "/api/v1/push", other).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    assert_eq!(s.store.unread("fay").await.unwrap().last_seq, 6);
}
