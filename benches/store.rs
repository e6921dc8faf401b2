//! `make bench`: what the Redis store costs per operation, as ratios against
//! the memory store measured in the same run (absolute numbers vary by
//! machine and by the distance to Redis; here Redis is on loopback).
//!
//! * claim of a mapped stream (the path every player takes), one at a time
//!   and with 64 in flight;
//! * claim of a new stream (the policy runs inside the script);
//! * lookup (segment requests without a token).
//!
//! These are the numbers a local stream→origin cache would have to beat.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use futures_util::future::join_all;
use srs_proxy::balance::Policy;
use srs_proxy::origin::{Origin, OriginSource, Ports};
use srs_proxy::store::{MemoryStore, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::redis::RedisServer;

const OPS: usize = 20_000;
const TTL: std::time::Duration = std::time::Duration::from_secs(600);

fn key(i: usize) -> StreamKey {
    StreamKey::new("__defaultVhost__", "live", &format!("bench{i}")).unwrap()
}

/// Operations per second of `op` run `OPS` times, `parallel` at a time.
async fn rate<F, Fut>(parallel: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for batch in (0..OPS).collect::<Vec<_>>().chunks(parallel) {
        join_all(batch.iter().map(|i| op(*i))).await;
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

async fn measure(store: &Store) -> [f64; 4] {
    for i in 0..8 {
        let origin = Origin {
            id: format!("origin-{i}"),
            ip: "10.0.0.1".into(),
            ports: Ports {
                http: Some(8080),
                ..Ports::default()
            },
            source: OriginSource::Static,
            weight: 1,
            max_streams: 0,
            pool: None,
            registered_by: None,
        };
        store.upsert_origin(origin, None).await.unwrap();
    }
    let new = rate(1, |i| async move {
        store.claim(&key(i), Policy::LeastStreams, TTL).await.unwrap();
    })
    .await;
    let hit = rate(1, |i| async move {
        store.claim(&key(i % 1000), Policy::LeastStreams, TTL).await.unwrap();
    })
    .await;
    let hit_parallel = rate(64, |i| async move {
        store.claim(&key(i % 1000), Policy::LeastStreams, TTL).await.unwrap();
    })
    .await;
    let lookup = rate(1, |i| async move {
        store.lookup(&key(i % 1000)).await.unwrap();
    })
    .await;
    [new, hit, hit_parallel, lookup]
}

#[tokio::main]
async fn main() {
    let redis = RedisServer::start();
    let memory = measure(&Store::Memory(MemoryStore::new())).await;
    let shared = Store::Redis(RedisStore::connect(&redis.config("bench:")).await.unwrap());
    let redis_rates = measure(&shared).await;
    let names = [
        "claim, new stream",
        "claim, mapped stream",
        "claim, mapped stream, 64 in flight",
        "lookup",
    ];
    for ((name, m), r) in names.iter().zip(memory).zip(redis_rates) {
        println!(
            "{name:<36} memory {m:>10.0}/s  redis {r:>8.0}/s ({:>6.1} µs each)  redis/memory {:.4}",
            1e6 / r,
            r / m
        );
    }
}
