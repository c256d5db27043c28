//! Issue 7: cluster mode. Several chatd instances share one chat through a
//! real redis-server (and, for the balancer tests, a real HAProxy), all on
//! loopback with ports picked by the kernel. Every wait is on something a
//! client (or HAProxy's stats socket) reads, bounded; the few loops that
//! retry (`/who`, `/nick`) poll state that is eventually consistent across
//! instances, and give up at a stated bound.
//!
//! Issue 12: the cluster heals. Redis restarted empty, frozen with SIGSTOP,
//! flushed; an instance frozen long enough to be declared lost while its
//! user's name is granted again elsewhere; forged publications; wrong
//! passwords, ACLs, a full queue, reconnect counting. These run with fast
//! timers (`FAST`: a 400 ms tick) so each takes seconds; the only sleeps
//! are the length of a fault (a freeze), never a wait for an outcome.
//!
//! The tests that need redis-server or haproxy are ignored in a plain
//! `cargo test`; `.ci/run` installs both and runs them:
//! `cargo test --test cluster -- --ignored`.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Client, Server, TIMEOUT};

// --- the cluster, through Redis ----------------------------------------------

#[test]
#[ignore = "needs redis-server"]
fn a_message_crosses_instances_in_order_and_once() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut carol = cl.named(0, "carol"); // alice's instance
    let mut bob = cl.named(1, "bob"); // the other one
    wait_who(&mut bob, TIMEOUT, "alice and carol", |n| {
        has_all(n, &["alice", "carol"])
    });
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));

    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!("line {i}\r\n"));
    }
    alice.send_raw(batch.as_bytes());
    for reader in [&mut carol, &mut bob] {
        for i in 0..1000 {
            let got = next_said(reader);
            assert_eq!(
                got,
                format!("<alice> line {i}"),
                "{}: line {i}",
                reader.name
            );
        }
    }
    // The other way. Redis hands each subscriber the publications in the
    // order it took them, so a copy of alice's lines delivered twice (say,
    // by her own instance, from its own publication) would come before this.
    bob.send("got them all");
    for reader in [&mut alice, &mut carol] {
        assert_eq!(next_said(reader), "<bob> got them all", "{}", reader.name);
    }
    for c in [&mut alice, &mut bob, &mut carol] {
        let rest = c.sync();
        assert!(
            said(&rest).is_empty(),
            "{}: more after the end: {rest:?}",
            c.name
        );
    }
}

#[test]
#[ignore = "needs redis-server"]
fn me_nick_join_and_leave_notices_cross_instances() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut carol = cl.named(0, "carol");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));
    wait_who(&mut bob, TIMEOUT, "alice and carol", |n| {
        has_all(n, &["alice", "carol"])
    });

    bob.send("/me waves");
    alice.expect_line("* bob waves");
    carol.expect_line("* bob waves");
    bob.send("/nick robert");
    bob.expect_line("*** you are now robert");
    alice.expect_line("*** bob is now robert");
    carol.expect_line("*** bob is now robert");

    let mut guest = cl.client(1);
    let g = guest.name.clone();
    alice.expect_line(&format!("*** {g} joined"));
    guest.send("/join games");
    guest.expect_line(&format!("*** you joined #games (1): @{g}"));
    guest.send("/part lobby");
    alice.expect_line(&format!("*** {g} left #lobby"));
    alice.send("/join games");
    alice.expect_line(&format!("*** you joined #games (2): alice, @{g}"));
    guest.expect_line("*** alice joined #games");
    alice.send("/part lobby");
    bob.expect_line("*** alice left #lobby");

    // Leaves reach the leaver's room only, on every instance.
    bob.send("/quit gotta go");
    bob.expect_line("*** bye");
    carol.expect_line("*** robert left (quit: gotta go)");
    drop(guest);
    let before = expect_within(&mut alice, TIMEOUT, "the guest's leave", |l| {
        l == format!("*** {g} left")
    });
    assert!(
        !before.iter().any(|l| l.contains("robert")),
        "alice, in #games, heard of #lobby: {before:?}"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn rooms_stay_isolated_across_instances() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut carol = cl.named(0, "carol");
    let mut bob = cl.named(1, "bob");
    let mut dave = cl.named(1, "dave");
    wait_who(&mut dave, TIMEOUT, "alice and carol", |n| {
        has_all(n, &["alice", "carol"])
    });
    wait_who(&mut carol, TIMEOUT, "bob and dave", |n| {
        has_all(n, &["bob", "dave"])
    });

    alice.send("/join games");
    alice.expect_line("*** you joined #games (1): @alice");
    alice.send("/part lobby");
    // Once bob's instance knows of alice's room, joining it shows her.
    wait_rooms(&mut bob, "*** rooms (2): #games (1), #lobby (3)");
    bob.send("/join games");
    bob.expect_line("*** you joined #games (2): @alice, bob");
    alice.expect_line("*** bob joined #games");
    bob.send("/part lobby");

    alice.send("games only");
    assert_eq!(next_said(&mut bob), "<alice> games only");
    dave.send("lobby only");
    assert_eq!(next_said(&mut carol), "<dave> lobby only");
    // One more trip between the instances in each room: whatever crossed
    // the wrong way was delivered before these.
    bob.send("done");
    assert_eq!(next_said(&mut alice), "<bob> done");
    dave.send("done too");
    assert_eq!(next_said(&mut carol), "<dave> done too");
    for (c, other_room) in [
        (&mut alice, "lobby only"),
        (&mut bob, "lobby only"),
        (&mut carol, "games only"),
        (&mut dave, "games only"),
    ] {
        let seen = c.sync();
        assert!(
            !seen.iter().any(|l| l.contains(other_room)),
            "{} got {other_room:?} from the other room: {seen:?}",
            c.name
        );
    }
}

#[test]
#[ignore = "needs redis-server"]
fn private_messages_cross_instances() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    let mut carol = cl.named(1, "carol");
    wait_who(&mut alice, TIMEOUT, "bob and carol", |n| {
        has_all(n, &["bob", "carol"])
    });
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));

    alice.send("/msg bob psst");
    alice.expect_line("-> *bob* psst");
    bob.expect_line("*alice* psst");
    bob.send("/msg ALICE back at you");
    bob.expect_line("-> *alice* back at you");
    alice.expect_line("*bob* back at you");

    // Rooms do not matter to /msg.
    bob.send("/join games");
    bob.expect_line("*** you joined #games (1): @bob");
    bob.send("/part lobby");
    alice.send("/msg bob still there?");
    alice.expect_line("-> *bob* still there?");
    bob.expect_line("*alice* still there?");

    alice.send("/msg nobody hello");
    alice.expect_line("*** error: no user named nobody");
    let seen = carol.sync();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("psst") || l.contains("back at") || l.contains("still there")),
        "carol saw a private message: {seen:?}"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn a_name_taken_on_one_instance_is_refused_on_another() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut b = cl.client(1);
    wait_who(&mut b, TIMEOUT, "alice", |n| has_all(n, &["alice"]));

    b.send("/nick alice");
    b.expect_line("*** error: the name alice is taken");
    b.send("/nick ALICE");
    b.expect_line("*** error: the name ALICE is taken");

    // Given up on one instance, it can be taken on the other...
    alice.send("/nick alicia");
    alice.expect_line("*** you are now alicia");
    nick_eventually(&mut b, "alice");
    // ...and is then refused on the first.
    let mut c = cl.client(0);
    c.send("/nick Alice");
    c.expect_line("*** error: the name Alice is taken");
    c.send("/nick alicia");
    c.expect_line("*** error: the name alicia is taken");

    // Leaving frees a name everywhere.
    drop(alice);
    let mut d = cl.client(1);
    nick_eventually(&mut d, "alicia");
}

#[test]
#[ignore = "needs redis-server"]
fn the_same_name_asked_on_two_instances_at_once_goes_to_one() {
    let cl = Cluster::start(2);
    let mut a = cl.client(0);
    let mut b = cl.client(1);
    wait_who(&mut a, TIMEOUT, "b", |n| n.len() >= 2);
    for round in 0..10 {
        let name = format!("zed{round}");
        // Both before either answer: the two instances race through Redis.
        a.send(&format!("/nick {name}"));
        b.send(&format!("/nick {name}"));
        let answers: Vec<String> = [&mut a, &mut b]
            .into_iter()
            .map(|c| {
                c.expect("the /nick answer", |l| {
                    l.starts_with("*** you are now ") || l.starts_with("*** error")
                })
            })
            .collect();
        let won = format!("*** you are now {name}");
        let lost = format!("*** error: the name {name} is taken");
        assert!(
            answers == [won.clone(), lost.clone()] || answers == [lost, won],
            "round {round}: want one winner, got {answers:?}"
        );
    }
}

#[test]
#[ignore = "needs redis-server"]
fn who_and_rooms_show_the_whole_cluster() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut dave = cl.named(0, "dave");
    let mut bob = cl.named(1, "bob");
    let mut carol = cl.named(1, "carol");
    for c in [&mut carol, &mut dave] {
        c.send("/join games");
        c.expect("the /join answer", |l| {
            l.starts_with("*** you joined #games")
        });
        c.send("/part lobby");
    }
    let lobby = lines(&["alice", "bob"]);
    let games = lines(&["carol", "dave"]);
    for (c, want) in [
        (&mut alice, &lobby),
        (&mut bob, &lobby),
        (&mut carol, &games),
        (&mut dave, &games),
    ] {
        wait_who(c, TIMEOUT, &format!("{want:?}"), |n| n == want.as_slice());
    }
    wait_rooms(&mut alice, "*** rooms (2): #games (2), #lobby (2)");
    wait_rooms(&mut bob, "*** rooms (2): #games (2), #lobby (2)");

    carol.send("/quit");
    carol.expect_line("*** bye");
    wait_rooms(&mut alice, "*** rooms (2): #games (1), #lobby (2)");
    wait_who(&mut dave, TIMEOUT, "dave alone", |n| n == ["dave"]);
    // An empty room is gone everywhere.
    drop(dave);
    wait_rooms(&mut bob, "*** rooms (1): #lobby (2)");
    wait_rooms(&mut alice, "*** rooms (1): #lobby (2)");
}

#[test]
#[ignore = "needs redis-server"]
fn guest_names_are_unique_across_instances() {
    let cl = Cluster::start(2);
    // Both instances hand out names at the same moment.
    let clients: Vec<Client> = std::thread::scope(|s| {
        let joins: Vec<_> = cl
            .nodes
            .iter()
            .map(|node| s.spawn(move || (0..15).map(|_| node.client()).collect::<Vec<_>>()))
            .collect();
        joins
            .into_iter()
            .flat_map(|j| j.join().expect("connect thread"))
            .collect()
    });
    let names: HashSet<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names.len(),
        clients.len(),
        "a guest name given twice: {names:?}"
    );
    assert!(names.iter().all(|n| n.starts_with("guest-")), "{names:?}");
    let mut watcher = cl.client(0);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.push(watcher.name.clone());
    wait_who(&mut watcher, TIMEOUT, "all 31 guests", |n| {
        n.len() == want.len() && has_all(n, &want.iter().map(String::as_str).collect::<Vec<_>>())
    });
}

