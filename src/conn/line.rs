//! The line protocol (telnet, netcat): bytes in, cleaned lines out. The
//! framing itself is line.rs; this is the connection's state around it.
//!
//! The first line is looked at before it is framed: a browser, a TLS
//! client or an IRC client that came to the line port by mistake (or a
//! proxy's PROXY header where none is expected) is answered in its own
//! protocol — a 400 page naming the web port, a TLS alert, an IRC
//! `ERROR` — and closed, so nothing of it reaches a room or history. Only
//! the first line counts: later, a user may say anything. So that such a
//! client is never welcomed into the chat first, the connection joins
//! ([`Step::Join`]) once its first line is chat, or when the reactor says
//! nothing came in time ([`LineSession::quiet`]): clients that speak first
//! do so at once, while people and `chat` wait for the welcome.

use super::Step;
use super::proxy::V2_SIG;
use crate::line::{Frame, Framer, sanitize};
use memchr::memchr;

/// Where a browser that came to the line port is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Web {
    pub scheme: &'static str,
    pub port: u16,
}

pub struct LineSession {
    framer: Framer,
    max_line: usize,
    /// The first line is still to be looked at.
    sniffing: bool,
    /// `Step::Join` was given.
    joined: bool,
    /// Nothing foreign came in time: join without waiting for a first line.
    quiet: bool,
    /// The web page, for the 400 answer to an HTTP request.
    web: Option<Web>,
}

/// Another protocol's client on the line port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    Http,
    Tls,
    Irc,
    Proxy,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Foreign(Foreign),
    Chat,
    /// Too little yet to tell.
    Undecided,
}

/// A fatal TLS alert, handshake_failure, in a TLS 1.0-framed record: what
/// any TLS client understands before a ServerHello.
const TLS_ALERT: &[u8] = &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28];

impl LineSession {
    /// Lines over `max_line` bytes are refused (`Step::TooLong`).
    pub fn new(max_line: usize) -> LineSession {
        LineSession {
            framer: Framer::new(max_line),
            max_line,
            sniffing: true,
            joined: false,
            quiet: false,
            web: None,
        }
    }

    /// Names the web page to a browser that came here instead.
    pub fn with_web(mut self, web: Option<Web>) -> LineSession {
        self.web = web;
        self
    }

    /// The client said nothing that could be another protocol's in the
    /// time such clients take to speak: it joins now (its first line is
    /// still looked at when it comes).
    pub fn quiet(&mut self) {
        self.quiet = true;
    }

    pub fn next(&mut self, eof: bool) -> Step {
        if self.sniffing {
            match sniff(self.framer.pending(), self.quiet, eof, self.max_line) {
                Verdict::Foreign(what) => {
                    self.sniffing = false;
                    return self.refuse(what);
                }
                Verdict::Undecided if !eof => {
                    if self.quiet && !self.joined {
                        self.joined = true;
                        return Step::Join;
                    }
                    return Step::Read(usize::MAX);
                }
                Verdict::Chat | Verdict::Undecided => self.sniffing = false,
            }
        }
        if !self.joined {
            if eof && self.framer.pending().is_empty() {
                // Connected and hung up without a word (a port check):
                // nobody needs to hear of it.
                return Step::Close {
                    last: None,
                    reason: None,
                    graceful: true,
                };
            }
            self.joined = true;
            return Step::Join;
        }
        match self.framer.next_frame() {
            Some(Frame::Line(raw)) => Step::Line(sanitize(raw)),
            Some(Frame::TooLong) => Step::TooLong,
            // The peer hung up: an unterminated last line still counts.
            None if eof => match self.framer.finish() {
                Some(Frame::Line(raw)) => Step::Line(sanitize(raw)),
                _ => Step::Close {
                    last: None,
                    reason: None,
                    graceful: true,
                },
            },
            None => Step::Read(usize::MAX),
        }
    }

