//! Room history: what a room said is numbered and kept (by the hub's
//! [`History`] on one server, by Redis in cluster mode), replayed to a
//! client entering the room, answered to `/history`, and tagged with its
//! id for clients with `/ids on`. Who gets the lines is rooms.rs's
//! (`Hub::fan_out`).

use super::*;

/// What a client asked of the cluster's history (see [`ClusterOp::History`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Entering a room: its last --history-on-join lines, then (with ids)
    /// where the client stands.
    Enter,
    /// `/ids on`: only where the client stands.
    Mark,
    /// `/history N`.
    Last(usize),
    /// `/history since ID`.
    Since(Id),
}

/// The most room lines held for a client while its history is fetched (an
/// answer comes within a round trip to Redis; a room that says more
/// meanwhile loses the oldest, and the client is told how many).
pub(super) const MAX_HELD: usize = 1024;

/// What room history keeps track of for one user (a remote user's stays
/// as it starts).
#[derive(Default)]
pub(super) struct Resume {
    /// `/ids on`: room lines and history reach it tagged with their id,
    /// its own come back to it, and entering a room ends with the room's
    /// last id (see [`Hub::mark`]).
    ids: bool,
    /// Cluster mode: its last line could not go to Redis (it was told).
    refused: bool,
    /// Cluster mode: history answers awaited from Redis, and the room lines
    /// held back meanwhile so they come after the history, not before.
    wait: Option<Box<Wait>>,
}

impl Resume {
    pub(super) fn ids(&self) -> bool {
        self.ids
    }

    /// Cluster mode: a history answer is awaited from Redis.
    pub(super) fn awaits(&self) -> bool {
        self.wait.is_some()
    }

    /// Holds room lines numbered `at` (`msg`) while a history answer is
    /// awaited (past MAX_HELD the oldest held go, counted); false if none
    /// is awaited, and the lines can go now.
    pub(super) fn hold(&mut self, room: &str, at: Numbered, msg: &Rc<Msg>) -> bool {
        let Some(w) = self.wait.as_mut() else {
            return false;
        };
        if w.held.len() >= MAX_HELD
            && let Some((.., n, _)) = w.held.pop_front()
        {
            w.lost += n;
        }
        w.held
            .push_back((room.into(), at.first, at.count, msg.clone()));
        true
    }
}

#[derive(Default)]
struct Wait {
    pending: u32,
    /// (room key, first id, lines, the buffer).
    held: VecDeque<(Box<str>, Id, u64, Rc<Msg>)>,
    lost: u64,
    /// The ids the answers showed, per room: held lines among them are
    /// not sent again.
    covered: Vec<(Box<str>, Id, Id)>,
}

/// Where a batch of room lines stands in its room's numbering: the first
/// one's id, and how many there are.
#[derive(Clone, Copy)]
pub(super) struct Numbered {
    pub(super) first: Id,
    pub(super) count: u64,
}

impl Hub {
    /// History bounds (--history, --history-bytes, --history-ttl) and the
    /// lines replayed on entering a room (--history-on-join).
    pub fn with_history(mut self, limits: history::Limits, on_join: usize) -> Hub {
        self.history = History::new(limits);
        self.on_join = on_join;
        self
    }

    /// The most bytes one history answer may take.
    pub fn with_reply_max(mut self, bytes: usize) -> Hub {
        self.reply_max = bytes;
        self
    }

