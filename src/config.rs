//! Every flag, bound and default in one place.

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Bytes read from one socket per `read` call, into a buffer shared by all
/// connections (so idle connections cost no read buffer).
pub const READ_CHUNK: usize = 64 * 1024;
/// Fairness: the most a single connection may be read per turn of the loop.
/// A connection that still has input after this waits for the next turn,
/// after every other ready connection has had its go.
pub const READ_BUDGET_BYTES: usize = 64 * 1024;
/// How long a line client's first bytes are waited for before it is
/// welcomed: a browser, TLS or IRC client that came to the line port
/// speaks at once (within a round trip of its connect), and must be
/// answered in its own protocol, not with a welcome (conn/line.rs).
/// People and `chat` wait for the welcome, so this is their delay: short.
pub const QUIET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Fairness: the most lines taken from one connection per turn of the loop.
pub const LINE_BUDGET: usize = 64;
/// Slices handed to one `writev`.
pub const MAX_IOVECS: usize = 64;
/// What one output-queue entry costs beyond its bytes, charged against
/// --sendq: its queue slot, the shared line's header and the allocator's
/// rounding. Measured, and proved against the layout, in conn/mod.rs.
pub const ENTRY_OVERHEAD: usize = 160;
/// How long a closing connection (quit, half-close, shutdown) may take to
/// flush what is queued for it.
pub const DRAIN_SECS: u64 = 2;

// Every duration and size flag has a maximum, checked by clap at start-up
// (a clear error, exit status 2). Each is far beyond any sensible use and
// far from where arithmetic on it could overflow (an `Instant` plus a
// duration, a sum of sizes in usize).

/// Linux refuses a TCP_KEEPIDLE above this (MAX_TCP_KEEPIDLE).
pub const MAX_KEEPALIVE: u64 = 32767;
/// The longest --cluster-timeout: a Redis that has not answered for a
/// minute is gone, whatever the network.
pub const MAX_CLUSTER_TIMEOUT: u64 = 60;
/// A year.
pub const MAX_IDLE_TIMEOUT: u64 = 365 * 24 * 3600;
/// A day, for --http-timeout: a browser sends its request head at once.
pub const MAX_HTTP_TIMEOUT: u64 = 24 * 3600;
/// 16 MiB, for --max-line: a line is a chat message, and one line may be
/// queued for every client at once.
pub const MAX_MAX_LINE: u32 = 16 << 20;
/// 1 GiB, for --sendq and --cluster-queue.
pub const MAX_QUEUE: u32 = 1 << 30;
/// The highest --max-rooms-per-user: each room a user is in costs it a
/// few dozen bytes and a line in its `/whois`.
pub const MAX_ROOMS_PER_USER: u32 = 10_000;

/// --pass-attempts' default: wrong passwords (`/pass`, `/oper`) per address
/// per minute before that address's attempts are refused unchecked.
pub const DEFAULT_PASS_ATTEMPTS: u32 = 5;
/// Where what outlives a run is kept unless --state-dir says otherwise:
/// in the server's working directory.
pub const DEFAULT_STATE_DIR: &str = "chatd-state";
/// The bans file's name in the state directory (unless --bans-file).
pub const BANS_FILE: &str = "bans.txt";
/// Where bans were kept before there was a state directory: in the
/// working directory.
pub const OLD_BANS_FILE: &str = "chatd-bans.txt";

/// Makes the state directory (and its parents) if it is not there yet,
/// readable by its owner only: it holds a private key.
pub fn make_state_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
/// The longest password read from a file (a secret, not a document).
pub const MAX_SECRET: usize = 1024;

/// --max-line's default, also the hub's when it is used without a config.
pub const DEFAULT_MAX_LINE: u32 = 8192;

/// --history's ceiling: a reply of that many lines must still be cheap to
/// build and fit a client's queue.
pub const MAX_HISTORY: u32 = 10_000;
/// --history-bytes' ceiling (4 GiB).
pub const MAX_HISTORY_BYTES: u64 = 4 << 30;
/// --history-ttl's ceiling: a week.
pub const MAX_HISTORY_TTL: u64 = 7 * 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnSlow {
    /// Cut the slow client off; its room sees "(too slow)".
    Disconnect,
    /// Skip whole lines for it and tell it how many it missed.
    Drop,
}

