//! Sans-IO RFC 6455, server side: a bounded [`Decoder`] that turns the bytes a
//! browser sends into [`Event`]s, and encoders for the frames chatd sends.
//!
//! Frame headers are parsed and frames are written by tungstenite's frame
//! types; this module adds what a server must enforce on top: masking,
//! reserved bits, control-frame rules, fragmentation order, UTF-8 and the
//! message size limit, each mapped to the close code RFC 6455 7.4.1 names.
//!
//! How a connection drives it (conn/ws.rs, one step at a time so the
//! reactor can stop between lines for --rate and its per-turn budget):
//!
//! ```text
//! loop {
//!     match dec.next_event() {
//!         Ok(Some(Event::Text(msg))) => for line in lines(&msg) { hand(line) }, // one step each
//!         Ok(Some(Event::Ping(p))) => queue(pong_frame(&p)),                    // under --sendq
//!         Ok(Some(Event::Pong)) => {}
//!         Ok(Some(Event::TooLong)) => tell_the_client("*** error: line too long ..."),
//!         Ok(Some(Event::Close { code, .. })) => { queue(close_reply(code)); close after flush }
//!         Err(v) => { queue(v.close_frame()); close after flush }
//!         Ok(None) if peer_hung_up => close,
//!         Ok(None) => {
//!             let n = socket.read(&mut scratch[..dec.room().min(scratch.len())])?;
//!             dec.feed(&scratch[..n]);                                         // takes all of it
//!         }
//!     }
//! }
//! ```
//!
//! After `next_event` returns `Ok(None)`, `room()` is non-zero unless the
//! decoder has finished (close received or a violation), so feeding always
//! makes progress.

use std::io::{self, Cursor, Write};
use tungstenite::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;

/// RFC 6455 5.5: control frames carry at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// What the peer sent, once a complete message or control frame is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message, reassembled if it was fragmented. One
    /// message is one protocol line, but a browser could put CR or LF in it:
    /// pass it through [`lines`] so it cannot smuggle extra lines to others.
    Text(String),
    /// Answer with [`pong_frame`] carrying the same payload.
    Ping(Vec<u8>),
    /// An answer to a ping, or an unsolicited heartbeat; nothing to do.
    Pong,
    /// A message over the limit was dropped unread (only with
    /// [`Oversize::Skip`]): tell the client, as line mode does for a long
    /// line. Later messages decode as usual.
    TooLong,
    /// The peer started the closing handshake: answer with
    /// [`close_reply`] and close once it is flushed. `code` is `None` when
    /// the close frame had no body. The decoder yields nothing after this.
    Close { code: Option<u16>, reason: String },
}

/// A protocol violation: send [`Violation::close_frame`] and close. The
/// decoder yields nothing after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The RFC 6455 7.4.1 status code for the close frame.
    pub code: u16,
    /// Short and readable; also sent in the close frame, so browsers show it.
    pub reason: String,
}

impl Violation {
    fn new(code: CloseCode, reason: impl Into<String>) -> Violation {
        Violation {
            code: code.into(),
            reason: reason.into(),
        }
    }

    pub fn close_frame(&self) -> Vec<u8> {
        close_frame(Some(self.code), &self.reason)
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// What to do with a text message longer than the limit. Either way its
/// bytes are never buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Fail with 1009 (message too big) and close.
    Close,
    /// Drop the message as its bytes arrive, report [`Event::TooLong`] once
    /// and carry on, like line mode's discard of an over-long line.
    Skip,
}

/// Decodes client frames. Bounded: the unparsed input never exceeds one
/// header plus the payload the current frame may still have (what is left of
/// the message limit, or a control frame's 125 bytes), and the reassembled
/// message never exceeds the limit; together at most
/// `max_message + MAX_HEADER + MAX_CONTROL_PAYLOAD` bytes, and only
/// `max_message + MAX_HEADER` when no ping arrives mid-message.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    oversize: Oversize,
    /// Payload bytes of a dropped frame still to come and be thrown away.
    skip: u64,
    /// The rest of a too-long fragmented message is being dropped.
    discarding: bool,
    /// Received bytes not yet decoded: at most one frame header plus payload,
    /// then the start of what follows.
    input: Vec<u8>,
    /// Unmasked payload of the text message being reassembled.
    message: Vec<u8>,
    /// `message[..valid]` is known to be valid UTF-8, so each fragment is
    /// checked once and an invalid sequence fails as soon as it arrives.
    valid: usize,
    /// A text message has started (first frame not final) and not ended.
    fragmented: bool,
    /// A close or a violation was seen; everything after is ignored.
    finished: bool,
}

