//! Rooms and routing: who is in which room, and who gets a line: the
//! room's local members, the other instances, or one user (`/msg`).

use super::*;

pub const LOBBY: &str = "lobby";

/// `/who`, `/rooms` and the list in a join answer name at most this many
/// entries (the first in alphabetical order), then `… and K more`: one
/// answer costs the loop and the asker's queue a bounded amount (about 6 KiB
/// of text) however many rooms or members there are.
pub const LIST_MAX: usize = 200;

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
        let (from, dest) = (&self.clients[i], &self.clients[to]);
        if matches!(dest.home, Home::Remote(..)) && self.cluster.as_ref().is_some_and(|c| !c.up) {
            // Kept in the mirror through an outage, but out of reach: the
            // line would be lost, so it is refused instead.
            let text = format!(
                "*** error: {} is on another server, out of reach while the cluster link is down",
                dest.name
            );
            return reply(out, id, &text);
        }
        let msg = Msg::new(&format!("*{}* {text}", from.name));
        match &dest.home {
            Home::Local(c) => out.send(*c, &msg),
            Home::Remote(node, rid) => out.private(node, *rid, &dest.key, &msg),
        }
        reply(out, id, &format!("-> *{}* {text}", dest.name));
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
        let (old, slot, name) = (client.room, client.slot, client.name.clone());
        let key = wanted.to_ascii_lowercase();
        if *self.rooms[old].key == *key {
            let text = format!("*** error: you are already in {}", self.rooms[old].name);
            return reply(out, id, &text);
        }
        let text = format!("*** {name} left {}", self.rooms[old].name);
        self.announce(old, i, &text, out);
        self.remove_member(old, slot, true, out);
        let room = self.enter(i, &key, wanted, out);
        if let Some(c) = &self.cluster {
            let r = &self.rooms[room];
            out.presence(Presence::Moved {
                node: c.node.clone(),
                id: id.0 as u64,
                room: r.key.to_string(),
                shown: r.name[1..].to_string(),
            });
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
        c.room = room;
        c.slot = r.members.len();
        r.members.push(i);
        if matches!(c.home, Home::Local(_)) {
            r.local += 1;
            if r.local == 1 && self.cluster.is_some() {
                out.subscribe(&r.key, true);
            }
        }
        room
    }

    pub(super) fn remove_member(
        &mut self,
        room: usize,
        slot: usize,
        local: bool,
        out: &mut impl Outbox,
    ) {
        let r = &mut self.rooms[room];
        r.members.swap_remove(slot);
        if let Some(&moved) = r.members.get(slot) {
            self.clients[moved].slot = slot;
        }
        if local {
            r.local -= 1;
            if r.local == 0 && self.cluster.is_some() {
                out.subscribe(&r.key, false);
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
        let mut names: Vec<&Client> = r.members.iter().map(|&m| &self.clients[m]).collect();
        let total = names.len();
        let by_key = |a: &&Client, b: &&Client| a.key.cmp(&b.key);
        if total > LIST_MAX {
            // Only the first LIST_MAX get sorted: linear, not n log n.
            names.select_nth_unstable_by(LIST_MAX - 1, by_key);
            names.truncate(LIST_MAX);
        }
        names.sort_by(by_key);
        let shown = names.iter().map(|c| c.name.to_string());
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
                && let Home::Local(c) = self.clients[member].home
            {
                out.send(c, msg);
            }
        }
    }

    /// A line from a local user for the whole room, on every instance.
    pub(super) fn broadcast(
        &self,
        room: usize,
        from: Member,
        msg: &Rc<Msg>,
        out: &mut impl Outbox,
    ) {
        self.to_room(room, Some(from), msg, out);
        if self.cluster.is_some() {
            out.publish(&self.rooms[room].key, msg);
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
            self.broadcast(room, from, &Msg::new(text), out);
        }
    }
}
