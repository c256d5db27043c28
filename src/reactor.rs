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

use crate::cluster::{self, Inbound, Link, RedisUrl};
use crate::config::{Config, DRAIN_SECS, LINE_BUDGET, OnSlow, READ_BUDGET_BYTES, READ_CHUNK};
use crate::conn::{Bucket, Conn, Proto, Push, State, reason_for, set_keepalive};
use crate::history::Id;
use crate::http::{self, After, Head, Request};
use crate::hub::{Asked, ClientId, ConnStats, Hub, Outbox, Presence, ServerStats};
use crate::idle::{self, Action};
use crate::line::{Frame, Framer, sanitize};
use crate::metrics::{self, Metrics, Scrape};
use crate::msg::Msg;
use crate::ws::{self, Decoder, Event, Oversize};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const HTTP_LISTENER: Token = Token(usize::MAX - 3);

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "cannot accept" warning per this long.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

pub struct Server {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
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
    /// Web connections still sending their request head.
    http_waiting: Vec<usize>,
    accept_retry: Option<Instant>,
    accept_warned: Option<Instant>,
    shutdown: Option<Instant>,
    /// Cluster mode: the link to Redis, and what it heard but the hub has
    /// not been told yet.
    link: Option<Link>,
    inbound: Vec<Inbound>,
    metrics: Metrics,
    /// --idle-timeout deadlines; empty without it.
    idle: idle::Queue,
    /// The serial the next accepted connection gets.
    next_serial: u64,
}

/// The hub's view of the connections: queue under the --sendq policy, and
/// mark (never free) connections that must go.
struct Out<'a> {
    conns: &'a mut Slab<Conn>,
    pending: &'a mut Vec<usize>,
    closing: &'a mut Vec<usize>,
    sendq: usize,
    on_slow: OnSlow,
    link: Option<&'a mut Link>,
    metrics: &'a mut Metrics,
}

impl Outbox for Out<'_> {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        let push = c.push(msg, self.sendq, self.on_slow);
        // Counted here, per recipient, as plain adds: see metrics.rs.
        match push {
            Push::First | Push::Queued => self.metrics.deliveries += msg.lines() as u64,
            Push::Dropped => self.metrics.dropped += msg.lines() as u64,
            Push::TooSlow => self.metrics.too_slow += 1,
            Push::Ignored => {}
        }
        match push {
            Push::First if !c.in_pending => {
                c.in_pending = true;
                self.pending.push(to);
            }
            Push::TooSlow => cut_off(c, to, self.closing),
            _ => {}
        }
    }

    fn close(&mut self, id: ClientId, reason: String) {
        if let Some(c) = self.conns.get_mut(id) {
            mark_closing(c, id, self.closing, Some(reason), true);
        }
    }

    fn publish(&mut self, room: &str, msg: &Rc<Msg>) {
        if let Some(link) = self.link.as_deref_mut() {
            link.publish_room(room, msg.text());
        }
    }

    fn say(&mut self, room: &str, from: ClientId, lines: &str, keep: usize, ttl_ms: u64) -> bool {
        self.link
            .as_deref_mut()
            .is_some_and(|link| link.say(room, from, lines, keep, ttl_ms))
    }

    fn history(
        &mut self,
        id: ClientId,
        room: &str,
        asked: Asked,
        after: Option<Id>,
        count: usize,
    ) -> bool {
        self.link
            .as_deref_mut()
            .is_some_and(|link| link.history(id, room, asked, after, count))
    }

    fn presence(&mut self, event: Presence) {
        if let Some(link) = self.link.as_deref_mut() {
            link.presence(&event);
        }
    }

    fn private(&mut self, node: &str, to: u64, to_name: &str, msg: &Rc<Msg>) {
        if let Some(link) = self.link.as_deref_mut() {
            link.private(node, to, to_name, msg.text());
        }
    }

    fn subscribe(&mut self, room: &str, on: bool) {
        if let Some(link) = self.link.as_deref_mut() {
            link.subscribe(room, on);
        }
    }

    fn claim(&mut self, id: ClientId, name: &str) -> bool {
        // The hub only asks while the link is up; should the link fail
        // before the answer, its Down event makes the hub give up waiting.
        self.link
            .as_deref_mut()
            .is_some_and(|link| link.claim(id, name))
    }

    fn release(&mut self, name: &str, id: ClientId, since: u64) {
        if let Some(link) = self.link.as_deref_mut() {
            link.release(name, id, since);
        }
    }

    fn conn_stats(&self, id: ClientId) -> Option<ConnStats> {
        let c = self.conns.get(id)?;
        Some(ConnStats {
            queued: c.queued(),
            dropped: c.dropped_total(),
            connected: c.since.elapsed(),
        })
    }

    fn server_stats(&self) -> Option<ServerStats> {
        Some(self.metrics.server_stats(Instant::now()))
    }
}

