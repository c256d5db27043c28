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
//!
//! One `Hub`, its `impl` in a file per concern, and a `Client` made of one
//! part per concern, each type in the file of its concern (its fields
//! private there):
//! - this file: the hub, `Client`, arriving (`let_in`) and leaving, lines in;
//! - names.rs: identity — `Identity` (name, where connected, claim), guest
//!   numbers, `/nick`, name claims;
//! - rooms.rs: rooms and routing — `Seat` (the rooms a user is in, and its
//!   current one), who gets a line (`say`, the fan-out: one shared buffer
//!   per variant of a broadcast — current room or not, ids or not),
//!   `/join`, `/part`, `/msg`;
//! - room_admin.rs: what a room has beyond its members — its topic and
//!   operators (`/topic`, `/op`, `/deop`, a room's `/kick`), `/list`,
//!   `/names`;
//! - status.rs: `Status` (away, connected since, last active), `/away`,
//!   `/whois`;
//! - room_history.rs: `Resume` (ids on or off, history awaited from
//!   Redis), room lines numbered, kept, replayed, `/history`, `/ids`;
//! - command.rs: a `/` line parsed into a [`Command`], then carried out;
//! - mirror.rs: cluster mode — the other instances' users, link up/down.
//! - moderation.rs: `Standing` (address, operator, muted), who may come in
//!   and speak — the server password, operators, `/kick`, `/ban`, `/mute`
//!   (the pure tables and durations: crate::access, which knows no hub).
//!
//! Two indices, two types: a [`ClientId`] is the transport's name for a
//! local connection (the reactor's slab key); a `Member` is the hub's own
//! slot for any user, local or remote, which rooms and names refer to.

mod command;
mod mirror;
mod moderation;
mod names;
mod ops;
mod room_admin;
mod room_history;
mod rooms;
mod status;

pub use self::command::{Command, stats_line};
pub use self::mirror::{Claim, LINK_DOWN, LINK_UP, MAX_LOST, MAX_REMOTE, same_instance_name};
pub use self::moderation::{Access, Moderation, NEEDS_PASSWORD};
pub use self::names::{MAX_NAME, check_name};
pub use self::ops::{ClusterOp, Due, Refusal, Roster};
pub use self::room_admin::{MAX_TOPIC, Topic};
pub use self::room_history::Asked;
pub use self::rooms::{DEFAULT_MAX_ROOMS, LIST_MAX, LOBBY};
pub use crate::access::human_duration;

use self::mirror::Cluster;
use self::moderation::Standing;
use self::names::{Home, Identity};
use self::room_history::{Numbered, Resume, is_room_line};
use self::rooms::{NO_ROOM, Seat, listing};
use self::status::Status;
use crate::history::{self, History, Id, Since};
use crate::msg::Msg;
use slab::Slab;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

/// A connection as the transports know it: the reactor's slab key, which
/// the hub, the Outbox and the cluster link carry back to it. A type of its
/// own so that it is never confused with a [`Member`] (the hub's slot for a
/// user, local or remote): both are `usize` underneath and a swapped pair
/// would still compile as plain integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// A user as the hub knows it, local or remote: its slot in `Hub::clients`,
/// which rooms and names refer to. A type of its own so that it is never
/// taken for a [`ClientId`], which only local users have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Member(usize);

impl std::ops::Index<Member> for Slab<Client> {
    type Output = Client;
    fn index(&self, i: Member) -> &Client {
        &self[i.0]
    }
}

impl std::ops::IndexMut<Member> for Slab<Client> {
    fn index_mut(&mut self, i: Member) -> &mut Client {
        &mut self[i.0]
    }
}

/// Where the hub's output goes. Implemented by the reactor over its
/// connections, and by recorders in tests and benches.
pub trait Outbox {
    /// Queue `msg` for `to`. Must not call back into the hub: a transport
    /// that needs to drop `to` marks it and tells the hub after the call.
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>);
    /// `id` asked to leave (`/quit`): flush what is queued for it, then
    /// close it and call [`Hub::disconnect`] with `reason`.
    fn close(&mut self, id: ClientId, reason: String);
    /// Cluster mode: an operation for the link (see [`ClusterOp`]). Not
    /// called on a server without a cluster.
    fn cluster(&mut self, _op: ClusterOp) {}
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

/// One room a user is in, as presence events carry it: the room's key
/// (lowercase), the name it is shown by (without its `#`), and whether the
/// user is one of its operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRoom {
    pub key: String,
    pub shown: String,
    pub op: bool,
}

