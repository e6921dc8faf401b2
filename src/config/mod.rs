//! Configuration: defaults < YAML file < environment (`PROXY_*`) < flags.
//!
//! Every setting has one row in [`KEYS`] (`keys.rs`): its YAML name, its
//! env name and the parser of its value. Env values and flags go through
//! the same parsers (`value.rs`), so a bad value is reported the same way
//! whatever its source: the key, where it came from and the value. The YAML
//! file is read with serde (`deny_unknown_fields`), so a misspelt key is an
//! error too.
//!
//! This module only parses and validates; it never opens sockets, and the
//! only files it reads are the config file and the API token file it names.

mod edge;
mod health;
mod keys;
mod origins;
mod redis;
mod security;
pub mod value;
mod webrtc;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::edge::{EdgeConfig, EdgeMode};
pub use self::health::HealthConfig;
pub use self::keys::{Key, KEYS};
pub use self::origins::{DefaultBackend, StaticOrigin};
pub use self::redis::{check_redis_url, redact_url, RedisConfig};
pub use self::security::{AuthConfig, Cidr, CidrList, RegisterConfig, RegisterMode, Secret};
use self::value::{duration_serde, format_duration};
pub use self::value::{parse_bool, parse_duration, ListenAddr};
pub use self::webrtc::WebrtcConfig;
use crate::balance::Policy;
use crate::origin::{Origin, OriginSource, Ports};