    /// The wall clock for this turn, ms since the Unix epoch; forgets the
    /// history of rooms empty for longer than --history-ttl.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.history.expire(now_ms);
    }

    /// History lines held, over all rooms.
    pub fn history_lines(&self) -> usize {
        self.history.lines()
    }

    /// History bytes held (charged as for --history-bytes).
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// Local user `i`'s id if Redis keeps the room history it sees:
    /// cluster mode with the link up.
    fn redis_for(&self, i: Member) -> Option<ClientId> {
        let up = self.cluster.as_ref().is_some_and(|c| c.up);
        self.clients[i].who.local().filter(|_| up)
    }

    /// Cluster mode, link up: room lines from local user `i` go to Redis,
    /// which numbers them, keeps them, and hands them back to every
    /// instance, this one included (see `said`), or are refused (see
    /// `say_refused`). True if they went that way; false if this instance
    /// numbers them itself.
    pub(super) fn numbered_by_redis(
        &mut self,
        room: usize,
        i: Member,
        lines: &str,
        out: &mut impl Outbox,
    ) -> bool {
        let Some(from) = self.redis_for(i) else {
            return false;
        };
        let limits = self.history.limits();
        out.cluster(ClusterOp::Say {
            room: self.rooms[room].key.clone(),
            from,
            lines: lines.to_string(),
            keep: limits.per_room,
            ttl_ms: limits.ttl_ms,
        });
        true
    }

    /// The link could not take local client `id`'s lines (the queue
    /// toward Redis is full): told once per run of refused lines, not once
    /// per line; the run ends when a line of its comes back numbered.
    pub fn say_refused(&mut self, id: ClientId, out: &mut impl Outbox) {
        let Some(i) = self.idx(id) else { return };
        let c = &mut self.clients[i].resume;
        if !std::mem::replace(&mut c.refused, true) {
            reply(
                out,
                id,
                "*** error: the cluster is too busy; your lines are not sent until this error stops",
            );
        }
    }

    /// Room lines said here (`lines`: one, or several joined by CRLF),
    /// numbered and kept in `room`'s history.
    pub(super) fn number(&mut self, room: usize, lines: &str) -> Numbered {
        let hist = self.rooms[room].hist;
        let (mut first, mut count) = (None, 0);
        for line in lines.split("\r\n") {
            let id = self.history.push(hist, self.now_ms, line);
            first.get_or_insert(id);
            count += 1;
        }
        Numbered {
            first: first.unwrap_or(Id { epoch: 0, n: 0 }),
            count,
        }
    }

    /// The last --history-on-join lines of `room`, for client `i` that just
    /// entered it; with ids, then the room's last id.
    pub(super) fn replay(&mut self, id: ClientId, i: Member, room: usize, out: &mut impl Outbox) {
        let ids = self.clients[i].resume.ids;
        if (self.on_join > 0 || ids) && self.ask(i, room, Asked::Enter, None, self.on_join, out) {
            return;
        }
        let kept = self.history.kept(self.rooms[room].hist).len();
        if self.on_join > 0 && kept > 0 {
            let from = kept.saturating_sub(self.on_join);
            let text = self.history_answer(room, from, ids, Ask::Last);
            out.send(id, &Msg::new(&text));
        }
        if ids {
            self.mark(id, room, out);
        }
    }

    /// `*** ids on: #lobby at EPOCH-N`: the id of the last line said in the
    /// room so far (N = 0 before the first). A client with ids has been
    /// shown, or was not there for, everything up to it, and every room
    /// line after it reaches it tagged: so it always knows where to resume.
    pub(super) fn mark(&self, id: ClientId, room: usize, out: &mut impl Outbox) {
        let r = &self.rooms[room];
        let head = self.history.head(r.hist).unwrap_or(Id { epoch: 0, n: 1 });
        let last = Id {
            epoch: head.epoch,
            n: head.n - 1,
        };
        reply(out, id, &format!("*** ids on: {} at {last}", r.name));
    }

    /// `/ids on|off` (`/ids` alone: as it is).
    pub(super) fn ids_command(
        &mut self,
        id: ClientId,
        i: Member,
        arg: &str,
        out: &mut impl Outbox,
    ) {
        let on = match arg.to_ascii_lowercase().as_str() {
            "on" => true,
            "off" => false,
            "" => self.clients[i].resume.ids,
            _ => return reply(out, id, "*** error: usage: /ids on|off"),
        };
        self.clients[i].resume.ids = on;
        if on {
            // Where it stands in each of its rooms, so it can resume each.
            let rooms: Vec<usize> = self.clients[i].seat.rooms().collect();
            if rooms.is_empty() {
                reply(out, id, "*** ids on");
            }
            for room in rooms {
                if !self.ask(i, room, Asked::Mark, None, 0, out) {
                    self.mark(id, room, out);
                }
            }
        } else {
            reply(out, id, "*** ids off");
        }
    }

    /// `/history`, `/history N`, `/history since ID`.
    pub(super) fn history_command(
        &mut self,
        id: ClientId,
        i: Member,
        rest: &str,
        out: &mut impl Outbox,
    ) {
        const USAGE: &str = "*** error: usage: /history [N] or /history since ID";
        let ids = self.clients[i].resume.ids;
        let Some(room) = self.clients[i].seat.current() else {
            return reply(out, id, NO_ROOM);
        };
        let r = &self.rooms[room];
        let (word, arg) = split_word(rest);
        // Ok(n): the last n lines; Err(id): the lines after id.
        let ask: Result<usize, Id> = if rest.is_empty() {
            Ok(if self.on_join > 0 { self.on_join } else { 20 })
        } else if word.eq_ignore_ascii_case("since") {
            match arg.trim().parse::<Id>() {
                Ok(since) => Err(since),
                Err(()) => return reply(out, id, USAGE),
            }
        } else {
            match rest.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => return reply(out, id, USAGE),
            }
        };
        if self.history.limits().per_room == 0 {
            let text = format!("*** history of {}: off on this server", r.name);
            return reply(out, id, &text);
        }
        let keep = self.history.limits().per_room;
        let asked = match ask {
            Ok(n) => self.ask(i, room, Asked::Last(n), None, n.min(keep), out),
            Err(since) => self.ask(i, room, Asked::Since(since), Some(since), keep, out),
        };
        if asked {
            return;
        }
        let r = &self.rooms[room];
        match &self.cluster {
            Some(c) if c.up => {
                return reply(
                    out,
                    id,
                    "*** error: the cluster is busy; try /history again in a moment",
                );
            }
            // The cluster's history is in Redis, out of reach now.
            Some(_) => reply(
                out,
                id,
                "*** the cluster link is down: this is only what was said on this server meanwhile",
            ),
            None => {}
        }
        let kept = self.history.kept(r.hist).len();
        let text = match ask {
            Ok(n) => self.history_answer(room, kept.saturating_sub(n), ids, Ask::Last),
            Err(since) => match self.history.since(r.hist, since) {
                Since::Kept { from, evicted } => {
                    self.history_answer(room, from, ids, Ask::Resume(since, evicted))
                }
                // Epochs never repeat across rooms: one that another
                // room's record has is a mix-up, not a restart.
                Since::Lost if self.history.has_epoch(since.epoch) => {
                    self.history_answer(room, 0, ids, Ask::Elsewhere(since))
                }
                Since::Lost => self.history_answer(room, 0, ids, Ask::Lost(since)),
            },
        };
        out.send(id, &Msg::new(&text));
    }

    /// One history answer from this instance's own history: the kept
    /// lines of `room` from index `from` on.
    pub(super) fn history_answer(&self, room: usize, from: usize, ids: bool, ask: Ask) -> String {
        let r = &self.rooms[room];
        let kept = self.history.kept(r.hist);
        let epoch = self.history.head(r.hist).map_or(0, |h| h.epoch);
        let lines: Vec<&history::Line> = kept.range(from.min(kept.len())..).collect();
        render_answer(&r.name, epoch, &lines, ids, ask, self.reply_max, 0).0
    }

    /// Cluster mode, link up: asks Redis for `room`'s history for client
    /// `i` and holds its room lines until the answer; false (nothing asked)
    /// otherwise, and the caller answers from this instance's own history.
    pub(super) fn ask(
        &mut self,
        i: Member,
        room: usize,
        asked: Asked,
        after: Option<Id>,
        count: usize,
        out: &mut impl Outbox,
    ) -> bool {
        let Some(cid) = self.redis_for(i) else {
            return false;
        };
        out.cluster(ClusterOp::History {
            id: cid,
            room: self.rooms[room].key.clone(),
            asked,
            after,
            count,
        });
        self.clients[i].resume.wait.get_or_insert_default().pending += 1;
        true
    }

    /// Room lines numbered by Redis (see `numbered_by_redis`), for the
    /// local members of `room` (see `fan_out`), held for those awaiting
    /// their history. `from`: our local client who said them, who gets them
    /// back only if it has ids.
    pub fn said(
        &mut self,
        room: &str,
        first: Id,
        from: Option<ClientId>,
        text: &str,
        out: &mut impl Outbox,
    ) {
        let Some(&r) = self.room_keys.get(room) else {
            return;
        };
        let sender = from.and_then(|c| self.idx(c));
        if let Some(i) = sender {
            // Its lines go through again: a later refusal is a new run.
            self.clients[i].resume.refused = false;
        }
        let count = text.split("\r\n").count() as u64;
        self.rooms[r].last_id = Some(Id {
            epoch: first.epoch,
            n: first.n + count.saturating_sub(1),
        });
        self.fan_out(r, sender, text, Numbered { first, count }, true, out);
    }

    /// Redis's answer to [`ClusterOp::History`] for local client `id`: the
    /// room's epoch and last N, and its lines (oldest first).
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        id: ClientId,
        room: &str,
        asked: Asked,
        epoch: u64,
        last: u64,
        lines: Vec<history::Line>,
        omitted: u64,
        out: &mut impl Outbox,
    ) {
        let Some(i) = self.idx(id) else { return };
        let here = self.room_keys.get(room).copied();
        if let Some(r) = here.filter(|&r| self.clients[i].seat.is_in(r)) {
            if asked == Asked::Enter && epoch != 0 {
                let to = Id { epoch, n: last };
                let was = &mut self.rooms[r].replayed;
                if was.is_none_or(|w| w.epoch != epoch || w.n < last) {
                    *was = Some(to);
                }
            }
            let (name, ids) = (&self.rooms[r].name, self.clients[i].resume.ids);
            let refs: Vec<&history::Line> = lines.iter().collect();
            let render =
                |ask, omitted| render_answer(name, epoch, &refs, ids, ask, self.reply_max, omitted);
            // Lines Redis left out (too long, or past its answer's budget)
            // are older ones for a replay or `/history N`; for a resume they
            // are counted as missed from `last` already.
            let answer = match asked {
                Asked::Enter if !refs.is_empty() => Some(render(Ask::Last, omitted)),
                Asked::Enter | Asked::Mark => None,
                Asked::Last(_) => Some(render(Ask::Last, omitted)),
                // 0-0: where a client stands in a room that had no lines yet.
                Asked::Since(since)
                    if epoch != 0 && (since.epoch == epoch || since == Id { epoch: 0, n: 0 }) =>
                {
                    let after = if since.epoch == epoch { since.n } else { 0 };
                    let total = last.saturating_sub(after);
                    let evicted = total.saturating_sub(refs.len() as u64);
                    Some(render(Ask::Resume(since, evicted), 0))
                }
                Asked::Since(since) if epoch == 0 && since.n == 0 => Some((
                    format!("*** history of {name}: nothing new since {since}"),
                    0,
                )),
                // As on one server: an epoch another room here was numbered
                // in is a mix-up, not a restart.
                Asked::Since(since)
                    if self.rooms.iter().any(|(k, o)| {
                        k != r && o.last_id.is_some_and(|l| l.epoch == since.epoch)
                    }) =>
                {
                    Some(render(Ask::Elsewhere(since), 0))
                }
                Asked::Since(since) => Some(render(Ask::Lost(since), 0)),
            };
            // The ids shown: the newest `shown` of the lines.
            let covered = match &answer {
                Some((_, shown)) if *shown > 0 => Some((
                    Id {
                        epoch,
                        n: refs[refs.len() - shown].n,
                    },
                    Id {
                        epoch,
                        n: refs[refs.len() - 1].n,
                    },
                )),
                _ => None,
            };
            if let Some((text, _)) = answer {
                out.send(id, &Msg::new(&text));
            }
            let key = self.rooms[r].key.clone();
            if ids && matches!(asked, Asked::Enter | Asked::Mark) {
                // Where the client stands: after what it was shown, before
                // what is held for it or still on its way here (Redis may
                // have numbered lines this instance has not delivered yet).
                let mark = match covered {
                    Some((_, hi)) => hi,
                    None => {
                        let mut n = last;
                        let held = self.clients[i].resume.wait.as_ref().and_then(|w| {
                            w.held
                                .iter()
                                .find(|(k, f, ..)| *k == key && f.epoch == epoch)
                                .map(|(_, f, ..)| f.n)
                        });
                        if let Some(first) = held {
                            n = n.min(first.saturating_sub(1));
                        }
                        // Never past what reached this instance: the lines
                        // it delivered, or a join replay covered. Redis
                        // may have numbered lines still on their way here
                        // (said just before); a mark past them would make
                        // the client take them for lines it has seen.
                        let room = &self.rooms[r];
                        let known = [room.last_id, room.replayed]
                            .into_iter()
                            .flatten()
                            .filter(|l| l.epoch == epoch)
                            .map(|l| l.n)
                            .max()
                            .unwrap_or(0);
                        Id {
                            epoch,
                            n: n.min(known),
                        }
                    }
                };
                reply(out, id, &format!("*** ids on: {name} at {mark}"));
            }
            if let (Some(w), Some((lo, hi))) = (self.clients[i].resume.wait.as_mut(), covered) {
                w.covered.push((key, lo, hi));
            }
        }
        let done = self.clients[i].resume.wait.as_mut().is_none_or(|w| {
            w.pending = w.pending.saturating_sub(1);
            w.pending == 0
        });
        if done {
            self.release_held(i, out);
        }
    }

    /// Sends what was held for client `i` while its history was fetched:
    /// only lines of rooms it is still in, and not those the answer had.
    pub(super) fn release_held(&mut self, i: Member, out: &mut impl Outbox) {
        let c = &mut self.clients[i];
        let (Some(w), Some(id)) = (c.resume.wait.take(), c.who.local()) else {
            return;
        };
        if w.lost > 0 {
            let text = format!(
                "*** {} missed while your history was fetched",
                plural(w.lost, "line") + if w.lost == 1 { " was" } else { " were" }
            );
            reply(out, id, &text);
        }
        let seat = &self.clients[i].seat;
        let rooms: Vec<&str> = seat.rooms().map(|r| &*self.rooms[r].key).collect();
        let shown = |key: &str, n: Id| {
            w.covered.iter().any(|(k, lo, hi)| {
                **k == *key && lo.epoch == n.epoch && (lo.n..=hi.n).contains(&n.n)
            })
        };
        for (key, first, count, msg) in &w.held {
            if !rooms.contains(&&**key) {
                continue;
            }
            let id_of = |k: u64| Id {
                epoch: first.epoch,
                n: first.n + k,
            };
            let dups = (0..*count).filter(|&k| shown(key, id_of(k))).count() as u64;
            if dups == 0 {
                out.send(id, msg);
            } else if dups < *count {
                let rest: Vec<&str> = msg
                    .text()
                    .split("\r\n")
                    .enumerate()
                    .filter(|&(k, _)| !shown(key, id_of(k as u64)))
                    .map(|(_, l)| l)
                    .collect();
                out.send(id, &Msg::new(&rest.join("\r\n")));
            }
        }
    }

    /// Redis refused local client `id`'s line (`sure`), or the link went
    /// down before Redis confirmed it: the client is told.
    pub fn not_said(&self, id: ClientId, sure: bool, out: &mut impl Outbox) {
        if self.idx(id).is_some() {
            let text = if sure {
                "*** error: the cluster could not take that line; it was not sent"
            } else {
                "*** error: the cluster link went down before your last lines were confirmed; they may not have reached everyone"
            };
            reply(out, id, text);
        }
    }
}

