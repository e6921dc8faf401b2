//! Forwarding one HTTP request to an origin and relaying the response.
//!
//! Live streams come here with a connection of their own; short requests
//! (playlists, segments) go through [`super::exchange`] on kept-alive
//! connections instead. The response body is relayed frame by frame as hyper reads it: hyper only
//! polls the upstream body when the client side can take more, so a slow
//! client stalls the origin through TCP backpressure instead of filling
//! memory. Live FLV/TS to HTTP/1.1 players skip hyper altogether
//! ([`super::passthrough`]); this path serves the rest (HEAD, HTTP/1.0).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::framing::{is_hop_by_hop, HOP_BY_HOP};
use super::{Body, BoxError, HttpError};
use crate::claim::StreamLease;
use crate::config::MIN_RELAY_BUFFER;
use crate::context::Context;
use crate::metrics::ConnectionGuard;
use crate::origin::{Addr, Origin, Protocol};
use crate::shutdown::CancelWatch;
use crate::stream_key::StreamKey;

/// Drops the headers that describe one hop, including those `Connection`
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most heads have none: one look at each name instead of a removal
    // (a hash) per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = connection_named(headers).collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The header names a `Connection` header lists.
fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
}

/// `/{app}/{stream}.{ext}?{query}`, each name percent-encoded as a path
/// segment.
pub fn origin_target(key: &StreamKey, ext: &str, query: Option<&str>) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SEGMENT: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let mut out = String::new();
    for part in key.app.split('/') {
        out.push('/');
        out.extend(utf8_percent_encode(part, SEGMENT));
    }
    out.push('/');
    out.extend(utf8_percent_encode(&key.stream, SEGMENT));
    if !ext.is_empty() {
        out.push('.');
        out.push_str(ext);
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// An upstream response and the connection that carries it.
pub struct Upstream {
    pub response: Response<Incoming>,
    /// Drives the upstream connection; aborted with the relay, so it never
    /// outlives the client's.
    conn: ConnTask,
}

/// Aborts the task driving a connection when dropped, which closes it.
struct ConnTask(JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A 400 for a request target that cannot go on a request line as it is
/// (whitespace or control bytes).
pub fn check_target(target: &str) -> Result<(), HttpError> {
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "request target cannot be forwarded",
        ));
    }
    Ok(())
}

/// `ip:port` of `origin`'s HTTP port, or a 502 when it has none.
pub fn http_authority(origin: &Origin) -> Result<String, HttpError> {
    http_addr(origin).map(|addr| addr.authority())
}

/// The origin's HTTP address, or the error a request gets when it has no
/// HTTP port.
pub fn http_addr(origin: &Origin) -> Result<Addr, HttpError> {
    origin.addr(Protocol::Http).ok_or_else(|| {
        HttpError::origin(
            StatusCode::BAD_GATEWAY,
            format!("origin {} has no HTTP port", origin.id),
            "no http port registered",
        )
    })
}

/// Opens a TCP connection to `authority` (an origin's HTTP port) within
/// the connect timeout. A connect that fails sent nothing anywhere, so
/// its error says another origin may serve the request.
pub async fn connect(ctx: &Context, origin: &Origin, authority: &str) -> Result<TcpStream, HttpError> {
    let timeout = ctx.config.origin_connect_timeout;
    match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(HttpError::origin(
            StatusCode::BAD_GATEWAY,
            format!("origin {} refused the connection", origin.id),
            format!("connect to {authority}: {e}"),
        )
        .retryable()),
        Err(_) => Err(HttpError::origin(
            StatusCode::BAD_GATEWAY,
            format!("origin {} did not accept the connection in time", origin.id),
            format!("connect to {authority}: no answer within {timeout:?}"),
        )
        .retryable()),
    }
}

/// The client's headers as they go to an origin: hop-by-hop and body
/// framing dropped (the proxy frames the body it sends), `Host` kept (SRS
/// reads the vhost from it) or set to the origin, the client's address
/// appended to `X-Forwarded-For`.
pub fn origin_request_headers(client_headers: &HeaderMap, authority: &str, peer: SocketAddr) -> HeaderMap {
    collect(client_headers, authority, peer, false)
}

