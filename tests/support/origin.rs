//! A fake SRS origin: an HTTP server on 127.0.0.1:0 that serves
//!
//! * `/{app}/{stream}.flv` — an endless FLV stream (`video/x-flv`); for
//!   stream names starting with `end`, [`FINITE_CHUNKS`] chunks and the end,
//! * `/{app}/{stream}.ts` — an endless TS stream (`video/MP2T`),
//! * `/{app}/{stream}.m3u8` — a live TS media playlist; under app `fmp4` an
//!   fMP4 playlist with `EXT-X-MAP`; under app `vod` a master playlist,
//! * segments (`…-N.ts`, `.m4s`, `.mp4`) with distinct Content-Types.
//!
//! Bodies are deterministic per stream ([`expected_prefix`]) so a test can
//! compare what the proxy delivered with what the origin sent. Every
//! response names the origin in `X-Origin`. Connections are numbered, and
//! each recorded request says which connection carried it. The origin counts the stream
//! bytes it has handed to its socket and the streams it has open, and can be
//! killed to simulate a dead pod.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{header, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

const CHUNK: usize = 16 * 1024;
/// Chunks of a finite (`end…`) stream.
pub const FINITE_CHUNKS: u64 = 8;
const FLV_HEADER: &[u8] = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00";

/// One request the origin received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub host: Option<String>,
    /// Which connection (1, 2, …, in accept order) carried it.
    pub conn: usize,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    produced: AtomicU64,
    open_streams: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

/// A running fake origin; stops when dropped.
pub struct FakeOrigin {
    pub name: String,
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    kill: CancellationToken,
}

impl Drop for FakeOrigin {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

fn seed(stream: &str, chunk: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ chunk.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in stream.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

/// Chunk `i` of a stream's body: xorshift bytes seeded by stream and index.
pub fn chunk(stream: &str, i: u64) -> Vec<u8> {
    let mut x = seed(stream, i);
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn ts_chunk(stream: &str, i: u64) -> Vec<u8> {
    // 188-byte packets starting with the sync byte, payload from `chunk`.
    let raw = chunk(stream, i);
    raw.chunks(188)
        .flat_map(|p| {
            let mut packet = p.to_vec();
            packet[0] = 0x47;
            packet
        })
        .collect()
}

/// The first `n` bytes of the endless FLV (`ext = "flv"`) or TS body.
pub fn expected_prefix(ext: &str, stream: &str, n: usize) -> Vec<u8> {
    let mut out = if ext == "flv" { FLV_HEADER.to_vec() } else { Vec::new() };
    let mut i = 0;
    while out.len() < n {
        out.extend(if ext == "flv" {
            chunk(stream, i)
        } else {
            ts_chunk(stream, i)
        });
        i += 1;
    }
    out.truncate(n);
    out
}

/// Bytes of a segment: its own name repeated (small and recognisable).
pub fn segment_body(path: &str) -> Vec<u8> {
    path.as_bytes().iter().copied().cycle().take(10_000).collect()
}

struct OpenStream(Arc<Counters>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn endless(
    counters: Arc<Counters>,
    kill: CancellationToken,
    ext: &'static str,
    stream: String,
    chunks: Option<u64>,
) -> Body {
    counters.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = OpenStream(counters.clone());
    let state = (0u64, guard, kill, stream);
    let chunks = stream::unfold(state, move |(i, guard, kill, stream)| async move {
        if chunks.is_some_and(|n| i >= n) {
            return None;
        }
        if kill.is_cancelled() {
            return Some((
                Err::<Frame<Bytes>, BoxError>("origin killed".into()),
                (i, guard, kill, stream),
            ));
        }
        let mut data = if ext == "flv" {
            chunk(&stream, i)
        } else {
            ts_chunk(&stream, i)
        };
        if ext == "flv" && i == 0 {
            data.splice(0..0, FLV_HEADER.iter().copied());
        }
        guard.0.produced.fetch_add(data.len() as u64, Ordering::SeqCst);
        // Yield so a killed origin is noticed between chunks.
        tokio::task::yield_now().await;
        Some((Ok(Frame::data(Bytes::from(data))), (i + 1, guard, kill, stream)))
    });
    StreamBody::new(chunks).boxed_unsync()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

fn playlist(app: &str, stream: &str) -> String {
    match app {
        "fmp4" => format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-MAP:URI=\"{stream}/init.mp4\"\n#EXTINF:2.000,\n{stream}/seg-1.m4s\n#EXTINF:2.000,\n{stream}/seg-2.m4s\n"
        ),
        "vod" => format!(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n{stream}/low.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=2000000\n{stream}/high.m3u8\n"
        ),
        // Segments somewhere else entirely (`/elsewhere/p<port>.m3u8`).
        "elsewhere" => format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.000,\nhttp://127.0.0.1:{}/seg-1.ts\n",
            stream.trim_start_matches('p')
        ),
        // A megabyte of one-character URIs: what a hostile origin sends to
        // make the rewrite balloon.
        "amplify" => {
            let mut p = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n");
            while p.len() < 1024 * 1024 - 2 {
                p.push_str("a\n");
            }
            p
        }
        _ => format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n#EXTINF:2.000,\n{stream}-100.ts\n#EXTINF:2.000,\n{stream}-101.ts\n"
        ),
    }
}

fn handle(
    name: &str,
    counters: &Arc<Counters>,
    kill: &CancellationToken,
    conn: usize,
    req: &Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    counters.requests.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        path_and_query: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
        conn,
    });
    let trimmed = path.trim_start_matches('/');
    let (dir, file) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let is_segment_number = stem
        .rsplit_once('-')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let (status, content_type, body) = match ext {
        "flv" if !stem.starts_with("missing") => (
            StatusCode::OK,
            "video/x-flv",
            endless(
                counters.clone(),
                kill.clone(),
                "flv",
                stem.to_string(),
                stem.starts_with("end").then_some(FINITE_CHUNKS),
            ),
        ),
        "ts" if is_segment_number => (StatusCode::OK, "video/MP2T", full(segment_body(&path))),
        "ts" if !stem.starts_with("missing") => (
            StatusCode::OK,
            "video/MP2T",
            endless(counters.clone(), kill.clone(), "ts", stem.to_string(), None),
        ),
        "m3u8" if !stem.starts_with("missing") => {
            let app = dir.split('/').next().unwrap_or("");
            let text = if dir.starts_with("vod/") {
                playlist("live", stem)
            } else {
                playlist(app, stem)
            };
            (StatusCode::OK, "application/vnd.apple.mpegurl", full(text))
        }
        "m4s" => (StatusCode::OK, "video/iso.segment", full(segment_body(&path))),
        "mp4" => (StatusCode::OK, "video/mp4", full(segment_body(&path))),
        _ => (StatusCode::NOT_FOUND, "text/plain", full("not found on origin\n")),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
    h.insert("x-origin", name.parse().unwrap());
    h.insert(header::SERVER, "SRS/7.0.0(fake)".parse().unwrap());
    resp
}

/// The body SRS sends with `heartbeat { ports on; }` for an origin named
/// `name` serving HTTP on `addr` (and nothing on the other ports).
/// Posts a registration `body` to the proxy's real register API; it must
/// be accepted.
pub async fn post_register(system_api: SocketAddr, body: String) {
    let reply = super::client::post(system_api, "/api/v1/srs/register", body).await;
    assert_eq!(reply.status, StatusCode::OK, "register failed: {}", reply.text());
}

pub fn register_body(name: &str, addr: SocketAddr) -> String {
    serde_json::json!({
        "device_id": name,
        "ip": addr.ip().to_string(),
        "server": name,
        "service": "svc1",
        "pid": "4242",
        // Nothing listens on port 1 on a test machine: RTMP is not served.
        "rtmp": ["1"],
        "http": [format!("0.0.0.0:{}", addr.port())],
        "api": ["1985"],
        "srt": ["10080"],
        "rtc": ["udp://0.0.0.0:8000"],
        "summaries": {"ok": true, "self": {"pid": 4242, "mem_percent": 0.1}}
    })
    .to_string()
}

/// Serves HTTP/1.1 on `listener` until `kill`: `accepted` numbers each
/// connection, `handle` answers each request with the connection's number.
pub fn serve_http(
    listener: TcpListener,
    kill: CancellationToken,
    mut accepted: impl FnMut() -> usize + Send + 'static,
    handle: impl Fn(usize, &Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                _ = kill.cancelled() => return,
            };
            let (kill, handle, id) = (kill.clone(), handle.clone(), accepted());
            tokio::spawn(async move {
                let svc = service_fn(|req| {
                    let resp = handle(id, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = kill.cancelled() => {}
                }
            });
        }
    });
}

