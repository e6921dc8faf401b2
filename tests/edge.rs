//! Edge mode: HTTP-FLV players of one stream share one origin request,
//! against an origin that serves real FLV tag by tag as the test feeds it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use srs_proxy::config::{Config, EdgeMode};
use srs_proxy::http::edge::flv::{self, tag_type, FlvDecoder, Item, Tag};
use support::client;
use support::eventually;
use support::flv_origin::{Event, FlvOrigin};
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn edge_config() -> Config {
    let mut config = test_config();
    config.edge.mode = EdgeMode::On;
    config
}

async fn edge_proxy(config: Config) -> (TestProxy, FlvOrigin) {
    let proxy = TestProxy::start(config).await;
    let origin = FlvOrigin::start("origin-a").await;
    origin.register(proxy.api).await;
    (proxy, origin)
}

/// A player reading FLV tags from its response as they come.
struct Player {
    /// The origin that served it (`X-Origin`).
    origin: String,
    body: Incoming,
    decoder: FlvDecoder,
    buf: BytesMut,
    /// Every body byte, for ffprobe.
    raw: Vec<u8>,
    flags: Option<u8>,
    tags: Vec<Tag>,
}

impl Player {
    async fn join(proxy: SocketAddr, path: &str) -> Self {
        let resp = client::send(proxy, Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], "video/x-flv", "the origin's headers");
        Self {
            origin: resp.headers()["x-origin"].to_str().unwrap().to_string(),
            body: resp.into_body(),
            decoder: FlvDecoder::new(16 << 20),
            buf: BytesMut::new(),
            raw: Vec::new(),
            flags: None,
            tags: Vec::new(),
        }
    }

    /// The next tag; `None` when the body ends cleanly.
    async fn next(&mut self) -> Option<Tag> {
        loop {
            match self.decoder.decode(&mut self.buf).expect("the player gets valid FLV") {
                Some(Item::Header { flags }) => {
                    assert!(self.flags.is_none() && self.tags.is_empty(), "one header, first");
                    self.flags = Some(flags);
                }
                Some(Item::Tag(tag)) => {
                    assert!(self.flags.is_some(), "a tag before the FLV header");
                    self.tags.push(tag.clone());
                    return Some(tag);
                }
                None => match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.raw.extend_from_slice(&data);
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => panic!("body failed after {} tags: {e}", self.tags.len()),
                    None => {
                        assert!(self.buf.is_empty(), "the body ended inside a tag");
                        return None;
                    }
                },
            }
        }
    }

    /// Reads until a tag with `payload` arrives.
    async fn until(&mut self, payload: &[u8]) {
        let wait = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(tag) = self.next().await {
                if tag.payload == payload {
                    return;
                }
            }
            panic!("the body ended before the awaited tag");
        });
        wait.await.expect("the awaited tag never came");
    }

    async fn read_to_end(&mut self) {
        let wait = tokio::time::timeout(Duration::from_secs(20), async { while self.next().await.is_some() {} });
        wait.await.expect("the body did not end");
    }
}

/// `n` players of `path`, each having read up to the last tag of `tags`.
async fn players_until(proxy: SocketAddr, path: &str, n: usize, tags: &[Tag]) -> Vec<Player> {
    let mut players = Vec::new();
    for _ in 0..n {
        let mut p = Player::join(proxy, path).await;
        p.until(&tags.last().unwrap().payload).await;
        players.push(p);
    }
    players
}

fn tag(tag_type: u8, timestamp: u32, payload: Vec<u8>) -> Tag {
    Tag {
        tag_type,
        timestamp,
        payload: Bytes::from(payload),
    }
}

/// `onMetaData`, then the AVC and AAC sequence headers.
fn stream_start() -> Vec<Tag> {
    let mut meta = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00".to_vec();
    meta.extend_from_slice(b"\x00\x00\x09");
    vec![
        tag(tag_type::SCRIPT, 0, meta),
        tag(tag_type::VIDEO, 0, b"\x17\x00\x00\x00\x00sps+pps".to_vec()),
        tag(tag_type::AUDIO, 0, b"\xaf\x00\x12\x10".to_vec()),
    ]
}