impl Decoder {
    /// `max_message` is the longest text message accepted, in bytes (chatd
    /// passes `--max-line`). A longer one is a violation (1009); see
    /// [`with_oversize`](Self::with_oversize) to skip it instead.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            oversize: Oversize::Close,
            skip: 0,
            discarding: false,
            input: Vec::new(),
            message: Vec::new(),
            valid: 0,
            fragmented: false,
            finished: false,
        }
    }

    pub fn with_oversize(mut self, oversize: Oversize) -> Decoder {
        self.oversize = oversize;
        self
    }

    /// True once a close frame or a violation has been decoded.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// How many bytes [`feed`](Self::feed) accepts now.
    pub fn room(&self) -> usize {
        if self.finished {
            return 0;
        }
        self.capacity().saturating_sub(self.input.len())
    }

    /// Whatever frame comes next fits: a data frame may carry what is left of
    /// the message limit (a longer one fails on its header), a control frame
    /// 125 bytes.
    fn capacity(&self) -> usize {
        let left = self.max_message.saturating_sub(self.message.len());
        MAX_HEADER + left.max(MAX_CONTROL_PAYLOAD)
    }

    /// Appends as much of `bytes` as fits in [`room`](Self::room) and returns
    /// how many were taken; the caller feeds the rest after draining events.
    /// Bytes after a close or violation are taken and dropped.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.finished {
            return bytes.len();
        }
        let n = bytes.len().min(self.room());
        self.input.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next event from the bytes fed so far; `Ok(None)` when more bytes
    /// are needed (or after the end). A violation is reported once.
    pub fn next_event(&mut self) -> Result<Option<Event>, Violation> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.skip > 0 {
                let n = self
                    .input
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.input.drain(..n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let mut cursor = Cursor::new(self.input.as_slice());
            let (header, declared) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                // Reading a slice cannot fail, so this is a reserved opcode.
                Err(e) => return self.fail(Violation::new(CloseCode::Protocol, e.to_string())),
            };
            let header_len = cursor.position() as usize;
            // Every check that needs only the header runs before the payload
            // is waited for, so a bad or huge frame is never buffered.
            let (mask, len) = match self.check(&header, declared) {
                Ok(Verdict::Take(mask, len)) => (mask, len),
                Ok(Verdict::Drop { oversize }) => {
                    self.input.drain(..header_len);
                    self.skip = declared;
                    self.discarding = !header.is_final;
                    self.fragmented = !header.is_final;
                    if oversize {
                        self.message.clear();
                        self.valid = 0;
                        return Ok(Some(Event::TooLong));
                    }
                    continue;
                }
                Err(v) => return self.fail(v),
            };
            let end = header_len + len;
            if self.input.len() < end {
                debug_assert!(end <= self.capacity(), "a checked frame always fits");
                return Ok(None);
            }
            let masked = &self.input[header_len..end];
            let event = match header.opcode {
                OpCode::Data(_) => {
                    unmask(mask, masked, &mut self.message);
                    self.input.drain(..end);
                    match self.text_fragment(header.is_final) {
                        Ok(Some(text)) => Some(Event::Text(text)),
                        Ok(None) => None,
                        Err(v) => return self.fail(v),
                    }
                }
                OpCode::Control(control) => {
                    let mut payload = Vec::with_capacity(len);
                    unmask(mask, masked, &mut payload);
                    self.input.drain(..end);
                    match control {
                        Control::Ping => Some(Event::Ping(payload)),
                        Control::Pong => Some(Event::Pong),
                        Control::Close => match parse_close(&payload) {
                            Ok(event) => {
                                self.finish();
                                Some(event)
                            }
                            Err(v) => return self.fail(v),
                        },
                        Control::Reserved(op) => {
                            // FrameHeader::parse already rejects these.
                            let why = format!("reserved opcode {op}");
                            return self.fail(Violation::new(CloseCode::Protocol, why));
                        }
                    }
                }
            };
            if event.is_some() {
                return Ok(event);
            }
        }
    }

    /// Header-only checks: take the frame (its mask and payload length),
    /// drop it unread, or fail.
    fn check(&self, h: &FrameHeader, declared: u64) -> Result<Verdict, Violation> {
        use CloseCode::{Protocol, Size, Unsupported};
        if declared >> 63 != 0 {
            // RFC 6455 5.2: the most significant bit of a 64-bit length
            // MUST be 0. Not a long message to skip: a broken peer.
            return Err(Violation::new(Protocol, "frame length has its top bit set"));
        }
        if h.rsv1 || h.rsv2 || h.rsv3 {
            // No extension was negotiated (permessage-deflate would set rsv1).
            return Err(Violation::new(Protocol, "reserved bits set"));
        }
        let Some(mask) = h.mask else {
            return Err(Violation::new(Protocol, "client frames must be masked"));
        };
        match h.opcode {
            OpCode::Control(_) => {
                if !h.is_final {
                    return Err(Violation::new(Protocol, "fragmented control frame"));
                }
                if declared > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(Violation::new(Protocol, "control frame too long"));
                }
            }
            OpCode::Data(Data::Binary) => {
                // The protocol is lines of text; binary has no meaning here.
                return Err(Violation::new(Unsupported, "binary messages not supported"));
            }
            OpCode::Data(Data::Continue) if !self.fragmented => {
                return Err(Violation::new(Protocol, "continuation without a message"));
            }
            OpCode::Data(Data::Text) if self.fragmented => {
                return Err(Violation::new(
                    Protocol,
                    "new message inside a fragmented one",
                ));
            }
            OpCode::Data(Data::Reserved(op)) => {
                return Err(Violation::new(Protocol, format!("reserved opcode {op}")));
            }
            OpCode::Data(_) if self.discarding => {
                return Ok(Verdict::Drop { oversize: false });
            }
            OpCode::Data(_) => {
                // Compared in u64 before narrowing, so a declared length
                // beyond usize cannot wrap past the check.
                let left = self.max_message.saturating_sub(self.message.len());
                if declared > left as u64 {
                    if self.oversize == Oversize::Skip {
                        return Ok(Verdict::Drop { oversize: true });
                    }
                    let why = format!("message longer than {} bytes", self.max_message);
                    return Err(Violation::new(Size, why));
                }
            }
        }
        // Both branches above bound `declared` by a usize.
        let len = usize::try_from(declared)
            .map_err(|_| Violation::new(Size, "frame length does not fit"))?;
        Ok(Verdict::Take(mask, len))
    }

    /// The frame's unmasked payload has been appended to `message`: check
    /// UTF-8 so far and, on the final frame, hand the message out.
    fn text_fragment(&mut self, is_final: bool) -> Result<Option<String>, Violation> {
        match std::str::from_utf8(&self.message[self.valid..]) {
            Ok(_) => self.valid = self.message.len(),
            // Only an invalid sequence fails early; a code point split
            // across fragments is incomplete, not invalid.
            Err(e) if e.error_len().is_some() || is_final => {
                return Err(Violation::new(
                    CloseCode::Invalid,
                    "text is not valid UTF-8",
                ));
            }
            Err(e) => self.valid += e.valid_up_to(),
        }
        if !is_final {
            self.fragmented = true;
            return Ok(None);
        }
        self.fragmented = false;
        self.valid = 0;
        let bytes = std::mem::take(&mut self.message);
        // Validated above; the fallback is unreachable but costs nothing.
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Violation::new(CloseCode::Invalid, "text is not valid UTF-8"))
    }

    fn fail<T>(&mut self, v: Violation) -> Result<T, Violation> {
        self.finish();
        Err(v)
    }

    fn finish(&mut self) {
        self.finished = true;
        self.skip = 0;
        self.discarding = false;
        self.input = Vec::new();
        self.message = Vec::new();
        self.valid = 0;
    }
}

