//! RTMP command messages: `connect`, the calls a client makes before it
//! publishes or plays, and the replies (`_result`, `_error`, `onStatus`).
//!
//! This module owns the mapping between AMF0 value sequences and typed
//! commands, in both directions, plus the reply shapes SRS uses. It does not
//! decide which reply a command deserves; the relay and the test origin do.

use bytes::{Bytes, BytesMut};

use super::amf0::{self, Amf0Error, Object, Value};
use super::chunk::Message;
use super::message::type_id;

/// Commands are a few hundred bytes; anything this big is not one, and
/// decoding it would only let a peer make us build a large value tree.
pub const MAX_COMMAND_SIZE: usize = 256 * 1024;

/// Commands go on chunk stream 3 by convention (SRS and FFmpeg do so).
pub const COMMAND_CHUNK_STREAM: u32 = 3;

pub mod status {
    //! `onStatus` levels and the codes this proxy and SRS send.
    pub const LEVEL_STATUS: &str = "status";
    pub const LEVEL_ERROR: &str = "error";

    pub const CONNECT_SUCCESS: &str = "NetConnection.Connect.Success";
    pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
    pub const PUBLISH_START: &str = "NetStream.Publish.Start";
    pub const PUBLISH_BAD_NAME: &str = "NetStream.Publish.BadName";
    pub const PUBLISH_REJECTED: &str = "NetStream.Publish.Rejected";
    pub const UNPUBLISH_SUCCESS: &str = "NetStream.Unpublish.Success";
    pub const PLAY_RESET: &str = "NetStream.Play.Reset";
    pub const PLAY_START: &str = "NetStream.Play.Start";
    pub const PLAY_STREAM_NOT_FOUND: &str = "NetStream.Play.StreamNotFound";
    pub const PLAY_FAILED: &str = "NetStream.Play.Failed";
    pub const PLAY_UNPUBLISH_NOTIFY: &str = "NetStream.Play.UnpublishNotify";
    pub const DATA_START: &str = "NetStream.Data.Start";
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("command payload of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed command: {0}")]
    Amf0(#[from] Amf0Error),
    #[error("command has no name")]
    MissingName,
    #[error("`{0}` has no transaction id")]
    MissingTransactionId(String),
    #[error("`{command}` needs {field}")]
    MissingField { command: &'static str, field: &'static str },
    #[error("message type {0} is not a command")]
    NotACommand(u8),
}

/// The command object of `connect`, with accessors for the fields the
/// proxy uses; everything else is kept as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub transaction_id: f64,
    pub properties: Object,
    /// Optional arguments after the command object (some encoders pass
    /// credentials here).
    pub args: Vec<Value>,
}

impl Connect {
    pub fn app(&self) -> Option<&str> {
        self.properties.get_str("app")
    }

    pub fn tc_url(&self) -> Option<&str> {
        self.properties.get_str("tcUrl")
    }

    /// 0 for AMF0 clients, 3 for AMF3 ones; echoed in the reply.
    pub fn object_encoding(&self) -> f64 {
        self.properties.get_f64("objectEncoding").unwrap_or(0.0)
    }
}

/// A command message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Connect(Connect),
    CreateStream {
        transaction_id: f64,
    },
    ReleaseStream {
        transaction_id: f64,
        stream_name: String,
    },
    FcPublish {
        transaction_id: f64,
        stream_name: String,
    },
    FcUnpublish {
        transaction_id: f64,
        stream_name: String,
    },
    Publish {
        transaction_id: f64,
        stream_name: String,
        /// "live", "record" or "append"; absent means live.
        publish_type: Option<String>,
    },
    Play {
        transaction_id: f64,
        stream_name: String,
        /// Further arguments (start, duration, reset), kept as sent.
        args: Vec<Value>,
    },
    DeleteStream {
        transaction_id: f64,
        stream_id: f64,
    },
    CloseStream {
        transaction_id: f64,
    },
    CheckBandwidth {
        transaction_id: f64,
    },
    GetStreamLength {
        transaction_id: f64,
        stream_name: String,
    },
    /// `_result`: the command object (or null) and any further values.
    Result {
        transaction_id: f64,
        values: Vec<Value>,
    },
    /// `_error`, shaped like `_result`.
    Error {
        transaction_id: f64,
        values: Vec<Value>,
    },
    OnStatus {
        transaction_id: f64,
        info: Object,
    },
    /// Any other call (`onBWDone`, `FCSubscribe`, `pause`, …).
    Other {
        name: String,
        transaction_id: f64,
        values: Vec<Value>,
    },
}

