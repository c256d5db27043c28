//! The link's unit tests: decoding, delivery once, the queues' bounds,
//! and the state machine driven against stand-ins for Redis on loopback.

use super::*;
use crate::hub::{Hub, Outbox};
use crate::msg::Msg;

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
        Id { epoch: 17, n: 6 },
        None,
        "<b> new".into(),
        &mut inbound,
    );
    assert_eq!(inbound.len(), 2, "{inbound:?}");
}

/// Issue 21: an id is never a reason to drop a line but a true duplicate
/// of our own (the SAY's reply and the subscription both carry it). Once,
/// one forged line 1000 ids ahead made every real line after it "old".
#[test]
fn only_true_duplicates_of_our_own_lines_are_dropped() {
    let mut link = link();
    let mut inbound = Vec::new();
    let id = |epoch, n| Id { epoch, n };
    let mut deliver = |link: &mut Link, first, from: Option<usize>, text: &str| {
        let before = inbound.len();
        link.deliver(
            "lobby".into(),
            first,
            from.map(ClientId),
            text.into(),
            &mut inbound,
        );
        inbound.len() > before
    };
    assert!(deliver(&mut link, id(17, 4), None, "<b> real"));
    // A forgery far ahead, with the live epoch: delivered (cleaned, as
    // any publication), and the room goes on.
    assert!(deliver(&mut link, id(17, 1004), None, "<m> forged"));
    assert!(deliver(&mut link, id(17, 5), None, "<b> next"));
    assert!(deliver(&mut link, id(17, 6), Some(9), "<a> mine"));
    // Backwards: a new record (a failover, a flush), or an older epoch.
    assert!(deliver(&mut link, id(17, 1), None, "<b> after a reset"));
    assert!(deliver(&mut link, id(16, 90), None, "<b> older epoch"));
    // Another instance's line with an id seen before is not ours: kept.
    assert!(deliver(&mut link, id(17, 5), None, "<c> same id"));
    // Ours, a second time (reply then subscription): dropped, once.
    assert!(!deliver(&mut link, id(17, 6), Some(9), "<a> mine"));
    // Ours with the same first id but another length is another batch.
    assert!(deliver(&mut link, id(17, 6), Some(9), "<a> x\r\n<a> y"));
    // The window is bounded: past OWN_WINDOW batches the oldest is
    // forgotten (its copy came long before).
    for n in 0..events::OWN_WINDOW as u64 {
        assert!(deliver(&mut link, id(18, 100 + n), Some(1), "<a> w"));
    }
    assert!(!deliver(&mut link, id(18, 100), Some(1), "<a> w"));
    assert!(!deliver(&mut link, id(18, 101), Some(1), "<a> w"));
    assert!(
        deliver(&mut link, id(17, 6), Some(9), "<a> mine"),
        "forgotten"
    );
    // A room left and joined again starts afresh.
    link.subscribe("lobby", true);
    link.subscribe("lobby", false);
    assert!(deliver(&mut link, id(18, 100), Some(1), "<a> w"));
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
    let mut inbound = Vec::new();
    let t0 = Instant::now();
    link.tick(t0, poll.registry(), &mut inbound);
    assert!(matches!(link.state, State::Connecting { .. }));
    assert!(
        link.deadline()
            .is_some_and(|d| d <= t0 + Duration::from_millis(600))
    );
    link.tick(
        t0 + Duration::from_millis(100),
        poll.registry(),
        &mut inbound,
    );
    assert!(inbound.is_empty(), "not yet");
    link.tick(t0 + Duration::from_secs(1), poll.registry(), &mut inbound);
    assert!(link.state.is_down());
    assert!(matches!(&inbound[..], [Inbound::Down(why)] if why.contains("Redis did not answer")));
    assert_eq!((link.stats.timeouts, link.stats.connect_failures), (1, 1));
    assert_eq!(link.stats.reconnects, 0);
}

#[test]
fn the_queues_toward_redis_are_bounded_by_kind() {
    let (_redis, mut link) = mute_redis(4096, Duration::from_secs(60));
    let poll = mio::Poll::new().unwrap();
    let mut inbound = Vec::new();
    link.tick(Instant::now(), poll.registry(), &mut inbound);
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
    link.tick(Instant::now(), poll.registry(), &mut inbound);
    assert!(link.state.is_down());
    assert!(
        matches!(&inbound[..], [Inbound::Down(why)] if why.contains("subscriber queue")),
        "{inbound:?}"
    );
    assert_eq!(link.rooms.len(), 200);
}

// ---- The link against a scripted Redis on loopback ----

/// A reply of a test's own for a command on `cmd` (RESP), or None.
type Answer = Box<dyn FnMut(&[String]) -> Option<String>>;

/// A scripted Redis: accepts the link's two connections, tells them apart
/// by their first command (SUBSCRIBE on `sub`, anything else on `cmd`),
/// records every command and answers it the way Redis would, unless
/// `answer` says otherwise (or `mute`). Single-threaded: served from the
/// same loop that drives the link.
struct FakeRedis {
    listener: std::net::TcpListener,
    conns: Vec<(std::net::TcpStream, Vec<u8>, Option<bool>)>,
    /// Commands received on `cmd` and on `sub`, in order.
    cmds: Vec<Vec<String>>,
    subs: Vec<Vec<String>>,
    /// A reply of its own for a command on `cmd` (RESP), or None: the usual.
    answer: Answer,
    /// Reads and records, answers nothing.
    mute: bool,
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

impl FakeRedis {
    fn new() -> FakeRedis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        FakeRedis {
            listener,
            conns: Vec::new(),
            cmds: Vec::new(),
            subs: Vec::new(),
            answer: Box::new(|_| None),
            mute: false,
        }
    }

