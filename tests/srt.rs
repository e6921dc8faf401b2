//! SRT publish and play through the proxy, over real sockets, with libsrt
//! on both ends: `srt-live-transmit` and `ffmpeg` as the clients, and
//! `srt-live-transmit` as the origins' SRT port (see `support::srt`).
//! Hostile datagrams are written by hand with the proxy's own codec; they
//! play a broken or malicious client, never the peers under test.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use srs_proxy::balance::Policy;
use srs_proxy::config::{Config, ListenAddr, StoreKind};
use srs_proxy::origin::Protocol;
use srs_proxy::server::Stopped;
use srs_proxy::srt::handshake::{self, ext, ext_flag, Extension, Handshake, RejectReason, RequestType};
use srs_proxy::srt::packet;
use srs_proxy::store::{Claim, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::client;
use support::eventually;
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};
use support::redis::RedisServer;
use support::rtmp_origin::RtmpOrigin;
use support::srt::{register, register_body, ts_chunks, SrtClient, SrtOrigin, BOUND};
use tokio::net::UdpSocket;

const PUBLISH: &str = "#!::r=live/livestream,m=publish";
const PLAY: &str = "#!::r=live/livestream,m=request";

fn key(app: &str, stream: &str) -> StreamKey {
    StreamKey::new("__defaultVhost__", app, stream).unwrap()
}

/// A proxy with one SRT origin in publish mode (RTMP on port 1: unused).
async fn proxy_and_sink(config: Config, passphrase: Option<&str>) -> (TestProxy, SrtOrigin) {
    let proxy = TestProxy::start(config).await;
    let origin = SrtOrigin::publish_sink(passphrase).await;
    register(proxy.api, register_body("srt-origin", Some(1), None, Some(origin.port))).await;
    (proxy, origin)
}

/// A connected publisher whose first datagrams reached the origin.
async fn publishing(proxy: &TestProxy, origin: &mut SrtOrigin, stream_id: &str, passphrase: Option<&str>) -> SrtClient {
    let mut client = SrtClient::publisher(proxy.srt, stream_id, passphrase).await;
    assert!(
        client.connected().await,
        "publisher did not connect: {:?}",
        client.slt.log
    );
    assert!(
        origin.accepted().await,
        "origin saw no connection: {:?}",
        origin.slt.log
    );
    relays(&client, origin, 20).await;
    client
}

/// Sends `n` datagrams through the publisher and asserts the origin got
/// exactly them.
async fn relays(client: &SrtClient, origin: &SrtOrigin, n: usize) {
    let chunks = ts_chunks(n);
    client.feed.send(&chunks).await;
    let got = origin.feed.receive(n).await;
    assert_eq!(got.len(), n, "origin received {} of {n} datagrams", got.len());
    assert!(got == chunks, "origin received different bytes");
}

fn srt_metric(proxy: &TestProxy, family: &str, label: &str) -> u64 {
    let m = &proxy.ctx.metrics;
    match family {
        "handshakes" => m.srt_handshakes_total.with_label_values(&[label]).get(),
        "dropped" => m.srt_dropped_total.with_label_values(&[label]).get(),
        "ended" => m.srt_ended_total.with_label_values(&[label]).get(),
        "active" => m.connections_active.with_label_values(&["srt", label]).get() as u64,
        "total" => m.connections_total.with_label_values(&["srt", label]).get(),
        other => panic!("{other}"),
    }
}

async fn metric_reaches(proxy: &TestProxy, family: &str, label: &str, value: u64) -> bool {
    eventually(BOUND, || async {
        (srt_metric(proxy, family, label) == value).then_some(())
    })
    .await
    .is_some()
}

// ---------------------------------------------------------------------------
// Publish and play with real peers.

