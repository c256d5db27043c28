//! Issue 2: the core line relay, driven over real sockets against the real
//! binary. Every wait is on something a client reads, with a timeout.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Client, Server, TIMEOUT};

#[test]
fn a_line_reaches_every_other_client_and_not_its_sender() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    a.expect_line(&format!("*** {} joined", b.name));
    a.expect_line(&format!("*** {} joined", c.name));
    b.expect_line(&format!("*** {} joined", c.name));
    a.send("hello, world");
    b.next_is(&format!("<{}> hello, world", a.name));
    c.next_is(&format!("<{}> hello, world", a.name));
    assert_eq!(a.sync(), Vec::<String>::new(), "no echo to the sender");
}

#[test]
fn welcome_names_the_client_and_counts_who_is_online() {
    let server = Server::start(&[]);
    let _a = server.client();
    let mut b = Client::connect_raw(server.addr);
    let welcome = b.read_line().unwrap();
    assert!(
        welcome.starts_with("*** welcome to chatd, guest-2!"),
        "{welcome}"
    );
    assert!(welcome.contains("1 other user online"), "{welcome}");
}

#[test]
fn lines_from_one_sender_arrive_in_order() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("line {i}\r\n"));
    }
    a.send_raw(batch.as_bytes());
    for i in 0..2000 {
        b.next_is(&format!("<{}> line {i}", a.name));
    }
}

#[test]
fn leaving_is_announced_with_the_reason_where_there_is_one() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let b = server.client();
    a.expect_line(&format!("*** {} joined", b.name));
    let name = b.name.clone();
    drop(b);
    a.next_is(&format!("*** {name} left"));

    let mut c = server.client();
    a.expect_line(&format!("*** {} joined", c.name));
    c.send("/quit");
    c.next_is("*** bye");
    a.next_is(&format!("*** {} left (quit)", c.name));

    // A reset (RST, not FIN): SO_LINGER 0 makes close() abort the connection.
    let d = server.client();
    a.expect_line(&format!("*** {} joined", d.name));
    socket2::SockRef::from(&d.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let name = d.name.clone();
    drop(d);
    a.next_is(&format!("*** {name} left (connection reset)"));
}

#[test]
fn blank_lines_are_ignored_and_crlf_or_lf_both_end_a_line() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    a.send_raw(b"\r\n   \n\t\r\none\r\ntwo\n");
    b.next_is(&format!("<{}> one", a.name));
    b.next_is(&format!("<{}> two", a.name));
}

#[test]
fn control_characters_and_telnet_negotiation_are_removed() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    // ESC sequences, BEL, DEL, a C1 CSI, telnet WILL/SB..SE, tab kept.
    a.send_raw(
        b"\x1b[2Jclear\x07 \x7fme\xc2\x9b\tok\xff\xfb\x1f\xff\xfa\x18\x00xterm\xff\xf0!\r\n",
    );
    b.next_is(&format!("<{}> [2Jclear me\tok!", a.name));
    // Invalid UTF-8 is replaced, not rejected.
    a.send_raw(b"caf\xe9 \xc3\x28\n");
    b.next_is(&format!("<{}> caf\u{fffd} \u{fffd}(", a.name));
}

#[test]
fn a_100_mib_line_is_refused_discarded_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    a.next_is(&format!("*** {} joined", b.name));
    let mut w = a.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"\nafter\n").unwrap();
    });
    a.next_is("*** error: line too long (max 8192 bytes)");
    writer.join().unwrap();
    b.next_is(&format!("<{}> after", a.name));
    assert_eq!(
        a.sync(),
        Vec::<String>::new(),
        "one error for one long line"
    );
    let rss = support::vm_kib(server.child.id(), "VmHWM");
    assert!(
        rss < 64 * 1024,
        "server peak RSS {rss} KiB: the long line was buffered"
    );
}

#[test]
fn max_line_is_a_flag_and_counts_bytes_without_the_line_end() {
    let server = Server::start(&["--max-line", "10"]);
    let mut a = server.client();
    let mut b = server.client();
    a.next_is(&format!("*** {} joined", b.name));
    a.send("0123456789");
    b.next_is(&format!("<{}> 0123456789", a.name));
    a.send("0123456789A");
    a.next_is("*** error: line too long (max 10 bytes)");
    a.send("ok");
    b.next_is(&format!("<{}> ok", a.name));
}

#[test]
fn one_client_past_max_clients_is_told_the_server_is_full() {
    let server = Server::start(&["--max-clients", "2"]);
    let mut a = server.client();
    let mut b = server.client();
    a.next_is(&format!("*** {} joined", b.name));
    let mut c = Client::connect_raw(server.addr);
    assert_eq!(
        c.read_line().as_deref(),
        Some("*** error: server full (2 clients)")
    );
    assert_eq!(c.read_line(), None, "then closed");
    a.send("still here");
    b.next_is(&format!("<{}> still here", a.name));
    // A freed place can be taken again.
    drop(b);
    a.expect("a left notice", |l| l.ends_with(" left"));
    let mut d = server.client();
    a.next_is(&format!("*** {} joined", d.name));
    d.send("in");
    a.next_is(&format!("<{}> in", d.name));
}

