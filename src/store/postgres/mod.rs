//! The PostgreSQL backend, for clusters: the same schema and semantics as SQLite. Per-user
//! sequence numbers come from an atomic upsert, so nodes sharing the database never hand
//! out a number twice. One writer connection group-commits; one reader connection reads.
//! A commit writes its batch's plain appends (and its acks) with one statement per table
//! for the whole batch, pipelined, rather than a few statements per message.
//! A broken connection is re-established on the next operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Transaction};

use super::{
    appended, outbox, pending, settle, Appended, Done, Hooks, NewMessage, ReadOp, Retention,
    StoreConfig, StoreError, WriteOp, MAX_RECEIPTS_BYTES, MIGRATIONS,
};
use crate::vocab::Message;

mod hooks;
mod read;
mod users;

use read::answer;

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Keeps a connection, reconnecting (with a short back-off) when it has broken.
struct Conn {
    url: String,
    client: Option<Client>,
    /// Counts connections made again after one broke (`herald_store_reconnects_total`).
    reconnects: crate::metrics::IntCounter,
}

impl Conn {
    async fn get(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            if self.client.is_some() {
                self.reconnects.inc();
            }
            let mut delay = Duration::from_millis(50);
            let mut tries = 0;
            self.client = loop {
                match connect(&self.url).await {
                    Ok(c) => break Some(c),
                    Err(e) if tries >= 5 => return Err(e),
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        tries += 1;
                    }
                }
            };
        }
        self.client.as_mut().ok_or(StoreError::Closed)
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Nodes starting together must not migrate twice.
    client
        .execute("SELECT pg_advisory_lock(72710)", &[])
        .await?;
    let result = async {
        let tx = client.transaction().await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS herald_schema (version INTEGER NOT NULL)")
            .await?;
        let version: i32 = tx
            .query_opt("SELECT version FROM herald_schema", &[])
            .await?
            .map_or(0, |r| r.get(0));
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(step).await?;
            tracing::info!(version = i + 1, "store migration applied");
        }
        tx.execute("DELETE FROM herald_schema", &[]).await?;
        tx.execute(
            "INSERT INTO herald_schema (version) VALUES ($1)",
            &[&(MIGRATIONS.len() as i32)],
        )
        .await?;
        tx.commit().await?;
        Ok::<(), StoreError>(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock(72710)", &[])
        .await?;
    result
}

