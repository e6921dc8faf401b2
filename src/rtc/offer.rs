//! The one exchange with an origin's HTTP API: an offer (or a DELETE or
//! PATCH of the session resource) goes to the origin's `api` port and a
//! bounded answer comes back.
//!
//! [`OfferError`] separates "the origin refused, was unreachable or timed
//! out before any byte was sent" — nothing happened there, so another
//! origin may be tried — from failures after the request left, where the
//! origin may already have created a session.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::context::Context;
use crate::error::{Failure, Fault};
use crate::http::forward::origin_request_headers;
use crate::http::HttpError;
use crate::origin::{Origin, Protocol};

/// Why an exchange with the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// Nothing was sent: connection refused, unreachable, or not accepted
    /// in time. Retrying on another origin is safe.
    #[error("origin {origin} at {addr} is unreachable: {reason}")]
    Unreachable {
        origin: String,
        addr: String,
        reason: String,
    },
    /// The request was sent (or the origin has no API port); what the
    /// origin did with it is unknown.
    #[error("origin {origin}: {reason}")]
    Failed { origin: String, reason: String },
    /// The request was sent and no complete answer came in time.
    #[error("origin {origin} did not answer within {wait:?}")]
    Timeout { origin: String, wait: std::time::Duration },
}

impl Failure for OfferError {
    fn fault(&self) -> Fault {
        Fault::Origin
    }

    /// Nothing was sent: the same offer may go to another origin.
    fn retry_elsewhere(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

impl From<OfferError> for HttpError {
    /// The client learns which origin failed and how, never its address or
    /// an OS error (those go to the log).
    fn from(e: OfferError) -> Self {
        let (status, reason) = match &e {
            OfferError::Unreachable { origin, .. } => {
                (StatusCode::BAD_GATEWAY, format!("origin {origin} is unreachable"))
            }
            OfferError::Failed { origin, .. } => (
                StatusCode::BAD_GATEWAY,
                format!("origin {origin} failed to answer the offer"),
            ),
            OfferError::Timeout { origin, wait } => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("origin {origin} did not answer within {wait:?}"),
            ),
        };
        let retry = e.retry_elsewhere();
        let err = HttpError::origin(status, reason, e.to_string());
        if retry {
            err.retryable()
        } else {
            err
        }
    }
}

/// An origin's complete, bounded response.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
}

/// Sends `method path_and_query` with `body` and the client's headers
/// (Host, Authorization, Content-Type kept; hop-by-hop dropped) to the
/// origin's API port and reads its answer, at most `limit` bytes.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    ctx: &Context,
    origin: &Origin,
    method: Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    body: Bytes,
    peer: SocketAddr,
    limit: usize,
) -> Result<Answer, OfferError> {
    let failed = |reason: String| OfferError::Failed {
        origin: origin.id.to_string(),
        reason,
    };
    let authority = origin
        .authority(Protocol::Api)
        .ok_or_else(|| failed("has no API port for WebRTC signalling".into()))?;
    let uri: Uri = path_and_query
        .parse()
        .map_err(|_| failed("request target cannot be forwarded".into()))?;
    let connect_wait = ctx.config.origin_connect_timeout;
    let unreachable = |reason: String| OfferError::Unreachable {
        origin: origin.id.to_string(),
        addr: authority.clone(),
        reason,
    };
    let tcp = match tokio::time::timeout(connect_wait, TcpStream::connect(&authority)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no connection within {connect_wait:?}"))),
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });

    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = origin_request_headers(client_headers, &authority, peer);

    let wait = ctx.config.origin_response_timeout;
    let timeout = || OfferError::Timeout {
        origin: origin.id.to_string(),
        wait,
    };
    let exchange = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| failed(format!("failed before answering: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, limit).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                failed(format!("answered more than {limit} bytes"))
            } else {
                failed(format!("failed while answering: {e}"))
            }
        })?;
        Ok(Answer {
            parts,
            body: body.to_bytes(),
        })
    };
    let result = tokio::time::timeout(wait, exchange)
        .await
        .unwrap_or_else(|_| Err(timeout()));
    conn.abort();
    result
}
