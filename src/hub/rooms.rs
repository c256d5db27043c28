//! Rooms and routing: who is in which room, and who gets a line: the
//! room's local members, the other instances, or one user (`/msg`). A room
//! line goes out as one shared buffer to all its recipients, and one more
//! (its lines tagged with their ids) for those with `/ids on`.

use super::room_history::tag_lines;
use super::*;

pub const LOBBY: &str = "lobby";

/// `/who`, `/rooms` and the list in a join answer name at most this many
/// entries (the first in alphabetical order), then `… and K more`: one
/// answer costs the loop and the asker's queue a bounded amount (about 6 KiB
/// of text) however many rooms or members there are.
pub const LIST_MAX: usize = 200;

/// Where a user is: its room, and its place among the room's members (for
/// O(1) removal). Only this file reads its fields or moves it, so that a
/// user in several rooms at once changes this type and this file alone.
pub(super) struct Seat {
    room: usize,
    /// Index of the user in its room's `members`.
    slot: usize,
}

impl Seat {
    /// In no room yet (until [`Hub::enter`]).
    pub(super) const NONE: Seat = Seat {
        room: usize::MAX,
        slot: 0,
    };

    /// The room the user is in.
    pub(super) fn room(&self) -> usize {
        self.room
    }
}

/// "a, b, c" for the first entries, and how many were left out.
pub(super) fn listing(total: usize, shown: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut n = 0;
    for entry in shown.take(LIST_MAX) {
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(&entry);
        n += 1;
    }
    if total > n {
        out.push_str(&format!(", … and {} more", total - n));
    }
    out
}

impl Hub {
    /// `/msg`: one line for one user, here or on another instance.
    pub(super) fn private(
        &mut self,
        id: ClientId,
        i: Member,
        target: &str,
        text: &str,
        out: &mut impl Outbox,
    ) {
        if target.is_empty() || text.is_empty() {
            return reply(out, id, "*** error: usage: /msg NAME text");
        }
        let Some(&to) = self.names.get(target.to_ascii_lowercase().as_str()) else {
            return reply(out, id, &format!("*** error: no user named {target}"));
        };
        let (from, dest) = (&self.clients[i].who, &self.clients[to].who);
        if dest.local().is_none() && self.cluster.as_ref().is_some_and(|c| !c.up) {
            // Kept in the mirror through an outage, but out of reach: the
            // line would be lost, so it is refused instead.
            let text = format!(
                "*** error: {} is on another server, out of reach while the cluster link is down",
                dest.name()
            );
            return reply(out, id, &text);
        }
        let msg = Msg::new(&format!("*{}* {text}", from.name()));
        match dest.home() {
            Home::Local(c) => out.send(*c, &msg),
            Home::Remote(node, rid) => out.cluster(ClusterOp::Private {
                node: node.clone(),
                to: *rid,
                to_name: dest.key().into(),
                msg: msg.clone(),
            }),
        }
        reply(out, id, &format!("-> *{}* {text}", dest.name()));
        self.relayed += 1;
    }

    pub(super) fn join(&mut self, id: ClientId, i: Member, wanted: &str, out: &mut impl Outbox) {
        let wanted = wanted.strip_prefix('#').unwrap_or(wanted);
        if wanted.is_empty() {
            return reply(out, id, "*** error: usage: /join ROOM");
        }
        if let Err(why) = check_name(wanted) {
            return reply(out, id, &format!("*** error: invalid room name: {why}"));
        }
        let client = &self.clients[i];
        let (old, name) = (client.seat.room, client.who.name().to_string());
        let key = wanted.to_ascii_lowercase();
        if *self.rooms[old].key == *key {
            let text = format!("*** error: you are already in {}", self.rooms[old].name);
            return reply(out, id, &text);
        }
        let text = format!("*** {name} left {}", self.rooms[old].name);
        self.announce(old, i, &text, out);
        self.leave(i, out);
        let room = self.enter(i, &key, wanted, out);
        if let Some(c) = &self.cluster {
            let r = &self.rooms[room];
            out.cluster(ClusterOp::Presence(Presence::Moved {
                node: c.node.clone(),
                id: id.0 as u64,
                room: r.key.to_string(),
                shown: r.name[1..].to_string(),
            }));
        }
        let text = format!("*** {name} joined {}", self.rooms[room].name);
        self.announce(room, i, &text, out);
        reply(out, id, &format!("*** you joined {}", self.roster(room)));
        self.replay(id, i, room, out);
    }

