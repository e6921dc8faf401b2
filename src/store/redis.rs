//! The shared store: Redis (standalone, Sentinel or Cluster) through `fred`,
//! so every proxy replica agrees on which origin holds which stream.
//!
//! # Data model
//!
//! Every key starts with the configured prefix followed by the hash tag
//! `{routing}`, so in a Redis Cluster they all live in one slot and one
//! script can touch them together. With the default prefix:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `srs-proxy:{routing}:origins` | zset | origin id → expiry (ms, Redis clock; `inf` = static) |
//! | `srs-proxy:{routing}:registrations` | hash | origin id → `Origin` JSON |
//! | `srs-proxy:{routing}:policy` | hash | origin id → weight, stream limit, protocols served |
//! | `srs-proxy:{routing}:load` | hash | origin id → streams mapped to it |
//! | `srs-proxy:{routing}:room:<any\|rtmp\|http\|api\|srt\|rtc>` | zset | origin id → streams / weight, for live origins with room serving the protocol |
//! | `srs-proxy:{routing}:mappings` | hash | stream → origin id |
//! | `srs-proxy:{routing}:mapping-info` | hash | stream → when claimed, `StreamKey` JSON |
//! | `srs-proxy:{routing}:expiry` | zset | stream → expiry of its mapping |
//! | `srs-proxy:{routing}:session:<hls\|rtc>:<id>` | string | `Session` JSON; expires with the session |
//! | `srs-proxy:{routing}:gone` | zset | origin id → when it was removed or expired (kept 15 min) |
//! | `srs-proxy:{routing}:origin-gone` | channel | ids of origins removed or expired |
//!
//! # Guarantees
//!
//! * Every operation is one call of one Lua script (`redis.lua`, EVALSHA,
//!   EVAL when Redis lost its script cache): atomic on the server and one
//!   round trip. A claim finds a live mapping or places the stream with the
//!   policy (the same functions as [`crate::balance`]) and writes it, inside
//!   that one call; the proxy never reads then writes. Every key a call
//!   touches is declared, so calls stay correct while a cluster migrates
//!   the slot.
//! * No call walks every stream, and a claim reads only what its policy
//!   needs: the load of every origin is kept exact as mappings are made,
//!   released, fail over and expire (expired mappings are cleared from the
//!   `expiry` set as they fall due, a bounded batch per claim and the rest
//!   by [`RedisStore::sweep`]), and the origins with room are kept per
//!   protocol in sets ordered by load: `least-streams` reads the least
//!   loaded run by rank, `random` and `consistent-hash` read the ids and
//!   weights with room. Listing streams is paged (`HSCAN`).
//! * Live origins are a range of the `origins` zset by score, filtered
//!   against the server's clock: no KEYS/SCAN, and an expired origin is
//!   never returned; the first call that sees it expired forgets it and
//!   announces it.
//! * Removals and expiries are published on `origin-gone`; every replica
//!   relays them to [`RedisStore::subscribe_gone`], so relays to a dead origin
//!   end at once on all of them. They are also remembered in `gone`, so a
//!   refresh can tell an origin that went away (the relay ends) from one a
//!   Redis that restarted empty has not heard of yet (the relay goes on, and
//!   its mapping returns when the origin registers again).
//! * Sessions are keys with a TTL that use extends. An idle store (after
//!   its mappings expire and a sweep) keeps nothing but origin state.
//!
//! # When Redis is in trouble
//!
//! See [`connection`]: calls fail at once while the connection to the
//! primary is down and are bounded by `redis.timeout` otherwise; the
//! connection follows a Sentinel or Cluster failover by itself. The caller
//! turns failures into 503s; nothing here retries a request.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Config as FredConfig, ServerConfig, Value};

use self::connection::{Connection, Supervisor};
use super::{
    Claim, ClaimOutcome, HealthChange, HealthRules, OriginGone, OriginStatus, Session, SessionKind, StoreError,
    StreamPage, StreamStatus,
};
use crate::balance::{salt_text, Candidate, Policy};
use crate::config::RedisConfig;
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;
use tokio::sync::broadcast;

