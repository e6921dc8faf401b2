//! Hostile datagrams into the SRT header and handshake parsers, and what
//! they yield into the stream id parser. Nothing may panic, and a parsed
//! handshake must re-encode to bytes that parse to the same handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::srt::handshake::Handshake;
use srs_proxy::srt::{packet, stream_id};

fuzz_target!(|data: &[u8]| {
    let _ = packet::Header::parse(data);
    let Ok(hs) = Handshake::parse(data) else {
        return;
    };
    let again = Handshake::parse(&hs.encode()).expect("our own encoding parses");
    assert_eq!(again, hs);
    let _ = hs.srt_request();
    let _ = hs.key_material();
    if let Ok(Some(sid)) = hs.stream_id() {
        let _ = stream_id::parse(&sid);
    }
});
