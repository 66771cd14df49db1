//! herald-bench: a load generator for herald and its peers (socket.io, socketioxide). It
//! speaks Socket.IO over WebSocket without a client library, framing by hand, so one
//! single-threaded process holds thousands of connections cheaply, and pushes through
//! the servers' HTTP APIs over keep-alive connections.
//!
//! Scenarios (see docs/benchmarks.md for what each measures):
//! - `idle`: hold N connections (manual use).
//! - `idle-ramp`: S1, RSS per idle connection at increasing counts.
//! - `suite`: S2 fan-out, S3 burst, S4 unicast, S5 latency, on one set of receivers.
//! - `churn`: S6, connect + handshake + leave cycles.
//!
//! Results are JSON lines on stdout (and appended to `--out`); a summary goes to stderr.

mod fleet;
mod http;
mod procfs;
mod scenarios;
mod tracker;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fleet::Fleet;
use crate::http::{Api, ApiKind};
use crate::procfs::Server;
use crate::scenarios::{ChurnOpts, Report, SuiteOpts};
use crate::wire::Spec;

#[derive(Parser)]
#[command(name = "herald-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// How to reach the server.
#[derive(Args, Clone)]
struct Conn {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    target: SocketAddr,
    /// Socket.IO path.
    #[arg(long, default_value = "/socket.io/")]
    path: String,
    /// Local source addresses to spread connections over (each gives ~28k ports).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Engine.IO revision: 4 (socket.io-client 3+) or 3 (2.x; `idle` only).
    #[arg(long, default_value_t = 4)]
    eio: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Connect as users `<prefix><n>` (development-mode `userId`); empty: no user.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Distinct users the connections are spread over (0: one user per connection).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Connect with this `deviceId` (each user's connection is that user's device).
    #[arg(long)]
    device_id: Option<String>,
    /// Ack events that ask for one (`42<id>[...]` answered with `43<id>[]`), as a
    /// client whose handler calls the ack callback does.
    #[arg(long)]
    ack: bool,
}

impl Conn {
    fn spec(&self) -> Spec {
        Spec {
            target: self.target,
            path: self.path.clone(),
            eio: self.eio,
            user_prefix: self.user_prefix.clone(),
            users: self.users,
            ack: self.ack,
            device_id: self.device_id.clone(),
        }
    }
}

/// The measured server and where results go.
#[derive(Args, Clone)]
struct Measure {
    /// PID of the server process (CPU and RSS are read from /proc/PID).
    #[arg(long)]
    server_pid: u32,
    /// Name of the server in the results.
    #[arg(long, default_value = "herald")]
    label: String,
    /// Append JSON results to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Measure {
    fn report(&self) -> Report {
        Report {
            label: self.label.clone(),
            out: self.out.clone(),
        }
    }

