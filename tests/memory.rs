//! Memory per player is bounded by configuration, not by traffic: players
//! that read nothing while the origin sends as fast as it can cost the
//! proxy at most `relay_buffer_bytes` each plus a fixed overhead. Measured
//! from this process's resident set, alone in its own test binary so no
//! other test's allocations count.

mod support;

use std::io::Write as _;
use std::time::Duration;

use support::fast_origin::FastOrigin;
use support::proxy::{test_config, TestProxy};
use support::{eventually, rss_bytes};
use tokio::net::TcpStream;

/// Players held open at once.
const PLAYERS: usize = 200;
/// The setting under test.
const RELAY_BUFFER: usize = 32 * 1024;
/// Tasks, sockets and lease of one player in a debug build (about 25 KiB),
/// plus the test's own origin and client side, rounded up;
/// the hyper relay this bound replaced held about 400 KiB more.
const FIXED_OVERHEAD: usize = 40 * 1024;

/// A player that sends its request and then reads nothing.
async fn stalled_player(proxy: std::net::SocketAddr, n: usize) -> TcpStream {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let mut req = Vec::new();
    write!(req, "GET /live/stalled{n}.flv HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    tcp.writable().await.unwrap();
    assert_eq!(tcp.try_write(&req).unwrap(), req.len());
    tcp
}

/// Waits until the origin has stopped writing: every pipe is full.
async fn until_the_origin_is_stalled(origin: &FastOrigin) -> u64 {
    let mut last = u64::MAX;
    eventually(Duration::from_secs(180), || {
        let now = origin.bytes();
        let stable = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stable.then_some(now)
        }
    })
    .await
    .expect("the origin stops once every buffer is full")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_that_read_nothing_hold_at_most_the_relay_buffer() {
    // The resident set in base pages: where the allocator's arenas get
    // transparent huge pages it grows 2 MiB at a time, about 10 KiB per
    // player here, and the same code measured about 63,500 or 74,300 bytes per player
    // from run to run, one huge page apart.
    // SAFETY: this prctl takes integers only and touches no memory of ours.
    let thp_off = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    assert_eq!(
        thp_off,
        0,
        "prctl(PR_SET_THP_DISABLE): {}",
        std::io::Error::last_os_error()
    );
    let origin = FastOrigin::start(125_000, 1000).await;
    let mut config = test_config();
    config.relay_buffer_bytes = RELAY_BUFFER;
    let proxy = TestProxy::start(config).await;
    let reply = support::client::post(proxy.api, "/api/v1/srs/register", origin.register_body("fast")).await;
    assert_eq!(reply.status, http::StatusCode::OK);

    // One player first, so what every relay shares (scratch buffers,
    // metric series, runtime structures) is in the baseline.
    let warm = stalled_player(proxy.http, 0).await;
    until_the_origin_is_stalled(&origin).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = rss_bytes();
    let mut players = Vec::new();
    for n in 1..=PLAYERS {
        players.push(stalled_player(proxy.http, n).await);
    }
    let sent = until_the_origin_is_stalled(&origin).await;
    let after = rss_bytes();
    let per_player = after.saturating_sub(before) / PLAYERS;
    assert!(
        sent > (PLAYERS * RELAY_BUFFER) as u64,
        "the origin sent only {sent} bytes: the test did not fill the relays"
    );
    assert!(
        per_player <= RELAY_BUFFER + FIXED_OVERHEAD,
        "each stalled player costs {per_player} bytes of memory (bound {RELAY_BUFFER} + {FIXED_OVERHEAD})"
    );
    assert_eq!(
        proxy
            .ctx
            .metrics
            .connections_active
            .with_label_values(&["http-flv", "player"])
            .get(),
        PLAYERS as i64,
        "every player is being relayed"
    );
    println!("stalled players: {per_player} bytes each, origin sent {sent} bytes");
}
