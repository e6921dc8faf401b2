//! WebRTC through the proxy: WHIP/WHEP signalling and UDP media routed by
//! the ICE username.
//!
//! The request path, in file order:
//!
//! * [`stun`] — STUN messages: USERNAME, MESSAGE-INTEGRITY, FINGERPRINT.
//! * [`demux`] — STUN / DTLS / RTP / RTCP by first byte (RFC 7983).
//! * [`sdp`] — ICE credentials of offers and answers; the answer's
//!   candidates rewritten to the proxy's address and port.
//!
//! The proxy never terminates DTLS or decrypts SRTP: media is relayed as
//! opaque datagrams once a client address is bound to a session by a
//! connectivity check whose MESSAGE-INTEGRITY verifies.

pub mod demux;
pub mod sdp;
pub mod session;
pub mod stun;
