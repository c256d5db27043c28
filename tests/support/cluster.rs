//! The cluster test harness: ports, temp dirs, a real redis-server and
//! HAProxy, a cluster of chatd instances, and the bounded waits the tests in
//! tests/cluster.rs synchronise on. Moved here from tests/cluster.rs
//! (issue 14) so the tests read as tests.

use super::{Client, Server, TIMEOUT};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The bound for the others to see the users of a dead instance
/// leave, and for those users to drop out of /who.
pub const SERVER_LOST_BOUND: Duration = Duration::from_secs(15);
/// Added to a bound before failing: two cores shared by several agents can
/// stall a process for a few seconds. The measured time is printed.
pub const SLACK: Duration = Duration::from_secs(5);
/// How long an instance may take to reconnect to a restarted Redis (it backs
/// off between attempts), or to link up at start.
pub const RELINK: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(50);

pub const LINK_DOWN: &str = "*** cluster link down: messages reach this server only";
pub const LINK_RESTORED: &str = "*** cluster link restored";

// --- plumbing: ports, temp dirs, redis-server, haproxy -----------------------

/// A port nobody listens on right now (bound, read, released). Another
/// process could take it before we use it; the kernel hands out ports in
/// sequence, so that is rare, and a clash fails loudly rather than silently.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The first of `n` consecutive free ports (cluster.sh numbers its
/// instances' ports from a base).
pub fn free_port_run(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (base..base + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports on 127.0.0.1");
}

/// A scratch directory, removed on drop unless the test failed (then its
/// path is printed, with the logs in it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Short: a unix socket path (HAProxy's stats socket) must fit in
        // 108 bytes.
        let path = std::env::temp_dir().join(format!(
            "chatd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A redis-server of our own on a free loopback port, no persistence,
/// killed on drop. `stop` and `restart` (same port) simulate an outage.
pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    /// More arguments for redis-server (a Redis Cluster node's).
    pub extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With more arguments for redis-server; `{dir}` in them is replaced
    /// by its scratch directory.
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = TempDir::new("redis");
        let extra = extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            extra,
        };
        // A port picked by free_port can be taken before redis binds it:
        // try a few.
        for _ in 0..3 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!(
            "redis-server would not start; its log:\n{}",
            tail(&redis.log())
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts redis-server on `self.port`; true once it answers PING, false
    /// if it exited (e.g. the port was taken).
    pub fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            if redis_ping(self.port) {
                return true;
            }
            std::thread::sleep(POLL);
        }
        panic!(
            "redis-server on port {} did not answer PING within {TIMEOUT:?}; log:\n{}",
            self.port,
            tail(&self.log())
        );
    }

    /// Kills redis-server (an outage: the instances see their connections
    /// drop) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server runs").id()
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}; log:\n{}",
            self.port,
            tail(&self.log())
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A RESP reply, as far as the tests need to read one.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

pub fn read_resp(r: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("a reply from redis-server");
    let body = line.trim_end_matches("\r\n");
    let (kind, rest) = body.split_at(1);
    match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().expect("an integer reply")),
        "$" if rest == "-1" => Resp::Bulk(None),
        "$" => {
            let len: usize = rest.parse().expect("a bulk length");
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).expect("a bulk reply");
            buf.truncate(len);
            Resp::Bulk(Some(buf))
        }
        "*" => {
            let n: i64 = rest.parse().expect("an array length");
            Resp::Array((0..n.max(0)).map(|_| read_resp(r)).collect())
        }
        _ => panic!("not RESP: {line:?}"),
    }
}

/// One command to the redis-server on `port`, raw RESP (as anyone who can
/// reach Redis could send it); its reply.
pub fn redis_cmd(port: u16, args: &[&[u8]]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).expect("write to redis-server");
    read_resp(&mut std::io::BufReader::new(s))
}

/// Many commands to the redis-server on `port`, written at once on one
/// connection (state written straight into Redis, as anyone who can reach
/// it could); their replies, in order.
pub fn redis_pipe(port: u16, cmds: &[Vec<Vec<u8>>]) -> Vec<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
    let mut req = Vec::new();
    for args in cmds {
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
    }
    let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
    // Written from another thread: replies to a long pipeline must be read
    // while it is written, or both sides' buffers fill.
    let writer = std::thread::spawn(move || s.write_all(&req).expect("write to redis-server"));
    let replies = cmds.iter().map(|_| read_resp(&mut r)).collect();
    writer.join().expect("the writer");
    replies
}

