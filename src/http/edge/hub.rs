//! One shared upstream: the origin connection of a stream on this replica
//! and the players it feeds.
//!
//! The first player of a stream creates the [`Hub`]; its task claims the
//! stream (one [`StreamLease`] for every player), sends the first player's
//! request to the origin and, while the origin answers, reads the body,
//! cuts it into frames (FLV tags or TS units, [`super::format`]) and
//! appends them to the hub's [`Ring`], waking the players that wait.
//! Players that arrive while it starts wait for the same answer: the
//! origin is asked once.
//!
//! The hub ends when the origin ends the body, fails, or is gone (the
//! lease), and a [`linger`](crate::config::EdgeConfig::linger) after its
//! last player left. Players see the end through their [`Subscription`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::format::{CutError, Cutter, Format};
use super::ring::{Cursor, Frame, Limits, Ring};
use super::Edge;
use crate::claim::StreamLease;
use crate::context::Context;
use crate::error::Fault;
use crate::http::forward::{self, read_bounded, response_headers};
use crate::http::{full, Body, HttpError};
use crate::origin::Protocol;
use crate::stream_key::StreamKey;

/// What the origin is asked for: the first player's request.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Path and query, as [`forward::origin_target`] builds them.
    pub target: String,
    /// The player's headers (`Host` names the vhost).
    pub headers: HeaderMap,
    /// The player, for `X-Forwarded-For`.
    pub peer: SocketAddr,
}

/// The origin's answer to a hub that is live.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// Its headers, minus hop-by-hop and length: every player gets them.
    pub headers: HeaderMap,
    /// The flags of the origin's FLV file header (audio 4, video 1); 0
    /// for TS.
    pub flv_flags: u8,
}

/// Why a hub could not start.
#[derive(Debug, Clone)]
pub enum StartError {
    /// No origin, or the origin could not be reached or failed before it
    /// answered: what the player would have been told.
    Refused(Refusal),
    /// The origin answered without the stream (404, …): its answer,
    /// replayed to every player that waited for it.
    Answered(Arc<Answer>),
}

/// An [`HttpError`] that can be handed to every waiting player.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    pub fault: Fault,
    pub detail: Option<String>,
}

impl From<HttpError> for Refusal {
    fn from(e: HttpError) -> Self {
        Self {
            status: e.status,
            reason: e.reason,
            fault: e.fault,
            detail: e.detail,
        }
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        HttpError {
            status: r.status,
            reason: r.reason,
            fault: r.fault,
            detail: r.detail,
            retry_elsewhere: false,
        }
    }
}

/// An origin's answer that is not the stream, small enough to keep.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn to_response(&self) -> Response<Body> {
        let mut resp = Response::new(full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, self.body.len().into());
        resp
    }
}

/// The most of an origin's refusal body that is kept and replayed.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a hub ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The origin ended the body: players finish what they can write.
    Done,
    /// The origin is gone, the stream moved, or the proxy is aborting:
    /// players end at once.
    Lost,
    /// The origin failed or sent what is not FLV (TS): players end at
    /// once.
    Failed,
    /// No player for the linger time.
    Idle,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "origin ended the stream",
            Self::Lost => "origin is gone or the proxy is shutting down",
            Self::Failed => "origin failed",
            Self::Idle => "no players",
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Done => "origin_ended",
            Self::Lost => "origin_lost",
            Self::Failed => "origin_failed",
            Self::Idle => "idle",
        }
    }
}

enum Phase {
    Starting,
    Live,
    Failed(StartError),
    Ended(EndReason),
}

/// A shared upstream.
pub struct Hub {
    pub key: StreamKey,
    pub format: Format,
    state: Mutex<State>,
    /// Set once the hub is live, failed or ended.
    started: watch::Sender<bool>,
    /// Wakes the hub's task when its last player leaves.
    idle: Notify,
    /// `edge_buffer_bytes`: what the ring holds is counted there until
    /// the hub goes.
    buffered: IntGauge,
    /// Where the ring's arrival clock (ms) starts.
    epoch: Instant,
}

