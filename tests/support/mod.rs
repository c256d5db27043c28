//! Shared helpers for the integration tests: start the real `chatd` binary on
//! port 0 and talk to it over loopback, always with timeouts so a broken
//! server fails a test instead of hanging it.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `chatd` child process, killed on drop. Its log (stderr) is
/// kept in memory and printed only if the test fails, so a passing
/// `cargo test` is not mostly server log.
pub struct Server {
    pub child: Child,
    /// Everything the server logged so far (when captured).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub addr: SocketAddr,
    /// The web port, when the server was started with one.
    pub http_addr: Option<SocketAddr>,
    /// The TLS ports, when started with --tls-cert or --tls-self-signed.
    pub tls_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    /// What it printed on stdout at start, up to `ready`.
    pub banner: Vec<String>,
}

impl Server {
    /// Starts chatd on 127.0.0.1 port 0 with the given extra flags and waits
    /// for the line it prints on stdout naming the bound address(es).
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_chatd")), args)
    }

    /// Like `start`, from a prepared command (e.g. `sh -c "ulimit -n 64; exec chatd"`).
    /// Unless `args` say otherwise, both ports are 0 (picked by the kernel),
    /// so tests never collide.
    pub fn start_with(cmd: Command, args: &[&str]) -> Server {
        Self::launch(cmd, args, true)
    }

    /// Like `start`, but leaves the server's stderr pipe in `child.stderr`
    /// for the test (to read it, or to close it).
    pub fn start_stderr_piped(args: &[&str]) -> Server {
        Self::launch(Command::new(env!("CARGO_BIN_EXE_chatd")), args, false)
    }

    fn launch(mut cmd: Command, args: &[&str], capture: bool) -> Server {
        cmd.args(["--host", "127.0.0.1"]);
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        if !args.contains(&"--http-port") && !args.contains(&"--no-http") {
            cmd.args(["--http-port", "0"]);
        }
        let tls = args.contains(&"--tls-self-signed") || args.contains(&"--tls-cert");
        if tls && !args.contains(&"--tls-port") {
            cmd.args(["--tls-port", "0"]);
        }
        if tls && !args.contains(&"--https-port") && !args.contains(&"--no-http") {
            cmd.args(["--https-port", "0"]);
        }
        // Every test client comes from loopback, which the per-address
        // limits exempt by default: a test that sets a limit means it for
        // its loopback clients.
        let limits = ["--max-per-ip", "--max-connects"];
        if args.iter().any(|a| limits.contains(a)) && !args.contains(&"--limit-loopback") {
            cmd.arg("--limit-loopback");
        }
        // chatd reads its bans from the working directory by default: a
        // chatd-bans.txt left there by a server run by hand (banning
        // 127.0.0.1, say) must not reach the tests. One file per server.
        // Nor may a server's state (a self-signed certificate) land in the
        // working directory or be shared: one state directory per server.
        if !args.contains(&"--state-dir") {
            static STATES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = STATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("state-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            cmd.arg("--state-dir").arg(path);
        }
        if !args.contains(&"--bans-file") {
            static BANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = BANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("bans-{}-{n}.txt", std::process::id()));
            let _ = std::fs::remove_file(&path);
            cmd.arg("--bans-file").arg(path);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn chatd");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if capture && let Some(mut err) = child.stderr.take() {
            let sink = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut l) = sink.lock() {
                        l.extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("chatd stdout");
        let mut lines = BufReader::new(stdout).lines();
        // chatd prints "listening on ADDR" (and "http on ADDR") to stdout once bound.
        let mut addr = None;
        let mut http_addr = None;
        let (mut tls_addr, mut https_addr) = (None, None);
        let mut banner = Vec::new();
        for _ in 0..10 {
            let Some(Ok(line)) = lines.next() else { break };
            banner.push(line.clone());
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().parse().expect("listen address"));
            } else if let Some(a) = line.strip_prefix("http on ") {
                http_addr = Some(a.trim().parse().expect("http address"));
            } else if let Some(a) = line.strip_prefix("tls on ") {
                tls_addr = Some(a.trim().parse().expect("tls address"));
            } else if let Some(a) = line.strip_prefix("https on ") {
                https_addr = Some(a.trim().parse().expect("https address"));
            }
            if line.starts_with("ready") {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            log,
            addr: addr.expect("chatd did not print its address"),
            http_addr,
            tls_addr,
            https_addr,
            banner,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends a signal with kill(1) and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        wait_exit(&mut self.child, TIMEOUT).expect("chatd did not exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            show_log("chatd", &self.log);
        }
    }
}