#[test]
#[ignore = "needs redis-server"]
fn redis_going_away_keeps_local_chat_and_coming_back_restores_the_cluster() {
    let mut cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut carol = cl.named(0, "carol");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "alice and carol", |n| {
        has_all(n, &["alice", "carol"])
    });
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));
    // Everything each client reads from here until the link is back.
    let mut outage: Vec<Vec<String>> = vec![Vec::new(); 3];

    cl.redis.stop();
    for (i, c) in [&mut alice, &mut carol, &mut bob].into_iter().enumerate() {
        outage[i].extend(expect_within(
            c,
            SERVER_LOST_BOUND,
            "the link-down notice",
            |l| l == LINK_DOWN,
        ));
        outage[i].push(LINK_DOWN.to_string());
    }
    // Local chat goes on, on both instances.
    alice.send("only here");
    outage[1].extend(expect_within(&mut carol, TIMEOUT, "alice's line", |l| {
        l == "<alice> only here"
    }));
    bob.send("only there");
    bob.send("/who");
    let who = bob.expect("bob's /who", |l| l.starts_with("*** #lobby ("));
    assert!(who.contains("bob"), "{who}");
    // Names stay unique while the instances cannot ask each other.
    bob.send("/nick alice");
    let (answer, before) = read_until(&mut bob, TIMEOUT, "the /nick answer", |l| {
        l.starts_with("*** error") || l.starts_with("*** you are now")
    });
    outage[2].extend(before);
    assert!(
        answer.starts_with("*** error"),
        "bob, during the outage: {answer}"
    );
    let guests = [cl.client(0), cl.client(1)];
    assert_ne!(
        guests[0].name, guests[1].name,
        "one guest name on both instances"
    );
    outage[0].extend(alice.sync());
    outage[2].extend(bob.sync());

    cl.redis.restart();
    for (i, c) in [&mut alice, &mut carol, &mut bob].into_iter().enumerate() {
        outage[i].extend(expect_within(c, RELINK, "the link-restored notice", |l| {
            l == LINK_RESTORED
        }));
    }
    for (i, name) in ["alice", "carol", "bob"].iter().enumerate() {
        let downs = outage[i].iter().filter(|l| *l == LINK_DOWN).count();
        assert_eq!(downs, 1, "{name}: link-down notices {:?}", outage[i]);
        let other = if *name == "bob" {
            "<alice> only here"
        } else {
            "<bob> only there"
        };
        assert!(
            !outage[i].iter().any(|l| l == other),
            "{name}: {other:?} crossed while the link was down: {:?}",
            outage[i]
        );
    }

    // Cross-instance chat resumes, both ways...
    alice.send("across again");
    let before = expect_within(&mut bob, TIMEOUT, "alice's line", |l| {
        l == "<alice> across again"
    });
    assert!(
        !before.iter().any(|l| l.contains("only here")),
        "a line from the outage reached the other instance late: {before:?}"
    );
    assert_eq!(next_said(&mut carol), "<alice> across again");
    bob.send("welcome back");
    assert_eq!(next_said(&mut alice), "<bob> welcome back");
    assert_eq!(next_said(&mut carol), "<bob> welcome back");
    // ...and the restarted (empty) Redis learned the cluster again: who is
    // where, and whose names are taken.
    wait_who(&mut bob, TIMEOUT, "alice and carol", |n| {
        has_all(n, &["alice", "carol"])
    });
    let mut d = cl.client(1);
    d.send("/nick alice");
    d.expect_line("*** error: the name alice is taken");
}

#[test]
#[ignore = "needs redis-server"]
fn the_users_of_a_killed_instance_leave_within_the_bound() {
    let mut cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let bob = cl.named(1, "bob");
    let carol = cl.named(1, "carol");
    wait_who(&mut alice, TIMEOUT, "bob and carol", |n| {
        has_all(n, &["bob", "carol"])
    });

    let killed = Instant::now();
    cl.nodes[1].child.kill().expect("SIGKILL node 2");
    let _ = cl.nodes[1].child.wait();
    drop((bob, carol));
    let bound = SERVER_LOST_BOUND + SLACK;
    let (mut gone, mut seen) = (HashSet::new(), Vec::new());
    while gone.len() < 2 {
        let Some(line) = read_line_until(&mut alice, killed + bound) else {
            panic!("alice: within {bound:?} of the kill, saw only {seen:?}");
        };
        for name in ["bob", "carol"] {
            if line == format!("*** {name} left (server lost)") {
                gone.insert(name);
            }
        }
        seen.push(line);
    }
    eprintln!("leaves seen {:?} after the kill", killed.elapsed());
    wait_who(
        &mut alice,
        bound.saturating_sub(killed.elapsed()),
        "alice alone",
        |n| n == ["alice"],
    );
    eprintln!("gone from /who {:?} after the kill", killed.elapsed());
    // Their names are free again.
    let mut d = cl.client(0);
    nick_eventually(&mut d, "bob");
}

#[test]
#[ignore = "needs redis-server"]
fn the_users_of_a_stopped_instance_leave_at_once() {
    let mut cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));
    let status = cl.nodes[1].signal_and_wait("TERM");
    assert!(status.success(), "node 2 after SIGTERM: {status}");
    let told = bob.read_to_eof();
    assert!(told.contains("*** server shutting down"), "{told:?}");
    // A rolling restart: the instance says goodbye for its users itself,
    // rather than leave them to the heartbeat's 9 to 15 s and a "server
    // lost" that is not what happened.
    let (line, _) = read_until(&mut alice, TIMEOUT, "bob's leave", |l| {
        l.starts_with("*** bob left")
    });
    assert_ne!(
        line, "*** bob left (server lost)",
        "the heartbeat told, not node 2"
    );
    wait_who(&mut alice, TIMEOUT, "alice alone", |n| n == ["alice"]);
}

/// What `scripts/cluster.sh up` (or a supervisor) does after a crash: the
/// same node id, back at once, long before its heartbeat would have
/// expired. The users of the dead incarnation must still leave, with the
/// notice, however the new incarnation numbers its own users.
#[test]
#[ignore = "needs redis-server"]
fn the_users_of_an_instance_restarted_under_the_same_id_leave_within_the_bound() {
    let mut cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    let old: Vec<Client> = ["bob", "dave", "erin"]
        .iter()
        .map(|n| cl.named(1, n))
        .collect();
    wait_who(&mut alice, TIMEOUT, "bob, dave and erin", |n| {
        has_all(n, &["bob", "dave", "erin"])
    });

    let killed = Instant::now();
    cl.nodes[1].child.kill().expect("SIGKILL node 2");
    let _ = cl.nodes[1].child.wait();
    drop(old);
    cl.nodes[1] = Server::start(&["--redis", &cl.redis.url(), "--node-id", "n2"]);
    // The new n2 says ready before its link is up; names need the link.
    wait_linked(&cl.nodes);
    let mut carol = cl.named(1, "carol");

    let bound = SERVER_LOST_BOUND + SLACK;
    let (mut gone, mut seen) = (HashSet::new(), Vec::new());
    while gone.len() < 3 {
        let Some(line) = read_line_until(&mut alice, killed + bound) else {
            panic!(
                "alice: within {bound:?} of the kill, saw {seen:?}; /who now {:?}",
                who(&mut alice)
            );
        };
        for name in ["bob", "dave", "erin"] {
            if line == format!("*** {name} left (server lost)") {
                gone.insert(name);
            }
        }
        seen.push(line);
    }
    eprintln!("leaves seen {:?} after the kill", killed.elapsed());
    wait_who(&mut alice, TIMEOUT, "alice and carol only", |n| {
        n == ["alice", "carol"]
    });
    wait_who(&mut carol, TIMEOUT, "alice and carol only", |n| {
        n == ["alice", "carol"]
    });
}

