//! The event loop: one thread, one mio::Poll over every client socket.
//!
//! A run has four phases:
//! 1. connect: at most `connect_batch` connections are pending at once; a
//!    connection counts as up when it is connected and (for servers that
//!    greet, detected on the first connection) has received its first byte,
//!    which proves the server accepted it rather than leaving it in a full
//!    listen backlog;
//! 2. quiet: wait until nothing has arrived for `quiet` so joined notices
//!    and welcomes are not in the measurement;
//! 3. measure: senders send, every receiver's tokens go to the ledger;
//! 4. drain: slow readers read what is left, to see whether the server
//!    closed them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token as MioToken};

use crate::conn::{self, Conn, ReadOutcome, State, Transport};
use crate::hist::Histogram;
use crate::procstat::{self, Sample};
use crate::timer::Timer;
use crate::token::{Scanner, Token};
use crate::verify::{Ledger, Receipt};

/// One read buffer for all connections: big reads mean few syscalls.
const READ_BUF: usize = 256 * 1024;
/// Open loop: a sender stops generating lines while this much is unwritten
/// (the server is not reading); the lines still carry their intended time.
const OPEN_LOOP_CAP: usize = 256 * 1024;
/// How long a slow reader's drain waits for more bytes before deciding the
/// server is not closing it.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const TIMER: MioToken = MioToken(usize::MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Greeting {
    /// Decide on the first connection: wait `--settle-ms` for a first byte.
    Auto,
    Yes,
    No,
}

pub struct Config {
    pub addr: SocketAddr,
    /// More servers (cluster instances): connection i goes to
    /// `[addr, also...][i % (1 + also.len())]`.
    pub also: Vec<SocketAddr>,
    pub host: String,
    pub clients: usize,
    pub senders: usize,
    pub lines: u32,
    pub bytes: usize,
    pub window: u32,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub hello: Option<String>,
    pub pid: Option<u32>,
    /// More processes whose CPU over the measure phase is reported.
    pub watch: Vec<u32>,
    pub slow: usize,
    pub idle: bool,
    /// The upgrade path for WebSocket and socket.io.
    pub ws_path: Option<String>,
    pub transport: Transport,
    /// Connection i sits on instance `i % instances` (through --also-ports,
    /// or a balancer that deals connections round-robin): deliveries from a
    /// sender on another instance are also timed on their own.
    pub instances: usize,
    pub connect_batch: usize,
    pub greeting: Greeting,
    pub settle: Duration,
    pub quiet: Duration,
    pub src_addrs: usize,
    /// A progress line on stderr about once a second while measuring.
    pub progress: bool,
}

#[derive(Default)]
pub struct ServerStats {
    pub before_connect: Sample,
    pub at_start: Sample,
    pub at_end: Sample,
}

#[derive(Default)]
pub struct Outcome {
    pub connected: usize,
    pub connect_failed: usize,
    pub first_failure: Option<String>,
    pub lost_before_start: usize,
    pub greeting: bool,
    pub connect_time: Duration,
    pub quiet_time: Duration,
    pub quiet_timed_out: bool,
    pub duration: Duration,
    pub lines_sent: u64,
    pub deliveries: u64,
    pub expected: u64,
    pub missing: u64,
    pub unsent: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub echoes: u64,
    pub foreign: u64,
    pub closed_by_server: usize,
    pub stalled: bool,
    pub hist: Histogram,
    /// Deliveries whose sender sits on another instance (`instances` > 1).
    pub hist_cross: Histogram,
    pub server: Option<ServerStats>,
    pub slow_closed: usize,
    pub slow_drained_bytes: u64,
    /// flood's own CPU seconds in the run, to show when the tool, not the
    /// server, was what saturated.
    pub self_cpu_s: f64,
    /// (pid, CPU seconds over the measure phase) of each watched process;
    /// None if it could not be read (gone, or no /proc).
    pub watched: Vec<(u32, Option<f64>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Quiet,
    Measure,
    Drain,
}

struct Engine<'a> {
    cfg: &'a Config,
    poll: Poll,
    events: Events,
    /// (token, readable, writable) of the last poll, reused between turns.
    fired: Vec<(usize, bool, bool)>,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    scanner: Scanner,
    scratch: Vec<u8>,
    epoch: Instant,
    phase: Phase,
    src: Vec<IpAddr>,
    /// Connections that stopped at the per-event read cap.
    again: Vec<usize>,
    last_rx: Instant,
    // connect phase
    greeting: Option<bool>,
    confirmed: Vec<bool>,
    pending: usize,
    n_confirmed: usize,
    last_confirm: Instant,
    // measure phase
    ledger: Option<Ledger>,
    t0: Instant,
    t0_us: u64,
    last_delivery: Instant,
    timer: Option<Timer>,
    slow_closed: Vec<bool>,
    slow_bytes: u64,
    out: Outcome,
}

