//! The embedded store: one proxy, no dependencies.
//!
//! All state sits behind one mutex held only for map operations (never
//! across an await), which makes every operation — a claim in particular —
//! atomic. Expiry uses `tokio::time::Instant`, so tests can pause time.
//!
//! # Cost
//!
//! No operation walks every stream or every origin to answer one request:
//!
//! * Every operation first drops what expired, from indexes ordered by
//!   expiry (amortised O(log n) per entry that expires), so the counts below
//!   are exact when a policy reads them.
//! * Each origin's stream count is kept as mappings are made, released,
//!   expire or fail over, and the origins with room for another stream are
//!   kept per protocol in a set ordered by [`load`] then id: the same order
//!   the Redis store keeps in its sorted sets. `least-streams` reads only the
//!   least loaded run of that set; `random` and `consistent-hash` hash every
//!   origin with room (rendezvous needs them all) but read nothing else.
//! * Stream mappings are kept ordered by key, so listing them is paged.
//!
//! [`load`]: crate::balance::load

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Claim, ClaimOutcome, HealthChange, HealthRules, OriginGone, OriginStatus, Session, SessionKind, StoreError,
    StreamPage, StreamStatus,
};
use crate::balance::{load, rendezvous, salt_text, tie_index, Policy};
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKey;

struct OriginEntry {
    origin: Origin,
    /// `None` for static origins.
    expires: Option<Instant>,
    /// Kept across re-registrations: a heartbeat does not make a dead
    /// origin healthy, probes do.
    health: Health,
}

/// Whether an origin answers, and the streaks that change that.
#[derive(Debug, Clone)]
struct Health {
    healthy: bool,
    /// When `healthy` last changed.
    since: Option<SystemTime>,
    /// Consecutive failed probes (while healthy).
    failures: u32,
    /// Consecutive good probes (while unhealthy).
    successes: u32,
    last_error: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: true,
            since: None,
            failures: 0,
            successes: 0,
            last_error: None,
        }
    }
}

impl Health {
    fn fail(&mut self, reason: &str, at_once: bool, rules: HealthRules) -> HealthChange {
        self.last_error = Some(reason.to_string());
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if self.healthy && (at_once || self.failures >= rules.failures) {
            self.healthy = false;
            self.since = Some(SystemTime::now());
            return HealthChange::Unhealthy;
        }
        HealthChange::Unchanged
    }

    fn succeed(&mut self, rules: HealthRules) -> HealthChange {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        if !self.healthy && self.successes >= rules.successes {
            self.healthy = true;
            self.successes = 0;
            self.since = Some(SystemTime::now());
            return HealthChange::Healthy;
        }
        HealthChange::Unchanged
    }
}

struct StreamEntry {
    origin_id: String,
    since: Instant,
    expires: Instant,
    /// Where `stream_expiry` files the stream: never after `expires`. A
    /// refresh moves only `expires` (no key copied, nothing refiled); when
    /// the filed time comes, expiry files the stream again at `expires`
    /// if that is still ahead.
    filed: Instant,
}

struct SessionEntry {
    session: Session,
    expires: Instant,
}

/// A [`load`] as a totally ordered key (loads are finite and not negative).
#[derive(Debug, Clone, Copy)]
struct Load(f64);

