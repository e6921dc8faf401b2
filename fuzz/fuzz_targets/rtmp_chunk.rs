//! Hostile bytes into the RTMP chunk decoder, fed in pieces the way reads
//! arrive, and every message that comes out into the decoders the proxy
//! runs on it (control, command, AMF0). Nothing may panic, and the
//! decoder's buffer must stay bounded by what it was given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use srs_proxy::rtmp::amf0;
use srs_proxy::rtmp::chunk::ChunkDecoder;
use srs_proxy::rtmp::command::Command;
use srs_proxy::rtmp::message::Control;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // The first byte picks the read size, so splits land everywhere.
    let piece = usize::from(split).max(1);
    let mut decoder = ChunkDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    let _ = Control::decode(&message);
                    let _ = Command::from_message(&message);
                    let _ = amf0::decode_all(&message.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // What the decoder leaves unparsed is less than one chunk header
        // (3 + 11 + 4 bytes at most): payload never piles up in the buffer.
        assert!(buf.len() < 18, "{} bytes left unparsed", buf.len());
    }
});
