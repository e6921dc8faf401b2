//! The watchers: OriginPools, and for each pool the EndpointSlices of its
//! Service; every routable endpoint is registered in the store.
//!
//! Built on `kube::runtime` watchers and reflectors with the default
//! backoff: a failed list or watch is retried, a `410 Gone` relists, and a
//! reflector only swaps in a relisted state once the list is complete, so a
//! relist neither drops nor duplicates origins. Each pool task compares the
//! origins its slices describe with the ones it registered and writes only
//! the difference; a tick at a third of the registration TTL refreshes
//! them all. Registrations are idempotent, so every replica does this;
//! status is written by the replica holding the [`lease`](super::lease).
//!
//! # Why not `kube::runtime::Controller`
//!
//! A Controller reconciles objects that exist; it calls nothing for an
//! OriginPool that was deleted unless the pool carries a finalizer. Deleting
//! a pool must remove its origins at once, and a finalizer would make every
//! proxy a writer of OriginPool metadata (patch rights on the pools, pools
//! stuck in Terminating whenever no proxy runs, e.g. after the proxy's
//! Deployment is removed first). A Controller would also watch every
//! EndpointSlice of the namespace and map each back to pools, where a pool
//! task watches only its Service's slices by label. So each pool gets a
//! task of its own, started, updated and stopped by [`reconcile_pools`]
//! from the reflector's state, and the work of a reconciliation — what to
//! remove, what to (re-)register — is the pure [`plan`], unit-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::endpoints::{pool_view, PoolView};
use super::lease;
use super::status::{pool_status, StatusInput};
use crate::balance::Policy;
use crate::config::{DiscoveryMode, KubernetesConfig};
use crate::context::Context;
use crate::crd::{OriginPool, OriginPoolSpec, OriginPoolStatus};
use crate::discovery_state::WatchGuard;
use crate::origin::Origin;

/// Why discovery could not get a client.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No in-cluster environment and no kubeconfig: not an error, there is
    /// simply no cluster to discover.
    #[error("{0}")]
    NoCluster(String),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cluster config: {0}")]
    Config(String),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds the client: the configured kubeconfig, else the standard search
/// (`$KUBECONFIG`, `~/.kube/config`, then the pod's service account).
pub async fn client(config: &KubernetesConfig) -> Result<Client, ClusterError> {
    let kube_config = if config.kubeconfig.is_empty() {
        match kube::Config::infer().await {
            Ok(c) => c,
            // In a pod (the variable is always set there) a failure is a
            // real problem, e.g. no service account token mounted.
            Err(e) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                return Err(ClusterError::Config(e.to_string()))
            }
            Err(e) => return Err(ClusterError::NoCluster(e.to_string())),
        }
    } else {
        let path = &config.kubeconfig;
        let failed = |reason: String| ClusterError::Kubeconfig {
            path: path.clone(),
            reason,
        };
        let file = Kubeconfig::read_from(path).map_err(|e| failed(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| failed(e.to_string()))?
    };
    Ok(Client::try_from(kube_config)?)
}