impl PartialEq for Load {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Load {}
impl PartialOrd for Load {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Load {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

const PROTOCOLS: [Protocol; 5] = Protocol::ALL;

/// Which room set answers a claim for `protocol` (0: any protocol).
fn room_index(protocol: Option<Protocol>) -> usize {
    match protocol {
        None => 0,
        Some(p) => {
            1 + PROTOCOLS
                .iter()
                .position(|q| *q == p)
                .expect("every protocol is listed")
        }
    }
}

/// Live origins with room for another stream, per protocol.
#[derive(Default)]
struct Rooms {
    /// Index 0: every such origin; then one set per [`PROTOCOLS`] entry
    /// with the origins serving it. Ordered by load, then id.
    sets: [BTreeSet<(Load, String)>; 6],
    /// The load each origin is filed under now, to take it out again.
    filed: HashMap<String, Load>,
}

#[derive(Default)]
struct Inner {
    origins: HashMap<String, OriginEntry>,
    /// Expiring origins by expiry, so expiry never scans every origin.
    origin_expiry: BTreeSet<(Instant, String)>,
    /// Ordered by key, so listing is paged.
    streams: BTreeMap<StreamKey, StreamEntry>,
    stream_expiry: BTreeSet<(Instant, StreamKey)>,
    /// Streams mapped to each origin (also to one that is gone, until its
    /// streams fail over or expire); absent means none.
    loads: HashMap<String, u32>,
    rooms: Rooms,
    sessions: HashMap<(SessionKind, String), SessionEntry>,
    session_expiry: BTreeSet<(Instant, SessionKind, String)>,
    /// Who probes each origin and until when (see `probe_turns`).
    probe_turns: HashMap<String, (String, Instant)>,
}

impl Inner {
    /// Drops everything that expired by `now`; returns the ids of origins
    /// that expired, to be announced once the lock is released.
    fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        // Each index is looked at in place: nothing is copied while nothing
        // is due (this runs on every store call).
        while self.origin_expiry.first().is_some_and(|(at, _)| *at <= now) {
            let (_, id) = self.origin_expiry.pop_first().expect("just seen");
            self.forget_origin(&id);
            gone.push(id);
        }
        while self.stream_expiry.first().is_some_and(|(at, _)| *at <= now) {
            let (_, key) = self.stream_expiry.pop_first().expect("just seen");
            match self.streams.get_mut(&key) {
                // Refreshed since it was filed: filed again, still alive.
                Some(entry) if entry.expires > now => {
                    entry.filed = entry.expires;
                    self.stream_expiry.insert((entry.expires, key));
                }
                _ => self.unmap(&key),
            }
        }
        while self.session_expiry.first().is_some_and(|(at, _, _)| *at <= now) {
            let (_, kind, id) = self.session_expiry.pop_first().expect("just seen");
            self.sessions.remove(&(kind, id));
        }
        gone
    }

    fn forget_origin(&mut self, id: &str) -> bool {
        let Some(entry) = self.origins.remove(id) else {
            return false;
        };
        if let Some(at) = entry.expires {
            self.origin_expiry.remove(&(at, id.to_string()));
        }
        self.probe_turns.remove(id);
        self.file_room(id);
        true
    }

    /// The origin with this id if it may serve streams: registered, not
    /// expired (expiry ran first) and healthy.
    fn usable(&self, id: &str) -> Option<&Origin> {
        self.origins.get(id).filter(|e| e.health.healthy).map(|e| &e.origin)
    }

    /// Files `id` in the room sets it belongs in now (none when it is gone
    /// or full).
    fn file_room(&mut self, id: &str) {
        if let Some(old) = self.rooms.filed.remove(id) {
            let entry = (old, id.to_string());
            for set in &mut self.rooms.sets {
                set.remove(&entry);
            }
        }
        let Some(OriginEntry { origin, health, .. }) = self.origins.get(id) else {
            return;
        };
        if !health.healthy {
            return;
        }
        let streams = self.loads.get(id).copied().unwrap_or(0);
        if origin.max_streams != 0 && streams >= origin.max_streams {
            return;
        }
        let l = Load(load(streams, origin.weight));
        self.rooms.sets[0].insert((l, id.to_string()));
        for p in PROTOCOLS {
            if origin.serves(p) {
                self.rooms.sets[room_index(Some(p))].insert((l, id.to_string()));
            }
        }
        self.rooms.filed.insert(id.to_string(), l);
    }

    fn add_load(&mut self, id: &str, delta: i64) {
        let n = i64::from(self.loads.get(id).copied().unwrap_or(0)) + delta;
        if n > 0 {
            self.loads.insert(id.to_string(), u32::try_from(n).unwrap_or(u32::MAX));
        } else {
            self.loads.remove(id);
        }
        self.file_room(id);
    }

    fn map(&mut self, key: &StreamKey, origin_id: &str, now: Instant, ttl: Duration) {
        self.unmap(key);
        let expires = now + ttl;
        self.streams.insert(
            key.clone(),
            StreamEntry {
                origin_id: origin_id.to_string(),
                since: now,
                expires,
                filed: expires,
            },
        );
        self.stream_expiry.insert((expires, key.clone()));
        self.add_load(origin_id, 1);
    }

