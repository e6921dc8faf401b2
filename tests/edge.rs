//! Edge mode: HTTP-FLV and RTMP players of one stream share one origin
//! request, against an origin that serves real FLV tag by tag as the test
//! feeds it; HTTP-TS players share one TS request the same way.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rml_rtmp::sessions::ClientSessionEvent;
use srs_proxy::config::{Config, EdgeMode};
use srs_proxy::http::edge::flv::{self, tag_type, FlvDecoder, Item, Tag};
use srs_proxy::http::edge::ts;
use srs_proxy::rtmp::amf0;
use srs_proxy::rtmp::chunk::Message;
use srs_proxy::rtmp::command::status;
use srs_proxy::rtmp::command::Command;
use srs_proxy::rtmp::message::{type_id, Control, UserControl};
use support::client;
use support::eventually;
use support::flv_origin::{Event, FlvOrigin};
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};
use support::raw_rtmp::RawClient;
use support::rml::RmlClient;
use support::rtmp_origin::{self, RtmpOrigin};
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

/// A player's response to `GET path`: 200 with the origin's content type.
async fn play(proxy: SocketAddr, path: &str, content_type: &str) -> hyper::Response<Incoming> {
    let resp = client::send(proxy, Method::GET, path, &[], Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    assert_eq!(resp.headers()["content-type"], content_type, "the origin's headers");
    resp
}

impl Player {
    async fn join(proxy: SocketAddr, path: &str) -> Self {
        let resp = play(proxy, path, "video/x-flv").await;
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
    assert_eq!(
        origin.request_events(),
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

/// A file of `seconds` of 25 fps H.264 (a keyframe every second) and AAC
/// in `format` (`flv`, `mpegts`), made by ffmpeg; its bytes.
fn ffmpeg_source(dir: &std::path::Path, seconds: u32, format: &str) -> Vec<u8> {
    let path = dir.join(format!("source.{format}"));
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"])
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
        .args(["-c:a", "aac", "-f", format])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg failed");
    std::fs::read(&path).unwrap()
}

/// An FLV file made by ffmpeg ([`ffmpeg_source`]); its tags.
fn ffmpeg_flv(dir: &std::path::Path, seconds: u32) -> Vec<Tag> {
    let mut buf = BytesMut::from(&ffmpeg_source(dir, seconds, "flv")[..]);
    let mut decoder = FlvDecoder::new(16 << 20);
    let mut tags = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).expect("ffmpeg writes FLV") {
        if let Item::Tag(t) = item {
            tags.push(t);
        }
    }
    tags
}

/// `ffprobe`'s view of the video of a file: one line per entry shown
/// (`frame=key_frame` decodes, `packet=flags` demuxes), and its errors.
fn probe_video(path: &std::path::Path, entries: &str) -> (Vec<String>, String) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", entries])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The key_frame flags of the decoded video frames of a file.
fn probe_video_keyflags(path: &std::path::Path) -> (Vec<bool>, String) {
    let (lines, errors) = probe_video(path, "frame=key_frame");
    (lines.iter().map(|l| l.starts_with('1')).collect(), errors)
}

/// Four seconds of ffmpeg's H.264 and AAC on an edge proxy's origin, fed
/// up to `ms` in, and a first player that has read all of that.
struct RealStream {
    dir: tempfile::TempDir,
    tags: Vec<Tag>,
    /// The first tag not fed yet.
    cut: usize,
    proxy: TestProxy,
    origin: FlvOrigin,
    first: Player,
}

async fn real_stream_fed_to(ms: u32) -> RealStream {
    let dir = tempfile::tempdir().unwrap();
    let tags = ffmpeg_flv(dir.path(), 4);
    let (proxy, origin) = edge_proxy(edge_config()).await;
    let cut = tags.iter().position(|t| t.timestamp >= ms).unwrap();
    origin.feed(&tags[..cut]);
    let mut first = Player::join(proxy.http, "/live/real.flv").await;
    first.until(&tags[cut - 1].payload).await;
    RealStream {
        dir,
        tags,
        cut,
        proxy,
        origin,
        first,
    }
}

#[tokio::test]
async fn a_late_joiner_of_a_real_stream_decodes_from_its_first_frame() {
    // 2.5 s in: the proxy's GOP starts at the keyframe of second 2.
    let RealStream {
        dir,
        tags,
        cut,
        proxy,
        origin,
        mut first,
    } = real_stream_fed_to(2500).await;
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

/// A player that stopped reading was disconnected as too slow, having got
/// only what its socket held.
async fn assert_cut_off(proxy: &TestProxy, stalled: &mut TcpStream) {
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

/// Edge mode keeping 1 MiB of a stream, lag never reached (it is wall
/// time), and `player_timeout`.
fn slow_player_config(player_timeout: Duration) -> Config {
    let mut config = edge_config();
    config.edge.gop_cache_bytes = 1 << 20;
    config.edge.player_lag = Duration::from_secs(3600);
    config.edge.player_timeout = player_timeout;
    config
}

async fn reader_and_silent_player(player_timeout: Duration) -> SilentPlayer {
    let (proxy, origin) = edge_proxy(slow_player_config(player_timeout)).await;
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
    // The stalled player was cut off: its response ends although the
    // stream goes on.
    assert_cut_off(proxy, &mut s.silent).await;
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

// ---------------------------------------------------------------------------
// RTMP players of the shared upstream.

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(20);

/// What an RTMP player got: metadata seen, then `(type, timestamp,
/// payload)` of every audio and video message, in order.
#[derive(Default)]
struct RtmpReceived {
    metadata_before_media: bool,
    media: Vec<(u8, u32, Bytes)>,
}

impl RtmpReceived {
    /// Reads events until a message with `payload` arrives.
    async fn until(&mut self, player: &mut RmlClient, payload: &[u8]) {
        let wait = tokio::time::timeout(BOUND, async {
            loop {
                let item = match player.next_event().await.expect("the player's connection stays open") {
                    ClientSessionEvent::StreamMetadataReceived { .. } => {
                        self.metadata_before_media = self.media.is_empty();
                        continue;
                    }
                    ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                        (tag_type::VIDEO, timestamp.value, data)
                    }
                    ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                        (tag_type::AUDIO, timestamp.value, data)
                    }
                    _ => continue,
                };
                let done = item.2 == payload;
                self.media.push(item);
                if done {
                    return;
                }
            }
        });
        wait.await.expect("the awaited message never came");
    }
}

#[tokio::test]
async fn an_rtmp_player_and_an_flv_player_share_one_upstream_and_get_the_same_frames() {
    let (proxy, origin) = edge_proxy(edge_config()).await;
    let mut sent = stream_start();
    sent.extend(gop(0, 10, 300));
    sent.extend(gop(1, 10, 300));
    // Into the second GOP: joiners start at its keyframe.
    let cut = sent.len() - 6;
    origin.feed(&sent[..cut]);
    let mut flv_player = Player::join(proxy.http, "/live/show.flv").await;
    flv_player.until(&sent[cut - 1].payload).await;

    let mut rtmp_player = RmlClient::connect(proxy.rtmp, "live").await;
    rtmp_player.play("show").await.expect("the play is accepted");
    let mut rtmp = RtmpReceived::default();
    rtmp.until(&mut rtmp_player, &sent[cut - 1].payload).await;
    // Both players are on the hub now; the rest goes out live.
    let mut live = gop(2, 10, 70_000);
    live.extend(gop(3, 10, 300));
    origin.feed(&sent[cut..]);
    origin.feed(&live);
    sent.extend(live);
    let last = &sent.last().unwrap().payload;
    flv_player.until(last).await;
    rtmp.until(&mut rtmp_player, last).await;
    assert_eq!(origin.requests(), 1, "one origin request for both players");
    assert!(
        origin
            .events()
            .iter()
            .all(|e| !matches!(e, Event::Request { path, .. } if path != "/live/show.flv")),
        "the shared upstream asks for the stream's FLV: {:?}",
        origin.events()
    );

    // The RTMP player: metadata, the two sequence headers, then a keyframe,
    // its own timestamps never going back, every frame from there on.
    assert!(rtmp.metadata_before_media, "onMetaData before any media");
    let configs: Vec<&[u8]> = rtmp.media[..2].iter().map(|(_, _, p)| &p[..]).collect();
    assert_eq!(
        configs,
        [&sent[1].payload[..], &sent[2].payload[..]],
        "sequence headers first"
    );
    let frames = &rtmp.media[2..];
    let first = tag(frames[0].0, frames[0].1, frames[0].2.to_vec());
    assert!(
        is_key(&first),
        "the first frame after the sequence headers is a keyframe"
    );
    assert_eq!(frames[0].1, 0, "the player's timestamps start at 0");
    assert!(
        rtmp.media.windows(2).all(|w| w[0].1 <= w[1].1),
        "timestamps never go back"
    );
    let origin_media: Vec<Tag> = sent.iter().filter(|t| !is_config(t)).cloned().collect();
    let start = origin_media
        .iter()
        .position(|t| t.payload == frames[0].2)
        .expect("a frame the origin sent");
    assert!(start > 0, "joined at the second GOP's keyframe");
    let expected: Vec<(u8, Bytes)> = origin_media[start..]
        .iter()
        .map(|t| (t.tag_type, t.payload.clone()))
        .collect();
    let got: Vec<(u8, Bytes)> = frames.iter().map(|(t, _, p)| (*t, p.clone())).collect();
    assert_eq!(got, expected, "the origin's frames from that keyframe on, in order");

    // The FLV player got the same frames.
    assert_valid_join(&flv_player, &origin_media, "flv player");
    let flv_frames: Vec<(u8, Bytes)> = flv_player
        .tags
        .iter()
        .filter(|t| !is_config(t))
        .map(|t| (t.tag_type, t.payload.clone()))
        .collect();
    assert_eq!(got, flv_frames, "both players got the same frames");
    assert_eq!(metric(&proxy, "srs_proxy_edge_players_active{protocol=\"rtmp\"}"), 1.0);
}

/// The audio and video tags of an FLV file that carry media (not decoder
/// configurations or end-of-sequence markers), by track, in order.
fn media_by_track(tags: &[Tag]) -> (Vec<Bytes>, Vec<Bytes>) {
    let pick = |kind| {
        tags.iter()
            .filter(|t| t.tag_type == kind && t.payload.len() > 2 && t.payload[1] == 1)
            .map(|t| t.payload.clone())
            .collect()
    };
    (pick(tag_type::VIDEO), pick(tag_type::AUDIO))
}

/// Two players' frames of one track are the same, in order (reported by
/// count and first difference: frames are too large to print).
fn assert_same_frames(got: &[Bytes], expected: &[Bytes], track: &str) {
    let head = |b: &Bytes| b[..b.len().min(12)].to_vec();
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{track} frame {i} differs: {:02x?} ({} bytes) vs {:02x?} ({} bytes)",
            head(&got[i]),
            got[i].len(),
            head(&expected[i]),
            expected[i].len()
        );
    }
    assert_eq!(got.len(), expected.len(), "{track}: as many frames");
}

#[tokio::test]
async fn ffmpeg_plays_over_rtmp_the_frames_an_flv_player_of_the_same_upstream_gets() {
    // 1.5 s in: later joiners start at the keyframe of second 1.
    let real = real_stream_fed_to(1500).await;
    let (dir, tags, cut, proxy, origin) = (real.dir, real.tags, real.cut, real.proxy, real.origin);
    let mut flv_player = real.first;

    let out = dir.path().join("rtmp.flv");
    let ffmpeg = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-i", &format!("rtmp://{}/live/real", proxy.rtmp)])
        .args(["-c", "copy", "-f", "flv"])
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg runs");
    eventually(BOUND, || async {
        (metric(&proxy, "srs_proxy_edge_players_active{protocol=\"rtmp\"}") == 1.0).then_some(())
    })
    .await
    .expect("ffmpeg joined the shared upstream");
    origin.feed(&tags[cut..]);
    origin.end();
    flv_player.read_to_end().await;
    let ffmpeg = tokio::time::timeout(BOUND, ffmpeg.wait_with_output())
        .await
        .expect("ffmpeg ends with the stream")
        .unwrap();
    assert!(
        ffmpeg.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&ffmpeg.stderr)
    );
    assert_eq!(origin.requests(), 1, "one origin request for both players");

    // ffmpeg's FLV muxer writes its own metadata and headers, so the
    // comparison is of the frames: each track's, in order.
    let mut buf = BytesMut::from(&std::fs::read(&out).unwrap()[..]);
    let mut decoder = FlvDecoder::new(16 << 20);
    let mut written = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).expect("ffmpeg writes FLV") {
        if let Item::Tag(t) = item {
            written.push(t);
        }
    }
    let (rtmp_video, rtmp_audio) = media_by_track(&written);
    let (flv_video, flv_audio) = media_by_track(&flv_player.tags);
    assert!(flv_video.len() > 25, "seconds of video: {}", flv_video.len());
    // The FLV player started the upstream and got it all; ffmpeg joined
    // at the keyframe of second 1 and got the same frames from there on.
    let joined = |got: &[Bytes], all: &[Bytes]| {
        all.iter()
            .position(|p| *p == got[0])
            .expect("a frame the FLV player got")
    };
    let video_from = joined(&rtmp_video, &flv_video);
    assert_eq!(video_from, 25, "ffmpeg starts at the second keyframe");
    assert_same_frames(&rtmp_video, &flv_video[video_from..], "video");
    let audio_from = joined(&rtmp_audio, &flv_audio);
    assert_same_frames(&rtmp_audio, &flv_audio[audio_from..], "audio");
    let first_video = written
        .iter()
        .find(|t| t.tag_type == tag_type::VIDEO && !is_config(t))
        .unwrap();
    assert!(is_key(first_video), "ffmpeg's first video frame is a keyframe");
    // And it decodes from its first frame.
    let (keys, errors) = probe_video_keyflags(&out);
    assert_eq!(errors, "", "ffprobe reports no decoding errors");
    assert_eq!(keys.len(), rtmp_video.len());
    assert!(keys[0]);
}