/// What a request without a body sends an origin.
pub fn bodiless_request_headers(client_headers: &HeaderMap, authority: &str, peer: SocketAddr) -> HeaderMap {
    collect(client_headers, authority, peer, true)
}

fn collect(client_headers: &HeaderMap, authority: &str, peer: SocketAddr, bodiless: bool) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client_headers.len() + 2);
    let added = each_origin_header(client_headers, bodiless, |name, value| {
        headers.append(name.clone(), value.clone());
    });
    if added.host {
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.append(header::HOST, host);
        }
    }
    let mut forwarded = Vec::with_capacity(48);
    added.forwarded_for(peer.ip(), &mut forwarded);
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        headers.append(X_FORWARDED_FOR.clone(), v);
    }
    headers
}

/// The field the proxy adds the client's address to.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What an origin is sent besides the client's own fields: `Host` when
/// the client sent none, and `X-Forwarded-For`.
pub struct Added<'a> {
    /// The client sent no `Host`: the origin's authority goes instead.
    pub host: bool,
    /// The client's `X-Forwarded-For` (the first), which the client's
    /// address is added to.
    forwarded: Option<&'a HeaderValue>,
}

impl Added<'_> {
    /// Writes the `X-Forwarded-For` value: the client's list, if it sent
    /// one as text, then `peer`.
    pub fn forwarded_for(&self, peer: IpAddr, out: &mut impl BufMut) {
        if let Some(prev) = self.forwarded.filter(|v| v.to_str().is_ok()) {
            out.put_slice(prev.as_bytes());
            out.put_slice(b", ");
        }
        push_ip(out, peer);
    }
}

/// Calls `f` with each of the client's headers an origin is sent, in the
/// client's order: all but the hop-by-hop ones (and those `Connection`
/// names), `Content-Length`, `Expect`, `X-Forwarded-For` and, `bodiless`,
/// `Content-Type`. The caller adds what [`Added`] says: together, what
/// [`origin_request_headers`] (or, `bodiless`, [`bodiless_request_headers`])
/// holds, without building a map.
pub fn each_origin_header<'a>(
    client_headers: &'a HeaderMap,
    bodiless: bool,
    mut f: impl FnMut(&HeaderName, &HeaderValue),
) -> Added<'a> {
    // Headers named in Connection are hop-by-hop too (a player rarely
    // sends one: the names are looked for only then).
    let named: Vec<HeaderName> = if client_headers.keys().any(|n| n == header::CONNECTION) {
        connection_named(client_headers).collect()
    } else {
        Vec::new()
    };
    let mut added = Added {
        host: true,
        forwarded: None,
    };
    for (name, value) in client_headers {
        if *name == header::HOST {
            added.host = false;
        } else if *name == X_FORWARDED_FOR {
            added.forwarded.get_or_insert(value);
            continue;
        }
        let dropped = is_hop_by_hop(name)
            || *name == header::CONTENT_LENGTH
            || *name == header::EXPECT
            || (bodiless && *name == header::CONTENT_TYPE)
            || named.contains(name);
        if !dropped {
            f(name, value);
        }
    }
    added
}

/// Writes `ip` as `Display` does; an IPv4 address without the formatting
/// machinery (this runs on every request).
fn push_ip(out: &mut impl BufMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Written on the stack, then added in one piece.
            let (mut text, mut n) = ([0u8; 15], 0);
            let mut push = |b: u8| {
                text[n] = b;
                n += 1;
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    push(b'.');
                }
                if octet >= 100 {
                    push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    push(b'0' + octet / 10 % 10);
                }
                push(b'0' + octet % 10);
            }
            out.put_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out.writer(), "{v6}");
        }
    }
}

/// A new HTTP/1 connection to `origin`, its read buffer capped by
/// `relay_buffer_bytes` (hyper's own cap grows to about 400 KiB).
async fn open(
    ctx: &Context,
    origin: &Origin,
    authority: &str,
) -> Result<(SendRequest<Empty<Bytes>>, ConnTask), HttpError> {
    let tcp = connect(ctx, origin, authority).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(ctx.config.relay_buffer_bytes.max(MIN_RELAY_BUFFER))
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| {
            HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} failed", origin.id),
                e.to_string(),
            )
        })?;
    let task = ConnTask(tokio::spawn(async move {
        let _ = conn.await;
    }));
    Ok((sender, task))
}

