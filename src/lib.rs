//! srs-proxy: one origin cluster out of a pool of SRS media servers.
//!
//! Publishers and players connect to the proxy; the proxy decides which SRS
//! origin serves each stream (one stream, one origin, agreed through the
//! store by every replica) and relays the connection there.
//!
//! # Layout
//!
//! Process and shared state:
//!
//! * [`config`] — flags > env (`PROXY_*`, `.env`) > YAML file > defaults;
//!   one row per setting in `config/keys.rs`.
//! * [`server`] — binds the listeners and owns the lifecycle: run, drain on
//!   the signal, abort after the grace period, force-quit. [`shutdown`]
//!   carries the signal to every task.
//! * [`listener`] — every listening socket: backlog, accept loop,
//!   connection cap, the drain contract.
//! * [`context`] — the cloneable handle every task gets: config, store,
//!   metrics, shutdown, what discovery says.
//! * [`error`] — where a failure came from and whether another origin
//!   could serve; [`metrics`] — the Prometheus registry.
//! * [`logging`] — log lines that no input can forge and no closed stderr
//!   can turn into a panic.
//!
//! Routing (the control plane the data plane asks through [`claim`]):
//!
//! * [`stream_key`] — the one identity of a stream, `vhost/app/stream`.
//! * [`origin`] — an SRS origin and the endpoint forms SRS advertises.
//! * [`claim`] — stream key → origin, atomically; the lease that keeps the
//!   mapping while a relay runs and ends the relay when the origin goes;
//!   connecting with one more origin when the first cannot be reached.
//! * [`health`] — whether origins answer: failed connects reported by the
//!   data plane, probes (one replica per origin), shared in the store.
//! * [`store`] — routing state: origins, stream claims, sessions (memory or
//!   Redis behind one contract); [`balance`] — pure placement policies.
//! * [`discovery`] — Kubernetes EndpointSlices (via the [`crd`]
//!   `OriginPool`) into the store; [`discovery_state`] is what it tells the
//!   rest (readiness, policy). [`api`] — the system API: register
//!   (heartbeats), versions, metrics, admin listings.
//!
//! Data plane:
//!
//! * [`http`] — HTTP-FLV / HTTP-TS / HLS and static files; [`hls`]
//!   rewrites playlists so segments follow their stream; `http/edge`
//!   is edge mode (off by default): one origin connection per stream per
//!   replica and format feeds every HTTP-FLV and RTMP (HTTP-TS) player of
//!   it from a GOP cache.
//! * [`rtmp`] — RTMP publish/play: codec, session, origin replay, relay.
//! * [`srt`] — SRT publish/play: codec, the UDP port's receive loop, the
//!   origin handshake, relay by client address and socket id.
//! * [`rtc`] — WebRTC: WHIP/WHEP signalling and UDP media routed by the
//!   ICE username.
//!
//! # An HTTP-FLV play, file by file
//!
//! `listener.rs` accepts the connection (cap, drain) → `http/plain.rs`
//! reads the plain `GET` (anything else goes to hyper in `http/serve.rs`)
//! → `http/route.rs` classifies `GET /live/s.flv` and
//! parses it into an `http/request.rs` `StreamRequest` (key from
//! `stream_key.rs`) → `http/live.rs` claims the stream (`claim.rs` →
//! `store/`, policy from `balance.rs`) → `http/passthrough.rs` sends the
//! GET to the origin and reads its response head, is handed the player's
//! connection (`Detach` in `http/serve.rs`) and moves the
//! body through `http/pipe.rs` (splice), its chunked framing walked by
//! `http/framing.rs`, until either side ends or the lease says the origin
//! is gone. HEAD and HTTP/1.0 plays go through hyper in `http/forward.rs`.
//!
//! # An RTMP publish, file by file
//!
//! `listener.rs` accepts → `rtmp/mod.rs` runs the connection →
//! `rtmp/handshake.rs` → `rtmp/session.rs` answers `connect`,
//! `createStream`, … until `publish` (messages through `rtmp/conn.rs`,
//! `chunk.rs`, `amf0.rs`, `command.rs`) → `rtmp/key.rs` turns tcUrl and
//! stream name into the key → `claim.rs` places the stream →
//! `rtmp/upstream.rs` connects to the origin and replays the setup →
//! `rtmp/relay.rs` relays both ways; the publisher's lease releases the
//! mapping when it leaves.
//!
//! # An SRT publish, file by file
//!
//! `srt/serve.rs` receives every datagram on the UDP port: it answers the
//! induction with a cookie (`srt/cookie.rs`, `srt/handshake.rs`), checks
//! the conclusion and its stream id (`srt/stream_id.rs` → `stream_key.rs`)
//! → `srt/session.rs` claims the stream (`claim.rs`) in a task of its own
//! → `srt/upstream.rs` shakes hands with the origin → `srt/relay.rs`
//! relays both ways, found by `srt/packet.rs` headers; the publisher's
//! lease releases the mapping when it leaves.
//!
//! # A WHIP publish, file by file
//!
//! `listener.rs` accepts → `http/serve.rs` → `rtc/signal.rs` checks the
//! offer and claims the stream (`claim.rs`) → `rtc/offer.rs` sends it to
//! the origin's API port → `rtc/sdp.rs` rewrites the answer's candidates
//! and the session goes into the store. Media: `rtc/udp.rs` receives →
//! `rtc/demux.rs`, `rtc/stun.rs` (MESSAGE-INTEGRITY) → `rtc/session.rs`
//! binds the client address → `rtc/relay.rs` relays through the session's
//! own upstream socket.
#![forbid(unsafe_code)]

/// Every allocation of the proxy (and of the tests and benches that link
/// it, so their memory figures are the binary's): mimalloc costs fewer
/// instructions per allocation than glibc's malloc on the per-request
/// path; a player's memory stays within the same bounds (`tests/memory.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod auth;
pub mod balance;
pub mod claim;
pub mod config;
pub mod context;
pub mod crd;
pub mod discovery;
pub mod discovery_state;
pub mod error;
pub mod health;
pub mod hls;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod rtc;
pub mod rtmp;
pub mod server;
pub mod shutdown;
pub mod srt;
pub mod store;
pub mod stream_key;

/// Version reported by `/api/v1/versions` and the `Server` header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Signature used in the `Server` header, as SRS does with its own name.
pub const SIGNATURE: &str = "srs-proxy";
