//! HTTP streaming server (`PROXY_HTTP_SERVER`): HTTP-FLV, HTTP-TS, HLS and
//! static files, plus the accept loop the system API shares.
//!
//! The request path reads top to bottom: [`serve`] accepts and drains,
//! [`route`] classifies the request, [`stream`] resolves the origin and
//! [`forward`] relays bytes. Errors become a response in one place,
//! [`HttpError::into_response`].

pub mod forward;
pub mod static_files;
pub mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::{ClaimError, Context};

/// Error type of response bodies: anything that can end a relayed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy writes.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A small complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A client-facing failure: status plus a one-line reason.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub reason: String,
}

impl HttpError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// The one place an error becomes a response: the reason as a single
    /// text line, logged with the same words.
    pub fn into_response(self) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), reason = %self.reason, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), reason = %self.reason, "request rejected");
        }
        let mut resp = Response::new(full(format!("{}\n", self.reason)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

impl From<ClaimError> for HttpError {
    fn from(e: ClaimError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Adds the CORS headers SRS sends, unless the origin already set them.
pub fn add_cors(headers: &mut http::HeaderMap) {
    let pairs = [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, HEAD, PUT, DELETE, OPTIONS"),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "origin, range, accept-encoding, referer, cache-control, x-proxy-authorization, x-requested-with, content-type",
        ),
        (
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Server, Range, Content-Length, Content-Range",
        ),
    ];
    for (name, value) in pairs {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

/// The `Server` header value.
pub fn server_header() -> HeaderValue {
    HeaderValue::from_str(&format!("{}/{}", crate::SIGNATURE, crate::VERSION)).expect("ascii")
}

/// Accepts HTTP/1.1 connections until draining starts; each connection
/// finishes its current response during the grace period and is cut at
/// abort. `handle` answers one request.
pub async fn serve<H, F>(listener: TcpListener, ctx: Context, name: &'static str, handle: H) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let tracker = TaskTracker::new();
    while let Some((tcp, peer)) = crate::server::accept(&listener, &ctx, name).await {
        let _ = tcp.set_nodelay(true);
        let handle = handle.clone();
        let ctx = ctx.clone();
        let span = tracing::info_span!("conn", server = name, %peer);
        tracker.spawn(
            async move {
                let svc = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = ctx.shutdown.draining() => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = ctx.shutdown.aborted() => Ok(()),
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    // Close the socket now so new connections are refused at once, not
    // left in the backlog while open streams finish.
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Runs the streaming server.
pub async fn run(listener: TcpListener, ctx: Context) -> std::io::Result<()> {
    let state = Arc::new(stream::HttpState::new(ctx.clone()));
    serve(listener, ctx, "http", move |req, peer| {
        let state = state.clone();
        async move { route(&state, req, peer).await }
    })
    .await
}

/// Classifies a request and answers it; counts it by route and status.
async fn route(state: &stream::HttpState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        stream = tracing::field::Empty,
        origin = tracing::field::Empty,
    );
    route_in_span(state, req, peer).instrument(span).await
}

async fn route_in_span(state: &stream::HttpState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let (class, result) = if path == "/api/v1/versions" {
        ("versions", Ok(crate::api::versions(&state.ctx).await))
    } else if req.method() == Method::OPTIONS {
        ("options", Ok(preflight()))
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            "other",
            Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {} not allowed; streams are GET or HEAD", req.method()),
            )),
        )
    } else {
        match stream::classify(&path) {
            Some(kind) => (kind.as_str(), stream::handle(state, kind, req, peer).await),
            None => (
                "static",
                static_files::handle(state.ctx.config.static_files.as_deref(), &req).await,
            ),
        }
    };
    let mut resp = result.unwrap_or_else(HttpError::into_response);
    add_cors(resp.headers_mut());
    resp.headers_mut().entry(header::SERVER).or_insert_with(server_header);
    state
        .ctx
        .metrics
        .http_requests_total
        .with_label_values(&[class, resp.status().as_str()])
        .inc();
    resp
}

fn preflight() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    resp
}