    /// Adds client `i` to the room `key` (created, shown as `#shown`, if
    /// new); returns the room.
    pub(super) fn enter(
        &mut self,
        i: Member,
        key: &str,
        shown: &str,
        out: &mut impl Outbox,
    ) -> usize {
        let room = match self.room_keys.get(key) {
            Some(&r) => r,
            None => {
                let hist = self.history.open(key, self.now_ms);
                let r = self.rooms.insert(Room {
                    name: format!("#{shown}").into(),
                    key: key.into(),
                    members: Vec::new(),
                    local: 0,
                    hist,
                    last_id: None,
                });
                self.room_keys.insert(key.into(), r);
                r
            }
        };
        let r = &mut self.rooms[room];
        let c = &mut self.clients[i];
        c.seat = Seat {
            room,
            slot: r.members.len(),
        };
        r.members.push(i);
        if c.who.local().is_some() {
            r.local += 1;
            if r.local == 1 && self.cluster.is_some() {
                out.cluster(ClusterOp::Subscribe {
                    room: r.key.clone(),
                    on: true,
                });
            }
        }
        room
    }

    /// Takes user `i` out of its room, which goes (with its history
    /// closed) if `i` was the last in it.
    pub(super) fn leave(&mut self, i: Member, out: &mut impl Outbox) {
        let c = &self.clients[i];
        let (room, slot, local) = (c.seat.room, c.seat.slot, c.who.local().is_some());
        let r = &mut self.rooms[room];
        r.members.swap_remove(slot);
        if let Some(&moved) = r.members.get(slot) {
            self.clients[moved].seat.slot = slot;
        }
        if local {
            r.local -= 1;
            if r.local == 0 && self.cluster.is_some() {
                out.cluster(ClusterOp::Subscribe {
                    room: r.key.clone(),
                    on: false,
                });
            }
        }
        if r.members.is_empty() {
            let gone = self.rooms.remove(room);
            self.room_keys.remove(&gone.key);
            self.history.close(gone.hist, self.now_ms);
        }
    }

    /// "#lobby (3): alice, bob, guest-7"
    pub(super) fn roster(&self, room: usize) -> String {
        let r = &self.rooms[room];
        let mut names: Vec<&Identity> = r.members.iter().map(|&m| &self.clients[m].who).collect();
        let total = names.len();
        let by_key = |a: &&Identity, b: &&Identity| a.key().cmp(b.key());
        if total > LIST_MAX {
            // Only the first LIST_MAX get sorted: linear, not n log n.
            names.select_nth_unstable_by(LIST_MAX - 1, by_key);
            names.truncate(LIST_MAX);
        }
        names.sort_by(by_key);
        let shown = names.iter().map(|c| c.name().to_string());
        format!("{} ({total}): {}", r.name, listing(total, shown))
    }

    /// Every local member of `room` but `from` gets `msg`.
    pub(super) fn to_room(
        &self,
        room: usize,
        from: Option<Member>,
        msg: &Rc<Msg>,
        out: &mut impl Outbox,
    ) {
        for &member in &self.rooms[room].members {
            if Some(member) != from
                && let Some(c) = self.clients[member].who.local()
            {
                out.send(c, msg);
            }
        }
    }

    /// Messages and actions (`lines`: one, or several joined by CRLF) for
    /// everyone in `room`, numbered and kept as room history (by Redis, in
    /// cluster mode with the link up: they come back through `said`).
    /// `from`: the local sender, or None for lines from another instance
    /// (which are not published again).
    pub(super) fn say(
        &mut self,
        room: usize,
        from: Option<Member>,
        lines: String,
        out: &mut impl Outbox,
    ) {
        if let Some(i) = from
            && self.numbered_by_redis(room, i, &lines, out)
        {
            return;
        }
        let at = self.number(room, &lines);
        let plain = self.fan_out(room, from, &lines, at, false, out);
        if from.is_some() && self.cluster.is_some() {
            out.cluster(ClusterOp::Publish {
                room: self.rooms[room].key.clone(),
                msg: plain.clone(),
            });
        }
    }

