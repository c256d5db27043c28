//! The link's unit tests: decoding, delivery once, the queues' bounds,
//! and the state machine driven against stand-ins for Redis on loopback.

use super::*;

#[test]
fn urls() {
    let u = RedisUrl::parse("redis://127.0.0.1:6390/2", None).unwrap();
    assert_eq!(u.addr, "127.0.0.1:6390".parse().unwrap());
    assert_eq!((u.db, u.password), (2, None));
    let u = RedisUrl::parse("redis://:s3cret@127.0.0.1", None).unwrap();
    assert_eq!(u.addr.port(), 6379);
    assert_eq!(u.password.as_deref(), Some("s3cret"));
    let u = RedisUrl::parse("redis://user:pw@127.0.0.1:1/", Some("env".into())).unwrap();
    assert_eq!(u.password.as_deref(), Some("pw"));
    let u = RedisUrl::parse("redis://127.0.0.1:1", Some("env".into())).unwrap();
    assert_eq!(u.password.as_deref(), Some("env"));
    assert!(RedisUrl::parse("http://x", None).is_err());
    assert!(RedisUrl::parse("redis://127.0.0.1:1/x", None).is_err());
}

#[test]
fn the_publish_queue_counts_what_waits_for_a_reply() {
    // A Redis that never reads nor answers: its backlog completes the
    // connect, nothing else happens.
    let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = RedisUrl::parse(&format!("redis://{}", redis.local_addr().unwrap()), None);
    let poll = mio::Poll::new().unwrap();
    let max = 64 * 1024;
    let mut link = Link::new(url.unwrap(), "n1", max, Timing::default(), 100);
    let conn = Redis::connect(link.url.addr, CMD, poll.registry()).unwrap();
    link.cmd = Some(conn);
    link.state = State::UP;
    while link.stats.dropped == 0 {
        link.publish_room("lobby", "x");
        assert!(link.stats.published < max as u64, "never full");
    }
    let wbuf = link.cmd.as_ref().unwrap().wbuf.len();
    let pending = link.pending.len() * size_of::<(Instant, Expect)>();
    // At most one command past the bound, whose own bytes are counted.
    assert!(wbuf + pending <= max + 64, "{wbuf} + {pending} > {max}");
}

fn link() -> Link {
    let url = RedisUrl::parse("redis://127.0.0.1:1/3", None).unwrap();
    Link::new(url, "me~1", 1 << 20, Timing::default(), 100)
}

#[test]
fn own_room_lines_are_skipped_and_others_decoded() {
    let link = link();
    let dm = |c: &str, p: &str| link.decode_message(c.as_bytes(), p.as_bytes());
    assert_eq!(dm("chatd:3:r:lobby", "me~1 <a> hi"), Ok(None));
    assert_eq!(
        dm("chatd:3:r:lobby", "n2~5 <b> hi there"),
        Ok(Some(Inbound::Room("lobby".into(), "<b> hi there".into())))
    );
    assert_eq!(
        dm("chatd:3:n:me~1", "4 bob *alice* psst"),
        Ok(Some(Inbound::Private(
            ClientId(4),
            "bob".into(),
            "*alice* psst".into()
        )))
    );
    assert_eq!(dm("chatd:0:r:lobby", "n2 x"), Ok(None), "other database");
    assert_eq!(dm("chatd:3:n:other", "4 bob x"), Ok(None), "not ours");
}

