//! Where the client stands in each room's history, so that a reconnect
//! shows what was said meanwhile exactly once.
//!
//! chat turns ids on (`/ids on`) as the first thing on every connection:
//! room lines then come tagged `@id=EPOCH-N <alice> hi`, entering a room
//! ends with `*** ids on: #room at EPOCH-N` (the last line said there so
//! far), and the client remembers the last id it was shown per room. After
//! a reconnect it re-sends `/nick` and `/join` and then asks
//! `/history since ID`; until that answer is over it hides what the answer
//! covers (the lobby replay before ids were on, the room's join replay, and
//! live lines), so each line shows once and in order. On a first
//! connection everything is shown: there is nothing to repeat. Tags are
//! never printed. Pure: lines in, lines out.

use std::collections::HashMap;

/// `EPOCH-N`, compared within an epoch by N; a later epoch is a new
/// record of the room (the server restarted or forgot it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id {
    epoch: u64,
    n: u64,
}

impl Id {
    pub fn parse(s: &str) -> Option<Id> {
        let (e, n) = s.split_once('-')?;
        Some(Id {
            epoch: e.parse().ok()?,
            n: n.parse().ok()?,
        })
    }

    fn after(self, other: Id) -> bool {
        if self.epoch == other.epoch {
            self.n > other.n
        } else {
            self.epoch > other.epoch
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.n)
    }
}

