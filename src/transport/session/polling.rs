//! A session's long-polling side: at most one pending `GET` (which drains the queue)
//! and one `POST` at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{Busy, CloseReason, Get, Session, State};
use crate::transport::packet::{Kind, Outbound};

/// What a pending polling `GET` answers with.
pub(crate) enum GetReply {
    /// Queued packets (or a single noop).
    Packets(Vec<Outbound>),
    /// The session is gone: answer with these packets, then forget it.
    Final(Vec<Outbound>),
}

impl Session {
    /// Starts a polling `GET`. Fails if one is already waiting (which, as in the
    /// reference server, ends the session), if the previous one's answer is still being
    /// written (the caller retries shortly), or if the session no longer polls.
    pub(crate) fn begin_get(self: &Arc<Self>) -> Result<(), Busy> {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Polling | State::Upgrading | State::Closing => {}
            // The one GET sent with the client's close (see `Get::Lingering`).
            State::Closed if inner.get == Get::Lingering => {
                inner.get = Get::Idle;
            }
            State::WebSocket | State::Closed => return Err(Busy::NotPolling),
        }
        match inner.get {
            Get::Waiting => {
                drop(inner);
                self.close(CloseReason::TransportError);
                Err(Busy::Duplicate)
            }
            Get::Answering => Err(Busy::Answering),
            Get::Idle | Get::Lingering => {
                inner.get = Get::Waiting;
                Ok(())
            }
        }
    }

    /// The pending `GET` took its answer and is writing it.
    pub(crate) fn answering_get(&self) {
        let mut inner = self.inner.lock();
        if inner.get == Get::Waiting {
            inner.get = Get::Answering;
        }
    }

    /// Ends a polling `GET` (answered or abandoned).
    pub(crate) fn end_get(&self) {
        let mut inner = self.inner.lock();
        inner.get = Get::Idle;
        if matches!(inner.state, State::Polling | State::Closing) {
            inner.waker = None;
        }
    }

    /// Polls for the answer to a pending `GET`.
    pub(crate) fn poll_get(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<GetReply> {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => {
                // A client that closed gets a noop; a session the server ended, a close.
                let kind = match inner.reason {
                    Some(CloseReason::TransportClose) => Kind::Noop,
                    _ => Kind::Close,
                };
                drop(inner);
                // Answered: a session lingering for this GET goes now.
                self.engine.remove(self);
                Poll::Ready(GetReply::Final(vec![Outbound::control(kind)]))
            }
            State::Closing => {
                let mut out: Vec<Outbound> = inner.queue.drain(..).collect();
                inner.queued_bytes = 0;
                out.push(Outbound::control(Kind::Close));
                inner.state = State::Closed;
                drop(inner);
                self.engine.remove(self);
                Poll::Ready(GetReply::Final(out))
            }
            State::WebSocket => Poll::Ready(GetReply::Packets(vec![Outbound::control(Kind::Noop)])),
            State::Upgrading => {
                if inner.noop {
                    inner.noop = false;
                    Poll::Ready(GetReply::Packets(vec![Outbound::control(Kind::Noop)]))
                } else {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
            State::Polling => {
                if inner.queue.is_empty() {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    let out: Vec<Outbound> = inner.queue.drain(..).collect();
                    inner.queue = VecDeque::new();
                    inner.queued_bytes = 0;
                    Poll::Ready(GetReply::Packets(out))
                }
            }
        }
    }

    /// Starts a polling `POST`; at most one at a time.
    pub(crate) fn begin_post(&self) -> Result<(), Busy> {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Polling | State::Upgrading) {
            return Err(Busy::NotPolling);
        }
        if inner.post_active {
            return Err(Busy::Duplicate);
        }
        inner.post_active = true;
        Ok(())
    }

    pub(crate) fn end_post(&self) {
        self.inner.lock().post_active = false;
    }
}
