//! A fast synthetic SRS origin over raw TCP, for memory tests and the
//! data-path benchmark: no per-connection copies, so what a test measures
//! is the proxy, not the origin.
//!
//! * `…/{name}.flv`, `….ts` — an endless chunked body (close-delimited for
//!   HTTP/1.0 requests), written from one shared buffer as fast as the
//!   socket takes it; names starting with `paced` are sent at
//!   [`FastOrigin::pace`] bytes per second instead, in ten slices a second.
//! * `…/live….flv` — a real FLV stream at [`LIVE_BITRATE`]: file header,
//!   `onMetaData`, AVC and AAC sequence headers, then 25 video frames a
//!   second (a keyframe every second) and 50 audio frames, paced by the
//!   clock and written in batches of 360 ms as SRS writes to its players
//!   (`mw_latency`), timestamps from the origin's start. What edge mode
//!   parses.
//! * `….m3u8` — a small live playlist; `…-N.ts`, `.m4s` — a segment of
//!   [`FastOrigin::segment_bytes`]; both with Content-Length and keep-alive.
//!
//! It counts connections accepted, live FLV requests, playlist and
//! segment requests and body bytes written.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Payload bytes of one chunk of a bulk stream.
pub const BULK_CHUNK: usize = 64 * 1024;

/// Bits per second of a `live….flv` stream (audio and video payloads).
pub const LIVE_BITRATE: usize = 2_000_000;
/// Video frame interval of a live stream, ms (25 fps); two audio frames
/// go with each.
const LIVE_FRAME_MS: u32 = 40;
const LIVE_AUDIO_BYTES: usize = 160;
/// Video frames per write of a live stream (with their audio): 360 ms.
const LIVE_BATCH_FRAMES: u64 = 9;
const LIVE_VIDEO_BYTES: usize = LIVE_BITRATE / 8 / 25 - 2 * LIVE_AUDIO_BYTES;

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    bytes: AtomicU64,
    /// Requests of `live….flv` streams.
    live: AtomicUsize,
    /// Playlist requests.
    playlists: AtomicU64,
    /// Segment requests.
    segments: AtomicU64,
}

/// Pre-built responses, shared by every connection.
struct Bodies {
    bulk_chunk: Bytes,
    bulk_raw: Bytes,
    paced_chunk: Bytes,
    paced_raw: Bytes,
    segment: Bytes,
    video: Bytes,
    audio: Bytes,
    /// The live streams' clock starts here.
    epoch: tokio::time::Instant,
}

/// A running fast origin; stops when dropped.
pub struct FastOrigin {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Drop for FastOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn framed(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    out.put_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    out.put_slice(payload);
    out.put_slice(b"\r\n");
    out.freeze()
}

fn payload(n: usize) -> Vec<u8> {
    // FLV-looking bytes: a tag header pattern over a counter.
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ 0x09).collect()
}

