//! The server's logger: `log` records -> one line each on stderr, in
//! simple_logger's format (`2026-12-07T22:41:06.123Z INFO  [chatd::x] msg`),
//! without ever taking the server down or holding up its loop.
//!
//! Why not `eprintln!` (simple_logger's way): it panics when stderr is a
//! closed pipe (EPIPE: `chatd 2>&1 | head`, or `| tee` killed first by a
//! Ctrl-C), and a write to a full pipe blocks the reactor, so a stalled log
//! reader would stall every client.
//!
//! Why a writer thread and not O_NONBLOCK on fd 2: the flag belongs to the
//! open file description, which chatd shares with whoever else holds it (the
//! shell's terminal, the `tee` of a pipeline, a supervisor) and which
//! would then see EAGAIN on its own writes. So the loop only formats a line
//! and offers it to a bounded queue (`--log-queue`, [`QUEUE_LINES`] by
//! default); one thread does the
//! blocking writes. When the queue is full the line is dropped and counted,
//! and the writer says how many it lost once it catches up. Write errors
//! (EPIPE, EIO) are ignored: a log that cannot be written is not a reason to
//! drop a chat. SIGPIPE stays ignored (Rust's runtime ignores it at start).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The default of --log-queue: lines waiting for the writer thread before
/// new ones are dropped; enough for a burst of connects and leaves while
/// the reader is slow, small enough (a few hundred KiB at most) to bound
/// what a stuck log holds.
pub const QUEUE_LINES: usize = 4096;

enum Item {
    Line(String),
    /// Answered once every line queued before it has been written.
    Flush(SyncSender<()>),
}

struct Logger {
    level: log::LevelFilter,
    queue: Mutex<SyncSender<Item>>,
    dropped: &'static AtomicU64,
}

static DROPPED: AtomicU64 = AtomicU64::new(0);
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger at `level`, with at most `queue` lines waiting
/// (once; later calls change nothing).
pub fn init(level: log::LevelFilter, queue: usize) {
    let (tx, rx) = sync_channel(queue);
    let logger = Logger {
        level,
        queue: Mutex::new(tx),
        dropped: &DROPPED,
    };
    if LOGGER.set(logger).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || writer(rx, std::io::stderr(), &DROPPED));
    if spawned.is_err() {
        return; // no thread, no log: the server still runs
    }
    if let Some(l) = LOGGER.get()
        && log::set_logger(l).is_ok()
    {
        log::set_max_level(level);
    }
}

/// Waits up to `limit` for the queued lines to be written (at exit, so the
/// last lines are not lost with the process); never longer, since the
/// reader may be gone or stuck.
pub fn flush(limit: Duration) {
    let Some(l) = LOGGER.get() else { return };
    let (tx, rx) = sync_channel(1);
    let sent = match l.queue.lock() {
        Ok(q) => q.try_send(Item::Flush(tx)).is_ok(),
        Err(_) => false,
    };
    if sent {
        let _ = rx.recv_timeout(limit);
    }
}

/// Lines dropped because the queue was full, since start.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format_line(SystemTime::now(), r.level(), r.target(), r.args());
        let full = match self.queue.lock() {
            Ok(q) => matches!(q.try_send(Item::Line(line)), Err(TrySendError::Full(_))),
            Err(_) => true,
        };
        if full {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// The writer thread: blocking writes, errors ignored, and a note of the
/// lines lost while it could not keep up.
fn writer(rx: Receiver<Item>, out: impl Write, dropped: &AtomicU64) {
    let mut out = out;
    let mut reported = 0;
    for item in rx {
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            let note = format_line(
                SystemTime::now(),
                log::Level::Warn,
                module_path!(),
                &format_args!("{} log lines dropped (stderr too slow)", now - reported),
            );
            let _ = out.write_all(note.as_bytes());
            reported = now;
        }
        match item {
            Item::Line(line) => {
                let _ = out.write_all(line.as_bytes());
            }
            Item::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
}

/// `2026-12-07T22:41:06.123Z INFO  [target] message\n` (UTC, milliseconds).
pub fn format_line(
    at: SystemTime,
    level: log::Level,
    target: &str,
    args: &std::fmt::Arguments,
) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {level:<5} [{target}] {args}\n",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_simple_logger() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_683_266_123);
        let line = format_line(at, log::Level::Info, "chatd::reactor", &format_args!("hi"));
        assert_eq!(line, "2026-12-07T22:41:06.123Z INFO  [chatd::reactor] hi\n");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// A writer whose every write fails, as stderr on a closed pipe does.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn write_errors_are_dropped_and_flush_still_answers() {
        let (tx, rx) = sync_channel(4);
        let dropped = Box::leak(Box::new(AtomicU64::new(3)));
        let t = std::thread::spawn(move || writer(rx, Broken, dropped));
        tx.send(Item::Line("a\n".into())).unwrap();
        let (done, wait) = sync_channel(1);
        tx.send(Item::Flush(done)).unwrap();
        wait.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(tx);
        t.join().unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = sync_channel(1);
        let logger = Logger {
            level: log::LevelFilter::Info,
            queue: Mutex::new(tx),
            dropped: Box::leak(Box::new(AtomicU64::new(0))),
        };
        use log::Log;
        for _ in 0..3 {
            logger.log(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("x"))
                    .build(),
            );
        }
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 2);
    }
}
