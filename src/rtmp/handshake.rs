//! The RTMP handshake: C0/C1/C2 from the client, S0/S1/S2 from the server.
//!
//! Two variants are in use. The simple one is the published specification:
//! each side echoes the other's random packet. The digest ("complex") one,
//! which Flash Player, FFmpeg and OBS send, hides an HMAC-SHA256 digest in
//! C1 at an offset derived from C1 itself, and expects S1 to carry a digest
//! made with the server key and S2 to be signed with a key derived from the
//! client's digest. A server that answers a digest C1 with a plain echo
//! works for publishing but FFmpeg refuses it when playing, so the server
//! side here detects and answers both, as SRS does. As a client the proxy
//! sends the simple handshake, which SRS accepts.
//!
//! The packet builders are pure functions over byte arrays; `accept` and
//! `connect` drive them over a socket with a deadline. Nothing here reads
//! past the handshake, so the caller's next read starts at the first chunk.

use std::time::Duration;

use rand::RngCore;
use ring::hmac;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The only version byte RTMP uses (6 and 8 are RTMPE, unsupported).
pub const RTMP_VERSION: u8 = 3;
/// C1, C2, S1 and S2 are all this long.
pub const PACKET_SIZE: usize = 1536;

const DIGEST_SIZE: usize = 32;

/// The 32 bytes both published handshake keys end with.
const KEY_TAIL: [u8; 32] = [
    0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57, 0x6e, 0xec, 0x5d,
    0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
];
const FMS_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";
const FP_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";

/// Where the digest block sits in a digest-handshake C1/S1: after the key
/// block (schema 0) or before it (schema 1). Clients pick one; the server
/// answers in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    KeyFirst,
    DigestFirst,
}

/// Which handshake a client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Simple,
    Digest(Schema),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("unsupported RTMP version byte {0:#04x}{hint}", hint = version_hint(*.0))]
    Version(u8),
    #[error("peer closed the connection during the handshake")]
    Truncated,
    #[error("handshake not completed within {0:?}")]
    Timeout(Duration),
    #[error("handshake I/O: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for HandshakeError {
    /// A peer that hangs up mid-handshake shows up as EOF on read or as a
    /// broken pipe/reset on write; either way it is the same event.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted => HandshakeError::Truncated,
            _ => HandshakeError::Io(e),
        }
    }
}

/// What a wrong first byte most likely means, so the log line says why.
fn version_hint(byte: u8) -> &'static str {
    match byte {
        0x16 => " (a TLS ClientHello; RTMPS is not served here)",
        0x06 | 0x08 => " (RTMPE is not supported)",
        b'A'..=b'Z' => " (looks like an HTTP request)",
        _ => " (not RTMP)",
    }
}

/// Offset of the 32-byte digest inside a digest-handshake packet: the first
/// four bytes of the digest block, summed, pick a spot within it.
fn digest_offset(packet: &[u8; PACKET_SIZE], schema: Schema) -> usize {
    let block = match schema {
        Schema::DigestFirst => 8,
        Schema::KeyFirst => 8 + 764,
    };
    let sum: usize = packet[block..block + 4].iter().map(|b| usize::from(*b)).sum();
    block + 4 + sum % 728
}

/// HMAC-SHA256 over the packet with the digest itself left out.
fn packet_digest(packet: &[u8; PACKET_SIZE], offset: usize, key: &[u8]) -> [u8; DIGEST_SIZE] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&packet[..offset]);
    ctx.update(&packet[offset + DIGEST_SIZE..]);
    to_digest(ctx.sign())
}

fn to_digest(tag: hmac::Tag) -> [u8; DIGEST_SIZE] {
    let mut out = [0u8; DIGEST_SIZE];
    out.copy_from_slice(tag.as_ref());
    out
}

fn full_key(text: &[u8]) -> Vec<u8> {
    [text, &KEY_TAIL[..]].concat()
}

/// Finds a valid digest in a packet signed with `key`, trying schema 0
/// first as SRS does.
fn find_digest(packet: &[u8; PACKET_SIZE], key: &[u8]) -> Option<(Schema, [u8; DIGEST_SIZE])> {
    [Schema::KeyFirst, Schema::DigestFirst].into_iter().find_map(|schema| {
        let offset = digest_offset(packet, schema);
        let expected = packet_digest(packet, offset, key);
        (packet[offset..offset + DIGEST_SIZE] == expected).then_some((schema, expected))
    })
}

