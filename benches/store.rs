//! `make bench`: what a claim costs as the pool and the routing state grow,
//! and how long a Redis failover keeps new streams waiting.
//!
//! * **Claims at scale**: claims per second and p99 latency, one claim at a
//!   time, for new streams (the policy runs) and for mapped streams (a hit),
//!   with 2, 50 and 500 origins and 100, 10,000 and 100,000 mapped streams,
//!   memory and Redis (on loopback), default policy (`least-streams`). Each
//!   row also gives its ratio to the smallest case of the same store and
//!   kind, measured in the same run: flat means the cost does not grow.
//!   `random` and `consistent-hash` hash every origin with room (rendezvous
//!   needs them all), so they are shown for 2 and 500 origins too.
//! * **Failover**: with Sentinel (`down-after-milliseconds` 1000) and with a
//!   Cluster (`cluster-node-timeout` 1000), the primary holding the routing
//!   state is killed (SIGKILL) while claims run back to back: seconds from
//!   the kill to the first claim that succeeds again, and how many of the
//!   claims acknowledged before the kill the promoted replica had lost
//!   (asynchronous replication; the next claim of such a stream places it
//!   again).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use srs_proxy::balance::Policy;
use srs_proxy::config::RedisConfig;
use srs_proxy::origin::{Origin, OriginSource, Ports, Protocol};
use srs_proxy::store::{Claim, ClaimOutcome, MemoryStore, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::redis::{Cluster, RedisServer, Sentinel};

const TTL: Duration = Duration::from_secs(3600);
/// Claims timed per case.
const SAMPLES: usize = 2000;

fn key(prefix: &str, i: usize) -> StreamKey {
    StreamKey::new("__defaultVhost__", "live", &format!("{prefix}{i}")).unwrap()
}

fn origin(i: usize) -> Origin {
    Origin {
        id: format!("origin-{i:03}"),
        ip: "10.0.0.1".into(),
        ports: Ports {
            rtmp: Some(1935),
            http: Some(8080),
            ..Ports::default()
        },
        source: OriginSource::Static,
        weight: 1,
        max_streams: 0,
        pool: None,
    }
}

/// Claims per second and p99 latency (µs) of `SAMPLES` claims in a row.
async fn time_claims(store: &Store, policy: Policy, keys: impl Fn(usize) -> StreamKey) -> (f64, f64) {
    let mut latencies = Vec::with_capacity(SAMPLES);
    let start = Instant::now();
    for i in 0..SAMPLES {
        let t = Instant::now();
        let claim = store.claim_for(&keys(i), policy, TTL, Some(Protocol::Http));
        assert!(matches!(claim.await.unwrap(), Claim::Origin(..)));
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let rate = SAMPLES as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies[latencies.len() * 99 / 100])
}

/// Registers `origins` origins and maps `streams` streams, 64 at a time.
async fn fill(store: &Store, origins: usize, streams: usize) {
    for i in 0..origins {
        store.upsert_origin(origin(i), None).await.unwrap();
    }
    for batch in (0..streams).collect::<Vec<_>>().chunks(64) {
        join_all(batch.iter().map(|i| async move {
            store
                .claim(&key("mapped", *i), Policy::LeastStreams, TTL)
                .await
                .unwrap();
        }))
        .await;
    }
}

struct Row {
    store: &'static str,
    policy: Policy,
    origins: usize,
    streams: usize,
    new: (f64, f64),
    hit: (f64, f64),
}

async fn case(store: &Store, name: &'static str, policy: Policy, origins: usize, streams: usize) -> Row {
    fill(store, origins, streams).await;
    let new = time_claims(store, policy, |i| key("new", i)).await;
    let hit = time_claims(store, policy, |i| key("mapped", (i * 7919) % streams)).await;
    Row {
        store: name,
        policy,
        origins,
        streams,
        new,
        hit,
    }
}

async fn claims_at_scale() {
    let redis = RedisServer::start();
    let config = redis.config("bench:");
    let mut rows = Vec::new();
    let mut cases: Vec<(Policy, usize, usize)> = Vec::new();
    for origins in [2, 50, 500] {
        for streams in [100, 10_000, 100_000] {
            cases.push((Policy::LeastStreams, origins, streams));
        }
    }
    for policy in [Policy::Random, Policy::ConsistentHash] {
        for origins in [2, 500] {
            cases.push((policy, origins, 10_000));
        }
    }
    for (policy, origins, streams) in cases {
        rows.push(case(&Store::Memory(MemoryStore::new()), "memory", policy, origins, streams).await);
        redis.command(&["FLUSHALL"]).unwrap();
        let store = Store::Redis(RedisStore::connect(&config).await.unwrap());
        rows.push(case(&store, "redis", policy, origins, streams).await);
    }
    println!("claims, one at a time (claims/s, p99 µs; ratio of the p99 to the 2-origin, 100-stream case)");
    println!(
        "{:<7} {:<16} {:>7} {:>8} | {:>9} {:>8} {:>6} | {:>9} {:>8} {:>6}",
        "store", "policy", "origins", "streams", "new/s", "p99", "ratio", "mapped/s", "p99", "ratio"
    );
    for row in &rows {
        let base = rows
            .iter()
            .find(|b| b.store == row.store && b.origins == 2 && b.streams == 100)
            .unwrap();
        println!(
            "{:<7} {:<16} {:>7} {:>8} | {:>9.0} {:>8.1} {:>6.2} | {:>9.0} {:>8.1} {:>6.2}",
            row.store,
            row.policy.as_str(),
            row.origins,
            row.streams,
            row.new.0,
            row.new.1,
            row.new.1 / base.new.1,
            row.hit.0,
            row.hit.1,
            row.hit.1 / base.hit.1,
        );
    }
}

/// Kills the primary (`kill`) while claims run, and reports the time to the
/// first claim that succeeds again and how many acknowledged claims the
/// promoted replica lost.
async fn failover(name: &str, redis: RedisConfig, kill: impl FnOnce()) {
    let store = Store::Redis(RedisStore::connect(&redis).await.unwrap());
    for i in 0..4 {
        store.upsert_origin(origin(i), None).await.unwrap();
    }
    // Claims right up to the kill, as a busy proxy would make them.
    let mut acknowledged = Vec::new();
    for i in 0..500 {
        let k = key("before", i);
        if let Claim::Origin(o, _) = store.claim(&k, Policy::Random, TTL).await.unwrap() {
            acknowledged.push((k, o.id));
        }
    }
    let killed = Instant::now();
    kill();
    let mut refused = 0;
    let mut i = 0;
    let recovered = loop {
        i += 1;
        match store.claim(&key("during", i), Policy::Random, TTL).await {
            Ok(_) => break killed.elapsed(),
            Err(_) => refused += 1,
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "{name}: never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut lost = 0;
    for (k, id) in &acknowledged {
        match store.claim(k, Policy::Random, TTL).await.unwrap() {
            Claim::Origin(o, ClaimOutcome::Hit) if o.id == *id => {}
            _ => lost += 1,
        }
    }
    println!(
        "{name:<9} first claim after the kill succeeded after {:.2} s ({refused} refused meanwhile); \
         {lost} of {} acknowledged claims lost",
        recovered.as_secs_f64(),
        acknowledged.len()
    );
}

async fn failovers() {
    println!("failover (primary killed with SIGKILL while claims run)");
    for _ in 0..3 {
        let sentinel = Sentinel::start(Duration::from_millis(1000));
        failover("sentinel", sentinel.config("bench-sentinel:"), || {
            sentinel.primary.stop()
        })
        .await;
    }
    for _ in 0..3 {
        let cluster = Cluster::start(3, 1, Duration::from_millis(1000), &[]);
        let owner = cluster.owner_of("{routing}");
        failover("cluster", cluster.config("bench-cluster:"), || owner.stop()).await;
    }
}

#[tokio::main]
async fn main() {
    claims_at_scale().await;
    failovers().await;
}
