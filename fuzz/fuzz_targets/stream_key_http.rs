//! Hostile request paths, queries and Host headers into
//! `StreamKey::from_http`. Nothing may panic, and every key it returns is
//! one `StreamKey::new` accepts again: no control characters, no dot
//! segments, bounded parts — safe to log, store and forward.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::stream_key::StreamKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // path \0 query \0 host: each part optional.
    let mut parts = text.splitn(3, '\0');
    let path = parts.next().unwrap_or("");
    let query = parts.next();
    let host = parts.next();
    let Ok((key, _ext)) = StreamKey::from_http(path, query, host) else {
        return;
    };
    let again = StreamKey::new(&key.vhost, &key.app, &key.stream).expect("a parsed key is valid");
    assert_eq!(again, key);
    assert!(!format!("{key}").chars().any(char::is_control));
});