#[derive(Parser, Clone, Debug)]
#[command(
    name = "chatd",
    version,
    about = "A line chat server: connect with telnet or nc, every line reaches every other client.",
    after_help = "Examples:\n  chatd --port 3000                 then: telnet localhost 3000, or browse http://localhost:8080\n  chatd --host 0.0.0.0 --port 3000  reachable from other machines\n  chatd --rate 20 --burst 40 --on-slow drop"
)]
pub struct Config {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port for line clients (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,

    /// Port for the web page and WebSocket (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,

    /// Do not serve the web page and WebSocket.
    #[arg(long)]
    pub no_http: bool,

    /// Seconds a web client may take to send its request head (at most a day).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_HTTP_TIMEOUT))]
    pub http_timeout: u64,

    /// Longest line accepted, in bytes (at most 16 MiB); longer lines are refused and discarded.
    #[arg(long, default_value_t = DEFAULT_MAX_LINE, value_parser = clap::value_parser!(u32).range(1..=MAX_MAX_LINE as i64))]
    pub max_line: u32,

    /// Most simultaneous clients; one more is told the server is full.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: u32,

    /// Most output queued for one client, in bytes (at most 1 GiB), each
    /// queued line counted with its bookkeeping (see the README's memory bound).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=MAX_QUEUE as i64))]
    pub sendq: u32,

    /// What to do with a client whose queue would pass --sendq.
    #[arg(long, value_enum, default_value_t = OnSlow::Disconnect)]
    pub on_slow: OnSlow,

    /// Lines per second each client may send (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// Lines a client may send at once before --rate applies (default: --rate).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,

    /// Rooms with more members than this do not announce joins, leaves and nick changes.
    #[arg(long, default_value_t = 200)]
    pub announce_max: usize,

    /// The most rooms one user may be in at once (as IRC's CHANLIMIT).
    #[arg(long, value_name = "ROOMS", default_value_t = crate::hub::DEFAULT_MAX_ROOMS as u32, value_parser = clap::value_parser!(u32).range(1..=MAX_ROOMS_PER_USER as i64))]
    pub max_rooms_per_user: u32,

    /// Lines of history kept per room (messages and /me, not private
    /// messages or notices); 0 turns history off.
    #[arg(long, value_name = "LINES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=MAX_HISTORY as i64))]
    pub history: u32,

    /// Most bytes of history kept over all rooms, each line charged its
    /// length plus 176 bytes and each room's record its name twice plus
    /// 457; over it, the oldest lines of any room go first.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(0..=MAX_HISTORY_BYTES))]
    pub history_bytes: u64,

    /// Lines of history a client is shown when it enters a room (and the
    /// lobby on connect); 0 shows none.
    #[arg(long, value_name = "LINES", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=MAX_HISTORY as i64))]
    pub history_on_join: u32,

    /// Seconds an empty room keeps its history (at most 604800, a week).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=MAX_HISTORY_TTL))]
    pub history_ttl: u64,

    /// Cluster mode: share the chat with every instance using this Redis,
    /// redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (password also from REDIS_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// This instance's name in the cluster, logs and metrics
    /// [default: node-<random>, e.g. node-3fa91c].
    // The random default is drawn at every parse; hidden so that --help reads
    // the same every time.
    #[arg(long, value_name = "ID", default_value_t = random_node_id(), hide_default_value = true)]
    pub node_id: String,

    /// Cluster mode: the most bytes queued toward Redis (at most 1 GiB); what would pass it is dropped and counted.
    #[arg(long, default_value_t = 8 << 20, value_parser = clap::value_parser!(u32).range(4096..=MAX_QUEUE as i64))]
    pub cluster_queue: u32,

    /// Cluster mode: the most users of other instances this one keeps track
    /// of (for /who, /msg and name checks); past it, further ones are left
    /// out, counted in /metrics and logged.
    #[arg(long, value_name = "USERS", default_value_t = crate::hub::MAX_REMOTE as u32,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_remote_users: u32,

    /// Cluster mode: seconds Redis may take to answer the oldest command still
    /// waiting for a reply; past it the link counts as down and reconnects.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=MAX_CLUSTER_TIMEOUT))]
    pub cluster_timeout: u64,

    /// Cluster mode, for tests: the heartbeat interval in milliseconds; every
    /// other cluster timer is a multiple of it (docs/cluster.md).
    #[arg(long, hide = true, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub cluster_tick_ms: u64,

    /// Seconds a client connection may be silent before TCP keepalive probes
    /// start; a peer that vanished without closing is then dropped within
    /// about this long plus 30 s at most. 0 turns keepalive off.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=MAX_KEEPALIVE))]
    pub keepalive: u64,

    /// Close a client that has sent nothing for this many seconds (WebSocket
    /// clients are pinged at half of it; answering counts). Default: off.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_IDLE_TIMEOUT))]
    pub idle_timeout: Option<u64>,

    /// Port for line clients over TLS, with --tls-cert or --tls-self-signed
    /// (0 picks a free one).
    #[arg(long, default_value_t = 3443)]
    pub tls_port: u16,

    /// Port for the web page and WebSocket over TLS (https://, wss://),
    /// with --tls-cert or --tls-self-signed, unless --no-http.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,

    /// TLS certificate chain (PEM). With --tls-key, TLS is offered on
    /// --tls-port and --https-port beside the plain ports (line clients:
    /// `openssl s_client`, `ncat --ssl`, `chat --tls`; browsers: https://).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS on both ports with a self-signed certificate for --host (localhost
    /// for loopback), made at the first start and kept in --state-dir; its
    /// path and SHA-256 fingerprint are printed. Clients pin it with
    /// `chat --tls --tls-ca PATH` (or skip checking with --insecure).
    #[arg(long)]
    pub tls_self_signed: bool,

    /// Expect a PROXY protocol header (v1 or v2) from --trusted-proxy
    /// addresses, on both ports; the address in it is the client's.
    #[arg(long, requires = "trusted_proxy")]
    pub proxy_protocol: bool,

    /// Addresses (CIDR or plain IP) that must send a PROXY header; from
    /// anyone else a header is refused and the connection closed.
    #[arg(long, value_name = "CIDR", num_args = 1.., value_parser = parse_net)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Most simultaneous connections from one address (IPv6: one /64); 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_per_ip: u32,

    /// Most new chat sessions (line clients, WebSocket upgrades; not the
    /// page's files) from one address per 10 minutes (a bucket that
    /// refills evenly); 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_connects: u32,

    /// Addresses (CIDR or plain IP) exempt from --max-per-ip and
    /// --max-connects. Loopback is exempt already (see --limit-loopback).
    #[arg(long, value_name = "CIDR", num_args = 1.., value_parser = parse_net)]
    pub limit_exempt: Vec<ipnet::IpNet>,

    /// Count loopback (127.0.0.0/8, ::1) against --max-per-ip and
    /// --max-connects too. By default it is exempt, as in Ergo: a load test
    /// from this machine gets every client in, and behind a tunnel (ngrok
    /// without --proxy-protocol) every user is 127.0.0.1 and the limits
    /// could not tell them apart anyway.
    #[arg(long)]
    pub limit_loopback: bool,

    /// Clients must send `/pass SECRET` before anything else. Visible to
    /// `ps`: prefer --password-file or CHATD_PASSWORD.
    #[arg(long, value_name = "SECRET", conflicts_with = "password_file")]
    pub password: Option<String>,

    /// Read the server password from this file (its first line).
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<String>,

    /// The operators' password, for `/oper` (then /kick, /ban, /mute).
    /// Visible to `ps`: prefer --oper-password-file or CHATD_OPER_PASSWORD.
    #[arg(long, value_name = "SECRET", conflicts_with = "oper_password_file")]
    pub oper_password: Option<String>,

    /// Read the operators' password from this file (its first line).
    #[arg(long, value_name = "PATH")]
    pub oper_password_file: Option<String>,

    /// Wrong passwords (/pass or /oper) one address may give per minute;
    /// past it, its attempts are refused unchecked until the minute ends.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PASS_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pass_attempts: u32,

    /// Where what outlives a run is kept: the bans (unless --bans-file)
    /// and, with --tls-self-signed, the certificate and key, made once and
    /// reused. Made when first needed (mode 0700); named in the start-up log.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: std::path::PathBuf,

    /// Where bans are kept across restarts (read at start, rewritten
    /// atomically when they change) [default: bans.txt in --state-dir].
    #[arg(long, value_name = "PATH")]
    pub bans_file: Option<std::path::PathBuf>,

    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log lines waiting to be written to stderr (at most 1048576); past
    /// it, lines are dropped and counted, so a slow or stuck log reader
    /// never holds up the chat.
    #[arg(long, value_name = "LINES", default_value_t = crate::logging::QUEUE_LINES as u32,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub log_queue: u32,
}

/// A CIDR prefix, or a single address (its /32 or /128).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR prefix (10.0.0.0/8, ::1)"))
}

