//! The SRT packet header: what the relay reads of every datagram.
//!
//! Every SRT datagram starts with four 32-bit big-endian words. The top bit
//! of the first says data (0) or control (1); the last is the destination
//! socket id, which is how the proxy finds the connection a datagram
//! belongs to. Past the header the relay reads nothing but handshakes
//! (see [`super::handshake`]): payloads, acknowledgements, loss reports and
//! key refreshes go through as they came.

use std::fmt;

/// Bytes in the header every SRT packet starts with.
pub const HEADER_LEN: usize = 16;

/// Control packet types the relay acts on (draft-sharabayko-srt §3.2).
pub mod control_type {
    pub const HANDSHAKE: u16 = 0x0000;
    pub const KEEPALIVE: u16 = 0x0001;
    pub const SHUTDOWN: u16 = 0x0005;
}

/// Data or control, with the fields of the first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A payload packet; the sequence number is the low 31 bits.
    Data { sequence: u32 },
    /// A control packet: type (15 bits), subtype and the type-specific word.
    Control { kind: u16, subtype: u16, info: u32 },
}

/// The 16-byte header of one SRT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Microseconds since the sender's connection started.
    pub timestamp: u32,
    /// The receiving socket; 0 on a connection request.
    pub dest_socket: u32,
}

/// A datagram too short to be SRT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("datagram of {0} bytes is shorter than the 16-byte SRT header")]
pub struct TooShort(pub usize);

fn word(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

impl Header {
    pub fn parse(buf: &[u8]) -> Result<Self, TooShort> {
        if buf.len() < HEADER_LEN {
            return Err(TooShort(buf.len()));
        }
        let first = word(buf, 0);
        let kind = if first & 0x8000_0000 == 0 {
            Kind::Data { sequence: first }
        } else {
            Kind::Control {
                kind: ((first >> 16) & 0x7fff) as u16,
                subtype: (first & 0xffff) as u16,
                info: word(buf, 4),
            }
        };
        Ok(Self {
            kind,
            timestamp: word(buf, 8),
            dest_socket: word(buf, 12),
        })
    }

    pub fn is_control(&self, kind: u16) -> bool {
        matches!(self.kind, Kind::Control { kind: k, .. } if k == kind)
    }

    /// The 16 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let (first, second) = match self.kind {
            Kind::Data { sequence } => (sequence & 0x7fff_ffff, 0),
            Kind::Control { kind, subtype, info } => (
                0x8000_0000 | (u32::from(kind & 0x7fff) << 16) | u32::from(subtype),
                info,
            ),
        };
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&first.to_be_bytes());
        out[4..8].copy_from_slice(&second.to_be_bytes());
        out[8..12].copy_from_slice(&self.timestamp.to_be_bytes());
        out[12..16].copy_from_slice(&self.dest_socket.to_be_bytes());
        out
    }
}

/// A control packet header with no type-specific information.
pub fn control(kind: u16, timestamp: u32, dest_socket: u32) -> Header {
    Header {
        kind: Kind::Control {
            kind,
            subtype: 0,
            info: 0,
        },
        timestamp,
        dest_socket,
    }
}

/// The shutdown packet that tells `dest_socket` the connection is over.
/// libsrt sends four zero bytes after the header, and so does this.
pub fn shutdown(dest_socket: u32) -> [u8; HEADER_LEN + 4] {
    let mut out = [0u8; HEADER_LEN + 4];
    out[..HEADER_LEN].copy_from_slice(&control(control_type::SHUTDOWN, 0, dest_socket).encode());
    out
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Data { .. } => f.write_str("data"),
            Kind::Control { kind, .. } => write!(f, "control {kind:#06x}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_datagrams_are_not_srt() {
        for n in 0..HEADER_LEN {
            assert_eq!(Header::parse(&vec![0x80; n]), Err(TooShort(n)));
        }
    }

    #[test]
    fn a_keepalive_from_libsrt() {
        // Captured from srt-live-transmit 1.5.1.
        let bytes = hex("8001000000000000000f7d1920701c9500000000");
        let h = Header::parse(&bytes).unwrap();
        assert!(h.is_control(control_type::KEEPALIVE));
        assert_eq!(h.dest_socket, 0x2070_1c95);
        assert_eq!(h.timestamp, 0x000f_7d19);
    }

    #[test]
    fn a_data_packet_from_libsrt() {
        let bytes = hex("7594c535e0000001001cef780244979047401110");
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(h.kind, Kind::Data { sequence: 0x7594_c535 });
        assert_eq!(h.dest_socket, 0x0244_9790);
        assert!(!h.is_control(control_type::HANDSHAKE));
    }

    #[test]
    fn shutdown_is_what_libsrt_sends() {
        // libsrt's shutdown carries a timestamp; the rest is identical.
        let mut theirs = hex("8005000000000000001fb6b50244979000000000");
        theirs[8..12].fill(0);
        assert_eq!(shutdown(0x0244_9790).to_vec(), theirs);
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    proptest! {
        #[test]
        fn headers_round_trip(bytes in proptest::collection::vec(any::<u8>(), 16..64)) {
            let h = Header::parse(&bytes).unwrap();
            let again = Header::parse(&h.encode()).unwrap();
            prop_assert_eq!(h, again);
            if let Kind::Control { .. } = h.kind {
                prop_assert_eq!(&h.encode()[..], &bytes[..16]);
            }
        }
    }
}
