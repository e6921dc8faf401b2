//! RTMP publish and play through the proxy, over real sockets, against the
//! fake RTMP origin in `support::rtmp_origin` registered through the real
//! register API. Clients are independent implementations where the point
//! is interoperability (the `rml_rtmp` crate, the `ffmpeg` binary) and the
//! proxy's own codec where the point is sending what no sane client sends.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rml_rtmp::sessions::ClientSessionEvent;
use srs_proxy::rtmp::amf0::{self, Value};
use srs_proxy::rtmp::chunk::Message;
use srs_proxy::rtmp::command::{status, Command};
use srs_proxy::rtmp::message::{type_id, Control};
use srs_proxy::store::{MemoryStore, Store};
use support::client;
use support::eventually;
use support::proxy::{test_config, TestProxy};
use support::raw_rtmp::RawClient;
use support::rml::RmlClient;
use support::rtmp_origin::{parse_flv, RtmpOrigin, FORBIDDEN_APP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
const BOUND: Duration = Duration::from_secs(15);

async fn proxy_with_origins(n: usize) -> (TestProxy, Vec<RtmpOrigin>) {
    let proxy = TestProxy::start(test_config()).await;
    let mut origins = Vec::new();
    for i in 0..n {
        let origin = RtmpOrigin::start(&format!("rtmp-origin-{i}")).await;
        origin.register(proxy.api).await;
        origins.push(origin);
    }
    (proxy, origins)
}

/// Deterministic test media: `(type, timestamp, payload)`; sizes from a few
/// bytes to a 200 KB "keyframe", timestamps crossing the 24-bit boundary
/// where extended timestamps start.
fn test_media(seed: u8) -> Vec<(u8, u32, Bytes)> {
    let mut out = Vec::new();
    let mut ts = 0x00ff_fe00u32;
    for i in 0..40u32 {
        let video_len = match i {
            0 => 40,
            5 => 200_000,
            _ => 500 + (i as usize * 97) % 3000,
        };
        let video: Vec<u8> = (0..video_len)
            .map(|j| (j as u32 * 31 + i + u32::from(seed)) as u8)
            .collect();
        let mut video = video;
        video[0] = if i % 10 == 0 { 0x17 } else { 0x27 };
        out.push((type_id::VIDEO, ts, Bytes::from(video)));
        let audio: Vec<u8> = (0..(20 + i as usize % 300))
            .map(|j| (j as u8) ^ seed ^ (i as u8))
            .collect();
        out.push((type_id::AUDIO, ts + 3, Bytes::from(audio)));
        ts += 40;
    }
    out
}

async fn publish_media(client: &mut RmlClient, media: &[(u8, u32, Bytes)]) {
    for (kind, ts, data) in media {
        if *kind == type_id::VIDEO {
            client.video(*ts, data.clone()).await;
        } else {
            client.audio(*ts, data.clone()).await;
        }
    }
}

fn av_of(messages: &[Message]) -> Vec<(u8, u32, Bytes)> {
    messages
        .iter()
        .filter(|m| m.type_id == type_id::AUDIO || m.type_id == type_id::VIDEO)
        .map(|m| (m.type_id, m.timestamp, m.payload.clone()))
        .collect()
}

#[tokio::test]
async fn publish_through_the_proxy_reaches_the_origin_intact() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let origin = &origins[0];
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher
        .publish("cam1?token=s3cr3t&expire=99")
        .await
        .expect("publish accepted");
    publisher.metadata().await;
    let media = test_media(1);
    publish_media(&mut publisher, &media).await;

    let got = eventually(BOUND, || async {
        let m = origin.media("live/cam1");
        (av_of(&m).len() >= media.len()).then_some(m)
    })
    .await
    .expect("origin received all the media");
    // Same messages, same order, same payloads and timestamps.
    assert_eq!(av_of(&got), media);
    // The metadata arrived first, as sent.
    let data = &got[0];
    assert_eq!(data.type_id, type_id::DATA_AMF0);
    let values = amf0::decode_all(&data.payload).unwrap();
    assert_eq!(values[0], Value::from("@setDataFrame"));
    assert_eq!(values[1], Value::from("onMetaData"));
    assert_eq!(values[2].as_object().unwrap().get_f64("width"), Some(1280.0));

    // The stream name reached the origin with its parameters, and the
    // connect carried the client's own tcUrl.
    assert_eq!(
        origin.published_names(),
        vec!["cam1?token=s3cr3t&expire=99".to_string()]
    );
    let connect = &origin.connects()[0];
    assert_eq!(
        connect.get_str("tcUrl"),
        Some(format!("rtmp://{}/live", proxy.rtmp).as_str())
    );
    assert_eq!(connect.get_str("app"), Some("live"));
    assert_eq!(connect.get_str("flashVer"), Some("WIN 23,0,0,207"));

    // Counted at the edge: one publisher open, its media bytes in.
    let m = &proxy.ctx.metrics;
    assert_eq!(m.connections_total.with_label_values(&["rtmp", "publisher"]).get(), 1);
    assert_eq!(m.connections_active.with_label_values(&["rtmp", "publisher"]).get(), 1);
    let media_bytes: usize = media.iter().map(|(_, _, p)| p.len()).sum();
    assert!(m.bytes_relayed_total.with_label_values(&["rtmp", "in"]).get() >= media_bytes as u64);
    drop(publisher);
    eventually(BOUND, || async {
        (m.connections_active.with_label_values(&["rtmp", "publisher"]).get() == 0).then_some(())
    })
    .await
    .expect("the publisher no longer counts as open");
}

