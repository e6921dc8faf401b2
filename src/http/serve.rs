//! One HTTP/1.1 connection, for every HTTP listener (streaming, system API).
//!
//! [`HttpServer`] is what the listener runs per connection: hyper serves
//! the requests under the configured limits, finishes the response in
//! flight when draining starts, and answers connections over the listener's
//! cap with `503` and `Retry-After`. A response carrying a [`Detach`] is
//! not written by hyper: the connection leaves hyper and the detached
//! handler writes the response on the socket itself (live relays).
//!
//! # Limits
//!
//! * The request head must arrive within `http_header_timeout` (slowloris);
//!   hyper starts that clock when it starts waiting for a head, so it also
//!   closes a keep-alive connection that stays idle that long.
//! * A head over `http_max_header_bytes`, or with more than
//!   `http_max_headers` fields, gets 431 (from hyper, or for a field count
//!   within hyper's own array of 100, from [`check_request`]).
//! * [`check_request`] answers before any handler runs: 414 for a target
//!   over `http_max_url_bytes`, 413 for a declared body over
//!   `http_max_body_bytes`, 400 for two `Host` headers or an HTTP/1.1
//!   request without one (RFC 9112 §3.2).
//!
//! Every refusal counts in `srs_proxy_listener_refused_total` with its
//! reason.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{full, server_header, Body};
use crate::config::Config;
use crate::context::Context;
use crate::listener::Handler;

/// Serves HTTP/1.1 on each connection, calling `answer` per request.
#[derive(Clone)]
pub struct HttpServer<A> {
    /// Config, metrics and the drain signal.
    ctx: Context,
    /// The listener's name in metrics.
    name: &'static str,
    /// Refusals as `{"code":…,"error":…}` (an API) instead of a text line.
    json: bool,
    /// Answers one request.
    answer: A,
}

impl<A, F> HttpServer<A>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    pub fn new(ctx: Context, name: &'static str, answer: A) -> Self {
        Self {
            ctx,
            name,
            json: false,
            answer,
        }
    }

    /// The context it serves with.
    pub(crate) fn context(&self) -> &Context {
        &self.ctx
    }

    /// Refusals in the JSON shape of an API's other errors.
    pub fn json_errors(mut self) -> Self {
        self.json = true;
        self
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.ctx
            .metrics
            .listener_refused_total
            .with_label_values(&[self.name, reason])
            .inc();
    }

    /// The answer to a request the limits refuse (see [`check_request`]),
    /// counted and logged; `None` lets it through to the handler.
    pub(crate) fn refusal<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let (status, reason, metric) = check_request(&self.ctx.config, req)?;
        self.refused(metric);
        tracing::info!(status = status.as_u16(), %reason, "request refused");
        Some(if self.json {
            let body = serde_json::json!({"code": status.as_u16(), "error": reason});
            super::versions::json_response(status, &body)
        } else {
            plain(status, &reason)
        })
    }
}

/// hyper's connection settings from the config.
fn builder(config: &Config) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(config.http_header_timeout)
        .max_header_size(config.http_max_header_bytes)
        // hyper's floor; a head over the header limit is refused first.
        .max_buf_size(config.http_max_header_bytes.max(8192));
    // Told any field limit, hyper builds a vector of that many slots for
    // every request; its own array holds 100. Within that, the count is
    // checked in `check_request`.
    if config.http_max_headers > HYPER_HEADER_SLOTS {
        b.max_headers(config.http_max_headers);
    }
    b
}

/// The header fields hyper parses into without being told a limit.
const HYPER_HEADER_SLOTS: usize = 100;

/// A request the limits refuse, answered before any handler sees it:
/// the status, the one-line reason and the metric reason.
pub fn check_request<B>(config: &Config, req: &Request<B>) -> Option<(StatusCode, String, &'static str)> {
    if req.headers().len() > config.http_max_headers {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {} header fields", config.http_max_headers),
            "header_too_large",
        ));
    }
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if target > config.http_max_url_bytes {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!("request target longer than {} bytes", config.http_max_url_bytes),
            "uri_too_long",
        ));
    }
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some((StatusCode::BAD_REQUEST, "more than one Host header".into(), "bad_host"));
    }
    if hosts == 0 && req.version() == Version::HTTP_11 {
        return Some((
            StatusCode::BAD_REQUEST,
            "HTTP/1.1 request without Host".into(),
            "bad_host",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.http_max_body_bytes as u64) {
        return Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {} bytes", config.http_max_body_bytes),
            "body_too_large",
        ));
    }
    None
}

fn plain(status: StatusCode, reason: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::SERVER, server_header());
    resp
}

impl<A, F> Handler for HttpServer<A>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        self.serve_from(tcp, peer, Bytes::new(), false).await
    }

    async fn refuse(&self, tcp: TcpStream, _peer: SocketAddr) {
        let svc = service_fn(|_req| async {
            let mut resp = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is at its connection limit; retry later",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok::<_, Infallible>(resp)
        });
        let _ = builder(&self.ctx.config)
            .keep_alive(false)
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    }
}

