//! Hostile SDP into the parser and the answer rewriter. Nothing may panic;
//! after a rewrite every candidate is UDP on the proxy's port, and the
//! rewritten SDP parses back to the same description.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::rtc::sdp::{CandidateRewrite, Sdp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut sdp) = Sdp::parse(text) else {
        return;
    };
    let _ = sdp.ice_credentials();
    let public = ["203.0.113.1".to_string(), "proxy.example.com".to_string()];
    let public: &[String] = if data.len() % 2 == 0 { &public } else { &[] };
    let kept = sdp.rewrite_candidates(&CandidateRewrite {
        origin_port: 8000,
        proxy_port: 18000,
        public,
    });
    let candidates = sdp.candidates();
    assert_eq!(candidates.len(), kept);
    assert!(candidates.iter().all(|c| c.port == 18000 && c.transport.eq_ignore_ascii_case("udp")));
    let again = Sdp::parse(&sdp.to_string()).expect("our own output parses");
    assert_eq!(again, sdp);
});
