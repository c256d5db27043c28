//! What the server counts for operators (`GET /metrics`) and users (`/stats`).
//!
//! Counting happens on the reactor's hot paths, a delivery being counted for
//! every recipient of every line, so the counters are plain `u64` fields
//! bumped in place: no atomics, no label lookups, no locks. They become
//! Prometheus metrics only when scraped: [`encode`] builds a fresh
//! prometheus-client registry of constant values from a [`Scrape`] and
//! renders it in the OpenMetrics text format, which Prometheus reads.
//!
//! Everything here is pure; the reactor owns a [`Metrics`] and fills in a
//! [`Scrape`] with what only it knows (clients by transport, rooms).

use crate::http::{self, Request};
use crate::hub::ServerStats;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// The media type of what [`encode`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often the lines-per-second window takes a sample.
pub const TICK: Duration = Duration::from_secs(1);
/// The window `/stats` reports lines per second over.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Samples kept: one a tick across the window, plus its far edge.
const RATE_SAMPLES: usize = 61;

/// Upper bounds of the loop-turn histogram, in nanoseconds: 10 µs (a turn
/// that handles a line or two) to 1 s (something is badly wrong).
const TURN_BOUNDS_NS: [u64; 15] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// The server's running totals. Fields are bumped directly by the reactor.
pub struct Metrics {
    /// Lines handed to the hub (chat lines and commands, any transport).
    pub lines_in: u64,
    /// Lines queued for a recipient: one per recipient of each line.
    pub deliveries: u64,
    /// Bytes read from client sockets (line, HTTP and WebSocket).
    pub bytes_in: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// Clients cut off because their queue would pass --sendq.
    pub too_slow: u64,
    /// Lines skipped for slow clients under `--on-slow drop`.
    pub dropped: u64,
    /// Times a client hit --rate and was not read until its bucket refilled.
    pub rate_limited: u64,
    /// accept() failures other than a peer that gave up (EMFILE and such).
    pub accept_errors: u64,
    /// Clients closed by --idle-timeout.
    pub idle_closed: u64,
    /// Connections refused by --max-per-ip.
    pub refused_per_ip: u64,
    /// Connections refused by --max-connects.
    pub refused_rate: u64,
    /// PROXY headers refused (from an untrusted address, or broken).
    pub proxy_refused: u64,
    /// TLS handshakes that failed or did not finish within --http-timeout.
    pub tls_failed: u64,
    turns: TurnHistogram,
    started: Instant,
    started_wall: SystemTime,
    /// `(when, lines_in)` once a tick, oldest first.
    samples: VecDeque<(Instant, u64)>,
    next_tick: Instant,
}

impl Metrics {
    pub fn new(now: Instant) -> Metrics {
        let mut samples = VecDeque::with_capacity(RATE_SAMPLES);
        samples.push_back((now, 0));
        Metrics {
            lines_in: 0,
            deliveries: 0,
            bytes_in: 0,
            bytes_out: 0,
            too_slow: 0,
            dropped: 0,
            rate_limited: 0,
            accept_errors: 0,
            idle_closed: 0,
            refused_per_ip: 0,
            refused_rate: 0,
            proxy_refused: 0,
            tls_failed: 0,
            turns: TurnHistogram::default(),
            started: now,
            started_wall: SystemTime::now(),
            samples,
            next_tick: now + TICK,
        }
    }

    /// Records how long one turn of the loop took (poll excluded).
    pub fn turn(&mut self, took: Duration) {
        self.turns.observe(took);
    }

    /// When [`Metrics::tick`] wants to run next.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// Samples the line count for the lines-per-second window; call when
    /// [`Metrics::next_tick`] has passed.
    pub fn tick(&mut self, now: Instant) {
        if self.samples.len() == RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, self.lines_in));
        self.next_tick = now + TICK;
    }

    /// Lines received per second over the last minute, or since start when
    /// that is less than a minute ago.
    pub fn lines_per_sec(&self, now: Instant) -> f64 {
        // The newest sample at least a window old; else the oldest there is.
        let edge = now.checked_sub(RATE_WINDOW);
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| edge.is_some_and(|e| *t <= e))
            .or(self.samples.front())
            .copied()
            .unwrap_or((self.started, 0));
        let span = now.saturating_duration_since(base.0).as_secs_f64();
        let lines = self.lines_in.saturating_sub(base.1) as f64;
        // Under a second of history says little; do not divide by ~0.
        lines / span.max(1.0)
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub fn server_stats(&self, now: Instant) -> ServerStats {
        ServerStats {
            uptime: self.uptime(now),
            lines_per_sec: self.lines_per_sec(now),
        }
    }
}

