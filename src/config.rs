//! Configuration: defaults < YAML file < environment (`PROXY_*`) < flags.
//!
//! Every setting has one entry in [`KEYS`]: its YAML name, its env name and
//! the setter that parses a string into it. Env values and flags go through
//! the same setters, so a bad value is reported the same way whatever its
//! source: the key, where it came from and the value. The YAML file is read
//! with serde (`deny_unknown_fields`), so a misspelt key is an error too.
//!
//! This module only parses and validates; it never opens sockets or files
//! other than the config file itself.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::balance::Policy;
use crate::origin::{parse_endpoint_port, Origin, OriginSource, Ports};

/// A configuration error. Display is the one line printed before exit 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {key} (from {from}): {reason}")]
    Value {
        key: String,
        from: String,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown setting {0:?} (see README for the keys)")]
    UnknownKey(String),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Which store keeps routing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process, for a single proxy; no dependencies.
    Memory,
    /// Shared by every proxy replica.
    Redis,
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            _ => Err("expected memory or redis".into()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

/// Kubernetes discovery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// No Kubernetes discovery; origins come from heartbeats and config.
    Off,
    /// Watch `OriginPool` custom resources in the namespace.
    Originpool,
    /// Watch one Service's EndpointSlices with the default port names.
    Service,
}

impl FromStr for DiscoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "" => Ok(Self::Off),
            "originpool" => Ok(Self::Originpool),
            "service" => Ok(Self::Service),
            _ => Err("expected off, originpool or service".into()),
        }
    }
}

/// A listen address: `port` (all interfaces) or `ip:port`, as the Go proxy
/// accepts for every `PROXY_*_SERVER` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            // `[::]` accepts IPv4 too on Linux (dual stack), but not where
            // IPv6 is disabled; 0.0.0.0 is what the Go proxy binds.
            return Ok(Self(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)));
        }
        if let Some(port) = s.strip_prefix(':') {
            let port = port.parse::<u16>().map_err(|_| "bad port".to_string())?;
            return Ok(Self(SocketAddr::new(IpAddr::from(Ipv6Addr::UNSPECIFIED), port)));
        }
        s.parse::<SocketAddr>()
            .map(Self)
            .map_err(|_| "expected a port or ip:port".into())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_or_number(d)
    }
}

/// Parses a duration the way Go's `time.ParseDuration` writes the common
/// cases (`20s`, `1m`, `1m30s`, `500ms`, `2h`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in {s:?} (use s, ms, m or h)"))?;
        if digits == 0 {
            return Err(format!("expected a number in {s:?}"));
        }
        let value: f64 = rest[..digits].parse().map_err(|_| format!("bad number in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} (use s, ms, m or h)")),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * unit);
    }
    Ok(total)
}

/// Formats a duration so that [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 && !d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

mod duration_serde {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw: StrOrNum = Deserialize::deserialize(d)?;
        parse_duration(&raw.0).map_err(serde::de::Error::custom)
    }
}

/// Accepts `on`/`off` (the Go proxy's spelling) and `true`/`false`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" | "" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

/// A scalar YAML value read as text, so numbers and strings both reach the
/// same `FromStr` parser that env values use.
struct StrOrNum(String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(StrOrNum(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::U(n) => n.to_string(),
            Raw::I(n) => n.to_string(),
            Raw::F(n) => n.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

fn from_str_or_number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let raw = StrOrNum::deserialize(d)?;
    raw.0.parse().map_err(serde::de::Error::custom)
}

/// Connection to Redis when `load_balancer_type` is `redis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    /// Empty means no AUTH.
    pub password: String,
    pub db: u8,
    /// Full URL (`redis://`, `rediss://`, `redis-sentinel://`,
    /// `redis-cluster://`); when set it wins over host/port/password/db.
    pub url: String,
    /// Every key starts with this, so several clusters can share one Redis.
    pub prefix: String,
    /// Bound on every store call, so a slow Redis never hangs a request.
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6379,
            password: String::new(),
            db: 0,
            url: String::new(),
            prefix: "srs-proxy:".into(),
            timeout: Duration::from_millis(1000),
        }
    }
}

