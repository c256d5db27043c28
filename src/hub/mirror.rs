//! Cluster mode: the mirror of the users on the other instances, kept up
//! to date by the presence events the cluster link hears, and what this
//! instance tells the others. Delivery stays local: each instance sends a
//! line only to its own clients.

use super::*;

/// The shared store's answer to a name claim ([`ClusterOp::Claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Reserved for us, claimed at this time (ms since the Unix epoch).
    Granted(u64),
    Taken,
    /// Redis refused the command (logged with its text).
    Failed,
}

pub const LINK_DOWN: &str = "*** cluster link down: messages reach this server only";
/// The most users of other instances the mirror holds by default
/// (`--max-remote-users`): forged presence messages must not grow it without
/// end. Past it, new ones are left out, counted and logged.
pub const MAX_REMOTE: usize = 1 << 20;
/// The most instances remembered as lost (to notice when they are back).
pub const MAX_LOST: usize = 64;
/// The most rooms the mirror holds one remote user in (forged presence
/// must not grow it without end): --max-rooms-per-user's own ceiling.
pub const MAX_REMOTE_ROOMS: usize = crate::config::MAX_ROOMS_PER_USER as usize;
pub const LINK_UP: &str = "*** cluster link restored";

/// Cluster mode: who we are, whether the link is up, and name bookkeeping.
pub(super) struct Cluster {
    pub(super) node: Rc<str>,
    pub(super) up: bool,
    /// Reserved ranges of guest numbers [next, end) from the shared counter.
    pub(super) guests: VecDeque<(u64, u64)>,
    /// Fallback numbering before any range was ever reserved.
    pub(super) fallback: u64,
    /// Clients waiting for a cluster-wide name reservation.
    pub(super) pending: HashMap<ClientId, Box<str>>,
    /// How many rosters we have announced.
    pub(super) round: u64,
    /// Instances declared lost, newest last, to re-learn if they come back.
    pub(super) lost: VecDeque<Rc<str>>,
}

/// Instances are named on the wire `ID~INCARNATION` (`~` cannot appear in a
/// node id), so an instance restarted under the same --node-id is a new
/// node, and the others can tell its old users are gone.
pub fn same_instance_name(a: &str, b: &str) -> bool {
    a.split('~').next() == b.split('~').next()
}

impl Hub {
    /// Turns on cluster mode for this instance, named `node`. The link
    /// starts down; [`Hub::link_up`] says when it is not.
    pub fn with_cluster(mut self, node: &str) -> Hub {
        self.cluster = Some(Cluster {
            node: node.into(),
            up: false,
            guests: VecDeque::new(),
            fallback: 1,
            pending: HashMap::new(),
            round: 0,
            lost: VecDeque::new(),
        });
        self
    }

    /// The most remote users the mirror holds (default MAX_REMOTE).
    pub fn with_max_remote(mut self, n: usize) -> Hub {
        self.max_remote = n;
        self
    }

    /// Tells the other instances that local client `i` is here, in the
    /// rooms it is in (and away, if it is).
    pub(super) fn here(&self, i: Member, out: &mut impl Outbox) {
        for event in self.here_events(i) {
            out.cluster(ClusterOp::Presence(event));
        }
    }

    /// What tells another instance about local user `i`: `Here`, with its
    /// rooms, and `Away` if it is away.
    fn here_events(&self, i: Member) -> Vec<Presence> {
        let c = &self.clients[i];
        let (Some(cl), Some(id)) = (&self.cluster, c.who.local()) else {
            return Vec::new();
        };
        let mut events = vec![Presence::Here {
            node: cl.node.clone(),
            id: id.0 as u64,
            name: c.who.name().to_string(),
            rooms: c.seat.rooms().map(|r| self.in_room(i, r)).collect(),
            round: cl.round,
        }];
        let (since_ms, active_ms) = c.status.times();
        events.push(Presence::Seen {
            node: cl.node.clone(),
            id: id.0 as u64,
            since_ms,
            active_ms,
        });
        if let Some(text) = c.status.away() {
            events.push(Presence::Away {
                node: cl.node.clone(),
                id: id.0 as u64,
                text: Some(text.to_string()),
            });
        }
        events
    }

