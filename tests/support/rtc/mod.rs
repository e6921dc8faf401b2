//! WebRTC test helpers, built on the webrtc crate: a fake SRS WebRTC
//! origin ([`origin`]), WHIP/WHEP peers and STUN checks ([`peer`]), and the
//! proxy with its WebRTC listeners ([`RtcProxy`]).
//!
//! Kept out of `support/mod.rs` so the other test binaries neither build
//! nor link webrtc-rs: `tests/rtc*.rs` include it with `#[path]`.
#![allow(dead_code)]

pub mod origin;
pub mod peer;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use srs_proxy::config::{Config, WebrtcConfig};
use srs_proxy::server::Stopped;
use srs_proxy::store::{MemoryStore, Store};

use crate::support::client::{self, Reply};
use crate::support::proxy::{test_config, TestProxy};

/// The proxy (all its listeners, through `server::run`) seen from WebRTC.
pub struct RtcProxy {
    pub proxy: TestProxy,
    /// `PROXY_HTTP_API`.
    pub api: SocketAddr,
    /// `PROXY_WEBRTC_SERVER`.
    pub udp: SocketAddr,
}

/// [`test_config`] with these WebRTC settings.
pub fn config(webrtc: WebrtcConfig) -> Config {
    Config {
        webrtc,
        ..test_config()
    }
}

impl RtcProxy {
    pub async fn start(webrtc: WebrtcConfig) -> Self {
        Self::start_with_store(config(webrtc), Store::Memory(MemoryStore::new())).await
    }

    /// A proxy with a memory store in which `origin` is registered.
    pub async fn with_origin(origin: &origin::RtcOrigin, webrtc: WebrtcConfig) -> Self {
        Self::configured_with_origin(origin, config(webrtc)).await
    }

    /// [`RtcProxy::with_origin`] with a whole config.
    pub async fn configured_with_origin(origin: &origin::RtcOrigin, config: Config) -> Self {
        let proxy = Self::start_with_store(config, Store::Memory(MemoryStore::new())).await;
        proxy
            .proxy
            .ctx
            .store
            .upsert_origin(origin.origin(), None)
            .await
            .unwrap();
        proxy
    }

    pub async fn start_with_store(config: Config, store: Store) -> Self {
        let proxy = TestProxy::start_with_store(config, store).await;
        let (api, udp) = (proxy.rtc_api, proxy.rtc_udp);
        Self { proxy, api, udp }
    }

    /// Sends the proxy its SIGTERM and waits until it has stopped.
    pub async fn drain(&mut self) -> Stopped {
        self.proxy.drain().await
    }

    /// POSTs an SDP offer (WHIP/WHEP) with extra headers.
    pub async fn post_sdp(&self, target: &str, offer: &str, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("content-type", "application/sdp")];
        all.extend_from_slice(headers);
        client::request(self.api, Method::POST, target, &all, Bytes::from(offer.to_string())).await
    }

    /// A counter or gauge of the proxy's registry by name and labels.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.proxy.ctx.metrics.render();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }
}
