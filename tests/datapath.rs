//! The data path's contracts: the accept backlog reaches the sockets,
//! short HLS requests reuse origin connections and live streams never do,
//! live bodies pass through with their framing and exact byte counts, and
//! players the byte-for-byte path does not serve (HTTP/1.0, HEAD) still get
//! their stream.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use srs_proxy::http::framing::ChunkScanner;
use support::client::{self, get, read_n};
use support::origin::{expected_prefix, FakeOrigin, FINITE_CHUNKS};
use support::proxy::{test_config, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The accept backlog of the socket listening on `addr`, as the kernel
/// reports it: `ss` shows it as Send-Q of a listening socket.
fn backlog_of(addr: SocketAddr) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (iproute2) is installed by `make deps`");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(&addr.to_string()))
        .unwrap_or_else(|| panic!("no listening socket {addr} in:\n{text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_backlog_setting_reaches_every_listener() {
    let mut config = test_config();
    config.listen_backlog = 77;
    let proxy = TestProxy::start(config).await;
    for addr in [proxy.http, proxy.rtmp, proxy.api] {
        assert_eq!(backlog_of(addr), 77, "{addr}");
    }
    let default = TestProxy::start(test_config()).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        backlog_of(default.http),
        somaxconn.min(4096),
        "default: min(4096, somaxconn)"
    );
}

#[tokio::test]
async fn hls_requests_reuse_origin_connections_and_live_streams_never_do() {
    let proxy = TestProxy::start(test_config()).await;
    let origin = FakeOrigin::start("origin-a").await;
    origin.register(proxy.api).await;

    let playlist = get(proxy.http, "/live/pool.m3u8").await;
    assert_eq!(playlist.status, StatusCode::OK);
    for n in 100..105 {
        let seg = get(proxy.http, &format!("/live/pool-{n}.ts")).await;
        assert_eq!(seg.status, StatusCode::OK);
    }
    assert_eq!(
        origin.connections(),
        1,
        "a playlist and five segments on one origin connection"
    );

    // Two live streams while HLS goes on.
    let flv = client::send(proxy.http, Method::GET, "/live/pool.flv", &[], Bytes::new()).await;
    let mut flv = flv.into_body();
    read_n(&mut flv, 40_000).await;
    let ts = client::send(proxy.http, Method::GET, "/live/pool.ts", &[], Bytes::new()).await;
    let mut ts = ts.into_body();
    read_n(&mut ts, 40_000).await;
    for n in 105..108 {
        assert_eq!(
            get(proxy.http, &format!("/live/pool-{n}.ts")).await.status,
            StatusCode::OK
        );
    }
    drop((flv, ts));
    // And after they ended, HLS still does not land on their connections.
    assert_eq!(get(proxy.http, "/live/pool.m3u8").await.status, StatusCode::OK);

    let requests = origin.requests();
    let live: Vec<_> = requests
        .iter()
        .filter(|r| r.path_and_query.ends_with(".flv") || r.path_and_query == "/live/pool.ts")
        .collect();
    assert_eq!(live.len(), 2);
    let live_conns: HashSet<usize> = live.iter().map(|r| r.conn).collect();
    assert_eq!(live_conns.len(), 2, "each live stream has a connection of its own");
    for r in &requests {
        if !live.iter().any(|l| std::ptr::eq(*l, r)) {
            assert!(
                !live_conns.contains(&r.conn),
                "{} shared a live stream's connection",
                r.path_and_query
            );
        }
    }
    let hls_conns: HashSet<usize> = requests
        .iter()
        .filter(|r| !live_conns.contains(&r.conn))
        .map(|r| r.conn)
        .collect();
    assert_eq!(
        hls_conns.len(),
        1,
        "every HLS request reused one connection: {requests:?}"
    );
}

/// Reads a raw HTTP/1.1 response until the server closes; returns head and
/// body bytes as sent.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let body = all.split_off(split);
    (String::from_utf8(all).unwrap(), body)
}

#[tokio::test]
async fn a_live_body_passes_through_with_its_framing_and_exact_counts() {
    let proxy = TestProxy::start(test_config()).await;
    let origin = FakeOrigin::start("origin-a").await;
    origin.register(proxy.api).await;

    let (head, body) = raw_exchange(proxy.http, "GET /live/end1.flv HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(lower.contains("content-type: video/x-flv\r\n"), "{head}");
    assert!(lower.contains("access-control-allow-origin: *\r\n"), "{head}");
    assert!(lower.contains("x-origin: origin-a\r\n"), "{head}");

    // The body is well-formed chunked framing ending with the last chunk,
    // and its payload is exactly what the origin sent.
    let mut scanner = ChunkScanner::new();
    let scanned = scanner.scan(&body).unwrap();
    assert_eq!(scanned.end, Some(body.len()), "ends with the last chunk, nothing after");
    let payload_len = 13 + 16 * 1024 * FINITE_CHUNKS as usize;
    assert_eq!(scanned.payload, payload_len as u64);
    let decoded = client::request(proxy.http, Method::GET, "/live/end2.flv", &[], Bytes::new()).await;
    assert_eq!(decoded.status, StatusCode::OK);
    assert!(
        decoded.body == expected_prefix("flv", "end2", payload_len),
        "bytes differ from the origin's"
    );

    let counted = proxy
        .ctx
        .metrics
        .bytes_relayed_total
        .with_label_values(&["http-flv", "out"])
        .get();
    assert_eq!(counted, 2 * payload_len as u64, "byte counter counts payload, exactly");
}

#[tokio::test]
async fn http10_and_head_players_get_their_stream_through_hyper() {
    let proxy = TestProxy::start(test_config()).await;
    let origin = FakeOrigin::start("origin-a").await;
    origin.register(proxy.api).await;

    let (head, body) = raw_exchange(proxy.http, "GET /live/end3.flv HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.0 200 OK\r\n") || head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "no chunked framing for HTTP/1.0: {head}"
    );
    let payload_len = 13 + 16 * 1024 * FINITE_CHUNKS as usize;
    assert!(
        body == expected_prefix("flv", "end3", payload_len),
        "HTTP/1.0 body differs"
    );

    let resp = client::send(proxy.http, Method::HEAD, "/live/h.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "video/x-flv");
    let rest = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(rest.is_empty());
}
