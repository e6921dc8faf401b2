//! Hostile bytes into the AMF0 decoder. Nothing may panic, and whatever
//! decodes must re-encode to bytes that decode to the same encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::rtmp::amf0;

fuzz_target!(|data: &[u8]| {
    let Ok(values) = amf0::decode_all(data) else {
        return;
    };
    let once = amf0::encode_all(&values);
    let again = amf0::decode_all(&once).expect("our own encoding decodes");
    // Bytes, not values: NaN never equals itself.
    assert_eq!(amf0::encode_all(&again), once);
});
