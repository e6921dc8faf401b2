//! Whether origins answer.
//!
//! Two sources feed one health record per origin in the store, so every
//! replica sees the same:
//!
//! * the data plane: a connect to an origin that fails before anything was
//!   sent ([`Context::origin_unreachable`]) makes it unhealthy at once;
//! * probes ([`probe`]): heartbeat and static origins (and any unhealthy
//!   one) are checked every `health.probe_interval`, each by one replica
//!   (the store hands out the turns); `health.failures` failures in a row
//!   make an origin unhealthy, `health.successes` successes healthy again.
//!
//! An unhealthy origin stays registered but gets no new streams, and the
//! store announces it like a removed one, so relays to it end and their
//! streams are claimed again on the next request. This module never
//! decides where a stream goes; it only says who answers.

use std::fmt::Display;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::context::Context;
use crate::error::Failure;
use crate::origin::{Origin, OriginSource, Protocol};
use crate::store::{HealthChange, HealthRules};

/// A probe's turn on an origin lasts this many intervals without renewal
/// before another replica takes it over.
const TURN_INTERVALS: u32 = 3;

impl Context {
    /// Reports that `origin` could not be reached (`reason` says how): it
    /// becomes unhealthy in the store at once, for every replica.
    pub async fn origin_unreachable(&self, origin: &Origin, reason: &str) {
        match self
            .store_op("report_failure", self.store.report_failure(&origin.id, reason))
            .await
        {
            Ok(change) => self.note_health(&origin.id, change, reason),
            Err(e) => tracing::warn!(origin = %origin.id, error = %e, "could not record the failed connect"),
        }
    }

    /// Passes `result` on; a failure saying the origin could not be reached
    /// is reported first ([`Context::origin_unreachable`]). For requests
    /// bound to one origin, which cannot go elsewhere.
    pub async fn reported<T, E: Failure + Display>(&self, origin: &Origin, result: Result<T, E>) -> Result<T, E> {
        if let Err(e) = &result {
            if e.retry_elsewhere() {
                self.origin_unreachable(origin, &e.to_string()).await;
            }
        }
        result
    }

    /// Counts and logs a change of an origin's health made by this replica.
    fn note_health(&self, id: &str, change: HealthChange, reason: &str) {
        let Some(to) = change.label() else {
            return;
        };
        self.metrics
            .origin_health_transitions_total
            .with_label_values(&[to])
            .inc();
        match change {
            HealthChange::Unhealthy => {
                tracing::warn!(origin = %id, reason, "origin unhealthy: no new streams, its streams move")
            }
            _ => tracing::info!(origin = %id, "origin healthy again: it takes new streams"),
        }
    }
}

/// Probes origins until the proxy aborts (a background task of
/// [`crate::server::run`]); returns at once when probing is off.
pub async fn probe(ctx: Context) {
    let interval = ctx.config.health.probe_interval;
    if interval.is_zero() {
        return;
    }
    // Names this replica when the store hands out probe turns.
    let prober = format!("{:016x}", rand::random::<u64>());
    let rules = HealthRules {
        failures: ctx.config.health.failures,
        successes: ctx.config.health.successes,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.aborted() => return,
        }
        if let Err(e) = probe_once(&ctx, &prober, rules, interval * TURN_INTERVALS).await {
            tracing::debug!(error = %e, "origin probes skipped this round");
        }
    }
}

/// One round: take the turns due to this replica, probe those origins
/// concurrently, record the results.
async fn probe_once(ctx: &Context, prober: &str, rules: HealthRules, hold: Duration) -> Result<(), String> {
    let origins = ctx
        .store_op("list_origins", ctx.store.list_origins())
        .await
        .map_err(|e| e.to_string())?;
    let probe_kubernetes = ctx.config.health.probe_kubernetes;
    let candidates: Vec<Origin> = origins
        .into_iter()
        .filter(|o| !o.healthy || probe_kubernetes || o.origin.source != OriginSource::Kubernetes)
        .map(|o| o.origin)
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = candidates.iter().map(|o| o.id.to_string()).collect();
    let mine = ctx
        .store_op("probe_turns", ctx.store.probe_turns(&ids, prober, hold))
        .await
        .map_err(|e| e.to_string())?;
    let timeout = ctx.config.origin_connect_timeout;
    let mut probes = JoinSet::new();
    for origin in candidates.into_iter().filter(|o| mine.iter().any(|id| **id == *o.id)) {
        probes.spawn(async move {
            let result = check(&origin, timeout).await;
            (origin, result)
        });
    }
    while let Some(done) = probes.join_next().await {
        let Ok((origin, result)) = done else { continue };
        let label = if result.is_ok() { "ok" } else { "failed" };
        ctx.metrics.origin_probes_total.with_label_values(&[label]).inc();
        let reason = result.as_ref().err().cloned().unwrap_or_default();
        match ctx
            .store_op("record_probe", ctx.store.record_probe(&origin.id, result, rules))
            .await
        {
            Ok(change) => ctx.note_health(&origin.id, change, &reason),
            Err(e) => tracing::debug!(origin = %origin.id, error = %e, "probe result not recorded"),
        }
    }
    Ok(())
}

/// Whether `origin` answers, within `timeout`: on its HTTP port, any HTTP
/// response to `HEAD /` (so an origin that accepts connections but never
/// answers fails); without one, a TCP connect to its RTMP or API port.
pub async fn check(origin: &Origin, timeout: Duration) -> Result<(), String> {
    let (authority, http) = match origin.authority(Protocol::Http) {
        Some(a) => (a, true),
        None => match origin
            .authority(Protocol::Rtmp)
            .or_else(|| origin.authority(Protocol::Api))
        {
            Some(a) => (a, false),
            None => return Ok(()),
        },
    };
    let attempt = async {
        let mut tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        if !http {
            return Ok(());
        }
        let request = format!("HEAD / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("probe {authority}: {e}"))?;
        let mut head = [0u8; 5];
        tcp.read_exact(&mut head)
            .await
            .map_err(|e| format!("probe {authority}: {e}"))?;
        if &head == b"HTTP/" {
            Ok(())
        } else {
            Err(format!("probe {authority}: not an HTTP answer"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe {authority}: no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Ports;
    use tokio::net::TcpListener;

    fn origin_at(port: u16) -> Origin {
        Origin {
            id: "o".into(),
            ip: "127.0.0.1".into(),
            ports: Ports {
                http: Some(port),
                ..Ports::default()
            },
            source: OriginSource::Static,
            weight: 1,
            max_streams: 0,
            pool: None,
            registered_by: None,
        }
    }

    #[tokio::test]
    async fn an_answering_origin_passes_and_a_refusing_one_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = tcp.read(&mut buf).await;
            tcp.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(check(&origin_at(port), Duration::from_secs(5)).await, Ok(()));
        server.await.unwrap();
        // The listener is gone: refused.
        let err = check(&origin_at(port), Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("connect to 127.0.0.1"), "{err}");
    }

    #[tokio::test]
    async fn an_origin_that_accepts_but_never_answers_fails_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move { listener.accept().await.map(|(tcp, _)| tcp) });
        let err = check(&origin_at(port), Duration::from_millis(300)).await.unwrap_err();
        assert!(err.contains("no answer within 300ms"), "{err}");
        drop(held);
    }
}