struct State {
    phase: Phase,
    /// The origin's answer, once the hub is live.
    head: Option<Arc<Head>>,
    ring: Ring,
    /// Players subscribed or about to be (waiting for the start): while
    /// there are any, the hub does not end for want of players.
    players: usize,
    /// The most players there were at once.
    peak: usize,
    /// A waker slot per subscribed player: woken on new frames and at the
    /// end.
    wakers: Vec<Option<Waker>>,
    /// Slots of players that left, to reuse.
    free: Vec<usize>,
}

impl Hub {
    fn new(key: StreamKey, format: Format, limits: Limits, buffered: IntGauge) -> Self {
        Self {
            key,
            format,
            state: Mutex::new(State {
                phase: Phase::Starting,
                head: None,
                ring: Ring::new(limits),
                players: 0,
                peak: 0,
                wakers: Vec::new(),
                free: Vec::new(),
            }),
            started: watch::channel(false).0,
            idle: Notify::new(),
            buffered,
            epoch: Instant::now(),
        }
    }

    /// The ring's arrival clock: ms since the hub was made.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a player that is about to subscribe; false when the hub is
    /// over and a new one must start.
    fn enter(&self) -> bool {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Failed(_) | Phase::Ended(_)) {
            return false;
        }
        st.players += 1;
        st.peak = st.peak.max(st.players);
        true
    }

    /// Players subscribed or about to be.
    fn players(&self) -> usize {
        self.lock().players
    }

    fn set_phase(&self, phase: Phase) {
        let wakers = {
            let mut st = self.lock();
            st.phase = phase;
            take_wakers(&mut st)
        };
        self.started.send_replace(true);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits until the hub is live (or failed, or over).
    async fn started(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Ends the hub if it has no player, in one step with the check so
    /// that no player joins a hub that is ending.
    fn end_if_idle(&self) -> bool {
        let mut st = self.lock();
        if st.players > 0 {
            return false;
        }
        st.phase = Phase::Ended(EndReason::Idle);
        true
    }

    /// A player leaves (`slot` once it had subscribed).
    fn leave(&self, slot: Option<usize>) {
        let mut st = self.lock();
        st.players -= 1;
        if let Some(slot) = slot {
            st.wakers[slot] = None;
            st.free.push(slot);
        }
        if st.players == 0 {
            drop(st);
            self.idle.notify_one();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.buffered.sub(self.lock().ring.held_bytes() as i64);
    }
}

fn take_wakers(st: &mut State) -> Vec<Waker> {
    st.wakers.iter_mut().filter_map(Option::take).collect()
}

/// A player counted by a hub while it waits for the hub to start; leaves
/// the hub if dropped before it subscribed (the player went away).
struct Joining {
    hub: Option<Arc<Hub>>,
}

impl Joining {
    /// Subscribes, once the hub started: a live hub, or one whose origin
    /// already ended the stream (the player gets what is kept, then the
    /// end, as a transparent relay of a short stream would).
    fn subscribe(mut self, ctx: &Context, protocol: &'static str) -> Result<Subscription, StartError> {
        let hub = self.hub.as_ref().expect("joining a hub");
        let mut st = hub.lock();
        let head = match (&st.phase, &st.head) {
            (Phase::Failed(e), _) => return Err(e.clone()),
            (Phase::Live | Phase::Ended(EndReason::Done), Some(head)) => head.clone(),
            (Phase::Ended(reason), _) => {
                return Err(StartError::Refused(Refusal::from(HttpError::origin(
                    StatusCode::BAD_GATEWAY,
                    "the stream's origin failed or went away",
                    reason.as_str(),
                ))))
            }
            // Not after `started`; answered rather than trusted.
            (Phase::Starting | Phase::Live, _) => {
                return Err(StartError::Refused(Refusal::from(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the stream's upstream did not start",
                ))))
            }
        };
        let (prefix, cursor) = st.ring.join();
        let slot = match st.free.pop() {
            Some(slot) => slot,
            None => {
                st.wakers.push(None);
                st.wakers.len() - 1
            }
        };
        drop(st);
        let hub = self.hub.take().expect("joining a hub");
        let metrics = &ctx.metrics;
        let players = metrics.edge_players_active.with_label_values(&[protocol]);
        players.inc();
        Ok(Subscription {
            hub,
            slot,
            cursor,
            prefix: Some(prefix),
            head,
            players,
            dropped: metrics.edge_frames_dropped_total.with_label_values(&[protocol]),
        })
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.leave(None);
        }
    }
}

