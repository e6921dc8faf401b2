//! Origin discovery from Kubernetes.
//!
//! The proxy watches EndpointSlices and writes each ready origin pod into
//! the store as an [`Origin`](crate::origin::Origin), the same value the
//! heartbeat API ([`heartbeat`]) and static config produce. Which
//! Service, which port names and which policy come from `OriginPool`
//! resources ([`crate::crd`]), or, without the CRD, from
//! `PROXY_K8S_SERVICE`.
//!
//! * [`heartbeat`] — origins that register themselves, and the checks a
//!   registration must pass.
//! * [`endpoints`] — slices → origins (pure).
//! * [`status`] — view → OriginPool status and conditions (pure).
//! * [`kubernetes`] — the watchers and the registration writer.
//! * [`lease`] — which replica writes status.
//!
//! What discovery tells the rest of the proxy (whether it is healthy, the
//! policy the pools ask for) goes through [`crate::discovery_state`]. It
//! never touches stream mappings; removing an origin from the store is what
//! ends the relays to it.

pub mod endpoints;
pub mod heartbeat;
pub mod kubernetes;
pub mod lease;
pub mod status;

use std::future::Future;

use crate::config::DiscoveryMode;
use crate::context::Context;

/// Kubernetes discovery, when the config asks for it: a future that runs
/// until the context aborts and never ends the process.
pub fn start(ctx: &Context) -> Option<impl Future<Output = ()> + Send + 'static> {
    match ctx.config.kubernetes.discovery {
        DiscoveryMode::Off => None,
        DiscoveryMode::Originpool | DiscoveryMode::Service => Some(kubernetes::run(ctx.clone())),
    }
}