    fn url(&self) -> RedisUrl {
        let addr = self.listener.local_addr().unwrap();
        RedisUrl::parse(&format!("redis://{addr}/3"), None).unwrap()
    }

    fn usual(args: &[String]) -> String {
        let verb = args[0].to_ascii_uppercase();
        match verb.as_str() {
            "SELECT" | "AUTH" | "SET" => "+OK\r\n".into(),
            "PING" => "+PONG\r\n".into(),
            "INFO" => bulk(
                "# Cluster\r\ncluster_enabled:0\r\n# Replication\r\nrole:master\r\nmaster_replid:f00d\r\n",
            ),
            "FUNCTION" => bulk("chatd"),
            "EXISTS" | "HSET" | "HDEL" | "PUBLISH" => ":1\r\n".into(),
            "HGETALL" => "*0\r\n".into(),
            // No topic kept for the room.
            "GETRANGE" => bulk(""),
            "FCALL" if args[1] == Func::Guests.name() => ":100\r\n".into(),
            "FCALL" if args[1] == Func::Bans.name() => format!("*2\r\n{}{}", bulk("0"), bulk("0")),
            "FCALL" => ":0\r\n".into(),
            _ => "-ERR unknown command\r\n".into(),
        }
    }

    /// Pushes a publication to the subscriber, as Redis would.
    fn publish(&mut self, channel: &str, payload: &str) {
        let msg = format!(
            "*3\r\n{}{}{}",
            bulk("message"),
            bulk(channel),
            bulk(payload)
        );
        self.push_sub(msg.as_bytes());
    }

    fn push_sub(&mut self, bytes: &[u8]) {
        use std::io::Write;
        for (s, _, sub) in &mut self.conns {
            if *sub == Some(true) {
                s.write_all(bytes).unwrap();
            }
        }
    }

    /// Drops both connections, as a Redis restart would.
    fn close(&mut self) {
        self.conns.clear();
    }

    fn serve(&mut self) {
        use std::io::{Read, Write};
        while let Ok((s, _)) = self.listener.accept() {
            s.set_nonblocking(true).unwrap();
            self.conns.push((s, Vec::new(), None));
        }
        let mut chunk = [0u8; 4096];
        for (s, buf, sub) in &mut self.conns {
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
            }
            while let Ok(Some((frame, n))) = redis_protocol::resp2::decode::decode(buf) {
                buf.drain(..n);
                let OwnedFrame::Array(parts) = frame else {
                    panic!("not a command: {frame:?}");
                };
                let args: Vec<String> = parts
                    .iter()
                    .map(|p| String::from_utf8_lossy(frame_bytes(p).unwrap_or(b"")).into_owned())
                    .collect();
                let is_sub = *sub.get_or_insert(args[0] == "SUBSCRIBE");
                let reply = if is_sub {
                    let kind = args[0].to_ascii_lowercase();
                    let acks = args[1..]
                        .iter()
                        .enumerate()
                        .map(|(i, ch)| format!("*3\r\n{}{}:{}\r\n", bulk(&kind), bulk(ch), i + 1));
                    self.subs.push(args.clone());
                    acks.collect()
                } else {
                    self.cmds.push(args.clone());
                    (self.answer)(&args).unwrap_or_else(|| FakeRedis::usual(&args))
                };
                if !self.mute {
                    s.write_all(reply.as_bytes()).unwrap();
                }
            }
        }
    }
}

/// The link, its Poll and a hub to talk to, driven against a FakeRedis.
struct Stand {
    redis: FakeRedis,
    link: Link,
    poll: mio::Poll,
    hub: Hub,
    inbound: Vec<Inbound>,
    /// How many of `inbound` the hub has been told.
    told: usize,
}

/// What the hub asks of the link, and nothing else (a stand-in for the
/// reactor's Out).
#[derive(Default)]
struct Ops(Vec<ClusterOp>);

impl Outbox for Ops {
    fn send(&mut self, _: ClientId, _: &Rc<Msg>) {}
    fn close(&mut self, _: ClientId, _: String) {}
    fn cluster(&mut self, op: ClusterOp) {
        self.0.push(op);
    }
}

impl Stand {
    fn new(reply: Duration) -> Stand {
        let redis = FakeRedis::new();
        let timing = Timing::new(Duration::from_secs(3), reply);
        Stand {
            link: Link::new(redis.url(), "me~1", 1 << 20, timing, 100),
            redis,
            poll: mio::Poll::new().unwrap(),
            hub: Hub::new(200).with_cluster("me~1"),
            inbound: Vec::new(),
            told: 0,
        }
    }