/// Prints a captured log after a failed test (the test harness shows a
/// failing test's output; a passing one's is never printed).
pub fn show_log(who: &str, log: &std::sync::Mutex<Vec<u8>>) {
    // The reader thread may still be copying the last bytes.
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(l) = log.lock() {
        eprintln!(
            "--- {who} log ---\n{}--- end of {who} log ---",
            String::from_utf8_lossy(&l)
        );
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A blocking line client with a read timeout.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
    /// This client's name, from the welcome line.
    pub name: String,
}

impl Client {
    /// Connects and consumes the welcome line.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr);
        let welcome = c.read_line().expect("welcome line");
        c.name = parse_welcome_name(&welcome)
            .unwrap_or_else(|| panic!("no name in welcome line {welcome:?}"));
        c
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    /// A client over a connected stream, with the tests' read timeout.
    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            name: String::new(),
        }
    }

    /// Connects from a given loopback address (all of 127.0.0.0/8 is
    /// ours), without reading anything.
    pub fn connect_from(local: &str, addr: SocketAddr) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let from: SocketAddr = format!("{local}:0").parse().expect("a loopback address");
        sock.bind(&from.into()).expect("bind");
        sock.connect(&addr.into()).expect("connect");
        Client::over(sock.into())
    }

    pub fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one line, checks it ends with CRLF and returns it without it.
    /// None on EOF or timeout.
    pub fn read_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(buf.ends_with(b"\r\n"), "line without CRLF: {buf:?}");
                buf.truncate(buf.len() - 2);
                Some(String::from_utf8(buf).expect("server sent invalid UTF-8"))
            }
        }
    }

    /// Reads lines until one satisfies `pred`; returns it. Panics on timeout/EOF.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.read_line() {
                Some(line) if pred(&line) => return line,
                Some(line) => seen.push(line),
                None => break,
            }
        }
        panic!("{}: expected {what}, got {seen:?}", self.name);
    }

    /// Reads lines until one equals `want` exactly.
    pub fn expect_line(&mut self, want: &str) -> String {
        self.expect(&format!("{want:?}"), |l| l == want)
    }

    /// Asserts that the very next line is `want`.
    pub fn next_is(&mut self, want: &str) {
        let got = self.read_line();
        assert_eq!(got.as_deref(), Some(want), "{}: next line", self.name);
    }

    /// Waits for EOF from the server, returning what it sent before it.
    pub fn read_to_eof(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }

    /// A round trip through the server: after this returns, everything the
    /// server sent this client before handling the ping has been read.
    pub fn sync(&mut self) -> Vec<String> {
        self.send("/who");
        let mut before = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.read_line() {
                Some(l) if l.starts_with("*** #") && l.contains("): ") => return before,
                Some(l) => before.push(l),
                None => break,
            }
        }
        panic!("{}: no /who answer; saw {before:?}", self.name);
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// "*** welcome to chatd, guest-3! ..." -> "guest-3"
pub fn parse_welcome_name(line: &str) -> Option<String> {
    let rest = line.strip_prefix("*** welcome to chatd, ")?;
    let end = rest.find('!')?;
    Some(rest[..end].to_string())
}

/// Sends `total` lines `n=I PAD` (PAD: 500 bytes) from `sender` in one
/// write, then waits until the server has handled every one (its /who
/// answer comes after them). 40 000 lines are 20 MB: far more than
/// loopback buffers hold for a client that does not read, so a small
/// --sendq is sure to overflow. (Shrinking the reader's receive buffer
/// instead makes TCP fall back to slow zero-window probes.) Returns PAD.
pub fn send_many(sender: &mut Client, total: usize) -> String {
    let pad = "d".repeat(500);
    let mut batch = String::new();
    for i in 0..total {
        batch.push_str(&format!("n={i} {pad}\n"));
    }
    let mut w = sender.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(batch.as_bytes()).unwrap());
    writer.join().unwrap();
    let _ = sender.sync();
    pad
}

