//! A fake SRS HLS origin that counts what it is asked and can hold its
//! answers: for tests of edge mode's HLS cache.
//!
//! * `/{app}/{stream}.m3u8` — a live TS playlist (`#EXT-X-TARGETDURATION:2`,
//!   segments `{stream}-100.ts` and `{stream}-101.ts`) that also says which
//!   origin request it answered (`#X-TEST-REQUEST:n`, a tag players
//!   ignore);
//! * `…-N.ts` — a segment of [`HlsOrigin::segment_bytes`] deterministic
//!   bytes ([`segment`]); `…-404.ts` is a 404.
//!
//! Every answer carries `X-Request: n` (the origin's request number), so a
//! test can tell one origin answer handed to many players from many
//! answers. Paths under [`HlsOrigin::hold`] wait until
//! [`HlsOrigin::release`] before any answer is written.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counters {
    /// Origin requests so far (numbers every answer).
    requests: AtomicUsize,
    /// Requests by path, without the query.
    by_path: Mutex<HashMap<String, usize>>,
    /// Every request target, in arrival order.
    targets: Mutex<Vec<String>>,
    /// Requests waiting at the gate now.
    held: AtomicUsize,
    /// Path prefix whose answers wait for the gate.
    hold: Mutex<Option<String>>,
}

/// A running origin; stops when dropped.
pub struct HlsOrigin {
    pub name: String,
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    gate: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Drop for HlsOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The bytes of the segment at `path`: `size` bytes seeded by the path.
pub fn segment(path: &str, size: usize) -> Vec<u8> {
    let mut x: u32 = path
        .bytes()
        .fold(2_166_136_261, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619))
        | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

impl HlsOrigin {
    /// Starts on 127.0.0.1:0 with segments of `segment_bytes`.
    pub async fn start(name: &str, segment_bytes: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hls origin");
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (gate, _) = watch::channel(true);
        let stop = CancellationToken::new();
        let (c, g, s, n) = (counters.clone(), gate.clone(), stop.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                let (c, g, s, n) = (c.clone(), g.clone(), s.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (c, g, n) = (c.clone(), g.clone(), n.clone());
                        async move { Ok::<_, Infallible>(answer(&n, &c, &g, segment_bytes, req).await) }
                    });
                    tokio::select! {
                        _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc) => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Self {
            name: name.to_string(),
            addr,
            counters,
            gate,
            stop,
        }
    }

    /// Registers through the proxy's real register API.
    pub async fn register(&self, system_api: SocketAddr) {
        super::origin::post_register(system_api, super::origin::register_body(&self.name, self.addr)).await;
    }

    /// From now on, requests for paths starting with `prefix` wait for
    /// [`HlsOrigin::release`].
    pub fn hold(&self, prefix: &str) {
        *self.counters.hold.lock().unwrap() = Some(prefix.to_string());
        self.gate.send_replace(false);
    }

    /// Lets every held request (and later ones) be answered.
    pub fn release(&self) {
        *self.counters.hold.lock().unwrap() = None;
        self.gate.send_replace(true);
    }

    /// Requests waiting at the gate now.
    pub fn held(&self) -> usize {
        self.counters.held.load(Ordering::SeqCst)
    }

    /// Requests for `path` (query ignored) so far.
    pub fn count(&self, path: &str) -> usize {
        self.counters.by_path.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Every request target so far, in arrival order.
    pub fn targets(&self) -> Vec<String> {
        self.counters.targets.lock().unwrap().clone()
    }
}

async fn answer(
    name: &str,
    counters: &Counters,
    gate: &watch::Sender<bool>,
    segment_bytes: usize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let target = req.uri().path_and_query().map_or(path.clone(), |p| p.to_string());
    let n = counters.requests.fetch_add(1, Ordering::SeqCst) + 1;
    *counters.by_path.lock().unwrap().entry(path.clone()).or_default() += 1;
    counters.targets.lock().unwrap().push(target);
    let held = counters
        .hold
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|p| path.starts_with(p));
    if held {
        let mut open = gate.subscribe();
        counters.held.fetch_add(1, Ordering::SeqCst);
        let _ = open.wait_for(|open| *open).await;
        counters.held.fetch_sub(1, Ordering::SeqCst);
    }
    let file = path.rsplit('/').next().unwrap_or("");
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let (status, content_type, body) = match ext {
        "ts" if stem.ends_with("-404") => (StatusCode::NOT_FOUND, "text/plain", b"no such file\n".to_vec()),
        "m3u8" => (
            StatusCode::OK,
            "application/vnd.apple.mpegurl",
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n#X-TEST-REQUEST:{n}\n#EXTINF:2.000,\n{stem}-100.ts\n#EXTINF:2.000,\n{stem}-101.ts\n"
            )
            .into_bytes(),
        ),
        "ts" => (StatusCode::OK, "video/MP2T", segment(&path, segment_bytes)),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found on origin\n".to_vec()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    h.insert(header::CACHE_CONTROL, "max-age=10".parse().unwrap());
    h.insert("x-origin", name.parse().unwrap());
    h.insert("x-request", n.to_string().parse().unwrap());
    resp
}
