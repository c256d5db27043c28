use super::*;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[derive(Default)]
struct Rec {
    got: Vec<(usize, String)>,
    closed: Vec<(usize, String)>,
}

impl Outbox for Rec {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        self.got.push((to.0, msg.text().to_string()));
    }
    fn close(&mut self, id: ClientId, reason: String) {
        self.closed.push((id.0, reason));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.got)
    }
    fn to(&mut self, id: usize) -> Vec<String> {
        self.take()
            .into_iter()
            .filter(|(to, _)| *to == id)
            .map(|(_, t)| t)
            .collect()
    }
}

/// Records which buffer each recipient got, to count shared buffers.
struct Ptrs(Vec<(usize, *const Msg, String)>);

impl Outbox for Ptrs {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        self.0.push((to.0, Rc::as_ptr(msg), msg.text().to_string()));
    }
    fn close(&mut self, _: ClientId, _: String) {}
}

fn hub_with(n: usize) -> (Hub, Rec) {
    let mut hub = Hub::new(200);
    let mut rec = Rec::default();
    for id in 0..n {
        hub.connect(c(id), LOCALHOST, &mut rec);
    }
    rec.take();
    (hub, rec)
}

/// The hub's name for local connection `n`: tests number them by hand.
fn c(n: usize) -> ClientId {
    ClientId(n)
}

/// A remote user's rooms in a presence event: the lobby alone.
fn in_lobby() -> Vec<InRoom> {
    vec![InRoom {
        key: LOBBY.into(),
        shown: LOBBY.into(),
        op: false,
    }]
}

fn pairs(v: &[(usize, &str)]) -> Vec<(usize, String)> {
    v.iter().map(|(i, s)| (*i, s.to_string())).collect()
}

#[test]
fn welcome_names_the_guest_and_the_crowd_and_others_hear_the_join() {
    let mut hub = Hub::new(200);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(
            0,
            "*** welcome to chatd, guest-1! you are in #lobby with nobody else online; /help lists the commands; lines up to 8192 bytes"
        )])
    );
    hub.connect(c(5), LOCALHOST, &mut rec);
    let got = rec.take();
    assert_eq!(got[0].0, 5);
    assert!(got[0].1.contains("guest-2") && got[0].1.contains("1 other user online"));
    assert_eq!(got[1], (0, "*** guest-2 joined".to_string()));
    assert_eq!(got.len(), 2);
}

#[test]
fn a_message_reaches_everyone_else_in_the_room_not_the_sender() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(1), "hello", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(0, "<guest-2> hello"), (2, "<guest-2> hello")])
    );
}

#[test]
fn double_slash_is_a_message_starting_with_one_slash() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "//shrug", &mut rec);
    assert_eq!(rec.take(), pairs(&[(1, "<guest-1> /shrug")]));
}

#[test]
fn broadcast_shares_one_message() {
    struct Ptrs(Vec<*const Msg>);
    impl Outbox for Ptrs {
        fn send(&mut self, _: ClientId, msg: &Rc<Msg>) {
            self.0.push(Rc::as_ptr(msg));
        }
        fn close(&mut self, _: ClientId, _: String) {}
    }
    let (mut hub, _) = hub_with(10);
    let mut p = Ptrs(Vec::new());
    hub.line(c(0), "x", &mut p);
    assert_eq!(p.0.len(), 9);
    assert!(p.0.iter().all(|&q| q == p.0[0]));
}

#[test]
fn nick_changes_name_confirms_and_tells_the_room() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/nick alice", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** you are now alice"),
            (1, "*** guest-1 is now alice")
        ])
    );
    hub.line(c(0), "hi", &mut rec);
    assert_eq!(rec.take(), pairs(&[(1, "<alice> hi")]));
    assert_eq!(hub.name(c(0)), Some("alice"));
}

#[test]
fn nick_errors() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/nick alice", &mut rec);
    rec.take();
    for (cmd, want) in [
        ("/nick", "*** error: usage: /nick NAME"),
        ("/nick ALICE", "*** error: the name ALICE is taken"),
        (
            "/nick guest-9",
            "*** error: names beginning with guest- are kept for the server",
        ),
        (
            "/nick Guest-1",
            "*** error: names beginning with guest- are kept for the server",
        ),
        (
            "/nick a b",
            "*** error: invalid name: ' ' is not allowed; use letters, digits, '-', '_' and '.'",
        ),
        (
            "/nick abcdefghijklmnopqrstuvwxy",
            "*** error: invalid name: at most 24 characters",
        ),
        (
            "/nick bøb",
            "*** error: invalid name: 'ø' is not allowed; use letters, digits, '-', '_' and '.'",
        ),
    ] {
        hub.line(c(1), cmd, &mut rec);
        assert_eq!(rec.take(), pairs(&[(1, want)]), "{cmd}");
    }
    // 24 characters is fine, and so is every allowed character.
    hub.line(c(1), "/nick Ab9-_.defghijklmnopqrstu", &mut rec);
    assert_eq!(rec.to(1), vec!["*** you are now Ab9-_.defghijklmnopqrstu"]);
}

#[test]
fn a_case_change_of_ones_own_name_is_allowed() {
    let (mut hub, mut rec) = hub_with(1);
    hub.line(c(0), "/nick alice", &mut rec);
    hub.line(c(0), "/nick Alice", &mut rec);
    assert_eq!(rec.to(0).last().unwrap(), "*** you are now Alice");
    hub.line(c(0), "/nick Alice", &mut rec);
    assert_eq!(rec.to(0), vec!["*** you are already Alice"]);
}

#[test]
fn a_name_is_freed_by_a_nick_change_and_by_leaving() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(0), "/nick alice", &mut rec);
    hub.line(c(0), "/nick alicia", &mut rec);
    rec.take();
    hub.line(c(1), "/nick alice", &mut rec);
    assert_eq!(rec.to(1)[0], "*** you are now alice");
    hub.disconnect(c(1), None, &mut rec);
    rec.take();
    hub.line(c(2), "/nick alice", &mut rec);
    assert_eq!(rec.to(2), vec!["*** you are now alice"]);
}

#[test]
fn first_of_two_nick_requests_wins() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/nick bob", &mut rec);
    hub.line(c(1), "/nick Bob", &mut rec);
    let got = rec.take();
    assert!(got.contains(&(0, "*** you are now bob".into())));
    assert!(got.contains(&(1, "*** error: the name Bob is taken".into())));
}

#[test]
fn who_lists_the_room_sorted() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(2), "/nick Zed", &mut rec);
    hub.line(c(1), "/nick amy", &mut rec);
    rec.take();
    hub.line(c(0), "/WHO", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(0, "*** #lobby (3): amy, guest-1, Zed")])
    );
}

#[test]
fn msg_reaches_only_its_target() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(1), "/nick bob", &mut rec);
    hub.line(c(0), "/nick alice", &mut rec);
    rec.take();
    hub.line(c(0), "/msg BOB  psst, over here ", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "*alice* psst, over here"),
            (0, "-> *bob* psst, over here")
        ])
    );
}

#[test]
fn msg_errors() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/msg nobody hi", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: no user named nobody"]);
    hub.line(c(0), "/msg guest-2", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: usage: /msg NAME text"]);
    hub.line(c(0), "/msg", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: usage: /msg NAME text"]);
}

#[test]
fn me_is_an_action_for_the_room() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/Me waves", &mut rec);
    assert_eq!(rec.take(), pairs(&[(1, "* guest-1 waves")]));
    hub.line(c(0), "/me", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** error: usage: /me text")]));
}

#[test]
fn join_adds_a_room_and_lines_go_to_the_current_one_only() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(0), "/nick alice", &mut rec);
    rec.take();
    hub.line(c(0), "/join Games", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(0, "*** you joined #Games (1): @alice")]),
        "the lobby hears nothing: alice is still in it"
    );
    hub.line(c(1), "/join #games", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** guest-2 joined #Games"),
            (1, "*** you joined #Games (2): @alice, guest-2"),
        ])
    );
    hub.line(c(0), "in games", &mut rec);
    assert_eq!(rec.take(), pairs(&[(1, "<alice> in games")]));
    hub.line(c(2), "in lobby", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "[#lobby] <guest-3> in lobby"),
            (1, "[#lobby] <guest-3> in lobby")
        ]),
        "the lobby is not their current room any more"
    );
    hub.line(c(1), "/rooms", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(1, "*** rooms (2): #Games (2), #lobby (3)")])
    );
}

#[test]
fn who_and_rooms_name_at_most_list_max_entries() {
    let n = LIST_MAX + 5;
    let (mut hub, mut rec) = hub_with(n);
    hub.line(c(1), "/who", &mut rec);
    let who = rec.to(1).pop().unwrap();
    let want = format!("*** #lobby ({n}): ");
    assert!(who.starts_with(&want), "{who}");
    assert!(who.ends_with(", … and 5 more"), "{who}");
    assert_eq!(who.matches(", ").count(), LIST_MAX);
    // The first in alphabetical order: guest-1, guest-10, guest-100, ...
    assert!(who[want.len()..].starts_with("guest-1, guest-10, guest-100, "));
    for i in 0..n {
        hub.line(c(i), &format!("/join r{i:03}"), &mut rec);
        hub.line(c(i), "/part lobby", &mut rec);
    }
    rec.take();
    hub.line(c(1), "/rooms", &mut rec);
    let rooms = rec.to(1).pop().unwrap();
    assert!(rooms.starts_with(&format!("*** rooms ({n}): #r000 (1), #r001 (1), ")));
    let last = LIST_MAX - 1;
    assert!(
        rooms.ends_with(&format!("#r{last} (1), … and 5 more")),
        "{rooms}"
    );
}

#[test]
fn join_errors() {
    let (mut hub, mut rec) = hub_with(1);
    hub.line(c(0), "/join #LOBBY", &mut rec);
    assert_eq!(rec.to(0), vec!["*** now talking in #lobby"]);
    hub.line(c(0), "/join", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: usage: /join ROOM"]);
    hub.line(c(0), "/join #", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: usage: /join ROOM"]);
    hub.line(c(0), "/join a/b", &mut rec);
    assert_eq!(
        rec.to(0),
        vec![
            "*** error: invalid room name: '/' is not allowed; use letters, digits, '-', '_' and '.'"
        ]
    );
}

#[test]
fn an_empty_room_disappears_and_its_name_can_be_reused() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/join a", &mut rec);
    assert_eq!(hub.rooms(), 2);
    hub.disconnect(c(0), None, &mut rec);
    assert_eq!(hub.rooms(), 1);
    hub.line(c(1), "/join A", &mut rec);
    assert_eq!(rec.to(1).last().unwrap(), "*** you joined #A (1): @guest-2");
    hub.line(c(1), "/part A", &mut rec);
    assert_eq!(hub.rooms(), 1);
}

#[test]
fn leaving_tells_the_room_with_the_reason() {
    let (mut hub, mut rec) = hub_with(3);
    hub.disconnect(c(1), Some("too slow"), &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** guest-2 left (too slow)"),
            (2, "*** guest-2 left (too slow)")
        ])
    );
    hub.disconnect(c(2), None, &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** guest-3 left")]));
    assert_eq!(hub.online(), 1);
    hub.disconnect(c(2), None, &mut rec);
    assert_eq!(hub.online(), 1, "a second disconnect is harmless");
}

