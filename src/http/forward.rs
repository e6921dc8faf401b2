//! Forwarding one HTTP request to an origin and relaying the response.
//!
//! One upstream connection per request (live streams hold it for their
//! whole life, so pooling buys nothing). The response body is relayed frame
//! by frame as hyper reads it: hyper only polls the upstream body when the
//! client side can take more, so a slow client stalls the origin through
//! TCP backpressure instead of filling memory.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Body, BoxError, HttpError};
use crate::claim::StreamLease;
use crate::context::Context;
use crate::metrics::ConnectionGuard;
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Drops the headers that describe one hop, including those `Connection`
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
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

/// Aborts the upstream connection task when the relay ends, whichever side
/// ended it: the client went away (body dropped) or the origin did.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An upstream response and the connection that carries it.
pub struct Upstream {
    pub response: Response<Incoming>,
    /// Drives the upstream connection; aborted with the relay, so the
    /// origin connection never outlives the client's.
    conn: AbortOnDrop,
}

/// Sends `method path_and_query` with the client's headers to `origin`'s
/// HTTP port. The client's `Host` is kept: SRS reads the vhost from it.
pub async fn send(
    ctx: &Context,
    origin: &Origin,
    method: &Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Upstream, HttpError> {
    let authority = origin.authority(Protocol::Http).ok_or_else(|| {
        HttpError::origin(
            StatusCode::BAD_GATEWAY,
            format!("origin {} has no HTTP port", origin.id),
            "no http port registered",
        )
    })?;
    let timeout = ctx.config.origin_connect_timeout;
    // A connect that fails sent nothing anywhere: another origin may serve.
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&authority)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} refused the connection", origin.id),
                format!("connect to {authority}: {e}"),
            )
            .retryable())
        }
        Err(_) => {
            return Err(HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} did not accept the connection in time", origin.id),
                format!("connect to {authority}: no answer within {timeout:?}"),
            )
            .retryable())
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| {
            HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} failed", origin.id),
                e.to_string(),
            )
        })?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let uri: Uri = path_and_query
        .parse()
        .map_err(|_| HttpError::new(StatusCode::BAD_REQUEST, "request target cannot be forwarded"))?;
    let mut headers = origin_request_headers(client_headers, &authority, peer);
    // The forwarded request never has a body.
    headers.remove(header::CONTENT_TYPE);
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;

    let wait = ctx.config.origin_response_timeout;
    let response = match tokio::time::timeout(wait, sender.send_request(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} failed before answering", origin.id),
                format!("{authority}: {e}"),
            ))
        }
        Err(_) => {
            return Err(HttpError::origin(
                StatusCode::GATEWAY_TIMEOUT,
                format!("origin {} sent no response headers within {wait:?}", origin.id),
                format!("{authority}: no response headers"),
            ))
        }
    };
    Ok(Upstream { response, conn })
}

/// The client's headers as they go to an origin: hop-by-hop and body
/// framing dropped (the proxy frames the body it sends), `Host` kept (SRS
/// reads the vhost from it) or set to the origin, the client's address
/// appended to `X-Forwarded-For`.
pub fn origin_request_headers(client_headers: &HeaderMap, authority: &str, peer: SocketAddr) -> HeaderMap {
    let mut headers = client_headers.clone();
    strip_hop_by_hop(&mut headers);
    for name in [header::CONTENT_LENGTH, header::EXPECT] {
        headers.remove(name);
    }
    if !headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
    }
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers
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
            let cut = CancellationToken::new();
            let signal = cut.clone();
            let conn = upstream.conn.0.abort_handle();
            let watcher = AbortOnDrop(tokio::spawn(async move {
                // Owning the lease keeps the stream mapping refreshed for as
                // long as the body is alive.
                lease.lost().await;
                signal.cancel();
                // Close the origin connection now, even when the client is
                // stalled and hyper is not polling the body.
                conn.abort();
            }));
            (Some(cut.cancelled_owned().boxed()), Some(watcher))
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
    inner: Incoming,
    /// Keeps the upstream connection alive exactly as long as the body.
    _conn: AbortOnDrop,
    /// Watches the lease; ends the relay when the origin is gone.
    _watcher: Option<AbortOnDrop>,
    /// Resolves when the origin is gone: the body ends with an error.
    lost: Option<BoxFuture<'static, ()>>,
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
            if lost.poll_unpin(cx).is_ready() {
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

/// Reads a whole upstream body of at most `limit` bytes (playlists only).
pub async fn read_bounded(
    upstream: Upstream,
    limit: usize,
    wait: std::time::Duration,
) -> Result<(http::response::Parts, Bytes), HttpError> {
    let (parts, body) = upstream.response.into_parts();
    let collect = http_body_util::Limited::new(body, limit).collect();
    let collected = tokio::time::timeout(wait, collect).await.map_err(|_| {
        HttpError::origin(
            StatusCode::GATEWAY_TIMEOUT,
            format!("origin did not finish sending the playlist within {wait:?}"),
            "playlist body timed out",
        )
    })?;
    let collected = collected.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin playlist is larger than {limit} bytes"),
                "playlist over the limit",
            )
        } else {
            HttpError::origin(
                StatusCode::BAD_GATEWAY,
                "origin failed while sending the playlist",
                e.to_string(),
            )
        }
    })?;
    drop(upstream.conn);
    Ok((parts, collected.to_bytes()))
}

/// Copies response headers from an upstream response, minus hop-by-hop.
pub fn response_headers(parts: &http::response::Parts) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers
}
