//! Balancing policies: which live origin gets a new stream.
//!
//! Pure functions over a list of candidates (origin + its active stream
//! count); no I/O, no clock, randomness only from a salt the caller passes.
//! The memory store calls [`pick`] and writes the result atomically; the
//! Redis store's script (`store/redis.lua`) implements the same functions on
//! the server, and `tests/redis_policy.rs` holds both to the same cases. The
//! policy never sees a stream that is already mapped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::origin::Origin;
use crate::stream_key::StreamKey;

/// How a new stream is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Fewest active streams per unit of weight; ties broken at random.
    LeastStreams,
    /// Weighted random, the Go proxy's behaviour.
    Random,
    /// Rendezvous hashing of the stream key: every replica, even one with
    /// no state, picks the same origin for the same stream.
    ConsistentHash,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastStreams => "least-streams",
            Self::Random => "random",
            Self::ConsistentHash => "consistent-hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "least-streams" => Ok(Self::LeastStreams),
            "random" => Ok(Self::Random),
            "consistent-hash" => Ok(Self::ConsistentHash),
            _ => Err("expected least-streams, random or consistent-hash".into()),
        }
    }
}

/// A live origin and how many streams it holds now.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub origin: &'a Origin,
    /// Streams the origin holds now: the load least-streams compares.
    pub streams: u32,
}

impl Candidate<'_> {
    /// An origin at its `max_streams` takes no new stream.
    pub fn has_room(&self) -> bool {
        self.origin.max_streams == 0 || self.streams < self.origin.max_streams
    }
}

/// Picks the origin for a new stream, or `None` when no candidate has room.
///
/// `salt` is the policy's only randomness (`random`, and ties under
/// `least-streams`): the same salt and candidates give the same origin,
/// whatever their order. The stores do not call this on a list of every
/// origin: they keep the origins with room ordered by [`load`] and read only
/// what the policy needs (the least loaded run for `least-streams`), with
/// the same building blocks ([`load`], [`tie_index`], [`rendezvous`]); the
/// Redis store's script does the same on the server. `tests/redis_policy.rs`
/// and the store conformance suite hold all of them to this function.
pub fn pick<'a>(policy: Policy, key: &StreamKey, candidates: &[Candidate<'a>], salt: u64) -> Option<&'a Origin> {
    let eligible: Vec<&Candidate<'a>> = candidates.iter().filter(|c| c.has_room()).collect();
    let weighted = || eligible.iter().map(|c| (&*c.origin.id, c.origin.weight));
    let chosen = match policy {
        Policy::Random => rendezvous(&salt_text(salt), weighted())?,
        Policy::ConsistentHash => rendezvous(&key.to_string(), weighted())?,
        Policy::LeastStreams => {
            let least = eligible
                .iter()
                .map(|c| load(c.streams, c.origin.weight))
                .min_by(f64::total_cmp)?;
            let mut ties: Vec<&str> = eligible
                .iter()
                .filter(|c| load(c.streams, c.origin.weight) == least)
                .map(|c| &*c.origin.id)
                .collect();
            ties.sort_unstable();
            ties[tie_index(salt, ties.len())]
        }
    };
    eligible.iter().find(|c| *c.origin.id == *chosen).map(|c| c.origin)
}

/// The text a salt is hashed as (also what the Redis store sends its script).
pub fn salt_text(salt: u64) -> String {
    format!("{salt:016x}")
}

/// What `least-streams` minimises: streams per unit of weight (a weight of
/// 0 counts as 1). A plain `f64` division, so the Redis store keeps it as a
/// sorted-set score and compares it exactly as this code does (ratios of
/// two `u32`s that differ as fractions also differ as doubles).
pub fn load(streams: u32, weight: u32) -> f64 {
    f64::from(streams) / f64::from(weight.max(1))
}

/// Which of `ties` equally loaded origins (ordered by id, byte-wise) takes
/// a new stream under `least-streams`: the low 32 bits of the salt modulo
/// their number, which the script computes exactly from the salt's text.
pub fn tie_index(salt: u64, ties: usize) -> usize {
    ((salt & 0xffff_ffff) % ties.max(1) as u64) as usize
}

