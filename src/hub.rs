//! The chat hub, pure: names, rooms and commands. A line in, deliveries out.
//!
//! The hub never touches a socket. Transports (line clients, WebSocket, and
//! the cluster link) call `connect`, `line` and `disconnect`, and the hub
//! answers through an [`Outbox`]: one shared [`Msg`] per broadcast, handed
//! to each recipient. Routing a message costs O(members of the room); every
//! lookup by name is a hash lookup.
//!
//! In cluster mode the hub also holds a mirror of the users on the other
//! instances (kept up to date by presence events from the cluster link), so
//! `/who`, `/rooms`, `/msg` and name checks see the whole cluster, while
//! each instance delivers lines only to its own local clients.
//!
//! Messages and actions are room history: on one server the hub numbers
//! and keeps them itself ([`History`]); in cluster mode, while the link is
//! up, Redis numbers and keeps them and the hub delivers them as they come
//! back ([`Hub::said`]), and history is asked of Redis ([`Hub::answer`]).
//! Clients with `/ids on` get a second shared buffer per broadcast, with
//! every line tagged with its id — never a copy per recipient.

use crate::cluster::Claim;
use crate::history::{self, History, Id, Since};
use crate::msg::Msg;
use slab::Slab;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

/// A connection as the transports know it (the reactor's slab key).
pub type ClientId = usize;

/// Where the hub's output goes. Implemented by the reactor over its
/// connections, and by recorders in tests and benches. The cluster methods
/// do nothing unless a cluster link is attached.
pub trait Outbox {
    /// Queue `msg` for `to`. Must not call back into the hub: a transport
    /// that needs to drop `to` marks it and tells the hub after the call.
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>);
    /// `id` asked to leave (`/quit`): flush what is queued for it, then
    /// close it and call [`Hub::disconnect`] with `reason`.
    fn close(&mut self, id: ClientId, reason: String);
    /// A line for the members of `room` on the other instances.
    fn publish(&mut self, _room: &str, _msg: &Rc<Msg>) {}
    /// Cluster mode: room lines (CRLF between) from local client `from`, to
    /// be numbered and kept by Redis (at most `keep` per room, for `ttl_ms`
    /// after the last); they come back through [`Hub::said`]. False when
    /// they cannot go now (link down, queue full).
    fn say(
        &mut self,
        _room: &str,
        _from: ClientId,
        _lines: &str,
        _keep: usize,
        _ttl_ms: u64,
    ) -> bool {
        false
    }
    /// Cluster mode: a room's history for `id` from Redis, the lines after
    /// `after` or the last ones, at most `count`; answered by
    /// [`Hub::answer`]. False when it cannot be asked now.
    fn history(
        &mut self,
        _id: ClientId,
        _room: &str,
        _asked: Asked,
        _after: Option<Id>,
        _count: usize,
    ) -> bool {
        false
    }
    /// A change to who is where, for the other instances' mirrors.
    fn presence(&mut self, _event: Presence) {}
    /// A line for one user on another instance.
    fn private(&mut self, _node: &str, _to: u64, _to_name: &str, _msg: &Rc<Msg>) {}
    /// This instance now has local members in `room` (true) or none (false).
    fn subscribe(&mut self, _room: &str, _on: bool) {}
    /// Reserve `name` cluster-wide for `id`; answered by [`Hub::claimed`].
    /// False when it cannot be asked now (the queue toward Redis is full).
    fn claim(&mut self, _id: ClientId, _name: &str) -> bool {
        true
    }
    /// Give up `name`, reserved for `id` by a claim made at `since`.
    fn release(&mut self, _name: &str, _id: ClientId, _since: u64) {}
    /// What `/stats` tells `id` about its own connection; None where the
    /// transport keeps no such figures (recorders in tests and benches).
    fn conn_stats(&self, _id: ClientId) -> Option<ConnStats> {
        None
    }
    /// The server-wide figures only the transport knows, for `/stats`.
    fn server_stats(&self) -> Option<ServerStats> {
        None
    }
}

/// One connection's figures for `/stats`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnStats {
    /// Bytes waiting in its output queue.
    pub queued: usize,
    /// Lines skipped for it since it connected (`--on-slow drop`).
    pub dropped: u64,
    pub connected: Duration,
}

/// The server's figures for `/stats` that the hub does not keep itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerStats {
    pub uptime: Duration,
    /// Lines received from clients per second, over the last minute (or
    /// since start, if that was less than a minute ago).
    pub lines_per_sec: f64,
}

/// Presence events exchanged by instances (room keys are lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A user is on `node` as `id`, named `name`, in room `room` (shown as
    /// `shown`). Sent when a user arrives and, for everyone, in a roster
    /// (answering `Hello` or `Who`); `round` is the sender's roster count.
    Here {
        node: Rc<str>,
        id: u64,
        name: String,
        room: String,
        shown: String,
        round: u64,
    },
    Gone {
        node: Rc<str>,
        id: u64,
    },
    Renamed {
        node: Rc<str>,
        id: u64,
        name: String,
    },
    Moved {
        node: Rc<str>,
        id: u64,
        room: String,
        shown: String,
    },
    /// `node` (re)joined the cluster: everyone re-announces their users.
    Hello {
        node: Rc<str>,
    },
    /// `node` is shutting down: its users are leaving now.
    Bye {
        node: Rc<str>,
    },
    /// `node` has announced all its users in roster `round`: those of its
    /// users announced only in earlier rounds left while we could not hear.
    End {
        node: Rc<str>,
        round: u64,
    },
    /// `node` is asked to announce all its users (it was declared lost and
    /// has a heartbeat again).
    Who {
        node: Rc<str>,
    },
}

/// Instances are named on the wire `ID~INCARNATION` (`~` cannot appear in a
/// node id), so an instance restarted under the same --node-id is a new
/// node, and the others can tell its old users are gone.
pub fn same_instance_name(a: &str, b: &str) -> bool {
    a.split('~').next() == b.split('~').next()
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
    "***   /stats            your queue, drops and time online; the server's load",
    "***   /history [N]      the last N lines said in your room (times in UTC)",
    "***   /history since ID the lines said after the one with that id",
    "***   /ids on|off       room lines carry their id, yours echoed (for clients)",
    "***   /quit [reason]    leave the chat",
    "***   /help             this list",
    "***   //text            send a message that begins with /",
];

pub const LINK_DOWN: &str = "*** cluster link down: messages reach this server only";
/// The most users of other instances the mirror holds (forged presence
/// messages must not grow it without end); past it, new ones are ignored.
pub const MAX_REMOTE: usize = 1 << 20;
/// The most instances remembered as lost (to notice when they are back).
pub const MAX_LOST: usize = 64;
pub const LINK_UP: &str = "*** cluster link restored";

/// Where a user is connected.
#[derive(Clone)]
enum Home {
    Local(ClientId),
    Remote(Rc<str>, u64),
}

struct Client {
    name: Box<str>,
    /// Lowercased name: the key in `Hub::names`.
    key: Box<str>,
    room: usize,
    /// Index of this client in its room's `members`, for O(1) removal.
    slot: usize,
    home: Home,
    /// Local users with a chosen name: when they claimed it (ms since the
    /// Unix epoch), the claim's identity in Redis. Remote users: the roster
    /// round that last announced them.
    since: u64,
    /// `/ids on`: room lines and history reach it tagged with their id,
    /// its own come back to it, and entering a room ends with the room's
    /// last id (see [`Hub::mark`]).
    ids: bool,
    /// Cluster mode: its last line could not go to Redis (it was told).
    refused: bool,
    /// Cluster mode: history answers awaited from Redis, and the room lines
    /// held back meanwhile so they come after the history, not before.
    wait: Option<Box<Wait>>,
}

/// What a client asked of the cluster's history (see [`Outbox::history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Entering a room: its last --history-on-join lines, then (with ids)
    /// where the client stands.
    Enter,
    /// `/ids on`: only where the client stands.
    Mark,
    /// `/history N`.
    Last(usize),
    /// `/history since ID`.
    Since(Id),
}

/// The most room lines held for a client while its history is fetched (an
/// answer comes within a round trip to Redis; a room that says more
/// meanwhile loses the oldest, and the client is told how many).
const MAX_HELD: usize = 1024;

#[derive(Default)]
struct Wait {
    pending: u32,
    /// (room key, first id, lines, the buffer).
    held: VecDeque<(Box<str>, Id, u64, Rc<Msg>)>,
    lost: u64,
    /// The ids the answers showed, per room: held lines among them are
    /// not sent again.
    covered: Vec<(Box<str>, Id, Id)>,
}

struct Room {
    /// As shown, with the leading '#' and the casing of whoever created it.
    name: Box<str>,
    key: Box<str>,
    /// Hub indices of everyone in the room, local and remote.
    members: Vec<usize>,
    /// How many of `members` are local: the cluster link subscribes to a
    /// room's channel only while this is non-zero.
    local: usize,
    /// The room's record in `Hub::history`.
    hist: usize,
    /// Cluster mode: the last id delivered here (see `said`).
    last_id: Option<Id>,
}

/// Cluster mode: who we are, whether the link is up, and name bookkeeping.
struct Cluster {
    node: Rc<str>,
    up: bool,
    /// Reserved ranges of guest numbers [next, end) from the shared counter.
    guests: VecDeque<(u64, u64)>,
    /// Fallback numbering before any range was ever reserved.
    fallback: u64,
    /// Clients waiting for a cluster-wide name reservation.
    pending: HashMap<ClientId, Box<str>>,
    /// How many rosters we have announced.
    round: u64,
    /// Instances declared lost, newest last, to re-learn if they come back.
    lost: VecDeque<Rc<str>>,
}

pub struct Hub {
    /// Everyone, local and remote; rooms and names refer to these indices.
    clients: Slab<Client>,
    /// ClientId (reactor key) -> index in `clients`.
    local: Vec<Option<usize>>,
    remote: HashMap<(Rc<str>, u64), usize>,
    names: HashMap<Box<str>, usize>,
    /// Further holders of a name already in `names`: only after a split,
    /// until the collision is resolved (or within one instance's mirror,
    /// a remote user whose instance has not yet seen our claim).
    dups: HashMap<Box<str>, Vec<usize>>,
    max_remote: usize,
    rooms: Slab<Room>,
    /// Sorted, so `/rooms` names its first entries without sorting them all.
    room_keys: BTreeMap<Box<str>, usize>,
    next_guest: u64,
    online: usize,
    announce_max: usize,
    batch_max: usize,
    /// --max-line, told in the welcome so a client (the web page) can refuse
    /// an over-long line before sending it rather than after.
    max_line: usize,
    cluster: Option<Cluster>,
    /// Chat lines passed on (messages, /me, /msg), for the metrics.
    relayed: u64,
    history: History,
    /// --history-on-join: lines replayed to a client entering a room.
    on_join: usize,
    /// The most bytes one history answer may take, so that it fits the
    /// client's queue (the reactor makes it a fraction of --sendq).
    reply_max: usize,
    /// Wall-clock time, ms since the Unix epoch, as of this turn of the
    /// loop (see [`Hub::tick`]): history times and epochs come from it.
    now_ms: u64,
}

/// `/who`, `/rooms` and the list in a join answer name at most this many
/// entries (the first in alphabetical order), then `… and K more`: one
/// answer costs the loop and the asker's queue a bounded amount (about 6 KiB
/// of text) however many rooms or members there are.
pub const LIST_MAX: usize = 200;

