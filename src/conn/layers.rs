//! The stages beneath the protocol, as one state machine of the
//! connection: a PROXY header expected (from a trusted proxy) → the TLS
//! handshake (on a TLS port) → the protocol. Each stage is passed once;
//! passing one is an outcome of a read ([`Input::Addressed`],
//! [`Input::Handshaken`]), so the reactor reacts to what happened and never
//! looks at which layers a connection has. TLS stays beneath the protocol
//! after its handshake: reads and writes go through it for the
//! connection's life.

use super::proxy::{Header, ProxyWait, Sniff};
use super::tls::{self, Tls, TlsRead};
use crate::socket::{self, SocketResult};
use mio::net::TcpStream;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// The first byte of every TLS record a ClientHello comes in (handshake).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Where the connection is on its way to the protocol.
#[derive(Debug)]
pub enum Stage {
    /// A trusted proxy's PROXY header is expected: nothing reaches TLS or
    /// the protocol before it is complete.
    Expect(Box<ProxyWait>),
    /// The TLS handshake is under way: the protocol has not started.
    Handshake,
    /// The protocol runs (through TLS, if there is TLS).
    Protocol,
}

/// What comes once the client's address is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The protocol starts at once, and can answer the client itself (a
    /// refusal in the client's own protocol).
    Protocol,
    /// A handshake must finish first: nothing can be said before it.
    Handshake,
}

/// What reading through a connection's stages did.
#[derive(Debug)]
pub enum Input {
    /// This many bytes for the protocol.
    Data(usize),
    WouldBlock,
    Closed,
    /// The connection failed while the protocol ran.
    Error(io::Error),
    /// The connection failed before its PROXY header was complete.
    LostBeforeHeader(io::Error),
    /// The TLS handshake failed (a socket error or bad records).
    HandshakeFailed(io::Error),
    /// A trusted proxy's header is in: the client's address (None: the
    /// proxy's own connection, a health check), and what comes next.
    Addressed {
        source: Option<SocketAddr>,
        then: After,
    },
    /// The TLS handshake finished: the protocol starts before it gets its
    /// first bytes (which the next read brings).
    Handshaken,
    /// A PROXY header that is refused (broken, or from an untrusted address).
    Refused(String),
}

/// Why a connection is closed at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No PROXY header from the trusted proxy in time.
    Header,
    /// No TLS handshake in time (counted as a failed one).
    Handshake,
    /// No complete HTTP request head in time.
    Request,
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expired::Header => "no PROXY header within --http-timeout",
            Expired::Handshake => "no TLS handshake within --http-timeout",
            Expired::Request => "no complete request within --http-timeout",
        })
    }
}

/// The stages and the layers that outlive them.
pub struct Layers {
    stage: Stage,
    /// TLS beneath the protocol (conn/tls.rs), on a TLS port.
    tls: Option<Box<Tls>>,
    /// Watching an untrusted address's first bytes for a PROXY header.
    sniff: Option<Sniff>,
    /// Bytes that came in behind the PROXY header, read before the socket.
    leftover: Vec<u8>,
    /// The PROXY header and TLS handshake must be done by then (--http-timeout).
    deadline: Instant,
    /// Send TLS's close_notify after the last queued byte.
    notify: bool,
    /// On a TLS port: what to say in plain text to a client whose first
    /// bytes are not a TLS record (telnet to the TLS port), and whether
    /// that first byte is still to be seen.
    plain: Option<Rc<[u8]>>,
    first: bool,
}

impl Layers {
    /// `proxy`: Some(true) waits for a trusted proxy's header, Some(false)
    /// watches for one to refuse it (anyone else under --proxy-protocol).
    pub fn new(proxy: Option<bool>, tls: Option<Box<Tls>>, deadline: Instant) -> Layers {
        let stage = match (proxy, &tls) {
            (Some(true), _) => Stage::Expect(Box::default()),
            (_, Some(_)) => Stage::Handshake,
            (_, None) => Stage::Protocol,
        };
        Layers {
            stage,
            tls,
            sniff: (proxy == Some(false)).then(Sniff::new),
            leftover: Vec::new(),
            deadline,
            notify: false,
            plain: None,
            first: true,
        }
    }

    /// What a plain-text client of a TLS port is told before the close
    /// (where to go instead), rather than silence until the deadline.
    pub fn tell_plain(&mut self, answer: Rc<[u8]>) {
        self.plain = Some(answer);
    }

    /// None: the plain socket, straight to the protocol.
    pub fn none() -> Layers {
        Layers::new(None, None, Instant::now())
    }

    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// Whether the client's address is known at accept (no header is
    /// expected), and what comes then.
    pub fn at_accept(&self) -> Option<After> {
        match self.stage {
            Stage::Expect(_) => None,
            Stage::Handshake => Some(After::Handshake),
            Stage::Protocol => Some(After::Protocol),
        }
    }