const SCRIPT: &str = include_str!("redis.lua");

/// The hash tag every key carries (so a cluster keeps them in one slot).
const HASH_TAG: &str = "routing";

/// The room sets, in the order the script declares them (then one per
/// protocol, named as `Protocol` displays it).
const ROOMS: [&str; 6] = ["any", "rtmp", "http", "api", "srt", "rtc"];

/// Expired mappings one sweep call clears; a sweep repeats the call until
/// less than this is left.
const SWEEP_BATCH: usize = 1000;

/// Names of the keys every call declares.
struct Keys {
    /// Prefix of every key: the configured prefix plus the hash tag.
    ns: String,
    /// `origins` … `probe-turns`, in the script's `KEYS` order.
    fixed: Vec<String>,
    gone_channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let ns = format!("{prefix}{{{HASH_TAG}}}:");
        let mut fixed: Vec<String> = [
            "origins",
            "registrations",
            "policy",
            "load",
            "mappings",
            "mapping-info",
            "expiry",
            "gone",
        ]
        .iter()
        .map(|k| format!("{ns}{k}"))
        .collect();
        fixed.extend(ROOMS.iter().map(|p| format!("{ns}room:{p}")));
        fixed.extend(["health", "probe-turns"].iter().map(|k| format!("{ns}{k}")));
        Self {
            fixed,
            gone_channel: format!("{ns}origin-gone"),
            ns,
        }
    }

    fn session(&self, kind: SessionKind, id: &str) -> String {
        format!("{}session:{}:{id}", self.ns, kind.as_str())
    }
}

/// Redis-backed store. Clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    keys: Keys,
    script_sha: String,
    /// Keeps a cluster connection on the slot's primary; ends with the
    /// store.
    _supervisor: Supervisor,
}

/// The fred configuration for `config`: from the URL when one is set, else
/// host/port/password/db. Fails on a URL fred cannot read.
pub fn fred_config(config: &RedisConfig) -> Result<FredConfig, String> {
    let mut fred = if config.url.is_empty() {
        FredConfig {
            server: ServerConfig::new_centralized(config.host.as_str(), config.port),
            password: (!config.password.is_empty()).then(|| config.password.clone()),
            database: (config.db != 0).then_some(config.db),
            ..FredConfig::default()
        }
    } else {
        crate::config::check_redis_url(&config.url)?;
        FredConfig::from_url(&config.url).map_err(|e| e.details().to_string())?
    };
    // Keep trying when Redis is not there at start-up; readiness says so.
    fred.fail_fast = false;
    if config.uses_tls() {
        fred.tls = Some(tls_connector(config)?.into());
    }
    Ok(fred)
}

