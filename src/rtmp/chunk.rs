//! The RTMP chunk stream: messages split into chunks and interleaved on one
//! TCP connection.
//!
//! This module owns framing only: turning bytes into whole [`Message`]s and
//! back. It applies the two control messages that change framing itself
//! (Set Chunk Size and Abort) because they take effect on the very next
//! chunk, which may already be sitting in the read buffer; every other
//! message is opaque here. Memory per connection is bounded: message
//! lengths are checked against a limit before any payload is buffered, the
//! memory held by every chunk stream's reassembly buffer (its capacity,
//! not only the bytes in it) is counted against one cap, and so is the
//! number of chunk streams a peer may open.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The two protocol control messages the chunk layer itself acts on (RTMP
/// spec 5.4.1, 5.4.2); [`super::message::type_id`] names them too.
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
}

/// The chunk size both directions start with, before any Set Chunk Size.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the protocol allows: 31 bits, the top bit is 0.
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;
/// The largest length a message header can express (24 bits).
pub const MAX_MESSAGE_LENGTH: u32 = 0x00ff_ffff;
/// Chunk stream ids 0 and 1 select the longer basic-header forms; 2 is the
/// lowest id on the wire and 65599 the highest the 3-byte form can carry.
pub const MIN_CHUNK_STREAM_ID: u32 = 2;
pub const MAX_CHUNK_STREAM_ID: u32 = 65_599;
/// Peers use a handful of chunk streams (control, commands, audio, video);
/// far more than that is a peer trying to make us keep state.
pub const MAX_CHUNK_STREAMS: usize = 256;

/// A 24-bit timestamp field with this value means a 32-bit extended
/// timestamp follows the message header.
const EXTENDED_TIMESTAMP: u32 = 0x00ff_ffff;

/// One RTMP message, reassembled from its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The chunk stream it travelled on. Kept so a relay can reuse it; it
    /// has no meaning beyond framing.
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    /// The message stream (NetStream) it belongs to; 0 is the connection.
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk stream {csid} uses a type-{fmt} header before any type-0 header")]
    NoPriorHeader { csid: u32, fmt: u8 },
    #[error("message of {length} bytes on chunk stream {csid} exceeds the {limit}-byte limit")]
    MessageTooLarge { csid: u32, length: u32, limit: u32 },
    #[error("chunk stream {csid} starts a new message (type-{fmt} header) before the previous one is complete")]
    InterruptedMessage { csid: u32, fmt: u8 },
    #[error("peer opened more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    #[error("unfinished messages hold more than {limit} bytes")]
    TooMuchBuffered { limit: usize },
    #[error("invalid chunk size {0} (must be 1..=2147483647)")]
    InvalidChunkSize(u32),
    #[error("{what} payload of {len} bytes is too short")]
    ShortControlPayload { what: &'static str, len: usize },
    #[error("chunk stream id {0} cannot be encoded (must be 2..=65599)")]
    InvalidChunkStreamId(u32),
}

/// Reads the 4-byte big-endian value a Set Chunk Size carries and checks it.
pub fn parse_chunk_size(payload: &[u8]) -> Result<u32, ChunkError> {
    let size = read_u32(payload, "Set Chunk Size")?;
    if size == 0 || size > MAX_CHUNK_SIZE {
        return Err(ChunkError::InvalidChunkSize(size));
    }
    Ok(size)
}

/// Reads the leading big-endian u32 of a control message payload.
pub fn read_u32(payload: &[u8], what: &'static str) -> Result<u32, ChunkError> {
    match payload {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(ChunkError::ShortControlPayload {
            what,
            len: payload.len(),
        }),
    }
}

/// What the decoder remembers about one chunk stream: the last header (later
/// headers are deltas against it) and the message being reassembled.
#[derive(Debug)]
struct ChunkStream {
    timestamp: u32,
    /// The timestamp field of the last type-0/1/2 header. Type-3 headers that
    /// start a new message add it again; for a type-0 header it is the
    /// absolute timestamp, which is how FFmpeg and SRS read it too.
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last type-0/1/2 header carried an extended timestamp, so type-3
    /// chunks after it carry one as well.
    extended: bool,
    /// A message has started and not all of its payload has arrived.
    in_progress: bool,
    /// The payload of the message in progress, so far.
    partial: BytesMut,
}

/// Where the decoder is inside a chunk whose header it has consumed.
#[derive(Debug, Clone, Copy)]
struct InChunk {
    csid: u32,
    /// Payload bytes of this chunk not read yet.
    remaining: usize,
}

