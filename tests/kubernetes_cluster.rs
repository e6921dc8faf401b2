//! Discovery, the CRD, the chart's RBAC and the manifests against a real
//! control plane: etcd, kube-apiserver and kube-controller-manager built by
//! `make kube-bin` (see tests/support/kube_cluster.rs).
//!
//! The proxy runs in-process with a kubeconfig holding a ServiceAccount
//! token bound by the Role and RoleBinding the chart renders — never the
//! admin credential, which only the test's own setup uses. Pods are
//! created through the API and their readiness set through the status
//! subresource (there is no kubelet); the EndpointSlice controller turns
//! them into slices, and fake SRS origins listen on the Pod addresses.
//!
//! Its own harness (`harness = false`): the binary re-executes itself in a
//! network and PID namespace, starts the control plane once, runs every
//! test against it and stops it. Each test works in a namespace of its own.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use http::StatusCode;
use k8s_openapi::api::authorization::v1::SelfSubjectRulesReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Value};
use srs_proxy::config::{DiscoveryMode, KubernetesConfig};
use srs_proxy::crd::OriginPool;
use srs_proxy::discovery::lease::LEASE_NAME;
use support::client;
use support::discovery::{condition, one_refresh, play, readiness, until_closed, wait_origins, WAIT};
use support::kube_cluster::{
    self, chart_render, pods, yaml_documents, KubeCluster, Objects, TestNamespace, MANAGER, NODE,
};
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};

const SERVICE: &str = "srs";
const POOL: &str = "origins";
const CRD: &str = "originpools.srsproxy.io";

static CLUSTER: OnceLock<KubeCluster> = OnceLock::new();

fn cluster() -> &'static KubeCluster {
    CLUSTER.get().expect("control plane started by main")
}

fn main() -> ExitCode {
    kube_cluster::in_own_namespaces(|| {
        let args = Arguments::from_args();
        let tests = tests();
        if !args.list {
            match KubeCluster::start() {
                Ok(c) => {
                    let _ = CLUSTER.set(c);
                }
                Err(e) => {
                    eprintln!("the Kubernetes control plane did not start: {e}");
                    return ExitCode::from(101);
                }
            }
            if let Err(e) = run(prepare_cluster()) {
                eprintln!("preparing the control plane failed: {e}");
                return ExitCode::from(101);
            }
        }
        let conclusion = libtest_mimic::run(&args, tests);
        // Stop the control plane before reporting (its PID namespace would
        // end it anyway).
        if let Some(c) = CLUSTER.get() {
            c.stop();
        }
        conclusion.exit_code()
    })
}

fn tests() -> Vec<Trial> {
    macro_rules! trial {
        ($name:ident) => {
            Trial::test(stringify!($name), || {
                run($name());
                Ok(())
            })
        };
    }
    vec![
        trial!(the_crd_from_crds_is_established),
        trial!(originpools_from_deploy_and_the_chart_pass_validation_and_a_bad_spec_is_rejected),
        trial!(every_object_of_deploy_and_the_chart_render_passes_server_side_dry_run),
        trial!(the_charts_role_allows_discovery_and_nothing_more),
        trial!(a_ready_pod_gets_the_stream_and_readiness_moves_it),
        trial!(a_deleted_pod_ends_its_streams),
        trial!(a_deleted_pool_ends_its_streams),
        trial!(manual_slices_merge_and_a_deleted_slice_takes_its_origins),
        trial!(pool_policy_is_applied_and_disagreement_is_reported),
        trial!(service_mode_works_with_its_chart_role),
        trial!(two_replicas_register_alike_and_one_writes_status),
    ]
}

