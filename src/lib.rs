//! chatd: a chat server for telnet, netcat and browsers, on one thread.
//!
//! A line read from a socket travels reactor -> conn (its protocol's state
//! machine) -> line -> hub -> conn queues -> the reactor's flush, and never
//! back (docs/architecture.md draws it for each transport):
//!
//! - [`config`]: every flag, bound and default in one place.
//! - [`reactor`]: the mio loop — poll, accept, read within budgets, settle
//!   (tell the hub who left, flush with writev), timers, sweep. It knows no
//!   protocol beyond choosing the first state machine for a listener.
//! - [`conn`]: one connection — socket, output queue of shared lines,
//!   --sendq policy, rate-limit bucket — and its protocol as a state machine
//!   fed bytes and returning [`conn::Step`]s: [`conn::line`] (telnet, nc),
//!   [`conn::http`] (one request head, then close or upgrade),
//!   [`conn::ws`] (a browser after the upgrade). No sockets in the machines.
//!   Beneath them, layers fed the same way: [`conn::proxy`] (the PROXY
//!   header from a trusted proxy) and [`conn::tls`] (rustls, sans-IO).
//! - [`tls`]: certificates and trust set up at start (server and `chat`).
//! - [`limits`]: connections per address and new ones per 10 minutes; pure.
//! - [`socket`]: what one read or write did (would block, closed, error),
//!   decided once for connections and the Redis link.
//! - [`timer`]: every per-connection deadline and the accept retry in one
//!   heap, named by slab key and serial; pure.
//! - [`idle`]: the --idle-timeout rule (ping, close, or wait); pure.
//! - [`logging`]: the log on stderr through a bounded queue and a writer
//!   thread: dropped lines, never a panic or a stalled loop.
//! - [`line`]: bytes -> lines (LF/CRLF, max length, discard mode, telnet
//!   stripping) and sanitising; pure.
//! - [`http`]: request heads, the one router (the page, `/healthz`,
//!   `/metrics`, `/ws`) and the answers' bytes; pure.
//! - [`ws`]: RFC 6455 frames — a bounded decoder and the encoders; pure.
//! - [`hub`]: names, rooms, commands, room history and the cluster mirror;
//!   a line in -> deliveries out; pure.
//! - [`history`]: each room's last lines, with ids and times, under line
//!   and byte bounds; pure, given the time.
//! - [`msg`]: one outgoing line, shared by all its recipients.
//! - [`metrics`]: counters for `/metrics` and `/stats`, turned into
//!   Prometheus text only when scraped; no I/O, but it reads the wall clock
//!   for its timestamps.
//! - [`access`]: bans by address prefix, durations, secrets compared,
//!   wrong passwords counted per address; pure.
//! - [`cluster`]: the Redis link that makes several instances one chat.

pub mod access;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod history;
pub mod http;
pub mod hub;
pub mod idle;
pub mod limits;
pub mod line;
pub mod logging;
pub mod metrics;
pub mod msg;
pub mod reactor;
pub mod socket;
pub mod timer;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use reactor::Server;

/// Serves `listener` with `config` until SIGINT or SIGTERM.
pub fn run(listener: std::net::TcpListener, config: Config) -> std::io::Result<()> {
    Server::new(listener, config)?.run()
}
