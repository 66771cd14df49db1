//! Per-address limits: how many connections one address may hold at once, and how many
//! Engine.IO handshakes it may open per second.
//!
//! IPv6 addresses count per /64, the block one host or one customer is usually given,
//! so that an attacker cannot escape the limit by rotating addresses within it. The
//! table holds an entry for each address with an open connection or a handshake in the
//! last second, so it is bounded by the connection limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use parking_lot::Mutex;

use super::config::EngineConfig;

/// The key an address is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// An address block exempt from the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A configured exemption that is not an address or CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)")]
pub struct CidrError(pub String);

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Checks `transport.ip_limit_exempt` entries (at start, so that a typo stops herald).
pub fn check_exemptions(list: &[String]) -> Result<(), CidrError> {
    list.iter().try_for_each(|s| Cidr::parse(s).map(|_| ()))
}

#[derive(Debug, Default)]
struct Entry {
    /// Open connections.
    connections: u32,
    /// Open Engine.IO sessions (a long-polling one holds no connection between requests).
    sessions: u32,
    /// Handshake tokens left (a bucket refilled at the configured rate).
    tokens: f32,
    /// Engine-clock ms of the last refill; 0 before the first handshake.
    refilled: u64,
}

/// The per-address counters.
pub(crate) struct PerIp {
    max_connections: u32,
    max_sessions: u32,
    rate: u32,
    exempt: Vec<Cidr>,
    /// Per-address entries; one lock, taken once per connection and per handshake.
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<IpKey, Entry>,
    /// Engine-clock second of the last sweep of entries with nothing left to count.
    swept: u64,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Connections,
    Sessions,
    Handshakes,
}

impl Entry {
    /// Nothing left to count: no connection, no session, a full bucket again.
    fn idle(&self, now_ms: u64) -> bool {
        self.connections == 0
            && self.sessions == 0
            && (self.refilled == 0 || now_ms.saturating_sub(self.refilled) >= 1000)
    }
}

impl PerIp {
    pub(crate) fn new(config: &EngineConfig) -> Result<PerIp, CidrError> {
        Ok(PerIp {
            max_connections: u32::try_from(config.max_connections_per_ip).unwrap_or(u32::MAX),
            max_sessions: u32::try_from(config.max_sessions_per_ip).unwrap_or(u32::MAX),
            rate: config.max_handshakes_per_ip_per_sec,
            exempt: config
                .ip_limit_exempt
                .iter()
                .map(|s| Cidr::parse(s))
                .collect::<Result<_, _>>()?,
            table: Mutex::new(Table::default()),
        })
    }

    /// Whether `ip` is counted at all.
    pub(crate) fn limited(&self, ip: IpAddr) -> bool {
        (self.max_connections > 0 || self.max_sessions > 0 || self.rate > 0)
            && !self.exempt.iter().any(|c| c.contains(ip))
    }

