//! `make bench`: how long a Pod readiness change takes to move streams, on
//! the real control plane of tests/kubernetes_cluster.rs (etcd,
//! kube-apiserver, the EndpointSlice controller; `make kube-bin`).
//!
//! Each round sets the Ready condition of the Pod serving a stream to
//! False and measures
//!
//! * end to end: from the status update returning to the first play of
//!   that stream served by the other Pod (API server → EndpointSlice
//!   controller → slice watch → proxy → store → claim);
//! * `srs_proxy_discovery_propagation_seconds`: the proxy's own part, from
//!   the slice event arriving to the store written.
//!
//! Printed, not asserted: the figures depend on the machine's load.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use srs_proxy::config::{DiscoveryMode, KubernetesConfig};
use srs_proxy::origin::OriginSource;
use support::discovery::served_by;
use support::kube_cluster::{self, KubeCluster, TestNamespace};
use support::proxy::{test_config, TestProxy};
use support::summary;

const ROUNDS: usize = 15;
const SERVICE: &str = "srs";

static CLUSTER: OnceLock<KubeCluster> = OnceLock::new();

fn main() -> ExitCode {
    kube_cluster::in_own_namespaces(|| {
        if std::env::args().any(|a| a == "--list") {
            return ExitCode::SUCCESS;
        }
        let cluster = match KubeCluster::start() {
            Ok(c) => CLUSTER.get_or_init(|| c),
            Err(e) => {
                eprintln!("the Kubernetes control plane did not start: {e}");
                return ExitCode::from(101);
            }
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(bench(cluster));
        cluster.stop();
        ExitCode::SUCCESS
    })
}

async fn live(proxy: &TestProxy) -> usize {
    let origins = proxy.ctx.store.list_origins().await.unwrap();
    origins
        .iter()
        .filter(|o| o.origin.source == OriginSource::Kubernetes)
        .count()
}

async fn bench(cluster: &'static KubeCluster) {
    let admin = cluster.admin().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(admin);
    let node = serde_json::from_value(json!({"metadata": {"name": kube_cluster::NODE}})).unwrap();
    nodes.create(&Default::default(), &node).await.expect("Node");
    let objects = kube_cluster::Objects::new(cluster.admin().await).await;
    for crd in kube_cluster::yaml_documents(&kube_cluster::repo().join("crds/originpools.srsproxy.io.yaml")) {
        objects.apply(&crd, false).await.expect("CRD");
    }
    // Service discovery mode needs no CRD to be established first; the
    // slice path measured is the same.
    let ns = TestNamespace::create(cluster, "bench").await;
    let kubeconfig = ns.install_chart_rbac("service-discovery").await;
    let _origins = ns.service_with_pods(SERVICE, &[true, true]).await;
    let mut config = test_config();
    config.kubernetes = KubernetesConfig {
        discovery: DiscoveryMode::Service,
        namespace: ns.name.clone(),
        service: SERVICE.into(),
        kubeconfig: kubeconfig.display().to_string(),
    };
    let proxy = TestProxy::start(config).await;
    let histogram = &proxy.ctx.metrics.discovery_propagation_seconds;

    let mut end_to_end = Vec::new();
    let mut discovery = Vec::new();
    for round in 0..ROUNDS {
        let both = support::eventually(Duration::from_secs(60), || async {
            (live(&proxy).await == 2).then_some(())
        })
        .await;
        assert!(both.is_some(), "both Pods registered again");
        let stream = format!("bench-{round}");
        let before = served_by(&proxy, &stream).await.expect("served");
        let (sum, count) = (histogram.get_sample_sum(), histogram.get_sample_count());

        ns.set_ready(&before, false).await;
        let changed = Instant::now();
        loop {
            if served_by(&proxy, &stream).await.is_some_and(|by| by != before) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(60),
                "round {round}: the stream never moved"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        end_to_end.push(changed.elapsed().as_secs_f64() * 1000.0);
        let observed = histogram.get_sample_count() - count;
        if observed > 0 {
            discovery.push((histogram.get_sample_sum() - sum) / observed as f64 * 1000.0);
        }
        ns.set_ready(&before, true).await;
    }
    println!("Pod Ready=False → streams move (real API server and EndpointSlice controller):");
    summary("end to end (status update → play elsewhere)", end_to_end);
    summary("srs_proxy_discovery_propagation_seconds", discovery);
}
