//! Origin response heads and chunked framing, as the live relay reads them:
//! whole, in pieces, and with chunk data passing unseen (splicing).
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
    // Chunk data passed unseen, framing scanned a few bytes at a time (as
    // the splicing relay does) must agree with scanning everything.
    if let Ok(whole) = &whole {
        let mut blind = ChunkScanner::new();
        let (mut at, mut payload, mut end, mut failed) = (0usize, 0u64, None, false);
        while at < data.len() && end.is_none() {
            let left = blind.data_left();
            if left > 0 {
                let n = left.min((data.len() - at) as u64);
                blind.pass(n);
                payload += n;
                at += n as usize;
                continue;
            }
            let piece = &data[at..(at + 7).min(data.len())];
            match blind.scan(piece) {
                Ok(s) => {
                    payload += s.payload;
                    end = s.end.map(|e| at + e);
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            at += piece.len();
        }
        assert!(!failed, "bytes scanning accepts whole were refused in pieces");
        assert_eq!(whole.end, end);
        assert_eq!(whole.payload, payload);
    }
});