async fn publish_intact(passphrase: Option<&str>) {
    let (proxy, mut origin) = proxy_and_sink(test_config(), passphrase).await;
    let client = publishing(&proxy, &mut origin, PUBLISH, passphrase).await;
    relays(&client, &origin, 300).await;
    assert_eq!(srt_metric(&proxy, "active", "publisher"), 1);
    assert_eq!(srt_metric(&proxy, "handshakes", "accepted"), 1);
}

async fn play_intact(passphrase: Option<&str>) {
    let proxy = TestProxy::start(test_config()).await;
    let mut origin = SrtOrigin::play_source(passphrase).await;
    register(proxy.api, register_body("srt-origin", Some(1), None, Some(origin.port))).await;
    let client = SrtClient::player(proxy.srt, PLAY, passphrase).await;
    // A playing srt-live-transmit says "connected" only once data flows.
    assert!(
        origin.accepted().await,
        "origin saw no connection: {:?}",
        origin.slt.log
    );
    let chunks = ts_chunks(300);
    origin.feed.send(&chunks).await;
    let got = client.feed.receive(chunks.len()).await;
    assert_eq!(
        got.len(),
        chunks.len(),
        "player received {} of {} datagrams",
        got.len(),
        chunks.len()
    );
    assert!(got == chunks, "player received different bytes");
    assert_eq!(srt_metric(&proxy, "active", "player"), 1);
}

#[tokio::test]
async fn a_publisher_reaches_the_origin_byte_for_byte() {
    publish_intact(None).await;
}

#[tokio::test]
async fn a_player_gets_what_the_origin_sends_byte_for_byte() {
    play_intact(None).await;
}

#[tokio::test]
async fn encryption_is_end_to_end() {
    // The proxy never sees the passphrase: key material passes through.
    publish_intact(Some("correct-horse-battery")).await;
    play_intact(Some("correct-horse-battery")).await;
}

#[tokio::test]
async fn the_origins_own_rejection_reaches_the_client() {
    let (proxy, _origin) = proxy_and_sink(test_config(), Some("the-origins-secret")).await;
    let mut client = SrtClient::publisher(proxy.srt, PUBLISH, Some("another-secret")).await;
    assert!(
        client.slt.wait_for("Incorrect passphrase").await,
        "client did not hear the origin's reason: {:?}",
        client.slt.log
    );
    assert_eq!(srt_metric(&proxy, "handshakes", "badsecret"), 1);
}

/// ffmpeg with a generated test source, as the chart's NOTES tell users.
fn ffmpeg_source(seconds: u32) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .arg("-f")
        .arg("lavfi")
        .arg("-i")
        .arg(format!("testsrc=size=160x120:rate=25:duration={seconds}"))
        .arg("-f")
        .arg("lavfi")
        .arg("-i")
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac"])
        .args(["-map", "0:v", "-map", "1:a"])
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn ffmpeg_publishes_a_generated_source() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("sent.ts");
    // One encode, written both to the proxy and to a local file by the tee
    // muxer: the file is what ffmpeg sent.
    let url = format!("srt://{}?streamid={PUBLISH}&latency=1000000", proxy.srt);
    let status = ffmpeg_source(2)
        .args(["-f", "tee"])
        .arg(format!("[f=mpegts]{url}|[f=mpegts]{}", local.display()))
        .status();
    let status = tokio::time::timeout(BOUND, status).await.expect("ffmpeg ends").unwrap();
    assert!(status.success(), "ffmpeg failed");
    assert!(origin.accepted().await);
    let sent = std::fs::read(&local).unwrap();
    assert!(sent.chunks(188).all(|p| p[0] == 0x47), "MPEG-TS");
    // When ffmpeg closes, what the origin still holds back for its latency
    // window is never delivered (SRT live mode, with or without a proxy):
    // what arrived must be what was sent, from the first byte on.
    let mut got = Vec::new();
    for d in origin.feed.receive_until_quiet().await {
        got.extend_from_slice(&d);
    }
    assert!(
        !got.is_empty() && got.len() <= sent.len(),
        "{} of {} bytes",
        got.len(),
        sent.len()
    );
    assert!(got == sent[..got.len()], "origin received different bytes");
}

