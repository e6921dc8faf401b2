//! The SRT handshake (HSv5, caller–listener), as libsrt speaks it.
//!
//! A handshake is a control packet of type 0 whose body is twelve 32-bit
//! words (version, type, initial sequence number, MSS, flow window, request
//! type, socket id, SYN cookie, four words of peer address) followed, in a
//! version 5 conclusion, by extension blocks: a 16-bit type, a 16-bit
//! length in 32-bit words, then that many words. The blocks the proxy
//! reads are HSREQ (1), KMREQ (3) and the stream id (5); others are kept
//! as they came and skipped by their length.
//!
//! The exchange (draft-sharabayko-srt §4.3.1):
//!
//! ```text
//! caller                         listener
//!   INDUCTION v4, cookie 0   ─►
//!                            ◄─  INDUCTION v5, magic 0x4A17, cookie
//!   CONCLUSION v5, cookie,
//!     HSREQ [KMREQ] [SID]    ─►
//!                            ◄─  CONCLUSION v5, HSRSP [KMRSP]
//!                                (or request type 1000 + reject reason)
//! ```
//!
//! Everything here is pure: bytes in, values out, every length checked
//! before it is used. The proxy forwards a client's conclusion to the
//! origin byte for byte except for the cookie and peer address words,
//! which [`set_cookie`] and [`set_peer_address`] rewrite in place.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::packet::{self, control_type, Header, HEADER_LEN};

/// Bytes of the fixed handshake body after the packet header.
pub const BODY_LEN: usize = 48;
/// A handshake packet without extensions.
pub const MIN_LEN: usize = HEADER_LEN + BODY_LEN;
/// The longest stream id libsrt sends (`SRTO_STREAMID`).
pub const MAX_STREAM_ID: usize = 512;
/// What an HSv5 listener puts in the extension field of its induction
/// answer, so the caller knows it may send a version 5 conclusion.
pub const SRT_MAGIC: u16 = 0x4A17;
/// The legacy socket type an HSv4 induction carries (`UDT_DGRAM`).
pub const UDT_DGRAM: u32 = 2;

const COOKIE_AT: usize = HEADER_LEN + 28;
const PEER_IP_AT: usize = HEADER_LEN + 32;

/// Extension block types (`SRT_CMD_*`).
pub mod ext {
    pub const HSREQ: u16 = 1;
    pub const HSRSP: u16 = 2;
    pub const KMREQ: u16 = 3;
    pub const KMRSP: u16 = 4;
    pub const SID: u16 = 5;
    pub const CONGESTION: u16 = 6;
    pub const FILTER: u16 = 7;
    pub const GROUP: u16 = 8;
}

/// Extension flags of a conclusion's type field (`HS_EXT_*`).
pub mod ext_flag {
    pub const HSREQ: u16 = 1;
    pub const KMREQ: u16 = 2;
    /// Blocks other than HSREQ/KMREQ follow (stream id, congestion, …).
    pub const CONFIG: u16 = 4;
}

/// The handshake request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// 1: the caller's first packet, and the listener's cookie answer.
    Induction,
    /// -1: the caller's second packet, and the listener's acceptance.
    Conclusion,
    /// 0: rendezvous opening.
    WaveAHand,
    /// -2: rendezvous closing.
    Agreement,
    /// 1000 + reason: the peer refused the connection.
    Rejection(RejectReason),
    Other(u32),
}

impl RequestType {
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Induction,
            0xFFFF_FFFF => Self::Conclusion,
            0 => Self::WaveAHand,
            0xFFFF_FFFE => Self::Agreement,
            v if v >= REJECTION_BASE => Self::Rejection(RejectReason(v - REJECTION_BASE)),
            v => Self::Other(v),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::Induction => 1,
            Self::Conclusion => 0xFFFF_FFFF,
            Self::WaveAHand => 0,
            Self::Agreement => 0xFFFF_FFFE,
            Self::Rejection(r) => REJECTION_BASE.saturating_add(r.0),
            Self::Other(v) => v,
        }
    }
}

