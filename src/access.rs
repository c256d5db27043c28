//! Access control, pure: secrets compared, durations read and shown, bans
//! by address prefix kept (and written to / read from their file's text),
//! and wrong passwords counted per address. No sockets and no clock: every
//! time is ms since the Unix epoch, passed in (the hub's time of this turn).
//! It imports nothing of the hub: the hub (moderation.rs) builds on it.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The window wrong passwords (`/pass`, `/oper`) are counted over, per
/// address: after `--pass-attempts` of them within it, further attempts
/// from that address are refused unchecked until the window ends.
pub const PASS_WINDOW_MS: u64 = 60_000;
/// Addresses with recent wrong passwords remembered at once. Past it the
/// one whose window began first is forgotten: an attacker with many
/// addresses gets at most `--pass-attempts` tries per address per window
/// anyway, and the table stays a few hundred KiB.
pub const MAX_FAILING_ADDRS: usize = 4096;
/// Bans held at once; `/ban` past it is refused. Only operators add bans.
pub const MAX_BANS: usize = 10_000;
/// The longest ban or mute reason kept, in characters.
pub const MAX_REASON: usize = 200;
/// The longest duration accepted: ten years.
pub const MAX_DURATION_MS: u64 = 3650 * 86_400_000;

/// Compares a secret in time that depends on its length only, so that how
/// long a wrong guess took to refuse says nothing about how much of it
/// was right.
pub fn same_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A client's line as it may be logged: the secret of `/pass` and `/oper`
/// replaced by `***` (with -v every line is logged). White space before
/// the command does not hide it: the hub takes ` /pass X` as `/pass X`.
pub fn redact(line: &str) -> std::borrow::Cow<'_, str> {
    let word = line
        .trim_start()
        .split(char::is_whitespace)
        .next()
        .unwrap_or("");
    if word.eq_ignore_ascii_case("/pass") || word.eq_ignore_ascii_case("/oper") {
        format!("{word} ***").into()
    } else {
        line.into()
    }
}

/// How long a ban or mute lasts: `Some(ms)`, or `None` for permanent.
pub type Span = Option<u64>;

/// "30s", "10m", "2h", "7d", "1w", or "permanent" (also "perm",
/// "forever"). None when `s` is none of these (it may be a reason's first
/// word) or is zero or over ten years.
pub fn parse_duration(s: &str) -> Option<Span> {
    let lower = s.to_ascii_lowercase();
    if matches!(lower.as_str(), "permanent" | "perm" | "forever") {
        return Some(None);
    }
    let unit = lower.chars().last()?;
    let per: u64 = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let digits = &lower[..lower.len() - 1];
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = digits.parse::<u64>().ok()?.checked_mul(per)?;
    (ms > 0 && ms <= MAX_DURATION_MS).then_some(Some(ms))
}

/// The word after a `/ban` or `/mute` target: `Ok(Some(span))` for a
/// duration, `Ok(None)` for none (the word begins the reason), and an
/// error for a word that looks like a duration but is not one ("30min",
/// "1.5h", "10" of "10 m", "0s"): taking it for the reason would make a
/// mistyped short ban permanent.
pub fn duration_arg(word: &str) -> Result<Option<Span>, String> {
    if let Some(span) = parse_duration(word) {
        return Ok(Some(span));
    }
    let b = word.as_bytes();
    let numeric = b.first().is_some_and(u8::is_ascii_digit)
        || (b.len() > 1 && b"+-.".contains(&b[0]) && b[1].is_ascii_digit());
    if numeric {
        Err(format!(
            "{word} is not a duration: a whole number and one of s, m, h, d, w (30s, 10m, 2h, 7d, 1w; at most 3650d), or permanent"
        ))
    } else {
        Ok(None)
    }
}

/// The two largest units: "42s", "5m 3s", "2h 10m", "3d 4h".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// An address as it is matched: an IPv4 client of a dual-stack socket
/// (`::ffff:1.2.3.4`) is the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// "10.0.0.0/8", "2001:db8::/32" or a bare address (a /32 or /128). An
/// IPv4-mapped prefix (`::ffff:10.0.0.0/104`) is the IPv4 prefix, as
/// addresses are matched in their canonical form: kept as IPv6 it would
/// match nobody.
pub fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(canonical_net(net.trunc()));
    }
    s.parse::<IpAddr>().ok().map(|a| IpNet::from(canonical(a)))
}

fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        net => net,
    }
}

/// What a ban by name covers: what the per-address limits count as one
/// address, the IPv4 address or the IPv6 /64 (a host usually has a whole
/// /64 and would be back from its next address).
pub fn host_net(addr: IpAddr) -> IpNet {
    match canonical(addr) {
        IpAddr::V6(a) => {
            IpNet::V6(ipnet::Ipv6Net::new(a, 64).map_or_else(|_| a.into(), |n| n.trunc()))
        }
        v4 => IpNet::from(v4),
    }
}

/// Why a ban on `net` is almost certainly a mistake, if it is: it covers
/// the operator's own address (`own`; a ban outlives the session and
/// would lock the operator out at the next connection), or more than a
/// /8 of IPv4 or a /32 of IPv6 (`0.0.0.0/0` locks everyone out).
pub fn risky(net: &IpNet, own: Option<IpAddr>) -> Option<String> {
    if let Some(own) = own.map(canonical).filter(|a| net.contains(a)) {
        return Some(format!("it covers your own address ({own})"));
    }
    let (widest, family) = match net {
        IpNet::V4(_) => (8, "IPv4"),
        IpNet::V6(_) => (32, "IPv6"),
    };
    (net.prefix_len() < widest).then(|| format!("it is wider than /{widest} of {family}"))
}

/// A net shown as typed for one address ("1.2.3.4"), with its prefix
/// otherwise ("10.0.0.0/8").
pub fn show_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Text from a user, the bans file or Redis made safe to show and to
/// store on one line of the file: cleaned as every line users see is
/// ([`crate::line::sanitize`]: no bidi controls, nothing invisible, no
/// line separators), except that a control character (tabs and newlines
/// are the file's separators) is a space, not removed, so that words it
/// stood between stay apart; at most MAX_REASON characters.
pub fn clean_reason(s: &str) -> String {
    let spaced: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::line::sanitize(spaced.as_bytes())
        .unwrap_or_default()
        .chars()
        .take(MAX_REASON)
        .collect::<String>()
        .trim()
        .to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    /// Ms since the Unix epoch it ends; None: permanent.
    pub until: Option<u64>,
    /// The operator who set it, as named then.
    pub by: String,
    /// Why (may be empty); for a ban by name, the name is kept here too.
    pub reason: String,
}

impl Ban {
    pub fn active(&self, now_ms: u64) -> bool {
        self.until.is_none_or(|t| now_ms < t)
    }

    /// One line of the bans file, and the form a ban travels in through
    /// Redis: `NET<TAB>UNTIL-MS|permanent<TAB>BY<TAB>REASON`.
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(64 + self.by.len() + self.reason.len());
        self.write_line(&mut line);
        line
    }

    /// `to_line`, appended to `out`. The name and reason were cleaned
    /// when the ban was made (by the hub, or by `from_line`): cleaning
    /// them again for each of 10 000 bans at every save cost 100 ms;
    /// only the separators are guarded against here.
    fn write_line(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{}\t", self.net);
        match self.until {
            Some(t) => {
                let _ = write!(out, "{t}\t");
            }
            None => out.push_str("permanent\t"),
        }
        for (field, end) in [(&self.by, "\t"), (&self.reason, "")] {
            if memchr::memchr3(b'\t', b'\n', b'\r', field.as_bytes()).is_some() {
                out.push_str(&clean_reason(field));
            } else {
                out.push_str(field);
            }
            out.push_str(end);
        }
    }

    /// The reverse of `to_line`, for text nobody vouches for (a file
    /// edited by hand, anything published on Redis): None unless the net
    /// and the time parse; names and reasons are cleaned and cut.
    pub fn from_line(line: &str) -> Option<Ban> {
        let mut f = line.trim_end_matches('\r').splitn(4, '\t');
        let net = parse_net(f.next()?.trim())?;
        let until = match f.next()?.trim() {
            "permanent" => None,
            t => Some(t.parse::<u64>().ok()?),
        };
        Some(Ban {
            net,
            until,
            by: clean_reason(f.next().unwrap_or("")),
            reason: clean_reason(f.next().unwrap_or("")),
        })
    }

    /// What is left of it: "1h 59m more" or "permanent".
    pub fn left(&self, now_ms: u64) -> String {
        match self.until {
            Some(t) => format!(
                "{} more",
                human_duration(Duration::from_millis(t.saturating_sub(now_ms)))
            ),
            None => "permanent".into(),
        }
    }
}