/// Reads every line a client gets in a thread: counts the lines carrying
/// `tag` and checks their numbers are consecutive; flags `done` on `stop`.
fn reader(
    mut c: Client,
    tag: String,
    stop: String,
    seen: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut notices = Vec::new();
        let mut next = 0usize;
        while let Some(line) = c.read_line() {
            if let Some(pos) = line.find(&tag) {
                let n: usize = line[pos + tag.len()..]
                    .split(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad line {line:?}"));
                assert_eq!(n, next, "lines out of order or missing");
                next += 1;
                seen.store(next, Ordering::Relaxed);
            } else {
                notices.push(line.clone());
                if line.contains(&stop) {
                    done.store(true, Ordering::Relaxed);
                    return notices;
                }
            }
        }
        notices
    })
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    // One turn reads up to 64 KiB from the sender and queues all of it for
    // every reader before flushing: --sendq must hold that much plus each
    // entry's bookkeeping, or even a fast reader overflows within a turn.
    let server = Server::start(&["--sendq", "131072"]);
    let mut sender = server.client();
    let fast = server.client();
    let mut slow = server.client();
    let slow_name = slow.name.clone();
    sender.expect_line(&format!("*** {} joined", slow.name));
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let stop = format!("*** {slow_name} left (too slow)");
    let fast_thread = reader(
        fast,
        "seq=".into(),
        stop.clone(),
        seen.clone(),
        done.clone(),
    );
    support::send_until(&mut sender, &done);
    sender.send("/who");
    sender.expect(&stop, |l| l == stop);
    sender.send("last");
    let _ = sender.sync();
    // The fast reader must still get every line, in order, then the stop.
    let notices = fast_thread.join().unwrap();
    assert!(notices.contains(&stop), "{notices:?}");
    assert!(seen.load(Ordering::Relaxed) > 0);
    let rss = support::vm_kib(server.child.id(), "VmHWM");
    assert!(
        rss < 96 * 1024,
        "server peak RSS {rss} KiB should stay bounded"
    );
    // The slow client finds its connection closed once it reads.
    slow.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    let _ = slow.reader.read_to_end(&mut sink);
}

#[test]
fn with_on_slow_drop_a_slow_reader_is_warned_and_told_what_it_missed() {
    let server = Server::start(&["--sendq", "16384", "--on-slow", "drop"]);
    let mut sender = server.client();
    let mut slow = server.client();
    sender.expect_line(&format!("*** {} joined", slow.name));
    let total = 40_000;
    // Every line has been handled (queued or dropped) when this returns.
    support::send_many(&mut sender, total);
    let mut got = 0;
    let mut last = None;
    let mut dropped = 0;
    let mut warned = false;
    while got + dropped < total {
        let line = slow.read_line().expect("slow reader line");
        if let Some(rest) = line.strip_prefix(&format!("<{}> n=", sender.name)) {
            let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
            assert!(last.is_none_or(|l| n > l), "order: {n} after {last:?}");
            last = Some(n);
            got += 1;
        } else if line.starts_with("*** warning: you are falling behind (") {
            warned = true;
        } else if let Some(rest) = line.strip_prefix("*** ") {
            let n: usize = rest
                .strip_suffix(" lines dropped (you fell behind)")
                .or_else(|| rest.strip_suffix(" line dropped (you fell behind)"))
                .unwrap_or_else(|| panic!("unexpected {line:?}"))
                .parse()
                .unwrap();
            dropped += n;
        }
    }
    assert!(warned, "a warning came before lines were dropped");
    assert!(dropped > 0, "the queue overflowed");
    assert_eq!(
        got + dropped,
        total,
        "every line delivered or accounted for"
    );
}

