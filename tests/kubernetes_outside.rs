//! Outside a cluster (no pod environment, no kubeconfig) configured
//! discovery is off: the proxy is ready and serves heartbeat origins.
//!
//! Its own test binary, because it clears process-wide environment
//! variables that kube reads.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use srs_proxy::config::{DiscoveryMode, KubernetesConfig};
use srs_proxy::discovery::kubernetes::{client, ClusterError};
use support::client as http_client;
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};

#[tokio::test]
async fn without_a_cluster_discovery_is_off_and_the_proxy_ready() {
    let home = tempfile::tempdir().unwrap();
    // Nothing else runs in this binary while the environment changes.
    std::env::remove_var("KUBECONFIG");
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    std::env::remove_var("KUBERNETES_SERVICE_PORT");
    std::env::set_var("HOME", home.path());

    let config = KubernetesConfig {
        discovery: DiscoveryMode::Originpool,
        ..KubernetesConfig::default()
    };
    assert!(matches!(client(&config).await, Err(ClusterError::NoCluster(_))));

    let mut proxy_config = test_config();
    proxy_config.kubernetes = config;
    let proxy = TestProxy::start(proxy_config).await;
    // Readiness must not depend on a cluster that does not exist: poll it
    // a while rather than once, the decision is made in the background.
    for _ in 0..20 {
        let reply = http_client::get(proxy.api, "/api/v1/versions").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(proxy.ctx.discovery.unready_reason(), None);

    let origin = FakeOrigin::start("heartbeat").await;
    origin.register(proxy.api).await;
    let resp = http_client::send(proxy.http, Method::GET, "/live/livestream.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
