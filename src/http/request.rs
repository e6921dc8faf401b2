//! What a stream request is, once parsed: its kind (by extension), the
//! stream it names and what its origin is asked for; and the state the
//! streaming server's handlers share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::Request;
use prometheus::IntCounter;

use super::edge::Edge;
use super::hls_session::HlsSessions;
use super::pool::KeepAlive;
use crate::context::Context;
use crate::stream_key::{StreamKey, StreamKeyError};

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
    // Bytes, not `rsplit`: this runs on every request, and a char
    // searcher costs several times a plain backwards scan.
    let path = path.as_bytes();
    let file = &path[path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)..];
    let ext = &file[file.iter().rposition(|&b| b == b'.')? + 1..];
    let is = |name: &str| ext.eq_ignore_ascii_case(name.as_bytes());
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
    /// Request targets already parsed into a stream and an origin target.
    pub paths: ParsedPaths,
}

/// Most request targets [`ParsedPaths`] keeps before it starts over.
const PARSED_PATHS: usize = 1024;

/// The stream a request target names and the target its origin is asked
/// for ([`StreamKey::from_http`], [`origin_target`](super::forward::origin_target)),
/// kept for the next request with the same `Host` and target: the players
/// of a stream ask for the same playlist and segments over and over, and
/// parsing them again costs more than a lookup. Both are pure functions of
/// the target and `Host`, so a kept answer is the one parsing would give.
/// At most [`PARSED_PATHS`] targets are kept; the table starts over when
/// full (a client sending new paths only ever costs that clearing). Keyed
/// by what the client sent, so the map keeps the standard hasher.
#[derive(Default)]
pub struct ParsedPaths {
    by_target: Mutex<HashMap<Box<str>, Parsed>>,
}

struct Parsed {
    key: StreamKey,
    target: Arc<str>,
}

impl ParsedPaths {
    /// The stream `uri` (with `host`) names and its origin target. Only
    /// what players ask for again and again is kept: playlists and
    /// segments (a `.ts` named like one), not live streams, which a player
    /// asks for once and then holds (kept, their entries only held memory:
    /// at 1,000 FLV viewers of distinct streams, 6 KiB more resident per
    /// viewer in the allocator's pages they pinned). An error is not kept.
    pub fn parse(
        &self,
        kind: StreamKind,
        uri: &http::Uri,
        host: Option<&str>,
    ) -> Result<(StreamKey, Arc<str>), StreamKeyError> {
        let (path, query) = (uri.path(), uri.query());
        if !reloaded(kind, path) {
            return fresh(path, query, host).map(|(key, target)| (key, target.into()));
        }
        // The host and the target as sent (path and query), which decide
        // both answers. Neither a valid `Host` nor a target holds a line
        // break or a NUL, so the separators keep keys apart.
        let path_and_query = uri.path_and_query().map_or(path, |p| p.as_str());
        let host_part = host.unwrap_or("\0");
        // Joined on the stack when short (a player's always is): a lookup
        // that hits allocates nothing.
        let mut stack = [0u8; JOIN_ROOM];
        let joined;
        let lookup = match join_in(&mut stack, host_part, path_and_query) {
            Some(lookup) => lookup,
            None => {
                joined = format!("{host_part}\n{path_and_query}");
                joined.as_str()
            }
        };
        {
            let by_target = self.by_target.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = by_target.get(lookup) {
                return Ok((hit.key.clone(), hit.target.clone()));
            }
        }
        let (key, target) = fresh(path, query, host)?;
        let target: Arc<str> = target.into();
        let parsed = Parsed {
            key: key.clone(),
            target: target.clone(),
        };
        let mut by_target = self.by_target.lock().unwrap_or_else(|p| p.into_inner());
        if by_target.len() >= PARSED_PATHS {
            by_target.clear();
        }
        by_target.insert(lookup.into(), parsed);
        Ok((key, target))
    }
}

/// Room on the stack for a host and target joined for a lookup.
const JOIN_ROOM: usize = 256;

/// `host`, a line break and `target` in `stack`, if they fit.
fn join_in<'a>(stack: &'a mut [u8], host: &str, target: &str) -> Option<&'a str> {
    let len = host.len() + 1 + target.len();
    let joined = stack.get_mut(..len)?;
    joined[..host.len()].copy_from_slice(host.as_bytes());
    joined[host.len()] = b'\n';
    joined[host.len() + 1..].copy_from_slice(target.as_bytes());
    // Two texts and an ASCII byte: always text.
    std::str::from_utf8(joined).ok()
}

/// The stream a request names and what its origin is asked for, parsed.
fn fresh(path: &str, query: Option<&str>, host: Option<&str>) -> Result<(StreamKey, String), StreamKeyError> {
    let (key, ext) = StreamKey::from_http(path, query, host)?;
    let target = super::forward::origin_target(&key, &ext, query);
    Ok((key, target))
}

