//! The library's entry point: binds the listeners and owns the whole
//! lifecycle of a proxy process.
//!
//! `main` parses config, sets up logging, then calls [`build_store`],
//! [`Listeners::bind`] and [`run`] with the OS signals; tests bind port 0
//! and call the same functions with a signal of their own.
//!
//! [`run`] starts the background work (static origins, store housekeeping,
//! Kubernetes discovery) and every server, then on the signal:
//!
//! 1. drains — readiness 503, listeners closed, open streams go on;
//! 2. after `grace_quit_timeout`, aborts — open streams are cut;
//! 3. at `force_quit_timeout` after the signal (or at a second signal)
//!    returns [`Stopped::Forced`] whatever is still running; the caller
//!    exits the process.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

use crate::config::{Config, StoreKind};
use crate::context::Context;
use crate::listener::{bind_tcp, bind_udp, effective_backlog, BindError};
use crate::store::{MemoryStore, RedisStore, Store};

/// In a shared store, static origins are registered with this TTL and
/// refreshed every second, so an origin taken out of every replica's config
/// expires instead of staying live forever.
pub const STATIC_ORIGIN_TTL: Duration = Duration::from_secs(10);

/// The TTL static origins are registered with: none in the memory store,
/// where nothing but this process's config names them (a process that was
/// paused or starved must not lose them because it renewed them late);
/// [`STATIC_ORIGIN_TTL`] in a shared store, on the store's clock.
fn static_origin_ttl(store: &Store) -> Option<Duration> {
    match store {
        Store::Memory(_) => None,
        Store::Redis(_) => Some(STATIC_ORIGIN_TTL),
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("store: {0}")]
    Store(String),
}

/// The bound sockets of every server.
pub struct Listeners {
    pub http: TcpListener,
    pub rtmp: TcpListener,
    pub system_api: TcpListener,
    pub srt: UdpSocket,
    /// WebRTC signalling (WHIP/WHEP, SRS's JSON API).
    pub http_api: TcpListener,
    /// WebRTC media.
    pub webrtc: UdpSocket,
}

impl Listeners {
    /// Binds every listener the config names, with the configured backlog.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let backlog = effective_backlog(config.listen_backlog);
        Ok(Self {
            http: bind_tcp("http_server", config.http_server, backlog)?,
            rtmp: bind_tcp("rtmp_server", config.rtmp_server, backlog)?,
            system_api: bind_tcp("system_api", config.system_api, backlog)?,
            srt: bind_udp("srt_server", config.srt_server).await?,
            http_api: bind_tcp("http_api", config.http_api, backlog)?,
            webrtc: bind_udp("webrtc_server", config.webrtc_server).await?,
        })
    }
}

/// Builds the store the config asks for.
pub async fn build_store(config: &Config) -> Result<Store, StartError> {
    match config.load_balancer_type {
        StoreKind::Memory => Ok(Store::Memory(MemoryStore::new())),
        StoreKind::Redis => RedisStore::connect(&config.redis)
            .await
            .map(Store::Redis)
            .map_err(|e| StartError::Store(format!("redis: {e}"))),
    }
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every server finished (within the grace period or after the abort).
    Clean,
    /// The force-quit deadline passed, or a second signal came, with work
    /// still running: the process should exit now.
    Forced,
}

/// Which scheduler runs the proxy, as the "serving" line names it.
fn runtime_kind() -> &'static str {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    }
}

/// Runs the proxy until `signal` resolves, then drains and stops it.
pub async fn run(ctx: Context, listeners: Listeners, signal: impl Future<Output = ()>) -> Stopped {
    register_static_origins(&ctx).await;
    let http = listeners.http.local_addr().ok();
    let rtmp = listeners.rtmp.local_addr().ok();
    let system_api = listeners.system_api.local_addr().ok();
    let srt = listeners.srt.local_addr().ok();
    let http_api = listeners.http_api.local_addr().ok();
    let webrtc = listeners.webrtc.local_addr().ok();
    // No origin may be registered at one of these: a request loop.
    let own = [http, rtmp, system_api, srt, http_api, webrtc]
        .into_iter()
        .flatten()
        .collect();
    ctx.registrar.set_own_addrs(own);
    tracing::info!(
        http = ?http,
        rtmp = ?rtmp,
        system_api = ?system_api,
        srt = ?srt,
        http_api = ?http_api,
        webrtc = ?webrtc,
        store = ctx.store.kind(),
        runtime = runtime_kind(),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "srs-proxy {} serving",
        crate::VERSION
    );
    let mut background = JoinSet::new();
    background.spawn(housekeeping(ctx.clone()));
    background.spawn(crate::health::probe(ctx.clone()));
    if let Some(discovery) = crate::discovery::start(&ctx) {
        background.spawn(discovery);
    }
    // One table of shared upstreams and one HLS cache for the whole
    // replica, so every listener's players of a stream share its one
    // origin connection and its cached segments.
    let edge = crate::http::edge::Edge::new(&ctx.config.edge, &ctx.metrics);
    let mut servers = JoinSet::new();
    servers.spawn(crate::http::route::run(listeners.http, ctx.clone(), edge.clone()));
    servers.spawn(crate::rtmp::run(listeners.rtmp, ctx.clone(), edge));
    servers.spawn(crate::api::run(listeners.system_api, ctx.clone()));
    servers.spawn(crate::srt::run(listeners.srt, ctx.clone()));
    servers.spawn(crate::rtc::run(listeners.http_api, listeners.webrtc, ctx.clone()));
    let all_stopped = async move {
        while let Some(done) = servers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "server task failed");
            }
        }
    };
    let stopped = lifecycle(&ctx, all_stopped, signal).await;
    // Background work watches the abort; the lifecycle has set it.
    ctx.shutdown.abort();
    background.abort_all();
    stopped
}