    /// One turn of a reactor's loop, and of the fake Redis.
    fn step(&mut self) {
        self.redis.serve();
        let mut events = mio::Events::with_capacity(16);
        self.poll
            .poll(&mut events, Some(Duration::from_millis(5)))
            .unwrap();
        for e in events.iter() {
            self.link
                .ready(e.token(), self.poll.registry(), &mut self.inbound);
        }
        self.exchange();
        self.link
            .tick(Instant::now(), self.poll.registry(), &mut self.inbound);
        self.exchange();
        self.link.flush(self.poll.registry(), &mut self.inbound);
    }

    /// What the reactor's exchange does, for the events the link's own
    /// bookkeeping needs answered (link up, guest numbers, a roster due):
    /// those to the hub, the hub's operations to the link, until quiet.
    /// Every event stays in `inbound` for the tests to read.
    fn exchange(&mut self) {
        for _ in 0..8 {
            let mut ops = Ops::default();
            for e in &self.inbound[self.told..] {
                match e {
                    Inbound::Up => self.hub.link_up(&mut ops),
                    Inbound::Guests(start) => self.hub.add_guests(*start, GUEST_BLOCK),
                    Inbound::Due(due) => self.hub.give_roster(*due, &mut ops),
                    _ => {}
                }
            }
            self.told = self.inbound.len();
            if ops.0.is_empty() {
                return;
            }
            for op in ops.0 {
                self.link.apply(op, &mut self.inbound);
            }
        }
    }

    /// Turns until `done`, at most 2000 of them (about 10 s).
    fn until(&mut self, what: &str, done: impl Fn(&Stand) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("never {what}: {:?}", self.inbound);
    }

    fn up(reply: Duration) -> Stand {
        let mut s = Stand::new(reply);
        s.until("up", |s| s.inbound.contains(&Inbound::Up));
        s.until("guest numbers", |s| s.inbound.contains(&Inbound::Guests(1)));
        s.inbound.clear();
        s.told = 0;
        s
    }
}

/// Whether a command the fake Redis got is a SAY call.
fn is_say(c: &[String]) -> bool {
    c[0] == "FCALL" && c[1] == Func::Say.name()
}

/// A link up and subscribed to #lobby, confirmed.
fn up_in_lobby() -> Stand {
    let mut s = Stand::up(Duration::from_secs(5));
    s.link.subscribe("lobby", true);
    s.until("subscribed", |s| s.link.confirmed.contains("lobby"));
    s
}

#[test]
fn the_link_is_up_after_its_handshake_and_not_before() {
    let mut s = Stand::new(Duration::from_secs(5));
    s.until("up", |s| s.inbound.contains(&Inbound::Up));
    assert!(s.link.is_up() && s.link.stats().link_up);
    let verbs: Vec<&str> = s.redis.cmds.iter().map(|c| c[0].as_str()).collect();
    // Issue 21: INFO first, to refuse a Redis Cluster node.
    assert_eq!(
        verbs[..4],
        ["INFO", "SELECT", "FUNCTION", "PING"],
        "{verbs:?}"
    );
    assert_eq!(s.redis.cmds[1][1], "3", "the URL's database");
    assert_eq!(
        s.redis.subs[0],
        // Issue 21: rosters meant for us alone come on chatd:3:p:NODE.
        [
            "SUBSCRIBE",
            "chatd:3:p",
            "chatd:3:p:me~1",
            "chatd:3:b",
            "chatd:3:n:me~1"
        ]
    );
    // Once up: the bans are read, then heartbeat and guest numbers.
    s.until("a heartbeat", |s| {
        s.redis.cmds.iter().any(|c| c[0] == "SET")
    });
    assert!(
        s.redis
            .cmds
            .iter()
            .any(|c| c[0] == "FCALL" && c[1] == Func::Bans.name() && c[3] == "chatd:3:bans")
    );
    s.until("guest numbers", |s| s.inbound.contains(&Inbound::Guests(1)));
    assert_eq!(s.link.stats().connect_failures, 0);
}

#[test]
fn a_room_line_goes_through_redis_and_is_delivered_once() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.link.subscribe("lobby", true);
    s.until("subscribed", |s| s.link.confirmed.contains("lobby"));
    let say = |c: &[String]| c[0] == "FCALL" && c[1] == Func::Say.name();
    s.redis.answer = Box::new(move |args| say(args).then(|| bulk("17-4")));
    assert!(s.link.say(
        "lobby",
        ClientId(9),
        "<a> hi\r\n<a> yo",
        50,
        60_000,
        &mut s.inbound
    ));
    s.until("the SAY", |s| s.redis.cmds.iter().any(|c| say(c)));
    let say = s.redis.cmds.iter().find(|c| say(c)).unwrap().clone();
    assert_eq!(
        say[2..],
        [
            "4",
            "chatd:3:h:lobby",
            "chatd:3:s:lobby",
            "chatd:3:r:lobby",
            "chatd:3:t:lobby",
            "50",
            "60000",
            "me~1",
            "9",
            // The fence: the replication id INFO gave at connect.
            "f00d",
            "<a> hi",
            "<a> yo"
        ]
    );
    // What the script publishes comes back on the subscription (twice:
    // nothing is delivered twice).
    let first = Id { epoch: 17, n: 4 };
    let payload = wire::said_payload("me~1", first, ClientId(9), "<a> hi\r\n<a> yo");
    s.redis.publish("chatd:3:r:lobby", &payload);
    s.redis.publish("chatd:3:r:lobby", &payload);
    s.until("delivered", |s| !s.inbound.is_empty());
    for _ in 0..20 {
        s.step();
    }
    let said: Vec<_> = s
        .inbound
        .iter()
        .filter(|e| matches!(e, Inbound::Said { .. }))
        .collect();
    assert_eq!(
        said,
        [&Inbound::Said {
            room: "lobby".into(),
            first,
            from: Some(ClientId(9)),
            text: "<a> hi\r\n<a> yo".into(),
        }]
    );
    assert_eq!(s.link.stats().received, 2);
}