#[test]
fn quit_says_bye_and_asks_the_transport_to_close() {
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/quit gotta go", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** bye")]));
    assert_eq!(rec.closed, vec![(0, "quit: gotta go".to_string())]);
    hub.line(c(1), "/QUIT", &mut rec);
    assert_eq!(rec.closed[1], (1, "quit".to_string()));
}

#[test]
fn help_and_unknown_commands() {
    let (mut hub, mut rec) = hub_with(1);
    hub.line(c(0), "/help", &mut rec);
    let help = rec.to(0);
    for cmd in [
        "/nick", "/who", "/msg", "/me", "/join", "/rooms", "/stats", "/quit", "/help",
    ] {
        assert!(help.iter().any(|l| l.contains(cmd)), "{cmd} in help");
    }
    assert!(help.iter().all(|l| l.starts_with("*** ")));
    hub.line(c(0), "/foo bar", &mut rec);
    assert_eq!(
        rec.to(0),
        vec!["*** error: unknown command /foo (try /help)"]
    );
    hub.line(c(0), "/", &mut rec);
    assert_eq!(rec.to(0), vec!["*** error: unknown command / (try /help)"]);
}

#[test]
fn big_rooms_stop_announcing_joins_leaves_and_nicks() {
    let mut hub = Hub::new(3);
    let mut rec = Rec::default();
    for id in 0..3 {
        hub.connect(c(id), LOCALHOST, &mut rec);
    }
    rec.take();
    hub.connect(c(3), LOCALHOST, &mut rec);
    assert_eq!(rec.take().len(), 1, "4 > 3 members: only the welcome");
    hub.line(c(3), "/nick dan", &mut rec);
    assert_eq!(rec.take(), pairs(&[(3, "*** you are now dan")]));
    hub.disconnect(c(3), None, &mut rec);
    assert_eq!(rec.take(), vec![], "leaving a room of 4 is silent too");
    hub.disconnect(c(2), None, &mut rec);
    assert_eq!(rec.take().len(), 2, "a room of 3 announces");
    hub.line(c(0), "/who", &mut rec);
    assert_eq!(rec.to(0), vec!["*** #lobby (2): guest-1, guest-2"]);
}

#[test]
fn stats_line_formats_every_part() {
    let you = ConnStats {
        queued: 1,
        dropped: 12,
        connected: Duration::from_secs(5 * 60 + 3),
    };
    let server = ServerStats {
        uptime: Duration::from_secs(2 * 3600 + 10 * 60 + 59),
        lines_per_sec: 0.4166,
    };
    assert_eq!(
        stats_line(3, 1, Some(you), Some(server)),
        "*** you: 1 byte queued, 12 lines dropped, connected 5m 3s; \
         server: 3 users, 1 room, up 2h 10m, 0.4 lines/s over the last minute"
    );
    assert_eq!(stats_line(1, 2, None, None), "*** server: 1 user, 2 rooms");
}

#[test]
fn durations_show_their_two_largest_units() {
    let d = |s| human_duration(Duration::from_secs(s));
    assert_eq!(d(0), "0s");
    assert_eq!(d(59), "59s");
    assert_eq!(d(60), "1m 0s");
    assert_eq!(d(3599), "59m 59s");
    assert_eq!(d(3600), "1h 0m");
    assert_eq!(d(86399), "23h 59m");
    assert_eq!(d(3 * 86400 + 4 * 3600 + 59), "3d 4h");
}

#[test]
fn stats_asks_the_transport_about_the_caller() {
    struct WithStats(Rec);
    impl Outbox for WithStats {
        fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
            self.0.send(to, msg);
        }
        fn close(&mut self, id: ClientId, reason: String) {
            self.0.close(id, reason);
        }
        fn conn_stats(&self, id: ClientId) -> Option<ConnStats> {
            Some(ConnStats {
                queued: id.0 * 100,
                dropped: 7,
                connected: Duration::from_secs(61),
            })
        }
        fn server_stats(&self) -> Option<ServerStats> {
            Some(ServerStats {
                uptime: Duration::from_secs(5),
                lines_per_sec: 2.0,
            })
        }
    }
    let (mut hub, rec) = hub_with(3);
    let mut out = WithStats(rec);
    hub.line(c(2), "/join games", &mut out);
    out.0.take();
    hub.line(c(2), "/STATS", &mut out);
    assert_eq!(
        out.0.take(),
        pairs(&[(
            2,
            "*** you: 200 bytes queued, 7 lines dropped, connected 1m 1s; \
             server: 3 users, 2 rooms, up 5s, 2.0 lines/s over the last minute"
        )])
    );
    // The recorder keeps no figures: only the hub's own are shown.
    let (mut hub, mut rec) = hub_with(2);
    hub.line(c(0), "/stats", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** server: 2 users, 1 room")]));
}

#[test]
fn relayed_counts_chat_lines_not_commands() {
    let (mut hub, mut rec) = hub_with(3);
    hub.line(c(0), "hello", &mut rec);
    hub.line(c(0), "//slash", &mut rec);
    hub.line(c(0), "/me waves", &mut rec);
    hub.line(c(0), "/msg guest-2 psst", &mut rec);
    assert_eq!(hub.relayed(), 4);
    hub.line(c(0), "/who", &mut rec);
    hub.line(c(0), "/msg nobody hi", &mut rec);
    hub.line(c(0), "/me", &mut rec);
    hub.line(c(0), "/stats", &mut rec);
    assert_eq!(hub.relayed(), 4);
}

#[test]
fn guest_numbers_are_never_reused() {
    let (mut hub, mut rec) = hub_with(1);
    hub.disconnect(c(0), None, &mut rec);
    hub.connect(c(0), LOCALHOST, &mut rec);
    assert_eq!(hub.name(c(0)), Some("guest-2"));
}

#[test]
fn a_burst_of_messages_is_one_shared_batch_and_commands_keep_their_place() {
    let (mut hub, mut rec) = hub_with(3);
    let texts: Vec<String> = ["one", "//two", "/nick al", "three", "/quit bye", "lost"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    hub.lines(c(0), &texts, &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "<guest-1> one\r\n<guest-1> /two"),
            (2, "<guest-1> one\r\n<guest-1> /two"),
            (0, "*** you are now al"),
            (1, "*** guest-1 is now al"),
            (2, "*** guest-1 is now al"),
            (1, "<al> three"),
            (2, "<al> three"),
            (0, "*** bye"),
        ])
    );
    assert_eq!(rec.closed, vec![(0, "quit: bye".to_string())]);
}

#[test]
fn batches_stay_under_their_bound() {
    let mut hub = Hub::new(200).with_batch_max(100);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    rec.take();
    let texts: Vec<String> = (0..10).map(|i| format!("{i}{}", "x".repeat(30))).collect();
    hub.lines(c(0), &texts, &mut rec);
    let got = rec.to(1);
    assert!(
        got.len() > 1 && got.iter().all(|m| m.len() + 2 <= 100),
        "{got:?}"
    );
    let joined: Vec<String> = got
        .iter()
        .flat_map(|m| m.split("\r\n"))
        .map(String::from)
        .collect();
    let want: Vec<String> = texts.iter().map(|t| format!("<guest-1> {t}")).collect();
    assert_eq!(joined, want, "every line, in order");
}

/// 2026-12-01 12:03:00 UTC, in ms.
const NOON: u64 = 1_796_126_580_000;

fn history_hub(per_room: usize, on_join: usize) -> Hub {
    let limits = history::Limits {
        per_room,
        ..history::Limits::default()
    };
    let mut hub = Hub::new(200).with_history(limits, on_join);
    hub.tick(NOON);
    hub
}

#[test]
fn joining_shows_the_last_lines_with_their_time_between_markers() {
    let mut hub = history_hub(100, 2);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.line(c(0), "/nick alice", &mut rec);
    hub.line(c(0), "one", &mut rec);
    hub.tick(NOON + 61_000);
    hub.line(c(0), "/me waves", &mut rec);
    hub.line(c(0), "*** not a notice, a message", &mut rec);
    rec.take();
    hub.connect(c(1), LOCALHOST, &mut rec);
    let got = rec.to(1);
    assert!(got[0].starts_with("*** welcome"), "{got:?}");
    assert_eq!(
        got[1],
        "*** history of #lobby (2 lines, times UTC):\r\n\
         [12:04] * alice waves\r\n\
         [12:04] <alice> *** not a notice, a message\r\n\
         *** end of history"
    );
    assert_eq!(got.len(), 2);
    // Entering another room replays that room's lines.
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(0), "in games", &mut rec);
    rec.take();
    hub.line(c(1), "/join games", &mut rec);
    let got = rec.to(1);
    assert_eq!(got[0], "*** you joined #games (2): @alice, guest-2");
    assert_eq!(
        got[1],
        "*** history of #games (1 line, times UTC):\r\n[12:04] <alice> in games\r\n*** end of history"
    );
}

#[test]
fn only_messages_and_actions_are_kept_never_private_lines_or_notices() {
    let mut hub = history_hub(100, 20);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    hub.line(c(0), "/msg guest-2 secret", &mut rec);
    hub.line(c(1), "/nick bob", &mut rec);
    hub.line(c(0), "/who", &mut rec);
    hub.line(c(0), "//slash", &mut rec);
    hub.disconnect(c(1), None, &mut rec);
    assert_eq!(hub.history_lines(), 1);
    rec.take();
    hub.connect(c(2), LOCALHOST, &mut rec);
    let got = rec.to(2).join("\n");
    assert!(!got.contains("secret") && !got.contains("bob"), "{got}");
    assert!(got.contains("[12:03] <guest-1> /slash"), "{got}");
}

