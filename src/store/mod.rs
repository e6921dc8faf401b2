//! Routing state: live origins, stream claims and routing sessions.
//!
//! One contract, two implementations that pass one conformance suite
//! (`tests/store_conformance.rs`): [`memory`] for a single proxy and
//! [`redis`] shared by every replica, which then all agree on which origin
//! holds which stream.
//! A claim is one atomic operation inside the store, never a read followed
//! by a write from the proxy. Everything carries a TTL: origins (unless
//! static), stream mappings and sessions disappear when nobody refreshes
//! them.
//!
//! The store knows nothing of protocols or sockets; callers hand it stream
//! keys and origins.

pub mod memory;
pub mod redis;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::balance::Policy;
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// What a client is told when the store fails; the error itself (which
/// may name the store's address) goes to the log only.
pub const STORE_UNAVAILABLE: &str = "store unavailable";

/// A store failure. Expected outcomes (no origin, unknown session) are
/// values, not errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backing service did not answer in time or at all.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backing service answered something this code cannot read.
    #[error("store returned bad data: {0}")]
    Corrupt(String),
    /// A listing cursor this store did not hand out.
    #[error("not a cursor of this store")]
    BadCursor,
}

impl StoreError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Corrupt(_) => "corrupt",
            Self::BadCursor => "bad_cursor",
        }
    }
}

/// How a claim was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimOutcome {
    /// The stream was already mapped to a live origin.
    Hit,
    /// The stream was new; the policy placed it.
    New,
    /// The stream was mapped to an origin that is gone; it was placed anew.
    Failover,
}

impl ClaimOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::New => "new",
            Self::Failover => "failover",
        }
    }
}

/// Result of [`Store::claim`].
#[derive(Debug, Clone)]
pub enum Claim {
    /// The stream is served by this origin.
    Origin(Origin, ClaimOutcome),
    /// No live origin has room for a new stream.
    NoOrigin,
}

/// A registered origin as listed by the store.
#[derive(Debug, Clone, Serialize)]
pub struct OriginStatus {
    #[serde(flatten)]
    pub origin: Origin,
    /// Streams currently mapped to it.
    pub streams: u32,
    /// Seconds until the registration expires; `None` for static origins.
    pub expires_in_secs: Option<f64>,
    /// Whether it answers: an unhealthy origin gets no streams and its
    /// mappings are re-claimed, though it stays registered.
    pub healthy: bool,
    /// Why it was last found failing (a connect or a probe), if ever.
    pub last_error: Option<String>,
    /// When it last became healthy or unhealthy (Unix seconds); `None`
    /// when it never changed.
    pub since: Option<f64>,
}

/// How probe results move an origin between healthy and unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    /// Consecutive failed probes that make a healthy origin unhealthy.
    pub failures: u32,
    /// Consecutive good probes that make an unhealthy origin healthy.
    pub successes: u32,
}

/// What a report about an origin's health changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing (the origin stayed as it was, or is not registered).
    Unchanged,
    /// It became unhealthy: announced as gone, its streams move.
    Unhealthy,
    /// It became healthy again: it takes new streams.
    Healthy,
}

impl HealthChange {
    /// Label value for metrics (`to`), when something changed.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Unchanged => None,
            Self::Unhealthy => Some("unhealthy"),
            Self::Healthy => Some("healthy"),
        }
    }
}

/// A stream mapping as listed by the store.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub key: StreamKey,
    pub origin_id: String,
    /// Seconds since the stream was claimed.
    pub age_secs: f64,
    /// Seconds until the mapping expires unless refreshed.
    pub expires_in_secs: f64,
}

/// One page of [`Store::list_streams`].
#[derive(Debug, Clone, Serialize)]
pub struct StreamPage {
    /// In key order for the memory store; in no particular order for
    /// Redis (a page is one step of an `HSCAN`).
    pub streams: Vec<StreamStatus>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// What a routing session points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub key: StreamKey,
    pub origin_id: String,
    /// WebRTC only: the answer's ice-pwd, so whichever replica a client's
    /// UDP reaches can verify its STUN MESSAGE-INTEGRITY before binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_pwd: Option<String>,
}

/// Kinds of routing sessions, each its own namespace of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionKind {
    /// HLS: the `spbhid` token in playlist and segment URLs.
    Hls,
    /// WebRTC: the ICE username fragment.
    Rtc,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hls => "hls",
            Self::Rtc => "rtc",
        }
    }
}

