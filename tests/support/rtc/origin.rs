//! A fake SRS WebRTC origin: SRS's HTTP API for WebRTC on 127.0.0.1:0
//! (WHIP/WHEP, the JSON `/rtc/v1/publish|play/`, `DELETE` of a session)
//! and its media on ONE UDP port.
//!
//! Two engines:
//!
//! * [`RtcOrigin::start`] terminates ICE/DTLS/SRTP with webrtc-rs behind a
//!   UDP mux (one port for every session) and is ICE-lite like SRS, so it
//!   never sends a check of its own: media reaches it only through the
//!   candidate in its answer, which the proxy rewrites to itself. It
//!   records the RTP payloads publishers send and plays numbered RTP
//!   packets to players.
//! * [`RtcOrigin::canned`] answers a fixed SDP (known ufrag and ice-pwd)
//!   and hands its UDP socket to the test, which sees exactly the
//!   datagrams the proxy relays and can answer them.
//!
//! Every request is recorded (method, target, Host, Authorization, body).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use srs_proxy::origin::{Origin, OriginSource, Ports};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// ice-pwd of every canned answer.
pub const CANNED_PWD: &str = "cannedoriginicepwd0123456789";

/// How the origin answers offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    /// A real (or canned) SDP answer.
    Normal,
    /// `201` with a body that is not SDP.
    Garbage,
    /// An SDP answer whose only candidates the proxy cannot relay.
    NoUsableCandidate,
}

/// One request the origin received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
}

struct Shared {
    name: String,
    api: Option<API>,
    /// The canned engine's UDP port.
    canned_port: Option<u16>,
    answering: Mutex<Answering>,
    requests: Mutex<Vec<Recorded>>,
    /// RTP payloads received from publishers, by stream.
    received: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    /// Live peer connections by session (`answer ufrag:offer ufrag`).
    sessions: Mutex<HashMap<String, Arc<RTCPeerConnection>>>,
    next_ufrag: AtomicU32,
    stop: CancellationToken,
}

/// A running fake origin; stops when dropped.
pub struct RtcOrigin {
    pub name: String,
    /// The HTTP API (`api` port).
    pub api: SocketAddr,
    /// The WebRTC UDP port (`rtc` port).
    pub rtc: SocketAddr,
    /// The canned engine's socket, for the test to read and answer.
    pub udp: Option<Arc<UdpSocket>>,
    shared: Arc<Shared>,
}

impl Drop for RtcOrigin {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// The webrtc-rs API both the origin and the test peers build on:
/// default codecs and interceptors, loopback only, no mDNS.
pub fn webrtc_api(mut settings: SettingEngine) -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry = register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

impl RtcOrigin {
    /// An origin terminating WebRTC with webrtc-rs (ICE-lite, one UDP port).
    pub async fn start(name: &str) -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtc = udp.local_addr().unwrap();
        let mux = UDPMuxDefault::new(UDPMuxParams::new(udp));
        let mut settings = SettingEngine::default();
        settings.set_lite(true);
        settings.set_udp_network(UDPNetwork::Muxed(mux));
        // SRS answers a=setup:passive: the client starts DTLS.
        settings.set_answering_dtls_role(DTLSRole::Server).unwrap();
        Self::serve(name, Some(webrtc_api(settings)), rtc, None).await
    }

    /// An origin answering a fixed SDP; the test owns its UDP socket.
    pub async fn canned(name: &str) -> Self {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let rtc = udp.local_addr().unwrap();
        Self::serve(name, None, rtc, Some(udp)).await
    }

