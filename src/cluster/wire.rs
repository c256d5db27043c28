//! What travels through Redis, as bytes, and nothing else: every channel
//! and key name ([`Keys`]), every payload encoded and decoded ([`Wire`]).
//! Pure: no socket, no clock, no connection.
//!
//! Channels (pub/sub is not per database, so the database number is part of
//! every name, and clusters on different databases stay apart):
//! - `chatd:DB:r:ROOM` — lines for a room: `NODE TEXT` (one line, any CR
//!   or LF in it removed), `NODE\nLINE\nLINE...` (a sender's batch, each
//!   line cleaned on its own), `NODE =EPOCH-N:SENDERS\nLINE...` (lines
//!   numbered by Redis, [`super::scripts::SAY`]), or `NODE !SEQ:ABOUT
//!   TEXT` (a notice about a member, in the room's order with its lines:
//!   [`notice_payload`]); our own unnumbered lines come back and are
//!   skipped by NODE, so nothing is delivered twice;
//! - `chatd:DB:p` — presence (who is where), for every instance's mirror;
//! - `chatd:DB:n:NODE` — private lines for users on NODE: `TO NAME TEXT`;
//! - `chatd:DB:b` — bans: `B NODE NET<TAB>UNTIL<TAB>BY<TAB>REASON` (set)
//!   or `U NODE NET` (lifted), each instance applying the others'.
//!
//! Keys: `chatd:name:NAME` (a claim `MS NODE ID`: reserved with SET NX,
//! renewed every tick by a script that re-creates it if Redis lost it),
//! `chatd:alive:NODE` (a heartbeat that expires when the instance dies),
//! `chatd:guests` (the shared guest-number counter), `chatd:DB:bans` (a
//! hash, NET -> the ban's line: read by every instance at link-up, so bans
//! apply cluster-wide and to instances started later), `chatd:DB:unbans`
//! (a hash, NET -> the end of a ban lifted: tombstones, so an instance
//! that was away learns the unban when it re-asserts), `chatd:DB:h:ROOM`
//! and `chatd:DB:s:ROOM` (a room's numbering and its kept lines),
//! `chatd:DB:t:ROOM` (a room's topic, the `T` presence's line: written when
//! it is set, locked or unlocked, with the history's TTL, which every SAY
//! to the room renews; read when an instance gets its first member there,
//! [`Wire::stored_topic`]).
//!
//! Anyone who can reach Redis can publish on these, so nothing that arrives
//! is trusted more than a client's line: texts are cleaned by the same
//! `line::sanitize` and bounded in length, names and rooms must pass the
//! hub's own rules, and anything else is refused with a reason.

use super::events::Inbound;
use super::redis::frame_bytes;
use crate::access::Ban;
use crate::access::MAX_REASON;
use crate::config::MAX_ROOMS_PER_USER;
use crate::history::{Id, Line};
use crate::hub::{ClientId, InRoom, MAX_TOPIC, Presence, Topic, check_name};
use crate::line::sanitize;
use redis_protocol::resp2::types::OwnedFrame;
use std::rc::Rc;

/// Room lines that arrive together are delivered as one batch of at most
/// this many bytes (one shared buffer per recipient, as for local lines);
/// a publication of a batch may be this much longer than one line.
pub const COALESCE: usize = 16 * 1024;

/// The cluster's names in Redis, for one database. Names and claims are
/// not per database (`chatd:name:`, `chatd:alive:`, `chatd:guests`): a
/// name is one user's across everything that shares the Redis.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `chatd:DB:`
    prefix: String,
}

/// What a channel of ours carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    Room(&'a str),
    Presence,
    /// Presence for one node.
    PresenceTo(&'a str),
    Node(&'a str),
    Bans,
    /// Under our prefix, but nothing we subscribe to.
    Other,
}

impl Keys {
    pub fn new(db: u32) -> Keys {
        Keys {
            prefix: format!("chatd:{db}:"),
        }
    }

    pub fn room(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
    }

    pub fn presence(&self) -> String {
        format!("{}p", self.prefix)
    }

    /// Presence for `node` alone (the roster answering its `Hello`).
    pub fn presence_to(&self, node: &str) -> String {
        format!("{}p:{node}", self.prefix)
    }

    /// Private lines for users on `node`.
    pub fn node(&self, node: &str) -> String {
        format!("{}n:{node}", self.prefix)
    }

    pub fn bans_channel(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// The hash of bans in force (NET -> the ban's line).
    pub fn bans(&self) -> String {
        format!("{}bans", self.prefix)
    }

    /// The hash of bans lifted (NET -> the lifted ban's end), see
    /// [`super::scripts::UNBAN`].
    pub fn unbans(&self) -> String {
        format!("{}unbans", self.prefix)
    }

    /// A room's numbering (hash: e epoch, n last N, r the replication id
    /// that numbered the epoch) and its kept lines
    /// (stream), as [`super::scripts::SAY`] and `READ` use them.
    pub fn history(&self, room: &str) -> (String, String) {
        (
            format!("{}h:{room}", self.prefix),
            format!("{}s:{room}", self.prefix),
        )
    }

    /// A room's topic, kept with its history ([`topic_value`]).
    pub fn topic(&self, room: &str) -> String {
        format!("{}t:{room}", self.prefix)
    }

    pub fn name(name: &str) -> String {
        format!("chatd:name:{name}")
    }

    pub fn alive(node: &str) -> String {
        format!("chatd:alive:{node}")
    }

    pub const GUESTS: &'static str = "chatd:guests";

    /// Which of our channels `channel` is; None: not ours (another
    /// database, or not chatd's).
    pub fn channel<'a>(&self, channel: &'a str) -> Option<Channel<'a>> {
        let rest = channel.strip_prefix(&self.prefix)?;
        match rest {
            "p" => Some(Channel::Presence),
            "b" => Some(Channel::Bans),
            _ => {
                if let Some(room) = rest.strip_prefix("r:") {
                    Some(Channel::Room(room))
                } else if let Some(node) = rest.strip_prefix("p:") {
                    Some(Channel::PresenceTo(node))
                } else {
                    Some(
                        rest.strip_prefix("n:")
                            .map_or(Channel::Other, Channel::Node),
                    )
                }
            }
        }
    }
}

/// Why a Redis Cluster node is not used (yet).
pub const REDIS_CLUSTER: &str = "Redis is a Redis Cluster node (cluster_enabled:1), which chatd does not support yet: \
a room's keys would hash to different slots (CROSSSLOT) and names and bans be MOVED. Sharding over a Redis Cluster \
comes with issue 24; until then point --redis at a standalone Redis (or a primary with replicas)";

/// Why a replica is not used: every line is a write.
pub const REPLICA: &str = "Redis is a replica (role:slave), which cannot take chatd's writes: point --redis at the primary \
(or at a proxy or Sentinel-managed address that follows it)";

/// The value of `field` in an `INFO` answer (`field:value` lines), if it
/// is there and UTF-8.
pub fn info_field<'a>(info: &'a [u8], field: &str) -> Option<&'a str> {
    info.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find_map(|l| l.strip_prefix(field.as_bytes())?.strip_prefix(b":"))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Whether an `INFO` (or `INFO cluster`) answer is a Redis Cluster node's.
pub fn redis_cluster(info: &[u8]) -> bool {
    info.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .any(|l| l == b"cluster_enabled:1")
}

/// A claim on a name, as stored in its key: `MS NODE ID`, the time of the
/// claim in ms since the Unix epoch, the node and the user's id there.
pub fn claim_value(since: u64, node: &str, id: ClientId) -> String {
    format!("{since} {node} {}", id.0)
}

/// The end of every claim user `id` on `node` makes, whenever it made it:
/// ` NODE ID` ([`claim_value`] without its time).
pub fn claim_tail(node: &str, id: u64) -> String {
    format!(" {node} {id}")
}

