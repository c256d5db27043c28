//! socket.io over its websocket transport (`--socketio`): Engine.IO v4
//! packets inside WebSocket text frames, socket.io v5 packets inside
//! Engine.IO message packets. Pure encoding and decoding; the connection
//! (conn.rs) decides what to answer.
//!
//! The whole exchange flood needs, one packet per WebSocket frame (Engine.IO
//! batches packets only over HTTP long-polling, which flood never uses):
//!
//! ```text
//! server  0{"sid":"…","pingInterval":25000,…}   Engine.IO open
//! client  40                                   socket.io CONNECT to "/"
//! server  40{"sid":"…"}                        CONNECT accepted
//! client  42["chat","[F:0,1,2]xxx"]            EVENT "chat" with one string
//! server  42["chat","<user1> [F:0,1,2]xxx"]    the same event to the others
//! server  2            client  3               Engine.IO ping, pong
//! ```

/// The Engine.IO path of a socket.io server, websocket transport straight
/// away (no long-polling first, so no sticky sessions behind a balancer).
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The event flood sends its lines as and reads them from (any event's
/// string arguments are scanned on the way in).
pub const EVENT: &str = "chat";

/// socket.io CONNECT to the main namespace, sent once Engine.IO is open.
pub const CONNECT: &[u8] = b"40";

/// What one Engine.IO packet (one WebSocket text frame) means to flood.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// `0{…}`: the transport is open; answer with CONNECT.
    Open,
    /// `2…`: answer with `3` and the same payload.
    Ping,
    /// `40…`: the namespace connection is accepted.
    Connected,
    /// `44…`: the server refused the namespace connection.
    ConnectError(String),
    /// `1` or socket.io `41`: the server is closing.
    Close,
    /// `42…`/`43…` (EVENT/ACK): its string arguments were passed to the
    /// callback; how many.
    Event(usize),
    /// Anything else flood has no use for (`3` pong, `6` noop, binary
    /// events…), or a packet it could not parse: no lines in it.
    Other,
}

/// Appends `42["EVENT",ARG]`, the text of an EVENT packet with one string
/// argument, JSON-escaped as JSON.stringify does. `arg` should be UTF-8
/// (flood's lines are ASCII); other bytes pass through unchanged.
pub fn event(out: &mut Vec<u8>, name: &str, arg: &[u8]) {
    out.extend_from_slice(b"42[");
    json_string(out, name.as_bytes());
    out.push(b',');
    json_string(out, arg);
    out.push(b']');
}

fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut from = 0;
    for (i, &c) in s.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&s[from..i]);
        out.extend_from_slice(esc);
        from = i + 1;
    }
    out.extend_from_slice(&s[from..]);
    out.push(b'"');
}

/// Appends the pong answering a ping packet `2…`: `3` and the same payload.
pub fn pong(out: &mut Vec<u8>, ping: &[u8]) {
    out.push(b'3');
    out.extend_from_slice(ping.get(1..).unwrap_or_default());
}

/// Decodes one Engine.IO packet; for an EVENT, calls `f` with each string
/// argument (unescaped into `scratch`), the event name excluded. A packet
/// that does not parse completely yields no strings at all: a line the
/// server mangled then counts as missing, which is what the receiver got.
pub fn decode(frame: &[u8], scratch: &mut Vec<u8>, f: impl FnMut(&[u8])) -> Packet {
    match frame.first() {
        Some(b'0') => Packet::Open,
        Some(b'1') => Packet::Close,
        Some(b'2') => Packet::Ping,
        Some(b'4') => socket_io(&frame[1..], scratch, f),
        _ => Packet::Other,
    }
}

fn socket_io(p: &[u8], scratch: &mut Vec<u8>, f: impl FnMut(&[u8])) -> Packet {
    match p.first() {
        Some(b'0') => Packet::Connected,
        Some(b'1') => Packet::Close,
        Some(&t @ (b'2' | b'3')) => {
            let body = skip_ack_id(skip_namespace(&p[1..]));
            // An EVENT's first element is its name; an ACK has only arguments.
            events(body, t == b'2', scratch, f)
        }
        Some(b'4') => {
            let body = skip_namespace(&p[1..]);
            let why = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            Packet::ConnectError(why)
        }
        _ => Packet::Other,
    }
}