/// The digest a client put in its C1, if it used the digest handshake.
pub fn client_digest(c1: &[u8; PACKET_SIZE]) -> Option<(Schema, [u8; DIGEST_SIZE])> {
    find_digest(c1, FP_TEXT)
}

/// Fills `packet` with random bytes and writes a digest made with `key` at
/// the `schema` offset: a C1 (player key) or S1 (server key).
fn signed_packet(schema: Schema, key: &[u8], rng: &mut impl RngCore) -> Box<[u8; PACKET_SIZE]> {
    let mut packet = Box::new([0u8; PACKET_SIZE]);
    rng.fill_bytes(&mut packet[8..]);
    // Time 0, then a non-zero version: peers take zero to mean "simple".
    packet[4..8].copy_from_slice(&[4, 5, 0, 1]);
    let offset = digest_offset(&packet, schema);
    let digest = packet_digest(&packet, offset, key);
    packet[offset..offset + DIGEST_SIZE].copy_from_slice(&digest);
    packet
}

/// S2 for the digest handshake: random bytes signed with a key derived from
/// the client's C1 digest.
fn signed_s2(c1_digest: &[u8; DIGEST_SIZE], rng: &mut impl RngCore) -> Box<[u8; PACKET_SIZE]> {
    let mut s2 = Box::new([0u8; PACKET_SIZE]);
    rng.fill_bytes(&mut s2[..]);
    let signature = response_signature(&full_key(FMS_TEXT), c1_digest, &s2[..]);
    s2[PACKET_SIZE - DIGEST_SIZE..].copy_from_slice(&signature);
    s2
}

/// The signature over the first 1504 bytes of a C2/S2.
fn response_signature(key: &[u8], peer_digest: &[u8; DIGEST_SIZE], packet: &[u8]) -> [u8; DIGEST_SIZE] {
    let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), peer_digest);
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    to_digest(hmac::sign(&key, &packet[..PACKET_SIZE - DIGEST_SIZE]))
}

/// The server's S0, S1 and S2 (3073 bytes) for a client's C0 and C1.
pub fn server_reply(c0: u8, c1: &[u8; PACKET_SIZE], rng: &mut impl RngCore) -> Result<(Vec<u8>, Kind), HandshakeError> {
    if c0 != RTMP_VERSION {
        return Err(HandshakeError::Version(c0));
    }
    let mut out = Vec::with_capacity(1 + 2 * PACKET_SIZE);
    out.push(RTMP_VERSION);
    match client_digest(c1) {
        Some((schema, digest)) => {
            out.extend_from_slice(&signed_packet(schema, FMS_TEXT, rng)[..]);
            out.extend_from_slice(&signed_s2(&digest, rng)[..]);
            Ok((out, Kind::Digest(schema)))
        }
        None => {
            let mut s1 = [0u8; PACKET_SIZE];
            rng.fill_bytes(&mut s1[8..]);
            out.extend_from_slice(&s1);
            out.extend_from_slice(c1);
            Ok((out, Kind::Simple))
        }
    }
}

/// A client's C0 and C1 for the simple handshake (1537 bytes).
pub fn client_hello(rng: &mut impl RngCore) -> Vec<u8> {
    let mut out = vec![0u8; 1 + PACKET_SIZE];
    out[0] = RTMP_VERSION;
    rng.fill_bytes(&mut out[9..]);
    out
}

/// The client's C2 for the server's S0 and S1: an echo of S1.
pub fn client_reply(s0: u8, s1: &[u8; PACKET_SIZE]) -> Result<[u8; PACKET_SIZE], HandshakeError> {
    if s0 != RTMP_VERSION {
        return Err(HandshakeError::Version(s0));
    }
    Ok(*s1)
}

/// Runs the server side of the handshake on a fresh connection.
pub async fn accept<S>(io: &mut S, timeout: Duration) -> Result<Kind, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, accept_inner(io))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn accept_inner<S>(io: &mut S) -> Result<Kind, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The version byte alone decides whether this is RTMP at all; check it
    // before waiting for 1536 more bytes that an HTTP client never sends.
    let c0 = read_exact_or_truncated(io, 1).await?[0];
    if c0 != RTMP_VERSION {
        return Err(HandshakeError::Version(c0));
    }
    let c1 = read_packet(io).await?;
    let (reply, kind) = server_reply(c0, &c1, &mut rand::rng())?;
    io.write_all(&reply).await?;
    io.flush().await?;
    // C2 carries nothing the server needs; SRS does not verify it either.
    read_packet(io).await?;
    Ok(kind)
}

