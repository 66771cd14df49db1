//! The embedded SQLite backend: one writer thread that group-commits, one reader thread,
//! each with its own connection to a WAL database (readers never wait for the writer).
//!
//! The writer is the database's only writer, so it keeps each user's last seq in memory
//! (loaded on first use) instead of updating a `users` row per push: a user's last seq
//! is the larger of `users.last_seq` and the user's highest seq in `inbox`, and
//! `users.last_seq` is brought up to date only before retention deletes inbox rows.
//! That saves a page write per push, the larger part of what a commit costs. A commit
//! is answered from a runtime task, one wake-up per commit instead of one per request.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::mpsc;

use super::{
    appended, outbox, pending, receipts_of, settle, Appended, Done, Hooks, MessageState,
    NewMessage, ReadOp, Recipient, Retention, SqliteSync, StoreConfig, StoreError, StoredMessage,
    Unread, WriteOp, MAX_RECEIPTS_BYTES, MIGRATIONS,
};
use crate::vocab::Message;

mod hooks;
mod users;

fn open(path: &str, uri: bool, sync: SqliteSync) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if uri {
        flags |= OpenFlags::SQLITE_OPEN_URI;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match sync {
        SqliteSync::Normal => "NORMAL",
        SqliteSync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS herald_schema (version INTEGER NOT NULL)")?;
    let version: i64 = tx
        .query_row("SELECT version FROM herald_schema", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)?;
        tracing::info!(version = i + 1, "store migration applied");
    }
    tx.execute("DELETE FROM herald_schema", [])?;
    tx.execute(
        "INSERT INTO herald_schema (version) VALUES (?1)",
        [MIGRATIONS.len() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn start(
    cfg: &StoreConfig,
    mut writes: mpsc::Receiver<WriteOp>,
    mut reads: mpsc::Receiver<ReadOp>,
    committed: mpsc::Sender<Arc<Message>>,
    health: Arc<super::Health>,
) -> Result<(), StoreError> {
    let target = cfg.url.strip_prefix("sqlite:").unwrap_or("");
    // `:memory:` is a throwaway database (tests, trials): a WAL file in the temporary
    // directory, removed when the store closes. (A shared-cache in-memory database
    // would make the reader fail on the writer's table locks.)
    let mut scratch = None;
    let (path, uri) = if target == ":memory:" {
        let name: u64 = rand::random();
        let p = std::env::temp_dir().join(format!("herald-{name:016x}.db"));
        scratch = Some(p.clone());
        (p.to_string_lossy().into_owned(), false)
    } else if target.is_empty() {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StoreError::File {
            what: format!("cannot create data dir {}", cfg.data_dir),
            source: Arc::new(e),
        })?;
        (
            format!("{}/herald.db", cfg.data_dir.trim_end_matches('/')),
            false,
        )
    } else {
        (target.to_owned(), false)
    };
    let mut writer = open(&path, uri, cfg.sqlite_sync)?;
    migrate(&mut writer)?;
    let mut file = FileIdentity::of(&path)?;
    let reader = open(&path, uri, cfg.sqlite_sync)?;
    let max_batch = cfg.max_batch.max(1);
    let hooks = cfg.hooks.clone();
    let max_devices = cfg.max_devices_per_user.max(1);
    let delay = std::time::Duration::from_micros(cfg.commit_delay_us);
    // Committed batches are answered on the runtime, in commit order.
    let (settled, mut to_settle) = mpsc::unbounded_channel::<Settle>();
    let figures = health.clone();
    tokio::spawn(async move {
        let mut forward = Vec::new();
        while let Some((done, result)) = to_settle.recv().await {
            settle(done, result, &health, |m| forward.push(m));
            for m in forward.drain(..) {
                // Commit order is delivery order: wait rather than reorder.
                let _ = committed.send(m).await;
            }
        }
    });
    std::thread::Builder::new()
        .name("herald-store-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(max_batch);
            let mut seqs = Seqs::default();
            while let Some(first) = writes.blocking_recv() {
                batch.push(first);
                drain(&mut writes, &mut batch, max_batch);
                if !delay.is_zero() && batch.len() < max_batch {
                    std::thread::sleep(delay);
                    drain(&mut writes, &mut batch, max_batch);
                }
                // Checked after each commit (one `stat` per batch); once the file is
                // found gone, nothing more is committed to it.
                let (done, result) = match file.lost() {
                    Err(e) => (batch.drain(..).map(pending).collect(), Err(e)),
                    Ok(()) => {
                        let (ops, started) = (batch.len(), std::time::Instant::now());
                        let (done, result) =
                            commit(&mut writer, &mut batch, &mut seqs, (&hooks, max_devices));
                        figures.metrics.batch(ops, started);
                        // Removed or replaced during the commit: it went to a lost file.
                        (done, result.and_then(|()| file.check()))
                    }
                };
                if settled.send((done, result)).is_err() {
                    break;
                }
            }
            drop(writer);
            if let Some(p) = scratch {
                for suffix in ["", "-wal", "-shm"] {
                    let mut f = p.clone().into_os_string();
                    f.push(suffix);
                    let _ = std::fs::remove_file(f);
                }
            }
        })
        .map_err(|e| StoreError::File {
            what: "cannot start a store thread".into(),
            source: Arc::new(e),
        })?;
    std::thread::Builder::new()
        .name("herald-store-reader".into())
        .spawn(move || {
            while let Some(op) = reads.blocking_recv() {
                answer(&reader, op);
            }
        })
        .map_err(|e| StoreError::File {
            what: "cannot start a store thread".into(),
            source: Arc::new(e),
        })?;
    Ok(())
}

/// Which file the writer opened, to notice when the database at its path is removed or
/// replaced under the running process (SQLite would go on writing to the unlinked file,
/// and every push acknowledged meanwhile would be lost at the next start).
struct FileIdentity {
    path: String,
    dev: u64,
    ino: u64,
    /// Once the file is found gone or replaced, it stays so until herald restarts.
    lost: bool,
}

impl FileIdentity {
    fn of(path: &str) -> Result<FileIdentity, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| StoreError::File {
            what: format!("cannot stat the database {path}"),
            source: Arc::new(e),
        })?;
        Ok(FileIdentity {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            lost: false,
        })
    }

    /// The error for a batch once the file is known lost (no `stat`).
    fn lost(&self) -> Result<(), StoreError> {
        if self.lost {
            return Err(StoreError::Lost(self.path.clone()));
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        if !self.lost {
            self.lost = std::fs::metadata(&self.path)
                .map_or(true, |m| m.dev() != self.dev || m.ino() != self.ino);
        }
        if self.lost {
            return Err(StoreError::Lost(self.path.clone()));
        }
        Ok(())
    }
}

