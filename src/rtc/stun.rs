//! STUN messages as ICE connectivity checks carry them (RFC 8489, RFC 8445).
//!
//! The proxy reads exactly what routing needs — the class and method, the
//! USERNAME and where MESSAGE-INTEGRITY sits — and verifies the integrity
//! with the session's ice-pwd before it lets a client address into a
//! session. It never rewrites a STUN message: what the client sent is what
//! the origin gets.
//!
//! Every length is checked before it is trusted: the header's length must
//! match the datagram, each attribute (with its padding) must fit inside
//! the message, and a FINGERPRINT, when present, must be last and correct.

use ring::hmac;

/// Fixed STUN header length.
pub const HEADER_LEN: usize = 20;
/// RFC 5389 magic cookie; RFC 3489 messages (without it) are not accepted.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// USERNAME must be shorter than 513 bytes (RFC 8489 §14.3).
pub const MAX_USERNAME: usize = 512;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_FINGERPRINT: u16 = 0x8028;
const INTEGRITY_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Binding method (RFC 8489 §18.2).
pub const METHOD_BINDING: u16 = 0x001;

/// The class bits of a message type (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

/// Why a datagram is not a STUN message the proxy accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than the 20-byte STUN header ({0} bytes)")]
    TooShort(usize),
    #[error("first two bits are not zero: not STUN")]
    NotStun,
    #[error("magic cookie missing (classic RFC 3489 STUN is not supported)")]
    NoMagicCookie,
    #[error("message length {0} is not a multiple of 4")]
    Misaligned(usize),
    #[error("header says {header} bytes of attributes, datagram has {actual}")]
    LengthMismatch { header: usize, actual: usize },
    #[error("attribute {kind:#06x} at offset {offset} runs past the end of the message")]
    AttributeOverrun { kind: u16, offset: usize },
    #[error("USERNAME is empty")]
    EmptyUsername,
    #[error("USERNAME is {0} bytes; at most 512 are allowed")]
    UsernameTooLong(usize),
    #[error("USERNAME is not UTF-8")]
    UsernameEncoding,
    #[error("MESSAGE-INTEGRITY is {0} bytes, not 20")]
    IntegrityLength(usize),
    #[error("FINGERPRINT is {0} bytes, not 4")]
    FingerprintLength(usize),
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
}

impl StunError {
    /// Label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadFingerprint => "bad_fingerprint",
            Self::EmptyUsername | Self::UsernameTooLong(_) | Self::UsernameEncoding => "bad_username",
            _ => "malformed",
        }
    }
}

/// A parsed STUN message borrowing the datagram it came from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    /// Method (12 bits), e.g. [`METHOD_BINDING`].
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
    /// First USERNAME, if any: `<receiver ufrag>:<sender ufrag>` in ICE.
    pub username: Option<&'a str>,
    /// Offset of the MESSAGE-INTEGRITY attribute header, for verification:
    /// the HMAC covers everything before it.
    integrity_at: Option<usize>,
}

/// Whether a datagram looks like STUN by its first byte (RFC 7983 §7):
/// cheap pre-check before [`parse`].
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b < 4)
}