/// Sends `method path_and_query` with the client's headers to `origin`'s
/// HTTP port, on a connection of its own.
pub async fn send(
    ctx: &Context,
    origin: &Origin,
    method: &Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Upstream, HttpError> {
    let authority = http_authority(origin)?;
    let uri: Uri = path_and_query
        .parse()
        .map_err(|_| HttpError::new(StatusCode::BAD_REQUEST, "request target cannot be forwarded"))?;
    let headers = bodiless_request_headers(client_headers, &authority, peer);
    let wait = ctx.config.origin_response_timeout;
    let (mut sender, conn) = open(ctx, origin, &authority).await?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    match tokio::time::timeout(wait, sender.send_request(req)).await {
        Ok(Ok(response)) => Ok(Upstream { response, conn }),
        Ok(Err(e)) => Err(failed_before_answering(origin, &authority, e)),
        Err(_) => Err(no_response_headers(origin, &authority, wait)),
    }
}

/// The origin took the connection and then failed the request: it may
/// have refused this client (an SRS hook closing on a bad token does
/// that), which says nothing about its health.
pub fn failed_before_answering(origin: &Origin, authority: &str, e: impl std::fmt::Display) -> HttpError {
    HttpError::origin(
        StatusCode::BAD_GATEWAY,
        format!("origin {} failed before answering", origin.id),
        format!("{authority}: {e}"),
    )
}

/// No response head within `wait`: another origin may answer.
pub fn no_response_headers(origin: &Origin, authority: &str, wait: std::time::Duration) -> HttpError {
    HttpError::origin(
        StatusCode::GATEWAY_TIMEOUT,
        format!("origin {} sent no response headers within {wait:?}", origin.id),
        format!("{authority}: no response headers"),
    )
    .retryable()
}

/// Relays an upstream response to the client: status and headers intact
/// (minus hop-by-hop), body streamed. The lease, if any, keeps the stream
/// mapping alive and ends the body when the origin is gone.
pub fn relay(
    upstream: Upstream,
    lease: Option<StreamLease>,
    bytes_out: IntCounter,
    guard: Option<ConnectionGuard>,
) -> Response<Body> {
    let (mut parts, incoming) = upstream.response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let (lost, watcher) = match lease {
        Some(lease) => {
            let lost = lease.lost_watch();
            let conn = upstream.conn.0.abort_handle();
            let watcher = ConnTask(tokio::spawn(async move {
                // Owning the lease keeps the stream mapping refreshed for as
                // long as the body is alive.
                lease.lost().await;
                // Close the origin connection now, even when the client is
                // stalled and hyper is not polling the body.
                conn.abort();
            }));
            (Some(lost), Some(watcher))
        }
        None => (None, None),
    };
    let body = RelayBody {
        inner: incoming,
        _conn: upstream.conn,
        _watcher: watcher,
        lost,
        bytes_out,
        _guard: guard,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The relayed body: upstream frames, counted, cut when the origin is gone.
struct RelayBody {
    /// The origin's body.
    inner: Incoming,
    /// Dropping it closes the origin connection.
    _conn: ConnTask,
    /// Watches the lease; closes the origin connection when it is lost.
    _watcher: Option<ConnTask>,
    /// Fires when the origin is gone: the body ends with an error.
    lost: Option<CancelWatch>,
    /// Counts relayed bytes as frames pass.
    bytes_out: IntCounter,
    /// Keeps the player counted as connected while the body lives.
    _guard: Option<ConnectionGuard>,
}

/// Ends a relayed body because the origin went away.
#[derive(Debug, thiserror::Error)]
#[error("origin is no longer live; relay ended")]
pub struct OriginLost;

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(lost) = self.lost.as_mut() {
            if lost.poll_cancelled(cx) {
                self.lost = None;
                return Poll::Ready(Some(Err(Box::new(OriginLost))));
            }
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole upstream body of at most `limit` bytes (playlists only),
/// all of it within `wait`.
pub async fn read_bounded(
    upstream: Upstream,
    limit: usize,
    wait: std::time::Duration,
) -> Result<(http::response::Parts, Bytes), HttpError> {
    let read = crate::context::timeout_if_pending(wait, read_whole(upstream, limit, wait)).await;
    bounded(read, limit, wait)
}

/// A whole body of at most `limit` bytes, read within `wait`
/// (`timeout_if_pending(wait, …)` of a read of the whole body), or why
/// there is none. Not an `async fn` taking the read: one would hold the
/// read's future twice.
pub fn bounded(
    read: Result<Result<Whole, HttpError>, crate::context::Elapsed>,
    limit: usize,
    wait: std::time::Duration,
) -> Result<(http::response::Parts, Bytes), HttpError> {
    match read {
        Ok(Ok(Whole::Body(parts, body))) => Ok((parts, body)),
        Ok(Ok(Whole::TooLarge)) => Err(playlist_too_large(limit)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HttpError::origin(
            StatusCode::GATEWAY_TIMEOUT,
            format!("origin did not finish sending the playlist within {wait:?}"),
            "playlist body timed out",
        )),
    }
}

/// An origin's playlist over `limit` bytes.
pub fn playlist_too_large(limit: usize) -> HttpError {
    HttpError::origin(
        StatusCode::BAD_GATEWAY,
        format!("origin playlist is larger than {limit} bytes"),
        "playlist over the limit",
    )
}

/// A whole response body, or the news that it is over the limit.
pub enum Whole {
    Body(http::response::Parts, Bytes),
    /// Declared or found larger than the limit; the connection is closed.
    TooLarge,
}

/// Reads a whole upstream body of at most `limit` bytes, each frame within
/// `idle` of the one before; a body declared larger than `limit` is not
/// read at all.
pub async fn read_whole(upstream: Upstream, limit: usize, idle: std::time::Duration) -> Result<Whole, HttpError> {
    let declared = upstream
        .response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Whole::TooLarge);
    }
    let (parts, mut body) = upstream.response.into_parts();
    let mut out = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        let frame = tokio::time::timeout(idle, body.frame()).await.map_err(|_| {
            HttpError::origin(
                StatusCode::GATEWAY_TIMEOUT,
                format!("origin stopped sending for {idle:?}"),
                "response body stalled",
            )
        })?;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Ok(Whole::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(HttpError::origin(
                    StatusCode::BAD_GATEWAY,
                    "origin failed while sending the body",
                    e.to_string(),
                ))
            }
        }
    }
    Ok(Whole::Body(parts, out.freeze()))
}

