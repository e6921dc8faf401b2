//! Redis dies during traffic and comes back: running relays go on, new
//! claims and readiness fail with 503 meanwhile, and the proxy recovers by
//! itself once Redis answers again.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use srs_proxy::config::StoreKind;
use srs_proxy::store::{RedisStore, Store};
use support::client::{self, get};
use support::eventually;
use support::origin::{expected_prefix, FakeOrigin};
use support::proxy::{test_config, TestProxy};
use support::redis::RedisServer;

/// A relayed FLV body, checked against what the origin sent as it is read.
struct Relay {
    body: Incoming,
    received: usize,
    /// The origin's bytes from the start, generated ahead as needed.
    expected: Vec<u8>,
}

impl Relay {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            received: 0,
            expected: Vec::new(),
        }
    }

    /// Reads at least `n` more bytes, which must be the origin's next ones.
    async fn read(&mut self, n: usize) {
        let want = self.received + n;
        while self.received < want {
            let data = match self.body.frame().await {
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                other => panic!("the running relay ended after {} bytes: {other:?}", self.received),
            };
            let end = self.received + data.len();
            if end > self.expected.len() {
                self.expected = expected_prefix("flv", "running", (2 * end).max(1 << 20));
            }
            assert!(
                data[..] == self.expected[self.received..end],
                "the running relay's bytes were disturbed"
            );
            self.received = end;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_new_claims_fast_and_heals_by_itself() {
    // This test kills its Redis, so it has one of its own.
    let redis = RedisServer::start();
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = redis.config("outage:");
    config.redis.timeout = Duration::from_millis(500);
    // Relays refresh every second, so the test sees their mapping return.
    config.stream_ttl = Duration::from_secs(3);
    let store = Store::Redis(RedisStore::connect(&config.redis).await.unwrap());
    let proxy = TestProxy::start_with_store(config, store).await;
    let origin = FakeOrigin::start("origin-a").await;
    // SRS keeps sending heartbeats whatever the proxy answers (unless the
    // test holds them back).
    let beating = Arc::new(AtomicBool::new(true));
    let heartbeat = {
        let (body, api, beating) = (origin.register_body(), proxy.api, beating.clone());
        tokio::spawn(async move {
            loop {
                if beating.load(Ordering::SeqCst) {
                    client::post(api, "/api/v1/srs/register", body.clone()).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let players = || {
        proxy
            .ctx
            .metrics
            .connections_active
            .with_label_values(&["http-flv", "player"])
            .get()
    };
    let live = eventually(Duration::from_secs(5), || async {
        (get(proxy.http, "/live/warmup.m3u8").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(live.is_some(), "the origin never became live");
    assert_eq!(get(proxy.api, "/api/v1/versions").await.status, StatusCode::OK);

    let resp = client::send(proxy.http, Method::GET, "/live/running.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut running = Relay::new(resp.into_body());
    running.read(200_000).await;

    redis.stop();

    // New claims: 503 with the reason, at once.
    let started = Instant::now();
    let refused = get(proxy.http, "/live/new.flv").await;
    let refused_after = started.elapsed();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert!(
        refused.text().contains("store unavailable"),
        "the reason: {}",
        refused.text()
    );
    // Readiness says so.
    let versions = get(proxy.api, "/api/v1/versions").await;
    assert_eq!(versions.status, StatusCode::SERVICE_UNAVAILABLE, "{}", versions.text());
    assert!(versions.text().contains("store unavailable"), "{}", versions.text());
    // The running relay goes on, bytes intact, across its failed refreshes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.read(1_000_000).await;
    let started = Instant::now();
    let still_refused = get(proxy.http, "/live/new.flv").await;
    eprintln!("later refusal after {:?}: {}", started.elapsed(), still_refused.text());
    assert_eq!(still_refused.status, StatusCode::SERVICE_UNAVAILABLE);
    eprintln!("first refusal after {refused_after:?}");

    // Redis comes back empty on the same port; the proxy was not touched.
    // Before the origin's next heartbeat, the relay's refreshes find an
    // origin this Redis has never heard of: not a reason to cut it.
    beating.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let reconnected = eventually(Duration::from_secs(10), || async {
        (get(proxy.api, "/api/v1/versions").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(reconnected.is_some(), "readiness never came back");
    // Keep reading across a few refreshes: a relay cut now would end here.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        running.read(64 * 1024).await;
    }
    beating.store(true, Ordering::SeqCst);
    let healed = eventually(Duration::from_secs(15), || async {
        let ready = get(proxy.api, "/api/v1/versions").await.status == StatusCode::OK;
        let claimed = get(proxy.http, "/live/new.m3u8").await.status == StatusCode::OK;
        (ready && claimed).then_some(())
    })
    .await;
    assert!(healed.is_some(), "claims never worked again after Redis returned");
    let resp = client::send(proxy.http, Method::GET, "/live/new.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-origin"], "origin-a");
    drop(resp);

    // The running relay is still there, and its refreshes put its mapping
    // back into the new Redis.
    running.read(1_000_000).await;
    let remapped = eventually(Duration::from_secs(10), || async {
        let streams = get(proxy.api, "/api/v1/streams").await.json();
        streams["streams"]
            .as_array()?
            .iter()
            .any(|s| s["key"]["stream"] == "running" && s["origin_id"] == "origin-a")
            .then_some(())
    })
    .await;
    assert!(remapped.is_some(), "the running relay's mapping did not come back");
    assert!(
        eventually(Duration::from_secs(5), || async { (players() == 1).then_some(()) })
            .await
            .is_some(),
        "only the running relay is left"
    );
    running.read(200_000).await;
    heartbeat.abort();
}

#[tokio::test]
async fn the_proxy_starts_without_redis_and_is_ready_once_redis_answers() {
    let redis = RedisServer::start();
    redis.stop();
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = redis.config("late:");
    // PROXY_LOAD_BALANCER_TYPE=redis picks the Redis store, and a missing
    // Redis does not stop the proxy from starting.
    let store = srs_proxy::server::build_store(&config).await.unwrap();
    assert_eq!(store.kind(), "redis");
    let proxy = TestProxy::start_with_store(config, store).await;
    let versions = get(proxy.api, "/api/v1/versions").await;
    assert_eq!(versions.status, StatusCode::SERVICE_UNAVAILABLE, "{}", versions.text());
    assert_eq!(
        get(proxy.http, "/live/early.flv").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    redis.restart();
    let ready = eventually(Duration::from_secs(10), || async {
        (get(proxy.api, "/api/v1/versions").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "never became ready after Redis appeared");
    let origin = FakeOrigin::start("origin-late").await;
    origin.register(proxy.api).await;
    let resp = client::send(proxy.http, Method::GET, "/live/late.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
