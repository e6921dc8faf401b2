//! Edge mode's HLS cache: concurrent requests for a segment or playlist
//! cost the origin one request, answers are kept within their bounds and
//! TTLs, and every player keeps its own routing token.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use srs_proxy::config::{Config, EdgeMode};
use srs_proxy::store::{MemoryStore, Store};
use support::client::{self, get, Reply};
use support::eventually;
use support::hls_origin::{segment, HlsOrigin};
use support::proxy::{test_config, TestProxy};

const SEGMENT: usize = 10_000;
const WAIT: Duration = Duration::from_secs(20);

fn edge_config() -> Config {
    let mut config = test_config();
    config.edge.mode = EdgeMode::On;
    config
}

async fn proxy_and_origin(config: Config) -> (TestProxy, HlsOrigin) {
    let proxy = TestProxy::start(config).await;
    let origin = HlsOrigin::start("origin-a", SEGMENT).await;
    origin.register(proxy.api).await;
    (proxy, origin)
}

fn cache_requests(proxy: &TestProxy, kind: &str, result: &str) -> u64 {
    proxy
        .ctx
        .metrics
        .edge_hls_cache_requests_total
        .with_label_values(&[kind, result])
        .get()
}

/// The routing token of a rewritten playlist's first segment.
fn token_of(playlist: &str) -> String {
    let line = playlist
        .lines()
        .find(|l| l.contains("-100.ts?"))
        .expect("a segment line");
    line.split("spbhid=").nth(1).expect("a token").to_string()
}

/// GETs every path at once while the origin holds `held`, and lets the
/// origin answer only once all of them are in the proxy and one is at the
/// origin: the replies.
async fn at_once(proxy: &TestProxy, origin: &HlsOrigin, kind: &str, held: &str, paths: Vec<String>) -> Vec<Reply> {
    origin.hold(held);
    let n = paths.len() as u64;
    let addr = proxy.http;
    let players: Vec<_> = paths
        .into_iter()
        .map(|path| tokio::spawn(async move { get(addr, &path).await }))
        .collect();
    let all_in = eventually(WAIT, || async {
        (cache_requests(proxy, kind, "coalesced") == n - 1 && origin.held() == 1).then_some(())
    })
    .await;
    assert!(
        all_in.is_some(),
        "coalesced {}, held at the origin {}, origin requests {}",
        cache_requests(proxy, kind, "coalesced"),
        origin.held(),
        origin.count(held)
    );
    assert_eq!(origin.count(held), 1, "one request at the origin");
    origin.release();
    let mut replies = Vec::new();
    for p in players {
        replies.push(p.await.unwrap());
    }
    replies
}

/// Maps the stream (segments never claim) and returns the playlist.
async fn play(proxy: SocketAddr, path: &str) -> Reply {
    let r = get(proxy, path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r
}

#[tokio::test]
async fn fifty_concurrent_requests_for_a_segment_cost_the_origin_one_request() {
    let (proxy, origin) = proxy_and_origin(edge_config()).await;
    let token = token_of(&play(proxy.http, "/live/s.m3u8").await.text());
    // With the routing token, without it, and with per-player query
    // parameters: all the same segment.
    let paths = (0..50)
        .map(|i| match i % 3 {
            0 => format!("/live/s-100.ts?spbhid={token}"),
            1 => "/live/s-100.ts".to_string(),
            _ => format!("/live/s-100.ts?hls_ctx=player{i}"),
        })
        .collect();
    let replies = at_once(&proxy, &origin, "segment", "/live/s-100.ts", paths).await;
    let expected = segment("/live/s-100.ts", SEGMENT);
    let mut answers = std::collections::HashSet::new();
    for r in replies {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], &expected[..], "the origin's bytes");
        assert_eq!(r.header("content-type"), Some("video/MP2T"));
        assert_eq!(r.header("cache-control"), Some("max-age=10"));
        assert_eq!(r.header("content-length"), Some(SEGMENT.to_string().as_str()));
        answers.insert(r.header("x-request").unwrap().to_string());
    }
    assert_eq!(answers.len(), 1, "one origin answer for all: {answers:?}");
    assert_eq!(origin.count("/live/s-100.ts"), 1);
    assert_eq!(cache_requests(&proxy, "segment", "miss"), 1);

    // Later requests are served from the cache.
    let r = get(proxy.http, "/live/s-100.ts").await;
    assert_eq!(&r.body[..], &expected[..]);
    assert_eq!(origin.count("/live/s-100.ts"), 1);
    assert_eq!(cache_requests(&proxy, "segment", "hit"), 1);
    let served = proxy.ctx.metrics.edge_hls_cache_served_bytes_total.get();
    assert_eq!(served, 50 * SEGMENT as u64, "49 coalesced and one hit");

    // HEAD and ranges go to the origin as with edge mode off.
    let h = client::request(proxy.http, Method::HEAD, "/live/s-100.ts", &[], Bytes::new()).await;
    assert_eq!(h.status, StatusCode::OK);
    let ranged = client::request(
        proxy.http,
        Method::GET,
        "/live/s-100.ts",
        &[("range", "bytes=0-99")],
        Bytes::new(),
    )
    .await;
    assert_eq!(ranged.status, StatusCode::OK, "the fake origin ignores ranges");
    assert_eq!(origin.count("/live/s-100.ts"), 3);
}

