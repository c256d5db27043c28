//! One RESP connection to Redis: mio's non-blocking connect steps, its
//! read and write buffers, and the decoding of replies, bounded by
//! [`MAX_REPLY`]. It knows nothing of what the commands mean.

use crate::socket::{self, SocketResult};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, ToSocketAddrs};

/// The most a single reply may take before it is complete.
pub const MAX_REPLY: usize = 4 << 20;

/// Where Redis is, from `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
#[derive(Debug, Clone)]
pub struct RedisUrl {
    pub addr: SocketAddr,
    /// An ACL user (`redis://USER:PASSWORD@...`); none: the default user.
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisUrl {
    /// Parses and resolves the URL (once, at start-up: the loop never
    /// blocks on DNS). `env_password` (REDIS_PASSWORD) is used when the URL
    /// has none.
    pub fn parse(url: &str, env_password: Option<String>) -> Result<RedisUrl, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url}: a Redis URL starts with redis://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let password = auth
            .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string())
            .filter(|p| !p.is_empty())
            .or(env_password.filter(|p| !p.is_empty()));
        let user = auth
            .and_then(|a| a.split_once(':'))
            .map(|(u, _)| u.to_string())
            .filter(|u| !u.is_empty());
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (
                hp,
                db.parse()
                    .map_err(|_| format!("{url}: the database must be a number"))?,
            ),
            None => (rest, 0),
        };
        let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        Ok(RedisUrl {
            addr,
            user,
            password,
            db,
        })
    }

    /// The AUTH command to send first, if any.
    pub fn auth_args(&self) -> Option<Vec<String>> {
        let pw = self.password.clone()?;
        Some(match &self.user {
            Some(u) => vec!["AUTH".into(), u.clone(), pw],
            None => vec!["AUTH".into(), pw],
        })
    }
}

/// One connection to Redis.
pub struct Redis {
    pub sock: TcpStream,
    connected: bool,
    rbuf: Vec<u8>,
    /// What is queued toward Redis, not yet written.
    pub wbuf: Vec<u8>,
    /// The subscriber's: a publication larger than MAX_REPLY is skipped
    /// rather than a reason to drop the link (anyone who can reach Redis
    /// can PUBLISH one, as often as they like). Replies on the command
    /// connection are never skipped: the link must read every one.
    pub skip_publications: bool,
    /// Bytes of a skipped publication still to come.
    skip: usize,
    /// Publications skipped since the link last looked.
    pub skipped: u64,
}

impl Redis {
    pub fn connect(addr: SocketAddr, token: Token, registry: &Registry) -> io::Result<Redis> {
        let mut sock = TcpStream::connect(addr)?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = sock.set_nodelay(true);
        Ok(Redis {
            sock,
            connected: false,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            skip_publications: false,
            skip: 0,
            skipped: 0,
        })
    }

    /// A non-blocking connect is done when the socket reports no error and
    /// has a peer (mio's documented steps).
    fn check_connected(&mut self) -> io::Result<bool> {
        if !self.connected {
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
            match self.sock.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.check_connected()? {
            return Ok(());
        }
        let mut done = 0;
        let result = loop {
            if done == self.wbuf.len() {
                break Ok(());
            }
            match socket::write(&self.sock, &[IoSlice::new(&self.wbuf[done..])]) {
                SocketResult::Done(n) => done += n,
                SocketResult::WouldBlock => break Ok(()),
                // A write never reports the peer's end; a read does.
                SocketResult::Closed => break Ok(()),
                SocketResult::Error(e) => break Err(e),
            }
        };
        self.wbuf.drain(..done);
        result
    }

    /// Reads until WouldBlock and decodes every complete frame.
    pub fn read(&mut self, scratch: &mut [u8], frames: &mut Vec<OwnedFrame>) -> io::Result<()> {
        if !self.check_connected()? {
            return Ok(());
        }
        loop {
            match socket::read(&self.sock, scratch) {
                SocketResult::Done(n) => {
                    let skip = self.skip.min(n);
                    self.skip -= skip;
                    self.rbuf.extend_from_slice(&scratch[skip..n]);
                }
                SocketResult::WouldBlock => break,
                SocketResult::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ));
                }
                SocketResult::Error(e) => return Err(e),
            }
            self.decode(frames)?;
        }
        self.decode(frames)
    }

    fn decode(&mut self, frames: &mut Vec<OwnedFrame>) -> io::Result<()> {
        let mut used = 0;
        loop {
            match decode(&self.rbuf[used..]) {
                Ok(Some((frame, n))) => {
                    frames.push(frame);
                    used += n;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply from Redis: {e:?}"),
                    ));
                }
            }
        }
        self.rbuf.drain(..used);
        if self.rbuf.len() > MAX_REPLY {
            if self.skip_publications
                && let Some(total) = publication_len(&self.rbuf)
                && total > self.rbuf.len()
            {
                self.skip = total - self.rbuf.len();
                self.rbuf.clear();
                self.skipped += 1;
                return Ok(());
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply from Redis too large",
            ));
        }
        Ok(())
    }
}

/// The whole length of the publication `buf` begins with (`*3`, `message`,
/// the channel, then the payload's length), when its head is all there:
/// what a reader must skip to be past it without holding it.
pub fn publication_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let line = |at: &mut usize| -> Option<&[u8]> {
        let rest = buf.get(*at..)?;
        let end = rest.windows(2).take(32).position(|w| w == b"\r\n")?;
        *at += end + 2;
        Some(&rest[..end])
    };
    let len = |l: &[u8]| -> Option<usize> {
        std::str::from_utf8(l.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()
    };
    if line(&mut at)? != b"*3" {
        return None;
    }
    let n = len(line(&mut at)?)?;
    if buf.get(at..at + n)? != b"message" {
        return None;
    }
    at += n + 2;
    let channel = len(line(&mut at)?)?;
    at += channel + 2;
    let payload = len(line(&mut at)?)?;
    at.checked_add(payload)?.checked_add(2)
}

/// Appends one command to `buf`, RESP-encoded.
pub fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = buf.len();
    buf.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the encoder itself, so this cannot fail.
    if encode_borrowed(&mut buf[start..], &frame, false).is_err() {
        buf.truncate(start);
    }
}

/// The bytes of a string reply (bulk or simple).
pub fn frame_bytes(f: &OwnedFrame) -> Option<&[u8]> {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_is_measured_from_its_head() {
        let head = b"*3\r\n$7\r\nmessage\r\n$15\r\nchatd:0:r:lobby\r\n$9\r\n";
        let whole = [&head[..], b"123456789\r\n"].concat();
        assert_eq!(publication_len(head), Some(whole.len()));
        assert_eq!(publication_len(&whole), Some(whole.len()));
        assert_eq!(publication_len(&head[..20]), None, "the head cut short");
        assert_eq!(publication_len(b"*3\r\n$9\r\nsubscribe\r\n"), None);
        assert_eq!(publication_len(b"*2\r\n$1\r\n0\r\n"), None);
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut buf = Vec::new();
        command(&mut buf, &[b"SET", b"k", b"v v"]);
        assert_eq!(buf, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv v\r\n");
    }
}
