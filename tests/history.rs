//! Room history over real sockets: what a late joiner is shown, `/history`
//! and its bounds, the byte bound over all rooms and the memory it keeps
//! the server in, and what never goes into history.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use support::{Client, Server, TIMEOUT, vm_kib};

/// `[HH:MM] ` in UTC, the time a history line was said.
fn stamped(line: &str, rest: &str) -> bool {
    let b = line.as_bytes();
    line.len() == 8 + rest.len()
        && b[0] == b'['
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b':'
        && b[4..6].iter().all(u8::is_ascii_digit)
        && &line[6..8] == "] "
        && &line[8..] == rest
}

/// Lines up to and including `*** end of history`.
fn block(c: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..20_000 {
        let line = c.read_line().expect("history block ends");
        let end = line == "*** end of history";
        got.push(line);
        if end {
            return got;
        }
    }
    panic!("no end of history: {got:?}");
}

#[test]
fn a_late_joiner_sees_the_last_lines_with_their_time_between_markers() {
    let server = Server::start(&["--history-on-join", "3"]);
    let mut a = server.client();
    a.send("/nick alice");
    a.expect_line("*** you are now alice");
    for i in 1..=4 {
        a.send(&format!("hello {i}"));
    }
    a.send("/me waves");
    a.sync();
    let mut b = server.client();
    b.next_is("*** history of #lobby (3 lines, times UTC):");
    let lines = block(&mut b);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(stamped(&lines[0], "<alice> hello 3"), "{lines:?}");
    assert!(stamped(&lines[1], "<alice> hello 4"), "{lines:?}");
    assert!(stamped(&lines[2], "* alice waves"), "{lines:?}");
    assert_eq!(
        b.sync(),
        Vec::<String>::new(),
        "then nothing but live lines"
    );

    // Into another room: that room's history.
    a.send("/join games");
    a.send("in games");
    a.sync();
    b.send("/join games");
    b.expect_line("*** you joined #games (2): @alice, guest-2");
    b.next_is("*** history of #games (1 line, times UTC):");
    let lines = block(&mut b);
    assert!(stamped(&lines[0], "<alice> in games"), "{lines:?}");
}

#[test]
fn history_n_shows_up_to_what_is_kept() {
    let server = Server::start(&["--history", "5", "--history-on-join", "0"]);
    let mut a = server.client();
    let mut b = server.client();
    for i in 1..=8 {
        a.send(&format!("m{i}"));
    }
    a.sync();
    b.sync();
    b.send("/history 2");
    b.next_is("*** history of #lobby (2 lines, times UTC):");
    let lines = block(&mut b);
    assert!(stamped(&lines[0], &format!("<{}> m7", a.name)), "{lines:?}");
    b.send("/history 1000");
    b.next_is("*** history of #lobby (5 lines, times UTC):");
    let lines = block(&mut b);
    assert!(stamped(&lines[0], &format!("<{}> m4", a.name)), "{lines:?}");
    b.send("/history 0");
    b.next_is("*** error: usage: /history [N] or /history since ID");
}

#[test]
fn private_messages_and_notices_never_reach_history() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    a.send(&format!("/msg {} the secret is 42", b.name));
    b.expect_line(&format!("*{}* the secret is 42", a.name));
    b.send("/nick bob");
    b.send("/quit bye");
    a.send("public");
    a.sync();
    let mut c = server.client();
    c.next_is("*** history of #lobby (1 line, times UTC):");
    let lines = block(&mut c);
    assert!(
        stamped(&lines[0], &format!("<{}> public", a.name)),
        "{lines:?}"
    );
    c.send("/history 100");
    let all = block(&mut c).join("\n");
    assert!(!all.contains("secret") && !all.contains("bob"), "{all}");
}

