//! Several herald nodes through a redis-server and a PostgreSQL the tests start: pushes
//! reach exactly the nodes holding their users, broadcasts every node once, a Redis
//! restart loses nothing, a killed node leaves presence by itself, and all of it works
//! through a Redis Cluster too.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald::app::config::Config;
use herald::app::Node;
use herald::broker::redis::RedisBroker;
use herald::broker::resp::Commands;
use herald::push::{PushRequest, PushService};
use tokio::sync::oneshot;

mod common;
use common::pg::Postgres;
use common::redis::{Redis, RedisCluster};
use common::{http, Ws, WAIT};

struct Running {
    addr: SocketAddr,
    push: Arc<PushService>,
    cluster: RedisBroker,
    _stop: oneshot::Sender<()>,
}

async fn node(id: &str, redis: &str, pg: &str) -> Running {
    let mut config = Config {
        dev_auth: true,
        ..Config::default()
    };
    config.store.url = pg.to_owned();
    config.cluster.redis = redis.to_owned();
    config.cluster.node_id = id.to_owned();
    config.cluster.presence_ttl_secs = 3;
    let node = Node::new(config).await.unwrap();
    let push = node.push.clone();
    let cluster = node.cluster.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    eventually("node connected to Redis", || cluster.is_up()).await;
    Running {
        addr,
        push,
        cluster,
        _stop: stop,
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` nodes subscribe to a user's channel.
async fn subscribed(redis: &Redis, user: &str, n: i64) {
    let (cmds, _) = Commands::connect(&format!("127.0.0.1:{}", redis.port))
        .await
        .unwrap();
    let channel = format!("herald:u:{user}");
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let r = cmds
            .call(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()])
            .await
            .unwrap()
            .into_array();
        if r.get(1).and_then(|v| v.as_int()) == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} not on {n} nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn req(json: &str) -> PushRequest {
    serde_json::from_str(json).unwrap()
}

/// The next event packet, skipping pings.
/// The next event, past herald's `inbox` state at connect.
async fn event(ws: &mut Ws) -> String {
    loop {
        let t = ws.text().await;
        if t.starts_with("42") && !t.starts_with(r#"42["inbox","#) {
            return t;
        }
    }
}

fn seq_of(packet: &str) -> Option<u64> {
    let d: String = packet[2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    d.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_costs_work_only_on_the_nodes_holding_its_user() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_a");
    let n1 = node("n1", &redis.url(), &url).await;
    let n2 = node("n2", &redis.url(), &url).await;
    let n3 = node("n3", &redis.url(), &url).await;

    let mut a1 = Ws::device(n1.addr, r#"{"userId":"ann"}"#).await;
    let mut a2 = Ws::device(n2.addr, r#"{"userId":"ann"}"#).await;
    let mut b1 = Ws::device(n1.addr, r#"{"userId":"ben"}"#).await;
    subscribed(&redis, "ann", 2).await;
    subscribed(&redis, "ben", 1).await;

    // Pushed on node 3, which holds neither user: both of ann's devices get it.
    let r = n3
        .push
        .push(req(r#"{"to":{"users":["ann"]},"event":"n","data":1}"#))
        .await
        .unwrap();
    let seq = r.seqs.unwrap()["ann"];
    for ws in [&mut a1, &mut a2] {
        let got = event(ws).await;
        assert_eq!(seq_of(&got), Some(seq), "{got}");
    }

    // Ben is held by node 1 only: node 2 receives nothing for him.
    let before = n2.cluster.metrics().received.get();
    for i in 0..20 {
        let body = format!(r#"{{"to":{{"users":["ben"]}},"event":"n","data":{i}}}"#);
        n3.push.push(req(&body)).await.unwrap();
    }
    for i in 1..=20 {
        assert_eq!(seq_of(&event(&mut b1).await), Some(i));
    }
    assert_eq!(n2.cluster.metrics().received.get(), before);
    assert_eq!(
        n3.cluster.metrics().received.get(),
        0,
        "the entry node delivers itself"
    );

    // Presence is cluster-wide, from any node.
    let (status, body) = http(
        n3.addr,
        b"GET /api/v1/users/ann/presence HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"online": true, "connections": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_device_on_every_node_once() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_b");
    let nodes = [
        node("b1", &redis.url(), &url).await,
        node("b2", &redis.url(), &url).await,
        node("b3", &redis.url(), &url).await,
    ];
    let mut devices = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            devices.push(Ws::device(n.addr, &format!(r#"{{"userId":"u{i}{j}"}}"#)).await);
        }
    }
    for i in 0..3 {
        for j in 0..2 {
            subscribed(&redis, &format!("u{i}{j}"), 1).await;
        }
    }
    for round in 1..=2 {
        let body = format!(r#"{{"to":{{"all":true}},"event":"all","data":{round}}}"#);
        nodes[0].push.push(req(&body)).await.unwrap();
    }
    // Each device sees broadcast 1, then 2: none is missing or doubled.
    for ws in devices.iter_mut() {
        assert!(event(ws).await.starts_with(r#"42["all",1,"#));
        assert!(event(ws).await.starts_with(r#"42["all",2,"#));
    }
    assert_eq!(nodes[1].cluster.metrics().received.get(), 2);
    assert_eq!(nodes[2].cluster.metrics().received.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    let mut redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_c");
    let n1 = node("c1", &redis.url(), &url).await;
    let n2 = node("c2", &redis.url(), &url).await;
    // A device that has seen nothing yet, and one that resumes from the start.
    let mut live = Ws::device(n2.addr, r#"{"userId":"cal"}"#).await;
    let mut resumed = Ws::device(n2.addr, r#"{"userId":"cal","since":0}"#).await;
    subscribed(&redis, "cal", 1).await;
    const N: u64 = 300;
    let push = n1.push.clone();
    let (third_tx, third) = oneshot::channel();
    let stream = tokio::spawn(async move {
        let mut third_tx = Some(third_tx);
        for i in 1..=N {
            let body = format!(r#"{{"to":{{"users":["cal"]}},"event":"n","data":{i}}}"#);
            // Every push is accepted, Redis or not: it is stored first.
            push.push(req(&body)).await.unwrap();
            if i == N / 3 {
                let _ = third_tx.take().map(|t| t.send(()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    third.await.unwrap();
    redis.down();
    eventually("node 2 sees Redis gone", || !n2.cluster.is_up()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.up();
    eventually("node 2 back", || n2.cluster.is_up()).await;
    eventually("node 1 back", || n1.cluster.is_up()).await;
    stream.await.unwrap();
    for ws in [&mut resumed, &mut live] {
        let mut seqs = Vec::new();
        while seqs.last() != Some(&N) {
            if let Some(s) = seq_of(&event(ws).await) {
                seqs.push(s);
            }
        }
        // The live device started at its first message; from there on, nothing is
        // missing or doubled.
        let first = seqs[0];
        assert_eq!(seqs, (first..=N).collect::<Vec<_>>());
    }
    assert!(
        n1.cluster.metrics().publish_failures.get() > 0,
        "the outage was real"
    );
}

/// Starts the herald binary as a cluster node.
fn herald(redis: &str, pg: &str, id: &str) -> (Child, SocketAddr) {
    let mut child = common::herald_cmd()
        .args(["serve", "--dev-auth", "--listen", "127.0.0.1:0"])
        .env("HERALD_LOG", "warn")
        .env("HERALD_CLUSTER_REDIS", redis)
        .env("HERALD_CLUSTER_NODE_ID", id)
        .env("HERALD_CLUSTER_PRESENCE_TTL_SECS", "3")
        .env("HERALD_STORE_URL", pg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald binary");
    let addr = common::listening_addr(&mut child);
    (child, addr)
}

async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (_, body) = http(addr, req.as_bytes()).await;
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_presence_and_its_clients_resume_elsewhere() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_d");
    let (mut doomed, doomed_addr) = herald(&redis.url(), &url, "doomed");
    let (mut other, other_addr) = herald(&redis.url(), &url, "other");
    let mut ws = Ws::device(doomed_addr, r#"{"userId":"dee"}"#).await;
    subscribed(&redis, "dee", 1).await;
    let push = |i: u64| {
        let body = format!(r#"{{"to":{{"users":["dee"]}},"event":"n","data":{i}}}"#);
        format!(
            "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, _) = http(other_addr, push(1).as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(seq_of(&event(&mut ws).await), Some(1));
    let p = get_json(other_addr, "/api/v1/users/dee/presence").await;
    assert_eq!(p["connections"], 1);

    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();
    let killed_at = tokio::time::Instant::now();
    // Pushes while the device is away are stored.
    for i in 2..=4 {
        let (status, _) = http(other_addr, push(i).as_bytes()).await;
        assert_eq!(status, 200);
    }
    loop {
        let p = get_json(other_addr, "/api/v1/users/dee/presence").await;
        if p["connections"] == 0 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "presence still {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The client comes back on the other node with since and misses nothing.
    let mut ws = Ws::device(other_addr, r#"{"userId":"dee","since":1}"#).await;
    for i in 2..=4 {
        assert_eq!(seq_of(&event(&mut ws).await), Some(i));
    }
    // The janitor removes what the dead node left in Redis.
    let (cmds, _) = Commands::connect(&format!("127.0.0.1:{}", redis.port))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = cmds
            .call(&[
                b"EXISTS",
                b"{herald}:node:doomed:users",
                b"{herald}:node:doomed",
            ])
            .await
            .unwrap()
            .as_int();
        let field = cmds
            .call(&[b"HEXISTS", b"{herald}:presence:dee", b"doomed"])
            .await
            .unwrap()
            .as_int();
        if left == Some(0) && field == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead node's keys left behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.kill().unwrap();
    other.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_work_through_a_redis_cluster() {
    let redis = RedisCluster::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_rc");
    // Each node is given a different Redis node: herald's keys live on one of them, so
    // at least two herald nodes must follow a MOVED redirection for their commands.
    let n1 = node("rc1", &redis.url(0), &url).await;
    let n2 = node("rc2", &redis.url(1), &url).await;
    let n3 = node("rc3", &redis.url(2), &url).await;
    let mut a1 = Ws::device(n1.addr, r#"{"userId":"ann"}"#).await;
    let mut a2 = Ws::device(n2.addr, r#"{"userId":"ann"}"#).await;

    // Presence is kept in Redis and read cluster-wide, from a third node.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while get_json(n3.addr, "/api/v1/users/ann/presence").await
        != serde_json::json!({"online": true, "connections": 2})
    {
        assert!(tokio::time::Instant::now() < deadline, "presence never 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Live pushes from node 3 reach both nodes once their subscriptions are in place.
    let mut got = [false, false];
    while got != [true, true] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live push through the cluster"
        );
        n3.push
            .push(req(
                r#"{"to":{"users":["ann"]},"event":"probe","data":0,"volatile":true}"#,
            ))
            .await
            .unwrap();
        for (i, ws) in [&mut a1, &mut a2].into_iter().enumerate() {
            if !got[i] {
                got[i] = tokio::time::timeout(Duration::from_millis(200), event(ws))
                    .await
                    .is_ok();
            }
        }
    }
    let r = n3
        .push
        .push(req(r#"{"to":{"users":["ann"]},"event":"n","data":1}"#))
        .await
        .unwrap();
    let seq = r.seqs.unwrap()["ann"];
    for ws in [&mut a1, &mut a2] {
        let got = loop {
            let e = event(ws).await;
            if !e.starts_with(r#"42["probe""#) {
                break e;
            }
        };
        assert_eq!(seq_of(&got), Some(seq), "{got}");
    }
    // Node 1's connection leaves: presence follows.
    drop(a1);
    while get_json(n3.addr, "/api/v1/users/ann/presence").await["connections"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "presence never 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(n1.cluster.is_up() && n2.cluster.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_position_is_shared_by_the_nodes() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.database("herald_cluster_devices");
    let n1 = node("p1", &redis.url(), &url).await;
    let n2 = node("p2", &redis.url(), &url).await;
    // First seen on node 1, at seq 0; gone before anything is pushed.
    let ws = Ws::device(n1.addr, r#"{"userId":"gil","deviceId":"tab"}"#).await;
    assert_eq!(ws.inbox.as_ref().unwrap()["lastSeq"], 0);
    drop(ws);
    for i in 1..=2 {
        let body = format!(r#"{{"to":{{"users":["gil"]}},"event":"n","data":{i}}}"#);
        n1.push.push(req(&body)).await.unwrap();
    }
    // Back on node 2: it finds the position node 1 stored.
    let mut ws = Ws::device(n2.addr, r#"{"userId":"gil","deviceId":"tab"}"#).await;
    assert_eq!(seq_of(&event(&mut ws).await), Some(1));
    assert_eq!(seq_of(&event(&mut ws).await), Some(2));
}
