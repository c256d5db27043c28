//! flood: a load generator and delivery checker for line chat servers.
//!
//! N connections, S of them sending M lines of B bytes; every line carries a
//! token `[F:sender,seq,micros]` that flood finds anywhere in what it
//! receives, so it works with chatd (`<guest-3> ...`), `ncat --chat`
//! (`<user5> ...`) and other line relays, over plain TCP, WebSocket
//! (`--ws`) or socket.io (`--socketio`). It checks that every receiver got
//! every other sender's lines in order and once, and measures throughput and
//! latency. One thread, one mio::Poll: it shares the machine with the server
//! it measures, so it must cost far less CPU than that server.

// The --json object is one json! literal; it nests deeper than the default.
#![recursion_limit = "256"]

mod conn;
mod engine;
mod hist;
mod procstat;
mod report;
mod sio;
mod timer;
mod token;
mod verify;
mod ws;

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use conn::Transport;
use engine::{Config, Greeting};
use report::Report;

const EXAMPLES: &str = "\
Examples:
  chatd --port 3000 --limit-exempt 127.0.0.0/8 & chatd=$!   a server to test, its pid
  flood --port 3000                                   100 clients, 10 senders, 1000 lines of 64 B
  flood --port 3000 -n 1000 -s 1 -m 2000 --pid \"$chatd\"
  flood --port 3000 --rate 2000 -m 600 --json         open loop: 2 000 lines/s in total
  flood --port 3000 --idle 10000 --pid \"$chatd\"       RSS per idle connection
  flood --port 3000 -n 20 -s 5 -m 20000 --slow 1      one reader stops reading
  ncat --listen --chat 4000 &
  flood --port 4000 --connect-batch 8 --hello '/nick u{i}'   ncat --chat on port 4000
  flood --ws --port 8080                               chatd's web port (or any WebSocket chat)
  flood --socketio --port 3000                         a socket.io v4 chat (event: chat)

Exit status: 0 when every line arrived in order once; 1 when anything was
missing, out of order, duplicated, cut off or stalled; 2 on a setup error.";

#[derive(Parser)]
#[command(
    name = "flood",
    version,
    about = "Load-test a line chat server and verify every delivery",
    after_help = EXAMPLES
)]
struct Cli {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port (the http port with --ws).
    #[arg(long, short = 'p', default_value_t = 3000)]
    port: u16,
    /// Connections; every one of them receives.
    #[arg(long, short = 'n', default_value_t = 100)]
    clients: usize,
    /// How many of the connections send (the first S).
    #[arg(long, short = 's', default_value_t = 10)]
    senders: usize,
    /// Lines each sender sends.
    #[arg(long, short = 'm', default_value_t = 1000)]
    lines: u32,
    /// Bytes per line, token included, newline excluded.
    #[arg(long, short = 'b', default_value_t = 64)]
    bytes: usize,
    /// Closed loop: lines a sender may have in flight (sent, not yet received
    /// by every other live client). 32 keeps one fan-out sender busy enough
    /// to measure throughput, while 32 lines of up to 255 B stay within the
    /// 8 KiB that ncat --chat relays per read, so it is not made to cut lines.
    #[arg(long, default_value_t = 32)]
    window: u32,
    /// Open loop: lines per second in total over all senders; latency is
    /// then measured from each line's intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds without progress (a connection coming up, a line delivered)
    /// before the run ends; what has not arrived counts as missing.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// A first line every connection sends, `{i}` = its index (for servers
    /// that ask for a name), e.g. '/nick user{i}'.
    #[arg(long)]
    hello: Option<String>,
    /// The server's process id: report its CPU time and RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// More processes (cluster instances, Redis, a balancer) whose CPU
    /// seconds over the measured run alone, connecting excluded, are reported.
    #[arg(long, value_name = "PID,...", value_delimiter = ',')]
    watch: Vec<u32>,
    /// A progress line on stderr about once a second (lines sent,
    /// deliveries, rate) [default: on when stderr is a terminal].
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Idle mode: open K connections, report connect time and server RSS per
    /// connection (with --pid), then time one broadcast to reach all of them.
    #[arg(long, value_name = "K")]
    idle: Option<usize>,
    /// K of the clients (the last K, never senders) stop reading once the
    /// run starts; report the others' throughput and whether the server
    /// closed the slow ones.
    #[arg(long, value_name = "K", default_value_t = 0)]
    slow: usize,
    /// Drive WebSocket clients (GET --ws-path on --port, one line per text frame).
    #[arg(long)]
    ws: bool,
    /// Drive socket.io v4 clients over the websocket transport: a line is
    /// sent as `42["chat","LINE"]`, and every string argument of an event
    /// the server sends is scanned for tokens.
    #[arg(long, conflicts_with = "ws")]
    socketio: bool,
    /// Speak TLS (to chatd's --tls-port or, with --ws, --https-port),
    /// accepting any certificate.
    #[arg(long)]
    tls: bool,
    /// The upgrade path (default /ws, or /socket.io/?EIO=4&transport=websocket
    /// with --socketio).
    #[arg(long)]
    ws_path: Option<String>,
    /// Connection i is on instance i % K (default: 1 + the number of
    /// --also-ports; give it for a balancer that deals connections
    /// round-robin, with --connect-batch 1 so they arrive in order):
    /// latency from senders on another instance is reported on its own.
    #[arg(long, value_name = "K")]
    instances: Option<usize>,
    /// Connections being set up at once (ncat --chat has a listen backlog
    /// of 10: use 8 there).
    #[arg(long, default_value_t = 64)]
    connect_batch: usize,
    /// Whether the server greets a new connection (a connection counts as
    /// up once its first byte arrives); auto decides on the first one.
    #[arg(long, value_enum, default_value = "auto")]
    greeting: Greeting,
    /// With --greeting auto: how long the first connection waits for a byte.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Before the senders start, wait until nothing has arrived for this
    /// long (welcomes, joined notices).
    #[arg(long, default_value_t = 100)]
    quiet_ms: u64,
    /// More ports of the same host (e.g. the other instances of a cluster):
    /// connections are dealt round-robin over --port and these, so senders
    /// and receivers sit on every instance.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',')]
    also_ports: Vec<u16>,
    /// Spread connections over 127.0.0.1..=127.0.0.N (default: as many as
    /// the ephemeral port range requires).
    #[arg(long, value_name = "N", default_value_t = 0)]
    src_addrs: usize,
}