/// On the wire a rejection is this plus the reason code.
const REJECTION_BASE: u32 = 1000;

/// Why a connection is refused, as libsrt reports it to the application
/// (`SRT_REJ_*` below 1000, the access-control `SRT_REJX_*` from 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RejectReason(pub u32);

impl RejectReason {
    /// Data that cannot be interpreted (`SRT_REJ_ROGUE`).
    pub const ROGUE: Self = Self(4);
    /// Too many connections waiting (`SRT_REJ_BACKLOG`).
    pub const BACKLOG: Self = Self(5);
    /// The listener is closing (`SRT_REJ_CLOSE`): the proxy is draining.
    pub const CLOSE: Self = Self(7);
    /// The peer's handshake version is not supported (`SRT_REJ_VERSION`).
    pub const VERSION: Self = Self(8);
    /// Timed out (`SRT_REJ_TIMEOUT`).
    pub const TIMEOUT: Self = Self(16);
    /// Malformed stream id (`SRT_REJX_BAD_REQUEST`).
    pub const BAD_REQUEST: Self = Self(1400);
    /// Too loaded (`SRT_REJX_OVERLOAD`).
    pub const OVERLOAD: Self = Self(1402);
    /// The stream id names a mode other than publish/request
    /// (`SRT_REJX_BAD_MODE`).
    pub const BAD_MODE: Self = Self(1405);
    /// Internal error (`SRT_REJX_ISE`).
    pub const INTERNAL: Self = Self(1500);
    /// The gateway could not reach its target (`SRT_REJX_GW`).
    pub const GATEWAY: Self = Self(1502);
    /// No server can take the stream (`SRT_REJX_DOWN`).
    pub const UNAVAILABLE: Self = Self(1503);

    /// Label value for metrics and logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "unknown",
            1 => "system",
            2 => "peer",
            3 => "resource",
            4 => "rogue",
            5 => "backlog",
            6 => "ipe",
            7 => "close",
            8 => "version",
            9 => "rdvcookie",
            10 => "badsecret",
            11 => "unsecure",
            12 => "messageapi",
            13 => "congestion",
            14 => "filter",
            15 => "group",
            16 => "timeout",
            17 => "crypto",
            1400 => "bad_request",
            1401 => "unauthorized",
            1402 => "overload",
            1403 => "forbidden",
            1404 => "not_found",
            1405 => "bad_mode",
            1406 => "unacceptable",
            1409 => "conflict",
            1500 => "internal",
            1502 => "gateway",
            1503 => "unavailable",
            _ => "other",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// One extension block, as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub kind: u16,
    /// The block's words, byte for byte.
    pub body: Vec<u8>,
}

/// A parsed handshake packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Header fields of the packet it came in.
    pub timestamp: u32,
    /// 0 on a caller's requests; the caller's socket id on answers.
    pub dest_socket: u32,
    /// 4 on a caller's induction, 5 from then on (HSv5).
    pub version: u32,
    /// Upper half of the type field: the advertised key length / 8.
    pub encryption: u16,
    /// Lower half: extension flags, or [`SRT_MAGIC`] in an induction answer.
    pub extension: u16,
    pub initial_sequence: u32,
    pub mss: u32,
    pub flow_window: u32,
    pub request: RequestType,
    /// The sender's socket id.
    pub socket_id: u32,
    pub cookie: u32,
    /// The address of the packet's receiver as its sender sees it, in
    /// libsrt's word order (see [`encode_peer_address`]).
    pub peer_ip: [u8; 16],
    pub extensions: Vec<Extension>,
}

