//! Which origin serves an HTTP stream request, and how it is answered.
//!
//! * `.flv` / `.ts` live streams: claim the stream, relay the body for as
//!   long as both sides stay connected.
//! * `.m3u8`: claim the stream, fetch the playlist (bounded), rewrite its
//!   URIs with a routing token bound to the origin in the store.
//! * segments (`.ts` with a token or a `-N` sequence name, `.m4s`, `.mp4`,
//!   `.aac`, …): the token's origin, else the origin that serves the stream
//!   the path names. Segments never claim: a segment of an unknown stream is
//!   a 404, not a new stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::forward::{self, read_bounded, relay, response_headers};
use super::{full, Body, HttpError};
use crate::context::Context;
use crate::hls;
use crate::origin::Origin;
use crate::store::{Session, SessionKind};
use crate::stream_key::StreamKey;

/// What a request path asks for, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Flv,
    /// HTTP-TS live stream, or an HLS segment (decided per request).
    Ts,
    Playlist,
    Segment,
}

impl StreamKind {
    /// Route class for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flv => "flv",
            Self::Ts => "ts",
            Self::Playlist => "m3u8",
            Self::Segment => "segment",
        }
    }
}

/// Classifies a path by the extension of its last segment; `None` means
/// it is not a stream resource (static files, or 404).
pub fn classify(path: &str) -> Option<StreamKind> {
    let file = path.rsplit('/').next().unwrap_or("");
    let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match ext.as_str() {
        "flv" => StreamKind::Flv,
        "ts" => StreamKind::Ts,
        "m3u8" => StreamKind::Playlist,
        "m4s" | "mp4" | "m4a" | "m4v" | "aac" | "mp3" | "ac3" | "ec3" | "vtt" | "webvtt" | "key" | "cmfv" | "cmfa" => {
            StreamKind::Segment
        }
        _ => return None,
    })
}

/// State of the HTTP streaming server.
pub struct HttpState {
    pub ctx: Context,
    /// The token handed out for each (stream, origin), so a player that
    /// reloads a playlist without its token does not mint a new session
    /// every few seconds. Entries older than the session TTL are dropped.
    tokens: Mutex<HashMap<(StreamKey, String), (String, Instant)>>,
}

impl HttpState {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            tokens: Mutex::default(),
        }
    }

    fn token_for(&self, key: &StreamKey, origin_id: &str) -> String {
        let now = Instant::now();
        let ttl = self.ctx.config.hls_session_ttl;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() > 1024 {
            tokens.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        }
        let entry = tokens
            .entry((key.clone(), origin_id.to_string()))
            .or_insert_with(|| (hls::new_token(), now));
        if now.duration_since(entry.1) >= ttl {
            *entry = (hls::new_token(), now);
        }
        entry.1 = now;
        entry.0.clone()
    }
}

/// Answers a stream request.
pub async fn handle(
    state: &HttpState,
    kind: StreamKind,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let (key, _) = StreamKey::from_http(req.uri().path(), req.uri().query(), host.as_deref())
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad stream path: {e}")))?;
    let span = tracing::Span::current();
    span.record("stream", tracing::field::display(&key));
    tracing::debug!(stream = %key, kind = kind.as_str(), "stream request");

    // A token names the origin directly, for playlists and segments alike.
    if let Some(token) = hls::token_from_query(req.uri().query()) {
        if let Some((session, origin)) = session_origin(ctx, token).await? {
            return match kind {
                StreamKind::Playlist => playlist(ctx, &req, peer, &origin, token).await,
                _ => segment(ctx, &req, peer, &origin, &session.key).await,
            };
        }
        tracing::info!(stream = %key, "unknown or expired HLS token; routing by path");
    }

    match kind {
        StreamKind::Flv | StreamKind::Ts => {
            if kind == StreamKind::Ts {
                if let Some(base) = key.without_segment_number() {
                    if let Some(origin) = lookup(ctx, &base).await? {
                        return segment(ctx, &req, peer, &origin, &base).await;
                    }
                }
            }
            live(ctx, kind, &req, peer, &key).await
        }
        StreamKind::Playlist => {
            let (origin, _) = ctx.claim_origin(&key).await?;
            let token = state.token_for(&key, &origin.id);
            let session = Session {
                key: key.clone(),
                origin_id: origin.id.clone(),
            };
            ctx.store_op(
                "put_session",
                ctx.store
                    .put_session(SessionKind::Hls, &token, &session, ctx.config.hls_session_ttl),
            )
            .await
            .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            playlist(ctx, &req, peer, &origin, &token).await
        }
        StreamKind::Segment => {
            let base = key.without_segment_number().unwrap_or_else(|| key.clone());
            let origin = match lookup(ctx, &base).await? {
                Some(o) => Some(o),
                None if base != key => lookup(ctx, &key).await?,
                None => None,
            };
            match origin {
                Some(origin) => segment(ctx, &req, peer, &origin, &base).await,
                None => Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("no origin serves stream {base}"),
                )),
            }
        }
    }
}

