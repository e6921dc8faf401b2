//! Hostile stream ids into the SRT stream id parser. Nothing may panic,
//! and every key it accepts is one the shared key constructor accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::srt::stream_id;
use srs_proxy::stream_key::StreamKey;

fuzz_target!(|data: &[u8]| {
    let Ok(sid) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = stream_id::parse(sid) {
        let k = &request.key;
        assert_eq!(StreamKey::new(&k.vhost, &k.app, &k.stream).as_ref(), Ok(k));
    }
});