/// A secret from a flag, a file (its first line, trimmed) or the
/// environment, in that order. Surrounding whitespace never counts: a
/// file's newline is not part of the password, nor is /pass's spacing.
fn secret(
    flag: &Option<String>,
    file: &Option<String>,
    env: &str,
    name: &str,
) -> Result<Option<String>, String> {
    let value = if let Some(v) = flag {
        v.clone()
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{name}-file {path}: {e}"))?;
        text.lines().next().unwrap_or_default().to_string()
    } else {
        match std::env::var(env) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{name}: the password is empty"));
    }
    if value.len() > MAX_SECRET || value.chars().any(char::is_control) {
        return Err(format!(
            "{name}: at most {MAX_SECRET} bytes, no control characters"
        ));
    }
    Ok(Some(value.to_string()))
}

fn random_node_id() -> String {
    format!("node-{:06x}", fastrand::u32(..0x100_0000))
}

impl Default for Config {
    fn default() -> Config {
        Config::parse_from(["chatd"])
    }
}

impl Config {
    /// The file bans are read from at start: the bans file; or, with
    /// neither --bans-file nor a bans file in the state directory yet, the
    /// one an older chatd kept in the working directory, so an upgrade
    /// loses no ban (the next change saves them in the new place).
    pub fn bans_to_read(&self, exists: impl Fn(&std::path::Path) -> bool) -> std::path::PathBuf {
        let path = self.bans_path();
        let old = std::path::Path::new(OLD_BANS_FILE);
        if self.bans_file.is_none() && !exists(&path) && exists(old) {
            old.to_path_buf()
        } else {
            path
        }
    }

