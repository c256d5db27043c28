//! Who may come in and who may speak: the server password (`/pass`, asked
//! before anything else), operators (`/oper`), and what operators do:
//! `/kick`, `/ban`, `/unban`, `/bans`, `/mute`, `/unmute`. The tables are
//! pure (crate::access); the reactor writes the bans file when they change
//! ([`Hub::bans_to_save`]) and asks nothing else: the ban check at connect
//! is here.

use super::*;
use crate::access::{self, Attempts, Ban, Bans, Span, human_duration};
use log::{info, warn};

/// What a connection is told first when the server has a password.
pub const NEEDS_PASSWORD: &str = "*** this server needs a password: /pass SECRET";
/// What it is told for any other line before the password.
const NEEDS_PASSWORD_ERROR: &str = "*** error: this server needs a password: /pass SECRET";

/// Counts for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moderation {
    /// Wrong passwords, server or operator.
    pub password_failures: u64,
    pub kicks: u64,
    /// Bans set (by name or by address).
    pub bans: u64,
    pub mutes: u64,
    /// Connections refused because their address is banned.
    pub banned_refused: u64,
}

/// The secrets, the bans and the wrong-password counts.
pub struct Access {
    password: Option<String>,
    oper_password: Option<String>,
    bans: Bans,
    attempts: Attempts,
    /// The bans changed since the file was last written.
    changed: bool,
    /// The answers to `/ban` and `/unban` not yet handed to the file's
    /// writer, and those whose change is being written now: an operator
    /// told "banned" can count on the ban being on disk, or is told it
    /// is not.
    answers: Vec<(ClientId, String)>,
    saving: Vec<(ClientId, String)>,
    counts: Moderation,
}

impl Default for Access {
    fn default() -> Access {
        Access::new(
            None,
            None,
            crate::config::DEFAULT_PASS_ATTEMPTS,
            Bans::default(),
        )
    }
}

impl Access {
    /// `attempts`: wrong passwords per address per
    /// [`access::PASS_WINDOW_MS`] (--pass-attempts). An empty secret is no
    /// secret (the configuration refuses one).
    pub fn new(
        password: Option<String>,
        oper_password: Option<String>,
        attempts: u32,
        bans: Bans,
    ) -> Access {
        Access {
            password: password.filter(|p| !p.is_empty()),
            oper_password: oper_password.filter(|p| !p.is_empty()),
            bans,
            attempts: Attempts::new(attempts),
            changed: false,
            answers: Vec::new(),
            saving: Vec::new(),
            counts: Moderation::default(),
        }
    }

    pub(super) fn needs_password(&self) -> bool {
        self.password.is_some()
    }

    pub(super) fn has_opers(&self) -> bool {
        self.oper_password.is_some()
    }
}

/// What one user may do: where it came from, whether it is an operator,
/// whether it is muted.
pub(super) struct Standing {
    /// Local users: the address they came from (bans by name, and the
    /// limit on wrong passwords). None for remote users.
    addr: Option<IpAddr>,
    /// Gave the operator password (`/oper`).
    oper: bool,
    /// Muted until this time (ms since the Unix epoch; u64::MAX: until
    /// `/unmute` or it leaves); 0: not muted.
    muted: u64,
}

impl Standing {
    /// A local user from `addr`, or (None) a remote one.
    pub(super) fn new(addr: Option<IpAddr>) -> Standing {
        Standing {
            addr,
            oper: false,
            muted: 0,
        }
    }

    pub(super) fn oper(&self) -> bool {
        self.oper
    }

    pub(super) fn addr(&self) -> Option<IpAddr> {
        self.addr
    }
}

/// "for 2s", "for 10m", "for 7d", "for 1h 30m", or "permanently".
fn span_words(span: Span) -> String {
    let Some(ms) = span else {
        return "permanently".into();
    };
    let exact = [
        (86_400_000, 'd'),
        (3_600_000, 'h'),
        (60_000, 'm'),
        (1_000, 's'),
    ]
    .into_iter()
    .find(|(unit, _)| ms % unit == 0);
    match exact {
        Some((unit, c)) if ms / unit < 1000 => format!("for {}{c}", ms / unit),
        _ => format!("for {}", human_duration(Duration::from_millis(ms))),
    }
}