/// `@id=1-2;ms=3 rest` -> (Some(1-2), "rest"); untagged lines unchanged.
pub fn untag(line: &str) -> (Option<Id>, &str) {
    let Some(tagged) = line.strip_prefix('@') else {
        return (None, line);
    };
    let Some((tags, rest)) = tagged.split_once(' ') else {
        return (None, line);
    };
    let id = tags
        .split(';')
        .find_map(|t| t.strip_prefix("id="))
        .and_then(Id::parse);
    (id, rest)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Block {
    Show,
    Skip,
}

#[derive(Default, Debug)]
pub struct Tracker {
    name: String,
    /// The room we are in, lowercased (`#lobby`).
    room: String,
    last: HashMap<String, Id>,
    /// The server confirmed `/ids on` on this connection.
    ids_on: bool,
    /// The room whose `/history since` answer is awaited.
    resuming: Option<String>,
    block: Option<Block>,
}

fn is_room_line(text: &str) -> bool {
    text.starts_with('<') || (text.starts_with("* ") && !text.starts_with("*** "))
}

impl Tracker {
    /// A new connection: what to send before anything else.
    pub fn connected(&mut self) -> &'static str {
        self.ids_on = false;
        self.resuming = None;
        self.block = None;
        "/ids on"
    }

    /// After `/nick` and `/join` have been re-sent on a new connection: the
    /// request for what was missed in the room we were in, if we know
    /// where we stood there.
    pub fn resume(&mut self) -> Option<String> {
        let last = self.last.get(&self.room)?;
        self.resuming = Some(self.room.clone());
        Some(format!("/history since {last}"))
    }

    fn newer(&self, id: Id) -> bool {
        self.last.get(&self.room).is_none_or(|&l| id.after(l))
    }

    fn seen(&mut self, room: &str, id: Id) {
        let e = self.last.entry(room.to_string()).or_insert(id);
        if id.after(*e) {
            *e = id;
        }
    }

    fn own(&self, text: &str) -> bool {
        !self.name.is_empty()
            && (text
                .strip_prefix('<')
                .and_then(|t| t.strip_prefix(self.name.as_str()))
                .is_some_and(|t| t.starts_with("> "))
                || text
                    .strip_prefix("* ")
                    .and_then(|t| t.strip_prefix(self.name.as_str()))
                    .is_some_and(|t| t.starts_with(' ')))
    }

    /// One line from the server (already made safe to print): what to
    /// print, or None to hide it.
    pub fn receive(&mut self, line: &str) -> Option<String> {
        if let Some(block) = self.block {
            if line == "*** end of history" {
                self.block = None;
                return (block == Block::Show).then(|| line.to_string());
            }
            if block == Block::Skip {
                return None;
            }
            let (id, text) = untag(line);
            if let Some(id) = id {
                if !self.newer(id) {
                    return None;
                }
                let room = self.room.clone();
                self.seen(&room, id);
            }
            return Some(text.to_string());
        }
        if let Some(rest) = line.strip_prefix("*** history of ") {
            let is_header = line.ends_with("):");
            if !is_header {
                // "#room: empty", "...: nothing new since ID", "...: off".
                if self.resuming.take().is_some() {
                    return None;
                }
                return Some(line.to_string());
            }
            let since = rest.split(" (").next().unwrap_or("").contains(" since ");
            let block = if self.resuming.is_some() && (!self.ids_on || !since) {
                // The lobby's replay on connect or the room's join replay:
                // the awaited answer covers what they hold.
                Block::Skip
            } else {
                if since {
                    self.resuming = None;
                }
                Block::Show
            };
            self.block = Some(block);
            return (block == Block::Show).then(|| line.to_string());
        }
        if let Some(rest) = line.strip_prefix("*** ids on: ") {
            self.ids_on = true;
            if let Some((room, id)) = rest.split_once(" at ")
                && let Some(id) = Id::parse(id)
            {
                let room = room.to_lowercase();
                if self.resuming.as_deref() != Some(room.as_str()) {
                    self.seen(&room, id);
                }
            }
            return None;
        }
        if let Some(rest) = line.strip_prefix("*** welcome to chatd, ") {
            if let Some((name, after)) = rest.split_once('!') {
                self.name = name.to_string();
                if let Some(room) = after.strip_prefix(" you are in ") {
                    self.room = room.split(' ').next().unwrap_or("").to_lowercase();
                }
            }
        } else if let Some(name) = line.strip_prefix("*** you are now ") {
            self.name = name.to_string();
        } else if let Some(rest) = line.strip_prefix("*** you joined ") {
            self.room = rest.split(' ').next().unwrap_or("").to_lowercase();
        } else if line == "*** ids off" {
            self.ids_on = false;
        } else if line.starts_with("*** error: ") && line.contains("/history") {
            self.resuming = None;
        }
        let (id, text) = untag(line);
        if let Some(id) = id {
            if self.resuming.is_some() || !self.newer(id) {
                return None;
            }
            let room = self.room.clone();
            self.seen(&room, id);
            if self.own(text) {
                // Typed here, and already on screen (or, scripted, not
                // printed before ids either).
                return None;
            }
        } else if self.resuming.is_some() && is_room_line(text) {
            return None;
        }
        Some(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut Tracker, lines: &[&str]) -> Vec<String> {
        lines.iter().filter_map(|l| t.receive(l)).collect()
    }

    #[test]
    fn tags_are_read_and_never_shown() {
        assert_eq!(
            untag("@id=5-7;ms=9 [12:03] <a> hi"),
            (Some(Id { epoch: 5, n: 7 }), "[12:03] <a> hi")
        );
        assert_eq!(untag("<a> hi"), (None, "<a> hi"));
        assert_eq!(untag("@nonsense"), (None, "@nonsense"));
    }

    #[test]
    fn a_first_connection_shows_everything_once_and_learns_where_it_stands() {
        let mut t = Tracker::default();
        assert_eq!(t.connected(), "/ids on");
        let shown = feed(
            &mut t,
            &[
                "*** welcome to chatd, bo! you are in #lobby with nobody else online",
                "*** history of #lobby (1 line, times UTC):",
                "[12:00] <a> old",
                "*** end of history",
                "<a> just before ids",
                "*** ids on: #lobby at 5-2",
                "@id=5-3 <a> live",
                "@id=5-4 <bo> mine",
            ],
        );
        assert_eq!(
            shown[1..],
            [
                "*** history of #lobby (1 line, times UTC):",
                "[12:00] <a> old",
                "*** end of history",
                "<a> just before ids",
                "<a> live"
            ],
            "everything but tags and one's own lines"
        );
        assert_eq!(t.resume().as_deref(), Some("/history since 5-4"));
    }

    #[test]
    fn a_reconnect_hides_what_the_resume_answer_repeats() {
        let mut t = Tracker::default();
        t.connected();
        feed(
            &mut t,
            &[
                "*** welcome to chatd, bo! you are in #lobby with nobody else online",
                "*** ids on: #lobby at 5-0",
                "*** you joined #Games (1): bo",
                "*** ids on: #games at 7-2",
                "@id=7-3 <a> seen",
            ],
        );
        t.connected();
        assert_eq!(t.resume().as_deref(), Some("/history since 7-3"));
        let shown = feed(
            &mut t,
            &[
                "*** welcome to chatd, guest-9! you are in #lobby with 1 other user online",
                "*** history of #lobby (1 line, times UTC):",
                "[12:00] <x> lobby talk",
                "*** end of history",
                "<x> lobby live before ids",
                "*** ids on: #lobby at 5-9",
                "*** you are now bo",
                "*** you joined #games (2): a, bo",
                "*** history of #games (2 lines, times UTC):",
                "@id=7-3;ms=1 [12:00] <a> seen",
                "@id=7-4;ms=1 [12:00] <a> missed",
                "*** end of history",
                "*** ids on: #games at 7-4",
                "@id=7-5 <a> live before the answer",
                "*** history of #games since 7-3 (2 lines, times UTC):",
                "@id=7-4;ms=1 [12:00] <a> missed",
                "@id=7-5;ms=2 [12:01] <a> live before the answer",
                "*** end of history",
                "@id=7-5 <a> again?",
                "@id=7-6 <a> after",
            ],
        );
        assert_eq!(
            shown,
            [
                "*** welcome to chatd, guest-9! you are in #lobby with 1 other user online",
                "*** you are now bo",
                "*** you joined #games (2): a, bo",
                "*** history of #games since 7-3 (2 lines, times UTC):",
                "[12:00] <a> missed",
                "[12:01] <a> live before the answer",
                "*** end of history",
                "<a> after",
            ]
        );
    }

    #[test]
    fn nothing_new_ends_the_resume_quietly_and_a_new_epoch_counts_as_new() {
        let mut t = Tracker::default();
        t.connected();
        feed(
            &mut t,
            &[
                "*** welcome to chatd, bo! you are in #lobby with nobody else online",
                "*** ids on: #lobby at 5-3",
            ],
        );
        t.connected();
        t.resume();
        let shown = feed(
            &mut t,
            &[
                "*** welcome to chatd, bo! you are in #lobby with nobody else online",
                "*** ids on: #lobby at 5-3",
                "*** history of #lobby: nothing new since 5-3",
                "@id=5-4 <a> next",
            ],
        );
        assert_eq!(shown[1..], ["<a> next"]);
        t.connected();
        t.resume();
        let shown = feed(
            &mut t,
            &[
                "*** ids on: #lobby at 9-1",
                "*** the history since 5-4 is gone (the server restarted, or the room was empty for too long); showing the last 1",
                "*** history of #lobby since 5-4 (1 line, times UTC):",
                "@id=9-1;ms=1 [12:00] <a> after a restart",
                "*** end of history",
            ],
        );
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(shown[2], "[12:00] <a> after a restart");
    }
}
