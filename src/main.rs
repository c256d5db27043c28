//! The `chatd` binary: flags in, `chatd::Server` out.

use chatd::{Config, Server};
use clap::Parser;
use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

/// How long the exit waits for the log to be written: a stuck or closed
/// log reader must not hold the process (the clients were told already).
const LOG_FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let code = serve();
    chatd::logging::flush(LOG_FLUSH_AT_EXIT);
    code
}

/// One line on stderr that may fail (a closed pipe): `eprintln!` would panic.
fn complain(msg: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "chatd: {msg}");
}

fn serve() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.check() {
        complain(format_args!("{e}"));
        return ExitCode::from(2);
    }
    chatd::logging::init(config.log_level(), config.log_queue as usize);
    let listener = match TcpListener::bind((config.host.as_str(), config.port)) {
        Ok(l) => l,
        Err(e) => {
            complain(format_args!(
                "cannot listen on {}:{} for line clients: {e} (--port, or --host)",
                config.host, config.port
            ));
            return ExitCode::FAILURE;
        }
    };
    // The addresses go to stdout for scripts and to the log for people;
    // when both are the same file (a terminal, `2>&1 | tee`), people would
    // read each twice, so the log leaves them out.
    let echo = !same_file(1, 2);
    let note = |what: std::fmt::Arguments| {
        if echo {
            log::info!("{what}");
        }
    };
    let server = match listener.local_addr().and_then(|a| {
        note(format_args!("listening on {a}"));
        Server::new(listener, config).map(|s| (s, a))
    }) {
        Ok((s, addr)) => {
            // Scripts and tests read the bound address (port 0 picks one).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            if let Some(fp) = s.tls_fingerprint() {
                let _ = writeln!(out, "tls self-signed certificate, SHA-256 fingerprint {fp}");
            }
            if let Some(path) = s.tls_cert_path() {
                // What `chat --tls --tls-ca PATH` pins.
                let _ = writeln!(out, "tls certificate {}", path.display());
            }
            if let Some(a) = s.tls_addr() {
                note(format_args!("TLS line clients on {a}"));
                let _ = writeln!(out, "tls on {a}");
            }
            if let Some(a) = s.https_addr() {
                note(format_args!("web chat on https://{a}/"));
                let _ = writeln!(out, "https on {a}");
            }
            if let Some(web) = s.http_addr() {
                note(format_args!("web chat on http://{web}/"));
                let _ = writeln!(out, "http on {web}");
            }
            let _ = writeln!(out, "ready");
            let _ = out.flush();
            s
        }
        Err(e) => {
            complain(format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

/// Whether two descriptors name the same open file (device and inode).
fn same_file(a: libc::c_int, b: libc::c_int) -> bool {
    let stat = |fd| {
        // SAFETY: fstat only writes the struct it is given, which is a
        // zeroed, properly sized and aligned local; an invalid fd is an
        // error return, not undefined behaviour.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}
