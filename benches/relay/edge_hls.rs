//! `edge_hls`: many HLS viewers at once, each loading the playlist and
//! then every segment in it over one kept-alive connection, through the
//! proxy with edge mode off and on. Printed: origin requests per segment
//! (edge on: target 1; off: one per viewer) and per playlist.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::process;
use crate::support::fast_origin::FastOrigin;

/// Runs `viewers` viewers against a proxy with edge mode off, then on.
pub async fn run(binary: &Path, origin: &FastOrigin, viewers: usize, segment_bytes: usize) {
    for mode in ["off", "on"] {
        let target = process::proxy_with(binary, origin.addr, &[], "srs-proxy", &[("PROXY_EDGE_MODE", mode)]);
        let (playlists0, segments0) = (origin.playlist_requests(), origin.segment_requests());
        let started = Instant::now();
        let (complete, segments_per_playlist) =
            load(target.addr, &format!("edge-{mode}"), viewers, segment_bytes).await;
        let seconds = started.elapsed().as_secs_f64();
        let playlists = origin.playlist_requests() - playlists0;
        let segments = origin.segment_requests() - segments0;
        println!(
            "edge_hls, {viewers} HLS viewers at once, edge mode {mode:<3}: origin requests per segment {:.2} (edge on: target 1), playlist requests {playlists}; {complete} viewers got every segment whole; {seconds:.2} s",
            segments as f64 / segments_per_playlist.max(1) as f64,
        );
        target.stop();
    }
}

/// `n` viewers of `stream`, released together once all are connected:
/// how many got the playlist and every segment whole, and how many
/// segments the playlist lists.
async fn load(addr: SocketAddr, stream: &str, n: usize, segment_bytes: usize) -> (usize, usize) {
    let barrier = Arc::new(Barrier::new(n));
    let mut viewers = JoinSet::new();
    for _ in 0..n {
        let (barrier, playlist) = (barrier.clone(), format!("/live/{stream}.m3u8"));
        viewers.spawn(async move {
            let connected = connect(addr).await;
            // Every viewer waits, connected or not, so the others start.
            barrier.wait().await;
            viewer(connected?, &playlist, segment_bytes).await
        });
    }
    let (mut complete, mut listed) = (0, 0);
    while let Some(done) = viewers.join_next().await {
        if let Ok(Some(segments)) = done {
            complete += 1;
            listed = segments;
        }
    }
    (complete, listed)
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// The playlist, then each segment it lists; the number of segments when
/// every one arrived whole.
async fn viewer(mut sender: SendRequest<Empty<Bytes>>, playlist: &str, segment_bytes: usize) -> Option<usize> {
    let text = String::from_utf8(get(&mut sender, playlist).await?.to_vec()).ok()?;
    let dir = playlist.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut segments = 0;
    for uri in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let body = get(&mut sender, &format!("{dir}/{uri}")).await?;
        if body.len() != segment_bytes {
            return None;
        }
        segments += 1;
    }
    Some(segments)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Option<Bytes> {
    sender.ready().await.ok()?;
    let req = Request::get(path).header("host", "bench").body(Empty::new()).ok()?;
    let resp = sender.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    Some(resp.into_body().collect().await.ok()?.to_bytes())
}
