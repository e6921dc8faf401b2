//! HLS through the proxy: playlists and their segments.
//!
//! * A playlist claims its stream (like a player), is fetched whole
//!   (bounded by `max_playlist_bytes`), and every URI in it is rewritten to
//!   carry a routing token ([`super::hls_session`]).
//! * A segment goes to the origin its token names, else to the origin that
//!   serves the stream its path names. Segments never claim: a segment of
//!   an unknown stream is a 404, not a new stream.
//! * In edge mode, a GET of either (without `Range`) asks the origin
//!   through the replica's
//!   [`HlsCache`](super::edge::hls_cache::HlsCache): one origin request
//!   for every player asking at once, and the answer kept for a while. A
//!   playlist is cached as the origin wrote it and rewritten per request,
//!   so every player gets its own routing token.

use std::sync::Arc;

use http::{header, HeaderMap, Method, Response, StatusCode};

use super::edge::hls_cache::{Answer, CacheKey, Fetched, Kind, Outcome};
use super::exchange;
use super::forward::{self, Whole};
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

/// A segment from a known origin: through the cache in edge mode, else
/// (or when it is too large to cache) relayed as it arrives, on a
/// kept-alive connection.
async fn from_origin(
    state: &HttpState,
    sr: &StreamRequest<'_>,
    origin: &Origin,
    key: &StreamKey,
) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    tracing::Span::current().record("origin", tracing::field::display(&origin.id));
    tracing::debug!(stream = %key, origin = %origin.id, "segment");
    if cacheable(state, sr) {
        let cache_key = CacheKey::segment(&origin.id, &sr.key, &sr.target);
        let fetch = shared_fetch(state, sr, origin, ctx.config.edge.hls_max_segment_bytes);
        match Box::pin(state.edge.hls_cache.get(Kind::Segment, cache_key, fetch)).await {
            Outcome::Answer(answer) => return Ok(answer_response(state, &answer)),
            Outcome::Failed(e) => return ctx.reported(origin, Err(e)).await,
            Outcome::TooLarge => {}
        }
    }
    let sent = exchange::send(
        ctx,
        origin,
        sr.req.method(),
        &sr.target,
        sr.req.headers(),
        sr.peer,
        &state.keep_alive,
    )
    .await;
    let upstream = ctx.reported(origin, sent).await?;
    Ok(upstream.relay(state.hls_bytes_out.clone()))
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
    let Ok(Ok(_slot)) = crate::context::timeout_if_pending(wait, state.rewrites.acquire()).await else {
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
    let answer = match origin_playlist(state, sr, origin).await? {
        Ok(answer) => answer,
        Err(not_ok) => {
            if let Token::New { outcome, .. } = token {
                ctx.forget_claim(&sr.key, &origin.id, outcome).await;
            }
            return Ok(not_ok);
        }
    };
    let body = &answer.get().body;
    let (token_text, store, kept) = match &token {
        Token::Existing(token) => (
            Arc::from(*token),
            false,
            state.sessions.kept(&sr.key, &origin.id, token),
        ),
        Token::New { sessions, .. } => {
            let handed = sessions.token_for(&sr.key, &origin.id);
            (handed.text, handed.store, handed.kept)
        }
    };
    let max_uris = ctx.config.hls_max_playlist_uris;
    let stream = (&sr.key, &*origin.id);
    let rewritten = match state.sessions.rewrite(stream, &token_text, kept, body, max_uris) {
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
    if let (Token::New { sessions, .. }, true) = (token, store) {
        sessions.record(ctx, &token_text, &sr.key, origin).await?;
    }
    // A fetch of this request's own is not shared: its headers are taken,
    // not copied.
    let status = answer.get().status;
    let mut headers = answer.into_headers();
    // The length is the rewrite's, written from the body's.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ETAG);
    state.hls_bytes_out.inc_by(rewritten.len() as u64);
    let mut resp = Response::new(full(rewritten));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The origin's playlist, whole, when it answered 2xx; any other answer
/// is the response to send as it is. In edge mode a GET is answered from
/// the cache or shares one origin request.
async fn origin_playlist(
    state: &HttpState,
    sr: &StreamRequest<'_>,
    origin: &Origin,
) -> Result<Result<Playlist, Response<Body>>, HttpError> {
    let ctx = &state.ctx;
    let limit = ctx.config.max_playlist_bytes;
    if cacheable(state, sr) {
        let cache_key = CacheKey::playlist(&origin.id, &sr.key, &sr.target);
        let fetch = shared_fetch(state, sr, origin, limit);
        return match Box::pin(state.edge.hls_cache.get(Kind::Playlist, cache_key, fetch)).await {
            Outcome::Answer(answer) if answer.status.is_success() => Ok(Ok(Playlist::Shared(answer))),
            Outcome::Answer(answer) => Ok(Err(answer_response(state, &answer))),
            Outcome::TooLarge => Err(forward::playlist_too_large(limit)),
            Outcome::Failed(e) => Err(e),
        };
    }
    // Always GET upstream: a HEAD answer must carry the rewritten length.
    let pool = &state.keep_alive;
    let upstream = exchange::send(ctx, origin, &Method::GET, &sr.target, sr.req.headers(), sr.peer, pool).await?;
    if !upstream.status.is_success() {
        return Ok(Err(upstream.relay(state.hls_bytes_out.clone())));
    }
    let wait = ctx.config.origin_response_timeout;
    let read = crate::context::timeout_if_pending(wait, upstream.read_whole(limit, wait)).await;
    let (parts, body) = forward::bounded(read, limit, wait)?;
    Ok(Ok(Playlist::Own(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })))
}

/// A playlist the origin answered 2xx: this request's own fetch, or one
/// shared through the edge cache.
enum Playlist {
    Own(Answer),
    Shared(Arc<Answer>),
}

impl Playlist {
    fn get(&self) -> &Answer {
        match self {
            Playlist::Own(answer) => answer,
            Playlist::Shared(answer) => answer,
        }
    }

    /// The origin's fields: taken from an own fetch, copied from a shared
    /// one.
    fn into_headers(self) -> HeaderMap {
        match self {
            Playlist::Own(answer) => answer.headers,
            Playlist::Shared(answer) => answer.headers.clone(),
        }
    }
}

/// Whether a request goes through the HLS cache: edge mode on, a GET, and
/// not for a byte range (HEAD and ranges behave as with edge mode off).
/// The cache's wait is boxed where it is awaited: inline, it would make
/// every request's future (edge mode or not) larger by its size.
fn cacheable(state: &HttpState, sr: &StreamRequest<'_>) -> bool {
    state.ctx.config.edge.enabled() && sr.req.method() == Method::GET && !sr.req.headers().contains_key(header::RANGE)
}

/// Request headers that would make the origin's answer fit one client
/// only; the shared request goes without them (a conditional or ranged
/// answer handed to every waiting player would be wrong for the others).
const PER_CLIENT_HEADERS: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// The origin request a cache flight makes for `sr`: a GET of its target
/// with its headers (minus [`PER_CLIENT_HEADERS`] and `Accept-Encoding`),
/// the whole body read if it is at most `limit` bytes.
fn shared_fetch(
    state: &HttpState,
    sr: &StreamRequest<'_>,
    origin: &Origin,
    limit: usize,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Fetched, HttpError>> + Send>> {
    let ctx = state.ctx.clone();
    let pool = state.keep_alive.clone();
    let origin = origin.clone();
    let target = sr.target.clone();
    let peer = sr.peer;
    let mut headers: HeaderMap = sr.req.headers().clone();
    for name in PER_CLIENT_HEADERS.iter().chain([&header::ACCEPT_ENCODING]) {
        headers.remove(name);
    }
    move || {
        Box::pin(async move {
            let upstream = exchange::send(&ctx, &origin, &Method::GET, &target, &headers, peer, &pool).await?;
            Ok(
                match upstream.read_whole(limit, ctx.config.origin_response_timeout).await? {
                    Whole::Body(parts, body) => Fetched::Whole(Answer {
                        status: parts.status,
                        // End-to-end fields only, as the exchange reads them.
                        headers: parts.headers,
                        body,
                    }),
                    Whole::TooLarge => Fetched::TooLarge,
                },
            )
        })
    }
}

/// A whole answer as a response, counted (the cache's bytes are shared,
/// not copied).
fn answer_response(state: &HttpState, answer: &Answer) -> Response<Body> {
    state.hls_bytes_out.inc_by(answer.body.len() as u64);
    answer.to_response()
}
