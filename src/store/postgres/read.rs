//! The reader connection's answers: inbox pages, unread counts, device positions, a
//! message's state, idempotency keys.

use super::super::{
    receipts_of, MessageState, ReadOp, Recipient, StoreError, StoredMessage, Unread,
};
use super::{i, Conn};

pub(super) async fn answer(conn: &mut Conn, op: ReadOp) {
    match op {
        ReadOp::Messages {
            user,
            after,
            limit,
            max_bytes,
            reply,
        } => {
            let _ = reply.send(messages(conn, &user, after, limit, max_bytes).await);
        }
        ReadOp::Unread { user, reply } => {
            let _ = reply.send(unread(conn, &user).await);
        }
        ReadOp::DeviceAcked {
            user,
            device,
            reply,
        } => {
            let r = async {
                let c = conn.get().await?;
                let row = c
                    .query_opt(
                        "SELECT acked_seq FROM devices WHERE user_id = $1 AND device_id = $2",
                        &[&user, &device],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0) as u64))
            }
            .await;
            let _ = reply.send(r);
        }
        ReadOp::State { id, reply } => {
            let _ = reply.send(state(conn, &id).await);
        }
        ReadOp::Revocations { since, reply } => {
            let r = async { Ok(super::users::revocations(conn.get().await?, since).await?) }.await;
            let _ = reply.send(r);
        }
        ReadOp::Outbox { reply } => {
            let r = async { Ok(super::hooks::stats(conn.get().await?).await?) }.await;
            let _ = reply.send(r);
        }
        ReadOp::IdempotencyKey { key, reply } => {
            let r = async {
                let c = conn.get().await?;
                let row = c
                    .query_opt("SELECT 1 FROM idempotency WHERE key = $1", &[&key])
                    .await?;
                Ok(row.is_some())
            }
            .await;
            let _ = reply.send(r);
        }
    }
}

fn opt(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

async fn messages(
    conn: &mut Conn,
    user: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    use futures_util::StreamExt as _;
    let c = conn.get().await?;
    let limit = limit as i64;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&user, &i(after), &limit];
    // Rows are taken as they arrive, until the page's bytes are spent.
    let rows = c
        .query_raw(
            "SELECT i.seq, i.message_id, m.event, m.data, i.ts, i.delivered_at, i.read_at
             FROM inbox i JOIN messages m ON m.id = i.message_id
             WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3",
            params,
        )
        .await?;
    let mut rows = std::pin::pin!(rows);
    let mut page = Vec::new();
    let mut bytes = 0;
    while let Some(r) = rows.next().await {
        let r = r?;
        let m = StoredMessage {
            seq: r.get::<_, i64>(0) as u64,
            id: r.get(1),
            event: r.get(2),
            data: serde_json::value::RawValue::from_string(r.get(3))
                .unwrap_or_else(|_| super::super::sqlite::raw_null()),
            ts: r.get::<_, i64>(4) as u64,
            delivered_at: opt(r.get(5)),
            read_at: opt(r.get(6)),
        };
        bytes += m.data.get().len();
        page.push(m);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(page)
}

async fn unread(conn: &mut Conn, user: &str) -> Result<Unread, StoreError> {
    let c = conn.get().await?;
    let Some(row) = c
        .query_opt(
            "SELECT last_seq, read_upto FROM users WHERE user_id = $1",
            &[&user],
        )
        .await?
    else {
        return Ok(Unread::default());
    };
    let (last, read): (i64, i64) = (row.get(0), row.get(1));
    let count: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM inbox WHERE user_id = $1 AND seq > $2",
            &[&user, &read],
        )
        .await?
        .get(0);
    Ok(Unread {
        unread: count as u64,
        last_seq: last as u64,
        read_up_to: read as u64,
    })
}

async fn state(conn: &mut Conn, id: &str) -> Result<Option<MessageState>, StoreError> {
    let c = conn.get().await?;
    let Some(head) = c
        .query_opt("SELECT event, ts FROM messages WHERE id = $1", &[&id])
        .await?
    else {
        return Ok(None);
    };
    let rows = c
        .query(
            "SELECT user_id, seq, ts, delivered_at, read_at, receipts FROM inbox
             WHERE message_id = $1 ORDER BY user_id LIMIT 10000",
            &[&id],
        )
        .await?;
    let recipients: Vec<Recipient> = rows
        .iter()
        .map(|r| Recipient {
            user: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
            stored_at: r.get::<_, i64>(2) as u64,
            delivered_at: opt(r.get(3)),
            read_at: opt(r.get(4)),
            devices: receipts_of(r.get::<_, Option<&str>>(5)),
        })
        .collect();
    Ok(Some(MessageState {
        id: id.to_owned(),
        event: head.get(0),
        ts: head.get::<_, i64>(1) as u64,
        recipients,
    }))
}
