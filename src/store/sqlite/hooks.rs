//! The webhook outbox in SQLite: events added in the writer's transaction, claimed for a
//! lease, removed once sent.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::outbox::{self, HookOp, OutboxEvent, OutboxGate, OutboxStats, UNDELIVERED_MARK};
use super::{Applied, Done};

/// Adds one event to the outbox, due at once.
pub(super) fn insert(
    tx: &Transaction<'_>,
    (id, body): (String, String),
    kind: &str,
    at: u64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO webhook_outbox (id, kind, body, created_at, next_at) VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![id, kind, body, at as i64])?;
    Ok(())
}

/// `gate`: new events are written only while the outbox is not full.
pub(super) fn apply(tx: &Transaction<'_>, op: HookOp, gate: &OutboxGate) -> Applied {
    match op {
        HookOp::Add { reply, .. } if !gate.admit(1) => Ok(Done::Sweep(reply, 0)),
        HookOp::Add {
            kind,
            at,
            data,
            reply,
        } => match insert(tx, outbox::event(kind, at, data), kind.as_str(), at) {
            Ok(()) => Ok(Done::Sweep(reply, 1)),
            Err(e) => Err(Box::new((Done::Sweep(reply, 0), e))),
        },
        HookOp::Claim {
            now,
            lease_ms,
            limit,
            reply,
        } => match claim(tx, now, lease_ms, limit) {
            Ok(v) => Ok(Done::Claim(reply, v)),
            Err(e) => Err(Box::new((Done::Claim(reply, Vec::new()), e))),
        },
        HookOp::Sent { id } | HookOp::Dropped { id } => {
            match tx
                .prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
            {
                Ok(_) => Ok(Done::Nothing),
                Err(e) => Err(Box::new((Done::Nothing, e))),
            }
        }
        HookOp::Failed { id, next_at, error } => match tx
            .prepare_cached(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ?2,
                     claimed_until = 0, last_error = ?3 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, next_at as i64, error]))
        {
            Ok(_) => Ok(Done::Nothing),
            Err(e) => Err(Box::new((Done::Nothing, e))),
        },
        HookOp::ScanUndelivered { upto, now, reply } => match scan(tx, upto, now, gate) {
            Ok(n) => Ok(Done::Sweep(reply, n)),
            Err(e) => Err(Box::new((Done::Sweep(reply, 0), e))),
        },
    }
}

fn claim(
    tx: &Transaction<'_>,
    now: u64,
    lease_ms: u64,
    limit: usize,
) -> Result<Vec<OutboxEvent>, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "UPDATE webhook_outbox SET claimed_until = ?2
         WHERE id IN (SELECT id FROM webhook_outbox WHERE next_at <= ?1 AND claimed_until <= ?1
                      ORDER BY next_at LIMIT ?3)
         RETURNING id, kind, body, attempts, created_at",
    )?;
    let rows = stmt.query_map(
        params![
            now as i64,
            now.saturating_add(lease_ms) as i64,
            limit as i64
        ],
        |r| {
            Ok(OutboxEvent {
                id: r.get(0)?,
                kind: r.get(1)?,
                body: r.get(2)?,
                attempts: r.get::<_, i64>(3)? as u32,
                created_at: r.get::<_, i64>(4)? as u64,
            })
        },
    )?;
    rows.collect()
}

/// `message.undelivered` for copies stored in (watermark, upto] and still not acked.
/// The first scan only sets the watermark: copies stored before webhooks were turned on
/// are not reported.
fn scan(
    tx: &Transaction<'_>,
    upto: u64,
    now: u64,
    gate: &OutboxGate,
) -> Result<u64, rusqlite::Error> {
    let mark: Option<i64> = tx
        .prepare_cached("SELECT at FROM webhook_marks WHERE name = ?1")?
        .query_row([UNDELIVERED_MARK], |r| r.get(0))
        .optional()?;
    let upto = upto as i64;
    let mut n = 0;
    if let Some(from) = mark {
        if from >= upto {
            return Ok(0);
        }
        let copies = tx
            .prepare_cached(
                "SELECT user_id, seq, message_id, ts FROM inbox
                 WHERE ts > ?1 AND ts <= ?2 AND delivered_at IS NULL",
            )?
            .query_map(params![from, upto], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // While the outbox is full the window passes unreported (and counted).
        if !gate.admit(copies.len() as u64) {
            return set_mark(tx, upto).map(|()| 0);
        }
        for (user, seq, message, ts) in copies {
            let event = outbox::undelivered(&message, &user, seq as u64, ts as u64, now);
            insert(tx, event, "message.undelivered", now)?;
            n += 1;
        }
    }
    set_mark(tx, upto)?;
    Ok(n)
}

/// Moves the scan's watermark to `upto`.
fn set_mark(tx: &Transaction<'_>, upto: i64) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO webhook_marks (name, at) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET at = MAX(webhook_marks.at, excluded.at)",
    )?
    .execute(params![UNDELIVERED_MARK, upto])?;
    Ok(())
}

pub(super) fn stats(conn: &Connection) -> Result<OutboxStats, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), MIN(created_at) FROM webhook_outbox",
    )?
    .query_row([], |r| {
        Ok(OutboxStats {
            depth: r.get::<_, i64>(0)? as u64,
            failing: r.get::<_, i64>(1)? as u64,
            oldest_at: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        })
    })
}