#[test]
fn a_redis_cluster_node_is_a_failed_connect_with_the_reason_not_a_link() {
    let mut s = Stand::new(Duration::from_secs(5));
    s.redis.answer =
        Box::new(|args| (args[0] == "INFO").then(|| bulk("# Cluster\r\ncluster_enabled:1\r\n")));
    s.until("down", |s| !s.inbound.is_empty());
    assert!(
        matches!(&s.inbound[..], [Inbound::Down(why)] if why.contains("Redis Cluster") && why.contains("issue 24")),
        "{:?}",
        s.inbound
    );
    assert!(!s.link.stats().link_up);
    assert_eq!(s.link.stats().connect_failures, 1);
}

#[test]
fn the_bans_are_read_a_page_at_a_time_until_the_last() {
    let mut s = Stand::new(Duration::from_secs(5));
    s.redis.answer = Box::new(|args| {
        if !(args[0] == "FCALL" && args[1] == Func::Bans.name()) {
            return None;
        }
        // Page "0" leads to page "7", the last; one ban on each, and Redis
        // says it left one out of the second.
        let (next, out, net) = if args[4] == "0" {
            ("7", "0", "10.0.0.1/32")
        } else {
            ("0", "1", "10.0.0.2/32")
        };
        let line = format!("{net}\tpermanent\top\tspam");
        Some(format!(
            "*4\r\n{}{}{}{}",
            bulk(next),
            bulk(out),
            bulk(net),
            bulk(&line)
        ))
    });
    s.until("both pages", |s| {
        s.inbound
            .iter()
            .filter(|e| matches!(e, Inbound::Ban(_)))
            .count()
            == 2
    });
    let cursors: Vec<&str> = s
        .redis
        .cmds
        .iter()
        .filter(|c| c[0] == "FCALL" && c[1] == Func::Bans.name())
        .map(|c| c[4].as_str())
        .collect();
    assert_eq!(cursors, ["0", "7"]);
    assert_eq!(s.link.stats().malformed, 1, "the one left out");
}

#[test]
fn the_bans_held_are_reasserted_at_link_up_and_one_lifted_meanwhile_is_lifted() {
    struct Nobody;
    impl crate::hub::Outbox for Nobody {
        fn send(&mut self, _: ClientId, _: &Rc<crate::msg::Msg>) {}
        fn close(&mut self, _: ClientId, _: String) {}
    }
    let mut s = Stand::new(Duration::from_secs(5));
    for line in [
        "10.0.0.1/32\tpermanent\top\tx",
        "10.0.0.2/32\tpermanent\top\ty",
    ] {
        let ban = Ban::from_line(line).unwrap();
        s.hub.ban_from_cluster(ban, &mut Nobody);
    }
    // Redis has a tombstone for the first.
    fn reassert(c: &[String]) -> bool {
        c[0] == "FCALL" && c[1] == Func::Reassert.name()
    }
    s.redis.answer = Box::new(|args| {
        reassert(args).then(|| {
            let lifted = args[5] == "10.0.0.1/32";
            bulk(if lifted { "lifted" } else { "kept" })
        })
    });
    let (one, two) = (
        "10.0.0.1/32".parse().unwrap(),
        "10.0.0.2/32".parse().unwrap(),
    );
    s.until("the unban", |s| s.inbound.contains(&Inbound::Unban(one)));
    assert!(!s.inbound.contains(&Inbound::Unban(two)));
    // Both went to Redis, with their line and end, before the bans were
    // read back (which comes at link-up).
    let reasserted: Vec<(&str, &str)> = s
        .redis
        .cmds
        .iter()
        .filter(|c| reassert(c))
        .map(|c| (c[5].as_str(), c[7].as_str()))
        .collect();
    assert_eq!(
        reasserted,
        [("10.0.0.1/32", "permanent"), ("10.0.0.2/32", "permanent")]
    );
    s.until("up", |s| s.inbound.contains(&Inbound::Up));
    let at = |pred: &dyn Fn(&Vec<String>) -> bool| s.redis.cmds.iter().position(pred).unwrap();
    assert!(at(&|c| reassert(c)) < at(&|c| c[0] == "FCALL" && c[1] == Func::Bans.name()));
}

#[test]
fn a_refused_select_is_a_failed_connect_not_a_link() {
    let mut s = Stand::new(Duration::from_secs(5));
    s.redis.answer =
        Box::new(|args| (args[0] == "SELECT").then(|| "-ERR DB index is out of range\r\n".into()));
    s.until("down", |s| !s.inbound.is_empty());
    assert!(
        matches!(&s.inbound[..], [Inbound::Down(why)] if why.contains("Redis refused SELECT: ERR DB index")),
        "{:?}",
        s.inbound
    );
    let stats = s.link.stats();
    assert!(!stats.link_up);
    assert_eq!((stats.connect_failures, stats.refused), (1, 1));
}

