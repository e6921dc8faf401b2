//! Routing: which origin serves a stream, and for how long.
//!
//! Every protocol turns its request into a [`StreamKey`] and calls
//! [`Context::claim`] (a relay that holds a connection) or
//! [`Context::claim_origin`] (a request that does not, e.g. a playlist).
//! The claim is one atomic store operation: an existing live mapping wins,
//! otherwise the balancing policy places the stream. A [`StreamLease`]
//! keeps the mapping refreshed while the relay runs and tells the relay
//! when its origin is gone, so it ends instead of hanging on a dead origin.
//!
//! A request that connects to the origin it was given goes through
//! [`Context::claim_with`] (or [`Context::claim_origin_with`]): when the
//! connect fails before anything was sent, the origin is reported
//! unreachable (unhealthy for every replica at once, see
//! [`crate::health`]) and the stream is claimed once more, which places it
//! on another origin; the client only sees the first origin's failure when
//! no other can take the stream.
//!
//! This module is the data plane's only way into routing state; it never
//! touches sockets itself.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::fmt::Display;
use std::future::Future;

use crate::context::Context;
use crate::error::{Failure, Fault};
use crate::origin::{Origin, Protocol};
use crate::shutdown::CancelWatch;
use crate::store::{Claim, ClaimOutcome, StoreError};
use crate::stream_key::StreamKey;

/// Whether a client sends the stream or receives it, whatever its
/// protocol. A publisher is the stream: its lease releases the mapping when
/// it ends ([`StreamLease::release_on_drop`]); a player's does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Player,
}

impl Role {
    /// Metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Player => "player",
        }
    }
}

/// Why a stream could not be given an origin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    #[error("no live origin can take the stream")]
    NoOrigin,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Failure for ClaimError {
    fn fault(&self) -> Fault {
        match self {
            Self::NoOrigin => Fault::Origin,
            Self::Store(_) => Fault::Store,
        }
    }
}

impl Context {
    /// Finds or places the origin for `key` without a lease: for requests
    /// that hold no connection (playlists), the claim itself refreshes the
    /// mapping. A new stream is placed only on an origin serving `protocol`.
    pub async fn claim_origin(
        &self,
        key: &StreamKey,
        protocol: Protocol,
    ) -> Result<(Origin, ClaimOutcome), ClaimError> {
        let ttl = self.config.stream_ttl;
        let claim = self.store.claim_for(key, self.balance_policy(), ttl, Some(protocol));
        let result = self.store_op("claim", claim).await;
        let label = match &result {
            Ok(Claim::Origin(_, outcome)) => outcome.as_str(),
            Ok(Claim::NoOrigin) => "no_origin",
            Err(_) => "error",
        };
        self.metrics.count_claim(label);
        match result? {
            Claim::Origin(origin, outcome) => {
                tracing::Span::current().record("origin", tracing::field::display(&origin.id));
                Ok((origin, outcome))
            }
            Claim::NoOrigin => Err(ClaimError::NoOrigin),
        }
    }

    /// Finds or places the origin for `key` and leases the mapping for as
    /// long as the returned [`StreamLease`] lives.
    pub async fn claim(&self, key: &StreamKey, protocol: Protocol) -> Result<StreamLease, ClaimError> {
        let (origin, outcome) = self.claim_origin(key, protocol).await?;
        Ok(StreamLease::start(self.clone(), key.clone(), origin, outcome))
    }

    /// [`Context::claim_origin`], then `connect` to the origin it gave
    /// (which gets the claim's outcome too). When the connect fails in a
    /// way another origin could avoid ([`Failure::retry_elsewhere`]), the
    /// origin is reported unreachable and the stream claimed once more —
    /// now placed elsewhere — and connected there; a second failure, or no
    /// other origin, ends the request. Any failed connect undoes a mapping
    /// the request created.
    pub async fn claim_origin_with<T, E, F>(
        &self,
        key: &StreamKey,
        protocol: Protocol,
        mut connect: impl FnMut(Origin, ClaimOutcome) -> F,
    ) -> Result<(Origin, ClaimOutcome, T), E>
    where
        E: Failure + Display + From<ClaimError>,
        F: Future<Output = Result<T, E>>,
    {
        // The origin that could not be reached, and how it failed.
        let mut dead: Option<(String, E)> = None;
        loop {
            let claimed = self.claim_origin(key, protocol).await;
            let (origin, outcome) = match (claimed, dead.take()) {
                // No other origin: the first one's failure says most.
                (Err(ClaimError::NoOrigin), Some((_, first))) => return Err(first),
                // Placed there again (the report did not reach the store):
                // there is nothing else to try.
                (Ok((origin, _)), Some((id, first))) if *origin.id == *id => return Err(first),
                (Ok(claimed), Some(first)) => {
                    dead = Some(first);
                    claimed
                }
                (Ok(claimed), None) => claimed,
                (Err(e), _) => return Err(e.into()),
            };
            let e = match connect(origin.clone(), outcome).await {
                Ok(t) => return Ok((origin, outcome, t)),
                Err(e) => e,
            };
            let retry = e.retry_elsewhere();
            if retry {
                self.origin_unreachable(&origin, &e.to_string()).await;
            }
            self.forget_claim(key, &origin.id, outcome).await;
            if !retry || dead.is_some() {
                return Err(e);
            }
            tracing::info!(stream = %key, origin = %origin.id, error = %e, "origin unreachable; claiming the stream elsewhere");
            dead = Some((origin.id.to_string(), e));
        }
    }

