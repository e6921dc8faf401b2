//! HTTP-FLV, HTTP-TS and HLS through the proxy, against fake SRS origins
//! registered through the real register API.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::client::{self, get, read_n, request};
use support::eventually;
use support::origin::{expected_prefix, segment_body, FakeOrigin};
use support::proxy::{test_config, TestProxy};

async fn proxy_with_origins(names: &[&str]) -> (TestProxy, Vec<FakeOrigin>) {
    let proxy = TestProxy::start(test_config()).await;
    let mut origins = Vec::new();
    for name in names {
        let o = FakeOrigin::start(name).await;
        o.register(proxy.api).await;
        origins.push(o);
    }
    (proxy, origins)
}

#[tokio::test]
async fn flv_and_ts_bytes_and_headers_arrive_intact() {
    let (proxy, _origins) = proxy_with_origins(&["origin-a"]).await;
    for (ext, content_type) in [("flv", "video/x-flv"), ("ts", "video/MP2T")] {
        let path = format!("/live/cam1.{ext}?token=abc");
        let resp = client::send(
            proxy.http,
            Method::GET,
            &path,
            &[("host", "video.example.com")],
            Bytes::new(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], content_type, "Content-Type reaches the player");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-origin"], "origin-a");
        assert_eq!(h["access-control-allow-origin"], "*");
        let mut body = resp.into_body();
        let got = read_n(&mut body, 300_000).await;
        assert!(
            got == expected_prefix(ext, "cam1", 300_000),
            "{ext}: bytes differ from what the origin sent"
        );
    }
    // The request reached the origin unchanged: path, query and Host (SRS
    // reads the vhost from Host).
    let reqs = _origins[0].requests();
    let flv = reqs
        .iter()
        .find(|r| r.path_and_query.starts_with("/live/cam1.flv"))
        .unwrap();
    assert_eq!(flv.path_and_query, "/live/cam1.flv?token=abc");
    assert_eq!(flv.host.as_deref(), Some("video.example.com"));
}

#[tokio::test]
async fn each_stream_stays_on_the_origin_that_claimed_it() {
    let (proxy, _origins) = proxy_with_origins(&["origin-a", "origin-b"]).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for i in 0..8 {
            let stream = format!("s{i}");
            // Mix protocols: the key is the same whatever the extension.
            let path = match round {
                0 => format!("/live/{stream}.flv"),
                1 => format!("/live/{stream}.m3u8"),
                _ => format!("/live/{stream}.ts"),
            };
            let resp = client::send(proxy.http, Method::GET, &path, &[], Bytes::new()).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let served_by = resp.headers()["x-origin"].to_str().unwrap().to_string();
            drop(resp);
            let first = owner.entry(stream.clone()).or_insert(served_by.clone());
            assert_eq!(*first, served_by, "{path} moved origins");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        used.len(),
        2,
        "least-streams spreads new streams over both origins: {owner:?}"
    );
}