/// Runs discovery until the context aborts.
pub async fn run(ctx: Context) {
    let k8s = &ctx.config.kubernetes;
    let client = match client(k8s).await {
        Ok(c) => c,
        Err(ClusterError::NoCluster(reason)) => {
            tracing::info!(
                %reason,
                "no Kubernetes cluster config (not in a pod, no kubeconfig): Kubernetes discovery is off; origins come from the register API and static config"
            );
            ctx.discovery.set_no_cluster();
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "Kubernetes discovery cannot start; the proxy reports not ready");
            ctx.discovery.set_broken(e.to_string());
            return;
        }
    };
    let namespace = if k8s.namespace.is_empty() {
        client.default_namespace().to_string()
    } else {
        k8s.namespace.clone()
    };
    let work = async {
        match k8s.discovery {
            DiscoveryMode::Off => {}
            DiscoveryMode::Originpool => {
                tracing::info!(%namespace, "Kubernetes discovery: watching OriginPools");
                watch_pools(&ctx, client, namespace).await
            }
            DiscoveryMode::Service => {
                let service = k8s.service.clone();
                tracing::info!(%namespace, %service, "Kubernetes discovery: watching one Service");
                let ttl = i32::try_from(ctx.config.registration_ttl.as_secs().max(1)).unwrap_or(i32::MAX);
                let pool = PoolDef {
                    spec: OriginPoolSpec {
                        registration_ttl_seconds: ttl,
                        ..OriginPoolSpec::for_service(&service)
                    },
                    generation: None,
                    status: None,
                    policy_conflict: None,
                };
                let (_keep, rx) = watch::channel(pool);
                let task = PoolTask::new(ctx.clone(), client, namespace, service, None);
                task.run(rx, CancellationToken::new()).await
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = ctx.shutdown.aborted() => {}
    }
}

/// The part of an OriginPool a pool task works from.
#[derive(Debug, Clone, PartialEq)]
struct PoolDef {
    spec: OriginPoolSpec,
    generation: Option<i64>,
    /// The status as last seen on the API server.
    status: Option<OriginPoolStatus>,
    /// Set when the pool's policy is not the one applied (pools disagree).
    policy_conflict: Option<String>,
}

impl PoolDef {
    fn of(pool: &OriginPool, applied: Policy) -> Self {
        Self {
            spec: pool.spec.clone(),
            generation: pool.metadata.generation,
            status: pool.status.clone(),
            policy_conflict: pool.spec.policy.filter(|p| *p != applied).map(|p| {
                format!("policy {p} is not applied: OriginPools in this namespace ask for different policies, the proxy uses {applied}")
            }),
        }
    }
}

/// A running pool task.
struct PoolHandle {
    /// Hands the task a changed spec or status.
    def: watch::Sender<PoolDef>,
    /// Fired when the pool is deleted: the task removes its origins.
    deleted: CancellationToken,
}

/// Follows the OriginPools of the namespace and runs one task per pool.
async fn watch_pools(ctx: &Context, client: Client, namespace: String) {
    let api: Api<OriginPool> = Api::namespaced(client.clone(), &namespace);
    let (reader, writer) = reflector::store();
    let mut events = pin!(watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer));
    let health = ctx.discovery.watch(format!("originpools in {namespace}"));
    let mut tasks = JoinSet::new();

    let (leader_tx, leader) = watch::channel(false);
    let identity = format!(
        "{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "srs-proxy".into()),
        rand::random::<u32>()
    );
    tasks.spawn(lease::run(
        Api::<Lease>::namespaced(client.clone(), &namespace),
        identity,
        lease::Timing::default(),
        leader_tx,
    ));

    let mut pools: BTreeMap<String, PoolHandle> = BTreeMap::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitApply(_)) => note_ok(ctx, &health),
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                note_ok(ctx, &health);
                reconcile_pools(ctx, &client, &namespace, &reader, &mut pools, &mut tasks, &leader);
            }
            Err(e) => note_error(ctx, &health, &e),
        }
        // Reap pool tasks that finished after their pool was deleted.
        while tasks.try_join_next().is_some() {}
    }
}

/// The policy every new stream is placed with, from the pools' choices:
/// all pools feed one set of origins, so the pools' policy applies when the
/// pools that set one agree; `None` (the configured `balance_policy`)
/// otherwise. Also returns the distinct policies asked for.
fn agreed_policy(asked: impl Iterator<Item = Option<Policy>>) -> (Option<Policy>, BTreeSet<Policy>) {
    let asked: BTreeSet<Policy> = asked.flatten().collect();
    let policy = match asked.len() {
        1 => asked.first().copied(),
        _ => None,
    };
    (policy, asked)
}

/// Starts, updates and stops pool tasks to match the OriginPools.
fn reconcile_pools(
    ctx: &Context,
    client: &Client,
    namespace: &str,
    reader: &Reflector<OriginPool>,
    pools: &mut BTreeMap<String, PoolHandle>,
    tasks: &mut JoinSet<()>,
    leader: &watch::Receiver<bool>,
) {
    let current: BTreeMap<String, Arc<OriginPool>> = reader.state().into_iter().map(|p| (p.name_any(), p)).collect();
    let (policy, asked) = agreed_policy(current.values().map(|p| p.spec.policy));
    if ctx.discovery.policy() != policy {
        let applied = policy.unwrap_or(ctx.config.balance_policy);
        if asked.len() > 1 {
            let asked: Vec<&str> = asked.iter().map(|p| p.as_str()).collect();
            tracing::warn!(policies = ?asked, %applied, "OriginPools ask for different policies; using balance_policy");
        } else {
            tracing::info!(%applied, "balancing policy");
        }
        ctx.discovery.set_policy(policy);
    }
    let applied = ctx.balance_policy();
    for (name, pool) in &current {
        let def = PoolDef::of(pool, applied);
        match pools.get(name) {
            Some(handle) => {
                handle.def.send_if_modified(|old| {
                    let changed = *old != def;
                    *old = def;
                    changed
                });
            }
            None => {
                tracing::info!(pool = %name, service = %pool.spec.service, "OriginPool added");
                ctx.metrics
                    .discovery_events_total
                    .with_label_values(&["pool_added"])
                    .inc();
                let (tx, rx) = watch::channel(def);
                let deleted = CancellationToken::new();
                let task = PoolTask::new(
                    ctx.clone(),
                    client.clone(),
                    namespace.to_string(),
                    name.clone(),
                    Some(StatusWriter {
                        api: Api::namespaced(client.clone(), namespace),
                        leader: leader.clone(),
                        last_written: None,
                    }),
                );
                tasks.spawn(task.run(rx, deleted.clone()));
                pools.insert(name.clone(), PoolHandle { def: tx, deleted });
            }
        }
    }
    pools.retain(|name, handle| {
        let keep = current.contains_key(name);
        if !keep {
            tracing::info!(pool = %name, "OriginPool deleted; removing its origins");
            ctx.metrics
                .discovery_events_total
                .with_label_values(&["pool_removed"])
                .inc();
            handle.deleted.cancel();
        }
        keep
    });
}

