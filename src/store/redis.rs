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
//! | `srs-proxy:{routing}:streams` | zset | stream → expiry: the index `list_streams` reads |
//! | `srs-proxy:{routing}:stream:<vhost/app/stream>` | hash | `origin`, `since`, `key`; expires with the mapping |
//! | `srs-proxy:{routing}:origin-streams:<id>` | zset | stream → expiry: the origin's load for least-streams |
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
//!   that one call; the proxy never reads then writes.
//! * Live origins are a range of the `origins` zset by score, filtered
//!   against the server's clock: no KEYS/SCAN, and an expired origin is never
//!   returned even before [`RedisStore::sweep`] prunes it and announces it.
//! * Stream mappings and sessions are keys with a TTL that use extends; the
//!   index zsets are trimmed by score and expire with their last member. An
//!   idle store keeps nothing but origin registrations.
//! * Removals and expiries are published on `origin-gone`; every replica
//!   relays them to [`RedisStore::subscribe_gone`], so relays to a dead origin
//!   end at once on all of them. They are also remembered in `gone`, so a
//!   refresh can tell an origin that went away (the relay ends) from one a
//!   Redis that restarted empty has not heard of yet (the relay goes on, and
//!   its mapping returns when the origin registers again).
//!
//! # When Redis is in trouble
//!
//! Commands fail at once while the connection is down (fred's per-command
//! fail-fast) and are bounded by `redis.timeout` otherwise; a connection that
//! stops answering is dropped. fred reconnects by itself with a short
//! backoff, and the subscriber re-subscribes on every reconnect. The caller
//! turns failures into 503s; nothing here retries a request.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{
    ClientLike, ClientState, Config as FredConfig, ErrorKind, EventInterface, LuaInterface, PubsubInterface,
    ReconnectPolicy, ServerConfig, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::Builder;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{Claim, ClaimOutcome, OriginGone, OriginStatus, Session, SessionKind, StoreError, StreamStatus};
use crate::balance::{salt_text, Candidate, Policy};
use crate::config::RedisConfig;
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;

const SCRIPT: &str = include_str!("redis.lua");

/// Names of the keys the script is given; the rest it derives from `ns`.
struct Keys {
    /// Prefix of every key: the configured prefix plus the hash tag.
    ns: String,
    fixed: [String; 3],
    gone_channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let ns = format!("{prefix}{{routing}}:");
        Self {
            fixed: [
                format!("{ns}origins"),
                format!("{ns}registrations"),
                format!("{ns}streams"),
            ],
            gone_channel: format!("{ns}origin-gone"),
            ns,
        }
    }
}

/// Redis-backed store. Clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands; fred applies the configured timeout to each.
    client: fred::prelude::Client,
    /// A second connection for pub/sub only: a subscribed connection can
    /// run no other command.
    subscriber: fred::prelude::Client,
    keys: Keys,
    script_sha: String,
    timeout: Duration,
    gone: broadcast::Sender<OriginGone>,
    /// Relays `origin-gone` messages and logs connection changes.
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            });
        }
    }
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
    Ok(fred)
}

