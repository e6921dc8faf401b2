//! SRT publish and play through the proxy, routed by the stream id.
//!
//! SRT runs over UDP, so there is no accept: one socket receives every
//! client's datagrams. The proxy answers a client's induction itself with
//! a stateless cookie, reads the stream id from its conclusion, claims the
//! stream like every other protocol, and then — in a task of its own, with
//! a deadline — shakes hands with the origin's SRT port from a new socket
//! and gives the client the origin's answer. From then on packets are
//! relayed both ways by (client address, socket id), unparsed past their
//! header; encryption, latency and retransmission stay end to end.
//!
//! # Layout
//!
//! The codec is pure and knows nothing of the proxy:
//!
//! * [`packet`] — the 16-byte header every datagram starts with.
//! * [`handshake`] — HSv5 induction/conclusion, extension blocks, rejections.
//! * [`stream_id`] — the stream id to a [`crate::stream_key::StreamKey`] and role.
//! * [`cookie`] — stateless SYN cookies under a rotating secret.
//!
//! The connection pipeline, in request order:
//!
//! * [`serve`] — the port's receive loop: handshakes, routing, drain.
//! * [`session`] — one connection: claim, origin handshake, relay, end.
//! * [`upstream`] — the proxy's handshake with the origin.
//! * [`relay`] — both directions until either side ends.
//!
//! Every refusal becomes an SRT rejection reason in one place,
//! [`SrtError::reject_reason`].

pub mod cookie;
pub mod handshake;
pub mod packet;
pub mod relay;
pub mod serve;
pub mod session;
pub mod stream_id;
pub mod upstream;

use std::time::Duration;

pub use serve::run;

use self::handshake::{HandshakeError, RejectReason};
use self::stream_id::StreamIdError;
use self::upstream::ConnectError;
use crate::claim::ClaimError;
use crate::context::Context;
use crate::error::{Failure, Fault};

/// Longest datagram relayed. libsrt's packets are at most its MSS (1500 by
/// default) minus the IP and UDP headers; this leaves room for jumbo
/// frames. Longer ones are dropped rather than cut.
pub const MAX_DATAGRAM: usize = 9000;

/// The limits SRT connections run under.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections (in the origin handshake or relaying) at once; 0 = no
    /// limit.
    pub max_connections: usize,
    /// A connection with nothing from either side for this long ends.
    pub idle_timeout: Duration,
    /// Bound on the origin handshake. libsrt callers give up after 3 s
    /// (`SRTO_CONNTIMEO`); the default 1 s stays well below, so they are
    /// told why.
    pub handshake_timeout: Duration,
}

impl Settings {
    pub fn from_context(ctx: &Context) -> Self {
        Self {
            max_connections: ctx.config.srt_max_connections,
            idle_timeout: ctx.config.srt_idle_timeout,
            handshake_timeout: ctx.config.srt_handshake_timeout,
        }
    }
}

/// Why an SRT client was refused.
#[derive(Debug, thiserror::Error)]
pub enum SrtError {
    #[error("conclusion carries no stream id")]
    NoStreamId,
    #[error("{0}")]
    Handshake(HandshakeError),
    #[error("{0}")]
    StreamId(StreamIdError),
    #[error("handshake version {0}; the stream id needs HSv5 (libsrt 1.3 or later)")]
    Version(u32),
    #[error("proxy is draining")]
    Draining,
    #[error("{0} SRT connections open, the configured limit")]
    Full(usize),
    #[error("proxy shutting down")]
    Aborted,
    #[error("client already has a connection to origin socket {0:#010x}")]
    DuplicateSocket(u32),
    #[error("{0}")]
    Claim(#[from] ClaimError),
    #[error("origin {0} serves no SRT")]
    NoSrtPort(String),
    #[error("cannot resolve origin address {0}: {1}")]
    Resolve(String, String),
    #[error("{0}")]
    Origin(ConnectError),
}

impl SrtError {
    /// The rejection reason the client is sent.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            SrtError::NoStreamId | SrtError::StreamId(StreamIdError::NoResource | StreamIdError::Key(_)) => {
                RejectReason::BAD_REQUEST
            }
            SrtError::StreamId(StreamIdError::BadMode(_)) => RejectReason::BAD_MODE,
            SrtError::StreamId(StreamIdError::Duplicate(_)) => RejectReason::BAD_REQUEST,
            SrtError::Handshake(
                HandshakeError::EmptyStreamId
                | HandshakeError::StreamIdTooLong(_)
                | HandshakeError::StreamIdNul
                | HandshakeError::StreamIdEncoding,
            ) => RejectReason::BAD_REQUEST,
            SrtError::Handshake(_) => RejectReason::ROGUE,
            SrtError::Version(_) => RejectReason::VERSION,
            SrtError::Draining | SrtError::Aborted => RejectReason::CLOSE,
            SrtError::Full(_) => RejectReason::OVERLOAD,
            SrtError::DuplicateSocket(_) => RejectReason::INTERNAL,
            SrtError::Claim(ClaimError::NoOrigin) | SrtError::NoSrtPort(_) => RejectReason::UNAVAILABLE,
            SrtError::Claim(ClaimError::Store(_)) => RejectReason::INTERNAL,
            SrtError::Origin(ConnectError::Rejected { reason, .. }) => *reason,
            SrtError::Origin(ConnectError::Socket(..)) => RejectReason::INTERNAL,
            SrtError::Resolve(..) | SrtError::Origin(_) => RejectReason::GATEWAY,
        }
    }
}

