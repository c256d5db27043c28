//! What the hub asks of the cluster, as data: the hub appends
//! [`ClusterOp`]s through [`Outbox::cluster`](super::Outbox::cluster), the
//! reactor hands them to the link, and the link answers with events (see
//! `cluster::Inbound`), some of them in the same turn: an operation it
//! cannot take now (`Inbound::Refused`), or the roster it asks for when its
//! bookkeeping is due (`Inbound::Due` answered by [`ClusterOp::Roster`]).
//! Neither side calls the other, so a link per Redis shard, later, is a
//! router over this list, with no change to the hub or the reactor.

use super::{Asked, ClientId, Presence, Topic};
use crate::access::Ban;
use crate::history::Id;
use crate::msg::Msg;
use ipnet::IpNet;
use std::rc::Rc;

#[derive(Debug, Clone)]
pub enum ClusterOp {
    /// A line for the members of `room` on the other instances.
    Publish { room: Box<str>, msg: Rc<Msg> },
    /// A notice about a member of `room` (a join, a leave, a rename, a
    /// kick, a mute), for every instance this one included, in the room's
    /// one order with its lines: it comes back as `Inbound::Notice`
    /// (skipping local client `about`, told otherwise), or, when the link
    /// cannot take it, comes back at once for local delivery.
    Notice {
        room: Box<str>,
        about: Option<ClientId>,
        msg: Rc<Msg>,
    },
    /// Room lines (CRLF between) from local client `from`, to be numbered
    /// and kept by Redis (at most `keep` per room, for `ttl_ms` after the
    /// last); they come back as `Inbound::Said`, or `Refused(Say)`.
    Say {
        room: Box<str>,
        from: ClientId,
        lines: String,
        keep: usize,
        ttl_ms: u64,
    },
    /// A room's history for `id` from Redis, the lines after `after` or the
    /// last ones, at most `count`; answered by `Inbound::History` (or, if
    /// the link fails first, by its `Down`).
    History {
        id: ClientId,
        room: Box<str>,
        asked: Asked,
        after: Option<Id>,
        count: usize,
    },
    /// A ban set here, for the other instances (and Redis, which keeps
    /// them for instances that start later).
    Ban(Ban),
    /// A ban lifted here.
    Unban(IpNet),
    /// A change to who is where, for the other instances' mirrors.
    Presence(Presence),
    /// A presence event for instance `node` alone: the roster that answers
    /// its `Hello`, which the others already have (sent to all, every
    /// instance's answer would reach every instance: N² messages for one
    /// newcomer).
    PresenceTo { node: Rc<str>, event: Presence },
    /// A line for one user on another instance.
    Private {
        node: Rc<str>,
        to: u64,
        to_name: Box<str>,
        msg: Rc<Msg>,
    },
    /// This instance now has local members in `room` (true) or none. On
    /// the first, the link also reads the room's topic kept in Redis
    /// (answered by `Inbound::Topic`, if there is one).
    Subscribe { room: Box<str>, on: bool },
    /// `room`'s topic was set, locked or unlocked here: kept in Redis
    /// with the room, for `ttl_ms` (the history's TTL, which the room's
    /// lines renew), for instances that create the room again.
    KeepTopic {
        room: Box<str>,
        topic: Topic,
        ttl_ms: u64,
    },
    /// Reserve `name` cluster-wide for `id`; answered by
    /// `Inbound::Claimed`, or `Refused(Claim)`.
    Claim { id: ClientId, name: Box<str> },
    /// Give up `name`, reserved for `id` by a claim made at `since`.
    Release {
        name: Box<str>,
        id: ClientId,
        since: u64,
    },
    /// Give up `name` for user `id` of instance `node`, which was declared
    /// lost (it cannot give it back itself), if Redis still holds that
    /// user's claim on it.
    ReleaseLost {
        node: Rc<str>,
        id: u64,
        name: Box<str>,
    },
    /// The hub is running low on guest numbers: reserve a block past
    /// `used`, the highest it handed out.
    Guests { used: u64 },
    /// The answer to `Inbound::Due`: what the link's bookkeeping needs.
    Roster(Roster),
}

/// What the link's bookkeeping round needs of the hub, as asked by
/// `Inbound::Due` (a part not asked for is left empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Local users' reserved names, to renew: (id, name, claimed at).
    pub names: Vec<(ClientId, Box<str>, u64)>,
    /// Nodes that have users in the mirror (to check they are alive).
    pub remote: Vec<Rc<str>>,
    /// Nodes declared lost (to notice when their heartbeat is back).
    pub lost: Vec<Rc<str>>,
    /// The bans in force here, to re-assert at link-up.
    pub bans: Vec<Ban>,
}

/// What the link asks for in `Inbound::Due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub names: bool,
    pub nodes: bool,
    pub bans: bool,
}

/// An operation the link could not take now: the queue toward Redis is
/// full, or the link is no longer up (its `Down` is on the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Say(ClientId),
    Claim(ClientId),
}
