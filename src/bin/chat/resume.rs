//! Where the client stands in each room it is in, so that a reconnect
//! brings it back into every one of them and shows what each said
//! meanwhile exactly once.
//!
//! chat turns ids on (`/ids on`) as the first thing on every connection:
//! room lines then come tagged `@id=EPOCH-N;room=games <alice> hi`,
//! entering a room ends with `*** ids on: #room at EPOCH-N` (the last line
//! said there so far), and the client remembers, per room, the last id it
//! was shown. It also follows which rooms it is in (`*** you joined`,
//! `*** you left`, a room's kick) and which one is current. After a
//! reconnect it sends, for each room in the order it joined them, `/join
//! ROOM` (which makes it current) then `/history since ID` (which answers
//! for the current room); `/part #lobby` if it had left the lobby, and
//! `/join` of the room that was current last. Until a room's answer has
//! come, what the answer covers is hidden (the lobby's replay on
//! connecting, each room's replay on joining, live lines of the room), so
//! each line shows once and in order. On a first connection everything is
//! shown: there is nothing to repeat. Tags are never printed; the `[#room] `
//! the server puts in front of lines of rooms other than the current one
//! is. Pure: lines in, lines out.

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

/// A line's tags: its id and the key of its room (`games`), if it has them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tags<'a> {
    pub id: Option<Id>,
    pub room: Option<&'a str>,
}

/// `@id=1-2;room=games rest` -> (its tags, "rest"); untagged lines unchanged.
pub fn tags(line: &str) -> (Tags<'_>, &str) {
    let Some(tagged) = line.strip_prefix('@') else {
        return (Tags::default(), line);
    };
    let Some((list, rest)) = tagged.split_once(' ') else {
        return (Tags::default(), line);
    };
    let mut t = Tags::default();
    for tag in list.split(';') {
        if let Some(id) = tag.strip_prefix("id=") {
            t.id = Id::parse(id);
        } else if let Some(room) = tag.strip_prefix("room=") {
            t.room = Some(room).filter(|r| !r.is_empty());
        }
    }
    (t, rest)
}

/// `@id=1-2;ms=3 rest` -> (Some(1-2), "rest"); untagged lines unchanged.
pub fn untag(line: &str) -> (Option<Id>, &str) {
    let (t, rest) = tags(line);
    (t.id, rest)
}

