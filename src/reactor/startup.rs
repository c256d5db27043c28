//! `Config` in, the long-lived parts out: the hub (with its access rules
//! and the bans file), the cluster link, the TLS certificate and its
//! fingerprint, the listening sockets. Also the bans file's save, the one
//! file the server writes.

use super::listeners::Listeners;
use super::{PRUNE_EVERY, SIGNALS, Server};
use crate::access::{Bans, BansFile};
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
use std::sync::{Arc, mpsc};
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
            .with_max_rooms(cfg.max_rooms_per_user as usize)
            .with_history(cfg.history_limits(), cfg.history_on_join as usize)
            .with_reply_max(cfg.sendq as usize / 4);
        hub.tick(unix_ms());
        info!(
            "state directory {} (--state-dir); bans in {}",
            cfg.state_dir.display(),
            cfg.bans_path().display()
        );
        let (tls, fingerprint) = tls(&cfg)?;
        if let Some(tls) = tls {
            listeners.speak_tls(tls);
            listeners.open(&poll, &cfg, true)?;
        }
        let per_addr = PerAddr::new(cfg.max_per_ip, cfg.max_connects, cfg.limit_exempt());
        let bans_writer = BansWriter::start(
            cfg.bans_path(),
            mio::Waker::new(poll.registry(), super::BANS_WRITTEN)?,
        )?;
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
            stalled: Vec::new(),
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
            bans_writer,
            next_prune: Instant::now() + PRUNE_EVERY,
            mirror_warned: (0, None),
        })
    }

    /// The self-signed certificate's SHA-256 fingerprint (--tls-self-signed).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_ref().map(|(fp, _)| fp.as_str())
    }

    /// Where the self-signed certificate is kept, for clients to pin.
    pub fn tls_cert_path(&self) -> Option<&std::path::Path> {
        self.fingerprint.as_ref().map(|(_, path)| path.as_path())
    }

    /// Hands the bans file's new text to its writer if the bans changed
    /// and no write is under way, and gives the hub the result of the
    /// last write (the operators' answers wait for it). The loop only
    /// formats the text: the write and its fsyncs are the writer's.
    pub(super) fn save_bans(&mut self) {
        if let Some(written) = self.bans_writer.done() {
            let (hub, mut out) = self.out();
            hub.bans_saved(written, &mut out);
        }
        if self.bans_writer.busy() {
            return;
        }
        if let Some(text) = self.hub.bans_to_save()
            && !self.bans_writer.write(text)
        {
            let (hub, mut out) = self.out();
            hub.bans_saved(Err("its writer stopped".into()), &mut out);
        }
    }

    /// At shutdown: the write under way finished, and the last change
    /// written too, before the process goes.
    pub(super) fn finish_bans(&mut self) {
        self.bans_written_wait();
        if let Some(text) = self.hub.bans_to_save()
            && self.bans_writer.write(text)
        {
            self.bans_written_wait();
        }
    }

    fn bans_written_wait(&mut self) {
        if let Some(written) = self.bans_writer.wait() {
            let (hub, mut out) = self.out();
            hub.bans_saved(written, &mut out);
        }
    }
}

