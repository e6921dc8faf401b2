//! Every setting reachable from env and flags, one row each: its YAML path
//! (also the `--set` name), its env name (the Go proxy's where it has one)
//! and the parser of its value. The README configuration table has the
//! same rows (`tests/readme.rs` holds them together).

use std::path::PathBuf;

use super::value::{parse_bool, parse_duration, parsed, positive, raw, text};
use super::webrtc::{candidates, optional_port};
use super::Config;
use crate::origin::parse_endpoint_port;

/// One setting reachable from env and flags.
pub struct Key {
    /// Dotted YAML path, also the `--set` name.
    pub name: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Parses the text into the config.
    pub set: fn(&mut Config, &str) -> Result<(), String>,
}

/// `key!(name, env, field.path, parser)`: one row of [`KEYS`].
macro_rules! key {
    ($name:literal, $env:literal, $($field:ident).+, $parse:expr) => {
        Key { name: $name, env: $env, set: |c, v| { c.$($field).+ = $parse(v)?; Ok(()) } }
    };
}

/// A port in any endpoint form SRS writes; empty means none.
fn port(v: &str) -> Result<Option<u16>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    parse_endpoint_port(v).map(Some).map_err(|e| e.to_string())
}

/// A count of at least 1.
fn count(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number from 1 to 4294967295".into()),
    }
}

