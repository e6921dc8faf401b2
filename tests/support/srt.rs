//! Real SRT peers for the SRT tests: libsrt's `srt-live-transmit` (Debian's
//! `srt-tools`) as the fake origin and as clients, so no SRT is written by
//! hand on either end of the proxy.
//!
//! Each peer bridges SRT and plain UDP on loopback, and the test holds the
//! UDP end: a publisher reads what the test sends it, an origin in publish
//! mode writes what it received to the test, and so on. Datagrams are SRT
//! live-mode messages one for one, so the test can compare bytes exactly.
//! Latency is raised and too-late packet drop is off on every peer, so a
//! loaded machine delays delivery instead of losing packets.
//!
//! Every process is killed when its handle drops.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Upper bound on any single wait, so a broken proxy fails a test instead
/// of hanging it. Never a performance threshold.
pub const BOUND: Duration = Duration::from_secs(20);

/// Bytes per datagram: seven MPEG-TS packets, what SRT senders use.
pub const CHUNK: usize = 1316;

/// Socket options every peer gets: see the module docs.
const COMMON: &str = "latency=1000&tlpktdrop=0";

/// A running `srt-live-transmit`, with its log lines.
pub struct Slt {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub log: Vec<String>,
}

impl Slt {
    /// A client exits when its connection ends (`-a:no`); an origin
    /// listens again for the next caller.
    pub fn spawn(input: &str, output: &str, client: bool) -> Self {
        let mut child = Command::new("srt-live-transmit")
            .arg("-v")
            .args(client.then_some("-a:no"))
            .args([input, output])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("srt-live-transmit runs (make deps installs srt-tools)");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle` (or one seen before);
    /// false when the process ends first or [`BOUND`] passes.
    pub async fn wait_for(&mut self, needle: &str) -> bool {
        if self.log.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let hit = line.contains(needle);
                    self.log.push(line);
                    if hit {
                        return true;
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Whether a log line containing `needle` has come so far, without
    /// waiting.
    pub fn seen(&mut self, needle: &str) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Whether the process has exited (within [`BOUND`]).
    pub async fn exits(&mut self) -> bool {
        tokio::time::timeout(BOUND, self.child.wait()).await.is_ok()
    }

    /// Ends the process at once (SIGKILL): it sends no SRT shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A UDP port nothing listens on right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn query(passphrase: Option<&str>) -> String {
    match passphrase {
        Some(p) => format!("{COMMON}&passphrase={p}&pbkeylen=16"),
        None => COMMON.to_string(),
    }
}

/// The test's end of a peer's UDP side.
pub struct Feed {
    pub socket: UdpSocket,
    /// Where datagrams for the peer go (None when the peer only writes).
    pub peer: Option<SocketAddr>,
}

impl Feed {
    async fn new(peer: Option<SocketAddr>) -> Self {
        // A receive buffer of seconds of stream rather than the default
        // fraction of one: a test process descheduled on a busy machine
        // must not lose what srt-live-transmit hands it over plain UDP.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        Self {
            socket: UdpSocket::from_std(socket.into()).unwrap(),
            peer,
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Sends `chunks` to the peer, one datagram each, paced so that no
    /// loopback socket buffer overflows while the peer is descheduled.
    pub async fn send(&self, chunks: &[Vec<u8>]) {
        let peer = self.peer.expect("a peer that reads UDP");
        for c in chunks {
            self.socket.send_to(c, peer).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// Receives datagrams until none has come for a second (after the
    /// first, which may take up to [`BOUND`]). For streams whose length is
    /// not known in advance; never a pass/fail threshold.
    pub async fn receive_until_quiet(&self) -> Vec<Vec<u8>> {
        let mut out = self.receive(1).await;
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(1), self.socket.recv_from(&mut buf)).await
        {
            out.push(buf[..len].to_vec());
        }
        out
    }

    /// Receives `n` datagrams, or what arrived within [`BOUND`].
    pub async fn receive(&self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + BOUND;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) => out.push(buf[..len].to_vec()),
                _ => break,
            }
        }
        out
    }
}

/// A fake SRS origin's SRT port: `srt-live-transmit` listening.
pub struct SrtOrigin {
    pub port: u16,
    pub slt: Slt,
    /// Publish mode: what the origin received. Play mode: what it sends.
    pub feed: Feed,
}

impl SrtOrigin {
    /// An origin that takes one publisher and writes what it receives to
    /// [`Self::feed`].
    pub async fn publish_sink(passphrase: Option<&str>) -> Self {
        let feed = Feed::new(None).await;
        let port = free_udp_port();
        let mut slt = Slt::spawn(
            &format!("srt://:{port}?mode=listener&{}", query(passphrase)),
            &format!("udp://127.0.0.1:{}", feed.port()),
            false,
        );
        assert!(slt.wait_for("listen...").await, "origin did not listen: {:?}", slt.log);
        Self { port, slt, feed }
    }

    /// An origin that sends one player what the test writes to
    /// [`Self::feed`].
    pub async fn play_source(passphrase: Option<&str>) -> Self {
        let input = free_udp_port();
        let feed = Feed::new(Some(SocketAddr::from(([127, 0, 0, 1], input)))).await;
        let port = free_udp_port();
        let mut slt = Slt::spawn(
            &format!("udp://127.0.0.1:{input}"),
            &format!("srt://:{port}?mode=listener&{}", query(passphrase)),
            false,
        );
        assert!(slt.wait_for("listen...").await, "origin did not listen: {:?}", slt.log);
        Self { port, slt, feed }
    }

    /// Waits for the `n`th accepted caller (1 = the first).
    pub async fn accepted_n(&mut self, n: usize) -> bool {
        let deadline = tokio::time::Instant::now() + BOUND;
        while tokio::time::Instant::now() < deadline {
            if self.slt.seen("") && self.slt.log.iter().filter(|l| l.contains("Accepted SRT")).count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Whether a caller's connection was accepted.
    pub async fn accepted(&mut self) -> bool {
        self.slt.wait_for("Accepted SRT").await
    }
}

/// An SRT client through the proxy.
pub struct SrtClient {
    pub slt: Slt,
    pub feed: Feed,
}

impl SrtClient {
    /// A caller that publishes what the test writes to [`Self::feed`].
    pub async fn publisher(proxy: SocketAddr, stream_id: &str, passphrase: Option<&str>) -> Self {
        let input = free_udp_port();
        let feed = Feed::new(Some(SocketAddr::from(([127, 0, 0, 1], input)))).await;
        let slt = Slt::spawn(
            &format!("udp://127.0.0.1:{input}"),
            &format!("srt://{}?streamid={stream_id}&{}", uri_host(proxy), query(passphrase)),
            true,
        );
        Self { slt, feed }
    }

    /// A caller that plays and writes what it receives to [`Self::feed`].
    pub async fn player(proxy: SocketAddr, stream_id: &str, passphrase: Option<&str>) -> Self {
        let feed = Feed::new(None).await;
        let slt = Slt::spawn(
            &format!("srt://{}?streamid={stream_id}&{}", uri_host(proxy), query(passphrase)),
            &format!("udp://127.0.0.1:{}", feed.port()),
            true,
        );
        Self { slt, feed }
    }

    /// Whether the SRT connection came up.
    pub async fn connected(&mut self) -> bool {
        self.slt.wait_for("connected").await
    }
}

/// `host:port` as an SRT URI wants it (IPv6 in brackets).
fn uri_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// `n` datagrams of MPEG-TS-shaped bytes (sync byte every 188), each
/// different, so a reordered, lost or altered one shows.
pub fn ts_chunks(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut c = vec![0u8; CHUNK];
            for (j, b) in c.iter_mut().enumerate() {
                *b = if j % 188 == 0 { 0x47 } else { (i * 31 + j * 7) as u8 };
            }
            c[1..5].copy_from_slice(&(i as u32).to_be_bytes());
            c
        })
        .collect()
}

/// A heartbeat registration for an origin on 127.0.0.1 with the given
/// ports (absent = not served).
pub fn register_body(name: &str, rtmp: Option<u16>, http: Option<u16>, srt: Option<u16>) -> String {
    let mut body = serde_json::json!({
        "device_id": name,
        "ip": "127.0.0.1",
        "server": name,
        "service": "svc1",
        "pid": "4242",
        "api": ["1985"],
    });
    for (field, port) in [("rtmp", rtmp), ("http", http), ("srt", srt)] {
        if let Some(p) = port {
            body[field] = serde_json::json!([p.to_string()]);
        }
    }
    body.to_string()
}

/// Registers through the proxy's real register API.
pub async fn register(system_api: SocketAddr, body: String) {
    super::origin::post_register(system_api, body).await;
}
