//! What reaches the terminal: server lines made safe to print, and the
//! colours that tell the kinds of line apart.

use crossterm::style::Stylize;

use crate::resume::room_prefix;

/// Longest line, in bytes, taken from the server or from stdin in one piece.
/// A longer line is handed on in pieces of this size, so a peer that never
/// sends a newline cannot make the client buffer without limit.
pub const MAX_LINE: usize = 16 * 1024;

/// Turns one raw line from the server into text safe for a terminal: the line
/// ending (CRLF or a bare LF) goes, invalid UTF-8 becomes U+FFFD, and every
/// control character except TAB is dropped. Control characters are the C0
/// range, DEL and the C1 range (`char::is_control`); passing them through
/// would let any user move the cursor, recolour or retitle our terminal.
pub fn sanitize(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|&c| c == '\t' || !c.is_control())
        .collect()
}

/// The kinds of line the client tells apart, by the shapes chatd sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `<name> text` from another user.
    Message,
    /// `* name text`, a /me action.
    Action,
    /// `*name* text` received or `-> *name* text` sent.
    Private,
    /// `*** ...` from the server itself.
    Notice,
    Warning,
    Error,
    /// Anything else, printed as it came.
    Plain,
}

/// The kind of `line`, past the `[#room] ` of a room other than the current.
pub fn classify(line: &str) -> Kind {
    let line = room_prefix(line).1;
    if line.starts_with("*** error: ") {
        Kind::Error
    } else if line.starts_with("*** warning: ") {
        Kind::Warning
    } else if line.starts_with("*** ") {
        Kind::Notice
    } else if line.starts_with("-> *") || is_private(line) {
        Kind::Private
    } else if line.starts_with("* ") {
        Kind::Action
    } else if message_name(line).is_some() {
        Kind::Message
    } else {
        Kind::Plain
    }
}

/// `*name* text`: a star, a name without blanks or stars, a star, a space.
fn is_private(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('*') else {
        return false;
    };
    match rest.find('*') {
        Some(end) if end > 0 => {
            !rest[..end].contains(char::is_whitespace) && rest[end + 1..].starts_with(' ')
        }
        _ => false,
    }
}

/// For `<name> text`, the byte length of `<name>`.
fn message_name(line: &str) -> Option<usize> {
    let rest = line.strip_prefix('<')?;
    let end = rest.find("> ")?;
    (end > 0 && !rest[..end].contains(char::is_whitespace)).then_some(end + 2)
}

/// Colours on or off. Off writes text exactly as given, so pipes and
/// `--no-color` output carry no escape sequences at all.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    pub enabled: bool,
}

impl Palette {
    /// A line from the server, coloured by its kind; the room of a line of
    /// another room than the current stands out in front of it.
    pub fn server(&self, line: &str) -> String {
        if !self.enabled {
            return line.to_string();
        }
        match room_prefix(line) {
            (Some(room), rest) => format!("{} {}", format!("[{room}]").blue(), self.kind(rest)),
            (None, line) => self.kind(line),
        }
    }

    fn kind(&self, line: &str) -> String {
        match classify(line) {
            Kind::Message => {
                // Only the name is coloured: the text is what people read,
                // and the default colour is the most legible one.
                let split = message_name(line).unwrap_or(0);
                let (name, text) = line.split_at(split);
                format!("{}{}", name.green().bold(), text)
            }
            Kind::Action => line.green().to_string(),
            Kind::Private => line.magenta().bold().to_string(),
            Kind::Notice => line.yellow().to_string(),
            Kind::Warning => line.yellow().bold().to_string(),
            Kind::Error => line.red().bold().to_string(),
            Kind::Plain => line.to_string(),
        }
    }

    /// What the user typed, as shown in the input line and left in the
    /// scrollback once sent.
    pub fn own(&self, line: &str) -> String {
        if self.enabled {
            line.cyan().to_string()
        } else {
            line.to_string()
        }
    }

    /// A message from the client itself (connection lost, reconnected...).
    pub fn local(&self, text: &str, error: bool) -> String {
        let line = format!("-!- {text}");
        match (self.enabled, error) {
            (false, _) => line,
            (true, false) => line.dark_yellow().to_string(),
            (true, true) => line.red().bold().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_line_endings() {
        assert_eq!(sanitize(b"hello\r\n"), "hello");
        assert_eq!(sanitize(b"hello\n"), "hello");
        assert_eq!(sanitize(b"hello"), "hello");
        assert_eq!(sanitize(b"\r\n"), "");
    }

    #[test]
    fn sanitize_removes_control_characters_but_keeps_tab() {
        assert_eq!(sanitize(b"a\x1b[2Jb\x07c\x00d\x7fe\tf\r\n"), "a[2Jbcde\tf");
        // A CR inside the line could overwrite what was printed before it.
        assert_eq!(sanitize(b"fake\rreal\r\n"), "fakereal");
        // C1 controls as UTF-8 (U+009B is a one-character CSI).
        assert_eq!(sanitize("x\u{9b}31my\u{85}z".as_bytes()), "x31myz");
        // Raw C1 bytes are not UTF-8: they become U+FFFD, which is harmless.
        assert_eq!(sanitize(b"x\x9by"), "x\u{fffd}y");
        assert_eq!(sanitize("café ✓".as_bytes()), "café ✓");
    }

    #[test]
    fn classify_knows_the_protocol_shapes() {
        assert_eq!(classify("<alice> hi there"), Kind::Message);
        assert_eq!(classify("* alice waves"), Kind::Action);
        assert_eq!(classify("*alice* psst"), Kind::Private);
        assert_eq!(classify("-> *bob* psst"), Kind::Private);
        assert_eq!(classify("*** alice joined"), Kind::Notice);
        assert_eq!(classify("*** error: no such user"), Kind::Error);
        assert_eq!(classify("*** warning: slow down"), Kind::Warning);
        assert_eq!(classify("<not a name> x"), Kind::Plain);
        assert_eq!(classify("*no close"), Kind::Plain);
        assert_eq!(classify("plain"), Kind::Plain);
        assert_eq!(classify("[#games] <alice> hi"), Kind::Message);
        assert_eq!(classify("[#games] * alice waves"), Kind::Action);
        assert_eq!(classify("[#games] *** bob joined #games"), Kind::Notice);
    }

    #[test]
    fn colour_off_is_byte_identical() {
        let p = Palette { enabled: false };
        for line in ["<a> b", "*** error: x", "*a* b", "plain"] {
            assert_eq!(p.server(line), line);
        }
        assert_eq!(p.own("hi"), "hi");
        assert_eq!(p.local("lost", true), "-!- lost");
    }

    #[test]
    fn colour_on_wraps_in_escape_sequences() {
        // crossterm obeys NO_COLOR on its own; the test must not depend on
        // the environment it runs in.
        crossterm::style::Colored::set_ansi_color_disabled(false);
        let p = Palette { enabled: true };
        let error = p.server("*** error: x");
        assert!(error.contains("\x1b[") && error.contains("*** error: x"));
        let other = p.server("[#games] <alice> hi");
        assert!(
            other.starts_with('\x1b') && other.contains("[#games]\x1b") && other.ends_with(" hi"),
            "{other:?}"
        );
        let msg = p.server("<alice> hi");
        assert!(
            msg.starts_with('\x1b') && msg.contains("<alice>") && msg.ends_with(" hi"),
            "{msg:?}"
        );
    }
}
