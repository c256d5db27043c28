//! Who may come in, by address: the per-address limits (--max-per-ip,
//! --max-connects) applied when a connection's address is known (at
//! accept, or from a trusted proxy's header) and when a browser's chat
//! session begins (its WebSocket upgrade), and what a refused client is
//! told. The counting itself is `crate::limits` (pure).

use super::*;

/// Counts and logs a refusal by the per-address limits.
pub(super) fn refused(metrics: &mut Metrics, cfg: &Config, peer: SocketAddr, why: Refused) {
    match why {
        Refused::TooMany => {
            metrics.refused_per_ip += 1;
            warn!(
                "{peer} refused: --max-per-ip ({} connections from one address)",
                cfg.max_per_ip
            );
        }
        Refused::TooFast => {
            metrics.refused_rate += 1;
            warn!(
                "{peer} refused: --max-connects ({} new chat sessions per 10 minutes from one address)",
                cfg.max_connects
            );
        }
    }
}

impl Server {
    /// The client's real address is known (at accept, or from a trusted
    /// proxy's header): apply the per-address limits, then start the
    /// protocol unless a handshake comes first. False if refused.
    pub(super) fn addressed(&mut self, k: usize, then: After) -> bool {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        // A line client is a chat session from the start; a web
        // connection becomes one at its upgrade (see `upgraded`).
        match self.per_addr.try_count(c.peer.ip(), now, c.proto.in_chat()) {
            Ok(counted) => c.admitted = counted,
            Err(why) => {
                refused(&mut self.metrics, &self.cfg, c.peer, why);
                if then == After::Handshake {
                    // Nothing can be said before a handshake, and doing
                    // one for a refused address would spend what the
                    // limit protects.
                    self.remove(k);
                } else {
                    c.push_raw(conn::refusal(&c.proto, why.text()));
                    c.state = State::Closing;
                    self.drain(k);
                }
                return false;
            }
        }
        if then == After::Protocol {
            self.start(k);
        }
        true
    }

    /// A browser asked to upgrade to WebSocket: a chat session begins, and
    /// takes its token from the connect rate (the page's files took none),
    /// or is refused with a 503 in place of the upgrade. False if refused.
    pub(super) fn upgraded(&mut self, k: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        let Err(why) = self.per_addr.try_session(c.peer.ip(), now) else {
            return true;
        };
        refused(&mut self.metrics, &self.cfg, c.peer, why);
        let answer = crate::http::response(
            503,
            "text/plain; charset=utf-8",
            why.text().as_bytes(),
            false,
            &[],
        );
        c.push_raw(answer);
        mark_closing(
            c,
            k,
            &mut self.closing,
            Some("refused: --max-connects".into()),
            true,
        );
        self.mark_pending(k);
        false
    }

    /// A trusted proxy's header said who the client is: the limits apply
    /// to that address. False if it was refused.
    pub(super) fn addressed_by_proxy(
        &mut self,
        k: usize,
        source: Option<SocketAddr>,
        then: After,
    ) -> bool {
        let Some(c) = self.conns.get_mut(k) else {
            return false;
        };
        let Some(real) = source else {
            // The proxy's own connection (a health check every few
            // seconds): trusted, and not a client the limits are for.
            debug!("{} PROXY header for the proxy itself", c.peer);
            if then == After::Protocol {
                self.start(k);
            }
            return true;
        };
        debug!("{} PROXY header: client {real}", c.peer);
        c.peer = real;
        self.addressed(k, then)
    }
}
