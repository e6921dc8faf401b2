//! Helpers shared by the integration tests: real sockets on 127.0.0.1:0.
//!
//! * [`proxy`] — the proxy in-process with a chosen config and store.
//! * [`origin`] — a fake SRS HTTP origin (FLV, TS, HLS) that registers itself
//!   through the real register API.
//! * [`flv_origin`] — a fake SRS origin serving real FLV tag by tag as the
//!   test feeds it, with an ordered log of what it saw.
//! * [`hls_origin`] — a fake SRS HLS origin that counts requests per path
//!   and can hold its answers until the test releases them.
//! * [`fast_origin`] — a raw-TCP synthetic origin for memory tests and
//!   benchmarks (bulk or paced streams, playlists, segments).
//! * [`client`] — a minimal HTTP/1.1 client over hyper.
//! * [`discovery`] — what discovery tests check through the proxy.
//! * [`redis`] — a real redis-server on a free port.
//! * [`rml`] — an independent RTMP client (`rml_rtmp`).
//! * [`raw_rtmp`] — an RTMP client on the proxy's own codec, for what real
//!   clients never send.
//! * [`rtmp_origin`] — a fake SRS RTMP origin (with HTTP-FLV of what was
//!   published), built on the proxy's RTMP codec.
//! * [`kube`] — a fake Kubernetes API server (list/watch, status, leases).
//! * [`kube_cluster`] — a real control plane (etcd, kube-apiserver,
//!   kube-controller-manager) built by `make kube-bin`.
//! * [`srt`] — libsrt's `srt-live-transmit` as SRT origins and clients.
#![allow(dead_code)]

pub mod client;
pub mod discovery;
pub mod fast_origin;
pub mod flv_origin;
pub mod hls_origin;
pub mod kube;
pub mod kube_cluster;
pub mod origin;
pub mod proxy;
pub mod raw_rtmp;
pub mod redis;
pub mod rml;
pub mod rtmp_origin;
pub mod srt;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a bench figure: median, p90 and max of `ms` (milliseconds).
pub fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<44} median {:>8.1} ms   p90 {:>8.1} ms   max {:>8.1} ms   ({} rounds)",
        at(0.5),
        at(0.9),
        at(1.0),
        ms.len()
    );
}

/// This process's resident memory, for tests that bound memory per
/// connection (each alone in its test binary).
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}
