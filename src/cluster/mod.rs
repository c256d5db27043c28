//! The cluster link: this instance's two connections to Redis, on the
//! reactor's own `Poll`, with their own buffers and no second thread.
//!
//! Redis pub/sub needs a connection of its own for SUBSCRIBE, so there are
//! two: `cmd` sends PUBLISH and the bookkeeping commands and reads their
//! replies in order; `sub` only receives what the subscriptions carry.
//!
//! The layers, each in its file:
//! - [`redis`]: one RESP connection (non-blocking connect, buffers, decode
//!   bounded by `MAX_REPLY`, command encoding);
//! - [`wire`]: every channel and key name, every payload encoded, decoded
//!   and checked like a client's line (pure);
//! - [`scripts`]: the Lua scripts Redis runs for us, with their contracts;
//! - [`replies`]: what each awaited reply means and what a command may cost
//!   the queue toward Redis;
//! - [`events`]: what arrives, as data, and its one mapping onto the hub;
//! - here: the link's state machine (down, connecting, healing, up) and the
//!   verbs the reactor calls on behalf of the hub.
//!
//! What arrives that does not pass [`wire`]'s checks is logged
//! (rate-limited), counted and dropped.

mod events;
mod redis;
mod replies;
mod scripts;
pub mod wire;

pub use events::Inbound;
pub use wire::{claim_value, claim_wins, valid_node};

use crate::access::{Ban, MAX_BANS};
use crate::history::Id;
use crate::hub::{Asked, Claim, ClientId, GUEST_BLOCK, Hub, Presence};
use crate::metrics::Cluster as ClusterStats;
use ipnet::IpNet;
use log::{debug, info, warn};
use mio::{Registry, Token};
use redis::{Redis, command, frame_bytes};
use redis_protocol::resp2::types::OwnedFrame;
use replies::{Expect, Kind, PENDING_OVERHEAD};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};
use wire::{COALESCE, Keys, Wire};

pub const CMD: Token = Token(usize::MAX - 10);
pub const SUB: Token = Token(usize::MAX - 11);

/// The cluster's timers. Everything but the reply deadline is a multiple of
/// the heartbeat interval, `tick` (3 s; `--cluster-tick-ms` lets tests run
/// the same story in a fraction of the time).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeats, name renewals and liveness checks run this often.
    pub tick: Duration,
    /// The most Redis may take to answer (`--cluster-timeout`).
    pub reply: Duration,
}

impl Timing {
    pub fn new(tick: Duration, reply: Duration) -> Timing {
        Timing { tick, reply }
    }

    /// A heartbeat lives 2 ticks unless refreshed (every tick).
    fn alive_ms(&self) -> String {
        (self.tick.as_millis() * 2).to_string()
    }

    /// A reserved name lives 5 ticks unless renewed (every tick).
    fn name_ms(&self) -> String {
        (self.tick.as_millis() * 5).to_string()
    }

    /// A node whose heartbeat has been missing this long (2 ticks, our own
    /// link up throughout) is declared lost.
    fn lost_after(&self) -> Duration {
        self.tick * 2
    }

    /// After our own link comes back, the nodes we knew before are not
    /// declared lost for 8 ticks: they may still be reconnecting (backoff).
    fn grace(&self) -> Duration {
        self.tick * 8
    }

    /// The longest wait between two attempts to connect: 10 s, or less
    /// with a shorter tick (so the grace above always covers it).
    fn backoff_max(&self) -> Duration {
        BACKOFF_MAX.min(self.tick * 10 / 3).max(BACKOFF_MIN)
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::new(Duration::from_secs(3), Duration::from_secs(5))
    }
}
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Where Redis is, from `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
#[derive(Debug, Clone)]
pub struct RedisUrl {
    pub addr: SocketAddr,
    /// An ACL user (`redis://USER:PASSWORD@...`); none: the default user.
    pub user: Option<String>,
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
        let user = auth
            .and_then(|a| a.split_once(':'))
            .map(|(u, _)| u.to_string())
            .filter(|u| !u.is_empty());
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
        Ok(RedisUrl {
            addr,
            user,
            password,
            db,
        })
    }

    /// The AUTH command to send first, if any.
    fn auth_args(&self) -> Option<Vec<String>> {
        let pw = self.password.clone()?;
        Some(match &self.user {
            Some(u) => vec!["AUTH".into(), u.clone(), pw],
            None => vec!["AUTH".into(), pw],
        })
    }
}

/// Where the link is, with what only that stage needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connections; the next attempt is due then.
    Down { retry_at: Instant },
    /// Both connections opened, the handshake under way; it must be done
    /// `by` then. `cmd_ready`: PING answered; `sub_ready`: subscribed;
    /// `sub_auth`: the subscriber's AUTH is still to be answered.
    Connecting {
        by: Instant,
        cmd_ready: bool,
        sub_ready: bool,
        sub_auth: bool,
    },
    /// Connected and subscribed; re-asserting our names before anyone is
    /// told the link is back or may claim a new name. `sent`: the renewals
    /// went out; `left`: how many are still unanswered.
    Healing { sent: bool, left: usize },
    /// `round_left`: renewals and node checks of the last round still
    /// unanswered (a slow Redis gets no second round on top of the first);
    /// `guests_asked`: a block of guest numbers is being reserved.
    Up {
        round_left: usize,
        guests_asked: bool,
    },
}

impl State {
    const UP: State = State::Up {
        round_left: 0,
        guests_asked: false,
    };

    fn is_down(&self) -> bool {
        matches!(self, State::Down { .. })
    }

