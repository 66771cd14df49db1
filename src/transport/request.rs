//! Reading a request and writing its answer, each within its deadline: a request head
//! within the request timeout of its first byte, a body within the request timeout plus
//! what the slowest tolerated rate needs for it, an answer likewise; so a client that
//! trickles bytes, or does not read, cannot hold its connection.

use std::io;

use tokio::net::TcpStream;

use super::engine::EngineInner;
use super::http::{self, BodyReader, BodyStep, Head, HeadError};

/// Reads until a full request head is buffered: the first byte within `idle`, the whole
/// head within the request timeout from then (however the bytes trickle in).
/// `Ok(None)`: the client closed the connection, or sent nothing in time.
/// `Err(status)`: answer with that status and close.
pub(super) async fn read_head(
    engine: &EngineInner,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
) -> Result<Option<Head>, u16> {
    let max = engine.config.max_header_bytes;
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, max) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(HeadError::TooLarge) => return Err(431),
                Err(HeadError::Malformed) => return Err(400),
            }
        }
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, read_some(stream, buf)).await,
            None => tokio::time::timeout(idle, read_some(stream, buf)).await,
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Ok(None),
            Err(_) if buf.is_empty() => return Ok(None),
            Err(_) => {
                engine.metrics.request_timeouts.inc();
                return Err(408);
            }
        };
        if n == 0 {
            return Ok(None);
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + engine.config.request_timeout);
    }
}

/// Reads what is available (at least one byte, or 0 at end of stream) onto `buf`.
pub(super) async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `bytes`, within the request timeout plus what the slowest tolerated
/// rate needs for them: a client that does not read its answer cannot hold the
/// connection.
pub(super) async fn write(
    engine: &EngineInner,
    stream: &TcpStream,
    mut bytes: &[u8],
) -> io::Result<()> {
    // Most answers fit the socket's buffer: written at once, with no timer to set up.
    match stream.try_write(bytes) {
        Ok(n) => bytes = &bytes[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    if bytes.is_empty() {
        return Ok(());
    }
    let cfg = &engine.config;
    let allowed = cfg.request_timeout
        + std::time::Duration::from_secs_f64(bytes.len() as f64 / cfg.min_body_rate.max(1) as f64);
    let all = async {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(allowed, all).await {
        Ok(r) => r,
        Err(_) => {
            engine.metrics.request_timeouts.inc();
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

pub(super) enum BodyError {
    TooLarge,
    Malformed,
    Gone,
}

/// Reads a request body (fixed length or chunked), at most `max` bytes.
pub(super) async fn read_body(
    engine: &EngineInner,
    stream: &TcpStream,
    head: &Head,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let cfg = &engine.config;
    let start = tokio::time::Instant::now();
    // The whole body within the request timeout, plus time for a large body at the
    // slowest rate tolerated: a trickle cannot hold the connection.
    let deadline = |size: usize| {
        let rate = cfg.min_body_rate.max(1) as f64;
        start + cfg.request_timeout + std::time::Duration::from_secs_f64(size as f64 / rate)
    };
    async fn read(
        engine: &EngineInner,
        stream: &TcpStream,
        buf: &mut Vec<u8>,
        at: tokio::time::Instant,
    ) -> Result<(), BodyError> {
        match tokio::time::timeout_at(at, read_some(stream, buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) => Err(BodyError::Gone),
            Err(_) => {
                engine.metrics.request_timeouts.inc();
                Err(BodyError::Gone)
            }
        }
    }
    let mut body = BodyReader::new(head);
    loop {
        match body.step(buf, max) {
            BodyStep::Done(b) => return Ok(b),
            BodyStep::TooLarge => return Err(BodyError::TooLarge),
            BodyStep::Malformed => return Err(BodyError::Malformed),
            BodyStep::Incomplete => {
                let at = deadline(body.size(buf));
                read(engine, stream, buf, at).await?
            }
        }
    }
}
