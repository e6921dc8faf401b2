//! The system API (`PROXY_SYSTEM_API`): readiness, origin registration,
//! metrics and the admin listings.
//!
//! * `GET /api/v1/versions` — 200 while serving, 503 while draining or when
//!   the store is unusable (the readiness probe). Always open.
//! * `POST /api/v1/srs/register` — SRS `heartbeat { ports on; }` body
//!   ([`crate::discovery::heartbeat`] decides what it may register).
//! * `GET /metrics` — Prometheus text format; open unless
//!   `http_api_auth.metrics` is on.
//! * `GET /api/v1/origins`, `GET /api/v1/streams` — what the store holds,
//!   a page at a time (`?limit=`, and `?cursor=` from the previous
//!   page's `next`).
//!
//! With `PROXY_HTTP_API_AUTH_ENABLED` every endpoint but versions (and
//! metrics, unless protected) needs `Authorization: Bearer <token>`; a
//! request without it gets 401 with `WWW-Authenticate: Bearer` and its body
//! is never read. Every request gets exactly one response.

use std::net::SocketAddr;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth;
use crate::config::DiscoveryMode;
use crate::context::Context;
use crate::discovery::heartbeat::{self, Registered};
use crate::error::{Fault, NO_FAULT};
use crate::http::serve::HttpServer;
pub use crate::http::versions::versions;
use crate::http::versions::{json_response, versions_with_detail, PATH as VERSIONS};
use crate::http::{full, Body};
use crate::store::STORE_UNAVAILABLE;

/// Items on a page of `/api/v1/origins` or `/api/v1/streams` unless
/// `?limit=` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `?limit=`.
pub const MAX_PAGE: usize = 1000;

/// The system API listener's name in metrics.
pub const LISTENER_NAME: &str = "system-api";

/// Runs the system API until the drain has stopped it.
pub async fn run(listener: TcpListener, ctx: Context) {
    let max = ctx.config.system_api_max_connections;
    let handler_ctx = ctx.clone();
    let server = HttpServer::new(ctx.clone(), LISTENER_NAME, move |req, peer| {
        let ctx = handler_ctx.clone();
        async move { route(&ctx, req, peer).await }
    })
    .json_errors();
    crate::listener::serve(listener, ctx, LISTENER_NAME, max, server).await
}

/// A store failure: the client is told so; the error (which may name the
/// store's address) goes to the log.
fn store_failed(e: &crate::store::StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "system API: store failed");
    error(StatusCode::SERVICE_UNAVAILABLE, STORE_UNAVAILABLE)
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    tracing::info!(status = status.as_u16(), %reason, "system API request rejected");
    json_response(status, &json!({"code": status.as_u16(), "error": reason}))
}

async fn route(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().map(str::to_string);
    let (class, resp) = match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, VERSIONS) => ("versions", versions_with_detail(ctx).await),
        (&Method::POST, "/api/v1/srs/register") => ("register", register(ctx, req, peer).await),
        (&Method::GET, "/metrics") => match guard(ctx, &req, ctx.config.http_api_auth.metrics) {
            Some(refused) => ("metrics", refused),
            None => ("metrics", metrics(ctx).await),
        },
        (&Method::GET, "/api/v1/origins") => match guard(ctx, &req, true) {
            Some(refused) => ("origins", refused),
            None => ("origins", origins(ctx, query.as_deref()).await),
        },
        (&Method::GET, "/api/v1/streams") => match guard(ctx, &req, true) {
            Some(refused) => ("streams", refused),
            None => ("streams", streams(ctx, query.as_deref()).await),
        },
        (_, VERSIONS | "/api/v1/srs/register" | "/metrics" | "/api/v1/origins" | "/api/v1/streams") => (
            "other",
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed here", req.method()),
            ),
        ),
        _ => ("other", error(StatusCode::NOT_FOUND, "no such API")),
    };
    // Every 5xx here comes from the store, but a not-ready probe.
    let status = resp.status();
    let fault = match (status.as_u16(), class) {
        (..=399, _) => NO_FAULT,
        (400..=499, _) => Fault::Client.as_str(),
        (_, "versions") => Fault::Internal.as_str(),
        _ => Fault::Store.as_str(),
    };
    ctx.metrics
        .http_requests_total
        .with_label_values(&[class, status.as_str(), fault])
        .inc();
    resp
}

