//! What others may ask about a user: whether it is away (`/away`), since
//! when it is here and how long it has been idle (`/whois`).

use super::*;
use crate::access::clean_reason;

/// One user's status. A remote user's shows only what its instance told
/// (its away message): the times are those of the instance it is on.
pub(super) struct Status {
    away: Option<Box<str>>,
    /// When it came in (ms since the Unix epoch, as of the hub's clock).
    since_ms: u64,
    /// When it last sent a message or an action.
    active_ms: u64,
    /// Local users: when the other instances were last told `active_ms`.
    told_ms: u64,
    /// Remote users: whether their instance told us since and active.
    known: bool,
}

/// How stale another instance's idle time of one of ours may get: a user
/// who speaks after this much silence is announced again.
pub(super) const SEEN_EVERY_MS: u64 = 60_000;

impl Status {
    pub(super) fn new(now_ms: u64) -> Status {
        Status {
            away: None,
            since_ms: now_ms,
            active_ms: now_ms,
            told_ms: now_ms,
            known: false,
        }
    }

    pub(super) fn away(&self) -> Option<&str> {
        self.away.as_deref()
    }

    pub(super) fn set_away(&mut self, away: Option<&str>) {
        self.away = away.map(Into::into);
    }

    /// It spoke now; true when the other instances should hear of it
    /// (a minute or more since they last did).
    pub(super) fn active(&mut self, now_ms: u64) -> bool {
        self.active_ms = now_ms;
        if now_ms.saturating_sub(self.told_ms) >= SEEN_EVERY_MS {
            self.told_ms = now_ms;
            return true;
        }
        false
    }

    pub(super) fn times(&self) -> (u64, u64) {
        (self.since_ms, self.active_ms)
    }

    /// A remote user's times, as its instance told them.
    pub(super) fn seen(&mut self, since_ms: u64, active_ms: u64) {
        (self.since_ms, self.active_ms, self.known) = (since_ms, active_ms, true);
    }
}

/// `2026-12-08 01:40 UTC`.
pub(super) fn utc_minute(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = crate::logging::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60
    )
}

impl Hub {
    /// `/away [message]`: set, or (alone) cleared.
    pub(super) fn away(&mut self, id: ClientId, i: Member, text: &str, out: &mut impl Outbox) {
        let text = clean_reason(text);
        let answer = if text.is_empty() {
            match self.clients[i].status.away {
                Some(_) => "*** you are no longer away".to_string(),
                None => "*** you are not away (/away MESSAGE sets it)".to_string(),
            }
        } else {
            format!("*** you are away: {text}")
        };
        let away = Some(text.as_str()).filter(|t| !t.is_empty());
        self.clients[i].status.set_away(away);
        self.presence_away(i, out);
        reply(out, id, &answer);
    }

    /// `/whois NAME`: the rooms it shares with the asker, its idle time,
    /// since when it is here, its away message; its address only to
    /// server operators.
    pub(super) fn whois(&self, id: ClientId, i: Member, name: &str, out: &mut impl Outbox) {
        if name.is_empty() {
            return reply(out, id, "*** error: usage: /whois NAME");
        }
        let Some(&t) = self.names.get(name.to_ascii_lowercase().as_str()) else {
            return reply(out, id, &format!("*** error: no user named {name}"));
        };
        let (me, them) = (&self.clients[i], &self.clients[t]);
        let mut shared: Vec<&str> = them
            .seat
            .rooms()
            .filter(|&r| me.seat.is_in(r))
            .map(|r| &*self.rooms[r].name)
            .collect();
        shared.sort_unstable();
        let total = shared.len();
        let mut text = format!("*** whois {}: ", them.who.name());
        if total == 0 {
            text.push_str("shares no room with you");
        } else {
            let rooms = listing(total, shared.into_iter().map(str::to_string));
            text.push_str(&format!("shares {rooms} with you"));
        }
        let local = them.who.local().is_some();
        if local || them.status.known {
            let idle = self.now_ms.saturating_sub(them.status.active_ms);
            // Another instance tells a speaker's activity once a minute.
            let about = if local { "" } else { ", to the minute" };
            text.push_str(&format!(
                "; idle {}{about}; connected since {}",
                human_duration(Duration::from_millis(idle)),
                utc_minute(them.status.since_ms)
            ));
        }
        if !local {
            text.push_str("; on another server");
        }
        if let Some(away) = them.status.away() {
            text.push_str(&format!("; away: {away}"));
        }
        if me.standing.oper()
            && let Some(addr) = them.standing.addr()
        {
            text.push_str(&format!("; address {addr}"));
        }
        reply(out, id, &text);
    }
}