/// "a, b, c" for the first entries, and how many were left out.
fn listing(total: usize, shown: impl Iterator<Item = String>) -> String {
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

/// How many guest numbers the cluster link reserves at a time.
pub const GUEST_BLOCK: u64 = 100;

impl Hub {
    /// `announce_max`: rooms with more members than this do not announce
    /// joins, leaves and nick changes (they would cost O(N²) lines).
    pub fn new(announce_max: usize) -> Hub {
        Hub {
            clients: Slab::new(),
            local: Vec::new(),
            remote: HashMap::new(),
            names: HashMap::new(),
            dups: HashMap::new(),
            max_remote: MAX_REMOTE,
            rooms: Slab::new(),
            room_keys: BTreeMap::new(),
            next_guest: 1,
            online: 0,
            announce_max,
            batch_max: 16 * 1024,
            max_line: crate::config::DEFAULT_MAX_LINE as usize,
            cluster: None,
            relayed: 0,
            history: History::new(history::Limits::default()),
            on_join: 20,
            reply_max: 256 * 1024,
            now_ms: 0,
        }
    }

    /// History bounds (--history, --history-bytes, --history-ttl) and the
    /// lines replayed on entering a room (--history-on-join).
    pub fn with_history(mut self, limits: history::Limits, on_join: usize) -> Hub {
        self.history = History::new(limits);
        self.on_join = on_join;
        self
    }

    /// The most bytes one history answer may take.
    pub fn with_reply_max(mut self, bytes: usize) -> Hub {
        self.reply_max = bytes;
        self
    }

    /// The wall clock for this turn, ms since the Unix epoch; forgets the
    /// history of rooms empty for longer than --history-ttl.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.history.expire(now_ms);
    }

    /// History lines held, over all rooms.
    pub fn history_lines(&self) -> usize {
        self.history.lines()
    }

    /// History bytes held (charged as for --history-bytes).
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// Turns on cluster mode for this instance, named `node`. The link
    /// starts down; [`Hub::link_up`] says when it is not.
    pub fn with_cluster(mut self, node: &str) -> Hub {
        self.cluster = Some(Cluster {
            node: node.into(),
            up: false,
            guests: VecDeque::new(),
            fallback: 1,
            pending: HashMap::new(),
            round: 0,
            lost: VecDeque::new(),
        });
        self
    }

    /// The most remote users the mirror holds (default MAX_REMOTE).
    pub fn with_max_remote(mut self, n: usize) -> Hub {
        self.max_remote = n;
        self
    }

    /// Records that `i` holds name `key` (a second holder waits in `dups`).
    fn name_add(&mut self, key: &str, i: usize) {
        match self.names.get(key) {
            None => {
                self.names.insert(key.into(), i);
            }
            Some(&o) if o == i => {}
            Some(_) => self.dups.entry(key.into()).or_default().push(i),
        }
    }

    /// `i` no longer holds `key`; another holder, if any, now does.
    fn name_drop(&mut self, key: &str, i: usize) {
        if self.names.get(key) == Some(&i) {
            self.names.remove(key);
            if let Some(d) = self.dups.get_mut(key) {
                if let Some(next) = d.pop() {
                    self.names.insert(key.into(), next);
                }
                if d.is_empty() {
                    self.dups.remove(key);
                }
            }
        } else if let Some(d) = self.dups.get_mut(key) {
            d.retain(|&x| x != i);
            if d.is_empty() {
                self.dups.remove(key);
            }
        }
    }

    /// Local clients.
    pub fn online(&self) -> usize {
        self.online
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Chat lines relayed so far: messages, `/me` and `/msg`, not commands.
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    pub fn name(&self, id: ClientId) -> Option<&str> {
        self.idx(id).map(|i| &*self.clients[i].name)
    }

    fn idx(&self, id: ClientId) -> Option<usize> {
        self.local.get(id).copied().flatten()
    }

    /// The highest guest number handed out, so a shared counter that lost
    /// its state (a restarted Redis) can be moved past it.
    pub fn guests_used(&self) -> u64 {
        self.next_guest - 1
    }

    /// How many reserved guest numbers are left.
    pub fn guests_left(&self) -> u64 {
        self.cluster
            .as_ref()
            .map_or(u64::MAX, |c| c.guests.iter().map(|(a, b)| b - a).sum())
    }

    /// The cluster link reserved guest numbers [start, start + len).
    pub fn add_guests(&mut self, start: u64, len: u64) {
        if let Some(c) = self.cluster.as_mut() {
            c.guests.push_back((start, start + len));
        }
    }

    fn guest_name(&mut self) -> String {
        let Some(c) = self.cluster.as_mut() else {
            let n = self.next_guest;
            self.next_guest += 1;
            return format!("guest-{n}");
        };
        while let Some((next, end)) = c.guests.front_mut() {
            if next < end {
                let n = *next;
                *next += 1;
                self.next_guest = self.next_guest.max(n + 1);
                return format!("guest-{n}");
            }
            c.guests.pop_front();
        }
        // Never reached the shared counter: the node id keeps it unique.
        let n = c.fallback;
        c.fallback += 1;
        let id = c.node.split('~').next().unwrap_or_default();
        format!("guest-{id}-{n}")
    }

    /// A new connection: it gets a guest name, lands in the lobby and is
    /// welcomed; the lobby hears of it.
    pub fn connect(&mut self, id: ClientId, out: &mut impl Outbox) {
        if self.idx(id).is_some() {
            return;
        }
        let name = self.guest_name();
        let key: Box<str> = name.clone().into();
        let i = self.clients.insert(Client {
            name: name.clone().into(),
            key: key.clone(),
            room: usize::MAX,
            slot: 0,
            home: Home::Local(id),
            since: 0,
            ids: false,
            refused: false,
            wait: None,
        });
        self.name_add(&key, i);
        if self.local.len() <= id {
            self.local.resize(id + 1, None);
        }
        self.local[id] = Some(i);
        self.online += 1;
        let room = self.enter(i, LOBBY, LOBBY, out);
        let others = self.clients.len() - 1;
        let who = match others {
            0 => "nobody else online".to_string(),
            1 => "1 other user online".to_string(),
            n => format!("{n} other users online"),
        };
        let welcome = format!(
            "*** welcome to chatd, {name}! you are in {} with {who}; /help lists the commands; lines up to {} bytes",
            self.rooms[room].name, self.max_line
        );
        out.send(id, &Msg::new(&welcome));
        if self.cluster.as_ref().is_some_and(|c| !c.up) {
            reply(out, id, LINK_DOWN);
        }
        self.replay(id, i, room, out);
        self.here(i, out);
        self.announce(room, i, &format!("*** {name} joined"), out);
    }

    /// The connection is gone; its room hears why, and its name is free.
    pub fn disconnect(&mut self, id: ClientId, reason: Option<&str>, out: &mut impl Outbox) {
        let Some(i) = self.idx(id) else { return };
        self.local[id] = None;
        self.online -= 1;
        if let Some(c) = self.cluster.as_mut() {
            c.pending.remove(&id);
            let node = c.node.clone();
            out.presence(Presence::Gone {
                node,
                id: id as u64,
            });
            let c = &self.clients[i];
            if !c.key.starts_with("guest-") {
                out.release(&c.key, id, c.since);
            }
        }
        self.drop_client(i, reason, true, out);
    }

    /// Removes a client (local or remote) and tells its room, locally and,
    /// when `publish`, on the other instances too.
    fn drop_client(
        &mut self,
        i: usize,
        reason: Option<&str>,
        publish: bool,
        out: &mut impl Outbox,
    ) {
        let c = &self.clients[i];
        let text = match reason {
            Some(r) => format!("*** {} left ({r})", c.name),
            None => format!("*** {} left", c.name),
        };
        let room = c.room;
        if publish {
            self.announce(room, i, &text, out);
        } else if self.announces(room) {
            self.to_room(room, Some(i), &Msg::new(&text), out);
        }
        let c = self.clients.remove(i);
        self.name_drop(&c.key, i);
        self.remove_member(room, c.slot, matches!(c.home, Home::Local(_)), out);
    }

    /// One line from `id`, already sanitised and known to be non-blank.
    pub fn line(&mut self, id: ClientId, text: &str, out: &mut impl Outbox) {
        let Some(i) = self.idx(id) else { return };
        let client = &self.clients[i];
        if let Some(rest) = text.strip_prefix("//") {
            let line = format!("<{}> /{rest}", client.name);
            self.say(client.room, Some(i), line, out);
            self.relayed += 1;
        } else if let Some(command) = text.strip_prefix('/') {
            self.command(id, i, command, out);
        } else {
            let line = format!("<{}> {text}", client.name);
            self.say(client.room, Some(i), line, out);
            self.relayed += 1;
        }
    }

    /// Several lines from `id`, in the order they came. Consecutive plain
    /// messages go out as one batch: one shared buffer, one queue entry and
    /// one iovec per recipient instead of one per line. A batch never
    /// passes `batch_max` bytes, so it always fits a recipient's queue.
    pub fn lines(&mut self, id: ClientId, texts: &[String], out: &mut impl Outbox) {
        let mut run = String::new();
        for text in texts {
            let Some(i) = self.idx(id) else { return };
            if !text.starts_with('/') || text.starts_with("//") {
                if !run.is_empty() && run.len() + text.len() + 32 > self.batch_max {
                    self.flush_run(i, &mut run, out);
                }
                if !run.is_empty() {
                    run.push_str("\r\n");
                }
                let body = text.strip_prefix('/').unwrap_or(text);
                let c = &self.clients[i];
                run.push('<');
                run.push_str(&c.name);
                run.push_str("> ");
                run.push_str(body);
                self.relayed += 1;
                continue;
            }
            self.flush_run(i, &mut run, out);
            self.line(id, text, out);
            // After /quit nothing more from this client is taken.
            if split_word(&text[1..]).0.eq_ignore_ascii_case("quit") {
                return;
            }
        }
        if let Some(i) = self.idx(id) {
            self.flush_run(i, &mut run, out);
        }
    }

    fn flush_run(&mut self, i: usize, run: &mut String, out: &mut impl Outbox) {
        if !run.is_empty() {
            self.say(self.clients[i].room, Some(i), std::mem::take(run), out);
        }
    }

    /// The longest line a client may send (--max-line), for the welcome.
    pub fn with_max_line(mut self, bytes: usize) -> Hub {
        self.max_line = bytes;
        self
    }

    /// The most bytes of messages relayed as one batch (default 16 KiB);
    /// the reactor keeps it well under --sendq.
    pub fn with_batch_max(mut self, bytes: usize) -> Hub {
        self.batch_max = bytes;
        self
    }

    fn command(&mut self, id: ClientId, i: usize, line: &str, out: &mut impl Outbox) {
        let (cmd, rest) = split_word(line);
        let rest = rest.trim();
        match cmd.to_ascii_lowercase().as_str() {
            "nick" => self.nick(id, i, rest, out),
            "who" => {
                let room = self.clients[i].room;
                out.send(id, &Msg::new(&format!("*** {}", self.roster(room))));
            }
            "msg" => self.private(id, i, rest, out),
            "me" if rest.is_empty() => reply(out, id, "*** error: usage: /me text"),
            "me" => {
                let c = &self.clients[i];
                let line = format!("* {} {rest}", c.name);
                self.say(c.room, Some(i), line, out);
                self.relayed += 1;
            }
            "history" => self.history_command(id, i, rest, out),
            "ids" => {
                let on = match rest.to_ascii_lowercase().as_str() {
                    "on" => true,
                    "off" => false,
                    "" => self.clients[i].ids,
                    _ => return reply(out, id, "*** error: usage: /ids on|off"),
                };
                self.clients[i].ids = on;
                let room = self.clients[i].room;
                if on {
                    if !self.ask(i, room, Asked::Mark, None, 0, out) {
                        self.mark(id, room, out);
                    }
                } else {
                    reply(out, id, "*** ids off");
                }
            }
            "join" => self.join(id, i, rest, out),
            "rooms" => {
                let shown = self.room_keys.values().map(|&r| {
                    let r = &self.rooms[r];
                    format!("{} ({})", r.name, r.members.len())
                });
                let total = self.rooms.len();
                let text = format!("*** rooms ({total}): {}", listing(total, shown));
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
            "stats" => {
                let line = stats_line(
                    self.clients.len(),
                    self.rooms.len(),
                    out.conn_stats(id),
                    out.server_stats(),
                );
                reply(out, id, &line);
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

    fn nick(&mut self, id: ClientId, i: usize, wanted: &str, out: &mut impl Outbox) {
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
            Some(&owner) if owner != i => {
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            _ => {}
        }
        if *self.clients[i].name == *wanted {
            return reply(out, id, &format!("*** you are already {wanted}"));
        }
        if let Some(c) = self.cluster.as_mut()
            && *self.clients[i].key != *key
        {
            // Another instance may be granting the same name right now:
            // the shared store decides, and `claimed` finishes the change.
            if !c.up {
                return reply(
                    out,
                    id,
                    "*** error: names cannot change while the cluster link is down",
                );
            }
            if c.pending.contains_key(&id) {
                return reply(out, id, "*** error: a name change is already under way");
            }
            c.pending.insert(id, wanted.into());
            if !out.claim(id, &key) {
                c.pending.remove(&id);
                return reply(
                    out,
                    id,
                    "*** error: the cluster is busy; try /nick again in a moment",
                );
            }
            return;
        }
        // Only the casing changes (or there is no cluster): the claim, and
        // so its time, stay as they were.
        let since = self.clients[i].since;
        self.rename(id, i, wanted, since, None, out);
    }

    /// The cluster's answer to `Outbox::claim`.
    pub fn claimed(&mut self, id: ClientId, name: &str, answer: Claim, out: &mut impl Outbox) {
        let Some(wanted) = self.cluster.as_mut().and_then(|c| c.pending.remove(&id)) else {
            // The client left meanwhile: give the name back.
            if let Claim::Granted(since) = answer {
                out.release(name, id, since);
            }
            return;
        };
        let Some(i) = self.idx(id) else { return };
        let taken = self
            .names
            .get(wanted.to_ascii_lowercase().as_str())
            .is_some_and(|&o| o != i);
        let since = match answer {
            Claim::Granted(since) if taken => {
                out.release(name, id, since);
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            Claim::Granted(since) => since,
            Claim::Taken => {
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            Claim::Failed => {
                return reply(
                    out,
                    id,
                    "*** error: the cluster could not reserve that name; try /nick again later",
                );
            }
        };
        let c = &self.clients[i];
        if !c.key.starts_with("guest-") {
            out.release(&c.key, id, c.since);
        }
        self.rename(id, i, &wanted, since, None, out);
    }

    /// Another instance holds the name of local user `id` by an earlier
    /// claim (both were granted while the cluster was split): ours gives it
    /// up for a fresh guest name, and is told why.
    pub fn name_lost(&mut self, id: ClientId, name: &str, out: &mut impl Outbox) {
        let Some(i) = self.idx(id) else { return };
        if *self.clients[i].key != *name {
            return;
        }
        let guest = self.guest_name();
        let why = format!(
            "*** your name {} was also taken on another server while the cluster was split; you are now {guest}",
            self.clients[i].name
        );
        self.rename(id, i, &guest, 0, Some(&why), out);
    }

    /// Gives local client `i` the name `wanted`, claimed at `since`, and
    /// tells it so (`notice`, or the usual line) and its room.
    fn rename(
        &mut self,
        id: ClientId,
        i: usize,
        wanted: &str,
        since: u64,
        notice: Option<&str>,
        out: &mut impl Outbox,
    ) {
        let client = &mut self.clients[i];
        let old = std::mem::replace(&mut client.name, wanted.into());
        let old_key = std::mem::replace(&mut client.key, wanted.to_ascii_lowercase().into());
        client.since = since;
        let room = client.room;
        self.name_drop(&old_key, i);
        let key = self.clients[i].key.clone();
        self.name_add(&key, i);
        match notice {
            Some(text) => reply(out, id, text),
            None => reply(out, id, &format!("*** you are now {wanted}")),
        }
        if let Some(c) = &self.cluster {
            out.presence(Presence::Renamed {
                node: c.node.clone(),
                id: id as u64,
                name: wanted.to_string(),
            });
        }
        self.announce(room, i, &format!("*** {old} is now {wanted}"), out);
    }

    fn private(&mut self, id: ClientId, i: usize, rest: &str, out: &mut impl Outbox) {
        let (target, text) = split_word(rest);
        let text = text.trim();
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

    fn join(&mut self, id: ClientId, i: usize, wanted: &str, out: &mut impl Outbox) {
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
                id: id as u64,
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
    fn enter(&mut self, i: usize, key: &str, shown: &str, out: &mut impl Outbox) -> usize {
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

    fn remove_member(&mut self, room: usize, slot: usize, local: bool, out: &mut impl Outbox) {
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
    fn roster(&self, room: usize) -> String {
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
    fn to_room(&self, room: usize, from: Option<usize>, msg: &Rc<Msg>, out: &mut impl Outbox) {
        for &member in &self.rooms[room].members {
            if Some(member) != from
                && let Home::Local(c) = self.clients[member].home
            {
                out.send(c, msg);
            }
        }
    }

    /// A line from a local user for the whole room, on every instance.
    fn broadcast(&self, room: usize, from: usize, msg: &Rc<Msg>, out: &mut impl Outbox) {
        self.to_room(room, Some(from), msg, out);
        if self.cluster.is_some() {
            out.publish(&self.rooms[room].key, msg);
        }
    }

    /// Messages and actions (`lines`: one, or several joined by CRLF) for
    /// everyone in `room`: kept in the history, numbered, and sent as one
    /// shared buffer to the members without ids, and one more, built only
    /// if someone needs it, with every line tagged to the members with ids
    /// (the sender included). `from`: the local sender, or None for lines
    /// from another instance (which are not published again).
    fn say(&mut self, room: usize, from: Option<usize>, lines: String, out: &mut impl Outbox) {
        if let Some(i) = from
            && self.cluster.as_ref().is_some_and(|c| c.up)
            && let Home::Local(cid) = self.clients[i].home
        {
            // Redis numbers the lines, keeps them, and hands them back to
            // every instance, this one included: see `said`.
            let limits = self.history.limits();
            let key = &self.rooms[room].key;
            let sent = out.say(key, cid, &lines, limits.per_room, limits.ttl_ms);
            // Told once per run of refused lines, not once per line.
            let c = &mut self.clients[i];
            if !sent && !c.refused {
                reply(
                    out,
                    cid,
                    "*** error: the cluster is too busy; your lines are not sent until this error stops",
                );
            }
            c.refused = !sent;
            return;
        }
        let hist = self.rooms[room].hist;
        let mut first = None;
        for line in lines.split("\r\n") {
            let id = self.history.push(hist, self.now_ms, line);
            first.get_or_insert(id);
        }
        let first = first.unwrap_or(Id { epoch: 0, n: 0 });
        let plain = Msg::new(&lines);
        let mut tagged: Option<Rc<Msg>> = None;
        for &member in &self.rooms[room].members {
            let c = &self.clients[member];
            let Home::Local(to) = c.home else { continue };
            if c.ids {
                let msg = tagged.get_or_insert_with(|| Msg::new(&tag_lines(&lines, first)));
                out.send(to, msg);
            } else if Some(member) != from {
                out.send(to, &plain);
            }
        }
        if from.is_some() && self.cluster.is_some() {
            out.publish(&self.rooms[room].key, &plain);
        }
    }

    /// The last --history-on-join lines of `room`, for client `i` that just
    /// entered it; with ids, then the room's last id.
    fn replay(&mut self, id: ClientId, i: usize, room: usize, out: &mut impl Outbox) {
        let ids = self.clients[i].ids;
        if (self.on_join > 0 || ids) && self.ask(i, room, Asked::Enter, None, self.on_join, out) {
            return;
        }
        let kept = self.history.kept(self.rooms[room].hist).len();
        if self.on_join > 0 && kept > 0 {
            let from = kept.saturating_sub(self.on_join);
            let text = self.history_answer(room, from, ids, Ask::Last);
            out.send(id, &Msg::new(&text));
        }
        if ids {
            self.mark(id, room, out);
        }
    }

    /// `*** ids on: #lobby at EPOCH-N`: the id of the last line said in the
    /// room so far (N = 0 before the first). A client with ids has been
    /// shown, or was not there for, everything up to it, and every room
    /// line after it reaches it tagged: so it always knows where to resume.
    fn mark(&self, id: ClientId, room: usize, out: &mut impl Outbox) {
        let r = &self.rooms[room];
        let head = self.history.head(r.hist).unwrap_or(Id { epoch: 0, n: 1 });
        let last = Id {
            epoch: head.epoch,
            n: head.n - 1,
        };
        reply(out, id, &format!("*** ids on: {} at {last}", r.name));
    }

    /// `/history`, `/history N`, `/history since ID`.
    fn history_command(&mut self, id: ClientId, i: usize, rest: &str, out: &mut impl Outbox) {
        const USAGE: &str = "*** error: usage: /history [N] or /history since ID";
        let (room, ids) = (self.clients[i].room, self.clients[i].ids);
        let r = &self.rooms[room];
        let (word, arg) = split_word(rest);
        // Ok(n): the last n lines; Err(id): the lines after id.
        let ask: Result<usize, Id> = if rest.is_empty() {
            Ok(if self.on_join > 0 { self.on_join } else { 20 })
        } else if word.eq_ignore_ascii_case("since") {
            match arg.trim().parse::<Id>() {
                Ok(since) => Err(since),
                Err(()) => return reply(out, id, USAGE),
            }
        } else {
            match rest.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => return reply(out, id, USAGE),
            }
        };
        if self.history.limits().per_room == 0 {
            let text = format!("*** history of {}: off on this server", r.name);
            return reply(out, id, &text);
        }
        let keep = self.history.limits().per_room;
        let asked = match ask {
            Ok(n) => self.ask(i, room, Asked::Last(n), None, n.min(keep), out),
            Err(since) => self.ask(i, room, Asked::Since(since), Some(since), keep, out),
        };
        if asked {
            return;
        }
        let r = &self.rooms[room];
        match &self.cluster {
            Some(c) if c.up => {
                return reply(
                    out,
                    id,
                    "*** error: the cluster is busy; try /history again in a moment",
                );
            }
            // The cluster's history is in Redis, out of reach now.
            Some(_) => reply(
                out,
                id,
                "*** the cluster link is down: this is only what was said on this server meanwhile",
            ),
            None => {}
        }
        let kept = self.history.kept(r.hist).len();
        let text = match ask {
            Ok(n) => self.history_answer(room, kept.saturating_sub(n), ids, Ask::Last),
            Err(since) => match self.history.since(r.hist, since) {
                Since::Kept { from, evicted } => {
                    self.history_answer(room, from, ids, Ask::Resume(since, evicted))
                }
                Since::Lost => self.history_answer(room, 0, ids, Ask::Lost(since)),
            },
        };
        out.send(id, &Msg::new(&text));
    }

    /// One history answer from this instance's own history: the kept
    /// lines of `room` from index `from` on.
    fn history_answer(&self, room: usize, from: usize, ids: bool, ask: Ask) -> String {
        let r = &self.rooms[room];
        let kept = self.history.kept(r.hist);
        let epoch = self.history.head(r.hist).map_or(0, |h| h.epoch);
        let lines: Vec<&history::Line> = kept.range(from.min(kept.len())..).collect();
        render_answer(&r.name, epoch, &lines, ids, ask, self.reply_max).0
    }

    /// Cluster mode, link up: asks Redis for `room`'s history for client
    /// `i` and holds its room lines until the answer; false (nothing asked)
    /// otherwise, and the caller answers from this instance's own history.
    fn ask(
        &mut self,
        i: usize,
        room: usize,
        asked: Asked,
        after: Option<Id>,
        count: usize,
        out: &mut impl Outbox,
    ) -> bool {
        let (true, Home::Local(cid)) = (
            self.cluster.as_ref().is_some_and(|c| c.up),
            &self.clients[i].home,
        ) else {
            return false;
        };
        if !out.history(*cid, &self.rooms[room].key, asked, after, count) {
            return false;
        }
        self.clients[i].wait.get_or_insert_default().pending += 1;
        true
    }

    /// Room lines numbered by Redis (see `say`), for the local members of
    /// `room`: one plain buffer and, if anyone has ids, one tagged buffer.
    /// `from`: our local client who said them, who gets them back only if
    /// it has ids.
    pub fn said(
        &mut self,
        room: &str,
        first: Id,
        from: Option<ClientId>,
        text: &str,
        out: &mut impl Outbox,
    ) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        let sender = from.and_then(|c| self.idx(c));
        let count = text.split("\r\n").count() as u64;
        self.rooms[r].last_id = Some(Id {
            epoch: first.epoch,
            n: first.n + count.saturating_sub(1),
        });
        let plain = Msg::new(text);
        let mut tagged: Option<Rc<Msg>> = None;
        for &member in &self.rooms[r].members {
            let c = &mut self.clients[member];
            let Home::Local(to) = c.home else { continue };
            let msg = if c.ids {
                tagged.get_or_insert_with(|| Msg::new(&tag_lines(text, first)))
            } else if Some(member) != sender {
                &plain
            } else {
                continue;
            };
            match c.wait.as_mut() {
                Some(w) => {
                    if w.held.len() >= MAX_HELD
                        && let Some((.., n, _)) = w.held.pop_front()
                    {
                        w.lost += n;
                    }
                    w.held
                        .push_back((self.rooms[r].key.clone(), first, count, msg.clone()));
                }
                None => out.send(to, msg),
            }
        }
    }

    /// Redis's answer to [`Outbox::history`] for local client `id`: the
    /// room's epoch and last N, and its lines (oldest first).
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        id: ClientId,
        room: &str,
        asked: Asked,
        epoch: u64,
        last: u64,
        lines: Vec<history::Line>,
        out: &mut impl Outbox,
    ) {
        let Some(i) = self.idx(id) else { return };
        let here = self.room_keys.get(room).copied();
        if let Some(r) = here.filter(|&r| r == self.clients[i].room) {
            let (name, ids) = (&self.rooms[r].name, self.clients[i].ids);
            let refs: Vec<&history::Line> = lines.iter().collect();
            let render = |ask| render_answer(name, epoch, &refs, ids, ask, self.reply_max);
            let answer = match asked {
                Asked::Enter if !refs.is_empty() => Some(render(Ask::Last)),
                Asked::Enter | Asked::Mark => None,
                Asked::Last(_) => Some(render(Ask::Last)),
                // 0-0: where a client stands in a room that had no lines yet.
                Asked::Since(since)
                    if epoch != 0 && (since.epoch == epoch || since == Id { epoch: 0, n: 0 }) =>
                {
                    let after = if since.epoch == epoch { since.n } else { 0 };
                    let total = last.saturating_sub(after);
                    let evicted = total.saturating_sub(refs.len() as u64);
                    Some(render(Ask::Resume(since, evicted)))
                }
                Asked::Since(since) if epoch == 0 && since.n == 0 => Some((
                    format!("*** history of {name}: nothing new since {since}"),
                    0,
                )),
                Asked::Since(since) => Some(render(Ask::Lost(since))),
            };
            // The ids shown: the newest `shown` of the lines.
            let covered = match &answer {
                Some((_, shown)) if *shown > 0 => Some((
                    Id {
                        epoch,
                        n: refs[refs.len() - shown].n,
                    },
                    Id {
                        epoch,
                        n: refs[refs.len() - 1].n,
                    },
                )),
                _ => None,
            };
            if let Some((text, _)) = answer {
                out.send(id, &Msg::new(&text));
            }
            let key = self.rooms[r].key.clone();
            if ids && matches!(asked, Asked::Enter | Asked::Mark) {
                // Where the client stands: after what it was shown, before
                // what is held for it or still on its way here (Redis may
                // have numbered lines this instance has not delivered yet).
                let mark = match covered {
                    Some((_, hi)) => hi,
                    None => {
                        let mut n = last;
                        let held = self.clients[i].wait.as_ref().and_then(|w| {
                            w.held
                                .iter()
                                .find(|(k, f, ..)| *k == key && f.epoch == epoch)
                                .map(|(_, f, ..)| f.n)
                        });
                        if let Some(first) = held {
                            n = n.min(first.saturating_sub(1));
                        }
                        if let Some(done) = self.rooms[r].last_id.filter(|l| l.epoch == epoch) {
                            n = n.min(done.n);
                        }
                        Id { epoch, n }
                    }
                };
                reply(out, id, &format!("*** ids on: {name} at {mark}"));
            }
            if let (Some(w), Some((lo, hi))) = (self.clients[i].wait.as_mut(), covered) {
                w.covered.push((key, lo, hi));
            }
        }
        let done = self.clients[i].wait.as_mut().is_none_or(|w| {
            w.pending = w.pending.saturating_sub(1);
            w.pending == 0
        });
        if done {
            self.release_held(i, out);
        }
    }

    /// Sends what was held for client `i` while its history was fetched:
    /// only lines of the room it is in, and not those the answer had.
    fn release_held(&mut self, i: usize, out: &mut impl Outbox) {
        let (Some(w), Home::Local(id)) = (self.clients[i].wait.take(), &self.clients[i].home)
        else {
            return;
        };
        let id = *id;
        if w.lost > 0 {
            let text = format!(
                "*** {} missed while your history was fetched",
                plural(w.lost, "line") + if w.lost == 1 { " was" } else { " were" }
            );
            reply(out, id, &text);
        }
        let room = &self.rooms[self.clients[i].room].key;
        let shown = |key: &str, n: Id| {
            w.covered.iter().any(|(k, lo, hi)| {
                **k == *key && lo.epoch == n.epoch && (lo.n..=hi.n).contains(&n.n)
            })
        };
        for (key, first, count, msg) in &w.held {
            if key != room {
                continue;
            }
            let id_of = |k: u64| Id {
                epoch: first.epoch,
                n: first.n + k,
            };
            let dups = (0..*count).filter(|&k| shown(key, id_of(k))).count() as u64;
            if dups == 0 {
                out.send(id, msg);
            } else if dups < *count {
                let rest: Vec<&str> = msg
                    .text()
                    .split("\r\n")
                    .enumerate()
                    .filter(|&(k, _)| !shown(key, id_of(k as u64)))
                    .map(|(_, l)| l)
                    .collect();
                out.send(id, &Msg::new(&rest.join("\r\n")));
            }
        }
    }

    /// Redis refused local client `id`'s line (`sure`), or the link went
    /// down before Redis confirmed it: the client is told.
    pub fn not_said(&self, id: ClientId, sure: bool, out: &mut impl Outbox) {
        if self.idx(id).is_some() {
            let text = if sure {
                "*** error: the cluster could not take that line; it was not sent"
            } else {
                "*** error: the cluster link went down before your last lines were confirmed; they may not have reached everyone"
            };
            reply(out, id, text);
        }
    }

    fn announces(&self, room: usize) -> bool {
        let members = self.rooms[room].members.len();
        members <= self.announce_max && members > 1
    }

    /// A join/leave/nick notice: only in rooms small enough to afford it.
    /// `from` is counted as a member whether or not it still is one.
    fn announce(&self, room: usize, from: usize, text: &str, out: &mut impl Outbox) {
        if self.announces(room) {
            self.broadcast(room, from, &Msg::new(text), out);
        }
    }

    /// Tells the other instances that local client `i` is here.
    fn here(&self, i: usize, out: &mut impl Outbox) {
        let (Some(cl), Home::Local(id)) = (&self.cluster, &self.clients[i].home) else {
            return;
        };
        let c = &self.clients[i];
        let r = &self.rooms[c.room];
        out.presence(Presence::Here {
            node: cl.node.clone(),
            id: *id as u64,
            name: c.name.to_string(),
            room: r.key.to_string(),
            shown: r.name[1..].to_string(),
            round: cl.round,
        });
    }

    /// Announces every local user to the other instances, as a new roster
    /// round closed by `End`: whoever is not in it has left.
    fn roster_all(&mut self, out: &mut impl Outbox) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        cl.round += 1;
        let (node, round) = (cl.node.clone(), cl.round);
        for i in self.local.iter().flatten().copied().collect::<Vec<_>>() {
            self.here(i, out);
        }
        out.presence(Presence::End { node, round });
    }

    // ---- Cluster input: what the link heard from the other instances ----

    /// A room line (or a batch of them) published by another instance:
    /// messages and actions are kept and numbered here as local ones are,
    /// notices are only passed on.
    pub fn remote_line(&mut self, room: &str, text: &str, out: &mut impl Outbox) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        let mut run = String::new();
        for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
            if line.is_empty() {
                continue;
            }
            if is_room_line(line) {
                if !run.is_empty() {
                    run.push_str("\r\n");
                }
                run.push_str(line);
                continue;
            }
            if !run.is_empty() {
                self.say(r, None, std::mem::take(&mut run), out);
            }
            self.to_room(r, None, &Msg::new(line), out);
        }
        if !run.is_empty() {
            self.say(r, None, run, out);
        }
    }

    /// A private line for local client `to`, if it is still `to_name`.
    pub fn remote_private(&self, to: ClientId, to_name: &str, text: &str, out: &mut impl Outbox) {
        if let Some(i) = self.idx(to)
            && *self.clients[i].key == *to_name
        {
            out.send(to, &Msg::new(text));
        }
    }

    /// Another instance's presence event updates the mirror. Notices for
    /// people arriving or leaving travel as room lines, not from here.
    pub fn remote_presence(&mut self, event: Presence, out: &mut impl Outbox) {
        let Some(cl) = &self.cluster else { return };
        let me = cl.node.clone();
        match event {
            Presence::Hello { node } if node != me => {
                // A restart under the same name: the old one's users are gone.
                for old in self.remote_nodes() {
                    if old != node && same_instance_name(&old, &node) {
                        self.node_lost(&old, "server lost", out);
                    }
                }
                self.roster_all(out);
            }
            Presence::Hello { .. } => {}
            Presence::Bye { node } => self.node_lost(&node, "server shutting down", out),
            Presence::Here {
                node,
                id,
                name,
                room,
                shown,
                round,
            } if node != me => {
                let known = self.remote.get(&(node.clone(), id)).copied();
                if let Some(i) = known {
                    self.drop_client(i, None, false, &mut Silent(out));
                } else if self.remote.len() >= self.max_remote {
                    return;
                }
                let key: Box<str> = name.to_ascii_lowercase().into();
                let i = self.clients.insert(Client {
                    name: name.into(),
                    key: key.clone(),
                    room: usize::MAX,
                    slot: 0,
                    home: Home::Remote(node.clone(), id),
                    since: round,
                    ids: false,
                    refused: false,
                    wait: None,
                });
                self.name_add(&key, i);
                let back = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.lost.contains(&node));
                self.remote.insert((node, id), i);
                let r = self.enter(i, &room, &shown, out);
                if back && known.is_none() && self.announces(r) {
                    // Declared lost, heard from again: its rooms saw it
                    // leave, so they see it come back.
                    let text = format!("*** {} is back", self.clients[i].name);
                    self.to_room(r, Some(i), &Msg::new(&text), out);
                }
            }
            Presence::Gone { node, id } => {
                if let Some(i) = self.remote.remove(&(node, id)) {
                    self.drop_client(i, None, false, &mut Silent(out));
                }
            }
            Presence::Renamed { node, id, name } => {
                if let Some(&i) = self.remote.get(&(node, id)) {
                    let c = &mut self.clients[i];
                    let old = std::mem::replace(&mut c.key, name.to_ascii_lowercase().into());
                    c.name = name.into();
                    self.name_drop(&old, i);
                    let key = self.clients[i].key.clone();
                    self.name_add(&key, i);
                }
            }
            Presence::End { node, round } if node != me => {
                // Users of `node` it did not announce in this round left
                // while we could not hear it: their rooms are told now.
                let gone: Vec<(u64, usize)> = self
                    .remote
                    .iter()
                    .filter(|((n, _), i)| *n == node && self.clients[**i].since < round)
                    .map(|((_, id), i)| (*id, *i))
                    .collect();
                for (id, i) in gone {
                    self.remote.remove(&(node.clone(), id));
                    self.drop_client(i, None, false, out);
                }
                if let Some(c) = self.cluster.as_mut() {
                    c.lost.retain(|n| *n != node);
                }
            }
            Presence::Who { node } => {
                if node == me {
                    self.roster_all(out);
                }
            }
            Presence::End { .. } => {}
            Presence::Moved {
                node,
                id,
                room,
                shown,
            } => {
                if let Some(&i) = self.remote.get(&(node, id)) {
                    let (old, slot) = (self.clients[i].room, self.clients[i].slot);
                    self.remove_member(old, slot, false, out);
                    self.enter(i, &room, &shown, out);
                }
            }
            Presence::Here { .. } => {}
        }
    }

    /// Another instance stopped answering (or said goodbye): its users are
    /// gone, and the rooms they were in are told so, with `reason`.
    pub fn node_lost(&mut self, node: &str, reason: &str, out: &mut impl Outbox) {
        let gone: Vec<usize> = self
            .remote
            .iter()
            .filter(|((n, _), _)| &**n == node)
            .map(|(_, &i)| i)
            .collect();
        self.remote.retain(|(n, _), _| &**n != node);
        for i in gone {
            self.drop_client(i, Some(reason), false, out);
        }
    }

    /// Nodes that have users in the mirror (to check they are alive).
    pub fn remote_nodes(&self) -> Vec<Rc<str>> {
        let mut nodes: Vec<Rc<str>> = self.remote.keys().map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Another instance's heartbeat lapsed: its users are gone ("server
    /// lost"), and it is remembered, to be re-learned should it beat again
    /// (it may only have been frozen or cut off). One that said goodbye or
    /// was replaced by a new incarnation is not coming back.
    pub fn node_silent(&mut self, node: &str, out: &mut impl Outbox) {
        if let Some(c) = self.cluster.as_mut()
            && !c.lost.iter().any(|n| &**n == node)
        {
            if c.lost.len() >= MAX_LOST {
                c.lost.pop_front();
            }
            c.lost.push_back(node.into());
        }
        self.node_lost(node, "server lost", out);
    }

    /// Instances declared lost (to notice when their heartbeat is back).
    pub fn lost_nodes(&self) -> Vec<Rc<str>> {
        self.cluster
            .as_ref()
            .map_or_else(Vec::new, |c| c.lost.iter().cloned().collect())
    }

    /// A lost instance has a heartbeat again: ask it for all its users.
    pub fn node_back(&mut self, node: &str, out: &mut impl Outbox) {
        if let Some(c) = &self.cluster
            && c.lost.iter().any(|n| &**n == node)
        {
            out.presence(Presence::Who { node: node.into() });
        }
    }

    /// Local users' reserved names, to renew them: (id, name, claimed at).
    pub fn claimed_names(&self) -> Vec<(ClientId, &str, u64)> {
        self.local
            .iter()
            .enumerate()
            .filter_map(|(id, i)| i.map(|i| (id, &self.clients[i])))
            .filter(|(_, c)| !c.key.starts_with("guest-"))
            .map(|(id, c)| (id, &*c.key, c.since))
            .collect()
    }

    /// Local rooms (for re-subscribing after a reconnect).
    pub fn local_rooms(&self) -> Vec<&str> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.local > 0)
            .map(|(_, r)| &*r.key)
            .collect()
    }

    /// This instance is shutting down: the others drop its users at once
    /// instead of waiting for its heartbeat to expire.
    pub fn shutdown(&mut self, out: &mut impl Outbox) {
        if let Some(c) = &self.cluster
            && c.up
        {
            out.presence(Presence::Bye {
                node: c.node.clone(),
            });
        }
    }

    /// The link to the other instances is up again (or for the first time).
    pub fn link_up(&mut self, out: &mut impl Outbox) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.up {
            return;
        }
        c.up = true;
        let node = c.node.clone();
        for id in self.local_ids() {
            reply(out, id, LINK_UP);
        }
        out.presence(Presence::Hello { node });
        self.roster_all(out);
    }

    /// The link is down: the other instances' users are out of reach, not
    /// gone. They stay in the mirror, so their names are not given away,
    /// until their instance re-announces itself without them (`End`) or is
    /// declared lost.
    pub fn link_down(&mut self, out: &mut impl Outbox) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was_up = std::mem::replace(&mut c.up, false);
        let waiting: Vec<ClientId> = c.pending.drain().map(|(id, _)| id).collect();
        // History answers awaited from Redis will not come.
        let held: Vec<usize> = self
            .local
            .iter()
            .flatten()
            .copied()
            .filter(|&i| self.clients[i].wait.is_some())
            .collect();
        for i in held {
            if let Home::Local(id) = self.clients[i].home {
                reply(
                    out,
                    id,
                    "*** the cluster link went down: the history asked for cannot be shown now",
                );
            }
            self.release_held(i, out);
        }
        for id in waiting {
            reply(
                out,
                id,
                "*** error: the cluster link went down; try /nick again later",
            );
        }
        if was_up {
            for id in self.local_ids() {
                reply(out, id, LINK_DOWN);
            }
        }
    }

    fn local_ids(&self) -> Vec<ClientId> {
        self.local
            .iter()
            .enumerate()
            .filter_map(|(id, i)| i.map(|_| id))
            .collect()
    }
}

/// Passes everything on but room notices' deliveries: for mirror changes
/// that must not make a sound.
struct Silent<'a, O: Outbox>(&'a mut O);

impl<O: Outbox> Outbox for Silent<'_, O> {
    fn send(&mut self, _: ClientId, _: &Rc<Msg>) {}
    fn close(&mut self, id: ClientId, reason: String) {
        self.0.close(id, reason)
    }
    fn subscribe(&mut self, room: &str, on: bool) {
        self.0.subscribe(room, on)
    }
}

