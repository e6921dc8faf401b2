//! The client-facing WebRTC UDP socket (`PROXY_WEBRTC_SERVER`).
//!
//! Every datagram is routed by its source address: a bound address goes to
//! its session's relay. An unbound address gets in only with a STUN
//! binding request whose USERNAME names a session and whose
//! MESSAGE-INTEGRITY verifies with that session's ice-pwd; a verified check
//! from a new address moves the session there (NAT rebinding, ICE
//! restart), an unverified one changes nothing. Usernames this replica does
//! not know are looked up in the shared store — the client's UDP may land
//! on another replica than its signalling — at a bounded rate, one look-up
//! per username at a time. Everything else is dropped and counted.
//!
//! Drain: once the proxy drains, no session is adopted from the store; the
//! sessions signalled here and the running relays go on until abort.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::demux::{classify, PacketKind};
use super::session::{Bind, Record};
use super::stun::{self, Message};
use super::{relay, RtcState};
use crate::store::{Session, SessionKind, StoreError};

/// Largest datagram read; anything longer is truncated by the kernel and
/// then fails STUN's length check or reaches the origin as it came.
const DATAGRAM: usize = 65_536;
/// Store look-ups in flight at once; more wait for the next datagram.
const MAX_PENDING: usize = 256;

/// A finished store look-up and the check that started it.
struct Lookup {
    username: String,
    result: Result<Option<Session>, StoreError>,
    from: SocketAddr,
    datagram: Bytes,
}

/// Token bucket: `rate` per second, bursts up to `rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_second: usize) -> Self {
        let rate = per_second.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The listener loop's own state.
struct Listener {
    state: Arc<RtcState>,
    relays: TaskTracker,
    /// Usernames being looked up in the store (their checks are dropped
    /// meanwhile; ICE retransmits).
    pending: HashSet<String>,
    limiter: RateLimit,
    lookups: mpsc::Sender<Lookup>,
    draining: bool,
}

/// Serves the UDP socket until abort (or, once draining, until the last
/// relay has ended).
pub async fn serve(state: Arc<RtcState>) {
    let socket = state.socket.clone();
    let ctx = state.ctx.clone();
    let (lookups, mut results) = mpsc::channel(MAX_PENDING);
    let mut gone = ctx.store.subscribe_gone();
    let mut listener = Listener {
        limiter: RateLimit::new(state.settings.lookup_rate),
        state,
        relays: TaskTracker::new(),
        pending: HashSet::new(),
        lookups,
        draining: false,
    };
    let sweep_every =
        (listener.state.settings.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(sweep_every);
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => listener.datagram(&buf[..n], from),
                // ICMP errors surface here on some systems; they concern
                // one peer, never the socket.
                Err(e) => tracing::debug!(error = %e, "WebRTC socket receive error"),
            },
            Some(done) = results.recv() => listener.looked_up(done),
            _ = sweep.tick() => {
                let idle = listener.state.settings.idle_timeout;
                listener.state.sessions.sweep_unbound(idle, None);
                if listener.draining && listener.relays.is_empty() {
                    break;
                }
            }
            event = gone.recv() => match event {
                Ok(g) => {
                    let idle = listener.state.settings.idle_timeout;
                    listener.state.sessions.sweep_unbound(idle, Some(&g.id));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => gone = ctx.store.subscribe_gone(),
            },
            _ = ctx.shutdown.draining(), if !listener.draining => {
                tracing::info!(relays = listener.relays.len(), "WebRTC: draining, no new sessions");
                listener.draining = true;
            }
            _ = ctx.shutdown.aborted() => break,
        }
    }
    listener.relays.close();
    listener.relays.wait().await;
}

impl Listener {
    fn count_binding(&self, result: &str) {
        self.state
            .ctx
            .metrics
            .rtc_stun_bindings_total
            .with_label_values(&[result])
            .inc();
    }

