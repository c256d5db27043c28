//! chatd: a chat server for telnet, netcat and browsers, on one thread.
//!
//! A line read from a socket travels reactor -> conn (its protocol's state
//! machine) -> line -> hub -> conn queues -> the reactor's flush, and never
//! back (docs/architecture.md draws it for each transport):
//!
//! - [`config`]: every flag, bound and default in one place.
//! - [`reactor`]: the mio loop — poll, dispatch, read within budgets,
//!   settle (tell the hub who left, flush with writev), timers, sweep —
//!   asking each connection and acting on what it says; it names no
//!   listener, layer or codec. Beside the turn: `listeners` (one row per
//!   listening socket: bind, accept, the first state machine), `admission`
//!   (the per-address limits at the address and at a browser's upgrade), `outbox`
//!   (hub output -> connection queues and the list of cluster
//!   operations, which `Server::exchange` hands to the link), `stalled`
//!   (a client's lines held while its command waits for Redis) and `startup`
//!   (`Config` -> the long-lived parts; the bans file written by a thread
//!   of its own, durably).
//! - [`conn`]: one connection — socket, output queue of shared lines,
//!   --sendq policy, rate-limit bucket, set up by [`conn::Conn::accept`] —
//!   and its protocol as a state machine fed bytes and returning
//!   [`conn::Step`]s: [`conn::line`] (telnet, nc; a first line of another
//!   protocol answered in kind and closed), [`conn::http`] (one
//!   request head, then close or upgrade), [`conn::ws`] (a browser after
//!   the upgrade). No sockets in the machines. Beneath them the
//!   connection's stages ([`conn::layers`]: PROXY header -> TLS handshake
//!   -> protocol, each passed as a typed [`conn::Input`]): [`conn::proxy`]
//!   (the header from a trusted proxy) and [`conn::tls`] (rustls, sans-IO).
//! - [`tls`]: certificates and trust set up at start (server and `chat`),
//!   the self-signed one kept in the state directory for clients to pin.
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
//! - [`hub`]: names, rooms and the fan-out, commands, room history,
//!   moderation and the cluster mirror; a line in -> deliveries out; pure.
//!   Each user is one part per concern, each in the file of its concern;
//!   `hub/ops.rs` is what the hub asks of the cluster, as data.
//! - [`history`]: each room's last lines, with ids and times, under line
//!   and byte bounds; pure, given the time.
//! - [`msg`]: one outgoing line, shared by all its recipients.
//! - [`metrics`]: counters for `/metrics` and `/stats`, turned into
//!   Prometheus text only when scraped; no I/O, but it reads the wall clock
//!   for its timestamps.
//! - [`access`]: bans by address prefix, durations, secrets compared,
//!   wrong passwords counted per address; pure.
//! - [`cluster`]: the Redis link that makes several instances one chat:
//!   `cluster/mod.rs` the link's state machine, `verbs.rs` what each
//!   operation of the hub becomes on the wire, `redis.rs` one
//!   RESP connection, `wire.rs` every key, channel and payload (pure),
//!   `scripts.rs` the Lua scripts (one library of Redis functions) and
//!   their contracts, `batch.rs` room lines gathered per room over a turn
//!   into one call, `replies.rs` what
//!   each reply expects and how it is handled, `events.rs` what arrives as
//!   data and its one mapping onto the hub, `rounds.rs` the timed work
//!   (healing, heartbeat, renewals), `timing.rs` and `warn.rs` the
//!   durations and the rate-limited log. The hub and the link never call
//!   each other: the hub lists [`hub::ClusterOp`]s, the link answers with
//!   [`cluster::Inbound`] events (docs/architecture.md).

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