impl<A, F> HttpServer<A>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    /// Serves the rest of a connection through hyper: `read` holds bytes
    /// already read from it (a request head another server looked at),
    /// `served` whether a request was answered on it before.
    pub(crate) async fn serve_from(&self, tcp: TcpStream, peer: SocketAddr, read: Bytes, served: bool) {
        let handover = Arc::new(Handover::default());
        let to_hand_over = handover.clone();
        // A header timeout before any request is a slowloris; after one,
        // an idle keep-alive connection closing as it should.
        let served = Arc::new(AtomicBool::new(served));
        // Shared by the connection's requests: a clone per request would
        // copy the whole context (every metric handle).
        let this = Arc::new(self.clone());
        let saw_request = served.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let (this, handover) = (this.clone(), to_hand_over.clone());
            saw_request.store(true, Ordering::Relaxed);
            async move {
                if let Some(refusal) = this.refusal(&req) {
                    return Ok::<_, Infallible>(refusal);
                }
                let resp = (this.answer)(req, peer).await;
                match resp.extensions().get::<Detach>().and_then(Detach::take) {
                    Some(detached) => {
                        handover.put(detached, resp.into_parts().0);
                        // hyper writes nothing for this request; the
                        // connection is taken from it below.
                        std::future::pending().await
                    }
                    None => Ok::<_, Infallible>(resp),
                }
            }
        });
        let mut conn = builder(&self.ctx.config).serve_connection(TokioIo::new(Prefixed::new(read, tcp)), svc);
        // Polled on every wake of the connection: an atomic load each,
        // not a lock.
        let mut drain = self.ctx.shutdown.drain_watch();
        let mut draining = false;
        let ended = poll_fn(|cx| {
            if !draining && drain.poll_cancelled(cx) {
                // Finish the response in flight, take no new request;
                // the listener cuts the connection at abort.
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            match Pin::new(&mut conn).poll(cx) {
                Poll::Ready(r) => Poll::Ready(Ended::Served(r)),
                // The handler runs inside that poll: a detached response
                // is in the slot as soon as hyper has nothing else to do.
                Poll::Pending => match handover.take() {
                    Some(detached) => Poll::Ready(Ended::Detached(detached)),
                    None => Poll::Pending,
                },
            }
        })
        .await;
        let result = match ended {
            Ended::Served(r) => r,
            Ended::Detached((detached, head)) => {
                let tcp = conn.into_parts().io.into_inner().tcp;
                detached(tcp, head).await;
                return;
            }
        };
        match result {
            Err(e) if e.is_timeout() && !served.load(Ordering::Relaxed) => {
                self.refused("header_timeout");
                tracing::info!("no request head within the header timeout; closed");
            }
            Err(e) if e.is_parse_too_large() => {
                self.refused("header_too_large");
                tracing::info!(error = %e, "request head over the limits; answered 431");
            }
            Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
            Ok(()) => {}
        }
    }
}

/// Writes a whole response, head included, on the raw connection.
pub type Detached = Box<dyn FnOnce(TcpStream, http::response::Parts) -> BoxFuture<'static, ()> + Send>;

/// A response extension: instead of hyper writing the response, the
/// connection leaves hyper and this writes it, given the final head (after
/// every header the router adds). The connection closes afterwards.
#[derive(Clone)]
pub struct Detach(Arc<Mutex<Option<Detached>>>);

impl Detach {
    pub fn new(f: impl FnOnce(TcpStream, http::response::Parts) -> BoxFuture<'static, ()> + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::new(f)))))
    }

    pub(crate) fn take(&self) -> Option<Detached> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// From the request's task to the connection's: the detached handler and
/// the head it is to write.
#[derive(Default)]
struct Handover {
    slot: Mutex<Option<(Detached, http::response::Parts)>>,
}

/// How a connection left hyper.
enum Ended {
    Served(hyper::Result<()>),
    Detached((Detached, http::response::Parts)),
}

impl Handover {
    fn put(&self, detached: Detached, head: http::response::Parts) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((detached, head));
    }

    fn take(&self) -> Option<(Detached, http::response::Parts)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A connection whose first bytes were already read: they are read
/// again before the socket's.
pub(crate) struct Prefixed {
    read: Bytes,
    pub(crate) tcp: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(read: Bytes, tcp: TcpStream) -> Self {
        Self { read, tcp }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(target).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn limits_and_host_rules() {
        let c = Config::default();
        let status = |r: Request<()>| check_request(&c, &r).map(|(s, _, m)| (s.as_u16(), m));
        assert_eq!(status(req("/live/a.flv", Version::HTTP_11, &[("host", "x")])), None);
        assert_eq!(
            status(req("/live/a.flv", Version::HTTP_10, &[])),
            None,
            "HTTP/1.0 may omit Host"
        );
        assert_eq!(
            status(req("/live/a.flv", Version::HTTP_11, &[])),
            Some((400, "bad_host"))
        );
        assert_eq!(
            status(req("/live/a.flv", Version::HTTP_11, &[("host", "a"), ("host", "b")])),
            Some((400, "bad_host"))
        );
        let long = format!("/live/a.flv?x={}", "y".repeat(c.http_max_url_bytes));
        assert_eq!(
            status(req(&long, Version::HTTP_11, &[("host", "x")])),
            Some((414, "uri_too_long"))
        );
        assert_eq!(
            status(req(
                "/r",
                Version::HTTP_11,
                &[("host", "x"), ("content-length", "99999999")]
            )),
            Some((413, "body_too_large"))
        );
        assert_eq!(
            status(req("/r", Version::HTTP_11, &[("host", "x"), ("content-length", "100")])),
            None
        );
        let names: Vec<String> = (1..=c.http_max_headers).map(|i| format!("x-{i}")).collect();
        let mut fields: Vec<(&str, &str)> = vec![("host", "x")];
        fields.extend(names.iter().skip(1).map(|n| (n.as_str(), "v")));
        assert_eq!(status(req("/r", Version::HTTP_11, &fields)), None, "at the limit");
        fields.push((&names[0], "v"));
        assert_eq!(
            status(req("/r", Version::HTTP_11, &fields)),
            Some((431, "header_too_large")),
            "one over"
        );
    }
}
