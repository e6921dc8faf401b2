//! Load clients over raw TCP: live viewers that read and discard, and
//! request loops over kept-alive connections that time every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// Live viewers, reading until stopped.
pub struct Viewers {
    pub received: Arc<AtomicU64>,
    /// Viewers that got their response head.
    pub playing: Arc<AtomicUsize>,
    /// Connects refused or reset, or no response head within 10 s.
    pub failed: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Viewers {
    /// Opens `n` viewers of `path(i)`, `rate` connects per second.
    pub async fn open(addr: SocketAddr, n: usize, rate: f64, path: impl Fn(usize) -> String) -> Self {
        let mut v = Viewers {
            received: Arc::default(),
            playing: Arc::default(),
            failed: Arc::default(),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        let start = Instant::now();
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (received, playing, failed, stop) =
                (v.received.clone(), v.playing.clone(), v.failed.clone(), v.stop.clone());
            let request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", path(i));
            v.tasks.spawn(async move {
                tokio::select! {
                    _ = viewer(addr, request, received, playing, failed) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        v
    }

    /// Waits until every viewer plays or failed (bounded).
    pub async fn settle(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.playing.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < n
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn viewer(
    addr: SocketAddr,
    request: String,
    received: Arc<AtomicU64>,
    playing: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) {
    let head = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut have = 0;
        loop {
            let n = tcp.read(&mut buf[have..]).await.ok()?;
            if n == 0 {
                return None;
            }
            have += n;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                    return None;
                }
                return Some((tcp, buf, (have - end - 4) as u64));
            }
            if have == buf.len() {
                return None;
            }
        }
    };
    let Ok(Some((mut tcp, mut buf, first))) = tokio::time::timeout(WAIT, head).await else {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    playing.fetch_add(1, Ordering::Relaxed);
    let mut unflushed = first;
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
        unflushed += n as u64;
        if unflushed > 1 << 16 {
            received.fetch_add(unflushed, Ordering::Relaxed);
            unflushed = 0;
        }
    }
    received.fetch_add(unflushed, Ordering::Relaxed);
}

/// Requests `path` over `conns` kept-alive connections for `time`;
/// returns every request's latency.
pub async fn requests(addr: SocketAddr, path: &str, conns: usize, time: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + time;
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        set.spawn(async move {
            let mut times = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut conn: Option<TcpStream> = None;
            while Instant::now() < deadline {
                let started = Instant::now();
                let tcp = match conn.as_mut() {
                    Some(tcp) => tcp,
                    None => match TcpStream::connect(addr).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            conn.insert(tcp)
                        }
                        Err(_) => continue,
                    },
                };
                match exchange(tcp, request.as_bytes(), &mut buf).await {
                    Some(true) => times.push(started.elapsed()),
                    Some(false) => {
                        times.push(started.elapsed());
                        conn = None;
                    }
                    None => conn = None,
                }
            }
            times
        });
    }
    let mut all = Vec::new();
    while let Some(Ok(times)) = set.join_next().await {
        all.extend(times);
    }
    all
}

/// `n` requests for `path`, one after another, on one kept-alive
/// connection (a new one where the server closes); how many were answered.
pub async fn request_count(addr: SocketAddr, path: &str, n: usize) -> usize {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    let mut conn: Option<TcpStream> = None;
    let mut answered = 0;
    for _ in 0..n {
        let tcp = match conn.as_mut() {
            Some(tcp) => tcp,
            None => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .expect("connect to the server under test");
                let _ = tcp.set_nodelay(true);
                conn.insert(tcp)
            }
        };
        match exchange(tcp, request.as_bytes(), &mut buf).await {
            Some(keep) => {
                answered += 1;
                if !keep {
                    conn = None;
                }
            }
            None => conn = None,
        }
    }
    answered
}

/// One request and its whole Content-Length body; `Some(keep_alive)`.
async fn exchange(tcp: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Option<bool> {
    tcp.write_all(request).await.ok()?;
    let mut have = 0;
    let (end, length, close) = loop {
        let n = tcp.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return None;
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())?;
            break (end + 4, length, head.contains("connection: close"));
        }
        if have == buf.len() {
            return None;
        }
    };
    let mut left = length.saturating_sub(have - end);
    while left > 0 {
        let size = left.min(buf.len());
        let n = tcp.read(&mut buf[..size]).await.ok()?;
        if n == 0 {
            return None;
        }
        left -= n;
    }
    Some(!close)
}

/// The median of some durations.
pub fn p50(times: &mut [Duration]) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.sort_unstable();
    times[times.len() / 2]
}