/// TLS for a `rediss://` URL: the system's roots or `tls_ca_file`, and the
/// client certificate when one is configured. Errors name the setting.
fn tls_connector(config: &RedisConfig) -> Result<fred::types::config::TlsConnector, String> {
    use fred::rustls::pki_types::pem::PemObject;
    use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use fred::rustls::{ClientConfig, RootCertStore};

    let read_certs = |key: &str, path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{key}: cannot read certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{key}: no certificate in {}", path.display()));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    match &config.tls_ca_file {
        Some(path) => {
            for cert in read_certs("redis.tls_ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("redis.tls_ca_file: {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = fred::rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system certificate rustls cannot use is skipped, as
                // every rustls client does.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(fred::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("redis TLS: {e}"))?
        .with_root_certificates(roots);
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("redis.tls_cert_file", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "redis.tls_key_file: cannot read a private key from {}: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("redis.tls_cert_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tls.into())
}

/// SHA-1 of the script as hex: what EVALSHA names it by.
fn script_sha() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, SCRIPT.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

fn origin_from_json(json: &str) -> Result<Origin, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt("origin registration", e))
}

fn text(v: &Value) -> Result<String, StoreError> {
    v.as_string().ok_or_else(|| corrupt("script reply", "expected text"))
}

fn int(v: &Value) -> Result<i64, StoreError> {
    v.as_i64().ok_or_else(|| corrupt("script reply", "expected an integer"))
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn health_change(reply: i64) -> HealthChange {
    match reply {
        1 => HealthChange::Unhealthy,
        2 => HealthChange::Healthy,
        _ => HealthChange::Unchanged,
    }
}

/// What the script keeps of an origin for the policies:
/// `<weight> <max streams> <protocol>,<protocol>...`.
fn policy_entry(origin: &Origin) -> String {
    let served: Vec<String> = Protocol::ALL
        .iter()
        .filter(|p| origin.serves(**p))
        .map(|p| p.to_string())
        .collect();
    format!("{} {} {}", origin.weight.max(1), origin.max_streams, served.join(","))
}

impl RedisStore {
    /// Connects in the background: returns at once (after at most
    /// `timeout` spent waiting for a first connection), so the proxy starts
    /// and reports not-ready while Redis is away.
    pub async fn connect(config: &RedisConfig) -> Result<Self, String> {
        let keys = Keys::new(&config.prefix);
        let gone = broadcast::channel(256).0;
        let (connection, supervisor) = Connection::connect(
            fred_config(config)?,
            config.timeout,
            HASH_TAG,
            keys.gone_channel.clone(),
            gone,
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                keys,
                script_sha: script_sha(),
                _supervisor: supervisor,
            }),
        })
    }

    /// Every key of this store starts with this.
    pub fn namespace(&self) -> &str {
        &self.inner.keys.ns
    }

    /// Runs one operation of the script; `session` is the session key the
    /// operation touches, if any.
    async fn run<R: fred::types::FromValue>(
        &self,
        op: &str,
        session: Option<String>,
        args: Vec<String>,
    ) -> Result<R, StoreError> {
        let inner = &self.inner;
        let mut keys = inner.keys.fixed.clone();
        keys.extend(session);
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(op.to_string());
        argv.push(inner.keys.gone_channel.clone());
        argv.extend(args);
        let value = inner.connection.eval(&inner.script_sha, SCRIPT, keys, argv).await?;
        R::from_value(value).map_err(|e| corrupt(op, e))
    }

    pub async fn upsert_origin(&self, origin: Origin, ttl: Option<Duration>) -> Result<(), StoreError> {
        let json = serde_json::to_string(&origin).map_err(|e| corrupt("origin", e))?;
        let ttl = ttl.map(millis).unwrap_or_default();
        let policy = policy_entry(&origin);
        self.run::<i64>("upsert_origin", None, vec![origin.id.to_string(), json, ttl, policy])
            .await?;
        Ok(())
    }

    pub async fn remove_origin(&self, id: &str) -> Result<bool, StoreError> {
        // Announced through the channel, to this replica as to the others.
        let removed: i64 = self.run("remove_origin", None, vec![id.to_string()]).await?;
        Ok(removed == 1)
    }

    pub async fn list_origins(&self) -> Result<Vec<OriginStatus>, StoreError> {
        let reply: Vec<Value> = self.run("list_origins", None, Vec::new()).await?;
        let mut out = reply
            .chunks_exact(6)
            .map(|row| {
                let expires_ms = int(&row[2])?;
                let since_ms = int(&row[4])?;
                let last_error = text(&row[5])?;
                Ok(OriginStatus {
                    origin: origin_from_json(&text(&row[0])?)?,
                    streams: u32::try_from(int(&row[1])?).unwrap_or(u32::MAX),
                    expires_in_secs: (expires_ms >= 0).then(|| secs(expires_ms)),
                    healthy: int(&row[3])? == 1,
                    last_error: (!last_error.is_empty()).then_some(last_error),
                    since: (since_ms >= 0).then(|| secs(since_ms)),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.origin.id.cmp(&b.origin.id));
        Ok(out)
    }

    pub async fn origin(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        let reply: Option<String> = self.run("origin", None, vec![id.to_string()]).await?;
        reply.as_deref().map(origin_from_json).transpose()
    }

    pub async fn registration(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        let reply: Option<String> = self.run("registration", None, vec![id.to_string()]).await?;
        reply.as_deref().map(origin_from_json).transpose()
    }

    pub async fn claim(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
        salt: u64,
    ) -> Result<Claim, StoreError> {
        let key_json = serde_json::to_string(key).map_err(|e| corrupt("stream key", e))?;
        let args = vec![
            key.to_string(),
            key_json,
            millis(ttl),
            policy.as_str().to_string(),
            salt_text(salt),
            // Empty: any origin; else the room set of that protocol.
            protocol.map(|p| p.to_string()).unwrap_or_default(),
        ];
        let reply: Vec<String> = self.run("claim", None, args).await?;
        let outcome = match reply.first().map(String::as_str) {
            Some("none") => return Ok(Claim::NoOrigin),
            Some("hit") => ClaimOutcome::Hit,
            Some("new") => ClaimOutcome::New,
            Some("failover") => ClaimOutcome::Failover,
            other => return Err(corrupt("claim reply", format!("{other:?}"))),
        };
        let json = reply.get(1).ok_or_else(|| corrupt("claim reply", "no origin"))?;
        Ok(Claim::Origin(origin_from_json(json)?, outcome))
    }

    pub async fn lookup(&self, key: &StreamKey) -> Result<Option<Origin>, StoreError> {
        let reply: Option<String> = self.run("lookup", None, vec![key.to_string()]).await?;
        reply.as_deref().map(origin_from_json).transpose()
    }

    pub async fn refresh_stream(&self, key: &StreamKey, origin_id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key_json = serde_json::to_string(key).map_err(|e| corrupt("stream key", e))?;
        let args = vec![key.to_string(), key_json, origin_id.to_string(), millis(ttl)];
        Ok(self.run::<i64>("refresh", None, args).await? == 1)
    }

    pub async fn release_stream(&self, key: &StreamKey, origin_id: &str) -> Result<(), StoreError> {
        self.run::<i64>("release", None, vec![key.to_string(), origin_id.to_string()])
            .await?;
        Ok(())
    }

    /// One `HSCAN` step over the mappings: about `limit` of them, in no
    /// particular order (a mapping present for the whole listing is listed
    /// at least once).
    pub async fn list_streams(&self, cursor: Option<&str>, limit: usize) -> Result<StreamPage, StoreError> {
        let cursor = match cursor {
            Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && c != "0" => c.to_string(),
            Some(_) => return Err(StoreError::BadCursor),
            None => "0".to_string(),
        };
        let reply: Vec<Value> = self
            .run("list_streams", None, vec![cursor, limit.max(1).to_string()])
            .await?;
        let (next, rows) = reply
            .split_first()
            .ok_or_else(|| corrupt("list_streams", "empty reply"))?;
        let next = text(next)?;
        let mut streams = rows
            .chunks_exact(4)
            .map(|row| {
                Ok(StreamStatus {
                    key: serde_json::from_str(&text(&row[0])?).map_err(|e| corrupt("stream key", e))?,
                    origin_id: text(&row[1])?,
                    age_secs: secs(int(&row[2])?.max(0)),
                    expires_in_secs: secs(int(&row[3])?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        streams.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(StreamPage {
            streams,
            next: (next != "0").then_some(next),
        })
    }

    pub async fn put_session(
        &self,
        kind: SessionKind,
        id: &str,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(|e| corrupt("session", e))?;
        let key = self.inner.keys.session(kind, id);
        self.run::<i64>("put_session", Some(key), vec![json, millis(ttl)])
            .await?;
        Ok(())
    }

    pub async fn touch_session(
        &self,
        kind: SessionKind,
        id: &str,
        ttl: Duration,
    ) -> Result<Option<Session>, StoreError> {
        let key = self.inner.keys.session(kind, id);
        let reply: Option<String> = self.run("touch_session", Some(key), vec![millis(ttl)]).await?;
        reply
            .map(|json| serde_json::from_str(&json).map_err(|e| corrupt("session", e)))
            .transpose()
    }

    pub async fn remove_session(&self, kind: SessionKind, id: &str) -> Result<(), StoreError> {
        let key = self.inner.keys.session(kind, id);
        self.run::<i64>("remove_session", Some(key), Vec::new()).await?;
        Ok(())
    }

    pub async fn report_failure(&self, id: &str, reason: &str) -> Result<HealthChange, StoreError> {
        let changed: i64 = self
            .run("report_failure", None, vec![id.to_string(), reason.to_string()])
            .await?;
        Ok(health_change(changed))
    }

    pub async fn record_probe(
        &self,
        id: &str,
        result: Result<(), String>,
        rules: HealthRules,
    ) -> Result<HealthChange, StoreError> {
        let (ok, reason) = match result {
            Ok(()) => ("1", String::new()),
            Err(reason) => ("0", reason),
        };
        let args = vec![
            id.to_string(),
            ok.to_string(),
            reason,
            rules.failures.max(1).to_string(),
            rules.successes.max(1).to_string(),
        ];
        Ok(health_change(self.run("record_probe", None, args).await?))
    }

    pub async fn probe_turns(&self, ids: &[String], prober: &str, hold: Duration) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![millis(hold), prober.to_string()];
        args.extend(ids.iter().cloned());
        self.run("probe_turns", None, args).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner.connection.ping().await
    }

    /// Forgets expired origins (announcing each on the channel) and clears
    /// expired mappings, a batch per call, until none is left.
    pub async fn sweep(&self) -> Result<(), StoreError> {
        loop {
            let reply: Vec<Value> = self.run("sweep", None, vec![SWEEP_BATCH.to_string()]).await?;
            let (cleared, expired) = reply.split_first().ok_or_else(|| corrupt("sweep", "empty reply"))?;
            for id in expired {
                tracing::info!(origin = %text(id)?, "origin registration expired");
            }
            if usize::try_from(int(cleared)?).unwrap_or(0) < SWEEP_BATCH {
                return Ok(());
            }
        }
    }

    pub fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        self.inner.connection.subscribe_gone()
    }

    /// The script's policy alone, on given candidates, touching no key:
    /// how tests hold the script to [`crate::balance::pick`].
    pub async fn pick_in_script(
        &self,
        policy: Policy,
        key: &StreamKey,
        candidates: &[Candidate<'_>],
        salt: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut args = vec![policy.as_str().to_string(), key.to_string(), salt_text(salt)];
        for c in candidates {
            args.extend([
                c.origin.id.to_string(),
                c.origin.weight.to_string(),
                c.origin.max_streams.to_string(),
                c.streams.to_string(),
            ]);
        }
        self.run("pick", None, args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_named_by_its_sha1() {
        assert_eq!(script_sha().len(), 40);
        // SHA-1 of the empty string, to pin the encoding.
        let empty = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"");
        let hex: String = empty.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn every_key_shares_the_hash_tag() {
        let keys = Keys::new("p:");
        for k in keys.fixed.iter().chain([&keys.session(SessionKind::Hls, "x")]) {
            assert!(k.starts_with("p:{routing}:"), "{k}");
        }
        assert_eq!(keys.fixed.len(), 16, "the script declares 16 keys");
    }

    #[test]
    fn room_sets_are_named_as_protocols_display() {
        let names: Vec<String> = Protocol::ALL.iter().map(|p| p.to_string()).collect();
        assert_eq!(ROOMS[1..], names);
    }

    #[test]
    fn policy_entries_name_the_protocols_served() {
        let origin = Origin {
            id: "a".into(),
            ip: "10.0.0.1".into(),
            ports: crate::origin::Ports {
                rtmp: Some(1935),
                srt: Some(10080),
                ..Default::default()
            },
            source: crate::origin::OriginSource::Static,
            weight: 0,
            max_streams: 7,
            pool: None,
            registered_by: None,
        };
        assert_eq!(policy_entry(&origin), "1 7 rtmp,srt");
    }
}
