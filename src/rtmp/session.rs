//! The client side of a connection until it publishes or plays.
//!
//! The proxy cannot know the origin before the stream name arrives, so it
//! answers `connect` and the preparatory calls itself, the way SRS would,
//! and keeps the client's own messages so the origin connection can replay
//! them. This module owns that conversation and ends with a [`Request`]; it
//! does not touch the store or the origin.

use std::time::Duration;

use super::amf0::Value;
use super::chunk::Message;
use super::command::{Command, Connect};
use super::conn::{ConnError, MessageReader, MessageWriter};
use super::key::stream_key;
use super::message::{limit_type, type_id, Control, UserControl};
use super::{RtmpError, Settings, CHUNK_SIZE, WINDOW_ACK_SIZE};
use crate::stream_key::{StreamKey, StreamKeyError};
use tokio::io::{AsyncRead, AsyncWrite};

/// Calls replayed to the origin before `createStream` (releaseStream,
/// FCPublish). Clients send one of each; more is not a real client.
const MAX_PRELUDE: usize = 8;

/// What the client asked for, and its messages to replay to the origin.
#[derive(Debug)]
pub struct Request {
    pub role: Role,
    /// The key for routing, or why the names do not make one (the client
    /// is told on its stream).
    pub key: Result<StreamKey, StreamKeyError>,
    /// The stream name as sent, parameters included, for logs.
    pub stream_name: String,
    /// The message stream the client publishes or plays on.
    pub client_stream_id: u32,
    /// The client's `connect`, replayed verbatim so the origin sees the
    /// original tcUrl and parameters.
    pub connect: Message,
    pub connect_transaction: f64,
    /// releaseStream/FCPublish as sent, with their transaction ids.
    pub prelude: Vec<(f64, Message)>,
    /// The client's createStream, if it sent one.
    pub create_stream: Option<(f64, Message)>,
    /// The publish or play message as sent: the stream name with its query
    /// reaches the origin unchanged.
    pub start: Message,
    /// Buffer length a player announced before `play`.
    pub buffer_millis: Option<u32>,
}

/// Whether the client sends the stream or receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Player,
}

impl Role {
    /// Metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Player => "player",
        }
    }
}

/// Reads the client's commands, answering them, until it publishes or plays.
pub async fn accept<R, W>(
    reader: &mut MessageReader<R>,
    writer: &mut MessageWriter<W>,
    settings: &Settings,
) -> Result<Request, RtmpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer_millis = None;

    // Nothing but `connect` is acceptable first.
    let (connect, connect_message) = loop {
        let Some((command, message)) = next_command(reader, writer, settings, &mut buffer_millis).await? else {
            continue;
        };
        match command {
            Command::Connect(connect) => {
                for reply in connect_replies(&connect) {
                    writer.queue(&reply).map_err(internal)?;
                }
                writer.flush().await.map_err(RtmpError::Client)?;
                break (connect, message);
            }
            other => {
                return Err(RtmpError::NotConnected {
                    command: other.name().to_string(),
                    transaction_id: other.transaction_id(),
                })
            }
        }
    };

    let mut prelude = Vec::new();
    let mut create_stream = None;
    let mut next_stream_id: u32 = 1;
    loop {
        let Some((command, message)) = next_command(reader, writer, settings, &mut buffer_millis).await? else {
            continue;
        };
        let (role, stream_name) = match command {
            Command::Publish { stream_name, .. } => (Role::Publisher, stream_name),
            Command::Play { stream_name, .. } => (Role::Player, stream_name),
            Command::Connect(_) => return Err(RtmpError::DuplicateConnect),
            other => {
                let reply = match other {
                    Command::ReleaseStream { transaction_id, .. } | Command::FcPublish { transaction_id, .. } => {
                        if prelude.len() < MAX_PRELUDE {
                            prelude.push((transaction_id, message));
                        }
                        Some(Command::result(transaction_id, Value::Undefined))
                    }
                    Command::CreateStream { transaction_id } => {
                        create_stream.get_or_insert((transaction_id, message));
                        let id = next_stream_id;
                        next_stream_id = next_stream_id.saturating_add(1);
                        Some(Command::result(transaction_id, Value::Number(f64::from(id))))
                    }
                    Command::GetStreamLength { transaction_id, .. } => {
                        Some(Command::result(transaction_id, Value::Number(0.0)))
                    }
                    // Calls that expect an answer get an empty one, as SRS
                    // gives.
                    other if other.transaction_id() != 0.0 && !is_reply(&other) => {
                        Some(Command::result(other.transaction_id(), Value::Undefined))
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    writer.send(&reply.to_message(0)).await.map_err(RtmpError::Client)?;
                }
                continue;
            }
        };
        return request(
            role,
            stream_name,
            message,
            (connect, connect_message),
            prelude,
            create_stream,
            buffer_millis,
        );
    }
}

