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
//! The reactor knows no protocol: it reads as much as a connection's state
//! machine asks for (`Proto::next` -> `Step::Read`), feeds it, and acts on
//! the steps it returns (conn/mod.rs). Which machine a connection starts
//! with is chosen by the listener it came in on.
//!
//! Slab entries are only freed in step 6: anything done with a connection
//! marks it `Gone` and lists it for the sweep. So a key in an event, or in
//! any list built during a turn, names the same connection all turn long;
//! the one list that outlives a turn (`readable`) and the timers name a
//! connection by key and serial, so a later connection under the same key
//! is never taken for it.

use crate::access::Bans;
use crate::cluster::{self, Inbound, Link, RedisUrl};
use crate::config::{Config, DRAIN_SECS, LINE_BUDGET, OnSlow, READ_BUDGET_BYTES, READ_CHUNK};
use crate::conn::{
    self, Bucket, Conn, HttpSession, Input, LineSession, Proto, Push, State, Step, set_keepalive,
};
use crate::history::Id;
use crate::http::Request;
use crate::hub::{Access, Asked, ClientId, ConnStats, Hub, Outbox, Presence, ServerStats};
use crate::idle::{self, Action};
use crate::limits::{PerAddr, Refused};
use crate::metrics::{self, Metrics, Scrape};
use crate::msg::Msg;
use crate::socket::{self, SocketResult};
use crate::timer::{ConnRef, Timer, Timers};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const HTTP_LISTENER: Token = Token(usize::MAX - 3);
const TLS_LISTENER: Token = Token(usize::MAX - 4);
const HTTPS_LISTENER: Token = Token(usize::MAX - 5);

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "cannot accept" warning per this long.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

pub struct Server {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    /// Line clients over TLS (--tls-port) and the web over TLS
    /// (--https-port), beside the plain ports, on a --tls-* server.
    tls_listener: Option<TcpListener>,
    https_listener: Option<TcpListener>,
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
    /// Connections with output queued since their last flush.
    pending: Vec<usize>,
    /// Connections marked to leave during this turn.
    closing: Vec<usize>,
    /// Connections gone during this turn, freed by the sweep.
    gone: Vec<usize>,
    /// Every per-connection deadline, and the accept retry.
    timers: Timers,
    /// Accepting failed for want of descriptors; a timer retries.
    accept_stalled: bool,
    accept_warned: Option<Instant>,
    shutdown: Option<Instant>,
    /// Cluster mode: the link to Redis, and what it heard but the hub has
    /// not been told yet.
    link: Option<Link>,
    inbound: Vec<Inbound>,
    metrics: Metrics,
    /// The serial the next accepted connection gets.
    next_serial: u64,
    /// Both ports speak TLS (--tls-cert, --tls-self-signed).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The self-signed certificate's SHA-256 fingerprint, for the operator.
    fingerprint: Option<String>,
    /// --max-per-ip and --max-connects.
    per_addr: PerAddr,
    next_prune: Instant,
}