#[test]
fn numbered_lines_are_decoded_ours_too_cleaned_and_delivered_once() {
    let mut link = link();
    let dm = |link: &Link, p: &[u8]| link.decode_message(b"chatd:3:r:lobby", p);
    let first = Id { epoch: 17, n: 4 };
    assert_eq!(
        dm(&link, b"me~1 =17-4:9\n<a> hi\n<a> \x1b[2Jthere"),
        Ok(Some(Inbound::Said {
            room: "lobby".into(),
            first,
            from: Some(ClientId(9)),
            text: "<a> hi\r\n<a> [2Jthere".into(),
        })),
        "our own, with our sender"
    );
    let Ok(Some(Inbound::Said { from, .. })) = dm(&link, b"n2~5 =17-6:3\n<b> yo") else {
        panic!("another instance's numbered line");
    };
    assert_eq!(from, None);
    for bad in [&b"n2 =17-6\n<b> x"[..], b"n2 =x-1:3\n<b> x", b"n2 =17-6:3"] {
        assert!(
            dm(&link, bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // From our SAY's reply and again from the subscription: once.
    let mut inbound = Vec::new();
    for _ in 0..2 {
        link.deliver(
            "lobby".into(),
            first,
            Some(ClientId(9)),
            "<a> hi\r\n<a> yo".into(),
            &mut inbound,
        );
    }
    link.deliver(
        "lobby".into(),
        Id { epoch: 17, n: 5 },
        None,
        "<b> old".into(),
        &mut inbound,
    );
    link.deliver(
        "lobby".into(),
        Id { epoch: 17, n: 6 },
        None,
        "<b> new".into(),
        &mut inbound,
    );
    assert_eq!(inbound.len(), 2, "{inbound:?}");
}

#[test]
fn what_arrives_is_cleaned_as_a_clients_line_is() {
    let link = link();
    let dm = |c: &[u8], p: &[u8]| link.decode_message(c, p);
    // One publication is one line: CR and LF go, like every control
    // character (ESC sequences lose their ESC, so they cannot drive a
    // terminal); invalid UTF-8 becomes U+FFFD.
    assert_eq!(
        dm(b"chatd:3:r:lobby", b"n2 <m> hi\r\n*** bobby is now admin"),
        Ok(Some(Inbound::Room(
            "lobby".into(),
            "<m> hi*** bobby is now admin".into()
        )))
    );
    assert_eq!(
        dm(
            b"chatd:3:r:lobby",
            b"n2 <m> \x1b]0;x\x07\x1b[2Jred\x7f \xff"
        ),
        Ok(Some(Inbound::Room(
            "lobby".into(),
            "<m> ]0;x[2Jred \u{fffd}".into()
        )))
    );
    assert_eq!(
        dm(b"chatd:3:n:me~1", b"4 bob *m* a\r\n*** bob is now banned"),
        Ok(Some(Inbound::Private(
            ClientId(4),
            "bob".into(),
            "*m* a*** bob is now banned".into()
        )))
    );
    // Malformed: dropped (and logged by the caller).
    for (c, p) in [
        (&b"chatd:3:r:lobby"[..], &b"n2 \r\n\x1b"[..]),
        (b"chatd:3:r:lobby", b"n2"),
        (b"chatd:3:r:lobby", b"n\x1b2 <m> hi"),
        (b"chatd:3:r:Lobby", b"n2 <m> hi"),
        (b"chatd:3:r:lob\x1bby", b"n2 <m> hi"),
        (b"chatd:3:r:\xff", b"n2 <m> hi"),
        (b"chatd:3:n:me~1", b"x bob hi"),
        (b"chatd:3:n:me~1", b"4 b\x1bb hi"),
        (b"chatd:3:n:me~1", b"4 bob"),
        (b"chatd:3:p", b"J n2 1 bad\x1b lobby lobby 1"),
        (b"chatd:3:p", b"\xff"),
    ] {
        assert!(dm(c, p).is_err(), "{c:?} {p:?}");
    }
    // A batch from an instance: one publication, each line cleaned on
    // its own (a CR in one is removed, blank ones skipped).
    assert_eq!(
        dm(b"chatd:3:r:lobby", b"n2\n<a> one\n<a> t\x1bwo\r\n\n"),
        Ok(Some(Inbound::Room(
            "lobby".into(),
            "<a> one\r\n<a> two".into()
        )))
    );
    assert_eq!(dm(b"chatd:3:r:lobby", b"n2\n\r\n \n"), Err("blank batch"));
    let long = format!("n2\n<m> a\n<m> {}", "b".repeat(100));
    assert_eq!(dm(b"chatd:3:r:lobby", long.as_bytes()), Err("too long"));
    let many = format!("n2\n{}", "<m> ok\n".repeat(20));
    assert!(
        dm(b"chatd:3:r:lobby", many.as_bytes()).is_ok(),
        "a batch may pass one line's bound"
    );
    // Longer than any instance sends (max_text 100 here): dropped whole.
    let long = format!("n2 <m> {}", "a".repeat(100));
    assert_eq!(dm(b"chatd:3:r:lobby", long.as_bytes()), Err("too long"));
}

/// A "Redis" that accepts connections and never answers or reads.
fn mute_redis(queue: usize, reply: Duration) -> (std::net::TcpListener, Link) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = RedisUrl::parse(&format!("redis://{}", l.local_addr().unwrap()), None).unwrap();
    let timing = Timing::new(Duration::from_secs(3), reply);
    (l, Link::new(url, "me~1", queue, timing, 100))
}

#[test]
fn a_redis_that_does_not_answer_in_time_is_a_lost_link() {
    let (_redis, mut link) = mute_redis(1 << 20, Duration::from_millis(500));
    let poll = mio::Poll::new().unwrap();
    let hub = Hub::new(200).with_cluster("me~1");
    let mut inbound = Vec::new();
    let t0 = Instant::now();
    link.tick(t0, &hub, poll.registry(), &mut inbound);
    assert!(matches!(link.state, State::Connecting { .. }));
    assert!(
        link.deadline()
            .is_some_and(|d| d <= t0 + Duration::from_millis(600))
    );
    link.tick(
        t0 + Duration::from_millis(100),
        &hub,
        poll.registry(),
        &mut inbound,
    );
    assert!(inbound.is_empty(), "not yet");
    link.tick(
        t0 + Duration::from_secs(1),
        &hub,
        poll.registry(),
        &mut inbound,
    );
    assert!(link.state.is_down());
    assert!(matches!(&inbound[..], [Inbound::Down(why)] if why.contains("Redis did not answer")));
    assert_eq!((link.stats.timeouts, link.stats.connect_failures), (1, 1));
    assert_eq!(link.stats.reconnects, 0);
}

#[test]
fn the_queues_toward_redis_are_bounded_by_kind() {
    let (_redis, mut link) = mute_redis(4096, Duration::from_secs(60));
    let poll = mio::Poll::new().unwrap();
    let hub = Hub::new(200).with_cluster("me~1");
    let mut inbound = Vec::new();
    link.tick(Instant::now(), &hub, poll.registry(), &mut inbound);
    // Pretend the handshake is done (nothing answers here), and sent.
    link.state = State::UP;
    link.pending.clear();
    if let Some(cmd) = link.cmd.as_mut() {
        cmd.wbuf.clear();
    }
    // Replies awaited: at most 4096 / 64 = 64, and the bytes queued
    // plus each awaited reply's bookkeeping at most 4096 (which bites
    // first here); past either, lines are dropped and counted, and
    // claims refused.
    for _ in 0..100 {
        link.publish_room("lobby", "<a> hi");
    }
    let (published, dropped) = (link.stats.published, link.stats.dropped);
    assert_eq!(published + dropped, 100);
    assert!(dropped > 0 && published <= 64, "{published} {dropped}");
    let queued =
        link.cmd.as_ref().map_or(0, |c| c.wbuf.len()) + link.pending.len() * PENDING_OVERHEAD;
    assert!(queued <= 4096 + 64, "{queued}");
    assert!(
        !link.claim(ClientId(1), "alice"),
        "a claim past the bound is refused"
    );
    // Bookkeeping is not dropped: a release still goes out.
    link.release("alice", ClientId(1), 5);
    assert_eq!(link.pending.len() as u64, published + 1);
    // The subscriber's queue: past 4096 bytes the link is dropped and
    // re-established, keeping every room for the new subscription.
    for i in 0..200 {
        link.subscribe(&format!("room{i}"), true);
    }
    link.tick(Instant::now(), &hub, poll.registry(), &mut inbound);
    assert!(link.state.is_down());
    assert!(
        matches!(&inbound[..], [Inbound::Down(why)] if why.contains("subscriber queue")),
        "{inbound:?}"
    );
    assert_eq!(link.rooms.len(), 200);
}
