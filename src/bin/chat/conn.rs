//! The connection to chatd: connecting, the reader thread that prints what
//! the server sends, and reconnecting with backoff when the server goes away.
//!
//! The main thread writes what the user types; the reader thread owns the
//! reading half and, on reconnect, swaps in a new writing half under the
//! same lock the main thread writes under, after re-sending the remembered
//! `/nick`, rejoining every room it was in and asking each for what was
//! said meanwhile (see resume.rs), so no typed line can overtake them.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};

use crate::display::{MAX_LINE, sanitize};
use crate::out::Out;
use crate::resume::Tracker;

/// How long one connection attempt may take per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that blocks this long means the server stopped reading; treat the
/// connection as gone rather than freeze the editor.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a name refused after a reconnect is asked for again: past the
/// 15 s a cluster keeps the name of a user whose server died (one that
/// stops gracefully gives it back at once).
const RECLAIM_FOR: Duration = Duration::from_secs(20);
/// The first wait before asking again; later ones double up to 2 s.
const RECLAIM_FIRST: Duration = Duration::from_millis(500);

/// Why the server ended (or would not start) the session, read from what
/// it said (its wording is in src/hub/moderation.rs and the reactor); each
/// has its exit status and the hint that fixes it (docs/chat.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Closed before a welcome: server full, too many connections...
    Refused(String),
    /// Banned, for `left` more (None: permanently).
    Banned {
        text: String,
        left: Option<Duration>,
    },
    /// A password is needed, was wrong, or too many were.
    Password(String),
    /// The two ends do not speak the same thing (TLS against plain).
    Tls(String),
    /// An operator kicked us: not a lost connection, so no reconnect.
    Kicked(String),
}

/// Exit statuses (docs/chat.md): 1 is a lost connection or a line not sent,
/// 2 a usage error (as clap's).
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_BANNED: i32 = 4;
pub const EXIT_PASSWORD: i32 = 5;
pub const EXIT_TLS: i32 = 6;
pub const EXIT_KICKED: i32 = 7;

impl End {
    pub fn code(&self) -> i32 {
        match self {
            End::Refused(_) => EXIT_REFUSED,
            End::Banned { .. } => EXIT_BANNED,
            End::Password(_) => EXIT_PASSWORD,
            End::Tls(_) => EXIT_TLS,
            End::Kicked(_) => EXIT_KICKED,
        }
    }

    /// What happened and what to do about it, in one line.
    pub fn explain(&self) -> String {
        match self {
            End::Refused(t) => format!("the server refused the connection ({t})"),
            End::Banned { text, left } => match left {
                Some(d) => format!("banned ({text}); not reconnecting for {}", words(*d)),
                None => format!("banned permanently ({text}); not reconnecting"),
            },
            End::Password(t) => format!(
                "{t}: give the server password with --password-file PATH (or CHATD_PASSWORD)"
            ),
            End::Tls(t) => t.clone(),
            End::Kicked(t) => format!("{t}; not reconnecting on our own"),
        }
    }

    /// Reads the server's lines that end a session (already untagged).
    /// `me` is our name, for the room notices that name us.
    pub fn from_line(line: &str, me: Option<&str>) -> Option<End> {
        let text = line.strip_prefix("*** ")?;
        if let Some(me) = me
            && let Some(rest) = text.strip_prefix(me)
        {
            if let Some(by) = rest.strip_prefix(" was kicked by ") {
                return Some(End::Kicked(format!("you were kicked by {by}")));
            }
            if let Some(after) = rest.strip_prefix(" was banned by ") {
                // "op for 10m (why)" or "op permanently (why)"
                let span = after.split_once(' ').map_or("", |(_, s)| s);
                let left = span
                    .strip_prefix("for ")
                    .map(|s| parse_span(s.split(" (").next().unwrap_or(s)));
                return Some(End::Banned {
                    text: format!("you were banned by {after}"),
                    left: left.flatten(),
                });
            }
        }
        if text.starts_with("this server needs a password") {
            return Some(End::Password("this server needs a password".into()));
        }
        let err = text.strip_prefix("error: ")?;
        if let Some(why) = err.strip_prefix("your address is banned from this server (") {
            let why = why.strip_suffix(')').unwrap_or(why);
            let left = why
                .split(',')
                .next()
                .and_then(|s| s.strip_suffix(" more"))
                .and_then(parse_span);
            return Some(End::Banned {
                text: why.to_string(),
                left,
            });
        }
        if err.starts_with("this server needs a password")
            || err.starts_with("wrong password")
            || err.starts_with("too many wrong passwords")
        {
            return Some(End::Password(err.to_string()));
        }
        None
    }
}