    async fn serve(name: &str, api: Option<API>, rtc: SocketAddr, udp: Option<Arc<UdpSocket>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            api,
            canned_port: udp.as_ref().map(|_| rtc.port()),
            answering: Mutex::new(Answering::Normal),
            requests: Mutex::default(),
            received: Mutex::default(),
            sessions: Mutex::default(),
            next_ufrag: AtomicU32::new(1),
            stop: CancellationToken::new(),
        });
        let server = shared.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    _ = server.stop.cancelled() => return,
                };
                let shared = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, api_addr, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Self {
            name: name.to_string(),
            api: api_addr,
            rtc,
            udp,
            shared,
        }
    }

    /// The registration the proxy routes by: `api` and `rtc` ports.
    pub fn origin(&self) -> Origin {
        Origin {
            id: self.name.as_str().into(),
            ip: "127.0.0.1".into(),
            ports: Ports {
                api: Some(self.api.port()),
                rtc: Some(self.rtc.port()),
                ..Ports::default()
            },
            source: OriginSource::Static,
            weight: 1,
            max_streams: 0,
            pool: None,
            registered_by: None,
        }
    }

    pub fn answer_with(&self, answering: Answering) {
        *self.shared.answering.lock().unwrap() = answering;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// RTP payloads publishers sent for `stream`, in arrival order.
    pub fn received(&self, stream: &str) -> Vec<Vec<u8>> {
        self.shared
            .received
            .lock()
            .unwrap()
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// Sessions the origin holds.
    pub fn sessions(&self) -> Vec<String> {
        self.shared.sessions.lock().unwrap().keys().cloned().collect()
    }

    /// The canned engine's next datagram from the proxy.
    pub async fn recv(&self, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        let udp = self.udp.as_ref().expect("canned origin");
        let mut buf = vec![0u8; 65_536];
        match tokio::time::timeout(wait, udp.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => Some((from, buf[..n].to_vec())),
            _ => None,
        }
    }
}

fn full(data: impl Into<Bytes>) -> http_body_util::Full<Bytes> {
    Full::new(data.into())
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    resp
}

/// A local VP8 video track.
pub fn vp8_track(stream_id: &str) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            ..Default::default()
        },
        "video".into(),
        stream_id.into(),
    ))
}

/// A numbered RTP packet (one frame per packet, 30 fps at 90 kHz).
pub fn rtp(seq: u16, payload: String) -> Packet {
    Packet {
        header: Header {
            version: 2,
            marker: true,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

/// The first `a=ice-ufrag:` of an SDP.
pub fn ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_string)
}

fn param(query: &str, name: &str) -> Option<String> {
    srs_proxy::stream_key::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

async fn handle(shared: &Arc<Shared>, api_addr: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (host, authorization) = (header(header::HOST), header(header::AUTHORIZATION));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    shared.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        target,
        host,
        authorization,
        body: body.clone(),
    });
    let json = path.starts_with("/rtc/v1/publish") || path.starts_with("/rtc/v1/play");
    let play = path.starts_with("/rtc/v1/whep") || path.starts_with("/rtc/v1/play");
    match method {
        Method::DELETE => {
            let session = param(&query, "session").unwrap_or_default();
            let pc = shared.sessions.lock().unwrap().remove(&session);
            match pc {
                Some(pc) => {
                    let _ = pc.close().await;
                    reply(StatusCode::OK, "text/plain", "")
                }
                None => reply(StatusCode::NOT_FOUND, "text/plain", "no such session\n"),
            }
        }
        Method::POST => {
            let (offer, stream) = if json {
                let v: serde_json::Value = match serde_json::from_str(&body) {
                    Ok(v) => v,
                    Err(_) => return reply(StatusCode::BAD_REQUEST, "text/plain", "bad json\n"),
                };
                let url = v["streamurl"].as_str().unwrap_or("").to_string();
                let stream = url
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                (v["sdp"].as_str().unwrap_or("").to_string(), stream)
            } else {
                (body, param(&query, "stream").unwrap_or_default())
            };
            let answering = *shared.answering.lock().unwrap();
            if answering == Answering::Garbage {
                return reply(StatusCode::CREATED, "application/sdp", "this is not an answer\n");
            }
            let answer = match answer(shared, &offer, &stream, play, answering).await {
                Ok(a) => a,
                Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            };
            let session = format!("{}:{}", ufrag(&answer).unwrap(), ufrag(&offer).unwrap_or_default());
            if json {
                let body = serde_json::json!({
                    "code": 0,
                    "server": shared.name,
                    "sdp": answer,
                    "sessionid": session,
                });
                return reply(StatusCode::OK, "application/json", body.to_string());
            }
            let app = param(&query, "app").unwrap_or_default();
            let resource = format!("/rtc/v1/whip/?action=delete&token=tok&app={app}&stream={stream}&session={session}");
            // WHIP answers an absolute Location on the origin (the proxy
            // must turn it into one on itself); WHEP a relative one, as SRS.
            let location = if play {
                resource
            } else {
                format!("http://{api_addr}{resource}")
            };
            let mut resp = reply(StatusCode::CREATED, "application/sdp", answer);
            resp.headers_mut().insert(header::LOCATION, location.parse().unwrap());
            resp
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "no\n"),
    }
}

