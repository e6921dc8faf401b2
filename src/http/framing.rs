//! HTTP/1.1 message framing as the live relay needs it, without decoding
//! the body: an origin's response head, how its body ends, and a scanner
//! that walks chunked framing to count payload bytes and find the last
//! chunk while the bytes themselves pass through untouched.
//!
//! Pure functions over bytes; nothing here touches a socket.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// Largest response head accepted from an origin.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions) and trailer line.
const MAX_LINE: u32 = 4096;
/// Most bytes of trailer fields after the last chunk.
const MAX_TRAILERS: u32 = 16 * 1024;

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    /// `Transfer-Encoding: chunked`: ends with the last chunk.
    Chunked,
    /// `Content-Length`.
    Length(u64),
    /// Read until the origin closes.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The end-to-end fields: the hop-by-hop ones (RFC 9110 §7.6.1:
    /// `Connection`, those it names, `Keep-Alive`, `Transfer-Encoding` …)
    /// describe the origin's connection and are left out.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The origin keeps the connection open after this response: HTTP/1.1
    /// without `Connection: close`.
    pub keep_alive: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Why a response head or chunked body is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed response head: {0}")]
    Head(String),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("interim {0} response where a final one was expected")]
    Interim(u16),
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk line longer than {MAX_LINE} bytes")]
    ChunkLine,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailer fields longer than {MAX_TRAILERS} bytes")]
    Trailers,
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), with
/// `Upgrade`; so are those a `Connection` field names.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: a match on the text, which
/// costs a length test for most names, where comparing with each name of
/// the list costs one comparison each.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Parses a response head from the start of `buf`; `Ok(None)` while it is
/// incomplete.
///
/// The kept fields' values share one copy of the head ([`same_place`]).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, FramingError> {
    // Left uninitialised: httparse writes the slots it fills, and setting
    // a hundred of them on every response costs more than the parse.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => return Err(FramingError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FramingError::Head(e.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(FramingError::HeadTooLarge);
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| FramingError::Head(format!("status {code}")))?;
    if status.is_informational() {
        return Err(FramingError::Interim(code));
    }
    // One look at every field for what frames the body and what the
    // connection fields say.
    let mut fields = Fields::default();
    for h in resp.headers.iter() {
        fields.see(h.name.as_bytes(), h.value);
    }
    let keep_alive = resp.version == Some(1) && !fields.close;
    let framing = fields.framing(status)?;
    let head = Bytes::copy_from_slice(&buf[..len]);
    let shared = |part: &[u8]| same_place(&head, buf, part);
    // Sized for the origin's fields: the proxy's own (CORS, `Server`) are
    // written into the player's head, not added here.
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| FramingError::Head(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_maybe_shared(shared(h.value))
            .map_err(|_| FramingError::Head(format!("value of {name}")))?;
        let named = || {
            resp.headers.iter().any(|c| {
                c.name.eq_ignore_ascii_case("connection")
                    && visible(c.value)
                        .into_iter()
                        .flat_map(|v| v.split(|&b| b == b','))
                        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_str().as_bytes()))
            })
        };
        let hop = is_hop_by_hop(&name) || (fields.names_fields && named());
        if !hop {
            headers.append(name, value);
        }
    }
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
        len,
    }))
}

/// What a head's fields say about its body and connection, gathered
/// field by field.
#[derive(Default)]
struct Fields {
    /// The last transfer coding named, if a `Transfer-Encoding` was seen
    /// (`Some(false)`: not chunked).
    chunked: Option<bool>,
    length: Option<u64>,
    /// A `Content-Length` that is not one number (an error unless a
    /// `Transfer-Encoding` makes it moot).
    bad_length: bool,
    /// `Connection: close`.
    close: bool,
    /// A `Connection` field names other fields (hop-by-hop too).
    names_fields: bool,
}