#[test]
fn history_n_shows_at_most_n_and_at_most_what_is_kept() {
    let mut hub = history_hub(5, 0);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    rec.take();
    let texts: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    hub.lines(c(0), &texts, &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    assert_eq!(rec.to(1).len(), 1, "--history-on-join 0: no replay");
    let count = |rec: &mut Rec| {
        let got = rec.to(1);
        assert_eq!(got.len(), 1, "one buffer: {got:?}");
        got[0]
            .lines()
            .filter(|l| l.starts_with("[12:03] <guest-1> m"))
            .count()
    };
    hub.line(c(1), "/history 3", &mut rec);
    assert_eq!(count(&mut rec), 3);
    hub.line(c(1), "/history 1000", &mut rec);
    assert_eq!(count(&mut rec), 5, "--history 5 is all there is");
    hub.line(c(1), "/history", &mut rec);
    assert_eq!(count(&mut rec), 5, "the default is 20");
    for bad in [
        "/history 0",
        "/history -1",
        "/history x",
        "/history since",
        "/history since 5",
    ] {
        hub.line(c(1), bad, &mut rec);
        assert_eq!(
            rec.to(1),
            ["*** error: usage: /history [N] or /history since ID"],
            "{bad}"
        );
    }
    // An answer never passes reply_max: the oldest lines are left out.
    let mut hub = history_hub(5, 0).with_reply_max(3 * 22);
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.lines(c(0), &texts, &mut rec);
    rec.take();
    hub.line(c(0), "/history 5", &mut rec);
    let got = rec.to(0);
    assert!(
        got[0].starts_with(
            "*** 2 older lines left out: too long to send at once\r\n*** history of #lobby (3 lines"
        ),
        "{got:?}"
    );
    assert!(
        got[0].ends_with("<guest-1> m8\r\n*** end of history"),
        "{got:?}"
    );
    let mut hub = history_hub(0, 20);
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.line(c(0), "hi", &mut rec);
    rec.take();
    hub.line(c(0), "/history", &mut rec);
    assert_eq!(rec.to(0), ["*** history of #lobby: off on this server"]);
}

#[test]
fn with_ids_lines_carry_them_and_ones_own_come_back_one_buffer_per_variant() {
    let mut hub = history_hub(100, 20);
    let mut p = Ptrs(Vec::new());
    for id in 0..4 {
        hub.connect(c(id), LOCALHOST, &mut p);
    }
    hub.line(c(0), "/ids on", &mut p);
    hub.line(c(2), "/IDS on", &mut p);
    let epoch = hub.history.head(0).map(|h| h.epoch).unwrap();
    let mark = format!("*** ids on: #lobby at {epoch}-0");
    assert_eq!(p.0.pop().map(|x| x.2), Some(mark), "where it stands");
    p.0.clear();
    let texts = vec!["a".to_string(), "b".to_string()];
    hub.lines(c(0), &texts, &mut p);
    let tagged =
        format!("@id={epoch}-1;room=lobby <guest-1> a\r\n@id={epoch}-2;room=lobby <guest-1> b");
    let got: Vec<(usize, &str)> = p.0.iter().map(|(t, _, s)| (*t, s.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, tagged.as_str()),
            (1, "<guest-1> a\r\n<guest-1> b"),
            (2, tagged.as_str()),
            (3, "<guest-1> a\r\n<guest-1> b"),
        ],
        "the sender with ids gets its own lines back"
    );
    assert_eq!(p.0[0].1, p.0[2].1, "one tagged buffer");
    assert_eq!(p.0[1].1, p.0[3].1, "one plain buffer");
    p.0.clear();
    // Without ids the sender still gets nothing back, and notices are
    // never tagged.
    hub.line(c(1), "/me x", &mut p);
    hub.line(c(2), "/ids off", &mut p);
    hub.line(c(1), "/nick bob", &mut p);
    let got: Vec<(usize, String)> = p.0.drain(..).map(|(t, _, s)| (t, s)).collect();
    assert_eq!(
        got,
        pairs(&[
            (0, &format!("@id={epoch}-3;room=lobby * guest-2 x")),
            (2, &format!("@id={epoch}-3;room=lobby * guest-2 x")),
            (3, "* guest-2 x"),
            (2, "*** ids off"),
            (1, "*** you are now bob"),
            (0, "*** guest-2 is now bob"),
            (2, "*** guest-2 is now bob"),
            (3, "*** guest-2 is now bob"),
        ])
    );
}

#[test]
fn with_ids_history_is_tagged_with_its_time_and_entering_a_room_says_where_it_stands() {
    let mut hub = history_hub(100, 20);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(0), "hi", &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    hub.line(c(1), "/ids on", &mut rec);
    rec.take();
    hub.line(c(1), "/join games", &mut rec);
    let epoch = hub
        .history
        .head(hub.rooms[hub.room_keys["games"]].hist)
        .unwrap()
        .epoch;
    let block = format!(
        "*** history of #games (1 line, times UTC):\r\n\
         @id={epoch}-1;ms={NOON} [12:03] <guest-1> hi\r\n*** end of history"
    );
    let mark = format!("*** ids on: #games at {epoch}-1");
    assert_eq!(
        rec.to(1),
        [
            "*** you joined #games (2): @guest-1, guest-2",
            &block,
            &mark
        ]
    );
    hub.line(c(1), "/history", &mut rec);
    assert_eq!(rec.to(1), [block]);
    hub.line(c(1), "/ids", &mut rec);
    let lobby = hub.history.head(0).unwrap().epoch;
    assert_eq!(
        rec.to(1),
        [format!("*** ids on: #lobby at {lobby}-0"), mark],
        "where it stands in each of its rooms"
    );
    hub.line(c(1), "/ids maybe", &mut rec);
    assert_eq!(rec.to(1), ["*** error: usage: /ids on|off"]);
}

#[test]
fn since_resumes_after_an_id_and_says_what_was_missed() {
    let mut hub = history_hub(3, 20);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    let epoch = hub.history.head(0).unwrap().epoch;
    let texts: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    hub.lines(c(0), &texts, &mut rec);
    rec.take();
    let ask = |hub: &mut Hub, rec: &mut Rec, since: String| {
        hub.line(c(1), &format!("/history since {since}"), rec);
        rec.to(1).join("\r\n")
    };
    let got = ask(&mut hub, &mut rec, format!("{epoch}-3"));
    assert_eq!(
        got,
        format!(
            "*** history of #lobby since {epoch}-3 (2 lines, times UTC):\r\n\
             [12:03] <guest-1> m4\r\n[12:03] <guest-1> m5\r\n*** end of history"
        )
    );
    // Kept: m3 m4 m5; m1 and m2 are gone.
    let got = ask(&mut hub, &mut rec, format!("{epoch}-0"));
    assert!(
        got.starts_with(&format!(
            "*** 2 lines were missed; showing the last 3\r\n\
             *** history of #lobby since {epoch}-0 (3 lines"
        )),
        "{got}"
    );
    let got = ask(&mut hub, &mut rec, format!("{epoch}-1"));
    assert!(
        got.starts_with("*** 1 line was missed; showing the last 3\r\n"),
        "{got}"
    );
    let got = ask(&mut hub, &mut rec, format!("{epoch}-5"));
    assert_eq!(
        got,
        format!("*** history of #lobby: nothing new since {epoch}-5")
    );
    let got = ask(&mut hub, &mut rec, format!("{}-5", epoch - 1));
    assert!(
        got.starts_with(&format!("*** the history since {}-5 is gone (the server restarted, or the room was empty for too long); showing the last 3\r\n", epoch - 1)),
        "{got}"
    );
}

#[test]
fn an_empty_room_keeps_its_history_for_the_ttl() {
    let limits = history::Limits {
        per_room: 10,
        bytes: 1 << 20,
        ttl_ms: 60_000,
    };
    let mut hub = Hub::new(200).with_history(limits, 20);
    hub.tick(NOON);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.line(c(0), "hello?", &mut rec);
    hub.disconnect(c(0), None, &mut rec);
    assert_eq!(hub.rooms(), 0);
    hub.tick(NOON + 59_999);
    hub.connect(c(1), LOCALHOST, &mut rec);
    assert!(rec.to(1).join("\n").contains("[12:03] <guest-1> hello?"));
    hub.disconnect(c(1), None, &mut rec);
    hub.tick(NOON + 200_000);
    assert_eq!(hub.history_lines(), 0);
    hub.connect(c(2), LOCALHOST, &mut rec);
    assert_eq!(rec.to(2).len(), 1, "only the welcome");
}

/// Two instances joined by an in-memory stand-in for Redis: what one
/// hub publishes reaches the other as the cluster link would deliver it.
mod cluster {
    use super::*;
    use crate::cluster::Inbound;
    use crate::cluster::wire::{Wire, notice_payload, said_payload};
    use std::collections::HashSet;

    #[derive(Default)]
    struct Bus {
        got: Vec<(usize, String)>,
        /// Presence for one instance (`ClusterOp::PresenceTo`).
        directed: Vec<(String, Presence)>,
        room_lines: Vec<(String, String)>,
        /// Lines to be numbered, as Redis would (cluster::scripts::SAY),
        /// and published as that script does (`wire::said_payload`); and
        /// room notices (`wire::notice_payload`), on the same channel in
        /// the order sent: None for the member it is about.
        said: Vec<(String, Option<ClientId>, String)>,
        /// Notices sent (their numbers).
        notices: u64,
        presence: Vec<Presence>,
        privates: Vec<(String, u64, String, String)>,
        claims: Vec<(ClientId, String)>,
        released: Vec<(String, ClientId)>,
        /// Names of lost instances' users given back: (node, id, name).
        released_lost: Vec<(String, u64, String)>,
        subscribed: HashSet<String>,
        /// Answer claims with "busy" (the queue toward Redis is full), and
        /// the claims so refused.
        busy: bool,
        refused: Vec<(ClientId, String)>,
        /// History asked of the store: answered with the room's last id
        /// and no lines (the stand-in keeps numbers, not texts).
        asked: Vec<(ClientId, String, Asked)>,
    }