/// `[duration] [reason]` of `/ban` and `/mute`: the span (None:
/// permanent) and the cleaned reason, or None with `id` told that a word
/// that looks like a duration is not one.
fn span_and_reason(id: ClientId, rest: &str, out: &mut impl Outbox) -> Option<(Span, String)> {
    let (word, after) = split_word(rest);
    match access::duration_arg(word) {
        Ok(Some(span)) => Some((span, access::clean_reason(after.trim()))),
        Ok(None) => Some((None, access::clean_reason(rest))),
        Err(e) => {
            reply(out, id, &format!("*** error: {e}"));
            None
        }
    }
}

/// " (why)", or nothing.
fn because(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    }
}

impl Hub {
    pub fn with_access(mut self, access: Access) -> Hub {
        self.access = access;
        self
    }

    pub fn moderation(&self) -> Moderation {
        self.access.counts
    }

    /// The bans for the file (its text: [`access::BansFile::text`]), if
    /// they changed since last asked for (expired bans are left out).
    /// Answer with
    /// [`Hub::bans_saved`] once it is written, or not; ask again only
    /// after that (one write at a time, each with the latest bans).
    pub fn bans_to_save(&mut self) -> Option<access::BansFile> {
        if !std::mem::take(&mut self.access.changed) {
            return None;
        }
        let answers = std::mem::take(&mut self.access.answers);
        self.access.saving.extend(answers);
        self.access.bans.prune(self.now_ms);
        Some(self.access.bans.snapshot(self.now_ms))
    }

    /// The text [`Hub::bans_to_save`] gave was written, or (Err) not: the
    /// operators who changed the bans get their answers now, with the
    /// failure if it failed (a ban they were told was set would otherwise
    /// vanish unsaid at the next restart).
    pub fn bans_saved(&mut self, written: Result<(), String>, out: &mut impl Outbox) {
        let saving = std::mem::take(&mut self.access.saving);
        let failed = written.err().map(|e| {
            format!(
                "*** error: the bans file could not be written ({e}); the change holds only until the server restarts"
            )
        });
        for (i, (id, text)) in saving.iter().enumerate() {
            if self.idx(*id).is_none() {
                continue;
            }
            reply(out, *id, text);
            let last_for_id = saving[i + 1..].iter().all(|(other, _)| other != id);
            if let Some(failed) = failed.as_deref().filter(|_| last_for_id) {
                reply(out, *id, failed);
            }
        }
    }

    /// The bans changed at `id`'s command: `answer` once they are saved.
    fn bans_changed(&mut self, id: ClientId, answer: String) {
        self.access.changed = true;
        self.access.answers.push((id, answer));
    }

    /// A banned address is told why and closed; true if it was.
    pub(super) fn refuse_banned(
        &mut self,
        id: ClientId,
        addr: IpAddr,
        out: &mut impl Outbox,
    ) -> bool {
        let Some(ban) = self.access.bans.find(addr, self.now_ms) else {
            return false;
        };
        let mut why = format!("{}, by {}", ban.left(self.now_ms), ban.by);
        if !ban.reason.is_empty() {
            why.push_str(": ");
            why.push_str(&ban.reason);
        }
        info!("{addr} refused: banned ({why})");
        self.access.counts.banned_refused += 1;
        reply(
            out,
            id,
            &format!("*** error: your address is banned from this server ({why})"),
        );
        out.close(id, "banned".into());
        true
    }

    /// A line from a connection that has not given the password yet: only
    /// `/pass` and `/quit` do anything.
    pub(super) fn gate(&mut self, id: ClientId, text: &str, out: &mut impl Outbox) {
        let Some(&addr) = self.waiting.get(&id) else {
            return;
        };
        // A ban set since it connected closes it (remove_banned); this
        // holds whatever set the ban: nobody banned is let in.
        if self.refuse_banned(id, addr, out) {
            self.waiting.remove(&id);
            return;
        }
        let cmd = text
            .strip_prefix('/')
            .filter(|t| !t.starts_with('/'))
            .map(Command::parse);
        let given = match cmd {
            Some(Command::Pass(given)) => given,
            Some(Command::Quit(_)) => {
                reply(out, id, "*** bye");
                return out.close(id, "quit".into());
            }
            _ => return reply(out, id, NEEDS_PASSWORD_ERROR),
        };
        if given.is_empty() {
            return reply(out, id, "*** error: usage: /pass SECRET");
        }
        if self.try_secret(id, addr, given, false, out) {
            self.waiting.remove(&id);
            self.let_in(id, addr, out);
        }
    }