/// Who Redis says holds `name` (the value of its key), if anyone.
pub fn name_owner(port: u16, name: &str) -> Option<String> {
    match redis_cmd(port, &[b"GET", format!("chatd:name:{name}").as_bytes()]) {
        Resp::Bulk(v) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
        other => panic!("GET chatd:name:{name}: {other:?}"),
    }
}

/// Sends a signal to a process with kill(1) (SIGSTOP/SIGCONT: a freeze).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A HAProxy from `scripts/haproxy.cfg` in front of `nodes`, on free
/// loopback ports, killed on drop.
pub struct Haproxy {
    pub child: Child,
    pub line: SocketAddr,
    pub http: SocketAddr,
    pub dir: TempDir,
}

impl Haproxy {
    /// Writes the config, checks it with `haproxy -c`, starts HAProxy and
    /// waits until it has checked every instance healthy (over HTTP).
    pub fn start(nodes: &[&Server]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let servers: Vec<(SocketAddr, SocketAddr)> = nodes
            .iter()
            .map(|s| (s.addr, s.http_addr.expect("instance without a web port")))
            .collect();
        let cfg = dir.path().join("haproxy.cfg");
        let sock = dir.path().join("haproxy.sock");
        std::fs::write(&cfg, haproxy_cfg(&servers, &sock)).expect("write haproxy.cfg");
        let (line, http) = (free_port(), free_port());
        let haproxy = || {
            let mut cmd = Command::new("haproxy");
            cmd.env("CHATD_LB_BIND", "127.0.0.1")
                .env("CHATD_LB_PORT", line.to_string())
                .env("CHATD_LB_HTTP_PORT", http.to_string());
            cmd
        };
        let check = haproxy()
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("run haproxy -c (is it installed? apt-get install haproxy)");
        assert!(
            check.status.success(),
            "haproxy -c refuses the config:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = haproxy()
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut hp = Haproxy {
            child,
            line: SocketAddr::from(([127, 0, 0, 1], line)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            dir,
        };
        hp.wait_healthy(nodes.len());
        hp
    }

    /// Until every server of both backends is UP with a layer-7 (HTTP)
    /// check passed: proof the checks go to /healthz, not the line port.
    pub fn wait_healthy(&mut self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "haproxy exited ({status}); log:\n{}",
                    tail(&self.dir.path().join("haproxy.log"))
                );
            }
            last = self.servers();
            let ok = last
                .iter()
                .filter(|s| s.status == "UP" && s.check == "L7OK")
                .count();
            if last.len() == 2 * n && ok == 2 * n {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("haproxy did not see all {n} instances healthy within {TIMEOUT:?}: {last:?}");
    }

    /// HAProxy's servers, from `show stat` on its stats socket.
    pub fn servers(&self) -> Vec<Stat> {
        let Ok(mut s) = UnixStream::connect(self.dir.path().join("haproxy.sock")) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(TIMEOUT));
        let mut csv = String::new();
        if s.write_all(b"show stat\n").is_err() || s.read_to_string(&mut csv).is_err() {
            return Vec::new();
        }
        parse_show_stat(&csv)
    }

    /// Current sessions per instance on the line backend, in server order.
    pub fn line_sessions(&self) -> Vec<(String, u32)> {
        self.servers()
            .into_iter()
            .filter(|s| s.backend == "chatd_line")
            .map(|s| (s.server, s.sessions))
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Stat {
    pub backend: String,
    pub server: String,
    pub sessions: u32,
    pub status: String,
    pub check: String,
}

/// `show stat` CSV -> the servers of the chatd backends. Columns found by
/// name from the header, so HAProxy versions with more columns parse too.
pub fn parse_show_stat(csv: &str) -> Vec<Stat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(scur), Some(status), Some(check)) = (
        col("pxname"),
        col("svname"),
        col("scur"),
        col("status"),
        col("check_status"),
    ) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() == cols.len())
        .filter(|f| f[px].starts_with("chatd_") && f[sv] != "BACKEND" && f[sv] != "FRONTEND")
        .map(|f| Stat {
            backend: f[px].to_string(),
            server: f[sv].to_string(),
            sessions: f[scur].parse().unwrap_or(0),
            status: f[status].to_string(),
            check: f[check].to_string(),
        })
        .collect()
}

