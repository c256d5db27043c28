//! Small things a newcomer meets in the first hour (issue 25, item 10 and
//! the resume wording of item 6), each checked against the real binary.

mod support;

use std::process::{Command, Stdio};
use support::Server;

const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

#[test]
fn a_gone_history_with_nothing_since_says_so() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send("/join #quiet");
    c.expect("joined", |l| l.starts_with("*** you joined #quiet"));
    c.send("/history since 1-1");
    let line = c.expect("the gone-history notice", |l| {
        l.starts_with("*** the history since")
    });
    assert!(!line.contains("showing the last 0"), "{line}");
    assert!(line.ends_with("nothing was said since"), "{line}");
}

#[test]
fn the_line_port_bind_error_names_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = support::exit_and_stderr(Command::new(CHATD).args([
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--no-http",
    ]));
    assert_ne!(code, Some(0));
    assert!(err.contains("--port"), "{err}");
}

#[test]
fn help_texts_agree_with_the_readme() {
    let out = Command::new(CHATD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("redis://[[USER]:PASSWORD@]HOST"), "{help}");
    assert!(help.contains("604800"), "--history-ttl's maximum: {help}");
    let server = Server::start(&["--oper-password", "sesame"]);
    let mut op = server.client();
    op.send("/oper sesame");
    op.expect("operator", |l| l.starts_with("*** you are now an operator"));
    op.send("/help");
    op.expect("/mute with its reason", |l| {
        l.contains("/mute NAME [time] [reason]")
    });
}

/// The addresses go to stdout for scripts; when stderr is the same file
/// (a terminal, `2>&1 | tee`) the log does not say them a second time.
#[test]
fn start_up_lines_are_printed_once_when_stdout_is_stderr() {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" --host 127.0.0.1 --port 0 --http-port 0 2>&1",
            CHATD,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        let ready = line == "ready";
        seen.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let addr = seen
        .iter()
        .find_map(|l| l.strip_prefix("listening on "))
        .expect("listening on")
        .to_string();
    let times = seen.iter().filter(|l| l.contains(&addr)).count();
    assert_eq!(times, 1, "{seen:#?}");
}

/// Item 8: a load test from this machine (`chatd --port 3000` then
/// `scripts/flood.sh`) gets every client in; the per-address limits are for
/// addresses that can tell users apart.
#[test]
fn loopback_is_exempt_from_the_per_address_limits_by_default() {
    let server = Server::start(&[]);
    let clients: Vec<_> = (0..40).map(|_| server.client()).collect();
    assert_eq!(clients.len(), 40);
}

#[test]
fn limit_loopback_counts_it_like_any_other_address() {
    let server = Server::start(&["--limit-loopback"]);
    let _in: Vec<_> = (0..16).map(|_| server.client()).collect();
    let mut refused = support::Client::connect_raw(server.addr);
    let line = refused.read_line().unwrap_or_default();
    assert!(line.contains("too many connections"), "{line:?}");
}

/// Item 10: telnet to the TLS port used to show nothing at all.
#[test]
fn plain_text_to_the_tls_port_is_told_where_to_go() {
    let server = Server::start(&["--tls-self-signed"]);
    let tls = server.tls_addr.expect("a TLS port");
    let mut c = support::Client::connect_raw(tls);
    c.send("hello");
    let line = c.read_line().unwrap_or_default();
    assert!(
        line.starts_with("*** error: this is chatd's TLS port; use --tls (chat) or a TLS client"),
        "{line:?}"
    );
    assert!(
        line.contains(&format!("the plain port {}", server.addr.port())),
        "{line:?}"
    );
    assert_eq!(c.read_line(), None, "and closed");
    // A browser sent to http:// on the HTTPS port gets a page saying so.
    let https = server.https_addr.expect("an HTTPS port");
    let mut web = support::Client::connect_raw(https);
    web.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let page = web.read_to_eof();
    assert!(page.starts_with("HTTP/1.1 400 "), "{page:?}");
    assert!(
        page.contains(&format!("https://HOST:{}/", https.port())),
        "{page:?}"
    );
}

/// Item 3: another protocol on the line port. `first` is what the
/// stranger sends at once; returns what it got back before the close.
/// Nothing of it may reach the room (not even a joined notice), its
/// history, or the log beyond one line.
fn stranger_on_the_line_port(server: &Server, first: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut watcher = server.client();
    watcher.sync();
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(support::TIMEOUT)).unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(first).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let seen = watcher.sync();
    assert!(seen.is_empty(), "the room saw {seen:?}");
    watcher.send("/history");
    let history = watcher.expect("the history", |l| l.starts_with("*** history of #lobby"));
    assert_eq!(history, "*** history of #lobby: empty");
    // The log is read from the server's stderr by a thread: wait for it.
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    let log = loop {
        let log = String::from_utf8_lossy(&server.log.lock().unwrap()).to_string();
        if log.contains(&me.to_string()) || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let about: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&me.to_string()))
        .collect();
    assert_eq!(about.len(), 1, "one log line for it: {about:#?}");
    for secret in ["secret", "Cookie", "Jane", "USER"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    got
}