fn config(cli: Cli) -> Result<(Config, bool), String> {
    let addr = (cli.host.as_str(), cli.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}:{}: {e}", cli.host, cli.port))?
        .next()
        .ok_or_else(|| format!("{}: no address", cli.host))?;
    let also = cli
        .also_ports
        .iter()
        .map(|&p| std::net::SocketAddr::new(addr.ip(), p))
        .collect();
    let instances = cli.instances.unwrap_or(1 + cli.also_ports.len());
    if instances == 0 {
        return Err("--instances must be at least 1".into());
    }
    let (clients, senders, lines, window) = match cli.idle {
        Some(k) => (k, 1, 1, 1),
        None => (cli.clients, cli.senders, cli.lines, cli.window),
    };
    if clients == 0 {
        return Err("need at least one client".into());
    }
    if senders > clients {
        return Err(format!("{senders} senders but only {clients} clients"));
    }
    if cli.slow > 0 && senders + cli.slow > clients {
        return Err(format!(
            "--slow {} needs that many non-senders: {clients} clients, {senders} senders",
            cli.slow
        ));
    }
    if let Some(r) = cli.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err("--rate must be a positive number".into());
    }
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    let nofile = engine::raise_nofile();
    if clients as u64 + 16 > nofile {
        return Err(format!(
            "{clients} connections need more descriptors than RLIMIT_NOFILE allows ({nofile})"
        ));
    }
    Ok((
        Config {
            addr,
            also,
            host: cli.host,
            clients,
            senders,
            lines,
            bytes: cli.bytes,
            window,
            rate: cli.rate,
            timeout: Duration::from_secs_f64(cli.timeout),
            hello: cli.hello,
            pid: cli.pid,
            watch: cli.watch,
            slow: cli.slow,
            idle: cli.idle.is_some(),
            ws_path: match (cli.ws, cli.socketio) {
                (_, true) => Some(cli.ws_path.unwrap_or_else(|| sio::PATH.into())),
                (true, false) => Some(cli.ws_path.unwrap_or_else(|| "/ws".into())),
                (false, false) => None,
            },
            transport: match (cli.ws, cli.socketio) {
                (_, true) => Transport::SocketIo,
                (true, false) => Transport::WebSocket,
                (false, false) => Transport::Lines,
            },
            instances,
            connect_batch: cli.connect_batch,
            greeting: cli.greeting,
            settle: Duration::from_millis(cli.settle_ms),
            quiet: Duration::from_millis(cli.quiet_ms),
            src_addrs: cli.src_addrs,
            progress: !cli.no_progress
                && (cli.progress || std::io::IsTerminal::is_terminal(&std::io::stderr())),
        },
        cli.json,
    ))
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--tls") {
        match chatd::tls::client_config(chatd::tls::Trust::Anyone) {
            Ok(cfg) => {
                let _ = conn::TLS.set(cfg);
            }
            Err(e) => {
                eprintln!("flood: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (cfg, json) = match config(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flood: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match engine::run(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flood: {e}");
            return ExitCode::from(2);
        }
    };
    let report = Report {
        cfg: &cfg,
        out: &out,
    };
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