    /// The bans file: --bans-file, or bans.txt in --state-dir.
    pub fn bans_path(&self) -> std::path::PathBuf {
        self.bans_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join(BANS_FILE))
    }

    /// The addresses the per-address limits skip: --limit-exempt, and
    /// loopback unless --limit-loopback.
    pub fn limit_exempt(&self) -> Vec<ipnet::IpNet> {
        let mut nets = self.limit_exempt.clone();
        if !self.limit_loopback {
            // IPv4-mapped loopback too: a dual-stack listener sees 127.0.0.1 so.
            for net in ["127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104"] {
                nets.extend(net.parse::<ipnet::IpNet>().ok());
            }
        }
        nets
    }

    pub fn log_level(&self) -> log::LevelFilter {
        match (self.quiet, self.verbose) {
            (true, _) => log::LevelFilter::Warn,
            (false, 0) => log::LevelFilter::Info,
            (false, 1) => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }

    /// Flags that only make sense together.
    pub fn check(&self) -> Result<(), String> {
        let room = ENTRY_OVERHEAD as u64 + 64;
        if (self.sendq as u64) < self.max_line as u64 + room {
            return Err(format!(
                "--sendq ({}) must be at least --max-line ({}) + {room}, or a relayed line could never be queued",
                self.sendq, self.max_line
            ));
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.node_id.is_empty() || self.node_id.len() > 32 || !self.node_id.chars().all(id_ok) {
            return Err(format!(
                "--node-id {:?}: use 1 to 32 letters, digits, '-', '_' and '.'",
                self.node_id
            ));
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err("--burst needs --rate".into());
        }
        Ok(())
    }

    pub fn history_limits(&self) -> crate::history::Limits {
        crate::history::Limits {
            per_room: self.history as usize,
            bytes: self.history_bytes as usize,
            ttl_ms: self.history_ttl * 1000,
        }
    }

    /// Whether the ports speak TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// The server password: --password, else --password-file, else the
    /// environment variable CHATD_PASSWORD; None if none is set.
    pub fn password(&self) -> Result<Option<String>, String> {
        secret(
            &self.password,
            &self.password_file,
            "CHATD_PASSWORD",
            "--password",
        )
    }

    /// The operators' password: --oper-password, else
    /// --oper-password-file, else CHATD_OPER_PASSWORD.
    pub fn oper_password(&self) -> Result<Option<String>, String> {
        secret(
            &self.oper_password,
            &self.oper_password_file,
            "CHATD_OPER_PASSWORD",
            "--oper-password",
        )
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout.map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_a_flag_or_a_file() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        let c = parse(&["--password", " hunter2 "]).unwrap();
        assert_eq!(c.password().unwrap().as_deref(), Some("hunter2"));
        let dir = std::env::temp_dir().join(format!("chatd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\nsecond line ignored\n").unwrap();
        let path = file.to_str().unwrap();
        let c = parse(&["--oper-password-file", path]).unwrap();
        assert_eq!(c.oper_password().unwrap().as_deref(), Some("from-file"));
        std::fs::write(&file, "\n").unwrap();
        let c = parse(&["--password-file", path]).unwrap();
        assert!(c.password().unwrap_err().contains("empty"));
        let c = parse(&["--password-file", "/nonexistent/chatd-pw"]).unwrap();
        assert!(c.password().is_err());
        assert!(parse(&["--password", "a", "--password-file", path]).is_err());
        assert!(parse(&["--pass-attempts", "0"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_log_queue_is_bounded_and_its_default_is_the_loggers() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        let c = parse(&[]).unwrap();
        assert_eq!(c.log_queue as usize, crate::logging::QUEUE_LINES);
        assert_eq!(parse(&["--log-queue", "16"]).unwrap().log_queue, 16);
        assert!(parse(&["--log-queue", "15"]).is_err());
        assert!(parse(&["--log-queue", "1048577"]).is_err());
    }

    #[test]
    fn rooms_per_user_are_bounded_and_default_to_irc_s_chanlimit() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        assert_eq!(parse(&[]).unwrap().max_rooms_per_user, 20);
        let most = MAX_ROOMS_PER_USER.to_string();
        assert_eq!(
            parse(&["--max-rooms-per-user", &most])
                .unwrap()
                .max_rooms_per_user,
            MAX_ROOMS_PER_USER
        );
        assert!(parse(&["--max-rooms-per-user", "0"]).is_err());
        assert!(parse(&["--max-rooms-per-user", "10001"]).is_err());
    }

    #[test]
    fn the_mirror_is_bounded_by_a_flag() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        assert_eq!(
            parse(&[]).unwrap().max_remote_users as usize,
            crate::hub::MAX_REMOTE
        );
        let c = parse(&["--max-remote-users", "16777216"]).unwrap();
        assert_eq!(c.max_remote_users, 16_777_216);
        assert!(parse(&["--max-remote-users", "0"]).is_err());
        assert!(parse(&["--max-remote-users", "16777217"]).is_err());
    }

    #[test]
    fn cluster_timers_are_bounded() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        let c = parse(&[]).unwrap();
        assert_eq!((c.cluster_timeout, c.cluster_tick_ms), (5, 3000));
        assert!(parse(&["--cluster-timeout", "60"]).is_ok());
        for bad in ["0", "61", "-1", "x"] {
            assert!(parse(&["--cluster-timeout", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--cluster-tick-ms", "49"]).is_err());
    }

    #[test]
    fn addresses_and_prefixes_parse_and_proxy_protocol_needs_trust() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat());
        let c = parse(&[
            "--proxy-protocol",
            "--trusted-proxy",
            "10.0.0.1",
            "2001:db8::/32",
        ])
        .unwrap();
        assert_eq!(
            c.trusted_proxy,
            [
                "10.0.0.1/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ]
        );
        assert!(parse(&["--proxy-protocol"]).is_err());
        assert!(parse(&["--limit-exempt", "not-an-address"]).is_err());
        assert!(parse(&["--tls-cert", "a.pem"]).is_err(), "needs --tls-key");
        let c = parse(&[]).unwrap();
        assert_eq!((c.max_per_ip, c.max_connects), (16, 32));
        assert!(!c.tls());
        assert!(parse(&["--cluster-tick-ms", "60001"]).is_err());
    }

    #[test]
    fn loopback_is_exempt_from_the_limits_unless_counted() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat()).unwrap();
        let within = |nets: &[ipnet::IpNet], ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            nets.iter().any(|n| n.contains(&ip))
        };
        let nets = parse(&["--limit-exempt", "10.0.0.0/8"]).limit_exempt();
        for ip in [
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
        ] {
            assert!(within(&nets, ip), "{ip}");
        }
        assert!(!within(&nets, "192.0.2.1"));
        let nets = parse(&["--limit-loopback"]).limit_exempt();
        assert!(nets.is_empty(), "{nets:?}");
    }

    #[test]
    fn bans_live_in_the_state_dir_and_an_old_file_is_still_read() {
        let parse = |args: &[&str]| Config::try_parse_from([&["chatd"], args].concat()).unwrap();
        let p = std::path::Path::new;
        let c = parse(&["--state-dir", "/srv/chatd"]);
        assert_eq!(c.bans_path(), p("/srv/chatd/bans.txt"));
        assert_eq!(c.bans_to_read(|_| false), p("/srv/chatd/bans.txt"));
        assert_eq!(c.bans_to_read(|f| f == p(OLD_BANS_FILE)), p(OLD_BANS_FILE));
        assert_eq!(c.bans_to_read(|_| true), p("/srv/chatd/bans.txt"));
        let c = parse(&["--bans-file", "b.txt"]);
        assert_eq!(c.bans_to_read(|_| true), p("b.txt"));
        assert_eq!(c.bans_to_read(|f| f == p(OLD_BANS_FILE)), p("b.txt"));
    }
}
