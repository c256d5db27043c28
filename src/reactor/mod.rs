//! The event loop: one thread, one `mio::Poll`, every socket in one slab.
//!
//! A turn of the loop:
//! 1. `poll` (without waiting if a connection still has input from last turn);
//! 2. dispatch events: accept, signals, and per connection only *note* what
//!    is ready (a connection with input goes on the `readable` list);
//! 3. read: each listed connection gets at most `LINE_BUDGET` lines or
//!    `READ_BUDGET_BYTES` bytes; one that still has input goes back on the
//!    list for the next turn, so a flooder cannot starve anyone;
//! 4. settle: tell the hub about connections marked as closing, then flush
//!    every connection with fresh output (one writev each), and repeat
//!    while flushing finds new casualties;
//! 5. timers (timer.rs): rate-limit wake-ups, drain deadlines, a protocol's
//!    own deadline, --idle-timeout and pings, accept retries;
//! 6. sweep: free the slab entries of connections that are gone.
//!
//! The reactor knows no protocol and no layer: it reads as much as a
//! connection's state machine asks for (`Proto::next` -> `Step::Read`)
//! through the connection's stages (`Conn::read_in`), feeds it, and acts
//! on the steps and outcomes they return (conn/). Beside the turn:
//! listeners.rs (the listening sockets, and which machine a connection
//! starts in), outbox.rs (hub output -> queues and link calls),
//! startup.rs (`Config` -> the long-lived parts).
//!
//! Slab entries are only freed in step 6: anything done with a connection
//! marks it `Gone` and lists it for the sweep. So a key in an event, or in
//! any list built during a turn, names the same connection all turn long;
//! the one list that outlives a turn (`readable`) and the timers name a
//! connection by key and serial, so a later connection under the same key
//! is never taken for it.

mod admission;
mod listeners;
mod outbox;
mod stalled;
mod startup;

use self::listeners::{Listeners, PORTS, Port};
use self::outbox::{Out, cut_off, mark_closing};
use self::startup::unix_ms;
use crate::cluster::{self, Inbound, Link};
use crate::config::{Config, DRAIN_SECS, LINE_BUDGET, QUIET_WAIT, READ_BUDGET_BYTES};
use crate::conn::{self, After, Conn, Expired, Input, Push, State, Step};
use crate::http::Request;
use crate::hub::{ClientId, ClusterOp, Hub, Outbox};
use crate::idle::{self, Action};
use crate::limits::{PerAddr, Refused};
use crate::metrics::{self, Metrics, Scrape};
use crate::msg::Msg;
use crate::socket::{self, SocketResult};
use crate::timer::{ConnRef, Timer, Timers};
use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(usize::MAX - 2);
/// The bans file's writer has finished a write (startup.rs).
const BANS_WRITTEN: Token = Token(usize::MAX - 6);

pub struct Server {
    poll: Poll,
    events: Events,
    /// Every listening socket (listeners.rs), and the accept retry.
    listeners: Listeners,
    signals: Signals,
    conns: Slab<Conn>,
    hub: Hub,
    cfg: Config,
    /// One read buffer for every connection: input is copied out of it into
    /// a connection's state machine only as far as a line is still incomplete.
    scratch: Box<[u8]>,
    /// Connections that may have unread input; kept across turns, so
    /// named with their serial.
    readable: Vec<ConnRef>,
    /// Connections whose lines wait for the hub (`Hub::busy`), not read
    /// until it is done waiting (see `wake`); kept across turns.
    stalled: Vec<ConnRef>,
    /// Connections with output queued since their last flush.
    pending: Vec<usize>,
    /// Connections marked to leave during this turn.
    closing: Vec<usize>,
    /// Connections gone during this turn, freed by the sweep.
    gone: Vec<usize>,
    /// Every per-connection deadline, and the accept retry.
    timers: Timers,
    shutdown: Option<Instant>,
    /// Cluster mode: the link to Redis, what it heard but the hub has not
    /// been told yet, and what the hub asked of it that it has not taken.
    link: Option<Link>,
    inbound: Vec<Inbound>,
    ops: Vec<ClusterOp>,
    metrics: Metrics,
    /// The serial the next accepted connection gets.
    next_serial: u64,
    /// The self-signed certificate's SHA-256 fingerprint and path, for the
    /// operator and clients that pin it.
    fingerprint: Option<(String, std::path::PathBuf)>,
    /// --max-per-ip and --max-connects.
    per_addr: PerAddr,
    /// Writes the bans file off the loop (startup.rs).
    bans_writer: startup::BansWriter,
    next_prune: Instant,
    /// Remote users left out of the full mirror, as last logged, and when
    /// the next log may be.
    mirror_warned: (u64, Option<Instant>),
}