/// `/admin,` before the payload of a packet for a namespace other than "/".
fn skip_namespace(p: &[u8]) -> &[u8] {
    if p.first() == Some(&b'/')
        && let Some(comma) = memchr::memchr(b',', p)
    {
        return &p[comma + 1..];
    }
    p
}

fn skip_ack_id(p: &[u8]) -> &[u8] {
    let digits = p.iter().take_while(|c| c.is_ascii_digit()).count();
    &p[digits..]
}

/// The arguments of the common packet, an array of a few strings, are
/// unescaped in one pass without allocating; anything else goes through
/// serde_json.
const FAST_ARGS: usize = 4;

fn events(body: &[u8], named: bool, scratch: &mut Vec<u8>, mut f: impl FnMut(&[u8])) -> Packet {
    scratch.clear();
    if let Some((spans, n)) = fast_array(body, scratch) {
        let skip = usize::from(named).min(n);
        for &(a, b) in &spans[skip..n] {
            f(&scratch[a..b]);
        }
        return Packet::Event(n - skip);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(body) else {
        return Packet::Other;
    };
    let mut n = 0;
    for v in items.iter().skip(usize::from(named)) {
        each_string(v, &mut |s| {
            n += 1;
            f(s.as_bytes())
        });
    }
    Packet::Event(n)
}

fn each_string(v: &serde_json::Value, f: &mut impl FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|v| each_string(v, f)),
        serde_json::Value::Object(o) => o.values().for_each(|v| each_string(v, f)),
        _ => {}
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

type Spans = ([(usize, usize); FAST_ARGS], usize);

/// `["a","b",…]` with at most FAST_ARGS strings and nothing else (JSON
/// whitespace allowed): each string unescaped into `scratch`, its span
/// returned. None when the array has another shape (or is not valid JSON:
/// serde_json then decides).
fn fast_array(b: &[u8], scratch: &mut Vec<u8>) -> Option<Spans> {
    let mut spans = [(0, 0); FAST_ARGS];
    let mut n = 0;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return (skip_ws(b, i + 1) == b.len()).then_some((spans, 0));
    }
    loop {
        if n == FAST_ARGS || b.get(i) != Some(&b'"') {
            return None;
        }
        let start = scratch.len();
        i = unescape(b, i + 1, scratch)?;
        spans[n] = (start, scratch.len());
        n += 1;
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return (skip_ws(b, i + 1) == b.len()).then_some((spans, n)),
            _ => return None,
        }
    }
}

