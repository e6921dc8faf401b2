//! What the discovery tests check through the proxy, whichever API server
//! (fake or real) it discovers from: its store, readiness, and plays.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use srs_proxy::origin::OriginSource;

use super::client;
use super::origin::expected_prefix;
use super::proxy::TestProxy;

/// Upper bound of every wait; conditions are polled, never timed.
pub const WAIT: Duration = Duration::from_secs(30);

/// Sorted ids of the Kubernetes origins in the proxy's store.
pub async fn k8s_origins(proxy: &TestProxy) -> Vec<String> {
    let mut ids: Vec<String> = proxy
        .ctx
        .store
        .list_origins()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.origin.source == OriginSource::Kubernetes)
        .map(|o| o.origin.id.to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the store holds exactly these Kubernetes origins.
pub async fn wait_origins(proxy: &TestProxy, expected: &[&str]) {
    let found = super::eventually(WAIT, || async { (k8s_origins(proxy).await == expected).then_some(()) }).await;
    assert!(
        found.is_some(),
        "expected origins {expected:?}, store has {:?} (readiness: {:?})",
        k8s_origins(proxy).await,
        readiness(proxy).await
    );
}

/// The readiness probe's status and error text.
pub async fn readiness(proxy: &TestProxy) -> (StatusCode, String) {
    let reply = client::get(proxy.api, "/api/v1/versions").await;
    let error = reply.json()["error"].as_str().unwrap_or("").to_string();
    (reply.status, error)
}

/// An HTTP-FLV play of `stream`, answered.
async fn flv_play(proxy: &TestProxy, stream: &str) -> hyper::Response<hyper::body::Incoming> {
    client::send(
        proxy.http,
        Method::GET,
        &format!("/live/{stream}.flv"),
        &[],
        Bytes::new(),
    )
    .await
}

/// Who serves `stream` right now (a play request's `X-Origin`), or `None`
/// when the play is refused.
pub async fn served_by(proxy: &TestProxy, stream: &str) -> Option<String> {
    let resp = flv_play(proxy, stream).await;
    (resp.status() == StatusCode::OK).then(|| resp.headers()["x-origin"].to_str().unwrap().to_string())
}

/// Starts playing `stream` as HTTP-FLV; returns the origin that serves it
/// and the body, checked to be that origin's bytes.
pub async fn play(proxy: &TestProxy, stream: &str) -> (String, hyper::body::Incoming) {
    let resp = flv_play(proxy, stream).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let origin = resp.headers()["x-origin"].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    let got = client::read_n(&mut body, 4096).await;
    assert!(
        got == expected_prefix("flv", stream, 4096),
        "bytes are the origin's stream"
    );
    (origin, body)
}

/// Reads until the relay ends (origin gone), bounded by [`WAIT`].
pub async fn until_closed(mut body: hyper::body::Incoming) {
    let ended = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = body.frame().await {} }).await;
    assert!(ended.is_ok(), "the relay to a removed origin must end");
}

/// A condition of an OriginPool status by type, or null.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Waits until a registration's TTL has been extended: one refresh tick
/// (which also recomputes status) has run. Between ticks the time left
/// only falls; a tick makes it rise.
pub async fn one_refresh(proxy: &TestProxy) {
    let last = std::cell::Cell::new(f64::MAX);
    let refreshed = super::eventually(WAIT, || async {
        let origins = proxy.ctx.store.list_origins().await.unwrap();
        let left = origins.first().and_then(|o| o.expires_in_secs).expect("a registration");
        (left > last.replace(left)).then_some(())
    })
    .await;
    assert!(refreshed.is_some(), "registrations are refreshed before they expire");
}
