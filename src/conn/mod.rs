//! One client connection: its socket, its protocol's state machine, its
//! output queue and the limits that keep one client from hurting the others.
//!
//! Each protocol is a state machine of its own ([`mod@line`], [`http`], [`ws`]),
//! held in [`Proto`] and driven through one interface: the reactor asks
//! [`Proto::next`] what happened, and the answer is a [`Step`] — a line for
//! the hub, bytes to queue, a wish to read (how much), a close with its
//! reason and last bytes, or an upgrade. The machines never touch a socket
//! or a clock; an HTTP connection becomes a WebSocket by moving its state
//! into the next machine (sozu's upgrade by `take()`), keeping its socket,
//! slab key and output queue. Adding a transport is adding a variant here.
//!
//! Beneath the protocol, the connection passes its stages ([`layers`]): a
//! PROXY header expected, a TLS handshake, then the protocol; reads
//! ([`Conn::read_in`]) say when one is passed. [`Conn::accept`] sets a
//! connection up from an accepted socket, so the reactor only registers it.

pub mod http;
pub mod layers;
pub mod line;
pub mod proxy;
pub mod tls;
pub mod ws;

pub use crate::config::ENTRY_OVERHEAD;
use crate::config::{Config, MAX_IOVECS, OnSlow};
use crate::http::Request;
use crate::msg::Msg;
use crate::socket::SocketResult;
use log::warn;
use mio::net::TcpStream;
use socket2::{SockRef, TcpKeepalive};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::http::HttpSession;
pub use self::layers::{After, Expired, Input, Layers, Stage};
pub use self::line::{LineSession, Web};
use self::tls::Tls;
pub use self::ws::WsSession;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Read from, written to.
    Open,
    /// Marked to leave; the settle after this batch of events tells the hub.
    Closing,
    /// Out of the chat; flushing what is queued until the deadline.
    Draining(Instant),
    /// Done with: the sweep at the end of the turn frees it. Nothing reads,
    /// writes or queues to it meanwhile.
    Gone,
}

/// What a protocol's state machine says happened, one step at a time, so
/// the reactor can stop between lines (rate limit, per-turn budget)
/// without losing anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A line for the hub; `None` when nothing was left after cleaning (it
    /// still counts against --rate and the budget).
    Line(Option<String>),
    /// A line (or message) over --max-line was dropped: tell the client.
    TooLong,
    /// An answer to something the peer sent (a pong), queued under the
    /// --sendq policy like a chat line.
    Reply(Vec<u8>),
    /// Wants bytes from the socket, at most this many; 0: none until what
    /// it holds is used up.
    Read(usize),
    /// Leave, after queueing `last` (an HTTP answer, a close frame):
    /// graceful lets queued output drain first.
    Close {
        last: Option<Vec<u8>>,
        reason: Option<String>,
        graceful: bool,
    },
    /// The connection now speaks another protocol and joins the chat,
    /// once `answer` (the 101) is queued.
    Upgrade(Vec<u8>),
    /// The protocol is known to be the chat's: the connection joins (a
    /// line client whose first bytes are not another protocol's, see
    /// conn/line.rs).
    Join,
    /// The `/metrics` route: answer with the server's numbers, then close.
    Metrics(Request),
}

impl Step {
    /// Whether this step used the --rate token taken for it.
    pub fn is_line(&self) -> bool {
        matches!(self, Step::Line(_) | Step::TooLong)
    }
}

/// What the connection speaks: one state machine per protocol.
pub enum Proto {
    /// telnet / nc: LF-terminated lines.
    Line(LineSession),
    /// The web port until its request head is answered.
    Http(HttpSession),
    /// A browser after the upgrade.
    Ws(Box<WsSession>),
}

/// Which clients the metrics count, by transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Line,
    WebSocket,
}

/// How a chat line shared among recipients is put on this connection's wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// The line and its CRLF.
    Wire,
    /// One WebSocket text frame.
    WsFrame,
}

