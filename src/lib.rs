//! srs-proxy: one origin cluster out of a pool of SRS media servers.
//!
//! Publishers and players connect to the proxy; the proxy decides which SRS
//! origin serves each stream (one stream, one origin, agreed through the
//! store by every replica) and relays the connection there.
//!
//! # Layout
//!
//! The modules read like the request path:
//!
//! * [`config`] — flags > env (`PROXY_*`, `.env`) > YAML file > defaults.
//! * [`stream_key`] — the one identity of a stream, `vhost/app/stream`.
//! * [`origin`] — an SRS origin and the endpoint forms SRS advertises.
//! * [`store`] — routing state: origins, stream claims, HLS sessions
//!   (memory or Redis behind one contract).
//! * [`balance`] — pure policies that pick an origin for a new stream.
//! * [`context`] — the cloneable handle every task gets: config, store,
//!   metrics, shutdown; `claim` turns a stream key into a [`context::StreamLease`].
//! * [`crd`] — the `OriginPool` custom resource; [`discovery`] watches it
//!   and the EndpointSlices it names and registers ready pods as origins.
//! * [`api`] — the system API: versions (readiness), register, metrics.
//! * [`http`] — HTTP-FLV / HTTP-TS / HLS streaming and static files;
//!   [`hls`] rewrites playlists so segments follow their stream.
//! * [`rtmp`] — RTMP publish/play: codec, session, origin replay, relay.
//! * [`metrics`], [`shutdown`] — Prometheus registry and the drain signal.
//! * [`server`] — binds the listeners and runs every server until shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod balance;
pub mod claim;
pub mod config;
pub mod context;
pub mod crd;
pub mod discovery;
pub mod discovery_state;
pub mod error;
pub mod hls;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod origin;
pub mod rtmp;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod stream_key;

/// Version reported by `/api/v1/versions` and the `Server` header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Signature used in the `Server` header, as SRS does with its own name.
pub const SIGNATURE: &str = "srs-proxy";