/// The wall clock in ms since the Unix epoch (0 if it is set before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The --sendq policy's disconnect: drop what is queued and leave at once.
fn cut_off(c: &mut Conn, k: usize, closing: &mut Vec<usize>) {
    warn!(
        "{} cut off: output queue would pass --sendq ({} bytes queued, {} counted)",
        c.peer,
        c.queued(),
        c.charged()
    );
    // Best effort: the socket is likely full, but a browser that gets this
    // knows why it was dropped. Not in the middle of a partly written frame,
    // whose payload it would become.
    let close = c.is_ws() && !c.mid_item();
    c.discard_output();
    if close {
        let _ = (&c.sock).write(&ws::close_frame(Some(ws::POLICY), "too slow"));
    }
    mark_closing(c, k, closing, Some("too slow".into()), false);
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

/// Whether connection `k` may take one more line (or WebSocket message)
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
    readable: &mut Vec<usize>,
    throttled: &mut Vec<(Instant, usize)>,
) -> bool {
    if c.state != State::Open || c.throttled {
        // A throttled connection is already on the timer list.
        return false;
    }
    if taken >= LINE_BUDGET || bytes >= READ_BUDGET_BYTES {
        c.in_readable = true;
        readable.push(k);
        return false;
    }
    if let Some(bucket) = c.bucket.as_mut()
        && let Err(wake) = bucket.take(now)
    {
        debug!("{} rate-limited until {wake:?}", c.peer);
        c.throttled = true;
        throttled.push((wake, k));
        return false;
    }
    true
}

/// What the read loop found next on a connection.
enum Next {
    Line(Option<String>),
    TooLong,
    Read,
    Eof,
}

/// Which listening socket a connection came in on.
#[derive(Clone, Copy)]
enum Port {
    Line,
    Http,
}

