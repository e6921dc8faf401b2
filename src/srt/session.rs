//! One SRT connection after a valid conclusion: claim the stream, shake
//! hands with the origin, relay, end.
//!
//! Each connection runs in a task of its own, so an origin that is slow to
//! answer (or never answers) delays only its own client; the receive loop
//! of the SRT port keeps serving everyone else. The task tells the loop
//! about its progress with [`Event`]s: the loop owns the routing tables
//! and is the only one that changes them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::handshake::{self, Handshake};
use super::packet;
use super::relay::{self, Counters, Link};
use super::stream_id::{Role, StreamRequest};
use super::upstream::{self, ConnectError};
use super::{Settings, SrtError};
use crate::claim::StreamLease;
use crate::context::Context;
use crate::error::{Failure, Fault};
use crate::origin::{Origin, Protocol};

/// What a connection task tells the receive loop.
pub enum Event {
    /// The origin accepted: route `link` and send the client `answer`,
    /// then say on `routed` whether the task may start relaying (false
    /// when the client already has a connection with that origin socket
    /// id, or the loop is gone).
    Established {
        link: Arc<Link>,
        answer: Vec<u8>,
        routed: oneshot::Sender<bool>,
    },
    /// The connection is over (refused, failed or ended): forget it.
    Ended {
        client: SocketAddr,
        client_socket: u32,
        /// Set once it was routed.
        origin_socket: Option<u32>,
    },
}

/// What a new connection starts from: the client's conclusion, checked.
pub struct Request {
    pub client: SocketAddr,
    pub handshake: Handshake,
    /// The conclusion as the client sent it, forwarded to the origin.
    pub conclusion: Vec<u8>,
    pub stream: StreamRequest,
}

/// Sends [`Event::Ended`] however the task ends (returns, panics or is
/// cut at force-quit), so the loop's tables never keep a dead connection.
struct EndGuard {
    events: mpsc::UnboundedSender<Event>,
    client: SocketAddr,
    client_socket: u32,
    origin_socket: Option<u32>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Ended {
            client: self.client,
            client_socket: self.client_socket,
            origin_socket: self.origin_socket,
        });
    }
}

/// Runs one connection to its end.
pub async fn run(
    ctx: Context,
    settings: Settings,
    port: Arc<UdpSocket>,
    request: Request,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut guard = EndGuard {
        events: events.clone(),
        client: request.client,
        client_socket: request.handshake.socket_id,
        origin_socket: None,
    };
    let _connection = ctx.metrics.connection("srt", request.stream.role.as_str());
    // Until the relay runs, no lease watches for force-quit: cut here.
    let established = tokio::select! {
        established = establish(&ctx, &settings, &request, &events) => established,
        _ = ctx.shutdown.aborted() => Err(SrtError::Aborted),
    };
    let (lease, link) = match established {
        Ok(pair) => pair,
        Err(e) => return refuse(&ctx, &port, &request, e).await,
    };
    guard.origin_socket = Some(link.origin_socket);
    ctx.metrics.srt_handshakes_total.with_label_values(&["accepted"]).inc();
    tracing::info!(origin_socket = format_args!("{:#010x}", link.origin_socket), "relaying");
    let counters = Counters {
        packets_in: ctx.metrics.srt_packets_total.with_label_values(&["in"]),
        bytes_in: ctx.metrics.bytes_relayed_total.with_label_values(&["srt", "in"]),
        packets_out: ctx.metrics.srt_packets_total.with_label_values(&["out"]),
        bytes_out: ctx.metrics.bytes_relayed_total.with_label_values(&["srt", "out"]),
    };
    let end = relay::run(
        &link,
        &port,
        settings.idle_timeout,
        &counters,
        lease.lost(),
        ctx.shutdown.aborted(),
    )
    .await;
    ctx.metrics.srt_ended_total.with_label_values(&[end.as_str()]).inc();
    tracing::info!(reason = %end, "relay ended");
}

/// Claim → origin handshake → routed, with the client answered.
async fn establish(
    ctx: &Context,
    settings: &Settings,
    request: &Request,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(StreamLease, Arc<Link>), SrtError> {
    let key = &request.stream.key;
    // An origin that does not answer is reported and the handshake tried
    // once on another; a failed handshake undoes a mapping it created (a
    // publisher the origin refused must not take the stream from the one
    // publishing it).
    let (mut lease, link) = ctx
        .claim_with(key, Protocol::Srt, |origin| async move {
            connect(settings, request, events, &origin).await
        })
        .await?;
    if request.stream.role == Role::Publisher {
        // The publisher is the stream: when it leaves, the mapping goes.
        lease.release_on_drop(ctx);
    }
    Ok((lease, link))
}

/// The origin handshake for a claimed stream, then routing.
async fn connect(
    settings: &Settings,
    request: &Request,
    events: &mpsc::UnboundedSender<Event>,
    origin: &Origin,
) -> Result<Arc<Link>, SrtError> {
    let authority = origin
        .authority(Protocol::Srt)
        .ok_or_else(|| SrtError::NoSrtPort(origin.id.to_string()))?;
    let addr = resolve(&authority).await?;
    let up = upstream::connect(
        addr,
        &request.handshake,
        &request.conclusion,
        settings.handshake_timeout,
    )
    .await
    .map_err(SrtError::Origin)?;

    // The origin's answer goes to the client with the client's own cookie
    // and address; socket ids, latencies and key material pass as sent.
    let mut answer = up.answer;
    handshake::set_cookie(&mut answer, request.handshake.cookie);
    handshake::set_peer_address(&mut answer, request.client.ip());
    let link = Arc::new(Link::new(
        request.client,
        request.handshake.socket_id,
        up.origin_socket,
        up.socket,
    ));
    let (routed, is_routed) = oneshot::channel();
    let _ = events.send(Event::Established {
        link: link.clone(),
        answer,
        routed,
    });
    if !is_routed.await.unwrap_or(false) {
        let _ = link.upstream.send(&packet::shutdown(link.origin_socket)).await;
        return Err(SrtError::DuplicateSocket(link.origin_socket));
    }
    Ok(link)
}

/// Resolves the origin's SRT authority (static origins may be DNS names).
async fn resolve(authority: &str) -> Result<SocketAddr, SrtError> {
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| SrtError::Resolve(authority.to_string(), e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| SrtError::Resolve(authority.to_string(), "no address".into()))
}

/// Tells the client why, in SRT's terms: the origin's own rejection when
/// the origin refused, else a rejection with the proxy's reason.
async fn refuse(ctx: &Context, port: &UdpSocket, request: &Request, error: SrtError) {
    let reason = error.reject_reason();
    ctx.metrics
        .srt_handshakes_total
        .with_label_values(&[reason.name()])
        .inc();
    if error.fault() != Fault::Client {
        tracing::warn!(error = %error, %reason, "refusing SRT client");
    } else {
        tracing::info!(error = %error, %reason, "refusing SRT client");
    }
    let reply = match &error {
        SrtError::Origin(ConnectError::Rejected { answer, .. }) => {
            let mut answer = answer.clone();
            handshake::set_cookie(&mut answer, request.handshake.cookie);
            handshake::set_peer_address(&mut answer, request.client.ip());
            answer
        }
        _ => request.handshake.rejection(reason, request.client).encode(),
    };
    let _ = port.send_to(&reply, request.client).await;
}