/// Adds whatever operations are waiting to `batch`, up to `max`.
fn drain(writes: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>, max: usize) {
    while batch.len() < max {
        match writes.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// A committed (or failed) batch on its way to its callers.
type Settle = (Vec<Done>, Result<(), StoreError>);

/// Each user's last seq, as far as this writer has loaded or allocated it.
#[derive(Default)]
struct Seqs(HashMap<String, i64>);

/// Users whose last seq is kept in memory (about 10 MB); beyond this the map starts
/// over, and a user's next push reads it from the database again.
const MAX_CACHED_USERS: usize = 1 << 17;

impl Seqs {
    /// The user's last seq (0 for a user with no messages).
    fn last(&mut self, tx: &Transaction<'_>, user: &str) -> Result<i64, rusqlite::Error> {
        if let Some(v) = self.0.get(user) {
            return Ok(*v);
        }
        let v: i64 = tx
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT last_seq FROM users WHERE user_id = ?1), 0),
                            COALESCE((SELECT MAX(seq) FROM inbox WHERE user_id = ?1), 0))",
            )?
            .query_row([user], |r| r.get(0))?;
        if v > 0 {
            if self.0.len() >= MAX_CACHED_USERS {
                self.0 = HashMap::new();
            }
            self.0.insert(user.to_owned(), v);
        }
        Ok(v)
    }

    /// Allocates the user's next seq.
    fn next(&mut self, tx: &Transaction<'_>, user: &str) -> Result<i64, rusqlite::Error> {
        if let Some(v) = self.0.get_mut(user) {
            *v += 1;
            return Ok(*v);
        }
        let v = self.last(tx, user)? + 1;
        if self.0.len() >= MAX_CACHED_USERS {
            self.0 = HashMap::new();
        }
        self.0.insert(user.to_owned(), v);
        Ok(v)
    }
}

