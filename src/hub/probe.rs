//! Ack round trips, sampled: one stored message at a time is timed from the moment it is
//! queued to a connection until that connection acks it (or a later seq). One probe in
//! flight per node keeps the cost to an atomic load per send and per ack, and still
//! yields a sample per round trip: thousands a minute under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Histogram;
use crate::transport::Sid;

/// A probe not answered within this long is given up (the client never acks, or left).
const GIVE_UP: Duration = Duration::from_secs(60);

/// The probe in flight: which connection, which seq, since when.
#[derive(Debug)]
struct InFlight {
    sid: Sid,
    seq: u64,
    at: Instant,
}

/// Samples ack round trips into a histogram.
#[derive(Debug)]
pub(super) struct AckProbe {
    /// A probe is in flight (read without the lock on every send and ack).
    busy: AtomicBool,
    probe: Mutex<Option<InFlight>>,
    pub(super) took: Histogram,
}

impl AckProbe {
    pub(super) fn new(took: Histogram) -> AckProbe {
        AckProbe {
            busy: AtomicBool::new(false),
            probe: Mutex::new(None),
            took,
        }
    }

    /// `seq` was queued to the connection `sid`: timed, unless a probe is in flight.
    pub(super) fn sent(&self, sid: Sid, seq: u64) {
        if self.busy.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.probe.lock();
        if p.is_none() {
            *p = Some(InFlight {
                sid,
                seq,
                at: Instant::now(),
            });
            self.busy.store(true, Ordering::Relaxed);
        }
    }

    /// The connection `sid` acked `seq` (and with it everything before).
    pub(super) fn acked(&self, sid: Sid, seq: u64) {
        if !self.busy.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.probe.lock();
        let Some(f) = p.as_ref() else { return };
        if f.sid == sid && f.seq <= seq {
            self.took.observe(f.at.elapsed().as_secs_f64());
        } else if f.at.elapsed() < GIVE_UP {
            return;
        }
        // Answered, or given up (its connection never acks): the next send is timed.
        *p = None;
        self.busy.store(false, Ordering::Relaxed);
    }
}
