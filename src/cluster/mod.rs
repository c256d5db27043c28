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
//! - [`scripts`]: the Lua scripts Redis runs for us, with their contracts,
//!   as one library of Redis functions;
//! - [`replies`]: what each awaited reply means and what a command may cost
//!   the queue toward Redis;
//! - [`events`]: what arrives, as data, and its one mapping onto the hub;
//! - [`rounds`]: the timers' work — reconnecting, the deadline on replies,
//!   healing, and every tick's heartbeat, renewals and node checks;
//! - here: the link's state machine (down, connecting, healing, up) and the
//!   verbs, private behind [`Link::apply`]: the hub reaches the link only
//!   through the operations it lists.
//!
//! What arrives that does not pass [`wire`]'s checks is logged
//! (rate-limited), counted and dropped.

mod batch;
mod events;
mod redis;
mod replies;
mod rounds;
mod scripts;
mod timing;
mod verbs;
mod warn;
pub mod wire;

use events::Delivered;
pub use events::Inbound;
pub use timing::Timing;
pub use wire::{claim_value, claim_wins, valid_node};

use crate::access::Ban;
use crate::history::Id;
use crate::hub::{
    Asked, Claim, ClientId, ClusterOp, Due, GUEST_BLOCK, Presence, Refusal, Roster, Topic,
};
use crate::metrics::Cluster as ClusterStats;
use ipnet::IpNet;
use log::{debug, info};
use mio::{Registry, Token};
pub use redis::RedisUrl;
use redis::{Redis, command, frame_bytes};
use redis_protocol::resp2::types::OwnedFrame;
use replies::{Expect, Kind, PENDING_OVERHEAD};
use scripts::Func;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};
use timing::BACKOFF_MIN;
use warn::Warnings;
use wire::{COALESCE, Keys, Wire};

/// The log target of the link's files: the module's, as before the split,
/// so logs read as they did.
const LOG: &str = module_path!();

