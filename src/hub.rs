//! The chat hub, pure: names, rooms and commands. A line in, deliveries out.
//!
//! The hub never touches a socket. Transports (line clients now, WebSocket
//! and the cluster link later) call `connect`, `line` and `disconnect`, and
//! the hub answers through an [`Outbox`]: one shared [`Msg`] per broadcast,
//! handed to each recipient. Routing a message costs O(members of the
//! room); every lookup by name is a hash lookup.

use crate::msg::Msg;
use slab::Slab;
use std::collections::HashMap;
use std::rc::Rc;

/// A connection as the transports know it (the reactor's slab key).
pub type ClientId = usize;

/// Where the hub's output goes. Implemented by the reactor over its
/// connections, and by recorders in tests and benches.
pub trait Outbox {
    /// Queue `msg` for `to`. Must not call back into the hub: a transport
    /// that needs to drop `to` marks it and tells the hub after the call.
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>);
    /// `id` asked to leave (`/quit`): flush what is queued for it, then
    /// close it and call [`Hub::disconnect`] with `reason`.
    fn close(&mut self, id: ClientId, reason: String);
}

pub const MAX_NAME: usize = 24;
pub const LOBBY: &str = "lobby";

const HELP: &[&str] = &[
    "*** commands:",
    "***   /nick NAME        change your name (1-24 letters, digits, - _ .)",
    "***   /who              list the people in your room",
    "***   /msg NAME text    send a private message",
    "***   /me text          say what you are doing: * alice waves",
    "***   /join ROOM        leave your room and enter ROOM (created if new)",
    "***   /rooms            list the rooms and how many are in each",
    "***   /quit [reason]    leave the chat",
    "***   /help             this list",
    "***   //text            send a message that begins with /",
];

struct Client {
    name: Box<str>,
    /// Lowercased name: the key in `Hub::names`.
    key: Box<str>,
    room: usize,
    /// Index of this client in its room's `members`, for O(1) removal.
    slot: usize,
}

struct Room {
    /// As shown, with the leading '#' and the casing of whoever created it.
    name: Box<str>,
    key: Box<str>,
    members: Vec<ClientId>,
}

pub struct Hub {
    clients: Vec<Option<Client>>,
    names: HashMap<Box<str>, ClientId>,
    rooms: Slab<Room>,
    room_keys: HashMap<Box<str>, usize>,
    next_guest: u64,
    online: usize,
    announce_max: usize,
}

impl Hub {
    /// `announce_max`: rooms with more members than this do not announce
    /// joins, leaves and nick changes (they would cost O(N²) lines).
    pub fn new(announce_max: usize) -> Hub {
        Hub {
            clients: Vec::new(),
            names: HashMap::new(),
            rooms: Slab::new(),
            room_keys: HashMap::new(),
            next_guest: 1,
            online: 0,
            announce_max,
        }
    }

