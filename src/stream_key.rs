//! The one identity of a stream, `vhost/app/stream`, whatever protocol it
//! arrives on.
//!
//! Each protocol has its own parser (HTTP here; RTMP in `rtmp`), and they all
//! end in [`StreamKey::new`], which is where hostile names are rejected, so a
//! key that exists is safe to log, to use in a store key and to put in an
//! upstream request line.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// SRS's name for the vhost of requests that name none.
pub const DEFAULT_VHOST: &str = "__defaultVhost__";

/// Longest accepted vhost, app or stream name (bytes).
const MAX_PART: usize = 256;

/// Identity of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    // Shared, not owned: a key is cloned into maps, sessions and leases on
    // every request, and a clone then copies nothing.
    pub vhost: Arc<str>,
    /// May contain `/` for nested apps (`/a/b/stream.flv` → `a/b`).
    pub app: Arc<str>,
    pub stream: Arc<str>,
}

/// Why a stream identity was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamKeyError {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("{0} is longer than 256 bytes")]
    TooLong(&'static str),
    #[error("{0} contains '..'")]
    DotDot(&'static str),
    #[error("{0} contains a control character")]
    Control(&'static str),
    #[error("{0} contains a character not allowed there")]
    BadChar(&'static str),
    #[error("path names no app: expected /app/stream.ext")]
    NoApp,
    #[error("{0} is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    #[error("stream URL does not start with webrtc://")]
    Scheme,
}

fn check(part: &'static str, value: &str, slash_ok: bool) -> Result<(), StreamKeyError> {
    if value.is_empty() {
        return Err(StreamKeyError::Empty(part));
    }
    if value.len() > MAX_PART {
        return Err(StreamKeyError::TooLong(part));
    }
    // One pass over the characters (this runs on every request); the
    // errors keep their order of precedence. `seg_start` is where the
    // current `/`-separated segment began, for empty and `.` segments.
    let (mut control, mut dot_dot, mut bad) = (false, false, false);
    let mut prev = '\0';
    let mut seg_start = 0;
    for (i, c) in value.char_indices() {
        control |= c.is_control();
        dot_dot |= c == '.' && prev == '.';
        bad |= matches!(c, '\\' | '?' | '#' | ' ' | '"' | '<' | '>');
        if c == '/' {
            bad |= !slash_ok || bad_segment(&value[seg_start..i]);
            seg_start = i + 1;
        }
        prev = c;
    }
    if control {
        return Err(StreamKeyError::Control(part));
    }
    if dot_dot || value == "." {
        return Err(StreamKeyError::DotDot(part));
    }
    if bad || (slash_ok && bad_segment(&value[seg_start..])) {
        return Err(StreamKeyError::BadChar(part));
    }
    Ok(())
}

/// An app's path segment that may not stand: empty (`a//b`, a leading or
/// trailing `/`) or `.`.
fn bad_segment(segment: &str) -> bool {
    segment.is_empty() || segment == "."
}

impl StreamKey {
    /// Validates and builds a key. `vhost` is normalised with
    /// [`vhost_from_host`] rules (lower case, IP/dotless → default).
    pub fn new(vhost: &str, app: &str, stream: &str) -> Result<Self, StreamKeyError> {
        let vhost = vhost_from_host(vhost);
        check("vhost", &vhost, false)?;
        check("app", app, true)?;
        check("stream", stream, false)?;
        Ok(Self {
            vhost: vhost.into(),
            app: app.into(),
            stream: stream.into(),
        })
    }

    /// Parses an HTTP request for a stream resource. Returns the key and the
    /// extension of the last path segment (`flv`, `ts`, `m3u8`, `m4s`, …).
    ///
    /// The app and stream come from the path (`/app/stream.ext`, nested
    /// apps allowed) or from `?app=&stream=`; the vhost from `?vhost=` (or
    /// SRS's `?domain=`) or the `Host` header.
    pub fn from_http(path: &str, query: Option<&str>, host: Option<&str>) -> Result<(Self, String), StreamKeyError> {
        let params = query_pairs(query.unwrap_or(""));
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());

        let decoded = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| StreamKeyError::Encoding("path"))?;
        let trimmed = decoded.trim_start_matches('/');
        let (dir, file) = match trimmed.rsplit_once('/') {
            Some((dir, file)) => (dir, file),
            None => ("", trimmed),
        };
        let (stem, ext) = match file.rsplit_once('.') {
            Some((stem, ext)) => (stem, ext.to_ascii_lowercase()),
            None => (file, String::new()),
        };
        let app = param("app").filter(|a| !a.is_empty()).unwrap_or(dir);
        let (stream, ext) = match param("stream").filter(|s| !s.is_empty()) {
            // `stream=livestream.flv` in the query names the same stream.
            Some(s) => match s.rsplit_once('.') {
                Some((stem, e)) if matches!(e.to_ascii_lowercase().as_str(), "flv" | "ts" | "m3u8") => {
                    (stem, if ext.is_empty() { e.to_ascii_lowercase() } else { ext })
                }
                _ => (s, ext),
            },
            None => (stem, ext),
        };
        if app.is_empty() {
            return Err(StreamKeyError::NoApp);
        }
        Ok((Self::new(vhost_of(&params, host), app, stream)?, ext))
    }

    /// Parses a WHIP/WHEP request (`/rtc/v1/whip/?app=live&stream=cam`):
    /// app and stream from the query, the vhost as for HTTP streams
    /// (`?vhost=`, `?domain=`, then `Host`), so the same stream has the same
    /// key on every protocol.
    pub fn from_rtc_query(query: Option<&str>, host: Option<&str>) -> Result<Self, StreamKeyError> {
        let params = query_pairs(query.unwrap_or(""));
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let app = param("app").filter(|a| !a.is_empty()).ok_or(StreamKeyError::NoApp)?;
        let stream = param("stream").ok_or(StreamKeyError::Empty("stream"))?;
        Self::new(vhost_of(&params, host), app, stream)
    }

    /// Parses the `streamurl` of SRS's JSON WebRTC API,
    /// `webrtc://host[:port]/app/stream[?vhost=…&token=…]`: the vhost from
    /// `?vhost=`/`?domain=`, else the URL's host (which is what the player
    /// put in `Host` for HTTP streams).
    pub fn from_webrtc_url(url: &str) -> Result<Self, StreamKeyError> {
        let rest = url.strip_prefix("webrtc://").ok_or(StreamKeyError::Scheme)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (host, path) = rest.split_once('/').ok_or(StreamKeyError::NoApp)?;
        let path = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| StreamKeyError::Encoding("path"))?;
        let (app, stream) = path.rsplit_once('/').ok_or(StreamKeyError::NoApp)?;
        let params = query_pairs(query);
        Self::new(vhost_of(&params, Some(host)), app, stream)
    }

    /// The key of the stream an HLS segment belongs to, by SRS's default
    /// naming `[stream]-[seq].ext`: `livestream-12` → `livestream`.
    pub fn without_segment_number(&self) -> Option<Self> {
        let base = segment_base(&self.stream)?;
        Some(Self {
            vhost: self.vhost.clone(),
            app: self.app.clone(),
            stream: base.into(),
        })
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.vhost, self.app, self.stream)
    }
}

