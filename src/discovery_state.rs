//! What discovery tells the data plane: whether Kubernetes discovery is healthy
//! (readiness), the balancing policy the OriginPools ask for, and what
//! heartbeat registration shares across requests ([`Registrar`]). It lives
//! apart from [`crate::discovery`] so the context can hold it without the
//! data plane depending on the watchers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::balance::Policy;

/// Discovery's shared state: read by readiness and by every claim.
#[derive(Clone, Default)]
pub struct DiscoveryState {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Every running watch by name.
    watches: BTreeMap<String, WatchHealth>,
    /// Discovery cannot run at all (bad cluster config): not ready, ever.
    broken: Option<String>,
    /// The policy the OriginPools ask for, when they agree.
    policy: Option<Policy>,
    /// Discovery was asked for but found no cluster to watch: heartbeats
    /// and static origins are then the sources, as with discovery off.
    no_cluster: bool,
}

#[derive(Debug, Clone)]
enum WatchHealth {
    /// Started, nothing listed yet.
    Syncing,
    Synced,
    /// The last attempt failed; the watcher retries with backoff.
    Failing(String),
}

impl DiscoveryState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the proxy should not report ready, if it should not: the
    /// cluster config is unusable, or a watch has not listed yet or is
    /// failing (API server unreachable, RBAC missing).
    pub fn unready_reason(&self) -> Option<String> {
        let inner = self.lock();
        if let Some(reason) = &inner.broken {
            return Some(format!("kubernetes discovery: {reason}"));
        }
        inner.watches.iter().find_map(|(name, health)| match health {
            WatchHealth::Synced => None,
            WatchHealth::Syncing => Some(format!("kubernetes discovery: {name} not listed yet")),
            WatchHealth::Failing(e) => Some(format!("kubernetes discovery: {name}: {e}")),
        })
    }

    /// The balancing policy set by the OriginPools, when they set one and
    /// agree; `None` means the configured `balance_policy`.
    pub fn policy(&self) -> Option<Policy> {
        self.lock().policy
    }

    pub(crate) fn set_policy(&self, policy: Option<Policy>) {
        self.lock().policy = policy;
    }

    /// Whether Kubernetes discovery is asked for and has not found out
    /// that there is no cluster: while it is, heartbeat registration is
    /// off unless explicitly enabled.
    pub fn watching(&self, configured: bool) -> bool {
        configured && !self.lock().no_cluster
    }

    pub(crate) fn set_no_cluster(&self) {
        self.lock().no_cluster = true;
    }

    pub(crate) fn set_broken(&self, reason: String) {
        self.lock().broken = Some(reason);
    }

    /// Registers a watch; it counts for readiness until the guard drops.
    pub(crate) fn watch(&self, name: String) -> WatchGuard {
        self.lock().watches.insert(name.clone(), WatchHealth::Syncing);
        WatchGuard {
            state: self.clone(),
            name,
        }
    }
}

/// One watch's entry in [`DiscoveryState`].
pub(crate) struct WatchGuard {
    state: DiscoveryState,
    /// The watch, as readiness reasons name it.
    name: String,
}

impl WatchGuard {
    /// The watch answered. Returns whether it had been failing.
    pub fn ok(&self) -> bool {
        let mut inner = self.state.lock();
        let previous = inner.watches.insert(self.name.clone(), WatchHealth::Synced);
        matches!(previous, Some(WatchHealth::Failing(_)))
    }

    /// The watch failed. Returns whether this is news (it was not failing).
    pub fn failed(&self, error: String) -> bool {
        let mut inner = self.state.lock();
        let previous = inner.watches.insert(self.name.clone(), WatchHealth::Failing(error));
        !matches!(previous, Some(WatchHealth::Failing(_)))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.state.lock().watches.remove(&self.name);
    }
}

/// What registration needs beyond config and store: the proxy's own
/// listening addresses, and a lock that makes "count, then add" of new
/// origins one step on this replica.
#[derive(Clone, Default)]
pub struct Registrar {
    own: Arc<RwLock<Vec<SocketAddr>>>,
    new_origins: Arc<tokio::sync::Mutex<()>>,
}

impl Registrar {
    /// Records where this proxy listens, so no origin can be registered
    /// there (a request loop through the proxy itself).
    pub fn set_own_addrs(&self, addrs: Vec<SocketAddr>) {
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    pub fn own_addrs(&self) -> Vec<SocketAddr> {
        self.own.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Held while a new origin is counted against the caps and added.
    pub async fn adding(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.new_origins.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_every_watch() {
        let state = DiscoveryState::default();
        assert_eq!(state.unready_reason(), None);
        let pools = state.watch("originpools".into());
        assert!(state.unready_reason().unwrap().contains("not listed yet"));
        assert!(!pools.ok());
        assert_eq!(state.unready_reason(), None);
        let slices = state.watch("endpointslices".into());
        slices.ok();
        assert!(pools.failed("connection refused".into()));
        assert!(!pools.failed("connection refused".into()), "a repeat is not news");
        assert!(state.unready_reason().unwrap().contains("connection refused"));
        assert!(pools.ok(), "recovery is news");
        drop(slices);
        drop(pools);
        assert_eq!(state.unready_reason(), None);
        state.set_broken("no config".into());
        assert!(state.unready_reason().is_some());
    }
}
