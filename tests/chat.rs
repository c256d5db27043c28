//! The `chat` client, driven as a user or a script would: the real binary
//! over pipes (and, with tmux, on a real terminal) against the real chatd.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Server, TIMEOUT, wait_exit};

const CHAT: &str = env!("CARGO_BIN_EXE_chat");

/// A `chat` in scripted mode: stdin and stdout are pipes, stdout is read line
/// by line on a thread so every wait has a deadline.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Chat {
    fn spawn(addr: SocketAddr, extra: &[&str]) -> Chat {
        let mut child = Command::new(CHAT)
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat");
        let stdout = child.stdout.take().expect("chat stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        assert!(buf.ends_with(b"\n"), "chat printed a partial line");
                        buf.pop();
                        assert!(!buf.contains(&b'\r'), "CR reached stdout: {buf:?}");
                        let line = String::from_utf8(buf.clone()).expect("UTF-8 stdout");
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("chat stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(n) = err_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Chat {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to chat stdin");
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads stdout lines until one satisfies `pred`.
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "chat: expected {what}, got {seen:?}; stderr: {}",
            self.stderr()
        );
    }

    /// Every stdout line until chat closes stdout (it exits).
    fn rest(&mut self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut all = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => all.push(line),
                Err(RecvTimeoutError::Disconnected) => return all,
                Err(RecvTimeoutError::Timeout) => panic!("chat kept stdout open; got {all:?}"),
            }
        }
    }

    fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, TIMEOUT)
            .unwrap_or_else(|| panic!("chat did not exit; stderr: {}", self.stderr()))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chatd on a given port (to restart a server where clients expect it).
fn start_chatd_on(port: u16) -> Server {
    Server::start(&["--port", &port.to_string()])
}

fn is_welcome(l: &str) -> bool {
    l.starts_with("*** welcome to chatd, ")
}

#[test]
fn scripted_chat_and_raw_client_exchange_messages() {
    let server = Server::start(&[]);
    let mut chat = Chat::spawn(server.addr, &[]);
    chat.expect("welcome", is_welcome);
    chat.send("/nick piper");
    chat.expect("nick confirmed", |l| l == "*** you are now piper");

    let mut raw = server.client();
    chat.expect("raw joined", |l| l == format!("*** {} joined", raw.name));
    chat.send("hello raw");
    raw.expect_line("<piper> hello raw");
    raw.send("hello piper");
    chat.expect("raw's message", |l| {
        l == format!("<{}> hello piper", raw.name)
    });
    raw.send("/msg piper psst");
    chat.expect("private message", |l| l == format!("*{}* psst", raw.name));

    chat.close_stdin();
    assert!(chat.wait().success(), "stderr: {}", chat.stderr());
    raw.expect("piper left", |l| l.starts_with("*** piper left"));
}

#[test]
fn printf_pipe_sends_prints_answers_and_exits() {
    let server = Server::start(&[]);
    let mut raw = server.client();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"printf '/nick bot\nhello\n' | "$CHAT" --host 127.0.0.1 --port "$PORT""#)
        .env("CHAT", CHAT)
        .env("PORT", server.addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut out = out;
    let status = wait_exit(&mut out, TIMEOUT).expect("chat did not exit after stdin ended");
    let mut stdout = String::new();
    out.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "status {status:?}, stdout {stdout:?}");
    raw.expect_line("<bot> hello");

    // The answer to /nick is printed even though stdin ended at once: chat
    // waits for the server to answer everything before it leaves.
    let lines: Vec<&str> = stdout.split('\n').collect();
    assert!(is_welcome(lines[0]), "{stdout:?}");
    assert!(lines.contains(&"*** you are now bot"), "{stdout:?}");
    assert!(
        stdout.ends_with('\n') && !stdout.contains('\r'),
        "{stdout:?}"
    );
}

