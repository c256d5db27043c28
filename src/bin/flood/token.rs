//! The token every sent line carries, `[F:sender,seq,micros]`, and the
//! scanner that finds it anywhere in what a server sends back.
//!
//! The scanner ignores line boundaries on purpose: servers prefix lines
//! differently (`<guest-3> `, `<user5> `, nothing at all), and some merge or
//! split lines (ncat relays raw 8 KiB chunks). A token is counted only when
//! it parses completely up to its closing `]`, so a line cut inside its token
//! can never be mistaken for a different sequence number; it shows up as
//! missing, which is the truth about what the receiver got.

use memchr::memmem::Finder;

pub const MARK: &[u8] = b"[F:";

/// The longest token: the mark, three u64-sized numbers, two commas and `]`.
/// Bytes beyond this at the end of a read can never complete a token.
pub const MAX_LEN: usize = MARK.len() + 20 + 1 + 20 + 1 + 20 + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub sender: u32,
    pub seq: u32,
    /// Send time in microseconds since the run's epoch (the intended time in
    /// open loop, so a stalled server cannot hide its latency).
    pub t_us: u64,
}

/// Appends one line (without terminator): the token, then `x` padding up to
/// `bytes` in total. A `bytes` shorter than the token gives just the token.
pub fn write_line(out: &mut Vec<u8>, tok: Token, bytes: usize) {
    let start = out.len();
    out.extend_from_slice(MARK);
    put_u64(out, u64::from(tok.sender));
    out.push(b',');
    put_u64(out, u64::from(tok.seq));
    out.push(b',');
    put_u64(out, tok.t_us);
    out.push(b']');
    let len = out.len() - start;
    if len < bytes {
        out.resize(start + bytes, b'x');
    }
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

enum Parse {
    Ok(Token, usize),
    Bad,
    /// The buffer ended inside what may still become a token.
    Incomplete,
}

/// Parses a decimal number of at most 20 digits ending in `end`, from `i`.
fn number(buf: &[u8], mut i: usize, end: u8) -> Result<(u64, usize), Parse> {
    let start = i;
    let mut v: u64 = 0;
    loop {
        let Some(&c) = buf.get(i) else {
            return Err(Parse::Incomplete);
        };
        if c.is_ascii_digit() {
            if i - start >= 20 {
                return Err(Parse::Bad);
            }
            v = match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
            {
                Some(v) => v,
                None => return Err(Parse::Bad),
            };
            i += 1;
        } else if c == end && i > start {
            return Ok((v, i + 1));
        } else {
            return Err(Parse::Bad);
        }
    }
}

/// `buf[at..]` starts with MARK.
fn parse_at(buf: &[u8], at: usize) -> Parse {
    let i = at + MARK.len();
    let r = number(buf, i, b',').and_then(|(sender, i)| {
        let (seq, i) = number(buf, i, b',')?;
        let (t_us, i) = number(buf, i, b']')?;
        match (u32::try_from(sender), u32::try_from(seq)) {
            (Ok(sender), Ok(seq)) => Ok(Parse::Ok(Token { sender, seq, t_us }, i)),
            _ => Err(Parse::Bad),
        }
    });
    match r {
        Ok(p) | Err(p) => p,
    }
}

pub struct Scanner {
    finder: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            finder: Finder::new(MARK).into_owned(),
        }
    }
}

impl Scanner {
    /// Calls `f` for every complete token in `buf` and returns how many bytes
    /// at the end must be carried into the next read because they may be the
    /// start of a token (never more than MAX_LEN).
    pub fn scan(&self, buf: &[u8], mut f: impl FnMut(Token)) -> usize {
        let mut pos = 0;
        for at in self.finder.find_iter(buf) {
            if at < pos {
                continue;
            }
            match parse_at(buf, at) {
                Parse::Ok(tok, end) => {
                    f(tok);
                    pos = end;
                }
                Parse::Bad => {}
                Parse::Incomplete => return buf.len() - at,
            }
        }
        // The mark itself may be cut: keep a trailing "[" or "[F".
        let tail = &buf[pos.max(buf.len().saturating_sub(MARK.len() - 1))..];
        for k in (1..MARK.len()).rev() {
            if tail.len() >= k && tail[tail.len() - k..] == MARK[..k] {
                return k;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> (Vec<Token>, usize) {
        let mut v = Vec::new();
        let keep = Scanner::default().scan(buf, |t| v.push(t));
        (v, keep)
    }

    fn tok(sender: u32, seq: u32, t_us: u64) -> Token {
        Token { sender, seq, t_us }
    }

    #[test]
    fn roundtrip_with_prefix_and_padding() {
        let mut line = b"<guest-3> ".to_vec();
        write_line(&mut line, tok(3, 17, 123456), 64);
        assert_eq!(line.len(), 10 + 64);
        line.extend_from_slice(b"\r\n*** guest-9 joined\r\n");
        assert_eq!(all(&line), (vec![tok(3, 17, 123456)], 0));
    }

    #[test]
    fn short_bytes_give_just_the_token() {
        let mut line = Vec::new();
        write_line(&mut line, tok(0, 0, 0), 1);
        assert_eq!(line, b"[F:0,0,0]");
    }

    #[test]
    fn every_cut_point_is_carried_or_complete() {
        let mut line = b"<u> ".to_vec();
        write_line(&mut line, tok(12, 345, 6789), 30);
        line.extend_from_slice(b"\n");
        for cut in 0..line.len() {
            let (first, keep) = all(&line[..cut]);
            let mut joined = line[cut - keep..cut].to_vec();
            joined.extend_from_slice(&line[cut..]);
            let (second, _) = all(&joined);
            let mut got = first;
            got.extend(second);
            assert_eq!(got, vec![tok(12, 345, 6789)], "cut at {cut}");
        }
    }

    #[test]
    fn mangled_tokens_are_not_counted() {
        // A line cut inside its token and continued after another prefix.
        assert_eq!(all(b"[F:1,12<user5> 3,99]xx\n").0, vec![]);
        assert_eq!(all(b"[F:1,,5]\n[F:,1,5]\n[F:1,2]\n").0, vec![]);
        // Overflowing numbers are rejected, not wrapped.
        assert_eq!(all(b"[F:4294967296,1,1]").0, vec![]);
        assert_eq!(all(b"[F:1,1,99999999999999999999999]").0, vec![]);
    }

    #[test]
    fn merged_lines_yield_both_tokens() {
        let buf = b"<a> [F:1,5,100]xxx<b> [F:2,7,200]yy\n";
        assert_eq!(all(buf).0, vec![tok(1, 5, 100), tok(2, 7, 200)]);
    }

    #[test]
    fn partial_mark_at_end_is_kept() {
        assert_eq!(all(b"abc[").1, 1);
        assert_eq!(all(b"abc[F").1, 2);
        assert_eq!(all(b"abc[F:").1, 3);
        assert_eq!(all(b"abc[F:12,").1, 6);
        assert_eq!(all(b"abc[x").1, 0);
    }
}
