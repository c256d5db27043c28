//! Issue 22: a user in several rooms at once, over real sockets against
//! the real binary: which lines each client reads and how they are marked,
//! `/part` of the current room, `/list` and `/whois` bounded with 5 000
//! rooms, and (with redis-server) the same model across two instances.

mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, read_line_until};
use support::{Client, Server, TIMEOUT};

/// A client that has taken `name`, everything before read.
fn named(server: &Server, name: &str) -> Client {
    let mut c = server.client();
    c.send(&format!("/nick {name}"));
    c.expect_line(&format!("*** you are now {name}"));
    c.name = name.into();
    c
}

/// `@id=E-N;room=games rest` -> ("games", "rest"), checking the id is there.
fn tagged(line: &str) -> (String, String) {
    let (tags, rest) = line
        .strip_prefix('@')
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("not tagged: {line:?}"));
    assert!(tags.starts_with("id="), "{line:?}");
    let room = tags
        .split(';')
        .find_map(|t| t.strip_prefix("room="))
        .unwrap_or_else(|| panic!("no room tag: {line:?}"));
    (room.to_string(), rest.to_string())
}

#[test]
fn two_clients_in_three_shared_rooms_read_exactly_their_lines_marked_by_room() {
    let server = Server::start(&["--history-on-join", "0"]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    alice.expect_line("*** guest-2 is now bob");
    for room in ["games", "dev"] {
        alice.send(&format!("/join {room}"));
        alice.expect(&format!("the /join {room} answer"), |l| {
            l.starts_with(&format!("*** you joined #{room} ("))
        });
        bob.send(&format!("/join {room}"));
        bob.expect_line(&format!("*** you joined #{room} (2): @alice, bob"));
        // A /join makes the room current: alice hears it as is.
        alice.expect_line(&format!("*** bob joined #{room}"));
    }
    bob.send("/join #games");
    bob.next_is("*** now talking in #games");
    let mut carol = named(&server, "carol");
    alice.next_is("[#lobby] *** guest-3 joined");
    alice.next_is("[#lobby] *** guest-3 is now carol");
    bob.next_is("[#lobby] *** guest-3 joined");
    bob.next_is("[#lobby] *** guest-3 is now carol");

    alice.send("in dev");
    bob.next_is("[#dev] <alice> in dev");
    bob.send("in games");
    alice.next_is("[#games] <bob> in games");
    alice.send("/join games");
    alice.next_is("*** now talking in #games");
    bob.send("/me waves");
    alice.next_is("* bob waves");
    carol.send("lobby line");
    alice.next_is("[#lobby] <carol> lobby line");
    bob.next_is("[#lobby] <carol> lobby line");
    carol.send("/join dev");
    carol.expect_line("*** you joined #dev (3): @alice, bob, carol");
    alice.next_is("[#dev] *** carol joined #dev");
    bob.next_is("[#dev] *** carol joined #dev");
    carol.send("/who");
    carol.next_is("*** #dev (3): @alice, bob, carol");

    // With ids, every room line says its room, whichever is current.
    bob.send("/ids on");
    for room in ["lobby", "games", "dev"] {
        bob.expect(&format!("where bob stands in #{room}"), |l| {
            l.starts_with(&format!("*** ids on: #{room} at "))
        });
    }
    alice.send("tagged");
    let line = bob.read_line().expect("alice's line");
    assert_eq!(tagged(&line), ("games".into(), "<alice> tagged".into()));
    carol.send("from dev");
    let line = bob.read_line().expect("carol's line");
    assert_eq!(
        tagged(&line),
        ("dev".into(), "[#dev] <carol> from dev".into())
    );
    alice.next_is("[#dev] <carol> from dev");
    bob.send("mine");
    let line = bob.read_line().expect("bob's own line, echoed");
    assert_eq!(tagged(&line), ("games".into(), "<bob> mine".into()));
    alice.next_is("<bob> mine");
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.sync(), Vec::<String>::new(), "{}: nothing more", c.name);
    }
}