#[tokio::test]
async fn an_expired_origin_gets_no_new_streams_and_its_streams_move() {
    let mut config = test_config();
    config.registration_ttl = Duration::from_millis(800);
    let proxy = TestProxy::start(config).await;
    let a = FakeOrigin::start("origin-a").await;
    let b = FakeOrigin::start("origin-b").await;
    a.register(proxy.api).await;
    b.register(proxy.api).await;
    // Pin a stream to A by placing streams until one lands there.
    let mut on_a = None;
    for i in 0..20 {
        let r = get(proxy.http, &format!("/live/x{i}.m3u8")).await;
        if r.header("x-origin") == Some("origin-a") {
            on_a = Some(format!("x{i}"));
            break;
        }
    }
    let on_a = on_a.expect("some stream lands on origin-a");
    // B keeps sending heartbeats; A stops.
    let heartbeat = {
        let body = b.register_body();
        let api = proxy.api;
        tokio::spawn(async move {
            loop {
                client::post(api, "/api/v1/srs/register", body.clone()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let gone = eventually(Duration::from_secs(5), || async {
        let list = get(proxy.api, "/api/v1/origins").await.json();
        let ids: Vec<String> = list["origins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect();
        (!ids.contains(&"origin-a".to_string())).then_some(())
    })
    .await;
    assert!(gone.is_some(), "origin-a expired from the origin list");
    for i in 0..6 {
        let r = get(proxy.http, &format!("/live/new{i}.m3u8")).await;
        assert_eq!(
            r.header("x-origin"),
            Some("origin-b"),
            "new stream went to the expired origin"
        );
    }
    let r = get(proxy.http, &format!("/live/{on_a}.m3u8")).await;
    assert_eq!(
        r.header("x-origin"),
        Some("origin-b"),
        "stream of the expired origin is re-claimed"
    );
    heartbeat.abort();
}

#[tokio::test]
async fn a_client_that_reads_nothing_does_not_make_the_proxy_buffer() {
    let (proxy, origins) = proxy_with_origins(&["origin-a"]).await;
    let resp = client::send(proxy.http, Method::GET, "/live/slow.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Read nothing; let the pipe fill up.
    let mut last = 0;
    let settled = eventually(Duration::from_secs(10), || {
        let now = origins[0].produced();
        let stable = now == last && now > 0;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stable.then_some(now)
        }
    })
    .await
    .expect("the origin stops producing once buffers are full");
    // Socket buffers on both sides plus the proxy's own buffers; an
    // unbounded proxy would have pulled hundreds of megabytes by now.
    assert!(
        settled < 32 * 1024 * 1024,
        "origin produced {settled} bytes for a client that read nothing"
    );
    // Meanwhile another client is served normally.
    let other = get(proxy.http, "/live/other.m3u8").await;
    assert_eq!(other.status, StatusCode::OK);
    // And the stalled client still gets the right bytes when it reads.
    let mut body = resp.into_body();
    let got = read_n(&mut body, 100_000).await;
    assert!(got == expected_prefix("flv", "slow", 100_000));
}

#[tokio::test]
async fn closing_the_client_closes_the_origin_stream_and_origin_death_ends_the_client() {
    let (proxy, origins) = proxy_with_origins(&["origin-a"]).await;
    let resp = client::send(proxy.http, Method::GET, "/live/c.flv", &[], Bytes::new()).await;
    let mut body = resp.into_body();
    read_n(&mut body, 50_000).await;
    assert_eq!(origins[0].open_streams(), 1);
    drop(body);
    let closed = eventually(Duration::from_secs(5), || async {
        (origins[0].open_streams() == 0).then_some(())
    })
    .await;
    assert!(closed.is_some(), "upstream stream still open after the client left");

    let resp = client::send(proxy.http, Method::GET, "/live/d.flv", &[], Bytes::new()).await;
    let mut body = resp.into_body();
    read_n(&mut body, 50_000).await;
    origins[0].kill();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "client response did not end after the origin died");
}

#[tokio::test]
async fn removing_an_origin_ends_relays_to_it() {
    let (proxy, origins) = proxy_with_origins(&["origin-a"]).await;
    let resp = client::send(proxy.http, Method::GET, "/live/e.flv", &[], Bytes::new()).await;
    let mut body = resp.into_body();
    read_n(&mut body, 20_000).await;
    // A second player that reads nothing: its origin connection must close
    // too, although hyper never polls its body.
    let stalled = client::send(proxy.http, Method::GET, "/live/e2.flv", &[], Bytes::new()).await;
    assert_eq!(origins[0].open_streams(), 2);
    // Wait until the pipes are full and nothing polls the bodies any more.
    let mut last = 0;
    let full = eventually(Duration::from_secs(10), || {
        let now = origins[0].produced();
        let stable = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stable.then_some(())
        }
    })
    .await;
    assert!(full.is_some(), "origin kept producing for stalled clients");
    proxy.ctx.store.remove_origin("origin-a").await.unwrap();
    let closed = eventually(Duration::from_secs(5), || async {
        (origins[0].open_streams() == 0).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "origin streams still open after the origin was removed"
    );
    drop(stalled);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "relay to a removed origin kept going");
}

#[tokio::test]
async fn hls_playlists_are_rewritten_and_segments_follow_the_token() {
    let (proxy, origins) = proxy_with_origins(&["origin-a", "origin-b"]).await;

    // Plain TS playlist.
    let r = get(proxy.http, "/live/h1.m3u8").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/vnd.apple.mpegurl"));
    let owner = r.header("x-origin").unwrap().to_string();
    let text = r.text();
    let seg_line = text.lines().find(|l| l.starts_with("h1-100.ts")).unwrap().to_string();
    let token = seg_line.split("spbhid=").nth(1).unwrap().to_string();
    assert_eq!(token.len(), 32, "token is 128 bits of hex: {seg_line}");
    assert_eq!(r.header("content-length").unwrap(), text.len().to_string());
    let seg = get(proxy.http, &format!("/live/{seg_line}")).await;
    assert_eq!(seg.status, StatusCode::OK);
    assert_eq!(seg.header("content-type"), Some("video/MP2T"));
    assert_eq!(seg.header("x-origin"), Some(owner.as_str()));
    assert_eq!(&seg.body[..], &segment_body("/live/h1-100.ts")[..]);
    // A reload without the token reuses the same token.
    let again = get(proxy.http, "/live/h1.m3u8").await.text();
    assert!(again.contains(&token));
    // A segment without a token goes to the origin serving its stream.
    let seg = get(proxy.http, "/live/h1-101.ts").await;
    assert_eq!(seg.header("x-origin"), Some(owner.as_str()));
    assert_eq!(seg.header("content-type"), Some("video/MP2T"));

    // fMP4 with EXT-X-MAP: init and .m4s follow the token.
    let r = get(proxy.http, "/fmp4/h2.m3u8").await;
    let owner = r.header("x-origin").unwrap().to_string();
    let text = r.text();
    let map = text.lines().find(|l| l.starts_with("#EXT-X-MAP")).unwrap();
    let init_uri = map.split('"').nth(1).unwrap();
    assert!(init_uri.starts_with("h2/init.mp4?spbhid="), "{map}");
    let init = get(proxy.http, &format!("/fmp4/{init_uri}")).await;
    assert_eq!(init.header("content-type"), Some("video/mp4"));
    assert_eq!(init.header("x-origin"), Some(owner.as_str()));
    let m4s = text.lines().find(|l| l.starts_with("h2/seg-1.m4s")).unwrap();
    let seg = get(proxy.http, &format!("/fmp4/{m4s}")).await;
    assert_eq!(seg.header("content-type"), Some("video/iso.segment"));
    assert_eq!(seg.header("x-origin"), Some(owner.as_str()));

    // Master playlist: variants carry the token and load from the same origin.
    let r = get(proxy.http, "/vod/h3.m3u8").await;
    let owner = r.header("x-origin").unwrap().to_string();
    let variant = r
        .text()
        .lines()
        .find(|l| l.starts_with("h3/low.m3u8?spbhid="))
        .unwrap()
        .to_string();
    let v = get(proxy.http, &format!("/vod/{variant}")).await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.header("x-origin"), Some(owner.as_str()));
    assert!(
        v.text().contains("low-100.ts?spbhid="),
        "variant playlist rewritten too"
    );

    // An unknown token is not trusted: the request is routed by its path.
    let r = get(proxy.http, "/live/h1.m3u8?spbhid=00000000000000000000000000000000").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.text().contains("spbhid=00000000000000000000000000000000"));

    // HEAD on a playlist: headers with the rewritten length, no body.
    let h = request(proxy.http, Method::HEAD, "/live/h1.m3u8", &[], Bytes::new()).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.body.is_empty());
    assert!(h.header("content-length").is_some());
    drop(origins);
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_reason_and_others_keep_working() {
    let (proxy, origins) = proxy_with_origins(&["origin-a"]).await;
    let cases: Vec<(Method, &str, StatusCode, &str)> = vec![
        (Method::GET, "/live/x.exe", StatusCode::NOT_FOUND, "not a stream"),
        (Method::GET, "/livestream.flv", StatusCode::BAD_REQUEST, "app"),
        (Method::GET, "/live/%2e%2e.flv", StatusCode::BAD_REQUEST, ".."),
        (Method::GET, "/live/a%00.flv", StatusCode::BAD_REQUEST, "control"),
        (Method::POST, "/live/x.flv", StatusCode::METHOD_NOT_ALLOWED, "POST"),
        (Method::DELETE, "/live/x.flv", StatusCode::METHOD_NOT_ALLOWED, "DELETE"),
        (
            Method::GET,
            "/live/missing.flv",
            StatusCode::NOT_FOUND,
            "not found on origin",
        ),
        (
            Method::GET,
            "/live/nobody-7.m4s",
            StatusCode::NOT_FOUND,
            "no origin serves",
        ),
    ];
    for (method, path, status, reason) in cases {
        let r = request(proxy.http, method.clone(), path, &[], Bytes::new()).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.text().contains(reason), "{method} {path}: {}", r.text());
        assert_eq!(r.text().lines().count(), 1, "one-line reason: {:?}", r.text());
    }
    // OPTIONS preflight.
    let r = request(proxy.http, Method::OPTIONS, "/live/x.flv", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("GET"));
    // HEAD on a live stream: headers only.
    let r = request(proxy.http, Method::HEAD, "/live/x.flv", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("video/x-flv"));
    assert!(r.body.is_empty());
    // Garbage on the wire gets a 400 from the HTTP layer and a close.
    let reply = client::raw(
        proxy.http,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "{reply}");

    // Origin that refuses connections → 502.
    let dead = FakeOrigin::start("origin-dead").await;
    let body = dead.register_body();
    drop(dead);
    origins[0].kill();
    proxy.ctx.store.remove_origin("origin-a").await.unwrap();
    client::post(proxy.api, "/api/v1/srs/register", body).await;
    let r = get(proxy.http, "/live/y.flv").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("origin-dead"), "{}", r.text());

    // No live origin at all → 503 at once.
    proxy.ctx.store.remove_origin("origin-dead").await.unwrap();
    let started = std::time::Instant::now();
    let r = get(proxy.http, "/live/z.flv").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("no live origin"), "{}", r.text());
    // Not a timing threshold on the proxy: a generous bound that only
    // catches a request that waited for some timeout instead of failing.
    assert!(started.elapsed() < Duration::from_secs(1));

    // The proxy still serves once an origin is back.
    let c = FakeOrigin::start("origin-c").await;
    c.register(proxy.api).await;
    let r = get(proxy.http, "/live/z.m3u8").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-origin"), Some("origin-c"));
}

