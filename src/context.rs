//! The handle every task gets.
//!
//! [`Context`] bundles config, store, metrics, shutdown and what discovery
//! tells the data plane; it is cheap to clone. How a stream key becomes an
//! origin — `ctx.claim(…)` — is in [`crate::claim`].

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::balance::Policy;
use crate::config::Config;
use crate::discovery_state::{DiscoveryState, Registrar};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// Shared state of one proxy process.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Kubernetes discovery's health (readiness) and pool-level policy.
    pub discovery: DiscoveryState,
    /// What heartbeat registration needs to know about this process.
    pub registrar: Registrar,
}

impl Context {
    pub fn new(config: Config, store: Store) -> Self {
        Self {
            config: Arc::new(config),
            store,
            metrics: Metrics::new(),
            shutdown: Shutdown::new(),
            discovery: DiscoveryState::default(),
            registrar: Registrar::default(),
        }
    }

    /// Runs one store operation with the configured time bound and records
    /// its latency and result, so a slow store never hangs a client.
    pub async fn store_op<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        // The memory store answers at once: no timer is set up for it.
        let result = match timeout_if_pending(self.config.redis.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{op} timed out after {:?}",
                self.config.redis.timeout
            ))),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.metrics
            .observe_store_op(op, outcome, started.elapsed().as_secs_f64());
        result
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

/// `tokio::time::timeout`, with the timer made only when `fut` is not
/// ready at once: most waits on the request path (a memory-store
/// operation, a free rewrite slot, a body that came with its head) end
/// before they start, and a timer costs a clock read and a runtime handle
/// each time. The wait counts from the first poll that finds `fut`
/// pending.
///
/// A future of its own, not an `async fn`: one holds `fut` twice, as its
/// argument and pinned, which doubles the size of every request future
/// around it.
pub fn timeout_if_pending<F: Future>(wait: Duration, fut: F) -> TimeoutIfPending<F> {
    TimeoutIfPending { fut, sleep: None, wait }
}

pin_project_lite::pin_project! {
    /// See [`timeout_if_pending`].
    pub struct TimeoutIfPending<F> {
        #[pin]
        fut: F,
        // Set on the first poll that finds `fut` pending.
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        wait: Duration,
    }
}

impl<F: Future> Future for TimeoutIfPending<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.wait)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

/// A wait of [`timeout_if_pending`] that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

#[cfg(test)]
mod tests {
    use super::*;

    /// Ready at once: no timer (none could fire: time is paused and never
    /// advanced); pending: the wait counts, and a late answer still wins
    /// within it.
    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_timed_only_once_the_future_waits() {
        let wait = Duration::from_secs(5);
        assert_eq!(timeout_if_pending(wait, async { 7 }).await.unwrap(), 7);
        let start = tokio::time::Instant::now();
        assert!(timeout_if_pending(wait, std::future::pending::<()>()).await.is_err());
        assert_eq!(
            start.elapsed(),
            wait,
            "a future that never ends times out after the wait"
        );
        let late = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            "late"
        };
        assert_eq!(timeout_if_pending(wait, late).await.unwrap(), "late");
    }
}
