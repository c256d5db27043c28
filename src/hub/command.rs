//! Commands: a line beginning with `/` is parsed into a [`Command`] first,
//! then carried out.

use super::*;

const HELP: &[&str] = &[
    "*** commands:",
    "***   /nick NAME        change your name (1-24 letters, digits, - _ .)",
    "***   /who              list the people in your current room (@: its operators)",
    "***   /msg NAME text    send a private message",
    "***   /me text          say what you are doing: * alice waves",
    "***   /join ROOM        enter ROOM (created if new) and talk there; you stay in the others",
    "***   /part [ROOM] [why] leave ROOM (default: your current room)",
    "***   /rooms            list the rooms and how many are in each",
    "***   /list             the rooms with how many are in each and their topics",
    "***   /names [ROOM]     list the people in a room you are in",
    "***   /topic [text]     show or set the topic of your current room",
    "***   /whois NAME       the rooms you share, idle time, connected since, away message",
    "***   /away [message]   say you are away (/msg to you answers it); alone: back",
    "***   /stats            your queue, drops and time online; the server's load",
    "***   /history [N]      the last N lines said in your current room (times in UTC)",
    "***   /history since ID the lines said after the one with that id",
    "***   /ids on|off       room lines carry their id, yours echoed (for clients)",
    "***   /quit [reason]    leave the chat",
    "***   /help             this list",
    "***   //text            send a message that begins with /",
];

/// What /help adds for an operator of a room (its creator, or one made
/// so with /op), or of the server.
const ROOM_OPER_HELP: &[&str] = &[
    "*** room operator commands (in your current room):",
    "***   /topic lock|unlock  only the room's operators may set its topic, or anyone in it",
    "***   /op NAME          make NAME an operator of the room",
    "***   /deop NAME        NAME is no longer an operator of the room",
    "***   /kick NAME [why]  take NAME out of the room, not the server (server operators: /kick #ROOM NAME)",
];

/// What /help adds for an operator.
const OPER_HELP: &[&str] = &[
    "*** operator commands:",
    "***   /kick NAME [reason]                       disconnect a user; their rooms are told why",
    "***   /kick #ROOM NAME [reason]                 take a user out of ROOM only",
    "***   /ban NAME|ADDRESS[/prefix] [confirm] [time] [why]   refuse an address (a user's, by name); time 30s, 10m, 2h, 7d or permanent (default); confirm: one covering your own address or wider than /8 (IPv6 /32)",
    "***   /unban ADDRESS[/prefix]                   lift a ban, as listed by /bans",
    "***   /bans                                     the bans in force",
    "***   /mute NAME [time] [reason]                refuse a user's messages, /me and /msg (default: until /unmute)",
    "***   /unmute NAME                              let a muted user speak again",
];