pub(super) async fn start(
    cfg: &StoreConfig,
    mut writes: mpsc::Receiver<WriteOp>,
    mut reads: mpsc::Receiver<ReadOp>,
    committed: mpsc::Sender<Arc<Message>>,
    health: Arc<super::Health>,
) -> Result<(), StoreError> {
    let mut first = connect(&cfg.url).await?;
    migrate(&mut first).await?;
    let mut writer = Conn {
        url: cfg.url.clone(),
        client: Some(first),
        reconnects: health.metrics.reconnects.clone(),
    };
    let mut reader = Conn {
        url: cfg.url.clone(),
        client: None,
        reconnects: health.metrics.reconnects.clone(),
    };
    let max_batch = cfg.max_batch.max(1);
    let hooks = cfg.hooks.clone();
    let max_devices = cfg.max_devices_per_user.max(1);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(op) = writes.recv().await {
            batch.push(op);
            while batch.len() < max_batch {
                match writes.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut forward = Vec::new();
            commit(
                &mut writer,
                &mut batch,
                &health,
                (&hooks, max_devices),
                &mut forward,
            )
            .await;
            for m in forward {
                // Commit order is delivery order.
                let _ = committed.send(m).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(op) = reads.recv().await {
            answer(&mut reader, op).await;
        }
    });
    Ok(())
}

async fn commit(
    conn: &mut Conn,
    batch: &mut Vec<WriteOp>,
    health: &super::Health,
    limits: (&Hooks, u64),
    forward: &mut Vec<Arc<Message>>,
) {
    let hooks = limits.0;
    // Appends without an idempotency key, and acks, are written with one statement per
    // table for the whole batch; other ops one by one, pipelined.
    let mut appends = Vec::new();
    let mut acks = Vec::new();
    let mut others = Vec::new();
    for op in std::mem::take(batch) {
        match op {
            WriteOp::Append(msg, reply) if msg.idempotency.is_none() => appends.push((msg, reply)),
            WriteOp::Delivered {
                user,
                seq,
                device,
                at,
            } => acks.push(Ack {
                user,
                seq: i(seq),
                device,
                at: i(at),
            }),
            op => others.push(op),
        }
    }
    let mut done = Vec::with_capacity(appends.len() + others.len());
    let messages: Vec<&NewMessage> = appends.iter().map(|(m, _)| m).collect();
    let (ops, started) = (
        appends.len() + acks.len() + others.len(),
        std::time::Instant::now(),
    );
    let result = async {
        let client = conn.get().await?;
        let tx = client.transaction().await?;
        let applied =
            futures_util::future::join_all(others.drain(..).map(|op| apply(&tx, op, limits))).await;
        let mut failed = None;
        for a in applied {
            match a {
                Ok(d) => done.push(d),
                Err((d, e)) => {
                    done.push(d);
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(StoreError::from(e));
        }
        // Numbered after the ops above, so that the batch's seqs follow theirs.
        let (seqs, acked) = tokio::join!(append_all(&tx, &messages), ack_all(&tx, &acks, hooks));
        let seqs = seqs?;
        acked?;
        tx.commit().await?;
        Ok(seqs)
    }
    .await;
    if result.is_ok() {
        health.metrics.batch(ops, started);
    }
    if result.is_err() && conn.client.as_ref().is_some_and(|c| c.is_closed()) {
        // The connection is what failed; a new one is made next time.
        conn.client = None;
    }
    // Ops that did not run hear of the failure too.
    done.extend(others.into_iter().map(pending));
    let result = match result {
        Ok(seqs) => {
            for ((msg, reply), seqs) in appends.into_iter().zip(seqs) {
                let a = Appended {
                    id: msg.id.clone(),
                    ts: msg.ts,
                    seqs,
                    duplicate: false,
                };
                done.push(appended(&msg, reply, Ok(a)));
            }
            Ok(())
        }
        Err(e) => {
            done.extend(
                appends
                    .into_iter()
                    .map(|(m, r)| pending(WriteOp::Append(m, r))),
            );
            Err(e)
        }
    };
    settle(done, result, health, |m| forward.push(m));
}

/// One device's ack, as the batch writes it.
struct Ack {
    user: String,
    seq: i64,
    device: Option<String>,
    at: i64,
}

/// Stores a batch of messages (none with an idempotency key) with three statements;
/// returns each one's seqs, in batch order.
async fn append_all(
    tx: &Transaction<'_>,
    msgs: &[&NewMessage],
) -> Result<Vec<Vec<(String, u64)>>, tokio_postgres::Error> {
    if msgs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    let events: Vec<&str> = msgs.iter().map(|m| m.event.as_str()).collect();
    let data: Vec<&str> = msgs.iter().map(|m| m.data.as_str()).collect();
    let ts: Vec<i64> = msgs.iter().map(|m| i(m.ts)).collect();
    // How many seqs each user needs; sorted, so that concurrent writers (other nodes)
    // lock user rows in the same order and cannot deadlock.
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for m in msgs {
        for u in &m.users {
            *counts.entry(u.as_str()).or_default() += 1;
        }
    }
    let users: Vec<&str> = counts.keys().copied().collect();
    let needed: Vec<i64> = counts.values().copied().collect();
    let message_params: [&(dyn ToSql + Sync); 4] = [&ids, &events, &data, &ts];
    let user_params: [&(dyn ToSql + Sync); 2] = [&users, &needed];
    let (inserted, numbered) = tokio::join!(
        tx.execute(
            "INSERT INTO messages (id, event, data, ts)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])",
            &message_params,
        ),
        tx.query(
            "INSERT INTO users (user_id, last_seq)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (user_id) DO UPDATE SET last_seq = users.last_seq + excluded.last_seq
             RETURNING user_id, last_seq",
            &user_params,
        )
    );
    inserted?;
    // Each user's first new seq; the batch's messages take them in order.
    let mut next: HashMap<String, i64> = numbered?
        .iter()
        .map(|r| {
            let user: String = r.get(0);
            let last: i64 = r.get(1);
            let first = last - counts.get(user.as_str()).copied().unwrap_or(1) + 1;
            (user, first)
        })
        .collect();
    let mut out = Vec::with_capacity(msgs.len());
    let (mut in_users, mut in_seqs, mut in_ids, mut in_ts) = (vec![], vec![], vec![], vec![]);
    for m in msgs {
        let mut seqs = Vec::with_capacity(m.users.len());
        for u in &m.users {
            let Some(n) = next.get_mut(u) else { continue };
            in_users.push(u.as_str());
            in_seqs.push(*n);
            in_ids.push(m.id.as_str());
            in_ts.push(i(m.ts));
            seqs.push((u.clone(), *n as u64));
            *n += 1;
        }
        out.push(seqs);
    }
    tx.execute(
        "INSERT INTO inbox (user_id, seq, message_id, ts)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])",
        &[&in_users, &in_seqs, &in_ids, &in_ts],
    )
    .await?;
    Ok(out)
}

/// Records a batch of acks: the first ack of a copy marks it delivered; each device's
/// position moves up to the highest seq it acked.
async fn ack_all(
    tx: &Transaction<'_>,
    acks: &[Ack],
    hooks: &Hooks,
) -> Result<(), tokio_postgres::Error> {
    if acks.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = acks.iter().map(|a| a.user.as_str()).collect();
    let seqs: Vec<i64> = acks.iter().map(|a| a.seq).collect();
    let ats: Vec<i64> = acks.iter().map(|a| a.at).collect();
    let devs: Vec<&str> = acks
        .iter()
        .map(|a| a.device.as_deref().unwrap_or(""))
        .collect();
    // One row per device (an upsert may touch a row once per statement), sorted.
    let mut devices: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for a in acks {
        if let Some(d) = &a.device {
            let seq = devices
                .entry((a.user.as_str(), d.as_str()))
                .or_insert(a.seq);
            *seq = (*seq).max(a.seq);
        }
    }
    // Each copy's new receipts as one JSON object (a copy's row is updated once per
    // statement), each device's earliest ack.
    let mut copies: BTreeMap<(&str, i64), BTreeMap<&str, i64>> = BTreeMap::new();
    for a in acks {
        if let Some(d) = &a.device {
            let at = copies
                .entry((a.user.as_str(), a.seq))
                .or_default()
                .entry(d.as_str())
                .or_insert(a.at);
            *at = (*at).min(a.at);
        }
    }
    let copy_users: Vec<&str> = copies.keys().map(|(u, _)| *u).collect();
    let copy_seqs: Vec<i64> = copies.keys().map(|(_, s)| *s).collect();
    let copy_receipts: Vec<String> = copies
        .values()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()))
        .collect();
    let dev_users: Vec<&str> = devices.keys().map(|(u, _)| *u).collect();
    let dev_ids: Vec<&str> = devices.keys().map(|(_, d)| *d).collect();
    let dev_seqs: Vec<i64> = devices.values().copied().collect();
    let ack_params: [&(dyn ToSql + Sync); 4] = [&users, &seqs, &ats, &devs];
    let (delivered, receipts, positions) = tokio::join!(
        tx.query(
            "UPDATE inbox SET delivered_at = t.at
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS t(u, s, at, d)
             WHERE inbox.user_id = t.u AND inbox.seq = t.s AND inbox.delivered_at IS NULL
             RETURNING inbox.user_id, inbox.seq, inbox.message_id, t.d, t.at",
            &ack_params,
        ),
        async {
            if copy_users.is_empty() {
                return Ok(0);
            }
            // What is there wins: each device's first ack is kept.
            tx.execute(
                "UPDATE inbox SET receipts = (t.r::jsonb || COALESCE(inbox.receipts::jsonb, '{}'::jsonb))::text
                 FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(u, s, r)
                 WHERE inbox.user_id = t.u AND inbox.seq = t.s
                   AND length(COALESCE(inbox.receipts, '')) < $4",
                &[&copy_users, &copy_seqs, &copy_receipts, &(MAX_RECEIPTS_BYTES as i32)],
            )
            .await
        },
        async {
            if dev_users.is_empty() {
                return Ok(0);
            }
            // Only a device with a position (made at its connect) moves: acks cannot
            // add devices past `max_devices_per_user`.
            tx.execute(
                "UPDATE devices SET acked_seq = GREATEST(devices.acked_seq, t.s)
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(u, d, s)
                 WHERE devices.user_id = t.u AND devices.device_id = t.d",
                &[&dev_users, &dev_ids, &dev_seqs],
            )
            .await
        }
    );
    let delivered = delivered?;
    receipts?;
    positions?;
    if hooks.delivered && hooks.gate.admit(delivered.len() as u64) {
        let events: Vec<_> = delivered
            .iter()
            .map(|r| {
                let device: &str = r.get(3);
                outbox::delivered(
                    r.get(2),
                    r.get(0),
                    r.get::<_, i64>(1) as u64,
                    (!device.is_empty()).then_some(device),
                    r.get::<_, i64>(4) as u64,
                )
            })
            .collect();
        hooks::insert_all(tx, events, "message.delivered").await?;
    }
    Ok(())
}

type Applied = Result<Done, (Done, tokio_postgres::Error)>;

/// `limits`: which receipts go to the webhook outbox, and the most devices per user.
async fn apply(tx: &Transaction<'_>, op: WriteOp, limits: (&Hooks, u64)) -> Applied {
    let (hooks, max_devices) = limits;
    match op {
        WriteOp::Append(msg, reply) => match append(tx, &msg).await {
            Ok(r) => Ok(appended(&msg, reply, r)),
            Err(e) => Err((Done::Append(reply, Err(StoreError::Closed), None), e)),
        },
        WriteOp::Read {
            user,
            up_to,
            at,
            reply,
        } => match mark_read(tx, &user, up_to, at, hooks).await {
            Ok(v) => Ok(Done::Read(reply, v)),
            Err(e) => Err((Done::Read(reply, 0), e)),
        },
        WriteOp::Delivered {
            user,
            seq,
            device,
            at,
        } => {
            let ack = Ack {
                user,
                seq: i(seq),
                device,
                at: i(at),
            };
            match ack_all(tx, &[ack], hooks).await {
                Ok(()) => Ok(Done::Nothing),
                Err(e) => Err((Done::Nothing, e)),
            }
        }
        WriteOp::Device {
            user,
            device,
            reply,
        } => match device_position(tx, &user, &device, max_devices).await {
            Ok(v) => Ok(Done::Read(reply, v)),
            Err(e) => Err((Done::Read(reply, 0), e)),
        },
        WriteOp::Erase { user, reply } => match users::erase(tx, &user).await {
            Ok(n) => Ok(Done::Read(reply, n)),
            Err(e) => Err((Done::Read(reply, 0), e)),
        },
        WriteOp::Revoke {
            user,
            before,
            at,
            keep_ms,
            reply,
        } => match users::revoke(tx, &user, before, at, keep_ms).await {
            Ok(n) => Ok(Done::Read(reply, n)),
            Err(e) => Err((Done::Read(reply, 0), e)),
        },
        WriteOp::Hook(op) => hooks::apply(tx, op, &hooks.gate).await,
        WriteOp::Sweep(r, reply) => match sweep(tx, r).await {
            Ok(n) => Ok(Done::Sweep(reply, n)),
            Err(e) => Err((Done::Sweep(reply, 0), e)),
        },
        WriteOp::Probe(reply) => match tx
            .execute("UPDATE herald_schema SET version = version", &[])
            .await
        {
            Ok(_) => Ok(Done::Sweep(reply, 0)),
            Err(e) => Err((Done::Sweep(reply, 0), e)),
        },
    }
}

pub(super) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn append(
    tx: &Transaction<'_>,
    msg: &NewMessage,
) -> Result<Result<Appended, StoreError>, tokio_postgres::Error> {
    if let Some((key, fingerprint)) = &msg.idempotency {
        let seen = tx
            .query_opt(
                "SELECT fingerprint, response FROM idempotency WHERE key = $1",
                &[key],
            )
            .await?;
        if let Some(row) = seen {
            let fp: String = row.get(0);
            if &fp != fingerprint {
                return Ok(Err(StoreError::IdempotencyConflict));
            }
            let response: String = row.get(1);
            return Ok(serde_json::from_str::<Appended>(&response)
                .map(|mut a| {
                    a.duplicate = true;
                    a
                })
                .map_err(StoreError::from));
        }
    }
    let seqs = append_all(tx, &[msg]).await?.pop().unwrap_or_default();
    let appended = Appended {
        id: msg.id.clone(),
        ts: msg.ts,
        seqs,
        duplicate: false,
    };
    if let Some((key, fingerprint)) = &msg.idempotency {
        let response = serde_json::to_string(&appended).unwrap_or_default();
        tx.execute(
            "INSERT INTO idempotency (key, fingerprint, response, created_at) VALUES ($1, $2, $3, $4)",
            &[key, fingerprint, &response, &i(msg.ts)],
        )
        .await?;
    }
    Ok(Ok(appended))
}

async fn mark_read(
    tx: &Transaction<'_>,
    user: &str,
    up_to: u64,
    at: u64,
    hooks: &Hooks,
) -> Result<u64, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "UPDATE users SET read_upto = GREATEST(read_upto, LEAST($2, last_seq))
             WHERE user_id = $1 RETURNING read_upto",
            &[&user, &i(up_to)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(0);
    };
    let stored: i64 = row.get(0);
    let passed = tx
        .query(
            "UPDATE inbox SET read_at = $3 WHERE user_id = $1 AND seq <= $2 AND read_at IS NULL
             RETURNING seq, message_id",
            &[&user, &stored, &i(at)],
        )
        .await?;
    if hooks.read && hooks.gate.admit(passed.len() as u64) {
        let events = passed
            .iter()
            .map(|r| outbox::read(r.get(1), user, r.get::<_, i64>(0) as u64, at))
            .collect();
        hooks::insert_all(tx, events, "message.read").await?;
    }
    Ok(stored as u64)
}