    fn unmap(&mut self, key: &StreamKey) {
        if let Some(entry) = self.streams.remove(key) {
            self.stream_expiry.remove(&(entry.filed, key.clone()));
            self.add_load(&entry.origin_id, -1);
        }
    }

    /// Moves a stream's expiry to `expires`; refiled in the index only
    /// when that is earlier than where it is filed (see [`StreamEntry`]).
    fn touch(&mut self, key: &StreamKey, expires: Instant) {
        if let Some(entry) = self.streams.get_mut(key) {
            Self::extend(&mut self.stream_expiry, key, entry, expires);
        }
    }

    /// `key`'s entry now expires at `expires`, refiled if that is earlier
    /// than where it is filed.
    fn extend(
        stream_expiry: &mut BTreeSet<(Instant, StreamKey)>,
        key: &StreamKey,
        entry: &mut StreamEntry,
        expires: Instant,
    ) {
        entry.expires = expires;
        if expires < entry.filed {
            let old = std::mem::replace(&mut entry.filed, expires);
            stream_expiry.remove(&(old, key.clone()));
            stream_expiry.insert((expires, key.clone()));
        }
    }

    /// A claim of a mapped stream, in one look at the stream: its origin
    /// if usable (the mapping then extended to `expires`), `Some(None)`
    /// when the origin is not usable, `None` when the stream is not mapped.
    fn claim_mapped(&mut self, key: &StreamKey, expires: Instant) -> Option<Option<Origin>> {
        let Self {
            streams,
            origins,
            stream_expiry,
            ..
        } = self;
        let entry = streams.get_mut(key)?;
        let origin = origins
            .get(&entry.origin_id)
            .filter(|e| e.health.healthy)
            .map(|e| e.origin.clone());
        if origin.is_some() {
            Self::extend(stream_expiry, key, entry, expires);
        }
        Some(origin)
    }

    /// The policy's choice among the origins with room for `protocol`.
    fn choose(&self, policy: Policy, key: &StreamKey, protocol: Option<Protocol>, salt: u64) -> Option<String> {
        let set = &self.rooms.sets[room_index(protocol)];
        let weighted = || {
            set.iter()
                .map(|(_, id)| (id.as_str(), self.origins.get(id).map_or(1, |e| e.origin.weight)))
        };
        let chosen = match policy {
            Policy::LeastStreams => {
                let (least, _) = set.first()?;
                let ties = set.iter().take_while(|(l, _)| l == least).count();
                set.iter().nth(tie_index(salt, ties)).map(|(_, id)| id.as_str())
            }
            Policy::Random => rendezvous(&salt_text(salt), weighted()),
            Policy::ConsistentHash => rendezvous(&key.to_string(), weighted()),
        };
        chosen.map(str::to_string)
    }
}

/// A listing cursor: the last key listed, as hex of its JSON (opaque, and
/// safe in a URL as it is).
fn key_cursor(key: &StreamKey) -> Result<String, StoreError> {
    let json = serde_json::to_vec(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(json.iter().map(|b| format!("{b:02x}")).collect())
}

fn cursor_key(cursor: &str) -> Result<StreamKey, StoreError> {
    if cursor.len() % 2 != 0 || !cursor.is_ascii() {
        return Err(StoreError::BadCursor);
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| StoreError::BadCursor)?;
    serde_json::from_slice(&bytes).map_err(|_| StoreError::BadCursor)
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

/// The lock, with what expired dropped; announces expired origins when it
/// is released.
struct Locked<'a> {
    inner: MutexGuard<'a, Inner>,
    now: Instant,
    expired: Vec<String>,
    gone: &'a broadcast::Sender<OriginGone>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        for id in self.expired.drain(..) {
            tracing::info!(origin = %id, "origin registration expired");
            let _ = self.gone.send(OriginGone { id });
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            gone: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would leave the indexes half
        // updated; the store is then beyond repair, as any state would be.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let expired = inner.expire(now);
        Locked {
            inner,
            now,
            expired,
            gone: &self.gone,
        }
    }

    pub fn upsert_origin(&self, origin: Origin, ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let expires = ttl.map(|t| inner.now + t);
        let id = origin.id.to_string();
        let health = inner.origins.get(&id).map(|e| e.health.clone()).unwrap_or_default();
        let entry = OriginEntry {
            origin,
            expires,
            health,
        };
        if let Some(old) = inner.origins.insert(id.clone(), entry) {
            if let Some(at) = old.expires {
                inner.origin_expiry.remove(&(at, id.clone()));
            }
        }
        if let Some(at) = expires {
            inner.origin_expiry.insert((at, id.clone()));
        }
        inner.file_room(&id);
        Ok(())
    }

    pub fn remove_origin(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.lock().forget_origin(id);
        if removed {
            let _ = self.gone.send(OriginGone { id: id.to_string() });
        }
        Ok(removed)
    }

    pub fn list_origins(&self) -> Result<Vec<OriginStatus>, StoreError> {
        let inner = self.lock();
        let now = inner.now;
        let mut out: Vec<OriginStatus> = inner
            .origins
            .values()
            .map(|e| OriginStatus {
                streams: inner.loads.get(&*e.origin.id).copied().unwrap_or(0),
                expires_in_secs: e.expires.map(|t| (t - now).as_secs_f64()),
                origin: e.origin.clone(),
                healthy: e.health.healthy,
                last_error: e.health.last_error.clone(),
                since: e
                    .health
                    .since
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64()),
            })
            .collect();
        out.sort_by(|a, b| a.origin.id.cmp(&b.origin.id));
        Ok(out)
    }

