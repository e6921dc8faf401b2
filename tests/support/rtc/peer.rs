//! WebRTC clients for the tests, on webrtc-rs: a WHIP publisher sending
//! numbered VP8 RTP packets and a WHEP player collecting what it receives;
//! plus STUN connectivity checks built by webrtc-rs's own STUN code, for
//! tests that speak to the proxy's UDP port directly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::stun::agent::TransactionId;
use webrtc::stun::attributes::ATTR_USERNAME;
use webrtc::stun::fingerprint::FINGERPRINT;
use webrtc::stun::integrity::MessageIntegrity;
use webrtc::stun::message::{Message, Setter, BINDING_REQUEST};
use webrtc::stun::textattrs::Username;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

use super::origin::{rtp, vp8_track, webrtc_api};

/// A client peer connection and what it does.
pub struct Peer {
    pub pc: Arc<RTCPeerConnection>,
    /// Payloads a player received, in order.
    pub received: mpsc::UnboundedReceiver<Vec<u8>>,
    sender: Option<JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            s.abort();
        }
        let pc = self.pc.clone();
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
    }
}

async fn new_pc() -> Arc<RTCPeerConnection> {
    let api = webrtc_api(SettingEngine::default());
    Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("peer connection"),
    )
}

/// The complete offer (all candidates gathered, as WHIP/WHEP send it).
pub async fn offer(pc: &RTCPeerConnection) -> String {
    let offer = pc.create_offer(None).await.expect("offer");
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.expect("local description");
    let _ = gathered.recv().await;
    pc.local_description().await.expect("local description").sdp
}

impl Peer {
    /// A publisher with one sendonly VP8 track; it starts sending numbered
    /// payloads `<tag>:<n>` once the answer is applied.
    pub async fn publisher() -> Self {
        let pc = new_pc().await;
        let track = vp8_track("publisher");
        let transceiver = pc
            .add_transceiver_from_track(
                track.clone() as Arc<dyn TrackLocal + Send + Sync>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("transceiver");
        let rtp_sender = transceiver.sender().await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while rtp_sender.read(&mut buf).await.is_ok() {}
        });
        let (_, received) = mpsc::unbounded_channel();
        let sender = tokio::spawn(async move {
            let mut seq: u16 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                // Not bound until DTLS is up: those packets are dropped.
                let _ = track.write_rtp(&rtp(seq, format!("publisher:{seq}"))).await;
                seq = seq.wrapping_add(1);
            }
        });
        Self {
            pc,
            received,
            sender: Some(sender),
        }
    }

    /// A player with one recvonly video transceiver.
    pub async fn player() -> Self {
        let pc = new_pc().await;
        pc.add_transceiver_from_kind(
            RTPCodecType::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await
        .expect("transceiver");
        let (tx, received) = mpsc::unbounded_channel();
        pc.on_track(Box::new(move |track, _, _| {
            let tx = tx.clone();
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Ok((packet, _)) = track.read_rtp().await {
                        if tx.send(packet.payload.to_vec()).is_err() {
                            return;
                        }
                    }
                });
            })
        }));
        Self {
            pc,
            received,
            sender: None,
        }
    }

    pub async fn offer(&self) -> String {
        offer(&self.pc).await
    }

    pub async fn apply_answer(&self, sdp: &str) {
        let answer = RTCSessionDescription::answer(sdp.to_string()).expect("answer");
        self.pc
            .set_remote_description(answer)
            .await
            .expect("remote description");
    }

    /// Waits until the connection is up (ICE and DTLS done).
    pub async fn connected(&self, wait: Duration) -> bool {
        crate::support::eventually(wait, || async {
            (self.pc.connection_state() == RTCPeerConnectionState::Connected).then_some(())
        })
        .await
        .is_some()
    }

    /// The next payload received, if any arrives in `wait`.
    pub async fn next_payload(&mut self, wait: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(wait, self.received.recv()).await.ok().flatten()
    }
}

/// A STUN binding request as an ICE agent sends it: USERNAME, then
/// MESSAGE-INTEGRITY keyed with `pwd` (if any) and FINGERPRINT.
pub fn binding_request(username: &str, pwd: Option<&str>) -> Vec<u8> {
    let mut m = Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(ATTR_USERNAME, username.to_string())),
    ];
    if let Some(pwd) = pwd {
        setters.push(Box::new(MessageIntegrity::new_short_term_integrity(pwd.to_string())));
    }
    setters.push(Box::new(FINGERPRINT));
    m.build(&setters).expect("STUN message");
    m.raw
}
