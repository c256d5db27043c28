//! Issue 6: the web port against the real binary over loopback. WebSocket
//! clients are tungstenite; frames a well-behaved client never sends are
//! written raw on tungstenite's socket after its handshake. HTTP is spoken
//! by hand. Every wait is on something a client reads, with a timeout.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Client, Server, TIMEOUT, parse_welcome_name};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message, WebSocket};

/// The Content-Security-Policy every answer carries (docs/web.md).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// A browser stand-in: tungstenite over a blocking socket with a read
/// timeout, so a silent server fails the test instead of hanging it.
struct Web {
    ws: WebSocket<TcpStream>,
    name: String,
}

impl Web {
    /// Connects, upgrades and consumes the welcome line.
    fn connect(server: &Server) -> Web {
        let mut w = Web::connect_raw(server);
        let welcome = w.next_text();
        w.name = parse_welcome_name(&welcome)
            .unwrap_or_else(|| panic!("no name in welcome {welcome:?}"));
        w
    }

    /// Connects and upgrades without reading anything.
    fn connect_raw(server: &Server) -> Web {
        let addr = web_addr(server);
        let (ws, response) =
            tungstenite::client::client(format!("ws://{addr}/ws"), stream(addr)).expect("upgrade");
        assert_eq!(response.status(), 101);
        Web {
            ws,
            name: String::new(),
        }
    }

    fn send(&mut self, line: &str) {
        self.ws.send(Message::text(line)).expect("send");
    }

    /// Bytes straight onto the socket, past tungstenite's framing.
    fn raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).expect("raw write");
    }

    /// The next message; panics on timeout, EOF or a protocol error.
    fn next(&mut self) -> Message {
        match self.ws.read() {
            Ok(m) => m,
            Err(e) => panic!("{}: no message: {e}", self.name),
        }
    }

    fn next_text(&mut self) -> String {
        match self.next() {
            Message::Text(t) => t.to_string(),
            other => panic!("{}: expected a text message, got {other:?}", self.name),
        }
    }

    fn next_is(&mut self, want: &str) {
        assert_eq!(self.next_text(), want, "{}: next message", self.name);
    }

    /// Reads text messages until one satisfies `pred`.
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let text = self.next_text();
            if pred(&text) {
                return text;
            }
            seen.push(text);
        }
        panic!("{}: expected {what}, got {seen:?}", self.name);
    }

    fn expect_line(&mut self, want: &str) {
        self.expect(&format!("{want:?}"), |l| l == want);
    }

    /// A round trip: everything sent to this client before the server
    /// handled a `/who` has been read once this returns.
    fn sync(&mut self) -> Vec<String> {
        self.send("/who");
        let mut before = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            let text = self.next_text();
            if text.starts_with("*** #") && text.contains("): ") {
                return before;
            }
            before.push(text);
        }
        panic!("{}: no /who answer; saw {before:?}", self.name);
    }

    /// The server's close frame, as the very next message: (code, reason).
    /// tungstenite queues its reply but only writes it on the next call,
    /// which is never made, so the socket stays quiet for `expect_tcp_close`.
    fn expect_close(&mut self) -> (u16, String) {
        match self.next() {
            Message::Close(Some(CloseFrame { code, reason })) => (code.into(), reason.to_string()),
            other => panic!("{}: expected a close frame, got {other:?}", self.name),
        }
    }

    /// The server closes the TCP connection (EOF) right after its close frame.
    fn expect_tcp_close(&mut self) {
        let mut buf = [0u8; 64];
        match self.ws.get_mut().read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{}: bytes after the close: {:?}", self.name, &buf[..n]),
            Err(e) => panic!("{}: expected EOF, got {e}", self.name),
        }
    }
}

fn web_addr(server: &Server) -> SocketAddr {
    server.http_addr.expect("chatd printed no web address")
}

fn stream(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A client frame as written by hand: FIN bit, opcode, masked payload. It can
/// be anything, including what tungstenite would refuse to send.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn text(payload: &str) -> Vec<u8> {
    frame(0x1, true, payload.as_bytes())
}

// ---------------------------------------------------------------- relay