    /// Checks `given` against the server (or operator) password, under the
    /// per-address limit on wrong ones; tells `id` what went wrong.
    fn try_secret(
        &mut self,
        id: ClientId,
        addr: IpAddr,
        given: &str,
        oper: bool,
        out: &mut impl Outbox,
    ) -> bool {
        if let Some(ms) = self.access.attempts.locked(addr, self.now_ms) {
            let wait = human_duration(Duration::from_secs(ms.div_ceil(1000)));
            let text = format!(
                "*** error: too many wrong passwords from your address; try again in {wait}"
            );
            reply(out, id, &text);
            return false;
        }
        let secret = if oper {
            &self.access.oper_password
        } else {
            &self.access.password
        };
        if secret
            .as_deref()
            .is_some_and(|s| access::same_secret(given, s))
        {
            return true;
        }
        self.access.attempts.fail(addr, self.now_ms);
        self.access.counts.password_failures += 1;
        let which = if oper { "operator" } else { "server" };
        warn!("{addr}: wrong {which} password");
        let text = if oper {
            "*** error: wrong operator password"
        } else {
            "*** error: wrong password"
        };
        reply(out, id, text);
        false
    }

    /// Whether `i` may carry out `cmd`: operators' commands are for
    /// operators, and a muted user's actions and private messages are
    /// refused like its messages (muting one channel would only move the
    /// abuse to another). Tells `id` why not.
    pub(super) fn may(
        &self,
        id: ClientId,
        i: Member,
        cmd: &Command,
        out: &mut impl Outbox,
    ) -> bool {
        if let Some(word) = cmd.for_operators()
            && !self.clients[i].standing.oper
        {
            let text = format!("*** error: /{word} is for operators (/oper PASSWORD)");
            reply(out, id, &text);
            return false;
        }
        !(matches!(cmd, Command::Me(_) | Command::Msg { .. }) && self.silenced(id, i, out))
    }

    pub(super) fn muted(&self, i: Member) -> bool {
        self.clients[i].standing.muted > self.now_ms
    }

    /// If `i` is muted, tells it so (and for how long); true if it was.
    pub(super) fn silenced(&self, id: ClientId, i: Member, out: &mut impl Outbox) -> bool {
        let until = self.clients[i].standing.muted;
        if until <= self.now_ms {
            return false;
        }
        let left = if until == u64::MAX {
            "until an operator lifts it".to_string()
        } else {
            let secs = (until - self.now_ms).div_ceil(1000);
            format!("{} more", human_duration(Duration::from_secs(secs)))
        };
        reply(
            out,
            id,
            &format!("*** error: you are muted ({left}); messages, /me and /msg are refused"),
        );
        true
    }

    pub(super) fn oper(&mut self, id: ClientId, i: Member, given: &str, out: &mut impl Outbox) {
        if !self.access.has_opers() {
            return reply(
                out,
                id,
                "*** error: this server has no operators (no --oper-password)",
            );
        }
        if self.clients[i].standing.oper {
            return reply(out, id, "*** you are already an operator");
        }
        if given.is_empty() {
            return reply(out, id, "*** error: usage: /oper PASSWORD");
        }
        let Some(addr) = self.clients[i].standing.addr else {
            return;
        };
        if self.try_secret(id, addr, given, true, out) {
            self.clients[i].standing.oper = true;
            info!("{addr} {} is now an operator", self.clients[i].who.name());
            reply(
                out,
                id,
                "*** you are now an operator; /help lists your commands",
            );
        }
    }

