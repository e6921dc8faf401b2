//! The embedded store: one proxy, no dependencies.
//!
//! All state sits behind one mutex held only for map operations (never
//! across an await), which makes every operation — a claim in particular —
//! atomic. Expiry uses `tokio::time::Instant`, so tests can pause time.
//! Expired entries are dropped whenever they are seen and by [`sweep`],
//! which also announces origins that expired.
//!
//! [`sweep`]: MemoryStore::sweep

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Claim, ClaimOutcome, OriginGone, OriginStatus, Session, SessionKind, StoreError, StreamStatus};
use crate::balance::{pick, Candidate, Policy};
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;

struct OriginEntry {
    origin: Origin,
    /// `None` for static origins.
    expires: Option<Instant>,
}

struct StreamEntry {
    origin_id: String,
    since: Instant,
    expires: Instant,
}

struct SessionEntry {
    session: Session,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    origins: HashMap<String, OriginEntry>,
    streams: HashMap<StreamKey, StreamEntry>,
    sessions: HashMap<(SessionKind, String), SessionEntry>,
}

impl Inner {
    fn origin_live(&self, id: &str, now: Instant) -> Option<&Origin> {
        self.origins
            .get(id)
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .map(|e| &e.origin)
    }

    fn stream_counts(&self, now: Instant) -> HashMap<&str, u32> {
        let mut counts = HashMap::new();
        for s in self.streams.values().filter(|s| s.expires > now) {
            *counts.entry(s.origin_id.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// In-process store. Clones share state.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    gone: broadcast::Sender<OriginGone>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            gone: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half
        // updated (every update is a single insert/remove), so the data is
        // still sound after poisoning.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upsert_origin(&self, origin: Origin, ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = ttl.map(|t| Instant::now() + t);
        self.lock()
            .origins
            .insert(origin.id.clone(), OriginEntry { origin, expires });
        Ok(())
    }

    pub fn remove_origin(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.lock().origins.remove(id).is_some();
        if removed {
            let _ = self.gone.send(OriginGone { id: id.to_string() });
        }
        Ok(removed)
    }

    pub fn list_origins(&self) -> Result<Vec<OriginStatus>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let counts = inner.stream_counts(now);
        let mut out: Vec<OriginStatus> = inner
            .origins
            .values()
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .map(|e| OriginStatus {
                streams: counts.get(e.origin.id.as_str()).copied().unwrap_or(0),
                expires_in_secs: e.expires.map(|t| (t - now).as_secs_f64()),
                origin: e.origin.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.origin.id.cmp(&b.origin.id));
        Ok(out)
    }

    pub fn origin(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        Ok(self.lock().origin_live(id, Instant::now()).cloned())
    }

    pub fn claim(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut outcome = ClaimOutcome::New;
        if let Some(entry) = inner.streams.get(key).filter(|s| s.expires > now) {
            if let Some(origin) = inner.origin_live(&entry.origin_id, now).cloned() {
                let entry = inner.streams.get_mut(key).expect("just read");
                entry.expires = now + ttl;
                return Ok(Claim::Origin(origin, ClaimOutcome::Hit));
            }
            outcome = ClaimOutcome::Failover;
        }
        let counts = inner.stream_counts(now);
        let live: Vec<&Origin> = inner
            .origins
            .values()
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .map(|e| &e.origin)
            .filter(|o| protocol.is_none_or(|p| o.serves(p)))
            .collect();
        let candidates: Vec<Candidate> = live
            .iter()
            .map(|origin| Candidate {
                origin,
                streams: counts.get(origin.id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let Some(chosen) = pick(policy, key, &candidates, rand::random()).cloned() else {
            return Ok(Claim::NoOrigin);
        };
        inner.streams.insert(
            key.clone(),
            StreamEntry {
                origin_id: chosen.id.clone(),
                since: now,
                expires: now + ttl,
            },
        );
        Ok(Claim::Origin(chosen, outcome))
    }

    pub fn lookup(&self, key: &StreamKey) -> Result<Option<Origin>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .streams
            .get(key)
            .filter(|s| s.expires > now)
            .and_then(|s| inner.origin_live(&s.origin_id, now))
            .cloned())
    }

    pub fn refresh_stream(&self, key: &StreamKey, origin_id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.origin_live(origin_id, now).is_none() {
            return Ok(false);
        }
        match inner.streams.get_mut(key) {
            Some(s) if s.origin_id == origin_id && s.expires > now => {
                s.expires = now + ttl;
                Ok(true)
            }
            // The mapping expired while the relay ran (e.g. a long pause in
            // refreshing) but nobody else took the stream: take it back.
            Some(s) if s.expires <= now => {
                *s = StreamEntry {
                    origin_id: origin_id.to_string(),
                    since: now,
                    expires: now + ttl,
                };
                Ok(true)
            }
            None => {
                inner.streams.insert(
                    key.clone(),
                    StreamEntry {
                        origin_id: origin_id.to_string(),
                        since: now,
                        expires: now + ttl,
                    },
                );
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    pub fn release_stream(&self, key: &StreamKey, origin_id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.streams.get(key).is_some_and(|s| s.origin_id == origin_id) {
            inner.streams.remove(key);
        }
        Ok(())
    }

    pub fn list_streams(&self) -> Result<Vec<StreamStatus>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<StreamStatus> = inner
            .streams
            .iter()
            .filter(|(_, s)| s.expires > now)
            .map(|(key, s)| StreamStatus {
                key: key.clone(),
                origin_id: s.origin_id.clone(),
                age_secs: (now - s.since).as_secs_f64(),
                expires_in_secs: (s.expires - now).as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn put_session(&self, kind: SessionKind, id: &str, session: &Session, ttl: Duration) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        self.lock().sessions.insert(
            (kind, id.to_string()),
            SessionEntry {
                session: session.clone(),
                expires,
            },
        );
        Ok(())
    }

    pub fn touch_session(&self, kind: SessionKind, id: &str, ttl: Duration) -> Result<Option<Session>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let key = (kind, id.to_string());
        match inner.sessions.get_mut(&key) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                Ok(Some(e.session.clone()))
            }
            Some(_) => {
                inner.sessions.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub fn remove_session(&self, kind: SessionKind, id: &str) -> Result<(), StoreError> {
        self.lock().sessions.remove(&(kind, id.to_string()));
        Ok(())
    }

    /// Drops everything expired and announces origins that expired.
    pub fn sweep(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        let expired: Vec<String> = {
            let mut inner = self.lock();
            inner.streams.retain(|_, s| s.expires > now);
            inner.sessions.retain(|_, s| s.expires > now);
            let expired: Vec<String> = inner
                .origins
                .iter()
                .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                inner.origins.remove(id);
            }
            expired
        };
        for id in expired {
            let _ = self.gone.send(OriginGone { id });
        }
        Ok(())
    }

    pub fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        self.gone.subscribe()
    }

    /// Number of entries of every kind, expired or not (to prove that
    /// nothing grows without bound).
    pub fn entry_count(&self) -> usize {
        let inner = self.lock();
        inner.origins.len() + inner.streams.len() + inner.sessions.len()
    }
}
