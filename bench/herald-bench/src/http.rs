//! The publisher: pushes through a server's HTTP API over a pool of keep-alive HTTP/1.1
//! connections, each with one request in flight. Jobs wait in one queue; a job's latency
//! is measured from its intended send time, so time spent queued behind a busy pool
//! counts.
//!
//! Two API shapes:
//! - herald: `POST /api/v1/push` `{"to": {"users": [...]} | {"all": true}, "event",
//!   "data", "volatile"}`: one message per request.
//! - peer (the benchmark's socket.io and socketioxide servers): `POST /push` `{"users":
//!   [...] | null, "event", "data", "times"}`: `times` emits per request.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::procfs::now_ns;

/// Event name of every benchmark push.
pub const EVENT: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiKind {
    /// herald's `/api/v1/push`.
    Herald,
    /// The peers' `/push` with `times`.
    Peer,
}

/// Whom a push is for.
pub enum To<'a> {
    All,
    /// User indices (ids are `<prefix><index>`).
    Users(&'a [u32]),
}

/// Builds request bytes for one API.
pub struct Api {
    pub kind: ApiKind,
    pub target: SocketAddr,
    pub user_prefix: String,
    /// herald only: send `"volatile": false` on user pushes (durable delivery) instead of
    /// `"volatile": true`.
    pub durable: bool,
    pub key: Option<String>,
    /// Padding string added to every data object (`"p"`), to give pushes a size.
    pub pad: String,
}

impl Api {
    /// A push request carrying `{"k": k, "t": t}`; `times` > 1 only for peers.
    pub fn request(&self, to: To, k: u64, t: u64, times: u32) -> Vec<u8> {
        let data = if self.pad.is_empty() {
            format!("{{\"k\":{k},\"t\":{t}}}")
        } else {
            format!("{{\"k\":{k},\"t\":{t},\"p\":\"{}\"}}", self.pad)
        };
        let users = |us: &[u32]| {
            let mut s = String::from("[");
            for (i, u) in us.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push('"');
                s.push_str(&self.user_prefix);
                s.push_str(&u.to_string());
                s.push('"');
            }
            s.push(']');
            s
        };
        let (path, body) = match self.kind {
            ApiKind::Herald => {
                assert_eq!(times, 1, "herald takes one message per request");
                let (to, volatile) = match to {
                    To::All => ("{\"all\":true}".to_owned(), true),
                    To::Users(us) => (format!("{{\"users\":{}}}", users(us)), !self.durable),
                };
                (
                    "/api/v1/push",
                    format!("{{\"to\":{to},\"event\":\"{EVENT}\",\"data\":{data},\"volatile\":{volatile}}}"),
                )
            }
            ApiKind::Peer => {
                let to = match to {
                    To::All => "null".to_owned(),
                    To::Users(us) => users(us),
                };
                (
                    "/push",
                    format!("{{\"users\":{to},\"event\":\"{EVENT}\",\"data\":{data},\"times\":{times}}}"),
                )
            }
        };
        let auth = match &self.key {
            Some(k) => format!("Authorization: Bearer {k}\r\n"),
            None => String::new(),
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.target,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    }
}

/// A request to send, with the sequence numbers it carries.
pub struct Job {
    pub request: Vec<u8>,
    /// Intended send time (ns since the epoch).
    pub due: u64,
    /// The (first) sequence number it carries.
    pub k: u64,
}

#[derive(Default)]
struct Queue {
    jobs: RefCell<VecDeque<Job>>,
    notify: Notify,
    closed: Cell<bool>,
}

impl Queue {
    async fn next(&self) -> Option<Job> {
        loop {
            if let Some(j) = self.jobs.borrow_mut().pop_front() {
                return Some(j);
            }
            if self.closed.get() {
                return None;
            }
            self.notify.notified().await;
        }
    }
}

/// What the pool has done.
pub struct HttpStats {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub in_flight: u64,
    /// Intended send time → response, µs.
    pub latency: Histogram<u64>,
    /// Sequence numbers of the requests answered 200 (the server took them on).
    pub acked: Vec<u64>,
    pub errors: Vec<String>,
}