impl Fields {
    fn see(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked must be the last coding; anything else is read to
            // the close (and Content-Length is ignored, as RFC 9112 says).
            let last =
                visible(value).and_then(|v| v.split(|&b| b == b',').map(<[u8]>::trim_ascii).rfind(|c| !c.is_empty()));
            if let Some(last) = last {
                self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if self.chunked.is_none() {
                self.chunked = Some(false);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(value) = visible(value) else {
                self.bad_length = true;
                return;
            };
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten();
                match n {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in visible(value).into_iter().flat_map(|v| v.split(|&b| b == b',')) {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    self.names_fields = true;
                }
            }
        }
    }

    /// How the body of a response to a GET ends (RFC 9112 §6.3).
    fn framing(&self, status: StatusCode) -> Result<Framing, FramingError> {
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Framing::Empty);
        }
        Ok(match self.chunked {
            Some(true) => Framing::Chunked,
            Some(false) => Framing::Close,
            None if self.bad_length => return Err(FramingError::ContentLength),
            None => self.length.map_or(Framing::Close, Framing::Length),
        })
    }
}

/// `part` of `buf`, taken from `copy`, a copy of `buf`'s start: a head's
/// values share one copy of it (one allocation, not one per value, and
/// not the read buffer, which they would keep alive).
pub(crate) fn same_place(copy: &Bytes, buf: &[u8], part: &[u8]) -> Bytes {
    if part.is_empty() {
        return Bytes::new();
    }
    let at = part.as_ptr() as usize - buf.as_ptr() as usize;
    copy.slice(at..at + part.len())
}

/// A value as text, when it is (visible ASCII and tabs).
fn visible(value: &[u8]) -> Option<&[u8]> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
        .then_some(value)
}
/// What one call to [`ChunkScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Payload bytes (chunk data) among the bytes scanned.
    pub payload: u64,
    /// The last chunk and its trailers ended after this many bytes of the
    /// input; what follows is not part of the body.
    pub end: Option<usize>,
}

/// Walks a chunked body as it passes: counts chunk data, finds the end.
/// Chunk data is skipped in one step; only the few framing bytes are
/// looked at one by one.
#[derive(Debug, Clone, Default)]
pub struct ChunkScanner {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading hex digits of a chunk size.
    #[default]
    SizeStart,
    Size {
        size: u64,
        line: u32,
    },
    /// After the size: extensions up to CR.
    Extension {
        size: u64,
        line: u32,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk's line: a trailer line or the final CRLF.
    TrailerStart {
        total: u32,
    },
    Trailer {
        total: u32,
    },
    TrailerLf {
        total: u32,
    },
    FinalLf,
    Done,
}

impl ChunkScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the last chunk and its trailers have passed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Chunk data that may pass next without being looked at: what is left
    /// of the current chunk's data; 0 when framing bytes come next.
    pub fn data_left(&self) -> u64 {
        match self.state {
            State::Data { left } => left,
            _ => 0,
        }
    }

    /// Accounts for `n` bytes of chunk data that passed unseen, as
    /// [`scan`](Self::scan) would have; `n` is at most
    /// [`data_left`](Self::data_left).
    pub fn pass(&mut self, n: u64) {
        let left = self.data_left();
        assert!(n <= left, "{n} bytes passed with {left} of chunk data left");
        if n > 0 {
            self.state = if n == left {
                State::DataCr
            } else {
                State::Data { left: left - n }
            };
        }
    }

