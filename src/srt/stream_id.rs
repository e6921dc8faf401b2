//! SRT stream id → [`StreamKey`] and role, as SRS reads it.
//!
//! SRS accepts two forms (see its `srs_srt_streamid_info`):
//!
//! * `#!::r=app/stream,m=publish,h=vhost,…` — the access-control syntax of
//!   libsrt: comma-separated `key=value` in any order. `r` names the
//!   resource, `m` is `publish` or `request` (a player; the default), `h`
//!   the vhost. SRS's older `h=app/stream` and `h=vhost/app/stream` are
//!   read too, and a `?` is a separator like `,` (`r=live/s?secret=x`).
//!   Every other key (`u=`, `s=`, tokens) is kept for the log; the origin
//!   gets the stream id byte for byte, so it sees them unchanged.
//! * `app/stream?vhost=…` — anything else: a path with an optional query;
//!   a bare name goes to app `live`. SRS treats it as a player.
//!
//! App and stream split at the last `/`, so `r=a/b/stream` is app `a/b`,
//! the key an RTMP `tcUrl` of `rtmp://host/a/b` or the HTTP path
//! `/a/b/stream.flv` gives. The proxy is stricter than SRS where a lax
//! reading could route one stream to two origins: `r`, `m` and `h` may
//! appear once, and an unknown `m` is refused.

pub use crate::claim::Role;
use crate::stream_key::{query_pairs, StreamKey, StreamKeyError, DEFAULT_VHOST};

/// The app SRS puts a stream id without `/` in (`default_app_name`).
pub const DEFAULT_APP: &str = "live";

const STANDARD_PREFIX: &str = "#!::";

/// A parsed stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub key: StreamKey,
    /// `m=publish` is a publisher; `m=request` or no mode a player.
    pub role: Role,
    /// Keys other than `r`, `m` and `h` (or the short form's query), in
    /// the order they came.
    pub params: Vec<(String, String)>,
}

/// Why a stream id names no stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("stream id names no resource (r=app/stream)")]
    NoResource,
    #[error("stream id mode m={0} is neither publish nor request")]
    BadMode(String),
    #[error("stream id repeats the key {0}=")]
    Duplicate(&'static str),
    #[error("stream id: {0}")]
    Key(#[from] StreamKeyError),
}

/// Parses a stream id (already decoded from the handshake).
pub fn parse(sid: &str) -> Result<StreamRequest, StreamIdError> {
    match sid.strip_prefix(STANDARD_PREFIX) {
        Some(rest) => standard(rest),
        None => short(sid),
    }
}

fn standard(rest: &str) -> Result<StreamRequest, StreamIdError> {
    let mut resource: Option<&str> = None;
    let mut host: Option<&str> = None;
    let mut mode: Option<&str> = None;
    let mut params = Vec::new();
    for item in rest.split([',', '?']).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        let slot = match k {
            "r" => &mut resource,
            "h" => &mut host,
            "m" => &mut mode,
            _ => {
                params.push((k.to_string(), v.to_string()));
                continue;
            }
        };
        if slot.replace(v).is_some() {
            return Err(StreamIdError::Duplicate(match k {
                "r" => "r",
                "h" => "h",
                _ => "m",
            }));
        }
    }
    let role = match mode.map(str::to_ascii_lowercase).as_deref() {
        None | Some("request") => Role::Player,
        Some("publish") => Role::Publisher,
        Some(_) => return Err(StreamIdError::BadMode(mode.unwrap_or_default().to_string())),
    };
    // SRS's compatible forms put the path in `h`: `h=app/stream` (no
    // vhost) or `h=vhost/app/stream`; `r` wins when both name one.
    let (vhost, host_path) = match host {
        Some(h) if h.matches('/').count() >= 2 => {
            let (vhost, path) = h.split_once('/').unwrap_or((h, ""));
            (Some(vhost), Some(path))
        }
        Some(h) if h.contains('/') => (None, Some(h)),
        Some(h) => (Some(h), None),
        None => (None, None),
    };
    let path = resource
        .or(host_path)
        .filter(|p| !p.is_empty())
        .ok_or(StreamIdError::NoResource)?;
    let vhost = vhost
        .filter(|v| !v.is_empty())
        .or_else(|| param(&params, "vhost"))
        .unwrap_or(DEFAULT_VHOST);
    Ok(StreamRequest {
        key: key(vhost, path)?,
        role,
        params,
    })
}

