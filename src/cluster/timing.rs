//! The cluster's timers, all derived from two settings.

use std::time::Duration;

/// The cluster's timers. Everything but the reply deadline is a multiple of
/// the heartbeat interval, `tick` (3 s; `--cluster-tick-ms` lets tests run
/// the same story in a fraction of the time).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeats, name renewals and liveness checks run this often.
    pub tick: Duration,
    /// The most Redis may take to answer (`--cluster-timeout`).
    pub reply: Duration,
}

impl Timing {
    pub fn new(tick: Duration, reply: Duration) -> Timing {
        Timing { tick, reply }
    }

    /// A heartbeat lives 2 ticks unless refreshed (every tick).
    pub fn alive_ms(&self) -> String {
        (self.tick.as_millis() * 2).to_string()
    }

    /// A reserved name lives 5 ticks unless renewed (every tick).
    pub fn name_ms(&self) -> String {
        (self.tick.as_millis() * 5).to_string()
    }

    /// A node whose heartbeat has been missing this long (2 ticks, our own
    /// link up throughout) is declared lost.
    pub fn lost_after(&self) -> Duration {
        self.tick * 2
    }

    /// After our own link comes back, the nodes we knew before are not
    /// declared lost for 8 ticks: they may still be reconnecting (backoff).
    pub fn grace(&self) -> Duration {
        self.tick * 8
    }

    /// The longest wait between two attempts to connect: 10 s, or less
    /// with a shorter tick (so the grace above always covers it).
    pub fn backoff_max(&self) -> Duration {
        BACKOFF_MAX.min(self.tick * 10 / 3).max(BACKOFF_MIN)
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::new(Duration::from_secs(3), Duration::from_secs(5))
    }
}
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