    /// The deadline of the stage still to pass, and what its passing
    /// means; None once the protocol runs (its own deadline applies then).
    pub fn pending(&self) -> Option<(Instant, Expired)> {
        match self.stage {
            Stage::Expect(_) => Some((self.deadline, Expired::Header)),
            Stage::Handshake => Some((self.deadline, Expired::Handshake)),
            Stage::Protocol => None,
        }
    }

    /// Reads what the protocol asked for (`buf` is sized by its
    /// `Step::Read`) through the stages: the PROXY header first, then TLS.
    pub fn read_in(&mut self, sock: &TcpStream, buf: &mut [u8]) -> Input {
        let tls = self.tls.is_some();
        if let Stage::Expect(wait) = &mut self.stage {
            let then = if tls {
                After::Handshake
            } else {
                After::Protocol
            };
            let (input, rest) = read_header(wait, sock, buf, then);
            if let Input::Addressed { then, .. } = &input {
                self.leftover = rest;
                self.stage = match then {
                    After::Handshake => Stage::Handshake,
                    After::Protocol => Stage::Protocol,
                };
            }
            return input;
        }
        let handshaking = matches!(self.stage, Stage::Handshake);
        let mut src = Source {
            leftover: &mut self.leftover,
            sock,
            sniff: &mut self.sniff,
            caught: false,
            first: (handshaking && self.plain.is_some() && self.first).then_some(&mut self.first),
            plain: false,
        };
        let result = match self.tls.as_mut() {
            Some(tls) => {
                let read = if handshaking {
                    tls.handshake(&mut src, buf)
                } else {
                    tls.read(&mut src, buf)
                };
                match read {
                    TlsRead::Handshaken => {
                        self.stage = Stage::Protocol;
                        Input::Handshaken
                    }
                    TlsRead::Data(n) => Input::Data(n),
                    TlsRead::WouldBlock => Input::WouldBlock,
                    TlsRead::Closed => Input::Closed,
                    TlsRead::Error(e) if handshaking => Input::HandshakeFailed(e),
                    TlsRead::Error(e) => Input::Error(e),
                }
            }
            None => match socket::read(&mut src, buf) {
                SocketResult::Done(n) => Input::Data(n),
                SocketResult::WouldBlock => Input::WouldBlock,
                SocketResult::Closed => Input::Closed,
                SocketResult::Error(e) => Input::Error(e),
            },
        };
        if src.plain {
            if let Some(answer) = &self.plain {
                say_plain(sock, answer);
            }
            return Input::HandshakeFailed(io::Error::new(
                io::ErrorKind::InvalidData,
                "plain text, not a TLS handshake (told where to go)",
            ));
        }
        if src.caught {
            self.sniff = None;
            return Input::Refused("PROXY header from an untrusted address".into());
        }
        if self.sniff.as_ref().is_some_and(|s| !s.watching()) {
            self.sniff = None;
        }
        result
    }