/// A command line, parsed before anything is done about it (as
/// mini-redis's `Command::from_frame`): the words borrow from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `/nick NAME` (empty: usage error).
    Nick(&'a str),
    Who,
    /// `/msg NAME text` (either empty: usage error).
    Msg {
        to: &'a str,
        text: &'a str,
    },
    /// `/me text` (empty: usage error).
    Me(&'a str),
    /// `/history [N]` or `/history since ID`: the arguments, which
    /// room_history.rs reads (their errors name the room's state).
    History(&'a str),
    /// `/ids on|off` (empty: say which).
    Ids(&'a str),
    /// `/join ROOM`, with or without its `#` (empty: usage error).
    Join(&'a str),
    /// `/part [ROOM] [reason]`: the arguments, read by rooms.rs.
    Part(&'a str),
    Rooms,
    List,
    /// `/names [ROOM]`.
    Names(&'a str),
    /// `/topic [text | lock | unlock]`.
    Topic(&'a str),
    /// `/op NAME`.
    Op(&'a str),
    /// `/deop NAME`.
    Deop(&'a str),
    /// `/whois NAME`.
    Whois(&'a str),
    /// `/away [message]`.
    Away(&'a str),
    /// `/quit [reason]`.
    Quit(&'a str),
    Stats,
    Help,
    /// `/pass SECRET`: the server password (before anything else).
    Pass(&'a str),
    /// `/oper PASSWORD`.
    Oper(&'a str),
    /// `/kick [#ROOM] NAME [reason]`.
    Kick {
        room: Option<&'a str>,
        name: &'a str,
        reason: &'a str,
    },
    /// `/ban NAME|ADDRESS[/prefix] [confirm] [duration] [reason]`: the arguments,
    /// read by moderation.rs.
    Ban(&'a str),
    /// `/unban ADDRESS[/prefix]`.
    Unban(&'a str),
    Bans,
    /// `/mute NAME [duration]`: the arguments.
    Mute(&'a str),
    /// `/unmute NAME`.
    Unmute(&'a str),
    /// Anything else: the word as typed.
    Unknown(&'a str),
}

impl<'a> Command<'a> {
    /// The command word, if only operators may use the command.
    pub fn for_operators(&self) -> Option<&'static str> {
        Some(match self {
            Command::Ban(_) => "ban",
            Command::Unban(_) => "unban",
            Command::Bans => "bans",
            Command::Mute(_) => "mute",
            Command::Unmute(_) => "unmute",
            _ => return None,
        })
    }

    /// `line` is what follows the `/`. Command words are case-insensitive;
    /// arguments are trimmed.
    pub fn parse(line: &'a str) -> Command<'a> {
        let (cmd, rest) = split_word(line);
        let rest = rest.trim();
        match cmd.to_ascii_lowercase().as_str() {
            "nick" => Command::Nick(rest),
            "who" => Command::Who,
            "msg" => {
                let (to, text) = split_word(rest);
                Command::Msg {
                    to,
                    text: text.trim(),
                }
            }
            "me" => Command::Me(rest),
            "history" => Command::History(rest),
            "ids" => Command::Ids(rest),
            "join" => Command::Join(rest),
            "part" | "leave" => Command::Part(rest),
            "rooms" => Command::Rooms,
            "list" => Command::List,
            "names" => Command::Names(rest),
            "topic" => Command::Topic(rest),
            "op" => Command::Op(rest),
            "deop" => Command::Deop(rest),
            "whois" => Command::Whois(rest),
            "away" => Command::Away(rest),
            "quit" => Command::Quit(rest),
            "stats" => Command::Stats,
            "help" => Command::Help,
            "pass" => Command::Pass(rest),
            "oper" => Command::Oper(rest),
            "kick" => {
                let (first, after) = split_word(rest);
                // A name never begins with '#': a room does.
                let (room, (name, reason)) = match first.strip_prefix('#') {
                    Some(room) => (Some(room), split_word(after.trim())),
                    None => (None, (first, after)),
                };
                Command::Kick {
                    room,
                    name,
                    reason: reason.trim(),
                }
            }
            "ban" => Command::Ban(rest),
            "unban" => Command::Unban(rest),
            "bans" => Command::Bans,
            "mute" => Command::Mute(rest),
            "unmute" => Command::Unmute(rest),
            _ => Command::Unknown(cmd),
        }
    }
}

impl Hub {
    pub(super) fn command(&mut self, id: ClientId, i: Member, cmd: Command, out: &mut impl Outbox) {
        if !self.may(id, i, &cmd, out) {
            return;
        }
        match cmd {
            Command::Pass(_) => reply(
                out,
                id,
                "*** error: you are already in; /pass is only asked first",
            ),
            Command::Oper(secret) => self.oper(id, i, secret, out),
            Command::Kick {
                room: None,
                name,
                reason,
            } if self.clients[i].standing.oper() => self.kick(id, i, name, reason, out),
            Command::Kick { room, name, reason } => {
                let here = room.is_some()
                    || self.clients[i]
                        .seat
                        .current()
                        .is_some_and(|r| self.may_run(i, r));
                if here {
                    self.room_kick(id, i, room, name, reason, out);
                } else {
                    reply(
                        out,
                        id,
                        "*** error: /kick is for operators (/oper PASSWORD)",
                    );
                }
            }
            Command::Ban(args) => self.ban(id, i, args, out),
            Command::Unban(arg) => self.unban(id, i, arg, out),
            Command::Bans => self.list_bans(id, out),
            Command::Mute(args) => self.mute(id, i, args, out),
            Command::Unmute(name) => self.unmute(id, i, name, out),
            Command::Nick(name) => self.nick(id, i, name, out),
            Command::Who => self.names(id, i, "", out),
            Command::Msg { to, text } => self.private(id, i, to, text, out),
            Command::Me("") => reply(out, id, "*** error: usage: /me text"),
            Command::Me(text) => {
                let Some(room) = self.talking_in(id, i, out) else {
                    return;
                };
                let line = format!("* {} {text}", self.clients[i].who.name());
                self.say(room, Some(i), line, out);
                self.relayed += 1;
            }
            Command::History(args) => self.history_command(id, i, args, out),
            Command::Ids(arg) => self.ids_command(id, i, arg, out),
            Command::Join(room) => self.join(id, i, room, out),
            Command::Part(args) => self.part(id, i, args, out),
            Command::List => self.list(id, out),
            Command::Names(room) => self.names(id, i, room, out),
            Command::Topic(text) => self.topic(id, i, text, out),
            Command::Op(name) => self.op(id, i, name, true, out),
            Command::Deop(name) => self.op(id, i, name, false, out),
            Command::Whois(name) => self.whois(id, i, name, out),
            Command::Away(text) => self.away(id, i, text, out),
            Command::Rooms => {
                let shown = self.room_keys.values().map(|&r| {
                    let r = &self.rooms[r];
                    format!("{} ({})", r.name, r.members.len())
                });
                let total = self.rooms.len();
                let text = format!("*** rooms ({total}): {}", listing(total, shown));
                reply(out, id, &text);
            }
            Command::Quit(why) => {
                reply(out, id, "*** bye");
                let reason = if why.is_empty() {
                    "quit".to_string()
                } else {
                    format!("quit: {why}")
                };
                out.close(id, reason);
            }
            Command::Stats => {
                let line = stats_line(
                    self.clients.len(),
                    self.rooms.len(),
                    out.conn_stats(id),
                    out.server_stats(),
                );
                reply(out, id, &line);
            }
            Command::Help => {
                for line in HELP {
                    reply(out, id, line);
                }
                let c = &self.clients[i];
                if c.standing.oper() || c.seat.rooms().any(|r| c.seat.is_op(r)) {
                    for line in ROOM_OPER_HELP {
                        reply(out, id, line);
                    }
                }
                if self.clients[i].standing.oper() {
                    for line in OPER_HELP {
                        reply(out, id, line);
                    }
                } else if self.access.has_opers() {
                    reply(
                        out,
                        id,
                        "***   /oper PASSWORD    become an operator (then /help lists more)",
                    );
                }
            }
            Command::Unknown(word) => {
                let shown: String = word.chars().take(32).collect();
                reply(
                    out,
                    id,
                    &format!("*** error: unknown command /{shown} (try /help)"),
                );
            }
        }
    }
}

/// The `/stats` answer: "*** you: 0 bytes queued, 0 lines dropped,
/// connected 5m 3s; server: 3 users, 2 rooms, up 2h 10m, 0.4 lines/s over
/// the last minute". Parts the transport cannot tell are left out.
pub fn stats_line(
    users: usize,
    rooms: usize,
    you: Option<ConnStats>,
    server: Option<ServerStats>,
) -> String {
    let mut line = String::from("*** ");
    if let Some(you) = you {
        line.push_str(&format!(
            "you: {}, {}, connected {}; ",
            plural(you.queued as u64, "byte") + " queued",
            plural(you.dropped, "line") + " dropped",
            human_duration(you.connected),
        ));
    }
    line.push_str(&format!(
        "server: {}, {}",
        plural(users as u64, "user"),
        plural(rooms as u64, "room")
    ));
    if let Some(server) = server {
        line.push_str(&format!(
            ", up {}, {:.1} lines/s over the last minute",
            human_duration(server.uptime),
            server.lines_per_sec
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_before_they_are_carried_out() {
        assert_eq!(Command::parse("NICK  bob "), Command::Nick("bob"));
        assert_eq!(Command::parse("nick"), Command::Nick(""));
        assert_eq!(Command::parse("who"), Command::Who);
        assert_eq!(
            Command::parse("msg bob  hi there "),
            Command::Msg {
                to: "bob",
                text: "hi there"
            }
        );
        assert_eq!(Command::parse("msg"), Command::Msg { to: "", text: "" });
        assert_eq!(Command::parse("me waves"), Command::Me("waves"));
        assert_eq!(
            Command::parse("history since 7-12"),
            Command::History("since 7-12")
        );
        assert_eq!(Command::parse("IDS on"), Command::Ids("on"));
        assert_eq!(Command::parse("join #Dev"), Command::Join("#Dev"));
        assert_eq!(Command::parse("rooms"), Command::Rooms);
        assert_eq!(
            Command::parse("quit gone fishing"),
            Command::Quit("gone fishing")
        );
        assert_eq!(Command::parse("Stats"), Command::Stats);
        assert_eq!(Command::parse("help me"), Command::Help);
        assert_eq!(Command::parse("pass  s3cret "), Command::Pass("s3cret"));
        assert_eq!(Command::parse("OPER pw"), Command::Oper("pw"));
        assert_eq!(
            Command::parse("kick bob  too much spam "),
            Command::Kick {
                room: None,
                name: "bob",
                reason: "too much spam"
            }
        );
        assert_eq!(
            Command::parse("kick #Games bob  spam "),
            Command::Kick {
                room: Some("Games"),
                name: "bob",
                reason: "spam"
            }
        );
        assert_eq!(
            Command::parse("kick"),
            Command::Kick {
                room: None,
                name: "",
                reason: ""
            }
        );
        assert_eq!(
            Command::parse("part #games bye"),
            Command::Part("#games bye")
        );
        assert_eq!(Command::parse("LIST"), Command::List);
        assert_eq!(Command::parse("names games"), Command::Names("games"));
        assert_eq!(
            Command::parse("topic  hi there "),
            Command::Topic("hi there")
        );
        assert_eq!(Command::parse("op bob"), Command::Op("bob"));
        assert_eq!(Command::parse("deop bob"), Command::Deop("bob"));
        assert_eq!(Command::parse("whois bob"), Command::Whois("bob"));
        assert_eq!(Command::parse("away lunch"), Command::Away("lunch"));
        assert_eq!(Command::parse("kick x").for_operators(), None);
        assert_eq!(
            Command::parse("ban 10.0.0.0/8 2h spam"),
            Command::Ban("10.0.0.0/8 2h spam")
        );
        assert_eq!(Command::parse("unban 1.2.3.4"), Command::Unban("1.2.3.4"));
        assert_eq!(Command::parse("bans"), Command::Bans);
        assert_eq!(Command::parse("mute bob 10m"), Command::Mute("bob 10m"));
        assert_eq!(Command::parse("unmute bob"), Command::Unmute("bob"));
        assert_eq!(Command::parse("ban x").for_operators(), Some("ban"));
        assert_eq!(Command::parse("oper x").for_operators(), None);
        assert_eq!(Command::parse("frob x"), Command::Unknown("frob"));
        assert_eq!(Command::parse(""), Command::Unknown(""));
    }
}