    /// Room lines numbered `at`, for the local members of `room`: one
    /// shared buffer for those without ids (but `from`, who said them), and
    /// one more, built only if someone needs it, with every line tagged,
    /// for those with ids (`from` included) — never a copy per recipient.
    /// With `hold`, a member awaiting its history from Redis gets them
    /// after it (see `Resume::hold`). Returns the plain buffer.
    pub(super) fn fan_out(
        &mut self,
        room: usize,
        from: Option<Member>,
        text: &str,
        at: Numbered,
        hold: bool,
        out: &mut impl Outbox,
    ) -> Rc<Msg> {
        let plain = Msg::new(text);
        let mut tagged: Option<Rc<Msg>> = None;
        let r = &self.rooms[room];
        for &member in &r.members {
            let c = &mut self.clients[member];
            let Some(to) = c.who.local() else { continue };
            let msg = if c.resume.ids() {
                tagged.get_or_insert_with(|| Msg::new(&tag_lines(text, at.first)))
            } else if Some(member) != from {
                &plain
            } else {
                continue;
            };
            if !(hold && c.resume.hold(&r.key, at, msg)) {
                out.send(to, msg);
            }
        }
        plain
    }

    /// A notice about local member `about` (or nobody) for the whole
    /// room, on every instance, but `about`. In cluster mode with the link
    /// up it is ordered with the room's lines by the same sequencer: it
    /// goes through Redis on the room's channel and is delivered here too
    /// when it comes back (`noticed`), so no instance shows a line after
    /// its sender's leave when it was said before it. Otherwise it is
    /// delivered here at once (and, link down, reaches no other instance).
    pub(super) fn broadcast(
        &self,
        room: usize,
        about: Option<Member>,
        msg: &Rc<Msg>,
        out: &mut impl Outbox,
    ) {
        let key = self.rooms[room].key.clone();
        match &self.cluster {
            Some(c) if c.up => out.cluster(ClusterOp::Notice {
                room: key,
                about: about.and_then(|i| self.clients[i].who.local()),
                msg: msg.clone(),
            }),
            Some(_) => {
                self.to_room(room, about, msg, out);
                out.cluster(ClusterOp::Publish {
                    room: key,
                    msg: msg.clone(),
                });
            }
            None => self.to_room(room, about, msg, out),
        }
    }

    /// A notice about a member of `room` back from the sequencer (see
    /// `broadcast`), or from the link at once when it could not take it:
    /// for the local members but `about` (ours, told otherwise), held like
    /// a room line for those awaiting their history, so that it comes
    /// after the history and in its place among the lines.
    pub fn noticed(
        &mut self,
        room: &str,
        about: Option<ClientId>,
        text: &str,
        out: &mut impl Outbox,
    ) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        let skip = about.and_then(|c| self.idx(c));
        let msg = Msg::new(text);
        // No id: held among the lines, never taken for one of them.
        let at = Numbered {
            first: Id { epoch: 0, n: 0 },
            count: 0,
        };
        let r = &self.rooms[r];
        for &member in &r.members {
            let c = &mut self.clients[member];
            if Some(member) == skip {
                continue;
            }
            if let Some(to) = c.who.local()
                && !c.resume.hold(&r.key, at, &msg)
            {
                out.send(to, &msg);
            }
        }
    }

    pub(super) fn announces(&self, room: usize) -> bool {
        let members = self.rooms[room].members.len();
        members <= self.announce_max && members > 1
    }

    /// A join/leave/nick notice: only in rooms small enough to afford it.
    /// `from` is counted as a member whether or not it still is one.
    pub(super) fn announce(&self, room: usize, from: Member, text: &str, out: &mut impl Outbox) {
        if self.announces(room) {
            self.broadcast(room, Some(from), &Msg::new(text), out);
        }
    }
}
