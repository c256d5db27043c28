//! What each command sent on `cmd` expects back ([`Expect`], kept in order
//! in the link's `pending` queue), and what a command may cost the queue
//! toward Redis ([`Kind`], [`PENDING_OVERHEAD`]).

use crate::hub::{Asked, ClientId};
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
    /// Local client `id`'s lines for `room` (CRLF between).
    Say(ClientId, String, String),
    Read(ClientId, String, Asked),
    /// The SHA1 of a script in [`super::scripts::LOADED`], by index.
    Script(usize),
    /// HGETALL of the bans hash.
    Bans,
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
