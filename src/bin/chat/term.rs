//! Leaving the process without leaving the terminal broken.
//!
//! The line editor puts the terminal in raw mode while it reads and restores
//! it when `readline` returns. But the process can also end while the editor
//! is reading: the server goes away for good (`--no-reconnect`) or a signal
//! arrives. Those exits happen on other threads, which cannot make `readline`
//! return, so the terminal settings from before the editor ever ran are kept
//! here and put back by hand before exiting.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use crossterm::event::DisableBracketedPaste;

/// The terminal settings at start-up, when stdin is a terminal.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Remembers the current settings of the terminal on stdin so `exit` can put
/// them back. Call before the line editor first runs.
pub fn save() {
    let fd = std::io::stdin().as_raw_fd();
    let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `t` is a writable buffer of the size tcgetattr expects, and
    // `fd` is stdin, open for the life of the process.
    let ok = unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } == 0;
    if ok {
        // SAFETY: tcgetattr returned 0, so it filled every field of `t`.
        let t = unsafe { t.assume_init() };
        let _ = SAVED.set(t);
    }
}

/// Puts back the settings from `save` (if any) and turns bracketed paste off
/// again, which the editor turned on.
pub fn restore() {
    let Some(t) = SAVED.get() else { return };
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: `t` points to a valid termios that tcgetattr filled in for this
    // same terminal; tcsetattr only reads it.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) };
    let mut out = std::io::stdout();
    let _ = crossterm::execute!(out, DisableBracketedPaste);
}

/// On a signal that may arrive mid-edit: the line being typed stays on
/// screen and is ended, as the editor does on Ctrl-C, so the shell's next
/// output starts on a row of its own; then the terminal is put back.
pub fn end_line_and_restore(mut stdout: std::io::StdoutLock<'_>) {
    if SAVED.get().is_some() {
        // Raw mode: a bare LF would not return the cursor to column 0.
        let _ = stdout.write_all(b"\r\n");
        let _ = stdout.flush();
    }
    restore();
}

/// Ends the process from any thread with the terminal as it was found.
pub fn exit(code: i32) -> ! {
    restore();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}