    /// Scans the next bytes of the body.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Scanned, FramingError> {
        let mut payload = 0u64;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Data { left } => {
                    let n = left.min((bytes.len() - i) as u64);
                    payload += n;
                    i += n as usize;
                    self.state = if n == left {
                        State::DataCr
                    } else {
                        State::Data { left: left - n }
                    };
                    continue;
                }
                State::SizeStart => match hex(b) {
                    Some(d) => State::Size { size: d, line: 1 },
                    None => return Err(FramingError::ChunkSize),
                },
                State::Size { size, line } => match hex(b) {
                    Some(d) => {
                        if size >> 60 != 0 {
                            return Err(FramingError::ChunkSize);
                        }
                        State::Size {
                            size: size << 4 | d,
                            line: next_line(line)?,
                        }
                    }
                    None if b == b'\r' => State::SizeLf { size },
                    None if matches!(b, b';' | b' ' | b'\t') => State::Extension {
                        size,
                        line: next_line(line)?,
                    },
                    None => return Err(FramingError::ChunkSize),
                },
                State::Extension { size, line } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(FramingError::ChunkSize),
                    _ => State::Extension {
                        size,
                        line: next_line(line)?,
                    },
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::TrailerStart { total: 0 },
                    b'\n' => State::Data { left: size },
                    _ => return Err(FramingError::ChunkSize),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(FramingError::ChunkEnd),
                },
                State::DataLf => match b {
                    b'\n' => State::SizeStart,
                    _ => return Err(FramingError::ChunkEnd),
                },
                State::TrailerStart { total } => match b {
                    b'\r' => State::FinalLf,
                    _ => State::Trailer {
                        total: next_trailer(total)?,
                    },
                },
                State::Trailer { total } => match b {
                    b'\r' => State::TrailerLf { total },
                    _ => State::Trailer {
                        total: next_trailer(total)?,
                    },
                },
                State::TrailerLf { total } => match b {
                    b'\n' => State::TrailerStart { total },
                    _ => return Err(FramingError::Trailers),
                },
                State::FinalLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(Scanned {
                            payload,
                            end: Some(i + 1),
                        });
                    }
                    _ => return Err(FramingError::Trailers),
                },
                State::Done => {
                    return Ok(Scanned { payload, end: Some(i) });
                }
            };
            i += 1;
        }
        let end = (self.state == State::Done).then_some(bytes.len());
        Ok(Scanned { payload, end })
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

fn next_line(line: u32) -> Result<u32, FramingError> {
    if line >= MAX_LINE {
        return Err(FramingError::ChunkLine);
    }
    Ok(line + 1)
}

fn next_trailer(total: u32) -> Result<u32, FramingError> {
    if total >= MAX_TRAILERS {
        return Err(FramingError::Trailers);
    }
    Ok(total + 1)
}

