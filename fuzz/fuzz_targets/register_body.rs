//! Hostile register API bodies into the heartbeat parser and the address
//! policy. Nothing may panic; an accepted body always yields an origin id
//! that is safe to log (plain characters, bounded length) and an rtmp or
//! http port, and whatever address it names is judged without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::config::RegisterConfig;
use srs_proxy::discovery::heartbeat::{check_address, check_origin_id, parse_register, MAX_ORIGIN_ID};

fuzz_target!(|data: &[u8]| {
    let Ok(origin) = parse_register(data) else {
        return;
    };
    assert!(check_origin_id(&origin.id).is_ok());
    assert!(origin.id.len() <= MAX_ORIGIN_ID);
    assert!(origin.ports.rtmp.is_some() || origin.ports.http.is_some());
    if let Ok(ip) = origin.ip.parse() {
        let own = ["127.0.0.1:12025".parse().unwrap()];
        let peer = "10.0.0.1".parse().unwrap();
        let _ = check_address(ip, &origin.ports, peer, &RegisterConfig::default(), &own, &|ip| {
            ip.is_loopback()
        });
    }
});
