//! The drain signal.
//!
//! Two tokens reach every task: `drain` (SIGTERM/SIGINT received: readiness
//! turns 503, listeners stop accepting, open streams go on) and `abort`
//! (grace period over: open relays are cut). The process exits when
//! everything has stopped or the force-quit timeout passes.

use tokio_util::sync::CancellationToken;

/// Cloneable pair of shutdown tokens.
#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    abort: CancellationToken,
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

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    /// Resolves when open streams must close.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT drains");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