mod name {
    pub const CONNECT: &str = "connect";
    pub const CREATE_STREAM: &str = "createStream";
    pub const RELEASE_STREAM: &str = "releaseStream";
    pub const FC_PUBLISH: &str = "FCPublish";
    pub const FC_UNPUBLISH: &str = "FCUnpublish";
    pub const PUBLISH: &str = "publish";
    pub const PLAY: &str = "play";
    pub const DELETE_STREAM: &str = "deleteStream";
    pub const CLOSE_STREAM: &str = "closeStream";
    pub const CHECK_BANDWIDTH: &str = "_checkbw";
    pub const GET_STREAM_LENGTH: &str = "getStreamLength";
    pub const RESULT: &str = "_result";
    pub const ERROR: &str = "_error";
    pub const ON_STATUS: &str = "onStatus";
}

impl Command {
    /// Decodes the payload of an AMF0 command message (type 20).
    pub fn decode(payload: &[u8]) -> Result<Command, CommandError> {
        if payload.len() > MAX_COMMAND_SIZE {
            return Err(CommandError::TooLarge(payload.len()));
        }
        let mut values = amf0::decode_all(payload)?.into_iter();
        let name = match values.next() {
            Some(Value::String(name)) => name,
            _ => return Err(CommandError::MissingName),
        };
        let transaction_id = match values.next() {
            Some(Value::Number(n)) => n,
            _ => return Err(CommandError::MissingTransactionId(name)),
        };
        let mut rest: Vec<Value> = values.collect();

        // Everything after the command object, and the first string there.
        let args = |rest: &mut Vec<Value>| -> Vec<Value> {
            if rest.is_empty() {
                Vec::new()
            } else {
                rest.split_off(1)
            }
        };
        let stream_name = |args: &[Value], command: &'static str| -> Result<String, CommandError> {
            args.first()
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(CommandError::MissingField {
                    command,
                    field: "a stream name",
                })
        };
        // Preparatory calls are answered whatever they carry, so a missing
        // name there is not worth refusing the connection over.
        let lenient_name =
            |args: &[Value]| -> String { args.first().and_then(Value::as_str).unwrap_or_default().to_owned() };

