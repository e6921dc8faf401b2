//! Prometheus metrics. The registry lives in [`Metrics`], which is cloned
//! into the context; there is no global registry.
//!
//! Counting happens at the edge of each relay (per connection, per chunk of
//! bytes read), never per byte. Every name gets the `srs_proxy_` prefix from
//! the registry; the README's metrics table lists them all.

use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Constant 1 with the version label.
    pub build_info: IntGaugeVec,
    /// Open client connections by protocol and role (publisher/player).
    pub connections_active: IntGaugeVec,
    /// Client connections accepted by protocol and role.
    pub connections_total: IntCounterVec,
    /// Open TCP connections by listener, counted by the accept loop: what
    /// the listener's connection cap is measured against.
    pub listener_connections: IntGaugeVec,
    /// Connections or requests a listener turned away, by reason.
    pub listener_refused_total: IntCounterVec,
    /// Stream bytes relayed by protocol and direction (in = client→origin).
    pub bytes_relayed_total: IntCounterVec,
    /// Bytes live HTTP relays moved to players with splice(2), framing
    /// included: the share that never entered the process.
    pub relay_spliced_bytes_total: IntCounter,
    /// SRT packets relayed by direction (in = client→origin).
    pub srt_packets_total: IntCounterVec,
    /// SRT handshakes by result: induction, accepted, retransmitted, or
    /// the rejection reason the client was sent.
    pub srt_handshakes_total: IntCounterVec,
    /// SRT datagrams dropped without an answer, by reason.
    pub srt_dropped_total: IntCounterVec,
    /// Relayed SRT connections that ended, by reason.
    pub srt_ended_total: IntCounterVec,
    /// HTTP requests by route class, status code and fault.
    pub http_requests_total: IntCounterVec,
    /// Claim results: hit, new, failover, no_origin, error.
    pub claims_total: IntCounterVec,
    /// Live origins by OriginPool (empty outside Kubernetes) and source
    /// (kubernetes, heartbeat, static).
    pub origins_live: IntGaugeVec,
    /// Streams mapped to an origin in the store.
    pub streams_active: IntGauge,
    /// Origins registered but unhealthy (a connect or probes failed).
    pub origins_unhealthy: IntGauge,
    /// Origins that became healthy or unhealthy, by `to`; counted by the
    /// replica that saw the change.
    pub origin_health_transitions_total: IntCounterVec,
    /// Probes this replica ran, by result (ok, failed).
    pub origin_probes_total: IntCounterVec,
    /// Store operation latency by operation and result.
    pub store_operation_seconds: HistogramVec,
    /// Discovery events by kind (origin_added, origin_removed, …).
    pub discovery_events_total: IntCounterVec,
    /// Register API calls by result.
    pub registrations_total: IntCounterVec,
    /// Kubernetes discovery: EndpointSlice watch event received → store
    /// updated, for events that changed origins.
    pub discovery_propagation_seconds: Histogram,
    /// WebRTC sessions with a bound client relaying on this replica.
    pub rtc_sessions_active: IntGauge,
    /// WebRTC relays ended, by why: idle, deleted, origin_gone, shutdown,
    /// failed.
    pub rtc_sessions_total: IntCounterVec,
    /// WebRTC datagrams relayed by direction (in = client→origin).
    pub rtc_packets_total: IntCounterVec,
    /// STUN binding requests from unbound addresses by result: bound,
    /// unknown_username, bad_integrity, malformed, …
    pub rtc_stun_bindings_total: IntCounterVec,
    /// WebRTC datagrams dropped by reason: unknown_address, not_webrtc,
    /// queue_full.
    pub rtc_datagrams_dropped_total: IntCounterVec,
    /// Edge mode: shared upstreams open (one per stream with players).
    pub edge_upstreams_active: IntGauge,
    /// Edge mode: shared upstreams closed, by reason (origin_ended,
    /// origin_lost, origin_failed, idle).
    pub edge_upstreams_closed_total: IntCounterVec,
    /// Edge mode: the most players a shared upstream had, observed when it
    /// closes.
    pub edge_upstream_players: Histogram,
    /// Edge mode: players fed by a shared upstream, by protocol.
    pub edge_players_active: IntGaugeVec,
    /// Edge mode: players that ended, by reason (origin_ended,
    /// origin_lost, origin_failed, client_closed, client_error, too_slow).
    pub edge_players_ended_total: IntCounterVec,
    /// Edge mode: frames a lagging player skipped, by protocol.
    pub edge_frames_dropped_total: IntCounterVec,
    /// Edge mode: stream bytes read from origins by shared upstreams.
    pub edge_upstream_bytes_total: IntCounter,
    /// Edge mode: frame bytes held for players (GOP caches and lag room).
    pub edge_buffer_bytes: IntGauge,
    /// Edge mode: HLS requests by kind (playlist, segment) and how the
    /// cache answered (hit, miss, coalesced, bypass).
    pub edge_hls_cache_requests_total: IntCounterVec,
    /// Edge mode: bytes the HLS cache holds.
    pub edge_hls_cache_bytes: IntGauge,
    /// Edge mode: body bytes of HLS answers served from the cache or from
    /// another request's origin fetch.
    pub edge_hls_cache_served_bytes_total: IntCounter,
    /// Edge mode: HLS cache entries dropped, by reason (size, expired).
    pub edge_hls_cache_evictions_total: IntCounterVec,
    /// Children of the vectors every request touches, by label values.
    kept: std::sync::Arc<KeptChildren>,
}