fn note_ok(ctx: &Context, health: &WatchGuard) {
    if health.ok() {
        tracing::info!(watch = health.name(), "Kubernetes API reachable again");
        ctx.metrics
            .discovery_events_total
            .with_label_values(&["watch_recovered"])
            .inc();
    }
}

/// A failed list or watch: the watcher retries with backoff. An expired
/// watch (410 Gone) is routine, the watcher relists at once.
fn note_error(ctx: &Context, health: &WatchGuard, error: &watcher::Error) {
    if let watcher::Error::WatchError(status) = error {
        if status.code == 410 {
            tracing::debug!(watch = health.name(), "watch expired; relisting");
            ctx.metrics
                .discovery_events_total
                .with_label_values(&["watch_expired"])
                .inc();
            return;
        }
    }
    ctx.metrics
        .discovery_events_total
        .with_label_values(&["watch_error"])
        .inc();
    let message = error_chain(error);
    if health.failed(message.clone()) {
        tracing::error!(
            watch = health.name(),
            error = %message,
            "Kubernetes API request failed; not ready until it answers (retrying with backoff)"
        );
    } else {
        tracing::debug!(watch = health.name(), error = %message, "Kubernetes API still failing");
    }
}

/// The error and its causes on one line (a bare "HyperError" says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Writes a pool's status when this replica holds the lease.
struct StatusWriter {
    api: Api<OriginPool>,
    /// Whether this replica holds the status Lease now.
    leader: watch::Receiver<bool>,
    /// What this replica wrote last, so it does not write it again before
    /// the watch shows it back.
    last_written: Option<OriginPoolStatus>,
}

/// One pool: its slice watch and its registrations.
struct PoolTask {
    ctx: Context,
    client: Client,
    namespace: String,
    name: String,
    /// What this replica has written to the store, by origin id.
    registered: BTreeMap<String, Origin>,
    /// The latest merged view of the slices, once listed.
    view: Option<PoolView>,
    /// `None` in service mode: no OriginPool to write status to.
    status: Option<StatusWriter>,
}

impl PoolTask {
    fn new(ctx: Context, client: Client, namespace: String, name: String, status: Option<StatusWriter>) -> Self {
        Self {
            ctx,
            client,
            namespace,
            name,
            registered: BTreeMap::new(),
            view: None,
            status,
        }
    }

