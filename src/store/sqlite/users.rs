//! A user's data as a whole: erased on request, and the tokens refused for them.

use rusqlite::{params, Connection, Transaction};

use crate::store::Revocation;

/// Erases `user`'s copies, the messages only they held, their device positions and
/// unread state; the seq counter stays. Returns the copies erased.
pub(super) fn erase(tx: &Transaction<'_>, user: &str) -> Result<u64, rusqlite::Error> {
    // The last seq is read from the inbox rows too (see the module above): keep it in
    // `users` before they go, so that seqs are never handed out twice.
    tx.prepare_cached(
        "INSERT INTO users (user_id, last_seq)
         SELECT user_id, MAX(seq) FROM inbox WHERE user_id = ?1 GROUP BY user_id
         ON CONFLICT (user_id) DO UPDATE SET last_seq = MAX(users.last_seq, excluded.last_seq)",
    )?
    .execute([user])?;
    let ids: Vec<String> = tx
        .prepare_cached("SELECT message_id FROM inbox WHERE user_id = ?1")?
        .query_map([user], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let erased = tx
        .prepare_cached("DELETE FROM inbox WHERE user_id = ?1")?
        .execute([user])?;
    let mut orphan = tx.prepare_cached(
        "DELETE FROM messages WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM inbox WHERE message_id = ?1)",
    )?;
    for id in &ids {
        orphan.execute([id])?;
    }
    tx.prepare_cached("DELETE FROM devices WHERE user_id = ?1")?
        .execute([user])?;
    tx.prepare_cached("UPDATE users SET read_upto = last_seq WHERE user_id = ?1")?
        .execute([user])?;
    Ok(erased as u64)
}

/// Stores a revocation (the later `before` wins) and forgets those older than
/// `keep_ms`. Returns the `before` in force.
pub(super) fn revoke(
    tx: &Transaction<'_>,
    user: &str,
    before: u64,
    at: u64,
    keep_ms: u64,
) -> Result<u64, rusqlite::Error> {
    tx.prepare_cached("DELETE FROM revocations WHERE at < ?1")?
        .execute([at.saturating_sub(keep_ms) as i64])?;
    tx.prepare_cached(
        "INSERT INTO revocations (user_id, issued_before, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET issued_before = MAX(issued_before, excluded.issued_before), at = excluded.at",
    )?
    .execute(params![user, before as i64, at as i64])?;
    let held: i64 = tx
        .prepare_cached("SELECT issued_before FROM revocations WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))?;
    Ok(held as u64)
}

/// Revocations made at or after `since`.
pub(super) fn revocations(
    conn: &Connection,
    since: u64,
) -> Result<Vec<Revocation>, rusqlite::Error> {
    conn.prepare_cached("SELECT user_id, issued_before, at FROM revocations WHERE at >= ?1")?
        .query_map([since as i64], |r| {
            Ok(Revocation {
                user: r.get(0)?,
                before: r.get::<_, i64>(1)? as u64,
                at: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect()
}