/// Runs one test on a runtime of its own.
fn run<T>(test: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// What every test relies on: the CRD from crds/ (installed as `kubectl
/// apply -f crds/` would), and the Node test Pods are bound to.
async fn prepare_cluster() -> Result<(), String> {
    let admin = cluster().admin().await;
    let objects = Objects::new(admin.clone()).await;
    for crd in yaml_documents(&kube_cluster::repo().join("crds/originpools.srsproxy.io.yaml")) {
        objects
            .apply(&crd, false)
            .await
            .map_err(|e| format!("CRD from crds/ rejected: {e}"))?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let established = support::eventually(WAIT, || async {
        let crd = crds.get(CRD).await.ok()?;
        let conditions = crd.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    established.ok_or("the OriginPool CRD never became Established")?;
    let nodes: Api<Node> = Api::all(admin);
    let node = serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(|e| format!("Node: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Test fixtures

async fn namespace(name: &str) -> TestNamespace {
    TestNamespace::create(cluster(), name).await
}

async fn proxy(ns: &TestNamespace, discovery: DiscoveryMode, kubeconfig: &Path) -> TestProxy {
    TestProxy::start(proxy_config(&ns.name, discovery, kubeconfig)).await
}

fn proxy_config(namespace: &str, discovery: DiscoveryMode, kubeconfig: &Path) -> srs_proxy::config::Config {
    let mut config = test_config();
    config.kubernetes = KubernetesConfig {
        discovery,
        namespace: namespace.into(),
        service: SERVICE.into(),
        kubeconfig: kubeconfig.display().to_string(),
    };
    config
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A long TTL: an origin that goes away here was removed, not expired.
fn pool_spec() -> Value {
    json!({"service": SERVICE, "registrationTtlSeconds": 300})
}

// ---------------------------------------------------------------------------
// The CRD, the manifests and the chart, validated by the server

async fn the_crd_from_crds_is_established() {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster().admin().await);
    let crd = crds.get(CRD).await.expect("installed from crds/");
    let status = crd.status.expect("status");
    for type_ in ["NamesAccepted", "Established"] {
        let c = status.conditions.iter().flatten().find(|c| c.type_ == type_);
        assert_eq!(c.map(|c| c.status.as_str()), Some("True"), "{type_}: {c:?}");
    }
    // The server's own discovery serves the kind the proxy watches.
    let objects = Objects::new(cluster().admin().await).await;
    assert!(objects.serves(&json!({"apiVersion": "srsproxy.io/v1alpha1", "kind": "OriginPool"})));
}

async fn originpools_from_deploy_and_the_chart_pass_validation_and_a_bad_spec_is_rejected() {
    let ns = namespace("pool-validation").await;
    let objects = Objects::new(ns.admin.clone()).await;
    let mut pools: Vec<(String, Value)> = Vec::new();
    for object in yaml_documents(&kube_cluster::repo().join("deploy/originpool.yaml")) {
        pools.push(("deploy/originpool.yaml".into(), object));
    }
    for set in ["default", "external-redis", "single-memory"] {
        for object in chart_render(set, "srs-proxy", &ns.name) {
            if object["kind"] == "OriginPool" {
                pools.push((format!("chart render ({set})"), object));
            }
        }
    }
    assert!(pools.len() >= 4, "{pools:?}");
    for (source, mut pool) in pools {
        pool["metadata"]["namespace"] = json!(ns.name);
        let accepted = objects
            .apply(&pool, true)
            .await
            .unwrap_or_else(|e| panic!("OriginPool from {source} rejected: {e}"));
        // Defaults come from the server-side schema.
        assert_eq!(accepted.data["spec"]["ports"]["rtmp"], "rtmp", "{source}");
    }

    // Specs the schema forbids, each rejected by the server naming the field.
    let bad = [
        (json!({"service": SERVICE, "policy": "round-robin"}), "spec.policy"),
        (json!({"service": SERVICE, "weight": 0}), "spec.weight"),
        (
            json!({"service": SERVICE, "registrationTtlSeconds": 0}),
            "spec.registrationTtlSeconds",
        ),
        (json!({"service": SERVICE, "maxStreams": -1}), "spec.maxStreams"),
        (json!({"service": ""}), "spec.service"),
        (json!({"policy": "random"}), "spec.service"),
    ];
    let api: Api<OriginPool> = ns.api();
    for (spec, field) in bad {
        let pool = json!({"apiVersion": "srsproxy.io/v1alpha1", "kind": "OriginPool", "metadata": {"name": "bad"}, "spec": spec});
        let status = api_error(
            api.patch("bad", &PatchParams::apply(MANAGER), &Patch::Apply(&pool))
                .await,
        );
        assert_eq!(status.code, 422, "{spec}: {status:?}");
        assert!(status.message.contains(field), "{spec}: {}", status.message);
    }
}

async fn every_object_of_deploy_and_the_chart_render_passes_server_side_dry_run() {
    let admin = cluster().admin().await;
    let objects = Objects::new(admin.clone()).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(kube_cluster::repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut checked = BTreeSet::new();
    for file in &files {
        for object in yaml_documents(file) {
            let what = format!("{} {} ({})", object["kind"], object["metadata"]["name"], file.display());
            objects
                .apply(&object, true)
                .await
                .unwrap_or_else(|e| panic!("{what} rejected: {e}"));
            // Namespaced objects need their namespace to exist, not just
            // to pass a dry run.
            if object["kind"] == "Namespace" {
                objects.apply(&object, false).await.unwrap();
            }
            checked.insert(object["kind"].as_str().unwrap().to_string());
        }
    }
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "OriginPool",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(checked.contains(kind), "deploy/ has no {kind}: {checked:?}");
    }

    // The chart's default render (deploy/ is generated from it; the chart
    // tests pin that) and its other tested value sets, each in a namespace
    // of its own. ServiceMonitor belongs to the Prometheus operator, whose
    // API this server does not have.
    for set in [
        "default",
        "external-redis",
        "heartbeat-everything",
        "service-discovery",
        "single-memory",
    ] {
        let ns = format!("render-{set}");
        objects
            .apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
            )
            .await
            .unwrap();
        let rendered = chart_render(set, "srs-proxy", &ns);
        assert!(!rendered.is_empty());
        for object in rendered {
            if object["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com/")
                && set != "default"
            {
                continue;
            }
            let what = format!("{} {} (chart, {set})", object["kind"], object["metadata"]["name"]);
            objects
                .apply(&object, true)
                .await
                .unwrap_or_else(|e| panic!("{what} rejected: {e}"));
        }
    }
}

async fn the_charts_role_allows_discovery_and_nothing_more() {
    for (set, mode_rules) in [
        (
            "default",
            vec![
                ("discovery.k8s.io", "endpointslices", "get,list,watch"),
                ("srsproxy.io", "originpools", "get,list,watch"),
                ("srsproxy.io", "originpools/status", "get,patch,update"),
                ("coordination.k8s.io", "leases", "create,get,patch,update"),
            ],
        ),
        (
            "service-discovery",
            vec![("discovery.k8s.io", "endpointslices", "get,list,watch")],
        ),
    ] {
        let ns = namespace(&format!("rbac-{set}")).await;
        let kubeconfig = ns.install_chart_rbac(set).await;
        let proxy = kube_cluster::client_from(&kubeconfig).await.unwrap();

        // What the token may do in its namespace, as the server computes it.
        let review: SelfSubjectRulesReview = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": ns.name},
        }))
        .unwrap();
        let reviews: Api<SelfSubjectRulesReview> = Api::all(proxy.clone());
        let rules = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("rules review")
            .status
            .expect("status")
            .resource_rules;
        let granted: BTreeSet<(String, String, String)> = rules
            .iter()
            .filter(|r| {
                // Every authenticated user may review itself; that is not
                // the chart's grant.
                !r.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g.starts_with("authorization.k8s.io") || g.starts_with("authentication.k8s.io"))
            })
            .flat_map(|r| {
                let mut verbs = r.verbs.clone();
                verbs.sort();
                let verbs = verbs.join(",");
                let groups = r.api_groups.clone().unwrap_or_default();
                let resources = r.resources.clone().unwrap_or_default();
                groups
                    .into_iter()
                    .flat_map(move |g| {
                        let verbs = verbs.clone();
                        resources
                            .clone()
                            .into_iter()
                            .map(move |res| (g.clone(), res, verbs.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: BTreeSet<(String, String, String)> = mode_rules
            .iter()
            .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
            .collect();
        assert_eq!(granted, expected, "{set}: the token's grants are exactly discovery's");

        // Allowed: what discovery does.
        let slices: Api<EndpointSlice> = Api::namespaced(proxy.clone(), &ns.name);
        slices
            .list(&ListParams::default())
            .await
            .expect("endpointslices are listable");
        // Refused: anything else.
        let secrets: Api<Secret> = Api::namespaced(proxy.clone(), &ns.name);
        let refused = api_error(secrets.list(&ListParams::default()).await);
        assert_eq!(
            (refused.code, refused.reason.as_str()),
            (403, "Forbidden"),
            "{set}: {refused:?}"
        );
        assert!(refused.message.contains("secrets"), "{}", refused.message);
        let pods: Api<Pod> = Api::namespaced(proxy.clone(), &ns.name);
        assert_eq!(api_error(pods.list(&ListParams::default()).await).code, 403);
        let elsewhere: Api<EndpointSlice> = Api::namespaced(proxy.clone(), "default");
        assert_eq!(
            api_error(elsewhere.list(&ListParams::default()).await).code,
            403,
            "{set}: the Role is namespaced"
        );
        let pools: Api<OriginPool> = Api::namespaced(proxy.clone(), &ns.name);
        let pool = json!({"apiVersion": "srsproxy.io/v1alpha1", "kind": "OriginPool", "metadata": {"name": "x"}, "spec": {"service": "x"}});
        assert_eq!(
            api_error(
                pools
                    .patch("x", &PatchParams::apply(MANAGER), &Patch::Apply(&pool))
                    .await
            )
            .code,
            403,
            "{set}: the proxy never writes a pool's spec"
        );
    }
}

// ---------------------------------------------------------------------------
// Discovery end to end

async fn a_ready_pod_gets_the_stream_and_readiness_moves_it() {
    let ns = namespace("readiness").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    let origins = ns.service_with_pods(SERVICE, &[true, false]).await;
    ns.pool(POOL, pool_spec()).await;
    let proxy = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    wait_origins(&proxy, &["srs-0"]).await;

    // The slices are the controller's, built from the Pods.
    let slices = ns
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={SERVICE}")))
        .await
        .unwrap();
    assert!(!slices.items.is_empty());
    for slice in &slices.items {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("endpointslice.kubernetes.io/managed-by").map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
    }
    let listed = proxy.ctx.store.list_origins().await.unwrap();
    assert_eq!(&*listed[0].origin.ip, origins[0].addr.ip().to_string());
    assert_eq!(listed[0].origin.ports.http, Some(origins[0].addr.port()));
    assert_eq!(readiness(&proxy).await.0, StatusCode::OK);

    // Served by the ready Pod, at its address.
    let (served_by, body) = play(&proxy, "livestream").await;
    assert_eq!(served_by, "srs-0");
    assert!(origins[0]
        .requests()
        .iter()
        .any(|r| r.path_and_query == "/live/livestream.flv"));
    let metrics = client::get(proxy.api, "/metrics").await.text();
    assert!(
        metrics.contains("srs_proxy_discovery_propagation_seconds_count"),
        "{metrics}"
    );
    let live = metrics
        .lines()
        .find(|l| l.starts_with("srs_proxy_origins_live{") && l.contains("source=\"kubernetes\""));
    assert!(live.is_some_and(|l| l.ends_with(" 1")), "{live:?}");

    // Status, written through the chart's Role by the Lease holder.
    let status = ns
        .pool_status(POOL, |s| {
            s["readyOrigins"] == 1 && s["origins"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["reason"], "EndpointsNotReady");
    let lease = ns
        .api::<Lease>()
        .get(LEASE_NAME)
        .await
        .expect("the status writer holds the Lease");
    assert!(lease
        .spec
        .and_then(|s| s.holder_identity)
        .is_some_and(|h| !h.is_empty()));

    // srs-1 turns ready: both receive streams.
    ns.set_ready("srs-1", true).await;
    wait_origins(&proxy, &["srs-0", "srs-1"]).await;
    ns.pool_status(POOL, |s| s["readyOrigins"] == 2).await;

    // srs-0 turns not ready: its stream ends and comes back on srs-1.
    ns.set_ready("srs-0", false).await;
    wait_origins(&proxy, &["srs-1"]).await;
    until_closed(body).await;
    let (second, _body) = play(&proxy, "livestream").await;
    assert_eq!(second, "srs-1", "the stream is re-claimed on the ready Pod");
    assert_eq!(readiness(&proxy).await.0, StatusCode::OK);
}

async fn a_deleted_pod_ends_its_streams() {
    let ns = namespace("pod-deleted").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    let _origins = ns.service_with_pods(SERVICE, &[true, true]).await;
    ns.pool(POOL, pool_spec()).await;
    let proxy = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    wait_origins(&proxy, &["srs-0", "srs-1"]).await;

    let (first, body) = play(&proxy, "livestream").await;
    let other = if first == "srs-0" { "srs-1" } else { "srs-0" };
    // A graceful delete: with no kubelet to finish it the Pod stays
    // terminating, which is not routable even while it still serves.
    ns.api::<Pod>().delete(&first, &DeleteParams::default()).await.unwrap();
    wait_origins(&proxy, &[other]).await;
    until_closed(body).await;
    let slices = ns.api::<EndpointSlice>().list(&ListParams::default()).await.unwrap();
    let terminating = slices
        .items
        .iter()
        .flat_map(|s| &s.endpoints)
        .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(first.as_str()));
    assert_eq!(
        terminating
            .and_then(|e| e.conditions.as_ref())
            .and_then(|c| c.terminating),
        Some(true),
        "{slices:?}"
    );
    let (second, _open) = play(&proxy, "livestream").await;
    assert_eq!(second, other);

    // Gone for good, then the last one too: nothing left to serve.
    ns.api::<Pod>()
        .delete(&first, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    ns.api::<Pod>()
        .delete(other, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_origins(&proxy, &[]).await;
    let reply = client::get(proxy.http, "/live/another.flv").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

async fn a_deleted_pool_ends_its_streams() {
    let ns = namespace("pool-deleted").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    let _origins = ns.service_with_pods(SERVICE, &[true]).await;
    ns.pool(POOL, pool_spec()).await;
    let proxy = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    wait_origins(&proxy, &["srs-0"]).await;
    let (_, body) = play(&proxy, "livestream").await;

    ns.api::<OriginPool>()
        .delete(POOL, &DeleteParams::default())
        .await
        .unwrap();
    wait_origins(&proxy, &[]).await;
    until_closed(body).await;
    // The Pod and its slice are still there; without a pool nobody
    // registers them.
    let reply = client::get(proxy.http, "/live/livestream.flv").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readiness(&proxy).await.0, StatusCode::OK);
}

/// An EndpointSlice written by hand, as a mesh or another controller would
/// for a Service without a selector.
fn manual_slice(name: &str, port: u16, endpoints: &[(&FakeOrigin, bool)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": SERVICE,
            "endpointslice.kubernetes.io/managed-by": MANAGER,
        }},
        "addressType": "IPv4",
        "ports": [{"name": "rtmp", "port": 1935}, {"name": "http", "port": port}, {"name": "api", "port": 1985}],
        "endpoints": endpoints.iter().map(|(o, ready)| json!({
            "addresses": [o.addr.ip().to_string()],
            "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": o.name},
        })).collect::<Vec<_>>(),
    })
}

async fn manual_slices_merge_and_a_deleted_slice_takes_its_origins() {
    let ns = namespace("manual-slices").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    let origins = pods(3).await;
    let port = origins[0].addr.port();
    let service = serde_json::from_value(json!({
        "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap();
    ns.api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = ns.api();
    let apply = |slice: Value| {
        let slices = slices.clone();
        async move {
            let name = slice["metadata"]["name"].as_str().unwrap().to_string();
            slices
                .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&slice))
                .await
                .unwrap_or_else(|e| panic!("slice {name}: {e}"));
        }
    };
    apply(manual_slice("srs-a", port, &[(&origins[0], true)])).await;
    apply(manual_slice("srs-b", port, &[(&origins[1], true), (&origins[2], true)])).await;
    ns.pool(POOL, pool_spec()).await;
    let proxy = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    wait_origins(&proxy, &["srs-0", "srs-1", "srs-2"]).await;

    // An endpoint moving between slices shows up in both for a moment:
    // still one origin.
    apply(manual_slice("srs-a", port, &[(&origins[0], true), (&origins[1], true)])).await;
    apply(manual_slice("srs-b", port, &[(&origins[2], true)])).await;
    slices.delete("srs-b", &DeleteParams::default()).await.unwrap();
    wait_origins(&proxy, &["srs-0", "srs-1"]).await;
    // The event is counted just after the store write the wait saw.
    let removed = || {
        proxy
            .ctx
            .metrics
            .discovery_events_total
            .with_label_values(&["origin_removed"])
            .get()
    };
    support::eventually(WAIT, || async { (removed() > 0).then_some(()) }).await;
    assert_eq!(removed(), 1, "only srs-2 went away");
    let (by, _body) = play(&proxy, "merged").await;
    assert!(by == "srs-0" || by == "srs-1", "{by}");
}

async fn pool_policy_is_applied_and_disagreement_is_reported() {
    let ns = namespace("policy").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    ns.pool(POOL, json!({"service": SERVICE, "policy": "consistent-hash"}))
        .await;
    let proxy = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    let applied = support::eventually(WAIT, || async {
        (proxy.ctx.balance_policy() == srs_proxy::balance::Policy::ConsistentHash).then_some(())
    })
    .await;
    assert!(applied.is_some(), "the pool's policy places new streams");

    ns.pool("second", json!({"service": "srs-2", "policy": "random"})).await;
    let fallback = support::eventually(WAIT, || async {
        (proxy.ctx.balance_policy() == proxy.ctx.config.balance_policy).then_some(())
    })
    .await;
    assert!(fallback.is_some(), "pools that disagree fall back to balance_policy");
    let status = ns
        .pool_status(POOL, |s| {
            condition(s, "Degraded")["message"]
                .as_str()
                .is_some_and(|m| m.contains("consistent-hash is not applied"))
        })
        .await;
    assert_eq!(condition(&status, "Degraded")["status"], "True");
}

async fn service_mode_works_with_its_chart_role() {
    let ns = namespace("service-mode").await;
    // The chart's Role for discovery.mode=service: EndpointSlices only.
    let kubeconfig = ns.install_chart_rbac("service-discovery").await;
    let _origins = ns.service_with_pods(SERVICE, &[true, true]).await;
    let proxy = proxy(&ns, DiscoveryMode::Service, &kubeconfig).await;
    wait_origins(&proxy, &["srs-0", "srs-1"]).await;
    let listed = proxy.ctx.store.list_origins().await.unwrap();
    assert_eq!(listed[0].origin.pool.as_deref(), Some(SERVICE));
    assert_eq!(
        readiness(&proxy).await.0,
        StatusCode::OK,
        "nothing it needs is forbidden"
    );

    let (first, body) = play(&proxy, "livestream").await;
    ns.set_ready(&first, false).await;
    let other = if first == "srs-0" { "srs-1" } else { "srs-0" };
    wait_origins(&proxy, &[other]).await;
    until_closed(body).await;
    assert_eq!(play(&proxy, "livestream").await.0, other);
    // No Lease: in this mode there is no status to write.
    assert!(ns.api::<Lease>().get_opt(LEASE_NAME).await.unwrap().is_none());
}

async fn two_replicas_register_alike_and_one_writes_status() {
    let ns = namespace("replicas").await;
    let kubeconfig = ns.install_chart_rbac("default").await;
    let _origins = ns.service_with_pods(SERVICE, &[true, true]).await;
    // A short TTL: stream counts are refreshed every second.
    ns.pool(POOL, json!({"service": SERVICE, "registrationTtlSeconds": 3}))
        .await;
    // Separate stores: the replicas count different streams, the case in
    // which two status writers would overwrite each other forever.
    let a = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    let b = proxy(&ns, DiscoveryMode::Originpool, &kubeconfig).await;
    wait_origins(&a, &["srs-0", "srs-1"]).await;
    wait_origins(&b, &["srs-0", "srs-1"]).await;
    ns.pool_status(POOL, |s| s["readyOrigins"] == 2).await;

    // a holds one stream, b two; the status shows the writer's count.
    let mut open = vec![play(&a, "a1").await.1, play(&b, "b1").await.1, play(&b, "b2").await.1];
    for _ in 0..2 {
        one_refresh(&a).await;
        one_refresh(&b).await;
    }
    let pools: Api<OriginPool> = ns.api();
    let streams = |pool: OriginPool| pool.status.map(|s| s.streams);
    let shown = streams(pools.get(POOL).await.unwrap());
    let (other, more): (&TestProxy, &[&str]) = match shown {
        Some(1) => (&b, &["b3"]),
        Some(2) => (&a, &["a2", "a3"]),
        _ => panic!("status streams {shown:?}"),
    };
    for stream in more {
        open.push(play(other, stream).await.1);
    }
    for _ in 0..2 {
        one_refresh(&a).await;
        one_refresh(&b).await;
    }
    let now = streams(pools.get(POOL).await.unwrap());
    assert_eq!(now, shown, "only the Lease holder writes status");
    let lease = ns.api::<Lease>().get(LEASE_NAME).await.unwrap();
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
}
