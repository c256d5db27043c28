//! The `chatd` binary: flags in, `chatd::Server` out.

use chatd::{Config, Server};
use clap::Parser;
use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.check() {
        eprintln!("chatd: {e}");
        return ExitCode::from(2);
    }
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level())
        .init();
    let listener = match TcpListener::bind((config.host.as_str(), config.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "chatd: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let server = match listener.local_addr().and_then(|a| {
        log::info!("listening on {a}");
        Server::new(listener, config).map(|s| (s, a))
    }) {
        Ok((s, addr)) => {
            // Scripts and tests read the bound address (port 0 picks one).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            if let Some(fp) = s.tls_fingerprint() {
                let _ = writeln!(out, "tls self-signed certificate, SHA-256 fingerprint {fp}");
            }
            if let Some(a) = s.tls_addr() {
                log::info!("TLS line clients on {a}");
                let _ = writeln!(out, "tls on {a}");
            }
            if let Some(a) = s.https_addr() {
                log::info!("web chat on https://{a}/");
                let _ = writeln!(out, "https on {a}");
            }
            if let Some(web) = s.http_addr() {
                log::info!("web chat on http://{web}/");
                let _ = writeln!(out, "http on {web}");
            }
            let _ = writeln!(out, "ready");
            let _ = out.flush();
            s
        }
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}
