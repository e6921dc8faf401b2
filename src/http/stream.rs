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
use crate::origin::{Origin, Protocol};
use crate::store::{ClaimOutcome, Session, SessionKind};
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
    /// Token count at which the map is next pruned.
    prune_at: std::sync::atomic::AtomicUsize,
}

impl HttpState {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            tokens: Mutex::default(),
            prune_at: std::sync::atomic::AtomicUsize::new(1024),
        }
    }

    fn token_for(&self, key: &StreamKey, origin_id: &str) -> String {
        let now = Instant::now();
        let ttl = self.ctx.config.hls_session_ttl;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Prune when the map has doubled since the last prune, so a large
        // deployment does not scan every token on every playlist request.
        if tokens.len() >= self.prune_at.load(std::sync::atomic::Ordering::Relaxed) {
            tokens.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            self.prune_at
                .store((tokens.len() * 2).max(1024), std::sync::atomic::Ordering::Relaxed);
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
    let (key, ext) = StreamKey::from_http(req.uri().path(), req.uri().query(), host.as_deref())
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad stream path: {e}")))?;
    // The origin is asked for what the key names, never for the raw path:
    // `?app=&stream=` cannot make one stream be served from another's
    // origin, and no dot segment reaches an origin.
    let target = upstream_target(&key, &ext, req.uri().query());
    let target = target.as_str();
    let span = tracing::Span::current();
    span.record("stream", tracing::field::display(&key));
    tracing::debug!(stream = %key, kind = kind.as_str(), "stream request");

    // A token names the origin directly, for playlists and segments alike
    // (never for FLV: a live stream always holds a lease).
    let token = hls::token_from_query(req.uri().query()).filter(|_| kind != StreamKind::Flv);
    if let Some(token) = token {
        if let Some((session, origin)) = session_origin(ctx, token).await? {
            return match kind {
                StreamKind::Playlist => playlist(ctx, &req, target, peer, &origin, token, None).await,
                _ => segment(ctx, &req, target, peer, &origin, &session.key).await,
            };
        }
        tracing::info!(stream = %key, "unknown or expired HLS token; routing by path");
    }

    match kind {
        StreamKind::Flv | StreamKind::Ts => {
            if kind == StreamKind::Ts {
                if let Some(base) = key.without_segment_number() {
                    if let Some(origin) = lookup(ctx, &base).await? {
                        return segment(ctx, &req, target, peer, &origin, &base).await;
                    }
                }
            }
            live(ctx, kind, &req, target, peer, &key).await
        }
        StreamKind::Playlist => {
            let (origin, outcome) = ctx.claim_origin(&key, Protocol::Http).await?;
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
            playlist(ctx, &req, target, peer, &origin, &token, Some((&key, outcome))).await
        }
        StreamKind::Segment => {
            let base = key.without_segment_number().unwrap_or_else(|| key.clone());
            let origin = match lookup(ctx, &base).await? {
                Some(o) => Some(o),
                None if base != key => lookup(ctx, &key).await?,
                None => None,
            };
            match origin {
                Some(origin) => segment(ctx, &req, target, peer, &origin, &base).await,
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

/// `/{app}/{stream}.{ext}?{query}`, each name percent-encoded as a path
/// segment.
pub fn upstream_target(key: &StreamKey, ext: &str, query: Option<&str>) -> String {
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

/// A live FLV/TS stream: held open, relayed as it arrives.
async fn live(
    ctx: &Context,
    kind: StreamKind,
    req: &Request<Incoming>,
    target: &str,
    peer: SocketAddr,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    let lease = ctx.claim(key, Protocol::Http).await?;
    let origin = lease.origin().clone();
    let protocol = if kind == StreamKind::Flv { "http-flv" } else { "http-ts" };
    let upstream = forward::send(ctx, &origin, req.method(), target, req.headers(), peer).await?;
    let status = upstream.response.status();
    tracing::info!(stream = %key, origin = %origin.id, status = status.as_u16(), "relaying {protocol}");
    if !status.is_success() && lease.outcome() != ClaimOutcome::Hit {
        forget_claim(ctx, key, &origin.id, lease.outcome()).await;
    }
    let guard = status.is_success().then(|| ctx.metrics.connection(protocol, "player"));
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&[protocol, "out"]);
    Ok(relay(upstream, status.is_success().then_some(lease), bytes, guard))
}

/// Drops a mapping this request created for a stream the origin does not
/// have, so requests for names nobody publishes do not count as load.
async fn forget_claim(ctx: &Context, key: &StreamKey, origin_id: &str, outcome: ClaimOutcome) {
    tracing::debug!(stream = %key, outcome = outcome.as_str(), "origin has no such stream; claim released");
    if let Err(e) = ctx.store_op("release", ctx.store.release_stream(key, origin_id)).await {
        tracing::warn!(stream = %key, error = %e, "could not release claim; it will expire");
    }
}

/// A segment or other bounded resource of a stream, from a known origin.
async fn segment(
    ctx: &Context,
    req: &Request<Incoming>,
    target: &str,
    peer: SocketAddr,
    origin: &Origin,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    tracing::Span::current().record("origin", tracing::field::display(&origin.id));
    tracing::debug!(stream = %key, origin = %origin.id, "segment");
    let upstream = forward::send(ctx, origin, req.method(), target, req.headers(), peer).await?;
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]);
    Ok(relay(upstream, None, bytes, None))
}

/// Fetches a playlist and rewrites it to carry `token`.
async fn playlist(
    ctx: &Context,
    req: &Request<Incoming>,
    target: &str,
    peer: SocketAddr,
    origin: &Origin,
    token: &str,
    claimed: Option<(&StreamKey, ClaimOutcome)>,
) -> Result<Response<Body>, HttpError> {
    // Always GET upstream: a HEAD answer must carry the rewritten length.
    let upstream = forward::send(ctx, origin, &Method::GET, target, req.headers(), peer).await?;
    if !upstream.response.status().is_success() {
        if let Some((key, outcome)) = claimed.filter(|(_, o)| *o != ClaimOutcome::Hit) {
            forget_claim(ctx, key, &origin.id, outcome).await;
        }
        let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]);
        return Ok(relay(upstream, None, bytes, None));
    }
    let (parts, body) = read_bounded(
        upstream,
        ctx.config.max_playlist_bytes,
        ctx.config.origin_response_timeout,
    )
    .await?;
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
