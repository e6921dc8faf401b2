//! The `redis` section: how to reach the shared store, and how its URL is
//! checked and printed without its password.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::duration_serde;

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
    /// PEM CA certificates to trust instead of the system's, for a TLS
    /// (`rediss://`) Redis with a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (with `tls_key_file`), for a Redis that
    /// requires one (`tls-auth-clients yes`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
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
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl RedisConfig {
    /// Whether the URL asks for TLS (`rediss://`, `rediss-cluster://`, …).
    pub fn uses_tls(&self) -> bool {
        let scheme = self.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        scheme.is_some_and(|s| s.starts_with("rediss") || s.starts_with("valkeys"))
    }

    /// The TLS files make sense together: only with a TLS URL, and a client
    /// certificate with its key. Returns the key at fault and why.
    pub fn check_tls(&self) -> Result<(), (&'static str, String)> {
        let files = [
            ("redis.tls_ca_file", &self.tls_ca_file),
            ("redis.tls_cert_file", &self.tls_cert_file),
            ("redis.tls_key_file", &self.tls_key_file),
        ];
        if !self.uses_tls() {
            if let Some((key, _)) = files.iter().find(|(_, f)| f.is_some()) {
                return Err((key, "set, but redis.url is not a TLS URL (rediss://…)".into()));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err((
                "redis.tls_key_file",
                "redis.tls_cert_file is set without its key".into(),
            )),
            (None, Some(_)) => Err((
                "redis.tls_cert_file",
                "redis.tls_key_file is set without its certificate".into(),
            )),
            _ => Ok(()),
        }
    }
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

/// Schemes a Redis URL may have: standalone, Sentinel, Cluster, each with
/// TLS (`…s`), under Redis' and Valkey's names.
const REDIS_SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-sentinel",
    "rediss-sentinel",
    "redis-cluster",
    "rediss-cluster",
    "valkey",
    "valkeys",
    "valkey-sentinel",
    "valkeys-sentinel",
    "valkey-cluster",
    "valkeys-cluster",
];

/// Checks a Redis URL's shape: a known scheme, a host, a valid port, and a
/// service name for Sentinel. The reason never quotes the URL.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let scheme = parsed.scheme();
    if !REDIS_SCHEMES.contains(&scheme) {
        return Err("the scheme must be redis, rediss, redis-sentinel or redis-cluster (or rediss-…)".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if scheme.ends_with("-sentinel") && !parsed.query_pairs().any(|(k, _)| k == "sentinelServiceName") {
        return Err("a sentinel URL needs ?sentinelServiceName=<primary name>".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, redacted, Config};
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
        for bad in [
            "http://:hunter2@x",
            "redis://:hunter2@",
            "redis-sentinel://:hunter2@h:26379/0",
            "redis://:hunter2@h:99999",
        ] {
            let err = load(None, &env(&[("PROXY_REDIS_URL", bad)]), &[]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("redis.url") && !msg.contains("hunter2"), "{bad}: {msg}");
        }
    }

    #[test]
    fn tls_files_go_with_a_tls_url_and_a_certificate_with_its_key() {
        let tls = ("PROXY_REDIS_URL", "rediss://redis:6380");
        let ok = load(None, &env(&[tls, ("PROXY_REDIS_TLS_CA_FILE", "/ca.pem")]), &[]).unwrap();
        assert_eq!(ok.redis.tls_ca_file, Some(PathBuf::from("/ca.pem")));
        for (pairs, key) in [
            (
                vec![
                    ("PROXY_REDIS_URL", "redis://redis:6379"),
                    ("PROXY_REDIS_TLS_CA_FILE", "/ca.pem"),
                ],
                "redis.tls_ca_file",
            ),
            (vec![("PROXY_REDIS_TLS_CERT_FILE", "/c.pem")], "redis.tls_cert_file"),
            (vec![tls, ("PROXY_REDIS_TLS_CERT_FILE", "/c.pem")], "redis.tls_key_file"),
            (vec![tls, ("PROXY_REDIS_TLS_KEY_FILE", "/c.key")], "redis.tls_cert_file"),
        ] {
            let err = load(None, &env(&pairs), &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
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
}