#[tokio::test]
async fn ffmpeg_plays_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.ts");
    let status = ffmpeg_source(3)
        .args(["-f", "mpegts"])
        .arg(&source)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let ts = std::fs::read(&source).unwrap();

    let proxy = TestProxy::start(test_config()).await;
    let mut origin = SrtOrigin::play_source(None).await;
    register(proxy.api, register_body("srt-origin", Some(1), None, Some(origin.port))).await;
    let played = dir.path().join("played.ts");
    let player = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        // A live source: decide on the streams from what comes first.
        .args(["-probesize", "32768", "-analyzeduration", "500000", "-i"])
        .arg(format!("srt://{}?streamid={PLAY}", proxy.srt))
        .args(["-map", "0", "-c", "copy", "-frames:v", "25", "-f", "mpegts", "-y"])
        .arg(&played)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .status();
    let player = tokio::spawn(player);
    assert!(origin.accepted().await, "{:?}", origin.slt.log);
    let chunks: Vec<Vec<u8>> = ts.chunks(support::srt::CHUNK).map(<[u8]>::to_vec).collect();
    origin.feed.send(&chunks).await;
    let status = tokio::time::timeout(BOUND, player)
        .await
        .expect("ffmpeg ends")
        .unwrap()
        .unwrap();
    assert!(status.success(), "ffmpeg could not play");
    let out = std::fs::read(&played).unwrap();
    assert!(
        out.len() > 188 && out.chunks(188).all(|p| p[0] == 0x47),
        "{} bytes",
        out.len()
    );
}

#[tokio::test]
async fn ipv4_and_ipv6_clients_on_one_dual_stack_port() {
    let config = Config {
        srt_server: ListenAddr("[::]:0".parse().unwrap()),
        ..test_config()
    };
    let (proxy, mut origin) = proxy_and_sink(config, None).await;
    let port = proxy.srt.port();
    for (i, host) in ["[::1]", "127.0.0.1"].into_iter().enumerate() {
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let mut client = SrtClient::publisher(addr, &format!("#!::r=live/s{i},m=publish"), None).await;
        assert!(client.connected().await, "{host}: {:?}", client.slt.log);
        assert!(origin.accepted_n(i + 1).await, "{:?}", origin.slt.log);
        relays(&client, &origin, 50).await;
        // The origin takes one publisher at a time: end this one cleanly.
        interrupt(&mut client).await;
        assert!(metric_reaches(&proxy, "active", "publisher", 0).await);
    }
}

// ---------------------------------------------------------------------------
// Routing shared with the other protocols.

#[tokio::test]
async fn no_origin_serving_srt_is_a_rejection_not_silence() {
    let proxy = TestProxy::start(test_config()).await;
    let rtmp_only = RtmpOrigin::start("rtmp-only").await;
    rtmp_only.register(proxy.api).await;
    let mut client = SrtClient::publisher(proxy.srt, PUBLISH, None).await;
    // libsrt prints codes from 1000 up (SRT_REJX_*) this way.
    assert!(
        client.slt.wait_for("REJECT reported").await,
        "client got no rejection: {:?}",
        client.slt.log
    );
    assert_eq!(srt_metric(&proxy, "handshakes", "unavailable"), 1);
    assert_eq!(srt_metric(&proxy, "active", "publisher"), 0);
}

#[tokio::test]
async fn an_origin_with_nothing_on_its_srt_port_is_a_rejection() {
    let proxy = TestProxy::start(test_config()).await;
    let closed = support::srt::free_udp_port();
    register(proxy.api, register_body("deaf", Some(1), None, Some(closed))).await;
    let mut client = SrtClient::publisher(proxy.srt, PUBLISH, None).await;
    assert!(client.slt.wait_for("REJECT reported").await, "{:?}", client.slt.log);
    assert_eq!(srt_metric(&proxy, "handshakes", "gateway"), 1);
}

