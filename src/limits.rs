//! Per-address limits (as IRC servers have them: ergo allows 16
//! connections per address and 32 new ones per 10 minutes): how many
//! connections one address holds at once (--max-per-ip) and how fast it
//! may open new ones (--max-connects per 10 minutes, a token bucket that
//! refills evenly). The rate counts what costs the server, chat sessions:
//! a line client at its connection, a browser at its WebSocket upgrade,
//! not each file of the page (a page load opens five connections; a
//! reload costs one). An IPv6 client counts by its /64, which one host
//! usually has whole. Pure: no sockets, the caller passes the clock.
//!
//! The table is bounded and never fails open: an entry lives while its
//! address has a connection or its bucket is refilling, and `prune` frees
//! the rest. When it holds MAX_ENTRIES after that, the half of the
//! entries without a connection whose buckets are fullest — those that
//! matter least: their addresses have used the fewest of their tries —
//! are forgotten (an address that forgotten gets a full bucket again, as
//! after the window; one that is being held back keeps its entry). Only
//! when every entry holds a connection (MAX_ENTRIES addresses connected
//! at once, more than --max-clients' default) is a new address refused.
//! Letting new addresses in uncounted instead, as this table once did,
//! turned the limits off for everyone once about 3 500 new /64s a second
//! from one /48 had filled it.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The window --max-connects counts over.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Most addresses tracked at once: 7/8 of 65 536, the most a table of
/// 65 536 buckets holds before it doubles, so that it stays at 65 536 ×
/// (56 + 1) bytes, 3.6 MiB (the unit test pins the entry's size).
pub const MAX_ENTRIES: usize = 57_344;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// --max-per-ip connections already open.
    TooMany,
    /// --max-connects new connections in the window.
    TooFast,
}

impl Refused {
    /// What the client is told.
    pub fn text(self) -> &'static str {
        match self {
            Refused::TooMany => "*** error: too many connections from your address",
            Refused::TooFast => {
                "*** error: too many connections from your address (too many new ones; try again in a few minutes)"
            }
        }
    }
}

struct Entry {
    conns: u32,
    tokens: f64,
    last: Instant,
}

pub struct PerAddr {
    max_conns: u32,
    max_new: u32,
    exempt: Vec<IpNet>,
    table: HashMap<IpAddr, Entry>,
}

impl PerAddr {
    pub fn new(max_conns: u32, max_new: u32, exempt: Vec<IpNet>) -> PerAddr {
        PerAddr {
            max_conns,
            max_new,
            exempt,
            table: HashMap::new(),
        }
    }

    fn off(&self) -> bool {
        self.max_conns == 0 && self.max_new == 0
    }

