//! The `OriginPool` custom resource (`srsproxy.io/v1alpha1`).
//!
//! An OriginPool names the Service whose EndpointSlices hold SRS origins,
//! which of its port names carry which protocol, and how new streams are
//! balanced across them. The proxy writes back what it found in `status`.
//!
//! These types are the single source of the CRD: `crdgen` prints
//! [`crd_yaml`], the output is committed under `crds/`, and a test fails
//! when the two differ. This module only describes the resource; watching
//! it is [`crate::discovery`]'s job.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::balance::Policy;
use crate::origin::Protocol;

/// Condition type: the pool has at least one routable origin.
pub const READY: &str = "Ready";
/// Condition type: something in the pool needs attention (endpoints not
/// ready, a port name missing, a policy the proxy could not apply).
pub const DEGRADED: &str = "Degraded";

/// Which Service's pods are origins, and how they are used.
// Clippy reads the printer columns' repeated `type_` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "srsproxy.io",
    version = "v1alpha1",
    kind = "OriginPool",
    plural = "originpools",
    shortname = "opool",
    namespaced,
    status = "OriginPoolStatus",
    derive = "PartialEq",
    doc = "A pool of SRS origins: the ready pods behind one Service, found through its EndpointSlices.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyOrigins",
        description = "Origins receiving streams"
    ),
    printcolumn(
        name = "Streams",
        type_ = "integer",
        json_path = ".status.streams",
        description = "Streams mapped to the pool's origins"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct OriginPoolSpec {
    /// Name of the origin Service in this namespace. Its EndpointSlices
    /// (label kubernetes.io/service-name) are followed; every ready,
    /// non-terminating endpoint is an origin.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// Which of the Service's port names carries which protocol.
    #[serde(default)]
    pub ports: PortNames,
    /// How new streams are placed: least-streams, random or
    /// consistent-hash. Unset: the proxy's balance_policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "policy_schema")]
    pub policy: Option<Policy>,
    /// Share of new streams each origin of this pool gets, relative to
    /// other origins.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1))]
    pub weight: i32,
    /// Streams one origin may hold before new streams go elsewhere;
    /// 0 is unlimited.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_streams: i32,
    /// Life of a registration in the proxy's store unless refreshed; the
    /// proxy refreshes at a third of it. It bounds how long an origin
    /// stays routable if every proxy stops watching.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1))]
    pub registration_ttl_seconds: i32,
}

fn default_weight() -> i32 {
    1
}

fn default_ttl() -> i32 {
    30
}

fn policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "How new streams are placed: least-streams, random or consistent-hash. Unset: the proxy's balance_policy.",
        "type": "string",
        "enum": [
            Policy::LeastStreams.as_str(),
            Policy::Random.as_str(),
            Policy::ConsistentHash.as_str(),
        ],
    })
}

impl OriginPoolSpec {
    /// A spec with every default, for the mode that watches one Service
    /// without a custom resource.
    pub fn for_service(service: &str) -> Self {
        Self {
            service: service.to_string(),
            ports: PortNames::default(),
            policy: None,
            weight: default_weight(),
            max_streams: 0,
            registration_ttl_seconds: default_ttl(),
        }
    }
}

/// Port names on the origin Service, per protocol. A name the Service does
/// not have means the pool's origins do not serve that protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(default)]
pub struct PortNames {
    pub rtmp: String,
    pub http: String,
    pub api: String,
    pub srt: String,
    pub rtc: String,
}

impl Default for PortNames {
    fn default() -> Self {
        Self {
            rtmp: "rtmp".into(),
            http: "http".into(),
            api: "api".into(),
            srt: "srt".into(),
            rtc: "rtc".into(),
        }
    }
}

impl PortNames {
    /// The port name that carries `protocol`.
    pub fn name(&self, protocol: Protocol) -> &str {
        match protocol {
            Protocol::Rtmp => &self.rtmp,
            Protocol::Http => &self.http,
            Protocol::Api => &self.api,
            Protocol::Srt => &self.srt,
            Protocol::Rtc => &self.rtc,
        }
    }
}

/// What the proxy found, written by one proxy replica at a time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginPoolStatus {
    /// Origins receiving new streams.
    #[serde(default)]
    pub ready_origins: i32,
    /// Every endpoint of the Service, routable or not.
    #[serde(default)]
    pub origins: Vec<PoolOrigin>,
    /// Streams mapped to this pool's origins.
    #[serde(default)]
    pub streams: i32,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One endpoint of the pool's Service as the proxy sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolOrigin {
    /// Pod name, or the address when the endpoint has no pod.
    pub name: String,
    pub ip: String,
    /// Registered with the proxy and receiving streams.
    pub ready: bool,
    /// Why it is not ready: NotReady, Terminating or NoStreamingPort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&OriginPool::crd()).expect("a CRD always serialises");
    format!("# Generated by `cargo run --bin crdgen` from src/crd.rs; do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_fill_what_is_left_out() {
        let spec: OriginPoolSpec = serde_json::from_value(serde_json::json!({"service": "origin"})).unwrap();
        assert_eq!(spec, OriginPoolSpec::for_service("origin"));
        assert_eq!(spec.ports.name(Protocol::Rtmp), "rtmp");
        let spec: OriginPoolSpec = serde_json::from_value(serde_json::json!({
            "service": "origin", "ports": {"http": "web"}, "policy": "consistent-hash", "maxStreams": 5
        }))
        .unwrap();
        assert_eq!(spec.ports.http, "web");
        assert_eq!(spec.ports.rtmp, "rtmp", "unnamed ports keep their default");
        assert_eq!(spec.policy, Some(Policy::ConsistentHash));
        assert_eq!(spec.max_streams, 5);
    }

    #[test]
    fn names_the_chart_depends_on() {
        let crd = OriginPool::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("originpools.srsproxy.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["opool".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }
}