#[tokio::test]
async fn an_rtmp_play_of_a_stream_the_origin_lacks_is_told_and_publishing_stays_transparent() {
    let proxy = TestProxy::start(edge_config()).await;
    let origin = RtmpOrigin::start("rtmp-origin").await;
    origin.register(proxy.api).await;

    // Nobody publishes it: the origin's HTTP-FLV answers 404.
    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(player.play("tv").await, Err(status::PLAY_STREAM_NOT_FOUND.to_string()));
    assert!(player.closed().await, "the refused player is closed");

    // A publish goes to the origin's RTMP port as without edge mode.
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("tv").await.expect("publish accepted");
    publisher.metadata().await;
    publisher
        .video(0, Bytes::from_static(b"\x17\x00\x00\x00\x00sps+pps"))
        .await;
    publisher.audio(0, Bytes::from_static(b"\xaf\x00\x12\x10")).await;
    let key = Bytes::from_static(b"\x17\x01\x00\x00\x00key");
    publisher.video(40, key.clone()).await;
    eventually(BOUND, || async { origin.is_publishing("live/tv").then_some(()) })
        .await
        .expect("the publish reached the origin over RTMP");

    // Now the stream plays, from the shared upstream.
    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    player.play("tv").await.expect("the play is accepted");
    let mut got = RtmpReceived::default();
    got.until(&mut player, &key).await;
    let late = Bytes::from_static(b"\x27\x01\x00\x00\x00late");
    publisher.video(80, late.clone()).await;
    got.until(&mut player, &late).await;
    let payloads: Vec<&[u8]> = got.media.iter().map(|(_, _, p)| &p[..]).collect();
    assert_eq!(
        payloads,
        [
            &b"\x17\x00\x00\x00\x00sps+pps"[..],
            b"\xaf\x00\x12\x10",
            b"\x17\x01\x00\x00\x00key",
            b"\x27\x01\x00\x00\x00late"
        ]
    );
    assert!(
        !origin
            .events()
            .iter()
            .any(|e| matches!(e, rtmp_origin::Event::Played { .. })),
        "no RTMP play reached the origin"
    );
}