/// Parses a STUN message; the whole datagram must be one message.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, StunError> {
    if datagram.len() < HEADER_LEN {
        return Err(StunError::TooShort(datagram.len()));
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    if msg_type & 0xC000 != 0 {
        return Err(StunError::NotStun);
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    if cookie != MAGIC_COOKIE {
        return Err(StunError::NoMagicCookie);
    }
    if length % 4 != 0 {
        return Err(StunError::Misaligned(length));
    }
    if HEADER_LEN + length != datagram.len() {
        return Err(StunError::LengthMismatch {
            header: length,
            actual: datagram.len() - HEADER_LEN,
        });
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&datagram[8..20]);
    let method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2);
    let class = match ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::SuccessResponse,
        _ => Class::ErrorResponse,
    };

    let mut username = None;
    let mut integrity_at = None;
    let mut offset = HEADER_LEN;
    while offset < datagram.len() {
        // `offset` stays 4-aligned and `length` is a multiple of 4, so the
        // 4-byte attribute header always fits once we are inside.
        let kind = u16::from_be_bytes([datagram[offset], datagram[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[offset + 2], datagram[offset + 3]]));
        let padded = (len + 3) & !3;
        let value_at = offset + 4;
        if value_at + padded > datagram.len() {
            return Err(StunError::AttributeOverrun { kind, offset });
        }
        let value = &datagram[value_at..value_at + len];
        match kind {
            ATTR_FINGERPRINT => {
                if len != 4 {
                    return Err(StunError::FingerprintLength(len));
                }
                if value_at + 4 != datagram.len() {
                    return Err(StunError::FingerprintNotLast);
                }
                let expected = crc32fast::hash(&datagram[..offset]) ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([value[0], value[1], value[2], value[3]]) != expected {
                    return Err(StunError::BadFingerprint);
                }
            }
            // Everything between MESSAGE-INTEGRITY and FINGERPRINT is
            // ignored (RFC 8489 §14.5), so it cannot change what we read.
            _ if integrity_at.is_some() => {}
            ATTR_USERNAME if username.is_none() => {
                if len == 0 {
                    return Err(StunError::EmptyUsername);
                }
                if len > MAX_USERNAME {
                    return Err(StunError::UsernameTooLong(len));
                }
                username = Some(std::str::from_utf8(value).map_err(|_| StunError::UsernameEncoding)?);
            }
            ATTR_MESSAGE_INTEGRITY => {
                if len != INTEGRITY_LEN {
                    return Err(StunError::IntegrityLength(len));
                }
                integrity_at = Some(offset);
            }
            _ => {}
        }
        offset = value_at + padded;
    }
    Ok(Message {
        raw: datagram,
        method,
        class,
        transaction_id,
        username,
        integrity_at,
    })
}