/// Whether players ask for `path` again and again: a playlist, a segment,
/// or a `.ts` named like a segment (`stream-12.ts`), not a live stream.
fn reloaded(kind: StreamKind, path: &str) -> bool {
    match kind {
        StreamKind::Playlist | StreamKind::Segment => true,
        StreamKind::Flv => false,
        StreamKind::Ts => {
            let file = path.rsplit('/').next().unwrap_or("");
            let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
            crate::stream_key::segment_base(stem).is_some()
        }
    }
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
    /// origin and no dot segment reaches an origin. Shared with the table
    /// of [`ParsedPaths`]: a reload copies nothing.
    pub target: Arc<str>,
    /// The client, for `X-Forwarded-For`.
    pub peer: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed once or taken from the table, a target gives what parsing it
    /// gives: the same stream and origin target, another `Host` its own
    /// vhost, an error each time; a full table starts over.
    #[test]
    fn kept_targets_give_what_parsing_gives() {
        // Host and target too long to be joined on the stack.
        let (long_host, long_target) = (
            "h".repeat(100),
            format!("/live/{}.m3u8?q={}", "s".repeat(100), "x".repeat(100)),
        );
        assert!(long_host.len() + long_target.len() > JOIN_ROOM);
        let paths = ParsedPaths::default();
        let cases = [
            ("/live/cam.m3u8", None),
            ("/live/cam.m3u8", Some("v.example.com")),
            ("/live/cam.m3u8", Some("other.example.com:8080")),
            ("/live/cam-12.ts?spbhid=abc&x=1", Some("v.example.com")),
            ("/a/b/c%20d.flv?vhost=w.example.com", None),
            ("/live/x.flv?app=other&stream=y.flv", Some("10.0.0.1")),
            ("/live/..%2Fescape.flv", None),
            ("/nostream.flv", None),
            (long_target.as_str(), Some(long_host.as_str())),
        ];
        for _ in 0..3 {
            for (target, host) in cases {
                let uri: http::Uri = target.parse().unwrap();
                let kind = classify(uri.path()).unwrap_or(StreamKind::Playlist);
                let direct = StreamKey::from_http(uri.path(), uri.query(), host).map(|(key, ext)| {
                    let origin = super::super::forward::origin_target(&key, &ext, uri.query());
                    (key, Arc::from(origin))
                });
                assert_eq!(paths.parse(kind, &uri, host), direct, "{target} {host:?}");
            }
        }
        let kept = paths.by_target.lock().unwrap().len();
        assert_eq!(
            kept, 5,
            "errors and live streams are not kept; one entry per target and host"
        );
        for i in 0..PARSED_PATHS {
            let uri: http::Uri = format!("/live/s-{i}.ts").parse().unwrap();
            paths.parse(StreamKind::Ts, &uri, None).unwrap();
        }
        assert!(paths.by_target.lock().unwrap().len() <= PARSED_PATHS);
        let uri: http::Uri = "/live/cam.m3u8".parse().unwrap();
        let (key, target) = paths.parse(StreamKind::Playlist, &uri, Some("v.example.com")).unwrap();
        assert_eq!((&*key.vhost, &*target), ("v.example.com", "/live/cam.m3u8"));
    }

    #[test]
    fn only_what_players_ask_for_again_is_kept() {
        assert!(reloaded(StreamKind::Playlist, "/live/a.m3u8"));
        assert!(reloaded(StreamKind::Segment, "/live/a-3.m4s"));
        assert!(reloaded(StreamKind::Ts, "/live/a-12.ts"));
        assert!(!reloaded(StreamKind::Ts, "/live/a.ts"), "a live TS stream");
        assert!(!reloaded(StreamKind::Ts, "/live/a-b.ts"));
        assert!(!reloaded(StreamKind::Ts, "/live/a-.ts"));
        assert!(!reloaded(StreamKind::Flv, "/live/a-1.flv"));
        let paths = ParsedPaths::default();
        for target in ["/live/a.flv", "/live/a.ts", "/live/a-1.flv"] {
            let uri: http::Uri = target.parse().unwrap();
            paths.parse(classify(target).unwrap(), &uri, None).unwrap();
        }
        assert_eq!(
            paths.by_target.lock().unwrap().len(),
            0,
            "live streams are parsed, not kept"
        );
    }

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

    proptest::proptest! {
        /// The byte scan finds the extension `rsplit` finds, in any path
        /// (non-ASCII, dots in directories, no slash, trailing dot).
        #[test]
        fn the_extension_is_what_rsplit_finds(path in "(/|[.]|[a-zA-Z0-9]|é|flv|ts|m3u8|m4s|WebVTT){0,12}") {
            let file = path.rsplit('/').next().unwrap_or("");
            let by_str = file.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase());
            let expected = by_str.and_then(|ext| match ext.as_str() {
                "flv" => Some(StreamKind::Flv),
                "ts" => Some(StreamKind::Ts),
                "m3u8" => Some(StreamKind::Playlist),
                "m4s" | "mp4" | "m4a" | "m4v" | "aac" | "mp3" | "ac3" | "ec3" | "vtt" | "webvtt" | "key" | "cmfv"
                | "cmfa" => Some(StreamKind::Segment),
                _ => None,
            });
            proptest::prop_assert_eq!(classify(&path), expected, "{}", path);
        }
    }
}
