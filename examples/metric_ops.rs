//! What each kind of metric operation herald does on its hot paths costs, in
//! nanoseconds, on this machine: `cargo run --release --example metric_ops`.
//! docs/benchmarks.md multiplies them by the operations per push and per delivery.

use std::hint::black_box;
use std::time::Instant;

use herald::metrics::{self, Registry};

const N: u64 = 20_000_000;

fn time(what: &str, mut op: impl FnMut(u64)) {
    // Warm up, then time.
    for i in 0..N / 10 {
        op(i);
    }
    let started = Instant::now();
    for i in 0..N {
        op(i);
    }
    let ns = started.elapsed().as_nanos() as f64 / N as f64;
    println!("{what:<58} {ns:>7.1} ns");
}

fn main() {
    let r = Registry::new();
    let counter = metrics::counter(&r, "c_total", "c");
    let family = metrics::counter_vec(&r, "v_total", "v", &["route", "status"]);
    let resolved = family.with_label_values(&["/api/v1/push", "200"]);
    let histogram = metrics::histogram(&r, "h_seconds", "h", metrics::LATENCY);
    let method = http::Method::POST;
    time("counter inc (pushes by kind, acks, deliveries)", |_| {
        counter.inc()
    });
    time("counter with labels resolved once (pushes by kind)", |_| {
        resolved.inc()
    });
    time(
        "counter with labels looked up (API requests by route)",
        |i| {
            family
                .with_label_values(&[
                    black_box("/api/v1/push"),
                    if i & 1 == 0 { "200" } else { "400" },
                ])
                .inc()
        },
    );
    time("histogram observe (latencies)", |i| {
        histogram.observe(black_box((i % 1000) as f64 * 1e-5))
    });
    time(
        "clock read, µs since the epoch (a push's ready time)",
        |_| {
            black_box(metrics::now_us());
        },
    );
    time("route of a request (the label of API requests)", |_| {
        black_box(herald::api::keys::route(
            black_box(&method),
            black_box("/api/v1/push"),
        ));
    });
}
