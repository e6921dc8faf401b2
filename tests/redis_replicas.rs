//! Two proxy replicas sharing one Redis, in front of fake SRS origins:
//! every replica sends a stream's players to the same origin, and streams
//! of an origin that goes away move to a live one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use srs_proxy::balance::Policy;
use srs_proxy::config::{Config, StoreKind};
use support::client::{self, get, read_n};
use support::eventually;
use support::origin::FakeOrigin;
use support::proxy::test_config;
use support::redis::{proxy_replicas, RedisServer};
use tokio::task::JoinSet;

fn redis_config(prefix: &str) -> Config {
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = RedisServer::shared().config(prefix);
    config
}

/// Registers `origin` through `api` every 200 ms until aborted.
fn heartbeat(origin: &FakeOrigin, api: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let body = origin.register_body();
    tokio::spawn(async move {
        loop {
            client::post(api, "/api/v1/srs/register", body.clone()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn origin_of(api: std::net::SocketAddr, stream: &str) -> Option<String> {
    let streams = get(api, "/api/v1/streams").await.json();
    streams["streams"]
        .as_array()?
        .iter()
        .find(|s| s["key"]["stream"] == stream)
        .and_then(|s| s["origin_id"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_through_two_proxies_reach_one_origin() {
    let mut config = redis_config("replicas-contended:");
    // Random placement: any split between replicas would show at once.
    config.balance_policy = Policy::Random;
    // 4,000 claims in bursts of 200 queue behind one another in Redis; on a
    // busy machine the tests' short store timeout would turn that queue
    // into 503s, which is not what this test is about.
    config.redis.timeout = Duration::from_secs(10);
    let [a, b] = proxy_replicas(&config).await;
    let origins = [
        FakeOrigin::start("origin-1").await,
        FakeOrigin::start("origin-2").await,
        FakeOrigin::start("origin-3").await,
    ];
    // Registered through one replica, live for both.
    for o in &origins {
        o.register(a.api).await;
    }
    let listed = get(b.api, "/api/v1/origins").await.json();
    assert_eq!(listed["origins"].as_array().unwrap().len(), 3, "{listed}");

    let mut placed = BTreeMap::<String, usize>::new();
    for round in 0..20 {
        let path = format!("/live/contended{round}.flv");
        let mut requests = JoinSet::new();
        for i in 0..200 {
            let proxy = if i % 2 == 0 { a.http } else { b.http };
            let path = path.clone();
            requests.spawn(async move {
                // HEAD claims exactly as GET does, without 4000 endless
                // bodies to generate (the next test plays real streams).
                let resp = client::send(proxy, Method::HEAD, &path, &[], Bytes::new()).await;
                let origin = resp.headers().get("x-origin").map(|v| v.to_str().unwrap().to_string());
                (resp.status(), origin)
            });
        }
        let mut served_by = BTreeSet::new();
        while let Some(done) = requests.join_next().await {
            let (status, origin) = done.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}");
            served_by.insert(origin.expect("X-Origin"));
        }
        assert_eq!(served_by.len(), 1, "round {round}: one stream went to {served_by:?}");
        *placed.entry(served_by.pop_first().unwrap()).or_default() += 1;
        // Both replicas, asked afterwards, name that origin too.
        let stream = format!("contended{round}");
        assert_eq!(origin_of(a.api, &stream).await, origin_of(b.api, &stream).await);
    }
    assert!(placed.len() > 1, "20 streams placed at random all went to {placed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_an_expired_or_removed_origin_move_and_their_relays_end() {
    let mut config = redis_config("replicas-failover:");
    config.registration_ttl = Duration::from_secs(1);
    // Refreshes are far apart: a relay that ends soon ended because it
    // heard the origin go, not because a refresh found out.
    config.stream_ttl = Duration::from_secs(120);
    let [a, b] = proxy_replicas(&config).await;
    let x = FakeOrigin::start("origin-x").await;
    let y = FakeOrigin::start("origin-y").await;

    // Only x is up when the stream starts, so the stream lands there.
    let x_beat = heartbeat(&x, a.api);
    until_live(b.api, "origin-x").await;
    let relay = client::send(b.http, Method::GET, "/live/cam.flv", &[], Bytes::new()).await;
    assert_eq!(relay.headers()["x-origin"], "origin-x");
    let mut relay = relay.into_body();
    read_n(&mut relay, 100_000).await;
    let y_beat = heartbeat(&y, a.api);

    // x stops sending heartbeats: its registration expires, one replica's
    // sweep announces it, and the relay on the other replica ends.
    x_beat.abort();
    assert!(
        ends(&mut relay).await,
        "the relay to the expired origin is still running"
    );
    let closed = eventually(Duration::from_secs(5), || async {
        (x.open_streams() == 0).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "the proxy still holds a connection to the expired origin"
    );

    // The next player, on either replica, is re-claimed to y.
    let resp = client::send(a.http, Method::GET, "/live/cam.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-origin"], "origin-y");
    let failovers = a.ctx.metrics.claims_total.with_label_values(&["failover"]).get();
    assert_eq!(failovers, 1, "the claim was a failover");
    let mut relay = resp.into_body();
    read_n(&mut relay, 100_000).await;

    // Removal (what discovery does when a pod stops being ready) works the
    // same way, through either replica.
    let x_beat = heartbeat(&x, a.api);
    until_live(a.api, "origin-x").await;
    y_beat.abort();
    // Let a heartbeat already on the wire land before the removal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.ctx.store.remove_origin("origin-y").await.unwrap());
    assert!(
        ends(&mut relay).await,
        "the relay to the removed origin is still running"
    );
    let resp = client::send(b.http, Method::GET, "/live/cam.flv", &[], Bytes::new()).await;
    assert_eq!(resp.headers()["x-origin"], "origin-x");
    assert_eq!(origin_of(a.api, "cam").await.as_deref(), Some("origin-x"));
    x_beat.abort();
}

/// Waits until `id` is among the live origins `api` lists.
async fn until_live(api: std::net::SocketAddr, id: &str) {
    let live = eventually(Duration::from_secs(5), || async {
        let listed = get(api, "/api/v1/origins").await.json();
        listed["origins"]
            .as_array()?
            .iter()
            .any(|o| o["id"] == id)
            .then_some(())
    })
    .await;
    assert!(live.is_some(), "{id} never became live");
}

/// Whether a streaming body ends (or fails) within a bound far below the
/// refresh period.
async fn ends(body: &mut hyper::body::Incoming) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await
    .is_ok()
}
