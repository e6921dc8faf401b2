//! Where log lines go, and what may stop them.
//!
//! Logs are written to stderr one event per line. Two things must never
//! happen, whatever the log destination does:
//!
//! * a failed write (stderr a closed pipe, a full disk) must not panic a
//!   task or stop shutdown: [`LogWriter`] drops the line and reports
//!   success, and the subscriber's own error reporting (an `eprintln!`
//!   that would panic on the same closed stderr) is off;
//! * an untrusted string (a stream name, an origin id, a header) must not
//!   forge a line or reach a terminal as a control sequence: every line
//!   break inside an event and every control character is written escaped
//!   (`\n`, `\x1b`), so one event is always exactly one line.
//!
//! Colour is used only when stderr is a terminal (and `NO_COLOR` is unset);
//! a file or a pipe gets plain text.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` levels (default `info`), text
/// or JSON, on stderr through [`LogWriter`].
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = format == LogFormat::Text && colour_wanted();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .log_internal_errors(false)
        .with_writer(LogWriter { colour });
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Colour only on a terminal, and not when the user asked for none.
fn colour_wanted() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Stderr that never fails and never lets an event span two lines.
#[derive(Debug, Clone, Copy)]
pub struct LogWriter {
    /// The formatter colours its own output: escape sequences it wrote
    /// must pass. Control characters inside field values are escaped by
    /// the formatter in that case; line breaks are still escaped here.
    pub colour: bool,
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            inner: io::stderr(),
            colour: self.colour,
        }
    }
}

/// Writes one formatted event (the subscriber hands it over in one
/// `write_all`) to `inner`, escaped, ignoring errors.
#[derive(Debug)]
pub struct EventWriter<W> {
    pub inner: W,
    pub colour: bool,
}

impl<W: Write> Write for EventWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = escape_event(buf, self.colour);
        // A log line that cannot be written is lost; the proxy goes on.
        let _ = self.inner.write_all(&line);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// One event as one line: a trailing newline is kept, every other line
/// break and control character (ESC too, unless `colour` says the
/// formatter wrote them) becomes a visible escape.
pub fn escape_event(event: &[u8], colour: bool) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let must_escape = |b: u8| match b {
        b'\t' => false,
        0x1b => !colour,
        b => b < 0x20 || b == 0x7f,
    };
    if !body.iter().any(|&b| must_escape(b)) {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if must_escape(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    std::borrow::Cow::Owned(out)
}

/// Prints a line on stderr for the user (start-up errors), never
/// panicking when stderr is gone.
pub fn report(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_line_stays_on_its_own_line() {
        let event = b"INFO origin registered origin=evil\n\x1b[31mFAKE LOG LINE\n";
        let out = escape_event(event, false);
        assert_eq!(
            &*out,
            &b"INFO origin registered origin=evil\\n\\x1b[31mFAKE LOG LINE\n"[..]
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn colour_output_keeps_its_escapes_but_not_extra_lines() {
        let event = b"\x1b[32m INFO\x1b[0m a\r\nb\n";
        assert_eq!(&*escape_event(event, true), &b"\x1b[32m INFO\x1b[0m a\\r\\nb\n"[..]);
        assert_eq!(&*escape_event(event, false), &b"\\x1b[32m INFO\\x1b[0m a\\r\\nb\n"[..]);
    }

    #[test]
    fn clean_lines_are_not_copied() {
        let event = b"INFO\tall fine\n";
        assert!(matches!(escape_event(event, false), std::borrow::Cow::Borrowed(_)));
    }

    /// A writer whose every write fails, like a closed pipe.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_broken_destination_is_not_an_error() {
        let mut w = EventWriter {
            inner: Broken,
            colour: false,
        };
        w.write_all(b"a line\n").unwrap();
        w.flush().unwrap();
    }
}
