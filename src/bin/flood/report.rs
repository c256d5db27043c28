//! The human summary and the `--json` object.

use serde_json::{Value, json};

use crate::conn::Transport;
use crate::engine::{Config, Outcome};
use crate::hist::Histogram;

pub struct Report<'a> {
    pub cfg: &'a Config,
    pub out: &'a Outcome,
}

/// "1 sender", "2 senders".
pub fn plural(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} ms", us as f64 / 1e3)
    }
}

/// "p50 …  p90 …  p99 …  p99.9 …  max …", the summary's latency columns.
fn percentiles(h: &Histogram) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.9)),
        ms(h.quantile(0.99)),
        ms(h.quantile(0.999)),
        ms(h.max())
    )
}

fn transport(c: &Config) -> &'static str {
    match c.transport {
        Transport::Lines => "tcp",
        Transport::WebSocket => "ws",
        Transport::SocketIo => "socket.io",
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report<'_> {
    pub fn ok(&self) -> bool {
        let o = self.out;
        o.missing == 0
            && o.out_of_order == 0
            && o.duplicates == 0
            && o.closed_by_server == 0
            && o.connect_failed == 0
            && o.lost_before_start == 0
            && !o.stalled
    }

    fn mode(&self) -> &'static str {
        if self.cfg.idle {
            "idle"
        } else if self.cfg.slow > 0 {
            "slow"
        } else {
            "flood"
        }
    }

    fn secs(&self) -> f64 {
        self.out.duration.as_secs_f64()
    }

    /// Server RSS growth per held connection, in bytes, over the connect phase.
    fn rss_per_conn(&self) -> Option<f64> {
        let st = self.out.server.as_ref()?;
        let conns = self.out.connected.max(1) as f64;
        let grown = st
            .at_start
            .rss_kib
            .saturating_sub(st.before_connect.rss_kib);
        Some(grown as f64 * 1024.0 / conns)
    }

    fn cpu_us_per_delivery(&self) -> Option<f64> {
        let st = self.out.server.as_ref()?;
        let cpu = st.at_end.cpu_s - st.at_start.cpu_s;
        (self.out.deliveries > 0).then(|| cpu * 1e6 / self.out.deliveries as f64)
    }

    pub fn json(&self) -> Value {
        let (c, o) = (self.cfg, self.out);
        let h = &o.hist;
        let server = o.server.as_ref().map(|st| {
            json!({
                "pid": c.pid,
                "cpu_s": st.at_end.cpu_s - st.at_start.cpu_s,
                "cpu_connect_s": st.at_start.cpu_s - st.before_connect.cpu_s,
                "cpu_us_per_delivery": self.cpu_us_per_delivery(),
                "rss_before_connect_kib": st.before_connect.rss_kib,
                "rss_start_kib": st.at_start.rss_kib,
                "rss_peak_kib": st.at_end.hwm_kib,
                "rss_final_kib": st.at_end.rss_kib,
                "rss_per_conn_bytes": self.rss_per_conn(),
            })
        });
        json!({
            "ok": self.ok(),
            "mode": self.mode(),
            "target": c.addr.to_string(),
            "transport": transport(c),
            "clients": c.clients,
            "senders": c.senders,
            "lines": c.lines,
            "bytes": c.bytes,
            "window": if c.rate.is_none() { Some(c.window) } else { None },
            "rate": c.rate,
            "slow": c.slow,
            "connected": o.connected,
            "connect_failed": o.connect_failed,
            "connect_failure": o.first_failure,
            "lost_before_start": o.lost_before_start,
            "greeting": o.greeting,
            "connect_s": o.connect_time.as_secs_f64(),
            "quiet_s": o.quiet_time.as_secs_f64(),
            "duration_s": self.secs(),
            "lines_sent": o.lines_sent,
            "lines_per_s": per_s(o.lines_sent, self.secs()),
            "deliveries": o.deliveries,
            "expected_deliveries": o.expected,
            "deliveries_per_s": per_s(o.deliveries, self.secs()),
            "missing": o.missing,
            "unsent": o.unsent,
            "out_of_order": o.out_of_order,
            "duplicates": o.duplicates,
            "echoes": o.echoes,
            "foreign": o.foreign,
            "closed_by_server": o.closed_by_server,
            "stalled": o.stalled,
            "latency_us": {
                "count": h.count(),
                "p50": h.quantile(0.5),
                "p90": h.quantile(0.9),
                "p99": h.quantile(0.99),
                "p999": h.quantile(0.999),
                "max": h.max(),
            },
            "instances": c.instances,
            "latency_cross_us": (c.instances > 1).then(|| {
                let h = &o.hist_cross;
                json!({
                    "count": h.count(),
                    "p50": h.quantile(0.5),
                    "p90": h.quantile(0.9),
                    "p99": h.quantile(0.99),
                    "p999": h.quantile(0.999),
                    "max": h.max(),
                })
            }),
            "flood_cpu_s": o.self_cpu_s,
            "watched": o.watched.iter().map(|&(pid, cpu)| json!({"pid": pid, "cpu_s": cpu})).collect::<Vec<_>>(),
            "server": server,
            "slow_readers": (c.slow > 0).then(|| json!({
                "count": c.slow,
                "closed_by_server": o.slow_closed,
                "drained_bytes": o.slow_drained_bytes,
            })),
            "idle": c.idle.then(|| json!({
                "connections": o.connected,
                "connect_s": o.connect_time.as_secs_f64(),
                "broadcast_ms": self.secs() * 1e3,
                "rss_per_conn_bytes": self.rss_per_conn(),
            })),
        })
    }

    pub fn human(&self) -> String {
        let (c, o) = (self.cfg, self.out);
        let mut s = String::new();
        let transport = transport(c);
        let pacing = match c.rate {
            Some(r) => format!("open loop at {r} lines/s"),
            None => format!("closed loop, window {}", c.window),
        };
        if c.idle {
            s += &format!(
                "flood -> {} ({transport}): {} idle, then one broadcast\n",
                c.addr,
                plural(c.clients as u64, "connection")
            );
        } else {
            s += &format!(
                "flood -> {} ({transport}): {}, {} x {} x {} B, {pacing}{}\n",
                c.addr,
                plural(c.clients as u64, "client"),
                plural(c.senders as u64, "sender"),
                plural(c.lines, "line"),
                c.bytes,
                if c.slow > 0 {
                    format!(", {}", plural(c.slow as u64, "slow reader"))
                } else {
                    String::new()
                }
            );
        }
        s += &format!(
            "connect   {} up in {:.3} s ({}), quiet after {:.3} s{}\n",
            o.connected,
            o.connect_time.as_secs_f64(),
            if o.greeting {
                "server greets"
            } else {
                "no greeting"
            },
            o.quiet_time.as_secs_f64(),
            if o.quiet_timed_out {
                " (never quiet: gave up waiting)"
            } else {
                ""
            }
        );
        if o.connect_failed > 0 || o.lost_before_start > 0 {
            s += &format!(
                "          {} failed to connect, {} closed before the start: {}\n",
                o.connect_failed,
                o.lost_before_start,
                o.first_failure.as_deref().unwrap_or("")
            );
        }
        if !c.idle {
            s += &format!(
                "sent      {} lines in {:.3} s: {:.0} lines/s (flood itself used {:.2} s of CPU)\n",
                o.lines_sent,
                self.secs(),
                per_s(o.lines_sent, self.secs()),
                o.self_cpu_s
            );
            s += &format!(
                "delivered {} of {}: {:.0} deliveries/s\n",
                o.deliveries,
                o.expected,
                per_s(o.deliveries, self.secs())
            );
        }
        let from = if c.rate.is_some() {
            ", from intended send time"
        } else {
            ""
        };
        s += &format!(
            "latency   {}  ({} samples{from})\n",
            percentiles(&o.hist),
            o.hist.count()
        );
        if c.instances > 1 {
            s += &format!(
                "  cross   {}  ({} samples from a sender on another of {} instances)\n",
                percentiles(&o.hist_cross),
                o.hist_cross.count(),
                c.instances
            );
        }
        s += &format!(
            "verify    {}: missing {}, out of order {}, duplicates {}, closed by server {}{}{}{}\n",
            if self.ok() { "OK" } else { "FAILED" },
            o.missing,
            o.out_of_order,
            o.duplicates,
            o.closed_by_server,
            if o.unsent > 0 {
                format!(", unsent {}", o.unsent)
            } else {
                String::new()
            },
            if o.echoes > 0 {
                format!(", {} own lines echoed (ignored)", o.echoes)
            } else {
                String::new()
            },
            if o.stalled {
                format!(", stalled: nothing delivered for {:?}", c.timeout)
            } else {
                String::new()
            }
        );
        if c.idle {
            s += &format!(
                "idle      {} connections held, connect {:.3} s{}; one broadcast reached all others in {}\n",
                o.connected,
                o.connect_time.as_secs_f64(),
                self.rss_per_conn()
                    .map(|b| format!(", server RSS {:.2} KiB per connection", b / 1024.0))
                    .unwrap_or_default(),
                ms(o.duration.as_micros() as u64),
            );
        }
        if c.slow > 0 {
            s += &format!(
                "slow      {} readers stopped reading: {} of them closed by the server; {} bytes drained after the run\n",
                c.slow, o.slow_closed, o.slow_drained_bytes
            );
        }
        if !o.watched.is_empty() {
            let list: Vec<String> = o
                .watched
                .iter()
                .map(|&(pid, cpu)| match cpu {
                    Some(c) => format!("pid {pid} {c:.2} s"),
                    None => format!("pid {pid} unreadable"),
                })
                .collect();
            s += &format!("watched   cpu in the run: {}\n", list.join(", "));
        }
        if let Some(st) = &o.server {
            s += &format!(
                "server    pid {}: cpu {:.2} s in the run{}; rss {} before connect, {} at start, peak {}, final {}\n",
                c.pid.unwrap_or(0),
                st.at_end.cpu_s - st.at_start.cpu_s,
                self.cpu_us_per_delivery()
                    .map(|u| format!(" = {u:.3} us/delivery"))
                    .unwrap_or_default(),
                mib(st.before_connect.rss_kib),
                mib(st.at_start.rss_kib),
                mib(st.at_end.hwm_kib),
                mib(st.at_end.rss_kib),
            );
        }
        s
    }
}
