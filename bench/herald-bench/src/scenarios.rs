//! The scenarios. Each prints one JSON object per result line (to stdout and, with
//! `--out`, appended to a file) and a short human summary to stderr.
//!
//! Server CPU is user + system time of the server process from /proc over the measured
//! window; the load generator never measures the server by wall time alone.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::fleet::Fleet;
use crate::http::{Api, ApiKind, Job, Pool, To};
use crate::procfs::{now_ns, Server, Window};
use crate::tracker::{histogram, summary};
use crate::wire::{self, Spec};

/// Where results go.
pub struct Report {
    pub label: String,
    pub out: Option<PathBuf>,
}

impl Report {
    pub fn emit(&self, scenario: &str, mut v: Value) -> anyhow::Result<()> {
        v["scenario"] = json!(scenario);
        v["server"] = json!(self.label);
        let line = v.to_string();
        println!("{line}");
        if let Some(path) = &self.out {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?;
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// S1: RSS per idle connection at increasing counts, on one server process.
pub async fn idle_ramp(
    mut fleet: Fleet,
    steps: &[usize],
    settle: Duration,
    server: Server,
    report: &Report,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib()?;
    for &n in steps {
        let secs = fleet.grow(n, Duration::from_secs(240)).await?;
        tokio::time::sleep(settle).await;
        let rss = server.rss_kib()?;
        let open = fleet.alive.get();
        let per = (rss.saturating_sub(rss0) * 1024) as f64 / open.max(1) as f64;
        eprintln!(
            "[{}] idle {n}: {open} open, {} failed, RSS {rss0} -> {rss} KiB, {per:.0} B/connection (connected in {secs:.1}s)",
            report.label,
            fleet.failed.get()
        );
        report.emit(
            "idle",
            json!({
                "connections": n, "open": open, "failed": fleet.failed.get(),
                "dropped": fleet.dropped.get(),
                "rss_before_kib": rss0, "rss_after_kib": rss,
                "bytes_per_connection": per.round(), "connect_secs": round(secs, 2),
                "server_threads": server.threads(),
            }),
        )?;
    }
    Ok(())
}

/// Settings of the delivery scenarios (S2–S5).
pub struct SuiteOpts {
    pub scenarios: Vec<String>,
    pub connections: usize,
    pub fanout_emits: usize,
    pub fanout_warmup: usize,
    pub bursts: usize,
    pub burst_size: usize,
    pub unicast_rounds: usize,
    pub unicast_batches: Vec<usize>,
    pub rates: Vec<u64>,
    pub rate_secs: u64,
    pub drain_secs: u64,
    pub seed: u64,
}

/// Shared state of a suite run.
struct Ctx<'a> {
    fleet: &'a Fleet,
    pool: &'a Pool,
    api: &'a Api,
    server: Server,
    report: &'a Report,
    next_k: Cell<u64>,
    conns: Vec<u32>,
}

impl Ctx<'_> {
    fn ks(&self, n: usize) -> u64 {
        let k = self.next_k.get();
        self.next_k.set(k + n as u64);
        k
    }

    fn check_alive(&self, what: &str) -> anyhow::Result<()> {
        if self.fleet.dropped.get() > 0 {
            eprintln!(
                "[{}] warning: {} receiving connections were dropped by {what}",
                self.report.label,
                self.fleet.dropped.get()
            );
        }
        Ok(())
    }

    /// Waits until the tracker has every expected delivery, at most `limit`.
    async fn complete(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.fleet.tracker.borrow().complete() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn http_errors(&self) -> Value {
        json!(self.pool.stats.borrow().errors)
    }
}

/// S2–S5 on one set of receiving connections (one per user).
pub async fn suite(
    mut fleet: Fleet,
    api: Api,
    http_conns: usize,
    opts: &SuiteOpts,
    server: Server,
    report: &Report,
) -> anyhow::Result<()> {
    let secs = fleet
        .grow(opts.connections, Duration::from_secs(240))
        .await?;
    if fleet.failed.get() > 0 || fleet.alive.get() != opts.connections {
        bail!(
            "only {} of {} receivers connected ({} failed)",
            fleet.alive.get(),
            opts.connections,
            fleet.failed.get()
        );
    }
    eprintln!(
        "[{}] {} receivers connected in {secs:.1}s",
        report.label, opts.connections
    );
    let pool = Pool::start(api.target, http_conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Idle cost with every receiver connected (heartbeats), for reference.
    let w = Window::start(server)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_cpu, idle_wall) = w.stop()?;
    let ctx = Ctx {
        conns: fleet.conns_per_user(),
        fleet: &fleet,
        pool: &pool,
        api: &api,
        server,
        report,
        next_k: Cell::new(1),
    };
    report.emit(
        "setup",
        json!({
            "connections": opts.connections, "connect_secs": round(secs, 2),
            "idle_cpu_percent": round(idle_cpu / idle_wall * 100.0, 2),
            "rss_kib": server.rss_kib()?, "http_connections": http_conns,
            "pad_bytes": api.pad.len(), "durable": api.durable,
            "api": format!("{:?}", api.kind).to_lowercase(),
        }),
    )?;
    for s in &opts.scenarios {
        match s.as_str() {
            "fanout" => fanout(&ctx, opts).await?,
            "burst" => burst(&ctx, opts).await?,
            "unicast" => {
                for &b in &opts.unicast_batches {
                    unicast(&ctx, opts, b).await?
                }
            }
            "latency" => {
                for &r in &opts.rates {
                    latency(&ctx, opts, r).await?
                }
            }
            other => bail!("unknown scenario {other}"),
        }
        ctx.check_alive(s)?;
        // Let the server settle between scenarios.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pool.close();
    Ok(())
}

/// S2: one emit to the room of every receiver, waiting for the last delivery each time.
async fn fanout(ctx: &Ctx<'_>, opts: &SuiteOpts) -> anyhow::Result<()> {
    let n = opts.connections as u32;
    let mut ttl_ms = Vec::new();
    let mut latency = histogram();
    let (mut delivered, mut expected, mut missing, mut dup, mut stray) = (0, 0, 0, 0, 0);
    let mut cpu = 0.0;
    let mut incomplete = 0;
    ctx.pool.reset();
    for i in 0..opts.fanout_warmup + opts.fanout_emits {
        let measured = i >= opts.fanout_warmup;
        let k = ctx.ks(1);
        {
            let mut t = ctx.fleet.tracker.borrow_mut();
            t.phase(k, 1);
            t.expect(k, n, None);
        }
        let w = Window::start(ctx.server)?;
        let t = now_ns();
        ctx.pool.send(Job {
            request: ctx.api.request(To::All, k, t, 1),
            due: t,
            k,
        });
        let done = ctx.complete(Duration::from_secs(20)).await;
        ctx.pool.drain(Duration::from_secs(5)).await;
        let (c, _) = w.stop()?;
        if !measured {
            continue;
        }
        cpu += c;
        incomplete += usize::from(!done);
        let tr = ctx.fleet.tracker.borrow();
        ttl_ms.push(round(tr.last_at(k).saturating_sub(t) as f64 / 1e6, 3));
        latency.add(&tr.latency).ok();
        let (m, d, _) = tr.gaps();
        delivered += tr.delivered;
        expected += tr.expected_total;
        missing += m;
        dup += d;
        stray += tr.stray;
    }
    let per = cpu * 1e6 / delivered.max(1) as f64;
    let mut sorted = ttl_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    eprintln!(
        "[{}] fanout: {} emits x {n}: {delivered}/{expected} delivered, CPU {cpu:.3}s = {per:.2} us/delivery, last delivery median {median} ms",
        ctx.report.label, opts.fanout_emits
    );
    let http = ctx.pool.stats.borrow();
    ctx.report.emit(
        "fanout",
        json!({
            "room": n, "emits": opts.fanout_emits, "warmup_emits": opts.fanout_warmup,
            "expected": expected, "delivered": delivered, "missing": missing,
            "duplicates": dup, "stray": stray, "incomplete_emits": incomplete,
            "cpu_s": round(cpu, 3), "cpu_us_per_delivery": round(per, 3),
            "time_to_last_ms": ttl_ms, "time_to_last_ms_median": median,
            "time_to_last_ms_max": sorted.last().copied().unwrap_or(0.0),
            "latency_us": summary(&latency),
            "http_failed": http.failed, "http_errors": ctx.http_errors(),
            "rss_kib": ctx.server.rss_kib()?,
        }),
    )
}

/// S3: `burst_size` emits to the whole room at once.
async fn burst(ctx: &Ctx<'_>, opts: &SuiteOpts) -> anyhow::Result<()> {
    let n = opts.connections as u32;
    let size = opts.burst_size;
    let mut latency = histogram();
    let (mut delivered, mut expected, mut missing, mut dup) = (0, 0, 0, 0);
    let mut cpu = 0.0;
    let mut ttl_ms = Vec::new();
    ctx.pool.reset();
    for _ in 0..opts.bursts {
        let k0 = ctx.ks(size);
        let mut jobs = Vec::new();
        let t = now_ns();
        {
            let mut tr = ctx.fleet.tracker.borrow_mut();
            tr.phase(k0, size);
            match ctx.api.kind {
                ApiKind::Herald => {
                    for j in 0..size as u64 {
                        tr.expect(k0 + j, n, None);
                        jobs.push(Job {
                            request: ctx.api.request(To::All, k0 + j, t, 1),
                            due: t,
                            k: k0 + j,
                        });
                    }
                }
                ApiKind::Peer => {
                    tr.expect(k0, n * size as u32, None);
                    jobs.push(Job {
                        request: ctx.api.request(To::All, k0, t, size as u32),
                        due: t,
                        k: k0,
                    });
                }
            }
        }
        let w = Window::start(ctx.server)?;
        for j in jobs {
            ctx.pool.send(j);
        }
        ctx.complete(Duration::from_secs(90)).await;
        ctx.pool.drain(Duration::from_secs(5)).await;
        let (c, _) = w.stop()?;
        cpu += c;
        {
            let tr = ctx.fleet.tracker.borrow();
            ttl_ms.push(round(tr.last_delivery.saturating_sub(t) as f64 / 1e6, 3));
            latency.add(&tr.latency).ok();
            let (m, d, _) = tr.gaps();
            delivered += tr.delivered;
            expected += tr.expected_total;
            missing += m;
            dup += d;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let per = cpu * 1e6 / delivered.max(1) as f64;
    eprintln!(
        "[{}] burst: {} x {size} emits x {n}: {delivered}/{expected} delivered, CPU {cpu:.3}s = {per:.3} us/delivery, last delivery {ttl_ms:?} ms",
        ctx.report.label, opts.bursts
    );
    let http = ctx.pool.stats.borrow();
    ctx.report.emit(
        "burst",
        json!({
            "room": n, "bursts": opts.bursts, "emits_per_burst": size,
            "requests_per_burst": if ctx.api.kind == ApiKind::Herald { size } else { 1 },
            "expected": expected, "delivered": delivered, "missing": missing, "duplicates": dup,
            "cpu_s": round(cpu, 3), "cpu_us_per_delivery": round(per, 3),
            "time_to_last_ms": ttl_ms, "latency_us": summary(&latency),
            "http_failed": http.failed, "http_errors": ctx.http_errors(),
            "rss_kib": ctx.server.rss_kib()?,
        }),
    )
}

/// S4: pushes to every user through the HTTP API, `batch` users per request, as fast as
/// the pool's connections go (closed loop).
async fn unicast(ctx: &Ctx<'_>, opts: &SuiteOpts, batch: usize) -> anyhow::Result<()> {
    let users: Vec<u32> = (0..ctx.conns.len() as u32).collect();
    let per_round = users.len().div_ceil(batch);
    let requests = per_round * opts.unicast_rounds;
    let pushes = users.len() * opts.unicast_rounds;
    let k0 = ctx.ks(requests);
    // Latency here runs from before the requests are built (a few ms for all of them).
    let t0 = now_ns();
    let mut jobs = Vec::with_capacity(requests);
    {
        let mut tr = ctx.fleet.tracker.borrow_mut();
        tr.phase(k0, requests);
        let mut k = k0;
        for _ in 0..opts.unicast_rounds {
            for chunk in users.chunks(batch) {
                let count = chunk.iter().map(|&u| ctx.conns[u as usize]).sum();
                let target = (chunk.len() == 1).then(|| chunk[0]);
                tr.expect(k, count, target);
                jobs.push(Job {
                    request: ctx.api.request(To::Users(chunk), k, t0, 1),
                    due: t0,
                    k,
                });
                k += 1;
            }
        }
    }
    ctx.pool.reset();
    let w = Window::start(ctx.server)?;
    for j in jobs {
        ctx.pool.send(j);
    }
    let sent_all = ctx.pool.drain(Duration::from_secs(120)).await;
    let done = ctx.complete(Duration::from_secs(20)).await;
    let (cpu, wall) = w.stop()?;
    let tr = ctx.fleet.tracker.borrow();
    let (missing, dup, gaps) = tr.gaps();
    let span = tr.last_delivery.saturating_sub(t0) as f64 / 1e9;
    let per_push = cpu * 1e6 / pushes as f64;
    let http = ctx.pool.stats.borrow();
    eprintln!(
        "[{}] unicast batch {batch}: {pushes} pushes in {requests} requests: {}/{} delivered, CPU {cpu:.3}s = {per_push:.2} us/push, {:.0} pushes/s",
        ctx.report.label,
        tr.delivered,
        tr.expected_total,
        pushes as f64 / span.max(1e-9)
    );
    ctx.report.emit(
        "unicast",
        json!({
            "users": users.len(), "rounds": opts.unicast_rounds, "batch": batch,
            "pushes": pushes, "requests": requests,
            "expected": tr.expected_total, "delivered": tr.delivered, "missing": missing,
            "duplicates": dup, "misdirected": tr.misdirected, "gap_examples": gaps,
            "complete": done && sent_all,
            "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "cpu_us_per_push": round(per_push, 3),
            "cpu_us_per_request": round(cpu * 1e6 / requests as f64, 3),
            "pushes_per_s": (pushes as f64 / span.max(1e-9)).round(),
            "latency_us": summary(&tr.latency), "http_latency_us": summary(&http.latency),
            "http_ok": http.ok, "http_failed": http.failed, "http_errors": ctx.http_errors(),
            "rss_kib": ctx.server.rss_kib()?,
        }),
    )
}

/// xorshift64*: a cheap, seeded choice of users.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Waits until the realtime clock reaches `due`: sleeps while far, yields while near
/// (tokio's timer is 1 ms coarse; yielding keeps the receivers and the pool running).
async fn until(due: u64) {
    loop {
        let now = now_ns();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > 2_000_000 {
            tokio::time::sleep(Duration::from_nanos(left - 1_500_000)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// S5: unicast pushes to random users at a fixed rate (open loop) for `rate_secs`.
async fn latency(ctx: &Ctx<'_>, opts: &SuiteOpts, rate: u64) -> anyhow::Result<()> {
    let n = (rate * opts.rate_secs) as usize;
    let users = ctx.conns.len() as u64;
    let k0 = ctx.ks(n);
    ctx.fleet.tracker.borrow_mut().phase(k0, n);
    ctx.pool.reset();
    let mut rng = Rng(opts.seed ^ rate.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let start = now_ns() + 20_000_000;
    let end = start + opts.rate_secs * 1_000_000_000;
    ctx.fleet.tracker.borrow_mut().window_end = end;
    let w = Window::start(ctx.server)?;
    let mut max_queue = 0;
    for i in 0..n as u64 {
        let due = start + i * 1_000_000_000 / rate;
        until(due).await;
        let user = (rng.next() % users) as u32;
        let k = k0 + i;
        ctx.fleet
            .tracker
            .borrow_mut()
            .expect(k, ctx.conns[user as usize], Some(user));
        ctx.pool.send(Job {
            request: ctx.api.request(To::Users(&[user]), k, due, 1),
            due,
            k,
        });
        max_queue = max_queue.max(ctx.pool.queued());
    }
    // Drain for at most `drain_secs`; what was never sent is dropped and not expected.
    let deadline = Instant::now() + Duration::from_secs(opts.drain_secs);
    while !(ctx.pool.idle() && ctx.fleet.tracker.borrow().complete()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let unsent = ctx.pool.clear();
    {
        let mut tr = ctx.fleet.tracker.borrow_mut();
        for j in &unsent {
            tr.unexpect(j.k);
        }
    }
    let (cpu, _) = w.stop()?;
    let tr = ctx.fleet.tracker.borrow();
    let http = ctx.pool.stats.borrow();
    // Lost: answered 200 by the server but never delivered. Requests still in flight at
    // the deadline are neither.
    let (missing, dup, gaps) = tr.gaps_in(http.acked.iter().copied());
    let in_flight = http.sent - http.ok - http.failed;
    let achieved = tr.in_window as f64 / opts.rate_secs as f64;
    let l = summary(&tr.latency);
    eprintln!(
        "[{}] latency at {rate}/s: achieved {achieved:.0}/s, {} delivered, {} unsent, {missing} missing; p50 {} p99 {} p999 {} us; CPU {:.2} us/push",
        ctx.report.label,
        tr.delivered,
        unsent.len(),
        l["p50"],
        l["p99"],
        l["p999"],
        cpu * 1e6 / tr.delivered.max(1) as f64
    );
    ctx.report.emit(
        "latency",
        json!({
            "rate": rate, "secs": opts.rate_secs, "users": users,
            "intended": n, "sent": http.sent, "http_ok": http.ok, "http_failed": http.failed,
            "unsent": unsent.len(), "in_flight_at_end": in_flight, "max_queued": max_queue,
            "expected": tr.expected_total, "delivered": tr.delivered,
            "delivered_in_window": tr.in_window, "achieved_per_s": achieved.round(),
            "missing": missing, "duplicates": dup, "misdirected": tr.misdirected,
            "stray": tr.stray, "gap_examples": gaps,
            "latency_us": l, "http_latency_us": summary(&http.latency),
            "cpu_s": round(cpu, 3),
            "cpu_us_per_push": round(cpu * 1e6 / tr.delivered.max(1) as f64, 3),
            "http_errors": ctx.http_errors(),
            "rss_kib": ctx.server.rss_kib()?,
        }),
    )
}

/// Settings of S6.
pub struct ChurnOpts {
    pub secs: u64,
    pub warmup_secs: u64,
    pub concurrency: usize,
    pub sample_secs: u64,
}

/// S6: connect, handshake, leave, again, from `concurrency` loops.
pub async fn churn(
    spec: Spec,
    sources: Vec<std::net::IpAddr>,
    opts: &ChurnOpts,
    server: Server,
    report: &Report,
) -> anyhow::Result<()> {
    let running = Rc::new(Cell::new(true));
    let cycles = Rc::new(Cell::new(0u64));
    let failures = Rc::new(Cell::new(0u64));
    let handshake_us = Rc::new(std::cell::RefCell::new(histogram()));
    let counter = Rc::new(Cell::new(0usize));
    let rss_start = server.rss_kib()?;
    let mut loops = Vec::new();
    for _ in 0..opts.concurrency {
        let (running, cycles, failures, hs, counter) = (
            running.clone(),
            cycles.clone(),
            failures.clone(),
            handshake_us.clone(),
            counter.clone(),
        );
        let (spec, sources) = (spec.clone(), sources.clone());
        loops.push(tokio::task::spawn_local(async move {
            while running.get() {
                let i = counter.get();
                counter.set(i + 1);
                let user = spec.user(i);
                let t0 = Instant::now();
                let source = sources[i % sources.len()];
                match wire::handshake(&spec, source, user.as_deref(), Duration::from_secs(10)).await
                {
                    Ok(conn) => {
                        hs.borrow_mut()
                            .saturating_record(t0.elapsed().as_micros().max(1) as u64);
                        if wire::leave(conn, Duration::from_secs(5)).await.is_ok() {
                            cycles.set(cycles.get() + 1);
                        } else {
                            failures.set(failures.get() + 1);
                        }
                    }
                    Err(e) => {
                        failures.set(failures.get() + 1);
                        if failures.get() <= 5 {
                            eprintln!("churn handshake failed: {e:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(opts.warmup_secs)).await;
    *handshake_us.borrow_mut() = histogram();
    let c0 = cycles.get();
    let f0 = failures.get();
    let w = Window::start(server)?;
    let rss_warm = server.rss_kib()?;
    let began = Instant::now();
    let mut samples = vec![json!({"t": 0, "rss_kib": rss_warm, "cycles": 0})];
    let total = Duration::from_secs(opts.secs);
    while began.elapsed() < total {
        let step = Duration::from_secs(opts.sample_secs).min(total - began.elapsed());
        tokio::time::sleep(step).await;
        samples.push(json!({
            "t": round(began.elapsed().as_secs_f64(), 1),
            "rss_kib": server.rss_kib()?,
            "cycles": cycles.get() - c0,
        }));
    }
    let (cpu, wall) = w.stop()?;
    let done = cycles.get() - c0;
    let failed = failures.get() - f0;
    running.set(false);
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs(15), l).await;
    }
    let rss_end = server.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib()?;
    let per = cpu * 1e6 / done.max(1) as f64;
    let h = handshake_us.borrow();
    eprintln!(
        "[{}] churn {}s: {done} cycles ({:.0}/s), {failed} failed, CPU {cpu:.2}s = {per:.1} us/connection, RSS {rss_warm} -> {rss_end} KiB (idle after: {rss_after})",
        report.label,
        opts.secs,
        done as f64 / wall
    );
    report.emit(
        "churn",
        json!({
            "secs": opts.secs, "warmup_secs": opts.warmup_secs, "concurrency": opts.concurrency,
            "cycles": done, "failed": failed, "cycles_per_s": (done as f64 / wall).round(),
            "cpu_s": round(cpu, 3), "cpu_us_per_connection": round(per, 2),
            "rss_start_kib": rss_start, "rss_warm_kib": rss_warm, "rss_end_kib": rss_end,
            "rss_after_kib": rss_after,
            "rss_drift_kib": rss_end as i64 - rss_warm as i64,
            "handshake_us": summary(&h), "samples": samples,
        }),
    )
}

/// CPU time of the calling thread, seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The kernel's floor per connection: `n` loopback connections made one after another
/// and closed by the connecting side; a thread accepts each, reads to its end and
/// closes it, timed by that thread's CPU clock. S6's figure (connect, handshake, join,
/// leave) is compared with it.
pub fn accept_floor(n: usize, report: &Report) -> anyhow::Result<()> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut cpu = 0.0;
        let mut buf = [0u8; 64];
        for _ in 0..n {
            // Waiting for the next connection costs no CPU; each is timed from accept.
            let t0 = thread_cpu();
            let (mut s, _) = listener.accept()?;
            while s.read(&mut buf)? > 0 {}
            drop(s);
            cpu += thread_cpu() - t0;
        }
        Ok(cpu)
    });
    for _ in 0..n {
        drop(std::net::TcpStream::connect(addr)?);
    }
    let cpu = server
        .join()
        .map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;
    let per = cpu * 1e6 / n as f64;
    eprintln!(
        "[{}] accept floor: {n} connections accepted, read and closed: {per:.2} us each",
        report.label
    );
    report.emit(
        "accept_floor",
        json!({"connections": n, "cpu_s": round(cpu, 4), "cpu_us_per_connection": round(per, 3)}),
    )
}

/// The kernel's floor per delivery: one `write` of `bytes` to each of `n` established
/// loopback connections, `rounds` times, timed by this thread's CPU clock (on loopback
/// the write also runs the receiving side's TCP input). Readers drain between rounds,
/// outside the timing.
pub fn floor(n: usize, rounds: usize, bytes: usize, report: &Report) -> anyhow::Result<()> {
    use std::io::{ErrorKind, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let c = std::net::TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        readers.push(c);
        writers.push(s);
    }
    // A server text frame of `bytes` in all.
    let mut frame = vec![0x81u8, 126];
    frame.extend_from_slice(&((bytes.max(130) - 4) as u16).to_be_bytes());
    frame.resize(bytes.max(130), b'x');
    let mut cpu = 0.0;
    let mut sink = vec![0u8; 64 * 1024];
    for _ in 0..rounds {
        let t0 = thread_cpu();
        for w in &mut writers {
            std::io::Write::write_all(w, &frame)?;
        }
        cpu += thread_cpu() - t0;
        for r in &mut readers {
            loop {
                match r.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let writes = n * rounds;
    let per = cpu * 1e6 / writes as f64;
    eprintln!(
        "[{}] floor: {writes} writes of {} bytes: {per:.2} us each",
        report.label,
        frame.len()
    );
    report.emit(
        "floor",
        json!({"connections": n, "rounds": rounds, "bytes": frame.len(), "writes": writes,
               "cpu_s": round(cpu, 4), "cpu_us_per_write": round(per, 3)}),
    )
}