/// Runs the client side of the handshake against a server.
pub async fn connect<S>(io: &mut S, timeout: Duration) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, connect_inner(io))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn connect_inner<S>(io: &mut S) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = client_hello(&mut rand::rng());
    io.write_all(&hello).await?;
    io.flush().await?;
    let s0 = read_exact_or_truncated(io, 1).await?[0];
    if s0 != RTMP_VERSION {
        return Err(HandshakeError::Version(s0));
    }
    let s1 = read_packet(io).await?;
    let c2 = client_reply(s0, &s1)?;
    // S2 should echo C1; SRS answers a simple C1 that way, but nothing
    // depends on it, so it is read and not checked (as FFmpeg does).
    read_packet(io).await?;
    io.write_all(&c2).await?;
    io.flush().await?;
    Ok(())
}

async fn read_packet<S: AsyncRead + Unpin>(io: &mut S) -> Result<Box<[u8; PACKET_SIZE]>, HandshakeError> {
    let mut packet = Box::new([0u8; PACKET_SIZE]);
    read_into(io, &mut packet[..]).await?;
    Ok(packet)
}

async fn read_exact_or_truncated<S: AsyncRead + Unpin>(io: &mut S, n: usize) -> Result<Vec<u8>, HandshakeError> {
    let mut buf = vec![0u8; n];
    read_into(io, &mut buf).await?;
    Ok(buf)
}

