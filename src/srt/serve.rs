//! The SRT port's receive loop: every datagram from every client comes
//! through here.
//!
//! * Handshakes: an induction is answered at once with a SYN cookie and
//!   nothing is kept; a conclusion with the right cookie for its source
//!   address is checked (version, stream id) and becomes a connection task
//!   ([`super::session`]); a retransmitted conclusion gets the same answer
//!   again, or nothing while its origin handshake is still running.
//! * Everything else is routed by (client address, destination socket id)
//!   to its connection's origin socket, or dropped.
//!
//! Nothing here waits on an origin or the store: one slow origin delays
//! only the client that asked for it. Bad datagrams are dropped one by one
//! with a counter (`srs_proxy_srt_dropped_total`) and a debug log line;
//! a client whose cookie checked out gets a handshake rejection instead.
//!
//! Draining stops new connections (handshakes are rejected with SRT's
//! "listener closing" reason) and keeps relaying for open ones; the loop
//! returns, closing the port, once the last one has ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cookie::{self, CookieJar};
use super::handshake::{Handshake, RequestType};
use super::packet::{control_type, Header};
use super::relay::Link;
use super::session::{self, Event, Request};
use super::{stream_id, Settings, SrtError, MAX_DATAGRAM};
use crate::context::Context;

/// A client connection: its address and its own socket id.
type ClientSocket = (SocketAddr, u32);