/// Bans, by address prefix. A linear scan per check: checks happen once per
/// connection, bans are few (at most MAX_BANS), and prefixes of any length
/// can overlap, which a hash of addresses could not match.
///
/// The list is shared, copied on write, so that the bans file's writer
/// gets it for nothing ([`Bans::snapshot`]) and formats it on its own
/// thread: formatting 10 000 bans (4.3 MB) took the loop 5-10 ms.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bans {
    list: Arc<Vec<Ban>>,
}

/// The bans as they were at one moment, for the bans file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BansFile {
    bans: Arc<Vec<Ban>>,
    now_ms: u64,
}

impl BansFile {
    /// The file's text: one ban a line,
    /// `NET<TAB>UNTIL-MS|permanent<TAB>BY<TAB>REASON`, expired bans left
    /// out.
    pub fn text(&self) -> String {
        let mut out =
            String::from("# chatd bans: net, until (ms since 1970) or permanent, by, reason\n");
        for b in self.bans.iter().filter(|b| b.active(self.now_ms)) {
            b.write_line(&mut out);
            out.push('\n');
        }
        out
    }
}

impl Bans {
    /// Adds or replaces the ban on exactly `ban.net`. Err when full.
    pub fn add(&mut self, ban: Ban) -> Result<(), String> {
        let list = Arc::make_mut(&mut self.list);
        if let Some(old) = list.iter_mut().find(|b| b.net == ban.net) {
            *old = ban;
            return Ok(());
        }
        if list.len() >= MAX_BANS {
            return Err(format!(
                "the ban list is full ({MAX_BANS} bans); /unban some"
            ));
        }
        list.push(ban);
        Ok(())
    }

    /// Whether exactly this ban is held already (heard twice: from the
    /// link and from Redis's list at link-up).
    pub fn list_has(&self, ban: &Ban) -> bool {
        self.list.contains(ban)
    }

    /// Lifts the ban on exactly `net`; false if there was none.
    pub fn remove(&mut self, net: &IpNet) -> bool {
        if !self.list.iter().any(|b| b.net == *net) {
            return false;
        }
        Arc::make_mut(&mut self.list).retain(|b| b.net != *net);
        true
    }

    /// The ban in force on `addr`, if any.
    pub fn find(&self, addr: IpAddr, now_ms: u64) -> Option<&Ban> {
        let addr = canonical(addr);
        self.list
            .iter()
            .find(|b| b.active(now_ms) && b.net.contains(&addr))
    }

    /// Drops bans that have run out; true if any did.
    pub fn prune(&mut self, now_ms: u64) -> bool {
        if self.list.iter().all(|b| b.active(now_ms)) {
            return false;
        }
        Arc::make_mut(&mut self.list).retain(|b| b.active(now_ms));
        true
    }