/// Copies response headers from an upstream response, minus hop-by-hop.
pub fn response_headers(parts: &http::response::Parts) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Addresses in `X-Forwarded-For` read as `Display` writes them.
        #[test]
        fn addresses_are_written_as_display_writes_them(v4: std::net::Ipv4Addr, v6: std::net::Ipv6Addr) {
            for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
                let mut out = Vec::new();
                push_ip(&mut out, ip);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
            }
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_origin_gets_the_end_to_end_headers_and_who_asked() {
        let peer: SocketAddr = "192.0.2.9:1000".parse().unwrap();
        let client = headers(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("expect", "100-continue"),
            ("content-type", "application/sdp"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let want = |content_type: bool| {
            let mut v = vec![
                ("accept".to_string(), "a".to_string()),
                ("accept".to_string(), "b".to_string()),
                ("host".to_string(), "example.com".to_string()),
                ("x-forwarded-for".to_string(), "10.0.0.1, 192.0.2.9".to_string()),
            ];
            if content_type {
                v.push(("content-type".to_string(), "application/sdp".to_string()));
            }
            v.sort();
            v
        };
        assert_eq!(
            pairs(&origin_request_headers(&client, "127.0.0.1:8080", peer)),
            want(true)
        );
        assert_eq!(
            pairs(&bodiless_request_headers(&client, "127.0.0.1:8080", peer)),
            want(false)
        );

        let bare = bodiless_request_headers(&HeaderMap::new(), "127.0.0.1:8080", peer);
        assert_eq!(
            pairs(&bare),
            [
                ("host".to_string(), "127.0.0.1:8080".to_string()),
                ("x-forwarded-for".to_string(), "192.0.2.9".to_string())
            ]
        );
    }
}
