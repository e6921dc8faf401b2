//! One bound WebRTC session: its own upstream UDP socket to the origin's
//! `rtc` port, and the rules of its life.
//!
//! Client datagrams arrive through the session's queue (from the listener,
//! which has checked the source address) and leave from the upstream
//! socket; whatever the origin sends to that socket goes to the client's
//! current address from the listener socket. Nothing is decrypted.
//!
//! The session ends when no packet moved either way for the idle timeout,
//! when it is deleted (its queue closes here, or its store record
//! disappears when another replica deleted it), when its origin is removed
//! or expires, and at abort. While it lives, its store record and its
//! stream mapping are refreshed.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::session::{Inbound, Record};
use super::RtcState;
use crate::metrics::Metrics;
use crate::origin::Protocol;
use crate::store::SessionKind;

/// Why a relay ended (the `result` label of `rtc_sessions_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Idle,
    Deleted,
    OriginGone,
    Shutdown,
    Failed(String),
}

impl End {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Deleted => "deleted",
            Self::OriginGone => "origin_gone",
            Self::Shutdown => "shutdown",
            Self::Failed(_) => "failed",
        }
    }

    /// Whether the store record goes too. At shutdown it stays: the
    /// client's next packets may reach another replica, which takes the
    /// session over.
    fn forget(&self) -> bool {
        matches!(self, Self::Idle | Self::OriginGone | Self::Failed(_))
    }
}

/// Packets and bytes moved since the last flush to the metrics (counted
/// locally so the hot path touches no shared counter).
#[derive(Default)]
struct Counts {
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn flush(&mut self, metrics: &Metrics) {
        let c = std::mem::take(self);
        metrics
            .rtc_packets_total
            .with_label_values(&["in"])
            .inc_by(c.packets_in);
        metrics
            .rtc_packets_total
            .with_label_values(&["out"])
            .inc_by(c.packets_out);
        metrics
            .bytes_relayed_total
            .with_label_values(&["webrtc", "in"])
            .inc_by(c.bytes_in);
        metrics
            .bytes_relayed_total
            .with_label_values(&["webrtc", "out"])
            .inc_by(c.bytes_out);
    }
}

/// Aborts the task when the relay ends.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the relay of a session whose first client address was just bound;
/// cleans up after it.
pub async fn run(state: Arc<RtcState>, record: Arc<Record>, generation: u64, rx: mpsc::Receiver<Inbound>) {
    let metrics = &state.ctx.metrics;
    metrics.rtc_sessions_active.inc();
    let end = relay(&state, &record, rx).await;
    metrics.rtc_sessions_active.dec();
    state.sessions.remove(&record.username, Some(generation));
    if end.forget() {
        let ctx = &state.ctx;
        if let Err(e) = ctx
            .store_op(
                "remove_session",
                ctx.store.remove_session(SessionKind::Rtc, &record.username),
            )
            .await
        {
            tracing::warn!(session = %record.username, error = %e, "could not remove WebRTC session; it will expire");
        }
    }
    metrics.rtc_sessions_total.with_label_values(&[end.as_str()]).inc();
    match &end {
        End::Failed(reason) => {
            tracing::warn!(session = %record.username, stream = %record.key, origin = %record.origin_id, %reason, "WebRTC session failed")
        }
        _ => {
            tracing::info!(session = %record.username, stream = %record.key, origin = %record.origin_id, reason = end.as_str(), "WebRTC session ended")
        }
    }
}

/// The upstream socket for the session's origin.
async fn connect(state: &RtcState, record: &Record) -> Result<UdpSocket, End> {
    let ctx = &state.ctx;
    let origin = match ctx.store_op("origin", ctx.store.origin(&record.origin_id)).await {
        Ok(Some(origin)) => origin,
        Ok(None) => return Err(End::OriginGone),
        Err(e) => return Err(End::Failed(format!("store: {e}"))),
    };
    let authority = origin
        .authority(Protocol::Rtc)
        .ok_or_else(|| End::Failed(format!("origin {} has no WebRTC port", origin.id)))?;
    let addr: SocketAddr = tokio::net::lookup_host(&authority)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| End::Failed(format!("cannot resolve origin address {authority}")))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| End::Failed(format!("upstream socket: {e}")))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| End::Failed(format!("upstream socket to {addr}: {e}")))?;
    Ok(socket)
}