#[test]
fn parting_the_current_room_makes_the_last_joined_current_and_none_is_possible() {
    let server = Server::start(&["--history-on-join", "0"]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    alice.expect_line("*** guest-2 is now bob");
    bob.send("/join games");
    bob.expect_line("*** you joined #games (1): @bob");
    alice.send("/join games");
    alice.expect_line("*** you joined #games (2): alice, @bob");
    bob.expect_line("*** alice joined #games");
    alice.send("/part #games see you");
    alice.next_is("*** you left #games; now talking in #lobby");
    bob.next_is("*** alice left #games (see you)");
    alice.send("back in the lobby");
    bob.next_is("[#lobby] <alice> back in the lobby");
    alice.send("/part");
    alice.next_is("*** you left #lobby; you are in no room now (/join ROOM)");
    bob.next_is("[#lobby] *** alice left #lobby");
    alice.send("anyone?");
    alice.next_is("*** error: you are in no room; /join ROOM");
    alice.send("/msg bob still here");
    alice.next_is("-> *bob* still here");
    bob.next_is("*alice* still here");
    alice.send("/join games");
    alice.next_is("*** you joined #games (2): alice, @bob");
    bob.next_is("*** alice joined #games");
    assert_eq!(bob.sync(), Vec::<String>::new());
}

/// The README's bound on a listing.
const LIST_MAX: usize = 200;

#[test]
fn list_and_whois_answer_within_the_bound_with_5000_rooms() {
    let rooms = 5000;
    let server = Server::start(&[
        "--no-http",
        "-q",
        "--history-on-join",
        "0",
        "--max-rooms-per-user",
        "5000",
    ]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    alice.expect_line("*** guest-2 is now bob");
    let joins: String = (0..rooms - 1).map(|i| format!("/join r{i:04}\n")).collect();
    bob.send_raw(joins.as_bytes());
    bob.expect_line(&format!("*** you joined #r{:04} (1): @bob", rooms - 2));
    bob.send("/join one-too-many");
    bob.expect_line(&format!(
        "*** error: you are in {rooms} rooms, the most allowed here; /part one first"
    ));
    // alice joins every room too, reading bob's notices as she goes (his
    // queue would fill otherwise).
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            // His current room is the last he joined: as is there.
            bob.expect_line(&format!("*** alice joined #r{:04}", rooms - 2));
        });
        alice.send_raw(joins.as_bytes());
        alice.expect_line(&format!(
            "*** you joined #r{:04} (2): alice, @bob",
            rooms - 2
        ));
        reader.join().unwrap();
    });

    alice.send("/list");
    let header = alice.expect("the /list answer", |l| l.starts_with("*** rooms ("));
    assert_eq!(header, format!("*** rooms ({rooms}):"));
    let mut entries = Vec::new();
    loop {
        let l = alice.read_line().expect("the rest of /list");
        if l == "*** end of list" {
            break;
        }
        entries.push(l);
    }
    assert_eq!(entries.len(), LIST_MAX + 1, "{:?}", entries.last());
    assert_eq!(entries[0], "***   #lobby (2)");
    assert_eq!(entries[1], "***   #r0000 (2)");
    assert_eq!(
        entries[LIST_MAX],
        format!("***   … and {} more", rooms - LIST_MAX)
    );

    alice.send("/whois bob");
    let whois = alice.expect("the /whois answer", |l| l.starts_with("*** whois bob: "));
    let want = "*** whois bob: shares #lobby, #r0000, #r0001, ";
    assert!(whois.starts_with(want), "{whois}");
    let more = format!(", … and {} more with you; idle ", rooms - LIST_MAX);
    assert!(whois.contains(&more), "{whois}");
    assert_eq!(whois.matches(", ").count(), LIST_MAX, "{whois}");
    assert!(whois.len() < 8 * 1024, "{} bytes", whois.len());
}

// --- across instances ---------------------------------------------------------

/// Polls `/names ROOM` from `c` until it shows exactly `want` (operators'
/// `@` left out): presence crosses instances in its own time.
fn wait_names(c: &mut Client, room: &str, want: &[&str]) {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        c.send(&format!("/names {room}"));
        last = c.expect("a /names answer", |l| {
            l.starts_with(&format!("*** #{room} (")) || l.starts_with("*** error")
        });
        let names: Vec<&str> = last
            .split_once("): ")
            .map(|(_, n)| n.split(", ").map(|n| n.trim_start_matches('@')).collect())
            .unwrap_or_default();
        if names == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{}: /names {room} never showed {want:?}; last {last:?}",
        c.name
    );
}

/// The chat lines a client reads until it has `n` (notices skipped, the
/// probes' among them).
fn chat_lines(c: &mut Client, n: usize) -> Vec<String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < n {
        let Some(line) = read_line_until(c, deadline) else {
            panic!("{}: only {got:?} within {TIMEOUT:?}", c.name);
        };
        let bare = match line.strip_prefix("[#") {
            Some(rest) => rest.split_once("] ").map_or(line.as_str(), |(_, l)| l),
            None => line.as_str(),
        };
        if !bare.starts_with("*** ") {
            got.push(line);
        }
    }
    got
}