/// scripts/haproxy.cfg with each backend's server block replaced by
/// `servers` (line address, web address) — what cluster.sh does — and a
/// stats socket. The public side stays `${CHATD_LB_...}`, set in
/// HAProxy's environment: the by-hand way of using the file.
pub fn haproxy_cfg(servers: &[(SocketAddr, SocketAddr)], sock: &Path) -> String {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/haproxy.cfg"))
            .expect("read scripts/haproxy.cfg");
    let mut out = String::new();
    let (mut backend, mut skip, mut blocks) = (String::new(), false, 0);
    for line in template.lines() {
        if let Some(b) = line.strip_prefix("backend ") {
            backend = b.trim().to_string();
        }
        match line.trim() {
            "# servers" => {
                out.push_str(line);
                out.push('\n');
                for (i, (addr, http)) in servers.iter().enumerate() {
                    let server = match backend.as_str() {
                        "chatd_line" => {
                            format!("server node{} {addr} check port {}", i + 1, http.port())
                        }
                        "chatd_web" => format!("server node{} {http} check", i + 1),
                        other => panic!("'# servers' in unknown backend {other:?}"),
                    };
                    out.push_str(&format!("    {server}\n"));
                }
                blocks += 1;
                skip = true;
                continue;
            }
            "# end servers" => skip = false,
            _ => {}
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        blocks, 2,
        "scripts/haproxy.cfg: want a '# servers' block in each backend"
    );
    out.push_str(&format!(
        "\nglobal\n    stats socket \"{}\" mode 600 level user\n",
        sock.display()
    ));
    out
}

// --- plumbing: a cluster of chatd instances ----------------------------------

/// Redis plus `n` chatd instances linked through it.
pub struct Cluster {
    // Instances before Redis: dropped (killed) first, so they do not log a
    // lost link at the end of every test.
    pub nodes: Vec<Server>,
    pub redis: Redis,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// With more flags for every instance (FAST: the cluster's timers).
    pub fn start_with(n: usize, flags: &[&str]) -> Cluster {
        let redis = Redis::start();
        let url = redis.url();
        let nodes: Vec<Server> = (1..=n)
            .map(|i| {
                let id = format!("n{i}");
                let mut args = vec!["--redis", &url, "--node-id", &id];
                args.extend_from_slice(flags);
                Server::start(&args)
            })
            .collect();
        wait_linked(&nodes);
        Cluster { nodes, redis }
    }

    pub fn client(&self, node: usize) -> Client {
        self.nodes[node].client()
    }

    /// A client on `node` that has taken `name`.
    pub fn named(&self, node: usize, name: &str) -> Client {
        named(&self.nodes[node], name)
    }
}

/// Waits until every instance sees a user on every other one: one probe
/// client per instance, each polling /who until its room shows all the
/// probes. chatd says `ready` before its link to Redis is up, and a user who
/// connects before that is alone (and named by that instance alone); tests
/// connect their own clients only after this. The probes then leave; the
/// tests' clients may see their `left` notices, and skip them.
pub fn wait_linked(nodes: &[Server]) {
    // A lone instance's probe sees itself at once: ask each for its link too.
    for node in nodes {
        wait_metric(node, "link_up", RELINK, |v| v == 1.0);
    }
    let mut probes: Vec<Client> = nodes.iter().map(|s| s.client()).collect();
    let deadline = Instant::now() + RELINK;
    for probe in &mut probes {
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen = who(probe);
            if seen.len() >= nodes.len() {
                break;
            }
            std::thread::sleep(POLL);
        }
        assert!(
            seen.len() >= nodes.len(),
            "cluster not linked after {RELINK:?}: {}'s /who shows {seen:?}, want {} users (one per instance)",
            probe.name,
            nodes.len()
        );
    }
}