/// A player's place in a hub. Dropping it leaves the hub.
pub struct Subscription {
    hub: Arc<Hub>,
    slot: usize,
    cursor: Cursor,
    /// Metadata and decoder configurations, sent before any frame.
    prefix: Option<Vec<Frame>>,
    /// The origin's answer.
    pub head: Arc<Head>,
    /// `edge_players_active` of this player's protocol.
    players: IntGauge,
    /// `edge_frames_dropped_total` of this player's protocol.
    dropped: IntCounter,
}

/// What a player gets next.
pub enum Pull {
    /// Frames with the timestamp this player sees for each.
    Frames(Vec<(u32, Frame)>),
    /// The hub is over and the player has everything it will get.
    Ended(EndReason),
}

impl Subscription {
    /// The next frames (about `max_bytes`), or the end; `Pending` (with
    /// this task woken on the next frames) when it has everything so far.
    pub fn poll_pull(&mut self, cx: &mut TaskContext<'_>, max_bytes: usize) -> Poll<Pull> {
        if let Some(prefix) = self.prefix.take().filter(|p| !p.is_empty()) {
            return Poll::Ready(Pull::Frames(prefix.into_iter().map(|f| (0, f)).collect()));
        }
        let mut st = self.hub.lock();
        if let Phase::Ended(reason @ (EndReason::Lost | EndReason::Failed)) = st.phase {
            return Poll::Ready(Pull::Ended(reason));
        }
        if st.ring.has_more(&self.cursor) {
            let pulled = st.ring.pull(&mut self.cursor, max_bytes, self.hub.now_ms());
            drop(st);
            if pulled.dropped > 0 {
                self.dropped.inc_by(pulled.dropped);
            }
            let cursor = &self.cursor;
            let frames = pulled.frames.into_iter().map(|f| (cursor.timestamp(&f), f)).collect();
            return Poll::Ready(Pull::Frames(frames));
        }
        if let Phase::Ended(reason) = st.phase {
            return Poll::Ready(Pull::Ended(reason));
        }
        st.wakers[self.slot] = Some(cx.waker().clone());
        Poll::Pending
    }

    /// For a player that cannot write: the stream clock now and whether
    /// the hub ended, with this task woken on the next frames.
    pub fn watch(&self, cx: &mut TaskContext<'_>) -> (u64, Option<EndReason>) {
        let mut st = self.hub.lock();
        let ended = match st.phase {
            Phase::Ended(reason) => Some(reason),
            _ => None,
        };
        st.wakers[self.slot] = Some(cx.waker().clone());
        (st.ring.clock(), ended)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.players.dec();
        self.hub.leave(Some(self.slot));
    }
}

impl Edge {
    /// Subscribes a player to the stream's FLV hub (its HTTP-FLV and RTMP
    /// players), starting one (with `open`) when there is none.
    pub async fn join(
        &self,
        ctx: &Context,
        key: &StreamKey,
        open: &OpenRequest,
        protocol: &'static str,
    ) -> Result<Subscription, StartError> {
        self.join_format(ctx, key, Format::Flv, open, protocol).await
    }

    /// Subscribes a player to the stream's hub of `format` (the FLV and
    /// the TS upstream of a stream are different hubs), starting one (with
    /// `open`) when there is none.
    pub async fn join_format(
        &self,
        ctx: &Context,
        key: &StreamKey,
        format: Format,
        open: &OpenRequest,
        protocol: &'static str,
    ) -> Result<Subscription, StartError> {
        let joining = self.hub(ctx, key, format, open);
        joining.hub.as_ref().expect("joining a hub").started().await;
        joining.subscribe(ctx, protocol)
    }