impl HttpStats {
    fn new() -> HttpStats {
        HttpStats {
            sent: 0,
            ok: 0,
            failed: 0,
            in_flight: 0,
            latency: crate::tracker::histogram(),
            acked: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// A pool of keep-alive connections sending queued jobs.
pub struct Pool {
    queue: Rc<Queue>,
    pub stats: Rc<RefCell<HttpStats>>,
}

impl Pool {
    /// Starts `n` connections' workers on the current `LocalSet`.
    pub fn start(target: SocketAddr, n: usize) -> Pool {
        let queue = Rc::new(Queue::default());
        let stats = Rc::new(RefCell::new(HttpStats::new()));
        for _ in 0..n {
            let (queue, stats) = (queue.clone(), stats.clone());
            tokio::task::spawn_local(worker(target, queue, stats));
        }
        Pool { queue, stats }
    }

    pub fn send(&self, job: Job) {
        self.queue.jobs.borrow_mut().push_back(job);
        self.queue.notify.notify_one();
    }

    /// Jobs waiting for a connection.
    pub fn queued(&self) -> usize {
        self.queue.jobs.borrow().len()
    }

    /// Removes the jobs not yet sent and returns them.
    pub fn clear(&self) -> Vec<Job> {
        self.queue.jobs.borrow_mut().drain(..).collect()
    }

    /// No job queued or in flight.
    pub fn idle(&self) -> bool {
        self.queued() == 0 && self.stats.borrow().in_flight == 0
    }

    /// Resets the counters.
    pub fn reset(&self) {
        *self.stats.borrow_mut() = HttpStats::new();
    }

    /// Waits until idle, at most `limit`; returns whether it got there.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.idle() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    pub fn close(&self) {
        self.queue.closed.set(true);
        self.queue.notify.notify_waiters();
    }
}

async fn worker(target: SocketAddr, queue: Rc<Queue>, stats: Rc<RefCell<HttpStats>>) {
    let mut conn: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while let Some(job) = queue.next().await {
        {
            let mut s = stats.borrow_mut();
            s.sent += 1;
            s.in_flight += 1;
        }
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            exchange(&mut conn, target, &job.request, &mut buf),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 30 s")));
        let mut s = stats.borrow_mut();
        s.in_flight -= 1;
        match res {
            Ok((200, keep)) => {
                s.ok += 1;
                s.acked.push(job.k);
                let us = now_ns().saturating_sub(job.due) / 1000;
                s.latency.saturating_record(us.max(1));
                if !keep {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                s.failed += 1;
                if s.errors.len() < 5 {
                    s.errors.push(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&buf)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    ));
                }
                conn = None;
            }
            Err(e) => {
                s.failed += 1;
                if s.errors.len() < 5 {
                    s.errors.push(format!("{e:#}"));
                }
                conn = None;
            }
        }
    }
}

/// Sends one request and reads its response; returns (status, keep-alive). The
/// response body is left in `buf`.
async fn exchange(
    conn: &mut Option<TcpStream>,
    target: SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, bool)> {
    if conn.is_none() {
        let s = TcpStream::connect(target).await.context("connect")?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let stream = conn.as_mut().expect("connected");
    stream.write_all(request).await.context("write")?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.context("read")?;
        if n == 0 {
            bail!("connection closed before the response");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => continue,
        };
        let status = resp.code.unwrap_or(0);
        let mut length = None;
        let mut chunked = false;
        let mut keep = true;
        for h in resp.headers.iter() {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                keep = !v.eq_ignore_ascii_case("close");
            }
        }
        // Read the rest of the body.
        loop {
            let body = &buf[head..];
            let done = match (length, chunked) {
                (Some(l), _) => body.len() >= l,
                (None, true) => body.ends_with(b"0\r\n\r\n"),
                (None, false) => {
                    keep = false;
                    true
                }
            };
            if done {
                buf.drain(..head);
                return Ok((status, keep));
            }
            let n = stream.read(&mut chunk).await.context("read body")?;
            if n == 0 {
                bail!("connection closed in the body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