/// Where a device resumes; a new device starts at the user's last seq, stored now.
async fn device_position(
    tx: &Transaction<'_>,
    user: &str,
    device: &str,
    max_devices: u64,
) -> Result<u64, tokio_postgres::Error> {
    if let Some(row) = tx
        .query_opt(
            "SELECT acked_seq FROM devices WHERE user_id = $1 AND device_id = $2",
            &[&user, &device],
        )
        .await?
    {
        return Ok(row.get::<_, i64>(0) as u64);
    }
    // A new device past the limit takes the place of the one furthest behind.
    tx.execute(
        "DELETE FROM devices WHERE user_id = $1 AND device_id IN
             (SELECT device_id FROM devices WHERE user_id = $1
              ORDER BY acked_seq DESC, device_id DESC OFFSET $2)",
        &[&user, &i(max_devices - 1)],
    )
    .await?;
    let row = tx
        .query_one(
            "INSERT INTO devices (user_id, device_id, acked_seq)
             VALUES ($1, $2, COALESCE((SELECT last_seq FROM users WHERE user_id = $1), 0))
             ON CONFLICT (user_id, device_id) DO UPDATE SET acked_seq = devices.acked_seq
             RETURNING acked_seq",
            &[&user, &device],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

async fn sweep(tx: &Transaction<'_>, r: Retention) -> Result<u64, tokio_postgres::Error> {
    let cutoff = i(r.now_ms.saturating_sub(r.max_age_ms));
    let mut n = tx
        .execute("DELETE FROM inbox WHERE ts < $1", &[&cutoff])
        .await?;
    n += tx
        .execute(
            "DELETE FROM inbox USING users WHERE users.user_id = inbox.user_id
             AND inbox.seq <= users.last_seq - $1",
            &[&i(r.max_messages)],
        )
        .await?;
    tx.execute(
        "DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.message_id = messages.id)",
        &[],
    )
    .await?;
    let idem = i(r.now_ms.saturating_sub(r.idempotency_window_ms));
    tx.execute("DELETE FROM idempotency WHERE created_at < $1", &[&idem])
        .await?;
    Ok(n)
}
