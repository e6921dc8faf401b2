//! Edge mode's RTMP players: a play joins the stream's shared upstream
//! (the replica's [`Edge`], the same hubs HTTP-FLV players join) instead
//! of opening an origin connection of its own.
//!
//! The proxy answers the play itself as SRS does (Stream Begin,
//! `NetStream.Play.Reset`, `NetStream.Play.Start`, `|RtmpSampleAccess`,
//! `NetStream.Data.Start`), then writes the hub's frames as RTMP messages:
//! FLV tags of type 8, 9 and 18 are RTMP audio, video and data messages
//! with the same payloads, timestamps from the player's [`Pump`], chunked
//! at the chunk size the proxy announced at `connect`, the payloads handed
//! to the socket as they are in the hub (never copied). What the client
//! sends while it plays is read between writes: acknowledgements and pings
//! are answered, `closeStream`/`deleteStream` end the play.
//!
//! The hub's origin request is an HTTP-FLV GET of the stream, with the
//! vhost in `Host` and the play's query; the origin's RTMP port is never
//! used here. This module does not touch the hub's internals.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::amf0::{self, Value};
use super::chunk::{ChunkEncoder, Message};
use super::command::{status, Command};
use super::conn::{ConnError, MessageReader, MessageWriter};
use super::message::{type_id, Control, UserControl};
use super::session::Request;
use super::RtmpError;
use crate::context::Context;
use crate::error::Fault;
use crate::http::edge::hub::{OpenRequest, StartError};
use crate::http::edge::player::{Encode, End, Outbox, Pump};
use crate::http::edge::ring::Frame;
use crate::http::edge::Edge;
use crate::http::forward::origin_target;
use crate::stream_key::{StreamKey, DEFAULT_VHOST};

/// The protocol label of these players in metrics.
const PROTOCOL: &str = "rtmp";

/// Chunk streams of what the proxy sends a player, as SRS numbers them.
mod csid {
    pub const DATA: u32 = 5;
    pub const VIDEO: u32 = 6;
    pub const AUDIO: u32 = 7;
}

/// While this many buffers wait for the player's socket, what it sends is
/// left unread: its replies cannot pile up behind frames it does not take.
const MAX_QUEUED: usize = 1024;

