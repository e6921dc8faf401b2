//! One player of a shared upstream: frames from its [`Subscription`] out
//! to its socket, in its protocol's framing ([`Encode`]).
//!
//! A poll loop in the player's own task, like the transparent relay's:
//! frames are pulled only when everything before them was written, so
//! what a player holds is at most one batch of small headers and handles
//! on frames the hub already has, never a copy of the stream (only
//! payloads of a few hundred bytes go in with their headers). A player
//! whose socket cannot take what is queued while the stream goes on for
//! `edge.player_timeout` (stream time) is disconnected; one that lags
//! skips frames in the ring ([`super::ring`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus::IntCounter;
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use super::hub::{EndReason, Pull, Subscription};
use super::ring::Frame;

/// Most slices handed to one vectored write (the kernel takes 1024).
const MAX_SLICES: usize = 256;

/// Fewest payload bytes a player pulls at once. What it pulls are handles
/// on frames the ring holds anyway, so a large pull costs no memory and
/// lets a batch an origin wrote at once (SRS merges 350 ms of frames for
/// its players) reach the player in one write.
const MIN_PULL_BYTES: usize = 512 * 1024;

/// Bytes queued for one player, as handles on shared buffers.
#[derive(Default)]
pub struct Outbox {
    slices: VecDeque<Bytes>,
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.slices.push_back(bytes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Everything queued, in order.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.slices.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.slices.front_mut().expect("written bytes were queued");
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.slices.pop_front();
        }
    }
}

/// A protocol's framing of frames.
pub trait Encode {
    /// Appends `frames` (each with the timestamp this player sees) to
    /// `out`; returns the stream payload bytes among them, for counting.
    fn encode(&mut self, frames: &[(u32, Frame)], out: &mut Outbox) -> u64;
    /// What ends the response when the origin ended the stream.
    fn finish(&mut self, out: &mut Outbox);
}

/// Why a player's relay ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("{}", .0.as_str())]
    Hub(EndReason),
    #[error("player connection failed: {0}")]
    Client(io::Error),
    #[error("player closed the connection")]
    ClientClosed,
    #[error("player could not take its frames for {0} ms; disconnected")]
    TooSlow(u64),
}

impl End {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            End::Hub(reason) => reason.label(),
            End::Client(_) => "client_error",
            End::ClientClosed => "client_closed",
            End::TooSlow(_) => "too_slow",
        }
    }

    /// Ends that are part of a stream's life, not failures.
    pub fn is_normal(&self) -> bool {
        match self {
            End::Hub(_) | End::ClientClosed => true,
            End::Client(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            End::TooSlow(_) => false,
        }
    }
}

/// The relay of one player.
pub struct Pump<W, E> {
    pub writer: W,
    sub: Subscription,
    encoder: E,
    outbox: Outbox,
    /// Most payload bytes pulled at once.
    batch: usize,
    /// `edge.player_timeout` in ms of stream time.
    timeout_ms: u64,
    /// The stream clock when the socket last stopped taking bytes.
    stuck_at: Option<u64>,
    /// After the origin ended the stream: until when the player may take
    /// the rest.
    drain: Option<Pin<Box<Sleep>>>,
    counter: IntCounter,
    unflushed: u64,
    /// Payload bytes this player was sent.
    pub total: u64,
    /// The end of the response is queued.
    finished: bool,
}

/// Counts reach the shared counter at least every this many bytes.
const FLUSH_BYTES: u64 = 4 * 1024 * 1024;

impl<W: AsyncWrite + Unpin, E: Encode> Pump<W, E> {
    /// `first` goes out before any frame (a response head).
    pub fn new(
        writer: W,
        sub: Subscription,
        encoder: E,
        first: Bytes,
        batch: usize,
        timeout_ms: u64,
        counter: IntCounter,
    ) -> Self {
        let mut outbox = Outbox::default();
        outbox.push(first);
        Self {
            writer,
            sub,
            encoder,
            outbox,
            batch: batch.max(MIN_PULL_BYTES),
            timeout_ms,
            stuck_at: None,
            drain: None,
            counter,
            unflushed: 0,
            total: 0,
            finished: false,
        }
    }

    /// Queues bytes of the player's own protocol (a reply to something its
    /// client sent) after the frames already queued; they go out on the
    /// next [`Pump::poll_play`].
    pub fn queue(&mut self, put: impl FnOnce(&mut E, &mut Outbox)) {
        put(&mut self.encoder, &mut self.outbox);
    }

    /// Buffers queued and not yet written.
    pub fn queued(&self) -> usize {
        self.outbox.slices.len()
    }

    fn flush_count(&mut self) {
        if self.unflushed > 0 {
            self.counter.inc_by(self.unflushed);
            self.unflushed = 0;
        }
    }

    /// Writes what is queued; `Ready(Ok)` once it all went.
    fn poll_write_out(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while !self.outbox.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .outbox
                .slices
                .iter()
                .take(MAX_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            match Pin::new(&mut self.writer).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.outbox.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Relays until the hub ends, the player goes or falls too far
    /// behind. `Pending` means it waits for the socket or for frames.
    pub fn poll_play(&mut self, cx: &mut TaskContext<'_>) -> Poll<End> {
        loop {
            match self.poll_write_out(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(End::Client(e)),
                Poll::Pending => {
                    // Woken by the socket, and by the hub on new frames so
                    // the time it has been stuck is measured in the stream.
                    let (clock, ended) = self.sub.watch(cx);
                    match ended {
                        // The stream is over but this player has not had
                        // all of it: it gets the timeout, in wall time now
                        // that the stream's clock stopped, to take the rest.
                        Some(EndReason::Done) => {
                            let timeout = Duration::from_millis(self.timeout_ms);
                            let drain = self.drain.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                            if drain.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(End::TooSlow(self.timeout_ms));
                            }
                            self.flush_count();
                            return Poll::Pending;
                        }
                        // Nothing more comes; what it cannot take now it
                        // will not get.
                        Some(reason) => return Poll::Ready(End::Hub(reason)),
                        None => {}
                    }
                    let since = *self.stuck_at.get_or_insert(clock);
                    // A hub that lost its origin starts a fresh ring (clock
                    // 0) before its phase says so: not time going back.
                    let stuck = clock.saturating_sub(since);
                    if stuck > self.timeout_ms {
                        return Poll::Ready(End::TooSlow(stuck));
                    }
                    self.flush_count();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => self.stuck_at = None,
            }
            match self.sub.poll_pull(cx, self.batch) {
                Poll::Ready(Pull::Frames(frames)) => {
                    let n = self.encoder.encode(&frames, &mut self.outbox);
                    self.unflushed += n;
                    self.total += n;
                    if self.unflushed >= FLUSH_BYTES {
                        self.flush_count();
                    }
                }
                Poll::Ready(Pull::Ended(reason)) => {
                    if reason == EndReason::Done && !self.outbox_finished() {
                        continue;
                    }
                    return Poll::Ready(End::Hub(reason));
                }
                Poll::Pending => {
                    self.flush_count();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Queues the end of the response once; whether it was queued before.
    fn outbox_finished(&mut self) -> bool {
        if self.finished {
            return true;
        }
        self.finished = true;
        self.encoder.finish(&mut self.outbox);
        self.outbox.is_empty()
    }
}

impl<W, E> Drop for Pump<W, E> {
    fn drop(&mut self) {
        if self.unflushed > 0 {
            self.counter.inc_by(self.unflushed);
        }
    }
}