#[test]
fn a_redis_that_stops_answering_once_up_is_a_lost_link() {
    let mut s = Stand::up(Duration::from_millis(300));
    s.link.subscribe("lobby", true);
    s.redis.mute = true;
    assert!(
        s.link
            .say("lobby", ClientId(5), "<e> hi", 0, 1000, &mut s.inbound)
    );
    s.until("down", |s| {
        s.inbound.iter().any(|e| matches!(e, Inbound::Down(_)))
    });
    // The line may or may not have been numbered: its sender is told so.
    assert!(s.inbound.contains(&Inbound::NotSaid(ClientId(5), false)));
    assert!(!s.link.is_up());
    let stats = s.link.stats();
    assert_eq!((stats.timeouts, stats.reconnects), (1, 0));
    // And when Redis answers again, the link comes back: a reconnect.
    s.redis.mute = false;
    s.redis.close();
    s.inbound.clear();
    s.told = 0;
    s.until("up again", |s| s.inbound.contains(&Inbound::Up));
    assert_eq!(s.link.stats().reconnects, 1);
    assert!(
        s.redis
            .subs
            .last()
            .unwrap()
            .contains(&"chatd:3:r:lobby".to_string())
    );
}

#[test]
fn claims_are_answered_as_redis_answers_them() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.redis.answer = Box::new(|args| match (args[0].as_str(), args.get(1)?.as_str()) {
        ("SET", "chatd:name:alice") => Some("$-1\r\n".into()),
        ("SET", "chatd:name:bob") => Some("-NOPERM no\r\n".into()),
        _ => None,
    });
    for (id, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        assert!(s.link.claim(ClientId(id), name));
    }
    s.until("three answers", |s| {
        s.inbound
            .iter()
            .filter(|e| matches!(e, Inbound::Claimed(..)))
            .count()
            == 3
    });
    let claims: Vec<_> = s
        .inbound
        .iter()
        .filter_map(|e| match e {
            Inbound::Claimed(id, name, c) => Some((id.0, name.as_str(), *c)),
            _ => None,
        })
        .collect();
    assert_eq!(claims[0], (1, "alice", Claim::Taken));
    assert_eq!(claims[1], (2, "bob", Claim::Failed));
    assert!(matches!(claims[2], (3, "carol", Claim::Granted(_))));
    let set = s
        .redis
        .cmds
        .iter()
        .find(|c| c.get(1).is_some_and(|k| k == "chatd:name:carol"))
        .unwrap();
    assert_eq!(
        (set[3].as_str(), set[4].as_str(), set[5].as_str()),
        ("NX", "PX", "15000")
    );
    assert!(set[2].ends_with(" me~1 3"), "{set:?}");
}

#[test]
fn what_other_instances_publish_arrives_cleaned_and_coalesced() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.link.subscribe("lobby", true);
    s.until("subscribed", |s| s.link.confirmed.contains("lobby"));
    s.inbound.clear();
    s.told = 0;
    // Three publications in one read: two lines for the room, one forged.
    let msg = |channel: &str, payload: &str| {
        format!(
            "*3\r\n{}{}{}",
            bulk("message"),
            bulk(channel),
            bulk(payload)
        )
    };
    let batch = [
        msg("chatd:3:r:lobby", "n2~5 <b> one"),
        msg("chatd:3:r:lobby", "n\x1b2 <b> forged"),
        msg("chatd:3:r:lobby", "n2~5 <b> t\x1b[2Jwo\r\n*** x"),
    ]
    .concat();
    s.redis.push_sub(batch.as_bytes());
    s.until("delivered", |s| s.link.stats().received == 3);
    assert_eq!(
        s.inbound,
        [Inbound::Room(
            "lobby".into(),
            "<b> one\r\n<b> t[2Jwo*** x".into()
        )]
    );
    assert_eq!(s.link.stats().malformed, 1);
}