#[test]
fn an_http_request_on_the_line_port_gets_a_400_naming_the_web_port() {
    let server = Server::start(&[]);
    let web = server.http_addr.expect("a web port").port();
    let got = stranger_on_the_line_port(
        &server,
        b"GET / HTTP/1.1\r\nHost: localhost:3000\r\nCookie: auth=secret\r\n\r\n",
    );
    let page = String::from_utf8_lossy(&got);
    assert!(page.starts_with("HTTP/1.1 400 "), "{page}");
    assert!(page.contains("this is chatd's line port"), "{page}");
    assert!(page.contains(&format!("http://localhost:{web}/")), "{page}");
}

#[test]
fn a_tls_client_hello_on_the_line_port_gets_a_tls_alert() {
    let server = Server::start(&[]);
    // The start of a ClientHello: a handshake record, TLS 1.0 framing.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    hello.extend([0x5a; 32]);
    hello.extend(b"secret\n");
    let got = stranger_on_the_line_port(&server, &hello);
    assert_eq!(
        got,
        [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28],
        "a fatal alert"
    );
}

#[test]
fn an_irc_registration_on_the_line_port_gets_an_irc_error() {
    for first in [
        &b"CAP LS 302\r\nNICK jane\r\nUSER u 0 * :Jane Doe\r\n"[..],
        b"PASS mybouncersecret\r\nNICK jane\r\nUSER u 0 * :Jane Doe\r\n",
        b"NICK jane\r\nUSER u 0 * :Jane Doe\r\n",
    ] {
        let server = Server::start(&[]);
        let got = stranger_on_the_line_port(&server, first);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("ERROR :Closing link: this is chatd's line port, not IRC"),
            "{text}"
        );
    }
}

/// Only the first line counts: a user may say anything after it.
#[test]
fn a_line_that_looks_like_http_later_in_a_chat_is_said() {
    let server = Server::start(&[]);
    let mut watcher = server.client();
    let mut user = server.client();
    user.send("GET lost");
    user.send("GET / HTTP/1.1");
    user.send("NICK bob");
    watcher.expect("GET lost", |l| l.ends_with("> GET lost"));
    watcher.expect("the request line", |l| l.ends_with("> GET / HTTP/1.1"));
    watcher.expect("NICK bob", |l| l.ends_with("> NICK bob"));
    // And a script's first line that only begins like one is chat too.
    let mut script = support::Client::connect_raw(server.addr);
    script.send("GET lost");
    script.send("NICK bob");
    script.send("hello");
    watcher.expect("GET lost", |l| l.ends_with("> GET lost"));
    watcher.expect("NICK bob", |l| l.ends_with("> NICK bob"));
}

/// Item 7: `--tls-self-signed` keeps its certificate in the state
/// directory, prints its path, and the real `chat` pins it across a restart.
#[test]
fn a_self_signed_certificate_is_kept_across_restarts_and_chat_can_pin_it() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pinned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--tls-self-signed", "--state-dir", &dir_arg, "--no-http"];
    let printed = |server: &Server, prefix: &str| {
        server
            .banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix:?} in {:#?}", server.banner))
    };
    let chat = |server: &Server, extra: &[&str], line: &str| {
        let tls = server.tls_addr.expect("a TLS port");
        support::chat_tls_line(tls.port(), extra, line)
    };
    let server = Server::start(&args);
    let path = printed(&server, "tls certificate ");
    let fp = printed(&server, "tls self-signed certificate, SHA-256 fingerprint ");
    assert!(
        path.starts_with(&dir_arg) || path.contains("pinned-"),
        "{path}"
    );
    let key = std::path::Path::new(&path).with_extension("key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is its owner's only");
    let mut watcher = server.client();
    let (st, err) = chat(&server, &["--tls-ca", &path], "pinned hello");
    assert!(st.success(), "{err}");
    watcher.expect("the pinned client's line", |l| {
        l.ends_with("> pinned hello")
    });
    // Without a CA or --insecure: refused, with what fixes it.
    let (st, err) = chat(&server, &[], "never");
    assert!(!st.success());
    assert!(
        err.contains("--tls-ca") && err.contains("--insecure"),
        "{err}"
    );
    drop(watcher);
    drop(server);

    let server = Server::start(&args);
    assert_eq!(printed(&server, "tls certificate "), path);
    assert_eq!(
        printed(&server, "tls self-signed certificate, SHA-256 fingerprint "),
        fp,
        "the same certificate after a restart"
    );
    let mut watcher = server.client();
    let (st, err) = chat(&server, &["--tls-ca", &path], "hello again");
    assert!(st.success(), "{err}");
    watcher.expect("the line after the restart", |l| {
        l.ends_with("> hello again")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
