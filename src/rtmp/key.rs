//! The stream identity of an RTMP publish or play: tcUrl (or the connect
//! `app`) plus the stream name.
//!
//! This module only reads names; the rules for what a valid key is live in
//! [`crate::stream_key`], so `rtmp://host/live` + `livestream` and
//! `http://host/live/livestream.flv` end in the same [`StreamKey`]. The
//! stream name sent to the origin is never rebuilt from the key: the
//! client's own publish/play message is replayed, query and all, because
//! SRS's auth hooks read parameters such as `?token=` from it.

use crate::stream_key::{query_pairs, StreamKey, StreamKeyError, DEFAULT_VHOST};

/// SRS's legacy way of naming a vhost inside the app: `live...vhost...a.com`.
const VHOST_IN_APP: &str = "...vhost...";

/// Builds the key for a stream named `stream_name` on a connection whose
/// connect command carried `tc_url` and `app`.
///
/// The vhost is the tcUrl host unless a `vhost=` (or SRS's `domain=`)
/// parameter names another, looked up in the tcUrl/app query first and in
/// the stream name's query last, so the stream name wins as it does in SRS.
pub fn stream_key(tc_url: Option<&str>, app: Option<&str>, stream_name: &str) -> Result<StreamKey, StreamKeyError> {
    let (host, tc_path) = match tc_url {
        Some(url) => split_tc_url(url),
        None => (None, None),
    };
    // The tcUrl path is what SRS reads; the `app` field is the fallback for
    // clients that send a bare tcUrl.
    let app_with_query = tc_path.filter(|p| !p.is_empty()).or(app).unwrap_or("");
    let (app, app_query) = split_query(app_with_query);
    let (stream, stream_query) = split_query(stream_name);

    let mut vhost = host.unwrap_or(DEFAULT_VHOST).to_string();
    let mut app = app.trim_matches('/').to_string();
    if let Some((name, legacy_vhost)) = app.split_once(VHOST_IN_APP) {
        vhost = legacy_vhost.to_string();
        app = name.to_string();
    }
    for query in [app_query, stream_query].into_iter().flatten() {
        if let Some(v) = vhost_param(query) {
            vhost = v;
        }
    }
    StreamKey::new(&vhost, &app, stream)
}

/// `rtmp://host:port/app/inst?x=y` → (`host:port`, `app/inst?x=y`).
fn split_tc_url(url: &str) -> (Option<&str>, Option<&str>) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.split_once('/') {
        Some((host, path)) => (Some(host).filter(|h| !h.is_empty()), Some(path)),
        None => (Some(rest).filter(|h| !h.is_empty()), None),
    }
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((name, query)) => (name, Some(query)),
        None => (s, None),
    }
}

fn vhost_param(query: &str) -> Option<String> {
    let pairs = query_pairs(query);
    ["vhost", "domain"].into_iter().find_map(|name| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tc_url: Option<&str>, app: Option<&str>, stream: &str) -> Result<String, StreamKeyError> {
        stream_key(tc_url, app, stream).map(|k| k.to_string())
    }

    #[test]
    fn the_usual_publish_urls() {
        assert_eq!(
            key(Some("rtmp://127.0.0.1:1935/live"), Some("live"), "livestream").unwrap(),
            "__defaultVhost__/live/livestream"
        );
        assert_eq!(
            key(Some("rtmp://Media.Example.com/live"), Some("live"), "cam1").unwrap(),
            "media.example.com/live/cam1"
        );
        assert_eq!(
            key(Some("rtmp://localhost/live/"), None, "s").unwrap(),
            "__defaultVhost__/live/s"
        );
    }

    #[test]
    fn matches_the_key_http_derives_for_the_same_stream() {
        let (http, _) = StreamKey::from_http("/live/livestream.flv", None, Some("media.example.com:8080")).unwrap();
        let rtmp = stream_key(Some("rtmp://media.example.com:1935/live"), Some("live"), "livestream").unwrap();
        assert_eq!(http, rtmp);
        let (http, _) = StreamKey::from_http("/live/livestream.flv", None, Some("127.0.0.1:8080")).unwrap();
        let rtmp = stream_key(Some("rtmp://10.0.0.5/live"), Some("live"), "livestream?token=x").unwrap();
        assert_eq!(http, rtmp);
    }

    #[test]
    fn vhost_parameters_override_the_host_and_the_stream_name_wins() {
        assert_eq!(
            key(Some("rtmp://1.2.3.4/live?vhost=v.example.com"), None, "s").unwrap(),
            "v.example.com/live/s"
        );
        assert_eq!(
            key(Some("rtmp://1.2.3.4/live"), None, "s?vhost=w.example.com&token=abc").unwrap(),
            "w.example.com/live/s"
        );
        assert_eq!(
            key(
                Some("rtmp://1.2.3.4/live?vhost=a.example.com"),
                None,
                "s?domain=b.example.com"
            )
            .unwrap(),
            "b.example.com/live/s"
        );
        assert_eq!(
            key(Some("rtmp://a.example.com/live"), None, "s?vhost=").unwrap(),
            "a.example.com/live/s",
            "an empty parameter does not count"
        );
        assert_eq!(
            key(Some("rtmp://1.2.3.4/live...vhost...old.example.com"), None, "s").unwrap(),
            "old.example.com/live/s"
        );
    }

    #[test]
    fn token_parameters_do_not_change_the_key() {
        assert_eq!(
            key(Some("rtmp://h.example.com/live"), None, "s?token=secret&expire=1").unwrap(),
            key(Some("rtmp://h.example.com/live"), None, "s").unwrap()
        );
    }

    #[test]
    fn the_app_field_is_the_fallback() {
        assert_eq!(key(None, Some("live"), "s").unwrap(), "__defaultVhost__/live/s");
        assert_eq!(
            key(Some("rtmp://x.example.com"), Some("live?vhost=y.example.com"), "s").unwrap(),
            "y.example.com/live/s"
        );
        assert_eq!(
            key(Some("rtmp://h/a/b"), Some("ignored"), "s").unwrap(),
            "__defaultVhost__/a/b/s"
        );
    }

    #[test]
    fn hostile_or_missing_names_are_rejected() {
        for (tc, app, stream) in [
            (Some("rtmp://h/live"), None, ""),
            (Some("rtmp://h/live"), None, "?token=x"),
            (Some("rtmp://h/"), None, "s"),
            (None, None, "s"),
            (Some("rtmp://h/live"), None, ".."),
            (Some("rtmp://h/live"), None, "../x"),
            (Some("rtmp://h/.."), None, "s"),
            (Some("rtmp://h/live/../admin"), None, "s"),
            (Some("rtmp://h/live"), None, "a\u{0}b"),
            (Some("rtmp://h/live"), None, "a\r\nb"),
            (Some("rtmp://h/li\u{7}ve"), None, "s"),
            (Some("rtmp://h/live"), None, "a/b"),
            (Some("rtmp://h/live?vhost=a%0a.b"), None, "s"),
        ] {
            assert!(stream_key(tc, app, stream).is_err(), "{tc:?} {app:?} {stream:?}");
        }
    }
}
