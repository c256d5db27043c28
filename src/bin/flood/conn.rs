//! One client connection: a non-blocking socket, the few bytes of a token cut
//! by a read boundary, and a write buffer. The transport (plain lines,
//! WebSocket frames, or socket.io events inside WebSocket frames) only
//! changes how a line is framed on the way out and unwrapped on the way in;
//! the event loop never looks inside.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sio::{self, Packet};
use crate::token::{self, Scanner, Token};
use crate::ws::{self, Incoming, Ws};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Lines,
    WebSocket,
    /// socket.io over its websocket transport: a line is the string
    /// argument of a `chat` event.
    SocketIo,
}

/// Reads per readiness event before other connections get a turn; a read
/// fills the shared buffer, so this is up to 4 x 256 KiB per connection.
const READS_PER_EVENT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// TCP is up; waiting for the WebSocket 101.
    Upgrading,
    Up,
    Dead,
}

pub enum ReadOutcome {
    /// Drained for now; the next edge will come with new data.
    Drained,
    /// Stopped at the per-event cap with data possibly left.
    More,
    Closed(String),
}

pub struct Conn {
    pub stream: Option<TcpStream>,
    pub state: State,
    ws: Option<Box<Ws>>,
    /// socket.io: Some once chosen, true once the server accepted the
    /// namespace connection (only then can lines flow).
    sio_connected: Option<bool>,
    /// socket.io: where event arguments are unescaped (one line at a time).
    sio_scratch: Vec<u8>,
    pub got_bytes: bool,
    /// The peer has shut down or reset (epoll said so): read to the end
    /// rather than stopping at a short read, since no new edge will come.
    pub hup: bool,
    /// Tail of the last read that may be the start of a token.
    carry: [u8; token::MAX_LEN],
    carry_len: usize,
    /// Bytes queued for the server; `woff` is how much of it is written.
    /// Bounded by the caller: a window of lines, or the open-loop cap.
    pub wbuf: Vec<u8>,
    woff: usize,
    /// End offsets in `wbuf` of tracked (token) lines not yet fully written.
    line_ends: VecDeque<usize>,
    pub lines_written: u32,
    /// --tls: the connection's TLS state (lines go through it both ways).
    tls: Option<Box<rustls::ClientConnection>>,
}

/// --tls: every connection speaks TLS with this configuration (any
/// certificate accepted: flood measures, it does not authenticate).
pub static TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
    std::sync::OnceLock::new();

