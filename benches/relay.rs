//! `make bench`: the live data path against baselines measured in the same
//! run, so the ratios mean something on any machine.
//!
//! A fast synthetic origin and the load clients run in this process on one
//! core; the process under test (the proxy binary with one worker thread,
//! or Debian's nginx with one worker, `proxy_buffering off`,
//! `proxy_buffer_size 64k`, `proxy_buffers 8 64k`) runs on the other. "direct" reads the origin
//! itself. Printed:
//!
//! * resident memory per viewer with 1,000 viewers paced at 1 Mbit/s, and
//!   at overload with 5,000 connecting at 2,500/s (and how many of those
//!   connects failed);
//! * bulk HTTP-FLV with 1/8/64 viewers: MB/s, and MB per CPU-second of
//!   the process under test (the proxy also with `relay_splice` off);
//! * m3u8 and 500 KB segments at 1 and 64 connections: requests/s and the
//!   p50 latency added over direct, also for a bare keep-alive relay on
//!   the proxy's runtime (the floor: see `relay/bare.rs`), and for the
//!   proxy binary `BENCH_PROXY_BEFORE` names. The targets take turns in
//!   six rounds of half a second each, and each round's p50 is also given
//!   against nginx's in the same round;
//! * user-space instructions per MB relayed and per m3u8 request
//!   (callgrind), for this build and, when `BENCH_PROXY_BEFORE` names
//!   another proxy binary, for that one; per m3u8 request also for nginx
//!   and the bare relay;
//! * memory-store claims against a bare map lookup;
//! * edge mode: 1,000 viewers of one 2 Mbit/s HTTP-FLV stream, with edge
//!   mode on and off (transparent): origin stream requests, origin egress in
//!   multiples of the stream, and proxy CPU per viewer;
//! * edge mode's HLS cache: 1,000 HLS viewers at once, each loading the
//!   playlist and its segments, with edge mode off and on: origin requests
//!   per segment.
//!
//! `BENCH_ONLY=viewers,bulk,hls,callgrind,claims,edge,edge_hls` runs a
//! subset; `BENCH_EDGE_VIEWERS` and `BENCH_EDGE_HLS_VIEWERS` set the edge
//! viewer counts; `BENCH_CALLGRIND_OUT=dir` keeps the callgrind profiles
//! there; `BENCH_PROXY_LOG` sets the proxies' `RUST_LOG` (default `error`,
//! so that no log line is written while measuring). The open file limit is raised to its hard limit at start (5,000 viewers need
//! about 10,000 descriptors here and as many in the proxy).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "relay/bare.rs"]
mod bare;
#[path = "relay/edge_hls.rs"]
mod edge_hls;
#[path = "relay/load.rs"]
mod load;
#[path = "relay/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use load::{p50, requests, Viewers};
use process::Target;
use srs_proxy::balance::Policy;
use srs_proxy::store::{MemoryStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::fast_origin::FastOrigin;

/// 1 Mbit/s per paced viewer.
const PACE: usize = 125_000;
const SEGMENT: usize = 500_000;
const BULK_SECONDS: u64 = 5;

fn main() {
    bare::run_if_asked();
    process::pin_self();
    let nofile = process::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(nofile));
}

