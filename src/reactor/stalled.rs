//! A client whose command waits for Redis (a name claim, a history read)
//! has its later lines wait too, so its commands take effect in the order
//! it sent them: the hub takes the lines it can (`Hub::lines` says how
//! many, `Hub::busy` whether it waits), the rest are held on the
//! connection, which is not read again until the wait ends.

use super::*;

impl Server {
    /// Connections whose wait for the hub ended (an answer, a refusal, the
    /// link down: every wait ends by an event, and events are applied in
    /// `exchange`) are read again from where they stopped: their held
    /// lines first, then the socket, which must be read even without a new
    /// event since readiness is edge-triggered.
    pub(super) fn wake(&mut self) {
        if self.stalled.is_empty() {
            return;
        }
        let (conns, hub, readable) = (&mut self.conns, &self.hub, &mut self.readable);
        self.stalled.retain(|&me| {
            let Some(c) = live(conns, me) else {
                return false;
            };
            if hub.busy(ClientId(me.key)) {
                return true;
            }
            c.stalled = false;
            if !c.in_readable {
                c.in_readable = true;
                readable.push(me);
            }
            false
        });
    }

    /// Hands a connection's lines to the hub, as many as it takes now.
    /// False when it waits for Redis for this client (`Hub::busy`): the
    /// rest are held on the connection, which is not read again until
    /// `wake` finds the wait over.
    pub(super) fn deliver(&mut self, k: usize, batch: &mut Vec<String>) -> bool {
        if self.hub.busy(ClientId(k)) {
            self.stall(k, batch);
            return false;
        }
        if batch.is_empty() {
            return true;
        }
        let (hub, mut out) = self.out();
        let taken = hub.lines(ClientId(k), batch, &mut out).min(batch.len());
        self.metrics.lines_in += taken as u64;
        // Logged as taken, so a line held for a while is logged once.
        if log::log_enabled!(log::Level::Debug)
            && let Some(c) = self.conns.get(k)
        {
            for text in &batch[..taken] {
                let text = crate::access::redact(text);
                debug!(
                    "{} {}: {text}",
                    c.peer,
                    self.hub.name(ClientId(k)).unwrap_or("?")
                );
            }
        }
        batch.drain(..taken);
        if batch.is_empty() {
            return true;
        }
        self.stall(k, batch);
        false
    }

    /// Keeps `batch` (lines the hub has not taken) on connection `k`, and
    /// lists it for `wake`.
    pub(super) fn stall(&mut self, k: usize, batch: &mut Vec<String>) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.held.append(batch);
        if !c.stalled {
            c.stalled = true;
            self.stalled.push(ConnRef {
                key: k,
                serial: c.serial,
            });
        }
    }
}