/// The 401 for a request without the token, when `protected`; `None`
/// lets it through.
fn guard<B>(ctx: &Context, req: &Request<B>, protected: bool) -> Option<Response<Body>> {
    if !protected {
        return None;
    }
    let e = auth::check(&ctx.config.http_api_auth, req.headers()).err()?;
    ctx.metrics
        .listener_refused_total
        .with_label_values(&[LISTENER_NAME, "unauthorized"])
        .inc();
    let mut resp = error(StatusCode::UNAUTHORIZED, &e.to_string());
    let (name, value) = auth::challenge();
    resp.headers_mut().insert(name, value);
    Some(resp)
}

async fn metrics(ctx: &Context) -> Response<Body> {
    refresh_gauges(ctx).await;
    let mut resp = Response::new(full(ctx.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Sets the gauges that describe the store (live origins, streams); run at
/// scrape time so they are exact when read.
async fn refresh_gauges(ctx: &Context) {
    let Ok(origins) = ctx.store_op("list_origins", ctx.store.list_origins()).await else {
        return;
    };
    let mut counts: std::collections::BTreeMap<(String, &'static str), i64> = Default::default();
    for o in origins.iter().filter(|o| o.healthy) {
        *counts
            .entry((o.origin.pool.clone().unwrap_or_default(), o.origin.source.as_str()))
            .or_default() += 1;
    }
    // Series of pools that no longer have origins drop to zero instead of
    // keeping their last value.
    ctx.metrics.origins_live.reset();
    for ((pool, source), n) in counts {
        ctx.metrics
            .origins_live
            .with_label_values(&[pool.as_str(), source])
            .set(n);
    }
    let streams: u32 = origins.iter().map(|o| o.streams).sum();
    ctx.metrics.streams_active.set(i64::from(streams));
    let unhealthy = origins.iter().filter(|o| !o.healthy).count();
    ctx.metrics
        .origins_unhealthy
        .set(i64::try_from(unhealthy).unwrap_or(i64::MAX));
}

/// One page of a listing: `?limit=` items (default [`DEFAULT_PAGE`], at
/// most [`MAX_PAGE`]) after `?cursor=` (the `next` of the previous
/// page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub cursor: Option<String>,
}

impl Page {
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut page = Page {
            limit: DEFAULT_PAGE,
            cursor: None,
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "limit" => {
                    page.limit = match v.parse::<usize>() {
                        Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                        _ => return Err(format!("limit must be 1..={MAX_PAGE}")),
                    }
                }
                "cursor" if !v.is_empty() => page.cursor = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(page)
    }

    /// The items after the cursor, at most `limit` of them, and the cursor
    /// of the next page when there are more. `items` must be sorted by
    /// `key`.
    pub fn take<T, K: Ord>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
        cursor_key: Option<K>,
        show: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let mut rest: Vec<T> = match cursor_key {
            Some(after) => items.into_iter().filter(|i| key(i) > after).collect(),
            None => items,
        };
        let next = (rest.len() > self.limit).then(|| show(&rest[self.limit - 1]));
        rest.truncate(self.limit);
        (rest, next)
    }
}

fn listing<T: Serialize>(name: &str, items: Vec<T>, next: Option<String>) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"code": 0, name: items, "next": next}))
}

