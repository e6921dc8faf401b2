//! What a datagram on the WebRTC port is, by its first byte (RFC 7983 §7).
//!
//! ICE multiplexes STUN, DTLS and SRTP/SRTCP on one 5-tuple. The proxy only
//! needs to tell STUN (which can bind a client address) from the rest
//! (which is relayed opaquely once the address is bound), and to drop what
//! WebRTC never sends.

/// Kind of a datagram on a WebRTC 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// First byte 0–3.
    Stun,
    /// First byte 20–63.
    Dtls,
    /// First byte 128–191, payload type not in the RTCP range.
    Rtp,
    /// First byte 128–191, payload type 192–223 (RFC 5761 §4).
    Rtcp,
    /// ZRTP, TURN channels, empty datagrams, anything else: not relayed.
    Other,
}

/// Classifies a datagram without looking past its first two bytes.
pub fn classify(datagram: &[u8]) -> PacketKind {
    match datagram.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(20..=63) => PacketKind::Dtls,
        Some(128..=191) => match datagram.get(1) {
            Some(b) if (192..=223).contains(b) => PacketKind::Rtcp,
            Some(_) => PacketKind::Rtp,
            None => PacketKind::Other,
        },
        _ => PacketKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7983_ranges() {
        assert_eq!(classify(&[]), PacketKind::Other);
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[3]), PacketKind::Stun);
        assert_eq!(classify(&[4]), PacketKind::Other);
        assert_eq!(classify(&[16]), PacketKind::Other, "ZRTP");
        assert_eq!(classify(&[22, 0xfe, 0xfd]), PacketKind::Dtls, "handshake");
        assert_eq!(classify(&[23]), PacketKind::Dtls, "application data");
        assert_eq!(classify(&[64]), PacketKind::Other, "TURN channel");
        assert_eq!(classify(&[0x80, 96]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 96]), PacketKind::Rtp, "marker bit set");
        assert_eq!(classify(&[0x81, 200]), PacketKind::Rtcp, "sender report");
        assert_eq!(classify(&[0x8f, 206]), PacketKind::Rtcp, "payload-specific feedback");
        assert_eq!(classify(&[0x80]), PacketKind::Other, "one byte is not RTP");
        assert_eq!(classify(&[0xc0, 96]), PacketKind::Other, "version 3");
    }
}
