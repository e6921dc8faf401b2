//! A proxy process that is paused (SIGSTOP, as a CPU-starved or frozen
//! machine would pause it) for longer than a static origin's TTL keeps its
//! relays to that origin once it runs again: late renewing is not the
//! origin going away.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use srs_proxy::server::STATIC_ORIGIN_TTL;
use support::client::{self, read_n};
use support::eventually;
use support::origin::FakeOrigin;

/// Kills the proxy process when the test ends, however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `name=Some(addr)` from the "serving" log line.
fn listed(line: &str, name: &str) -> SocketAddr {
    let from = line.find(&format!(" {name}=Some(")).expect(name) + name.len() + 7;
    let to = from + line[from..].find(')').unwrap();
    line[from..to].parse().unwrap()
}

/// Starts the binary with the memory store and `origin` as its static
/// (default backend) origin; returns it with its HTTP and system API
/// addresses.
fn start(origin: SocketAddr) -> (Proxy, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_srs-proxy"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PROXY_")) {
        cmd.env_remove(k);
    }
    for key in [
        "HTTP_SERVER",
        "RTMP_SERVER",
        "HTTP_API",
        "WEBRTC_SERVER",
        "SRT_SERVER",
        "SYSTEM_API",
    ] {
        cmd.env(format!("PROXY_{key}"), "127.0.0.1:0");
    }
    cmd.env("PROXY_DEFAULT_BACKEND_ENABLED", "on")
        .env("PROXY_DEFAULT_BACKEND_IP", origin.ip().to_string())
        .env("PROXY_DEFAULT_BACKEND_HTTP", origin.port().to_string())
        .env("RUST_LOG", "srs_proxy=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start srs-proxy");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let proxy = Proxy(child);
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("serving"))
        .expect("the proxy says where it serves");
    // Keep draining the log so the proxy never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    (proxy, listed(&serving, "http"), listed(&serving, "system_api"))
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Store sweeps the proxy has run (one a second).
async fn sweeps(api: SocketAddr) -> u64 {
    let text = client::get(api, "/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with("srs_proxy_store_operation_seconds_count{") && l.contains("op=\"sweep\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_paused_proxy_keeps_its_relays_to_a_static_origin() {
    let origin = FakeOrigin::start("static").await;
    let (proxy, http, api) = start(origin.addr);
    let resp = client::send(http, Method::GET, "/live/cam.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    read_n(&mut body, 100_000).await;

    let pid = proxy.0.id();
    signal(pid, "-STOP");
    tokio::time::sleep(STATIC_ORIGIN_TTL + Duration::from_secs(1)).await;
    signal(pid, "-CONT");
    // Housekeeping runs again (a sweep would have expired the origin and
    // ended the relay); then the relay still delivers.
    let before = sweeps(api).await;
    let swept = eventually(Duration::from_secs(15), || async {
        (sweeps(api).await >= before + 2).then_some(())
    })
    .await;
    assert!(swept.is_some(), "housekeeping runs again after the pause");
    let more = tokio::time::timeout(Duration::from_secs(15), read_n(&mut body, 1_000_000)).await;
    assert!(more.is_ok(), "the relay goes on");
    let origins = client::get(api, "/api/v1/origins").await.json();
    assert_eq!(origins["origins"][0]["id"], "default-backend");
    assert_eq!(origins["origins"][0]["healthy"], true);
}
