//! The connection to chatd: connecting, the reader thread that prints what
//! the server sends, and reconnecting with backoff when the server goes away.
//!
//! The main thread writes what the user types; the reader thread owns the
//! reading half and, on reconnect, swaps in a new writing half under the
//! same lock the main thread writes under, after re-sending the remembered
//! `/nick` and `/join` and asking for what was said meanwhile (see
//! resume.rs), so no typed line can overtake them.

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
    /// The `/nick` and `/join` to re-send after a reconnect: only ones the
    /// server confirmed, so a refused name is not asked for again.
    nick_cmd: Option<String>,
    join_cmd: Option<String>,
    /// The last `/join` typed, kept as typed (the room may be given with or
    /// without `#`) until the server confirms it.
    pending_join: Option<String>,
    /// A `/quit` was sent: the server closing is the expected end.
    quitting: bool,
    /// The user (or stdin) has nothing more to send; the main thread is only
    /// waiting for the end, so a lost connection is not worth reconnecting.
    input_done: bool,
    /// The reader thread has stopped for good.
    finished: bool,
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
        }
        if line.starts_with("/join ") {
            st.pending_join = Some(line.to_string());
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
    }

    pub fn quitting(&self) -> bool {
        self.lock().quitting
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

    /// Remembers what the server confirmed, for re-sending after a reconnect.
    fn track(&self, line: &str) {
        if let Some(rest) = line.strip_prefix("*** you are now ")
            && let Some(name) = rest.split_whitespace().next()
        {
            let mut st = self.lock();
            st.nick_cmd = Some(format!("/nick {name}"));
            st.reclaim = None;
        } else if let Some(rest) = line.strip_prefix("*** you joined ")
            && let Some(room) = rest.split_whitespace().next()
        {
            let mut st = self.lock();
            let typed = st.pending_join.take();
            st.join_cmd = Some(typed.unwrap_or_else(|| format!("/join {room}")));
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
    loop {
        let reason = read_until_closed(shared, &stream, out, tracker);
        let mut st = shared.lock();
        st.writer = None;
        if st.quitting || st.input_done {
            shared.finish(&mut st);
            return;
        }
        drop(st);
        let lost = format!("connection to {} lost: {reason}", target.name());
        if !target.reconnect {
            let mut st = shared.lock();
            shared.finish(&mut st);
            // The main thread is still reading input (blocked in the editor
            // or on stdin) and cannot notice; end the process from here.
            if !st.input_done {
                drop(st);
                out.fatal(&lost);
            }
            drop(st);
            out.local_error(&lost);
            return;
        }
        match reconnect(shared, target, out, lost, tracker) {
            Some(s) => stream = s,
            None => return,
        }
    }
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
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line, MAX_LINE) {
            Ok(0) => return "the server closed the connection".into(),
            Ok(_) => {
                let text = sanitize(&line);
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
            Err(e) => return e.to_string(),
        }
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
) -> Option<TcpStream> {
    let mut why = lost;
    for attempt in 0u32.. {
        let delay = backoff(attempt, target.base_delay, target.max_delay);
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
        let ids = Some(tracker.connected().to_string());
        let resume = tracker.resume();
        for cmd in [&ids, &st.nick_cmd, &st.join_cmd, &resume]
            .into_iter()
            .flatten()
        {
            resend.extend_from_slice(cmd.as_bytes());
            resend.push(b'\n');
        }
        st.pending_join = st.join_cmd.clone();
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
    None
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
    fn quit_is_recognised_with_and_without_reason() {
        assert!(is_quit("/quit"));
        assert!(is_quit("/quit gone fishing"));
        assert!(!is_quit("/quitter"));
        assert!(!is_quit("quit"));
    }
}
