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

use crate::context::KeptTimer;
use crate::origin::Addr;

/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 32;
/// How long an idle connection is kept; shorter than the keep-alive
/// timeouts of common servers, so the origin rarely closes one first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    /// An HTTP/1.1 connection between two exchanges
    /// ([`super::exchange`]).
    tcp: TcpStream,
    /// Its response timer, kept with it ([`KeptTimer`]).
    timer: KeptTimer,
    /// [`IDLE_TIMEOUT`] after it went idle (a deadline: a comparison per
    /// take, not a subtraction).
    until: Instant,
}

/// Whether an idle connection is still open: nothing to read, not even
/// the end of the stream. Costs no system call unless the socket was
/// reported readable since it went idle.
fn is_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The idle connections of this replica, by origin address and port.
#[derive(Clone, Default)]
pub struct KeepAlive {
    idle: Arc<Mutex<Pool>>,
}

#[derive(Default)]
struct Pool {
    /// Keyed by the proxy's own origin addresses, never a client's input:
    /// a fast hasher does.
    by_origin: HashMap<Addr, Vec<Idle>, foldhash::fast::RandomState>,
    /// When every origin's list is pruned next.
    sweep_at: Option<Instant>,
}

impl KeepAlive {
    /// An idle connection to `addr` that is still open, newest
    /// first, with its response timer.
    pub fn take(&self, addr: &Addr) -> Option<(TcpStream, KeptTimer)> {
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = pool.by_origin.get_mut(addr)?;
        while let Some(idle) = list.pop() {
            if now < idle.until && is_open(&idle.tcp) {
                return Some((idle.tcp, idle.timer));
            }
        }
        None
    }

    /// Gives back a connection whose response was read to its end, with
    /// its response timer.
    pub fn put(&self, addr: Addr, tcp: TcpStream, timer: KeptTimer) {
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(now);
        let list = pool.by_origin.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_ORIGIN {
            // The oldest goes: it is the likeliest to be closed by the origin.
            list.remove(0);
        }
        list.push(Idle {
            tcp,
            timer,
            until: now + IDLE_TIMEOUT,
        });
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
        if self.sweep_at.is_some_and(|at| now < at) {
            return;
        }
        self.sweep_at = Some(now + IDLE_TIMEOUT);
        self.by_origin.retain(|_, list| {
            list.retain(|idle| now < idle.until && is_open(&idle.tcp));
            !list.is_empty()
        });
    }
}