/// What a history answer answers.
#[derive(Clone, Copy)]
enum Ask {
    /// The last lines: a join replay or `/history N`.
    Last,
    /// `/history since ID` with the same record; how many lines after the
    /// id were evicted before the first kept one.
    Resume(Id, u64),
    /// `/history since ID` from a record that is gone.
    Lost(Id),
}

/// Messages and actions, which history keeps; not notices (`*** `) nor
/// private messages (which never reach a room).
fn is_room_line(line: &str) -> bool {
    line.starts_with('<') || (line.starts_with("* ") && !line.starts_with("*** "))
}

/// One history answer, as one buffer: `lines` (oldest first), the newest
/// of them as far as `reply_max` bytes allow, framed by a header and an end
/// line, and preceded by what was missed.
fn render_answer(
    name: &str,
    epoch: u64,
    kept: &[&history::Line],
    ids: bool,
    ask: Ask,
    reply_max: usize,
) -> (String, usize) {
    let mut lines = Vec::new();
    let mut bytes = 0;
    for l in kept.iter().rev() {
        let line = history_line(l, epoch, ids);
        bytes += line.len() + 2;
        if bytes > reply_max {
            break;
        }
        lines.push(line);
    }
    let left_out = (kept.len() - lines.len()) as u64;
    let shown = lines.len();
    let mut text = String::new();
    match ask {
        Ask::Resume(_, evicted) if left_out + evicted > 0 => text.push_str(&format!(
            "*** {} missed; showing the last {shown}\r\n",
            plural(left_out + evicted, "line")
                + if left_out + evicted == 1 {
                    " was"
                } else {
                    " were"
                },
        )),
        Ask::Lost(since) => text.push_str(&format!(
            "*** the history since {since} is gone (the server restarted, or the room was empty for too long); showing the last {shown}\r\n"
        )),
        _ if left_out > 0 => text.push_str(&format!(
            "*** {} left out: too long to send at once\r\n",
            plural(left_out, "older line")
        )),
        _ => {}
    }
    if shown == 0 {
        match ask {
            Ask::Resume(since, _) if left_out == 0 => {
                text.push_str(&format!("*** history of {name}: nothing new since {since}"))
            }
            _ => text.push_str(&format!("*** history of {name}: empty")),
        }
        return (text, 0);
    }
    let since = match ask {
        Ask::Resume(since, _) | Ask::Lost(since) => format!(" since {since}"),
        Ask::Last => String::new(),
    };
    text.push_str(&format!(
        "*** history of {name}{since} ({}, times UTC):",
        plural(shown as u64, "line")
    ));
    for line in lines.iter().rev() {
        text.push_str("\r\n");
        text.push_str(line);
    }
    text.push_str("\r\n*** end of history");
    (text, shown)
}

