//! The store's contract, run against both backends: SQLite (embedded) and a PostgreSQL
//! server the test starts itself.

use std::sync::Arc;

use herald::store::{NewMessage, Retention, Store, StoreConfig, StoreError};
use herald::vocab::{Message, Target};
use tokio::sync::mpsc;

#[macro_use]
mod common;
use common::pg::Postgres;

/// A store under test, and the PostgreSQL server behind it if any.
struct Fixture {
    store: Store,
    committed: mpsc::Receiver<Arc<Message>>,
    /// What the store was opened with, to open it again.
    url: String,
    _dir: Option<Arc<tempfile::TempDir>>,
    _pg: Option<Arc<Postgres>>,
}

impl Fixture {
    /// Closes the store and opens the same database again, as a restart does.
    async fn reopen(self) -> Fixture {
        let Fixture {
            store,
            url,
            _dir,
            _pg,
            ..
        } = self;
        drop(store);
        // The old writer finishes its last commit and lets go of the database.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        open(url, _dir, _pg).await
    }
}

async fn open(
    url: String,
    dir: Option<Arc<tempfile::TempDir>>,
    pg: Option<Arc<Postgres>>,
) -> Fixture {
    let (tx, rx) = mpsc::channel(100_000);
    let store = Store::open(
        StoreConfig {
            url: url.clone(),
            data_dir: dir
                .as_ref()
                .map(|d| d.path().to_string_lossy().into_owned())
                .unwrap_or_default(),
            max_page: 1000,
            max_page_bytes: 64 << 10,
            max_devices_per_user: 3,
            ..StoreConfig::default()
        },
        tx,
    )
    .await
    .unwrap();
    Fixture {
        store,
        committed: rx,
        url,
        _dir: dir,
        _pg: pg,
    }
}

async fn sqlite() -> Fixture {
    // A data directory rather than `:memory:`, so that a test can reopen it.
    let dir = tempfile::tempdir().unwrap();
    open(String::new(), Some(Arc::new(dir)), None).await
}

async fn postgres() -> Fixture {
    let pg = Postgres::start();
    let url = pg.database("herald_test");
    open(url, None, Some(Arc::new(pg))).await
}

fn msg(n: u64, users: &[&str]) -> NewMessage {
    let mut users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    users.sort();
    users.dedup();
    NewMessage {
        id: format!("m{n:06}"),
        ts: 1_000_000 + n,
        event: "e".into(),
        data: format!("{{\"n\":{n}}}"),
        users,
        idempotency: None,
    }
}

both!(
    seq_is_gapless_and_ordered_under_concurrent_pushes,
    idempotency_keys_return_the_first_answer,
    read_state_clamps_and_never_goes_back,
    acks_record_delivery_and_device_position,
    devices_per_user_are_bounded_and_the_furthest_behind_goes,
    retention_removes_old_and_excess_messages,
    seqs_outlive_retention_and_restarts,
    pages_follow_after_and_limit,
    pages_end_once_their_bytes_are_spent,
);

