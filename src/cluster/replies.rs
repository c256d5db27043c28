//! What each command sent on `cmd` expects back ([`Expect`], kept in order
//! in the link's `pending` queue), what a command may cost the queue
//! toward Redis ([`Kind`], [`PENDING_OVERHEAD`]), and what the link does
//! with each kind of answer (`Link::on_reply` dispatches to these).

use super::LOG;
use super::events::Inbound;
use super::redis::frame_bytes;
use super::timing::BACKOFF_MIN;
use super::wire::{self, claim_wins};
use super::{Link, State, now_ms};
use crate::access::MAX_BANS;
use crate::history::Id;
use crate::hub::{Asked, ClientId, GUEST_BLOCK};
use log::info;
use redis_protocol::resp2::types::OwnedFrame;
use std::rc::Rc;
use std::time::Instant;

/// What a reply on `cmd` answers.
#[derive(Debug)]
pub enum Expect {
    /// Must not be an error, or the link is useless (AUTH, SELECT): the
    /// command's name, for the log.
    Check(&'static str),
    Pong,
    /// Nothing to do with the answer but log an error (PUBLISH, DEL, the
    /// heartbeat): the command, for the log.
    Ignore(&'static str),
    Claim(ClientId, String, u64),
    /// A renewal of local user `id`'s `name` with our claim `mine`; `heal`
    /// while the link is healing (the link is up once all are answered).
    Renew {
        id: ClientId,
        name: String,
        mine: String,
        heal: bool,
    },
    Guests,
    Alive(Rc<str>),
    Back(Rc<str>),
    /// A batch of local clients' lines (boxed: the queue's every entry is
    /// as large as its largest kind).
    Say(Box<Sent>),
    /// Our notice number `seq` for `room` (about local client `about`):
    /// delivered here from this reply if the room's subscription is not in
    /// place yet, or at once if the link fails first or Redis refuses it.
    /// (Boxed strs: no larger than `Say`, so no command costs more of the
    /// queue's bound than before.)
    Notice {
        room: Box<str>,
        seq: u64,
        about: Option<ClientId>,
        text: Box<str>,
    },
    Read(ClientId, String, Asked),
    /// The topic kept for a room (`GETRANGE` of its key, bounded).
    Topic(Box<str>),
    /// `FUNCTION LOAD` of [`super::scripts::LIBRARY`].
    Library,
    /// A ban held here, re-asserted at link-up: was it lifted meanwhile?
    Reassert(ipnet::IpNet),
    /// A page of the bans hash ([`super::scripts::BANS`]), with how many
    /// bans the pages before it gave.
    Bans(usize),
    /// `INFO cluster`, first thing on a new connection: a Redis Cluster
    /// node is refused.
    Info,
}

/// A batch of lines SAY was sent: `text` (CRLF between) for `room`, and
/// who said how many, in order.
#[derive(Debug)]
pub struct Sent {
    pub runs: Box<[(ClientId, u64)]>,
    pub room: String,
    pub text: String,
}

/// What a command costs --cluster-queue beyond its RESP bytes: its entry
/// in `pending` until Redis answers, in a VecDeque that may be up to twice
/// as large as it is full. With 1-byte messages (about 50 bytes of PUBLISH)
/// that is the difference between the bound and 2.3 times it.
pub const PENDING_OVERHEAD: usize = 2 * size_of::<(Instant, Expect)>();

/// What a command is, for what to do when the queue toward Redis is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The handshake: always queued (the queue is empty then).
    Force,
    /// A line for the other instances: dropped and counted.
    Publish,
    /// A name claim: refused, and the user told to try again.
    Claim,
    /// Heartbeats, renewals, node checks, releases, guest numbers: without
    /// them the cluster cannot stay true, so they are never dropped. They
    /// are bounded by what they are about instead: one round at a time (one
    /// renewal per local named user, one check per known node, at most
    /// MAX_NODES), and a Redis too slow to answer them within
    /// --cluster-timeout has the link dropped and re-established.
    Book,
}

/// The answers, one handler per kind of [`Expect`].
impl Link {
    /// AUTH, SELECT, PING: an error makes the link useless.
    pub(super) fn must_be_ok(&mut self, what: &str, frame: &OwnedFrame) -> Result<(), String> {
        if let OwnedFrame::Error(e) = frame {
            self.stats.refused += 1;
            return Err(format!("Redis refused {what}: {}", e.escape_debug()));
        }
        Ok(())
    }