    pub fn online(&self) -> usize {
        self.online
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    pub fn name(&self, id: ClientId) -> Option<&str> {
        self.client(id).map(|c| &*c.name)
    }

    fn client(&self, id: ClientId) -> Option<&Client> {
        self.clients.get(id).and_then(Option::as_ref)
    }

    /// A new connection: it gets a guest name, lands in the lobby and is
    /// welcomed; the lobby hears of it.
    pub fn connect(&mut self, id: ClientId, out: &mut impl Outbox) {
        if self.client(id).is_some() {
            return;
        }
        let name = format!("guest-{}", self.next_guest);
        self.next_guest += 1;
        let key: Box<str> = name.clone().into();
        self.names.insert(key.clone(), id);
        if self.clients.len() <= id {
            self.clients.resize_with(id + 1, || None);
        }
        self.clients[id] = Some(Client {
            name: name.clone().into(),
            key,
            room: usize::MAX,
            slot: 0,
        });
        self.online += 1;
        let room = self.enter(id, LOBBY);
        let others = self.online - 1;
        let who = match others {
            0 => "nobody else online".to_string(),
            1 => "1 other user online".to_string(),
            n => format!("{n} other users online"),
        };
        let welcome = format!(
            "*** welcome to chatd, {name}! you are in {} with {who}; /help lists the commands",
            self.rooms[room].name
        );
        out.send(id, &Msg::new(&welcome));
        self.announce(room, id, &format!("*** {name} joined"), out);
    }

    /// The connection is gone; its room hears why, and its name is free.
    pub fn disconnect(&mut self, id: ClientId, reason: Option<&str>, out: &mut impl Outbox) {
        let Some(client) = self.clients.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.online -= 1;
        self.names.remove(&client.key);
        let text = match reason {
            Some(r) => format!("*** {} left ({r})", client.name),
            None => format!("*** {} left", client.name),
        };
        self.announce(client.room, id, &text, out);
        self.remove_member(client.room, client.slot);
    }

    /// One line from `id`, already sanitised and known to be non-blank.
    pub fn line(&mut self, id: ClientId, text: &str, out: &mut impl Outbox) {
        let Some(client) = self.client(id) else {
            return;
        };
        if let Some(rest) = text.strip_prefix("//") {
            let msg = Msg::new(&format!("<{}> /{rest}", client.name));
            self.to_room(client.room, id, &msg, out);
        } else if let Some(command) = text.strip_prefix('/') {
            self.command(id, command, out);
        } else {
            let msg = Msg::new(&format!("<{}> {text}", client.name));
            self.to_room(client.room, id, &msg, out);
        }
    }

    fn command(&mut self, id: ClientId, line: &str, out: &mut impl Outbox) {
        let (cmd, rest) = split_word(line);
        let rest = rest.trim();
        match cmd.to_ascii_lowercase().as_str() {
            "nick" => self.nick(id, rest, out),
            "who" => {
                let room = self.clients[id].as_ref().map_or(0, |c| c.room);
                out.send(id, &Msg::new(&format!("*** {}", self.roster(room))));
            }
            "msg" => self.private(id, rest, out),
            "me" if rest.is_empty() => reply(out, id, "*** error: usage: /me text"),
            "me" => {
                let Some(c) = self.client(id) else { return };
                let msg = Msg::new(&format!("* {} {rest}", c.name));
                self.to_room(c.room, id, &msg, out);
            }
            "join" => self.join(id, rest, out),
            "rooms" => {
                let mut rooms: Vec<&Room> = self.rooms.iter().map(|(_, r)| r).collect();
                rooms.sort_by(|a, b| a.key.cmp(&b.key));
                let list: Vec<String> = rooms
                    .iter()
                    .map(|r| format!("{} ({})", r.name, r.members.len()))
                    .collect();
                let text = format!("*** rooms ({}): {}", rooms.len(), list.join(", "));
                reply(out, id, &text);
            }
            "quit" => {
                reply(out, id, "*** bye");
                let reason = if rest.is_empty() {
                    "quit".to_string()
                } else {
                    format!("quit: {rest}")
                };
                out.close(id, reason);
            }
            "help" => {
                for line in HELP {
                    reply(out, id, line);
                }
            }
            _ => {
                let shown: String = cmd.chars().take(32).collect();
                reply(
                    out,
                    id,
                    &format!("*** error: unknown command /{shown} (try /help)"),
                );
            }
        }
    }

    fn nick(&mut self, id: ClientId, wanted: &str, out: &mut impl Outbox) {
        if wanted.is_empty() {
            return reply(out, id, "*** error: usage: /nick NAME");
        }
        if let Err(why) = check_name(wanted) {
            return reply(out, id, &format!("*** error: invalid name: {why}"));
        }
        let key = wanted.to_ascii_lowercase();
        if key.starts_with("guest-") {
            return reply(
                out,
                id,
                "*** error: names beginning with guest- are kept for the server",
            );
        }
        match self.names.get(key.as_str()) {
            Some(&owner) if owner != id => {
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            _ => {}
        }
        let Some(client) = self.clients.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if *client.name == *wanted {
            return reply(out, id, &format!("*** you are already {wanted}"));
        }
        let old = std::mem::replace(&mut client.name, wanted.into());
        let old_key = std::mem::replace(&mut client.key, key.into());
        let room = client.room;
        self.names.remove(&old_key);
        self.names.insert(client.key.clone(), id);
        reply(out, id, &format!("*** you are now {wanted}"));
        self.announce(room, id, &format!("*** {old} is now {wanted}"), out);
    }

    fn private(&mut self, id: ClientId, rest: &str, out: &mut impl Outbox) {
        let (target, text) = split_word(rest);
        let text = text.trim();
        if target.is_empty() || text.is_empty() {
            return reply(out, id, "*** error: usage: /msg NAME text");
        }
        let Some(&to) = self.names.get(target.to_ascii_lowercase().as_str()) else {
            return reply(out, id, &format!("*** error: no user named {target}"));
        };
        let (Some(from), Some(dest)) = (self.client(id), self.client(to)) else {
            return;
        };
        out.send(to, &Msg::new(&format!("*{}* {text}", from.name)));
        reply(out, id, &format!("-> *{}* {text}", dest.name));
    }

    fn join(&mut self, id: ClientId, wanted: &str, out: &mut impl Outbox) {
        let wanted = wanted.strip_prefix('#').unwrap_or(wanted);
        if wanted.is_empty() {
            return reply(out, id, "*** error: usage: /join ROOM");
        }
        if let Err(why) = check_name(wanted) {
            return reply(out, id, &format!("*** error: invalid room name: {why}"));
        }
        let Some(client) = self.client(id) else {
            return;
        };
        let (old, slot, name) = (client.room, client.slot, client.name.clone());
        if *self.rooms[old].key == *wanted.to_ascii_lowercase() {
            let text = format!("*** error: you are already in {}", self.rooms[old].name);
            return reply(out, id, &text);
        }
        let text = format!("*** {name} left {}", self.rooms[old].name);
        self.announce(old, id, &text, out);
        self.remove_member(old, slot);
        let room = self.enter(id, wanted);
        let text = format!("*** {name} joined {}", self.rooms[room].name);
        self.announce(room, id, &text, out);
        reply(out, id, &format!("*** you joined {}", self.roster(room)));
    }

    /// Adds `id` to the room named `wanted` (created if new); returns its key.
    fn enter(&mut self, id: ClientId, wanted: &str) -> usize {
        let key = wanted.to_ascii_lowercase();
        let room = match self.room_keys.get(key.as_str()) {
            Some(&r) => r,
            None => {
                let r = self.rooms.insert(Room {
                    name: format!("#{wanted}").into(),
                    key: key.clone().into(),
                    members: Vec::new(),
                });
                self.room_keys.insert(key.into(), r);
                r
            }
        };
        let members = &mut self.rooms[room].members;
        if let Some(c) = self.clients[id].as_mut() {
            c.room = room;
            c.slot = members.len();
        }
        members.push(id);
        room
    }

    fn remove_member(&mut self, room: usize, slot: usize) {
        let members = &mut self.rooms[room].members;
        members.swap_remove(slot);
        if let Some(&moved) = members.get(slot)
            && let Some(c) = self.clients[moved].as_mut()
        {
            c.slot = slot;
        }
        if members.is_empty() {
            let gone = self.rooms.remove(room);
            self.room_keys.remove(&gone.key);
        }
    }

    /// "#lobby (3): alice, bob, guest-7"
    fn roster(&self, room: usize) -> String {
        let r = &self.rooms[room];
        let mut names: Vec<&Client> = r.members.iter().filter_map(|&m| self.client(m)).collect();
        names.sort_by(|a, b| a.key.cmp(&b.key));
        let names: Vec<&str> = names.iter().map(|c| &*c.name).collect();
        format!("{} ({}): {}", r.name, names.len(), names.join(", "))
    }

    /// Everyone in `room` but `from` gets `msg`.
    fn to_room(&self, room: usize, from: ClientId, msg: &Rc<Msg>, out: &mut impl Outbox) {
        for &member in &self.rooms[room].members {
            if member != from {
                out.send(member, msg);
            }
        }
    }

    /// A join/leave/nick notice: only in rooms small enough to afford it.
    /// `from` is counted as a member whether or not it still is one.
    fn announce(&self, room: usize, from: ClientId, text: &str, out: &mut impl Outbox) {
        let members = self.rooms[room].members.len();
        if members <= self.announce_max && members > 1 {
            self.to_room(room, from, &Msg::new(text), out);
        }
    }
}

fn reply(out: &mut impl Outbox, id: ClientId, text: &str) {
    out.send(id, &Msg::new(text));
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Names and rooms: 1 to 24 of letters, digits, '-', '_', '.'.
fn check_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_NAME {
        return Err(format!("at most {MAX_NAME} characters"));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{bad:?} is not allowed; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        got: Vec<(ClientId, String)>,
        closed: Vec<(ClientId, String)>,
    }

    impl Outbox for Rec {
        fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
            self.got.push((to, msg.text().to_string()));
        }
        fn close(&mut self, id: ClientId, reason: String) {
            self.closed.push((id, reason));
        }
    }

    impl Rec {
        fn take(&mut self) -> Vec<(ClientId, String)> {
            std::mem::take(&mut self.got)
        }
        fn to(&mut self, id: ClientId) -> Vec<String> {
            self.take()
                .into_iter()
                .filter(|(to, _)| *to == id)
                .map(|(_, t)| t)
                .collect()
        }
    }

    fn hub_with(n: usize) -> (Hub, Rec) {
        let mut hub = Hub::new(200);
        let mut rec = Rec::default();
        for id in 0..n {
            hub.connect(id, &mut rec);
        }
        rec.take();
        (hub, rec)
    }

    fn pairs(v: &[(ClientId, &str)]) -> Vec<(ClientId, String)> {
        v.iter().map(|(i, s)| (*i, s.to_string())).collect()
    }

    #[test]
    fn welcome_names_the_guest_and_the_crowd_and_others_hear_the_join() {
        let mut hub = Hub::new(200);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[(
                0,
                "*** welcome to chatd, guest-1! you are in #lobby with nobody else online; /help lists the commands"
            )])
        );
        hub.connect(5, &mut rec);
        let got = rec.take();
        assert_eq!(got[0].0, 5);
        assert!(got[0].1.contains("guest-2") && got[0].1.contains("1 other user online"));
        assert_eq!(got[1], (0, "*** guest-2 joined".to_string()));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_message_reaches_everyone_else_in_the_room_not_the_sender() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(1, "hello", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[(0, "<guest-2> hello"), (2, "<guest-2> hello")])
        );
    }

    #[test]
    fn double_slash_is_a_message_starting_with_one_slash() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "//shrug", &mut rec);
        assert_eq!(rec.take(), pairs(&[(1, "<guest-1> /shrug")]));
    }

    #[test]
    fn broadcast_shares_one_message() {
        struct Ptrs(Vec<*const Msg>);
        impl Outbox for Ptrs {
            fn send(&mut self, _: ClientId, msg: &Rc<Msg>) {
                self.0.push(Rc::as_ptr(msg));
            }
            fn close(&mut self, _: ClientId, _: String) {}
        }
        let (mut hub, _) = hub_with(10);
        let mut p = Ptrs(Vec::new());
        hub.line(0, "x", &mut p);
        assert_eq!(p.0.len(), 9);
        assert!(p.0.iter().all(|&q| q == p.0[0]));
    }

    #[test]
    fn nick_changes_name_confirms_and_tells_the_room() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/nick alice", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (0, "*** you are now alice"),
                (1, "*** guest-1 is now alice")
            ])
        );
        hub.line(0, "hi", &mut rec);
        assert_eq!(rec.take(), pairs(&[(1, "<alice> hi")]));
        assert_eq!(hub.name(0), Some("alice"));
    }

    #[test]
    fn nick_errors() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/nick alice", &mut rec);
        rec.take();
        for (cmd, want) in [
            ("/nick", "*** error: usage: /nick NAME"),
            ("/nick ALICE", "*** error: the name ALICE is taken"),
            (
                "/nick guest-9",
                "*** error: names beginning with guest- are kept for the server",
            ),
            (
                "/nick Guest-1",
                "*** error: names beginning with guest- are kept for the server",
            ),
            (
                "/nick a b",
                "*** error: invalid name: ' ' is not allowed; use letters, digits, '-', '_' and '.'",
            ),
            (
                "/nick abcdefghijklmnopqrstuvwxy",
                "*** error: invalid name: at most 24 characters",
            ),
            (
                "/nick bøb",
                "*** error: invalid name: 'ø' is not allowed; use letters, digits, '-', '_' and '.'",
            ),
        ] {
            hub.line(1, cmd, &mut rec);
            assert_eq!(rec.take(), pairs(&[(1, want)]), "{cmd}");
        }
        // 24 characters is fine, and so is every allowed character.
        hub.line(1, "/nick Ab9-_.defghijklmnopqrstu", &mut rec);
        assert_eq!(rec.to(1), vec!["*** you are now Ab9-_.defghijklmnopqrstu"]);
    }

    #[test]
    fn a_case_change_of_ones_own_name_is_allowed() {
        let (mut hub, mut rec) = hub_with(1);
        hub.line(0, "/nick alice", &mut rec);
        hub.line(0, "/nick Alice", &mut rec);
        assert_eq!(rec.to(0).last().unwrap(), "*** you are now Alice");
        hub.line(0, "/nick Alice", &mut rec);
        assert_eq!(rec.to(0), vec!["*** you are already Alice"]);
    }

    #[test]
    fn a_name_is_freed_by_a_nick_change_and_by_leaving() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(0, "/nick alice", &mut rec);
        hub.line(0, "/nick alicia", &mut rec);
        rec.take();
        hub.line(1, "/nick alice", &mut rec);
        assert_eq!(rec.to(1)[0], "*** you are now alice");
        hub.disconnect(1, None, &mut rec);
        rec.take();
        hub.line(2, "/nick alice", &mut rec);
        assert_eq!(rec.to(2), vec!["*** you are now alice"]);
    }

    #[test]
    fn first_of_two_nick_requests_wins() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/nick bob", &mut rec);
        hub.line(1, "/nick Bob", &mut rec);
        let got = rec.take();
        assert!(got.contains(&(0, "*** you are now bob".into())));
        assert!(got.contains(&(1, "*** error: the name Bob is taken".into())));
    }

    #[test]
    fn who_lists_the_room_sorted() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(2, "/nick Zed", &mut rec);
        hub.line(1, "/nick amy", &mut rec);
        rec.take();
        hub.line(0, "/WHO", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[(0, "*** #lobby (3): amy, guest-1, Zed")])
        );
    }

    #[test]
    fn msg_reaches_only_its_target() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(1, "/nick bob", &mut rec);
        hub.line(0, "/nick alice", &mut rec);
        rec.take();
        hub.line(0, "/msg BOB  psst, over here ", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (1, "*alice* psst, over here"),
                (0, "-> *bob* psst, over here")
            ])
        );
    }

    #[test]
    fn msg_errors() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/msg nobody hi", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: no user named nobody"]);
        hub.line(0, "/msg guest-2", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: usage: /msg NAME text"]);
        hub.line(0, "/msg", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: usage: /msg NAME text"]);
    }

    #[test]
    fn me_is_an_action_for_the_room() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/Me waves", &mut rec);
        assert_eq!(rec.take(), pairs(&[(1, "* guest-1 waves")]));
        hub.line(0, "/me", &mut rec);
        assert_eq!(rec.take(), pairs(&[(0, "*** error: usage: /me text")]));
    }

    #[test]
    fn join_moves_between_rooms_and_rooms_are_isolated() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(0, "/nick alice", &mut rec);
        rec.take();
        hub.line(0, "/join Games", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (1, "*** alice left #lobby"),
                (2, "*** alice left #lobby"),
                (0, "*** you joined #Games (1): alice"),
            ])
        );
        hub.line(1, "/join #games", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (2, "*** guest-2 left #lobby"),
                (0, "*** guest-2 joined #Games"),
                (1, "*** you joined #Games (2): alice, guest-2"),
            ])
        );
        hub.line(0, "in games", &mut rec);
        assert_eq!(rec.take(), pairs(&[(1, "<alice> in games")]));
        hub.line(2, "in lobby", &mut rec);
        assert_eq!(rec.take(), vec![], "nobody else is in the lobby");
        hub.line(1, "/rooms", &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[(1, "*** rooms (2): #Games (2), #lobby (1)")])
        );
    }

    #[test]
    fn join_errors() {
        let (mut hub, mut rec) = hub_with(1);
        hub.line(0, "/join #LOBBY", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: you are already in #lobby"]);
        hub.line(0, "/join", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: usage: /join ROOM"]);
        hub.line(0, "/join #", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: usage: /join ROOM"]);
        hub.line(0, "/join a/b", &mut rec);
        assert_eq!(
            rec.to(0),
            vec![
                "*** error: invalid room name: '/' is not allowed; use letters, digits, '-', '_' and '.'"
            ]
        );
    }

    #[test]
    fn an_empty_room_disappears_and_its_name_can_be_reused() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/join a", &mut rec);
        assert_eq!(hub.rooms(), 2);
        hub.disconnect(0, None, &mut rec);
        assert_eq!(hub.rooms(), 1);
        hub.line(1, "/join A", &mut rec);
        assert_eq!(rec.to(1).last().unwrap(), "*** you joined #A (1): guest-2");
        hub.line(1, "/join lobby", &mut rec);
        assert_eq!(hub.rooms(), 1);
    }

    #[test]
    fn leaving_tells_the_room_with_the_reason() {
        let (mut hub, mut rec) = hub_with(3);
        hub.disconnect(1, Some("too slow"), &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (0, "*** guest-2 left (too slow)"),
                (2, "*** guest-2 left (too slow)")
            ])
        );
        hub.disconnect(2, None, &mut rec);
        assert_eq!(rec.take(), pairs(&[(0, "*** guest-3 left")]));
        assert_eq!(hub.online(), 1);
        hub.disconnect(2, None, &mut rec);
        assert_eq!(hub.online(), 1, "a second disconnect is harmless");
    }

    #[test]
    fn quit_says_bye_and_asks_the_transport_to_close() {
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/quit gotta go", &mut rec);
        assert_eq!(rec.take(), pairs(&[(0, "*** bye")]));
        assert_eq!(rec.closed, vec![(0, "quit: gotta go".to_string())]);
        hub.line(1, "/QUIT", &mut rec);
        assert_eq!(rec.closed[1], (1, "quit".to_string()));
    }

    #[test]
    fn help_and_unknown_commands() {
        let (mut hub, mut rec) = hub_with(1);
        hub.line(0, "/help", &mut rec);
        let help = rec.to(0);
        for cmd in [
            "/nick", "/who", "/msg", "/me", "/join", "/rooms", "/quit", "/help",
        ] {
            assert!(help.iter().any(|l| l.contains(cmd)), "{cmd} in help");
        }
        assert!(help.iter().all(|l| l.starts_with("*** ")));
        hub.line(0, "/foo bar", &mut rec);
        assert_eq!(
            rec.to(0),
            vec!["*** error: unknown command /foo (try /help)"]
        );
        hub.line(0, "/", &mut rec);
        assert_eq!(rec.to(0), vec!["*** error: unknown command / (try /help)"]);
    }

    #[test]
    fn big_rooms_stop_announcing_joins_leaves_and_nicks() {
        let mut hub = Hub::new(3);
        let mut rec = Rec::default();
        for id in 0..3 {
            hub.connect(id, &mut rec);
        }
        rec.take();
        hub.connect(3, &mut rec);
        assert_eq!(rec.take().len(), 1, "4 > 3 members: only the welcome");
        hub.line(3, "/nick dan", &mut rec);
        assert_eq!(rec.take(), pairs(&[(3, "*** you are now dan")]));
        hub.disconnect(3, None, &mut rec);
        assert_eq!(rec.take(), vec![], "leaving a room of 4 is silent too");
        hub.disconnect(2, None, &mut rec);
        assert_eq!(rec.take().len(), 2, "a room of 3 announces");
        hub.line(0, "/who", &mut rec);
        assert_eq!(rec.to(0), vec!["*** #lobby (2): guest-1, guest-2"]);
    }

    #[test]
    fn guest_numbers_are_never_reused() {
        let (mut hub, mut rec) = hub_with(1);
        hub.disconnect(0, None, &mut rec);
        hub.connect(0, &mut rec);
        assert_eq!(hub.name(0), Some("guest-2"));
    }
}
