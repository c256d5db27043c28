//! What a room has beyond its members: a topic (`/topic`, shown on
//! joining), and operators — its creator, and whoever they pass it on to
//! (`/op`, `/deop`) — who may lock the topic and `/kick` from the room.
//! Server operators (`/oper`) have every room operator's power in every
//! room. And the lists of rooms: `/list`, `/names`.
//!
//! A room's topic and operators go with the room when its last member
//! leaves (its history alone is kept, for --history-ttl; in cluster mode
//! its topic too, in Redis, read back by `Hub::stored_topic`): whoever
//! creates it again is its operator. A room whose last operator leaves has none
//! until a server operator gives it one.

use super::status::utc_minute;
use super::*;
use crate::access::clean_reason;

/// The longest topic, in bytes (IRC's usual TOPICLEN is 307): `/list`
/// shows one per room, so its answer stays bounded.
pub const MAX_TOPIC: usize = 300;

/// A room's topic: what it says, who set it and when, and whether only
/// the room's operators may change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub text: Box<str>,
    pub by: Box<str>,
    /// ms since the Unix epoch.
    pub at_ms: u64,
    pub locked: bool,
}

impl Hub {
    /// `*** topic of #games: text (set by alice, 2026-12-08 01:40 UTC)`,
    /// if the room has a topic.
    pub(super) fn topic_line(&self, room: usize) -> Option<String> {
        let r = &self.rooms[room];
        let t = r.topic.as_ref().filter(|t| !t.text.is_empty())?;
        Some(format!(
            "*** topic of {}: {} (set by {}, {})",
            r.name,
            t.text,
            t.by,
            utc_minute(t.at_ms)
        ))
    }

    /// Room operator of `room`, or server operator.
    pub(super) fn may_run(&self, i: Member, room: usize) -> bool {
        let c = &self.clients[i];
        c.standing.oper() || c.seat.is_op(room)
    }

    /// `/topic` (shown), `/topic lock|unlock` (operators), `/topic TEXT`.
    pub(super) fn topic(&mut self, id: ClientId, i: Member, text: &str, out: &mut impl Outbox) {
        let Some(room) = self.clients[i].seat.current() else {
            return reply(out, id, NO_ROOM);
        };
        let shown = self.rooms[room].name.clone();
        if text.is_empty() {
            let line = self
                .topic_line(room)
                .unwrap_or_else(|| format!("*** {shown} has no topic (/topic TEXT sets one)"));
            return reply(out, id, &line);
        }
        let name = self.clients[i].who.name().to_string();
        let now = self.now_ms;
        let lock = match text.to_ascii_lowercase().as_str() {
            "lock" => Some(true),
            "unlock" => Some(false),
            _ => None,
        };
        let old = self.rooms[room].topic.as_deref().cloned();
        let locked = old.as_ref().is_some_and(|t| t.locked);
        let notice = if let Some(lock) = lock {
            if !self.may_run(i, room) {
                let text = format!("*** error: only operators of {shown} may lock its topic");
                return reply(out, id, &text);
            }
            let t = old.unwrap_or(Topic {
                text: "".into(),
                by: name.as_str().into(),
                at_ms: now,
                locked: false,
            });
            self.rooms[room].topic = Some(Box::new(Topic { locked: lock, ..t }));
            let verb = if lock { "locked" } else { "unlocked" };
            format!("*** {name} {verb} the topic of {shown}")
        } else {
            if locked && !self.may_run(i, room) {
                let text = format!(
                    "*** error: the topic of {shown} is locked; only its operators may change it"
                );
                return reply(out, id, &text);
            }
            if text.len() > MAX_TOPIC {
                let text = format!("*** error: a topic is at most {MAX_TOPIC} bytes");
                return reply(out, id, &text);
            }
            let text = clean_topic(text);
            self.rooms[room].topic = Some(Box::new(Topic {
                text: text.as_str().into(),
                by: name.as_str().into(),
                at_ms: now,
                locked,
            }));
            format!("*** {name} set the topic of {shown}: {text}")
        };
        self.presence_topic(room, out);
        reply(out, id, &notice);
        self.broadcast(room, Some(i), &Msg::new(&notice), out);
    }

    /// `/op NAME` and `/deop NAME` in the current room.
    pub(super) fn op(
        &mut self,
        id: ClientId,
        i: Member,
        name: &str,
        give: bool,
        out: &mut impl Outbox,
    ) {
        let word = if give { "op" } else { "deop" };
        if name.is_empty() {
            return reply(out, id, &format!("*** error: usage: /{word} NAME"));
        }
        let Some(room) = self.clients[i].seat.current() else {
            return reply(out, id, NO_ROOM);
        };
        let shown = self.rooms[room].name.clone();
        let Some(t) = self.operated(id, i, room, name, out) else {
            return;
        };
        let whom = self.clients[t].who.name().to_string();
        if self.clients[t].seat.is_op(room) == give {
            let text = if give {
                format!("*** error: {whom} is already an operator of {shown}")
            } else {
                format!("*** error: {whom} is not an operator of {shown}")
            };
            return reply(out, id, &text);
        }
        self.set_op(t, room, give);
        self.presence_op(t, room, out);
        let by = self.clients[i].who.name();
        let text = if give {
            format!("*** {by} made {whom} an operator of {shown}")
        } else {
            format!("*** {by} took {whom}'s operator status in {shown}")
        };
        reply(out, id, &text);
        self.broadcast(room, Some(i), &Msg::new(&text), out);
    }