        Ok(match name.as_str() {
            name::CONNECT => {
                let properties = match rest.first() {
                    Some(Value::Object(o)) | Some(Value::EcmaArray(o)) => o.clone(),
                    _ => {
                        return Err(CommandError::MissingField {
                            command: name::CONNECT,
                            field: "a command object",
                        })
                    }
                };
                Command::Connect(Connect {
                    transaction_id,
                    properties,
                    args: args(&mut rest),
                })
            }
            name::CREATE_STREAM => Command::CreateStream { transaction_id },
            name::RELEASE_STREAM => Command::ReleaseStream {
                transaction_id,
                stream_name: lenient_name(&args(&mut rest)),
            },
            name::FC_PUBLISH => Command::FcPublish {
                transaction_id,
                stream_name: lenient_name(&args(&mut rest)),
            },
            name::FC_UNPUBLISH => Command::FcUnpublish {
                transaction_id,
                stream_name: lenient_name(&args(&mut rest)),
            },
            name::GET_STREAM_LENGTH => Command::GetStreamLength {
                transaction_id,
                stream_name: lenient_name(&args(&mut rest)),
            },
            name::PUBLISH => {
                let args = args(&mut rest);
                Command::Publish {
                    transaction_id,
                    stream_name: stream_name(&args, name::PUBLISH)?,
                    publish_type: args.get(1).and_then(Value::as_str).map(str::to_owned),
                }
            }
            name::PLAY => {
                let mut args = args(&mut rest);
                let stream_name = stream_name(&args, name::PLAY)?;
                args.remove(0);
                Command::Play {
                    transaction_id,
                    stream_name,
                    args,
                }
            }
            name::DELETE_STREAM => Command::DeleteStream {
                transaction_id,
                stream_id: args(&mut rest)
                    .first()
                    .and_then(Value::as_f64)
                    .ok_or(CommandError::MissingField {
                        command: name::DELETE_STREAM,
                        field: "a stream id",
                    })?,
            },
            name::CLOSE_STREAM => Command::CloseStream { transaction_id },
            name::CHECK_BANDWIDTH => Command::CheckBandwidth { transaction_id },
            name::RESULT => Command::Result {
                transaction_id,
                values: rest,
            },
            name::ERROR => Command::Error {
                transaction_id,
                values: rest,
            },
            name::ON_STATUS => Command::OnStatus {
                transaction_id,
                info: rest
                    .into_iter()
                    .find_map(|v| match v {
                        Value::Object(o) => Some(o),
                        _ => None,
                    })
                    .ok_or(CommandError::MissingField {
                        command: name::ON_STATUS,
                        field: "an info object",
                    })?,
            },
            _ => Command::Other {
                name,
                transaction_id,
                values: rest,
            },
        })
    }

    /// Decodes a command message of either flavour: AMF3 command messages
    /// (type 17) start with one format byte and then carry AMF0.
    pub fn from_message(message: &Message) -> Result<Command, CommandError> {
        match message.type_id {
            type_id::COMMAND_AMF0 => Command::decode(&message.payload),
            type_id::COMMAND_AMF3 => Command::decode(message.payload.get(1..).unwrap_or(&[])),
            other => Err(CommandError::NotACommand(other)),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Command::Connect(_) => name::CONNECT,
            Command::CreateStream { .. } => name::CREATE_STREAM,
            Command::ReleaseStream { .. } => name::RELEASE_STREAM,
            Command::FcPublish { .. } => name::FC_PUBLISH,
            Command::FcUnpublish { .. } => name::FC_UNPUBLISH,
            Command::Publish { .. } => name::PUBLISH,
            Command::Play { .. } => name::PLAY,
            Command::DeleteStream { .. } => name::DELETE_STREAM,
            Command::CloseStream { .. } => name::CLOSE_STREAM,
            Command::CheckBandwidth { .. } => name::CHECK_BANDWIDTH,
            Command::GetStreamLength { .. } => name::GET_STREAM_LENGTH,
            Command::Result { .. } => name::RESULT,
            Command::Error { .. } => name::ERROR,
            Command::OnStatus { .. } => name::ON_STATUS,
            Command::Other { name, .. } => name,
        }
    }

    pub fn transaction_id(&self) -> f64 {
        match self {
            Command::Connect(c) => c.transaction_id,
            Command::CreateStream { transaction_id }
            | Command::ReleaseStream { transaction_id, .. }
            | Command::FcPublish { transaction_id, .. }
            | Command::FcUnpublish { transaction_id, .. }
            | Command::Publish { transaction_id, .. }
            | Command::Play { transaction_id, .. }
            | Command::DeleteStream { transaction_id, .. }
            | Command::CloseStream { transaction_id }
            | Command::CheckBandwidth { transaction_id }
            | Command::GetStreamLength { transaction_id, .. }
            | Command::Result { transaction_id, .. }
            | Command::Error { transaction_id, .. }
            | Command::OnStatus { transaction_id, .. }
            | Command::Other { transaction_id, .. } => *transaction_id,
        }
    }

    /// The AMF0 values after name and transaction id, as they go on the wire.
    fn body(&self) -> Vec<Value> {
        let named = |stream_name: &str| vec![Value::Null, Value::from(stream_name)];
        match self {
            Command::Connect(c) => {
                let mut v = vec![Value::Object(c.properties.clone())];
                v.extend(c.args.iter().cloned());
                v
            }
            Command::CreateStream { .. } | Command::CloseStream { .. } | Command::CheckBandwidth { .. } => {
                vec![Value::Null]
            }
            Command::ReleaseStream { stream_name, .. }
            | Command::FcPublish { stream_name, .. }
            | Command::FcUnpublish { stream_name, .. }
            | Command::GetStreamLength { stream_name, .. } => named(stream_name),
            Command::Publish {
                stream_name,
                publish_type,
                ..
            } => {
                let mut v = named(stream_name);
                v.extend(publish_type.as_deref().map(Value::from));
                v
            }
            Command::Play { stream_name, args, .. } => {
                let mut v = named(stream_name);
                v.extend(args.iter().cloned());
                v
            }
            Command::DeleteStream { stream_id, .. } => vec![Value::Null, Value::Number(*stream_id)],
            Command::Result { values, .. } | Command::Error { values, .. } | Command::Other { values, .. } => {
                values.clone()
            }
            Command::OnStatus { info, .. } => vec![Value::Null, Value::Object(info.clone())],
        }
    }

    /// The AMF0 payload of this command.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        amf0::encode(&Value::from(self.name()), &mut out);
        amf0::encode(&Value::Number(self.transaction_id()), &mut out);
        for value in self.body() {
            amf0::encode(&value, &mut out);
        }
        out.freeze()
    }

    /// This command as an AMF0 command message on `stream_id`.
    pub fn to_message(&self, stream_id: u32) -> Message {
        Message {
            csid: COMMAND_CHUNK_STREAM,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id,
            payload: self.encode(),
        }
    }

    /// The `code` of an `onStatus`, or of the info object of an `_error`.
    pub fn status_code(&self) -> Option<&str> {
        match self {
            Command::OnStatus { info, .. } => info.get_str("code"),
            Command::Error { values, .. } => values
                .iter()
                .filter_map(Value::as_object)
                .find_map(|o| o.get_str("code")),
            _ => None,
        }
    }

    /// `onStatus` with the info object SRS sends.
    pub fn on_status(level: &str, code: &str, description: &str) -> Command {
        Command::OnStatus {
            transaction_id: 0.0,
            info: status_info(level, code, description),
        }
    }

    /// The `_result` SRS answers `connect` with.
    pub fn connect_result(transaction_id: f64, object_encoding: f64) -> Command {
        let properties = Object::new()
            .with("fmsVer", "FMS/3,5,3,888")
            .with("capabilities", 127.0)
            .with("mode", 1.0);
        let info = status_info(status::LEVEL_STATUS, status::CONNECT_SUCCESS, "Connection succeeded")
            .with("objectEncoding", object_encoding);
        Command::Result {
            transaction_id,
            values: vec![Value::Object(properties), Value::Object(info)],
        }
    }

    /// `_result` with a null command object and one value, the reply to
    /// `createStream` (the stream id) and to calls needing only an ack.
    pub fn result(transaction_id: f64, value: Value) -> Command {
        Command::Result {
            transaction_id,
            values: vec![Value::Null, value],
        }
    }

    /// `_error` with an SRS-style info object.
    pub fn error(transaction_id: f64, code: &str, description: &str) -> Command {
        Command::Error {
            transaction_id,
            values: vec![
                Value::Null,
                Value::Object(status_info(status::LEVEL_ERROR, code, description)),
            ],
        }
    }
}