/// Loop-turn durations in fixed buckets; observing is a few compares and
/// two adds, and the buckets are read only when scraped.
#[derive(Default, Clone, Debug)]
struct TurnHistogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: [u64; TURN_BOUNDS_NS.len() + 1],
    sum_ns: u128,
    count: u64,
}

impl TurnHistogram {
    fn observe(&mut self, took: Duration) {
        let ns = took.as_nanos();
        let i = TURN_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b as u128)
            .unwrap_or(TURN_BOUNDS_NS.len());
        self.counts[i] += 1;
        self.sum_ns += ns;
        self.count += 1;
    }
}

impl EncodeMetric for TurnHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = TURN_BOUNDS_NS
            .iter()
            .map(|&b| b as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect();
        let sum = self.sum_ns as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The cluster link's figures: the link counts into one of these
/// (`cluster::Link::stats` hands a copy, `link_up` filled in from its
/// state), and when the reactor runs with a cluster link [`encode`] adds
/// them as the `chatd_cluster_*` metrics. One type for both, so a counter
/// added to the link cannot be forgotten here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cluster {
    /// The link to Redis is up (subscribed and able to publish).
    pub link_up: bool,
    /// Messages published to the other nodes.
    pub published: u64,
    /// Messages received from the other nodes.
    pub received: u64,
    /// Messages not published because the queue to Redis was full.
    pub dropped: u64,
    /// Times the link came back up after it had been up.
    pub reconnects: u64,
    /// Attempts to connect (and authenticate) that failed.
    pub connect_failures: u64,
    /// Commands Redis refused (wrong password, missing ACL right, ...).
    pub refused: u64,
    /// Messages from Redis dropped as malformed.
    pub malformed: u64,
    /// Times the link was dropped because Redis did not answer in time.
    pub timeouts: u64,
    /// The other instances' users in this one's mirror (the hub's figure,
    /// filled in by the reactor).
    pub remote_users: u64,
    /// Remote users left out of the mirror, which was full
    /// (`--max-remote-users`).
    pub remote_refused: u64,
}

/// Everything one scrape shows: the running totals plus what the reactor
/// and the hub know at this moment.
pub struct Scrape<'a> {
    pub node_id: &'a str,
    pub metrics: &'a Metrics,
    pub line_clients: u64,
    pub ws_clients: u64,
    pub rooms: u64,
    pub lines_relayed: u64,
    /// Room history held on this instance: lines, and bytes as charged
    /// against --history-bytes.
    pub history_lines: u64,
    pub history_bytes: u64,
    /// Wrong passwords, kicks, bans, mutes.
    pub moderation: crate::hub::Moderation,
    /// None when not in a cluster.
    pub cluster: Option<Cluster>,
}