/// A client on `server` that has taken `name`.
pub fn named(server: &Server, name: &str) -> Client {
    let mut c = server.client();
    c.send(&format!("/nick {name}"));
    let got = c.expect("the /nick answer", |l| {
        l.starts_with("*** you are now ") || l.starts_with("*** error")
    });
    assert_eq!(
        got,
        format!("*** you are now {name}"),
        "{}: /nick {name}",
        c.name
    );
    c.name = name.to_string();
    c
}

/// Reads one line within `deadline`, however long that is (the client's
/// own reads give up after TIMEOUT). None at the deadline; panics on EOF.
pub fn read_line_until(c: &mut Client, deadline: Instant) -> Option<String> {
    let mut buf = Vec::new();
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        // The reader is a dup of the stream: one socket, one SO_RCVTIMEO.
        c.stream
            .set_read_timeout(Some(left.min(TIMEOUT)))
            .expect("set_read_timeout");
        // On a timeout, read_until keeps what it read in `buf`: a line
        // split across the deadline of one attempt is finished by the next.
        match c.reader.read_until(b'\n', &mut buf) {
            Ok(0) => panic!("{}: connection closed; partial line {buf:?}", c.name),
            Ok(_) if buf.ends_with(b"\n") => break Some(buf),
            Ok(_) => panic!("{}: connection closed mid-line {buf:?}", c.name),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{}: read error {e}", c.name),
        }
    };
    c.stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    let mut buf = got?;
    assert!(buf.ends_with(b"\r\n"), "line without CRLF: {buf:?}");
    buf.truncate(buf.len() - 2);
    Some(String::from_utf8(buf).expect("server sent invalid UTF-8"))
}

/// Reads until a line satisfies `pred`, for up to `bound`. Returns the lines
/// read before it (the caller may check what must not be among them).
pub fn expect_within(
    c: &mut Client,
    bound: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    read_until(c, bound, what, pred).1
}

/// Like `expect_within`; returns the line found too.
pub fn read_until(
    c: &mut Client,
    bound: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut before = Vec::new();
    while let Some(line) = read_line_until(c, deadline) {
        if pred(&line) {
            return (line, before);
        }
        before.push(line);
    }
    panic!(
        "{}: expected {what} within {bound:?}; got {before:?}",
        c.name
    );
}

/// Sends /who; returns the names in the client's room (without the `@`
/// of room operators), skipping what else arrives first.
pub fn who(c: &mut Client) -> Vec<String> {
    c.send("/who");
    let line = c.expect("a /who answer", |l| {
        l.starts_with("*** #") && l.contains("): ")
    });
    let names = &line[line.find("): ").map_or(line.len(), |i| i + 3)..];
    names
        .split(", ")
        .map(|n| n.trim_start_matches('@').to_string())
        .collect()
}