/// Serves SRT on `socket` until draining has started and the last
/// connection has ended.
pub async fn run(socket: UdpSocket, ctx: Context) {
    let settings = Settings::from_context(&ctx);
    let port = Arc::new(socket);
    let (events, mut received_events) = mpsc::unbounded_channel();
    let mut demux = Demux {
        port: port.clone(),
        ctx: ctx.clone(),
        settings,
        events,
        tracker: TaskTracker::new(),
        cookies: CookieJar::new(),
        handshakes: HashMap::new(),
        routes: HashMap::new(),
        draining: false,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut rotate = tokio::time::interval_at(Instant::now() + cookie::ROTATION, cookie::ROTATION);
    loop {
        if demux.draining && demux.handshakes.is_empty() {
            break;
        }
        tokio::select! {
            received = port.recv_from(&mut buf) => match received {
                Ok((n, peer)) if n > MAX_DATAGRAM => {
                    demux.dropped("too_long", peer, "datagram longer than the proxy relays");
                }
                Ok((n, peer)) => demux.datagram(&buf[..n], peer),
                // An ICMP error for an earlier send; nothing to do here.
                Err(e) => tracing::debug!(error = %e, "SRT port receive error"),
            },
            Some(event) = received_events.recv() => demux.event(event),
            _ = rotate.tick() => demux.cookies.rotate(),
            _ = ctx.shutdown.draining(), if !demux.draining => {
                tracing::info!(open = demux.handshakes.len(), "SRT: draining, no new connections");
                demux.draining = true;
            }
        }
    }
    demux.tracker.close();
    demux.tracker.wait().await;
}

/// The loop's state: the routing tables and what it needs to start
/// connections.
struct Demux {
    port: Arc<UdpSocket>,
    ctx: Context,
    settings: Settings,
    /// Handed to every connection task, which reports through it.
    events: mpsc::UnboundedSender<Event>,
    tracker: TaskTracker,
    cookies: CookieJar,
    /// Every connection from a valid conclusion until it ends: `None`
    /// while its origin handshake runs, then the answer the client got,
    /// resent when the client repeats its conclusion.
    handshakes: HashMap<ClientSocket, Option<Vec<u8>>>,
    /// Established connections by (client address, origin socket id): the
    /// destination socket id of every packet the client sends.
    routes: HashMap<ClientSocket, Arc<Link>>,
    draining: bool,
}

impl Demux {
    fn datagram(&mut self, datagram: &[u8], peer: SocketAddr) {
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(e) => return self.dropped("short", peer, &e.to_string()),
        };
        if header.is_control(control_type::HANDSHAKE) {
            return self.handshake(datagram, peer);
        }
        match self.routes.get(&(peer, header.dest_socket)) {
            Some(link) => {
                if !link.from_client(datagram, &header) {
                    self.ctx
                        .metrics
                        .srt_dropped_total
                        .with_label_values(&["send_failed"])
                        .inc();
                }
            }
            None => self.dropped(
                "unknown_socket",
                peer,
                &format!("{} for socket {:#010x}", header.kind, header.dest_socket),
            ),
        }
    }

    fn handshake(&mut self, datagram: &[u8], peer: SocketAddr) {
        let hs = match Handshake::parse(datagram) {
            Ok(hs) => hs,
            Err(e) => return self.dropped("bad_handshake", peer, &e.to_string()),
        };
        match hs.request {
            RequestType::Induction => {
                if self.draining {
                    return self.reject(&hs, peer, SrtError::Draining);
                }
                let answer = hs.induction_answer(self.cookies.issue(peer), peer);
                self.ctx
                    .metrics
                    .srt_handshakes_total
                    .with_label_values(&["induction"])
                    .inc();
                let _ = self.port.try_send_to(&answer.encode(), peer);
            }
            RequestType::Conclusion => self.conclusion(datagram, hs, peer),
            _ => self.dropped("unsupported_handshake", peer, &format!("{:?}", hs.request)),
        }
    }

    fn conclusion(&mut self, datagram: &[u8], hs: Handshake, peer: SocketAddr) {
        let id = (peer, hs.socket_id);
        if let Some(state) = self.handshakes.get(&id) {
            // A retransmission: the same answer again, or patience.
            if let Some(answer) = state {
                let _ = self.port.try_send_to(answer, peer);
            }
            self.ctx
                .metrics
                .srt_handshakes_total
                .with_label_values(&["retransmitted"])
                .inc();
            return;
        }
        // Never answered: an unverified source address may be spoofed.
        if !self.cookies.verify(peer, hs.cookie) {
            return self.dropped("bad_cookie", peer, "conclusion without a cookie issued to its address");
        }
        let stream = match self.check(&hs) {
            Ok(stream) => stream,
            Err(e) => return self.reject(&hs, peer, e),
        };
        let span = tracing::info_span!(
            "srt",
            %peer,
            role = stream.role.as_str(),
            stream = %stream.key,
            origin = tracing::field::Empty,
        );
        tracing::debug!(parent: &span, params = ?stream.params, "SRT conclusion");
        self.handshakes.insert(id, None);
        let request = Request {
            client: peer,
            handshake: hs,
            conclusion: datagram.to_vec(),
            stream,
        };
        let task = session::run(
            self.ctx.clone(),
            self.settings.clone(),
            self.port.clone(),
            request,
            self.events.clone(),
        );
        self.tracker.spawn(task.instrument(span));
    }

    /// Whether a cookie-checked conclusion may become a connection.
    fn check(&self, hs: &Handshake) -> Result<stream_id::StreamRequest, SrtError> {
        if self.draining {
            return Err(SrtError::Draining);
        }
        if hs.version < 5 {
            return Err(SrtError::Version(hs.version));
        }
        let limit = self.settings.max_connections;
        if limit > 0 && self.handshakes.len() >= limit {
            return Err(SrtError::Full(limit));
        }
        hs.srt_request().map_err(SrtError::Handshake)?;
        hs.key_material().map_err(SrtError::Handshake)?;
        let sid = hs
            .stream_id()
            .map_err(SrtError::Handshake)?
            .ok_or(SrtError::NoStreamId)?;
        stream_id::parse(&sid).map_err(SrtError::StreamId)
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Established { link, answer, routed } => {
                let route = (link.client, link.origin_socket);
                if self.routes.contains_key(&route) {
                    let _ = routed.send(false);
                    return;
                }
                let _ = self.port.try_send_to(&answer, link.client);
                self.handshakes.insert((link.client, link.client_socket), Some(answer));
                self.routes.insert(route, link);
                let _ = routed.send(true);
            }
            Event::Ended {
                client,
                client_socket,
                origin_socket,
            } => {
                self.handshakes.remove(&(client, client_socket));
                if let Some(origin_socket) = origin_socket {
                    self.routes.remove(&(client, origin_socket));
                }
            }
        }
    }

    /// Rejects a request whose sender is verified (a conclusion with its
    /// cookie) or that costs nothing to answer (an induction while draining).
    fn reject(&self, hs: &Handshake, peer: SocketAddr, error: SrtError) {
        let reason = error.reject_reason();
        tracing::info!(%peer, error = %error, %reason, "refusing SRT client");
        self.ctx
            .metrics
            .srt_handshakes_total
            .with_label_values(&[reason.name()])
            .inc();
        let _ = self.port.try_send_to(&hs.rejection(reason, peer).encode(), peer);
    }

    fn dropped(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        tracing::debug!(%peer, reason, detail, "SRT datagram dropped");
        self.ctx.metrics.srt_dropped_total.with_label_values(&[reason]).inc();
    }
}
