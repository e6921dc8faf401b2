//! From EndpointSlices to origins: which endpoints are routable and which
//! port serves which protocol.
//!
//! Pure: no client, no store, no clock. The watcher hands in every slice
//! of the Service it currently knows; the result is the complete set of
//! origins the pool should have, plus what status needs to explain the
//! endpoints that are left out.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::crd::OriginPoolSpec;
use crate::origin::{Origin, OriginSource, Ports, Protocol};

/// Every protocol, in the order status reports them.
const PROTOCOLS: [Protocol; 5] = Protocol::ALL;

/// Whether an endpoint receives streams, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Routability {
    Routable,
    /// `conditions.ready` is false.
    NotReady,
    /// `conditions.terminating` is true: the pod is going away.
    Terminating,
    /// Ready, but its slice has neither the rtmp nor the http port name.
    NoStreamingPort,
}

impl Routability {
    /// Reason for status and logs; `None` when routable.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Routable => None,
            Self::NotReady => Some("NotReady"),
            Self::Terminating => Some("Terminating"),
            Self::NoStreamingPort => Some("NoStreamingPort"),
        }
    }
}

impl fmt::Display for Routability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Routable => "endpoint ready",
            Self::NotReady => "endpoint not ready",
            Self::Terminating => "endpoint terminating",
            Self::NoStreamingPort => "endpoint has no rtmp or http port",
        })
    }
}

/// One endpoint after merging every slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub ip: String,
    pub routability: Routability,
}

/// What a pool's slices amount to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    /// The routable endpoints as origins, by id (pod name or address).
    pub origins: BTreeMap<String, Origin>,
    /// Every endpoint by the same id, routable or not.
    pub endpoints: BTreeMap<String, EndpointState>,
    /// Protocols whose port name no slice of the Service carries. Empty
    /// when no slice declares ports at all (nothing to judge by).
    pub missing_ports: Vec<Protocol>,
}

impl PoolView {
    /// Endpoints that do not receive streams.
    pub fn not_routable(&self) -> usize {
        self.endpoints.len() - self.origins.len()
    }
}

/// Merges every slice of the pool's Service into one view. An endpoint
/// listed by two slices (the EndpointSlice controller moves endpoints
/// between slices) counts once; a routable copy wins.
pub fn pool_view<'a>(
    pool: &str,
    spec: &OriginPoolSpec,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> PoolView {
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    // Same input, same output whatever order the watch delivered.
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut view = PoolView::default();
    let mut seen_names = [false; PROTOCOLS.len()];
    let mut any_ports = false;
    for slice in slices {
        let ports = slice_ports(slice, spec);
        if let Some(declared) = &slice.ports {
            any_ports |= !declared.is_empty();
            for (i, protocol) in PROTOCOLS.iter().enumerate() {
                let name = spec.ports.name(*protocol);
                seen_names[i] |= declared.iter().any(|p| p.name.as_deref().unwrap_or("") == name);
            }
        }
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.addresses.first() else {
                continue;
            };
            let id = endpoint_id(endpoint, ip);
            let routability = routability(endpoint, &ports);
            if view
                .endpoints
                .get(&id)
                .is_some_and(|known| known.routability <= routability)
            {
                continue;
            }
            view.endpoints.insert(
                id.clone(),
                EndpointState {
                    ip: ip.clone(),
                    routability,
                },
            );
            if routability == Routability::Routable {
                view.origins.insert(
                    id.clone(),
                    Origin {
                        id: id.into(),
                        ip: ip.as_str().into(),
                        ports,
                        source: OriginSource::Kubernetes,
                        weight: u32::try_from(spec.weight).unwrap_or(1).max(1),
                        max_streams: u32::try_from(spec.max_streams).unwrap_or(0),
                        pool: Some(pool.to_string()),
                        registered_by: None,
                    },
                );
            } else {
                view.origins.remove(&id);
            }
        }
    }
    if any_ports {
        view.missing_ports = PROTOCOLS
            .iter()
            .zip(seen_names)
            .filter(|(_, seen)| !seen)
            .map(|(p, _)| *p)
            .collect();
    }
    view
}

/// The pod name when the endpoint is a pod, else its address.
fn endpoint_id(endpoint: &Endpoint, ip: &str) -> String {
    endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| ip.to_string())
}

/// Ready when `ready` is true or unset (as Kubernetes documents it), and
/// not terminating.
fn routability(endpoint: &Endpoint, ports: &Ports) -> Routability {
    let conditions = endpoint.conditions.as_ref();
    if conditions.and_then(|c| c.terminating) == Some(true) {
        return Routability::Terminating;
    }
    if conditions.and_then(|c| c.ready) == Some(false) {
        return Routability::NotReady;
    }
    if ports.rtmp.is_none() && ports.http.is_none() {
        return Routability::NoStreamingPort;
    }
    Routability::Routable
}

