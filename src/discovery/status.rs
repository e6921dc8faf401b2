//! The `status` an OriginPool should show, computed from what discovery
//! sees. Pure: the caller supplies the view, the stream count and the time.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the
//! same, so recomputing an unchanged pool gives an identical status and
//! nothing is written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::endpoints::{PoolView, Routability};
use crate::crd::{OriginPoolSpec, OriginPoolStatus, PoolOrigin, DEGRADED, READY};
use crate::origin::Protocol;

/// Everything that goes into one pool's status.
pub struct StatusInput<'a> {
    pub spec: &'a OriginPoolSpec,
    /// The pool's generation, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    pub view: &'a PoolView,
    /// Streams mapped to the pool's origins in the store.
    pub streams: u32,
    /// Set when the pool's policy is not the one the proxy applies.
    pub policy_conflict: Option<String>,
    /// The status as it stands, so a condition's `lastTransitionTime` only
    /// moves when its status does.
    pub previous: Option<&'a OriginPoolStatus>,
    pub now: Time,
}

/// The status to write.
pub fn pool_status(input: &StatusInput<'_>) -> OriginPoolStatus {
    let view = input.view;
    let service = &input.spec.service;
    let ready = view.origins.len();
    let total = view.endpoints.len();
    let missing = |p: Protocol| view.missing_ports.contains(&p);
    let port = |p: Protocol| format!("{p} port {:?}", input.spec.ports.name(p));
    let no_streaming_port = missing(Protocol::Rtmp) && missing(Protocol::Http);

    let (ready_status, ready_reason, ready_message) = if ready > 0 {
        (
            "True",
            "OriginsReady",
            format!("{ready} of {total} endpoints of service {service:?} are origins"),
        )
    } else if total == 0 {
        (
            "False",
            "NoReadyEndpoints",
            format!("no ready endpoints: service {service:?} has no endpoints"),
        )
    } else if no_streaming_port
        || view
            .endpoints
            .values()
            .all(|e| e.routability == Routability::NoStreamingPort)
    {
        (
            "False",
            "NoStreamingPort",
            format!(
                "service {service:?} has no named {} nor {}",
                port(Protocol::Rtmp),
                port(Protocol::Http)
            ),
        )
    } else {
        (
            "False",
            "NoReadyEndpoints",
            format!("no ready endpoints: none of the {total} endpoints of service {service:?} is ready"),
        )
    };

    // Degraded: every problem, most serious first; the first names it.
    let mut problems: Vec<(&str, String)> = Vec::new();
    if ready == 0 {
        problems.push((ready_reason, ready_message.clone()));
    } else if no_streaming_port {
        problems.push((
            "NoStreamingPort",
            format!(
                "service has no named {} nor {}",
                port(Protocol::Rtmp),
                port(Protocol::Http)
            ),
        ));
    }
    if !no_streaming_port {
        for p in [Protocol::Rtmp, Protocol::Http] {
            if missing(p) {
                problems.push(("MissingPort", format!("service has no named {}", port(p))));
            }
        }
    }
    let not_routable = view.not_routable();
    if ready > 0 && not_routable > 0 {
        problems.push((
            "EndpointsNotReady",
            format!("{not_routable} of {total} endpoints are not origins"),
        ));
    }
    if let Some(conflict) = &input.policy_conflict {
        problems.push(("PolicyConflict", conflict.clone()));
    }
    let degraded = match problems.first() {
        Some((reason, _)) => (
            "True",
            reason.to_string(),
            problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
        ),
        None => (
            "False",
            "AsExpected".to_string(),
            "every endpoint is a ready origin".to_string(),
        ),
    };

    let previous = input.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        let last = previous.iter().find(|c| c.type_ == type_);
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: input.generation,
            last_transition_time: match last {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => input.now.clone(),
            },
        }
    };
    OriginPoolStatus {
        ready_origins: i32::try_from(ready).unwrap_or(i32::MAX),
        origins: view
            .endpoints
            .iter()
            .map(|(name, e)| PoolOrigin {
                name: name.clone(),
                ip: e.ip.clone(),
                ready: e.routability == Routability::Routable,
                reason: e.routability.reason().map(str::to_string),
            })
            .collect(),
        streams: i32::try_from(input.streams).unwrap_or(i32::MAX),
        observed_generation: input.generation,
        conditions: vec![
            condition(READY, ready_status, ready_reason, ready_message),
            condition(DEGRADED, degraded.0, &degraded.1, degraded.2),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::endpoints::pool_view;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn slice(ports: serde_json::Value, ready: &[bool]) -> EndpointSlice {
        let endpoints: Vec<_> = ready
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"addresses": [format!("10.0.0.{i}")], "conditions": {"ready": r}, "targetRef": {"name": format!("srs-{i}")}}))
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": ports, "endpoints": endpoints}),
        )
        .unwrap()
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn status(slice: &EndpointSlice, previous: Option<&OriginPoolStatus>, now: i64) -> OriginPoolStatus {
        let spec = OriginPoolSpec::for_service("origin");
        let view = pool_view("p", &spec, [slice]);
        pool_status(&StatusInput {
            spec: &spec,
            generation: Some(4),
            view: &view,
            streams: 7,
            policy_conflict: None,
            previous,
            now: at(now),
        })
    }

    fn cond<'a>(s: &'a OriginPoolStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn counts_and_conditions() {
        let ports = json!([{"name": "rtmp", "port": 1935}, {"name": "http", "port": 8080}]);
        let s = status(&slice(ports.clone(), &[true, true]), None, 100);
        assert_eq!((s.ready_origins, s.streams, s.observed_generation), (2, 7, Some(4)));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");

        let s = status(&slice(ports.clone(), &[true, false]), Some(&s), 200);
        assert_eq!(s.ready_origins, 1);
        assert_eq!(s.origins[1].reason.as_deref(), Some("NotReady"));
        assert_eq!(cond(&s, READY).last_transition_time, at(100), "Ready stayed True");
        let d = cond(&s, DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "EndpointsNotReady"));
        assert_eq!(d.last_transition_time, at(200));

        let s = status(&slice(ports, &[false, false]), Some(&s), 300);
        let r = cond(&s, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", "NoReadyEndpoints"));
        assert!(r.message.contains("no ready endpoints"), "{}", r.message);
    }

    #[test]
    fn named_ports_missing() {
        let s = status(&slice(json!([{"name": "http", "port": 8080}]), &[true]), None, 1);
        assert_eq!(cond(&s, READY).status, "True", "http alone still serves streams");
        let d = cond(&s, DEGRADED);
        assert_eq!(d.reason, "MissingPort");
        assert!(d.message.contains("service has no named rtmp port"), "{}", d.message);

        let s = status(&slice(json!([{"name": "web", "port": 80}]), &[true]), None, 1);
        let r = cond(&s, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", "NoStreamingPort"));
        assert_eq!(cond(&s, DEGRADED).reason, "NoStreamingPort");
        assert_eq!(s.origins[0].reason.as_deref(), Some("NoStreamingPort"));
    }

    #[test]
    fn unchanged_input_gives_an_identical_status() {
        let sl = slice(json!([{"name": "rtmp", "port": 1935}]), &[true, false]);
        let first = status(&sl, None, 10);
        assert_eq!(status(&sl, Some(&first), 99), first);
    }
}