fn commit(
    conn: &mut Connection,
    batch: &mut Vec<WriteOp>,
    seqs: &mut Seqs,
    limits: (&Hooks, u64),
) -> Settle {
    let mut ops = std::mem::take(batch).into_iter();
    let mut done = Vec::with_capacity(ops.len());
    let result = match conn.transaction() {
        Err(e) => Err(e),
        Ok(tx) => loop {
            let Some(op) = ops.next() else {
                break tx.commit();
            };
            match apply(&tx, op, seqs, limits) {
                Ok(d) => done.push(d),
                Err(failed) => {
                    let (d, e) = *failed;
                    done.push(d);
                    break Err(e);
                }
            }
        },
    };
    // Ops that did not run hear of the failure too.
    done.extend(ops.map(pending));
    if result.is_err() {
        // Seqs allocated in the rolled-back transaction were never stored.
        seqs.0.clear();
    }
    (done, result.map_err(StoreError::from))
}

/// A failed op keeps its reply, so the caller hears of the failure (boxed: it is large).
type Applied = Result<Done, Box<(Done, rusqlite::Error)>>;

/// `limits`: which receipts go to the webhook outbox, and the most devices per user.
fn apply(tx: &Transaction<'_>, op: WriteOp, seqs: &mut Seqs, limits: (&Hooks, u64)) -> Applied {
    let (hooks, max_devices) = limits;
    match op {
        WriteOp::Append(msg, reply) => match append(tx, &msg, seqs) {
            Ok(r) => Ok(appended(&msg, reply, r)),
            Err(e) => Err(Box::new((
                Done::Append(reply, Err(StoreError::Closed), None),
                e,
            ))),
        },
        WriteOp::Read {
            user,
            up_to,
            at,
            reply,
        } => match mark_read(tx, &user, up_to, at, seqs, hooks) {
            Ok(v) => Ok(Done::Read(reply, v)),
            Err(e) => Err(Box::new((Done::Read(reply, 0), e))),
        },
        WriteOp::Delivered {
            user,
            seq,
            device,
            at,
        } => match delivered(tx, &user, seq, device.as_deref(), at, hooks) {
            Ok(()) => Ok(Done::Nothing),
            Err(e) => Err(Box::new((Done::Nothing, e))),
        },
        WriteOp::Device {
            user,
            device,
            reply,
        } => match device_position(tx, &user, &device, seqs, max_devices) {
            Ok(v) => Ok(Done::Read(reply, v)),
            Err(e) => Err(Box::new((Done::Read(reply, 0), e))),
        },
        WriteOp::Erase { user, reply } => match users::erase(tx, &user) {
            Ok(n) => Ok(Done::Read(reply, n)),
            Err(e) => Err(Box::new((Done::Read(reply, 0), e))),
        },
        WriteOp::Revoke {
            user,
            before,
            at,
            keep_ms,
            reply,
        } => match users::revoke(tx, &user, before, at, keep_ms) {
            Ok(n) => Ok(Done::Read(reply, n)),
            Err(e) => Err(Box::new((Done::Read(reply, 0), e))),
        },
        WriteOp::Hook(op) => hooks::apply(tx, op, &hooks.gate),
        WriteOp::Sweep(r, reply) => match sweep(tx, r) {
            Ok(n) => Ok(Done::Sweep(reply, n)),
            Err(e) => Err(Box::new((Done::Sweep(reply, 0), e))),
        },
        WriteOp::Probe(reply) => match tx.execute("UPDATE herald_schema SET version = version", [])
        {
            Ok(_) => Ok(Done::Sweep(reply, 0)),
            Err(e) => Err(Box::new((Done::Sweep(reply, 0), e))),
        },
    }
}