    /// A local user by name, for `/kick` and `/mute`; tells `id` if there
    /// is none (users on other instances are theirs to moderate).
    fn local_user(
        &self,
        id: ClientId,
        name: &str,
        usage: &str,
        what: &str,
        out: &mut impl Outbox,
    ) -> Option<(ClientId, Member)> {
        if name.is_empty() {
            reply(out, id, usage);
            return None;
        }
        let Some(&t) = self.names.get(name.to_ascii_lowercase().as_str()) else {
            reply(out, id, &format!("*** error: no user named {name}"));
            return None;
        };
        let who = &self.clients[t].who;
        match who.local() {
            Some(tid) => Some((tid, t)),
            None => {
                let text = format!(
                    "*** error: {} is on another server; an operator there can /{what} them",
                    who.name()
                );
                reply(out, id, &text);
                None
            }
        }
    }

    /// A line for everyone in `room`, here and on the other instances,
    /// whatever its size (a moderation notice is rare, unlike joins), in
    /// the room's order (see `broadcast`).
    pub(super) fn tell_room(&self, room: usize, text: &str, out: &mut impl Outbox) {
        self.broadcast(room, None, &Msg::new(text), out);
    }

    /// Local user `t` is told (with its room) `text`, then closed; it
    /// leaves the hub at once, so no "left" notice follows the reason.
    fn remove_with_notice(
        &mut self,
        tid: ClientId,
        t: Member,
        text: &str,
        reason: String,
        out: &mut impl Outbox,
    ) {
        if self.cluster.as_ref().is_some_and(|c| c.up) {
            // It is gone before the rooms' copies come back: told here.
            reply(out, tid, text);
            let msg = Msg::new(text);
            for room in self.clients[t].seat.rooms() {
                self.broadcast(room, Some(t), &msg, out);
            }
        } else {
            self.tell_rooms_of(t, text, out);
        }
        out.close(tid, reason);
        if let Some(t) = self.unlink(tid, out) {
            self.forget(t, out);
        }
    }

    pub(super) fn kick(
        &mut self,
        id: ClientId,
        i: Member,
        name: &str,
        why: &str,
        out: &mut impl Outbox,
    ) {
        let usage = "*** error: usage: /kick NAME [reason]";
        let Some((tid, t)) = self.local_user(id, name, usage, "kick", out) else {
            return;
        };
        let why = access::clean_reason(why);
        let (by, whom) = (
            self.clients[i].who.name().to_string(),
            self.clients[t].who.name().to_string(),
        );
        info!("{whom} kicked by {by}{}", because(&why));
        self.access.counts.kicks += 1;
        let text = format!("*** {whom} was kicked by {by}{}", because(&why));
        self.remove_with_notice(tid, t, &text, format!("kicked by {by}"), out);
    }

