//! The web port before a connection is anything else: collect one request
//! head (at most `http::MAX_HEAD` bytes, within --http-timeout), answer it
//! from `http::route`, and then close or become a WebSocket. Requests are
//! never pipelined or kept alive: one head, one answer.

use super::Step;
use super::ws::WsSession;
use crate::http::{self, After, Head, Route};
use log::{debug, warn};
use std::net::SocketAddr;
use std::time::Instant;

pub struct HttpSession {
    /// The head so far (at most `http::MAX_HEAD` + 1 bytes).
    buf: Vec<u8>,
    /// When the client must be done sending it.
    deadline: Instant,
    /// Answered: what is left is to flush the answer (or to upgrade).
    answered: bool,
    /// --max-line, for the WebSocket this may become.
    max_line: usize,
}

/// What the head asked for, once complete.
pub enum Answered {
    /// Not yet complete, or answered already: keep asking the session.
    No(Step),
    /// Upgrade to a WebSocket: the 101 answer, and the bytes that came
    /// right behind the head (the first frames).
    Upgrade(Vec<u8>, Vec<u8>),
}

impl HttpSession {
    pub fn new(deadline: Instant, max_line: usize) -> HttpSession {
        HttpSession {
            buf: Vec::new(),
            deadline,
            answered: false,
            max_line,
        }
    }

    /// The --http-timeout deadline, while the head is still being read.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.answered).then_some(self.deadline)
    }

    pub fn next(&mut self, peer: SocketAddr, eof: bool) -> Answered {
        if self.answered {
            // Only a head is ever read; whatever follows an answer is not.
            return Answered::No(Step::Read(0));
        }
        match http::parse_head(&self.buf) {
            Head::Incomplete if eof => {
                debug!("{peer} closed before its request was complete");
                self.answered = true;
                Answered::No(close(None))
            }
            Head::Incomplete => {
                let room = (http::MAX_HEAD + 1).saturating_sub(self.buf.len()).max(1);
                Answered::No(Step::Read(room))
            }
            Head::Invalid(e) => {
                debug!("{peer} bad request: {e:?}");
                self.answered = true;
                Answered::No(close(Some(e.response())))
            }
            Head::Complete { request, len } => {
                self.answered = true;
                let route = http::route(&request);
                debug!("{peer} {} {} -> {route:?}", request.method, request.path);
                if route == Route::Metrics {
                    return Answered::No(Step::Metrics(request));
                }
                let answer = route.response(request.is_head());
                match route.after() {
                    After::Close => Answered::No(close(Some(answer))),
                    After::WebSocket => {
                        let early = self.buf.split_off(len);
                        self.buf = Vec::new();
                        Answered::Upgrade(answer, early)
                    }
                }
            }
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// The answer, then close once it is flushed.
fn close(last: Option<Vec<u8>>) -> Step {
    Step::Close {
        last,
        reason: None,
        graceful: true,
    }
}

impl HttpSession {
    /// The WebSocket that an upgraded request becomes, with the bytes that
    /// came behind its head already fed: they are its first frames. A
    /// browser waits for the 101, so more than fits is not to be expected.
    pub fn upgrade(&self, peer: SocketAddr, early: &[u8]) -> WsSession {
        let mut ws = WsSession::new(self.max_line);
        if ws.feed(early) < early.len() {
            warn!("{peer} sent more than a message before the handshake completed");
        }
        ws
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn step(s: &mut HttpSession, eof: bool) -> Step {
        match s.next(peer(), eof) {
            Answered::No(step) => step,
            Answered::Upgrade(..) => panic!("upgraded"),
        }
    }

    #[test]
    fn a_head_in_pieces_is_answered_once_then_nothing_more_is_read() {
        let mut s = HttpSession::new(Instant::now() + Duration::from_secs(5), 100);
        assert_eq!(step(&mut s, false), Step::Read(http::MAX_HEAD + 1));
        s.feed(b"GET /healthz HTTP/1.1\r\n");
        assert!(matches!(step(&mut s, false), Step::Read(_)));
        assert!(s.deadline().is_some());
        s.feed(b"Host: x\r\n\r\n");
        let Step::Close {
            last: Some(answer),
            reason: None,
            graceful: true,
        } = step(&mut s, false)
        else {
            panic!("no answer");
        };
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
        assert!(answer.ends_with(b"ok"));
        assert_eq!(s.deadline(), None, "answered: no head deadline");
        assert_eq!(step(&mut s, false), Step::Read(0));
    }

    #[test]
    fn metrics_is_a_route_that_asks_for_the_servers_numbers() {
        let mut s = HttpSession::new(Instant::now(), 100);
        s.feed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let Step::Metrics(req) = step(&mut s, false) else {
            panic!("not metrics");
        };
        assert_eq!(req.path, "/metrics");
    }

    #[test]
    fn eof_before_a_complete_head_closes_without_an_answer() {
        let mut s = HttpSession::new(Instant::now(), 100);
        s.feed(b"GET / HT");
        assert_eq!(step(&mut s, true), close(None));
    }

    #[test]
    fn garbage_gets_a_400_and_a_close() {
        let mut s = HttpSession::new(Instant::now(), 100);
        s.feed(b"\x01\x02 nonsense\r\n\r\n");
        let Step::Close {
            last: Some(answer), ..
        } = step(&mut s, false)
        else {
            panic!("no answer");
        };
        assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    }

    #[test]
    fn an_upgrade_hands_over_the_bytes_behind_the_head() {
        let mut s = HttpSession::new(Instant::now(), 100);
        s.feed(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nXY",
        );
        let Answered::Upgrade(answer, early) = s.next(peer(), false) else {
            panic!("no upgrade");
        };
        assert!(answer.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(early, b"XY");
    }
}
