//! `--idle-timeout`: when to ping a quiet WebSocket client and when to close
//! a client that has sent nothing for too long, without looking at every
//! connection every turn.
//!
//! Each connection in the chat has one `Timer::Idle` entry in the reactor's
//! timer heap (timer.rs), keyed by the earliest moment something could be
//! due for it. Activity never touches the heap (it only moves
//! `last_active` forward); when the entry comes up, [`decide`] looks at the
//! connection's real state and either acts or puts the entry back at the
//! new earliest moment, so each connection comes up about once per
//! half-timeout, busy or not.

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
/// client whose protocol `pings` (WebSocket) is pinged once after `limit / 2`, and its pong, being
/// something it sent, makes it active again.
pub fn decide(
    last_active: Instant,
    pinged: bool,
    pings: bool,
    limit: Duration,
    now: Instant,
) -> Action {
    let close_at = last_active + limit;
    if close_at <= now {
        return Action::Close;
    }
    if pings && !pinged {
        let ping_at = last_active + limit / 2;
        if ping_at <= now {
            return Action::Ping(close_at);
        }
        return Action::Wait(ping_at);
    }
    Action::Wait(close_at)
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
}
