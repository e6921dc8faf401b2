//! `GET /api/v1/versions`: SRS's versions API, answered on every HTTP
//! listener, and the readiness probe (200 while serving, 503 with the
//! reason while draining, while discovery is failing or the store is
//! unusable).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::{full, server_header, Body};
use crate::context::Context;

/// The path SRS answers its versions on.
pub const PATH: &str = "/api/v1/versions";

/// A JSON response with the `Server` header.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::SERVER, server_header());
    resp
}

/// The versions API, also the readiness probe, as any client may see it:
/// why the proxy is not ready in a word ("draining", "store unavailable"),
/// not the store's address or error.
pub async fn versions(ctx: &Context) -> Response<Body> {
    answer(ctx, false).await
}

/// [`versions`] with the whole reason, for the system API (the operator's
/// port).
pub async fn versions_with_detail(ctx: &Context) -> Response<Body> {
    answer(ctx, true).await
}

async fn answer(ctx: &Context, detail: bool) -> Response<Body> {
    let mut parts = crate::VERSION.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, revision) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    let data = json!({
        "major": major, "minor": minor, "revision": revision,
        "version": crate::VERSION, "signature": crate::SIGNATURE,
    });
    let pid = std::process::id().to_string();
    match ctx.ready().await {
        Ok(()) => json_response(StatusCode::OK, &json!({"code": 0, "pid": pid, "data": data})),
        Err(reason) => {
            // Reasons read "what: detail"; the first part says it in a word.
            let shown = if detail {
                reason.as_str()
            } else {
                reason.split(':').next().unwrap_or_default()
            };
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"code": 503, "pid": pid, "data": data, "error": shown}),
            )
        }
    }
}