/// Signal → drain → grace → abort → force, around `servers` (which end
/// once the drain has stopped them and their connections have ended).
async fn lifecycle(ctx: &Context, servers: impl Future<Output = ()>, signal: impl Future<Output = ()>) -> Stopped {
    tokio::pin!(servers);
    tokio::select! {
        _ = signal => tracing::info!("signal received"),
        // Someone else started the drain (an embedding program).
        _ = ctx.shutdown.draining() => {}
        _ = &mut servers => return Stopped::Clean,
    }
    let force_at = tokio::time::Instant::now() + ctx.config.force_quit_timeout;
    let grace = ctx.config.grace_quit_timeout;
    tracing::info!(?grace, "draining: no new connections");
    ctx.shutdown.start_drain();
    // Biased: a forced quit also cuts the connections, so `servers` may be
    // ready in the same poll; the force is what happened.
    tokio::select! {
        biased;
        _ = ctx.shutdown.forced() => return Stopped::Forced,
        _ = &mut servers => return Stopped::Clean,
        _ = tokio::time::sleep(grace) => tracing::info!("grace period over; closing open streams"),
    }
    ctx.shutdown.abort();
    tokio::select! {
        biased;
        _ = ctx.shutdown.forced() => Stopped::Forced,
        _ = &mut servers => Stopped::Clean,
        _ = tokio::time::sleep_until(force_at) => {
            tracing::warn!(force = ?ctx.config.force_quit_timeout, "force quit timeout reached; exiting");
            Stopped::Forced
        }
    }
}

async fn register_static_origins(ctx: &Context) {
    for origin in ctx.config.static_origins() {
        tracing::info!(origin = %origin.id, ip = %origin.ip, ports = ?origin.ports, "static origin");
        if let Err(e) = ctx.store.upsert_origin(origin, static_origin_ttl(&ctx.store)).await {
            tracing::error!(error = %e, "cannot register static origin; will retry");
        }
    }
}

/// Expires store entries, announces origins that went away, and keeps the
/// static origins registered (a Redis that restarted empty, or a first
/// registration that failed, gets them back within a second).
async fn housekeeping(ctx: Context) {
    let static_origins = ctx.config.static_origins();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.aborted() => return,
        }
        if let Err(e) = ctx.store_op("sweep", ctx.store.sweep()).await {
            tracing::warn!(error = %e, "store housekeeping failed");
            continue;
        }
        for origin in &static_origins {
            let _ = ctx
                .store_op(
                    "upsert_origin",
                    ctx.store.upsert_origin(origin.clone(), static_origin_ttl(&ctx.store)),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn ctx(grace: u64, force: u64) -> Context {
        let config = Config {
            grace_quit_timeout: Duration::from_secs(grace),
            force_quit_timeout: Duration::from_secs(force),
            ..Config::default()
        };
        Context::new(config, Store::Memory(MemoryStore::new()))
    }

    /// A server that records when it saw each stage, and never ends.
    fn stuck_server(ctx: &Context, log: Arc<Mutex<Vec<(&'static str, Duration)>>>) -> impl Future<Output = ()> {
        let (ctx, start) = (ctx.clone(), Instant::now());
        async move {
            ctx.shutdown.draining().await;
            log.lock().unwrap().push(("drain", start.elapsed()));
            ctx.shutdown.aborted().await;
            log.lock().unwrap().push(("abort", start.elapsed()));
            std::future::pending::<()>().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_server_is_forced_at_the_force_deadline() {
        let ctx = ctx(20, 30);
        let log = Arc::default();
        let start = Instant::now();
        let signal = tokio::time::sleep(Duration::from_secs(5));
        let stopped = lifecycle(&ctx, stuck_server(&ctx, Arc::clone(&log)), signal).await;
        assert_eq!(stopped, Stopped::Forced);
        assert_eq!(start.elapsed(), Duration::from_secs(35), "force runs from the signal");
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![("drain", Duration::from_secs(5)), ("abort", Duration::from_secs(25))],
            "drain at the signal, abort after the grace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn servers_that_finish_in_the_grace_period_stop_cleanly() {
        let ctx = ctx(20, 30);
        let servers = {
            let ctx = ctx.clone();
            async move {
                ctx.shutdown.draining().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        };
        let start = Instant::now();
        let stopped = lifecycle(&ctx, servers, std::future::ready(())).await;
        assert_eq!(stopped, Stopped::Clean);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(!ctx.shutdown.is_aborted(), "nothing was cut");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_forces_at_once() {
        let ctx = ctx(20, 30);
        let log = Arc::default();
        let start = Instant::now();
        let forcer = {
            let shutdown = ctx.shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                shutdown.force();
            })
        };
        let stopped = lifecycle(&ctx, stuck_server(&ctx, log), std::future::ready(())).await;
        assert_eq!(stopped, Stopped::Forced);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        forcer.await.unwrap();
    }
}