/// What the proxy sent an RTMP client, one line per message.
fn describe(m: &Message) -> String {
    match m.type_id {
        type_id::USER_CONTROL | type_id::SET_CHUNK_SIZE | type_id::WINDOW_ACK_SIZE => {
            format!("{:?}", Control::decode(m).unwrap().unwrap())
        }
        type_id::COMMAND_AMF0 => {
            let c = Command::from_message(m).unwrap();
            c.status_code().unwrap_or(c.name()).to_string()
        }
        type_id::DATA_AMF0 => match &amf0::decode_all(&m.payload).unwrap()[..] {
            [amf0::Value::String(name), amf0::Value::Object(o), ..] if name == "onStatus" => {
                o.get_str("code").unwrap_or("").to_string()
            }
            [amf0::Value::String(name), ..] => name.clone(),
            other => format!("{other:?}"),
        },
        _ => {
            let t = tag(m.type_id, m.timestamp, m.payload.to_vec());
            let role = flv::classify(t.tag_type, &t.payload).role;
            format!(
                "{} {role:?}",
                if m.type_id == type_id::VIDEO { "video" } else { "audio" }
            )
        }
    }
}

/// Reads messages until one `describe`s as `what` (or carries `what` as its
/// payload); what came, in order.
async fn read_until(client: &mut RawClient, what: &[u8]) -> Vec<(String, Message)> {
    let mut got = Vec::new();
    let wait = tokio::time::timeout(BOUND, async {
        loop {
            let m = client
                .reader
                .read()
                .await
                .unwrap()
                .expect("the proxy keeps the play open");
            let line = describe(&m);
            let done = line.as_bytes() == what || m.payload == what;
            got.push((line, m));
            if done {
                return;
            }
        }
    });
    wait.await.expect("the awaited message never came");
    got
}

