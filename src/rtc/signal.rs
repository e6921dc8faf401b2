//! WebRTC signalling on `PROXY_HTTP_API`, as SRS serves it:
//!
//! * WHIP/WHEP: `POST /rtc/v1/whip/?app=…&stream=…` (and `/rtc/v1/whep/`)
//!   with an `application/sdp` offer; `201` with the answer and a
//!   `Location` for the session resource.
//! * SRS's JSON API: `POST /rtc/v1/publish/` and `/rtc/v1/play/` with
//!   `{"streamurl":"webrtc://host/app/stream","sdp":…}`, answered
//!   `{"code":0,"sdp":…,"sessionid":…}`.
//! * `DELETE`/`PATCH` on the session resource, routed to the session's
//!   origin; a successful `DELETE` ends the session on the proxy too.
//! * `GET /api/v1/versions` and CORS preflights.
//!
//! An offer is checked (SDP with media and ICE credentials), the stream is
//! claimed on an origin with both `api` and `rtc` ports, the offer goes
//! there unchanged (query, tokens and `Authorization` included), and a
//! successful answer comes back with its candidates rewritten to the
//! proxy ([`super::sdp`]) while the session is recorded in the store under
//! the STUN username its client will send. Anything else the origin
//! answers reaches the client intact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use tracing::Instrument;

use super::offer::{self, Answer};
use super::sdp::{CandidateRewrite, Sdp};
use super::session::Record;
use super::RtcState;
use crate::http::forward::strip_hop_by_hop;
use crate::http::serve::HttpServer;
use crate::http::{full, versions, Body, HttpError};
use crate::origin::{Origin, Protocol};
use crate::store::SessionKind;
use crate::stream_key::{query_pairs, StreamKey};

/// Query parameter the proxy adds to a session's `Location`, naming the
/// session (its STUN username) so `DELETE`/`PATCH` find its origin on any
/// replica. It is removed before the request goes to the origin.
pub const SESSION_PARAM: &str = "proxy_session";

/// How long a client may take to send its offer.
const BODY_WAIT: Duration = Duration::from_secs(30);

/// What a signalling request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// WHIP (publish) or WHEP (play): SDP in, SDP out.
    Sdp { play: bool },
    /// SRS's JSON API: JSON in, JSON out.
    Json { play: bool },
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path.trim_end_matches('/') {
            "/rtc/v1/whip" => Self::Sdp { play: false },
            "/rtc/v1/whep" => Self::Sdp { play: true },
            "/rtc/v1/publish" => Self::Json { play: false },
            "/rtc/v1/play" => Self::Json { play: true },
            _ => return None,
        })
    }

    /// Route class for metrics.
    fn class(self) -> &'static str {
        match self {
            Self::Sdp { play: false } => "whip",
            Self::Sdp { play: true } => "whep",
            Self::Json { play: false } => "rtc_publish",
            Self::Json { play: true } => "rtc_play",
        }
    }
}

/// Serves signalling until the proxy drains.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<RtcState>) {
    let ctx = state.ctx.clone();
    let max = ctx.config.http_api_max_connections;
    let server = HttpServer::new(ctx.clone(), "http_api", move |req, peer| {
        let state = state.clone();
        async move { route(&state, req, peer).await }
    });
    crate::listener::serve(listener, ctx, "http_api", max, server).await
}

async fn route(state: &RtcState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let span = crate::http::request_span(&req);
    async move {
        let (class, result) = dispatch(state, req, peer).await;
        let result = result.map(|mut resp| {
            let headers = resp.headers_mut();
            // WHIP/WHEP clients in browsers must read Location and may PATCH.
            for (name, value) in [
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, POST, HEAD, PUT, PATCH, DELETE, OPTIONS",
                ),
                (
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    "Server, Location, Link, ETag, Content-Length, Content-Range",
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "origin, authorization, content-type, if-match, x-requested-with",
                ),
            ] {
                headers.entry(name).or_insert(HeaderValue::from_static(value));
            }
            resp
        });
        let mut resp = crate::http::finish(&state.ctx, class, result);
        crate::http::add_standard_fields(resp.headers_mut());
        resp
    }
    .instrument(span)
    .await
}