/// The origin a stream is mapped to has nothing on its SRT port: the
/// handshake goes to the other origin within the same connection attempt,
/// and the dead one is unhealthy.
#[tokio::test]
async fn a_publisher_of_a_stream_on_a_dead_origin_reaches_another() {
    let proxy = TestProxy::start(test_config()).await;
    let closed = support::srt::free_udp_port();
    register(proxy.api, register_body("deaf", Some(1), None, Some(closed))).await;
    let ctx = &proxy.ctx;
    let (placed, _) = ctx
        .claim_origin(&key("live", "livestream"), srs_proxy::origin::Protocol::Srt)
        .await
        .unwrap();
    assert_eq!(&*placed.id, "deaf", "the stream is mapped to the dead origin first");
    let mut origin = SrtOrigin::publish_sink(None).await;
    register(proxy.api, register_body("srt-origin", Some(1), None, Some(origin.port))).await;

    let _client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    let listed = ctx.store.list_origins().await.unwrap();
    assert!(!listed.iter().find(|o| *o.origin.id == *"deaf").unwrap().healthy);
    let mapped = ctx.store.lookup(&key("live", "livestream")).await.unwrap();
    assert_eq!(mapped.map(|o| o.id).as_deref(), Some("srt-origin"));
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let config = Config {
        srt_max_connections: 1,
        ..test_config()
    };
    let (proxy, mut origin) = proxy_and_sink(config, None).await;
    let _first = publishing(&proxy, &mut origin, PUBLISH, None).await;
    let mut second = SrtClient::player(proxy.srt, PLAY, None).await;
    assert!(second.slt.wait_for("REJECT reported").await, "{:?}", second.slt.log);
    assert_eq!(srt_metric(&proxy, "handshakes", "overload"), 1);
    assert_eq!(srt_metric(&proxy, "total", "player"), 0);
}

#[tokio::test]
async fn an_srt_player_of_an_rtmp_published_stream_goes_to_its_origin() {
    let proxy = TestProxy::start(test_config()).await;
    // Two origins serving RTMP and SRT; least-streams would put a new
    // stream on the idle one.
    let mut origins = Vec::new();
    for name in ["origin-a", "origin-b"] {
        let rtmp = RtmpOrigin::start(name).await;
        let srt = SrtOrigin::play_source(None).await;
        let body = register_body(name, Some(rtmp.rtmp.port()), Some(rtmp.http.port()), Some(srt.port));
        register(proxy.api, body).await;
        origins.push((rtmp, srt));
    }
    let url = format!("rtmp://{}/live/livestream", proxy.rtmp);
    let _publisher = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "flv"])
        .arg(url)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ffmpeg");
    let holder = eventually(BOUND, || async {
        origins
            .iter()
            .position(|(rtmp, _)| rtmp.is_publishing("live/livestream"))
    })
    .await
    .expect("the RTMP publish reached an origin");

    let _player = SrtClient::player(proxy.srt, PLAY, None).await;
    let (_, srt) = &mut origins[holder];
    assert!(srt.accepted().await, "the holder's SRT port saw no player");
    let (_, other) = &mut origins[1 - holder];
    assert!(!other.slt.seen("Accepted"), "{:?}", other.slt.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_publish_through_one_proxy_http_play_through_another() {
    let mut config = test_config();
    config.load_balancer_type = StoreKind::Redis;
    config.redis = RedisServer::shared().config("srt-replicas:");
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let store = Store::Redis(RedisStore::connect(&config.redis).await.unwrap());
        proxies.push(TestProxy::start_with_store(config.clone(), store).await);
    }
    // Two origins, each an HTTP side (FLV) and an SRT side.
    let mut origins = Vec::new();
    for name in ["srt-http-1", "srt-http-2"] {
        let http = FakeOrigin::start(name).await;
        let srt = SrtOrigin::publish_sink(None).await;
        let body = register_body(name, None, Some(http.addr.port()), Some(srt.port));
        register(proxies[0].api, body).await;
        origins.push((http, srt));
    }
    let mut publisher = SrtClient::publisher(proxies[0].srt, PUBLISH, None).await;
    assert!(publisher.connected().await, "{:?}", publisher.slt.log);
    let holder = proxies[1]
        .ctx
        .store
        .lookup(&key("live", "livestream"))
        .await
        .unwrap()
        .expect("the publish claimed the stream")
        .id;
    let (http, srt) = origins.iter_mut().find(|(h, _)| *h.name == *holder).unwrap();
    assert!(srt.accepted().await, "the claimed origin's SRT port saw no publisher");
    relays(&publisher, srt, 20).await;
    let played = client::get(proxies[1].http, "/live/livestream.flv").await;
    assert_eq!(played.header("x-origin"), Some(http.name.as_str()));
}