    fn server(&self) -> Server {
        Server {
            pid: self.server_pid,
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold idle Socket.IO connections.
    Idle {
        #[command(flatten)]
        conn: Conn,
        /// Number of connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold the connections (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
    },
    /// S1: RSS per idle connection at increasing counts.
    IdleRamp {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        measure: Measure,
        /// Connection counts to measure at, in increasing order.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,19500")]
        steps: Vec<usize>,
        /// Seconds to wait after the last handshake of a step before reading RSS.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// S2–S5: fan-out, burst, unicast, latency on one set of receivers.
    Suite {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        measure: Measure,
        /// Which API the server has.
        #[arg(long, value_enum, default_value = "herald")]
        api: ApiKind,
        /// API address (default: the target).
        #[arg(long)]
        api_target: Option<SocketAddr>,
        /// herald API key, if the server wants one.
        #[arg(long)]
        api_key: Option<String>,
        /// herald: push to users durably (`"volatile": false`); default volatile.
        #[arg(long)]
        durable: bool,
        /// Keep-alive HTTP connections of the publisher.
        #[arg(long, default_value_t = 16)]
        http_connections: usize,
        /// Bytes of padding in each pushed data object.
        #[arg(long, default_value_t = 100)]
        pad: usize,
        /// Scenarios, in order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "fanout,burst,unicast,latency"
        )]
        scenarios: Vec<String>,
        /// Receiving connections (one user each).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// S2: measured emits (after the warm-up ones).
        #[arg(long, default_value_t = 20)]
        fanout_emits: usize,
        #[arg(long, default_value_t = 2)]
        fanout_warmup: usize,
        /// S3: bursts, and emits per burst.
        #[arg(long, default_value_t = 3)]
        bursts: usize,
        #[arg(long, default_value_t = 100)]
        burst_size: usize,
        /// S4: pushes to every user this many times.
        #[arg(long, default_value_t = 3)]
        unicast_rounds: usize,
        /// S4: users per request, one run for each value.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        unicast_batch: Vec<usize>,
        /// S5: pushes per second, one run for each.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        rates: Vec<u64>,
        /// S5: seconds at each rate.
        #[arg(long, default_value_t = 10)]
        rate_secs: u64,
        /// S5: longest wait for what is still in flight after each rate's window.
        #[arg(long, default_value_t = 5)]
        drain_secs: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The kernel's floor: CPU of one small write to an established loopback TCP
    /// connection (what every delivery costs at least), measured in this process.
    Floor {
        /// Connections written to.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Writes to each.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Bytes per write (a benchmark delivery is about 200).
        #[arg(long, default_value_t = 200)]
        bytes: usize,
        /// Name in the results.
        #[arg(long, default_value = "kernel")]
        label: String,
        /// Append JSON results to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The kernel's floor under S6: CPU of a bare TCP accept, read to the end and close
    /// on the accepting side (what every connection costs a server at least), measured
    /// on a thread of this process.
    AcceptFloor {
        /// Connections accepted (each leaves a TIME_WAIT socket on the connecting side).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Name in the results.
        #[arg(long, default_value = "kernel")]
        label: String,
        /// Append JSON results to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A webhook receiver that takes every POST (204) and counts them, for measuring
    /// herald with webhooks on. Prints the count every 10 s.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9099")]
        listen: String,
    },
    /// S6: connect + handshake + leave cycles.
    Churn {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        measure: Measure,
        /// Measured seconds.
        #[arg(long, default_value_t = 300)]
        secs: u64,
        /// Seconds of churn before measuring.
        #[arg(long, default_value_t = 5)]
        warmup_secs: u64,
        /// Cycles in flight at once.
        #[arg(long, default_value_t = 32)]
        loops: usize,
        /// Seconds between RSS samples.
        #[arg(long, default_value_t = 10)]
        sample_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the load generator is pinned to one core, and sharing one thread lets
    // every connection use one read buffer and one tracker without locks.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Idle {
            conn,
            connections,
            hold_secs,
        } => {
            let mut fleet = Fleet::new(conn.spec(), conn.sources.clone(), conn.concurrency);
            let secs = fleet.grow(connections, Duration::from_secs(240)).await?;
            println!(
                "connected {} failed {} in {secs:.2}s",
                fleet.alive.get(),
                fleet.failed.get()
            );
            if hold_secs == 0 {
                tokio::signal::ctrl_c().await?;
            } else {
                tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            }
            Ok(())
        }
        Scenario::IdleRamp {
            conn,
            measure,
            steps,
            settle_secs,
        } => {
            let fleet = Fleet::new(conn.spec(), conn.sources.clone(), conn.concurrency);
            scenarios::idle_ramp(
                fleet,
                &steps,
                Duration::from_secs(settle_secs),
                measure.server(),
                &measure.report(),
            )
            .await
        }
        Scenario::Suite {
            conn,
            measure,
            api,
            api_target,
            api_key,
            durable,
            http_connections,
            pad,
            scenarios,
            connections,
            fanout_emits,
            fanout_warmup,
            bursts,
            burst_size,
            unicast_rounds,
            unicast_batch,
            rates,
            rate_secs,
            drain_secs,
            seed,
        } => {
            let mut spec = conn.spec();
            spec.users = connections;
            let fleet = Fleet::new(spec, conn.sources.clone(), conn.concurrency);
            let api = Api {
                kind: api,
                target: api_target.unwrap_or(conn.target),
                user_prefix: conn.user_prefix.clone(),
                durable,
                key: api_key,
                pad: "x".repeat(pad),
            };
            let opts = SuiteOpts {
                scenarios,
                connections,
                fanout_emits,
                fanout_warmup,
                bursts,
                burst_size,
                unicast_rounds,
                unicast_batches: unicast_batch,
                rates,
                rate_secs,
                drain_secs,
                seed,
            };
            scenarios::suite(
                fleet,
                api,
                http_connections,
                &opts,
                measure.server(),
                &measure.report(),
            )
            .await
        }
        Scenario::Floor {
            connections,
            rounds,
            bytes,
            label,
            out,
        } => scenarios::floor(connections, rounds, bytes, &Report { label, out }),
        Scenario::AcceptFloor {
            connections,
            label,
            out,
        } => scenarios::accept_floor(connections, &Report { label, out }),
        Scenario::Sink { listen } => sink(&listen).await,
        Scenario::Churn {
            conn,
            measure,
            secs,
            warmup_secs,
            loops,
            sample_secs,
        } => {
            let opts = ChurnOpts {
                secs,
                warmup_secs,
                concurrency: loops,
                sample_secs,
            };
            scenarios::churn(
                conn.spec(),
                conn.sources.clone(),
                &opts,
                measure.server(),
                &measure.report(),
            )
            .await
        }
    }
}

/// Answers every request 204, keeping connections alive, and counts them.
async fn sink(listen: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("sink listening on {}", listener.local_addr()?);
    let taken = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let t = taken.clone();
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            println!("sink: {} events", t.get());
        }
    });
    loop {
        let (mut s, _) = listener.accept().await?;
        let taken = taken.clone();
        tokio::task::spawn_local(async move {
            // Keep-alive: request after request on one connection.
            let mut buf = vec![0u8; 8192];
            let mut have = 0;
            loop {
                let Ok(n) = s.read(&mut buf[have..]).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                have += n;
                while let Some(used) = request_len(&buf[..have]) {
                    buf.copy_within(used..have, 0);
                    have -= used;
                    taken.set(taken.get() + 1);
                    if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if have == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
        });
    }
}

/// The length of the first whole request (head and Content-Length body) in `buf`.
fn request_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + len).then_some(end + len)
}
