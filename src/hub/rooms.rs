//! Rooms and routing: which rooms a user is in (a set, one of them its
//! current room), and who gets a line: the room's local members, the other
//! instances, or one user (`/msg`). A room line goes out as one shared
//! buffer per variant to all its recipients — as is for those whose current
//! room it is, with `[#room] ` in front for the others, and each of those
//! tagged with ids for clients with `/ids on`: at most four buffers per
//! broadcast, never one per recipient.

use super::room_history::tag_lines;
use super::*;

pub const LOBBY: &str = "lobby";

/// `/who`, `/rooms` and the list in a join answer name at most this many
/// entries (the first in alphabetical order), then `… and K more`: one
/// answer costs the loop and the asker's queue a bounded amount (about 6 KiB
/// of text) however many rooms or members there are.
pub const LIST_MAX: usize = 200;

/// --max-rooms-per-user's default, as IRC's usual CHANLIMIT.
pub const DEFAULT_MAX_ROOMS: usize = 20;

pub const NO_ROOM: &str = "*** error: you are in no room; /join ROOM";

/// One room a user is in: the room, its place among the room's members
/// (for O(1) removal), and whether it is one of the room's operators.
#[derive(Clone, Copy)]
pub(super) struct Place {
    room: usize,
    slot: usize,
    op: bool,
}

/// Where a user is: the rooms it is in, in the order it joined them (at
/// most --max-rooms-per-user for a local user), and its current room, the
/// one its plain lines go to. Only this file reads its fields or moves it.
pub(super) struct Seat {
    places: Vec<Place>,
    current: Option<usize>,
}

impl Seat {
    /// In no room yet (until [`Hub::enter`]).
    pub(super) const NONE: Seat = Seat {
        places: Vec::new(),
        current: None,
    };

    /// The room plain lines go to, if the user is in any.
    pub(super) fn current(&self) -> Option<usize> {
        self.current
    }