#[tokio::test]
async fn a_slow_origin_delays_only_its_own_client() {
    let config = Config {
        // Long enough that the silent origin is still being waited for
        // when the other client is done.
        srt_handshake_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    // An origin whose SRT port takes datagrams and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    register(proxy.api, register_body("silent", Some(1), None, Some(silent_port))).await;
    let slow = key("live", "slow");
    let claim = proxy
        .ctx
        .store
        .claim_for(
            &slow,
            Policy::LeastStreams,
            Duration::from_secs(60),
            Some(Protocol::Srt),
        )
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Origin(ref o, _) if *o.id == *"silent"));
    let mut healthy = SrtOrigin::publish_sink(None).await;
    register(proxy.api, register_body("healthy", Some(1), None, Some(healthy.port))).await;

    let _stuck = SrtClient::publisher(proxy.srt, "#!::r=live/slow,m=publish", None).await;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(BOUND, silent.recv_from(&mut buf))
        .await
        .expect("the proxy tried the silent origin")
        .unwrap();
    assert_eq!(Handshake::parse(&buf[..n]).unwrap().request, RequestType::Induction);

    let mut fast = SrtClient::publisher(proxy.srt, "#!::r=live/fast,m=publish", None).await;
    assert!(fast.connected().await, "{:?}", fast.slt.log);
    assert!(healthy.accepted().await);
    relays(&fast, &healthy, 20).await;
    // Meanwhile the first client's origin handshake is still going on.
    assert_eq!(srt_metric(&proxy, "handshakes", "gateway"), 0);
    assert_eq!(srt_metric(&proxy, "active", "publisher"), 2);
}

// ---------------------------------------------------------------------------
// How connections end.

#[tokio::test]
async fn a_publisher_leaving_ends_its_stream() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    assert!(proxy
        .ctx
        .store
        .lookup(&key("live", "livestream"))
        .await
        .unwrap()
        .is_some());
    // SIGINT: srt-live-transmit closes its socket, which sends a shutdown.
    interrupt(&mut client).await;
    assert!(origin.slt.wait_for("disconnected").await, "{:?}", origin.slt.log);
    assert!(metric_reaches(&proxy, "ended", "client_shutdown", 1).await);
    assert!(metric_reaches(&proxy, "active", "publisher", 0).await);
    let released = eventually(BOUND, || async {
        proxy
            .ctx
            .store
            .lookup(&key("live", "livestream"))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(released.is_some(), "the publisher's mapping was not released");
}

async fn interrupt(client: &mut SrtClient) {
    signal(client.slt.pid(), "-INT").await;
    assert!(client.slt.exits().await);
}

async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn an_origin_shutting_down_ends_its_clients() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    // SIGINT: srt-live-transmit closes the connection with a shutdown.
    signal(origin.slt.pid(), "-INT").await;
    assert!(client.slt.exits().await, "client not told: {:?}", client.slt.log);
    assert!(metric_reaches(&proxy, "ended", "origin_shutdown", 1).await);
    assert!(metric_reaches(&proxy, "active", "publisher", 0).await);
}

