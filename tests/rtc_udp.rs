//! The WebRTC UDP port, driven with hand-made STUN checks against an origin
//! whose UDP socket the test reads: what binds a client address, what
//! moves it, what ends a session, and what is dropped.

#[path = "support/rtc/mod.rs"]
mod rtc_support;
mod support;

use std::time::Duration;

use http::StatusCode;
use rtc_support::origin::{ufrag, RtcOrigin, CANNED_PWD};
use rtc_support::peer::binding_request;
use rtc_support::RtcProxy;
use srs_proxy::config::WebrtcConfig;
use srs_proxy::store::{Session, SessionKind};
use srs_proxy::stream_key::StreamKey;
use support::eventually;
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(10);

fn offer(ufrag: &str) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:clientpwd0123456789abcdef\r\na=recvonly\r\n"
    )
}

async fn setup(settings: WebrtcConfig) -> (RtcOrigin, RtcProxy) {
    let origin = RtcOrigin::canned("origin-udp").await;
    let proxy = RtcProxy::with_origin(&origin, settings).await;
    (origin, proxy)
}

/// Signals a WHEP session; returns the STUN username its client sends.
async fn signal(proxy: &RtcProxy, stream: &str, offer_ufrag: &str) -> String {
    let target = format!("/rtc/v1/whep/?app=live&stream={stream}");
    let reply = proxy.post_sdp(&target, &offer(offer_ufrag), &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    format!("{}:{offer_ufrag}", ufrag(&reply.text()).unwrap())
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf.truncate(n);
    buf
}

/// What a DTLS record looks like to the demultiplexer.
fn dtls(tag: u8) -> Vec<u8> {
    vec![22, 0xfe, 0xfd, tag, 1, 2, 3]
}

fn bindings(proxy: &RtcProxy, result: &str) -> f64 {
    proxy.metric("srs_proxy_rtc_stun_bindings_total", &[("result", result)])
}

#[tokio::test]
async fn only_a_check_whose_integrity_verifies_binds() {
    let (origin, proxy) = setup(WebrtcConfig::default()).await;
    let user = signal(&proxy, "cam", "cli1").await;
    let a = client().await;
    // Wrong key, and no MESSAGE-INTEGRITY at all: nothing is bound or sent.
    a.send_to(&binding_request(&user, Some("not-the-answer-ice-pwd")), proxy.udp)
        .await
        .unwrap();
    a.send_to(&binding_request(&user, None), proxy.udp).await.unwrap();
    a.send_to(&dtls(1), proxy.udp).await.unwrap();
    let good = binding_request(&user, Some(CANNED_PWD));
    a.send_to(&good, proxy.udp).await.unwrap();
    let (relay, first) = origin.recv(WAIT).await.expect("the verified check is relayed");
    assert_eq!(first, good, "the first datagram the origin sees is the verified check");
    assert_eq!(bindings(&proxy, "bad_integrity"), 2.0);
    assert_eq!(bindings(&proxy, "bound"), 1.0);
    assert_eq!(
        proxy.metric(
            "srs_proxy_rtc_datagrams_dropped_total",
            &[("reason", "unknown_address")]
        ),
        1.0
    );
    // Bound: the origin's answer reaches the client, DTLS goes upstream.
    let udp = origin.udp.as_ref().unwrap();
    udp.send_to(b"\x01\x01answer", relay).await.unwrap();
    assert_eq!(recv(&a).await, b"\x01\x01answer");
    a.send_to(&dtls(2), proxy.udp).await.unwrap();
    assert_eq!(origin.recv(WAIT).await.unwrap().1, dtls(2));
}

#[tokio::test]
async fn a_verified_check_from_a_new_address_moves_the_session() {
    let (origin, proxy) = setup(WebrtcConfig::default()).await;
    let user = signal(&proxy, "cam", "cli2").await;
    let udp = origin.udp.as_ref().unwrap();
    let (a, b, c) = (client().await, client().await, client().await);

    a.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    let (relay, _) = origin.recv(WAIT).await.unwrap();
    udp.send_to(&dtls(1), relay).await.unwrap();
    assert_eq!(recv(&a).await, dtls(1));

    // NAT rebinding: the same session, now from B, through the same
    // upstream socket.
    b.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    let (from, _) = origin.recv(WAIT).await.unwrap();
    assert_eq!(from, relay, "one upstream socket per session");
    udp.send_to(&dtls(2), relay).await.unwrap();
    assert_eq!(recv(&b).await, dtls(2));
    // A is no longer bound: its datagram is dropped, B's goes through.
    a.send_to(&dtls(3), proxy.udp).await.unwrap();
    b.send_to(&dtls(4), proxy.udp).await.unwrap();
    assert_eq!(origin.recv(WAIT).await.unwrap().1, dtls(4));

    // An unverified check from C changes nothing.
    c.send_to(&binding_request(&user, Some("wrong-password-0123456789")), proxy.udp)
        .await
        .unwrap();
    c.send_to(&dtls(5), proxy.udp).await.unwrap();
    udp.send_to(&dtls(6), relay).await.unwrap();
    assert_eq!(recv(&b).await, dtls(6));
    b.send_to(&dtls(7), proxy.udp).await.unwrap();
    assert_eq!(origin.recv(WAIT).await.unwrap().1, dtls(7));
    assert!(a.try_recv(&mut [0u8; 64]).is_err(), "A got nothing after the move");
    assert!(c.try_recv(&mut [0u8; 64]).is_err(), "C got nothing");
    assert_eq!(bindings(&proxy, "bad_integrity"), 1.0);

    // A second session gets an upstream socket of its own.
    let other = signal(&proxy, "cam2", "cli3").await;
    c.send_to(&binding_request(&other, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    let (other_relay, _) = origin.recv(WAIT).await.unwrap();
    assert_ne!(other_relay, relay);
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 2.0);
}

#[tokio::test]
async fn an_idle_session_ends_and_leaves_the_store() {
    let settings = WebrtcConfig {
        idle_timeout: Duration::from_millis(400),
        ..WebrtcConfig::default()
    };
    let (origin, proxy) = setup(settings).await;
    let user = signal(&proxy, "cam", "cli4").await;
    let a = client().await;
    a.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    origin.recv(WAIT).await.unwrap();
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 1.0);
    let ended = eventually(WAIT, || async {
        (proxy.metric("srs_proxy_rtc_sessions_total", &[("result", "idle")]) == 1.0).then_some(())
    })
    .await;
    assert!(ended.is_some(), "no packets either way: the session ends");
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 0.0);
    let store = &proxy.proxy.ctx.store;
    assert_eq!(store.touch_session(SessionKind::Rtc, &user, WAIT).await.unwrap(), None);
    // The address is unbound and the username unknown now.
    a.send_to(&dtls(1), proxy.udp).await.unwrap();
    a.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    let unknown = eventually(WAIT, || async {
        (bindings(&proxy, "unknown_username") == 1.0).then_some(())
    })
    .await;
    assert!(unknown.is_some());
    assert_eq!(bindings(&proxy, "bound"), 1.0);
}