/// Unescapes the JSON string whose body starts at `i` (after the opening
/// quote) into `out`; returns the index after the closing quote.
fn unescape(b: &[u8], mut i: usize, out: &mut Vec<u8>) -> Option<usize> {
    loop {
        // Plain bytes up to the next quote or backslash in one copy.
        let run = memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        let plain = &b[i..i + run];
        if plain.iter().any(|&c| c < 0x20) {
            return None;
        }
        out.extend_from_slice(plain);
        i += run;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        let c = *b.get(i + 1)?;
        i += 2;
        let byte = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (ch, next) = unicode_escape(b, i)?;
                let mut utf8 = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                i = next;
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
}

/// `XXXX` (after `\u`) at `i`, with its low surrogate `\uXXXX` when it is
/// a high one; a lone surrogate is not a character and fails.
fn unicode_escape(b: &[u8], i: usize) -> Option<(char, usize)> {
    let hex4 = |i: usize| -> Option<u32> {
        let s = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    };
    let hi = hex4(i)?;
    if (0xd800..0xdc00).contains(&hi) {
        if b.get(i + 4..i + 6)? != b"\\u" {
            return None;
        }
        let lo = hex4(i + 6)?;
        if !(0xdc00..0xe000).contains(&lo) {
            return None;
        }
        let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
        return Some((char::from_u32(c)?, i + 10));
    }
    Some((char::from_u32(hi)?, i + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(frame: &[u8]) -> (Packet, Vec<String>) {
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        let p = decode(frame, &mut scratch, |s| {
            got.push(String::from_utf8_lossy(s).into_owned())
        });
        (p, got)
    }

    #[test]
    fn event_encodes_as_socket_io_does() {
        let mut out = Vec::new();
        event(&mut out, "chat", b"[F:0,1,2]xx");
        assert_eq!(out, br#"42["chat","[F:0,1,2]xx"]"#);
        out.clear();
        event(&mut out, "chat", "a\"b\\c\nd\u{1}é/".as_bytes());
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"42["chat","a\"b\\c\nd\u0001é/"]"#
        );
        // What flood sends, socket.io's own JSON reader reads back.
        let v: serde_json::Value = serde_json::from_slice(&out[2..]).unwrap();
        assert_eq!(v[1], "a\"b\\c\nd\u{1}é/");
    }

    #[test]
    fn control_packets() {
        assert_eq!(
            strings(br#"0{"sid":"x","upgrades":[],"pingInterval":25000}"#).0,
            Packet::Open
        );
        assert_eq!(strings(b"2").0, Packet::Ping);
        assert_eq!(strings(b"2probe").0, Packet::Ping);
        assert_eq!(strings(br#"40{"sid":"abc"}"#).0, Packet::Connected);
        assert_eq!(strings(b"40").0, Packet::Connected);
        assert_eq!(
            strings(br#"44{"message":"not authorized"}"#).0,
            Packet::ConnectError("not authorized".into())
        );
        assert_eq!(strings(b"1").0, Packet::Close);
        assert_eq!(strings(b"41").0, Packet::Close);
        assert_eq!(strings(b"3").0, Packet::Other);
        assert_eq!(strings(b"6").0, Packet::Other);
        assert_eq!(strings(b"").0, Packet::Other);
        let mut out = Vec::new();
        pong(&mut out, b"2probe");
        assert_eq!(out, b"3probe");
    }

    #[test]
    fn events_yield_their_string_arguments() {
        assert_eq!(
            strings(br#"42["chat","<u1> [F:0,1,2]xx"]"#),
            (Packet::Event(1), vec!["<u1> [F:0,1,2]xx".into()])
        );
        // Escapes, a surrogate pair, whitespace, several arguments.
        assert_eq!(
            strings(br#"42[ "chat" , "<\"u\\1\"> a\/b\tc\u00e9\ud83d\ude00" ,"second"]"#),
            (
                Packet::Event(2),
                vec!["<\"u\\1\"> a/b\tcé😀".into(), "second".into()]
            )
        );
        // Namespace and ack id prefixes; an ACK packet's arguments.
        assert_eq!(
            strings(br#"42/admin,17["chat","x"]"#),
            (Packet::Event(1), vec!["x".into()])
        );
        assert_eq!(
            strings(br#"4317["ok"]"#),
            (Packet::Event(1), vec!["ok".into()])
        );
        // Arguments that are not strings are skipped, strings nested in them
        // are found too (a server may wrap the line in an object).
        assert_eq!(
            strings(br#"42["chat",{"text":"[F:1,2,3]"},7,null,"t"]"#),
            (Packet::Event(2), vec!["[F:1,2,3]".into(), "t".into()])
        );
    }

    #[test]
    fn broken_events_yield_nothing() {
        assert_eq!(strings(br#"42["chat","x"]"#).0, Packet::Event(1));
        for bad in [
            &br#"42["chat","unterminated"#[..],
            br#"42["chat","bad escape \q"]"#,
            br#"42["chat","lone surrogate \ud800"]"#,
            br#"42{"chat":"not an array"}"#,
            br#"42["chat","x"] trailing"#,
            b"42",
            b"42[",
            b"45-[\"binary\"]",
        ] {
            let (p, got) = strings(bad);
            assert_eq!(
                (p, got),
                (Packet::Other, vec![]),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