    /// The bans in force, in the order they were set.
    pub fn active(&self, now_ms: u64) -> impl Iterator<Item = &Ban> {
        self.list.iter().filter(move |b| b.active(now_ms))
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The bans file's text ([`BansFile::text`]).
    pub fn to_file(&self, now_ms: u64) -> String {
        self.snapshot(now_ms).text()
    }

    /// The bans as they are now, for the bans file, without a copy.
    pub fn snapshot(&self, now_ms: u64) -> BansFile {
        BansFile {
            bans: Arc::clone(&self.list),
            now_ms,
        }
    }

    /// Reads a bans file (which anyone with access to the disk may have
    /// edited), line by line as bytes: expired bans are left out, and so
    /// is every line that is not a ban (not UTF-8, a net or time that does
    /// not parse, past MAX_BANS), counted in the answer with the numbers
    /// of the first of them for the log. One bad byte costs its line, not
    /// the file.
    pub fn from_file(bytes: &[u8], now_ms: u64) -> (Bans, Skipped) {
        let mut bans = Bans::default();
        let mut bad = Skipped::default();
        for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let Ok(line) = std::str::from_utf8(raw) else {
                bad.add(n + 1);
                continue;
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(ban) = Ban::from_line(line) else {
                bad.add(n + 1);
                continue;
            };
            if ban.active(now_ms) && bans.add(ban).is_err() {
                bad.add(n + 1);
            }
        }
        (bans, bad)
    }
}

/// The lines of a bans file that were left out: how many, and the
/// numbers of the first [`Skipped::SHOWN`] (a file of garbage is not
/// logged whole).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub count: usize,
    pub first: Vec<usize>,
}

impl Skipped {
    pub const SHOWN: usize = 10;

    fn add(&mut self, line: usize) {
        self.count += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push(line);
        }
    }
}

/// Wrong passwords per address, in fixed windows of PASS_WINDOW_MS from
/// the first one. IPv6 addresses count by their /64, which one host
/// usually has whole.
#[derive(Debug)]
pub struct Attempts {
    max: u32,
    /// Key -> (wrong passwords in the window, when the window began).
    fails: HashMap<IpAddr, (u32, u64)>,
}

impl Attempts {
    /// At most `max` wrong passwords per address per window.
    pub fn new(max: u32) -> Attempts {
        Attempts {
            max: max.max(1),
            fails: HashMap::new(),
        }
    }

