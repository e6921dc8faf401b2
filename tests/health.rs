//! Origin health through the proxy, over real sockets: a dead origin's
//! streams are served by another origin on the very next request (memory
//! store and Redis, on either replica), a black hole is given up after the
//! response timeout, probes take a refusing origin out and bring it back,
//! and one replica probes a given origin at a time.
//!
//! Every wait is bounded and asserts an outcome; none is a timing
//! threshold.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use srs_proxy::config::{Config, StaticOrigin, StoreKind};
use srs_proxy::store::OriginStatus;
use support::client;
use support::discovery::{play, until_closed};
use support::eventually;
use support::origin::{BlackHole, FakeOrigin};
use support::proxy::{test_config, TestProxy};
use support::redis::{proxy_replicas, RedisServer};

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(15);

fn redis_config(prefix: &str) -> Config {
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = RedisServer::shared().config(prefix);
    config
}

async fn status_of(proxy: &TestProxy, id: &str) -> OriginStatus {
    let origins = proxy.ctx.store.list_origins().await.unwrap();
    origins.into_iter().find(|o| *o.origin.id == *id).expect("registered")
}

fn transitions(proxy: &TestProxy, to: &str) -> u64 {
    proxy
        .ctx
        .metrics
        .origin_health_transitions_total
        .with_label_values(&[to])
        .get()
}

/// An FLV play that is answered; returns the status and the origin named
/// in `X-Origin` (empty when none).
async fn try_play(http: SocketAddr, stream: &str) -> (StatusCode, String) {
    let resp = client::send(http, Method::GET, &format!("/live/{stream}.flv"), &[], Bytes::new()).await;
    let origin = resp
        .headers()
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (resp.status(), origin)
}

/// Two origins; the one serving `cam` dies (its listener closes). The very
/// next play of `cam` on `next` is served by the other one, and the dead
/// one is unhealthy for every replica, with the reason.
async fn next_play_after_death_is_served_by_the_other(first: &TestProxy, next: &TestProxy) {
    let mut origins = vec![FakeOrigin::start("origin-a").await, FakeOrigin::start("origin-b").await];
    for o in &origins {
        o.register(first.api).await;
    }
    let (serving, body) = play(first, "cam").await;
    let dead = origins.iter().position(|o| o.name == serving).unwrap();
    drop(origins.remove(dead));
    let survivor = origins[0].name.clone();
    until_closed(body).await;

    let (other, _relay) = play(next, "cam").await;
    assert_eq!(other, survivor, "the next play is served by the live origin");
    let status = status_of(first, &serving).await;
    assert!(!status.healthy, "the dead origin is unhealthy");
    assert!(
        status.last_error.as_deref().is_some_and(|e| e.contains("refused")),
        "{:?}",
        status.last_error
    );
    assert!(status.since.is_some());
    // The system API lists it so.
    let listed = client::get(next.api, "/api/v1/origins").await.json();
    let dead_row = listed["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == serving.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(dead_row["healthy"], false);
    assert!(dead_row["last_error"].as_str().is_some_and(|e| e.contains("refused")));
    assert!(dead_row["since"].as_f64().is_some());
    assert_eq!(
        transitions(next, "unhealthy"),
        1,
        "the replica that failed to connect reported it"
    );
    let metrics = client::get(next.api, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l == "srs_proxy_origins_unhealthy 1"),
        "{metrics}"
    );
    let live = r#"srs_proxy_origins_live{pool="",source="heartbeat"} 1"#;
    assert!(metrics.lines().any(|l| l == live), "{metrics}");
    // It gets no new streams, on any replica.
    for i in 0..4 {
        assert_eq!(play(first, &format!("new{i}")).await.0, survivor);
    }
}

#[tokio::test]
async fn with_the_memory_store_the_next_play_after_an_origin_dies_is_served_by_the_other() {
    let proxy = TestProxy::start(test_config()).await;
    next_play_after_death_is_served_by_the_other(&proxy, &proxy).await;
}