    fn is_up(&self) -> bool {
        matches!(self, State::Up { .. })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The most nodes the link checks, or remembers as lost, at a time.
pub const MAX_NODES: usize = 256;
pub struct Link {
    url: RedisUrl,
    /// Our node id, channel and key names, and the payloads' bound.
    wire: Wire,
    cmd: Option<Redis>,
    sub: Option<Redis>,
    state: State,
    /// Commands on `cmd` awaiting their reply, in order, with when each was
    /// queued: the oldest one's age is the link's liveness.
    pending: VecDeque<(Instant, Expect)>,
    /// Rooms with local members: subscribed while up, re-subscribed after
    /// a reconnect.
    rooms: BTreeSet<String>,
    max_queue: usize,
    /// The most replies awaited before lines are dropped and claims
    /// refused: `max_queue` / 64 (a PUBLISH is rarely smaller).
    max_pending: usize,
    timing: Timing,
    stats: ClusterStats,
    backoff: Duration,
    next_tick: Instant,
    warned: Option<Instant>,
    warned_refused: Option<(Instant, String)>,
    warned_bad: Option<Instant>,
    warned_fail: Option<(Instant, String)>,
    /// After a refused reservation of guest numbers: not asked again before.
    guests_retry: Option<Instant>,
    guests_backoff: Duration,
    ever_up: bool,
    /// The subscriber's queue passed its bound: drop the link.
    stuck: Option<String>,
    /// Nodes whose heartbeat was missing, since when (our link up throughout).
    missing: HashMap<Rc<str>, Instant>,
    /// Nodes we knew before our own link went down, and until when they
    /// may not be declared lost: they may still be reconnecting.
    grace: HashMap<Rc<str>, Instant>,
    carry: bool,
    scratch: Vec<u8>,
    /// Rooms whose SUBSCRIBE Redis has confirmed on this connection.
    confirmed: BTreeSet<String>,
    /// The last id delivered per subscribed room: a line that comes both
    /// as the reply to our SAY and on the subscription is delivered once.
    delivered: HashMap<String, Id>,
    /// SHA1s of `scripts::LOADED` as loaded on this connection; until
    /// known (or after Redis forgot them), the scripts are sent whole.
    shas: [Option<String>; 2],
}

impl Link {
    /// `max_queue`: the most bytes of lines and claims waiting to go to
    /// Redis, and of (un)subscriptions; `max_text`: the longest line
    /// accepted from the other instances (a batch of lines may hold up to
    /// COALESCE bytes more).
    pub fn new(
        url: RedisUrl,
        node: &str,
        max_queue: usize,
        timing: Timing,
        max_text: usize,
    ) -> Link {
        Link {
            wire: Wire::new(url.db, node, max_text),
            url,
            cmd: None,
            sub: None,
            state: State::Down {
                retry_at: Instant::now(),
            },
            pending: VecDeque::new(),
            rooms: BTreeSet::new(),
            max_queue,
            max_pending: max_queue / 64,
            timing,
            stats: ClusterStats::default(),
            backoff: BACKOFF_MIN,
            next_tick: Instant::now(),
            warned: None,
            warned_refused: None,
            warned_bad: None,
            warned_fail: None,
            guests_retry: None,
            guests_backoff: BACKOFF_MIN,
            ever_up: false,
            stuck: None,
            missing: HashMap::new(),
            grace: HashMap::new(),
            carry: false,
            scratch: vec![0; 64 * 1024],
            shas: [None, None],
            confirmed: BTreeSet::new(),
            delivered: HashMap::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// The link's counters, and whether it is up, for /metrics.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            link_up: self.is_up(),
            ..self.stats
        }
    }

    pub fn node(&self) -> &str {
        &self.wire.node
    }

    /// When the link next needs the loop's attention.
    pub fn deadline(&self) -> Option<Instant> {
        let base = match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Connecting { by, .. } => Some(by),
            // Waiting for the renewals' replies: their deadline below.
            State::Healing { sent: true, .. } => None,
            State::Healing { sent: false, .. } | State::Up { .. } => Some(self.next_tick),
        };
        let reply = self.pending.front().map(|(t, _)| *t + self.timing.reply);
        let guests = self.guests_retry.filter(|_| self.state.is_up());
        [base, reply, guests].into_iter().flatten().min()
    }

    fn connect(&mut self, registry: &Registry, inbound: &mut Vec<Inbound>) {
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
        self.pending.clear();
        let db = self.url.db.to_string();
        let auth = self.url.auth_args();
        self.state = State::Connecting {
            by: Instant::now() + self.timing.reply,
            cmd_ready: false,
            sub_ready: false,
            sub_auth: auth.is_some(),
        };
        if let Some(auth) = &auth {
            let args: Vec<&[u8]> = auth.iter().map(|a| a.as_bytes()).collect();
            self.send_cmd(&args, Expect::Check("AUTH"), Kind::Force);
        }
        self.send_cmd(
            &[b"SELECT", db.as_bytes()],
            Expect::Check("SELECT"),
            Kind::Force,
        );
        // Room lines and history reads run a script each: loaded once per
        // connection, then called by its SHA1 (a few bytes, not the script).
        for (i, script) in scripts::LOADED.into_iter().enumerate() {
            self.send_cmd(
                &[b"SCRIPT", b"LOAD", script.as_bytes()],
                Expect::Script(i),
                Kind::Force,
            );
        }
        self.send_cmd(&[b"PING"], Expect::Pong, Kind::Force);
        let mut channels = vec![
            self.keys().presence(),
            self.keys().bans_channel(),
            self.keys().node(&self.wire.node),
        ];
        channels.extend(self.rooms.iter().map(|r| self.keys().room(r)));
        let Some(sub) = self.sub.as_mut() else { return };
        if let Some(auth) = &auth {
            let args: Vec<&[u8]> = auth.iter().map(|a| a.as_bytes()).collect();
            command(&mut sub.wbuf, &args);
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
        let jitter = 0.75 + fastrand::f64() * 0.5;
        let wait = self.backoff.mul_f64(jitter);
        let retry_at = Instant::now() + wait;
        let was = std::mem::replace(&mut self.state, State::Down { retry_at });
        self.backoff = (self.backoff * 2).min(self.timing.backoff_max());
        // Lines sent but not confirmed: Redis may or may not have run them
        // (a frozen Redis can still read what was sent before the close).
        let mut unsure: Vec<ClientId> = self
            .pending
            .iter()
            .filter_map(|(_, e)| match e {
                Expect::Say(id, ..) => Some(*id),
                _ => None,
            })
            .collect();
        unsure.sort_unstable();
        unsure.dedup();
        inbound.extend(unsure.into_iter().map(|id| Inbound::NotSaid(id, false)));
        self.pending.clear();
        self.confirmed.clear();
        self.delivered.clear();
        self.missing.clear();
        self.stuck = None;
        if was.is_up() {
            warn!("cluster link down: {why}; reconnecting");
            self.warned_fail = None;
        } else {
            self.stats.connect_failures += 1;
            // A new reason is logged at once (a wrong password must not
            // wait); the same one again only now and then.
            let now = Instant::now();
            let again = self
                .warned_fail
                .as_ref()
                .is_some_and(|(t, w)| w == why && now < *t + WARN_EVERY * 6);
            if again {
                debug!("cluster: cannot use Redis at {}: {why}", self.url.addr);
            } else {
                warn!(
                    "cluster: cannot use Redis at {}: {why}; retrying in {wait:?}",
                    self.url.addr
                );
                self.warned_fail = Some((now, why.to_string()));
            }
        }
        inbound.push(Inbound::Down(why.to_string()));
    }

    /// Queues a command on `cmd` if the queue has room (bytes and replies
    /// awaited); what happens otherwise depends on `kind`.
    fn send_cmd(&mut self, args: &[&[u8]], expect: Expect, kind: Kind) -> bool {
        let Some(cmd) = self.cmd.as_mut() else {
            return false;
        };
        // Each command waiting for its reply also holds a slot in `pending`.
        let queued = cmd.wbuf.len() + self.pending.len() * PENDING_OVERHEAD;
        let full = queued > self.max_queue || self.pending.len() >= self.max_pending;
        if full && matches!(kind, Kind::Publish | Kind::Claim) {
            let (bytes, replies) = (queued, self.pending.len());
            match kind {
                Kind::Publish => {
                    self.stats.dropped += 1;
                    let now = Instant::now();
                    if self.warned.is_none_or(|t| now >= t + WARN_EVERY) {
                        warn!(
                            "cluster: queue to Redis is full ({bytes} bytes, {replies} replies awaited); dropped {} message(s) so far",
                            self.stats.dropped
                        );
                        self.warned = Some(now);
                    }
                }
                Kind::Claim | Kind::Book | Kind::Force => {}
            }
            return false;
        }
        command(&mut cmd.wbuf, args);
        self.pending.push_back((Instant::now(), expect));
        true
    }

    /// Publishes unless the link is down (local delivery has happened
    /// already; the users were told that messages reach this server only).
    /// Only what overflows the queue while the link is up counts as dropped.
    fn publish(&mut self, channel: &str, payload: &[u8]) {
        if !self.state.is_up() {
            return;
        }
        if self.send_cmd(
            &[b"PUBLISH", channel.as_bytes(), payload],
            Expect::Ignore("PUBLISH"),
            Kind::Publish,
        ) {
            self.stats.published += 1;
        }
    }

    fn keys(&self) -> &Keys {
        &self.wire.keys
    }

    /// Logs what Redis refused, with its text: at once when the text is
    /// new (a missing ACL right), then at most every WARN_EVERY.
    fn refused(&mut self, what: &str, err: &str) {
        self.stats.refused += 1;
        let now = Instant::now();
        let again = self
            .warned_refused
            .as_ref()
            .is_some_and(|(t, e)| e == err && now < *t + WARN_EVERY);
        if !again {
            warn!(
                "cluster: Redis refused {what}: {} ({} refusal(s) so far)",
                err.escape_debug(),
                self.stats.refused
            );
            self.warned_refused = Some((now, err.to_string()));
        }
    }

    fn malformed(&mut self, channel: &[u8], why: &str) {
        self.stats.malformed += 1;
        let now = Instant::now();
        if self.warned_bad.is_none_or(|t| now >= t + WARN_EVERY) {
            warn!(
                "cluster: dropped a malformed message on {:?}: {why} ({} so far; Redis is open to someone it should not be?)",
                String::from_utf8_lossy(&channel[..channel.len().min(64)]),
                self.stats.malformed
            );
            self.warned_bad = Some(now);
        }
    }

    // ---- From the hub ----

    /// Hands numbered lines to the hub once: not again if they came
    /// already (from our SAY's reply or the subscription, whichever was
    /// first), and not if they are older than what was delivered.
    fn deliver(
        &mut self,
        room: String,
        first: Id,
        from: Option<ClientId>,
        text: String,
        inbound: &mut Vec<Inbound>,
    ) {
        let count = text.split("\r\n").count() as u64;
        let last = Id {
            epoch: first.epoch,
            n: first.n + count.saturating_sub(1),
        };
        if let Some(done) = self.delivered.get(&room)
            && done.epoch == first.epoch
            && done.n >= last.n
        {
            return;
        }
        self.delivered.insert(room.clone(), last);
        inbound.push(Inbound::Said {
            room,
            first,
            from,
            text,
        });
    }

    /// After SCRIPT FLUSH, Redis answers NOSCRIPT: send the scripts whole
    /// again (EVAL loads them as it runs them).
    fn forgot(&mut self, err: &str) {
        if err.starts_with("NOSCRIPT") {
            self.shas = [None, None];
        }
    }

    /// `EVALSHA SHA` when the script is loaded, `EVAL SCRIPT` otherwise.
    fn script(&self, i: usize) -> (&'static [u8], Vec<u8>) {
        match &self.shas[i] {
            Some(sha) => (b"EVALSHA", sha.as_bytes().to_vec()),
            None => (b"EVAL", scripts::LOADED[i].as_bytes().to_vec()),
        }
    }

    /// Room lines (CRLF between) from local client `from`, to be numbered
    /// and kept by Redis and delivered when they come back (see `scripts::SAY`).
    /// False when the link is not up or the queue toward Redis is full.
    pub fn say(
        &mut self,
        room: &str,
        from: ClientId,
        lines: &str,
        keep: usize,
        ttl_ms: u64,
    ) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let (meta, stream) = self.keys().history(room);
        let channel = self.keys().room(room);
        let (keep, ttl, from_s) = (
            keep.to_string(),
            ttl_ms.max(1).to_string(),
            from.0.to_string(),
        );
        let node = self.wire.node.clone();
        let (verb, script) = self.script(scripts::SAY_I);
        let mut args: Vec<&[u8]> = vec![
            verb,
            &script,
            b"3",
            meta.as_bytes(),
            stream.as_bytes(),
            channel.as_bytes(),
            keep.as_bytes(),
            ttl.as_bytes(),
            node.as_bytes(),
            from_s.as_bytes(),
        ];
        args.extend(lines.split("\r\n").map(str::as_bytes));
        let expect = Expect::Say(from, room.to_string(), lines.to_string());
        let ok = self.send_cmd(&args, expect, Kind::Publish);
        if ok {
            self.stats.published += 1;
        }
        ok
    }

    /// Asks Redis for a room's history for local client `id`: the lines
    /// after `after` (or the last ones), at most `count`. The answer comes
    /// back as `Inbound::History`. False when the link is not up.
    pub fn history(
        &mut self,
        id: ClientId,
        room: &str,
        asked: Asked,
        after: Option<Id>,
        count: usize,
    ) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let (meta, stream) = self.keys().history(room);
        let after = after.map_or("-".to_string(), |a| format!("({a}"));
        let count = count.to_string();
        let (verb, script) = self.script(scripts::READ_I);
        let args: [&[u8]; 7] = [
            verb,
            &script,
            b"2",
            meta.as_bytes(),
            stream.as_bytes(),
            after.as_bytes(),
            count.as_bytes(),
        ];
        self.send_cmd(&args, Expect::Read(id, room.to_string(), asked), Kind::Book)
    }

