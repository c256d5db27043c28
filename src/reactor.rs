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
//! 5. timers: rate-limit wake-ups, drain deadlines, accept retries.
//!
//! Slab entries are only freed in step 4, never while events are being
//! dispatched, so a key seen in an event always names the connection it did
//! when the event was produced.

use crate::config::{Config, DRAIN_SECS, LINE_BUDGET, OnSlow, READ_BUDGET_BYTES, READ_CHUNK};
use crate::conn::{Bucket, Conn, Push, State, reason_for};
use crate::hub::{ClientId, Hub, Outbox};
use crate::line::{Frame, sanitize};
use crate::msg::Msg;
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "cannot accept" warning per this long.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

pub struct Server {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    hub: Hub,
    cfg: Config,
    /// One read buffer for every connection: input is copied out of it into
    /// a connection's framer only as far as a line is still incomplete.
    scratch: Box<[u8]>,
    /// Connections that may have unread input.
    readable: Vec<usize>,
    /// Connections with output queued since their last flush.
    pending: Vec<usize>,
    /// Connections marked to leave during this turn.
    closing: Vec<usize>,
    /// Connections flushing their last output before they are freed.
    draining: Vec<usize>,
    /// Rate-limited connections and when they may be read again.
    throttled: Vec<(Instant, usize)>,
    accept_retry: Option<Instant>,
    accept_warned: Option<Instant>,
    shutdown: Option<Instant>,
}

/// The hub's view of the connections: queue under the --sendq policy, and
/// mark (never free) connections that must go.
struct Out<'a> {
    conns: &'a mut Slab<Conn>,
    pending: &'a mut Vec<usize>,
    closing: &'a mut Vec<usize>,
    sendq: usize,
    on_slow: OnSlow,
}

impl Outbox for Out<'_> {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        match c.push(msg, self.sendq, self.on_slow) {
            Push::First if !c.in_pending => {
                c.in_pending = true;
                self.pending.push(to);
            }
            Push::TooSlow => {
                warn!(
                    "{} cut off: output queue would pass --sendq ({} bytes queued)",
                    c.peer,
                    c.queued()
                );
                c.discard_output();
                mark_closing(c, to, self.closing, Some("too slow".into()), false);
            }
            _ => {}
        }
    }

    fn close(&mut self, id: ClientId, reason: String) {
        if let Some(c) = self.conns.get_mut(id) {
            mark_closing(c, id, self.closing, Some(reason), true);
        }
    }
}

fn mark_closing(
    c: &mut Conn,
    k: usize,
    closing: &mut Vec<usize>,
    reason: Option<String>,
    graceful: bool,
) {
    if c.state == State::Open {
        c.state = State::Closing;
        c.reason = reason;
        c.graceful = graceful;
        closing.push(k);
    }
}

/// What the read loop found next on a connection.
enum Next {
    Line(Option<String>),
    TooLong,
    Read,
    Eof,
}

