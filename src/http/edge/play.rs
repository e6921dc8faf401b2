//! HTTP-FLV and HTTP-TS players of a shared upstream.
//!
//! The response head is the origin's (as the hub's first request got it),
//! and the body is written on the raw connection once the router has added
//! its headers ([`Detach`]), chunked: one HTTP chunk per batch of frames.
//! An FLV player gets an FLV file header with the origin's flags, then the
//! metadata, the decoder configurations and the cached GOP, every tag with
//! this player's own timestamps ([`Chunked`]). A TS player gets the latest
//! PAT and PMT, then the packets from the last random access point on,
//! exactly as the origin sent them: the timestamps are the ones inside the
//! TS, never rewritten ([`ChunkedTs`]).

use std::future::poll_fn;
use std::io;
use std::task::{Context as TaskContext, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use tokio::net::TcpStream;

use super::flv::{self, put_tag_header};
use super::format::Format;
use super::hub::{OpenRequest, StartError, Subscription};
use super::player::{Encode, End, Outbox, Pump};
use super::ring::Frame;
use super::Edge;
use crate::context::Context;
use crate::http::framing::Framing;
use crate::http::passthrough::head_bytes;
use crate::http::request::StreamRequest;
use crate::http::serve::Detach;
use crate::http::{full, Body, HttpError};

/// Serves a live FLV or TS request (an HTTP/1.1 GET) from the stream's
/// shared upstream of that format.
pub async fn serve(
    ctx: &Context,
    edge: &Edge,
    sr: &StreamRequest<'_>,
    format: Format,
) -> Result<Response<Body>, HttpError> {
    let open = OpenRequest {
        target: sr.target.to_string(),
        headers: sr.req.headers().clone(),
        peer: sr.peer,
    };
    let protocol = format.protocol();
    let sub = match edge.join_format(ctx, &sr.key, format, &open, protocol).await {
        Ok(sub) => sub,
        Err(StartError::Answered(answer)) => return Ok(answer.to_response()),
        Err(StartError::Refused(r)) => return Err(r.into()),
    };
    tracing::info!(stream = %sr.key, "relaying {protocol} from the shared upstream");
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = sub.head.status;
    *resp.headers_mut() = sub.head.headers.clone();
    match format {
        Format::Flv => {
            let encoder = Chunked {
                flv_header: Some(sub.head.flv_flags),
            };
            detach(ctx, &mut resp, sub, encoder, protocol);
        }
        Format::Ts => detach(ctx, &mut resp, sub, ChunkedTs, protocol),
    }
    Ok(resp)
}

/// Hands the response's connection to a [`Pump`] of `encoder` once the
/// head is final.
fn detach<E: Encode + Send + 'static>(
    ctx: &Context,
    resp: &mut Response<Body>,
    sub: Subscription,
    encoder: E,
    protocol: &'static str,
) {
    let guard = ctx.metrics.connection(protocol, "player");
    let counter = ctx.metrics.bytes_relayed_total.with_label_values(&[protocol, "out"]);
    let ended = ctx.metrics.edge_players_ended_total.clone();
    let batch = ctx.config.relay_buffer_bytes;
    let timeout_ms = u64::try_from(ctx.config.edge.player_timeout.as_millis()).unwrap_or(u64::MAX);
    resp.extensions_mut().insert(Detach::new(move |client, parts| {
        Box::pin(async move {
            let head = head_bytes(&parts, Framing::Chunked).freeze();
            let mut pump = Pump::new(client, sub, encoder, head, batch, timeout_ms, counter);
            let end = poll_fn(|cx| match pump.poll_play(cx) {
                Poll::Ready(end) => Poll::Ready(end),
                Poll::Pending => idle(&pump.writer, cx),
            })
            .await;
            ended.with_label_values(&[end.label()]).inc();
            if end.is_normal() {
                tracing::info!(reason = %end, bytes = pump.total, "relay ended");
            } else {
                tracing::warn!(reason = %end, bytes = pump.total, "relay ended");
            }
            drop(pump);
            drop(guard);
        })
    }));
}

/// While the player waits: notices it hanging up (and ignores whatever
/// else it sends).
fn idle(client: &TcpStream, cx: &mut TaskContext<'_>) -> Poll<End> {
    let mut sink = [0u8; 256];
    loop {
        match client.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(End::Client(e)),
            Poll::Ready(Ok(())) => match client.try_read(&mut sink) {
                Ok(0) => return Poll::Ready(End::ClientClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(End::Client(e)),
            },
        }
    }
}

/// Payloads up to this size (audio frames, metadata) are copied in with
/// the tag headers rather than written as slices of their own.
const COPY_BELOW: usize = 512;

/// Chunked HTTP framing of FLV tags.
pub struct Chunked {
    /// The FLV file header's flags, until the header is written.
    flv_header: Option<u8>,
}

impl Encode for Chunked {
    fn encode(&mut self, frames: &[(u32, Frame)], out: &mut Outbox) -> u64 {
        let payload: usize = frames.iter().map(|(_, f)| f.payload.len()).sum();
        if frames.is_empty() {
            return 0;
        }
        let mut len = payload + frames.len() * (flv::TAG_HEADER_LEN + flv::PREVIOUS_SIZE_LEN);
        if self.flv_header.is_some() {
            len += flv::FILE_HEADER.len();
        }
        // Chunk size line, FLV tag headers and sizes: small pieces of one
        // buffer around the shared payloads, which are never copied.
        let copied: usize = frames
            .iter()
            .map(|(_, f)| f.payload.len())
            .filter(|&n| n <= COPY_BELOW)
            .sum();
        let mut small = BytesMut::with_capacity(16 + frames.len() * 16 + flv::FILE_HEADER.len() + copied);
        small.put_slice(format!("{len:x}\r\n").as_bytes());
        if let Some(flags) = self.flv_header.take() {
            small.put_slice(&flv::FILE_HEADER[..4]);
            small.put_u8(flags);
            small.put_slice(&flv::FILE_HEADER[5..]);
        }
        for (timestamp, frame) in frames {
            put_tag_header(&mut small, frame.tag_type, *timestamp, frame.payload.len());
            if frame.payload.len() <= COPY_BELOW {
                small.put_slice(&frame.payload);
            } else {
                out.push(small.split().freeze());
                out.push(frame.payload.clone());
            }
            small.put_slice(&flv::previous_tag_size(frame.payload.len()));
        }
        small.put_slice(b"\r\n");
        out.push(small.freeze());
        payload as u64
    }

    fn finish(&mut self, out: &mut Outbox) {
        out.push(Bytes::from_static(b"0\r\n\r\n"));
    }
}

/// Chunked HTTP framing of TS units: their packets as the origin sent
/// them. The player's own timestamp is not used: TS carries its own
/// (PTS/DTS, PCR), which a player resyncs on at the PAT/PMT and random
/// access point it starts with.
pub struct ChunkedTs;

impl Encode for ChunkedTs {
    fn encode(&mut self, frames: &[(u32, Frame)], out: &mut Outbox) -> u64 {
        let len: usize = frames.iter().map(|(_, f)| f.payload.len()).sum();
        if len == 0 {
            return 0;
        }
        out.push(Bytes::from(format!("{len:x}\r\n")));
        for (_, frame) in frames {
            out.push(frame.payload.clone());
        }
        out.push(Bytes::from_static(b"\r\n"));
        len as u64
    }

    fn finish(&mut self, out: &mut Outbox) {
        out.push(Bytes::from_static(b"0\r\n\r\n"));
    }
}
