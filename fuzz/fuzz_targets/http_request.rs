//! Client request heads as the streaming listener reads them: the plain
//! request path's parser, and the head it writes back for any response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srs_proxy::http::plain::{encode_head, parse_request, Parsed};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Parsed::Plain { req, len, keep_alive } => {
            assert!(len <= data.len());
            // A prefix cut inside the head is never a request of its own.
            if len > 0 {
                assert!(!matches!(parse_request(&data[..len - 1]), Parsed::Plain { .. }));
            }
            let (parts, ()) = http::Response::new(()).into_parts();
            let (head, _, _) = encode_head(
                &parts,
                req.version(),
                req.method() == http::Method::HEAD,
                None,
                keep_alive,
                true,
            );
            assert!(head.ends_with(b"\r\n\r\n"));
        }
        Parsed::Incomplete | Parsed::Other => {}
    }
});