/// Why handshake bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    TooShort(#[from] packet::TooShort),
    #[error("not a handshake control packet")]
    NotHandshake,
    #[error("handshake of {0} bytes is shorter than {MIN_LEN}")]
    Truncated(usize),
    #[error("extension block {kind} claims {claimed} bytes but {left} remain")]
    ExtensionPastEnd { kind: u16, claimed: usize, left: usize },
    #[error("extension block {kind} is {len} bytes, expected {expected}")]
    ExtensionLength { kind: u16, len: usize, expected: usize },
    #[error("extension block {0} appears twice")]
    DuplicateExtension(u16),
    #[error("stream id is empty")]
    EmptyStreamId,
    #[error("stream id is {0} bytes, longer than {MAX_STREAM_ID}")]
    StreamIdTooLong(usize),
    #[error("stream id contains a NUL byte")]
    StreamIdNul,
    #[error("stream id is not UTF-8")]
    StreamIdEncoding,
    #[error("key material does not start with the KM signature")]
    BadKeyMaterial,
}

fn word(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

impl Handshake {
    /// Parses a whole handshake packet, header included. Extension blocks
    /// are read only from version 5 conclusions (anything after the fixed
    /// body of other handshakes is ignored, as libsrt does); 1–3 bytes
    /// after the last whole word are ignored too.
    pub fn parse(buf: &[u8]) -> Result<Self, HandshakeError> {
        let header = Header::parse(buf)?;
        if !header.is_control(control_type::HANDSHAKE) {
            return Err(HandshakeError::NotHandshake);
        }
        if buf.len() < MIN_LEN {
            return Err(HandshakeError::Truncated(buf.len()));
        }
        let body = &buf[HEADER_LEN..];
        let kind = word(body, 4);
        let mut peer_ip = [0u8; 16];
        peer_ip.copy_from_slice(&body[32..48]);
        let mut hs = Handshake {
            timestamp: header.timestamp,
            dest_socket: header.dest_socket,
            version: word(body, 0),
            encryption: (kind >> 16) as u16,
            extension: (kind & 0xffff) as u16,
            initial_sequence: word(body, 8),
            mss: word(body, 12),
            flow_window: word(body, 16),
            request: RequestType::from_u32(word(body, 20)),
            socket_id: word(body, 24),
            cookie: word(body, 28),
            peer_ip,
            extensions: Vec::new(),
        };
        if hs.version >= 5 && hs.request == RequestType::Conclusion {
            hs.extensions = parse_extensions(&buf[MIN_LEN..])?;
        }
        Ok(hs)
    }

    /// The packet bytes, header included.
    pub fn encode(&self) -> Vec<u8> {
        let ext_len: usize = self.extensions.iter().map(|e| 4 + e.body.len()).sum();
        let mut out = Vec::with_capacity(MIN_LEN + ext_len);
        out.extend_from_slice(&packet::control(control_type::HANDSHAKE, self.timestamp, self.dest_socket).encode());
        for w in [
            self.version,
            (u32::from(self.encryption) << 16) | u32::from(self.extension),
            self.initial_sequence,
            self.mss,
            self.flow_window,
            self.request.to_u32(),
            self.socket_id,
            self.cookie,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.peer_ip);
        for e in &self.extensions {
            // Bodies come from parsed packets or from this module, both
            // whole words and far below 256 KiB.
            let words = u16::try_from(e.body.len() / 4).unwrap_or(u16::MAX);
            out.extend_from_slice(&e.kind.to_be_bytes());
            out.extend_from_slice(&words.to_be_bytes());
            out.extend_from_slice(&e.body);
        }
        out
    }

    /// The first block of `kind`, if any.
    pub fn extension(&self, kind: u16) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.kind == kind)
    }

    /// The stream id, if the caller sent one. Errors for one that is
    /// present but unusable (empty, too long, NUL inside, not UTF-8).
    pub fn stream_id(&self) -> Result<Option<String>, HandshakeError> {
        self.extension(ext::SID).map(|e| decode_string(&e.body)).transpose()
    }

    /// The caller's SRT version, flags and latencies (HSREQ).
    pub fn srt_request(&self) -> Result<Option<SrtRequest>, HandshakeError> {
        self.extension(ext::HSREQ)
            .map(|e| SrtRequest::parse(&e.body))
            .transpose()
    }

    /// The caller's key material (KMREQ), present when it set a passphrase.
    pub fn key_material(&self) -> Result<Option<KeyMaterial>, HandshakeError> {
        self.extension(ext::KMREQ)
            .map(|e| KeyMaterial::parse(&e.body))
            .transpose()
    }

    /// The listener's answer to an induction: version 5 and the SRT magic
    /// (so an HSv5 caller goes on with HSv5), our cookie, the caller's
    /// address, everything else echoed as libsrt does.
    pub fn induction_answer(&self, cookie: u32, caller: SocketAddr) -> Handshake {
        Handshake {
            timestamp: 0,
            dest_socket: self.socket_id,
            version: 5,
            encryption: 0,
            extension: SRT_MAGIC,
            request: RequestType::Induction,
            cookie,
            peer_ip: encode_peer_address(caller.ip()),
            extensions: Vec::new(),
            ..self.clone()
        }
    }

    /// A rejection of this request, sent back to its sender.
    pub fn rejection(&self, reason: RejectReason, sender: SocketAddr) -> Handshake {
        Handshake {
            timestamp: 0,
            dest_socket: self.socket_id,
            request: RequestType::Rejection(reason),
            peer_ip: encode_peer_address(sender.ip()),
            extensions: Vec::new(),
            ..self.clone()
        }
    }

    /// A caller's induction carrying this conclusion's socket id and
    /// parameters: what the proxy sends an origin before forwarding the
    /// client's conclusion.
    pub fn induction_request(&self, origin: SocketAddr) -> Handshake {
        Handshake {
            timestamp: 0,
            dest_socket: 0,
            version: 4,
            encryption: 0,
            extension: UDT_DGRAM as u16,
            request: RequestType::Induction,
            cookie: 0,
            peer_ip: encode_peer_address(origin.ip()),
            extensions: Vec::new(),
            ..self.clone()
        }
    }
}