/// GOP `n` of a 25 fps stream: `frames` video frames of `size` bytes (the
/// first a keyframe), each followed by an AAC frame; every payload names
/// its GOP and frame.
fn gop(n: u32, frames: u32, size: usize) -> Vec<Tag> {
    let mut out = Vec::new();
    for i in 0..frames {
        let t = (n * frames + i) * 40;
        let head: &[u8] = if i == 0 { b"\x17\x01\0\0\0" } else { b"\x27\x01\0\0\0" };
        let mut video = head.to_vec();
        video.extend_from_slice(format!("g{n}f{i}:").as_bytes());
        video.resize(size.max(video.len()), n as u8);
        out.push(tag(tag_type::VIDEO, t, video));
        out.push(tag(
            tag_type::AUDIO,
            t + 20,
            format!("\u{af}\u{1}g{n}a{i}").into_bytes(),
        ));
    }
    out
}

fn is_config(t: &Tag) -> bool {
    matches!(
        flv::classify(t.tag_type, &t.payload).role,
        flv::Role::Config { .. } | flv::Role::Metadata
    )
}

fn is_key(t: &Tag) -> bool {
    flv::classify(t.tag_type, &t.payload).role == flv::Role::Keyframe
}

/// What a player must have got: the header, metadata and sequence headers
/// before any frame, the first frame a keyframe, its own timestamps from 0
/// and never going back, and the origin's frames from one keyframe on.
fn assert_valid_join(player: &Player, origin_media: &[Tag], name: &str) -> usize {
    assert_eq!(player.flags, Some(5), "{name}: the origin's FLV header flags");
    let first_media = player.tags.iter().position(|t| !is_config(t)).expect("frames");
    let prefix: Vec<u8> = player.tags[..first_media].iter().map(|t| t.tag_type).collect();
    assert_eq!(
        prefix,
        [tag_type::SCRIPT, tag_type::VIDEO, tag_type::AUDIO],
        "{name}: metadata, video and audio sequence headers first"
    );
    let media: Vec<&Tag> = player.tags[first_media..].iter().collect();
    assert!(is_key(media[0]), "{name}: the first frame is a keyframe");
    assert_eq!(media[0].timestamp, 0, "{name}: timestamps start at 0");
    assert!(
        player.tags.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "{name}: timestamps never go back"
    );
    let start = origin_media
        .iter()
        .position(|t| t.payload == media[0].payload)
        .expect("a frame the origin sent");
    let expected = &origin_media[start..];
    assert_eq!(media.len(), expected.len(), "{name}: every frame from the keyframe on");
    let base = expected[0].timestamp;
    for (got, sent) in media.iter().zip(expected) {
        assert_eq!(got.payload, sent.payload, "{name}: the origin's frames, in order");
        assert_eq!(got.timestamp, sent.timestamp - base, "{name}: the origin's spacing");
    }
    start
}

#[tokio::test]
async fn players_joining_at_different_times_share_one_origin_request_and_start_at_a_keyframe() {
    let (proxy, origin) = edge_proxy(edge_config()).await;
    let gops: Vec<Vec<Tag>> = (0..4).map(|n| gop(n, 10, 2000)).collect();
    let last = |n: usize| gops[n].last().unwrap().payload.clone();
    origin.feed(&stream_start());
    origin.feed(&gops[0]);
    let mut a = Player::join(proxy.http, "/live/cam.flv?token=first").await;
    a.until(&last(0)).await;
    origin.feed(&gops[1]);
    a.until(&last(1)).await;
    // The proxy has everything up to GOP 1: B starts at its keyframe.
    let mut b = Player::join(proxy.http, "/live/cam.flv?token=second").await;
    origin.feed(&gops[2]);
    a.until(&last(2)).await;
    let mut c = Player::join(proxy.http, "/live/cam.flv").await;
    origin.feed(&gops[3]);
    origin.end();
    for p in [&mut a, &mut b, &mut c] {
        p.read_to_end().await;
    }
    let media: Vec<Tag> = gops.concat();
    let starts: Vec<usize> = [(&a, "a"), (&b, "b"), (&c, "c")]
        .iter()
        .map(|(p, name)| assert_valid_join(p, &media, name))
        .collect();
    assert_eq!(starts, [0, 20, 40], "each joined at the newest keyframe the proxy had");
    let requests: Vec<Event> = origin
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .collect();
    assert_eq!(
        requests,
        [Event::Request {
            conn: 1,
            path: "/live/cam.flv".into()
        }],
        "three players, one origin request"
    );
    let metrics = proxy.ctx.metrics.render();
    assert!(metrics.contains("srs_proxy_edge_upstream_players_sum 3"), "{metrics}");
}

