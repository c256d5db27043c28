//! The line protocol (telnet, netcat): bytes in, cleaned lines out. The
//! framing itself is line.rs; this is the connection's state around it.

use super::Step;
use crate::line::{Frame, Framer, sanitize};

pub struct LineSession {
    framer: Framer,
}

impl LineSession {
    /// Lines over `max_line` bytes are refused (`Step::TooLong`).
    pub fn new(max_line: usize) -> LineSession {
        LineSession {
            framer: Framer::new(max_line),
        }
    }

    pub fn next(&mut self, eof: bool) -> Step {
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

    pub fn feed(&mut self, bytes: &[u8]) {
        self.framer.feed(bytes);
    }

    /// Nothing more to read for now: an idle connection holds no input
    /// buffer at all.
    pub fn would_block(&mut self) {
        self.framer.release_if_empty();
    }
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
            [Step::TooLong, Step::Read(usize::MAX)]
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
}