    pub fn origin(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        Ok(self.lock().usable(id).cloned())
    }

    pub fn registration(&self, id: &str) -> Result<Option<Origin>, StoreError> {
        Ok(self.lock().origins.get(id).map(|e| e.origin.clone()))
    }

    pub fn claim(
        &self,
        key: &StreamKey,
        policy: Policy,
        ttl: Duration,
        protocol: Option<Protocol>,
        salt: u64,
    ) -> Result<Claim, StoreError> {
        let mut inner = self.lock();
        let now = inner.now;
        let mut outcome = ClaimOutcome::New;
        // The mapped origin, if any, and whether it is still usable.
        match inner.claim_mapped(key, now + ttl) {
            Some(Some(origin)) => return Ok(Claim::Origin(origin, ClaimOutcome::Hit)),
            Some(None) => {
                outcome = ClaimOutcome::Failover;
                inner.unmap(key);
            }
            None => {}
        }
        let Some(id) = inner.choose(policy, key, protocol, salt) else {
            return Ok(Claim::NoOrigin);
        };
        inner.map(key, &id, now, ttl);
        let origin = inner.origins[&id].origin.clone();
        Ok(Claim::Origin(origin, outcome))
    }

    pub fn lookup(&self, key: &StreamKey) -> Result<Option<Origin>, StoreError> {
        let inner = self.lock();
        Ok(inner.streams.get(key).and_then(|s| inner.usable(&s.origin_id)).cloned())
    }