    /// Output waits beneath the queue (TLS handshake records, an alert).
    pub fn wants_flush(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The most plaintext one write takes beyond its first item: through
    /// TLS a batch is about one full record.
    pub fn batch_max(&self) -> usize {
        if self.tls.is_some() {
            tls::FEED_MAX
        } else {
            usize::MAX
        }
    }

    /// Writes what the layers hold (TLS records, one writev for all of
    /// them) until none is left or the socket is full.
    pub fn write_held(&mut self, sock: &TcpStream) -> SocketResult {
        let Some(tls) = self.tls.as_mut() else {
            return SocketResult::Done(0);
        };
        while tls.wants_write() {
            // rustls writes through socket.rs's ladder; what it decided is
            // the answer, whatever rustls makes of the error it is handed.
            let mut out = Ladder { sock, said: None };
            match (tls.write_to(&mut out), out.said) {
                (_, Some(said)) => return said,
                (Ok(0), None) => return SocketResult::Error(io::ErrorKind::WriteZero.into()),
                (Err(e), None) => return SocketResult::Error(e),
                (Ok(_), None) => {}
            }
        }
        SocketResult::Done(0)
    }

    /// Writes queued plaintext `iov`: to the socket, or into TLS (whose
    /// records `write_held` sends). Done says how much was taken.
    pub fn write(&mut self, sock: &TcpStream, iov: &[IoSlice<'_>]) -> SocketResult {
        let Some(tls) = self.tls.as_mut() else {
            return socket::write(sock, iov);
        };
        if tls.handshaking() {
            // Lines wait for the handshake (a server shutting down
            // mid-handshake); its deadline bounds the wait.
            return SocketResult::WouldBlock;
        }
        match tls.feed(iov) {
            0 => SocketResult::Error(io::ErrorKind::WriteZero.into()),
            fed => SocketResult::Done(fed),
        }
    }

    /// Writes `bytes` at once, best effort (see `Conn::write_last`).
    pub fn write_last(&mut self, sock: &TcpStream, bytes: &[u8]) {
        match self.tls.as_mut() {
            None => {
                let _ = socket::write(sock, &[IoSlice::new(bytes)]);
            }
            Some(tls) if !tls.handshaking() => {
                tls.feed(&[IoSlice::new(bytes)]);
                let _ = tls.write_to(&mut Ladder { sock, said: None });
            }
            Some(_) => {}
        }
    }

    /// Ends TLS properly once the queue is written (a graceful close).
    pub fn close_notify(&mut self) {
        self.notify = self.tls.is_some();
    }

    /// With the queue written: queues the close_notify asked for, if any
    /// (true: there is more to write).
    pub fn take_notify(&mut self) -> bool {
        if std::mem::take(&mut self.notify)
            && let Some(tls) = self.tls.as_mut()
            && !tls.handshaking()
        {
            tls.close_notify();
            return true;
        }
        false
    }
}

/// Reads a trusted proxy's header, at most what it may still take, so
/// nothing past MAX_HEADER is ever held; on success also the bytes that
/// came in behind it.
fn read_header(
    wait: &mut ProxyWait,
    sock: &TcpStream,
    buf: &mut [u8],
    then: After,
) -> (Input, Vec<u8>) {
    loop {
        let room = wait.room().min(buf.len());
        let input = match socket::read(sock, &mut buf[..room]) {
            SocketResult::Done(n) => match wait.feed(&buf[..n]) {
                (Header::Incomplete, _) => continue,
                (Header::Done { source, .. }, rest) => {
                    return (Input::Addressed { source, then }, rest);
                }
                (Header::Invalid(why), _) => Input::Refused(why),
            },
            SocketResult::Closed => Input::Closed,
            SocketResult::WouldBlock => Input::WouldBlock,
            SocketResult::Error(e) => Input::LostBeforeHeader(e),
        };
        return (input, Vec::new());
    }
}

/// A writer for rustls that goes through `socket::write` and keeps what it
/// said unless that was a plain success.
struct Ladder<'a> {
    sock: &'a TcpStream,
    said: Option<SocketResult>,
}

impl io::Write for Ladder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match socket::write(self.sock, iov) {
            SocketResult::Done(n) => Ok(n),
            other => {
                self.said = Some(other);
                Err(io::ErrorKind::Other.into())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Tells a plain-text client of a TLS port where to go, best effort: one
/// small write to a socket nothing was written to yet. What it sent is
/// read away first (bounded), so the close is a FIN the client reads the
/// answer before, not a reset.
fn say_plain(sock: &TcpStream, answer: &[u8]) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match io::Read::read(&mut &*sock, &mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = socket::write(sock, &[IoSlice::new(answer)]);
}

/// The bytes under TLS (or under the protocol): what came in behind a
/// PROXY header first, then the socket; an untrusted address's first
/// bytes are watched for a PROXY header on the way, and on a TLS port the
/// very first byte for a TLS record.
struct Source<'a> {
    leftover: &'a mut Vec<u8>,
    sock: &'a TcpStream,
    sniff: &'a mut Option<Sniff>,
    caught: bool,
    /// Some while the first byte is still to be checked for a TLS record.
    first: Option<&'a mut bool>,
    /// It was not one: plain text on a TLS port.
    plain: bool,
}

impl Source<'_> {
    /// Checks the first byte of the stream, once: false if it cannot
    /// begin a TLS handshake.
    fn looks_like_tls(&mut self, read: &[u8]) -> bool {
        match (self.first.take(), read.first()) {
            (Some(first), Some(&b)) => {
                *first = false;
                b == HANDSHAKE_RECORD
            }
            (first, _) => {
                self.first = first;
                true
            }
        }
    }

    fn not_tls(&mut self) -> io::Error {
        self.plain = true;
        io::Error::other("plain text, not TLS")
    }
}

impl io::Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.leftover.is_empty() {
            let n = buf.len().min(self.leftover.len());
            buf[..n].copy_from_slice(&self.leftover[..n]);
            self.leftover.drain(..n);
            if self.leftover.is_empty() {
                *self.leftover = Vec::new();
            }
            if !self.looks_like_tls(&buf[..n]) {
                return Err(self.not_tls());
            }
            return Ok(n);
        }
        let n = io::Read::read(&mut &*self.sock, buf)?;
        if let Some(sniff) = self.sniff.as_mut()
            && sniff.feed(&buf[..n])
        {
            self.caught = true;
            return Err(io::Error::other("PROXY header from an untrusted address"));
        }
        if !self.looks_like_tls(&buf[..n]) {
            return Err(self.not_tls());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// A connected pair on loopback: the server's non-blocking end and the
    /// client's.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (TcpStream::from_std(server), client)
    }

