//! A session's WebSocket side: the upgrade from polling, and writing the queue to the
//! socket (by the engine's flusher, or by the connection task when the socket refused
//! bytes).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use super::{Busy, CloseReason, Inner, Session, State};
use crate::transport::packet::Eio;

impl Session {
    /// A WebSocket with this sid wants to upgrade the polling session.
    pub(crate) fn begin_upgrade(&self) -> Result<(), Busy> {
        let mut inner = self.inner.lock();
        if inner.state != State::Polling {
            return Err(Busy::NotPolling);
        }
        inner.state = State::Upgrading;
        Ok(())
    }

    /// Whether a WebSocket is taking this polling session over.
    pub(crate) fn upgrading(&self) -> bool {
        self.inner.lock().state == State::Upgrading
    }

    /// The upgrading WebSocket answered the probe: the pending `GET` gets a noop so the
    /// client can pause polling.
    pub(crate) fn probed(&self) {
        let mut inner = self.inner.lock();
        if inner.state != State::Upgrading {
            return;
        }
        inner.noop = true;
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The client sent the upgrade packet: the WebSocket now drains the queue.
    pub(crate) fn complete_upgrade(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.state != State::Upgrading {
            return false;
        }
        inner.state = State::WebSocket;
        inner.noop = false;
        // Wake the pending GET (it answers noop) and let the WebSocket task register.
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The upgrading WebSocket went away before completing: back to polling.
    pub(crate) fn abort_upgrade(&self) {
        let mut inner = self.inner.lock();
        if inner.state == State::Upgrading {
            inner.state = State::Polling;
            inner.noop = false;
            inner.ws_waker = None;
            let waker = inner.waker.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// The WebSocket task hands writing to the session, and so to the flusher (at its
    /// start, or when an upgrade has completed); `pending` holds bytes the task has not
    /// yet written, which go first.
    pub(crate) fn attach_ws(&self, stream: Arc<TcpStream>, pending: Vec<u8>) {
        let mut inner = self.inner.lock();
        inner.raw = pending;
        if matches!(inner.state, State::WebSocket | State::Closing) {
            inner.ws = Some(stream);
        }
    }

    /// For an upgrading WebSocket: ready with the reason once the session has ended
    /// (the task then closes its connection), else registered for a wake-up.
    pub(crate) fn poll_upgrade_end(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut inner = self.inner.lock();
        match inner.reason {
            Some(reason) if inner.state == State::Closed => Poll::Ready(reason),
            _ => {
                inner.ws_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Queues a frame the WebSocket task writes itself (an RFC 6455 pong) after what is
    /// pending. It counts against the queue's byte limit; one that does not fit ends the
    /// session (returns false).
    pub(crate) fn ws_raw(self: &Arc<Self>, frame: &[u8]) -> bool {
        let inner = self.inner.lock();
        if inner.reason.is_some() {
            return false;
        }
        if inner.queued_bytes + inner.raw.len() + frame.len() > self.byte_limit() {
            let mut inner = inner;
            // The connection is dropped with it: nothing more is written.
            inner.raw = Vec::new();
            self.overflow(inner);
            return false;
        }
        let mut inner = inner;
        inner.raw.extend_from_slice(frame);
        true
    }

    /// Whether the socket refused what was last written to it: the connection reads no
    /// more from its client until it has been written (back pressure), so a client that
    /// does not read cannot make it queue answers without end.
    pub(crate) fn ws_backlogged(&self) -> bool {
        self.inner.lock().ws_blocked
    }

    /// Queues the close frame; nothing is written after it.
    pub(crate) fn ws_close(&self, frame: &[u8]) {
        let mut inner = self.inner.lock();
        if !inner.ws_closing {
            inner.raw.extend_from_slice(frame);
            inner.ws_closing = true;
            inner.ws = None;
        }
    }

    /// Writes on behalf of the WebSocket task: pending bytes, then the queue. Pending
    /// means the task is registered for a wake-up (socket writable, or more to write);
    /// `Ready(Ok(WsEnd::Closed))` that the close frame is written; `WsEnd::Ended` that
    /// the session ended and the task is to queue the close frame and poll again;
    /// `WsEnd::Stuck` that the session ended and the socket refuses what is left.
    pub(crate) fn poll_ws_write(
        &self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
    ) -> Poll<io::Result<WsEnd>> {
        let mut inner = self.inner.lock();
        loop {
            match inner.write_ws(stream, self.eio) {
                Ok(()) => inner.ws_blocked = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    inner.ws_blocked = true;
                    match stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // Woken by writability, or by the session ending meanwhile.
                            inner.waker = Some(cx.waker().clone());
                            if inner.reason.is_some() {
                                return Poll::Ready(Ok(WsEnd::Stuck));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if inner.ws_closing {
                return Poll::Ready(Ok(WsEnd::Closed));
            }
            return match inner.state {
                State::Upgrading | State::Polling => {
                    inner.ws_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                State::Closed => Poll::Ready(Ok(WsEnd::Ended(
                    inner.reason.unwrap_or(CloseReason::ServerClose),
                ))),
                State::Closing if inner.queue.is_empty() => {
                    Poll::Ready(Ok(WsEnd::Ended(CloseReason::ServerClose)))
                }
                State::WebSocket | State::Closing => {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
    }
}

/// How a WebSocket's writing ended.
pub(crate) enum WsEnd {
    /// The close frame is written.
    Closed,
    /// The session ended for this reason; the close frame is still to be queued.
    Ended(CloseReason),
    /// The session has ended and the socket refuses what is left; the task is registered
    /// for a wake-up, and gives up if the peer does not read in time.
    Stuck,
}

impl Inner {
    /// Writes `raw`, then queued packets (unless the close frame is in `raw`), until all
    /// is written or the socket refuses more (`WouldBlock`).
    pub(super) fn write_ws(&mut self, stream: &TcpStream, eio: Eio) -> io::Result<()> {
        loop {
            if !self.raw.is_empty() {
                let n = stream.try_write(&self.raw)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.raw.drain(..n);
                if !self.raw.is_empty() {
                    continue;
                }
                self.raw = Vec::new();
            }
            if self.ws_closing
                || self.queue.is_empty()
                || !matches!(self.state, State::WebSocket | State::Closing)
            {
                return Ok(());
            }
            let (front, back) = self.queue.as_slices();
            let batch = if front.is_empty() { back } else { front };
            let consumed =
                crate::transport::websocket::write_frames(stream, batch, eio, &mut self.raw)?;
            for _ in 0..consumed {
                if let Some(p) = self.queue.pop_front() {
                    self.queued_bytes -= p.len();
                }
            }
            if self.queue.is_empty() && self.queue.capacity() > 16 {
                // Give back a burst's worth of queue memory once it is drained.
                self.queue = VecDeque::new();
            }
        }
    }
}