/// How often the per-address table is swept of entries with nothing left
/// to count.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The most rounds of hub -> link -> hub in one exchange (see `exchange`).
const EXCHANGE_ROUNDS: usize = 8;

/// Whether connection `k` may take one more step (a line, a message)
/// now: it is open, within its share of this turn, and under --rate has a
/// token, which this takes (give it back with `Bucket::refund` if there was
/// no line after all). If not, it is put where it will be resumed: the next
/// turn's readable list, or the timer list until its budget refills.
fn admit(
    c: &mut Conn,
    k: usize,
    now: Instant,
    taken: usize,
    bytes: usize,
    readable: &mut Vec<ConnRef>,
    timers: &mut Timers,
) -> bool {
    if c.state != State::Open || c.throttled {
        // A throttled connection already has its timer.
        return false;
    }
    let me = ConnRef {
        key: k,
        serial: c.serial,
    };
    if taken >= LINE_BUDGET || bytes >= READ_BUDGET_BYTES {
        c.in_readable = true;
        readable.push(me);
        return false;
    }
    if let Some(bucket) = c.bucket.as_mut()
        && let Err(wake) = bucket.take(now)
    {
        debug!("{} rate-limited until {wake:?}", c.peer);
        c.throttled = true;
        timers.push(wake, Timer::Wake(me));
        return false;
    }
    true
}

/// The connection a timer or a list names, if it is still there.
fn live(conns: &mut Slab<Conn>, me: ConnRef) -> Option<&mut Conn> {
    conns
        .get_mut(me.key)
        .filter(|c| c.serial == me.serial && c.state != State::Gone)
}

