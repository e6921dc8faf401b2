//! The handle every task gets.
//!
//! [`Context`] bundles config, store, metrics, shutdown and what discovery
//! tells the data plane; it is cheap to clone. How a stream key becomes an
//! origin — `ctx.claim(…)` — is in [`crate::claim`].

use std::future::Future;
use std::sync::Arc;

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
        let mut fut = std::pin::pin!(fut);
        // The memory store answers at once: no timer is set up for it.
        // (Polled again below, a future that was not ready registers the
        // task's waker then.)
        let result = match futures_util::FutureExt::now_or_never(&mut fut) {
            Some(r) => r,
            None => match tokio::time::timeout(self.config.redis.timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{op} timed out after {:?}",
                    self.config.redis.timeout
                ))),
            },
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.metrics
            .store_operation_seconds
            .with_label_values(&[op, outcome])
            .observe(started.elapsed().as_secs_f64());
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