impl FakeOrigin {
    /// Starts an origin on 127.0.0.1:0.
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts an origin on a given address (e.g. another loopback IP).
    pub async fn start_on(bind: SocketAddr, name: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind fake origin");
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let kill = CancellationToken::new();
        let (c, k, n) = (counters.clone(), kill.clone(), name.to_string());
        let accepted = counters.clone();
        serve_http(
            listener,
            kill.clone(),
            move || accepted.connections.fetch_add(1, Ordering::SeqCst) + 1,
            move |id, req| handle(&n, &c, &k, id, req),
        );
        Self {
            name: name.to_string(),
            addr,
            counters,
            kill,
        }
    }

    /// The body SRS sends with `heartbeat { ports on; }`, for this origin.
    pub fn register_body(&self) -> String {
        register_body(&self.name, self.addr)
    }

    /// Registers through the proxy's real register API.
    pub async fn register(&self, system_api: SocketAddr) {
        post_register(system_api, self.register_body()).await;
    }

    /// Stream bytes handed to the origin's sockets so far.
    pub fn produced(&self) -> u64 {
        self.counters.produced.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Endless streams currently being served.
    pub fn open_streams(&self) -> usize {
        self.counters.open_streams.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.counters.requests.lock().unwrap().clone()
    }

    /// Dies like a crashed pod: stops accepting and drops every connection.
    pub fn kill(&self) {
        self.kill.cancel();
    }
}

/// An origin that accepts connections and never answers; it holds them
/// until dropped.
pub struct BlackHole {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        Self { addr, task }
    }

    /// What SRS sends with `heartbeat { ports on; }`, for an origin named
    /// `name` whose HTTP port is this black hole.
    pub fn register_body(&self, name: &str) -> String {
        serde_json::json!({
            "ip": self.addr.ip().to_string(),
            "server": name,
            "service": "svc1",
            "pid": "4243",
            "http": [self.addr.port().to_string()],
        })
        .to_string()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
