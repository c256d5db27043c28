//! Identity: who is called what, and where it is connected. Guest
//! numbers, `/nick`, the rule for a valid name, and (in cluster mode) the
//! claims that keep a name unique across instances.

use super::*;

pub const MAX_NAME: usize = 24;

/// Where a user is connected.
#[derive(Clone)]
pub(super) enum Home {
    Local(ClientId),
    Remote(Rc<str>, u64),
}

/// Who a user is: its name, and where it is connected. Changed only here
/// (`Hub::set_name`), so that `Hub::names` always matches it.
pub(super) struct Identity {
    name: Box<str>,
    /// Lowercased name: the key in `Hub::names`.
    key: Box<str>,
    home: Home,
    /// Local users with a chosen name: when they claimed it (ms since the
    /// Unix epoch), the claim's identity in Redis. Remote users: the roster
    /// round that last announced them.
    since: u64,
}

impl Identity {
    pub(super) fn new(name: Box<str>, key: Box<str>, home: Home, since: u64) -> Identity {
        Identity {
            name,
            key,
            home,
            since,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn home(&self) -> &Home {
        &self.home
    }

    /// The transport's id of a local user; None for a remote one.
    pub(super) fn local(&self) -> Option<ClientId> {
        match self.home {
            Home::Local(id) => Some(id),
            Home::Remote(..) => None,
        }
    }

    pub(super) fn since(&self) -> u64 {
        self.since
    }
}

impl Hub {
    /// Records that `i` holds name `key` (a second holder waits in `dups`).
    pub(super) fn name_add(&mut self, key: &str, i: Member) {
        match self.names.get(key) {
            None => {
                self.names.insert(key.into(), i);
            }
            Some(&o) if o == i => {}
            Some(_) => self.dups.entry(key.into()).or_default().push(i),
        }
    }

    /// `i` no longer holds `key`; another holder, if any, now does.
    pub(super) fn name_drop(&mut self, key: &str, i: Member) {
        if self.names.get(key) == Some(&i) {
            self.names.remove(key);
            if let Some(d) = self.dups.get_mut(key) {
                if let Some(next) = d.pop() {
                    self.names.insert(key.into(), next);
                }
                if d.is_empty() {
                    self.dups.remove(key);
                }
            }
        } else if let Some(d) = self.dups.get_mut(key) {
            d.retain(|&x| x != i);
            if d.is_empty() {
                self.dups.remove(key);
            }
        }
    }

    /// The highest guest number handed out, so a shared counter that lost
    /// its state (a restarted Redis) can be moved past it.
    pub fn guests_used(&self) -> u64 {
        self.next_guest - 1
    }

    /// How many reserved guest numbers are left.
    pub fn guests_left(&self) -> u64 {
        self.cluster
            .as_ref()
            .map_or(u64::MAX, |c| c.guests.iter().map(|(a, b)| b - a).sum())
    }

    /// Cluster mode: gives back the name local user `i` (client `id`)
    /// holds, unless it is a guest name (those are never claimed).
    pub(super) fn release_claim(&self, id: ClientId, i: Member, out: &mut impl Outbox) {
        let c = &self.clients[i].who;
        if !c.key().starts_with("guest-") {
            out.cluster(ClusterOp::Release {
                name: c.key().into(),
                id,
                since: c.since(),
            });
        }
    }

    /// Cluster mode: asks the link for a block of guest numbers while
    /// fewer than half a block are left (the link asks Redis once at a
    /// time, however often it is told).
    pub(super) fn want_guests(&self, out: &mut impl Outbox) {
        if self.cluster.is_some() && self.guests_left() < GUEST_BLOCK / 2 {
            out.cluster(ClusterOp::Guests {
                used: self.guests_used(),
            });
        }
    }

    /// The cluster link reserved guest numbers [start, start + len).
    pub fn add_guests(&mut self, start: u64, len: u64) {
        if let Some(c) = self.cluster.as_mut() {
            c.guests.push_back((start, start + len));
        }
    }

    pub(super) fn guest_name(&mut self, out: &mut impl Outbox) -> String {
        let Some(c) = self.cluster.as_mut() else {
            let n = self.next_guest;
            self.next_guest += 1;
            return format!("guest-{n}");
        };
        while let Some((next, end)) = c.guests.front_mut() {
            if next < end {
                let n = *next;
                *next += 1;
                self.next_guest = self.next_guest.max(n + 1);
                self.want_guests(out);
                return format!("guest-{n}");
            }
            c.guests.pop_front();
        }
        // Never reached the shared counter: the node id keeps it unique.
        let n = c.fallback;
        c.fallback += 1;
        let id = c.node.split('~').next().unwrap_or_default();
        let name = format!("guest-{id}-{n}");
        self.want_guests(out);
        name
    }

    pub(super) fn nick(&mut self, id: ClientId, i: Member, wanted: &str, out: &mut impl Outbox) {
        if wanted.is_empty() {
            return reply(out, id, "*** error: usage: /nick NAME");
        }
        if let Err(why) = check_name(wanted) {
            return reply(out, id, &format!("*** error: invalid name: {why}"));
        }
        let key = wanted.to_ascii_lowercase();
        if key.starts_with("guest-") {
            return reply(
                out,
                id,
                "*** error: names beginning with guest- are kept for the server",
            );
        }
        match self.names.get(key.as_str()) {
            Some(&owner) if owner != i => {
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            _ => {}
        }
        if self.clients[i].who.name() == wanted {
            return reply(out, id, &format!("*** you are already {wanted}"));
        }
        if let Some(c) = self.cluster.as_mut()
            && self.clients[i].who.key() != key
        {
            // Another instance may be granting the same name right now:
            // the shared store decides, and `claimed` finishes the change.
            if !c.up {
                return reply(
                    out,
                    id,
                    "*** error: names cannot change while the cluster link is down",
                );
            }
            if c.pending.contains_key(&id) {
                return reply(out, id, "*** error: a name change is already under way");
            }
            // Answered by `claimed`, or by `claim_refused` if the queue
            // toward Redis is full.
            c.pending.insert(id, wanted.into());
            return out.cluster(ClusterOp::Claim {
                id,
                name: key.into(),
            });
        }
        // Only the casing changes (or there is no cluster): the claim, and
        // so its time, stay as they were.
        let since = self.clients[i].who.since();
        self.rename(id, i, wanted, since, None, out);
    }

    /// The cluster's answer to [`ClusterOp::Claim`].
    pub fn claimed(&mut self, id: ClientId, name: &str, answer: Claim, out: &mut impl Outbox) {
        let Some(wanted) = self.cluster.as_mut().and_then(|c| c.pending.remove(&id)) else {
            // The client left meanwhile: give the name back.
            if let Claim::Granted(since) = answer {
                out.cluster(ClusterOp::Release {
                    name: name.into(),
                    id,
                    since,
                });
            }
            return;
        };
        let Some(i) = self.idx(id) else { return };
        let taken = self
            .names
            .get(wanted.to_ascii_lowercase().as_str())
            .is_some_and(|&o| o != i);
        let since = match answer {
            Claim::Granted(since) if taken => {
                out.cluster(ClusterOp::Release {
                    name: name.into(),
                    id,
                    since,
                });
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            Claim::Granted(since) => since,
            Claim::Taken => {
                return reply(out, id, &format!("*** error: the name {wanted} is taken"));
            }
            Claim::Failed => {
                return reply(
                    out,
                    id,
                    "*** error: the cluster could not reserve that name; try /nick again later",
                );
            }
        };
        self.release_claim(id, i, out);
        self.rename(id, i, &wanted, since, None, out);
    }

    /// Another instance holds the name of local user `id` by an earlier
    /// claim (both were granted while the cluster was split): ours gives it
    /// up for a fresh guest name, and is told why.
    pub fn name_lost(&mut self, id: ClientId, name: &str, out: &mut impl Outbox) {
        let Some(i) = self.idx(id) else { return };
        if self.clients[i].who.key() != name {
            return;
        }
        let guest = self.guest_name(out);
        let why = format!(
            "*** your name {} was also taken on another server while the cluster was split; you are now {guest}",
            self.clients[i].who.name()
        );
        self.rename(id, i, &guest, 0, Some(&why), out);
    }

    /// Gives local client `i` the name `wanted`, claimed at `since`, and
    /// tells it so (`notice`, or the usual line) and its room.
    pub(super) fn rename(
        &mut self,
        id: ClientId,
        i: Member,
        wanted: &str,
        since: u64,
        notice: Option<&str>,
        out: &mut impl Outbox,
    ) {
        let old = self.set_name(i, wanted);
        self.clients[i].who.since = since;
        match notice {
            Some(text) => reply(out, id, text),
            None => reply(out, id, &format!("*** you are now {wanted}")),
        }
        if let Some(c) = &self.cluster {
            out.cluster(ClusterOp::Presence(Presence::Renamed {
                node: c.node.clone(),
                id: id.0 as u64,
                name: wanted.to_string(),
            }));
        }
        self.announce_everywhere(i, &format!("*** {old} is now {wanted}"), out);
    }

    /// User `i` (local or remote) is now called `name`, and holds it in
    /// `names`; returns the name it had.
    pub(super) fn set_name(&mut self, i: Member, name: &str) -> Box<str> {
        let who = &mut self.clients[i].who;
        let old = std::mem::replace(&mut who.name, name.into());
        let old_key = std::mem::replace(&mut who.key, name.to_ascii_lowercase().into());
        self.name_drop(&old_key, i);
        let key = self.clients[i].who.key.clone();
        self.name_add(&key, i);
        old
    }
}

/// Names and rooms: 1 to 24 of letters, digits, '-', '_', '.'.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_NAME {
        return Err(format!("at most {MAX_NAME} characters"));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{bad:?} is not allowed; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}
