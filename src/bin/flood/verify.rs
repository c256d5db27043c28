//! The ledger: what every receiver must get (every line of every other
//! sender, in order, once), what it got, and the closed-loop window that
//! lets a sender run only `window` lines ahead of its slowest receiver.

use std::collections::{HashMap, VecDeque};

/// Gap ranges remembered per (receiver, sender) to tell a late line
/// (out of order) from a duplicate; past this, the oldest are forgotten and
/// stay counted as missing.
const MAX_GAPS: usize = 1024;

struct Sender {
    generated: u32,
    /// Lines every live receiver has got (or skipped); `generated - acked`
    /// is what is in flight.
    acked: u32,
    /// Per in-flight line (slot seq % window): receivers that have it.
    ring: Vec<u32>,
    /// Live receivers other than the sender itself.
    needed: u32,
    /// None while alive; after the server closed it, the lines it got out.
    written_at_death: Option<u32>,
}

pub struct Ledger {
    senders_n: usize,
    lines: u32,
    window: Option<u32>,
    /// next[r * senders + s]: the next seq receiver r expects from sender s.
    next: Vec<u32>,
    /// Receivers that must get everything: not slow, connected at the start.
    expected_rx: Vec<bool>,
    /// Those of them still connected.
    live: Vec<bool>,
    senders: Vec<Sender>,
    gaps: HashMap<usize, VecDeque<(u32, u32)>>,
    forgotten_gap_lines: u64,
    /// Deliveries still to come before the run is complete.
    remaining: u64,
    pub deliveries: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// The sender's own lines echoed back (servers that echo): ignored.
    pub echoes: u64,
    /// Tokens naming a sender or seq outside this run.
    pub foreign: u64,
    /// Senders whose window moved and who may send more.
    pub woke: Vec<usize>,
}

pub enum Receipt {
    /// A first receipt: record the latency.
    New,
    Ignored,
}