    impl Outbox for Bus {
        fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
            self.got.push((to.0, msg.text().to_string()));
        }
        fn close(&mut self, _: ClientId, _: String) {}
        fn cluster(&mut self, op: ClusterOp) {
            match op {
                ClusterOp::Publish { room, msg } => {
                    self.room_lines.push((room.into(), msg.text().into()))
                }
                ClusterOp::Say {
                    room, from, lines, ..
                } => self.said.push((room.into(), Some(from), lines)),
                ClusterOp::Notice { room, about, msg } => {
                    self.notices += 1;
                    let payload = notice_payload("", self.notices, about, msg.text());
                    self.said.push((room.into(), None, payload));
                }
                ClusterOp::Presence(event) => self.presence.push(event),
                ClusterOp::PresenceTo { node, event } => {
                    self.directed.push((node.to_string(), event))
                }
                ClusterOp::Private {
                    node,
                    to,
                    to_name,
                    msg,
                } => self
                    .privates
                    .push((node.to_string(), to, to_name.into(), msg.text().into())),
                ClusterOp::Subscribe { room, on: true } => {
                    self.subscribed.insert(room.into());
                }
                ClusterOp::Subscribe { room, on: false } => {
                    self.subscribed.remove(&*room);
                }
                ClusterOp::Claim { id, name } if self.busy => self.refused.push((id, name.into())),
                ClusterOp::Claim { id, name } => self.claims.push((id, name.into())),
                ClusterOp::Release { name, id, .. } => self.released.push((name.into(), id)),
                ClusterOp::ReleaseLost { node, id, name } => {
                    self.released_lost.push((node.to_string(), id, name.into()))
                }
                ClusterOp::History {
                    id, room, asked, ..
                } => self.asked.push((id, room.into(), asked)),
                _ => {}
            }
        }
    }

    /// The two instances' node ids.
    const NODES: [&str; 2] = ["a", "b"];

    fn node(h: usize) -> &'static str {
        NODES[h]
    }

    struct Net {
        hubs: [Hub; 2],
        bus: [Bus; 2],
        names: HashMap<String, (usize, ClientId)>,
        /// Each room's last N, as Redis keeps it.
        numbers: HashMap<String, u64>,
    }

    impl Net {
        fn new() -> Net {
            let mut net = Net {
                hubs: [
                    Hub::new(200).with_cluster(NODES[0]),
                    Hub::new(200).with_cluster(NODES[1]),
                ],
                bus: [Bus::default(), Bus::default()],
                names: HashMap::new(),
                numbers: HashMap::new(),
            };
            net.hubs[0].add_guests(1, 100);
            net.hubs[1].add_guests(101, 100);
            for h in 0..2 {
                net.hubs[h].link_up(&mut net.bus[h]);
            }
            net.pump();
            net
        }

        /// Delivers everything published, as Redis would, until quiet.
        fn pump(&mut self) {
            for _ in 0..10 {
                let mut quiet = true;
                for from in 0..2 {
                    let to = 1 - from;
                    let b = &mut self.bus[from];
                    let said = std::mem::take(&mut b.said);
                    let lines = std::mem::take(&mut b.room_lines);
                    let mut presence = std::mem::take(&mut b.presence);
                    for (to_node, p) in std::mem::take(&mut b.directed) {
                        // For the other instance, or for one not in the net.
                        if to_node == node(to) {
                            presence.push(p);
                        }
                    }
                    let privates = std::mem::take(&mut b.privates);
                    let claims = std::mem::take(&mut b.claims);
                    let refused = std::mem::take(&mut b.refused);
                    let asked = std::mem::take(&mut b.asked);
                    for (name, id) in std::mem::take(&mut b.released) {
                        // Only the holder's own claim is given back.
                        if self.names.get(&name) == Some(&(from, id)) {
                            self.names.remove(&name);
                        }
                    }
                    quiet &= said.is_empty()
                        && lines.is_empty()
                        && presence.is_empty()
                        && privates.is_empty()
                        && claims.is_empty()
                        && asked.is_empty();
                    for (room, cid, text) in said {
                        let payload = match cid {
                            Some(cid) => {
                                let n = self.numbers.entry(room.clone()).or_default();
                                let first = Id {
                                    epoch: 7,
                                    n: *n + 1,
                                };
                                *n += text.split("\r\n").count() as u64;
                                said_payload(node(from), first, cid, &text)
                            }
                            // `notice_payload` from an empty node: this one.
                            None => format!("{}{text}", node(from)),
                        };
                        for h in [from, to] {
                            if self.bus[h].subscribed.contains(&room) {
                                // Read back as each instance's link would.
                                let wire = Wire::new(0, node(h), 1 << 16);
                                let channel = wire.keys.room(&room);
                                let event = wire.decode(channel.as_bytes(), payload.as_bytes());
                                let Ok(Some(
                                    event @ (Inbound::Said { .. } | Inbound::Notice { .. }),
                                )) = event
                                else {
                                    panic!("{payload:?} does not decode: {event:?}");
                                };
                                event.apply(&mut self.hubs[h], &mut self.bus[h]);
                            }
                        }
                    }
                    for (room, text) in lines {
                        if self.bus[to].subscribed.contains(&room) {
                            self.hubs[to].remote_line(&room, &text, &mut self.bus[to]);
                        }
                    }
                    for p in presence {
                        // As the link carries it: through its wire form.
                        let wire = crate::cluster::wire::encode_presence(&p);
                        let back = crate::cluster::wire::decode_presence(&wire);
                        assert_eq!(back.as_ref(), Some(&p), "{wire:?}");
                        self.hubs[to].remote_presence(p, &mut self.bus[to]);
                    }
                    for (_, id, name, text) in privates {
                        self.hubs[to].remote_private(
                            c(id as usize),
                            &name,
                            &text,
                            &mut self.bus[to],
                        );
                    }
                    for (id, name) in claims {
                        let ok = !self.names.contains_key(&name);
                        if ok {
                            self.names.insert(name.clone(), (from, id));
                        }
                        let answer = if ok {
                            Claim::Granted(1000 + id.0 as u64)
                        } else {
                            Claim::Taken
                        };
                        self.hubs[from].claimed(id, &name, answer, &mut self.bus[from]);
                    }
                    for (id, room, what) in asked {
                        let last = self.numbers.get(&room).copied().unwrap_or(0);
                        let epoch = if last > 0 { 7 } else { 0 };
                        let hub = &mut self.hubs[from];
                        hub.answer(
                            id,
                            &room,
                            what,
                            epoch,
                            last,
                            Vec::new(),
                            0,
                            &mut self.bus[from],
                        );
                    }
                    for (id, _) in refused {
                        // As the link refuses an operation it cannot take.
                        let event = Inbound::Refused(crate::hub::Refusal::Claim(id));
                        event.apply(&mut self.hubs[from], &mut self.bus[from]);
                    }
                }
                if quiet {
                    return;
                }
            }
            panic!("the bus never went quiet");
        }

        fn line(&mut self, h: usize, id: usize, text: &str) {
            self.hubs[h].line(c(id), text, &mut self.bus[h]);
            self.pump();
        }

        fn take(&mut self, h: usize) -> Vec<(usize, String)> {
            std::mem::take(&mut self.bus[h].got)
        }
    }

    #[test]
    fn two_instances_are_one_chat() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.pump();
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.pump();
        let welcome = net.take(1);
        assert!(
            welcome[0].1.contains("guest-101!") && welcome[0].1.contains("1 other user online"),
            "{welcome:?}"
        );
        assert_eq!(
            net.take(0),
            pairs(&[
                (
                    0,
                    "*** welcome to chatd, guest-1! you are in #lobby with nobody else online; /help lists the commands; lines up to 8192 bytes"
                ),
                (0, "*** guest-101 joined")
            ])
        );

        net.line(0, 0, "hello b");
        assert_eq!(net.take(1), pairs(&[(0, "<guest-1> hello b")]));
        assert_eq!(net.take(0), vec![], "no echo, no double delivery");

        net.line(1, 0, "/nick bob");
        assert_eq!(net.take(1), pairs(&[(0, "*** you are now bob")]));
        assert_eq!(net.take(0), pairs(&[(0, "*** guest-101 is now bob")]));

        net.line(0, 0, "/nick BOB");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** error: the name BOB is taken")])
        );

        net.line(0, 0, "/who");
        assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (2): bob, guest-1")]));

        net.line(0, 0, "/msg bob psst");
        assert_eq!(net.take(0), pairs(&[(0, "-> *bob* psst")]));
        assert_eq!(net.take(1), pairs(&[(0, "*guest-1* psst")]));

        net.line(1, 0, "/join games");
        net.take(1);
        assert_eq!(net.take(0), vec![], "bob is in #lobby still");
        net.line(1, 0, "/part lobby");
        assert_eq!(
            net.take(1),
            pairs(&[(0, "*** you left #lobby; now talking in #games")])
        );
        assert_eq!(net.take(0), pairs(&[(0, "*** bob left #lobby")]));
        net.line(0, 0, "lobby only");
        assert_eq!(net.take(1), vec![], "rooms stay apart across instances");
        net.line(0, 0, "/rooms");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** rooms (2): #games (1), #lobby (1)")])
        );
        assert!(
            !net.bus[1].subscribed.contains("lobby"),
            "b has nobody left in #lobby"
        );
    }

    #[test]
    fn a_name_reserved_elsewhere_first_is_refused() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        // Both ask before either hears of the other: the store decides.
        net.hubs[0].line(c(0), "/nick twin", &mut net.bus[0]);
        net.hubs[1].line(c(0), "/nick Twin", &mut net.bus[1]);
        net.pump();
        let a = net.take(0);
        let b = net.take(1);
        assert!(a.iter().any(|(_, l)| l == "*** you are now twin"), "{a:?}");
        assert!(
            b.iter()
                .any(|(_, l)| l == "*** error: the name Twin is taken"),
            "{b:?}"
        );
    }

    #[test]
    fn a_lost_node_takes_its_users_with_it() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.take(0);
        assert_eq!(net.hubs[0].remote_nodes(), vec![Rc::<str>::from("b")]);
        net.hubs[0].node_lost("b", "server lost", &mut net.bus[0]);
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** guest-101 left (server lost)")])
        );
        net.line(0, 0, "/who");
        assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (1): guest-1")]));
    }

    #[test]
    fn whois_of_a_user_elsewhere_shows_its_idle_time_to_the_minute() {
        let mut net = Net::new();
        let t0 = 1_796_688_000_000; // 2026-12-08 00:00 UTC
        for h in 0..2 {
            net.hubs[h].tick(t0);
        }
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.line(1, 0, "/nick bob");
        net.take(0);
        // Bob speaks at once (told nothing new: within the minute), then
        // after five minutes of silence (told).
        net.line(1, 0, "hi");
        for h in 0..2 {
            net.hubs[h].tick(t0 + 300_000);
        }
        net.line(1, 0, "back");
        for h in 0..2 {
            net.hubs[h].tick(t0 + 420_000);
        }
        net.take(0);
        net.line(0, 0, "/whois bob");
        assert_eq!(
            net.take(0),
            pairs(&[(
                0,
                "*** whois bob: shares #lobby with you; idle 2m 0s, to the minute; \
                 connected since 2026-12-08 00:00 UTC; on another server"
            )])
        );
        // As bob's own instance says it.
        net.line(1, 0, "/whois bob");
        let got = net.take(1);
        let last = &got.last().expect("an answer").1;
        assert!(
            last.contains("; idle 2m 0s; connected since 2026-12-08 00:00 UTC"),
            "{got:?}"
        );
    }

    #[test]
    fn a_newcomer_gets_each_roster_alone_and_nobody_else_hears_it_again() {
        let mut hub = Hub::new(200).with_cluster("a");
        let mut out = Bus::default();
        hub.add_guests(1, 100);
        hub.link_up(&mut out);
        for k in 0..3 {
            hub.connect(c(k), LOCALHOST, &mut out);
        }
        out.presence.clear();
        hub.remote_presence(Presence::Hello { node: "c~1".into() }, &mut out);
        // Every other instance has our users already: a roster for all
        // would make each of N instances send its users to all N.
        assert!(out.presence.is_empty(), "{:?}", out.presence);
        let here: Vec<&str> = out
            .directed
            .iter()
            .map(|(to, p)| {
                assert_eq!(to, "c~1");
                match p {
                    Presence::Here { name, .. } => name.as_str(),
                    Presence::End { .. } => "end",
                    // Each user's times, for /whois there (issue 22).
                    Presence::Seen { .. } => "seen",
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(
            here,
            [
                "guest-1", "seen", "guest-2", "seen", "guest-3", "seen", "end"
            ]
        );
        // Our own arrival (or return) is still told to everyone.
        out.directed.clear();
        hub.link_down(&mut out);
        hub.link_up(&mut out);
        assert!(out.directed.is_empty());
        let heres = out
            .presence
            .iter()
            .filter(|p| matches!(p, Presence::Here { .. }));
        assert_eq!(heres.count(), 3);
    }

    #[test]
    fn a_restarted_or_departing_node_takes_its_old_users_with_it() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.take(0);
        // "b" comes back as a new incarnation of the same instance.
        let hello = Presence::Hello { node: "b~2".into() };
        net.hubs[0].remote_presence(hello, &mut net.bus[0]);
        assert!(same_instance_name("b", "b~2") && !same_instance_name("b~1", "bb~1"));
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** guest-101 left (server lost)")])
        );
        net.pump();
        net.hubs[1].connect(c(4), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.take(0);
        net.hubs[1].shutdown(&mut net.bus[1]);
        net.pump();
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** guest-102 left (server shutting down)")])
        );
        // Neither a replaced incarnation nor one that said goodbye is
        // waited for to come back.
        assert!(net.hubs[0].lost_nodes().is_empty());
    }

    #[test]
    fn a_stopping_node_gives_its_names_back_before_its_goodbye() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.line(1, 3, "/nick zed");
        net.pump();
        net.take(0);
        net.hubs[1].shutdown(&mut net.bus[1]);
        assert_eq!(net.bus[1].released, [("zed".to_string(), c(3))]);
        net.pump();
        net.take(0);
        net.line(0, 0, "/nick zed");
        net.pump();
        assert_eq!(net.take(0), pairs(&[(0, "*** you are now zed")]));
    }

    #[test]
    fn the_names_of_a_lost_node_are_given_back_for_it_but_not_its_guests() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.hubs[1].connect(c(4), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.line(1, 3, "/nick Zed");
        net.pump();
        net.take(0);
        net.hubs[0].node_silent(NODES[1], &mut net.bus[0]);
        assert_eq!(
            net.bus[0].released_lost,
            [(NODES[1].to_string(), 3, "zed".to_string())],
            "the key's name, and not guest-N's"
        );
    }

    #[test]
    fn link_down_and_up_tell_local_users_once_and_rebuild_the_mirror() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.take(0);
        net.hubs[0].link_down(&mut net.bus[0]);
        net.hubs[0].link_down(&mut net.bus[0]);
        assert_eq!(net.take(0), pairs(&[(0, LINK_DOWN)]));
        net.line(0, 0, "/nick x");
        assert_eq!(
            net.take(0),
            pairs(&[(
                0,
                "*** error: names cannot change while the cluster link is down"
            )])
        );
        // Issue 12: the other instance's users are out of reach, not
        // gone (this asserted they left /who before): they stay, and
        // so their names stay taken; a line to them is refused.
        net.line(0, 0, "/who");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** #lobby (2): guest-1, guest-101")])
        );
        net.line(0, 0, "/msg guest-101 hi");
        assert_eq!(
            net.take(0),
            pairs(&[(
                0,
                "*** error: guest-101 is on another server, out of reach while the cluster link is down"
            )])
        );
        net.hubs[0].link_up(&mut net.bus[0]);
        net.pump();
        assert_eq!(net.take(0), pairs(&[(0, LINK_UP)]));
        net.line(0, 0, "/who");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** #lobby (2): guest-1, guest-101")])
        );
    }

    #[test]
    fn a_lost_node_heard_again_is_relearned_and_its_rooms_told() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.line(1, 3, "/nick bob");
        net.take(0);
        net.hubs[0].node_silent("b", &mut net.bus[0]);
        assert_eq!(net.take(0), pairs(&[(0, "*** bob left (server lost)")]));
        assert_eq!(net.hubs[0].lost_nodes(), vec![Rc::<str>::from("b")]);
        // Its heartbeat is back: asked for its users, it announces them.
        net.hubs[0].node_back("b", &mut net.bus[0]);
        net.pump();
        assert_eq!(net.take(0), pairs(&[(0, "*** bob is back")]));
        assert!(net.hubs[0].lost_nodes().is_empty(), "re-learned in full");
        net.line(0, 0, "/who");
        assert_eq!(net.take(0), pairs(&[(0, "*** #lobby (2): bob, guest-1")]));
        // Asking about a node that was never lost does nothing.
        net.hubs[0].node_back("b", &mut net.bus[0]);
        assert!(net.bus[0].presence.is_empty());
    }

    #[test]
    fn a_roster_without_a_user_means_it_left_while_we_could_not_hear() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(3), LOCALHOST, &mut net.bus[1]);
        net.hubs[1].connect(c(4), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.take(0);
        net.hubs[0].link_down(&mut net.bus[0]);
        // guest-101 leaves while a cannot hear it.
        net.hubs[1].disconnect(c(3), None, &mut net.bus[1]);
        net.bus[1] = Bus {
            subscribed: std::mem::take(&mut net.bus[1].subscribed),
            ..Bus::default()
        };
        net.take(0);
        net.line(0, 0, "/who");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** #lobby (3): guest-1, guest-101, guest-102")]),
            "out of reach, not gone"
        );
        // Back: b answers a's hello with its roster, without guest-101.
        net.hubs[0].link_up(&mut net.bus[0]);
        net.pump();
        assert_eq!(
            net.take(0),
            pairs(&[(0, LINK_UP), (0, "*** guest-101 left")])
        );
        net.line(0, 0, "/who");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** #lobby (2): guest-1, guest-102")])
        );
    }

    #[test]
    fn the_later_claim_gives_its_name_up_and_its_room_sees_the_rename() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.line(1, 0, "/nick alice");
        net.take(0);
        net.take(1);
        assert_eq!(net.hubs[1].claimed_names(), vec![(c(0), "alice", 1000)]);
        net.hubs[1].name_lost(c(0), "alice", &mut net.bus[1]);
        net.pump();
        assert_eq!(
            net.take(1),
            pairs(&[(
                0,
                "*** your name alice was also taken on another server while the cluster was split; you are now guest-102"
            )])
        );
        assert_eq!(net.take(0), pairs(&[(0, "*** alice is now guest-102")]));
        assert!(net.hubs[1].claimed_names().is_empty());
        assert!(
            net.bus[1].released.is_empty(),
            "the key is the winner's: not released"
        );
        // A stale verdict (the user changed name since) changes nothing.
        net.hubs[1].name_lost(c(0), "alice", &mut net.bus[1]);
        assert!(net.take(1).is_empty());
    }

    #[test]
    fn a_name_held_twice_in_the_mirror_stays_taken_until_both_let_go() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[0].connect(c(1), LOCALHOST, &mut net.bus[0]);
        net.line(0, 0, "/nick alice");
        // Another instance's alice (a split): both are in the mirror.
        let c: Rc<str> = "c".into();
        let here = Presence::Here {
            node: c.clone(),
            id: 9,
            name: "alice".into(),
            rooms: in_lobby(),
            round: 1,
        };
        net.hubs[0].remote_presence(here, &mut net.bus[0]);
        net.take(0);
        // The local alice lets go: the other still holds it.
        net.line(0, 0, "/nick al");
        net.line(0, 1, "/nick alice");
        assert!(
            net.take(0)
                .iter()
                .any(|(id, l)| *id == 1 && l == "*** error: the name alice is taken")
        );
        let gone = Presence::Gone { node: c, id: 9 };
        net.hubs[0].remote_presence(gone, &mut net.bus[0]);
        net.line(0, 1, "/nick alice");
        assert!(
            net.take(0)
                .iter()
                .any(|(id, l)| *id == 1 && l == "*** you are now alice")
        );
    }

    #[test]
    fn a_claim_that_cannot_be_queued_is_refused_with_a_reason() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.take(0);
        net.bus[0].busy = true;
        for _ in 0..2 {
            net.line(0, 0, "/nick x");
            assert_eq!(
                net.take(0),
                pairs(&[(
                    0,
                    "*** error: the cluster is busy; try /nick again in a moment"
                )]),
                "refused, and nothing left waiting"
            );
        }
    }

    #[test]
    fn the_mirror_has_a_bound() {
        let mut hub = Hub::new(200).with_cluster("a").with_max_remote(2);
        let mut bus = Bus::default();
        hub.link_up(&mut bus);
        hub.connect(c(0), LOCALHOST, &mut bus);
        for id in 0..5 {
            let here = Presence::Here {
                node: "z".into(),
                id,
                name: format!("z{id}"),
                rooms: in_lobby(),
                round: 1,
            };
            hub.remote_presence(here, &mut bus);
        }
        bus.got.clear();
        hub.line(c(0), "/who", &mut bus);
        assert_eq!(bus.got, pairs(&[(0, "*** #lobby (3): guest-a-1, z0, z1")]));
        // Not silently: the three left out are counted (for /metrics and
        // the log).
        assert_eq!(hub.mirrored(), (2, 3));
    }

    #[test]
    fn lines_are_numbered_by_the_store_and_with_the_link_down_history_is_local_and_says_so() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.hubs[0].line(c(0), "/ids on", &mut net.bus[0]);
        net.pump();
        net.take(0);
        net.take(1);
        net.line(0, 0, "one");
        // Back from the store to both, the sender's (with ids) included.
        assert_eq!(
            net.take(0),
            pairs(&[(0, "@id=7-1;room=lobby <guest-1> one")])
        );
        assert_eq!(net.take(1), pairs(&[(0, "<guest-1> one")]));
        net.line(1, 0, "two");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "@id=7-2;room=lobby <guest-101> two")])
        );
        assert_eq!(net.take(1), vec![], "no echo without ids");
        net.hubs[0].link_down(&mut net.bus[0]);
        net.take(0);
        net.line(0, 0, "alone");
        net.line(0, 0, "/history");
        let got = net.take(0);
        assert_eq!(
            got[0].1, "@id=1-1;room=lobby <guest-1> alone",
            "numbered here now"
        );
        assert_eq!(
            got[1].1,
            "*** the cluster link is down: this is only what was said on this server meanwhile"
        );
        assert!(got[2].1.contains("] <guest-1> alone"), "{got:?}");
        assert!(!got[2].1.contains("> one"), "{got:?}");
    }

    /// Asks for history as the link would; answers come when the test
    /// says.
    #[derive(Default)]
    struct Asking {
        got: Vec<(usize, String)>,
        asked: Vec<(usize, String, Asked, Option<Id>, usize)>,
    }

    impl Outbox for Asking {
        fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
            self.got.push((to.0, msg.text().to_string()));
        }
        fn close(&mut self, _: ClientId, _: String) {}
        fn cluster(&mut self, op: ClusterOp) {
            if let ClusterOp::History {
                id,
                room,
                asked,
                after,
                count,
            } = op
            {
                self.asked.push((id.0, room.into(), asked, after, count));
            }
        }
    }

    /// What the hub asks the link to keep of a topic.
    #[derive(Default)]
    struct Kept {
        got: Vec<(usize, String)>,
        kept: Vec<(String, Topic, u64)>,
    }

    impl Outbox for Kept {
        fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
            self.got.push((to.0, msg.text().to_string()));
        }
        fn close(&mut self, _: ClientId, _: String) {}
        fn cluster(&mut self, op: ClusterOp) {
            if let ClusterOp::KeepTopic {
                room,
                topic,
                ttl_ms,
            } = op
            {
                self.kept.push((room.into(), topic, ttl_ms));
            }
        }
    }

    #[test]
    fn a_topic_is_kept_in_redis_and_the_newer_of_two_wins() {
        let mut hub = Hub::new(200).with_cluster("a");
        let mut out = Kept::default();
        hub.tick(1_796_683_000_000);
        hub.link_up(&mut out);
        hub.connect(c(0), LOCALHOST, &mut out);
        hub.line(c(0), "/join games", &mut out);
        hub.line(c(0), "/join dev", &mut out);
        out.got.clear();
        // Redis kept a topic of #games: taken, and shown to its members
        // (with the room in front: #dev is current).
        let stored = |text: &str, at_ms| Topic {
            text: text.into(),
            by: "bob".into(),
            at_ms,
            locked: false,
        };
        hub.stored_topic("games", stored("dice", 1_796_682_000_000), &mut out);
        assert_eq!(
            out.got,
            pairs(&[(
                0,
                "[#games] *** topic of #games: dice (set by bob, 2026-12-07 22:20 UTC)"
            )])
        );
        out.got.clear();
        // An older one than the room has is not.
        hub.stored_topic("games", stored("stale", 1_796_681_000_000), &mut out);
        hub.stored_topic("nowhere", stored("no room", 1_796_684_000_000), &mut out);
        assert!(out.got.is_empty(), "{:?}", out.got);
        // Set here: kept with the history's TTL, as the link is told.
        hub.line(c(0), "/topic ship friday", &mut out);
        let ttl = hub.history.limits().ttl_ms;
        assert_eq!(out.kept.len(), 1);
        let (room, topic, ttl_ms) = &out.kept[0];
        assert_eq!(
            (room.as_str(), &*topic.text, *ttl_ms),
            ("dev", "ship friday", ttl)
        );
        // Newer than ours: taken over.
        hub.line(c(0), "/join games", &mut out);
        out.got.clear();
        hub.stored_topic("games", stored("poker", 1_796_684_000_000), &mut out);
        assert_eq!(
            out.got,
            pairs(&[(
                0,
                "*** topic of #games: poker (set by bob, 2026-12-07 22:53 UTC)"
            )])
        );
    }

    #[test]
    fn through_redis_too_an_id_of_another_room_is_named_so_not_a_restart() {
        let mut hub = Hub::new(200).with_cluster("a");
        let mut out = Asking::default();
        hub.link_up(&mut out);
        hub.connect(c(0), LOCALHOST, &mut out);
        hub.answer(c(0), "lobby", Asked::Enter, 9, 4, Vec::new(), 0, &mut out);
        hub.connect(c(1), LOCALHOST, &mut out);
        hub.answer(c(1), "lobby", Asked::Enter, 9, 4, Vec::new(), 0, &mut out);
        hub.line(c(1), "/join games", &mut out);
        hub.answer(c(1), "games", Asked::Enter, 5, 2, Vec::new(), 0, &mut out);
        hub.said("games", Id { epoch: 5, n: 3 }, None, "<b> x", &mut out);
        out.got.clear();
        hub.line(c(0), "/history since 5-3", &mut out);
        let since = Id { epoch: 5, n: 3 };
        hub.answer(
            c(0),
            "lobby",
            Asked::Since(since),
            9,
            4,
            Vec::new(),
            0,
            &mut out,
        );
        assert_eq!(
            out.got,
            pairs(&[(
                0,
                "*** 5-3 is an id of another room, not of #lobby; nothing to show\r\n*** history of #lobby: empty"
            )])
        );
    }

    #[test]
    fn an_ids_mark_never_stands_past_lines_still_on_their_way_here() {
        // Redis numbered lines 1 to 5 (said on another instance, or here
        // a moment ago) that have not come back here yet when the answer
        // to `/ids on` does: the mark must stand before them, or the
        // client takes them for lines it has seen (it hid them all).
        let mut hub = Hub::new(200).with_cluster("a");
        let mut out = Asking::default();
        hub.link_up(&mut out);
        hub.connect(c(0), LOCALHOST, &mut out);
        // Its join replay: the room had no lines yet.
        hub.answer(c(0), "lobby", Asked::Enter, 0, 0, Vec::new(), 0, &mut out);
        out.got.clear();
        hub.line(c(0), "/ids on", &mut out);
        hub.answer(c(0), "lobby", Asked::Mark, 9, 5, Vec::new(), 0, &mut out);
        assert_eq!(out.got, pairs(&[(0, "*** ids on: #lobby at 9-0")]));
        out.got.clear();
        hub.said("lobby", Id { epoch: 9, n: 1 }, None, "<b> one", &mut out);
        assert_eq!(out.got, pairs(&[(0, "@id=9-1;room=lobby <b> one")]));
        // A join replay read here covers what it read: a later mark may
        // stand at its end.
        hub.connect(c(1), LOCALHOST, &mut out);
        hub.answer(c(1), "lobby", Asked::Enter, 9, 5, Vec::new(), 0, &mut out);
        out.got.clear();
        hub.line(c(1), "/ids on", &mut out);
        hub.answer(c(1), "lobby", Asked::Mark, 9, 7, Vec::new(), 0, &mut out);
        assert_eq!(out.got, pairs(&[(1, "*** ids on: #lobby at 9-5")]));
    }

    #[test]
    fn a_client_waiting_for_history_gets_it_first_then_the_live_lines_it_did_not_have() {
        let mut hub = Hub::new(200).with_cluster("a");
        let mut out = Asking::default();
        hub.link_up(&mut out);
        hub.connect(c(0), LOCALHOST, &mut out);
        assert_eq!(out.asked, [(0, "lobby".into(), Asked::Enter, None, 20)]);
        out.got.clear();
        // Lines 3 and 4 arrive before the answer, which has 1 to 3.
        hub.said("lobby", Id { epoch: 9, n: 3 }, None, "<b> three", &mut out);
        hub.said("lobby", Id { epoch: 9, n: 4 }, None, "<b> four", &mut out);
        assert_eq!(out.got, vec![], "held");
        let lines = (1..=3)
            .map(|n| history::Line::new(n, NOON, &format!("<b> {n}")))
            .collect();
        hub.answer(c(0), "lobby", Asked::Enter, 9, 3, lines, 0, &mut out);
        assert_eq!(
            out.got,
            pairs(&[
                (
                    0,
                    "*** history of #lobby (3 lines, times UTC):\r\n[12:03] <b> 1\r\n\
                     [12:03] <b> 2\r\n[12:03] <b> 3\r\n*** end of history"
                ),
                (0, "<b> four"),
            ])
        );
        out.got.clear();
        // Resuming: what was missed is counted exactly.
        hub.line(c(0), "/history since 9-1", &mut out);
        let since = Id { epoch: 9, n: 1 };
        assert_eq!(
            out.asked[1],
            (0, "lobby".into(), Asked::Since(since), Some(since), 100)
        );
        let lines = vec![history::Line::new(4, NOON, "<b> four")];
        hub.answer(c(0), "lobby", Asked::Since(since), 9, 4, lines, 0, &mut out);
        assert!(
            out.got[0]
                .1
                .starts_with("*** 2 lines were missed; showing the last 1\r\n"),
            "{:?}",
            out.got
        );
        out.got.clear();
        // With ids: lines numbered while `/ids on` was being answered
        // are held and come after the mark, which stands before them.
        hub.connect(c(1), LOCALHOST, &mut out);
        hub.line(c(1), "/ids on", &mut out);
        hub.answer(c(1), "lobby", Asked::Enter, 9, 4, Vec::new(), 0, &mut out);
        assert_eq!(out.got.pop(), Some((1, "*** ids on: #lobby at 9-4".into())));
        out.got.clear();
        hub.said("lobby", Id { epoch: 9, n: 5 }, None, "<b> five", &mut out);
        hub.said("lobby", Id { epoch: 9, n: 6 }, None, "<b> six", &mut out);
        out.got.retain(|(to, _)| *to == 1);
        assert_eq!(out.got, vec![], "held");
        hub.answer(c(1), "lobby", Asked::Mark, 9, 6, Vec::new(), 0, &mut out);
        assert_eq!(
            out.got,
            pairs(&[
                (1, "*** ids on: #lobby at 9-4"),
                (1, "@id=9-5;room=lobby <b> five"),
                (1, "@id=9-6;room=lobby <b> six"),
            ])
        );
        hub.disconnect(c(1), None, &mut out);
        out.got.clear();
        // The link goes down while an answer is awaited: told, not stuck.
        hub.line(c(0), "/history", &mut out);
        hub.said("lobby", Id { epoch: 9, n: 7 }, None, "<b> five", &mut out);
        hub.link_down(&mut out);
        assert_eq!(
            out.got,
            pairs(&[
                (
                    0,
                    "*** the cluster link went down: the history asked for cannot be shown now"
                ),
                (0, "<b> five"),
                (0, LINK_DOWN),
            ])
        );
    }

    #[test]
    fn guests_come_from_reserved_blocks_or_carry_the_node_id() {
        let mut hub = Hub::new(200).with_cluster("n7");
        let mut bus = Bus::default();
        hub.connect(c(0), LOCALHOST, &mut bus);
        assert_eq!(hub.name(c(0)), Some("guest-n7-1"));
        hub.add_guests(500, 2);
        assert_eq!(hub.guests_left(), 2);
        hub.connect(c(1), LOCALHOST, &mut bus);
        hub.connect(c(2), LOCALHOST, &mut bus);
        hub.connect(c(3), LOCALHOST, &mut bus);
        assert_eq!(hub.name(c(1)), Some("guest-500"));
        assert_eq!(hub.name(c(2)), Some("guest-501"));
        assert_eq!(hub.name(c(3)), Some("guest-n7-2"));
        assert_eq!(hub.guests_used(), 501);
    }

    #[test]
    fn presence_is_per_room_and_topics_ops_and_away_cross_instances() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.pump();
        net.line(0, 0, "/nick alice");
        net.line(1, 0, "/nick bob");
        for room in ["games", "dev"] {
            net.line(0, 0, &format!("/join {room}"));
            net.line(1, 0, &format!("/join {room}"));
        }
        net.take(0);
        net.take(1);
        assert!(net.bus[1].subscribed.contains("games") && net.bus[1].subscribed.contains("lobby"));
        net.line(1, 0, "/names games");
        assert_eq!(net.take(1), pairs(&[(0, "*** #games (2): @alice, bob")]));
        net.line(0, 0, "/whois bob");
        assert_eq!(
            net.take(0),
            pairs(&[(
                0,
                "*** whois bob: shares #dev, #games, #lobby with you; idle 0s, to the minute; connected since 1970-01-01 00:00 UTC; on another server"
            )])
        );
        // A line of a room that is not bob's current one, from the other instance.
        net.line(0, 0, "/join games");
        net.take(0);
        net.line(0, 0, "deal");
        assert_eq!(net.take(1), pairs(&[(0, "[#games] <alice> deal")]));
        // Parts are per room: bob stays in the others.
        net.line(1, 0, "/part games");
        assert_eq!(net.take(0), pairs(&[(0, "*** bob left #games")]));
        net.take(1);
        assert!(
            !net.bus[1].subscribed.contains("games"),
            "nobody of b's in #games"
        );
        net.line(0, 0, "/names dev");
        assert_eq!(net.take(0), pairs(&[(0, "*** #dev (2): @alice, bob")]));
        // Topics, ops and away messages reach the other instance.
        net.line(0, 0, "/join dev");
        net.line(0, 0, "/topic ship friday");
        net.line(0, 0, "/op bob");
        net.take(0);
        assert_eq!(
            net.take(1),
            pairs(&[
                (0, "*** alice set the topic of #dev: ship friday"),
                (0, "*** alice made bob an operator of #dev")
            ])
        );
        net.line(1, 0, "/topic");
        assert!(
            net.take(1)[0]
                .1
                .starts_with("*** topic of #dev: ship friday (set by alice, ")
        );
        net.line(1, 0, "/topic lock");
        assert_eq!(
            net.take(1),
            pairs(&[(0, "*** bob locked the topic of #dev")])
        );
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** bob locked the topic of #dev")])
        );
        net.line(1, 0, "/away lunch");
        net.line(0, 0, "/msg bob hi");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "-> *bob* hi"), (0, "*** bob is away: lunch")])
        );
        assert_eq!(
            net.take(1),
            pairs(&[(0, "*** you are away: lunch"), (0, "*alice* hi")])
        );
        // A room operator's kick of a user on another instance: its own
        // instance takes it out of the room, and everyone sees it go.
        net.line(1, 0, "/kick alice");
        assert_eq!(
            net.take(0),
            pairs(&[
                (0, "*** alice was kicked from #dev by bob"),
                (0, "*** now talking in #games")
            ])
        );
        assert_eq!(
            net.take(1),
            pairs(&[(0, "*** alice was kicked from #dev by bob")])
        );
        net.line(1, 0, "/names");
        assert_eq!(net.take(1), pairs(&[(0, "*** #dev (1): @bob")]));
        // The last member of a room parts: the room goes everywhere.
        net.line(1, 0, "/join solo");
        net.line(1, 0, "/part solo");
        net.take(1);
        net.line(0, 0, "/rooms");
        assert_eq!(
            net.take(0),
            pairs(&[(0, "*** rooms (3): #dev (1), #games (1), #lobby (2)")])
        );
        // A roster after a restart of the link carries every room.
        net.hubs[0].link_down(&mut net.bus[0]);
        net.hubs[0].link_up(&mut net.bus[0]);
        net.pump();
        net.take(0);
        net.take(1);
        net.line(1, 0, "/whois alice");
        assert_eq!(
            net.take(1),
            pairs(&[(
                0,
                "*** whois alice: shares #lobby with you; idle 0s, to the minute; connected since 1970-01-01 00:00 UTC; on another server"
            )])
        );
    }

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_client_waiting_for_redis_takes_no_more_lines_until_the_answer() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        // Its join replay is asked of Redis: nothing it says is taken yet.
        assert!(net.hubs[0].busy(c(0)));
        let batch = texts(&["/nick zed", "first line"]);
        assert_eq!(net.hubs[0].lines(c(0), &batch, &mut net.bus[0]), 0);
        net.pump();
        net.hubs[1].connect(c(0), LOCALHOST, &mut net.bus[1]);
        net.pump();
        assert!(!net.hubs[0].busy(c(0)));
        net.take(0);
        net.take(1);
        // The claim is a round trip: the line after it waits for it.
        assert_eq!(net.hubs[0].lines(c(0), &batch, &mut net.bus[0]), 1);
        assert!(net.hubs[0].busy(c(0)));
        assert_eq!(net.hubs[0].lines(c(0), &batch[1..], &mut net.bus[0]), 0);
        // Nobody else waits for it.
        assert!(!net.hubs[1].busy(c(0)));
        let other = texts(&["hello"]);
        assert_eq!(net.hubs[1].lines(c(0), &other, &mut net.bus[1]), 1);
        net.pump();
        assert!(!net.hubs[0].busy(c(0)), "answered");
        assert_eq!(net.hubs[0].lines(c(0), &batch[1..], &mut net.bus[0]), 1);
        net.pump();
        assert_eq!(
            net.take(1),
            pairs(&[(0, "*** guest-1 is now zed"), (0, "<zed> first line")])
        );
        // A history read waits the same way; the link going down ends it.
        let batch = texts(&["/history", "after"]);
        assert_eq!(net.hubs[0].lines(c(0), &batch, &mut net.bus[0]), 1);
        assert!(net.hubs[0].busy(c(0)));
        net.bus[0].asked.clear();
        net.hubs[0].link_down(&mut net.bus[0]);
        assert!(!net.hubs[0].busy(c(0)));
        // So does a refused claim.
        net.hubs[0].link_up(&mut net.bus[0]);
        net.pump();
        net.bus[0].busy = true;
        assert_eq!(
            net.hubs[0].lines(c(0), &texts(&["/nick ann", "x"]), &mut net.bus[0]),
            1
        );
        assert!(net.hubs[0].busy(c(0)));
        net.pump();
        assert!(!net.hubs[0].busy(c(0)));
    }

    #[test]
    fn a_line_before_a_leave_is_shown_before_it_on_every_instance() {
        let mut net = Net::new();
        for (h, id) in [(0, 0), (0, 1), (1, 0)] {
            net.hubs[h].connect(c(id), LOCALHOST, &mut net.bus[h]);
            net.pump();
        }
        net.take(0);
        net.take(1);
        // (Issue 22: a /join no longer leaves the room; a /part does.)
        let batch = texts(&["a line", "/part lobby", "/nick zed"]);
        let mut taken = 0;
        for _ in 0..4 {
            taken += net.hubs[0].lines(c(0), &batch[taken..], &mut net.bus[0]);
            net.pump();
        }
        assert_eq!(taken, 3);
        // The observer on the sender's instance, and the one on the other.
        let here: Vec<_> = net.take(0).into_iter().filter(|(to, _)| *to == 1).collect();
        assert_eq!(
            here,
            pairs(&[(1, "<guest-1> a line"), (1, "*** guest-1 left #lobby")])
        );
        let b: Vec<_> = net.take(1);
        assert_eq!(
            b,
            pairs(&[(0, "<guest-1> a line"), (0, "*** guest-1 left #lobby")])
        );
    }

    #[test]
    fn a_notice_the_link_cannot_send_is_shown_here_at_once() {
        let mut net = Net::new();
        for id in 0..2 {
            net.hubs[0].connect(c(id), LOCALHOST, &mut net.bus[0]);
            net.pump();
        }
        net.take(0);
        // As the link hands a notice back when it cannot send it.
        let back = Inbound::Notice {
            room: "lobby".into(),
            about: Some(c(0)),
            text: "*** guest-1 left #lobby".into(),
            seq: None,
        };
        back.apply(&mut net.hubs[0], &mut net.bus[0]);
        assert_eq!(net.take(0), pairs(&[(1, "*** guest-1 left #lobby")]));
        // Link down, the hub delivers it itself.
        net.hubs[0].link_down(&mut net.bus[0]);
        net.take(0);
        net.line(0, 0, "/part lobby");
        let got = net.take(0);
        assert!(
            got.contains(&(1, "*** guest-1 left #lobby".into())),
            "{got:?}"
        );
    }

    #[test]
    fn a_notice_is_held_like_a_line_for_a_client_awaiting_its_history() {
        let mut net = Net::new();
        net.hubs[0].connect(c(0), LOCALHOST, &mut net.bus[0]);
        net.pump();
        net.hubs[0].connect(c(1), LOCALHOST, &mut net.bus[0]);
        // c(1)'s replay is not answered yet: what the room sees meanwhile
        // comes after it, in the room's order.
        net.bus[0].asked.clear();
        net.take(0);
        net.hubs[0].said(
            "lobby",
            Id { epoch: 7, n: 1 },
            None,
            "<x> one",
            &mut net.bus[0],
        );
        net.hubs[0].noticed("lobby", None, "*** x is now y", &mut net.bus[0]);
        assert_eq!(net.take(0), pairs(&[(0, "<x> one"), (0, "*** x is now y")]));
        net.hubs[0].answer(
            c(1),
            "lobby",
            Asked::Enter,
            7,
            1,
            Vec::new(),
            0,
            &mut net.bus[0],
        );
        assert_eq!(net.take(0), pairs(&[(1, "<x> one"), (1, "*** x is now y")]));
    }
}

