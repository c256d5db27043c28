//! Room lines on their way to Redis, gathered per room over one loop turn:
//! the lines local clients said in a room during the turn are numbered by
//! one SAY call, whoever said them (the senders travel with the batch, see
//! [`super::wire::senders`]), so a room where many people each say a line
//! now and then costs Redis one call per turn, not one per line.
//!
//! Order: every operation on a room's channel must reach Redis in the
//! order the hub emitted it. So a batch goes out before any other
//! operation the link is given (a notice published on the room's channel,
//! a presence change, a history read, a subscription: [`Link::apply`]
//! sends the batches first), and before the link's own timed work and the
//! write at the end of the turn. Only SAYs wait, and only behind nothing.

use super::*;

/// One room's lines gathered this turn.
#[derive(Debug)]
pub struct Batch {
    room: String,
    keep: usize,
    ttl_ms: u64,
    /// Who said the lines, in order: (sender, how many lines).
    runs: Vec<(ClientId, u64)>,
    /// The lines, CRLF between.
    text: String,
}

impl Batch {
    /// The distinct senders, for what they are told if it is refused.
    fn senders(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.runs.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl Link {
    /// Room lines (CRLF between) from local client `from`, to be numbered
    /// and kept by Redis and delivered when they come back (see
    /// `scripts::SAY`): added to the room's batch of this turn. False when
    /// the link is not up; a batch the queue toward Redis cannot take is
    /// refused when it goes out (`Refused(Say)` for each of its senders).
    /// A batch holds at most COALESCE bytes of lines (what a receiver takes
    /// in one publication): past that it goes out, and a new one begins.
    pub(super) fn say(
        &mut self,
        room: &str,
        from: ClientId,
        lines: &str,
        keep: usize,
        ttl_ms: u64,
        inbound: &mut Vec<Inbound>,
    ) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let count = lines.split("\r\n").count() as u64;
        if let Some(i) = self.batches.iter().position(|b| b.room == room) {
            let b = &self.batches[i];
            let fits = b.text.len() + 2 + lines.len() <= COALESCE;
            if fits && b.keep == keep && b.ttl_ms == ttl_ms {
                let b = &mut self.batches[i];
                match b.runs.last_mut() {
                    Some((s, n)) if *s == from => *n += count,
                    _ => b.runs.push((from, count)),
                }
                b.text.push_str("\r\n");
                b.text.push_str(lines);
                return true;
            }
            let b = self.batches.remove(i);
            self.send_batch(b, inbound);
        }
        self.batches.push(Batch {
            room: room.to_string(),
            keep,
            ttl_ms,
            runs: vec![(from, count)],
            text: lines.to_string(),
        });
        true
    }

    /// Sends every batch gathered, in the order their rooms were first
    /// said in.
    pub(super) fn send_batches(&mut self, inbound: &mut Vec<Inbound>) {
        for b in std::mem::take(&mut self.batches) {
            self.send_batch(b, inbound);
        }
    }

    /// One SAY call for a batch.
    fn send_batch(&mut self, b: Batch, inbound: &mut Vec<Inbound>) {
        let head = wire::senders(&b.runs);
        let args = scripts::say_args(
            self.keys(),
            &b.room,
            b.keep,
            b.ttl_ms,
            &self.wire.node,
            &head,
            &self.replid,
        );
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let mut tail: Vec<&[u8]> = args[4..].to_vec();
        tail.extend(b.text.split("\r\n").map(str::as_bytes));
        let senders = b.senders();
        let expect = Expect::Say(Box::new(replies::Sent {
            runs: b.runs.into(),
            room: b.room.clone(),
            text: b.text.clone(),
        }));
        if self.fcall(Func::Say, &args[..4], &tail, expect, Kind::Publish) {
            self.stats.published += 1;
        } else {
            let refused = senders
                .into_iter()
                .map(|id| Inbound::Refused(Refusal::Say(id)));
            inbound.extend(refused);
        }
    }

    /// The link failed with batches not sent: their senders are told
    /// the lines were not sent.
    pub(super) fn drop_batches(&mut self, inbound: &mut Vec<Inbound>) {
        for b in std::mem::take(&mut self.batches) {
            inbound.extend(b.senders().into_iter().map(|id| Inbound::NotSaid(id, true)));
        }
    }
}
