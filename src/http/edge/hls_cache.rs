//! Edge mode's HLS cache: one origin request per playlist or segment,
//! however many players ask for it (one cache per replica, in the
//! context).
//!
//! * **Single flight.** The first request for a [`CacheKey`] starts the
//!   origin request in a task of its own (a player that leaves does not
//!   cancel it for the others); requests for the same key arriving while
//!   it runs wait for that same [`Outcome`]: the origin's status, headers
//!   and whole body, or its failure.
//! * **Bounded.** Only 2xx answers are kept, in an [`Lru`] of
//!   `edge.hls_cache_bytes`: segments for `edge.hls_segment_ttl`,
//!   playlists for `edge.hls_playlist_ttl` (by default half their
//!   `#EXT-X-TARGETDURATION`). A segment over its limit is not read: the
//!   requests fetch it on their own, and the key is remembered as too
//!   large for the segment TTL.
//!
//! This module keeps origin answers; it never rewrites playlists (every
//! player's routing token is added per request, [`crate::http::hls`]) and
//! decides nothing about where a stream lives.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;

pub use super::hub::Answer;
use super::lru::Lru;
use crate::config::EdgeConfig;
use crate::hls::TOKEN_PARAM;
use crate::http::HttpError;
use crate::metrics::Metrics;
use crate::stream_key::StreamKey;

/// Cache time of a playlist without `#EXT-X-TARGETDURATION` (a master
/// playlist) when it is derived.
pub const UNTIMED_PLAYLIST_TTL: Duration = Duration::from_secs(1);
/// Longest derived playlist cache time, whatever target duration an
/// origin claims.
pub const MAX_DERIVED_PLAYLIST_TTL: Duration = Duration::from_secs(30);
/// What an entry costs beyond its key, headers and body (the map slots,
/// the `Arc`, the status).
const ENTRY_OVERHEAD: usize = 128;

/// What is being fetched, for metrics and TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Playlist,
    Segment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Playlist => "playlist",
            Self::Segment => "segment",
        }
    }
}

/// What requests share one origin request and one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The origin asked (a stream that moves gets new entries).
    origin: String,
    /// The vhost, which SRS reads from `Host`.
    vhost: std::sync::Arc<str>,
    /// The origin target, as far as it decides the answer.
    target: String,
}

impl CacheKey {
    /// A segment is the same bytes whoever asks: its path decides, not its
    /// query (routing tokens, play tokens, SRS's `hls_ctx`).
    pub fn segment(origin_id: &str, key: &StreamKey, target: &str) -> Self {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        Self::new(origin_id, key, path.to_string())
    }

    /// A playlist may differ by query (SRS writes `hls_ctx` into its URIs;
    /// LL-HLS `_HLS_msn`), so the query is part of it, except the proxy's
    /// own routing token: the playlist is cached before each player's
    /// token is added.
    pub fn playlist(origin_id: &str, key: &StreamKey, target: &str) -> Self {
        let target = match target.split_once('?') {
            None => target.to_string(),
            Some((path, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty() && p.split('=').next() != Some(TOKEN_PARAM))
                    .collect();
                if kept.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{}", kept.join("&"))
                }
            }
        };
        Self::new(origin_id, key, target)
    }

    fn new(origin_id: &str, key: &StreamKey, target: String) -> Self {
        Self {
            origin: origin_id.to_string(),
            vhost: key.vhost.clone(),
            target,
        }
    }

    fn size(&self) -> usize {
        self.origin.len() + self.vhost.len() + self.target.len()
    }
}

/// What an answer costs the cache.
fn answer_size(answer: &Answer) -> usize {
    let headers: usize = answer.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    answer.body.len() + headers + ENTRY_OVERHEAD
}

/// What one origin request brought.
pub enum Fetched {
    Whole(Answer),
    /// The body is over its limit: not read, not shared.
    TooLarge,
}

/// What every request of a flight gets.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The origin's answer, any status (kept only when 2xx).
    Answer(Arc<Answer>),
    /// Over the size limit: each request fetches it on its own.
    TooLarge,
    /// The origin request failed.
    Failed(HttpError),
}

enum Entry {
    Answer(Arc<Answer>),
    TooLarge,
}

/// One origin request in progress.
struct Flight {
    /// Tells the flight apart from a later one for the same key.
    id: u64,
    /// Set once, when the origin request is over.
    done: watch::Receiver<Option<Outcome>>,
}

struct State {
    lru: Lru<CacheKey, Entry>,
    flights: HashMap<CacheKey, Flight>,
    next_flight: u64,
}

