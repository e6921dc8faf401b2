//! Kubernetes discovery against the fake API server in
//! tests/support/kube.rs: only what a real API server cannot easily be made
//! to do (expire every watch with 410 on demand, count the requests it got,
//! vanish and come back on the same address) or what needs no server at
//! all. Everything else runs against a real control plane in
//! tests/kubernetes_cluster.rs. The proxy's real `kube::Client` and
//! watchers are used here too, with fake SRS origins on loopback addresses
//! standing in for pods.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use srs_proxy::config::{DiscoveryMode, KubernetesConfig};
use srs_proxy::discovery::lease::LEASE_NAME;
use support::client;
use support::discovery::{condition, one_refresh, play, readiness, wait_origins, WAIT};
use support::kube::{endpoint, endpoint_slice, origin_pool, FakeKube};
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};
use tempfile::TempDir;

const NS: &str = "media";
const POOL: &str = "origins";
const SERVICE: &str = "srs";

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
    // Some tests also register heartbeat origins beside discovery.
    config.register.enabled = srs_proxy::config::RegisterMode::On;
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

/// A long TTL: an origin that goes away here was removed, not expired.
fn pool_spec() -> Value {
    json!({"service": SERVICE, "registrationTtlSeconds": 300})
}

fn counter(proxy: &TestProxy, kind: &str) -> u64 {
    proxy
        .ctx
        .metrics
        .discovery_events_total
        .with_label_values(&[kind])
        .get()
}

async fn pool_status(kube: &FakeKube, check: impl Fn(&Value) -> bool) -> Value {
    let found = support::eventually(WAIT, || async {
        let status = kube.get("OriginPool", NS, POOL)?.get("status")?.clone();
        check(&status).then_some(status)
    })
    .await;
    found.unwrap_or_else(|| panic!("status never matched; last: {:?}", kube.get("OriginPool", NS, POOL)))
}

// Fake server: it cuts every watch with 410 Gone on demand and changes state while no watch is open.
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

// Fake server: it counts the status PATCH requests ("an unchanged status is not written"), which a real one does not expose.
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

// Fake server: it is stopped and restarted on the same address to make the cluster unreachable, then back.
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
    // The rest of the proxy keeps working: heartbeats (allowed beside
    // discovery here) still register.
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

// No API server at all: the kubeconfig itself is missing.
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
