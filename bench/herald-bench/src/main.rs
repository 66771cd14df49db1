//! herald-bench: opens many Socket.IO connections over WebSocket without a client
//! library (framing by hand, so one process holds thousands of sockets cheaply).
//!
//! `herald-bench idle --target 127.0.0.1:3000 --connections 10000` connects, joins the
//! root namespace, answers heartbeats, prints `connected N`, and holds the connections
//! until interrupted or `--hold-secs` pass.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(name = "herald-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold idle Socket.IO connections.
    Idle {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:3000")]
        target: SocketAddr,
        /// Socket.IO path.
        #[arg(long, default_value = "/socket.io/")]
        path: String,
        /// Number of connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Local source addresses to spread connections over (each gives ~28k ports).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
        sources: Vec<IpAddr>,
        /// Engine.IO revision: 4 (socket.io-client 3+) or 3 (2.x).
        #[arg(long, default_value_t = 4)]
        eio: u8,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seconds to hold the connections (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
        /// Connect as users `<prefix><n>` (development-mode `userId`); empty: no user.
        #[arg(long, default_value = "")]
        user_prefix: String,
        /// Distinct users the connections are spread over (0: one user per connection).
        #[arg(long, default_value_t = 0)]
        users: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Idle {
            target,
            path,
            connections,
            sources,
            eio,
            concurrency,
            hold_secs,
            user_prefix,
            users,
        } => {
            let spec = Spec {
                target,
                path,
                eio,
                user_prefix,
                users,
            };
            idle(&spec, connections, &sources, concurrency, hold_secs).await
        }
    }
}

/// How to reach the server and who to connect as.
struct Spec {
    target: SocketAddr,
    path: String,
    eio: u8,
    user_prefix: String,
    users: usize,
}

impl Spec {
    fn user(&self, i: usize) -> Option<String> {
        if self.user_prefix.is_empty() {
            return None;
        }
        let n = if self.users == 0 { i } else { i % self.users };
        Some(format!("{}{n}", self.user_prefix))
    }

    /// The upgrade request; v3 clients carry the user in the query.
    fn request(&self, user: Option<&str>) -> String {
        let (path, eio, target) = (&self.path, self.eio, self.target);
        let user = match (self.eio, user) {
            (3, Some(u)) => format!("&userId={u}"),
            _ => String::new(),
        };
        format!(
            "GET {path}?EIO={eio}&transport=websocket{user} HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// The namespace CONNECT a v4 client sends; v3 clients are connected implicitly.
    fn connect(&self, user: Option<&str>) -> Option<String> {
        (self.eio == 4).then(|| match user {
            Some(u) => format!("40{{\"userId\":\"{u}\"}}"),
            None => "40".to_owned(),
        })
    }
}

async fn idle(
    spec: &Spec,
    n: usize,
    sources: &[IpAddr],
    concurrency: usize,
    hold_secs: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(concurrency));
    let target = spec.target;
    for i in 0..n {
        let source = sources[i % sources.len()];
        let permit = gate.clone().acquire_owned().await?;
        let (connected, failed) = (connected.clone(), failed.clone());
        let user = spec.user(i);
        let request = spec.request(user.as_deref());
        let connect = spec.connect(user.as_deref());
        tokio::spawn(async move {
            match handshake(target, source, &request, connect.as_deref()).await {
                Ok(stream) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    hold(stream).await;
                    connected.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connection failed: {e:#}");
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("handshakes did not finish in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "connected {} failed {} in {:.2}s",
        connected.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if hold_secs == 0 {
        tokio::signal::ctrl_c().await?;
    } else {
        tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    }
    Ok(())
}

async fn handshake(
    target: SocketAddr,
    source: IpAddr,
    request: &str,
    connect: Option<&str>,
) -> anyhow::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(target).await.context("connect")?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    read_until(&mut stream, &mut buf, |b| {
        find(b, b"\r\n\r\n").map(|i| i + 4)
    })
    .await?;
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&buf));
    }
    let end = find(&buf, b"\r\n\r\n").map(|i| i + 4).unwrap_or(buf.len());
    buf.drain(..end);
    // Engine.IO open packet.
    let open = next_text(&mut stream, &mut buf).await?;
    if !open.starts_with('0') {
        bail!("expected open packet, got {open}");
    }
    if let Some(c) = connect {
        send_text(&mut stream, c).await?;
    }
    let connect = next_text(&mut stream, &mut buf).await?;
    if !connect.starts_with("40") {
        bail!("expected connect, got {connect}");
    }
    Ok(stream)
}

/// Keeps a connection alive: answers v4 pings; ends when the server closes.
async fn hold(mut stream: TcpStream) {
    let mut buf = Vec::new();
    while let Ok(text) = next_text(&mut stream, &mut buf).await {
        if text == "2" && send_text(&mut stream, "3").await.is_err() {
            break;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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
        let total = read_until(stream, buf, frame_len).await?;
        let frame: Vec<u8> = buf.drain(..total).collect();
        let opcode = frame[0] & 0x0F;
        let hl = match frame[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        match opcode {
            1 => return Ok(String::from_utf8_lossy(&frame[hl..]).into_owned()),
            8 => bail!("closed by server"),
            _ => continue,
        }
    }
}

fn frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 2 {
        return None;
    }
    let (len, hl) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= hl + len).then_some(hl + len)
}

async fn send_text(stream: &mut TcpStream, text: &str) -> anyhow::Result<()> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    assert!(text.len() < 126, "short control texts only");
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    stream.write_all(&frame).await?;
    Ok(())
}