/// `@id=EPOCH-N <alice> hi` for each line of a batch numbered from `first`.
fn tag_lines(lines: &str, first: Id) -> String {
    let mut out = String::with_capacity(lines.len() + 32);
    for (k, line) in lines.split("\r\n").enumerate() {
        if k > 0 {
            out.push_str("\r\n");
        }
        let id = Id {
            epoch: first.epoch,
            n: first.n + k as u64,
        };
        out.push_str(&format!("@id={id} {line}"));
    }
    out
}

/// `[12:03] <alice> hi`, or with ids `@id=EPOCH-N;ms=UNIXMS [12:03] <alice> hi`;
/// the time is UTC.
fn history_line(l: &history::Line, epoch: u64, ids: bool) -> String {
    let secs = l.ms / 1000 % 86400;
    let (h, m) = (secs / 3600, secs / 60 % 60);
    if ids {
        format!("@id={epoch}-{};ms={} [{h:02}:{m:02}] {}", l.n, l.ms, l.text)
    } else {
        format!("[{h:02}:{m:02}] {}", l.text)
    }
}

fn reply(out: &mut impl Outbox, id: ClientId, text: &str) {
    out.send(id, &Msg::new(text));
}

/// The `/stats` answer: "*** you: 0 bytes queued, 0 lines dropped,
/// connected 5m 3s; server: 3 users, 2 rooms, up 2h 10m, 0.4 lines/s over
/// the last minute". Parts the transport cannot tell are left out.
pub fn stats_line(
    users: usize,
    rooms: usize,
    you: Option<ConnStats>,
    server: Option<ServerStats>,
) -> String {
    let mut line = String::from("*** ");
    if let Some(you) = you {
        line.push_str(&format!(
            "you: {}, {}, connected {}; ",
            plural(you.queued as u64, "byte") + " queued",
            plural(you.dropped, "line") + " dropped",
            human_duration(you.connected),
        ));
    }
    line.push_str(&format!(
        "server: {}, {}",
        plural(users as u64, "user"),
        plural(rooms as u64, "room")
    ));
    if let Some(server) = server {
        line.push_str(&format!(
            ", up {}, {:.1} lines/s over the last minute",
            human_duration(server.uptime),
            server.lines_per_sec
        ));
    }
    line
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
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

fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Names and rooms: 1 to 24 of letters, digits, '-', '_', '.'.
pub fn check_name(s: &str) -> Result<(), String> {
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
                "*** welcome to chatd, guest-1! you are in #lobby with nobody else online; /help lists the commands; lines up to 8192 bytes"
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
    fn who_and_rooms_name_at_most_list_max_entries() {
        let n = LIST_MAX + 5;
        let (mut hub, mut rec) = hub_with(n);
        hub.line(1, "/who", &mut rec);
        let who = rec.to(1).pop().unwrap();
        let want = format!("*** #lobby ({n}): ");
        assert!(who.starts_with(&want), "{who}");
        assert!(who.ends_with(", … and 5 more"), "{who}");
        assert_eq!(who.matches(", ").count(), LIST_MAX);
        // The first in alphabetical order: guest-1, guest-10, guest-100, ...
        assert!(who[want.len()..].starts_with("guest-1, guest-10, guest-100, "));
        for i in 0..n {
            hub.line(i, &format!("/join r{i:03}"), &mut rec);
        }
        rec.take();
        hub.line(1, "/rooms", &mut rec);
        let rooms = rec.to(1).pop().unwrap();
        assert!(rooms.starts_with(&format!("*** rooms ({n}): #r000 (1), #r001 (1), ")));
        let last = LIST_MAX - 1;
        assert!(
            rooms.ends_with(&format!("#r{last} (1), … and 5 more")),
            "{rooms}"
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
            "/nick", "/who", "/msg", "/me", "/join", "/rooms", "/stats", "/quit", "/help",
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
    fn stats_line_formats_every_part() {
        let you = ConnStats {
            queued: 1,
            dropped: 12,
            connected: Duration::from_secs(5 * 60 + 3),
        };
        let server = ServerStats {
            uptime: Duration::from_secs(2 * 3600 + 10 * 60 + 59),
            lines_per_sec: 0.4166,
        };
        assert_eq!(
            stats_line(3, 1, Some(you), Some(server)),
            "*** you: 1 byte queued, 12 lines dropped, connected 5m 3s; \
             server: 3 users, 1 room, up 2h 10m, 0.4 lines/s over the last minute"
        );
        assert_eq!(stats_line(1, 2, None, None), "*** server: 1 user, 2 rooms");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        let d = |s| human_duration(Duration::from_secs(s));
        assert_eq!(d(0), "0s");
        assert_eq!(d(59), "59s");
        assert_eq!(d(60), "1m 0s");
        assert_eq!(d(3599), "59m 59s");
        assert_eq!(d(3600), "1h 0m");
        assert_eq!(d(86399), "23h 59m");
        assert_eq!(d(3 * 86400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn stats_asks_the_transport_about_the_caller() {
        struct WithStats(Rec);
        impl Outbox for WithStats {
            fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
                self.0.send(to, msg);
            }
            fn close(&mut self, id: ClientId, reason: String) {
                self.0.close(id, reason);
            }
            fn conn_stats(&self, id: ClientId) -> Option<ConnStats> {
                Some(ConnStats {
                    queued: id * 100,
                    dropped: 7,
                    connected: Duration::from_secs(61),
                })
            }
            fn server_stats(&self) -> Option<ServerStats> {
                Some(ServerStats {
                    uptime: Duration::from_secs(5),
                    lines_per_sec: 2.0,
                })
            }
        }
        let (mut hub, rec) = hub_with(3);
        let mut out = WithStats(rec);
        hub.line(2, "/join games", &mut out);
        out.0.take();
        hub.line(2, "/STATS", &mut out);
        assert_eq!(
            out.0.take(),
            pairs(&[(
                2,
                "*** you: 200 bytes queued, 7 lines dropped, connected 1m 1s; \
                 server: 3 users, 2 rooms, up 5s, 2.0 lines/s over the last minute"
            )])
        );
        // The recorder keeps no figures: only the hub's own are shown.
        let (mut hub, mut rec) = hub_with(2);
        hub.line(0, "/stats", &mut rec);
        assert_eq!(rec.take(), pairs(&[(0, "*** server: 2 users, 1 room")]));
    }

    #[test]
    fn relayed_counts_chat_lines_not_commands() {
        let (mut hub, mut rec) = hub_with(3);
        hub.line(0, "hello", &mut rec);
        hub.line(0, "//slash", &mut rec);
        hub.line(0, "/me waves", &mut rec);
        hub.line(0, "/msg guest-2 psst", &mut rec);
        assert_eq!(hub.relayed(), 4);
        hub.line(0, "/who", &mut rec);
        hub.line(0, "/msg nobody hi", &mut rec);
        hub.line(0, "/me", &mut rec);
        hub.line(0, "/stats", &mut rec);
        assert_eq!(hub.relayed(), 4);
    }

    #[test]
    fn guest_numbers_are_never_reused() {
        let (mut hub, mut rec) = hub_with(1);
        hub.disconnect(0, None, &mut rec);
        hub.connect(0, &mut rec);
        assert_eq!(hub.name(0), Some("guest-2"));
    }

    #[test]
    fn a_burst_of_messages_is_one_shared_batch_and_commands_keep_their_place() {
        let (mut hub, mut rec) = hub_with(3);
        let texts: Vec<String> = ["one", "//two", "/nick al", "three", "/quit bye", "lost"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        hub.lines(0, &texts, &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[
                (1, "<guest-1> one\r\n<guest-1> /two"),
                (2, "<guest-1> one\r\n<guest-1> /two"),
                (0, "*** you are now al"),
                (1, "*** guest-1 is now al"),
                (2, "*** guest-1 is now al"),
                (1, "<al> three"),
                (2, "<al> three"),
                (0, "*** bye"),
            ])
        );
        assert_eq!(rec.closed, vec![(0, "quit: bye".to_string())]);
    }

    #[test]
    fn batches_stay_under_their_bound() {
        let mut hub = Hub::new(200).with_batch_max(100);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.connect(1, &mut rec);
        rec.take();
        let texts: Vec<String> = (0..10).map(|i| format!("{i}{}", "x".repeat(30))).collect();
        hub.lines(0, &texts, &mut rec);
        let got = rec.to(1);
        assert!(
            got.len() > 1 && got.iter().all(|m| m.len() + 2 <= 100),
            "{got:?}"
        );
        let joined: Vec<String> = got
            .iter()
            .flat_map(|m| m.split("\r\n"))
            .map(String::from)
            .collect();
        let want: Vec<String> = texts.iter().map(|t| format!("<guest-1> {t}")).collect();
        assert_eq!(joined, want, "every line, in order");
    }

    /// 2026-12-01 12:03:00 UTC, in ms.
    const NOON: u64 = 1_796_126_580_000;

    fn history_hub(per_room: usize, on_join: usize) -> Hub {
        let limits = history::Limits {
            per_room,
            ..history::Limits::default()
        };
        let mut hub = Hub::new(200).with_history(limits, on_join);
        hub.tick(NOON);
        hub
    }

    #[test]
    fn joining_shows_the_last_lines_with_their_time_between_markers() {
        let mut hub = history_hub(100, 2);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.line(0, "/nick alice", &mut rec);
        hub.line(0, "one", &mut rec);
        hub.tick(NOON + 61_000);
        hub.line(0, "/me waves", &mut rec);
        hub.line(0, "*** not a notice, a message", &mut rec);
        rec.take();
        hub.connect(1, &mut rec);
        let got = rec.to(1);
        assert!(got[0].starts_with("*** welcome"), "{got:?}");
        assert_eq!(
            got[1],
            "*** history of #lobby (2 lines, times UTC):\r\n\
             [12:04] * alice waves\r\n\
             [12:04] <alice> *** not a notice, a message\r\n\
             *** end of history"
        );
        assert_eq!(got.len(), 2);
        // Entering another room replays that room's lines.
        hub.line(0, "/join games", &mut rec);
        hub.line(0, "in games", &mut rec);
        rec.take();
        hub.line(1, "/join games", &mut rec);
        let got = rec.to(1);
        assert_eq!(got[0], "*** you joined #games (2): alice, guest-2");
        assert_eq!(
            got[1],
            "*** history of #games (1 line, times UTC):\r\n[12:04] <alice> in games\r\n*** end of history"
        );
    }

    #[test]
    fn only_messages_and_actions_are_kept_never_private_lines_or_notices() {
        let mut hub = history_hub(100, 20);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.connect(1, &mut rec);
        hub.line(0, "/msg guest-2 secret", &mut rec);
        hub.line(1, "/nick bob", &mut rec);
        hub.line(0, "/who", &mut rec);
        hub.line(0, "//slash", &mut rec);
        hub.disconnect(1, None, &mut rec);
        assert_eq!(hub.history_lines(), 1);
        rec.take();
        hub.connect(2, &mut rec);
        let got = rec.to(2).join("\n");
        assert!(!got.contains("secret") && !got.contains("bob"), "{got}");
        assert!(got.contains("[12:03] <guest-1> /slash"), "{got}");
    }

    #[test]
    fn history_n_shows_at_most_n_and_at_most_what_is_kept() {
        let mut hub = history_hub(5, 0);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        rec.take();
        let texts: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
        hub.lines(0, &texts, &mut rec);
        hub.connect(1, &mut rec);
        assert_eq!(rec.to(1).len(), 1, "--history-on-join 0: no replay");
        let count = |rec: &mut Rec| {
            let got = rec.to(1);
            assert_eq!(got.len(), 1, "one buffer: {got:?}");
            got[0]
                .lines()
                .filter(|l| l.starts_with("[12:03] <guest-1> m"))
                .count()
        };
        hub.line(1, "/history 3", &mut rec);
        assert_eq!(count(&mut rec), 3);
        hub.line(1, "/history 1000", &mut rec);
        assert_eq!(count(&mut rec), 5, "--history 5 is all there is");
        hub.line(1, "/history", &mut rec);
        assert_eq!(count(&mut rec), 5, "the default is 20");
        for bad in [
            "/history 0",
            "/history -1",
            "/history x",
            "/history since",
            "/history since 5",
        ] {
            hub.line(1, bad, &mut rec);
            assert_eq!(
                rec.to(1),
                ["*** error: usage: /history [N] or /history since ID"],
                "{bad}"
            );
        }
        // An answer never passes reply_max: the oldest lines are left out.
        let mut hub = history_hub(5, 0).with_reply_max(3 * 22);
        hub.connect(0, &mut rec);
        hub.lines(0, &texts, &mut rec);
        rec.take();
        hub.line(0, "/history 5", &mut rec);
        let got = rec.to(0);
        assert!(got[0].starts_with("*** 2 older lines left out: too long to send at once\r\n*** history of #lobby (3 lines"), "{got:?}");
        assert!(
            got[0].ends_with("<guest-1> m8\r\n*** end of history"),
            "{got:?}"
        );
        let mut hub = history_hub(0, 20);
        hub.connect(0, &mut rec);
        hub.line(0, "hi", &mut rec);
        rec.take();
        hub.line(0, "/history", &mut rec);
        assert_eq!(rec.to(0), ["*** history of #lobby: off on this server"]);
    }

    #[test]
    fn with_ids_lines_carry_them_and_ones_own_come_back_one_buffer_per_variant() {
        struct Ptrs(Vec<(ClientId, *const Msg, String)>);
        impl Outbox for Ptrs {
            fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
                self.0.push((to, Rc::as_ptr(msg), msg.text().to_string()));
            }
            fn close(&mut self, _: ClientId, _: String) {}
        }
        let mut hub = history_hub(100, 20);
        let mut p = Ptrs(Vec::new());
        for id in 0..4 {
            hub.connect(id, &mut p);
        }
        hub.line(0, "/ids on", &mut p);
        hub.line(2, "/IDS on", &mut p);
        let epoch = hub.history.head(0).map(|h| h.epoch).unwrap();
        let mark = format!("*** ids on: #lobby at {epoch}-0");
        assert_eq!(p.0.pop().map(|x| x.2), Some(mark), "where it stands");
        p.0.clear();
        let texts = vec!["a".to_string(), "b".to_string()];
        hub.lines(0, &texts, &mut p);
        let tagged = format!("@id={epoch}-1 <guest-1> a\r\n@id={epoch}-2 <guest-1> b");
        let got: Vec<(ClientId, &str)> = p.0.iter().map(|(t, _, s)| (*t, s.as_str())).collect();
        assert_eq!(
            got,
            [
                (0, tagged.as_str()),
                (1, "<guest-1> a\r\n<guest-1> b"),
                (2, tagged.as_str()),
                (3, "<guest-1> a\r\n<guest-1> b"),
            ],
            "the sender with ids gets its own lines back"
        );
        assert_eq!(p.0[0].1, p.0[2].1, "one tagged buffer");
        assert_eq!(p.0[1].1, p.0[3].1, "one plain buffer");
        p.0.clear();
        // Without ids the sender still gets nothing back, and notices are
        // never tagged.
        hub.line(1, "/me x", &mut p);
        hub.line(2, "/ids off", &mut p);
        hub.line(1, "/nick bob", &mut p);
        let got: Vec<(ClientId, String)> = p.0.drain(..).map(|(t, _, s)| (t, s)).collect();
        assert_eq!(
            got,
            pairs(&[
                (0, &format!("@id={epoch}-3 * guest-2 x")),
                (2, &format!("@id={epoch}-3 * guest-2 x")),
                (3, "* guest-2 x"),
                (2, "*** ids off"),
                (1, "*** you are now bob"),
                (0, "*** guest-2 is now bob"),
                (2, "*** guest-2 is now bob"),
                (3, "*** guest-2 is now bob"),
            ])
        );
    }

    #[test]
    fn with_ids_history_is_tagged_with_its_time_and_entering_a_room_says_where_it_stands() {
        let mut hub = history_hub(100, 20);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.line(0, "/join games", &mut rec);
        hub.line(0, "hi", &mut rec);
        hub.connect(1, &mut rec);
        hub.line(1, "/ids on", &mut rec);
        rec.take();
        hub.line(1, "/join games", &mut rec);
        let epoch = hub
            .history
            .head(hub.rooms[hub.room_keys["games"]].hist)
            .unwrap()
            .epoch;
        let block = format!(
            "*** history of #games (1 line, times UTC):\r\n\
             @id={epoch}-1;ms={NOON} [12:03] <guest-1> hi\r\n*** end of history"
        );
        let mark = format!("*** ids on: #games at {epoch}-1");
        assert_eq!(
            rec.to(1),
            ["*** you joined #games (2): guest-1, guest-2", &block, &mark]
        );
        hub.line(1, "/history", &mut rec);
        assert_eq!(rec.to(1), [block]);
        hub.line(1, "/ids", &mut rec);
        assert_eq!(rec.to(1), [mark]);
        hub.line(1, "/ids maybe", &mut rec);
        assert_eq!(rec.to(1), ["*** error: usage: /ids on|off"]);
    }

    #[test]
    fn since_resumes_after_an_id_and_says_what_was_missed() {
        let mut hub = history_hub(3, 20);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.connect(1, &mut rec);
        let epoch = hub.history.head(0).unwrap().epoch;
        let texts: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
        hub.lines(0, &texts, &mut rec);
        rec.take();
        let ask = |hub: &mut Hub, rec: &mut Rec, since: String| {
            hub.line(1, &format!("/history since {since}"), rec);
            rec.to(1).join("\r\n")
        };
        let got = ask(&mut hub, &mut rec, format!("{epoch}-3"));
        assert_eq!(
            got,
            format!(
                "*** history of #lobby since {epoch}-3 (2 lines, times UTC):\r\n\
                 [12:03] <guest-1> m4\r\n[12:03] <guest-1> m5\r\n*** end of history"
            )
        );
        // Kept: m3 m4 m5; m1 and m2 are gone.
        let got = ask(&mut hub, &mut rec, format!("{epoch}-0"));
        assert!(
            got.starts_with(&format!(
                "*** 2 lines were missed; showing the last 3\r\n\
                 *** history of #lobby since {epoch}-0 (3 lines"
            )),
            "{got}"
        );
        let got = ask(&mut hub, &mut rec, format!("{epoch}-1"));
        assert!(
            got.starts_with("*** 1 line was missed; showing the last 3\r\n"),
            "{got}"
        );
        let got = ask(&mut hub, &mut rec, format!("{epoch}-5"));
        assert_eq!(
            got,
            format!("*** history of #lobby: nothing new since {epoch}-5")
        );
        let got = ask(&mut hub, &mut rec, format!("{}-5", epoch - 1));
        assert!(
            got.starts_with(&format!("*** the history since {}-5 is gone (the server restarted, or the room was empty for too long); showing the last 3\r\n", epoch - 1)),
            "{got}"
        );
    }

    #[test]
    fn an_empty_room_keeps_its_history_for_the_ttl() {
        let limits = history::Limits {
            per_room: 10,
            bytes: 1 << 20,
            ttl_ms: 60_000,
        };
        let mut hub = Hub::new(200).with_history(limits, 20);
        hub.tick(NOON);
        let mut rec = Rec::default();
        hub.connect(0, &mut rec);
        hub.line(0, "hello?", &mut rec);
        hub.disconnect(0, None, &mut rec);
        assert_eq!(hub.rooms(), 0);
        hub.tick(NOON + 59_999);
        hub.connect(1, &mut rec);
        assert!(rec.to(1).join("\n").contains("[12:03] <guest-1> hello?"));
        hub.disconnect(1, None, &mut rec);
        hub.tick(NOON + 200_000);
        assert_eq!(hub.history_lines(), 0);
        hub.connect(2, &mut rec);
        assert_eq!(rec.to(2).len(), 1, "only the welcome");
    }

    /// Two instances joined by an in-memory stand-in for Redis: what one
    /// hub publishes reaches the other as the cluster link would deliver it.
    mod cluster {
        use super::*;
        use std::collections::HashSet;

        #[derive(Default)]
        struct Bus {
            got: Vec<(ClientId, String)>,
            room_lines: Vec<(String, String)>,
            /// Lines to be numbered, as Redis would (SAY_LUA).
            said: Vec<(String, ClientId, String)>,
            presence: Vec<Presence>,
            privates: Vec<(String, u64, String, String)>,
            claims: Vec<(ClientId, String)>,
            released: Vec<(String, ClientId)>,
            subscribed: HashSet<String>,
            /// Answer claims with "busy" (the queue toward Redis is full).
            busy: bool,
        }

        impl Outbox for Bus {
            fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
                self.got.push((to, msg.text().to_string()));
            }
            fn close(&mut self, _: ClientId, _: String) {}
            fn publish(&mut self, room: &str, msg: &Rc<Msg>) {
                self.room_lines.push((room.into(), msg.text().into()));
            }
            fn say(&mut self, room: &str, from: ClientId, lines: &str, _: usize, _: u64) -> bool {
                self.said.push((room.into(), from, lines.into()));
                true
            }
            fn presence(&mut self, event: Presence) {
                self.presence.push(event);
            }
            fn private(&mut self, node: &str, to: u64, to_name: &str, msg: &Rc<Msg>) {
                self.privates
                    .push((node.into(), to, to_name.into(), msg.text().into()));
            }
            fn subscribe(&mut self, room: &str, on: bool) {
                if on {
                    self.subscribed.insert(room.into());
                } else {
                    self.subscribed.remove(room);
                }
            }
            fn claim(&mut self, id: ClientId, name: &str) -> bool {
                if !self.busy {
                    self.claims.push((id, name.into()));
                }
                !self.busy
            }
            fn release(&mut self, name: &str, id: ClientId, _since: u64) {
                self.released.push((name.into(), id));
            }
        }

        struct Net {
            hubs: [Hub; 2],
            bus: [Bus; 2],
            names: HashMap<String, (usize, ClientId)>,
            /// Each room's last N, as Redis keeps it.
            numbers: HashMap<String, u64>,
        }

        impl Net {
            fn new() -> Net {
                let mut net = Net {
                    hubs: [
                        Hub::new(200).with_cluster("a"),
                        Hub::new(200).with_cluster("b"),
                    ],
                    bus: [Bus::default(), Bus::default()],
                    names: HashMap::new(),
                    numbers: HashMap::new(),
                };
                net.hubs[0].add_guests(1, 100);
                net.hubs[1].add_guests(101, 100);
                for h in 0..2 {
                    net.hubs[h].link_up(&mut net.bus[h]);
                }
                net.pump();
                net
            }

            /// Delivers everything published, as Redis would, until quiet.
            fn pump(&mut self) {
                for _ in 0..10 {
                    let mut quiet = true;
                    for from in 0..2 {
                        let to = 1 - from;
                        let b = &mut self.bus[from];
                        let said = std::mem::take(&mut b.said);
                        let lines = std::mem::take(&mut b.room_lines);
                        let presence = std::mem::take(&mut b.presence);
                        let privates = std::mem::take(&mut b.privates);
                        let claims = std::mem::take(&mut b.claims);
                        for (name, id) in std::mem::take(&mut b.released) {
                            // Only the holder's own claim is given back.
                            if self.names.get(&name) == Some(&(from, id)) {
                                self.names.remove(&name);
                            }
                        }
                        quiet &= said.is_empty()
                            && lines.is_empty()
                            && presence.is_empty()
                            && privates.is_empty()
                            && claims.is_empty();
                        for (room, cid, text) in said {
                            let n = self.numbers.entry(room.clone()).or_default();
                            let first = Id {
                                epoch: 7,
                                n: *n + 1,
                            };
                            *n += text.split("\r\n").count() as u64;
                            for (h, who) in [(from, Some(cid)), (to, None)] {
                                if self.bus[h].subscribed.contains(&room) {
                                    self.hubs[h].said(&room, first, who, &text, &mut self.bus[h]);
                                }
                            }
                        }
                        for (room, text) in lines {
                            if self.bus[to].subscribed.contains(&room) {
                                self.hubs[to].remote_line(&room, &text, &mut self.bus[to]);
                            }
                        }
                        for p in presence {
                            self.hubs[to].remote_presence(p, &mut self.bus[to]);
                        }
                        for (_, id, name, text) in privates {
                            self.hubs[to].remote_private(
                                id as usize,
                                &name,
                                &text,
                                &mut self.bus[to],
                            );
                        }
                        for (id, name) in claims {
                            let ok = !self.names.contains_key(&name);
                            if ok {
                                self.names.insert(name.clone(), (from, id));
                            }
                            let answer = if ok {
                                Claim::Granted(1000 + id as u64)
                            } else {
                                Claim::Taken
                            };
                            self.hubs[from].claimed(id, &name, answer, &mut self.bus[from]);
                        }
                    }
                    if quiet {
                        return;
                    }
                }
                panic!("the bus never went quiet");
            }

            fn line(&mut self, h: usize, id: ClientId, text: &str) {
                self.hubs[h].line(id, text, &mut self.bus[h]);
                self.pump();
            }

            fn take(&mut self, h: usize) -> Vec<(ClientId, String)> {
                std::mem::take(&mut self.bus[h].got)
            }
        }

        #[test]
        fn two_instances_are_one_chat() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.pump();
            net.hubs[1].connect(0, &mut net.bus[1]);
            net.pump();
            let welcome = net.take(1);
            assert!(
                welcome[0].1.contains("guest-101!") && welcome[0].1.contains("1 other user online"),
                "{welcome:?}"
            );
            assert_eq!(
                net.take(0),
                pairs(&[
                    (
                        0,
                        "*** welcome to chatd, guest-1! you are in #lobby with nobody else online; /help lists the commands; lines up to 8192 bytes"
                    ),
                    (0, "*** guest-101 joined")
                ])
            );

            net.line(0, 0, "hello b");
            assert_eq!(net.take(1), pairs(&[(0, "<guest-1> hello b")]));
            assert_eq!(net.take(0), vec![], "no echo, no double delivery");

            net.line(1, 0, "/nick bob");
            assert_eq!(net.take(1), pairs(&[(0, "*** you are now bob")]));
            assert_eq!(net.take(0), pairs(&[(0, "*** guest-101 is now bob")]));

            net.line(0, 0, "/nick BOB");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** error: the name BOB is taken")])
            );

            net.line(0, 0, "/who");
            assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (2): bob, guest-1")]));

            net.line(0, 0, "/msg bob psst");
            assert_eq!(net.take(0), pairs(&[(0, "-> *bob* psst")]));
            assert_eq!(net.take(1), pairs(&[(0, "*guest-1* psst")]));

            net.line(1, 0, "/join games");
            net.take(1);
            assert_eq!(net.take(0), pairs(&[(0, "*** bob left #lobby")]));
            net.line(0, 0, "lobby only");
            assert_eq!(net.take(1), vec![], "rooms stay apart across instances");
            net.line(0, 0, "/rooms");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** rooms (2): #games (1), #lobby (1)")])
            );
            assert!(
                !net.bus[1].subscribed.contains("lobby"),
                "b has nobody left in #lobby"
            );
        }

        #[test]
        fn a_name_reserved_elsewhere_first_is_refused() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(0, &mut net.bus[1]);
            // Both ask before either hears of the other: the store decides.
            net.hubs[0].line(0, "/nick twin", &mut net.bus[0]);
            net.hubs[1].line(0, "/nick Twin", &mut net.bus[1]);
            net.pump();
            let a = net.take(0);
            let b = net.take(1);
            assert!(a.iter().any(|(_, l)| l == "*** you are now twin"), "{a:?}");
            assert!(
                b.iter()
                    .any(|(_, l)| l == "*** error: the name Twin is taken"),
                "{b:?}"
            );
        }

        #[test]
        fn a_lost_node_takes_its_users_with_it() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(3, &mut net.bus[1]);
            net.pump();
            net.take(0);
            assert_eq!(net.hubs[0].remote_nodes(), vec![Rc::<str>::from("b")]);
            net.hubs[0].node_lost("b", "server lost", &mut net.bus[0]);
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** guest-101 left (server lost)")])
            );
            net.line(0, 0, "/who");
            assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (1): guest-1")]));
        }

        #[test]
        fn a_restarted_or_departing_node_takes_its_old_users_with_it() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(3, &mut net.bus[1]);
            net.pump();
            net.take(0);
            // "b" comes back as a new incarnation of the same instance.
            let hello = Presence::Hello { node: "b~2".into() };
            net.hubs[0].remote_presence(hello, &mut net.bus[0]);
            assert!(same_instance_name("b", "b~2") && !same_instance_name("b~1", "bb~1"));
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** guest-101 left (server lost)")])
            );
            net.pump();
            net.hubs[1].connect(4, &mut net.bus[1]);
            net.pump();
            net.take(0);
            net.hubs[1].shutdown(&mut net.bus[1]);
            net.pump();
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** guest-102 left (server shutting down)")])
            );
            // Neither a replaced incarnation nor one that said goodbye is
            // waited for to come back.
            assert!(net.hubs[0].lost_nodes().is_empty());
        }

        #[test]
        fn link_down_and_up_tell_local_users_once_and_rebuild_the_mirror() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(0, &mut net.bus[1]);
            net.pump();
            net.take(0);
            net.hubs[0].link_down(&mut net.bus[0]);
            net.hubs[0].link_down(&mut net.bus[0]);
            assert_eq!(net.take(0), pairs(&[(0, LINK_DOWN)]));
            net.line(0, 0, "/nick x");
            assert_eq!(
                net.take(0),
                pairs(&[(
                    0,
                    "*** error: names cannot change while the cluster link is down"
                )])
            );
            // Issue 12: the other instance's users are out of reach, not
            // gone (this asserted they left /who before): they stay, and
            // so their names stay taken; a line to them is refused.
            net.line(0, 0, "/who");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** #lobby (2): guest-1, guest-101")])
            );
            net.line(0, 0, "/msg guest-101 hi");
            assert_eq!(
                net.take(0),
                pairs(&[(
                    0,
                    "*** error: guest-101 is on another server, out of reach while the cluster link is down"
                )])
            );
            net.hubs[0].link_up(&mut net.bus[0]);
            net.pump();
            assert_eq!(net.take(0), pairs(&[(0, LINK_UP)]));
            net.line(0, 0, "/who");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** #lobby (2): guest-1, guest-101")])
            );
        }

        #[test]
        fn a_lost_node_heard_again_is_relearned_and_its_rooms_told() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(3, &mut net.bus[1]);
            net.line(1, 3, "/nick bob");
            net.take(0);
            net.hubs[0].node_silent("b", &mut net.bus[0]);
            assert_eq!(net.take(0), pairs(&[(0, "*** bob left (server lost)")]));
            assert_eq!(net.hubs[0].lost_nodes(), vec![Rc::<str>::from("b")]);
            // Its heartbeat is back: asked for its users, it announces them.
            net.hubs[0].node_back("b", &mut net.bus[0]);
            net.pump();
            assert_eq!(net.take(0), pairs(&[(0, "*** bob is back")]));
            assert!(net.hubs[0].lost_nodes().is_empty(), "re-learned in full");
            net.line(0, 0, "/who");
            assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (2): bob, guest-1")]));
            // Asking about a node that was never lost does nothing.
            net.hubs[0].node_back("b", &mut net.bus[0]);
            assert!(net.bus[0].presence.is_empty());
        }

        #[test]
        fn a_roster_without_a_user_means_it_left_while_we_could_not_hear() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(3, &mut net.bus[1]);
            net.hubs[1].connect(4, &mut net.bus[1]);
            net.pump();
            net.take(0);
            net.hubs[0].link_down(&mut net.bus[0]);
            // guest-101 leaves while a cannot hear it.
            net.hubs[1].disconnect(3, None, &mut net.bus[1]);
            net.bus[1] = Bus {
                subscribed: std::mem::take(&mut net.bus[1].subscribed),
                ..Bus::default()
            };
            net.take(0);
            net.line(0, 0, "/who");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** #lobby (3): guest-1, guest-101, guest-102")]),
                "out of reach, not gone"
            );
            // Back: b answers a's hello with its roster, without guest-101.
            net.hubs[0].link_up(&mut net.bus[0]);
            net.pump();
            assert_eq!(
                net.take(0),
                pairs(&[(0, LINK_UP), (0, "*** guest-101 left")])
            );
            net.line(0, 0, "/who");
            assert_eq!(
                net.take(0),
                pairs(&[(0, "*** #lobby (2): guest-1, guest-102")])
            );
        }

        #[test]
        fn the_later_claim_gives_its_name_up_and_its_room_sees_the_rename() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(0, &mut net.bus[1]);
            net.line(1, 0, "/nick alice");
            net.take(0);
            net.take(1);
            assert_eq!(net.hubs[1].claimed_names(), vec![(0, "alice", 1000)]);
            net.hubs[1].name_lost(0, "alice", &mut net.bus[1]);
            net.pump();
            assert_eq!(
                net.take(1),
                pairs(&[(
                    0,
                    "*** your name alice was also taken on another server while the cluster was split; you are now guest-102"
                )])
            );
            assert_eq!(net.take(0), pairs(&[(0, "*** alice is now guest-102")]));
            assert!(net.hubs[1].claimed_names().is_empty());
            assert!(
                net.bus[1].released.is_empty(),
                "the key is the winner's: not released"
            );
            // A stale verdict (the user changed name since) changes nothing.
            net.hubs[1].name_lost(0, "alice", &mut net.bus[1]);
            assert!(net.take(1).is_empty());
        }

        #[test]
        fn a_name_held_twice_in_the_mirror_stays_taken_until_both_let_go() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[0].connect(1, &mut net.bus[0]);
            net.line(0, 0, "/nick alice");
            // Another instance's alice (a split): both are in the mirror.
            let c: Rc<str> = "c".into();
            let here = Presence::Here {
                node: c.clone(),
                id: 9,
                name: "alice".into(),
                room: "lobby".into(),
                shown: "lobby".into(),
                round: 1,
            };
            net.hubs[0].remote_presence(here, &mut net.bus[0]);
            net.take(0);
            // The local alice lets go: the other still holds it.
            net.line(0, 0, "/nick al");
            net.line(0, 1, "/nick alice");
            assert!(
                net.take(0)
                    .iter()
                    .any(|(id, l)| *id == 1 && l == "*** error: the name alice is taken")
            );
            let gone = Presence::Gone { node: c, id: 9 };
            net.hubs[0].remote_presence(gone, &mut net.bus[0]);
            net.line(0, 1, "/nick alice");
            assert!(
                net.take(0)
                    .iter()
                    .any(|(id, l)| *id == 1 && l == "*** you are now alice")
            );
        }

        #[test]
        fn a_claim_that_cannot_be_queued_is_refused_with_a_reason() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.take(0);
            net.bus[0].busy = true;
            for _ in 0..2 {
                net.line(0, 0, "/nick x");
                assert_eq!(
                    net.take(0),
                    pairs(&[(
                        0,
                        "*** error: the cluster is busy; try /nick again in a moment"
                    )]),
                    "refused, and nothing left waiting"
                );
            }
        }

        #[test]
        fn the_mirror_has_a_bound() {
            let mut hub = Hub::new(200).with_cluster("a").with_max_remote(2);
            let mut bus = Bus::default();
            hub.link_up(&mut bus);
            hub.connect(0, &mut bus);
            for id in 0..5 {
                let here = Presence::Here {
                    node: "z".into(),
                    id,
                    name: format!("z{id}"),
                    room: "lobby".into(),
                    shown: "lobby".into(),
                    round: 1,
                };
                hub.remote_presence(here, &mut bus);
            }
            bus.got.clear();
            hub.line(0, "/who", &mut bus);
            assert_eq!(bus.got, pairs(&[(0, "*** #lobby (3): guest-a-1, z0, z1")]));
        }

        #[test]
        fn lines_are_numbered_by_the_store_and_with_the_link_down_history_is_local_and_says_so() {
            let mut net = Net::new();
            net.hubs[0].connect(0, &mut net.bus[0]);
            net.hubs[1].connect(0, &mut net.bus[1]);
            net.hubs[0].line(0, "/ids on", &mut net.bus[0]);
            net.pump();
            net.take(0);
            net.take(1);
            net.line(0, 0, "one");
            // Back from the store to both, the sender's (with ids) included.
            assert_eq!(net.take(0), pairs(&[(0, "@id=7-1 <guest-1> one")]));
            assert_eq!(net.take(1), pairs(&[(0, "<guest-1> one")]));
            net.line(1, 0, "two");
            assert_eq!(net.take(0), pairs(&[(0, "@id=7-2 <guest-101> two")]));
            assert_eq!(net.take(1), vec![], "no echo without ids");
            net.hubs[0].link_down(&mut net.bus[0]);
            net.take(0);
            net.line(0, 0, "alone");
            net.line(0, 0, "/history");
            let got = net.take(0);
            assert_eq!(got[0].1, "@id=1-1 <guest-1> alone", "numbered here now");
            assert_eq!(
                got[1].1,
                "*** the cluster link is down: this is only what was said on this server meanwhile"
            );
            assert!(got[2].1.contains("] <guest-1> alone"), "{got:?}");
            assert!(!got[2].1.contains("> one"), "{got:?}");
        }

        /// Asks for history as the link would; answers come when the test
        /// says.
        #[derive(Default)]
        struct Asking {
            got: Vec<(ClientId, String)>,
            asked: Vec<(ClientId, String, Asked, Option<Id>, usize)>,
        }

        impl Outbox for Asking {
            fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
                self.got.push((to, msg.text().to_string()));
            }
            fn close(&mut self, _: ClientId, _: String) {}
            fn history(
                &mut self,
                id: ClientId,
                room: &str,
                asked: Asked,
                after: Option<Id>,
                count: usize,
            ) -> bool {
                self.asked.push((id, room.into(), asked, after, count));
                true
            }
        }

        #[test]
        fn a_client_waiting_for_history_gets_it_first_then_the_live_lines_it_did_not_have() {
            let mut hub = Hub::new(200).with_cluster("a");
            let mut out = Asking::default();
            hub.link_up(&mut out);
            hub.connect(0, &mut out);
            assert_eq!(out.asked, [(0, "lobby".into(), Asked::Enter, None, 20)]);
            out.got.clear();
            // Lines 3 and 4 arrive before the answer, which has 1 to 3.
            hub.said("lobby", Id { epoch: 9, n: 3 }, None, "<b> three", &mut out);
            hub.said("lobby", Id { epoch: 9, n: 4 }, None, "<b> four", &mut out);
            assert_eq!(out.got, vec![], "held");
            let lines = (1..=3)
                .map(|n| history::Line::new(n, NOON, &format!("<b> {n}")))
                .collect();
            hub.answer(0, "lobby", Asked::Enter, 9, 3, lines, &mut out);
            assert_eq!(
                out.got,
                pairs(&[
                    (
                        0,
                        "*** history of #lobby (3 lines, times UTC):\r\n[12:03] <b> 1\r\n\
                         [12:03] <b> 2\r\n[12:03] <b> 3\r\n*** end of history"
                    ),
                    (0, "<b> four"),
                ])
            );
            out.got.clear();
            // Resuming: what was missed is counted exactly.
            hub.line(0, "/history since 9-1", &mut out);
            let since = Id { epoch: 9, n: 1 };
            assert_eq!(
                out.asked[1],
                (0, "lobby".into(), Asked::Since(since), Some(since), 100)
            );
            let lines = vec![history::Line::new(4, NOON, "<b> four")];
            hub.answer(0, "lobby", Asked::Since(since), 9, 4, lines, &mut out);
            assert!(
                out.got[0]
                    .1
                    .starts_with("*** 2 lines were missed; showing the last 1\r\n"),
                "{:?}",
                out.got
            );
            out.got.clear();
            // With ids: lines numbered while `/ids on` was being answered
            // are held and come after the mark, which stands before them.
            hub.connect(1, &mut out);
            hub.line(1, "/ids on", &mut out);
            hub.answer(1, "lobby", Asked::Enter, 9, 4, Vec::new(), &mut out);
            assert_eq!(out.got.pop(), Some((1, "*** ids on: #lobby at 9-4".into())));
            out.got.clear();
            hub.said("lobby", Id { epoch: 9, n: 5 }, None, "<b> five", &mut out);
            hub.said("lobby", Id { epoch: 9, n: 6 }, None, "<b> six", &mut out);
            out.got.retain(|(to, _)| *to == 1);
            assert_eq!(out.got, vec![], "held");
            hub.answer(1, "lobby", Asked::Mark, 9, 6, Vec::new(), &mut out);
            assert_eq!(
                out.got,
                pairs(&[
                    (1, "*** ids on: #lobby at 9-4"),
                    (1, "@id=9-5 <b> five"),
                    (1, "@id=9-6 <b> six"),
                ])
            );
            hub.disconnect(1, None, &mut out);
            out.got.clear();
            // The link goes down while an answer is awaited: told, not stuck.
            hub.line(0, "/history", &mut out);
            hub.said("lobby", Id { epoch: 9, n: 7 }, None, "<b> five", &mut out);
            hub.link_down(&mut out);
            assert_eq!(
                out.got,
                pairs(&[
                    (
                        0,
                        "*** the cluster link went down: the history asked for cannot be shown now"
                    ),
                    (0, "<b> five"),
                    (0, LINK_DOWN),
                ])
            );
        }

        #[test]
        fn guests_come_from_reserved_blocks_or_carry_the_node_id() {
            let mut hub = Hub::new(200).with_cluster("n7");
            let mut bus = Bus::default();
            hub.connect(0, &mut bus);
            assert_eq!(hub.name(0), Some("guest-n7-1"));
            hub.add_guests(500, 2);
            assert_eq!(hub.guests_left(), 2);
            hub.connect(1, &mut bus);
            hub.connect(2, &mut bus);
            hub.connect(3, &mut bus);
            assert_eq!(hub.name(1), Some("guest-500"));
            assert_eq!(hub.name(2), Some("guest-501"));
            assert_eq!(hub.name(3), Some("guest-n7-2"));
            assert_eq!(hub.guests_used(), 501);
        }
    }
}
