//! A small Redis client, just what the cluster router needs: pipelined commands on one
//! connection, and a subscriber connection. RESP2 over TCP, with reconnects left to the
//! caller (both connections report when they break).

use std::future::Future;
use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Status(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn into_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(a)) => a,
            _ => Vec::new(),
        }
    }
}

/// Why a command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis connection lost")]
    Disconnected,
    #[error("redis error: {0}")]
    Server(String),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`; `Ok(None)` if incomplete.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, io::Error> {
    let mut pos = 0;
    match parse_at(buf, &mut pos)? {
        Some(r) => {
            buf.advance(pos);
            Ok(Some(r))
        }
        None => Ok(None),
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP: {what}"))
}

fn line(buf: &[u8], pos: &mut usize) -> Option<std::ops::Range<usize>> {
    let start = *pos;
    let end = buf[start..].windows(2).position(|w| w == b"\r\n")? + start;
    *pos = end + 2;
    Some(start..end)
}

fn parse_at(buf: &[u8], pos: &mut usize) -> Result<Option<Reply>, io::Error> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    *pos += 1;
    let Some(l) = line(buf, pos) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[l]).map_err(|_| bad("not UTF-8"))?;
    let int = || text.parse::<i64>().map_err(|_| bad("not a number"));
    Ok(Some(match kind {
        b'+' => Reply::Status(text.to_owned()),
        b'-' => Reply::Error(text.to_owned()),
        b':' => Reply::Int(int()?),
        b'$' => {
            let n = int()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let n = n as usize;
                if buf.len() < *pos + n + 2 {
                    return Ok(None);
                }
                let data = buf[*pos..*pos + n].to_vec();
                *pos += n + 2;
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    match parse_at(buf, pos)? {
                        Some(r) => items.push(r),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad("unknown type")),
    }))
}

/// Connects to Redis with Nagle's algorithm off (commands are small and pipelined).
async fn dial(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The next reply on a connection, reading more as needed; `None` once the connection
/// ends or sends something that is not RESP.
async fn next_reply(r: &mut OwnedReadHalf, buf: &mut BytesMut) -> Option<Reply> {
    loop {
        match parse(buf) {
            Ok(Some(reply)) => return Some(reply),
            Ok(None) => {}
            Err(_) => return None,
        }
        match r.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Runs a connection's writer and reader until either ends; the receiver returned
/// completes then.
fn run(
    writer: impl Future<Output = ()> + Send + 'static,
    reader: impl Future<Output = ()> + Send + 'static,
) -> oneshot::Receiver<()> {
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
        let _ = closed_tx.send(());
    });
    closed
}

/// Who waits for a command's reply.
enum Waiter {
    /// Nobody: the reply is discarded.
    Nobody,
    /// A caller.
    Caller(oneshot::Sender<Reply>),
    /// Nobody, but the time from sending to the reply is recorded.
    Timed(std::time::Instant, crate::metrics::Histogram),
}

/// A command connection: commands are pipelined, replies matched in order.
#[derive(Clone)]
pub struct Commands {
    tx: mpsc::Sender<(Vec<u8>, Waiter)>,
}

impl Commands {
    /// Connects; the connection's task ends (and `closed` completes) when it breaks.
    pub async fn connect(addr: &str) -> io::Result<(Commands, oneshot::Receiver<()>)> {
        let (mut r, mut w) = dial(addr).await?.into_split();
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Waiter)>(65_536);
        // Who waits for each reply, in the order the commands were written.
        let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Waiter>();
        let writer = async move {
            let mut out = Vec::new();
            while let Some((cmd, reply)) = rx.recv().await {
                out.clear();
                out.extend_from_slice(&cmd);
                if pending_tx.send(reply).is_err() {
                    return;
                }
                // Gather whatever else is queued into the same write.
                while let Ok((cmd, reply)) = rx.try_recv() {
                    out.extend_from_slice(&cmd);
                    if pending_tx.send(reply).is_err() {
                        return;
                    }
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        };
        let reader = async move {
            let mut buf = BytesMut::with_capacity(4096);
            while let Some(reply) = next_reply(&mut r, &mut buf).await {
                match pending_rx.recv().await {
                    Some(Waiter::Caller(tx)) => {
                        let _ = tx.send(reply);
                    }
                    Some(Waiter::Timed(at, h)) => h.observe(at.elapsed().as_secs_f64()),
                    Some(Waiter::Nobody) => {}
                    None => return,
                }
            }
        };
        Ok((Commands { tx }, run(writer, reader)))
    }

    /// Sends a command and waits for its reply.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut cmd = Vec::new();
        encode(args, &mut cmd);
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((cmd, Waiter::Caller(tx)))
            .await
            .map_err(|_| RedisError::Disconnected)?;
        match rx.await.map_err(|_| RedisError::Disconnected)? {
            Reply::Error(e) => Err(RedisError::Server(e)),
            r => Ok(r),
        }
    }

    /// Sends a command without waiting for its reply (its reply is discarded). Fails
    /// only if the connection is gone or its queue is full.
    pub fn send(&self, args: &[&[u8]]) -> Result<(), RedisError> {
        self.queue(args, Waiter::Nobody)
    }

    /// [`Commands::send`], recording the time until Redis answers in `took`.
    pub fn send_timed(
        &self,
        args: &[&[u8]],
        took: &crate::metrics::Histogram,
    ) -> Result<(), RedisError> {
        self.queue(args, Waiter::Timed(std::time::Instant::now(), took.clone()))
    }

    fn queue(&self, args: &[&[u8]], waiter: Waiter) -> Result<(), RedisError> {
        let mut cmd = Vec::new();
        encode(args, &mut cmd);
        self.tx
            .try_send((cmd, waiter))
            .map_err(|_| RedisError::Disconnected)
    }
}

/// A subscriber connection. Messages arrive on the receiver given at connect.
pub struct Subscriber {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

/// A message published to a channel this node subscribes to.
#[derive(Debug)]
pub struct Published {
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Subscriber {
    /// Connects; published messages go to `out`. The receiver returned completes when
    /// the connection breaks.
    pub async fn connect(
        addr: &str,
        out: mpsc::Sender<Published>,
    ) -> io::Result<(Subscriber, oneshot::Receiver<()>)> {
        let (mut r, mut w) = dial(addr).await?.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = async move {
            while let Some(mut cmd) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    cmd.extend_from_slice(&more);
                }
                if w.write_all(&cmd).await.is_err() {
                    return;
                }
            }
        };
        let reader = async move {
            let mut buf = BytesMut::with_capacity(4096);
            while let Some(reply) = next_reply(&mut r, &mut buf).await {
                let mut items = reply.into_array().into_iter();
                let kind = items.next().and_then(|k| k.as_text());
                if kind.as_deref() != Some("message") {
                    continue; // subscribe and unsubscribe confirmations
                }
                let (Some(Reply::Bulk(Some(channel))), Some(Reply::Bulk(Some(payload)))) =
                    (items.next(), items.next())
                else {
                    continue;
                };
                if out.send(Published { channel, payload }).await.is_err() {
                    return;
                }
            }
        };
        Ok((Subscriber { tx }, run(writer, reader)))
    }

    /// Sends an encoded command as it is (AUTH before subscribing).
    pub fn raw(&self, cmd: Vec<u8>) -> Result<(), RedisError> {
        self.tx.send(cmd).map_err(|_| RedisError::Disconnected)
    }

    pub fn subscribe(&self, channels: &[&[u8]]) -> Result<(), RedisError> {
        self.command(b"SUBSCRIBE", channels)
    }

    pub fn unsubscribe(&self, channels: &[&[u8]]) -> Result<(), RedisError> {
        self.command(b"UNSUBSCRIBE", channels)
    }

    fn command(&self, name: &[u8], channels: &[&[u8]]) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&[u8]> = vec![name];
        args.extend_from_slice(channels);
        let mut cmd = Vec::new();
        encode(&args, &mut cmd);
        self.tx.send(cmd).map_err(|_| RedisError::Disconnected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"v"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn parses_every_reply_kind_and_waits_for_more() {
        let input = b"+OK\r\n-ERR x\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n*-1\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let mut got = Vec::new();
        while let Some(r) = parse(&mut buf).unwrap() {
            got.push(r);
        }
        assert_eq!(got.len(), 7);
        assert_eq!(got[0], Reply::Status("OK".into()));
        assert_eq!(got[1], Reply::Error("ERR x".into()));
        assert_eq!(got[2].as_int(), Some(42));
        assert_eq!(got[3].as_text().as_deref(), Some("abc"));
        assert_eq!(got[4], Reply::Bulk(None));
        assert_eq!(got[5].clone().into_array().len(), 2);
        // A reply cut anywhere is left in the buffer until the rest arrives.
        let whole = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(parse(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        assert!(parse(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }
}
