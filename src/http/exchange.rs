//! One request and its response on a kept-alive origin connection:
//! playlists and segments, never live streams (those hold a connection of
//! their own: [`super::forward`], [`super::passthrough`]).
//!
//! The request's own task writes the request and reads the response, on
//! the raw socket: no connection task and no channels between the two, so
//! a short request costs two reads and two writes and little else. The
//! head is parsed by [`framing::parse_head`], a chunked body decoded by
//! [`super::chunked`], a segment's body streamed to the client as it is
//! read (a slow client stalls the origin through TCP backpressure), a
//! playlist's read whole within a bound.
//!
//! The connection goes back to its [`KeepAlive`] pool once the body has
//! been read to its end and nothing followed it; a body cut short, one the
//! origin ends by closing, an HTTP/1.0 answer or `Connection: close`
//! closes it. A kept-alive connection that turns out closed when the
//! request is sent gets the request again, once, on a new connection.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::{ChunkDecoder, Decoded};
use super::forward::{self, Whole};
use super::framing::{self, Framing, FramingError, Head};
use super::pool::KeepAlive;
use super::{Body, BoxError, HttpError};
use crate::config::MIN_RELAY_BUFFER;
use crate::context::{Context, KeptTimer};
use crate::origin::{Addr, Origin};

/// What the first read of a response may take: a playlist answer whole,
/// or a segment's head and its first bytes.
const FIRST_READ: usize = 8 * 1024;

/// An origin's response head, and its body still on the connection.
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: OriginBody,
}

/// The body of a response as it comes off the connection.
struct OriginBody {
    /// `None` once given back to the pool or closed by the origin.
    tcp: Option<TcpStream>,
    /// The connection's response timer, back to the pool with it.
    timer: KeptTimer,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    /// What is left of the body, by its framing.
    left: Left,
    /// The pool and origin address the connection goes back to once the
    /// body ended; `None` when it cannot be reused.
    back: Option<(KeepAlive, Addr)>,
    /// Most bytes one read takes (`relay_buffer_bytes`).
    read_size: usize,
}

enum Left {
    /// Read to its end.
    Done,
    /// This many bytes (`Content-Length`).
    Length(u64),
    Chunked(ChunkDecoder),
    /// Until the origin closes.
    Close,
}

/// Why an exchange got no whole response.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connection closed before a response")]
    ClosedBeforeHead,
    #[error("origin closed the connection before the body ended")]
    ClosedInBody,
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Sends `method target` (GET or HEAD) with the client's headers to
/// `origin`'s HTTP port, on an idle connection from `pool` when there is
/// one, and reads the response head within `origin_response_timeout`.
pub async fn send(
    ctx: &Context,
    origin: &Origin,
    method: &Method,
    target: &str,
    client_headers: &HeaderMap,
    peer: SocketAddr,
    pool: &KeepAlive,
) -> Result<Exchange, HttpError> {
    forward::check_target(target)?;
    // The address, not its text: the text is written only for a new
    // connection, a missing `Host` or an error.
    let addr = forward::http_addr(origin)?;
    // The request is written from the front of the buffer the response
    // is read into: one allocation for both.
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    request_head(&mut buf, method, target, client_headers, &addr, peer, false);
    let request_len = buf.len();
    let wait = ctx.config.origin_response_timeout;
    let mut from_pool = true;
    loop {
        let (mut tcp, mut timer, reused) = match from_pool.then(|| pool.take(&addr)).flatten() {
            Some((tcp, timer)) => (tcp, timer, true),
            None => (
                forward::connect(ctx, origin, &addr.authority()).await?,
                KeptTimer::default(),
                false,
            ),
        };
        buf.truncate(request_len);
        // The connection's kept timer: no timer of its own per request.
        match timer.within(wait, exchange(&mut tcp, &mut buf, request_len)).await {
            Ok(Ok(head)) => {
                buf.advance(request_len);
                let read_size = ctx.config.relay_buffer_bytes.max(MIN_RELAY_BUFFER);
                let conn = (tcp, timer);
                return Ok(Exchange::new(conn, head, buf, method, (pool, addr), read_size));
            }
            // An idle connection the origin closed meanwhile: the request
            // (GET or HEAD) is sent again once, on a new connection.
            Ok(Err(e)) if reused => {
                tracing::debug!(error = %e, "kept-alive origin connection failed; retrying on a new one");
                from_pool = false;
            }
            Ok(Err(e)) => return Err(forward::failed_before_answering(origin, &addr.authority(), e)),
            Err(_) => return Err(forward::no_response_headers(origin, &addr.authority(), wait)),
        }
    }
}

