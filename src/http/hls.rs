//! HLS through the proxy: playlists and their segments.
//!
//! * A playlist claims its stream (like a player), is fetched whole
//!   (bounded by `max_playlist_bytes`), and every URI in it is rewritten to
//!   carry a routing token ([`super::hls_session`]).
//! * A segment goes to the origin its token names, else to the origin that
//!   serves the stream its path names. Segments never claim: a segment of
//!   an unknown stream is a 404, not a new stream.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

use super::forward::{self, read_bounded, relay, response_headers};
use super::hls_session::{self, HlsSessions};
use super::request::{HttpState, StreamKind, StreamRequest};
use super::{full, Body, HttpError};
use crate::context::Context;
use crate::hls;
use crate::origin::{Origin, Protocol};
use crate::store::ClaimOutcome;
use crate::stream_key::StreamKey;

/// Serves a playlist or segment whose `spbhid` token names a live session;
/// `None` when there is no token or it is unknown (the path decides then).
pub async fn by_token(
    state: &HttpState,
    kind: StreamKind,
    sr: &StreamRequest<'_>,
) -> Result<Option<Response<Body>>, HttpError> {
    let Some(token) = hls::token_from_query(sr.req.uri().query()) else {
        return Ok(None);
    };
    let Some((session, origin)) = hls_session::resolve(&state.ctx, &token).await? else {
        tracing::info!(stream = %sr.key, "unknown or expired HLS token; routing by path");
        return Ok(None);
    };
    let resp = match kind {
        // The session is bound to its origin: a failure is reported (the
        // next playlist without a live token is claimed elsewhere).
        StreamKind::Playlist => {
            let fetched = fetch_playlist(state, sr, &origin, Token::Existing(&token)).await;
            state.ctx.reported(&origin, fetched).await?
        }
        _ => from_origin(state, sr, &origin, &session.key).await?,
    };
    Ok(Some(resp))
}

/// A `.ts` named like a segment (`stream-12.ts`) of a stream that is
/// mapped: served from that stream's origin. `None` when the name is not a
/// segment's or its stream is not mapped (then it is a live HTTP-TS
/// stream).
pub async fn numbered_segment(state: &HttpState, sr: &StreamRequest<'_>) -> Result<Option<Response<Body>>, HttpError> {
    let Some(base) = sr.key.without_segment_number() else {
        return Ok(None);
    };
    match lookup(&state.ctx, &base).await? {
        Some(origin) => from_origin(state, sr, &origin, &base).await.map(Some),
        None => Ok(None),
    }
}

/// A playlist requested without a (live) token: claim the stream, fetch,
/// and hand out a token once the origin has answered.
pub async fn playlist(state: &HttpState, sr: &StreamRequest<'_>) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let fetch = |origin: Origin, outcome| async move {
        let token = Token::New {
            sessions: &state.sessions,
            outcome,
        };
        fetch_playlist(state, sr, &origin, token).await
    };
    let (_, _, playlist) = ctx.claim_origin_with(&sr.key, Protocol::Http, fetch).await?;
    Ok(playlist)
}

/// A segment (or other bounded resource) requested without a token: from
/// the origin serving the stream its path names.
pub async fn segment(state: &HttpState, sr: &StreamRequest<'_>) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let key = &sr.key;
    let base = key.without_segment_number().unwrap_or_else(|| key.clone());
    let origin = match lookup(ctx, &base).await? {
        Some(o) => Some(o),
        None if base != *key => lookup(ctx, key).await?,
        None => None,
    };
    match origin {
        Some(origin) => from_origin(state, sr, &origin, &base).await,
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no origin serves stream {base}"),
        )),
    }
}

async fn lookup(ctx: &Context, key: &StreamKey) -> Result<Option<Origin>, HttpError> {
    Ok(ctx.store_op("lookup", ctx.store.lookup(key)).await?)
}

/// A segment from a known origin, relayed as it arrives, on a kept-alive
/// connection.
async fn from_origin(
    state: &HttpState,
    sr: &StreamRequest<'_>,
    origin: &Origin,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    tracing::Span::current().record("origin", tracing::field::display(&origin.id));
    tracing::debug!(stream = %key, origin = %origin.id, "segment");
    let pool = Some(&state.keep_alive);
    let sent = forward::send(
        ctx,
        origin,
        sr.req.method(),
        &sr.target,
        sr.req.headers(),
        sr.peer,
        pool,
    )
    .await;
    let upstream = ctx.reported(origin, sent).await?;
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&["hls", "out"]);
    Ok(relay(upstream, None, bytes, None))
}

/// Which token a fetched playlist carries.
enum Token<'a> {
    /// The one the client sent (its session was extended).
    Existing(&'a str),
    /// A token to open once the origin answered, for a claim with this
    /// outcome (undone if the origin does not have the stream).
    New {
        sessions: &'a HlsSessions,
        outcome: ClaimOutcome,
    },
}

/// Fetches a playlist and rewrites it to carry the token, at most
/// `hls_max_rewrites` at once: a request that finds no slot within the
/// origin response timeout gets 503.
async fn fetch_playlist(
    state: &HttpState,
    sr: &StreamRequest<'_>,
    origin: &Origin,
    token: Token<'_>,
) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let wait = ctx.config.origin_response_timeout;
    let Ok(Ok(_slot)) = tokio::time::timeout(wait, state.rewrites.acquire()).await else {
        ctx.metrics
            .listener_refused_total
            .with_label_values(&[super::route::LISTENER_NAME, "hls_rewrites"])
            .inc();
        if let Token::New { outcome, .. } = token {
            ctx.forget_claim(&sr.key, &origin.id, outcome).await;
        }
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many playlists in flight; retry",
        ));
    };
    // Always GET upstream: a HEAD answer must carry the rewritten length.
    let pool = Some(&state.keep_alive);
    let upstream = forward::send(ctx, origin, &Method::GET, &sr.target, sr.req.headers(), sr.peer, pool).await?;
    if !upstream.response.status().is_success() {
        if let Token::New { outcome, .. } = token {
            ctx.forget_claim(&sr.key, &origin.id, outcome).await;
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
    let token_text = match &token {
        Token::Existing(token) => token.to_string(),
        Token::New { sessions, .. } => sessions.token_for(&sr.key, &origin.id),
    };
    let rewritten = match hls::rewrite_playlist(&body, &token_text, ctx.config.hls_max_playlist_uris) {
        Ok(rewritten) => rewritten,
        Err(e) => {
            if let Token::New { outcome, .. } = token {
                ctx.forget_claim(&sr.key, &origin.id, outcome).await;
            }
            return Err(HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} sent a bad playlist", origin.id),
                e.to_string(),
            ));
        }
    };
    // Recorded only now: the origin answered with a playlist we can serve.
    if let Token::New { sessions, .. } = token {
        sessions.record(ctx, &token_text, &sr.key, origin).await?;
    }
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