#[tokio::test]
async fn removing_the_origin_ends_its_sessions() {
    let (origin, proxy) = setup(WebrtcConfig::default()).await;
    let user = signal(&proxy, "cam", "cli5").await;
    let a = client().await;
    a.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    origin.recv(WAIT).await.unwrap();
    let store = &proxy.proxy.ctx.store;
    assert!(store.remove_origin(&origin.name).await.unwrap());
    let ended = eventually(WAIT, || async {
        (proxy.metric("srs_proxy_rtc_sessions_total", &[("result", "origin_gone")]) == 1.0).then_some(())
    })
    .await;
    assert!(ended.is_some(), "the relay ends when its origin is removed");
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 0.0);
    assert_eq!(store.touch_session(SessionKind::Rtc, &user, WAIT).await.unwrap(), None);
    let dropped = || {
        proxy.metric(
            "srs_proxy_rtc_datagrams_dropped_total",
            &[("reason", "unknown_address")],
        )
    };
    let before = dropped();
    a.send_to(&dtls(1), proxy.udp).await.unwrap();
    let counted = eventually(WAIT, || async { (dropped() == before + 1.0).then_some(()) }).await;
    assert!(counted.is_some(), "media from the old client is dropped");
}

#[tokio::test]
async fn unknown_usernames_are_looked_up_at_a_bounded_rate_into_a_bounded_table() {
    let settings = WebrtcConfig {
        lookup_rate: 1,
        max_sessions: 2,
        ..WebrtcConfig::default()
    };
    let (origin, proxy) = setup(settings).await;
    let spoofer = client().await;
    const SPOOFED: usize = 300;
    for i in 0..SPOOFED {
        let check = binding_request(&format!("spoof{i}:x{i}"), Some("whatever-password-000000"));
        spoofer.send_to(&check, proxy.udp).await.unwrap();
    }
    let settled = eventually(WAIT, || async {
        let seen = bindings(&proxy, "rate_limited") + bindings(&proxy, "unknown_username");
        (seen == SPOOFED as f64).then_some(())
    })
    .await;
    assert!(settled.is_some(), "every spoofed check is accounted for");
    let looked_up = bindings(&proxy, "unknown_username");
    assert!(looked_up >= 1.0, "the first look-up is allowed");
    assert!(
        looked_up <= 10.0,
        "{looked_up} store look-ups for {SPOOFED} spoofed checks at 1/s"
    );

    // Sessions signalled on another replica are adopted from the store,
    // but never more than the table holds.
    let store = &proxy.proxy.ctx.store;
    let session = Session {
        key: StreamKey::new("", "live", "cam").unwrap(),
        origin_id: origin.name.clone(),
        ice_pwd: Some(CANNED_PWD.into()),
    };
    for i in 0..3 {
        store
            .put_session(SessionKind::Rtc, &format!("elsewhere{i}:c{i}"), session.clone(), WAIT)
            .await
            .unwrap();
    }
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = client().await;
        // One look-up per second: wait for each to be answered.
        let user = format!("elsewhere{i}:c{i}");
        let done = eventually(Duration::from_secs(15), || async {
            c.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let outcomes = bindings(&proxy, "bound") + bindings(&proxy, "table_full");
            (outcomes >= (i + 1) as f64).then_some(())
        })
        .await;
        assert!(done.is_some(), "check {i} answered");
        clients.push(c);
    }
    assert_eq!(bindings(&proxy, "bound"), 2.0);
    assert_eq!(bindings(&proxy, "table_full"), 1.0);
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 2.0);
}