/// The bans file's writer: a thread that writes each text it is given
/// durably (a temporary file next to the file, fsync, rename, fsync of
/// the directory), so that neither a crash nor a power loss leaves half a
/// file or loses a ban an operator was told is saved, and wakes the loop
/// with the result; it formats the text too, from a snapshot the loop
/// hands it without a copy. On the loop a write of 10 000 bans (4.3 MB)
/// stalled every client for about 50 ms (BENCHMARKS.md), before any
/// fsync. One write at a time: a change made meanwhile waits and goes
/// with the next.
pub(super) struct BansWriter {
    texts: Option<mpsc::Sender<BansFile>>,
    results: mpsc::Receiver<Result<(), String>>,
    busy: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BansWriter {
    pub(super) fn start(path: std::path::PathBuf, waker: mio::Waker) -> io::Result<BansWriter> {
        let (texts, todo) = mpsc::channel::<BansFile>();
        let (done, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bans-file".into())
            .spawn(move || {
                for bans in todo {
                    let text = bans.text();
                    // The loop's next change need not copy the list.
                    drop(bans);
                    let written = write_durably(&path, &text).map_err(|e| {
                        warn!("cannot write the bans file {}: {e}", path.display());
                        format!("{}: {e}", path.display())
                    });
                    if done.send(written).is_err() {
                        return;
                    }
                    // Nothing to do if the loop is gone.
                    let _ = waker.wake();
                }
            })?;
        Ok(BansWriter {
            texts: Some(texts),
            results,
            busy: false,
            thread: Some(thread),
        })
    }

    fn busy(&self) -> bool {
        self.busy
    }

    /// Hands `text` to the thread; false if it is gone (it panicked).
    fn write(&mut self, text: BansFile) -> bool {
        let sent = self.texts.as_ref().is_some_and(|t| t.send(text).is_ok());
        self.busy = sent;
        if !sent {
            warn!("the bans file's writer is gone; bans are kept until a restart");
        }
        sent
    }

    /// The result of the write under way, if it has finished.
    fn done(&mut self) -> Option<Result<(), String>> {
        if !self.busy {
            return None;
        }
        let r = self.results.try_recv().ok()?;
        self.busy = false;
        Some(r)
    }

    /// The result of the write under way, waiting for it.
    fn wait(&mut self) -> Option<Result<(), String>> {
        if !self.busy {
            return None;
        }
        self.busy = false;
        Some(
            self.results
                .recv()
                .unwrap_or_else(|_| Err("the writer stopped".into())),
        )
    }
}

impl Drop for BansWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its write is done.
        self.texts = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `text` in place of the file at `path`, all or nothing even across a
/// power loss: the data reaches the disk before the rename makes it the
/// file, and the rename reaches it before this returns.
fn write_durably(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        // The state directory, made on the first save.
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::config::make_state_dir(d)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    let hub = Hub::new(cfg.announce_max)
        .with_cluster(&wire)
        .with_max_remote(cfg.max_remote_users as usize);
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
type TlsSetup = (
    Option<Arc<rustls::ServerConfig>>,
    Option<(String, std::path::PathBuf)>,
);

fn tls(cfg: &Config) -> io::Result<TlsSetup> {
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let tls = crate::tls::load(cert, key).map_err(invalid)?;
        Ok((Some(tls), None))
    } else if cfg.tls_self_signed {
        let names = crate::tls::names_for(&cfg.host);
        let (tls, fp, path) =
            crate::tls::pinned(&cfg.state_dir, &names).map_err(io::Error::other)?;
        // Absolute, so `chat --tls-ca PATH` works from anywhere.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        info!(
            "TLS with the self-signed certificate {} for {}, SHA-256 fingerprint {fp}",
            path.display(),
            names.join(", ")
        );
        Ok((Some(tls), Some((fp, path))))
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
    let path = cfg.bans_to_read(std::path::Path::exists);
    if path != cfg.bans_path() {
        warn!(
            "bans read from {} (where an older chatd kept them); from their next change on they are kept in {}",
            path.display(),
            cfg.bans_path().display()
        );
    }
    let bans_file = path.display();
    let bans = match std::fs::read(&path) {
        Ok(bytes) => {
            let (bans, bad) = Bans::from_file(&bytes, unix_ms());
            if bad.count > 0 {
                let lines: Vec<String> = bad.first.iter().map(usize::to_string).collect();
                let more = if bad.count > bad.first.len() {
                    ", …"
                } else {
                    ""
                };
                warn!(
                    "{bans_file}: {} line(s) that are not bans left out (line {}{more})",
                    bad.count,
                    lines.join(", ")
                );
            }
            info!("{} ban(s) from {bans_file}", bans.len());
            bans
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Bans::default(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read the bans file {bans_file}: {e} (--bans-file, --state-dir)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bans_file_is_replaced_whole_and_nothing_is_left_beside_it() {
        let dir = std::env::temp_dir().join(format!("chatd-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bans.txt");
        write_durably(&path, "one\n").unwrap();
        write_durably(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["bans.txt"]);
        // In the way: a directory that is not empty. The old text stays
        // nowhere half-written, and no temporary file is left.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("x")).unwrap();
        assert!(write_durably(&path, "three\n").is_err());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["bans.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
