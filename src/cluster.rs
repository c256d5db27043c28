//! The cluster link: this instance's two connections to Redis, on the
//! reactor's own `Poll`, with their own buffers and no second thread.
//!
//! Redis pub/sub needs a connection of its own for SUBSCRIBE, so there are
//! two: `cmd` sends PUBLISH and the bookkeeping commands and reads their
//! replies in order; `sub` only receives what the subscriptions carry. RESP
//! is encoded and decoded by the redis-protocol crate.
//!
//! Channels (pub/sub is not per database, so the database number is part of
//! every name, and clusters on different databases stay apart):
//! - `chatd:DB:r:ROOM` — lines for a room, `NODE TEXT`; subscribed while
//!   this instance has local members in ROOM; our own lines come back and
//!   are skipped by NODE, so nothing is delivered twice;
//! - `chatd:DB:p` — presence (who is where), for every instance's mirror;
//! - `chatd:DB:n:NODE` — private lines for users on NODE.
//!
//! Keys: `chatd:name:NAME` (a name reserved with SET NX, renewed while its
//! user is connected), `chatd:alive:NODE` (a heartbeat that expires when
//! the instance dies), `chatd:guests` (the shared guest-number counter).

use crate::hub::{ClientId, GUEST_BLOCK, Hub, Presence};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const CMD: Token = Token(usize::MAX - 10);
pub const SUB: Token = Token(usize::MAX - 11);

/// Heartbeats, name renewals and liveness checks run this often.
pub const TICK: Duration = Duration::from_secs(3);
/// A heartbeat lives this long: an instance silent for longer is dead.
pub const ALIVE_SECS: u64 = 10;
/// A reserved name lives this long unless renewed (every TICK).
pub const NAME_SECS: u64 = 15;
/// A connect plus handshake that takes longer has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The most a single reply may take before it is complete.
const MAX_REPLY: usize = 4 << 20;
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Moves the shared guest counter past what this instance already handed
/// out (a restarted Redis forgets it), then reserves a block.
const GUESTS_LUA: &str = "local v = tonumber(redis.call('get', KEYS[1]) or '0') \
     if v < tonumber(ARGV[1]) then redis.call('set', KEYS[1], ARGV[1]) end \
     return redis.call('incrby', KEYS[1], ARGV[2])";

/// Where Redis is, from `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
#[derive(Debug, Clone)]
pub struct RedisUrl {
    pub addr: SocketAddr,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisUrl {
    /// Parses and resolves the URL (once, at start-up: the loop never
    /// blocks on DNS). `env_password` (REDIS_PASSWORD) is used when the URL
    /// has none.
    pub fn parse(url: &str, env_password: Option<String>) -> Result<RedisUrl, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url}: a Redis URL starts with redis://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let password = auth
            .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string())
            .filter(|p| !p.is_empty())
            .or(env_password.filter(|p| !p.is_empty()));
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (
                hp,
                db.parse()
                    .map_err(|_| format!("{url}: the database must be a number"))?,
            ),
            None => (rest, 0),
        };
        let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        Ok(RedisUrl { addr, password, db })
    }
}

/// What the link heard, for the reactor to hand to the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Up,
    Down(String),
    Room(String, String),
    Presence(Presence),
    Private(ClientId, String, String),
    Claimed(ClientId, String, bool),
    Guests(u64),
    NodeLost(Rc<str>),
}

/// What a reply on `cmd` answers.
#[derive(Debug)]
enum Expect {
    /// Must not be an error, or the link is useless (AUTH, SELECT).
    Check,
    Pong,
    Ignore,
    Claim(ClientId, String),
    Guests,
    Alive(Rc<str>),
}

/// What a command costs --cluster-queue beyond its RESP bytes: its
/// `Expect` in `pending` until Redis answers, in a VecDeque that may be up
/// to twice as large as it is full. With 1-byte messages (about 50 bytes of
/// PUBLISH) that is the difference between the bound and 2.3 times it.
const PENDING_OVERHEAD: usize = 2 * size_of::<Expect>();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    Connecting,
    Up,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    pub published: u64,
    pub received: u64,
    pub dropped: u64,
    pub reconnects: u64,
}

