//! RTMP message types, and the control messages that manage a connection:
//! protocol control (chunk size, abort, acknowledgements, bandwidth) and
//! user control events (stream begin/EOF, buffer length, ping).
//!
//! This module owns the payload layouts of those messages. It does not
//! decide what to do with them (that is the relay's job) and it does not
//! touch command messages, which are AMF0 and live in `command.rs`.

use bytes::{BufMut, Bytes, BytesMut};

use super::chunk::{parse_chunk_size, read_u32, ChunkError, Message};

/// Message type ids from the RTMP specification.
pub mod type_id {
    pub use crate::rtmp::chunk::type_id::{ABORT, SET_CHUNK_SIZE};
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Protocol control messages travel on chunk stream 2, message stream 0.
pub const CONTROL_CHUNK_STREAM: u32 = 2;

/// Set Peer Bandwidth limit types.
pub mod limit_type {
    pub const HARD: u8 = 0;
    pub const SOFT: u8 = 1;
    pub const DYNAMIC: u8 = 2;
}

/// A message that manages the connection rather than carrying a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    SetChunkSize(u32),
    /// Discard the unfinished message on this chunk stream.
    Abort(u32),
    /// Total bytes received so far (wrapping), sent once per window.
    Acknowledgement(u32),
    /// How many bytes the sender may receive between acknowledgements.
    WindowAckSize(u32),
    SetPeerBandwidth {
        size: u32,
        limit: u8,
    },
    User(UserControl),
}

/// User control events (message type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    /// Events this crate has no use for (SWF verification, buffer
    /// empty/ready), kept verbatim so they can be passed on.
    Other {
        event: u16,
        data: Bytes,
    },
}