/// Presence events exchanged by instances (room keys are lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A user is on `node` as `id`, named `name`, in `rooms`. Sent when a
    /// user arrives and, for everyone, in a roster (answering `Hello` or
    /// `Who`); `round` is the sender's roster count.
    Here {
        node: Rc<str>,
        id: u64,
        name: String,
        rooms: Vec<InRoom>,
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
    /// The user entered one more room (it stays in the others).
    Joined {
        node: Rc<str>,
        id: u64,
        room: InRoom,
    },
    /// The user left the room `room` (a key).
    Parted {
        node: Rc<str>,
        id: u64,
        room: String,
    },
    /// The user is (`op`) or is no longer one of `room`'s operators; sent
    /// by whichever instance's user changed it, for every instance
    /// (the user's own too).
    Opped {
        node: Rc<str>,
        id: u64,
        room: String,
        op: bool,
    },
    /// A room operator elsewhere kicked the user from `room`: for the
    /// user's own instance, which takes it out (and sends `Parted`).
    Kicked {
        node: Rc<str>,
        id: u64,
        room: String,
    },
    /// The user's away message (None: back).
    Away {
        node: Rc<str>,
        id: u64,
        text: Option<String>,
    },
    /// When the user came in and last spoke (ms since the Unix epoch), for
    /// `/whois` elsewhere: in rosters, and when it speaks after a minute
    /// or more of silence (so idle times elsewhere are right to the minute,
    /// at one event a minute per active user at most).
    Seen {
        node: Rc<str>,
        id: u64,
        since_ms: u64,
        active_ms: u64,
    },
    /// `room`'s topic, as set on `node` (or re-announced in its roster).
    Topic {
        node: Rc<str>,
        room: String,
        topic: Topic,
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

/// A user, local or remote: one part per concern, each owned (its fields
/// private) by the file of that concern, so that changing one — a user in
/// several rooms, say — leaves the others alone.
struct Client {
    /// Its name and where it is connected (names.rs).
    who: Identity,
    /// The rooms it is in (rooms.rs).
    seat: Seat,
    /// Away or not, since when it is here, when it last spoke (status.rs).
    status: Status,
    /// What room history keeps track of for it (room_history.rs).
    resume: Resume,
    /// What it may do: its address, operator, muted (moderation.rs).
    standing: Standing,
}

struct Room {
    /// As shown, with the leading '#' and the casing of whoever created it.
    name: Box<str>,
    key: Box<str>,
    /// Hub indices of everyone in the room, local and remote.
    members: Vec<Member>,
    /// How many of `members` are local: the cluster link subscribes to a
    /// room's channel only while this is non-zero.
    local: usize,
    /// The room's record in `Hub::history`.
    hist: usize,
    /// Cluster mode: the last id delivered here (see `said`).
    last_id: Option<Id>,
    /// Cluster mode: the room's last id as of the latest join replay read
    /// here: every line up to it was shown in that replay or is older.
    replayed: Option<Id>,
    /// Its topic, and whether only its operators may change it.
    topic: Option<Box<Topic>>,
}

pub struct Hub {
    /// Everyone, local and remote; rooms and names refer to these indices.
    clients: Slab<Client>,
    /// ClientId (reactor key) -> index in `clients`.
    local: Vec<Option<Member>>,
    remote: HashMap<(Rc<str>, u64), Member>,
    names: HashMap<Box<str>, Member>,
    /// Further holders of a name already in `names`: only after a split,
    /// until the collision is resolved (or within one instance's mirror,
    /// a remote user whose instance has not yet seen our claim).
    dups: HashMap<Box<str>, Vec<Member>>,
    max_remote: usize,
    /// Remote users not mirrored: the mirror held `max_remote` already.
    remote_refused: u64,
    rooms: Slab<Room>,
    /// Sorted, so `/rooms` names its first entries without sorting them all.
    room_keys: BTreeMap<Box<str>, usize>,
    /// --max-rooms-per-user.
    max_rooms: usize,
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
    /// The password, operators' password, bans and wrong-password counts.
    access: Access,
    /// Connections that have not given the server password yet: in no
    /// room, under no name, hearing nothing but their own answers.
    waiting: HashMap<ClientId, IpAddr>,
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
            remote_refused: 0,
            rooms: Slab::new(),
            room_keys: BTreeMap::new(),
            max_rooms: DEFAULT_MAX_ROOMS,
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
            access: Access::default(),
            waiting: HashMap::new(),
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

    /// Cluster mode: the other instances' users in the mirror, and how many
    /// more were not taken in because it was full (`--max-remote-users`).
    pub fn mirrored(&self) -> (u64, u64) {
        (self.remote.len() as u64, self.remote_refused)
    }

    pub fn name(&self, id: ClientId) -> Option<&str> {
        self.idx(id).map(|i| self.clients[i].who.name())
    }

    fn idx(&self, id: ClientId) -> Option<Member> {
        self.local.get(id.0).copied().flatten()
    }

    /// A new connection from `addr`. A banned address is told why and
    /// closed; with a server password it waits for `/pass` (see
    /// [`Hub::lines`]); otherwise it is let in (`let_in`).
    pub fn connect(&mut self, id: ClientId, addr: IpAddr, out: &mut impl Outbox) {
        if self.idx(id).is_some() || self.waiting.contains_key(&id) {
            return;
        }
        let addr = crate::access::canonical(addr);
        if self.refuse_banned(id, addr, out) {
            return;
        }
        if self.access.needs_password() {
            self.waiting.insert(id, addr);
            return reply(out, id, NEEDS_PASSWORD);
        }
        self.let_in(id, addr, out);
    }

    /// In (past the password, if any): it gets a guest name, lands in the
    /// lobby and is welcomed; the lobby hears of it.
    fn let_in(&mut self, id: ClientId, addr: IpAddr, out: &mut impl Outbox) {
        let name = self.guest_name(out);
        let key: Box<str> = name.clone().into();
        let i = Member(self.clients.insert(Client {
            who: Identity::new(name.clone().into(), key.clone(), Home::Local(id), 0),
            seat: Seat::NONE,
            status: Status::new(self.now_ms),
            resume: Resume::default(),
            standing: Standing::new(Some(addr)),
        }));
        self.name_add(&key, i);
        if self.local.len() <= id.0 {
            self.local.resize(id.0 + 1, None);
        }
        self.local[id.0] = Some(i);
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
        self.waiting.remove(&id);
        let Some(i) = self.unlink(id, out) else {
            return;
        };
        self.drop_client(i, reason, true, out);
    }

    /// Local user `id` is no longer reachable as such (nor, in a cluster,
    /// listed by the others or holding its name); returns its member,
    /// still in its room.
    fn unlink(&mut self, id: ClientId, out: &mut impl Outbox) -> Option<Member> {
        let i = self.idx(id)?;
        self.local[id.0] = None;
        self.online -= 1;
        if let Some(c) = self.cluster.as_mut() {
            c.pending.remove(&id);
            let node = c.node.clone();
            out.cluster(ClusterOp::Presence(Presence::Gone {
                node,
                id: id.0 as u64,
            }));
            self.release_claim(id, i, out);
        }
        Some(i)
    }

    /// Removes a client (local or remote) and tells its rooms, locally and,
    /// when `publish`, on the other instances too.
    fn drop_client(
        &mut self,
        i: Member,
        reason: Option<&str>,
        publish: bool,
        out: &mut impl Outbox,
    ) {
        let c = &self.clients[i];
        let text = match reason {
            Some(r) => format!("*** {} left ({r})", c.who.name()),
            None => format!("*** {} left", c.who.name()),
        };
        if publish {
            self.announce_everywhere(i, &text, out);
        } else {
            let msg = Msg::new(&text);
            for room in c.seat.rooms().filter(|&r| self.announces(r)) {
                self.to_room(room, Some(i), &msg, out);
            }
        }
        self.forget(i, out);
    }

    /// Removes a client from the hub, its name and its rooms, saying nothing.
    fn forget(&mut self, i: Member, out: &mut impl Outbox) {
        self.leave(i, out);
        let c = self.clients.remove(i.0);
        self.name_drop(c.who.key(), i);
    }

    /// One line from `id`, already sanitised and known to be non-blank.
    pub fn line(&mut self, id: ClientId, text: &str, out: &mut impl Outbox) {
        let text = command_form(text);
        if self.waiting.contains_key(&id) {
            return self.gate(id, text, out);
        }
        let Some(i) = self.idx(id) else { return };
        let chat = !text.starts_with('/') || text.starts_with("//");
        if chat && self.silenced(id, i, out) {
            return;
        }
        if let Some(command) = text.strip_prefix('/').filter(|t| !t.starts_with('/')) {
            return self.command(id, i, Command::parse(command), out);
        }
        let Some(room) = self.talking_in(id, i, out) else {
            return;
        };
        let body = text.strip_prefix('/').unwrap_or(text);
        let line = format!("<{}> {body}", self.clients[i].who.name());
        self.say(room, Some(i), line, out);
        self.relayed += 1;
    }

    /// Cluster mode: local client `id` waits for Redis — a name claim or a
    /// history read (a join replay, `/history`, a resume) is in flight.
    /// Its later lines must wait too, or they would overtake it (a line
    /// shown under the old name before the rename, a leave before the
    /// line): [`Hub::lines`] takes none while this holds. Every such wait
    /// ends by an event from the link — the answer, a refusal, or its
    /// `Down` — never by time. Always false on a single server.
    pub fn busy(&self, id: ClientId) -> bool {
        let Some(c) = self.cluster.as_ref() else {
            return false;
        };
        c.pending.contains_key(&id)
            || self
                .idx(id)
                .is_some_and(|i| self.clients[i].resume.awaits())
    }

    /// Several lines from `id`, in the order they came. Consecutive plain
    /// messages go out as one batch: one shared buffer, one queue entry and
    /// one iovec per recipient instead of one per line. A batch never
    /// passes `batch_max` bytes, so it always fits a recipient's queue.
    ///
    /// Returns how many lines were taken: all of them, unless the client
    /// is [`Hub::busy`] (before the first, or after a command that asked
    /// Redis); the caller keeps the rest and hands them in again, first,
    /// once it no longer is.
    pub fn lines(&mut self, id: ClientId, texts: &[String], out: &mut impl Outbox) -> usize {
        let mut run = String::new();
        for (taken, text) in texts.iter().enumerate() {
            if self.busy(id) {
                if let Some(i) = self.idx(id) {
                    self.flush_run(i, &mut run, out);
                }
                return taken;
            }
            let text = command_form(text);
            if self.waiting.contains_key(&id) {
                self.gate(id, text, out);
                if text.starts_with('/') && matches!(Command::parse(&text[1..]), Command::Quit(_)) {
                    return texts.len();
                }
                continue;
            }
            let Some(i) = self.idx(id) else {
                return texts.len();
            };
            if !text.starts_with('/') || text.starts_with("//") {
                if self.muted(i) {
                    self.flush_run(i, &mut run, out);
                    self.silenced(id, i, out);
                    continue;
                }
                if self.clients[i].seat.current().is_none() {
                    reply(out, id, NO_ROOM);
                    continue;
                }
                if !run.is_empty() && run.len() + text.len() + 32 > self.batch_max {
                    self.flush_run(i, &mut run, out);
                }
                if !run.is_empty() {
                    run.push_str("\r\n");
                }
                let body = text.strip_prefix('/').unwrap_or(text);
                run.push('<');
                run.push_str(self.clients[i].who.name());
                run.push_str("> ");
                run.push_str(body);
                self.relayed += 1;
                continue;
            }
            self.flush_run(i, &mut run, out);
            self.line(id, text, out);
            // After /quit nothing more from this client is taken.
            if matches!(Command::parse(&text[1..]), Command::Quit(_)) {
                return texts.len();
            }
        }
        if let Some(i) = self.idx(id) {
            self.flush_run(i, &mut run, out);
        }
        texts.len()
    }

    fn flush_run(&mut self, i: Member, run: &mut String, out: &mut impl Outbox) {
        if run.is_empty() {
            return;
        }
        let lines = std::mem::take(run);
        let Some(id) = self.clients[i].who.local() else {
            return;
        };
        if let Some(room) = self.talking_in(id, i, out) {
            self.say(room, Some(i), lines, out);
        }
    }

    /// The room `i`'s plain lines go to (and it was active now), or None
    /// with `id` told that it is in none.
    fn talking_in(&mut self, id: ClientId, i: Member, out: &mut impl Outbox) -> Option<usize> {
        let c = &mut self.clients[i];
        if c.status.active(self.now_ms) {
            self.presence_seen(i, out);
        }
        let c = &self.clients[i];
        let room = c.seat.current();
        if room.is_none() {
            reply(out, id, NO_ROOM);
        }
        room
    }
}

/// A line as the hub reads it: one that begins with white space and then
/// `/` is that command (` /oper SECRET` is not a message to the room, and
/// is redacted in the log as `/oper` is); any other line as it came.
fn command_form(text: &str) -> &str {
    let trimmed = text.trim_start();
    if trimmed.starts_with('/') {
        trimmed
    } else {
        text
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

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests;
