//! `make bench`: how long a dead origin's streams stay down, with origins
//! registered by heartbeat (every second, as SRS does with `heartbeat {
//! interval 1; ports on; }`), with the memory store and with Redis.
//!
//! Each round starts two fake origins, plays a stream, kills the origin
//! serving it (its listener closes with it, like a crashed SRS pod) and
//! measures from the kill:
//!
//! * `next play`: to the first successful play of that stream (the request
//!   that finds the origin dead is served by the other one);
//! * `probes alone`: nobody plays; to the origin listed unhealthy by the
//!   probes (`health.probe_interval` 1 s, `health.failures` 2);
//! * `black hole`: the origin accepts connections and never answers; from
//!   the play request to it being served by the other origin
//!   (`origin_response_timeout` 10 s).
//!
//! Printed, not asserted: the figures depend on the machine's load.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use srs_proxy::config::{Config, HealthConfig, StoreKind};
use srs_proxy::store::{RedisStore, Store};
use support::discovery::served_by;
use support::origin::{BlackHole, FakeOrigin};
use support::proxy::{test_config, TestProxy};
use support::redis::RedisServer;
use support::summary;
use tokio::task::JoinHandle;

const ROUNDS: usize = 10;
const BLACK_HOLE_ROUNDS: usize = 2;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

/// The defaults an operator gets, on loopback.
fn config(redis: Option<&RedisServer>, round: usize) -> Config {
    let mut config = test_config();
    config.health = HealthConfig::default();
    config.origin_connect_timeout = Config::default().origin_connect_timeout;
    if let Some(redis) = redis {
        config.load_balancer_type = StoreKind::Redis;
        config.redis = redis.config(&format!("bench-failover-{round}:"));
    }
    config
}

async fn proxy(config: Config) -> TestProxy {
    match config.load_balancer_type {
        StoreKind::Redis => {
            let store = RedisStore::connect(&config.redis).await.unwrap();
            TestProxy::start_with_store(config, Store::Redis(store)).await
        }
        StoreKind::Memory => TestProxy::start(config).await,
    }
}

/// Registers through the register API every second, as SRS does.
fn heartbeat(body: String, api: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            support::client::post(api, "/api/v1/srs/register", body.clone()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn until_listed(proxy: &TestProxy, n: usize) {
    let listed = support::eventually(Duration::from_secs(10), || async {
        (proxy.ctx.store.list_origins().await.unwrap().len() == n).then_some(())
    })
    .await;
    assert!(listed.is_some(), "origins registered");
}

/// Kill → the next play served elsewhere (`probes` false), or kill → the
/// origin unhealthy with nobody playing (`probes` true).
async fn round(redis: Option<&RedisServer>, round: usize, probes: bool) -> f64 {
    let proxy = proxy(config(redis, round)).await;
    let mut origins = vec![FakeOrigin::start("a").await, FakeOrigin::start("b").await];
    let beats: Vec<_> = origins
        .iter()
        .map(|o| heartbeat(o.register_body(), proxy.api))
        .collect();
    until_listed(&proxy, 2).await;
    let serving = served_by(&proxy, "cam").await.expect("served");
    let dead = origins.iter().position(|o| o.name == serving).unwrap();
    let killed = Instant::now();
    drop(origins.remove(dead));
    beats[dead].abort();
    if probes {
        loop {
            let listed = proxy.ctx.store.list_origins().await.unwrap();
            if listed.iter().any(|o| *o.origin.id == *serving && !o.healthy) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "never unhealthy");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    } else {
        while served_by(&proxy, "cam").await.is_none() {
            assert!(killed.elapsed() < Duration::from_secs(60), "never served again");
        }
    }
    let ms = killed.elapsed().as_secs_f64() * 1000.0;
    beats.iter().for_each(JoinHandle::abort);
    ms
}

/// A play mapped to a black hole until it is served by the other origin.
async fn black_hole_round(round: usize) -> f64 {
    let proxy = proxy(config(None, round)).await;
    let hole = BlackHole::start().await;
    let hole_beat = heartbeat(hole.register_body("hole"), proxy.api);
    let good = FakeOrigin::start("good").await;
    until_listed(&proxy, 1).await;
    // The stream is placed on the black hole before the good origin exists.
    let key = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", "live", "cam").unwrap();
    let (placed, _) = proxy
        .ctx
        .claim_origin(&key, srs_proxy::origin::Protocol::Http)
        .await
        .unwrap();
    assert_eq!(&*placed.id, "hole");
    let good_beat = heartbeat(good.register_body(), proxy.api);
    until_listed(&proxy, 2).await;
    let started = Instant::now();
    let by = served_by(&proxy, "cam").await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(by.as_deref(), Some("good"));
    hole_beat.abort();
    good_beat.abort();
    ms
}

async fn bench() {
    let redis = RedisServer::start();
    for (name, store) in [("memory", None), ("redis", Some(&redis))] {
        let mut next_play = Vec::new();
        let mut probed = Vec::new();
        for i in 0..ROUNDS {
            next_play.push(round(store, i, false).await);
            probed.push(round(store, ROUNDS + i, true).await);
        }
        println!("Origin killed (listener closed), heartbeat registration, {name} store:");
        summary("kill → next play served elsewhere", next_play);
        summary("kill → unhealthy by probes alone", probed);
    }
    let holes = futures_util::future::join_all((0..BLACK_HOLE_ROUNDS).map(black_hole_round)).await;
    println!("Origin accepts but never answers (origin_response_timeout 10 s), memory store:");
    summary("play → served elsewhere", holes);
    redis.stop();
}
