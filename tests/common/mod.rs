//! Test helpers shared by the integration tests: a hand-rolled WebSocket client that can
//! send what no library would, and a raw HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs each named `async fn(fixture)` of the test file against SQLite and against
/// PostgreSQL; the file defines the `sqlite()` and `postgres()` fixtures.
#[allow(unused_macros)]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::sqlite().await).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::postgres().await).await
                }
            }
        )*
    };
}

pub mod pg;
pub mod redis;

/// How long a test waits for any one thing.
pub const WAIT: Duration = Duration::from_secs(5);

/// A hand-rolled WebSocket client, so tests can send what no library would.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `inbox` state herald sent right after CONNECT (see [`Ws::device`]).
    pub inbox: Option<serde_json::Value>,
}

pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16),
}

impl Ws {
    pub async fn connect(addr: SocketAddr, query: &str) -> Ws {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /socket.io/?{query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
            inbox: None,
        };
        let head = ws.read_until(b"\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    }

    /// Opens a v4 session and joins `/` with `auth` (a JSON object) as a herald device;
    /// returns once herald's `inbox` state has arrived (kept in `inbox`), which comes
    /// before any event.
    pub async fn device(addr: SocketAddr, auth: &str) -> Ws {
        let mut ws = Ws::connect(addr, "EIO=4&transport=websocket").await;
        assert!(ws.text().await.starts_with("0{"));
        ws.send_text(&format!("40{auth}")).await;
        let ack = ws.text().await;
        assert!(ack.starts_with("40{\"sid\""), "{ack}");
        loop {
            let t = ws.text().await;
            if let Some(state) = t.strip_prefix(r#"42["inbox","#) {
                let state = state.strip_suffix(']').expect("one argument");
                ws.inbox = Some(serde_json::from_str(state).expect("inbox state is JSON"));
                return ws;
            }
            assert!(!t.starts_with("42"), "an event before `inbox`: {t}");
        }
    }

    /// Opens a v4 session and joins `/`.
    pub async fn socketio(addr: SocketAddr) -> Ws {
        let mut ws = Ws::connect(addr, "EIO=4&transport=websocket").await;
        assert!(ws.text().await.starts_with("0{"));
        ws.send_text("40").await;
        assert!(ws.text().await.starts_with("40{\"sid\""));
        ws
    }

    /// The raw connection, for writing without reading.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub async fn read_until(&mut self, delim: &[u8]) -> String {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                let head: Vec<u8> = self.buf.drain(..i + delim.len()).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            self.fill().await;
        }
    }

    pub async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("timed out reading")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next frame, or `None` if the server closed the TCP connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0F;
                let (len, hl) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if hl > 0 && self.buf.len() >= hl + len {
                    let payload: Vec<u8> = self.buf.drain(..hl + len).skip(hl).collect();
                    return Some(match op {
                        1 => Frame::Text(String::from_utf8(payload).unwrap()),
                        2 => Frame::Binary(payload),
                        8 => Frame::Close(u16::from_be_bytes([payload[0], payload[1]])),
                        10 => Frame::Pong(payload),
                        other => panic!("unexpected opcode {other}"),
                    });
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    pub async fn text(&mut self) -> String {
        match self.frame().await {
            Some(Frame::Text(t)) => t,
            Some(Frame::Binary(b)) => panic!("expected text, got binary {b:?}"),
            Some(Frame::Pong(p)) => panic!("expected text, got pong {p:?}"),
            Some(Frame::Close(c)) => panic!("expected text, got close {c}"),
            None => panic!("expected text, got end of stream"),
        }
    }

    /// Skips pings and waits for the server's close frame; returns its code.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some(Frame::Close(c)) => return c,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(&masked(opcode, true, payload)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(1, text.as_bytes()).await;
    }

    /// Checks that the connection still echoes.
    pub async fn assert_alive(&mut self) {
        self.send_text("42[\"echo\",\"still here\"]").await;
        assert_eq!(self.text().await, "42[\"echo\",\"still here\"]");
    }
}

pub fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Sends a raw HTTP request on a new connection; returns status and body.
pub async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    try_http(addr, request)
        .await
        .expect("connect and send the request")
}

/// [`http`], or `None` if the server cannot be reached or stops reading the request
/// (a server being killed, say).
pub async fn try_http(addr: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&out);
            if let Some(i) = text.find("\r\n\r\n") {
                let len = text[..i]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if out.len() >= i + 4 + len {
                    break;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn get(path_query: &str) -> Vec<u8> {
    format!("GET {path_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The address a `herald` child process prints on its first line (`listening on ADDR`);
/// its stdout must be piped.
pub fn listening_addr(child: &mut std::process::Child) -> SocketAddr {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .parse()
        .unwrap()
}

/// The herald binary, with no admin listener unless a test sets `HERALD_ADMIN_LISTEN`
/// (its default address is one per machine).
pub fn herald_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("HERALD_ADMIN_LISTEN", "");
    c
}

/// A `herald` child process, killed when dropped. Its stdout stays open, read a line at
/// a time: herald writes there after its first line (`admin listener on …`).
pub struct Spawned {
    pub child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Spawned {
    /// Spawns `cmd` with its stdout piped.
    pub fn new(mut cmd: std::process::Command) -> Spawned {
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Spawned { child, stdout }
    }

    /// The address on the next line of stdout, which must start with `prefix`.
    pub fn line_addr(&mut self, prefix: &str) -> SocketAddr {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected `{prefix}…`, got {line:?}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
