//! A byte-bounded least-recently-used map whose entries also expire: the
//! storage of the HLS cache ([`super::hls_cache`]), pure data with the
//! clock passed in, so its rules are tested without waiting.
//!
//! * Every entry has a size (what it counts against the bound) and an
//!   expiry. An expired entry is never returned; it is dropped when it is
//!   looked up, when a sweep finds it (at most once per [`SWEEP_EVERY`],
//!   on insert), or when room is needed.
//! * An insert that would go over the bound first drops expired entries,
//!   then the least recently used ones, until the new entry fits. An entry
//!   larger than the whole bound is refused.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// How often an insert sweeps every expired entry out (between sweeps an
/// expired entry still counts against the bound until it is looked up or
/// pushed out as the least recently used).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Entries dropped since they were last taken, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    /// Least recently used, dropped to make room.
    pub size: u64,
    /// Past their expiry.
    pub expired: u64,
}

/// An entry larger than the whole bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

struct Slot<V> {
    value: V,
    size: usize,
    expires: Instant,
    /// Its place in `order`.
    tick: u64,
}

/// The map. Not thread-safe by itself: its owner holds it under a lock.
pub struct Lru<K, V> {
    entries: HashMap<K, Slot<V>>,
    /// Keys by last use, oldest first.
    order: BTreeMap<u64, K>,
    /// Next use number.
    tick: u64,
    /// Sum of the entries' sizes.
    bytes: usize,
    /// What `bytes` may not exceed.
    capacity: usize,
    /// When an insert next sweeps expired entries out.
    next_sweep: Option<Instant>,
    /// Dropped since [`Lru::take_evictions`].
    evicted: Evictions,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            capacity,
            next_sweep: None,
            evicted: Evictions::default(),
        }
    }

    /// Sum of the sizes of the entries held (expired ones included until
    /// they are dropped).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live entry under `key`, marked as the most recently used; an
    /// expired one is dropped.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&V> {
        let slot = self.entries.get(key)?;
        if slot.expires <= now {
            self.remove(key);
            self.evicted.expired += 1;
            return None;
        }
        let old = slot.tick;
        let tick = self.next_tick();
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        let slot = self.entries.get_mut(key)?;
        slot.tick = tick;
        Some(&slot.value)
    }

    /// Stores `value` under `key` (replacing what was there) for `ttl`,
    /// dropping expired and then least recently used entries until it
    /// fits.
    pub fn insert(&mut self, key: K, value: V, size: usize, ttl: Duration, now: Instant) -> Result<(), TooLarge> {
        if size > self.capacity {
            return Err(TooLarge);
        }
        self.remove(&key);
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.sweep(now);
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
        if self.bytes + size > self.capacity {
            self.sweep(now);
        }
        while self.bytes + size > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&oldest) {
                self.bytes -= slot.size;
                self.evicted.size += 1;
            }
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(
            key,
            Slot {
                value,
                size,
                expires: now + ttl,
                tick,
            },
        );
        self.bytes += size;
        Ok(())
    }

    /// What was dropped since the last call.
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evicted)
    }

    fn remove(&mut self, key: &K) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.size;
        }
    }

    /// Drops every expired entry.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, slot)| slot.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
            self.evicted.expired += 1;
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let now = Instant::now();
        let mut lru = Lru::new(100);
        for k in 0..4 {
            lru.insert(k, k * 10, 25, LONG, now).unwrap();
        }
        assert_eq!(lru.bytes(), 100);
        // 0 was used last; 1 is now the oldest.
        assert_eq!(lru.get(&0, now), Some(&0));
        lru.insert(4, 40, 25, LONG, now).unwrap();
        assert_eq!(lru.bytes(), 100);
        assert_eq!(lru.get(&1, now), None, "the least recently used went");
        for k in [0, 2, 3, 4] {
            assert!(lru.get(&k, now).is_some(), "{k} kept");
        }
        // A big one pushes out as many as it needs, oldest first.
        lru.insert(5, 50, 60, LONG, now).unwrap();
        assert!(lru.bytes() <= 100);
        assert_eq!(lru.len(), 2);
        assert!(lru.get(&4, now).is_some() && lru.get(&5, now).is_some());
        assert_eq!(
            lru.take_evictions(),
            Evictions { size: 4, expired: 0 },
            "1, then 0, 2, 3"
        );
        assert_eq!(lru.take_evictions(), Evictions::default(), "taken once");
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_refused_and_nothing_goes() {
        let now = Instant::now();
        let mut lru = Lru::new(100);
        lru.insert("a", (), 100, LONG, now).unwrap();
        assert_eq!(lru.insert("b", (), 101, LONG, now), Err(TooLarge));
        assert!(lru.get(&"a", now).is_some());
        assert_eq!(lru.bytes(), 100);
    }

    #[test]
    fn entries_expire_at_their_own_time() {
        let t0 = Instant::now();
        let mut lru = Lru::new(1000);
        lru.insert("short", 1, 10, Duration::from_secs(1), t0).unwrap();
        lru.insert("long", 2, 10, Duration::from_secs(10), t0).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(lru.get(&"short", t1 - Duration::from_millis(1)), Some(&1));
        assert_eq!(lru.get(&"short", t1), None, "expired at its TTL, not after");
        assert_eq!(lru.get(&"long", t1), Some(&2));
        assert_eq!(lru.bytes(), 10, "the expired entry's bytes are gone");
        assert_eq!(lru.take_evictions(), Evictions { size: 0, expired: 1 });
        assert_eq!(lru.get(&"long", t0 + Duration::from_secs(10)), None);
        assert!(lru.is_empty());
    }

    #[test]
    fn expired_entries_make_room_before_live_ones() {
        let t0 = Instant::now();
        let mut lru = Lru::new(30);
        lru.insert(1, (), 10, LONG, t0).unwrap();
        lru.insert(2, (), 10, Duration::from_millis(10), t0).unwrap();
        lru.insert(3, (), 10, LONG, t0).unwrap();
        // Within the sweep interval, so only the need for room sweeps.
        let t1 = t0 + Duration::from_millis(20);
        lru.insert(4, (), 10, LONG, t1).unwrap();
        assert!(lru.get(&1, t1).is_some(), "the oldest live entry stays");
        assert_eq!(lru.take_evictions(), Evictions { size: 0, expired: 1 });
    }

    #[test]
    fn inserts_sweep_expired_entries_out_periodically() {
        let t0 = Instant::now();
        let mut lru = Lru::new(1000);
        for k in 0..10 {
            lru.insert(k, (), 10, Duration::from_millis(100), t0).unwrap();
        }
        let later = t0 + SWEEP_EVERY;
        lru.insert(99, (), 10, LONG, later).unwrap();
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.bytes(), 10);
        assert_eq!(lru.take_evictions().expired, 10);
    }

    #[test]
    fn replacing_a_key_counts_it_once() {
        let now = Instant::now();
        let mut lru = Lru::new(100);
        lru.insert("a", 1, 40, LONG, now).unwrap();
        lru.insert("a", 2, 50, LONG, now).unwrap();
        assert_eq!(lru.bytes(), 50);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.get(&"a", now), Some(&2));
        assert_eq!(lru.take_evictions(), Evictions::default());
    }
}