async fn relay(state: &Arc<RtcState>, record: &Arc<Record>, mut rx: mpsc::Receiver<Inbound>) -> End {
    let ctx = &state.ctx;
    let mut gone = ctx.store.subscribe_gone();
    let upstream = match connect(state, record).await {
        Ok(socket) => socket,
        Err(end) => return end,
    };
    let mut keeper = AbortOnDrop(tokio::spawn(keep(state.clone(), record.clone())));
    let idle = state.settings.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    let mut client: Option<SocketAddr> = None;
    let mut last = Instant::now();
    let mut counts = Counts::default();
    let mut buf = vec![0u8; 65_536];
    let end = loop {
        tokio::select! {
            inbound = rx.recv() => match inbound {
                Some((from, data)) => {
                    if client.is_some_and(|c| c != from) {
                        tracing::info!(session = %record.username, peer = %from, "WebRTC client moved");
                    }
                    client = Some(from);
                    last = Instant::now();
                    counts.packets_in += 1;
                    counts.bytes_in += data.len() as u64;
                    if let Err(e) = upstream.send(&data).await {
                        tracing::debug!(session = %record.username, error = %e, "send to origin failed");
                    }
                }
                None => break End::Deleted,
            },
            received = upstream.recv(&mut buf) => match received {
                Ok(n) => {
                    if let Some(to) = client {
                        last = Instant::now();
                        counts.packets_out += 1;
                        counts.bytes_out += n as u64;
                        if let Err(e) = state.socket.send_to(&buf[..n], to).await {
                            tracing::debug!(session = %record.username, error = %e, "send to client failed");
                        }
                    }
                }
                // ICMP port unreachable from the origin: it may come back;
                // the idle timeout ends the session if it does not.
                Err(e) => tracing::debug!(session = %record.username, error = %e, "origin socket error"),
            },
            _ = tick.tick() => {
                counts.flush(&ctx.metrics);
                if last.elapsed() >= idle {
                    break End::Idle;
                }
            }
            kept = &mut keeper.0 => break kept.unwrap_or_else(|e| End::Failed(format!("refresh task: {e}"))),
            event = gone.recv() => match event {
                Ok(g) if g.id == record.origin_id => break End::OriginGone,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => gone = ctx.store.subscribe_gone(),
            },
            _ = ctx.shutdown.aborted() => break End::Shutdown,
        }
    };
    counts.flush(&ctx.metrics);
    end
}

/// Keeps the session's store record and its stream mapping alive; returns
/// when the session must end: its record was deleted (by another replica),
/// or its stream mapping was lost (origin gone, stream moved).
async fn keep(state: Arc<RtcState>, record: Arc<Record>) -> End {
    let ctx = &state.ctx;
    let session_ttl = state.settings.idle_timeout;
    let stream_ttl = ctx.config.stream_ttl;
    let session_every = (session_ttl / 3).max(Duration::from_millis(10));
    let stream_every = (stream_ttl / 3).max(Duration::from_millis(50));
    let mut next_session = Instant::now() + session_every;
    let mut next_stream = Instant::now() + stream_every;
    loop {
        tokio::time::sleep_until(next_session.min(next_stream)).await;
        let now = Instant::now();
        if now >= next_session {
            let touch = ctx.store.touch_session(SessionKind::Rtc, &record.username, session_ttl);
            match ctx.store_op("touch_session", touch).await {
                Ok(Some(_)) => {}
                Ok(None) => return End::Deleted,
                // A store hiccup must not cut a running session.
                Err(e) => tracing::warn!(session = %record.username, error = %e, "WebRTC session refresh failed"),
            }
            next_session = now + session_every;
        }
        if now >= next_stream {
            let refresh = ctx.store.refresh_stream(&record.key, &record.origin_id, stream_ttl);
            match ctx.store_op("refresh", refresh).await {
                Ok(true) => {}
                Ok(false) => return End::OriginGone,
                Err(e) => tracing::warn!(stream = %record.key, error = %e, "stream refresh failed"),
            }
            next_stream = now + stream_every;
        }
    }
}