impl FastOrigin {
    /// Starts on 127.0.0.1:0. `pace` is bytes per second of a paced
    /// stream; `segment_bytes` the size of every segment.
    pub async fn start(pace: usize, segment_bytes: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fast origin");
        let addr = listener.local_addr().unwrap();
        let bulk = payload(BULK_CHUNK);
        let slice = payload((pace / 10).max(1));
        let bodies = Arc::new(Bodies {
            bulk_chunk: framed(&bulk),
            bulk_raw: Bytes::from(bulk),
            paced_chunk: framed(&slice),
            paced_raw: Bytes::from(slice),
            segment: Bytes::from(payload(segment_bytes)),
            video: Bytes::from(payload(LIVE_VIDEO_BYTES)),
            audio: Bytes::from(payload(LIVE_AUDIO_BYTES)),
            epoch: tokio::time::Instant::now(),
        });
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (c, s) = (counters.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => { tokio::time::sleep(Duration::from_millis(5)).await; continue } },
                    _ = s.cancelled() => return,
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let (c, s, b) = (c.clone(), s.clone(), bodies.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(tcp, &b, &c) => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, counters, stop }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Requests of `live….flv` streams so far.
    pub fn live_requests(&self) -> usize {
        self.counters.live.load(Ordering::Relaxed)
    }

    /// Body bytes handed to sockets so far.
    pub fn bytes(&self) -> u64 {
        self.counters.bytes.load(Ordering::Relaxed)
    }

    /// Playlist requests answered so far.
    pub fn playlist_requests(&self) -> u64 {
        self.counters.playlists.load(Ordering::Relaxed)
    }

    /// Segment requests answered so far.
    pub fn segment_requests(&self) -> u64 {
        self.counters.segments.load(Ordering::Relaxed)
    }

    /// The body SRS sends with `heartbeat { ports on; }`, for this origin.
    pub fn register_body(&self, name: &str) -> String {
        serde_json::json!({
            "device_id": name, "ip": self.addr.ip().to_string(), "server": name,
            "service": "svc1", "pid": "1",
            "rtmp": ["1"], "http": [format!("0.0.0.0:{}", self.addr.port())],
            "api": ["1985"], "srt": ["10080"], "rtc": ["udp://0.0.0.0:8000"],
        })
        .to_string()
    }
}

/// One connection: requests until the client closes or a stream ends it.
async fn serve(mut tcp: TcpStream, bodies: &Bodies, counters: &Counters) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let (path, http10, used) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    break (req.path.unwrap_or("/").to_string(), req.version == Some(0), n)
                }
                Ok(httparse::Status::Partial) if buf.len() < 65536 => {}
                _ => return,
            }
            match tcp.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let _ = buf.split_to(used);
        let path = path.split('?').next().unwrap_or("").to_string();
        let file = path.rsplit('/').next().unwrap_or("");
        let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
        let numbered = stem
            .rsplit_once('-')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let ok = match ext {
            // A numbered `.ts` is an HLS segment; an `.flv` is always live.
            "flv" if stem.starts_with("live") && !http10 => return live_flv(tcp, bodies, counters).await,
            "flv" | "ts" if ext == "flv" || !numbered => {
                let paced = stem.starts_with("paced");
                let ct = if ext == "flv" { "video/x-flv" } else { "video/MP2T" };
                return stream(tcp, ct, paced, http10, bodies, counters).await;
            }
            "ts" | "m4s" => {
                counters.segments.fetch_add(1, Ordering::Relaxed);
                let seg = bodies.segment.clone();
                respond(&mut tcp, "video/MP2T", seg, counters).await
            }
            "m3u8" => {
                counters.playlists.fetch_add(1, Ordering::Relaxed);
                let text = format!(
                    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n#EXTINF:2.000,\n{stem}-100.ts\n#EXTINF:2.000,\n{stem}-101.ts\n"
                );
                respond(&mut tcp, "application/vnd.apple.mpegurl", Bytes::from(text), counters).await
            }
            _ => tcp
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .is_ok(),
        };
        if !ok || http10 {
            return;
        }
    }
}

async fn respond(tcp: &mut TcpStream, content_type: &str, body: Bytes, counters: &Counters) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\nserver: SRS/7.0.0(fast)\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if tcp.write_all(head.as_bytes()).await.is_err() || tcp.write_all(&body).await.is_err() {
        return false;
    }
    counters.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    true
}

async fn stream(
    mut tcp: TcpStream,
    content_type: &str,
    paced: bool,
    http10: bool,
    bodies: &Bodies,
    counters: &Counters,
) {
    let framing = if http10 { "" } else { "transfer-encoding: chunked\r\n" };
    let head = format!("HTTP/1.1 200 OK\r\nserver: SRS/7.0.0(fast)\r\ncontent-type: {content_type}\r\n{framing}connection: close\r\n\r\n");
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let piece = match (paced, http10) {
        (false, false) => &bodies.bulk_chunk,
        (false, true) => &bodies.bulk_raw,
        (true, false) => &bodies.paced_chunk,
        (true, true) => &bodies.paced_raw,
    };
    let payload = if paced {
        bodies.paced_raw.len()
    } else {
        bodies.bulk_raw.len()
    } as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if paced {
            tick.tick().await;
        }
        if tcp.write_all(piece).await.is_err() {
            return;
        }
        counters.bytes.fetch_add(payload, Ordering::Relaxed);
    }
}