#[test]
fn browser_and_telnet_see_each_other() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));

    w.send("hello from the browser ✓");
    t.next_is(&format!("<{}> hello from the browser ✓", w.name));
    t.send("hello from telnet, café");
    w.next_is(&format!("<{}> hello from telnet, café", t.name));

    // A second browser: both transports get every line, the sender none.
    // It arrives to what was said so far.
    let mut w2 = Web::connect(&server);
    w2.next_is("*** history of #lobby (2 lines, times UTC):");
    let said = w2.next_text();
    assert!(
        said.ends_with(&format!("] <{}> hello from the browser ✓", w.name)),
        "{said}"
    );
    let said = w2.next_text();
    assert!(
        said.ends_with(&format!("] <{}> hello from telnet, café", t.name)),
        "{said}"
    );
    w2.next_is("*** end of history");
    t.next_is(&format!("*** {} joined", w2.name));
    w.next_is(&format!("*** {} joined", w2.name));
    w2.send("third");
    t.next_is(&format!("<{}> third", w2.name));
    w.next_is(&format!("<{}> third", w2.name));
    assert_eq!(w2.sync(), Vec::<String>::new(), "no echo to the sender");
    assert_eq!(w.sync(), Vec::<String>::new());
    assert_eq!(t.sync(), Vec::<String>::new());

    // A browser that goes away without a close frame (TCP FIN only).
    let name = w2.name.clone();
    drop(w2);
    t.next_is(&format!("*** {name} left"));
    w.next_is(&format!("*** {name} left"));
}

#[test]
fn commands_work_over_websocket() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let guest = w.name.clone();

    w.send("/nick alice");
    w.next_is("*** you are now alice");
    t.next_is(&format!("*** {guest} is now alice"));

    w.send("/who");
    w.next_is(&format!("*** #lobby (2): alice, {}", t.name));

    w.send("/msg nobody hi");
    w.next_is("*** error: no user named nobody");
    w.send(&format!("/msg {} psst", t.name));
    w.next_is(&format!("-> *{}* psst", t.name));
    t.next_is("*alice* psst");
    t.send("/msg alice back");
    t.next_is("-> *alice* back");
    w.next_is(&format!("*{}* back", t.name));

    w.send("/me waves");
    t.next_is("* alice waves");
    w.send("//slash");
    t.next_is("<alice> /slash");
    w.send("/frobnicate");
    w.next_is("*** error: unknown command /frobnicate (try /help)");

    // Rooms keep transports apart exactly as they keep telnet users apart.
    w.send("/join games");
    w.next_is("*** you joined #games (1): @alice");
    w.send("/part lobby");
    w.next_is("*** you left #lobby; now talking in #games");
    t.next_is("*** alice left #lobby");
    t.send("lobby only");
    w.send("games only");
    assert_eq!(w.sync(), Vec::<String>::new(), "lobby line reached #games");
    assert_eq!(t.sync(), Vec::<String>::new(), "games line reached #lobby");
    w.send("/rooms");
    let rooms = w.next_text();
    assert!(
        rooms.starts_with("*** rooms (2): ")
            && rooms.contains("#games (1)")
            && rooms.contains("#lobby (1)"),
        "{rooms}"
    );
    t.send("/join games");
    t.next_is(&format!("*** you joined #games (2): @alice, {}", t.name));
    t.next_is("*** history of #games (1 line, times UTC):");
    t.expect_line("*** end of history");
    w.next_is(&format!("*** {} joined #games", t.name));
    t.send("together");
    w.next_is(&format!("<{}> together", t.name));

    // /quit ends the WebSocket properly: the goodbye line, a close frame,
    // then the TCP close.
    w.send("/quit see you");
    w.next_is("*** bye");
    let (code, _) = w.expect_close();
    assert_eq!(code, 1000);
    w.expect_tcp_close();
    t.next_is("*** alice left (quit: see you)");
}

#[test]
fn a_line_with_cr_or_lf_inside_a_message_becomes_separate_lines_from_its_sender() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    // What a browser could send that the page never does: line ends inside
    // one message, blank pieces, a bare CR meant to overwrite the sender's
    // name on a terminal, and a fake server notice.
    w.send("one\r\ntwo\n\n\r\n*** admin is now root\rX\r");
    let me = w.name.clone();
    t.next_is(&format!("<{me}> one"));
    t.next_is(&format!("<{me}> two"));
    t.next_is(&format!("<{me}> *** admin is now rootX"));
    assert_eq!(
        t.sync(),
        Vec::<String>::new(),
        "nothing else reached telnet"
    );
    // Each piece is a line of its own, so a command in a piece is a command,
    // exactly as if a telnet client had sent the same bytes.
    w.send("hi\n/nick mallory");
    t.next_is(&format!("<{me}> hi"));
    t.next_is(&format!("*** {me} is now mallory"));
    w.next_is("*** you are now mallory");
    // More lines in one message than a turn takes from one client: all of
    // them, in order, across turns.
    let many: Vec<String> = (0..300).map(|i| format!("l{i}")).collect();
    w.send(&many.join("\n"));
    for l in &many {
        t.next_is(&format!("<mallory> {l}"));
    }
    // An empty message, or one of only line ends, is ignored like a blank line.
    w.send("");
    w.send("\r\n\n");
    assert_eq!(w.sync(), Vec::<String>::new());
    assert_eq!(t.sync(), Vec::<String>::new());
}

