//! Bad input, as an attacker would send it: one row per input, each
//! answered with its status and reason, while the proxy stays up and a
//! stream that was already running is not disturbed. Then what must be
//! left behind afterwards: nothing, in memory or in Redis.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use srs_proxy::config::{CidrList, Config, DiscoveryMode, Secret, StaticOrigin};
use srs_proxy::store::{MemoryStore, RedisStore, Store};
use support::client::{self, read_n, Reply};
use support::eventually;
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};
use support::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(30);
const TOKEN: &str = "catalogue-token-5d1f0c";
const REGISTER: &str = "/api/v1/srs/register";

/// An HTTP/1.1 connection kept alive for many requests (and opened again
/// when the proxy closed it after an error), from `source` when given
/// (another loopback address is another peer).
struct Conn {
    addr: SocketAddr,
    source: Option<IpAddr>,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Self {
        Conn {
            addr,
            source,
            sender: Self::connect(addr, source).await,
        }
    }

    async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> SendRequest<Full<Bytes>> {
        let tcp = match source {
            None => TcpStream::connect(addr).await.unwrap(),
            Some(ip) => {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(addr).await.unwrap()
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    async fn send(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("host", "proxy.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if self.sender.ready().await.is_err() {
            self.sender = Self::connect(self.addr, self.source).await;
        }
        let resp = self
            .sender
            .send_request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
        }
    }
}

/// Writes `bytes` while reading whatever comes back until the proxy
/// closes; returns the reply text.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, r.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// A register body for `id` at `ip`.
fn heartbeat(id: &str, ip: &str, http_port: u16) -> String {
    serde_json::json!({
        "ip": ip, "server": id, "service": "s", "pid": "1",
        "rtmp": ["1935"], "http": [http_port.to_string()],
    })
    .to_string()
}

/// Checks one row: the status and a reason containing `reason`.
fn row(input: &str, got: &Reply, status: u16, reason: &str) {
    assert_eq!(got.status.as_u16(), status, "{input}: {}", got.text());
    assert!(
        got.text().contains(reason),
        "{input}: reason {:?} not in {:?}",
        reason,
        got.text()
    );
    assert!(
        !got.text().contains("os error") && got.text().lines().count() <= 1,
        "{input}: {:?}",
        got.text()
    );
}

fn raw_row(input: &str, reply: &str, status_line: &str) {
    assert!(reply.starts_with(status_line), "{input}: {reply:?}");
}

/// A running stream through `proxy`, read a little to prove it flows.
async fn running_stream(proxy: &TestProxy) -> hyper::body::Incoming {
    let resp = client::send(proxy.http, Method::GET, "/live/running.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    read_n(&mut body, 64 * 1024).await;
    body
}

fn refused(proxy: &TestProxy, listener: &str, reason: &str) -> u64 {
    proxy
        .ctx
        .metrics
        .listener_refused_total
        .with_label_values(&[listener, reason])
        .get()
}

/// `origin` as a static origin named `id` (static origins never expire,
/// and no heartbeat may take their id).
fn static_origin(id: &str, origin: &FakeOrigin) -> StaticOrigin {
    StaticOrigin {
        id: Some(id.into()),
        ip: "127.0.0.1".into(),
        rtmp: None,
        http: Some(origin.addr.port()),
        api: None,
        srt: None,
        rtc: None,
        weight: 1,
        max_streams: 0,
    }
}

/// The proxy the registration and HTTP rows run against: a token on the
/// system API, only 10.0.0.0/8 allowed for origins, a short header
/// timeout; its one origin is static, at 127.0.0.1.
async fn guarded_proxy(origin: &FakeOrigin) -> TestProxy {
    let mut config = test_config();
    config.http_api_auth.enabled = true;
    config.http_api_auth.kind = "bearer".into();
    config.http_api_auth.token = Secret(TOKEN.into());
    config.register.allow_cidrs = "10.0.0.0/8".parse::<CidrList>().unwrap();
    config.http_header_timeout = Duration::from_secs(1);
    // No registration may lapse while 10,000 heartbeats are sent.
    config.registration_ttl = Duration::from_secs(3600);
    config.origins = vec![static_origin("static-a", origin)];
    TestProxy::start(config).await
}

#[tokio::test]
async fn registration_rows() {
    let origin = FakeOrigin::start("static-a").await;
    let proxy = guarded_proxy(&origin).await;
    let mut stream = running_stream(&proxy).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let mut api = Conn::open(proxy.api, None).await;
    let good = heartbeat("good-1", "10.0.0.1", 8080);

    // Without, and with a wrong token: 401 with the challenge, and the
    // body is not even read.
    for (input, headers) in [
        ("register without a token", vec![]),
        ("register with a wrong token", vec![("authorization", "Bearer nope")]),
        (
            "register with a Basic credential",
            vec![("authorization", "Basic Y2F0YWxvZ3Vl")],
        ),
    ] {
        let r = api.send(Method::POST, REGISTER, &headers, good.clone()).await;
        row(input, &r, 401, "token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{input}");
    }

    let own_port = proxy.http.port().to_string();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "ip = 169.254.169.254",
            heartbeat("meta", "169.254.169.254", 80),
            403,
            "link-local",
        ),
        ("ip = fe80::1", heartbeat("ll6", "fe80::1", 80), 403, "link-local"),
        ("ip = 0.0.0.0", heartbeat("zero", "0.0.0.0", 80), 403, "unspecified"),
        ("ip = ::", heartbeat("zero6", "::", 80), 403, "unspecified"),
        (
            "ip = 239.1.2.3 (multicast)",
            heartbeat("mcast", "239.1.2.3", 80),
            403,
            "multicast",
        ),
        (
            "the proxy's own address and port",
            heartbeat("loop", "127.0.0.1", own_port.parse().unwrap()),
            403,
            "own listeners",
        ),
        (
            "a host name resolving to loopback, loopback not allowed",
            heartbeat("named", "localhost", 8080),
            403,
            "outside the allowed ranges",
        ),
        (
            "ip = 8.8.8.8 (public)",
            heartbeat("public", "8.8.8.8", 80),
            403,
            "outside the allowed ranges",
        ),
        (
            "a forged log line as the origin id",
            heartbeat("evil\n\u{1b}[31mFAKE LOG LINE", "10.0.0.1", 80),
            400,
            "may only hold",
        ),
        (
            "a 10 KB origin id",
            heartbeat(&"x".repeat(10 * 1024), "10.0.0.1", 80),
            400,
            "longer than",
        ),
        (
            "a body over 64 KiB",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024)),
            413,
            "larger than",
        ),
        (
            "a host name that does not resolve",
            heartbeat("nx", "no-such-host.invalid", 80),
            400,
            "does not resolve",
        ),
        (
            "static config's id",
            heartbeat("static-a", "10.0.0.9", 80),
            409,
            "static config",
        ),
    ];
    for (input, body, status, reason) in cases {
        let r = api.send(Method::POST, REGISTER, &auth, body).await;
        row(input, &r, status, reason);
    }

    // An id registered by one peer cannot be re-pointed by another.
    let r = api
        .send(Method::POST, REGISTER, &auth, heartbeat("victim", "10.0.0.5", 8080))
        .await;
    row("a first registration", &r, 200, "\"code\":0");
    let mut other_peer = Conn::open(proxy.api, Some("127.0.0.2".parse().unwrap())).await;
    let r = other_peer
        .send(Method::POST, REGISTER, &auth, heartbeat("victim", "10.6.6.6", 8080))
        .await;
    row("takeover of another peer's id", &r, 409, "another peer");
    let victim = proxy.ctx.store.registration("victim").await.unwrap().unwrap();
    assert_eq!(&*victim.ip, "10.0.0.5", "the takeover changed nothing");
    // Its own peer may refresh and move it.
    let r = api
        .send(Method::POST, REGISTER, &auth, heartbeat("victim", "10.0.0.6", 8080))
        .await;
    row("the owner re-registers", &r, 200, "\"code\":0");
    // Unhealthy, it still belongs to its peer.
    proxy.ctx.store.report_failure("victim", "refused").await.unwrap();
    let r = other_peer
        .send(Method::POST, REGISTER, &auth, heartbeat("victim", "10.6.6.6", 8080))
        .await;
    row("takeover of another peer's unhealthy id", &r, 409, "another peer");
    let victim = proxy.ctx.store.registration("victim").await.unwrap().unwrap();
    assert_eq!(&*victim.ip, "10.0.0.6", "the takeover changed nothing");

    // A body that starts and never finishes is given the header timeout.
    let trickle = format!(
        "POST {REGISTER} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"ip\":"
    );
    let reply = exchange(proxy.api, trickle.into_bytes()).await;
    raw_row("a register body that never finishes", &reply, "HTTP/1.1 408");
    assert!(reply.contains("body not received"), "{reply:?}");

    // 10,000 distinct ids from one peer: the per-peer cap (16) holds.
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..10_000 {
        let r = api
            .send(
                Method::POST,
                REGISTER,
                &auth,
                heartbeat(&format!("flood-{i}"), "10.0.0.7", 8080),
            )
            .await;
        *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.text().contains("max_origins_per_peer"), "{}", r.text());
        }
    }
    // "victim" is one of this peer's 16.
    assert_eq!(statuses, [(200, 15), (429, 9_985)].into(), "10,000 ids from one peer");
    let heartbeats = proxy.ctx.store.list_origins().await.unwrap();
    assert_eq!(
        heartbeats.iter().filter(|o| o.origin.id.starts_with("flood-")).count(),
        15
    );

    // Admin endpoints need the token and are paged.
    let r = api.send(Method::GET, "/api/v1/origins", &[], Bytes::new()).await;
    row("origins without a token", &r, 401, "token");
    let r = api.send(Method::GET, "/api/v1/streams", &[], Bytes::new()).await;
    row("streams without a token", &r, 401, "token");
    let r = api
        .send(Method::GET, "/api/v1/origins?limit=5000", &auth, Bytes::new())
        .await;
    row("a page over the maximum", &r, 400, "limit");
    let mut seen = Vec::new();
    let mut path = "/api/v1/origins?limit=7".to_string();
    loop {
        let page = api.send(Method::GET, &path, &auth, Bytes::new()).await.json();
        let items = page["origins"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|o| o["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(c) => path = format!("/api/v1/origins?limit=7&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are in order, without repeats");
    assert_eq!(seen.len(), 17, "15 flood origins, victim, static-a");
    // Probes and scrapes stay open.
    assert_eq!(
        api.send(Method::GET, "/api/v1/versions", &[], Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(api.send(Method::GET, "/metrics", &[], Bytes::new()).await.status, 200);

    // The stream that was running all along is intact and still flowing.
    assert_eq!(read_n(&mut stream, 256 * 1024).await.len(), 256 * 1024);
    let m = &proxy.ctx.metrics;
    assert_eq!(m.registrations_total.with_label_values(&["unauthorized"]).get(), 3);
    assert_eq!(m.registrations_total.with_label_values(&["limit"]).get(), 9_985);
    assert_eq!(m.registrations_total.with_label_values(&["address_refused"]).get(), 8);
}

#[tokio::test]
async fn http_rows() {
    let origin = FakeOrigin::start("static-a").await;
    let proxy = guarded_proxy(&origin).await;
    let mut stream = running_stream(&proxy).await;
    let http = proxy.http;

    let big_header = format!(
        "GET /live/a.flv HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    raw_row(
        "1 MB header",
        &exchange(http, big_header.into_bytes()).await,
        "HTTP/1.1 431",
    );
    let mut many = String::from("GET /live/a.flv HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    raw_row("10k headers", &exchange(http, many.into_bytes()).await, "HTTP/1.1 431");
    let mut some = String::from("GET /live/a.flv HTTP/1.1\r\nHost: x\r\n");
    for i in 0..65 {
        some.push_str(&format!("X-{i}: v\r\n"));
    }
    some.push_str("\r\n");
    raw_row(
        "65 headers (limit 64)",
        &exchange(http, some.into_bytes()).await,
        "HTTP/1.1 431",
    );
    let url = format!(
        "GET /live/a.flv?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "y".repeat(1024 * 1024)
    );
    raw_row("1 MB URL", &exchange(http, url.into_bytes()).await, "HTTP/1.1 431");
    let url = format!(
        "GET /live/a.flv?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "y".repeat(5000)
    );
    let reply = exchange(http, url.into_bytes()).await;
    raw_row("5 KB URL (limit 4 KiB)", &reply, "HTTP/1.1 414");
    assert!(reply.contains("request target longer than 4096 bytes"), "{reply}");
    let reply = exchange(
        http,
        b"GET /live/a.flv HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    raw_row("two Host headers", &reply, "HTTP/1.1 400");
    assert!(reply.contains("more than one Host header"), "{reply}");
    let reply = exchange(http, b"GET /live/a.flv HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()).await;
    raw_row("HTTP/1.1 without Host", &reply, "HTTP/1.1 400");
    assert!(reply.contains("without Host"), "{reply}");
    let reply = exchange(
        proxy.api,
        b"POST /api/v1/srs/register HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n"
            .to_vec(),
    )
    .await;
    raw_row("a 1 GB declared body", &reply, "HTTP/1.1 413");

    // 500 slowloris connections: each sends part of a head and stops.
    let before = refused(&proxy, "http", "header_timeout");
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(http).await.unwrap();
        tcp.write_all(b"GET /live/a.flv HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // Meanwhile the proxy answers others.
    let r = client::get(http, "/api/v1/versions").await;
    assert_eq!(r.status, StatusCode::OK, "the proxy answers while 500 heads hang");
    for mut tcp in slow {
        let closed = client::closed_within(&mut tcp, BOUND).await;
        assert!(closed, "a slowloris connection was never closed");
    }
    assert_eq!(refused(&proxy, "http", "header_timeout") - before, 500);

    // An idle keep-alive connection is closed too, after its response.
    let mut idle = TcpStream::connect(http).await.unwrap();
    idle.write_all(b"GET /api/v1/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(BOUND, idle.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        refused(&proxy, "http", "header_timeout") - before,
        500,
        "closing an idle keep-alive connection is not a refusal"
    );

    // Kept alive across requests, a connection gets the whole timeout
    // after each: the timer set while it waited for an earlier head is
    // moved on, not obeyed (the third request comes 1.4 s after the first
    // wait began, with a 1 s timeout).
    let tcp = TcpStream::connect(http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let req = Request::get("/api/v1/versions")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {round} on the kept-alive connection: {e}"));
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }

    // A 502 tells the client which origin, not where it is or why.
    let scan = FakeOrigin::start("scan22").await;
    let port = scan.addr.port();
    scan.kill();
    drop(scan);
    let config = test_config();
    let lone = TestProxy::start(config).await;
    let r = client::post(lone.api, REGISTER, heartbeat("scan22", "127.0.0.1", port)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = client::get(lone.http, "/live/scan.flv").await;
    row("an origin that refuses connections", &r, 502, "scan22");
    assert!(
        !r.text().contains("127.0.0.1") && !r.text().contains(&port.to_string()),
        "{}",
        r.text()
    );

    // The playlist rows: URIs elsewhere are passed on, never fetched; a
    // playlist that would balloon is refused.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let r = client::get(http, &format!("/elsewhere/p{elsewhere_port}.m3u8")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let absolute = format!("http://127.0.0.1:{elsewhere_port}/seg-1.ts");
    assert!(
        r.text().lines().any(|l| l == absolute),
        "the absolute URI passes untouched: {}",
        r.text()
    );
    let mut amplified = Vec::new();
    for _ in 0..20 {
        amplified.push(tokio::spawn(client::get(http, "/amplify/a.m3u8")));
    }
    for r in amplified {
        let r = r.await.unwrap();
        row("a playlist of 520,000 one-character URIs", &r, 502, "bad playlist");
    }
    let never = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
    assert!(never.is_err(), "the proxy fetched a URI that points elsewhere");

    assert_eq!(read_n(&mut stream, 256 * 1024).await.len(), 256 * 1024);
    assert_eq!(client::get(http, "/api/v1/versions").await.status, StatusCode::OK);
    for (reason, n) in [("header_too_large", 4), ("uri_too_long", 1), ("bad_host", 2)] {
        assert_eq!(refused(&proxy, "http", reason), n, "{reason}");
    }
    assert_eq!(refused(&proxy, "system-api", "body_too_large"), 1);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_the_admitted_stream_goes_on() {
    let origin = FakeOrigin::start("origin-a").await;
    let config = Config {
        http_max_connections: 2,
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    origin.register(proxy.api).await;
    let mut stream = running_stream(&proxy).await;
    let _held = TcpStream::connect(proxy.http).await.unwrap();
    // The held connection is admitted once the accept loop has seen it.
    let full = eventually(BOUND, || async {
        (proxy
            .ctx
            .metrics
            .listener_connections
            .with_label_values(&["http"])
            .get()
            == 2)
            .then_some(())
    })
    .await;
    assert!(full.is_some());
    let r = client::get(proxy.http, "/live/running.flv").await;
    row("a connection beyond the cap", &r, 503, "connection limit");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(read_n(&mut stream, 256 * 1024).await.len(), 256 * 1024);
}

#[tokio::test]
async fn registration_is_off_while_kubernetes_discovery_watches() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kube::write_kubeconfig(dir.path(), "http://127.0.0.1:1");
    let mut config = test_config();
    config.kubernetes.discovery = DiscoveryMode::Originpool;
    config.kubernetes.kubeconfig = kubeconfig.display().to_string();
    let proxy = TestProxy::start(config).await;
    let origin = FakeOrigin::start("heartbeat").await;
    let r = client::post(proxy.api, REGISTER, origin.register_body()).await;
    row("a heartbeat under Kubernetes discovery", &r, 403, "registration is off");
    assert!(proxy.ctx.store.list_origins().await.unwrap().is_empty());
}

#[tokio::test]
async fn metrics_can_require_the_token() {
    let mut config = test_config();
    config.http_api_auth.enabled = true;
    config.http_api_auth.kind = "bearer".into();
    config.http_api_auth.token = Secret(TOKEN.into());
    config.http_api_auth.metrics = true;
    let proxy = TestProxy::start(config).await;
    let r = client::get(proxy.api, "/metrics").await;
    row("metrics without a token", &r, 401, "token");
    let bearer = format!("Bearer {TOKEN}");
    let r = client::request(
        proxy.api,
        Method::GET,
        "/metrics",
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("srs_proxy_build_info"));
    assert_eq!(client::get(proxy.api, "/api/v1/versions").await.status, StatusCode::OK);
}

/// 20,000 distinct names nobody publishes, as FLV and as playlists: each a
/// 404, and afterwards the store holds what it held before.
async fn unknown_names_leave_nothing(proxy: &TestProxy, count: impl Fn() -> usize) {
    let baseline = count();
    let started = std::time::Instant::now();
    let mut stream = running_stream(proxy).await;
    let with_stream = count();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let http = proxy.http;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(http, None).await;
            for i in (worker..20_000).step_by(8) {
                let path = match i % 2 {
                    0 => format!("/live/missing{i}.flv"),
                    _ => format!("/live/missing{i}.m3u8"),
                };
                let r = conn.send(Method::GET, &path, &[], Bytes::new()).await;
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("20,000 unknown names answered in {:?}", started.elapsed());
    assert_eq!(read_n(&mut stream, 256 * 1024).await.len(), 256 * 1024);
    assert_eq!(count(), with_stream, "404s left entries behind");
    drop(stream);
    // And the running stream's own entries go with their TTL.
    let back = eventually(BOUND, || async { (count() == baseline).then_some(()) }).await;
    assert!(back.is_some(), "{} entries, {baseline} before", count());
}

/// A config whose one origin is `origin`, statically (it never expires
/// while 20,000 requests run), with short stream mappings.
fn with_static_origin(origin: &FakeOrigin) -> Config {
    Config {
        stream_ttl: Duration::from_secs(1),
        origins: vec![static_origin("origin-a", origin)],
        ..test_config()
    }
}

#[tokio::test]
async fn unknown_names_leave_nothing_in_memory() {
    let origin = FakeOrigin::start("origin-a").await;
    let memory = MemoryStore::new();
    let proxy = TestProxy::start_with_store(with_static_origin(&origin), Store::Memory(memory.clone())).await;
    // The static origin is in the store before the baseline is taken.
    eventually(BOUND, || async { (memory.entry_count() > 0).then_some(()) }).await;
    unknown_names_leave_nothing(&proxy, || memory.entry_count()).await;
}

#[tokio::test]
async fn unknown_names_leave_nothing_in_redis() {
    let redis = RedisServer::shared();
    let prefix = "catalogue:";
    let store = RedisStore::connect(&redis.config(prefix)).await.unwrap();
    let origin = FakeOrigin::start("origin-a").await;
    let proxy = TestProxy::start_with_store(with_static_origin(&origin), Store::Redis(store)).await;
    let pattern = format!("{prefix}*");
    eventually(BOUND, || async { (!redis.keys(&pattern).is_empty()).then_some(()) }).await;
    unknown_names_leave_nothing(&proxy, || redis.keys(&pattern).len()).await;
}
