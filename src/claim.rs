//! The handle every task gets, and stream leases.
//!
//! [`Context`] bundles config, store, metrics and shutdown; it is cheap to
//! clone. [`Context::claim`] is how every protocol turns a stream key into
//! an origin: it bounds the store call, counts the result, and returns a
//! [`StreamLease`] that keeps the mapping alive while the relay runs and
//! tells the relay when its origin is gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balance::Policy;
use crate::config::Config;
use crate::discovery::DiscoveryState;
use crate::metrics::Metrics;
use crate::origin::{Origin, Protocol};
use crate::shutdown::Shutdown;
use crate::store::{Claim, ClaimOutcome, Store, StoreError};
use crate::stream_key::StreamKey;

/// Why a stream could not be given an origin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    #[error("no live origin can take the stream")]
    NoOrigin,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shared state of one proxy process.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Kubernetes discovery's health (readiness) and pool-level policy.
    pub discovery: DiscoveryState,
}

impl Context {
    pub fn new(config: Config, store: Store) -> Self {
        Self {
            config: Arc::new(config),
            store,
            metrics: Metrics::new(),
            shutdown: Shutdown::new(),
            discovery: DiscoveryState::default(),
        }
    }

    /// Runs one store operation with the configured time bound and records
    /// its latency, so a slow store never hangs a client.
    pub async fn store_op<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timer = self
            .metrics
            .store_operation_seconds
            .with_label_values(&[op])
            .start_timer();
        let result = match tokio::time::timeout(self.config.redis.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{op} timed out after {:?}",
                self.config.redis.timeout
            ))),
        };
        timer.observe_duration();
        result
    }

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
        self.metrics.claims_total.with_label_values(&[label]).inc();
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

    /// The policy that places new streams: the OriginPools' when they set
    /// one, else `balance_policy`.
    pub fn balance_policy(&self) -> Policy {
        self.discovery.policy().unwrap_or(self.config.balance_policy)
    }

    /// Ready to serve: not draining, configured discovery is working and
    /// the store answers.
    pub async fn ready(&self) -> Result<(), String> {
        if self.shutdown.is_draining() {
            return Err("draining".into());
        }
        if let Some(reason) = self.discovery.unready_reason() {
            return Err(reason);
        }
        self.store_op("ping", self.store.ping())
            .await
            .map_err(|e| e.to_string())
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
    outcome: ClaimOutcome,
    lost: CancellationToken,
    refresher: JoinHandle<()>,
    release: Option<Context>,
}

impl StreamLease {
    fn start(ctx: Context, key: StreamKey, origin: Origin, outcome: ClaimOutcome) -> Self {
        let lost = CancellationToken::new();
        let refresher = tokio::spawn(refresh(ctx, key.clone(), origin.id.clone(), lost.clone()));
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

    /// Resolves when the relay must stop: origin gone or proxy aborting.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
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