impl Message<'_> {
    /// An ICE connectivity check (Binding request).
    pub fn is_binding_request(&self) -> bool {
        self.method == METHOD_BINDING && self.class == Class::Request
    }

    /// Whether MESSAGE-INTEGRITY is present and is the HMAC-SHA1 of the
    /// message with `key` (for ICE: the receiving agent's ice-pwd). The
    /// HMAC covers the header, with its length set as if the message ended
    /// after MESSAGE-INTEGRITY, and every attribute before it (§14.5).
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let mut covered = self.raw[..at].to_vec();
        let length = (at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
        covered[2..4].copy_from_slice(&length.to_be_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        // `verify` compares in constant time.
        hmac::verify(&key, &covered, &self.raw[at + 4..at + 4 + INTEGRITY_LEN]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A binding request as ICE sends one: USERNAME, then optionally
    /// MESSAGE-INTEGRITY and FINGERPRINT. (tests/rtc_udp.rs drives the
    /// parser with checks from webrtc-rs's independent encoder as well.)
    fn reference(username: &str, pwd: Option<&str>, fingerprint: bool) -> Vec<u8> {
        reference_with_type(0x0001, username, pwd, fingerprint)
    }

    fn reference_with_type(msg_type: u16, username: &str, pwd: Option<&str>, fingerprint: bool) -> Vec<u8> {
        let mut raw = msg_type.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0, 0]);
        raw.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        raw.extend_from_slice(b"0123456789ab");
        let set_len = |raw: &mut Vec<u8>, extra: usize| {
            let len = (raw.len() + extra - HEADER_LEN) as u16;
            raw[2..4].copy_from_slice(&len.to_be_bytes());
        };
        raw.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        raw.extend_from_slice(&(username.len() as u16).to_be_bytes());
        raw.extend_from_slice(username.as_bytes());
        raw.resize((raw.len() + 3) & !3, 0);
        if let Some(pwd) = pwd {
            set_len(&mut raw, 24);
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
            let tag = hmac::sign(&key, &raw);
            raw.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
            raw.extend_from_slice(&20u16.to_be_bytes());
            raw.extend_from_slice(tag.as_ref());
        }
        if fingerprint {
            set_len(&mut raw, 8);
            let crc = crc32fast::hash(&raw) ^ FINGERPRINT_XOR;
            raw.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
            raw.extend_from_slice(&4u16.to_be_bytes());
            raw.extend_from_slice(&crc.to_be_bytes());
        }
        set_len(&mut raw, 0);
        raw
    }

    #[test]
    fn reads_a_connectivity_check() {
        let raw = reference("answerfrag:offerfrag", Some("the-answer-ice-pwd-24chars"), true);
        let m = parse(&raw).unwrap();
        assert!(m.is_binding_request());
        assert_eq!(m.username, Some("answerfrag:offerfrag"));
        assert!(m.verify_integrity(b"the-answer-ice-pwd-24chars"));
        assert!(!m.verify_integrity(b"the-offer-ice-pwd"));
        assert!(looks_like_stun(&raw));
    }

    #[test]
    fn integrity_without_fingerprint_and_none_at_all() {
        let raw = reference("a:b", Some("pwd"), false);
        assert!(parse(&raw).unwrap().verify_integrity(b"pwd"));
        let raw = reference("a:b", None, true);
        let m = parse(&raw).unwrap();
        assert!(!m.verify_integrity(b"pwd"), "no MESSAGE-INTEGRITY never verifies");
    }

    #[test]
    fn reads_response_class() {
        let raw = reference_with_type(0x0101, "a:b", None, false);
        let parsed = parse(&raw).unwrap();
        assert_eq!(parsed.class, Class::SuccessResponse);
        assert_eq!(parsed.method, METHOD_BINDING);
        assert!(!parsed.is_binding_request());
        assert_eq!(&parsed.transaction_id, b"0123456789ab");
        let raw = reference_with_type(0x0011, "a:b", None, false);
        assert_eq!(parse(&raw).unwrap().class, Class::Indication);
        let raw = reference_with_type(0x0111, "a:b", None, false);
        assert_eq!(parse(&raw).unwrap().class, Class::ErrorResponse);
    }

    #[test]
    fn tampering_breaks_integrity() {
        let raw = reference("answerfrag:offerfrag", Some("pwd"), false);
        // Flip a byte of the username: the HMAC no longer matches.
        let mut bad = raw.clone();
        bad[HEADER_LEN + 4] ^= 0x01;
        assert!(!parse(&bad).unwrap().verify_integrity(b"pwd"));
        // Same with the transaction id.
        let mut bad = raw;
        bad[10] ^= 0x80;
        assert!(!parse(&bad).unwrap().verify_integrity(b"pwd"));
    }

    #[test]
    fn bad_fingerprint_is_rejected() {
        let mut raw = reference("a:b", Some("pwd"), true);
        let last = raw.len() - 1;
        raw[last] ^= 0xFF;
        assert_eq!(parse(&raw).unwrap_err(), StunError::BadFingerprint);
    }

    #[test]
    fn short_and_malformed_headers() {
        assert_eq!(parse(&[]).unwrap_err(), StunError::TooShort(0));
        assert_eq!(parse(&[0]).unwrap_err(), StunError::TooShort(1));
        assert_eq!(parse(&[0; 19]).unwrap_err(), StunError::TooShort(19));
        let mut raw = reference("a:b", None, false);
        raw[0] |= 0x80;
        assert_eq!(parse(&raw).unwrap_err(), StunError::NotStun);
        let mut raw = reference("a:b", None, false);
        raw[4] = 0;
        assert_eq!(parse(&raw).unwrap_err(), StunError::NoMagicCookie);
    }

    /// Header and attributes written by hand, for the malformations an
    /// encoder refuses to produce.
    fn handmade(attrs: &[(u16, &[u8], usize)], declared: Option<u16>) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value, padding) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.extend(std::iter::repeat_n(0, *padding));
        }
        let mut raw = vec![0x00, 0x01];
        raw.extend_from_slice(&declared.unwrap_or(body.len() as u16).to_be_bytes());
        raw.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        raw.extend_from_slice(&[7; 12]);
        raw.extend_from_slice(&body);
        raw
    }

    #[test]
    fn attribute_lengths_are_checked() {
        // Attribute says 200 bytes; the message has 8.
        let mut raw = handmade(&[(ATTR_USERNAME, b"abcd", 0)], None);
        raw[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            parse(&raw).unwrap_err(),
            StunError::AttributeOverrun {
                kind: ATTR_USERNAME,
                offset: HEADER_LEN
            }
        );
        // A 5-byte value whose padding is missing.
        let raw = handmade(&[(ATTR_USERNAME, b"abcde", 0)], Some(12));
        assert!(matches!(parse(&raw).unwrap_err(), StunError::LengthMismatch { .. }));
        let raw = handmade(&[(ATTR_USERNAME, b"abcde", 0)], Some(9));
        assert_eq!(parse(&raw).unwrap_err(), StunError::Misaligned(9));
        // Declared length shorter than what was sent.
        let raw = handmade(&[(ATTR_USERNAME, b"abcd", 0)], Some(4));
        assert!(matches!(parse(&raw).unwrap_err(), StunError::LengthMismatch { .. }));
        // Padded properly: fine.
        let raw = handmade(&[(ATTR_USERNAME, b"abcde", 3)], None);
        assert_eq!(parse(&raw).unwrap().username, Some("abcde"));
    }

    #[test]
    fn username_bounds() {
        let raw = handmade(&[(ATTR_USERNAME, b"", 0)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::EmptyUsername);
        let long = vec![b'a'; 513];
        let raw = handmade(&[(ATTR_USERNAME, &long, 3)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::UsernameTooLong(513));
        let max = vec![b'a'; 512];
        let raw = handmade(&[(ATTR_USERNAME, &max, 0)], None);
        assert_eq!(parse(&raw).unwrap().username.map(str::len), Some(512));
        let raw = handmade(&[(ATTR_USERNAME, &[0xff, 0xfe, 0xfd, 0xfc], 0)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::UsernameEncoding);
    }

    #[test]
    fn integrity_and_fingerprint_shapes() {
        let raw = handmade(&[(ATTR_MESSAGE_INTEGRITY, &[0; 16], 0)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::IntegrityLength(16));
        let raw = handmade(&[(ATTR_FINGERPRINT, &[0; 8], 0)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::FingerprintLength(8));
        let raw = handmade(&[(ATTR_FINGERPRINT, &[0; 4], 0), (ATTR_USERNAME, b"abcd", 0)], None);
        assert_eq!(parse(&raw).unwrap_err(), StunError::FingerprintNotLast);
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        // A USERNAME smuggled after MESSAGE-INTEGRITY must not be read.
        let raw = reference("a:b", Some("pwd"), false);
        let mut smuggled = raw.clone();
        smuggled.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        smuggled.extend_from_slice(&4u16.to_be_bytes());
        smuggled.extend_from_slice(b"x:yz");
        let len = (smuggled.len() - HEADER_LEN) as u16;
        smuggled[2..4].copy_from_slice(&len.to_be_bytes());
        let m = parse(&smuggled).unwrap();
        assert_eq!(m.username, Some("a:b"));
        assert!(m.verify_integrity(b"pwd"), "the HMAC covers only what precedes it");
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = parse(&data) {
                let _ = m.verify_integrity(b"pwd");
            }
        }

        #[test]
        fn never_panics_on_stun_shaped_input(
            attrs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
            declared in proptest::option::of(any::<u16>()),
        ) {
            let attrs: Vec<(u16, &[u8], usize)> = attrs
                .iter()
                .map(|(k, v)| (*k, v.as_slice(), (4 - v.len() % 4) % 4))
                .collect();
            let raw = handmade(&attrs, declared);
            if let Ok(m) = parse(&raw) {
                let _ = m.verify_integrity(b"pwd");
            }
        }

        #[test]
        fn verifies_what_was_signed(
            user in "[a-zA-Z0-9+/]{4,32}:[a-zA-Z0-9+/]{4,32}",
            pwd in "[a-zA-Z0-9+/]{22,32}",
        ) {
            let raw = reference(&user, Some(&pwd), true);
            let m = parse(&raw).unwrap();
            prop_assert_eq!(m.username, Some(user.as_str()));
            prop_assert!(m.verify_integrity(pwd.as_bytes()));
        }
    }
}
