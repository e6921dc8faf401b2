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
use srs_proxy::origin::{Origin, Protocol};
use srs_proxy::store::{Claim, ClaimOutcome, MemoryStore, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::redis::{store_origin, Cluster, RedisServer, Sentinel};

const TTL: Duration = Duration::from_secs(3600);
/// Claims timed per case.
const SAMPLES: usize = 2000;

fn key(prefix: &str, i: usize) -> StreamKey {
    StreamKey::new("__defaultVhost__", "live", &format!("{prefix}{i}")).unwrap()
}

fn origin(i: usize) -> Origin {
    let mut origin = store_origin(&format!("origin-{i:03}"), "10.0.0.1", 8080);
    origin.ports.rtmp = Some(1935);
    origin
}

/// Claims per second, p50 and p99 latency (µs) of `SAMPLES` claims in a
/// row.
async fn time_claims(store: &Store, policy: Policy, keys: impl Fn(usize) -> StreamKey) -> Timing {
    let mut latencies = Vec::with_capacity(SAMPLES);
    let start = Instant::now();
    for i in 0..SAMPLES {
        let key = keys(i);
        let t = Instant::now();
        let claim = store.claim_for(&key, policy, TTL, Some(Protocol::Http)).await;
        assert!(matches!(claim.unwrap(), Claim::Origin(..)));
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let rate = SAMPLES as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Timing {
        rate,
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        commands: 0.0,
    }
}

#[derive(Clone, Copy)]
struct Timing {
    rate: f64,
    p50: f64,
    p99: f64,
    /// Redis: data commands the script ran per claim (a count, so free of
    /// the machine's noise).
    commands: f64,
}

/// Data commands Redis has run (scripts' calls included), not counting the
/// script calls themselves.
fn commands_run(redis: Option<&RedisServer>) -> f64 {
    let Some(redis) = redis else {
        return 0.0;
    };
    let stats = redis.command(&["INFO", "commandstats"]).unwrap().concat();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_eval") && !l.starts_with("cmdstat_info"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<f64>().ok())
        .sum()
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
    new: Timing,
    hit: Timing,
}

async fn case(
    store: &Store,
    redis: Option<&RedisServer>,
    name: &'static str,
    policy: Policy,
    origins: usize,
    streams: usize,
) -> Row {
    fill(store, origins, streams).await;
    let before = commands_run(redis);
    let mut new = time_claims(store, policy, |i| key("new", i)).await;
    let between = commands_run(redis);
    let mut hit = time_claims(store, policy, |i| key("mapped", (i * 7919) % streams)).await;
    new.commands = (between - before) / SAMPLES as f64;
    hit.commands = (commands_run(redis) - between) / SAMPLES as f64;
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
        rows.push(
            case(
                &Store::Memory(MemoryStore::new()),
                None,
                "memory",
                policy,
                origins,
                streams,
            )
            .await,
        );
        redis.command(&["FLUSHALL"]).unwrap();
        redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
        let used = || -> f64 { redis.info("memory", "used_memory").unwrap().parse().unwrap() };
        let empty = used();
        let store = Store::Redis(RedisStore::connect(&config).await.unwrap());
        rows.push(case(&store, Some(&redis), "redis", policy, origins, streams).await);
        if streams == 100_000 {
            // What Redis holds per mapped stream (the case added 2 × SAMPLES).
            let per_stream = (used() - empty) / (streams + SAMPLES) as f64;
            println!("redis memory with {origins} origins: {per_stream:.0} bytes per mapped stream");
        }
    }
    println!(
        "claims, one at a time: claims/s, p50 and p99 µs, p99 ratio to the 2-origin 100-stream case, \
         Redis data commands per claim"
    );
    println!(
        "{:<7} {:<16} {:>7} {:>7} | {:>8} {:>7} {:>7} {:>6} {:>5} | {:>8} {:>7} {:>7} {:>6} {:>5}",
        "store",
        "policy",
        "origins",
        "streams",
        "new/s",
        "p50",
        "p99",
        "ratio",
        "cmds",
        "mapped/s",
        "p50",
        "p99",
        "ratio",
        "cmds"
    );
    for row in &rows {
        let base = rows
            .iter()
            .find(|b| b.store == row.store && b.origins == 2 && b.streams == 100)
            .unwrap();
        let t = |t: Timing, b: Timing| {
            format!(
                "{:>8.0} {:>7.1} {:>7.1} {:>6.2} {:>5.1}",
                t.rate,
                t.p50,
                t.p99,
                t.p99 / b.p99,
                t.commands
            )
        };
        println!(
            "{:<7} {:<16} {:>7} {:>7} | {} | {}",
            row.store,
            row.policy.as_str(),
            row.origins,
            row.streams,
            t(row.new, base.new),
            t(row.hit, base.hit),
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