#[tokio::test]
async fn fifty_players_cost_the_origin_one_request_and_get_the_same_frames() {
    let (proxy, origin) = edge_proxy(edge_config()).await;
    origin.feed(&stream_start());
    origin.feed(&gop(0, 10, 1000));
    let joins = (0..50).map(|_| Player::join(proxy.http, "/live/crowd.flv"));
    let mut players = futures_util::future::join_all(joins).await;
    for p in &mut players {
        p.until(&gop(0, 10, 1000).last().unwrap().payload).await;
    }
    assert_eq!(
        metric(&proxy, "srs_proxy_edge_players_active{protocol=\"http-flv\"}"),
        50.0
    );
    assert_eq!(metric(&proxy, "srs_proxy_edge_upstreams_active"), 1.0);
    origin.feed(&gop(1, 10, 1000));
    origin.end();
    let media: Vec<Tag> = [gop(0, 10, 1000), gop(1, 10, 1000)].concat();
    for (i, p) in players.iter_mut().enumerate() {
        p.read_to_end().await;
        assert_eq!(assert_valid_join(p, &media, &format!("player {i}")), 0);
    }
    assert_eq!(origin.requests(), 1, "fifty players, one origin request");
    // The origin sent the stream once; the players got it fifty times.
    let upstream = metric(&proxy, "srs_proxy_edge_upstream_bytes_total");
    let out = metric(
        &proxy,
        "srs_proxy_bytes_relayed_total{direction=\"out\",protocol=\"http-flv\"}",
    );
    assert!(out > 45.0 * upstream, "upstream {upstream} bytes, players {out} bytes");
}

#[tokio::test]
async fn with_edge_mode_off_every_player_gets_its_own_origin_request() {
    let (proxy, origin) = edge_proxy(test_config()).await;
    origin.feed(&stream_start());
    origin.feed(&gop(0, 5, 100));
    let mut players = players_until(proxy.http, "/live/cam.flv", 3, &gop(0, 5, 100)).await;
    assert_eq!(origin.requests(), 3);
    assert_eq!(origin.open_bodies(), 3);
    // Transparent: each gets the origin's bytes as they are, from the start.
    origin.end();
    for p in &mut players {
        p.read_to_end().await;
        assert_eq!(p.tags.len(), 3 + 10);
    }
}

/// An FLV file of `seconds` of 25 fps H.264 (a keyframe every second) and
/// AAC, made by ffmpeg; its tags.
fn ffmpeg_flv(dir: &std::path::Path, seconds: u32) -> Vec<Tag> {
    let path = dir.join("source.flv");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"])
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg failed");
    let mut buf = BytesMut::from(&std::fs::read(&path).unwrap()[..]);
    let mut decoder = FlvDecoder::new(16 << 20);
    let mut tags = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).expect("ffmpeg writes FLV") {
        if let Item::Tag(t) = item {
            tags.push(t);
        }
    }
    tags
}

/// `ffprobe`'s view of the video frames of a file: key_frame flags.
fn probe_video_keyflags(path: &std::path::Path) -> (Vec<bool>, String) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame",
        ])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flags = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().starts_with('1'))
        .collect();
    (flags, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_late_joiner_of_a_real_stream_decodes_from_its_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let tags = ffmpeg_flv(dir.path(), 4);
    let (proxy, origin) = edge_proxy(edge_config()).await;
    // 2.5 s in: the proxy's GOP starts at the keyframe of second 2.
    let cut = tags.iter().position(|t| t.timestamp >= 2500).unwrap();
    origin.feed(&tags[..cut]);
    let mut first = Player::join(proxy.http, "/live/real.flv").await;
    first.until(&tags[cut - 1].payload).await;
    let mut late = Player::join(proxy.http, "/live/real.flv").await;
    origin.feed(&tags[cut..]);
    origin.end();
    first.read_to_end().await;
    late.read_to_end().await;
    assert_eq!(origin.requests(), 1);

    // The bytes: header, metadata, sequence headers, then a keyframe.
    let roles: Vec<flv::Role> = late
        .tags
        .iter()
        .take(4)
        .map(|t| flv::classify(t.tag_type, &t.payload).role)
        .collect();
    assert_eq!(roles[0], flv::Role::Metadata);
    assert!(
        roles[1..3].iter().all(|r| matches!(r, flv::Role::Config { .. })),
        "{roles:?}"
    );
    let first_media = late.tags.iter().find(|t| !is_config(t)).unwrap();
    assert!(is_key(first_media), "starts at a keyframe");
    assert_eq!(first_media.timestamp, 0);

    // The decoder: every video frame from the GOP of second 2 on decodes,
    // the first one a keyframe, with no error.
    let file = dir.path().join("late.flv");
    std::fs::write(&file, &late.raw).unwrap();
    let (keys, errors) = probe_video_keyflags(&file);
    assert_eq!(errors, "", "ffprobe reports no decoding errors");
    let gop_start = tags.iter().rposition(|t| is_key(t) && t.timestamp < 2500).unwrap();
    // Pictures: AVC NAL units (ffmpeg ends the file with an end-of-sequence tag).
    let sent_video = tags[gop_start..]
        .iter()
        .filter(|t| t.tag_type == tag_type::VIDEO && t.payload[1] == 1)
        .count();
    assert_eq!(keys.len(), sent_video, "every video frame from the keyframe on decodes");
    assert!(keys[0], "the first decoded frame is a keyframe");
    assert_eq!(
        keys.iter().filter(|k| **k).count(),
        2,
        "the keyframes of seconds 2 and 3"
    );
}