#[tokio::test]
async fn a_playing_rtmp_client_is_answered_as_srs_answers_and_ends_its_play_with_close_stream() {
    let (proxy, origin) = edge_proxy(edge_config()).await;
    let mut sent = stream_start();
    sent.extend(gop(0, 5, 300));
    origin.feed(&sent);
    let mut client = RawClient::connect(proxy.rtmp).await;
    let tc_url = format!("rtmp://{}/live", proxy.rtmp);
    client.rtmp_connect(&tc_url, "live").await;
    let id = client.create_stream().await;
    let play = Command::Play {
        transaction_id: 0.0,
        stream_name: "show?token=t0k".into(),
        args: vec![],
    };
    client.send(&play.to_message(id)).await;
    let got = read_until(&mut client, &sent.last().unwrap().payload).await;
    let lines: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).take(10).collect();
    assert_eq!(
        lines,
        [
            &format!("User(StreamBegin({id}))")[..],
            status::PLAY_RESET,
            status::PLAY_START,
            "|RtmpSampleAccess",
            "NetStream.Data.Start",
            "onMetaData",
            "video Config { variant: 0 }",
            "audio Config { variant: 0 }",
            "video Keyframe",
            "audio Frame",
        ]
    );
    assert!(
        got[1..].iter().all(|(_, m)| m.stream_id == id),
        "on the client's stream"
    );
    assert_eq!(
        origin.events()[0],
        Event::Request {
            conn: 1,
            path: "/live/show.flv".into()
        },
        "the hub asks for the stream's FLV"
    );

    // Mid-play: the client changes its chunk size and pings.
    client.send(&Control::SetChunkSize(4096).to_message()).await;
    client
        .send(&Control::User(UserControl::PingRequest(77)).to_message())
        .await;
    let got = read_until(&mut client, b"User(PingResponse(77))").await;
    assert!(got.iter().all(|(l, _)| l != "onStatus"), "{got:?}");
    // Frames go on after the reply.
    let more = gop(1, 5, 300);
    origin.feed(&more);
    read_until(&mut client, &more.last().unwrap().payload).await;

    client
        .send(&Command::CloseStream { transaction_id: 0.0 }.to_message(id))
        .await;
    assert!(client.closed().await, "closeStream ends the play");
    eventually(BOUND, || async {
        (metric(&proxy, "srs_proxy_edge_players_active{protocol=\"rtmp\"}") == 0.0).then_some(())
    })
    .await
    .expect("the player left its hub");
    assert_eq!(
        metric(&proxy, "srs_proxy_edge_players_ended_total{reason=\"client_closed\"}"),
        1.0
    );
}