enum Verdict {
    Take([u8; 4], usize),
    /// Throw the payload away unread; `oversize` when this frame starts the
    /// dropping (rather than continuing a message already being dropped).
    Drop {
        oversize: bool,
    },
}

/// Splits a text message into protocol lines the way line mode frames bytes:
/// at LF, dropping a CR before it, skipping blank lines. A well-behaved page
/// sends exactly one line per message.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (line, next) = next_line(text, at)?;
        at = next;
        Some(line)
    })
}

/// The first line of `text[from..]` as [`lines`] splits it, and the offset
/// just after it; None when only blank lines are left. Lets a caller hand
/// out a message's lines one at a time (each waits for `--rate` like a
/// telnet line) while keeping only the message and an offset.
pub fn next_line(text: &str, mut from: usize) -> Option<(&str, usize)> {
    while let Some(rest) = text.get(from..).filter(|r| !r.is_empty()) {
        let (line, len) = match rest.find('\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        from += len;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.is_empty() {
            return Some((line, from));
        }
    }
    None
}

fn parse_close(payload: &[u8]) -> Result<Event, Violation> {
    match payload {
        [] => Ok(Event::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(Violation::new(
            CloseCode::Protocol,
            "close frame with a 1-byte body",
        )),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Rejects 1005, 1006, 1015, unassigned and out-of-range codes.
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::new(
                    CloseCode::Protocol,
                    format!("invalid close code {code}"),
                ));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Violation::new(CloseCode::Invalid, "close reason is not UTF-8"))?;
            Ok(Event::Close {
                code: Some(code),
                reason: reason.to_string(),
            })
        }
    }
}

/// Appends `masked` unmasked to `out`, with tungstenite's masking rather
/// than our own loop (its mask helper is private): `Frame::format` XORs the
/// payload with the header's mask, and XOR with the same key undoes itself,
/// so formatting the masked bytes under that key writes a header followed by
/// the clear payload. The header is skipped on the way into `out`.
fn unmask(mask: [u8; 4], masked: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let skip = header.len(masked.len() as u64);
    let frame = Frame::from_payload(header, Bytes::copy_from_slice(masked));
    let mut sink = SkipWriter { skip, out };
    // SkipWriter never returns an error.
    let _ = frame.format(&mut sink);
}