#[tokio::test]
async fn play_through_the_proxy_gets_what_the_origin_sends() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let origin = &origins[0];
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("show").await.expect("publish accepted");
    publisher.metadata().await;
    let media = test_media(2);
    publish_media(&mut publisher, &media[..40]).await;
    eventually(BOUND, || async {
        (av_of(&origin.media("live/show")).len() >= 40).then_some(())
    })
    .await
    .expect("first half at the origin");

    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    player.play("show").await.expect("play accepted");
    // The rest is sent live while the player watches.
    publish_media(&mut publisher, &media[40..]).await;

    let mut got = Vec::new();
    let mut metadata = false;
    while got.len() < media.len() {
        match player.next_event().await.expect("player connection stays open") {
            ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                got.push((type_id::VIDEO, timestamp.value, data))
            }
            ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                got.push((type_id::AUDIO, timestamp.value, data))
            }
            ClientSessionEvent::StreamMetadataReceived { metadata: m } => {
                assert_eq!(m.video_width, Some(1280));
                metadata = true;
            }
            _ => {}
        }
    }
    assert!(metadata, "metadata reached the player");
    assert_eq!(got, media);
    // More than the origin's 64 KiB window went to the proxy: it must have
    // acknowledged, or a real SRS would stop sending.
    assert!(origin.acknowledgements() > 0, "proxy acknowledged the origin's window");
    let media_bytes: usize = media.iter().map(|(_, _, p)| p.len()).sum();
    let out = proxy
        .ctx
        .metrics
        .bytes_relayed_total
        .with_label_values(&["rtmp", "out"])
        .get();
    assert!(out >= media_bytes as u64, "{out} bytes counted towards the player");
}

#[tokio::test]
async fn publisher_and_player_on_two_proxies_sharing_a_store_meet_on_one_origin() {
    let store = Store::Memory(MemoryStore::new());
    let a = TestProxy::start_with_store(test_config(), store.clone()).await;
    let b = TestProxy::start_with_store(test_config(), store).await;
    let origins = [RtmpOrigin::start("o-a").await, RtmpOrigin::start("o-b").await];
    for o in &origins {
        o.register(a.api).await;
    }

    let mut publisher = RmlClient::connect(a.rtmp, "live").await;
    publisher.publish("shared").await.expect("publish via proxy a");
    let media = test_media(3);
    publish_media(&mut publisher, &media[..10]).await;

    let mut player = RmlClient::connect(b.rtmp, "live").await;
    player.play("shared").await.expect("play via proxy b finds the stream");
    let first = player
        .wait_for(|e| matches!(e, ClientSessionEvent::VideoDataReceived { .. }))
        .await
        .expect("video via proxy b");
    match first {
        ClientSessionEvent::VideoDataReceived { data, timestamp } => {
            assert_eq!((timestamp.value, data), (media[0].1, media[0].2.clone()));
        }
        _ => unreachable!(),
    }
    let publishing: Vec<_> = origins.iter().filter(|o| o.is_publishing("live/shared")).collect();
    assert_eq!(publishing.len(), 1);
    let plays = |o: &RtmpOrigin| {
        o.events()
            .iter()
            .filter(|e| matches!(e, support::rtmp_origin::Event::Played { .. }))
            .count()
    };
    assert_eq!(plays(publishing[0]), 1, "the player reached the publishing origin");
}