// --- healing: Redis restarted, frozen, flushed; a split; forged messages -----
#[test]
#[ignore = "needs redis-server"]
fn after_redis_restarts_empty_no_instance_grants_a_name_held_on_another() {
    let mut cl = Cluster::start_with(2, FAST);
    let mut alice = cl.named(0, "alice");
    let mut b = cl.client(1);
    wait_who(&mut b, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    wait_owner(cl.redis.port, "alice", "n1", TIMEOUT);

    cl.redis.stop();
    expect_within(&mut b, TIMEOUT, "the link-down notice", |l| l == LINK_DOWN);
    cl.redis.restart();
    expect_within(&mut b, RELINK, "the link-restored notice", |l| {
        l == LINK_RESTORED
    });
    // From the moment B says the link is back: B refuses alice, before A's
    // claim is back in Redis and after, for a good many heartbeats.
    let deadline = Instant::now() + HEAL;
    let mut tries = 0;
    let mut back_at = None;
    while back_at.is_none_or(|t| tries < t + 20) {
        refused(
            &mut b,
            "alice",
            &format!("(try {tries} since the link came back)"),
        );
        tries += 1;
        let owner = name_owner(cl.redis.port, "alice");
        if back_at.is_none() && owner.as_deref().is_some_and(|o| o.contains("n1~")) {
            back_at = Some(tries);
        }
        assert!(
            Instant::now() < deadline || back_at.is_some(),
            "Redis never showed A's claim on alice again within {HEAL:?}: {owner:?}"
        );
        std::thread::sleep(POLL);
    }
    alice.send("/nick alice");
    alice.expect_line("*** you are already alice");
}

#[test]
#[ignore = "needs redis-server"]
fn a_frozen_redis_is_a_lost_link_and_the_cluster_heals_after_it() {
    let cl = Cluster::start_with(2, FAST);
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));

    signal(cl.redis.pid(), "STOP");
    let frozen = Instant::now();
    for c in [&mut alice, &mut bob] {
        expect_within(c, TIMEOUT, "the link-down notice during the freeze", |l| {
            l == LINK_DOWN
        });
    }
    // Out of reach, not gone: each instance still lists the other's user.
    // (A probe of wait_linked's may be listed too: if its instance noticed
    // it leave only during the freeze, the others hear of it once healed.)
    wait_who(&mut alice, TIMEOUT, "bob, out of reach", |n| {
        has_all(n, &["alice", "bob"])
    });
    wait_who(&mut bob, TIMEOUT, "alice, out of reach", |n| {
        has_all(n, &["alice", "bob"])
    });
    // The freeze outlasts the heartbeats (0.8 s) and the names (2 s): this
    // is the fault's length, not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(frozen.elapsed()));
    signal(cl.redis.pid(), "CONT");
    for c in [&mut alice, &mut bob] {
        expect_within(c, RELINK, "the link-restored notice", |l| {
            l == LINK_RESTORED
        });
    }
    wait_who(&mut alice, HEAL, "alice and bob", |n| n == ["alice", "bob"]);
    wait_who(&mut bob, HEAL, "alice and bob", |n| n == ["alice", "bob"]);
    wait_owner(cl.redis.port, "alice", "n1", HEAL);
    wait_owner(cl.redis.port, "bob", "n2", HEAL);
    // No name can be taken twice, however many heartbeats pass.
    let mut a2 = cl.client(0);
    let mut b2 = cl.client(1);
    for round in 0..10 {
        refused(&mut a2, "bob", &format!("after the freeze (round {round})"));
        refused(
            &mut b2,
            "alice",
            &format!("after the freeze (round {round})"),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_who(&mut alice, TIMEOUT, "everyone", |n| n.len() == 4);
    wait_who(&mut bob, TIMEOUT, "everyone", |n| n.len() == 4);
}

#[test]
#[ignore = "needs redis-server"]
fn after_flushall_every_name_and_user_is_still_there() {
    let cl = Cluster::start_with(2, FAST);
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    wait_owner(cl.redis.port, "alice", "n1", TIMEOUT);

    assert_eq!(
        redis_cmd(cl.redis.port, &[b"FLUSHALL"]),
        Resp::Simple("OK".into())
    );
    let mut a2 = cl.client(0);
    let mut b2 = cl.client(1);
    refused(&mut a2, "bob", "right after FLUSHALL");
    refused(&mut b2, "alice", "right after FLUSHALL");
    wait_owner(cl.redis.port, "alice", "n1", HEAL);
    wait_owner(cl.redis.port, "bob", "n2", HEAL);
    // The heartbeats were flushed too: nobody may be declared lost for it,
    // across several times their lifetime (0.8 s).
    for c in [&mut alice, &mut bob] {
        quiet_for(
            c,
            Duration::from_secs(3),
            "a user left after FLUSHALL",
            |l| l.contains(" left"),
        );
    }
    refused(&mut a2, "bob", "after FLUSHALL");
    refused(&mut b2, "alice", "after FLUSHALL");
    wait_who(&mut alice, TIMEOUT, "everyone", |n| n.len() == 4);
    wait_who(&mut bob, TIMEOUT, "everyone", |n| n.len() == 4);
}

/// A split: instance A frozen (SIGSTOP) long enough for B to declare it
/// lost and for alice's claim to expire, so B grants `alice` again. When A
/// is back, both hold `alice`: the earlier claim (A's) keeps it, B's user is
/// renamed and told, and B learns A's users again.
#[test]
#[ignore = "needs redis-server"]
fn a_name_granted_twice_during_a_split_is_kept_by_the_earlier_claim() {
    let cl = Cluster::start_with(2, FAST);
    let mut alice = cl.named(0, "alice");
    let mut watcher = cl.client(1);
    let mut b2 = cl.client(1);
    wait_who(&mut watcher, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    wait_owner(cl.redis.port, "alice", "n1", TIMEOUT);

    signal(cl.nodes[0].child.id(), "STOP");
    expect_within(&mut watcher, TIMEOUT, "alice's leave", |l| {
        l == "*** alice left (server lost)"
    });
    nick_eventually(&mut b2, "alice");
    signal(cl.nodes[0].child.id(), "CONT");

    let (told, _) = read_until(&mut b2, HEAL, "the collision notice", |l| {
        l.contains(NAME_COLLISION)
    });
    let guest = told
        .rsplit(' ')
        .next()
        .expect("a name at the end")
        .to_string();
    assert_eq!(
        told,
        format!("*** your name alice {NAME_COLLISION}{guest}"),
        "b2"
    );
    assert!(guest.starts_with("guest-"), "{told}");
    expect_within(&mut watcher, TIMEOUT, "the rename in b2's room", |l| {
        l == format!("*** alice is now {guest}")
    });
    expect_within(&mut watcher, HEAL, "alice re-learned", |l| {
        l == "*** alice is back"
    });
    let seen = alice.sync();
    assert!(
        !seen.iter().any(|l| l.contains(NAME_COLLISION)),
        "alice, the earlier claim, was renamed: {seen:?}"
    );
    alice.send("/nick alice");
    alice.expect_line("*** you are already alice");
    let want = {
        let mut w = vec!["alice".to_string(), guest.clone(), watcher.name.clone()];
        w.sort();
        w
    };
    wait_who(&mut watcher, HEAL, &format!("{want:?}"), |n| {
        n == want.as_slice()
    });
    wait_who(&mut alice, HEAL, &format!("{want:?}"), |n| {
        n == want.as_slice()
    });
    wait_owner(cl.redis.port, "alice", "n1", HEAL);
    refused(&mut watcher, "alice", "after the split healed");
}

#[test]
#[ignore = "needs redis-server"]
fn forged_publications_reach_clients_cleaned_or_not_at_all() {
    let cl = Cluster::start(1);
    let mut c = cl.named(0, "carol");
    let port = cl.redis.port;
    let channels = match redis_cmd(port, &[b"PUBSUB", b"CHANNELS", b"chatd:0:n:*"]) {
        Resp::Array(a) => a,
        other => panic!("PUBSUB CHANNELS: {other:?}"),
    };
    let Some(Resp::Bulk(Some(private))) = channels.first() else {
        panic!("no private channel subscribed: {channels:?}");
    };
    let private = private.clone();
    let big = format!("evil <mallory> m6 {}", "A".repeat(300_000));
    let forged: Vec<(&[u8], Vec<u8>)> = vec![
        (
            b"chatd:0:r:lobby",
            b"evil <mallory> m1 hi\r\n*** bobby is now admin".to_vec(),
        ),
        (
            b"chatd:0:r:lobby",
            b"evil <mallory> m2 \x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b\x7f".to_vec(),
        ),
        (
            b"chatd:0:r:lobby",
            b"evil <mallory> m3 \xff\xfe\xc3(".to_vec(),
        ),
        (b"chatd:0:r:lobby", b"evil \r\n".to_vec()),
        (b"chatd:0:p", b"J evil 1 bad\x1bname lobby lobby".to_vec()),
        (b"chatd:0:p", b"J evil 2 ali\r\nce lobby lobby".to_vec()),
        (b"chatd:0:p", b"J evil 3 m4 lob\x07by lobby".to_vec()),
        (
            b"chatd:0:p",
            b"J evil 4 waytoolongforanameinthischat lobby lobby".to_vec(),
        ),
        (b"chatd:0:p", b"J ev\x1bil 5 m5 lobby lobby".to_vec()),
        (b"chatd:0:p", b"N evil 1 x\r\ny".to_vec()),
        (b"chatd:0:p", b"J evil".to_vec()),
        (b"chatd:0:p", b"\xff\xff".to_vec()),
        (b"chatd:0:r:lobby", big.into_bytes()),
        (b"chatd:0:r:lob\x1bby", b"evil <mallory> m7".to_vec()),
        // The batch form (how an instance sends a run of lines): each line
        // is cleaned on its own, as a client's would be.
        (
            b"chatd:0:r:lobby",
            b"evil\n<mallory> m9 \x1b[2Jone\r\n<mallory> m9 t\x07wo\n\x1b]0;x\x07".to_vec(),
        ),
    ];
    let mut forged = forged;
    for id in 0..8u8 {
        let payload = format!("{id} carol *mallory* m8 psst\r\n*** carol is now banned\x1b[2J");
        forged.push((&private, payload.into_bytes()));
    }
    for (channel, payload) in &forged {
        let got = redis_cmd(port, &[b"PUBLISH", channel, payload]);
        assert!(matches!(got, Resp::Int(_)), "PUBLISH: {got:?}");
    }
    // A clean line after them all: what came before it is everything the
    // forgeries produced.
    let got = redis_cmd(port, &[b"PUBLISH", b"chatd:0:r:lobby", b"evil <probe> end"]);
    assert!(matches!(got, Resp::Int(_)), "PUBLISH: {got:?}");
    let before = expect_within(&mut c, TIMEOUT, "the clean line", |l| l == "<probe> end");
    // Shortened for the failure messages (one forgery is 300 kB).
    let before_shown: Vec<String> = before
        .iter()
        .map(|l| l.chars().take(80).collect())
        .collect();
    for line in &before {
        assert!(
            !line.chars().any(|ch| ch.is_control()),
            "a control character reached the client: {line:?}"
        );
        assert!(
            line.len() < 10_000,
            "an oversized line: {} bytes",
            line.len()
        );
        assert!(
            !line.starts_with("*** bobby") && !line.starts_with("*** carol is now"),
            "a forged notice became a line of its own: {line:?} in {before_shown:?}"
        );
    }
    for marker in ["m1", "m2", "m3", "m4", "m5", "m6", "m7"] {
        let n = before
            .iter()
            .filter(|l| l.split(' ').any(|w| w == marker))
            .count();
        assert!(n <= 1, "{marker} became {n} lines: {before_shown:?}");
    }
    let batch: Vec<&String> = before.iter().filter(|l| l.contains(" m9 ")).collect();
    assert_eq!(
        batch,
        ["<mallory> m9 [2Jone", "<mallory> m9 two"],
        "the batch's lines, each cleaned"
    );
    let private_lines = before.iter().filter(|l| l.contains("psst")).count();
    assert!(private_lines <= 8, "{before_shown:?}");
    // The mirror took no bad name or room, and the server keeps serving.
    let names = who(&mut c);
    for n in &names {
        assert!(
            n.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
            "a bad name in /who: {n:?} ({names:?})"
        );
    }
    let listed = rooms(&mut c);
    assert!(
        !listed.chars().any(|ch| ch.is_control()),
        "a bad room in /rooms: {listed:?}"
    );
    let mut d = cl.named(0, "dave");
    d.send("still here");
    assert_eq!(next_said(&mut c), "<dave> still here");
}

// --- the link's health: passwords, ACLs, full queues, reconnects -------------
#[test]
#[ignore = "needs redis-server"]
fn a_wrong_password_is_logged_at_once_and_shown_in_metrics() {
    let redis = Redis::start();
    acl_setuser(redis.port, &sample_acl("right"));
    let dir = TempDir::new("wrongpw");
    let log = dir.path().join("chatd.log");
    let url = format!("redis://chatd:wrong@127.0.0.1:{}", redis.port);
    let node = start_logged(&log, &["--redis", &url, "--node-id", "n1"]);
    let line = wait_log(&log, &["refused AUTH", "WRONGPASS"], TIMEOUT);
    assert!(line.contains("WARN"), "not a warning: {line}");
    assert!(
        !line.contains("wrong"),
        "the password itself was logged: {line}"
    );
    wait_metric(&node, "refused_total", TIMEOUT, |v| v >= 1.0);
    wait_metric(&node, "connect_failures_total", TIMEOUT, |v| v >= 1.0);
    assert_eq!(metric(&node, "link_up"), 0.0);
    assert_eq!(
        metric(&node, "reconnects_total"),
        0.0,
        "nothing was re-established"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn the_sample_acl_is_enough_and_a_missing_right_is_logged_and_retried() {
    let redis = Redis::start();
    acl_setuser(redis.port, &sample_acl("s3cret"));
    let mut no_eval = sample_acl("s3cret");
    no_eval[1] = "chatd-noeval".into();
    no_eval.retain(|a| a != "+fcall");
    acl_setuser(redis.port, &no_eval);

    // Two instances as the ACL user: the whole cluster works.
    let url = format!("redis://chatd:s3cret@127.0.0.1:{}", redis.port);
    let nodes: Vec<Server> = (1..=2)
        .map(|i| {
            let id = format!("n{i}");
            Server::start(&["--redis", &url, "--node-id", &id])
        })
        .collect();
    wait_linked(&nodes);
    let mut alice = named(&nodes[0], "alice");
    let mut b = nodes[1].client();
    wait_who(&mut b, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    refused(&mut b, "alice", "under the sample ACL");
    b.send("/msg alice hi");
    alice.expect_line(&format!("*{}* hi", b.name));
    wait_owner(redis.port, "alice", "n1", TIMEOUT);
    // Every command the link sends is allowed (the bans hash read at
    // link-up too): nothing was refused.
    for node in &nodes {
        assert_eq!(
            metric(node, "refused_total"),
            0.0,
            "a command the ACL lacks"
        );
    }

    // One without FCALL: told at once, in the log and /metrics, with
    // Redis's own words; asked again later (with backoff), link kept.
    let dir = TempDir::new("noeval");
    let log = dir.path().join("chatd.log");
    let url = format!("redis://chatd-noeval:s3cret@127.0.0.1:{}", redis.port);
    let n3 = start_logged(&log, &["--redis", &url, "--node-id", "n3"]);
    wait_log(
        &log,
        &["refused FCALL (reserve guest numbers)", "NOPERM"],
        TIMEOUT,
    );
    wait_metric(&n3, "refused_total", TIMEOUT, |v| v >= 3.0);
    assert_eq!(metric(&n3, "link_up"), 1.0);
}

/// Redis frozen, so nothing it is sent is answered: past the bound on
/// replies awaited (--cluster-queue / 64), lines for the other instances are
/// dropped and counted and a /nick is refused as busy; the link stays (the
/// reply deadline is a minute here), and works again once Redis does.
#[test]
#[ignore = "needs redis-server"]
fn a_full_queue_toward_redis_drops_lines_and_refuses_claims_but_keeps_the_link() {
    let flags = ["--cluster-queue", "4096", "--cluster-timeout", "60"];
    let cl = Cluster::start_with(1, &flags);
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.client(0);
    signal(cl.redis.pid(), "STOP");
    // 200 lines of 60 bytes are three times the 4 KiB bound however they
    // are batched (issue 21: the lines of one turn in one room are one
    // SAY call, so the count of replies awaited no longer fills it).
    let mut batch = String::new();
    for i in 0..200 {
        batch.push_str(&format!("line {i:03} {}\n/who\n", "x".repeat(50)));
    }
    alice.send_raw(batch.as_bytes());
    for _ in 0..200 {
        alice.expect("a /who answer", |l| l.starts_with("*** #lobby ("));
    }
    bob.send("/nick bobby");
    let got = bob.expect("the /nick answer", |l| l.starts_with("*** "));
    assert_eq!(
        got, "*** error: the cluster is busy; try /nick again in a moment",
        "a claim past the bound"
    );
    assert!(metric(&cl.nodes[0], "dropped_total") > 0.0);
    assert_eq!(metric(&cl.nodes[0], "link_up"), 1.0);
    signal(cl.redis.pid(), "CONT");
    // Once Redis answers again, claims go through on the same link.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        bob.send("/nick bobby");
        let got = bob.expect("the /nick answer", |l| {
            l.starts_with("*** you are now ") || l.starts_with("*** error")
        });
        if got == "*** you are now bobby" {
            break;
        }
        assert_eq!(
            got,
            "*** error: the cluster is busy; try /nick again in a moment"
        );
        assert!(Instant::now() < deadline, "still busy after {TIMEOUT:?}");
        std::thread::sleep(POLL);
    }
    let seen = alice.sync();
    assert!(
        !seen.iter().any(|l| l == LINK_DOWN),
        "the link went down: {seen:?}"
    );
    assert_eq!(metric(&cl.nodes[0], "reconnects_total"), 0.0);
}

#[test]
#[ignore = "needs redis-server"]
fn reconnects_count_links_that_came_back_and_failures_apart() {
    let mut redis = Redis::start();
    redis.stop();
    let node = Server::start(&["--redis", &redis.url(), "--node-id", "n1"]);
    wait_metric(&node, "connect_failures_total", TIMEOUT, |v| v >= 2.0);
    assert_eq!(
        metric(&node, "reconnects_total"),
        0.0,
        "failed attempts are not reconnects"
    );
    redis.restart();
    wait_metric(&node, "link_up", RELINK, |v| v == 1.0);
    assert_eq!(
        metric(&node, "reconnects_total"),
        0.0,
        "the first link is not a reconnect"
    );
    redis.stop();
    wait_metric(&node, "link_up", TIMEOUT, |v| v == 0.0);
    redis.restart();
    wait_metric(&node, "link_up", RELINK, |v| v == 1.0);
    assert_eq!(metric(&node, "reconnects_total"), 1.0);
}

// --- HAProxy in front ----------------------------------------------------------
#[test]
#[ignore = "needs haproxy"]
fn haproxy_cfg_validates_as_shipped_and_for_any_number_of_instances() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/haproxy.cfg");
    let out = Command::new("haproxy")
        .args(["-c", "-f", shipped])
        .output()
        .expect("run haproxy -c (is it installed? apt-get install haproxy)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = TempDir::new("hacfg");
    for n in [1, 3, 8] {
        // Only parsed, never bound.
        let servers: Vec<(SocketAddr, SocketAddr)> = (0..n)
            .map(|_| {
                let line = SocketAddr::from(([127, 0, 0, 1], free_port()));
                let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
                (line, http)
            })
            .collect();
        let cfg_text = haproxy_cfg(&servers, &dir.path().join("haproxy.sock"));
        let cfg = dir.path().join(format!("haproxy-{n}.cfg"));
        std::fs::write(&cfg, &cfg_text).expect("write config");
        assert_eq!(
            cfg_text.matches("    server node").count(),
            2 * n,
            "{cfg_text}"
        );
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("run haproxy -c");
        assert!(
            out.status.success(),
            "{n} instances: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The balancer alone, in front of two independent (non-cluster) instances:
/// checks over HTTP that nobody in #lobby notices, leastconn spreading line
/// clients, and the web port (health, page, WebSocket) passed through.
#[test]
#[ignore = "needs haproxy"]
fn haproxy_balances_line_and_web_clients_and_checks_instances_over_http() {
    // scripts/haproxy.cfg sends the PROXY header from 127.0.0.2.
    let flags = ["--proxy-protocol", "--trusted-proxy", "127.0.0.2"];
    let nodes = [Server::start(&flags), Server::start(&flags)];
    // In each lobby before HAProxy starts checking.
    let mut watchers: Vec<Client> = nodes.iter().map(|s| s.client()).collect();
    let hp = Haproxy::start(&[&nodes[0], &nodes[1]]);
    for w in &mut watchers {
        let seen = w.sync();
        assert!(
            seen.is_empty(),
            "{}: health checks showed up in #lobby: {seen:?}",
            w.name
        );
    }

    let x = Client::connect(hp.line);
    let y = Client::connect(hp.line);
    assert_eq!(
        hp.line_sessions(),
        [("node1".to_string(), 1), ("node2".to_string(), 1)],
        "leastconn: one line client on each instance"
    );
    for w in &mut watchers {
        let seen = w.sync();
        let joins = seen.iter().filter(|l| l.ends_with(" joined")).count();
        assert_eq!(joins, 1, "{}: {seen:?}", w.name);
    }

    let health = http_get(hp.http, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok"), "{health}");
    let page = http_get(hp.http, "/");
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "{}",
        &page[..page.len().min(200)]
    );

    let mut web = Ws::connect(hp.http);
    web.send("hello from the web");
    // Answered after the line above was handed to its room.
    web.send("/who");
    web.expect("the /who answer", |l| l.starts_with("*** #lobby ("));
    let want = format!("<{}> hello from the web", web.name);
    let heard = watchers
        .iter_mut()
        .map(|w| w.sync().contains(&want))
        .filter(|&heard| heard)
        .count();
    assert_eq!(heard, 1, "one instance's lobby hears the web user");
    drop((x, y));
}

#[test]
#[ignore = "needs redis-server and haproxy"]
fn through_haproxy_clients_land_on_different_instances_and_talk() {
    // scripts/haproxy.cfg sends the PROXY header from 127.0.0.2.
    let cl = Cluster::start_with(2, &["--proxy-protocol", "--trusted-proxy", "127.0.0.2"]);
    let hp = Haproxy::start(&[&cl.nodes[0], &cl.nodes[1]]);
    let mut x = Client::connect(hp.line);
    let mut y = Client::connect(hp.line);
    assert_eq!(
        hp.line_sessions(),
        [("node1".to_string(), 1), ("node2".to_string(), 1)],
        "leastconn: one line client on each instance"
    );
    for (c, name) in [(&mut x, "xavier"), (&mut y, "yvonne")] {
        c.send(&format!("/nick {name}"));
        c.expect_line(&format!("*** you are now {name}"));
        c.name = name.to_string();
    }
    wait_who(&mut x, TIMEOUT, "yvonne", |n| has_all(n, &["yvonne"]));
    x.send("hello through haproxy");
    assert_eq!(next_said(&mut y), "<xavier> hello through haproxy");
    y.send("hi back");
    assert_eq!(next_said(&mut x), "<yvonne> hi back");

    // A browser through the web port chats with both.
    let mut web = Ws::connect(hp.http);
    web.send("/nick wendy");
    web.expect("the /nick answer", |l| l == "*** you are now wendy");
    web.send("from the web");
    assert_eq!(next_said(&mut x), "<wendy> from the web");
    assert_eq!(next_said(&mut y), "<wendy> from the web");
    x.send("to the web");
    web.expect("xavier's line", |l| l == "<xavier> to the web");
}

// --- scripts/cluster.sh ----------------------------------------------------------
#[test]
#[ignore = "needs redis-server and haproxy"]
fn cluster_sh_brings_a_cluster_up_and_down() {
    let sh = ClusterSh::new(2);
    let up = sh.run(&["up", "2"]);
    assert!(up.status.success(), "up 2: {}", show(&up));
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains("chatd cluster up: 2 instances"),
        "{}",
        show(&up)
    );
    let pids = sh.pids();
    assert_eq!(pids.len(), 4, "redis, 2 chatd, haproxy: {pids:?}");

    let public = SocketAddr::from(([127, 0, 0, 1], sh.port));
    let mut x = Client::connect(public);
    let mut y = Client::connect(public);
    x.send("/nick xavier");
    x.expect_line("*** you are now xavier");
    x.name = "xavier".into();
    wait_who(&mut y, TIMEOUT, "xavier", |n| has_all(n, &["xavier"]));
    y.send("hello");
    assert_eq!(next_said(&mut x), format!("<{}> hello", y.name));

    let status = sh.run(&["status"]);
    assert!(status.status.success(), "status: {}", show(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    for want in ["redis    up", "node1    up", "node2    up", "haproxy  up"] {
        assert!(
            text.contains(want),
            "status lacks {want:?}: {}",
            show(&status)
        );
    }
    assert_eq!(
        text.matches("/healthz: 200 ok").count(),
        3,
        "{}",
        show(&status)
    );
    assert_eq!(
        text.matches("cluster link up").count(),
        2,
        "{}",
        show(&status)
    );

    let again = sh.run(&["up", "2"]);
    assert!(again.status.success(), "up twice: {}", show(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));
    assert_eq!(sh.pids().len(), 4, "up twice started more");
    let reshape = sh.run(&["up", "3"]);
    assert_eq!(
        reshape.status.code(),
        Some(1),
        "up 3 over 2: {}",
        show(&reshape)
    );
    assert!(String::from_utf8_lossy(&reshape.stderr).contains("down"));

    let down = sh.run(&["down"]);
    assert!(down.status.success(), "down: {}", show(&down));
    let deadline = Instant::now() + TIMEOUT;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    // Users are let go (EOF or reset), not left hanging.
    let mut rest = Vec::new();
    match x.reader.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("xavier's connection after down: {e}"),
    }
    assert!(
        TcpStream::connect(public).is_err(),
        "public port still open"
    );
    let status = sh.run(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(3),
        "status after down: {}",
        show(&status)
    );
    let down = sh.run(&["down"]);
    assert!(down.status.success(), "down twice: {}", show(&down));
}

#[test]
#[ignore = "needs redis-server and haproxy"]
fn cluster_sh_up_leaves_nothing_behind_when_an_instance_fails() {
    let mut sh = ClusterSh::new(2);
    let broken = sh.run.path().join("chatd-broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'chatd: cannot start: broken on purpose' >&2\nexit 1\n",
    )
    .expect("write chatd-broken");
    Command::new("chmod")
        .arg("+x")
        .arg(&broken)
        .status()
        .expect("chmod");
    sh.env.retain(|(k, _)| *k != "CHATD_BIN");
    sh.env.push(("CHATD_BIN", broken.display().to_string()));
    let up = sh.run(&["up", "2"]);
    assert_eq!(up.status.code(), Some(1), "{}", show(&up));
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(
        err.contains("broken on purpose"),
        "the instance's log is shown: {}",
        show(&up)
    );
    assert!(
        err.contains("node1 exited during start-up"),
        "{}",
        show(&up)
    );
    assert!(sh.pids().is_empty(), "pid files left: {}", show(&up));
    let status = sh.run(&["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", show(&status));
}

/// No package needed: what the script says when redis-server or haproxy is
/// missing, and its usage errors.
#[test]
fn cluster_sh_says_how_to_install_what_is_missing() {
    let mut sh = ClusterSh::new(1);
    sh.env
        .push(("REDIS_SERVER", "/nonexistent/redis-server".into()));
    sh.env.push(("HAPROXY", "/nonexistent/haproxy".into()));
    let up = sh.run(&["up"]);
    assert_eq!(up.status.code(), Some(1), "{}", show(&up));
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(
        err.contains("apt-get install redis-server haproxy"),
        "{}",
        show(&up)
    );
    assert!(err.contains("/nonexistent/redis-server") && err.contains("/nonexistent/haproxy"));
    assert!(sh.pids().is_empty());

    for args in [
        &[][..],
        &["up", "0"],
        &["up", "two"],
        &["sideways"],
        &["down", "now"],
    ] {
        let out = sh.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{args:?}"
        );
    }
    let status = sh.run(&["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", show(&status));
    let down = sh.run(&["down"]);
    assert!(down.status.success(), "{}", show(&down));
    assert!(String::from_utf8_lossy(&down.stdout).contains("no chatd cluster running"));
}

// --- room history in Redis -----------------------------------------------------

/// Room history is the cluster's, in Redis: an instance that joins late,
/// and one restarted (its memory gone), show the same history as the other
/// instance — the same lines in the same order, with the same times and,
/// with ids, the same ids.
#[test]
#[ignore = "needs redis-server"]
fn a_late_and_a_restarted_instance_show_the_same_history() {
    let mut cl = Cluster::start(1);
    let mut alice = cl.named(0, "alice");
    for i in 1..=5 {
        alice.send(&format!("said before n2 {i}"));
    }
    alice.send("/me waves");
    alice.send("/history 10");
    let on_n1 = history_block(&mut alice);
    assert_eq!(
        on_n1[0], "*** history of #lobby (6 lines, times UTC):",
        "{on_n1:?}"
    );
    assert!(
        on_n1[1].ends_with("] <alice> said before n2 1"),
        "{on_n1:?}"
    );
    assert!(on_n1[6].ends_with("] * alice waves"), "{on_n1:?}");

    // n2 starts after all of it was said.
    let url = cl.redis.url();
    cl.nodes
        .push(Server::start(&["--redis", &url, "--node-id", "n2"]));
    wait_linked(&cl.nodes);
    let mut bob = cl.client(1);
    assert_eq!(history_block(&mut bob), on_n1, "the join replay on n2");
    let mut tagged = Vec::new();
    for node in 0..2 {
        let mut c = cl.client(node);
        history_block(&mut c);
        c.send("/ids on");
        c.send("/history 10");
        let block = history_block(&mut c);
        assert!(block[1].starts_with("@id="), "{block:?}");
        tagged.push(block);
    }
    assert_eq!(tagged[0], tagged[1], "the same ids on both instances");

    // A line said on n2 reaches n1 with the id Redis gave it, once.
    bob.send("from n2");
    alice.expect_line(&format!("<{}> from n2", bob.name));

    // n1 restarted: its memory is gone, the history is not.
    cl.nodes[0].child.kill().expect("SIGKILL n1");
    let _ = cl.nodes[0].child.wait();
    drop(alice);
    cl.nodes[0] = Server::start(&["--redis", &url, "--node-id", "n1"]);
    wait_linked(&cl.nodes);
    let mut carol = cl.client(0);
    let after = history_block(&mut carol);
    assert_eq!(
        after[0], "*** history of #lobby (7 lines, times UTC):",
        "{after:?}"
    );
    assert_eq!(after[1..7], on_n1[1..7], "{after:?}");
    assert!(
        after[7].ends_with(&format!("] <{}> from n2", bob.name)),
        "{after:?}"
    );
    let mut dave = cl.client(1);
    assert_eq!(history_block(&mut dave), after, "and on n2 the same");
}

/// The `chat` client, cut off from one instance while the room keeps
/// talking, comes back through the "load balancer" to the other instance
/// and shows every line exactly once: the ids are the cluster's, so the
/// other instance knows exactly what it missed.
/// The `chat` client toward `port`, reconnecting fast; its stdout's lines.
fn spawn_chat(port: u16) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut chat = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--reconnect-base-ms", "50"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn chat");
    let stdout = chat.stdout.take().expect("chat stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (chat, rx)
}

#[test]
#[ignore = "needs redis-server"]
fn chat_resumes_on_another_instance_without_loss_or_duplicates() {
    let cl = Cluster::start(2);
    let proxy = support::Proxy::start(cl.nodes[0].addr);
    let mut tess = cl.named(0, "tess");
    let (mut chat, rx) = spawn_chat(proxy.addr.port());
    let mut seen: Vec<String> = Vec::new();
    let mut upto = |what: &str| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!("chat: expected {what}, saw {seen:?}");
            };
            let done = line.ends_with(what);
            seen.push(line);
            if done {
                return seen.clone();
            }
        }
    };
    upto("lines up to 8192 bytes");
    tess.expect("chat joined", |l| l.ends_with(" joined"));
    for i in 1..=5 {
        tess.send(&format!("line {i}"));
    }
    upto("> line 5");

    proxy.cut();
    proxy.retarget(cl.nodes[1].addr);
    tess.expect("chat gone", |l| l.contains(" left"));
    for i in 6..=15 {
        tess.send(&format!("line {i}"));
    }
    tess.sync();
    proxy.restore();
    tess.expect("chat back, on n2", |l| l.ends_with(" joined"));
    for i in 16..=20 {
        tess.send(&format!("line {i}"));
    }
    let seen = upto("> line 20");
    drop(chat.stdin.take());
    let _ = chat.kill();
    let _ = chat.wait();
    for i in 1..=20 {
        let said = format!("<tess> line {i}");
        let shown = seen
            .iter()
            .filter(|l| **l == said || l.ends_with(&format!("] {said}")))
            .count();
        assert_eq!(shown, 1, "line {i} shown {shown} times: {seen:#?}");
    }
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("missed") || l.contains("gone")),
        "nothing was missed: {seen:#?}"
    );
}

// --- bans, cluster-wide (issue 15) -------------------------------------------

/// The first line a new connection to `server` gets.
fn first_line(server: &Server) -> String {
    let mut c = Client::connect_raw(server.addr);
    c.read_line().unwrap_or_default()
}

/// Connects until the first line satisfies `pred`, within RELINK.
fn connect_until(server: &Server, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + RELINK;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = first_line(server);
        if pred(&last) {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("{what}: still {last:?} after {RELINK:?}");
}

#[test]
#[ignore = "needs redis-server"]
fn a_ban_applies_on_every_instance_and_to_one_started_later() {
    let dir = TempDir::new("bans");
    let redis = Redis::start();
    let url = redis.url();
    let start = |i: usize| {
        let id = format!("n{i}");
        let file = dir.path().join(format!("bans-{i}.txt"));
        let file = file.to_str().unwrap().to_string();
        let mut args = vec!["--redis", &url, "--node-id", &id];
        args.extend_from_slice(&["--oper-password", "sesame", "--bans-file", &file]);
        args.extend_from_slice(FAST);
        Server::start(&args)
    };
    let nodes = vec![start(1), start(2)];
    wait_linked(&nodes);
    let mut alice = named(&nodes[0], "alice");
    alice.send("/oper sesame");
    alice.expect_line("*** you are now an operator; /help lists your commands");
    let mut bob = named(&nodes[1], "bob");
    wait_who(&mut alice, TIMEOUT, "bob", |n| has_all(n, &["bob"]));

    alice.send("/ban 127.0.0.0/8 confirm 1h flood");
    alice.expect("the answer", |l| {
        l.starts_with("*** banned 127.0.0.0/8 for 1h; ")
    });
    // On the other instance: bob, from that address, is closed with the
    // reason, and the address is refused there too.
    bob.expect("the ban, told on his instance", |l| {
        l.starts_with("*** bob was banned by alice for ") && l.ends_with(" (flood)")
    });
    let _ = bob.read_to_eof();
    let refused = first_line(&nodes[1]);
    assert!(
        refused.starts_with("*** error: your address is banned from this server (")
            && refused.ends_with("by alice: flood)"),
        "{refused}"
    );
    // An instance started later, with an empty bans file of its own, reads
    // the ban from Redis when its link comes up.
    let later = start(3);
    wait_metric(&later, "link_up", RELINK, |v| v == 1.0);
    connect_until(&later, "the ban on the new instance", |l| {
        l.starts_with("*** error: your address is banned")
    });
    // Lifted on one instance, lifted everywhere.
    alice.send("/unban 127.0.0.0/8");
    alice.expect_line("*** unbanned 127.0.0.0/8");
    for node in [&nodes[1], &later] {
        connect_until(node, "the unban", |l| l.starts_with("*** welcome"));
    }
    drop(later);
    drop(nodes);
}

#[test]
#[ignore = "needs redis-server"]
fn forged_bans_on_redis_are_dropped() {
    let dir = TempDir::new("forged-bans");
    let redis = Redis::start();
    // Written before the instance starts: read at its link-up. A line
    // that does not parse, and one whose field names another net.
    for (field, value) in [
        ("10.1.1.1/32", "junk"),
        ("127.0.0.1/32", "10.0.0.1/32\tpermanent\tx\ty"),
    ] {
        redis_cmd(
            redis.port,
            &[b"HSET", b"chatd:0:bans", field.as_bytes(), value.as_bytes()],
        );
    }
    let file = dir.path().join("bans.txt");
    let (url, file) = (redis.url(), file.to_str().unwrap().to_string());
    let mut args = vec!["--redis", &url, "--node-id", "n1", "--bans-file", &file];
    args.extend_from_slice(FAST);
    let node = Server::start(&args);
    wait_linked(std::slice::from_ref(&node));
    for payload in [
        "B n9 not-an-address\tpermanent\tx\ty",
        "B n9 127.0.0.1\tsoon\tx\ty",
        "B bad~node! 127.0.0.1\tpermanent\tx\ty",
        "X n9 127.0.0.1",
        "U n9 nonsense",
    ] {
        redis_cmd(redis.port, &[b"PUBLISH", b"chatd:0:b", payload.as_bytes()]);
    }
    wait_metric(&node, "malformed_total", RELINK, |v| v >= 7.0);
    assert!(
        first_line(&node).starts_with("*** welcome"),
        "nothing was banned"
    );
}

// --- issue 21: one chat in one order -----------------------------------------

#[test]
#[ignore = "needs redis-server"]
fn a_redis_cluster_node_is_refused_clearly_and_never_linked() {
    let redis = Redis::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "{dir}/nodes.conf",
    ]);
    let dir = TempDir::new("redis-cluster");
    let log = dir.path().join("chatd.log");
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--node-id", "n1"];
    args.extend_from_slice(FAST);
    let node = start_logged(&log, &args);
    let line = wait_log(&log, &["Redis Cluster", "issue 24"], RELINK);
    assert!(line.contains("cluster_enabled:1"), "{line}");
    // It keeps trying (a node restarted without cluster mode is used at
    // once), and every attempt is refused the same way.
    wait_metric(&node, "connect_failures_total", RELINK, |v| v >= 3.0);
    assert_eq!(metric(&node, "link_up"), 0.0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("cluster link up"), "{text}");
    // Local chat works (names wait for a link); nobody is told it is up.
    let mut a = node.client();
    let mut b = node.client();
    a.send("still local");
    let want = format!("<{}> still local", a.name);
    let before = expect_within(&mut b, TIMEOUT, "the line", |l| l == want);
    assert!(!before.iter().any(|l| l == LINK_RESTORED), "{before:?}");
}

#[test]
#[ignore = "needs redis-server"]
fn forged_room_lines_in_every_format_never_become_server_lines() {
    let cl = Cluster::start(1);
    let mut c = cl.named(0, "carol");
    let port = cl.redis.port;
    let forged: &[&[u8]] = &[
        // Numbered (the format SAY publishes), a LF and a CRLF before a
        // forged notice.
        b"evil =1-1:1\n<mallory> f1 hi\n*** bobby is now admin",
        b"evil =2-1:1\n<mallory> f2 hi\r\n*** bobby is now admin\x1b[2J",
        // A batch.
        b"evil\n<mallory> f3 hi\n*** bobby is now admin",
        // Senders no client could be.
        b"evil =3-1:1\n<bad name> f4 x\n* b@d f5 y\n<> f6 z",
        b"evil\n<waytoolongforanameinthischat> f7 x\n<mallory> f3b ok",
        // One line that is neither a room line nor a notice.
        b"evil hello f8",
    ];
    for payload in forged {
        let got = redis_cmd(port, &[b"PUBLISH", b"chatd:0:r:lobby", payload]);
        assert!(matches!(got, Resp::Int(_)), "PUBLISH: {got:?}");
    }
    let got = redis_cmd(port, &[b"PUBLISH", b"chatd:0:r:lobby", b"evil <probe> end"]);
    assert!(matches!(got, Resp::Int(_)), "PUBLISH: {got:?}");
    let before = expect_within(&mut c, TIMEOUT, "the clean line", |l| l == "<probe> end");
    for line in &before {
        assert!(
            !line.starts_with("*** bobby"),
            "a forged notice became a server line: {line:?} in {before:?}"
        );
        assert!(
            !line.chars().any(|ch| ch.is_control() || ch == '\u{202e}'),
            "{line:?}"
        );
        for bad in ["f4", "f5", "f6", "f7", "f8"] {
            assert!(
                !line.split(' ').any(|w| w == bad),
                "{bad} reached a user: {line:?} in {before:?}"
            );
        }
    }
    for good in ["f1", "f2", "f3", "f3b"] {
        let n = before
            .iter()
            .filter(|l| l.starts_with(&format!("<mallory> {good} ")))
            .count();
        assert_eq!(n, 1, "{good}: {before:?}");
    }
}

/// Each as bytes, for `redis_pipe`.
fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// The room's epoch as SAY set it (a line was said there).
fn room_epoch(port: u16, room: &str) -> String {
    match redis_cmd(
        port,
        &[b"HGET", format!("chatd:0:h:{room}").as_bytes(), b"e"],
    ) {
        Resp::Bulk(Some(e)) => String::from_utf8(e).expect("an epoch"),
        other => panic!("HGET e: {other:?}"),
    }
}

#[test]
#[ignore = "needs redis-server"]
fn history_of_a_thousand_long_lines_leaves_the_link_up() {
    let cl = Cluster::start_with(2, &["--history", "1000", "--max-line", "8000"]);
    let port = cl.redis.port;
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    alice.send("first");
    assert_eq!(next_said(&mut bob), "<alice> first");
    // 1000 more lines of 8000 bytes, as instances would have kept them.
    let epoch = room_epoch(port, "lobby");
    let text = format!("<alice> {}", "x".repeat(8000 - 8));
    let mut cmds: Vec<Vec<Vec<u8>>> = (2..=1001)
        .map(|n| {
            let id = format!("{epoch}-{n}");
            cmd(&["XADD", "chatd:0:s:lobby", &id, "t", &text, "ms", "0"])
        })
        .collect();
    cmds.push(cmd(&["HSET", "chatd:0:h:lobby", "n", "1001"]));
    for r in redis_pipe(port, &cmds) {
        assert!(!matches!(r, Resp::Error(_)), "{r:?}");
    }
    alice.send("/history 1000");
    let (header, before) = read_until(&mut alice, TIMEOUT, "the history", |l| {
        l.starts_with("*** history of #lobby (")
    });
    assert!(
        before
            .iter()
            .any(|l| l.ends_with("older lines left out: too long to send at once")),
        "{before:?} {header}"
    );
    // The link stayed up: a line still crosses, both ways, and nobody was
    // told the link went down.
    bob.send("after");
    let seen = expect_within(&mut alice, TIMEOUT, "bob's line", |l| l == "<bob> after");
    assert!(
        !seen.iter().chain(&before).any(|l| l == LINK_DOWN),
        "{before:?}"
    );
    alice.send("back");
    let seen = expect_within(&mut bob, TIMEOUT, "alice's line", |l| l == "<alice> back");
    assert!(!seen.iter().any(|l| l == LINK_DOWN), "{seen:?}");
    assert_eq!(metric(&cl.nodes[0], "reconnects_total"), 0.0);
}

#[test]
#[ignore = "needs redis-server"]
fn six_thousand_long_bans_in_redis_leave_the_link_up() {
    let dir = TempDir::new("many-bans");
    let redis = Redis::start();
    let reason = "r".repeat(760);
    let cmds: Vec<Vec<Vec<u8>>> = (0..60)
        .map(|k| {
            let mut c = cmd(&["HSET", "chatd:0:bans"]);
            for i in k * 100..(k + 1) * 100 {
                let net = format!("10.{}.{}.1/32", i / 256, i % 256);
                c.push(net.clone().into_bytes());
                c.push(format!("{net}\tpermanent\top\t{reason}").into_bytes());
            }
            c
        })
        .collect();
    for r in redis_pipe(redis.port, &cmds) {
        assert!(!matches!(r, Resp::Error(_)), "{r:?}");
    }
    let file = dir.path().join("bans.txt");
    let (url, file) = (redis.url(), file.to_str().unwrap().to_string());
    let mut args = vec!["--redis", &url, "--node-id", "n1", "--bans-file", &file];
    args.extend_from_slice(FAST);
    // It logs each ban it learns: into a file kept only if the test fails.
    let node = start_logged(&dir.path().join("chatd.log"), &args);
    wait_metric(&node, "link_up", RELINK, |v| v == 1.0);
    let mut alice = named(&node, "alice");
    // Several ticks (400 ms each) with the link up throughout.
    quiet_for(
        &mut alice,
        Duration::from_secs(3),
        "the link went down",
        |l| l == LINK_DOWN,
    );
    assert_eq!(metric(&node, "reconnects_total"), 0.0);
    assert_eq!(metric(&node, "link_up"), 1.0);
    // And it took the bans: every one of them reaches its file.
    let deadline = Instant::now() + RELINK;
    let saved = || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.lines().filter(|l| l.starts_with("10.")).count()
    };
    while saved() < 6000 && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert_eq!(saved(), 6000);
}