/// Which of two claims on one name keeps it: the earlier, ties broken by
/// node id then user id. Every instance compares the same two strings, so
/// all decide alike without asking each other. A value that is not a claim
/// (written by something else) always loses.
pub fn claim_wins(mine: &str, theirs: &str) -> bool {
    fn parse(v: &str) -> Option<(u64, &str, u64)> {
        let mut f = v.split(' ');
        let t = f.next()?.parse().ok()?;
        let node = f.next()?;
        let id = f.next()?.parse().ok()?;
        f.next().is_none().then_some((t, node, id))
    }
    match (parse(mine), parse(theirs)) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A node id as it travels (`ID~INCARNATION`): what --node-id allows, plus
/// the `~`.
pub fn valid_node(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
}

/// A user's name as a client could choose it.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty() && check_name(s).is_ok()
}

/// A room as the hub keys it: a valid name, lowercase.
pub fn room_key_ok(s: &str) -> bool {
    name_ok(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// A room line as the hub writes one, after cleaning: `<NAME> TEXT` or
/// `* NAME TEXT` (src/hub/mod.rs, command.rs), NAME a name a client could
/// choose, and nothing [`sanitize`] removes (a second check: a line that
/// breaks out of its own line or its direction never reaches a user).
/// What else arrives as a room line would show as something it is not
/// (`*** bobby is now admin`, a server line).
pub fn room_line_ok(line: &str) -> bool {
    let name = if let Some(rest) = line.strip_prefix('<') {
        rest.split_once("> ").map(|(name, _)| name)
    } else if let Some(rest) = line.strip_prefix("* ") {
        rest.split_once(' ').map(|(name, _)| name)
    } else {
        None
    };
    name.is_some_and(name_ok) && !line.chars().any(breaks_out)
}

/// A notice from another instance's hub (`*** ...`): only ever the one
/// line of an unnumbered publication, which cannot hold a line break.
fn notice_ok(line: &str) -> bool {
    line.starts_with("*** ") && !line.chars().any(breaks_out)
}

/// How the hub's notices about a member go on after its name
/// (src/hub: mod.rs, rooms.rs, names.rs, moderation.rs, mirror.rs).
const MEMBER_NOTICES: [&str; 14] = [
    "joined",
    "left",
    "is back",
    "is now ",
    "was kicked by ",
    "was kicked from ",
    "set the topic of ",
    "locked the topic of ",
    "unlocked the topic of ",
    "made ",
    "took ",
    "was banned by ",
    "was muted by ",
    "was unmuted by ",
];

/// A notice about a room's member as a hub writes one: `*** NAME ` and one
/// of [`MEMBER_NOTICES`], NAME a name a client could choose — never
/// `*** error: ...` or one of the server's own (`*** cluster link down:
/// ...`), which a forger could otherwise show every member of a room.
fn member_notice_ok(line: &str) -> bool {
    notice_ok(line)
        && line[4..].split_once(' ').is_some_and(|(name, rest)| {
            name_ok(name)
                && MEMBER_NOTICES.iter().any(|v| {
                    rest.strip_prefix(v)
                        .is_some_and(|t| t.is_empty() || t.starts_with(' ') || v.ends_with(' '))
                })
        })
}

/// What ends a line, starts an escape, or turns the text's direction.
fn breaks_out(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\x1b' | '\u{80}'..='\u{9f}' | '\u{61c}' | '\u{200e}' | '\u{200f}'
    ) || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A local line, or a batch of them (CRLF between), for the room on the
/// other instances. One line travels as `NODE TEXT`; a batch as one
/// publication `NODE\nLINE\nLINE...` (one PUBLISH for the lot, which is
/// most of what Redis costs), never with a CR: a receiver cleans each
/// line on its own, and a CR or LF inside a `NODE TEXT` publication is
/// removed, not taken as a line break.
pub fn room_payload(node: &str, text: &str) -> String {
    if text.contains("\r\n") {
        format!("{node}\n{}", text.replace("\r\n", "\n"))
    } else {
        format!("{node} {text}")
    }
}

/// What [`super::scripts::SAY`] publishes for local client `sender`'s
/// lines (CRLF between) on `node`, numbered from `first`. The script builds
/// these bytes in Lua; this is their definition on this side (the hub's
/// tests stand in for Redis with it).
pub fn said_payload(node: &str, first: Id, sender: ClientId, lines: &str) -> String {
    batch_payload(node, first, &[(sender, 1)], lines)
}

/// The same for a batch of several local senders' lines (CRLF between),
/// `runs` saying who said them in order: (sender, how many lines). The
/// header carries them as [`senders`] writes them, which is one sender
/// alone when there is one.
pub fn batch_payload(node: &str, first: Id, runs: &[(ClientId, u64)], lines: &str) -> String {
    format!(
        "{node} ={first}:{}\n{}",
        senders(runs),
        lines.replace("\r\n", "\n")
    )
}

/// Who said the lines of a numbered batch, as its header carries them:
/// `SENDER` when one local client said them all, else `SENDER*COUNT` per
/// run of lines by one sender, comma-separated (`9*2,4*1`: two lines by
/// 9, then one by 4). A sender per line, in a few bytes per sender.
pub fn senders(runs: &[(ClientId, u64)]) -> String {
    match runs {
        [(one, _)] => one.0.to_string(),
        _ => runs
            .iter()
            .map(|(s, n)| format!("{}*{n}", s.0))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The most runs a batch's header may name: one per line at most, and a
/// batch holds at most [`COALESCE`] bytes of lines of at least `<x> `.
const MAX_RUNS: usize = COALESCE / 4;

/// Reads [`senders`] back for `lines` lines: every sender a number, every
/// count at least 1, the counts adding up to the lines. None otherwise.
pub fn parse_senders(head: &str, lines: u64) -> Option<Vec<(ClientId, u64)>> {
    let num = |t: &str| {
        (!t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    if !head.contains('*') {
        let one = ClientId(usize::try_from(num(head)?).ok()?);
        return Some(vec![(one, lines)]);
    }
    let mut runs = Vec::new();
    for run in head.split(',') {
        let (s, n) = run.split_once('*')?;
        let (s, n) = (usize::try_from(num(s)?).ok()?, num(n)?);
        if n == 0 || runs.len() >= MAX_RUNS {
            return None;
        }
        runs.push((ClientId(s), n));
    }
    (runs.iter().map(|r| r.1).sum::<u64>() == lines).then_some(runs)
}

/// A notice about a room's member (a join, a leave, a rename, a kick, a
/// mute) from `node`'s hub, the `seq`-th it sent: `NODE !SEQ:ABOUT TEXT`,
/// ABOUT the local client it is about on NODE (who was told otherwise, so
/// NODE skips it), `-` for nobody. It travels on the room's channel on the
/// same connection as the room's lines, so Redis's order of that channel
/// is the one order of the room; every instance, NODE too, delivers it as
/// it comes back, and NODE tells its own by SEQ (see `events::Delivered`).
/// One line: a receiver refuses one with a CR or LF in it.
pub fn notice_payload(node: &str, seq: u64, about: Option<ClientId>, text: &str) -> String {
    match about {
        Some(c) => format!("{node} !{seq}:{} {text}", c.0),
        None => format!("{node} !{seq}:- {text}"),
    }
}

/// The longest value of a room's topic key taken: a `T` line of the
/// longest topic ([`MAX_TOPIC`]) with the longest node, room and name, and
/// room to spare; independent of --max-line, which may be shorter.
pub const MAX_STORED_TOPIC: usize = 1024;

/// A room's topic as its key keeps it: the `T` presence line that
/// announced it (`T NODE ROOM LOCKED AT BY [TEXT]`, [`encode_presence`]),
/// so one decoder reads both.
pub fn topic_value(node: &str, room: &str, topic: &Topic) -> String {
    encode_presence(&Presence::Topic {
        node: node.into(),
        room: room.to_string(),
        topic: topic.clone(),
    })
}

/// A private line for user `to` (named `to_name`) on another node.
pub fn private_payload(to: u64, to_name: &str, text: &str) -> String {
    format!("{to} {to_name} {text}")
}

/// A ban set on `node` (`line`: [`Ban::to_line`]).
pub fn ban_payload(node: &str, ban: &Ban) -> String {
    format!("B {node} {}", ban.to_line())
}

/// A ban lifted on `node`.
pub fn unban_payload(node: &str, net: &ipnet::IpNet) -> String {
    format!("U {node} {net}")
}

/// How blank lines of a multi-line room payload are taken.
#[derive(Clone, Copy)]
enum Blank {
    /// Skipped (a batch: nothing counts its lines).
    Skip,
    /// Kept as a placeholder: numbered lines must keep their ids in step.
    Keep,
}

/// The decoder for one instance: what arrives on `keys`' channels is
/// checked and cleaned as a client's line would be, for `node`.
#[derive(Debug, Clone)]
pub struct Wire {
    pub keys: Keys,
    pub node: Rc<str>,
    /// The longest line accepted from the other instances.
    pub max_text: usize,
}

impl Wire {
    pub fn new(db: u32, node: &str, max_text: usize) -> Wire {
        Wire {
            keys: Keys::new(db),
            node: node.into(),
            max_text,
        }
    }

    /// A publication: `Ok(None)` when it is not for us (our own lines,
    /// other databases), `Err` when it is malformed (logged and dropped by
    /// the caller).
    pub fn decode(&self, channel: &[u8], payload: &[u8]) -> Result<Option<Inbound>, &'static str> {
        let channel = std::str::from_utf8(channel).map_err(|_| "channel not UTF-8")?;
        let Some(kind) = self.keys.channel(channel) else {
            return Ok(None);
        };
        // Room batches may hold several lines; anything else is one.
        let most = match kind {
            Channel::Room(_) => self.max_text + COALESCE,
            _ => self.max_text,
        };
        if payload.len() > most {
            return Err("too long");
        }
        match kind {
            Channel::Bans => self.decode_ban(payload),
            Channel::PresenceTo(node) if node != &*self.node => Ok(None),
            Channel::Presence | Channel::PresenceTo(_) => {
                let text = std::str::from_utf8(payload).map_err(|_| "presence not UTF-8")?;
                decode_presence(text)
                    .map(|p| Some(Inbound::Presence(p)))
                    .ok_or("bad presence message")
            }
            Channel::Room(room) => self.decode_room(room, payload),
            Channel::Node(node) if node == &*self.node => self.decode_private(payload),
            Channel::Node(_) | Channel::Other => Ok(None),
        }
    }

    fn decode_ban(&self, payload: &[u8]) -> Result<Option<Inbound>, &'static str> {
        let text = std::str::from_utf8(payload).map_err(|_| "ban not UTF-8")?;
        let (kind, rest) = text.split_once(' ').ok_or("bad ban message")?;
        let (node, body) = rest.split_once(' ').ok_or("bad ban message")?;
        if !valid_node(node) {
            return Err("bad node");
        }
        if node == &*self.node {
            return Ok(None);
        }
        match kind {
            "B" => Ban::from_line(body)
                .map(|b| Some(Inbound::Ban(b)))
                .ok_or("bad ban"),
            "U" => crate::access::parse_net(body)
                .map(|n| Some(Inbound::Unban(n)))
                .ok_or("bad unban"),
            _ => Err("bad ban message"),
        }
    }

    /// The three forms of a room publication; every line of each goes
    /// through the same [`Wire::lines`] (one line: CR and LF removed).
    fn decode_room(&self, room: &str, payload: &[u8]) -> Result<Option<Inbound>, &'static str> {
        if !room_key_ok(room) {
            return Err("bad room name");
        }
        let at = payload
            .iter()
            .position(|&c| c == b' ' || c == b'\n')
            .ok_or("no node")?;
        let (node, text) = (&payload[..at], &payload[at + 1..]);
        let node = std::str::from_utf8(node).map_err(|_| "bad node")?;
        if !valid_node(node) {
            return Err("bad node");
        }
        let one = payload[at] == b' ';
        if one && text.first() == Some(&b'=') {
            return self.decode_said(room, node, &text[1..]).map(Some);
        }
        if one && text.first() == Some(&b'!') {
            return self.decode_notice(room, node, &text[1..]).map(Some);
        }
        // Our own lines were delivered locally when they were sent.
        if node == &*self.node {
            return Ok(None);
        }
        if one {
            if text.len() > self.max_text {
                return Err("too long");
            }
            let text = sanitize(text).ok_or("blank line")?;
            if !(room_line_ok(&text) || notice_ok(&text)) {
                return Err("not a room line");
            }
            return Ok(Some(Inbound::Room(room.to_string(), text)));
        }
        let lines = self.lines(text, Blank::Skip)?;
        if lines.is_empty() {
            return Err("blank batch");
        }
        Ok(Some(Inbound::Room(room.to_string(), lines)))
    }

    /// `EPOCH-N:SENDERS\nLINE\nLINE...` from SAY: lines numbered by Redis,
    /// delivered by every instance, the sender's own included. SENDERS
    /// ([`senders`]) must account for every line, each of which is
    /// cleaned and checked as one line of its own; a line that fails
    /// keeps its number as a placeholder.
    fn decode_said(&self, room: &str, node: &str, rest: &[u8]) -> Result<Inbound, &'static str> {
        let nl = rest.iter().position(|&c| c == b'\n').ok_or("no lines")?;
        let head = std::str::from_utf8(&rest[..nl]).map_err(|_| "bad id")?;
        let (id, senders) = head.split_once(':').ok_or("no sender")?;
        let first: Id = id.parse().map_err(|_| "bad id")?;
        let text = self.lines(&rest[nl + 1..], Blank::Keep)?;
        let count = text.split("\r\n").count() as u64;
        let runs = parse_senders(senders, count).ok_or("bad sender")?;
        let room = room.to_string();
        Ok(if node != &*self.node {
            Inbound::Said {
                room,
                first,
                from: None,
                text,
            }
        } else {
            Inbound::numbered(room, first, runs, text)
        })
    }

    /// `SEQ:ABOUT TEXT` ([`notice_payload`]): one line, bounded, cleaned,
    /// a notice about a member ([`member_notice_ok`]); `seq` and `about`
    /// kept only when it is ours.
    fn decode_notice(&self, room: &str, node: &str, rest: &[u8]) -> Result<Inbound, &'static str> {
        if rest.iter().any(|&c| c == b'\r' || c == b'\n') {
            return Err("a notice is one line");
        }
        let (head, text) = split(rest).ok_or("no notice")?;
        let head = std::str::from_utf8(head).map_err(|_| "bad notice header")?;
        let (seq, about) = head.split_once(':').ok_or("no member")?;
        let seq: u64 = seq.parse().map_err(|_| "bad notice number")?;
        let about = match about {
            "-" => None,
            n => Some(ClientId(n.parse().map_err(|_| "bad member")?)),
        };
        if text.len() > self.max_text {
            return Err("too long");
        }
        let text = sanitize(text).ok_or("blank notice")?;
        if !member_notice_ok(&text) {
            return Err("not a notice about a member");
        }
        let ours = node == &*self.node;
        Ok(Inbound::Notice {
            room: room.to_string(),
            about: about.filter(|_| ours),
            text,
            seq: ours.then_some(seq),
        })
    }

    /// LF-separated lines, each bounded and cleaned as a line of its own,
    /// and each a room line ([`room_line_ok`]: never a notice, which only
    /// travels alone), joined with CRLF (as the hub takes a batch).
    fn lines(&self, text: &[u8], blank: Blank) -> Result<String, &'static str> {
        let mut lines = Vec::new();
        for line in text.split(|&c| c == b'\n') {
            if line.len() > self.max_text {
                return Err("too long");
            }
            match (sanitize(line), blank) {
                (Some(clean), _) if room_line_ok(&clean) => lines.push(clean),
                (Some(_), Blank::Keep) => lines.push("<?> (not a room line)".into()),
                (None, Blank::Keep) => lines.push("<?> (blank)".into()),
                (_, Blank::Skip) => {}
            }
        }
        Ok(lines.join("\r\n"))
    }

    fn decode_private(&self, payload: &[u8]) -> Result<Option<Inbound>, &'static str> {
        let (to, rest) = split(payload).ok_or("no recipient")?;
        let (name, text) = split(rest).ok_or("no name")?;
        let to = std::str::from_utf8(to)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(ClientId)
            .ok_or("bad recipient")?;
        let name = std::str::from_utf8(name).map_err(|_| "bad name")?;
        if !name_ok(name) {
            return Err("bad name");
        }
        let text = sanitize(text).ok_or("blank line")?;
        Ok(Some(Inbound::Private(to, name.to_string(), text)))
    }

    /// A READ answer, checked and cleaned as anything from Redis: the
    /// room's epoch (0: none), its last N, and its lines, oldest first.
    pub fn read_answer(&self, f: OwnedFrame) -> Option<(u64, u64, Vec<Line>)> {
        let OwnedFrame::Array(parts) = f else {
            return None;
        };
        let text = |i: usize| text_at(&parts, i);
        let epoch = text(0)?;
        let epoch: u64 = if epoch.is_empty() {
            0
        } else {
            epoch.parse().ok()?
        };
        let last: u64 = text(1)?.parse().ok()?;
        let mut lines = Vec::new();
        let mut i = 2;
        while i + 2 < parts.len() {
            let (Some(id), Some(ms), Some(raw)) =
                (text(i), text(i + 1), parts.get(i + 2).and_then(frame_bytes))
            else {
                return None;
            };
            i += 3;
            let id: Id = id.parse().ok()?;
            // Lines of an older record of the room (its epoch was lost while
            // the stream lived on) are not this record's.
            if id.epoch != epoch || raw.len() > self.max_text {
                continue;
            }
            if let Some(clean) = sanitize(raw).filter(|l| room_line_ok(l)) {
                lines.push(Line::new(id.n, ms.parse().unwrap_or(0), &clean));
            }
        }
        lines.reverse();
        Some((epoch, last, lines))
    }

    /// A room's topic as read back from its key (anyone who can reach
    /// Redis can write it): one line, at most [`MAX_STORED_TOPIC`] bytes, and a `T`
    /// presence line for this room, decoded as one from another instance
    /// is (names checked, the text cleaned and bounded). Empty: no topic.
    pub fn stored_topic(&self, room: &str, value: &[u8]) -> Result<Option<Topic>, &'static str> {
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() > MAX_STORED_TOPIC {
            return Err("a stored topic too long");
        }
        if value.iter().any(|&c| c == b'\r' || c == b'\n') {
            return Err("a stored topic is one line");
        }
        let text = std::str::from_utf8(value).map_err(|_| "a stored topic not UTF-8")?;
        match decode_presence(text) {
            Some(Presence::Topic { room: r, topic, .. }) if r == room => Ok(Some(topic)),
            Some(Presence::Topic { .. }) => Err("a stored topic of another room"),
            _ => Err("bad stored topic"),
        }
    }

    /// One entry of the bans hash, checked like any publication (anyone
    /// who can reach Redis can write it): a ban whose line parses and
    /// names the field's net.
    pub fn ban_entry(&self, field: &[u8], value: &[u8]) -> Option<Ban> {
        std::str::from_utf8(value)
            .ok()
            .filter(|v| v.len() <= self.max_text)
            .and_then(Ban::from_line)
            .filter(|b| field == b.net.to_string().as_bytes())
    }
}