#[test]
fn the_lines_of_one_message_are_rate_limited_like_telnet_lines() {
    // One token a second: ten lines in one message must not all go at once.
    let server = Server::start(&["--rate", "1", "--burst", "1"]);
    let mut t = server.client();
    let mut other = server.client();
    let mut w = Web::connect(&server);
    t.expect_line(&format!("*** {} joined", w.name));
    let lines: Vec<String> = (1..=10).map(|i| format!("n{i}")).collect();
    w.send(&lines.join("\n"));
    t.next_is(&format!("<{}> n1", w.name));
    // The rest come a second apart; a line sent now by someone else gets in
    // long before the tenth (nine seconds away).
    other.send("marker");
    let mut before = Vec::new();
    loop {
        let line = t.read_line().expect("line");
        if line == format!("<{}> marker", other.name) {
            break;
        }
        before.push(line);
    }
    assert!(
        !before.contains(&format!("<{}> n10", w.name)),
        "all ten lines of one message got past --rate 1: {before:?}"
    );

    // Held back, not lost: every line of a long message arrives, in order,
    // across many waits for a token.
    let server = Server::start(&["--rate", "1000", "--burst", "1"]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let many: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    w.send(&many.join("\n"));
    w.send("after");
    for l in many.iter().chain([&"after".to_string()]) {
        t.next_is(&format!("<{}> {l}", w.name));
    }
}

// ---------------------------------------------------------------- violations

/// Sends `bytes` on a fresh WebSocket and checks the server closes it with
/// `code` (and `reason` when given), closes TCP, and tells the room why.
fn rejected(server: &Server, watcher: &mut Client, bytes: &[u8], code: u16, reason: Option<&str>) {
    let mut w = Web::connect(server);
    watcher.next_is(&format!("*** {} joined", w.name));
    w.raw(bytes);
    let (got_code, got_reason) = w.expect_close();
    assert_eq!(got_code, code, "close code for {bytes:02x?} ({got_reason})");
    if let Some(reason) = reason {
        assert_eq!(got_reason, reason);
    }
    assert!(!got_reason.is_empty(), "a close frame says why");
    w.expect_tcp_close();
    // Nothing of the offending message reached the room, only the leave.
    watcher.next_is(&format!(
        "*** {} left (websocket error: {got_reason})",
        w.name
    ));
}

#[test]
fn an_unmasked_frame_is_closed_with_1002_and_the_room_is_told() {
    let server = Server::start(&[]);
    let mut t = server.client();
    // What a server would send: FIN, text, no mask bit, "hi".
    rejected(
        &server,
        &mut t,
        &[0x81, 0x02, b'h', b'i'],
        1002,
        Some("client frames must be masked"),
    );
}

#[test]
fn invalid_utf8_is_closed_with_1007() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let reason = Some("text is not valid UTF-8");
    rejected(&server, &mut t, &frame(0x1, true, b"caf\xe9"), 1007, reason);
    // A message that stops inside a code point.
    let snow = "☃".as_bytes();
    rejected(&server, &mut t, &frame(0x1, true, &snow[..2]), 1007, reason);
    // An invalid first fragment fails at once, before the message ends.
    rejected(&server, &mut t, &frame(0x1, false, b"\xff"), 1007, reason);
}

