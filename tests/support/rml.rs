//! An independent RTMP client: the `rml_rtmp` crate's session, driven
//! over a real TcpStream (the digest handshake, `connect`, publish or
//! play, events as they arrive).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use srs_proxy::rtmp::command::status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(15);

pub struct RmlClient {
    /// The connection; tests may read it raw after the session.
    pub tcp: TcpStream,
    session: ClientSession,
    events: VecDeque<ClientSessionEvent>,
}

impl RmlClient {
    /// TCP, the digest handshake rml_rtmp sends, and `connect`.
    pub async fn connect(addr: SocketAddr, app: &str) -> Self {
        Self::try_connect(addr, app).await.expect("connect accepted")
    }

    /// As [`RmlClient::connect`]; `Err` with the description when the
    /// server rejects the `connect`.
    pub async fn try_connect(addr: SocketAddr, app: &str) -> Result<Self, String> {
        let mut tcp = TcpStream::connect(addr).await.expect("connect to proxy");
        let mut hs = Handshake::new(PeerType::Client);
        tcp.write_all(&hs.generate_outbound_p0_and_p1().unwrap()).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let leftover = loop {
            let n = tokio::time::timeout(BOUND, tcp.read(&mut buf))
                .await
                .expect("handshake")
                .unwrap();
            assert!(n > 0, "proxy closed during handshake");
            match hs.process_bytes(&buf[..n]).expect("handshake bytes") {
                HandshakeProcessResult::InProgress { response_bytes } => tcp.write_all(&response_bytes).await.unwrap(),
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    tcp.write_all(&response_bytes).await.unwrap();
                    break remaining_bytes;
                }
            }
        };
        let config = ClientSessionConfig {
            tc_url: Some(format!("rtmp://{addr}/{app}")),
            ..ClientSessionConfig::new()
        };
        let (session, initial) = ClientSession::new(config).unwrap();
        let mut client = RmlClient {
            tcp,
            session,
            events: VecDeque::new(),
        };
        client.apply(initial).await;
        if !leftover.is_empty() {
            let results = client.session.handle_input(&leftover).unwrap();
            client.apply(results).await;
        }
        let request = client.session.request_connection(app.to_string()).unwrap();
        client.apply(vec![request]).await;
        let outcome = client
            .wait_for(|e| {
                matches!(
                    e,
                    ClientSessionEvent::ConnectionRequestAccepted
                        | ClientSessionEvent::ConnectionRequestRejected { .. }
                )
            })
            .await;
        match outcome {
            Some(ClientSessionEvent::ConnectionRequestAccepted) => Ok(client),
            Some(ClientSessionEvent::ConnectionRequestRejected { description }) => Err(description),
            other => Err(format!("no answer to connect: {other:?}")),
        }
    }

    pub async fn apply(&mut self, results: Vec<ClientSessionResult>) {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(packet) => {
                    // A write error means the proxy closed; reads report it.
                    let _ = self.tcp.write_all(&packet.bytes).await;
                }
                ClientSessionResult::RaisedEvent(e) => self.events.push_back(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
    }

    /// The next event, reading from the socket as needed; `None` when the
    /// connection closed.
    pub async fn next_event(&mut self) -> Option<ClientSessionEvent> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let n = match tokio::time::timeout(BOUND, self.tcp.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => return None,
                Err(_) => panic!("no event within {BOUND:?}"),
            };
            let results = self
                .session
                .handle_input(&buf[..n])
                .expect("rml_rtmp accepts what the proxy sends");
            self.apply(results).await;
        }
    }

    pub async fn wait_for(&mut self, pred: impl Fn(&ClientSessionEvent) -> bool) -> Option<ClientSessionEvent> {
        while let Some(e) = self.next_event().await {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    }

    /// Requests publishing; `Ok` on `NetStream.Publish.Start`, otherwise the
    /// status code received (or "closed").
    pub async fn publish(&mut self, name: &str) -> Result<(), String> {
        let r = self
            .session
            .request_publishing(name.to_string(), PublishRequestType::Live)
            .unwrap();
        self.apply(vec![r]).await;
        self.outcome(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
            .await
    }

    pub async fn play(&mut self, name: &str) -> Result<(), String> {
        let r = self.session.request_playback(name.to_string()).unwrap();
        self.apply(vec![r]).await;
        self.outcome(|e| matches!(e, ClientSessionEvent::PlaybackRequestAccepted))
            .await
    }

    pub async fn outcome(&mut self, accepted: impl Fn(&ClientSessionEvent) -> bool) -> Result<(), String> {
        loop {
            match self.next_event().await {
                Some(e) if accepted(&e) => return Ok(()),
                // Informational codes SRS sends around a successful start.
                Some(ClientSessionEvent::UnhandleableOnStatusCode { code })
                    if code == status::PLAY_RESET || code == "NetStream.Data.Start" => {}
                Some(ClientSessionEvent::UnhandleableOnStatusCode { code }) => return Err(code),
                Some(_) => {}
                None => return Err("closed".into()),
            }
        }
    }

    pub async fn video(&mut self, ts: u32, data: Bytes) {
        let r = self
            .session
            .publish_video_data(data, RtmpTimestamp::new(ts), false)
            .unwrap();
        self.apply(vec![r]).await;
    }

    pub async fn audio(&mut self, ts: u32, data: Bytes) {
        let r = self
            .session
            .publish_audio_data(data, RtmpTimestamp::new(ts), false)
            .unwrap();
        self.apply(vec![r]).await;
    }

    pub async fn metadata(&mut self) {
        let mut m = StreamMetadata::new();
        m.video_width = Some(1280);
        m.video_height = Some(720);
        m.encoder = Some("rtmp-test".into());
        let r = self.session.publish_metadata(&m).unwrap();
        self.apply(vec![r]).await;
    }

    /// Whether the proxy closes the connection (reading and discarding
    /// whatever comes first).
    pub async fn closed(mut self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(BOUND, async {
            loop {
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}
