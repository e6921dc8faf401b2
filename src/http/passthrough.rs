//! Live FLV/TS to HTTP/1.1 players, byte for byte.
//!
//! hyper would decode the origin's chunked body and encode it again for
//! the player, chunk by chunk, across a task boundary. Here the request to
//! the origin is written and its response head read directly; once the
//! player's response head is ready, the connection is taken from hyper
//! ([`super::serve::Detach`]) and one loop in the connection's task moves
//! the origin's bytes, framing included, to the player as they come:
//!
//! * bytes go from the origin's socket to the player's through a pipe in
//!   the kernel ([`super::pipe`], `splice(2)`), never copied into the
//!   process; with `relay_splice` off, or where the kernel refuses, reads
//!   go into a per-thread scratch buffer and straight out to the player.
//!   Either way only what the player's socket does not take at once is
//!   kept, in a buffer of the relay's own, and no more is read from the
//!   origin until it is written. A relay therefore holds at most
//!   `relay_buffer_bytes`, and nothing while the player keeps up;
//! * chunked framing is walked ([`super::framing::ChunkScanner`]), not
//!   decoded: payload bytes are counted and the last chunk ends the relay.
//!   When splicing, chunk data passes unseen; only the bytes around each
//!   chunk's framing (at most `PEEK`, 512) are looked at, with `MSG_PEEK`,
//!   before they go too;
//! * byte counts stay in the relay and reach the shared counter every few
//!   MiB, whenever the relay goes idle, and at its end;
//! * the lost-origin and abort checks are atomic loads on each wake.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::HeaderMap;
use http::response::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use prometheus::IntCounter;
use rustix::net::RecvFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::forward;
use super::framing::{self, ChunkScanner, Framing, FramingError, Head};
use super::pipe::{self, Pipe};
use super::serve::Detach;
use super::{full, Body, HttpError};
use crate::claim::StreamLease;
use crate::context::Context;
use crate::metrics::ConnectionGuard;
use crate::origin::Origin;
use crate::shutdown::CancelWatch;

/// Counts reach the shared counter at least every this many bytes.
const FLUSH_BYTES: u64 = 4 * 1024 * 1024;
/// A relay that had to keep bytes drops its own buffer after this many
/// reads in a row that the player took whole.
const RELEASE_AFTER: u8 = 4;
/// Most bytes looked at, with `MSG_PEEK`, where chunk framing comes next
/// (or is this close): a chunk-size line, or several small chunks at once.
const PEEK: usize = 512;

thread_local! {
    /// Where origin bytes land before they go out; shared by every relay
    /// on this worker thread, borrowed only between two awaits.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether a request can be answered by passing bytes through: a GET over
/// HTTP/1.1 (HTTP/1.0 cannot take chunked framing; HEAD has no body).
pub fn eligible(req: &Request<()>) -> bool {
    req.method() == Method::GET && req.version() == Version::HTTP_11
}

/// An origin's response head and the connection its body follows on.
pub struct OriginResponse {
    tcp: TcpStream,
    head: Head,
    /// Body bytes read together with the head.
    rest: BytesMut,
}

/// Sends `GET target` to `origin` on a connection of its own and reads the
/// response head.
pub async fn request(
    ctx: &Context,
    origin: &Origin,
    target: &str,
    client_headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<OriginResponse, HttpError> {
    forward::check_target(target)?;
    let addr = forward::http_addr(origin)?;
    let authority = addr.authority();
    let mut tcp = forward::connect(ctx, origin, &authority).await?;
    // The relay ends with the body; the connection is never reused.
    let mut out = Vec::with_capacity(512);
    super::exchange::request_head(&mut out, &Method::GET, target, client_headers, &addr, peer, true);

    // An origin that fails while the request is written may go elsewhere
    // (it did not even take it); one that closes after reading it may have
    // refused this request (an SRS hook denying a token does that), which
    // says nothing about its health: a 502 for this client alone.
    let failed = |reason: String, detail: String| HttpError::origin(StatusCode::BAD_GATEWAY, reason, detail);
    let wait = ctx.config.origin_response_timeout;
    let exchange = async {
        tcp.write_all(&out).await.map_err(|e| {
            failed(
                format!("origin {} failed before answering", origin.id),
                format!("{authority}: {e}"),
            )
            .retryable()
        })?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            buf.reserve(4096);
            let n = tcp.read_buf(&mut buf).await.map_err(|e| {
                failed(
                    format!("origin {} failed before answering", origin.id),
                    format!("{authority}: {e}"),
                )
            })?;
            if n == 0 {
                return Err(failed(
                    format!("origin {} closed the connection before answering", origin.id),
                    format!("{authority}: closed"),
                ));
            }
            match framing::parse_head(&buf) {
                Ok(Some(head)) => {
                    buf.advance(head.len);
                    return Ok((head, buf));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(HttpError::origin(
                        StatusCode::BAD_GATEWAY,
                        format!("origin {} sent a bad response", origin.id),
                        format!("{authority}: {e}"),
                    ))
                }
            }
        }
    };
    let (head, rest) = match tokio::time::timeout(wait, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(HttpError::origin(
                StatusCode::GATEWAY_TIMEOUT,
                format!("origin {} sent no response headers within {wait:?}", origin.id),
                format!("{authority}: no response headers"),
            )
            .retryable())
        }
    };
    Ok(OriginResponse { tcp, head, rest })
}