impl Ledger {
    /// `receivers[r]`: r is connected and must get every other sender's lines.
    /// Senders are connections 0..senders.
    pub fn new(receivers: Vec<bool>, senders: usize, lines: u32, window: Option<u32>) -> Ledger {
        let n = receivers.len();
        let fast = receivers.iter().filter(|&&f| f).count() as u32;
        let mut remaining = 0u64;
        let senders_v = (0..senders)
            .map(|s| {
                let needed = fast - u32::from(receivers[s]);
                remaining += u64::from(needed) * u64::from(lines);
                Sender {
                    generated: 0,
                    acked: 0,
                    ring: vec![0; window.unwrap_or(0) as usize],
                    needed,
                    written_at_death: None,
                }
            })
            .collect();
        Ledger {
            senders_n: senders,
            lines,
            window,
            next: vec![0; n * senders],
            live: receivers.clone(),
            expected_rx: receivers,
            senders: senders_v,
            gaps: HashMap::new(),
            forgotten_gap_lines: 0,
            remaining,
            deliveries: 0,
            out_of_order: 0,
            duplicates: 0,
            echoes: 0,
            foreign: 0,
            woke: Vec::new(),
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub fn expected_total(&self) -> u64 {
        let mut t = 0;
        for (s, snd) in self.senders.iter().enumerate() {
            let exp = u64::from(snd.written_at_death.unwrap_or(self.lines));
            let rx = (0..self.expected_rx.len())
                .filter(|&r| r != s && self.expected_rx[r])
                .count() as u64;
            t += exp * rx;
        }
        t
    }

    fn expected(&self, s: usize) -> u32 {
        self.senders[s].written_at_death.unwrap_or(self.lines)
    }

    /// How many more lines sender `s` may generate now.
    pub fn may_send(&self, s: usize) -> u32 {
        let snd = &self.senders[s];
        if snd.written_at_death.is_some() {
            return 0;
        }
        let left = self.lines - snd.generated;
        match self.window {
            Some(w) => left.min(w - (snd.generated - snd.acked)),
            None => left,
        }
    }

    pub fn generated(&self, s: usize) -> u32 {
        self.senders[s].generated
    }

    /// Records that sender `s` generated its next line; returns its seq.
    pub fn generate(&mut self, s: usize) -> u32 {
        let snd = &mut self.senders[s];
        let seq = snd.generated;
        snd.generated += 1;
        if self.window.is_some() && snd.needed == 0 {
            // Nobody to wait for (a lone client): never block on the window.
            snd.acked = snd.generated;
        }
        seq
    }

    pub fn on_token(&mut self, r: usize, sender: u32, seq: u32) -> Receipt {
        let s = sender as usize;
        if s >= self.senders_n || seq >= self.lines {
            self.foreign += 1;
            return Receipt::Ignored;
        }
        if s == r {
            self.echoes += 1;
            return Receipt::Ignored;
        }
        if !self.live.get(r).copied().unwrap_or(false) {
            return Receipt::Ignored;
        }
        let idx = r * self.senders_n + s;
        let next = self.next[idx];
        if seq >= next {
            if seq > next {
                self.add_gap(idx, next, seq);
            }
            self.next[idx] = seq + 1;
            let exp = self.expected(s);
            self.remaining -= u64::from((seq + 1).min(exp) - next.min(exp));
            self.deliveries += 1;
            self.credit(s, next, seq + 1);
            Receipt::New
        } else if self.fill_gap(idx, seq) {
            self.out_of_order += 1;
            self.deliveries += 1;
            Receipt::New
        } else {
            self.duplicates += 1;
            Receipt::Ignored
        }
    }

    fn add_gap(&mut self, idx: usize, from: u32, to: u32) {
        let q = self.gaps.entry(idx).or_default();
        if q.len() >= MAX_GAPS
            && let Some((a, b)) = q.pop_front()
        {
            self.forgotten_gap_lines += u64::from(b - a);
        }
        q.push_back((from, to));
    }

    /// True if `seq` was skipped earlier (so this is a late arrival).
    fn fill_gap(&mut self, idx: usize, seq: u32) -> bool {
        let Some(q) = self.gaps.get_mut(&idx) else {
            return false;
        };
        let Some(i) = q.iter().position(|&(a, b)| a <= seq && seq < b) else {
            return false;
        };
        let (a, b) = q[i];
        match (seq == a, seq + 1 == b) {
            (true, true) => {
                q.remove(i);
            }
            (true, false) => q[i].0 = seq + 1,
            (false, true) => q[i].1 = seq,
            (false, false) => {
                q[i].1 = seq;
                q.insert(i + 1, (seq + 1, b));
            }
        }
        true
    }

    /// Receiver got (or skipped past) lines `from..to` of sender `s`.
    fn credit(&mut self, s: usize, from: u32, to: u32) {
        let Some(w) = self.window else { return };
        let snd = &mut self.senders[s];
        let lo = from.max(snd.acked);
        let hi = to.min(snd.generated);
        for x in lo..hi {
            snd.ring[(x % w) as usize] += 1;
        }
        self.advance(s);
    }

    fn advance(&mut self, s: usize) {
        let Some(w) = self.window else { return };
        let snd = &mut self.senders[s];
        let before = snd.acked;
        while snd.acked < snd.generated && snd.ring[(snd.acked % w) as usize] >= snd.needed {
            snd.ring[(snd.acked % w) as usize] = 0;
            snd.acked += 1;
        }
        if snd.acked != before {
            self.woke.push(s);
        }
    }

    /// The server closed receiver `r`: it will get nothing more.
    pub fn receiver_closed(&mut self, r: usize) {
        if !self.live.get(r).copied().unwrap_or(false) {
            return;
        }
        self.live[r] = false;
        for s in 0..self.senders_n {
            if s == r {
                continue;
            }
            let exp = self.expected(s);
            self.remaining -= u64::from(exp.saturating_sub(self.next[r * self.senders_n + s]));
            self.senders[s].needed -= 1;
            self.advance(s);
        }
    }

    /// The server closed sender `s` after `written` of its lines left us.
    pub fn sender_closed(&mut self, s: usize, written: u32) {
        if s >= self.senders_n || self.senders[s].written_at_death.is_some() {
            return;
        }
        for r in 0..self.live.len() {
            if r == s || !self.live[r] {
                continue;
            }
            let next = self.next[r * self.senders_n + s];
            let before = self.lines.saturating_sub(next);
            let after = written.saturating_sub(next);
            self.remaining -= u64::from(before - after);
        }
        self.senders[s].written_at_death = Some(written);
    }

    /// Lines some expected receiver never got (including receivers the
    /// server closed), and lines a closed sender never got out.
    pub fn missing(&self) -> (u64, u64) {
        let mut missing = self.forgotten_gap_lines;
        for (&idx, q) in &self.gaps {
            if self.expected_rx[idx / self.senders_n] {
                missing += q.iter().map(|&(a, b)| u64::from(b - a)).sum::<u64>();
            }
        }
        let mut unsent = 0;
        for (s, snd) in self.senders.iter().enumerate() {
            let exp = self.expected(s);
            if let Some(w) = snd.written_at_death {
                unsent += u64::from(self.lines - w);
            }
            for r in 0..self.expected_rx.len() {
                if r != s && self.expected_rx[r] {
                    missing += u64::from(exp.saturating_sub(self.next[r * self.senders_n + s]));
                }
            }
        }
        (missing, unsent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(l: &mut Ledger, r: usize, s: u32, seq: u32) -> bool {
        matches!(l.on_token(r, s, seq), Receipt::New)
    }

    #[test]
    fn in_order_completes_and_moves_window() {
        // 3 receivers, senders 0 and 1, 4 lines each, window 2.
        let mut l = Ledger::new(vec![true; 3], 2, 4, Some(2));
        assert_eq!(l.remaining(), 2 * 2 * 4);
        assert_eq!(l.expected_total(), 16);
        assert_eq!(l.may_send(0), 2);
        assert_eq!((l.generate(0), l.generate(0)), (0, 1));
        assert_eq!(l.may_send(0), 0);
        assert!(deliver(&mut l, 1, 0, 0));
        assert_eq!(l.may_send(0), 0, "receiver 2 has not got line 0");
        assert!(deliver(&mut l, 2, 0, 0));
        assert_eq!(l.may_send(0), 1);
        assert_eq!(l.woke, vec![0]);
        for seq in 1..4 {
            if seq >= 2 {
                l.generate(0);
            }
            deliver(&mut l, 1, 0, seq);
            deliver(&mut l, 2, 0, seq);
        }
        for seq in 0..4 {
            l.generate(1);
            deliver(&mut l, 0, 1, seq);
            deliver(&mut l, 2, 1, seq);
        }
        assert_eq!(l.remaining(), 0);
        assert_eq!(l.missing(), (0, 0));
        assert_eq!((l.deliveries, l.out_of_order, l.duplicates), (16, 0, 0));
    }

    #[test]
    fn skip_late_duplicate_and_echo() {
        let mut l = Ledger::new(vec![true; 2], 1, 5, None);
        assert!(deliver(&mut l, 1, 0, 0));
        assert!(deliver(&mut l, 1, 0, 3)); // 1 and 2 skipped
        assert_eq!(l.missing().0, 3); // 1, 2 and the not yet seen 4
        assert!(deliver(&mut l, 1, 0, 2)); // late
        assert!(!deliver(&mut l, 1, 0, 2)); // now a duplicate
        assert!(!deliver(&mut l, 1, 0, 0)); // duplicate
        assert!(!deliver(&mut l, 0, 0, 1)); // own line echoed
        assert!(!deliver(&mut l, 1, 0, 5)); // beyond the run
        assert!(!deliver(&mut l, 1, 7, 0)); // unknown sender
        assert!(deliver(&mut l, 1, 0, 4));
        assert_eq!(l.remaining(), 0);
        assert_eq!(l.missing(), (1, 0)); // only line 1
        assert_eq!(
            (
                l.deliveries,
                l.out_of_order,
                l.duplicates,
                l.echoes,
                l.foreign
            ),
            (4, 1, 2, 1, 2)
        );
    }

    #[test]
    fn closed_connections_release_the_run() {
        let mut l = Ledger::new(vec![true, true, true, false], 1, 10, Some(4));
        assert_eq!(l.remaining(), 20, "receiver 3 (slow) expects nothing");
        for _ in 0..4 {
            l.generate(0);
        }
        for seq in 0..4 {
            deliver(&mut l, 1, 0, seq);
        }
        assert_eq!(l.may_send(0), 0);
        l.receiver_closed(2);
        assert_eq!(l.may_send(0), 4, "window no longer waits for 2");
        assert_eq!(l.remaining(), 6);
        l.sender_closed(0, 5);
        assert_eq!(l.remaining(), 1, "only line 4 can still reach 1");
        assert_eq!(l.may_send(0), 0);
        deliver(&mut l, 1, 0, 4);
        assert_eq!(l.remaining(), 0);
        // Receiver 2 missed 5 of the 5 lines that were sent; 5 never went out.
        assert_eq!(l.missing(), (5, 5));
    }
}
