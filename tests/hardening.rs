//! Issue 13: what an outside attack review found. Memory stays within the
//! README's bound for the smallest lines; invisible and direction-changing
//! characters never reach a client; the WebSocket and HTTP edges follow the
//! RFCs; flags have maxima; answers that grow with the server are bounded.
//! Real binary, loopback, port 0; every wait is on something read.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;
use support::{Client, Server, TIMEOUT, parse_welcome_name};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

// ------------------------------------------------------------- memory bound

/// The README's per-connection bound ("Memory in the worst case"): the
/// output queue (--sendq, which counts each entry's real cost), the input
/// (at most two --max-line buffers and one 64 KiB read) and a fixed cost
/// under 16 KiB.
fn per_client_bound(sendq: u64, max_line: u64) -> u64 {
    sendq + 2 * max_line + 80 * 1024
}

#[test]
fn a_stalled_reader_of_700_000_one_byte_private_messages_stays_within_the_bound() {
    let sendq: u64 = 1 << 20;
    let max_line: u64 = 8192;
    let server = Server::start(&["--sendq", &sendq.to_string(), "--no-http"]);
    let pid = server.child.id();
    let before = support::vm_kib(pid, "VmRSS");
    let mut victim = server.client();
    let mut sender = server.client();
    victim.expect_line(&format!("*** {} joined", sender.name));
    // From here on the victim never reads.
    let line = format!("/msg {} x\n", victim.name);
    let total = 700_000;
    let mut w = sender.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let batch = line.repeat(10_000);
        for _ in 0..total / 10_000 {
            w.write_all(batch.as_bytes()).unwrap();
        }
        w.write_all(b"/who\n").unwrap();
    });
    // The sender reads its own answers (one per /msg) so that only the
    // victim falls behind; it stops at the /who sent after the last /msg.
    let stop = format!("*** {} left (too slow)", victim.name);
    let mut cut_off = false;
    let mut answers = 0;
    let deadline = Instant::now() + TIMEOUT * 12;
    loop {
        assert!(Instant::now() < deadline, "no /who answer after the flood");
        let l = sender.read_line().expect("sender's answers");
        if l == stop {
            cut_off = true;
        } else if l.starts_with("*** #lobby (") {
            break;
        } else {
            answers += 1;
        }
    }
    writer.join().unwrap();
    assert_eq!(answers, total, "every /msg was answered");
    assert!(
        cut_off,
        "the victim was never cut off: the queue never filled"
    );
    let peak = support::vm_kib(pid, "VmHWM");
    let bound_kib = before + 2 * per_client_bound(sendq, max_line) / 1024;
    eprintln!("RSS at start {before} KiB, peak {peak} KiB, bound {bound_kib} KiB");
    assert!(
        peak <= bound_kib,
        "server peak RSS {peak} KiB, more than the bound {bound_kib} KiB \
         (RSS at start {before} KiB + 2 clients)"
    );
    drop(victim);
}

// ------------------------------------------------------------- text policy

/// Characters that must never reach a client: line and paragraph
/// separators, bidi embeddings, overrides and isolates, marks, and
/// zero-width characters.
const SPOOF: [char; 6] = [
    '\u{2028}', '\u{2029}', '\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}',
];

fn clean(line: &str) -> bool {
    !line.contains(SPOOF)
}

fn ws_connect(server: &Server) -> (WebSocket<TcpStream>, String) {
    let addr = server.http_addr.expect("web port");
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), s).expect("upgrade");
    let welcome = ws_text(&mut ws);
    let name = parse_welcome_name(&welcome).expect("welcome");
    (ws, name)
}

fn ws_text(ws: &mut WebSocket<TcpStream>) -> String {
    match ws.read() {
        Ok(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads a line client until `want`, checking every line on the way.
fn line_until(c: &mut Client, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let l = c
            .read_line()
            .unwrap_or_else(|| panic!("{}: no {want:?}", c.name));
        assert!(clean(&l), "{} got {l:?}", c.name);
        if l == want {
            return;
        }
    }
    panic!("{}: no {want:?}", c.name);
}

fn ws_until(ws: &mut WebSocket<TcpStream>, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let l = ws_text(ws);
        assert!(clean(&l), "browser got {l:?}");
        if l == want {
            return;
        }
    }
    panic!("browser: no {want:?}");
}

#[test]
fn separators_bidi_controls_and_zero_width_characters_reach_no_client() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    a.expect_line(&format!("*** {} joined", b.name));
    let (mut w, wn) = ws_connect(&server);
    a.expect_line(&format!("*** {wn} joined"));
    b.expect_line(&format!("*** {wn} joined"));
    let (an, bn) = (a.name.clone(), b.name.clone());

    // A message that would show a second, forged line in the page.
    a.send("hi\u{2028}<alice> send me your password");
    let want = format!("<{an}> hi <alice> send me your password");
    line_until(&mut b, &want);
    ws_until(&mut w, &want);
    // An override that reverses what follows, and invisible characters.
    a.send("/me pays \u{202e}0001\u{202c} \u{200b}now\u{feff}\u{2066}!\u{2069}");
    let want = format!("* {an} pays 0001 now!");
    line_until(&mut b, &want);
    ws_until(&mut w, &want);
    a.send(&format!("/msg {bn} p\u{200b}a\u{2029}ss"));
    line_until(&mut a, &format!("-> *{bn}* pa ss"));
    line_until(&mut b, &format!("*{an}* pa ss"));
    a.send(&format!("/msg {wn} \u{202e}olleh"));
    line_until(&mut a, &format!("-> *{wn}* olleh"));
    ws_until(&mut w, &format!("*{an}* olleh"));

    // The same from a browser.
    w.send(Message::text("x\u{2029}<bob> y\u{200b}")).unwrap();
    line_until(&mut a, &format!("<{wn}> x <bob> y"));
    w.send(Message::text(format!("/msg {an} \u{2066}z\u{2028}z")))
        .unwrap();
    ws_until(&mut w, &format!("-> *{an}* z z"));
    line_until(&mut a, &format!("*{wn}* z z"));

    // Quit reasons are relayed too.
    b.send("/quit bye\u{202e}\u{2028}eyb\u{200b}");
    let want = format!("*** {bn} left (quit: bye eyb)");
    line_until(&mut a, &want);
    ws_until(&mut w, &want);
    w.send(Message::text("/quit \u{2067}later")).unwrap();
    line_until(&mut a, &format!("*** {wn} left (quit: later)"));
}

