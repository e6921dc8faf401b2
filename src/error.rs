//! What every failure says about itself, whatever the protocol: where it
//! came from and whether trying another origin could help. Each protocol
//! keeps its own error enum and turns it into its own reply in one place;
//! this is the part they share, and what metrics and logs label them with.

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client sent something wrong or asked for something that is not
    /// there (bad request, unknown stream, bad handshake).
    Client,
    /// An origin refused, failed, timed out or sent garbage; or there is no
    /// origin that can take the stream.
    Origin,
    /// The routing store did not answer or answered nonsense.
    Store,
    /// The proxy itself (a bug, resource exhaustion, draining).
    Internal,
}

impl Fault {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Origin => "origin",
            Self::Store => "store",
            Self::Internal => "internal",
        }
    }
}

/// Label value for something that did not fail.
pub const NO_FAULT: &str = "none";

/// Implemented by every protocol's error type.
pub trait Failure {
    /// Where the failure came from.
    fn fault(&self) -> Fault;
    /// Whether the same request could succeed on another origin: the
    /// origin could not be reached, and nothing has been sent to the client
    /// or the origin yet.
    fn retry_elsewhere(&self) -> bool {
        false
    }
}