#[tokio::test]
async fn register_api_answers_once_with_a_reason() {
    let mut config = test_config();
    // A static origin whose port nothing listens on: it only owns its id.
    config.default_backend.enabled = true;
    config.default_backend.http = Some(1);
    let proxy = TestProxy::start(config).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad json", "{not json".into(), "JSON"),
        (
            "bad origin id",
            r#"{"ip":"10.0.0.1","server":"a b","service":"v","pid":"1","rtmp":["1935"]}"#.into(),
            "may only hold",
        ),
        (
            "missing ip",
            r#"{"server":"s","service":"v","pid":"1","rtmp":["1935"]}"#.into(),
            "ip",
        ),
        (
            "missing pid",
            r#"{"ip":"10.0.0.1","server":"s","service":"v","rtmp":["1935"]}"#.into(),
            "pid",
        ),
        (
            "no port",
            r#"{"ip":"10.0.0.1","server":"s","service":"v","pid":"1"}"#.into(),
            "no usable",
        ),
        (
            "bad port",
            r#"{"ip":"10.0.0.1","server":"s","service":"v","pid":"1","rtmp":["x"]}"#.into(),
            "rtmp",
        ),
        ("oversized", big, "larger than"),
    ];
    for (what, body, needle) in cases {
        let r = client::post(proxy.api, "/api/v1/srs/register", body).await;
        let status = if what == "oversized" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(r.status, status, "{what}");
        // Exactly one JSON document in the body.
        let json = r.json();
        assert!(json["error"].as_str().unwrap().contains(needle), "{what}: {json}");
        assert_eq!(json["code"], status.as_u16());
    }
    let r = request(proxy.api, Method::GET, "/api/v1/srs/register", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let origins = get(proxy.api, "/api/v1/origins").await.json();
    assert_eq!(
        origins["origins"].as_array().unwrap().len(),
        1,
        "nothing but the static origin: bad bodies register nothing"
    );

    // A heartbeat cannot take over an origin that config registered.
    let hijack = r#"{"ip":"10.9.9.9","server":"default-backend","service":"v","pid":"1","rtmp":["1935"]}"#;
    let r = client::post(proxy.api, "/api/v1/srs/register", hijack).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("static"));

    let o = FakeOrigin::start("origin-a").await;
    let r = client::post(proxy.api, "/api/v1/srs/register", o.register_body()).await;
    assert_eq!(r.status, StatusCode::OK);
    let json = r.json();
    assert_eq!(json["code"], 0);
    assert!(json["pid"].as_str().is_some());
    let list = get(proxy.api, "/api/v1/origins").await.json();
    let all = list["origins"].as_array().unwrap();
    let entry = all.iter().find(|o| o["id"] == "origin-a").unwrap();
    let backend = all.iter().find(|o| o["id"] == "default-backend").unwrap();
    assert_eq!(backend["ip"], "127.0.0.1", "the refused heartbeat changed nothing");
    assert_eq!(entry["id"], "origin-a");
    assert_eq!(entry["ports"]["http"], o.addr.port());
    assert_eq!(entry["ports"]["rtc"], 8000);
    assert!(entry["expires_in_secs"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn versions_is_the_readiness_probe_and_sigterm_drains() {
    let (mut proxy, _origins) = proxy_with_origins(&["origin-a"]).await;
    for addr in [proxy.api, proxy.http] {
        let r = get(addr, "/api/v1/versions").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["data"]["version"], env!("CARGO_PKG_VERSION"));
    }
    // An open stream survives the start of the drain…
    let resp = client::send(proxy.http, Method::GET, "/live/d.flv", &[], Bytes::new()).await;
    let mut body = resp.into_body();
    read_n(&mut body, 10_000).await;
    proxy.ctx.shutdown.start_drain();
    let ctx = proxy.ctx.clone();
    let r = srs_proxy::api::versions(&ctx).await;
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness is 503 while draining"
    );
    // …listeners stop accepting…
    let refused = eventually(Duration::from_secs(3), || async {
        tokio::net::TcpStream::connect(proxy.http).await.is_err().then_some(())
    })
    .await;
    assert!(refused.is_some(), "listener still accepting after drain");
    read_n(&mut body, 100_000).await;
    // …and is cut when the grace period (2 s in tests) ends.
    proxy.drain().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream not closed after the grace period");
}

#[tokio::test]
async fn draining_closes_an_idle_keep_alive_connection_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, _origins) = proxy_with_origins(&["origin-a"]).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    tcp.write_all(b"GET /api/v1/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The whole answer, head and `Content-Length` body.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer was whole");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                break;
            }
        }
    }
    // Kept alive and idle: the drain closes it, without the abort. A live
    // stream stays open through the drain until the abort (2 s of grace
    // here), so the servers cannot all stop and bring the abort sooner.
    let live = client::send(proxy.http, Method::GET, "/live/held.flv", &[], Bytes::new()).await;
    assert_eq!(live.status(), StatusCode::OK);
    proxy.ctx.shutdown.start_drain();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed when draining starts")
        .unwrap();
    assert!(rest.is_empty(), "nothing more is written: {rest:?}");
    assert!(
        !proxy.ctx.shutdown.is_aborted(),
        "closed by the drain, not only at the abort"
    );
    drop(live);
}

