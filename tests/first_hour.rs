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
