//! Keep-alive connections to origins, for short requests only (playlists
//! and segments).
//!
//! A live FLV/TS stream holds its origin connection for its whole life and
//! never comes here. A playlist or segment request takes an idle connection
//! to its origin if there is one and gives it back once the response body
//! has been read to its end; a response cut short closes its connection.
//! Idle connections are kept at most [`MAX_IDLE_PER_ORIGIN`] per origin and
//! [`IDLE_TIMEOUT`] long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 32;
/// How long an idle connection is kept; shorter than the keep-alive
/// timeouts of common servers, so the origin rarely closes one first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Aborts the task driving a connection when dropped, which closes it.
pub struct ConnTask(pub JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1 connection to an origin: the request handle and the task
/// that drives the socket.
pub struct OriginConn {
    pub sender: SendRequest<Empty<Bytes>>,
    pub task: ConnTask,
}

struct Idle {
    conn: OriginConn,
    since: Instant,
}

/// The idle connections of this replica, by origin authority (`ip:port`).
#[derive(Clone, Default)]
pub struct KeepAlive {
    idle: Arc<Mutex<Pool>>,
}

#[derive(Default)]
struct Pool {
    by_origin: HashMap<String, Vec<Idle>>,
    /// When every origin's list was last pruned.
    swept: Option<Instant>,
}

impl KeepAlive {
    /// An idle connection to `authority` that is still open, newest first.
    pub fn take(&self, authority: &str) -> Option<OriginConn> {
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = pool.by_origin.get_mut(authority)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < IDLE_TIMEOUT && !idle.conn.sender.is_closed() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Gives back a connection whose response was read to its end.
    pub fn put(&self, authority: &str, conn: OriginConn) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = pool.by_origin.entry(authority.to_string()).or_default();
        if list.len() >= MAX_IDLE_PER_ORIGIN {
            // The oldest goes: it is the likeliest to be closed by the origin.
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
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
            list.retain(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT && !idle.conn.sender.is_closed());
            !list.is_empty()
        });
    }
}