    /// `FUNCTION LOAD`: a Redis that does not know functions (before 7.0)
    /// cannot number room lines, so the link does not come up there and
    /// says why; any other refusal (an ACL without `function|load`) is
    /// told and the link goes on (another instance may have loaded it).
    pub(super) fn library_loaded(&mut self, frame: &OwnedFrame) -> Result<(), String> {
        match frame {
            OwnedFrame::Error(e) if e.to_ascii_lowercase().contains("unknown command") => {
                self.stats.refused += 1;
                Err(format!(
                    "Redis refused FUNCTION LOAD: {}: chatd needs Redis 7.0 or later",
                    e.escape_debug()
                ))
            }
            OwnedFrame::Error(e) => {
                self.refused("FUNCTION LOAD", e);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `INFO cluster`: on a Redis Cluster node a room's keys hash to
    /// different slots and half of what the link sends would be refused
    /// (CROSSSLOT, MOVED) while it looked up; so the link never comes up
    /// there. An ACL without INFO cannot tell: the link goes on, and says so.
    pub(super) fn info_reply(&mut self, frame: &OwnedFrame) -> Result<(), String> {
        match frame {
            OwnedFrame::Error(e) => {
                self.refused("INFO (is it a Redis Cluster node?)", e);
                Ok(())
            }
            f => match frame_bytes(f) {
                Some(info) if wire::redis_cluster(info) => Err(wire::REDIS_CLUSTER.to_string()),
                Some(info) if wire::info_field(info, "role") == Some("slave") => {
                    Err(wire::REPLICA.to_string())
                }
                Some(info) => {
                    self.replid = wire::info_field(info, "master_replid")
                        .unwrap_or_default()
                        .to_string();
                    Ok(())
                }
                None => Ok(()),
            },
        }
    }

    /// The answer to a renewal: who holds the name now.
    pub(super) fn renewed(
        &mut self,
        id: ClientId,
        name: String,
        mine: String,
        heal: bool,
        frame: OwnedFrame,
        inbound: &mut Vec<Inbound>,
    ) {
        match frame {
            OwnedFrame::BulkString(v) if v != mine.as_bytes() => {
                let theirs = String::from_utf8_lossy(&v).into_owned();
                if claim_wins(&mine, &theirs) {
                    // Take it over; this round is done when that one is
                    // answered.
                    if self.renew(id, &name, mine, &theirs, heal) {
                        return;
                    }
                } else {
                    info!(
                        target: LOG,
                        "cluster: the name {name} is held by an earlier claim ({}); our user gives it up",
                        theirs.escape_debug()
                    );
                    inbound.push(Inbound::NameLost(id, name));
                }
            }
            OwnedFrame::Error(e) => self.refused("FCALL (renew a name)", &e),
            _ => {}
        }
        if heal {
            if let State::Healing { left, .. } = &mut self.state {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.go_up(inbound);
                }
            }
        } else {
            self.round_done();
        }
    }

    pub(super) fn guests_reply(&mut self, frame: OwnedFrame, inbound: &mut Vec<Inbound>) {
        self.guests_answered();
        let text = match frame {
            OwnedFrame::Integer(last) => {
                self.guests_backoff = BACKOFF_MIN;
                self.guests_wanted = None;
                let start = (last as u64).saturating_sub(GUEST_BLOCK - 1);
                return inbound.push(Inbound::Guests(start));
            }
            OwnedFrame::Error(e) => e,
            other => format!("unexpected reply {other:?}"),
        };
        self.refused("FCALL (reserve guest numbers)", &text);
        // Asked again after a backoff, not at once in a loop.
        self.guests_retry = Some(Instant::now() + self.guests_backoff);
        self.guests_backoff = (self.guests_backoff * 2).min(self.timing.backoff_max());
    }

    /// The answer to a node check: `mirrored`, a node we mirror (is it
    /// still alive?), or one we lost (is it back?).
    pub(super) fn node_checked(
        &mut self,
        node: Rc<str>,
        mirrored: bool,
        frame: OwnedFrame,
        inbound: &mut Vec<Inbound>,
    ) {
        self.round_done();
        match frame {
            OwnedFrame::Integer(n) if mirrored => self.alive(node, n != 0, inbound),
            OwnedFrame::Integer(1) => inbound.push(Inbound::NodeBack(node)),
            OwnedFrame::Error(e) => self.refused("EXISTS (a heartbeat)", &e),
            _ => {}
        }
    }

    /// The answer to our SAY: the first id of our lines, or a refusal.
    pub(super) fn said_reply(&mut self, sent: Sent, frame: OwnedFrame, inbound: &mut Vec<Inbound>) {
        let Sent { runs, room, text } = sent;
        if let OwnedFrame::Error(e) = &frame {
            self.refused("FCALL (a room line)", e);
            let mut ids: Vec<ClientId> = runs.iter().map(|r| r.0).collect();
            ids.sort_unstable();
            ids.dedup();
            return inbound.extend(ids.into_iter().map(|id| Inbound::NotSaid(id, true)));
        }
        // Our own lines come back on the subscription, unless it is not in
        // place yet (the room is new here, and Redis may run the SUBSCRIBE
        // after this): then from here. `deliver` keeps whichever comes
        // second from being shown twice.
        let first = frame_bytes(&frame)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse::<Id>().ok());
        if let Some(first) = first
            && !self.confirmed.contains(&room)
        {
            self.deliver_runs(room, first, runs, text, inbound);
        }
    }

    /// The answer to our notice's PUBLISH: as for a room line (above), it
    /// comes back on the subscription unless that is not in place yet;
    /// refused, it is delivered here all the same, as with the link down.
    pub(super) fn noticed_reply(
        &mut self,
        room: Box<str>,
        seq: u64,
        about: Option<ClientId>,
        text: Box<str>,
        frame: &OwnedFrame,
        inbound: &mut Vec<Inbound>,
    ) {
        if let OwnedFrame::Error(e) = frame {
            self.refused("PUBLISH (a room notice)", e);
        } else if self.confirmed.contains(&*room) {
            return;
        }
        self.deliver_notice(room.into(), seq, about, text.into(), inbound);
    }

    /// Our notice `seq`, for the hub once.
    pub(super) fn deliver_notice(
        &mut self,
        room: String,
        seq: u64,
        about: Option<ClientId>,
        text: String,
        inbound: &mut Vec<Inbound>,
    ) {
        if self.delivered.notice(&room, seq) {
            inbound.push(Inbound::Notice {
                room,
                about,
                text,
                seq: Some(seq),
            });
        }
    }

    /// A page of the bans hash: field NET, value the ban's line. Checked
    /// like any publication (anyone who can reach Redis can write it): what
    /// does not parse, or whose value names another net, or that Redis left
    /// out as too long, is dropped and counted; at most MAX_BANS are taken
    /// over all pages; the ones that ran out are deleted from the hash.
    /// Then the next page, if any.
    pub(super) fn bans_read(
        &mut self,
        frame: &OwnedFrame,
        mut taken: usize,
        inbound: &mut Vec<Inbound>,
    ) {
        let Some((next, left_out, pairs)) = wire::bans_page(frame) else {
            return self.malformed(b"bans", "not a page of the bans hash");
        };
        if left_out > 0 {
            self.malformed(b"bans", "a ban too long in the bans hash");
        }
        let now = now_ms();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        for (field, value) in pairs {
            let Some(ban) = self.wire.ban_entry(field, value) else {
                self.malformed(b"bans", "bad ban in the bans hash");
                continue;
            };
            if !ban.active(now) {
                expired.push(field.to_vec());
            } else if taken < MAX_BANS {
                taken += 1;
                inbound.push(Inbound::Ban(ban));
            }
        }
        if !expired.is_empty() {
            let key = self.keys().bans();
            let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
            args.extend(expired.iter().map(Vec::as_slice));
            self.send_cmd(
                &args,
                Expect::Ignore("HDEL (bans that ran out)"),
                Kind::Book,
            );
        }
        if let Some(cursor) = next
            && taken < MAX_BANS
        {
            self.bans_from(&cursor, taken);
        }
    }

    /// A node's heartbeat key, present or not. A node is declared lost only
    /// once its heartbeat has been missing for `lost_after` while our link
    /// was up (a flushed Redis loses every heartbeat at once; each instance
    /// writes its own again within a tick), and not while it is in its grace
    /// after our own outage.
    pub(super) fn alive(&mut self, node: Rc<str>, exists: bool, inbound: &mut Vec<Inbound>) {
        if exists {
            self.missing.remove(&node);
            self.grace.remove(&node);
            return;
        }
        let now = Instant::now();
        if self.grace.get(&node).is_some_and(|&t| now < t) {
            return;
        }
        let since = *self.missing.entry(node.clone()).or_insert(now);
        if now >= since + self.timing.lost_after() {
            self.missing.remove(&node);
            self.grace.remove(&node);
            inbound.push(Inbound::NodeLost(node));
        }
    }

    /// One reply of this round's renewals and node checks is in.
    pub(super) fn round_done(&mut self) {
        if let State::Up { round_left, .. } = &mut self.state {
            *round_left = round_left.saturating_sub(1);
        }
    }

    pub(super) fn guests_answered(&mut self) {
        if let State::Up { guests_asked, .. } = &mut self.state {
            *guests_asked = false;
        }
    }
}
