//! The webhook outbox in PostgreSQL. Nodes claim due events with `FOR UPDATE SKIP
//! LOCKED`, so each event is sent by one node at a time; the undelivered scan takes its
//! watermark row's lock, so nodes scanning together report each copy once.

use tokio_postgres::{Client, Transaction};

use super::super::outbox::{self, HookOp, OutboxEvent, OutboxGate, OutboxStats, UNDELIVERED_MARK};
use super::{i, Applied, Done};

/// Adds events to the outbox, due at once, with one statement.
pub(super) async fn insert_all(
    tx: &Transaction<'_>,
    events: Vec<(String, String)>,
    kind: &str,
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let (ids, bodies): (Vec<String>, Vec<String>) = events.into_iter().unzip();
    let at = i(crate::vocab::now_ms());
    tx.execute(
        "INSERT INTO webhook_outbox (id, kind, body, created_at, next_at)
         SELECT t.id, $3, t.body, $4, $4 FROM unnest($1::text[], $2::text[]) AS t(id, body)",
        &[&ids, &bodies, &kind, &at],
    )
    .await?;
    Ok(())
}

/// `gate`: new events are written only while the outbox is not full.
pub(super) async fn apply(tx: &Transaction<'_>, op: HookOp, gate: &OutboxGate) -> Applied {
    match op {
        HookOp::Add { reply, .. } if !gate.admit(1) => Ok(Done::Sweep(reply, 0)),
        HookOp::Add {
            kind,
            at,
            data,
            reply,
        } => {
            let event = outbox::event(kind, at, data);
            match insert_all(tx, vec![event], kind.as_str()).await {
                Ok(()) => Ok(Done::Sweep(reply, 1)),
                Err(e) => Err((Done::Sweep(reply, 0), e)),
            }
        }
        HookOp::Claim {
            now,
            lease_ms,
            limit,
            reply,
        } => match claim(tx, now, lease_ms, limit).await {
            Ok(v) => Ok(Done::Claim(reply, v)),
            Err(e) => Err((Done::Claim(reply, Vec::new()), e)),
        },
        HookOp::Sent { id } | HookOp::Dropped { id } => {
            match tx
                .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                .await
            {
                Ok(_) => Ok(Done::Nothing),
                Err(e) => Err((Done::Nothing, e)),
            }
        }
        HookOp::Failed { id, next_at, error } => match tx
            .execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = $2,
                     claimed_until = 0, last_error = $3 WHERE id = $1",
                &[&id, &i(next_at), &error],
            )
            .await
        {
            Ok(_) => Ok(Done::Nothing),
            Err(e) => Err((Done::Nothing, e)),
        },
        HookOp::ScanUndelivered { upto, now, reply } => match scan(tx, upto, now, gate).await {
            Ok(n) => Ok(Done::Sweep(reply, n)),
            Err(e) => Err((Done::Sweep(reply, 0), e)),
        },
    }
}

async fn claim(
    tx: &Transaction<'_>,
    now: u64,
    lease_ms: u64,
    limit: usize,
) -> Result<Vec<OutboxEvent>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "UPDATE webhook_outbox SET claimed_until = $2
             WHERE id IN (SELECT id FROM webhook_outbox WHERE next_at <= $1 AND claimed_until <= $1
                          ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, kind, body, attempts, created_at",
            &[&i(now), &i(now.saturating_add(lease_ms)), &(limit as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OutboxEvent {
            id: r.get(0),
            kind: r.get(1),
            body: r.get(2),
            attempts: r.get::<_, i32>(3) as u32,
            created_at: r.get::<_, i64>(4) as u64,
        })
        .collect())
}

/// `message.undelivered` for copies stored in (watermark, upto] and still not acked.
/// The first scan only sets the watermark.
async fn scan(
    tx: &Transaction<'_>,
    upto: u64,
    now: u64,
    gate: &OutboxGate,
) -> Result<u64, tokio_postgres::Error> {
    let upto = i(upto);
    // A mark row to lock, so that concurrent scans (other nodes) take turns.
    let created = tx
        .execute(
            "INSERT INTO webhook_marks (name, at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&UNDELIVERED_MARK, &upto],
        )
        .await?;
    if created == 1 {
        return Ok(0);
    }
    let from: i64 = tx
        .query_one(
            "SELECT at FROM webhook_marks WHERE name = $1 FOR UPDATE",
            &[&UNDELIVERED_MARK],
        )
        .await?
        .get(0);
    if from >= upto {
        return Ok(0);
    }
    let copies = tx
        .query(
            "SELECT user_id, seq, message_id, ts FROM inbox
             WHERE ts > $1 AND ts <= $2 AND delivered_at IS NULL",
            &[&from, &upto],
        )
        .await?;
    let events: Vec<_> = copies
        .iter()
        .map(|r| {
            outbox::undelivered(
                r.get(2),
                r.get(0),
                r.get::<_, i64>(1) as u64,
                r.get::<_, i64>(3) as u64,
                now,
            )
        })
        .collect();
    let n = events.len() as u64;
    // While the outbox is full the window passes unreported (and counted).
    if gate.admit(n) {
        insert_all(tx, events, "message.undelivered").await?;
    }
    tx.execute(
        "UPDATE webhook_marks SET at = $2 WHERE name = $1",
        &[&UNDELIVERED_MARK, &upto],
    )
    .await?;
    Ok(n)
}

pub(super) async fn stats(c: &Client) -> Result<OutboxStats, tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE attempts > 0), MIN(created_at) FROM webhook_outbox",
            &[],
        )
        .await?;
    Ok(OutboxStats {
        depth: r.get::<_, i64>(0) as u64,
        failing: r.get::<_, i64>(1) as u64,
        oldest_at: r.get::<_, Option<i64>>(2).map(|v| v as u64),
    })
}