#[test]
#[ignore = "needs redis-server"]
fn a_five_mib_stream_entry_leaves_the_link_up_at_join() {
    let cl = Cluster::start(2);
    let port = cl.redis.port;
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    let big = format!("<mallory> {}", "x".repeat(5 << 20));
    let got = redis_cmd(
        port,
        &[
            b"XADD",
            b"chatd:0:s:games",
            b"*",
            b"t",
            big.as_bytes(),
            b"ms",
            b"0",
        ],
    );
    assert!(matches!(got, Resp::Bulk(Some(_))), "XADD: {got:?}");
    bob.send("/join games");
    bob.expect("the join", |l| l.starts_with("*** you joined #games"));
    alice.send("/join games");
    alice.expect("the join", |l| l.starts_with("*** you joined #games"));
    alice.send("in games");
    let seen = expect_within(&mut bob, TIMEOUT, "alice's line", |l| {
        l == "<alice> in games"
    });
    assert!(!seen.iter().any(|l| l == LINK_DOWN), "{seen:?}");
    bob.send("hello");
    let seen = expect_within(&mut alice, TIMEOUT, "bob's line", |l| l == "<bob> hello");
    assert!(!seen.iter().any(|l| l == LINK_DOWN), "{seen:?}");
    for node in &cl.nodes {
        assert_eq!(metric(node, "reconnects_total"), 0.0);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_far_future_stream_id_starts_a_new_epoch_and_the_room_goes_on() {
    let cl = Cluster::start(2);
    let port = cl.redis.port;
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    alice.send("before");
    assert_eq!(next_said(&mut bob), "<alice> before");
    let epoch = room_epoch(port, "lobby");
    let got = redis_cmd(
        port,
        &[
            b"XADD",
            b"chatd:0:s:lobby",
            b"99999999999999-0",
            b"t",
            b"<m> x",
            b"ms",
            b"0",
        ],
    );
    assert!(matches!(got, Resp::Bulk(Some(_))), "XADD: {got:?}");
    // Lines still go through, from either side, in a new record.
    for round in 0..3 {
        let line = format!("from alice {round}");
        alice.send(&line);
        let seen = expect_within(&mut bob, TIMEOUT, "alice's line", |l| {
            l == format!("<alice> {line}")
        });
        assert!(said(&seen).is_empty(), "{seen:?}");
        let line = format!("from bob {round}");
        bob.send(&line);
        let seen = expect_within(&mut alice, TIMEOUT, "bob's line", |l| {
            l == format!("<bob> {line}")
        });
        assert!(said(&seen).is_empty(), "{seen:?}");
    }
    assert_ne!(room_epoch(port, "lobby"), epoch, "a new epoch");
}

#[test]
#[ignore = "needs redis-server"]
fn a_graceful_stop_gives_its_names_back_at_once() {
    // The default timers: a name lives 15 s in Redis, so getting it back
    // within 2 s is the release, not the expiry.
    let mut cl = Cluster::start(2);
    let mut zed = cl.named(0, "zed");
    let mut bob = cl.client(1);
    wait_who(&mut bob, TIMEOUT, "zed", |n| has_all(n, &["zed"]));
    let status = cl.nodes[0].signal_and_wait("TERM");
    assert!(status.success(), "node 1 after SIGTERM: {status}");
    let _ = zed.read_to_eof();
    read_until(&mut bob, TIMEOUT, "zed's leave", |l| {
        l.starts_with("*** zed left")
    });
    assert_eq!(
        name_owner(cl.redis.port, "zed"),
        None,
        "released at the stop"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        bob.send("/nick zed");
        let got = bob.expect("the /nick answer", |l| {
            l.starts_with("*** you are now ") || l.starts_with("*** error")
        });
        if got == "*** you are now zed" {
            break;
        }
        assert!(Instant::now() < deadline, "zed still taken: {got}");
        std::thread::sleep(POLL);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn chat_gets_its_name_back_after_a_reconnect_once_the_old_claim_is_gone() {
    let mut cl = Cluster::start_with(2, FAST);
    let proxy = support::Proxy::start(cl.nodes[0].addr);
    let (mut chat, rx) = spawn_chat(proxy.addr.port());
    let mut seen: Vec<String> = Vec::new();
    let mut upto = |what: &str, bound: Duration| {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!("chat: expected {what} within {bound:?}, saw {seen:?}");
            };
            let done = line.ends_with(what);
            seen.push(line);
            if done {
                return;
            }
        }
    };
    upto("lines up to 8192 bytes", TIMEOUT);
    let stdin = chat.stdin.as_mut().expect("chat stdin");
    std::io::Write::write_all(stdin, b"/nick zed\n").expect("write to chat");
    upto("*** you are now zed", TIMEOUT);
    // Its server dies: the name stays claimed in Redis (and zed in the
    // other instance's mirror) until the claim runs out and the instance
    // is declared lost. chat reconnects to the other one at once, is
    // refused the name, and asks again until it is free.
    proxy.retarget(cl.nodes[1].addr);
    cl.nodes[0].signal_and_wait("KILL");
    upto("lines up to 8192 bytes", TIMEOUT);
    upto("*** error: the name zed is taken", TIMEOUT);
    upto("*** you are now zed", SERVER_LOST_BOUND + SLACK);
    let mut bob = cl.client(1);
    bob.send("/nick zed");
    bob.expect_line("*** error: the name zed is taken");
    drop(chat.stdin.take());
    let _ = chat.kill();
    let _ = chat.wait();
}

#[test]
#[ignore = "needs redis-server"]
fn the_names_of_a_lost_instance_are_given_back_by_the_others() {
    let mut cl = Cluster::start_with(2, FAST);
    let port = cl.redis.port;
    let _zed = cl.named(0, "zed");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "zed", |n| has_all(n, &["zed"]));
    cl.nodes[0].signal_and_wait("KILL");
    // The claim would otherwise run out on its own: made to last, it is
    // the survivors' release alone that frees it.
    let got = redis_cmd(port, &[b"PERSIST", b"chatd:name:zed"]);
    assert_eq!(got, Resp::Int(1), "zed's claim, still there");
    read_until(&mut bob, SERVER_LOST_BOUND + SLACK, "zed's loss", |l| {
        l == "*** zed left (server lost)"
    });
    nick_eventually(&mut bob, "zed");
}

#[test]
#[ignore = "needs redis-server"]
fn bans_converge_an_unban_made_while_away_and_bans_after_redis_restarts_empty() {
    let dir = TempDir::new("bans-converge");
    let mut redis = Redis::start();
    let url = redis.url();
    let file = |i: usize| dir.path().join(format!("bans-{i}.txt"));
    let start = |i: usize| {
        let id = format!("n{i}");
        let file = file(i).to_str().unwrap().to_string();
        let mut args = vec!["--redis", &url, "--node-id", &id];
        args.extend_from_slice(&["--oper-password", "sesame", "--bans-file", &file]);
        args.extend_from_slice(FAST);
        Server::start(&args)
    };
    let saved = |i: usize| std::fs::read_to_string(file(i)).unwrap_or_default();
    let wait_file = |i: usize, what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + RELINK;
        while !pred(&saved(i)) {
            assert!(
                Instant::now() < deadline,
                "n{i}'s bans file never {what}: {:?}",
                saved(i)
            );
            std::thread::sleep(POLL);
        }
    };
    let mut nodes = vec![start(1), start(2)];
    wait_linked(&nodes);
    let mut alice = named(&nodes[0], "alice");
    alice.send("/oper sesame");
    alice.expect_line("*** you are now an operator; /help lists your commands");
    // Two bans, made while both instances are up: the second on the
    // tests' own address (alice, who made it, stays).
    alice.send("/ban 10.9.9.9/32 1h spam");
    alice.expect("the answer", |l| l.starts_with("*** banned 10.9.9.9 "));
    alice.send("/ban 127.0.0.0/8 confirm 1h flood");
    alice.expect("the answer", |l| l.starts_with("*** banned 127.0.0.0/8 "));
    wait_file(2, "had both bans", &|t| {
        t.contains("10.9.9.9") && t.contains("127.0.0.0/8")
    });
    // n2 stops; one ban is lifted while it is away; it starts again with
    // its own file, which still has both.
    let status = nodes[1].signal_and_wait("TERM");
    assert!(status.success(), "n2 after SIGTERM: {status}");
    alice.send("/unban 10.9.9.9/32");
    alice.expect("the answer", |l| l.starts_with("*** unbanned 10.9.9.9"));
    nodes[1] = start(2);
    wait_metric(&nodes[1], "link_up", RELINK, |v| v == 1.0);
    wait_file(2, "learnt the unban", &|t| {
        !t.contains("10.9.9.9") && t.contains("127.0.0.0/8")
    });
    connect_until(&nodes[1], "the ban kept on n2", |l| {
        l.starts_with("*** error: your address is banned")
    });
    // Redis restarts empty: the instances write their bans back, and one
    // started later refuses the address.
    redis.stop();
    redis.restart();
    for node in &nodes {
        wait_metric(node, "reconnects_total", RELINK, |v| v >= 1.0);
        wait_metric(node, "link_up", RELINK, |v| v == 1.0);
    }
    let later = start(3);
    wait_metric(&later, "link_up", RELINK, |v| v == 1.0);
    connect_until(
        &later,
        "the ban on an instance started after Redis restarted",
        |l| l.starts_with("*** error: your address is banned"),
    );
    wait_file(3, "had the ban, and not the lifted one", &|t| {
        t.contains("127.0.0.0/8") && !t.contains("10.9.9.9")
    });
    drop(later);
    drop(nodes);
}