    fn key(addr: IpAddr) -> IpAddr {
        match canonical(addr) {
            IpAddr::V6(a) => {
                let s = a.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// Ms until `addr` may try again, if it has used up its tries.
    pub fn locked(&self, addr: IpAddr, now_ms: u64) -> Option<u64> {
        let &(n, start) = self.fails.get(&Self::key(addr))?;
        let end = start.saturating_add(PASS_WINDOW_MS);
        (n >= self.max && now_ms < end).then(|| end - now_ms)
    }

    /// Counts a wrong password from `addr`.
    pub fn fail(&mut self, addr: IpAddr, now_ms: u64) {
        let key = Self::key(addr);
        if !self.fails.contains_key(&key) && self.fails.len() >= MAX_FAILING_ADDRS {
            self.fails
                .retain(|_, &mut (_, start)| now_ms < start.saturating_add(PASS_WINDOW_MS));
            if self.fails.len() >= MAX_FAILING_ADDRS
                && let Some(oldest) = self.fails.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k)
            {
                self.fails.remove(&oldest);
            }
        }
        let e = self.fails.entry(key).or_insert((0, now_ms));
        if now_ms >= e.1.saturating_add(PASS_WINDOW_MS) {
            *e = (0, now_ms);
        }
        e.0 += 1;
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.fails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fails.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Some(30_000)));
        assert_eq!(parse_duration("10m"), Some(Some(600_000)));
        assert_eq!(parse_duration("2H"), Some(Some(7_200_000)));
        assert_eq!(parse_duration("7d"), Some(Some(7 * 86_400_000)));
        assert_eq!(parse_duration("1w"), Some(Some(7 * 86_400_000)));
        assert_eq!(parse_duration("permanent"), Some(None));
        assert_eq!(parse_duration("forever"), Some(None));
        for bad in [
            "", "s", "0m", "10", "10x", "spam", "-1m", "1.5h", "3651d", "9999999s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_word_that_looks_like_a_duration_must_be_one() {
        assert_eq!(duration_arg("10m"), Ok(Some(Some(600_000))));
        assert_eq!(duration_arg("perm"), Ok(Some(None)));
        assert_eq!(duration_arg("spam"), Ok(None), "a reason");
        assert_eq!(duration_arg(""), Ok(None));
        for typo in ["30min", "1hour", "1.5h", "10", "0s", "-1m", ".5h", "3651d"] {
            let e = duration_arg(typo).unwrap_err();
            assert!(e.starts_with(&format!("{typo} is not a duration")), "{e}");
        }
    }

    #[test]
    fn ban_text_gets_the_same_cleaning_as_every_line() {
        let forged = "x\u{2028}<alice> I am the admin\u{202e}\u{200b}\u{2066}\u{2029}!\tz";
        assert_eq!(clean_reason(forged), "x <alice> I am the admin ! z");
        let ban = Ban::from_line(&format!("1.2.3.4\tpermanent\tev\u{202e}il\t{forged}")).unwrap();
        assert_eq!(ban.by, "evil");
        assert_eq!(ban.reason, "x <alice> I am the admin ! z");
    }

    #[test]
    fn mapped_prefixes_are_ipv4_and_names_cover_the_v6_64() {
        let net = parse_net("::ffff:127.0.0.0/120").unwrap();
        assert_eq!(net.to_string(), "127.0.0.0/24");
        assert_eq!(
            parse_net("::ffff:10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let mut bans = Bans::default();
        bans.add(ban("::ffff:127.0.0.0/120", None)).unwrap();
        assert!(bans.find("127.0.0.9".parse().unwrap(), 0).is_some());
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            host_net(a("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(host_net(a("::ffff:1.2.3.4")).to_string(), "1.2.3.4/32");
    }

    #[test]
    fn wide_bans_and_bans_on_oneself_are_risky() {
        let n = |s: &str| parse_net(s).unwrap();
        let me: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            risky(&n("10.0.0.0/8"), me).unwrap(),
            "it covers your own address (10.1.2.3)"
        );
        assert_eq!(
            risky(&n("0.0.0.0/0"), None).unwrap(),
            "it is wider than /8 of IPv4"
        );
        assert_eq!(
            risky(&n("2000::/3"), me).unwrap(),
            "it is wider than /32 of IPv6"
        );
        assert_eq!(risky(&n("11.0.0.0/8"), me), None);
        assert_eq!(risky(&n("2001:db8::/32"), me), None);
        let mapped = Some("::ffff:10.1.2.3".parse().unwrap());
        assert!(risky(&n("10.1.2.3"), mapped).is_some());
    }

    #[test]
    fn a_bans_file_with_bytes_that_are_not_utf8_loses_those_lines_only() {
        let mut file = b"# comment\n1.2.3.4\tpermanent\ta\tok\n".to_vec();
        file.extend_from_slice(b"5.6.7.8\tpermanent\ta\tbad \xff byte\n\xfe\n");
        file.extend_from_slice(b"9.9.9.9\tpermanent\ta\tok too\r\n");
        let (bans, bad) = Bans::from_file(&file, 0);
        assert_eq!(bans.len(), 2);
        assert_eq!(
            bad,
            Skipped {
                count: 2,
                first: vec![3, 4]
            }
        );
        let junk = b"junk\n".repeat(100);
        let (_, bad) = Bans::from_file(&junk, 0);
        assert_eq!((bad.count, bad.first.len()), (100, Skipped::SHOWN));
    }

    #[test]
    fn secrets_are_not_logged() {
        assert_eq!(redact("  /pass hunter2"), "/pass ***");
        assert_eq!(redact("\t/oper sesame"), "/oper ***");
        assert_eq!(redact("/pass hunter2"), "/pass ***");
        assert_eq!(redact("/OPER  s3same"), "/OPER ***");
        assert_eq!(redact("/passage x"), "/passage x");
        assert_eq!(redact("hello"), "hello");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("hunter2", "hunter2"));
        assert!(!same_secret("hunter", "hunter2"));
        assert!(!same_secret("hunter3", "hunter2"));
        assert!(!same_secret("", "x"));
    }

    fn ban(net: &str, until: Option<u64>) -> Ban {
        Ban {
            net: parse_net(net).unwrap(),
            until,
            by: "alice".into(),
            reason: "spam".into(),
        }
    }

    #[test]
    fn bans_match_prefixes_and_expire() {
        let mut bans = Bans::default();
        bans.add(ban("10.1.2.3/8", Some(1000))).unwrap();
        bans.add(ban("2001:db8::1", None)).unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            bans.find(a("10.200.0.1"), 999).unwrap().net.to_string(),
            "10.0.0.0/8"
        );
        assert!(bans.find(a("::ffff:10.0.0.9"), 0).is_some(), "mapped IPv4");
        assert!(bans.find(a("10.0.0.1"), 1000).is_none(), "expired");
        assert!(bans.find(a("11.0.0.1"), 0).is_none());
        assert!(bans.find(a("2001:db8::1"), u64::MAX).is_some(), "permanent");
        assert!(bans.find(a("2001:db8::2"), 0).is_none());
        // Replacing the same net keeps one entry.
        bans.add(ban("10.0.0.0/8", None)).unwrap();
        assert_eq!(bans.len(), 2);
        assert!(bans.remove(&parse_net("10.0.0.0/8").unwrap()));
        assert!(!bans.remove(&parse_net("10.0.0.0/8").unwrap()));
        bans.add(ban("1.2.3.4", Some(5))).unwrap();
        assert!(bans.prune(5));
        assert_eq!(bans.len(), 1);
    }

    #[test]
    fn the_ban_list_is_bounded() {
        let mut bans = Bans::default();
        for i in 0..MAX_BANS as u32 {
            bans.add(ban(&std::net::Ipv4Addr::from(i).to_string(), None))
                .unwrap();
        }
        assert!(bans.add(ban("255.255.255.255", None)).is_err());
    }

    #[test]
    fn the_bans_file_round_trips_and_distrusts_its_input() {
        let mut bans = Bans::default();
        bans.add(ban("10.0.0.0/8", Some(10_000))).unwrap();
        bans.add(ban("1.2.3.4", None)).unwrap();
        bans.add(ban("5.6.7.8", Some(10))).unwrap();
        let text = bans.to_file(100);
        assert!(!text.contains("5.6.7.8"), "expired bans are dropped");
        let (back, bad) = Bans::from_file(text.as_bytes(), 100);
        assert_eq!(bad.count, 0);
        assert_eq!(back.len(), 2);
        assert_eq!(
            back.find("10.9.9.9".parse().unwrap(), 100).unwrap().reason,
            "spam"
        );
        let edited = "junk\n300.1.1.1\tpermanent\ta\tb\n9.9.9.9\tsoon\ta\tb\n9.9.9.9\tpermanent\tx\x1b[31m\tbad\x07reason\n";
        let (back, bad) = Bans::from_file(edited.as_bytes(), 0);
        assert_eq!(bad.count, 3);
        let b = back.find("9.9.9.9".parse().unwrap(), 0).unwrap();
        assert_eq!((b.by.as_str(), b.reason.as_str()), ("x [31m", "bad reason"));
    }

    #[test]
    fn wrong_passwords_are_limited_per_address_per_window() {
        let mut t = Attempts::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.locked(a, 0), None);
            t.fail(a, 0);
        }
        assert_eq!(t.locked(a, 1000), Some(PASS_WINDOW_MS - 1000));
        assert_eq!(t.locked(b, 1000), None, "another address is not held back");
        assert_eq!(t.locked(a, PASS_WINDOW_MS), None, "the window ends");
        t.fail(a, PASS_WINDOW_MS);
        assert_eq!(t.locked(a, PASS_WINDOW_MS), None, "a new window");
        // One IPv6 host's /64 counts as one address.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..3 {
            t.fail(v6(&format!("2001:db8::{i}")), 0);
        }
        assert!(t.locked(v6("2001:db8::ffff"), 0).is_some());
    }

    #[test]
    fn the_table_of_failing_addresses_is_bounded() {
        let mut t = Attempts::new(1);
        for i in 0..(MAX_FAILING_ADDRS as u32 + 10) {
            t.fail(IpAddr::V4(i.into()), u64::from(i));
        }
        assert_eq!(t.len(), MAX_FAILING_ADDRS);
        // The newest are kept, the oldest went first.
        let newest = IpAddr::V4((MAX_FAILING_ADDRS as u32 + 9).into());
        assert!(t.locked(newest, 0).is_some());
        assert!(t.locked(IpAddr::V4(0.into()), 0).is_none());
    }
}