/// Sends numbered 1 KB lines `seq=N ...` from `sender`, 100 per write, until
/// `done` is set (by a reader that saw what the test waits for), or 200 000
/// lines have gone: loopback buffers take a few MiB before a server's
/// queue for a client that does not read fills, so that is a bound, not an
/// expectation. Returns how many were sent.
pub fn send_until(sender: &mut Client, done: &std::sync::atomic::AtomicBool) -> usize {
    let pad = "p".repeat(1000);
    let mut sent = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) && sent < 200_000 {
        let mut batch = String::new();
        for _ in 0..100 {
            batch.push_str(&format!("seq={sent} {pad}\n"));
            sent += 1;
        }
        sender.send_raw(batch.as_bytes());
    }
    sent
}

/// A TCP proxy on 127.0.0.1 port 0 in front of `target`, whose connections
/// the test can cut while the server stays up, as a flaky network would.
/// While cut, new connections wait (accepted, not yet forwarded) until
/// `restore`, so the test decides what happens during the outage.
pub struct Proxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<(std::sync::Mutex<ProxyState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    /// Where new connections go.
    target: Option<SocketAddr>,
    /// Both ends of every forwarded connection, to shut them down on `cut`.
    live: Vec<(TcpStream, TcpStream)>,
    accepted: usize,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(ProxyState {
                target: Some(target),
                ..ProxyState::default()
            }),
            std::sync::Condvar::new(),
        ));
        let shared = std::sync::Arc::clone(&state);
        // Lives as long as the test process: it only ever waits in accept.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (lock, changed) = &*shared;
                let mut st = lock.lock().unwrap();
                st.accepted += 1;
                changed.notify_all();
                let deadline = Instant::now() + TIMEOUT * 6;
                while st.cut && Instant::now() < deadline {
                    st = changed.wait_timeout(st, TIMEOUT).unwrap().0;
                }
                let Some(Ok(upstream)) = st.target.map(TcpStream::connect) else {
                    continue;
                };
                let _ = upstream.set_nodelay(true);
                let _ = client.set_nodelay(true);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                st.live.push((client, upstream));
            }
        });
        Proxy { addr, state }
    }

    /// Drops every forwarded connection (both ends), and holds new ones.
    pub fn cut(&self) {
        let (lock, changed) = &*self.state;
        let mut st = lock.lock().unwrap();
        st.cut = true;
        for (a, b) in st.live.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        changed.notify_all();
    }

    /// Sends new connections to `target` from now on (a load balancer
    /// picking another instance).
    pub fn retarget(&self, target: SocketAddr) {
        self.state.0.lock().unwrap().target = Some(target);
    }

    /// Forwards again, starting with the connections that waited.
    pub fn restore(&self) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().cut = false;
        changed.notify_all();
    }

    /// Waits until `n` connections in all have been accepted.
    pub fn wait_accepted(&self, n: usize) {
        let (lock, changed) = &*self.state;
        let deadline = Instant::now() + TIMEOUT;
        let mut st = lock.lock().unwrap();
        while st.accepted < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "proxy: {} of {n} connections came",
                st.accepted
            );
            st = changed.wait_timeout(st, left).unwrap().0;
        }
    }
}

/// A field of /proc/PID/status (VmRSS, VmHWM), in KiB: what the allocator
/// really holds, not what the server thinks it queued.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
pub mod cluster;

/// Runs `cmd` with no input and stdout discarded until it exits (within
/// TIMEOUT); its exit code and what it wrote on stderr.
pub fn exit_and_stderr(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child, TIMEOUT).expect("the program did not exit");
    (status.code(), stderr_of(&mut child))
}

/// Everything an exited child wrote on its (piped) stderr.
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// Runs the real `chat --tls` against `port` with `extra` flags, sends
/// `line` and ends its input: how it exited, and its stderr.
pub fn chat_tls_line(port: u16, extra: &[&str], line: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--tls"])
        .args(extra)
        .args(["--no-reconnect", "--wait", "0.2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    drop(stdin);
    let status = wait_exit(&mut child, TIMEOUT).expect("chat did not finish");
    (status, stderr_of(&mut child))
}
