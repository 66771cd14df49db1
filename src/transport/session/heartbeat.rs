//! A session's deadlines: heartbeats (v4 server pings, v3 client pings), the layer
//! above's connect timeout or credentials expiry, checked by the engine's walker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{CloseReason, Session, State, EXPIRY, NEVER};
use crate::transport::packet::{Eio, Kind, Outbound};

impl Session {
    /// When the layer above gives up, and whether for expired credentials.
    fn app_due(&self) -> (u64, bool) {
        match self.app_deadline.load(Ordering::Relaxed) {
            NEVER => (NEVER, false),
            v => (v & !EXPIRY, v & EXPIRY != 0),
        }
    }

    /// Called by the heartbeat walker: sends due pings, closes expired sessions.
    pub(crate) fn tick(self: &Arc<Self>, now: u64) {
        if now >= self.deadline.load(Ordering::Relaxed) {
            let closing = self.inner.lock().state == State::Closing;
            self.close(if closing {
                CloseReason::ServerClose
            } else {
                CloseReason::PingTimeout
            });
            return;
        }
        let (app_due, expiry) = self.app_due();
        if now >= app_due {
            self.close(if expiry {
                CloseReason::CredentialsExpired
            } else {
                CloseReason::HandshakeTimeout
            });
            return;
        }
        let ping_due = self.ping_due.load(Ordering::Relaxed);
        if self.eio == Eio::V4 && now >= ping_due {
            // The answer is due one timeout after the ping was scheduled, not after the
            // walker got to it, so a tick's delay never extends a dead session's life.
            let timeout = self.engine.config.ping_timeout.as_millis() as u64;
            self.ping_due.store(NEVER, Ordering::Relaxed);
            self.deadline.store(ping_due + timeout, Ordering::Relaxed);
            self.send_control(Outbound::control(Kind::Ping));
        }
    }

    /// Whether the heartbeat walker has something to do for this session at `now`.
    pub(crate) fn due(&self, now: u64) -> bool {
        now >= self.deadline.load(Ordering::Relaxed)
            || now >= self.app_due().0
            || (self.eio == Eio::V4 && now >= self.ping_due.load(Ordering::Relaxed))
    }

    /// Closes the session if its liveness deadline has passed (checked on each request,
    /// so a client never sees a session the walker has not yet reaped).
    pub(crate) fn expire_if_due(self: &Arc<Self>) -> bool {
        let now = self.engine.now_ms();
        if now >= self.deadline.load(Ordering::Relaxed) {
            self.tick(now);
            return true;
        }
        false
    }
}