async fn origins(ctx: &Context, query: Option<&str>) -> Response<Body> {
    let page = match Page::from_query(query) {
        Ok(p) => p,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    match ctx.store_op("list_origins", ctx.store.list_origins()).await {
        Ok(mut list) => {
            list.sort_by(|a, b| a.origin.id.cmp(&b.origin.id));
            let after = page.cursor.clone();
            let (items, next) = page.take(list, |o| o.origin.id.to_string(), after, |o| o.origin.id.to_string());
            listing("origins", items, next)
        }
        Err(e) => store_failed(&e),
    }
}

async fn streams(ctx: &Context, query: Option<&str>) -> Response<Body> {
    let page = match Page::from_query(query) {
        Ok(p) => p,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    match ctx
        .store_op(
            "list_streams",
            ctx.store.list_streams(page.cursor.as_deref(), page.limit),
        )
        .await
    {
        Ok(found) => listing("streams", found.streams, found.next),
        Err(e @ crate::store::StoreError::BadCursor) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => store_failed(&e),
    }
}

async fn register(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (label, resp) = match register_inner(ctx, req, peer).await {
        Ok(registered) => {
            match registered {
                Registered::Changed(origin) => {
                    ctx.metrics
                        .discovery_events_total
                        .with_label_values(&["origin_registered"])
                        .inc();
                    tracing::info!(origin = %origin.id, ip = %origin.ip, ?origin.ports, %peer, "origin registered by heartbeat");
                }
                Registered::Refreshed => tracing::debug!(%peer, "heartbeat"),
            }
            let body = json!({"code": 0, "pid": std::process::id().to_string()});
            ("ok", json_response(StatusCode::OK, &body))
        }
        Err((label, resp)) => (label, resp),
    };
    ctx.metrics.registrations_total.with_label_values(&[label]).inc();
    resp
}

/// A refusal: its metric label and the response.
type Refused = (&'static str, Response<Body>);

async fn register_inner(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Result<Registered, Refused> {
    if let Some(refused) = guard(ctx, &req, true) {
        tracing::warn!(%peer, "registration refused: no valid token");
        return Err(("unauthorized", refused));
    }
    let watching = ctx
        .discovery
        .watching(ctx.config.kubernetes.discovery != DiscoveryMode::Off);
    if !ctx.config.register_enabled(watching) {
        let reason = "registration is off: origins come from Kubernetes discovery (PROXY_REGISTER_ENABLED=on allows heartbeats too)";
        return Err(("disabled", error(StatusCode::FORBIDDEN, reason)));
    }
    let limit = ctx.config.http_max_body_bytes;
    // The body has as long to arrive as the head had: a sender trickling
    // it cannot hold a connection of the system API (and its readiness
    // probe's room) for ever.
    let wait = ctx.config.http_header_timeout;
    let Ok(read) = tokio::time::timeout(wait, Limited::new(req.into_body(), limit).collect()).await else {
        let reason = format!("body not received within {wait:?}");
        tracing::warn!(%peer, %reason, "registration refused");
        return Err(("invalid", error(StatusCode::REQUEST_TIMEOUT, &reason)));
    };
    let body = match read {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            let reason = format!("body larger than {limit} bytes");
            tracing::warn!(%peer, %reason, "registration refused");
            return Err(("invalid", error(StatusCode::PAYLOAD_TOO_LARGE, &reason)));
        }
        Err(e) => {
            let reason = format!("could not read body: {e}");
            tracing::warn!(%peer, %reason, "registration refused");
            return Err(("invalid", error(StatusCode::BAD_REQUEST, &reason)));
        }
    };
    heartbeat::register(ctx, &body, peer).await.map_err(|refusal| {
        let reason = refusal.to_string();
        match &refusal {
            heartbeat::Refusal::Store(e) => tracing::warn!(%peer, error = %e, "registration: store failed"),
            _ => tracing::warn!(%peer, %reason, "registration refused"),
        }
        (refusal.metric_label(), error(refusal.status(), &reason))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        assert_eq!(
            Page::from_query(None).unwrap(),
            Page {
                limit: DEFAULT_PAGE,
                cursor: None
            }
        );
        let p = Page::from_query(Some("limit=2&cursor=b")).unwrap();
        assert_eq!(p.limit, 2);
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-1"] {
            assert!(Page::from_query(Some(bad)).is_err(), "{bad}");
        }
        let items = vec!["a", "b", "c", "d", "e"];
        let show = |s: &&str| s.to_string();
        let first = Page::from_query(Some("limit=2")).unwrap();
        assert_eq!(
            first.take(items.clone(), |s| *s, None, show),
            (vec!["a", "b"], Some("b".into()))
        );
        assert_eq!(
            p.take(items.clone(), |s| *s, Some("b"), show),
            (vec!["c", "d"], Some("d".into()))
        );
        assert_eq!(p.take(items.clone(), |s| *s, Some("d"), show), (vec!["e"], None));
        assert_eq!(p.take(items, |s| *s, Some("z"), show), (vec![], None));
    }
}