/// Issue 21: the scripts are functions, loaded once per connection; after
/// a `FUNCTION FLUSH` a call is answered "Function not found": the library
/// is loaded again and the call sent once more, not the line refused. A
/// second refusal of the same call is told as any refusal.
#[test]
fn a_call_redis_lost_the_library_for_is_loaded_and_sent_once_more() {
    let mut s = up_in_lobby();
    let say = is_say;
    // The first two SAYs find no function; the third one does.
    let mut calls = 0;
    s.redis.answer = Box::new(move |args| {
        say(args).then(|| {
            calls += 1;
            if calls <= 2 {
                "-ERR Function not found\r\n".into()
            } else {
                bulk("17-4")
            }
        })
    });
    let loads = |s: &Stand| s.redis.cmds.iter().filter(|c| c[0] == "FUNCTION").count();
    assert_eq!(loads(&s), 1, "loaded once, at the handshake");
    assert!(
        s.link
            .say("lobby", ClientId(9), "<a> hi", 50, 60_000, &mut s.inbound)
    );
    s.until("sent again", |s| {
        s.redis.cmds.iter().filter(|c| say(c)).count() == 2
    });
    assert_eq!(loads(&s), 2, "loaded again first");
    let sent: Vec<&Vec<String>> = s.redis.cmds.iter().filter(|c| say(c)).collect();
    assert_eq!(sent[0], sent[1], "the same call");
    let at = |pred: &dyn Fn(&Vec<String>) -> bool| s.redis.cmds.iter().rposition(pred).unwrap();
    assert!(at(&|c| c[0] == "FUNCTION") < at(&|c| say(c)));
    assert!(
        s.redis
            .cmds
            .iter()
            .filter(|c| c[0] == "FUNCTION")
            .all(|c| c[1..3] == ["LOAD", "REPLACE"] && c[3] == scripts::LIBRARY.code)
    );
    // Refused twice: told, as any refusal.
    s.until("refused", |s| {
        s.inbound.contains(&Inbound::NotSaid(ClientId(9), true))
    });
    assert_eq!(s.link.stats().refused, 1);
    // Redis has it now: the next line goes through, and nothing was left
    // kept for a resend.
    assert!(
        s.link
            .say("lobby", ClientId(9), "<a> yo", 50, 60_000, &mut s.inbound)
    );
    s.until("sent", |s| {
        s.redis.cmds.iter().filter(|c| say(c)).count() == 3
    });
    s.until("answered", |s| s.link.pending.is_empty());
    assert!(
        !s.inbound
            .iter()
            .any(|e| matches!(e, Inbound::NotSaid(_, _))
                && *e != Inbound::NotSaid(ClientId(9), true))
    );
    assert_eq!((s.link.retained, s.link.kept.len()), (0, 0));
}

#[test]
fn the_library_registers_every_script_under_names_of_its_own() {
    let lib = &scripts::LIBRARY;
    let head = lib.code.lines().next().unwrap();
    assert!(head.starts_with("#!lua name=chatd_"), "{head}");
    let name = head.trim_start_matches("#!lua name=");
    for f in Func::ALL {
        assert!(f.name().starts_with(&format!("{name}_")), "{}", f.name());
        assert_eq!(lib.code.matches(&format!("'{}'", f.name())).count(), 1);
    }
    // Only reads may run when Redis refuses writes.
    assert_eq!(lib.code.matches("no-writes").count(), 2);
}

/// Issue 21: the lines said in one room during a turn, by several local
/// clients, are numbered by one SAY call, each line's sender with it; and
/// nothing else the hub asks overtakes them.
#[test]
fn lines_said_in_one_turn_go_to_redis_as_one_call_per_room_in_order() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.link.subscribe("lobby", true);
    s.link.subscribe("games", true);
    s.until("subscribed", |s| {
        s.link.confirmed.contains("lobby") && s.link.confirmed.contains("games")
    });
    let say = is_say;
    let says = |s: &Stand| -> Vec<Vec<String>> {
        s.redis.cmds.iter().filter(|c| say(c)).cloned().collect()
    };
    let op = |room: &str, from, lines: &str| ClusterOp::Say {
        room: room.into(),
        from: ClientId(from),
        lines: lines.into(),
        keep: 50,
        ttl_ms: 60_000,
    };
    let mut inbound = Vec::new();
    for (room, from, lines) in [
        ("lobby", 9, "<a> one"),
        ("lobby", 9, "<a> two"),
        ("games", 9, "<a> elsewhere"),
        ("lobby", 4, "<b> three\r\n<b> four"),
        ("lobby", 9, "<a> five"),
    ] {
        s.link.apply(op(room, from, lines), &mut inbound);
    }
    assert!(
        says(&s).is_empty() && inbound.is_empty(),
        "held for the turn"
    );
    // Something else on the room's channel: the lines go first.
    let notice = crate::msg::Msg::new("*** carol joined #lobby");
    s.link.apply(
        ClusterOp::Publish {
            room: "lobby".into(),
            msg: notice,
        },
        &mut inbound,
    );
    s.link
        .apply(op("lobby", 7, "<c> after the notice"), &mut inbound);
    s.step();
    s.until("three SAYs", |s| says(s).len() == 3);
    let sent = says(&s);
    let tail = |c: &Vec<String>| c[3..].to_vec();
    let head = [
        "chatd:3:h:lobby",
        "chatd:3:s:lobby",
        "chatd:3:r:lobby",
        "chatd:3:t:lobby",
    ];
    assert_eq!(tail(&sent[0])[..4], head);
    assert_eq!(
        tail(&sent[0])[4..],
        [
            "50",
            "60000",
            "me~1",
            "9*2,4*2,9*1",
            "f00d",
            "<a> one",
            "<a> two",
            "<b> three",
            "<b> four",
            "<a> five"
        ]
    );
    assert_eq!(tail(&sent[1])[7..], ["9", "f00d", "<a> elsewhere"]);
    assert_eq!(tail(&sent[2])[7..], ["7", "f00d", "<c> after the notice"]);
    let at = |pred: &dyn Fn(&Vec<String>) -> bool| s.redis.cmds.iter().position(pred).unwrap();
    let publish = at(&|c| c[0] == "PUBLISH" && c[1] == "chatd:3:r:lobby");
    assert!(at(&|c| *c == sent[1]) < publish, "the turn's lines first");
    assert!(publish < at(&|c| *c == sent[2]), "then what followed it");
    assert!(inbound.is_empty(), "{inbound:?}");
}