/// What a history answer answers.
#[derive(Clone, Copy)]
pub(super) enum Ask {
    /// The last lines: a join replay or `/history N`.
    Last,
    /// `/history since ID` with the same record; how many lines after the
    /// id were evicted before the first kept one.
    Resume(Id, u64),
    /// `/history since ID` from a record that is gone.
    Lost(Id),
    /// `/history since ID` with an id another room gave out.
    Elsewhere(Id),
}

/// Messages and actions, which history keeps; not notices (`*** `) nor
/// private messages (which never reach a room).
pub(super) fn is_room_line(line: &str) -> bool {
    line.starts_with('<') || (line.starts_with("* ") && !line.starts_with("*** "))
}

/// One history answer, as one buffer: `lines` (oldest first), the newest
/// of them as far as `reply_max` bytes allow, framed by a header and an end
/// line, and preceded by what was missed; `omitted`: lines left out before
/// they got here (by Redis), told with those left out here.
pub(super) fn render_answer(
    name: &str,
    epoch: u64,
    kept: &[&history::Line],
    ids: bool,
    ask: Ask,
    reply_max: usize,
    omitted: u64,
) -> (String, usize) {
    let mut lines = Vec::new();
    let mut bytes = 0;
    for l in kept.iter().rev() {
        let line = history_line(l, epoch, ids);
        bytes += line.len() + 2;
        if bytes > reply_max {
            break;
        }
        lines.push(line);
    }
    let left_out = (kept.len() - lines.len()) as u64 + omitted;
    let shown = lines.len();
    let mut text = String::new();
    match ask {
        Ask::Resume(_, evicted) if left_out + evicted > 0 => text.push_str(&format!(
            "*** {} missed; showing the last {shown}\r\n",
            plural(left_out + evicted, "line")
                + if left_out + evicted == 1 {
                    " was"
                } else {
                    " were"
                },
        )),
        Ask::Lost(since) => text.push_str(&format!(
            "*** the history since {since} is gone (the server restarted, or the room was empty for too long); {}\r\n", if shown == 0 { "nothing was said since".to_string() } else { format!("showing the last {shown}") }
        )),
        Ask::Elsewhere(since) => text.push_str(&format!(
            "*** {since} is an id of another room, not of {name}; {}\r\n",
            if shown == 0 {
                "nothing to show".to_string()
            } else {
                format!("showing the last {shown}")
            }
        )),
        _ if left_out > 0 => text.push_str(&format!(
            "*** {} left out: too long to send at once\r\n",
            plural(left_out, "older line")
        )),
        _ => {}
    }
    if shown == 0 {
        match ask {
            Ask::Resume(since, _) if left_out == 0 => {
                text.push_str(&format!("*** history of {name}: nothing new since {since}"))
            }
            _ => text.push_str(&format!("*** history of {name}: empty")),
        }
        return (text, 0);
    }
    let since = match ask {
        Ask::Resume(since, _) | Ask::Lost(since) => format!(" since {since}"),
        Ask::Last | Ask::Elsewhere(_) => String::new(),
    };
    text.push_str(&format!(
        "*** history of {name}{since} ({}, times UTC):",
        plural(shown as u64, "line")
    ));
    for line in lines.iter().rev() {
        text.push_str("\r\n");
        text.push_str(line);
    }
    text.push_str("\r\n*** end of history");
    (text, shown)
}

