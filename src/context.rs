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

/// A timer kept across the waits of one connection (a player's next
/// request head, an origin's next response), so that a wait costs no
/// timer of its own. Set at the first wait, it fires at the deadline it
/// was set for and is then moved on to the current wait's deadline: one
/// timer-wheel insertion per timeout span however many waits it covers,
/// not an insertion and a removal per wait. A fire that finds no wait
/// (the connection idle) wakes the last waiter for nothing, once.
#[derive(Default)]
pub struct KeptTimer(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl KeptTimer {
    /// Ready once `until` has passed; registers `cx` to be woken then.
    pub fn poll_until(&mut self, cx: &mut std::task::Context<'_>, until: tokio::time::Instant) -> Poll<()> {
        let sleep = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        // A timer set for a later wait (a longer timeout before) must not
        // make this one late.
        if sleep.deadline() > until {
            sleep.as_mut().reset(until);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) if sleep.deadline() < until => sleep.as_mut().reset(until),
                other => return other,
            }
        }
    }

    /// [`timeout_if_pending`] on this timer: `fut` within `wait` of the
    /// first poll that finds it pending.
    pub fn within<F: Future>(&mut self, wait: Duration, fut: F) -> Within<'_, F> {
        Within {
            fut,
            timer: self,
            wait,
            until: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`KeptTimer::within`].
    pub struct Within<'a, F> {
        #[pin]
        fut: F,
        timer: &'a mut KeptTimer,
        wait: Duration,
        until: Option<tokio::time::Instant>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let until = *this
            .until
            .get_or_insert_with(|| tokio::time::Instant::now() + *this.wait);
        this.timer.poll_until(cx, until).map(|()| Err(Elapsed))
    }
}

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

    /// One kept timer serves many waits: each times out `wait` after it
    /// began (not at the deadline of the wait that set the timer), a
    /// shorter wait after a longer one is not late, and a wait that ends
    /// in time is not disturbed by the timer of an earlier one.
    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_times_each_wait_from_its_own_start() {
        let mut timer = KeptTimer::default();
        let wait = Duration::from_secs(5);
        assert_eq!(timer.within(wait, async { 1 }).await.unwrap(), 1);
        // Answered after 3 s: the timer set for 5 s stays set.
        let soon = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "soon"
        };
        assert_eq!(timer.within(wait, soon).await.unwrap(), "soon");
        // The next wait starts at 3 s: the timer fires at 5 s, is moved on
        // to 8 s, and the wait ends there, not at 5 s.
        let start = tokio::time::Instant::now();
        assert!(timer.within(wait, std::future::pending::<()>()).await.is_err());
        assert_eq!(start.elapsed(), wait);
        // A wait that ends 4.5 s in, past where an earlier wait's timer
        // would have fired: still in time.
        let late = async {
            tokio::time::sleep(Duration::from_millis(4500)).await;
            "late"
        };
        assert_eq!(timer.within(wait, late).await.unwrap(), "late");
        // A shorter wait after longer ones ends at its own deadline.
        let start = tokio::time::Instant::now();
        let short = Duration::from_millis(250);
        assert!(timer.within(short, std::future::pending::<()>()).await.is_err());
        assert_eq!(start.elapsed(), short);
    }
}
