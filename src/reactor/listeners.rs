//! The listening sockets, one row each: which port it is, its token, its
//! flag in error messages, whether it speaks TLS and which state machine
//! its connections start in. Binding and accepting are written once for
//! all of them, and so is the accept loop's error ladder: out of
//! descriptors, a timer retries (`ACCEPT_BACKOFF`), with one warning every
//! `ACCEPT_WARN_EVERY` at most.

use super::Server;
use crate::config::Config;
use crate::conn::{self, Conn, HttpSession, LineSession, Proto, Web};
use crate::metrics::Metrics;
use crate::timer::{Timer, Timers};
use log::warn;
use mio::net::TcpListener;
use mio::{Interest, Poll, Registry, Token};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "cannot accept" warning per this long.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

/// Which listening socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// telnet / nc (the port main.rs binds: --port).
    Line = 0,
    /// The web page and its WebSocket (--http-port).
    Http = 1,
    /// Line clients over TLS (--tls-port).
    TlsLine = 2,
    /// The web over TLS (--https-port).
    Https = 3,
}

/// What a port is, in one place: adding a listener is adding a `Port`
/// and its row.
struct Row {
    port: Port,
    token: Token,
    /// Its connections start with a TLS handshake (a --tls-* server only).
    tls: bool,
    /// The port number to bind, if this server has the port at all (the
    /// line port comes bound from main.rs).
    number: fn(&Config) -> Option<u16>,
    /// The state machine its connections start in, accepted at `now`.
    first: fn(&Config, Instant) -> Proto,
    /// For "cannot listen on HOST:PORT for {what}: {error}{hint}".
    what: &'static str,
    hint: &'static str,
}

/// In `Port` order (a test checks), so a port's row is `ROWS[port]`.
const ROWS: &[Row] = &[
    Row {
        port: Port::Line,
        token: Token(usize::MAX - 1),
        tls: false,
        number: |_| None,
        first: line,
        what: "line clients",
        hint: " (--port)",
    },
    Row {
        port: Port::Http,
        token: Token(usize::MAX - 3),
        tls: false,
        number: |c| (!c.no_http).then_some(c.http_port),
        first: web,
        what: "the web",
        hint: " (--http-port, or --no-http)",
    },
    Row {
        port: Port::TlsLine,
        token: Token(usize::MAX - 4),
        tls: true,
        number: |c| Some(c.tls_port),
        first: line,
        what: "TLS (--tls-port)",
        hint: "",
    },
    Row {
        port: Port::Https,
        token: Token(usize::MAX - 5),
        tls: true,
        number: |c| (!c.no_http).then_some(c.https_port),
        first: web,
        what: "HTTPS (--https-port)",
        hint: "",
    },
];

/// telnet / nc: chat lines from the first byte.
fn line(cfg: &Config, _: Instant) -> Proto {
    Proto::Line(LineSession::new(cfg.max_line as usize))
}

/// The web: one request head within --http-timeout, then an answer or
/// the upgrade to a WebSocket.
fn web(cfg: &Config, now: Instant) -> Proto {
    let deadline = now + Duration::from_secs(cfg.http_timeout);
    Proto::Http(HttpSession::new(deadline, cfg.max_line as usize))
}

/// How many ports there are.
pub const PORTS: usize = ROWS.len();

impl Port {
    /// Every port, in order.
    pub fn all() -> impl Iterator<Item = Port> {
        ROWS.iter().map(|row| row.port)
    }

    fn row(self) -> &'static Row {
        &ROWS[self as usize]
    }
}

/// Every listening socket of the server, and the accept retry's state.
pub struct Listeners {
    /// Indexed by `Port`.
    open: Vec<Option<TcpListener>>,
    /// The TLS ports' certificate (--tls-cert, --tls-self-signed).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Indexed by `Port`: what a TLS port tells a client that speaks plain
    /// text to it (the port to use instead), made once the ports are bound.
    plain: Vec<Option<Rc<[u8]>>>,
    /// Indexed by `Port`: the web page a line port names to a browser that
    /// came to it (conn/line.rs).
    web: Vec<Option<Web>>,
    /// Accepting failed for want of descriptors; a timer retries.
    stalled: bool,
    warned: Option<Instant>,
}

impl Listeners {
    /// Starts with the line port (bound by the caller), registered on `poll`.
    pub fn new(poll: &Poll, line: std::net::TcpListener) -> io::Result<Listeners> {
        let mut all = Listeners {
            open: Port::all().map(|_| None).collect(),
            tls: None,
            plain: Port::all().map(|_| None).collect(),
            web: Port::all().map(|_| None).collect(),
            stalled: false,
            warned: None,
        };
        all.listen(poll, Port::Line, line)?;
        Ok(all)
    }