fn guarded_hub() -> Hub {
    let access = Access::new(
        Some("hunter2".into()),
        Some("sesame".into()),
        2,
        crate::access::Bans::default(),
    );
    let mut hub = Hub::new(200).with_access(access);
    hub.tick(1_000_000);
    hub
}

#[test]
fn before_the_password_a_connection_is_nowhere_and_hears_nothing() {
    let mut hub = guarded_hub();
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, NEEDS_PASSWORD)]));
    hub.lines(c(0), &["/pass hunter2".into()], &mut rec);
    assert!(
        rec.take()[0]
            .1
            .starts_with("*** welcome to chatd, guest-1!")
    );
    hub.connect(c(1), LOCALHOST, &mut rec);
    hub.lines(
        c(1),
        &["hi".into(), "/who".into(), "/pass".into()],
        &mut rec,
    );
    let refused = "*** error: this server needs a password: /pass SECRET";
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, NEEDS_PASSWORD),
            (1, refused),
            (1, refused),
            (1, "*** error: usage: /pass SECRET"),
        ])
    );
    assert_eq!(hub.online(), 1);
    hub.line(c(0), "only for those inside", &mut rec);
    assert_eq!(rec.take(), vec![], "nobody else is inside");
    // Wrong twice: the third try is not even looked at.
    for _ in 0..2 {
        hub.line(c(1), "/pass nope", &mut rec);
        assert_eq!(rec.to(1), vec!["*** error: wrong password"]);
    }
    hub.line(c(1), "/pass hunter2", &mut rec);
    let got = rec.to(1);
    assert!(
        got[0]
            .starts_with("*** error: too many wrong passwords from your address; try again in 1m"),
        "{got:?}"
    );
    assert_eq!(hub.moderation().password_failures, 2);
    // A minute later it may try again.
    hub.tick(1_000_000 + crate::access::PASS_WINDOW_MS);
    hub.lines(c(1), &["/pass hunter2".into(), "after".into()], &mut rec);
    let got = rec.take();
    assert!(
        got[0].1.starts_with("*** welcome to chatd, guest-2!"),
        "{got:?}"
    );
    assert!(got.contains(&(0, "<guest-2> after".to_string())), "{got:?}");
    // Gone before the password: nothing to tell anyone.
    hub.connect(c(2), LOCALHOST, &mut rec);
    rec.take();
    hub.disconnect(c(2), Some("reset"), &mut rec);
    assert_eq!(rec.take(), vec![]);
}