async fn seq_is_gapless_and_ordered_under_concurrent_pushes(mut f: Fixture) {
    let users = ["ann", "bob", "cat", "dan", "eve"];
    let tasks: Vec<_> = (0..20u64)
        .map(|t| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let n = t * 100 + i;
                    let picked: Vec<&str> = users
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| (n as usize + k) % 3 != 0)
                        .map(|(_, u)| *u)
                        .collect();
                    store.append(msg(n, &picked)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for user in users {
        let page = f.store.messages(user, 0, 1000).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{user}: gap or duplicate");
        total += seqs.len();
        assert_eq!(
            f.store.unread(user).await.unwrap().last_seq,
            seqs.len() as u64
        );
    }
    // The dispatcher sees every copy once, each user's in seq order.
    let mut last = std::collections::HashMap::new();
    let mut seen = 0;
    while seen < total {
        let m = f.committed.recv().await.unwrap();
        let Target::Stored(seqs) = &m.target else {
            panic!("stored messages carry seqs");
        };
        for (user, seq) in seqs {
            let prev = last.insert(user.clone(), *seq).unwrap_or(0);
            assert_eq!(*seq, prev + 1, "{user} out of order");
            seen += 1;
        }
    }
}

async fn idempotency_keys_return_the_first_answer(mut f: Fixture) {
    let mut m = msg(1, &["ann", "bob"]);
    m.idempotency = Some(("key-1".into(), "fp-a".into()));
    let first = f.store.append(m.clone()).await.unwrap();
    assert!(!first.duplicate);
    let mut again = m.clone();
    again.id = "other-id".into();
    let second = f.store.append(again).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(
        (second.id.as_str(), &second.seqs),
        (first.id.as_str(), &first.seqs)
    );
    let mut conflict = m.clone();
    conflict.id = "third-id".into();
    conflict.idempotency = Some(("key-1".into(), "fp-b".into()));
    assert!(matches!(
        f.store.append(conflict).await,
        Err(StoreError::IdempotencyConflict)
    ));
    // Nothing new was stored, and only the first was dispatched.
    assert_eq!(f.store.unread("ann").await.unwrap().last_seq, 1);
    assert!(f.committed.recv().await.is_some());
    assert!(f.committed.try_recv().is_err());
}

async fn read_state_clamps_and_never_goes_back(f: Fixture) {
    for n in 1..=5 {
        f.store.append(msg(n, &["ann"])).await.unwrap();
    }
    assert_eq!(f.store.mark_read("ann", 3).await.unwrap(), 3);
    let u = f.store.unread("ann").await.unwrap();
    assert_eq!((u.unread, u.last_seq, u.read_up_to), (2, 5, 3));
    // Backwards is ignored; beyond the last seq is clamped.
    assert_eq!(f.store.mark_read("ann", 1).await.unwrap(), 3);
    assert_eq!(f.store.mark_read("ann", u64::MAX).await.unwrap(), 5);
    assert_eq!(f.store.unread("ann").await.unwrap().unread, 0);
    // A user with nothing stored stays at zero.
    assert_eq!(f.store.mark_read("nobody", 7).await.unwrap(), 0);
    let page = f.store.messages("ann", 0, 10).await.unwrap();
    assert!(page.iter().all(|m| m.read_at.is_some()));
}

async fn devices_per_user_are_bounded_and_the_furthest_behind_goes(f: Fixture) {
    // The fixture's store keeps 3 devices per user.
    for d in ["a", "b", "c"] {
        f.store.device_position("cap", d).await.unwrap();
    }
    f.store.append(msg(1, &["cap"])).await.unwrap();
    f.store.append(msg(2, &["cap"])).await.unwrap();
    f.store.mark_delivered("cap", 2, Some("a"));
    f.store.mark_delivered("cap", 1, Some("c"));
    f.store.mark_read("cap", 0).await.unwrap();
    let kept = |f: &Fixture| {
        let store = f.store.clone();
        async move {
            let mut kept = Vec::new();
            for d in ["a", "b", "c", "d", "e"] {
                if let Some(at) = store.device_acked("cap", d).await.unwrap() {
                    kept.push((d, at));
                }
            }
            kept
        }
    };
    assert_eq!(kept(&f).await, vec![("a", 2), ("b", 0), ("c", 1)]);
    // A fourth device takes the place of b, which acked nothing.
    assert_eq!(f.store.device_position("cap", "d").await.unwrap(), 2);
    assert_eq!(kept(&f).await, vec![("a", 2), ("c", 1), ("d", 2)]);
    // A fifth, of c.
    assert_eq!(f.store.device_position("cap", "e").await.unwrap(), 2);
    assert_eq!(kept(&f).await, vec![("a", 2), ("d", 2), ("e", 2)]);
    // b back is a new device at the last seq; of equals, the first by name goes.
    assert_eq!(f.store.device_position("cap", "b").await.unwrap(), 2);
    assert_eq!(kept(&f).await, vec![("b", 2), ("d", 2), ("e", 2)]);
}

async fn acks_record_delivery_and_device_position(f: Fixture) {
    // Devices get their positions at connect (before anything is stored, here).
    assert_eq!(f.store.device_position("ann", "phone").await.unwrap(), 0);
    assert_eq!(f.store.device_position("ann", "laptop").await.unwrap(), 0);
    let a = f.store.append(msg(1, &["ann", "bob"])).await.unwrap();
    f.store.append(msg(2, &["ann"])).await.unwrap();
    // A device first seen now starts at the user's last seq.
    assert_eq!(f.store.device_position("ann", "watch").await.unwrap(), 2);
    f.store.mark_delivered("ann", 1, Some("phone"));
    f.store.mark_delivered("ann", 2, Some("phone"));
    f.store.mark_delivered("ann", 1, Some("laptop"));
    // A write after the acks commits after them.
    f.store.mark_read("ann", 0).await.unwrap();
    assert_eq!(f.store.device_acked("ann", "phone").await.unwrap(), Some(2));
    assert_eq!(
        f.store.device_acked("ann", "laptop").await.unwrap(),
        Some(1)
    );
    // A device without a position (never connected) gets none from an ack.
    f.store.mark_delivered("ann", 2, Some("tablet"));
    f.store.mark_read("ann", 0).await.unwrap();
    assert_eq!(f.store.device_acked("ann", "tablet").await.unwrap(), None);
    assert_eq!(f.store.device_position("ann", "phone").await.unwrap(), 2);
    // Many devices acking one copy: each device's first ack, at most 100 listed.
    for i in 0..150 {
        f.store.mark_delivered("ann", 2, Some(&format!("d{i:03}")));
    }
    f.store.mark_delivered("ann", 2, Some("d000"));
    f.store.mark_read("ann", 0).await.unwrap();
    let second = f.store.messages("ann", 1, 1).await.unwrap()[0].id.clone();
    let state = f.store.message_state(&second).await.unwrap().unwrap();
    let devices = &state.recipients[0].devices;
    assert_eq!(devices.len(), 100);
    assert!(devices.windows(2).all(|w| w[0].acked_at <= w[1].acked_at));
    assert_eq!(devices.iter().filter(|d| d.device == "d000").count(), 1);
    let state = f.store.message_state(&a.id).await.unwrap().unwrap();
    assert_eq!(state.recipients.len(), 2);
    let ann = state.recipients.iter().find(|r| r.user == "ann").unwrap();
    let bob = state.recipients.iter().find(|r| r.user == "bob").unwrap();
    assert!(ann.delivered_at.is_some());
    assert!(bob.delivered_at.is_none());
    let names: Vec<&str> = ann.devices.iter().map(|d| d.device.as_str()).collect();
    assert!(
        names.contains(&"phone") && names.contains(&"laptop"),
        "{names:?}"
    );
    assert!(bob.devices.is_empty());
    assert!(f.store.message_state("no-such-id").await.unwrap().is_none());
}

async fn retention_removes_old_and_excess_messages(f: Fixture) {
    for n in 1..=6 {
        f.store.append(msg(n, &["ann"])).await.unwrap();
    }
    // Keep at most 4 per user: seqs 1 and 2 go.
    let removed = f
        .store
        .sweep(Retention {
            now_ms: 1_000_000,
            max_age_ms: u64::MAX / 2,
            max_messages: 4,
            idempotency_window_ms: u64::MAX / 2,
        })
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let seqs: Vec<u64> = f
        .store
        .messages("ann", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    assert!(f.store.message_state("m000001").await.unwrap().is_none());
    // Older than the age limit: ts 1_000_003 and 1_000_004 go.
    let removed = f
        .store
        .sweep(Retention {
            now_ms: 1_000_010,
            max_age_ms: 5,
            max_messages: 100,
            idempotency_window_ms: u64::MAX / 2,
        })
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let page = f.store.messages("ann", 0, 10).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5, 6]);
    // Seqs keep counting after removals.
    let next = f.store.append(msg(7, &["ann"])).await.unwrap();
    assert_eq!(next.seqs, vec![("ann".to_string(), 7)]);
}