fn short(sid: &str) -> Result<StreamRequest, StreamIdError> {
    let (path, query) = sid.split_once('?').unwrap_or((sid, ""));
    if path.is_empty() {
        return Err(StreamIdError::NoResource);
    }
    let params = query_pairs(query);
    let vhost = param(&params, "vhost")
        .or_else(|| param(&params, "domain"))
        .unwrap_or(DEFAULT_VHOST);
    Ok(StreamRequest {
        key: key(vhost, path)?,
        role: Role::Player,
        params,
    })
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn key(vhost: &str, path: &str) -> Result<StreamKey, StreamIdError> {
    let (app, stream) = path.rsplit_once('/').unwrap_or((DEFAULT_APP, path));
    Ok(StreamKey::new(vhost, app, stream)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(sid: &str) -> (String, Role, Vec<(String, String)>) {
        let r = parse(sid).unwrap_or_else(|e| panic!("{sid}: {e}"));
        (r.key.to_string(), r.role, r.params)
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_standard_form_in_any_order() {
        let want = ("__defaultVhost__/live/livestream".to_string(), Role::Publisher, vec![]);
        assert_eq!(ok("#!::r=live/livestream,m=publish"), want);
        assert_eq!(ok("#!::m=publish,r=live/livestream"), want);
        assert_eq!(ok("#!::m=PUBLISH,r=live/livestream"), want);
        let want = ("srs.example.com/live/livestream".to_string(), Role::Publisher, vec![]);
        assert_eq!(ok("#!::r=live/livestream,m=publish,h=srs.example.com"), want);
        assert_eq!(ok("#!::h=srs.example.com,m=publish,r=live/livestream"), want);
        assert_eq!(ok("#!::m=publish,h=SRS.example.com,r=live/livestream"), want);
    }

    #[test]
    fn request_or_no_mode_is_a_player() {
        assert_eq!(ok("#!::r=live/livestream,m=request").1, Role::Player);
        assert_eq!(ok("#!::r=live/livestream").1, Role::Player);
    }

    #[test]
    fn extra_keys_are_kept_in_order() {
        let (key, role, params) = ok("#!::u=alice,r=live/cam,token=a=b,m=publish,s=42");
        assert_eq!((key.as_str(), role), ("__defaultVhost__/live/cam", Role::Publisher));
        assert_eq!(params, p(&[("u", "alice"), ("token", "a=b"), ("s", "42")]));
        // SRS's auth query after the resource.
        let (key, _, params) = ok("#!::r=live/cam?secret=xyz,m=publish");
        assert_eq!(key, "__defaultVhost__/live/cam");
        assert_eq!(params, p(&[("secret", "xyz")]));
    }

    #[test]
    fn ip_and_dotless_hosts_are_the_default_vhost() {
        assert_eq!(ok("#!::r=live/s,h=10.0.0.1").0, "__defaultVhost__/live/s");
        assert_eq!(ok("#!::r=live/s,h=localhost").0, "__defaultVhost__/live/s");
    }

    #[test]
    fn srs_compatible_paths_in_h() {
        assert_eq!(
            ok("#!::h=live/livestream,m=publish").0,
            "__defaultVhost__/live/livestream"
        );
        assert_eq!(
            ok("#!::h=srs.srt.com.cn/live/livestream,m=request").0,
            "srs.srt.com.cn/live/livestream"
        );
        assert_eq!(ok("#!::h=a.b.c/live/x,r=other/y").0, "a.b.c/other/y");
    }

    #[test]
    fn the_short_form() {
        assert_eq!(
            ok("live/livestream"),
            ("__defaultVhost__/live/livestream".into(), Role::Player, vec![])
        );
        let (key, _, params) = ok("live/livestream?vhost=srs.example.com&token=t");
        assert_eq!(key, "srs.example.com/live/livestream");
        assert_eq!(params, p(&[("vhost", "srs.example.com"), ("token", "t")]));
        assert_eq!(ok("livestream").0, "__defaultVhost__/live/livestream");
        assert_eq!(ok("live/s?domain=d.example.com").0, "d.example.com/live/s");
    }

    #[test]
    fn nested_apps_split_at_the_last_slash() {
        let r = parse("#!::r=a/b/stream,m=publish").unwrap();
        assert_eq!((&*r.key.app, &*r.key.stream), ("a/b", "stream"));
        let r = parse("a/b/c/stream").unwrap();
        assert_eq!((&*r.key.app, &*r.key.stream), ("a/b/c", "stream"));
        // The same key as the HTTP path of the same stream.
        let (http, _) = StreamKey::from_http("/a/b/stream.flv", None, None).unwrap();
        assert_eq!(parse("#!::r=a/b/stream").unwrap().key, http);
    }

    #[test]
    fn a_vhost_param_stands_in_for_h() {
        assert_eq!(ok("#!::r=live/s,vhost=v.example.com").0, "v.example.com/live/s");
        assert_eq!(
            ok("#!::r=live/s,vhost=v.example.com,h=h.example.com").0,
            "h.example.com/live/s"
        );
    }

    #[test]
    fn bad_inputs() {
        use StreamIdError::*;
        for (sid, want) in [
            ("#!::", NoResource),
            ("#!::m=publish", NoResource),
            ("#!::r=,m=publish", NoResource),
            ("#!::r=live/s,m=play", BadMode("play".into())),
            ("#!::r=live/a,r=live/b", Duplicate("r")),
            ("#!::r=live/a,m=publish,m=request", Duplicate("m")),
            ("#!::r=live/a,h=a.com,h=b.com", Duplicate("h")),
            ("?vhost=x.com", NoResource),
            ("", NoResource),
        ] {
            assert_eq!(parse(sid).unwrap_err(), want, "{sid}");
        }
        for sid in [
            "#!::r=../etc/passwd",
            "#!::r=live/..",
            "#!::r=live/a..b",
            "#!::r=live/a\u{1}b",
            "#!::r=live/a\nb,m=publish",
            "#!::r=live//s",
            "#!::r=/s",
            "#!::r=live/",
            "#!::r=live/s,h=a\tb.com",
            "live/../s",
            "live/s\r\n",
            "live/a b",
        ] {
            assert!(matches!(parse(sid), Err(Key(_))), "{sid:?} should be refused");
        }
        let long = format!("#!::r=live/{}", "a".repeat(300));
        assert_eq!(parse(&long).unwrap_err(), Key(StreamKeyError::TooLong("stream")));
    }

    proptest! {
        #[test]
        fn hostile_stream_ids_never_panic(sid in "\\PC{0,600}") {
            if let Ok(r) = parse(&sid) {
                // Whatever is accepted is a key every other protocol accepts.
                prop_assert!(StreamKey::new(&r.key.vhost, &r.key.app, &r.key.stream).is_ok());
            }
        }

        #[test]
        fn standard_ids_in_any_order(app in "[a-z]{1,8}(/[a-z]{1,8}){0,2}", stream in "[a-z0-9_-]{1,16}",
                                     publish in any::<bool>(), rotate in 0usize..4) {
            let mut items = [
                format!("r={app}/{stream}"),
                format!("m={}", if publish { "publish" } else { "request" }),
                "h=v.example.com".to_string(),
                "u=someone".to_string(),
            ];
            items.rotate_left(rotate);
            let r = parse(&format!("#!::{}", items.join(","))).unwrap();
            prop_assert_eq!(r.key, StreamKey::new("v.example.com", &app, &stream).unwrap());
            prop_assert_eq!(r.role, if publish { Role::Publisher } else { Role::Player });
            prop_assert_eq!(r.params, vec![("u".to_string(), "someone".to_string())]);
        }
    }
}