#[tokio::test]
async fn a_published_stream_plays_as_http_flv_and_hls_from_the_same_origin() {
    let (proxy, origins) = proxy_with_origins(2).await;
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("tv").await.expect("publish accepted");
    let media = test_media(4);
    publish_media(&mut publisher, &media).await;
    let origin = eventually(BOUND, || async {
        origins.iter().find(|o| av_of(&o.media("live/tv")).len() == media.len())
    })
    .await
    .expect("one origin has the stream");

    // HTTP-FLV for the same key goes to the origin the RTMP claim chose
    // (the other origin would answer 404).
    let resp = client::send(proxy.http, http::Method::GET, "/live/tv.flv", &[], Bytes::new()).await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    let expected: usize = 13 + media.iter().map(|(_, _, p)| 15 + p.len()).sum::<usize>();
    let mut body = resp.into_body();
    let flv = client::read_n(&mut body, expected).await;
    let tags: Vec<_> = parse_flv(&flv).into_iter().collect();
    assert_eq!(tags, av_of(&origin.media("live/tv")));
    assert_eq!(tags, media);

    let playlist = client::get(proxy.http, "/live/tv.m3u8").await;
    assert_eq!(playlist.status, http::StatusCode::OK, "{}", playlist.text());
    assert!(playlist.text().contains("#EXTM3U"));
}

#[tokio::test]
async fn srs_status_codes_reach_the_client() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let mut first = RmlClient::connect(proxy.rtmp, "live").await;
    first.publish("taken").await.expect("first publisher accepted");

    let mut second = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(second.publish("taken").await, Err(status::PUBLISH_BAD_NAME.to_string()));
    assert!(second.closed().await, "the refused publisher is closed");

    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(
        player.play("nobody-publishes-this").await,
        Err(status::PLAY_STREAM_NOT_FOUND.to_string())
    );
    assert!(player.closed().await, "the refused player is closed");

    // An origin refusing the replayed connect (an on_connect hook saying
    // no): its code and reason reach the client.
    let mut refused = RmlClient::connect(proxy.rtmp, FORBIDDEN_APP).await;
    assert_eq!(
        refused.publish("s").await,
        Err("NetConnection.Connect.Rejected".to_string())
    );
    assert!(refused.closed().await, "the refused client is closed");

    // The first publisher is unaffected.
    first.video(0, Bytes::from_static(b"\x17still here")).await;
    eventually(BOUND, || async {
        origins[0]
            .media("live/taken")
            .iter()
            .any(|m| &m.payload[..] == b"\x17still here")
            .then_some(())
    })
    .await
    .expect("the first publisher still reaches the origin");
}

#[tokio::test]
async fn draining_stops_new_clients_and_force_quit_cuts_open_relays() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("draining").await.expect("publish accepted");

    proxy.ctx.shutdown.start_drain();
    eventually(BOUND, || async {
        TcpStream::connect(proxy.rtmp).await.is_err().then_some(())
    })
    .await
    .expect("the RTMP listener closed when draining started");
    // The open relay goes on through the grace period.
    publisher.video(0, Bytes::from_static(b"\x17during grace")).await;
    eventually(BOUND, || async {
        origins[0]
            .media("live/draining")
            .iter()
            .any(|m| &m.payload[..] == b"\x17during grace")
            .then_some(())
    })
    .await
    .expect("the open relay still works while draining");

    proxy.ctx.shutdown.abort();
    assert!(publisher.closed().await, "force-quit closed the relay");
    eventually(BOUND, || async { (origins[0].open_connections() == 0).then_some(()) })
        .await
        .expect("and its origin connection");
}

#[tokio::test]
async fn closing_either_side_closes_the_other() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let origin = &origins[0];

    // Publisher leaves → the origin connection closes and it unpublishes.
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("leaving").await.expect("publish accepted");
    assert!(origin.is_publishing("live/leaving"));
    drop(publisher);
    eventually(BOUND, || async {
        (!origin.is_publishing("live/leaving") && origin.open_connections() == 0).then_some(())
    })
    .await
    .expect("origin saw the publisher leave");

    // Player leaves → its origin connection closes.
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("watched").await.expect("publish accepted");
    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    player.play("watched").await.expect("play accepted");
    assert_eq!(origin.open_connections(), 2);
    drop(player);
    eventually(BOUND, || async { (origin.open_connections() == 1).then_some(()) })
        .await
        .expect("origin saw the player leave");
    assert!(origin.is_publishing("live/watched"), "the publisher is unaffected");

    // Origin dies → the client is closed, not left hanging.
    origin.kill();
    assert!(publisher.closed().await, "publisher closed after the origin died");
}

