//! Many receiving connections in one thread.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;

use crate::tracker::Tracker;
use crate::wire::{self, End, Spec};

/// Receivers that count what they get into one tracker.
pub struct Fleet {
    pub spec: Spec,
    pub sources: Vec<IpAddr>,
    pub concurrency: usize,
    pub tracker: Rc<RefCell<Tracker>>,
    /// Connections open now.
    pub alive: Rc<Cell<usize>>,
    /// Handshakes that failed.
    pub failed: Rc<Cell<usize>>,
    /// Connections the server closed (or that failed) after the handshake.
    pub dropped: Rc<Cell<usize>>,
    /// Connections started so far.
    pub started: usize,
}

impl Fleet {
    pub fn new(spec: Spec, sources: Vec<IpAddr>, concurrency: usize) -> Fleet {
        Fleet {
            spec,
            sources,
            concurrency,
            tracker: Rc::new(RefCell::new(Tracker::new())),
            alive: Rc::new(Cell::new(0)),
            failed: Rc::new(Cell::new(0)),
            dropped: Rc::new(Cell::new(0)),
            started: 0,
        }
    }

    /// Opens connections until `total` have been started and waits for their handshakes
    /// (at most `limit`). Returns the seconds it took.
    pub async fn grow(&mut self, total: usize, limit: Duration) -> anyhow::Result<f64> {
        let began = Instant::now();
        let gate = Arc::new(Semaphore::new(self.concurrency));
        let target_done = total;
        while self.started < total {
            let i = self.started;
            self.started += 1;
            let permit = gate.clone().acquire_owned().await?;
            let source = self.sources[i % self.sources.len()];
            let spec = self.spec.clone();
            let user = spec.user(i);
            let user_index = spec.user_index(i) as u32;
            let (alive, failed, dropped) = (
                self.alive.clone(),
                self.failed.clone(),
                self.dropped.clone(),
            );
            let tracker = self.tracker.clone();
            tokio::task::spawn_local(async move {
                match wire::handshake(&spec, source, user.as_deref(), Duration::from_secs(60)).await
                {
                    Ok(conn) => {
                        alive.set(alive.get() + 1);
                        drop(permit);
                        let end = wire::receive(conn, spec.eio, spec.ack, |text| {
                            tracker.borrow_mut().record(user_index, text)
                        })
                        .await;
                        alive.set(alive.get() - 1);
                        dropped.set(dropped.get() + 1);
                        if dropped.get() <= 3 {
                            match end {
                                End::ClosedByServer => eprintln!("connection {i} closed by server"),
                                End::Error(e) => eprintln!("connection {i} failed: {e}"),
                            }
                        }
                    }
                    Err(e) => {
                        failed.set(failed.get() + 1);
                        if failed.get() <= 5 {
                            eprintln!("connection {i} failed: {e:#}");
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + limit;
        while self.alive.get() + self.failed.get() + self.dropped.get() < target_done {
            if Instant::now() > deadline {
                bail!(
                    "handshakes did not finish in {limit:?}: {} open, {} failed",
                    self.alive.get(),
                    self.failed.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(began.elapsed().as_secs_f64())
    }

    /// Connections per user index, for expecting deliveries.
    pub fn conns_per_user(&self) -> Vec<u32> {
        let users = if self.spec.users == 0 {
            self.started
        } else {
            self.spec.users
        };
        let mut v = vec![0u32; users];
        for i in 0..self.started {
            v[self.spec.user_index(i)] += 1;
        }
        v
    }
}
