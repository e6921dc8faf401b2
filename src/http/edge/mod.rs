//! Edge mode: one origin connection per stream and format per replica,
//! however many HTTP-FLV, RTMP or HTTP-TS players watch it.
//!
//! Off by default; then nothing here runs and every player gets its own
//! origin request ([`super::live`]). On, an HTTP/1.1 GET of a live
//! `.flv` or `.ts` (and an RTMP play, in `rtmp/edge.rs`, which shares the
//! FLV hub) joins the stream's [`hub::Hub`] of that format: one claim, one
//! origin request, the body cut into frames ([`format`]: FLV tags from
//! [`flv`], TS units from [`ts`]) kept once in a [`ring::Ring`] (the FLV
//! header flags, `onMetaData` and the latest sequence headers, or the
//! latest PAT and PMT; and the frames since the last keyframe), and one
//! [`player::Pump`] per player that writes them in its own framing
//! ([`play`]) from its own cursor.
//!
//! HLS is not streamed: [`hls_cache`] fetches each playlist and segment
//! once per replica (single flight) and keeps it in a bounded [`lru::Lru`].
//!
//! This module owns the table of hubs and the HLS cache (one per replica,
//! built by [`crate::server`] and shared by the listeners);
//! it does not decide where a stream lives (that is
//! [`crate::claim`]) and never parses HTTP requests.

pub mod flv;
pub mod format;
pub mod hls_cache;
pub mod hub;
pub mod lru;
pub mod play;
pub mod player;
pub mod ring;
pub mod ts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::EdgeConfig;
use crate::metrics::Metrics;
use crate::stream_key::StreamKey;

/// A hub's place in the table: its stream and what the origin sends.
type HubId = (StreamKey, format::Format);

/// The hubs of this replica, by stream and format; a cheap handle shared
/// by the listeners.
#[derive(Clone)]
pub struct Edge {
    /// Live and starting hubs. A hub removes itself when it ends.
    hubs: Arc<Mutex<HashMap<HubId, Arc<hub::Hub>>>>,
    /// The ring bounds every hub gets, from the `edge` config.
    limits: ring::Limits,
    /// HLS playlists and segments fetched once and kept (empty while edge
    /// mode is off).
    pub hls_cache: hls_cache::HlsCache,
}

impl Edge {
    pub fn new(config: &EdgeConfig, metrics: &Metrics) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            hubs: Arc::default(),
            hls_cache: hls_cache::HlsCache::new(config, metrics),
            limits: ring::Limits {
                gop_bytes: config.gop_cache_bytes as u64,
                gop_ms: ms(config.gop_cache_duration),
                lag_ms: ms(config.player_lag),
            },
        }
    }

    fn hubs(&self) -> MutexGuard<'_, HashMap<HubId, Arc<hub::Hub>>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self) -> ring::Limits {
        self.limits
    }
}
