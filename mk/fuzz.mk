# make fuzz — fuzz every parser of network bytes with cargo-fuzz: the RTMP
# chunk, AMF0 and handshake decoders, the SRT handshake and stream id
# parsers, the STUN parser, the SDP answer rewriter, the HTTP framing of
# origin responses and their chunked bodies, client request heads (the plain
# request path), register bodies, HTTP stream keys, the m3u8
# rewriter and edge mode's FLV tag decoder and MPEG-TS cutter.
#
# Not part of `make test`: it needs `cargo install cargo-fuzz` and a nightly
# toolchain (`rustup toolchain install nightly`), and it runs until
# FUZZ_SECONDS per target have passed. Crashes land in fuzz/artifacts/.

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := rtmp_chunk rtmp_amf0 srt_handshake srt_stream_id rtc_stun rtc_sdp http_framing http_chunked http_request \
  rtmp_handshake register_body stream_key_http m3u8_rewrite edge_flv edge_ts

.PHONY: fuzz

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing — run: cargo install cargo-fuzz"; exit 1; }
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