/// `parts` as a chunked body: a chunk each, then the last chunk.
#[cfg(test)]
pub(crate) fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(format!("{:x}\r\n", p.len()).bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_head_gives_status_headers_and_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\nbody";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-type"], "video/x-flv");
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(&raw[head.len..], b"body");
        assert!(parse_head(&raw[..20]).unwrap().is_none(), "incomplete");
    }

    /// The match and the list name the same fields.
    #[test]
    fn the_hop_by_hop_match_is_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for other in [
            "content-length",
            "host",
            "server",
            "connections",
            "t",
            "x-upgrade",
            "proxy-connection",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_and_say_whether_the_connection_stays() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                   Transfer-Encoding: chunked\r\nServer: SRS/7\r\nX-End: a\r\nX-End: b\r\nUpgrade: h2c\r\n\
                   TE: trailers\r\nTrailer: x\r\nProxy-Authenticate: y\r\nContent-Length: 4\r\n\r\n";
        let head = parse_head(raw.as_bytes()).unwrap().unwrap();
        let kept: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let expected = [
            ("server", "SRS/7"),
            ("x-end", "a"),
            ("x-end", "b"),
            ("content-length", "4"),
        ];
        assert_eq!(kept, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        let keeps = |raw: &str| parse_head(raw.as_bytes()).unwrap().unwrap().keep_alive;
        assert!(!keeps("HTTP/1.1 200 OK\r\nConnection: X-A, Close\r\n\r\n"));
        assert!(!keeps("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(keeps("HTTP/1.1 200 OK\r\n\r\n"));
    }

    /// The framing and fields as they were found before the head was
    /// read field by field: through a `HeaderMap`, then the hop-by-hop
    /// fields removed from it.
    /// A head as the tests compare it: framing, keep-alive, fields.
    type Read = Result<(Framing, bool, Vec<(String, Vec<u8>)>), FramingError>;

    fn through_a_map(raw: &[u8]) -> Read {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        resp.parse(raw).map_err(|e| FramingError::Head(e.to_string()))?;
        let status = StatusCode::from_u16(resp.code.unwrap()).unwrap();
        let mut headers = HeaderMap::new();
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| FramingError::Head("name".into()))?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| FramingError::Head("value".into()))?;
            headers.append(name, value);
        }
        let text = |name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect::<Vec<_>>()
        };
        let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            match text(header::TRANSFER_ENCODING).into_iter().rfind(|c| !c.is_empty()) {
                Some(c) if c.eq_ignore_ascii_case("chunked") => Framing::Chunked,
                _ => Framing::Close,
            }
        } else {
            let mut length = None;
            for value in headers.get_all(header::CONTENT_LENGTH) {
                for part in value.to_str().map_err(|_| FramingError::ContentLength)?.split(',') {
                    let part = part.trim();
                    let n: u64 = part.parse().map_err(|_| FramingError::ContentLength)?;
                    if part.starts_with('+') || length.is_some_and(|l| l != n) {
                        return Err(FramingError::ContentLength);
                    }
                    length = Some(n);
                }
            }
            length.map_or(Framing::Close, Framing::Length)
        };
        let keep_alive =
            resp.version == Some(1) && !text(header::CONNECTION).iter().any(|t| t.eq_ignore_ascii_case("close"));
        crate::http::forward::strip_hop_by_hop(&mut headers);
        let fields = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        Ok((framing, keep_alive, fields))
    }

    proptest! {
        /// Field by field, the head reads as it did through a map.
        #[test]
        fn fields_read_as_through_a_map(
            version in 0..2u8,
            status in prop::sample::select(vec![200u16, 204, 304, 404]),
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "Content-Length", "content-length", "Transfer-Encoding", "Connection",
                        "X-A", "x-b", "Server", "Keep-Alive", "TE", "Upgrade",
                    ]),
                    prop::sample::select(vec![
                        "5", " 5 ", "5, 5", "5,6", "", "+5", "-1", "99999999999999999999", "chunked",
                        "gzip, chunked", "chunked, gzip", "gzip,", "close", "Keep-Alive", "x-a",
                        "X-B, close", "caf\u{e9}", "a\tb",
                    ]),
                ),
                0..7,
            ),
        ) {
            let mut raw = format!("HTTP/1.{version} {status} X\r\n").into_bytes();
            for (name, value) in &fields {
                raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            let now = parse_head(&raw).map(|h| {
                let h = h.unwrap();
                let fields: Vec<(String, Vec<u8>)> =
                    h.headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
                (h.framing, h.keep_alive, fields)
            });
            // A map's removals reorder what is left; each name's values
            // keep their order.
            let by_name = |r: Read| {
                r.map(|(f, k, mut fields)| {
                    fields.sort_by(|a, b| a.0.cmp(&b.0));
                    (f, k, fields)
                })
            };
            prop_assert_eq!(by_name(now), by_name(through_a_map(&raw)));
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let frame = |extra: &str| {
            let raw = format!("HTTP/1.1 200 OK\r\n{extra}\r\n");
            parse_head(raw.as_bytes()).map(|h| h.unwrap().framing)
        };
        assert_eq!(frame("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(frame("Content-Length: 12, 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(
            frame("Content-Length: 12\r\nContent-Length: 13\r\n"),
            Err(FramingError::ContentLength)
        );
        assert_eq!(frame("Content-Length: -1\r\n"), Err(FramingError::ContentLength));
        assert_eq!(
            frame("Content-Length: 99999999999999999999999\r\n"),
            Err(FramingError::ContentLength)
        );
        assert_eq!(frame(""), Ok(Framing::Close));
        assert_eq!(frame("Transfer-Encoding: gzip, chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(frame("Transfer-Encoding: chunked, gzip\r\n"), Ok(Framing::Close));
        assert_eq!(
            frame("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            Ok(Framing::Chunked),
            "TE wins over CL"
        );
        let no_content = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!(no_content.framing, Framing::Empty);
        assert_eq!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap_err(),
            FramingError::Interim(100)
        );
    }

    #[test]
    fn nasty_heads_are_refused() {
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"SRS/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_head(&huge).unwrap_err(), FramingError::HeadTooLarge);
    }

    #[test]
    fn the_scanner_counts_payload_and_finds_the_end() {
        let body = chunked(&[&b"hello"[..], &b"world!"[..]]);
        let mut s = ChunkScanner::new();
        let got = s.scan(&body).unwrap();
        assert_eq!(
            got,
            Scanned {
                payload: 11,
                end: Some(body.len())
            }
        );
        assert!(s.is_done());

        let with_ext = b"5;name=value\r\nhello\r\n0;x\r\nTrailer: 1\r\n\r\nNEXT";
        let mut s = ChunkScanner::new();
        assert_eq!(
            s.scan(with_ext).unwrap(),
            Scanned {
                payload: 5,
                end: Some(with_ext.len() - 4)
            }
        );
    }

    #[test]
    fn broken_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
            b"5;\n",
            b"0\r\nTrailer\rX",
        ] {
            let mut s = ChunkScanner::new();
            assert!(s.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut s = ChunkScanner::new();
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'e', MAX_LINE as usize));
        assert_eq!(s.scan(&long).unwrap_err(), FramingError::ChunkLine);
    }

    proptest! {
        /// However the bytes are split, the scanner counts every payload
        /// byte once and ends exactly at the last chunk.
        #[test]
        fn any_split_gives_the_same_count(
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in prop::collection::vec(0usize..2000, 0..6),
            trailing in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).filter(|p| !p.is_empty()).collect();
            let body = chunked(&parts);
            let mut all = body.clone();
            all.extend_from_slice(&trailing);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
            cuts.sort_unstable();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(all.len());
            let mut s = ChunkScanner::new();
            let (mut payload, mut end) = (0, None);
            for w in bounds.windows(2) {
                if end.is_some() {
                    break;
                }
                let got = s.scan(&all[w[0]..w[1]]).unwrap();
                payload += got.payload;
                end = got.end.map(|e| w[0] + e);
            }
            let expected: usize = parts.iter().map(|p| p.len()).sum();
            prop_assert_eq!(payload, expected as u64);
            prop_assert_eq!(end, Some(body.len()));
        }

        /// A relay that lets chunk data pass unseen (`pass`, up to
        /// `data_left`) and only shows the scanner a few bytes after each
        /// (at most `peek` of them) counts and ends exactly as one that
        /// scanned everything.
        #[test]
        fn passing_data_unseen_counts_as_scanning_it(
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..8),
            peek in 1usize..40,
            step in 1u64..5000,
        ) {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).filter(|p| !p.is_empty()).collect();
            let body = chunked(&parts);
            let mut s = ChunkScanner::new();
            let (mut at, mut payload, mut end) = (0usize, 0u64, None);
            while end.is_none() {
                let blind = s.data_left().min(step);
                if blind > 0 {
                    s.pass(blind);
                    payload += blind;
                    at += blind as usize;
                    continue;
                }
                let seen = &body[at..(at + peek).min(body.len())];
                prop_assert!(!seen.is_empty(), "ran past the body at {}", at);
                let got = s.scan(seen).unwrap();
                payload += got.payload;
                end = got.end.map(|e| at + e);
                at += seen.len();
            }
            let expected: usize = parts.iter().map(|p| p.len()).sum();
            prop_assert_eq!(payload, expected as u64);
            prop_assert_eq!(end, Some(body.len()));
        }

        /// Garbage never panics the scanner or the head parser.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = ChunkScanner::new().scan(&bytes);
            let _ = parse_head(&bytes);
        }
    }
}