async fn answer(
    shared: &Arc<Shared>,
    offer: &str,
    stream: &str,
    play: bool,
    answering: Answering,
) -> Result<String, String> {
    let Some(api) = shared.api.as_ref() else {
        return Ok(canned_answer(shared, answering));
    };
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .map_err(|e| e.to_string())?,
    );
    if play {
        let track = vp8_track(&shared.name);
        let sender = pc
            .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .map_err(|e| e.to_string())?;
        // Reading RTCP keeps the interceptors running.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
        let stop = shared.stop.clone();
        let stream = stream.to_string();
        let writer = pc.clone();
        tokio::spawn(async move {
            let mut seq: u16 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
                if matches!(writer.connection_state(), S::Closed | S::Failed) {
                    return;
                }
                let _ = track.write_rtp(&rtp(seq, format!("origin:{stream}:{seq}"))).await;
                seq = seq.wrapping_add(1);
            }
        });
    } else {
        let shared = shared.clone();
        let stream = stream.to_string();
        pc.on_track(Box::new(move |track, _, _| {
            let shared = shared.clone();
            let stream = stream.clone();
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Ok((packet, _)) = track.read_rtp().await {
                        shared
                            .received
                            .lock()
                            .unwrap()
                            .entry(stream.clone())
                            .or_default()
                            .push(packet.payload.to_vec());
                    }
                });
            })
        }));
    }
    let offer = RTCSessionDescription::offer(offer.to_string()).map_err(|e| e.to_string())?;
    pc.set_remote_description(offer).await.map_err(|e| e.to_string())?;
    let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await.map_err(|e| e.to_string())?;
    let _ = gathered.recv().await;
    let sdp = pc.local_description().await.ok_or("no local description")?.sdp;
    let session = format!(
        "{}:{}",
        ufrag(&sdp).unwrap_or_default(),
        ufrag(&pc.remote_description().await.unwrap().sdp).unwrap_or_default()
    );
    shared.sessions.lock().unwrap().insert(session, pc);
    let sdp = if answering == Answering::NoUsableCandidate {
        sdp.replace(" udp ", " tcp ").replace(" UDP ", " TCP ")
    } else {
        sdp
    };
    Ok(sdp)
}

/// A fixed SRS-like answer on the canned UDP port, with candidates the
/// proxy must drop (TCP, another port).
fn canned_answer(shared: &Shared, answering: Answering) -> String {
    let port = shared.canned_port.expect("canned origin");
    let n = shared.next_ufrag.fetch_add(1, Ordering::SeqCst);
    let udp_port = if answering == Answering::NoUsableCandidate {
        port.wrapping_add(1)
    } else {
        port
    };
    format!(
        "v=0\r\n\
o=SRS/6.0.0(Fake) 1 2 IN IP4 0.0.0.0\r\n\
s=SRSPublishSession\r\n\
t=0 0\r\n\
a=ice-lite\r\n\
a=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:orig{n:04}\r\n\
a=ice-pwd:{CANNED_PWD}\r\n\
a=fingerprint:sha-256 00:11:22\r\n\
a=setup:passive\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=candidate:0 1 udp 2130706431 127.0.0.1 {udp_port} typ host generation 0\r\n\
a=candidate:1 1 tcp 2130706430 127.0.0.1 {port} typ host tcptype passive\r\n\
a=candidate:2 1 udp 2130706429 127.0.0.1 {} typ host generation 0\r\n",
        port.wrapping_add(7)
    )
}