    /// A local line, or a batch of them (CRLF between), for the room on the
    /// other instances ([`wire::room_payload`]).
    pub fn publish_room(&mut self, room: &str, text: &str) {
        let channel = self.keys().room(room);
        let payload = wire::room_payload(&self.wire.node, text);
        self.publish(&channel, payload.as_bytes());
    }

    pub fn presence(&mut self, event: &Presence) {
        let channel = self.keys().presence();
        self.publish(&channel, wire::encode_presence(event).as_bytes());
    }

    pub fn private(&mut self, node: &str, to: u64, to_name: &str, text: &str) {
        let channel = self.keys().node(node);
        self.publish(
            &channel,
            wire::private_payload(to, to_name, text).as_bytes(),
        );
    }

    pub fn subscribe(&mut self, room: &str, on: bool) {
        let changed = if on {
            self.rooms.insert(room.to_string())
        } else {
            self.confirmed.remove(room);
            self.delivered.remove(room);
            self.rooms.remove(room)
        };
        if changed && !self.state.is_down() {
            let channel = self.keys().room(room);
            if let Some(sub) = self.sub.as_mut() {
                if sub.wbuf.len() > self.max_queue {
                    // The set of rooms is kept; a new connection subscribes
                    // to all of them at once.
                    self.stuck.get_or_insert_with(|| {
                        format!(
                            "subscriber queue to Redis is full ({} bytes)",
                            sub.wbuf.len()
                        )
                    });
                    return;
                }
                let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
                command(&mut sub.wbuf, &[verb, channel.as_bytes()]);
            }
        }
    }

