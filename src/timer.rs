//! Every per-connection deadline in one min-heap: rate-limit wake-ups,
//! drain deadlines, a protocol's own deadline (the HTTP head's
//! --http-timeout), --idle-timeout checks and WebSocket pings, and the
//! accept retry after running out of descriptors.
//!
//! An entry is only a reminder to look: when it comes up, the reactor looks
//! at the connection's real state and acts, re-arms, or drops it. So
//! nothing ever has to be taken out of the heap early: activity only moves
//! `last_active` forward, a connection that leaves leaves its entries
//! behind, and an entry names its connection by slab key *and* serial, so
//! one left behind is never taken for a later connection under the same
//! key. A turn costs O(1) to find the next deadline plus O(log n) per entry
//! that comes up; [`Timers::compact`] keeps entries of departed connections
//! from piling up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A connection as timers name it: its slab key and the serial that tells
/// it from earlier connections under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnRef {
    pub key: usize,
    pub serial: u64,
}

/// What to look at when an entry comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Accepting stalled (out of descriptors): try again.
    Accept,
    /// A rate-limited connection may be read again.
    Wake(ConnRef),
    /// A connection flushing its last output must be gone by now.
    Drain(ConnRef),
    /// The connection's protocol has a deadline of its own (an HTTP head
    /// within --http-timeout).
    Deadline(ConnRef),
    /// --idle-timeout: ping or close a quiet connection, or look again later.
    Idle(ConnRef),
    /// A line client that has not spoken joins now (see QUIET_WAIT).
    Quiet(ConnRef),
}

impl Timer {
    /// The connection this entry is about, if any.
    pub fn conn(self) -> Option<ConnRef> {
        match self {
            Timer::Accept => None,
            Timer::Wake(c)
            | Timer::Drain(c)
            | Timer::Deadline(c)
            | Timer::Idle(c)
            | Timer::Quiet(c) => Some(c),
        }
    }
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest deadline, for the poll timeout. May be an entry left
    /// behind by a departed connection: waking for it costs one look.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the next entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse((_, timer))| timer),
            _ => None,
        }
    }

    /// Keeps the heap within a few entries per live connection (a
    /// connection holds at most one of each kind that is still wanted):
    /// entries of departed connections otherwise wait up to a timeout to
    /// come up, and a burst of short connections could pile them up.
    /// `live` says whether a connection is still there. Amortised O(1) per
    /// departure, since it only scans once the heap has doubled.
    pub fn compact(&mut self, live_count: usize, live: impl Fn(ConnRef) -> bool) {
        if self.heap.len() > 4 * live_count + 64 {
            self.heap
                .retain(|Reverse((_, timer))| timer.conn().is_none_or(&live));
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
    use std::time::Duration;

    fn conn(key: usize, serial: u64) -> ConnRef {
        ConnRef { key, serial }
    }

    #[test]
    fn entries_come_up_in_deadline_order_whatever_their_kind() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut q = Timers::default();
        q.push(s(3), Timer::Idle(conn(1, 10)));
        q.push(s(1), Timer::Wake(conn(2, 20)));
        q.push(s(2), Timer::Drain(conn(3, 30)));
        q.push(s(4), Timer::Accept);
        q.push(s(2), Timer::Deadline(conn(4, 40)));
        assert_eq!(q.next(), Some(s(1)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(s(2)), Some(Timer::Wake(conn(2, 20))));
        let mut two = [q.pop_due(s(2)), q.pop_due(s(2))];
        two.sort();
        assert_eq!(
            two,
            [
                Some(Timer::Drain(conn(3, 30))),
                Some(Timer::Deadline(conn(4, 40)))
            ]
        );
        assert_eq!(q.pop_due(s(2)), None);
        assert_eq!(q.next(), Some(s(3)));
        assert_eq!(q.pop_due(s(9)), Some(Timer::Idle(conn(1, 10))));
        assert_eq!(q.pop_due(s(9)), Some(Timer::Accept));
        assert!(q.is_empty());
    }

    #[test]
    fn compact_drops_entries_of_departed_connections_once_they_pile_up() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        for serial in 0..100 {
            q.push(t0, Timer::Idle(conn(0, serial)));
        }
        q.push(t0, Timer::Accept);
        // Only serial 99 is still connected: 101 > 4 * 1 + 64, so compact;
        // the accept retry names no connection and stays.
        q.compact(1, |c| c == conn(0, 99));
        assert_eq!(q.len(), 2);
        let mut left = [q.pop_due(t0), q.pop_due(t0)];
        left.sort();
        assert_eq!(left, [Some(Timer::Accept), Some(Timer::Idle(conn(0, 99)))]);
        // Below the threshold nothing is scanned.
        for serial in 0..10 {
            q.push(t0, Timer::Wake(conn(0, serial)));
        }
        q.compact(1, |_| false);
        assert_eq!(q.len(), 10);
    }
}