#[test]
fn every_other_protocol_violation_gets_its_close_code() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut rsv1 = text("hi");
    rsv1[0] |= 0x40;
    let mut interleaved = frame(0x1, false, b"hel");
    interleaved.extend(text("other"));
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("reserved bit", rsv1, 1002, Some("reserved bits set")),
        ("reserved opcode", frame(0x3, true, b"x"), 1002, None),
        ("reserved control opcode", frame(0xB, true, b""), 1002, None),
        (
            "long ping",
            frame(0x9, true, &[b'p'; 126]),
            1002,
            Some("control frame too long"),
        ),
        (
            "fragmented ping",
            frame(0x9, false, b"p"),
            1002,
            Some("fragmented control frame"),
        ),
        (
            "stray continuation",
            frame(0x0, true, b"lo"),
            1002,
            Some("continuation without a message"),
        ),
        (
            "interleaved messages",
            interleaved,
            1002,
            Some("new message inside a fragmented one"),
        ),
        (
            "binary",
            frame(0x2, true, b"\x00\x01"),
            1003,
            Some("binary messages not supported"),
        ),
        ("1-byte close body", frame(0x8, true, &[0x03]), 1002, None),
        (
            "reserved close code",
            frame(0x8, true, &1005u16.to_be_bytes()),
            1002,
            Some("invalid close code 1005"),
        ),
    ];
    for (what, bytes, code, reason) in cases {
        eprintln!("case: {what}");
        rejected(&server, &mut t, &bytes, code, reason);
    }
}

// ---------------------------------------------------------------- size

/// The page must know --max-line before its first over-long line, not learn
/// it from the refusal; the welcome says it, to telnet users as well.
#[test]
fn the_welcome_tells_the_longest_line_accepted() {
    let server = Server::start(&["--max-line", "100"]);
    let mut t = server.client();
    let mut w = Web::connect_raw(&server);
    let welcome = w.next_text();
    assert!(
        welcome.starts_with("*** welcome to chatd, ")
            && welcome.ends_with("; lines up to 100 bytes"),
        "{welcome:?}"
    );
    let mut t2 = Client::connect_raw(server.addr);
    let welcome = t2.read_line().expect("welcome");
    assert!(welcome.ends_with("; lines up to 100 bytes"), "{welcome:?}");
    t.expect("the others joined", |l| l.ends_with(" joined"));
}

#[test]
fn an_over_long_message_is_refused_and_the_connection_stays_usable() {
    let server = Server::start(&["--max-line", "16"]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let refused = "*** error: line too long (max 16 bytes)";

    // Exactly --max-line bytes passes, one more is refused; bytes, not chars.
    w.send(&"x".repeat(16));
    t.next_is(&format!("<{}> {}", w.name, "x".repeat(16)));
    w.send(&"é".repeat(8));
    t.next_is(&format!("<{}> {}", w.name, "é".repeat(8)));
    w.send(&"x".repeat(17));
    w.next_is(refused);
    w.send(&format!("{}x", "é".repeat(8)));
    w.next_is(refused);
    w.send("next");
    t.next_is(&format!("<{}> next", w.name));

    // Over the limit only once reassembled, with a ping in the dropped part:
    // one error, the ping still answered, and the next message is fine.
    let mut raw = frame(0x1, false, &[b'a'; 10]);
    raw.extend(frame(0x0, false, &[b'b'; 10]));
    raw.extend(frame(0x9, true, b"still there?"));
    raw.extend(frame(0x0, true, b"c"));
    raw.extend(text("after"));
    w.raw(&raw);
    w.next_is(refused);
    assert_eq!(w.next(), Message::Pong(Bytes::from_static(b"still there?")));
    t.next_is(&format!("<{}> after", w.name));

    // A big one is dropped as it streams in, never buffered.
    w.send(&"z".repeat(4 << 20));
    w.next_is(refused);
    w.send("still here");
    t.next_is(&format!("<{}> still here", w.name));
    assert_eq!(w.sync(), Vec::<String>::new(), "one error per message");
    assert_eq!(t.sync(), Vec::<String>::new(), "nothing of the long ones");
}

// ---------------------------------------------------------------- control

#[test]
fn a_ping_gets_a_pong_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut w = Web::connect(&server);
    for payload in [&b"are you there?"[..], b"", &[0xa5; 125]] {
        w.ws.send(Message::Ping(Bytes::copy_from_slice(payload)))
            .unwrap();
        assert_eq!(w.next(), Message::Pong(Bytes::copy_from_slice(payload)));
    }
    // An unsolicited pong is a heartbeat: no answer, no harm.
    w.ws.send(Message::Pong(Bytes::from_static(b"hb"))).unwrap();
    assert_eq!(w.sync(), Vec::<String>::new());
}

