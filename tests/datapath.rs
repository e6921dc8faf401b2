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

/// A deterministic stand-in for randomness: the same pieces every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// A chunked body the relay must pass through as it is: runs of tiny
/// chunks (many per peek), chunk extensions, chunks far larger than a
/// pipe, and trailers after the last chunk. Returns it and its payload.
fn awkward_chunked_body(rng: &mut Lcg) -> (Vec<u8>, usize) {
    let (mut body, mut payload) = (Vec::new(), 0);
    for i in 0..400 {
        let size = match i % 50 {
            0 => 300_000 + rng.below(5000),
            1..=30 => 1 + rng.below(4),
            _ => 1 + rng.below(9000),
        };
        if i % 7 == 0 {
            body.extend(format!("{size:x};name=\"v{i}\"\r\n").bytes());
        } else {
            body.extend(format!("{size:X}\r\n").bytes());
        }
        body.extend((0..size).map(|j| (i * 31 + j) as u8));
        body.extend_from_slice(b"\r\n");
        payload += size;
    }
    body.extend_from_slice(b"0\r\nx-trailer: done\r\n\r\n");
    (body, payload)
}

/// Serves `head` + `body` for every GET of `path`, written in pieces of
/// uneven size (a chunk's size line split across writes, many chunks in
/// one), then closes; anything else gets a 404.
async fn scripted_origin(path: &'static str, head: String, body: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = std::sync::Arc::new([head.into_bytes(), body].concat());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if !request.starts_with(format!("GET {path} ").as_bytes()) {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let mut rng = Lcg(7);
                let mut at = 0;
                while at < response.len() {
                    let piece = if rng.below(10) == 0 {
                        1 + rng.below(200_000)
                    } else {
                        1 + rng.below(3000)
                    };
                    let end = (at + piece).min(response.len());
                    if tcp.write_all(&response[at..end]).await.is_err() {
                        return;
                    }
                    at = end;
                    tokio::task::yield_now().await;
                }
            });
        }
    });
    addr
}

/// Plays `path` on `proxy` with a 4 KiB receive buffer, so the proxy's
/// writes to it keep falling short; reads to the end. Returns head and body.
async fn slow_player(proxy: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(proxy).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await.unwrap() {
            0 => break,
            n => all.extend_from_slice(&buf[..n]),
        }
    }
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let body = all.split_off(split);
    (String::from_utf8(all).unwrap(), body)
}

/// With splicing on (the default) and off, a live body in each framing
/// reaches a player that keeps falling behind byte for byte as the origin
/// sent it, and the byte counter counts its payload exactly; the spliced
/// counter shows which way the bytes went.
#[tokio::test]
async fn every_framing_passes_through_byte_for_byte_with_splice_on_and_off() {
    let mut rng = Lcg(42);
    let (chunked, chunked_payload) = awkward_chunked_body(&mut rng);
    let plain: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        (
            "chunked",
            "transfer-encoding: chunked\r\n".to_string(),
            chunked.clone(),
            chunked_payload,
        ),
        (
            "length",
            format!("content-length: {}\r\n", plain.len()),
            plain.clone(),
            plain.len(),
        ),
        ("close", "connection: close\r\n".to_string(), plain.clone(), plain.len()),
    ];
    for splice in [true, false] {
        for (framing, header, body, payload) in &cases {
            let path = "/live/scripted.flv";
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: video/x-flv\r\n{header}\r\n");
            let origin = scripted_origin(path, head, body.clone()).await;
            let mut config = test_config();
            config.relay_splice = splice;
            let proxy = TestProxy::start(config).await;
            support::origin::post_register(proxy.api, support::origin::register_body("scripted", origin)).await;

            let (head, got) = slow_player(proxy.http, path).await;
            let lower = head.to_ascii_lowercase();
            assert!(lower.starts_with("http/1.1 200 ok\r\n"), "{framing}: {head}");
            assert_eq!(
                lower.contains("transfer-encoding: chunked"),
                *framing == "chunked",
                "{framing}: {head}"
            );
            assert_eq!(got.len(), body.len(), "{framing}, splice {splice}: body length");
            assert!(
                got == *body,
                "{framing}, splice {splice}: bytes differ from the origin's"
            );

            let metrics = &proxy.ctx.metrics;
            let counted = metrics
                .bytes_relayed_total
                .with_label_values(&["http-flv", "out"])
                .get();
            assert_eq!(
                counted, *payload as u64,
                "{framing}, splice {splice}: payload counted exactly"
            );
            let spliced = metrics.relay_spliced_bytes_total.get();
            if splice {
                assert!(spliced > 0, "{framing}: nothing went through the pipe");
                assert!(
                    spliced <= body.len() as u64,
                    "{framing}: {spliced} bytes spliced of {}",
                    body.len()
                );
            } else {
                assert_eq!(spliced, 0, "{framing}: spliced with relay_splice off");
            }
        }
    }
}
