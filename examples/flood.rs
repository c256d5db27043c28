//! End-to-end fan-out throughput of a running chatd, through its real
//! reactor (queues, writev, counters), not just the hub:
//!
//!   cargo build --release && target/release/chatd --port 3000 --no-http &
//!   cargo run --release --example flood -- 127.0.0.1:3000 1000 1000
//!
//! Connects RECEIVERS clients (default 1000) that only read, waits until
//! each has its welcome, then one more client sends LINES lines (default
//! 1000), and times until every receiver has every line. Prints deliveries
//! per second. Needs `ulimit -n` above RECEIVERS + a few, for both sides.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Receiver {
    sock: TcpStream,
    /// Chat lines seen (lines starting with '<'); server notices start with '*'.
    lines: usize,
    newlines: usize,
    at_line_start: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map(|a| a.parse().expect("ADDR like 127.0.0.1:3000"))
        .unwrap_or_else(|| "127.0.0.1:3000".parse().unwrap());
    let n: usize = args.get(2).map_or(1000, |a| a.parse().expect("RECEIVERS"));
    let m: usize = args.get(3).map_or(1000, |a| a.parse().expect("LINES"));

    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut rx: Vec<Receiver> = Vec::with_capacity(n);
    for i in 0..n {
        let std = std::net::TcpStream::connect(addr).expect("connect");
        std.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(std);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)
            .unwrap();
        rx.push(Receiver {
            sock,
            lines: 0,
            newlines: 0,
            at_line_start: true,
        });
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain = |poll: &mut Poll, rx: &mut [Receiver], done: &dyn Fn(&[Receiver]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(rx) {
            assert!(Instant::now() < deadline, "timed out");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                let r = &mut rx[ev.token().0];
                loop {
                    match r.sock.read(&mut buf) {
                        Ok(0) => panic!("server closed a receiver"),
                        Ok(k) => {
                            for &b in &buf[..k] {
                                if r.at_line_start && b == b'<' {
                                    r.lines += 1;
                                }
                                r.at_line_start = b == b'\n';
                                r.newlines += (b == b'\n') as usize;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
        }
    };
    // Everyone is in the room once everyone has had a line (the welcome).
    drain(&mut poll, &mut rx, &|rx| rx.iter().all(|r| r.newlines > 0));

    let mut sender = std::net::TcpStream::connect(addr).expect("connect sender");
    let text = "a typical chat line of about sixty-four bytes, give or take\n";
    let batch: Vec<u8> = text.repeat(m).into_bytes();
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        sender.write_all(&batch).unwrap();
        sender
    });
    drain(&mut poll, &mut rx, &|rx| rx.iter().all(|r| r.lines >= m));
    let took = start.elapsed();
    let _sender = writer.join().unwrap();
    let deliveries = (n * m) as f64;
    println!(
        "{n} receivers x {m} lines = {deliveries} deliveries in {:.3} s: {:.2} M deliveries/s",
        took.as_secs_f64(),
        deliveries / took.as_secs_f64() / 1e6
    );
}
