//! Where printed lines go: above the line being typed (interactive), or
//! stdout for server lines and stderr for the client's own messages (scripted,
//! so a script reading stdout gets exactly what the server said).

use std::io::Write;
use std::sync::Mutex;

use rustyline::ExternalPrinter;

use crate::display::Palette;
use crate::term;

pub type Printer = Box<dyn ExternalPrinter + Send>;

pub struct Out {
    pub palette: Palette,
    /// Set while the line editor may be on screen; the editor then draws
    /// each line above its prompt and redraws the half-typed input below.
    printer: Mutex<Option<Printer>>,
    interactive: bool,
}

impl Out {
    pub fn new(palette: Palette, printer: Option<Printer>) -> Out {
        Out {
            palette,
            interactive: printer.is_some(),
            printer: Mutex::new(printer),
        }
    }

    /// A sanitized line from the server.
    pub fn server(&self, line: &str) {
        let text = self.palette.server(line);
        if !self.print_above(&text) {
            let mut out = std::io::stdout().lock();
            let written = writeln!(out, "{text}").and_then(|()| out.flush());
            // Nobody reads any more (`chat | head -3`): stop, as a program
            // killed by SIGPIPE would, rather than chat on unheard.
            if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
                drop(out);
                term::exit(128 + libc::SIGPIPE);
            }
        }
    }

    /// A message from the client itself.
    pub fn local(&self, text: &str) {
        self.local_line(text, false);
    }

    pub fn local_error(&self, text: &str) {
        self.local_line(text, true);
    }

    fn local_line(&self, text: &str, error: bool) {
        if self.interactive {
            let line = self.palette.local(text, error);
            if !self.print_above(&line) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        } else {
            eprintln!("chat: {text}");
        }
    }

    /// Says why the client stops, then ends the process from any thread. The
    /// editor's printer is bypassed: it draws asynchronously, on the main
    /// thread, which would not get to it before the exit.
    pub fn fatal(&self, text: &str, code: i32) -> ! {
        self.detach_printer();
        term::restore();
        if self.interactive {
            // The half-typed line stays on screen; start below it.
            println!("\n{}", self.palette.local(text, true));
        } else {
            eprintln!("chat: {text}");
        }
        term::exit(code)
    }

    /// After the editor's last `readline`, lines go straight to stdout: a
    /// line queued for an editor that never reads again would be lost.
    pub fn detach_printer(&self) {
        if let Ok(mut p) = self.printer.lock() {
            *p = None;
        }
    }

    fn print_above(&self, text: &str) -> bool {
        let Ok(mut guard) = self.printer.lock() else {
            return false;
        };
        match guard.as_mut() {
            // The editor adds the newline only while it is reading, and
            // writes the text as is otherwise: always end with one.
            Some(p) => p.print(format!("{text}\n")).is_ok(),
            None => false,
        }
    }
}
