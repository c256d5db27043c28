//! Line framing, pure: bytes in, lines out. No sockets here.
//!
//! The reactor feeds whatever a read returned and then pulls complete lines
//! one at a time, so it can stop between lines (rate limit, per-turn budget)
//! without losing or copying anything. The buffer only ever holds what has
//! not been consumed: at most one read chunk plus a partial line of at most
//! `max` bytes. An over-long line is reported once and the rest of it is
//! dropped as it arrives, however long it is, without being buffered.

use memchr::memchr;
use std::borrow::Cow;

/// What `Framer::next_frame` yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One line without its LF (and without a CR right before the LF).
    Line(&'a [u8]),
    /// A line passed the maximum; it is discarded up to its LF.
    TooLong,
}

pub struct Framer {
    buf: Vec<u8>,
    /// First unconsumed byte of `buf`; consumed bytes are compacted away
    /// once per `feed`, not once per line.
    pos: usize,
    /// Bytes after `pos` already searched for LF, so a long partial line is
    /// not rescanned on every read.
    scanned: usize,
    max: usize,
    discarding: bool,
    telnet: Telnet,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            max,
            discarding: false,
            telnet: Telnet::Data,
        }
    }

    /// Appends freshly read bytes. Telnet negotiation is removed here, as the
    /// bytes arrive, because a sequence can be split across reads.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let data = self.telnet.filter(data);
        let mut data: &[u8] = &data;
        if self.discarding {
            match memchr(b'\n', data) {
                None => return,
                Some(i) => {
                    self.discarding = false;
                    data = &data[i + 1..];
                }
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, or an over-long line's notice, or None when
    /// more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let rest = &self.buf[self.pos..];
        match memchr(b'\n', &rest[self.scanned..]) {
            Some(i) => {
                let start = self.pos;
                let mut end = start + self.scanned + i;
                self.pos = end + 1;
                self.scanned = 0;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                if end - start > self.max {
                    return Some(Frame::TooLong);
                }
                Some(Frame::Line(&self.buf[start..end]))
            }
            None => {
                // A partial line may legitimately hold max bytes plus the CR
                // of its CRLF; one byte more and it can never fit.
                if rest.len() > self.max + 1 {
                    self.buf.truncate(self.pos);
                    self.scanned = 0;
                    self.discarding = true;
                    return Some(Frame::TooLong);
                }
                self.scanned = rest.len();
                None
            }
        }
    }

    /// At end of input: the unterminated last line, if any, as a line.
    pub fn finish(&mut self) -> Option<Frame<'_>> {
        if self.discarding || self.pos == self.buf.len() {
            return None;
        }
        let start = self.pos;
        self.pos = self.buf.len();
        self.scanned = 0;
        Some(Frame::Line(&self.buf[start..]))
    }

    /// Frees the buffer when nothing is pending, so an idle connection holds
    /// no input memory at all.
    pub fn release_if_empty(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
            self.scanned = 0;
        }
    }

    /// What is held and not consumed yet, for a look before it is framed
    /// (conn/line.rs: is it another protocol's?).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Bytes held (for tests and stats).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Telnet (RFC 854) command stripping: IAC commands, option negotiation
/// (WILL/WONT/DO/DONT opt) and subnegotiation (SB ... IAC SE) vanish; an
/// escaped IAC IAC is a data byte 255 (which sanitising later replaces, as
/// it is not valid UTF-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Telnet {
    Data,
    Iac,
    Opt,
    Sb,
    SbIac,
}

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DONT: u8 = 254;

impl Telnet {
    fn filter<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        if *self == Telnet::Data && memchr(IAC, data).is_none() {
            return Cow::Borrowed(data);
        }
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            *self = match (*self, b) {
                (Telnet::Data, IAC) => Telnet::Iac,
                (Telnet::Data, _) => {
                    out.push(b);
                    Telnet::Data
                }
                (Telnet::Iac, IAC) => {
                    out.push(IAC);
                    Telnet::Data
                }
                (Telnet::Iac, SB) => Telnet::Sb,
                (Telnet::Iac, WILL..=DONT) => Telnet::Opt,
                (Telnet::Iac, _) | (Telnet::Opt, _) => Telnet::Data,
                (Telnet::Sb, IAC) => Telnet::SbIac,
                (Telnet::Sb, _) => Telnet::Sb,
                (Telnet::SbIac, SE) => Telnet::Data,
                (Telnet::SbIac, _) => Telnet::Sb,
            };
        }
        Cow::Owned(out)
    }
}

