//! Two proxy replicas on a Redis that fails over, with real processes on
//! loopback: Sentinel (a primary, a replica, three sentinels) and a Redis
//! Cluster (three primaries, three replicas). The primary holding the
//! routing state is killed (SIGKILL) while a stream is relayed and new ones
//! are being claimed. What must hold, as an order of events:
//!
//! * every claim after the kill is refused (503, "store unavailable") until
//!   a replica has been promoted, and accepted after, on each replica,
//!   without restarting either proxy;
//! * claims made before the failover are still honoured, and both replicas
//!   place new streams on the same origins;
//! * the running relay goes on;
//! * the promoted replica did not have the script (NOSCRIPT is handled),
//!   and origin removals are heard again over the new connection.
//!
//! The cluster has two more: a node serving other slots may die without
//! the store noticing, and the store follows its slot through a migration
//! (ASK while it moves, MOVED after).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use srs_proxy::balance::Policy;
use srs_proxy::config::{Config, RedisConfig, StoreKind};
use srs_proxy::origin::{Origin, Ports};
use srs_proxy::store::{Claim, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::client::{self, get, read_n};
use support::eventually;
use support::origin::FakeOrigin;
use support::proxy::test_config;
use support::redis::{proxy_replicas, store_origin, wait_until, Cluster, RedisServer, Sentinel};

/// SHA-1 of the store's script, as EVALSHA names it.
fn script_sha() -> String {
    let script = include_str!("../src/store/redis.lua");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, script.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until `replica` has every write `primary` has.
fn wait_replicated(primary: &RedisServer, replica: &RedisServer) {
    wait_until(Duration::from_secs(10), "the replica to catch up", || {
        let sent = primary.info("replication", "master_repl_offset");
        let got = replica.info("replication", "slave_repl_offset");
        sent.is_some() && sent == got
    });
}

/// What a failover scenario needs to know of a topology.
struct Topology<'a> {
    redis: RedisConfig,
    primary: &'a RedisServer,
    /// The replica that will be promoted.
    replica: &'a RedisServer,
    /// Whether the topology itself names the replica as the new primary.
    promoted: Box<dyn Fn() -> bool + 'a>,
}

fn config(redis: RedisConfig) -> Config {
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = redis;
    config.balance_policy = Policy::Random;
    // Longer than the outage, so running relays keep their mappings.
    config.stream_ttl = Duration::from_secs(15);
    config
}

/// Registers `origin` through `api` every 200 ms until aborted (SRS keeps
/// sending heartbeats whatever the proxy answers).
fn heartbeat(origin: &FakeOrigin, api: SocketAddr) -> tokio::task::JoinHandle<()> {
    let body = origin.register_body();
    tokio::spawn(async move {
        loop {
            client::post(api, "/api/v1/srs/register", body.clone()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A claim through a proxy: the origin that serves `stream`, or the
/// refusal's text.
async fn claim(proxy: SocketAddr, stream: &str) -> Result<String, String> {
    let resp = client::send(proxy, Method::HEAD, &format!("/live/{stream}.flv"), &[], Bytes::new()).await;
    match resp.status() {
        StatusCode::OK => Ok(resp.headers()["x-origin"].to_str().unwrap().to_string()),
        status => {
            let reply = client::get(proxy, &format!("/live/{stream}.flv")).await;
            Err(format!("{status}: {}", reply.text()))
        }
    }
}

fn origin(id: &str) -> Origin {
    store_origin(id, "127.0.0.1", 1)
}

async fn failover(topology: Topology<'_>) {
    let config = config(topology.redis.clone());
    let [a, b] = proxy_replicas(&config).await;
    let origins = [FakeOrigin::start("origin-1").await, FakeOrigin::start("origin-2").await];
    let beats: Vec<_> = origins.iter().map(|o| heartbeat(o, a.api)).collect();
    let live = eventually(Duration::from_secs(10), || async {
        let listed = get(b.api, "/api/v1/origins").await.json();
        (listed["origins"].as_array()?.len() == 2).then_some(())
    })
    .await;
    assert!(live.is_some(), "the origins never became live");
    // An origin nobody relays from (it serves no HTTP), to be removed after
    // the failover.
    let mut spare = origin("spare");
    spare.ports = Ports {
        rtmp: Some(1),
        ..Ports::default()
    };
    a.ctx.store.upsert_origin(spare, None).await.unwrap();

    // A stream relayed through b all along.
    let running = client::send(b.http, Method::GET, "/live/running.flv", &[], Bytes::new()).await;
    assert_eq!(running.status(), StatusCode::OK);
    let running_origin = running.headers()["x-origin"].to_str().unwrap().to_string();
    let mut running = running.into_body();
    read_n(&mut running, 100_000).await;

    // Streams placed before the failover, through either replica.
    let mut before = BTreeMap::new();
    for i in 0..6 {
        let proxy = if i % 2 == 0 { a.http } else { b.http };
        let stream = format!("before{i}");
        before.insert(
            stream.clone(),
            claim(proxy, &stream).await.expect("claimed before the failover"),
        );
    }
    wait_replicated(topology.primary, topology.replica);
    let sha = script_sha();
    assert_eq!(
        topology.replica.command(&["SCRIPT", "EXISTS", &sha]),
        Some(vec!["0".to_string()]),
        "the replica must not have the script, so its promotion meets NOSCRIPT"
    );
    let mut gone_here = a.ctx.store.subscribe_gone();
    let mut gone_there = b.ctx.store.subscribe_gone();

    let killed = Instant::now();
    topology.primary.stop();

    // New streams, alternately through each replica, until both have
    // accepted five in a row.
    let mut results: [Vec<Result<String, String>>; 2] = [Vec::new(), Vec::new()];
    let mut promoted_at_first_accept = None;
    let mut first_accept = None;
    for i in 0.. {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "claims never worked again: {results:?}"
        );
        let side = i % 2;
        let proxy = [a.http, b.http][side];
        let result = claim(proxy, &format!("during{i}")).await;
        if result.is_ok() && promoted_at_first_accept.is_none() {
            promoted_at_first_accept = Some((topology.promoted)());
            first_accept = Some(killed.elapsed());
        }
        if let Err(reason) = &result {
            assert!(
                reason.contains("503") && reason.contains("store unavailable"),
                "{reason}"
            );
        }
        results[side].push(result);
        let settled = |r: &Vec<Result<String, String>>| r.len() >= 5 && r[r.len() - 5..].iter().all(Result::is_ok);
        if settled(&results[0]) && settled(&results[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "first claim accepted {:?} after the kill; {} and {} claims made through each replica",
        first_accept.unwrap(),
        results[0].len(),
        results[1].len()
    );
    for (side, results) in results.iter().enumerate() {
        assert!(
            results[0].is_err(),
            "replica {side}: a claim right after the kill was accepted"
        );
        let first_ok = results.iter().position(Result::is_ok).unwrap();
        assert!(
            results[first_ok..].iter().all(Result::is_ok),
            "replica {side}: refused again after accepting: {results:?}"
        );
    }
    assert_eq!(
        promoted_at_first_accept,
        Some(true),
        "a claim was accepted before the replica was promoted"
    );
    // The new primary ran the script after loading it itself.
    assert_eq!(
        topology.replica.command(&["SCRIPT", "EXISTS", &sha]),
        Some(vec!["1".to_string()])
    );

    // Claims from before are honoured; new streams agree across replicas.
    for (stream, origin) in &before {
        assert_eq!(claim(a.http, stream).await.as_ref(), Ok(origin), "{stream} via a");
        assert_eq!(claim(b.http, stream).await.as_ref(), Ok(origin), "{stream} via b");
    }
    for i in 0..6 {
        let stream = format!("after{i}");
        let first = claim(a.http, &stream).await.unwrap();
        assert_eq!(claim(b.http, &stream).await.unwrap(), first, "{stream}");
    }

    // The relay never stopped.
    read_n(&mut running, 1_000_000).await;
    assert_eq!(claim(a.http, "running").await, Ok(running_origin));

    // Removals are heard on the new connections, by both replicas.
    assert!(b.ctx.store.remove_origin("spare").await.unwrap());
    for gone in [&mut gone_here, &mut gone_there] {
        let heard = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if gone.recv().await.expect("gone channel").id == "spare" {
                    return;
                }
            }
        })
        .await;
        assert!(heard.is_ok(), "a replica did not hear of the removal");
    }
    for beat in beats {
        beat.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_promotes_the_replica_and_both_proxies_follow() {
    let sentinel = Sentinel::start(Duration::from_millis(1000));
    let redis = sentinel.config("sentinel:");
    failover(Topology {
        redis,
        primary: &sentinel.primary,
        replica: &sentinel.replica,
        promoted: Box::new(|| {
            sentinel.primary_port() == Some(sentinel.replica.port())
                && sentinel.replica.info("replication", "role").as_deref() == Some("master")
        }),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fails_over_the_slot_owner_and_both_proxies_follow() {
    let cluster = Cluster::start(3, 1, Duration::from_millis(1000), &[]);
    let redis = cluster.config("cluster:");
    let owner = cluster.owner_of("{routing}");
    let replica = cluster.replica_of(owner);
    failover(Topology {
        redis,
        primary: owner,
        replica,
        promoted: Box::new(|| {
            replica.info("replication", "role").as_deref() == Some("master")
                && cluster.owner_of("{routing}").port() == replica.port()
        }),
    })
    .await;
}

fn key(stream: &str) -> StreamKey {
    StreamKey::new("__defaultVhost__", "live", stream).unwrap()
}

async fn place(store: &Store, stream: &str) -> Result<String, String> {
    match store
        .claim(&key(stream), Policy::LeastStreams, Duration::from_secs(60))
        .await
    {
        Ok(Claim::Origin(o, _)) => Ok(o.id.to_string()),
        other => Err(format!("{other:?}")),
    }
}

/// With `cluster-require-full-coverage no` (what the README recommends),
/// a primary serving other slots can die while the store works on: it only
/// ever talks to the primary of its own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_serving_other_slots_can_die() {
    let cluster = Cluster::start(
        3,
        0,
        Duration::from_millis(1000),
        &["--cluster-require-full-coverage", "no"],
    );
    let store = Store::Redis(RedisStore::connect(&cluster.config("other-slots:")).await.unwrap());
    store.upsert_origin(origin("a"), None).await.unwrap();
    assert_eq!(place(&store, "before").await, Ok("a".into()));
    let owner = cluster.owner_of("{routing}").port();
    let other = cluster.nodes.iter().find(|n| n.port() != owner).unwrap();
    other.stop();
    // Claims go on while the cluster has not noticed yet, and after it has
    // marked the node failed.
    for i in 0..5 {
        assert_eq!(place(&store, &format!("early{i}")).await, Ok("a".into()), "claim {i}");
    }
    wait_until(Duration::from_secs(30), "the cluster to mark the node failed", || {
        cluster.node(owner).command(&["CLUSTER", "NODES"]).is_some_and(|n| {
            n.concat()
                .lines()
                .any(|l| l.contains("master,fail") && !l.contains("fail?"))
        })
    });
    for i in 0..5 {
        assert_eq!(place(&store, &format!("late{i}")).await, Ok("a".into()), "claim {i}");
    }
    store.ping().await.expect("ready all along");
}

/// The store's slot migrates to another primary while claims run: calls
/// are answered by the old owner while it has the keys, by the new one
/// after `ASK` once it has them all, and after `MOVED` once the move is
/// done; a claim caught while the keys are split waits for the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_slot_through_a_migration() {
    let cluster = Cluster::start(3, 0, Duration::from_millis(5000), &[]);
    let mut redis = cluster.config("migrating:");
    // A claim caught mid-move waits for it (TRYAGAIN) within this bound.
    redis.timeout = Duration::from_secs(5);
    let store = Store::Redis(RedisStore::connect(&redis).await.unwrap());
    // Every room set exists, so every key the script declares is there.
    let mut all = origin("a");
    all.ports = Ports {
        rtmp: Some(1),
        http: Some(1),
        api: Some(1),
        srt: Some(1),
        rtc: Some(1),
    };
    store.upsert_origin(all, None).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    assert!(store.remove_origin("b").await.unwrap());
    // An unhealthy origin with a prober: health records and probe turns.
    store.upsert_origin(origin("c"), None).await.unwrap();
    store.report_failure("c", "refused").await.unwrap();
    store
        .probe_turns(&["c".to_string()], "p", Duration::from_secs(60))
        .await
        .unwrap();
    for i in 0..5 {
        place(&store, &format!("before{i}")).await.unwrap();
    }

    let source = cluster.owner_of("{routing}");
    let target = cluster.nodes.iter().find(|n| n.port() != source.port()).unwrap();
    let id = |n: &RedisServer| n.command(&["CLUSTER", "MYID"]).unwrap().concat();
    let slot = source.command(&["CLUSTER", "KEYSLOT", "{routing}"]).unwrap().concat();
    let (source_id, target_id) = (id(source), id(target));
    let ok = |reply: Option<Vec<String>>| assert_eq!(reply, Some(vec!["OK".to_string()]));
    ok(target.command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]));
    ok(source.command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]));
    let keys = source.command(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]).unwrap();
    assert!(keys.len() >= 10, "{keys:?}");

    // Migrating, nothing moved yet: the source answers.
    assert_eq!(place(&store, "migrating").await, Ok("a".into()));

    // Half the keys moved: a claim now waits until the rest has moved.
    let migrate = |keys: &[String]| {
        let port = target.port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", port.as_str(), "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        ok(source.command(&args));
    };
    let keys = source.command(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]).unwrap();
    let (first, rest) = keys.split_at(keys.len() / 2);
    migrate(first);
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { place(&store, "split").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a claim ran while the keys were split");
    migrate(rest);
    assert_eq!(
        waiting.await.unwrap(),
        Ok("a".into()),
        "the waiting claim ran once all keys moved"
    );

    // Every key moved, the slot not yet handed over: ASK, answered by the
    // target.
    assert_eq!(place(&store, "asked").await, Ok("a".into()));
    // Handed over the way redis-cli does it: the new owner first.
    ok(target.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]));
    ok(source.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]));
    for node in cluster
        .nodes
        .iter()
        .filter(|n| n.port() != target.port() && n.port() != source.port())
    {
        ok(node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]));
    }
    // Handed over: MOVED, and the store follows the slot.
    let calls = |n: &RedisServer| -> u64 {
        ["cmdstat_evalsha", "cmdstat_eval"]
            .iter()
            .filter_map(|stat| n.info("commandstats", stat))
            .filter_map(|v| v.split(',').next()?.strip_prefix("calls=")?.parse::<u64>().ok())
            .sum()
    };
    let before = calls(target);
    assert_eq!(place(&store, "moved").await, Ok("a".into()));
    assert!(calls(target) > before, "the claim after the move ran on the new owner");

    // Nothing was lost or split on the way.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_streams(cursor.as_deref(), 100).await.unwrap();
        listed.extend(page.streams.into_iter().map(|s| s.key.stream.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    listed.sort();
    listed.dedup();
    let mut expected: Vec<String> = (0..5).map(|i| format!("before{i}")).collect();
    expected.extend(["asked", "migrating", "moved", "split"].map(String::from));
    expected.sort();
    assert_eq!(listed, expected);
    assert!(source.keys("migrating:*").is_empty());
}
