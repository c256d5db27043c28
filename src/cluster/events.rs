//! What arrives from the cluster, as data: the link turns replies and
//! publications into [`Inbound`] events, and [`Inbound::apply`] is the one
//! place that maps them onto the hub.

use super::LOG;
use crate::access::Ban;
use crate::history::{Id, Line};
use crate::hub::{Asked, Claim, ClientId, Due, GUEST_BLOCK, Hub, Outbox, Presence, Refusal, Topic};
use ipnet::IpNet;
use log::info;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// What the link heard, for the reactor to hand to the hub. Every text in
/// here has been cleaned and every name checked (see [`super::wire::Wire::decode`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Up,
    Down(String),
    Room(String, String),
    /// Room lines numbered by Redis, the first with `first`; `from`: our
    /// local client who said them (None: another instance's).
    Said {
        room: String,
        first: Id,
        from: Option<ClientId>,
        text: String,
    },
    /// Our own room lines numbered by Redis in one batch, said by several
    /// local clients: `runs` says who said how many, in order (see
    /// [`super::wire::senders`]); to the hub as one `Said` per run.
    Numbered {
        room: String,
        first: Id,
        runs: Box<[(ClientId, u64)]>,
        text: String,
    },
    /// A notice about a member of `room`, in the room's order with its
    /// lines (see [`super::wire::notice_payload`]). `seq`: ours, the
    /// `seq`-th we sent (None: another instance's); `about`: our local
    /// client it is about, who is skipped.
    Notice {
        room: String,
        about: Option<ClientId>,
        text: String,
        seq: Option<u64>,
    },
    /// Redis refused local client `id`'s line (true), or the link failed
    /// before Redis confirmed it (false).
    NotSaid(ClientId, bool),
    /// The answer to [`super::Link::history`]: the room's epoch (0: none) and last
    /// N, and its lines, oldest first.
    History {
        id: ClientId,
        room: String,
        asked: Asked,
        epoch: u64,
        last: u64,
        lines: Vec<Line>,
        /// Lines Redis left out to keep its answer readable.
        omitted: u64,
    },
    Presence(Presence),
    /// `room`'s topic as Redis kept it (see `ClusterOp::KeepTopic`), read
    /// when this instance got its first member there.
    Topic(String, Topic),
    Private(ClientId, String, String),
    Claimed(ClientId, String, Claim),
    Guests(u64),
    /// Another instance holds `name` by an earlier claim: our user `id`
    /// must give it up.
    NameLost(ClientId, String),
    NodeLost(Rc<str>),
    /// A node declared lost has a heartbeat again.
    NodeBack(Rc<str>),
    /// A ban set on another instance, or kept in Redis.
    Ban(Ban),
    /// A ban lifted on another instance.
    Unban(IpNet),
    /// An operation the link could not take now (see [`Refusal`]).
    Refused(Refusal),
    /// The link's bookkeeping is due: the hub answers with a
    /// `ClusterOp::Roster` holding what is asked.
    Due(Due),
}

impl Inbound {
    /// Our own lines numbered from `first`, said as `runs` says: a `Said`
    /// when one client said them all, `Numbered` otherwise.
    pub fn numbered(room: String, first: Id, runs: Vec<(ClientId, u64)>, text: String) -> Inbound {
        match runs[..] {
            [(one, _)] => Inbound::Said {
                room,
                first,
                from: Some(one),
                text,
            },
            _ => Inbound::Numbered {
                room,
                first,
                runs: runs.into(),
                text,
            },
        }
    }

    /// Tells the hub what the link heard.
    pub fn apply(self, hub: &mut Hub, out: &mut impl Outbox) {
        match self {
            Inbound::Up => hub.link_up(out),
            Inbound::Down(_) => hub.link_down(out),
            Inbound::Room(room, text) => hub.remote_line(&room, &text, out),
            Inbound::Said {
                room,
                first,
                from,
                text,
            } => hub.said(&room, first, from, &text, out),
            Inbound::Numbered {
                room,
                first,
                runs,
                text,
            } => {
                for (at, from, run) in split_runs(first, &runs, &text) {
                    hub.said(&room, at, Some(from), &run, out);
                }
            }
            Inbound::Notice {
                room, about, text, ..
            } => hub.noticed(&room, about, &text, out),
            Inbound::NotSaid(id, sure) => hub.not_said(id, sure, out),
            Inbound::History {
                id,
                room,
                asked,
                epoch,
                last,
                lines,
                omitted,
            } => hub.answer(id, &room, asked, epoch, last, lines, omitted, out),
            Inbound::Presence(p) => hub.remote_presence(p, out),
            Inbound::Topic(room, topic) => hub.stored_topic(&room, topic, out),
            Inbound::Private(to, name, text) => hub.remote_private(to, &name, &text, out),
            Inbound::Claimed(id, name, answer) => hub.claimed(id, &name, answer, out),
            Inbound::NameLost(id, name) => hub.name_lost(id, &name, out),
            Inbound::NodeBack(node) => {
                info!(target: LOG, "cluster: node {node} has a heartbeat again; asking for its users");
                hub.node_back(&node, out);
            }
            Inbound::Guests(start) => hub.add_guests(start, GUEST_BLOCK),
            Inbound::NodeLost(node) => {
                info!(target: LOG, "cluster: node {node} stopped answering; its users are gone");
                hub.node_silent(&node, out);
            }
            Inbound::Ban(ban) => hub.ban_from_cluster(ban, out),
            Inbound::Unban(net) => hub.unban_from_cluster(&net),
            Inbound::Refused(Refusal::Say(id)) => hub.say_refused(id, out),
            Inbound::Refused(Refusal::Claim(id)) => hub.claim_refused(id, out),
            Inbound::Due(due) => hub.give_roster(due, out),
        }
    }
}