/// The `level`/`code`/`description` object status replies carry.
pub fn status_info(level: &str, code: &str, description: &str) -> Object {
    Object::new()
        .with("level", level)
        .with("code", code)
        .with("description", description)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[Value]) -> Bytes {
        amf0::encode_all(v)
    }

    fn connect() -> Command {
        Command::Connect(Connect {
            transaction_id: 1.0,
            properties: Object::new()
                .with("app", "live")
                .with("type", "nonprivate")
                .with("flashVer", "FMLE/3.0 (compatible; FMSc/1.0)")
                .with("tcUrl", "rtmp://example.com/live")
                .with("objectEncoding", 0.0),
            args: vec![],
        })
    }

    #[test]
    fn every_command_round_trips() {
        let all = vec![
            connect(),
            Command::CreateStream { transaction_id: 4.0 },
            Command::ReleaseStream {
                transaction_id: 2.0,
                stream_name: "livestream?token=abc".into(),
            },
            Command::FcPublish {
                transaction_id: 3.0,
                stream_name: "livestream".into(),
            },
            Command::FcUnpublish {
                transaction_id: 6.0,
                stream_name: "livestream".into(),
            },
            Command::Publish {
                transaction_id: 5.0,
                stream_name: "livestream".into(),
                publish_type: Some("live".into()),
            },
            Command::Publish {
                transaction_id: 5.0,
                stream_name: "livestream".into(),
                publish_type: None,
            },
            Command::Play {
                transaction_id: 4.0,
                stream_name: "livestream".into(),
                args: vec![Value::Number(-2000.0)],
            },
            Command::DeleteStream {
                transaction_id: 7.0,
                stream_id: 1.0,
            },
            Command::CloseStream { transaction_id: 0.0 },
            Command::CheckBandwidth { transaction_id: 8.0 },
            Command::GetStreamLength {
                transaction_id: 3.0,
                stream_name: "livestream".into(),
            },
            Command::connect_result(1.0, 3.0),
            Command::result(4.0, Value::Number(1.0)),
            Command::error(2.0, status::CONNECT_REJECTED, "nope"),
            Command::on_status(status::LEVEL_STATUS, status::PUBLISH_START, "Started"),
            Command::Other {
                name: "onBWDone".into(),
                transaction_id: 0.0,
                values: vec![Value::Null],
            },
        ];
        for c in all {
            assert_eq!(Command::decode(&c.encode()), Ok(c.clone()), "{}", c.name());
        }
    }

    #[test]
    fn decodes_what_ffmpeg_sends_for_publish() {
        let payload = values(&[
            "publish".into(),
            Value::Number(5.0),
            Value::Null,
            "livestream?vhost=v.example.com&token=t0k".into(),
            "live".into(),
        ]);
        assert_eq!(
            Command::decode(&payload),
            Ok(Command::Publish {
                transaction_id: 5.0,
                stream_name: "livestream?vhost=v.example.com&token=t0k".into(),
                publish_type: Some("live".into()),
            })
        );
    }

    #[test]
    fn connect_accessors() {
        let Command::Connect(c) = connect() else { unreachable!() };
        assert_eq!(c.app(), Some("live"));
        assert_eq!(c.tc_url(), Some("rtmp://example.com/live"));
        assert_eq!(c.object_encoding(), 0.0);
    }

    #[test]
    fn amf3_command_messages_skip_their_format_byte() {
        let mut payload = vec![0u8];
        payload.extend_from_slice(&Command::CreateStream { transaction_id: 2.0 }.encode());
        let m = Message {
            csid: 3,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF3,
            stream_id: 0,
            payload: payload.into(),
        };
        assert_eq!(
            Command::from_message(&m),
            Ok(Command::CreateStream { transaction_id: 2.0 })
        );
        let video = Message {
            type_id: type_id::VIDEO,
            ..m.clone()
        };
        assert_eq!(Command::from_message(&video), Err(CommandError::NotACommand(9)));
        let empty = Message {
            payload: Bytes::new(),
            ..m
        };
        assert_eq!(Command::from_message(&empty), Err(CommandError::MissingName));
    }

    #[test]
    fn malformed_commands_are_errors() {
        assert_eq!(Command::decode(&[]), Err(CommandError::MissingName));
        assert_eq!(
            Command::decode(&values(&[Value::Number(1.0)])),
            Err(CommandError::MissingName)
        );
        assert_eq!(
            Command::decode(&values(&["play".into()])),
            Err(CommandError::MissingTransactionId("play".into()))
        );
        assert_eq!(
            Command::decode(&values(&["play".into(), 1.0.into(), Value::Null])),
            Err(CommandError::MissingField {
                command: "play",
                field: "a stream name"
            })
        );
        assert_eq!(
            Command::decode(&values(&["publish".into(), 1.0.into(), Value::Null, 5.0.into()])),
            Err(CommandError::MissingField {
                command: "publish",
                field: "a stream name"
            })
        );
        assert_eq!(
            Command::decode(&values(&["connect".into(), 1.0.into(), Value::Null])),
            Err(CommandError::MissingField {
                command: "connect",
                field: "a command object"
            })
        );
        assert!(matches!(
            Command::decode(&[0x02, 0x00, 0x07, b'c']),
            Err(CommandError::Amf0(Amf0Error::Truncated(_)))
        ));
        assert!(matches!(
            Command::decode(
                &values(&["x".into(), 1.0.into()])
                    .iter()
                    .copied()
                    .chain([0x11])
                    .collect::<Vec<_>>()
            ),
            Err(CommandError::Amf0(Amf0Error::UnknownMarker(0x11)))
        ));
        assert_eq!(
            Command::decode(&vec![0x05; MAX_COMMAND_SIZE + 1]),
            Err(CommandError::TooLarge(MAX_COMMAND_SIZE + 1))
        );
    }

    #[test]
    fn preparatory_calls_tolerate_missing_names() {
        assert_eq!(
            Command::decode(&values(&["releaseStream".into(), 2.0.into(), Value::Null])),
            Ok(Command::ReleaseStream {
                transaction_id: 2.0,
                stream_name: String::new()
            })
        );
    }

    #[test]
    fn status_codes_are_found_in_on_status_and_error() {
        let s = Command::on_status(status::LEVEL_ERROR, status::PUBLISH_BAD_NAME, "taken");
        assert_eq!(s.status_code(), Some(status::PUBLISH_BAD_NAME));
        let e = Command::error(1.0, status::CONNECT_REJECTED, "no");
        assert_eq!(e.status_code(), Some(status::CONNECT_REJECTED));
        assert_eq!(Command::result(1.0, Value::Null).status_code(), None);
    }

    #[test]
    fn on_status_needs_an_info_object() {
        assert_eq!(
            Command::decode(&values(&["onStatus".into(), 0.0.into(), Value::Null])),
            Err(CommandError::MissingField {
                command: "onStatus",
                field: "an info object"
            })
        );
    }

    #[test]
    fn to_message_uses_the_command_chunk_stream() {
        let m = Command::CreateStream { transaction_id: 2.0 }.to_message(0);
        assert_eq!((m.csid, m.type_id, m.stream_id), (3, 20, 0));
    }
}
