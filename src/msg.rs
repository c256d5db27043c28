//! One outgoing line, shared by every recipient of a broadcast.
//!
//! The hub formats a line once and hands the same `Rc<Msg>` to every
//! recipient's queue, so a broadcast to N clients costs one allocation and
//! N reference-count bumps, not N copies. Each transport asks for the
//! encoding it writes (`wire` for line clients).

use std::rc::Rc;

pub struct Msg {
    /// The text followed by CRLF, exactly as line clients receive it.
    wire: Box<[u8]>,
}

impl Msg {
    pub fn new(text: &str) -> Rc<Msg> {
        let mut wire = Vec::with_capacity(text.len() + 2);
        wire.extend_from_slice(text.as_bytes());
        wire.extend_from_slice(b"\r\n");
        Rc::new(Msg {
            wire: wire.into_boxed_slice(),
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
}