/// Raises RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, owned `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit
        // up to the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Source addresses for `clients` connections: one 127.0.0.x per third of
/// the ephemeral port range, or none (let the kernel choose) when one
/// address is enough. Not the whole range: the kernel's search for a free
/// port slows down sharply as the range fills (19 000 connections from one
/// address took 9 s to open here; spread over two, 0.7 s).
pub fn source_addrs(target: SocketAddr, clients: usize, forced: usize) -> Vec<IpAddr> {
    let per_addr = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<usize>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_000)
        .div_euclid(3)
        .max(1_000);
    let n = if forced > 0 {
        forced
    } else {
        clients.div_ceil(per_addr)
    };
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && n > 1 => (1..=n.min(254))
            .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 0, x as u8)))
            .collect(),
        _ => Vec::new(),
    }
}

pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let mut e = Engine::new(cfg).map_err(|err| format!("poll: {err}"))?;
    e.connect()?;
    e.quiet();
    e.measure();
    e.drain();
    Ok(e.finish())
}

impl<'a> Engine<'a> {
    fn new(cfg: &'a Config) -> io::Result<Engine<'a>> {
        let now = Instant::now();
        let src = source_addrs(cfg.addr, cfg.clients, cfg.src_addrs);
        Ok(Engine {
            cfg,
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            fired: Vec::with_capacity(4096),
            conns: Vec::with_capacity(cfg.clients),
            buf: vec![0; READ_BUF],
            scanner: Scanner::default(),
            scratch: Vec::new(),
            epoch: now,
            phase: Phase::Connect,
            src,
            again: Vec::new(),
            last_rx: now,
            greeting: match cfg.greeting {
                Greeting::Auto => None,
                Greeting::Yes => Some(true),
                Greeting::No => Some(false),
            },
            confirmed: vec![false; cfg.clients],
            pending: 0,
            n_confirmed: 0,
            last_confirm: now,
            ledger: None,
            t0: now,
            t0_us: 0,
            last_delivery: now,
            timer: None,
            slow_closed: vec![false; cfg.clients],
            slow_bytes: 0,
            out: Outcome::default(),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn is_slow(&self, i: usize) -> bool {
        i >= self.cfg.clients - self.cfg.slow
    }

    fn sample(&self) -> Sample {
        self.cfg.pid.and_then(procstat::sample).unwrap_or_default()
    }

    /// One poll and the handling of what it returned.
    fn turn(&mut self, timeout: Option<Duration>) {
        let timeout = if self.again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            // Nothing sensible to do but retry; the phase deadlines bound it.
            eprintln!("flood: poll: {e}");
        }
        let again = std::mem::take(&mut self.again);
        for i in again {
            self.on_readable(i);
        }
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        for ev in self.events.iter() {
            let hup = ev.is_read_closed() || ev.is_error();
            if hup && let Some(c) = self.conns.get_mut(ev.token().0) {
                c.hup = true;
            }
            fired.push((ev.token().0, ev.is_readable() || hup, ev.is_writable()));
        }
        for &(i, readable, writable) in &fired {
            if i == TIMER.0 {
                if let Some(t) = &self.timer {
                    t.clear();
                }
                continue;
            }
            self.on_event(i, readable, writable);
        }
        self.fired = fired;
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool) {
        if self.conns[i].state == State::Dead {
            return;
        }
        if self.conns[i].state == State::Connecting {
            match self.conns[i].check_connected() {
                Ok(true) => self.on_tcp_up(i),
                Ok(false) => return,
                Err(e) => return self.kill(i, e.to_string()),
            }
        }
        if self.phase == Phase::Measure && self.is_slow(i) {
            // Slow readers are only watched for the server cutting them
            // off (an error or hang-up still wakes us); never read.
            if readable {
                self.slow_closed[i] = true;
            }
            return;
        }
        if readable {
            self.on_readable(i);
        }
        if writable {
            self.flush(i);
        }
    }

    fn on_tcp_up(&mut self, i: usize) {
        let cfg = self.cfg;
        let path = cfg.ws_path.as_deref().unwrap_or("/");
        if self.conns[i].on_connected(&cfg.host, cfg.addr.port(), path) {
            self.on_lines_up(i);
        }
        self.flush(i);
    }

    /// The connection can carry lines (TCP connected, or WebSocket open).
    fn on_lines_up(&mut self, i: usize) {
        if let Some(t) = &self.cfg.hello {
            let line = t.replace("{i}", &i.to_string());
            self.conns[i].queue_line(line.as_bytes());
        }
        self.check_confirm(i);
    }

    fn on_readable(&mut self, i: usize) {
        let scanning = self.phase == Phase::Measure && !self.is_slow(i);
        let was_upgrading = self.conns[i].state == State::Upgrading;
        let now_us = self.now_us();
        let mut accepted = 0u64;
        let k = self.cfg.instances.max(1);
        let (outcome, n) = {
            let ledger = &mut self.ledger;
            let hist = &mut self.out.hist;
            let hist_cross = &mut self.out.hist_cross;
            let scanner = scanning.then_some(&self.scanner);
            self.conns[i].read(&mut self.buf, scanner, &mut |tok: Token| {
                if let Some(l) = ledger.as_mut()
                    && let Receipt::New = l.on_token(i, tok.sender, tok.seq)
                {
                    let us = now_us.saturating_sub(tok.t_us);
                    hist.record(us);
                    if k > 1 && tok.sender as usize % k != i % k {
                        hist_cross.record(us);
                    }
                    accepted += 1;
                }
            })
        };
        if n > 0 {
            self.last_rx = Instant::now();
            if self.phase == Phase::Drain && self.is_slow(i) {
                self.slow_bytes += n;
            }
        }
        if accepted > 0 {
            self.last_delivery = self.last_rx;
        }
        if was_upgrading && self.conns[i].state == State::Up {
            self.on_lines_up(i);
        }
        match outcome {
            ReadOutcome::Drained => {}
            ReadOutcome::More => self.again.push(i),
            ReadOutcome::Closed(why) => return self.kill(i, why),
        }
        if self.conns[i].unwritten() > 0 {
            self.flush(i);
        }
        if self.phase == Phase::Connect {
            self.check_confirm(i);
        }
    }

    fn flush(&mut self, i: usize) {
        if let Err(e) = self.conns[i].flush() {
            self.kill(i, e.to_string());
        }
    }

    fn kill(&mut self, i: usize, why: String) {
        let c = &mut self.conns[i];
        if c.state == State::Dead {
            return;
        }
        c.state = State::Dead;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let written = c.lines_written;
        match self.phase {
            Phase::Connect | Phase::Quiet => {
                if self.confirmed[i] {
                    self.out.lost_before_start += 1;
                } else {
                    self.pending -= 1;
                    self.out.connect_failed += 1;
                }
                self.out.first_failure.get_or_insert(why);
            }
            Phase::Measure | Phase::Drain if self.is_slow(i) => self.slow_closed[i] = true,
            Phase::Measure => {
                self.out.closed_by_server += 1;
                if let Some(l) = &mut self.ledger {
                    l.receiver_closed(i);
                    l.sender_closed(i, written);
                }
            }
            Phase::Drain => {}
        }
    }

    fn check_confirm(&mut self, i: usize) {
        if self.phase != Phase::Connect || self.confirmed[i] {
            return;
        }
        let c = &self.conns[i];
        if c.state != State::Up {
            return;
        }
        let ok = match self.greeting {
            Some(true) => c.got_bytes,
            Some(false) => true,
            None => {
                if c.got_bytes {
                    self.greeting = Some(true);
                }
                c.got_bytes
            }
        };
        if ok {
            self.confirmed[i] = true;
            self.pending -= 1;
            self.n_confirmed += 1;
            self.last_confirm = Instant::now();
        }
    }

    fn open(&mut self, i: usize) -> Result<(), String> {
        let src = (!self.src.is_empty()).then(|| self.src[i % self.src.len()]);
        let n = i % (1 + self.cfg.also.len());
        let addr = if n == 0 {
            self.cfg.addr
        } else {
            self.cfg.also[n - 1]
        };
        let mut stream =
            conn::start_connect(addr, src).map_err(|e| format!("connect #{i} to {addr}: {e}"))?;
        self.poll
            .registry()
            .register(
                &mut stream,
                MioToken(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        self.conns.push(Conn::new(stream, self.cfg.transport));
        self.pending += 1;
        Ok(())
    }

    fn connect(&mut self) -> Result<(), String> {
        let start = Instant::now();
        self.out.server = self.cfg.pid.map(|_| ServerStats {
            before_connect: self.sample(),
            ..Default::default()
        });
        let n = self.cfg.clients;
        let mut up_at: Option<(usize, Instant)> = None;
        self.last_confirm = start;
        // n_confirmed includes connections lost after they came up.
        while self.n_confirmed + self.out.connect_failed < n {
            // Until we know whether the server greets, only the first
            // connection is in flight.
            let limit = if self.greeting.is_none() {
                1
            } else {
                self.cfg.connect_batch.max(1)
            };
            while self.conns.len() < n && self.pending < limit {
                match self.open(self.conns.len()) {
                    Ok(()) => {}
                    // Running out of local ports or descriptors: stop opening.
                    Err(e) if self.n_confirmed > 0 => {
                        let missing = n - self.conns.len();
                        self.out.connect_failed += missing;
                        self.out.first_failure.get_or_insert(e);
                        self.confirmed.truncate(self.conns.len());
                        return self.connect_done(start);
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut timeout = self.cfg.timeout.saturating_sub(self.last_confirm.elapsed());
            if self.greeting.is_none() {
                // The probe is the one connection in flight; if it failed,
                // the next one opened takes its place.
                let p = self.conns.len() - 1;
                if self.conns[p].state == State::Up && up_at.is_none_or(|(q, _)| q != p) {
                    up_at = Some((p, Instant::now()));
                }
                if let Some((q, t)) = up_at
                    && q == p
                {
                    let left = self.cfg.settle.saturating_sub(t.elapsed());
                    if left.is_zero() {
                        self.greeting = Some(false);
                        self.check_confirm(p);
                        continue;
                    }
                    timeout = timeout.min(left);
                }
            }
            if self.last_confirm.elapsed() >= self.cfg.timeout {
                let waiting = n - self.n_confirmed - self.out.connect_failed;
                return Err(format!(
                    "{waiting} of {n} connections still not up after {:?} without progress \
                     ({} up, {} failed{})",
                    self.cfg.timeout,
                    self.n_confirmed,
                    self.out.connect_failed,
                    self.out
                        .first_failure
                        .as_ref()
                        .map(|f| format!(": {f}"))
                        .unwrap_or_default()
                ));
            }
            self.turn(Some(timeout));
        }
        self.connect_done(start)
    }

    fn connect_done(&mut self, start: Instant) -> Result<(), String> {
        self.out.connect_time = start.elapsed();
        self.out.greeting = self.greeting == Some(true);
        if self.n_confirmed == 0 {
            return Err(format!(
                "no connection to {} came up: {}",
                self.cfg.addr,
                self.out.first_failure.as_deref().unwrap_or("unknown")
            ));
        }
        Ok(())
    }

    fn quiet(&mut self) {
        self.phase = Phase::Quiet;
        let start = Instant::now();
        loop {
            // At least `quiet` from now, even if nothing ever arrived: a
            // server that does not greet may still be adding the last
            // connections it accepted.
            let since = self.last_rx.elapsed().min(start.elapsed());
            if since >= self.cfg.quiet {
                break;
            }
            if start.elapsed() >= self.cfg.timeout {
                self.out.quiet_timed_out = true;
                break;
            }
            self.turn(Some(self.cfg.quiet - since));
        }
        self.out.quiet_time = start.elapsed();
    }

    fn live(&self, i: usize) -> bool {
        self.conns.get(i).is_some_and(|c| c.state != State::Dead)
    }

    fn measure(&mut self) {
        let cfg = self.cfg;
        let n = self.conns.len();
        self.out.connected = (0..n).filter(|&i| self.live(i)).count();
        let slow: Vec<usize> = (0..n)
            .filter(|&i| self.is_slow(i) && self.live(i))
            .collect();
        for i in slow {
            // Stop reading: no readable interest, so no wake-ups either.
            if let Some(s) = &mut self.conns[i].stream {
                let _ = self
                    .poll
                    .registry()
                    .reregister(s, MioToken(i), Interest::WRITABLE);
            }
        }
        let mut receivers: Vec<bool> = (0..n).map(|i| self.live(i) && !self.is_slow(i)).collect();
        receivers.resize(cfg.clients, false);
        let window = cfg.rate.is_none().then_some(cfg.window.max(1));
        let mut ledger = Ledger::new(receivers, cfg.senders, cfg.lines, window);
        for s in 0..cfg.senders {
            if !self.live(s) {
                ledger.sender_closed(s, 0);
            }
        }
        self.ledger = Some(ledger);
        if let Some(st) = &mut self.out.server {
            st.at_start = cfg.pid.and_then(procstat::sample).unwrap_or_default();
        }
        if cfg.rate.is_some() {
            match Timer::new().and_then(|t| {
                self.poll.registry().register(
                    &mut SourceFd(&t.raw_fd()),
                    TIMER,
                    Interest::READABLE,
                )?;
                Ok(t)
            }) {
                Ok(t) => self.timer = Some(t),
                Err(e) => eprintln!("flood: timerfd unavailable ({e}); pacing to 1 ms"),
            }
        }
        let me = procstat::sample(std::process::id()).unwrap_or_default();
        let watched: Vec<Option<f64>> = cfg
            .watch
            .iter()
            .map(|&p| procstat::sample(p).map(|s| s.cpu_s))
            .collect();
        self.phase = Phase::Measure;
        self.t0 = Instant::now();
        self.t0_us = self.now_us();
        self.last_delivery = self.t0;
        for s in 0..cfg.senders {
            self.pump_closed(s);
        }
        let mut progress = cfg.progress.then(|| Progress::new(self.t0));
        loop {
            if let Some(p) = &mut progress {
                let sent = self.lines_sent();
                let delivered = self.ledger.as_ref().map_or(0, |l| l.deliveries);
                p.tick(sent, delivered);
            }
            let next_due = self.pump_open();
            if let Some(l) = &mut self.ledger {
                let mut woke = std::mem::take(&mut l.woke);
                woke.sort_unstable();
                woke.dedup();
                for s in woke {
                    self.pump_closed(s);
                }
            }
            if self.complete() {
                break;
            }
            let idle = self.last_delivery.elapsed();
            if idle >= cfg.timeout {
                self.out.stalled = true;
                break;
            }
            let mut timeout = cfg.timeout - idle;
            if progress.is_some() {
                timeout = timeout.min(PROGRESS_EVERY);
            }
            if let Some(due) = next_due {
                let d = Duration::from_micros(due.saturating_sub(self.now_us()));
                match &self.timer {
                    Some(t) if t.arm(d).is_ok() => {}
                    _ => timeout = timeout.min(d),
                }
            }
            self.turn(Some(timeout));
        }
        if let Some(p) = progress {
            p.done();
        }
        self.out.duration = self.last_delivery.saturating_duration_since(self.t0);
        let me_end = procstat::sample(std::process::id()).unwrap_or_default();
        self.out.self_cpu_s = me_end.cpu_s - me.cpu_s;
        self.out.watched = cfg
            .watch
            .iter()
            .zip(watched)
            .map(|(&p, before)| {
                let after = procstat::sample(p).map(|s| s.cpu_s);
                (p, before.zip(after).map(|(b, a)| a - b))
            })
            .collect();
        if let Some(st) = &mut self.out.server {
            st.at_end = cfg.pid.and_then(procstat::sample).unwrap_or_default();
        }
    }

    fn lines_sent(&self) -> u64 {
        (0..self.cfg.senders.min(self.conns.len()))
            .map(|s| u64::from(self.conns[s].lines_written))
            .sum()
    }

    fn complete(&self) -> bool {
        let Some(l) = &self.ledger else { return true };
        l.remaining() == 0
            && (0..self.cfg.senders)
                .all(|s| !self.live(s) || (l.may_send(s) == 0 && self.conns[s].unwritten() == 0))
            && (self.cfg.rate.is_some()
                || (0..self.cfg.senders).all(|s| !self.live(s) || l.generated(s) == self.cfg.lines))
    }

    /// Closed loop: fill sender `s`'s window.
    fn pump_closed(&mut self, s: usize) {
        if self.cfg.rate.is_some() || !self.live(s) {
            return;
        }
        let t_us = self.now_us();
        let Some(l) = &mut self.ledger else { return };
        let k = l.may_send(s);
        if k == 0 {
            return;
        }
        for _ in 0..k {
            let seq = l.generate(s);
            let tok = Token {
                sender: s as u32,
                seq,
                t_us,
            };
            self.conns[s].queue_token(tok, self.cfg.bytes, &mut self.scratch);
        }
        self.flush(s);
    }

    /// Open loop: generate every line that is due, stamped with the time it
    /// was due. Returns when the next line is due (micros since epoch).
    fn pump_open(&mut self) -> Option<u64> {
        let rate = self.cfg.rate?;
        let senders = self.cfg.senders as u64;
        let interval_us = 1e6 / rate;
        let now_us = self.now_us();
        let mut next_due = None::<u64>;
        for s in 0..self.cfg.senders {
            if !self.live(s) {
                continue;
            }
            let Some(l) = &mut self.ledger else { break };
            let mut queued = false;
            while l.may_send(s) > 0 {
                let k = u64::from(l.generated(s));
                let due = self.t0_us + ((k * senders + s as u64) as f64 * interval_us) as u64;
                if due > now_us {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    break;
                }
                if self.conns[s].unwritten() > OPEN_LOOP_CAP {
                    // The server is not taking our bytes; look again soon.
                    let retry = now_us + 1_000;
                    next_due = Some(next_due.map_or(retry, |d| d.min(retry)));
                    break;
                }
                let seq = l.generate(s);
                let tok = Token {
                    sender: s as u32,
                    seq,
                    t_us: due,
                };
                self.conns[s].queue_token(tok, self.cfg.bytes, &mut self.scratch);
                queued = true;
            }
            if queued {
                self.flush(s);
            }
        }
        next_due
    }

    fn drain(&mut self) {
        self.phase = Phase::Drain;
        let n = self.conns.len();
        let slow: Vec<usize> = (0..n).filter(|&i| self.is_slow(i)).collect();
        if slow.is_empty() {
            return;
        }
        for &i in &slow {
            if let Some(s) = &mut self.conns[i].stream {
                let _ = self.poll.registry().reregister(
                    s,
                    MioToken(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
            }
        }
        for &i in &slow {
            if self.live(i) {
                self.on_readable(i);
            }
        }
        let start = Instant::now();
        loop {
            if slow.iter().all(|&i| !self.live(i)) {
                break;
            }
            let since = self.last_rx.elapsed();
            if since >= DRAIN_QUIET || start.elapsed() >= self.cfg.timeout {
                break;
            }
            self.turn(Some(DRAIN_QUIET - since));
        }
    }

    fn finish(mut self) -> Outcome {
        let mut out = std::mem::take(&mut self.out);
        if let Some(l) = &self.ledger {
            out.expected = l.expected_total();
            out.deliveries = l.deliveries;
            out.out_of_order = l.out_of_order;
            out.duplicates = l.duplicates;
            out.echoes = l.echoes;
            out.foreign = l.foreign;
            (out.missing, out.unsent) = l.missing();
        }
        out.lines_sent = self.lines_sent();
        out.slow_closed = self.slow_closed.iter().filter(|&&c| c).count();
        out.slow_drained_bytes = self.slow_bytes;
        out
    }
}

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The progress line: one line on stderr, redrawn in place (`\r`) about
/// once a second, so a long run is not silent; ended with a newline before
/// the summary. Write errors are ignored (it is only a courtesy).
struct Progress {
    start: Instant,
    last: Instant,
    last_delivered: u64,
    drawn: bool,
}

impl Progress {
    fn new(start: Instant) -> Progress {
        Progress {
            start,
            last: start,
            last_delivered: 0,
            drawn: false,
        }
    }

    fn tick(&mut self, sent: u64, delivered: u64) {
        let now = Instant::now();
        let dt = now.duration_since(self.last);
        if dt < PROGRESS_EVERY {
            return;
        }
        let rate = (delivered - self.last_delivered.min(delivered)) as f64 / dt.as_secs_f64();
        let line = format!(
            "\rflood: {:.0} s: {} sent, {} delivered, {rate:.0} deliveries/s   ",
            now.duration_since(self.start).as_secs_f64(),
            crate::report::plural(sent, "line"),
            delivered,
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        self.last = now;
        self.last_delivered = delivered;
        self.drawn = true;
    }

    fn done(self) {
        if self.drawn {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), b"\n");
        }
    }
}
