//! What the server process costs, read from /proc: CPU time (user + system, all threads,
//! including exited ones) and resident memory.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME), the clock publishers stamp into
/// pushes and receivers compare against; every process of a run is on one machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A process whose costs are measured.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    pub pid: u32,
}

/// Clock ticks per second of /proc/PID/stat.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Server {
    /// User + system CPU seconds used so far.
    pub fn cpu(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("server process {} is gone", self.pid))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let utime: f64 = f[11].parse()?;
        let stime: f64 = f[12].parse()?;
        Ok((utime + stime) / ticks_per_sec())
    }

    /// Resident set size in KiB (VmRSS).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("server process {} is gone", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()
            .context("VmRSS")
    }

    /// Number of threads.
    pub fn threads(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

/// CPU used by the server over a window.
pub struct Window {
    server: Server,
    cpu0: f64,
    wall0: std::time::Instant,
}

impl Window {
    pub fn start(server: Server) -> anyhow::Result<Window> {
        Ok(Window {
            server,
            cpu0: server.cpu()?,
            wall0: std::time::Instant::now(),
        })
    }

    /// (server CPU seconds, wall seconds) since the start.
    pub fn stop(&self) -> anyhow::Result<(f64, f64)> {
        Ok((
            self.server.cpu()? - self.cpu0,
            self.wall0.elapsed().as_secs_f64(),
        ))
    }
}
