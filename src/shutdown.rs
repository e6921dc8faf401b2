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

use tokio_util::sync::CancellationToken;

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
