//! The streaming listener's connections: plain `GET` and `HEAD` requests
//! are read, answered and written here, on the raw socket; anything else
//! goes to hyper ([`HttpServer`]) with the bytes already read.
//!
//! Nearly every request a player sends is plain: a playlist reload, a
//! segment, a live stream. Serving them without hyper's connection
//! machinery roughly halves the work around each one (hyper's dispatcher,
//! its boxed service future, encoder and buffers), which is what a short
//! HLS request costs most at one connection.
//!
//! # What is plain
//!
//! A complete head within `http_max_header_bytes` that `httparse` accepts,
//! with at most [`SLOTS`] fields, method `GET` or `HEAD`, HTTP/1.0 or
//! HTTP/1.1, an origin-form target, and no body (no `Transfer-Encoding`, no
//! `Content-Length` other than 0), no `Expect` and no `Upgrade`. Every
//! other request, including every malformed or oversized one, is handed to
//! hyper as it arrived, which answers it as it answers any request on the
//! system API (400, 431, 405 …), so the refusals stay the same.
//!
//! # Answers
//!
//! The limits of [`check_request`](super::serve::check_request) apply
//! before any handler, as on hyper's path. A response is written the way
//! hyper writes it: HTTP/1.0 answered in HTTP/1.0, a known length as
//! `Content-Length`, an unknown one chunked (HTTP/1.1) or ended by closing
//! (HTTP/1.0), no body for `HEAD`, 204 and 304, a `Date`, and
//! `Connection: close`/`keep-alive` where the connection's fate differs
//! from the version's default. A response carrying a
//! [`Detach`](super::serve::Detach) gets the socket itself.
//!
//! # Connection
//!
//! Each head must arrive within `http_header_timeout`; before the first
//! request that is a slowloris (refused, counted), after it an idle
//! keep-alive connection closing. When draining starts, an idle connection
//! closes at once and a request in flight is answered with
//! `Connection: close`. A body that fails midway cuts the connection.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::serve::{Detach, HttpServer};
use super::Body;
use crate::listener::Handler;

/// Header fields parsed on this path; a head with more goes to hyper
/// (hyper's own array holds as many).
pub const SLOTS: usize = 100;
/// Room made for the first read of a request head (a player's is a few
/// hundred bytes); it doubles while a longer head arrives. Kept small: an
/// idle keep-alive connection holds it.
const READ_SIZE: usize = 1024;
/// Most body bytes written together with the head in one write.
const WITH_HEAD: usize = 16 * 1024;

/// What the bytes read so far hold.
// Returned once per request and taken apart at once: boxing the request
// would cost an allocation each time for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Incomplete,
    /// A plain request, its head `len` bytes long.
    Plain {
        req: Request<()>,
        len: usize,
        /// The connection stays open after the answer, by the request's
        /// version and `Connection` field.
        keep_alive: bool,
    },
    /// Anything else: for hyper.
    Other,
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; SLOTS];
    let mut head = httparse::Request::new(&mut []);
    let len = match head.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(_) => return Parsed::Other,
    };
    let method = match head.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let version = match head.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Other,
    };
    let Some(path) = head.path.filter(|p| p.starts_with('/')) else {
        return Parsed::Other;
    };
    // The target and the values share one copy of the head.
    let copy = Bytes::copy_from_slice(&buf[..len]);
    let shared = |part: &[u8]| super::framing::same_place(&copy, buf, part);
    let Ok(uri) = Uri::from_maybe_shared(shared(path.as_bytes())) else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    let (mut close, mut keep) = (false, false);
    for field in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_maybe_shared(shared(field.value)),
        ) else {
            return Parsed::Other;
        };
        if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return Parsed::Other;
        }
        if name == header::CONTENT_LENGTH && value.as_bytes().trim_ascii() != b"0" {
            return Parsed::Other;
        }
        if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Parsed::Plain { req, len, keep_alive }
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None is written (`HEAD`, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    Close,
}