    /// The answer in the stranger's own protocol, then the close.
    fn refuse(&self, what: Foreign) -> Step {
        let (last, reason) = match what {
            Foreign::Http => {
                let body = match self.web {
                    Some(web) => format!(
                        "400: this is chatd's line port (telnet, nc, chat); the web page is at {}://{}:{}/\n",
                        web.scheme,
                        host_header(self.framer.pending()).unwrap_or("HOST"),
                        web.port
                    ),
                    None => "400: this is chatd's line port (telnet, nc, chat); this server has no web page\n".into(),
                };
                let page = crate::http::response(
                    400,
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                    false,
                    &[],
                );
                (page, "an HTTP request on the line port")
            }
            Foreign::Tls => (TLS_ALERT.to_vec(), "a TLS handshake on the line port"),
            // An IRC port (a later issue) is named here once there is one.
            Foreign::Irc => (
                b"ERROR :Closing link: this is chatd's line port, not IRC\r\n".to_vec(),
                "an IRC client on the line port",
            ),
            Foreign::Proxy => (
                b"*** error: this server expects no PROXY header (see chatd --proxy-protocol)\r\n"
                    .to_vec(),
                "a PROXY header, and no --proxy-protocol",
            ),
        };
        Step::Close {
            last: Some(last),
            reason: Some(reason.into()),
            graceful: true,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.framer.feed(bytes);
    }

    /// Nothing more to read for now: an idle connection holds no input
    /// buffer at all.
    pub fn would_block(&mut self) {
        self.framer.release_if_empty();
    }
}

/// What a connection's first bytes are: `quiet` once the time for a
/// second line that would tell (IRC's USER after NICK) is over, `eof` when
/// no more will come.
fn sniff(buf: &[u8], quiet: bool, eof: bool, max: usize) -> Verdict {
    match buf.first() {
        None => return Verdict::Undecided,
        // No one types a Ctrl-V Ctrl-W first: a TLS handshake record.
        Some(&0x16) => return Verdict::Foreign(Foreign::Tls),
        Some(_) => {}
    }
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        if n == V2_SIG.len() {
            return Verdict::Foreign(Foreign::Proxy);
        }
        if !(quiet || eof) {
            return Verdict::Undecided;
        }
    }
    let (first, rest) = match memchr(b'\n', buf) {
        Some(i) => (&buf[..i], &buf[i + 1..]),
        None if eof => (buf, &[][..]),
        // Too long for a line: the framer says so.
        None if buf.len() > max => return Verdict::Chat,
        None => return Verdict::Undecided,
    };
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let words: Vec<&[u8]> = first.split(|&b| b == b' ').collect();
    let upper = |w: &[u8]| !w.is_empty() && w.len() <= 16 && w.iter().all(u8::is_ascii_uppercase);
    // METHOD TARGET HTTP/x.y (HTTP/2's preface too: PRI * HTTP/2.0).
    if words.len() == 3 && upper(words[0]) && words[2].starts_with(b"HTTP/") {
        return Verdict::Foreign(Foreign::Http);
    }
    if first.starts_with(b"PROXY TCP") || first.starts_with(b"PROXY UNKNOWN") {
        return Verdict::Foreign(Foreign::Proxy);
    }
    // IRC registration (RFC 2812 3.1, IRCv3 capability negotiation).
    // chatd's own password command is `/pass`, never `PASS`.
    let irc = match words[0] {
        b"CAP" => words.len() >= 2 && upper(words[1]),
        b"PASS" => words.len() == 2,
        b"USER" => words.len() >= 5,
        // `NICK jane` alone could be chat; with USER right behind it, it is not.
        b"NICK" if words.len() == 2 => {
            let second = memchr(b'\n', rest).map_or(rest, |i| &rest[..i]);
            if second.starts_with(b"USER ") {
                true
            } else if memchr(b'\n', rest).is_none()
                && !(quiet || eof)
                && b"USER ".starts_with(second)
            {
                return Verdict::Undecided;
            } else {
                false
            }
        }
        _ => false,
    };
    if irc {
        Verdict::Foreign(Foreign::Irc)
    } else {
        Verdict::Chat
    }
}

