//! Two proxy replicas on one Redis, as behind a UDP load balancer: a
//! WebRTC session signalled through one replica carries its media through
//! the other, which verifies the client's checks with the ice-pwd it reads
//! from the store.

#[path = "support/rtc/mod.rs"]
mod rtc_support;
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rtc_support::origin::RtcOrigin;
use rtc_support::peer::Peer;
use rtc_support::RtcProxy;
use srs_proxy::config::StoreKind;
use srs_proxy::config::WebrtcConfig;
use srs_proxy::rtc::sdp::Sdp;
use srs_proxy::store::{RedisStore, Store};
use support::client;
use support::eventually;
use support::proxy::test_config;
use support::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

/// The answer as a load balancer in front of both replicas would make it
/// work: the candidate port of `from` replaced by `to`'s.
fn via(answer: &str, from: &RtcProxy, to: &RtcProxy) -> String {
    let sdp = Sdp::parse(answer).unwrap();
    assert!(sdp.candidates().iter().all(|c| c.port == from.udp.port()));
    answer.replace(
        &format!(" {} typ ", from.udp.port()),
        &format!(" {} typ ", to.udp.port()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_through_one_replica_media_through_the_other() {
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = RedisServer::shared().config("rtc-replicas");
    let settings = WebrtcConfig {
        idle_timeout: Duration::from_secs(3),
        ..WebrtcConfig::default()
    };
    config.webrtc = settings;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = Store::Redis(RedisStore::connect(&config.redis).await.unwrap());
        replicas.push(RtcProxy::start_with_store(config.clone(), store).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let origin = RtcOrigin::start("origin-r").await;
    a.proxy.ctx.store.upsert_origin(origin.origin(), None).await.unwrap();

    // Publish: signalling through A, media through B.
    let publisher = Peer::publisher().await;
    let reply = a
        .post_sdp("/rtc/v1/whip/?app=live&stream=cam", &publisher.offer().await, &[])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let location = reply.header("location").unwrap().to_string();
    publisher.apply_answer(&via(&reply.text(), a, b)).await;
    assert!(publisher.connected(WAIT).await, "publisher connects through replica B");
    let got = eventually(WAIT, || async { (origin.received("cam").len() >= 5).then_some(()) }).await;
    assert!(got.is_some(), "origin receives the publisher's RTP through B");

    // Play: signalling through B, media through A.
    let mut player = Peer::player().await;
    let reply = b
        .post_sdp("/rtc/v1/whep/?app=live&stream=cam", &player.offer().await, &[])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    player.apply_answer(&via(&reply.text(), b, a)).await;
    assert!(player.connected(WAIT).await, "player connects through replica A");
    assert!(
        player.next_payload(WAIT).await.is_some(),
        "player receives RTP through A"
    );

    for (name, replica) in [("A", a), ("B", b)] {
        let bound = replica.metric("srs_proxy_rtc_stun_bindings_total", &[("result", "bound")]);
        assert_eq!(bound, 1.0, "replica {name} bound the session signalled on the other");
        assert_eq!(replica.metric("srs_proxy_rtc_sessions_active", &[]), 1.0, "{name}");
        assert!(replica.metric("srs_proxy_rtc_packets_total", &[("direction", "in")]) > 0.0);
    }

    // DELETE through A (which signalled the publisher but relays nothing
    // for it) ends the session on the origin, in the store, and on B.
    let reply = client::request(a.api, Method::DELETE, &location, &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let ended = eventually(WAIT, || async {
        (b.metric("srs_proxy_rtc_sessions_total", &[("result", "deleted")]) == 1.0).then_some(())
    })
    .await;
    assert!(ended.is_some(), "B ends the relay of the session deleted through A");
    assert_eq!(b.metric("srs_proxy_rtc_sessions_active", &[]), 0.0);
    assert_eq!(
        a.metric("srs_proxy_rtc_sessions_active", &[]),
        1.0,
        "the player goes on"
    );
}