impl OriginResponse {
    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    /// The player's response: the origin's status and headers (minus
    /// hop-by-hop), with the body relayed on the raw connection once the
    /// head is final.
    pub fn into_response(
        self,
        lease: Option<StreamLease>,
        bytes_out: IntCounter,
        guard: Option<ConnectionGuard>,
        limit: usize,
        splice: Option<IntCounter>,
    ) -> Response<Body> {
        let headers = self.head.headers;
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = self.head.status;
        *resp.headers_mut() = headers;
        let relay = LiveRelay {
            origin: self.tcp,
            framing: self.head.framing,
            rest: self.rest,
            lease,
            bytes_out,
            _guard: guard,
            limit,
            splice,
        };
        resp.extensions_mut()
            .insert(Detach::new(move |client, parts| Box::pin(relay.run(client, parts))));
        resp
    }
}

/// Everything one live relay owns.
struct LiveRelay {
    origin: TcpStream,
    framing: Framing,
    rest: BytesMut,
    /// Keeps the stream mapping refreshed; tells the relay when to stop.
    lease: Option<StreamLease>,
    bytes_out: IntCounter,
    _guard: Option<ConnectionGuard>,
    /// `relay_buffer_bytes`: the most read at once and the most kept.
    limit: usize,
    /// With `relay_splice`: where the bytes moved through a pipe in the
    /// kernel are counted.
    splice: Option<IntCounter>,
}

/// Why a relay ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("origin ended the stream")]
    Done,
    #[error("player closed the connection")]
    ClientClosed,
    #[error("player connection failed: {0}")]
    Client(io::Error),
    #[error("origin closed the connection in the middle of the body")]
    Truncated,
    #[error("origin connection failed: {0}")]
    Origin(io::Error),
    #[error("origin sent a bad body: {0}")]
    Framing(FramingError),
    #[error("origin is gone or the proxy is shutting down")]
    Lost,
    #[error("relay pipe failed: {0}")]
    Pipe(io::Error),
}