async fn dispatch(
    state: &RtcState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, Result<Response<Body>, HttpError>) {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == versions::PATH {
        return ("versions", Ok(versions::versions(&state.ctx).await));
    }
    if method == Method::OPTIONS {
        return ("options", Ok(Response::new(full(Bytes::new()))));
    }
    match (Endpoint::of(&path), &method) {
        (Some(ep @ Endpoint::Sdp { .. }), &Method::POST) => (ep.class(), sdp_offer(state, req, peer).await),
        (Some(ep @ Endpoint::Json { .. }), &Method::POST) => (ep.class(), json_offer(state, req, peer).await),
        (_, &Method::DELETE | &Method::PATCH) if path.starts_with("/rtc/v1/") => {
            ("rtc_resource", resource(state, req, peer).await)
        }
        (Some(_), _) => (
            "other",
            Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed; WebRTC offers are POSTed"),
            )),
        ),
        (None, _) => (
            "other",
            Err(HttpError::new(
                StatusCode::NOT_FOUND,
                format!("no WebRTC API at {path}"),
            )),
        ),
    }
}

/// WHIP/WHEP: an `application/sdp` offer.
async fn sdp_offer(state: &RtcState, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, HttpError> {
    let host = host(&req);
    let key = StreamKey::from_rtc_query(req.uri().query(), host.as_deref())
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad stream: {e}")))?;
    tracing::Span::current().record("stream", tracing::field::display(&key));
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/sdp") {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("offer must be application/sdp, not {ct:?}"),
            ));
        }
    }
    let target = path_and_query(&req);
    let (parts, body) = read_body(req, state.settings.max_sdp_bytes).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| HttpError::new(StatusCode::BAD_REQUEST, "offer is not UTF-8 text"))?;
    let offer_ufrag = offer_ufrag(text)?;
    let (origin, answer) = send_offer(state, &key, &target, &parts.headers, body, peer).await?;
    if !answer.parts.status.is_success() {
        return Ok(relay_as_is(answer));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|_| not_sdp(&origin))?;
    let (sdp, username) = accept_answer(state, &key, &origin, &offer_ufrag, text).await?;
    let Answer { mut parts, .. } = answer;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(location) = parts
        .headers
        .get(header::LOCATION)
        .and_then(|l| rewrite_location(l, &username))
    {
        parts.headers.insert(header::LOCATION, location);
    }
    Ok(Response::from_parts(parts, full(sdp)))
}

/// SRS's JSON offer body (other fields go to the origin untouched).
#[derive(Deserialize)]
struct JsonOffer {
    streamurl: String,
    sdp: String,
}

/// SRS's JSON API: `/rtc/v1/publish/`, `/rtc/v1/play/`.
async fn json_offer(state: &RtcState, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, HttpError> {
    let target = path_and_query(&req);
    let (parts, body) = read_body(req, state.settings.max_sdp_bytes).await?;
    let offer: JsonOffer = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("body is not an SRS WebRTC offer ({{\"streamurl\":…,\"sdp\":…}}): {e}"),
        )
    })?;
    let key = StreamKey::from_webrtc_url(&offer.streamurl)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad streamurl: {e}")))?;
    tracing::Span::current().record("stream", tracing::field::display(&key));
    let offer_ufrag = offer_ufrag(&offer.sdp)?;
    let (origin, answer) = send_offer(state, &key, &target, &parts.headers, body, peer).await?;
    if !answer.parts.status.is_success() {
        return Ok(relay_as_is(answer));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
        HttpError::origin(
            StatusCode::BAD_GATEWAY,
            format!("origin {} answered something that is not JSON", origin.id),
            e.to_string(),
        )
    })?;
    if value.get("code").and_then(serde_json::Value::as_i64) != Some(0) {
        // SRS reports its own errors as a non-zero code: pass them on.
        return Ok(relay_as_is(answer));
    }
    let text = value
        .get("sdp")
        .and_then(|v| v.as_str())
        .ok_or_else(|| not_sdp(&origin))?;
    let (sdp, _) = accept_answer(state, &key, &origin, &offer_ufrag, text).await?;
    value["sdp"] = serde_json::Value::String(sdp);
    let Answer { mut parts, .. } = answer;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&value).expect("a JSON value serialises");
    Ok(Response::from_parts(parts, full(body)))
}