    fn drop_datagram(&self, reason: &str) {
        self.state
            .ctx
            .metrics
            .rtc_datagrams_dropped_total
            .with_label_values(&[reason])
            .inc();
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        let kind = classify(data);
        if let Some((tx, bound)) = self.state.sessions.route(&from) {
            if kind == PacketKind::Other {
                return self.drop_datagram("not_webrtc");
            }
            if kind == PacketKind::Stun {
                // A check for another session from a bound address is a
                // new binding attempt (an ICE restart with new ufrags).
                if let Ok(m) = stun::parse(data) {
                    if m.is_binding_request() && m.username.is_some_and(|u| u != bound) {
                        return self.check(data, &m, from);
                    }
                }
            }
            if tx.try_send((from, Bytes::copy_from_slice(data))).is_err() {
                self.drop_datagram("queue_full");
            }
            return;
        }
        if kind != PacketKind::Stun {
            return self.drop_datagram("unknown_address");
        }
        match stun::parse(data) {
            Ok(m) if m.is_binding_request() && m.username.is_some() => self.check(data, &m, from),
            Ok(_) => self.drop_datagram("unknown_address"),
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "WebRTC: bad STUN dropped");
                self.count_binding(e.metric_label());
            }
        }
    }

    /// A binding request from an address not (yet) bound to its session.
    fn check(&mut self, data: &[u8], m: &Message<'_>, from: SocketAddr) {
        let username = m.username.expect("checked by the caller");
        let Some(record) = self.state.sessions.record(username) else {
            return self.look_up(username, data, from);
        };
        if !m.verify_integrity(record.ice_pwd.as_bytes()) {
            tracing::debug!(peer = %from, session = username, "WebRTC: binding request failed MESSAGE-INTEGRITY");
            return self.count_binding("bad_integrity");
        }
        let datagram = Bytes::copy_from_slice(data);
        match self.state.sessions.bind(username, from) {
            Bind::Start {
                record,
                generation,
                rx,
                tx,
            } => {
                self.count_binding("bound");
                tracing::info!(peer = %from, session = username, stream = %record.key, origin = %record.origin_id, "WebRTC: client bound");
                let _ = tx.try_send((from, datagram));
                self.relays
                    .spawn(relay::run(self.state.clone(), record, generation, rx));
            }
            Bind::Running(tx) => {
                self.count_binding("bound");
                if tx.try_send((from, datagram)).is_err() {
                    self.drop_datagram("queue_full");
                }
            }
            Bind::Gone => {}
        }
    }

    fn look_up(&mut self, username: &str, data: &[u8], from: SocketAddr) {
        if self.draining {
            return self.count_binding("draining");
        }
        if self.pending.contains(username) {
            return;
        }
        if self.pending.len() >= MAX_PENDING || !self.limiter.allow() {
            return self.count_binding("rate_limited");
        }
        self.pending.insert(username.to_string());
        let ctx = self.state.ctx.clone();
        let ttl = self.state.settings.idle_timeout;
        let lookups = self.lookups.clone();
        let username = username.to_string();
        let datagram = Bytes::copy_from_slice(data);
        tokio::spawn(async move {
            let result = ctx
                .store_op(
                    "touch_session",
                    ctx.store.touch_session(SessionKind::Rtc, &username, ttl),
                )
                .await;
            let _ = lookups
                .send(Lookup {
                    username,
                    result,
                    from,
                    datagram,
                })
                .await;
        });
    }

    fn looked_up(&mut self, done: Lookup) {
        self.pending.remove(&done.username);
        let record = match done.result {
            Ok(Some(session)) => Record::from_session(&done.username, session),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "WebRTC: session look-up failed");
                return self.count_binding("store_error");
            }
        };
        let Some(record) = record else {
            return self.count_binding("unknown_username");
        };
        if self.state.sessions.insert(record).is_err() {
            tracing::warn!(
                limit = self.state.settings.max_sessions,
                "WebRTC: session table full; check dropped"
            );
            return self.count_binding("table_full");
        }
        // The same bytes parsed before the look-up.
        if let Ok(m) = stun::parse(&done.datagram) {
            self.check(&done.datagram, &m, done.from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills_over_time() {
        let mut limit = RateLimit::new(3);
        assert!((0..3).all(|_| limit.allow()));
        assert!(!limit.allow(), "burst spent");
        tokio::time::advance(Duration::from_millis(340)).await;
        assert!(limit.allow(), "one token back after a third of a second");
        assert!(!limit.allow());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| limit.allow()).count(),
            3,
            "bursts never exceed the rate"
        );
    }
}