async fn seqs_outlive_retention_and_restarts(f: Fixture) {
    for n in 1..=3 {
        f.store.append(msg(n, &["ann", "bob"])).await.unwrap();
    }
    f.store.append(msg(4, &["bob"])).await.unwrap();
    assert_eq!(f.store.mark_read("ann", 2).await.unwrap(), 2);
    // A restart forgets whatever the writer kept in memory.
    let f = f.reopen().await;
    let next = f.store.append(msg(5, &["ann"])).await.unwrap();
    assert_eq!(next.seqs, vec![("ann".to_string(), 4)]);
    // Retention by age removes every stored copy of both users.
    let removed = f
        .store
        .sweep(Retention {
            now_ms: 2_000_000,
            max_age_ms: 1,
            max_messages: 100,
            idempotency_window_ms: u64::MAX / 2,
        })
        .await
        .unwrap();
    assert_eq!(removed, 8);
    let f = f.reopen().await;
    assert!(f.store.messages("bob", 0, 10).await.unwrap().is_empty());
    let unread = f.store.unread("bob").await.unwrap();
    assert_eq!((unread.last_seq, unread.unread), (4, 0));
    let unread = f.store.unread("ann").await.unwrap();
    assert_eq!((unread.last_seq, unread.read_up_to), (4, 2));
    // Seqs carry on where they were, never starting over.
    let next = f.store.append(msg(6, &["ann", "bob"])).await.unwrap();
    assert_eq!(
        next.seqs,
        vec![("ann".to_string(), 5), ("bob".to_string(), 5)]
    );
    // Reading is clamped to the last seq, which the store still knows.
    assert_eq!(f.store.mark_read("bob", 99).await.unwrap(), 5);
    let unread = f.store.unread("bob").await.unwrap();
    assert_eq!(
        (unread.last_seq, unread.unread, unread.read_up_to),
        (5, 0, 5)
    );
}

