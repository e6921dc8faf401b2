//! Every listening socket: binding, the accept loop, connection caps and
//! the drain contract. Protocol servers only say what to do with one
//! connection; this module owns when connections are taken and when the
//! listener stops.
//!
//! # The drain contract
//!
//! * **Draining** (SIGTERM): stop taking new work at once — a TCP listener
//!   is closed, so new clients are refused by the kernel instead of waiting
//!   in a backlog nobody reads; a UDP server stops creating sessions (new
//!   handshakes, new bindings) but keeps relaying for the ones it has.
//! * **Aborted** (grace period over): every connection or session still
//!   open is cut, including those still in a handshake that no stream lease
//!   watches yet.
//! * A server returns once it has stopped taking work and its last
//!   connection or session has ended.
//!
//! TCP servers get this by calling [`serve`]; UDP servers (WebRTC, SRT)
//! bind with [`bind_udp`] and follow the same contract in their receive
//! loop with `ctx.shutdown.draining()` / `aborted()`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ListenAddr;
use crate::context::Context;
use crate::shutdown::until_cancelled;

/// Backlog when the setting is 0 and the kernel allows more.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Connections turned away over the cap that may still be getting their
/// refusal (an HTTP 503, an RTMP status) at once; past this they are
/// closed without a word.
const MAX_REFUSING: usize = 64;
/// How long a refusal may take before the connection is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (EMFILE and friends), instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key}): {source}")]
pub struct BindError {
    /// The setting that names the address.
    pub key: &'static str,
    pub addr: ListenAddr,
    pub source: io::Error,
}

/// The backlog to use: the configured one, or for 0 the smaller of
/// [`DEFAULT_BACKLOG`] and `net.core.somaxconn` (the kernel would cut a
/// larger one silently anyway).
pub fn effective_backlog(configured: u32) -> u32 {
    if configured != 0 {
        return configured;
    }
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    somaxconn.map_or(DEFAULT_BACKLOG, |max| max.clamp(1, DEFAULT_BACKLOG))
}

/// Binds a TCP listener with `backlog` pending connections (address reuse
/// on, so a restart does not wait for old sockets in TIME_WAIT).
pub fn bind_tcp(key: &'static str, addr: ListenAddr, backlog: u32) -> Result<TcpListener, BindError> {
    let failed = |source| BindError { key, addr, source };
    let socket = match addr.0 {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(addr.0).map_err(failed)?;
    socket.listen(backlog).map_err(failed)
}

/// Binds a UDP socket for a media server.
pub async fn bind_udp(key: &'static str, addr: ListenAddr) -> Result<UdpSocket, BindError> {
    UdpSocket::bind(addr.0)
        .await
        .map_err(|source| BindError { key, addr, source })
}

/// How one TCP server treats its connections.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Serves one admitted connection to its end.
    fn serve(&self, tcp: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> + Send;
    /// Tells a connection over the cap that the server is full, in its
    /// own protocol, then closes it. Bounded by a timeout.
    fn refuse(&self, tcp: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> + Send;
}

/// Accepts connections until draining starts, at most `max_connections`
/// open at once (0 = unlimited); then closes the listener and waits for
/// the connections it admitted. Each connection is cut when the proxy
/// aborts.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    ctx: Context,
    name: &'static str,
    max_connections: usize,
    handler: H,
) {
    let cap = (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let open = ctx.metrics.listener_connections.with_label_values(&[name]);
    let tracker = TaskTracker::new();
    while let Some((tcp, peer)) = accept(&listener, &ctx, name).await {
        let _ = tcp.set_nodelay(true);
        let permit = match &cap {
            None => None,
            Some(cap) => match cap.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refuse(&ctx, name, &refusing, &handler, tcp, peer);
                    continue;
                }
            },
        };
        let (ctx, handler, open) = (ctx.clone(), handler.clone(), open.clone());
        let span = tracing::info_span!("conn", server = name, %peer);
        tracker.spawn(
            async move {
                let _permit = permit;
                open.inc();
                // Checked on every wake of a relay: an atomic load, not a lock.
                let abort = ctx.shutdown.abort_watch();
                if until_cancelled(handler.serve(tcp, peer), abort).await.is_none() {
                    tracing::info!("proxy shutting down; connection cut");
                }
                open.dec();
            }
            .instrument(span),
        );
    }
    // Close the socket now so new clients are refused at once, not left in
    // the backlog while open connections finish.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Turns away a connection over the cap: the handler's refusal when a
/// refusal slot is free, else a plain close.
fn refuse<H: Handler>(
    ctx: &Context,
    name: &'static str,
    refusing: &Arc<Semaphore>,
    handler: &H,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    ctx.metrics
        .listener_refused_total
        .with_label_values(&[name, "connection_limit"])
        .inc();
    tracing::warn!(server = name, %peer, "connection limit reached; refusing");
    let Ok(slot) = refusing.clone().try_acquire_owned() else {
        return;
    };
    let handler = handler.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, handler.refuse(tcp, peer)).await;
    });
}

/// The next connection on `listener`, or `None` once draining starts.
async fn accept(listener: &TcpListener, ctx: &Context, name: &'static str) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            _ = ctx.shutdown.draining() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_the_setting_or_bounded_by_the_kernel() {
        assert_eq!(effective_backlog(77), 77);
        let auto = effective_backlog(0);
        assert!((1..=DEFAULT_BACKLOG).contains(&auto), "{auto}");
    }
}