/// A batch's lines numbered from `first`, split by who said them: each
/// run's first id, sender and lines (CRLF between).
pub fn split_runs(first: Id, runs: &[(ClientId, u64)], text: &str) -> Vec<(Id, ClientId, String)> {
    let mut lines = text.split("\r\n");
    let mut n = first.n;
    let mut out = Vec::with_capacity(runs.len());
    for &(from, count) in runs {
        let run: Vec<&str> = lines.by_ref().take(count as usize).collect();
        out.push((
            Id {
                epoch: first.epoch,
                n,
            },
            from,
            run.join("\r\n"),
        ));
        n += count;
    }
    out
}

/// How many of our own numbered publications [`Delivered`] remembers per
/// room: the copy that comes second (the SAY's reply and the subscription
/// both carry them) comes within one round trip to Redis, in which this
/// instance publishes to a room at most once per loop turn.
pub const OWN_WINDOW: usize = 32;

/// Our own numbered publications lately delivered, per subscribed room, by
/// their first id and length: the only lines that can come twice (from our
/// SAY's reply, and again on the subscription). Nothing else is compared:
/// an id that jumps ahead or goes back (a forged one, a failover, a new
/// epoch) is delivered like any other, and never keeps a later line out.
///
/// And the last of our own notices per room, by their number, for the same
/// reason (the reply to their PUBLISH and the subscription both carry
/// them).
#[derive(Debug, Default)]
pub struct Delivered(HashMap<String, VecDeque<(Id, u64)>>, HashMap<String, u64>);

impl Delivered {
    /// Numbered lines, for the hub once: not again if they are ours and
    /// came already (from our SAY's reply or the subscription, whichever
    /// was first). `from` is Some for ours.
    pub fn said(
        &mut self,
        room: String,
        first: Id,
        from: Option<ClientId>,
        text: String,
    ) -> Option<Inbound> {
        let count = text.split("\r\n").count() as u64;
        self.fresh(&room, first, count, from.is_some())
            .then_some(Inbound::Said {
                room,
                first,
                from,
                text,
            })
    }

    /// Whether `count` numbered lines from `first` in `room` are to be
    /// delivered: not if they are ours (`own`) and came already.
    pub fn fresh(&mut self, room: &str, first: Id, count: u64, own: bool) -> bool {
        if !own {
            return true;
        }
        let seen = self.0.entry(room.to_string()).or_default();
        if seen.contains(&(first, count)) {
            return false;
        }
        if seen.len() >= OWN_WINDOW {
            seen.pop_front();
        }
        seen.push_back((first, count));
        true
    }

    /// Our own notice number `seq` in `room` may be delivered: it was not
    /// already (from the reply to its PUBLISH or the subscription, which
    /// keep the order they were sent in: a lower number came first).
    pub fn notice(&mut self, room: &str, seq: u64) -> bool {
        match self.1.get_mut(room) {
            Some(done) if *done >= seq => false,
            Some(done) => {
                *done = seq;
                true
            }
            None => {
                self.1.insert(room.to_string(), seq);
                true
            }
        }
    }

    /// Whether our notice `seq` in `room` reached the hub.
    pub fn noticed(&self, room: &str, seq: u64) -> bool {
        self.1.get(room).is_some_and(|&done| done >= seq)
    }

    /// Not subscribed to `room` any more.
    pub fn forget(&mut self, room: &str) {
        self.0.remove(room);
        self.1.remove(room);
    }

    pub fn clear(&mut self) {
        self.0.clear();
        self.1.clear();
    }
}
