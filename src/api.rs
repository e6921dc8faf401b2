//! The system API (`PROXY_SYSTEM_API`): readiness, origin registration,
//! metrics and the admin listings.
//!
//! * `GET /api/v1/versions` — 200 while serving, 503 while draining or when
//!   the store is unusable (the readiness probe).
//! * `POST /api/v1/srs/register` — SRS `heartbeat { ports on; }` body.
//! * `GET /metrics` — Prometheus text format.
//! * `GET /api/v1/origins`, `GET /api/v1/streams` — what the store holds
//!   (streams a page at a time: `?limit=` and `?cursor=` from the previous
//!   page's `next`).
//!
//! Every request gets exactly one response.

use std::net::SocketAddr;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::context::Context;
use crate::error::{Fault, NO_FAULT};
use crate::http::serve::HttpServer;
pub use crate::http::versions::versions;
use crate::http::versions::{json_response, PATH as VERSIONS};
use crate::http::{full, Body};
use crate::origin::{parse_endpoint_port, Origin, OriginSource, Ports};

/// Largest register body accepted (SRS sends well under 4 KiB).
pub const MAX_REGISTER_BODY: usize = 64 * 1024;

/// Runs the system API until the drain has stopped it.
pub async fn run(listener: TcpListener, ctx: Context) {
    let max = ctx.config.system_api_max_connections;
    let handler_ctx = ctx.clone();
    let server = HttpServer::new(ctx.clone(), move |req, peer| {
        let ctx = handler_ctx.clone();
        async move { route(&ctx, req, peer).await }
    });
    crate::listener::serve(listener, ctx, "system-api", max, server).await
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    tracing::info!(status = status.as_u16(), %reason, "system API request rejected");
    json_response(status, &json!({"code": status.as_u16(), "error": reason}))
}

async fn route(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let (class, resp) = match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, VERSIONS) => ("versions", versions(ctx).await),
        (&Method::POST, "/api/v1/srs/register") => ("register", register(ctx, req, peer).await),
        (&Method::GET, "/metrics") => ("metrics", metrics(ctx).await),
        (&Method::GET, "/api/v1/origins") => ("origins", origins(ctx).await),
        (&Method::GET, "/api/v1/streams") => ("streams", streams(ctx, req.uri().query()).await),
        (_, VERSIONS | "/api/v1/srs/register" | "/metrics" | "/api/v1/origins" | "/api/v1/streams") => (
            "other",
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed here", req.method()),
            ),
        ),
        _ => ("other", error(StatusCode::NOT_FOUND, &format!("no such API: {path}"))),
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
    for o in &origins {
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
}

async fn origins(ctx: &Context) -> Response<Body> {
    match ctx.store_op("list_origins", ctx.store.list_origins()).await {
        Ok(list) => json_response(StatusCode::OK, &json!({"code": 0, "origins": list})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Streams listed per page unless `?limit=` says otherwise.
pub const STREAMS_PAGE: usize = 1000;
/// The largest page `?limit=` may ask for.
pub const STREAMS_PAGE_MAX: usize = 10_000;

async fn streams(ctx: &Context, query: Option<&str>) -> Response<Body> {
    let mut limit = STREAMS_PAGE;
    let mut cursor = None;
    for (name, value) in crate::stream_key::query_pairs(query.unwrap_or("")) {
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=STREAMS_PAGE_MAX).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("limit must be a number from 1 to {STREAMS_PAGE_MAX}"),
                    )
                }
            },
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    match ctx
        .store_op("list_streams", ctx.store.list_streams(cursor.as_deref(), limit))
        .await
    {
        Ok(page) => json_response(
            StatusCode::OK,
            &json!({"code": 0, "streams": page.streams, "next": page.next}),
        ),
        Err(e @ crate::store::StoreError::BadCursor) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Why a register body was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("body is not a JSON object: {0}")]
    Json(String),
    #[error("missing or empty field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} has the wrong type")]
    Type(&'static str),
    #[error("field \"ip\" is not an IP address or host name: {0:?}")]
    Ip(String),
    #[error("field {field:?}: {reason}")]
    Endpoint { field: &'static str, reason: String },
    #[error("no usable rtmp or http endpoint")]
    NoPort,
}

/// Parses an SRS heartbeat body into an origin. Unknown fields (and the
/// `summaries` object SRS may add) are ignored.
pub fn parse_register(body: &[u8]) -> Result<Origin, RegisterError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RegisterError::Json(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| RegisterError::Json("not an object".into()))?;
    let text = |field: &'static str| -> Result<String, RegisterError> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(RegisterError::Missing(field)),
            Some(Value::String(s)) if s.trim().is_empty() => Err(RegisterError::Missing(field)),
            Some(Value::String(s)) => Ok(s.trim().to_string()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(RegisterError::Type(field)),
        }
    };
    let ip = text("ip")?;
    let server = text("server")?;
    text("service")?;
    text("pid")?;
    let valid_host = ip.parse::<std::net::IpAddr>().is_ok()
        || (ip.len() <= 253
            && ip
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
    if !valid_host {
        return Err(RegisterError::Ip(ip));
    }
    let port = |field: &'static str| -> Result<Option<u16>, RegisterError> {
        let endpoints: Vec<String> = match obj.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(RegisterError::Type(field)),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(_) => return Err(RegisterError::Type(field)),
        };
        if endpoints.is_empty() {
            return Ok(None);
        }
        // SRS may listen on several endpoints; any of them reaches it.
        let mut last_err = None;
        for e in &endpoints {
            match parse_endpoint_port(e) {
                Ok(p) => return Ok(Some(p)),
                Err(err) => last_err = Some(err),
            }
        }
        Err(RegisterError::Endpoint {
            field,
            reason: last_err.map(|e| e.to_string()).unwrap_or_default(),
        })
    };
    let ports = Ports {
        rtmp: port("rtmp")?,
        http: port("http")?,
        api: port("api")?,
        srt: port("srt")?,
        rtc: port("rtc")?,
    };
    if ports.rtmp.is_none() && ports.http.is_none() {
        return Err(RegisterError::NoPort);
    }
    Ok(Origin {
        id: server,
        ip,
        ports,
        source: OriginSource::Heartbeat,
        weight: 1,
        max_streams: 0,
        pool: None,
    })
}

