//! The Redis store places streams with its script's copy of the policies;
//! this holds that copy to `balance::pick` on the same inputs, so the two
//! cannot drift apart.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use srs_proxy::balance::{pick, Candidate, Policy};
use srs_proxy::origin::{Origin, OriginSource, Ports};
use srs_proxy::store::RedisStore;
use srs_proxy::stream_key::StreamKey;
use support::redis::RedisServer;

const POLICIES: [Policy; 3] = [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash];

fn origin(id: String, weight: u32, max_streams: u32) -> Origin {
    Origin {
        id: id.into(),
        ip: "10.0.0.1".into(),
        ports: Ports {
            http: Some(8080),
            ..Ports::default()
        },
        source: OriginSource::Kubernetes,
        weight,
        max_streams,
        pool: None,
        registered_by: None,
    }
}

async fn agree(store: &RedisStore, policy: Policy, key: &StreamKey, candidates: &[Candidate<'_>], salt: u64) {
    let expected = pick(policy, key, candidates, salt).map(|o| o.id.to_string());
    let got = store.pick_in_script(policy, key, candidates, salt).await.unwrap();
    assert_eq!(got, expected, "{policy} {key} salt {salt:x} {candidates:?}");
}

#[tokio::test]
async fn the_script_chooses_as_balance_rs_does() {
    let store = RedisStore::connect(&RedisServer::shared().config("policy:"))
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(20);
    let mut chosen_some = 0;
    for case in 0..400 {
        let n = rng.random_range(1..=6);
        let origins: Vec<Origin> = (0..n)
            .map(|i| {
                origin(
                    format!("srs-{i}-{:x}", rng.random::<u16>()),
                    // 0 counts as 1, on both sides.
                    rng.random_range(0..=4),
                    [0, 0, 1, 3][rng.random_range(0..4)],
                )
            })
            .collect();
        let candidates: Vec<Candidate> = origins
            .iter()
            .map(|origin| Candidate {
                origin,
                // Few distinct loads, so least-streams meets ties often.
                streams: rng.random_range(0..=3),
            })
            .collect();
        let key = StreamKey::new("live.example.com", "live", &format!("cam{case}")).unwrap();
        for policy in POLICIES {
            let salt = rng.random();
            agree(&store, policy, &key, &candidates, salt).await;
            chosen_some += usize::from(pick(policy, &key, &candidates, salt).is_some());
        }
    }
    assert!(chosen_some > 600, "the cases must mostly place streams ({chosen_some})");
}

#[tokio::test]
async fn the_script_agrees_on_the_edges() {
    let store = RedisStore::connect(&RedisServer::shared().config("policy-edges:"))
        .await
        .unwrap();
    let key = StreamKey::new("__defaultVhost__", "live", "livestream").unwrap();
    let full = origin("full".into(), 1, 2);
    let open = origin("open".into(), 1, 0);
    let cases: Vec<Vec<Candidate>> = vec![
        vec![],
        vec![Candidate {
            origin: &full,
            streams: 2,
        }],
        vec![
            Candidate {
                origin: &full,
                streams: 2,
            },
            Candidate {
                origin: &open,
                streams: 1000,
            },
        ],
        vec![
            Candidate {
                origin: &full,
                streams: 1,
            },
            Candidate {
                origin: &open,
                streams: 1,
            },
        ],
    ];
    for candidates in &cases {
        for policy in POLICIES {
            for salt in [0, 1, u64::MAX] {
                agree(&store, policy, &key, candidates, salt).await;
            }
        }
    }
}