/// A player's connection with a small receive buffer that sends its
/// request and then reads only when told.
async fn raw_player(proxy: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(proxy).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// What a raw player reads until the proxy closes its connection.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the proxy never closed the connection");
    out
}

fn metric(proxy: &TestProxy, name: &str) -> f64 {
    let text = proxy.ctx.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A stream with a player that reads everything and one that reads
/// nothing (yet), through 20 s of 32 KiB frames: far more than the socket
/// buffers between the proxy and the silent player hold, and more than the
/// 1 MiB the proxy keeps.
struct SilentPlayer {
    proxy: TestProxy,
    origin: FlvOrigin,
    reader: Player,
    silent: TcpStream,
    gops: Vec<Vec<Tag>>,
    /// The proxy's frame buffer stayed within 1 MiB and a frame.
    bound_held: bool,
}

async fn reader_and_silent_player(player_timeout: Duration) -> SilentPlayer {
    let mut config = edge_config();
    config.edge.gop_cache_bytes = 1 << 20;
    config.edge.player_lag = Duration::from_secs(3600);
    config.edge.player_timeout = player_timeout;
    let (proxy, origin) = edge_proxy(config).await;
    origin.feed(&stream_start());
    let mut reader = Player::join(proxy.http, "/live/busy.flv").await;
    let silent = raw_player(proxy.http, "/live/busy.flv").await;
    let gops: Vec<Vec<Tag>> = (0..20).map(|n| gop(n, 25, 32 * 1024)).collect();
    let mut bound_held = true;
    for g in &gops {
        origin.feed(g);
        reader.until(&g.last().unwrap().payload).await;
        bound_held &= metric(&proxy, "srs_proxy_edge_buffer_bytes") <= f64::from((1 << 20) + 64 * 1024);
    }
    SilentPlayer {
        proxy,
        origin,
        reader,
        silent,
        gops,
        bound_held,
    }
}

#[tokio::test]
async fn a_player_that_stops_reading_is_disconnected_while_another_gets_every_frame() {
    // Lag is wall time: never reached here, so the reader drops nothing.
    let timeout = Duration::from_secs(2);
    let mut s = reader_and_silent_player(timeout).await;
    assert!(s.bound_held, "what the proxy holds stays within the cache bounds");
    let (proxy, origin, reader, gops) = (&s.proxy, &s.origin, &mut s.reader, &s.gops);
    let stalled = &mut s.silent;
    // The stalled player was cut off: its response ends although the
    // stream goes on.
    let got = read_to_close(stalled).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        got.len() < 12 << 20,
        "it got only what its socket held: {} bytes",
        got.len()
    );
    assert_eq!(
        metric(proxy, "srs_proxy_edge_players_ended_total{reason=\"too_slow\"}"),
        1.0
    );
    // The reader missed nothing and the stream goes on for it.
    origin.feed(&gop(20, 25, 100));
    origin.end();
    reader.read_to_end().await;
    let media: Vec<Tag> = [gops.concat(), gop(20, 25, 100)].concat();
    assert_eq!(assert_valid_join(reader, &media, "reader"), 0);
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn a_player_that_falls_behind_skips_whole_frames_to_a_keyframe() {
    // The proxy keeps 1 MiB of the stream: a player further behind than
    // that lost its frames and resumes at a keyframe.
    let mut s = reader_and_silent_player(Duration::from_secs(3600)).await;
    let (proxy, origin, reader, gops) = (&s.proxy, &s.origin, &mut s.reader, &s.gops);
    let paused = &mut s.silent;
    // The paused player reads again: what it gets is valid FLV with
    // whole frames missing, resuming at keyframes.
    origin.end();
    let got = read_to_close(paused).await;
    reader.read_to_end().await;
    let body = dechunk(&got);
    let mut decoder = FlvDecoder::new(16 << 20);
    let mut buf = BytesMut::from(&body[..]);
    let mut tags = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).expect("valid FLV after skipping") {
        if let Item::Tag(t) = item {
            tags.push(t);
        }
    }
    assert!(buf.is_empty(), "whole tags only");
    let media: Vec<Tag> = gops.concat();
    let positions: Vec<usize> = tags
        .iter()
        .filter(|t| !is_config(t))
        .map(|t| {
            media
                .iter()
                .position(|m| m.payload == t.payload)
                .expect("a frame the origin sent")
        })
        .collect();
    let mut gaps = 0;
    for w in positions.windows(2) {
        assert!(w[0] < w[1], "in order");
        if w[1] != w[0] + 1 {
            gaps += 1;
            assert!(is_key(&media[w[1]]), "after a gap the player resumes at a keyframe");
        }
    }
    assert!(gaps > 0, "the paused player skipped frames");
    assert!(metric(proxy, "srs_proxy_edge_frames_dropped_total{protocol=\"http-flv\"}") > 0.0);
    assert_eq!(
        metric(proxy, "srs_proxy_edge_players_ended_total{reason=\"too_slow\"}"),
        0.0
    );
    assert_eq!(
        assert_valid_join(reader, &media, "reader"),
        0,
        "the reader missed nothing"
    );
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(response: &[u8]) -> Vec<u8> {
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut rest = &response[head_end..];
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[tokio::test]
async fn the_upstream_closes_only_after_the_last_player_left() {
    let mut config = edge_config();
    config.edge.linger = Duration::from_millis(100);
    let (proxy, origin) = edge_proxy(config).await;
    origin.feed(&stream_start());
    origin.feed(&gop(0, 5, 100));
    let mut a = Player::join(proxy.http, "/live/linger.flv").await;
    let mut b = Player::join(proxy.http, "/live/linger.flv").await;
    a.until(&gop(0, 5, 100).last().unwrap().payload).await;
    b.until(&gop(0, 5, 100).last().unwrap().payload).await;
    drop(a);
    origin.mark("a left");
    // B goes on being fed by the same upstream.
    for n in 1..4 {
        origin.feed(&gop(n, 5, 100));
        b.until(&gop(n, 5, 100).last().unwrap().payload).await;
    }
    origin.mark("b left");
    drop(b);
    let closed = eventually(Duration::from_secs(10), || async {
        origin.events().contains(&Event::Closed { conn: 1 }).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the upstream stayed open with no players");
    let counted = eventually(Duration::from_secs(10), || async {
        (metric(&proxy, "srs_proxy_edge_upstreams_closed_total{reason=\"idle\"}") == 1.0).then_some(())
    })
    .await;
    assert!(counted.is_some(), "the close is counted as idle");
    assert_eq!(
        origin.events(),
        [
            Event::Request {
                conn: 1,
                path: "/live/linger.flv".into()
            },
            Event::Mark("a left"),
            Event::Mark("b left"),
            Event::Closed { conn: 1 },
        ]
    );
    // The next player opens a new upstream.
    let mut c = Player::join(proxy.http, "/live/linger.flv").await;
    c.until(&gop(3, 5, 100).last().unwrap().payload).await;
    assert_eq!(origin.requests(), 2);
}

#[tokio::test]
async fn a_player_arriving_within_the_linger_reuses_the_upstream() {
    let mut config = edge_config();
    config.edge.linger = Duration::from_secs(3600);
    let (proxy, origin) = edge_proxy(config).await;
    origin.feed(&stream_start());
    origin.feed(&gop(0, 5, 100));
    let mut a = Player::join(proxy.http, "/live/again.flv").await;
    a.until(&gop(0, 5, 100).last().unwrap().payload).await;
    drop(a);
    let left = eventually(Duration::from_secs(10), || async {
        let closed = metric(&proxy, "srs_proxy_edge_players_ended_total{reason=\"client_closed\"}");
        let failed = metric(&proxy, "srs_proxy_edge_players_ended_total{reason=\"client_error\"}");
        (closed + failed == 1.0).then_some(())
    })
    .await;
    assert!(left.is_some(), "the player's leaving was not noticed");
    let mut b = Player::join(proxy.http, "/live/again.flv").await;
    origin.feed(&gop(1, 5, 100));
    b.until(&gop(1, 5, 100).last().unwrap().payload).await;
    assert_eq!(origin.requests(), 1, "no new origin request");
    assert_eq!(origin.open_bodies(), 1);
}

#[tokio::test]
async fn the_origin_ending_or_going_away_ends_every_player() {
    let (proxy, origin) = edge_proxy(edge_config()).await;
    origin.feed(&stream_start());
    origin.feed(&gop(0, 5, 100));
    // Ended by the origin: every body ends cleanly after the last frame.
    let mut players = players_until(proxy.http, "/live/over.flv", 3, &gop(0, 5, 100)).await;
    origin.feed(&gop(1, 5, 100));
    origin.end();
    for p in &mut players {
        p.read_to_end().await;
        assert_eq!(p.tags.last().unwrap().payload, gop(1, 5, 100).last().unwrap().payload);
    }

    // Removed from the store: every body ends at once.
    let second = FlvOrigin::start("origin-b").await;
    proxy.ctx.store.remove_origin("origin-a").await.unwrap();
    second.register(proxy.api).await;
    second.feed(&stream_start());
    second.feed(&gop(0, 5, 100));
    let players = players_until(proxy.http, "/live/gone.flv", 3, &gop(0, 5, 100)).await;
    assert_eq!(second.requests(), 1, "three players, one origin request");
    proxy.ctx.store.remove_origin("origin-b").await.unwrap();
    for mut p in players {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = p.body.frame().await {}
        })
        .await;
        assert!(ended.is_ok(), "a player of a removed origin kept going");
    }
    let closed = eventually(Duration::from_secs(10), || async {
        (second.open_bodies() == 0).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the upstream to the removed origin stayed open");
    assert_eq!(
        metric(&proxy, "srs_proxy_edge_upstreams_closed_total{reason=\"origin_lost\"}"),
        1.0
    );
}

#[tokio::test]
async fn after_the_origin_dies_the_next_player_is_served_by_another() {
    let proxy = TestProxy::start(edge_config()).await;
    let mut origins = vec![FlvOrigin::start("origin-a").await, FlvOrigin::start("origin-b").await];
    let last = gop(0, 5, 100).last().unwrap().payload.clone();
    for o in &origins {
        o.register(proxy.api).await;
        o.feed(&stream_start());
        o.feed(&gop(0, 5, 100));
    }
    let mut first = Player::join(proxy.http, "/live/cam.flv").await;
    first.until(&last).await;
    let dead = origins.iter().position(|o| o.name == first.origin).unwrap();
    drop(origins.remove(dead));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = first.body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "a player of a dead origin kept going");
    // The stream is still mapped to the dead origin, or already moved:
    // either way the next player is served by the live one.
    let mut next = Player::join(proxy.http, "/live/cam.flv").await;
    assert_eq!(next.origin, origins[0].name);
    next.until(&last).await;
    assert_eq!(origins[0].requests(), 1);
}

#[tokio::test]
async fn an_origin_without_the_stream_or_sending_noise_ends_its_players() {
    let proxy = TestProxy::start(edge_config()).await;
    let fake = FakeOrigin::start("origin-a").await;
    fake.register(proxy.api).await;
    for _ in 0..2 {
        let reply = client::get(proxy.http, "/live/missing.flv").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.text(), "not found on origin\n");
    }
    // An origin that sends what is not FLV: the player is told so.
    let reply = tokio::time::timeout(Duration::from_secs(10), client::get(proxy.http, "/live/noise.flv"))
        .await
        .expect("a player of an origin sending noise is not left hanging");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "the stream's origin failed or went away\n");
    assert_eq!(
        metric(
            &proxy,
            "srs_proxy_edge_upstreams_closed_total{reason=\"origin_failed\"}"
        ),
        1.0
    );
}