async fn pages_follow_after_and_limit(f: Fixture) {
    for n in 1..=25 {
        f.store.append(msg(n, &["ann"])).await.unwrap();
    }
    let page = f.store.messages("ann", 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(page[0].data.get(), "{\"n\":11}");
    assert!(f.store.messages("ann", 25, 5).await.unwrap().is_empty());
    assert!(f
        .store
        .messages("ann", u64::MAX, 5)
        .await
        .unwrap()
        .is_empty());
    assert!(f.store.messages("nobody", 0, 5).await.unwrap().is_empty());
    // The page size is capped by max_page.
    assert_eq!(
        f.store.messages("ann", 0, 1_000_000).await.unwrap().len(),
        25
    );
}

async fn pages_end_once_their_bytes_are_spent(f: Fixture) {
    // Ten messages of 30 KB: a page of 64 KiB holds three (it ends once passed).
    for n in 1..=10 {
        let mut m = msg(n, &["big"]);
        m.data = format!("\"{}\"", "x".repeat(30_000));
        f.store.append(m).await.unwrap();
    }
    let page = f.store.messages("big", 0, 100).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // The next page starts after the last one.
    let next = f.store.messages("big", 3, 100).await.unwrap();
    assert_eq!(next[0].seq, 4);
    // A single message larger than the budget still makes a page.
    let mut huge = msg(11, &["huge"]);
    huge.data = format!("\"{}\"", "y".repeat(100_000));
    f.store.append(huge).await.unwrap();
    assert_eq!(f.store.messages("huge", 0, 100).await.unwrap().len(), 1);
}
