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
    /// The text followed by CRLF, exactly as line clients receive it.
    wire: Box<[u8]>,
    ws: OnceCell<Box<[u8]>>,
}

impl Msg {
    pub fn new(text: &str) -> Rc<Msg> {
        let mut wire = Vec::with_capacity(text.len() + 2);
        wire.extend_from_slice(text.as_bytes());
        wire.extend_from_slice(b"\r\n");
        Rc::new(Msg {
            wire: wire.into_boxed_slice(),
            ws: OnceCell::new(),
        })
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

    /// The line as one WebSocket text frame (without the CRLF), encoded
    /// once however many browsers receive it.
    pub fn ws_frame(&self) -> &[u8] {
        self.ws
            .get_or_init(|| crate::ws::text_frame(self.text()).into_boxed_slice())
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
    }
}