#[tokio::test]
async fn ffmpeg_publishes_and_plays_through_the_proxy() {
    assert!(
        std::process::Command::new("ffmpeg")
            .arg("-version")
            .stdout(Stdio::null())
            .status()
            .is_ok(),
        "this test needs the ffmpeg binary (apt-get install ffmpeg)"
    );
    let (proxy, origins) = proxy_with_origins(1).await;
    let origin = &origins[0];
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("sent.flv");
    let played = dir.path().join("played.flv");

    // One encode, written both to the proxy and to a local file by the tee
    // muxer: the file is what ffmpeg sent.
    let url = format!("rtmp://{}/live/ff?token=abc", proxy.rtmp);
    let publisher = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=4"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=4"])
        .args([
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "tee"])
        .arg(format!("[f=flv]{url}|[f=flv]{}", local.display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");

    eventually(BOUND, || async {
        (av_of(&origin.media("live/ff")).len() > 10).then_some(())
    })
    .await
    .expect("ffmpeg's stream reached the origin");
    // A player (ffmpeg checks the digest handshake when it plays).
    let player = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .arg("-i")
        .arg(format!("rtmp://{}/live/ff", proxy.rtmp))
        .args(["-t", "1", "-c", "copy", "-f", "flv", "-y"])
        .arg(&played)
        .stderr(Stdio::piped())
        .output();
    let player = tokio::time::timeout(BOUND, player)
        .await
        .expect("player finished")
        .unwrap();
    assert!(
        player.status.success(),
        "ffmpeg player: {}",
        String::from_utf8_lossy(&player.stderr)
    );

    let publisher = tokio::time::timeout(BOUND, publisher.wait_with_output())
        .await
        .expect("publisher finished")
        .unwrap();
    assert!(
        publisher.status.success(),
        "ffmpeg publisher: {}",
        String::from_utf8_lossy(&publisher.stderr)
    );

    assert_eq!(origin.published_names(), vec!["ff?token=abc".to_string()]);
    let sent: Vec<_> = parse_flv(&std::fs::read(&local).unwrap())
        .into_iter()
        .filter(|(t, _, _)| *t == type_id::AUDIO || *t == type_id::VIDEO)
        .collect();
    let received = eventually(BOUND, || async {
        let got = av_of(&origin.media("live/ff"));
        (got.len() >= sent.len()).then_some(got)
    })
    .await
    .expect("all of ffmpeg's audio and video at the origin");
    assert!(sent.len() > 100, "ffmpeg sent a few seconds of media");
    assert_eq!(received, sent, "the origin got exactly what ffmpeg sent, in order");
    let media = origin.media("live/ff");
    assert!(
        media.iter().any(|m| m.type_id == type_id::DATA_AMF0),
        "ffmpeg's metadata reached the origin"
    );

    let played = parse_flv(&std::fs::read(&played).unwrap());
    assert!(played.iter().any(|(t, _, _)| *t == type_id::VIDEO), "player got video");
    assert!(played.iter().any(|(t, _, _)| *t == type_id::AUDIO), "player got audio");
}

/// Opens a TCP connection, sends `bytes`, and reports whether the proxy
/// closes it (without ever sending RTMP back).
async fn raw_bytes_are_refused(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    // The proxy never answers non-RTMP with RTMP: the first read is the
    // close (EOF, or a reset when it hung up with input unread).
    match tokio::time::timeout(BOUND, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

fn raw_message(type_id: u8, stream_id: u32, payload: Vec<u8>) -> Message {
    Message {
        csid: 3,
        timestamp: 0,
        type_id,
        stream_id,
        payload: payload.into(),
    }
}

fn command_bytes(values: &[Value]) -> Vec<u8> {
    amf0::encode_all(values).to_vec()
}

#[tokio::test]
async fn bad_input_closes_only_its_own_connection() {
    let (proxy, origins) = proxy_with_origins(1).await;
    let origin = &origins[0];
    let addr = proxy.rtmp;

    // A healthy relay runs throughout.
    let mut publisher = RmlClient::connect(addr, "live").await;
    publisher.publish("steady").await.expect("publish accepted");

    // Not RTMP at all, or the wrong version byte.
    let mut c0c1 = vec![3u8];
    c0c1.resize(1537, 0);
    for (what, bytes) in [
        (
            "http request",
            b"GET /live/steady.flv HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "tls client hello",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03],
        ),
        ("zeros", vec![0u8; 1537]),
        ("version 6 (rtmpe)", [&[6u8][..], &c0c1[1..]].concat()),
        ("version 4", [&[4u8][..], &c0c1[1..]].concat()),
    ] {
        assert!(raw_bytes_are_refused(addr, &bytes).await, "{what} was not closed");
    }
    // Truncated handshake: C0 and part of C1, then the client half-closes.
    {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&c0c1[..700]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let done = tokio::time::timeout(BOUND, tcp.read_to_end(&mut buf)).await;
        assert!(done.is_ok(), "truncated handshake was not closed");
    }

    // Framing the proxy must refuse after a valid handshake.
    let mut extended_chunk_size = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    extended_chunk_size.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    let mut zero_chunk_size = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    zero_chunk_size.extend_from_slice(&0u32.to_be_bytes());
    let framing: Vec<(&str, Vec<u8>)> = vec![
        (
            "message of 16 MiB - 1",
            vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0],
        ),
        ("chunk stream with no prior header", vec![0x43, 0, 0, 0, 0, 0, 5, 20]),
        ("chunk size 0", zero_chunk_size),
        ("chunk size with the top bit set", extended_chunk_size),
    ];
    for (what, bytes) in framing {
        let mut c = RawClient::connect(addr).await;
        c.send_raw(&bytes).await;
        assert!(c.closed().await, "{what}: connection not closed");
    }

    // AMF0 the proxy must refuse inside a connect.
    let mut deep = command_bytes(&["connect".into(), 1.0.into()]);
    for _ in 0..100 {
        deep.extend_from_slice(&[0x03, 0, 1, b'k']);
    }
    let mut truncated = command_bytes(&["connect".into(), 1.0.into()]);
    truncated.extend_from_slice(&[0x03, 0, 3, b'a', b'p', b'p', 0x02, 0x00, 0x40, b'l', b'i']);
    let mut unknown_marker = command_bytes(&["connect".into(), 1.0.into()]);
    unknown_marker.push(0x0d);
    for (what, payload) in [
        ("too-deep nesting", deep),
        ("truncated string", truncated),
        ("unknown marker", unknown_marker),
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send(&raw_message(type_id::COMMAND_AMF0, 0, payload)).await;
        assert!(c.closed().await, "{what}: connection not closed");
    }

    // Publish or play before connect: an `_error`, then close.
    for name in ["publish", "play"] {
        let mut c = RawClient::connect(addr).await;
        let payload = command_bytes(&[name.into(), 3.0.into(), Value::Null, "steady".into()]);
        c.send(&raw_message(type_id::COMMAND_AMF0, 1, payload)).await;
        match c.next_command().await {
            Some(Command::Error { transaction_id, .. }) => assert_eq!(transaction_id, 3.0),
            other => panic!("{name} before connect answered with {other:?}"),
        }
        assert!(c.closed().await, "{name} before connect: not closed");
    }

    // Names that make no valid stream key: an error status, then close.
    for (tc_url, app, stream) in [
        ("rtmp://h.example.com/live", "live", ""),
        ("rtmp://h.example.com/live", "live", "../../etc/passwd"),
        ("rtmp://h.example.com/../admin", "../admin", "s"),
        ("rtmp://h.example.com/live", "live", "a\u{1}b"),
        ("rtmp://h.example.com/li\nve", "li\nve", "s"),
    ] {
        for publish in [true, false] {
            let mut c = RawClient::connect(addr).await;
            c.rtmp_connect(tc_url, app).await;
            let id = c.create_stream().await;
            let name = if publish { "publish" } else { "play" };
            let payload = command_bytes(&[name.into(), 4.0.into(), Value::Null, stream.into()]);
            c.send(&raw_message(type_id::COMMAND_AMF0, id, payload)).await;
            let reply = c.next_command().await;
            let expected = if publish {
                status::PUBLISH_REJECTED
            } else {
                status::PLAY_FAILED
            };
            match &reply {
                Some(s @ Command::OnStatus { .. }) => assert_eq!(s.status_code(), Some(expected), "{stream:?}"),
                other => panic!("{name} {tc_url} {stream:?} answered with {other:?}"),
            }
            assert!(c.closed().await, "{name} {stream:?}: not closed");
        }
    }

    // Through all of that, the healthy relay kept working, and new clients
    // are still served.
    publisher.video(100, Bytes::from_static(b"\x17after the storm")).await;
    eventually(BOUND, || async {
        origin
            .media("live/steady")
            .iter()
            .any(|m| &m.payload[..] == b"\x17after the storm")
            .then_some(())
    })
    .await
    .expect("the healthy publisher still reaches the origin");
    let mut player = RmlClient::connect(addr, "live").await;
    player.play("steady").await.expect("a new client is served");
    assert!(origin.open_connections() >= 2);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let config = srs_proxy::config::Config {
        rtmp_handshake_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    // Silent from the start.
    let tcp = TcpStream::connect(proxy.rtmp).await.unwrap();
    let mut buf = Vec::new();
    let (mut r, _w) = tcp.into_split();
    assert!(
        tokio::time::timeout(BOUND, r.read_to_end(&mut buf)).await.is_ok(),
        "silent client was not dropped"
    );
    assert!(buf.is_empty());
    // Silent after the handshake, before connect.
    let c = RawClient::connect(proxy.rtmp).await;
    assert!(c.closed().await, "client idle after the handshake was not dropped");
}

#[tokio::test]
async fn without_a_usable_origin_clients_are_told_and_closed() {
    let proxy = TestProxy::start(test_config()).await;
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(publisher.publish("s").await, Err(status::PUBLISH_REJECTED.to_string()));
    assert!(publisher.closed().await);
    let mut player = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(player.play("s").await, Err(status::PLAY_FAILED.to_string()));
    assert!(player.closed().await);

    // An origin that serves HTTP but no RTMP cannot take an RTMP stream.
    let origin = RtmpOrigin::start("http-only").await;
    let mut body: serde_json::Value = serde_json::from_str(&origin.register_body()).unwrap();
    body.as_object_mut().unwrap().remove("rtmp");
    let reply = client::post(proxy.api, "/api/v1/srs/register", body.to_string()).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(publisher.publish("s2").await, Err(status::PUBLISH_REJECTED.to_string()));
    assert!(publisher.closed().await);
    assert_eq!(origin.open_connections(), 0);
}

#[tokio::test]
async fn a_client_with_its_own_chunk_size_and_extended_timestamps_publishes_intact() {
    // Chunk size 1: every payload byte in its own chunk, each continuation
    // repeating the extended timestamp.
    let (proxy, origins) = proxy_with_origins(1).await;
    let mut c = RawClient::connect(proxy.rtmp).await;
    c.send(&Control::SetChunkSize(1).to_message()).await;
    c.rtmp_connect(&format!("rtmp://{}/live", proxy.rtmp), "live").await;
    let id = c.create_stream().await;
    let publish = command_bytes(&["publish".into(), 3.0.into(), Value::Null, "tiny".into(), "live".into()]);
    c.send(&raw_message(type_id::COMMAND_AMF0, id, publish)).await;
    loop {
        match c.next_command().await {
            Some(s @ Command::OnStatus { .. }) => {
                assert_eq!(s.status_code(), Some(status::PUBLISH_START));
                break;
            }
            Some(_) => {}
            None => panic!("closed before publish status"),
        }
    }
    let mut payload = BytesMut::new();
    payload.put_u8(0x17);
    payload.put_slice(&[9u8; 300]);
    let frame = Message {
        csid: 6,
        timestamp: 0x0123_4567,
        type_id: type_id::VIDEO,
        stream_id: id,
        payload: payload.freeze(),
    };
    c.send(&frame).await;
    let got = eventually(BOUND, || async { origins[0].media("live/tiny").first().cloned() })
        .await
        .expect("frame at the origin");
    assert_eq!((got.timestamp, got.payload), (frame.timestamp, frame.payload));
}

#[tokio::test]
async fn over_the_connection_cap_clients_are_rejected_at_connect_and_open_relays_go_on() {
    let config = srs_proxy::config::Config {
        rtmp_max_connections: 1,
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    let origin = RtmpOrigin::start("origin-a").await;
    client::post(proxy.api, "/api/v1/srs/register", origin.register_body()).await;
    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("capped").await.expect("publish");

    let refused = RmlClient::try_connect(proxy.rtmp, "live").await;
    let description = refused.err().expect("a second client over the cap is rejected");
    assert!(description.contains("connection limit"), "{description}");
    let refusals = proxy
        .ctx
        .metrics
        .listener_refused_total
        .with_label_values(&["rtmp", "connection_limit"])
        .get();
    assert_eq!(refusals, 1);

    // The admitted publisher is untouched: its media still reaches the origin.
    let media = test_media(7);
    publish_media(&mut publisher, &media).await;
    let received = eventually(BOUND, || async {
        let got = av_of(&origin.media("live/capped"));
        (got.len() >= media.len()).then_some(got)
    })
    .await
    .expect("media after a refusal");
    assert_eq!(received, media);

    // Once it leaves, a new client is admitted.
    drop(publisher);
    let admitted = eventually(BOUND, || async {
        RmlClient::try_connect(proxy.rtmp, "live").await.ok()
    })
    .await;
    assert!(admitted.is_some(), "a slot frees when a connection closes");
}

#[tokio::test]
async fn a_refused_second_publisher_leaves_the_first_ones_mapping() {
    let (proxy, _origins) = proxy_with_origins(1).await;
    let key = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", "live", "held").unwrap();
    let mut first = RmlClient::connect(proxy.rtmp, "live").await;
    first.publish("held").await.expect("first publisher accepted");
    let mapped = proxy.ctx.store.lookup(&key).await.unwrap().expect("mapped").id;

    let mut second = RmlClient::connect(proxy.rtmp, "live").await;
    assert_eq!(second.publish("held").await, Err(status::PUBLISH_BAD_NAME.to_string()));
    assert!(second.closed().await);
    // Give a release spawned by the refused connection time to run: the
    // mapping must still be the first publisher's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let still = proxy.ctx.store.lookup(&key).await.unwrap().map(|o| o.id);
    assert_eq!(still, Some(mapped), "the refusal must not unmap a live stream");
    // And a refused publisher of a new stream leaves nothing behind.
    let mut refused = RmlClient::connect(proxy.rtmp, FORBIDDEN_APP).await;
    assert!(refused.publish("fresh").await.is_err());
    let fresh = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", FORBIDDEN_APP, "fresh").unwrap();
    let left = support::eventually(BOUND, || async {
        proxy.ctx.store.lookup(&fresh).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(left.is_some(), "a claim the refused request created is released");
}

#[tokio::test]
async fn a_client_that_keeps_talking_but_never_publishes_is_dropped_at_the_setup_deadline() {
    let config = srs_proxy::config::Config {
        // Each wait for a command is bounded by 10 s; the whole setup by 1 s.
        rtmp_handshake_timeout: Duration::from_secs(10),
        rtmp_setup_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    let mut c = RawClient::connect(proxy.rtmp).await;
    c.rtmp_connect("rtmp://127.0.0.1/live", "live").await;
    // Never idle: a ping every 100 ms, far inside the per-command timeout.
    let mut writer = c.writer;
    let chatter = tokio::spawn(async move {
        let ping = Control::User(srs_proxy::rtmp::message::UserControl::PingRequest(1)).to_message();
        while writer.send(&ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = client::closed_within(c.reader.get_mut(), BOUND).await;
    assert!(closed, "a chatting client was never dropped");
    chatter.abort();
    let refused = proxy
        .ctx
        .metrics
        .listener_refused_total
        .with_label_values(&["rtmp", "setup_timeout"])
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn before_publishing_a_client_cannot_make_the_proxy_hold_large_messages() {
    let (proxy, _origins) = proxy_with_origins(1).await;
    // A 100 KB "command" before publish: over the setup message limit.
    let mut c = RawClient::connect(proxy.rtmp).await;
    c.rtmp_connect("rtmp://127.0.0.1/live", "live").await;
    let padding = "x".repeat(100_000);
    let big = command_bytes(&[
        Value::from("FCPublish"),
        Value::Number(3.0),
        Value::Null,
        Value::from(padding.as_str()),
    ]);
    c.send(&raw_message(type_id::COMMAND_AMF0, 0, big)).await;
    assert!(c.closed().await, "a 100 KB setup message was accepted");
    // Many small commands that add up: over the setup budget.
    let mut c = RawClient::connect(proxy.rtmp).await;
    c.rtmp_connect("rtmp://127.0.0.1/live", "live").await;
    let chunk = "y".repeat(30_000);
    for i in 0..6 {
        let m = command_bytes(&[
            Value::from("FCPublish"),
            Value::Number(f64::from(3 + i)),
            Value::Null,
            Value::from(chunk.as_str()),
        ]);
        c.send(&raw_message(type_id::COMMAND_AMF0, 0, m)).await;
    }
    assert!(c.closed().await, "180 KB of setup commands were kept");
    // After publish the full message limit applies again: the 200 KB
    // keyframe of `publish_through_the_proxy_reaches_the_origin_intact`.
}

/// The origin holding a stream dies (its listener closes with it). The
/// next publish of that stream, through `next`, is placed on the dead
/// origin (the emptier one, by least-streams), finds it refusing, and is
/// accepted by the other origin within the same request; a player then
/// finds the stream there.
async fn next_publish_after_death_is_accepted_by_the_other(first: &TestProxy, next: &TestProxy) {
    let mut origins = Vec::new();
    for i in 0..2 {
        let origin = RtmpOrigin::start(&format!("rtmp-origin-{i}")).await;
        origin.register(first.api).await;
        origins.push(origin);
    }
    let key = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", "live", "cam").unwrap();
    let mut publisher = RmlClient::connect(first.rtmp, "live").await;
    publisher.publish("cam").await.expect("publish accepted");
    let dead = origins
        .iter()
        .position(|o| o.is_publishing("live/cam"))
        .expect("publishing");
    // A second stream fills the other origin, so the dead one is emptier.
    let mut other = RmlClient::connect(first.rtmp, "live").await;
    other.publish("other").await.expect("publish accepted");
    assert!(origins[1 - dead].is_publishing("live/other"));

    origins[dead].kill();
    assert!(publisher.closed().await, "the publisher's relay ends with its origin");
    let released = eventually(BOUND, || async {
        next.ctx.store.lookup(&key).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(released.is_some(), "the publisher's mapping goes with it");

    let survivor = origins.remove(1 - dead);
    let mut again = RmlClient::connect(next.rtmp, "live").await;
    again.publish("cam").await.expect("the next publish is accepted");
    assert!(survivor.is_publishing("live/cam"));
    let m = &next.ctx.metrics;
    assert_eq!(
        m.origin_health_transitions_total
            .with_label_values(&["unhealthy"])
            .get(),
        1,
        "the publish found the dead origin first"
    );
    let mut player = RmlClient::connect(first.rtmp, "live").await;
    player.play("cam").await.expect("the player finds the stream");
    drop(other);
}

#[tokio::test]
async fn after_its_origin_dies_the_next_publish_is_accepted_by_the_other() {
    let proxy = TestProxy::start(test_config()).await;
    next_publish_after_death_is_accepted_by_the_other(&proxy, &proxy).await;
}

#[tokio::test]
async fn with_redis_the_next_publish_on_another_replica_is_accepted_by_the_other_origin() {
    let mut config = test_config();
    config.load_balancer_type = srs_proxy::config::StoreKind::Redis;
    config.redis = support::redis::RedisServer::shared().config("rtmp-health:");
    let [a, b] = support::redis::proxy_replicas(&config).await;
    next_publish_after_death_is_accepted_by_the_other(&a, &b).await;
}

/// An RTMP origin that accepts connections and never answers the
/// handshake: after the handshake timeout the publish is accepted by the
/// other origin, and the silent one is unhealthy.
#[tokio::test]
async fn a_publish_mapped_to_a_silent_origin_is_accepted_by_another_after_the_handshake_timeout() {
    let config = srs_proxy::config::Config {
        rtmp_handshake_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let proxy = TestProxy::start(config).await;
    let hole = support::origin::BlackHole::start().await;
    let body = serde_json::json!({
        "ip": "127.0.0.1", "server": "silent", "service": "s", "pid": "1",
        "rtmp": [hole.addr.port().to_string()],
    });
    let reply = client::post(proxy.api, "/api/v1/srs/register", body.to_string()).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let key = srs_proxy::stream_key::StreamKey::new("__defaultVhost__", "live", "cam").unwrap();
    let (placed, _) = proxy
        .ctx
        .claim_origin(&key, srs_proxy::origin::Protocol::Rtmp)
        .await
        .unwrap();
    assert_eq!(&*placed.id, "silent", "the stream is mapped to the silent origin first");
    let origin = RtmpOrigin::start("live-origin").await;
    origin.register(proxy.api).await;

    let mut publisher = RmlClient::connect(proxy.rtmp, "live").await;
    publisher.publish("cam").await.expect("the publish is accepted");
    assert!(origin.is_publishing("live/cam"));
    let listed = proxy.ctx.store.list_origins().await.unwrap();
    assert!(!listed.iter().find(|o| *o.origin.id == *"silent").unwrap().healthy);
}