/// The head of `parts` as it goes to a client that sent an HTTP `version`
/// request (`head`: it was a `HEAD`), for a body of `length` bytes if
/// known: the bytes, how the body follows, and whether the connection
/// stays open after it (`keep_alive`: as far as the request and the drain
/// go). The fields the framing needs are written after the handler's,
/// straight into the bytes, and with `standard` the
/// [standard fields](super::standard_fields) the handler did not set.
pub fn encode_head(
    parts: &http::response::Parts,
    version: Version,
    head: bool,
    length: Option<u64>,
    mut keep_alive: bool,
    standard: bool,
) -> (Vec<u8>, Framing, bool) {
    let status = parts.status;
    let headers = &parts.headers;
    // One allocation: the fields, what is added to them (status line,
    // framing, connection, date: at most about 170 bytes; the standard
    // fields), and a short body, which `write_response` sends in the same
    // write.
    let standard_fields = super::standard_fields();
    let mut fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if standard {
        fields += STANDARD_BYTES.get_or_init(|| {
            standard_fields
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum()
        });
    }
    let body = match length {
        Some(n) if !head && n <= WITH_HEAD as u64 => n as usize,
        _ => 0,
    };
    let mut out = Vec::with_capacity(fields + 192 + body);
    match (version, status) {
        (Version::HTTP_10, _) => out.extend_from_slice(b"HTTP/1.0 "),
        (_, StatusCode::OK) => out.extend_from_slice(b"HTTP/1.1 200 OK\r\n"),
        _ => out.extend_from_slice(b"HTTP/1.1 "),
    }
    if version == Version::HTTP_10 || status != StatusCode::OK {
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let (mut has_length, mut has_connection, mut has_date) = (false, false, false);
    // Bit i: the handler set standard field i (or none is to be added).
    let mut set: u8 = if standard { 0 } else { u8::MAX };
    for (name, value) in headers.iter() {
        if let Some(i) = standard_fields.iter().position(|(n, _)| n == name) {
            set |= 1 << i;
        }
        if name == header::CONTENT_LENGTH {
            has_length = true;
        } else if name == header::CONNECTION {
            has_connection = true;
            keep_alive &= !value.as_bytes().eq_ignore_ascii_case(b"close");
        } else if name == header::DATE {
            has_date = true;
        }
        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (i, (name, value)) in standard_fields.iter().enumerate() {
        if set & (1 << i) == 0 {
            line(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if has_length || length.is_some() {
        // As hyper: a `HEAD` answer with an empty body says no length
        // (the `GET` might have had one).
        if let (false, Some(n)) = (has_length, length) {
            if n > 0 || !head {
                line(&mut out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            }
        }
        if head {
            Framing::None
        } else {
            Framing::Length
        }
    } else if head {
        Framing::None
    } else if version == Version::HTTP_11 {
        line(&mut out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !has_connection {
        if version == Version::HTTP_10 && keep_alive {
            line(&mut out, b"connection", b"keep-alive");
        } else if version == Version::HTTP_11 && !keep_alive {
            line(&mut out, b"connection", b"close");
        }
    }
    if !has_date {
        DATE.with_borrow_mut(|date| line(&mut out, b"date", date.now()));
    }
    out.extend_from_slice(b"\r\n");
    (out, framing, keep_alive)
}

/// The length of the standard fields on the wire.
static STANDARD_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE: std::cell::RefCell<Date> = const { std::cell::RefCell::new(Date { second: 0, text: [0; 29] }) };
}

/// The `Date` value, formatted once per second per thread.
struct Date {
    second: u64,
    text: [u8; 29],
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = std::time::SystemTime::now();
        let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            // Always 29 bytes: "Sun, 06 Nov 1994 08:49:37 GMT".
            let text = httpdate::fmt_http_date(now);
            if let Ok(text) = <[u8; 29]>::try_from(text.as_bytes()) {
                self.text = text;
                self.second = second;
            }
        }
        &self.text
    }
}

/// Writes the response: head, then the body by its framing. `Err` when
/// the client or the body failed midway (the connection is then cut).
async fn write_response(
    tcp: &mut TcpStream,
    resp: Response<Body>,
    version: Version,
    head: bool,
    keep_alive: bool,
    standard: bool,
) -> std::io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let length = body.size_hint().exact();
    let (mut out, framing, keep_alive) = encode_head(&parts, version, head, length, keep_alive, standard);
    if framing == Framing::None {
        tcp.write_all(&out).await?;
        return Ok(keep_alive);
    }
    let mut head_sent = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if framing == Framing::Chunked {
            let size = format!("{:x}\r\n", data.len());
            if head_sent {
                write_all_vectored(
                    tcp,
                    &mut [
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            } else {
                head_sent = true;
                write_all_vectored(
                    tcp,
                    &mut [
                        IoSlice::new(&out),
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            }
        } else if head_sent {
            tcp.write_all(&data).await?;
        } else {
            head_sent = true;
            if data.len() <= WITH_HEAD {
                out.extend_from_slice(&data);
                tcp.write_all(&out).await?;
            } else {
                write_all_vectored(tcp, &mut [IoSlice::new(&out), IoSlice::new(&data)]).await?;
            }
        }
    }
    if !head_sent {
        tcp.write_all(&out).await?;
    }
    if framing == Framing::Chunked {
        tcp.write_all(b"0\r\n\r\n").await?;
    }
    Ok(keep_alive)
}

/// Writes every byte of `bufs`, in as few system calls as the socket
/// takes them.
async fn write_all_vectored(tcp: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = tcp.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// The streaming listener's connection handler: plain requests here, the
/// rest through `hyper`.
#[derive(Clone)]
pub struct PlainServer<A, P> {
    hyper: HttpServer<A>,
    answer: P,
}

impl<A, F, P, G> PlainServer<A, P>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    P: Fn(Request<()>, SocketAddr) -> G + Clone + Send + Sync + 'static,
    G: Future<Output = Response<Body>> + Send + 'static,
{
    /// `answer` answers plain requests, `hyper` serves the others.
    pub fn new(hyper: HttpServer<A>, answer: P) -> Self {
        Self { hyper, answer }
    }
}

/// How waiting for a request head ended.
enum Wait {
    Read(std::io::Result<usize>),
    Drained,
    TimedOut,
}

impl<A, F, P, G> Handler for PlainServer<A, P>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    P: Fn(Request<()>, SocketAddr) -> G + Clone + Send + Sync + 'static,
    G: Future<Output = Response<Body>> + Send + 'static,
{
    async fn serve(&self, mut tcp: TcpStream, peer: SocketAddr) {
        let ctx = self.hyper.context();
        let (timeout, max_head) = (ctx.config.http_header_timeout, ctx.config.http_max_header_bytes);
        let mut drain = ctx.shutdown.drain_watch();
        let mut buf = BytesMut::new();
        let mut served = false;
        let mut timer = crate::context::KeptTimer::default();
        loop {
            // The next request head, within the header timeout.
            let mut deadline = None;
            let parsed = loop {
                if !buf.is_empty() {
                    match parse_request(&buf) {
                        Parsed::Incomplete if buf.len() < max_head => {}
                        Parsed::Incomplete => break Parsed::Other,
                        Parsed::Plain { len, .. } if len > max_head => break Parsed::Other,
                        parsed => break parsed,
                    }
                }
                if ctx.shutdown.is_draining() {
                    return;
                }
                if buf.capacity() - buf.len() < READ_SIZE / 4 {
                    buf.reserve(READ_SIZE.max(buf.len()));
                }
                let wait = poll_fn(|cx| {
                    if drain.poll_cancelled(cx) {
                        return Poll::Ready(Wait::Drained);
                    }
                    if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut tcp), cx, &mut buf) {
                        return Poll::Ready(Wait::Read(r));
                    }
                    // The deadline (a clock read) only once the client
                    // makes us wait; the connection's kept timer serves
                    // every head.
                    let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
                    timer.poll_until(cx, until).map(|()| Wait::TimedOut)
                })
                .await;
                match wait {
                    Wait::Read(Ok(0)) => return,
                    Wait::Read(Ok(_)) => {}
                    Wait::Read(Err(e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        return;
                    }
                    Wait::Drained => return,
                    Wait::TimedOut if served => return,
                    Wait::TimedOut => {
                        self.hyper.refused("header_timeout");
                        tracing::info!("no request head within the header timeout; closed");
                        return;
                    }
                }
            };
            let (req, len, keep_alive) = match parsed {
                Parsed::Plain { req, len, keep_alive } => (req, len, keep_alive),
                Parsed::Incomplete | Parsed::Other => {
                    Box::pin(self.hyper.serve_from(tcp, peer, buf.freeze(), served)).await;
                    return;
                }
            };
            served = true;
            buf.advance(len);
            let (version, head) = (req.version(), req.method() == Method::HEAD);
            // A refusal goes as hyper's path sends it: without the
            // standard fields an answer gets.
            let (resp, standard) = match self.hyper.refusal(&req) {
                Some(refusal) => (refusal, false),
                // Boxed: the handler's future is large (the deepest stream
                // path), and inline it would stay part of this task's
                // allocation for as long as a live relay runs.
                None => (Box::pin((self.answer)(req, peer)).await, true),
            };
            if let Some(detached) = resp.extensions().get::<Detach>().and_then(Detach::take) {
                // A live relay holds the connection from here on: nothing
                // of the request's reading stays allocated meanwhile.
                drop((buf, timer, drain));
                let (mut parts, _) = resp.into_parts();
                super::add_standard_fields(&mut parts.headers);
                detached(tcp, parts).await;
                return;
            }
            let keep_alive = keep_alive && !ctx.shutdown.is_draining();
            // Boxed for the same reason as the handler's future.
            match Box::pin(write_response(&mut tcp, resp, version, head, keep_alive, standard)).await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tcp.shutdown().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "response cut short; connection closed");
                    return;
                }
            }
        }
    }

    async fn refuse(&self, tcp: TcpStream, peer: SocketAddr) {
        self.hyper.refuse(tcp, peer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(head: &str) -> (Request<()>, usize, bool) {
        match parse_request(head.as_bytes()) {
            Parsed::Plain { req, len, keep_alive } => (req, len, keep_alive),
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn is_other(head: &str) -> bool {
        matches!(parse_request(head.as_bytes()), Parsed::Other)
    }

    #[test]
    fn plain_requests_parse_with_their_fields() {
        let text = "GET /live/a.m3u8?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next";
        let (req, len, keep) = plain(text);
        assert_eq!(len, text.find("GET /next").unwrap());
        assert!(keep);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().path(), "/live/a.m3u8");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()["host"], "h");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        let (req, _, keep) = plain("HEAD /a.ts HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            (req.method(), req.version(), keep),
            (&Method::HEAD, Version::HTTP_10, false)
        );
    }

    #[test]
    fn connection_fields_decide_keep_alive() {
        assert!(!plain("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").2);
        assert!(!plain("GET / HTTP/1.1\r\nConnection: Upgrade-Not, CLOSE\r\n\r\n").2);
        assert!(plain("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").2);
        assert!(!plain("GET / HTTP/1.0\r\n\r\n").2);
        assert!(!plain("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").2);
    }

    #[test]
    fn anything_not_plain_goes_to_hyper() {
        assert!(matches!(
            parse_request(b"GET /a.flv HTTP/1.1\r\nHost"),
            Parsed::Incomplete
        ));
        assert!(matches!(parse_request(b""), Parsed::Incomplete));
        assert!(is_other("POST /a HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(is_other("OPTIONS /a HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(is_other("GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
        assert!(is_other("GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(is_other("GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(is_other("GET /a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        assert!(is_other("GET http://h/a HTTP/1.1\r\n\r\n"));
        assert!(is_other("GET * HTTP/1.1\r\n\r\n"));
        assert!(is_other("GET /a HTTP/2.0\r\n\r\n"));
        assert!(is_other("GET /a\x01 HTTP/1.1\r\n\r\n"));
        assert!(is_other("GET /a HTTP/1.1\r\nBad Name: v\r\n\r\n"));
        let many: String = (0..=SLOTS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(is_other(&format!("GET /a HTTP/1.1\r\n{many}\r\n")));
    }

    fn head_of(
        status: u16,
        headers: &[(&str, &str)],
        version: Version,
        head: bool,
        length: Option<u64>,
        keep: bool,
    ) -> (String, Framing, bool) {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let (bytes, framing, keep) = encode_head(&parts, version, head, length, keep, false);
        (String::from_utf8(bytes).unwrap(), framing, keep)
    }

    /// An answer's head carries the standard fields its handler did not
    /// set, once each, and as `add_standard_fields` puts them in a map; a
    /// refusal's carries none.
    #[test]
    fn answers_get_the_standard_fields_the_handler_did_not_set() {
        let mut b = Response::builder()
            .header("access-control-allow-origin", "https://a.example")
            .header("content-type", "text/plain");
        b = b.header("server", "origin/1");
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let (out, _, _) = encode_head(&parts, Version::HTTP_11, false, Some(0), true, true);
        let text = String::from_utf8(out).unwrap();
        let mut expected = parts.headers.clone();
        super::super::add_standard_fields(&mut expected);
        for (name, value) in &expected {
            let line = format!("\r\n{name}: {}\r\n", value.to_str().unwrap());
            assert_eq!(text.matches(&line).count(), 1, "{line:?} once in {text}");
        }
        assert_eq!(text.matches("access-control-allow-origin").count(), 1, "{text}");
        assert_eq!(text.matches("server:").count(), 1, "{text}");
        assert_eq!(expected.len(), 6);

        let (out, _, _) = encode_head(&parts, Version::HTTP_11, false, Some(0), true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("access-control-allow-methods"), "{text}");
    }

    /// The head is made in one allocation with room for a short body
    /// (sent in the same write), long CORS values and all.
    #[test]
    fn the_head_has_room_for_a_short_body() {
        let (parts, ()) = Response::new(()).into_parts();
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let (out, framing, _) = encode_head(&parts, version, false, Some(400), true, true);
            assert_eq!(framing, Framing::Length);
            assert!(out.capacity() >= out.len() + 400, "{} of {}", out.len(), out.capacity());
        }
        let (out, _, _) = encode_head(&parts, Version::HTTP_11, false, Some(1 << 20), true, true);
        assert!(out.capacity() < 4096, "a long body is not reserved for");
    }

    #[test]
    fn responses_are_framed_as_hyper_frames_them() {
        let (text, framing, keep) = head_of(200, &[("content-type", "x")], Version::HTTP_11, false, Some(5), true);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 5\r\n") && text.contains("\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n") && !text.contains("connection"), "{text}");
        assert_eq!((framing, keep), (Framing::Length, true));

        let (text, framing, keep) = head_of(200, &[], Version::HTTP_11, false, None, true);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!((framing, keep), (Framing::Chunked, true));

        let (text, framing, keep) = head_of(200, &[], Version::HTTP_10, false, None, true);
        assert!(
            text.starts_with("HTTP/1.0 200 OK\r\n") && !text.contains("keep-alive"),
            "{text}"
        );
        assert_eq!((framing, keep), (Framing::Close, false));

        let (text, framing, keep) = head_of(200, &[("content-length", "9")], Version::HTTP_10, false, None, true);
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert_eq!((framing, keep), (Framing::Length, true));

        let (text, framing, _) = head_of(200, &[], Version::HTTP_11, true, Some(7), true);
        assert!(text.contains("content-length: 7\r\n"), "HEAD keeps the length: {text}");
        assert_eq!(framing, Framing::None);

        let (text, framing, keep) = head_of(404, &[], Version::HTTP_11, false, Some(3), false);
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\n") && text.contains("connection: close\r\n"),
            "{text}"
        );
        assert_eq!((framing, keep), (Framing::Length, false));

        let (text, framing, _) = head_of(200, &[], Version::HTTP_11, true, Some(0), true);
        assert!(
            !text.contains("content-length"),
            "an empty HEAD body says no length: {text}"
        );
        assert_eq!(framing, Framing::None);
        let (text, _, _) = head_of(200, &[], Version::HTTP_11, false, Some(0), true);
        assert!(text.contains("content-length: 0\r\n"), "{text}");

        let (_, framing, _) = head_of(304, &[], Version::HTTP_11, false, None, true);
        assert_eq!(framing, Framing::None);

        let (_, _, keep) = head_of(200, &[("connection", "close")], Version::HTTP_11, false, Some(1), true);
        assert!(!keep, "the handler's Connection: close closes");
    }
}