/// A file or directory; empty means unset.
fn path(v: &str) -> Result<Option<PathBuf>, String> {
    Ok(Some(v.trim()).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// A secret, as given (trimmed once the whole config is read).
fn secret(v: &str) -> Result<super::Secret, String> {
    Ok(super::Secret(v.to_string()))
}

/// Every env/flag key.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    key!("http_server", "PROXY_HTTP_SERVER", http_server, parsed),
    key!("rtmp_server", "PROXY_RTMP_SERVER", rtmp_server, parsed),
    key!("http_api", "PROXY_HTTP_API", http_api, parsed),
    key!("webrtc_server", "PROXY_WEBRTC_SERVER", webrtc_server, parsed),
    key!("srt_server", "PROXY_SRT_SERVER", srt_server, parsed),
    key!("system_api", "PROXY_SYSTEM_API", system_api, parsed),
    key!("listen_backlog", "PROXY_LISTEN_BACKLOG", listen_backlog, parsed),
    key!("http_max_connections", "PROXY_HTTP_MAX_CONNECTIONS", http_max_connections, parsed),
    key!("rtmp_max_connections", "PROXY_RTMP_MAX_CONNECTIONS", rtmp_max_connections, parsed),
    key!("system_api_max_connections", "PROXY_SYSTEM_API_MAX_CONNECTIONS", system_api_max_connections, parsed),
    key!("http_api_max_connections", "PROXY_HTTP_API_MAX_CONNECTIONS", http_api_max_connections, parsed),
    key!("http_header_timeout", "PROXY_HTTP_HEADER_TIMEOUT", http_header_timeout, parse_duration),
    key!("http_max_header_bytes", "PROXY_HTTP_MAX_HEADER_BYTES", http_max_header_bytes, positive),
    key!("http_max_headers", "PROXY_HTTP_MAX_HEADERS", http_max_headers, positive),
    key!("http_max_url_bytes", "PROXY_HTTP_MAX_URL_BYTES", http_max_url_bytes, positive),
    key!("http_max_body_bytes", "PROXY_HTTP_MAX_BODY_BYTES", http_max_body_bytes, positive),
    key!("http_api_auth.enabled", "PROXY_HTTP_API_AUTH_ENABLED", http_api_auth.enabled, parse_bool),
    key!("http_api_auth.type", "PROXY_HTTP_API_AUTH_TYPE", http_api_auth.kind, text),
    key!("http_api_auth.token", "PROXY_HTTP_API_AUTH_TOKEN", http_api_auth.token, secret),
    key!("http_api_auth.token_file", "PROXY_HTTP_API_AUTH_TOKEN_FILE", http_api_auth.token_file, path),
    key!("http_api_auth.metrics", "PROXY_HTTP_API_AUTH_METRICS", http_api_auth.metrics, parse_bool),
    key!("register.enabled", "PROXY_REGISTER_ENABLED", register.enabled, parsed),
    key!("register.allow_cidrs", "PROXY_REGISTER_ALLOW_CIDRS", register.allow_cidrs, parsed),
    key!("register.require_peer_ip", "PROXY_REGISTER_REQUIRE_PEER_IP", register.require_peer_ip, parse_bool),
    key!("register.max_origins", "PROXY_REGISTER_MAX_ORIGINS", register.max_origins, parsed),
    key!("register.max_origins_per_peer", "PROXY_REGISTER_MAX_ORIGINS_PER_PEER", register.max_origins_per_peer, parsed),
    key!("static_files", "PROXY_STATIC_FILES", static_files, path),
    key!("load_balancer_type", "PROXY_LOAD_BALANCER_TYPE", load_balancer_type, parsed),
    key!("balance_policy", "PROXY_BALANCE_POLICY", balance_policy, parsed),
    key!("redis.host", "PROXY_REDIS_HOST", redis.host, text),
    key!("redis.port", "PROXY_REDIS_PORT", redis.port, parsed),
    key!("redis.password", "PROXY_REDIS_PASSWORD", redis.password, raw),
    key!("redis.db", "PROXY_REDIS_DB", redis.db, parsed),
    key!("redis.url", "PROXY_REDIS_URL", redis.url, text),
    key!("redis.prefix", "PROXY_REDIS_PREFIX", redis.prefix, raw),
    key!("redis.timeout", "PROXY_REDIS_TIMEOUT", redis.timeout, parse_duration),
    key!("redis.tls_ca_file", "PROXY_REDIS_TLS_CA_FILE", redis.tls_ca_file, path),
    key!("redis.tls_cert_file", "PROXY_REDIS_TLS_CERT_FILE", redis.tls_cert_file, path),
    key!("redis.tls_key_file", "PROXY_REDIS_TLS_KEY_FILE", redis.tls_key_file, path),
    key!("default_backend.enabled", "PROXY_DEFAULT_BACKEND_ENABLED", default_backend.enabled, parse_bool),
    key!("default_backend.ip", "PROXY_DEFAULT_BACKEND_IP", default_backend.ip, text),
    key!("default_backend.rtmp", "PROXY_DEFAULT_BACKEND_RTMP", default_backend.rtmp, port),
    key!("default_backend.http", "PROXY_DEFAULT_BACKEND_HTTP", default_backend.http, port),
    key!("default_backend.api", "PROXY_DEFAULT_BACKEND_API", default_backend.api, port),
    key!("default_backend.srt", "PROXY_DEFAULT_BACKEND_SRT", default_backend.srt, port),
    key!("default_backend.rtc", "PROXY_DEFAULT_BACKEND_RTC", default_backend.rtc, port),
    key!("kubernetes.discovery", "PROXY_K8S_DISCOVERY", kubernetes.discovery, parsed),
    key!("kubernetes.namespace", "PROXY_K8S_NAMESPACE", kubernetes.namespace, text),
    key!("kubernetes.service", "PROXY_K8S_SERVICE", kubernetes.service, text),
    key!("kubernetes.kubeconfig", "PROXY_K8S_KUBECONFIG", kubernetes.kubeconfig, text),
    key!("health.probe_interval", "PROXY_HEALTH_PROBE_INTERVAL", health.probe_interval, parse_duration),
    key!("health.failures", "PROXY_HEALTH_FAILURES", health.failures, count),
    key!("health.successes", "PROXY_HEALTH_SUCCESSES", health.successes, count),
    key!("health.probe_kubernetes", "PROXY_HEALTH_PROBE_KUBERNETES", health.probe_kubernetes, parse_bool),
    key!("grace_quit_timeout", "PROXY_GRACE_QUIT_TIMEOUT", grace_quit_timeout, parse_duration),
    key!("force_quit_timeout", "PROXY_FORCE_QUIT_TIMEOUT", force_quit_timeout, parse_duration),
    key!("registration_ttl", "PROXY_REGISTRATION_TTL", registration_ttl, parse_duration),
    key!("stream_ttl", "PROXY_STREAM_TTL", stream_ttl, parse_duration),
    key!("hls_session_ttl", "PROXY_HLS_SESSION_TTL", hls_session_ttl, parse_duration),
    key!("max_playlist_bytes", "PROXY_MAX_PLAYLIST_BYTES", max_playlist_bytes, positive),
    key!("hls_max_playlist_uris", "PROXY_HLS_MAX_PLAYLIST_URIS", hls_max_playlist_uris, positive),
    key!("hls_max_rewrites", "PROXY_HLS_MAX_REWRITES", hls_max_rewrites, positive),
    key!("origin_connect_timeout", "PROXY_ORIGIN_CONNECT_TIMEOUT", origin_connect_timeout, parse_duration),
    key!("origin_response_timeout", "PROXY_ORIGIN_RESPONSE_TIMEOUT", origin_response_timeout, parse_duration),
    key!("relay_buffer_bytes", "PROXY_RELAY_BUFFER_BYTES", relay_buffer_bytes, positive),
    key!("relay_splice", "PROXY_RELAY_SPLICE", relay_splice, parse_bool),
    key!("worker_threads", "PROXY_WORKER_THREADS", worker_threads, parsed),
    key!("rtmp_max_message_bytes", "PROXY_RTMP_MAX_MESSAGE_BYTES", rtmp_max_message_bytes, positive),
    key!("rtmp_handshake_timeout", "PROXY_RTMP_HANDSHAKE_TIMEOUT", rtmp_handshake_timeout, parse_duration),
    key!("srt_max_connections", "PROXY_SRT_MAX_CONNECTIONS", srt_max_connections, parsed),
    key!("srt_idle_timeout", "PROXY_SRT_IDLE_TIMEOUT", srt_idle_timeout, parse_duration),
    key!("srt_handshake_timeout", "PROXY_SRT_HANDSHAKE_TIMEOUT", srt_handshake_timeout, parse_duration),
    key!("webrtc.candidate", "PROXY_WEBRTC_CANDIDATE", webrtc.candidate, candidates),
    key!("webrtc.public_port", "PROXY_WEBRTC_PUBLIC_PORT", webrtc.public_port, optional_port),
    key!("webrtc.idle_timeout", "PROXY_WEBRTC_IDLE_TIMEOUT", webrtc.idle_timeout, parse_duration),
    key!("webrtc.max_sessions", "PROXY_WEBRTC_MAX_SESSIONS", webrtc.max_sessions, positive),
    key!("webrtc.lookup_rate", "PROXY_WEBRTC_LOOKUP_RATE", webrtc.lookup_rate, positive),
    key!("webrtc.max_sdp_bytes", "PROXY_WEBRTC_MAX_SDP_BYTES", webrtc.max_sdp_bytes, positive),
    key!("rtmp_setup_timeout", "PROXY_RTMP_SETUP_TIMEOUT", rtmp_setup_timeout, parse_duration),
    key!("edge.mode", "PROXY_EDGE_MODE", edge.mode, parsed),
    key!("edge.gop_cache_bytes", "PROXY_EDGE_GOP_CACHE_BYTES", edge.gop_cache_bytes, positive),
    key!("edge.gop_cache_duration", "PROXY_EDGE_GOP_CACHE_DURATION", edge.gop_cache_duration, parse_duration),
    key!("edge.player_lag", "PROXY_EDGE_PLAYER_LAG", edge.player_lag, parse_duration),
    key!("edge.player_timeout", "PROXY_EDGE_PLAYER_TIMEOUT", edge.player_timeout, parse_duration),
    key!("edge.linger", "PROXY_EDGE_LINGER", edge.linger, parse_duration),
    key!("edge.hls_cache_bytes", "PROXY_EDGE_HLS_CACHE_BYTES", edge.hls_cache_bytes, positive),
    key!("edge.hls_max_segment_bytes", "PROXY_EDGE_HLS_MAX_SEGMENT_BYTES", edge.hls_max_segment_bytes, positive),
    key!("edge.hls_segment_ttl", "PROXY_EDGE_HLS_SEGMENT_TTL", edge.hls_segment_ttl, parse_duration),
    key!("edge.hls_playlist_ttl", "PROXY_EDGE_HLS_PLAYLIST_TTL", edge.hls_playlist_ttl, parse_duration),
    key!("log_format", "PROXY_LOG_FORMAT", log_format, parsed),
];
