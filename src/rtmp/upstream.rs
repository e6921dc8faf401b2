//! The proxy's connection to the origin, as an RTMP client.
//!
//! It replays what the client sent — `connect` with the original tcUrl and
//! parameters, releaseStream/FCPublish, createStream, then publish or play
//! on the origin's stream id — and swallows the origin's answers to calls
//! the proxy already answered. This module owns that exchange; it connects
//! only to the address of the [`Origin`] the claim returned.

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::amf0::Value;
use super::chunk::Message;
use super::command::Command;
use super::conn::{MessageReader, MessageWriter};
use super::handshake;
use super::message::{type_id, Control, UserControl};
use super::session::Request;
use super::{RtmpError, Settings, CHUNK_SIZE};
use crate::origin::{Origin, Protocol};

/// Transaction id for a createStream the proxy has to send itself (the
/// client skipped it); high enough not to meet a client's own ids.
const OWN_CREATE_STREAM_TRANSACTION: f64 = 1_000_000.0;

/// A connected origin, ready for the relay.
pub struct Upstream {
    pub reader: MessageReader<OwnedReadHalf>,
    pub writer: MessageWriter<OwnedWriteHalf>,
    /// The message stream the origin gave us; the client's is mapped to it.
    pub stream_id: u32,
    /// Transactions the proxy replayed and already answered; late answers
    /// to them must not reach the client.
    pub answered: Vec<f64>,
}

/// Connects to `origin`, replays the client's setup and starts the publish
/// or play there.
pub async fn connect(origin: &Origin, request: &Request, settings: &Settings) -> Result<Upstream, RtmpError> {
    let addr = origin
        .authority(Protocol::Rtmp)
        .ok_or_else(|| RtmpError::NoRtmpPort(origin.id.to_string()))?;
    let mut tcp = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(RtmpError::OriginConnect(addr, e.to_string())),
        Err(_) => {
            return Err(RtmpError::OriginConnect(
                addr,
                format!("timed out after {:?}", settings.connect_timeout),
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    handshake::connect(&mut tcp, settings.handshake_timeout)
        .await
        .map_err(RtmpError::OriginHandshake)?;
    let (r, w) = tcp.into_split();
    let mut up = Upstream {
        reader: MessageReader::new(r, settings.max_message_size),
        writer: MessageWriter::new(w),
        stream_id: 0,
        answered: Vec::new(),
    };
    let timeout = settings.handshake_timeout;
    tokio::time::timeout(timeout, replay(&mut up, request))
        .await
        .map_err(|_| RtmpError::OriginTimeout(timeout))??;
    Ok(up)
}

async fn replay(up: &mut Upstream, request: &Request) -> Result<(), RtmpError> {
    let writer = &mut up.writer;
    writer
        .queue(&Control::SetChunkSize(CHUNK_SIZE).to_message())
        .map_err(origin_io)?;
    writer.queue(&request.connect).map_err(origin_io)?;
    writer.flush().await.map_err(RtmpError::Origin)?;
    up.answered.push(request.connect_transaction);
    expect_result(up, request.connect_transaction, "connect").await?;

    for (transaction, message) in &request.prelude {
        up.writer.queue(message).map_err(origin_io)?;
        up.answered.push(*transaction);
    }
    let (create_transaction, create_message) = match &request.create_stream {
        Some((t, m)) => (*t, m.clone()),
        None => (
            OWN_CREATE_STREAM_TRANSACTION,
            Command::CreateStream {
                transaction_id: OWN_CREATE_STREAM_TRANSACTION,
            }
            .to_message(0),
        ),
    };
    up.writer.queue(&create_message).map_err(origin_io)?;
    up.writer.flush().await.map_err(RtmpError::Origin)?;
    up.answered.push(create_transaction);
    let values = expect_result(up, create_transaction, "createStream").await?;
    up.stream_id = values
        .get(1)
        .and_then(Value::as_f64)
        .filter(|id| id.fract() == 0.0 && *id >= 1.0 && *id <= f64::from(u32::MAX))
        .map(|id| id as u32)
        .ok_or(RtmpError::OriginBadReply("createStream result carries no stream id"))?;

    if let Some(millis) = request.buffer_millis {
        let event = UserControl::SetBufferLength {
            stream_id: up.stream_id,
            millis,
        };
        up.writer.queue(&Control::User(event).to_message()).map_err(origin_io)?;
    }
    let start = Message {
        stream_id: up.stream_id,
        ..request.start.clone()
    };
    up.writer.queue(&start).map_err(origin_io)?;
    up.writer.flush().await.map_err(RtmpError::Origin)?;
    Ok(())
}

/// Reads origin messages until the `_result` of `transaction`, doing the
/// receiver's protocol duties meanwhile. An `_error` is the origin refusing.
async fn expect_result(up: &mut Upstream, transaction: f64, call: &'static str) -> Result<Vec<Value>, RtmpError> {
    loop {
        let message = up
            .reader
            .read()
            .await
            .map_err(RtmpError::Origin)?
            .ok_or(RtmpError::OriginClosed)?;
        let control = Control::decode(&message).map_err(origin_io)?;
        let owed = up.reader.replies_owed(control.as_ref());
        if !owed.is_empty() {
            for c in owed {
                up.writer.queue(&c.to_message()).map_err(origin_io)?;
            }
            up.writer.flush().await.map_err(RtmpError::Origin)?;
        }
        if !matches!(message.type_id, type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3) {
            continue;
        }
        // onBWDone, onStatus of the connection, answers to earlier replays:
        // nothing the client needs before its own publish/play answer.
        match Command::from_message(&message) {
            Ok(Command::Result { transaction_id, values }) if transaction_id == transaction => return Ok(values),
            Ok(error @ Command::Error { .. }) if error.transaction_id() == transaction => {
                return Err(RtmpError::OriginRefused {
                    call,
                    code: error.status_code().unwrap_or("").to_string(),
                    description: description(&error),
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "ignoring an undecodable command from the origin"),
        }
    }
}

fn description(command: &Command) -> String {
    match command {
        Command::Error { values, .. } => values
            .iter()
            .filter_map(Value::as_object)
            .find_map(|o| o.get_str("description"))
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

fn origin_io(e: super::chunk::ChunkError) -> RtmpError {
    RtmpError::Origin(super::conn::ConnError::Chunk(e))
}
