//! chat: a terminal client for chatd that beats telnet.
//!
//! Interactive when stdin and stdout are terminals: a line editor on the main
//! thread (history, and incoming lines drawn above the line being typed) and
//! a reader thread for the socket. Scripted otherwise: stdin lines are sent,
//! server lines go to stdout, and the client waits for the server to answer
//! before it exits.

mod conn;
mod display;
mod out;
mod resume;
mod term;
mod tls;

use std::borrow::Cow;
use std::io::{self, IsTerminal};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{ColorMode, Config, Editor, Helper};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use conn::{Sent, Shared, Target, is_quit};
use display::{MAX_LINE, Palette};
use out::Out;

/// How long to wait for the server to close after our `/quit` before exiting
/// anyway (the server answers at once; this only bounds a hung server).
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// chatd's default ports (its --port and --tls-port).
const LINE_PORT: u16 = 3000;
const TLS_PORT: u16 = 3443;

#[derive(Parser, Debug)]
#[command(
    name = "chat",
    version,
    about = "Terminal client for chatd",
    long_about = "Terminal client for chatd.\n\n\
        Interactive when stdin is a terminal: incoming lines appear above the line \
        you are typing; arrows walk the history; /quit, Ctrl-D or Ctrl-C leave.\n\n\
        Scripted when stdin is not a terminal: sends each stdin line, prints every \
        line the server sends, and exits once the server has answered them all, \
        e.g. printf '/nick bot\\nhello\\n' | chat",
    after_help = "Exit status: 0 welcomed and every line sent; 1 connection failed or lost \
        (--no-reconnect), or a line not sent; 2 usage; 3 refused (server full...); \
        4 banned; 5 password needed or wrong (--password-file); 6 TLS mismatch \
        (--tls, --insecure, --tls-ca); 7 kicked. See docs/chat.md."
)]
struct Args {
    /// Server host name or address.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Server port [default: 3000, or 3443 (chatd's TLS port) with --tls].
    #[arg(long)]
    port: Option<u16>,
    /// Never colour the output (the NO_COLOR variable does the same).
    #[arg(long)]
    no_color: bool,
    /// Exit with status 1 when the connection is lost instead of reconnecting.
    /// (A kick or a ban never reconnects on its own: see /reconnect.)
    #[arg(long)]
    no_reconnect: bool,
    /// Scripted mode: after stdin ends, keep printing what arrives for this
    /// many seconds before leaving.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    wait: Option<Duration>,
    /// Speak TLS (to chatd's --tls-port), verifying the server's
    /// certificate against the system's root certificates.
    #[arg(long)]
    tls: bool,
    /// With --tls: trust only the certificates in this PEM file (a
    /// private CA, or the server's own certificate).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls",
        conflicts_with = "insecure"
    )]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls: accept any certificate (a --tls-self-signed server).
    /// The link is encrypted, but anyone in the middle could be answering.
    #[arg(long, requires = "tls")]
    insecure: bool,
    /// First reconnect delay in milliseconds; the cap is 30 times this.
    /// Hidden: only tests need it, to see a reconnect without waiting seconds.
    #[arg(long, hide = true, default_value_t = 1000)]
    reconnect_base_ms: u64,
    /// The server password, read from this file (its first line) and sent
    /// first on every (re)connection; else from CHATD_PASSWORD, if set.
    /// Not a flag of its own: `ps` shows command lines.
    #[arg(long, value_name = "PATH")]
    password_file: Option<String>,
}

/// The server password: --password-file, else CHATD_PASSWORD.
fn password(args: &Args) -> Result<Option<String>, String> {
    let value = match &args.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--password-file {path}: {e}"))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        None => match std::env::var("CHATD_PASSWORD") {
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
    };
    let value = value.trim();
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err("the password is empty or has control characters".into());
    }
    Ok(Some(value.to_string()))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s}"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("not a usable number of seconds: {s}"))
}

