//! Issue 22: a user in several rooms at once — the set, the current room,
//! what other rooms' lines look like, topics, room operators, away.

use super::*;

/// `n` users named u0, u1, … (ids 0..n), all in the lobby, output taken.
fn named(n: usize) -> (Hub, Rec) {
    let (mut hub, mut rec) = hub_with(n);
    hub.tick(NOON);
    for id in 0..n {
        hub.line(c(id), &format!("/nick u{id}"), &mut rec);
    }
    rec.take();
    (hub, rec)
}

#[test]
fn rooms_are_a_set_and_joining_one_again_only_makes_it_current() {
    let (mut hub, mut rec) = named(2);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(0), "/join dev", &mut rec);
    rec.take();
    hub.line(c(1), "/rooms", &mut rec);
    assert_eq!(
        rec.to(1),
        ["*** rooms (3): #dev (1), #games (1), #lobby (2)"],
        "u0 is in all three"
    );
    hub.line(c(0), "/join #GAMES", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** now talking in #games")]));
    hub.line(c(1), "/join games", &mut rec);
    rec.take();
    hub.line(c(0), "hi games", &mut rec);
    assert_eq!(rec.take(), pairs(&[(1, "<u0> hi games")]));
    assert_eq!(hub.rooms(), 3);
}

#[test]
fn parting_makes_the_most_recently_joined_of_those_left_current() {
    let (mut hub, mut rec) = named(2);
    for room in ["a", "b", "c"] {
        hub.line(c(0), &format!("/join {room}"), &mut rec);
        hub.line(c(1), &format!("/join {room}"), &mut rec);
    }
    hub.line(c(0), "/join a", &mut rec);
    rec.take();
    hub.line(c(0), "/part", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "[#a] *** u0 left #a"),
            (0, "*** you left #a; now talking in #c"),
        ])
    );
    // The first word is the room, as IRC's PART: a room it is not in is
    // an error, never a reason that leaves the current one.
    hub.line(c(0), "/part gone fishing", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "*** error: you are not in #gone")]));
    hub.line(c(0), "/part c gone fishing", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "*** u0 left #c (gone fishing)"),
            (0, "*** you left #c; now talking in #b"),
        ])
    );
    hub.line(c(0), "/part #lobby bye all", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "[#lobby] *** u0 left #lobby (bye all)"),
            (0, "*** you left #lobby; now talking in #b"),
        ])
    );
    hub.line(c(0), "/part #nope", &mut rec);
    assert_eq!(rec.to(0), ["*** error: you are not in #nope"]);
    hub.line(c(0), "/part b", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** you left #b; you are in no room now (/join ROOM)"]
    );
    for line in [
        "hello?",
        "/me waits",
        "//slash",
        "/who",
        "/history",
        "/part",
        "/topic",
    ] {
        hub.line(c(0), line, &mut rec);
        assert_eq!(rec.to(0), [NO_ROOM], "{line}");
    }
    hub.lines(c(0), &["a".into(), "b".into()], &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, NO_ROOM), (0, NO_ROOM)]));
    // Private messages do not need a room.
    hub.line(c(0), "/msg u1 still here", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(1, "*u0* still here"), (0, "-> *u1* still here")])
    );
    hub.line(c(0), "/join lobby", &mut rec);
    assert_eq!(rec.to(0)[0], "*** you joined #lobby (2): u0, u1");
}

#[test]
fn lines_and_notices_of_other_rooms_carry_the_room_in_front() {
    let (mut hub, mut rec) = named(3);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(1), "/join games", &mut rec);
    hub.line(c(0), "/join lobby", &mut rec);
    rec.take();
    hub.line(c(1), "hi", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "[#games] <u1> hi")]));
    hub.line(c(1), "/me waves", &mut rec);
    assert_eq!(rec.take(), pairs(&[(0, "[#games] * u1 waves")]));
    hub.line(c(2), "/join games", &mut rec);
    let got = rec.take();
    assert_eq!(
        &got[..2],
        pairs(&[
            (0, "[#games] *** u2 joined #games"),
            (1, "*** u2 joined #games")
        ])
    );
    // u0's current room is the lobby: as today there.
    hub.line(c(1), "/join lobby", &mut rec);
    hub.line(c(2), "/join lobby", &mut rec);
    rec.take();
    hub.line(c(2), "in the lobby", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(0, "<u2> in the lobby"), (1, "<u2> in the lobby")])
    );
    // A nick change and a leave are told in every room, each as its room.
    hub.line(c(0), "/join games", &mut rec);
    rec.take();
    hub.line(c(2), "/nick carol", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (2, "*** you are now carol"),
            (0, "[#lobby] *** u2 is now carol"),
            (1, "*** u2 is now carol"),
            (0, "*** u2 is now carol"),
            (1, "[#games] *** u2 is now carol"),
        ])
    );
    hub.disconnect(c(2), Some("quit"), &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "[#lobby] *** carol left (quit)"),
            (1, "*** carol left (quit)"),
            (0, "*** carol left (quit)"),
            (1, "[#games] *** carol left (quit)"),
        ])
    );
}