/// A chunked live FLV body: the decoder set-up, then frames as the clock
/// makes them, the first one a keyframe.
async fn live_flv(mut tcp: TcpStream, bodies: &Bodies, counters: &Counters) {
    use srs_proxy::http::edge::flv::{previous_tag_size, put_tag_header, FILE_HEADER};
    counters.live.fetch_add(1, Ordering::Relaxed);
    let head = "HTTP/1.1 200 OK\r\nserver: SRS/7.0.0(fast)\r\ncontent-type: video/x-flv\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let frame_ms = u64::from(LIVE_FRAME_MS);
    let mut n = bodies.epoch.elapsed().as_millis() as u64 / frame_ms;
    let first = n;
    let at = |n: u64| (n * frame_ms) as u32;
    let mut start = BytesMut::new();
    start.put_slice(head.as_bytes());
    let mut tags = BytesMut::new();
    tags.put_slice(FILE_HEADER);
    let metadata: &[u8] = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09";
    let avc_config: &[u8] = &[
        0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80,
    ];
    let aac_config: &[u8] = &[0xaf, 0, 0x11, 0x90];
    for (tag_type, payload) in [(18u8, metadata), (9, avc_config), (8, aac_config)] {
        put_tag_header(&mut tags, tag_type, at(n), payload.len());
        tags.put_slice(payload);
        tags.put_slice(&previous_tag_size(payload.len()));
    }
    start.put_slice(format!("{:x}\r\n", tags.len()).as_bytes());
    start.put_slice(&tags);
    start.put_slice(b"\r\n");
    if tcp.write_all(&start).await.is_err() {
        return;
    }
    loop {
        // Written in batches, as SRS writes to players with its default
        // `mw_latency` (350 ms).
        tokio::time::sleep_until(bodies.epoch + Duration::from_millis((n + LIVE_BATCH_FRAMES - 1) * frame_ms)).await;
        // Each video and audio frame a tag around the shared payload:
        // written without copying the payloads.
        let audio_first: [u8; 2] = [0xaf, 1];
        let mut frames: Vec<(u8, u32, [u8; 5], usize, &Bytes)> = Vec::with_capacity(3 * LIVE_BATCH_FRAMES as usize);
        for n in n..n + LIVE_BATCH_FRAMES {
            let key = if (n - first) % 25 == 0 { 0x17 } else { 0x27 };
            frames.push((9, at(n), [key, 1, 0, 0, 0], 5, &bodies.video));
            frames.push((8, at(n), [0xaf, 1, 0, 0, 0], audio_first.len(), &bodies.audio));
            frames.push((
                8,
                at(n) + LIVE_FRAME_MS / 2,
                [0xaf, 1, 0, 0, 0],
                audio_first.len(),
                &bodies.audio,
            ));
        }
        let len: usize = frames.iter().map(|f| 15 + f.3 + f.4.len()).sum();
        let mut pieces: Vec<Bytes> = Vec::with_capacity(2 * frames.len() + 1);
        let mut small = BytesMut::with_capacity(32 * frames.len());
        small.put_slice(format!("{len:x}\r\n").as_bytes());
        for (tag_type, time, first, first_len, payload) in frames {
            put_tag_header(&mut small, tag_type, time, first_len + payload.len());
            small.put_slice(&first[..first_len]);
            pieces.push(small.split().freeze());
            pieces.push(payload.clone());
            small.put_slice(&previous_tag_size(first_len + payload.len()));
        }
        small.put_slice(b"\r\n");
        pieces.push(small.freeze());
        if write_all_pieces(&mut tcp, pieces).await.is_err() {
            return;
        }
        counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
        n += LIVE_BATCH_FRAMES;
    }
}

async fn write_all_pieces(tcp: &mut TcpStream, mut pieces: Vec<Bytes>) -> std::io::Result<()> {
    use bytes::Buf;
    let mut i = 0;
    while i < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[i..].iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut n = tcp.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let take = n.min(pieces[i].len());
            pieces[i].advance(take);
            n -= take;
            if pieces[i].is_empty() {
                i += 1;
            }
        }
    }
    Ok(())
}
