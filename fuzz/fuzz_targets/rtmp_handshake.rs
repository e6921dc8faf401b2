//! Hostile C0/C1 into the server side of the RTMP handshake (simple and
//! digest detection, digest offsets read from the packet itself), and
//! hostile S0/S1 into the client side. Nothing may panic; an accepted C0
//! always gets exactly S0 + S1 + S2, and a simple C1 is echoed as S2.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use srs_proxy::rtmp::handshake::{self, Kind, PACKET_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&c0, rest)) = data.split_first() else {
        return;
    };
    let mut c1 = [0u8; PACKET_SIZE];
    let n = rest.len().min(PACKET_SIZE);
    c1[..n].copy_from_slice(&rest[..n]);
    let _ = handshake::client_digest(&c1);
    let mut rng = StdRng::seed_from_u64(7);
    if let Ok((reply, kind)) = handshake::server_reply(c0, &c1, &mut rng) {
        assert_eq!(c0, handshake::RTMP_VERSION);
        assert_eq!(reply.len(), 1 + 2 * PACKET_SIZE);
        if kind == Kind::Simple {
            assert_eq!(&reply[1 + PACKET_SIZE..], &c1[..]);
        }
    }
    if let Ok(c2) = handshake::client_reply(c0, &c1) {
        assert_eq!(c2, c1);
    }
});