    /// Counts a new connection from `ip`; refused if the address holds its limit. Every
    /// admitted connection must be given back with [`PerIp::close`].
    pub(crate) fn open(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refused> {
        let mut t = self.table.lock();
        t.sweep(now_ms);
        let e = t.entries.entry(IpKey::of(ip)).or_default();
        if self.max_connections > 0 && e.connections >= self.max_connections {
            return Err(Refused::Connections);
        }
        e.connections += 1;
        Ok(())
    }

    /// Gives back a connection counted by [`PerIp::open`].
    pub(crate) fn close(&self, ip: IpAddr, now_ms: u64) {
        self.give_back(ip, now_ms, |e| {
            e.connections = e.connections.saturating_sub(1)
        });
    }

    /// Counts a new session from `ip`; refused if the address holds its limit.
    pub(crate) fn open_session(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refused> {
        let mut t = self.table.lock();
        t.sweep(now_ms);
        let e = t.entries.entry(IpKey::of(ip)).or_default();
        if self.max_sessions > 0 && e.sessions >= self.max_sessions {
            return Err(Refused::Sessions);
        }
        e.sessions += 1;
        Ok(())
    }

    /// Gives back a session counted by [`PerIp::open_session`].
    pub(crate) fn close_session(&self, ip: IpAddr, now_ms: u64) {
        self.give_back(ip, now_ms, |e| e.sessions = e.sessions.saturating_sub(1));
    }

    fn give_back(&self, ip: IpAddr, now_ms: u64, take: impl FnOnce(&mut Entry)) {
        let mut t = self.table.lock();
        let key = IpKey::of(ip);
        if let Some(e) = t.entries.get_mut(&key) {
            take(e);
            if e.idle(now_ms) {
                t.entries.remove(&key);
            }
        }
    }

    /// Takes a handshake token for `ip`.
    pub(crate) fn handshake(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refused> {
        if self.rate == 0 {
            return Ok(());
        }
        let mut t = self.table.lock();
        let e = t.entries.entry(IpKey::of(ip)).or_default();
        let rate = self.rate as f32;
        if e.refilled == 0 {
            e.tokens = rate;
        } else {
            let elapsed = now_ms.saturating_sub(e.refilled) as f32 / 1000.0;
            e.tokens = (e.tokens + elapsed * rate).min(rate);
        }
        e.refilled = now_ms.max(1);
        if e.tokens < 1.0 {
            return Err(Refused::Handshakes);
        }
        e.tokens -= 1.0;
        Ok(())
    }

    /// Entries tracked (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().entries.len()
    }
}

impl Table {
    /// Once a second, forgets addresses with no connection and a full bucket again.
    fn sweep(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second == self.swept {
            return;
        }
        self.swept = second;
        self.entries.retain(|_, e| !e.idle(now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, rate: u32, exempt: &[&str]) -> PerIp {
        PerIp::new(&EngineConfig {
            max_connections_per_ip: conns,
            max_sessions_per_ip: conns,
            max_handshakes_per_ip_per_sec: rate,
            ip_limit_exempt: exempt.iter().map(|s| s.to_string()).collect(),
            ..EngineConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn connections_per_address_are_bounded_and_given_back() {
        let l = limits(2, 0, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.open(a, 1).is_ok());
        assert!(l.open(a, 1).is_ok());
        assert_eq!(l.open(a, 1), Err(Refused::Connections));
        assert!(l.open(b, 1).is_ok());
        l.close(a, 2);
        assert!(l.open(a, 2).is_ok());
        for ip in [a, a, b] {
            l.close(ip, 3);
        }
        assert_eq!(l.len(), 0, "nothing is kept for addresses that left");
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_v4_as_v4() {
        let l = limits(1, 0, &[]);
        assert!(l.open("2001:db8::1".parse().unwrap(), 1).is_ok());
        assert_eq!(
            l.open("2001:db8::ffff:2".parse().unwrap(), 1),
            Err(Refused::Connections)
        );
        assert!(l.open("2001:db8:0:1::1".parse().unwrap(), 1).is_ok());
        assert!(l.open("10.1.1.1".parse().unwrap(), 1).is_ok());
        assert_eq!(
            l.open("::ffff:10.1.1.1".parse().unwrap(), 1),
            Err(Refused::Connections)
        );
    }

    #[test]
    fn handshakes_refill_at_the_rate() {
        let l = limits(0, 10, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(l.handshake(a, 1000).is_ok());
        }
        assert_eq!(l.handshake(a, 1000), Err(Refused::Handshakes));
        // 100 ms later one more token has come back.
        assert!(l.handshake(a, 1100).is_ok());
        assert_eq!(l.handshake(a, 1100), Err(Refused::Handshakes));
        // Entries of addresses that went quiet are swept.
        l.open("10.0.0.9".parse().unwrap(), 5000).unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn sessions_per_address_are_bounded_apart_from_connections() {
        let l = limits(2, 0, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        l.open(a, 1).unwrap();
        l.open_session(a, 1).unwrap();
        l.open_session(a, 1).unwrap();
        assert_eq!(l.open_session(a, 1), Err(Refused::Sessions));
        // A long-polling session outlives its requests' connections.
        l.close(a, 2);
        assert_eq!(l.open_session(a, 2), Err(Refused::Sessions));
        l.close_session(a, 3);
        l.open_session(a, 3).unwrap();
        l.close_session(a, 4);
        l.close_session(a, 4);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn exemptions() {
        let l = limits(1, 1, &["10.0.0.0/8", "fd00::/8", "192.168.1.7"]);
        assert!(!l.limited("10.200.3.4".parse().unwrap()));
        assert!(!l.limited("fd12::1".parse().unwrap()));
        assert!(!l.limited("192.168.1.7".parse().unwrap()));
        assert!(l.limited("192.168.1.8".parse().unwrap()));
        assert!(l.limited("11.0.0.1".parse().unwrap()));
        assert!(!limits(0, 0, &[]).limited("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "fd00::/129", "1.2.3.4/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
