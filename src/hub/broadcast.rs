//! Broadcasts: fanned out by one task per hub, which visits each socket once for all the
//! broadcasts that arrived meanwhile, in order.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use super::Hub;
use crate::transport::Outbound;

/// Fans out the broadcasts that arrive, a batch at a time, until the hub is dropped.
pub(super) async fn fan_out_task(b: Arc<Broadcasts>, hub: Weak<Hub>) {
    loop {
        b.notify.notified().await;
        // Let the tasks that are ready (often more broadcasts) run first.
        tokio::task::yield_now().await;
        let Some(hub) = hub.upgrade() else { break };
        hub.flush_broadcasts();
    }
}

/// Broadcasts waiting for the fan-out task.
#[derive(Default)]
pub(super) struct Broadcasts {
    pub(super) pending: Mutex<Pending>,
    pub(super) notify: tokio::sync::Notify,
    pub(super) started: OnceLock<()>,
}

/// Broadcasts waiting, and when each was accepted (µs since the epoch).
#[derive(Default)]
pub(super) struct Pending {
    packets: Vec<Vec<Outbound>>,
    ready_us: Vec<u64>,
}

/// Broadcasts waiting beyond this are fanned out by the pusher itself (which slows a
/// flood of broadcasts down to the pace of fanning them out).
const MAX_PENDING_BROADCASTS: usize = 1024;

impl Hub {
    /// Hands a broadcast to the fan-out task (started on first use), or fans out at
    /// once where there is no runtime, or too many broadcasts wait.
    pub(super) fn broadcast(&self, packets: Vec<Outbound>, ready_us: u64) {
        let b = &self.broadcasts;
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.fan_out_now(packets, ready_us);
        };
        b.started.get_or_init(|| {
            rt.spawn(fan_out_task(b.clone(), self.me.clone()));
        });
        let mut pending = b.pending.lock();
        if pending.packets.len() >= MAX_PENDING_BROADCASTS {
            drop(pending);
            return self.fan_out_now(packets, ready_us);
        }
        pending.packets.push(packets);
        pending.ready_us.push(ready_us);
        let first = pending.packets.len() == 1;
        drop(pending);
        if first {
            b.notify.notify_one();
        }
    }

    /// Fans out `packets` now, after every broadcast accepted before it.
    fn fan_out_now(&self, packets: Vec<Outbound>, ready_us: u64) {
        let _order = self.fanning_out.lock();
        let mut batch = self.take_pending();
        batch.packets.push(packets);
        batch.ready_us.push(ready_us);
        self.fan_out_locked(&batch);
    }

    /// Finishes the fan-out of every broadcast accepted so far (waiting for one in
    /// progress); used before a push to users, and at shutdown.
    pub fn flush_broadcasts(&self) {
        let _order = self.fanning_out.lock();
        let batch = self.take_pending();
        if !batch.packets.is_empty() {
            self.fan_out_locked(&batch);
        }
    }

    /// Takes the waiting broadcasts; call with `fanning_out` held, and fan them out
    /// before letting go of it.
    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.broadcasts.pending.lock())
    }

    /// Queues every broadcast of `batch`, in order, on every socket: one visit each.
    /// Call with `fanning_out` held.
    fn fan_out_locked(&self, pending: &Pending) {
        let batch = &pending.packets[..];
        let mut ok = 0;
        let mut sockets = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for members in shard.values() {
                for m in members {
                    ok += m.socket.send_each(batch);
                    sockets += 1;
                }
            }
        }
        self.metrics.deliveries.inc_by(ok as u64);
        self.metrics
            .delivery_failures
            .inc_by((sockets * batch.len() - ok) as u64);
        if sockets > 0 {
            for at in &pending.ready_us {
                self.metrics
                    .latency
                    .observe(crate::metrics::seconds_since(*at));
            }
        }
        // Every broadcast was counted when it was accepted.
        self.unfinished.fetch_sub(batch.len(), Ordering::AcqRel);
    }
}
