//! The `health` section: how origins are probed, and how many probe results
//! in a row move one between healthy and unhealthy. (A failed connect on
//! the data path marks an origin unhealthy at once, whatever this says.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::duration_serde;

/// `health.*` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// How often each origin is probed (by one replica of all); 0 turns
    /// probing off.
    #[serde(with = "duration_serde")]
    pub probe_interval: Duration,
    /// Failed probes in a row that make a healthy origin unhealthy.
    pub failures: u32,
    /// Good probes in a row that make an unhealthy origin healthy again.
    pub successes: u32,
    /// Probe healthy Kubernetes origins too. Off by default: their
    /// endpoint readiness already says whether they serve (an unhealthy one
    /// is probed anyway, to see it come back).
    pub probe_kubernetes: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            failures: 2,
            successes: 2,
            probe_kubernetes: false,
        }
    }
}