/// Turns a byte stream into messages.
///
/// Feed it the connection's read buffer; it consumes what it can and
/// returns `Ok(None)` when it needs more bytes, which is not an error.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_message_size: u32,
    /// Cap on the memory of every chunk stream's reassembly buffer: a peer
    /// can legitimately interleave a large video frame with audio, but not
    /// keep dozens of large messages half-sent.
    max_buffered: usize,
    /// The sum of the capacities of the reassembly buffers.
    buffered: usize,
    /// Per chunk stream id: the header state deltas build on.
    streams: HashMap<u32, ChunkStream>,
    /// Set between a chunk's header and the end of its payload, when the
    /// buffer ran out in the middle of it.
    in_chunk: Option<InChunk>,
}

impl ChunkDecoder {
    /// `max_message_size` bounds every message's declared length; it is
    /// clamped to what the 24-bit length field can express.
    pub fn new(max_message_size: u32) -> Self {
        let mut decoder = ChunkDecoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_size: 0,
            max_buffered: 0,
            buffered: 0,
            streams: HashMap::new(),
            in_chunk: None,
        };
        decoder.set_max_message_size(max_message_size);
        decoder
    }

    /// Changes the message limit (and the buffer cap, twice the limit) for
    /// messages whose header has not been read yet; e.g. small while a
    /// client is still setting up, larger once it streams.
    pub fn set_max_message_size(&mut self, max_message_size: u32) {
        self.max_message_size = max_message_size.min(MAX_MESSAGE_LENGTH);
        self.max_buffered = (self.max_message_size as usize).saturating_mul(2);
    }

    /// Memory held by the reassembly buffers now.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The peer's current outgoing chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Decodes the next whole message from `buf`, consuming the bytes it
    /// used. Set Chunk Size and Abort are applied before they are returned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            if let Some(mut at) = self.in_chunk {
                let n = at.remaining.min(buf.len());
                if n == 0 {
                    return Ok(None);
                }
                let limit = self.max_buffered;
                let stream = self.stream_mut(at.csid);
                let before = stream.partial.capacity();
                if stream.partial.len() + n > before {
                    // Grow by doubling, but never past the whole message.
                    let want = (before * 2).max(stream.partial.len() + n).min(stream.length as usize);
                    let growth = want.saturating_sub(before);
                    if self.buffered + growth > limit {
                        return Err(ChunkError::TooMuchBuffered { limit });
                    }
                }
                let stream = self.stream_mut(at.csid);
                stream.partial.extend_from_slice(&buf[..n]);
                let after = stream.partial.capacity();
                buf.advance(n);
                self.buffered = self.buffered + after - before;
                if self.buffered > limit {
                    return Err(ChunkError::TooMuchBuffered { limit });
                }
                at.remaining -= n;
                if at.remaining > 0 {
                    self.in_chunk = Some(at);
                    return Ok(None);
                }
                self.in_chunk = None;
                if let Some(message) = self.finish(at.csid)? {
                    return Ok(Some(message));
                }
                continue;
            }

            let Some(csid) = self.read_header(buf)? else {
                return Ok(None);
            };
            let chunk_size = self.chunk_size as usize;
            let stream = self.stream_mut(csid);
            let missing = stream.length as usize - stream.partial.len();
            let this_chunk = missing.min(chunk_size);
            if this_chunk == 0 {
                // A zero-length message has no chunk payload at all.
                if let Some(message) = self.finish(csid)? {
                    return Ok(Some(message));
                }
                continue;
            }
            self.in_chunk = Some(InChunk {
                csid,
                remaining: this_chunk,
            });
        }
    }

    fn stream_mut(&mut self, csid: u32) -> &mut ChunkStream {
        // Only called for ids whose header was just read, which inserted it.
        self.streams.entry(csid).or_insert_with(|| ChunkStream {
            timestamp: 0,
            delta: 0,
            length: 0,
            type_id: 0,
            stream_id: 0,
            extended: false,
            in_progress: false,
            partial: BytesMut::new(),
        })
    }

    /// Parses one chunk header if all of it is in `buf`, updates that chunk
    /// stream's state and consumes the header bytes. Returns the chunk
    /// stream id, or `None` (consuming nothing) when the header is
    /// incomplete.
    fn read_header(&mut self, buf: &mut BytesMut) -> Result<Option<u32>, ChunkError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match buf.get(1) {
                Some(&b) => (64 + u32::from(b), 2),
                None => return Ok(None),
            },
            1 => match (buf.get(1), buf.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + u32::from(lo) + 256 * u32::from(hi), 3),
                _ => return Ok(None),
            },
            id => (u32::from(id), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(h) = buf.get(pos..pos + header_len) else {
            return Ok(None);
        };

        let previous = self.streams.get(&csid);
        match previous {
            None if fmt != 0 => return Err(ChunkError::NoPriorHeader { csid, fmt }),
            None if self.streams.len() >= MAX_CHUNK_STREAMS => return Err(ChunkError::TooManyChunkStreams),
            Some(s) if s.in_progress && fmt != 3 => return Err(ChunkError::InterruptedMessage { csid, fmt }),
            _ => {}
        }

        let ts_field = (fmt < 3).then(|| u24(&h[0..3]));
        let length = (fmt < 2).then(|| u24(&h[3..6]));
        let type_id = (fmt < 2).then(|| h[6]);
        let stream_id = (fmt == 0).then(|| u32::from_le_bytes([h[7], h[8], h[9], h[10]]));
        if let Some(length) = length {
            if length > self.max_message_size {
                return Err(ChunkError::MessageTooLarge {
                    csid,
                    length,
                    limit: self.max_message_size,
                });
            }
        }
        pos += header_len;

        let continuing = previous.is_some_and(|s| s.in_progress);
        let extended = match ts_field {
            Some(field) => field == EXTENDED_TIMESTAMP,
            None => previous.is_some_and(|s| s.extended),
        };
        let mut field = ts_field;
        if extended {
            let Some(ext) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
            match previous {
                // A continuation chunk repeats the extended timestamp, but
                // some encoders leave it out; take the four bytes as a
                // timestamp only when they match, as SRS does.
                Some(s) if continuing => {
                    if ext == s.delta {
                        pos += 4;
                    }
                }
                _ => {
                    field = Some(ext);
                    pos += 4;
                }
            }
        }
        buf.advance(pos);

        let stream = self.stream_mut(csid);
        if continuing {
            return Ok(Some(csid));
        }
        match fmt {
            0 => {
                stream.timestamp = field.unwrap_or(0);
                stream.delta = stream.timestamp;
            }
            _ => {
                let delta = field.unwrap_or(stream.delta);
                stream.delta = delta;
                stream.timestamp = stream.timestamp.wrapping_add(delta);
            }
        }
        if let Some(length) = length {
            stream.length = length;
        }
        if let Some(type_id) = type_id {
            stream.type_id = type_id;
        }
        if let Some(stream_id) = stream_id {
            stream.stream_id = stream_id;
        }
        if fmt < 3 {
            stream.extended = extended;
        }
        stream.in_progress = true;
        Ok(Some(csid))
    }

    /// Completes the message on `csid` if its payload is all there.
    fn finish(&mut self, csid: u32) -> Result<Option<Message>, ChunkError> {
        let stream = self.stream_mut(csid);
        if stream.partial.len() < stream.length as usize {
            return Ok(None);
        }
        stream.in_progress = false;
        let before = stream.partial.capacity();
        // The payload leaves with its allocation; what capacity is left
        // (none, or the spare end of a grown buffer) stays counted.
        let payload = stream.partial.split().freeze();
        let after = stream.partial.capacity();
        let message = Message {
            csid,
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            stream_id: stream.stream_id,
            payload,
        };
        self.buffered -= before - after;
        match message.type_id {
            type_id::SET_CHUNK_SIZE => self.chunk_size = parse_chunk_size(&message.payload)?,
            type_id::ABORT => {
                let aborted = read_u32(&message.payload, "Abort")?;
                if let Some(s) = self.streams.get_mut(&aborted) {
                    if s.in_progress {
                        self.buffered -= s.partial.capacity();
                        s.partial = BytesMut::new();
                        s.in_progress = false;
                    }
                }
            }
            _ => {}
        }
        Ok(Some(message))
    }
}