mod event {
    pub const STREAM_BEGIN: u16 = 0;
    pub const STREAM_EOF: u16 = 1;
    pub const STREAM_DRY: u16 = 2;
    pub const SET_BUFFER_LENGTH: u16 = 3;
    pub const STREAM_IS_RECORDED: u16 = 4;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

impl UserControl {
    /// The message stream an event refers to, for events that name one.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            UserControl::StreamBegin(id)
            | UserControl::StreamEof(id)
            | UserControl::StreamDry(id)
            | UserControl::StreamIsRecorded(id)
            | UserControl::SetBufferLength { stream_id: id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The same event about another message stream; events that name no
    /// stream are returned unchanged.
    pub fn with_stream_id(self, new: u32) -> Self {
        match self {
            UserControl::StreamBegin(_) => UserControl::StreamBegin(new),
            UserControl::StreamEof(_) => UserControl::StreamEof(new),
            UserControl::StreamDry(_) => UserControl::StreamDry(new),
            UserControl::StreamIsRecorded(_) => UserControl::StreamIsRecorded(new),
            UserControl::SetBufferLength { millis, .. } => UserControl::SetBufferLength { stream_id: new, millis },
            other => other,
        }
    }

    fn decode(payload: &[u8]) -> Result<Self, ChunkError> {
        let [hi, lo, data @ ..] = payload else {
            return Err(ChunkError::ShortControlPayload {
                what: "User Control",
                len: payload.len(),
            });
        };
        let kind = u16::from_be_bytes([*hi, *lo]);
        let arg = |what| read_u32(data, what);
        Ok(match kind {
            event::STREAM_BEGIN => UserControl::StreamBegin(arg("Stream Begin")?),
            event::STREAM_EOF => UserControl::StreamEof(arg("Stream EOF")?),
            event::STREAM_DRY => UserControl::StreamDry(arg("Stream Dry")?),
            event::SET_BUFFER_LENGTH => UserControl::SetBufferLength {
                stream_id: arg("Set Buffer Length")?,
                millis: read_u32(data.get(4..).unwrap_or(&[]), "Set Buffer Length")?,
            },
            event::STREAM_IS_RECORDED => UserControl::StreamIsRecorded(arg("Stream Is Recorded")?),
            event::PING_REQUEST => UserControl::PingRequest(arg("Ping Request")?),
            event::PING_RESPONSE => UserControl::PingResponse(arg("Ping Response")?),
            other => UserControl::Other {
                event: other,
                data: Bytes::copy_from_slice(data),
            },
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        let (kind, value) = match self {
            UserControl::StreamBegin(v) => (event::STREAM_BEGIN, *v),
            UserControl::StreamEof(v) => (event::STREAM_EOF, *v),
            UserControl::StreamDry(v) => (event::STREAM_DRY, *v),
            UserControl::StreamIsRecorded(v) => (event::STREAM_IS_RECORDED, *v),
            UserControl::PingRequest(v) => (event::PING_REQUEST, *v),
            UserControl::PingResponse(v) => (event::PING_RESPONSE, *v),
            UserControl::SetBufferLength { stream_id, millis } => {
                out.put_u16(event::SET_BUFFER_LENGTH);
                out.put_u32(*stream_id);
                out.put_u32(*millis);
                return;
            }
            UserControl::Other { event, data } => {
                out.put_u16(*event);
                out.put_slice(data);
                return;
            }
        };
        out.put_u16(kind);
        out.put_u32(value);
    }
}

impl Control {
    /// Decodes a control message; `Ok(None)` for any other message type.
    pub fn decode(message: &Message) -> Result<Option<Control>, ChunkError> {
        let p = &message.payload[..];
        Ok(Some(match message.type_id {
            type_id::SET_CHUNK_SIZE => Control::SetChunkSize(parse_chunk_size(p)?),
            type_id::ABORT => Control::Abort(read_u32(p, "Abort")?),
            type_id::ACKNOWLEDGEMENT => Control::Acknowledgement(read_u32(p, "Acknowledgement")?),
            type_id::WINDOW_ACK_SIZE => Control::WindowAckSize(read_u32(p, "Window Acknowledgement Size")?),
            type_id::SET_PEER_BANDWIDTH => Control::SetPeerBandwidth {
                size: read_u32(p, "Set Peer Bandwidth")?,
                // Some peers omit the limit type; dynamic is the harmless
                // reading.
                limit: p.get(4).copied().unwrap_or(limit_type::DYNAMIC),
            },
            type_id::USER_CONTROL => Control::User(UserControl::decode(p)?),
            _ => return Ok(None),
        }))
    }

    /// The message carrying this control, on the control chunk stream.
    pub fn to_message(&self) -> Message {
        let mut payload = BytesMut::with_capacity(10);
        let kind = match self {
            Control::SetChunkSize(v) => {
                payload.put_u32(*v);
                type_id::SET_CHUNK_SIZE
            }
            Control::Abort(v) => {
                payload.put_u32(*v);
                type_id::ABORT
            }
            Control::Acknowledgement(v) => {
                payload.put_u32(*v);
                type_id::ACKNOWLEDGEMENT
            }
            Control::WindowAckSize(v) => {
                payload.put_u32(*v);
                type_id::WINDOW_ACK_SIZE
            }
            Control::SetPeerBandwidth { size, limit } => {
                payload.put_u32(*size);
                payload.put_u8(*limit);
                type_id::SET_PEER_BANDWIDTH
            }
            Control::User(event) => {
                event.encode(&mut payload);
                type_id::USER_CONTROL
            }
        };
        Message {
            csid: CONTROL_CHUNK_STREAM,
            timestamp: 0,
            type_id: kind,
            stream_id: 0,
            payload: payload.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(type_id: u8, payload: &[u8]) -> Message {
        Message {
            csid: 2,
            timestamp: 0,
            type_id,
            stream_id: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_control_round_trips() {
        let all = [
            Control::SetChunkSize(4096),
            Control::Abort(4),
            Control::Acknowledgement(u32::MAX),
            Control::WindowAckSize(2_500_000),
            Control::SetPeerBandwidth {
                size: 2_500_000,
                limit: limit_type::DYNAMIC,
            },
            Control::User(UserControl::StreamBegin(1)),
            Control::User(UserControl::StreamEof(1)),
            Control::User(UserControl::StreamDry(1)),
            Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            }),
            Control::User(UserControl::StreamIsRecorded(1)),
            Control::User(UserControl::PingRequest(77)),
            Control::User(UserControl::PingResponse(77)),
            Control::User(UserControl::Other {
                event: 0x1f,
                data: Bytes::from_static(&[0, 0, 0, 1]),
            }),
        ];
        for c in all {
            assert_eq!(Control::decode(&c.to_message()), Ok(Some(c.clone())), "{c:?}");
        }
    }

    #[test]
    fn wire_layouts_match_the_spec() {
        assert_eq!(
            &Control::SetPeerBandwidth { size: 1, limit: 2 }.to_message().payload[..],
            &[0, 0, 0, 1, 2]
        );
        assert_eq!(
            &Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                millis: 2
            })
            .to_message()
            .payload[..],
            &[0, 3, 0, 0, 0, 1, 0, 0, 0, 2]
        );
        let m = Control::WindowAckSize(5).to_message();
        assert_eq!((m.csid, m.stream_id, m.type_id), (2, 0, 5));
    }

    #[test]
    fn short_payloads_are_errors_not_panics() {
        for t in [1u8, 2, 3, 5, 6] {
            assert!(Control::decode(&raw(t, &[0, 0, 1])).is_err(), "type {t}");
        }
        for p in [&[][..], &[0][..], &[0, 0, 0, 0, 1][..], &[0, 3, 0, 0, 0, 1, 0][..]] {
            assert!(Control::decode(&raw(4, p)).is_err(), "{p:?}");
        }
    }

    #[test]
    fn invalid_chunk_sizes_are_errors() {
        assert_eq!(
            Control::decode(&raw(1, &[0, 0, 0, 0])),
            Err(ChunkError::InvalidChunkSize(0))
        );
        assert_eq!(
            Control::decode(&raw(1, &[0x80, 0, 0, 0])),
            Err(ChunkError::InvalidChunkSize(0x8000_0000))
        );
    }

    #[test]
    fn peer_bandwidth_without_limit_type_reads_as_dynamic() {
        assert_eq!(
            Control::decode(&raw(6, &[0, 0, 1, 0])),
            Ok(Some(Control::SetPeerBandwidth {
                size: 256,
                limit: limit_type::DYNAMIC
            }))
        );
    }

    #[test]
    fn media_and_commands_are_not_control() {
        for t in [8u8, 9, 18, 20, 22] {
            assert_eq!(Control::decode(&raw(t, b"whatever")), Ok(None));
        }
    }

    #[test]
    fn stream_ids_in_events_can_be_rewritten() {
        let e = UserControl::SetBufferLength {
            stream_id: 1,
            millis: 100,
        };
        assert_eq!(e.stream_id(), Some(1));
        assert_eq!(
            e.with_stream_id(7),
            UserControl::SetBufferLength {
                stream_id: 7,
                millis: 100
            }
        );
        assert_eq!(UserControl::PingRequest(3).stream_id(), None);
        assert_eq!(
            UserControl::PingRequest(3).with_stream_id(9),
            UserControl::PingRequest(3)
        );
        assert_eq!(
            UserControl::StreamBegin(1).with_stream_id(2),
            UserControl::StreamBegin(2)
        );
    }
}
