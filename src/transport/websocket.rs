//! The WebSocket connection task: one task per connection that reads frames and writes
//! the session's queue, with no idle buffers.
//!
//! Reads go into a per-thread scratch buffer; only an incomplete frame is kept per
//! connection. Writes go straight to the socket from the shared packet bytes (a frame
//! header on the stack plus the payload, gathered with `writev`); only what the socket
//! refuses is copied and kept until it can be written. Once the connection carries the
//! session, the session owns writing (see `session`): the engine's flusher writes what
//! is pushed, and this task writes only when the socket had refused something, or for
//! its own frames (pongs, the close frame).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use super::frame::{self, FrameError, MAX_HEADER};
use super::frame_reader::{Event, Flow, FrameReader};
use super::packet::{self, Eio, Kind, Outbound, Packet};
use super::session::{CloseReason, Session, WsEnd};

/// Bytes read per `read` call into the shared scratch buffer.
const SCRATCH: usize = 64 << 10;
/// Packets gathered into one `writev` (two slices each, within `IOV_MAX`).
const BATCH: usize = 128;
/// Reads per poll before yielding to other connections.
const READS_PER_POLL: usize = 16;
/// Frames handled per poll before yielding: a client flooding small frames gets no more
/// of a worker's turn than this, and the rest of what it sent waits in `partial`.
const FRAMES_PER_POLL: usize = 256;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// The state of one WebSocket connection.
struct Driver {
    stream: Arc<TcpStream>,
    session: Arc<Session>,
    /// Largest frame or message payload accepted.
    max_payload: usize,
    /// Still upgrading from polling: only probe and upgrade packets are expected.
    upgrading: bool,
    /// What is kept of the incoming stream between reads: an incomplete frame, a
    /// fragmented message, frames left for the next turn.
    reader: FrameReader,
    /// Until the session is attached (while upgrading): bytes of this task's own frames
    /// not yet written. Afterwards the session keeps them.
    unwritten: Vec<u8>,
    /// The session writes to this connection (see `Session::attach_ws`).
    attached: bool,
    /// A close frame has been queued; stop once it is written.
    closing: bool,
    /// The client asked for more answers than it reads: drop the connection at once,
    /// with nothing more written.
    abandon: bool,
    /// Once the session has ended: when to give up on a peer that does not read what is
    /// left (the rest of a frame, the close frame), so that it cannot hold the connection.
    linger: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// How long that is: the ping timeout.
    linger_for: std::time::Duration,
}