// ------------------------------------------------------------- protocol edges

#[test]
fn a_websocket_length_with_the_top_bit_set_is_closed_with_1002() {
    let server = Server::start(&[]);
    let (mut w, _) = ws_connect(&server);
    // RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.
    let mut f = vec![0x81, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    f.extend_from_slice(b"hello");
    w.get_mut().write_all(&f).unwrap();
    match w.read() {
        Ok(Message::Close(Some(CloseFrame { code, reason }))) => {
            assert_eq!(u16::from(code), 1002, "{reason}");
        }
        other => panic!("expected close 1002, got {other:?}"),
    }
}

/// Sends `request`, reads the answer to the server's close, returns the
/// status code.
fn status_of(server: &Server, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(server.http_addr.expect("web port")).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an answer: {text:?}"))
}

#[test]
fn a_handshake_with_two_websocket_keys_gets_400() {
    let server = Server::start(&[]);
    let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n";
    assert_eq!(status_of(&server, req), 400);
}

#[test]
fn post_with_a_body_gets_405_the_method_is_decided_first() {
    let server = Server::start(&[]);
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(status_of(&server, req), 405);
    let req = b"POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(&server, req), 405);
    // A body on an allowed method is still refused.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(status_of(&server, req), 400);
}

#[test]
fn a_duration_or_size_flag_past_its_maximum_is_refused_at_start_with_status_2() {
    for (flag, value) in [
        ("--http-timeout", "18446744073709551615"),
        ("--http-timeout", "86401"),
        ("--max-line", "16777217"),
        ("--sendq", "1073741825"),
        ("--cluster-queue", "1073741825"),
        ("--keepalive", "32768"),
        ("--idle-timeout", "31536001"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["--port", "0", "--http-port", "0", flag, value])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chatd");
        // A server that accepted the value would run on: that fails too.
        let status = support::wait_exit(&mut child, TIMEOUT);
        let _ = child.kill();
        let err = support::stderr_of(&mut child);
        let _ = child.wait();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{flag} {value}: {err}"
        );
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

// ------------------------------------------------------------- bounded answers

/// Raises RLIMIT_NOFILE to its hard limit (this test and the server it
/// starts each hold one descriptor per connection).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit
        // up to the hard limit needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "this test needs {want} descriptors; the hard limit is {}",
        lim.rlim_max
    );
}

/// The README's bound on a listing: the first 200 entries, then
/// `… and K more`.
const LIST_MAX: usize = 200;

/// The last 200 characters, for a readable failure.
fn tail(s: &str) -> String {
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(200)).collect()
}

#[test]
fn rooms_and_who_answer_within_the_bound_with_5000_rooms() {
    let rooms = 5000;
    raise_nofile(2 * rooms as u64 + 200);
    let server = Server::start(&["--no-http", "-q"]);
    let mut conns = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let mut s = TcpStream::connect(server.addr).unwrap();
        // Never read: the welcome and the join answer wait in the buffers.
        s.write_all(format!("/join r{i:04}\n/part lobby\n").as_bytes())
            .unwrap();
        conns.push(s);
    }
    let mut c = server.client();
    let want = format!("*** rooms ({}): ", rooms + 1);
    let deadline = Instant::now() + TIMEOUT * 6;
    let answer = loop {
        assert!(Instant::now() < deadline, "the rooms were never all there");
        c.send("/rooms");
        let l = c.expect("/rooms", |l| l.starts_with("*** rooms ("));
        if l.starts_with(&want) {
            break l;
        }
    };
    let list = &answer[want.len()..];
    let more = format!(", … and {} more", rooms + 1 - LIST_MAX);
    assert!(list.ends_with(&more), "ends {:?}", tail(list));
    let entries: Vec<&str> = list[..list.len() - more.len()].split(", ").collect();
    assert_eq!(entries.len(), LIST_MAX);
    assert_eq!(entries[0], "#lobby (1)");
    assert_eq!(entries[1], "#r0000 (1)");
    // /who in a huge room: everyone back in the lobby.
    for s in conns.iter_mut() {
        s.write_all(b"/join lobby\n").unwrap();
    }
    let want = format!("*** #lobby ({}): ", rooms + 1);
    let deadline = Instant::now() + TIMEOUT * 6;
    let answer = loop {
        assert!(Instant::now() < deadline, "the lobby never filled");
        c.send("/who");
        let l = c.expect("/who", |l| l.starts_with("*** #lobby ("));
        if l.starts_with(&want) {
            break l;
        }
    };
    let list = &answer[want.len()..];
    let more = format!(", … and {} more", rooms + 1 - LIST_MAX);
    assert!(list.ends_with(&more), "ends {:?}", tail(list));
    let entries = list[..list.len() - more.len()].split(", ").count();
    assert_eq!(entries, LIST_MAX);
}
