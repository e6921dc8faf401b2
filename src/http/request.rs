//! What a stream request is, once parsed: its kind (by extension), the
//! stream it names and what its origin is asked for; and the state the
//! streaming server's handlers share.

use std::net::SocketAddr;

use http::Request;
use prometheus::IntCounter;

use super::edge::Edge;
use super::hls_session::HlsSessions;
use super::pool::KeepAlive;
use crate::context::Context;
use crate::stream_key::StreamKey;

/// What a request path asks for, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Flv,
    /// HTTP-TS live stream, or an HLS segment (decided per request).
    Ts,
    Playlist,
    Segment,
}

impl StreamKind {
    /// Route class for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flv => "flv",
            Self::Ts => "ts",
            Self::Playlist => "m3u8",
            Self::Segment => "segment",
        }
    }
}

/// Classifies a path by the extension of its last segment; `None` means
/// it is not a stream resource (static files, or 404).
pub fn classify(path: &str) -> Option<StreamKind> {
    const SEGMENTS: [&str; 13] = [
        "m4s", "mp4", "m4a", "m4v", "aac", "mp3", "ac3", "ec3", "vtt", "webvtt", "key", "cmfv", "cmfa",
    ];
    let file = path.rsplit('/').next().unwrap_or("");
    let (_, ext) = file.rsplit_once('.')?;
    let is = |name: &str| ext.eq_ignore_ascii_case(name);
    Some(if is("flv") {
        StreamKind::Flv
    } else if is("ts") {
        StreamKind::Ts
    } else if is("m3u8") {
        StreamKind::Playlist
    } else if SEGMENTS.iter().any(|s| is(s)) {
        StreamKind::Segment
    } else {
        return None;
    })
}

/// State of the streaming server.
pub struct HttpState {
    /// The proxy's shared handle.
    pub ctx: Context,
    /// HLS routing tokens handed out by this replica.
    pub sessions: HlsSessions,
    /// Kept-alive origin connections for playlists and segments.
    pub keep_alive: KeepAlive,
    /// Playlists being fetched and rewritten at once (each may hold a
    /// whole playlist and its rewrite in memory).
    pub rewrites: tokio::sync::Semaphore,
    /// Edge mode's shared upstreams (none while it is off): the replica's
    /// table, built once for every listener.
    pub edge: Edge,
    /// `bytes_relayed_total{protocol="hls",direction="out"}`, resolved
    /// once instead of per request.
    pub hls_bytes_out: IntCounter,
}

/// A stream request, parsed once for every handler.
pub struct StreamRequest<'a> {
    /// The client's request: method, headers, query (streams have no
    /// request body).
    pub req: &'a Request<()>,
    /// The stream the path names.
    pub key: StreamKey,
    /// What the origin is asked for: the key's path, never the raw one, so
    /// `?app=&stream=` cannot make one stream be served from another's
    /// origin and no dot segment reaches an origin.
    pub target: String,
    /// The client, for `X-Forwarded-For`.
    pub peer: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_decides_the_kind_in_any_case() {
        assert_eq!(classify("/live/a.flv"), Some(StreamKind::Flv));
        assert_eq!(classify("/live/a.TS"), Some(StreamKind::Ts));
        assert_eq!(classify("/live/a.M3u8"), Some(StreamKind::Playlist));
        assert_eq!(classify("/live/a-1.m4s"), Some(StreamKind::Segment));
        assert_eq!(classify("/live/a.WebVTT"), Some(StreamKind::Segment));
        assert_eq!(classify("/live.flv/a"), None, "only the last segment counts");
        assert_eq!(classify("/index.html"), None);
        assert_eq!(classify("/live/noext"), None);
    }
}