    /// The member of `room` called `name`, if `i` may act on it there (a
    /// room or server operator); or None with `id` told why not.
    fn operated(
        &self,
        id: ClientId,
        i: Member,
        room: usize,
        name: &str,
        out: &mut impl Outbox,
    ) -> Option<Member> {
        if !self.may_run(i, room) {
            let text = format!(
                "*** error: you are not an operator of {}",
                self.rooms[room].name
            );
            reply(out, id, &text);
            return None;
        }
        self.member_named(id, name, room, out)
    }

    /// The member of `room` called `name`, or None with `id` told why.
    fn member_named(
        &self,
        id: ClientId,
        name: &str,
        room: usize,
        out: &mut impl Outbox,
    ) -> Option<Member> {
        let Some(&t) = self.names.get(name.to_ascii_lowercase().as_str()) else {
            reply(out, id, &format!("*** error: no user named {name}"));
            return None;
        };
        if !self.clients[t].seat.is_in(room) {
            let text = format!(
                "*** error: {} is not in {}",
                self.clients[t].who.name(),
                self.rooms[room].name
            );
            reply(out, id, &text);
            return None;
        }
        Some(t)
    }

    /// A room's `/kick`: `/kick #ROOM NAME [reason]`, or `/kick NAME
    /// [reason]` from the current room by one who is not a server operator
    /// (a server operator's `/kick NAME` disconnects, see moderation.rs).
    /// The user leaves the room, not the server.
    pub(super) fn room_kick(
        &mut self,
        id: ClientId,
        i: Member,
        room: Option<&str>,
        name: &str,
        why: &str,
        out: &mut impl Outbox,
    ) {
        if name.is_empty() {
            return reply(out, id, "*** error: usage: /kick [#ROOM] NAME [reason]");
        }
        let room = match room {
            None => match self.clients[i].seat.current() {
                Some(r) => r,
                None => return reply(out, id, NO_ROOM),
            },
            Some(shown) => match self.room_keys.get(shown.to_ascii_lowercase().as_str()) {
                Some(&r) => r,
                None => return reply(out, id, &format!("*** error: no room named #{shown}")),
            },
        };
        let shown = self.rooms[room].name.clone();
        let Some(t) = self.operated(id, i, room, name, out) else {
            return;
        };
        let why = clean_reason(why);
        let (by, whom) = (self.clients[i].who.name(), self.clients[t].who.name());
        let mut text = format!("*** {whom} was kicked from {shown} by {by}");
        if !why.is_empty() {
            text.push_str(&format!(" ({why})"));
        }
        log::info!("{}", &text[4..]);
        self.tell_room(room, &text, out);
        match self.clients[t].who.local() {
            Some(tid) => self.kicked_from(tid, t, room, out),
            // Its own instance takes it out, and tells the others.
            None => self.presence_kicked(t, room, out),
        }
    }

    /// Local user `t` (`tid`) is taken out of `room` by a kick.
    pub(super) fn kicked_from(
        &mut self,
        tid: ClientId,
        t: Member,
        room: usize,
        out: &mut impl Outbox,
    ) {
        let was_current = self.clients[t].seat.current() == Some(room);
        let key = self.rooms[room].key.clone();
        self.leave_room(t, room, out);
        self.presence_parted(t, &key, out);
        if was_current {
            let text = match self.clients[t].seat.current() {
                Some(r) => format!("*** now talking in {}", self.rooms[r].name),
                None => "*** you are in no room now (/join ROOM)".to_string(),
            };
            reply(out, tid, &text);
        }
    }

    /// `/list`: the rooms, with how many are in each and their topics,
    /// the first LIST_MAX in alphabetical order.
    pub(super) fn list(&self, id: ClientId, out: &mut impl Outbox) {
        let total = self.rooms.len();
        let mut text = format!("*** rooms ({total}):");
        for &r in self.room_keys.values().take(LIST_MAX) {
            let r = &self.rooms[r];
            text.push_str(&format!("\r\n***   {} ({})", r.name, r.members.len()));
            if let Some(t) = r.topic.as_ref().filter(|t| !t.text.is_empty()) {
                text.push_str(&format!(": {}", t.text));
            }
        }
        if total > LIST_MAX {
            text.push_str(&format!("\r\n***   … and {} more", total - LIST_MAX));
        }
        text.push_str("\r\n*** end of list");
        reply(out, id, &text);
    }

    /// `/names [ROOM]`: as `/who`, for any room the user is in (any room
    /// at all, for a server operator).
    pub(super) fn names(&self, id: ClientId, i: Member, wanted: &str, out: &mut impl Outbox) {
        let room = if wanted.is_empty() {
            match self.clients[i].seat.current() {
                Some(r) => r,
                None => return reply(out, id, NO_ROOM),
            }
        } else {
            let shown = wanted.strip_prefix('#').unwrap_or(wanted);
            let room = self.room_keys.get(shown.to_ascii_lowercase().as_str());
            match room {
                Some(&r) if self.clients[i].seat.is_in(r) || self.clients[i].standing.oper() => r,
                _ => return reply(out, id, &format!("*** error: you are not in #{shown}")),
            }
        };
        reply(out, id, &format!("*** {}", self.roster(room)));
    }
}

/// A topic as shown: control characters become spaces (the line is
/// sanitised already), white space at either end goes.
fn clean_topic(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}