fn unavailable(e: fred::error::Error, timeout: Duration) -> StoreError {
    StoreError::Unavailable(match e.kind() {
        ErrorKind::Canceled => "redis connection lost".to_string(),
        ErrorKind::Timeout => format!("redis did not answer within {timeout:?}"),
        _ => format!("redis: {}", e.details()),
    })
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

impl RedisStore {
    /// Connects in the background: returns at once (after at most
    /// `timeout` spent waiting for a first connection), so the proxy starts
    /// and reports not-ready while Redis is away.
    pub async fn connect(config: &RedisConfig) -> Result<Self, String> {
        let timeout = config.timeout;
        let client = Builder::from_config(fred_config(config)?)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                // A command caught by a dropped connection fails now rather
                // than waiting for the reconnect to be sent again.
                c.max_command_attempts = 1;
                // A connection that leaves a command unanswered this long
                // is dropped and re-made, so a hung Redis fails fast too.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(timeout * 2),
                    interval: (timeout / 2).max(Duration::from_millis(50)),
                };
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            // Unlimited attempts, 100 ms doubling to 1 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1000, 2))
            .build()
            .map_err(|e| e.details().to_string())?;
        let subscriber = client.clone_new();
        let keys = Keys::new(&config.prefix);
        let gone = broadcast::channel(256).0;
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        // Receivers exist before the first connection so it is not missed.
        let listener = tokio::spawn(listen(
            client.clone(),
            subscriber.clone(),
            keys.gone_channel.clone(),
            gone.clone(),
            subscribed_tx,
        ));
        client.connect();
        subscriber.connect();
        let store = Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                subscriber,
                keys,
                script_sha: fred::util::sha1_hash(SCRIPT),
                timeout,
                gone,
                listener,
            }),
        };
        // Ready means commands work and removals are heard.
        let ready = async {
            client.wait_for_connect().await?;
            let _ = subscribed.wait_for(|s| *s).await;
            Ok::<(), fred::error::Error>(())
        };
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "redis not reachable yet; retrying in the background"),
            Err(_) => tracing::warn!("redis not reachable yet; retrying in the background"),
        }
        Ok(store)
    }

    /// Every key of this store starts with this.
    pub fn namespace(&self) -> &str {
        &self.inner.keys.ns
    }

    /// Fails at once while the connection is down, instead of queueing
    /// behind reconnects. (fred's own per-command fail-fast does not reach
    /// EVALSHA: `WithOptions` lacks the Lua interface.)
    fn connected(&self) -> Result<(), StoreError> {
        match self.inner.client.state() {
            ClientState::Connected => Ok(()),
            _ => Err(StoreError::Unavailable("redis is not connected (reconnecting)".into())),
        }
    }

    /// Runs one operation of the script.
    async fn run<R: fred::types::FromValue>(&self, op: &str, args: Vec<String>) -> Result<R, StoreError> {
        self.connected()?;
        let inner = &self.inner;
        let keys = inner.keys.fixed.to_vec();
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(op.to_string());
        argv.push(inner.keys.ns.clone());
        argv.extend(args);
        let result = match inner
            .client
            .evalsha(inner.script_sha.as_str(), keys.clone(), argv.clone())
            .await
        {
            // Redis restarted or its script cache was flushed: EVAL runs
            // the script and caches it again, in the same round trip.
            Err(e) if e.details().starts_with("NOSCRIPT") => inner.client.eval(SCRIPT, keys, argv).await,
            r => r,
        };
        result.map_err(|e| unavailable(e, inner.timeout))
    }

    pub async fn upsert_origin(&self, origin: Origin, ttl: Option<Duration>) -> Result<(), StoreError> {
        let json = serde_json::to_string(&origin).map_err(|e| corrupt("origin", e))?;
        let ttl = ttl.map(millis).unwrap_or_default();
        self.run::<i64>("upsert_origin", vec![origin.id, json, ttl]).await?;
        Ok(())
    }

    pub async fn remove_origin(&self, id: &str) -> Result<bool, StoreError> {
        // Announced through the channel, to this replica as to the others.
        let removed: i64 = self.run("remove_origin", vec![id.to_string()]).await?;
        Ok(removed == 1)
    }

    pub async fn list_origins(&self) -> Result<Vec<OriginStatus>, StoreError> {
        let reply: Vec<Value> = self.run("list_origins", Vec::new()).await?;
        let mut out = reply
            .chunks_exact(3)
            .map(|row| {
                let expires_ms = int(&row[2])?;
                Ok(OriginStatus {
                    origin: origin_from_json(&text(&row[0])?)?,
                    streams: u32::try_from(int(&row[1])?).unwrap_or(u32::MAX),
                    expires_in_secs: (expires_ms >= 0).then(|| secs(expires_ms)),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.origin.id.cmp(&b.origin.id));
        Ok(out)
    }

    pub async fn origin(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        let reply: Option<String> = self.run("origin", vec![id.to_string()]).await?;
        reply.as_deref().map(origin_from_json).transpose()
    }

    pub async fn claim(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
    ) -> Result<Claim, StoreError> {
        let key_json = serde_json::to_string(key).map_err(|e| corrupt("stream key", e))?;
        let args = vec![
            key.to_string(),
            key_json,
            millis(ttl),
            policy.as_str().to_string(),
            salt_text(rand::random()),
            // Empty: any origin; else the `ports` field it must have.
            protocol.map(|p| p.to_string()).unwrap_or_default(),
        ];
        let reply: Vec<String> = self.run("claim", args).await?;
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
        let reply: Option<String> = self.run("lookup", vec![key.to_string()]).await?;
        reply.as_deref().map(origin_from_json).transpose()
    }

    pub async fn refresh_stream(&self, key: &StreamKey, origin_id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key_json = serde_json::to_string(key).map_err(|e| corrupt("stream key", e))?;
        let args = vec![key.to_string(), key_json, origin_id.to_string(), millis(ttl)];
        Ok(self.run::<i64>("refresh", args).await? == 1)
    }

    pub async fn release_stream(&self, key: &StreamKey, origin_id: &str) -> Result<(), StoreError> {
        self.run::<i64>("release", vec![key.to_string(), origin_id.to_string()])
            .await?;
        Ok(())
    }

    pub async fn list_streams(&self) -> Result<Vec<StreamStatus>, StoreError> {
        let reply: Vec<Value> = self.run("list_streams", Vec::new()).await?;
        let mut out = reply
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
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn put_session(
        &self,
        kind: SessionKind,
        id: &str,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(|e| corrupt("session", e))?;
        let args = vec![kind.as_str().to_string(), id.to_string(), json, millis(ttl)];
        self.run::<i64>("put_session", args).await?;
        Ok(())
    }

    pub async fn touch_session(
        &self,
        kind: SessionKind,
        id: &str,
        ttl: Duration,
    ) -> Result<Option<Session>, StoreError> {
        let args = vec![kind.as_str().to_string(), id.to_string(), millis(ttl)];
        let reply: Option<String> = self.run("touch_session", args).await?;
        reply
            .map(|json| serde_json::from_str(&json).map_err(|e| corrupt("session", e)))
            .transpose()
    }

    pub async fn remove_session(&self, kind: SessionKind, id: &str) -> Result<(), StoreError> {
        let args = vec![kind.as_str().to_string(), id.to_string()];
        self.run::<i64>("remove_session", args).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.connected()?;
        let inner = &self.inner;
        inner
            .client
            .ping::<String>(None)
            .await
            .map(drop)
            .map_err(|e| unavailable(e, inner.timeout))
    }

    /// Prunes expired origins (announcing each on the channel) and trims
    /// the index sets; Redis itself expires mappings and sessions.
    pub async fn sweep(&self) -> Result<(), StoreError> {
        let expired: Vec<String> = self.run("sweep", Vec::new()).await?;
        for id in expired {
            tracing::info!(origin = %id, "origin registration expired");
        }
        Ok(())
    }

    pub fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        self.inner.gone.subscribe()
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
                c.origin.id.clone(),
                c.origin.weight.to_string(),
                c.origin.max_streams.to_string(),
                c.streams.to_string(),
            ]);
        }
        self.run("pick", args).await
    }
}