/// Starts a non-blocking connect, from `src` (port chosen by the kernel)
/// when given, so many connections can be spread over 127.0.0.x.
pub fn start_connect(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match src {
        None => TcpStream::connect(addr)?,
        Some(ip) => {
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.set_nonblocking(true)?;
            bind_address_no_port(&sock)?;
            sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
            match sock.connect(&SockAddr::from(addr)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            TcpStream::from_std(sock.into())
        }
    };
    // Senders write small lines; Nagle would hold them back and add latency
    // that belongs to neither the server nor the network.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets bind() fix only the source address and leaves the port to
/// connect(), which may reuse a port for another 4-tuple and recycle
/// loopback TIME_WAIT ports; a plain bind to port 0 needs a port free on that
/// address for good and runs out after a few runs.
fn bind_address_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is open (owned by `sock`); the option value
    // points to a live c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Conn {
    pub fn new(stream: TcpStream, transport: Transport) -> Conn {
        Conn {
            stream: Some(stream),
            state: State::Connecting,
            ws: (transport != Transport::Lines).then(|| Box::new(Ws::new())),
            sio_connected: (transport == Transport::SocketIo).then_some(false),
            sio_scratch: Vec::new(),
            got_bytes: false,
            hup: false,
            carry: [0; token::MAX_LEN],
            carry_len: 0,
            wbuf: Vec::new(),
            woff: 0,
            line_ends: VecDeque::new(),
            lines_written: 0,
            tls: TLS.get().and_then(|cfg| {
                let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
                rustls::ClientConnection::new(cfg.clone(), name)
                    .ok()
                    .map(Box::new)
            }),
        }
    }

    /// Writes the records TLS holds until none is left or the socket is full.
    fn write_records(&mut self) -> io::Result<()> {
        let (Some(s), Some(tls)) = (&mut self.stream, &mut self.tls) else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(s) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads plaintext through TLS: Ok(0) at the end of the stream.
    fn read_tls(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read as _;
        loop {
            let (Some(s), Some(tls)) = (&mut self.stream, &mut self.tls) else {
                return Ok(0);
            };
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(s)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            // Handshake records, or the lines held back until it finished.
            self.write_records()?;
        }
    }

    /// After a readiness event while connecting: Ok(true) once connected.
    pub fn check_connected(&mut self) -> io::Result<bool> {
        let Some(s) = &self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Called once TCP is connected: starts the upgrade for WebSocket.
    /// Returns true when the connection can carry lines right away.
    pub fn on_connected(&mut self, host: &str, port: u16, path: &str) -> bool {
        match &self.ws {
            Some(ws) => {
                let req = ws.request(host, port, path);
                self.wbuf.extend_from_slice(&req);
                self.state = State::Upgrading;
                false
            }
            None => {
                self.state = State::Up;
                true
            }
        }
    }

    pub fn unwritten(&self) -> usize {
        let held = self.tls.as_ref().is_some_and(|t| t.wants_write());
        self.wbuf.len() - self.woff + held as usize
    }

    /// Queues an untracked line (e.g. the hello).
    pub fn queue_line(&mut self, line: &[u8]) {
        match &self.ws {
            Some(_) if self.sio_connected.is_some() => {
                let mut ev = Vec::with_capacity(line.len() + 16);
                sio::event(&mut ev, sio::EVENT, line);
                ws::text(&mut self.wbuf, &ev);
            }
            Some(_) => ws::text(&mut self.wbuf, line),
            None => {
                self.wbuf.extend_from_slice(line);
                self.wbuf.push(b'\n');
            }
        }
    }

    /// Queues a token line of `bytes` bytes, counted in `lines_written` once
    /// it has fully left for the kernel.
    pub fn queue_token(&mut self, tok: Token, bytes: usize, scratch: &mut Vec<u8>) {
        match &self.ws {
            Some(_) if self.sio_connected.is_some() => {
                // The token and its padding need no JSON escaping; the line
                // is written straight into the event's string.
                scratch.clear();
                scratch.extend_from_slice(b"42[\"");
                scratch.extend_from_slice(sio::EVENT.as_bytes());
                scratch.extend_from_slice(b"\",\"");
                token::write_line(scratch, tok, bytes);
                scratch.extend_from_slice(b"\"]");
                ws::text(&mut self.wbuf, scratch);
            }
            Some(_) => {
                scratch.clear();
                token::write_line(scratch, tok, bytes);
                ws::text(&mut self.wbuf, scratch);
            }
            None => {
                token::write_line(&mut self.wbuf, tok, bytes);
                self.wbuf.push(b'\n');
            }
        }
        self.line_ends.push_back(self.wbuf.len());
    }

    /// Writes as much as the socket takes. Err means the connection is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            // Plaintext in (rustls holds it until the handshake is done),
            // records out.
            while self.woff < self.wbuf.len() {
                let n = tls.writer().write(&self.wbuf[self.woff..])?;
                if n == 0 {
                    break;
                }
                self.woff += n;
            }
            self.write_records()?;
        }
        let Some(s) = &mut self.stream else {
            return Ok(());
        };
        while self.woff < self.wbuf.len() {
            match s.write(&self.wbuf[self.woff..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.woff += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while self.line_ends.front().is_some_and(|&end| end <= self.woff) {
            self.line_ends.pop_front();
            self.lines_written += 1;
        }
        if self.woff == self.wbuf.len() {
            self.wbuf.clear();
            self.woff = 0;
        }
        Ok(())
    }

    /// Reads what is there into `buf` (shared by all connections). With
    /// `scanner`, tokens are passed to `on_token`; without, bytes are only
    /// counted (connect phase, draining slow readers). Returns the outcome
    /// and the bytes read.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        scanner: Option<&Scanner>,
        on_token: &mut impl FnMut(Token),
    ) -> (ReadOutcome, u64) {
        let mut total = 0u64;
        for _ in 0..READS_PER_EVENT {
            let Some(s) = &mut self.stream else {
                return (ReadOutcome::Closed("closed".into()), total);
            };
            let c = if self.ws.is_none() { self.carry_len } else { 0 };
            buf[..c].copy_from_slice(&self.carry[..c]);
            let room = buf.len() - c;
            let read = if self.tls.is_some() {
                self.read_tls(&mut buf[c..])
            } else {
                s.read(&mut buf[c..])
            };
            let n = match read {
                Ok(0) => return (ReadOutcome::Closed("closed by server".into()), total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (ReadOutcome::Drained, total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (ReadOutcome::Closed(e.to_string()), total),
            };
            total += n as u64;
            let data = &buf[..c + n];
            if let Err(why) = self.consume(data, scanner, on_token) {
                return (ReadOutcome::Closed(why), total);
            }
            // A short read means the socket was empty; with edge-triggered
            // polling new data brings a new event, so the extra read that
            // would only return WouldBlock is saved (half the syscalls).
            if n < room && !self.hup && self.tls.is_none() {
                return (ReadOutcome::Drained, total);
            }
        }
        (ReadOutcome::More, total)
    }

    fn consume(
        &mut self,
        data: &[u8],
        scanner: Option<&Scanner>,
        on_token: &mut impl FnMut(Token),
    ) -> Result<(), String> {
        let Conn {
            ws,
            wbuf,
            state,
            sio_connected,
            sio_scratch,
            ..
        } = self;
        let Some(ws) = ws else {
            self.got_bytes = true;
            let keep = match scanner {
                Some(sc) => sc.scan(data, on_token).min(token::MAX_LEN),
                None => 0,
            };
            self.carry[..keep].copy_from_slice(&data[data.len() - keep..]);
            self.carry_len = keep;
            return Ok(());
        };
        let mut closed = None::<String>;
        let got_bytes = &mut self.got_bytes;
        ws.feed(data, |ev| match ev {
            Incoming::Text(t) => match sio_connected {
                None => {
                    *got_bytes = true;
                    if let Some(sc) = scanner {
                        sc.scan(t, &mut *on_token);
                    }
                }
                Some(connected) => {
                    let packet = sio::decode(t, sio_scratch, |s| {
                        if let Some(sc) = scanner {
                            sc.scan(s, &mut *on_token);
                        }
                    });
                    match packet {
                        Packet::Open => ws::text(wbuf, sio::CONNECT),
                        Packet::Ping => {
                            let mut p = Vec::with_capacity(t.len());
                            sio::pong(&mut p, t);
                            ws::text(wbuf, &p);
                        }
                        // The namespace accepted us: that proves the server
                        // took this connection, as a greeting does.
                        Packet::Connected => {
                            *connected = true;
                            *got_bytes = true;
                        }
                        Packet::ConnectError(why) => {
                            closed = Some(format!("socket.io connect refused: {why}"));
                        }
                        Packet::Close => closed = Some("socket.io closed by server".into()),
                        Packet::Event(_) | Packet::Other => {}
                    }
                }
            },
            Incoming::Ping(p) => ws::pong(wbuf, p),
            Incoming::Close => closed = Some("websocket closed by server".into()),
        })?;
        if ws.is_open() && *state == State::Upgrading && *sio_connected != Some(false) {
            *state = State::Up;
        }
        match closed {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}
