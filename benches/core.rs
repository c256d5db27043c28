//! Criterion benches of the pure core: framing throughput and the hub's
//! fan-out cost per delivery. `cargo bench --bench core`.

use chatd::hub::{ClientId, Hub, Outbox};
use chatd::line::{Frame, Framer, sanitize};
use chatd::msg::Msg;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::rc::Rc;

/// Chat-like text: words of 1-9 letters, lines of 20-120 bytes, CRLF.
fn chat_lines(total: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut out = Vec::with_capacity(total + 128);
    while out.len() < total {
        let len = rng.usize(20..120);
        let start = out.len();
        while out.len() - start < len {
            for _ in 0..rng.usize(1..10) {
                out.push(rng.u8(b'a'..=b'z'));
            }
            out.push(b' ');
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn framing(c: &mut Criterion) {
    let input = chat_lines(1 << 20);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(input.len() as u64));
    for chunk in [1460, 65536] {
        g.bench_with_input(
            BenchmarkId::new("frame+sanitize", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let mut f = Framer::new(8192);
                    let mut n = 0;
                    for piece in input.chunks(chunk) {
                        f.feed(piece);
                        while let Some(frame) = f.next_frame() {
                            if let Frame::Line(raw) = frame
                                && let Some(text) = sanitize(raw)
                            {
                                n += text.len();
                            }
                        }
                    }
                    black_box(n)
                })
            },
        );
    }
    g.finish();
}

/// Holds each recipient's queue as the reactor would: a shared pointer per line.
const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Queues(Vec<Vec<Rc<Msg>>>);

impl Outbox for Queues {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        self.0[to.0].push(msg.clone());
    }
    fn close(&mut self, _: ClientId, _: String) {}
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [10usize, 1_000, 10_000] {
        let mut hub = Hub::new(0);
        let mut q = Queues(vec![Vec::new(); n]);
        for id in 0..n {
            hub.connect(ClientId(id), LOCALHOST, &mut q);
        }
        q.0.iter_mut().for_each(Vec::clear);
        let text = "a typical chat line of about sixty-four bytes, give or take";
        g.throughput(Throughput::Elements((n - 1) as u64));
        g.bench_function(BenchmarkId::new("deliveries", n), |b| {
            b.iter(|| {
                hub.line(ClientId(0), black_box(text), &mut q);
                for queue in &mut q.0 {
                    queue.clear();
                }
            })
        });
    }
    g.finish();
}

/// The cost history adds to relaying a line: the same fan-out with
/// --history 0 and --history 100 (the line is kept once, whatever the
/// number of recipients).
fn fanout_history(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_history");
    for n in [10usize, 1_000] {
        for keep in [0usize, 100] {
            let limits = chatd::history::Limits {
                per_room: keep,
                ..chatd::history::Limits::default()
            };
            let mut hub = Hub::new(0).with_history(limits, 20);
            hub.tick(1_800_000_000_000);
            let mut q = Queues(vec![Vec::new(); n]);
            for id in 0..n {
                hub.connect(ClientId(id), LOCALHOST, &mut q);
            }
            q.0.iter_mut().for_each(Vec::clear);
            let text = "a typical chat line of about sixty-four bytes, give or take";
            g.throughput(Throughput::Elements((n - 1) as u64));
            g.bench_function(BenchmarkId::new(format!("history {keep}"), n), |b| {
                b.iter(|| {
                    hub.line(ClientId(0), black_box(text), &mut q);
                    for queue in &mut q.0 {
                        queue.clear();
                    }
                })
            });
        }
    }
    g.finish();
}

/// Issue 22: users in several rooms. 1 000 clients each in 10 of 100 rooms
/// (100 members a room), a line said in every room in turn by a member
/// whose current room it is — so each line reaches 99 members, most of
/// them with the room not current (the `[#room]` buffer) — next to 100
/// clients in one room, the same 99 deliveries a line.
fn fanout_rooms(c: &mut Criterion) {
    let text = "a typical chat line of about sixty-four bytes, give or take";
    let mut g = c.benchmark_group("fanout_rooms");
    g.throughput(Throughput::Elements(99));
    {
        let mut hub = Hub::new(0);
        let mut q = Queues(vec![Vec::new(); 100]);
        for id in 0..100 {
            hub.connect(ClientId(id), LOCALHOST, &mut q);
        }
        q.0.iter_mut().for_each(Vec::clear);
        g.bench_function("one room of 100", |b| {
            b.iter(|| {
                hub.line(ClientId(0), black_box(text), &mut q);
                q.0.iter_mut().for_each(Vec::clear);
            })
        });
    }
    {
        let (n, rooms, each) = (1_000usize, 100usize, 10usize);
        let mut hub = Hub::new(0);
        let mut q = Queues(vec![Vec::new(); n]);
        for id in 0..n {
            hub.connect(ClientId(id), LOCALHOST, &mut q);
            // Rooms id, id+10, ... id+90 (mod 100): the last one joined,
            // (id + 90) % 100, is current.
            for k in 0..each {
                let room = (id + k * (rooms / each)) % rooms;
                hub.line(ClientId(id), &format!("/join r{room}"), &mut q);
            }
        }
        q.0.iter_mut().for_each(Vec::clear);
        // A speaker per room: client r + 10 has r as its current room.
        let speakers: Vec<ClientId> = (0..rooms).map(|r| ClientId((r + 10) % rooms)).collect();
        let mut next = 0;
        g.bench_function("100 rooms, 1000 users in 10 each", |b| {
            b.iter(|| {
                hub.line(speakers[next], black_box(text), &mut q);
                next = (next + 1) % rooms;
                q.0.iter_mut().for_each(Vec::clear);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, framing, fanout, fanout_history, fanout_rooms);
criterion_main!(benches);
