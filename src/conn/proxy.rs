//! The PROXY protocol header (HAProxy's spec, v1 text and v2 binary), a
//! layer beneath every protocol: a trusted proxy's connection starts with
//! it, and it says who the client really is. Parsing is the `ppp` crate's;
//! this holds the bytes until the whole header is in (it may come split
//! across reads) and gives back what follows it. No sockets, no clock.

use ppp::{HeaderResult, PartialResult, v1, v2};
use std::net::SocketAddr;

/// The longest header accepted: a v2 header with IPv6 addresses is 52
/// bytes and v1 at most 107; the rest is room for the TLVs HAProxy may add
/// (ALPN, authority, unique id). Longer is refused rather than buffered.
pub const MAX_HEADER: usize = 1024;

/// The v2 signature, and v1's start.
pub(super) const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIG: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included (the spec's 107).
const V1_MAX: usize = 107;

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Not all of it yet.
    Incomplete,
    /// The header is the first `len` bytes; `source` is the client, or
    /// None for a LOCAL (health check) or UNKNOWN header: the proxy's own
    /// connection, known by its socket address.
    Done {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a broken one.
    Invalid(String),
}

/// Waits for a trusted proxy's header.
#[derive(Debug, Default)]
pub struct ProxyWait {
    buf: Vec<u8>,
}

impl ProxyWait {
    /// How many more bytes it may take (reads are sized by it, so nothing
    /// past MAX_HEADER is ever held).
    pub fn room(&self) -> usize {
        MAX_HEADER - self.buf.len()
    }

    /// Takes bytes; once the header is complete, returns it and the bytes
    /// that came after it (the client's first data).
    pub fn feed(&mut self, bytes: &[u8]) -> (Header, Vec<u8>) {
        self.buf.extend_from_slice(bytes);
        match parse(&self.buf) {
            Header::Done { len, source } => {
                let rest = self.buf.split_off(len);
                (Header::Done { len, source }, rest)
            }
            Header::Incomplete if self.buf.len() >= MAX_HEADER => (
                Header::Invalid(format!("no complete header in {MAX_HEADER} bytes")),
                Vec::new(),
            ),
            other => (other, Vec::new()),
        }
    }
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Header {
    // ppp reads v1 until it finds a CRLF; bytes that cannot start either
    // version are refused at once rather than waited on.
    if !could_be(buf) {
        return Header::Invalid("not a PROXY protocol header".into());
    }
    // A v1 header is one line of at most 107 bytes: ppp takes a part of
    // it cut inside a field ("… 51234 3") for a broken header, so it only
    // sees whole lines.
    let mut buf = buf;
    if buf.starts_with(V1_SIG) {
        let Some(end) = memchr::memchr(b'\n', buf) else {
            return if buf.len() < V1_MAX {
                Header::Incomplete
            } else {
                Header::Invalid(format!("no end of line in {V1_MAX} bytes"))
            };
        };
        // The whole line is there: what ppp would call incomplete in it
        // (a field missing, LF without its CR) is broken, and more bytes
        // cannot mend it: refused now, not at --http-timeout.
        buf = &buf[..=end];
        if HeaderResult::parse(buf).is_incomplete() {
            return Header::Invalid("bad v1 header: fields missing or no CRLF".into());
        }
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return Header::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Header::Done {
                len: h.header.len(),
                source,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
            };
            Header::Done {
                len: h.len(),
                source,
            }
        }
        HeaderResult::V1(Err(e)) => Header::Invalid(format!("bad v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Header::Invalid(format!("bad v2 header: {e}")),
    }
}

/// Whether `buf` can be the start of a header of either version.
fn could_be(buf: &[u8]) -> bool {
    let n = buf.len();
    buf[..n.min(12)] == V2_SIG[..n.min(12)] || buf[..n.min(6)] == V1_SIG[..n.min(6)]
}

/// Watches the first bytes of a connection from an address that is not a
/// trusted proxy, without holding them back: says when they turn out to be
/// a PROXY header (a client claiming to be someone else).
#[derive(Debug, Default)]
pub struct Sniff {
    seen: usize,
    v1: bool,
    v2: bool,
}

impl Sniff {
    pub fn new() -> Sniff {
        Sniff {
            seen: 0,
            v1: true,
            v2: true,
        }
    }

    /// Looks at the next bytes: true once a whole signature has been seen.
    /// Neither signature holds a line feed before its end, so no line of a
    /// header reaches the chat before this says so (v2's CRLFs make only
    /// empty lines, which are never relayed).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if !self.watching() {
                return false;
            }
            self.v1 &= V1_SIG.get(self.seen) == Some(&b);
            self.v2 &= V2_SIG.get(self.seen) == Some(&b);
            self.seen += 1;
            if (self.v1 && self.seen == V1_SIG.len()) || (self.v2 && self.seen == V2_SIG.len()) {
                return true;
            }
        }
        false
    }

    /// Still undecided.
    pub fn watching(&self) -> bool {
        self.v1 || self.v2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_split_across_reads_then_data() {
        let mut w = ProxyWait::default();
        let all = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 3000\r\nhello\n";
        let mut done = None;
        for (i, b) in all.iter().enumerate() {
            let (h, rest) = w.feed(&[*b]);
            match h {
                Header::Incomplete => continue,
                Header::Done { source, .. } => {
                    done = Some((i, source, rest));
                    break;
                }
                Header::Invalid(e) => panic!("{e}"),
            }
        }
        let (i, source, rest) = done.unwrap();
        assert_eq!(i, 43, "complete at its CRLF");
        assert_eq!(source, Some("203.0.113.7:51234".parse().unwrap()));
        assert!(rest.is_empty());
        let mut w = ProxyWait::default();
        let (h, rest) = w.feed(all);
        assert!(matches!(h, Header::Done { len: 44, .. }));
        assert_eq!(rest, b"hello\n");
    }

    #[test]
    fn v2_split_across_reads_and_local() {
        let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:3000".parse().unwrap();
        let mut bytes = v2(src, dst);
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut w = ProxyWait::default();
        assert_eq!(w.feed(&bytes[..10]).0, Header::Incomplete);
        assert_eq!(w.feed(&bytes[10..20]).0, Header::Incomplete);
        let (h, rest) = w.feed(&bytes[20..]);
        assert_eq!(
            h,
            Header::Done {
                len,
                source: Some(src)
            }
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let local = ppp::v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert!(matches!(parse(&local), Header::Done { source: None, .. }));
    }

    #[test]
    fn not_a_header_is_refused_at_once_and_a_long_one_is_bounded() {
        assert!(matches!(parse(b"hello\r\n"), Header::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP9 x\r\n"), Header::Invalid(_)));
        // A whole line that lacks fields, or its CR, is refused at once.
        for line in [
            &b"PROXY TCP4 203.0.113.7\r\n"[..],
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\nhello\r\n",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 3000\n",
        ] {
            let h = parse(line);
            assert!(matches!(h, Header::Invalid(_)), "{line:?}: {h:?}");
        }
        let mut w = ProxyWait::default();
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER, b'1');
        let (h, _) = w.feed(&long);
        assert!(matches!(h, Header::Invalid(_)), "{h:?}");
    }

    #[test]
    fn sniff_sees_a_header_split_across_reads() {
        let mut s = Sniff::new();
        assert!(!s.feed(b"PRO"));
        assert!(s.feed(b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        let mut s = Sniff::new();
        assert!(s.feed(&v2(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap()
        )));
        let mut s = Sniff::new();
        assert!(!s.feed(b"PROXIMA centauri\n"));
        assert!(!s.watching());
        assert!(!s.feed(b"PROXY "), "only the start of a connection counts");
    }
}
