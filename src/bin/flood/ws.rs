//! The WebSocket client side of a connection (`--ws`): the upgrade request,
//! checking the 101 answer, masked text frames out, one text frame per
//! server line in. The frame format and the accept key come from
//! tungstenite; the I/O stays in flood's own event loop.

use std::io::Cursor;

use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The most we buffer of the server's response head.
const MAX_HEAD: usize = 8 * 1024;
/// The largest frame we accept from the server: chatd's lines are at most a
/// few KiB; anything bigger is a broken peer, not a chat line.
const MAX_FRAME: u64 = 1024 * 1024;

/// What a frame from the server means to the connection.
pub enum Incoming<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close,
}

pub struct Ws {
    key: String,
    open: bool,
    /// The response head while the handshake is under way, then the partial
    /// frame carried between reads; bounded by MAX_HEAD / MAX_FRAME.
    pending: Vec<u8>,
}

impl Ws {
    pub fn new() -> Ws {
        Ws {
            key: generate_key(),
            open: false,
            pending: Vec::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn request(&self, host: &str, port: u16, path: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.key
        )
        .into_bytes()
    }

    /// Feeds bytes read from the socket; calls `f` for every complete frame.
    /// An Err is a protocol failure that ends the connection.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Incoming<'_>)) -> Result<(), String> {
        let mut data = data;
        if !self.open {
            self.pending.extend_from_slice(data);
            let Some(end) = memchr::memmem::find(&self.pending, b"\r\n\r\n") else {
                if self.pending.len() > MAX_HEAD {
                    return Err("websocket: response head too long".into());
                }
                return Ok(());
            };
            self.check_response(&self.pending[..end + 4])?;
            self.open = true;
            let rest = self.pending.split_off(end + 4);
            self.pending.clear();
            return self.feed_frames(&rest, &mut f);
        }
        if !self.pending.is_empty() {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(data);
            let r = self.feed_frames(&joined, &mut f);
            return r;
        }
        self.feed_frames(std::mem::take(&mut data), &mut f)
    }

    fn check_response(&self, head: &[u8]) -> Result<(), String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("websocket: malformed response head".into()),
        }
        if resp.code != Some(101) {
            return Err(format!(
                "websocket: server answered {} {}",
                resp.code.unwrap_or(0),
                resp.reason.unwrap_or("")
            ));
        }
        let want = derive_accept_key(self.key.as_bytes());
        let ok = resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == want.as_bytes()
        });
        if !ok {
            return Err("websocket: wrong Sec-WebSocket-Accept".into());
        }
        Ok(())
    }

    fn feed_frames(&mut self, buf: &[u8], f: &mut impl FnMut(Incoming<'_>)) -> Result<(), String> {
        let mut pos = 0;
        while pos < buf.len() {
            let mut cur = Cursor::new(&buf[pos..]);
            let (header, len) = match FrameHeader::parse(&mut cur) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(format!("websocket: {e}")),
            };
            if len > MAX_FRAME {
                return Err(format!("websocket: frame of {len} bytes"));
            }
            let start = pos + cur.position() as usize;
            let end = start + len as usize;
            if end > buf.len() {
                break;
            }
            let payload = &buf[start..end];
            let unmasked;
            let payload = match header.mask {
                // A server must not mask, but unmasking costs little.
                Some(m) => {
                    unmasked = payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ m[i & 3])
                        .collect::<Vec<u8>>();
                    &unmasked[..]
                }
                None => payload,
            };
            match header.opcode {
                // Continuation fragments are scanned on their own: chatd sends
                // one line per unfragmented frame, and a token cut across
                // fragments would only count as missing.
                OpCode::Data(Data::Text | Data::Binary | Data::Continue) => {
                    f(Incoming::Text(payload))
                }
                OpCode::Control(Control::Ping) => f(Incoming::Ping(payload)),
                OpCode::Control(Control::Close) => {
                    f(Incoming::Close);
                    return Ok(());
                }
                _ => {}
            }
            pos = end;
        }
        self.pending.extend_from_slice(&buf[pos..]);
        Ok(())
    }
}

fn frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    // Client frames must be masked (RFC 6455 5.3); the key only has to be
    // unpredictable to the network path, so fastrand is enough.
    let mask = fastrand::u32(..).to_ne_bytes();
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: Some(mask),
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

pub fn text(out: &mut Vec<u8>, payload: &[u8]) {
    frame(out, OpCode::Data(Data::Text), payload)
}

pub fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    frame(out, OpCode::Control(Control::Pong), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: op,
            mask: None,
        };
        header.format(payload.len() as u64, out).unwrap();
        out.extend_from_slice(payload);
    }

    fn response(ws: &Ws) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(ws.key.as_bytes())
        )
        .into_bytes()
    }

    #[test]
    fn handshake_then_frames_split_anywhere() {
        let probe = Ws::new();
        let mut stream = response(&probe);
        server_frame(&mut stream, OpCode::Data(Data::Text), b"<a> [F:1,2,3]xx");
        server_frame(&mut stream, OpCode::Control(Control::Ping), b"p");
        server_frame(&mut stream, OpCode::Data(Data::Text), &[b'y'; 300]);
        server_frame(&mut stream, OpCode::Control(Control::Close), b"");
        for cut in 0..stream.len() {
            let mut ws = Ws::new();
            ws.key = probe.key.clone();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                ws.feed(part, |ev| {
                    got.push(match ev {
                        Incoming::Text(t) => format!("text {}", t.len()),
                        Incoming::Ping(p) => format!("ping {}", p.len()),
                        Incoming::Close => "close".into(),
                    })
                })
                .unwrap();
            }
            assert!(ws.is_open());
            assert_eq!(got, ["text 15", "ping 1", "text 300", "close"], "cut {cut}");
        }
    }

    #[test]
    fn wrong_accept_or_status_fails() {
        let mut ws = Ws::new();
        let bad = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(ws.feed(bad, |_| {}).is_err());
        let mut ws = Ws::new();
        assert!(
            ws.feed(b"HTTP/1.1 404 Not Found\r\n\r\n", |_| {})
                .unwrap_err()
                .contains("404")
        );
    }

    #[test]
    fn client_text_is_masked_and_parses_back() {
        let mut out = Vec::new();
        text(&mut out, b"hello");
        let mut cur = Cursor::new(&out[..]);
        let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        let m = h.mask.expect("client frames are masked");
        let body: Vec<u8> = out[cur.position() as usize..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[i & 3])
            .collect();
        assert_eq!((len, &body[..]), (5, &b"hello"[..]));
    }
}
