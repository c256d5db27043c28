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

criterion_group!(benches, framing, fanout, fanout_history);
criterion_main!(benches);
