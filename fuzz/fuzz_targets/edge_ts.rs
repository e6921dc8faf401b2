//! Hostile bytes into the MPEG-TS cutter that cuts an origin's HTTP-TS
//! body into units for edge mode, fed in pieces the way reads arrive.
//! Nothing may panic, every byte comes out in a unit of whole packets or
//! is counted as skipped, and what the cutter leaves unparsed is never
//! more than one packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use srs_proxy::http::edge::ts::{TsCutter, PACKET, SYNC};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // The first byte picks the read size, so splits land everywhere.
    let piece = usize::from(split).max(1) * 3;
    let mut cutter = TsCutter::new();
    let mut buf = BytesMut::new();
    let mut out = 0;
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        match cutter.cut(&mut buf) {
            Ok(units) => {
                for unit in units {
                    assert!(!unit.bytes.is_empty() && unit.bytes.len() % PACKET == 0);
                    assert_eq!(unit.bytes[0], SYNC);
                    out += unit.bytes.len();
                }
            }
            Err(_) => return,
        }
        assert!(buf.len() <= PACKET, "{} bytes left unparsed", buf.len());
    }
    assert_eq!(out + cutter.take_skipped() + buf.len(), input.len());
});