/// alice (0, an operator) and bob (1), inside a guarded hub.
fn oper_and_user() -> (Hub, Rec) {
    let (mut hub, mut rec) = alice_and_bob_past_the_password(1_000_000);
    hub.line(c(0), "/oper sesame", &mut rec);
    rec.take();
    (hub, rec)
}

/// alice (0) and bob (1) on a server with a password, let in at `now`.
fn alice_and_bob_past_the_password(now: u64) -> (Hub, Rec) {
    let mut hub = guarded_hub();
    hub.tick(now);
    let mut rec = Rec::default();
    for (id, name) in [(0, "alice"), (1, "bob")] {
        hub.connect(c(id), LOCALHOST, &mut rec);
        hub.lines(
            c(id),
            &["/pass hunter2".into(), format!("/nick {name}")],
            &mut rec,
        );
    }
    (hub, rec)
}

#[test]
fn a_ban_by_name_refuses_the_address_until_it_runs_out() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(0), "/ban bob confirm 10m spam", &mut rec);
    let notice = "*** bob was banned by alice for 10m (spam)";
    assert_eq!(rec.take(), pairs(&[(0, notice), (1, notice)]));
    assert_eq!(rec.closed, vec![(1, "banned by alice".to_string())]);
    assert_eq!(hub.online(), 1);
    let saved = hub.bans_to_save().expect("the bans changed").text();
    assert!(
        saved.contains("127.0.0.1/32\t1600000\talice\tbob: spam"),
        "{saved}"
    );
    assert_eq!(hub.bans_to_save(), None, "once per change");
    // The operator's answer once the file is written.
    hub.bans_saved(Ok(()), &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(0, "*** banned 127.0.0.1 for 10m; 1 user disconnected")])
    );
    hub.connect(c(5), "127.0.0.1".parse().unwrap(), &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(
            5,
            "*** error: your address is banned from this server (10m 0s more, by alice: bob: spam)"
        )])
    );
    hub.connect(c(6), "::ffff:127.0.0.1".parse().unwrap(), &mut rec);
    assert!(
        rec.take()[0]
            .1
            .starts_with("*** error: your address is banned")
    );
    hub.connect(c(7), "10.0.0.1".parse().unwrap(), &mut rec);
    assert_eq!(rec.take(), pairs(&[(7, NEEDS_PASSWORD)]));
    hub.tick(1_600_000);
    hub.connect(c(8), LOCALHOST, &mut rec);
    assert_eq!(rec.take(), pairs(&[(8, NEEDS_PASSWORD)]), "the ban ran out");
    assert_eq!(hub.moderation().banned_refused, 2);
}