impl Server {
    /// Sets up the loop around a bound line listener; binds the web port
    /// from `cfg` unless --no-http.
    pub fn new(listener: std::net::TcpListener, cfg: Config) -> io::Result<Server> {
        cfg.check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let http_listener = if cfg.no_http {
            None
        } else {
            let l =
                std::net::TcpListener::bind((cfg.host.as_str(), cfg.http_port)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot listen on {}:{} for the web: {e} (--http-port, or --no-http)",
                            cfg.host, cfg.http_port
                        ),
                    )
                })?;
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, HTTP_LISTENER, Interest::READABLE)?;
            Some(l)
        };
        let (hub, link) = match &cfg.redis {
            None => (Hub::new(cfg.announce_max), None),
            Some(url) => {
                let url = RedisUrl::parse(url, std::env::var("REDIS_PASSWORD").ok())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                info!("cluster mode: node {}, Redis at {}", cfg.node_id, url.addr);
                // Each start is a new incarnation on the wire, so the others
                // can tell a restarted instance's old users are gone.
                let wire = format!("{}~{:x}", cfg.node_id, fastrand::u32(..));
                let hub = Hub::new(cfg.announce_max).with_cluster(&wire);
                let timing = cluster::Timing::new(
                    Duration::from_millis(cfg.cluster_tick_ms),
                    Duration::from_secs(cfg.cluster_timeout),
                );
                // A relayed line is at most --max-line plus a name and a
                // notice's words; more from Redis is not from an instance.
                let max_text = cfg.max_line as usize + 256;
                let link = Link::new(url, &wire, cfg.cluster_queue as usize, timing, max_text);
                (hub, Some(link))
            }
        };
        // A batch of one sender's lines must always fit a recipient's queue.
        // A history answer, too, must fit: a quarter leaves room for what
        // is queued already.
        let mut hub = hub
            .with_batch_max((cfg.sendq as usize / 8).min(16 * 1024))
            .with_max_line(cfg.max_line as usize)
            .with_history(cfg.history_limits(), cfg.history_on_join as usize)
            .with_reply_max(cfg.sendq as usize / 4);
        hub.tick(unix_ms());
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            http_listener,
            signals,
            conns: Slab::new(),
            hub,
            cfg,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            readable: Vec::new(),
            pending: Vec::new(),
            closing: Vec::new(),
            draining: Vec::new(),
            throttled: Vec::new(),
            http_waiting: Vec::new(),
            accept_retry: None,
            accept_warned: None,
            shutdown: None,
            link,
            inbound: Vec::new(),
            metrics: Metrics::new(Instant::now()),
            idle: idle::Queue::default(),
            next_serial: 0,
        })
    }

    /// Where the web page is served, unless --no-http.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
            let turn = Instant::now();
            // Read once per turn: history times and epochs come from it.
            self.hub.tick(unix_ms());
            self.dispatch();
            self.read_ready();
            self.settle();
            self.timers();
            self.flush_link();
            self.metrics.turn(turn.elapsed());
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
                link: self.link.as_mut(),
                metrics: &mut self.metrics,
            },
        )
    }

    /// Hands what the cluster link heard to the hub.
    fn apply_inbound(&mut self) {
        while !self.inbound.is_empty() {
            let events = std::mem::take(&mut self.inbound);
            for event in events {
                let (hub, mut out) = self.out();
                match event {
                    Inbound::Up => hub.link_up(&mut out),
                    Inbound::Down(_) => hub.link_down(&mut out),
                    Inbound::Room(room, text) => hub.remote_line(&room, &text, &mut out),
                    Inbound::Said {
                        room,
                        first,
                        from,
                        text,
                    } => hub.said(&room, first, from, &text, &mut out),
                    Inbound::NotSaid(id, sure) => hub.not_said(id, sure, &mut out),
                    Inbound::History {
                        id,
                        room,
                        asked,
                        epoch,
                        last,
                        lines,
                    } => hub.answer(id, &room, asked, epoch, last, lines, &mut out),
                    Inbound::Presence(p) => hub.remote_presence(p, &mut out),
                    Inbound::Private(to, name, text) => {
                        hub.remote_private(to, &name, &text, &mut out)
                    }
                    Inbound::Claimed(id, name, answer) => hub.claimed(id, &name, answer, &mut out),
                    Inbound::NameLost(id, name) => hub.name_lost(id, &name, &mut out),
                    Inbound::NodeBack(node) => {
                        info!("cluster: node {node} has a heartbeat again; asking for its users");
                        hub.node_back(&node, &mut out);
                    }
                    Inbound::Guests(start) => hub.add_guests(start, crate::hub::GUEST_BLOCK),
                    Inbound::NodeLost(node) => {
                        info!("cluster: node {node} stopped answering; its users are gone");
                        hub.node_silent(&node, &mut out);
                    }
                }
            }
            self.settle();
        }
    }

    /// Sends what the hub queued for Redis, and keeps the link's timers.
    fn flush_link(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        link.tick(
            Instant::now(),
            &self.hub,
            self.poll.registry(),
            &mut self.inbound,
        );
        link.flush(self.poll.registry(), &mut self.inbound);
        if !self.inbound.is_empty() {
            self.apply_inbound();
            if let Some(link) = self.link.as_mut() {
                link.flush(self.poll.registry(), &mut self.inbound);
            }
        }
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
        let heads = self
            .http_waiting
            .iter()
            .filter_map(|&k| match self.conns.get(k) {
                Some(Conn {
                    proto: Proto::Http(_, t),
                    ..
                }) => Some(*t),
                _ => None,
            });
        let next = self
            .throttled
            .iter()
            .map(|&(t, _)| t)
            .chain(drains)
            .chain(heads)
            .chain(self.accept_retry)
            .chain(self.shutdown)
            .chain(self.link.as_ref().and_then(Link::deadline))
            .chain(self.idle.next())
            .chain(Some(self.metrics.next_tick()))
            .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn dispatch(&mut self) {
        let mut accept = false;
        let mut accept_http = false;
        let mut signalled = false;
        for event in self.events.iter() {
            match event.token() {
                LISTENER => accept = true,
                HTTP_LISTENER => accept_http = true,
                cluster::CMD | cluster::SUB => {
                    if let Some(link) = self.link.as_mut() {
                        link.ready(event.token(), self.poll.registry(), &mut self.inbound);
                    }
                }
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
        self.apply_inbound();
        if accept {
            self.accept(Port::Line);
        }
        if accept_http {
            self.accept(Port::Http);
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
        for mut l in [self.listener.take(), self.http_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for (k, c) in self.conns.iter_mut() {
            if c.state == State::Open || c.state == State::Closing {
                match c.proto {
                    Proto::Http(..) => {}
                    Proto::Line(_) => {
                        c.push_notice("*** server shutting down");
                    }
                    Proto::Ws(_) => {
                        c.push_notice("*** server shutting down");
                        c.push_raw(ws::close_frame(
                            Some(ws::GOING_AWAY),
                            "server shutting down",
                        ));
                    }
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

    fn accept(&mut self, port: Port) {
        if matches!(port, Port::Line) {
            self.accept_retry = None;
        }
        loop {
            let listener = match port {
                Port::Line => self.listener.as_ref(),
                Port::Http => self.http_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            let (mut sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    self.metrics.accept_errors += 1;
                    // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS):
                    // the pending connection stays in the backlog. Retrying
                    // at once would spin, so wait a little or until one of
                    // our own connections closes, and keep serving. One
                    // retry timer serves both ports.
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
                let text = format!("*** error: server full ({max} clients)");
                let answer = match port {
                    Port::Line => format!("{text}\r\n").into_bytes(),
                    Port::Http => http::response(
                        503,
                        "text/plain; charset=utf-8",
                        text.as_bytes(),
                        false,
                        &[],
                    ),
                };
                let _ = (&sock).write(&answer);
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(k),
                // Writable interest is added only while output is stuck
                // (see `flush`): a socket with room gets no events for it.
                Interest::READABLE,
            ) {
                warn!("{peer} dropped: cannot register: {e}");
                continue;
            }
            // Chat lines are small and latency matters; we already batch
            // every line for a client into one writev per turn.
            let _ = sock.set_nodelay(true);
            if self.cfg.keepalive > 0
                && let Err(e) = set_keepalive(&sock, Duration::from_secs(self.cfg.keepalive))
            {
                warn!("{peer}: cannot set TCP keepalive: {e}");
            }
            let now = Instant::now();
            let bucket = self
                .cfg
                .rate
                .map(|rate| Bucket::new(rate, self.cfg.burst.unwrap_or(rate), now));
            let proto = match port {
                Port::Line => Proto::Line(Framer::new(self.cfg.max_line as usize)),
                Port::Http => {
                    let deadline = now + Duration::from_secs(self.cfg.http_timeout);
                    Proto::Http(Vec::new(), deadline)
                }
            };
            let mut conn = Conn::new(sock, peer, proto, bucket);
            conn.serial = self.next_serial;
            self.next_serial += 1;
            // Data may have arrived before registration.
            conn.in_readable = true;
            entry.insert(conn);
            self.readable.push(k);
            match port {
                Port::Line => {
                    self.track_idle(k);
                    let (hub, mut out) = self.out();
                    hub.connect(k, &mut out);
                    info!("{peer} connected as {}", self.hub.name(k).unwrap_or("?"));
                }
                Port::Http => {
                    debug!("{peer} web connection");
                    self.http_waiting.push(k);
                }
            }
        }
    }

    fn read_ready(&mut self) {
        let list = std::mem::take(&mut self.readable);
        for k in list {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            c.in_readable = false;
            match c.proto {
                Proto::Line(_) => self.read_lines(k),
                Proto::Http(..) => self.read_http(k),
                Proto::Ws(_) => self.read_ws(k),
            }
        }
    }

    /// Takes lines from one line connection until it would block, leaves,
    /// is throttled, or has had its share of this turn.
    fn read_lines(&mut self, k: usize) {
        let mut batch = Vec::new();
        self.take_lines(k, &mut batch);
        self.deliver(k, &mut batch);
    }

    /// The lines a connection sent in one go reach the hub together, so
    /// consecutive messages become one shared buffer per recipient.
    fn deliver(&mut self, k: usize, batch: &mut Vec<String>) {
        if batch.is_empty() {
            return;
        }
        if log::log_enabled!(log::Level::Debug)
            && let Some(c) = self.conns.get(k)
        {
            for text in batch.iter() {
                debug!("{} {}: {text}", c.peer, self.hub.name(k).unwrap_or("?"));
            }
        }
        self.metrics.lines_in += batch.len() as u64;
        let (hub, mut out) = self.out();
        hub.lines(k, batch, &mut out);
        batch.clear();
    }

    fn take_lines(&mut self, k: usize, batch: &mut Vec<String>) {
        let now = Instant::now();
        let (mut lines, mut bytes) = (0, 0);
        loop {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            if !admit(
                c,
                k,
                now,
                lines,
                bytes,
                &mut self.readable,
                &mut self.throttled,
            ) {
                return;
            }
            let Proto::Line(framer) = &mut c.proto else {
                return;
            };
            let next = match framer.next_frame() {
                Some(Frame::Line(raw)) => Next::Line(sanitize(raw)),
                Some(Frame::TooLong) => Next::TooLong,
                None if c.eof => match framer.finish() {
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
                    batch.extend(text);
                }
                Next::TooLong => {
                    lines += 1;
                    self.deliver(k, batch);
                    self.too_long(k);
                }
                Next::Eof => {
                    mark_closing(c, k, &mut self.closing, None, true);
                    return;
                }
                Next::Read => match c.sock.read(&mut self.scratch) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        bytes += n;
                        self.metrics.bytes_in += n as u64;
                        framer.feed(&self.scratch[..n]);
                        c.touch(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        framer.release_if_empty();
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

    fn too_long(&mut self, k: usize) {
        let max = self.cfg.max_line;
        if let Some(c) = self.conns.get(k) {
            warn!("{} sent a line over --max-line ({max} bytes)", c.peer);
        }
        let msg = Msg::new(&format!("*** error: line too long (max {max} bytes)"));
        self.out().1.send(k, &msg);
    }

    /// The web port: collect a request head (at most `http::MAX_HEAD` bytes,
    /// within --http-timeout), answer it, and either close or become a
    /// WebSocket.
    fn read_http(&mut self, k: usize) {
        loop {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            if c.state != State::Open {
                return;
            }
            let Proto::Http(buf, _) = &mut c.proto else {
                return;
            };
            match http::parse_head(buf) {
                Head::Incomplete => {
                    let room = (http::MAX_HEAD + 1).saturating_sub(buf.len()).max(1);
                    match c.sock.read(&mut self.scratch[..room]) {
                        Ok(0) => {
                            debug!("{} closed before its request was complete", c.peer);
                            self.end_http(k);
                            return;
                        }
                        Ok(n) => {
                            self.metrics.bytes_in += n as u64;
                            buf.extend_from_slice(&self.scratch[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.remove(k);
                            return;
                        }
                    }
                }
                Head::Invalid(e) => {
                    debug!("{} bad request: {e:?}", c.peer);
                    c.push_raw(e.response());
                    self.end_http(k);
                    return;
                }
                Head::Complete { request, len } => {
                    if request.path == "/metrics" {
                        return self.serve_metrics(k, &request);
                    }
                    let early = buf[len..].to_vec();
                    let route = http::route(&request);
                    debug!(
                        "{} {} {} -> {route:?}",
                        c.peer, request.method, request.path
                    );
                    c.push_raw(route.response(request.is_head()));
                    if route.after() == After::Close {
                        self.end_http(k);
                        return;
                    }
                    let mut dec =
                        Decoder::new(self.cfg.max_line as usize).with_oversize(Oversize::Skip);
                    // A client may send its first frames right behind the
                    // head; they belong to the WebSocket. A browser waits
                    // for the 101, so more than fits is not to be expected.
                    if dec.feed(&early) < early.len() {
                        warn!(
                            "{} sent more than a message before the handshake completed",
                            c.peer
                        );
                    }
                    c.proto = Proto::Ws(Box::new(dec));
                    c.touch(Instant::now());
                    let peer = c.peer;
                    self.mark_pending(k);
                    self.track_idle(k);
                    let (hub, mut out) = self.out();
                    hub.connect(k, &mut out);
                    info!(
                        "{peer} connected over WebSocket as {}",
                        self.hub.name(k).unwrap_or("?")
                    );
                    return self.read_ws(k);
                }
            }
        }
    }

    /// A web connection that will not become a WebSocket: flush, close.
    fn end_http(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k) {
            c.state = State::Draining(Instant::now() + Duration::from_secs(DRAIN_SECS));
            self.draining.push(k);
            self.mark_pending(k);
        }
    }

    fn mark_pending(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k)
            && !c.in_pending
        {
            c.in_pending = true;
            self.pending.push(k);
        }
    }

    /// A browser: decode frames into lines for the hub, answer pings, close
    /// cleanly; same budgets and rate limit as line clients.
    fn read_ws(&mut self, k: usize) {
        let mut batch = Vec::new();
        self.take_ws(k, &mut batch);
        self.deliver(k, &mut batch);
    }

    fn take_ws(&mut self, k: usize, batch: &mut Vec<String>) {
        let now = Instant::now();
        let (mut lines, mut bytes) = (0, 0);
        loop {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            if !admit(
                c,
                k,
                now,
                lines,
                bytes,
                &mut self.readable,
                &mut self.throttled,
            ) {
                return;
            }
            // One message is meant to be one line; CR or LF inside it must
            // not smuggle extra lines past --rate or this turn's budget, so
            // each piece is a line of its own, taken one at a time (the
            // token `admit` took pays for it).
            if let Some((text, at)) = c.held.as_mut() {
                if let Some((piece, next)) = ws::next_line(text, *at) {
                    let line = sanitize(piece.as_bytes());
                    *at = next;
                    lines += 1;
                    batch.extend(line);
                    continue;
                }
                c.held = None;
            }
            let Proto::Ws(dec) = &mut c.proto else { return };
            let event = dec.next_event();
            // Only the error line costs a token here; a text message's lines
            // pay for themselves above.
            if !matches!(event, Ok(Some(Event::TooLong)))
                && let Some(bucket) = c.bucket.as_mut()
            {
                bucket.refund();
            }
            match event {
                Ok(Some(Event::Text(text))) => c.held = Some((text, 0)),
                Ok(Some(Event::TooLong)) => {
                    lines += 1;
                    self.deliver(k, batch);
                    self.too_long(k);
                }
                Ok(Some(Event::Ping(payload))) => {
                    let (sendq, on_slow) = (self.cfg.sendq as usize, self.cfg.on_slow);
                    match c.push_reply(ws::pong_frame(&payload), sendq, on_slow) {
                        Push::TooSlow => {
                            self.metrics.too_slow += 1;
                            cut_off(c, k, &mut self.closing);
                            return;
                        }
                        Push::First | Push::Queued => self.mark_pending(k),
                        Push::Dropped | Push::Ignored => {}
                    }
                }
                Ok(Some(Event::Pong)) => {}
                Ok(Some(Event::Close { code, .. })) => {
                    c.push_raw(ws::close_reply(code));
                    mark_closing(c, k, &mut self.closing, None, true);
                    return;
                }
                Err(violation) => {
                    warn!("{} WebSocket error: {violation}", c.peer);
                    c.push_raw(violation.close_frame());
                    let reason = format!("websocket error: {}", violation.reason);
                    mark_closing(c, k, &mut self.closing, Some(reason), true);
                    return;
                }
                Ok(None) if c.eof => {
                    mark_closing(c, k, &mut self.closing, None, true);
                    return;
                }
                Ok(None) => {
                    let room = dec.room().min(READ_CHUNK);
                    if room == 0 {
                        return;
                    }
                    match c.sock.read(&mut self.scratch[..room]) {
                        Ok(0) => c.eof = true,
                        Ok(n) => {
                            bytes += n;
                            self.metrics.bytes_in += n as u64;
                            dec.feed(&self.scratch[..n]);
                            c.touch(now);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            mark_closing(c, k, &mut self.closing, Some(reason_for(&e)), false);
                            return;
                        }
                    }
                }
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
            // A WebSocket must end with a close frame, or the browser sees an
            // abnormal closure (1006) after /quit. Not when one is already
            // queued: the reply to the peer's close, or a violation's.
            if let Proto::Ws(dec) = &c.proto
                && !dec.is_finished()
            {
                c.push_raw(ws::close_frame(
                    Some(ws::NORMAL),
                    reason.as_deref().unwrap_or(""),
                ));
            }
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
        let sent = c.sent();
        let result = c.flush();
        self.metrics.bytes_out += c.sent() - sent;
        // Ask for writable events only while output waits on the socket,
        // as Redis installs a write handler only for clients it could not
        // drain: with it always on, every ACK to every busy recipient
        // would wake the loop for nothing.
        let stuck = matches!(result, Ok(false));
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
                // One entry per pause (see `admit`): counted as it ends.
                self.metrics.rate_limited += 1;
                if let Some(c) = self.conns.get_mut(k) {
                    c.throttled = false;
                    if !c.in_readable {
                        c.in_readable = true;
                        self.readable.push(k);
                    }
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
        let waiting = std::mem::take(&mut self.http_waiting);
        for k in waiting {
            // Only while the head is still being read: an answer being
            // flushed is bounded by its drain deadline instead.
            match self.conns.get(k).map(|c| (&c.proto, c.state, c.peer)) {
                Some((Proto::Http(_, t), State::Open, peer)) if *t <= now => {
                    info!("{peer} closed: no complete request within --http-timeout");
                    self.remove(k);
                }
                Some((Proto::Http(..), State::Open, _)) => self.http_waiting.push(k),
                _ => {}
            }
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept(Port::Line);
            self.accept(Port::Http);
            self.settle();
        }
        if now >= self.metrics.next_tick() {
            self.metrics.tick(now);
        }
        self.idle_check(now);
    }

    /// Puts a connection that just entered the chat under --idle-timeout.
    fn track_idle(&mut self, k: usize) {
        let (Some(limit), Some(c)) = (self.cfg.idle_timeout(), self.conns.get(k)) else {
            return;
        };
        if let Action::Wait(at) | Action::Ping(at) =
            idle::decide(c.last_active, c.pinged, c.is_ws(), limit, Instant::now())
        {
            self.idle.push(at, k, c.serial);
        }
        let conns = &self.conns;
        self.idle.compact(conns.len(), |k, serial| {
            conns.get(k).is_some_and(|c| c.serial == serial)
        });
    }

    /// --idle-timeout: pings and closes whatever has come due. See idle.rs.
    fn idle_check(&mut self, now: Instant) {
        let Some(limit) = self.cfg.idle_timeout() else {
            return;
        };
        let mut acted = false;
        while let Some((k, serial)) = self.idle.pop_due(now) {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            if c.serial != serial || c.state != State::Open {
                continue;
            }
            match idle::decide(c.last_active, c.pinged, c.is_ws(), limit, now) {
                Action::Wait(at) => self.idle.push(at, k, serial),
                Action::Ping(at) => {
                    c.pinged = true;
                    c.push_raw(ws::ping_frame(b"chatd"));
                    self.idle.push(at, k, serial);
                    self.mark_pending(k);
                    acted = true;
                }
                Action::Close => {
                    info!("{} closed: idle for {limit:?}", c.peer);
                    self.metrics.idle_closed += 1;
                    c.push_notice("*** idle for too long");
                    // leave() ends a WebSocket with a close frame giving
                    // the reason.
                    mark_closing(c, k, &mut self.closing, Some("idle".into()), true);
                    acted = true;
                }
            }
        }
        if acted {
            self.settle();
        }
    }

    /// `GET /metrics` on the web port: the answer, then close.
    fn serve_metrics(&mut self, k: usize, request: &Request) {
        let (mut line_clients, mut ws_clients) = (0, 0);
        for (_, c) in &self.conns {
            match (&c.proto, c.state) {
                (Proto::Line(_), State::Open) => line_clients += 1,
                (Proto::Ws(_), State::Open) => ws_clients += 1,
                _ => {}
            }
        }
        let scrape = Scrape {
            node_id: &self.cfg.node_id,
            metrics: &self.metrics,
            line_clients,
            ws_clients,
            rooms: self.hub.rooms() as u64,
            lines_relayed: self.hub.relayed(),
            history_lines: self.hub.history_lines() as u64,
            history_bytes: self.hub.history_bytes() as u64,
            cluster: self.link.as_ref().map(|l| metrics::Cluster {
                link_up: l.is_up(),
                published: l.stats.published,
                received: l.stats.received,
                dropped: l.stats.dropped,
                reconnects: l.stats.reconnects,
                connect_failures: l.stats.connect_failures,
                refused: l.stats.refused,
                malformed: l.stats.malformed,
                timeouts: l.stats.timeouts,
            }),
        };
        let answer = metrics::answer(request, &scrape);
        if let Some(c) = self.conns.get_mut(k) {
            debug!("{} {} /metrics", c.peer, request.method);
            c.push_raw(answer);
        }
        self.end_http(k);
    }
}
