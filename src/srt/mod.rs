//! SRT publish and play through the proxy, routed by the stream id.
//!
//! # Layout
//!
//! The codec is pure and knows nothing of the proxy:
//!
//! * [`packet`] — the 16-byte header every datagram starts with.
//! * [`handshake`] — HSv5 induction/conclusion, extension blocks, rejections.
//! * [`stream_id`] — the stream id to a [`crate::stream_key::StreamKey`] and role.
//! * [`cookie`] — stateless SYN cookies under a rotating secret.

pub mod cookie;
pub mod handshake;
pub mod packet;
pub mod stream_id;