// ---- HTTP-TS players share one TS upstream ----

const TS: usize = ts::PACKET;

async fn ts_proxy(config: Config) -> (TestProxy, FlvOrigin) {
    let proxy = TestProxy::start(config).await;
    let origin = FlvOrigin::start_ts("origin-a").await;
    origin.register(proxy.api).await;
    (proxy, origin)
}

fn pid(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[1] & 0x1f, p[2]])
}

/// A packet that starts a video PES with the random access indicator set.
fn is_random_access(p: &[u8]) -> bool {
    let start = p[1] & 0x40 != 0;
    let adaptation = p[3] & 0x20 != 0 && p[4] > 0;
    let payload = &p[5 + usize::from(p[4]).min(182)..];
    start && adaptation && p[5] & 0x40 != 0 && payload.starts_with(&[0, 0, 1]) && payload[3] & 0xf0 == 0xe0
}

/// The PMT PID a PAT packet names (its first program).
fn pmt_pid(pat: &[u8]) -> u16 {
    assert_eq!(pid(pat), 0, "a PAT");
    let section = &pat[5 + usize::from(pat[4])..];
    u16::from_be_bytes([section[10] & 0x1f, section[11]])
}

/// A player reading a TS response as it comes.
struct TsPlayer {
    body: Incoming,
    raw: Vec<u8>,
}

