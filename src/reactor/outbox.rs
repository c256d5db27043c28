//! Hub output, turned into connection queues and the list of operations
//! for the cluster link: the only code that does either. [`Out`] is what the hub is handed as its
//! [`Outbox`]: it queues a line on each recipient under the --sendq policy
//! (`--on-slow drop` counts what it drops, `disconnect` cuts the client
//! off), marks connections that must go (never frees them: the sweep
//! does), and lists what the cluster should hear for the Redis link.

use crate::config::OnSlow;
use crate::conn::{Conn, Push, State};
use crate::hub::{ClientId, ClusterOp, ConnStats, Outbox, ServerStats};
use crate::metrics::Metrics;
use crate::msg::Msg;
use log::warn;
use slab::Slab;
use std::rc::Rc;
use std::time::Instant;

/// The hub's view of the connections: queue under the --sendq policy, and
/// mark (never free) connections that must go.
pub struct Out<'a> {
    pub conns: &'a mut Slab<Conn>,
    pub pending: &'a mut Vec<usize>,
    pub closing: &'a mut Vec<usize>,
    pub sendq: usize,
    pub on_slow: OnSlow,
    /// Cluster mode: what the hub asks of the link, handed to it after
    /// the hub's call; None on a server without a cluster.
    pub ops: Option<&'a mut Vec<ClusterOp>>,
    pub metrics: &'a mut Metrics,
}

impl Outbox for Out<'_> {
    fn send(&mut self, to: ClientId, msg: &Rc<Msg>) {
        // Back from the hub's ClientId to the slab key it was made from.
        let to = to.0;
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        let push = c.push(msg, self.sendq, self.on_slow);
        // Counted here, per recipient, as plain adds: see metrics.rs.
        match push {
            Push::First | Push::Queued => self.metrics.deliveries += msg.lines() as u64,
            Push::Dropped => self.metrics.dropped += msg.lines() as u64,
            Push::TooSlow => self.metrics.too_slow += 1,
            Push::Ignored => {}
        }
        match push {
            Push::First if !c.in_pending => {
                c.in_pending = true;
                self.pending.push(to);
            }
            Push::TooSlow => cut_off(c, to, self.closing),
            _ => {}
        }
    }

    fn close(&mut self, id: ClientId, reason: String) {
        let id = id.0;
        if let Some(c) = self.conns.get_mut(id) {
            mark_closing(c, id, self.closing, Some(reason), true);
        }
    }

    fn cluster(&mut self, op: ClusterOp) {
        // The link takes them after the hub's call (`Server::exchange`).
        if let Some(ops) = self.ops.as_deref_mut() {
            ops.push(op);
        }
    }

    fn conn_stats(&self, id: ClientId) -> Option<ConnStats> {
        let c = self.conns.get(id.0)?;
        Some(ConnStats {
            queued: c.queued(),
            dropped: c.dropped_total(),
            connected: c.since.elapsed(),
        })
    }

    fn server_stats(&self) -> Option<ServerStats> {
        Some(self.metrics.server_stats(Instant::now()))
    }
}

/// The --sendq policy's disconnect: drop what is queued and leave at once.
pub fn cut_off(c: &mut Conn, k: usize, closing: &mut Vec<usize>) {
    warn!(
        "{} cut off: output queue would pass --sendq ({} bytes queued, {} counted)",
        c.peer,
        c.queued(),
        c.charged()
    );
    // Best effort: the socket is likely full, but a browser that gets this
    // knows why it was dropped. Not in the middle of a partly written frame,
    // whose payload it would become.
    let last = c.proto.cut_off().filter(|_| !c.mid_item());
    c.discard_output();
    if let Some(last) = last {
        c.write_last(&last);
    }
    mark_closing(c, k, closing, Some("too slow".into()), false);
}

/// Marks an open connection to leave (the settle after this batch tells
/// the hub); `graceful` lets its queued output drain first.
pub fn mark_closing(
    c: &mut Conn,
    k: usize,
    closing: &mut Vec<usize>,
    reason: Option<String>,
    graceful: bool,
) {
    if c.state == State::Open {
        c.state = State::Closing;
        c.reason = reason;
        c.graceful = graceful;
        closing.push(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ENTRY_OVERHEAD, LineSession, Proto};

    const SENDQ: usize = 64 * 1024;
    const SENT: u64 = 1000;

    /// Sends SENT one-line messages to a line client on loopback whose
    /// peer never reads, under `on_slow`; returns what the outbox did.
    fn flood(on_slow: OnSlow) -> (Conn, Vec<usize>, Vec<usize>, Metrics) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_never_reads, peer) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let proto = Proto::Line(LineSession::new(100));
        let mut conns = Slab::new();
        let k = conns.insert(Conn::new(
            mio::net::TcpStream::from_std(ours),
            peer,
            proto,
            None,
        ));
        let (mut pending, mut closing) = (Vec::new(), Vec::new());
        let mut metrics = Metrics::new(Instant::now());
        let mut out = Out {
            conns: &mut conns,
            pending: &mut pending,
            closing: &mut closing,
            sendq: SENDQ,
            on_slow,
            ops: None,
            metrics: &mut metrics,
        };
        let msg = Msg::new("*a* x");
        for _ in 0..SENT {
            out.send(ClientId(k), &msg);
        }
        (conns.remove(k), pending, closing, metrics)
    }

    /// How many 7-byte lines fit in SENDQ with their bookkeeping, beside
    /// the falling-behind warning (under 64 bytes).
    fn fit() -> u64 {
        ((SENDQ - 64 - ENTRY_OVERHEAD) / (7 + ENTRY_OVERHEAD)) as u64
    }

    #[test]
    fn on_slow_drop_queues_what_fits_and_counts_the_rest() {
        let (c, pending, closing, m) = flood(OnSlow::Drop);
        assert_eq!(m.deliveries, fit());
        assert_eq!(m.dropped, SENT - fit());
        assert_eq!(c.dropped_total(), SENT - fit());
        assert_eq!(m.too_slow, 0);
        assert_eq!(c.state, State::Open);
        assert!(c.charged() <= SENDQ);
        // Listed for a flush once, however many lines were queued.
        assert_eq!(pending, vec![0]);
        assert!(closing.is_empty());
    }

    #[test]
    fn on_slow_disconnect_cuts_the_client_off_and_marks_it_closing() {
        let (c, pending, closing, m) = flood(OnSlow::Disconnect);
        assert_eq!(m.deliveries, fit(), "nothing after the cut");
        assert_eq!(m.too_slow, 1, "cut off once");
        assert_eq!(m.dropped, 0);
        assert_eq!(c.state, State::Closing);
        assert_eq!(c.reason.as_deref(), Some("too slow"));
        assert!(!c.graceful, "its queue is not drained");
        assert_eq!(c.queued(), 0, "its queue is dropped");
        assert_eq!(pending, vec![0]);
        assert_eq!(closing, vec![0]);
    }
}
