//! The README's configuration and metrics tables cover what the code has.

use srs_proxy::config::KEYS;
use srs_proxy::metrics::Metrics;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn every_setting_has_a_row() {
    let readme = readme();
    for key in KEYS {
        let row = format!("| `{}` | `{}` |", key.name, key.env);
        assert!(readme.contains(&row), "README configuration table lacks {row}");
    }
}

#[test]
fn every_metric_has_a_row() {
    let readme = readme();
    let metrics = Metrics::new();
    // Touch the labelled families so they appear in the exposition.
    let _conn = metrics.connection("http-flv", "player");
    metrics.bytes_relayed_total.with_label_values(&["x", "in"]).inc();
    metrics
        .http_requests_total
        .with_label_values(&["x", "200", "none"])
        .inc();
    metrics.claims_total.with_label_values(&["new"]).inc();
    metrics
        .origin_health_transitions_total
        .with_label_values(&["unhealthy"])
        .inc();
    metrics.origin_probes_total.with_label_values(&["ok"]).inc();
    metrics.origins_live.with_label_values(&["", "static"]).set(1);
    metrics
        .store_operation_seconds
        .with_label_values(&["claim", "ok"])
        .observe(0.1);
    metrics.discovery_events_total.with_label_values(&["x"]).inc();
    metrics.registrations_total.with_label_values(&["ok"]).inc();
    metrics.listener_connections.with_label_values(&["http"]).inc();
    metrics
        .listener_refused_total
        .with_label_values(&["http", "connection_limit"])
        .inc();
    metrics.srt_packets_total.with_label_values(&["in"]).inc();
    metrics.srt_handshakes_total.with_label_values(&["accepted"]).inc();
    metrics.srt_dropped_total.with_label_values(&["short"]).inc();
    metrics.srt_ended_total.with_label_values(&["aborted"]).inc();
    metrics.rtc_sessions_total.with_label_values(&["idle"]).inc();
    metrics.rtc_packets_total.with_label_values(&["in"]).inc();
    metrics.rtc_stun_bindings_total.with_label_values(&["bound"]).inc();
    metrics
        .rtc_datagrams_dropped_total
        .with_label_values(&["unknown_address"])
        .inc();
    metrics.edge_upstreams_closed_total.with_label_values(&["idle"]).inc();
    metrics.edge_players_active.with_label_values(&["http-flv"]).inc();
    metrics.edge_players_ended_total.with_label_values(&["too_slow"]).inc();
    metrics.edge_frames_dropped_total.with_label_values(&["http-flv"]).inc();
    metrics
        .edge_hls_cache_requests_total
        .with_label_values(&["segment", "hit"])
        .inc();
    metrics
        .edge_hls_cache_evictions_total
        .with_label_values(&["size"])
        .inc();
    let families = metrics.registry.gather();
    assert!(families.len() >= 30, "a metric family was not touched above");
    for family in families {
        let row = format!("| `{}` |", family.name());
        assert!(readme.contains(&row), "README metrics table lacks {row}");
    }
}