impl TsPlayer {
    async fn join(proxy: SocketAddr, path: &str) -> Self {
        Self {
            body: play(proxy, path, "video/MP2T").await.into_body(),
            raw: Vec::new(),
        }
    }

    /// Reads until its bytes end with `packet`.
    async fn until(&mut self, packet: &[u8]) {
        let wait = tokio::time::timeout(Duration::from_secs(20), async {
            while !self.raw.ends_with(packet) {
                match self.body.frame().await {
                    Some(Ok(frame)) => self.raw.extend_from_slice(&frame.into_data().unwrap_or_default()),
                    other => panic!("the body ended before the awaited packet: {other:?}"),
                }
            }
        });
        wait.await.expect("the awaited packet never came");
    }

    async fn read_to_end(&mut self) {
        let wait = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(frame) = self.body.frame().await {
                let frame = frame.expect("the body ends cleanly");
                self.raw.extend_from_slice(&frame.into_data().unwrap_or_default());
            }
        });
        wait.await.expect("the body did not end");
    }
}

/// `n` TS players of `path`, each having read up to `packet`.
async fn ts_players_until(proxy: SocketAddr, path: &str, n: usize, packet: &[u8]) -> Vec<TsPlayer> {
    let mut players = Vec::new();
    for _ in 0..n {
        let mut p = TsPlayer::join(proxy, path).await;
        p.until(packet).await;
        players.push(p);
    }
    players
}

/// What a TS player must have got: the PAT and PMT, then the origin's
/// packets from a random access point to the end, untouched. Where in
/// the origin's bytes it started.
fn assert_valid_ts_join(got: &[u8], sent: &[u8], name: &str) -> usize {
    assert_eq!(got.len() % TS, 0, "{name}: whole packets");
    assert_eq!(pid(&got[..TS]), 0, "{name}: the PAT first");
    assert_eq!(pid(&got[TS..2 * TS]), pmt_pid(got), "{name}: then the PMT");
    let rest = &got[2 * TS..];
    assert!(is_random_access(&rest[..TS]), "{name}: then a random access point");
    let start = sent.len() - rest.len();
    assert_eq!(start % TS, 0, "{name}: starts at a packet of the origin's");
    assert!(
        sent[start..] == *rest,
        "{name}: the origin's packets from there on, untouched"
    );
    start
}