/// A batch holds at most COALESCE bytes of lines (what a receiver takes in
/// one publication); more in one turn goes in more calls, in order.
#[test]
fn a_batch_past_its_bound_goes_out_in_several_calls() {
    let mut s = Stand::up(Duration::from_secs(5));
    let line = format!("<a> {}", "x".repeat(96));
    let mut inbound = Vec::new();
    for i in 0..400 {
        s.link
            .say("lobby", ClientId(i % 3), &line, 50, 60_000, &mut inbound);
    }
    s.step();
    let say = is_say;
    s.until("sent", |s| {
        s.redis
            .cmds
            .iter()
            .filter(|c| say(c))
            .map(|c| c.len() - 12)
            .sum::<usize>()
            == 400
    });
    // FCALL, the function, 4, its keys, maxlen, ttl, node, senders, the
    // replication id: then the lines.
    let sent: Vec<&Vec<String>> = s.redis.cmds.iter().filter(|c| say(c)).collect();
    assert!(sent.len() >= 3, "{}", sent.len());
    for c in &sent {
        let bytes: usize = c[12..].iter().map(|l| l.len() + 2).sum();
        assert!(bytes <= wire::COALESCE + 2, "{bytes}");
        let runs = wire::parse_senders(&c[10], (c.len() - 12) as u64);
        assert!(runs.is_some(), "{}", c[10]);
    }
}

/// Our own batch of several senders, from SAY's reply (the room just
/// subscribed) and again on the subscription: delivered once, each run
/// with its sender and ids.
#[test]
fn our_batch_of_several_senders_is_delivered_once_split_by_sender() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.redis.answer = Box::new(|args| is_say(args).then(|| bulk("17-4")));
    // Not subscribed yet: delivered from the reply.
    let mut inbound = Vec::new();
    s.link
        .say("lobby", ClientId(9), "<a> one", 50, 1000, &mut inbound);
    s.link.say(
        "lobby",
        ClientId(4),
        "<b> two\r\n<b> three",
        50,
        1000,
        &mut inbound,
    );
    s.until("delivered", |s| {
        s.inbound
            .iter()
            .any(|e| matches!(e, Inbound::Numbered { .. }))
    });
    let payload = wire::batch_payload(
        "me~1",
        Id { epoch: 17, n: 4 },
        &[(ClientId(9), 1), (ClientId(4), 2)],
        "<a> one\r\n<b> two\r\n<b> three",
    );
    assert_eq!(payload, "me~1 =17-4:9*1,4*2\n<a> one\n<b> two\n<b> three");
    s.link.subscribe("lobby", true);
    s.until("subscribed", |s| s.link.confirmed.contains("lobby"));
    s.redis.publish("chatd:3:r:lobby", &payload);
    s.until("received", |s| s.link.stats().received == 1);
    let got: Vec<&Inbound> = s
        .inbound
        .iter()
        .filter(|e| matches!(e, Inbound::Numbered { .. } | Inbound::Said { .. }))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let Inbound::Numbered {
        first, runs, text, ..
    } = got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        events::split_runs(*first, runs, text),
        [
            (Id { epoch: 17, n: 4 }, ClientId(9), "<a> one".to_string()),
            (
                Id { epoch: 17, n: 5 },
                ClientId(4),
                "<b> two\r\n<b> three".to_string()
            ),
        ]
    );
}

#[test]
fn a_room_notice_goes_through_redis_in_order_and_is_never_lost_here() {
    let mut s = Stand::up(Duration::from_secs(5));
    s.link.subscribe("lobby", true);
    s.until("subscribed", |s| s.link.confirmed.contains("lobby"));
    let notice = |about, text: &str| ClusterOp::Notice {
        room: "lobby".into(),
        about,
        msg: Msg::new(text),
    };
    let mut inbound = Vec::new();
    s.link
        .apply(notice(Some(ClientId(9)), "*** a left #lobby"), &mut inbound);
    assert!(inbound.is_empty(), "delivered when it comes back");
    let in_lobby = |c: &&Vec<String>| c[0] == "PUBLISH" && c[1] == "chatd:3:r:lobby";
    s.until("the PUBLISH", |s| s.redis.cmds.iter().any(|c| in_lobby(&c)));
    let publish = s.redis.cmds.iter().find(in_lobby).unwrap();
    assert_eq!(
        publish[1..],
        ["chatd:3:r:lobby", "me~1 !1:9 *** a left #lobby"]
    );
    // On the subscription, twice: delivered once, skipping its member.
    s.redis
        .publish("chatd:3:r:lobby", "me~1 !1:9 *** a left #lobby");
    s.redis
        .publish("chatd:3:r:lobby", "me~1 !1:9 *** a left #lobby");
    s.until("delivered", |s| s.link.stats().received == 2);
    fn notices(s: &Stand) -> Vec<&Inbound> {
        s.inbound
            .iter()
            .filter(|e| matches!(e, Inbound::Notice { .. }))
            .collect()
    }
    let one = Inbound::Notice {
        room: "lobby".into(),
        about: Some(ClientId(9)),
        text: "*** a left #lobby".into(),
        seq: Some(1),
    };
    assert_eq!(notices(&s), [&one]);
    // A room whose SUBSCRIBE is not confirmed yet: from the reply, and
    // not again from the subscription.
    s.link.confirmed.remove("lobby");
    s.link.apply(notice(None, "*** b is now c"), &mut s.inbound);
    s.until("the reply", |s| notices(s).len() == 2);
    s.redis
        .publish("chatd:3:r:lobby", "me~1 !2:- *** b is now c");
    s.until("read", |s| s.link.stats().received == 3);
    for _ in 0..10 {
        s.step();
    }
    assert_eq!(notices(&s).len(), 2, "{:?}", notices(&s));
    // In flight when the link drops: delivered here, before the Down.
    s.inbound.clear();
    s.told = 0;
    s.redis.mute = true;
    s.link.apply(notice(None, "*** d joined"), &mut s.inbound);
    s.until("sent", |s| {
        s.redis.cmds.iter().filter(in_lobby).count() == 3
    });
    s.redis.close();
    s.until("down", |s| {
        s.inbound.iter().any(|e| matches!(e, Inbound::Down(_)))
    });
    let d = Inbound::Notice {
        room: "lobby".into(),
        about: None,
        text: "*** d joined".into(),
        seq: Some(3),
    };
    let at = s.inbound.iter().position(|e| *e == d).expect("delivered");
    let down = s
        .inbound
        .iter()
        .position(|e| matches!(e, Inbound::Down(_)))
        .unwrap();
    assert!(at < down, "{:?}", s.inbound);
    // Link down: handed back at once.
    let mut back = Vec::new();
    s.link.apply(notice(None, "*** e joined"), &mut back);
    assert!(
        matches!(&back[..], [Inbound::Notice { seq: None, text, .. }] if text == "*** e joined"),
        "{back:?}"
    );
}

