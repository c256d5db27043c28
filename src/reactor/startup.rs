//! `Config` in, the long-lived parts out: the hub (with its access rules
//! and the bans file), the cluster link, the TLS certificate and its
//! fingerprint, the listening sockets. Also the bans file's save, the one
//! file the server writes.

use super::listeners::Listeners;
use super::{PRUNE_EVERY, SIGNALS, Server};
use crate::access::Bans;
use crate::cluster::{self, Link, RedisUrl};
use crate::config::{Config, READ_CHUNK};
use crate::hub::{Access, Hub};
use crate::limits::PerAddr;
use crate::metrics::Metrics;
use crate::timer::Timers;
use log::{info, warn};
use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn invalid(e: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Server {
    /// Sets up the loop around a bound line listener; binds the web port
    /// from `cfg` unless --no-http, and the TLS ports on a --tls-* server.
    pub fn new(listener: std::net::TcpListener, cfg: Config) -> io::Result<Server> {
        cfg.check().map_err(invalid)?;
        let poll = Poll::new()?;
        let mut listeners = Listeners::new(&poll, listener)?;
        listeners.open(&poll, &cfg, false)?;
        let (hub, link) = hub_and_link(&cfg)?;
        let access = access(&cfg)?;
        // A batch of one sender's lines must always fit a recipient's queue.
        // A history answer, too, must fit: a quarter leaves room for what
        // is queued already.
        let mut hub = hub
            .with_access(access)
            .with_batch_max((cfg.sendq as usize / 8).min(16 * 1024))
            .with_max_line(cfg.max_line as usize)
            .with_history(cfg.history_limits(), cfg.history_on_join as usize)
            .with_reply_max(cfg.sendq as usize / 4);
        hub.tick(unix_ms());
        let (tls, fingerprint) = tls(&cfg)?;
        if let Some(tls) = tls {
            listeners.speak_tls(tls);
            listeners.open(&poll, &cfg, true)?;
        }
        let per_addr = PerAddr::new(cfg.max_per_ip, cfg.max_connects, cfg.limit_exempt.clone());
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listeners,
            signals,
            conns: Slab::new(),
            hub,
            cfg,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            readable: Vec::new(),
            pending: Vec::new(),
            closing: Vec::new(),
            gone: Vec::new(),
            timers: Timers::default(),
            shutdown: None,
            link,
            inbound: Vec::new(),
            ops: Vec::new(),
            metrics: Metrics::new(Instant::now()),
            next_serial: 0,
            fingerprint,
            per_addr,
            next_prune: Instant::now() + PRUNE_EVERY,
        })
    }

    /// The self-signed certificate's SHA-256 fingerprint (--tls-self-signed).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Writes the bans file if the bans changed this turn: a temporary file
    /// next to it, then a rename, so a crash never leaves half a file. A
    /// failure is logged and tried again at the next change.
    pub(super) fn save_bans(&mut self) {
        let Some(text) = self.hub.bans_to_save() else {
            return;
        };
        let path = std::path::Path::new(&self.cfg.bans_file);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!("cannot write the bans file {}: {e}", path.display());
        }
    }
}

/// The hub, and in cluster mode (--redis) the link that joins it to the
/// other instances.
fn hub_and_link(cfg: &Config) -> io::Result<(Hub, Option<Link>)> {
    let Some(url) = &cfg.redis else {
        return Ok((Hub::new(cfg.announce_max), None));
    };
    let url = RedisUrl::parse(url, std::env::var("REDIS_PASSWORD").ok()).map_err(invalid)?;
    info!("cluster mode: node {}, Redis at {}", cfg.node_id, url.addr);
    // Each start is a new incarnation on the wire, so the others
    // can tell a restarted instance's old users are gone.
    let wire = format!("{}~{:x}", cfg.node_id, fastrand::u32(..));
    let hub = Hub::new(cfg.announce_max).with_cluster(&wire);
    let timing = cluster::Timing::new(
        Duration::from_millis(cfg.cluster_tick_ms),
        Duration::from_secs(cfg.cluster_timeout),
    );
    // A relayed line is at most --max-line plus a name and a
    // notice's words; more from Redis is not from an instance.
    let max_text = cfg.max_line as usize + 256;
    let link = Link::new(url, &wire, cfg.cluster_queue as usize, timing, max_text);
    Ok((hub, Some(link)))
}

/// The TLS ports' certificate (--tls-cert and --tls-key, or
/// --tls-self-signed), and a self-signed one's fingerprint.
type TlsSetup = (Option<Arc<rustls::ServerConfig>>, Option<String>);

fn tls(cfg: &Config) -> io::Result<TlsSetup> {
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let tls = crate::tls::load(cert, key).map_err(invalid)?;
        Ok((Some(tls), None))
    } else if cfg.tls_self_signed {
        let (tls, fp, _) = crate::tls::self_signed().map_err(io::Error::other)?;
        info!("TLS with a self-signed certificate, SHA-256 fingerprint {fp}");
        Ok((Some(tls), Some(fp)))
    } else {
        Ok((None, None))
    }
}

/// The passwords and the bans file, as configured; an error stops the
/// start (an unreadable password file, a bans file that exists but cannot
/// be read).
fn access(cfg: &Config) -> io::Result<Access> {
    let password = cfg.password().map_err(invalid)?;
    let oper = cfg.oper_password().map_err(invalid)?;
    let bans = match std::fs::read_to_string(&cfg.bans_file) {
        Ok(text) => {
            let (bans, bad) = Bans::from_file(&text, unix_ms());
            if bad > 0 {
                warn!(
                    "{}: {bad} line(s) that are not bans left out",
                    cfg.bans_file
                );
            }
            info!("{} ban(s) from {}", bans.len(), cfg.bans_file);
            bans
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Bans::default(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot read the bans file {}: {e} (--bans-file)",
                    cfg.bans_file
                ),
            ));
        }
    };
    if password.is_some() {
        info!("clients must give the server password (/pass)");
    }
    Ok(Access::new(password, oper, cfg.pass_attempts, bans))
}

/// The wall clock in ms since the Unix epoch (0 if it is set before 1970).
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