#[test]
fn at_most_one_shared_buffer_per_variant_and_ids_carry_the_room() {
    let mut hub = history_hub(100, 0);
    let mut p = Ptrs(Vec::new());
    // 0..8 in #games; the odd ones have ids on, 0..4 talk in #lobby.
    for id in 0..8 {
        hub.connect(c(id), LOCALHOST, &mut p);
        hub.line(c(id), "/join games", &mut p);
        if id % 2 == 1 {
            hub.line(c(id), "/ids on", &mut p);
        }
        if id < 4 {
            hub.line(c(id), "/join lobby", &mut p);
        }
    }
    let epoch = hub
        .history
        .head(hub.rooms[hub.room_keys["games"]].hist)
        .unwrap()
        .epoch;
    p.0.clear();
    hub.line(c(4), "x", &mut p);
    let text = |id: usize| {
        p.0.iter()
            .find(|(t, ..)| *t == id)
            .map(|(_, _, s)| s.clone())
            .unwrap()
    };
    assert_eq!(text(0), "[#games] <guest-5> x");
    assert_eq!(
        text(1),
        format!("@id={epoch}-1;room=games [#games] <guest-5> x")
    );
    assert_eq!(text(5), format!("@id={epoch}-1;room=games <guest-5> x"));
    assert_eq!(text(6), "<guest-5> x");
    let mut buffers: Vec<*const Msg> = p.0.iter().map(|(_, b, _)| *b).collect();
    assert_eq!(buffers.len(), 7, "everyone but the sender, who has no ids");
    buffers.sort();
    buffers.dedup();
    assert_eq!(buffers.len(), 4, "current/other × ids/plain");
}

#[test]
fn max_rooms_per_user_is_a_bound_with_a_clear_error() {
    let mut hub = Hub::new(200).with_max_rooms(3);
    let mut rec = Rec::default();
    hub.connect(c(0), LOCALHOST, &mut rec);
    hub.line(c(0), "/join a", &mut rec);
    hub.line(c(0), "/join b", &mut rec);
    rec.take();
    hub.line(c(0), "/join c", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** error: you are in 3 rooms, the most allowed here; /part one first"]
    );
    hub.line(c(0), "/join a", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** now talking in #a"],
        "a room it is in still works"
    );
    hub.line(c(0), "/part", &mut rec);
    hub.line(c(0), "/join c", &mut rec);
    assert_eq!(rec.to(0)[1], "*** you joined #c (1): @guest-1");
}

#[test]
fn a_topic_is_shown_on_joining_settable_by_members_and_lockable_by_operators() {
    let (mut hub, mut rec) = named(3);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(1), "/join games", &mut rec);
    rec.take();
    hub.line(c(1), "/topic", &mut rec);
    assert_eq!(
        rec.to(1),
        ["*** #games has no topic (/topic TEXT sets one)"]
    );
    hub.line(c(1), "/topic  cards at  nine ", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "*** u1 set the topic of #games: cards at  nine"),
            (0, "*** u1 set the topic of #games: cards at  nine"),
        ])
    );
    hub.line(c(2), "/join games", &mut rec);
    assert_eq!(
        rec.to(2)[..2],
        [
            "*** you joined #games (3): @u0, u1, u2",
            "*** topic of #games: cards at  nine (set by u1, 2026-12-01 12:03 UTC)"
        ]
    );
    hub.line(c(1), "/topic lock", &mut rec);
    assert_eq!(
        rec.to(1),
        ["*** error: only operators of #games may lock its topic"]
    );
    hub.line(c(0), "/topic lock", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** u0 locked the topic of #games"),
            (1, "*** u0 locked the topic of #games"),
            (2, "*** u0 locked the topic of #games"),
        ])
    );
    hub.line(c(2), "/topic mine now", &mut rec);
    assert_eq!(
        rec.to(2),
        ["*** error: the topic of #games is locked; only its operators may change it"]
    );
    hub.line(c(0), "/topic poker", &mut rec);
    rec.take();
    hub.line(c(2), "/topic", &mut rec);
    assert_eq!(
        rec.to(2),
        ["*** topic of #games: poker (set by u0, 2026-12-01 12:03 UTC)"]
    );
    hub.line(c(0), "/topic unlock", &mut rec);
    hub.line(
        c(2),
        &format!("/topic {}", "x".repeat(MAX_TOPIC + 1)),
        &mut rec,
    );
    assert_eq!(
        rec.to(2).last().unwrap(),
        &format!("*** error: a topic is at most {MAX_TOPIC} bytes")
    );
    hub.line(c(2), "/topic anyone again", &mut rec);
    assert_eq!(rec.to(2), ["*** u2 set the topic of #games: anyone again"]);
    // The topic goes with the room.
    for id in 0..3 {
        hub.line(c(id), "/part games", &mut rec);
    }
    hub.line(c(0), "/join games", &mut rec);
    assert_eq!(rec.to(0).last().unwrap(), "*** you joined #games (1): @u0");
}