impl Proto {
    /// The next thing that happened, from the bytes fed so far; `eof` once
    /// the peer has finished sending.
    pub fn next(&mut self, peer: SocketAddr, eof: bool) -> Step {
        match self {
            Proto::Line(s) => s.next(eof),
            Proto::Ws(s) => s.next(peer, eof),
            Proto::Http(s) => match s.next(peer, eof) {
                http::Answered::No(step) => step,
                http::Answered::Upgrade(answer, early) => {
                    *self = Proto::Ws(Box::new(s.upgrade(peer, &early)));
                    Step::Upgrade(answer)
                }
            },
        }
    }

    /// Bytes read from the socket, no more than the last `Step::Read` asked.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self {
            Proto::Line(s) => s.feed(bytes),
            Proto::Http(s) => s.feed(bytes),
            Proto::Ws(s) => {
                s.feed(bytes);
            }
        }
    }

    /// A line client said nothing foreign within QUIET_WAIT of its start:
    /// it joins without waiting for its first line.
    pub fn quiet(&mut self) {
        if let Proto::Line(s) = self {
            s.quiet();
        }
    }

    /// The socket has nothing more for now.
    pub fn would_block(&mut self) {
        if let Proto::Line(s) = self {
            s.would_block();
        }
    }

    /// In the chat from the start (the hub is told at accept), rather than
    /// after an upgrade.
    pub fn in_chat(&self) -> bool {
        !matches!(self, Proto::Http(_))
    }

    /// For the log line that says a client arrived.
    pub fn joined_via(&self) -> &'static str {
        match self {
            Proto::Ws(_) => " over WebSocket",
            _ => "",
        }
    }

    pub fn transport(&self) -> Option<Transport> {
        match self {
            Proto::Line(_) => Some(Transport::Line),
            Proto::Ws(_) => Some(Transport::WebSocket),
            Proto::Http(_) => None,
        }
    }

    /// A deadline of the protocol's own (an HTTP head within
    /// --http-timeout), while it applies.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Proto::Http(s) => s.deadline(),
            _ => None,
        }
    }

    /// Why the connection is closed at its deadline, if it has passed and
    /// still applies.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        self.deadline()
            .filter(|&t| t <= now)
            .map(|_| Expired::Request)
    }

    /// Whether a quiet client is pinged before --idle-timeout closes it.
    pub fn pings(&self) -> bool {
        matches!(self, Proto::Ws(_))
    }

    /// The keep-alive ping for a quiet client, if the protocol has one.
    pub fn ping(&self) -> Option<Vec<u8>> {
        self.pings().then(|| crate::ws::ping_frame(b"chatd"))
    }

    /// The last bytes after the chat's goodbye when the client leaves
    /// gracefully (quit, idle): a WebSocket's close frame.
    pub fn goodbye(&self, reason: &str) -> Option<Vec<u8>> {
        match self {
            Proto::Ws(s) => s.goodbye(reason),
            _ => None,
        }
    }

    /// The last bytes when the server shuts down.
    pub fn shutdown(&self) -> Option<Vec<u8>> {
        self.pings()
            .then(|| crate::ws::close_frame(Some(crate::ws::GOING_AWAY), "server shutting down"))
    }

    /// The last bytes when the client is cut off for being too slow,
    /// written straight to the socket (best effort) in place of its queue.
    pub fn cut_off(&self) -> Option<Vec<u8>> {
        self.pings()
            .then(|| crate::ws::close_frame(Some(crate::ws::POLICY), "too slow"))
    }

    fn encoding(&self) -> Encoding {
        match self {
            Proto::Ws(_) => Encoding::WsFrame,
            _ => Encoding::Wire,
        }
    }
}

/// Counts the clients in the chat by transport, for `/metrics`:
/// (line, WebSocket).
pub fn census<'a>(conns: impl Iterator<Item = &'a Conn>) -> (u64, u64) {
    let (mut line, mut ws) = (0, 0);
    for c in conns.filter(|c| c.state == State::Open) {
        match c.proto.transport() {
            Some(Transport::Line) => line += 1,
            Some(Transport::WebSocket) => ws += 1,
            None => {}
        }
    }
    (line, ws)
}