struct Shared {
    state: Mutex<State>,
    segment_ttl: Duration,
    /// Zero: derived from the playlist.
    playlist_ttl: Duration,
    metrics: Metrics,
}

/// The cache of one replica; a cheap handle.
#[derive(Clone)]
pub struct HlsCache {
    shared: Arc<Shared>,
}

impl HlsCache {
    pub fn new(config: &EdgeConfig, metrics: &Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    lru: Lru::new(config.hls_cache_bytes),
                    flights: HashMap::new(),
                    next_flight: 0,
                }),
                segment_ttl: config.hls_segment_ttl,
                playlist_ttl: config.hls_playlist_ttl,
                metrics: metrics.clone(),
            }),
        }
    }

    /// The answer for `key`: from the cache, from the origin request in
    /// flight for it, or from a new one that `fetch` makes.
    pub async fn get<F, Fut>(&self, kind: Kind, key: CacheKey, fetch: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, HttpError>> + Send + 'static,
    {
        let (mut done, shared) = {
            let mut state = self.state();
            let cached = state.lru.get(&key, Instant::now()).map(|entry| match entry {
                Entry::Answer(answer) => Outcome::Answer(answer.clone()),
                Entry::TooLarge => Outcome::TooLarge,
            });
            self.noted(&mut state);
            if let Some(outcome) = cached {
                drop(state);
                let result = if matches!(outcome, Outcome::TooLarge) {
                    "bypass"
                } else {
                    "hit"
                };
                self.count(kind, result);
                self.served(&outcome);
                return outcome;
            }
            // Counted on arrival: a waiting request shows in the metrics.
            match state.flights.get(&key) {
                Some(flight) => {
                    self.count(kind, "coalesced");
                    (flight.done.clone(), true)
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.next_flight += 1;
                    let id = state.next_flight;
                    state.flights.insert(key.clone(), Flight { id, done: rx.clone() });
                    tokio::spawn(self.clone().fly(kind, key, id, fetch(), tx));
                    self.count(kind, "miss");
                    (rx, false)
                }
            }
        };
        let outcome = match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(|| unreachable!("waited for Some")),
            // The flight's task died without an answer (a panic).
            Err(_) => Outcome::Failed(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the shared origin request failed",
            )),
        };
        if shared {
            self.served(&outcome);
        }
        outcome
    }

    /// Runs one origin request, keeps its answer if it may be kept, then
    /// hands it to every request waiting for it.
    async fn fly(
        self,
        kind: Kind,
        key: CacheKey,
        id: u64,
        fetch: impl Future<Output = Result<Fetched, HttpError>>,
        tx: watch::Sender<Option<Outcome>>,
    ) {
        let landing = Landing {
            cache: self.clone(),
            key: key.clone(),
            id,
        };
        let outcome = match fetch.await {
            Ok(Fetched::Whole(answer)) => Outcome::Answer(Arc::new(answer)),
            Ok(Fetched::TooLarge) => Outcome::TooLarge,
            Err(e) => Outcome::Failed(e),
        };
        {
            // The flight ends and its entry appears in one step, so a
            // request finds one or the other.
            let mut state = self.state();
            landing.clear(&mut state);
            let now = Instant::now();
            let size = key.size() + ENTRY_OVERHEAD;
            let kept = match &outcome {
                Outcome::Answer(answer) if answer.status.is_success() => {
                    let ttl = self.ttl(kind, answer);
                    let size = size + answer_size(answer);
                    (!ttl.is_zero()).then(|| (Entry::Answer(answer.clone()), size, ttl))
                }
                // A playlist over its limit is an error, asked again.
                Outcome::TooLarge if kind == Kind::Segment => Some((Entry::TooLarge, size, self.shared.segment_ttl)),
                _ => None,
            };
            if let Some((entry, size, ttl)) = kept {
                // An answer larger than the whole cache is served, not kept.
                let _ = state.lru.insert(key, entry, size, ttl, now);
            }
            self.noted(&mut state);
        }
        let _ = tx.send(Some(outcome));
    }

    /// How long an answer is served from the cache.
    fn ttl(&self, kind: Kind, answer: &Answer) -> Duration {
        match kind {
            Kind::Segment => self.shared.segment_ttl,
            Kind::Playlist if !self.shared.playlist_ttl.is_zero() => self.shared.playlist_ttl,
            Kind::Playlist => derived_playlist_ttl(&answer.body),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the size gauge and eviction counters up to date.
    fn noted(&self, state: &mut State) {
        let m = &self.shared.metrics;
        let evicted = state.lru.take_evictions();
        for (reason, n) in [("size", evicted.size), ("expired", evicted.expired)] {
            if n > 0 {
                m.edge_hls_cache_evictions_total.with_label_values(&[reason]).inc_by(n);
            }
        }
        m.edge_hls_cache_bytes.set(state.lru.bytes() as i64);
    }

    fn count(&self, kind: Kind, result: &str) {
        self.shared
            .metrics
            .edge_hls_cache_requests_total
            .with_label_values(&[kind.as_str(), result])
            .inc();
    }

    /// Counts an answer this request did not cost the origin.
    fn served(&self, outcome: &Outcome) {
        if let Outcome::Answer(answer) = outcome {
            self.shared
                .metrics
                .edge_hls_cache_served_bytes_total
                .inc_by(answer.body.len() as u64);
        }
    }
}

/// Clears a flight from the table when its task ends, however it ends.
struct Landing {
    cache: HlsCache,
    key: CacheKey,
    id: u64,
}

impl Landing {
    fn clear(&self, state: &mut State) {
        if state.flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            state.flights.remove(&self.key);
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        let cache = self.cache.clone();
        self.clear(&mut cache.state());
    }
}

/// Half the playlist's `#EXT-X-TARGETDURATION` (at most
/// [`MAX_DERIVED_PLAYLIST_TTL`]), or [`UNTIMED_PLAYLIST_TTL`] without one.
pub fn derived_playlist_ttl(playlist: &[u8]) -> Duration {
    match target_duration(playlist) {
        Some(target) => (target / 2).min(MAX_DERIVED_PLAYLIST_TTL),
        None => UNTIMED_PLAYLIST_TTL,
    }
}

/// The `#EXT-X-TARGETDURATION` of a playlist (RFC 8216 §4.3.3.1: a decimal
/// integer of seconds), if it has a sane one.
pub fn target_duration(playlist: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(playlist).ok()?;
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("#EXT-X-TARGETDURATION:"))?;
    let seconds: u64 = value.trim().parse().ok()?;
    (seconds > 0 && seconds <= 86_400).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(target: &str) -> CacheKey {
        let stream = StreamKey::new("v.example.com", "live", "s").unwrap();
        CacheKey::segment("o1", &stream, target)
    }

    fn answer(status: StatusCode, body: &'static [u8]) -> Fetched {
        Fetched::Whole(Answer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
        })
    }

    fn cache(bytes: usize) -> (HlsCache, Metrics) {
        let metrics = Metrics::new();
        let config = EdgeConfig {
            hls_cache_bytes: bytes,
            hls_max_segment_bytes: bytes,
            ..EdgeConfig::default()
        };
        (HlsCache::new(&config, &metrics), metrics)
    }

    fn requests(m: &Metrics, kind: &str, result: &str) -> u64 {
        m.edge_hls_cache_requests_total.with_label_values(&[kind, result]).get()
    }

    #[test]
    fn keys_ignore_what_does_not_change_the_answer() {
        let s = StreamKey::new("v.example.com", "live", "s").unwrap();
        let other_vhost = StreamKey::new("w.example.com", "live", "s").unwrap();
        let seg = |t: &str| CacheKey::segment("o1", &s, t);
        assert_eq!(seg("/live/s-1.ts?spbhid=a&hls_ctx=b"), seg("/live/s-1.ts"));
        assert_ne!(seg("/live/s-1.ts"), seg("/live/s-2.ts"));
        assert_ne!(seg("/live/s-1.ts"), CacheKey::segment("o2", &s, "/live/s-1.ts"));
        assert_ne!(
            seg("/live/s-1.ts"),
            CacheKey::segment("o1", &other_vhost, "/live/s-1.ts")
        );
        let pl = |t: &str| CacheKey::playlist("o1", &s, t);
        assert_eq!(pl("/live/s.m3u8?spbhid=0123"), pl("/live/s.m3u8"));
        assert_eq!(pl("/live/s.m3u8?a=1&spbhid=0123&b=2"), pl("/live/s.m3u8?a=1&b=2"));
        assert_ne!(pl("/live/s.m3u8?hls_ctx=x"), pl("/live/s.m3u8?hls_ctx=y"));
    }

    #[test]
    fn playlist_ttl_is_half_the_target_duration() {
        let p = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.0,\na-1.ts\n";
        assert_eq!(target_duration(p), Some(Duration::from_secs(6)));
        assert_eq!(derived_playlist_ttl(p), Duration::from_secs(3));
        assert_eq!(
            derived_playlist_ttl(b"#EXTM3U\n#EXT-X-TARGETDURATION:3\n"),
            Duration::from_millis(1500)
        );
        let master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow.m3u8\n";
        assert_eq!(derived_playlist_ttl(master), UNTIMED_PLAYLIST_TTL);
        for odd in [
            &b"#EXTM3U\n#EXT-X-TARGETDURATION:x\n"[..],
            b"#EXT-X-TARGETDURATION:0",
            b"\xff\xfe",
        ] {
            assert_eq!(derived_playlist_ttl(odd), UNTIMED_PLAYLIST_TTL);
        }
        assert_eq!(
            derived_playlist_ttl(b"#EXT-X-TARGETDURATION:3600\n"),
            MAX_DERIVED_PLAYLIST_TTL
        );
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch_and_later_ones_hit() {
        let (cache, m) = cache(1 << 20);
        let fetches = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let (cache, fetches, mut gate) = (cache.clone(), fetches.clone(), gate.clone());
            waiting.push(tokio::spawn(async move {
                cache
                    .get(Kind::Segment, key("/live/s-1.ts"), move || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(answer(StatusCode::OK, b"segment"))
                    })
                    .await
            }));
        }
        // Every request is counted before the origin answers.
        while requests(&m, "segment", "coalesced") + requests(&m, "segment", "miss") < 10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for w in waiting {
            match w.await.unwrap() {
                Outcome::Answer(a) => assert_eq!(&a.body[..], b"segment"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(requests(&m, "segment", "miss"), 1);
        assert_eq!(requests(&m, "segment", "coalesced"), 9);
        let again = cache
            .get(Kind::Segment, key("/live/s-1.ts?other=query"), || async {
                panic!("a cached segment is not fetched again")
            })
            .await;
        assert!(matches!(again, Outcome::Answer(_)));
        assert_eq!(requests(&m, "segment", "hit"), 1);
        assert_eq!(
            m.edge_hls_cache_served_bytes_total.get(),
            10 * 7,
            "9 coalesced and one hit"
        );
        assert!(m.edge_hls_cache_bytes.get() > 7);
    }

    #[tokio::test]
    async fn failures_and_errors_are_shared_but_not_kept() {
        let (cache, _m) = cache(1 << 20);
        for _ in 0..2 {
            let got = cache
                .get(Kind::Segment, key("/live/s-9.ts"), || async {
                    Err(HttpError::new(StatusCode::BAD_GATEWAY, "origin failed"))
                })
                .await;
            assert!(matches!(got, Outcome::Failed(e) if e.status == StatusCode::BAD_GATEWAY));
        }
        let fetches = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let fetches = fetches.clone();
            let got = cache
                .get(Kind::Segment, key("/live/s-10.ts"), move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Ok(answer(StatusCode::NOT_FOUND, b"no"))
                })
                .await;
            assert!(matches!(got, Outcome::Answer(a) if a.status == StatusCode::NOT_FOUND));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "a 404 is not kept");
        assert_eq!(_m.edge_hls_cache_bytes.get(), 0);
    }

    #[tokio::test]
    async fn a_segment_too_large_is_remembered_and_bypassed() {
        let (cache, m) = cache(1 << 20);
        for _ in 0..2 {
            let got = cache
                .get(Kind::Segment, key("/live/big-1.ts"), || async { Ok(Fetched::TooLarge) })
                .await;
            assert!(matches!(got, Outcome::TooLarge));
        }
        assert_eq!(requests(&m, "segment", "miss"), 1);
        assert_eq!(requests(&m, "segment", "bypass"), 1, "remembered");
        // A playlist over its limit is an error: asked again.
        for _ in 0..2 {
            let got = cache
                .get(Kind::Playlist, key("/live/big.m3u8"), || async {
                    Ok(Fetched::TooLarge)
                })
                .await;
            assert!(matches!(got, Outcome::TooLarge));
        }
        assert_eq!(requests(&m, "playlist", "miss"), 2);
    }

    #[tokio::test]
    async fn a_flight_whose_task_panics_fails_its_waiters_and_is_cleared() {
        let (cache, _m) = cache(1 << 20);
        let got = cache
            .get(Kind::Segment, key("/live/p-1.ts"), || async {
                panic!("fetch panicked")
            })
            .await;
        assert!(matches!(got, Outcome::Failed(_)));
        let got = cache
            .get(Kind::Segment, key("/live/p-1.ts"), || async {
                Ok(answer(StatusCode::OK, b"ok"))
            })
            .await;
        assert!(matches!(got, Outcome::Answer(_)), "the next request flies again");
    }
}