fn u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

/// The header last sent on one chunk stream, so the next can be a delta.
#[derive(Debug, Clone, Copy)]
struct SentHeader {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Splits messages into chunks of the current outgoing chunk size.
///
/// A message is always written whole (its chunks are never interleaved with
/// another message's), so a peer's decoder never has to juggle more than
/// one unfinished message per direction from us.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    /// Per chunk stream id: what the next header may be a delta against.
    sent: HashMap<u32, SentHeader>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            sent: HashMap::new(),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Appends `msg` to `out` as chunks. Encoding a Set Chunk Size message
    /// switches this encoder to the new size for everything after it, the
    /// same moment the peer's decoder switches.
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) -> Result<(), ChunkError> {
        let plan = self.start(msg, out)?;
        let mut rest = &msg.payload[..];
        loop {
            let n = rest.len().min(plan.chunk_size);
            out.put_slice(&rest[..n]);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            plan.continuation(out);
        }
        self.finish(msg, plan);
        Ok(())
    }

    /// As [`ChunkEncoder::encode`], without copying the payload: `piece`
    /// gets, in wire order, the chunk headers (split off `headers`, which
    /// only ever holds a few bytes) and slices of `msg.payload`.
    pub fn encode_shared(
        &mut self,
        msg: &Message,
        headers: &mut BytesMut,
        mut piece: impl FnMut(Bytes),
    ) -> Result<(), ChunkError> {
        let plan = self.start(msg, headers)?;
        let mut at = 0;
        loop {
            let n = (msg.payload.len() - at).min(plan.chunk_size);
            piece(headers.split().freeze());
            piece(msg.payload.slice(at..at + n));
            at += n;
            if at == msg.payload.len() {
                break;
            }
            plan.continuation(headers);
        }
        self.finish(msg, plan);
        Ok(())
    }

    /// Checks `msg` and writes its first chunk header.
    fn start(&self, msg: &Message, out: &mut BytesMut) -> Result<Plan, ChunkError> {
        let csid = msg.csid;
        if !(MIN_CHUNK_STREAM_ID..=MAX_CHUNK_STREAM_ID).contains(&csid) {
            return Err(ChunkError::InvalidChunkStreamId(csid));
        }
        let length = u32::try_from(msg.payload.len())
            .ok()
            .filter(|len| *len <= MAX_MESSAGE_LENGTH)
            .ok_or(ChunkError::MessageTooLarge {
                csid,
                length: u32::try_from(msg.payload.len()).unwrap_or(u32::MAX),
                limit: MAX_MESSAGE_LENGTH,
            })?;
        let new_chunk_size = if msg.type_id == type_id::SET_CHUNK_SIZE {
            Some(parse_chunk_size(&msg.payload)?)
        } else {
            None
        };

        // Deltas only when they fit in 24 bits: SRS checks the extended
        // timestamp on continuation chunks against the absolute timestamp,
        // so an extended value must always be an absolute one.
        let (fmt, field) = match self.sent.get(&csid) {
            Some(prev)
                if prev.stream_id == msg.stream_id
                    && msg.timestamp >= prev.timestamp
                    && msg.timestamp - prev.timestamp < EXTENDED_TIMESTAMP =>
            {
                let delta = msg.timestamp - prev.timestamp;
                if prev.length == length && prev.type_id == msg.type_id {
                    (2u8, delta)
                } else {
                    (1u8, delta)
                }
            }
            _ => (0u8, msg.timestamp),
        };
        let extended = field >= EXTENDED_TIMESTAMP;
        let ts24 = field.min(EXTENDED_TIMESTAMP);

        put_basic_header(out, fmt, csid);
        out.put_uint(u64::from(ts24), 3);
        if fmt <= 1 {
            out.put_uint(u64::from(length), 3);
            out.put_u8(msg.type_id);
        }
        if fmt == 0 {
            out.put_u32_le(msg.stream_id);
        }
        if extended {
            out.put_u32(field);
        }
        Ok(Plan {
            csid,
            length,
            extended: extended.then_some(field),
            chunk_size: self.chunk_size as usize,
            new_chunk_size,
        })
    }

    /// Remembers the header of a message written whole.
    fn finish(&mut self, msg: &Message, plan: Plan) {
        let csid = plan.csid;
        if self.sent.len() >= MAX_CHUNK_STREAMS && !self.sent.contains_key(&csid) {
            // Forgetting is always safe: the next message gets a full header.
            self.sent.clear();
        }
        self.sent.insert(
            csid,
            SentHeader {
                timestamp: msg.timestamp,
                length: plan.length,
                type_id: msg.type_id,
                stream_id: msg.stream_id,
            },
        );
        if let Some(size) = plan.new_chunk_size {
            self.chunk_size = size;
        }
    }
}