fn parse_extensions(mut rest: &[u8]) -> Result<Vec<Extension>, HandshakeError> {
    let mut out: Vec<Extension> = Vec::new();
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let claimed = usize::from(u16::from_be_bytes([rest[2], rest[3]])) * 4;
        rest = &rest[4..];
        if claimed > rest.len() {
            return Err(HandshakeError::ExtensionPastEnd {
                kind,
                claimed,
                left: rest.len(),
            });
        }
        // Two stream ids (or two key materials) would let the proxy and
        // the origin read different ones.
        if matches!(kind, ext::HSREQ | ext::KMREQ | ext::SID) && out.iter().any(|e| e.kind == kind) {
            return Err(HandshakeError::DuplicateExtension(kind));
        }
        out.push(Extension {
            kind,
            body: rest[..claimed].to_vec(),
        });
        rest = &rest[claimed..];
    }
    Ok(out)
}

/// Decodes a string block (stream id, congestion controller): whole words,
/// each stored byte-reversed, NUL-padded at the end.
pub fn decode_string(body: &[u8]) -> Result<String, HandshakeError> {
    if body.len() > MAX_STREAM_ID {
        return Err(HandshakeError::StreamIdTooLong(body.len()));
    }
    let mut bytes: Vec<u8> = body.chunks(4).flat_map(|w| w.iter().rev().copied()).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(HandshakeError::EmptyStreamId);
    }
    if bytes.contains(&0) {
        return Err(HandshakeError::StreamIdNul);
    }
    String::from_utf8(bytes).map_err(|_| HandshakeError::StreamIdEncoding)
}

/// Encodes a string block the way libsrt does.
pub fn encode_string(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(s.len().div_ceil(4) * 4, 0);
    for w in bytes.chunks_mut(4) {
        w.reverse();
    }
    bytes
}

/// HSREQ/HSRSP: the SRT version, capability flags and latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtRequest {
    /// `0x00XXYYZZ` for version XX.YY.ZZ.
    pub version: u32,
    pub flags: u32,
    /// Milliseconds the sender wants to receive with.
    pub receive_latency: u16,
    /// Milliseconds the sender wants its peer to receive with.
    pub send_latency: u16,
}