/// How many lines a READ answer says it left out (its last element, after
/// the epoch, the last N and the triples of its lines).
pub fn left_out(f: &OwnedFrame) -> u64 {
    match f {
        OwnedFrame::Array(parts) if parts.len() >= 3 && (parts.len() - 2) % 3 == 1 => parts
            .last()
            .and_then(frame_bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The text of element `i` of an answer, if it is a UTF-8 string.
fn text_at(parts: &[OwnedFrame], i: usize) -> Option<&str> {
    parts
        .get(i)
        .and_then(frame_bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
}

/// A field and its value.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// A page of the bans hash from [`super::scripts::BANS`]: the next cursor
/// (None: it was the last page, or the answer is not one), how many
/// entries Redis left out, and the (field, value) pairs.
pub fn bans_page(f: &OwnedFrame) -> Option<(Option<String>, u64, Vec<Pair<'_>>)> {
    let OwnedFrame::Array(parts) = f else {
        return None;
    };
    let text = |i: usize| text_at(parts, i);
    let cursor = text(0)?;
    // A cursor is a number: anything else would be sent back to Redis.
    cursor.parse::<u64>().ok()?;
    let out = text(1)?.parse().ok()?;
    let pairs = parts[2..]
        .chunks(2)
        .filter_map(|p| Some((frame_bytes(p.first()?)?, frame_bytes(p.get(1)?)?)))
        .collect();
    let next = (cursor != "0").then(|| cursor.to_string());
    Some((next, out, pairs))
}

/// `WORD REST` at the first space.
fn split(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b' ')?;
    Some((&b[..i], &b[i + 1..]))
}

/// `H node` | `B node` | `J node id name ROOMS round` | `L node id` |
/// `N node id name` | `R node id [@]shown` | `P node id room` |
/// `O node id room +|-` | `K node id room` | `A node id [TEXT]` |
/// `T node room LOCKED AT BY [TEXT]` | `E node round` | `W node`.
/// ROOMS: the rooms a user is in, `[@]shown` joined by commas (`@`: one of
/// its operators; the key is `shown` lowercased), or `*` for none. Names,
/// rooms and node ids contain no spaces; a TEXT (an away message, a topic)
/// is the rest of the line.
pub fn encode_presence(event: &Presence) -> String {
    let at = |r: &InRoom| format!("{}{}", if r.op { "@" } else { "" }, r.shown);
    match event {
        Presence::Hello { node } => format!("H {node}"),
        Presence::Bye { node } => format!("B {node}"),
        Presence::Here {
            node,
            id,
            name,
            rooms,
            round,
        } => {
            let list = if rooms.is_empty() {
                "*".to_string()
            } else {
                rooms.iter().map(at).collect::<Vec<_>>().join(",")
            };
            format!("J {node} {id} {name} {list} {round}")
        }
        Presence::Gone { node, id } => format!("L {node} {id}"),
        Presence::Renamed { node, id, name } => format!("N {node} {id} {name}"),
        Presence::Joined { node, id, room } => format!("R {node} {id} {}", at(room)),
        Presence::Parted { node, id, room } => format!("P {node} {id} {room}"),
        Presence::Opped { node, id, room, op } => {
            format!("O {node} {id} {room} {}", if *op { '+' } else { '-' })
        }
        Presence::Kicked { node, id, room } => format!("K {node} {id} {room}"),
        Presence::Away { node, id, text } => {
            format!("A {node} {id} {}", text.as_deref().unwrap_or_default())
        }
        Presence::Seen {
            node,
            id,
            since_ms,
            active_ms,
        } => format!("S {node} {id} {since_ms} {active_ms}"),
        Presence::Topic { node, room, topic } => format!(
            "T {node} {room} {} {} {} {}",
            u8::from(topic.locked),
            topic.at_ms,
            topic.by,
            topic.text
        ),
        Presence::End { node, round } => format!("E {node} {round}"),
        Presence::Who { node } => format!("W {node}"),
    }
}

/// `[@]shown` as a room a user is in.
fn in_room(s: &str) -> Option<InRoom> {
    let (op, shown) = match s.strip_prefix('@') {
        Some(shown) => (true, shown),
        None => (false, s),
    };
    name_ok(shown).then(|| InRoom {
        key: shown.to_ascii_lowercase(),
        shown: shown.to_string(),
        op,
    })
}

/// A text from another instance (an away message, a topic): cleaned as a
/// client's line is, and bounded as the hub bounds its own.
fn presence_text(s: &str, max: usize) -> Option<String> {
    if s.trim().is_empty() {
        return Some(String::new());
    }
    let text = sanitize(s.as_bytes())?;
    let text = text.trim();
    (text.len() <= max && !text.chars().any(char::is_control)).then(|| text.to_string())
}

/// Parses a presence message, accepting only what the hub's own rules
/// allow: node ids, names and room names as a client could choose them.
pub fn decode_presence(s: &str) -> Option<Presence> {
    let f: Vec<&str> = s.split(' ').collect();
    let node = *f.get(1)?;
    if !valid_node(node) {
        return None;
    }
    let node: Rc<str> = node.into();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let name = |i: usize| f.get(i).filter(|n| name_ok(n)).map(|n| n.to_string());
    let room = |i: usize| f.get(i).filter(|r| room_key_ok(r)).map(|r| r.to_string());
    // The rest of the line from field `i` on (a text may hold spaces).
    let rest = |i: usize| s.splitn(i + 1, ' ').nth(i).unwrap_or_default();
    Some(match (f[0], f.len()) {
        ("H", 2) => Presence::Hello { node },
        ("B", 2) => Presence::Bye { node },
        ("J", 6) => {
            let list = *f.get(4)?;
            let rooms = if list == "*" {
                Vec::new()
            } else {
                let rooms: Option<Vec<InRoom>> = list.split(',').map(in_room).collect();
                rooms.filter(|r| r.len() <= MAX_ROOMS_PER_USER as usize)?
            };
            Presence::Here {
                node,
                id: num(2)?,
                name: name(3)?,
                rooms,
                round: num(5)?,
            }
        }
        ("L", 3) => Presence::Gone { node, id: num(2)? },
        ("N", 4) => Presence::Renamed {
            node,
            id: num(2)?,
            name: name(3)?,
        },
        ("R", 4) => Presence::Joined {
            node,
            id: num(2)?,
            room: in_room(f[3])?,
        },
        ("P", 4) => Presence::Parted {
            node,
            id: num(2)?,
            room: room(3)?,
        },
        ("O", 5) => Presence::Opped {
            node,
            id: num(2)?,
            room: room(3)?,
            op: match f[4] {
                "+" => true,
                "-" => false,
                _ => return None,
            },
        },
        ("K", 4) => Presence::Kicked {
            node,
            id: num(2)?,
            room: room(3)?,
        },
        ("A", n) if n >= 4 => {
            let text = presence_text(rest(3), 4 * MAX_REASON)?;
            Presence::Away {
                node,
                id: num(2)?,
                text: Some(text).filter(|t| !t.is_empty()),
            }
        }
        ("S", 5) => Presence::Seen {
            node,
            id: num(2)?,
            since_ms: num(3)?,
            active_ms: num(4)?,
        },
        ("T", n) if n >= 7 => Presence::Topic {
            node,
            room: room(2)?,
            topic: Topic {
                locked: match f[3] {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
                at_ms: num(4)?,
                by: name(5)?.into(),
                text: presence_text(rest(6), MAX_TOPIC)?.into(),
            },
        },
        ("E", 3) => Presence::End {
            node,
            round: num(2)?,
        },
        ("W", 2) => Presence::Who { node },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_round_trips() {
        let node: Rc<str> = "n1~3f".into();
        for e in [
            Presence::Hello { node: node.clone() },
            Presence::Bye { node: node.clone() },
            Presence::Here {
                node: node.clone(),
                id: 7,
                name: "alice".into(),
                rooms: vec![
                    InRoom {
                        key: "games".into(),
                        shown: "Games".into(),
                        op: true,
                    },
                    InRoom {
                        key: "lobby".into(),
                        shown: "lobby".into(),
                        op: false,
                    },
                ],
                round: 3,
            },
            Presence::Here {
                node: node.clone(),
                id: 8,
                name: "bob".into(),
                rooms: vec![],
                round: 3,
            },
            Presence::Gone {
                node: node.clone(),
                id: 7,
            },
            Presence::Renamed {
                node: node.clone(),
                id: 7,
                name: "al".into(),
            },
            Presence::Joined {
                node: node.clone(),
                id: 7,
                room: InRoom {
                    key: "dev".into(),
                    shown: "Dev".into(),
                    op: false,
                },
            },
            Presence::Parted {
                node: node.clone(),
                id: 7,
                room: "dev".into(),
            },
            Presence::Opped {
                node: node.clone(),
                id: 7,
                room: "dev".into(),
                op: true,
            },
            Presence::Kicked {
                node: node.clone(),
                id: 7,
                room: "dev".into(),
            },
            Presence::Away {
                node: node.clone(),
                id: 7,
                text: Some("out to lunch".into()),
            },
            Presence::Away {
                node: node.clone(),
                id: 7,
                text: None,
            },
            Presence::Seen {
                node: node.clone(),
                id: 7,
                since_ms: 1_796_683_000_000,
                active_ms: 1_796_683_266_123,
            },
            Presence::Topic {
                node: node.clone(),
                room: "dev".into(),
                topic: Topic {
                    text: "ship it: friday".into(),
                    by: "alice".into(),
                    at_ms: 1_796_683_266_123,
                    locked: true,
                },
            },
            Presence::End {
                node: node.clone(),
                round: 3,
            },
            Presence::Who { node: node.clone() },
        ] {
            assert_eq!(decode_presence(&encode_presence(&e)), Some(e));
        }
        assert_eq!(decode_presence("J n1 x a b 1"), None);
        // Texts are cleaned as a client's line is.
        assert_eq!(
            decode_presence("A n1 1 \x1b[2Jout"),
            Some(Presence::Away {
                node: "n1".into(),
                id: 1,
                text: Some("[2Jout".into())
            })
        );
        assert_eq!(decode_presence(""), None);
    }

    #[test]
    fn presence_with_what_a_client_could_not_choose_is_refused() {
        for bad in [
            "J n1 1 bad\x1bname lobby 1",
            "J n1 1 ali\r\nce lobby 1",
            "J n1 1 waytoolongforanameinthischat lobby 1",
            "J n1 1 guest-1 lob\x07by 1",
            "J n1 1 alice lobby,,games 1", // an empty room
            "J n1 1 alice @@lobby 1",
            "J n1 1  lobby 1", // empty name
            "J n\x1b1 1 alice lobby 1",
            "J n1 1 alice lobby",
            "J n1 1 alice lobby lobby 1", // the old form: one room, twice
            "N n1 1 x\r\ny",
            "N n1 1 ",
            "R n1 1 room\u{9b}",
            "P n1 1 Lobby", // a room key is lowercase
            "O n1 1 lobby x",
            "T n1 lobby 2 1 alice topic",
            "T n1 lobby 1 1 bad\x1bname topic",
            "E n1 x",
            "W",
            "Z n1",
            "H n1 extra",
        ] {
            assert_eq!(decode_presence(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_earlier_claim_wins_and_both_sides_agree() {
        let a = claim_value(1000, "n1~a", ClientId(3));
        // Other instances parse it (mixed versions too): the plain number.
        assert_eq!(a, "1000 n1~a 3");
        let b = claim_value(1001, "n2~b", ClientId(1));
        assert!(claim_wins(&a, &b) && !claim_wins(&b, &a), "earlier wins");
        // Same millisecond: the node id decides, then the user id.
        let c = claim_value(1000, "n0~z", ClientId(9));
        assert!(claim_wins(&c, &a) && !claim_wins(&a, &c));
        let d = claim_value(1000, "n1~a", ClientId(4));
        assert!(claim_wins(&a, &d) && !claim_wins(&d, &a));
        // A lost node's user is known by the end of its claims.
        assert!(a.ends_with(&claim_tail("n1~a", 3)));
        assert!(!a.ends_with(&claim_tail("1~a", 3)), "another node");
        assert!(!a.ends_with(&claim_tail("n1~a", 13)), "another user");
        // Exactly one of any two different claims wins.
        for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&a, &d)] {
            assert!(claim_wins(x, y) != claim_wins(y, x), "{x} vs {y}");
        }
        // Something that is not a claim never keeps a name.
        for junk in ["", "n1~a:3", "x n1 3", "1 n1 3 extra"] {
            assert!(claim_wins(&a, junk), "{junk:?}");
            assert!(!claim_wins(junk, &a), "{junk:?}");
        }
    }

    #[test]
    fn the_replication_id_and_role_are_read_from_info() {
        let info = b"# Cluster\r\ncluster_enabled:0\r\n# Replication\r\nrole:master\r\nmaster_replid:ab12\r\nmaster_replid2:00\r\n";
        assert_eq!(info_field(info, "master_replid"), Some("ab12"));
        assert_eq!(info_field(info, "role"), Some("master"));
        assert_eq!(info_field(info, "master_repl"), None);
        assert_eq!(info_field(b"", "role"), None);
    }

    #[test]
    fn a_redis_cluster_node_is_told_apart_by_its_info() {
        assert!(redis_cluster(b"# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!redis_cluster(b"# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!redis_cluster(b""));
        assert!(!redis_cluster(b"x_cluster_enabled:1"));
        assert!(REDIS_CLUSTER.contains("issue 24"));
    }

    fn wire() -> Wire {
        Wire::new(3, "me~1", 100)
    }

    fn ok(w: &Wire, channel: &str, payload: &str) -> Inbound {
        match w.decode(channel.as_bytes(), payload.as_bytes()) {
            Ok(Some(event)) => event,
            other => panic!("{channel} {payload:?}: {other:?}"),
        }
    }

    #[test]
    fn every_name_is_spelled_here_and_read_back() {
        let k = Keys::new(3);
        assert_eq!(k.room("lobby"), "chatd:3:r:lobby");
        assert_eq!(k.presence(), "chatd:3:p");
        assert_eq!(k.node("n1~a"), "chatd:3:n:n1~a");
        assert_eq!(k.bans_channel(), "chatd:3:b");
        assert_eq!(k.bans(), "chatd:3:bans");
        assert_eq!(k.unbans(), "chatd:3:unbans");
        let (meta, stream) = k.history("lobby");
        assert_eq!(
            (meta.as_str(), stream.as_str()),
            ("chatd:3:h:lobby", "chatd:3:s:lobby")
        );
        assert_eq!(Keys::name("alice"), "chatd:name:alice");
        assert_eq!(Keys::alive("n1~a"), "chatd:alive:n1~a");
        assert_eq!(Keys::GUESTS, "chatd:guests");
        for (channel, kind) in [
            (k.room("lobby"), Some(Channel::Room("lobby"))),
            (k.presence(), Some(Channel::Presence)),
            (k.presence_to("n1~a"), Some(Channel::PresenceTo("n1~a"))),
            (k.node("n1~a"), Some(Channel::Node("n1~a"))),
            (k.bans_channel(), Some(Channel::Bans)),
            (k.bans(), Some(Channel::Other)),
            (Keys::new(4).room("lobby"), None),
        ] {
            assert_eq!(k.channel(&channel), kind, "{channel}");
        }
    }

    #[test]
    fn every_payload_round_trips() {
        let (me, them) = (wire(), Wire::new(3, "n2~5", 100));
        let room = me.keys.room("lobby");
        // One line, a batch: for the others, not for us.
        let one = room_payload("n2~5", "<b> hi");
        assert_eq!(
            ok(&me, &room, &one),
            Inbound::Room("lobby".into(), "<b> hi".into())
        );
        assert_eq!(them.decode(room.as_bytes(), one.as_bytes()), Ok(None));
        let batch = room_payload("n2~5", "<b> one\r\n<b> two");
        assert_eq!(
            ok(&me, &room, &batch),
            Inbound::Room("lobby".into(), "<b> one\r\n<b> two".into())
        );
        // Numbered: for everyone, ours with our sender.
        let first = Id { epoch: 17, n: 4 };
        let said = said_payload("me~1", first, ClientId(9), "<a> x\r\n<a> y");
        assert_eq!(said, "me~1 =17-4:9\n<a> x\n<a> y");
        for (w, from) in [(&me, Some(ClientId(9))), (&them, None)] {
            assert_eq!(
                ok(w, &room, &said),
                Inbound::Said {
                    room: "lobby".into(),
                    first,
                    from,
                    text: "<a> x\r\n<a> y".into(),
                }
            );
        }
        let private = private_payload(4, "bob", "*alice* psst");
        assert_eq!(
            ok(&me, &me.keys.node("me~1"), &private),
            Inbound::Private(ClientId(4), "bob".into(), "*alice* psst".into())
        );
        let ban = Ban::from_line("10.0.0.0/8\tpermanent\top\tspam").unwrap();
        let bans = me.keys.bans_channel();
        assert_eq!(
            ok(&me, &bans, &ban_payload("n2~5", &ban)),
            Inbound::Ban(ban.clone())
        );
        assert_eq!(
            me.decode(bans.as_bytes(), ban_payload("me~1", &ban).as_bytes()),
            Ok(None),
            "our own ban"
        );
        assert_eq!(
            ok(&me, &bans, &unban_payload("n2~5", &ban.net)),
            Inbound::Unban(ban.net)
        );
        let hello = Presence::Hello {
            node: "n2~5".into(),
        };
        assert_eq!(
            ok(&me, &me.keys.presence(), &encode_presence(&hello)),
            Inbound::Presence(hello.clone())
        );
        // A roster for us alone is read as any presence; one for another
        // node is not ours.
        let mine = me.keys.presence_to(&me.node);
        assert_eq!(
            ok(&me, &mine, &encode_presence(&hello)),
            Inbound::Presence(hello.clone())
        );
        let theirs = me.keys.presence_to("n2~5");
        let text = encode_presence(&hello);
        assert_eq!(me.decode(theirs.as_bytes(), text.as_bytes()), Ok(None));
    }

    #[test]
    fn a_stored_topic_is_read_as_its_presence_and_nothing_else() {
        let w = wire();
        assert_eq!(w.keys.topic("games"), "chatd:3:t:games");
        let topic = Topic {
            text: "dice at nine".into(),
            by: "alice".into(),
            at_ms: 1_796_683_266_123,
            locked: true,
        };
        let value = topic_value("n1~2", "games", &topic);
        assert_eq!(w.stored_topic("games", value.as_bytes()), Ok(Some(topic)));
        assert_eq!(w.stored_topic("games", b""), Ok(None));
        // Escapes are removed from the text, as from any presence.
        let got = w.stored_topic("games", b"T n1 games 0 1 bob hi\x1b[2J there");
        assert_eq!(
            got.map(|t| t.map(|t| t.text)),
            Ok(Some("hi[2J there".into()))
        );
        // Too long: more than MAX_STORED_TOPIC, or a text over MAX_TOPIC.
        let long = format!("T n1 games 0 1 bob {}", "x".repeat(MAX_STORED_TOPIC));
        let wordy = format!("T n1 games 0 1 bob {}", "x".repeat(MAX_TOPIC + 1));
        for bad in [
            &b"T n1 games 0 1 bad\x1bname hi"[..],
            b"T n1 games 0 1 bob hi\r\n*** you are now an operator",
            b"T n1 games 0 1 bob hi\nthere",
            b"T n1 lobby 0 1 bob another room's",
            b"T n1 Games 0 1 bob not a room key",
            b"T n1 games 2 1 bob bad lock",
            b"T n1 games 0 x bob bad time",
            b"J n1 1 alice games 1",
            b"T n1 games 0 1 bob \xff\xfe",
            long.as_bytes(),
            wordy.as_bytes(),
        ] {
            assert!(w.stored_topic("games", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let w = wire();
        let room = w.keys.room("lobby");
        let node = w.keys.node("me~1");
        let bans = w.keys.bans_channel();
        let long = format!("4 bob {}", "x".repeat(100));
        for (channel, payload) in [
            // A bad node, in each kind that names one.
            (room.as_str(), "n\x1b2 <m> hi"),
            (&room, "n2\u{202e} =17-4:3\n<m> hi"),
            (&room, &format!("{} <m> hi", "n".repeat(49))),
            (&bans, "U n\r\n2 10.0.0.0/8"),
            (&bans, "B  10.0.0.0/8\tpermanent\top\t"),
            // A bad header.
            (&room, "n2 =17-4\n<m> hi"),
            (&room, "n2 =17-4:x\n<m> hi"),
            (&room, "n2 =17-4:3\r\n"),
            (&room, "n2 =x\n<m> hi"),
            // A bad name inside the payload.
            (&node, "4 b\rob hi"),
            (&node, "4 b\u{9b}ob hi"),
            (&node, "4 bo\u{202e}b hi"),
            (&node, "4  hi"),
            (&bans, "X n2 10.0.0.0/8"),
            (&bans, "U n2 nonsense"),
            // Too long for one line.
            (&node, &long),
            (&room, &format!("n2 =17-4:3\n<m> {}", "x".repeat(100))),
        ] {
            assert!(
                w.decode(channel.as_bytes(), payload.as_bytes()).is_err(),
                "{channel} {payload:?}"
            );
        }
        assert_eq!(
            w.decode(
                b"chatd:3:r:lobby",
                format!("n2 {}", "x".repeat(100 + COALESCE)).as_bytes()
            ),
            Err("too long")
        );
        assert_eq!(
            w.decode(b"chatd:3:r:lob\xe2\x80\xaeby", b"n2 hi"),
            Err("bad room name")
        );
    }

    /// The forged text an instance nobody vouches for could publish: a
    /// line break, a terminal escape, a C1 control, a bidi override.
    const FORGED: &str = "<m> hi\r\x1b[2J\u{9b}31m\u{202e}evil";

    #[test]
    fn both_room_formats_clean_their_lines_alike() {
        let w = wire();
        let room = w.keys.room("lobby");
        let plain = ok(&w, &room, &format!("n2 {FORGED}"));
        let numbered = ok(&w, &room, &format!("n2 =17-4:3\n{FORGED}\n{FORGED}"));
        let batch = ok(&w, &room, &format!("n2\n{FORGED}\n{FORGED}"));
        let Inbound::Room(_, plain) = plain else {
            panic!("{plain:?}")
        };
        let Inbound::Said { text: numbered, .. } = numbered else {
            panic!("{numbered:?}")
        };
        let Inbound::Room(_, batch) = batch else {
            panic!("{batch:?}")
        };
        let clean = sanitize(FORGED.as_bytes()).unwrap();
        assert!(
            !clean.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{clean:?}"
        );
        assert_eq!(plain, clean);
        assert_eq!(numbered, format!("{clean}\r\n{clean}"));
        assert_eq!(batch, numbered);
        // Blank numbered lines keep their number; blank batch lines go.
        let Inbound::Said { text, .. } = ok(&w, &room, "n2 =17-4:3\n\x1b\n<m> b") else {
            panic!()
        };
        assert_eq!(text, "<?> (blank)\r\n<m> b");
    }

    #[test]
    fn every_room_format_refuses_what_is_not_a_room_line() {
        let w = wire();
        let room = w.keys.room("lobby");
        let notice = "*** bobby is now admin";
        // Numbered: the forged line keeps its number, as a placeholder.
        for sep in ["\n", "\r\n"] {
            let Inbound::Said { text, .. } =
                ok(&w, &room, &format!("n2 =17-4:3\n<m> hi{sep}{notice}"))
            else {
                panic!()
            };
            assert_eq!(text, "<m> hi\r\n<?> (not a room line)", "{sep:?}");
        }
        // A batch: the forged line goes.
        let Inbound::Room(_, text) = ok(&w, &room, &format!("n2\n<m> hi\n{notice}\n* m waves"))
        else {
            panic!()
        };
        assert_eq!(text, "<m> hi\r\n* m waves");
        assert!(
            w.decode(room.as_bytes(), format!("n2\n{notice}").as_bytes())
                .is_err()
        );
        // Senders no client could be.
        for bad in [
            "<bad name> x",
            "<> x",
            "* b@d x",
            "*m x",
            "<m>x",
            "hello",
            "<waytoolongforanameinthischat> x",
        ] {
            assert!(!room_line_ok(bad), "{bad:?}");
            assert!(
                w.decode(room.as_bytes(), format!("n2 {bad}").as_bytes())
                    .is_err(),
                "{bad:?}"
            );
            let Inbound::Said { text, .. } = ok(&w, &room, &format!("n2 =17-4:3\n{bad}")) else {
                panic!()
            };
            assert_eq!(text, "<?> (not a room line)", "{bad:?}");
        }
        for good in ["<m> hi", "<guest-12> /x", "* m waves", "<A.b_c-d> "] {
            assert!(room_line_ok(good), "{good:?}");
        }
        // What sanitize would have removed is refused even so.
        for c in [
            '\r', '\n', '\x1b', '\u{9b}', '\u{202e}', '\u{2067}', '\u{200f}',
        ] {
            assert!(!room_line_ok(&format!("<m> a{c}b")), "{c:?}");
            assert!(!notice_ok(&format!("*** a{c}b")), "{c:?}");
        }
        // One notice alone, unnumbered, is another hub's (a join, a leave).
        assert_eq!(
            ok(&w, &room, &format!("n2 {notice}")),
            Inbound::Room("lobby".into(), notice.into())
        );
    }

    #[test]
    fn a_room_notice_round_trips_and_is_ours_only_by_its_node() {
        let (me, them) = (wire(), Wire::new(3, "n2~5", 100));
        let room = me.keys.room("lobby");
        let payload = notice_payload("n2~5", 3, Some(ClientId(4)), "*** bob left #lobby");
        assert_eq!(payload, "n2~5 !3:4 *** bob left #lobby");
        // Another instance's: nobody to skip here, no number to keep.
        assert_eq!(
            ok(&me, &room, &payload),
            Inbound::Notice {
                room: "lobby".into(),
                about: None,
                text: "*** bob left #lobby".into(),
                seq: None,
            }
        );
        // Ours: delivered too (the room's one order), skipping its member.
        assert_eq!(
            ok(&them, &room, &payload),
            Inbound::Notice {
                room: "lobby".into(),
                about: Some(ClientId(4)),
                text: "*** bob left #lobby".into(),
                seq: Some(3),
            }
        );
        let nobody = notice_payload("n2~5", 4, None, "*** bob was muted by op for 5m");
        assert!(matches!(
            ok(&them, &room, &nobody),
            Inbound::Notice {
                about: None,
                seq: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn forged_room_notices_are_cleaned_or_refused() {
        let w = wire();
        let room = w.keys.room("lobby");
        // ESC and C1 controls are removed, as from a client's line.
        let Inbound::Notice { text, .. } =
            ok(&w, &room, "n2 !1:- *** bob joined #lobby\x1b[2J\u{9b}31m!")
        else {
            panic!()
        };
        assert_eq!(text, "*** bob joined #lobby[2J31m!");
        // Bidi controls go, as from a client's line.
        for (forged, clean) in [
            (
                "n2 !1:- *** bob joined \u{202e}nimda",
                "*** bob joined nimda",
            ),
            ("n2 !1:- *** bob\u{2067} joined", "*** bob joined"),
        ] {
            let Inbound::Notice { text, .. } = ok(&w, &room, forged) else {
                panic!()
            };
            assert_eq!(text, clean);
        }
        // Where it spoils the name, it is refused.
        assert!(
            w.decode(room.as_bytes(), "n2 !1:- *** bob\x1b[2J joined".as_bytes())
                .is_err()
        );
        for bad in [
            // One line only: a line break anywhere refuses it whole.
            "n2 !1:- *** bob joined\r\n*** bobby is now admin".to_string(),
            "n2 !1:- *** bob joined\n*** bobby is now admin".into(),
            "n2 !1:- *** bob joined\r*** bobby is now admin".into(),
            "n2 !1:- *** bob joined\r\n".into(),
            // Too long for one line (max_text 100 here).
            format!("n2 !1:- *** bob said {}", "x".repeat(100)),
            // Not a notice about a member.
            "n2 !1:- *** error: you are banned".into(),
            "n2 !1:- *** cluster link down: messages reach this server only".into(),
            "n2 !1:- *** bob".into(),
            "n2 !1:- *** bob is admin now".into(),
            "n2 !1:- *** bob joinedx".into(),
            "n2 !1:- <bob> hi".into(),
            "n2 !1:- hello".into(),
            "n2 !1:- ***bob joined".into(),
            "n2 !1:- *** b@d joined".into(),
            "n2 !1:- \x1b".into(),
            // A bad header or node.
            "n2 !x:- *** bob joined".into(),
            "n2 !1:x *** bob joined".into(),
            "n2 !1:-1 *** bob joined".into(),
            "n2 !1 *** bob joined".into(),
            "n2 !:- *** bob joined".into(),
            "n2 !1:-".into(),
            "n\x1b2 !1:- *** bob joined".into(),
            "n2\u{202e} !1:- *** bob joined".into(),
        ] {
            assert!(
                w.decode(room.as_bytes(), bad.as_bytes()).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            w.decode(b"chatd:3:r:lob\xe2\x80\xaeby", b"n2 !1:- *** bob joined"),
            Err("bad room name")
        );
        // Invalid UTF-8 is replaced, as from a client.
        let Inbound::Notice { text, .. } = ok(&w, &room, "n2 !1:- *** bob joined") else {
            panic!()
        };
        assert_eq!(text, "*** bob joined");
        let raw = w.decode(room.as_bytes(), b"n2 !1:- *** bob joined \xff");
        assert!(
            matches!(&raw, Ok(Some(Inbound::Notice { text, .. })) if text == "*** bob joined \u{fffd}"),
            "{raw:?}"
        );
    }

    #[test]
    fn history_and_bans_from_redis_are_checked_like_publications() {
        let w = wire();
        let bulk = |s: &str| OwnedFrame::BulkString(s.as_bytes().to_vec());
        let answer = OwnedFrame::Array(vec![
            bulk("17"),
            bulk("9"),
            bulk("17-9"),
            bulk("1000"),
            bulk("<a> new\x1b[2J"),
            bulk("16-8"),
            bulk("999"),
            bulk("<a> an older record's"),
            bulk("17-7"),
            bulk("998"),
            bulk(&format!("<a> {}", "x".repeat(100))),
            bulk("17-6"),
            bulk("997"),
            bulk("<a> old"),
        ]);
        let (epoch, last, lines) = w.read_answer(answer).unwrap();
        assert_eq!((epoch, last), (17, 9));
        let lines: Vec<_> = lines.iter().map(|l| (l.n, l.text.to_string())).collect();
        assert_eq!(lines, [(6, "<a> old".into()), (9, "<a> new[2J".into())]);
        assert_eq!(
            w.read_answer(OwnedFrame::Array(vec![bulk("x"), bulk("1")])),
            None
        );
        assert_eq!(w.read_answer(OwnedFrame::Integer(1)), None);
        let line = "10.0.0.0/8\tpermanent\top\tspam";
        assert!(w.ban_entry(b"10.0.0.0/8", line.as_bytes()).is_some());
        assert_eq!(
            w.ban_entry(b"10.0.0.1/32", line.as_bytes()),
            None,
            "another net"
        );
        assert_eq!(w.ban_entry(b"10.0.0.0/8", b"junk"), None);
    }

    #[test]
    fn what_redis_left_out_is_read_from_its_answers() {
        let bulk = |s: &str| OwnedFrame::BulkString(s.as_bytes().to_vec());
        let line = [bulk("17-9"), bulk("1000"), bulk("<a> x")];
        let with = |tail: &[OwnedFrame]| {
            let mut v = vec![bulk("17"), bulk("9")];
            v.extend(line.iter().cloned());
            v.extend(tail.iter().cloned());
            OwnedFrame::Array(v)
        };
        assert_eq!(left_out(&with(&[bulk("998")])), 998);
        assert_eq!(left_out(&with(&[])), 0, "an answer without the count");
        let w = wire();
        let (_, _, lines) = w.read_answer(with(&[bulk("998")])).unwrap();
        assert_eq!(lines.len(), 1, "the count is not a line");
        // A page of the bans: its cursor, what was left out, the pairs.
        let page = OwnedFrame::Array(vec![bulk("42"), bulk("3"), bulk("f"), bulk("v")]);
        let (next, out, pairs) = bans_page(&page).unwrap();
        assert_eq!((next.as_deref(), out), (Some("42"), 3));
        assert_eq!(pairs, [(&b"f"[..], &b"v"[..])]);
        let last = OwnedFrame::Array(vec![bulk("0"), bulk("0")]);
        assert_eq!(bans_page(&last).map(|p| p.0), Some(None));
        let bad = OwnedFrame::Array(vec![bulk("1 2"), bulk("0")]);
        assert!(bans_page(&bad).is_none(), "a cursor is a number");
        assert!(bans_page(&OwnedFrame::Integer(0)).is_none());
    }

    /// Issue 21: a batch of several local senders' lines carries who said
    /// which (`SENDER*COUNT,...`); read back only when every sender is a
    /// number and the counts cover the lines exactly.
    #[test]
    fn a_batch_names_its_senders_and_forged_ones_are_refused() {
        let (me, them) = (wire(), Wire::new(3, "n2~5", 100));
        let room = me.keys.room("lobby");
        let runs = [(ClientId(9), 2), (ClientId(4), 1)];
        assert_eq!(senders(&runs), "9*2,4*1");
        assert_eq!(senders(&[(ClientId(9), 3)]), "9", "one sender: as before");
        assert_eq!(parse_senders("9*2,4*1", 3), Some(runs.to_vec()));
        assert_eq!(parse_senders("9", 3), Some(vec![(ClientId(9), 3)]));
        let first = Id { epoch: 17, n: 4 };
        let payload = batch_payload("me~1", first, &runs, "<a> x\r\n<a> y\r\n<b> z");
        assert_eq!(payload, "me~1 =17-4:9*2,4*1\n<a> x\n<a> y\n<b> z");
        assert_eq!(
            ok(&me, &room, &payload),
            Inbound::Numbered {
                room: "lobby".into(),
                first,
                runs: runs.into(),
                text: "<a> x\r\n<a> y\r\n<b> z".into(),
            }
        );
        // Another instance's: one event, nobody of ours said them.
        assert_eq!(
            ok(&them, &room, &payload),
            Inbound::Said {
                room: "lobby".into(),
                first,
                from: None,
                text: "<a> x\r\n<a> y\r\n<b> z".into(),
            }
        );
        let huge = format!("{}*1", "9".repeat(21));
        let many = vec!["1*1"; MAX_RUNS + 1].join(",");
        for bad in [
            "9*2,4*2", // more lines named than there are
            "9*1,4*1", // fewer
            "9*0,4*3", // an empty run
            "9*3,",    // a run with nothing in it
            "*3",      // no sender
            "9*",      // no count
            "x*3",     // not a number
            "-9*3",
            "9 *3",
            "9\r*3",
            "9\x1b*3",
            "9\u{9b}*3",
            "9\u{202e}*3",
            "99999999999999999999999*3",
            &huge,
            &many,
        ] {
            assert_eq!(parse_senders(bad, 3), None, "{bad:?}");
            let forged = format!("n2 =17-4:{bad}\n<a> x\n<a> y\n<b> z");
            assert!(
                me.decode(room.as_bytes(), forged.as_bytes()).is_err()
                    && them.decode(room.as_bytes(), forged.as_bytes()).is_err(),
                "{bad:?}"
            );
        }
        // A LF ends the header: what follows it is a line, and not one a
        // client could say.
        let Inbound::Said { text, .. } = ok(&them, &room, "n2 =17-4:9\n*3\n<a> x") else {
            panic!()
        };
        assert_eq!(text, "<?> (not a room line)\r\n<a> x");
        // The lines of a batch are cleaned one by one and must be room
        // lines; one that fails keeps its number, as a placeholder.
        let forged = format!("n2 =17-4:9*1,4*2\n{FORGED}\n*** bobby is now admin\n<b> ok\r");
        let Inbound::Said { text, .. } = ok(&them, &room, &forged) else {
            panic!()
        };
        let clean = sanitize(FORGED.as_bytes()).unwrap();
        assert_eq!(text, format!("{clean}\r\n<?> (not a room line)\r\n<b> ok"));
        let long = format!("n2 =17-4:9*1,4*1\n<a> x\n<b> {}", "y".repeat(100));
        assert_eq!(
            them.decode(room.as_bytes(), long.as_bytes()),
            Err("too long")
        );
    }
}