async fn session_origin(ctx: &Context, token: &str) -> Result<Option<(Session, Origin)>, HttpError> {
    if !hls::is_valid_token(token) {
        return Ok(None);
    }
    let unavailable = |e: crate::store::StoreError| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let Some(session) = ctx
        .store_op(
            "touch_session",
            ctx.store
                .touch_session(SessionKind::Hls, token, ctx.config.hls_session_ttl),
        )
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    let origin = ctx
        .store_op("origin", ctx.store.origin(&session.origin_id))
        .await
        .map_err(unavailable)?;
    Ok(origin.map(|o| (session, o)))
}

async fn lookup(ctx: &Context, key: &StreamKey) -> Result<Option<Origin>, HttpError> {
    ctx.store_op("lookup", ctx.store.lookup(key))
        .await
        .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

fn path_and_query(req: &Request<Incoming>) -> &str {
    req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

/// A live FLV/TS stream: held open, relayed as it arrives.
async fn live(
    ctx: &Context,
    kind: StreamKind,
    req: &Request<Incoming>,
    peer: SocketAddr,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    let lease = ctx.claim(key).await?;
    let origin = lease.origin().clone();
    let protocol = if kind == StreamKind::Flv { "http-flv" } else { "http-ts" };
    let upstream = forward::send(ctx, &origin, req.method(), path_and_query(req), req.headers(), peer).await?;
    let status = upstream.response.status();
    tracing::info!(stream = %key, origin = %origin.id, status = status.as_u16(), "relaying {protocol}");
    let guard = status.is_success().then(|| ctx.metrics.connection(protocol, "player"));
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&[protocol, "out"]);
    Ok(relay(upstream, status.is_success().then_some(lease), bytes, guard))
}

/// A segment or other bounded resource of a stream, from a known origin.
async fn segment(
    ctx: &Context,
    req: &Request<Incoming>,
    peer: SocketAddr,
    origin: &Origin,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    tracing::Span::current().record("origin", tracing::field::display(&origin.id));
    tracing::debug!(stream = %key, origin = %origin.id, "segment");
    let upstream = forward::send(ctx, origin, req.method(), path_and_query(req), req.headers(), peer).await?;
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]);
    Ok(relay(upstream, None, bytes, None))
}

/// Fetches a playlist and rewrites it to carry `token`.
async fn playlist(
    ctx: &Context,
    req: &Request<Incoming>,
    peer: SocketAddr,
    origin: &Origin,
    token: &str,
) -> Result<Response<Body>, HttpError> {
    // Always GET upstream: a HEAD answer must carry the rewritten length.
    let upstream = forward::send(ctx, origin, &Method::GET, path_and_query(req), req.headers(), peer).await?;
    if !upstream.response.status().is_success() {
        let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]);
        return Ok(relay(upstream, None, bytes, None));
    }
    let (parts, body) = read_bounded(upstream, ctx.config.max_playlist_bytes).await?;
    let rewritten = hls::rewrite_playlist(&body, token).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_GATEWAY,
            format!("origin {} sent a bad playlist: {e}", origin.id),
        )
    })?;
    let mut headers = response_headers(&parts);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
    headers.remove(header::ETAG);
    ctx.metrics
        .bytes_relayed_total
        .with_label_values(&["hls", "out"])
        .inc_by(rewritten.len() as u64);
    let mut resp = Response::new(full(Bytes::from(rewritten)));
    *resp.status_mut() = parts.status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