impl Failure for SrtError {
    fn fault(&self) -> Fault {
        match self {
            SrtError::Claim(e) => e.fault(),
            SrtError::NoSrtPort(_) | SrtError::Resolve(..) => Fault::Origin,
            SrtError::Origin(ConnectError::Socket(..)) => Fault::Internal,
            SrtError::Origin(_) => Fault::Origin,
            SrtError::Draining | SrtError::Full(_) | SrtError::Aborted | SrtError::DuplicateSocket(_) => {
                Fault::Internal
            }
            SrtError::NoStreamId | SrtError::Handshake(_) | SrtError::StreamId(_) | SrtError::Version(_) => {
                Fault::Client
            }
        }
    }

    /// Only an origin that never answered: see [`ConnectError::retry_elsewhere`].
    fn retry_elsewhere(&self) -> bool {
        matches!(self, SrtError::Origin(e) if e.retry_elsewhere())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_key::StreamKeyError;
    use std::net::SocketAddr;

    #[test]
    fn every_refusal_has_the_reason_libsrt_clients_know() {
        let origin: SocketAddr = "192.0.2.1:10080".parse().unwrap();
        let cases = [
            (SrtError::NoStreamId, RejectReason::BAD_REQUEST),
            (
                SrtError::Handshake(HandshakeError::EmptyStreamId),
                RejectReason::BAD_REQUEST,
            ),
            (SrtError::Handshake(HandshakeError::BadKeyMaterial), RejectReason::ROGUE),
            (
                SrtError::StreamId(StreamIdError::Key(StreamKeyError::DotDot("app"))),
                RejectReason::BAD_REQUEST,
            ),
            (
                SrtError::StreamId(StreamIdError::BadMode("push".into())),
                RejectReason::BAD_MODE,
            ),
            (SrtError::Version(4), RejectReason::VERSION),
            (SrtError::Draining, RejectReason::CLOSE),
            (SrtError::Full(1), RejectReason::OVERLOAD),
            (SrtError::Claim(ClaimError::NoOrigin), RejectReason::UNAVAILABLE),
            (SrtError::NoSrtPort("o".into()), RejectReason::UNAVAILABLE),
            (SrtError::Origin(ConnectError::Refused(origin)), RejectReason::GATEWAY),
            (
                SrtError::Origin(ConnectError::Rejected {
                    addr: origin,
                    reason: RejectReason(10),
                    answer: vec![],
                }),
                RejectReason(10),
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reject_reason(), reason, "{error}");
        }
    }

    #[test]
    fn faults_and_retries() {
        let origin: SocketAddr = "192.0.2.1:10080".parse().unwrap();
        assert_eq!(SrtError::NoStreamId.fault(), Fault::Client);
        assert_eq!(SrtError::Claim(ClaimError::NoOrigin).fault(), Fault::Origin);
        assert_eq!(SrtError::Draining.fault(), Fault::Internal);
        assert!(SrtError::Origin(ConnectError::Refused(origin)).retry_elsewhere());
        assert!(!SrtError::Origin(ConnectError::Version(origin)).retry_elsewhere());
        assert!(!SrtError::Claim(ClaimError::NoOrigin).retry_elsewhere());
    }
}