/// "9m 59s", "1h 30m", "2d 3h", "10m" -> its length; None if not one.
pub fn parse_span(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    for word in s.split_whitespace() {
        let (n, unit) = word.split_at(word.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        total += n * match unit {
            "d" => 86_400,
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
    }
    (total > 0).then(|| Duration::from_secs(total))
}

/// 3725 s -> "1h 2m 5s".
fn words(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [
        (s / 86_400, 'd'),
        (s / 3600 % 24, 'h'),
        (s / 60 % 60, 'm'),
        (s % 60, 's'),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, c)| format!("{n}{c}"))
        .collect();
    if shown.is_empty() {
        "0s".into()
    } else {
        shown.join(" ")
    }
}

/// A failed TLS handshake, with the flag that fixes it.
pub fn tls_failure(e: &io::Error) -> Option<End> {
    if e.kind() != io::ErrorKind::InvalidData {
        return None;
    }
    let text = e.to_string();
    let hint = if text.contains("certificate") {
        "the server's certificate does not verify: --tls-ca PATH trusts a given \
         certificate (a --tls-self-signed chatd prints its path: `tls certificate PATH`), \
         --insecure any"
    } else {
        "no TLS there: --tls goes to chatd's TLS port (--tls-port, 3443); \
         the line port (3000) is plain, without --tls"
    };
    Some(End::Tls(format!("TLS handshake failed: {text}; {hint}")))
}

#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub reconnect: bool,
    /// First reconnect delay; later ones double up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The server password, sent first on every connection (`/pass`).
    pub password: Option<String>,
    /// A person at a terminal: after a kick or a ban they decide; a script
    /// is ended (with the status that says why).
    pub interactive: bool,
}

impl Target {
    /// `/pass SECRET` and its newline, before anything else on a connection
    /// to a server with a password.
    pub fn pass_line(&self) -> Option<String> {
        self.password.as_ref().map(|p| format!("/pass {p}\n"))
    }

    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Connects to the first address of `host` that accepts.
pub fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                // Without keepalive a server whose machine vanished (no FIN,
                // no RST) would leave us "connected" forever.
                let keepalive = TcpKeepalive::new()
                    .with_time(Duration::from_secs(30))
                    .with_interval(Duration::from_secs(10));
                let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                return crate::tls::wrap(stream, host);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found")))
}

/// The delay before reconnect attempt `attempt` (0-based) without jitter:
/// base, 2*base, 4*base ... capped at `max`.
pub fn nominal_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(20)).min(max)
}

/// The nominal delay spread by +-25% so that clients dropped together by a
/// restarting server do not all come back in the same instant; never above
/// `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let spread = 0.75 + fastrand::f64() * 0.5;
    nominal_delay(attempt, base, max).mul_f64(spread).min(max)
}

#[derive(Default)]
pub struct State {
    /// The writing half; None while disconnected.
    writer: Option<TcpStream>,
    /// The `/nick` to re-send after a reconnect: only one the server
    /// confirmed, so a refused name is not asked for again. (The rooms to
    /// rejoin are the tracker's: resume.rs.)
    nick_cmd: Option<String>,
    /// A `/quit` was sent: the server closing is the expected end.
    quitting: bool,
    /// The user (or stdin) has nothing more to send; the main thread is only
    /// waiting for the end, so a lost connection is not worth reconnecting.
    input_done: bool,
    /// The reader thread has stopped for good.
    finished: bool,
    /// Our name, from the welcome and `you are now`.
    me: Option<String>,
    /// The current connection was welcomed (the server took us in).
    welcomed: bool,
    /// Some connection was.
    ever_welcomed: bool,
    /// Why the server ended the session, if it said.
    end: Option<End>,
    /// After a kick, the reader waits for the user's `/reconnect`.
    held: bool,
    reconnect_asked: bool,
    /// After a reconnect, the name being asked for again, until when, and
    /// the next wait: the server may still hold it for the connection that
    /// was lost.
    reclaim: Option<(String, Instant, Duration)>,
}

