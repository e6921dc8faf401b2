//! HTTP-FLV and HTTP-TS live streams: claim the stream, forward the request
//! to its origin, relay the body for as long as both sides stay connected
//! and the origin stays live.
//!
//! An origin that cannot be reached is reported and the stream claimed
//! elsewhere once ([`Context::claim_with`]).
//!
//! An HTTP/1.1 GET is relayed byte for byte on the raw connections
//! ([`passthrough`]); HEAD and HTTP/1.0 go through hyper ([`forward`]).
//! With edge mode on, an HTTP/1.1 GET joins the stream's shared upstream
//! of its format (FLV or TS) instead ([`super::edge`]).

use http::Response;

use super::edge::format::Format;
use super::forward::{self, relay};
use super::passthrough;
use super::request::{HttpState, StreamKind, StreamRequest};
use super::{Body, HttpError};
use crate::origin::Protocol;

/// A live FLV/TS stream: held open, relayed as it arrives.
pub async fn serve(state: &HttpState, kind: StreamKind, sr: &StreamRequest<'_>) -> Result<Response<Body>, HttpError> {
    let ctx = &state.ctx;
    let format = if kind == StreamKind::Flv {
        Format::Flv
    } else {
        Format::Ts
    };
    if ctx.config.edge.enabled() && passthrough::eligible(sr.req) {
        return super::edge::play::serve(ctx, &state.edge, sr, format).await;
    }
    let key = &sr.key;
    let protocol = format.protocol();
    let bytes = ctx.metrics.bytes_relayed_total.with_label_values(&[protocol, "out"]);
    if passthrough::eligible(sr.req) {
        let (lease, upstream) = ctx
            .claim_with(key, Protocol::Http, |origin| async move {
                passthrough::request(ctx, &origin, &sr.target, sr.req.headers(), sr.peer).await
            })
            .await?;
        let origin = lease.origin().clone();
        let status = upstream.status();
        tracing::info!(stream = %key, origin = %origin.id, status = status.as_u16(), "relaying {protocol}");
        if !status.is_success() {
            ctx.forget_claim(key, &origin.id, lease.outcome()).await;
        }
        let guard = status.is_success().then(|| ctx.metrics.connection(protocol, "player"));
        let lease = status.is_success().then_some(lease);
        return Ok(upstream.into_response(
            lease,
            bytes,
            guard,
            ctx.config.relay_buffer_bytes,
            ctx.config
                .relay_splice
                .then(|| ctx.metrics.relay_spliced_bytes_total.clone()),
        ));
    }
    let (lease, upstream) = ctx
        .claim_with(key, Protocol::Http, |origin| async move {
            forward::send(ctx, &origin, sr.req.method(), &sr.target, sr.req.headers(), sr.peer).await
        })
        .await?;
    let origin = lease.origin().clone();
    let status = upstream.response.status();
    tracing::info!(stream = %key, origin = %origin.id, status = status.as_u16(), "relaying {protocol}");
    if !status.is_success() {
        ctx.forget_claim(key, &origin.id, lease.outcome()).await;
    }
    let guard = status.is_success().then(|| ctx.metrics.connection(protocol, "player"));
    Ok(relay(upstream, status.is_success().then_some(lease), bytes, guard))
}