fn request(
    role: Role,
    stream_name: String,
    start: Message,
    (connect, connect_message): (Connect, Message),
    prelude: Vec<(f64, Message)>,
    create_stream: Option<(f64, Message)>,
    buffer_millis: Option<u32>,
) -> Result<Request, RtmpError> {
    // Stream 0 is the connection itself; publishing there means the client
    // skipped createStream, and the origin would not accept it either.
    if start.stream_id == 0 {
        return Err(RtmpError::NoStream(role));
    }
    Ok(Request {
        role,
        key: stream_key(connect.tc_url(), connect.app(), &stream_name),
        stream_name,
        client_stream_id: start.stream_id,
        connect: connect_message,
        connect_transaction: connect.transaction_id,
        prelude,
        create_stream,
        start,
        buffer_millis,
    })
}

/// Reads one message, does what the protocol asks of a receiver, and
/// returns it if it is a command (`None` for anything else).
async fn next_command<R, W>(
    reader: &mut MessageReader<R>,
    writer: &mut MessageWriter<W>,
    settings: &Settings,
    buffer_millis: &mut Option<u32>,
) -> Result<Option<(Command, Message)>, RtmpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let message = read(reader, settings.handshake_timeout).await?;
    let control = Control::decode(&message).map_err(|e| RtmpError::Client(ConnError::Chunk(e)))?;
    let owed = reader.replies_owed(control.as_ref());
    if !owed.is_empty() {
        for c in owed {
            writer.queue(&c.to_message()).map_err(internal)?;
        }
        writer.flush().await.map_err(RtmpError::Client)?;
    }
    if let Some(Control::User(UserControl::SetBufferLength { millis, .. })) = control {
        *buffer_millis = Some(millis);
    }
    // Media or data before publish has nowhere to go and is dropped.
    if !matches!(message.type_id, type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3) {
        return Ok(None);
    }
    let command = Command::from_message(&message).map_err(RtmpError::ClientCommand)?;
    Ok(Some((command, message)))
}

fn is_reply(command: &Command) -> bool {
    matches!(
        command,
        Command::Result { .. } | Command::Error { .. } | Command::OnStatus { .. }
    )
}

/// What SRS sends for a `connect`: window and bandwidth, its chunk size,
/// the `_result`, then `onBWDone` (which old Flash clients wait for).
fn connect_replies(connect: &Connect) -> Vec<Message> {
    vec![
        Control::WindowAckSize(WINDOW_ACK_SIZE).to_message(),
        Control::SetPeerBandwidth {
            size: WINDOW_ACK_SIZE,
            limit: limit_type::DYNAMIC,
        }
        .to_message(),
        Control::SetChunkSize(CHUNK_SIZE).to_message(),
        Command::connect_result(connect.transaction_id, connect.object_encoding()).to_message(0),
        Command::Other {
            name: "onBWDone".into(),
            transaction_id: 0.0,
            values: vec![Value::Null],
        }
        .to_message(0),
    ]
}

async fn read<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>, idle: Duration) -> Result<Message, RtmpError> {
    match tokio::time::timeout(idle, reader.read()).await {
        Err(_) => Err(RtmpError::ClientIdle(idle)),
        Ok(Err(e)) => Err(RtmpError::Client(e)),
        Ok(Ok(None)) => Err(RtmpError::ClientLeft),
        Ok(Ok(Some(message))) => Ok(message),
    }
}

/// Messages the proxy builds itself always encode; failing to is a bug
/// worth a log line, not a panic.
fn internal(e: super::chunk::ChunkError) -> RtmpError {
    RtmpError::Client(ConnError::Chunk(e))
}
