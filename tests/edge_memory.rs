//! Edge mode: a player of a shared upstream costs the proxy its
//! connection and a batch of references to frames the stream already
//! holds, never a copy of the stream. Players that read nothing, measured
//! from this process's resident set, alone in its own test binary so no
//! other test's allocations count.

mod support;

use std::time::Duration;

use bytes::Bytes;
use srs_proxy::config::EdgeMode;
use srs_proxy::http::edge::flv::{tag_type, Tag};
use support::flv_origin::FlvOrigin;
use support::proxy::{test_config, TestProxy};
use support::{eventually, rss_bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Players held open at once.
const PLAYERS: usize = 500;
/// What the stream keeps, reached before the baseline so it does not grow
/// while players are measured.
const CACHE: usize = 1 << 20;
/// Tasks, sockets and queued references of one player in a debug build,
/// plus the test's own client side, rounded up: the transparent relay's
/// fixed part (tests/memory.rs), without its `relay_buffer_bytes`.
const PER_PLAYER: usize = 40 * 1024;

fn tag(tag_type: u8, timestamp: u32, payload: Vec<u8>) -> Tag {
    Tag {
        tag_type,
        timestamp,
        payload: Bytes::from(payload),
    }
}

/// GOP `n`: 25 video frames of 32 KiB, the first a keyframe.
fn gop(n: u32) -> Vec<Tag> {
    (0..25u32)
        .map(|i| {
            let head: &[u8] = if i == 0 { b"\x17\x01\0\0\0" } else { b"\x27\x01\0\0\0" };
            let mut payload = head.to_vec();
            payload.resize(32 * 1024, n as u8);
            tag(tag_type::VIDEO, (n * 25 + i) * 40, payload)
        })
        .collect()
}

/// A player that sends its request and then reads nothing.
async fn stalled_player(proxy: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET /live/crowd.flv HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_that_read_nothing_share_the_streams_frames() {
    let mut config = test_config();
    config.edge.mode = EdgeMode::On;
    config.edge.gop_cache_bytes = CACHE;
    config.edge.player_timeout = Duration::from_secs(3600);
    let proxy = TestProxy::start(config).await;
    let origin = FlvOrigin::start("origin-a").await;
    origin.register(proxy.api).await;
    origin.feed(&[tag(tag_type::VIDEO, 0, b"\x17\x00\0\0\0sps+pps".to_vec())]);
    let held = proxy.ctx.metrics.edge_buffer_bytes.clone();
    let active = proxy.ctx.metrics.edge_players_active.with_label_values(&["http-flv"]);
    // One player first and the cache full, so what every player shares is
    // in the baseline.
    let mut players = vec![stalled_player(proxy.http).await];
    let mut fed = 0;
    for n in 0..2 {
        origin.feed(&gop(n));
        fed += 1;
    }
    let full = eventually(Duration::from_secs(60), || async {
        (held.get() as usize >= CACHE - 64 * 1024).then_some(())
    })
    .await;
    assert!(full.is_some(), "the cache never filled");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = rss_bytes();
    for _ in 0..PLAYERS {
        players.push(stalled_player(proxy.http).await);
    }
    let joined = eventually(Duration::from_secs(60), || async {
        (active.get() as usize == PLAYERS + 1).then_some(())
    })
    .await;
    assert!(joined.is_some(), "not every player joined");
    // The stream goes on: every player's socket fills and its queue holds
    // references to the newest frames.
    for n in fed..fed + 2 {
        origin.feed(&gop(n));
    }
    let sent = (fed + 2) as u64 * 25 * 32 * 1024;
    let read = eventually(Duration::from_secs(60), || async {
        (proxy.ctx.metrics.edge_upstream_bytes_total.get() >= sent).then_some(())
    })
    .await;
    assert!(read.is_some(), "the upstream did not read the stream");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    let per_player = after.saturating_sub(before) / PLAYERS;
    assert!(
        held.get() as usize <= CACHE + 64 * 1024,
        "the stream's frames stay within the cache: {}",
        held.get()
    );
    assert!(
        per_player <= PER_PLAYER,
        "each stalled player costs {per_player} bytes of memory (bound {PER_PLAYER})"
    );
    assert_eq!(origin.requests(), 1);
    println!("edge: {PLAYERS} stalled players, {per_player} bytes each");
}
