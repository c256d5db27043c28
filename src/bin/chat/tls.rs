//! `--tls`: the connection to the server goes through rustls, and the rest
//! of the client keeps its plain `TcpStream` (split into a reading and a
//! writing half, shut down to wake the reader): the handshake is done
//! here, then two pump threads carry bytes between a loopback socket pair,
//! which the client uses, and the TLS connection.

use rustls::{ClientConfig, ClientConnection};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

/// The TLS configuration for every connection (and reconnection), if --tls.
static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

pub fn enable(cfg: Arc<ClientConfig>) {
    let _ = CONFIG.set(cfg);
}

/// Wraps a connected socket in TLS if --tls was given: returns the
/// socket the client should use.
pub fn wrap(sock: TcpStream, host: &str) -> io::Result<TcpStream> {
    let Some(cfg) = CONFIG.get() else {
        return Ok(sock);
    };
    let name = chatd::tls::server_name(host).map_err(io::Error::other)?;
    let mut tls = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut raw = sock;
    // The whole handshake now, so a certificate that does not verify is an
    // error at connect with rustls's reason, not a silent close later.
    while tls.is_handshaking() {
        tls.complete_io(&mut raw)?;
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let ours = TcpStream::connect(listener.local_addr()?)?;
    let (theirs, _) = listener.accept()?;
    let _ = ours.set_nodelay(true);
    let _ = theirs.set_nodelay(true);
    let tls = Arc::new(Mutex::new(tls));
    // Client -> server: plaintext from the local socket, records out.
    {
        let (tls, mut local, mut raw) = (tls.clone(), theirs.try_clone()?, raw.try_clone()?);
        std::thread::Builder::new()
            .name("chat-tls-out".into())
            .spawn(move || {
                let mut buf = vec![0; 16 * 1024];
                loop {
                    let n = match local.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let mut tls = tls.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        tls.send_close_notify();
                    } else if tls.writer().write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let mut failed = false;
                    while tls.wants_write() {
                        if tls.write_tls(&mut raw).is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if n == 0 || failed {
                        break;
                    }
                }
                let _ = raw.shutdown(Shutdown::Both);
            })?;
    }
    // Server -> client: records in, plaintext to the local socket.
    {
        let mut local = theirs;
        std::thread::Builder::new()
            .name("chat-tls-in".into())
            .spawn(move || {
                let mut buf = vec![0; 16 * 1024];
                let mut plain = vec![0; 16 * 1024];
                'outer: loop {
                    let n = match raw.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut tls = tls.lock().unwrap_or_else(|e| e.into_inner());
                    let mut src = &buf[..n];
                    while !src.is_empty() {
                        if tls.read_tls(&mut src).is_err() || tls.process_new_packets().is_err() {
                            break 'outer;
                        }
                        loop {
                            match tls.reader().read(&mut plain) {
                                Ok(0) => break 'outer,
                                Ok(k) => {
                                    if local.write_all(&plain[..k]).is_err() {
                                        break 'outer;
                                    }
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => break 'outer,
                            }
                        }
                    }
                    while tls.wants_write() {
                        if tls.write_tls(&mut raw).is_err() {
                            break 'outer;
                        }
                    }
                }
                let _ = local.shutdown(Shutdown::Both);
                let _ = raw.shutdown(Shutdown::Both);
            })?;
    }
    Ok(ours)
}
