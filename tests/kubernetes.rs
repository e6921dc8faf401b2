//! Kubernetes discovery end to end: the proxy's real `kube::Client` and
//! watchers against the fake API server in tests/support/kube.rs, fake SRS
//! origins on loopback addresses standing in for pods, and streams played
//! through the proxy.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use srs_proxy::balance::Policy;
use srs_proxy::config::{DiscoveryMode, KubernetesConfig};
use srs_proxy::discovery::lease::LEASE_NAME;
use srs_proxy::origin::OriginSource;
use support::client;
use support::kube::{endpoint, endpoint_slice, origin_pool, FakeKube};
use support::origin::{expected_prefix, FakeOrigin};
use support::proxy::{test_config, TestProxy};
use tempfile::TempDir;

const NS: &str = "media";
const POOL: &str = "origins";
const SERVICE: &str = "srs";
/// Upper bound of every wait; conditions are polled, never timed.
const WAIT: Duration = Duration::from_secs(20);

/// A fake API server and a proxy discovering through it.
struct Cluster {
    kube: FakeKube,
    proxy: TestProxy,
    _dir: TempDir,
}

impl Cluster {
    /// Creates or replaces an EndpointSlice of the origin Service.
    fn slice(&self, name: &str, http_port: u16, endpoints: &[Value]) {
        self.kube.apply(service_slice(name, http_port, endpoints));
    }

    /// Two ready pods in one slice and a pool over them, registered.
    async fn two_pods_in_a_pool(&self) -> (Vec<FakeOrigin>, u16) {
        let (origins, port) = pods(2).await;
        self.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
        self.kube.apply(origin_pool(NS, POOL, pool_spec()));
        wait_origins(&self.proxy, &["srs-0", "srs-1"]).await;
        (origins, port)
    }
}

fn service_slice(name: &str, http_port: u16, endpoints: &[Value]) -> Value {
    endpoint_slice(NS, name, SERVICE, &ports(http_port), endpoints)
}

async fn cluster(discovery: DiscoveryMode) -> Cluster {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(discovery, kube.kubeconfig(dir.path()).display().to_string()).await;
    Cluster { kube, proxy, _dir: dir }
}

async fn proxy_for(discovery: DiscoveryMode, kubeconfig: String) -> TestProxy {
    let mut config = test_config();
    config.kubernetes = KubernetesConfig {
        discovery,
        namespace: NS.into(),
        service: SERVICE.into(),
        kubeconfig,
    };
    TestProxy::start(config).await
}

/// Fake origins named like pods, on 127.0.0.2, 127.0.0.3, … sharing one
/// port, so they fit in one EndpointSlice as pods of one Service do.
async fn pods(n: usize) -> (Vec<FakeOrigin>, u16) {
    'again: loop {
        let first = FakeOrigin::start_on("127.0.0.2:0".parse().unwrap(), "srs-0").await;
        let port = first.addr.port();
        let mut all = vec![first];
        for i in 1..n {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", i + 2).parse().unwrap();
            // The port is free on 127.0.0.2; elsewhere it may not be.
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'again;
            }
            all.push(FakeOrigin::start_on(addr, &format!("srs-{i}")).await);
        }
        return (all, port);
    }
}

fn ports(http: u16) -> Vec<(&'static str, u16)> {
    // Nothing listens on the RTMP port; these tests play HTTP-FLV.
    vec![("rtmp", 1), ("http", http), ("api", 1985)]
}

fn ready(origin: &FakeOrigin) -> Value {
    endpoint(&origin.name, &origin.addr.ip().to_string(), true, false)
}

fn not_ready(origin: &FakeOrigin) -> Value {
    endpoint(&origin.name, &origin.addr.ip().to_string(), false, false)
}

/// Going away: not ready, still serving its open connections.
fn terminating(origin: &FakeOrigin) -> Value {
    endpoint(&origin.name, &origin.addr.ip().to_string(), false, true)
}

/// A long TTL: an origin that goes away here was removed, not expired.
fn pool_spec() -> Value {
    json!({"service": SERVICE, "registrationTtlSeconds": 300})
}

/// Sorted ids of the Kubernetes origins in the proxy's store.
async fn k8s_origins(proxy: &TestProxy) -> Vec<String> {
    let mut ids: Vec<String> = proxy
        .ctx
        .store
        .list_origins()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.origin.source == OriginSource::Kubernetes)
        .map(|o| o.origin.id)
        .collect();
    ids.sort();
    ids
}

