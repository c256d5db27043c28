//! The link's timed work, run from `Link::tick`: reconnect when due, drop
//! a link whose oldest command waited too long, heal (re-assert our names)
//! and, once up, every tick: heartbeat, renew names, check the instances
//! we mirror and the ones we lost, top up guest numbers. What the hub must
//! tell for it is asked as data (`Inbound::Due`) and done when the roster
//! comes (`on_roster`).

use super::*;

impl Link {
    /// Reconnects when due; drops a link whose oldest command has waited
    /// too long for its reply; heals; when up, every tick: heartbeat, renew
    /// names, check the instances we mirror and the ones we lost, top up
    /// guest numbers. What the hub must tell for that is asked as data
    /// (`Inbound::Due`), and the work done when it comes (`on_roster`).
    pub fn tick(&mut self, now: Instant, registry: &Registry, inbound: &mut Vec<Inbound>) {
        // The turn's lines before the link's own work, in the turn's order.
        self.send_batches(inbound);
        if let Some(why) = self.why_drop(now) {
            return self.fail(&why, registry, inbound);
        }
        match self.state {
            State::Down { retry_at } if retry_at <= now => self.connect(registry, inbound),
            State::Connecting { by, .. } if by <= now => {
                let why = format!("no answer from Redis within {:?}", self.timing.reply);
                self.fail(&why, registry, inbound)
            }
            State::Healing { sent: false, .. } => self.ask(
                Due {
                    names: true,
                    nodes: false,
                    bans: true,
                },
                inbound,
            ),
            State::Up {
                round_left,
                guests_asked,
            } => {
                self.top_up_guests(now, guests_asked);
                if self.next_tick <= now && self.asked.is_none() {
                    self.next_tick = now + self.timing.tick;
                    let round = round_left == 0;
                    if round || self.carry {
                        let due = Due {
                            names: round,
                            nodes: true,
                            bans: false,
                        };
                        self.ask(due, inbound);
                    } else {
                        self.heartbeat(now, &[]);
                    }
                }
            }
            _ => {}
        }
    }

    /// Asks the hub for what the bookkeeping needs, once until answered.
    fn ask(&mut self, due: Due, inbound: &mut Vec<Inbound>) {
        if self.asked.is_none() {
            self.asked = Some(due);
            inbound.push(Inbound::Due(due));
        }
    }

    /// The hub's answer to `Inbound::Due`: re-assert our names (healing),
    /// or beat and run a round (up). Dropped if the link moved on since.
    pub(super) fn on_roster(&mut self, roster: Roster, inbound: &mut Vec<Inbound>) {
        let Some(due) = self.asked.take() else {
            return;
        };
        match self.state {
            State::Healing { sent: false, .. } => {
                // Bans first: Redis runs them before anyone hears the link
                // is up, and before the bans are read back.
                let now = now_ms();
                for ban in &roster.bans {
                    self.reassert(ban, now);
                }
                let mut left = 0;
                for (id, name, since) in &roster.names {
                    let mine = claim_value(*since, &self.wire.node, *id);
                    if self.renew(*id, name, mine, "", true) {
                        left += 1;
                    }
                }
                self.state = State::Healing { sent: true, left };
                if left == 0 {
                    self.go_up(inbound);
                }
            }
            State::Up { .. } => {
                self.heartbeat(Instant::now(), &roster.remote);
                if due.names {
                    self.round(&roster);
                }
            }
            _ => {}
        }
    }

    /// Why a link that is not down must be dropped now, if it must: the
    /// subscriber's queue overflowed, or Redis is too slow to answer.
    fn why_drop(&mut self, now: Instant) -> Option<String> {
        if self.state.is_down() {
            return None;
        }
        if let Some(why) = self.stuck.take() {
            return Some(why);
        }
        let (at, _) = self.pending.front()?;
        if now < *at + self.timing.reply {
            return None;
        }
        self.stats.timeouts += 1;
        Some(format!(
            "Redis did not answer within {:?} (--cluster-timeout)",
            self.timing.reply
        ))
    }

    /// Reserves a block of guest numbers when the hub runs low, one
    /// request at a time, not again before `guests_retry` after a refusal.
    fn top_up_guests(&mut self, now: Instant, asked: bool) {
        if self.guests_retry.is_some_and(|t| t <= now) {
            self.guests_retry = None;
        }
        let Some(used) = self
            .guests_wanted
            .filter(|_| !asked && self.guests_retry.is_none())
        else {
            return;
        };
        let used = used.to_string();
        let block = GUEST_BLOCK.to_string();
        let asked = self.fcall(
            Func::Guests,
            &[Keys::GUESTS.as_bytes()],
            &[used.as_bytes(), block.as_bytes()],
            Expect::Guests,
            Kind::Book,
        );
        if let State::Up { guests_asked, .. } = &mut self.state {
            *guests_asked = asked;
        }
    }

    /// Our heartbeat, every tick; after a reconnect, the nodes we knew get
    /// their grace first.
    fn heartbeat(&mut self, now: Instant, remote: &[Rc<str>]) {
        if std::mem::take(&mut self.carry) {
            let until = now + self.timing.grace();
            self.grace = remote
                .iter()
                .take(MAX_NODES)
                .map(|n| (n.clone(), until))
                .collect();
        }
        let alive = Keys::alive(&self.wire.node);
        let ms = self.timing.alive_ms();
        self.send_cmd(
            &[b"SET", alive.as_bytes(), b"1", b"PX", ms.as_bytes()],
            Expect::Ignore("SET (our heartbeat)"),
            Kind::Book,
        );
    }

    /// One round of bookkeeping: renew every local name, check every node
    /// we mirror and every one we lost (at most MAX_NODES).
    fn round(&mut self, roster: &Roster) {
        let mut started = 0;
        for (id, name, since) in &roster.names {
            let mine = claim_value(*since, &self.wire.node, *id);
            if self.renew(*id, name, mine, "", false) {
                started += 1;
            }
        }
        let checks = roster
            .remote
            .iter()
            .map(|n| (n.clone(), true))
            .chain(roster.lost.iter().map(|n| (n.clone(), false)))
            .take(MAX_NODES);
        for (node, mirrored) in checks {
            let key = Keys::alive(&node);
            let expect = if mirrored {
                Expect::Alive(node)
            } else {
                Expect::Back(node)
            };
            if self.send_cmd(&[b"EXISTS", key.as_bytes()], expect, Kind::Book) {
                started += 1;
            }
        }
        if let State::Up { round_left, .. } = &mut self.state {
            *round_left = started;
        }
    }
}