/// Children of the per-request vectors, kept by their label values (all
/// `'static` text but the status) so a request does not hash its labels
/// again each time: a look along a short list under a lock instead.
#[derive(Default)]
struct KeptChildren {
    requests: Kept<IntCounter, 5>,
    claims: Kept<IntCounter, 2>,
    store_ops: Kept<Histogram, 4>,
}

/// Label sets kept per vector; the rest go through the vector each time.
const KEPT: usize = 64;

/// A vector's children seen so far, keyed by `N` words of label values: a
/// `'static` text is its address and length (the same text at another
/// address is kept again, as the same child).
struct Kept<M, const N: usize>(std::sync::Mutex<Vec<([usize; N], M)>>);

impl<M, const N: usize> Default for Kept<M, N> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }
}

impl<M: Clone, const N: usize> Kept<M, N> {
    /// Calls `f` with the child for `key`, made by `make` the first time.
    fn with(&self, key: [usize; N], make: impl FnOnce() -> M, f: impl FnOnce(&M)) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, child)) = seen.iter().find(|(k, _)| *k == key) {
            return f(child);
        }
        let child = make();
        f(&child);
        if seen.len() < KEPT {
            seen.push((key, child));
        }
    }
}

/// `text` as two words of a [`Kept`] key.
fn text_key(text: &'static str) -> [usize; 2] {
    [text.as_ptr() as usize, text.len()]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Store calls take tens of microseconds (memory) to a second (timeout).
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Discovery propagation: sub-millisecond to a few seconds.
const PROPAGATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Players per shared upstream: one to many thousands.
const PLAYER_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

impl Metrics {
    pub fn new() -> Self {
        Self::build().expect("metric names are unique and valid")
    }

    // One row per metric reads better than rustfmt's five.
    #[rustfmt::skip]
    fn build() -> prometheus::Result<Self> {
        let r = Registry::new_custom(Some("srs_proxy".into()), None)?;
        let buckets = |name: &str, help: &str, b: &[f64]| HistogramOpts::new(name, help).buckets(b.to_vec());
        let build_info = register_int_gauge_vec_with_registry!("build_info", "Build information; always 1.", &["version"], r)?;
        build_info.with_label_values(&[crate::VERSION]).set(1);
        let pr = ["protocol", "role"];
        Ok(Self {
            build_info,
            connections_active: register_int_gauge_vec_with_registry!("connections_active", "Open client connections.", &pr, r)?,
            connections_total: register_int_counter_vec_with_registry!("connections_total", "Client connections accepted.", &pr, r)?,
            listener_connections: register_int_gauge_vec_with_registry!("listener_connections", "Open TCP connections by listener.", &["listener"], r)?,
            listener_refused_total: register_int_counter_vec_with_registry!("listener_refused_total", "Connections or requests a listener turned away.", &["listener", "reason"], r)?,
            bytes_relayed_total: register_int_counter_vec_with_registry!("bytes_relayed_total", "Stream bytes relayed (in: client to origin, out: origin to client).", &["protocol", "direction"], r)?,
            relay_spliced_bytes_total: register_int_counter_with_registry!("relay_spliced_bytes_total", "Bytes live HTTP relays moved to players with splice(2), chunk framing included.", r)?,
            srt_packets_total: register_int_counter_vec_with_registry!("srt_packets_total", "SRT packets relayed (in: client to origin, out: origin to client).", &["direction"], r)?,
            srt_handshakes_total: register_int_counter_vec_with_registry!("srt_handshakes_total", "SRT handshakes by result.", &["result"], r)?,
            srt_dropped_total: register_int_counter_vec_with_registry!("srt_dropped_total", "SRT datagrams dropped without an answer.", &["reason"], r)?,
            srt_ended_total: register_int_counter_vec_with_registry!("srt_ended_total", "Relayed SRT connections ended, by reason.", &["reason"], r)?,
            http_requests_total: register_int_counter_vec_with_registry!("http_requests_total", "HTTP requests answered.", &["route", "status", "fault"], r)?,
            claims_total: register_int_counter_vec_with_registry!("claims_total", "Stream claims by result.", &["result"], r)?,
            origins_live: register_int_gauge_vec_with_registry!("origins_live", "Live origins by pool and discovery source.", &["pool", "source"], r)?,
            streams_active: register_int_gauge_with_registry!("streams_active", "Streams mapped to an origin.", r)?,
            origins_unhealthy: register_int_gauge_with_registry!("origins_unhealthy", "Registered origins that are unhealthy.", r)?,
            origin_health_transitions_total: register_int_counter_vec_with_registry!("origin_health_transitions_total", "Origins that became healthy or unhealthy.", &["to"], r)?,
            origin_probes_total: register_int_counter_vec_with_registry!("origin_probes_total", "Origin probes run by this replica.", &["result"], r)?,
            store_operation_seconds: register_histogram_vec_with_registry!(buckets("store_operation_seconds", "Store operation latency.", STORE_BUCKETS), &["op", "result"], r)?,
            discovery_events_total: register_int_counter_vec_with_registry!("discovery_events_total", "Origin discovery events.", &["kind"], r)?,
            registrations_total: register_int_counter_vec_with_registry!("registrations_total", "Register API calls by result.", &["result"], r)?,
            discovery_propagation_seconds: register_histogram_with_registry!(buckets("discovery_propagation_seconds", "EndpointSlice change seen by the watch until the store reflects it.", PROPAGATION_BUCKETS), r)?,
            rtc_sessions_active: register_int_gauge_with_registry!("rtc_sessions_active", "WebRTC sessions relaying media.", r)?,
            rtc_sessions_total: register_int_counter_vec_with_registry!("rtc_sessions_total", "WebRTC relays ended, by reason.", &["result"], r)?,
            rtc_packets_total: register_int_counter_vec_with_registry!("rtc_packets_total", "WebRTC datagrams relayed (in: client to origin, out: origin to client).", &["direction"], r)?,
            rtc_stun_bindings_total: register_int_counter_vec_with_registry!("rtc_stun_bindings_total", "STUN binding requests that could bind a client address, by result.", &["result"], r)?,
            rtc_datagrams_dropped_total: register_int_counter_vec_with_registry!("rtc_datagrams_dropped_total", "WebRTC datagrams dropped, by reason.", &["reason"], r)?,
            edge_upstreams_active: register_int_gauge_with_registry!("edge_upstreams_active", "Edge mode: shared upstreams open.", r)?,
            edge_upstreams_closed_total: register_int_counter_vec_with_registry!("edge_upstreams_closed_total", "Edge mode: shared upstreams closed, by reason.", &["reason"], r)?,
            edge_upstream_players: register_histogram_with_registry!(buckets("edge_upstream_players", "Edge mode: most players a shared upstream had, observed when it closes.", PLAYER_BUCKETS), r)?,
            edge_players_active: register_int_gauge_vec_with_registry!("edge_players_active", "Edge mode: players fed by a shared upstream.", &["protocol"], r)?,
            edge_players_ended_total: register_int_counter_vec_with_registry!("edge_players_ended_total", "Edge mode: players of a shared upstream that ended, by reason.", &["reason"], r)?,
            edge_frames_dropped_total: register_int_counter_vec_with_registry!("edge_frames_dropped_total", "Edge mode: frames skipped for players that fell behind.", &["protocol"], r)?,
            edge_upstream_bytes_total: register_int_counter_with_registry!("edge_upstream_bytes_total", "Edge mode: stream bytes read from origins by shared upstreams.", r)?,
            edge_buffer_bytes: register_int_gauge_with_registry!("edge_buffer_bytes", "Edge mode: frame bytes held for players.", r)?,
            edge_hls_cache_requests_total: register_int_counter_vec_with_registry!("edge_hls_cache_requests_total", "Edge mode: HLS requests by kind and cache result.", &["kind", "result"], r)?,
            edge_hls_cache_bytes: register_int_gauge_with_registry!("edge_hls_cache_bytes", "Edge mode: bytes held by the HLS cache.", r)?,
            edge_hls_cache_served_bytes_total: register_int_counter_with_registry!("edge_hls_cache_served_bytes_total", "Edge mode: HLS body bytes served from the cache or a shared origin request.", r)?,
            edge_hls_cache_evictions_total: register_int_counter_vec_with_registry!("edge_hls_cache_evictions_total", "Edge mode: HLS cache entries dropped, by reason.", &["reason"], r)?,
            kept: Default::default(),
            registry: r,
        })
    }

    /// Counts an HTTP answer in `http_requests_total`.
    pub fn count_request(&self, route: &'static str, status: http::StatusCode, fault: &'static str) {
        let ([r0, r1], [f0, f1]) = (text_key(route), text_key(fault));
        let key = [r0, r1, usize::from(status.as_u16()), f0, f1];
        let make = || {
            self.http_requests_total
                .with_label_values(&[route, status.as_str(), fault])
        };
        self.kept.requests.with(key, make, IntCounter::inc);
    }

    /// Counts a claim in `claims_total`.
    pub fn count_claim(&self, result: &'static str) {
        let make = || self.claims_total.with_label_values(&[result]);
        self.kept.claims.with(text_key(result), make, IntCounter::inc);
    }

    /// Observes a store operation's latency in `store_operation_seconds`.
    pub fn observe_store_op(&self, op: &'static str, result: &'static str, seconds: f64) {
        let ([o0, o1], [r0, r1]) = (text_key(op), text_key(result));
        let make = || self.store_operation_seconds.with_label_values(&[op, result]);
        self.kept.store_ops.with([o0, o1, r0, r1], make, |h| h.observe(seconds));
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
    /// The `connections_active` series of this connection's labels.
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// Kept children count exactly where the vector's own would: per
    /// label set, for the same text at another address, for a text that is
    /// the start of another, and past the number kept.
    #[test]
    fn kept_children_count_where_the_vector_would() {
        let m = Metrics::new();
        let playlists: &'static str = "playlists";
        let prefix = &playlists[..8];
        for (route, status, fault) in [
            ("playlist", StatusCode::OK, "none"),
            ("playlist", StatusCode::OK, "none"),
            (prefix, StatusCode::OK, "none"),
            (&playlists[..4], StatusCode::OK, "none"),
            ("playlist", StatusCode::NOT_FOUND, "client"),
        ] {
            m.count_request(route, status, fault);
        }
        let requests = |labels: [&str; 3]| m.http_requests_total.with_label_values(&labels).get();
        assert_eq!(requests(["playlist", "200", "none"]), 3);
        assert_eq!(requests(["play", "200", "none"]), 1);
        assert_eq!(requests(["playlist", "404", "client"]), 1);
        for i in 0..KEPT + 10 {
            let route: &'static str = Box::leak(format!("r{i}").into_boxed_str());
            m.count_request(route, StatusCode::OK, "none");
            m.count_request(route, StatusCode::OK, "none");
        }
        for i in [0, KEPT + 9] {
            assert_eq!(requests([&format!("r{i}"), "200", "none"]), 2, "r{i}");
        }
        m.count_claim("hit");
        m.count_claim("hit");
        m.count_claim("new");
        assert_eq!(m.claims_total.with_label_values(&["hit"]).get(), 2);
        assert_eq!(m.claims_total.with_label_values(&["new"]).get(), 1);
        m.observe_store_op("claim", "ok", 0.001);
        m.observe_store_op("claim", "ok", 0.002);
        m.observe_store_op("claim", "unavailable", 0.5);
        let ops = |labels: [&str; 2]| m.store_operation_seconds.with_label_values(&labels).get_sample_count();
        assert_eq!(ops(["claim", "ok"]), 2);
        assert_eq!(ops(["claim", "unavailable"]), 1);
    }
}