/// The answer to a client refused because the server is full, as its
/// listener's protocol speaks.
pub fn refusal(proto: &Proto, text: &str) -> Vec<u8> {
    match proto {
        Proto::Http(_) => crate::http::response(
            503,
            "text/plain; charset=utf-8",
            text.as_bytes(),
            false,
            &[],
        ),
        _ => format!("{text}\r\n").into_bytes(),
    }
}

/// One entry of the output queue: a chat line shared with other
/// recipients, encoded as this connection's protocol needs; or bytes for
/// this connection alone (an HTTP answer, a pong, a close frame).
enum Item {
    Shared(Rc<Msg>),
    Own(Box<[u8]>),
}

/// What one queue entry costs beyond the bytes it sends, charged against
/// --sendq with them so that --sendq bounds memory for any input: counting
/// payload alone, a client that never reads cost 14 MiB, not 1 MiB, for
/// 8-byte private messages.
///
/// Measured on x86_64 with glibc malloc (the unit test below pins it):
/// - the queue slot: `size_of::<Item>()` = 16 bytes, and the queue holds at
///   most `SLOTS_PER_ENTRY` slots per entry (it doubles when full, and
///   `advance` halves it when three quarters are free): 64;
/// - the `Rc<Msg>` allocation: 16 bytes of counts + `size_of::<Msg>()` = 40,
///   a 64-byte malloc chunk;
/// - malloc rounding of the payload buffer: a chunk is the request plus an
///   8-byte header rounded up to 16, at least 32 — at most 32 bytes more
///   than the payload.
///
/// Together 160 bytes: a 1-byte private message (`*bob* x`, 9 bytes on
/// the wire with its CRLF) is charged 169 bytes; it occupies 16 × 1 to 4
/// for the slot, 64 for the `Rc<Msg>` and 32 for the buffer: 112 to 160.
///
/// The figure lives in config.rs with the other bounds (--sendq's minimum
/// depends on it); this proves it against the layout at compile time.
const _: () = assert!(
    ENTRY_OVERHEAD
        == SLOTS_PER_ENTRY * size_of::<Item>()
            + malloc_chunk(2 * size_of::<usize>() + size_of::<Msg>())
            + 32
);

/// Queue slots allocated per queued entry at most (see `shrink_queue`).
const SLOTS_PER_ENTRY: usize = 4;
/// A queue never shrinks below this: an active connection would otherwise
/// free and allocate its queue on every line.
const MIN_SLOTS: usize = 8;

/// glibc's malloc chunk for an `n`-byte request on a 64-bit machine.
const fn malloc_chunk(n: usize) -> usize {
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// What happened to a line offered to a connection's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued, and the queue was empty: the connection needs a flush.
    First,
    /// Not queued: the connection is not taking chat lines any more.
    Ignored,
    /// Not queued (`--on-slow drop`); counted and reported later.
    Dropped,
    /// Would pass --sendq under `--on-slow disconnect`.
    TooSlow,
}

pub struct Conn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub proto: Proto,
    pub state: State,
    /// The hub knows it (it joined the chat): the hub is told when it leaves.
    pub joined: bool,
    /// Why it leaves, for the room and the log; None for a plain EOF.
    pub reason: Option<String>,
    /// Whether leaving lets queued output drain first (quit, EOF) or not
    /// (reset, too slow).
    pub graceful: bool,
    /// Already on the reactor's list of connections with unread input.
    pub in_readable: bool,
    /// Already on the reactor's list of connections to flush.
    pub in_pending: bool,
    /// The peer shut down its write side; once its lines are taken, close.
    pub eof: bool,
    pub bucket: Option<Bucket>,
    /// Out of budget, waiting for its timer: not read until woken (one
    /// timer per wait, however many readable events arrive meanwhile).
    pub throttled: bool,
    /// Lines read but not yet taken by the hub, which waits for Redis for
    /// this client (`Hub::busy`): bounded by one turn's read budget, since
    /// nothing more is read from the connection until they are taken.
    pub held: Vec<String>,
    /// On the reactor's list of connections waiting for the hub.
    pub stalled: bool,
    /// Registered for writable events: only while a flush left output
    /// behind.
    pub want_write: bool,
    pub since: Instant,
    /// When bytes last arrived from the peer (--idle-timeout).
    pub last_active: Instant,
    /// A keep-alive ping went out since `last_active` (--idle-timeout).
    pub pinged: bool,
    /// Tells this connection from an earlier one under the same slab key, so
    /// a timer set for the earlier one cannot fire on it.
    pub serial: u64,
    /// The stages beneath the protocol (PROXY header, TLS), and TLS
    /// beneath it for good once the handshake is done.
    layers: Layers,
    /// Counted in the per-address table (released when it goes).
    pub admitted: bool,
    out: VecDeque<Item>,
    /// Bytes of `out[0]` already written.
    head: usize,
    queued: usize,
    /// Lines dropped since the client was last told (--on-slow drop).
    dropped: u64,
    /// Lines dropped since it connected, for /stats.
    dropped_total: u64,
    /// Bytes written to the socket since it connected, for the metrics.
    sent: u64,
    warned: bool,
}