fn wanted(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

async fn run(nofile: u64) {
    let origin = FastOrigin::start(PACE, SEGMENT).await;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_srs-proxy"));
    println!(
        "data path: proxy and nginx on cpu {} (one worker), origin and load on cpu {}; open files {nofile}",
        process::TARGET_CPU,
        process::BENCH_CPU
    );
    let proxy = || process::proxy(&binary, origin.addr, &[], "srs-proxy");
    let nginx = || process::nginx(origin.addr);
    if process::nginx(origin.addr).is_none() {
        println!("nginx not installed (apt-get install nginx-light): its columns are skipped");
    }
    if wanted("viewers") {
        for (n, rate) in [(1000, 500.0), (5000, 2500.0)] {
            for target in [Some(proxy()), nginx()].into_iter().flatten() {
                paced_viewers(target, n, rate).await;
            }
        }
    }
    if wanted("bulk") {
        for k in [1, 8, 64] {
            let direct = bulk(origin.addr, None, k).await;
            let p = proxy();
            let ours = bulk(p.addr, Some(&p), k).await;
            drop(p);
            let p = process::proxy_with(&binary, origin.addr, &[], "srs-proxy", &[("PROXY_RELAY_SPLICE", "off")]);
            let copying = bulk(p.addr, Some(&p), k).await;
            drop(p);
            let mut line = format!(
                "bulk flv, {k:>2} viewers: direct {:.0} MB/s; srs-proxy {:.0} MB/s ({:.2}x direct), {:.0} MB per CPU-s \
                 (relay_splice off: {:.0} MB/s, {:.0} MB per CPU-s)",
                direct.0,
                ours.0,
                ours.0 / direct.0,
                ours.1,
                copying.0,
                copying.1
            );
            if let Some(n) = nginx() {
                let theirs = bulk(n.addr, Some(&n), k).await;
                line += &format!(
                    "; nginx {:.0} MB/s, {:.0} MB per CPU-s; srs-proxy/nginx per CPU-s {:.2}x",
                    theirs.0,
                    theirs.1,
                    ours.1 / theirs.1
                );
            }
            println!("{line}");
        }
    }
    if wanted("hls") {
        let p = proxy();
        let n = nginx();
        let bare = bare::start(origin.addr);
        let before = std::env::var_os("BENCH_PROXY_BEFORE")
            .map(|b| process::proxy(Path::new(&b), origin.addr, &[], "srs-proxy before"));
        // Direct first: the others are given as added over it.
        let mut targets = vec![("direct", origin.addr), ("srs-proxy", p.addr)];
        if let Some(b) = &before {
            targets.push(("srs-proxy before", b.addr));
        }
        if let Some(n) = &n {
            targets.push(("nginx", n.addr));
        }
        targets.push(("bare tokio relay", bare.addr));
        for (what, path) in [("m3u8", "/live/hls.m3u8"), ("500 KB segment", "/live/hls-100.ts")] {
            for conns in [1, 64] {
                let m = hls(&targets, path, conns).await;
                let direct = m[0].p50;
                let mut line = format!(
                    "{what}, {conns:>2} conn: direct {:.0} req/s p50 {:.0} us",
                    m[0].rps,
                    micros(direct)
                );
                for t in &m[1..] {
                    line += &format!(
                        "; {} {:.0} req/s, p50 +{:.0} us",
                        t.name,
                        t.rps,
                        micros(t.p50.saturating_sub(direct))
                    );
                }
                println!("{line}");
                // Each round's p50s were taken a moment apart: their
                // differences show what the machine's drift hides.
                if let Some(nginx) = m.iter().find(|t| t.name == "nginx") {
                    let mut line = format!("{what}, {conns:>2} conn: p50 minus nginx's, per round (median, range):");
                    for t in m[1..].iter().filter(|t| t.name != "nginx") {
                        let (median, lo, hi) = spread(&t.rounds, &nginx.rounds);
                        line += &format!(" {} {median:+.0} us ({lo:+.0} to {hi:+.0});", t.name);
                    }
                    println!("{}", line.trim_end_matches(';'));
                }
            }
        }
    }
    if wanted("callgrind") {
        callgrind(&binary, &origin).await;
    }
    if wanted("claims") {
        claims().await;
    }
    if wanted("edge") {
        edge(&binary, &origin).await;
    }
    if wanted("edge_hls") {
        let viewers = std::env::var("BENCH_EDGE_HLS_VIEWERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        edge_hls::run(&binary, &origin, viewers, SEGMENT).await;
    }
}

/// One stream, 1,000 viewers, edge mode on and off.
async fn edge(binary: &Path, origin: &FastOrigin) {
    let viewers_n: usize = std::env::var("BENCH_EDGE_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    const SECONDS: u64 = 5;
    let stream = support::fast_origin::LIVE_BITRATE as f64 / 8.0;
    let mut cpu = Vec::new();
    for (mode, name) in [("off", "transparent"), ("on", "edge")] {
        let target = process::proxy_with(binary, origin.addr, &[], name, &[("PROXY_EDGE_MODE", mode)]);
        let requests0 = origin.live_requests();
        let viewers = Viewers::open(target.addr, viewers_n, 500.0, |_| "/live/live-edge.flv".to_string()).await;
        viewers.settle(viewers_n).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (bytes0, received0, cpu0, t0) = (
            origin.bytes(),
            viewers.received.load(Ordering::Relaxed),
            target.cpu_split(),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let seconds = t0.elapsed().as_secs_f64();
        let egress = (origin.bytes() - bytes0) as f64 / seconds;
        let received = (viewers.received.load(Ordering::Relaxed) - received0) as f64 / seconds;
        let cpu1 = target.cpu_split();
        let (user, system) = ((cpu1.0 - cpu0.0) / seconds, (cpu1.1 - cpu0.1) / seconds);
        let per_viewer = (user + system) / viewers_n as f64;
        let requests = origin.live_requests() - requests0;
        let (playing, failed) = (
            viewers.playing.load(Ordering::Relaxed),
            viewers.failed.load(Ordering::Relaxed),
        );
        println!(
            "edge mode {mode:<3}: {viewers_n} viewers of one 2 Mbit/s FLV stream: origin stream requests {requests}, origin egress {:.1}x the stream, viewers received {:.0}x the stream; proxy CPU {:.1} % (user {:.1} %, kernel {:.1} %; {:.3} ms/s per viewer); playing {playing}, failed {failed}",
            egress / stream,
            received / stream,
            (user + system) * 100.0,
            user * 100.0,
            system * 100.0,
            per_viewer * 1e3,
        );
        cpu.push(per_viewer);
        viewers.close().await;
        target.stop();
    }
    println!(
        "edge mode: proxy CPU per viewer, edge/transparent {:.2}x",
        cpu[1] / cpu[0].max(1e-12)
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Resident memory per viewer, and failed connects, for `n` paced viewers
/// connecting at `rate` per second.
async fn paced_viewers(target: Target, n: usize, rate: f64) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = target.rss();
    let viewers = Viewers::open(target.addr, n, rate, |i| format!("/live/paced-{i}.flv")).await;
    viewers.settle(n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = target.rss();
    let received = viewers.received.load(Ordering::Relaxed);
    let playing = viewers.playing.load(Ordering::Relaxed);
    let failed = viewers.failed.load(Ordering::Relaxed);
    println!(
        "{:<9} {n} paced viewers (1 Mbit/s, connecting at {rate:.0}/s): RSS {:.0} MiB, {:.1} KiB per viewer; playing {playing}, failed connects {failed}, received {:.0} MB",
        target.name,
        after as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / 1024.0 / n as f64,
        received as f64 / 1e6
    );
    viewers.close().await;
    target.stop();
}

/// `k` bulk viewers for a few seconds: MB/s, and MB per CPU-second of
/// `target` when given.
async fn bulk(addr: std::net::SocketAddr, target: Option<&Target>, k: usize) -> (f64, f64) {
    let viewers = Viewers::open(addr, k, 1000.0, |i| format!("/live/bulk-{i}.flv")).await;
    viewers.settle(k).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b0, c0, t0) = (
        viewers.received.load(Ordering::Relaxed),
        target.map_or(0.0, Target::cpu_seconds),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(BULK_SECONDS)).await;
    let (b1, c1, t1) = (
        viewers.received.load(Ordering::Relaxed),
        target.map_or(0.0, Target::cpu_seconds),
        Instant::now(),
    );
    viewers.close().await;
    let mb = (b1 - b0) as f64 / 1e6;
    (mb / (t1 - t0).as_secs_f64(), mb / (c1 - c0).max(1e-9))
}

/// Rounds of the HLS measurement; each target is measured for one slice
/// per round, in an order that turns with the round.
const HLS_ROUNDS: usize = 6;
const HLS_SLICE: Duration = Duration::from_millis(500);

/// One target's HLS figures.
struct HlsFigures {
    name: &'static str,
    rps: f64,
    /// Over every round's requests.
    p50: Duration,
    /// Each round's own.
    rounds: Vec<Duration>,
}

/// Requests/s and p50 latency for `path` over `conns` connections, for
/// each target. The targets take turns in short slices rather than one
/// long run each, so a change in the machine's load while they run
/// weighs on all of them alike.
async fn hls(targets: &[(&'static str, std::net::SocketAddr)], path: &str, conns: usize) -> Vec<HlsFigures> {
    for (_, addr) in targets {
        // Maps the stream (the proxy places it on the playlist's claim).
        let _ = requests(*addr, "/live/hls.m3u8", 1, Duration::from_millis(100)).await;
    }
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut rounds: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    for round in 0..HLS_ROUNDS {
        for i in 0..targets.len() {
            let t = (i + round) % targets.len();
            let mut times = requests(targets[t].1, path, conns, HLS_SLICE).await;
            rounds[t].push(p50(&mut times));
            all[t].extend(times);
        }
    }
    let seconds = (HLS_SLICE * HLS_ROUNDS as u32).as_secs_f64();
    targets
        .iter()
        .zip(all.iter_mut().zip(rounds))
        .map(|(&(name, _), (times, rounds))| HlsFigures {
            name,
            rps: times.len() as f64 / seconds,
            p50: p50(times),
            rounds,
        })
        .collect()
}

/// The median, least and greatest of `ours[i] - theirs[i]`, in µs.
fn spread(ours: &[Duration], theirs: &[Duration]) -> (f64, f64, f64) {
    let mut d: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| micros(*a) - micros(*b)).collect();
    d.sort_by(f64::total_cmp);
    (d[d.len() / 2], d[0], d[d.len() - 1])
}

/// User-space instructions per MB relayed by one bulk viewer and per
/// m3u8 request, each from two runs under callgrind (the difference
/// cancels start-up and shutdown).
async fn callgrind(after: &Path, origin: &FastOrigin) {
    if std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("callgrind: valgrind not installed (apt-get install valgrind); skipped");
        return;
    }
    let mut runs = vec![("this build", after.to_path_buf())];
    if let Ok(before) = std::env::var("BENCH_PROXY_BEFORE") {
        runs.insert(0, ("before", PathBuf::from(before)));
    }
    let mut flv = String::from("callgrind, user-space instructions per MB relayed (1 bulk viewer):");
    let mut m3u8 = String::from("callgrind, user-space instructions per m3u8 request (1 connection):");
    let mut first = None;
    for (label, binary) in runs {
        let proxy = |wrapper: &[&str]| process::proxy(&binary, origin.addr, wrapper, "callgrind");
        // 200 MB apart: start-up and shutdown vary by more than 32 MB
        // of relaying costs now.
        let small = instructions(proxy, |addr| relay_mb(addr, 8)).await;
        let large = instructions(proxy, |addr| relay_mb(addr, 208)).await;
        let per_mb = (large.saturating_sub(small)) as f64 / 200.0;
        let per_request = per_playlist(proxy).await;
        flv += &format!(" {label} {:.1} k;", per_mb / 1e3);
        m3u8 += &format!(" {label} {:.1} k;", per_request / 1e3);
        match first {
            None => first = Some((per_mb, per_request)),
            Some((mb, request)) => {
                flv += &format!(" before/this build {:.1}x;", mb / per_mb.max(1.0));
                m3u8 += &format!(" before/this build {:.2}x;", request / per_request.max(1.0));
            }
        }
    }
    // The same requests through nginx and the bare relay: what a request
    // costs a plain reverse proxy, and the runtime's own share.
    if process::nginx(origin.addr).is_some() {
        let nginx = |wrapper: &[&str]| process::nginx_under(origin.addr, wrapper).expect("nginx starts");
        m3u8 += &format!(" nginx {:.1} k;", per_playlist(nginx).await / 1e3);
    }
    let bare = |wrapper: &[&str]| bare::start_under(origin.addr, wrapper);
    m3u8 += &format!(" bare tokio relay {:.1} k;", per_playlist(bare).await / 1e3);
    println!("{}", flv.trim_end_matches(';'));
    println!("{}", m3u8.trim_end_matches(';'));
}

/// Instructions per playlist request of what `start` runs: 500 and 2,500
/// requests on one connection, the difference divided by 2,000 (which
/// cancels start-up and shutdown).
async fn per_playlist(start: impl Fn(&[&str]) -> process::Target) -> f64 {
    let small = instructions(&start, |addr| playlists(addr, 500)).await;
    let large = instructions(&start, |addr| playlists(addr, 2500)).await;
    large.saturating_sub(small) as f64 / 2000.0
}

/// One bulk viewer until `mb` MB have arrived.
async fn relay_mb(addr: std::net::SocketAddr, mb: u64) {
    let viewers = Viewers::open(addr, 1, 1.0, |_| "/live/bulk-cg.flv".to_string()).await;
    while viewers.received.load(Ordering::Relaxed) < mb * 1_000_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    viewers.close().await;
}

/// `n` playlist requests, one after another on one connection.
async fn playlists(addr: std::net::SocketAddr, n: usize) {
    let answered = load::request_count(addr, "/live/hls.m3u8", n).await;
    assert_eq!(answered, n, "every playlist request is answered");
}

/// Instructions what `start` runs (given the wrapper to run it under)
/// ran under callgrind while `drive` loaded it.
async fn instructions<F, Fut>(start: impl Fn(&[&str]) -> process::Target, drive: F) -> u64
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    // `BENCH_CALLGRIND_OUT=dir` keeps each run's profile there, numbered,
    // for `callgrind_annotate`.
    let out = match std::env::var_os("BENCH_CALLGRIND_OUT") {
        Some(keep) => {
            static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            std::fs::create_dir_all(&keep).expect("BENCH_CALLGRIND_OUT is a directory");
            PathBuf::from(keep).join(format!("callgrind.out.{}", RUN.fetch_add(1, Ordering::Relaxed)))
        }
        None => dir.path().join("callgrind.out"),
    };
    let arg = format!("--callgrind-out-file={}", out.display());
    let target = start(&["valgrind", "--tool=callgrind", &arg]);
    drive(target.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    target.stop();
    let text = std::fs::read_to_string(&out).expect("callgrind output");
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("callgrind totals")
}

/// Memory-store claims of mapped streams against a bare map lookup.
async fn claims() {
    let store = Store::Memory(MemoryStore::new());
    let body = support::origin::FakeOrigin::start("claims").await.register_body();
    let origin = srs_proxy::discovery::heartbeat::parse_register(body.as_bytes()).unwrap();
    store.upsert_origin(origin, None).await.unwrap();
    let keys: Vec<StreamKey> = (0..1000)
        .map(|i| StreamKey::new("v.example.com", "live", &format!("s{i}")).unwrap())
        .collect();
    for k in &keys {
        store
            .claim(k, Policy::LeastStreams, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let n = 200_000;
    let start = Instant::now();
    for i in 0..n {
        let _ = store
            .claim(&keys[i % keys.len()], Policy::LeastStreams, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let claim = start.elapsed().as_secs_f64() / n as f64;
    let map: std::collections::HashMap<StreamKey, String> = keys.iter().map(|k| (k.clone(), "x".to_string())).collect();
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(map.get(&keys[i % keys.len()]).cloned());
    }
    let lookup = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "memory claim (hit): {:.0} ns/op, bare map lookup {:.0} ns/op, ratio {:.1}",
        claim * 1e9,
        lookup * 1e9,
        claim / lookup
    );
}