#[tokio::test]
async fn a_failed_origin_answer_reaches_every_waiting_player_and_is_not_kept() {
    let (proxy, origin) = proxy_and_origin(edge_config()).await;
    play(proxy.http, "/live/m.m3u8").await;
    let paths = vec!["/live/m-404.ts".to_string(); 10];
    for r in at_once(&proxy, &origin, "segment", "/live/m-404.ts", paths).await {
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.text(), "no such file\n");
    }
    assert_eq!(origin.count("/live/m-404.ts"), 1);
    let r = get(proxy.http, "/live/m-404.ts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(origin.count("/live/m-404.ts"), 2, "an error is not cached");
}

#[tokio::test]
async fn the_cache_stays_within_its_bytes_and_lets_the_oldest_go() {
    let mut config = edge_config();
    config.edge.hls_cache_bytes = 100_000;
    config.edge.hls_max_segment_bytes = 50_000;
    let (proxy, origin) = proxy_and_origin(config).await;
    play(proxy.http, "/live/b.m3u8").await;
    let gauge = || proxy.ctx.metrics.edge_hls_cache_bytes.get();
    let mut most = 0;
    for i in 0..40 {
        let path = format!("/live/b-{i}.ts");
        let r = get(proxy.http, &path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], &segment(&path, SEGMENT)[..]);
        most = most.max(gauge());
        assert!(gauge() <= 100_000, "cache holds {} bytes", gauge());
    }
    assert!(most > 80_000, "the cache filled up to its bound: {most}");
    assert!(
        proxy
            .ctx
            .metrics
            .edge_hls_cache_evictions_total
            .with_label_values(&["size"])
            .get()
            >= 30
    );
    // The newest is still cached; the oldest went to make room.
    get(proxy.http, "/live/b-39.ts").await;
    assert_eq!(origin.count("/live/b-39.ts"), 1);
    let r = get(proxy.http, "/live/b-0.ts").await;
    assert_eq!(&r.body[..], &segment("/live/b-0.ts", SEGMENT)[..]);
    assert_eq!(origin.count("/live/b-0.ts"), 2);
}

#[tokio::test]
async fn a_segment_over_the_limit_is_served_uncached() {
    let mut config = edge_config();
    config.edge.hls_max_segment_bytes = SEGMENT - 1;
    let (proxy, origin) = proxy_and_origin(config).await;
    play(proxy.http, "/live/big.m3u8").await;
    for _ in 0..3 {
        let r = get(proxy.http, "/live/big-1.ts").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], &segment("/live/big-1.ts", SEGMENT)[..]);
    }
    assert_eq!(cache_requests(&proxy, "segment", "miss"), 1);
    assert_eq!(
        cache_requests(&proxy, "segment", "bypass"),
        2,
        "remembered as too large"
    );
    // The first request learnt the size from the origin's answer (not
    // read); every request then got the segment on its own.
    assert_eq!(origin.count("/live/big-1.ts"), 4);
    assert!(proxy.ctx.metrics.edge_hls_cache_bytes.get() < SEGMENT as i64);
}