#[tokio::test]
async fn a_removed_origin_shuts_its_clients_down() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    proxy.ctx.store.remove_origin("srt-origin").await.unwrap();
    // Both peers are told: neither waits for its own timeout.
    assert!(client.slt.exits().await, "client still running: {:?}", client.slt.log);
    assert!(origin.slt.wait_for("disconnected").await, "{:?}", origin.slt.log);
    assert!(metric_reaches(&proxy, "ended", "origin_gone", 1).await);
    assert_eq!(srt_metric(&proxy, "active", "publisher"), 0);
}

#[tokio::test]
async fn a_vanished_client_is_ended_after_the_idle_timeout() {
    let config = Config {
        srt_idle_timeout: Duration::from_secs(2),
        ..test_config()
    };
    let (proxy, mut origin) = proxy_and_sink(config, None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    // SIGKILL: no shutdown, no keepalives, as when a network goes away.
    client.slt.kill();
    assert!(metric_reaches(&proxy, "ended", "client_idle", 1).await);
    assert!(origin.slt.wait_for("disconnected").await, "{:?}", origin.slt.log);
    assert!(metric_reaches(&proxy, "active", "publisher", 0).await);
}

#[tokio::test]
async fn a_silent_origin_is_ended_after_the_idle_timeout() {
    let config = Config {
        srt_idle_timeout: Duration::from_secs(2),
        ..test_config()
    };
    let (proxy, mut origin) = proxy_and_sink(config, None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    // SIGSTOP: the origin process hangs without closing anything.
    signal(origin.slt.pid(), "-STOP").await;
    assert!(metric_reaches(&proxy, "ended", "origin_idle", 1).await);
    assert!(client.slt.exits().await, "client not told: {:?}", client.slt.log);
    assert!(metric_reaches(&proxy, "active", "publisher", 0).await);
}

#[tokio::test]
async fn draining_refuses_new_clients_and_keeps_open_ones_until_abort() {
    let config = Config {
        // The test ends the grace period itself, once it has seen enough.
        grace_quit_timeout: Duration::from_secs(60),
        force_quit_timeout: Duration::from_secs(120),
        ..test_config()
    };
    let (mut proxy, mut origin) = proxy_and_sink(config, None).await;
    let mut client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    proxy.ctx.shutdown.start_drain();
    let mut late = SrtClient::publisher(proxy.srt, "#!::r=live/late,m=publish", None).await;
    assert!(late.slt.wait_for("REJECT").await, "{:?}", late.slt.log);
    assert!(metric_reaches(&proxy, "handshakes", "close", 1).await);
    // The open connection still relays.
    relays(&client, &origin, 50).await;
    proxy.ctx.shutdown.abort();
    assert!(client.slt.exits().await, "client not told: {:?}", client.slt.log);
    assert!(origin.slt.wait_for("disconnected").await, "{:?}", origin.slt.log);
    assert!(metric_reaches(&proxy, "ended", "aborted", 1).await);
    // The SRT server returned once its last connection ended: no force-quit.
    assert_eq!(proxy.drain().await, Stopped::Clean);
}

// ---------------------------------------------------------------------------
// Hostile datagrams: each dropped or refused alone, none disturbing a
// running relay.

/// A hand-driven SRT caller.
struct Raw {
    socket: UdpSocket,
    proxy: SocketAddr,
}

impl Raw {
    async fn new(proxy: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            proxy,
        }
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.proxy).await.unwrap();
    }

    async fn recv(&self) -> Handshake {
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(BOUND, self.socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Handshake::parse(&buf[..n]).expect("a handshake")
    }

    /// The cookie the proxy issues to this socket.
    async fn cookie(&self, socket_id: u32) -> u32 {
        self.send(&induction(socket_id).encode()).await;
        let answer = self.recv().await;
        assert_eq!(answer.request, RequestType::Induction);
        assert_eq!(answer.version, 5);
        assert_eq!(answer.extension, handshake::SRT_MAGIC);
        answer.cookie
    }
}

fn induction(socket_id: u32) -> Handshake {
    Handshake {
        timestamp: 0,
        dest_socket: 0,
        version: 4,
        encryption: 0,
        extension: 2,
        initial_sequence: 7,
        mss: 1500,
        flow_window: 8192,
        request: RequestType::Induction,
        socket_id,
        cookie: 0,
        peer_ip: [0; 16],
        extensions: vec![],
    }
}

fn conclusion(socket_id: u32, cookie: u32, stream_id_body: Option<Vec<u8>>) -> Handshake {
    let mut extensions = vec![Extension {
        kind: ext::HSREQ,
        body: [0x0001_0501u32, 0xbf, 0x0078_0078]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect(),
    }];
    if let Some(body) = stream_id_body {
        extensions.push(Extension { kind: ext::SID, body });
    }
    Handshake {
        version: 5,
        extension: ext_flag::HSREQ | ext_flag::CONFIG,
        request: RequestType::Conclusion,
        cookie,
        extensions,
        ..induction(socket_id)
    }
}

#[tokio::test]
async fn bad_stream_ids_are_refused_with_a_reason() {
    let (proxy, _origin) = proxy_and_sink(test_config(), None).await;
    let raw = Raw::new(proxy.srt).await;
    let sid = |s: &str| Some(handshake::encode_string(s));
    let bad = RejectReason::BAD_REQUEST;
    let cases = [
        ("no stream id", None, bad),
        ("0 bytes", Some(vec![]), bad),
        ("only padding", Some(vec![0; 4]), bad),
        ("513 bytes", sid(&"a".repeat(513)), bad),
        ("..", sid("#!::r=live/../x,m=publish"), bad),
        ("control character", sid("#!::r=live/a\u{7}b"), bad),
        ("NUL inside", sid("live/a\0b"), bad),
        ("unknown mode", sid("#!::r=live/s,m=push"), RejectReason::BAD_MODE),
        ("two resources", sid("#!::r=live/a,r=live/b"), bad),
    ];
    for (i, (what, sid, reason)) in cases.into_iter().enumerate() {
        let socket_id = 0x100 + i as u32;
        let cookie = raw.cookie(socket_id).await;
        raw.send(&conclusion(socket_id, cookie, sid).encode()).await;
        let answer = raw.recv().await;
        assert_eq!(answer.request, RequestType::Rejection(reason), "{what}");
        assert_eq!(answer.dest_socket, socket_id, "{what}");
    }
    // 1000 + reason on the wire, as libsrt reads it.
    let cookie = raw.cookie(7).await;
    raw.send(&conclusion(7, cookie, None).encode()).await;
    let mut buf = [0u8; 2048];
    let (n, _) = raw.socket.recv_from(&mut buf).await.unwrap();
    assert_eq!(u32::from_be_bytes(buf[36..40].try_into().unwrap()), 2400);
    assert_eq!(buf[..n].len(), handshake::MIN_LEN);
    assert_eq!(
        srt_metric(&proxy, "total", "publisher") + srt_metric(&proxy, "total", "player"),
        0
    );
}

#[tokio::test]
async fn hostile_datagrams_are_dropped_one_by_one() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let client = publishing(&proxy, &mut origin, PUBLISH, None).await;
    let raw = Raw::new(proxy.srt).await;
    let cookie = raw.cookie(1).await;

    // Shorter than the header.
    raw.send(&[0x80, 0, 0, 0, 0]).await;
    // A conclusion whose stream id claims more words than follow.
    let mut bytes = conclusion(2, cookie, Some(handshake::encode_string("live/s"))).encode();
    bytes.truncate(bytes.len() - 2);
    raw.send(&bytes).await;
    // A conclusion with a cookie issued to nobody, and one issued to
    // another address (port).
    raw.send(&conclusion(3, cookie ^ 0x5555, Some(handshake::encode_string("live/s"))).encode())
        .await;
    let other = Raw::new(proxy.srt).await;
    other
        .send(&conclusion(4, cookie, Some(handshake::encode_string("live/s"))).encode())
        .await;
    // Data and control packets for sockets nobody has.
    let mut data = vec![0u8; 100];
    data[12..16].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    raw.send(&data).await;
    raw.send(&packet::shutdown(0x1234_5678)).await;
    // Longer than any SRT packet the proxy relays.
    raw.send(&[0u8; 9001]).await;
    // A rendezvous handshake.
    raw.send(
        &Handshake {
            request: RequestType::WaveAHand,
            ..induction(5)
        }
        .encode(),
    )
    .await;

    assert!(metric_reaches(&proxy, "dropped", "short", 1).await);
    assert!(metric_reaches(&proxy, "dropped", "bad_handshake", 1).await);
    assert!(metric_reaches(&proxy, "dropped", "bad_cookie", 2).await);
    assert!(metric_reaches(&proxy, "dropped", "unknown_socket", 2).await);
    assert!(metric_reaches(&proxy, "dropped", "unsupported_handshake", 1).await);
    assert!(metric_reaches(&proxy, "dropped", "too_long", 1).await);
    // None of them was answered: the next thing this socket hears is the
    // answer to its next induction.
    let again = raw.cookie(9).await;
    assert_eq!(again, cookie, "same address, same cookie");
    // The relay that was running never noticed.
    relays(&client, &origin, 50).await;
    assert_eq!(srt_metric(&proxy, "active", "publisher"), 1);
}