impl SrtRequest {
    pub fn parse(body: &[u8]) -> Result<Self, HandshakeError> {
        if body.len() != 12 {
            return Err(HandshakeError::ExtensionLength {
                kind: ext::HSREQ,
                len: body.len(),
                expected: 12,
            });
        }
        let latency = word(body, 8);
        Ok(Self {
            version: word(body, 0),
            flags: word(body, 4),
            receive_latency: (latency >> 16) as u16,
            send_latency: (latency & 0xffff) as u16,
        })
    }
}

/// The parts of a key material message (KMREQ) worth a log line; the key
/// itself is wrapped with the passphrase and stays opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMaterial {
    /// 16, 24 or 32 (AES-128/192/256).
    pub key_len: usize,
    /// 2 = AES-CTR, 3 = AES-GCM.
    pub cipher: u8,
}

/// Every KM message starts with this after its first byte.
const KM_SIGN: u16 = 0x2029;

impl KeyMaterial {
    pub fn parse(body: &[u8]) -> Result<Self, HandshakeError> {
        if body.len() < 16 {
            return Err(HandshakeError::ExtensionLength {
                kind: ext::KMREQ,
                len: body.len(),
                expected: 16,
            });
        }
        if u16::from_be_bytes([body[1], body[2]]) != KM_SIGN {
            return Err(HandshakeError::BadKeyMaterial);
        }
        Ok(Self {
            cipher: body[8],
            key_len: usize::from(body[15]) * 4,
        })
    }
}

/// libsrt's peer address field: the address as four 32-bit words, each
/// stored in host (little-endian) order, so every 4-byte group arrives
/// reversed; an IPv4 address fills the first word. IPv4-mapped IPv6
/// addresses (what a dual-stack socket reports) are written as IPv4.
pub fn encode_peer_address(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    for w in out.chunks_mut(4) {
        w.reverse();
    }
    out
}

