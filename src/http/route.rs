//! The streaming server's routing: what a request asks for, by method and
//! path, and which handler answers it.
//!
//! * `GET /api/v1/versions` — versions (readiness);
//! * `OPTIONS` — CORS preflight;
//! * `.flv`, `.ts` (a live stream) → [`live`](super::live);
//! * `.m3u8`, segments, `.ts` named like a segment or carrying an HLS
//!   token → [`hls`](super::hls);
//! * anything else → [`static_files`](super::static_files).
//!
//! Every request is counted by route class, status and fault.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::edge::Edge;
use super::hls_session::HlsSessions;
use super::plain::PlainServer;
use super::pool::KeepAlive;
use super::request::{classify, HttpState, ParsedPaths, StreamKind, StreamRequest};
use super::serve::HttpServer;
use super::{full, hls, live, static_files, versions, Body, HttpError};
use crate::context::Context;

/// The streaming listener's name in metrics.
pub const LISTENER_NAME: &str = "http";

/// Runs the streaming server until the drain has stopped it; `edge` is
/// the replica's table of shared upstreams.
pub async fn run(listener: TcpListener, ctx: Context, edge: Edge) {
    let max = ctx.config.http_max_connections;
    let state = Arc::new(HttpState {
        sessions: HlsSessions::new(ctx.config.hls_session_ttl),
        keep_alive: KeepAlive::default(),
        rewrites: tokio::sync::Semaphore::new(ctx.config.hls_max_rewrites),
        edge,
        hls_bytes_out: ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]),
        paths: ParsedPaths::default(),
        ctx: ctx.clone(),
    });
    let for_hyper = state.clone();
    let hyper = HttpServer::new(ctx.clone(), LISTENER_NAME, move |req: Request<Incoming>, peer| {
        let state = for_hyper.clone();
        // No stream request has a body: hyper reads past one, if sent.
        async move {
            let mut resp = route(state, req.map(|_| ()), peer).await;
            super::add_standard_fields(resp.headers_mut());
            resp
        }
    });
    let server = PlainServer::new(hyper, move |req, peer| route(state.clone(), req, peer));
    crate::listener::serve(listener, ctx, LISTENER_NAME, max, server).await
}

/// Classifies a request and answers it, in its span; counts it by route
/// and status. Not an `async fn`: one would hold the request twice (as
/// its argument and in the future it awaits), and the whole request
/// future lives on for as long as a response is written.
fn route(
    state: Arc<HttpState>,
    req: Request<()>,
    peer: SocketAddr,
) -> impl std::future::Future<Output = Response<Body>> + Send {
    let span = super::request_span(&req);
    route_in_span(state, req, peer).instrument(span)
}

async fn route_in_span(state: Arc<HttpState>, req: Request<()>, peer: SocketAddr) -> Response<Body> {
    let state = &*state;
    let path = req.uri().path();
    let (class, result) = if path == versions::PATH {
        ("versions", Ok(versions::versions(&state.ctx).await))
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
        match classify(path) {
            Some(kind) => (kind.as_str(), stream(state, kind, &req, peer).await),
            None => (
                "static",
                static_files::handle(state.ctx.config.static_files.as_deref(), &req).await,
            ),
        }
    };
    super::finish(&state.ctx, class, result)
}

/// Parses the stream the path names and hands the request to its handler.
async fn stream(
    state: &HttpState,
    kind: StreamKind,
    req: &Request<()>,
    peer: SocketAddr,
) -> Result<Response<Body>, HttpError> {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let (key, target) = state
        .paths
        .parse(kind, req.uri(), host)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad stream path: {e}")))?;
    tracing::Span::current().record("stream", tracing::field::display(&key));
    tracing::debug!(stream = %key, kind = kind.as_str(), "stream request");
    let sr = StreamRequest { req, key, target, peer };
    // A token names the origin directly, for playlists and segments alike
    // (never for FLV: a live stream always holds a lease).
    if kind != StreamKind::Flv {
        if let Some(resp) = hls::by_token(state, kind, &sr).await? {
            return Ok(resp);
        }
    }
    match kind {
        StreamKind::Flv => live::serve(state, kind, &sr).await,
        StreamKind::Ts => match hls::numbered_segment(state, &sr).await? {
            Some(resp) => Ok(resp),
            None => live::serve(state, kind, &sr).await,
        },
        StreamKind::Playlist => hls::playlist(state, &sr).await,
        StreamKind::Segment => hls::segment(state, &sr).await,
    }
}

fn preflight() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    resp
}