#[test]
fn a_client_close_is_answered_then_the_connection_ends() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    w.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye now".into(),
    }))
    .unwrap();
    // The reply echoes the code; then the server closes TCP.
    let (code, _) = w.expect_close();
    assert_eq!(code, 1000);
    w.expect_tcp_close();
    t.next_is(&format!("*** {} left", w.name));

    // A close without a body gets one without a code back.
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    w.raw(&frame(0x8, true, b""));
    match w.next() {
        Message::Close(None) => {}
        other => panic!("expected an empty close frame, got {other:?}"),
    }
    w.expect_tcp_close();
    t.next_is(&format!("*** {} left", w.name));
}

#[test]
fn a_fragmented_message_with_a_ping_inside_arrives_as_one_line() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let snow = "☃".as_bytes();
    let mut raw = frame(0x1, false, b"hello, ");
    raw.extend(frame(0x9, true, b"mid"));
    // A code point split across fragments is not an error.
    raw.extend(frame(0x0, false, &[b"wor", &snow[..1]].concat()));
    raw.extend(frame(0x0, true, &[&snow[1..], b"ld"].concat()));
    // Fed a byte at a time, so each frame header is itself split.
    for b in &raw {
        w.raw(&[*b]);
    }
    assert_eq!(w.next(), Message::Pong(Bytes::from_static(b"mid")));
    t.next_is(&format!("<{}> hello, wor☃ld", w.name));
    assert_eq!(t.sync(), Vec::<String>::new(), "one line, not three");
}

#[test]
fn frames_sent_right_behind_the_handshake_are_not_lost() {
    let server = Server::start(&[]);
    let mut t = server.client();
    let addr = web_addr(&server);
    let mut s = stream(addr);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
    .into_bytes();
    req.extend(text("early bird"));
    s.write_all(&req).unwrap();
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(
        answer.contains(&format!(
            "Sec-WebSocket-Accept: {}\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        )),
        "{answer}"
    );
    let joined = t.expect("a join", |l| l.ends_with(" joined"));
    let name = joined
        .strip_prefix("*** ")
        .and_then(|l| l.strip_suffix(" joined"))
        .unwrap()
        .to_string();
    t.next_is(&format!("<{name}> early bird"));
}

/// Reads a response head byte by byte, so nothing after it is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "endless head");
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!("head cut short ({other:?}): {head:?}"),
        }
    }
    String::from_utf8(head).expect("ASCII head")
}

// ---------------------------------------------------------------- slow

#[test]
fn a_websocket_that_never_reads_is_cut_off_while_telnet_gets_everything() {
    // --sendq holds one turn's fan-out (64 KiB read from the sender) plus
    // each entry's bookkeeping, so the telnet reader cannot overflow within
    // a turn (see tests/core.rs).
    let server = Server::start(&["--sendq", "131072"]);
    let mut sender = server.client();
    let fast = server.client();
    let mut slow = Web::connect(&server);
    sender.expect_line(&format!("*** {} joined", slow.name));
    let stop = format!("*** {} left (too slow)", slow.name);
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let fast_thread = {
        let (stop, seen, done) = (stop.clone(), seen.clone(), done.clone());
        let mut fast = fast;
        std::thread::spawn(move || {
            // Every numbered line, in order, then the notice.
            let mut next = 0usize;
            while let Some(line) = fast.read_line() {
                if let Some(rest) = line.split_once("> seq=").map(|(_, r)| r) {
                    let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
                    assert_eq!(n, next, "telnet reader lost or reordered a line");
                    next += 1;
                    seen.store(next, Ordering::Relaxed);
                } else if line == stop {
                    done.store(true, Ordering::Relaxed);
                    return true;
                }
            }
            false
        })
    };
    support::send_until(&mut sender, &done);
    sender.expect(&stop, |l| l == stop);
    let _ = sender.sync();
    assert!(fast_thread.join().unwrap(), "telnet reader saw the cut-off");
    assert!(seen.load(Ordering::Relaxed) > 0);

    // What did reach the browser is whole frames, in order, and then the
    // connection ends (a close frame if there was room for one, or EOF).
    let mut next = 0usize;
    for _ in 0..1_000_000 {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                if let Some(rest) = t.split_once("> seq=").map(|(_, r)| r) {
                    let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
                    assert_eq!(n, next, "the slow browser got a line out of order");
                    next += 1;
                }
            }
            Ok(Message::Close(Some(f))) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (1008, "too slow"));
                return;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                panic!("the slow browser's connection was left open")
            }
            Err(_) => return,
        }
    }
    panic!("endless stream to the slow browser");
}

