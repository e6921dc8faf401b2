//! The proxy, in-process, on 127.0.0.1 port 0.

use std::net::SocketAddr;
use std::time::Duration;

use srs_proxy::config::{Config, HealthConfig, ListenAddr};
use srs_proxy::context::Context;
use srs_proxy::server::{self, Listeners, Stopped};
use srs_proxy::store::{MemoryStore, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Config for tests: loopback port 0 everywhere, short timeouts, no
/// origin probes (they are connections fake origins would count; health
/// tests turn them on).
pub fn test_config() -> Config {
    let any = ListenAddr("127.0.0.1:0".parse().unwrap());
    Config {
        http_server: any,
        rtmp_server: any,
        http_api: any,
        webrtc_server: any,
        srt_server: any,
        system_api: any,
        grace_quit_timeout: Duration::from_secs(2),
        force_quit_timeout: Duration::from_secs(4),
        origin_connect_timeout: Duration::from_secs(2),
        health: HealthConfig {
            probe_interval: Duration::ZERO,
            ..HealthConfig::default()
        },
        ..Config::default()
    }
}

/// A running proxy. Dropping it aborts everything it runs.
pub struct TestProxy {
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub api: SocketAddr,
    /// The SRT port (UDP).
    pub srt: SocketAddr,
    /// WebRTC signalling (`PROXY_HTTP_API`).
    pub rtc_api: SocketAddr,
    /// WebRTC media (`PROXY_WEBRTC_SERVER`, UDP).
    pub rtc_udp: SocketAddr,
    pub ctx: Context,
    /// Sends the proxy its SIGTERM.
    signal: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Stopped>>,
}

impl TestProxy {
    /// A proxy with its own memory store.
    pub async fn start(config: Config) -> Self {
        Self::start_with_store(config, Store::Memory(MemoryStore::new())).await
    }

    /// A proxy on a given store (share one store between proxies to model
    /// replicas).
    pub async fn start_with_store(config: Config, store: Store) -> Self {
        let listeners = Listeners::bind(&config).await.expect("bind");
        let http = listeners.http.local_addr().unwrap();
        let rtmp = listeners.rtmp.local_addr().unwrap();
        let api = listeners.system_api.local_addr().unwrap();
        let srt = listeners.srt.local_addr().unwrap();
        let rtc_api = listeners.http_api.local_addr().unwrap();
        let rtc_udp = listeners.webrtc.local_addr().unwrap();
        let ctx = Context::new(config, store);
        let (signal, received) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(ctx.clone(), listeners, async {
            let _ = received.await;
        }));
        Self {
            http,
            rtmp,
            api,
            srt,
            rtc_api,
            rtc_udp,
            ctx,
            signal: Some(signal),
            task: Some(task),
        }
    }

    /// Sends the signal SIGTERM sends and waits for the proxy to stop.
    pub async fn drain(&mut self) -> Stopped {
        let _ = self.signal.take().expect("running").send(());
        self.task.take().expect("running").await.expect("proxy task")
    }
}
impl Drop for TestProxy {
    fn drop(&mut self) {
        self.ctx.shutdown.abort();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