    /// The live or starting hub of `key`, or a new one, with the player
    /// counted in it.
    fn hub(&self, ctx: &Context, key: &StreamKey, format: Format, open: &OpenRequest) -> Joining {
        let mut hubs = self.hubs();
        let id = (key.clone(), format);
        if let Some(hub) = hubs.get(&id).filter(|h| h.enter()) {
            return Joining { hub: Some(hub.clone()) };
        }
        let buffered = ctx.metrics.edge_buffer_bytes.clone();
        let hub = Arc::new(Hub::new(key.clone(), format, self.limits(), buffered));
        hub.enter();
        hubs.insert(id, hub.clone());
        tokio::spawn(run(hub.clone(), ctx.clone(), self.clone(), open.clone()));
        Joining { hub: Some(hub) }
    }

    /// Drops `hub` from the table if it is still the one there.
    fn forget(&self, hub: &Arc<Hub>) {
        let mut hubs = self.hubs();
        let id = (hub.key.clone(), hub.format);
        if hubs.get(&id).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&id);
        }
    }
}

/// The hub's task: start, relay, end.
async fn run(hub: Arc<Hub>, ctx: Context, edge: Edge, open: OpenRequest) {
    let max_tag = u32::try_from(ctx.config.rtmp_max_message_bytes).unwrap_or(u32::MAX);
    let mut cutter = Cutter::new(hub.format, max_tag);
    let mut buf = BytesMut::new();
    let (lease, head, body) = match start(&hub, &ctx, &open, &mut cutter, &mut buf).await {
        Ok(started) => started,
        Err(e) => {
            tracing::info!(stream = %hub.key, "shared upstream did not start");
            hub.set_phase(Phase::Failed(e));
            edge.forget(&hub);
            return;
        }
    };
    let upstreams = &ctx.metrics.edge_upstreams_active;
    upstreams.inc();
    tracing::info!(stream = %hub.key, origin = %lease.origin().id, "shared upstream open");
    hub.lock().head = Some(Arc::new(head));
    hub.set_phase(Phase::Live);
    let reason = relay(&hub, &ctx, &lease, body, cutter, buf).await;
    let peak = {
        let mut st = hub.lock();
        if reason != EndReason::Done {
            // Players end at once: what they have not taken goes now, not
            // when the last of them lets go of the hub.
            hub.buffered.sub(st.ring.held_bytes() as i64);
            st.ring = Ring::new(edge.limits());
        }
        st.peak
    };
    upstreams.dec();
    ctx.metrics.edge_upstream_players.observe(peak as f64);
    ctx.metrics
        .edge_upstreams_closed_total
        .with_label_values(&[reason.label()])
        .inc();
    hub.set_phase(Phase::Ended(reason));
    edge.forget(&hub);
    // The lease goes last: the mapping stays refreshed until the end.
    drop(lease);
    tracing::info!(stream = %hub.key, reason = reason.as_str(), peak_players = peak, "shared upstream closed");
}

/// Claims the stream and asks the origin for it; the lease, the answer's
/// head and its body (read up to the FLV file header, or the first TS
/// byte) when the origin has the stream.
async fn start(
    hub: &Hub,
    ctx: &Context,
    open: &OpenRequest,
    cutter: &mut Cutter,
    buf: &mut BytesMut,
) -> Result<(StreamLease, Head, Body), StartError> {
    let refused = |e: HttpError| StartError::Refused(e.into());
    // An origin that cannot be reached is reported and the stream claimed
    // elsewhere once, as for a transparent relay.
    let (lease, upstream) = ctx
        .claim_with(&hub.key, Protocol::Http, |origin| async move {
            forward::send(ctx, &origin, &Method::GET, &open.target, &open.headers, open.peer).await
        })
        .await
        .map_err(refused)?;
    let origin = lease.origin().clone();
    let status = upstream.response.status();
    if !status.is_success() {
        ctx.forget_claim(&hub.key, &origin.id, lease.outcome()).await;
        let (parts, body) = read_bounded(upstream, MAX_ANSWER_BYTES, ctx.config.origin_response_timeout)
            .await
            .map_err(refused)?;
        let mut headers = response_headers(&parts);
        headers.remove(header::CONTENT_LENGTH);
        return Err(StartError::Answered(Arc::new(Answer { status, headers, body })));
    }
    let counter = ctx.metrics.edge_upstream_bytes_total.clone();
    let (parts, mut body) = forward::relay(upstream, None, counter, None).into_parts();
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    // Players get the origin's FLV header flags (players such as flv.js
    // wait for the tracks they announce): read up to the header first. A
    // TS body is checked to be TS before players are answered.
    let wait = ctx.config.origin_response_timeout;
    let name = hub.format.name();
    let flv_flags = match tokio::time::timeout(wait, body_start(cutter, &mut body, buf)).await {
        Ok(Ok(flags)) => flags,
        Ok(Err(detail)) => {
            return Err(refused(HttpError::origin(
                StatusCode::BAD_GATEWAY,
                format!("origin {} sent no {name}", origin.id),
                detail,
            )))
        }
        Err(_) => {
            return Err(refused(HttpError::origin(
                StatusCode::GATEWAY_TIMEOUT,
                format!("origin {} sent no {name} within {wait:?}", origin.id),
                format!("no {name} start"),
            )))
        }
    };
    let head = Head {
        status,
        headers,
        flv_flags,
    };
    Ok((lease, head, body))
}