/// The Go proxy's debugging origin, registered from config at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultBackend {
    pub enabled: bool,
    pub ip: String,
    pub rtmp: Option<u16>,
    pub http: Option<u16>,
    pub api: Option<u16>,
    pub srt: Option<u16>,
    pub rtc: Option<u16>,
}

impl Default for DefaultBackend {
    fn default() -> Self {
        Self {
            enabled: false,
            ip: "127.0.0.1".into(),
            rtmp: Some(1935),
            http: Some(8080),
            api: Some(1985),
            srt: Some(10080),
            rtc: Some(8000),
        }
    }
}

/// An origin listed in the YAML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticOrigin {
    /// Defaults to `ip:rtmp` (or `ip:http`).
    #[serde(default)]
    pub id: Option<String>,
    pub ip: String,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub rtmp: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub http: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub api: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub srt: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub rtc: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_streams: u32,
}

fn one() -> u32 {
    1
}

fn de_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let raw = StrOrNum::deserialize(d)?;
    parse_endpoint_port(&raw.0).map(Some).map_err(serde::de::Error::custom)
}

impl StaticOrigin {
    /// The origin this entry describes.
    pub fn to_origin(&self) -> Origin {
        let ports = Ports {
            rtmp: self.rtmp,
            http: self.http,
            api: self.api,
            srt: self.srt,
            rtc: self.rtc,
        };
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.ip, self.rtmp.or(self.http).unwrap_or(0)));
        Origin {
            id,
            ip: self.ip.clone(),
            ports,
            source: OriginSource::Static,
            weight: self.weight.max(1),
            max_streams: self.max_streams,
            pool: None,
        }
    }
}

/// Kubernetes discovery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    pub discovery: DiscoveryMode,
    /// Empty: the pod's own namespace (from the service account), else `default`.
    pub namespace: String,
    /// The origin Service for `discovery: service`.
    pub service: String,
    /// Kubeconfig file to reach the cluster with. Empty: `$KUBECONFIG`,
    /// `~/.kube/config`, then the pod's service account.
    pub kubeconfig: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            discovery: DiscoveryMode::Off,
            namespace: String::new(),
            service: String::new(),
            kubeconfig: String::new(),
        }
    }
}

/// The whole configuration. Field docs are what the README table says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP-FLV / HTTP-TS / HLS streaming listener.
    pub http_server: ListenAddr,
    /// RTMP listener.
    pub rtmp_server: ListenAddr,
    /// WHIP/WHEP HTTP signalling listener.
    pub http_api: ListenAddr,
    /// WebRTC media (UDP).
    pub webrtc_server: ListenAddr,
    /// SRT (UDP).
    pub srt_server: ListenAddr,
    /// System API: versions, register, metrics, admin.
    pub system_api: ListenAddr,
    /// Directory served for paths that are not streams; unset = off.
    pub static_files: Option<PathBuf>,
    pub load_balancer_type: StoreKind,
    pub balance_policy: Policy,
    pub redis: RedisConfig,
    pub default_backend: DefaultBackend,
    pub origins: Vec<StaticOrigin>,
    pub kubernetes: KubernetesConfig,
    /// How long open streams may go on after SIGTERM.
    #[serde(with = "duration_serde")]
    pub grace_quit_timeout: Duration,
    /// Hard limit after SIGTERM; the process exits then whatever is open.
    #[serde(with = "duration_serde")]
    pub force_quit_timeout: Duration,
    /// How long a heartbeat registration lives without a new heartbeat.
    #[serde(with = "duration_serde")]
    pub registration_ttl: Duration,
    /// How long a stream→origin mapping lives once no relay refreshes it.
    #[serde(with = "duration_serde")]
    pub stream_ttl: Duration,
    /// How long an HLS routing session lives without a request.
    #[serde(with = "duration_serde")]
    pub hls_session_ttl: Duration,
    /// Largest m3u8 the proxy reads from an origin.
    pub max_playlist_bytes: usize,
    /// Bound on connecting to an origin.
    #[serde(with = "duration_serde")]
    pub origin_connect_timeout: Duration,
    /// Bound on an origin's response headers (and a whole playlist).
    #[serde(with = "duration_serde")]
    pub origin_response_timeout: Duration,
    /// Bytes buffered per relayed connection (each direction).
    pub relay_buffer_bytes: usize,
    /// Largest RTMP message accepted from either side.
    pub rtmp_max_message_bytes: usize,
    /// A client that has not finished the RTMP handshake by then is dropped.
    #[serde(with = "duration_serde")]
    pub rtmp_handshake_timeout: Duration,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        let port = |p: u16| ListenAddr(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), p));
        Self {
            http_server: port(18080),
            rtmp_server: port(11935),
            http_api: port(11985),
            webrtc_server: port(18000),
            srt_server: port(20080),
            system_api: port(12025),
            static_files: None,
            load_balancer_type: StoreKind::Memory,
            balance_policy: Policy::LeastStreams,
            redis: RedisConfig::default(),
            default_backend: DefaultBackend::default(),
            origins: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            grace_quit_timeout: Duration::from_secs(20),
            force_quit_timeout: Duration::from_secs(30),
            registration_ttl: Duration::from_secs(30),
            stream_ttl: Duration::from_secs(60),
            hls_session_ttl: Duration::from_secs(120),
            max_playlist_bytes: 1024 * 1024,
            origin_connect_timeout: Duration::from_secs(3),
            origin_response_timeout: Duration::from_secs(10),
            relay_buffer_bytes: 64 * 1024,
            rtmp_max_message_bytes: 8 * 1024 * 1024,
            rtmp_handshake_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
        }
    }
}