async fn register(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let result = register_inner(ctx, req, peer).await;
    let label = if result.is_ok() { "ok" } else { "rejected" };
    ctx.metrics.registrations_total.with_label_values(&[label]).inc();
    match result {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({"code": 0, "pid": std::process::id().to_string()}),
        ),
        Err((status, reason)) => {
            tracing::warn!(%peer, %reason, "registration refused");
            json_response(status, &json!({"code": status.as_u16(), "error": reason}))
        }
    }
}

async fn register_inner(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Result<(), (StatusCode, String)> {
    let bad = |reason: String| (StatusCode::BAD_REQUEST, reason);
    let body = Limited::new(req.into_body(), MAX_REGISTER_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                bad(format!("body larger than {MAX_REGISTER_BODY} bytes"))
            } else {
                bad(format!("could not read body: {e}"))
            }
        })?
        .to_bytes();
    let origin = parse_register(&body).map_err(|e| bad(e.to_string()))?;
    let known = ctx
        .store_op("origin", ctx.store.origin(&origin.id))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // A heartbeat may refresh its own registration, never take over an
    // origin that config or Kubernetes discovery owns.
    if let Some(owner) = known.as_ref().filter(|k| k.source != OriginSource::Heartbeat) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "origin id {:?} is registered by {} discovery; heartbeat refused",
                owner.id,
                owner.source.as_str()
            ),
        ));
    }
    let changed = known.as_ref() != Some(&origin);
    ctx.store_op(
        "upsert_origin",
        ctx.store
            .upsert_origin(origin.clone(), Some(ctx.config.registration_ttl)),
    )
    .await
    .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if changed {
        ctx.metrics
            .discovery_events_total
            .with_label_values(&["origin_registered"])
            .inc();
        tracing::info!(origin = %origin.id, ip = %origin.ip, ?origin.ports, %peer, "origin registered by heartbeat");
    } else {
        tracing::debug!(origin = %origin.id, "heartbeat");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRS_BODY: &str = r#"{"device_id":"origin2","ip":"10.78.122.184","server":"vid-46p14mm","service":"z2s3w865","pid":"42583","rtmp":["19352"],"http":["8082"],"api":["19853"],"srt":["10082"],"rtc":["udp://0.0.0.0:8001"],"summaries":{"ok":true,"data":{"pid":1,"cpu":0.5}}}"#;

    #[test]
    fn srs_heartbeat_body() {
        let o = parse_register(SRS_BODY.as_bytes()).unwrap();
        assert_eq!(o.id, "vid-46p14mm");
        assert_eq!(o.ip, "10.78.122.184");
        assert_eq!(
            o.ports,
            Ports {
                rtmp: Some(19352),
                http: Some(8082),
                api: Some(19853),
                srt: Some(10082),
                rtc: Some(8001)
            }
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "JSON"),
            ("[1,2]", "object"),
            (r#"{"server":"s","service":"x","pid":"1","rtmp":["1935"]}"#, "\"ip\""),
            (
                r#"{"ip":"1.2.3.4","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"server\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","pid":"1","rtmp":["1935"]}"#,
                "\"service\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","rtmp":["1935"]}"#,
                "\"pid\"",
            ),
            (r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1"}"#, "no usable"),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1","rtmp":["abc"]}"#,
                "\"rtmp\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1","rtmp":[{}]}"#,
                "\"rtmp\"",
            ),
            (
                r#"{"ip":"a b","server":"s","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"ip\"",
            ),
            (
                r#"{"ip":["x"],"server":"s","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"ip\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"server\"",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_register(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn http_only_and_number_forms() {
        let o =
            parse_register(br#"{"ip":"srs-0.srs","server":"s","service":"x","pid":12,"http":8080,"rtmp":[]}"#).unwrap();
        assert_eq!(o.ports.http, Some(8080));
        assert_eq!(o.ports.rtmp, None);
        let o =
            parse_register(br#"{"ip":"::1","server":"s","service":"x","pid":"1","rtmp":["bad","tcp://0.0.0.0:1936"]}"#)
                .unwrap();
        assert_eq!(o.ports.rtmp, Some(1936));
    }
}