    pub fn refresh_stream(&self, key: &StreamKey, origin_id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let now = inner.now;
        if inner.usable(origin_id).is_none() {
            return Ok(false);
        }
        match inner.streams.get(key) {
            Some(s) if s.origin_id == origin_id => {
                inner.touch(key, now + ttl);
                Ok(true)
            }
            // The mapping expired while the relay ran (e.g. a long pause in
            // refreshing) and nobody else took the stream: take it back.
            None => {
                inner.map(key, origin_id, now, ttl);
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    pub fn release_stream(&self, key: &StreamKey, origin_id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.streams.get(key).is_some_and(|s| s.origin_id == origin_id) {
            inner.unmap(key);
        }
        Ok(())
    }

    /// Up to `limit` mappings after `cursor` (a key as the previous page's
    /// `next` gave it), in key order.
    pub fn list_streams(&self, cursor: Option<&str>, limit: usize) -> Result<StreamPage, StoreError> {
        let after: Option<StreamKey> = cursor.map(cursor_key).transpose()?;
        let inner = self.lock();
        let now = inner.now;
        let range = match &after {
            Some(k) => inner.streams.range((Bound::Excluded(k), Bound::Unbounded)),
            None => inner.streams.range::<StreamKey, _>(..),
        };
        let mut streams = Vec::new();
        let mut more = false;
        for (key, s) in range {
            if streams.len() == limit.max(1) {
                more = true;
                break;
            }
            streams.push(StreamStatus {
                key: key.clone(),
                origin_id: s.origin_id.clone(),
                age_secs: (now - s.since).as_secs_f64(),
                expires_in_secs: (s.expires - now).as_secs_f64(),
            });
        }
        let next = match (more, streams.last()) {
            (true, Some(last)) => Some(key_cursor(&last.key)?),
            _ => None,
        };
        Ok(StreamPage { streams, next })
    }

    pub fn put_session(&self, kind: SessionKind, id: &str, session: Session, ttl: Duration) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let expires = inner.now + ttl;
        let id = id.to_string();
        let old = inner
            .sessions
            .insert((kind, id.clone()), SessionEntry { session, expires });
        if let Some(old) = old {
            inner.session_expiry.remove(&(old.expires, kind, id.clone()));
        }
        inner.session_expiry.insert((expires, kind, id));
        Ok(())
    }

    pub fn touch_session(&self, kind: SessionKind, id: &str, ttl: Duration) -> Result<Option<Session>, StoreError> {
        let mut inner = self.lock();
        let expires = inner.now + ttl;
        let Some(entry) = inner.sessions.get_mut(&(kind, id.to_string())) else {
            return Ok(None);
        };
        let old = std::mem::replace(&mut entry.expires, expires);
        let session = entry.session.clone();
        inner.session_expiry.remove(&(old, kind, id.to_string()));
        inner.session_expiry.insert((expires, kind, id.to_string()));
        Ok(Some(session))
    }

    pub fn remove_session(&self, kind: SessionKind, id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(old) = inner.sessions.remove(&(kind, id.to_string())) {
            inner.session_expiry.remove(&(old.expires, kind, id.to_string()));
        }
        Ok(())
    }

    pub fn report_failure(&self, id: &str, reason: &str) -> Result<HealthChange, StoreError> {
        let rules = HealthRules {
            failures: 1,
            successes: 1,
        };
        self.change_health(id, |h| h.fail(reason, true, rules))
    }

    pub fn record_probe(
        &self,
        id: &str,
        result: Result<(), String>,
        rules: HealthRules,
    ) -> Result<HealthChange, StoreError> {
        self.change_health(id, |h| match &result {
            Ok(()) => h.succeed(rules),
            Err(reason) => h.fail(reason, false, rules),
        })
    }

    /// Applies `change` to a registered origin's health; files it anew and
    /// announces it when it became unhealthy.
    fn change_health(
        &self,
        id: &str,
        change: impl FnOnce(&mut Health) -> HealthChange,
    ) -> Result<HealthChange, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner.origins.get_mut(id) else {
            return Ok(HealthChange::Unchanged);
        };
        let changed = change(&mut entry.health);
        if changed != HealthChange::Unchanged {
            inner.file_room(id);
        }
        drop(inner);
        if changed == HealthChange::Unhealthy {
            let _ = self.gone.send(OriginGone { id: id.to_string() });
        }
        Ok(changed)
    }

    pub fn probe_turns(&self, ids: &[String], prober: &str, hold: Duration) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock();
        let now = inner.now;
        let mut mine = Vec::new();
        for id in ids {
            let free = inner
                .probe_turns
                .get(id)
                .is_none_or(|(holder, until)| holder == prober || *until <= now);
            if free && inner.origins.contains_key(id) {
                inner.probe_turns.insert(id.clone(), (prober.to_string(), now + hold));
                mine.push(id.clone());
            }
        }
        Ok(mine)
    }

    /// Drops everything expired and announces origins that expired (every
    /// operation does this first; the sweep makes it happen when idle).
    pub fn sweep(&self) -> Result<(), StoreError> {
        drop(self.lock());
        Ok(())
    }

    pub fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        self.gone.subscribe()
    }

    /// Number of entries of every kind that describe origins, streams or
    /// sessions, indexes included (to prove that nothing grows without
    /// bound). Counts what is there now, before dropping what expired.
    pub fn entry_count(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.origins.len()
            + inner.streams.len()
            + inner.stream_expiry.len()
            + inner.loads.len()
            + inner.sessions.len()
            + inner.session_expiry.len()
    }
}
