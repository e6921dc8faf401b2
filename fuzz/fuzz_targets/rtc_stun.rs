//! Hostile datagrams into the STUN parser. Nothing may panic; whatever
//! parses has a USERNAME within bounds, and verifying its integrity (with
//! any key) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::rtc::stun;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = stun::parse(data) else {
        return;
    };
    if let Some(username) = message.username {
        assert!(!username.is_empty() && username.len() <= stun::MAX_USERNAME);
    }
    let _ = message.verify_integrity(b"fuzz-ice-pwd");
});