impl Server {
    pub fn new(listener: std::net::TcpListener, cfg: Config) -> io::Result<Server> {
        cfg.check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            hub: Hub::new(cfg.announce_max),
            cfg,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            readable: Vec::new(),
            pending: Vec::new(),
            closing: Vec::new(),
            draining: Vec::new(),
            throttled: Vec::new(),
            accept_retry: None,
            accept_warned: None,
            shutdown: None,
        })
    }

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
            self.dispatch();
            self.read_ready();
            self.settle();
            self.timers();
            if let Some(deadline) = self.shutdown
                && (self.conns.is_empty() || Instant::now() >= deadline)
            {
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
            },
        )
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.readable.is_empty() {
            return Some(Duration::ZERO);
        }
        let drains = self
            .draining
            .iter()
            .filter_map(|&k| match self.conns.get(k) {
                Some(Conn {
                    state: State::Draining(t),
                    ..
                }) => Some(*t),
                _ => None,
            });
        let next = self
            .throttled
            .iter()
            .map(|&(t, _)| t)
            .chain(drains)
            .chain(self.accept_retry)
            .chain(self.shutdown)
            .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn dispatch(&mut self) {
        let mut accept = false;
        let mut signalled = false;
        for event in self.events.iter() {
            match event.token() {
                LISTENER => accept = true,
                SIGNALS => signalled = true,
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
                        self.readable.push(k);
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
        if accept {
            self.accept();
        }
    }

    fn on_signals(&mut self) {
        let got: Vec<i32> = self.signals.pending().collect();
        if got.is_empty() || self.shutdown.is_some() {
            return;
        }
        info!("signal {got:?}: shutting down");
        let deadline = Instant::now() + Duration::from_secs(DRAIN_SECS);
        self.shutdown = Some(deadline);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for (k, c) in self.conns.iter_mut() {
            if c.state == State::Open || c.state == State::Closing {
                c.push_notice("*** server shutting down");
                c.state = State::Draining(deadline);
                if !c.in_pending {
                    c.in_pending = true;
                    self.pending.push(k);
                }
            }
        }
        self.closing.clear();
    }

    fn accept(&mut self) {
        self.accept_retry = None;
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS):
                    // the pending connection stays in the backlog. Retrying
                    // at once would spin, so wait a little or until one of
                    // our own connections closes, and keep serving.
                    let now = Instant::now();
                    if self
                        .accept_warned
                        .is_none_or(|t| now >= t + ACCEPT_WARN_EVERY)
                    {
                        warn!(
                            "cannot accept: {e}; retrying every {ACCEPT_BACKOFF:?} ({} clients)",
                            self.conns.len()
                        );
                        self.accept_warned = Some(now);
                    }
                    self.accept_retry = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            let max = self.cfg.max_clients;
            if self.conns.len() >= max as usize {
                warn!("{peer} refused: server full ({max} clients)");
                let _ =
                    (&sock).write(format!("*** error: server full ({max} clients)\r\n").as_bytes());
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(k),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("{peer} dropped: cannot register: {e}");
                continue;
            }
            // Chat lines are small and latency matters; we already batch
            // every line for a client into one writev per turn.
            let _ = sock.set_nodelay(true);
            let bucket = self
                .cfg
                .rate
                .map(|rate| Bucket::new(rate, self.cfg.burst.unwrap_or(rate), Instant::now()));
            let mut conn = Conn::new(sock, peer, self.cfg.max_line as usize, bucket);
            // Data may have arrived before registration.
            conn.in_readable = true;
            entry.insert(conn);
            self.readable.push(k);
            let (hub, mut out) = self.out();
            hub.connect(k, &mut out);
            info!("{peer} connected as {}", self.hub.name(k).unwrap_or("?"));
        }
    }

    fn read_ready(&mut self) {
        let list = std::mem::take(&mut self.readable);
        for k in list {
            if let Some(c) = self.conns.get_mut(k) {
                c.in_readable = false;
                self.read_conn(k);
            }
        }
    }

    /// Takes lines from one connection until it would block, leaves, is
    /// throttled, or has had its share of this turn.
    fn read_conn(&mut self, k: usize) {
        let now = Instant::now();
        let (mut lines, mut bytes) = (0, 0);
        loop {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            if c.state != State::Open {
                return;
            }
            if lines >= LINE_BUDGET || bytes >= READ_BUDGET_BYTES {
                // Its share of this turn is used; the rest waits for the next.
                c.in_readable = true;
                self.readable.push(k);
                return;
            }
            if let Some(bucket) = c.bucket.as_mut()
                && let Err(wake) = bucket.take(now)
            {
                debug!("{} rate-limited until {wake:?}", c.peer);
                self.throttled.push((wake, k));
                return;
            }
            let next = match c.framer.next_frame() {
                Some(Frame::Line(raw)) => Next::Line(sanitize(raw)),
                Some(Frame::TooLong) => Next::TooLong,
                None if c.eof => match c.framer.finish() {
                    Some(Frame::Line(raw)) => Next::Line(sanitize(raw)),
                    _ => Next::Eof,
                },
                None => Next::Read,
            };
            if !matches!(next, Next::Line(_) | Next::TooLong)
                && let Some(bucket) = c.bucket.as_mut()
            {
                bucket.refund();
            }
            match next {
                Next::Line(text) => {
                    lines += 1;
                    if let Some(text) = text {
                        debug!("{} {}: {text}", c.peer, self.hub.name(k).unwrap_or("?"));
                        let (hub, mut out) = self.out();
                        hub.line(k, &text, &mut out);
                    }
                }
                Next::TooLong => {
                    lines += 1;
                    let max = self.cfg.max_line;
                    warn!("{} sent a line over --max-line ({max} bytes)", c.peer);
                    let msg = Msg::new(&format!("*** error: line too long (max {max} bytes)"));
                    self.out().1.send(k, &msg);
                }
                Next::Eof => {
                    mark_closing(c, k, &mut self.closing, None, true);
                    return;
                }
                Next::Read => match c.sock.read(&mut self.scratch) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        bytes += n;
                        c.framer.feed(&self.scratch[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.framer.release_if_empty();
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        mark_closing(c, k, &mut self.closing, Some(reason_for(&e)), false);
                        return;
                    }
                },
            }
        }
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
        let (peer, graceful) = (c.peer, c.graceful);
        let name = self.hub.name(k).unwrap_or("?").to_string();
        match &reason {
            Some(r) => info!("{peer} {name} left ({r})"),
            None => info!("{peer} {name} left"),
        }
        let (hub, mut out) = self.out();
        hub.disconnect(k, reason.as_deref(), &mut out);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if graceful {
            c.state = State::Draining(Instant::now() + Duration::from_secs(DRAIN_SECS));
            self.draining.push(k);
            if !c.in_pending {
                c.in_pending = true;
                self.pending.push(k);
            }
        } else {
            self.remove(k);
        }
    }

    fn flush(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.in_pending = false;
        match c.flush() {
            Ok(true) if matches!(c.state, State::Draining(_)) => self.remove(k),
            Ok(_) => {}
            Err(e) => {
                let reason = reason_for(&e);
                match c.state {
                    State::Open => {
                        c.discard_output();
                        mark_closing(c, k, &mut self.closing, Some(reason), false);
                    }
                    State::Draining(_) => self.remove(k),
                    State::Closing => {}
                }
            }
        }
    }

    fn remove(&mut self, k: usize) {
        if let Some(mut c) = self.conns.try_remove(k) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            // A descriptor is free again: if accepting had stalled, try now.
            if self.accept_retry.is_some() {
                self.accept_retry = Some(Instant::now());
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.throttled.len() {
            let (t, k) = self.throttled[i];
            if t <= now {
                self.throttled.swap_remove(i);
                if let Some(c) = self.conns.get_mut(k)
                    && !c.in_readable
                {
                    c.in_readable = true;
                    self.readable.push(k);
                }
            } else {
                i += 1;
            }
        }
        let draining = std::mem::take(&mut self.draining);
        for k in draining {
            match self.conns.get(k).map(|c| c.state) {
                Some(State::Draining(t)) if t <= now => {
                    debug!("{k}: drain deadline passed");
                    self.remove(k);
                }
                Some(State::Draining(_)) => self.draining.push(k),
                _ => {}
            }
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept();
            self.settle();
        }
    }
}