#[tokio::test]
async fn static_files_cannot_escape_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "<h1>players</h1>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    let mut config = test_config();
    config.static_files = Some(root);
    let proxy = TestProxy::start(config).await;

    let r = get(proxy.http, "/index.html").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.text(), "<h1>players</h1>");
    assert_eq!(get(proxy.http, "/").await.text(), "<h1>players</h1>");
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/x/%2E%2E/%2e%2e/secret.txt",
        "/leak.txt",
    ] {
        let reply = client::raw(
            proxy.http,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(!reply.contains("secret"), "{path} leaked: {reply}");
        assert!(reply.starts_with("HTTP/1.1 40"), "{path}: {reply}");
    }
}

#[tokio::test]
async fn the_origin_is_asked_for_what_the_key_names() {
    let (proxy, origins) = proxy_with_origins(&["origin-a"]).await;
    // The query names the stream: the origin gets that stream's path.
    let r = get(proxy.http, "/live/livestream.m3u8?stream=other").await;
    assert_eq!(r.status, StatusCode::OK);
    // Dot segments in the path never reach the origin.
    let reply = client::raw(
        proxy.http,
        b"GET /../../etc/x.m3u8?app=live&stream=a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let paths: Vec<String> = origins[0].requests().into_iter().map(|r| r.path_and_query).collect();
    assert_eq!(
        paths,
        vec![
            "/live/other.m3u8?stream=other".to_string(),
            "/live/a.m3u8?app=live&stream=a".to_string()
        ]
    );
    // A name the origin does not have leaves no claim behind.
    let r = get(proxy.http, "/live/missing1.flv").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(proxy.http, "/live/missing2.m3u8").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let streams = get(proxy.api, "/api/v1/streams").await.json();
    let names: Vec<&str> = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"]["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "other"], "claims for missing streams were released");
}

