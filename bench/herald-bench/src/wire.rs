//! Socket.IO over WebSocket by hand: the TCP connect (spread over source addresses), the
//! upgrade, the Engine.IO open packet and the namespace CONNECT, then a receive loop
//! that reads into one scratch buffer shared by every connection of the thread and keeps
//! only a partial frame per connection.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How to reach the server and who to connect as.
#[derive(Clone, Debug)]
pub struct Spec {
    pub target: SocketAddr,
    pub path: String,
    /// Engine.IO revision: 4 (socket.io-client 3+) or 3 (2.x).
    pub eio: u8,
    /// Users are `<prefix><n>`; empty: connect without a user.
    pub user_prefix: String,
    /// Distinct users the connections are spread over (0: one user per connection).
    pub users: usize,
    /// Answer events that ask for an ack (`42<id>[...]`) with `43<id>[]`, as a client
    /// whose handler calls the ack callback does.
    pub ack: bool,
    /// The `deviceId` every connection gives, if any.
    pub device_id: Option<String>,
}

impl Spec {
    /// The user index of connection `i`.
    pub fn user_index(&self, i: usize) -> usize {
        if self.users == 0 {
            i
        } else {
            i % self.users
        }
    }

    pub fn user(&self, i: usize) -> Option<String> {
        if self.user_prefix.is_empty() {
            return None;
        }
        Some(format!("{}{}", self.user_prefix, self.user_index(i)))
    }

