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
use super::command::{status, Command, Connect};
use super::conn::{ConnError, MessageReader, MessageWriter};
use super::key::stream_key;
use super::message::{limit_type, type_id, Control, UserControl};
use super::{RtmpError, Settings, CHUNK_SIZE, WINDOW_ACK_SIZE};
use crate::stream_key::{StreamKey, StreamKeyError};
use tokio::io::{AsyncRead, AsyncWrite};

/// Calls replayed to the origin before `createStream` (releaseStream,
/// FCPublish). Clients send one of each; more is not a real client.
const MAX_PRELUDE: usize = 8;
/// The client's commands before publish/play (connect, prelude and
/// createStream among them, kept for the replay) may hold this many bytes
/// together.
pub const MAX_KEPT_BYTES: usize = 128 * 1024;

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
    /// The transaction id of the client's `connect`, to answer it in
    /// kind when the origin replies to the replayed one.
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

pub use crate::claim::Role;

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
    let mut kept = connect_message.payload.len();
    loop {
        let Some((command, message)) = next_command(reader, writer, settings, &mut buffer_millis).await? else {
            continue;
        };
        kept += message.payload.len();
        if kept > MAX_KEPT_BYTES {
            return Err(RtmpError::SetupTooLarge(MAX_KEPT_BYTES));
        }
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

/// Turns a client away before it starts: waits for its `connect` (the
/// caller bounds how long) and answers it with an `_error`
/// `NetConnection.Connect.Rejected` carrying `reason`, then closes.
pub async fn reject_connect<R, W>(reader: &mut MessageReader<R>, writer: &mut MessageWriter<W>, reason: &str)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while let Ok(Some(message)) = reader.read().await {
        if !matches!(message.type_id, type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3) {
            continue;
        }
        if let Ok(Command::Connect(connect)) = Command::from_message(&message) {
            let reply = Command::error(connect.transaction_id, status::CONNECT_REJECTED, reason);
            let _ = writer.send(&reply.to_message(0)).await;
            break;
        }
    }
    let _ = writer.shutdown().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::Object;
    use crate::rtmp::conn::MessageReader;
    use bytes::Bytes;

    fn settings() -> Settings {
        Settings {
            max_message_size: 1 << 20,
            setup_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn call(name: &str, transaction_id: f64, args: &[Value], stream_id: u32) -> Message {
        Command::Other {
            name: name.into(),
            transaction_id,
            values: [&[Value::Null][..], args].concat(),
        }
        .to_message(stream_id)
    }

    fn connect_message() -> Message {
        Command::Connect(Connect {
            transaction_id: 1.0,
            properties: Object::new()
                .with("app", "live")
                .with("tcUrl", "rtmp://media.example.com/live")
                .with("objectEncoding", 3.0),
            args: vec![],
        })
        .to_message(0)
    }

    /// Runs `accept` against `sent`, returning its result and every command
    /// the client was sent back.
    async fn run(sent: Vec<Message>) -> (Result<Request, RtmpError>, Vec<Command>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (server_r, server_w) = tokio::io::split(server);
        let (client_r, client_w) = tokio::io::split(client);
        let mut reader = MessageReader::new(server_r, 1 << 20);
        let mut writer = MessageWriter::new(server_w);
        let mut client_writer = MessageWriter::new(client_w);
        for m in &sent {
            client_writer.send(m).await.unwrap();
        }
        // The client sends nothing more; EOF after its last message.
        client_writer.shutdown().await.unwrap();
        let result = accept(&mut reader, &mut writer, &settings()).await;
        writer.shutdown().await.unwrap();
        let mut client_reader = MessageReader::new(client_r, 1 << 20);
        let mut replies = Vec::new();
        while let Ok(Some(m)) = client_reader.read().await {
            if let Ok(c) = Command::from_message(&m) {
                replies.push(c);
            }
        }
        (result, replies)
    }

    #[tokio::test]
    async fn answers_the_preparatory_calls_and_keeps_the_messages_to_replay() {
        let publish = call("publish", 8.0, &["cam?token=t".into(), "live".into()], 1);
        let sent = vec![
            connect_message(),
            call("releaseStream", 2.0, &["cam?token=t".into()], 0),
            call("FCPublish", 3.0, &["cam?token=t".into()], 0),
            Command::CreateStream { transaction_id: 4.0 }.to_message(0),
            call("_checkbw", 5.0, &[], 0),
            call("getStreamLength", 6.0, &["cam".into()], 1),
            call("FCSubscribe", 7.0, &["cam".into()], 0),
            publish.clone(),
        ];
        let (request, replies) = run(sent.clone()).await;
        let request = request.unwrap();
        assert_eq!(request.role, Role::Publisher);
        assert_eq!(request.key.unwrap().to_string(), "media.example.com/live/cam");
        assert_eq!(request.stream_name, "cam?token=t");
        assert_eq!(request.client_stream_id, 1);
        assert_eq!(request.connect, sent[0]);
        assert_eq!(request.prelude, vec![(2.0, sent[1].clone()), (3.0, sent[2].clone())]);
        assert_eq!(request.create_stream, Some((4.0, sent[3].clone())));
        assert_eq!(request.start, publish);

        let results: Vec<(f64, Vec<Value>)> = replies
            .into_iter()
            .filter_map(|c| match c {
                Command::Result { transaction_id, values } => Some((transaction_id, values)),
                _ => None,
            })
            .collect();
        let ids: Vec<f64> = results.iter().map(|(t, _)| *t).collect();
        assert_eq!(ids, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // connect echoes the client's object encoding; createStream gives 1.
        let info = results[0].1[1].as_object().unwrap();
        assert_eq!(info.get_str("code"), Some("NetConnection.Connect.Success"));
        assert_eq!(info.get_f64("objectEncoding"), Some(3.0));
        assert_eq!(results[3].1[1], Value::Number(1.0));
        assert_eq!(results[5].1[1], Value::Number(0.0));
    }

    #[tokio::test]
    async fn play_with_a_buffer_length_is_a_player_request() {
        let sent = vec![
            connect_message(),
            Command::CreateStream { transaction_id: 2.0 }.to_message(0),
            Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            })
            .to_message(),
            call("play", 3.0, &["cam?vhost=other.example.com".into()], 1),
        ];
        let request = run(sent).await.0.unwrap();
        assert_eq!(request.role, Role::Player);
        assert_eq!(request.buffer_millis, Some(3000));
        assert_eq!(request.key.unwrap().to_string(), "other.example.com/live/cam");
    }

    #[tokio::test]
    async fn out_of_order_or_malformed_setups_are_refused() {
        let (r, _) = run(vec![call("publish", 3.0, &["s".into()], 1)]).await;
        assert!(matches!(r, Err(RtmpError::NotConnected { transaction_id, .. }) if transaction_id == 3.0));

        let (r, _) = run(vec![connect_message(), connect_message()]).await;
        assert!(matches!(r, Err(RtmpError::DuplicateConnect)));

        let (r, _) = run(vec![connect_message(), call("publish", 3.0, &["s".into()], 0)]).await;
        assert!(matches!(r, Err(RtmpError::NoStream(Role::Publisher))));

        let (r, _) = run(vec![connect_message(), call("play", 3.0, &[Value::Null], 1)]).await;
        assert!(matches!(r, Err(RtmpError::ClientCommand(_))));

        let garbage = Message {
            payload: Bytes::from_static(&[0x02, 0x00, 0x09, b'c']),
            ..connect_message()
        };
        let (r, _) = run(vec![garbage]).await;
        assert!(matches!(r, Err(RtmpError::ClientCommand(_))));

        let (r, _) = run(vec![connect_message()]).await;
        assert!(matches!(r, Err(RtmpError::ClientLeft)));
    }

    #[tokio::test]
    async fn media_before_publish_is_dropped_not_fatal() {
        let video = Message {
            csid: 6,
            timestamp: 0,
            type_id: type_id::VIDEO,
            stream_id: 1,
            payload: Bytes::from_static(b"\x17early"),
        };
        let sent = vec![
            connect_message(),
            video,
            Command::CreateStream { transaction_id: 2.0 }.to_message(0),
            call("publish", 3.0, &["s".into()], 1),
        ];
        assert_eq!(run(sent).await.0.unwrap().role, Role::Publisher);
    }
}