    pub(super) fn ban(&mut self, id: ClientId, i: Member, args: &str, out: &mut impl Outbox) {
        let (target, rest) = split_word(args);
        if target.is_empty() {
            return reply(
                out,
                id,
                "*** error: usage: /ban NAME|ADDRESS[/prefix] [confirm] [duration] [reason]",
            );
        }
        let (word, after) = split_word(rest.trim());
        let (confirmed, rest) = if word.eq_ignore_ascii_case("confirm") {
            (true, after.trim())
        } else {
            (false, rest.trim())
        };
        let Some((span, why)) = span_and_reason(id, rest, out) else {
            return;
        };
        let (net, reason) = match access::parse_net(target) {
            Some(net) => (net, why.clone()),
            None => {
                let Some(&t) = self.names.get(target.to_ascii_lowercase().as_str()) else {
                    let text = format!("*** error: no user named {target}, and not an address");
                    return reply(out, id, &text);
                };
                let (name, addr) = (self.clients[t].who.name(), self.clients[t].standing.addr);
                let Some(addr) = addr else {
                    let text = format!(
                        "*** error: {name} is on another server; ban their address, or ask an operator there"
                    );
                    return reply(out, id, &text);
                };
                // The name is kept with the address: /bans says whose it was.
                let reason = if why.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}: {why}")
                };
                (access::host_net(addr), reason)
            }
        };
        let shown = access::show_net(&net);
        if !confirmed && let Some(risk) = access::risky(&net, self.clients[i].standing.addr) {
            let text = format!(
                "*** error: not banned: {shown}: {risk}; to ban it anyway: /ban {target} confirm {rest}"
            );
            return reply(out, id, text.trim_end());
        }
        let by = self.clients[i].who.name().to_string();
        let ban = Ban {
            net,
            until: span.map(|ms| self.now_ms.saturating_add(ms)),
            by: by.clone(),
            reason,
        };
        if let Err(e) = self.access.bans.add(ban.clone()) {
            return reply(out, id, &format!("*** error: {e}"));
        }
        self.access.counts.bans += 1;
        if self.cluster.is_some() {
            out.cluster(ClusterOp::Ban(ban.clone()));
        }
        let span = span_words(span);
        warn!("{shown} banned {span} by {by}{}", because(&why));
        let (caught, waiting) = self.remove_banned(&net, &by, &span, &why, out);
        let mut text = format!(
            "*** banned {shown} {span}; {} disconnected",
            plural(caught as u64, "user")
        );
        if waiting > 0 {
            let more = plural(waiting as u64, "connection");
            text.push_str(&format!(" (and {more} waiting for the password)"));
        }
        self.bans_changed(id, text);
    }

    /// Closes every local user `net` covers, but operators (one on the same
    /// address or behind the same NAT is not cut off by a ban it set or
    /// that catches it), each with a notice to its room, and every
    /// connection it covers still waiting for the password (which would
    /// otherwise be let in by the right one); returns how many of each.
    fn remove_banned(
        &mut self,
        net: &ipnet::IpNet,
        by: &str,
        span: &str,
        why: &str,
        out: &mut impl Outbox,
    ) -> (usize, usize) {
        let caught: Vec<(ClientId, Member)> = self
            .local
            .iter()
            .enumerate()
            .filter_map(|(cid, m)| Some((ClientId(cid), (*m)?)))
            .filter(|&(_, m)| {
                let c = &self.clients[m].standing;
                !c.oper && c.addr.is_some_and(|a| net.contains(&a))
            })
            .collect();
        for &(tid, t) in &caught {
            let text = format!(
                "*** {} was banned by {by} {span}{}",
                self.clients[t].who.name(),
                because(why)
            );
            self.remove_with_notice(tid, t, &text, format!("banned by {by}"), out);
        }
        let mut waiting: Vec<(ClientId, IpAddr)> = self
            .waiting
            .iter()
            .filter(|(_, a)| net.contains(*a))
            .map(|(&id, &a)| (id, a))
            .collect();
        waiting.sort();
        for &(id, addr) in &waiting {
            self.waiting.remove(&id);
            self.refuse_banned(id, addr, out);
        }
        (caught.len(), waiting.len())
    }

    /// Cluster mode: a ban set on another instance (heard on the link, or
    /// read from Redis at link-up), already checked by the link. It is
    /// kept (and written to the bans file) like one set here, and closes
    /// the local users it covers.
    pub fn ban_from_cluster(&mut self, ban: Ban, out: &mut impl Outbox) {
        if !ban.active(self.now_ms) || self.access.bans.list_has(&ban) {
            return;
        }
        let span = span_words(ban.until.map(|t| t - self.now_ms));
        let (net, by, why) = (ban.net, ban.by.clone(), ban.reason.clone());
        if let Err(e) = self.access.bans.add(ban) {
            return warn!("cluster: a ban on {net} from another instance not kept: {e}");
        }
        self.access.changed = true;
        info!(
            "{} banned {span} by {by} on another instance",
            access::show_net(&net)
        );
        self.remove_banned(&net, &by, &span, &why, out);
    }

    /// Cluster mode: the bans in force here, to re-assert in Redis at
    /// link-up.
    pub fn bans_held(&self) -> Vec<Ban> {
        self.access.bans.active(self.now_ms).cloned().collect()
    }

    /// Cluster mode: a ban lifted on another instance.
    pub fn unban_from_cluster(&mut self, net: &ipnet::IpNet) {
        if self.access.bans.remove(net) {
            self.access.changed = true;
            info!("{} unbanned on another instance", access::show_net(net));
        }
    }

    pub(super) fn unban(&mut self, id: ClientId, i: Member, arg: &str, out: &mut impl Outbox) {
        let Some(net) = access::parse_net(arg) else {
            return reply(out, id, "*** error: usage: /unban ADDRESS[/prefix]");
        };
        let shown = access::show_net(&net);
        if !self.access.bans.remove(&net) {
            return reply(
                out,
                id,
                &format!("*** error: no ban on {shown} (see /bans)"),
            );
        }
        if self.cluster.is_some() {
            out.cluster(ClusterOp::Unban(net));
        }
        warn!("{shown} unbanned by {}", self.clients[i].who.name());
        self.bans_changed(id, format!("*** unbanned {shown}"));
    }

    pub(super) fn list_bans(&mut self, id: ClientId, out: &mut impl Outbox) {
        let now = self.now_ms;
        if self.access.bans.prune(now) {
            self.access.changed = true;
        }
        let total = self.access.bans.len();
        if total == 0 {
            return reply(out, id, "*** no bans");
        }
        reply(out, id, &format!("*** bans ({total}):"));
        // Bounded like /who: an answer costs a bounded amount.
        for b in self.access.bans.active(now).take(LIST_MAX) {
            let mut line = format!(
                "***   {} ({}) by {}",
                access::show_net(&b.net),
                b.left(now),
                b.by
            );
            if !b.reason.is_empty() {
                line.push_str(": ");
                line.push_str(&b.reason);
            }
            reply(out, id, &line);
        }
        if total > LIST_MAX {
            reply(out, id, &format!("***   … and {} more", total - LIST_MAX));
        }
    }

    pub(super) fn mute(&mut self, id: ClientId, i: Member, args: &str, out: &mut impl Outbox) {
        let (name, rest) = split_word(args);
        let usage = "*** error: usage: /mute NAME [duration] [reason]";
        let Some((_, t)) = self.local_user(id, name, usage, "mute", out) else {
            return;
        };
        let Some((span, why)) = span_and_reason(id, rest.trim(), out) else {
            return;
        };
        self.clients[t].standing.muted = span.map_or(u64::MAX, |ms| self.now_ms.saturating_add(ms));
        self.access.counts.mutes += 1;
        let (by, whom) = (self.clients[i].who.name(), self.clients[t].who.name());
        let span = span_words(span);
        info!("{whom} muted {span} by {by}{}", because(&why));
        let text = format!("*** {whom} was muted by {by} {span}{}", because(&why));
        self.tell_rooms_of(t, &text, out);
    }

    /// `text` in every room user `t` is in, or for `t` alone if it is in
    /// none (so it always hears why).
    fn tell_rooms_of(&self, t: Member, text: &str, out: &mut impl Outbox) {
        let seat = &self.clients[t].seat;
        for room in seat.rooms() {
            self.tell_room(room, text, out);
        }
        if seat.count() == 0
            && let Some(tid) = self.clients[t].who.local()
        {
            reply(out, tid, text);
        }
    }

    pub(super) fn unmute(&mut self, id: ClientId, i: Member, name: &str, out: &mut impl Outbox) {
        let usage = "*** error: usage: /unmute NAME";
        let Some((_, t)) = self.local_user(id, name, usage, "unmute", out) else {
            return;
        };
        if !self.muted(t) {
            let text = format!("*** error: {} is not muted", self.clients[t].who.name());
            return reply(out, id, &text);
        }
        self.clients[t].standing.muted = 0;
        let text = format!(
            "*** {} was unmuted by {}",
            self.clients[t].who.name(),
            self.clients[i].who.name()
        );
        self.tell_rooms_of(t, &text, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_typed() {
        assert_eq!(span_words(Some(2_000)), "for 2s");
        assert_eq!(span_words(Some(600_000)), "for 10m");
        assert_eq!(span_words(Some(7_200_000)), "for 2h");
        assert_eq!(span_words(Some(7 * 86_400_000)), "for 7d");
        assert_eq!(span_words(Some(90 * 60_000)), "for 90m");
        assert_eq!(span_words(Some(1_500)), "for 1s");
        assert_eq!(span_words(None), "permanently");
    }
}