/// Reads the body up to what starts it ([`Cutter::start`]).
async fn body_start(cutter: &mut Cutter, body: &mut Body, buf: &mut BytesMut) -> Result<u8, String> {
    loop {
        if let Some(flags) = cutter.start(buf).map_err(|e| e.to_string())? {
            return Ok(flags);
        }
        match body.frame().await {
            None => return Err("the body ended before it started".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Cuts the body into frames for the ring until the hub ends.
async fn relay(
    hub: &Hub,
    ctx: &Context,
    lease: &StreamLease,
    mut body: Body,
    mut cutter: Cutter,
    mut buf: BytesMut,
) -> EndReason {
    // What came with the header.
    if let Err(e) = feed(hub, &mut cutter, &mut buf) {
        tracing::warn!(stream = %hub.key, error = %e, "origin sent a body the shared upstream cannot read; ending it");
        return EndReason::Failed;
    }
    let linger = ctx.config.edge.linger;
    let mut idle_since: Option<Instant> = None;
    let lost = lease.lost();
    tokio::pin!(lost);
    loop {
        if hub.players() == 0 {
            idle_since.get_or_insert_with(Instant::now);
        } else {
            idle_since = None;
        }
        let deadline = idle_since.map(|since| since + linger);
        tokio::select! {
            biased;
            _ = &mut lost => return EndReason::Lost,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if hub.end_if_idle() {
                    return EndReason::Idle;
                }
            }
            _ = hub.idle.notified() => {}
            frame = body.frame() => match frame {
                None => return EndReason::Done,
                Some(Err(e)) => {
                    tracing::warn!(stream = %hub.key, error = %e, "shared upstream failed");
                    return EndReason::Failed;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    if let Err(e) = feed(hub, &mut cutter, &mut buf) {
                        tracing::warn!(stream = %hub.key, error = %e, "origin sent a body the shared upstream cannot read; ending it");
                        return EndReason::Failed;
                    }
                }
            },
        }
    }
}

/// Cuts what `buf` holds into frames, appends them to the hub's ring and
/// wakes the players.
fn feed(hub: &Hub, cutter: &mut Cutter, buf: &mut BytesMut) -> Result<(), CutError> {
    let now = hub.now_ms();
    let mut st = hub.lock();
    let before = st.ring.held_bytes();
    let mut pushed = false;
    let result = cutter.cut(buf, |(time, kind, tag_type, payload)| {
        st.ring.push(now, time, kind, tag_type, payload);
        pushed = true;
    });
    let after = st.ring.held_bytes();
    let wakers = if pushed { take_wakers(&mut st) } else { Vec::new() };
    drop(st);
    hub.buffered.add(after as i64 - before as i64);
    wakers.into_iter().for_each(Waker::wake);
    let skipped = cutter.take_skipped();
    if skipped > 0 {
        tracing::warn!(stream = %hub.key, skipped, "origin's MPEG-TS lost sync; skipped to the next packet");
    }
    result
}