#[test]
fn a_flooder_does_not_starve_the_others() {
    let server = Server::start(&[]);
    let mut flooder = server.client();
    let mut b = server.client();
    let c = server.client();
    flooder.expect_line(&format!("*** {} joined", c.name));
    b.expect_line(&format!("*** {} joined", c.name));
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = flooder.stream.try_clone().unwrap();
    let stop2 = stop.clone();
    let flood = std::thread::spawn(move || {
        let line = format!("{}\n", "f".repeat(200)).repeat(100);
        let mut sent = 0u64;
        while !stop2.load(Ordering::Relaxed) && sent < 1_000_000 {
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += 100;
        }
        sent
    });
    // Nobody but c looks at what the flooder and b receive, but they must
    // keep reading or the server rightly cuts them off as too slow.
    for stream in [&flooder.stream, &b.stream] {
        let mut r = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut sink = [0u8; 65536];
            while r.read(&mut sink).is_ok_and(|n| n > 0) {}
        });
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let (seen2, stop3) = (seen.clone(), stop.clone());
    let c_thread = std::thread::spawn(move || {
        let mut c = c;
        let mut flood_after = 0;
        let mut got_b = false;
        while let Some(line) = c.read_line() {
            if line.ends_with("fffff") {
                seen2.fetch_add(1, Ordering::Relaxed);
                if got_b {
                    flood_after += 1;
                    if flood_after == 1000 {
                        break;
                    }
                }
            } else if line.ends_with("> from b") {
                got_b = true;
            }
        }
        stop3.store(true, Ordering::Relaxed);
        (got_b, flood_after)
    });
    // Wait until the flood is well under way, then speak.
    let mut waited = 0;
    while seen.load(Ordering::Relaxed) < 2000 && waited < 1000 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    b.send("from b");
    let (got_b, flood_after) = c_thread.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(got_b, "b's line never came through the flood");
    assert_eq!(
        flood_after, 1000,
        "the flood was still running when b's line arrived"
    );
    flood.join().unwrap();
}

#[test]
fn half_close_delivers_the_lines_then_closes() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    a.expect_line(&format!("*** {} joined", b.name));
    b.send_raw(b"one\ntwo\nunterminated");
    b.shutdown_write();
    a.next_is(&format!("<{}> one", b.name));
    a.next_is(&format!("<{}> two", b.name));
    a.next_is(&format!("<{}> unterminated", b.name));
    a.next_is(&format!("*** {} left", b.name));
    assert_eq!(b.read_to_eof(), "", "the server closed its side");
}

#[test]
fn rate_limited_clients_lose_nothing_and_do_not_hold_up_others() {
    let server = Server::start(&["--rate", "10", "--burst", "1"]);
    let mut f = server.client();
    let mut b = server.client();
    let mut c = server.client();
    f.expect_line(&format!("*** {} joined", c.name));
    b.expect_line(&format!("*** {} joined", c.name));
    let mut batch = String::new();
    for i in 0..30 {
        batch.push_str(&format!("r{i}\n"));
    }
    f.send_raw(batch.as_bytes());
    c.next_is(&format!("<{}> r0", f.name));
    // f is now throttled to 10 lines a second; b is not held up behind it.
    b.send("from b");
    let mut before_b = 0;
    loop {
        let line = c.read_line().expect("line");
        if line == format!("<{}> from b", b.name) {
            break;
        }
        before_b += 1;
    }
    assert!(
        before_b < 29,
        "b's line waited for the whole throttled batch"
    );
    let mut next = before_b + 1;
    while next < 30 {
        c.next_is(&format!("<{}> r{next}", f.name));
        next += 1;
    }
}

#[test]
fn sigterm_and_sigint_say_goodbye_flush_and_exit_zero() {
    for sig in ["TERM", "INT"] {
        let mut server = Server::start(&[]);
        let mut a = server.client();
        let mut b = server.client();
        let status = server.signal_and_wait(sig);
        assert!(status.success(), "SIG{sig}: {status:?}");
        a.expect_line("*** server shutting down");
        assert_eq!(a.read_to_eof(), "");
        b.expect_line("*** server shutting down");
    }
}

#[test]
fn out_of_descriptors_the_server_keeps_serving_without_spinning() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -n 16 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_chatd"),
    ]);
    let server = Server::start_with(cmd, &[]);
    let mut clients = Vec::new();
    let mut waiting = None;
    for _ in 0..40 {
        let mut c = Client::connect_raw(server.addr);
        c.stream
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        match c.read_line() {
            Some(l) => {
                c.name = support::parse_welcome_name(&l).unwrap();
                clients.push(c);
            }
            None => {
                waiting = Some(c);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("the descriptor limit was never reached");
    assert!(clients.len() >= 2, "only {} clients fit", clients.len());
    // Still serving the clients it has.
    let name0 = clients[0].name.clone();
    clients[0].send("still alive");
    clients[1].expect_line(&format!("<{name0}> still alive"));
    // Not spinning: well under half a CPU second over a second of waiting.
    let before = cpu_ticks(server.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.child.id()) - before;
    assert!(
        used < 50,
        "server used {used} ticks of CPU in 1 s while out of fds"
    );
    // Free descriptors: the waiting connection is accepted and welcomed.
    clients.truncate(clients.len() - 3);
    waiting.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let welcome = waiting
        .read_line()
        .expect("welcome once descriptors free up");
    assert!(welcome.starts_with("*** welcome"), "{welcome}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