#[test]
fn wait_keeps_listening_after_stdin_ends() {
    let server = Server::start(&[]);
    let mut raw = server.client();
    let mut chat = Chat::spawn(server.addr, &["--wait", "5"]);
    chat.send("/nick waiter");
    chat.close_stdin();
    raw.expect("waiter's nick", |l| l.ends_with(" is now waiter"));
    // Nothing a client reads shows when chat has seen the end of its stdin.
    // This pause only gives a chat that ignores --wait time to leave (so the
    // test can fail); a working chat passes however long it is, up to 5 s.
    std::thread::sleep(Duration::from_millis(300));
    raw.send("late news");
    chat.expect("a line sent after stdin ended", |l| {
        l == format!("<{}> late news", raw.name)
    });
    assert!(chat.wait().success());
}

#[test]
fn quit_in_the_script_ends_the_session_there() {
    let server = Server::start(&[]);
    let mut raw = server.client();
    let mut chat = Chat::spawn(server.addr, &[]);
    chat.send("/nick quitter");
    chat.send("/quit done here");
    chat.send("never sent");
    let rest = chat.rest();
    assert!(chat.wait().success());
    assert!(
        rest.iter().any(|l| l == "*** you are now quitter"),
        "{rest:?}"
    );
    raw.expect("quitter left", |l| l.starts_with("*** quitter left"));
    let after = raw.sync();
    assert!(!after.iter().any(|l| l.contains("never sent")), "{after:?}");
}

/// A fake server that sends hostile bytes, to check what chat lets through
/// to the terminal (chatd itself may already filter some of them).
#[test]
fn control_characters_and_crlf_never_reach_stdout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"*** welcome to chatd, x!\r\n").unwrap();
        s.write_all(b"<eve> \x1b[2J\x1b]0;pwned\x07clear\r\n")
            .unwrap();
        s.write_all(b"<eve> bare lf\n").unwrap();
        s.write_all(b"<eve> tab\tok\x7f\x08 \xc2\x9b31m c1\r\n")
            .unwrap();
        s.write_all(b"<eve> over\rwrite\x00\r\n").unwrap();
        // Answer chat's /quit as chatd does, then close.
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.trim_end() == "/quit" {
                s.write_all(b"*** bye\r\n").unwrap();
                return;
            }
            line.clear();
        }
        panic!("chat never sent /quit");
    });
    let mut chat = Command::new(CHAT)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut chat, TIMEOUT).expect("chat did not exit");
    let mut stdout = Vec::new();
    chat.stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    server.join().unwrap();
    assert!(status.success());
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        "*** welcome to chatd, x!\n\
         <eve> [2J]0;pwnedclear\n\
         <eve> bare lf\n\
         <eve> tab\tok 31m c1\n\
         <eve> overwrite\n\
         *** bye\n"
    );
}

#[test]
fn refused_first_connection_is_an_error_with_status_1() {
    // A port nobody listens on: bind one, then free it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(CHAT)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_exit(&mut child, TIMEOUT).expect("chat kept retrying a refused first connection");
    let err = support::stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")) && err.contains("refused"),
        "unclear error: {err:?}"
    );
}

#[test]
fn reconnects_after_restart_and_restores_nick_and_room() {
    let first = Server::start(&[]);
    let port = first.addr.port();
    let mut chat = Chat::spawn(first.addr, &["--reconnect-base-ms", "50"]);
    chat.expect("welcome", is_welcome);
    chat.send("/nick phoenix");
    chat.expect("nick", |l| l == "*** you are now phoenix");
    chat.send("/join ashes");
    chat.expect("join", |l| l.starts_with("*** you joined #ashes"));

    drop(first); // kills chatd: every client sees the connection end
    let second = start_chatd_on(port);
    chat.expect("welcome from the new server", is_welcome);
    chat.expect("nick re-sent", |l| l == "*** you are now phoenix");
    chat.expect("join re-sent", |l| l.starts_with("*** you joined #ashes"));

    // What another user sees: phoenix is back, under its name, in its room.
    let mut raw = second.client();
    raw.send("/join ashes");
    raw.expect("phoenix in #ashes", |l| {
        l.starts_with("*** you joined #ashes") && l.contains("phoenix")
    });
    chat.send("back from the ashes");
    raw.expect_line("<phoenix> back from the ashes");

    let err = chat.stderr();
    assert!(err.contains("lost") && err.contains("reconnected"), "{err}");
}

