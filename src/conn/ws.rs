//! A browser after the upgrade: RFC 6455 frames in (ws.rs decodes them),
//! lines for the hub out, pings answered, the closing handshake and the
//! close frames that say goodbye.

use super::Step;
use crate::line::sanitize;
use crate::ws::{self, Decoder, Event, Oversize};
use log::warn;
use std::net::SocketAddr;

pub struct WsSession {
    dec: Decoder,
    /// A text message with several lines in it, and how far its lines have
    /// been taken: each is a line of its own under --rate and the per-turn
    /// budget, as in line mode. At most --max-line bytes; nothing more is
    /// decoded until it is used up.
    held: Option<(String, usize)>,
}

impl WsSession {
    /// Messages over `max_line` bytes are skipped and refused
    /// (`Step::TooLong`), as line mode refuses a long line.
    pub fn new(max_line: usize) -> WsSession {
        WsSession {
            dec: Decoder::new(max_line).with_oversize(Oversize::Skip),
            held: None,
        }
    }

    pub fn next(&mut self, peer: SocketAddr, eof: bool) -> Step {
        loop {
            // One message is meant to be one line; CR or LF inside it must
            // not smuggle extra lines past --rate or this turn's budget, so
            // each piece is a step of its own.
            if let Some((text, at)) = self.held.as_mut() {
                if let Some((piece, next)) = ws::next_line(text, *at) {
                    let line = sanitize(piece.as_bytes());
                    *at = next;
                    return Step::Line(line);
                }
                self.held = None;
            }
            return match self.dec.next_event() {
                Ok(Some(Event::Text(text))) => {
                    self.held = Some((text, 0));
                    continue;
                }
                Ok(Some(Event::Pong)) => continue,
                Ok(Some(Event::TooLong)) => Step::TooLong,
                Ok(Some(Event::Ping(payload))) => Step::Reply(ws::pong_frame(&payload)),
                Ok(Some(Event::Close { code, .. })) => Step::Close {
                    last: Some(ws::close_reply(code)),
                    reason: None,
                    graceful: true,
                },
                Err(violation) => {
                    warn!("{peer} WebSocket error: {violation}");
                    Step::Close {
                        last: Some(violation.close_frame()),
                        reason: Some(format!("websocket error: {}", violation.reason)),
                        graceful: true,
                    }
                }
                Ok(None) if eof => Step::Close {
                    last: None,
                    reason: None,
                    graceful: true,
                },
                // 0 once the decoder has finished: nothing more is read.
                Ok(None) => Step::Read(self.dec.room()),
            };
        }
    }

    /// Takes what fits in the decoder's room (all of it, when the reactor
    /// read no more than `Step::Read` asked for).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        self.dec.feed(bytes)
    }

    /// The close frame that ends a graceful leave ("/quit", idle), so the
    /// browser does not see an abnormal closure (1006); none when one is
    /// already queued (the reply to the peer's close, or a violation's).
    pub fn goodbye(&self, reason: &str) -> Option<Vec<u8>> {
        (!self.dec.is_finished()).then(|| ws::close_frame(Some(ws::NORMAL), reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [1, 2, 3, 4];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn steps(s: &mut WsSession, eof: bool) -> Vec<Step> {
        crate::conn::steps_until_read(|| s.next(peer(), eof))
    }

    #[test]
    fn a_message_with_several_lines_is_a_step_per_line() {
        let mut s = WsSession::new(100);
        s.feed(&frame(1, b"one\r\ntwo\n\nthree"));
        let got = steps(&mut s, false);
        assert_eq!(
            got[..3],
            [
                Step::Line(Some("one".into())),
                Step::Line(Some("two".into())),
                Step::Line(Some("three".into())),
            ]
        );
        assert!(matches!(got[3], Step::Read(n) if n > 0));
    }

    #[test]
    fn a_ping_is_answered_and_a_pong_ignored() {
        let mut s = WsSession::new(100);
        s.feed(&frame(0xA, b"p"));
        s.feed(&frame(9, b"hi"));
        assert_eq!(s.next(peer(), false), Step::Reply(ws::pong_frame(b"hi")));
    }

    #[test]
    fn the_closing_handshake_is_answered_and_no_second_goodbye_follows() {
        let mut s = WsSession::new(100);
        assert!(s.goodbye("bye").is_some());
        s.feed(&frame(8, &1000u16.to_be_bytes()));
        assert_eq!(
            s.next(peer(), false),
            Step::Close {
                last: Some(ws::close_reply(Some(1000))),
                reason: None,
                graceful: true
            }
        );
        assert_eq!(s.goodbye("bye"), None);
        assert_eq!(s.next(peer(), false), Step::Read(0));
    }

    #[test]
    fn a_violation_closes_with_its_code_and_reason() {
        let mut s = WsSession::new(100);
        // Unmasked: clients must mask.
        s.feed(&[0x81, 0x01, b'x']);
        let Step::Close {
            last: Some(_),
            reason: Some(reason),
            graceful: true,
        } = s.next(peer(), false)
        else {
            panic!("not closed");
        };
        assert_eq!(reason, "websocket error: client frames must be masked");
    }

    #[test]
    fn an_oversized_message_is_refused_and_the_next_read() {
        let mut s = WsSession::new(4);
        s.feed(&frame(1, b"too long"));
        s.feed(&frame(1, b"ok"));
        let got = steps(&mut s, true);
        assert_eq!(
            got,
            [
                Step::TooLong,
                Step::Line(Some("ok".into())),
                Step::Close {
                    last: None,
                    reason: None,
                    graceful: true
                }
            ]
        );
    }
}