/// Stores one message. The outer error fails the transaction; the inner one only this
/// request (an idempotency conflict).
fn append(
    tx: &Transaction<'_>,
    msg: &NewMessage,
    seqs: &mut Seqs,
) -> Result<Result<Appended, StoreError>, rusqlite::Error> {
    if let Some((key, fingerprint)) = &msg.idempotency {
        let seen: Option<(String, String)> = tx
            .prepare_cached("SELECT fingerprint, response FROM idempotency WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((fp, response)) = seen {
            if &fp != fingerprint {
                return Ok(Err(StoreError::IdempotencyConflict));
            }
            return Ok(serde_json::from_str::<Appended>(&response)
                .map(|mut a| {
                    a.duplicate = true;
                    a
                })
                .map_err(StoreError::from));
        }
    }
    tx.prepare_cached("INSERT INTO messages (id, event, data, ts) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![msg.id, msg.event, msg.data, msg.ts as i64])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO inbox (user_id, seq, message_id, ts) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut allocated = Vec::with_capacity(msg.users.len());
    for user in &msg.users {
        let seq = seqs.next(tx, user)?;
        insert.execute(params![user, seq, msg.id, msg.ts as i64])?;
        allocated.push((user.clone(), seq as u64));
    }
    let appended = Appended {
        id: msg.id.clone(),
        ts: msg.ts,
        seqs: allocated,
        duplicate: false,
    };
    if let Some((key, fingerprint)) = &msg.idempotency {
        let response = serde_json::to_string(&appended).unwrap_or_default();
        tx.prepare_cached(
            "INSERT INTO idempotency (key, fingerprint, response, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![key, fingerprint, response, msg.ts as i64])?;
    }
    Ok(Ok(appended))
}

fn mark_read(
    tx: &Transaction<'_>,
    user: &str,
    up_to: u64,
    at: u64,
    seqs: &mut Seqs,
    hooks: &Hooks,
) -> Result<u64, rusqlite::Error> {
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    let last = seqs.last(tx, user)?;
    if last == 0 {
        return Ok(0);
    }
    let stored: i64 = tx
        .prepare_cached(
            "INSERT INTO users (user_id, last_seq, read_upto) VALUES (?1, ?2, MIN(?3, ?2))
             ON CONFLICT (user_id) DO UPDATE SET last_seq = MAX(users.last_seq, excluded.last_seq),
                 read_upto = MAX(users.read_upto, excluded.read_upto)
             RETURNING read_upto",
        )?
        .query_row(params![user, last, up_to], |r| r.get(0))?;
    if !hooks.read || !hooks.gate.admit(0) {
        let passed = tx
            .prepare_cached(
                "UPDATE inbox SET read_at = ?3 WHERE user_id = ?1 AND seq <= ?2 AND read_at IS NULL",
            )?
            .execute(params![user, stored, at as i64])?;
        if hooks.read {
            hooks.gate.admit(passed as u64);
        }
        return Ok(stored as u64);
    }
    let mut update = tx.prepare_cached(
        "UPDATE inbox SET read_at = ?3 WHERE user_id = ?1 AND seq <= ?2 AND read_at IS NULL
         RETURNING seq, message_id",
    )?;
    let passed = update
        .query_map(params![user, stored, at as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (seq, message) in passed {
        hooks::insert(
            tx,
            outbox::read(&message, user, seq as u64, at),
            "message.read",
            at,
        )?;
    }
    Ok(stored as u64)
}

/// Where a device resumes; a new device starts at the user's last seq, stored now.
fn device_position(
    tx: &Transaction<'_>,
    user: &str,
    device: &str,
    seqs: &mut Seqs,
    max_devices: u64,
) -> Result<u64, rusqlite::Error> {
    let known: Option<i64> = tx
        .prepare_cached("SELECT acked_seq FROM devices WHERE user_id = ?1 AND device_id = ?2")?
        .query_row([user, device], |r| r.get(0))
        .optional()?;
    if let Some(seq) = known {
        return Ok(seq as u64);
    }
    let last = seqs.last(tx, user)?;
    let held: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM devices WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))?;
    if held as u64 >= max_devices {
        tx.prepare_cached(
            "DELETE FROM devices WHERE user_id = ?1 AND device_id IN
                 (SELECT device_id FROM devices WHERE user_id = ?1 ORDER BY acked_seq, device_id LIMIT ?2)",
        )?
        .execute(params![user, (held as u64 - max_devices + 1) as i64])?;
    }
    tx.prepare_cached("INSERT INTO devices (user_id, device_id, acked_seq) VALUES (?1, ?2, ?3)")?
        .execute(params![user, device, last])?;
    Ok(last as u64)
}

fn delivered(
    tx: &Transaction<'_>,
    user: &str,
    seq: u64,
    device: Option<&str>,
    at: u64,
    hooks: &Hooks,
) -> Result<(), rusqlite::Error> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let first: Option<String> = tx
        .prepare_cached(
            "UPDATE inbox SET delivered_at = ?3
             WHERE user_id = ?1 AND seq = ?2 AND delivered_at IS NULL RETURNING message_id",
        )?
        .query_row(params![user, seq, at as i64], |r| r.get(0))
        .optional()?;
    if let (Some(message), true) = (first, hooks.delivered && hooks.gate.admit(1)) {
        let event = outbox::delivered(&message, user, seq as u64, device, at);
        hooks::insert(tx, event, "message.delivered", at)?;
    }
    // A device's receipt (a connection without a `deviceId` is no device: its ack only
    // marks the copy delivered). Only a device with a position (made at its connect)
    // moves: acks cannot add devices past `max_devices_per_user`.
    if let Some(device) = device {
        // The first ack of each device is kept (the patch yields to what is there); a
        // copy's receipts stop growing at MAX_RECEIPTS_BYTES.
        tx.prepare_cached(
            "UPDATE inbox SET receipts = json_patch(json_object(?3, ?4), COALESCE(receipts, '{}'))
             WHERE user_id = ?1 AND seq = ?2 AND length(COALESCE(receipts, '')) < ?5",
        )?
        .execute(params![
            user,
            seq,
            device,
            at as i64,
            MAX_RECEIPTS_BYTES as i64
        ])?;
        tx.prepare_cached(
            "UPDATE devices SET acked_seq = MAX(acked_seq, ?3) WHERE user_id = ?1 AND device_id = ?2",
        )?
        .execute(params![user, device, seq])?;
    }
    Ok(())
}

fn sweep(tx: &Transaction<'_>, r: Retention) -> Result<u64, rusqlite::Error> {
    let cutoff = r.now_ms.saturating_sub(r.max_age_ms) as i64;
    // A user's last seq must outlive the inbox rows it is read from.
    tx.execute(
        "INSERT INTO users (user_id, last_seq)
         SELECT user_id, MAX(seq) FROM inbox WHERE ts < ?1 GROUP BY user_id
         ON CONFLICT (user_id) DO UPDATE SET last_seq = MAX(users.last_seq, excluded.last_seq)",
        [cutoff],
    )?;
    let mut n = tx.execute("DELETE FROM inbox WHERE ts < ?1", [cutoff])? as u64;
    // Deleting by count keeps each user's newest rows, and with them the last seq.
    n += tx.execute(
        "DELETE FROM inbox WHERE seq <= (SELECT MAX(seq) FROM inbox AS newest
                                         WHERE newest.user_id = inbox.user_id) - ?1",
        [r.max_messages.max(1) as i64],
    )? as u64;
    tx.execute(
        "DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.message_id = messages.id)",
        [],
    )?;
    let idem_cutoff = r.now_ms.saturating_sub(r.idempotency_window_ms) as i64;
    tx.execute(
        "DELETE FROM idempotency WHERE created_at < ?1",
        [idem_cutoff],
    )?;
    Ok(n)
}