/// One connection to Redis.
struct Redis {
    sock: TcpStream,
    connected: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl Redis {
    fn connect(addr: SocketAddr, token: Token, registry: &Registry) -> io::Result<Redis> {
        let mut sock = TcpStream::connect(addr)?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = sock.set_nodelay(true);
        Ok(Redis {
            sock,
            connected: false,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
        })
    }

    /// A non-blocking connect is done when the socket reports no error and
    /// has a peer (mio's documented steps).
    fn check_connected(&mut self) -> io::Result<bool> {
        if !self.connected {
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
            match self.sock.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.check_connected()? {
            return Ok(());
        }
        let mut done = 0;
        let result = loop {
            if done == self.wbuf.len() {
                break Ok(());
            }
            match self.sock.write(&self.wbuf[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.wbuf.drain(..done);
        result
    }

    /// Reads until WouldBlock and decodes every complete frame.
    fn read(&mut self, scratch: &mut [u8], frames: &mut Vec<OwnedFrame>) -> io::Result<()> {
        if !self.check_connected()? {
            return Ok(());
        }
        loop {
            match self.sock.read(scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ));
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.decode(frames)?;
        }
        self.decode(frames)
    }

    fn decode(&mut self, frames: &mut Vec<OwnedFrame>) -> io::Result<()> {
        let mut used = 0;
        loop {
            match decode(&self.rbuf[used..]) {
                Ok(Some((frame, n))) => {
                    frames.push(frame);
                    used += n;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply from Redis: {e:?}"),
                    ));
                }
            }
        }
        self.rbuf.drain(..used);
        if self.rbuf.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply from Redis too large",
            ));
        }
        Ok(())
    }
}

/// Appends one command to `buf`, RESP-encoded.
fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = buf.len();
    buf.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the encoder itself, so this cannot fail.
    if encode_borrowed(&mut buf[start..], &frame, false).is_err() {
        buf.truncate(start);
    }
}

pub struct Link {
    url: RedisUrl,
    node: Rc<str>,
    prefix: String,
    cmd: Option<Redis>,
    sub: Option<Redis>,
    state: State,
    cmd_ready: bool,
    sub_ready: bool,
    pending: VecDeque<Expect>,
    /// Rooms with local members: subscribed while up, re-subscribed after
    /// a reconnect.
    rooms: BTreeSet<String>,
    max_queue: usize,
    pub stats: LinkStats,
    backoff: Duration,
    retry_at: Option<Instant>,
    next_tick: Instant,
    warned: Option<Instant>,
    guests_asked: bool,
    /// Just (re)connected: a restarted Redis has forgotten our users'
    /// names, so reserve them again on the next tick.
    reclaim: bool,
    scratch: Vec<u8>,
}

impl Link {
    /// `max_queue`: the most bytes waiting to go to Redis; past it, what
    /// would be published is dropped, counted and logged.
    pub fn new(url: RedisUrl, node: &str, max_queue: usize) -> Link {
        Link {
            prefix: format!("chatd:{}:", url.db),
            url,
            node: node.into(),
            cmd: None,
            sub: None,
            state: State::Down,
            cmd_ready: false,
            sub_ready: false,
            pending: VecDeque::new(),
            rooms: BTreeSet::new(),
            max_queue,
            stats: LinkStats::default(),
            backoff: BACKOFF_MIN,
            retry_at: Some(Instant::now()),
            next_tick: Instant::now(),
            warned: None,
            guests_asked: false,
            reclaim: false,
            scratch: vec![0; 64 * 1024],
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// When the link next needs the loop's attention.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Down => self.retry_at,
            State::Connecting => Some(self.next_tick),
            State::Up => Some(self.next_tick),
        }
    }