impl Conn {
    pub fn new(sock: TcpStream, peer: SocketAddr, proto: Proto, bucket: Option<Bucket>) -> Conn {
        let now = Instant::now();
        Conn {
            sock,
            peer,
            proto,
            state: State::Open,
            joined: false,
            reason: None,
            graceful: true,
            in_readable: false,
            in_pending: false,
            eof: false,
            bucket,
            throttled: false,
            held: Vec::new(),
            stalled: false,
            want_write: false,
            since: now,
            last_active: now,
            pinged: false,
            serial: 0,
            layers: Layers::none(),
            admitted: false,
            out: VecDeque::new(),
            head: 0,
            queued: 0,
            dropped: 0,
            dropped_total: 0,
            sent: 0,
            warned: false,
        }
    }

    /// Sets up a connection accepted on a listener whose connections start
    /// as `proto`, through TLS with `tls` (a TLS port): socket options,
    /// --rate bucket, and the stages beneath the protocol, which must be
    /// passed within --http-timeout from `now`. An error says why it is
    /// dropped.
    pub fn accept(
        sock: TcpStream,
        peer: SocketAddr,
        proto: Proto,
        tls: Option<&Arc<rustls::ServerConfig>>,
        cfg: &Config,
        now: Instant,
    ) -> Result<Conn, String> {
        let tls = match tls.map(Tls::new).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => return Err(format!("cannot start TLS: {e}")),
        };
        // Under --proxy-protocol a trusted proxy must send the header
        // (and is waited for); anyone else's is watched for and refused.
        let proxy = cfg.proxy_protocol.then(|| {
            let ip = peer.ip().to_canonical();
            cfg.trusted_proxy.iter().any(|n| n.contains(&ip))
        });
        // Chat lines are small and latency matters; we already batch
        // every line for a client into one writev per turn.
        let _ = sock.set_nodelay(true);
        if cfg.keepalive > 0
            && let Err(e) = set_keepalive(&sock, Duration::from_secs(cfg.keepalive))
        {
            warn!("{peer}: cannot set TCP keepalive: {e}");
        }
        let bucket = cfg
            .rate
            .map(|rate| Bucket::new(rate, cfg.burst.unwrap_or(rate), now));
        let mut conn = Conn::new(sock, peer, proto, bucket);
        let deadline = now + Duration::from_secs(cfg.http_timeout);
        conn.layers = Layers::new(proxy, tls, deadline);
        Ok(conn)
    }

    /// Where the connection is on its way to the protocol.
    pub fn stage(&self) -> &Stage {
        self.layers.stage()
    }

    /// Whether the client's address is known at accept (None: a trusted
    /// proxy's header is to tell it, as `Input::Addressed`), and what
    /// comes then.
    pub fn address_at_accept(&self) -> Option<After> {
        self.layers.at_accept()
    }

    /// The deadline that applies now: the stages' until they are passed,
    /// then the protocol's own.
    pub fn deadline(&self) -> Option<Instant> {
        match self.layers.pending() {
            Some((at, _)) => Some(at),
            None => self.proto.deadline(),
        }
    }

    /// Why the connection is closed at its deadline, if it has passed.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        match self.layers.pending() {
            Some((at, why)) => (at <= now).then_some(why),
            None => self.proto.expired(now),
        }
    }

    /// Reads what the protocol asked for (`buf` is sized by its
    /// `Step::Read`) through the stages: the PROXY header first, then TLS.
    pub fn read_in(&mut self, buf: &mut [u8]) -> Input {
        self.layers.read_in(&self.sock, buf)
    }

    /// On a TLS port: what a client whose first bytes are plain text is
    /// told before the close.
    pub fn tell_plain(&mut self, answer: Rc<[u8]>) {
        self.layers.tell_plain(answer);
    }

    /// Output waits beneath the queue (TLS handshake records, an alert):
    /// the connection needs a flush even with nothing queued.
    pub fn wants_flush(&self) -> bool {
        self.layers.wants_flush()
    }

    /// Writes `bytes` at once, best effort, in place of the queue (the
    /// close frame for a client cut off for being too slow).
    pub fn write_last(&mut self, bytes: &[u8]) {
        self.layers.write_last(&self.sock, bytes);
    }

    /// Ends TLS properly once the queue is written (a graceful close).
    pub fn close_notify(&mut self) {
        self.layers.close_notify();
    }

    /// Bytes waiting to be written (for /stats and logs).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// What the queue costs, as --sendq counts it: its bytes and
    /// ENTRY_OVERHEAD for each entry.
    pub fn charged(&self) -> usize {
        self.queued + self.out.len() * ENTRY_OVERHEAD
    }

    /// Lines dropped for this client since it connected (--on-slow drop).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Bytes written to the socket since it connected.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The peer sent something: it is not idle, and owes no pong.
    pub fn touch(&mut self, now: Instant) {
        self.last_active = now;
        self.pinged = false;
    }

    /// The bytes this connection sends for `item`.
    fn bytes<'a>(&self, item: &'a Item) -> &'a [u8] {
        match (item, self.proto.encoding()) {
            (Item::Shared(msg), Encoding::WsFrame) => msg.ws_frame(),
            (Item::Shared(msg), Encoding::Wire) => msg.wire(),
            (Item::Own(bytes), _) => bytes,
        }
    }

    /// Offers a chat line under the --sendq policy.
    pub fn push(&mut self, msg: &Rc<Msg>, sendq: usize, on_slow: OnSlow) -> Push {
        if self.state != State::Open {
            return Push::Ignored;
        }
        let len = self.bytes_of(msg) + ENTRY_OVERHEAD;
        if self.charged() + len > sendq {
            return match on_slow {
                OnSlow::Disconnect => Push::TooSlow,
                OnSlow::Drop => {
                    self.dropped += msg.lines() as u64;
                    self.dropped_total += msg.lines() as u64;
                    Push::Dropped
                }
            };
        }
        let first = self.out.is_empty();
        self.enqueue(Item::Shared(msg.clone()));
        if !self.warned && self.charged() > sendq / 2 {
            // Once per episode of falling behind: re-armed when the queue empties.
            self.warned = true;
            let kib = self.charged() / 1024;
            self.push_notice(&format!(
                "*** warning: you are falling behind ({kib} KiB queued)"
            ));
        }
        if first { Push::First } else { Push::Queued }
    }

    fn bytes_of(&self, msg: &Rc<Msg>) -> usize {
        match self.proto.encoding() {
            Encoding::WsFrame => msg.ws_frame().len(),
            Encoding::Wire => msg.wire().len(),
        }
    }

    /// Queues a line regardless of state and limits: the server's own last
    /// words (bye, shutting down), which are small and bounded in number.
    /// True if the queue was empty (the connection needs a flush).
    pub fn push_notice(&mut self, text: &str) -> bool {
        let first = self.out.is_empty();
        self.enqueue(Item::Shared(Msg::new(text)));
        first
    }

    /// Queues the answer to something the peer sent (a pong) under the
    /// --sendq policy, like a chat line: a client that pings and never reads
    /// would otherwise grow its queue without bound. Under `--on-slow drop`
    /// the answer is skipped (RFC 6455 5.5.3 lets a pong answer only the
    /// latest of several pings); it is not a line, so it is not counted.
    pub fn push_reply(&mut self, bytes: Vec<u8>, sendq: usize, on_slow: OnSlow) -> Push {
        if self.state != State::Open {
            return Push::Ignored;
        }
        if self.charged() + bytes.len() + ENTRY_OVERHEAD > sendq {
            return match on_slow {
                OnSlow::Disconnect => Push::TooSlow,
                OnSlow::Drop => Push::Dropped,
            };
        }
        if self.push_raw(bytes) {
            Push::First
        } else {
            Push::Queued
        }
    }

    /// Queues protocol bytes for this connection alone (HTTP answers,
    /// WebSocket control frames). Like notices, they are few and small.
    pub fn push_raw(&mut self, bytes: Vec<u8>) -> bool {
        let first = self.out.is_empty();
        self.enqueue(Item::Own(bytes.into_boxed_slice()));
        first
    }

    fn enqueue(&mut self, item: Item) {
        self.queued += self.bytes(&item).len();
        self.out.push_back(item);
    }

    /// Part of the front item is on the wire: the peer is inside a line or
    /// a frame, so anything else written now would land in the middle of it.
    pub fn mid_item(&self) -> bool {
        self.head > 0
    }

    /// Drops everything queued (a connection that is cut off).
    pub fn discard_output(&mut self) {
        self.out.clear();
        self.head = 0;
        self.queued = 0;
    }

    /// Writes as much of the queue as the socket takes, in as few syscalls
    /// as possible: one writev carries up to MAX_IOVECS queued lines.
    /// Done when the queue is empty, WouldBlock when the socket is full.
    pub fn flush(&mut self) -> SocketResult {
        loop {
            // What the layers hold (TLS records) goes first: it is older
            // than anything queued.
            match self.layers.write_held(&self.sock) {
                SocketResult::Done(_) => {}
                other => return other,
            }
            if self.out.is_empty() {
                if self.dropped > 0 && self.state == State::Open {
                    let n = std::mem::take(&mut self.dropped);
                    let s = if n == 1 { "" } else { "s" };
                    self.push_notice(&format!("*** {n} line{s} dropped (you fell behind)"));
                    continue;
                }
                self.warned = false;
                if self.layers.take_notify() {
                    continue;
                }
                return SocketResult::Done(0);
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            let mut total = 0;
            let batch_max = self.layers.batch_max();
            for (i, item) in self.out.iter().take(MAX_IOVECS).enumerate() {
                let bytes = self.bytes(item);
                let bytes = if i == 0 { &bytes[self.head..] } else { bytes };
                if i > 0 && total + bytes.len() > batch_max {
                    break;
                }
                iov[i] = IoSlice::new(bytes);
                total += bytes.len();
                n += 1;
            }
            match self.layers.write(&self.sock, &iov[..n]) {
                SocketResult::Done(taken) => self.advance(taken),
                other => return other,
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        self.sent += written as u64;
        while written > 0 {
            let Some(front) = self.out.front() else { break };
            let left = self.bytes(front).len() - self.head;
            if written >= left {
                written -= left;
                self.head = 0;
                self.out.pop_front();
            } else {
                self.head += written;
                written = 0;
            }
        }
        self.shrink_queue();
    }

    /// Gives back queue slots once three quarters are free, so the queue
    /// never holds more than SLOTS_PER_ENTRY slots per entry (beyond
    /// MIN_SLOTS): slots left behind by a burst of small lines would
    /// otherwise stay allocated, uncounted, for the connection's life.
    fn shrink_queue(&mut self) {
        let (len, cap) = (self.out.len(), self.out.capacity());
        if cap > MIN_SLOTS && len * SLOTS_PER_ENTRY < cap {
            self.out.shrink_to((len * 2).max(MIN_SLOTS));
        }
    }
}

/// Token bucket for --rate/--burst: `burst` lines at once, then `rate` a second.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes one line's worth, or says when one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait))
        }
    }

    /// Gives back a token taken for a line that was not there after all.
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