async fn wait_origins(proxy: &TestProxy, expected: &[&str]) {
    let found = support::eventually(WAIT, || async {
        let ids = k8s_origins(proxy).await;
        (ids == expected).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "expected origins {expected:?}, store has {:?}",
        k8s_origins(proxy).await
    );
}

fn counter(proxy: &TestProxy, kind: &str) -> u64 {
    proxy
        .ctx
        .metrics
        .discovery_events_total
        .with_label_values(&[kind])
        .get()
}

/// Starts playing `stream` as HTTP-FLV; returns the origin that serves it
/// and the body, checked to be that origin's bytes.
async fn play(proxy: &TestProxy, stream: &str) -> (String, hyper::body::Incoming) {
    let resp = client::send(
        proxy.http,
        Method::GET,
        &format!("/live/{stream}.flv"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let origin = resp.headers()["x-origin"].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    let got = client::read_n(&mut body, 4096).await;
    assert!(
        got == expected_prefix("flv", stream, 4096),
        "bytes are the origin's stream"
    );
    (origin, body)
}

/// Reads until the relay ends (origin gone), bounded by [`WAIT`].
async fn until_closed(mut body: hyper::body::Incoming) {
    let ended = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = body.frame().await {} }).await;
    assert!(ended.is_ok(), "the relay to a removed origin must end");
}

async fn readiness(proxy: &TestProxy) -> (StatusCode, String) {
    let reply = client::get(proxy.api, "/api/v1/versions").await;
    let error = reply.json()["error"].as_str().unwrap_or("").to_string();
    (reply.status, error)
}

async fn pool_status(kube: &FakeKube, check: impl Fn(&Value) -> bool) -> Value {
    let found = support::eventually(WAIT, || async {
        let status = kube.get("OriginPool", NS, POOL)?.get("status")?.clone();
        check(&status).then_some(status)
    })
    .await;
    found.unwrap_or_else(|| panic!("status never matched; last: {:?}", kube.get("OriginPool", NS, POOL)))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn pool_with_two_ready_pods_serves_streams_from_them() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (_origins, port) = c.two_pods_in_a_pool().await;

    let listed = c.proxy.ctx.store.list_origins().await.unwrap();
    for o in &listed {
        assert_eq!(o.origin.pool.as_deref(), Some(POOL));
        assert_eq!(o.origin.ports.http, Some(port));
        assert!(o.expires_in_secs.is_some(), "Kubernetes registrations carry a TTL");
    }
    let ips: Vec<&str> = listed.iter().map(|o| o.origin.ip.as_str()).collect();
    assert_eq!(ips, ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(readiness(&c.proxy).await.0, StatusCode::OK);

    let (served_by, _body) = play(&c.proxy, "livestream").await;
    assert!(["srs-0", "srs-1"].contains(&served_by.as_str()), "{served_by}");
    assert_eq!(counter(&c.proxy, "origin_added"), 2);
    let metrics = client::get(c.proxy.api, "/metrics").await.text();
    assert!(
        metrics.contains("srs_proxy_discovery_propagation_seconds_count"),
        "{metrics}"
    );
    let live = metrics
        .lines()
        .find(|l| l.starts_with("srs_proxy_origins_live{") && l.contains("source=\"kubernetes\""));
    assert!(live.is_some_and(|l| l.ends_with(" 2")), "{live:?}");
}

#[tokio::test]
async fn a_pod_turning_not_ready_is_removed_and_its_streams_move() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (origins, port) = c.two_pods_in_a_pool().await;

    let (first, body) = play(&c.proxy, "livestream").await;
    let (leaving, staying) = if first == "srs-0" {
        (&origins[0], &origins[1])
    } else {
        (&origins[1], &origins[0])
    };
    c.slice("srs-a", port, &[not_ready(leaving), ready(staying)]);
    wait_origins(&c.proxy, &[staying.name.as_str()]).await;
    until_closed(body).await;

    let (second, _body) = play(&c.proxy, "livestream").await;
    assert_eq!(second, staying.name, "the stream is re-claimed on the ready origin");
    assert_eq!(counter(&c.proxy, "origin_removed"), 1);

    // Terminating counts as gone too, even while still serving.
    c.slice("srs-a", port, &[not_ready(leaving), terminating(staying)]);
    wait_origins(&c.proxy, &[]).await;
    let reply = client::get(c.proxy.http, "/live/livestream.flv").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn two_slices_merge_and_a_deleted_slice_takes_its_origins() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (origins, port) = pods(3).await;
    c.kube.apply(origin_pool(NS, POOL, pool_spec()));
    c.slice("srs-a", port, &[ready(&origins[0])]);
    c.slice("srs-b", port, &[ready(&origins[1]), ready(&origins[2])]);
    // A slice of another Service is not ours.
    c.kube.apply(endpoint_slice(
        NS,
        "other-a",
        "other",
        &ports(port),
        &[ready(&origins[2])],
    ));
    wait_origins(&c.proxy, &["srs-0", "srs-1", "srs-2"]).await;

    // An endpoint moving between slices shows up in both for a moment:
    // still one origin.
    c.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
    c.slice("srs-b", port, &[ready(&origins[2])]);
    assert!(c.kube.delete("EndpointSlice", NS, "srs-b"));
    wait_origins(&c.proxy, &["srs-0", "srs-1"]).await;
    assert_eq!(counter(&c.proxy, "origin_removed"), 1, "only srs-2 went away");
    let (by, _body) = play(&c.proxy, "merged").await;
    assert!(by == "srs-0" || by == "srs-1", "{by}");
}

#[tokio::test]
async fn an_expired_watch_relists_without_losing_or_duplicating_origins() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (origins, port) = pods(3).await;
    c.kube.apply(origin_pool(NS, POOL, pool_spec()));
    c.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
    wait_origins(&c.proxy, &["srs-0", "srs-1"]).await;
    let slice_lists = |kube: &FakeKube| {
        kube.requests()
            .iter()
            .filter(|r| r.contains("/endpointslices?") && !r.contains("watch=true"))
            .count()
    };
    let lists_before = slice_lists(&c.kube);

    // While every watch is cut with 410, srs-1 leaves and srs-2 arrives in
    // a new slice; only a relist can tell.
    c.kube.expire_with(|quiet| {
        quiet.apply(service_slice("srs-a", port, &[ready(&origins[0])]));
        quiet.apply(service_slice("srs-b", port, &[ready(&origins[2])]));
    });
    wait_origins(&c.proxy, &["srs-0", "srs-2"]).await;
    assert!(slice_lists(&c.kube) > lists_before, "the watcher relisted");

    assert_eq!(
        counter(&c.proxy, "origin_added"),
        3,
        "srs-0 was never dropped and re-added"
    );
    assert_eq!(counter(&c.proxy, "origin_removed"), 1);
    assert_eq!(
        counter(&c.proxy, "pool_removed"),
        0,
        "the relisted pool is the same pool"
    );
    assert!(counter(&c.proxy, "watch_expired") >= 1);
    let all = c.proxy.ctx.store.list_origins().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");

    // And the watch works again afterwards.
    c.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
    wait_origins(&c.proxy, &["srs-0", "srs-1", "srs-2"]).await;
    assert_eq!(readiness(&c.proxy).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_pool_takes_its_origins_and_ends_their_streams() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (origins, port) = c.two_pods_in_a_pool().await;
    let (_, body) = play(&c.proxy, "livestream").await;

    assert!(c.kube.delete("OriginPool", NS, POOL));
    wait_origins(&c.proxy, &[]).await;
    until_closed(body).await;
    assert_eq!(counter(&c.proxy, "pool_removed"), 1);
    // The slices are still there; without a pool nobody registers them.
    c.slice("srs-a", port, &[ready(&origins[0])]);
    let reply = client::get(c.proxy.http, "/live/livestream.flv").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn status_reports_counts_and_conditions() {
    let c = cluster(DiscoveryMode::Originpool).await;
    let (origins, port) = pods(2).await;
    c.slice("srs-a", port, &[ready(&origins[0]), not_ready(&origins[1])]);
    // A short TTL: the stream count is refreshed every second.
    c.kube.apply(origin_pool(
        NS,
        POOL,
        json!({"service": SERVICE, "registrationTtlSeconds": 3}),
    ));

    let status = pool_status(&c.kube, |s| {
        s["readyOrigins"] == 1 && s["origins"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Ready")["status"], "True");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "EndpointsNotReady");
    assert_eq!(
        status["origins"],
        json!([
            {"name": "srs-0", "ip": "127.0.0.2", "ready": true},
            {"name": "srs-1", "ip": "127.0.0.3", "ready": false, "reason": "NotReady"},
        ])
    );
    let lease = c
        .kube
        .get("Lease", NS, LEASE_NAME)
        .expect("status writer holds a Lease");
    assert!(lease["spec"]["holderIdentity"].as_str().is_some_and(|h| !h.is_empty()));

    // A stream on the pool is counted.
    let (_, _body) = play(&c.proxy, "counted").await;
    pool_status(&c.kube, |s| s["streams"] == 1).await;

    // Both pods ready: Degraded clears, Ready keeps its transition time.
    let ready_since = condition(&status, "Ready")["lastTransitionTime"].clone();
    c.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
    let status = pool_status(&c.kube, |s| s["readyOrigins"] == 2).await;
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(condition(&status, "Ready")["lastTransitionTime"], ready_since);

    // A spec change is observed.
    c.kube.apply(origin_pool(
        NS,
        POOL,
        json!({"service": SERVICE, "registrationTtlSeconds": 3, "weight": 2}),
    ));
    pool_status(&c.kube, |s| s["observedGeneration"] == 2).await;
    let weights: Vec<u32> = c
        .proxy
        .ctx
        .store
        .list_origins()
        .await
        .unwrap()
        .iter()
        .map(|o| o.origin.weight)
        .collect();
    assert_eq!(weights, [2, 2]);

    // Nothing changes, nothing is written, however often it is recomputed.
    let patches = c.kube.status_patches().len();
    one_refresh(&c.proxy).await;
    one_refresh(&c.proxy).await;
    assert_eq!(
        c.kube.status_patches().len(),
        patches,
        "an unchanged status is not written"
    );

    // A Service without the named streaming ports: nothing is routable.
    c.kube.apply(endpoint_slice(
        NS,
        "srs-a",
        SERVICE,
        &[("web", port)],
        &[ready(&origins[0]), ready(&origins[1])],
    ));
    let status = pool_status(&c.kube, |s| s["readyOrigins"] == 0).await;
    let r = condition(&status, "Ready");
    assert_eq!(
        (&r["status"], &r["reason"]),
        (&json!("False"), &json!("NoStreamingPort"))
    );
    assert!(r["message"].as_str().unwrap().contains("no named rtmp port"), "{r}");
    wait_origins(&c.proxy, &[]).await;

    // Nothing left at all.
    c.kube.delete("EndpointSlice", NS, "srs-a");
    let status = pool_status(&c.kube, |s| s["origins"] == json!([])).await;
    assert_eq!(condition(&status, "Ready")["reason"], "NoReadyEndpoints");
    assert!(condition(&status, "Ready")["message"]
        .as_str()
        .unwrap()
        .contains("no ready endpoints"));
}

/// Waits until a registration's TTL has been extended: one refresh tick
/// (which also recomputes status) has run. Between ticks the time left
/// only falls; a tick makes it rise.
async fn one_refresh(proxy: &TestProxy) {
    let last = std::cell::Cell::new(f64::MAX);
    let refreshed = support::eventually(WAIT, || async {
        let origins = proxy.ctx.store.list_origins().await.unwrap();
        let left = origins.first().and_then(|o| o.expires_in_secs).expect("a registration");
        (left > last.replace(left)).then_some(())
    })
    .await;
    assert!(refreshed.is_some(), "registrations are refreshed before they expire");
}

#[tokio::test]
async fn two_replicas_register_alike_and_one_writes_status() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.kubernetes = KubernetesConfig {
        discovery: DiscoveryMode::Originpool,
        namespace: NS.into(),
        service: String::new(),
        kubeconfig: kube.kubeconfig(dir.path()).display().to_string(),
    };
    // Separate stores: the replicas count different streams, the case in
    // which two status writers would overwrite each other forever.
    let a = TestProxy::start(config.clone()).await;
    let b = TestProxy::start(config).await;
    let (origins, port) = pods(2).await;
    kube.apply(service_slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]));
    kube.apply(origin_pool(
        NS,
        POOL,
        json!({"service": SERVICE, "registrationTtlSeconds": 3}),
    ));
    wait_origins(&a, &["srs-0", "srs-1"]).await;
    wait_origins(&b, &["srs-0", "srs-1"]).await;

    kube.apply(service_slice(
        "srs-a",
        port,
        &[ready(&origins[0]), not_ready(&origins[1])],
    ));
    wait_origins(&a, &["srs-0"]).await;
    wait_origins(&b, &["srs-0"]).await;
    pool_status(&kube, |s| s["readyOrigins"] == 1).await;

    // a holds one stream, b two; the status shows the writer's count.
    let mut open = vec![play(&a, "a1").await.1, play(&b, "b1").await.1, play(&b, "b2").await.1];
    for _ in 0..2 {
        one_refresh(&a).await;
        one_refresh(&b).await;
    }
    let shown = kube.get("OriginPool", NS, POOL).unwrap()["status"]["streams"].clone();
    // The other replica's count changes (to 3); the status must not follow.
    let (other, more): (&TestProxy, &[&str]) = match shown.as_i64() {
        Some(1) => (&b, &["b3"]),
        Some(2) => (&a, &["a2", "a3"]),
        _ => panic!("status streams {shown}"),
    };
    for stream in more {
        open.push(play(other, stream).await.1);
    }
    for _ in 0..2 {
        one_refresh(&a).await;
        one_refresh(&b).await;
    }
    let now = &kube.get("OriginPool", NS, POOL).unwrap()["status"]["streams"];
    assert_eq!(*now, shown, "only the Lease holder writes status");
}

#[tokio::test]
async fn pool_policy_is_applied_and_disagreement_is_reported() {
    let c = cluster(DiscoveryMode::Originpool).await;
    c.kube.apply(origin_pool(
        NS,
        POOL,
        json!({"service": SERVICE, "policy": "consistent-hash"}),
    ));
    let applied = support::eventually(WAIT, || async {
        (c.proxy.ctx.balance_policy() == Policy::ConsistentHash).then_some(())
    })
    .await;
    assert!(applied.is_some(), "the pool's policy places new streams");

    c.kube.apply(origin_pool(
        NS,
        "second",
        json!({"service": "srs-2", "policy": "random"}),
    ));
    let fallback = support::eventually(WAIT, || async {
        (c.proxy.ctx.balance_policy() == c.proxy.ctx.config.balance_policy).then_some(())
    })
    .await;
    assert!(fallback.is_some(), "pools that disagree fall back to balance_policy");
    let status = pool_status(&c.kube, |s| {
        condition(s, "Degraded")["message"]
            .as_str()
            .is_some_and(|m| m.contains("policy"))
    })
    .await;
    assert!(condition(&status, "Degraded")["message"]
        .as_str()
        .unwrap()
        .contains("consistent-hash is not applied"));
}

#[tokio::test]
async fn service_mode_needs_no_custom_resource() {
    let c = cluster(DiscoveryMode::Service).await;
    let (origins, port) = pods(2).await;
    c.slice("srs-a", port, &[ready(&origins[0]), ready(&origins[1])]);
    wait_origins(&c.proxy, &["srs-0", "srs-1"]).await;
    let listed = c.proxy.ctx.store.list_origins().await.unwrap();
    assert_eq!(listed[0].origin.pool.as_deref(), Some(SERVICE));
    let (_, _body) = play(&c.proxy, "livestream").await;
    c.slice("srs-a", port, &[ready(&origins[1])]);
    wait_origins(&c.proxy, &["srs-1"]).await;
    assert_eq!(c.kube.requests_matching("originpools"), 0);
    assert_eq!(c.kube.requests_matching("leases"), 0);
    assert!(c.kube.status_patches().is_empty());
}

#[tokio::test]
async fn an_unreachable_cluster_is_not_ready_until_it_answers() {
    // Take a port, then stop listening on it.
    let addr = FakeKube::start().await.addr;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kube::write_kubeconfig(dir.path(), &format!("http://{addr}"));
    let proxy = proxy_for(DiscoveryMode::Originpool, kubeconfig.display().to_string()).await;

    let failing = support::eventually(WAIT, || async {
        let (status, error) = readiness(&proxy).await;
        (status == StatusCode::SERVICE_UNAVAILABLE
            && error.contains("originpools")
            && !error.contains("not listed yet"))
        .then_some(error)
    })
    .await;
    let error = failing.expect("readiness reports the failing watch");
    assert!(error.contains("kubernetes discovery"), "{error}");
    assert!(counter(&proxy, "watch_error") >= 1);
    // The rest of the proxy keeps working: heartbeats still register.
    let origin = FakeOrigin::start("heartbeat").await;
    origin.register(proxy.api).await;

    // The API server comes back; the backoff retries and readiness follows.
    let kube = FakeKube::start_on(addr).await;
    let (pods, port) = pods(1).await;
    kube.apply(service_slice("srs-a", port, &[ready(&pods[0])]));
    kube.apply(origin_pool(NS, POOL, pool_spec()));
    wait_origins(&proxy, &["srs-0"]).await;
    let ok = support::eventually(WAIT, || async {
        (readiness(&proxy).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ok.is_some(), "ready again: {:?}", readiness(&proxy).await);
    assert!(counter(&proxy, "watch_recovered") >= 1);
}

#[tokio::test]
async fn an_unusable_kubeconfig_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let proxy = proxy_for(DiscoveryMode::Originpool, missing.display().to_string()).await;
    let error = support::eventually(WAIT, || async {
        let (status, error) = readiness(&proxy).await;
        (status == StatusCode::SERVICE_UNAVAILABLE && error.contains("kubeconfig")).then_some(error)
    })
    .await;
    assert!(error.is_some(), "{:?}", readiness(&proxy).await);
    let origin = FakeOrigin::start("heartbeat").await;
    origin.register(proxy.api).await;
    let resp = client::send(proxy.http, Method::GET, "/live/livestream.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK, "heartbeat origins still serve");
}
