//! Issue 15 (transport half): TLS beside the plain ports, the PROXY
//! protocol from trusted proxies only, and per-address limits. Real tools
//! where they exist: `openssl s_client`, `ncat --ssl`, HAProxy
//! (`send-proxy-v2`), the `chat` client.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::cluster::{Haproxy, TempDir, http_get, start_logged, wait_log};
use support::{Client, Server, TIMEOUT};

/// A tool run as a chat client: lines in on stdin, lines out of stdout.
struct Tool {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tool {
    fn start(cmd: &mut Command) -> Tool {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the tool (is it installed?)");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
        Tool { child, lines }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
        stdin.flush().expect("flush");
    }

    /// The first line that satisfies `pred`, within TIMEOUT.
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no {what} within {TIMEOUT:?}; saw {seen:?}");
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a certificate it signed for 127.0.0.1, made with
/// openssl: (dir, CA cert, server cert, server key).
fn openssl_cert() -> (TempDir, String, String, String) {
    let dir = TempDir::new("tls");
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key, csr, cert, key, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("cert.csr"),
        p("cert.pem"),
        p("key.pem"),
        p("ext.cnf"),
    );
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-days",
            "1",
            "-subj",
            "/CN=chatd test CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
    ]
    .concat());
    run(&[
        &["req", "-new"],
        &ec[..],
        &["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr],
    ]
    .concat());
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (dir, ca, cert, key)
}

fn said(text: &str) -> impl Fn(&str) -> bool + '_ {
    move |l: &str| l.ends_with(text) && l.starts_with('<')
}

#[test]
#[ignore = "needs openssl and ncat"]
fn openssl_s_client_and_ncat_ssl_chat_with_a_plain_nc_user() {
    let server = Server::start(&["--tls-self-signed"]);
    let tls = server.tls_addr.expect("a TLS port");
    let mut plain = server.client();
    let port = tls.port().to_string();
    let mut openssl = Tool::start(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}")),
    );
    openssl.expect("the welcome over TLS", |l| l.starts_with("*** welcome"));
    let mut ncat = Tool::start(Command::new("ncat").args(["--ssl", "127.0.0.1", &port]));
    ncat.expect("the welcome over TLS", |l| l.starts_with("*** welcome"));

    openssl.send("hello from openssl");
    plain.expect("openssl's line", said("hello from openssl"));
    ncat.expect("openssl's line", said("hello from openssl"));
    ncat.send("hello from ncat");
    plain.expect("ncat's line", said("hello from ncat"));
    openssl.expect("ncat's line", said("hello from ncat"));
    plain.send("hello from nc");
    openssl.expect("the plain line", said("hello from nc"));
    ncat.expect("the plain line", said("hello from nc"));
}

/// A TLS client that sends half a ClientHello and stops: closed at
/// --http-timeout, while the others chat on.
#[test]
fn a_client_stalled_mid_handshake_is_closed_at_the_deadline_while_others_chat() {
    let dir = TempDir::new("stall");
    let log = dir.path().join("chatd.log");
    let server = start_logged(&log, &["--tls-self-signed", "--http-timeout", "2"]);
    let tls = server.tls_addr.expect("a TLS port");
    let mut staller = TcpStream::connect(tls).unwrap();
    // A handshake record header announcing 512 bytes, and 3 of them.
    staller
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .unwrap();
    let mut a = server.client();
    let mut b = server.client();
    a.send("still here");
    b.expect("a's line", said("still here"));
    staller.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut buf = [0; 64];
    let n = staller.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word: {:?}", &buf[..n]);
    assert!(started.elapsed() < TIMEOUT, "closed by the deadline");
    wait_log(&log, &["no TLS handshake within --http-timeout"], TIMEOUT);
    b.send("and still");
    a.expect("b's line", said("and still"));
}

#[test]
#[ignore = "needs openssl"]
fn the_chat_client_speaks_tls_with_a_ca_file_or_insecure() {
    let (_dir, ca, cert, key) = openssl_cert();
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let tls = server.tls_addr.expect("a TLS port");
    let mut watcher = server.client();
    let chat = |extra: &[&str], line: &str| support::chat_tls_line(tls.port(), extra, line);
    let (st, err) = chat(&["--tls-ca", &ca], "verified hello");
    assert!(st.success(), "{err}");
    watcher.expect("the verified client's line", said("verified hello"));
    let (st, err) = chat(&["--insecure"], "insecure hello");
    assert!(st.success(), "{err}");
    watcher.expect("the insecure client's line", said("insecure hello"));
    // Without the CA the certificate is not trusted: a clear refusal.
    let (st, err) = chat(&[], "never");
    assert!(!st.success());
    assert!(err.contains("certificate"), "{err}");
}