// ---------------------------------------------------------------- HTTP

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` and reads the answer to EOF: every answer but the
/// upgrade closes the connection, so not reaching EOF fails.
fn http(server: &Server, request: &[u8]) -> Answer {
    let mut s = stream(web_addr(server));
    // The server may answer and close before it has read everything (a
    // head over the limit): a failed write is not the test's business.
    let _ = s.write_all(request);
    parse_answer(&read_to_close(&mut s))
}

/// Everything until the server closes. A reset after the answer (the
/// server closed with our bytes unread) counts as a close; a timeout fails.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("no close from the server ({e}); got {got:?}"),
        }
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "not an HTTP answer ({other:?}): {:?}",
            String::from_utf8_lossy(raw)
        ),
    };
    Answer {
        status: resp.code.unwrap(),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: raw[len..].to_vec(),
    }
}

fn get(server: &Server, path: &str) -> Answer {
    http(
        server,
        format!("GET {path} HTTP/1.1\r\nHost: chat.example\r\n\r\n").as_bytes(),
    )
}

/// What every answer carries, whatever its status.
fn check_common(a: &Answer, head_only: bool) {
    assert_eq!(a.header("Content-Security-Policy"), Some(CSP));
    assert_eq!(a.header("Connection"), Some("close"));
    assert_eq!(a.header("X-Content-Type-Options"), Some("nosniff"));
    if !head_only {
        assert_eq!(
            a.header("Content-Length"),
            Some(a.body.len().to_string().as_str()),
            "Content-Length matches the body"
        );
    }
}

#[test]
fn the_page_its_script_and_the_health_check_are_served() {
    let server = Server::start(&[]);
    let page = get(&server, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    check_common(&page, false);
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains("app.js"), "the page loads its script");

    let js = get(&server, "/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(!js.body.is_empty());
    check_common(&js, false);
    assert_eq!(get(&server, "/app.css").status, 200);
    assert_eq!(get(&server, "/favicon.svg").status, 200);

    let health = get(&server, "/healthz?probe=1");
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));
    check_common(&health, false);

    let missing = get(&server, "/nope");
    assert_eq!(missing.status, 404);
    check_common(&missing, false);
    // /ws without an upgrade is a bad WebSocket request, not a page.
    let plain = get(&server, "/ws");
    assert_eq!(plain.status, 400);
    assert_eq!(plain.header("Sec-WebSocket-Version"), Some("13"));
}

#[test]
fn head_gets_the_headers_without_the_body() {
    let server = Server::start(&[]);
    let full = get(&server, "/");
    let head = http(&server, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD answered with a body");
    check_common(&head, true);
    assert_eq!(
        head.header("Content-Length"),
        Some(full.body.len().to_string().as_str()),
        "HEAD tells the length GET would send"
    );
    let h = http(&server, b"HEAD /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((h.status, h.body.len()), (200, 0));
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = Server::start(&[]);
    for req in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
        b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /app.js HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let a = http(&server, req);
        assert_eq!(a.status, 405, "{}", String::from_utf8_lossy(req));
        assert_eq!(a.header("Allow"), Some("GET, HEAD"));
        check_common(&a, false);
    }
    let a = http(&server, b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((a.status, a.header("Allow")), (405, Some("GET")));
}

#[test]
fn a_malformed_request_gets_400_and_is_closed() {
    let server = Server::start(&[]);
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",                             // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",       // two
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", // space in a name
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", // a body
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        // `http` fails unless the server closes after answering.
        let a = http(&server, req);
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(req));
        check_common(&a, false);
    }
}

#[test]
fn a_request_head_over_8_kib_gets_431_and_is_closed() {
    let server = Server::start(&[]);
    // Just under the limit is fine...
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(8 * 1024 - 48)
    );
    assert!(fits.len() <= 8 * 1024);
    assert_eq!(http(&server, fits.as_bytes()).status, 200);
    // ...one header too long is not, and neither is a head that never ends.
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let a = http(&server, long.as_bytes());
    assert_eq!(a.status, 431);
    check_common(&a, false);
    let mut endless = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..1000 {
        endless.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    assert_eq!(http(&server, &endless).status, 431);
    // The server is still serving.
    assert_eq!(get(&server, "/healthz").status, 200);
}

#[test]
fn a_client_dribbling_its_head_is_closed_after_http_timeout() {
    let server = Server::start(&["--http-timeout", "1"]);
    let mut s = stream(web_addr(&server));
    // One byte of a never-ending head every 100 ms for up to 60 s: the
    // deadline counts from the connect, not from the last byte.
    let mut w = s.try_clone().unwrap();
    let dribbler = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain([b'a'; 600].iter())
        {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // With the test's 10 s read timeout this fails unless the server closes
    // the connection well before the head could ever be complete.
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "answered a head that never ended: {got:?}");
    dribbler.join().unwrap();
    // Other web clients are served meanwhile and after.
    assert_eq!(get(&server, "/healthz").status, 200);
}

#[test]
fn max_clients_counts_web_clients_and_refuses_with_503() {
    let server = Server::start(&["--max-clients", "2"]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let full = get(&server, "/healthz");
    assert_eq!(full.status, 503);
    assert_eq!(full.body, b"*** error: server full (2 clients)");
    assert!(
        tungstenite::client::client(
            format!("ws://{}/ws", web_addr(&server)),
            stream(web_addr(&server))
        )
        .is_err(),
        "a third client upgraded past --max-clients 2"
    );
    // A browser counts on the line port too.
    let mut c = Client::connect_raw(server.addr);
    assert_eq!(
        c.read_line().as_deref(),
        Some("*** error: server full (2 clients)")
    );
    // Room again once someone leaves.
    let name = t.name.clone();
    drop(t);
    w.expect_line(&format!("*** {name} left"));
    assert_eq!(get(&server, "/healthz").status, 200);
}

#[test]
fn no_http_serves_no_web_port() {
    let server = Server::start(&["--no-http"]);
    assert_eq!(server.http_addr, None);
    let mut a = server.client();
    let mut b = server.client();
    a.next_is(&format!("*** {} joined", b.name));
    b.send("still chatting");
    a.next_is(&format!("<{}> still chatting", b.name));
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_cut_off() {
    // Pongs are output too: a client that pings and never reads must not
    // grow its queue past --sendq.
    let server = Server::start(&["--sendq", "65536"]);
    let mut t = server.client();
    let mut w = Web::connect(&server);
    t.next_is(&format!("*** {} joined", w.name));
    let mut sock = w.ws.get_mut().try_clone().unwrap();
    let flooder = std::thread::spawn(move || {
        let ping = frame(0x9, true, &[b'p'; 125]);
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1000)
            .collect();
        // 256 MB of pings at most; loopback buffers hold a few MiB.
        for _ in 0..2000 {
            if sock.write_all(&batch).is_err() {
                return;
            }
        }
    });
    t.next_is(&format!("*** {} left (too slow)", w.name));
    flooder.join().unwrap();
    let rss = support::vm_kib(server.child.id(), "VmHWM");
    assert!(rss < 96 * 1024, "server peak RSS {rss} KiB: pongs piled up");
}

#[test]
fn on_sigterm_a_browser_is_told_and_closed_with_1001() {
    let mut server = Server::start(&[]);
    let mut w = Web::connect(&server);
    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
    w.next_is("*** server shutting down");
    assert_eq!(w.expect_close(), (1001, "server shutting down".to_string()));
    w.expect_tcp_close();
}

/// Issue 26, item 8: the connect rate counts chat sessions, not the page's
/// files: a page load is five connections (page, script, style, icon,
/// WebSocket) and costs one session. 40 files are served under
/// --max-connects 3; the fourth upgrade is refused with a 503.
#[test]
fn the_connect_rate_counts_sessions_not_the_pages_files() {
    let server = Server::start(&["--max-per-ip", "16", "--max-connects", "3"]);
    for i in 0..10 {
        for path in ["/", "/app.js", "/app.css", "/favicon.svg"] {
            let a = get(&server, path);
            assert_eq!(a.status, 200, "load {i}: {path}");
        }
    }
    let sessions: Vec<Web> = (0..3).map(|_| Web::connect(&server)).collect();
    let addr = web_addr(&server);
    match tungstenite::client::client(format!("ws://{addr}/ws"), stream(addr)) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status(), 503);
        }
        Err(e) => panic!("not refused with a 503: {e}"),
        Ok((_, r)) => panic!("upgraded: {}", r.status()),
    }
    // The page itself is still served.
    assert_eq!(get(&server, "/").status, 200);
    drop(sessions);
}
