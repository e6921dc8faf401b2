//! Chunked bodies of origin answers, as kept-alive exchanges decode them.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use srs_proxy::http::chunked::{ChunkDecoder, Decoded};

/// The payload and where the body ended, feeding `data` in two pieces.
fn decode(data: &[u8], cut: usize) -> Option<(Vec<u8>, Option<usize>)> {
    let mut decoder = ChunkDecoder::new();
    let mut buf = BytesMut::new();
    let mut payload = Vec::new();
    for (from, to) in [(0, cut), (cut, data.len())] {
        buf.extend_from_slice(&data[from..to]);
        loop {
            match decoder.decode(&mut buf).ok()? {
                Decoded::Data(bytes) => payload.extend_from_slice(&bytes),
                Decoded::Incomplete => break,
                Decoded::End => return Some((payload, Some(to - buf.len()))),
            }
        }
    }
    Some((payload, None))
}

fuzz_target!(|data: &[u8]| {
    // Fed whole or in two pieces, the same bytes give the same body.
    let whole = decode(data, data.len());
    let split = decode(data, data.len() / 3);
    if let (Some(whole), Some(split)) = (whole, split) {
        assert_eq!(whole, split);
    }
});
