//! `--idle-timeout`: when to ping a quiet WebSocket client and when to close
//! a client that has sent nothing for too long, without looking at every
//! connection every turn.
//!
//! Each connection in the chat has one entry in a min-heap, keyed by the
//! earliest moment something could be due for it. Activity never touches
//! the heap (it only moves `last_active` forward); when an entry comes up,
//! [`decide`] looks at the connection's real state and either acts or puts
//! the entry back at the new earliest moment. So a turn costs O(1) to find
//! the next deadline, plus O(log n) per entry that comes up, and each
//! connection comes up about once per half-timeout, busy or not.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What is due for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet; look again then.
    Wait(Instant),
    /// Ping it (WebSocket, quiet for half the timeout); look again then.
    Ping(Instant),
    /// It has been quiet for the whole timeout: close it.
    Close,
}

/// The rule, apart from any bookkeeping: quiet for `limit` is too long; a
/// WebSocket client is pinged once after `limit / 2`, and its pong, being
/// something it sent, makes it active again.
pub fn decide(
    last_active: Instant,
    pinged: bool,
    is_ws: bool,
    limit: Duration,
    now: Instant,
) -> Action {
    let close_at = last_active + limit;
    if close_at <= now {
        return Action::Close;
    }
    if is_ws && !pinged {
        let ping_at = last_active + limit / 2;
        if ping_at <= now {
            return Action::Ping(close_at);
        }
        return Action::Wait(ping_at);
    }
    Action::Wait(close_at)
}

/// Deadlines by connection; an entry names a connection by slab key and
/// serial, so one left behind by a closed connection is recognised (the
/// caller's `live` check fails) and dropped.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Queue {
    pub fn push(&mut self, at: Instant, key: usize, serial: u64) {
        self.heap.push(Reverse((at, key, serial)));
    }

    /// The earliest deadline, for the poll timeout.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Takes the next entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => {
                self.heap.pop().map(|Reverse((_, k, serial))| (k, serial))
            }
            _ => None,
        }
    }

    /// Keeps the heap within twice the live connections: entries of closed
    /// connections otherwise wait up to a timeout to come up, and a burst
    /// of short connections could pile them up. `live(key, serial)` says
    /// whether an entry still names a connection. Amortised O(1) per close.
    pub fn compact(&mut self, live_count: usize, live: impl Fn(usize, u64) -> bool) {
        if self.heap.len() > 2 * live_count + 64 {
            self.heap
                .retain(|Reverse((_, k, serial))| live(*k, *serial));
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_line_client_is_closed_after_the_whole_timeout_and_never_pinged() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(decide(t0, false, false, LIMIT, s(5)), Action::Wait(s(10)));
        assert_eq!(decide(t0, false, false, LIMIT, s(9)), Action::Wait(s(10)));
        assert_eq!(decide(t0, false, false, LIMIT, s(10)), Action::Close);
        // Activity moves the deadline.
        assert_eq!(
            decide(s(8), false, false, LIMIT, s(10)),
            Action::Wait(s(18))
        );
    }

    #[test]
    fn a_websocket_client_is_pinged_at_half_time_then_closed_if_silent() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(decide(t0, false, true, LIMIT, s(1)), Action::Wait(s(5)));
        assert_eq!(decide(t0, false, true, LIMIT, s(5)), Action::Ping(s(10)));
        assert_eq!(decide(t0, true, true, LIMIT, s(6)), Action::Wait(s(10)));
        assert_eq!(decide(t0, true, true, LIMIT, s(10)), Action::Close);
        // Its pong at 7 s made it active: pinged again at 12 s.
        assert_eq!(decide(s(7), false, true, LIMIT, s(10)), Action::Wait(s(12)));
        // Looked at late (a long turn), it is closed rather than pinged.
        assert_eq!(decide(t0, false, true, LIMIT, s(11)), Action::Close);
    }

    #[test]
    fn queue_hands_out_due_entries_in_order() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut q = Queue::default();
        q.push(s(3), 1, 10);
        q.push(s(1), 2, 20);
        q.push(s(2), 3, 30);
        assert_eq!(q.next(), Some(s(1)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(s(2)), Some((2, 20)));
        assert_eq!(q.pop_due(s(2)), Some((3, 30)));
        assert_eq!(q.pop_due(s(2)), None);
        assert_eq!(q.next(), Some(s(3)));
    }

    #[test]
    fn compact_drops_entries_of_closed_connections_once_they_pile_up() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        for serial in 0..100 {
            q.push(t0, 0, serial);
        }
        // Only serial 99 is still connected: 100 > 2 * 1 + 64, so compact.
        q.compact(1, |k, serial| k == 0 && serial == 99);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(t0), Some((0, 99)));
        // Below the threshold nothing is scanned.
        for serial in 0..10 {
            q.push(t0, 0, serial);
        }
        q.compact(1, |_, _| false);
        assert_eq!(q.len(), 10);
    }
}