/// Polls /who until `pred` holds for the names, for up to `bound`.
pub fn wait_who(c: &mut Client, bound: Duration, what: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + bound;
    let mut names = Vec::new();
    while Instant::now() < deadline {
        names = who(c);
        if pred(&names) {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!(
        "{}: /who never showed {what} within {bound:?}; last {names:?}",
        c.name
    );
}

pub fn has_all(names: &[String], want: &[&str]) -> bool {
    want.iter().all(|w| names.iter().any(|n| n == w))
}

pub fn lines(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The chat lines (not `*** ` notices) among `lines`.
pub fn said(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| !l.starts_with("*** ")).collect()
}

/// Sends /rooms and returns the answer.
pub fn rooms(c: &mut Client) -> String {
    c.send("/rooms");
    c.expect("a /rooms answer", |l| l.starts_with("*** rooms ("))
}

pub fn wait_rooms(c: &mut Client, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = String::new();
    while Instant::now() < deadline {
        got = rooms(c);
        if got == want {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("{}: /rooms never showed {want:?}; last {got:?}", c.name);
}

/// The next chat line, skipping `*** ` notices (joins and leaves of other
/// tests' probes among them).
pub fn next_said(c: &mut Client) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut skipped = Vec::new();
    while let Some(line) = read_line_until(c, deadline) {
        if !line.starts_with("*** ") {
            return line;
        }
        skipped.push(line);
    }
    panic!(
        "{}: no chat line within {TIMEOUT:?}; notices {skipped:?}",
        c.name
    );
}

/// Retries `/nick name` until it is granted: a name another instance just
/// gave up may take a moment to be free everywhere. Any answer but "taken"
/// fails the test.
pub fn nick_eventually(c: &mut Client, name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    let taken = format!("*** error: the name {name} is taken");
    while Instant::now() < deadline {
        c.send(&format!("/nick {name}"));
        let got = c.expect("the /nick answer", |l| {
            l.starts_with("*** you are now ") || l.starts_with("*** error")
        });
        if got == format!("*** you are now {name}") {
            c.name = name.to_string();
            return;
        }
        assert_eq!(got, taken, "{}: /nick {name}", c.name);
        std::thread::sleep(POLL);
    }
    panic!("{}: {name} still taken after {TIMEOUT:?}", c.name);
}

/// Fast cluster timers for the fault tests (docs/cluster.md, "Timers"): a
/// 400 ms heartbeat interval, so heartbeats live 0.8 s and names 2 s, and a
/// 1 s reply deadline. The same story as the defaults, about 7 times faster.
pub const FAST: &[&str] = &["--cluster-tick-ms", "400", "--cluster-timeout", "1"];
/// How long after both links are back names and presence must agree again
/// (docs/cluster.md: within 3 ticks of the last link coming up; 1.2 s with
/// FAST), plus room for a loaded machine.
pub const HEAL: Duration = Duration::from_secs(10);
pub const NAME_COLLISION: &str =
    "was also taken on another server while the cluster was split; you are now ";

/// Asks for `name` on `c` and asserts it is refused as taken.
pub fn refused(c: &mut Client, name: &str, when: &str) {
    c.send(&format!("/nick {name}"));
    let got = c.expect("the /nick answer", |l| {
        l.starts_with("*** you are now ") || l.starts_with("*** error")
    });
    assert_eq!(
        got,
        format!("*** error: the name {name} is taken"),
        "{}: /nick {name} {when}",
        c.name
    );
}

/// Polls Redis until `name`'s key names instance `node` as its holder.
pub fn wait_owner(port: u16, name: &str, node: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut owner = None;
    while Instant::now() < deadline {
        owner = name_owner(port, name);
        if owner
            .as_deref()
            .is_some_and(|o| o.contains(&format!("{node}~")))
        {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("Redis never showed {node}'s claim on {name} within {bound:?}; last {owner:?}");
}

/// Reads `c` for `span`, failing on any line `bad` matches: for what must
/// not happen (a leave, a second owner) across a stretch of heartbeats.
pub fn quiet_for(c: &mut Client, span: Duration, what: &str, bad: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + span;
    while let Some(line) = read_line_until(c, deadline) {
        assert!(!bad(&line), "{}: {what}: {line:?}", c.name);
    }
}

/// One `chatd_cluster_*` figure from an instance's /metrics.
pub fn metric(server: &Server, name: &str) -> f64 {
    let addr = server.http_addr.expect("a web port");
    let page = http_get(addr, "/metrics");
    let want = format!("chatd_cluster_{name}{{");
    page.lines()
        .find(|l| l.starts_with(&want))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {want} in /metrics:\n{page}"))
}

/// Polls a metric until `pred` holds, for up to `bound`.
pub fn wait_metric(
    server: &Server,
    name: &str,
    bound: Duration,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + bound;
    let mut v = metric(server, name);
    while !pred(v) {
        assert!(
            Instant::now() < deadline,
            "chatd_cluster_{name} never as wanted within {bound:?}; last {v}"
        );
        std::thread::sleep(POLL);
        v = metric(server, name);
    }
    v
}

/// chatd with `args`, its log (stderr) kept in `log`.
pub fn start_logged(log: &Path, args: &[&str]) -> Server {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "exec \"$0\" \"$@\" 2>>\"$CHATD_LOG\"",
        env!("CARGO_BIN_EXE_chatd"),
    ])
    .env("CHATD_LOG", log);
    Server::start_with(cmd, args)
}

/// Polls a log file until a line contains every one of `want`.
pub fn wait_log(log: &Path, want: &[&str], bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| want.iter().all(|w| l.contains(w))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {want:?} within {bound:?}; log:\n{text}"
        );
        std::thread::sleep(POLL);
    }
}

/// The sample ACL from docs/cluster.md, as arguments for `ACL SETUSER`,
/// with `password` for its placeholder.
pub fn sample_acl(password: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cluster.md"))
        .expect("read docs/cluster.md");
    let line = doc
        .lines()
        .find(|l| l.trim_start().starts_with("ACL SETUSER chatd "))
        .expect("docs/cluster.md: a sample `ACL SETUSER chatd ...` line");
    line.split_whitespace()
        .skip(1)
        .map(|w| w.replace("CHANGE-ME", password))
        .collect()
}

pub fn acl_setuser(port: u16, args: &[String]) {
    let mut cmd: Vec<&[u8]> = vec![b"ACL"];
    cmd.extend(args.iter().map(|a| a.as_bytes()));
    assert_eq!(
        redis_cmd(port, &cmd),
        Resp::Simple("OK".into()),
        "ACL {args:?}"
    );
}

/// A WebSocket client (as the web page is), with a read timeout.
pub struct Ws {
    pub ws: tungstenite::WebSocket<TcpStream>,
    pub name: String,
}

impl Ws {
    /// Connects to `/ws` and reads the welcome line.
    pub fn connect(addr: SocketAddr) -> Ws {
        let stream = TcpStream::connect(addr).expect("connect to the web port");
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("set_read_timeout");
        let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}: {e}"));
        let mut ws = Ws {
            ws,
            name: String::from("(web)"),
        };
        let welcome = ws.expect("the welcome line", |l| l.starts_with("*** welcome"));
        ws.name = super::parse_welcome_name(&welcome).expect("a name in the welcome line");
        ws
    }

    pub fn send(&mut self, line: &str) {
        self.ws
            .send(tungstenite::Message::text(line))
            .expect("WebSocket send");
    }

    /// Reads messages (one line each) until one satisfies `pred`.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) if pred(t.as_str()) => return t.to_string(),
                Ok(tungstenite::Message::Text(t)) => seen.push(t.to_string()),
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: expected {what}; WebSocket error {e}; saw {seen:?}",
                    self.name
                ),
            }
        }
        panic!(
            "{}: expected {what} within {TIMEOUT:?}; saw {seen:?}",
            self.name
        );
    }
}

