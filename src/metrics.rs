//! Prometheus metrics. The registry lives in [`Metrics`], which is cloned
//! into the context; there is no global registry.
//!
//! Counting happens at the edge of each relay (per connection, per chunk of
//! bytes read), never per byte.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the proxy exports. Names are documented in the README.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Constant 1 with the version label.
    pub build_info: IntGaugeVec,
    /// Open client connections by protocol and role (publisher/player).
    pub connections_active: IntGaugeVec,
    /// Client connections accepted by protocol and role.
    pub connections_total: IntCounterVec,
    /// Stream bytes relayed by protocol and direction (in = client→origin).
    pub bytes_relayed_total: IntCounterVec,
    /// HTTP requests by route class and status code.
    pub http_requests_total: IntCounterVec,
    /// Claim results: hit, new, failover, no_origin, error.
    pub claims_total: IntCounterVec,
    /// Live origins by OriginPool (empty outside Kubernetes) and source
    /// (kubernetes, heartbeat, static).
    pub origins_live: IntGaugeVec,
    /// Streams mapped to an origin in the store.
    pub streams_active: IntGauge,
    /// Store operation latency by operation.
    pub store_operation_seconds: HistogramVec,
    /// Discovery events by kind (origin_added, origin_removed, …).
    pub discovery_events_total: IntCounterVec,
    /// Register API calls by result.
    pub registrations_total: IntCounterVec,
    /// Kubernetes discovery: EndpointSlice watch event received → store
    /// updated, for events that changed origins.
    pub discovery_propagation_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let opts = |name: &str, help: &str| Opts::new(format!("srs_proxy_{name}"), help);
        let build_info = reg(
            &registry,
            IntGaugeVec::new(opts("build_info", "Build information; always 1."), &["version"]).unwrap(),
        );
        build_info.with_label_values(&[crate::VERSION]).set(1);
        Self {
            build_info,
            connections_active: reg(
                &registry,
                IntGaugeVec::new(
                    opts("connections_active", "Open client connections."),
                    &["protocol", "role"],
                )
                .unwrap(),
            ),
            connections_total: reg(
                &registry,
                IntCounterVec::new(
                    opts("connections_total", "Client connections accepted."),
                    &["protocol", "role"],
                )
                .unwrap(),
            ),
            bytes_relayed_total: reg(
                &registry,
                IntCounterVec::new(
                    opts(
                        "bytes_relayed_total",
                        "Stream bytes relayed (in: client to origin, out: origin to client).",
                    ),
                    &["protocol", "direction"],
                )
                .unwrap(),
            ),
            http_requests_total: reg(
                &registry,
                IntCounterVec::new(
                    opts("http_requests_total", "HTTP requests answered."),
                    &["route", "status"],
                )
                .unwrap(),
            ),
            claims_total: reg(
                &registry,
                IntCounterVec::new(opts("claims_total", "Stream claims by result."), &["result"]).unwrap(),
            ),
            origins_live: reg(
                &registry,
                IntGaugeVec::new(
                    opts("origins_live", "Live origins by pool and discovery source."),
                    &["pool", "source"],
                )
                .unwrap(),
            ),
            streams_active: reg(
                &registry,
                IntGauge::with_opts(opts("streams_active", "Streams mapped to an origin.")).unwrap(),
            ),
            store_operation_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("srs_proxy_store_operation_seconds", "Store operation latency.").buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                    &["op"],
                )
                .unwrap(),
            ),
            discovery_events_total: reg(
                &registry,
                IntCounterVec::new(opts("discovery_events_total", "Origin discovery events."), &["kind"]).unwrap(),
            ),
            registrations_total: reg(
                &registry,
                IntCounterVec::new(
                    opts("registrations_total", "Register API calls by result."),
                    &["result"],
                )
                .unwrap(),
            ),
            discovery_propagation_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "srs_proxy_discovery_propagation_seconds",
                        "EndpointSlice change seen by the watch until the store reflects it.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )
                .unwrap(),
            ),
            registry,
        }
    }

    /// Counts a connection as open until the guard drops.
    pub fn connection(&self, protocol: &str, role: &str) -> ConnectionGuard {
        self.connections_total.with_label_values(&[protocol, role]).inc();
        let gauge = self.connections_active.with_label_values(&[protocol, role]);
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// Decrements `connections_active` when dropped.
pub struct ConnectionGuard {
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