    /// `room` as presence events carry it, for member `i`.
    fn in_room(&self, i: Member, room: usize) -> InRoom {
        let r = &self.rooms[room];
        InRoom {
            key: r.key.to_string(),
            shown: r.name[1..].to_string(),
            op: self.clients[i].seat.is_op(room),
        }
    }

    /// Where user `i` lives, as presence events name it: (node, id).
    fn home_of(&self, i: Member) -> Option<(Rc<str>, u64)> {
        let cl = self.cluster.as_ref()?;
        Some(match self.clients[i].who.home() {
            Home::Local(id) => (cl.node.clone(), id.0 as u64),
            Home::Remote(node, id) => (node.clone(), *id),
        })
    }

    /// Local user `i` entered `room`.
    pub(super) fn presence_joined(&self, i: Member, room: usize, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(i) {
            let room = self.in_room(i, room);
            out.cluster(ClusterOp::Presence(Presence::Joined { node, id, room }));
        }
    }

    /// Local user `i` left the room `key` (by key: the room itself is gone
    /// if `i` was its last member here).
    pub(super) fn presence_parted(&self, i: Member, key: &str, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(i) {
            let room = key.to_string();
            out.cluster(ClusterOp::Presence(Presence::Parted { node, id, room }));
        }
    }

    /// User `t` (anywhere) became one of `room`'s operators, or stopped.
    pub(super) fn presence_op(&self, t: Member, room: usize, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(t) {
            let op = self.clients[t].seat.is_op(room);
            let room = self.rooms[room].key.to_string();
            out.cluster(ClusterOp::Presence(Presence::Opped { node, id, room, op }));
        }
    }

    /// Remote user `t` was kicked from `room` here: its instance takes it out.
    pub(super) fn presence_kicked(&self, t: Member, room: usize, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(t) {
            let room = self.rooms[room].key.to_string();
            out.cluster(ClusterOp::Presence(Presence::Kicked { node, id, room }));
        }
    }

    /// Local user `i` spoke after a silence: its idle time elsewhere.
    pub(super) fn presence_seen(&self, i: Member, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(i) {
            let (since_ms, active_ms) = self.clients[i].status.times();
            out.cluster(ClusterOp::Presence(Presence::Seen {
                node,
                id,
                since_ms,
                active_ms,
            }));
        }
    }

    /// Local user `i`'s away message changed.
    pub(super) fn presence_away(&self, i: Member, out: &mut impl Outbox) {
        if let Some((node, id)) = self.home_of(i) {
            let text = self.clients[i].status.away().map(str::to_string);
            out.cluster(ClusterOp::Presence(Presence::Away { node, id, text }));
        }
    }

    /// `room`'s topic changed here: told to the instances up now, and
    /// kept in Redis for those that create the room again.
    pub(super) fn presence_topic(&self, room: usize, out: &mut impl Outbox) {
        if let Some(event) = self.topic_event(room) {
            out.cluster(ClusterOp::Presence(event));
        }
        if let (Some(_), Some(topic)) = (&self.cluster, &self.rooms[room].topic) {
            out.cluster(ClusterOp::KeepTopic {
                room: self.rooms[room].key.clone(),
                topic: (**topic).clone(),
                ttl_ms: self.history.limits().ttl_ms,
            });
        }
    }