    /// [`Context::claim_origin_with`] for a relay: the mapping is leased
    /// from the moment the connect succeeded.
    pub async fn claim_with<T, E, F>(
        &self,
        key: &StreamKey,
        protocol: Protocol,
        mut connect: impl FnMut(Origin) -> F,
    ) -> Result<(StreamLease, T), E>
    where
        E: Failure + Display + From<ClaimError>,
        F: Future<Output = Result<T, E>>,
    {
        let (origin, outcome, t) = self
            .claim_origin_with(key, protocol, |origin, _| connect(origin))
            .await?;
        Ok((StreamLease::start(self.clone(), key.clone(), origin, outcome), t))
    }

    /// Drops a mapping that this request created for a stream the origin
    /// turned out not to have (a 404 for a name nobody publishes), so such
    /// requests do not count as load or linger as mappings.
    pub async fn forget_claim(&self, key: &StreamKey, origin_id: &str, outcome: ClaimOutcome) {
        if outcome == ClaimOutcome::Hit {
            return;
        }
        tracing::debug!(stream = %key, outcome = outcome.as_str(), "origin has no such stream; claim released");
        if let Err(e) = self
            .store_op("release", self.store.release_stream(key, origin_id))
            .await
        {
            tracing::warn!(stream = %key, error = %e, "could not release claim; it will expire");
        }
    }
}

/// A relay's hold on its stream mapping.
///
/// While it lives, a task refreshes the mapping before its TTL runs out.
/// [`StreamLease::lost`] resolves when the origin is removed or expires, when
/// the mapping was taken over, or when the grace period after SIGTERM ends —
/// the relay then closes instead of hanging on a dead origin.
pub struct StreamLease {
    key: StreamKey,
    origin: Origin,
    /// Whether the claim found, placed or moved the stream: a request that
    /// fails may only undo a mapping it created.
    outcome: ClaimOutcome,
    /// Cancelled by the refresher when the relay must end.
    lost: CancellationToken,
    /// Refreshes the mapping and watches for the origin going away;
    /// aborted when the lease drops.
    refresher: JoinHandle<()>,
    /// Set when dropping the lease must release the mapping (publishers).
    release: Option<Context>,
}

impl StreamLease {
    fn start(ctx: Context, key: StreamKey, origin: Origin, outcome: ClaimOutcome) -> Self {
        let lost = CancellationToken::new();
        let refresher = tokio::spawn(refresh(ctx, key.clone(), origin.id.to_string(), lost.clone()));
        Self {
            key,
            origin,
            outcome,
            lost,
            refresher,
            release: None,
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    pub fn outcome(&self) -> ClaimOutcome {
        self.outcome
    }

    /// Drop the mapping when this lease ends (a publisher leaving ends its
    /// stream; a player leaving does not).
    pub fn release_on_drop(&mut self, ctx: &Context) {
        self.release = Some(ctx.clone());
    }

    /// Undoes [`StreamLease::release_on_drop`]: the mapping outlives this
    /// lease after all (the origin refused the publish).
    pub fn keep_on_drop(&mut self) {
        self.release = None;
    }

    /// Resolves when the relay must stop: origin gone or proxy aborting.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// [`Self::lost`] for a loop that checks it on every wake.
    pub fn lost_watch(&self) -> CancelWatch {
        CancelWatch::new(self.lost.clone())
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.refresher.abort();
        if let Some(ctx) = self.release.take() {
            let key = self.key.clone();
            let id = self.origin.id.clone();
            tokio::spawn(async move {
                if let Err(e) = ctx.store_op("release", ctx.store.release_stream(&key, &id)).await {
                    tracing::warn!(stream = %key, error = %e, "could not release stream mapping; it will expire");
                }
            });
        }
    }
}

/// Refreshes the mapping at a third of its TTL and watches for the origin
/// going away; cancels `lost` when the relay must end.
async fn refresh(ctx: Context, key: StreamKey, origin_id: String, lost: CancellationToken) {
    let mut gone = ctx.store.subscribe_gone();
    let period = (ctx.config.stream_ttl / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match ctx.store_op("refresh", ctx.store.refresh_stream(&key, &origin_id, ctx.config.stream_ttl)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(stream = %key, origin = %origin_id, "origin gone or stream moved; ending relay");
                        break;
                    }
                    // A store hiccup must not cut a running relay; the next
                    // tick tries again.
                    Err(e) => tracing::warn!(stream = %key, error = %e, "stream refresh failed"),
                }
            }
            event = gone.recv() => match event {
                Ok(g) if g.id == origin_id => {
                    tracing::info!(stream = %key, origin = %origin_id, "origin removed; ending relay");
                    break;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    gone = ctx.store.subscribe_gone();
                }
            },
            _ = ctx.shutdown.aborted() => break,
        }
    }
    lost.cancel();
}