/// NO_COLOR counts when set to anything but the empty string (no-color.org).
fn colour_wanted(no_color_flag: bool) -> bool {
    !no_color_flag && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() {
    let args = Args::parse();
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    let palette = Palette {
        enabled: io::stdout().is_terminal() && colour_wanted(args.no_color),
    };
    let password = password(&args).unwrap_or_else(|e| {
        eprintln!("chat: {e}");
        std::process::exit(2);
    });
    let base = Duration::from_millis(args.reconnect_base_ms.max(1));
    let target = Target {
        host: args.host.clone(),
        port: args
            .port
            .unwrap_or(if args.tls { TLS_PORT } else { LINE_PORT }),
        reconnect: !args.no_reconnect,
        base_delay: base,
        max_delay: base.saturating_mul(30),
        password,
        interactive,
    };

    if args.tls {
        let trust = match (&args.tls_ca, args.insecure) {
            (Some(ca), _) => chatd::tls::Trust::Ca(ca),
            (None, true) => chatd::tls::Trust::Anyone,
            (None, false) => chatd::tls::Trust::System,
        };
        match chatd::tls::client_config(trust) {
            Ok(cfg) => tls::enable(cfg),
            Err(e) => {
                eprintln!("chat: {e}");
                std::process::exit(2);
            }
        }
    }
    // The first connection has no one to come back to: failing it is an
    // error, not a reason to retry.
    let stream = match conn::connect(&target.host, target.port) {
        Ok(s) => s,
        Err(e) => {
            if let Some(end) = conn::tls_failure(&e) {
                eprintln!("chat: {}: {}", target.name(), end.explain());
                std::process::exit(end.code());
            }
            eprintln!("chat: cannot connect to {}: {e}", target.name());
            std::process::exit(1);
        }
    };

    let shared = Arc::new(Shared::default());
    watch_signals(&shared);
    // Saved before the editor first touches the terminal, for the exits
    // that happen while it is in raw mode.
    if interactive {
        term::save();
    }
    let code = match interactive.then(|| line_editor(palette)).flatten() {
        Some((editor, printer)) => {
            interactive_session(&shared, stream, target, palette, editor, printer)
        }
        None => scripted_session(&shared, stream, target, palette, args.wait),
    };
    // 0 only if the server took us in and every line went (docs/chat.md).
    let code = shared.exit_code(code);
    if code != 0
        && let Some(why) = shared.end_text()
    {
        eprintln!("chat: {why}");
    }
    term::exit(code)
}

/// Ends the client on SIGINT/SIGTERM/SIGHUP with a `/quit` to the server and
/// the terminal restored. (In the editor Ctrl-C is a key, not a signal; this
/// covers the rest of the time and signals from elsewhere.)
/// The interactive session's output, for the signal thread: it must stop the
/// editor drawing before it ends the line being typed.
static INTERACTIVE_OUT: OnceLock<Arc<Out>> = OnceLock::new();

fn watch_signals(shared: &Arc<Shared>) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let shared = Arc::clone(shared);
    let _ = std::thread::Builder::new()
        .name("chat-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // No more lines drawn above the prompt: the server's answer
                // to the /quit below (or any line) would redraw the prompt
                // after the line is ended. Lines printed from now on wait
                // for the stdout lock, which the exit keeps.
                if let Some(out) = INTERACTIVE_OUT.get() {
                    out.detach_printer();
                }
                let stdout = std::io::stdout().lock();
                term::end_line_and_restore(stdout);
                shared.try_quit();
                std::process::exit(128 + sig);
            }
        });
}

/// Colours the line being typed (and so the sent line left on screen) as the
/// user's own.
struct InputHelper {
    palette: Palette,
}

impl Highlighter for InputHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Owned(self.palette.own(line))
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        // Every edit must redraw through `highlight`, or characters typed at
        // the end of the line would be echoed uncoloured.
        true
    }
}

impl Completer for InputHelper {
    type Candidate = String;
}
impl Hinter for InputHelper {
    type Hint = String;
}
impl Validator for InputHelper {}
impl Helper for InputHelper {}

type LineEditor = Editor<InputHelper, DefaultHistory>;