    /// The topic Redis kept for `room`, read when this instance got its
    /// first member there: taken if the room has none here or an older
    /// one, and then shown to the room's local members (who joined while
    /// it was read: their join's answer had no topic line, or an older one).
    pub fn stored_topic(&mut self, room: &str, topic: Topic, out: &mut impl Outbox) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        if self.rooms[r]
            .topic
            .as_ref()
            .is_some_and(|t| t.at_ms >= topic.at_ms)
        {
            return;
        }
        self.rooms[r].topic = Some(Box::new(topic));
        let Some(line) = self.topic_line(r) else {
            return;
        };
        self.to_room(r, None, &Msg::new(&line), out);
    }

    fn topic_event(&self, room: usize) -> Option<Presence> {
        let (cl, topic) = (self.cluster.as_ref()?, self.rooms[room].topic.as_ref()?);
        Some(Presence::Topic {
            node: cl.node.clone(),
            room: self.rooms[room].key.to_string(),
            topic: (**topic).clone(),
        })
    }

    /// Announces every local user, as a new roster round closed by `End`
    /// (whoever is not in it has left): to every instance (`to` None: we
    /// are new, or back), or to the one instance that said `Hello`.
    pub(super) fn roster_all(&mut self, to: Option<&Rc<str>>, out: &mut impl Outbox) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        cl.round += 1;
        let (node, round) = (cl.node.clone(), cl.round);
        let op = |event| match to {
            None => ClusterOp::Presence(event),
            Some(to) => ClusterOp::PresenceTo {
                node: to.clone(),
                event,
            },
        };
        for i in self.local.iter().flatten().copied() {
            for event in self.here_events(i) {
                out.cluster(op(event));
            }
        }
        // Each instance with members in a room re-tells its topic, for one
        // that just came (Redis keeps it too, read only by an instance
        // that gets its first member in the room).
        for (r, _) in self.rooms.iter().filter(|(_, r)| r.local > 0) {
            if let Some(event) = self.topic_event(r) {
                out.cluster(op(event));
            }
        }
        out.cluster(op(Presence::End { node, round }));
    }

    // ---- Cluster input: what the link heard from the other instances ----

    /// A room line (or a batch of them) published by another instance:
    /// messages and actions are kept and numbered here as local ones are,
    /// notices are only passed on.
    pub fn remote_line(&mut self, room: &str, text: &str, out: &mut impl Outbox) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        let mut run = String::new();
        for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
            if line.is_empty() {
                continue;
            }
            if is_room_line(line) {
                if !run.is_empty() {
                    run.push_str("\r\n");
                }
                run.push_str(line);
                continue;
            }
            if !run.is_empty() {
                self.say(r, None, std::mem::take(&mut run), out);
            }
            self.to_room(r, None, &Msg::new(line), out);
        }
        if !run.is_empty() {
            self.say(r, None, run, out);
        }
    }

    /// A private line for local client `to`, if it is still `to_name`.
    pub fn remote_private(&self, to: ClientId, to_name: &str, text: &str, out: &mut impl Outbox) {
        if let Some(i) = self.idx(to)
            && self.clients[i].who.key() == to_name
        {
            out.send(to, &Msg::new(text));
        }
    }

    /// Another instance's presence event updates the mirror. Notices for
    /// people arriving or leaving travel as room lines, not from here.
    pub fn remote_presence(&mut self, event: Presence, out: &mut impl Outbox) {
        let Some(cl) = &self.cluster else { return };
        let me = cl.node.clone();
        match event {
            Presence::Hello { node } if node != me => {
                // A restart under the same name: the old one's users are gone.
                for old in self.remote_nodes() {
                    if old != node && same_instance_name(&old, &node) {
                        self.release_names_of(&old, out);
                        self.node_lost(&old, "server lost", out);
                    }
                }
                // Only the newcomer needs our users: the others have them.
                self.roster_all(Some(&node), out);
            }
            Presence::Hello { .. } => {}
            Presence::Bye { node } => self.node_lost(&node, "server shutting down", out),
            Presence::Here {
                node,
                id,
                name,
                rooms,
                round,
            } if node != me => {
                let known = self.remote.get(&(node.clone(), id)).copied();
                if let Some(i) = known {
                    self.drop_client(i, None, false, &mut Silent(out));
                } else if self.remote.len() >= self.max_remote {
                    self.remote_refused += 1;
                    return;
                }
                let key: Box<str> = name.to_ascii_lowercase().into();
                let home = Home::Remote(node.clone(), id);
                let i = Member(self.clients.insert(Client {
                    who: Identity::new(name.into(), key.clone(), home, round),
                    seat: Seat::NONE,
                    status: Status::new(self.now_ms),
                    resume: Resume::default(),
                    standing: Standing::new(None),
                }));
                self.name_add(&key, i);
                let back = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.lost.contains(&node));
                self.remote.insert((node, id), i);
                for room in rooms.iter().take(MAX_REMOTE_ROOMS) {
                    let r = self.enter(i, &room.key, &room.shown, out);
                    self.set_op(i, r, room.op);
                    if back && known.is_none() && self.announces(r) {
                        // Declared lost, heard from again: its rooms saw it
                        // leave, so they see it come back.
                        let text = format!("*** {} is back", self.clients[i].who.name());
                        self.to_room(r, Some(i), &Msg::new(&text), out);
                    }
                }
            }
            Presence::Gone { node, id } => {
                if let Some(i) = self.remote.remove(&(node, id)) {
                    self.drop_client(i, None, false, &mut Silent(out));
                }
            }
            Presence::Renamed { node, id, name } => {
                if let Some(&i) = self.remote.get(&(node, id)) {
                    self.set_name(i, &name);
                }
            }
            Presence::End { node, round } if node != me => {
                // Users of `node` it did not announce in this round left
                // while we could not hear it: their rooms are told now.
                let gone: Vec<(u64, Member)> = self
                    .remote
                    .iter()
                    .filter(|((n, _), i)| *n == node && self.clients[**i].who.since() < round)
                    .map(|((_, id), i)| (*id, *i))
                    .collect();
                for (id, i) in gone {
                    self.remote.remove(&(node.clone(), id));
                    self.drop_client(i, None, false, out);
                }
                if let Some(c) = self.cluster.as_mut() {
                    c.lost.retain(|n| *n != node);
                }
            }
            Presence::Who { node } => {
                if node == me {
                    self.roster_all(None, out);
                }
            }
            Presence::End { .. } => {}
            Presence::Joined { node, id, room } => {
                if let Some(&i) = self.remote.get(&(node, id))
                    && self.clients[i].seat.count() < MAX_REMOTE_ROOMS
                {
                    let r = self.enter(i, &room.key, &room.shown, out);
                    self.set_op(i, r, room.op);
                }
            }
            Presence::Parted { node, id, room } => {
                if let (Some(&i), Some(&r)) = (
                    self.remote.get(&(node, id)),
                    self.room_keys.get(room.as_str()),
                ) {
                    self.leave_room(i, r, out);
                }
            }
            Presence::Opped { node, id, room, op } => {
                let who = if node == me {
                    self.idx(ClientId(id as usize))
                } else {
                    self.remote.get(&(node, id)).copied()
                };
                if let (Some(i), Some(&r)) = (who, self.room_keys.get(room.as_str())) {
                    self.set_op(i, r, op);
                }
            }
            Presence::Kicked { node, id, room } => {
                let tid = ClientId(id as usize);
                if node == me
                    && let (Some(t), Some(&r)) = (self.idx(tid), self.room_keys.get(room.as_str()))
                    && self.clients[t].seat.is_in(r)
                {
                    self.kicked_from(tid, t, r, out);
                }
            }
            Presence::Away { node, id, text } => {
                if let Some(&i) = self.remote.get(&(node, id)) {
                    self.clients[i].status.set_away(text.as_deref());
                }
            }
            Presence::Seen {
                node,
                id,
                since_ms,
                active_ms,
            } => {
                if let Some(&i) = self.remote.get(&(node, id)) {
                    self.clients[i].status.seen(since_ms, active_ms);
                }
            }
            Presence::Topic { node, room, topic } => {
                if node != me
                    && let Some(&r) = self.room_keys.get(room.as_str())
                {
                    self.rooms[r].topic = Some(Box::new(topic));
                }
            }
            Presence::Here { .. } => {}
        }
    }

    /// Another instance stopped answering (or said goodbye): its users are
    /// gone, and the rooms they were in are told so, with `reason`.
    pub fn node_lost(&mut self, node: &str, reason: &str, out: &mut impl Outbox) {
        let gone: Vec<Member> = self
            .remote
            .iter()
            .filter(|((n, _), _)| &**n == node)
            .map(|(_, &i)| i)
            .collect();
        self.remote.retain(|(n, _), _| &**n != node);
        for i in gone {
            self.drop_client(i, Some(reason), false, out);
        }
    }

    /// Nodes that have users in the mirror (to check they are alive).
    pub fn remote_nodes(&self) -> Vec<Rc<str>> {
        let mut nodes: Vec<Rc<str>> = self.remote.keys().map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Another instance's heartbeat lapsed: its users are gone ("server
    /// lost"), and it is remembered, to be re-learned should it beat again
    /// (it may only have been frozen or cut off). One that said goodbye or
    /// was replaced by a new incarnation is not coming back.
    pub fn node_silent(&mut self, node: &str, out: &mut impl Outbox) {
        if let Some(c) = self.cluster.as_mut()
            && !c.lost.iter().any(|n| &**n == node)
        {
            if c.lost.len() >= MAX_LOST {
                c.lost.pop_front();
            }
            c.lost.push_back(node.into());
        }
        self.release_names_of(node, out);
        self.node_lost(node, "server lost", out);
    }

    /// An instance is lost (died, or replaced by a new incarnation): its
    /// users' names, which it cannot give back itself, are released for
    /// it, each only if Redis still holds that user's claim. Every
    /// instance does it; the second to come finds nothing to delete.
    fn release_names_of(&self, node: &str, out: &mut impl Outbox) {
        for ((n, id), &i) in &self.remote {
            let key = self.clients[i].who.key();
            if &**n == node && !key.starts_with("guest-") {
                out.cluster(ClusterOp::ReleaseLost {
                    node: n.clone(),
                    id: *id,
                    name: key.into(),
                });
            }
        }
    }

    /// Instances declared lost (to notice when their heartbeat is back).
    pub fn lost_nodes(&self) -> Vec<Rc<str>> {
        self.cluster
            .as_ref()
            .map_or_else(Vec::new, |c| c.lost.iter().cloned().collect())
    }

    /// A lost instance has a heartbeat again: ask it for all its users.
    pub fn node_back(&mut self, node: &str, out: &mut impl Outbox) {
        if let Some(c) = &self.cluster
            && c.lost.iter().any(|n| &**n == node)
        {
            out.cluster(ClusterOp::Presence(Presence::Who { node: node.into() }));
        }
    }

    /// Local users' reserved names, to renew them: (id, name, claimed at).
    pub fn claimed_names(&self) -> Vec<(ClientId, &str, u64)> {
        self.local
            .iter()
            .enumerate()
            .filter_map(|(id, i)| i.map(|i| (ClientId(id), &self.clients[i].who)))
            .filter(|(_, c)| !c.key().starts_with("guest-"))
            .map(|(id, c)| (id, c.key(), c.since()))
            .collect()
    }

    /// Local rooms (for re-subscribing after a reconnect).
    pub fn local_rooms(&self) -> Vec<&str> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.local > 0)
            .map(|(_, r)| &*r.key)
            .collect()
    }

    /// This instance is shutting down: its users' names are given back
    /// (each only if Redis still holds it for them), so one who reconnects
    /// to another instance gets it at once rather than after the claim's
    /// lifetime; then the others drop its users at once instead of
    /// waiting for its heartbeat to expire. The goodbye goes after the
    /// releases on the same connection, so an instance that hears it
    /// finds the names free.
    pub fn shutdown(&mut self, out: &mut impl Outbox) {
        if let Some(c) = &self.cluster
            && c.up
        {
            let names: Vec<(ClientId, Box<str>, u64)> = self
                .claimed_names()
                .into_iter()
                .map(|(id, name, since)| (id, name.into(), since))
                .collect();
            for (id, name, since) in names {
                out.cluster(ClusterOp::Release { name, id, since });
            }
            out.cluster(ClusterOp::Presence(Presence::Bye {
                node: c.node.clone(),
            }));
        }
    }

    /// The link to the other instances is up again (or for the first time).
    pub fn link_up(&mut self, out: &mut impl Outbox) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.up {
            return;
        }
        c.up = true;
        let node = c.node.clone();
        for id in self.local_ids() {
            reply(out, id, LINK_UP);
        }
        out.cluster(ClusterOp::Presence(Presence::Hello { node }));
        self.roster_all(None, out);
        self.want_guests(out);
    }

    /// The link could not take local client `id`'s name claim (the queue
    /// toward Redis is full).
    pub fn claim_refused(&mut self, id: ClientId, out: &mut impl Outbox) {
        if let Some(c) = self.cluster.as_mut()
            && c.pending.remove(&id).is_some()
        {
            reply(
                out,
                id,
                "*** error: the cluster is busy; try /nick again in a moment",
            );
        }
    }

    /// The link's bookkeeping is due: it gets what it asked for as data,
    /// rather than reading the hub.
    pub fn give_roster(&self, due: Due, out: &mut impl Outbox) {
        if self.cluster.is_none() {
            return;
        }
        let names = if due.names {
            let names = self.claimed_names().into_iter();
            names
                .map(|(id, name, since)| (id, name.into(), since))
                .collect()
        } else {
            Vec::new()
        };
        let (remote, lost) = if due.nodes {
            (self.remote_nodes(), self.lost_nodes())
        } else {
            (Vec::new(), Vec::new())
        };
        let bans = if due.bans {
            self.bans_held()
        } else {
            Vec::new()
        };
        out.cluster(ClusterOp::Roster(Roster {
            names,
            remote,
            lost,
            bans,
        }));
    }

    /// The link is down: the other instances' users are out of reach, not
    /// gone. They stay in the mirror, so their names are not given away,
    /// until their instance re-announces itself without them (`End`) or is
    /// declared lost.
    pub fn link_down(&mut self, out: &mut impl Outbox) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was_up = std::mem::replace(&mut c.up, false);
        let waiting: Vec<ClientId> = c.pending.drain().map(|(id, _)| id).collect();
        // History answers awaited from Redis will not come.
        let held: Vec<Member> = self
            .local
            .iter()
            .flatten()
            .copied()
            .filter(|&i| self.clients[i].resume.awaits())
            .collect();
        for i in held {
            if let Some(id) = self.clients[i].who.local() {
                reply(
                    out,
                    id,
                    "*** the cluster link went down: the history asked for cannot be shown now",
                );
            }
            self.release_held(i, out);
        }
        for id in waiting {
            reply(
                out,
                id,
                "*** error: the cluster link went down; try /nick again later",
            );
        }
        if was_up {
            for id in self.local_ids() {
                reply(out, id, LINK_DOWN);
            }
        }
    }

    pub(super) fn local_ids(&self) -> Vec<ClientId> {
        self.local
            .iter()
            .enumerate()
            .filter_map(|(id, i)| i.map(|_| ClientId(id)))
            .collect()
    }
}

/// Passes everything on but room notices' deliveries: for mirror changes
/// that must not make a sound.
struct Silent<'a, O: Outbox>(&'a mut O);

impl<O: Outbox> Outbox for Silent<'_, O> {
    fn send(&mut self, _: ClientId, _: &Rc<Msg>) {}
    fn close(&mut self, id: ClientId, reason: String) {
        self.0.close(id, reason)
    }
    fn cluster(&mut self, op: ClusterOp) {
        // Only the link's subscriptions follow the change; nothing is
        // announced to the other instances.
        if let ClusterOp::Subscribe { .. } = op {
            self.0.cluster(op)
        }
    }
}
