//! An RTMP client built on the proxy's own codec, for what real clients
//! never send (and for asserting message by message what the proxy sends).

use std::net::SocketAddr;
use std::time::Duration;

use srs_proxy::rtmp::amf0::Object;
use srs_proxy::rtmp::chunk::Message;
use srs_proxy::rtmp::command::Command;
use srs_proxy::rtmp::conn::{MessageReader, MessageWriter};
use srs_proxy::rtmp::handshake;
use srs_proxy::rtmp::message::type_id;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::client;

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(15);

pub struct RawClient {
    pub reader: MessageReader<OwnedReadHalf>,
    pub writer: MessageWriter<OwnedWriteHalf>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect to proxy");
        handshake::connect(&mut tcp, BOUND).await.expect("handshake with proxy");
        let (r, w) = tcp.into_split();
        RawClient {
            reader: MessageReader::new(r, 16 << 20),
            writer: MessageWriter::new(w),
        }
    }

    pub async fn send(&mut self, m: &Message) {
        let _ = self.writer.send(m).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.get_mut().write_all(bytes).await;
    }

    /// `connect` with this tcUrl, waiting for the `_result`.
    pub async fn rtmp_connect(&mut self, tc_url: &str, app: &str) {
        let properties = Object::new()
            .with("app", app)
            .with("tcUrl", tc_url)
            .with("objectEncoding", 0.0);
        let connect = Command::Connect(srs_proxy::rtmp::command::Connect {
            transaction_id: 1.0,
            properties,
            args: vec![],
        });
        self.send(&connect.to_message(0)).await;
        match self.next_command().await {
            Some(Command::Result { transaction_id, .. }) => assert_eq!(transaction_id, 1.0),
            other => panic!("connect answered with {other:?}"),
        }
    }

    /// createStream, returning the stream id the proxy gave.
    pub async fn create_stream(&mut self) -> u32 {
        self.send(&Command::CreateStream { transaction_id: 2.0 }.to_message(0))
            .await;
        loop {
            match self.next_command().await {
                Some(Command::Result {
                    transaction_id: 2.0,
                    values,
                }) => return values[1].as_f64().unwrap() as u32,
                Some(_) => {}
                None => panic!("closed before createStream result"),
            }
        }
    }

    pub async fn next_command(&mut self) -> Option<Command> {
        loop {
            let m = tokio::time::timeout(BOUND, self.reader.read())
                .await
                .expect("reply within bound");
            match m {
                Ok(Some(m)) if m.type_id == type_id::COMMAND_AMF0 => {
                    let c = Command::from_message(&m).unwrap();
                    if c.name() != "onBWDone" {
                        return Some(c);
                    }
                }
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// Whether the proxy closes the connection.
    pub async fn closed(mut self) -> bool {
        client::closed_within(self.reader.get_mut(), BOUND).await
    }
}
