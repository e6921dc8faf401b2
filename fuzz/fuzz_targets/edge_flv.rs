//! Hostile bytes into the FLV decoder that cuts an origin's HTTP-FLV body
//! into tags for edge mode, fed in pieces the way reads arrive, and every
//! tag that comes out into the classifier a joining player depends on.
//! Nothing may panic, progress is made on every item, and what the
//! decoder leaves unparsed is never more than one tag.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use srs_proxy::http::edge::flv::{self, FlvDecoder, Item};

/// The largest tag accepted here; small so that limits are reached.
const MAX_TAG: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // The first byte picks the read size, so splits land everywhere.
    let piece = usize::from(split).max(1);
    let mut decoder = FlvDecoder::new(MAX_TAG);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(Item::Tag(tag))) => {
                    assert!(buf.len() < before, "a tag consumed nothing");
                    assert!(tag.payload.len() <= MAX_TAG as usize);
                    let _ = flv::classify(tag.tag_type, &tag.payload);
                }
                Ok(Some(Item::Header { .. })) => assert!(buf.len() < before, "a header consumed nothing"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Unparsed: at most one whole tag (or a padded file header).
        let most = flv::TAG_HEADER_LEN + MAX_TAG as usize + flv::PREVIOUS_SIZE_LEN;
        assert!(buf.len() < most.max(1024 + flv::PREVIOUS_SIZE_LEN), "{} bytes left unparsed", buf.len());
    }
});
