//! Relaying an established SRT connection until either side ends it.
//!
//! A [`Link`] joins one client (address and socket id) to its origin
//! socket. Client → origin packets are sent by the receive loop of the SRT
//! port straight into the link's origin socket ([`Link::from_client`]);
//! origin → client packets are read by the connection's own task in
//! [`run`] and sent from the SRT port. Nothing is parsed beyond the
//! header: SRT's acknowledgements, retransmissions, key refreshes and
//! keepalives are the two peers' business.
//!
//! A connection ends on a shutdown packet from either side (passed on to
//! the other), when one side has sent nothing for the idle timeout (SRT
//! peers send a keepalive every second when they have nothing else, so a
//! silent side is gone: a killed encoder, a vanished network), when its
//! origin is gone (the stream lease is lost), and when the proxy aborts.
//! In the last three cases both peers are sent a shutdown, so neither
//! waits for its own timeout.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::packet::{self, control_type, Header};
use super::MAX_DATAGRAM;

/// One relayed connection, shared by the receive loop and its task.
pub struct Link {
    pub client: SocketAddr,
    /// The client's socket id: the destination of origin → client packets.
    pub client_socket: u32,
    /// The origin's socket id: the destination of client → origin packets,
    /// and with `client` the key the receive loop finds this link by.
    pub origin_socket: u32,
    /// Connected to the origin; this connection's alone.
    pub upstream: UdpSocket,
    /// Cancelled when the client sent a shutdown (already passed on).
    pub client_closed: CancellationToken,
    /// Set by every client packet, cleared by the idle check.
    client_seen: AtomicBool,
    /// Client → origin packets and bytes not yet added to the metrics;
    /// the task flushes them on every idle check and at the end.
    pending_in: (AtomicU64, AtomicU64),
}

impl Link {
    pub fn new(client: SocketAddr, client_socket: u32, origin_socket: u32, upstream: UdpSocket) -> Self {
        Self {
            client,
            client_socket,
            origin_socket,
            upstream,
            client_closed: CancellationToken::new(),
            client_seen: AtomicBool::new(true),
            pending_in: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// Passes one client datagram to the origin. Never waits: a full
    /// socket buffer drops the packet, which SRT recovers like any loss.
    /// Returns false when it was dropped.
    pub fn from_client(&self, datagram: &[u8], header: &Header) -> bool {
        self.client_seen.store(true, Ordering::Relaxed);
        if header.is_control(control_type::SHUTDOWN) {
            let _ = self.upstream.try_send(datagram);
            self.client_closed.cancel();
            return true;
        }
        match self.upstream.try_send(datagram) {
            Ok(_) => {
                self.pending_in.0.fetch_add(1, Ordering::Relaxed);
                self.pending_in.1.fetch_add(datagram.len() as u64, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientShutdown,
    OriginShutdown,
    /// Nothing from the client for this long.
    ClientSilent(Duration),
    /// Nothing from the origin for this long.
    OriginSilent(Duration),
    /// The origin was removed or expired, or the mapping moved.
    OriginGone,
    /// The origin's port stopped answering (ICMP unreachable).
    OriginUnreachable,
    /// Force-quit after the grace period.
    Aborted,
}

impl End {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientShutdown => "client_shutdown",
            End::OriginShutdown => "origin_shutdown",
            End::ClientSilent(_) => "client_idle",
            End::OriginSilent(_) => "origin_idle",
            End::OriginGone => "origin_gone",
            End::OriginUnreachable => "origin_unreachable",
            End::Aborted => "aborted",
        }
    }

    /// Whether the peers still need to be told (no shutdown came from
    /// either of them).
    fn tell_peers(self) -> bool {
        !matches!(self, End::ClientShutdown | End::OriginShutdown)
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientShutdown => f.write_str("client shut the connection down"),
            End::OriginShutdown => f.write_str("origin shut the connection down"),
            End::ClientSilent(d) => write!(f, "nothing from the client for {d:?}"),
            End::OriginSilent(d) => write!(f, "nothing from the origin for {d:?}"),
            End::OriginGone => f.write_str("origin gone"),
            End::OriginUnreachable => f.write_str("origin unreachable"),
            End::Aborted => f.write_str("proxy shutting down"),
        }
    }
}

/// Per-direction counters (packets, bytes) of one relay's metrics.
pub struct Counters {
    pub packets_in: IntCounter,
    pub bytes_in: IntCounter,
    pub packets_out: IntCounter,
    pub bytes_out: IntCounter,
}

/// Relays origin → client until the connection ends; `stop` resolves when
/// the origin is gone or the proxy aborts.
pub async fn run(
    link: &Link,
    port: &UdpSocket,
    idle: Duration,
    counters: &Counters,
    origin_gone: impl std::future::Future<Output = ()>,
    aborted: impl std::future::Future<Output = ()>,
) -> End {
    tokio::pin!(origin_gone, aborted);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let period = (idle / 4).max(Duration::from_millis(10));
    let mut check = tokio::time::interval_at(Instant::now() + period, period);
    let (mut client_heard, mut origin_heard) = (Instant::now(), Instant::now());
    let mut origin_seen = false;
    let (mut packets_out, mut bytes_out) = (0u64, 0u64);
    let end = loop {
        // Biased: at force-quit the lease is lost too, and the end should
        // say abort.
        tokio::select! {
            biased;
            _ = &mut aborted => break End::Aborted,
            _ = link.client_closed.cancelled() => break End::ClientShutdown,
            _ = &mut origin_gone => break End::OriginGone,
            received = link.upstream.recv(&mut buf) => {
                let n = match received {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break End::OriginUnreachable,
                    Err(e) => {
                        tracing::debug!(error = %e, "origin socket receive failed");
                        continue;
                    }
                };
                origin_seen = true;
                let datagram = &buf[..n];
                let Ok(header) = Header::parse(datagram) else { continue };
                // Too long for the buffer (so cut), or a handshake: an
                // established connection has no use for either, and an
                // origin handshake would carry the proxy's cookie.
                if n > MAX_DATAGRAM || header.is_control(control_type::HANDSHAKE) {
                    continue;
                }
                if port.send_to(datagram, link.client).await.is_ok() {
                    packets_out += 1;
                    bytes_out += n as u64;
                }
                if header.is_control(control_type::SHUTDOWN) {
                    break End::OriginShutdown;
                }
            }
            _ = check.tick() => {
                if link.client_seen.swap(false, Ordering::Relaxed) {
                    client_heard = Instant::now();
                }
                if std::mem::take(&mut origin_seen) {
                    origin_heard = Instant::now();
                }
                if client_heard.elapsed() >= idle {
                    break End::ClientSilent(idle);
                }
                if origin_heard.elapsed() >= idle {
                    break End::OriginSilent(idle);
                }
                flush(link, counters, &mut packets_out, &mut bytes_out);
            }
        }
    };
    if end.tell_peers() {
        let _ = port.send_to(&packet::shutdown(link.client_socket), link.client).await;
        let _ = link.upstream.send(&packet::shutdown(link.origin_socket)).await;
    }
    flush(link, counters, &mut packets_out, &mut bytes_out);
    end
}

fn flush(link: &Link, counters: &Counters, packets_out: &mut u64, bytes_out: &mut u64) {
    counters.packets_in.inc_by(link.pending_in.0.swap(0, Ordering::Relaxed));
    counters.bytes_in.inc_by(link.pending_in.1.swap(0, Ordering::Relaxed));
    counters.packets_out.inc_by(std::mem::take(packets_out));
    counters.bytes_out.inc_by(std::mem::take(bytes_out));
}