/// Runs a WebSocket connection until it ends. `leftover` holds bytes read past the
/// HTTP upgrade request.
pub(crate) async fn run(
    stream: TcpStream,
    session: Arc<Session>,
    upgrading: bool,
    leftover: Vec<u8>,
    max_payload: usize,
    linger_for: std::time::Duration,
) {
    let mut d = Driver {
        stream: Arc::new(stream),
        session,
        // An Engine.IO packet adds a type byte to the message.
        max_payload: max_payload + 1,
        upgrading,
        reader: FrameReader::default(),
        unwritten: Vec::new(),
        attached: false,
        closing: false,
        abandon: false,
        linger: None,
        linger_for,
    };
    if !upgrading {
        // A fresh session's handshake packet waits 1 ms after the 101. Clients built on
        // `ws` (the official test suites among them) listen for messages only once their
        // `open` event has fired; a handshake that shares the 101's TCP segment would
        // reach them before that and be lost. See docs/protocol.md.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        d.attach();
    }
    if !leftover.is_empty() {
        let mut buf = leftover;
        let mut budget = FRAMES_PER_POLL;
        d.process(&mut buf, &mut budget);
    }
    poll_fn(|cx| d.poll(cx)).await;
    if d.upgrading {
        d.session.abort_upgrade();
    }
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.closing && !self.backlogged() && self.poll_read(cx).is_ready() {
            return Poll::Ready(());
        }
        if self.abandon {
            return Poll::Ready(());
        }
        let was_backlogged = self.backlogged();
        if self.poll_write(cx).is_ready() {
            return Poll::Ready(());
        }
        if was_backlogged && !self.closing && !self.backlogged() {
            // Writing caught up: read what waited meanwhile (its readiness may have been
            // reported while this task was not reading, and will not be again).
            if self.poll_read(cx).is_ready() || self.poll_write(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        if self.closing {
            self.start_linger();
        }
        if let Some(linger) = self.linger.as_mut() {
            if linger.as_mut().poll(cx).is_ready() {
                // The peer does not read: drop the connection with what is unwritten.
                self.end(CloseReason::TransportError);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Whether what was last written is still waiting for the socket: then nothing more
    /// is read (back pressure), so a client that does not read cannot make this
    /// connection pile up answers (pongs) for it.
    fn backlogged(&self) -> bool {
        if self.attached {
            self.session.ws_backlogged()
        } else {
            !self.unwritten.is_empty()
        }
    }

    /// Reads and handles whatever the socket has, within a budget of frames per turn.
    /// Ready means the connection is over.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = FRAMES_PER_POLL;
        if self.reader.has_backlog() {
            self.process(&mut [], &mut budget);
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        for _ in 0..READS_PER_POLL {
            if self.closing || self.backlogged() {
                return Poll::Pending;
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    self.end(CloseReason::TransportError);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            let done = SCRATCH_BUF.with(|cell| {
                let mut scratch = cell.borrow_mut();
                match self.stream.try_read(&mut scratch[..]) {
                    Ok(0) => {
                        self.end(CloseReason::TransportClose);
                        true
                    }
                    Ok(n) => {
                        self.process(&mut scratch[..n], &mut budget);
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => {
                        self.end(CloseReason::TransportError);
                        true
                    }
                }
            });
            if done {
                return Poll::Ready(());
            }
            if budget == 0 {
                break;
            }
        }
        // More may be waiting: come back after others had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The peer is gone: end the session (or the upgrade attempt).
    fn end(&mut self, reason: CloseReason) {
        if self.upgrading {
            self.session.abort_upgrade();
            self.upgrading = false;
        } else {
            self.session.close(reason);
        }
    }

    /// Handles the frames in `data` (just read) and any left from earlier turns while
    /// `budget` lasts; the reader keeps the rest.
    fn process(&mut self, data: &mut [u8], budget: &mut usize) {
        let mut reader = std::mem::take(&mut self.reader);
        // Until the client has joined a namespace, its messages are held to the small
        // limit (an incomplete one could otherwise sit here at `max_payload`).
        let max = self
            .session
            .max_payload()
            .saturating_add(1)
            .min(self.max_payload);
        let read = reader.feed(data, max, budget, &mut |e| self.on_event(e));
        self.reader = reader;
        if let Err(e) = read {
            self.fail(e);
        }
        if self.closing {
            self.reader.clear();
        }
    }

    fn on_event(&mut self, event: Event<'_>) -> Flow {
        match event {
            Event::Text(text) if self.upgrading => self.on_upgrade_packet(text),
            // Only text packets take part in an upgrade.
            Event::Binary(_) if self.upgrading => {}
            Event::Text(text) => self.on_packet(packet::decode_text(text)),
            Event::Binary(data) => {
                let eio = self.session.eio();
                self.on_packet(packet::decode_binary_frame(eio, data));
            }
            Event::Ping(payload) => self.queue_raw(frame::Opcode::Pong, payload),
            Event::Close => {
                self.end(CloseReason::TransportClose);
                self.close_with(frame::CloseCode::Normal);
            }
        }
        if self.closing {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn on_packet(&mut self, decoded: Result<Packet<'_>, packet::DecodeError>) {
        match decoded {
            Ok(p) => self.session.receive(p),
            Err(_) => {
                self.session.count_protocol_error();
                self.session.close(CloseReason::ParseError);
                self.close_with(frame::CloseCode::Protocol);
            }
        }
    }

    /// During an upgrade the client sends `2probe`, then `5` once it has paused polling.
    fn on_upgrade_packet(&mut self, text: &str) {
        match packet::decode_text(text) {
            Ok(Packet::Control(Kind::Ping, "probe")) => {
                self.queue_raw(frame::Opcode::Text, b"3probe");
                self.session.probed();
            }
            Ok(Packet::Control(Kind::Upgrade, _)) => {
                if self.session.complete_upgrade() {
                    self.upgrading = false;
                    self.attach();
                } else {
                    self.close_with(frame::CloseCode::Policy);
                }
            }
            Ok(Packet::Control(Kind::Noop, _)) => {}
            _ => {
                // Anything else before the upgrade completes breaks the protocol; the
                // polling session carries on.
                self.session.abort_upgrade();
                self.upgrading = false;
                self.close_with(frame::CloseCode::Protocol);
            }
        }
    }

    /// A protocol violation: close the session and the connection with `e.code`.
    fn fail(&mut self, e: FrameError) {
        tracing::debug!(sid = %self.session.sid(), error = %e, "websocket protocol error");
        self.session.count_protocol_error();
        if self.upgrading {
            self.session.abort_upgrade();
            self.upgrading = false;
        } else {
            self.session.close(CloseReason::ParseError);
        }
        self.close_with(e.code);
    }

    /// Starts the time a peer gets to read what is left once its session has ended.
    fn start_linger(&mut self) {
        if self.linger.is_none() {
            self.linger = Some(Box::pin(tokio::time::sleep(self.linger_for)));
        }
    }

    /// Hands writing to the session.
    fn attach(&mut self) {
        self.session
            .attach_ws(self.stream.clone(), std::mem::take(&mut self.unwritten));
        self.attached = true;
    }

    fn close_with(&mut self, code: frame::CloseCode) {
        if !self.closing {
            let close = frame::close_frame(code);
            if self.attached {
                self.session.ws_close(&close);
            } else {
                self.unwritten.extend_from_slice(&close);
            }
            self.closing = true;
        }
    }

    /// Queues a frame written by the connection itself (pong, probe answer). Frames of
    /// an attached session count against its queue limit; before that, reading stops
    /// while any are unwritten, which bounds them to one turn's frames.
    fn queue_raw(&mut self, opcode: frame::Opcode, payload: &[u8]) {
        let mut h = [0u8; MAX_HEADER];
        let n = frame::write_header(&mut h, opcode, payload.len());
        if self.attached {
            let mut f = Vec::with_capacity(n + payload.len());
            f.extend_from_slice(&h[..n]);
            f.extend_from_slice(payload);
            if !self.session.ws_raw(&f) {
                // The client does not read what it asks for: its session has ended, and
                // what it did not read is dropped with the connection.
                self.closing = true;
                self.abandon = true;
            }
        } else {
            self.unwritten.extend_from_slice(&h[..n]);
            self.unwritten.extend_from_slice(payload);
        }
    }

    /// Writes what is pending. Ready means the connection is over.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.attached {
            return self.poll_write_own(cx);
        }
        loop {
            match self.session.poll_ws_write(cx, &self.stream) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(WsEnd::Closed)) => return Poll::Ready(()),
                Poll::Ready(Ok(WsEnd::Ended(reason))) => self.close_with(close_code(reason)),
                Poll::Ready(Ok(WsEnd::Stuck)) => {
                    self.start_linger();
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return self.broken(),
            }
        }
    }

    /// Before the session is attached (upgrading): writes this task's own frames; the
    /// session's queue belongs to the polling transport until the upgrade completes.
    fn poll_write_own(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.unwritten.is_empty() {
            match self.stream.try_write(&self.unwritten) {
                Ok(0) => return self.broken(),
                Ok(n) => {
                    self.unwritten.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => return self.broken(),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(_) => return self.broken(),
            }
        }
        self.unwritten = Vec::new();
        if self.closing {
            return Poll::Ready(());
        }
        match self.session.poll_upgrade_end(cx) {
            Poll::Ready(reason) => {
                self.upgrading = false;
                self.close_with(close_code(reason));
                self.poll_write_own(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn broken(&mut self) -> Poll<()> {
        self.end(CloseReason::TransportError);
        Poll::Ready(())
    }
}

/// The close code that tells the client why its session ended.
fn close_code(reason: CloseReason) -> frame::CloseCode {
    match reason {
        CloseReason::ParseError => frame::CloseCode::Protocol,
        CloseReason::QueueOverflow | CloseReason::CredentialsExpired => frame::CloseCode::Policy,
        CloseReason::ServerClose => frame::CloseCode::GoingAway,
        _ => frame::CloseCode::Normal,
    }
}

/// Writes up to [`BATCH`] packets as frames with one `writev`. Returns how many packets
/// are done with: written whole, or partly written with their rest appended to `rest`
/// (frames must not interleave, so the rest goes out before anything else).
pub(crate) fn write_frames(
    stream: &TcpStream,
    packets: &[Outbound],
    eio: Eio,
    rest: &mut Vec<u8>,
) -> io::Result<usize> {
    // Most writes carry one or a few frames: don't set up room for a whole batch.
    if packets.len() <= 4 {
        write_frames_n::<4>(stream, packets, eio, rest)
    } else {
        write_frames_n::<BATCH>(stream, packets, eio, rest)
    }
}

fn write_frames_n<const N: usize>(
    stream: &TcpStream,
    packets: &[Outbound],
    eio: Eio,
    rest: &mut Vec<u8>,
) -> io::Result<usize> {
    let batch = &packets[..packets.len().min(N)];
    let v3 = eio == Eio::V3;
    let mut headers = [[0u8; MAX_HEADER + 1]; N];
    let mut lens = [0usize; N];
    let mut iov: [[IoSlice<'_>; 2]; N] = [[IoSlice::new(&[]); 2]; N];
    for (i, p) in batch.iter().enumerate() {
        let (opcode, body, prefix) = match p {
            Outbound::Text(t) => (frame::Opcode::Text, t, false),
            Outbound::Binary(b) => (frame::Opcode::Binary, b, v3),
        };
        let mut h = [0u8; MAX_HEADER];
        let n = frame::write_header(&mut h, opcode, body.len() + prefix as usize);
        headers[i][..n].copy_from_slice(&h[..n]);
        lens[i] = n;
        if prefix {
            // v3 binary frames start with the message packet type.
            headers[i][n] = 4;
            lens[i] += 1;
        }
    }
    for (i, p) in batch.iter().enumerate() {
        iov[i] = [IoSlice::new(&headers[i][..lens[i]]), IoSlice::new(p.body())];
    }
    let mut written = stream.try_write_vectored(iov[..batch.len()].as_flattened())?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    let mut consumed = 0;
    for (i, p) in batch.iter().enumerate() {
        let body = p.body();
        let total = lens[i] + body.len();
        if written >= total {
            written -= total;
            consumed += 1;
            continue;
        }
        if written > 0 {
            if written < lens[i] {
                rest.extend_from_slice(&headers[i][written..lens[i]]);
                rest.extend_from_slice(body);
            } else {
                rest.extend_from_slice(&body[written - lens[i]..]);
            }
            consumed += 1;
        }
        break;
    }
    Ok(consumed)
}