    fn connect(&mut self, registry: &Registry, inbound: &mut Vec<Inbound>) {
        self.retry_at = None;
        let (cmd, sub) = match (
            Redis::connect(self.url.addr, CMD, registry),
            Redis::connect(self.url.addr, SUB, registry),
        ) {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) | (_, Err(e)) => return self.fail(&e.to_string(), registry, inbound),
        };
        debug!("cluster: connecting to Redis at {}", self.url.addr);
        self.cmd = Some(cmd);
        self.sub = Some(sub);
        self.state = State::Connecting;
        // While connecting, `next_tick` is the deadline for the handshake.
        self.next_tick = Instant::now() + CONNECT_TIMEOUT;
        self.cmd_ready = false;
        self.sub_ready = false;
        self.guests_asked = false;
        self.pending.clear();
        let db = self.url.db.to_string();
        let pw = self.url.password.clone();
        if let Some(pw) = &pw {
            self.send_cmd(&[b"AUTH", pw.as_bytes()], Expect::Check, true);
        }
        self.send_cmd(&[b"SELECT", db.as_bytes()], Expect::Check, true);
        self.send_cmd(&[b"PING"], Expect::Pong, true);
        let mut channels = vec![
            format!("{}p", self.prefix),
            format!("{}n:{}", self.prefix, self.node),
        ];
        channels.extend(self.rooms.iter().map(|r| self.room_channel(r)));
        let Some(sub) = self.sub.as_mut() else { return };
        if let Some(pw) = &pw {
            command(&mut sub.wbuf, &[b"AUTH", pw.as_bytes()]);
        }
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        command(&mut sub.wbuf, &args);
    }

    /// Drops both connections and schedules a reconnect with backoff and
    /// jitter, so instances that lost Redis together do not return together.
    fn fail(&mut self, why: &str, registry: &Registry, inbound: &mut Vec<Inbound>) {
        for conn in [self.cmd.take(), self.sub.take()].into_iter().flatten() {
            let mut sock = conn.sock;
            let _ = registry.deregister(&mut sock);
        }
        let was = std::mem::replace(&mut self.state, State::Down);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        let wait = self.backoff.mul_f64(jitter);
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.stats.reconnects += 1;
        self.pending.clear();
        if was == State::Up {
            warn!("cluster link down: {why}; reconnecting");
        } else {
            debug!(
                "cluster: cannot reach Redis at {}: {why}; retrying in {wait:?}",
                self.url.addr
            );
        }
        inbound.push(Inbound::Down(why.to_string()));
    }

    /// Queues a command on `cmd` within the queue bound; `force` for the
    /// handshake, which must not be dropped.
    fn send_cmd(&mut self, args: &[&[u8]], expect: Expect, force: bool) -> bool {
        let Some(cmd) = self.cmd.as_mut() else {
            return false;
        };
        // Each command waiting for its reply also holds a slot in `pending`.
        let queued = cmd.wbuf.len() + self.pending.len() * PENDING_OVERHEAD;
        if !force && queued > self.max_queue {
            self.stats.dropped += 1;
            let now = Instant::now();
            if self.warned.is_none_or(|t| now >= t + WARN_EVERY) {
                warn!(
                    "cluster: queue to Redis is full ({} bytes); dropped {} message(s) so far",
                    queued, self.stats.dropped
                );
                self.warned = Some(now);
            }
            return false;
        }
        command(&mut cmd.wbuf, args);
        self.pending.push_back(expect);
        true
    }

    /// Publishes unless the link is down (local delivery has happened
    /// already; the users were told that messages reach this server only).
    /// Only what overflows the queue while the link is up counts as dropped.
    fn publish(&mut self, channel: &str, payload: &[u8]) {
        if self.state != State::Up {
            return;
        }
        if self.send_cmd(
            &[b"PUBLISH", channel.as_bytes(), payload],
            Expect::Ignore,
            false,
        ) {
            self.stats.published += 1;
        }
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
    }

    // ---- From the hub ----

    pub fn publish_room(&mut self, room: &str, text: &str) {
        let channel = self.room_channel(room);
        let payload = format!("{} {text}", self.node);
        self.publish(&channel, payload.as_bytes());
    }

    pub fn presence(&mut self, event: &Presence) {
        let channel = format!("{}p", self.prefix);
        self.publish(&channel, encode_presence(event).as_bytes());
    }

    pub fn private(&mut self, node: &str, to: u64, to_name: &str, text: &str) {
        let channel = format!("{}n:{node}", self.prefix);
        self.publish(&channel, format!("{to} {to_name} {text}").as_bytes());
    }

    pub fn subscribe(&mut self, room: &str, on: bool) {
        let changed = if on {
            self.rooms.insert(room.to_string())
        } else {
            self.rooms.remove(room)
        };
        if changed && self.state != State::Down {
            let channel = self.room_channel(room);
            if let Some(sub) = self.sub.as_mut() {
                let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
                command(&mut sub.wbuf, &[verb, channel.as_bytes()]);
            }
        }
    }

    /// Reserves `name` for `id`; the answer comes back as `Inbound::Claimed`.
    /// While the link is down the hub does not ask.
    pub fn claim(&mut self, id: ClientId, name: &str) -> bool {
        let owner = format!("{}:{id}", self.node);
        self.state == State::Up && self.reserve(name, &owner, Expect::Claim(id, name.to_string()))
    }

    /// SET NX with expiry: the first instance to ask gets the name.
    fn reserve(&mut self, name: &str, owner: &str, expect: Expect) -> bool {
        let key = format!("chatd:name:{name}");
        let secs = NAME_SECS.to_string();
        let args: [&[u8]; 6] = [
            b"SET",
            key.as_bytes(),
            owner.as_bytes(),
            b"NX",
            b"EX",
            secs.as_bytes(),
        ];
        self.send_cmd(&args, expect, true)
    }

    pub fn release(&mut self, name: &str) {
        if self.state == State::Up {
            let key = format!("chatd:name:{name}");
            self.send_cmd(&[b"DEL", key.as_bytes()], Expect::Ignore, true);
        }
    }

    // ---- From the loop ----

    /// Socket readiness for CMD or SUB.
    pub fn ready(&mut self, token: Token, registry: &Registry, inbound: &mut Vec<Inbound>) {
        let mut frames = Vec::new();
        let conn = if token == CMD {
            self.cmd.as_mut()
        } else {
            self.sub.as_mut()
        };
        let Some(conn) = conn else { return };
        if let Err(e) = conn
            .flush()
            .and_then(|_| conn.read(&mut self.scratch, &mut frames))
        {
            return self.fail(&e.to_string(), registry, inbound);
        }
        for frame in frames {
            let result = if token == CMD {
                self.on_reply(frame, inbound)
            } else {
                self.on_push(frame, inbound)
            };
            if let Err(why) = result {
                return self.fail(&why, registry, inbound);
            }
        }
        if self.state == State::Connecting && self.cmd_ready && self.sub_ready {
            self.state = State::Up;
            self.backoff = BACKOFF_MIN;
            self.next_tick = Instant::now();
            info!(
                "cluster link up: node {} via Redis at {}",
                self.node, self.url.addr
            );
            inbound.push(Inbound::Up);
        }
    }

    fn on_reply(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) -> Result<(), String> {
        let expect = self.pending.pop_front().ok_or("a reply nobody asked for")?;
        match (expect, frame) {
            (Expect::Check | Expect::Pong, OwnedFrame::Error(e)) => {
                return Err(format!("Redis said: {e}"));
            }
            (Expect::Pong, _) => self.cmd_ready = true,
            (Expect::Claim(id, name), OwnedFrame::Error(e)) => {
                warn!("cluster: cannot reserve a name: {e}");
                inbound.push(Inbound::Claimed(id, name, false));
            }
            (Expect::Claim(id, name), f) => {
                inbound.push(Inbound::Claimed(id, name, f != OwnedFrame::Null));
            }
            (Expect::Guests, OwnedFrame::Integer(last)) => {
                self.guests_asked = false;
                inbound.push(Inbound::Guests(
                    (last as u64).saturating_sub(GUEST_BLOCK - 1),
                ));
            }
            (Expect::Alive(node), OwnedFrame::Integer(0)) => inbound.push(Inbound::NodeLost(node)),
            (_, OwnedFrame::Error(e)) => warn!("cluster: Redis said: {e}"),
            _ => {}
        }
        Ok(())
    }

    fn on_push(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) -> Result<(), String> {
        let parts = match frame {
            OwnedFrame::Array(parts) => parts,
            OwnedFrame::Error(e) => return Err(format!("Redis said: {e}")),
            _ => return Ok(()), // +OK to AUTH
        };
        let bulk = |f: &OwnedFrame| match f {
            OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        };
        let kind = parts.first().and_then(bulk).unwrap_or_default();
        match kind.as_str() {
            "subscribe" => self.sub_ready = true,
            "message" => {
                let (Some(channel), Some(payload)) =
                    (parts.get(1).and_then(bulk), parts.get(2).and_then(bulk))
                else {
                    return Ok(());
                };
                self.stats.received += 1;
                if let Some(event) = self.decode_message(&channel, &payload) {
                    inbound.push(event);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_message(&self, channel: &str, payload: &str) -> Option<Inbound> {
        let rest = channel.strip_prefix(&self.prefix)?;
        if rest == "p" {
            return decode_presence(payload).map(Inbound::Presence);
        }
        if let Some(room) = rest.strip_prefix("r:") {
            let (node, text) = payload.split_once(' ')?;
            // Our own lines were delivered locally when they were sent.
            return (node != &*self.node)
                .then(|| Inbound::Room(room.to_string(), text.to_string()));
        }
        if rest.strip_prefix("n:") == Some(&*self.node) {
            let (to, rest) = payload.split_once(' ')?;
            let (name, text) = rest.split_once(' ')?;
            return Some(Inbound::Private(
                to.parse().ok()?,
                name.to_string(),
                text.to_string(),
            ));
        }
        None
    }

    /// Reconnects when due; when up, every TICK: heartbeat, renew names,
    /// check that the instances we mirror are alive, top up guest numbers.
    pub fn tick(
        &mut self,
        now: Instant,
        hub: &Hub,
        registry: &Registry,
        inbound: &mut Vec<Inbound>,
    ) {
        match self.state {
            State::Down if self.retry_at.is_some_and(|t| t <= now) => {
                self.connect(registry, inbound)
            }
            State::Connecting if self.next_tick <= now => {
                self.fail("no answer from Redis in time", registry, inbound)
            }
            State::Up => {
                if hub.guests_left() < GUEST_BLOCK / 2 && !self.guests_asked {
                    let used = hub.guests_used().to_string();
                    let block = GUEST_BLOCK.to_string();
                    self.guests_asked = self.send_cmd(
                        &[
                            b"EVAL",
                            GUESTS_LUA.as_bytes(),
                            b"1",
                            b"chatd:guests",
                            used.as_bytes(),
                            block.as_bytes(),
                        ],
                        Expect::Guests,
                        true,
                    );
                }
                if self.next_tick > now {
                    return;
                }
                self.next_tick = now + TICK;
                let alive = format!("chatd:alive:{}", self.node);
                let secs = ALIVE_SECS.to_string();
                self.send_cmd(
                    &[b"SET", alive.as_bytes(), b"1", b"EX", secs.as_bytes()],
                    Expect::Ignore,
                    true,
                );
                let secs = NAME_SECS.to_string();
                let reclaim = std::mem::take(&mut self.reclaim);
                let owner = format!("{}:?", self.node);
                for name in hub.claimed_names() {
                    // After a reconnect, reserve again (a name someone else
                    // took meanwhile stays theirs); otherwise just renew.
                    if reclaim {
                        self.reserve(name, &owner, Expect::Ignore);
                    } else {
                        let key = format!("chatd:name:{name}");
                        self.send_cmd(
                            &[b"EXPIRE", key.as_bytes(), secs.as_bytes()],
                            Expect::Ignore,
                            true,
                        );
                    }
                }
                for node in hub.remote_nodes() {
                    let key = format!("chatd:alive:{node}");
                    self.send_cmd(&[b"EXISTS", key.as_bytes()], Expect::Alive(node), true);
                }
            }
            _ => {}
        }
    }

    /// Writes what is queued (called before the loop sleeps).
    pub fn flush(&mut self, registry: &Registry, inbound: &mut Vec<Inbound>) {
        for token in [CMD, SUB] {
            let conn = if token == CMD {
                self.cmd.as_mut()
            } else {
                self.sub.as_mut()
            };
            if let Some(conn) = conn
                && !conn.wbuf.is_empty()
                && let Err(e) = conn.flush()
            {
                return self.fail(&e.to_string(), registry, inbound);
            }
        }
    }
}

/// `H node` | `J node id name room shown` | `L node id` | `N node id name` |
/// `M node id room shown`. Names, rooms and node ids contain no spaces.
pub fn encode_presence(event: &Presence) -> String {
    match event {
        Presence::Hello { node } => format!("H {node}"),
        Presence::Bye { node } => format!("B {node}"),
        Presence::Here {
            node,
            id,
            name,
            room,
            shown,
        } => format!("J {node} {id} {name} {room} {shown}"),
        Presence::Gone { node, id } => format!("L {node} {id}"),
        Presence::Renamed { node, id, name } => format!("N {node} {id} {name}"),
        Presence::Moved {
            node,
            id,
            room,
            shown,
        } => format!("M {node} {id} {room} {shown}"),
    }
}

pub fn decode_presence(s: &str) -> Option<Presence> {
    let f: Vec<&str> = s.split(' ').collect();
    let node: Rc<str> = (*f.get(1)?).into();
    let id = || f.get(2)?.parse::<u64>().ok();
    Some(match (f[0], f.len()) {
        ("H", 2) => Presence::Hello { node },
        ("B", 2) => Presence::Bye { node },
        ("J", 6) => Presence::Here {
            node,
            id: id()?,
            name: f[3].into(),
            room: f[4].into(),
            shown: f[5].into(),
        },
        ("L", 3) => Presence::Gone { node, id: id()? },
        ("N", 4) => Presence::Renamed {
            node,
            id: id()?,
            name: f[3].into(),
        },
        ("M", 5) => Presence::Moved {
            node,
            id: id()?,
            room: f[3].into(),
            shown: f[4].into(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390/2", None).unwrap();
        assert_eq!(u.addr, "127.0.0.1:6390".parse().unwrap());
        assert_eq!((u.db, u.password), (2, None));
        let u = RedisUrl::parse("redis://:s3cret@127.0.0.1", None).unwrap();
        assert_eq!(u.addr.port(), 6379);
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        let u = RedisUrl::parse("redis://user:pw@127.0.0.1:1/", Some("env".into())).unwrap();
        assert_eq!(u.password.as_deref(), Some("pw"));
        let u = RedisUrl::parse("redis://127.0.0.1:1", Some("env".into())).unwrap();
        assert_eq!(u.password.as_deref(), Some("env"));
        assert!(RedisUrl::parse("http://x", None).is_err());
        assert!(RedisUrl::parse("redis://127.0.0.1:1/x", None).is_err());
    }

    #[test]
    fn the_publish_queue_counts_what_waits_for_a_reply() {
        // A Redis that never reads nor answers: its backlog completes the
        // connect, nothing else happens.
        let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = RedisUrl::parse(&format!("redis://{}", redis.local_addr().unwrap()), None);
        let poll = mio::Poll::new().unwrap();
        let max = 64 * 1024;
        let mut link = Link::new(url.unwrap(), "n1", max);
        let conn = Redis::connect(link.url.addr, CMD, poll.registry()).unwrap();
        link.cmd = Some(conn);
        link.state = State::Up;
        while link.stats.dropped == 0 {
            link.publish_room("lobby", "x");
            assert!(link.stats.published < max as u64, "never full");
        }
        let wbuf = link.cmd.as_ref().unwrap().wbuf.len();
        let pending = link.pending.len() * size_of::<Expect>();
        // At most one command past the bound, whose own bytes are counted.
        assert!(wbuf + pending <= max + 64, "{wbuf} + {pending} > {max}");
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut buf = Vec::new();
        command(&mut buf, &[b"SET", b"k", b"v v"]);
        assert_eq!(buf, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv v\r\n");
    }

    #[test]
    fn presence_round_trips() {
        let node: Rc<str> = "n1".into();
        for e in [
            Presence::Hello { node: node.clone() },
            Presence::Bye { node: node.clone() },
            Presence::Here {
                node: node.clone(),
                id: 7,
                name: "alice".into(),
                room: "games".into(),
                shown: "Games".into(),
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
            Presence::Moved {
                node: node.clone(),
                id: 7,
                room: "lobby".into(),
                shown: "lobby".into(),
            },
        ] {
            assert_eq!(decode_presence(&encode_presence(&e)), Some(e));
        }
        assert_eq!(decode_presence("J n1 x a b c"), None);
        assert_eq!(decode_presence(""), None);
    }

    #[test]
    fn own_room_lines_are_skipped_and_others_decoded() {
        let url = RedisUrl::parse("redis://127.0.0.1:1/3", None).unwrap();
        let link = Link::new(url, "me", 1024);
        assert_eq!(link.decode_message("chatd:3:r:lobby", "me <a> hi"), None);
        assert_eq!(
            link.decode_message("chatd:3:r:lobby", "n2 <b> hi there"),
            Some(Inbound::Room("lobby".into(), "<b> hi there".into()))
        );
        assert_eq!(
            link.decode_message("chatd:3:n:me", "4 bob *alice* psst"),
            Some(Inbound::Private(4, "bob".into(), "*alice* psst".into()))
        );
        assert_eq!(
            link.decode_message("chatd:0:r:lobby", "n2 x"),
            None,
            "other database"
        );
    }
}