/// Plays `request` from the stream's shared upstream until the hub ends,
/// the client stops or falls too far behind.
pub async fn play<R, W>(
    ctx: &Context,
    edge: &Edge,
    key: &StreamKey,
    request: &Request,
    peer: SocketAddr,
    mut reader: MessageReader<R>,
    mut writer: MessageWriter<W>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let open = open_request(key, &request.stream_name, peer);
    let sub = match edge.join(ctx, key, &open, PROTOCOL).await {
        Ok(sub) => sub,
        Err(e) => return super::refuse(&mut writer, &mut reader, Some(request), refusal(e)).await,
    };
    tracing::info!(stream = %key, "relaying {PROTOCOL} from the shared upstream");
    let stream_id = request.client_stream_id;
    for reply in play_replies(stream_id) {
        if let Err(e) = writer.queue(&reply) {
            tracing::warn!(error = %e, "cannot encode the play replies");
            return;
        }
    }
    let (io, encoder, queued) = writer.into_parts();
    let chunks = Chunks {
        encoder,
        stream_id,
        headers: BytesMut::with_capacity(4096),
    };
    let counter = ctx.metrics.bytes_relayed_total.with_label_values(&[PROTOCOL, "out"]);
    let batch = ctx.config.relay_buffer_bytes;
    let timeout_ms = u64::try_from(ctx.config.edge.player_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut pump = Pump::new(io, sub, chunks, queued.freeze(), batch, timeout_ms, counter);
    let end = loop {
        tokio::select! {
            end = poll_fn(|cx| pump.poll_play(cx)) => break end,
            read = reader.read(), if pump.queued() < MAX_QUEUED => match read {
                Ok(Some(message)) => {
                    if let Some(end) = from_client(message, &mut reader, &mut pump, stream_id) {
                        break end;
                    }
                }
                Ok(None) => break End::ClientClosed,
                Err(ConnError::Io(e)) => break End::Client(e),
                Err(e) => break End::Client(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            },
        }
    };
    ctx.metrics
        .edge_players_ended_total
        .with_label_values(&[end.label()])
        .inc();
    if end.is_normal() {
        tracing::info!(reason = %end, bytes = pump.total, "relay ended");
    } else {
        tracing::warn!(reason = %end, bytes = pump.total, "relay ended");
    }
    let _ = pump.writer.shutdown().await;
    drop(pump);
    if matches!(end, End::Hub(_)) {
        super::relay::linger(reader.get_mut()).await;
    }
}

/// What the hub asks the origin for, when this player is the first: the
/// stream as HTTP-FLV, the vhost in `Host` (an IP or dotless host is the
/// default vhost, which any `Host` reaches) and the play's query, where
/// SRS's hooks read tokens.
fn open_request(key: &StreamKey, stream_name: &str, peer: SocketAddr) -> OpenRequest {
    let query = stream_name.split_once('?').map(|(_, q)| q);
    let mut headers = HeaderMap::new();
    if &*key.vhost != DEFAULT_VHOST {
        if let Ok(host) = HeaderValue::from_str(&key.vhost) {
            headers.insert(header::HOST, host);
        }
    }
    OpenRequest {
        target: origin_target(key, "flv", query),
        headers,
        peer,
    }
}

/// A hub that did not start, as the player is told: the origin without
/// the stream is `NetStream.Play.StreamNotFound`, anything else
/// `NetStream.Play.Failed` with the one-line reason an HTTP player would
/// get.
fn refusal(e: StartError) -> RtmpError {
    match e {
        StartError::Answered(answer) if answer.status == StatusCode::NOT_FOUND => RtmpError::SharedUpstream {
            code: status::PLAY_STREAM_NOT_FOUND,
            reason: "stream not found on origin".into(),
            fault: Fault::Client,
        },
        StartError::Answered(answer) => RtmpError::SharedUpstream {
            code: status::PLAY_FAILED,
            reason: format!("origin answered {}", answer.status),
            fault: Fault::Origin,
        },
        StartError::Refused(r) => {
            if let Some(detail) = &r.detail {
                tracing::warn!(%detail, "shared upstream refused");
            }
            RtmpError::SharedUpstream {
                code: status::PLAY_FAILED,
                reason: r.reason,
                fault: r.fault,
            }
        }
    }
}

/// What SRS sends a player whose play starts.
fn play_replies(stream_id: u32) -> Vec<Message> {
    let on_status = |code, description| Command::on_status(status::LEVEL_STATUS, code, description);
    vec![
        Control::User(UserControl::StreamBegin(stream_id)).to_message(),
        on_status(status::PLAY_RESET, "Playing and resetting stream.").to_message(stream_id),
        on_status(status::PLAY_START, "Started playing stream.").to_message(stream_id),
        data(
            stream_id,
            &[
                Value::from("|RtmpSampleAccess"),
                Value::Boolean(true),
                Value::Boolean(true),
            ],
        ),
        data(
            stream_id,
            &[
                Value::from("onStatus"),
                Value::Object(amf0::Object::new().with("code", status::DATA_START)),
            ],
        ),
    ]
}

/// An AMF0 data message on the player's stream.
fn data(stream_id: u32, values: &[Value]) -> Message {
    Message {
        csid: csid::DATA,
        timestamp: 0,
        type_id: type_id::DATA_AMF0,
        stream_id,
        payload: amf0::encode_all(values),
    }
}

/// Does what a message from a playing client asks; the end of the play
/// when it asks for that.
fn from_client<W: AsyncWrite + Unpin>(
    message: Message,
    reader: &mut MessageReader<impl AsyncRead + Unpin>,
    pump: &mut Pump<W, Chunks>,
    stream_id: u32,
) -> Option<End> {
    let control = match Control::decode(&message) {
        Ok(control) => control,
        Err(e) => {
            tracing::info!(error = %e, "player sent a bad control message");
            return Some(End::Client(io::Error::new(io::ErrorKind::InvalidData, e.to_string())));
        }
    };
    for reply in reader.replies_owed(control.as_ref()) {
        pump.queue(|chunks, out| chunks.message(&reply.to_message(), out));
    }
    if !matches!(message.type_id, type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3) {
        // Window sizes, chunk sizes (applied by the reader), acknowledgements,
        // buffer lengths, media: nothing to do.
        return None;
    }
    match Command::from_message(&message) {
        Ok(Command::CloseStream { .. }) if message.stream_id == stream_id => Some(End::ClientClosed),
        Ok(Command::DeleteStream { stream_id: id, .. }) if id == f64::from(stream_id) => Some(End::ClientClosed),
        Ok(other) => {
            tracing::debug!(command = other.name(), "ignoring a player's command");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "ignoring an undecodable command from a player");
            None
        }
    }
}

/// RTMP framing of a hub's frames, on the connection's chunk encoder.
pub struct Chunks {
    /// The connection's outgoing framing: chunk size and header state.
    encoder: ChunkEncoder,
    /// The player's message stream.
    stream_id: u32,
    /// Chunk headers, split off piece by piece around the shared payloads.
    headers: BytesMut,
}

impl Chunks {
    /// Queues one message the proxy built.
    fn message(&mut self, message: &Message, out: &mut Outbox) {
        if let Err(e) = self.encoder.encode_shared(message, &mut self.headers, |b| out.push(b)) {
            tracing::warn!(error = %e, "cannot encode a message for a player");
        }
    }
}

/// The chunk stream of an FLV tag type's messages; `None` for what is not
/// audio, video or data (and must not reach the chunk layer, where a type
/// 1 or 2 would change the framing).
fn media_chunk_stream(tag_type: u8) -> Option<u32> {
    match tag_type {
        type_id::AUDIO => Some(csid::AUDIO),
        type_id::VIDEO => Some(csid::VIDEO),
        type_id::DATA_AMF0 => Some(csid::DATA),
        _ => None,
    }
}

impl Encode for Chunks {
    fn encode(&mut self, frames: &[(u32, Frame)], out: &mut Outbox) -> u64 {
        let mut payload = 0;
        for (timestamp, frame) in frames {
            let Some(csid) = media_chunk_stream(frame.tag_type) else {
                continue;
            };
            let message = Message {
                csid,
                timestamp: *timestamp,
                type_id: frame.tag_type,
                stream_id: self.stream_id,
                payload: frame.payload.clone(),
            };
            self.message(&message, out);
            payload += frame.payload.len() as u64;
        }
        payload
    }

    /// The origin ended the stream: what SRS tells a player when its
    /// publisher leaves.
    fn finish(&mut self, out: &mut Outbox) {
        let eof = Control::User(UserControl::StreamEof(self.stream_id)).to_message();
        self.message(&eof, out);
        let status = Command::on_status(
            status::LEVEL_STATUS,
            status::PLAY_UNPUBLISH_NOTIFY,
            "stream is now unpublished",
        );
        self.message(&status.to_message(self.stream_id), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::ChunkDecoder;
    use crate::rtmp::command::status_info as info;
    use bytes::Bytes;

    fn key(vhost: &str) -> StreamKey {
        StreamKey::new(vhost, "live", "show").unwrap()
    }

    #[test]
    fn the_origin_request_is_the_streams_flv_with_vhost_and_query() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let open = open_request(&key("v.example.com"), "show?token=abc&vhost=v.example.com", peer);
        assert_eq!(open.target, "/live/show.flv?token=abc&vhost=v.example.com");
        assert_eq!(open.headers[header::HOST], "v.example.com");
        assert_eq!(open.peer, peer);
        let open = open_request(&key(DEFAULT_VHOST), "show", peer);
        assert_eq!(open.target, "/live/show.flv");
        assert!(
            open.headers.get(header::HOST).is_none(),
            "the origin's own address goes"
        );
    }

    fn frame(seq: u64, tag_type: u8, payload: &'static [u8]) -> Frame {
        Frame {
            seq,
            clock: 0,
            kind: crate::http::edge::ring::Kind::Data,
            join_point: true,
            tag_type,
            payload: Bytes::from_static(payload),
            offset: 0,
            arrived: 0,
        }
    }

    #[test]
    fn frames_become_messages_of_their_tag_type_and_nothing_else_passes() {
        let mut chunks = Chunks {
            encoder: ChunkEncoder::new(),
            stream_id: 1,
            headers: BytesMut::new(),
        };
        let mut out = Outbox::default();
        let frames = [
            (0, frame(0, type_id::DATA_AMF0, b"\x02\x00\x0aonMetaData")),
            (0, frame(1, type_id::VIDEO, b"\x17\x00sps")),
            (40, frame(2, type_id::AUDIO, b"\xaf\x01aac")),
            // A framing message must never come out of an origin's FLV.
            (40, frame(3, type_id::SET_CHUNK_SIZE, b"\x00\x00\x00\x01")),
            (80, frame(4, type_id::VIDEO, &[0x27; 300])),
        ];
        let n = chunks.encode(&frames, &mut out);
        assert_eq!(n, 13 + 5 + 5 + 300);
        chunks.finish(&mut out);
        let mut wire = BytesMut::from(&out.to_vec()[..]);
        let mut decoder = ChunkDecoder::new(1 << 20);
        let mut got = Vec::new();
        while let Some(m) = decoder.decode(&mut wire).unwrap() {
            got.push(m);
        }
        let media: Vec<_> = got[..4]
            .iter()
            .map(|m| (m.type_id, m.timestamp, m.stream_id, m.payload.len()))
            .collect();
        assert_eq!(
            media,
            [(18, 0, 1, 13), (9, 0, 1, 5), (8, 40, 1, 5), (9, 80, 1, 300)],
            "chunked at the default size, reassembled whole"
        );
        assert_eq!(
            Control::decode(&got[4]).unwrap(),
            Some(Control::User(UserControl::StreamEof(1)))
        );
        assert_eq!(
            Command::from_message(&got[5]).unwrap(),
            Command::OnStatus {
                transaction_id: 0.0,
                info: info(
                    status::LEVEL_STATUS,
                    status::PLAY_UNPUBLISH_NOTIFY,
                    "stream is now unpublished"
                ),
            }
        );
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn a_missing_stream_is_stream_not_found_and_other_failures_play_failed() {
        use crate::http::edge::hub::{Answer, Refusal};
        let answer = |status| {
            StartError::Answered(std::sync::Arc::new(Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            }))
        };
        let code = |e: RtmpError| match e {
            RtmpError::SharedUpstream { code, .. } => code,
            other => panic!("{other}"),
        };
        assert_eq!(
            code(refusal(answer(StatusCode::NOT_FOUND))),
            status::PLAY_STREAM_NOT_FOUND
        );
        assert_eq!(code(refusal(answer(StatusCode::FORBIDDEN))), status::PLAY_FAILED);
        let refused = StartError::Refused(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "no origin available".into(),
            fault: Fault::Origin,
            detail: None,
        });
        let e = refusal(refused);
        assert_eq!(e.client_reason(), "no origin available");
        assert_eq!(code(e), status::PLAY_FAILED);
    }

    #[test]
    fn the_play_is_answered_as_srs_answers_it() {
        let replies = play_replies(1);
        assert_eq!(
            Control::decode(&replies[0]).unwrap(),
            Some(Control::User(UserControl::StreamBegin(1)))
        );
        let codes: Vec<_> = replies[1..3]
            .iter()
            .map(|m| Command::from_message(m).unwrap().status_code().unwrap().to_string())
            .collect();
        assert_eq!(codes, [status::PLAY_RESET, status::PLAY_START]);
        assert!(replies
            .iter()
            .all(|m| m.stream_id == 1 || m.type_id == type_id::USER_CONTROL));
        let sample = amf0::decode_all(&replies[3].payload).unwrap();
        assert_eq!(sample[0], Value::from("|RtmpSampleAccess"));
        assert_eq!(replies[4].type_id, type_id::DATA_AMF0);
    }
}
