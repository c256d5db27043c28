//! chatd: a chat server for telnet, netcat and browsers, on one thread.
//!
//! A line read from a socket travels reactor -> conn -> line -> hub ->
//! conn queues -> the reactor's flush, and never back:
//!
//! - [`config`]: every flag, bound and default in one place.
//! - [`reactor`]: the mio loop — poll, accept, read within budgets, tell the
//!   hub, flush with writev, sweep closed connections after each batch.
//! - [`conn`]: one connection: socket, framer, output queue of shared
//!   lines, --sendq policy, rate-limit bucket.
//! - [`line`]: bytes -> lines (LF/CRLF, max length, discard mode, telnet
//!   stripping) and sanitising; pure, no sockets.
//! - [`hub`]: names, rooms and commands; a line in -> deliveries out; pure.
//! - [`history`]: each room's last lines, with ids and times, under line
//!   and byte bounds; pure, given the time.
//! - [`msg`]: one outgoing line, shared by all its recipients.
//! - [`http`], [`ws`]: the web port — request heads, routes, the page, and
//!   RFC 6455 frames; pure, no sockets.
//! - [`cluster`]: the Redis link that makes several instances one chat.
//! - [`http`]: the web port's request heads, routes and answers; pure.
//! - [`ws`]: RFC 6455 frames for browsers, bounded decoder and encoders; pure.
//! - [`metrics`]: counters for `/metrics` and `/stats`, turned into
//!   Prometheus text only when scraped; pure.
//! - [`idle`]: --idle-timeout deadlines, a heap looked at only when one is due; pure.

pub mod cluster;
pub mod config;
pub mod conn;
pub mod history;
pub mod http;
pub mod hub;
pub mod idle;
pub mod line;
pub mod metrics;
pub mod msg;
pub mod reactor;
pub mod ws;

pub use config::Config;
pub use reactor::Server;

/// Serves `listener` with `config` until SIGINT or SIGTERM.
pub fn run(listener: std::net::TcpListener, config: Config) -> std::io::Result<()> {
    Server::new(listener, config)?.run()
}
