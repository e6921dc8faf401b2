//! `make bench`: WebRTC media relay, as a ratio against a baseline measured
//! in the same run: 1200-byte datagrams (an SRTP packet's size) sent from a
//! client socket to the origin's UDP socket directly, then through the
//! proxy's WebRTC port once a verified connectivity check has bound the
//! client. Sent in windows of 32 so the loopback never drops for lack of
//! flow control; losses are counted, not hidden.

#[path = "../tests/support/rtc/mod.rs"]
mod rtc_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use rtc_support::origin::{ufrag, RtcOrigin, CANNED_PWD};
use rtc_support::peer::binding_request;
use rtc_support::RtcProxy;
use srs_proxy::config::WebrtcConfig;
use tokio::net::UdpSocket;

const DATAGRAMS: usize = 50_000;
const WINDOW: usize = 32;
const SIZE: usize = 1200;

/// Sends DATAGRAMS to `to`, each window read back at the origin; returns
/// datagrams per second and how many were lost.
async fn run(client: &UdpSocket, to: SocketAddr, origin: &RtcOrigin) -> (f64, usize) {
    let payload = {
        let mut p = vec![0x80u8; SIZE];
        p[1] = 96;
        p
    };
    let mut lost = 0;
    let start = Instant::now();
    for _ in 0..DATAGRAMS / WINDOW {
        for _ in 0..WINDOW {
            client.send_to(&payload, to).await.unwrap();
        }
        for _ in 0..WINDOW {
            if origin.recv(Duration::from_millis(200)).await.is_none() {
                lost += 1;
            }
        }
    }
    (DATAGRAMS as f64 / start.elapsed().as_secs_f64(), lost)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let origin = RtcOrigin::canned("bench").await;
    let proxy = RtcProxy::with_origin(&origin, WebrtcConfig::default()).await;
    let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:bnch\r\na=ice-pwd:clientpwd0123456789abcdef\r\n";
    let reply = proxy.post_sdp("/rtc/v1/whip/?app=live&stream=bench", offer, &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let user = format!("{}:bnch", ufrag(&reply.text()).unwrap());
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    origin.recv(Duration::from_secs(5)).await.expect("bound");

    let (mut direct, mut proxied, mut losses) = (Vec::new(), Vec::new(), (0, 0));
    for _ in 0..5 {
        let (d, l) = run(&client, origin.rtc, &origin).await;
        direct.push(d);
        losses.0 += l;
        let (p, l) = run(&client, proxy.udp, &origin).await;
        proxied.push(p);
        losses.1 += l;
    }
    let (d, p) = (median(direct), median(proxied));
    println!(
        "webrtc udp relay ({SIZE}-byte datagrams): direct {d:.0}/s, through proxy {p:.0}/s, ratio {:.2}; lost {} direct, {} proxied of {}",
        p / d,
        losses.0,
        losses.1,
        5 * DATAGRAMS
    );
}