#[test]
#[ignore = "needs redis-server"]
fn a_five_mib_publication_is_dropped_and_the_link_stays_up() {
    let cl = Cluster::start(2);
    let port = cl.redis.port;
    let mut alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    let big = format!("evil <mallory> {}", "x".repeat(5 << 20));
    let got = redis_cmd(port, &[b"PUBLISH", b"chatd:0:r:lobby", big.as_bytes()]);
    assert_eq!(got, Resp::Int(2), "both instances subscribed");
    alice.send("after");
    let seen = expect_within(&mut bob, TIMEOUT, "alice's line", |l| l == "<alice> after");
    assert!(!seen.iter().any(|l| l == LINK_DOWN), "{seen:?}");
    bob.send("back");
    let seen = expect_within(&mut alice, TIMEOUT, "bob's line", |l| l == "<bob> back");
    assert!(!seen.iter().any(|l| l == LINK_DOWN), "{seen:?}");
    for node in &cl.nodes {
        assert_eq!(metric(node, "reconnects_total"), 0.0);
        assert!(metric(node, "malformed_total") >= 1.0);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_newcomer_does_not_make_every_instance_announce_everyone_to_everyone() {
    let cl = Cluster::start(2);
    let mut users: Vec<Client> = (0..20).map(|k| cl.client(k % 2)).collect();
    // Their arrivals have crossed (n1 sees n2's ten), so nothing of theirs
    // is still on its way when we start listening.
    wait_who(&mut users[0], RELINK, "all 20 users", |n| n.len() >= 20);
    // Everyone presence says, from now on, on the channel every instance
    // hears.
    let mut sub = TcpStream::connect(("127.0.0.1", cl.redis.port)).expect("connect to redis");
    sub.set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    std::io::Write::write_all(&mut sub, b"*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nchatd:0:p\r\n")
        .expect("SUBSCRIBE");
    let mut sub = std::io::BufReader::new(sub);
    assert!(matches!(read_resp(&mut sub), Resp::Array(_)), "subscribed");
    let url = cl.redis.url();
    let third = Server::start(&["--redis", &url, "--node-id", "n3"]);
    // The newcomer has learned everyone (the rosters reached it) ...
    let mut probe = third.client();
    wait_who(&mut probe, RELINK, "all 20 users and the probe", |n| {
        n.len() >= 21
    });
    let got = redis_cmd(cl.redis.port, &[b"PUBLISH", b"chatd:0:p", b"Z the end"]);
    assert!(matches!(got, Resp::Int(_)), "PUBLISH: {got:?}");
    // ... and the others heard none of it again: only n3's own news.
    let mut theirs = Vec::new();
    for _ in 0..10_000 {
        let Resp::Array(m) = read_resp(&mut sub) else {
            panic!("not a message")
        };
        let Some(Resp::Bulk(Some(text))) = m.get(2) else {
            panic!("{m:?}")
        };
        let text = String::from_utf8_lossy(text).into_owned();
        if text == "Z the end" {
            assert!(theirs.is_empty(), "re-announced to everyone: {theirs:?}");
            drop(users);
            return;
        }
        // A roster is `J` (a user) and `E` (its end); the probes leaving
        // (`L`) are not one.
        let roster = text.starts_with("J ") || text.starts_with("E ");
        if roster && !text.split(' ').nth(1).is_some_and(|n| n.starts_with("n3~")) {
            theirs.push(text);
        }
    }
    panic!("no end marker");
}

#[test]
#[ignore = "needs redis-server"]
fn a_full_mirror_is_counted_and_logged_not_silent() {
    let cl = Cluster::start_with(2, &["--max-remote-users", "2"]);
    let _users: Vec<Client> = (0..4).map(|_| cl.client(1)).collect();
    // n2's probe left; its 4 users (and n1's) are more than n1 keeps.
    wait_metric(&cl.nodes[0], "remote_refused_total", RELINK, |v| v >= 2.0);
    wait_metric(&cl.nodes[0], "remote_users", RELINK, |v| v == 2.0);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = String::from_utf8_lossy(&cl.nodes[0].log.lock().expect("log")).into_owned();
        if log.contains("left out of /who, /msg and name checks")
            && log.contains("at most 2 (--max-remote-users)")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- issue 21: ids never silently drop lines ---------------------------------

/// `@id=EPOCH-N;room=lobby <alice> text` as a client with ids reads a
/// live line: the id and the rest (other tags left out).
fn tagged(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("@id=")?;
    let (tags, text) = rest.split_once(' ')?;
    let id = tags.split(';').next()?;
    Some((id.to_string(), text.to_string()))
}

/// Reads `c`'s tagged lines until one reads `text`; records each id with
/// its text in `seen`, failing if an id comes with two different texts.
fn expect_tagged(
    c: &mut Client,
    text: &str,
    seen: &mut std::collections::HashMap<String, String>,
) -> String {
    let (line, before) = read_until(c, RELINK, text, |l| {
        tagged(l).is_some_and(|(_, t)| t == text)
    });
    for l in before.iter().chain([&line]) {
        if let Some((id, t)) = tagged(l) {
            let old = seen.insert(id.clone(), t.clone());
            assert!(
                old.as_ref().is_none_or(|o| *o == t),
                "id {id} given to {old:?} and to {t:?}"
            );
        }
    }
    tagged(&line).map(|(id, _)| id).unwrap_or_default()
}

/// Two instances, alice on the first and bob on the second, who sees her.
fn alice_and_bob() -> (Cluster, Client, Client) {
    let cl = Cluster::start(2);
    let alice = cl.named(0, "alice");
    let mut bob = cl.named(1, "bob");
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    (cl, alice, bob)
}

fn epoch_of(id: &str) -> &str {
    id.split_once('-').map_or(id, |(e, _)| e)
}

/// A Redis with one replica; the replica cut off while lines are said (so
/// only the master has them), the master killed, the replica promoted on
/// the master's address: the room's next line starts a new epoch, no id is
/// given to two lines, and a client resuming from an id the promoted
/// replica never saw is told the history since it is gone. Before the
/// fence the replica gave those ids again, and the instances dropped the
/// new lines as duplicates.
#[test]
#[ignore = "needs redis-server"]
fn a_lossy_failover_starts_a_new_epoch_and_never_gives_an_id_twice() {
    let mut master = Redis::start();
    let port = master.port;
    // The replica hears its master through a link the test can cut: a
    // replica stopped with SIGSTOP would still find what was sent meanwhile
    // in its socket's buffer when it wakes, and lose nothing.
    let link = support::Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    let via = link.addr.port().to_string();
    let mut replica = Redis::start_with(&["--replicaof", "127.0.0.1", &via]);
    let synced = |p: u16| match redis_cmd(p, &[b"INFO", b"replication"]) {
        Resp::Bulk(Some(info)) => String::from_utf8_lossy(&info).contains("master_link_status:up"),
        _ => false,
    };
    let deadline = Instant::now() + RELINK;
    while !synced(replica.port) {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(POLL);
    }
    let url = master.url();
    let nodes: Vec<Server> = (1..=2)
        .map(|i| {
            let id = format!("n{i}");
            let mut args = vec!["--redis", &url, "--node-id", &id];
            args.extend_from_slice(FAST);
            Server::start(&args)
        })
        .collect();
    wait_linked(&nodes);
    let mut alice = named(&nodes[0], "alice");
    let mut bob = named(&nodes[1], "bob");
    wait_who(&mut bob, TIMEOUT, "alice", |n| has_all(n, &["alice"]));
    bob.send("/ids on");
    bob.expect("ids on", |l| l.starts_with("*** ids on: #lobby at "));
    let mut seen = std::collections::HashMap::new();
    for i in 1..=3 {
        alice.send(&format!("kept {i}"));
        expect_tagged(&mut bob, &format!("<alice> kept {i}"), &mut seen);
    }
    // The replica has them all before it stops.
    let n_of = |p: u16| match redis_cmd(p, &[b"HGET", b"chatd:0:h:lobby", b"n"]) {
        Resp::Bulk(Some(n)) => String::from_utf8_lossy(&n).into_owned(),
        _ => String::new(),
    };
    let deadline = Instant::now() + RELINK;
    while n_of(replica.port) != n_of(port) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(POLL);
    }
    link.cut();
    let mut lost_id = String::new();
    for i in 1..=3 {
        alice.send(&format!("lost {i}"));
        lost_id = expect_tagged(&mut bob, &format!("<alice> lost {i}"), &mut seen);
    }
    let old_epoch = epoch_of(&lost_id).to_string();
    // The master dies with the only copy of those three; the replica is
    // promoted and takes over its address.
    signal(master.pid(), "KILL");
    master.stop();
    assert_eq!(
        redis_cmd(replica.port, &[b"REPLICAOF", b"NO", b"ONE"]),
        Resp::Simple("OK".into())
    );
    let p = port.to_string();
    assert_eq!(
        redis_cmd(replica.port, &[b"CONFIG", b"SET", b"port", p.as_bytes()]),
        Resp::Simple("OK".into())
    );
    replica.port = port;
    for c in [&mut alice, &mut bob] {
        expect_within(c, RELINK, "the link back", |l| l == LINK_RESTORED);
    }
    let mut new_ids = Vec::new();
    for i in 1..=3 {
        alice.send(&format!("after {i}"));
        new_ids.push(expect_tagged(
            &mut bob,
            &format!("<alice> after {i}"),
            &mut seen,
        ));
    }
    for id in &new_ids {
        assert_ne!(epoch_of(id), old_epoch, "a new epoch: {new_ids:?}");
    }
    // Resuming from a line only the dead master had: told it is gone.
    let mut carol = nodes[0].client();
    carol.send(&format!("/history since {lost_id}"));
    let gone = format!("*** the history since {lost_id} is gone");
    carol.expect("told the history is gone", |l| l.starts_with(&gone));
    drop(replica);
}

/// One forged numbered line with the live epoch and an id 1000 ahead:
/// shown (cleaned, as any publication), and the room goes on. Before,
/// every instance dropped every real line after it as "already delivered".
#[test]
#[ignore = "needs redis-server"]
fn a_forged_future_id_does_not_silence_the_room() {
    let (cl, mut alice, mut bob) = alice_and_bob();
    let port = cl.redis.port;
    alice.send("before");
    assert_eq!(next_said(&mut bob), "<alice> before");
    let epoch = room_epoch(port, "lobby");
    let n: u64 = match redis_cmd(port, &[b"HGET", b"chatd:0:h:lobby", b"n"]) {
        Resp::Bulk(Some(n)) => String::from_utf8_lossy(&n).parse().expect("N"),
        other => panic!("HGET n: {other:?}"),
    };
    let forged = format!("evil ={epoch}-{}:1\n<mallory> forged", n + 1000);
    let got = redis_cmd(port, &[b"PUBLISH", b"chatd:0:r:lobby", forged.as_bytes()]);
    assert!(matches!(got, Resp::Int(2)), "PUBLISH: {got:?}");
    assert_eq!(next_said(&mut bob), "<mallory> forged");
    assert_eq!(next_said(&mut alice), "<mallory> forged");
    for i in 1..=3 {
        alice.send(&format!("after {i}"));
        assert_eq!(next_said(&mut bob), format!("<alice> after {i}"));
        bob.send(&format!("reply {i}"));
        assert_eq!(next_said(&mut alice), format!("<bob> reply {i}"));
    }
}

/// `FUNCTION FLUSH` (and `SCRIPT FLUSH`) while the chat goes on: the next
/// line still goes through, from either instance, with no error to its
/// sender, and the history is read as before.
#[test]
#[ignore = "needs redis-server"]
fn lines_go_through_after_redis_forgets_the_functions() {
    let (cl, mut alice, mut bob) = alice_and_bob();
    let port = cl.redis.port;
    alice.send("/ids on");
    alice.expect("ids on", |l| l.starts_with("*** ids on: #lobby at "));
    alice.send("one");
    assert_eq!(next_said(&mut bob), "<alice> one");
    for flush in [&[b"FUNCTION" as &[u8], b"FLUSH"], &[b"SCRIPT", b"FLUSH"]] {
        assert_eq!(redis_cmd(port, flush), Resp::Simple("OK".into()));
    }
    alice.send("two");
    assert_eq!(next_said(&mut bob), "<alice> two");
    let before = expect_within(&mut alice, TIMEOUT, "her own line", |l| {
        tagged(l).is_some_and(|(_, t)| t == "<alice> two")
    });
    assert!(
        !before.iter().any(|l| l.starts_with("*** error")),
        "{before:?}"
    );
    assert_eq!(
        redis_cmd(port, &[b"FUNCTION", b"FLUSH"]),
        Resp::Simple("OK".into())
    );
    bob.send("three");
    let seen = expect_within(&mut alice, TIMEOUT, "bob's line", |l| {
        tagged(l).is_some_and(|(_, t)| t == "<bob> three")
    });
    assert!(!seen.iter().any(|l| l.starts_with("*** error")), "{seen:?}");
    assert_eq!(
        redis_cmd(port, &[b"FUNCTION", b"FLUSH"]),
        Resp::Simple("OK".into())
    );
    let mut carol = cl.client(0);
    carol.send("/history 5");
    let block = history_block(&mut carol);
    assert!(
        block.iter().any(|l| l.ends_with("<bob> three")),
        "{block:?}"
    );
}

// --- Issue 21: a client's commands in order, one sequence per room ------------

/// Watchers of #lobby and #games: two on each instance per room. Each
/// instance's first watcher of a room says a line that the other three see,
/// so every instance's subscription to both rooms is in place.
struct Watchers {
    lobby: Vec<Client>,
    games: Vec<Client>,
}

fn watchers(cl: &Cluster) -> Watchers {
    let mut rooms = [Vec::new(), Vec::new()];
    for (r, room) in ["lobby", "games"].into_iter().enumerate() {
        for node in 0..2 {
            for k in 0..2 {
                let mut c = cl.named(node, &format!("w{}{node}{k}", &room[..1]));
                if room != "lobby" {
                    c.send(&format!("/join {room}"));
                    c.expect("the join", |l| {
                        l.starts_with(&format!("*** you joined #{room} ("))
                    });
                    // Past its join replay (a read from Redis).
                    c.sync();
                }
                rooms[r].push(c);
            }
        }
        for node in 0..2 {
            let speaker = rooms[r][node * 2].name.clone();
            rooms[r][node * 2].send("here");
            for (i, w) in rooms[r].iter_mut().enumerate() {
                if i != node * 2 {
                    // Live, or in a join replay that was read after it.
                    let want = format!("<{speaker}> here");
                    w.expect(&want, |l| l == want || l.ends_with(&format!("] {want}")));
                }
            }
        }
    }
    let [lobby, games] = rooms;
    Watchers { lobby, games }
}

/// What a single server shows each room when a client named `first`, just
/// arrived in #lobby, sends `script` (`/nick`, `/join`, `/part`, lines):
/// #lobby's and #games' lines about it, in order, and every name it had.
/// Issue 22's model: rooms are a set, `/join` enters and makes current (or
/// only makes current), `/part` leaves, lines go to the current room.
fn one_order(first: &str, script: &[String]) -> [Vec<String>; 3] {
    let mut name = first.to_string();
    let mut lobby = vec![format!("*** {first} joined")];
    let mut games = Vec::new();
    let mut names = vec![first.to_string()];
    // Joined, oldest first; the current room.
    let (mut rooms, mut current) = (vec!["lobby"], Some("lobby"));
    let mut shown = |room: &str, line: String| {
        if room == "lobby" {
            lobby.push(line)
        } else {
            games.push(line)
        }
    };
    let room_of = |r: &str| if r == "lobby" { "lobby" } else { "games" };
    for line in script {
        if let Some(new) = line.strip_prefix("/nick ") {
            for room in &rooms {
                shown(room, format!("*** {name} is now {new}"));
            }
            name = new.to_string();
            names.push(name.clone());
        } else if let Some(to) = line.strip_prefix("/join ") {
            let to = room_of(to);
            if !rooms.contains(&to) {
                shown(to, format!("*** {name} joined #{to}"));
                rooms.push(to);
            }
            current = Some(to);
        } else if let Some(from) = line.strip_prefix("/part ") {
            let from = room_of(from);
            if rooms.contains(&from) {
                shown(from, format!("*** {name} left #{from}"));
                rooms.retain(|r| *r != from);
                if current == Some(from) {
                    current = rooms.last().copied();
                }
            }
        } else if let Some(room) = current {
            shown(room, format!("<{name}> {line}"));
        }
    }
    [lobby, games, names]
}

/// The next `n` lines `w` reads about a user called any of `names`.
fn lines_about(w: &mut Client, names: &[String], n: usize) -> Vec<String> {
    let about = |l: &str| {
        names.iter().any(|name| {
            l.starts_with(&format!("<{name}> ")) || l.starts_with(&format!("*** {name} "))
        })
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < n {
        let Some(line) = read_line_until(w, deadline) else {
            break;
        };
        if about(&line) {
            got.push(line);
        }
    }
    got
}

/// Every watcher of each room sees exactly what a single server would
/// show it for `first`'s `script`.
fn every_watcher_sees_one_order(ws: &mut Watchers, first: &str, script: &[String], what: &str) {
    let [lobby, games, names] = one_order(first, script);
    for (room, want, watchers) in [
        ("#lobby", &lobby, &mut ws.lobby),
        ("#games", &games, &mut ws.games),
    ] {
        for w in watchers.iter_mut() {
            let got = lines_about(w, &names, want.len());
            assert_eq!(&got, want, "{}, in {room} ({what}): {script:?}", w.name);
        }
    }
}

/// A client on `node` sends `script` in one write; every watcher on both
/// instances must see the single server's order.
fn one_write(cl: &Cluster, ws: &mut Watchers, node: usize, script: &[&str]) {
    let script: Vec<String> = script.iter().map(|s| s.to_string()).collect();
    sent_at_once(cl, ws, node, &script, &format!("sent on instance {node}"));
}

/// `one_write` for a script of owned lines; `what` names the case.
fn sent_at_once(cl: &Cluster, ws: &mut Watchers, node: usize, script: &[String], what: &str) {
    let mut mover = cl.client(node);
    let mut bytes = script.join("\r\n");
    bytes.push_str("\r\n");
    mover.send_raw(bytes.as_bytes());
    every_watcher_sees_one_order(ws, &mover.name.clone(), script, what);
}

#[test]
#[ignore = "needs redis-server"]
fn nick_then_a_line_in_one_write_is_shown_in_that_order_everywhere() {
    let cl = Cluster::start(2);
    let mut ws = watchers(&cl);
    for node in 0..2 {
        one_write(
            &cl,
            &mut ws,
            node,
            &[&format!("/nick zed{node}"), "first line"],
        );
        // The rename is not lost in the room left right after it.
        one_write(
            &cl,
            &mut ws,
            node,
            &[&format!("/nick ned{node}"), "/part lobby"],
        );
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_line_then_part_in_one_write_shows_the_line_before_the_leave_everywhere() {
    let cl = Cluster::start(2);
    let mut ws = watchers(&cl);
    for node in 0..2 {
        // (Issue 22: a /join no longer leaves a room; a /part does.)
        one_write(&cl, &mut ws, node, &["a line", "/part lobby"]);
        // A line, a /join, a line: each in its room, after the join.
        one_write(&cl, &mut ws, node, &["in lobby", "/join games", "in games"]);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn join_then_a_line_in_one_write_shows_the_join_before_the_line_everywhere() {
    let cl = Cluster::start(2);
    let mut ws = watchers(&cl);
    for node in 0..2 {
        one_write(&cl, &mut ws, node, &["/join games", "a line in games"]);
        // And straight out again: the line before the leave.
        one_write(
            &cl,
            &mut ws,
            node,
            &["/join games", "in games", "/part games"],
        );
    }
}

#[test]
#[ignore = "needs redis-server"]
fn twenty_random_interleavings_are_one_order_on_every_instance() {
    let cl = Cluster::start(2);
    let mut ws = watchers(&cl);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..20 {
        let mut script = Vec::new();
        for k in 0..rng.usize(3..=8) {
            script.push(match rng.u8(0..6) {
                0 => format!("/nick r{round}n{k}"),
                1 => "/join games".to_string(),
                2 => "/join lobby".to_string(),
                3 => "/part games".to_string(),
                4 => "/part lobby".to_string(),
                _ => format!("line {round}.{k}"),
            });
        }
        let node = round % 2;
        let what = format!("round {round} of seed {seed}, sent on instance {node}");
        sent_at_once(&cl, &mut ws, node, &script, &what);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_web_clients_nick_then_line_keep_their_order_everywhere() {
    let cl = Cluster::start_with(2, &["--http-port", "0"]);
    let mut ws = watchers(&cl);
    let web = cl.nodes[0].http_addr.expect("a web port");
    let mut mover = Ws::connect(web);
    let script = vec!["/nick webzed".to_string(), "first line".to_string()];
    for line in &script {
        mover.send(line);
    }
    let first = mover.name.clone();
    every_watcher_sees_one_order(&mut ws, &first, &script, "from a WebSocket");
}

#[test]
#[ignore = "needs redis-server"]
fn a_replica_is_refused_clearly_and_a_primary_that_turns_replica_drops_the_link() {
    // The numbering fence is the replication id of the Redis the link
    // writes to, read once per connection: so it never writes through a
    // replica, and a primary demoted under it ends the connection.
    let primary = Redis::start();
    let port = primary.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
    let dir = TempDir::new("redis-replica");
    let log = dir.path().join("chatd.log");
    let url = replica.url();
    let mut args = vec!["--redis", &url, "--node-id", "n1"];
    args.extend_from_slice(FAST);
    let node = start_logged(&log, &args);
    let line = wait_log(
        &log,
        &["replica (role:slave)", "--redis at the primary"],
        RELINK,
    );
    assert!(line.contains("cannot take chatd's writes"), "{line}");
    wait_metric(&node, "connect_failures_total", RELINK, |v| v >= 2.0);
    assert_eq!(metric(&node, "link_up"), 0.0);
    // Linked to the primary, which is then made a replica of another
    // Redis: the next line's write is refused READONLY, and the link goes.
    let other = Redis::start();
    let log2 = dir.path().join("chatd2.log");
    let url = primary.url();
    let mut args = vec!["--redis", &url, "--node-id", "n2"];
    args.extend_from_slice(FAST);
    let node2 = start_logged(&log2, &args);
    wait_metric(&node2, "link_up", RELINK, |v| v == 1.0);
    let got = redis_cmd(
        primary.port,
        &[
            b"REPLICAOF",
            b"127.0.0.1",
            other.port.to_string().as_bytes(),
        ],
    );
    assert!(matches!(got, Resp::Simple(_)), "REPLICAOF: {got:?}");
    let mut c = node2.client();
    c.send("a line for a demoted primary");
    wait_log(&log2, &["Redis became a replica", "READONLY"], RELINK);
    drop(replica);
}

// --- topics kept in Redis with the room (issue 22) ---------------------------

/// Waits until Redis holds `key` (a string), and returns its value.
fn wait_key(port: u16, key: &str) -> Vec<u8> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Resp::Bulk(Some(v)) = redis_cmd(port, &[b"GET", key.as_bytes()]) {
            return v;
        }
        assert!(Instant::now() < deadline, "Redis never held {key}");
        std::thread::sleep(POLL);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_topic_outlives_its_rooms_members_through_redis() {
    let cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    alice.send("/join games");
    alice.expect("alice's join", |l| l.starts_with("*** you joined #games"));
    alice.send("/topic dice at nine");
    alice.expect_line("*** alice set the topic of #games: dice at nine");
    let kept = wait_key(cl.redis.port, "chatd:0:t:games");
    assert!(
        String::from_utf8_lossy(&kept).ends_with(" alice dice at nine"),
        "the key holds {kept:?}"
    );
    alice.send("rolled a six");
    alice.send("/history");
    let kept = history_block(&mut alice);
    assert!(
        kept.iter().any(|l| l.ends_with("<alice> rolled a six")),
        "{kept:?}"
    );
    // The room empties everywhere: no instance keeps its topic in memory.
    alice.send("/part games");
    alice.expect("alice's part", |l| l.starts_with("*** you left #games"));
    // Created again on the other instance: Redis tells it the topic.
    let mut bob = cl.named(1, "bob");
    bob.send("/join games");
    bob.expect("bob's join", |l| l.starts_with("*** you joined #games"));
    // As on one server: the topic, then the room's history (Redis answers
    // the topic's read first: it was asked first).
    let line = read_line_until(&mut bob, Instant::now() + TIMEOUT).expect("a line");
    assert!(
        line.starts_with("*** topic of #games: dice at nine (set by alice, "),
        "{line}"
    );
    let history = history_block(&mut bob);
    assert!(
        history.iter().any(|l| l.ends_with("<alice> rolled a six")),
        "{history:?}"
    );
    // And on the instance where it was set, once its room was gone.
    alice.send("/join games");
    let line = alice.expect("the kept topic", |l| l.starts_with("*** topic of #games"));
    assert!(line.contains("dice at nine (set by alice"), "{line}");
    // It lives as long as the room's history: with its TTL.
    let ttl = redis_cmd(cl.redis.port, &[b"PTTL", b"chatd:0:t:games"]);
    assert!(matches!(ttl, Resp::Int(ms) if ms > 0), "PTTL {ttl:?}");
}

#[test]
#[ignore = "needs redis-server"]
fn a_forged_topic_in_redis_is_refused_or_cleaned() {
    let cl = Cluster::start(1);
    let port = cl.redis.port;
    let long = format!("T n9~1 big 0 1 mallory {}", "x".repeat(64 * 1024));
    let forged: [(&str, &[u8]); 4] = [
        ("badname", b"T n9~1 badname 0 1 mal\x1bory hi"),
        ("big", long.as_bytes()),
        (
            "lines",
            b"T n9~1 lines 0 1 mallory hi\r\n*** you are now an operator",
        ),
        ("other", b"T n9~1 lobby 0 1 mallory not this room's"),
    ];
    for (room, value) in forged {
        let key = format!("chatd:0:t:{room}");
        redis_cmd(port, &[b"SET", key.as_bytes(), value]);
    }
    let mut c = cl.named(0, "carol");
    for (n, (room, _)) in forged.iter().enumerate() {
        c.send(&format!("/join {room}"));
        c.expect("the join", |l| {
            l.starts_with(&format!("*** you joined #{room}"))
        });
        wait_metric(&cl.nodes[0], "malformed_total", TIMEOUT, |v| {
            v >= n as f64 + 1.0
        });
        c.send("/topic");
        c.expect_line(&format!("*** #{room} has no topic (/topic TEXT sets one)"));
    }
    // Escapes in a topic's text are removed, as from any presence.
    redis_cmd(
        port,
        &[
            b"SET",
            b"chatd:0:t:esc",
            b"T n9~1 esc 0 1 mallory hi\x1b[2J there",
        ],
    );
    c.send("/join esc");
    let line = c.expect("the cleaned topic", |l| l.starts_with("*** topic of #esc"));
    assert!(
        line.starts_with("*** topic of #esc: hi[2J there (set by mallory, "),
        "{line:?}"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn a_topic_outlives_a_restart_of_every_instance() {
    let mut cl = Cluster::start(2);
    let mut alice = cl.named(0, "alice");
    alice.send("/join games");
    alice.expect("alice's join", |l| l.starts_with("*** you joined #games"));
    alice.send("/topic dice at nine");
    alice.expect_line("*** alice set the topic of #games: dice at nine");
    wait_key(cl.redis.port, "chatd:0:t:games");
    drop(alice);
    // Every instance stops (killed), and others start on the same Redis.
    let url = cl.redis.url();
    cl.nodes.clear();
    cl.nodes = (1..=2)
        .map(|i| Server::start(&["--redis", &url, "--node-id", &format!("n{i}")]))
        .collect();
    wait_linked(&cl.nodes);
    let mut bob = cl.named(1, "bob");
    bob.send("/join games");
    let line = bob.expect("the kept topic", |l| l.starts_with("*** topic of #games"));
    assert!(
        line.starts_with("*** topic of #games: dice at nine (set by alice, "),
        "{line}"
    );
}