/// Turns a raw line into the text that may be relayed: invalid UTF-8
/// becomes U+FFFD, and every control character but TAB (C0, DEL, C1) is
/// removed so no client can drive another's terminal. Then the text policy
/// for characters that change how a line looks without being seen (see
/// [`policy`]): line and paragraph separators become a space, bidi controls
/// and zero-width characters go. None when nothing but white space is left.
///
/// Every text a user sees from someone else passes here: line clients,
/// WebSocket messages and what arrives from Redis.
pub fn sanitize(raw: &[u8]) -> Option<String> {
    let clean = |b: &u8| (*b >= 0x20 && *b != 0x7f) || *b == b'\t';
    // Fast path: printable ASCII needs neither decoding nor filtering.
    let text = if raw.iter().all(|b| b.is_ascii() && clean(b)) {
        // All bytes are ASCII, so this cannot fail.
        String::from_utf8_lossy(raw).into_owned()
    } else {
        let decoded = String::from_utf8_lossy(raw);
        let mut out = String::with_capacity(decoded.len());
        let mut chars = decoded.chars().peekable();
        while let Some(c) = chars.next() {
            match policy(c) {
                Class::Keep => out.push(c),
                Class::Space => out.push(' '),
                Class::Remove => {}
                // Kept only between two characters that can join (emoji
                // sequences like 👩‍💻, and Indic or Persian letters): there it
                // is part of how the text is written, not a hidden gap.
                Class::Joiner => {
                    let prev = out.chars().next_back();
                    if prev.is_some_and(joins) && chars.peek().copied().is_some_and(joins) {
                        out.push(c);
                    }
                }
            }
        }
        out
    };
    if text.trim().is_empty() {
        None
    } else {
        Some(text)
    }
}

/// What [`sanitize`] does with one character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Keep,
    Remove,
    /// U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR: a line break in a
    /// browser (a second, forged `<alice> ...` line under the sender's), a
    /// word break in a terminal. A space keeps the words apart and the line
    /// one line.
    Space,
    /// ZWNJ and ZWJ: kept between two joinable characters, removed elsewhere.
    Joiner,
}

/// The text policy. Removed: C0 and C1 controls but TAB, and DEL (they
/// drive terminals); the bidi controls — embeddings and overrides
/// U+202A..U+202E, isolates U+2066..U+2069, the marks U+200E, U+200F and
/// U+061C — which can reverse what follows a name or move text across it;
/// and characters that take no room on screen — U+200B ZERO WIDTH SPACE,
/// U+2060..U+2064 (word joiner, invisible operators), the deprecated format
/// controls U+206A..U+206F, U+FEFF (BOM, ZWNBSP), U+180E, and the
/// interlinear annotation controls U+FFF9..U+FFFB.
pub fn policy(c: char) -> Class {
    match c {
        '\t' => Class::Keep,
        c if c.is_control() => Class::Remove,
        '\u{2028}' | '\u{2029}' => Class::Space,
        '\u{200c}' | '\u{200d}' => Class::Joiner,
        '\u{200b}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{061c}'
        | '\u{180e}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}' => Class::Remove,
        _ => Class::Keep,
    }
}