/// One message's framing, decided by its first chunk header.
struct Plan {
    csid: u32,
    length: u32,
    /// The extended timestamp every chunk repeats, if there is one.
    extended: Option<u32>,
    chunk_size: usize,
    /// The size a Set Chunk Size switches to after this message.
    new_chunk_size: Option<u32>,
}

impl Plan {
    /// The header of every chunk after the first.
    fn continuation(&self, out: &mut BytesMut) {
        put_basic_header(out, 3, self.csid);
        if let Some(field) = self.extended {
            out.put_u32(field);
        }
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    if csid < 64 {
        out.put_u8(fmt | csid as u8);
    } else if csid < 320 {
        out.put_u8(fmt);
        out.put_u8((csid - 64) as u8);
    } else {
        let id = csid - 64;
        out.put_u8(fmt | 1);
        out.put_u8((id & 0xff) as u8);
        out.put_u8((id >> 8) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u32 = 1 << 20;

    fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> Message {
        Message {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn decode_all(decoder: &mut ChunkDecoder, bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    fn encode_all(encoder: &mut ChunkEncoder, messages: &[Message]) -> BytesMut {
        let mut out = BytesMut::new();
        for m in messages {
            encoder.encode(m, &mut out).expect("encodable test message");
        }
        out
    }

    fn set_chunk_size(size: u32) -> Message {
        msg(2, 0, type_id::SET_CHUNK_SIZE, 0, &size.to_be_bytes())
    }

    #[test]
    fn decodes_a_hand_written_type0_message() {
        // fmt 0, csid 3, ts 1000, length 4, type 20, stream 1 (little endian).
        let bytes = [
            0x03, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x04, 0x14, 0x01, 0x00, 0x00, 0x00, b'a', b'b', b'c', b'd',
        ];
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got, vec![msg(3, 1000, 20, 1, b"abcd")]);
    }

    #[test]
    fn header_types_1_2_3_apply_deltas_as_in_the_spec_example() {
        // Spec example: audio on one chunk stream, 1000 then +20 each.
        let mut bytes = vec![0x04, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x02, 0x08, 0, 0, 0, 0, 1, 2];
        // fmt 2 (delta 20), same length/type.
        bytes.extend_from_slice(&[0x84, 0x00, 0x00, 0x14, 3, 4]);
        // fmt 3: new message, delta 20 again.
        bytes.extend_from_slice(&[0xc4, 5, 6]);
        // fmt 1: delta 10, length 1, type 9.
        bytes.extend_from_slice(&[0x44, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01, 0x09, 7]);
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                msg(4, 1000, 8, 0, &[1, 2]),
                msg(4, 1020, 8, 0, &[3, 4]),
                msg(4, 1040, 8, 0, &[5, 6]),
                msg(4, 1050, 9, 0, &[7]),
            ]
        );
    }

    #[test]
    fn type3_after_type0_adds_the_type0_timestamp_like_ffmpeg_and_srs() {
        let bytes = [
            0x05, 0x00, 0x00, 0x64, 0x00, 0x00, 0x01, 0x08, 0, 0, 0, 0, 0xaa, 0xc5, 0xbb,
        ];
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got[1].timestamp, 200);
    }

    #[test]
    fn chunk_stream_id_forms() {
        for csid in [2, 63, 64, 319, 320, 65_599] {
            let m = msg(csid, 1, 9, 1, b"x");
            let bytes = encode_all(&mut ChunkEncoder::new(), std::slice::from_ref(&m));
            let header = match csid {
                2..=63 => 1,
                64..=319 => 2,
                _ => 3,
            };
            assert_eq!(bytes.len(), header + 11 + 1, "csid {csid}");
            assert_eq!(decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap(), vec![m]);
        }
    }

    #[test]
    fn encoder_rejects_unencodable_chunk_stream_ids() {
        for csid in [0, 1, 65_600] {
            let mut out = BytesMut::new();
            assert_eq!(
                ChunkEncoder::new().encode(&msg(csid, 0, 9, 1, b"x"), &mut out),
                Err(ChunkError::InvalidChunkStreamId(csid))
            );
        }
    }

    #[test]
    fn extended_timestamp_is_repeated_on_continuation_chunks() {
        let payload = vec![7u8; 300];
        let m = msg(6, 0x0100_0000, 9, 1, &payload);
        let bytes = encode_all(&mut ChunkEncoder::new(), std::slice::from_ref(&m));
        // 1 + 11 + 4 header, then 128 bytes, then (1 + 4) + 128, then (1 + 4) + 44.
        assert_eq!(bytes.len(), 16 + 128 + 5 + 128 + 5 + 44);
        assert_eq!(&bytes[144..149], &[0xc6, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap(), vec![m]);
    }

    #[test]
    fn continuation_chunks_without_the_extended_timestamp_are_accepted() {
        // Same message as above, but the encoder left the 4 bytes out of
        // the type-3 continuation chunk.
        let mut bytes = vec![0x06, 0xff, 0xff, 0xff, 0x00, 0x00, 0x82, 0x09, 1, 0, 0, 0];
        bytes.extend_from_slice(&0x0100_0000u32.to_be_bytes());
        bytes.extend_from_slice(&[1u8; 128]);
        bytes.push(0xc6);
        bytes.extend_from_slice(&[2u8; 2]);
        // Whether the four bytes after a continuation header are a
        // timestamp can only be told once four bytes are there; a live
        // stream always has more coming.
        bytes.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0, 3]);
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].timestamp, 0x0100_0000);
        assert_eq!(got[0].payload.len(), 130);
        assert_eq!(&got[0].payload[128..], &[2, 2]);
    }

    #[test]
    fn type3_starting_a_message_reads_its_extended_timestamp() {
        let mut encoder = ChunkEncoder::new();
        let first = msg(6, 0x0100_0000, 9, 1, b"a");
        let mut bytes = encode_all(&mut encoder, std::slice::from_ref(&first));
        bytes.put_u8(0xc6);
        bytes.put_u32(0x0100_0000);
        bytes.put_u8(b'b');
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got[0], first);
        assert_eq!(got[1].timestamp, 0x0200_0000);
        assert_eq!(&got[1].payload[..], b"b");
    }

    #[test]
    fn timestamps_wrap_instead_of_overflowing() {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&[0x04, 0xff, 0xff, 0xff, 0, 0, 1, 8, 0, 0, 0, 0]);
        bytes.put_u32(u32::MAX);
        bytes.put_u8(1);
        bytes.extend_from_slice(&[0x84, 0x00, 0x00, 0x02, 2]);
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got[1].timestamp, 1);
    }

    #[test]
    fn zero_length_messages_have_no_payload_chunk() {
        let ms = [msg(3, 5, 8, 1, b""), msg(3, 6, 8, 1, b""), msg(3, 7, 9, 1, b"v")];
        let bytes = encode_all(&mut ChunkEncoder::new(), &ms);
        assert_eq!(decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap(), ms.to_vec());
    }

    #[test]
    fn incomplete_input_is_not_an_error_and_consumes_nothing_it_cannot_use() {
        let bytes = encode_all(&mut ChunkEncoder::new(), &[msg(3, 1, 20, 0, &[9; 200])]);
        let mut decoder = ChunkDecoder::new(LIMIT);
        for cut in 0..bytes.len() {
            let mut d = ChunkDecoder::new(LIMIT);
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "cut at {cut}");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
    }

    #[test]
    fn set_chunk_size_takes_effect_on_the_next_chunk() {
        let ms = [
            set_chunk_size(4096),
            msg(3, 0, 9, 1, &[1; 5000]),
            set_chunk_size(1),
            msg(3, 0, 8, 1, &[2; 3]),
        ];
        let mut encoder = ChunkEncoder::new();
        let bytes = encode_all(&mut encoder, &ms);
        assert_eq!(encoder.chunk_size(), 1);
        let mut decoder = ChunkDecoder::new(LIMIT);
        assert_eq!(decode_all(&mut decoder, &bytes).unwrap(), ms.to_vec());
        assert_eq!(decoder.chunk_size(), 1);
    }

    #[test]
    fn chunk_size_zero_or_with_the_top_bit_set_is_rejected() {
        for size in [0u32, 0x8000_0000, u32::MAX] {
            let mut bytes = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            bytes.extend_from_slice(&size.to_be_bytes());
            assert_eq!(
                decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
                Err(ChunkError::InvalidChunkSize(size))
            );
            let mut out = BytesMut::new();
            assert_eq!(
                ChunkEncoder::new().encode(&set_chunk_size(size), &mut out),
                Err(ChunkError::InvalidChunkSize(size))
            );
        }
        // The largest legal size is accepted.
        let mut decoder = ChunkDecoder::new(LIMIT);
        let bytes = encode_all(&mut ChunkEncoder::new(), &[set_chunk_size(MAX_CHUNK_SIZE)]);
        decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(decoder.chunk_size(), MAX_CHUNK_SIZE);
    }

    #[test]
    fn short_control_payloads_are_rejected() {
        let bytes = [0x02, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::ShortControlPayload {
                what: "Set Chunk Size",
                len: 2
            })
        );
        let bytes = [0x02, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 3];
        assert!(matches!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::ShortControlPayload { what: "Abort", .. })
        ));
    }

    #[test]
    fn message_length_over_the_limit_is_rejected_before_buffering() {
        // 16 MiB - 1, the largest length the header can carry.
        let bytes = [0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
        assert_eq!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::MessageTooLarge {
                csid: 3,
                length: MAX_MESSAGE_LENGTH,
                limit: LIMIT
            })
        );
        // Also through a type-1 header on a known chunk stream.
        let mut bytes = encode_all(&mut ChunkEncoder::new(), &[msg(3, 0, 9, 1, b"x")]).to_vec();
        bytes.extend_from_slice(&[0x43, 0, 0, 1, 0x10, 0, 1, 9]);
        assert!(matches!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::MessageTooLarge { length: 0x10_0001, .. })
        ));
        // With no explicit limit the header maximum is allowed.
        let mut d = ChunkDecoder::new(u32::MAX);
        let mut buf = BytesMut::from(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn chunk_stream_without_a_prior_header_is_rejected() {
        for (fmt, first) in [(1u8, 0x43u8), (2, 0x83), (3, 0xc3)] {
            let bytes = [first, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0];
            assert_eq!(
                decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
                Err(ChunkError::NoPriorHeader { csid: 3, fmt })
            );
        }
    }

    #[test]
    fn a_new_header_in_the_middle_of_a_message_is_rejected() {
        let mut bytes = vec![0x03, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0; 128]);
        bytes.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0, 0]);
        assert_eq!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::InterruptedMessage { csid: 3, fmt: 0 })
        );
    }

    #[test]
    fn abort_discards_the_unfinished_message() {
        let mut bytes = vec![0x04, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0; 128]);
        let abort = msg(2, 0, type_id::ABORT, 0, &4u32.to_be_bytes());
        bytes.extend_from_slice(&encode_all(&mut ChunkEncoder::new(), std::slice::from_ref(&abort)));
        // csid 4 may now start afresh with a type-1 header.
        bytes.extend_from_slice(&[0x44, 0, 0, 1, 0, 0, 1, 8, 0xaa]);
        let got = decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap();
        assert_eq!(got, vec![abort, msg(4, 1, 8, 1, &[0xaa])]);
    }

    #[test]
    fn too_many_chunk_streams_are_rejected() {
        let mut bytes = Vec::new();
        for csid in 0..=MAX_CHUNK_STREAMS as u32 {
            let m = msg(2 + csid, 0, 9, 1, b"x");
            bytes.extend_from_slice(&encode_all(&mut ChunkEncoder::new(), &[m]));
        }
        assert_eq!(
            decode_all(&mut ChunkDecoder::new(LIMIT), &bytes),
            Err(ChunkError::TooManyChunkStreams)
        );
    }

    #[test]
    fn unfinished_messages_cannot_pile_up_without_bound() {
        // Many chunk streams each with a large message that never finishes.
        let limit = 1000;
        let mut decoder = ChunkDecoder::new(limit);
        let mut bytes = BytesMut::new();
        for csid in 3..40u32 {
            bytes.put_u8(csid as u8);
            bytes.extend_from_slice(&[0, 0, 0]);
            bytes.put_uint(u64::from(limit), 3);
            bytes.extend_from_slice(&[9, 1, 0, 0, 0]);
            bytes.extend_from_slice(&[0; 128]);
        }
        let mut buf = bytes;
        let result = loop {
            match decoder.decode(&mut buf) {
                Ok(None) if buf.is_empty() => break Ok(None),
                Ok(None) => continue,
                other => break other,
            }
        };
        assert_eq!(result, Err(ChunkError::TooMuchBuffered { limit: 2000 }));
    }

    #[test]
    fn every_chunk_streams_buffer_counts_by_its_capacity_and_is_released() {
        // 200 chunk streams each declaring a 60 KB message and sending one
        // 128-byte chunk of it: little payload, but each buffer is real
        // memory. Nothing is reserved ahead of the data, so 200 × 128 bytes
        // (rounded up by the allocator's growth) is what is held.
        let mut decoder = ChunkDecoder::new(64 * 1024);
        let mut bytes = BytesMut::new();
        for csid in 64..264u32 {
            // Two-byte basic header: fmt 0, id 0, then id - 64.
            bytes.put_u8(0);
            bytes.put_u8((csid - 64) as u8);
            bytes.extend_from_slice(&[0, 0, 0]);
            bytes.put_uint(60_000, 3);
            bytes.extend_from_slice(&[9, 1, 0, 0, 0]);
            bytes.extend_from_slice(&[7; 128]);
        }
        let mut buf = bytes;
        while !buf.is_empty() {
            assert_eq!(decoder.decode(&mut buf), Ok(None));
        }
        let held = decoder.buffered();
        let real: usize = decoder.streams.values().map(|s| s.partial.capacity()).sum();
        assert_eq!(held, real, "the count is the buffers' capacity");
        assert!((200 * 128..=200 * 256).contains(&held), "{held}");

        // Finishing a message hands its memory to the message.
        let mut decoder = ChunkDecoder::new(1 << 20);
        let big = msg(5, 0, 9, 1, &vec![1; 300_000]);
        let mut wire = encode_all(&mut ChunkEncoder::new(), std::slice::from_ref(&big));
        assert_eq!(decoder.decode(&mut wire), Ok(Some(big)));
        let real: usize = decoder.streams.values().map(|s| s.partial.capacity()).sum();
        assert_eq!(decoder.buffered(), real);
    }

    #[test]
    fn encoder_rejects_payloads_the_header_cannot_express() {
        let big = Message {
            csid: 3,
            timestamp: 0,
            type_id: 9,
            stream_id: 1,
            payload: Bytes::from(vec![0; MAX_MESSAGE_LENGTH as usize + 1]),
        };
        assert!(matches!(
            ChunkEncoder::new().encode(&big, &mut BytesMut::new()),
            Err(ChunkError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn encoder_compresses_headers_but_not_across_streams_or_backwards_time() {
        let ms = [
            msg(4, 100, 8, 1, b"ab"),
            msg(4, 120, 8, 1, b"cd"), // fmt 2: 1 + 3
            msg(4, 130, 9, 1, b"e"),  // fmt 1: 1 + 7
            msg(4, 90, 9, 1, b"f"),   // backwards: fmt 0
            msg(4, 95, 9, 2, b"g"),   // other stream: fmt 0
        ];
        let bytes = encode_all(&mut ChunkEncoder::new(), &ms);
        assert_eq!(bytes.len(), (12 + 2) + (4 + 2) + (8 + 1) + (12 + 1) + (12 + 1));
        assert_eq!(decode_all(&mut ChunkDecoder::new(LIMIT), &bytes).unwrap(), ms.to_vec());
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let media = (
            prop_oneof![2u32..10, 60u32..70, 310u32..330, 65_590u32..=65_599],
            prop_oneof![0u32..1000, 0x00ff_fff0u32..0x0100_0010, any::<u32>()],
            prop_oneof![Just(8u8), Just(9), Just(18), Just(20), 3u8..=22],
            prop_oneof![Just(0u32), Just(1), any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..700),
        )
            .prop_filter("framing messages are generated separately", |m| {
                m.2 != type_id::SET_CHUNK_SIZE && m.2 != type_id::ABORT
            })
            .prop_map(|(csid, timestamp, type_id, stream_id, payload)| Message {
                csid,
                timestamp,
                type_id,
                stream_id,
                payload: payload.into(),
            });
        prop_oneof![
            8 => media,
            1 => prop_oneof![1u32..300, Just(MAX_CHUNK_SIZE)].prop_map(set_chunk_size),
        ]
    }

    proptest! {
        #[test]
        fn shared_encoding_writes_the_same_bytes(messages in prop::collection::vec(arb_message(), 1..24)) {
            let copied = encode_all(&mut ChunkEncoder::new(), &messages);
            let mut encoder = ChunkEncoder::new();
            let mut headers = BytesMut::new();
            let mut shared = Vec::new();
            for m in &messages {
                encoder
                    .encode_shared(m, &mut headers, |piece| shared.extend_from_slice(&piece))
                    .unwrap();
                prop_assert!(headers.is_empty(), "every header byte handed out");
            }
            prop_assert_eq!(&shared[..], &copied[..]);
        }
    }

    proptest! {
        #[test]
        fn round_trip_with_arbitrary_read_splits(
            messages in prop::collection::vec(arb_message(), 1..24),
            cuts in prop::collection::vec(1usize..400, 0..64),
        ) {
            let bytes = encode_all(&mut ChunkEncoder::new(), &messages);
            let mut decoder = ChunkDecoder::new(LIMIT);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(m) = decoder.decode(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, messages);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut decoder = ChunkDecoder::new(4096);
            let mut buf = BytesMut::new();
            for chunk in chunks {
                buf.extend_from_slice(&chunk);
                while let Ok(Some(_)) = decoder.decode(&mut buf) {}
            }
        }
    }
}