/// The request as it goes on the wire, added to `out`: request line, the
/// headers of [`forward::bodiless_request_headers`], blank line. `close`
/// adds `Connection: close` (a connection never reused); without it
/// HTTP/1.1 keeps the connection open.
pub(crate) fn request_head(
    out: &mut impl BufMut,
    method: &Method,
    target: &str,
    client_headers: &HeaderMap,
    addr: &Addr,
    peer: SocketAddr,
    close: bool,
) {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let added = forward::each_origin_header(client_headers, true, |name, value| {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    });
    // The authority is an address and a port, checked as a value would be.
    let authority = added.host.then(|| addr.authority());
    if let Some(authority) = authority.filter(|a| HeaderValue::from_str(a).is_ok()) {
        out.put_slice(b"host: ");
        out.put_slice(authority.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"x-forwarded-for: ");
    added.forwarded_for(peer.ip(), out);
    out.put_slice(b"\r\n");
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Writes the request (the first `request_len` bytes of `buf`) and reads
/// until a whole response head follows it in `buf`.
async fn exchange(tcp: &mut TcpStream, buf: &mut BytesMut, request_len: usize) -> Result<Head, ExchangeError> {
    tcp.write_all(&buf[..request_len]).await?;
    loop {
        if buf.capacity() - buf.len() < FIRST_READ / 4 {
            buf.reserve(FIRST_READ);
        }
        if tcp.read_buf(buf).await? == 0 {
            return Err(ExchangeError::ClosedBeforeHead);
        }
        if let Some(head) = framing::parse_head(&buf[request_len..])? {
            return Ok(head);
        }
    }
}

impl Exchange {
    /// `buf` holds the head and whatever of the body came with it.
    fn new(
        (tcp, timer): (TcpStream, KeptTimer),
        head: Head,
        mut buf: BytesMut,
        method: &Method,
        (pool, addr): (&KeepAlive, Addr),
        read_size: usize,
    ) -> Self {
        buf.advance(head.len);
        let left = match head.framing {
            _ if method == Method::HEAD => Left::Done,
            Framing::Empty | Framing::Length(0) => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(ChunkDecoder::new()),
            Framing::Close => Left::Close,
        };
        let reusable = head.keep_alive && !matches!(left, Left::Close);
        let mut body = OriginBody {
            tcp: Some(tcp),
            timer,
            buf,
            left,
            back: reusable.then(|| (pool.clone(), addr)),
            read_size,
        };
        if matches!(body.left, Left::Done) {
            body.give_back();
        }
        Self {
            status: head.status,
            headers: head.headers,
            body,
        }
    }

    /// The client's response: the origin's status and end-to-end headers,
    /// the body streamed as it is read and counted in `bytes_out`.
    pub fn relay(self, bytes_out: IntCounter) -> Response<Body> {
        let headers = self.headers;
        let body = RelayBody {
            body: self.body,
            bytes_out,
        };
        let mut resp = Response::new(body.boxed_unsync());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Reads the whole body if it is at most `limit` bytes, each read
    /// within `idle` of the one before; a body declared larger is not read
    /// at all. The connection goes back to its pool once the body ended.
    pub async fn read_whole(mut self, limit: usize, idle: Duration) -> Result<Whole, HttpError> {
        let body = &mut self.body;
        if let Left::Length(n) = body.left {
            if n > limit as u64 {
                return Ok(Whole::TooLarge);
            }
            // Read it all into one buffer, then hand it out in one piece.
            let n = n as usize;
            while body.buf.len() < n {
                body.buf.reserve(n - body.buf.len());
                let Some(tcp) = body.tcp.as_mut() else { break };
                let read = crate::context::timeout_if_pending(idle, tcp.read_buf(&mut body.buf)).await;
                match read.map_err(|_| stalled(idle))? {
                    Ok(0) => return Err(body_failed(ExchangeError::ClosedInBody)),
                    Ok(_) => {}
                    Err(e) => return Err(body_failed(ExchangeError::Io(e))),
                }
            }
        }
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        loop {
            let next = crate::context::timeout_if_pending(idle, poll_fn(|cx| body.poll_data(cx)))
                .await
                .map_err(|_| stalled(idle))?;
            let data = match next {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => return Err(body_failed(e)),
            };
            let held = first.as_ref().map_or(0, Bytes::len) + more.len();
            if held + data.len() > limit {
                return Ok(Whole::TooLarge);
            }
            // One piece (a playlist in one read) is kept as it is.
            if let Some(prev) = first.take() {
                more.extend_from_slice(&prev);
            }
            if more.is_empty() {
                first = Some(data);
            } else {
                more.extend_from_slice(&data);
            }
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = self.headers;
        let whole = first.unwrap_or_else(|| more.freeze());
        Ok(Whole::Body(parts, whole))
    }
}

fn stalled(idle: Duration) -> HttpError {
    HttpError::origin(
        StatusCode::GATEWAY_TIMEOUT,
        format!("origin stopped sending for {idle:?}"),
        "response body stalled",
    )
}

fn body_failed(e: ExchangeError) -> HttpError {
    HttpError::origin(
        StatusCode::BAD_GATEWAY,
        "origin failed while sending the body",
        e.to_string(),
    )
}

impl OriginBody {
    /// The next body bytes; `None` once the body ended (and the connection
    /// went back to its pool if it can be reused).
    fn poll_data(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Option<Bytes>, ExchangeError>> {
        loop {
            let want = match &mut self.left {
                Left::Done => {
                    self.give_back();
                    return Poll::Ready(Ok(None));
                }
                Left::Length(left) if !self.buf.is_empty() => {
                    let n = (*left).min(self.buf.len() as u64);
                    *left -= n;
                    let data = self.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        // The last bytes: hyper asks no further once the
                        // body says it ended, so the connection goes back now.
                        self.left = Left::Done;
                        self.give_back();
                    }
                    return Poll::Ready(Ok(Some(data)));
                }
                Left::Length(left) => (*left).min(self.read_size as u64) as usize,
                Left::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                    Decoded::Data(data) => return Poll::Ready(Ok(Some(data))),
                    Decoded::End => {
                        self.left = Left::Done;
                        continue;
                    }
                    Decoded::Incomplete => self.read_size,
                },
                Left::Close if !self.buf.is_empty() => return Poll::Ready(Ok(Some(self.buf.split().freeze()))),
                Left::Close => self.read_size,
            };
            let Some(tcp) = self.tcp.as_mut() else {
                return Poll::Ready(Err(ExchangeError::ClosedInBody));
            };
            self.buf.reserve(want);
            if ready!(tokio_util::io::poll_read_buf(Pin::new(tcp), cx, &mut self.buf))? == 0 {
                if !matches!(self.left, Left::Close) {
                    return Poll::Ready(Err(ExchangeError::ClosedInBody));
                }
                self.tcp = None;
                self.left = Left::Done;
            }
        }
    }

    /// Back to the pool, if the connection can be reused and nothing
    /// followed the body.
    fn give_back(&mut self) {
        if !self.buf.is_empty() {
            self.back = None;
        }
        if let (Some((pool, addr)), Some(tcp)) = (self.back.take(), self.tcp.take()) {
            pool.put(addr, tcp, std::mem::take(&mut self.timer));
        }
    }
}

/// A segment's body on its way to the client, counted as it passes.
struct RelayBody {
    body: OriginBody,
    /// Counts relayed bytes as they pass.
    bytes_out: IntCounter,
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.body.poll_data(cx)) {
            Ok(Some(data)) => {
                self.bytes_out.inc_by(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.body.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.body.left {
            Left::Done => SizeHint::with_exact(0),
            Left::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::header;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Config;
    use crate::config::StaticOrigin;
    use crate::store::{MemoryStore, Store};

    /// What the scripted origin does next on a connection.
    enum Step {
        /// Reads a request head and writes these bytes.
        Answer(&'static [u8]),
        /// Reads a request head and closes without answering.
        Ignore,
        /// Closes at once.
        Hangup,
    }

    /// An origin that follows one script per connection, in accept order;
    /// once a script ends the connection stays open until the proxy closes
    /// it. Records every request head with its connection's number.
    struct ScriptedOrigin {
        origin: Origin,
        requests: Arc<Mutex<Vec<(usize, String)>>>,
    }

    impl ScriptedOrigin {
        async fn start(scripts: Vec<Vec<Step>>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            tokio::spawn(async move {
                for (conn, script) in scripts.into_iter().enumerate() {
                    let (tcp, _) = listener.accept().await.unwrap();
                    tokio::spawn(follow(tcp, conn, script, seen.clone()));
                }
            });
            let entry = format!("{{id: o1, ip: 127.0.0.1, http: {port}}}");
            let origin = serde_yaml::from_str::<StaticOrigin>(&entry).unwrap().to_origin();
            Self { origin, requests }
        }

        fn requests(&self) -> Vec<(usize, String)> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn follow(mut tcp: TcpStream, conn: usize, script: Vec<Step>, seen: Arc<Mutex<Vec<(usize, String)>>>) {
        let mut buf = Vec::new();
        for step in script {
            if matches!(step, Step::Hangup) {
                return;
            }
            let end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let mut more = [0u8; 1024];
                let n = tcp.read(&mut more).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&more[..n]);
            };
            let head: Vec<u8> = buf.drain(..end).collect();
            seen.lock().unwrap().push((conn, String::from_utf8(head).unwrap()));
            match step {
                Step::Answer(bytes) => tcp.write_all(bytes).await.unwrap(),
                _ => return,
            }
        }
        let _ = tcp.read_to_end(&mut buf).await;
    }

    fn ctx() -> Context {
        let config = Config {
            origin_response_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        Context::new(config, Store::Memory(MemoryStore::new()))
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:5555".parse().unwrap()
    }

    async fn get(
        ctx: &Context,
        origin: &ScriptedOrigin,
        pool: &KeepAlive,
        method: Method,
    ) -> Result<Exchange, HttpError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.com".parse().unwrap());
        headers.insert(header::CONNECTION, "close".parse().unwrap());
        send(ctx, &origin.origin, &method, "/live/a.m3u8?x=1", &headers, peer(), pool).await
    }

    async fn whole(ex: Exchange) -> Result<Bytes, HttpError> {
        match ex.read_whole(1024, Duration::from_secs(1)).await? {
            Whole::Body(_, body) => Ok(body),
            Whole::TooLarge => panic!("too large"),
        }
    }

    /// The head written for an origin holds the fields the map form of
    /// the same request holds, whatever the client sent.
    #[test]
    fn the_request_head_holds_what_the_map_holds() {
        let clients: [&[(&str, &str)]; 5] = [
            &[],
            &[("host", "example.com"), ("user-agent", "ffplay")],
            &[
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("x-forwarded-for", "10.0.0.1"),
                ("X-Forwarded-For", "10.0.0.2"),
                ("accept", "a"),
                ("accept", "b"),
                ("te", "trailers"),
            ],
            &[("content-type", "text/plain"), ("content-length", "0"), ("expect", "x")],
            &[("x-forwarded-for", "caf\u{e9}"), ("Host", "h:1")],
        ];
        for client in clients {
            let mut headers = HeaderMap::new();
            for (name, value) in client {
                let value = HeaderValue::from_bytes(value.as_bytes()).unwrap();
                headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
            let mut head = Vec::new();
            let addr = Addr {
                ip: "127.0.0.1".into(),
                port: 8080,
            };
            request_head(&mut head, &Method::GET, "/a.m3u8", &headers, &addr, peer(), false);
            let mut slots = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut slots);
            assert!(req.parse(&head).unwrap().is_complete());
            let mut written: Vec<(String, Vec<u8>)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            let mut mapped: Vec<(String, Vec<u8>)> =
                forward::bodiless_request_headers(&headers, "127.0.0.1:8080", peer())
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
            written.sort();
            mapped.sort();
            assert_eq!(written, mapped, "{client:?}");
        }
    }

    #[tokio::test]
    async fn whole_bodies_of_every_framing_and_connection_reuse() {
        let origin = ScriptedOrigin::start(vec![
            vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
                Step::Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
                Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
                Step::Answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
                Step::Hangup,
            ],
            vec![Step::Answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")],
        ])
        .await;
        let (ctx, pool) = (ctx(), KeepAlive::default());
        let first = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(whole(first).await.unwrap(), "hello");
        assert_eq!(pool.idle_count(), 1, "back in the pool after its body");
        assert_eq!(
            whole(get(&ctx, &origin, &pool, Method::GET).await.unwrap())
                .await
                .unwrap(),
            "abcde"
        );
        let head = get(&ctx, &origin, &pool, Method::HEAD).await.unwrap();
        assert_eq!(pool.idle_count(), 1, "a HEAD answer has no body to wait for");
        assert_eq!(whole(head).await.unwrap(), "");
        let close = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(whole(close).await.unwrap(), "until the end");
        assert_eq!(
            pool.idle_count(),
            0,
            "a body ended by the close leaves nothing to reuse"
        );
        let missing = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);

        let requests = origin.requests();
        let conns: Vec<usize> = requests.iter().map(|(c, _)| *c).collect();
        assert_eq!(conns, [0, 0, 0, 0, 1]);
        let (_, first) = &requests[0];
        assert!(first.starts_with("GET /live/a.m3u8?x=1 HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("host: example.com\r\n"), "{first}");
        assert!(first.contains("x-forwarded-for: 192.0.2.7\r\n"), "{first}");
        assert!(!first.contains("connection"), "hop-by-hop dropped: {first}");
        assert!(requests[2].1.starts_with("HEAD "), "{}", requests[2].1);
    }

    #[tokio::test]
    async fn connections_the_origin_will_close_are_not_kept() {
        let origin = ScriptedOrigin::start(vec![
            vec![Step::Answer(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            )],
            vec![Step::Answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")],
            vec![Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")],
            vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut"),
                Step::Hangup,
            ],
            vec![Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        ])
        .await;
        let (ctx, pool) = (ctx(), KeepAlive::default());
        for _ in 0..3 {
            let ex = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
            assert_eq!(whole(ex).await.unwrap(), "ok");
            assert_eq!(pool.idle_count(), 0);
        }
        let cut = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        let e = whole(cut).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.reason, "origin failed while sending the body");
        assert_eq!(pool.idle_count(), 0);
        get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        let conns: Vec<usize> = origin.requests().iter().map(|(c, _)| *c).collect();
        assert_eq!(conns, [0, 1, 2, 3, 4], "a new connection each time");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_that_fails_gets_the_request_again_on_a_new_one() {
        let origin = ScriptedOrigin::start(vec![
            vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                Step::Ignore,
            ],
            vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
                Step::Ignore,
            ],
            vec![Step::Ignore],
        ])
        .await;
        let (ctx, pool) = (ctx(), KeepAlive::default());
        whole(get(&ctx, &origin, &pool, Method::GET).await.unwrap())
            .await
            .unwrap();
        let retried = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        assert_eq!(whole(retried).await.unwrap(), "again");
        let conns: Vec<usize> = origin.requests().iter().map(|(c, _)| *c).collect();
        assert_eq!(conns, [0, 0, 1]);
        // Once, not more: the new connection failing the same way is the
        // origin's answer.
        let e = get(&ctx, &origin, &pool, Method::GET).await.err().unwrap();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.reason, "origin o1 failed before answering");
        assert!(!e.retry_elsewhere);
        let conns: Vec<usize> = origin.requests().iter().map(|(c, _)| *c).collect();
        assert_eq!(conns, [0, 0, 1, 1, 2]);
    }

    #[tokio::test]
    async fn bad_and_missing_answers_are_gateway_errors() {
        let origin = ScriptedOrigin::start(vec![
            vec![Step::Answer(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")],
            vec![Step::Answer(b"HTTP/1.1 200")],
            vec![Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n")],
        ])
        .await;
        let (ctx, pool) = (ctx(), KeepAlive::default());
        let bad = get(&ctx, &origin, &pool, Method::GET).await.err().unwrap();
        assert_eq!((bad.status, bad.retry_elsewhere), (StatusCode::BAD_GATEWAY, false));
        let silent = get(&ctx, &origin, &pool, Method::GET).await.err().unwrap();
        assert_eq!(silent.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(silent.reason, "origin o1 sent no response headers within 500ms");
        assert!(silent.retry_elsewhere);
        let large = get(&ctx, &origin, &pool, Method::GET).await.unwrap();
        assert!(matches!(
            large.read_whole(1024, Duration::from_secs(1)).await,
            Ok(Whole::TooLarge)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "h".parse().unwrap());
        let e = send(&ctx, &origin.origin, &Method::GET, "/a b", &headers, peer(), &pool)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_relayed_body_streams_counts_and_gives_the_connection_back() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        });
        let origin = ScriptedOrigin::start(vec![vec![
            Step::Answer(big),
            Step::Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"),
        ]])
        .await;
        let (ctx, pool) = (ctx(), KeepAlive::default());
        let counter = IntCounter::new("bytes", "bytes").unwrap();
        let resp = get(&ctx, &origin, &pool, Method::GET)
            .await
            .unwrap()
            .relay(counter.clone());
        assert!(resp.headers().get("keep-alive").is_none(), "hop-by-hop dropped");
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "300000");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(body, expected);
        assert_eq!(counter.get(), 300_000);
        assert_eq!(pool.idle_count(), 1);
        let resp = get(&ctx, &origin, &pool, Method::GET)
            .await
            .unwrap()
            .relay(counter.clone());
        assert!(resp.headers().get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(counter.get(), 300_004);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(origin.requests().len(), 2);
    }
}