#[test]
fn kick_and_mute_tell_the_room_and_only_operators_may() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(1), "/kick alice", &mut rec);
    assert_eq!(
        rec.to(1),
        vec!["*** error: /kick is for operators (/oper PASSWORD)"]
    );
    hub.line(c(1), "/oper alice", &mut rec);
    assert_eq!(rec.to(1), vec!["*** error: wrong operator password"]);
    hub.line(c(0), "/mute bob 30s", &mut rec);
    let notice = "*** bob was muted by alice for 30s";
    assert_eq!(rec.take(), pairs(&[(0, notice), (1, notice)]));
    for line in ["hi", "//x", "/me waves", "/msg alice psst"] {
        hub.line(c(1), line, &mut rec);
        assert_eq!(
            rec.take(),
            pairs(&[(
                1,
                "*** error: you are muted (30s more); messages, /me and /msg are refused"
            )]),
            "{line}"
        );
    }
    hub.lines(c(1), &["a".into(), "b".into()], &mut rec);
    assert_eq!(rec.take().len(), 2, "one refusal each, nothing relayed");
    hub.tick(1_030_000);
    hub.line(c(1), "free", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "<bob> free")]));
    hub.line(c(0), "/kick bob enough", &mut rec);
    let notice = "*** bob was kicked by alice (enough)";
    assert_eq!(rec.take(), pairs(&[(0, notice), (1, notice)]));
    assert_eq!(rec.closed, vec![(1, "kicked by alice".to_string())]);
    // The reactor's later disconnect finds nobody: no second notice.
    hub.disconnect(c(1), Some("kicked by alice"), &mut rec);
    assert_eq!(rec.take(), vec![]);
    let m = hub.moderation();
    assert_eq!((m.kicks, m.mutes, m.password_failures), (1, 1, 1));
}