#[test]
#[ignore = "needs redis-server"]
fn users_in_overlapping_rooms_on_two_instances_read_exactly_their_rooms_in_one_order() {
    let cl = Cluster::start_with(2, &["--history-on-join", "0"]);
    // alice: lobby, games, dev (current dev) — instance 0
    // bob: games, dev (current games)      — instance 1
    // carol: dev (current dev)             — instance 0
    // dave: lobby, games (current lobby)   — instance 1
    // eve: dev (current dev), silent       — instance 1
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    let mut carol = cl.named(0, "carol");
    let mut dave = cl.named(1, "dave");
    let mut eve = cl.named(1, "eve");
    for (c, rooms, part_lobby) in [
        (&mut alice, &["games", "dev"][..], false),
        (&mut bob, &["dev", "games"][..], true),
        (&mut carol, &["dev"][..], true),
        (&mut dave, &["games", "lobby"][..], false),
        (&mut eve, &["dev"][..], true),
    ] {
        for room in rooms {
            c.send(&format!("/join {room}"));
        }
        if part_lobby {
            c.send("/part lobby");
        }
    }
    let everyone = ["alice", "bob", "carol", "eve"];
    wait_names(&mut dave, "lobby", &["alice", "dave"]);
    wait_names(&mut dave, "games", &["alice", "bob", "dave"]);
    wait_names(&mut alice, "games", &["alice", "bob", "dave"]);
    wait_names(&mut alice, "dev", &everyone);
    wait_names(&mut alice, "lobby", &["alice", "dave"]);
    wait_names(&mut bob, "dev", &everyone);
    for (c, word) in [
        (&mut alice, "a"),
        (&mut bob, "b"),
        (&mut carol, "c"),
        (&mut dave, "d"),
    ] {
        for k in 1..=3 {
            c.send(&format!("{word}{k}"));
        }
    }
    let from = |who: &str, prefix: &str, word: &str| -> Vec<String> {
        (1..=3)
            .map(|k| format!("{prefix}<{who}> {word}{k}"))
            .collect()
    };
    // Each reads exactly its rooms' lines, marked by room; the lines of a
    // room come in the same order for everyone in it (Redis numbers them),
    // and each sender's in the order sent.
    let mut seen = Vec::new();
    for (c, mut want) in [
        (
            &mut alice,
            [
                from("bob", "[#games] ", "b"),
                from("carol", "", "c"),
                from("dave", "[#lobby] ", "d"),
            ]
            .concat(),
        ),
        (
            &mut bob,
            [from("alice", "[#dev] ", "a"), from("carol", "[#dev] ", "c")].concat(),
        ),
        (&mut carol, from("alice", "", "a")),
        (&mut dave, from("bob", "[#games] ", "b")),
        (
            &mut eve,
            [from("alice", "", "a"), from("carol", "", "c")].concat(),
        ),
    ] {
        let got = chat_lines(c, want.len());
        for who in ["alice", "bob", "carol", "dave"] {
            let mine: Vec<&String> = got
                .iter()
                .filter(|l| l.contains(&format!("<{who}> ")))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "{}: {who}'s lines in the order sent", c.name);
        }
        let mut sorted = got.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want, "{}: exactly its rooms' lines", c.name);
        seen.push(got);
    }
    let bare = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.trim_start_matches("[#dev] ").to_string())
            .collect()
    };
    assert_eq!(
        bare(&seen[1]),
        bare(&seen[4]),
        "bob and eve: #dev in one order"
    );
    for c in [&mut alice, &mut bob, &mut carol, &mut dave, &mut eve] {
        let more = c.sync();
        assert!(
            more.iter().all(|l| l.contains("*** ")),
            "{}: more than its rooms' lines: {more:?}",
            c.name
        );
    }
}

// --- the README's session -----------------------------------------------------

/// The transcripts of the README's "A session": per user, its lines after
/// the shell command (what it typed and what it read, in order).
fn readme_session() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("## A session")
        .expect("a session in the README");
    let end = start + readme[start..].find("\n## ").expect("the next section");
    let mut blocks = Vec::new();
    let mut lines = readme[start..end].lines();
    while let Some(line) = lines.next() {
        if line != "```" {
            continue;
        }
        let block: Vec<String> = lines
            .by_ref()
            .take_while(|l| *l != "```")
            .map(str::to_string)
            .collect();
        let (who, _) = block[0].split_once("$ ").expect("`name$ command` first");
        blocks.push((who.to_string(), block[1..].to_vec()));
    }
    assert_eq!(blocks.len(), 2, "two transcripts");
    blocks
}

/// A line the user read rather than typed: the server's, a message, an
/// action, a private message, another room's line, an echo of one's own.
fn is_output(line: &str) -> bool {
    ["*", "<", "[#", "-> "].iter().any(|p| line.starts_with(p))
}

#[test]
fn the_readme_session_is_true_word_for_word() {
    let server = Server::start(&[]);
    let blocks = readme_session();
    std::thread::scope(|s| {
        let mut started = Vec::new();
        for (who, script) in &blocks {
            let mut c = Client::connect_raw(server.addr);
            c.name = who.clone();
            // The next user connects once this one was welcomed, as in the
            // transcripts (the first line of each is its welcome).
            c.next_is(&script[0]);
            started.push(s.spawn(move || {
                for line in &script[1..] {
                    if is_output(line) {
                        c.next_is(line);
                    } else {
                        c.send(line);
                    }
                }
            }));
        }
        for t in started {
            t.join()
                .expect("a transcript differs from what the server said");
        }
    });
}
