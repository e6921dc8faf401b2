//! WebRTC through the proxy with real WebRTC stacks on both ends: a WHIP
//! publisher and a WHEP player (webrtc-rs) through the proxy to a fake SRS
//! origin that is ICE-lite and terminates ICE/DTLS/SRTP on one UDP port.

#[path = "support/rtc/mod.rs"]
mod rtc_support;
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use rtc_support::origin::RtcOrigin;
use rtc_support::peer::Peer;
use rtc_support::RtcProxy;
use srs_proxy::config::WebrtcConfig;
use srs_proxy::rtc::sdp::Sdp;
use support::client;
use support::eventually;

const WAIT: Duration = Duration::from_secs(20);

/// Every candidate of an answer points at the proxy's UDP port.
fn assert_points_at(answer: &str, proxy: &RtcProxy) {
    let cands = Sdp::parse(answer).unwrap().candidates();
    assert!(!cands.is_empty(), "answer has candidates:\n{answer}");
    for c in cands {
        assert_eq!((c.transport.as_str(), c.port), ("udp", proxy.udp.port()), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_and_whep_player_through_the_proxy() {
    let origin = RtcOrigin::start("origin-1").await;
    let proxy = RtcProxy::with_origin(&origin, WebrtcConfig::default()).await;

    // Publish with WHIP.
    let publisher = Peer::publisher().await;
    let offer = publisher.offer().await;
    let reply = proxy
        .post_sdp(
            "/rtc/v1/whip/?app=live&stream=cam&token=secret",
            &offer,
            &[("authorization", "Bearer pub-token")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/sdp"));
    assert_points_at(&reply.text(), &proxy);
    let location = reply.header("location").expect("Location").to_string();
    assert!(
        location.starts_with("/rtc/v1/whip/?action=delete&token=tok&app=live&stream=cam&session="),
        "{location}"
    );
    assert!(location.contains("&proxy_session="), "{location}");
    let whip = origin.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(
        whip.target, "/rtc/v1/whip/?app=live&stream=cam&token=secret",
        "query reaches the origin unchanged"
    );
    assert_eq!(whip.authorization.as_deref(), Some("Bearer pub-token"));
    publisher.apply_answer(&reply.text()).await;
    assert!(publisher.connected(WAIT).await, "publisher connects through the proxy");
    let got = eventually(WAIT, || async { (origin.received("cam").len() >= 5).then_some(()) }).await;
    assert!(got.is_some(), "origin receives the publisher's RTP");
    let first = String::from_utf8(origin.received("cam")[0].clone()).unwrap();
    assert!(first.starts_with("publisher:"), "{first}");

    // Play with WHEP.
    let mut player = Peer::player().await;
    let offer = player.offer().await;
    let reply = proxy.post_sdp("/rtc/v1/whep/?app=live&stream=cam", &offer, &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_points_at(&reply.text(), &proxy);
    player.apply_answer(&reply.text()).await;
    assert!(player.connected(WAIT).await, "player connects through the proxy");
    let payload = player.next_payload(WAIT).await.expect("player receives RTP");
    assert!(String::from_utf8(payload).unwrap().starts_with("origin:cam:"));

    // The proxy relayed both ways, and counted it.
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 2.0);
    let moved = eventually(WAIT, || async {
        let inbound = proxy.metric("srs_proxy_rtc_packets_total", &[("direction", "in")]);
        let outbound = proxy.metric("srs_proxy_rtc_packets_total", &[("direction", "out")]);
        (inbound > 10.0 && outbound > 10.0).then_some(())
    })
    .await;
    assert!(moved.is_some(), "packet counters moved");
    assert_eq!(
        proxy.metric("srs_proxy_rtc_stun_bindings_total", &[("result", "bound")]),
        2.0
    );

    // DELETE on the Location reaches the origin and ends the session here.
    assert_eq!(origin.sessions().len(), 2);
    let reply = client::request(proxy.api, Method::DELETE, &location, &[], bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let delete = origin.requests().into_iter().find(|r| r.method == "DELETE").unwrap();
    assert!(!delete.target.contains("proxy_session"), "{}", delete.target);
    assert!(delete
        .target
        .starts_with("/rtc/v1/whip/?action=delete&token=tok&app=live&stream=cam&session="));
    assert_eq!(origin.sessions().len(), 1);
    let ended = eventually(WAIT, || async {
        (proxy.metric("srs_proxy_rtc_sessions_total", &[("result", "deleted")]) == 1.0).then_some(())
    })
    .await;
    assert!(ended.is_some(), "the proxy ended the deleted session");
    assert_eq!(proxy.metric("srs_proxy_rtc_sessions_active", &[]), 1.0);
}

/// A minimal offer as a browser sends one (the canned origin does not
/// look at it beyond its ufrag).
/// An origin whose API port refuses connections.
async fn dead_origin() -> srs_proxy::origin::Origin {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = RtcOrigin::canned("dead").await.origin();
    dead.ports.api = Some(closed);
    dead
}

fn offer(ufrag: &str) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\n\
a=ice-pwd:clientpwd0123456789abcdef\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
a=rtpmap:96 VP8/90000\r\n"
    )
}

#[tokio::test]
async fn srs_json_api_publish_and_play() {
    let origin = RtcOrigin::canned("origin-json").await;
    let proxy = RtcProxy::with_origin(&origin, WebrtcConfig::default()).await;
    for (path, ufrag) in [("/rtc/v1/publish/", "pubA"), ("/rtc/v1/play/", "plyB")] {
        let body = serde_json::json!({
            "api": format!("http://{}{path}", proxy.api),
            "streamurl": "webrtc://media.example.com/live/cam?token=t1",
            "clientip": null,
            "sdp": offer(ufrag),
            "tid": "x1",
        })
        .to_string();
        let reply = client::post(proxy.api, path, body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["code"], 0);
        assert_eq!(json["server"], "origin-json", "other fields pass through");
        let sessionid = json["sessionid"].as_str().unwrap();
        assert!(sessionid.ends_with(&format!(":{ufrag}")), "{sessionid}");
        assert_points_at(json["sdp"].as_str().unwrap(), &proxy);
        let sent = origin.requests().into_iter().rfind(|r| r.method == "POST").unwrap();
        assert_eq!(sent.target, path);
        assert_eq!(sent.body, body, "the JSON offer reaches the origin untouched");
        // The session is recorded under the STUN username the client sends.
        let session = proxy
            .proxy
            .ctx
            .store
            .touch_session(srs_proxy::store::SessionKind::Rtc, sessionid, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("session in the store");
        assert_eq!(session.key.to_string(), "media.example.com/live/cam");
        assert_eq!(session.origin_id, "origin-json");
        assert_eq!(session.ice_pwd.as_deref(), Some(rtc_support::origin::CANNED_PWD));
    }
    // The WebRTC stream is the HTTP-FLV stream of the same name and host.
    let streams = proxy.proxy.ctx.store.list_streams(None, 100).await.unwrap().streams;
    assert_eq!(streams.len(), 1);
    let (flv, _) =
        srs_proxy::stream_key::StreamKey::from_http("/live/cam.flv", None, Some("media.example.com")).unwrap();
    assert_eq!(streams[0].key, flv);
}

#[tokio::test]
async fn answer_candidates_are_rewritten_to_the_public_addresses() {
    let origin = RtcOrigin::canned("origin-cand").await;
    let settings = WebrtcConfig {
        candidate: vec!["203.0.113.7".into(), "localhost".into()],
        ..WebrtcConfig::default()
    };
    let proxy = RtcProxy::with_origin(&origin, settings).await;
    let reply = proxy
        .post_sdp("/rtc/v1/whep/?app=live&stream=cam", &offer("abcd"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let cands = Sdp::parse(&reply.text()).unwrap().candidates();
    let addrs: Vec<&str> = cands.iter().map(|c| c.address.as_str()).collect();
    assert_eq!(addrs[0], "203.0.113.7", "configured order is preference order");
    assert!(addrs.contains(&"127.0.0.1"), "host names are resolved: {addrs:?}");
    assert!(!addrs.contains(&"localhost"));
    assert!(
        cands.iter().all(|c| c.transport == "udp" && c.port == proxy.udp.port()),
        "TCP and other-port candidates are gone, ports are the proxy's: {cands:?}"
    );
    // Without configured addresses the origin's address stays, the port
    // becomes the proxy's, and only the one relayable candidate is left.
    let plain = RtcProxy::with_origin(&origin, WebrtcConfig::default()).await;
    let reply = plain
        .post_sdp("/rtc/v1/whep/?app=live&stream=cam2", &offer("efgh"), &[])
        .await;
    let cands = Sdp::parse(&reply.text()).unwrap().candidates();
    assert_eq!(cands.len(), 1, "{cands:?}");
    assert_eq!(
        (cands[0].address.as_str(), cands[0].port),
        ("127.0.0.1", plain.udp.port())
    );
    // A relative Location gets the session parameter.
    let location = reply.header("location").unwrap();
    assert!(location.starts_with("/rtc/v1/whip/?action=delete"), "{location}");
    assert!(location.contains("proxy_session=orig"), "{location}");
}

#[tokio::test]
async fn bad_signalling_gets_a_clear_error_and_the_proxy_keeps_serving() {
    let origin = RtcOrigin::canned("origin-bad").await;
    let settings = WebrtcConfig {
        max_sdp_bytes: 4096,
        ..WebrtcConfig::default()
    };
    let proxy = RtcProxy::with_origin(&origin, settings).await;
    let whip = "/rtc/v1/whip/?app=live&stream=cam";
    let no_ufrag = offer("abcd").replace("a=ice-ufrag:abcd\r\n", "");
    let no_pwd = offer("abcd").replace("a=ice-pwd:clientpwd0123456789abcdef\r\n", "");
    let no_media =
        "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:clientpwd0123456789abcdef\r\n";
    let huge = format!("{}a=x-padding:{}\r\n", offer("abcd"), "p".repeat(5000));
    for (what, target, body, status, reason) in [
        (
            "too large",
            whip,
            huge.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 4096",
        ),
        (
            "not SDP",
            whip,
            "{\"hello\":1}",
            StatusCode::BAD_REQUEST,
            "offer: SDP line 1",
        ),
        (
            "no ufrag",
            whip,
            no_ufrag.as_str(),
            StatusCode::BAD_REQUEST,
            "no a=ice-ufrag",
        ),
        ("no pwd", whip, no_pwd.as_str(), StatusCode::BAD_REQUEST, "no a=ice-pwd"),
        ("no media", whip, no_media, StatusCode::BAD_REQUEST, "no media"),
        (
            "no stream",
            "/rtc/v1/whip/?app=live",
            &offer("abcd"),
            StatusCode::BAD_REQUEST,
            "bad stream",
        ),
        (
            "bad stream",
            "/rtc/v1/whep/?app=live&stream=a%0d%0ab",
            &offer("abcd"),
            StatusCode::BAD_REQUEST,
            "bad stream",
        ),
    ] {
        let reply = proxy.post_sdp(target, body, &[]).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        assert!(reply.text().contains(reason), "{what}: {}", reply.text());
    }
    let posts = || origin.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts(), 0, "nothing bad reached the origin");

    let reply = client::request(
        proxy.api,
        Method::POST,
        whip,
        &[("content-type", "text/plain")],
        offer("abcd"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", reply.text());
    let reply = client::request(
        proxy.api,
        Method::POST,
        whip,
        &[("content-type", "application/sdp")],
        bytes::Bytes::from_static(b"v=0\r\n\xff\xfe"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("not UTF-8"), "{}", reply.text());
    let reply = client::request(proxy.api, Method::GET, whip, &[], bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{}", reply.text());
    let reply = client::request(proxy.api, Method::PUT, "/rtc/v1/play/", &[], bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = client::get(proxy.api, "/rtc/v2/whatever").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = client::post(proxy.api, "/rtc/v1/play/", "not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("not an SRS WebRTC offer"), "{}", reply.text());
    let reply = client::post(
        proxy.api,
        "/rtc/v1/play/",
        r#"{"streamurl":"rtmp://h/live/s","sdp":"v=0"}"#,
    )
    .await;
    assert!(reply.text().contains("bad streamurl"), "{}", reply.text());
    let reply = client::request(
        proxy.api,
        Method::DELETE,
        "/rtc/v1/whip/?proxy_session=nope%3Anope",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    // The origin answers garbage, or nothing the proxy can relay: 502.
    origin.answer_with(rtc_support::origin::Answering::Garbage);
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        reply.text().contains("origin origin-bad answer: SDP line 1"),
        "{}",
        reply.text()
    );
    origin.answer_with(rtc_support::origin::Answering::NoUsableCandidate);
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        reply.text().contains("no UDP candidate on its WebRTC port"),
        "{}",
        reply.text()
    );
    origin.answer_with(rtc_support::origin::Answering::Normal);

    // Readiness and preflights answer on this listener too.
    let reply = client::get(proxy.api, "/api/v1/versions").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = client::request(proxy.api, Method::OPTIONS, whip, &[], bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert!(reply
        .header("access-control-expose-headers")
        .unwrap()
        .contains("Location"));

    // After all that, a good offer still works.
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn no_webrtc_origin_is_503_and_a_dead_one_502() {
    let proxy = RtcProxy::start(WebrtcConfig::default()).await;
    let whip = "/rtc/v1/whip/?app=live&stream=cam";
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    // An origin with a WebRTC port but no API port cannot take WebRTC.
    let mut no_api = RtcOrigin::canned("no-api").await.origin();
    no_api.ports.api = None;
    proxy.proxy.ctx.store.upsert_origin(no_api, None).await.unwrap();
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    let dead = dead_origin().await;
    proxy.proxy.ctx.store.upsert_origin(dead, None).await.unwrap();
    let reply = proxy.post_sdp(whip, &offer("abcd"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "origin dead is unreachable\n",
        "no address or OS error for the client"
    );
    assert_eq!(
        proxy.metric(
            "srs_proxy_http_requests_total",
            &[("route", "whip"), ("status", "502"), ("fault", "origin")]
        ),
        1.0
    );
}

/// The origin a stream is mapped to refuses connections: the offer goes
/// to the other origin within the same request, and the dead one is
/// unhealthy.
#[tokio::test]
async fn an_offer_for_a_stream_on_a_dead_origin_is_answered_by_another() {
    let proxy = RtcProxy::start(WebrtcConfig::default()).await;
    let dead = dead_origin().await;
    let ctx = &proxy.proxy.ctx;
    ctx.store.upsert_origin(dead, None).await.unwrap();
    let key = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", "live", "cam").unwrap();
    let (placed, _) = ctx.claim_origin(&key, srs_proxy::origin::Protocol::Rtc).await.unwrap();
    assert_eq!(&*placed.id, "dead", "the stream is mapped to the dead origin first");
    let live = RtcOrigin::canned("live").await;
    ctx.store.upsert_origin(live.origin(), None).await.unwrap();

    let reply = proxy
        .post_sdp("/rtc/v1/whip/?app=live&stream=cam", &offer("abcd"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_points_at(&reply.text(), &proxy);
    assert_eq!(live.requests().len(), 1, "the live origin got the offer");
    let listed = ctx.store.list_origins().await.unwrap();
    assert!(!listed.iter().find(|o| *o.origin.id == *"dead").unwrap().healthy);
    assert_eq!(
        ctx.store.lookup(&key).await.unwrap().map(|o| o.id).as_deref(),
        Some("live")
    );
}

#[tokio::test]
async fn a_full_session_table_refuses_new_sessions() {
    let origin = RtcOrigin::canned("origin-full").await;
    let settings = WebrtcConfig {
        max_sessions: 1,
        ..WebrtcConfig::default()
    };
    let proxy = RtcProxy::with_origin(&origin, settings).await;
    let reply = proxy
        .post_sdp("/rtc/v1/whep/?app=live&stream=a", &offer("abcd"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reply = proxy
        .post_sdp("/rtc/v1/whep/?app=live&stream=b", &offer("efgh"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert!(reply.text().contains("too many WebRTC sessions"), "{}", reply.text());
    assert_eq!(
        origin.requests().iter().filter(|r| r.method == "POST").count(),
        1,
        "the refused offer never reached an origin"
    );
}