/// Smallest `relay_buffer_bytes`: hyper's HTTP/1 read buffer cannot be
/// capped below this.
pub const MIN_RELAY_BUFFER: usize = 8192;

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
    /// Accept backlog of every TCP listener; 0 = the smaller of 4096 and
    /// the kernel's `somaxconn`.
    pub listen_backlog: u32,
    /// Open connections on the HTTP streaming listener; 0 = unlimited.
    pub http_max_connections: usize,
    /// Open connections on the RTMP listener; 0 = unlimited.
    pub rtmp_max_connections: usize,
    /// Open connections on the system API listener; 0 = unlimited.
    pub system_api_max_connections: usize,
    /// Open connections on the WebRTC signalling listener; 0 = unlimited.
    pub http_api_max_connections: usize,
    /// A request head must arrive within this long (slowloris); it is also
    /// how long an idle keep-alive connection waits for its next request.
    #[serde(with = "duration_serde")]
    pub http_header_timeout: Duration,
    /// Largest request head (request line and headers); 431 over it.
    pub http_max_header_bytes: usize,
    /// Most header fields in a request; 431 over it.
    pub http_max_headers: usize,
    /// Longest request target (path and query); 414 over it.
    pub http_max_url_bytes: usize,
    /// Largest request body any endpoint reads; 413 over it.
    pub http_max_body_bytes: usize,
    /// Bearer token on the system API's admin side.
    pub http_api_auth: AuthConfig,
    /// What the register API accepts.
    pub register: RegisterConfig,
    /// Directory served for paths that are not streams; unset = off.
    pub static_files: Option<PathBuf>,
    pub load_balancer_type: StoreKind,
    pub balance_policy: Policy,
    pub redis: RedisConfig,
    pub default_backend: DefaultBackend,
    pub origins: Vec<StaticOrigin>,
    pub kubernetes: KubernetesConfig,
    pub webrtc: WebrtcConfig,
    pub health: HealthConfig,
    pub edge: EdgeConfig,
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
    /// Most URIs a playlist may carry (each gets a routing token, so this
    /// bounds the rewritten size); 502 over it.
    pub hls_max_playlist_uris: usize,
    /// Playlists fetched and rewritten at once; more wait, then get 503.
    pub hls_max_rewrites: usize,
    /// Bound on connecting to an origin.
    #[serde(with = "duration_serde")]
    pub origin_connect_timeout: Duration,
    /// Bound on an origin's response headers (and a whole playlist).
    #[serde(with = "duration_serde")]
    pub origin_response_timeout: Duration,
    /// Most bytes a live HTTP relay holds for one player, and the cap on
    /// the read buffer of every HTTP connection to an origin.
    pub relay_buffer_bytes: usize,
    /// Live HTTP relays move bytes with splice(2), not through the process.
    pub relay_splice: bool,
    /// Threads of the async runtime; 0 = one per core.
    pub worker_threads: usize,
    /// Largest RTMP message accepted from either side.
    pub rtmp_max_message_bytes: usize,
    /// A client that has not finished the RTMP handshake by then is dropped.
    #[serde(with = "duration_serde")]
    pub rtmp_handshake_timeout: Duration,
    /// SRT connections open at once (in the origin handshake or relaying);
    /// 0 = unlimited.
    pub srt_max_connections: usize,
    /// An SRT connection ends when one side has sent nothing for this long.
    #[serde(with = "duration_serde")]
    pub srt_idle_timeout: Duration,
    /// Bound on the proxy's SRT handshake with an origin.
    #[serde(with = "duration_serde")]
    pub srt_handshake_timeout: Duration,
    /// From accept to publish/play, whatever the client sends meanwhile.
    #[serde(with = "duration_serde")]
    pub rtmp_setup_timeout: Duration,
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
            listen_backlog: 0,
            http_max_connections: 20_000,
            rtmp_max_connections: 10_000,
            system_api_max_connections: 1_000,
            http_api_max_connections: 10_000,
            http_header_timeout: Duration::from_secs(10),
            http_max_header_bytes: 16 * 1024,
            http_max_headers: 64,
            http_max_url_bytes: 4096,
            http_max_body_bytes: 64 * 1024,
            http_api_auth: AuthConfig::default(),
            register: RegisterConfig::default(),
            static_files: None,
            load_balancer_type: StoreKind::Memory,
            balance_policy: Policy::LeastStreams,
            redis: RedisConfig::default(),
            default_backend: DefaultBackend::default(),
            origins: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            webrtc: WebrtcConfig::default(),
            health: HealthConfig::default(),
            edge: EdgeConfig::default(),
            grace_quit_timeout: Duration::from_secs(20),
            force_quit_timeout: Duration::from_secs(30),
            registration_ttl: Duration::from_secs(30),
            stream_ttl: Duration::from_secs(60),
            hls_session_ttl: Duration::from_secs(120),
            max_playlist_bytes: 1024 * 1024,
            hls_max_playlist_uris: 10_000,
            hls_max_rewrites: 64,
            origin_connect_timeout: Duration::from_secs(3),
            origin_response_timeout: Duration::from_secs(10),
            relay_buffer_bytes: 64 * 1024,
            relay_splice: true,
            worker_threads: 0,
            rtmp_max_message_bytes: 8 * 1024 * 1024,
            rtmp_handshake_timeout: Duration::from_secs(10),
            srt_max_connections: 10_000,
            srt_idle_timeout: Duration::from_secs(10),
            srt_handshake_timeout: Duration::from_secs(1),
            rtmp_setup_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
        }
    }
}

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
            ("srt_idle_timeout", self.srt_idle_timeout),
            ("srt_handshake_timeout", self.srt_handshake_timeout),
            ("webrtc.idle_timeout", self.webrtc.idle_timeout),
            ("rtmp_setup_timeout", self.rtmp_setup_timeout),
            ("http_header_timeout", self.http_header_timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        // hyper's HTTP/1 reader needs at least 8 KiB; past 16 MiB the
        // bound stops meaning anything for a live stream.
        if !(MIN_RELAY_BUFFER..=16 * 1024 * 1024).contains(&self.relay_buffer_bytes) {
            return Err(ConfigError::Invalid {
                key: "relay_buffer_bytes",
                reason: format!("{} is outside {MIN_RELAY_BUFFER}..=16777216", self.relay_buffer_bytes),
            });
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
        // hyper needs room for a request line and a few headers.
        if self.http_max_header_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "http_max_header_bytes",
                reason: format!("{} is below 1024", self.http_max_header_bytes),
            });
        }
        self.validate_auth()?;
        self.edge
            .check()
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
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
            check_redis_url(&self.redis.url).map_err(|reason| ConfigError::Invalid {
                key: "redis.url",
                reason: format!("not a usable Redis URL: {reason}"),
            })?;
        }
        for (key, n) in [
            ("health.failures", self.health.failures),
            ("health.successes", self.health.successes),
        ] {
            if n == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        self.redis
            .check_tls()
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
        match (self.kubernetes.discovery, self.kubernetes.service.is_empty()) {
            (DiscoveryMode::Service, true) => Err(ConfigError::Invalid {
                key: "kubernetes.service",
                reason: "discovery is service but no service is named (PROXY_K8S_SERVICE)".into(),
            }),
            (DiscoveryMode::Originpool, false) => Err(ConfigError::Invalid {
                key: "kubernetes.service",
                reason: "only used with discovery service; with originpool the OriginPools name the services".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The Go proxy's start-up checks of its Bearer settings, with its
    /// variable names in the messages.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.http_api_auth;
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if !auth.enabled {
            if auth.metrics {
                return invalid(
                    "http_api_auth.metrics",
                    "protecting /metrics needs PROXY_HTTP_API_AUTH_ENABLED=on",
                );
            }
            return Ok(());
        }
        match auth.kind.trim().to_ascii_lowercase().as_str() {
            "" => invalid(
                "http_api_auth.type",
                "PROXY_HTTP_API_AUTH_TYPE is required when PROXY_HTTP_API_AUTH_ENABLED is on",
            ),
            "bearer" if auth.token.expose().trim().is_empty() && auth.token_file.is_none() => invalid(
                "http_api_auth.token",
                "PROXY_HTTP_API_AUTH_TOKEN (or PROXY_HTTP_API_AUTH_TOKEN_FILE) is required with bearer authentication",
            ),
            "bearer" => Ok(()),
            _ => invalid(
                "http_api_auth.type",
                "srs-proxy only supports bearer authentication (PROXY_HTTP_API_AUTH_TYPE=bearer)",
            ),
        }
    }

    /// Reads the API token from `http_api_auth.token_file` when no token
    /// is given directly. A token is trimmed wherever it comes from, as the
    /// presented one is (a Secret made from a file often ends in a newline).
    fn load_token_file(&mut self) -> Result<(), ConfigError> {
        let auth = &mut self.http_api_auth;
        let given = auth.token.expose();
        if given.trim() != given {
            auth.token = Secret(given.trim().to_string());
        }
        let Some(path) = auth
            .token_file
            .as_ref()
            .filter(|_| auth.enabled && auth.token.is_empty())
        else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "http_api_auth.token_file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                key: "http_api_auth.token_file",
                reason: format!("{} is empty", path.display()),
            });
        }
        auth.token = Secret(token.to_string());
        Ok(())
    }

    /// Whether the register API takes heartbeats, given whether Kubernetes
    /// discovery is watching a cluster (`auto`: only when it is not).
    pub fn register_enabled(&self, discovery_watching: bool) -> bool {
        match self.register.enabled {
            RegisterMode::On => true,
            RegisterMode::Off => false,
            RegisterMode::Auto => !discovery_watching,
        }
    }

    /// The origins configured statically (default backend and `origins:`).
    pub fn static_origins(&self) -> Vec<Origin> {
        let mut out: Vec<Origin> = self.origins.iter().map(StaticOrigin::to_origin).collect();
        let b = &self.default_backend;
        if b.enabled {
            out.push(Origin {
                id: "default-backend".into(),
                ip: b.ip.as_str().into(),
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
                registered_by: None,
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
    // Naming a Service is asking to follow it: PROXY_K8S_SERVICE alone
    // selects service discovery rather than being silently ignored.
    if config.kubernetes.discovery == DiscoveryMode::Off && !config.kubernetes.service.is_empty() {
        config.kubernetes.discovery = DiscoveryMode::Service;
    }
    config.validate()?;
    config.load_token_file()?;
    Ok(config)
}

/// The config with secrets masked, for printing (`--check-config`, logs):
/// the Redis password, the password in a Redis URL and the API token
/// become `***`.
pub fn redacted(config: &Config) -> Config {
    let mut shown = config.clone();
    if !shown.redis.password.is_empty() {
        shown.redis.password = "***".into();
    }
    shown.redis.url = redact_url(&shown.redis.url);
    if !shown.http_api_auth.token.is_empty() {
        shown.http_api_auth.token = Secret("***".into());
    }
    shown
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
        assert_eq!(&*o[0].id, "10.0.0.1:1935");
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
        let err = load(
            None,
            &env(&[("PROXY_K8S_DISCOVERY", "originpool"), ("PROXY_K8S_SERVICE", "srs")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("kubernetes.service"), "{err}");
    }

    #[test]
    fn naming_a_service_selects_service_discovery() {
        let c = load(None, &env(&[("PROXY_K8S_SERVICE", "srs-origin")]), &[]).unwrap();
        assert_eq!(c.kubernetes.discovery, DiscoveryMode::Service);
        assert_eq!(c.kubernetes.service, "srs-origin");
    }

    #[test]
    fn out_of_range_durations_name_key_and_value() {
        for (var, value, key) in [
            ("PROXY_STREAM_TTL", "99999999999999999999h", "stream_ttl"),
            ("PROXY_STREAM_TTL", "18446744073709551615", "stream_ttl"),
            ("PROXY_REDIS_TIMEOUT", "400000h", "redis.timeout"),
        ] {
            let err = load(None, &env(&[(var, value)]), &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_token_file_is_read_once_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  abc\n").unwrap();
        let path = file.to_str().unwrap();
        fn with(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
            let mut pairs = vec![
                ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
                ("PROXY_HTTP_API_AUTH_TYPE", "bearer"),
            ];
            pairs.extend_from_slice(extra);
            env(&pairs)
        }
        let c = load(None, &with(&[("PROXY_HTTP_API_AUTH_TOKEN_FILE", path)]), &[]).unwrap();
        assert_eq!(c.http_api_auth.token.expose(), "abc");
        let c = load(
            None,
            &with(&[
                ("PROXY_HTTP_API_AUTH_TOKEN_FILE", path),
                ("PROXY_HTTP_API_AUTH_TOKEN", "direct"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.http_api_auth.token.expose(), "direct", "a token given directly wins");
        // Trimmed as the presented token is; blank means "read the file".
        for (given, expect) in [("direct\n", "direct"), ("  ", "abc")] {
            let c = load(
                None,
                &with(&[
                    ("PROXY_HTTP_API_AUTH_TOKEN_FILE", path),
                    ("PROXY_HTTP_API_AUTH_TOKEN", given),
                ]),
                &[],
            )
            .unwrap();
            assert_eq!(c.http_api_auth.token.expose(), expect, "{given:?}");
        }
        std::fs::write(&file, "\n").unwrap();
        let err = load(None, &with(&[("PROXY_HTTP_API_AUTH_TOKEN_FILE", path)]), &[]).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = load(None, &env(&[("PROXY_HTTP_API_AUTH_METRICS", "on")]), &[]).unwrap_err();
        assert!(err.to_string().contains("http_api_auth.metrics"), "{err}");
        assert!(!format!("{:?}", redacted(&c)).contains("direct"));
    }

    #[test]
    fn registration_is_off_under_kubernetes_discovery_unless_enabled() {
        let c = load(None, &env(&[]), &[]).unwrap();
        assert!(c.register_enabled(false));
        assert!(!c.register_enabled(true));
        let c = load(None, &env(&[("PROXY_REGISTER_ENABLED", "on")]), &[]).unwrap();
        assert!(c.register_enabled(true));
        let c = load(None, &env(&[("PROXY_REGISTER_ENABLED", "off")]), &[]).unwrap();
        assert!(!c.register_enabled(false));
        let c = Config::from_yaml_str("register:\n  enabled: on\n  allow_cidrs: 10.0.0.0/8\n").unwrap();
        assert_eq!(c.register.enabled, RegisterMode::On);
        assert!(c.register.allow_cidrs.contains("10.1.1.1".parse().unwrap()));
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
