//! Delivery's rules without sockets or Redis: connections are Socket.IO sockets on
//! sessions no client polls (what they are sent stays queued for the test to read), the
//! store is an in-memory SQLite, and several nodes share a memory bus.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Delivery, Resume};
use crate::broker::memory::{MemoryBroker, MemoryBus};
use crate::broker::Broker;
use crate::hub::{Hub, HubConfig};
use crate::protocol::Socket;
use crate::store::{NewMessage, Store, StoreConfig};
use crate::transport::{Engine, EngineConfig};
use crate::vocab::{Message, Target};

struct Node {
    delivery: Arc<Delivery>,
    engine: Engine,
}

async fn store() -> Store {
    // Committed messages are routed by each test itself.
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    Store::open(
        StoreConfig {
            url: "sqlite::memory:".into(),
            ..StoreConfig::default()
        },
        tx,
    )
    .await
    .unwrap()
}

fn node(store: &Store, broker: Arc<dyn Broker>, hub: HubConfig) -> Node {
    Node {
        delivery: Delivery::new(Hub::new(hub), store.clone(), broker, true),
        engine: Engine::new(EngineConfig::default(), Vec::new()),
    }
}

impl Node {
    fn socket(&self, user: &str, resume: Resume) -> Socket {
        let s = Socket::detached(&self.engine);
        self.delivery.join(user, &s, resume).unwrap();
        s
    }
}

/// Stores `n` messages for `user` (without delivering them); returns their ids.
async fn stored(store: &Store, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let a = store
            .append(NewMessage {
                id: uuid::Uuid::now_v7().to_string(),
                ts: 1,
                event: "e".into(),
                data: format!("{{\"n\":{i}}}"),
                users: vec![user.to_owned()],
                idempotency: None,
            })
            .await
            .unwrap();
        ids.push(a.id);
    }
    ids
}

/// The live stored message with `seq` for `user`, as the dispatcher hands it over.
fn live(user: &str, seq: u64) -> Message {
    Message {
        id: format!("m{seq}"),
        ts: 1,
        ready_us: 0,
        event: "e".into(),
        data: serde_json::value::RawValue::from_string(format!("{{\"n\":{}}}", seq - 1)).unwrap(),
        target: Target::Stored(vec![(user.to_owned(), seq)]),
    }
}

/// The seqs of the stored messages queued to `socket` since the last call.
fn seqs(socket: &Socket) -> Vec<u64> {
    socket
        .session()
        .take_queued()
        .iter()
        .filter_map(|p| {
            let rest = p.strip_prefix("42")?;
            rest[..rest.find('[')?].parse().ok()
        })
        .collect()
}