/// The connection is cut (the server stays up) while the room keeps
/// talking: after reconnecting, chat shows every line exactly once, the
/// ones said meanwhile from the server's history.
#[test]
fn a_cut_connection_resumes_without_loss_or_duplicates() {
    let server = Server::start(&[]);
    let proxy = support::Proxy::start(server.addr);
    let mut raw = server.client();
    // Said before chat came: the lobby's history on connect.
    raw.send("line 0");
    raw.sync();
    let mut chat = Chat::spawn(proxy.addr, &["--reconnect-base-ms", "50"]);
    let mut seen = Vec::new();
    let upto =
        |chat: &mut Chat, seen: &mut Vec<String>, what: &str, pred: &dyn Fn(&str) -> bool| {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match chat.lines.recv_timeout(left) {
                    Ok(line) => {
                        let done = pred(&line);
                        seen.push(line);
                        if done {
                            return;
                        }
                    }
                    Err(_) => panic!(
                        "chat: expected {what}, got {seen:?}; stderr: {}",
                        chat.stderr()
                    ),
                }
            }
        };
    upto(&mut chat, &mut seen, "welcome", &is_welcome);
    chat.send("/nick watcher");
    upto(&mut chat, &mut seen, "nick", &|l| {
        l == "*** you are now watcher"
    });
    raw.expect("watcher", |l| l.ends_with(" is now watcher"));
    for i in 1..=5 {
        raw.send(&format!("line {i}"));
    }
    upto(&mut chat, &mut seen, "line 5", &|l| l.ends_with("> line 5"));

    proxy.cut();
    raw.expect_line("*** watcher left");
    // Said while chat is away: only the history has them.
    for i in 6..=15 {
        raw.send(&format!("line {i}"));
    }
    raw.sync();
    proxy.restore();
    raw.expect("watcher back", |l| l.ends_with(" is now watcher"));
    for i in 16..=20 {
        raw.send(&format!("line {i}"));
    }
    upto(&mut chat, &mut seen, "line 20", &|l| {
        l.ends_with("> line 20")
    });
    chat.close_stdin();
    seen.extend(chat.rest());
    let name = &raw.name;
    for i in 0..=20 {
        let said = format!("<{name}> line {i}");
        let shown = seen
            .iter()
            .filter(|l| *l == &said || l.ends_with(&format!("] {said}")))
            .count();
        assert_eq!(shown, 1, "line {i} shown {shown} times: {seen:#?}");
    }
    assert!(chat.stderr().contains("reconnected"), "{}", chat.stderr());
}

#[test]
fn no_reconnect_exits_1_when_the_server_goes_away() {
    let server = Server::start(&[]);
    let mut chat = Chat::spawn(server.addr, &["--no-reconnect"]);
    chat.expect("welcome", is_welcome);
    drop(server);
    let status = chat.wait();
    assert_eq!(status.code(), Some(1), "stderr: {}", chat.stderr());
    assert!(chat.stderr().contains("lost"), "{}", chat.stderr());
}

// ---------------------------------------------------------------------------
// Interactive mode on a real terminal, under tmux.

/// A tmux server of its own (-L) with one window running a shell command.
struct Tmux {
    socket: String,
    dir: PathBuf,
}

