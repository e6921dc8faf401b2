//! `make bench`: relay throughput and claim cost, as ratios against a
//! baseline measured in the same run (absolute numbers vary by machine).
//!
//! * HTTP-FLV read straight from the fake origin vs. through the proxy.
//! * Claims on the memory store: hit path vs. a bare map lookup baseline.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use srs_proxy::balance::Policy;
use srs_proxy::store::{MemoryStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};

const BYTES: usize = 256 * 1024 * 1024;

async fn read_stream(addr: std::net::SocketAddr, path: &str) -> Duration {
    let start = Instant::now();
    let resp = support::client::send(addr, Method::GET, path, &[], Bytes::new()).await;
    let mut body = resp.into_body();
    let mut n = 0;
    while n < BYTES {
        let frame = body.frame().await.expect("stream ended").expect("stream failed");
        if let Ok(data) = frame.into_data() {
            n += data.len();
        }
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let proxy = TestProxy::start(test_config()).await;
    let origin = FakeOrigin::start("bench").await;
    origin.register(proxy.api).await;

    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let path = format!("/live/bench{i}.flv");
        direct.push(BYTES as f64 / read_stream(origin.addr, &path).await.as_secs_f64() / 1e6);
        proxied.push(BYTES as f64 / read_stream(proxy.http, &path).await.as_secs_f64() / 1e6);
    }
    let (d, p) = (median(direct), median(proxied));
    println!(
        "http-flv relay: direct {d:.0} MB/s, through proxy {p:.0} MB/s, ratio {:.2}",
        p / d
    );

    let store = Store::Memory(MemoryStore::new());
    let body = FakeOrigin::start("claims").await.register_body();
    let origin = srs_proxy::api::parse_register(body.as_bytes()).unwrap();
    store.upsert_origin(origin, None).await.unwrap();
    let keys: Vec<StreamKey> = (0..1000)
        .map(|i| StreamKey::new("v.example.com", "live", &format!("s{i}")).unwrap())
        .collect();
    for k in &keys {
        store
            .claim(k, Policy::LeastStreams, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let n = 200_000;
    let start = Instant::now();
    for i in 0..n {
        let _ = store
            .claim(&keys[i % keys.len()], Policy::LeastStreams, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let claim = start.elapsed().as_secs_f64() / n as f64;
    let map: std::collections::HashMap<StreamKey, String> = keys.iter().map(|k| (k.clone(), "x".to_string())).collect();
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(map.get(&keys[i % keys.len()]).cloned());
    }
    let lookup = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "memory claim (hit): {:.0} ns/op, bare map lookup {:.0} ns/op, ratio {:.1}",
        claim * 1e9,
        lookup * 1e9,
        claim / lookup
    );
}
