//! What goes wrong with Redis, logged without flooding the log: a new
//! reason at once (a wrong password must not wait), the same one again
//! only now and then. The counters are the link's; this only logs.

use super::LOG;
use log::{debug, warn};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WARN_EVERY: Duration = Duration::from_secs(5);

/// When each kind of trouble was last logged (and with what reason).
#[derive(Debug, Default)]
pub struct Warnings {
    dropped: Option<Instant>,
    refused: Option<(Instant, String)>,
    malformed: Option<Instant>,
    failed: Option<(Instant, String)>,
}

impl Warnings {
    /// A line not published: the queue toward Redis is full.
    pub fn dropped(&mut self, bytes: usize, replies: usize, so_far: u64) {
        let now = Instant::now();
        if self.dropped.is_none_or(|t| now >= t + WARN_EVERY) {
            warn!(
                target: LOG,
                "cluster: queue to Redis is full ({bytes} bytes, {replies} replies awaited); dropped {so_far} message(s) so far"
            );
            self.dropped = Some(now);
        }
    }

    /// What Redis refused, with its text: at once when the text is new (a
    /// missing ACL right), then at most every WARN_EVERY.
    pub fn refused(&mut self, what: &str, err: &str, so_far: u64) {
        let now = Instant::now();
        let again = self
            .refused
            .as_ref()
            .is_some_and(|(t, e)| e == err && now < *t + WARN_EVERY);
        if !again {
            warn!(
                target: LOG,
                "cluster: Redis refused {what}: {} ({so_far} refusal(s) so far)",
                err.escape_debug(),
            );
            self.refused = Some((now, err.to_string()));
        }
    }

    pub fn malformed(&mut self, channel: &[u8], why: &str, so_far: u64) {
        let now = Instant::now();
        if self.malformed.is_none_or(|t| now >= t + WARN_EVERY) {
            warn!(
                target: LOG,
                "cluster: dropped a malformed message on {:?}: {why} ({so_far} so far; Redis is open to someone it should not be?)",
                String::from_utf8_lossy(&channel[..channel.len().min(64)]),
            );
            self.malformed = Some(now);
        }
    }

    /// A link that was up went down.
    pub fn down(&mut self, why: &str) {
        warn!(target: LOG, "cluster link down: {why}; reconnecting");
        self.failed = None;
    }

    /// The link is up: the next failure to connect is news again.
    pub fn up(&mut self) {
        self.failed = None;
    }

    /// An attempt to connect failed; the next one in `wait`.
    pub fn cannot_connect(&mut self, addr: SocketAddr, why: &str, wait: Duration) {
        let now = Instant::now();
        let again = self
            .failed
            .as_ref()
            .is_some_and(|(t, w)| w == why && now < *t + WARN_EVERY * 6);
        if again {
            debug!(target: LOG, "cluster: cannot use Redis at {addr}: {why}");
        } else {
            warn!(target: LOG, "cluster: cannot use Redis at {addr}: {why}; retrying in {wait:?}");
            self.failed = Some((now, why.to_string()));
        }
    }
}