    /// The key an address is counted under: IPv4 (mapped or not) as is,
    /// IPv6 by its /64.
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(bits.into())
                }
            },
            v4 => v4,
        }
    }

    /// Whether limits apply to `ip` at all.
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.off() || self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// A new connection from `ip`: counted against its address's limits
    /// (against the connect rate too if it is a chat `session`: see the
    /// module doc), or refused. Call `release` when a connection counted
    /// (Ok(true)) goes; Ok(false) means let in uncounted (exempt).
    pub fn try_count(&mut self, ip: IpAddr, now: Instant, session: bool) -> Result<bool, Refused> {
        if self.exempt(ip) {
            return Ok(false);
        }
        let key = Self::key(ip);
        if self.table.len() >= MAX_ENTRIES && !self.table.contains_key(&key) {
            self.prune(now);
            if self.table.len() >= MAX_ENTRIES {
                self.evict(now);
            }
            if self.table.len() >= MAX_ENTRIES {
                // Every entry holds a connection: see the module doc.
                return Err(Refused::TooMany);
            }
        }
        let max_new = self.max_new as f64;
        let e = self.table.entry(key).or_insert(Entry {
            conns: 0,
            tokens: max_new,
            last: now,
        });
        if self.max_conns > 0 && e.conns >= self.max_conns {
            return Err(Refused::TooMany);
        }
        if session {
            take_token(e, self.max_new, now)?;
        }
        e.conns += 1;
        Ok(true)
    }

    /// A connection counted by `try_count` as no session becomes one (a
    /// WebSocket upgrade): it takes its token from the connect rate now,
    /// or is refused (and still needs its `release`).
    pub fn try_session(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if self.exempt(ip) {
            return Ok(());
        }
        match self.table.get_mut(&Self::key(ip)) {
            Some(e) => take_token(e, self.max_new, now),
            // Its entry always lives while it is connected.
            None => Ok(()),
        }
    }

    /// A connection counted by `try_count` went.
    pub fn release(&mut self, ip: IpAddr, now: Instant) {
        let key = Self::key(ip);
        if let Some(e) = self.table.get_mut(&key) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && self.refilled(key, now) {
                self.table.remove(&key);
            }
        }
    }

    fn refilled(&self, key: IpAddr, now: Instant) -> bool {
        let Some(e) = self.table.get(&key) else {
            return true;
        };
        if self.max_new == 0 {
            return true;
        }
        let max_new = self.max_new as f64;
        let refill =
            now.saturating_duration_since(e.last).as_secs_f64() * max_new / WINDOW.as_secs_f64();
        e.tokens + refill >= max_new
    }

    /// Forgets the half of the entries without a connection whose buckets
    /// are fullest (see the module doc). One pass for MAX_ENTRIES / 2 new
    /// addresses at least, while fewer than half the entries hold
    /// connections: O(1) per new address.
    fn evict(&mut self, now: Instant) {
        let max_new = self.max_new as f64;
        let mut idle: Vec<(f64, IpAddr)> = self
            .table
            .iter()
            .filter(|(_, e)| e.conns == 0)
            .map(|(&k, e)| {
                let refill = now.saturating_duration_since(e.last).as_secs_f64() * max_new
                    / WINDOW.as_secs_f64();
                (e.tokens + refill, k)
            })
            .collect();
        let half = idle.len().div_ceil(2);
        if half == 0 {
            return;
        }
        // Fullest first; only the first half needs to be found.
        idle.select_nth_unstable_by(half - 1, |a, b| b.0.total_cmp(&a.0));
        for (_, k) in &idle[..half] {
            self.table.remove(k);
        }
    }

    /// Frees the entries of addresses with no connection and a full bucket.
    pub fn prune(&mut self, now: Instant) {
        let max_new = self.max_new as f64;
        self.table.retain(|_, e| {
            let refill = now.saturating_duration_since(e.last).as_secs_f64() * max_new
                / WINDOW.as_secs_f64();
            e.conns > 0 || (max_new > 0.0 && e.tokens + refill < max_new)
        });
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// One token of `e`'s bucket (of `max_new`, refilled up to `now`), or
/// TooFast; 0: no limit.
fn take_token(e: &mut Entry, max_new: u32, now: Instant) -> Result<(), Refused> {
    if max_new == 0 {
        return Ok(());
    }
    let max_new = f64::from(max_new);
    let refill =
        now.saturating_duration_since(e.last).as_secs_f64() * max_new / WINDOW.as_secs_f64();
    e.tokens = (e.tokens + refill).min(max_new);
    e.last = now;
    if e.tokens < 1.0 {
        return Err(Refused::TooFast);
    }
    e.tokens -= 1.0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_concurrent_connections_per_address() {
        let t = Instant::now();
        let mut p = PerAddr::new(2, 0, vec![]);
        assert_eq!(p.try_count(ip("10.0.0.1"), t, true), Ok(true));
        assert_eq!(p.try_count(ip("10.0.0.1"), t, true), Ok(true));
        assert_eq!(p.try_count(ip("10.0.0.1"), t, true), Err(Refused::TooMany));
        assert_eq!(p.try_count(ip("10.0.0.2"), t, true), Ok(true));
        p.release(ip("10.0.0.1"), t);
        assert_eq!(p.try_count(ip("10.0.0.1"), t, true), Ok(true));
        // Every connection gone: every entry freed.
        for a in ["10.0.0.1", "10.0.0.1", "10.0.0.2"] {
            p.release(ip(a), t);
        }
        assert!(p.is_empty());
    }

    #[test]
    fn limits_the_connect_rate_and_refills_evenly() {
        let t = Instant::now();
        let mut p = PerAddr::new(0, 3, vec![]);
        for _ in 0..3 {
            assert_eq!(p.try_count(ip("::1"), t, true), Ok(true));
            p.release(ip("::1"), t);
        }
        assert_eq!(p.try_count(ip("::1"), t, true), Err(Refused::TooFast));
        assert_eq!(p.len(), 1, "kept while refilling");
        // One token per WINDOW / 3.
        let later = t + WINDOW / 3 + Duration::from_millis(1);
        assert_eq!(p.try_count(ip("::1"), later, true), Ok(true));
        assert_eq!(p.try_count(ip("::1"), later, true), Err(Refused::TooFast));
        p.release(ip("::1"), later);
        p.prune(later + WINDOW);
        assert!(p.is_empty(), "freed once refilled");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_exempt_prefixes_are_not_counted() {
        let t = Instant::now();
        let mut p = PerAddr::new(1, 0, vec!["192.168.0.0/16".parse().unwrap()]);
        assert_eq!(p.try_count(ip("2001:db8:1:2::1"), t, true), Ok(true));
        assert_eq!(
            p.try_count(ip("2001:db8:1:2:ffff::9"), t, true),
            Err(Refused::TooMany)
        );
        assert_eq!(p.try_count(ip("2001:db8:1:3::1"), t, true), Ok(true));
        assert_eq!(p.try_count(ip("::ffff:10.1.1.1"), t, true), Ok(true));
        assert_eq!(p.try_count(ip("10.1.1.1"), t, true), Err(Refused::TooMany));
        for _ in 0..5 {
            assert_eq!(p.try_count(ip("192.168.7.7"), t, true), Ok(false));
        }
    }

    #[test]
    fn the_table_is_bounded_and_never_fails_open() {
        let t = Instant::now();
        let mut p = PerAddr::new(2, 8, vec![]);
        // One address used up its bucket; then the table fills.
        let limited = ip("10.255.255.255");
        for _ in 0..8 {
            assert_eq!(p.try_count(limited, t, true), Ok(true));
            p.release(limited, t);
        }
        for i in 0..MAX_ENTRIES as u32 - 1 {
            let a = IpAddr::V4(i.into());
            assert_eq!(p.try_count(a, t, true), Ok(true));
            p.release(a, t);
        }
        assert_eq!(p.len(), MAX_ENTRIES, "each is still refilling");
        let capacity = p.table.capacity();
        // Full of refilling entries: a new address is still counted.
        let new = ip("255.255.255.255");
        assert_eq!(p.try_count(new, t, true), Ok(true));
        assert_eq!(p.try_count(new, t, true), Ok(true));
        assert_eq!(p.try_count(new, t, true), Err(Refused::TooMany));
        assert!(
            p.len() <= MAX_ENTRIES / 2 + 2,
            "half forgotten: {}",
            p.len()
        );
        assert_eq!(p.try_count(limited, t, true), Err(Refused::TooFast), "kept");
        assert!(p.table.capacity() <= capacity, "it never grew");
        // Once they have refilled, the next count frees them.
        p.release(new, t);
        p.release(new, t);
        p.prune(t + WINDOW);
        assert!(p.is_empty());
    }

    #[test]
    fn a_table_full_of_connected_addresses_refuses_new_ones() {
        let t = Instant::now();
        let mut p = PerAddr::new(0, 8, vec![]);
        for i in 0..MAX_ENTRIES as u32 {
            assert_eq!(p.try_count(IpAddr::V4(i.into()), t, true), Ok(true));
        }
        assert_eq!(
            p.try_count(ip("255.255.255.255"), t, true),
            Err(Refused::TooMany)
        );
        p.release(IpAddr::V4(7.into()), t + WINDOW);
        assert_eq!(
            p.try_count(ip("255.255.255.255"), t + WINDOW, true),
            Ok(true)
        );
    }

    #[test]
    fn only_chat_sessions_take_from_the_connect_rate() {
        let t = Instant::now();
        let mut p = PerAddr::new(16, 2, vec![]);
        let a = ip("10.0.0.1");
        // A page's files: counted at once, not against the rate.
        for _ in 0..40 {
            assert_eq!(p.try_count(a, t, false), Ok(true));
            p.release(a, t);
        }
        assert_eq!(p.try_count(a, t, false), Ok(true));
        assert_eq!(p.try_session(a, t), Ok(()), "its upgrade");
        assert_eq!(p.try_count(a, t, true), Ok(true), "a line client");
        assert_eq!(p.try_count(a, t, false), Ok(true));
        assert_eq!(p.try_session(a, t), Err(Refused::TooFast));
        assert_eq!(p.try_count(a, t, true), Err(Refused::TooFast));
    }

    #[test]
    fn an_entry_is_the_size_the_memory_figure_is_made_of() {
        assert_eq!(size_of::<(IpAddr, Entry)>(), 56);
        let mut p = PerAddr::new(1, 0, vec![]);
        let t = Instant::now();
        for i in 0..MAX_ENTRIES as u32 {
            p.try_count(IpAddr::V4(i.into()), t, true).unwrap();
        }
        assert!(p.table.capacity() < 65_536, "65 536 buckets, not 131 072");
    }
}