#[test]
fn the_list_of_bans_is_bounded_like_who() {
    let (mut hub, mut rec) = oper_and_user();
    for i in 0..=LIST_MAX {
        hub.line(
            c(0),
            &format!("/ban 10.0.{}.{} 1h", i / 256, i % 256),
            &mut rec,
        );
    }
    rec.take();
    hub.line(c(0), "/bans", &mut rec);
    let got = rec.to(0);
    assert_eq!(
        got.len(),
        LIST_MAX + 2,
        "a head, LIST_MAX entries, the rest counted"
    );
    assert_eq!(got[0], format!("*** bans ({}):", LIST_MAX + 1));
    assert_eq!(got[LIST_MAX + 1], "***   … and 1 more");
}

#[test]
fn a_new_ban_closes_connections_waiting_for_the_password_and_the_gate_checks_bans() {
    let (mut hub, mut rec) = oper_and_user();
    let spare: IpAddr = "10.0.0.7".parse().unwrap();
    hub.connect(c(5), spare, &mut rec);
    hub.connect(c(6), "10.0.0.8".parse().unwrap(), &mut rec);
    rec.take();
    hub.line(c(0), "/ban 10.0.0.7 1h", &mut rec);
    saved(&mut hub, &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (
                5,
                "*** error: your address is banned from this server (1h 0m more, by alice)"
            ),
            (
                0,
                "*** banned 10.0.0.7 for 1h; 0 users disconnected (and 1 connection waiting for the password)"
            ),
        ])
    );
    assert_eq!(rec.closed, vec![(5, "banned".to_string())]);
    // Whatever it sends before the reactor closes it, it is not let in.
    hub.line(c(5), "/pass hunter2", &mut rec);
    assert_eq!(rec.take(), vec![]);
    hub.line(c(6), "/pass hunter2", &mut rec);
    assert!(rec.to(6)[0].starts_with("*** welcome"), "not covered");
}

#[test]
fn operators_are_asked_to_confirm_what_is_almost_certainly_a_mistake() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(0), "/ban 0.0.0.0/0 1h oops", &mut rec);
    assert_eq!(
        rec.to(0),
        vec![
            "*** error: not banned: 0.0.0.0/0: it covers your own address (127.0.0.1); to ban it anyway: /ban 0.0.0.0/0 confirm 1h oops"
        ]
    );
    hub.line(c(0), "/ban 8.0.0.0/7", &mut rec);
    assert_eq!(
        rec.to(0),
        vec![
            "*** error: not banned: 8.0.0.0/7: it is wider than /8 of IPv4; to ban it anyway: /ban 8.0.0.0/7 confirm"
        ]
    );
    for typo in ["30min", "1hour", "1.5h", "10 m", "0s"] {
        hub.line(c(0), &format!("/ban 10.0.0.1 {typo} spam"), &mut rec);
        let got = rec.to(0);
        assert!(
            got[0].starts_with("*** error: ") && got[0].contains(" is not a duration"),
            "{typo}: {got:?}"
        );
        hub.line(c(0), &format!("/mute bob {typo}"), &mut rec);
        let got = rec.to(0);
        assert!(got[0].contains(" is not a duration"), "{typo}: {got:?}");
    }
    assert_eq!(hub.bans_to_save(), None, "nothing was banned");
    hub.line(c(0), "/ban 8.0.0.0/7 confirm 1h", &mut rec);
    saved(&mut hub, &mut rec);
    assert_eq!(
        rec.to(0),
        vec!["*** banned 8.0.0.0/7 for 1h; 0 users disconnected"]
    );
}

#[test]
fn a_ban_by_name_covers_the_ipv6_64_the_limits_count() {
    let (mut hub, mut rec) = oper_and_user();
    hub.connect(c(5), "2001:db8:1:2::5".parse().unwrap(), &mut rec);
    hub.lines(
        c(5),
        &["/pass hunter2".into(), "/nick carol".into()],
        &mut rec,
    );
    rec.take();
    hub.line(c(0), "/ban carol 1h", &mut rec);
    saved(&mut hub, &mut rec);
    let got = rec.to(0);
    assert_eq!(
        got.last().unwrap(),
        "*** banned 2001:db8:1:2::/64 for 1h; 1 user disconnected"
    );
    hub.connect(c(6), "2001:db8:1:2:ffff::1".parse().unwrap(), &mut rec);
    assert!(rec.to(6)[0].starts_with("*** error: your address is banned"));
}

#[test]
fn a_line_beginning_with_white_space_then_a_slash_is_that_command() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(1), "  /oper sesame", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(1, "*** you are now an operator; /help lists your commands")]),
        "not relayed to the room"
    );
    hub.lines(c(1), &["\t/me waves".into(), " //x".into()], &mut rec);
    assert_eq!(rec.to(0), vec!["* bob waves", "<bob> /x"]);
    let mut guarded = guarded_hub();
    guarded.connect(c(3), LOCALHOST, &mut rec);
    guarded.line(c(3), " /pass hunter2", &mut rec);
    assert!(rec.to(3)[1].starts_with("*** welcome"), "the gate too");
}

#[test]
fn an_operator_is_told_when_the_bans_could_not_be_saved() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(0), "/ban 10.0.0.1 1h", &mut rec);
    rec.take();
    assert!(hub.bans_to_save().is_some());
    hub.bans_saved(Err("bans.txt: Is a directory".into()), &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** banned 10.0.0.1 for 1h; 0 users disconnected"),
            (
                0,
                "*** error: the bans file could not be written (bans.txt: Is a directory); the change holds only until the server restarts"
            )
        ])
    );
    hub.line(c(0), "/unban 10.0.0.1", &mut rec);
    assert_eq!(rec.take(), vec![], "not before it is written");
    assert!(hub.bans_to_save().is_some());
    hub.bans_saved(Ok(()), &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** unbanned 10.0.0.1")]));
}

/// The bans file written: the answers to /ban and /unban go out.
fn saved(hub: &mut Hub, rec: &mut Rec) {
    if hub.bans_to_save().is_some() {
        hub.bans_saved(Ok(()), rec);
    }
}

#[test]
fn since_an_id_of_another_room_says_so_not_that_the_server_restarted() {
    let mut hub = history_hub(3, 20);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.connect(c(1), LOCALHOST, &mut rec);
    hub.line(c(0), "in the lobby", &mut rec);
    let lobby = hub.history.head(0).unwrap().epoch;
    hub.line(c(1), "/join games", &mut rec);
    rec.take();
    hub.line(c(1), &format!("/history since {lobby}-1"), &mut rec);
    let got = rec.to(1).join("\r\n");
    assert!(
        got.starts_with(&format!(
            "*** {lobby}-1 is an id of another room, not of #games; nothing to show\r\n"
        )),
        "{got}"
    );
    assert!(!got.contains("restarted"), "{got}");
}

mod rooms;
