//! The link's verbs for the hub: what each `ClusterOp` becomes on the
//! wire (lines to number, notices, presence, private lines, subscriptions,
//! topics, claims, bans, renewals), and numbered lines handed back once.
//! Called by `Link::apply` (mod.rs), which alone the reactor sees.

use super::*;

impl Link {
    /// Hands numbered lines to the hub once: not again if they came
    /// already (from our SAY's reply or the subscription, whichever was
    /// first). Other lines are delivered whatever their id.
    pub(super) fn deliver(
        &mut self,
        room: String,
        first: Id,
        from: Option<ClientId>,
        text: String,
        inbound: &mut Vec<Inbound>,
    ) {
        inbound.extend(self.delivered.said(room, first, from, text));
    }

    /// The same for our own lines of several senders (`runs`).
    pub(super) fn deliver_runs(
        &mut self,
        room: String,
        first: Id,
        runs: Box<[(ClientId, u64)]>,
        text: String,
        inbound: &mut Vec<Inbound>,
    ) {
        let count = runs.iter().map(|r| r.1).sum();
        if self.delivered.fresh(&room, first, count, true) {
            inbound.push(Inbound::numbered(room, first, runs.into(), text));
        }
    }

    /// Asks Redis for a room's history for local client `id`: the lines
    /// after `after` (or the last ones), at most `count`. The answer comes
    /// back as `Inbound::History`. False when the link is not up.
    pub(super) fn history(
        &mut self,
        id: ClientId,
        room: &str,
        asked: Asked,
        after: Option<Id>,
        count: usize,
    ) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let all = scripts::read_args(self.keys(), room, after, count, self.wire.max_text);
        let all: Vec<&[u8]> = all.iter().map(|a| a.as_bytes()).collect();
        let expect = Expect::Read(id, room.to_string(), asked);
        self.fcall(Func::Read, &all[..2], &all[2..], expect, Kind::Book)
    }

    /// A notice about a member of `room` (about local client `about`), on
    /// the room's channel in the order of its lines; it comes back to be
    /// delivered here too. When it cannot go (the link not up, the queue
    /// toward Redis full) it is delivered here at once, as while the link
    /// is down.
    pub(super) fn notice(
        &mut self,
        room: &str,
        about: Option<ClientId>,
        text: &str,
        inbound: &mut Vec<Inbound>,
    ) {
        self.notices += 1;
        let seq = self.notices;
        let channel = self.keys().room(room);
        let payload = wire::notice_payload(&self.wire.node, seq, about, text);
        let expect = Expect::Notice {
            room: room.into(),
            seq,
            about,
            text: text.into(),
        };
        let sent = self.state.is_up()
            && self.send_cmd(
                &[b"PUBLISH", channel.as_bytes(), payload.as_bytes()],
                expect,
                Kind::Publish,
            );
        if sent {
            self.stats.published += 1;
        } else {
            inbound.push(Inbound::Notice {
                room: room.to_string(),
                about,
                text: text.to_string(),
                seq: None,
            });
        }
    }

    /// A local line, or a batch of them (CRLF between), for the room on the
    /// other instances ([`wire::room_payload`]).
    pub(super) fn publish_room(&mut self, room: &str, text: &str) {
        let channel = self.keys().room(room);
        let payload = wire::room_payload(&self.wire.node, text);
        self.publish(&channel, payload.as_bytes());
    }

    pub(super) fn presence(&mut self, to: Option<&str>, event: &Presence) {
        let channel = match to {
            None => self.keys().presence(),
            Some(node) => self.keys().presence_to(node),
        };
        self.publish(&channel, wire::encode_presence(event).as_bytes());
    }

    pub(super) fn private(&mut self, node: &str, to: u64, to_name: &str, text: &str) {
        let channel = self.keys().node(node);
        self.publish(
            &channel,
            wire::private_payload(to, to_name, text).as_bytes(),
        );
    }

    pub(super) fn subscribe(&mut self, room: &str, on: bool) {
        let changed = if on {
            self.rooms.insert(room.to_string())
        } else {
            self.confirmed.remove(room);
            self.delivered.forget(room);
            self.rooms.remove(room)
        };
        if changed && on && self.state.is_up() {
            self.read_topic(room);
        }
        if changed && !self.state.is_down() {
            let channel = self.keys().room(room);
            if let Some(sub) = self.sub.as_mut() {
                if sub.wbuf.len() > self.max_queue {
                    // The set of rooms is kept; a new connection subscribes
                    // to all of them at once.
                    self.stuck.get_or_insert_with(|| {
                        format!(
                            "subscriber queue to Redis is full ({} bytes)",
                            sub.wbuf.len()
                        )
                    });
                    return;
                }
                let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
                command(&mut sub.wbuf, &[verb, channel.as_bytes()]);
            }
        }
    }

    /// `room`'s topic, kept with its history for `ttl_ms` (SAY renews it
    /// with the history's keys). While the link is down it stays in the
    /// memory of the instances that have it.
    pub(super) fn keep_topic(&mut self, room: &str, topic: &Topic, ttl_ms: u64) {
        if !self.state.is_up() {
            return;
        }
        let key = self.keys().topic(room);
        let value = wire::topic_value(&self.wire.node, room, topic);
        let ms = ttl_ms.max(1).to_string();
        self.send_cmd(
            &[
                b"SET",
                key.as_bytes(),
                value.as_bytes(),
                b"PX",
                ms.as_bytes(),
            ],
            Expect::Ignore("SET (a room's topic)"),
            Kind::Publish,
        );
    }

    /// Asks for the topic kept for `room`: at most one byte more than the
    /// longest value taken, so a forged one of any size costs a small
    /// reply (and is refused as too long), never `MAX_REPLY`. One per room
    /// a local user enters first, so a flood of /join is bounded as its
    /// lines are: dropped and counted when the queue toward Redis is full
    /// (the room then starts without its topic, as with the link down).
    pub(super) fn read_topic(&mut self, room: &str) {
        let key = self.keys().topic(room);
        let end = wire::MAX_STORED_TOPIC.to_string();
        self.send_cmd(
            &[b"GETRANGE", key.as_bytes(), b"0", end.as_bytes()],
            Expect::Topic(room.into()),
            Kind::Publish,
        );
    }

    /// The answer to [`Link::read_topic`], checked as a `T` presence.
    pub(super) fn topic_read(
        &mut self,
        room: &str,
        frame: &OwnedFrame,
        inbound: &mut Vec<Inbound>,
    ) {
        if let OwnedFrame::Error(e) = frame {
            return self.refused("GETRANGE (a room's topic)", e);
        }
        let Some(value) = frame_bytes(frame) else {
            return self.malformed(b"a room's topic", "not a string");
        };
        match self.wire.stored_topic(room, value) {
            Ok(Some(topic)) => inbound.push(Inbound::Topic(room.to_string(), topic)),
            Ok(None) => {}
            Err(why) => {
                let key = self.keys().topic(room);
                self.malformed(key.as_bytes(), why);
            }
        }
    }

    /// Reserves `name` for `id`; the answer comes back as `Inbound::Claimed`.
    /// False when it cannot be asked now (link not up, queue full).
    pub(super) fn claim(&mut self, id: ClientId, name: &str) -> bool {
        if !self.state.is_up() {
            return false;
        }
        let since = now_ms();
        let key = Keys::name(name);
        let value = claim_value(since, &self.wire.node, id);
        let ms = self.timing.name_ms();
        let args: [&[u8]; 6] = [
            b"SET",
            key.as_bytes(),
            value.as_bytes(),
            b"NX",
            b"PX",
            ms.as_bytes(),
        ];
        self.send_cmd(
            &args,
            Expect::Claim(id, name.to_string(), since),
            Kind::Claim,
        )
    }

    /// One ban held here, re-asserted at link-up ([`scripts::REASSERT`]):
    /// the answer says whether it was lifted meanwhile.
    pub(super) fn reassert(&mut self, ban: &Ban, now: u64) {
        let (key, unbans) = (self.keys().bans(), self.keys().unbans());
        let (net, line) = (ban.net.to_string(), ban.to_line());
        let until = ban.until.map_or("permanent".to_string(), |t| t.to_string());
        let now = now.to_string();
        self.fcall(
            Func::Reassert,
            &[key.as_bytes(), unbans.as_bytes()],
            &[
                net.as_bytes(),
                line.as_bytes(),
                until.as_bytes(),
                now.as_bytes(),
            ],
            Expect::Reassert(ban.net),
            Kind::Book,
        );
    }

    /// Gives `name` back, if the key still holds our claim on it.
    pub(super) fn release(&mut self, name: &str, id: ClientId, since: u64) {
        let value = claim_value(since, &self.wire.node, id);
        self.release_with(Func::Release, name, &value, "FCALL (release a name)");
    }

    /// Gives back `name` of user `id` on `node`, declared lost, if the key
    /// still holds that user's claim (whenever it was made).
    pub(super) fn release_lost(&mut self, node: &str, id: u64, name: &str) {
        let tail = wire::claim_tail(node, id);
        let what = "FCALL (release a lost instance's name)";
        self.release_with(Func::ReleaseLost, name, &tail, what);
    }

    /// A compare-and-delete `script` of `name`'s key, against `claim`.
    pub(super) fn release_with(&mut self, f: Func, name: &str, claim: &str, what: &'static str) {
        if self.state.is_up() {
            let key = Keys::name(name);
            let (keys, args) = ([key.as_bytes()], [claim.as_bytes()]);
            self.fcall(f, &keys, &args, Expect::Ignore(what), Kind::Book);
        }
    }

    /// Renews (or re-creates, or takes over from `beat`) our claim on a
    /// local user's name.
    pub(super) fn renew(
        &mut self,
        id: ClientId,
        name: &str,
        mine: String,
        beat: &str,
        heal: bool,
    ) -> bool {
        let key = Keys::name(name);
        let ms = self.timing.name_ms();
        let args: [&[u8]; 3] = [mine.as_bytes(), ms.as_bytes(), beat.as_bytes()];
        let expect = Expect::Renew {
            id,
            name: name.to_string(),
            mine: mine.clone(),
            heal,
        };
        self.fcall(Func::Renew, &[key.as_bytes()], &args, expect, Kind::Book)
    }
}
