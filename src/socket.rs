//! One classification of what a non-blocking socket did, for the client
//! connections and the Redis link alike (sozu's `SocketResult`): the
//! would-block / interrupted / error ladder is written out once, here, and
//! what an error means for the room ("connection reset", "connection lost")
//! is decided in one place ([`reason_for`]).

use std::io::{self, IoSlice, Read, Write};

/// What one read or write did.
#[derive(Debug)]
pub enum SocketResult {
    /// Moved this many bytes (never 0).
    Done(usize),
    /// Nothing to read or no room to write; wait for the next event.
    WouldBlock,
    /// The peer finished sending (a read of 0 bytes).
    Closed,
    /// The connection failed ([`reason_for`] says what that means for the
    /// room). A write of 0 bytes is one: the socket cannot take more.
    Error(io::Error),
}

/// Reads once into `buf`, retrying if interrupted by a signal.
pub fn read(mut sock: impl Read, buf: &mut [u8]) -> SocketResult {
    loop {
        return match sock.read(buf) {
            Ok(0) => SocketResult::Closed,
            Ok(n) => SocketResult::Done(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => classify(e),
        };
    }
}

/// Writes once from `iov` (one writev), retrying if interrupted. A write
/// of 0 bytes is an error: the socket cannot take anything more.
pub fn write(mut sock: impl Write, iov: &[IoSlice<'_>]) -> SocketResult {
    loop {
        return match sock.write_vectored(iov) {
            Ok(0) => SocketResult::Error(io::ErrorKind::WriteZero.into()),
            Ok(n) => SocketResult::Done(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => classify(e),
        };
    }
}

fn classify(e: io::Error) -> SocketResult {
    if e.kind() == io::ErrorKind::WouldBlock {
        SocketResult::WouldBlock
    } else {
        SocketResult::Error(e)
    }
}

/// One place decides what a socket error means for the room.
pub fn reason_for(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::WriteZero => "connection reset".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::HostUnreachable => "connection lost".into(),
        _ => format!("error: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_in_one_place() {
        let r = |k: io::ErrorKind| reason_for(&io::Error::from(k));
        assert_eq!(r(io::ErrorKind::ConnectionReset), "connection reset");
        assert_eq!(r(io::ErrorKind::BrokenPipe), "connection reset");
        assert_eq!(r(io::ErrorKind::TimedOut), "connection lost");
    }

    /// A reader or writer that answers from a script, one result per call.
    struct Script(Vec<io::Result<usize>>);

    impl Read for Script {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            self.0.remove(0)
        }
    }

    impl Write for Script {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0.remove(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_and_writes_say_what_happened() {
        use SocketResult::*;
        use io::ErrorKind::{ConnectionReset, Interrupted, WouldBlock};
        let mut buf = [0; 8];
        let read1 = |r: io::Result<usize>| read(Script(vec![r]), &mut [0; 8]);
        assert!(matches!(read1(Ok(5)), Done(5)));
        assert!(matches!(read1(Ok(0)), Closed));
        assert!(matches!(
            read1(Err(WouldBlock.into())),
            SocketResult::WouldBlock
        ));
        assert!(
            matches!(read1(Err(ConnectionReset.into())), Error(e) if e.kind() == ConnectionReset)
        );
        // Interrupted is retried, not reported.
        let s = Script(vec![Err(Interrupted.into()), Ok(3)]);
        assert!(matches!(read(s, &mut buf), Done(3)));
        let iov = [IoSlice::new(b"abc")];
        let s = Script(vec![Err(Interrupted.into()), Ok(0)]);
        let Error(e) = write(s, &iov) else {
            panic!("a zero write is not an error");
        };
        assert_eq!(reason_for(&e), "connection reset");
        assert!(matches!(write(Script(vec![Ok(2)]), &iov), Done(2)));
        assert!(matches!(
            write(Script(vec![Err(WouldBlock.into())]), &iov),
            SocketResult::WouldBlock
        ));
    }
}