#[tokio::test]
async fn an_induction_flood_keeps_no_state() {
    let proxy = TestProxy::start(test_config()).await;
    let mut sockets = Vec::new();
    for _ in 0..64 {
        sockets.push(Raw::new(proxy.srt).await);
    }
    for round in 0..8u32 {
        for (i, s) in sockets.iter().enumerate() {
            s.send(&induction(round << 16 | i as u32).encode()).await;
        }
    }
    for s in &sockets {
        let mut cookies = std::collections::HashSet::new();
        for _ in 0..8 {
            cookies.insert(s.recv().await.cookie);
        }
        // Retransmitted inductions are answered alike.
        assert_eq!(cookies.len(), 1);
    }
    assert!(metric_reaches(&proxy, "handshakes", "induction", 64 * 8).await);
    // Not one connection came of it.
    assert_eq!(
        srt_metric(&proxy, "total", "publisher") + srt_metric(&proxy, "total", "player"),
        0
    );
}

#[tokio::test]
async fn a_retransmitted_conclusion_gets_the_same_answer() {
    let (proxy, mut origin) = proxy_and_sink(test_config(), None).await;
    let raw = Raw::new(proxy.srt).await;
    let cookie = raw.cookie(0x4242).await;
    let request = conclusion(0x4242, cookie, Some(handshake::encode_string(PUBLISH))).encode();
    raw.send(&request).await;
    let first = raw.recv().await;
    assert_eq!(first.request, RequestType::Conclusion, "{first:?}");
    assert_eq!(first.dest_socket, 0x4242);
    assert_eq!(first.cookie, cookie, "the client's own cookie");
    assert!(origin.accepted().await);
    raw.send(&request).await;
    let second = raw.recv().await;
    assert_eq!(second, first);
    assert!(metric_reaches(&proxy, "handshakes", "retransmitted", 1).await);
    assert_eq!(srt_metric(&proxy, "handshakes", "accepted"), 1);
}
