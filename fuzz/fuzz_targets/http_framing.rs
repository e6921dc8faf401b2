//! Origin response heads and chunked framing, as the live relay reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::http::framing::{parse_head, ChunkScanner};

fuzz_target!(|data: &[u8]| {
    let _ = parse_head(data);
    // The same bytes fed whole and in two pieces must agree.
    let whole = ChunkScanner::new().scan(data);
    let cut = data.len() / 3;
    let mut split = ChunkScanner::new();
    let first = split.scan(&data[..cut]);
    if let (Ok(whole), Ok(first)) = (&whole, &first) {
        if first.end.is_none() {
            if let Ok(second) = split.scan(&data[cut..]) {
                assert_eq!(whole.payload, first.payload + second.payload);
                assert_eq!(whole.end, second.end.map(|e| e + cut));
            }
        }
    }
});