/// The web port over TLS: the page and /metrics come back over https.
#[test]
#[ignore = "needs openssl"]
fn the_web_port_speaks_https() {
    let server = Server::start(&["--tls-self-signed"]);
    let https = server.https_addr.expect("an https port");
    let out = Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-connect"])
        .arg(https.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            c.wait_with_output()
        })
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// An HTTP/1.0 GET from a given loopback address.
fn http_get_from(local: &str, addr: SocketAddr, path: &str) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{local}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: chatd\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn v1_header(src: &str) -> String {
    format!("PROXY TCP4 {src} 127.0.0.1 51234 3000\r\n")
}

#[test]
fn a_trusted_proxy_header_split_across_reads_gives_the_real_address() {
    let dir = TempDir::new("proxy");
    let log = dir.path().join("chatd.log");
    let server = start_logged(
        &log,
        &[
            "--proxy-protocol",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--max-per-ip",
            "1",
        ],
    );
    let mut c = Client::connect_raw(server.addr);
    let header = v1_header("203.0.113.7");
    c.send_raw(&header.as_bytes()[..10]);
    // Nothing happens before the whole header: no welcome yet.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0; 1];
    assert!(
        c.stream.peek(&mut buf).is_err(),
        "no welcome before the header"
    );
    c.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send_raw(&header.as_bytes()[10..]);
    c.expect("the welcome", |l| l.starts_with("*** welcome"));
    wait_log(&log, &["203.0.113.7:51234 connected"], TIMEOUT);
    // The limits count the real address: a second client from 203.0.113.7
    // is refused, one from 198.51.100.1 is not.
    let mut again = Client::connect_raw(server.addr);
    again.send_raw(v1_header("203.0.113.7").as_bytes());
    again.expect("the refusal", |l| {
        l == "*** error: too many connections from your address"
    });
    wait_log(&log, &["203.0.113.7:51234 refused: --max-per-ip"], TIMEOUT);
    // v2 on the web port.
    let web = server.http_addr.unwrap();
    let mut w = TcpStream::connect(web).unwrap();
    let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, web),
    )
    .build()
    .unwrap();
    w.write_all(&v2).unwrap();
    w.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    w.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    let _ = w.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // The proxy's own health checks (LOCAL) are not held to --max-per-ip:
    // two at once from 127.0.0.1 are both answered.
    let local = ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    let checks: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(web).unwrap();
            s.write_all(&local).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    for mut s in checks {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

#[test]
fn a_proxy_header_from_an_untrusted_address_is_refused() {
    let dir = TempDir::new("untrusted");
    let log = dir.path().join("chatd.log");
    let server = start_logged(&log, &["--proxy-protocol", "--trusted-proxy", "10.0.0.0/8"]);
    let mut watcher = server.client();
    // A direct client from an untrusted address chats without a header...
    let mut direct = server.client();
    direct.send("direct hello");
    watcher.expect("the direct line", said("direct hello"));
    // ...and one that claims another address with a header is cut off,
    // the header never reaching the room.
    let mut liar = Client::connect_raw(server.addr);
    liar.send_raw(v1_header("203.0.113.9").as_bytes());
    liar.send_raw(b"spoofed\n");
    let rest = liar.read_to_eof();
    assert!(!rest.contains("spoofed"), "{rest}");
    wait_log(
        &log,
        &["refused: PROXY header from an untrusted address"],
        TIMEOUT,
    );
    let seen = watcher.sync();
    assert!(
        seen.iter()
            .all(|l| !l.contains("PROXY") && !l.contains("spoofed")),
        "{seen:?}"
    );
}

#[test]
fn the_per_address_cap_and_connect_rate_are_hit() {
    let dir = TempDir::new("limits");
    let log = dir.path().join("chatd.log");
    let server = start_logged(&log, &["--max-per-ip", "2", "--max-connects", "100"]);
    let a = server.client();
    let b = server.client();
    let mut c = Client::connect_raw(server.addr);
    let line = c.read_line().expect("a refusal");
    assert_eq!(line, "*** error: too many connections from your address");
    wait_log(&log, &["refused: --max-per-ip"], TIMEOUT);
    // One leaves: a slot is free again.
    drop(a);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut d = Client::connect_raw(server.addr);
        let first = d.read_line().unwrap_or_default();
        if first.starts_with("*** welcome") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {first}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(b);

    let server = start_logged(&log, &["--max-per-ip", "0", "--max-connects", "3"]);
    for _ in 0..3 {
        let mut ok = Client::connect_raw(server.addr);
        let first = ok.read_line().unwrap_or_default();
        assert!(first.starts_with("*** welcome"), "{first}");
    }
    let mut fast = Client::connect_raw(server.addr);
    let line = fast.read_line().expect("a refusal");
    assert!(
        line.starts_with("*** error: too many connections from your address (too many new"),
        "{line}"
    );
    wait_log(&log, &["refused: --max-connects"], TIMEOUT);
    // From another address: this one may not connect any more.
    let metrics = http_get_from("127.0.0.2", server.http_addr.unwrap(), "/metrics");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("chatd_refused_connect_rate_total{"))
        .unwrap_or_default();
    assert!(refused.ends_with(" 1"), "{metrics}");
}