/// Waits until `socket` has been sent `want` (in all, since the last call).
async fn receives(socket: &Socket, want: &[u64]) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want.len() {
        got.extend(seqs(socket));
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_resume_interleaved_with_live_messages_is_in_order_once() {
    let store = store().await;
    let n = node(
        &store,
        Arc::new(MemoryBroker::single()),
        HubConfig::default(),
    );
    stored(&store, "u", 6).await;
    let s = n.socket("u", Resume::Since(2));
    // Live copies arrive while the replay has not started: held, not sent.
    n.delivery.route(&live("u", 5));
    n.delivery.route(&live("u", 6));
    assert_eq!(seqs(&s), Vec::<u64>::new());
    n.delivery.clone().catch_up(s.clone(), "u".into(), 2).await;
    assert_eq!(seqs(&s), vec![3, 4, 5, 6]);
    // Now live; a duplicate copy is not sent again, the next one is.
    stored(&store, "u", 1).await;
    n.delivery.route(&live("u", 6));
    n.delivery.route(&live("u", 7));
    assert_eq!(seqs(&s), vec![7]);
}

#[tokio::test]
async fn live_messages_beyond_the_replay_buffer_are_read_from_the_store() {
    let store = store().await;
    let hub = HubConfig {
        max_replay_buffer: 2,
        ..HubConfig::default()
    };
    let n = node(&store, Arc::new(MemoryBroker::single()), hub);
    stored(&store, "u", 8).await;
    let s = n.socket("u", Resume::Since(0));
    for seq in 1..=8 {
        n.delivery.route(&live("u", seq));
    }
    n.delivery.clone().catch_up(s.clone(), "u".into(), 0).await;
    assert_eq!(seqs(&s), (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_gap_is_caught_up_from_the_store() {
    let store = store().await;
    let n = node(
        &store,
        Arc::new(MemoryBroker::single()),
        HubConfig::default(),
    );
    stored(&store, "u", 4).await;
    let s = n.socket("u", Resume::Live);
    n.delivery.route(&live("u", 1));
    // 2 and 3 never arrive live (another node's publish was lost, say).
    n.delivery.route(&live("u", 4));
    receives(&s, &[1, 2, 3, 4]).await;
    n.delivery.route(&live("u", 5));
    stored(&store, "u", 1).await;
    receives(&s, &[5]).await;
}

#[tokio::test]
async fn acks_count_only_for_what_the_connection_was_sent() {
    let store = store().await;
    let n = node(
        &store,
        Arc::new(MemoryBroker::single()),
        HubConfig::default(),
    );
    // The device connected once before (its position is made at connect).
    store.device_position("u", "phone").await.unwrap();
    let ids = stored(&store, "u", 5).await;
    let s = n.socket("u", Resume::Since(3));
    n.delivery.clone().catch_up(s.clone(), "u".into(), 3).await;
    assert_eq!(seqs(&s), vec![4, 5]);
    for seq in [1, 2, 4] {
        n.delivery.ack("u", &s, seq, Some("phone"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let delivered = |i: usize| {
        let (store, id) = (store.clone(), ids[i].clone());
        async move {
            let state = store.message_state(&id).await.unwrap().unwrap();
            serde_json::to_value(&state).unwrap()["recipients"][0]["deliveredAt"].is_u64()
        }
    };
    while !delivered(3).await {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in [0, 1, 2, 4] {
        assert!(!delivered(i).await, "seq {} recorded", i + 1);
    }
    // The device's position moved to what it acked.
    assert_eq!(store.device_acked("u", "phone").await.unwrap(), Some(4));
}

#[tokio::test]
async fn a_read_reaches_the_users_other_devices() {
    let store = store().await;
    let n = node(
        &store,
        Arc::new(MemoryBroker::single()),
        HubConfig::default(),
    );
    stored(&store, "u", 3).await;
    let (a, b) = (n.socket("u", Resume::Live), n.socket("u", Resume::Live));
    let other = n.socket("v", Resume::Live);
    // Clamped to the last seq.
    assert_eq!(n.delivery.read("u", 99, Some(&a)).await.unwrap(), 3);
    assert_eq!(a.session().take_queued(), Vec::<String>::new());
    assert_eq!(b.session().take_queued(), vec![r#"42["read",{"upTo":3}]"#]);
    assert_eq!(other.session().take_queued(), Vec::<String>::new());
    // Never backwards.
    assert_eq!(n.delivery.read("u", 1, None).await.unwrap(), 3);
}

#[tokio::test]
async fn nodes_on_one_bus_deliver_only_where_the_user_is() {
    let store = store().await;
    let bus = MemoryBus::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (broker, mut inbound) = MemoryBroker::join(&bus);
        let n = node(&store, Arc::new(broker), HubConfig::default());
        let (d, counted) = (
            n.delivery.clone(),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let c = counted.clone();
        tokio::spawn(async move {
            while let Some(e) = inbound.recv().await {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                d.inbound(e);
            }
        });
        nodes.push((n, counted));
    }
    stored(&store, "u", 3).await;
    let on_b = nodes[1].0.socket("u", Resume::Live);
    assert_eq!(nodes[0].0.delivery.presence("u").await, 1);
    // Entering at node A: reaches node B, and node C holds no one.
    nodes[0].0.delivery.route(&live("u", 1));
    receives(&on_b, &[1]).await;
    assert_eq!(nodes[2].1.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A message B never got (its broker dropped it) arrives on resync, from the store.
    nodes[1]
        .0
        .delivery
        .clone()
        .inbound(crate::broker::Inbound::Resync);
    receives(&on_b, &[2, 3]).await;
    bus.resync_all();
    nodes[1].0.delivery.leave("u", &on_b);
    assert_eq!(nodes[0].0.delivery.presence("u").await, 0);
}