/// `DELETE`/`PATCH` of a session resource, routed to the session's origin
/// (named by [`SESSION_PARAM`]) or, for URLs the proxy did not hand out,
/// to the origin of the stream the query names.
async fn resource(state: &RtcState, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let query = req.uri().query().unwrap_or("").to_string();
    let username = query_pairs(&query)
        .into_iter()
        .find(|(k, _)| k == SESSION_PARAM)
        .map(|(_, v)| v);
    let origin = match &username {
        Some(username) => {
            let origin_id = match state.sessions.record(username) {
                Some(record) => record.origin_id.clone(),
                None => ctx
                    .store_op(
                        "touch_session",
                        ctx.store
                            .touch_session(SessionKind::Rtc, username, state.settings.idle_timeout),
                    )
                    .await?
                    .map(|s| s.origin_id)
                    .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "no such WebRTC session"))?,
            };
            ctx.store_op("origin", ctx.store.origin(&origin_id))
                .await?
                .ok_or_else(|| {
                    HttpError::new(
                        StatusCode::NOT_FOUND,
                        format!("the session's origin {origin_id} is gone"),
                    )
                })?
        }
        None => {
            let key = StreamKey::from_rtc_query(Some(&query), host(&req).as_deref()).map_err(|_| {
                HttpError::new(
                    StatusCode::NOT_FOUND,
                    "no such WebRTC session: the URL names neither a proxy session nor app and stream",
                )
            })?;
            ctx.store_op("lookup", ctx.store.lookup(&key))
                .await?
                .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, format!("stream {key} is on no origin")))?
        }
    };
    tracing::Span::current().record("origin", tracing::field::display(&origin.id));
    let method = req.method().clone();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(SESSION_PARAM))
        .collect();
    let target = if kept.is_empty() {
        req.uri().path().to_string()
    } else {
        format!("{}?{}", req.uri().path(), kept.join("&"))
    };
    let (parts, body) = read_body(req, state.settings.max_sdp_bytes).await?;
    let answer = offer::exchange(
        ctx,
        &origin,
        method.clone(),
        &target,
        &parts.headers,
        body,
        peer,
        state.settings.max_sdp_bytes,
    )
    .await?;
    if method == Method::DELETE && answer.parts.status.is_success() {
        if let Some(username) = username {
            end_session(state, &username).await;
        }
    }
    Ok(relay_as_is(answer))
}

/// Ends a session on this replica and in the store (a relay on another
/// replica notices at its next refresh).
async fn end_session(state: &RtcState, username: &str) {
    state.sessions.remove(username, None);
    let ctx = &state.ctx;
    if let Err(e) = ctx
        .store_op("remove_session", ctx.store.remove_session(SessionKind::Rtc, username))
        .await
    {
        tracing::warn!(error = %e, "could not remove the WebRTC session from the store; it will expire");
    }
    tracing::info!(session = username, "WebRTC session deleted");
}

/// Claims the stream and sends the offer to its origin.
async fn send_offer(
    state: &RtcState,
    key: &StreamKey,
    target: &str,
    headers: &http::HeaderMap,
    body: Bytes,
    peer: SocketAddr,
) -> Result<(Origin, Answer), HttpError> {
    if !state.sessions.has_room() {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many WebRTC sessions on this proxy (limit {})",
                state.settings.max_sessions
            ),
        ));
    }
    // An origin that cannot be reached is reported and the offer sent once
    // to another.
    let offer_to = |origin: Origin, _| {
        let body = body.clone();
        async move {
            if !origin.serves(Protocol::Rtc) {
                return Err(HttpError::origin(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("stream {key} is on origin {}, which serves no WebRTC", origin.id),
                    "origin lacks an api or rtc port",
                ));
            }
            let max = state.settings.max_sdp_bytes;
            Ok(offer::exchange(&state.ctx, &origin, Method::POST, target, headers, body, peer, max).await?)
        }
    };
    let (origin, _, answer) = state.ctx.claim_origin_with(key, Protocol::Rtc, offer_to).await?;
    Ok((origin, answer))
}

/// Checks the origin's answer, rewrites its candidates to the proxy and
/// records the session; returns the answer to send and the STUN username.
async fn accept_answer(
    state: &RtcState,
    key: &StreamKey,
    origin: &Origin,
    offer_ufrag: &str,
    answer: &str,
) -> Result<(String, String), HttpError> {
    let bad = |reason: String| {
        HttpError::new(
            StatusCode::BAD_GATEWAY,
            format!("origin {} answer: {reason}", origin.id),
        )
    };
    let mut sdp = Sdp::parse(answer).map_err(|e| bad(e.to_string()))?;
    let credentials = sdp.ice_credentials().map_err(|e| bad(e.to_string()))?;
    let origin_port = origin.port(Protocol::Rtc).expect("claimed for WebRTC");
    let public = state.public_addresses().await;
    let kept = sdp.rewrite_candidates(&CandidateRewrite {
        origin_port,
        proxy_port: state.public_port,
        public: &public,
    });
    if kept == 0 {
        return Err(bad(format!("no UDP candidate on its WebRTC port {origin_port}")));
    }
    let record = Record {
        username: format!("{}:{offer_ufrag}", credentials.ufrag),
        key: key.clone(),
        origin_id: origin.id.to_string(),
        ice_pwd: credentials.pwd,
    };
    let ctx = &state.ctx;
    ctx.store_op(
        "put_session",
        ctx.store.put_session(
            SessionKind::Rtc,
            &record.username,
            record.to_session(),
            state.settings.idle_timeout,
        ),
    )
    .await?;
    let username = record.username.clone();
    state
        .sessions
        .insert(record)
        .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tracing::info!(session = %username, "WebRTC session signalled");
    Ok((sdp.to_string(), username))
}