#[tokio::test]
async fn with_redis_the_next_play_on_another_replica_is_served_by_the_other_origin() {
    let [a, b] = proxy_replicas(&redis_config("health-flv:")).await;
    next_play_after_death_is_served_by_the_other(&a, &b).await;
}

/// HLS: the origin serving a stream's playlist dies; the next playlist
/// request (a new player, no token) is served by the other origin.
#[tokio::test]
async fn the_next_playlist_after_an_origin_dies_comes_from_the_other() {
    let proxy = TestProxy::start(test_config()).await;
    let mut origins = vec![FakeOrigin::start("origin-a").await, FakeOrigin::start("origin-b").await];
    for o in &origins {
        o.register(proxy.api).await;
    }
    let first = client::get(proxy.http, "/live/tv.m3u8").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let serving = first.header("x-origin").expect("the origin's header").to_string();
    let dead = origins.iter().position(|o| o.name == serving).unwrap();
    drop(origins.remove(dead));

    let next = client::get(proxy.http, "/live/tv.m3u8").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_eq!(next.header("x-origin"), Some(origins[0].name.as_str()));
    assert!(next.text().contains("tv-100.ts"), "{}", next.text());
    assert!(!status_of(&proxy, &serving).await.healthy);
}

/// No retry loop: with every origin dead, a play tries the stream's origin
/// and one other, then fails; both are unhealthy and the next play gets
/// 503 at once.
#[tokio::test]
async fn with_every_origin_dead_a_play_fails_after_one_pass() {
    let proxy = TestProxy::start(test_config()).await;
    let origins = [FakeOrigin::start("origin-a").await, FakeOrigin::start("origin-b").await];
    for o in &origins {
        o.register(proxy.api).await;
    }
    drop(origins);
    let (status, _) = try_play(proxy.http, "cam").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the second origin's failure");
    assert!(!status_of(&proxy, "origin-a").await.healthy);
    assert!(!status_of(&proxy, "origin-b").await.healthy);
    assert_eq!(transitions(&proxy, "unhealthy"), 2);
    let (status, _) = try_play(proxy.http, "cam").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no live origin is left");
    let no_origin = proxy.ctx.metrics.claims_total.with_label_values(&["no_origin"]).get();
    assert_eq!(no_origin, 1);
}

/// An origin that accepts connections but never answers: after the
/// response timeout the play is served by the other origin, and the black
/// hole is unhealthy.
#[tokio::test]
async fn a_black_hole_origin_is_given_up_after_the_response_timeout() {
    let mut config = test_config();
    config.origin_response_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start(config).await;
    let hole = BlackHole::start().await;
    let reply = client::post(proxy.api, "/api/v1/srs/register", hole.register_body("hole")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let good = FakeOrigin::start("good").await;
    // The stream is mapped to the black hole before the good origin exists.
    assert_eq!(claim_now(&proxy, "cam").await, "hole");
    good.register(proxy.api).await;

    let (other, _relay) = play(&proxy, "cam").await;
    assert_eq!(other, "good");
    let hole_status = status_of(&proxy, "hole").await;
    assert!(!hole_status.healthy);
    assert!(
        hole_status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no response headers")),
        "{:?}",
        hole_status.last_error
    );
}

/// An origin that reads a play request and hangs up without answering has
/// refused that request (an SRS hook denying a token does that): the
/// client gets 502, and the origin stays healthy and keeps taking streams,
/// so no client can take origins out by sending what they refuse.
#[tokio::test]
async fn an_origin_that_hangs_up_on_one_request_stays_healthy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = TestProxy::start(test_config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let refuser = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            // Probes are answered; plays are refused by hanging up.
            if line.starts_with("HEAD ") {
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            } else {
                let _ = seen_tx.send(line);
            }
        }
    });
    let body = serde_json::json!({
        "ip": "127.0.0.1", "server": "refuser", "service": "svc1", "pid": "4244",
        "http": [addr.port().to_string()],
    });
    let reply = client::post(proxy.api, "/api/v1/srs/register", body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    for round in 0..2 {
        let (status, _) = try_play(proxy.http, "cam").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "round {round}");
        let line = tokio::time::timeout(BOUND, seen.recv())
            .await
            .expect("the origin got the play");
        assert!(line.unwrap().starts_with("GET /live/cam.flv"), "round {round}");
        let status = status_of(&proxy, "refuser").await;
        assert!(status.healthy, "round {round}: {:?}", status.last_error);
    }
    assert_eq!(transitions(&proxy, "unhealthy"), 0);
    refuser.abort();
}