fn answer(conn: &Connection, op: ReadOp) {
    match op {
        ReadOp::Messages {
            user,
            after,
            limit,
            max_bytes,
            reply,
        } => {
            let page = messages(conn, &user, after, limit, max_bytes);
            let _ = reply.send(page.map_err(Into::into));
        }
        ReadOp::Unread { user, reply } => {
            let _ = reply.send(unread(conn, &user).map_err(Into::into));
        }
        ReadOp::DeviceAcked {
            user,
            device,
            reply,
        } => {
            let r = conn
                .prepare_cached(
                    "SELECT acked_seq FROM devices WHERE user_id = ?1 AND device_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row([&user, &device], |r| r.get::<_, i64>(0))
                        .optional()
                })
                .map(|v| v.map(|s| s as u64))
                .map_err(Into::into);
            let _ = reply.send(r);
        }
        ReadOp::State { id, reply } => {
            let _ = reply.send(state(conn, &id).map_err(Into::into));
        }
        ReadOp::IdempotencyKey { key, reply } => {
            let r = conn
                .prepare_cached("SELECT 1 FROM idempotency WHERE key = ?1")
                .and_then(|mut s| s.exists([&key]))
                .map_err(Into::into);
            let _ = reply.send(r);
        }
        ReadOp::Outbox { reply } => {
            let _ = reply.send(hooks::stats(conn).map_err(Into::into));
        }
        ReadOp::Revocations { since, reply } => {
            let _ = reply.send(users::revocations(conn, since).map_err(Into::into));
        }
    }
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

