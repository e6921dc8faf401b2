//! Which proxy replica writes OriginPool status: the holder of one
//! `coordination.k8s.io` Lease per namespace.
//!
//! Registrations do not need this (every replica writes the same ones);
//! status does, or replicas with slightly different views would overwrite
//! each other and the conditions would flap. The protocol is the usual
//! Kubernetes one, on optimistic concurrency: read the Lease; take it when
//! it is free, ours, or not renewed for its duration as measured on this
//! replica's own clock (so clock skew between nodes does not matter);
//! write it back with the `resourceVersion` just read, so of two replicas
//! racing for it the API server lets exactly one win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease every replica in a namespace competes for.
pub const LEASE_NAME: &str = "srs-proxy-originpool-status";

/// Timings, as client-go's leader election uses them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew: Duration,
    /// How often a non-holder checks whether the Lease became free.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        }
    }
}

/// What this replica last saw in the Lease, and when (local clock).
struct Observed {
    holder: Option<String>,
    /// The holder's last renewal as written in the Lease: a change means
    /// it is alive, whatever its clock says.
    renew_time: Option<MicroTime>,
    /// When this replica saw that renewal, on its own clock: expiry is
    /// measured from here, so clock skew between nodes does not matter.
    at: Instant,
}

/// Competes for the Lease for as long as it runs, publishing `true` on
/// `leader` while this replica holds it.
pub async fn run(api: Api<Lease>, identity: String, timing: Timing, leader: watch::Sender<bool>) {
    let mut observed: Option<Observed> = None;
    // The last successful renewal; leadership ends if renewals fail for a
    // whole lease duration, since another replica may then take over.
    let mut renewed_at: Option<Instant> = None;
    loop {
        let held = match try_acquire_or_renew(&api, &identity, timing, &mut observed).await {
            Ok(held) => {
                renewed_at = held.then(Instant::now);
                held
            }
            Err(e) => {
                let still = renewed_at.is_some_and(|t| t.elapsed() < timing.duration);
                tracing::debug!(error = %e, lease = LEASE_NAME, "lease request failed");
                still
            }
        };
        leader.send_if_modified(|was| {
            if *was == held {
                return false;
            }
            if held {
                tracing::info!(lease = LEASE_NAME, %identity, "this replica now writes OriginPool status");
            } else {
                tracing::info!(lease = LEASE_NAME, %identity, "another replica writes OriginPool status");
            }
            *was = held;
            true
        });
        tokio::time::sleep(if held { timing.renew } else { timing.retry }).await;
    }
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    identity: &str,
    timing: Timing,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration_secs = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let ours = holder.as_deref() == Some(identity);
    if let (Some(_), false) = (&holder, ours) {
        let their_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(timing.duration, Duration::from_secs);
        let seen = observed.as_ref().map_or_else(Instant::now, |o| o.at);
        if seen.elapsed() < their_duration {
            return Ok(false);
        }
    }
    if !ours {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(now);
    // `replace` carries the resourceVersion we read: a concurrent writer
    // makes this a 409 instead of a lost update.
    match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}