/// The inverse of [`encode_peer_address`]; three zero words after the first
/// mean IPv4.
pub fn decode_peer_address(raw: &[u8; 16]) -> IpAddr {
    let mut bytes = *raw;
    for w in bytes.chunks_mut(4) {
        w.reverse();
    }
    if bytes[4..].iter().all(|&b| b == 0) {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Rewrites the cookie of a handshake packet that [`Handshake::parse`]
/// accepted.
pub fn set_cookie(packet: &mut [u8], cookie: u32) {
    packet[COOKIE_AT..COOKIE_AT + 4].copy_from_slice(&cookie.to_be_bytes());
}

/// Rewrites the peer address of a handshake packet that
/// [`Handshake::parse`] accepted: each leg tells its receiver the address
/// its own sender sees.
pub fn set_peer_address(packet: &mut [u8], ip: IpAddr) {
    packet[PEER_IP_AT..PEER_IP_AT + 16].copy_from_slice(&encode_peer_address(ip));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::packet::tests::hex;
    use proptest::prelude::*;

    // Captured between ffmpeg 5.1 (libsrt 1.5.1) publishing with
    // streamid=#!::r=live/livestream,m=publish and srt-live-transmit.
    const INDUCTION: &str = "80000000000000000000185d0000000000000004000000027594c535000005dc000020000000000120701c95000000000100007f000000000000000000000000";
    const INDUCTION_ANSWER: &str = "8000000000000000000a155e20701c950000000500004a177594c535000005dc000020000000000120701c9529e2502a0100007f000000000000000000000000";
    const CONCLUSION: &str = "800000000000000000001acb0000000000000005000000057594c535000005dc00002000ffffffff20701c9529e2502a0100007f0000000000000000000000000001000300010501000000bf00780000000500083a3a2123696c3d726c2f657673657669616572743d6d2c6d6c62757000687369";
    const CONCLUSION_ANSWER: &str = "80000000000000000000019f20701c9500000005000000017594c535000005dc00002000ffffffff0244979029e2502a0100007f0000000000000000000000000002000300010501000000bf00780078";
    // The same with passphrase set on both ends: the conclusion carries a
    // KMREQ, the answer a KMRSP.
    const CONCLUSION_KM: &str = "8000000000000000000007b0000000000000000500020007702c9678000005dc00002000ffffffff046d4d1408ad58b40100007f0000000000000000000000000001000300010501000000bf00780000000500083a3a2123696c3d726c2f657673657669616572743d6d2c6d6c627570006873690003000e1220290100000000020002000000040480804f87e1bb6607672fee77368013f49526323424a98ce512dfecdd6c8b32c3e134db2f295a1da0";

    fn localhost() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn a_libsrt_induction() {
        let hs = Handshake::parse(&hex(INDUCTION)).unwrap();
        assert_eq!(hs.version, 4);
        assert_eq!(u32::from(hs.extension), UDT_DGRAM);
        assert_eq!(hs.request, RequestType::Induction);
        assert_eq!(hs.socket_id, 0x2070_1c95);
        assert_eq!(hs.cookie, 0);
        assert_eq!(hs.dest_socket, 0);
        assert_eq!(decode_peer_address(&hs.peer_ip), localhost().ip());
        assert_eq!(hs.encode(), hex(INDUCTION), "re-encodes byte for byte");
    }

    #[test]
    fn our_induction_answer_is_libsrts_but_for_the_cookie() {
        let hs = Handshake::parse(&hex(INDUCTION)).unwrap();
        let ours = hs.induction_answer(0x29e2_502a, localhost());
        let mut theirs = Handshake::parse(&hex(INDUCTION_ANSWER)).unwrap();
        theirs.timestamp = 0;
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_libsrt_conclusion() {
        let hs = Handshake::parse(&hex(CONCLUSION)).unwrap();
        assert_eq!(hs.version, 5);
        assert_eq!(hs.request, RequestType::Conclusion);
        assert_eq!(hs.extension, ext_flag::HSREQ | ext_flag::CONFIG);
        assert_eq!(hs.cookie, 0x29e2_502a);
        assert_eq!(
            hs.stream_id().unwrap().as_deref(),
            Some("#!::r=live/livestream,m=publish")
        );
        let req = hs.srt_request().unwrap().unwrap();
        assert_eq!(req.version, 0x0001_0501);
        assert_eq!((req.receive_latency, req.send_latency), (120, 0));
        assert_eq!(hs.key_material().unwrap(), None);
        assert_eq!(hs.encode(), hex(CONCLUSION));
    }

    #[test]
    fn a_libsrt_conclusion_answer() {
        let hs = Handshake::parse(&hex(CONCLUSION_ANSWER)).unwrap();
        assert_eq!(hs.request, RequestType::Conclusion);
        assert_eq!(hs.dest_socket, 0x2070_1c95);
        assert_eq!(hs.socket_id, 0x0244_9790);
        assert_eq!(hs.extensions[0].kind, ext::HSRSP);
    }

    #[test]
    fn an_encrypted_conclusion() {
        let hs = Handshake::parse(&hex(CONCLUSION_KM)).unwrap();
        assert_eq!(hs.encryption, 2, "AES-128 advertised");
        let km = hs.key_material().unwrap().unwrap();
        assert_eq!((km.key_len, km.cipher), (16, 2));
        assert_eq!(hs.encode(), hex(CONCLUSION_KM));
    }

    #[test]
    fn cookie_and_peer_address_are_rewritten_in_place() {
        let mut bytes = hex(CONCLUSION);
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        set_cookie(&mut bytes, 0xdead_beef);
        set_peer_address(&mut bytes, v6);
        let hs = Handshake::parse(&bytes).unwrap();
        assert_eq!(hs.cookie, 0xdead_beef);
        assert_eq!(decode_peer_address(&hs.peer_ip), v6);
        let before = Handshake::parse(&hex(CONCLUSION)).unwrap();
        assert_eq!(hs.extensions, before.extensions);
        assert_eq!(hs.socket_id, before.socket_id);
    }

    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(encode_peer_address(mapped), encode_peer_address(localhost().ip()));
    }

    #[test]
    fn rejections_carry_1000_plus_the_reason() {
        let hs = Handshake::parse(&hex(CONCLUSION)).unwrap();
        let bytes = hs.rejection(RejectReason::UNAVAILABLE, localhost()).encode();
        assert_eq!(word(&bytes, HEADER_LEN + 20), 2503);
        let back = Handshake::parse(&bytes).unwrap();
        assert_eq!(back.request, RequestType::Rejection(RejectReason::UNAVAILABLE));
        assert_eq!(back.dest_socket, hs.socket_id);
        assert!(back.extensions.is_empty());
    }

    fn conclusion_with(extensions: &[u8]) -> Vec<u8> {
        let mut bytes = hex(CONCLUSION)[..MIN_LEN].to_vec();
        bytes.extend_from_slice(extensions);
        bytes
    }

    fn sid_block(body: &[u8], words: u16) -> Vec<u8> {
        let mut out = ext::SID.to_be_bytes().to_vec();
        out.extend_from_slice(&words.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn extension_lengths_past_the_end_are_refused() {
        // HSREQ claiming 4 words with 3 present.
        let bytes = conclusion_with(&hex("000100040001050100000bf000780000"));
        assert_eq!(
            Handshake::parse(&bytes).unwrap_err(),
            HandshakeError::ExtensionPastEnd {
                kind: 1,
                claimed: 16,
                left: 12
            }
        );
        // A length of 0xffff words and nothing after it.
        let bytes = conclusion_with(&hex("0005ffff"));
        assert!(matches!(
            Handshake::parse(&bytes),
            Err(HandshakeError::ExtensionPastEnd { claimed: 262_140, .. })
        ));
    }

    #[test]
    fn unknown_extensions_are_skipped_by_their_length() {
        let mut blocks = hex("00630002aaaaaaaabbbbbbbb"); // type 99, 2 words
        blocks.extend(sid_block(&encode_string("live/s"), 2));
        let hs = Handshake::parse(&conclusion_with(&blocks)).unwrap();
        assert_eq!(hs.extensions.len(), 2);
        assert_eq!(hs.stream_id().unwrap().as_deref(), Some("live/s"));
        assert_eq!(hs.encode(), conclusion_with(&blocks));
    }

    #[test]
    fn stream_ids_of_every_padding() {
        for s in ["a/b", "ab/c", "abc/d", "abcd/e", "live/livestream"] {
            let body = encode_string(s);
            assert_eq!(body.len() % 4, 0);
            let hs = Handshake::parse(&conclusion_with(&sid_block(&body, (body.len() / 4) as u16))).unwrap();
            assert_eq!(hs.stream_id().unwrap().as_deref(), Some(s), "{s}");
        }
    }

    #[test]
    fn a_stream_id_cut_short_inside_its_last_word_is_refused() {
        // "live/s" needs 2 words; the packet ends 2 or 3 bytes into the
        // second one.
        let body = encode_string("live/s");
        for keep in [6, 7] {
            let bytes = conclusion_with(&sid_block(&body[..keep], 2));
            assert!(
                matches!(
                    Handshake::parse(&bytes),
                    Err(HandshakeError::ExtensionPastEnd {
                        kind: ext::SID,
                        claimed: 8,
                        ..
                    })
                ),
                "{keep} bytes"
            );
        }
    }

    #[test]
    fn bad_stream_ids() {
        let cases: Vec<(Vec<u8>, HandshakeError)> = vec![
            (vec![], HandshakeError::EmptyStreamId),
            (vec![0; 8], HandshakeError::EmptyStreamId),
            (encode_string(&"a".repeat(513)), HandshakeError::StreamIdTooLong(516)),
            (encode_string("a\0b/c"), HandshakeError::StreamIdNul),
            (vec![0xff; 4], HandshakeError::StreamIdEncoding),
        ];
        for (body, error) in cases {
            let hs = Handshake::parse(&conclusion_with(&sid_block(&body, (body.len() / 4) as u16))).unwrap();
            assert_eq!(hs.stream_id().unwrap_err(), error);
        }
        let longest = "a".repeat(MAX_STREAM_ID);
        let body = encode_string(&longest);
        let hs = Handshake::parse(&conclusion_with(&sid_block(&body, 128))).unwrap();
        assert_eq!(hs.stream_id().unwrap(), Some(longest));
    }

    #[test]
    fn two_stream_ids_are_refused() {
        let mut blocks = sid_block(&encode_string("live/a"), 2);
        blocks.extend(sid_block(&encode_string("live/b"), 2));
        assert_eq!(
            Handshake::parse(&conclusion_with(&blocks)).unwrap_err(),
            HandshakeError::DuplicateExtension(ext::SID)
        );
    }

    #[test]
    fn short_and_foreign_packets() {
        assert!(matches!(
            Handshake::parse(&[0x80; 10]),
            Err(HandshakeError::TooShort(_))
        ));
        assert_eq!(
            Handshake::parse(&hex(INDUCTION)[..MIN_LEN - 1]).unwrap_err(),
            HandshakeError::Truncated(MIN_LEN - 1)
        );
        let keepalive = hex("8001000000000000000f7d1920701c9500000000");
        assert_eq!(Handshake::parse(&keepalive).unwrap_err(), HandshakeError::NotHandshake);
        // Trailing bytes that make no whole word are ignored, as libsrt does.
        let mut bytes = hex(CONCLUSION);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Handshake::parse(&bytes).unwrap().extensions.len(), 2);
    }

    #[test]
    fn bad_key_material_and_hsreq() {
        let mut blocks = hex("00030004");
        blocks.extend_from_slice(&[0xaa; 16]);
        let hs = Handshake::parse(&conclusion_with(&blocks)).unwrap();
        assert_eq!(hs.key_material().unwrap_err(), HandshakeError::BadKeyMaterial);
        let hs = Handshake::parse(&conclusion_with(&hex("0001000100010501"))).unwrap();
        assert!(matches!(
            hs.srt_request(),
            Err(HandshakeError::ExtensionLength { len: 4, .. })
        ));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(hs) = Handshake::parse(&bytes) {
                let _ = hs.stream_id();
                let _ = hs.srt_request();
                let _ = hs.key_material();
            }
        }

        #[test]
        fn hostile_extensions_never_panic(ext in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(hs) = Handshake::parse(&conclusion_with(&ext)) {
                let _ = hs.stream_id();
                let _ = hs.srt_request();
                let _ = hs.key_material();
                // Whatever parses re-encodes to the whole words it came in.
                let whole = MIN_LEN + ext.len() / 4 * 4;
                prop_assert_eq!(hs.encode(), conclusion_with(&ext)[..whole].to_vec());
            }
        }

        #[test]
        fn strings_round_trip(s in "[a-zA-Z0-9/#!:=,._-]{1,512}") {
            prop_assert_eq!(decode_string(&encode_string(&s)).unwrap(), s);
        }

        #[test]
        fn peer_addresses_round_trip(v6 in any::<[u8; 16]>(), v4 in any::<[u8; 4]>()) {
            let v4 = IpAddr::from(v4);
            prop_assert_eq!(decode_peer_address(&encode_peer_address(v4)), v4);
            let v6 = IpAddr::V6(Ipv6Addr::from(v6));
            // All-zero tail words read as IPv4 (libsrt's own ambiguity).
            let tail_set = matches!(v6, IpAddr::V6(a) if a.octets()[4..] != [0u8; 12]);
            if v6.to_canonical() == v6 && tail_set {
                prop_assert_eq!(decode_peer_address(&encode_peer_address(v6)), v6);
            }
        }
    }
}