/// The line editor and its printer, or None where the terminal cannot do
/// line editing (TERM=dumb, an Emacs shell buffer...): plain line mode,
/// the scripted session, is the right thing there.
fn line_editor(palette: Palette) -> Option<(LineEditor, out::Printer)> {
    let config = Config::builder()
        .max_history_size(1000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| {
            b.auto_add_history(false)
                .color_mode(if palette.enabled {
                    ColorMode::Enabled
                } else {
                    ColorMode::Disabled
                })
                .build()
        })
        .unwrap_or_default();
    let mut editor = LineEditor::with_config(config).ok()?;
    editor.set_helper(Some(InputHelper { palette }));
    let printer = editor.create_external_printer().ok()?;
    Some((editor, Box::new(printer)))
}

fn interactive_session(
    shared: &Arc<Shared>,
    stream: std::net::TcpStream,
    target: Target,
    palette: Palette,
    mut editor: LineEditor,
    printer: out::Printer,
) -> i32 {
    let out = Arc::new(Out::new(palette, Some(printer)));
    let _ = INTERACTIVE_OUT.set(Arc::clone(&out));
    out.local(&format!(
        "connected to {}; /help lists the commands, /quit or Ctrl-D leaves",
        target.name()
    ));
    if let Err(e) = conn::spawn_reader(Arc::clone(shared), stream, target, Arc::clone(&out)) {
        eprintln!("chat: {e}");
        return 1;
    }

    'typing: loop {
        match editor.readline("> ") {
            Ok(text) => {
                // A paste can carry several lines; each is its own message.
                for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let _ = editor.add_history_entry(line);
                    // Ours, not the server's: after a kick or a ban.
                    if line.trim() == "/reconnect" && shared.ask_reconnect() {
                        continue;
                    }
                    match shared.send(line, false) {
                        Sent::Yes => {}
                        Sent::NotConnected if is_quit(line) => {}
                        Sent::NotConnected => {
                            out.local_error("not connected: that line was not sent")
                        }
                        Sent::Finished => break 'typing,
                    }
                    if is_quit(line) {
                        break 'typing;
                    }
                }
            }
            // Ctrl-D and Ctrl-C both leave: a chat line is cheap to lose,
            // and a Ctrl-C that did not exit would surprise telnet users.
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => break,
            Err(e) => {
                out.local_error(&format!("terminal error: {e}"));
                break;
            }
        }
    }
    out.detach_printer();
    shared.input_done();
    if !shared.quitting() {
        shared.send("/quit", false);
    }
    // Show the server's goodbye, within reason.
    shared.wait_finished(QUIT_GRACE);
    0
}

fn scripted_session(
    shared: &Arc<Shared>,
    stream: std::net::TcpStream,
    target: Target,
    palette: Palette,
    wait: Option<Duration>,
) -> i32 {
    let out = Arc::new(Out::new(palette, None));
    if let Err(e) = conn::spawn_reader(Arc::clone(shared), stream, target, out) {
        eprintln!("chat: {e}");
        return 1;
    }
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::with_capacity(256);
    let mut status = 0;
    loop {
        buf.clear();
        match conn::read_line_bounded(&mut stdin, &mut buf, MAX_LINE) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("chat: reading stdin: {e}");
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        // A write that fails found the connection dead: the reader is
        // reconnecting, and send(.., true) waits for it, so try again rather
        // than drop the line (a script cannot retype it). Bounded, in case
        // every new connection dies at once.
        let mut sent = Sent::NotConnected;
        for _ in 0..3 {
            sent = shared.send(line, true);
            if sent != Sent::NotConnected {
                break;
            }
        }
        match sent {
            Sent::Yes => {}
            Sent::NotConnected => {
                eprintln!("chat: not sent (connection keeps failing): {line}");
                status = 1;
            }
            Sent::Finished => return 1,
        }
        if is_quit(line) {
            break;
        }
    }
    shared.input_done();
    if let Some(wait) = wait
        && !shared.quitting()
    {
        shared.wait_finished(wait);
    }
    // The server handles lines in order and closes only after answering
    // /quit, so once it has closed, every answer to our lines has arrived:
    // this is how "wait until the server has answered" is made exact.
    if !shared.quitting() {
        shared.send("/quit", false);
    }
    shared.wait_finished(QUIT_GRACE);
    status
}