    /// Runs until `deleted` fires (then removes every origin it
    /// registered) or the task is dropped (shutdown: registrations stay for
    /// the other replicas and expire with their TTL otherwise).
    async fn run(mut self, mut defs: watch::Receiver<PoolDef>, deleted: CancellationToken) {
        'service: loop {
            let mut def = defs.borrow_and_update().clone();
            let service = def.spec.service.clone();
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
            let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
            let (reader, writer) = reflector::store();
            let mut events = pin!(watcher(api, config).default_backoff().reflect(writer));
            let health = self
                .ctx
                .discovery
                .watch(format!("endpointslices of service {service} (pool {})", self.name));
            let mut listed = false;
            let mut refresh = refresh_timer(&def.spec);
            // Becoming the status writer after the last event must not
            // wait for the next event or refresh to write status.
            let mut leader = self.status.as_ref().map(|s| s.leader.clone());
            loop {
                tokio::select! {
                    became = async {
                        match leader.as_mut() {
                            Some(rx) => rx.changed().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        match became {
                            Err(_) => leader = None,
                            Ok(()) if listed => self.write_status(&def).await,
                            Ok(()) => {}
                        }
                    }
                    event = events.next() => {
                        let received = Instant::now();
                        match event {
                            Some(Ok(watcher::Event::Init)) => {}
                            Some(Ok(watcher::Event::InitApply(_))) => note_ok(&self.ctx, &health),
                            Some(Ok(watcher::Event::InitDone)) => {
                                note_ok(&self.ctx, &health);
                                listed = true;
                                self.reconcile(&def, &reader, Some(received), false).await;
                            }
                            Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                                note_ok(&self.ctx, &health);
                                if listed {
                                    self.reconcile(&def, &reader, Some(received), false).await;
                                }
                            }
                            Some(Err(e)) => note_error(&self.ctx, &health, &e),
                            None => return,
                        }
                    }
                    changed = defs.changed() => {
                        if changed.is_err() {
                            // The pool watch let go of this task: either the
                            // pool was deleted (both fire together) or
                            // discovery is stopping.
                            if deleted.is_cancelled() {
                                self.remove_all("pool deleted").await;
                            }
                            return;
                        }
                        let new = defs.borrow_and_update().clone();
                        if new.spec.service != service {
                            tracing::info!(pool = %self.name, from = %service, to = %new.spec.service, "OriginPool now follows another Service");
                            continue 'service;
                        }
                        if new.spec.registration_ttl_seconds != def.spec.registration_ttl_seconds {
                            refresh = refresh_timer(&new.spec);
                        }
                        let spec_changed = new.spec != def.spec;
                        def = new;
                        if listed {
                            // A new weight or port name rewrites every
                            // registration; a status-only change just
                            // lets status compare against the new one.
                            if spec_changed {
                                self.reconcile(&def, &reader, None, false).await;
                            } else {
                                self.write_status(&def).await;
                            }
                        }
                    }
                    _ = refresh.tick() => {
                        if listed {
                            self.reconcile(&def, &reader, None, true).await;
                        }
                    }
                    _ = deleted.cancelled() => {
                        self.remove_all("pool deleted").await;
                        return;
                    }
                }
            }
        }
    }

    /// Brings the store in line with the slices: removes what is gone or
    /// not routable, adds what is new or changed, and with `refresh_all`
    /// re-registers everything to extend its TTL.
    async fn reconcile(
        &mut self,
        def: &PoolDef,
        reader: &Reflector<EndpointSlice>,
        received: Option<Instant>,
        refresh_all: bool,
    ) {
        let slices = reader.state();
        let view = pool_view(&self.name, &def.spec, slices.iter().map(|s| s.as_ref()));
        let ttl = registration_ttl(&def.spec);
        let mut changed = false;
        let steps = plan(&self.registered, &view, refresh_all);
        for (id, reason) in steps.remove {
            changed |= self.remove(&id, &reason).await;
        }
        for (origin, change) in steps.register {
            let id = origin.id.clone();
            match self
                .ctx
                .store_op("upsert_origin", self.ctx.store.upsert_origin(origin.clone(), Some(ttl)))
                .await
            {
                Ok(()) => {
                    let (kind, what, reason) = match change {
                        Change::Added => ("origin_added", "origin added", "endpoint ready"),
                        Change::Updated => ("origin_updated", "origin updated", "endpoint changed"),
                        Change::Refreshed => continue,
                    };
                    changed = true;
                    tracing::info!(pool = %self.name, origin = %id, ip = %origin.ip, ports = ?origin.ports, reason, "{what}");
                    self.ctx.metrics.discovery_events_total.with_label_values(&[kind]).inc();
                    self.registered.insert(id.to_string(), origin);
                }
                // The next event or refresh tick tries again.
                Err(e) => tracing::warn!(pool = %self.name, origin = %id, error = %e, "cannot register origin"),
            }
        }

        if changed {
            if let Some(received) = received {
                self.ctx
                    .metrics
                    .discovery_propagation_seconds
                    .observe(received.elapsed().as_secs_f64());
            }
        }
        self.view = Some(view);
        self.write_status(def).await;
    }

    /// Removes one registration; `true` when the store no longer has it.
    async fn remove(&mut self, id: &str, reason: &str) -> bool {
        match self
            .ctx
            .store_op("remove_origin", self.ctx.store.remove_origin(id))
            .await
        {
            Ok(_) => {
                let ip = self.registered.remove(id).map(|o| o.ip).unwrap_or_default();
                tracing::info!(pool = %self.name, origin = %id, %ip, %reason, "origin removed");
                self.ctx
                    .metrics
                    .discovery_events_total
                    .with_label_values(&["origin_removed"])
                    .inc();
                true
            }
            Err(e) => {
                tracing::warn!(pool = %self.name, origin = %id, error = %e, "cannot remove origin; will retry");
                false
            }
        }
    }

    async fn remove_all(&mut self, reason: &str) {
        let ids: Vec<String> = self.registered.keys().cloned().collect();
        for id in ids {
            // One attempt each: what fails here expires with its TTL.
            self.remove(&id, reason).await;
        }
    }

    /// Patches the pool's status if this replica holds the lease and the
    /// status changed.
    async fn write_status(&mut self, def: &PoolDef) {
        let (Some(writer), Some(view)) = (self.status.as_mut(), self.view.as_ref()) else {
            return;
        };
        if !*writer.leader.borrow() {
            writer.last_written = None;
            return;
        }
        let streams = match self.ctx.store_op("list_origins", self.ctx.store.list_origins()).await {
            Ok(origins) => origins
                .iter()
                .filter(|o| o.origin.pool.as_deref() == Some(self.name.as_str()))
                .map(|o| o.streams)
                .sum(),
            Err(e) => {
                tracing::debug!(pool = %self.name, error = %e, "no stream count for status");
                return;
            }
        };
        let previous = writer.last_written.as_ref().or(def.status.as_ref());
        let status = pool_status(&StatusInput {
            spec: &def.spec,
            generation: def.generation,
            view,
            streams,
            policy_conflict: def.policy_conflict.clone(),
            previous,
            now: Time(Timestamp::now()),
        });
        if def.status.as_ref() == Some(&status) || writer.last_written.as_ref() == Some(&status) {
            return;
        }
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        match writer
            .api
            .patch_status(&self.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                tracing::debug!(pool = %self.name, ready = status.ready_origins, streams = status.streams, "status written");
                writer.last_written = Some(status);
            }
            Err(e) => tracing::warn!(pool = %self.name, error = %error_chain(&e), "cannot write OriginPool status"),
        }
    }
}