    /// Reserves `name` for `id`; the answer comes back as `Inbound::Claimed`.
    /// False when it cannot be asked now (link not up, queue full).
    pub fn claim(&mut self, id: ClientId, name: &str) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let since = now_ms();
        let key = Keys::name(name);
        let value = claim_value(since, &self.wire.node, id);
        let ms = self.timing.name_ms();
        let args: [&[u8]; 6] = [
            b"SET",
            key.as_bytes(),
            value.as_bytes(),
            b"NX",
            b"PX",
            ms.as_bytes(),
        ];
        self.send_cmd(
            &args,
            Expect::Claim(id, name.to_string(), since),
            Kind::Claim,
        )
    }

    /// Gives `name` back, if the key still holds our claim on it.
    pub fn release(&mut self, name: &str, id: ClientId, since: u64) {
        if self.state.is_up() {
            let key = Keys::name(name);
            let value = claim_value(since, &self.wire.node, id);
            self.send_cmd(
                &[
                    b"EVAL",
                    scripts::RELEASE.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    value.as_bytes(),
                ],
                Expect::Ignore("EVAL (release a name)"),
                Kind::Book,
            );
        }
    }

    /// Renews (or re-creates, or takes over from `beat`) our claim on a
    /// local user's name.
    fn renew(&mut self, id: ClientId, name: &str, mine: String, beat: &str, heal: bool) -> bool {
        let key = Keys::name(name);
        let ms = self.timing.name_ms();
        let args: [&[u8]; 7] = [
            b"EVAL",
            scripts::RENEW.as_bytes(),
            b"1",
            key.as_bytes(),
            mine.as_bytes(),
            ms.as_bytes(),
            beat.as_bytes(),
        ];
        let expect = Expect::Renew {
            id,
            name: name.to_string(),
            mine: mine.clone(),
            heal,
        };
        self.send_cmd(&args, expect, Kind::Book)
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
        if let State::Connecting {
            cmd_ready: true,
            sub_ready: true,
            ..
        } = self.state
        {
            // Connected and subscribed: re-assert our names (on the next
            // tick, which has the hub) before anyone hears the link is up.
            self.state = State::Healing {
                sent: false,
                left: 0,
            };
            self.next_tick = Instant::now();
        }
    }

    fn go_up(&mut self, inbound: &mut Vec<Inbound>) {
        self.state = State::UP;
        if self.ever_up {
            self.stats.reconnects += 1;
        }
        self.ever_up = true;
        self.backoff = BACKOFF_MIN;
        self.next_tick = Instant::now();
        self.carry = true;
        self.warned_fail = None;
        info!(
            "cluster link up: node {} via Redis at {}",
            self.wire.node, self.url.addr
        );
        inbound.push(Inbound::Up);
        // Bans set while we were away (or before we started).
        let key = self.keys().bans();
        self.send_cmd(&[b"HGETALL", key.as_bytes()], Expect::Bans, Kind::Book);
    }

    fn on_reply(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) -> Result<(), String> {
        let (_, expect) = self.pending.pop_front().ok_or("a reply nobody asked for")?;
        match (expect, frame) {
            (Expect::Check(what), OwnedFrame::Error(e)) => {
                self.stats.refused += 1;
                return Err(format!("Redis refused {what}: {}", e.escape_debug()));
            }
            (Expect::Pong, OwnedFrame::Error(e)) => {
                self.stats.refused += 1;
                return Err(format!("Redis refused PING: {}", e.escape_debug()));
            }
            (Expect::Pong, _) => {
                if let State::Connecting { cmd_ready, .. } = &mut self.state {
                    *cmd_ready = true;
                }
            }
            (Expect::Claim(id, name, _), OwnedFrame::Error(e)) => {
                self.refused(&format!("SET (a claim on {name})"), &e);
                inbound.push(Inbound::Claimed(id, name, Claim::Failed));
            }
            (Expect::Claim(id, name, since), f) => {
                let answer = if f == OwnedFrame::Null {
                    Claim::Taken
                } else {
                    Claim::Granted(since)
                };
                inbound.push(Inbound::Claimed(id, name, answer));
            }
            (
                Expect::Renew {
                    id,
                    name,
                    mine,
                    heal,
                },
                f,
            ) => {
                match f {
                    OwnedFrame::BulkString(v) if v != mine.as_bytes() => {
                        let theirs = String::from_utf8_lossy(&v).into_owned();
                        if claim_wins(&mine, &theirs) {
                            // Take it over; this round is done when that
                            // one is answered.
                            if self.renew(id, &name, mine, &theirs, heal) {
                                return Ok(());
                            }
                        } else {
                            info!(
                                "cluster: the name {name} is held by an earlier claim ({}); our user gives it up",
                                theirs.escape_debug()
                            );
                            inbound.push(Inbound::NameLost(id, name));
                        }
                    }
                    OwnedFrame::Error(e) => self.refused("EVAL (renew a name)", &e),
                    _ => {}
                }
                if heal {
                    if let State::Healing { left, .. } = &mut self.state {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            self.go_up(inbound);
                        }
                    }
                } else {
                    self.round_done();
                }
            }
            (Expect::Guests, OwnedFrame::Integer(last)) => {
                self.guests_answered();
                self.guests_backoff = BACKOFF_MIN;
                inbound.push(Inbound::Guests(
                    (last as u64).saturating_sub(GUEST_BLOCK - 1),
                ));
            }
            (Expect::Guests, f) => {
                let text = match f {
                    OwnedFrame::Error(e) => e,
                    other => format!("unexpected reply {other:?}"),
                };
                self.refused("EVAL (reserve guest numbers)", &text);
                // Asked again after a backoff, not at once in a loop.
                self.guests_answered();
                self.guests_retry = Some(Instant::now() + self.guests_backoff);
                self.guests_backoff = (self.guests_backoff * 2).min(self.timing.backoff_max());
            }
            (Expect::Alive(node), f) => {
                self.round_done();
                match f {
                    OwnedFrame::Integer(n) => self.alive(node, n != 0, inbound),
                    OwnedFrame::Error(e) => self.refused("EXISTS (a heartbeat)", &e),
                    _ => {}
                }
            }
            (Expect::Back(node), f) => {
                self.round_done();
                match f {
                    OwnedFrame::Integer(1) => inbound.push(Inbound::NodeBack(node)),
                    OwnedFrame::Error(e) => self.refused("EXISTS (a heartbeat)", &e),
                    _ => {}
                }
            }
            (Expect::Script(i), OwnedFrame::BulkString(sha)) => {
                self.shas[i] = String::from_utf8(sha).ok();
            }
            (Expect::Script(_), OwnedFrame::Error(e)) => self.refused("SCRIPT LOAD", &e),
            (Expect::Say(id, ..), OwnedFrame::Error(e)) => {
                self.forgot(&e);
                self.refused("EVAL (a room line)", &e);
                inbound.push(Inbound::NotSaid(id, true));
            }
            (Expect::Say(id, room, text), f) => {
                // Our own lines come back on the subscription, unless it is
                // not in place yet (the room is new here, and Redis may run
                // the SUBSCRIBE after this): then from here. `deliver` keeps
                // whichever comes second from being shown twice.
                let first = frame_bytes(&f)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|t| t.parse::<Id>().ok());
                if let Some(first) = first
                    && !self.confirmed.contains(&room)
                {
                    self.deliver(room, first, Some(id), text, inbound);
                }
            }
            (Expect::Read(id, room, asked), f) => {
                let answer = match f {
                    OwnedFrame::Error(e) => {
                        self.forgot(&e);
                        self.refused("EVAL (read a room's history)", &e);
                        None
                    }
                    f => self.wire.read_answer(f),
                };
                let (epoch, last, lines) = answer.unwrap_or((0, 0, Vec::new()));
                inbound.push(Inbound::History {
                    id,
                    room,
                    asked,
                    epoch,
                    last,
                    lines,
                });
            }
            (Expect::Bans, OwnedFrame::Array(parts)) => self.bans_read(&parts, inbound),
            (Expect::Bans, OwnedFrame::Error(e)) => self.refused("HGETALL (the bans)", &e),
            (Expect::Ignore(what), OwnedFrame::Error(e)) => self.refused(what, &e),
            _ => {}
        }
        Ok(())
    }

    /// The bans hash: field NET, value the ban's line. Checked like any
    /// publication (anyone who can reach Redis can write it): what does
    /// not parse, or whose value names another net, is dropped and
    /// counted; at most MAX_BANS are taken; the ones that ran out are
    /// deleted from the hash.
    fn bans_read(&mut self, parts: &[OwnedFrame], inbound: &mut Vec<Inbound>) {
        let now = now_ms();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        let mut taken = 0;
        for pair in parts.chunks(2) {
            let (Some(field), Some(value)) = (
                pair.first().and_then(frame_bytes),
                pair.get(1).and_then(frame_bytes),
            ) else {
                continue;
            };
            let Some(ban) = self.wire.ban_entry(field, value) else {
                self.malformed(b"bans", "bad ban in the bans hash");
                continue;
            };
            if !ban.active(now) {
                expired.push(field.to_vec());
            } else if taken < MAX_BANS {
                taken += 1;
                inbound.push(Inbound::Ban(ban));
            }
        }
        if !expired.is_empty() {
            let key = self.keys().bans();
            let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
            args.extend(expired.iter().map(Vec::as_slice));
            self.send_cmd(
                &args,
                Expect::Ignore("HDEL (bans that ran out)"),
                Kind::Book,
            );
        }
    }

    /// A ban set here: kept in the hash for instances that start later, and
    /// published for those up now. While the link is down it stays this
    /// instance's (and its bans file's) only.
    pub fn ban(&mut self, ban: &Ban) {
        if !self.state.is_up() {
            return;
        }
        let (key, net, line) = (self.keys().bans(), ban.net.to_string(), ban.to_line());
        self.send_cmd(
            &[b"HSET", key.as_bytes(), net.as_bytes(), line.as_bytes()],
            Expect::Ignore("HSET (a ban)"),
            Kind::Book,
        );
        let channel = self.keys().bans_channel();
        self.publish(&channel, wire::ban_payload(&self.wire.node, ban).as_bytes());
    }

    /// A ban lifted here.
    pub fn unban(&mut self, net: &IpNet) {
        if !self.state.is_up() {
            return;
        }
        let key = self.keys().bans();
        self.send_cmd(
            &[b"HDEL", key.as_bytes(), net.to_string().as_bytes()],
            Expect::Ignore("HDEL (a ban)"),
            Kind::Book,
        );
        let channel = self.keys().bans_channel();
        self.publish(
            &channel,
            wire::unban_payload(&self.wire.node, net).as_bytes(),
        );
    }

    /// A node's heartbeat key, present or not. A node is declared lost only
    /// once its heartbeat has been missing for `lost_after` while our link
    /// was up (a flushed Redis loses every heartbeat at once; each instance
    /// writes its own again within a tick), and not while it is in its grace
    /// after our own outage.
    fn alive(&mut self, node: Rc<str>, exists: bool, inbound: &mut Vec<Inbound>) {
        if exists {
            self.missing.remove(&node);
            self.grace.remove(&node);
            return;
        }
        let now = Instant::now();
        if self.grace.get(&node).is_some_and(|&t| now < t) {
            return;
        }
        let since = *self.missing.entry(node.clone()).or_insert(now);
        if now >= since + self.timing.lost_after() {
            self.missing.remove(&node);
            self.grace.remove(&node);
            inbound.push(Inbound::NodeLost(node));
        }
    }

    /// One reply of this round's renewals and node checks is in.
    fn round_done(&mut self) {
        if let State::Up { round_left, .. } = &mut self.state {
            *round_left = round_left.saturating_sub(1);
        }
    }

    fn guests_answered(&mut self) {
        if let State::Up { guests_asked, .. } = &mut self.state {
            *guests_asked = false;
        }
    }

    fn on_push(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) -> Result<(), String> {
        let auth = match &mut self.state {
            State::Connecting { sub_auth, .. } => std::mem::take(sub_auth),
            _ => false,
        };
        let what = if auth { "AUTH" } else { "SUBSCRIBE" };
        let parts = match frame {
            OwnedFrame::Array(parts) => parts,
            OwnedFrame::Error(e) => {
                self.stats.refused += 1;
                return Err(format!("Redis refused {what}: {}", e.escape_debug()));
            }
            _ => return Ok(()), // +OK to AUTH
        };
        match parts.first().and_then(frame_bytes) {
            Some(b"subscribe") => {
                if let State::Connecting { sub_ready, .. } = &mut self.state {
                    *sub_ready = true;
                }
                if let Some(room) = parts
                    .get(1)
                    .and_then(frame_bytes)
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| match self.keys().channel(c)? {
                        wire::Channel::Room(room) => Some(room),
                        _ => None,
                    })
                {
                    self.confirmed.insert(room.to_string());
                }
            }
            Some(b"message") => {
                let (Some(channel), Some(payload)) = (
                    parts.get(1).and_then(frame_bytes),
                    parts.get(2).and_then(frame_bytes),
                ) else {
                    return Ok(());
                };
                self.stats.received += 1;
                match self.decode_message(channel, payload) {
                    Ok(Some(Inbound::Room(room, text))) => match inbound.last_mut() {
                        // Lines that came together go out together.
                        Some(Inbound::Room(r, t))
                            if *r == room && t.len() + text.len() + 2 <= COALESCE =>
                        {
                            t.push_str("\r\n");
                            t.push_str(&text);
                        }
                        _ => inbound.push(Inbound::Room(room, text)),
                    },
                    Ok(Some(Inbound::Said {
                        room,
                        first,
                        from,
                        text,
                    })) => self.deliver(room, first, from, text, inbound),
                    Ok(Some(event)) => inbound.push(event),
                    Ok(None) => {}
                    Err(why) => self.malformed(channel, why),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A publication, checked and cleaned as a client's line would be
    /// (see [`Wire::decode`]).
    fn decode_message(
        &self,
        channel: &[u8],
        payload: &[u8],
    ) -> Result<Option<Inbound>, &'static str> {
        self.wire.decode(channel, payload)
    }

    /// Reconnects when due; drops a link whose oldest command has waited
    /// too long for its reply; heals; when up, every tick: heartbeat, renew
    /// names, check the instances we mirror and the ones we lost, top up
    /// guest numbers.
    pub fn tick(
        &mut self,
        now: Instant,
        hub: &Hub,
        registry: &Registry,
        inbound: &mut Vec<Inbound>,
    ) {
        if !self.state.is_down() {
            if let Some(why) = self.stuck.take() {
                return self.fail(&why, registry, inbound);
            }
            if let Some((at, _)) = self.pending.front()
                && now >= *at + self.timing.reply
            {
                self.stats.timeouts += 1;
                let why = format!(
                    "Redis did not answer within {:?} (--cluster-timeout)",
                    self.timing.reply
                );
                return self.fail(&why, registry, inbound);
            }
        }
        match self.state {
            State::Down { retry_at } if retry_at <= now => self.connect(registry, inbound),
            State::Connecting { by, .. } if by <= now => {
                let why = format!("no answer from Redis within {:?}", self.timing.reply);
                self.fail(&why, registry, inbound)
            }
            State::Healing { sent: false, .. } => {
                let mut left = 0;
                for (id, name, since) in hub.claimed_names() {
                    let mine = claim_value(since, &self.wire.node, id);
                    if self.renew(id, name, mine, "", true) {
                        left += 1;
                    }
                }
                self.state = State::Healing { sent: true, left };
                if left == 0 {
                    self.go_up(inbound);
                }
            }
            State::Up {
                round_left,
                guests_asked,
            } => {
                if self.guests_retry.is_some_and(|t| t <= now) {
                    self.guests_retry = None;
                }
                if hub.guests_left() < GUEST_BLOCK / 2
                    && !guests_asked
                    && self.guests_retry.is_none()
                {
                    let used = hub.guests_used().to_string();
                    let block = GUEST_BLOCK.to_string();
                    let asked = self.send_cmd(
                        &[
                            b"EVAL",
                            scripts::GUESTS.as_bytes(),
                            b"1",
                            Keys::GUESTS.as_bytes(),
                            used.as_bytes(),
                            block.as_bytes(),
                        ],
                        Expect::Guests,
                        Kind::Book,
                    );
                    if let State::Up { guests_asked, .. } = &mut self.state {
                        *guests_asked = asked;
                    }
                }
                if self.next_tick > now {
                    return;
                }
                self.next_tick = now + self.timing.tick;
                if std::mem::take(&mut self.carry) {
                    let until = now + self.timing.grace();
                    self.grace = hub
                        .remote_nodes()
                        .into_iter()
                        .take(MAX_NODES)
                        .map(|n| (n, until))
                        .collect();
                }
                let alive = Keys::alive(&self.wire.node);
                let ms = self.timing.alive_ms();
                self.send_cmd(
                    &[b"SET", alive.as_bytes(), b"1", b"PX", ms.as_bytes()],
                    Expect::Ignore("SET (our heartbeat)"),
                    Kind::Book,
                );
                if round_left > 0 {
                    return;
                }
                let mut started = 0;
                for (id, name, since) in hub.claimed_names() {
                    let mine = claim_value(since, &self.wire.node, id);
                    if self.renew(id, name, mine, "", false) {
                        started += 1;
                    }
                }
                let lost = hub.lost_nodes();
                let checks = hub
                    .remote_nodes()
                    .into_iter()
                    .map(|n| (n, true))
                    .chain(lost.into_iter().map(|n| (n, false)))
                    .take(MAX_NODES);
                for (node, mirrored) in checks {
                    let key = Keys::alive(&node);
                    let expect = if mirrored {
                        Expect::Alive(node)
                    } else {
                        Expect::Back(node)
                    };
                    if self.send_cmd(&[b"EXISTS", key.as_bytes()], expect, Kind::Book) {
                        started += 1;
                    }
                }
                if let State::Up { round_left, .. } = &mut self.state {
                    *round_left = started;
                }
            }
            _ => {}
        }
    }

    /// Writes what is queued (called before the loop sleeps). Subscriptions
    /// first: a user who just joined a room announces it on `cmd`, and the
    /// SUBSCRIBE for the room's lines should reach Redis no later.
    pub fn flush(&mut self, registry: &Registry, inbound: &mut Vec<Inbound>) {
        for token in [SUB, CMD] {
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
        let mut link = Link::new(url.unwrap(), "n1", max, Timing::default(), 100);
        let conn = Redis::connect(link.url.addr, CMD, poll.registry()).unwrap();
        link.cmd = Some(conn);
        link.state = State::UP;
        while link.stats.dropped == 0 {
            link.publish_room("lobby", "x");
            assert!(link.stats.published < max as u64, "never full");
        }
        let wbuf = link.cmd.as_ref().unwrap().wbuf.len();
        let pending = link.pending.len() * size_of::<(Instant, Expect)>();
        // At most one command past the bound, whose own bytes are counted.
        assert!(wbuf + pending <= max + 64, "{wbuf} + {pending} > {max}");
    }

    fn link() -> Link {
        let url = RedisUrl::parse("redis://127.0.0.1:1/3", None).unwrap();
        Link::new(url, "me~1", 1 << 20, Timing::default(), 100)
    }

    #[test]
    fn own_room_lines_are_skipped_and_others_decoded() {
        let link = link();
        let dm = |c: &str, p: &str| link.decode_message(c.as_bytes(), p.as_bytes());
        assert_eq!(dm("chatd:3:r:lobby", "me~1 <a> hi"), Ok(None));
        assert_eq!(
            dm("chatd:3:r:lobby", "n2~5 <b> hi there"),
            Ok(Some(Inbound::Room("lobby".into(), "<b> hi there".into())))
        );
        assert_eq!(
            dm("chatd:3:n:me~1", "4 bob *alice* psst"),
            Ok(Some(Inbound::Private(
                ClientId(4),
                "bob".into(),
                "*alice* psst".into()
            )))
        );
        assert_eq!(dm("chatd:0:r:lobby", "n2 x"), Ok(None), "other database");
        assert_eq!(dm("chatd:3:n:other", "4 bob x"), Ok(None), "not ours");
    }

    #[test]
    fn numbered_lines_are_decoded_ours_too_cleaned_and_delivered_once() {
        let mut link = link();
        let dm = |link: &Link, p: &[u8]| link.decode_message(b"chatd:3:r:lobby", p);
        let first = Id { epoch: 17, n: 4 };
        assert_eq!(
            dm(&link, b"me~1 =17-4:9\n<a> hi\n<a> \x1b[2Jthere"),
            Ok(Some(Inbound::Said {
                room: "lobby".into(),
                first,
                from: Some(ClientId(9)),
                text: "<a> hi\r\n<a> [2Jthere".into(),
            })),
            "our own, with our sender"
        );
        let Ok(Some(Inbound::Said { from, .. })) = dm(&link, b"n2~5 =17-6:3\n<b> yo") else {
            panic!("another instance's numbered line");
        };
        assert_eq!(from, None);
        for bad in [&b"n2 =17-6\n<b> x"[..], b"n2 =x-1:3\n<b> x", b"n2 =17-6:3"] {
            assert!(
                dm(&link, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // From our SAY's reply and again from the subscription: once.
        let mut inbound = Vec::new();
        for _ in 0..2 {
            link.deliver(
                "lobby".into(),
                first,
                Some(ClientId(9)),
                "<a> hi\r\n<a> yo".into(),
                &mut inbound,
            );
        }
        link.deliver(
            "lobby".into(),
            Id { epoch: 17, n: 5 },
            None,
            "<b> old".into(),
            &mut inbound,
        );
        link.deliver(
            "lobby".into(),
            Id { epoch: 17, n: 6 },
            None,
            "<b> new".into(),
            &mut inbound,
        );
        assert_eq!(inbound.len(), 2, "{inbound:?}");
    }

    #[test]
    fn what_arrives_is_cleaned_as_a_clients_line_is() {
        let link = link();
        let dm = |c: &[u8], p: &[u8]| link.decode_message(c, p);
        // One publication is one line: CR and LF go, like every control
        // character (ESC sequences lose their ESC, so they cannot drive a
        // terminal); invalid UTF-8 becomes U+FFFD.
        assert_eq!(
            dm(b"chatd:3:r:lobby", b"n2 <m> hi\r\n*** bobby is now admin"),
            Ok(Some(Inbound::Room(
                "lobby".into(),
                "<m> hi*** bobby is now admin".into()
            )))
        );
        assert_eq!(
            dm(
                b"chatd:3:r:lobby",
                b"n2 <m> \x1b]0;x\x07\x1b[2Jred\x7f \xff"
            ),
            Ok(Some(Inbound::Room(
                "lobby".into(),
                "<m> ]0;x[2Jred \u{fffd}".into()
            )))
        );
        assert_eq!(
            dm(b"chatd:3:n:me~1", b"4 bob *m* a\r\n*** bob is now banned"),
            Ok(Some(Inbound::Private(
                ClientId(4),
                "bob".into(),
                "*m* a*** bob is now banned".into()
            )))
        );
        // Malformed: dropped (and logged by the caller).
        for (c, p) in [
            (&b"chatd:3:r:lobby"[..], &b"n2 \r\n\x1b"[..]),
            (b"chatd:3:r:lobby", b"n2"),
            (b"chatd:3:r:lobby", b"n\x1b2 <m> hi"),
            (b"chatd:3:r:Lobby", b"n2 <m> hi"),
            (b"chatd:3:r:lob\x1bby", b"n2 <m> hi"),
            (b"chatd:3:r:\xff", b"n2 <m> hi"),
            (b"chatd:3:n:me~1", b"x bob hi"),
            (b"chatd:3:n:me~1", b"4 b\x1bb hi"),
            (b"chatd:3:n:me~1", b"4 bob"),
            (b"chatd:3:p", b"J n2 1 bad\x1b lobby lobby 1"),
            (b"chatd:3:p", b"\xff"),
        ] {
            assert!(dm(c, p).is_err(), "{c:?} {p:?}");
        }
        // A batch from an instance: one publication, each line cleaned on
        // its own (a CR in one is removed, blank ones skipped).
        assert_eq!(
            dm(b"chatd:3:r:lobby", b"n2\n<a> one\n<a> t\x1bwo\r\n\n"),
            Ok(Some(Inbound::Room(
                "lobby".into(),
                "<a> one\r\n<a> two".into()
            )))
        );
        assert_eq!(dm(b"chatd:3:r:lobby", b"n2\n\r\n \n"), Err("blank batch"));
        let long = format!("n2\n<m> a\n<m> {}", "b".repeat(100));
        assert_eq!(dm(b"chatd:3:r:lobby", long.as_bytes()), Err("too long"));
        let many = format!("n2\n{}", "<m> ok\n".repeat(20));
        assert!(
            dm(b"chatd:3:r:lobby", many.as_bytes()).is_ok(),
            "a batch may pass one line's bound"
        );
        // Longer than any instance sends (max_text 100 here): dropped whole.
        let long = format!("n2 <m> {}", "a".repeat(100));
        assert_eq!(dm(b"chatd:3:r:lobby", long.as_bytes()), Err("too long"));
    }

    /// A "Redis" that accepts connections and never answers or reads.
    fn mute_redis(queue: usize, reply: Duration) -> (std::net::TcpListener, Link) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = RedisUrl::parse(&format!("redis://{}", l.local_addr().unwrap()), None).unwrap();
        let timing = Timing::new(Duration::from_secs(3), reply);
        (l, Link::new(url, "me~1", queue, timing, 100))
    }

    #[test]
    fn a_redis_that_does_not_answer_in_time_is_a_lost_link() {
        let (_redis, mut link) = mute_redis(1 << 20, Duration::from_millis(500));
        let poll = mio::Poll::new().unwrap();
        let hub = Hub::new(200).with_cluster("me~1");
        let mut inbound = Vec::new();
        let t0 = Instant::now();
        link.tick(t0, &hub, poll.registry(), &mut inbound);
        assert!(matches!(link.state, State::Connecting { .. }));
        assert!(
            link.deadline()
                .is_some_and(|d| d <= t0 + Duration::from_millis(600))
        );
        link.tick(
            t0 + Duration::from_millis(100),
            &hub,
            poll.registry(),
            &mut inbound,
        );
        assert!(inbound.is_empty(), "not yet");
        link.tick(
            t0 + Duration::from_secs(1),
            &hub,
            poll.registry(),
            &mut inbound,
        );
        assert!(link.state.is_down());
        assert!(
            matches!(&inbound[..], [Inbound::Down(why)] if why.contains("Redis did not answer"))
        );
        assert_eq!((link.stats.timeouts, link.stats.connect_failures), (1, 1));
        assert_eq!(link.stats.reconnects, 0);
    }

    #[test]
    fn the_queues_toward_redis_are_bounded_by_kind() {
        let (_redis, mut link) = mute_redis(4096, Duration::from_secs(60));
        let poll = mio::Poll::new().unwrap();
        let hub = Hub::new(200).with_cluster("me~1");
        let mut inbound = Vec::new();
        link.tick(Instant::now(), &hub, poll.registry(), &mut inbound);
        // Pretend the handshake is done (nothing answers here), and sent.
        link.state = State::UP;
        link.pending.clear();
        if let Some(cmd) = link.cmd.as_mut() {
            cmd.wbuf.clear();
        }
        // Replies awaited: at most 4096 / 64 = 64, and the bytes queued
        // plus each awaited reply's bookkeeping at most 4096 (which bites
        // first here); past either, lines are dropped and counted, and
        // claims refused.
        for _ in 0..100 {
            link.publish_room("lobby", "<a> hi");
        }
        let (published, dropped) = (link.stats.published, link.stats.dropped);
        assert_eq!(published + dropped, 100);
        assert!(dropped > 0 && published <= 64, "{published} {dropped}");
        let queued =
            link.cmd.as_ref().map_or(0, |c| c.wbuf.len()) + link.pending.len() * PENDING_OVERHEAD;
        assert!(queued <= 4096 + 64, "{queued}");
        assert!(
            !link.claim(ClientId(1), "alice"),
            "a claim past the bound is refused"
        );
        // Bookkeeping is not dropped: a release still goes out.
        link.release("alice", ClientId(1), 5);
        assert_eq!(link.pending.len() as u64, published + 1);
        // The subscriber's queue: past 4096 bytes the link is dropped and
        // re-established, keeping every room for the new subscription.
        for i in 0..200 {
            link.subscribe(&format!("room{i}"), true);
        }
        link.tick(Instant::now(), &hub, poll.registry(), &mut inbound);
        assert!(link.state.is_down());
        assert!(
            matches!(&inbound[..], [Inbound::Down(why)] if why.contains("subscriber queue")),
            "{inbound:?}"
        );
        assert_eq!(link.rooms.len(), 200);
    }
}