#[tokio::test]
async fn ts_players_joining_at_different_times_share_one_ts_request_and_start_at_a_random_access_point() {
    let dir = tempfile::tempdir().unwrap();
    let source = ffmpeg_source(dir.path(), 4, "mpegts");
    let (proxy, origin) = ts_proxy(edge_config()).await;
    let whole = source.len();
    let keyframes: Vec<usize> = (0..whole)
        .step_by(TS)
        .filter(|&at| is_random_access(&source[at..at + TS]))
        .collect();
    assert_eq!(keyframes.len(), 4, "a keyframe every second");
    // Four pieces, each one second up to just before the next keyframe,
    // cut inside a packet: the proxy reassembles them.
    let cuts = [0, keyframes[1] - 77, keyframes[2] - 77, keyframes[3] - 77, whole];
    let piece = |i: usize| &source[cuts[i]..cuts[i + 1]];
    // The last whole packet the origin has sent after piece `i`.
    let last_packet = |i: usize| {
        let end = cuts[i + 1] / TS * TS;
        &source[end - TS..end]
    };
    origin.feed_bytes(piece(0));
    let mut a = TsPlayer::join(proxy.http, "/live/cam.ts?token=first").await;
    a.until(last_packet(0)).await;
    origin.feed_bytes(piece(1));
    a.until(last_packet(1)).await;
    // The proxy has everything up to second 2: B starts at the keyframe
    // of second 1.
    let mut b = TsPlayer::join(proxy.http, "/live/cam.ts?token=second").await;
    origin.feed_bytes(piece(2));
    a.until(last_packet(2)).await;
    let mut c = TsPlayer::join(proxy.http, "/live/cam.ts").await;
    assert_eq!(
        metric(&proxy, "srs_proxy_edge_players_active{protocol=\"http-ts\"}"),
        3.0
    );
    assert_eq!(metric(&proxy, "srs_proxy_edge_upstreams_active"), 1.0);
    origin.feed_bytes(piece(3));
    origin.end();
    for p in [&mut a, &mut b, &mut c] {
        p.read_to_end().await;
    }
    let starts: Vec<usize> = [(&a, "a"), (&b, "b"), (&c, "c")]
        .iter()
        .map(|(p, name)| assert_valid_ts_join(&p.raw, &source, name))
        .collect();
    assert_eq!(
        starts,
        keyframes[..3],
        "each joined at the newest random access point the proxy had"
    );
    assert_eq!(
        origin.request_events(),
        [Event::Request {
            conn: 1,
            path: "/live/cam.ts".into()
        }],
        "three TS players, one origin request for the TS"
    );
    assert!(
        metric(
            &proxy,
            "srs_proxy_bytes_relayed_total{direction=\"out\",protocol=\"http-ts\"}"
        ) > 0.0
    );

    // A real demuxer and decoder: the late joiner's TS starts at a
    // keyframe and holds every video frame from there on.
    let file = dir.path().join("late.ts");
    std::fs::write(&file, &c.raw).unwrap();
    let (flags, errors) = probe_video(&file, "packet=flags");
    assert_eq!(errors, "", "ffprobe reports no errors");
    assert!(
        flags[0].contains('K'),
        "the first video packet is a keyframe: {flags:?}"
    );
    let video_pid = pid(&c.raw[2 * TS..]);
    let sent_pictures = source[starts[2]..]
        .chunks(TS)
        .filter(|p| pid(p) == video_pid && p[1] & 0x40 != 0)
        .count();
    assert_eq!(flags.len(), sent_pictures, "every picture from the keyframe on");
    let (keys, errors) = probe_video_keyflags(&file);
    assert_eq!(errors, "", "ffprobe decodes without errors");
    assert!(keys[0], "the first decoded frame is a keyframe");
}

#[tokio::test]
async fn flv_and_ts_players_of_one_stream_are_two_upstreams() {
    let (proxy, origin) = ts_proxy(edge_config()).await;
    let stream = ts_gop(0, 2, 2);
    origin.feed_bytes(&stream.concat());
    let mut ts_players = ts_players_until(proxy.http, "/live/both.ts", 2, stream.last().unwrap()).await;
    // The same stream as FLV is another upstream: the origin is asked for
    // the FLV (which this TS origin cannot serve as FLV: the player is
    // told so, and the TS players are not disturbed).
    let reply = client::get(proxy.http, "/live/both.flv").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        origin.request_events(),
        [
            Event::Request {
                conn: 1,
                path: "/live/both.ts".into()
            },
            Event::Request {
                conn: 2,
                path: "/live/both.flv".into()
            }
        ]
    );
    let more = ts_gop(1, 2, 2);
    origin.feed_bytes(&more.concat());
    origin.end();
    for p in &mut ts_players {
        p.read_to_end().await;
        assert!(p.raw.ends_with(more.last().unwrap()));
    }
}

#[tokio::test]
async fn with_edge_mode_off_every_ts_player_gets_its_own_origin_request() {
    let (proxy, origin) = ts_proxy(test_config()).await;
    let stream = ts_gop(0, 5, 2);
    origin.feed_bytes(&stream.concat());
    let mut players = ts_players_until(proxy.http, "/live/cam.ts", 3, stream.last().unwrap()).await;
    assert_eq!(origin.requests(), 3);
    assert_eq!(origin.open_bodies(), 3);
    origin.end();
    for p in &mut players {
        p.read_to_end().await;
        assert_eq!(p.raw, stream.concat(), "transparent: the origin's bytes from the start");
    }
}

/// GOP `n` of a synthetic 25 fps H.264 TS: PAT, PMT, then `frames`
/// pictures of `packets` packets each (the first a keyframe the muxer
/// flags); every packet names its GOP, picture and place, so each is
/// unique.
fn ts_gop(n: u32, frames: u32, packets: u32) -> Vec<Vec<u8>> {
    use ts::build::{packet, pat, pes, pmt};
    let mut out = vec![pat(0x1000), pmt(0x1000, &[(0x100, ts::stream_type::H264)])];
    for i in 0..frames {
        let ms = (n * frames + i) * 40;
        let key = i == 0;
        let nal: &[u8] = if key { b"\0\0\x01\x65" } else { b"\0\0\x01\x41" };
        let es = [nal, format!("g{n}f{i}p0").as_bytes()].concat();
        out.push(packet(0x100, true, key, &pes(ms, &es)));
        for k in 1..packets {
            out.push(packet(0x100, false, false, format!("g{n}f{i}p{k}").as_bytes()));
        }
    }
    out
}