impl Server {
    /// Runs until SIGINT or SIGTERM, then says goodbye to everyone, flushes
    /// for up to DRAIN_SECS and returns.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn = Instant::now();
            // Read once per turn: history times and epochs come from it.
            self.hub.tick(unix_ms());
            self.dispatch();
            self.read_ready();
            // The operators' answers to /ban and /unban go out once the
            // change is on disk (or with why it is not).
            self.save_bans();
            self.settle();
            self.timers();
            self.flush_link();
            self.sweep();
            self.metrics.turn(turn.elapsed());
            if let Some(deadline) = self.shutdown
                && (self.conns.is_empty() || Instant::now() >= deadline)
            {
                self.finish_bans();
                info!(
                    "shut down; {} connection(s) left unflushed",
                    self.conns.len()
                );
                return Ok(());
            }
        }
    }

    fn out(&mut self) -> (&mut Hub, Out<'_>) {
        (
            &mut self.hub,
            Out {
                conns: &mut self.conns,
                pending: &mut self.pending,
                closing: &mut self.closing,
                sendq: self.cfg.sendq as usize,
                on_slow: self.cfg.on_slow,
                ops: self.link.is_some().then_some(&mut self.ops),
                metrics: &mut self.metrics,
            },
        )
    }

    /// The hub and the link talk in data, never calling each other: what
    /// the hub asked goes to the link, and what the link answered or heard
    /// goes to the hub, until neither has more. That takes a few rounds at
    /// most (a roster asked and given, a refusal told); what is left after
    /// the bound waits for the next turn.
    fn exchange(&mut self) {
        for _ in 0..EXCHANGE_ROUNDS {
            if let Some(link) = self.link.as_mut() {
                for op in self.ops.drain(..) {
                    link.apply(op, &mut self.inbound);
                }
            }
            if self.inbound.is_empty() {
                return;
            }
            for event in std::mem::take(&mut self.inbound) {
                let (hub, mut out) = self.out();
                event.apply(hub, &mut out);
            }
            self.settle();
            self.wake();
        }
    }

    /// Hands the link what the hub asked this turn, in the order asked and
    /// before the link's own bookkeeping; keeps the link's timers; sends.
    fn flush_link(&mut self) {
        if self.link.is_none() {
            return;
        }
        self.exchange();
        if let Some(link) = self.link.as_mut() {
            link.tick(Instant::now(), self.poll.registry(), &mut self.inbound);
        }
        self.exchange();
        if let Some(link) = self.link.as_mut() {
            link.flush(self.poll.registry(), &mut self.inbound);
        }
        if !self.inbound.is_empty() {
            self.exchange();
            if let Some(link) = self.link.as_mut() {
                link.flush(self.poll.registry(), &mut self.inbound);
            }
        }
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.readable.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = self
            .timers
            .next()
            .into_iter()
            .chain(self.shutdown)
            .chain(self.link.as_ref().and_then(Link::deadline))
            .chain(Some(self.metrics.next_tick()))
            .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn dispatch(&mut self) {
        let mut accept = [false; PORTS];
        let mut signalled = false;
        for event in self.events.iter() {
            if let Some(port) = Listeners::port_of(event.token()) {
                accept[port as usize] = true;
                continue;
            }
            match event.token() {
                cluster::CMD | cluster::SUB => {
                    if let Some(link) = self.link.as_mut() {
                        link.ready(event.token(), self.poll.registry(), &mut self.inbound);
                    }
                }
                SIGNALS => signalled = true,
                // save_bans, every turn, takes the result.
                BANS_WRITTEN => {}
                Token(k) => {
                    let Some(c) = self.conns.get_mut(k) else {
                        continue;
                    };
                    // Error and hang-up flags are hints: the read or write
                    // that follows tells what really happened.
                    if (event.is_readable() || event.is_read_closed() || event.is_error())
                        && !c.in_readable
                    {
                        c.in_readable = true;
                        self.readable.push(ConnRef {
                            key: k,
                            serial: c.serial,
                        });
                    }
                    if (event.is_writable() || event.is_error()) && !c.in_pending {
                        c.in_pending = true;
                        self.pending.push(k);
                    }
                }
            }
        }
        if signalled {
            self.on_signals();
        }
        self.exchange();
        for port in Port::all().filter(|&p| accept[p as usize]) {
            self.accept(port);
        }
    }

    fn on_signals(&mut self) {
        let got: Vec<i32> = self.signals.pending().collect();
        if got.is_empty() || self.shutdown.is_some() {
            return;
        }
        info!("signal {got:?}: shutting down");
        let (hub, mut out) = self.out();
        hub.shutdown(&mut out);
        let deadline = Instant::now() + Duration::from_secs(DRAIN_SECS);
        self.shutdown = Some(deadline);
        self.listeners.close(self.poll.registry());
        // The run loop ends at `deadline`: no drain timers are needed.
        for (k, c) in self.conns.iter_mut() {
            if c.state == State::Open || c.state == State::Closing {
                if c.proto.in_chat() {
                    c.push_notice("*** server shutting down");
                }
                if let Some(last) = c.proto.shutdown() {
                    c.push_raw(last);
                }
                c.state = State::Draining(deadline);
                if !c.in_pending {
                    c.in_pending = true;
                    self.pending.push(k);
                }
            }
        }
        self.closing.clear();
    }

    /// Takes the connections waiting on a listener: each comes set up in
    /// its port's first state (listeners.rs); here it only gets a slab
    /// key, a serial, its deadline and a first read.
    fn accept(&mut self, port: Port) {
        while let Some(mut conn) = self.listeners.accept(
            port,
            &self.cfg,
            self.conns.len(),
            &mut self.timers,
            &mut self.metrics,
        ) {
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut conn.sock,
                Token(k),
                // Writable interest is added only while output is stuck
                // (see `flush`): a socket with room gets no events for it.
                Interest::READABLE,
            ) {
                warn!("{} dropped: cannot register: {e}", conn.peer);
                continue;
            }
            let me = ConnRef {
                key: k,
                serial: self.next_serial,
            };
            conn.serial = me.serial;
            self.next_serial += 1;
            // Data may have arrived before registration.
            conn.in_readable = true;
            if let Some(at) = conn.deadline() {
                self.timers.push(at, Timer::Deadline(me));
            }
            let known = conn.address_at_accept();
            entry.insert(conn);
            self.readable.push(me);
            // The address is known now unless a proxy is to tell it.
            if let Some(then) = known {
                self.addressed(k, then);
            }
        }
    }

    /// The protocol starts, the stages beneath it passed (the address
    /// known, a handshake finished). A line client joins the chat by its
    /// own `Step::Join`: at its first line of chat, or once it has been
    /// quiet for QUIET_WAIT (the timer set here).
    fn start(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if c.joined || c.state != State::Open {
            return;
        }
        if c.proto.in_chat() {
            let me = ConnRef {
                key: k,
                serial: c.serial,
            };
            self.timers
                .push(Instant::now() + QUIET_WAIT, Timer::Quiet(me));
        } else {
            debug!("{} web connection", c.peer);
        }
    }

    /// The hub meets a connection: at accept, or once it has upgraded.
    /// False if the hub then waits for Redis for it (its join replay):
    /// nothing more is read from it until `wake`.
    fn join(&mut self, k: usize) -> bool {
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        c.joined = true;
        let (peer, via) = (c.peer, c.proto.joined_via());
        self.track_idle(k);
        let (hub, mut out) = self.out();
        hub.connect(ClientId(k), peer.ip(), &mut out);
        info!(
            "{peer} connected{via} as {}",
            self.hub.name(ClientId(k)).unwrap_or("?")
        );
        self.deliver(k, &mut Vec::new())
    }

    fn read_ready(&mut self) {
        let list = std::mem::take(&mut self.readable);
        for me in list {
            let Some(c) = self.conns.get_mut(me.key) else {
                continue;
            };
            if c.serial != me.serial {
                continue;
            }
            c.in_readable = false;
            self.read(me.key);
        }
    }

    /// Runs one connection's state machine until it would block, leaves,
    /// is throttled, or has had its share of this turn. The lines it sent
    /// in one go reach the hub together, so consecutive messages become one
    /// shared buffer per recipient.
    fn read(&mut self, k: usize) {
        let now = Instant::now();
        let (mut lines, mut bytes) = (0, 0);
        // What the hub did not take last time goes first; while it still
        // waits, nothing more is read (backpressure: the peer's socket and
        // our codec's bound hold the rest).
        let mut batch = self
            .conns
            .get_mut(k)
            .map(|c| std::mem::take(&mut c.held))
            .unwrap_or_default();
        if !self.deliver(k, &mut batch) {
            return;
        }
        while let Some(c) = self.conns.get_mut(k) {
            if !admit(
                c,
                k,
                now,
                lines,
                bytes,
                &mut self.readable,
                &mut self.timers,
            ) {
                break;
            }
            let step = c.proto.next(c.peer, c.eof);
            // `admit` took a --rate token for a line; only lines keep it.
            if !step.is_line()
                && let Some(bucket) = c.bucket.as_mut()
            {
                bucket.refund();
            }
            match step {
                Step::Line(text) => {
                    lines += 1;
                    // A command may make the hub wait for Redis: it is
                    // handed over at once, so nothing after it is read
                    // (a close, a line too long) before the wait ends.
                    let command = text.iter().any(|t| t.trim_start().starts_with('/'));
                    batch.extend(text);
                    if command && !self.deliver(k, &mut batch) {
                        return;
                    }
                }
                Step::TooLong => {
                    lines += 1;
                    self.deliver(k, &mut batch);
                    self.too_long(k);
                }
                Step::Reply(answer) => {
                    let (sendq, on_slow) = (self.cfg.sendq as usize, self.cfg.on_slow);
                    match c.push_reply(answer, sendq, on_slow) {
                        Push::TooSlow => {
                            self.metrics.too_slow += 1;
                            cut_off(c, k, &mut self.closing);
                            break;
                        }
                        Push::First | Push::Queued => self.mark_pending(k),
                        Push::Dropped | Push::Ignored => {}
                    }
                }
                Step::Read(room) => {
                    let room = room.min(self.scratch.len());
                    if room == 0 {
                        break;
                    }
                    let input = c.read_in(&mut self.scratch[..room]);
                    if c.wants_flush() {
                        // Records beneath the queue (a handshake's, an
                        // alert) to send.
                        self.mark_pending(k);
                    }
                    if !self.input(k, input, now, &mut bytes) {
                        break;
                    }
                }
                Step::Close {
                    last,
                    reason,
                    graceful,
                } => {
                    if let Some(last) = last {
                        c.push_raw(last);
                    }
                    mark_closing(c, k, &mut self.closing, reason, graceful);
                    break;
                }
                Step::Upgrade(answer) => {
                    if !self.upgraded(k, now) {
                        break;
                    }
                    let Some(c) = self.conns.get_mut(k) else {
                        break;
                    };
                    c.push_raw(answer);
                    c.touch(now);
                    self.mark_pending(k);
                    if !self.join(k) {
                        return;
                    }
                }
                Step::Join => {
                    if !self.join(k) {
                        return;
                    }
                }
                Step::Metrics(request) => {
                    self.serve_metrics(k, &request);
                    break;
                }
            }
        }
        self.deliver(k, &mut batch);
    }

    /// Acts on what a read through the connection's stages did: bytes for
    /// the protocol, the end, a failure, or a stage passed. False when
    /// reading stops for this turn.
    fn input(&mut self, k: usize, input: Input, now: Instant, bytes: &mut usize) -> bool {
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        match input {
            Input::Data(n) => {
                *bytes += n;
                self.metrics.bytes_in += n as u64;
                c.proto.feed(&self.scratch[..n]);
                c.touch(now);
            }
            Input::Closed => c.eof = true,
            Input::WouldBlock => {
                c.proto.would_block();
                return false;
            }
            Input::Error(e) => {
                let reason = socket::reason_for(&e);
                mark_closing(c, k, &mut self.closing, Some(reason), false);
                return false;
            }
            Input::LostBeforeHeader(e) => {
                debug!("{} lost before its PROXY header: {e}", c.peer);
                self.remove(k);
                return false;
            }
            Input::HandshakeFailed(e) => {
                self.metrics.tls_failed += 1;
                info!("{} TLS handshake failed: {e}", c.peer);
                self.remove(k);
                return false;
            }
            // The protocol starts before it gets its first bytes.
            Input::Handshaken => self.start(k),
            Input::Addressed { source, then } => return self.addressed_by_proxy(k, source, then),
            Input::Refused(why) => {
                self.metrics.proxy_refused += 1;
                warn!("{} refused: {why} (--trusted-proxy)", c.peer);
                if c.joined {
                    c.discard_output();
                    mark_closing(c, k, &mut self.closing, Some("refused".into()), false);
                } else {
                    self.remove(k);
                }
                return false;
            }
        }
        true
    }

    fn too_long(&mut self, k: usize) {
        let max = self.cfg.max_line;
        if let Some(c) = self.conns.get(k) {
            warn!("{} sent a line over --max-line ({max} bytes)", c.peer);
        }
        let msg = Msg::new(&format!("*** error: line too long (max {max} bytes)"));
        self.out().1.send(ClientId(k), &msg);
    }

    fn mark_pending(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k)
            && !c.in_pending
        {
            c.in_pending = true;
            self.pending.push(k);
        }
    }

    /// Out of the chat: flush what is queued, within DRAIN_SECS.
    fn drain(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(DRAIN_SECS);
        c.state = State::Draining(deadline);
        c.close_notify();
        let me = ConnRef {
            key: k,
            serial: c.serial,
        };
        self.timers.push(deadline, Timer::Drain(me));
        self.mark_pending(k);
    }

    /// Tells the hub who left, then flushes; flushing can find more dead
    /// connections, whose departure queues more lines, so repeat until quiet.
    /// Each round removes at least one client, so this ends.
    fn settle(&mut self) {
        loop {
            let leaving = std::mem::take(&mut self.closing);
            for k in leaving {
                self.leave(k);
            }
            let list = std::mem::take(&mut self.pending);
            for k in list {
                self.flush(k);
            }
            if self.closing.is_empty() {
                return;
            }
        }
    }

    fn leave(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let reason = c.reason.take();
        let (peer, graceful, joined) = (c.peer, c.graceful, c.joined);
        if joined {
            let name = self.hub.name(ClientId(k)).unwrap_or("?").to_string();
            match &reason {
                Some(r) => info!("{peer} {name} left ({r})"),
                None => info!("{peer} {name} left"),
            }
            let (hub, mut out) = self.out();
            hub.disconnect(ClientId(k), reason.as_deref(), &mut out);
        } else if let Some(r) = &reason {
            // Closed before it joined: another protocol refused (conn/line.rs).
            info!("{peer} closed: {r}");
        }
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if graceful {
            if let Some(last) = c.proto.goodbye(reason.as_deref().unwrap_or("")) {
                c.push_raw(last);
            }
            self.drain(k);
        } else {
            self.remove(k);
        }
    }

    fn flush(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.in_pending = false;
        if c.state == State::Gone {
            return;
        }
        let sent = c.sent();
        let result = c.flush();
        self.metrics.bytes_out += c.sent() - sent;
        // Ask for writable events only while output waits on the socket,
        // as Redis installs a write handler only for clients it could not
        // drain: with it always on, every ACK to every busy recipient
        // would wake the loop for nothing.
        let stuck = matches!(result, SocketResult::WouldBlock);
        if stuck != c.want_write {
            let interest = if stuck {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(k), interest)
            {
                warn!("{} cannot change interest: {e}", c.peer);
            }
            c.want_write = stuck;
        }
        match result {
            SocketResult::Done(_) if matches!(c.state, State::Draining(_)) => self.remove(k),
            SocketResult::Done(_) | SocketResult::WouldBlock => {}
            SocketResult::Closed | SocketResult::Error(_) => {
                let reason = match result {
                    SocketResult::Error(e) => socket::reason_for(&e),
                    _ => "connection reset".into(),
                };
                match c.state {
                    State::Open => {
                        c.discard_output();
                        mark_closing(c, k, &mut self.closing, Some(reason), false);
                    }
                    State::Draining(_) => self.remove(k),
                    State::Closing | State::Gone => {}
                }
            }
        }
    }

    /// Done with a connection: it is marked gone, and the sweep at the end
    /// of the turn frees it.
    fn remove(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k)
            && c.state != State::Gone
        {
            c.state = State::Gone;
            self.gone.push(k);
            if std::mem::take(&mut c.admitted) {
                self.per_addr.release(c.peer.ip(), Instant::now());
            }
        }
    }

    /// Frees the connections that are gone: the only place slab entries
    /// are freed.
    fn sweep(&mut self) {
        if self.gone.is_empty() {
            return;
        }
        for k in std::mem::take(&mut self.gone) {
            if let Some(mut c) = self.conns.try_remove(k) {
                let _ = self.poll.registry().deregister(&mut c.sock);
            }
        }
        // A descriptor is free again: if accepting had stalled, try now.
        if self.listeners.stalled() {
            self.timers.push(Instant::now(), Timer::Accept);
        }
        // Departures are what leave timers behind (an HTTP head's deadline,
        // an idle check): drop them once they pile up.
        let conns = &self.conns;
        self.timers.compact(conns.len(), |me| {
            conns.get(me.key).is_some_and(|c| c.serial == me.serial)
        });
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut accept = false;
        let mut acted = false;
        let limit = self.cfg.idle_timeout();
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Accept => accept = self.listeners.stalled(),
                Timer::Wake(me) => {
                    // One timer per pause (see `admit`): counted as it ends.
                    self.metrics.rate_limited += 1;
                    if let Some(c) = live(&mut self.conns, me) {
                        c.throttled = false;
                        if !c.in_readable {
                            c.in_readable = true;
                            self.readable.push(me);
                        }
                    }
                }
                Timer::Drain(me) => {
                    if let Some(c) = live(&mut self.conns, me)
                        && matches!(c.state, State::Draining(t) if t <= now)
                    {
                        debug!("{}: drain deadline passed", me.key);
                        self.remove(me.key);
                    }
                }
                Timer::Deadline(me) => {
                    // Only while the protocol's deadline still applies and
                    // the connection is open: an answer being flushed is
                    // bounded by its drain deadline instead.
                    if let Some(c) = live(&mut self.conns, me)
                        && c.state == State::Open
                        && let Some(why) = c.expired(now)
                    {
                        info!("{} closed: {why}", c.peer);
                        if why == Expired::Handshake {
                            self.metrics.tls_failed += 1;
                        }
                        self.remove(me.key);
                    }
                }
                Timer::Idle(me) => {
                    if let Some(limit) = limit {
                        acted |= self.idle_check(me, limit, now);
                    }
                }
                Timer::Quiet(me) => {
                    if let Some(c) = live(&mut self.conns, me)
                        && c.state == State::Open
                        && !c.joined
                    {
                        c.proto.quiet();
                        if !c.in_readable {
                            c.in_readable = true;
                            self.readable.push(me);
                        }
                    }
                }
            }
        }
        if acted {
            self.settle();
        }
        if accept {
            for port in Port::all() {
                self.accept(port);
            }
            self.settle();
        }
        if now >= self.next_prune {
            self.per_addr.prune(now);
            self.next_prune = now + PRUNE_EVERY;
        }
        let (_, refused) = self.hub.mirrored();
        if refused > self.mirror_warned.0 && self.mirror_warned.1.is_none_or(|t| now >= t) {
            warn!(
                "cluster: {} users of other instances left out of /who, /msg and name checks: \
                 this instance keeps track of at most {} (--max-remote-users)",
                refused - self.mirror_warned.0,
                self.cfg.max_remote_users
            );
            // At once, then at most once a minute.
            self.mirror_warned = (refused, Some(now + PRUNE_EVERY));
        }
        if now >= self.metrics.next_tick() {
            self.metrics.tick(now);
        }
    }

    /// Puts a connection that just entered the chat under --idle-timeout.
    fn track_idle(&mut self, k: usize) {
        let (Some(limit), Some(c)) = (self.cfg.idle_timeout(), self.conns.get(k)) else {
            return;
        };
        let me = ConnRef {
            key: k,
            serial: c.serial,
        };
        if let Action::Wait(at) | Action::Ping(at) = idle::decide(
            c.last_active,
            c.pinged,
            c.proto.pings(),
            limit,
            Instant::now(),
        ) {
            self.timers.push(at, Timer::Idle(me));
        }
    }

    /// --idle-timeout: pings or closes a connection whose entry came up, or
    /// puts it back for later. See idle.rs. True if it queued something.
    fn idle_check(&mut self, me: ConnRef, limit: Duration, now: Instant) -> bool {
        let Some(c) = live(&mut self.conns, me) else {
            return false;
        };
        if c.state != State::Open {
            return false;
        }
        match idle::decide(c.last_active, c.pinged, c.proto.pings(), limit, now) {
            Action::Wait(at) => {
                self.timers.push(at, Timer::Idle(me));
                false
            }
            Action::Ping(at) => {
                c.pinged = true;
                if let Some(ping) = c.proto.ping() {
                    c.push_raw(ping);
                }
                self.timers.push(at, Timer::Idle(me));
                self.mark_pending(me.key);
                true
            }
            Action::Close => {
                info!("{} closed: idle for {limit:?}", c.peer);
                self.metrics.idle_closed += 1;
                c.push_notice("*** idle for too long");
                // leave() ends it with the protocol's goodbye (a WebSocket
                // close frame giving the reason).
                mark_closing(c, me.key, &mut self.closing, Some("idle".into()), true);
                true
            }
        }
    }

    /// The `/metrics` route: the server's numbers, then close.
    fn serve_metrics(&mut self, k: usize, request: &Request) {
        let (line_clients, ws_clients) = conn::census(self.conns.iter().map(|(_, c)| c));
        let scrape = Scrape {
            node_id: &self.cfg.node_id,
            metrics: &self.metrics,
            line_clients,
            ws_clients,
            rooms: self.hub.rooms() as u64,
            lines_relayed: self.hub.relayed(),
            history_lines: self.hub.history_lines() as u64,
            history_bytes: self.hub.history_bytes() as u64,
            moderation: self.hub.moderation(),
            cluster: self.link.as_ref().map(|link| {
                let (remote_users, remote_refused) = self.hub.mirrored();
                metrics::Cluster {
                    remote_users,
                    remote_refused,
                    ..link.stats()
                }
            }),
        };
        let answer = metrics::answer(request, &scrape);
        if let Some(c) = self.conns.get_mut(k) {
            debug!("{} {} /metrics", c.peer, request.method);
            c.push_raw(answer);
            mark_closing(c, k, &mut self.closing, None, true);
        }
    }
}