static TMUX_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Tmux {
    /// Runs chat with `args` in a 100x30 pane. When chat exits, the pane's
    /// shell writes chat's exit status and the terminal settings it was left
    /// with to a file, then stays alive so the pane can still be read.
    fn start(args: &str, env: &str) -> Tmux {
        let n = TMUX_SEQ.fetch_add(1, Ordering::SeqCst);
        let socket = format!("chat-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&socket);
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "{env} '{CHAT}' {args}; echo \"exit=$?\" > '{dir}/status.tmp'; \
             stty -a >> '{dir}/status.tmp'; printf '{AFTER}\\n'; \
             mv '{dir}/status.tmp' '{dir}/status'; sleep 600",
            dir = dir.display()
        );
        let t = Tmux { socket, dir };
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &script,
        ]);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]);
    }

    /// The visible pane, trailing blanks trimmed from every row.
    fn screen(&self) -> Vec<String> {
        let text = self.tmux(&["capture-pane", "-p", "-t", "t"]);
        let mut rows: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while rows.last().is_some_and(|l| l.is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Polls the pane until `pred` holds (bounded by TIMEOUT).
    fn wait_screen(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.poll(what, Self::screen, pred)
    }

    /// Polls `rows` of the pane until `pred` holds (bounded by TIMEOUT).
    fn poll(
        &self,
        what: &str,
        rows: impl Fn(&Self) -> Vec<String>,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let rows = rows(self);
            if pred(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                panic!("the pane never showed {what}:\n{}", rows.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the pane showed, scrollback included, wrapped rows
    /// joined, trailing blanks trimmed.
    fn scrollback(&self) -> Vec<String> {
        let text = self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"]);
        text.lines().map(|l| l.trim_end().to_string()).collect()
    }

    /// Polls the scrollback until `pred` holds (bounded by TIMEOUT).
    fn wait_scrollback(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.poll(what, Self::scrollback, pred)
    }

    /// chat's exit status line and `stty -a` after it exited.
    fn wait_status(&self) -> String {
        let path = self.dir.join("status");
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(s) = std::fs::read_to_string(&path) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chat did not exit:\n{}", self.screen().join("\n"));
    }

    /// The pid of chat, the pane shell's child.
    fn chat_pid(&self) -> String {
        let shell = self.tmux(&["display-message", "-p", "-t", "t", "#{pane_pid}"]);
        let shell = shell.trim();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("chat process")
            .to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the pane's shell prints once chat has exited: on a row of its own
/// unless chat left the cursor in the middle of a line.
const AFTER: &str = "after-chat";

/// After chat exits the terminal must be back in cooked mode with echo.
fn assert_sane_terminal(status: &str, code: i32) {
    assert!(status.starts_with(&format!("exit={code}\n")), "{status}");
    let flags: Vec<&str> = status.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(
            flags.contains(&flag),
            "terminal left without {flag}: {status}"
        );
    }
}

fn last_row(rows: &[String]) -> &str {
    rows.last().map(String::as_str).unwrap_or("")
}

fn chat_args(server: &Server, extra: &str) -> String {
    format!("--host 127.0.0.1 --port {} {extra}", server.addr.port())
}

#[test]
#[ignore = "needs tmux"]
fn interactive_incoming_line_lands_above_the_half_typed_line() {
    let server = Server::start(&[]);
    let tmux = Tmux::start(&chat_args(&server, ""), "");
    let rows = tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    let welcome = rows.iter().find(|l| is_welcome(l)).unwrap();
    let me = support::parse_welcome_name(welcome).unwrap();

    let mut raw = server.client();
    tmux.wait_screen("raw joined", |r| {
        r.iter().any(|l| *l == format!("*** {} joined", raw.name))
    });
    tmux.type_text("half typed");
    tmux.wait_screen("the half-typed line", |r| last_row(r) == "> half typed");

    raw.send("incoming while typing");
    let incoming = format!("<{}> incoming while typing", raw.name);
    let rows = tmux.wait_screen("the incoming line", |r| r.contains(&incoming));
    let at = rows.iter().position(|l| *l == incoming).unwrap();
    assert_eq!(
        &rows[at + 1..],
        ["> half typed"],
        "incoming line not above an intact prompt:\n{}",
        rows.join("\n")
    );

    tmux.type_text(" and finished");
    tmux.key("Enter");
    raw.expect_line(&format!("<{me}> half typed and finished"));

    // History: Up brings the sent line back.
    tmux.wait_screen("an empty prompt", |r| last_row(r) == ">");
    tmux.key("Up");
    tmux.wait_screen("history", |r| last_row(r) == "> half typed and finished");
    tmux.key("C-u");
    tmux.wait_screen("the line cleared", |r| last_row(r) == ">");

    tmux.key("C-d");
    assert_sane_terminal(&tmux.wait_status(), 0);
    raw.expect("chat left", |l| l.starts_with(&format!("*** {me} left")));
}

#[test]
#[ignore = "needs tmux"]
fn interactive_ctrl_c_exits_cleanly() {
    let server = Server::start(&[]);
    let mut raw = server.client();
    let tmux = Tmux::start(&chat_args(&server, ""), "");
    tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    let joined = raw.expect("chat joined", |l| l.ends_with(" joined"));
    tmux.type_text("never sent");
    tmux.wait_screen("typed text", |r| last_row(r) == "> never sent");
    tmux.key("C-c");
    assert_sane_terminal(&tmux.wait_status(), 0);
    let name = joined
        .trim_start_matches("*** ")
        .trim_end_matches(" joined");
    raw.expect("chat left", |l| l.starts_with(&format!("*** {name} left")));
}

/// Killed mid-edit, chat restores the terminal and ends the line being typed,
/// as Ctrl-C does, so whatever the shell prints next starts on a row of its own.
fn killed_mid_edit(signal: &str, number: i32) {
    let server = Server::start(&[]);
    let tmux = Tmux::start(&chat_args(&server, ""), "");
    tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    tmux.type_text("mid-edit");
    tmux.wait_screen("typed text", |r| last_row(r) == "> mid-edit");
    let pid = tmux.chat_pid();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_sane_terminal(&tmux.wait_status(), 128 + number);
    tmux.wait_screen("the typed line kept, the shell's output below it", |r| {
        r.iter().any(|l| l == "> mid-edit") && r.iter().any(|l| l == AFTER)
    });
}

#[test]
#[ignore = "needs tmux"]
fn interactive_sigterm_restores_the_terminal() {
    killed_mid_edit("-TERM", 15);
}

#[test]
#[ignore = "needs tmux"]
fn interactive_sighup_restores_the_terminal() {
    killed_mid_edit("-HUP", 1);
}

#[test]
#[ignore = "needs tmux"]
fn interactive_no_reconnect_restores_the_terminal_when_the_server_dies() {
    let server = Server::start(&[]);
    let tmux = Tmux::start(&chat_args(&server, "--no-reconnect"), "");
    tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    tmux.type_text("mid-edit");
    tmux.wait_screen("typed text", |r| last_row(r) == "> mid-edit");
    drop(server);
    assert_sane_terminal(&tmux.wait_status(), 1);
    let rows = tmux.screen();
    assert!(
        rows.iter().any(|l| l.contains("lost")),
        "{}",
        rows.join("\n")
    );
}

#[test]
#[ignore = "needs tmux"]
fn interactive_colours_follow_no_color() {
    let server = Server::start(&[]);
    for (env, args, coloured) in [
        ("env -u NO_COLOR", "", true),
        ("env -u NO_COLOR", "--no-color", false),
        ("env NO_COLOR=1", "", false),
    ] {
        let tmux = Tmux::start(&chat_args(&server, args), env);
        tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
        let text = tmux.tmux(&["capture-pane", "-p", "-e", "-t", "t"]);
        let welcome = text
            .lines()
            .find(|l| l.contains("welcome to chatd"))
            .unwrap();
        assert_eq!(
            welcome.contains('\x1b'),
            coloured,
            "{env} {args}: {welcome:?}"
        );
        tmux.key("C-d");
        assert_sane_terminal(&tmux.wait_status(), 0);
    }
}

#[test]
fn the_password_from_a_file_is_sent_first_on_every_connection() {
    let dir = std::env::temp_dir().join(format!("chatd-chat-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "hunter2\n").unwrap();
    let first = Server::start(&["--password", "hunter2"]);
    let port = first.addr.port();
    let mut chat = Chat::spawn(
        first.addr,
        &[
            "--reconnect-base-ms",
            "50",
            "--password-file",
            file.to_str().unwrap(),
        ],
    );
    chat.expect("welcome", is_welcome);
    chat.send("/nick keyholder");
    chat.expect("nick", |l| l == "*** you are now keyholder");
    drop(first);
    let second = Server::start(&["--port", &port.to_string(), "--password", "hunter2"]);
    chat.expect("welcome from the new server", is_welcome);
    chat.expect("nick re-sent", |l| l == "*** you are now keyholder");
    chat.send("let in twice");
    let mut raw = support::Client::connect_raw(second.addr);
    raw.send("/pass hunter2");
    raw.expect("welcome", is_welcome);
    raw.send("/who");
    raw.expect("keyholder inside", |l| {
        l.starts_with("*** #lobby (2): ") && l.contains("keyholder")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Kicks, bans and refusals end the session with a status that says why
// (docs/chat.md), instead of a reconnect that takes the nick again.

/// A scripted chat named `name` in the lobby, stdin left open (so only the
/// server can end it), reconnecting fast if it ever does reconnect.
fn named_chat(server: &Server, name: &str) -> Chat {
    let mut chat = Chat::spawn(server.addr, &["--reconnect-base-ms", "20"]);
    chat.expect("welcome", is_welcome);
    chat.send(&format!("/nick {name}"));
    chat.expect("nick", |l| l == format!("*** you are now {name}"));
    chat
}

fn operator(server: &Server) -> support::Client {
    let mut op = server.client();
    op.send("/oper sesame");
    op.expect("operator", |l| l.starts_with("*** you are now an operator"));
    op
}

#[test]
fn a_kicked_chat_does_not_come_back_and_exits_7() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let mut op = operator(&server);
    let mut chat = named_chat(&server, "mallory");
    op.expect("mallory", |l| l.contains("mallory"));
    op.send("/kick mallory spam");
    op.expect("the kick", |l| l.starts_with("*** mallory was kicked by"));
    let status = chat.wait();
    let err = chat.stderr();
    assert_eq!(status.code(), Some(7), "stderr: {err}");
    assert!(
        err.contains("kicked") && !err.contains("reconnected"),
        "{err}"
    );
    // No second welcome took the name again.
    let who = op.sync();
    assert!(!who.iter().any(|l| l.contains("mallory")), "{who:?}");
    op.send("/who");
    let list = op.expect("who", |l| l.starts_with("*** #"));
    assert!(!list.contains("mallory"), "{list}");
}

#[test]
fn a_banned_chat_stops_says_for_how_long_and_exits_4() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let mut op = operator(&server);
    let mut chat = named_chat(&server, "mallory");
    op.send("/ban mallory confirm 10m spam");
    op.expect("the ban", |l| l.starts_with("*** banned "));
    let status = chat.wait();
    let err = chat.stderr();
    assert_eq!(status.code(), Some(4), "stderr: {err}");
    assert!(err.contains("banned") && err.contains("10m"), "{err}");
    // Coming back is refused at once, with the time left, and no retries.
    let mut again = Chat::spawn(server.addr, &["--reconnect-base-ms", "20"]);
    let status = again.wait();
    let err = again.stderr();
    assert_eq!(status.code(), Some(4), "stderr: {err}");
    assert!(err.contains("banned") && err.contains("9m"), "{err}");
}

#[test]
fn no_password_exits_5_with_the_flag_that_gives_one() {
    let server = Server::start(&["--password", "hunter2"]);
    let mut chat = Chat::spawn(server.addr, &[]);
    chat.send("hello");
    chat.close_stdin();
    let status = chat.wait();
    let err = chat.stderr();
    assert_eq!(status.code(), Some(5), "stderr: {err}");
    assert!(err.contains("--password-file"), "{err}");
}

#[test]
fn a_full_server_is_a_refusal_exit_3() {
    let server = Server::start(&["--max-clients", "1"]);
    let _first = server.client();
    let mut chat = Chat::spawn(server.addr, &["--reconnect-base-ms", "20"]);
    let status = chat.wait();
    let err = chat.stderr();
    assert_eq!(status.code(), Some(3), "stderr: {err}");
    assert!(err.contains("server full"), "{err}");
}

#[test]
fn tls_against_plain_and_plain_against_tls_exit_6_with_the_fix() {
    let server = Server::start(&["--tls-self-signed", "--no-http"]);
    let tls = server.tls_addr.expect("tls port");
    let run = |port: u16, extra: &[&str]| {
        support::exit_and_stderr(
            Command::new(CHAT)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(extra),
        )
    };
    let (code, err) = run(tls.port(), &[]);
    assert_eq!(code, Some(6), "plain to the TLS port: {err}");
    assert!(err.contains("--tls"), "{err}");
    let (code, err) = run(server.addr.port(), &["--tls", "--insecure"]);
    assert_eq!(code, Some(6), "TLS to the line port: {err}");
    assert!(err.contains("without --tls"), "{err}");
    let (code, err) = run(tls.port(), &["--tls"]);
    assert_eq!(code, Some(6), "self-signed, not trusted: {err}");
    assert!(
        err.contains("--insecure") && err.contains("--tls-ca"),
        "{err}"
    );
    let (code, err) = run(tls.port(), &["--tls", "--insecure"]);
    assert_eq!(code, Some(0), "with --insecure: {err}");
}

#[test]
fn tls_without_a_port_means_the_tls_port() {
    let (_, err) = support::exit_and_stderr(Command::new(CHAT).args([
        "--host",
        "127.0.0.1",
        "--tls",
        "--insecure",
    ]));
    // Whatever answers there (most likely nothing), it is port 3443.
    assert!(err.is_empty() || err.contains("127.0.0.1:3443"), "{err}");
}

#[test]
#[ignore = "needs tmux"]
fn interactive_kick_says_so_and_reconnects_only_when_asked() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let mut op = operator(&server);
    let tmux = Tmux::start(&chat_args(&server, "--reconnect-base-ms 20"), "");
    tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    tmux.type_text("/nick mallory");
    tmux.key("Enter");
    tmux.wait_screen("the nick", |r| {
        r.iter().any(|l| l == "*** you are now mallory")
    });
    op.expect("mallory", |l| l.contains("mallory"));
    op.send("/kick mallory");
    tmux.wait_screen("the kick and the way back", |r| {
        r.iter()
            .any(|l| l.contains("you were kicked") && l.contains("/reconnect"))
    });
    // Held: the op's /who shows no mallory until /reconnect.
    op.send("/who");
    let list = op.expect("who", |l| l.starts_with("*** #"));
    assert!(!list.contains("mallory"), "came back on its own: {list}");
    tmux.type_text("/reconnect");
    tmux.key("Enter");
    op.expect("mallory again", |l| {
        l == "*** mallory joined" || l.contains("is now mallory")
    });
    // Ctrl-D only once the client shows it is back under its name: sent
    // earlier, it can reach the editor between the reconnect and the
    // prompt's redraw.
    tmux.wait_screen("back as mallory", |r| {
        r.iter().filter(|l| *l == "*** you are now mallory").count() >= 2
    });
    tmux.key("C-d");
    assert_sane_terminal(&tmux.wait_status(), 0);
}

/// The backoff resets on a welcome, not on a TCP connect: against a server
/// that accepts and closes at once, the announced delays keep doubling.
/// (The printed schedule is checked, not the time it took.)
#[test]
fn backoff_grows_against_a_server_that_accepts_and_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for (i, s) in listener.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            if i == 0 {
                // The first connection is welcomed, as chatd would.
                let _ = s.write_all(b"*** welcome to chatd, guest-1! you are in #lobby\r\n");
            }
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let mut chat = Chat::spawn(addr, &["--reconnect-base-ms", "200"]);
    chat.expect("welcome", is_welcome);
    let deadline = Instant::now() + TIMEOUT;
    while accepted.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = chat.stderr();
    let delays: Vec<f64> = err
        .lines()
        .filter_map(|l| {
            l.rsplit_once("reconnecting in ")?
                .1
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.len() >= 4, "{err}");
    // 200 ms doubling: the fourth is 1.6 s (±25 %), never the first again.
    assert!(
        delays[3] >= 1.0,
        "the backoff restarted on a connect: {delays:?}"
    );
}

/// Issue 22: chat in two rooms (#lobby current, #games in the background)
/// loses its connection (the server stays up, with its history) while both
/// rooms keep talking; once back it is in both rooms again, #lobby still
/// current, and has shown every line of each room exactly once — the
/// background room's with its `[#games] ` mark.
#[test]
#[ignore = "needs tmux"]
fn interactive_chat_in_two_rooms_resumes_both_after_a_cut_without_loss_or_duplicates() {
    let server = Server::start(&[]);
    let proxy = support::Proxy::start(server.addr);
    let mut lob = server.client();
    lob.send("/nick lob");
    lob.expect_line("*** you are now lob");
    let mut gam = server.client();
    gam.send("/nick gam");
    gam.expect_line("*** you are now gam");
    gam.send("/join games");
    gam.expect("the join", |l| l.starts_with("*** you joined #games"));

    let args = format!(
        "--host 127.0.0.1 --port {} --reconnect-base-ms 50",
        proxy.addr.port()
    );
    let tmux = Tmux::start(&args, "");
    tmux.wait_screen("welcome", |r| r.iter().any(|l| is_welcome(l)));
    for (typed, answer) in [
        ("/nick watcher", "*** you are now watcher"),
        ("/join games", "*** you joined #games"),
        ("/join lobby", "*** now talking in #lobby"),
    ] {
        tmux.type_text(typed);
        tmux.key("Enter");
        tmux.wait_scrollback(answer, |r| r.iter().any(|l| l.starts_with(answer)));
    }
    gam.expect_line("*** watcher joined #games");
    let said = |lob: &mut support::Client,
                gam: &mut support::Client,
                range: std::ops::RangeInclusive<u32>| {
        for i in range {
            lob.send(&format!("lobby {i}"));
            gam.send(&format!("games {i}"));
        }
        lob.sync();
        gam.sync();
    };
    said(&mut lob, &mut gam, 1..=3);
    tmux.wait_scrollback("the third lines", |r| {
        r.iter().any(|l| l == "[#games] <gam> games 3") && r.iter().any(|l| l == "<lob> lobby 3")
    });

    proxy.cut();
    lob.expect("watcher gone", |l| l.starts_with("*** watcher left"));
    // Said while chat is away: only the rooms' histories have them.
    said(&mut lob, &mut gam, 4..=6);
    proxy.restore();
    gam.expect("watcher back in #games", |l| {
        l == "*** watcher joined #games"
    });
    tmux.wait_scrollback("the lobby current again", |r| {
        r.iter()
            .filter(|l| *l == "*** now talking in #lobby")
            .count()
            >= 2
    });
    said(&mut lob, &mut gam, 7..=8);
    let rows = tmux.wait_scrollback("the last lines", |r| {
        r.iter().any(|l| l == "[#games] <gam> games 8") && r.iter().any(|l| l == "<lob> lobby 8")
    });
    for i in 1..=8 {
        for (who, room) in [("lob", "lobby"), ("gam", "games")] {
            let line = format!("<{who}> {room} {i}");
            let shown = rows.iter().filter(|l| l.ends_with(&line)).count();
            assert_eq!(
                shown,
                1,
                "{line:?} shown {shown} times:\n{}",
                rows.join("\n")
            );
        }
    }
    let me = "watcher";
    lob.send("/who");
    let who = lob.expect("who", |l| l.starts_with("*** #lobby ("));
    assert!(who.contains(me), "not back in #lobby: {who}");
    gam.send("/who");
    let who = gam.expect("who", |l| l.starts_with("*** #games ("));
    assert!(who.contains(me), "not back in #games: {who}");
    tmux.key("C-d");
    assert_sane_terminal(&tmux.wait_status(), 0);
}
