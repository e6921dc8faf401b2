//! HTTP: the streaming server (`PROXY_HTTP_SERVER`: HTTP-FLV, HTTP-TS, HLS,
//! static files) and the plumbing every HTTP listener shares.
//!
//! The request path of the streaming server, in file order:
//!
//! * [`plain`] — the streaming listener's connections: plain `GET`/`HEAD`
//!   requests read and answered on the raw socket, the rest handed to
//!   [`serve`];
//! * [`serve`] — one HTTP/1.1 connection through hyper: header limits,
//!   drain, refusal when the listener is full (shared with the system API);
//! * [`route`] — classifies a request by path and method, parses its
//!   [`StreamKey`](crate::stream_key::StreamKey) into a
//!   [`request::StreamRequest`], counts it;
//! * [`live`] — FLV/TS live streams: claim (`crate::claim`), then
//!   [`passthrough`] (HTTP/1.1 GET: the origin's bytes as they are, on the
//!   raw connection, framing walked by [`framing`]) or [`forward`];
//! * [`hls`] — playlists (claim, fetch, rewrite) and segments, with
//!   [`hls_session`] keeping the routing tokens;
//! * [`exchange`] — one request to an origin on a kept-alive connection
//!   ([`pool`]) for playlists and segments, chunked bodies decoded by
//!   [`chunked`]; [`forward`] — one request through hyper on a connection
//!   of its own, and the streamed response;
//! * [`static_files`] — everything that is not a stream.
//!
//! A failure becomes a response in one place, [`HttpError::into_response`].

pub mod chunked;
pub mod edge;
pub mod exchange;
pub mod forward;
pub mod framing;
pub mod hls;
pub mod hls_session;
pub mod live;
pub mod passthrough;
pub mod pipe;
pub mod plain;
pub mod pool;
pub mod request;
pub mod route;
pub mod serve;
pub mod static_files;
pub mod versions;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::claim::ClaimError;
use crate::error::{Failure, Fault};
use crate::store::StoreError;

/// Error type of response bodies: anything that can end a relayed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy writes.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A small complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A client-facing failure: status plus a one-line reason.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    /// The one line the client is sent. Never an address or an OS error.
    pub reason: String,
    pub fault: Fault,
    /// What only the log gets: addresses, OS errors.
    pub detail: Option<String>,
    /// The origin could not be reached and nothing was sent yet: the same
    /// request could be served by another origin.
    pub retry_elsewhere: bool,
}

impl HttpError {
    /// A failure whose fault follows from its status: 4xx the client's,
    /// 5xx the proxy's.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        let fault = if status.is_client_error() {
            Fault::Client
        } else {
            Fault::Internal
        };
        Self {
            status,
            reason: reason.into(),
            fault,
            detail: None,
            retry_elsewhere: false,
        }
    }

    /// An origin's failure: `reason` for the client, `detail` for the log.
    pub fn origin(status: StatusCode, reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            fault: Fault::Origin,
            detail: Some(detail.into()),
            ..Self::new(status, reason)
        }
    }

    /// Marks the failure as one another origin could avoid.
    pub fn retryable(mut self) -> Self {
        self.retry_elsewhere = true;
        self
    }

    /// The one place an error becomes a response: the reason as a single
    /// text line, logged with the same words (and the detail).
    pub fn into_response(self) -> Response<Body> {
        let detail = self.detail.as_deref().unwrap_or("");
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), fault = self.fault.as_str(), reason = %self.reason, detail, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), reason = %self.reason, detail, "request rejected");
        }
        let mut resp = Response::new(full(format!("{}\n", self.reason)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// For logs: the client's line and, when there is one, the detail.
impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{} ({detail})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl Failure for HttpError {
    fn fault(&self) -> Fault {
        self.fault
    }

    fn retry_elsewhere(&self) -> bool {
        self.retry_elsewhere
    }
}

impl From<ClaimError> for HttpError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Store(e) => e.into(),
            e => Self {
                fault: e.fault(),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            },
        }
    }
}

impl From<StoreError> for HttpError {
    /// The client learns that the store failed, not where it is or how.
    fn from(e: StoreError) -> Self {
        Self {
            fault: Fault::Store,
            detail: Some(e.to_string()),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, crate::store::STORE_UNAVAILABLE)
        }
    }
}

/// The CORS headers SRS sends. A `const`, so the values are checked when
/// the proxy is compiled, not on every response.
const CORS: [(header::HeaderName, HeaderValue); 4] = [
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
    (
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, HEAD, PUT, DELETE, OPTIONS"),
    ),
    (
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "origin, range, accept-encoding, referer, cache-control, x-proxy-authorization, x-requested-with, content-type",
        ),
    ),
    (
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Server, Range, Content-Length, Content-Range"),
    ),
];

/// Adds the CORS headers SRS sends and the `Server` header, unless the
/// handler (or the origin) already set them. Used where a head is written
/// from its map (hyper, detached relays); [`plain`] writes the same fields
/// straight into the head instead ([`standard_fields`]).
pub fn add_standard_fields(headers: &mut http::HeaderMap) {
    use http::header::Entry;
    for (name, value) in standard_fields() {
        if let Entry::Vacant(slot) = headers.entry(name) {
            slot.insert(value.clone());
        }
    }
}

/// The fields every answer of a streaming listener carries unless its
/// handler set them: the CORS headers SRS sends, then `Server`. Built
/// once; a value's clone shares its bytes.
pub fn standard_fields() -> &'static [(header::HeaderName, HeaderValue); 5] {
    static FIELDS: std::sync::OnceLock<[(header::HeaderName, HeaderValue); 5]> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let [a, b, c, d] = CORS;
        [a, b, c, d, (header::SERVER, server_header())]
    })
}

/// The span of one request; `stream` and `origin` are filled in once known.
pub fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        stream = tracing::field::Empty,
        origin = tracing::field::Empty,
    )
}

/// Last touches of every answer a streaming listener writes: an error
/// becomes its response, and the answer is counted by route class, status
/// and fault. The standard fields (CORS, `Server`) are added where the
/// head is written: [`add_standard_fields`], or by [`plain`] itself.
pub fn finish(
    ctx: &crate::context::Context,
    class: &'static str,
    result: Result<Response<Body>, HttpError>,
) -> Response<Body> {
    let (resp, fault) = match result {
        Ok(resp) => (resp, crate::error::NO_FAULT),
        Err(e) => {
            let fault = e.fault.as_str();
            (e.into_response(), fault)
        }
    };
    ctx.metrics.count_request(class, resp.status(), fault);
    resp
}

/// The `Server` header value, built once: a clone shares its bytes.
pub fn server_header() -> HeaderValue {
    static SERVER: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| HeaderValue::from_str(&format!("{}/{}", crate::SIGNATURE, crate::VERSION)).expect("ascii"))
        .clone()
}