/// Drops the first `skip` bytes written, appends the rest to `out`.
struct SkipWriter<'a> {
    skip: usize,
    out: &'a mut Vec<u8>,
}

impl Write for SkipWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skipped = self.skip.min(buf.len());
        self.skip -= skipped;
        self.out.extend_from_slice(&buf[skipped..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn encode(frame: Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

/// One server line as one unmasked text frame. Encode a broadcast once and
/// share the bytes among all WebSocket recipients.
pub fn text_frame(line: &str) -> Vec<u8> {
    encode(Frame::message(
        Bytes::copy_from_slice(line.as_bytes()),
        OpCode::Data(Data::Text),
        true,
    ))
}

/// Like [`text_frame`], from a line as written for telnet clients: a trailing
/// CRLF (or LF) is dropped, and any invalid UTF-8 is replaced, because a text
/// frame with invalid UTF-8 makes the browser drop the connection.
pub fn line_frame(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    text_frame(&String::from_utf8_lossy(line))
}

/// The answer to a ping, echoing its payload (at most 125 bytes by the time
/// the decoder hands it out).
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    encode(Frame::pong(Bytes::copy_from_slice(payload)))
}

/// A ping from the server. Browsers answer pings by themselves, so a ping
/// every half minute keeps proxies and load balancers that cut idle
/// connections (often after 60 s) from dropping a quiet chat, and shows a
/// dead peer sooner.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    encode(Frame::ping(Bytes::copy_from_slice(payload)))
}

/// A close frame; `None` sends an empty body. The reason is cut at a char
/// boundary to fit the 123 bytes a control frame leaves after the code.
pub fn close_frame(code: Option<u16>, reason: &str) -> Vec<u8> {
    let Some(code) = code else {
        return encode(Frame::close(None));
    };
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    // Built by hand rather than from a CloseFrame because Frame::close takes
    // tungstenite's Utf8Bytes; the header still comes from tungstenite.
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    encode(Frame::from_payload(header, Bytes::from(payload)))
}

/// The answer to a peer's close: echo its code (RFC 6455 5.5.1), or an empty
/// close when it sent none.
pub fn close_reply(code: Option<u16>) -> Vec<u8> {
    close_frame(code, "")
}

/// A normal close: the client asked to leave (`/quit`) or hung up.
pub const NORMAL: u16 = 1000;
/// A server-side close for shutdown or a slow consumer, e.g.
/// `close_frame(Some(GOING_AWAY), "server shutting down")`.
pub const GOING_AWAY: u16 = 1001;
/// Close code for a policy refusal such as a slow consumer (`--sendq`).
pub const POLICY: u16 = 1008;

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame, built with tungstenite's own formatter.
    fn client_frame(opcode: u8, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode: OpCode::from(opcode),
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
        out
    }

    fn text(payload: &str) -> Vec<u8> {
        client_frame(0x1, true, payload.as_bytes())
    }

    /// Feeds everything (draining events whenever the decoder is full) and
    /// returns the events and the violation, if any.
    fn decode_all(max: usize, bytes: &[u8]) -> (Vec<Event>, Option<Violation>) {
        decode_chunked(max, bytes, bytes.len().max(1))
    }

    fn decode_chunked(max: usize, bytes: &[u8], chunk: usize) -> (Vec<Event>, Option<Violation>) {
        decode_with(Decoder::new(max), bytes, chunk)
    }

    fn decode_with(
        mut dec: Decoder,
        bytes: &[u8],
        chunk: usize,
    ) -> (Vec<Event>, Option<Violation>) {
        let max = dec.max_message;
        let mut events = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut rest = piece;
            // Each round either takes bytes or finishes: bounded by the input.
            for _ in 0..=bytes.len() {
                let took = dec.feed(rest);
                rest = &rest[took..];
                assert!(
                    dec.input.len() + dec.message.len() <= max + MAX_HEADER + MAX_CONTROL_PAYLOAD,
                    "decoder over its bound"
                );
                loop {
                    match dec.next_event() {
                        Ok(Some(e)) => events.push(e),
                        Ok(None) => break,
                        Err(v) => {
                            assert!(dec.is_finished());
                            assert_eq!(dec.next_event(), Ok(None), "violation reported once");
                            return (events, Some(v));
                        }
                    }
                }
                if rest.is_empty() {
                    break;
                }
                assert!(
                    dec.room() > 0 || dec.is_finished(),
                    "stuck with a full buffer"
                );
            }
            assert!(rest.is_empty(), "input not consumed");
        }
        (events, None)
    }

    fn violation(bytes: &[u8]) -> Violation {
        let (_, v) = decode_all(MAX, bytes);
        v.expect("expected a violation")
    }

    #[test]
    fn single_text_frame() {
        let (events, v) = decode_all(MAX, &text("hello"));
        assert_eq!(events, vec![Event::Text("hello".into())]);
        assert_eq!(v, None);
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 5.7: "A single-frame masked text message".
        let raw = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(text("Hello"), raw);
        let (events, _) = decode_all(MAX, &raw);
        assert_eq!(events, vec![Event::Text("Hello".into())]);
    }

    #[test]
    fn byte_at_a_time_and_many_frames_in_one_read() {
        let mut raw = text("one");
        raw.extend(text(""));
        raw.extend(text("three ✓"));
        let want = vec![
            Event::Text("one".into()),
            Event::Text("".into()),
            Event::Text("three ✓".into()),
        ];
        for chunk in [1, 2, 3, 7, raw.len()] {
            let (events, v) = decode_chunked(MAX, &raw, chunk);
            assert_eq!(events, want, "chunk {chunk}");
            assert_eq!(v, None);
        }
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let mut raw = client_frame(0x1, false, b"hel");
        raw.extend(client_frame(0x9, true, b"are you there"));
        raw.extend(client_frame(0x0, false, b""));
        raw.extend(client_frame(0xA, true, b""));
        raw.extend(client_frame(0x0, true, b"lo"));
        for chunk in [1, 5, raw.len()] {
            let (events, v) = decode_chunked(MAX, &raw, chunk);
            assert_eq!(
                events,
                vec![
                    Event::Ping(b"are you there".to_vec()),
                    Event::Pong,
                    Event::Text("hello".into()),
                ]
            );
            assert_eq!(v, None);
        }
    }

    #[test]
    fn code_point_split_across_fragments() {
        let snow = "☃".as_bytes(); // three bytes
        let mut raw = client_frame(0x1, false, &snow[..1]);
        raw.extend(client_frame(0x0, false, &snow[1..2]));
        raw.extend(client_frame(0x0, true, &snow[2..]));
        let (events, v) = decode_all(MAX, &raw);
        assert_eq!(events, vec![Event::Text("☃".into())]);
        assert_eq!(v, None);
    }

    #[test]
    fn unmasked_frame_is_1002() {
        let mut raw = Vec::new();
        Frame::message(Bytes::from_static(b"hi"), OpCode::Data(Data::Text), true)
            .format(&mut raw)
            .unwrap();
        assert_eq!(raw, [0x81, 0x02, b'h', b'i']);
        let v = violation(&raw);
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1002, "client frames must be masked")
        );
    }

    #[test]
    fn invalid_utf8_is_1007() {
        let v = violation(&client_frame(0x1, true, b"caf\xe9"));
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1007, "text is not valid UTF-8")
        );
        // A message that ends inside a code point is invalid too.
        assert_eq!(
            violation(&client_frame(0x1, true, &"☃".as_bytes()[..2])).code,
            1007
        );
    }

    #[test]
    fn invalid_utf8_fails_at_the_bad_fragment() {
        // The first fragment is already invalid: no need to wait for the end.
        let raw = client_frame(0x1, false, b"\xff");
        let (events, v) = decode_all(MAX, &raw);
        assert!(events.is_empty());
        assert_eq!(v.map(|v| v.code), Some(1007));
    }

    #[test]
    fn message_at_the_limit_passes_and_one_more_byte_is_1009() {
        let fits = "x".repeat(MAX);
        let (events, v) = decode_all(MAX, &text(&fits));
        assert_eq!(events, vec![Event::Text(fits)]);
        assert_eq!(v, None);

        let v = violation(&text(&"x".repeat(MAX + 1)));
        assert_eq!(v.code, 1009);
        assert_eq!(v.reason, format!("message longer than {MAX} bytes"));
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        // A header declaring 2^62 bytes and nothing else: refused at once,
        // without waiting for (or reserving room for) the payload.
        let mut raw = vec![0x81, 0xFF];
        raw.extend_from_slice(&(1u64 << 62).to_be_bytes());
        raw.extend_from_slice(&MASK);
        let mut dec = Decoder::new(MAX);
        assert_eq!(dec.feed(&raw), raw.len());
        assert_eq!(dec.next_event().map_err(|v| v.code), Err(1009));
        assert_eq!(dec.room(), 0);
    }

    /// Property (as the line framer's): random streams — valid messages
    /// split into fragments at any byte with pings between them, and
    /// hostile pieces (random bytes, random 64-bit lengths, flipped bits) —
    /// decode to the same events and violation however they are cut into
    /// reads, never panic, and stay within the decoder's bound (which
    /// `decode_with` asserts after every feed). Uncorrupted streams give
    /// exactly the messages sent.
    #[test]
    fn decoding_is_independent_of_read_boundaries_and_never_panics() {
        const LIMIT: usize = 64;
        let mut rng = fastrand::Rng::with_seed(13);
        let alphabet = ['a', 'z', ' ', 'é', '☃', '😀', '\n'];
        for _ in 0..1500 {
            let mut raw = Vec::new();
            let mut expect = Vec::new();
            let mut hostile = false;
            let mut top_bit = false;
            for _ in 0..rng.usize(1..6) {
                match rng.u8(0..10) {
                    0..=4 => {
                        let len = rng.usize(0..20);
                        let msg: String = (0..len).map(|_| alphabet[rng.usize(..7)]).collect();
                        let bytes = msg.as_bytes();
                        let cut = rng.usize(0..=bytes.len());
                        if cut == 0 || cut == bytes.len() {
                            raw.extend(text(&msg));
                        } else {
                            raw.extend(client_frame(0x1, false, &bytes[..cut]));
                            raw.extend(client_frame(0x9, true, b"mid"));
                            expect.push(Event::Ping(b"mid".to_vec()));
                            raw.extend(client_frame(0x0, true, &bytes[cut..]));
                        }
                        expect.push(Event::Text(msg));
                    }
                    5 | 6 => {
                        let payload: Vec<u8> = (0..rng.usize(0..10)).map(|_| rng.u8(..)).collect();
                        raw.extend(client_frame(0x9, true, &payload));
                        expect.push(Event::Ping(payload));
                    }
                    7 => {
                        hostile = true;
                        raw.extend((0..rng.usize(1..30)).map(|_| rng.u8(..)));
                    }
                    8 => {
                        let len = rng.u64(..);
                        raw.extend_from_slice(&[0x81, 0xff]);
                        raw.extend_from_slice(&len.to_be_bytes());
                        raw.extend_from_slice(&MASK);
                        if !hostile && len >> 63 == 1 {
                            // RFC 6455 5.2: whatever follows, this ends it.
                            top_bit = true;
                            break;
                        }
                        hostile = true;
                    }
                    _ => {
                        raw.extend(client_frame(0xa, true, b""));
                        expect.push(Event::Pong);
                    }
                }
            }
            if !top_bit && rng.u8(0..4) == 0 && !raw.is_empty() {
                hostile = true;
                let at = rng.usize(..raw.len());
                raw[at] ^= 1 << rng.u8(0..8);
            }
            for oversize in [Oversize::Close, Oversize::Skip] {
                let dec = || Decoder::new(LIMIT).with_oversize(oversize);
                let whole = decode_with(dec(), &raw, raw.len().max(1));
                let chunk = rng.usize(1..=17);
                let split = decode_with(dec(), &raw, chunk);
                assert_eq!(whole, split, "cut every {chunk} bytes: {raw:02x?}");
                if top_bit {
                    let (events, v) = whole;
                    assert_eq!(events, expect, "{raw:02x?}");
                    assert_eq!(v.map(|v| v.code), Some(1002), "{raw:02x?}");
                } else if !hostile {
                    assert_eq!(whole, (expect.clone(), None), "{raw:02x?}");
                }
            }
        }
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_1002_even_when_skipping() {
        let mut raw = vec![0x81, 0xFF];
        raw.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        raw.extend_from_slice(&MASK);
        for oversize in [Oversize::Close, Oversize::Skip] {
            let mut dec = Decoder::new(MAX).with_oversize(oversize);
            dec.feed(&raw);
            assert_eq!(dec.next_event().map_err(|v| v.code), Err(1002));
        }
    }

    #[test]
    fn reassembled_total_over_the_limit_is_1009() {
        let half = "x".repeat(MAX / 2);
        let mut raw = client_frame(0x1, false, half.as_bytes());
        raw.extend(client_frame(0x0, false, half.as_bytes()));
        raw.extend(client_frame(0x0, true, b"!"));
        let (events, v) = decode_all(MAX, &raw);
        assert!(events.is_empty());
        assert_eq!(v.map(|v| v.code), Some(1009));
    }

    #[test]
    fn buffer_stays_bounded_under_a_flood() {
        // Many maximal messages with pings between their fragments, fed in
        // big reads: decode_chunked asserts the bound after every feed.
        let mut raw = Vec::new();
        for _ in 0..20 {
            raw.extend(client_frame(0x1, false, &[b'a'; MAX - 1]));
            raw.extend(client_frame(0x9, true, &[b'p'; MAX_CONTROL_PAYLOAD]));
            raw.extend(client_frame(0x0, true, b"b"));
        }
        let (events, v) = decode_chunked(MAX, &raw, 4096);
        assert_eq!(v, None);
        assert_eq!(events.len(), 40);
        let dec = Decoder::new(MAX);
        assert!(dec.room() <= MAX + MAX_HEADER + MAX_CONTROL_PAYLOAD);
    }

    #[test]
    fn skip_mode_drops_an_oversize_message_and_carries_on() {
        let mut raw = text(&"x".repeat(MAX + 1));
        raw.extend(text("next"));
        // A fragmented one that goes over the limit in its second fragment,
        // with a ping in the part being dropped.
        raw.extend(client_frame(0x1, false, &[b'a'; MAX - 1]));
        raw.extend(client_frame(0x0, false, b"bc"));
        raw.extend(client_frame(0x9, true, b"p"));
        raw.extend(client_frame(0x0, false, &[b'd'; 3 * MAX]));
        raw.extend(client_frame(0x0, true, b"e"));
        raw.extend(text("after"));
        for chunk in [1, 3, 64, raw.len()] {
            let dec = Decoder::new(MAX).with_oversize(Oversize::Skip);
            let (events, v) = decode_with(dec, &raw, chunk);
            assert_eq!(v, None, "chunk {chunk}");
            assert_eq!(
                events,
                vec![
                    Event::TooLong,
                    Event::Text("next".into()),
                    Event::TooLong,
                    Event::Ping(b"p".to_vec()),
                    Event::Text("after".into()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn skip_mode_never_buffers_the_dropped_bytes() {
        // A header declaring 2^40 bytes, then a stream of them: the decoder
        // keeps taking and dropping without growing.
        let mut dec = Decoder::new(MAX).with_oversize(Oversize::Skip);
        let mut raw = vec![0x81, 0xFF];
        raw.extend_from_slice(&(1u64 << 40).to_be_bytes());
        raw.extend_from_slice(&MASK);
        assert_eq!(dec.feed(&raw), raw.len());
        assert_eq!(dec.next_event(), Ok(Some(Event::TooLong)));
        let junk = [0u8; 4096];
        for _ in 0..1000 {
            let took = dec.feed(&junk);
            assert!(took > 0);
            assert!(dec.input.len() <= MAX + MAX_HEADER + MAX_CONTROL_PAYLOAD);
            assert_eq!(dec.next_event(), Ok(None));
            assert!(dec.input.is_empty());
        }
        // Still strict about everything else.
        let mut dec = Decoder::new(MAX).with_oversize(Oversize::Skip);
        dec.feed(&client_frame(0x1, false, b"x"));
        dec.feed(&text("interleaved"));
        assert_eq!(dec.next_event().map_err(|v| v.code), Err(1002));
    }

    #[test]
    fn binary_is_1003() {
        let v = violation(&client_frame(0x2, true, b"\x00\x01"));
        assert_eq!(v.code, 1003);
    }

    #[test]
    fn control_frame_rules_are_1002() {
        let v = violation(&client_frame(0x9, true, &[0; 126]));
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1002, "control frame too long")
        );
        let v = violation(&client_frame(0x9, false, b"x"));
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1002, "fragmented control frame")
        );
        let v = violation(&client_frame(0x8, false, &[0x03, 0xe8]));
        assert_eq!(v.code, 1002);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut raw = text("hi");
            raw[0] |= bit;
            let v = violation(&raw);
            assert_eq!(
                (v.code, v.reason.as_str()),
                (1002, "reserved bits set"),
                "bit {bit:#x}"
            );
        }
    }

    #[test]
    fn reserved_opcodes_are_1002() {
        for op in [0x3u8, 0x7, 0xB, 0xF] {
            let raw = [0x80 | op, 0x80, 1, 2, 3, 4];
            assert_eq!(violation(&raw).code, 1002, "opcode {op:#x}");
        }
    }

    #[test]
    fn continuation_without_start_is_1002() {
        let v = violation(&client_frame(0x0, true, b"lo"));
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1002, "continuation without a message")
        );
    }

    #[test]
    fn new_message_during_fragmented_one_is_1002() {
        let mut raw = client_frame(0x1, false, b"hel");
        raw.extend(text("other"));
        let (events, v) = decode_all(MAX, &raw);
        assert!(events.is_empty());
        let v = v.expect("violation");
        assert_eq!(
            (v.code, v.reason.as_str()),
            (1002, "new message inside a fragmented one")
        );
    }

    #[test]
    fn close_with_code_and_reason() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye now");
        let mut raw = client_frame(0x8, true, &payload);
        raw.extend(text("ignored after close"));
        let (events, v) = decode_all(MAX, &raw);
        assert_eq!(
            events,
            vec![Event::Close {
                code: Some(1000),
                reason: "bye now".into()
            }]
        );
        assert_eq!(v, None);
    }

    #[test]
    fn close_without_body() {
        let (events, _) = decode_all(MAX, &client_frame(0x8, true, b""));
        assert_eq!(
            events,
            vec![Event::Close {
                code: None,
                reason: String::new()
            }]
        );
    }

    #[test]
    fn bad_close_frames() {
        assert_eq!(violation(&client_frame(0x8, true, &[0x03])).code, 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let v = violation(&client_frame(0x8, true, &code.to_be_bytes()));
            assert_eq!(v.code, 1002, "close code {code}");
        }
        for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
            let (events, v) = decode_all(MAX, &client_frame(0x8, true, &code.to_be_bytes()));
            assert_eq!(v, None, "close code {code}");
            assert_eq!(events.len(), 1);
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(violation(&client_frame(0x8, true, &payload)).code, 1007);
    }

    #[test]
    fn nothing_after_a_violation() {
        let mut raw = client_frame(0x2, true, b"x");
        raw.extend(text("after"));
        let (events, v) = decode_all(MAX, &raw);
        assert!(events.is_empty());
        assert!(v.is_some());
    }

    #[test]
    fn lines_split_like_line_mode() {
        assert_eq!(lines("hello").collect::<Vec<_>>(), ["hello"]);
        assert_eq!(lines("a\r\nb\n\nc\r").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\r\n").count(), 0);
        assert_eq!(lines("\n\nx\r\r\n").collect::<Vec<_>>(), ["x\r"]);
        assert_eq!(next_line("a\nb", 0), Some(("a", 2)));
        assert_eq!(next_line("a\nb", 2), Some(("b", 3)));
        assert_eq!(next_line("a\nb", 3), None);
        assert_eq!(next_line("a\n\r\n", 2), None);
    }

    /// Decodes a server frame with tungstenite's parser.
    fn server_frame(raw: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(raw);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(raw.len(), start + len as usize, "exactly one frame");
        (header, raw[start..].to_vec())
    }

    #[test]
    fn text_frame_is_unmasked_and_final() {
        let raw = text_frame("<alice> hi");
        assert_eq!(&raw[..2], &[0x81, 10]);
        let (h, payload) = server_frame(&raw);
        assert!(h.is_final && h.mask.is_none());
        assert_eq!(h.opcode, OpCode::Data(Data::Text));
        assert_eq!(payload, b"<alice> hi");
        // Lengths past 125 and 65535 use the extended forms.
        for n in [126, 65_536] {
            let (_, p) = server_frame(&text_frame(&"x".repeat(n)));
            assert_eq!(p.len(), n);
        }
    }

    #[test]
    fn line_frame_drops_crlf_and_repairs_utf8() {
        assert_eq!(line_frame(b"*** bye\r\n"), text_frame("*** bye"));
        assert_eq!(line_frame(b"*** bye\n"), text_frame("*** bye"));
        assert_eq!(line_frame(b"*** bye"), text_frame("*** bye"));
        let (_, p) = server_frame(&line_frame(b"<bob> caf\xe9\r\n"));
        assert_eq!(p, "<bob> caf\u{fffd}".as_bytes());
    }

    #[test]
    fn pong_echoes_the_ping() {
        let raw = pong_frame(b"abc");
        assert_eq!(raw, [0x8A, 3, b'a', b'b', b'c']);
        assert_eq!(ping_frame(b""), [0x89, 0]);
        assert_eq!(ping_frame(&[7; 200]).len(), 2 + MAX_CONTROL_PAYLOAD);
    }

    #[test]
    fn close_frames() {
        assert_eq!(close_reply(None), [0x88, 0]);
        assert_eq!(close_reply(Some(1000)), [0x88, 2, 0x03, 0xe8]);
        let v = Violation::new(CloseCode::Size, "message longer than 64 bytes");
        let (h, p) = server_frame(&v.close_frame());
        assert_eq!(h.opcode, OpCode::Control(Control::Close));
        assert_eq!(&p[..2], &1009u16.to_be_bytes());
        assert_eq!(&p[2..], b"message longer than 64 bytes");
        // A long reason is cut to fit 125 bytes, at a char boundary.
        let (_, p) = server_frame(&close_frame(Some(1008), &"é".repeat(100)));
        assert!(p.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    #[test]
    fn our_frames_roundtrip_through_tungstenite_client() {
        // tungstenite as a client must accept what we send.
        use tungstenite::protocol::{Role, WebSocketContext};
        let mut wire = text_frame("*** welcome");
        wire.extend(pong_frame(b"p"));
        wire.extend(close_frame(Some(1000), "bye"));
        let mut ctx = WebSocketContext::new(Role::Client, None);
        let mut stream = io::Cursor::new(wire);
        // Reads into a Cursor-backed stream; writes (the auto close reply)
        // go to the same Vec past the end, which is fine for this check.
        let mut rw = ReadOnly(&mut stream);
        let m = ctx.read(&mut rw).unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), "*** welcome");
        let m = ctx.read(&mut rw).unwrap();
        assert!(m.is_pong());
        let m = ctx.read(&mut rw).unwrap();
        assert!(m.is_close());
    }

    struct ReadOnly<'a>(&'a mut io::Cursor<Vec<u8>>);
    impl io::Read for ReadOnly<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl io::Write for ReadOnly<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