#[tokio::test]
async fn a_playlist_is_cached_before_each_player_gets_its_own_token() {
    let store = Store::Memory(MemoryStore::new());
    let mut config = edge_config();
    config.edge.hls_playlist_ttl = Duration::from_secs(3600);
    let edge = TestProxy::start_with_store(config, store.clone()).await;
    // Another replica on the same store hands out its own tokens.
    let other = TestProxy::start_with_store(test_config(), store).await;
    let origin = HlsOrigin::start("origin-a", SEGMENT).await;
    origin.register(edge.api).await;

    let first = play(edge.http, "/live/p.m3u8").await.text();
    let mine = token_of(&first);
    let theirs = token_of(&play(other.http, "/live/p.m3u8").await.text());
    assert_ne!(mine, theirs);
    assert_eq!(origin.count("/live/p.m3u8"), 2, "one per replica");

    // The other replica's player reloads through this one: the origin's
    // playlist comes from the cache, with that player's own token.
    let reload = play(edge.http, &format!("/live/p.m3u8?spbhid={theirs}")).await.text();
    assert_eq!(origin.count("/live/p.m3u8"), 2, "served from the cache");
    assert!(reload.contains(&format!("p-100.ts?spbhid={theirs}")), "{reload}");
    assert!(!reload.contains(&mine), "{reload}");
    let again = play(edge.http, "/live/p.m3u8").await.text();
    assert_eq!(again, first, "the same origin playlist, the same token");
    assert_eq!(origin.count("/live/p.m3u8"), 2);
    assert_eq!(cache_requests(&edge, "playlist", "hit"), 2);
    // Both tokens still route segments.
    for token in [&mine, &theirs] {
        let r = get(edge.http, &format!("/live/p-100.ts?spbhid={token}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], &segment("/live/p-100.ts", SEGMENT)[..]);
    }
    // Different queries other than the token are different playlists
    // (SRS writes its per-player `hls_ctx` into them).
    play(edge.http, "/live/p.m3u8?hls_ctx=abc").await;
    assert_eq!(origin.count("/live/p.m3u8"), 3);
}

#[tokio::test]
async fn a_playlist_is_fetched_again_once_its_ttl_is_over() {
    let mut config = edge_config();
    config.edge.hls_playlist_ttl = Duration::from_millis(50);
    let (proxy, origin) = proxy_and_origin(config).await;
    let first = play(proxy.http, "/live/t.m3u8").await.text();
    assert!(first.contains("#X-TEST-REQUEST:1\n"), "{first}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = play(proxy.http, "/live/t.m3u8").await.text();
    assert_eq!(origin.count("/live/t.m3u8"), 2);
    assert!(second.contains("#X-TEST-REQUEST:2\n"), "a fresh playlist: {second}");
}

#[tokio::test]
async fn concurrent_playlist_requests_share_one_origin_request() {
    let (proxy, origin) = proxy_and_origin(edge_config()).await;
    let paths = vec!["/live/c.m3u8".to_string(); 10];
    for r in at_once(&proxy, &origin, "playlist", "/live/c.m3u8", paths).await {
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().contains("#X-TEST-REQUEST:1\n"));
    }
    assert_eq!(origin.count("/live/c.m3u8"), 1);
}

#[tokio::test]
async fn with_edge_mode_off_every_hls_request_reaches_the_origin() {
    let (proxy, origin) = proxy_and_origin(test_config()).await;
    for _ in 0..3 {
        play(proxy.http, "/live/o.m3u8").await;
    }
    origin.hold("/live/o-100.ts");
    let addr = proxy.http;
    let players: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/live/o-100.ts").await }))
        .collect();
    // Every request reaches the origin while the first is still held.
    let all_at_origin = eventually(WAIT, || async { (origin.held() == 5).then_some(()) }).await;
    assert!(all_at_origin.is_some(), "held at the origin: {}", origin.held());
    origin.release();
    for p in players {
        assert_eq!(p.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(origin.count("/live/o.m3u8"), 3);
    assert_eq!(origin.count("/live/o-100.ts"), 5);
    assert_eq!(proxy.ctx.metrics.edge_hls_cache_bytes.get(), 0);
}
