//! A fast synthetic SRS origin over raw TCP, for memory tests and the
//! data-path benchmark: no per-connection copies, so what a test measures
//! is the proxy, not the origin.
//!
//! * `…/{name}.flv`, `….ts` — an endless chunked body (close-delimited for
//!   HTTP/1.0 requests), written from one shared buffer as fast as the
//!   socket takes it; names starting with `paced` are sent at
//!   [`FastOrigin::pace`] bytes per second instead, in ten slices a second.
//! * `….m3u8` — a small live playlist; `…-N.ts`, `.m4s` — a segment of
//!   [`FastOrigin::segment_bytes`]; both with Content-Length and keep-alive.
//!
//! It counts connections accepted and body bytes written.

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

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    bytes: AtomicU64,
}

/// Pre-built responses, shared by every connection.
struct Bodies {
    bulk_chunk: Bytes,
    bulk_raw: Bytes,
    paced_chunk: Bytes,
    paced_raw: Bytes,
    segment: Bytes,
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

    /// Body bytes handed to sockets so far.
    pub fn bytes(&self) -> u64 {
        self.counters.bytes.load(Ordering::Relaxed)
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
            "flv" | "ts" if ext == "flv" || !numbered => {
                let paced = stem.starts_with("paced");
                let ct = if ext == "flv" { "video/x-flv" } else { "video/MP2T" };
                return stream(tcp, ct, paced, http10, bodies, counters).await;
            }
            "ts" | "m4s" => {
                let seg = bodies.segment.clone();
                respond(&mut tcp, "video/MP2T", seg, counters).await
            }
            "m3u8" => {
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