/// `@id=EPOCH-N;room=games <alice> hi` for each line of a batch of room
/// `key` numbered from `first`, with `[#games] ` after the tag (`other`)
/// for a recipient whose current room it is not.
pub(super) fn tag_lines(lines: &str, first: Id, key: &str, other: Option<&str>) -> String {
    let mut out = String::with_capacity(lines.len() + 48);
    for (k, line) in lines.split("\r\n").enumerate() {
        if k > 0 {
            out.push_str("\r\n");
        }
        let id = Id {
            epoch: first.epoch,
            n: first.n + k as u64,
        };
        out.push_str(&format!("@id={id};room={key} "));
        if let Some(name) = other {
            out.push('[');
            out.push_str(name);
            out.push_str("] ");
        }
        out.push_str(line);
    }
    out
}

/// `[12:03] <alice> hi`, or with ids `@id=EPOCH-N;ms=UNIXMS [12:03] <alice> hi`;
/// the time is UTC.
pub(super) fn history_line(l: &history::Line, epoch: u64, ids: bool) -> String {
    let secs = l.ms / 1000 % 86400;
    let (h, m) = (secs / 3600, secs / 60 % 60);
    if ids {
        format!("@id={epoch}-{};ms={} [{h:02}:{m:02}] {}", l.n, l.ms, l.text)
    } else {
        format!("[{h:02}:{m:02}] {}", l.text)
    }
}