/// A silent origin (accepts, never answers): the request gets 504 after the
/// response timeout, and the origin is taken out: the next request gets
/// 503 at once (there is no other origin).
#[tokio::test]
async fn an_origin_that_never_answers_gets_a_504_not_a_hang() {
    for path in ["/live/s.flv", "/live/s.m3u8"] {
        let mut config = test_config();
        config.origin_response_timeout = Duration::from_millis(300);
        let proxy = TestProxy::start(config).await;
        // Accepts connections and never writes a byte.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let body = format!(r#"{{"ip":"127.0.0.1","server":"silent","service":"v","pid":"1","http":["{port}"]}}"#);
        assert_eq!(
            client::post(proxy.api, "/api/v1/srs/register", body).await.status,
            StatusCode::OK
        );
        let r = tokio::time::timeout(Duration::from_secs(10), get(proxy.http, path))
            .await
            .expect("request hung");
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{path}: {}", r.text());
        assert!(r.text().contains("silent"), "{}", r.text());
        let r = get(proxy.http, path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {}", r.text());
        held.abort();
    }
}

#[tokio::test]
async fn over_the_connection_cap_players_get_503_and_open_streams_go_on() {
    let config = srs_proxy::config::Config {
        http_max_connections: 1,
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    let origin = FakeOrigin::start("origin-a").await;
    origin.register(proxy.api).await;
    let resp = client::send(proxy.http, Method::GET, "/live/cap.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    read_n(&mut body, 10_000).await;

    let refused = get(proxy.http, "/live/cap.flv").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("connection limit"), "{}", refused.text());
    let m = &proxy.ctx.metrics;
    assert_eq!(
        m.listener_refused_total
            .with_label_values(&["http", "connection_limit"])
            .get(),
        1
    );
    assert_eq!(m.listener_connections.with_label_values(&["http"]).get(), 1);

    // The admitted player still streams (read_n fails if the body ends).
    assert_eq!(read_n(&mut body, 200_000).await.len(), 200_000);

    // Its slot frees when it leaves.
    drop(body);
    let admitted = eventually(Duration::from_secs(5), || async {
        let r = get(proxy.http, "/api/v1/versions").await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(admitted.is_some(), "a new connection is admitted once the first closed");
}

/// One response off `tcp`: the head's text and the body by its
/// `Content-Length` (none for a `HEAD`).
async fn read_response(tcp: &mut tokio::net::TcpStream, pending: &mut Vec<u8>, head_only: bool) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let length = if head_only { 0 } else { length };
            if pending.len() >= end + 4 + length {
                let body = pending[end + 4..end + 4 + length].to_vec();
                pending.drain(..end + 4 + length);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn pipelined_head_and_bodied_requests_share_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, _origins) = proxy_with_origins(&["origin-a"]).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    // Three requests in one write: answered in order, the HEAD without a
    // body but with the length the GET gets.
    tcp.write_all(
        b"GET /live/p.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /live/p.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /live/p-3.ts HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let (head, playlist) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\ndate: ") && head.contains("\r\nserver: "), "{head}");
    assert!(String::from_utf8_lossy(&playlist).contains("#EXTM3U"));
    let (head, body) = read_response(&mut tcp, &mut pending, true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(body.is_empty());
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", playlist.len())),
        "{head}"
    );
    let (head, segment) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(segment, segment_body("/live/p-3.ts"));

    // A request with a body is served too (here refused: streams are GET
    // or HEAD), and the connection goes on serving.
    tcp.write_all(b"POST /live/p.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, body) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("POST"), "{body:?}");
    tcp.write_all(b"GET /live/p.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A head longer than the first read (a big cookie) arrives in pieces.
    let cookie = "c".repeat(6000);
    tcp.write_all(format!("GET /live/p.m3u8 HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // `Connection: close` is answered in kind, then the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    tcp.write_all(b"GET /live/p.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut tcp, &mut pending, false).await;
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(rest.is_empty() && pending.is_empty());
}

#[tokio::test]
async fn http_1_0_players_get_http_1_0_answers() {
    use tokio::io::AsyncWriteExt;
    let (proxy, _origins) = proxy_with_origins(&["origin-a"]).await;
    // A live stream of unknown length: no chunked framing for HTTP/1.0;
    // the body ends when the connection does.
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    tcp.write_all(b"GET /live/end-a.flv HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut reply),
    )
    .await
    .expect("closed once the origin's stream ended")
    .unwrap();
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head");
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(
        !head.contains("\r\ntransfer-encoding:") && !head.contains("\r\ncontent-length:"),
        "{head}"
    );
    let body = &reply[end + 4..];
    assert!(body.len() > 13, "FLV header and tags: {} bytes", body.len());
    assert_eq!(
        body,
        expected_prefix("flv", "end-a", body.len()),
        "the origin's bytes, unframed"
    );

    // Keep-alive asked for is kept, and said so.
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..2 {
        tcp.write_all(b"GET /live/q.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut tcp, &mut pending, false).await;
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: keep-alive"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("#EXTM3U"));
    }
}