/// A character a ZWJ or ZWNJ may stand next to: anything visible beyond
/// ASCII (emoji, their variation selector and skin tones, letters and marks
/// of scripts that use joiners). Never white space, never another character
/// the policy removes or rewrites, never ASCII: `pay\u{200d}pal` loses it.
fn joins(c: char) -> bool {
    !c.is_ascii() && !c.is_whitespace() && policy(c) == Class::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut Framer) -> Vec<Result<String, ()>> {
        let mut out = Vec::new();
        while let Some(frame) = f.next_frame() {
            out.push(match frame {
                Frame::Line(l) => Ok(String::from_utf8_lossy(l).into_owned()),
                Frame::TooLong => Err(()),
            });
        }
        out
    }

    fn ok(s: &[&str]) -> Vec<Result<String, ()>> {
        s.iter().map(|s| Ok(s.to_string())).collect()
    }

    #[test]
    fn splits_on_lf_and_drops_cr_before_it() {
        let mut f = Framer::new(100);
        f.feed(b"one\r\ntwo\nthree\r");
        assert_eq!(lines(&mut f), ok(&["one", "two"]));
        f.feed(b"\n");
        assert_eq!(lines(&mut f), ok(&["three"]));
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_cr_elsewhere_stays_for_sanitize_to_remove() {
        let mut f = Framer::new(100);
        f.feed(b"a\rb\n");
        assert_eq!(lines(&mut f), ok(&["a\rb"]));
        assert_eq!(sanitize(b"a\rb").as_deref(), Some("ab"));
    }

    #[test]
    fn lines_split_across_reads_byte_by_byte() {
        let mut f = Framer::new(100);
        let mut got = Vec::new();
        for b in b"hello world\r\nsecond\n" {
            f.feed(&[*b]);
            got.extend(lines(&mut f));
        }
        assert_eq!(got, ok(&["hello world", "second"]));
    }

    #[test]
    fn empty_lines_are_frames_but_sanitize_drops_them() {
        let mut f = Framer::new(100);
        f.feed(b"\n\r\n  \t \n");
        assert_eq!(lines(&mut f), ok(&["", "", "  \t "]));
        assert_eq!(sanitize(b""), None);
        assert_eq!(sanitize(b"  \t "), None);
        assert_eq!(sanitize(b"\x07\x1b"), None);
    }

    #[test]
    fn exactly_max_is_accepted_one_more_is_too_long() {
        let mut f = Framer::new(5);
        f.feed(b"12345\r\n123456\nok\n");
        assert_eq!(
            lines(&mut f),
            vec![Ok("12345".into()), Err(()), Ok("ok".into())]
        );
    }

    #[test]
    fn oversize_partial_is_reported_once_and_discarded_without_buffering() {
        let mut f = Framer::new(8);
        f.feed(b"0123456789");
        assert_eq!(lines(&mut f), vec![Err(())]);
        for _ in 0..1000 {
            f.feed(&[b'x'; 4096]);
            assert_eq!(lines(&mut f), vec![]);
            assert_eq!(f.buffered(), 0, "discarded bytes must not be kept");
        }
        f.feed(b"tail\nnext\n");
        assert_eq!(lines(&mut f), ok(&["next"]));
    }

    #[test]
    fn partial_at_max_plus_cr_waits_for_lf() {
        let mut f = Framer::new(4);
        f.feed(b"abcd\r");
        assert_eq!(lines(&mut f), vec![]);
        f.feed(b"\n");
        assert_eq!(lines(&mut f), ok(&["abcd"]));
    }

    #[test]
    fn buffer_is_compacted_and_released() {
        let mut f = Framer::new(100);
        f.feed(b"a\nb\npartial");
        assert_eq!(lines(&mut f).len(), 2);
        f.release_if_empty();
        assert_eq!(f.buffered(), 7, "a partial line is kept");
        f.feed(b"\n");
        assert_eq!(lines(&mut f), ok(&["partial"]));
        f.release_if_empty();
        assert_eq!(f.buf.capacity(), 0);
    }

    #[test]
    fn finish_yields_the_unterminated_tail() {
        let mut f = Framer::new(100);
        f.feed(b"done\nlast words");
        assert_eq!(lines(&mut f), ok(&["done"]));
        assert_eq!(f.finish(), Some(Frame::Line(b"last words")));
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn telnet_negotiation_is_removed_even_when_split() {
        let input: &[u8] = b"hi\xff\xfb\x01 there\xff\xfa\x18\x01\xff\xff\xff\xf0!\xff\xf1\n";
        let mut whole = Framer::new(100);
        whole.feed(input);
        assert_eq!(lines(&mut whole), ok(&["hi there!"]));
        let mut split = Framer::new(100);
        let mut got = Vec::new();
        for b in input {
            split.feed(&[*b]);
            got.extend(lines(&mut split));
        }
        assert_eq!(got, ok(&["hi there!"]));
    }

    #[test]
    fn escaped_iac_is_data() {
        let mut f = Framer::new(100);
        f.feed(b"a\xff\xffb\n");
        assert_eq!(f.next_frame(), Some(Frame::Line(b"a\xffb")));
        assert_eq!(sanitize(b"a\xffb").as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn controls_are_stripped_tab_kept() {
        assert_eq!(
            sanitize(b"\x1b[2Jred\x07\tbell\x7f").as_deref(),
            Some("[2Jred\tbell")
        );
        // C1 controls (U+0080..U+009F) encoded in UTF-8, e.g. CSI U+009B.
        assert_eq!(
            sanitize("a\u{9b}b\u{85}c".as_bytes()).as_deref(),
            Some("abc")
        );
        assert_eq!(sanitize("héllo ✓".as_bytes()).as_deref(), Some("héllo ✓"));
    }

    #[test]
    fn separators_become_spaces_bidi_and_zero_width_characters_go() {
        let s = |t: &str| sanitize(t.as_bytes());
        assert_eq!(
            s("hi\u{2028}<alice> pw\u{2029}!").as_deref(),
            Some("hi <alice> pw !")
        );
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{061c}', '\u{200e}', '\u{200f}', '\u{200b}', '\u{200c}',
            '\u{200d}', '\u{2060}', '\u{feff}', '\u{180e}', '\u{fffa}',
        ] {
            assert_eq!(s(&format!("a{c}b")).as_deref(), Some("ab"), "{c:?}");
        }
        assert_eq!(
            s("\u{202e}\u{200b}\u{2066} \u{feff}"),
            None,
            "nothing visible"
        );
        // Right-to-left text itself is kept: only the controls go.
        assert_eq!(s("שלום \u{202b}עולם").as_deref(), Some("שלום עולם"));
    }

    #[test]
    fn joiners_stay_only_inside_emoji_and_scripts_that_use_them() {
        let s = |t: &str| sanitize(t.as_bytes()).unwrap();
        for kept in [
            "👩\u{200d}💻",
            "👁\u{fe0f}\u{200d}🗨\u{fe0f}",
            "👨\u{1f3fd}\u{200d}🚀",
            "क्\u{200d}ष",
            "می\u{200c}خواهم",
        ] {
            assert_eq!(s(kept), kept);
        }
        assert_eq!(s("pay\u{200d}pal"), "paypal");
        assert_eq!(s("👩\u{200d} 💻"), "👩 💻");
        assert_eq!(s("👩\u{200d}\u{200d}💻"), "👩\u{200d}💻", "one is enough");
        assert_eq!(s("👩\u{200d}\u{202e}💻"), "👩💻");
        assert_eq!(s("\u{200d}👩"), "👩");
        assert_eq!(s("👩\u{200d}"), "👩");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        assert_eq!(
            sanitize(b"ok \xc3\x28 \xff end").as_deref(),
            Some("ok \u{fffd}( \u{fffd} end")
        );
    }

    /// Property: however the input is cut into reads, the same frames come out.
    #[test]
    fn framing_is_independent_of_read_boundaries() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let len = rng.usize(0..400);
            let input: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..10) {
                    0 => b'\n',
                    1 => b'\r',
                    2 => 0xff,
                    3 => rng.u8(240..=255),
                    _ => rng.u8(b'a'..=b'z'),
                })
                .collect();
            let mut whole = Framer::new(16);
            whole.feed(&input);
            let expect = lines(&mut whole);
            let mut split = Framer::new(16);
            let mut got = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(20));
                split.feed(&rest[..n]);
                rest = &rest[n..];
                got.extend(lines(&mut split));
                assert!(split.buffered() <= 16 + 1 + 20, "buffer bound");
            }
            assert_eq!(got, expect, "input {input:?}");
        }
    }
}