impl End {
    /// Ends that are part of a stream's life (a player hanging up mid-write
    /// shows as a reset or a broken pipe), not failures.
    fn is_normal(&self) -> bool {
        match self {
            End::Done | End::ClientClosed | End::Lost => true,
            End::Client(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

impl LiveRelay {
    async fn run(self, client: TcpStream, parts: Parts) {
        let LiveRelay {
            origin,
            framing,
            rest,
            lease,
            bytes_out,
            _guard,
            limit,
            splice,
        } = self;
        let mut pump = Pump {
            client,
            origin,
            body: BodyEnd::new(framing),
            done: framing == Framing::Empty,
            pending: head_bytes(&parts, framing),
            full_reads: 0,
            limit,
            splice: splice.is_some(),
            spliced_counter: splice,
            spliced: 0,
            lost: lease.as_ref().map(StreamLease::lost_watch),
            counter: bytes_out,
            unflushed: 0,
            total: 0,
        };
        let end = match pump.take(&rest) {
            Ok(n) => {
                pump.pending.extend_from_slice(&rest[..n]);
                // Its allocation is the whole buffer the head was read
                // into: not kept for the relay's life.
                drop(rest);
                poll_fn(|cx| pump.poll_relay(cx)).await
            }
            Err(e) => End::Framing(e),
        };
        pump.flush();
        if end.is_normal() {
            tracing::info!(reason = %end, bytes = pump.total, "relay ended");
        } else {
            tracing::warn!(reason = %end, bytes = pump.total, "relay ended");
        }
        // The lease goes last: the mapping stays refreshed until the end.
        drop(pump);
        drop(lease);
    }
}

/// Where the body ends, tracked as its bytes pass.
#[derive(Clone)]
enum BodyEnd {
    Chunked(ChunkScanner),
    Length(u64),
    Close,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Chunked => Self::Chunked(ChunkScanner::new()),
            Framing::Length(n) => Self::Length(n),
            Framing::Empty => Self::Length(0),
            Framing::Close => Self::Close,
        }
    }

    /// Of `bytes`, how many belong to the body, how many of those are
    /// payload, and whether the body ends with them.
    fn take(&mut self, bytes: &[u8]) -> Result<(usize, u64, bool), FramingError> {
        Ok(match self {
            Self::Chunked(scanner) => {
                let scanned = scanner.scan(bytes)?;
                let used = scanned.end.unwrap_or(bytes.len());
                (used, scanned.payload, scanned.end.is_some())
            }
            Self::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                (n as usize, n, *left == 0)
            }
            Self::Close => (bytes.len(), bytes.len() as u64, false),
        })
    }

    /// How many of the next bytes are payload that may pass unseen
    /// ([`pass`](Self::pass)); 0 when framing comes next.
    fn blind(&self) -> u64 {
        match self {
            Self::Chunked(scanner) => scanner.data_left(),
            Self::Length(left) => *left,
            Self::Close => u64::MAX,
        }
    }

    /// Accounts for `n` payload bytes, at most [`blind`](Self::blind),
    /// that passed unseen; whether the body ends with them.
    fn pass(&mut self, n: u64) -> bool {
        match self {
            Self::Chunked(scanner) => {
                scanner.pass(n);
                false
            }
            Self::Length(left) => {
                *left -= n;
                *left == 0
            }
            Self::Close => false,
        }
    }

    /// Whether the origin closing now ends the body cleanly.
    fn complete_at_close(&self) -> bool {
        matches!(self, Self::Close)
    }
}

/// The relay loop's state.
struct Pump {
    client: TcpStream,
    origin: TcpStream,
    body: BodyEnd,
    /// The body's last byte has been read from the origin.
    done: bool,
    /// Bytes read but not yet taken by the player (the head first). Its
    /// allocation is the relay's own buffer, kept while the player lags.
    pending: BytesMut,
    /// Reads in a row the player took whole, while the relay has a buffer.
    full_reads: u8,
    limit: usize,
    /// Splice while this holds (cleared where the kernel refuses).
    splice: bool,
    spliced_counter: Option<IntCounter>,
    /// Bytes moved through the pipe, not yet added to their counter.
    spliced: u64,
    lost: Option<CancelWatch>,
    counter: IntCounter,
    unflushed: u64,
    total: u64,
}

impl Pump {
    /// Accounts for body bytes; returns how many of them to forward.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, FramingError> {
        let (used, payload, ends) = self.body.take(bytes)?;
        self.count(payload, ends);
        Ok(used)
    }