/// Weighted rendezvous over `(id, weight)` pairs (see [`race`]): the id with
/// the highest score for `text`, the byte-wise smaller id on an exact tie.
pub fn rendezvous<'a>(text: &str, candidates: impl IntoIterator<Item = (&'a str, u32)>) -> Option<&'a str> {
    let mut best: Option<(&'a str, f64)> = None;
    for (id, weight) in candidates {
        let score = race(text, id, weight);
        let better = match best {
            None => true,
            Some((best_id, best_score)) => score > best_score || (score == best_score && id < best_id),
        };
        if better {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id)
}

/// Weighted rendezvous: each candidate draws u in (0, 1) from `text` and
/// its id; the highest -weight / ln(u) wins. With the stream key as `text`
/// this is consistent hashing (adding an origin moves only the streams it
/// wins, removing one only the streams it had); with a random salt it is a
/// weighted random choice (P = weight / total weight).
fn race(text: &str, id: &str, weight: u32) -> f64 {
    -f64::from(weight.max(1)) / draw(text, id).ln()
}

/// The draw of origin `id` for `text`: the first 52 bits of
/// SHA-1(`text` \n `id`) mapped into (0, 1), never 0 or 1. SHA-1 because a
/// Redis script has it built in (`redis.sha1hex`) and computes exactly the
/// same number; the result is the same on every build and every replica.
pub fn draw(text: &str, id: &str) -> f64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(text.as_bytes());
    ctx.update(b"\n");
    ctx.update(id.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // 13 hex digits = the top 52 bits of the digest.
    let bits = u64::from_be_bytes(first) >> 12;
    (bits as f64 + 0.5) / (1u64 << 52) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{OriginSource, Ports};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn origin(id: &str, weight: u32, max_streams: u32) -> Origin {
        Origin {
            id: id.into(),
            ip: "10.0.0.1".into(),
            ports: Ports {
                rtmp: Some(1935),
                ..Ports::default()
            },
            source: OriginSource::Static,
            weight,
            max_streams,
            pool: None,
            registered_by: None,
        }
    }

    fn key(i: usize) -> StreamKey {
        StreamKey::new("__defaultVhost__", "live", &format!("s{i}")).unwrap()
    }

    #[test]
    fn least_streams_balances_and_respects_weights() {
        let origins = [origin("a", 1, 0), origin("b", 3, 0)];
        let mut counts = [0u32, 0];
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..400 {
            let c: Vec<Candidate> = origins
                .iter()
                .zip(counts)
                .map(|(origin, streams)| Candidate { origin, streams })
                .collect();
            let chosen = pick(Policy::LeastStreams, &key(i), &c, rng.random()).unwrap();
            counts[origins.iter().position(|o| o.id == chosen.id).unwrap()] += 1;
        }
        // Placing one at a time by load/weight keeps b at 3x a (±1).
        assert!((counts[1] as i64 - 3 * counts[0] as i64).abs() <= 3, "{counts:?}");
    }

    #[test]
    fn least_streams_picks_the_emptiest_and_ties_are_random() {
        let origins = [origin("a", 1, 0), origin("b", 1, 0), origin("c", 1, 0)];
        let c = [
            Candidate {
                origin: &origins[0],
                streams: 5,
            },
            Candidate {
                origin: &origins[1],
                streams: 2,
            },
            Candidate {
                origin: &origins[2],
                streams: 2,
            },
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let o = pick(Policy::LeastStreams, &key(i), &c, rng.random()).unwrap();
            assert_ne!(&*o.id, "a");
            seen.insert(o.id.clone());
        }
        assert_eq!(seen.len(), 2, "ties between b and c must both be chosen");
    }

    #[test]
    fn limits_are_respected() {
        let origins = [origin("a", 1, 2), origin("b", 1, 0)];
        let c = [
            Candidate {
                origin: &origins[0],
                streams: 2,
            },
            Candidate {
                origin: &origins[1],
                streams: 100,
            },
        ];
        let mut rng = StdRng::seed_from_u64(3);
        for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
            for i in 0..50 {
                assert_eq!(&*pick(policy, &key(i), &c, rng.random()).unwrap().id, "b", "{policy}");
            }
        }
        let full = [Candidate {
            origin: &origins[0],
            streams: 2,
        }];
        assert!(pick(Policy::LeastStreams, &key(0), &full, rng.random()).is_none());
        assert!(pick(Policy::Random, &key(0), &[], rng.random()).is_none());
    }

    #[test]
    fn random_follows_weights() {
        let origins = [origin("a", 1, 0), origin("b", 4, 0)];
        let c: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 0 }).collect();
        let mut rng = StdRng::seed_from_u64(11);
        let b = (0..5000)
            .filter(|i| &*pick(Policy::Random, &key(*i), &c, rng.random()).unwrap().id == "b")
            .count();
        assert!((3700..4300).contains(&b), "b got {b} of 5000, expected ~4000");
    }

    #[test]
    fn rendezvous_is_stable_when_an_unrelated_origin_is_added() {
        let mut origins: Vec<Origin> = (0..5).map(|i| origin(&format!("o{i}"), 1, 0)).collect();
        let mut rng = StdRng::seed_from_u64(0);
        let place = |origins: &[Origin], rng: &mut StdRng| -> Vec<String> {
            let c: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 0 }).collect();
            (0..1000)
                .map(|i| {
                    pick(Policy::ConsistentHash, &key(i), &c, rng.random())
                        .unwrap()
                        .id
                        .to_string()
                })
                .collect()
        };
        let before = place(&origins, &mut rng);
        origins.push(origin("o5", 1, 0));
        let after = place(&origins, &mut rng);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(a, "o5", "a stream may only move to the new origin");
                moved += 1;
            }
        }
        // About 1/6 of streams move to the new origin.
        assert!((100..250).contains(&moved), "moved {moved}");
        // Same input, same answer: order of candidates does not matter.
        origins.reverse();
        assert_eq!(place(&origins, &mut rng), after);
    }

    #[test]
    fn the_salt_decides_not_the_order_of_candidates() {
        let origins: Vec<Origin> = (0..4).map(|i| origin(&format!("o{i}"), i + 1, 0)).collect();
        let forward: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 1 }).collect();
        let mut backward = forward.clone();
        backward.reverse();
        let mut rng = StdRng::seed_from_u64(5);
        for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
            for i in 0..200 {
                let salt = rng.random();
                assert_eq!(
                    pick(policy, &key(i), &forward, salt).unwrap().id,
                    pick(policy, &key(i), &backward, salt).unwrap().id,
                    "{policy}"
                );
            }
        }
    }

    #[test]
    fn consistent_hash_follows_weights() {
        let origins = [origin("a", 1, 0), origin("b", 3, 0)];
        let c: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 0 }).collect();
        let b = (0..4000)
            .filter(|i| &*pick(Policy::ConsistentHash, &key(*i), &c, 0).unwrap().id == "b")
            .count();
        assert!((2850..3150).contains(&b), "b got {b} of 4000, expected ~3000");
    }

    #[test]
    fn draws_are_in_the_open_unit_interval_and_stable() {
        let u = draw("__defaultVhost__/live/livestream", "origin-a");
        assert!(u > 0.0 && u < 1.0);
        assert_eq!(u, draw("__defaultVhost__/live/livestream", "origin-a"));
        assert_ne!(u, draw("__defaultVhost__/live/livestream", "origin-b"));
        // SHA-1("__defaultVhost__/live/livestream\norigin-a") starts
        // 53f04e87b5ee1: what redis.sha1hex gives the script too.
        assert_eq!(u, (0x0005_3f04_e87b_5ee1_u64 as f64 + 0.5) / (1u64 << 52) as f64);
    }

    #[test]
    fn policy_names() {
        for p in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
        }
        assert!("round-robin".parse::<Policy>().is_err());
    }
}
