//! Counts deliveries against what was expected and records publish → device latency.
//!
//! Every pushed message carries `{"k": <sequence>, "t": <intended send time, ns since the
//! Unix epoch>}`. A phase expects, for each sequence number in its range, a number of
//! deliveries (and, for unicast, the user that must receive it).

use hdrhistogram::Histogram;

use crate::procfs::now_ns;

pub struct Tracker {
    /// First sequence number of the phase.
    k0: u64,
    /// Deliveries expected per sequence number.
    expect: Vec<u32>,
    /// Deliveries seen per sequence number.
    got: Vec<u32>,
    /// Last delivery time per sequence number (ns).
    last_at: Vec<u64>,
    /// For unicast: the user each sequence number is for (u32::MAX: anyone).
    target: Vec<u32>,
    pub expected_total: u64,
    pub delivered: u64,
    /// Deliveries at or before `window_end`.
    pub in_window: u64,
    pub window_end: u64,
    /// Deliveries outside the phase's range (late ones from an earlier phase).
    pub stray: u64,
    /// Unicast deliveries to a user other than the target.
    pub misdirected: u64,
    /// Messages that did not carry a readable `k` and `t`.
    pub unreadable: u64,
    /// Publish → device latency, µs.
    pub latency: Histogram<u64>,
    pub last_delivery: u64,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            k0: 0,
            expect: Vec::new(),
            got: Vec::new(),
            last_at: Vec::new(),
            target: Vec::new(),
            expected_total: 0,
            delivered: 0,
            in_window: 0,
            window_end: u64::MAX,
            stray: 0,
            misdirected: 0,
            unreadable: 0,
            latency: histogram(),
            last_delivery: 0,
        }
    }

    /// Starts a phase over sequence numbers `k0..k0 + n`, expecting nothing yet.
    pub fn phase(&mut self, k0: u64, n: usize) {
        *self = Tracker::new();
        self.k0 = k0;
        self.expect = vec![0; n];
        self.got = vec![0; n];
        self.last_at = vec![0; n];
    }

    /// Expects `count` deliveries of sequence number `k`, to user `target` if given.
    pub fn expect(&mut self, k: u64, count: u32, target: Option<u32>) {
        let i = (k - self.k0) as usize;
        self.expect[i] += count;
        self.expected_total += count as u64;
        if let Some(t) = target {
            if self.target.is_empty() {
                self.target = vec![u32::MAX; self.expect.len()];
            }
            self.target[i] = t;
        }
    }

    /// Drops an expectation that was never sent.
    pub fn unexpect(&mut self, k: u64) {
        let i = (k - self.k0) as usize;
        self.expected_total -= self.expect[i] as u64;
        self.expect[i] = 0;
    }

    /// A message arrived at a connection of user `user`.
    pub fn record(&mut self, user: u32, text: &[u8]) {
        let now = now_ns();
        let (Some(k), Some(t)) = (
            crate::wire::number_after(text, b"\"k\":"),
            crate::wire::number_after(text, b"\"t\":"),
        ) else {
            self.unreadable += 1;
            return;
        };
        let Some(i) = k.checked_sub(self.k0).map(|i| i as usize) else {
            self.stray += 1;
            return;
        };
        if i >= self.got.len() {
            self.stray += 1;
            return;
        }
        self.got[i] += 1;
        self.last_at[i] = self.last_at[i].max(now);
        if !self.target.is_empty() && self.target[i] != u32::MAX && self.target[i] != user {
            self.misdirected += 1;
        }
        self.delivered += 1;
        if now <= self.window_end {
            self.in_window += 1;
        }
        self.last_delivery = self.last_delivery.max(now);
        let us = now.saturating_sub(t) / 1000;
        self.latency.saturating_record(us.max(1));
    }

    pub fn complete(&self) -> bool {
        self.delivered >= self.expected_total
    }

    /// Last delivery time of sequence number `k` (0: none yet).
    pub fn last_at(&self, k: u64) -> u64 {
        self.last_at[(k - self.k0) as usize]
    }

    /// (missing, duplicated) deliveries against the expectation, and the sequence numbers
    /// with gaps (up to 10).
    pub fn gaps(&self) -> (u64, u64, Vec<u64>) {
        self.gaps_in((0..self.expect.len() as u64).map(|i| self.k0 + i))
    }

    /// The same over some sequence numbers only (those the server acknowledged).
    pub fn gaps_in(&self, ks: impl IntoIterator<Item = u64>) -> (u64, u64, Vec<u64>) {
        let (mut missing, mut dup, mut examples) = (0u64, 0u64, Vec::new());
        for k in ks {
            let Some(i) = k.checked_sub(self.k0).map(|i| i as usize) else {
                continue;
            };
            let (Some(&e), Some(&g)) = (self.expect.get(i), self.got.get(i)) else {
                continue;
            };
            if g < e {
                missing += (e - g) as u64;
                if examples.len() < 10 {
                    examples.push(k);
                }
            } else if g > e {
                dup += (g - e) as u64;
            }
        }
        (missing, dup, examples)
    }
}

/// Percentiles of a histogram as JSON (µs).
pub fn summary(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::json!(null);
    }
    serde_json::json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}