/// `[#games] rest` -> (Some("#games"), "rest"): the server's mark on a line
/// of a room that is not the current one.
pub fn room_prefix(line: &str) -> (Option<&str>, &str) {
    if let Some(inner) = line.strip_prefix("[#")
        && let Some(end) = inner.find("] ")
        && !inner[..end].contains(char::is_whitespace)
    {
        return (Some(&line[1..end + 2]), &inner[end + 2..]);
    }
    (None, line)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Block {
    Show,
    Skip,
}

const LOBBY: &str = "#lobby";

#[derive(Default, Debug)]
pub struct Tracker {
    name: String,
    /// The rooms we are in, in the order we joined them: (lowercased key
    /// `#games`, the name as the server shows it `#Games`).
    rooms: Vec<(String, String)>,
    /// The server's current room (key), where unmarked lines belong.
    current: String,
    last: HashMap<String, Id>,
    /// The server confirmed `/ids on` on this connection.
    ids_on: bool,
    /// After a reconnect: the rooms whose `/history since` answer is
    /// awaited, in the order asked.
    pending: Vec<String>,
    /// Inside a history block: shown or not, and its room.
    block: Option<(Block, String)>,
}

fn is_room_line(text: &str) -> bool {
    text.starts_with('<') || (text.starts_with("* ") && !text.starts_with("*** "))
}

/// `#Games` -> `#games`.
fn key(room: &str) -> String {
    room.to_lowercase()
}

impl Tracker {
    /// A new connection: what to send before anything else.
    pub fn connected(&mut self) -> &'static str {
        self.ids_on = false;
        self.pending.clear();
        self.block = None;
        "/ids on"
    }

    /// After `/nick` has been re-sent on a new connection: the lines that
    /// bring us back into every room we were in, each followed by the
    /// request for what was missed there (if we know where we stood), and
    /// the current room made current again. Nothing on a first connection.
    pub fn resume(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let want = self.current.clone();
        // A new connection starts in the lobby, current.
        let mut current = LOBBY.to_string();
        for (k, shown) in &self.rooms {
            if *k != current {
                out.push(format!("/join {shown}"));
                current = k.clone();
            }
            if let Some(last) = self.last.get(k) {
                out.push(format!("/history since {last}"));
                self.pending.push(k.clone());
            }
        }
        if !self.rooms.is_empty() && !self.is_in(LOBBY) {
            out.push(format!("/part {LOBBY}"));
        }
        if !want.is_empty()
            && want != current
            && let Some((_, shown)) = self.rooms.iter().find(|(k, _)| *k == want)
        {
            out.push(format!("/join {shown}"));
        }
        out
    }

    fn is_in(&self, room: &str) -> bool {
        self.rooms.iter().any(|(k, _)| k == room)
    }

    fn entered(&mut self, shown: &str) {
        let k = key(shown);
        if !self.is_in(&k) {
            self.rooms.push((k.clone(), shown.to_string()));
        }
        self.current = k;
    }

    fn left(&mut self, shown: &str) {
        let k = key(shown);
        self.rooms.retain(|(r, _)| *r != k);
        self.pending.retain(|r| *r != k);
        if self.current == k {
            self.current.clear();
        }
    }

    /// A room's answer has come (or will not).
    fn answered(&mut self, room: &str) -> bool {
        let before = self.pending.len();
        self.pending.retain(|r| r != room);
        self.pending.len() < before
    }

    fn newer(&self, room: &str, id: Id) -> bool {
        self.last.get(room).is_none_or(|&l| id.after(l))
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
        if let Some((block, room)) = self.block.clone() {
            if line == "*** end of history" {
                self.block = None;
                return (block == Block::Show).then(|| line.to_string());
            }
            if block == Block::Skip {
                return None;
            }
            let (id, text) = untag(line);
            if let Some(id) = id {
                if !self.newer(&room, id) {
                    return None;
                }
                self.seen(&room, id);
            }
            return Some(text.to_string());
        }
        if let Some(rest) = line.strip_prefix("*** history of ") {
            let room = key(rest.split([' ', ':']).next().unwrap_or(""));
            let is_header = line.ends_with("):");
            if !is_header {
                // "#room: empty", "...: nothing new since ID", "...: off".
                if self.answered(&room) {
                    return None;
                }
                return Some(line.to_string());
            }
            let since = rest.split(" (").next().unwrap_or("").contains(" since ");
            let block = if since && self.ids_on {
                self.answered(&room);
                Block::Show
            } else if !self.pending.is_empty() {
                // The lobby's replay on connect or a room's join replay:
                // the answers awaited cover what they hold.
                Block::Skip
            } else {
                Block::Show
            };
            self.block = Some((block, room));
            return (block == Block::Show).then(|| line.to_string());
        }
        if let Some(rest) = line.strip_prefix("*** ids on: ") {
            self.ids_on = true;
            if let Some((room, id)) = rest.split_once(" at ")
                && let Some(id) = Id::parse(id)
            {
                let room = key(room);
                if !self.pending.contains(&room) {
                    self.seen(&room, id);
                }
            }
            return None;
        }
        let (tags, text) = tags(line);
        let (marked, bare) = room_prefix(text);
        if let Some(rest) = bare.strip_prefix("*** welcome to chatd, ") {
            if let Some((name, after)) = rest.split_once('!') {
                self.name = name.to_string();
                if let Some(room) = after.strip_prefix(" you are in ") {
                    let room = room.split([' ', ';']).next().unwrap_or("");
                    self.current = key(room);
                    // A reconnect keeps the rooms it is about to rejoin.
                    if self.rooms.is_empty() {
                        self.entered(room);
                    }
                }
            }
        } else if let Some(name) = bare.strip_prefix("*** you are now ") {
            self.name = name.to_string();
        } else if let Some(rest) = bare.strip_prefix("*** you joined ") {
            self.entered(rest.split(' ').next().unwrap_or(""));
        } else if let Some(rest) = bare.strip_prefix("*** now talking in ") {
            self.current = key(rest);
        } else if let Some(rest) = bare.strip_prefix("*** you left ") {
            let (room, then) = rest.split_once("; ").unwrap_or((rest, ""));
            self.left(room);
            if let Some(next) = then.strip_prefix("now talking in ") {
                self.current = key(next);
            }
        } else if bare.starts_with("*** you are in no room now") {
            self.current.clear();
        } else if !self.name.is_empty()
            && let Some(rest) = bare
                .strip_prefix("*** ")
                .and_then(|r| r.strip_prefix(self.name.as_str()))
                .and_then(|r| r.strip_prefix(" was kicked from "))
        {
            self.left(rest.split(' ').next().unwrap_or(""));
        } else if line == "*** ids off" {
            self.ids_on = false;
        } else if line.starts_with("*** error: ")
            && (line.contains("/history") || line.contains("in no room"))
            && !self.pending.is_empty()
        {
            // A resume that will get no answer of its own.
            self.pending.remove(0);
        }
        let room = match (tags.room, marked) {
            (Some(r), _) => format!("#{r}"),
            (None, Some(r)) => key(r),
            (None, None) => self.current.clone(),
        };
        if let Some(id) = tags.id {
            let rejoining = !self.pending.is_empty();
            if self.pending.contains(&room)
                || (rejoining && !self.is_in(&room))
                || !self.newer(&room, id)
            {
                return None;
            }
            self.seen(&room, id);
            if self.own(bare) {
                // Typed here, and already on screen (or, scripted, not
                // printed before ids either).
                return None;
            }
        } else if !self.pending.is_empty() && is_room_line(bare) {
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
        assert_eq!(t.resume(), ["/history since 5-4"]);
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
        // In the set model joining #games kept the lobby: both are resumed.
        assert_eq!(
            t.resume(),
            ["/history since 5-0", "/join #Games", "/history since 7-3"]
        );
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

    #[test]
    fn every_room_is_rejoined_and_resumed_once_and_the_current_one_restored() {
        let mut t = Tracker::default();
        t.connected();
        let shown = feed(
            &mut t,
            &[
                "*** welcome to chatd, bo! you are in #lobby with 1 other user online",
                "*** ids on: #lobby at 5-2",
                "*** you joined #games (2): @a, bo",
                "*** ids on: #games at 7-1",
                "@id=7-2;room=games <a> g2",
                "@id=5-3;room=lobby [#lobby] <a> l3",
                "*** now talking in #lobby",
                "@id=7-3;room=games [#games] <a> g3",
            ],
        );
        assert_eq!(
            shown[1..],
            [
                "*** you joined #games (2): @a, bo",
                "<a> g2",
                "[#lobby] <a> l3",
                "*** now talking in #lobby",
                "[#games] <a> g3",
            ]
        );
        t.connected();
        assert_eq!(
            t.resume(),
            [
                "/history since 5-3",
                "/join #games",
                "/history since 7-3",
                "/join #lobby"
            ]
        );
        let shown = feed(
            &mut t,
            &[
                "*** welcome to chatd, guest-9! you are in #lobby with 1 other user online",
                "*** history of #lobby (1 line, times UTC):",
                "[12:00] <a> l3",
                "*** end of history",
                "<x> live before ids",
                "*** ids on: #lobby at 5-5",
                "*** you are now bo",
                "*** history of #lobby since 5-3 (2 lines, times UTC):",
                "@id=5-4;ms=1 [12:00] <a> l4",
                "@id=5-5;ms=1 [12:00] <x> live before ids",
                "*** end of history",
                "*** you joined #games (2): a, bo",
                "*** history of #games (2 lines, times UTC):",
                "@id=7-2;ms=1 [12:00] <a> g2",
                "@id=7-3;ms=1 [12:00] <a> g3",
                "*** end of history",
                "*** ids on: #games at 7-4",
                "@id=5-6;room=lobby [#lobby] <a> l6",
                "@id=7-4;room=games <a> g4",
                "*** history of #games since 7-3 (1 line, times UTC):",
                "@id=7-4;ms=1 [12:00] <a> g4",
                "*** end of history",
                "*** now talking in #lobby",
                "@id=7-4;room=games [#games] <a> g4",
                "@id=7-5;room=games [#games] <a> g5",
                "@id=5-6;room=lobby <a> l6",
                "@id=5-7;room=lobby <a> l7",
            ],
        );
        assert_eq!(
            shown,
            [
                "*** welcome to chatd, guest-9! you are in #lobby with 1 other user online",
                "*** you are now bo",
                "*** history of #lobby since 5-3 (2 lines, times UTC):",
                "[12:00] <a> l4",
                "[12:00] <x> live before ids",
                "*** end of history",
                "*** you joined #games (2): a, bo",
                "[#lobby] <a> l6",
                "*** history of #games since 7-3 (1 line, times UTC):",
                "[12:00] <a> g4",
                "*** end of history",
                "*** now talking in #lobby",
                "[#games] <a> g5",
                "<a> l7",
            ]
        );
        // Parting the lobby (by hand or by an operator's kick) is kept too.
        feed(
            &mut t,
            &[
                "*** you left #lobby; now talking in #games",
                "*** you joined #cards (1): @bo",
                "*** ids on: #cards at 9-0",
                "[#cards] *** bo was kicked from #cards by op (spam)",
                "*** now talking in #games",
            ],
        );
        t.connected();
        assert_eq!(
            t.resume(),
            ["/join #games", "/history since 7-5", "/part #lobby"]
        );
    }

    #[test]
    fn room_marks_and_tags_are_read() {
        assert_eq!(room_prefix("[#games] <a> hi"), (Some("#games"), "<a> hi"));
        assert_eq!(room_prefix("[12:00] <a> hi"), (None, "[12:00] <a> hi"));
        assert_eq!(room_prefix("<a> [#x] hi"), (None, "<a> [#x] hi"));
        let (t, rest) = tags("@id=5-7;room=games [#games] <a> hi");
        assert_eq!(t.id, Some(Id { epoch: 5, n: 7 }));
        assert_eq!((t.room, rest), (Some("games"), "[#games] <a> hi"));
    }
}