    /// The certificate for the TLS ports, which are bound (`open`) only
    /// once there is one.
    pub fn speak_tls(&mut self, tls: Arc<rustls::ServerConfig>) {
        self.tls = Some(tls);
    }

    /// Binds every port of `cfg` that speaks TLS (`tls`) or not: the plain
    /// ones before anything else is set up, the TLS ones once there is a
    /// certificate (`speak_tls`).
    pub fn open(&mut self, poll: &Poll, cfg: &Config, tls: bool) -> io::Result<()> {
        for port in Port::all() {
            let row = port.row();
            if row.tls != tls || (tls && self.tls.is_none()) {
                continue;
            }
            if let Some(number) = (row.number)(cfg) {
                self.bind(poll, cfg, port, number)?;
            }
        }
        let web = |port, scheme| {
            self.addr(port).map(|a| Web {
                scheme,
                port: a.port(),
            })
        };
        let (http, https) = (web(Port::Http, "http"), web(Port::Https, "https"));
        self.web[Port::Line as usize] = http;
        self.web[Port::TlsLine as usize] = https.or(http);
        self.plain[Port::TlsLine as usize] = self.addr(Port::Line).map(|line| {
            let text = format!(
                "*** error: this is chatd's TLS port; use --tls (chat) or a TLS client, or the plain port {}\r\n",
                line.port()
            );
            Rc::from(text.into_bytes())
        });
        self.plain[Port::Https as usize] = self.addr(Port::Https).map(|https| {
            let mut text = format!(
                "This is chatd's HTTPS port: use https://HOST:{}/",
                https.port()
            );
            if let Some(web) = self.addr(Port::Http) {
                text.push_str(&format!(", or http://HOST:{}/", web.port()));
            }
            text.push('\n');
            let page = crate::http::response(
                400,
                "text/plain; charset=utf-8",
                text.as_bytes(),
                false,
                &[],
            );
            Rc::from(page)
        });
        Ok(())
    }

    fn bind(&mut self, poll: &Poll, cfg: &Config, port: Port, number: u16) -> io::Result<()> {
        let host = cfg.host.as_str();
        let row = port.row();
        let l = std::net::TcpListener::bind((host, number)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {host}:{number} for {}: {e}{}",
                    row.what, row.hint
                ),
            )
        })?;
        self.listen(poll, port, l)
    }

    fn listen(&mut self, poll: &Poll, port: Port, l: std::net::TcpListener) -> io::Result<()> {
        l.set_nonblocking(true)?;
        let mut l = TcpListener::from_std(l);
        poll.registry()
            .register(&mut l, port.row().token, Interest::READABLE)?;
        self.open[port as usize] = Some(l);
        Ok(())
    }

    /// The port an event's token names, if it names a listener.
    pub fn port_of(token: Token) -> Option<Port> {
        Port::all().find(|p| p.row().token == token)
    }

    pub fn addr(&self, port: Port) -> Option<SocketAddr> {
        self.open[port as usize]
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Accepting stalled: a descriptor freed is a reason to try again.
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Stops listening (shutting down).
    pub fn close(&mut self, registry: &Registry) {
        for mut l in self.open.iter_mut().filter_map(Option::take) {
            let _ = registry.deregister(&mut l);
        }
    }

    /// The next connection waiting on `port`, set up in the port's first
    /// state; those refused (server full) or dropped (TLS cannot start) on
    /// the way are dealt with here. None: nothing more for now, or out of
    /// descriptors (a timer retries).
    pub fn accept(
        &mut self,
        port: Port,
        cfg: &Config,
        clients: usize,
        timers: &mut Timers,
        metrics: &mut Metrics,
    ) -> Option<Conn> {
        if port == Port::Line {
            self.stalled = false;
        }
        loop {
            let listener = self.open[port as usize].as_ref()?;
            let (sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    metrics.accept_errors += 1;
                    self.stall(&e, clients, timers);
                    return None;
                }
            };
            // The listener chooses the state machine the connection starts in.
            let now = Instant::now();
            let proto = match (port.row().first)(cfg, now) {
                Proto::Line(s) => Proto::Line(s.with_web(self.web[port as usize])),
                other => other,
            };
            let max = cfg.max_clients;
            if clients >= max as usize {
                warn!("{peer} refused: server full ({max} clients)");
                let text = format!("*** error: server full ({max} clients)");
                // A TLS client cannot be told anything before a handshake.
                if !port.row().tls {
                    let _ = (&sock).write(&conn::refusal(&proto, &text));
                }
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let tls = self.tls.as_ref().filter(|_| port.row().tls);
            match Conn::accept(sock, peer, proto, tls, cfg, now) {
                Ok(mut c) => {
                    if let Some(answer) = tls.and(self.plain[port as usize].as_ref()) {
                        c.tell_plain(answer.clone());
                    }
                    return Some(c);
                }
                Err(e) => warn!("{peer} dropped: {e}"),
            }
        }
    }

    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS): the pending
    /// connection stays in the backlog. Retrying at once would spin, so
    /// wait a little or until one of our own connections closes, and keep
    /// serving. One retry timer serves every port.
    fn stall(&mut self, e: &io::Error, clients: usize, timers: &mut Timers) {
        let now = Instant::now();
        if self.warned.is_none_or(|t| now >= t + ACCEPT_WARN_EVERY) {
            warn!("cannot accept: {e}; retrying every {ACCEPT_BACKOFF:?} ({clients} clients)");
            self.warned = Some(now);
        }
        self.stalled = true;
        timers.push(now + ACCEPT_BACKOFF, Timer::Accept);
    }
}

