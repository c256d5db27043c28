//! TLS beneath any protocol (rustls, sans-IO): ciphertext from the socket
//! in, plaintext out to the protocol's state machine; plaintext from the
//! output queue in, records out to the socket. The reactor never sees it:
//! the connection's stages (conn/layers.rs) read and write through it.
//!
//! Memory for an idle connection: rustls keeps its receive buffer at 4 KiB
//! once it holds no partial record, frees its plaintext and record queues
//! when they empty, and this never feeds it more than `FEED_MAX` at a time,
//! so a connection holds at most one batch of records beyond its --sendq.

use rustls::ServerConnection;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// Plaintext handed to rustls per batch: one full record (16 KiB), so a
/// busy recipient's lines go out as few, full records in one writev.
pub const FEED_MAX: usize = 16 * 1024;

/// Records read without any plaintext coming out, before the connection is
/// taken for a flood of empty or handshake records.
const MAX_EMPTY_READS: usize = 32;

pub struct Tls {
    conn: ServerConnection,
}

/// What reading through TLS did.
#[derive(Debug)]
pub enum TlsRead {
    /// This many bytes of plaintext.
    Data(usize),
    WouldBlock,
    /// The peer ended the stream (close_notify or EOF).
    Closed,
    Error(io::Error),
    /// The handshake just finished (only from `handshake`): any plaintext
    /// that came with it waits for the next read.
    Handshaken,
}

impl Tls {
    pub fn new(cfg: &Arc<rustls::ServerConfig>) -> Result<Tls, rustls::Error> {
        let mut conn = ServerConnection::new(cfg.clone())?;
        // We bound what is fed in (FEED_MAX) ourselves; this is a backstop.
        conn.set_buffer_limit(Some(4 * FEED_MAX));
        Ok(Tls { conn })
    }

    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Records (handshake or data) wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Reads plaintext into `buf`, pulling ciphertext from `src` (the
    /// socket, or bytes that came in behind a PROXY header) as needed.
    pub fn read(&mut self, src: &mut dyn Read, buf: &mut [u8]) -> TlsRead {
        self.pull(src, buf, false)
    }

    /// Reads as `read` does while handshaking, but stops as soon as the
    /// handshake is done, so the protocol can start before its first bytes.
    pub fn handshake(&mut self, src: &mut dyn Read, buf: &mut [u8]) -> TlsRead {
        self.pull(src, buf, true)
    }

    fn pull(&mut self, src: &mut dyn Read, buf: &mut [u8], until_handshaken: bool) -> TlsRead {
        for _ in 0..MAX_EMPTY_READS {
            match self.conn.reader().read(buf) {
                Ok(0) => return TlsRead::Closed,
                Ok(n) => return TlsRead::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return TlsRead::Closed,
                Err(e) => return TlsRead::Error(e),
            }
            match self.conn.read_tls(src) {
                Ok(0) => return TlsRead::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return TlsRead::Error(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls has queued an alert saying why; the caller's
                // flush sends it before the close (best effort).
                return TlsRead::Error(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if until_handshaken && !self.conn.is_handshaking() {
                return TlsRead::Handshaken;
            }
        }
        TlsRead::Error(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS records without data",
        ))
    }

    /// Encrypts plaintext (several queued lines, one vectored write: rustls
    /// cuts them into full records); returns how much it took.
    pub fn feed(&mut self, iov: &[IoSlice<'_>]) -> usize {
        self.conn.writer().write_vectored(iov).unwrap_or(0)
    }

    /// Writes pending records to `sock`: one writev for all of them.
    pub fn write_to(&mut self, sock: &mut dyn Write) -> io::Result<usize> {
        self.conn.write_tls(sock)
    }

    /// Ends the stream properly (queued; the next flush sends it).
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from the wire, then "would block" (a socket with nothing
    /// more for now), never an end of stream.
    struct Wire<'a>(&'a [u8]);

    impl Read for Wire<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.0.read(buf)?;
            Ok(n)
        }
    }

    /// Moves every pending record from one side to the other.
    fn pump(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> usize {
        let mut wire = Vec::new();
        from(&mut wire);
        to(&wire);
        wire.len()
    }

    #[test]
    fn handshake_then_queued_lines_go_out_as_one_record() {
        let (cfg, _, _) = crate::tls::self_signed().unwrap();
        let mut server = Tls::new(&cfg).unwrap();
        let client_cfg = crate::tls::client_config(crate::tls::Trust::Anyone).unwrap();
        let name = crate::tls::server_name("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut plain = [0u8; 4096];
        for _ in 0..10 {
            if !server.handshaking() && !client.is_handshaking() {
                break;
            }
            pump(
                &mut |w| {
                    while client.wants_write() {
                        client.write_tls(w).unwrap();
                    }
                },
                &mut |bytes| {
                    let mut src = Wire(bytes);
                    assert!(matches!(
                        server.read(&mut src, &mut plain),
                        TlsRead::WouldBlock
                    ));
                },
            );
            pump(
                &mut |w| {
                    while server.wants_write() {
                        server.write_to(w).unwrap();
                    }
                },
                &mut |bytes| {
                    let mut src = bytes;
                    while !src.is_empty() {
                        client.read_tls(&mut src).unwrap();
                        client.process_new_packets().unwrap();
                    }
                },
            );
        }
        assert!(!server.handshaking() && !client.is_handshaking());

        // 100 queued lines of 30 bytes: one batch, one record (a record
        // per line would add 22 bytes of framing and tag to each).
        let line = [b'x'; 30];
        let iov: Vec<IoSlice> = (0..100).map(|_| IoSlice::new(&line)).collect();
        assert_eq!(server.feed(&iov), 3000);
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_to(&mut wire).unwrap();
        }
        assert!(
            wire.len() < 3000 + 2 * 22,
            "{} bytes on the wire",
            wire.len()
        );
        let mut src = &wire[..];
        while !src.is_empty() {
            client.read_tls(&mut src).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        assert_eq!(got.len(), 3000);

        // And the other way: the client's line comes out as plaintext.
        client.writer().write_all(b"hello\n").unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut src = Wire(&wire);
        match server.read(&mut src, &mut plain) {
            TlsRead::Data(n) => assert_eq!(&plain[..n], b"hello\n"),
            other => panic!("{other:?}"),
        }
    }
}
