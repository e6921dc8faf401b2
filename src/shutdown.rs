//! The shutdown signal every task watches, and the OS signals that start it.
//!
//! Three stages, each a token that reaches every task through the context:
//!
//! * `drain` — SIGTERM/SIGINT received: readiness turns 503, listeners stop
//!   accepting, open streams go on;
//! * `abort` — grace period over: open relays are cut;
//! * `force` — a second signal: the lifecycle in [`crate::server::run`]
//!   stops waiting for anything and returns at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Cloneable set of shutdown tokens.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking new work.
    drain: CancellationToken,
    /// Cut what is still open.
    abort: CancellationToken,
    /// Stop waiting for anything.
    force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: stop accepting, report not ready.
    pub fn start_drain(&self) {
        self.drain.cancel();
    }

    /// Ends the grace period: open streams are closed.
    pub fn abort(&self) {
        self.drain.cancel();
        self.abort.cancel();
    }

    /// Stops waiting for anything: the process quits now.
    pub fn force(&self) {
        self.abort();
        self.force.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    pub fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    /// Resolves when open streams must close.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Resolves when the quit is forced.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// A cheap watch on the abort, for loops that poll it on every wake.
    pub fn abort_watch(&self) -> CancelWatch {
        CancelWatch::new(self.abort.clone())
    }

    /// A cheap watch on the drain, for loops that poll it on every wake.
    pub fn drain_watch(&self) -> CancelWatch {
        CancelWatch::new(self.drain.clone())
    }
}

/// Watches a token from inside a hot poll loop.
///
/// Polling `token.cancelled()` on every wake takes the token's lock each
/// time. This registers the task's waker once (again only when the task's
/// waker changes), and otherwise answers with one atomic load: the wake-up
/// comes from the registration, the answer from the load.
pub struct CancelWatch {
    token: CancellationToken,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker the registration holds.
    registered: Option<Waker>,
}

impl CancelWatch {
    pub fn new(token: CancellationToken) -> Self {
        Self {
            wait: Box::pin(token.clone().cancelled_owned()),
            token,
            registered: None,
        }
    }

    /// True once the token is cancelled; otherwise the task is woken when
    /// it is.
    pub fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        if !self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            if self.wait.as_mut().poll(cx).is_ready() {
                return true;
            }
            self.registered = Some(cx.waker().clone());
        }
        false
    }
}

/// Runs `fut` until it finishes or `watch` fires, whichever is first;
/// `None` when cut.
pub async fn until_cancelled<F: Future>(fut: F, mut watch: CancelWatch) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if watch.poll_cancelled(cx) {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// The OS signals as the lifecycle wants them: resolves on the first
/// SIGTERM or SIGINT; a second one forces the quit through `shutdown`.
/// Signal handlers are installed before this returns, so a signal that
/// arrives early is not lost.
pub fn os_signals(shutdown: Shutdown) -> impl Future<Output = ()> + Send {
    let mut signals = Signals::install();
    async move {
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: quitting now");
            shutdown.force();
        });
    }
}

/// SIGTERM and SIGINT as one source.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Self {
            term: install(SignalKind::terminate(), "SIGTERM"),
            int: install(SignalKind::interrupt(), "SIGINT"),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {}
                _ = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_its_task_and_cuts_the_future() {
        let token = CancellationToken::new();
        let cancel = token.clone();
        let waiter = tokio::spawn(until_cancelled(std::future::pending::<()>(), CancelWatch::new(token)));
        tokio::task::yield_now().await;
        cancel.cancel();
        assert_eq!(waiter.await.unwrap(), None, "the pending future was cut");
        let done = until_cancelled(async { 7 }, CancelWatch::new(CancellationToken::new())).await;
        assert_eq!(done, Some(7));
    }
}