fn messages(
    conn: &Connection,
    user: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StoredMessage>, rusqlite::Error> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT i.seq, i.message_id, m.event, m.data, i.ts, i.delivered_at, i.read_at
         FROM inbox i JOIN messages m ON m.id = i.message_id
         WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![user, after, limit as i64], |r| {
        let data: String = r.get(3)?;
        Ok(StoredMessage {
            seq: r.get::<_, i64>(0)? as u64,
            id: r.get(1)?,
            event: r.get(2)?,
            data: serde_json::value::RawValue::from_string(data).unwrap_or_else(|_| raw_null()),
            ts: r.get::<_, i64>(4)? as u64,
            delivered_at: opt_u64(r.get(5)?),
            read_at: opt_u64(r.get(6)?),
        })
    })?;
    let mut page = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let m = row?;
        bytes += m.data.get().len();
        page.push(m);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(page)
}

pub(super) fn raw_null() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
}

fn unread(conn: &Connection, user: &str) -> Result<Unread, rusqlite::Error> {
    let (last, read): (i64, i64) = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT last_seq FROM users WHERE user_id = ?1), 0),
                        COALESCE((SELECT MAX(seq) FROM inbox WHERE user_id = ?1), 0)),
                    COALESCE((SELECT read_upto FROM users WHERE user_id = ?1), 0)",
        )?
        .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if last == 0 {
        return Ok(Unread::default());
    }
    let unread: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM inbox WHERE user_id = ?1 AND seq > ?2")?
        .query_row(params![user, read], |r| r.get(0))?;
    Ok(Unread {
        unread: unread as u64,
        last_seq: last as u64,
        read_up_to: read as u64,
    })
}

fn state(conn: &Connection, id: &str) -> Result<Option<MessageState>, rusqlite::Error> {
    let head: Option<(String, i64)> = conn
        .prepare_cached("SELECT event, ts FROM messages WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((event, ts)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, seq, ts, delivered_at, read_at, receipts FROM inbox
         WHERE message_id = ?1 ORDER BY user_id LIMIT 10000",
    )?;
    let recipients = stmt
        .query_map([id], |r| {
            Ok(Recipient {
                user: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                stored_at: r.get::<_, i64>(2)? as u64,
                delivered_at: opt_u64(r.get(3)?),
                read_at: opt_u64(r.get(4)?),
                devices: receipts_of(r.get::<_, Option<String>>(5)?.as_deref()),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(MessageState {
        id: id.to_owned(),
        event,
        ts: ts as u64,
        recipients,
    }))
}
