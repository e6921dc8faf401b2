//! Relaying messages between a client and its origin until either side ends.
//!
//! Each direction is a loop that reads one whole message, does the
//! receiver's protocol duties towards the side it came from, rewrites what
//! is connection-specific, and awaits the write to the other side before
//! reading again, so a slow reader slows its writer and nothing queues.
//! What is per connection stays per connection: chunk sizes, window
//! acknowledgements and pings are answered on the leg they arrive on and
//! never forwarded. What names a message stream (every message header, the
//! stream-id events, `deleteStream`) is mapped between the client's stream
//! id and the origin's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Mutex;

use super::chunk::Message;
use super::command::{status, Command};
use super::conn::{ConnError, MessageReader, MessageWriter};
use super::message::{type_id, Control, UserControl};

/// After the origin side ends, how long the client gets to hang up before
/// its socket is dropped: dropping a socket with unread input resets it,
/// which could discard the final status message still in flight.
const LINGER: Duration = Duration::from_secs(1);

/// The client's message stream and the origin's, mapped onto each other.
#[derive(Debug, Clone, Copy)]
pub struct StreamIds {
    pub client: u32,
    pub origin: u32,
}

impl StreamIds {
    fn to_origin(self, id: u32) -> u32 {
        if id == self.client {
            self.origin
        } else {
            id
        }
    }

    fn to_client(self, id: u32) -> u32 {
        if id == self.origin {
            self.client
        } else {
            id
        }
    }
}

/// Why a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client: {0}")]
    Client(ConnError),
    #[error("origin closed the connection")]
    OriginClosed,
    #[error("origin: {0}")]
    Origin(ConnError),
    #[error("origin is gone or the proxy is shutting down")]
    Lost,
}

impl End {
    fn origin_side(&self) -> bool {
        matches!(self, End::OriginClosed | End::Origin(_) | End::Lost)
    }
}

/// One side of the relay: where messages come from, and the writer back to
/// that same peer for acknowledgements and ping responses.
pub struct Side<R, W> {
    pub reader: MessageReader<R>,
    pub writer: MessageWriter<W>,
}

/// Byte counters, taken once per relay rather than per message.
pub struct Counters {
    /// Client to origin.
    pub inbound: IntCounter,
    /// Origin to client.
    pub outbound: IntCounter,
}