/// Issue 22: a room's first local member has the link read the topic Redis
/// kept for it, a bounded read; what is read is checked as a `T` presence.
#[test]
fn a_rooms_first_member_reads_its_kept_topic_and_a_forged_one_is_refused() {
    let mut s = Stand::up(Duration::from_secs(5));
    let topic = Topic {
        text: "dice at nine".into(),
        by: "alice".into(),
        at_ms: 1_796_683_266_123,
        locked: false,
    };
    let good = wire::topic_value("n2~1", "games", &topic);
    s.redis.answer = Box::new(move |args| match (args[0].as_str(), args.get(1)) {
        ("GETRANGE", Some(k)) if k == "chatd:3:t:games" => Some(bulk(&good)),
        ("GETRANGE", Some(k)) if k == "chatd:3:t:dev" => {
            Some(bulk("T n2~1 dev 0 1 bad\x1bname hi"))
        }
        _ => None,
    });
    for room in ["games", "dev"] {
        let op = ClusterOp::Subscribe {
            room: room.into(),
            on: true,
        };
        s.link.apply(op, &mut s.inbound);
    }
    s.until("the forged one refused", |s| s.link.stats().malformed == 1);
    let reads: Vec<&Vec<String>> = s.redis.cmds.iter().filter(|c| c[0] == "GETRANGE").collect();
    assert_eq!(
        reads,
        [
            &["GETRANGE", "chatd:3:t:games", "0", "1024"]
                .map(String::from)
                .to_vec(),
            &["GETRANGE", "chatd:3:t:dev", "0", "1024"]
                .map(String::from)
                .to_vec(),
        ]
    );
    let topics: Vec<&Inbound> = s
        .inbound
        .iter()
        .filter(|e| matches!(e, Inbound::Topic(..)))
        .collect();
    let kept = Topic {
        text: "ship friday".into(),
        ..topic.clone()
    };
    assert_eq!(topics, [&Inbound::Topic("games".into(), topic)]);
    // Kept when set here, with the history's TTL.
    let op = ClusterOp::KeepTopic {
        room: "games".into(),
        topic: kept.clone(),
        ttl_ms: 60_000,
    };
    s.link.apply(op, &mut s.inbound);
    s.until("the SET", |s| {
        s.redis
            .cmds
            .iter()
            .any(|c| c[0] == "SET" && c[1] == "chatd:3:t:games")
    });
    let set = s
        .redis
        .cmds
        .iter()
        .find(|c| c[0] == "SET" && c[1] == "chatd:3:t:games")
        .unwrap();
    assert_eq!(
        set[2..],
        [
            wire::topic_value("me~1", "games", &kept),
            "PX".into(),
            "60000".into()
        ]
    );
}

/// A room entered while the link was not up has its kept topic read once
/// the link is.
#[test]
fn rooms_entered_before_the_link_was_up_have_their_topic_read_when_it_is() {
    let mut s = Stand::new(Duration::from_secs(5));
    let op = ClusterOp::Subscribe {
        room: "games".into(),
        on: true,
    };
    s.link.apply(op, &mut s.inbound);
    s.until("up", |s| s.inbound.contains(&Inbound::Up));
    s.until("the read", |s| {
        s.redis
            .cmds
            .iter()
            .any(|c| c[0] == "GETRANGE" && c[1] == "chatd:3:t:games")
    });
    let reads = s.redis.cmds.iter().filter(|c| c[0] == "GETRANGE").count();
    assert_eq!(reads, 1, "once");
}