#[test]
fn bounds_are_taken_up_to_their_maximum_and_refused_beyond() {
    for (flag, max, over) in [
        ("--history", "10000", "10001"),
        ("--history-on-join", "10000", "10001"),
        ("--history-bytes", "4294967296", "4294967297"),
        ("--history-ttl", "604800", "604801"),
    ] {
        let server = Server::start(&["--no-http", flag, max]);
        let mut c = server.client();
        assert_eq!(c.sync(), Vec::<String>::new(), "{flag} {max}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["--port", "0", "--no-http", flag, over])
            .output()
            .expect("run chatd");
        assert_eq!(out.status.code(), Some(2), "{flag} {over}");
    }
}

fn metric(http: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix("{node=")?
                .split(' ')
                .nth(1)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
}

/// 20 MB of lines through four rooms in turn, under a 4 MiB bound: the
/// oldest lines (the first room's) go first, and the server's memory grows
/// by the bound and little more, as the README says.
#[test]
fn the_byte_bound_evicts_the_oldest_first_and_holds_the_memory() {
    const BOUND: u64 = 4 << 20;
    let server = Server::start(&["--history", "10000", "--history-bytes", &BOUND.to_string()]);
    let http = server.http_addr.expect("web port");
    let mut a = server.client();
    a.sync();
    let before = vm_kib(server.child.id(), "VmRSS");
    let pad = "h".repeat(1000);
    for room in 0..4 {
        let mut batch = format!("/join r{room}\n");
        for i in 0..5000 {
            batch.push_str(&format!("r{room} n={i} {pad}\n"));
        }
        a.send_raw(batch.as_bytes());
        a.sync();
    }
    let held = metric(http, "chatd_history_bytes");
    let lines = metric(http, "chatd_history_lines");
    assert!(held <= BOUND && held > BOUND - 2048, "{held} bytes held");
    assert!((3000..5000).contains(&lines), "{lines} lines held");
    let grown = vm_kib(server.child.id(), "VmRSS").saturating_sub(before);
    assert!(
        grown < (BOUND >> 10) + 8 * 1024,
        "RSS grew by {grown} KiB for a history bound of {} KiB",
        BOUND >> 10
    );
    // The last room holds the newest lines (more than one answer may
    // carry: a quarter of --sendq); the first, none any more.
    a.send("/history 10000");
    let left_out = a.read_line().unwrap();
    let n: u64 = left_out
        .strip_prefix("*** ")
        .and_then(|l| l.strip_suffix(" older lines left out: too long to send at once"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{left_out}"));
    a.next_is(&format!(
        "*** history of #r3 ({} lines, times UTC):",
        lines - n
    ));
    let kept = block(&mut a);
    assert!(kept.iter().map(|l| l.len() + 2).sum::<usize>() <= (1 << 20) / 4);
    assert!(kept[kept.len() - 2].ends_with(&format!("r3 n=4999 {pad}")));
    a.send("/part r0");
    a.next_is("*** you left #r0; now talking in #r3");
    a.send("/join r0");
    a.next_is("*** you joined #r0 (1): @guest-1");
    assert_eq!(a.sync(), Vec::<String>::new(), "r0's lines were the oldest");
}

/// Issue 26, item 3: 40 000 rooms of one line each, emptied (so each keeps
/// its record for --history-ttl), under a 4 MiB bound: every record is
/// charged, the oldest go, and the server's memory grows by the bound and
/// little more (it held 13.6 MiB when only lines were charged).
#[test]
fn many_one_line_rooms_stay_within_the_byte_bound() {
    const BOUND: u64 = 4 << 20;
    let server = Server::start(&["--history-bytes", &BOUND.to_string()]);
    let http = server.http_addr.expect("web port");
    let mut a = server.client();
    a.sync();
    let before = vm_kib(server.child.id(), "VmRSS");
    for chunk in 0..80 {
        let mut batch = String::new();
        for i in 0..500 {
            // Each room emptied at once: it keeps only its record.
            batch.push_str(&format!("/join r{}\nx\n/part\n", chunk * 500 + i));
        }
        a.send_raw(batch.as_bytes());
        a.sync();
    }
    let held = metric(http, "chatd_history_bytes");
    let lines = metric(http, "chatd_history_lines");
    assert!(held <= BOUND, "{held} bytes charged");
    assert!(lines < 40_000, "{lines} lines held: some rooms had to go");
    let grown = vm_kib(server.child.id(), "VmRSS").saturating_sub(before);
    assert!(
        grown < (BOUND >> 10) + 4 * 1024,
        "RSS grew by {grown} KiB for a history bound of {} KiB",
        BOUND >> 10
    );
}