/// The host a browser asked for (its Host header, without the port), if
/// it is in what came and looks like a host name or address.
fn host_header(buf: &[u8]) -> Option<&str> {
    let head = &buf[..buf.len().min(8192)];
    let line = head
        .split(|&b| b == b'\n')
        .skip(1)
        .find(|l| l.len() > 5 && l[..5].eq_ignore_ascii_case(b"host:"))?;
    let value = std::str::from_utf8(&line[5..]).ok()?.trim();
    let host = match value.strip_prefix('[') {
        Some(v6) => &value[..v6.find(']')? + 2],
        None => value.split(':').next()?,
    };
    let fine = |c: char| c.is_ascii_alphanumeric() || ".-[]:".contains(c);
    (!host.is_empty() && host.len() <= 255 && host.chars().all(fine)).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &mut LineSession, eof: bool) -> Vec<Step> {
        crate::conn::steps_until_read(|| s.next(eof))
    }

    #[test]
    fn lines_split_across_reads_come_out_whole_and_cleaned() {
        let mut s = LineSession::new(10);
        assert_eq!(lines(&mut s, false), [Step::Read(usize::MAX)]);
        s.feed(b"hel");
        assert_eq!(lines(&mut s, false), [Step::Read(usize::MAX)]);
        s.feed(b"lo\r\nw\x07orld\n");
        assert_eq!(
            lines(&mut s, false),
            [
                Step::Join,
                Step::Line(Some("hello".into())),
                Step::Line(Some("world".into())),
                Step::Read(usize::MAX)
            ]
        );
    }

    #[test]
    fn a_long_line_is_refused_once_and_the_next_is_read() {
        let mut s = LineSession::new(4);
        s.feed(b"abcdefgh");
        assert_eq!(
            lines(&mut s, false),
            [Step::Join, Step::TooLong, Step::Read(usize::MAX)]
        );
        s.feed(b"ijk\nok\n");
        assert_eq!(
            lines(&mut s, false),
            [Step::Line(Some("ok".into())), Step::Read(usize::MAX)]
        );
    }

    #[test]
    fn at_eof_the_unterminated_last_line_counts_then_it_closes_gracefully() {
        let mut s = LineSession::new(10);
        s.feed(b"a\nlast");
        assert_eq!(
            lines(&mut s, true),
            [
                Step::Join,
                Step::Line(Some("a".into())),
                Step::Line(Some("last".into())),
                Step::Close {
                    last: None,
                    reason: None,
                    graceful: true
                }
            ]
        );
    }

    fn refused(step: &Step) -> Option<(&[u8], &str)> {
        match step {
            Step::Close {
                last: Some(last),
                reason: Some(why),
                graceful: true,
            } => Some((last, why)),
            _ => None,
        }
    }

    #[test]
    fn another_protocol_first_is_answered_in_kind_before_any_join() {
        let web = Some(Web {
            scheme: "http",
            port: 8080,
        });
        let first = |bytes: &[u8]| {
            let mut s = LineSession::new(100).with_web(web);
            s.feed(bytes);
            lines(&mut s, false)
        };
        let got = first(b"GET / HTTP/1.1\r\nHost: [::1]:3000\r\n\r\n");
        let (page, why) = refused(&got[0]).expect("refused");
        assert!(page.starts_with(b"HTTP/1.1 400 "));
        assert!(String::from_utf8_lossy(page).contains("http://[::1]:8080/"));
        assert_eq!(why, "an HTTP request on the line port");
        let got = first(b"\x16\x03\x01");
        assert_eq!(refused(&got[0]).unwrap().0, TLS_ALERT);
        for irc in [
            &b"CAP LS 302\r\n"[..],
            b"PASS x\r\n",
            b"USER u 0 * :J D\r\n",
        ] {
            let got = first(irc);
            assert!(
                refused(&got[0]).unwrap().0.starts_with(b"ERROR :"),
                "{irc:?}"
            );
        }
        let got = first(b"\r\n\r\n\0\r\nQUIT\n\x21");
        assert!(refused(&got[0]).unwrap().0.starts_with(b"*** error: "));
        let got = first(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
        assert!(refused(&got[0]).is_some());
        // Half a request line: wait for the rest.
        assert_eq!(first(b"GET / HT"), [Step::Read(usize::MAX)]);
    }

    #[test]
    fn nick_waits_for_the_line_behind_it_until_quiet() {
        let mut s = LineSession::new(100);
        s.feed(b"NICK jane\r\n");
        assert_eq!(lines(&mut s, false), [Step::Read(usize::MAX)]);
        s.feed(b"USER u 0 * :Jane\r\n");
        assert!(refused(&lines(&mut s, false)[0]).is_some());
        let mut s = LineSession::new(100);
        s.feed(b"NICK bob\nhello\n");
        assert_eq!(
            lines(&mut s, false),
            [
                Step::Join,
                Step::Line(Some("NICK bob".into())),
                Step::Line(Some("hello".into())),
                Step::Read(usize::MAX)
            ]
        );
        let mut s = LineSession::new(100);
        s.feed(b"NICK bob\n");
        s.quiet();
        assert_eq!(
            lines(&mut s, false),
            [
                Step::Join,
                Step::Line(Some("NICK bob".into())),
                Step::Read(usize::MAX)
            ]
        );
    }

    #[test]
    fn quiet_joins_yet_the_first_line_is_still_looked_at() {
        let mut s = LineSession::new(100);
        assert_eq!(lines(&mut s, false), [Step::Read(usize::MAX)]);
        s.quiet();
        assert_eq!(lines(&mut s, false), [Step::Join, Step::Read(usize::MAX)]);
        s.feed(b"GET / HTTP/1.0\r\n");
        assert!(refused(&lines(&mut s, false)[0]).is_some());
        // A word-less hang-up before joining is nobody's business.
        let mut s = LineSession::new(100);
        assert_eq!(
            lines(&mut s, true),
            [Step::Close {
                last: None,
                reason: None,
                graceful: true
            }]
        );
    }
}