/// One setting reachable from env and flags.
pub struct Key {
    /// Dotted YAML path, also the `--set` name.
    pub name: &'static str,
    /// Environment variable (Go proxy compatible where the Go proxy has one).
    pub env: &'static str,
    /// Parses the text into the config.
    pub set: fn(&mut Config, &str) -> Result<(), String>,
}

fn p<T: FromStr>(v: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

fn port_opt(v: &str) -> Result<Option<u16>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    parse_endpoint_port(v).map(Some).map_err(|e| e.to_string())
}

fn size(v: &str) -> Result<usize, String> {
    let n: usize = p(v)?;
    if n == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(n)
}

/// Every env/flag key. The README configuration table lists the same rows.
// `Ok(c.field = value?)` keeps each row on one line: parse, assign, done.
#[allow(clippy::unit_arg)]
pub const KEYS: &[Key] = &[
    Key {
        name: "http_server",
        env: "PROXY_HTTP_SERVER",
        set: |c, v| Ok(c.http_server = p(v)?),
    },
    Key {
        name: "rtmp_server",
        env: "PROXY_RTMP_SERVER",
        set: |c, v| Ok(c.rtmp_server = p(v)?),
    },
    Key {
        name: "http_api",
        env: "PROXY_HTTP_API",
        set: |c, v| Ok(c.http_api = p(v)?),
    },
    Key {
        name: "webrtc_server",
        env: "PROXY_WEBRTC_SERVER",
        set: |c, v| Ok(c.webrtc_server = p(v)?),
    },
    Key {
        name: "srt_server",
        env: "PROXY_SRT_SERVER",
        set: |c, v| Ok(c.srt_server = p(v)?),
    },
    Key {
        name: "system_api",
        env: "PROXY_SYSTEM_API",
        set: |c, v| Ok(c.system_api = p(v)?),
    },
    Key {
        name: "static_files",
        env: "PROXY_STATIC_FILES",
        set: |c, v| {
            c.static_files = (!v.trim().is_empty()).then(|| PathBuf::from(v.trim()));
            Ok(())
        },
    },
    Key {
        name: "load_balancer_type",
        env: "PROXY_LOAD_BALANCER_TYPE",
        set: |c, v| Ok(c.load_balancer_type = p(v)?),
    },
    Key {
        name: "balance_policy",
        env: "PROXY_BALANCE_POLICY",
        set: |c, v| Ok(c.balance_policy = p(v)?),
    },
    Key {
        name: "redis.host",
        env: "PROXY_REDIS_HOST",
        set: |c, v| Ok(c.redis.host = v.trim().to_string()),
    },
    Key {
        name: "redis.port",
        env: "PROXY_REDIS_PORT",
        set: |c, v| Ok(c.redis.port = p(v)?),
    },
    Key {
        name: "redis.password",
        env: "PROXY_REDIS_PASSWORD",
        set: |c, v| Ok(c.redis.password = v.to_string()),
    },
    Key {
        name: "redis.db",
        env: "PROXY_REDIS_DB",
        set: |c, v| Ok(c.redis.db = p(v)?),
    },
    Key {
        name: "redis.url",
        env: "PROXY_REDIS_URL",
        set: |c, v| Ok(c.redis.url = v.trim().to_string()),
    },
    Key {
        name: "redis.prefix",
        env: "PROXY_REDIS_PREFIX",
        set: |c, v| Ok(c.redis.prefix = v.to_string()),
    },
    Key {
        name: "redis.timeout",
        env: "PROXY_REDIS_TIMEOUT",
        set: |c, v| Ok(c.redis.timeout = parse_duration(v)?),
    },
    Key {
        name: "default_backend.enabled",
        env: "PROXY_DEFAULT_BACKEND_ENABLED",
        set: |c, v| Ok(c.default_backend.enabled = parse_bool(v)?),
    },
    Key {
        name: "default_backend.ip",
        env: "PROXY_DEFAULT_BACKEND_IP",
        set: |c, v| Ok(c.default_backend.ip = v.trim().to_string()),
    },
    Key {
        name: "default_backend.rtmp",
        env: "PROXY_DEFAULT_BACKEND_RTMP",
        set: |c, v| Ok(c.default_backend.rtmp = port_opt(v)?),
    },
    Key {
        name: "default_backend.http",
        env: "PROXY_DEFAULT_BACKEND_HTTP",
        set: |c, v| Ok(c.default_backend.http = port_opt(v)?),
    },
    Key {
        name: "default_backend.api",
        env: "PROXY_DEFAULT_BACKEND_API",
        set: |c, v| Ok(c.default_backend.api = port_opt(v)?),
    },
    Key {
        name: "default_backend.srt",
        env: "PROXY_DEFAULT_BACKEND_SRT",
        set: |c, v| Ok(c.default_backend.srt = port_opt(v)?),
    },
    Key {
        name: "default_backend.rtc",
        env: "PROXY_DEFAULT_BACKEND_RTC",
        set: |c, v| Ok(c.default_backend.rtc = port_opt(v)?),
    },
    Key {
        name: "kubernetes.discovery",
        env: "PROXY_K8S_DISCOVERY",
        set: |c, v| Ok(c.kubernetes.discovery = p(v)?),
    },
    Key {
        name: "kubernetes.namespace",
        env: "PROXY_K8S_NAMESPACE",
        set: |c, v| Ok(c.kubernetes.namespace = v.trim().to_string()),
    },
    Key {
        name: "kubernetes.service",
        env: "PROXY_K8S_SERVICE",
        set: |c, v| Ok(c.kubernetes.service = v.trim().to_string()),
    },
    Key {
        name: "kubernetes.kubeconfig",
        env: "PROXY_K8S_KUBECONFIG",
        set: |c, v| Ok(c.kubernetes.kubeconfig = v.trim().to_string()),
    },
    Key {
        name: "grace_quit_timeout",
        env: "PROXY_GRACE_QUIT_TIMEOUT",
        set: |c, v| Ok(c.grace_quit_timeout = parse_duration(v)?),
    },
    Key {
        name: "force_quit_timeout",
        env: "PROXY_FORCE_QUIT_TIMEOUT",
        set: |c, v| Ok(c.force_quit_timeout = parse_duration(v)?),
    },
    Key {
        name: "registration_ttl",
        env: "PROXY_REGISTRATION_TTL",
        set: |c, v| Ok(c.registration_ttl = parse_duration(v)?),
    },
    Key {
        name: "stream_ttl",
        env: "PROXY_STREAM_TTL",
        set: |c, v| Ok(c.stream_ttl = parse_duration(v)?),
    },
    Key {
        name: "hls_session_ttl",
        env: "PROXY_HLS_SESSION_TTL",
        set: |c, v| Ok(c.hls_session_ttl = parse_duration(v)?),
    },
    Key {
        name: "max_playlist_bytes",
        env: "PROXY_MAX_PLAYLIST_BYTES",
        set: |c, v| Ok(c.max_playlist_bytes = size(v)?),
    },
    Key {
        name: "origin_connect_timeout",
        env: "PROXY_ORIGIN_CONNECT_TIMEOUT",
        set: |c, v| Ok(c.origin_connect_timeout = parse_duration(v)?),
    },
    Key {
        name: "origin_response_timeout",
        env: "PROXY_ORIGIN_RESPONSE_TIMEOUT",
        set: |c, v| Ok(c.origin_response_timeout = parse_duration(v)?),
    },
    Key {
        name: "relay_buffer_bytes",
        env: "PROXY_RELAY_BUFFER_BYTES",
        set: |c, v| Ok(c.relay_buffer_bytes = size(v)?),
    },
    Key {
        name: "rtmp_max_message_bytes",
        env: "PROXY_RTMP_MAX_MESSAGE_BYTES",
        set: |c, v| Ok(c.rtmp_max_message_bytes = size(v)?),
    },
    Key {
        name: "rtmp_handshake_timeout",
        env: "PROXY_RTMP_HANDSHAKE_TIMEOUT",
        set: |c, v| Ok(c.rtmp_handshake_timeout = parse_duration(v)?),
    },
    Key {
        name: "log_format",
        env: "PROXY_LOG_FORMAT",
        set: |c, v| Ok(c.log_format = p(v)?),
    },
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    Env(&'static str),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

impl Config {
    /// Reads a YAML file. Unknown keys are errors.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        Self::from_yaml_str(&text).map_err(|e| file_err(e.to_string()))
    }

    /// Parses YAML text; an empty document is the defaults.
    pub fn from_yaml_str(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    /// Applies every `PROXY_*` variable present in `env`. Empty values are
    /// ignored, as the Go proxy treats an empty variable as unset.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for key in KEYS {
            if let Some(value) = env.get(key.env).filter(|v| !v.is_empty()) {
                (key.set)(self, value).map_err(|reason| ConfigError::Value {
                    key: key.name.to_string(),
                    from: Source::Env(key.env).to_string(),
                    value: value.clone(),
                    reason,
                })?;
            }
        }
        Ok(())
    }

    /// Applies one `name=value` override from the command line.
    pub fn apply_flag(&mut self, flag: &str, name: &str, value: &str) -> Result<(), ConfigError> {
        let key = KEYS
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| ConfigError::UnknownKey(name.to_string()))?;
        (key.set)(self, value).map_err(|reason| ConfigError::Value {
            key: key.name.to_string(),
            from: Source::Flag(flag.to_string()).to_string(),
            value: value.to_string(),
            reason,
        })
    }

    /// Cross-field checks that no single parser can make.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("registration_ttl", self.registration_ttl),
            ("stream_ttl", self.stream_ttl),
            ("hls_session_ttl", self.hls_session_ttl),
            ("origin_connect_timeout", self.origin_connect_timeout),
            ("origin_response_timeout", self.origin_response_timeout),
            ("redis.timeout", self.redis.timeout),
            ("rtmp_handshake_timeout", self.rtmp_handshake_timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        // The RTMP length field is 24 bits; below a few KiB not even a
        // connect command with its properties fits.
        if !(4096..=0x00ff_ffff).contains(&self.rtmp_max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "rtmp_max_message_bytes",
                reason: format!(
                    "{} is outside 4096..=16777215 (RTMP lengths are 24 bits)",
                    self.rtmp_max_message_bytes
                ),
            });
        }
        if self.force_quit_timeout < self.grace_quit_timeout {
            return Err(ConfigError::Invalid {
                key: "force_quit_timeout",
                reason: format!(
                    "{} is shorter than grace_quit_timeout {}",
                    format_duration(self.force_quit_timeout),
                    format_duration(self.grace_quit_timeout)
                ),
            });
        }
        if self.default_backend.enabled && self.default_backend.rtmp.is_none() && self.default_backend.http.is_none() {
            return Err(ConfigError::Invalid {
                key: "default_backend",
                reason: "enabled but has neither an rtmp nor an http port".into(),
            });
        }
        for (i, o) in self.origins.iter().enumerate() {
            if o.rtmp.is_none() && o.http.is_none() {
                return Err(ConfigError::Invalid {
                    key: "origins",
                    reason: format!("entry {i} ({}) has neither an rtmp nor an http port", o.ip),
                });
            }
        }
        if !self.redis.url.is_empty() {
            // The reason never repeats the URL: it may hold a password.
            crate::store::redis::fred_config(&self.redis).map_err(|reason| ConfigError::Invalid {
                key: "redis.url",
                reason: format!("not a Redis URL fred can use: {reason}"),
            })?;
        }
        if self.kubernetes.discovery == DiscoveryMode::Service && self.kubernetes.service.is_empty() {
            return Err(ConfigError::Invalid {
                key: "kubernetes.service",
                reason: "discovery is service but no service is named (PROXY_K8S_SERVICE)".into(),
            });
        }
        Ok(())
    }

    /// The origins configured statically (default backend and `origins:`).
    pub fn static_origins(&self) -> Vec<Origin> {
        let mut out: Vec<Origin> = self.origins.iter().map(StaticOrigin::to_origin).collect();
        let b = &self.default_backend;
        if b.enabled {
            out.push(Origin {
                id: "default-backend".into(),
                ip: b.ip.clone(),
                ports: Ports {
                    rtmp: b.rtmp,
                    http: b.http,
                    api: b.api,
                    srt: b.srt,
                    rtc: b.rtc,
                },
                source: OriginSource::Static,
                weight: 1,
                max_streams: 0,
                pool: None,
            });
        }
        out
    }
}