/// Renders a scrape as OpenMetrics text, every metric labelled
/// `node="<node id>"`.
pub fn encode(s: &Scrape) -> String {
    let m = s.metrics;
    let node = [(Cow::Borrowed("node"), Cow::Owned(s.node_id.to_string()))];
    let mut r = Registry::with_prefix_and_labels("chatd", node.into_iter());
    r.register(
        "build",
        "The chatd version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register_with_unit(
        "start_time",
        "When the server started, in seconds since the Unix epoch",
        Unit::Seconds,
        ConstGauge::new(
            m.started_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        ),
    );
    let clients = Family::<[(&str, &str); 1], Gauge>::default();
    for (transport, n) in [("line", s.line_clients), ("websocket", s.ws_clients)] {
        clients
            .get_or_create(&[("transport", transport)])
            .set(n as i64);
    }
    r.register("clients", "This instance's clients, by transport", clients);
    r.register("rooms", "Rooms with at least one member", gauge(s.rooms));
    r.register(
        "history_lines",
        "Room history lines held on this instance",
        gauge(s.history_lines),
    );
    r.register_with_unit(
        "history",
        "Room history held on this instance, as charged against --history-bytes",
        Unit::Bytes,
        gauge(s.history_bytes),
    );
    for (name, help, value) in [
        (
            "lines_received",
            "Lines received from clients, commands included",
            m.lines_in,
        ),
        (
            "lines_relayed",
            "Chat lines passed on to others (messages, /me, /msg)",
            s.lines_relayed,
        ),
        (
            "deliveries",
            "Lines queued for a recipient, one per recipient",
            m.deliveries,
        ),
        (
            "slow_disconnects",
            "Clients cut off for reading too slowly (--sendq)",
            m.too_slow,
        ),
        (
            "dropped_lines",
            "Lines skipped for slow clients under --on-slow drop",
            m.dropped,
        ),
        (
            "rate_limited",
            "Times a client was paused by --rate",
            m.rate_limited,
        ),
        (
            "accept_errors",
            "Failed accepts, such as running out of file descriptors",
            m.accept_errors,
        ),
        (
            "idle_disconnects",
            "Clients closed by --idle-timeout",
            m.idle_closed,
        ),
        (
            "refused_per_ip",
            "Connections refused: --max-per-ip from one address",
            m.refused_per_ip,
        ),
        (
            "refused_connect_rate",
            "Connections refused: --max-connects new ones from one address",
            m.refused_rate,
        ),
        (
            "proxy_refused",
            "PROXY protocol headers refused (untrusted source or broken)",
            m.proxy_refused,
        ),
        (
            "tls_failed",
            "TLS handshakes that failed or timed out",
            m.tls_failed,
        ),
        (
            "password_failures",
            "Wrong passwords given (/pass and /oper)",
            s.moderation.password_failures,
        ),
        ("kicks", "Users kicked by an operator", s.moderation.kicks),
        ("bans", "Bans set by an operator", s.moderation.bans),
        ("mutes", "Users muted by an operator", s.moderation.mutes),
        (
            "banned_refused",
            "Connections refused because their address is banned",
            s.moderation.banned_refused,
        ),
    ] {
        r.register(name, help, ConstCounter::new(value));
    }
    r.register_with_unit(
        "received",
        "Bytes read from client sockets",
        Unit::Bytes,
        ConstCounter::new(m.bytes_in),
    );
    r.register_with_unit(
        "sent",
        "Bytes written to client sockets",
        Unit::Bytes,
        ConstCounter::new(m.bytes_out),
    );
    r.register_with_unit(
        "loop_turn",
        "Time one turn of the event loop spends working (waiting in poll excluded)",
        Unit::Seconds,
        m.turns.clone(),
    );
    if let Some(c) = &s.cluster {
        let cl = r.sub_registry_with_prefix("cluster");
        cl.register(
            "link_up",
            "1 while the link to the cluster's Redis is up",
            gauge(c.link_up as u64),
        );
        cl.register(
            "published",
            "Messages published to the other nodes",
            ConstCounter::new(c.published),
        );
        cl.register(
            "received",
            "Messages received from the other nodes",
            ConstCounter::new(c.received),
        );
        cl.register(
            "dropped",
            "Messages not published because the queue to Redis was full (--cluster-queue)",
            ConstCounter::new(c.dropped),
        );
        cl.register(
            "reconnects",
            "Times the cluster link came back up after it had been up",
            ConstCounter::new(c.reconnects),
        );
        cl.register(
            "connect_failures",
            "Attempts to connect to Redis that failed (unreachable, wrong password, no answer)",
            ConstCounter::new(c.connect_failures),
        );
        cl.register(
            "refused",
            "Commands Redis answered with an error (wrong password, missing ACL right, failed script)",
            ConstCounter::new(c.refused),
        );
        cl.register(
            "malformed",
            "Messages from Redis dropped as malformed (not from a chatd instance)",
            ConstCounter::new(c.malformed),
        );
        cl.register(
            "timeouts",
            "Times the link was dropped because Redis did not answer within --cluster-timeout",
            ConstCounter::new(c.timeouts),
        );
        cl.register(
            "remote_users",
            "Users of the other instances this one keeps track of",
            gauge(c.remote_users),
        );
        cl.register(
            "remote_refused",
            "Users of other instances left out because the mirror was full (--max-remote-users)",
            ConstCounter::new(c.remote_refused),
        );
    }
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail; an error would mean a bug in a
    // metric's encoder, and a partial page is still better than none.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The whole HTTP answer to a request for `/metrics`.
pub fn answer(req: &Request, s: &Scrape) -> Vec<u8> {
    if req.method != "GET" && !req.is_head() {
        return http::response(
            405,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            false,
            &[("Allow", "GET, HEAD")],
        );
    }
    if req.has_body {
        return http::Route::BodyRefused.response(false);
    }
    http::response(200, CONTENT_TYPE, encode(s).as_bytes(), req.is_head(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics, cluster: Option<Cluster>) -> String {
        encode(&Scrape {
            node_id: "n1",
            metrics: m,
            line_clients: 3,
            ws_clients: 1,
            rooms: 2,
            lines_relayed: 5,
            history_lines: 3,
            history_bytes: 400,
            moderation: crate::hub::Moderation {
                password_failures: 3,
                kicks: 1,
                bans: 2,
                mutes: 4,
                banned_refused: 5,
            },
            cluster,
        })
    }

    #[test]
    fn every_metric_is_there_with_the_node_label() {
        let t0 = Instant::now();
        let mut m = Metrics::new(t0);
        m.lines_in = 7;
        m.deliveries = 21;
        m.bytes_in = 100;
        m.bytes_out = 2000;
        m.too_slow = 1;
        m.dropped = 4;
        m.rate_limited = 2;
        m.accept_errors = 6;
        m.turn(Duration::from_micros(5));
        m.turn(Duration::from_micros(30));
        m.turn(Duration::from_secs(2));
        let text = scrape(&m, None);
        for want in [
            "chatd_clients{node=\"n1\",transport=\"line\"} 3",
            "chatd_clients{node=\"n1\",transport=\"websocket\"} 1",
            "chatd_rooms{node=\"n1\"} 2",
            "chatd_lines_received_total{node=\"n1\"} 7",
            "chatd_lines_relayed_total{node=\"n1\"} 5",
            "chatd_history_lines{node=\"n1\"} 3",
            "chatd_history_bytes{node=\"n1\"} 400",
            "chatd_deliveries_total{node=\"n1\"} 21",
            "chatd_received_bytes_total{node=\"n1\"} 100",
            "chatd_sent_bytes_total{node=\"n1\"} 2000",
            "chatd_slow_disconnects_total{node=\"n1\"} 1",
            "chatd_dropped_lines_total{node=\"n1\"} 4",
            "chatd_rate_limited_total{node=\"n1\"} 2",
            "chatd_accept_errors_total{node=\"n1\"} 6",
            "chatd_idle_disconnects_total{node=\"n1\"} 0",
            "chatd_password_failures_total{node=\"n1\"} 3",
            "chatd_kicks_total{node=\"n1\"} 1",
            "chatd_bans_total{node=\"n1\"} 2",
            "chatd_mutes_total{node=\"n1\"} 4",
            "chatd_banned_refused_total{node=\"n1\"} 5",
            "chatd_loop_turn_seconds_count{node=\"n1\"} 3",
            "chatd_loop_turn_seconds_sum{node=\"n1\"} 2.000035",
            "chatd_loop_turn_seconds_bucket{node=\"n1\",le=\"0.00001\"} 1",
            "chatd_loop_turn_seconds_bucket{node=\"n1\",le=\"0.000025\"} 1",
            "chatd_loop_turn_seconds_bucket{node=\"n1\",le=\"0.00005\"} 2",
            "chatd_loop_turn_seconds_bucket{node=\"n1\",le=\"1.0\"} 2",
            "chatd_loop_turn_seconds_bucket{node=\"n1\",le=\"+Inf\"} 3",
            "# TYPE chatd_loop_turn_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
        }
        assert!(text.contains("chatd_build_info{node=\"n1\",version=\""));
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("cluster"), "no cluster metrics outside one");
    }

    #[test]
    fn cluster_metrics_appear_when_there_is_a_cluster() {
        let m = Metrics::new(Instant::now());
        let text = scrape(
            &m,
            Some(Cluster {
                link_up: true,
                published: 3,
                received: 4,
                dropped: 2,
                reconnects: 1,
                connect_failures: 5,
                refused: 6,
                malformed: 7,
                timeouts: 8,
                remote_users: 9,
                remote_refused: 10,
            }),
        );
        for want in [
            "chatd_cluster_link_up{node=\"n1\"} 1",
            "chatd_cluster_published_total{node=\"n1\"} 3",
            "chatd_cluster_received_total{node=\"n1\"} 4",
            "chatd_cluster_dropped_total{node=\"n1\"} 2",
            "chatd_cluster_reconnects_total{node=\"n1\"} 1",
            "chatd_cluster_connect_failures_total{node=\"n1\"} 5",
            "chatd_cluster_refused_total{node=\"n1\"} 6",
            "chatd_cluster_malformed_total{node=\"n1\"} 7",
            "chatd_cluster_timeouts_total{node=\"n1\"} 8",
            "chatd_cluster_remote_users{node=\"n1\"} 9",
            "chatd_cluster_remote_refused_total{node=\"n1\"} 10",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
        }
    }

    #[test]
    fn lines_per_second_over_the_last_minute() {
        let t0 = Instant::now();
        let mut m = Metrics::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(m.lines_per_sec(t0), 0.0);
        // 10 lines a second for the first 30 s, then silence.
        for s in 1..=30 {
            m.lines_in += 10;
            m.tick(at(s));
        }
        assert_eq!(m.lines_per_sec(at(30)), 10.0, "since start, under a minute");
        for s in 31..=60 {
            m.tick(at(s));
        }
        assert_eq!(m.lines_per_sec(at(60)), 5.0);
        for s in 61..=90 {
            m.tick(at(s));
        }
        assert_eq!(m.lines_per_sec(at(90)), 0.0, "the burst left the window");
        m.lines_in += 120;
        assert_eq!(m.lines_per_sec(at(90)), 2.0);
        // Less than a second after start is not divided by ~0.
        let fresh = Metrics {
            lines_in: 3,
            ..Metrics::new(t0)
        };
        assert_eq!(fresh.lines_per_sec(t0 + Duration::from_millis(10)), 3.0);
    }

    #[test]
    fn rate_window_is_bounded() {
        let t0 = Instant::now();
        let mut m = Metrics::new(t0);
        for s in 1..=1000 {
            m.tick(t0 + Duration::from_secs(s));
        }
        assert_eq!(m.samples.len(), RATE_SAMPLES);
    }

    #[test]
    fn metrics_answers_get_and_head_and_refuses_other_methods() {
        let m = Metrics::new(Instant::now());
        let s = Scrape {
            node_id: "x",
            metrics: &m,
            line_clients: 0,
            ws_clients: 0,
            rooms: 0,
            lines_relayed: 0,
            history_lines: 0,
            history_bytes: 0,
            moderation: Default::default(),
            cluster: None,
        };
        let req = |method: &str| Request {
            method: method.into(),
            path: "/metrics".into(),
            version: 1,
            connection_upgrade: false,
            upgrade_websocket: false,
            websocket_version: None,
            websocket_key: None,
            has_body: false,
        };
        let get = String::from_utf8(answer(&req("GET"), &s)).unwrap();
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(get.ends_with("# EOF\n"));
        let head = String::from_utf8(answer(&req("HEAD"), &s)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        let post = String::from_utf8(answer(&req("POST"), &s)).unwrap();
        assert!(post.starts_with("HTTP/1.1 405 "));
        assert!(post.contains("Allow: GET, HEAD\r\n"));
    }
}