#[test]
fn a_message_to_an_away_user_is_answered_with_its_away_message() {
    let (mut hub, mut rec) = named(2);
    hub.line(c(1), "/away  lunch, back at 2 ", &mut rec);
    assert_eq!(rec.to(1), ["*** you are away: lunch, back at 2"]);
    hub.line(c(0), "/msg u1 coffee?", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "*u0* coffee?"),
            (0, "-> *u1* coffee?"),
            (0, "*** u1 is away: lunch, back at 2"),
        ])
    );
    hub.line(c(1), "/away", &mut rec);
    assert_eq!(rec.to(1), ["*** you are no longer away"]);
    hub.line(c(1), "/away", &mut rec);
    assert_eq!(rec.to(1), ["*** you are not away (/away MESSAGE sets it)"]);
    hub.line(c(0), "/msg u1 back?", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(1, "*u0* back?"), (0, "-> *u1* back?")])
    );
}

#[test]
fn whois_tells_shared_rooms_idle_time_and_since_and_the_address_only_to_operators() {
    let (mut hub, mut rec) = alice_and_bob_past_the_password(NOON);
    hub.line(c(1), "/join games", &mut rec);
    hub.line(c(1), "/join secret", &mut rec);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(1), "/away out", &mut rec);
    hub.tick(NOON + 125_000);
    rec.take();
    hub.line(c(0), "/whois BOB", &mut rec);
    assert_eq!(
        rec.to(0),
        [
            "*** whois bob: shares #games, #lobby with you; idle 2m 5s; connected since 2026-12-01 12:03 UTC; away: out"
        ]
    );
    hub.line(c(0), "/oper sesame", &mut rec);
    rec.take();
    hub.line(c(1), "now active", &mut rec);
    hub.line(c(0), "/whois bob", &mut rec);
    assert_eq!(
        rec.to(0),
        [
            "*** whois bob: shares #games, #lobby with you; idle 0s; connected since 2026-12-01 12:03 UTC; away: out; address 127.0.0.1"
        ]
    );
    hub.line(c(1), "/part lobby", &mut rec);
    hub.line(c(1), "/part games", &mut rec);
    rec.take();
    hub.line(c(0), "/whois bob", &mut rec);
    assert!(rec.to(0)[0].starts_with("*** whois bob: shares no room with you; "));
    hub.line(c(0), "/whois", &mut rec);
    assert_eq!(rec.to(0), ["*** error: usage: /whois NAME"]);
    hub.line(c(0), "/whois carol", &mut rec);
    assert_eq!(rec.to(0), ["*** error: no user named carol"]);
}

#[test]
fn a_rooms_creator_is_its_operator_and_passes_it_on() {
    let (mut hub, mut rec) = named(3);
    for id in 0..3 {
        hub.line(c(id), "/join games", &mut rec);
    }
    rec.take();
    hub.line(c(2), "/names games", &mut rec);
    assert_eq!(rec.to(2), ["*** #games (3): @u0, u1, u2"]);
    hub.line(c(2), "/names #lobby", &mut rec);
    assert_eq!(
        rec.to(2),
        ["*** #lobby (3): u0, u1, u2"],
        "the lobby has none"
    );
    hub.line(c(1), "/op u2", &mut rec);
    assert_eq!(rec.to(1), ["*** error: you are not an operator of #games"]);
    hub.line(c(1), "/kick u2", &mut rec);
    assert_eq!(
        rec.to(1),
        ["*** error: /kick is for operators (/oper PASSWORD)"]
    );
    hub.line(c(0), "/op u1", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** u0 made u1 an operator of #games"),
            (1, "*** u0 made u1 an operator of #games"),
            (2, "*** u0 made u1 an operator of #games"),
        ])
    );
    hub.line(c(0), "/op u1", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** error: u1 is already an operator of #games"]
    );
    hub.line(c(0), "/op nobody", &mut rec);
    assert_eq!(rec.to(0), ["*** error: no user named nobody"]);
    hub.line(c(0), "/op", &mut rec);
    assert_eq!(rec.to(0), ["*** error: usage: /op NAME"]);
    hub.line(c(1), "/help", &mut rec);
    assert!(rec.to(1).iter().any(|l| l.contains("/deop NAME")));
    // A room's kick: out of the room, not the server.
    hub.line(c(1), "/kick u2 too loud", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (0, "*** u2 was kicked from #games by u1 (too loud)"),
            (1, "*** u2 was kicked from #games by u1 (too loud)"),
            (2, "*** u2 was kicked from #games by u1 (too loud)"),
            (2, "*** now talking in #lobby"),
        ])
    );
    assert!(rec.closed.is_empty());
    hub.line(c(1), "/kick u2", &mut rec);
    assert_eq!(rec.to(1), ["*** error: u2 is not in #games"]);
    hub.line(c(2), "/names games", &mut rec);
    assert_eq!(rec.to(2), ["*** error: you are not in #games"]);
    hub.line(c(1), "/deop u0", &mut rec);
    assert_eq!(rec.to(1)[0], "*** u1 took u0's operator status in #games");
    hub.line(c(1), "/who", &mut rec);
    assert_eq!(rec.to(1), ["*** #games (2): u0, @u1"]);
    // The last operator leaves: the room has none.
    hub.line(c(1), "/part", &mut rec);
    hub.line(c(0), "/who", &mut rec);
    assert_eq!(rec.to(0).last().unwrap(), "*** #games (1): u0");
    hub.line(c(0), "/topic lock", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** error: only operators of #games may lock its topic"]
    );
}