pub const CMD: Token = Token(usize::MAX - 10);
pub const SUB: Token = Token(usize::MAX - 11);

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
    /// The replication id (`master_replid`) of the Redis on this
    /// connection, as its `INFO` said at connect: the fence SAY numbers
    /// under (see `scripts::SAY`). Empty when INFO is refused.
    replid: String,
    /// Our node id, channel and key names, and the payloads' bound.
    wire: Wire,
    cmd: Option<Redis>,
    sub: Option<Redis>,
    state: State,
    /// Commands on `cmd` awaiting their reply, in order, with when each was
    /// queued: the oldest one's age is the link's liveness.
    pending: VecDeque<(Instant, Expect)>,
    /// The FCALLs among `pending`, by their place in the sequence of
    /// commands sent on this connection (`sent`, `answered`), with their
    /// bytes: sent once more should Redis answer that it lost the library.
    kept: VecDeque<(u64, Vec<u8>)>,
    /// Commands sent and replies read on this connection.
    sent: u64,
    answered: u64,
    /// The bytes in `kept`, counted in the queue's bound.
    retained: usize,
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
    warn: Warnings,
    /// After a refused reservation of guest numbers: not asked again before.
    guests_retry: Option<Instant>,
    guests_backoff: Duration,
    /// The hub runs low on guest numbers; the highest it handed out.
    guests_wanted: Option<u64>,
    /// What the bookkeeping round asked of the hub (`Inbound::Due`), until
    /// its `ClusterOp::Roster` comes.
    asked: Option<Due>,
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
    /// Room lines gathered this turn, a batch per room (see [`batch`]).
    batches: Vec<batch::Batch>,
    /// Our own numbered lines lately delivered per subscribed room: a line
    /// that comes both as the reply to our SAY and on the subscription is
    /// delivered once (and no other line is ever held back by its id).
    delivered: Delivered,
    /// How many room notices we sent (each is numbered, see
    /// [`wire::notice_payload`]).
    notices: u64,
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
            warn: Warnings::default(),
            guests_retry: None,
            guests_backoff: BACKOFF_MIN,
            guests_wanted: None,
            asked: None,
            ever_up: false,
            stuck: None,
            missing: HashMap::new(),
            grace: HashMap::new(),
            carry: false,
            scratch: vec![0; 64 * 1024],
            kept: VecDeque::new(),
            sent: 0,
            answered: 0,
            retained: 0,
            confirmed: BTreeSet::new(),
            delivered: Delivered::default(),
            batches: Vec::new(),
            notices: 0,
            replid: String::new(),
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
            (Ok(c), Ok(mut s)) => {
                s.skip_publications = true;
                (c, s)
            }
            (Err(e), _) | (_, Err(e)) => return self.fail(&e.to_string(), registry, inbound),
        };
        debug!("cluster: connecting to Redis at {}", self.url.addr);
        self.cmd = Some(cmd);
        self.sub = Some(sub);
        self.forget_pending();
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
        // Before SELECT, which a Redis Cluster node refuses for any
        // database but 0: the clearer reason comes first. Its replication
        // section names the Redis whose numbering this connection writes
        // under (the fence; a failover means a new connection).
        self.replid.clear();
        self.send_cmd(
            &[b"INFO", b"cluster", b"replication"],
            Expect::Info,
            Kind::Force,
        );
        self.send_cmd(
            &[b"SELECT", db.as_bytes()],
            Expect::Check("SELECT"),
            Kind::Force,
        );
        // Every script is a function of one library: loaded once per
        // connection, then called by name (a few bytes, not the script).
        self.load_library();
        self.send_cmd(&[b"PING"], Expect::Pong, Kind::Force);
        let mut channels = vec![
            self.keys().presence(),
            self.keys().presence_to(&self.wire.node),
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
        self.drop_batches(inbound);
        let mut unsure: Vec<ClientId> = self
            .pending
            .iter()
            .filter_map(|(_, e)| match e {
                Expect::Say(sent) => Some(sent.runs.iter().map(|r| r.0)),
                _ => None,
            })
            .flatten()
            .collect();
        unsure.sort_unstable();
        unsure.dedup();
        inbound.extend(unsure.into_iter().map(|id| Inbound::NotSaid(id, false)));
        // Notices sent but not back: Redis may or may not have published
        // them to the others, but here they are not lost — delivered now,
        // as any notice is while the link is down, in the order sent.
        for (_, e) in std::mem::take(&mut self.pending) {
            if let Expect::Notice {
                room,
                seq,
                about,
                text,
            } = e
                && !self.delivered.noticed(&room, seq)
            {
                inbound.push(Inbound::Notice {
                    room: room.into(),
                    about,
                    text: text.into(),
                    seq: Some(seq),
                });
            }
        }
        self.forget_pending();
        self.confirmed.clear();
        self.delivered.clear();
        self.missing.clear();
        self.stuck = None;
        self.asked = None;
        if was.is_up() {
            self.warn.down(why);
        } else {
            self.stats.connect_failures += 1;
            self.warn.cannot_connect(self.url.addr, why, wait);
        }
        inbound.push(Inbound::Down(why.to_string()));
    }

    /// Queues a command on `cmd` if the queue has room (bytes and replies
    /// awaited); what happens otherwise depends on `kind`.
    fn send_cmd(&mut self, args: &[&[u8]], expect: Expect, kind: Kind) -> bool {
        self.queue(args, expect, kind, false)
    }

    /// `FCALL` of `f` with `keys` and `args`, queued as [`Link::send_cmd`]
    /// does; the command is kept until answered, to be sent once more if
    /// Redis lost the library meanwhile (see `on_reply`).
    fn fcall(
        &mut self,
        f: Func,
        keys: &[&[u8]],
        args: &[&[u8]],
        expect: Expect,
        kind: Kind,
    ) -> bool {
        let nkeys = keys.len().to_string();
        let mut all: Vec<&[u8]> = vec![b"FCALL", f.name().as_bytes(), nkeys.as_bytes()];
        all.extend_from_slice(keys);
        all.extend_from_slice(args);
        self.queue(&all, expect, kind, true)
    }

    /// The library of every script, loaded (again) on `cmd`; what it
    /// replaces is the same code. Called before anything that needs it is
    /// sent: Redis runs a connection's commands in order.
    fn load_library(&mut self) {
        let code = scripts::LIBRARY.code.as_bytes();
        self.send_cmd(
            &[b"FUNCTION", b"LOAD", b"REPLACE", code],
            Expect::Library,
            Kind::Force,
        );
    }

    fn queue(&mut self, args: &[&[u8]], expect: Expect, kind: Kind, retain: bool) -> bool {
        let Some(cmd) = self.cmd.as_mut() else {
            return false;
        };
        // Each command waiting for its reply also holds a slot in `pending`,
        // and one kept to be sent again holds its bytes.
        let queued = cmd.wbuf.len() + self.pending.len() * PENDING_OVERHEAD + self.retained;
        let full = queued > self.max_queue || self.pending.len() >= self.max_pending;
        if full && matches!(kind, Kind::Publish | Kind::Claim) {
            let (bytes, replies) = (queued, self.pending.len());
            match kind {
                Kind::Publish => {
                    self.stats.dropped += 1;
                    self.warn.dropped(bytes, replies, self.stats.dropped);
                }
                Kind::Claim | Kind::Book | Kind::Force => {}
            }
            return false;
        }
        if retain {
            let mut bytes = Vec::new();
            command(&mut bytes, args);
            cmd.wbuf.extend_from_slice(&bytes);
            self.retained += bytes.len();
            self.kept.push_back((self.sent, bytes));
        } else {
            command(&mut cmd.wbuf, args);
        }
        self.sent += 1;
        self.pending.push_back((Instant::now(), expect));
        true
    }

    /// A new connection, or none: nothing is awaited any more.
    fn forget_pending(&mut self) {
        self.pending.clear();
        self.kept.clear();
        (self.sent, self.answered, self.retained) = (0, 0, 0);
    }

    /// A command Redis refused for want of the library, sent once more
    /// after the library (loaded again unless a load is on its way, which
    /// Redis runs first): not kept a second time, so a library Redis will
    /// not load costs one retry per call, and its refusal is told.
    fn resend(&mut self, bytes: Vec<u8>, expect: Expect) {
        if !self
            .pending
            .iter()
            .any(|(_, e)| matches!(e, Expect::Library))
        {
            info!(target: LOG, "cluster: Redis lost chatd's functions (FUNCTION FLUSH?); loading them again");
            self.load_library();
        }
        let Some(cmd) = self.cmd.as_mut() else { return };
        cmd.wbuf.extend_from_slice(&bytes);
        self.sent += 1;
        self.pending.push_back((Instant::now(), expect));
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

    /// What Redis refused: counted, and logged with its text.
    fn refused(&mut self, what: &str, err: &str) {
        self.stats.refused += 1;
        self.warn.refused(what, err, self.stats.refused);
    }

    fn malformed(&mut self, channel: &[u8], why: &str) {
        self.stats.malformed += 1;
        self.warn.malformed(channel, why, self.stats.malformed);
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
        let read = conn
            .flush()
            .and_then(|_| conn.read(&mut self.scratch, &mut frames));
        let skipped = std::mem::take(&mut conn.skipped);
        if let Err(e) = read {
            return self.fail(&e.to_string(), registry, inbound);
        }
        for _ in 0..skipped {
            self.malformed(b"a channel", "a publication too long to read (skipped)");
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
        self.warn.up();
        info!(
            "cluster link up: node {} via Redis at {}",
            self.wire.node, self.url.addr
        );
        inbound.push(Inbound::Up);
        // Bans set while we were away (or before we started), a page at a
        // time: the hash has no bound of its own.
        self.bans_from("0", 0);
        // Rooms entered while the link was not up had no topic read, and
        // the others' topics may have changed meanwhile.
        let rooms: Vec<String> = self.rooms.iter().cloned().collect();
        for room in rooms {
            self.read_topic(&room);
        }
    }

    /// Asks for the page of the bans hash at `cursor`; `taken`: bans taken
    /// from the pages before.
    pub(super) fn bans_from(&mut self, cursor: &str, taken: usize) {
        let key = self.keys().bans();
        let (page, longest) = (
            scripts::BANS_PAGE.to_string(),
            self.wire.max_text.to_string(),
        );
        let budget = scripts::BUDGET.to_string();
        self.fcall(
            Func::Bans,
            &[key.as_bytes()],
            &[
                cursor.as_bytes(),
                page.as_bytes(),
                longest.as_bytes(),
                budget.as_bytes(),
            ],
            Expect::Bans(taken),
            Kind::Book,
        );
    }

    /// A reply on `cmd`: what it answers is the oldest entry of `pending`,
    /// and that entry alone decides what is done with it.
    fn on_reply(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) -> Result<(), String> {
        let (_, expect) = self.pending.pop_front().ok_or("a reply nobody asked for")?;
        let this = self.answered;
        self.answered += 1;
        if self.kept.front().is_some_and(|(n, _)| *n == this)
            && let Some((_, bytes)) = self.kept.pop_front()
        {
            self.retained -= bytes.len();
            if let OwnedFrame::Error(e) = &frame
                && scripts::not_loaded(e)
            {
                // Redis lost the library (FUNCTION FLUSH): load it again
                // and send this once more, rather than refuse a line.
                self.resend(bytes, expect);
                return Ok(());
            }
        }
        if let OwnedFrame::Error(e) = &frame
            && e.starts_with("READONLY")
        {
            // Our Redis became a replica: the numbering fence is only as
            // good as the connection, so find the primary anew (a replica
            // is refused at connect). What this was, fails with the link.
            self.pending.push_front((Instant::now(), expect));
            return Err(format!("Redis became a replica ({})", e.escape_debug()));
        }
        match expect {
            Expect::Check(what) => return self.must_be_ok(what, &frame),
            Expect::Info => return self.info_reply(&frame),
            Expect::Pong => {
                self.must_be_ok("PING", &frame)?;
                if let State::Connecting { cmd_ready, .. } = &mut self.state {
                    *cmd_ready = true;
                }
            }
            Expect::Claim(id, name, since) => {
                let answer = match frame {
                    OwnedFrame::Error(e) => {
                        self.refused(&format!("SET (a claim on {name})"), &e);
                        Claim::Failed
                    }
                    OwnedFrame::Null => Claim::Taken,
                    _ => Claim::Granted(since),
                };
                inbound.push(Inbound::Claimed(id, name, answer));
            }
            Expect::Renew {
                id,
                name,
                mine,
                heal,
            } => self.renewed(id, name, mine, heal, frame, inbound),
            Expect::Guests => self.guests_reply(frame, inbound),
            Expect::Alive(node) => self.node_checked(node, true, frame, inbound),
            Expect::Back(node) => self.node_checked(node, false, frame, inbound),
            Expect::Library => return self.library_loaded(&frame),
            Expect::Say(sent) => self.said_reply(*sent, frame, inbound),
            Expect::Notice {
                room,
                seq,
                about,
                text,
            } => self.noticed_reply(room, seq, about, text, &frame, inbound),
            Expect::Read(id, room, asked) => {
                let omitted = wire::left_out(&frame);
                let answer = match frame {
                    OwnedFrame::Error(e) => {
                        self.refused("FCALL (read a room's history)", &e);
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
                    omitted,
                });
            }
            Expect::Topic(room) => self.topic_read(&room, &frame, inbound),
            Expect::Reassert(net) => match frame {
                OwnedFrame::Error(e) => self.refused("FCALL (re-assert a ban)", &e),
                f if frame_bytes(&f) == Some(b"lifted") => {
                    info!(
                        target: LOG,
                        "cluster: the ban on {net} was lifted while this instance was away"
                    );
                    inbound.push(Inbound::Unban(net));
                }
                _ => {}
            },
            Expect::Bans(taken) => match frame {
                OwnedFrame::Error(e) => self.refused("FCALL (a page of the bans)", &e),
                f => self.bans_read(&f, taken, inbound),
            },
            Expect::Ignore(what) => {
                if let OwnedFrame::Error(e) = frame {
                    self.refused(what, &e);
                }
            }
        }
        Ok(())
    }

    /// A ban set here: kept in the hash for instances that start later, and
    /// published for those up now. While the link is down it stays this
    /// instance's (and its bans file's) only.
    fn ban(&mut self, ban: &Ban) {
        if !self.state.is_up() {
            return;
        }
        let (key, net, line) = (self.keys().bans(), ban.net.to_string(), ban.to_line());
        self.send_cmd(
            &[b"HSET", key.as_bytes(), net.as_bytes(), line.as_bytes()],
            Expect::Ignore("HSET (a ban)"),
            Kind::Book,
        );
        // A new ban is not the one an older unban lifted.
        let unbans = self.keys().unbans();
        self.send_cmd(
            &[b"HDEL", unbans.as_bytes(), net.as_bytes()],
            Expect::Ignore("HDEL (a lifted ban's tombstone)"),
            Kind::Book,
        );
        let channel = self.keys().bans_channel();
        self.publish(&channel, wire::ban_payload(&self.wire.node, ban).as_bytes());
    }

    /// A ban lifted here.
    fn unban(&mut self, net: &IpNet) {
        if !self.state.is_up() {
            return;
        }
        let (key, unbans) = (self.keys().bans(), self.keys().unbans());
        self.fcall(
            Func::Unban,
            &[key.as_bytes(), unbans.as_bytes()],
            &[net.to_string().as_bytes()],
            Expect::Ignore("FCALL (lift a ban)"),
            Kind::Book,
        );
        let channel = self.keys().bans_channel();
        self.publish(
            &channel,
            wire::unban_payload(&self.wire.node, net).as_bytes(),
        );
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
                if let (Some(channel), Some(payload)) = (
                    parts.get(1).and_then(frame_bytes),
                    parts.get(2).and_then(frame_bytes),
                ) {
                    self.on_message(channel, payload, inbound);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A publication on one of our channels: decoded, then room lines that
    /// came together coalesced, numbered ones delivered once.
    fn on_message(&mut self, channel: &[u8], payload: &[u8], inbound: &mut Vec<Inbound>) {
        self.stats.received += 1;
        match self.decode_message(channel, payload) {
            Ok(Some(Inbound::Room(room, text))) => match inbound.last_mut() {
                // Lines that came together go out together.
                Some(Inbound::Room(r, t)) if *r == room && t.len() + text.len() + 2 <= COALESCE => {
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
            Ok(Some(Inbound::Numbered {
                room,
                first,
                runs,
                text,
            })) => self.deliver_runs(room, first, runs, text, inbound),
            Ok(Some(Inbound::Notice {
                room,
                about,
                text,
                seq: Some(seq),
            })) => self.deliver_notice(room, seq, about, text, inbound),
            Ok(Some(event)) => inbound.push(event),
            Ok(None) => {}
            Err(why) => self.malformed(channel, why),
        }
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

    /// One operation from the hub (see [`ClusterOp`]). What cannot be
    /// taken now is refused back as an event, in the same turn.
    pub fn apply(&mut self, op: ClusterOp, inbound: &mut Vec<Inbound>) {
        // Whatever else the hub asks goes after the lines it said before.
        if !matches!(op, ClusterOp::Say { .. }) {
            self.send_batches(inbound);
        }
        match op {
            ClusterOp::Publish { room, msg } => self.publish_room(&room, msg.text()),
            ClusterOp::Notice { room, about, msg } => {
                self.notice(&room, about, msg.text(), inbound)
            }
            ClusterOp::Say {
                room,
                from,
                lines,
                keep,
                ttl_ms,
            } => {
                if !self.say(&room, from, &lines, keep, ttl_ms, inbound) {
                    inbound.push(Inbound::Refused(Refusal::Say(from)));
                }
            }
            ClusterOp::History {
                id,
                room,
                asked,
                after,
                count,
            } => {
                // Not asked only when the link is not up: its `Down`,
                // already on the way, makes the hub give up waiting.
                self.history(id, &room, asked, after, count);
            }
            ClusterOp::Ban(ban) => self.ban(&ban),
            ClusterOp::Unban(net) => self.unban(&net),
            ClusterOp::Presence(event) => self.presence(None, &event),
            ClusterOp::PresenceTo { node, event } => self.presence(Some(&node), &event),
            ClusterOp::Private {
                node,
                to,
                to_name,
                msg,
            } => self.private(&node, to, &to_name, msg.text()),
            ClusterOp::Subscribe { room, on } => self.subscribe(&room, on),
            ClusterOp::KeepTopic {
                room,
                topic,
                ttl_ms,
            } => self.keep_topic(&room, &topic, ttl_ms),
            ClusterOp::Claim { id, name } => {
                if !self.claim(id, &name) {
                    inbound.push(Inbound::Refused(Refusal::Claim(id)));
                }
            }
            ClusterOp::Release { name, id, since } => self.release(&name, id, since),
            ClusterOp::ReleaseLost { node, id, name } => self.release_lost(&node, id, &name),
            ClusterOp::Guests { used } => self.guests_wanted = Some(used),
            ClusterOp::Roster(roster) => self.on_roster(roster, inbound),
        }
    }

    /// Writes what is queued (called before the loop sleeps). Subscriptions
    /// first: a user who just joined a room announces it on `cmd`, and the
    /// SUBSCRIBE for the room's lines should reach Redis no later.
    pub fn flush(&mut self, registry: &Registry, inbound: &mut Vec<Inbound>) {
        self.send_batches(inbound);
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
mod tests;
