//! Keep-alive connections to origins, for short requests only (playlists
//! and segments).
//!
//! A live FLV/TS stream holds its origin connection for its whole life and
//! never comes here. A playlist or segment request
//! ([`super::exchange`]) takes an idle connection to its origin if there
//! is one and gives it back once the response body has been read to its
//! end; a response cut short closes its connection.
//! Idle connections are kept at most [`MAX_IDLE_PER_ORIGIN`] per origin and
//! [`IDLE_TIMEOUT`] long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 32;
/// How long an idle connection is kept; shorter than the keep-alive
/// timeouts of common servers, so the origin rarely closes one first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    /// An HTTP/1.1 connection between two exchanges
    /// ([`super::exchange`]).
    tcp: TcpStream,
    since: Instant,
}

/// Whether an idle connection is still open: nothing to read, not even
/// the end of the stream. Costs no system call unless the socket was
/// reported readable since it went idle.
fn is_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The idle connections of this replica, by origin authority (`ip:port`).
#[derive(Clone, Default)]
pub struct KeepAlive {
    idle: Arc<Mutex<Pool>>,
}

#[derive(Default)]
struct Pool {
    /// Keyed by the proxy's own origin addresses, never a client's input:
    /// a fast hasher does.
    by_origin: HashMap<String, Vec<Idle>, foldhash::fast::RandomState>,
    /// When every origin's list was last pruned.
    swept: Option<Instant>,
}

impl KeepAlive {
    /// An idle connection to `authority` that is still open, newest first.
    pub fn take(&self, authority: &str) -> Option<TcpStream> {
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = pool.by_origin.get_mut(authority)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < IDLE_TIMEOUT && is_open(&idle.tcp) {
                return Some(idle.tcp);
            }
        }
        None
    }

    /// Gives back a connection whose response was read to its end.
    pub fn put(&self, authority: &str, tcp: TcpStream) {
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = match pool.by_origin.get_mut(authority) {
            Some(list) => list,
            None => pool.by_origin.entry(authority.to_string()).or_default(),
        };
        if list.len() >= MAX_IDLE_PER_ORIGIN {
            // The oldest goes: it is the likeliest to be closed by the origin.
            list.remove(0);
        }
        list.push(Idle { tcp, since: now });
    }

    /// Idle connections held, for tests and debugging.
    pub fn idle_count(&self) -> usize {
        let pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.by_origin.values().map(Vec::len).sum()
    }
}

impl Pool {
    /// Drops expired and closed connections of every origin, at most once
    /// per timeout, so origins nobody asks for again do not keep sockets.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|at| now.duration_since(at) < IDLE_TIMEOUT) {
            return;
        }
        self.swept = Some(now);
        self.by_origin.retain(|_, list| {
            list.retain(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT && is_open(&idle.tcp));
            !list.is_empty()
        });
    }
}