    /// The next read that is not WouldBlock (bounded).
    fn next(layers: &mut Layers, sock: &TcpStream, buf: &mut [u8]) -> Input {
        for _ in 0..1000 {
            match layers.read_in(sock, buf) {
                Input::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                other => return other,
            }
        }
        panic!("nothing to read");
    }

    #[test]
    fn a_trusted_header_is_passed_then_what_came_behind_it_is_read() {
        let (sock, mut client) = pair();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut layers = Layers::new(Some(true), None, deadline);
        assert_eq!(layers.at_accept(), None, "the header is to tell");
        assert_eq!(layers.pending(), Some((deadline, Expired::Header)));
        client
            .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 3000\r\nhello\n")
            .unwrap();
        let mut buf = [0; 4096];
        let input = next(&mut layers, &sock, &mut buf);
        let Input::Addressed { source, then } = input else {
            panic!("{input:?}");
        };
        assert_eq!(source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(then, After::Protocol);
        assert!(matches!(layers.stage(), Stage::Protocol));
        assert_eq!(layers.pending(), None);
        match next(&mut layers, &sock, &mut buf) {
            Input::Data(n) => assert_eq!(&buf[..n], b"hello\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_untrusted_header_is_refused_and_plain_bytes_pass() {
        let (sock, mut client) = pair();
        let mut layers = Layers::new(Some(false), None, Instant::now());
        assert_eq!(layers.at_accept(), Some(After::Protocol));
        client
            .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
            .unwrap();
        let mut buf = [0; 4096];
        assert!(matches!(
            next(&mut layers, &sock, &mut buf),
            Input::Refused(_)
        ));
        let (sock, mut client) = pair();
        let mut layers = Layers::new(Some(false), None, Instant::now());
        client.write_all(b"hi\n").unwrap();
        assert!(matches!(next(&mut layers, &sock, &mut buf), Input::Data(3)));
    }

    #[test]
    fn a_tls_port_starts_in_the_handshake_and_holds_lines_back() {
        let (sock, _client) = pair();
        let (cfg, _, _) = crate::tls::self_signed().unwrap();
        let deadline = Instant::now();
        let tls = Box::new(Tls::new(&cfg).unwrap());
        let mut layers = Layers::new(None, Some(tls), deadline);
        assert_eq!(layers.at_accept(), Some(After::Handshake));
        assert_eq!(layers.pending(), Some((deadline, Expired::Handshake)));
        assert_eq!(layers.batch_max(), tls::FEED_MAX);
        assert!(matches!(
            layers.write(&sock, &[IoSlice::new(b"line\r\n")]),
            SocketResult::WouldBlock
        ));
        layers.close_notify();
        assert!(!layers.take_notify(), "no close_notify mid-handshake");
    }

    #[test]
    fn the_handshake_is_passed_before_the_bytes_that_came_with_its_end() {
        let (sock, mut stream) = pair();
        stream.set_nonblocking(true).unwrap();
        let (cfg, _, _) = crate::tls::self_signed().unwrap();
        let tls = Box::new(Tls::new(&cfg).unwrap());
        let mut layers = Layers::new(None, Some(tls), Instant::now());
        let client_cfg = crate::tls::client_config(crate::tls::Trust::Anyone).unwrap();
        let name = crate::tls::server_name("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_cfg, name).unwrap();
        // Sent right behind the client's Finished, in the same flight.
        client.writer().write_all(b"hello\n").unwrap();
        let mut buf = [0; 4096];
        let mut seen = Vec::new();
        for _ in 0..1000 {
            while client.wants_write() {
                client.write_tls(&mut stream).unwrap();
            }
            match layers.read_in(&sock, &mut buf) {
                Input::WouldBlock => {}
                Input::Data(n) => {
                    seen.push(format!("data {:?}", String::from_utf8_lossy(&buf[..n])));
                    break;
                }
                other => seen.push(format!("{other:?}")),
            }
            assert!(matches!(layers.write_held(&sock), SocketResult::Done(0)));
            if client.read_tls(&mut stream).is_ok() {
                client.process_new_packets().unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen, ["Handshaken", "data \"hello\\n\""]);
        assert!(matches!(layers.stage(), Stage::Protocol));
    }
}