    /// Counts `payload` bytes that went; `ends`: the body ended with them.
    fn count(&mut self, payload: u64, ends: bool) {
        self.done |= ends;
        self.unflushed += payload;
        self.total += payload;
        if self.unflushed >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// A write the player took whole: after a few in a row, the relay's
    /// own buffer goes (the player keeps up again).
    fn wrote_whole(&mut self) {
        self.full_reads = self.full_reads.saturating_add(1);
        if self.full_reads >= RELEASE_AFTER && self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
    }

    /// Accounts for `n` payload bytes that passed unseen.
    fn pass(&mut self, n: u64) {
        let ends = self.body.pass(n);
        self.count(n, ends);
    }

    fn flush(&mut self) {
        if self.unflushed > 0 {
            self.counter.inc_by(self.unflushed);
            self.unflushed = 0;
        }
        if self.spliced > 0 {
            if let Some(counter) = &self.spliced_counter {
                counter.inc_by(self.spliced);
            }
            self.spliced = 0;
        }
    }

    fn poll_relay(&mut self, cx: &mut TaskContext<'_>) -> Poll<End> {
        if let Some(lost) = self.lost.as_mut() {
            if lost.poll_cancelled(cx) {
                return Poll::Ready(End::Lost);
            }
        }
        loop {
            if !self.pending.is_empty() {
                match self.client.try_write(&self.pending) {
                    Ok(n) => {
                        self.pending.advance(n);
                        if self.pending.is_empty() {
                            self.pending.clear();
                            self.wrote_whole();
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.full_reads = 0;
                        match self.client.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => continue,
                            Poll::Ready(Err(e)) => return Poll::Ready(End::Client(e)),
                            Poll::Pending => return self.idle(cx),
                        }
                    }
                    Err(e) => return Poll::Ready(End::Client(e)),
                }
            }
            if self.done {
                return Poll::Ready(End::Done);
            }
            match self.origin.poll_read_ready(cx) {
                Poll::Pending => return self.idle(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(End::Origin(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.read() {
                Ok(Some(0)) if self.body.complete_at_close() => return Poll::Ready(End::Done),
                Ok(Some(0)) => return Poll::Ready(End::Truncated),
                Ok(_) => {}
                Err(end) => return Poll::Ready(end),
            }
        }
    }

    /// One read from the origin, forwarded as far as the player takes it.
    /// `Ok(None)`: nothing to read after all; `Ok(Some(0))`: origin closed.
    fn read(&mut self) -> Result<Option<usize>, End> {
        // Called with nothing pending: the pipe is used even while the
        // relay still has a buffer of its own from a recent lag.
        if self.splice {
            match pipe::with(self.limit, |pipe| self.splice_step(pipe)) {
                Some(Spliced::Done(result)) => return result,
                Some(Spliced::Refused(e)) => pipe::disable(&e),
                None => {}
            }
            // Copying from now on: refused here, or no pipe to be had.
            self.splice = false;
        }
        if self.pending.capacity() > 0 {
            // The player lagged recently: read into the relay's own buffer,
            // written from the top of the loop.
            if self.pending.capacity() < self.limit {
                // Exactly the bound: `reserve` may double instead.
                self.pending = BytesMut::with_capacity(self.limit);
            }
            let read = self.origin.try_read_buf(&mut (&mut self.pending).limit(self.limit));
            return match read {
                Ok(0) => Ok(Some(0)),
                Ok(n) => {
                    let start = self.pending.len() - n;
                    let bytes = self.pending.split_off(start);
                    let used = self.take(&bytes).map_err(End::Framing)?;
                    self.pending.unsplit(bytes);
                    self.pending.truncate(start + used);
                    Ok(Some(n))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(End::Origin(e)),
            };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < self.limit {
                scratch.resize(self.limit, 0);
            }
            let n = match self.origin.try_read(&mut scratch[..self.limit]) {
                Ok(0) => return Ok(Some(0)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(End::Origin(e)),
            };
            let used = self.take(&scratch[..n]).map_err(End::Framing)?;
            let written = match self.client.try_write(&scratch[..used]) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(End::Client(e)),
            };
            if written < used {
                // Kept until the player takes it; nothing more is read
                // before then.
                self.pending.extend_from_slice(&scratch[written..used]);
                self.full_reads = 0;
            }
            Ok(Some(n))
        })
    }

    /// One step through the pipe: what [`read`](Self::read) does, without
    /// the bytes entering the process while the player keeps up.
    fn splice_step(&mut self, pipe: &Pipe) -> Spliced {
        let room = self.limit.min(pipe.capacity());
        let mut peeked = [0u8; PEEK];
        // Of the peeked bytes, how many belong to the body, and where the
        // body stands after them.
        let mut seen = 0;
        let mut planned = None;
        let want = match self.body.blind() {
            // Framing next, or soon: the rest of this chunk's data, the
            // next size line and the data after it go in one step.
            blind if blind < PEEK as u64 => {
                let peek = self.origin.try_io(Interest::READABLE, || {
                    rustix::net::recv(&self.origin, &mut peeked[..], RecvFlags::PEEK | RecvFlags::DONTWAIT)
                        .map(|(n, _)| n)
                        .map_err(io::Error::from)
                });
                let n = match peek {
                    Ok(0) => return Spliced::Done(Ok(Some(0))),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Spliced::Done(Ok(None)),
                    Err(e) => return Spliced::Done(Err(End::Origin(e))),
                };
                // Where the body stands after these bytes, without taking
                // them yet: whatever chunk data follows them may go too.
                let mut plan = self.body.clone();
                let (used, payload, ends) = match plan.take(&peeked[..n]) {
                    Ok(taken) => taken,
                    Err(e) => return Spliced::Done(Err(End::Framing(e))),
                };
                seen = used;
                let after = if ends { 0 } else { plan.blind() };
                planned = Some((plan, payload, ends));
                (used as u64).saturating_add(after).min(room as u64) as usize
            }
            blind => blind.min(room as u64) as usize,
        };
        let filled = self.origin.try_io(Interest::READABLE, || pipe.fill(&self.origin, want));
        let moved = match filled {
            Ok(0) => return Spliced::Done(Ok(Some(0))),
            Ok(moved) => moved,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Spliced::Done(Ok(None)),
            Err(e) if pipe::is_refusal(&e) => return Spliced::Refused(e),
            Err(e) => return Spliced::Done(Err(End::Origin(e))),
        };
        // The peeked bytes that went, then the chunk data after them. When
        // all of them went, the plan already is where the body stands.
        let shown = moved.min(seen);
        match planned {
            Some((plan, payload, ends)) if shown == seen => {
                self.body = plan;
                self.count(payload, ends);
            }
            _ => {
                if let Err(e) = self.take(&peeked[..shown]) {
                    return Spliced::Done(Err(End::Framing(e)));
                }
            }
        }
        if moved > shown {
            self.pass((moved - shown) as u64);
        }
        let drained = self
            .client
            .try_io(Interest::WRITABLE, || pipe.drain(&self.client, moved));
        let written = match drained {
            Ok(written) => {
                self.spliced += written as u64;
                written
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Spliced::Done(Err(End::Client(e))),
        };
        if written < moved {
            // Kept until the player takes it; nothing more is read before
            // then.
            if let Err(e) = pipe.read_out(&mut self.pending, moved - written) {
                return Spliced::Done(Err(End::Pipe(e)));
            }
            self.full_reads = 0;
        } else {
            self.wrote_whole();
        }
        Spliced::Done(Ok(Some(moved)))
    }

    /// About to wait: counts go out, and a player that hangs up is noticed
    /// even while the origin is quiet.
    fn idle(&mut self, cx: &mut TaskContext<'_>) -> Poll<End> {
        self.flush();
        let mut sink = [0u8; 256];
        loop {
            match self.client.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(End::Client(e)),
                Poll::Ready(Ok(())) => match self.client.try_read(&mut sink) {
                    Ok(0) => return Poll::Ready(End::ClientClosed),
                    // Whatever a player sends after its request is ignored.
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(End::Client(e)),
                },
            }
        }
    }
}

/// How a step through the pipe went.
enum Spliced {
    /// As [`Pump::read`] reports it.
    Done(Result<Option<usize>, End>),
    /// The kernel does not splice these sockets; nothing was moved.
    Refused(io::Error),
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The player's response head. The connection closes after the body, so
/// the framing is the origin's: chunked stays chunked, a close-delimited
/// body stays close-delimited, a length stays a length.
pub(crate) fn head_bytes(parts: &Parts, framing: Framing) -> BytesMut {
    let mut out = BytesMut::with_capacity(1024);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_slice(b" ");
    out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_keeps_the_origins_framing() {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.headers.insert("content-type", "video/x-flv".parse().unwrap());
        let chunked = head_bytes(&parts, Framing::Chunked);
        assert_eq!(
            &chunked[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: video/x-flv\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let close = head_bytes(&parts, Framing::Close);
        assert!(!close.windows(8).any(|w| w == b"transfer"), "close-delimited stays so");
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let mut body = BodyEnd::new(Framing::Length(5));
        assert_eq!(body.take(b"abc").unwrap(), (3, 3, false));
        assert_eq!(body.take(b"defgh").unwrap(), (2, 2, true));
        let mut close = BodyEnd::new(Framing::Close);
        assert_eq!(close.take(b"abc").unwrap(), (3, 3, false));
        assert!(close.complete_at_close() && !body.complete_at_close());
    }
}