async fn read_into<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> Result<(), HandshakeError> {
    io.read_exact(buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn packet(bytes: &[u8]) -> Box<[u8; PACKET_SIZE]> {
        let mut p = Box::new([0u8; PACKET_SIZE]);
        p.copy_from_slice(bytes);
        p
    }

    /// What a Flash-style client sends: C1 signed with the player key.
    fn digest_c1(schema: Schema) -> Box<[u8; PACKET_SIZE]> {
        signed_packet(schema, FP_TEXT, &mut rng())
    }

    #[test]
    fn the_keys_are_the_published_lengths() {
        assert_eq!(full_key(FMS_TEXT).len(), 68);
        assert_eq!(full_key(FP_TEXT).len(), 62);
    }

    #[test]
    fn digest_offsets_stay_inside_the_digest_block() {
        let mut p = Box::new([0xffu8; PACKET_SIZE]);
        // Largest sum: 4 * 255 = 1020, 1020 % 728 = 292.
        assert_eq!(digest_offset(&p, Schema::DigestFirst), 8 + 4 + 292);
        assert_eq!(digest_offset(&p, Schema::KeyFirst), 772 + 4 + 292);
        p.fill(0);
        assert_eq!(digest_offset(&p, Schema::DigestFirst), 12);
        for schema in [Schema::DigestFirst, Schema::KeyFirst] {
            for fill in [0u8, 1, 0x7f, 0xb6, 0xff] {
                p.fill(fill);
                let off = digest_offset(&p, schema);
                assert!(off + DIGEST_SIZE <= PACKET_SIZE);
            }
        }
    }

    #[test]
    fn simple_c1_gets_an_echo_in_s2() {
        let hello = client_hello(&mut rng());
        let c1 = packet(&hello[1..]);
        let (reply, kind) = server_reply(hello[0], &c1, &mut rng()).unwrap();
        assert_eq!(kind, Kind::Simple);
        assert_eq!(reply.len(), 1 + 2 * PACKET_SIZE);
        assert_eq!(reply[0], RTMP_VERSION);
        assert_eq!(&reply[1 + PACKET_SIZE..], &c1[..]);
        // S1 announces the simple handshake: zero version field.
        assert_eq!(&reply[5..9], &[0, 0, 0, 0]);
    }

    #[test]
    fn digest_c1_in_either_schema_gets_signed_s1_and_s2() {
        for schema in [Schema::KeyFirst, Schema::DigestFirst] {
            let c1 = digest_c1(schema);
            let (schema_found, c1_digest) = client_digest(&c1).expect("valid C1 digest");
            assert_eq!(schema_found, schema);

            let (reply, kind) = server_reply(RTMP_VERSION, &c1, &mut rng()).unwrap();
            assert_eq!(kind, Kind::Digest(schema));
            let s1 = packet(&reply[1..1 + PACKET_SIZE]);
            let s2 = packet(&reply[1 + PACKET_SIZE..]);
            // S1 carries a server-key digest where the client looks for it.
            assert_eq!(find_digest(&s1, FMS_TEXT).map(|(s, _)| s), Some(schema));
            // S2 is signed with the key derived from the client's digest.
            let signature = response_signature(&full_key(FMS_TEXT), &c1_digest, &s2[..]);
            assert_eq!(&s2[PACKET_SIZE - DIGEST_SIZE..], &signature);
        }
    }

    #[test]
    fn a_corrupted_digest_falls_back_to_the_simple_handshake() {
        let mut c1 = digest_c1(Schema::DigestFirst);
        let offset = digest_offset(&c1, Schema::DigestFirst);
        c1[offset] ^= 1;
        let (reply, kind) = server_reply(RTMP_VERSION, &c1, &mut rng()).unwrap();
        assert_eq!(kind, Kind::Simple);
        assert_eq!(&reply[1 + PACKET_SIZE..], &c1[..]);
    }

    #[test]
    fn wrong_version_bytes_are_rejected_with_a_reason() {
        let c1 = Box::new([0u8; PACKET_SIZE]);
        for (byte, hint) in [
            (0u8, "not RTMP"),
            (b'G', "HTTP"),
            (0x16, "TLS"),
            (6, "RTMPE"),
            (0xff, "not RTMP"),
        ] {
            let err = server_reply(byte, &c1, &mut rng()).unwrap_err();
            assert!(matches!(err, HandshakeError::Version(b) if b == byte));
            assert!(err.to_string().contains(hint), "{err}");
            assert!(matches!(client_reply(byte, &c1), Err(HandshakeError::Version(_))));
        }
    }

    #[test]
    fn an_independent_digest_client_completes_against_our_server() {
        use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
        let mut client = Handshake::new(PeerType::Client);
        let c0c1 = client.generate_outbound_p0_and_p1().unwrap();
        let c1 = packet(&c0c1[1..]);
        let (reply, kind) = server_reply(c0c1[0], &c1, &mut rng()).unwrap();
        assert!(matches!(kind, Kind::Digest(_)), "rml_rtmp sends a digest C1");
        let c2 = match client.process_bytes(&reply).unwrap() {
            HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
            other => panic!("handshake not completed: {other:?}"),
        };
        // The client signs C2 with a key derived from the digest it found in
        // our S1, so this checks S1's digest placement from the other side.
        let s1 = packet(&reply[1..1 + PACKET_SIZE]);
        let (_, s1_digest) = find_digest(&s1, FMS_TEXT).unwrap();
        let c2 = packet(&c2);
        let expected = response_signature(&full_key(FP_TEXT), &s1_digest, &c2[..]);
        assert_eq!(&c2[PACKET_SIZE - DIGEST_SIZE..], &expected);
    }

    #[test]
    fn our_client_completes_against_an_independent_server() {
        use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
        let mut server = Handshake::new(PeerType::Server);
        let hello = client_hello(&mut rng());
        let reply = match server.process_bytes(&hello).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => response_bytes,
            other => panic!("unexpected {other:?}"),
        };
        let c2 = client_reply(reply[0], &packet(&reply[1..1 + PACKET_SIZE])).unwrap();
        assert!(matches!(
            server.process_bytes(&c2).unwrap(),
            HandshakeProcessResult::Completed { .. }
        ));
    }

    #[tokio::test]
    async fn accept_and_connect_talk_to_each_other() {
        let (mut a, mut b) = tokio::io::duplex(8192);
        let t = Duration::from_secs(5);
        let (server, client) = tokio::join!(accept(&mut a, t), connect(&mut b, t));
        assert_eq!(server.unwrap(), Kind::Simple);
        client.unwrap();
        // Nothing beyond the handshake was consumed.
        b.write_all(b"next").await.unwrap();
        let mut next = [0u8; 4];
        a.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
    }

    #[tokio::test]
    async fn accept_rejects_http_without_waiting_for_more() {
        let (mut a, mut b) = tokio::io::duplex(8192);
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = accept(&mut a, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Version(b'G')), "{err}");
    }

    #[tokio::test]
    async fn truncated_handshakes_are_reported_as_such() {
        for sent in [0usize, 1, 100, 1537, 1537 + 100] {
            let (mut a, mut b) = tokio::io::duplex(8192);
            let mut bytes = client_hello(&mut rng());
            bytes.resize(sent, 0);
            b.write_all(&bytes).await.unwrap();
            drop(b);
            let err = accept(&mut a, Duration::from_secs(30)).await.unwrap_err();
            assert!(matches!(err, HandshakeError::Truncated), "{sent}: {err}");
        }
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(8192);
        let err = accept(&mut a, Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
        let (mut c, _d) = tokio::io::duplex(8192);
        let err = connect(&mut c, Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
    }
}