/// Builds the effective config: defaults, then the file, then env, then
/// flags (`overrides` as `(flag, key, value)` in command-line order).
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    overrides: &[(String, String, String)],
) -> Result<Config, ConfigError> {
    let mut config = match file {
        Some(path) => Config::from_yaml_file(path)?,
        None => Config::default(),
    };
    config.apply_env(env)?;
    for (flag, key, value) in overrides {
        config.apply_flag(flag, key, value)?;
    }
    config.validate()?;
    Ok(config)
}

/// The config with secrets masked, for printing (`--check-config`, logs):
/// the Redis password and the password in a Redis URL become `***`.
pub fn redacted(config: &Config) -> Config {
    let mut shown = config.clone();
    if !shown.redis.password.is_empty() {
        shown.redis.password = "***".into();
    }
    shown.redis.url = redact_url(&shown.redis.url);
    shown
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_go_proxy() {
        let c = Config::default();
        assert_eq!(c.http_server.0.port(), 18080);
        assert_eq!(c.rtmp_server.0.port(), 11935);
        assert_eq!(c.http_api.0.port(), 11985);
        assert_eq!(c.webrtc_server.0.port(), 18000);
        assert_eq!(c.srt_server.0.port(), 20080);
        assert_eq!(c.system_api.0.port(), 12025);
        assert_eq!(c.grace_quit_timeout, Duration::from_secs(20));
        assert_eq!(c.force_quit_timeout, Duration::from_secs(30));
        assert_eq!(c.load_balancer_type, StoreKind::Memory);
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!("8080".parse::<ListenAddr>().unwrap().0, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            "127.0.0.1:81".parse::<ListenAddr>().unwrap().0,
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!("[::1]:82".parse::<ListenAddr>().unwrap().0, "[::1]:82".parse().unwrap());
        assert_eq!(":83".parse::<ListenAddr>().unwrap().0.port(), 83);
        for bad in ["", "http", "70000", "1.2.3.4", "1.2.3.4:x"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "abc", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in [
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_millis(5),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn precedence_flags_over_env_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "http_server: 1001\nrtmp_server: 1002\nsystem_api: 1003\nredis:\n  prefix: \"file:\"\n",
        )
        .unwrap();
        let env = env(&[("PROXY_RTMP_SERVER", "2002"), ("PROXY_SYSTEM_API", "2003")]);
        let flags = vec![("--system-api".into(), "system_api".into(), "3003".into())];
        let c = load(Some(&file), &env, &flags).unwrap();
        assert_eq!(c.http_server.0.port(), 1001, "file over default");
        assert_eq!(c.rtmp_server.0.port(), 2002, "env over file");
        assert_eq!(c.system_api.0.port(), 3003, "flag over env");
        assert_eq!(c.redis.prefix, "file:");
        assert_eq!(c.http_api.0.port(), 11985, "default");
    }

    #[test]
    fn bad_env_value_names_key_and_value() {
        let err = load(None, &env(&[("PROXY_REDIS_PORT", "sixty")]), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("redis.port") && msg.contains("PROXY_REDIS_PORT") && msg.contains("sixty"),
            "{msg}"
        );
    }

    #[test]
    fn rtmp_message_limit_must_fit_the_protocol() {
        for bad in ["0", "100", "16777216"] {
            let err = load(None, &env(&[("PROXY_RTMP_MAX_MESSAGE_BYTES", bad)]), &[]).unwrap_err();
            assert!(err.to_string().contains("rtmp_max_message_bytes"), "{bad}: {err}");
        }
        let c = load(None, &env(&[("PROXY_RTMP_MAX_MESSAGE_BYTES", "16777215")]), &[]).unwrap();
        assert_eq!(c.rtmp_max_message_bytes, 16_777_215);
    }

    #[test]
    fn unknown_yaml_key_is_rejected() {
        let err = Config::from_yaml_str("http_sever: 1\n").unwrap_err().to_string();
        assert!(err.contains("http_sever"), "{err}");
        let err = Config::from_yaml_str("redis:\n  hots: x\n").unwrap_err().to_string();
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn yaml_values_parse_like_env_values() {
        let c = Config::from_yaml_str(
            "http_server: \"127.0.0.1:9000\"\ngrace_quit_timeout: 5s\nforce_quit_timeout: 10\norigins:\n  - ip: 10.0.0.1\n    rtmp: tcp://0.0.0.0:1935\n    http: 8080\n",
        )
        .unwrap();
        assert_eq!(c.http_server.0, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.force_quit_timeout, Duration::from_secs(10));
        assert_eq!(c.origins[0].rtmp, Some(1935));
        let o = c.static_origins();
        assert_eq!(o[0].id, "10.0.0.1:1935");
    }

    #[test]
    fn go_style_default_backend() {
        let c = load(
            None,
            &env(&[
                ("PROXY_DEFAULT_BACKEND_ENABLED", "on"),
                ("PROXY_DEFAULT_BACKEND_HTTP", "8081"),
            ]),
            &[],
        )
        .unwrap();
        let o = c.static_origins();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].ports.http, Some(8081));
        assert_eq!(o[0].ports.rtmp, Some(1935));
    }

    #[test]
    fn cross_field_validation() {
        let err = load(
            None,
            &env(&[("PROXY_GRACE_QUIT_TIMEOUT", "40s"), ("PROXY_FORCE_QUIT_TIMEOUT", "30s")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("force_quit_timeout"));
        let err = load(None, &env(&[("PROXY_K8S_DISCOVERY", "service")]), &[]).unwrap_err();
        assert!(err.to_string().contains("PROXY_K8S_SERVICE"));
    }

    #[test]
    fn redis_url_forms() {
        for good in [
            "redis://:secret@10.0.0.9:6380/2",
            "rediss://redis.example.com:6380",
            "redis-sentinel://10.0.0.1:26379/0?sentinelServiceName=mymaster&node=10.0.0.2:26379",
            "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000",
        ] {
            load(None, &env(&[("PROXY_REDIS_URL", good)]), &[]).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let err = load(None, &env(&[("PROXY_REDIS_URL", "http://:hunter2@x")]), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("redis.url") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn secrets_are_masked_for_printing() {
        assert_eq!(redact_url("redis://:s3cret@redis:6379/0"), "redis://:***@redis:6379/0");
        assert_eq!(redact_url("rediss://app:pw@h:1?x=@"), "rediss://app:***@h:1?x=@");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        let mut c = Config::default();
        c.redis.password = "pw".into();
        c.redis.url = "redis://u:pw@h".into();
        let yaml = serde_yaml::to_string(&redacted(&c)).unwrap();
        assert!(!yaml.contains("pw"), "{yaml}");
    }

    #[test]
    fn unknown_flag_key() {
        let err = load(None, &BTreeMap::new(), &[("--set".into(), "nope".into(), "1".into())]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey(_)));
    }

    #[test]
    fn every_key_round_trips_through_yaml_names() {
        // A key's dotted name must be a real YAML path, so the README table
        // and the file agree.
        let yaml = serde_yaml::to_value(Config::default()).unwrap();
        for key in KEYS {
            let mut v = &yaml;
            for part in key.name.split('.') {
                v = v.get(part).unwrap_or_else(|| panic!("{} is not a YAML path", key.name));
            }
        }
    }
}