/// A STUN header with `length` declared and `body` after it.
fn stun(length: u16, body: &[u8]) -> Vec<u8> {
    let mut raw = vec![0x00, 0x01];
    raw.extend_from_slice(&length.to_be_bytes());
    raw.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    raw.extend_from_slice(&[9; 12]);
    raw.extend_from_slice(body);
    raw
}

fn username_attr(len: usize) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(len as u16).to_be_bytes());
    attr.extend(std::iter::repeat_n(b'u', len));
    attr.resize(attr.len().div_ceil(4) * 4, 0);
    attr
}

#[tokio::test]
async fn hostile_datagrams_are_dropped_alone() {
    let (origin, proxy) = setup(WebrtcConfig::default()).await;
    let user = signal(&proxy, "cam", "cli6").await;
    let mut bad_fingerprint = binding_request(&user, Some(CANNED_PWD));
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xff;
    let overrun = {
        let mut attr = username_attr(8);
        attr[2..4].copy_from_slice(&400u16.to_be_bytes());
        stun(attr.len() as u16, &attr)
    };
    let odd_padding = {
        let mut attr = vec![0x00, 0x06, 0x00, 0x05];
        attr.extend_from_slice(b"abcde");
        stun(attr.len() as u16, &attr)
    };
    let empty_user = stun(4, &username_attr(0));
    let long_user = {
        let attr = username_attr(513);
        stun(attr.len() as u16, &attr)
    };
    let mut random = vec![0u8; 1200];
    let mut x: u32 = 0x1234_5678;
    for b in &mut random {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = (x >> 24) as u8 | 0x40;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("shorter than the header", vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12]),
        ("attribute past the end", overrun),
        ("odd padding", odd_padding),
        ("empty USERNAME", empty_user),
        ("513-byte USERNAME", long_user),
        ("bad FINGERPRINT", bad_fingerprint),
        ("one byte", vec![0x00]),
        ("64 KiB", vec![0u8; 65_507]),
        ("random bytes", random),
    ];
    let hostile = client().await;
    for (_, datagram) in &cases {
        hostile.send_to(datagram, proxy.udp).await.unwrap();
    }
    let counted = eventually(WAIT, || async {
        let n = bindings(&proxy, "malformed")
            + bindings(&proxy, "bad_username")
            + bindings(&proxy, "bad_fingerprint")
            + proxy.metric(
                "srs_proxy_rtc_datagrams_dropped_total",
                &[("reason", "unknown_address")],
            );
        (n == cases.len() as f64).then_some(())
    })
    .await;
    assert!(counted.is_some(), "each hostile datagram is dropped and counted");
    assert_eq!(bindings(&proxy, "bad_username"), 2.0);
    assert_eq!(bindings(&proxy, "bad_fingerprint"), 1.0);
    assert_eq!(bindings(&proxy, "malformed"), 5.0);
    // The session is unharmed: a good check binds and is relayed first.
    let good = binding_request(&user, Some(CANNED_PWD));
    hostile.send_to(&good, proxy.udp).await.unwrap();
    assert_eq!(origin.recv(WAIT).await.unwrap().1, good);
}