/// A TS stream with a player that reads everything and one that reads
/// nothing (yet), through 20 s of 32 KiB pictures.
struct SilentTsPlayer {
    proxy: TestProxy,
    origin: FlvOrigin,
    reader: TsPlayer,
    silent: TcpStream,
    sent: Vec<Vec<u8>>,
    bound_held: bool,
}

async fn ts_reader_and_silent_player(player_timeout: Duration) -> SilentTsPlayer {
    let (proxy, origin) = ts_proxy(slow_player_config(player_timeout)).await;
    let first = ts_gop(0, 25, 175);
    origin.feed_bytes(&first.concat());
    let mut reader = TsPlayer::join(proxy.http, "/live/busy.ts").await;
    reader.until(first.last().unwrap()).await;
    let silent = raw_player(proxy.http, "/live/busy.ts").await;
    let mut sent = first;
    let mut bound_held = true;
    for n in 1..20 {
        let gop = ts_gop(n, 25, 175);
        origin.feed_bytes(&gop.concat());
        reader.until(gop.last().unwrap()).await;
        bound_held &= metric(&proxy, "srs_proxy_edge_buffer_bytes") <= f64::from((1 << 20) + 64 * 1024);
        sent.extend(gop);
    }
    SilentTsPlayer {
        proxy,
        origin,
        reader,
        silent,
        sent,
        bound_held,
    }
}

#[tokio::test]
async fn a_ts_player_that_stops_reading_is_disconnected_while_another_gets_every_packet() {
    let mut s = ts_reader_and_silent_player(Duration::from_secs(2)).await;
    assert!(s.bound_held, "what the proxy holds stays within the cache bounds");
    assert_cut_off(&s.proxy, &mut s.silent).await;
    let last = ts_gop(20, 5, 2);
    s.origin.feed_bytes(&last.concat());
    s.origin.end();
    s.reader.read_to_end().await;
    s.sent.extend(last);
    assert_eq!(
        assert_valid_ts_join(&s.reader.raw, &s.sent.concat(), "reader"),
        2 * TS,
        "the reader missed nothing after the tables"
    );
    assert_eq!(s.origin.requests(), 1);
}

#[tokio::test]
async fn a_ts_player_that_falls_behind_skips_whole_packets_to_a_random_access_point() {
    let mut s = ts_reader_and_silent_player(Duration::from_secs(3600)).await;
    s.origin.end();
    let got = read_to_close(&mut s.silent).await;
    s.reader.read_to_end().await;
    let body = dechunk(&got);
    assert_eq!(body.len() % TS, 0, "whole packets only");
    let index: std::collections::HashMap<&[u8], usize> = s.sent.iter().enumerate().map(|(i, p)| (&p[..], i)).collect();
    // The tables repeat (identical) every GOP: only media packets place.
    let positions: Vec<usize> = body
        .chunks(TS)
        .filter(|p| pid(p) == 0x100)
        .map(|p| *index.get(p).expect("a packet the origin sent, untouched"))
        .collect();
    assert!(
        is_random_access(&s.sent[positions[0]]),
        "starts at a random access point"
    );
    let mut gaps = 0;
    for w in positions.windows(2) {
        assert!(w[0] < w[1], "in order");
        if w[1] != w[0] + 1 {
            gaps += 1;
            assert!(
                is_random_access(&s.sent[w[1]]),
                "after a gap the player resumes at a random access point"
            );
        }
    }
    assert!(gaps > 0, "the paused player skipped packets");
    assert!(metric(&s.proxy, "srs_proxy_edge_frames_dropped_total{protocol=\"http-ts\"}") > 0.0);
    assert_eq!(
        metric(&s.proxy, "srs_proxy_edge_players_ended_total{reason=\"too_slow\"}"),
        0.0
    );
    assert_eq!(
        assert_valid_ts_join(&s.reader.raw, &s.sent.concat(), "reader"),
        2 * TS,
        "the reader missed nothing after the tables"
    );
}