/// HAProxy with send-proxy-v2 in front: chatd logs the client's own
/// address (127.0.0.1 and its port), not HAProxy's (127.0.0.2).
#[test]
#[ignore = "needs haproxy"]
fn behind_haproxy_send_proxy_v2_the_log_shows_the_real_client() {
    let dir = TempDir::new("hp-real");
    let log = dir.path().join("chatd.log");
    let node = start_logged(&log, &["--proxy-protocol", "--trusted-proxy", "127.0.0.2"]);
    let hp = Haproxy::start(&[&node]);
    let mut x = Client::connect(hp.line);
    let me = x.stream.local_addr().unwrap();
    x.send("hello via haproxy");
    wait_log(&log, &[&format!("{me} connected as")], TIMEOUT);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("127.0.0.2"),
        "HAProxy's own address in the log:\n{text}"
    );
    let health = http_get(hp.http, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// Issue 26, item 4: the per-address table full (of addresses whose
/// buckets are refilling: 66 000 loopback addresses, more than it holds)
/// does not turn the limits off: one address still gets --max-per-ip.
#[test]
fn the_per_address_table_never_fails_open_when_full() {
    let server = Server::start(&["--max-per-ip", "2", "--max-connects", "3"]);
    let mut n = 0u32;
    let mut filled = 0;
    while filled < 66_000 {
        let (b, c, d) = (1 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
        n += 1;
        if d == 0 || d == 255 {
            continue;
        }
        let mut one = Client::connect_from(&format!("127.{b}.{c}.{d}"), server.addr);
        // A first line: welcomed now, not after the quiet wait.
        one.send("/who");
        let first = one.read_line().unwrap_or_default();
        assert!(first.starts_with("*** welcome"), "127.{b}.{c}.{d}: {first}");
        filled += 1;
    }
    let held: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect_from("127.0.0.1", server.addr);
            c.send("/who");
            let first = c.read_line().unwrap_or_default();
            assert!(first.starts_with("*** welcome"), "{first}");
            c
        })
        .collect();
    let mut third = Client::connect_from("127.0.0.1", server.addr);
    assert_eq!(
        third.read_line().as_deref(),
        Some("*** error: too many connections from your address")
    );
    drop(held);
}

/// Issue 26, item 9: a complete PROXY v1 line that lacks fields is refused
/// at once, not held until --http-timeout (a minute here, longer than the
/// client waits).
#[test]
fn a_complete_proxy_line_that_does_not_parse_is_refused_at_once() {
    let server = Server::start(&[
        "--proxy-protocol",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--http-timeout",
        "60",
    ]);
    for header in [
        &b"PROXY TCP4 203.0.113.7\r\n"[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n",
    ] {
        let mut c = Client::connect_raw(server.addr);
        c.send_raw(header);
        let mut rest = Vec::new();
        let closed = c.stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok(),
            "{}: still open after {TIMEOUT:?}: {closed:?}",
            String::from_utf8_lossy(header)
        );
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("welcome"), "{rest}");
    }
}
