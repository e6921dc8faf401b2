//! Binds the listeners and runs every server until shutdown.
//!
//! This is the library's entry point: `main` parses config and calls
//! [`Listeners::bind`] then [`run`]; tests bind port 0 and do the same.

use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{Config, ListenAddr, StoreKind};
use crate::context::Context;
use crate::store::{MemoryStore, RedisStore, Store};

/// Static origins are registered with this TTL and refreshed every second,
/// so in a shared store an origin taken out of every replica's config
/// expires instead of staying live forever.
pub const STATIC_ORIGIN_TTL: Duration = Duration::from_secs(10);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: ListenAddr,
        source: io::Error,
    },
    #[error("store: {0}")]
    Store(String),
}

/// The bound sockets of the servers that exist so far.
pub struct Listeners {
    pub http: TcpListener,
    pub rtmp: TcpListener,
    pub system_api: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        async fn one(key: &'static str, addr: ListenAddr) -> Result<TcpListener, StartError> {
            TcpListener::bind(addr.0)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        }
        Ok(Self {
            http: one("http_server", config.http_server).await?,
            rtmp: one("rtmp_server", config.rtmp_server).await?,
            system_api: one("system_api", config.system_api).await?,
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

/// Runs every server until they have all stopped (after a drain).
pub async fn run(ctx: Context, listeners: Listeners) -> io::Result<()> {
    for origin in ctx.config.static_origins() {
        tracing::info!(origin = %origin.id, ip = %origin.ip, ports = ?origin.ports, "static origin");
        if let Err(e) = ctx.store.upsert_origin(origin, Some(STATIC_ORIGIN_TTL)).await {
            tracing::error!(error = %e, "cannot register static origin; will retry");
        }
    }
    tracing::info!(
        http = %listeners.http.local_addr()?,
        rtmp = %listeners.rtmp.local_addr()?,
        system_api = %listeners.system_api.local_addr()?,
        store = ctx.store.kind(),
        "srs-proxy {} serving (WebRTC and SRT listeners are not started in this build)",
        crate::VERSION
    );
    let housekeeping = tokio::spawn(housekeeping(ctx.clone()));
    let discovery = crate::discovery::spawn(&ctx);
    let mut servers = JoinSet::new();
    servers.spawn(crate::http::run(listeners.http, ctx.clone()));
    servers.spawn(crate::rtmp::run(listeners.rtmp, ctx.clone()));
    servers.spawn(crate::api::run(listeners.system_api, ctx.clone()));
    let mut result = Ok(());
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(io::Error::other(e)),
        }
    }
    housekeeping.abort();
    if let Some(discovery) = discovery {
        discovery.abort();
    }
    result
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
                    ctx.store.upsert_origin(origin.clone(), Some(STATIC_ORIGIN_TTL)),
                )
                .await;
        }
    }
}

/// Sets the gauges that describe the store (live origins, streams); run at
/// scrape time so they are exact when read.
pub async fn refresh_gauges(ctx: &Context) {
    if let Ok(origins) = ctx.store_op("list_origins", ctx.store.list_origins()).await {
        let mut counts: std::collections::BTreeMap<(String, &'static str), i64> = Default::default();
        for o in &origins {
            *counts
                .entry((o.origin.pool.clone().unwrap_or_default(), o.origin.source.as_str()))
                .or_default() += 1;
        }
        // Series of pools that no longer have origins drop to zero instead
        // of keeping their last value.
        ctx.metrics.origins_live.reset();
        for ((pool, source), n) in counts {
            ctx.metrics
                .origins_live
                .with_label_values(&[pool.as_str(), source])
                .set(n);
        }
        let streams: u32 = origins.iter().map(|o| o.streams).sum();
        ctx.metrics.streams_active.set(i64::from(streams));
    }
}

/// The next connection on `listener`, or `None` once draining starts.
/// Accept errors (EMFILE and friends) back off instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    ctx: &Context,
    server: &'static str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(server, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.shutdown.draining() => return None,
        }
    }
}

/// SIGTERM handling: readiness goes 503 and listeners close at once, open
/// streams get `grace_quit_timeout`, then they are cut.
pub async fn drain(ctx: &Context, servers_done: impl std::future::Future<Output = ()>) {
    tracing::info!(grace = ?ctx.config.grace_quit_timeout, "draining: no new connections");
    ctx.shutdown.start_drain();
    tokio::pin!(servers_done);
    if tokio::time::timeout(ctx.config.grace_quit_timeout, &mut servers_done)
        .await
        .is_err()
    {
        tracing::info!("grace period over; closing open streams");
        ctx.shutdown.abort();
        servers_done.await;
    }
}