/// The vhost for a `Host` header or tcUrl host: port stripped, lower case;
/// IP addresses and names without a dot are [`DEFAULT_VHOST`], as in SRS.
/// A host in brackets is an IP literal (`[::1]:8080`), whatever the
/// brackets hold: a name taken from inside them could hold a `:` and read
/// as another vhost when built again.
pub fn vhost_from_host(host: &str) -> String {
    let host = host.trim();
    if host == DEFAULT_VHOST || host.starts_with('[') {
        return DEFAULT_VHOST.to_string();
    }
    let name = if host.matches(':').count() > 1 {
        host // bare IPv6
    } else {
        host.split(':').next().unwrap_or("")
    };
    // The root's dot goes first: `d.` is a name without a dot and
    // `10.0.0.1.` an address, as they are once written without it.
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.parse::<IpAddr>().is_ok() || !name.contains('.') {
        return DEFAULT_VHOST.to_string();
    }
    name.to_ascii_lowercase()
}

/// The stream a segment's name (`base-N`, N decimal digits) belongs to;
/// `None` when `name` is not named like a segment.
pub fn segment_base(name: &str) -> Option<&str> {
    let (base, seq) = name.rsplit_once('-')?;
    (!base.is_empty() && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// The vhost a request names: `?vhost=` (or SRS's `?domain=`) when set,
/// else the host it was sent to, else the default vhost.
fn vhost_of<'a>(params: &'a [(String, String)], host: Option<&'a str>) -> &'a str {
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    param("vhost")
        .or_else(|| param("domain"))
        .filter(|v| !v.is_empty())
        .or(host)
        .unwrap_or(DEFAULT_VHOST)
}

/// Splits a query string into decoded pairs (`+` is a space, as forms send;
/// invalid UTF-8 is replaced, never an error).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` as first written, several passes: the reference the one-pass
    /// version must agree with.
    fn check_by_definition(part: &'static str, value: &str, slash_ok: bool) -> Result<(), StreamKeyError> {
        if value.is_empty() {
            return Err(StreamKeyError::Empty(part));
        }
        if value.len() > MAX_PART {
            return Err(StreamKeyError::TooLong(part));
        }
        if value.chars().any(char::is_control) {
            return Err(StreamKeyError::Control(part));
        }
        if value.contains("..") || value == "." {
            return Err(StreamKeyError::DotDot(part));
        }
        let bad = value
            .chars()
            .any(|c| matches!(c, '\\' | '?' | '#' | ' ' | '"' | '<' | '>'))
            || (!slash_ok && value.contains('/'));
        if bad || (slash_ok && value.split('/').any(|seg| seg.is_empty() || seg == ".")) {
            return Err(StreamKeyError::BadChar(part));
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn one_pass_check_agrees_with_its_definition(
            value in "[a./\\\\?# \"<>\u{0}\u{85}é]{0,12}",
            slash_ok: bool,
        ) {
            proptest::prop_assert_eq!(check("app", &value, slash_ok), check_by_definition("app", &value, slash_ok));
        }
    }

    fn http(path: &str, query: Option<&str>, host: Option<&str>) -> Result<(StreamKey, String), StreamKeyError> {
        StreamKey::from_http(path, query, host)
    }

    #[test]
    fn plain_paths() {
        let (k, ext) = http("/live/livestream.flv", None, Some("127.0.0.1:18080")).unwrap();
        assert_eq!(k.to_string(), "__defaultVhost__/live/livestream");
        assert_eq!(ext, "flv");
        let (k, ext) = http("/live/livestream.m3u8", None, Some("Example.COM:8080")).unwrap();
        assert_eq!(&*k.vhost, "example.com");
        assert_eq!(ext, "m3u8");
        let (k, _) = http("/a/b/stream.ts", None, None).unwrap();
        assert_eq!((&*k.app, &*k.stream), ("a/b", "stream"));
    }

    #[test]
    fn query_overrides() {
        let (k, _) = http(
            "/x.flv",
            Some("app=live&stream=cam1&vhost=video.example.com"),
            Some("1.2.3.4"),
        )
        .unwrap();
        assert_eq!(k.to_string(), "video.example.com/live/cam1");
        let (k, _) = http("/live/s.flv", Some("domain=a.b.c"), None).unwrap();
        assert_eq!(&*k.vhost, "a.b.c");
        let (k, _) = http("/live/s.flv", Some("vhost="), Some("x.y")).unwrap();
        assert_eq!(&*k.vhost, "x.y", "empty ?vhost= falls back to Host");
        let (k, _) = http("/api/flv", Some("app=live&stream=s.flv"), None).unwrap();
        assert_eq!(&*k.stream, "s");
    }

    #[test]
    fn vhosts() {
        for (host, vhost) in [
            ("localhost", DEFAULT_VHOST),
            ("localhost:8080", DEFAULT_VHOST),
            ("10.0.0.1", DEFAULT_VHOST),
            ("[::1]:8080", DEFAULT_VHOST),
            ("::1", DEFAULT_VHOST),
            ("", DEFAULT_VHOST),
            ("srs.example.com.", "srs.example.com"),
            ("SRS.Example.com:1935", "srs.example.com"),
            ("__defaultVhost__", DEFAULT_VHOST),
            // With the root's dot, as without it.
            ("d.", DEFAULT_VHOST),
            ("d.:8080", DEFAULT_VHOST),
            ("10.0.0.1.", DEFAULT_VHOST),
            ("...", DEFAULT_VHOST),
            // Brackets hold an address, not a name (found by fuzzing:
            // `[.:t8]` gave the vhost `.:t8`, which built again is the
            // default vhost).
            ("[.:t8'%'']/-(", DEFAULT_VHOST),
            ("[a.b:c]:80", DEFAULT_VHOST),
            ("[srs.example.com]", DEFAULT_VHOST),
        ] {
            assert_eq!(vhost_from_host(host), vhost, "{host}");
            // A vhost is its own vhost: keys survive being built again.
            assert_eq!(vhost_from_host(vhost), vhost, "{vhost}");
        }
    }

    #[test]
    fn hostile_names() {
        for (path, query) in [
            ("/livestream.flv", None),
            ("/../etc/passwd.flv", None),
            ("/live/..flv", None),
            ("/live/%2e%2e/x.flv", None),
            ("/live/%2e%2e.flv", None),
            ("/live/a%00b.flv", None),
            ("/live/a%0d%0aHost:x.flv", None),
            ("/live//s.flv", None),
            ("/live/.flv", None),
            ("/live/%ff.flv", None),
            ("/live/s.flv", Some("stream=a/b")),
            ("/live/s.flv", Some("app=../x")),
            ("/live/s.flv", Some("vhost=a%0a.b")),
        ] {
            assert!(http(path, query, None).is_err(), "{path} {query:?} should be rejected");
        }
        let long = format!("/live/{}.flv", "a".repeat(300));
        assert_eq!(http(&long, None, None).unwrap_err(), StreamKeyError::TooLong("stream"));
    }

    #[test]
    fn segment_numbers() {
        let (k, _) = http("/live/livestream-12.ts", None, None).unwrap();
        assert_eq!(&*k.without_segment_number().unwrap().stream, "livestream");
        let (k, _) = http("/live/live-stream-3.m4s", None, None).unwrap();
        assert_eq!(&*k.without_segment_number().unwrap().stream, "live-stream");
        for s in ["/live/livestream.ts", "/live/a-b.ts", "/live/-1.ts"] {
            let (k, _) = http(s, None, None).unwrap();
            assert!(k.without_segment_number().is_none(), "{s}");
        }
    }

    #[test]
    fn webrtc_signalling_names_the_same_stream_as_http() {
        let (flv, _) = http("/live/livestream.flv", None, Some("Media.Example.com:8080")).unwrap();
        let whip =
            StreamKey::from_rtc_query(Some("app=live&stream=livestream"), Some("media.example.com:1985")).unwrap();
        assert_eq!(whip, flv);
        let json = StreamKey::from_webrtc_url("webrtc://media.example.com/live/livestream").unwrap();
        assert_eq!(json, flv);
        let json = StreamKey::from_webrtc_url("webrtc://media.example.com:1985/live/livestream?token=x").unwrap();
        assert_eq!(json, flv);
        // SRS's vhost/domain parameters win over the host.
        let k =
            StreamKey::from_rtc_query(Some("app=live&stream=s&vhost=v.example.com&token=t"), Some("1.2.3.4")).unwrap();
        assert_eq!(k.to_string(), "v.example.com/live/s");
        let k = StreamKey::from_rtc_query(Some("app=live&stream=s&domain=d.example.com"), None).unwrap();
        assert_eq!(&*k.vhost, "d.example.com");
        let k = StreamKey::from_webrtc_url("webrtc://10.0.0.1/live/s?vhost=v.example.com").unwrap();
        assert_eq!(k.to_string(), "v.example.com/live/s");
        // IP hosts are the default vhost, nested apps are kept.
        let k = StreamKey::from_webrtc_url("webrtc://10.0.0.1:1985/a/b/s").unwrap();
        assert_eq!(k.to_string(), "__defaultVhost__/a/b/s");
        let k = StreamKey::from_rtc_query(Some("app=live&stream=s"), None).unwrap();
        assert_eq!(&*k.vhost, DEFAULT_VHOST);
    }

    #[test]
    fn hostile_webrtc_names() {
        for query in [
            "",
            "stream=s",
            "app=live",
            "app=&stream=s",
            "app=live&stream=",
            "app=..&stream=s",
            "app=live&stream=a/b",
            "app=live&stream=%0d%0a",
            "app=live&stream=s&vhost=a%0a.b",
        ] {
            assert!(StreamKey::from_rtc_query(Some(query), None).is_err(), "{query:?}");
        }
        for url in [
            "",
            "rtmp://h/live/s",
            "webrtc://h",
            "webrtc://h/",
            "webrtc://h/s",
            "webrtc://h/live/",
            "webrtc://h/live/..",
            "webrtc://h/live/%ff",
            "webrtc://h//s",
            "webrtc://h/live/s%3fx",
        ] {
            assert!(StreamKey::from_webrtc_url(url).is_err(), "{url:?}");
        }
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_pairs("a=1&b=x%20y&c&d=e+f"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into()),
                ("d".into(), "e f".into())
            ]
        );
    }
}
