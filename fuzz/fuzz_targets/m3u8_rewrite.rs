//! Hostile playlists into the m3u8 rewriter. Nothing may panic; a rewrite
//! keeps the line structure, and its output is bounded by the input plus
//! one token per URI (at most the URI limit), so no playlist can make the
//! proxy's answer grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::hls::{rewrite_playlist, TOKEN_PARAM};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const MAX_URIS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(out) = rewrite_playlist(data, TOKEN, MAX_URIS) else {
        return;
    };
    // One token parameter per URI; a URI may also lose an old token
    // parameter, which only shrinks it. Joining with '&' where a query
    // existed adds no more than the '?' it replaces.
    let per_uri = TOKEN_PARAM.len() + TOKEN.len() + 2;
    assert!(out.len() <= data.len() + MAX_URIS * per_uri, "{} -> {}", data.len(), out.len());
    let text = std::str::from_utf8(data).unwrap();
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    assert_eq!(out.matches('\n').count(), body.matches('\n').count());
});