impl Server {
    /// Where line clients connect over TLS (--tls-port).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listeners.addr(Port::TlsLine)
    }

    /// Where the web page is served over https (--https-port).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.listeners.addr(Port::Https)
    }

    /// Where the web page is served, unless --no-http.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.addr(Port::Http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Stage;

    #[test]
    fn the_rows_are_in_port_order() {
        for (i, row) in ROWS.iter().enumerate() {
            assert_eq!(row.port as usize, i);
        }
    }

    #[test]
    fn each_port_starts_its_connections_in_its_own_first_state() {
        let cfg = Config {
            host: "127.0.0.1".into(),
            http_port: 0,
            tls_port: 0,
            https_port: 0,
            ..Config::default()
        };
        let poll = Poll::new().unwrap();
        let line = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tls, _, _) = crate::tls::self_signed().unwrap();
        let mut all = Listeners::new(&poll, line).unwrap();
        all.speak_tls(tls);
        all.open(&poll, &cfg, false).unwrap();
        all.open(&poll, &cfg, true).unwrap();
        let mut timers = Timers::default();
        let mut metrics = Metrics::new(Instant::now());
        for port in Port::all() {
            let addr = all
                .addr(port)
                .unwrap_or_else(|| panic!("{port:?} not bound"));
            let _client = std::net::TcpStream::connect(addr).unwrap();
            // The connection is in the backlog once connect returns; the
            // bound keeps a lost one from hanging the test.
            let mut got = None;
            for _ in 0..1000 {
                got = all.accept(port, &cfg, 0, &mut timers, &mut metrics);
                if got.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let c = got.unwrap_or_else(|| panic!("nothing accepted on {port:?}"));
            let web = matches!(c.proto, Proto::Http(_));
            let line = matches!(c.proto, Proto::Line(_));
            let tls = matches!(c.stage(), Stage::Handshake);
            let plain = matches!(c.stage(), Stage::Protocol);
            let expect = match port {
                Port::Line => (false, true, false, true),
                Port::Http => (true, false, false, true),
                Port::TlsLine => (false, true, true, false),
                Port::Https => (true, false, true, false),
            };
            assert_eq!((web, line, tls, plain), expect, "{port:?}");
            assert_eq!(c.deadline().is_some(), web || tls, "{port:?}");
        }
        assert_eq!(metrics.accept_errors, 0);
        assert!(!all.stalled());
    }

    #[test]
    fn a_full_server_refuses_in_the_ports_own_protocol() {
        let cfg = Config {
            host: "127.0.0.1".into(),
            http_port: 0,
            max_clients: 1,
            ..Config::default()
        };
        let poll = Poll::new().unwrap();
        let line = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut all = Listeners::new(&poll, line).unwrap();
        all.open(&poll, &cfg, false).unwrap();
        let mut timers = Timers::default();
        let mut metrics = Metrics::new(Instant::now());
        for (port, answer) in [
            (Port::Line, &b"*** error: server full (1 clients)\r\n"[..]),
            (Port::Http, &b"HTTP/1.1 503 "[..]),
        ] {
            let mut client = std::net::TcpStream::connect(all.addr(port).unwrap()).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // One client already: every accept is a refusal, until the
            // backlog is empty.
            let mut got = Vec::new();
            for _ in 0..1000 {
                assert!(
                    all.accept(port, &cfg, 1, &mut timers, &mut metrics)
                        .is_none()
                );
                let _ = client.set_nonblocking(true);
                let mut buf = [0; 256];
                if let Ok(n) = io::Read::read(&mut client, &mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(got.starts_with(answer), "{port:?}: {got:?}");
        }
    }
}
