//! A user's data as a whole: erased on request, and the tokens refused for them.

use tokio_postgres::{Client, Transaction};

use super::i;
use crate::store::Revocation;

/// Erases `user`'s copies, the messages only they held, their device positions and
/// unread state; the seq counter stays. Returns the copies erased.
pub(super) async fn erase(tx: &Transaction<'_>, user: &str) -> Result<u64, tokio_postgres::Error> {
    let erased = tx
        .query(
            "DELETE FROM inbox WHERE user_id = $1 RETURNING message_id",
            &[&user],
        )
        .await?;
    let ids: Vec<String> = erased.iter().map(|r| r.get(0)).collect();
    tx.execute(
        "DELETE FROM messages m WHERE m.id = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM inbox WHERE message_id = m.id)",
        &[&ids],
    )
    .await?;
    tx.execute("DELETE FROM devices WHERE user_id = $1", &[&user])
        .await?;
    tx.execute(
        "UPDATE users SET read_upto = last_seq WHERE user_id = $1",
        &[&user],
    )
    .await?;
    Ok(ids.len() as u64)
}

/// Stores a revocation (the later `before` wins) and forgets those older than
/// `keep_ms`. Returns the `before` in force.
pub(super) async fn revoke(
    tx: &Transaction<'_>,
    user: &str,
    before: u64,
    at: u64,
    keep_ms: u64,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM revocations WHERE at < $1",
        &[&i(at.saturating_sub(keep_ms))],
    )
    .await?;
    let row = tx
        .query_one(
            "INSERT INTO revocations (user_id, issued_before, at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE
                 SET issued_before = GREATEST(revocations.issued_before, excluded.issued_before),
                     at = excluded.at
             RETURNING issued_before",
            &[&user, &i(before), &i(at)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Revocations made at or after `since`.
pub(super) async fn revocations(
    c: &Client,
    since: u64,
) -> Result<Vec<Revocation>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT user_id, issued_before, at FROM revocations WHERE at >= $1",
            &[&i(since)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Revocation {
            user: r.get(0),
            before: r.get::<_, i64>(1) as u64,
            at: r.get::<_, i64>(2) as u64,
        })
        .collect())
}
