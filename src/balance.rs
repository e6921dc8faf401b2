//! Balancing policies: which live origin gets a new stream.
//!
//! Pure functions over a list of candidates (origin + its active stream
//! count); no I/O, no clock. The stores call [`pick`] and write the result
//! atomically; the policy never sees a stream that is already mapped.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::origin::Origin;
use crate::stream_key::StreamKey;

/// How a new stream is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub streams: u32,
}

impl Candidate<'_> {
    /// An origin at its `max_streams` takes no new stream.
    pub fn has_room(&self) -> bool {
        self.origin.max_streams == 0 || self.streams < self.origin.max_streams
    }
}

/// Picks the origin for a new stream, or `None` when no candidate has room.
pub fn pick<'a, R: Rng + ?Sized>(
    policy: Policy,
    key: &StreamKey,
    candidates: &[Candidate<'a>],
    rng: &mut R,
) -> Option<&'a Origin> {
    let eligible: Vec<&Candidate<'a>> = candidates.iter().filter(|c| c.has_room()).collect();
    if eligible.is_empty() {
        return None;
    }
    let chosen = match policy {
        Policy::Random => weighted_random(&eligible, rng),
        Policy::LeastStreams => least_streams(&eligible, rng),
        Policy::ConsistentHash => rendezvous(key, &eligible),
    };
    Some(chosen.origin)
}

fn weight(c: &Candidate<'_>) -> u64 {
    u64::from(c.origin.weight.max(1))
}

fn weighted_random<'a, 'b, R: Rng + ?Sized>(eligible: &[&'b Candidate<'a>], rng: &mut R) -> &'b Candidate<'a> {
    let total: u64 = eligible.iter().map(|c| weight(c)).sum();
    let mut point = rng.random_range(0..total);
    for c in eligible {
        if point < weight(c) {
            return c;
        }
        point -= weight(c);
    }
    eligible[eligible.len() - 1]
}

fn least_streams<'a, 'b, R: Rng + ?Sized>(eligible: &[&'b Candidate<'a>], rng: &mut R) -> &'b Candidate<'a> {
    // Compare streams/weight without floats: a.streams * b.weight vs b.streams * a.weight.
    let load_cmp = |a: &Candidate<'_>, b: &Candidate<'_>| {
        (u64::from(a.streams) * weight(b)).cmp(&(u64::from(b.streams) * weight(a)))
    };
    let best = eligible
        .iter()
        .min_by(|a, b| load_cmp(a, b))
        .expect("eligible is not empty");
    let ties: Vec<&&Candidate<'a>> = eligible.iter().filter(|c| load_cmp(c, best).is_eq()).collect();
    ties[rng.random_range(0..ties.len())]
}

/// Weighted rendezvous hashing: score = -weight / ln(u), u the origin's
/// hash of the key mapped into (0, 1). Adding an origin moves only the
/// streams it wins; removing one moves only the streams it had.
fn rendezvous<'a, 'b>(key: &StreamKey, eligible: &[&'b Candidate<'a>]) -> &'b Candidate<'a> {
    let key_text = key.to_string();
    let score = |c: &Candidate<'_>| {
        let h = stable_hash(key_text.as_bytes(), c.origin.id.as_bytes());
        // 53 high bits → (0, 1), never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -(weight(c) as f64) / u.ln()
    };
    eligible
        .iter()
        .max_by(|a, b| {
            score(a)
                .total_cmp(&score(b))
                .then_with(|| b.origin.id.cmp(&a.origin.id))
        })
        .expect("eligible is not empty")
}

/// FNV-1a over both inputs with a separator, then a 64-bit finaliser, so
/// the result is the same on every build and every replica.
pub fn stable_hash(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain(&[0xff]).chain(b) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{OriginSource, Ports};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
            let chosen = pick(Policy::LeastStreams, &key(i), &c, &mut rng).unwrap();
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
            let o = pick(Policy::LeastStreams, &key(i), &c, &mut rng).unwrap();
            assert_ne!(o.id, "a");
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
                assert_eq!(pick(policy, &key(i), &c, &mut rng).unwrap().id, "b", "{policy}");
            }
        }
        let full = [Candidate {
            origin: &origins[0],
            streams: 2,
        }];
        assert!(pick(Policy::LeastStreams, &key(0), &full, &mut rng).is_none());
        assert!(pick(Policy::Random, &key(0), &[], &mut rng).is_none());
    }

    #[test]
    fn random_follows_weights() {
        let origins = [origin("a", 1, 0), origin("b", 4, 0)];
        let c: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 0 }).collect();
        let mut rng = StdRng::seed_from_u64(11);
        let b = (0..5000)
            .filter(|i| pick(Policy::Random, &key(*i), &c, &mut rng).unwrap().id == "b")
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
                .map(|i| pick(Policy::ConsistentHash, &key(i), &c, rng).unwrap().id.clone())
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
    fn policy_names() {
        for p in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
        }
        assert!("round-robin".parse::<Policy>().is_err());
    }
}