/// A plain HTTP/1.0 GET; the whole answer.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: chatd\r\n\r\n").expect("send request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    answer
}

/// Runs scripts/cluster.sh with its own run dir and ports (never the
/// defaults, which a real cluster on this machine may hold), and the chatd
/// this test run built.
pub struct ClusterSh {
    pub run: TempDir,
    pub env: Vec<(&'static str, String)>,
    pub port: u16,
}

impl ClusterSh {
    pub fn new(nodes: u16) -> ClusterSh {
        let run = TempDir::new("sh");
        let port = free_port();
        let env = vec![
            ("CHATD_CLUSTER_DIR", run.path().display().to_string()),
            ("CHATD_BIN", env!("CARGO_BIN_EXE_chatd").to_string()),
            ("PORT", port.to_string()),
            ("HTTP_PORT", free_port().to_string()),
            ("BASE_PORT", free_port_run(nodes).to_string()),
            ("BASE_HTTP_PORT", free_port_run(nodes).to_string()),
            ("REDIS_PORT", free_port().to_string()),
        ];
        ClusterSh { run, env, port }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"));
        for var in [
            "BIND",
            "REDIS_PASSWORD",
            "CHATD_ARGS",
            "REDIS_SERVER",
            "HAPROXY",
            "XDG_RUNTIME_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/cluster.sh")
    }

    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.run.path())
            .expect("run dir")
            .filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "pid").then_some(path)
            })
            .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
            .collect()
    }
}

impl Drop for ClusterSh {
    /// Whatever happened, nothing it started outlives the test.
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Alive and not a zombie (a container's init may not reap at once).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        !matches!(state, Some('Z' | 'X'))
    })
}

/// The lines of the next history block `c` gets (header to end marker).
pub fn history_block(c: &mut Client) -> Vec<String> {
    let header = c.expect("a history block", |l| l.starts_with("*** history of "));
    let mut got = vec![header];
    for _ in 0..1000 {
        let line = c.read_line().expect("the rest of the history block");
        let end = line == "*** end of history";
        got.push(line);
        if end {
            return got;
        }
    }
    panic!("no end of history: {got:?}");
}