#[test]
fn server_operators_have_every_room_operators_power_and_kick_from_the_server() {
    let (mut hub, mut rec) = oper_and_user();
    hub.line(c(1), "/join games", &mut rec);
    hub.line(c(0), "/join games", &mut rec);
    rec.take();
    hub.line(c(0), "/op alice", &mut rec);
    assert_eq!(rec.to(0)[0], "*** alice made alice an operator of #games");
    hub.line(c(0), "/deop bob", &mut rec);
    assert_eq!(
        rec.to(0)[0],
        "*** alice took bob's operator status in #games"
    );
    hub.line(c(0), "/kick #games bob", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[
            (1, "*** bob was kicked from #games by alice"),
            (0, "*** bob was kicked from #games by alice"),
            (1, "*** now talking in #lobby"),
        ])
    );
    hub.line(c(0), "/names lobby", &mut rec);
    assert_eq!(rec.to(0), ["*** #lobby (2): alice, bob"]);
    hub.line(c(0), "/part lobby", &mut rec);
    rec.take();
    hub.line(c(0), "/names lobby", &mut rec);
    assert_eq!(
        rec.to(0),
        ["*** #lobby (1): bob"],
        "any room, for a server operator"
    );
    hub.line(c(0), "/kick #nowhere bob", &mut rec);
    assert_eq!(rec.to(0), ["*** error: no room named #nowhere"]);
    hub.line(c(0), "/kick bob enough", &mut rec);
    assert_eq!(
        rec.take(),
        pairs(&[(1, "*** bob was kicked by alice (enough)")])
    );
    assert_eq!(rec.closed, [(1, "kicked by alice".to_string())]);
}

#[test]
fn list_shows_counts_and_topics_and_is_bounded() {
    let (mut hub, mut rec) = named(2);
    hub.line(c(0), "/join games", &mut rec);
    hub.line(c(0), "/topic cards", &mut rec);
    rec.take();
    hub.line(c(1), "/list", &mut rec);
    assert_eq!(
        rec.to(1),
        ["*** rooms (2):\r\n***   #games (1): cards\r\n***   #lobby (2)\r\n*** end of list"]
    );
    let (mut big, mut rec) = hub_with(LIST_MAX + 5);
    for i in 0..LIST_MAX + 5 {
        big.line(c(i), &format!("/join r{i:03}"), &mut rec);
    }
    rec.take();
    big.line(c(0), "/list", &mut rec);
    let got = rec.to(0).pop().unwrap();
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], format!("*** rooms ({}):", LIST_MAX + 6));
    assert_eq!(lines.len(), LIST_MAX + 3);
    assert_eq!(lines[LIST_MAX + 1], "***   … and 6 more");
    assert_eq!(lines[LIST_MAX + 2], "*** end of list");
}

#[test]
fn a_room_and_a_place_in_one_cost_what_the_readme_says() {
    use std::mem::size_of;
    // A place: one entry in the user's set, one in the room's members;
    // each vector may hold twice what it uses.
    let place = size_of::<super::super::rooms::Place>() + size_of::<Member>();
    assert!(2 * place <= 64, "a place costs {} bytes", 2 * place);
    // A room: the struct, its name and key, its entry in the sorted index
    // (about 64 bytes a node entry, with the key again), its topic.
    let room = size_of::<Room>()
        + 2 * (MAX_NAME + 1)
        + 64
        + MAX_NAME
        + size_of::<Topic>()
        + MAX_TOPIC
        + MAX_NAME;
    assert!(room + 2 * place <= 1100, "a room costs {room} bytes");
}