#[tokio::test]
async fn draining_keeps_sessions_until_abort_and_adopts_none() {
    let origin = RtcOrigin::canned("origin-drain").await;
    let config = srs_proxy::config::Config {
        // Long enough that the abort below is the test's, not the timer's.
        grace_quit_timeout: Duration::from_secs(60),
        force_quit_timeout: Duration::from_secs(120),
        ..rtc_support::config(WebrtcConfig::default())
    };
    let mut proxy = RtcProxy::configured_with_origin(&origin, config).await;
    let user = signal(&proxy, "cam", "cli7").await;
    let a = client().await;
    a.send_to(&binding_request(&user, Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    origin.recv(WAIT).await.unwrap();
    let store = proxy.proxy.ctx.store.clone();
    let session = Session {
        key: StreamKey::new("", "live", "other").unwrap(),
        origin_id: origin.name.clone(),
        ice_pwd: Some(CANNED_PWD.into()),
    };
    store
        .put_session(SessionKind::Rtc, "elsewhere:b", session.clone(), WAIT)
        .await
        .unwrap();

    proxy.proxy.ctx.shutdown.start_drain();
    // Signalling closes; the running session goes on; a session from the
    // store is not taken.
    let closed = eventually(WAIT, || async { tokio::net::TcpStream::connect(proxy.api).await.err() }).await;
    assert!(closed.is_some(), "the signalling listener is closed");
    a.send_to(&dtls(1), proxy.udp).await.unwrap();
    assert_eq!(origin.recv(WAIT).await.unwrap().1, dtls(1));
    let b = client().await;
    b.send_to(&binding_request("elsewhere:b", Some(CANNED_PWD)), proxy.udp)
        .await
        .unwrap();
    let refused = eventually(WAIT, || async { (bindings(&proxy, "draining") == 1.0).then_some(()) }).await;
    assert!(refused.is_some());
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 1.0);

    proxy.proxy.ctx.shutdown.abort();
    assert_eq!(proxy.drain().await, srs_proxy::server::Stopped::Clean);
    assert_eq!(
        proxy.metric("srs_proxy_rtc_sessions_total", &[("result", "shutdown")]),
        1.0
    );
    assert!(
        store
            .touch_session(SessionKind::Rtc, &user, WAIT)
            .await
            .unwrap()
            .is_some(),
        "at shutdown the record stays, so another replica can take the session over"
    );
}
