//! One outgoing line, shared by every recipient of a broadcast.
//!
//! The hub formats a line once and hands the same `Rc<Msg>` to every
//! recipient's queue, so a broadcast to N clients costs one allocation and
//! N reference-count bumps, not N copies. Each transport asks for the
//! encoding it writes: `wire` for line clients, `ws_frame` for browsers,
//! built on first use and then shared by every WebSocket recipient.

use std::cell::OnceCell;
use std::rc::Rc;

pub struct Msg {
    /// The text followed by CRLF, exactly as line clients receive it. A
    /// batch of lines from one sender is one Msg with CRLF between them.
    wire: Box<[u8]>,
    lines: u32,
    ws: OnceCell<Box<[u8]>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Msg").field(&self.text()).finish()
    }
}

impl Msg {
    pub fn new(text: &str) -> Rc<Msg> {
        let mut wire = Vec::with_capacity(text.len() + 2);
        wire.extend_from_slice(text.as_bytes());
        wire.extend_from_slice(b"\r\n");
        let lines = memchr::memchr_iter(b'\n', &wire).count() as u32;
        Rc::new(Msg {
            wire: wire.into_boxed_slice(),
            lines,
            ws: OnceCell::new(),
        })
    }

    /// How many lines this carries (for the count of lines dropped).
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// The line without its CRLF.
    pub fn text(&self) -> &str {
        // Built from a &str plus CRLF in `new`, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.wire[..self.wire.len() - 2]).unwrap_or_default()
    }

    /// The bytes a line client receives.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Each line as one WebSocket text frame (without the CRLF), encoded
    /// once however many browsers receive it.
    pub fn ws_frame(&self) -> &[u8] {
        self.ws.get_or_init(|| {
            let mut frames = Vec::with_capacity(self.wire.len() + 4 * self.lines as usize);
            for line in self.text().split("\r\n") {
                frames.extend_from_slice(&crate::ws::text_frame(line));
            }
            frames.into_boxed_slice()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_share_one_text() {
        let m = Msg::new("hi");
        assert_eq!(m.wire(), b"hi\r\n");
        assert_eq!(m.text(), "hi");
        assert_eq!(m.ws_frame(), &[0x81, 2, b'h', b'i']);
        assert_eq!(m.ws_frame().as_ptr(), m.ws_frame().as_ptr(), "encoded once");
        assert_eq!(m.lines(), 1);
    }

    #[test]
    fn a_batch_is_several_lines_and_several_frames() {
        let m = Msg::new("<a> x\r\n<a> yz");
        assert_eq!(m.wire(), b"<a> x\r\n<a> yz\r\n");
        assert_eq!(m.lines(), 2);
        assert_eq!(
            m.ws_frame(),
            [&[0x81, 5][..], b"<a> x", &[0x81, 6], b"<a> yz"].concat()
        );
    }
}