/// How often the per-address table is swept of entries with nothing left
/// to count.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

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
        // Back from the hub's ClientId to the slab key it was made from.
        let to = to.0;
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
        let id = id.0;
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

    fn ban(&mut self, ban: &crate::access::Ban) {
        if let Some(link) = self.link.as_deref_mut() {
            link.ban(ban);
        }
    }

    fn unban(&mut self, net: &ipnet::IpNet) {
        if let Some(link) = self.link.as_deref_mut() {
            link.unban(net);
        }
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
        let c = self.conns.get(id.0)?;
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

/// The passwords and the bans file, as configured; an error stops the
/// start (an unreadable password file, a bans file that exists but cannot
/// be read).
fn access(cfg: &Config) -> io::Result<Access> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let password = cfg.password().map_err(invalid)?;
    let oper = cfg.oper_password().map_err(invalid)?;
    let bans = match std::fs::read_to_string(&cfg.bans_file) {
        Ok(text) => {
            let (bans, bad) = Bans::from_file(&text, unix_ms());
            if bad > 0 {
                warn!(
                    "{}: {bad} line(s) that are not bans left out",
                    cfg.bans_file
                );
            }
            info!("{} ban(s) from {}", bans.len(), cfg.bans_file);
            bans
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Bans::default(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot read the bans file {}: {e} (--bans-file)",
                    cfg.bans_file
                ),
            ));
        }
    };
    if password.is_some() {
        info!("clients must give the server password (/pass)");
    }
    Ok(Access::new(password, oper, cfg.pass_attempts, bans))
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
    let last = c.proto.cut_off().filter(|_| !c.mid_item());
    c.discard_output();
    if let Some(last) = last {
        c.write_last(&last);
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

/// Which listening socket a connection came in on.
#[derive(Clone, Copy)]
enum Port {
    Line,
    Http,
    TlsLine,
    Https,
}

impl Port {
    fn tls(self) -> bool {
        matches!(self, Port::TlsLine | Port::Https)
    }
}

/// Binds a listener on `host:port` for `what`, registered under `token`.
fn listen(poll: &Poll, host: &str, port: u16, token: Token, what: &str) -> io::Result<TcpListener> {
    let l = std::net::TcpListener::bind((host, port)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {host}:{port} for {what}: {e}"),
        )
    })?;
    l.set_nonblocking(true)?;
    let mut l = TcpListener::from_std(l);
    poll.registry()
        .register(&mut l, token, Interest::READABLE)?;
    Ok(l)
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
        let access = access(&cfg)?;
        // A batch of one sender's lines must always fit a recipient's queue.
        // A history answer, too, must fit: a quarter leaves room for what
        // is queued already.
        let mut hub = hub
            .with_access(access)
            .with_batch_max((cfg.sendq as usize / 8).min(16 * 1024))
            .with_max_line(cfg.max_line as usize)
            .with_history(cfg.history_limits(), cfg.history_on_join as usize)
            .with_reply_max(cfg.sendq as usize / 4);
        hub.tick(unix_ms());
        let (tls, fingerprint) = if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
            let tls = crate::tls::load(cert, key)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            (Some(tls), None)
        } else if cfg.tls_self_signed {
            let (tls, fp, _) = crate::tls::self_signed().map_err(io::Error::other)?;
            info!("TLS with a self-signed certificate, SHA-256 fingerprint {fp}");
            (Some(tls), Some(fp))
        } else {
            (None, None)
        };
        let (tls_listener, https_listener) = if tls.is_some() {
            let host = cfg.host.as_str();
            let line = listen(&poll, host, cfg.tls_port, TLS_LISTENER, "TLS (--tls-port)")?;
            let web = if cfg.no_http {
                None
            } else {
                Some(listen(
                    &poll,
                    host,
                    cfg.https_port,
                    HTTPS_LISTENER,
                    "HTTPS (--https-port)",
                )?)
            };
            (Some(line), web)
        } else {
            (None, None)
        };
        let per_addr = PerAddr::new(cfg.max_per_ip, cfg.max_connects, cfg.limit_exempt.clone());
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            http_listener,
            tls_listener,
            https_listener,
            signals,
            conns: Slab::new(),
            hub,
            cfg,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            readable: Vec::new(),
            pending: Vec::new(),
            closing: Vec::new(),
            gone: Vec::new(),
            timers: Timers::default(),
            accept_stalled: false,
            accept_warned: None,
            shutdown: None,
            link,
            inbound: Vec::new(),
            metrics: Metrics::new(Instant::now()),
            next_serial: 0,
            tls,
            fingerprint,
            per_addr,
            next_prune: Instant::now() + PRUNE_EVERY,
        })
    }

    /// The self-signed certificate's SHA-256 fingerprint (--tls-self-signed).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Where line clients connect over TLS (--tls-port).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the web page is served over https (--https-port).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
            // Before the answers go out: an operator told "banned" can
            // count on the ban being on disk.
            self.save_bans();
            self.settle();
            self.timers();
            self.flush_link();
            self.sweep();
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

    /// Writes the bans file if the bans changed this turn: a temporary file
    /// next to it, then a rename, so a crash never leaves half a file. A
    /// failure is logged and tried again at the next change.
    fn save_bans(&mut self) {
        let Some(text) = self.hub.bans_to_save() else {
            return;
        };
        let path = std::path::Path::new(&self.cfg.bans_file);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!("cannot write the bans file {}: {e}", path.display());
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
                event.apply(hub, &mut out);
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
        let mut accept = false;
        let mut accept_http = false;
        let mut accept_tls = false;
        let mut accept_https = false;
        let mut signalled = false;
        for event in self.events.iter() {
            match event.token() {
                LISTENER => accept = true,
                HTTP_LISTENER => accept_http = true,
                TLS_LISTENER => accept_tls = true,
                HTTPS_LISTENER => accept_https = true,
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
        self.apply_inbound();
        if accept {
            self.accept(Port::Line);
        }
        if accept_http {
            self.accept(Port::Http);
        }
        if accept_tls {
            self.accept(Port::TlsLine);
        }
        if accept_https {
            self.accept(Port::Https);
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
        for mut l in [
            self.listener.take(),
            self.http_listener.take(),
            self.tls_listener.take(),
            self.https_listener.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
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

    fn accept(&mut self, port: Port) {
        if matches!(port, Port::Line) {
            self.accept_stalled = false;
        }
        loop {
            let listener = match port {
                Port::Line => self.listener.as_ref(),
                Port::Http => self.http_listener.as_ref(),
                Port::TlsLine => self.tls_listener.as_ref(),
                Port::Https => self.https_listener.as_ref(),
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
                    self.accept_stalled = true;
                    self.timers.push(now + ACCEPT_BACKOFF, Timer::Accept);
                    return;
                }
            };
            // The listener chooses the state machine the connection starts in.
            let now = Instant::now();
            let proto = match port {
                Port::Line | Port::TlsLine => {
                    Proto::Line(LineSession::new(self.cfg.max_line as usize))
                }
                Port::Http | Port::Https => Proto::Http(HttpSession::new(
                    now + Duration::from_secs(self.cfg.http_timeout),
                    self.cfg.max_line as usize,
                )),
            };
            let max = self.cfg.max_clients;
            if self.conns.len() >= max as usize {
                warn!("{peer} refused: server full ({max} clients)");
                let text = format!("*** error: server full ({max} clients)");
                // A TLS client cannot be told anything before a handshake.
                if !port.tls() {
                    let _ = (&sock).write(&conn::refusal(&proto, &text));
                }
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let tls = match self
                .tls
                .as_ref()
                .filter(|_| port.tls())
                .map(conn::tls::Tls::new)
                .transpose()
            {
                Ok(tls) => tls.map(Box::new),
                Err(e) => {
                    warn!("{peer} dropped: cannot start TLS: {e}");
                    continue;
                }
            };
            // Under --proxy-protocol a trusted proxy must send the header
            // (and is waited for); anyone else's is watched for and refused.
            let proxy = self.cfg.proxy_protocol.then(|| {
                let ip = peer.ip().to_canonical();
                self.cfg.trusted_proxy.iter().any(|n| n.contains(&ip))
            });
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
            let bucket = self
                .cfg
                .rate
                .map(|rate| Bucket::new(rate, self.cfg.burst.unwrap_or(rate), now));
            let mut conn = Conn::new(sock, peer, proto, bucket).with_layers(
                proxy,
                tls,
                now + Duration::from_secs(self.cfg.http_timeout),
            );
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
            let waits = conn.proxy.is_some();
            entry.insert(conn);
            self.readable.push(me);
            // The address is known now unless a proxy is to tell it.
            if !waits {
                self.addressed(k);
            }
        }
    }

    /// The client's real address is known (at accept, or from a trusted
    /// proxy's header): apply the per-address limits, then start the
    /// protocol if nothing beneath it is still pending. False if refused.
    fn addressed(&mut self, k: usize) -> bool {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        match self.per_addr.admit(c.peer.ip(), now) {
            Ok(counted) => c.admitted = counted,
            Err(why) => {
                match why {
                    Refused::TooMany => {
                        self.metrics.refused_per_ip += 1;
                        warn!(
                            "{} refused: --max-per-ip ({} connections from one address)",
                            c.peer, self.cfg.max_per_ip
                        );
                    }
                    Refused::TooFast => {
                        self.metrics.refused_rate += 1;
                        warn!(
                            "{} refused: --max-connects ({} new connections per 10 minutes from one address)",
                            c.peer, self.cfg.max_connects
                        );
                    }
                }
                if c.tls.is_some() {
                    // Nothing can be said before a handshake, and doing
                    // one for a refused address would spend what the
                    // limit protects.
                    self.remove(k);
                } else {
                    c.push_raw(conn::refusal(&c.proto, why.text()));
                    c.state = State::Closing;
                    self.drain(k);
                }
                return false;
            }
        }
        self.start(k);
        true
    }

    /// Joins the chat (a line client) once the layers beneath the protocol
    /// are done: the address known and the TLS handshake finished.
    fn start(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if c.joined || c.state != State::Open || !c.layers_ready() {
            return;
        }
        if c.proto.in_chat() {
            self.join(k);
        } else {
            debug!("{} web connection", c.peer);
        }
    }

    /// The hub meets a connection: at accept, or once it has upgraded.
    fn join(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
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
        let mut batch = Vec::new();
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
                    batch.extend(text);
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
                    // Only TLS pending: a PROXY header completing here
                    // goes through the address check (`addressed`) first.
                    let handshaking = c.proxy.is_none() && !c.layers_ready();
                    let input = c.read_in(&mut self.scratch[..room]);
                    if c.wants_flush() {
                        // Handshake records (or an alert) to send.
                        self.mark_pending(k);
                    }
                    let Some(c) = self.conns.get_mut(k) else {
                        break;
                    };
                    if handshaking && c.layers_ready() {
                        // The handshake finished: the protocol starts
                        // before it gets its first bytes.
                        self.start(k);
                    }
                    let Some(c) = self.conns.get_mut(k) else {
                        break;
                    };
                    match input {
                        Input::Data(n) => {
                            bytes += n;
                            self.metrics.bytes_in += n as u64;
                            c.proto.feed(&self.scratch[..n]);
                            c.touch(now);
                        }
                        Input::Closed => c.eof = true,
                        Input::WouldBlock => {
                            c.proto.would_block();
                            break;
                        }
                        Input::Error(e) => {
                            if c.proxy.is_some() {
                                debug!("{} lost before its PROXY header: {e}", c.peer);
                                self.remove(k);
                                break;
                            }
                            if !c.layers_ready() {
                                self.metrics.tls_failed += 1;
                                info!("{} TLS handshake failed: {e}", c.peer);
                                self.remove(k);
                                break;
                            }
                            let reason = socket::reason_for(&e);
                            mark_closing(c, k, &mut self.closing, Some(reason), false);
                            break;
                        }
                        Input::Addressed(source) => {
                            match source {
                                Some(real) => {
                                    debug!("{} PROXY header: client {real}", c.peer);
                                    c.peer = real;
                                }
                                None => {
                                    // The proxy's own connection (a health
                                    // check every few seconds): trusted, and
                                    // not a client the limits are for.
                                    debug!("{} PROXY header for the proxy itself", c.peer);
                                    self.start(k);
                                    continue;
                                }
                            }
                            if !self.addressed(k) {
                                break;
                            }
                        }
                        Input::Refused(why) => {
                            self.metrics.proxy_refused += 1;
                            warn!("{} refused: {why} (--trusted-proxy)", c.peer);
                            if c.joined {
                                c.discard_output();
                                mark_closing(
                                    c,
                                    k,
                                    &mut self.closing,
                                    Some("refused".into()),
                                    false,
                                );
                            } else {
                                self.remove(k);
                            }
                            break;
                        }
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
                    c.push_raw(answer);
                    c.touch(now);
                    self.mark_pending(k);
                    self.join(k);
                }
                Step::Metrics(request) => {
                    self.serve_metrics(k, &request);
                    break;
                }
            }
        }
        self.deliver(k, &mut batch);
    }

    /// Hands a connection's lines to the hub.
    fn deliver(&mut self, k: usize, batch: &mut Vec<String>) {
        if batch.is_empty() {
            return;
        }
        if log::log_enabled!(log::Level::Debug)
            && let Some(c) = self.conns.get(k)
        {
            for text in batch.iter() {
                let text = crate::access::redact(text);
                debug!(
                    "{} {}: {text}",
                    c.peer,
                    self.hub.name(ClientId(k)).unwrap_or("?")
                );
            }
        }
        self.metrics.lines_in += batch.len() as u64;
        let (hub, mut out) = self.out();
        hub.lines(ClientId(k), batch, &mut out);
        batch.clear();
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
        if self.accept_stalled {
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
                Timer::Accept => accept = self.accept_stalled,
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
                        if why.contains("TLS") {
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
            }
        }
        if acted {
            self.settle();
        }
        if accept {
            for port in [Port::Line, Port::Http, Port::TlsLine, Port::Https] {
                self.accept(port);
            }
            self.settle();
        }
        if now >= self.next_prune {
            self.per_addr.prune(now);
            self.next_prune = now + PRUNE_EVERY;
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
            cluster: self.link.as_ref().map(Link::stats),
        };
        let answer = metrics::answer(request, &scrape);
        if let Some(c) = self.conns.get_mut(k) {
            debug!("{} {} /metrics", c.peer, request.method);
            c.push_raw(answer);
            mark_closing(c, k, &mut self.closing, None, true);
        }
    }
}