/// Relays `origin-gone` messages to local subscribers, re-subscribing on
/// every (re)connection, and logs connection changes once each.
async fn listen(
    client: fred::prelude::Client,
    subscriber: fred::prelude::Client,
    channel: String,
    gone: broadcast::Sender<OriginGone>,
    subscribed: watch::Sender<bool>,
) {
    let mut messages = subscriber.message_rx();
    let mut subscriber_connects = subscriber.reconnect_rx();
    let mut connects = client.reconnect_rx();
    let mut errors = client.error_rx();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            event = subscriber_connects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    match subscriber.subscribe(channel.as_str()).await {
                        Ok(()) => {
                            let _ = subscribed.send(true);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot subscribe to origin removals; relays notice at their next refresh"),
                    }
                }
                Err(RecvError::Closed) => return,
            },
            message = messages.recv() => match message {
                Ok(m) if *m.channel == *channel => {
                    if let Some(id) = m.value.as_string() {
                        let _ = gone.send(OriginGone { id });
                    }
                }
                // Missed messages: relays still notice at their next refresh.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = connects.recv() => match event {
                Ok(server) => {
                    tracing::info!(%server, "connected to redis");
                    last_error.clear();
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = errors.recv() => match event {
                Ok((e, _)) => {
                    let text = e.to_string();
                    if text != last_error {
                        tracing::warn!(error = %text, "redis connection failed; reconnecting");
                        last_error = text;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}