    /// The rooms the user is in, in the order it joined them.
    pub(super) fn rooms(&self) -> impl Iterator<Item = usize> + '_ {
        self.places.iter().map(|p| p.room)
    }

    pub(super) fn count(&self) -> usize {
        self.places.len()
    }

    pub(super) fn is_in(&self, room: usize) -> bool {
        self.places.iter().any(|p| p.room == room)
    }

    /// One of `room`'s operators.
    pub(super) fn is_op(&self, room: usize) -> bool {
        self.places.iter().any(|p| p.room == room && p.op)
    }

    fn place_mut(&mut self, room: usize) -> Option<&mut Place> {
        self.places.iter_mut().find(|p| p.room == room)
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

/// `[#games] ` in front of each line (CRLF between) of a room that is not
/// the recipient's current room.
pub(super) fn prefixed(room: &str, lines: &str) -> String {
    let mut out = String::with_capacity(lines.len() + room.len() + 3);
    for (k, line) in lines.split("\r\n").enumerate() {
        if k > 0 {
            out.push_str("\r\n");
        }
        out.push('[');
        out.push_str(room);
        out.push_str("] ");
        out.push_str(line);
    }
    out
}

impl Hub {
    /// --max-rooms-per-user: the most rooms a local user may be in at once.
    pub fn with_max_rooms(mut self, n: usize) -> Hub {
        self.max_rooms = n.max(1);
        self
    }

    /// `/msg`: one line for one user, here or on another instance; an away
    /// user's message comes with the answer.
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
        if let Some(away) = self.clients[to].status.away() {
            let text = format!("*** {} is away: {away}", self.clients[to].who.name());
            reply(out, id, &text);
        }
        self.relayed += 1;
    }

    /// `/join ROOM`: enters ROOM if not in it yet, and makes it current.
    pub(super) fn join(&mut self, id: ClientId, i: Member, wanted: &str, out: &mut impl Outbox) {
        let wanted = wanted.strip_prefix('#').unwrap_or(wanted);
        if wanted.is_empty() {
            return reply(out, id, "*** error: usage: /join ROOM");
        }
        if let Err(why) = check_name(wanted) {
            return reply(out, id, &format!("*** error: invalid room name: {why}"));
        }
        let key = wanted.to_ascii_lowercase();
        if let Some(&r) = self.room_keys.get(key.as_str())
            && self.clients[i].seat.is_in(r)
        {
            self.clients[i].seat.current = Some(r);
            let text = format!("*** now talking in {}", self.rooms[r].name);
            return reply(out, id, &text);
        }
        let seat = &self.clients[i].seat;
        if seat.count() >= self.max_rooms {
            let text = format!(
                "*** error: you are in {} rooms, the most allowed here; /part one first",
                seat.count()
            );
            return reply(out, id, &text);
        }
        // The lobby is the server's: nobody is its operator by arriving.
        let creator = key != LOBBY && !self.room_keys.contains_key(key.as_str());
        let room = self.enter(i, &key, wanted, out);
        if creator {
            self.set_op(i, room, true);
        }
        self.clients[i].seat.current = Some(room);
        self.presence_joined(i, room, out);
        let name = self.clients[i].who.name().to_string();
        let text = format!("*** {name} joined {}", self.rooms[room].name);
        self.announce(room, i, &text, out);
        reply(out, id, &format!("*** you joined {}", self.roster(room)));
        if let Some(topic) = self.topic_line(room) {
            reply(out, id, &topic);
        }
        self.replay(id, i, room, out);
    }

    /// `/part [ROOM] [reason]`: the first word, if any, is the room (with or
    /// without its `#`), as IRC's PART; alone, the current room is left. A
    /// room one is not in is an error, never taken for a reason: `/part
    /// games` outside #games must not leave #lobby.
    pub(super) fn part(&mut self, id: ClientId, i: Member, args: &str, out: &mut impl Outbox) {
        let (word, rest) = split_word(args);
        let (room, why) = if word.is_empty() {
            match self.clients[i].seat.current {
                Some(r) => (r, ""),
                None => return reply(out, id, NO_ROOM),
            }
        } else {
            let shown = word.strip_prefix('#').unwrap_or(word);
            let mine = self
                .room_keys
                .get(shown.to_ascii_lowercase().as_str())
                .copied()
                .filter(|&r| self.clients[i].seat.is_in(r));
            match mine {
                Some(r) => (r, rest.trim()),
                None => {
                    let text = format!("*** error: you are not in #{shown}");
                    return reply(out, id, &text);
                }
            }
        };
        let why = crate::access::clean_reason(why);
        let name = self.clients[i].who.name();
        let mut text = format!("*** {name} left {}", self.rooms[room].name);
        if !why.is_empty() {
            text.push_str(&format!(" ({why})"));
        }
        self.announce(room, i, &text, out);
        let mut text = format!("*** you left {}", self.rooms[room].name);
        let key = self.rooms[room].key.clone();
        self.leave_room(i, room, out);
        self.presence_parted(i, &key, out);
        match self.clients[i].seat.current {
            Some(r) => text.push_str(&format!("; now talking in {}", self.rooms[r].name)),
            None => text.push_str("; you are in no room now (/join ROOM)"),
        }
        reply(out, id, &text);
    }

    /// Adds client `i` to the room `key` (created, shown as `#shown`, if
    /// new) and makes it current if it had none; returns the room.
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
                    replayed: None,
                    topic: None,
                });
                self.room_keys.insert(key.into(), r);
                r
            }
        };
        let r = &mut self.rooms[room];
        let c = &mut self.clients[i];
        if c.seat.is_in(room) {
            return room;
        }
        c.seat.places.push(Place {
            room,
            slot: r.members.len(),
            op: false,
        });
        c.seat.current.get_or_insert(room);
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

    /// Makes `i` one of `room`'s operators, or not (if it is in the room).
    pub(super) fn set_op(&mut self, i: Member, room: usize, op: bool) {
        if let Some(p) = self.clients[i].seat.place_mut(room) {
            p.op = op;
        }
    }

    /// Takes user `i` out of every room it is in.
    pub(super) fn leave(&mut self, i: Member, out: &mut impl Outbox) {
        while let Some(p) = self.clients[i].seat.places.last() {
            let room = p.room;
            self.leave_room(i, room, out);
        }
    }

    /// Takes user `i` out of `room`, which goes (with its history closed)
    /// if `i` was the last in it. If it was `i`'s current room, the one it
    /// joined most recently of those left becomes current.
    pub(super) fn leave_room(&mut self, i: Member, room: usize, out: &mut impl Outbox) {
        let c = &mut self.clients[i];
        let Some(k) = c.seat.places.iter().position(|p| p.room == room) else {
            return;
        };
        let slot = c.seat.places.remove(k).slot;
        if c.seat.current == Some(room) {
            c.seat.current = c.seat.places.last().map(|p| p.room);
        }
        let local = c.who.local().is_some();
        let r = &mut self.rooms[room];
        r.members.swap_remove(slot);
        if let Some(&moved) = r.members.get(slot)
            && let Some(p) = self.clients[moved].seat.place_mut(room)
        {
            p.slot = slot;
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

    /// "#lobby (3): @alice, bob, guest-7" (`@`: the room's operators).
    pub(super) fn roster(&self, room: usize) -> String {
        let r = &self.rooms[room];
        let mut names: Vec<Member> = r.members.clone();
        let total = names.len();
        let key = |m: &Member| self.clients[*m].who.key();
        let by_key = |a: &Member, b: &Member| key(a).cmp(key(b));
        if total > LIST_MAX {
            // Only the first LIST_MAX get sorted: linear, not n log n.
            names.select_nth_unstable_by(LIST_MAX - 1, by_key);
            names.truncate(LIST_MAX);
        }
        names.sort_by(by_key);
        let shown = names.iter().map(|&m| {
            let c = &self.clients[m];
            let op = if c.seat.is_op(room) { "@" } else { "" };
            format!("{op}{}", c.who.name())
        });
        format!("{} ({total}): {}", r.name, listing(total, shown))
    }

    /// Every local member of `room` but `from` gets `msg`: as it is if
    /// `room` is its current room, else with the room in front (one more
    /// shared buffer, built only if someone needs it).
    pub(super) fn to_room(
        &self,
        room: usize,
        from: Option<Member>,
        msg: &Rc<Msg>,
        out: &mut impl Outbox,
    ) {
        let r = &self.rooms[room];
        let mut other: Option<Rc<Msg>> = None;
        for &member in &r.members {
            let c = &self.clients[member];
            if Some(member) == from {
                continue;
            }
            let Some(to) = c.who.local() else { continue };
            if c.seat.current == Some(room) {
                out.send(to, msg);
            } else {
                let other = other.get_or_insert_with(|| Msg::new(&prefixed(&r.name, msg.text())));
                out.send(to, other);
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
    /// shared buffer per variant, built only if someone needs it — as they
    /// are or with the room in front (see `to_room`), and each of those
    /// with every line tagged with its id and room for those with ids
    /// (`from`, who said them, gets them back only then) — never a copy
    /// per recipient. With `hold`, a member awaiting its history from
    /// Redis gets them after it (see `Resume::hold`). Returns the plain
    /// buffer.
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
        // [current, other] × [plain, tagged]; plain current is `plain`.
        let mut built: [Option<Rc<Msg>>; 3] = [None, None, None];
        let r = &self.rooms[room];
        for &member in &r.members {
            let c = &mut self.clients[member];
            let Some(to) = c.who.local() else { continue };
            let here = c.seat.current == Some(room);
            let ids = c.resume.ids();
            if !ids && Some(member) == from {
                continue;
            }
            let msg = match (here, ids) {
                (true, false) => &plain,
                (false, false) => {
                    built[0].get_or_insert_with(|| Msg::new(&prefixed(&r.name, text)))
                }
                (true, true) => built[1]
                    .get_or_insert_with(|| Msg::new(&tag_lines(text, at.first, &r.key, None))),
                (false, true) => built[2].get_or_insert_with(|| {
                    Msg::new(&tag_lines(text, at.first, &r.key, Some(&r.name)))
                }),
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
        let room = r;
        let r = &self.rooms[room];
        // As `to_room`: one buffer for those whose current room it is, one
        // with `[#room] ` in front for the others.
        let mut other: Option<Rc<Msg>> = None;
        for &member in &r.members {
            let c = &mut self.clients[member];
            if Some(member) == skip {
                continue;
            }
            let Some(to) = c.who.local() else { continue };
            let msg = if c.seat.current == Some(room) {
                &msg
            } else {
                other.get_or_insert_with(|| Msg::new(&prefixed(&r.name, text)))
            };
            if !c.resume.hold(&r.key, at, msg) {
                out.send(to, msg);
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

    /// The same notice in every room `i` is in (leaving, a new name).
    pub(super) fn announce_everywhere(&self, i: Member, text: &str, out: &mut impl Outbox) {
        for room in self.clients[i].seat.rooms() {
            self.announce(room, i, text, out);
        }
    }
}