/// The slice's named ports mapped to protocols through the spec's names.
fn slice_ports(slice: &EndpointSlice, spec: &OriginPoolSpec) -> Ports {
    let find = |protocol: Protocol| -> Option<u16> {
        let name = spec.ports.name(protocol);
        slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == name)
            .and_then(|p| p.port)
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port != 0)
    };
    Ports {
        rtmp: find(Protocol::Rtmp),
        http: find(Protocol::Http),
        api: find(Protocol::Api),
        srt: find(Protocol::Srt),
        rtc: find(Protocol::Rtc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "origin"}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn std_ports() -> serde_json::Value {
        json!([
            {"name": "rtmp", "port": 1935, "protocol": "TCP"},
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "api", "port": 1985, "protocol": "TCP"},
            {"name": "srt", "port": 10080, "protocol": "UDP"},
            {"name": "rtc", "port": 8000, "protocol": "UDP"},
        ])
    }

    fn pod(name: &str, ip: &str, conditions: serde_json::Value) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": name}})
    }

    fn spec() -> OriginPoolSpec {
        OriginPoolSpec::for_service("origin")
    }

    #[test]
    fn ready_endpoints_become_origins_with_named_ports() {
        let s = slice(
            "origin-abc",
            std_ports(),
            json!([
                pod("srs-0", "10.0.0.1", json!({"ready": true})),
                pod("srs-1", "10.0.0.2", json!({})),
                pod("srs-2", "10.0.0.3", json!({"ready": false})),
                pod("srs-3", "10.0.0.4", json!({"ready": false, "serving": true, "terminating": true})),
                {"addresses": ["10.0.0.5"]},
                {"addresses": []},
            ]),
        );
        let mut spec = spec();
        spec.weight = 3;
        spec.max_streams = 10;
        let v = pool_view("pool", &spec, [&s]);
        assert_eq!(v.origins.keys().collect::<Vec<_>>(), ["10.0.0.5", "srs-0", "srs-1"]);
        let o = &v.origins["srs-0"];
        assert_eq!(&*o.ip, "10.0.0.1");
        assert_eq!(
            o.ports,
            Ports {
                rtmp: Some(1935),
                http: Some(8080),
                api: Some(1985),
                srt: Some(10080),
                rtc: Some(8000)
            }
        );
        assert_eq!((o.source, o.weight, o.max_streams), (OriginSource::Kubernetes, 3, 10));
        assert_eq!(o.pool.as_deref(), Some("pool"));
        assert_eq!(v.endpoints["srs-2"].routability, Routability::NotReady);
        assert_eq!(v.endpoints["srs-3"].routability, Routability::Terminating);
        assert_eq!(v.endpoints.len(), 5, "the endpoint without an address is skipped");
        assert_eq!(v.not_routable(), 2);
        assert!(v.missing_ports.is_empty());
    }

    #[test]
    fn slices_merge_and_a_routable_copy_wins() {
        let a = slice(
            "origin-a",
            std_ports(),
            json!([
                pod("srs-0", "10.0.0.1", json!({"ready": true})),
                pod("srs-1", "10.0.0.2", json!({"ready": false}))
            ]),
        );
        let b = slice(
            "origin-b",
            std_ports(),
            json!([
                pod("srs-1", "10.0.0.2", json!({"ready": true})),
                pod("srs-2", "10.0.0.3", json!({"ready": true}))
            ]),
        );
        let forward = pool_view("p", &spec(), [&a, &b]);
        let backward = pool_view("p", &spec(), [&b, &a]);
        assert_eq!(forward, backward);
        assert_eq!(forward.origins.len(), 3);
        assert_eq!(forward.endpoints["srs-1"].routability, Routability::Routable);
    }

    #[test]
    fn custom_port_names_and_missing_ports() {
        let s = slice(
            "origin-a",
            json!([{"name": "web", "port": 80}, {"name": "rtmp", "port": 1935}]),
            json!([pod("srs-0", "10.0.0.1", json!({"ready": true}))]),
        );
        let mut spec = spec();
        spec.ports.http = "web".into();
        let v = pool_view("p", &spec, [&s]);
        assert_eq!(v.origins["srs-0"].ports.http, Some(80));
        assert_eq!(v.missing_ports, [Protocol::Api, Protocol::Srt, Protocol::Rtc]);

        // Neither rtmp nor http: reported, not registered.
        let s = slice(
            "origin-a",
            json!([{"name": "api", "port": 1985}, {"port": 9999}]),
            json!([pod("srs-0", "10.0.0.1", json!({"ready": true}))]),
        );
        let v = pool_view("p", &spec, [&s]);
        assert!(v.origins.is_empty());
        assert_eq!(v.endpoints["srs-0"].routability, Routability::NoStreamingPort);
        assert!(v.missing_ports.contains(&Protocol::Rtmp) && v.missing_ports.contains(&Protocol::Http));
    }

    #[test]
    fn empty_and_hostile_slices() {
        let v = pool_view("p", &spec(), []);
        assert_eq!(v, PoolView::default());
        let s = slice(
            "x",
            json!([{"name": "rtmp", "port": 0}, {"name": "http", "port": 70000}, {"name": "api", "port": -1}]),
            json!([pod("", "10.0.0.9", json!({"ready": null}))]),
        );
        let v = pool_view("p", &spec(), [&s]);
        assert_eq!(
            v.endpoints["10.0.0.9"].routability,
            Routability::NoStreamingPort,
            "bad port numbers are ignored"
        );
    }
}
