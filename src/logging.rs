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

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

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
        LogFormat::Text if colour => builder.init(),
        LogFormat::Text => builder.fmt_fields(PlainFields).init(),
    }
}

/// The fields of a plain-text (uncoloured) log line, written exactly as
/// the subscriber's default formatter writes them — `name=value`,
/// separated by spaces — with less formatting per field: the default
/// paints every name and `=` through its colour styles even when colour
/// is off, which made up about half of what the request span costs each
/// request. A message, an error, an `r#` name and `log.` metadata go to
/// the default formatter as they are (its escaping and layout for those
/// are kept).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: std::fmt::Result,
}

impl PlainVisitor<'_> {
    /// Lets the default formatter write one field (it writes the space
    /// before it itself).
    fn default_for(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }

    fn is_plain(field: &Field) -> bool {
        let name = field.name();
        name != "message" && !name.starts_with("r#")
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::is_plain(field) {
            self.record_debug(field, &value);
        } else if self.result.is_ok() {
            self.default_for(|inner| inner.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.default_for(|inner| inner.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Log metadata is written by the event's own format, not as fields.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        if !Self::is_plain(field) {
            self.default_for(|inner| inner.record_debug(field, value));
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.is_empty) {
                self.writer.write_char(' ')?;
            }
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        })();
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

    /// The log lines `emit` writes through a plain-text subscriber,
    /// with the default field formatter or [`PlainFields`].
    fn lines_with(plain_fields: bool, emit: fn()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || out.clone());
        if plain_fields {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[derive(Debug)]
    struct Outer(io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("store unavailable")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field the proxy and its libraries log: the plain
    /// formatter's lines are byte for byte the default formatter's.
    #[test]
    fn plain_fields_write_what_the_default_formatter_writes() {
        fn emit() {
            tracing::info!("a message alone");
            tracing::info!(
                stream = %"v.example.com/live/cam",
                count = 3,
                negative = -4i64,
                flag = true,
                ratio = 0.5,
                name = "a quoted str",
                list = ?vec![1, 2],
                "with fields {}",
                7
            );
            tracing::info!(only = 1, fields = "no message");
            tracing::warn!(error = %io::Error::other("refused"), "origin failed");
            let nested = Outer(io::Error::other("connection reset"));
            tracing::warn!(error = &nested as &(dyn std::error::Error + 'static), "store");
            tracing::info!(r#type = "raw", "raw name");
            tracing::info!(log.target = "hyper::proto", log.line = 3, after = 1, "from log");
            tracing::info!("escape \x1b[31m in a message");
            let conn = tracing::info_span!("conn", peer = %"127.0.0.1:5000");
            let _conn = conn.enter();
            let span = tracing::info_span!(
                "request",
                method = %"GET",
                path = %"/live/cam.m3u8",
                stream = tracing::field::Empty,
                origin = tracing::field::Empty,
            );
            let _request = span.enter();
            tracing::warn!("before the stream is known");
            span.record("stream", tracing::field::display("v/live/cam"));
            span.record("origin", tracing::field::display("origin-a"));
            tracing::warn!(status = 502, "inside both spans");
            let empty = tracing::info_span!("empty");
            let _empty = empty.enter();
            tracing::debug!("in a span without fields");
        }
        let default = lines_with(false, emit);
        assert_eq!(default.lines().count(), 11, "{default}");
        assert!(
            default.contains("request{method=GET path=/live/cam.m3u8 stream=v/live/cam origin=origin-a}"),
            "{default}"
        );
        assert_eq!(lines_with(true, emit), default);
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