/// The offer's ice-ufrag, once the offer is known to be SDP with media
/// and ICE credentials.
fn offer_ufrag(offer: &str) -> Result<String, HttpError> {
    Sdp::parse(offer)
        .and_then(|sdp| sdp.ice_credentials())
        .map(|c| c.ufrag)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("offer: {e}")))
}

fn not_sdp(origin: &Origin) -> HttpError {
    HttpError::origin(
        StatusCode::BAD_GATEWAY,
        format!("origin {} answered without an SDP answer", origin.id),
        "answer body is not UTF-8 SDP",
    )
}

fn host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

fn path_and_query(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into())
}

/// Reads a signalling body of at most `limit` bytes.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<(http::request::Parts, Bytes), HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("signalling body is larger than {limit} bytes"),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(BODY_WAIT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| HttpError::new(StatusCode::REQUEST_TIMEOUT, "the offer did not arrive in time"))?;
    match collected {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// An origin response passed on as it is (minus hop-by-hop headers).
fn relay_as_is(answer: Answer) -> Response<Body> {
    let Answer { mut parts, body } = answer;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
}

/// The session resource as the client must address it: on the proxy
/// (an absolute URL to the origin becomes a path), naming the session.
/// `None` leaves a Location the proxy cannot route (a relative path not
/// starting with `/`) as it was.
pub fn rewrite_location(location: &HeaderValue, username: &str) -> Option<HeaderValue> {
    let text = location.to_str().ok()?;
    let target = match text.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri.path_and_query()?.as_str().to_string(),
        _ => text.to_string(),
    };
    if !target.starts_with('/') {
        return None;
    }
    let separator = if target.contains('?') { '&' } else { '?' };
    let session = utf8_percent_encode(username, NON_ALPHANUMERIC);
    HeaderValue::from_str(&format!("{target}{separator}{SESSION_PARAM}={session}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::of("/rtc/v1/whip/"), Some(Endpoint::Sdp { play: false }));
        assert_eq!(Endpoint::of("/rtc/v1/whep"), Some(Endpoint::Sdp { play: true }));
        assert_eq!(Endpoint::of("/rtc/v1/publish/"), Some(Endpoint::Json { play: false }));
        assert_eq!(Endpoint::of("/rtc/v1/play/"), Some(Endpoint::Json { play: true }));
        assert_eq!(Endpoint::of("/rtc/v1/whipx/"), None);
        assert_eq!(Endpoint::of("/live/s.flv"), None);
    }

    #[test]
    fn locations_point_at_the_proxy_and_name_the_session() {
        let srs = HeaderValue::from_static("/rtc/v1/whip/?action=delete&token=t1&app=live&stream=s&session=ab:cd");
        assert_eq!(
            rewrite_location(&srs, "ab+/:cd").unwrap(),
            "/rtc/v1/whip/?action=delete&token=t1&app=live&stream=s&session=ab:cd&proxy_session=ab%2B%2F%3Acd"
        );
        let absolute = HeaderValue::from_static("http://10.0.0.7:1985/rtc/v1/whep/resource/42");
        assert_eq!(
            rewrite_location(&absolute, "a:b").unwrap(),
            "/rtc/v1/whep/resource/42?proxy_session=a%3Ab"
        );
        assert_eq!(rewrite_location(&HeaderValue::from_static("resource/42"), "a:b"), None);
        // What the proxy hands out parses back to the username.
        let loc = rewrite_location(&srs, "ab+/:cd").unwrap();
        let query = loc.to_str().unwrap().split_once('?').unwrap().1;
        let pairs = query_pairs(query);
        assert_eq!(pairs.iter().find(|(k, _)| k == SESSION_PARAM).unwrap().1, "ab+/:cd");
    }
}