/// Sent when an origin stops being live (removed or expired), so relays to
/// it can end at once instead of at their next refresh.
#[derive(Debug, Clone)]
pub struct OriginGone {
    pub id: String,
}

/// The store handle: cheap to clone, shared by every task.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

// Redis futures are boxed: inline, every store call's future would be as
// large as the largest Redis exchange (kilobytes), and the memory store's
// calls — a lock and a map lookup — would copy that much per request.
impl Store {
    /// Registers or refreshes an origin. `ttl: None` never expires (static).
    pub async fn upsert_origin(&self, origin: Origin, ttl: Option<Duration>) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.upsert_origin(origin, ttl),
            Self::Redis(s) => Box::pin(s.upsert_origin(origin, ttl)).await,
        }
    }

    /// Removes an origin; streams mapped to it are re-claimed on next use.
    pub async fn remove_origin(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => s.remove_origin(id),
            Self::Redis(s) => Box::pin(s.remove_origin(id)).await,
        }
    }

    /// Registered (unexpired) origins with their stream counts and health.
    pub async fn list_origins(&self) -> Result<Vec<OriginStatus>, StoreError> {
        match self {
            Self::Memory(s) => s.list_origins(),
            Self::Redis(s) => Box::pin(s.list_origins()).await,
        }
    }

    /// The origin with this id if it is live and healthy.
    pub async fn origin(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        match self {
            Self::Memory(s) => s.origin(id),
            Self::Redis(s) => Box::pin(s.origin(id)).await,
        }
    }

    /// The registration under this id while it lasts, healthy or not:
    /// who owns an id does not change while its origin is unhealthy.
    pub async fn registration(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        match self {
            Self::Memory(s) => s.registration(id),
            Self::Redis(s) => Box::pin(s.registration(id)).await,
        }
    }

    /// Returns the live origin serving `key`, or places the stream with
    /// `policy` and records the mapping for `ttl` — atomically.
    pub async fn claim(&self, key: &StreamKey, policy: Policy, ttl: Duration) -> Result<Claim, StoreError> {
        self.claim_for(key, policy, ttl, None).await
    }

    /// [`Store::claim`], placing a new stream only on origins that serve
    /// `protocol` (an RTMP publish never lands on an HTTP-only origin). An
    /// existing mapping wins whatever the protocol: the stream is there.
    pub async fn claim_for(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
    ) -> Result<Claim, StoreError> {
        self.claim_salted(key, policy, ttl, protocol, rand::random()).await
    }

    /// [`Store::claim_for`] with the policy's randomness given: the origin
    /// placed is [`crate::balance::pick`] over the live origins serving
    /// `protocol` (with their stream counts) and this salt. How tests hold
    /// the stores' indexed placement to the policy functions.
    pub async fn claim_salted(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
        salt: u64,
    ) -> Result<Claim, StoreError> {
        match self {
            Self::Memory(s) => s.claim(key, policy, ttl, protocol, salt),
            Self::Redis(s) => Box::pin(s.claim(key, policy, ttl, protocol, salt)).await,
        }
    }

    /// The live origin serving `key`, without placing it if unmapped.
    pub async fn lookup(&self, key: &StreamKey) -> Result<Option<Origin>, StoreError> {
        match self {
            Self::Memory(s) => s.lookup(key),
            Self::Redis(s) => Box::pin(s.lookup(key)).await,
        }
    }

    /// Extends the mapping of `key` to `origin_id` (re-creating it if it
    /// expired and nobody took the stream). `false` when the mapping points
    /// elsewhere or the origin was removed or expired: the relay must end.
    /// An origin a Redis that lost its data has not heard of is not gone.
    pub async fn refresh_stream(&self, key: &StreamKey, origin_id: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => s.refresh_stream(key, origin_id, ttl),
            Self::Redis(s) => Box::pin(s.refresh_stream(key, origin_id, ttl)).await,
        }
    }

    /// Drops the mapping of `key` if it still points at `origin_id`.
    pub async fn release_stream(&self, key: &StreamKey, origin_id: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.release_stream(key, origin_id),
            Self::Redis(s) => Box::pin(s.release_stream(key, origin_id)).await,
        }
    }

    /// Current stream mappings, `limit` (about, for Redis) at a time:
    /// `cursor` is the previous page's `next`, `None` for the first page.
    /// Each call costs the page, not every stream.
    pub async fn list_streams(&self, cursor: Option<&str>, limit: usize) -> Result<StreamPage, StoreError> {
        match self {
            Self::Memory(s) => s.list_streams(cursor, limit),
            Self::Redis(s) => Box::pin(s.list_streams(cursor, limit)).await,
        }
    }

    /// Records a routing session for `ttl` (the memory store keeps the
    /// value itself, no copy).
    pub async fn put_session(
        &self,
        kind: SessionKind,
        id: &str,
        session: Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.put_session(kind, id, session, ttl),
            Self::Redis(s) => Box::pin(s.put_session(kind, id, &session, ttl)).await,
        }
    }

    /// Reads a session and extends it by `ttl` (a session in use stays).
    pub async fn touch_session(
        &self,
        kind: SessionKind,
        id: &str,
        ttl: Duration,
    ) -> Result<Option<Session>, StoreError> {
        match self {
            Self::Memory(s) => s.touch_session(kind, id, ttl),
            Self::Redis(s) => Box::pin(s.touch_session(kind, id, ttl)).await,
        }
    }

    /// Forgets a session (a WebRTC session that ended). Unknown ids are
    /// not an error.
    pub async fn remove_session(&self, kind: SessionKind, id: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.remove_session(kind, id),
            Self::Redis(s) => Box::pin(s.remove_session(kind, id)).await,
        }
    }

    /// Marks an origin unhealthy at once (a connect to it failed): every
    /// replica stops placing streams on it, its mappings are re-claimed on
    /// their next request, and it is announced like a removal so relays to
    /// it end. `reason` is what `last_error` shows.
    pub async fn report_failure(&self, id: &str, reason: &str) -> Result<HealthChange, StoreError> {
        match self {
            Self::Memory(s) => s.report_failure(id, reason),
            Self::Redis(s) => Box::pin(s.report_failure(id, reason)).await,
        }
    }

    /// Records a probe of an origin (`Err` holds why it failed) and applies
    /// `rules`: consecutive failures make it unhealthy (as
    /// [`Store::report_failure`] does), consecutive successes healthy again.
    pub async fn record_probe(
        &self,
        id: &str,
        result: Result<(), String>,
        rules: HealthRules,
    ) -> Result<HealthChange, StoreError> {
        match self {
            Self::Memory(s) => s.record_probe(id, result, rules),
            Self::Redis(s) => Box::pin(s.record_probe(id, result, rules)).await,
        }
    }

    /// Of `ids`, the registered origins `prober` (one replica) is to probe
    /// now. An origin's turn stays with the prober that took it for as long
    /// as it asks again within `hold`; when it stops (it left, or stalled),
    /// whoever asks next takes it over.
    pub async fn probe_turns(&self, ids: &[String], prober: &str, hold: Duration) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Memory(s) => s.probe_turns(ids, prober, hold),
            Self::Redis(s) => Box::pin(s.probe_turns(ids, prober, hold)).await,
        }
    }

    /// Whether the store can serve requests now (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(s) => Box::pin(s.ping()).await,
        }
    }

    /// Housekeeping, run about once a second: drops what expired and
    /// announces origins that went away (see [`Store::subscribe_gone`]).
    pub async fn sweep(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.sweep(),
            Self::Redis(s) => Box::pin(s.sweep()).await,
        }
    }

    /// Origin removals and expiries, as they are noticed.
    pub fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        match self {
            Self::Memory(s) => s.subscribe_gone(),
            Self::Redis(s) => s.subscribe_gone(),
        }
    }

    /// Name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The futures of the request path's store calls do not carry a Redis
    /// exchange inline (a memory store call would copy it every time).
    #[test]
    fn store_call_futures_stay_small() {
        let store = Store::Memory(MemoryStore::new());
        let key = StreamKey::new("", "live", "a").unwrap();
        let session = Session {
            key: key.clone(),
            origin_id: "o".into(),
            ice_pwd: None,
        };
        let ttl = Duration::from_secs(1);
        let sizes = [
            std::mem::size_of_val(&store.claim(&key, crate::balance::Policy::Random, ttl)),
            std::mem::size_of_val(&store.lookup(&key)),
            std::mem::size_of_val(&store.origin("o")),
            std::mem::size_of_val(&store.put_session(SessionKind::Hls, "t", session.clone(), ttl)),
            std::mem::size_of_val(&store.touch_session(SessionKind::Hls, "t", ttl)),
        ];
        assert!(sizes.iter().all(|&n| n <= 512), "{sizes:?}");
    }
}