/// How long a registration lives unless refreshed: the pool's setting, at
/// least a second.
fn registration_ttl(spec: &OriginPoolSpec) -> Duration {
    Duration::from_secs(u64::try_from(spec.registration_ttl_seconds).unwrap_or(30).max(1))
}

/// Re-registers at a third of the TTL, so a registration never lapses
/// while its endpoint is ready.
fn refresh_timer(spec: &OriginPoolSpec) -> tokio::time::Interval {
    let period = registration_ttl(spec) / 3;
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Why an origin is (re-)registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Its endpoint became routable.
    Added,
    /// Its address, ports, weight or limit changed.
    Updated,
    /// Unchanged; written again to extend its TTL.
    Refreshed,
}

/// What one reconciliation does to the store.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Origins this replica registered that are no longer routable, with
    /// the reason for the log.
    remove: Vec<(String, String)>,
    /// Origins to write, and why.
    register: Vec<(Origin, Change)>,
}

/// The difference between what this replica registered and what the slices
/// describe now; with `refresh_all`, unchanged origins are written again.
fn plan(registered: &BTreeMap<String, Origin>, view: &PoolView, refresh_all: bool) -> Plan {
    let remove = registered
        .keys()
        .filter(|id| !view.origins.contains_key(*id))
        .map(|id| {
            let reason = view
                .endpoints
                .get(id)
                .map_or_else(|| "endpoint removed".to_string(), |e| e.routability.to_string());
            (id.clone(), reason)
        })
        .collect();
    let register = view
        .origins
        .iter()
        .filter_map(|(id, origin)| {
            let change = match registered.get(id) {
                None => Change::Added,
                Some(known) if known != origin => Change::Updated,
                Some(_) if refresh_all => Change::Refreshed,
                Some(_) => return None,
            };
            Some((origin.clone(), change))
        })
        .collect();
    Plan { remove, register }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::endpoints::{EndpointState, Routability};
    use crate::origin::{OriginSource, Ports};

    fn origin(id: &str, ip: &str) -> Origin {
        Origin {
            id: id.into(),
            ip: ip.into(),
            ports: Ports {
                rtmp: Some(1935),
                http: Some(8080),
                ..Ports::default()
            },
            source: OriginSource::Kubernetes,
            weight: 1,
            max_streams: 0,
            pool: Some("pool".into()),
            registered_by: None,
        }
    }

    fn view(routable: &[(&str, &str)], other: &[(&str, Routability)]) -> PoolView {
        let mut v = PoolView::default();
        for (id, ip) in routable {
            v.origins.insert(id.to_string(), origin(id, ip));
            let state = EndpointState {
                ip: ip.to_string(),
                routability: Routability::Routable,
            };
            v.endpoints.insert(id.to_string(), state);
        }
        for (id, routability) in other {
            let state = EndpointState {
                ip: "10.0.0.99".into(),
                routability: *routability,
            };
            v.endpoints.insert(id.to_string(), state);
        }
        v
    }

    fn registered(origins: &[(&str, &str)]) -> BTreeMap<String, Origin> {
        origins
            .iter()
            .map(|(id, ip)| (id.to_string(), origin(id, ip)))
            .collect()
    }

    #[test]
    fn a_plan_adds_new_updates_changed_and_removes_what_is_not_routable() {
        let known = registered(&[
            ("a", "10.0.0.1"),
            ("b", "10.0.0.2"),
            ("c", "10.0.0.3"),
            ("d", "10.0.0.4"),
        ]);
        let now = view(
            &[("a", "10.0.0.1"), ("b", "10.0.0.22"), ("e", "10.0.0.5")],
            &[("c", Routability::NotReady)],
        );
        let p = plan(&known, &now, false);
        assert_eq!(
            p.remove,
            vec![
                ("c".to_string(), "endpoint not ready".to_string()),
                ("d".to_string(), "endpoint removed".to_string())
            ]
        );
        let register: Vec<(&str, Change)> = p.register.iter().map(|(o, c)| (&*o.id, *c)).collect();
        assert_eq!(
            register,
            vec![("b", Change::Updated), ("e", Change::Added)],
            "a is unchanged"
        );
        assert_eq!(&*p.register[0].0.ip, "10.0.0.22");
    }

    #[test]
    fn a_refresh_rewrites_every_routable_origin_and_an_unchanged_view_does_nothing() {
        let known = registered(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]);
        let now = view(&[("a", "10.0.0.1"), ("b", "10.0.0.2")], &[]);
        assert_eq!(plan(&known, &now, false), Plan::default());
        let p = plan(&known, &now, true);
        assert!(p.remove.is_empty());
        assert!(p.register.iter().all(|(_, c)| *c == Change::Refreshed));
        assert_eq!(p.register.len(), 2);
    }

    #[test]
    fn a_terminating_endpoint_is_removed_with_its_reason() {
        let known = registered(&[("a", "10.0.0.1")]);
        let p = plan(&known, &view(&[], &[("a", Routability::Terminating)]), true);
        assert_eq!(p.remove, vec![("a".to_string(), "endpoint terminating".to_string())]);
        assert!(p.register.is_empty());
    }

    #[test]
    fn pools_agreeing_set_the_policy_and_disagreeing_pools_fall_back() {
        use Policy::*;
        assert_eq!(agreed_policy([None, None].into_iter()).0, None);
        assert_eq!(
            agreed_policy([Some(Random), None, Some(Random)].into_iter()).0,
            Some(Random)
        );
        let (policy, asked) = agreed_policy([Some(Random), Some(ConsistentHash)].into_iter());
        assert_eq!(policy, None);
        assert_eq!(asked.len(), 2);
    }

    #[test]
    fn a_pool_whose_policy_is_not_applied_says_so() {
        let mut pool = OriginPool::new("p", OriginPoolSpec::for_service("srs"));
        pool.spec.policy = Some(Policy::Random);
        let def = PoolDef::of(&pool, Policy::LeastStreams);
        assert!(def.policy_conflict.unwrap().contains("policy random is not applied"));
        assert_eq!(PoolDef::of(&pool, Policy::Random).policy_conflict, None);
    }

    #[test]
    fn registrations_live_at_least_a_second_and_refresh_at_a_third() {
        let mut spec = OriginPoolSpec::for_service("srs");
        spec.registration_ttl_seconds = 0;
        assert_eq!(registration_ttl(&spec), Duration::from_secs(1));
        spec.registration_ttl_seconds = -5;
        assert_eq!(registration_ttl(&spec), Duration::from_secs(30));
        spec.registration_ttl_seconds = 30;
        assert_eq!(registration_ttl(&spec) / 3, Duration::from_secs(10));
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "HyperError: connect failed",
            Some(Box::new(E(
                "connect failed",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "HyperError: connect failed: connection refused");
    }
}
