//! An RTMP connection after the handshake: whole messages in and out.
//!
//! [`MessageReader`] and [`MessageWriter`] wrap the two halves of a socket
//! with the framing state of their direction (the peer's chunk size on the
//! way in, ours on the way out) and the acknowledgement bookkeeping the
//! protocol asks of a receiver. Buffers are bounded: the reader keeps only
//! the bytes of a chunk header it cannot parse yet (payload goes straight
//! into the message being assembled) and the writer holds one encoded
//! message at a time, so a slow peer slows its sender instead of growing
//! memory.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunk::{read_u32, ChunkDecoder, ChunkEncoder, ChunkError, Message};
use super::message::{type_id, Control, UserControl};

/// How much to ask the socket for per read.
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("connection closed in the middle of a chunk")]
    Truncated,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// Reads messages from one peer.
pub struct MessageReader<R> {
    io: R,
    /// Bytes read but not yet decoded into messages.
    buf: BytesMut,
    decoder: ChunkDecoder,
    /// Bytes read from the peer so far; acknowledgements report it.
    received: u64,
    /// The peer's acknowledgement window (Window Acknowledgement Size it
    /// sent); 0 until it sends one.
    window: u32,
    /// `received` when we last acknowledged.
    acked: u64,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(io: R, max_message_size: u32) -> Self {
        MessageReader {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            decoder: ChunkDecoder::new(max_message_size),
            received: 0,
            window: 0,
            acked: 0,
        }
    }

    /// The next message, or `None` when the peer closed the connection
    /// between chunks.
    pub async fn read(&mut self) -> Result<Option<Message>, ConnError> {
        loop {
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                if message.type_id == type_id::WINDOW_ACK_SIZE {
                    self.window = read_u32(&message.payload, "Window Acknowledgement Size")?;
                }
                return Ok(Some(message));
            }
            self.buf.reserve(READ_SIZE);
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated)
                };
            }
            self.received += n as u64;
        }
    }

    /// The acknowledgement owed to the peer, if a full window has arrived
    /// since the last one. The sequence number wraps at 32 bits as the
    /// protocol says.
    pub fn ack_due(&mut self) -> Option<Control> {
        if self.window == 0 || self.received - self.acked < u64::from(self.window) {
            return None;
        }
        self.acked = self.received;
        Some(Control::Acknowledgement(self.received as u32))
    }

    /// The replies the protocol owes the peer after reading a message whose
    /// control content (if any) is `control`: an acknowledgement once a
    /// window has filled, and the answer to a ping. Set Peer Bandwidth is
    /// not answered; neither SRS nor FFmpeg expects it.
    pub fn replies_owed(&mut self, control: Option<&Control>) -> Vec<Control> {
        let mut owed = Vec::new();
        owed.extend(self.ack_due());
        if let Some(Control::User(UserControl::PingRequest(t))) = control {
            owed.push(Control::User(UserControl::PingResponse(*t)));
        }
        owed
    }

    /// Changes the largest message accepted from now on (see
    /// [`ChunkDecoder::set_max_message_size`]).
    pub fn set_max_message_size(&mut self, max_message_size: u32) {
        self.decoder.set_max_message_size(max_message_size);
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }
}

/// Writes messages to one peer.
pub struct MessageWriter<W> {
    io: W,
    encoder: ChunkEncoder,
    /// Encoded chunks queued until the next flush, so a burst of replies
    /// leaves in one write.
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    pub fn new(io: W) -> Self {
        MessageWriter {
            io,
            encoder: ChunkEncoder::new(),
            buf: BytesMut::new(),
        }
    }

    /// Encodes a message into the outgoing buffer without writing it, to
    /// batch several small ones into one write.
    pub fn queue(&mut self, message: &Message) -> Result<(), ChunkError> {
        self.encoder.encode(message, &mut self.buf)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Queues and writes one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), ConnError> {
        self.queue(message)?;
        self.flush().await
    }

    /// Our outgoing chunk size (changed by sending Set Chunk Size).
    pub fn chunk_size(&self) -> u32 {
        self.encoder.chunk_size()
    }

    /// Finishes the write side (FIN), after whatever was queued.
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    /// The socket, the framing state of this direction and what is queued
    /// but not written, for a writer that goes on where this one stops.
    pub fn into_parts(self) -> (W, ChunkEncoder, BytesMut) {
        (self.io, self.encoder, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn media(i: u32, len: usize) -> Message {
        Message {
            csid: 6,
            timestamp: i * 40,
            type_id: type_id::VIDEO,
            stream_id: 1,
            payload: Bytes::from(vec![i as u8; len]),
        }
    }

    #[tokio::test]
    async fn messages_cross_a_socket_with_a_chunk_size_change() {
        let (a, b) = tokio::io::duplex(1024);
        let mut writer = MessageWriter::new(a);
        let mut reader = MessageReader::new(b, 1 << 20);
        let sent = vec![
            media(0, 1000),
            Control::SetChunkSize(300).to_message(),
            media(1, 5000),
            media(2, 0),
        ];
        let to_send = sent.clone();
        let send = tokio::spawn(async move {
            for m in &to_send {
                writer.send(m).await.unwrap();
            }
            assert_eq!(writer.chunk_size(), 300);
            writer.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(m) = reader.read().await.unwrap() {
            got.push(m);
        }
        send.await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn acknowledgements_follow_the_peer_window() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = MessageWriter::new(a);
        let mut reader = MessageReader::new(b, 1 << 20);
        writer.send(&Control::WindowAckSize(1000).to_message()).await.unwrap();
        reader.read().await.unwrap();
        assert_eq!(reader.ack_due(), None, "window not yet filled");
        writer.send(&media(1, 2000)).await.unwrap();
        reader.read().await.unwrap();
        let received = reader.received();
        assert!(received > 1000);
        assert_eq!(reader.ack_due(), Some(Control::Acknowledgement(received as u32)));
        assert_eq!(reader.ack_due(), None, "one acknowledgement per window");
    }

    #[tokio::test]
    async fn pings_are_owed_a_response() {
        let (_a, b) = tokio::io::duplex(64);
        let mut reader = MessageReader::new(b, 1 << 20);
        let ping = Control::User(UserControl::PingRequest(42));
        assert_eq!(
            reader.replies_owed(Some(&ping)),
            vec![Control::User(UserControl::PingResponse(42))]
        );
        assert_eq!(reader.replies_owed(Some(&Control::SetChunkSize(10))), vec![]);
        assert_eq!(reader.replies_owed(None), vec![]);
    }

    #[tokio::test]
    async fn eof_mid_chunk_is_truncation_and_between_messages_is_a_clean_close() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = MessageReader::new(b, 1 << 20);
        a.write_all(&[0x03, 0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(reader.read().await, Err(ConnError::Truncated)));

        let (a, b) = tokio::io::duplex(1024);
        let mut reader = MessageReader::new(b, 1 << 20);
        drop(a);
        assert!(matches!(reader.read().await, Ok(None)));
    }

    #[tokio::test]
    async fn a_decoding_error_surfaces_as_a_chunk_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = MessageReader::new(b, 100);
        a.write_all(&[0x03, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            reader.read().await,
            Err(ConnError::Chunk(ChunkError::MessageTooLarge { length: 256, .. }))
        ));
    }
}