/// Relays until one side closes or fails, or `lost` resolves; then closes
/// both. `answered` are transactions whose origin answers the client must
/// not see (the proxy answered them itself). `started` is set when the
/// origin's `NetStream.Publish.Start` or `NetStream.Play.Start` passes: the
/// origin accepted the client's publish or play.
pub async fn relay<CR, CW, OR, OW>(
    client: Side<CR, CW>,
    origin: Side<OR, OW>,
    ids: StreamIds,
    answered: &[f64],
    counters: &Counters,
    lost: impl std::future::Future<Output = ()>,
    started: &AtomicBool,
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    OR: AsyncRead + Unpin,
    OW: AsyncWrite + Unpin,
{
    let Side {
        reader: mut client_reader,
        writer: client_writer,
    } = client;
    let Side {
        reader: mut origin_reader,
        writer: origin_writer,
    } = origin;
    // Both directions write to both peers (forwarded messages one way,
    // protocol replies the other), one message at a time.
    let client_writer = Mutex::new(client_writer);
    let origin_writer = Mutex::new(origin_writer);

    let end = {
        let up = pump(
            &mut client_reader,
            &client_writer,
            &origin_writer,
            |m, c| route_up(m, c, ids),
            &counters.inbound,
        );
        let down = pump(
            &mut origin_reader,
            &origin_writer,
            &client_writer,
            |m, c| {
                let out = route_down(m, c, ids, answered);
                if out.as_ref().is_some_and(|m| starts(m, ids)) {
                    started.store(true, Ordering::Relaxed);
                }
                out
            },
            &counters.outbound,
        );
        tokio::select! {
            r = up => match r {
                Ok(()) => End::ClientClosed,
                Err(Fault::Source(e)) => End::Client(e),
                Err(Fault::Destination(e)) => End::Origin(e),
            },
            r = down => match r {
                Ok(()) => End::OriginClosed,
                Err(Fault::Source(e)) => End::Origin(e),
                Err(Fault::Destination(e)) => End::Client(e),
            },
            _ = lost => End::Lost,
        }
    };

    let mut client_writer = client_writer.into_inner();
    let mut origin_writer = origin_writer.into_inner();
    // Closing the origin leg is what makes the origin unpublish or stop
    // playing; closing the client leg tells the client it is over.
    let _ = origin_writer.shutdown().await;
    let _ = client_writer.shutdown().await;
    if end.origin_side() {
        linger(client_reader.get_mut()).await;
    }
    end
}

/// Which end of a pump failed.
enum Fault {
    Source(ConnError),
    Destination(ConnError),
}

/// Moves messages from `from` to `to` until `from` closes.
async fn pump<R, WB, WT>(
    from: &mut MessageReader<R>,
    back: &Mutex<MessageWriter<WB>>,
    to: &Mutex<MessageWriter<WT>>,
    mut route: impl FnMut(Message, Option<Control>) -> Option<Message>,
    bytes: &IntCounter,
) -> Result<(), Fault>
where
    R: AsyncRead + Unpin,
    WB: AsyncWrite + Unpin,
    WT: AsyncWrite + Unpin,
{
    while let Some(message) = from.read().await.map_err(Fault::Source)? {
        let control = Control::decode(&message).map_err(|e| Fault::Source(ConnError::Chunk(e)))?;
        let owed = from.replies_owed(control.as_ref());
        if !owed.is_empty() {
            let mut back = back.lock().await;
            for c in owed {
                back.queue(&c.to_message())
                    .map_err(|e| Fault::Source(ConnError::Chunk(e)))?;
            }
            back.flush().await.map_err(Fault::Source)?;
        }
        if let Some(out) = route(message, control) {
            let len = out.payload.len() as u64;
            to.lock().await.send(&out).await.map_err(Fault::Destination)?;
            bytes.inc_by(len);
        }
    }
    Ok(())
}

/// Client to origin: what to forward, rewritten for the origin's stream id.
fn route_up(message: Message, control: Option<Control>, ids: StreamIds) -> Option<Message> {
    let mapped = ids.to_origin(message.stream_id);
    match control {
        Some(Control::User(event)) => user_event(message, event, |id| ids.to_origin(id)),
        // Chunk size, window, acknowledgements, bandwidth: per connection.
        Some(_) => None,
        None if is_command(&message) => match Command::from_message(&message) {
            // deleteStream names the stream in its arguments.
            Ok(Command::DeleteStream {
                transaction_id,
                stream_id,
            }) if stream_id == f64::from(ids.client) => Some(Message {
                type_id: type_id::COMMAND_AMF0,
                payload: Command::DeleteStream {
                    transaction_id,
                    stream_id: f64::from(ids.origin),
                }
                .encode(),
                stream_id: mapped,
                ..message
            }),
            _ => Some(restream(message, mapped)),
        },
        None => Some(restream(message, mapped)),
    }
}

/// Origin to client: what to forward, rewritten for the client's stream id,
/// minus answers to calls the proxy replayed.
fn route_down(message: Message, control: Option<Control>, ids: StreamIds, answered: &[f64]) -> Option<Message> {
    let mapped = ids.to_client(message.stream_id);
    match control {
        Some(Control::User(event)) => user_event(message, event, |id| ids.to_client(id)),
        Some(_) => None,
        None if is_command(&message) => match Command::from_message(&message) {
            Ok(Command::Result { transaction_id, .. } | Command::Error { transaction_id, .. })
                if answered.contains(&transaction_id) =>
            {
                None
            }
            Ok(status @ Command::OnStatus { .. }) => {
                tracing::debug!(code = status.status_code().unwrap_or(""), "origin status");
                Some(restream(message, mapped))
            }
            _ => Some(restream(message, mapped)),
        },
        None => Some(restream(message, mapped)),
    }
}

/// Whether `message` (on its way to the client) is the origin accepting the
/// client's publish or play.
fn starts(message: &Message, ids: StreamIds) -> bool {
    message.stream_id == ids.client
        && is_command(message)
        && Command::from_message(message).is_ok_and(|c| {
            matches!(c, Command::OnStatus { .. })
                && matches!(c.status_code(), Some(status::PUBLISH_START | status::PLAY_START))
        })
}

/// User control events: pings are answered per leg; events about a stream
/// follow the stream id mapping; anything else passes as sent.
fn user_event(message: Message, event: UserControl, map: impl Fn(u32) -> u32) -> Option<Message> {
    match event {
        UserControl::PingRequest(_) | UserControl::PingResponse(_) => None,
        e => match e.stream_id() {
            Some(id) => Some(Message {
                timestamp: message.timestamp,
                ..Control::User(e.with_stream_id(map(id))).to_message()
            }),
            None => Some(message),
        },
    }
}

fn is_command(message: &Message) -> bool {
    matches!(message.type_id, type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3)
}

fn restream(message: Message, stream_id: u32) -> Message {
    Message { stream_id, ..message }
}

/// Reads and discards what the client still sends, until it hangs up or
/// [`LINGER`] passes.
pub(super) async fn linger<R: AsyncRead + Unpin>(io: &mut R) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::Value;
    use bytes::Bytes;

    const IDS: StreamIds = StreamIds { client: 1, origin: 7 };

    fn media(stream_id: u32) -> Message {
        Message {
            csid: 6,
            timestamp: 40,
            type_id: type_id::VIDEO,
            stream_id,
            payload: Bytes::from_static(b"frame"),
        }
    }

    fn route_up_raw(m: Message) -> Option<Message> {
        let control = Control::decode(&m).unwrap();
        route_up(m, control, IDS)
    }

    fn route_down_raw(m: Message, answered: &[f64]) -> Option<Message> {
        let control = Control::decode(&m).unwrap();
        route_down(m, control, IDS, answered)
    }

    #[test]
    fn media_follows_the_stream_id_mapping_both_ways() {
        assert_eq!(route_up_raw(media(1)).unwrap(), media(7));
        assert_eq!(route_down_raw(media(7), &[]).unwrap(), media(1));
        // The connection's stream 0 is the same on both legs.
        assert_eq!(route_up_raw(media(0)).unwrap().stream_id, 0);
        assert_eq!(route_down_raw(media(0), &[]).unwrap().stream_id, 0);
    }

    #[test]
    fn per_connection_control_is_never_forwarded() {
        for c in [
            Control::SetChunkSize(4096),
            Control::WindowAckSize(1),
            Control::Acknowledgement(5),
            Control::Abort(3),
            Control::SetPeerBandwidth { size: 1, limit: 2 },
            Control::User(UserControl::PingRequest(1)),
            Control::User(UserControl::PingResponse(1)),
        ] {
            assert_eq!(route_up_raw(c.to_message()), None, "{c:?}");
            assert_eq!(route_down_raw(c.to_message(), &[]), None, "{c:?}");
        }
    }

    #[test]
    fn stream_events_are_rewritten() {
        let begin = Control::User(UserControl::StreamBegin(7)).to_message();
        assert_eq!(
            Control::decode(&route_down_raw(begin, &[]).unwrap()).unwrap(),
            Some(Control::User(UserControl::StreamBegin(1)))
        );
        let buffer = Control::User(UserControl::SetBufferLength {
            stream_id: 1,
            millis: 3000,
        })
        .to_message();
        assert_eq!(
            Control::decode(&route_up_raw(buffer).unwrap()).unwrap(),
            Some(Control::User(UserControl::SetBufferLength {
                stream_id: 7,
                millis: 3000
            }))
        );
    }

    #[test]
    fn delete_stream_names_the_origin_stream() {
        let delete = Command::DeleteStream {
            transaction_id: 6.0,
            stream_id: 1.0,
        }
        .to_message(0);
        let out = route_up_raw(delete).unwrap();
        assert_eq!(
            Command::from_message(&out).unwrap(),
            Command::DeleteStream {
                transaction_id: 6.0,
                stream_id: 7.0
            }
        );
        assert_eq!(out.stream_id, 0);
    }

    #[test]
    fn answers_to_replayed_calls_are_swallowed_but_status_passes() {
        let answer = Command::result(4.0, Value::Number(7.0)).to_message(0);
        assert_eq!(route_down_raw(answer.clone(), &[1.0, 4.0]), None);
        assert!(route_down_raw(answer, &[1.0]).is_some());
        let status = Command::on_status("error", "NetStream.Publish.BadName", "taken").to_message(7);
        let out = route_down_raw(status, &[1.0, 4.0]).unwrap();
        assert_eq!(out.stream_id, 1);
        assert_eq!(
            Command::from_message(&out).unwrap().status_code(),
            Some("NetStream.Publish.BadName")
        );
    }

    #[test]
    fn commands_keep_their_bytes() {
        let other = Command::Other {
            name: "@setDataFrame".into(),
            transaction_id: 0.0,
            values: vec![Value::Null],
        }
        .to_message(1);
        let out = route_up_raw(other.clone()).unwrap();
        assert_eq!(out.payload, other.payload);
        assert_eq!(out.stream_id, 7);
    }
}