/// TCP keepalive for a client socket: probes start after `idle` of silence,
/// then go every `idle / 10` (1 to 10 s) and three unanswered ones drop the
/// peer, so a vanished one is noticed after `idle` plus at most 30 s.
/// TCP_USER_TIMEOUT gets the same total: keepalive only runs while nothing
/// is in flight, and without it a peer that vanished with chat lines
/// unacknowledged would be retransmitted to for about 15 minutes.
/// Either way the next read fails with ETIMEDOUT: "connection lost".
pub fn set_keepalive(sock: &TcpStream, idle: Duration) -> io::Result<()> {
    // Whole seconds: that is what TCP_KEEPINTVL holds.
    let interval = Duration::from_secs((idle.as_secs() / 10).clamp(1, 10));
    let params = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    let sock = SockRef::from(sock);
    sock.set_tcp_keepalive(&params)?;
    sock.set_tcp_user_timeout(Some(idle + interval * KEEPALIVE_PROBES))
}

/// Unanswered keepalive probes before a peer counts as gone.
pub const KEEPALIVE_PROBES: u32 = 3;

/// A state machine's steps until it asks to read or closes (bounded), for
/// the protocols' unit tests.
#[cfg(test)]
pub(crate) fn steps_until_read(mut next: impl FnMut() -> Step) -> Vec<Step> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let step = next();
        let done = matches!(step, Step::Read(_) | Step::Close { .. });
        out.push(step);
        if done {
            return out;
        }
    }
    panic!("no end: {out:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wake = b.take(t0).unwrap_err();
        assert!(wake > t0 && wake <= t0 + Duration::from_millis(101));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn mid_item_while_a_queued_line_is_partly_written() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = sock.local_addr().unwrap();
        let mut c = Conn::new(
            TcpStream::from_std(sock),
            peer,
            Proto::Http(HttpSession::new(Instant::now(), 100)),
            None,
        );
        c.push_raw(b"first".to_vec());
        c.push_raw(b"second".to_vec());
        assert!(!c.mid_item());
        c.advance(3);
        assert!(c.mid_item(), "3 of 5 bytes of the first item written");
        c.advance(2);
        assert!(!c.mid_item(), "at the start of the second");
        c.advance(6);
        assert!(!c.mid_item());
        c.push_raw(b"third".to_vec());
        c.advance(1);
        c.discard_output();
        assert!(!c.mid_item());
    }

    #[test]
    fn replies_obey_sendq() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = sock.local_addr().unwrap();
        let proto = Proto::Http(HttpSession::new(Instant::now(), 100));
        let mut c = Conn::new(TcpStream::from_std(sock), peer, proto, None);
        // Two replies of 60 and 40 bytes fill it exactly, bookkeeping included.
        let sendq = 100 + 2 * ENTRY_OVERHEAD;
        assert_eq!(
            c.push_reply(vec![0; 60], sendq, OnSlow::Disconnect),
            Push::First
        );
        assert_eq!(
            c.push_reply(vec![0; 40], sendq, OnSlow::Disconnect),
            Push::Queued
        );
        assert_eq!(
            c.push_reply(vec![0; 1], sendq, OnSlow::Disconnect),
            Push::TooSlow
        );
        assert_eq!(c.push_reply(vec![0; 1], sendq, OnSlow::Drop), Push::Dropped);
        assert_eq!(c.queued(), 100);
        assert_eq!(c.charged(), sendq);
        c.state = State::Closing;
        assert_eq!(c.push_reply(vec![0; 1], 1000, OnSlow::Drop), Push::Ignored);
    }

    #[test]
    fn entry_overhead_matches_the_layout_it_was_measured_on() {
        // If a type grows, ENTRY_OVERHEAD grows with it; these pin the
        // figures the comment gives.
        assert_eq!(size_of::<Item>(), 16);
        assert_eq!(size_of::<Msg>(), 40);
        assert_eq!(ENTRY_OVERHEAD, 160);
        for n in 0..4096 {
            assert!(malloc_chunk(n) >= n + 8 && malloc_chunk(n) <= n + 32);
        }
    }

    fn conn() -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = sock.local_addr().unwrap();
        let proto = Proto::Line(LineSession::new(100));
        Conn::new(TcpStream::from_std(sock), peer, proto, None)
    }

    #[test]
    fn sendq_charges_each_entry_its_overhead() {
        let mut c = conn();
        let sendq = 64 * 1024;
        let msg = Msg::new("*a* x");
        let mut n = 0;
        while c.push(&msg, sendq, OnSlow::Disconnect) != Push::TooSlow {
            n += 1;
            assert!(n < sendq, "never full");
        }
        // 7 bytes on the wire and 160 of bookkeeping each, plus the
        // falling-behind warning (under 64 bytes).
        assert_eq!(n, (sendq - 64 - ENTRY_OVERHEAD) / (7 + ENTRY_OVERHEAD));
        assert_eq!(c.out.len(), n + 1);
        assert_eq!(c.charged(), c.queued() + (n + 1) * ENTRY_OVERHEAD);
        assert!(c.charged() <= sendq);
    }

    #[test]
    fn the_queue_gives_back_its_slots_as_it_drains() {
        let mut c = conn();
        let msg = Msg::new("x");
        for _ in 0..10_000 {
            c.push(&msg, 1 << 30, OnSlow::Disconnect);
        }
        assert!(c.out.capacity() >= 10_000);
        for left in (0..10_000).rev() {
            c.advance(3);
            let cap = c.out.capacity();
            assert!(
                cap <= (left * SLOTS_PER_ENTRY).max(MIN_SLOTS),
                "{left} in {cap}"
            );
        }
        assert_eq!(c.charged(), 0);
    }

    #[test]
    fn an_http_connection_becomes_a_websocket_by_moving_its_state() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut p = Proto::Http(HttpSession::new(Instant::now(), 100));
        assert!(!p.in_chat() && p.deadline().is_some() && !p.pings());
        // The head, and a masked text frame "hi" right behind it.
        p.feed(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
              \x81\x82\x01\x02\x03\x04\x69\x6b",
        );
        let Step::Upgrade(answer) = p.next(peer, false) else {
            panic!("no upgrade");
        };
        assert!(answer.starts_with(b"HTTP/1.1 101 "));
        assert!(matches!(p, Proto::Ws(_)));
        assert!(p.in_chat() && p.deadline().is_none() && p.pings());
        assert_eq!(p.encoding(), Encoding::WsFrame);
        // The frame that came with the head is the WebSocket's first line.
        assert_eq!(p.next(peer, false), Step::Line(Some("hi".into())));
        assert!(matches!(p.next(peer, false), Step::Read(n) if n > 0));
        assert!(p.goodbye("bye").is_some() && p.shutdown().is_some());
    }

    #[test]
    fn each_protocol_knows_its_own_goodbye() {
        let line = Proto::Line(LineSession::new(10));
        assert_eq!(line.goodbye("quit"), None);
        assert_eq!(line.shutdown(), None);
        assert_eq!(line.cut_off(), None);
        assert_eq!(line.ping(), None);
        assert_eq!(line.encoding(), Encoding::Wire);
        let ws = Proto::Ws(Box::new(WsSession::new(10)));
        assert_eq!(
            ws.goodbye("idle"),
            Some(crate::ws::close_frame(Some(crate::ws::NORMAL), "idle"))
        );
        assert_eq!(
            ws.cut_off(),
            Some(crate::ws::close_frame(Some(crate::ws::POLICY), "too slow"))
        );
        assert_eq!(ws.ping(), Some(crate::ws::ping_frame(b"chatd")));
        let http = Proto::Http(HttpSession::new(Instant::now(), 10));
        assert_eq!(http.goodbye("x"), None);
        assert!(
            http.expired(Instant::now() + Duration::from_secs(1))
                .is_some()
        );
        assert_eq!(refusal(&line, "full"), b"full\r\n");
        assert!(refusal(&http, "full").starts_with(b"HTTP/1.1 503 "));
    }
}