/// What to do about an answer to a name asked for again.
#[derive(Debug, PartialEq, Eq)]
enum Reclaim {
    /// Ask for it again after this long (told the user the first time).
    Retry(String, Duration, bool),
    GaveUp(String),
}

/// Whether `line` refuses `/nick name` for a reason that may pass: the name
/// still held, or the cluster not ready yet.
fn refused_for_now(line: &str, name: &str) -> bool {
    line == format!("*** error: the name {name} is taken")
        || line == "*** error: names cannot change while the cluster link is down"
        || (line.starts_with("*** error: ") && line.contains("try /nick again"))
}

#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Yes,
    NotConnected,
    Finished,
}

pub fn is_quit(line: &str) -> bool {
    line == "/quit" || line.starts_with("/quit ")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking thread holding the lock is already a bug report; the
        // state itself stays consistent, so carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one line. With `wait`, blocks while a reconnect is under way
    /// (scripted mode, where nothing is lost by waiting); without, reports
    /// NotConnected at once (interactive mode, where the user should know).
    pub fn send(&self, line: &str, wait: bool) -> Sent {
        let mut st = self.lock();
        if is_quit(line) {
            st.quitting = true;
            // A reader holding after a kick waits on this.
            self.changed.notify_all();
        }
        loop {
            if st.finished {
                return Sent::Finished;
            }
            if st.writer.is_some() || !wait {
                break;
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let Some(w) = st.writer.as_mut() else {
            return Sent::NotConnected;
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if w.write_all(&buf).is_ok() {
            return Sent::Yes;
        }
        // Wake the reader, which notices the dead connection and reconnects.
        let _ = w.shutdown(Shutdown::Both);
        st.writer = None;
        Sent::NotConnected
    }

    /// Says the user is done typing: a lost connection now ends the client
    /// instead of starting a reconnect.
    pub fn input_done(&self) {
        self.lock().input_done = true;
        self.changed.notify_all();
    }

    pub fn quitting(&self) -> bool {
        self.lock().quitting
    }

    /// The exit status the session's end calls for: the server's reason,
    /// else a refusal if no connection was ever welcomed, else `status`.
    pub fn exit_code(&self, status: i32) -> i32 {
        let st = self.lock();
        match &st.end {
            Some(end) => end.code(),
            None if !st.ever_welcomed => EXIT_REFUSED,
            None => status,
        }
    }

    /// The reason behind `exit_code`, when there is one, for stderr.
    pub fn end_text(&self) -> Option<String> {
        let st = self.lock();
        match &st.end {
            Some(end) => Some(end.explain()),
            None if !st.ever_welcomed => {
                Some("the server closed the connection without welcoming us".into())
            }
            None => None,
        }
    }

    /// `/reconnect` typed: true if the reader was holding after a kick or
    /// a ban and now reconnects.
    pub fn ask_reconnect(&self) -> bool {
        let mut st = self.lock();
        if !st.held {
            return false;
        }
        st.reconnect_asked = true;
        self.changed.notify_all();
        true
    }

    /// Waits until the reader has stopped or `limit` has passed; true if it
    /// stopped.
    pub fn wait_finished(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        while !st.finished {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Best effort `/quit` on the way out (signals): never blocks on the
    /// lock, which the main thread may hold while a write is stuck.
    pub fn try_quit(&self) {
        if let Ok(mut st) = self.state.try_lock()
            && let Some(w) = st.writer.as_mut()
        {
            let _ = w.write_all(b"/quit\n");
        }
    }

    /// After a reconnect's `/nick` is refused for now: ask again after a
    /// while, for at most RECLAIM_FOR, then give up (and say so).
    fn reclaim(&self, line: &str, now: Instant) -> Option<Reclaim> {
        let mut st = self.lock();
        let (name, until, wait) = st.reclaim.clone()?;
        if !refused_for_now(line, &name) {
            return None;
        }
        if now + wait > until {
            st.reclaim = None;
            return Some(Reclaim::GaveUp(name));
        }
        st.reclaim = Some((name.clone(), until, (wait * 2).min(Duration::from_secs(2))));
        Some(Reclaim::Retry(name, wait, wait == RECLAIM_FIRST))
    }

    /// The retry of a reclaim, if it is still wanted and connected.
    fn ask_again(&self, name: &str) {
        let mut st = self.lock();
        if st.reclaim.as_ref().is_some_and(|(n, ..)| n == name)
            && let Some(w) = st.writer.as_mut()
        {
            let _ = w.write_all(format!("/nick {name}\n").as_bytes());
        }
    }

    /// Remembers what the server confirmed, for re-sending after a
    /// reconnect, and what it said about ending the session.
    fn track(&self, line: &str) {
        let line = crate::resume::untag(line).1;
        if let Some(rest) = line.strip_prefix("*** welcome to chatd, ")
            && let Some((name, _)) = rest.split_once('!')
        {
            let mut st = self.lock();
            st.me = Some(name.to_string());
            st.welcomed = true;
            st.ever_welcomed = true;
            // A /pass typed (or piped) after the first refusal worked.
            if matches!(st.end, Some(End::Password(_) | End::Refused(_))) {
                st.end = None;
            }
            return;
        }
        {
            let mut st = self.lock();
            if let Some(end) = End::from_line(line, st.me.as_deref()) {
                st.end = Some(end);
                return;
            }
            // An error before any welcome, then a close: a refusal.
            if let Some(err) = line.strip_prefix("*** error: ")
                && !st.welcomed
                && st.end.is_none()
            {
                st.end = Some(End::Refused(err.to_string()));
                return;
            }
        }
        if let Some(rest) = line.strip_prefix("*** you are now ")
            && let Some(name) = rest.split_whitespace().next()
        {
            let mut st = self.lock();
            st.nick_cmd = Some(format!("/nick {name}"));
            st.me = Some(name.to_string());
            st.reclaim = None;
        }
    }

    fn finish(&self, st: &mut State) {
        st.writer = None;
        st.finished = true;
        self.changed.notify_all();
    }
}

/// Starts the reader thread on an established connection.
pub fn spawn_reader(
    shared: Arc<Shared>,
    stream: TcpStream,
    target: Target,
    out: Arc<Out>,
) -> io::Result<()> {
    let mut tracker = Tracker::default();
    // Before the main thread may write: ids are on for every line after it.
    let mut first = stream.try_clone()?;
    let pass = target.pass_line().unwrap_or_default();
    first.write_all(format!("{pass}{}\n", tracker.connected()).as_bytes())?;
    shared.lock().writer = Some(first);
    std::thread::Builder::new()
        .name("chat-reader".into())
        .spawn(move || reader(&shared, stream, &target, &out, &mut tracker))?;
    Ok(())
}

fn reader(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    target: &Target,
    out: &Out,
    tracker: &mut Tracker,
) {
    // Reset only by a welcome, not by a TCP connect: a server that accepts
    // and closes at once (a ban, a full server) must see the delays grow.
    let mut attempt = 0u32;
    loop {
        let reason = read_until_closed(shared, &stream, out, tracker);
        let mut st = shared.lock();
        st.writer = None;
        if std::mem::take(&mut st.welcomed) {
            attempt = 0;
        }
        if st.quitting || st.input_done {
            shared.finish(&mut st);
            return;
        }
        let end = st.end.clone();
        drop(st);
        match &end {
            Some(e @ (End::Kicked(_) | End::Banned { .. })) if target.interactive => {
                if !hold(shared, out, e) {
                    return;
                }
                attempt = 0;
            }
            None => {}
            // A full server may have room in a while: the backoff grows.
            Some(End::Refused(_)) if target.interactive => shared.lock().end = None,
            Some(e) => {
                let mut st = shared.lock();
                shared.finish(&mut st);
                if !st.input_done {
                    drop(st);
                    out.fatal(&e.explain(), e.code());
                }
                return;
            }
        }
        let lost = format!("connection to {} lost: {reason}", target.name());
        if !target.reconnect {
            let mut st = shared.lock();
            shared.finish(&mut st);
            // The main thread is still reading input (blocked in the editor
            // or on stdin) and cannot notice; end the process from here.
            if !st.input_done {
                drop(st);
                out.fatal(&lost, 1);
            }
            drop(st);
            out.local_error(&lost);
            return;
        }
        match reconnect(shared, target, out, lost, tracker, &mut attempt) {
            Some(s) => stream = s,
            None => return,
        }
    }
}

/// After a kick or a ban, at a terminal: says so and waits for `/reconnect`
/// (or, for a ban with an end, until it ends); false if the user left.
fn hold(shared: &Shared, out: &Out, end: &End) -> bool {
    let until = match end {
        End::Banned { left: Some(d), .. } => Some(Instant::now() + *d + Duration::from_secs(1)),
        _ => None,
    };
    let then = match until {
        Some(_) => "; chat reconnects when the ban ends, /quit leaves",
        None => "; /reconnect to come back, /quit to leave",
    };
    out.local_error(&format!("{}{then}", end.explain()));
    let mut st = shared.lock();
    st.held = true;
    st.reconnect_asked = false;
    loop {
        if st.quitting || st.input_done {
            st.held = false;
            shared.finish(&mut st);
            return false;
        }
        if st.reconnect_asked {
            break;
        }
        let wait = match until {
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(w) => w,
                None => break,
            },
            None => Duration::from_secs(3600),
        };
        st = shared
            .changed
            .wait_timeout(st, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    st.held = false;
    st.end = None;
    true
}

/// Prints server lines until the connection ends; returns why it ended.
fn read_until_closed(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    out: &Out,
    tracker: &mut Tracker,
) -> String {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let mut first = true;
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line, MAX_LINE) {
            Ok(0) => {
                if first {
                    closed_silently(shared);
                }
                return "the server closed the connection".into();
            }
            // A TLS record (an alert, a handshake) where chatd's first line
            // should be: this is a TLS port and we speak plain text.
            Ok(_) if first && matches!(line[..], [0x15 | 0x16, 0x03, ..]) => {
                shared.lock().end = Some(End::Tls(
                    "the server speaks TLS: add --tls (and --insecure or --tls-ca PEM \
                     for a self-signed certificate)"
                        .into(),
                ));
                return "TLS port".into();
            }
            Ok(_) => {
                let text = sanitize(&line);
                // chatd's TLS port tells plain text where to go (once we
                // have sent a line), then closes: not a reason to retry.
                if first && text.starts_with("*** error: this is chatd's TLS port") {
                    out.server(&text);
                    shared.lock().end = Some(End::Tls(
                        "the server speaks TLS: add --tls (and --insecure or --tls-ca PEM \
                         for a self-signed certificate)"
                            .into(),
                    ));
                    return "TLS port".into();
                }
                first = false;
                shared.track(&text);
                match shared.reclaim(&text, Instant::now()) {
                    Some(Reclaim::Retry(name, wait, first)) => {
                        if first {
                            out.local(&format!(
                                "the name {name} is still held (by the connection that was lost); asking again for a few seconds"
                            ));
                        }
                        let shared = Arc::clone(shared);
                        let _ = std::thread::Builder::new()
                            .name("chat-reclaim".into())
                            .spawn(move || {
                                std::thread::sleep(wait);
                                shared.ask_again(&name);
                            });
                    }
                    Some(Reclaim::GaveUp(name)) => out.local_error(&format!(
                        "could not get the name {name} back: still taken after {} s; try /nick {name} later",
                        RECLAIM_FOR.as_secs()
                    )),
                    None => {}
                }
                if let Some(shown) = tracker.receive(&text) {
                    out.server(&shown);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A reset (the server closed with our line unread) is the
                // same silence.
                if first {
                    closed_silently(shared);
                }
                return e.to_string();
            }
        }
    }
}

/// chatd welcomes at once: a first connection that ends without a byte is
/// most likely its TLS port (which drops a plain client without a word),
/// so say what fixes that.
fn closed_silently(shared: &Shared) {
    let mut st = shared.lock();
    if !st.ever_welcomed && st.end.is_none() {
        st.end = Some(End::Tls(
            "the server closed the connection without a word: if that is \
             chatd's TLS port (--tls-port, 3443), add --tls"
                .into(),
        ));
    }
}

/// Reads up to and including the next LF into `buf`, but never more than
/// `max` bytes: a longer line comes back in pieces. Ok(0) only at EOF.
pub fn read_line_bounded<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(total);
        }
        let room = max.saturating_sub(buf.len());
        let (n, done) = match memchr::memchr(b'\n', avail) {
            Some(i) if i < room => (i + 1, true),
            _ => (avail.len().min(room), false),
        };
        buf.extend_from_slice(&avail[..n]);
        r.consume(n);
        total += n;
        if done || buf.len() >= max {
            return Ok(total);
        }
    }
}

/// Retries with backoff until connected (Some) or the user is done (None).
/// Says one line per attempt: what went wrong and when the next try is.
fn reconnect(
    shared: &Shared,
    target: &Target,
    out: &Out,
    lost: String,
    tracker: &mut Tracker,
    attempt: &mut u32,
) -> Option<TcpStream> {
    let mut why = lost;
    loop {
        let delay = backoff(*attempt, target.base_delay, target.max_delay);
        *attempt = attempt.saturating_add(1);
        out.local_error(&format!(
            "{why}; reconnecting in {:.1} s",
            delay.as_secs_f64()
        ));
        // Sleep on the condvar so a /quit or Ctrl-D during a long delay ends
        // the client at once instead of after the delay.
        let deadline = Instant::now() + delay;
        let mut st = shared.lock();
        loop {
            if st.quitting || st.input_done {
                shared.finish(&mut st);
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        let stream = match connect(&target.host, target.port) {
            Ok(s) => s,
            Err(e) => {
                why = format!("reconnect failed: {e}");
                continue;
            }
        };
        let mut writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                why = format!("reconnect failed: {e}");
                continue;
            }
        };
        let mut st = shared.lock();
        if st.quitting || st.input_done {
            shared.finish(&mut st);
            return None;
        }
        let mut resend = target.pass_line().unwrap_or_default().into_bytes();
        let ids = tracker.connected().to_string();
        let rooms = tracker.resume();
        let nick = st.nick_cmd.iter().cloned();
        for cmd in std::iter::once(ids).chain(nick).chain(rooms) {
            resend.extend_from_slice(cmd.as_bytes());
            resend.push(b'\n');
        }
        st.reclaim = st.nick_cmd.as_ref().and_then(|c| {
            let name = c.strip_prefix("/nick ")?.to_string();
            Some((name, Instant::now() + RECLAIM_FOR, RECLAIM_FIRST))
        });
        if let Err(e) = writer.write_all(&resend) {
            why = format!("connection lost again at once: {e}");
            continue;
        }
        st.writer = Some(writer);
        shared.changed.notify_all();
        drop(st);
        out.local(&format!("reconnected to {}", target.name()));
        return Some(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let s = Duration::from_secs;
        let got: Vec<_> = (0..8).map(|a| nominal_delay(a, s(1), s(30))).collect();
        assert_eq!(got, [s(1), s(2), s(4), s(8), s(16), s(30), s(30), s(30)]);
        assert_eq!(nominal_delay(u32::MAX, s(1), s(30)), s(30));
    }

    #[test]
    fn jitter_stays_within_a_quarter_and_under_the_cap() {
        let s = Duration::from_secs;
        for attempt in 0..10 {
            let n = nominal_delay(attempt, s(1), s(30));
            for _ in 0..100 {
                let d = backoff(attempt, s(1), s(30));
                assert!(
                    d >= n.mul_f64(0.75) && d <= n.mul_f64(1.25).min(s(30)),
                    "{d:?}"
                );
            }
        }
    }

    #[test]
    fn bounded_lines_split_and_keep_everything() {
        let mut r = io::Cursor::new(b"ab\nabcdefg\nx".to_vec());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            buf.clear();
            if read_line_bounded(&mut r, &mut buf, 4).unwrap() == 0 {
                break;
            }
            got.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(got, ["ab\n", "abcd", "efg\n", "x"]);
    }

    #[test]
    fn a_name_refused_after_a_reconnect_is_asked_again_then_given_up() {
        let shared = Shared::default();
        let t0 = Instant::now();
        let taken = "*** error: the name zed is taken";
        assert_eq!(shared.reclaim(taken, t0), None, "not reclaiming");
        shared.lock().reclaim = Some(("zed".into(), t0 + RECLAIM_FOR, RECLAIM_FIRST));
        assert_eq!(
            shared.reclaim("*** error: the name other is taken", t0),
            None
        );
        let ms = Duration::from_millis;
        assert_eq!(
            shared.reclaim(taken, t0),
            Some(Reclaim::Retry("zed".into(), ms(500), true))
        );
        let down = "*** error: names cannot change while the cluster link is down";
        assert_eq!(
            shared.reclaim(down, t0),
            Some(Reclaim::Retry("zed".into(), ms(1000), false))
        );
        assert_eq!(
            shared.reclaim(taken, t0 + ms(1500)),
            Some(Reclaim::Retry("zed".into(), ms(2000), false))
        );
        assert_eq!(
            shared.reclaim(taken, t0 + RECLAIM_FOR),
            Some(Reclaim::GaveUp("zed".into()))
        );
        assert_eq!(shared.reclaim(taken, t0 + RECLAIM_FOR), None, "once");
        // Granted: no more retries.
        shared.lock().reclaim = Some(("zed".into(), t0 + RECLAIM_FOR, RECLAIM_FIRST));
        shared.track("*** you are now zed");
        assert_eq!(shared.reclaim(taken, t0), None);
    }

    #[test]
    fn kicks_bans_and_passwords_are_read_from_the_servers_words() {
        let me = Some("mallory");
        let kick = End::from_line("*** mallory was kicked by op (spam)", me);
        assert_eq!(
            kick,
            Some(End::Kicked("you were kicked by op (spam)".into()))
        );
        assert_eq!(End::from_line("*** bob was kicked by op", me), None);
        let ban = End::from_line("*** mallory was banned by op for 1h 30m (spam)", me);
        assert!(
            matches!(ban, Some(End::Banned { left: Some(d), .. }) if d.as_secs() == 5400),
            "{ban:?}"
        );
        let perm = End::from_line("*** mallory was banned by op permanently", me);
        assert!(matches!(perm, Some(End::Banned { left: None, .. })));
        let refused = End::from_line(
            "*** error: your address is banned from this server (9m 59s more, by op: spam)",
            None,
        );
        assert!(
            matches!(refused, Some(End::Banned { left: Some(d), .. }) if d.as_secs() == 599),
            "{refused:?}"
        );
        let never = End::from_line(
            "*** error: your address is banned from this server (permanent, by op)",
            None,
        );
        assert!(matches!(never, Some(End::Banned { left: None, .. })));
        assert!(matches!(
            End::from_line("*** error: wrong password", None),
            Some(End::Password(_))
        ));
        assert_eq!(
            parse_span("2d 3h"),
            Some(Duration::from_secs(2 * 86_400 + 3 * 3600))
        );
        assert_eq!(parse_span("soon"), None);
        assert_eq!(words(Duration::from_secs(3725)), "1h 2m 5s");
    }

    #[test]
    fn quit_is_recognised_with_and_without_reason() {
        assert!(is_quit("/quit"));
        assert!(is_quit("/quit gone fishing"));
        assert!(!is_quit("/quitter"));
        assert!(!is_quit("quit"));
    }
}