/// Claims `stream` in the store directly (as a first request would) and
/// returns the origin it was placed on.
async fn claim_now(proxy: &TestProxy, stream: &str) -> String {
    let key = srs_proxy::stream_key::StreamKey {
        vhost: "__defaultVhost__".into(),
        app: "live".into(),
        stream: stream.into(),
    };
    let (origin, _) = proxy
        .ctx
        .claim_origin(&key, srs_proxy::origin::Protocol::Http)
        .await
        .expect("claimed");
    origin.id.to_string()
}

fn static_origin(addr: SocketAddr) -> StaticOrigin {
    StaticOrigin {
        id: Some("static".into()),
        ip: addr.ip().to_string(),
        rtmp: None,
        http: Some(addr.port()),
        api: None,
        srt: None,
        rtc: None,
        weight: 1,
        max_streams: 0,
    }
}

fn probing(mut config: Config, addr: SocketAddr, interval: Duration) -> Config {
    config.origins = vec![static_origin(addr)];
    config.health.probe_interval = interval;
    config.health.failures = 2;
    config.health.successes = 2;
    config
}

async fn until_health(proxy: &TestProxy, healthy: bool) {
    let reached = eventually(BOUND, || async {
        (status_of(proxy, "static").await.healthy == healthy).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the origin never became healthy={healthy}");
}

/// Nobody requests anything: probes alone take a refusing static origin
/// out (no new streams), and bring it back once it answers again.
#[tokio::test]
async fn probes_take_a_refusing_origin_out_and_bring_it_back() {
    let origin = FakeOrigin::start("static").await;
    let addr = origin.addr;
    let proxy = TestProxy::start(probing(test_config(), addr, Duration::from_millis(100))).await;
    let (first, relay) = play(&proxy, "cam").await;
    assert_eq!(first, "static");
    drop(origin);
    until_closed(relay).await;

    until_health(&proxy, false).await;
    let probes = &proxy.ctx.metrics.origin_probes_total;
    assert!(
        probes.with_label_values(&["failed"]).get() >= 2,
        "two failed probes in a row"
    );
    assert_eq!(transitions(&proxy, "unhealthy"), 1);
    let (status, _) = try_play(proxy.http, "cam").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no new streams on it");

    let back = FakeOrigin::start_on(addr, "static").await;
    until_health(&proxy, true).await;
    assert_eq!(transitions(&proxy, "healthy"), 1);
    assert!(probes.with_label_values(&["ok"]).get() >= 2);
    let (again, _relay) = play(&proxy, "cam").await;
    assert_eq!(again, "static");
    assert!(back.connections() >= 3, "two probes and the play");
}

/// Two replicas configured with the same static origin: its probes all
/// come from one of them.
#[tokio::test]
async fn one_replica_probes_a_given_origin() {
    let origin = FakeOrigin::start("static").await;
    let config = probing(redis_config("health-probes:"), origin.addr, Duration::from_millis(300));
    let [a, b] = proxy_replicas(&config).await;
    let probed = eventually(BOUND, || async { (origin.connections() >= 6).then_some(()) }).await;
    assert!(probed.is_some(), "the origin is probed");
    let count = |p: &TestProxy| {
        let m = &p.ctx.metrics.origin_probes_total;
        m.with_label_values(&["ok"]).get() + m.with_label_values(&["failed"]).get()
    };
    let (by_a, by_b) = (count(&a), count(&b));
    assert!(
        (by_a == 0) != (by_b == 0),
        "one replica probes it: {by_a} probes by a, {by_b} by b"
    );
}