    /// The upgrade request; v3 clients carry the user in the query.
    pub fn request(&self, user: Option<&str>) -> String {
        let (path, eio, target) = (&self.path, self.eio, self.target);
        let mut user = match (self.eio, user) {
            (3, Some(u)) => format!("&userId={u}"),
            _ => String::new(),
        };
        if let (3, Some(d)) = (self.eio, &self.device_id) {
            user.push_str(&format!("&deviceId={d}"));
        }
        format!(
            "GET {path}?EIO={eio}&transport=websocket{user} HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// The namespace CONNECT a v4 client sends; v3 clients are connected implicitly.
    pub fn connect(&self, user: Option<&str>) -> Option<String> {
        let device = self
            .device_id
            .as_ref()
            .map(|d| format!(",\"deviceId\":\"{d}\""))
            .unwrap_or_default();
        (self.eio == 4).then(|| match user {
            Some(u) => format!("40{{\"userId\":\"{u}\"{device}}}"),
            None => "40".to_owned(),
        })
    }
}

/// Opens a TCP connection from `source`. The port is chosen at connect time
/// (IP_BIND_ADDRESS_NO_PORT), so each source address offers a full ephemeral range per
/// destination and ports in TIME_WAIT can be reused on loopback.
pub async fn tcp(target: SocketAddr, source: IpAddr) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if target.is_ipv4() == source.is_ipv4() {
        let one: libc::c_int = 1;
        // SAFETY: a plain setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An open Socket.IO connection and any bytes read past the handshake.
pub struct Conn {
    pub stream: TcpStream,
    pub pending: Vec<u8>,
}

/// Connects, upgrades, reads the open packet, joins `/`. Bounded by `limit`.
pub async fn handshake(
    spec: &Spec,
    source: IpAddr,
    user: Option<&str>,
    limit: Duration,
) -> anyhow::Result<Conn> {
    tokio::time::timeout(limit, handshake_inner(spec, source, user))
        .await
        .context("handshake timed out")?
}

async fn handshake_inner(spec: &Spec, source: IpAddr, user: Option<&str>) -> anyhow::Result<Conn> {
    let mut stream = tcp(spec.target, source).await.context("connect")?;
    stream.write_all(spec.request(user).as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let end = read_until(&mut stream, &mut buf, |b| {
        find(b, b"\r\n\r\n").map(|i| i + 4)
    })
    .await?;
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&buf));
    }
    buf.drain(..end);
    let open = next_text(&mut stream, &mut buf).await?;
    if !open.starts_with('0') {
        bail!("expected open packet, got {open}");
    }
    if let Some(c) = spec.connect(user) {
        send_text(&mut stream, &c).await?;
    }
    loop {
        let msg = next_text(&mut stream, &mut buf).await?;
        if msg.starts_with("40") {
            break;
        }
        if msg.starts_with("44") {
            bail!("connect refused: {msg}");
        }
        // A ping or anything else sent before the CONNECT answer.
        if msg == "2" && spec.eio == 4 {
            send_text(&mut stream, "3").await?;
        }
    }
    Ok(Conn {
        stream,
        pending: buf,
    })
}

/// Leaves cleanly, as socket.io-client's `disconnect()` does: a namespace DISCONNECT,
/// a WebSocket close frame, then waits (bounded) for the server to close.
pub async fn leave(mut conn: Conn, limit: Duration) -> anyhow::Result<()> {
    send_text(&mut conn.stream, "41").await?;
    // Close frame, code 1000, masked.
    let mask = [0x11, 0x22, 0x33, 0x44];
    let payload = [0x03u8, 0xE8];
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    conn.stream.write_all(&frame).await?;
    let wait = async {
        let mut chunk = [0u8; 512];
        loop {
            match conn.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
    Ok(())
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> anyhow::Result<usize> {
    loop {
        if let Some(n) = done(buf) {
            return Ok(n);
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the next server text frame (server frames are unmasked).
async fn next_text(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<String> {
    loop {
        let total = read_until(stream, buf, |b| frame(b).map(|f| f.total)).await?;
        let f = frame(buf).expect("complete frame");
        let text = String::from_utf8_lossy(&buf[f.start..f.total]).into_owned();
        let opcode = f.opcode;
        buf.drain(..total);
        match opcode {
            1 => return Ok(text),
            8 => bail!("closed by server"),
            _ => continue,
        }
    }
}

/// A complete frame at the start of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub opcode: u8,
    /// Offset of the payload.
    pub start: usize,
    /// Length of the whole frame.
    pub total: usize,
}

pub fn frame(b: &[u8]) -> Option<Frame> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (len, hl) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let hl = hl + if masked { 4 } else { 0 };
    (b.len() >= hl + len).then_some(Frame {
        opcode: b[0] & 0x0F,
        start: hl,
        total: hl + len,
    })
}

/// A masked client text frame.
pub fn text_frame(text: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = Vec::with_capacity(text.len() + 14);
    frame.push(0x81);
    match text.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    frame
}

pub async fn send_text(stream: &mut TcpStream, text: &str) -> anyhow::Result<()> {
    stream.write_all(&text_frame(text.as_bytes())).await?;
    Ok(())
}

thread_local! {
    /// One read buffer for every connection of the thread (the runtime is single-threaded).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// Why a receive loop ended.
#[derive(Debug)]
pub enum End {
    ClosedByServer,
    Error(io::Error),
}

/// Runs a connection until it closes: answers Engine.IO v4 pings (and WebSocket pings)
/// and hands every other text message to `on_text`.
pub async fn receive(conn: Conn, eio: u8, ack: bool, mut on_text: impl FnMut(&[u8])) -> End {
    let Conn {
        mut stream,
        mut pending,
    } = conn;
    // Whatever arrived with the handshake.
    let mut replies: Vec<Vec<u8>> = Vec::new();
    let mut closed = false;
    if !pending.is_empty() {
        let used = parse(&pending, eio, ack, &mut on_text, &mut replies, &mut closed);
        pending.drain(..used);
    }
    loop {
        for r in replies.drain(..) {
            if let Err(e) = stream.write_all(&r).await {
                return End::Error(e);
            }
        }
        if closed {
            return End::ClosedByServer;
        }
        if let Err(e) = stream.readable().await {
            return End::Error(e);
        }
        let got = SCRATCH.with_borrow_mut(|scratch| -> io::Result<usize> {
            let n = stream.try_read(scratch)?;
            if n == 0 {
                return Ok(0);
            }
            if pending.is_empty() {
                let used = parse(
                    &scratch[..n],
                    eio,
                    ack,
                    &mut on_text,
                    &mut replies,
                    &mut closed,
                );
                pending.extend_from_slice(&scratch[used..n]);
            } else {
                pending.extend_from_slice(&scratch[..n]);
                let used = parse(&pending, eio, ack, &mut on_text, &mut replies, &mut closed);
                pending.drain(..used);
            }
            Ok(n)
        });
        match got {
            Ok(0) => return End::ClosedByServer,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return End::Error(e),
        }
        if pending.capacity() > 64 * 1024 && pending.len() < 1024 {
            pending.shrink_to(1024);
        }
    }
}

/// Handles every complete frame in `data`; returns the bytes consumed.
fn parse(
    data: &[u8],
    eio: u8,
    ack: bool,
    on_text: &mut impl FnMut(&[u8]),
    replies: &mut Vec<Vec<u8>>,
    closed: &mut bool,
) -> usize {
    let mut at = 0;
    while let Some(f) = frame(&data[at..]) {
        let payload = &data[at + f.start..at + f.total];
        match f.opcode {
            1 => {
                if payload == b"2" && eio == 4 {
                    replies.push(text_frame(b"3"));
                } else if payload.starts_with(b"41") {
                    *closed = true;
                } else {
                    if ack && payload.starts_with(b"42") {
                        let digits = payload[2..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                        if digits > 0 {
                            let mut reply = b"43".to_vec();
                            reply.extend_from_slice(&payload[2..2 + digits]);
                            reply.extend_from_slice(b"[]");
                            replies.push(text_frame(&reply));
                        }
                    }
                    on_text(payload);
                }
            }
            8 => *closed = true,
            9 => {
                // WebSocket ping: answer with a masked pong carrying the same payload.
                let mut pong = text_frame(payload);
                pong[0] = 0x8A;
                replies.push(pong);
            }
            _ => {}
        }
        at += f.total;
    }
    at
}

/// Finds `"<key>":<digits>` in a message and parses the number.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let i = find(text, key)? + key.len();
    let digits = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[i..i + digits]).ok()?.parse().ok()
}
