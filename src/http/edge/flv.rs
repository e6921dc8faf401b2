//! FLV as an origin sends it over HTTP: the file header, then tags, each
//! followed by its "previous tag size". Decoding turns bytes into
//! [`Tag`]s without copying payloads; [`classify`] says what a tag is to a
//! player that joins late (decoder configuration, keyframe, metadata);
//! the writers build the per-player tag header.
//!
//! Pure functions over bytes: nothing here touches a socket. Every length
//! is checked before it is trusted; bytes that cannot be FLV are an
//! [`FlvError`], bytes that are not all there yet are `Ok(None)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The file header's fixed part ("FLV", version, flags, data offset).
pub const HEADER_LEN: usize = 9;
/// A tag header: type, data size (24 bits), timestamp (24 + 8 bits),
/// stream id (24 bits).
pub const TAG_HEADER_LEN: usize = 11;
/// The "previous tag size" after every tag (and before the first).
pub const PREVIOUS_SIZE_LEN: usize = 4;
/// Largest data offset a header may announce: the header is 9 bytes, a
/// writer has no reason to pad it much.
const MAX_DATA_OFFSET: u32 = 1024;

/// Tag types (the low five bits of the first header byte).
pub mod tag_type {
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const SCRIPT: u8 = 18;
}

/// The file header of the FLV the proxy writes: version 1, audio and
/// video, then the zero "previous tag size" before the first tag.
pub const FILE_HEADER: &[u8] = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00";

/// One tag; the payload shares the buffer it was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// 8, 9 or 18.
    pub tag_type: u8,
    /// Milliseconds, 32 bits (the header's extended byte is the top one).
    pub timestamp: u32,
    pub payload: Bytes,
}

/// What [`FlvDecoder::decode`] found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The file header; `flags` says audio (4) and/or video (1).
    Header {
        flags: u8,
    },
    Tag(Tag),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not FLV: the body does not start with the FLV signature")]
    Signature,
    #[error("FLV version {0} (only 1 exists)")]
    Version(u8),
    #[error("FLV header announces a data offset of {0} bytes")]
    DataOffset(u32),
    #[error("FLV tag of type {0} (only audio 8, video 9 and script 18 exist)")]
    TagType(u8),
    #[error("FLV tag of {size} bytes exceeds the {limit}-byte limit")]
    TagTooLarge { size: u32, limit: u32 },
    #[error("FLV previous tag size {found} after a tag of {expected} bytes")]
    PreviousTagSize { expected: u32, found: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tags,
}

/// Turns an FLV byte stream into its header and tags.
#[derive(Debug)]
pub struct FlvDecoder {
    state: State,
    /// Largest tag data size accepted.
    max_tag: u32,
}

impl FlvDecoder {
    /// `max_tag` bounds every tag's data size (a tag becomes one RTMP
    /// message, so the RTMP message limit is the natural one).
    pub fn new(max_tag: u32) -> Self {
        Self {
            state: State::Header,
            max_tag,
        }
    }

    /// The next header or tag from the front of `buf`, consuming its bytes;
    /// `Ok(None)` (consuming nothing) while it is incomplete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FlvError> {
        match self.state {
            State::Header => {
                // Checked byte by byte so garbage fails before 13 bytes come.
                for (i, want) in b"FLV".iter().enumerate() {
                    match buf.get(i) {
                        Some(b) if b == want => {}
                        Some(_) => return Err(FlvError::Signature),
                        None => return Ok(None),
                    }
                }
                let Some(h) = buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                if h[3] != 1 {
                    return Err(FlvError::Version(h[3]));
                }
                let flags = h[4];
                let offset = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
                if !(HEADER_LEN as u32..=MAX_DATA_OFFSET).contains(&offset) {
                    return Err(FlvError::DataOffset(offset));
                }
                let total = offset as usize + PREVIOUS_SIZE_LEN;
                if buf.len() < total {
                    return Ok(None);
                }
                buf.advance(total);
                self.state = State::Tags;
                Ok(Some(Item::Header { flags }))
            }
            State::Tags => {
                let Some(h) = buf.get(..TAG_HEADER_LEN) else {
                    return Ok(None);
                };
                // Bit 5 is the "filter" (encrypted) flag; the type is below.
                let tag_type = h[0] & 0x1f;
                if !matches!(tag_type, tag_type::AUDIO | tag_type::VIDEO | tag_type::SCRIPT) {
                    return Err(FlvError::TagType(h[0]));
                }
                let size = u32::from_be_bytes([0, h[1], h[2], h[3]]);
                if size > self.max_tag {
                    return Err(FlvError::TagTooLarge {
                        size,
                        limit: self.max_tag,
                    });
                }
                let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
                let end = TAG_HEADER_LEN + size as usize;
                let Some(previous) = buf.get(end..end + PREVIOUS_SIZE_LEN) else {
                    return Ok(None);
                };
                let found = u32::from_be_bytes([previous[0], previous[1], previous[2], previous[3]]);
                let expected = TAG_HEADER_LEN as u32 + size;
                if found != expected {
                    return Err(FlvError::PreviousTagSize { expected, found });
                }
                buf.advance(TAG_HEADER_LEN);
                let payload = buf.split_to(size as usize).freeze();
                buf.advance(PREVIOUS_SIZE_LEN);
                Ok(Some(Item::Tag(Tag {
                    tag_type,
                    timestamp,
                    payload,
                })))
            }
        }
    }
}

/// Which elementary stream a tag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    Audio,
    Video,
    Script,
}

/// What a tag is to a player that joins late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decoder configuration (AVC/HEVC sequence header, AAC
    /// AudioSpecificConfig, enhanced-RTMP `SequenceStart` or
    /// `MultichannelConfig`): the latest of each `variant` is kept and sent
    /// to every joining player before any frame.
    Config { variant: u8 },
    /// A video frame a decoder can start at.
    Keyframe,
    /// Any other audio or video frame.
    Frame,
    /// `onMetaData`: the latest is kept for joining players.
    Metadata,
    /// Other script data (cue points, text).
    Data,
}

/// Track and role of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub track: Track,
    pub role: Role,
}

/// Legacy video codec ids whose second byte is a packet type (0 =
/// sequence header): AVC, and HEVC as Chinese CDNs and SRS number it.
const CODEC_AVC: u8 = 7;
const CODEC_HEVC_LEGACY: u8 = 12;
/// Legacy audio: AAC, whose second byte is a packet type (0 = config).
const SOUND_AAC: u8 = 10;
/// Enhanced audio (the sound format that means "ExHeader").
const SOUND_EX_HEADER: u8 = 9;

/// Enhanced-RTMP packet types (video and audio share the numbers that
/// matter here).
mod packet {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const CODED_FRAMES_X: u8 = 3;
    /// Audio: multichannel configuration; video: metadata (HDR).
    pub const AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
    pub const VIDEO_MPEG2TS_SEQUENCE_START: u8 = 5;
    pub const AUDIO_MULTITRACK: u8 = 5;
    pub const VIDEO_MULTITRACK: u8 = 6;
    /// A prefix carrying a modifier (a nanosecond timestamp offset), then
    /// the real packet type; the same number for audio and video.
    pub const MOD_EX: u8 = 7;
}
/// Video frame types.
const FRAME_KEY: u8 = 1;
/// A video "command" frame: no picture.
const FRAME_COMMAND: u8 = 5;

/// Classifies a tag from its type and the first bytes of its payload.
pub fn classify(tag_type: u8, payload: &[u8]) -> Class {
    match tag_type {
        tag_type::VIDEO => Class {
            track: Track::Video,
            role: video_role(payload),
        },
        tag_type::AUDIO => Class {
            track: Track::Audio,
            role: audio_role(payload),
        },
        _ => Class {
            track: Track::Script,
            role: if is_metadata(payload) {
                Role::Metadata
            } else {
                Role::Data
            },
        },
    }
}

fn video_role(p: &[u8]) -> Role {
    let Some(&first) = p.first() else {
        return Role::Frame;
    };
    if first & 0x80 == 0 {
        let (frame_type, codec) = (first >> 4, first & 0x0f);
        if frame_type != FRAME_COMMAND && matches!(codec, CODEC_AVC | CODEC_HEVC_LEGACY) && p.get(1) == Some(&0) {
            return Role::Config { variant: 0 };
        }
        return if frame_type == FRAME_KEY {
            Role::Keyframe
        } else {
            Role::Frame
        };
    }
    let frame_type = (first >> 4) & 0x07;
    let Some(packet_type) = ex_packet_type(p, first & 0x0f, packet::MOD_EX) else {
        return Role::Frame;
    };
    let packet_type = match packet_type {
        // Multitrack: the packet type of the tracks is in the next byte.
        packet::VIDEO_MULTITRACK => match multitrack_packet_type(p, packet::MOD_EX) {
            Some(t) => t,
            None => return Role::Frame,
        },
        t => t,
    };
    match packet_type {
        packet::SEQUENCE_START | packet::VIDEO_MPEG2TS_SEQUENCE_START => Role::Config { variant: packet_type },
        packet::CODED_FRAMES | packet::CODED_FRAMES_X if frame_type == FRAME_KEY => Role::Keyframe,
        // Inter frames, command frames, SequenceEnd, metadata.
        _ => Role::Frame,
    }
}

fn audio_role(p: &[u8]) -> Role {
    let Some(&first) = p.first() else {
        return Role::Frame;
    };
    match first >> 4 {
        SOUND_AAC if p.get(1) == Some(&0) => Role::Config { variant: 0 },
        SOUND_EX_HEADER => {
            let packet_type = match ex_packet_type(p, first & 0x0f, packet::MOD_EX) {
                Some(packet::AUDIO_MULTITRACK) => multitrack_packet_type(p, packet::MOD_EX),
                other => other,
            };
            match packet_type {
                Some(t @ (packet::SEQUENCE_START | packet::AUDIO_MULTICHANNEL_CONFIG)) => Role::Config { variant: t },
                _ => Role::Frame,
            }
        }
        _ => Role::Frame,
    }
}

/// The packet type of an enhanced (ExHeader) tag, after any `ModEx`
/// prefixes; `None` when the payload ends inside them.
fn ex_packet_type(p: &[u8], first: u8, mod_ex: u8) -> Option<u8> {
    let (t, _) = skip_mod_ex(p, 1, first, mod_ex)?;
    Some(t)
}

/// Skips `ModEx` prefixes starting at `at` (with packet type `t` read
/// already); returns the real packet type and where the FourCC starts.
fn skip_mod_ex(p: &[u8], mut at: usize, mut t: u8, mod_ex: u8) -> Option<(u8, usize)> {
    // Each prefix is at least two bytes, so this ends.
    while t == mod_ex {
        let mut size = usize::from(*p.get(at)?) + 1;
        at += 1;
        if size == 256 {
            let hi = *p.get(at)?;
            let lo = *p.get(at + 1)?;
            size = usize::from(u16::from_be_bytes([hi, lo])) + 1;
            at += 2;
        }
        at = at.checked_add(size)?;
        t = *p.get(at)? & 0x0f;
        at += 1;
    }
    Some((t, at))
}

/// The packet type of the tracks of a multitrack tag: the byte after the
/// header (and its `ModEx` prefixes) holds the multitrack type and it.
fn multitrack_packet_type(p: &[u8], mod_ex: u8) -> Option<u8> {
    let first = *p.first()?;
    let (_, at) = skip_mod_ex(p, 1, first & 0x0f, mod_ex)?;
    Some(*p.get(at)? & 0x0f)
}

/// Whether script data is `onMetaData` (also behind `@setDataFrame`, as a
/// publisher sends it).
fn is_metadata(p: &[u8]) -> bool {
    match amf0_string(p) {
        Some((b"onMetaData", _)) => true,
        Some((b"@setDataFrame", rest)) => matches!(amf0_string(rest), Some((b"onMetaData", _))),
        _ => false,
    }
}

/// An AMF0 string value at the start of `p`, and what follows it.
fn amf0_string(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let [0x02, hi, lo, rest @ ..] = p else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    Some((rest.get(..len)?, &rest[len..]))
}

/// Appends a tag header for `payload_len` bytes of `tag_type` at
/// `timestamp` (stream id 0).
pub fn put_tag_header(out: &mut BytesMut, tag_type: u8, timestamp: u32, payload_len: usize) {
    out.put_u8(tag_type);
    out.put_uint(payload_len as u64, 3);
    out.put_uint(u64::from(timestamp & 0x00ff_ffff), 3);
    out.put_u8((timestamp >> 24) as u8);
    out.put_uint(0, 3);
}

/// The "previous tag size" that follows a tag of `payload_len` bytes.
pub fn previous_tag_size(payload_len: usize) -> [u8; 4] {
    ((TAG_HEADER_LEN + payload_len) as u32).to_be_bytes()
}

/// A whole tag, header to previous tag size (tests and tools).
pub fn encode_tag(tag: &Tag) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(TAG_HEADER_LEN + tag.payload.len() + PREVIOUS_SIZE_LEN);
    put_tag_header(&mut out, tag.tag_type, tag.timestamp, tag.payload.len());
    out.put_slice(&tag.payload);
    out.put_slice(&previous_tag_size(tag.payload.len()));
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(tag_type: u8, timestamp: u32, payload: &[u8]) -> Tag {
        Tag {
            tag_type,
            timestamp,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Item>, FlvError> {
        let mut d = FlvDecoder::new(1 << 20);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = d.decode(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn a_header_and_tags_decode_with_their_32_bit_timestamps() {
        let tags = [
            tag(tag_type::SCRIPT, 0, b"\x02\x00\x0aonMetaData\x08"),
            tag(tag_type::VIDEO, 0x0123_4567, b"\x17\x01\x00\x00\x00frame"),
            tag(tag_type::AUDIO, 40, b""),
        ];
        let mut bytes = FILE_HEADER.to_vec();
        for t in &tags {
            bytes.extend(encode_tag(t));
        }
        let items = decode_all(&bytes).unwrap();
        assert_eq!(items[0], Item::Header { flags: 5 });
        let got: Vec<Tag> = items[1..]
            .iter()
            .map(|i| match i {
                Item::Tag(t) => t.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, tags);
    }

    #[test]
    fn incomplete_input_is_not_an_error_and_consumes_nothing() {
        let mut bytes = FILE_HEADER.to_vec();
        bytes.extend(encode_tag(&tag(tag_type::VIDEO, 1, b"\x27\x01abc")));
        for cut in 0..bytes.len() {
            let mut d = FlvDecoder::new(1 << 20);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let before = buf.len();
            if cut >= FILE_HEADER.len() {
                assert!(d.decode(&mut buf).unwrap().is_some(), "header at {cut}");
                let left = buf.len();
                assert_eq!(d.decode(&mut buf).unwrap(), None, "tag cut at {cut}");
                assert_eq!(buf.len(), left);
            } else {
                assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
                assert_eq!(buf.len(), before);
            }
        }
    }

    #[test]
    fn what_cannot_be_flv_is_an_error() {
        assert_eq!(decode_all(b"HTTP/1.1"), Err(FlvError::Signature));
        assert_eq!(decode_all(b"FLX"), Err(FlvError::Signature));
        assert_eq!(decode_all(b"FLV\x02\x05\0\0\0\x09"), Err(FlvError::Version(2)));
        assert_eq!(decode_all(b"FLV\x01\x05\0\0\0\x03"), Err(FlvError::DataOffset(3)));
        assert_eq!(
            decode_all(b"FLV\x01\x05\xff\0\0\0"),
            Err(FlvError::DataOffset(0xff00_0000))
        );
        let mut bad_type = FILE_HEADER.to_vec();
        bad_type.extend([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_all(&bad_type), Err(FlvError::TagType(7)));
        let mut huge = FILE_HEADER.to_vec();
        huge.extend([9, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode_all(&huge), Err(FlvError::TagTooLarge { .. })));
        let mut wrong_size = FILE_HEADER.to_vec();
        let mut t = encode_tag(&tag(tag_type::AUDIO, 0, b"\xaf\x01xy"));
        let n = t.len();
        t[n - 1] ^= 1;
        wrong_size.extend(t);
        assert!(matches!(decode_all(&wrong_size), Err(FlvError::PreviousTagSize { .. })));
    }

    #[test]
    fn a_padded_header_is_skipped_and_the_filter_bit_ignored() {
        let mut bytes = b"FLV\x01\x01\0\0\0\x0cpad\0\0\0\0".to_vec();
        let mut t = encode_tag(&tag(tag_type::VIDEO, 3, b"\x17\x01"));
        t[0] |= 0x20;
        bytes.extend(t);
        let items = decode_all(&bytes).unwrap();
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[1], Item::Tag(t) if t.tag_type == tag_type::VIDEO && t.timestamp == 3));
    }

    fn role(tag_type: u8, payload: &[u8]) -> Role {
        classify(tag_type, payload).role
    }

    #[test]
    fn legacy_codecs_classify() {
        use tag_type::*;
        assert_eq!(
            role(VIDEO, b"\x17\x00\0\0\0"),
            Role::Config { variant: 0 },
            "AVC sequence header"
        );
        assert_eq!(role(VIDEO, b"\x1c\x00\0\0\0"), Role::Config { variant: 0 }, "HEVC (12)");
        assert_eq!(role(VIDEO, b"\x17\x01\0\0\0"), Role::Keyframe);
        assert_eq!(role(VIDEO, b"\x27\x01\0\0\0"), Role::Frame);
        assert_eq!(role(VIDEO, b"\x12"), Role::Keyframe, "Sorenson keyframe");
        assert_eq!(role(VIDEO, b"\x57\x00"), Role::Frame, "command frame, not a config");
        assert_eq!(role(VIDEO, b""), Role::Frame);
        assert_eq!(
            role(AUDIO, b"\xaf\x00\x12\x10"),
            Role::Config { variant: 0 },
            "AAC config"
        );
        assert_eq!(role(AUDIO, b"\xaf\x01data"), Role::Frame);
        assert_eq!(role(AUDIO, b"\x2f"), Role::Frame, "MP3");
        assert_eq!(role(AUDIO, b""), Role::Frame);
    }

    #[test]
    fn enhanced_rtmp_fourcc_codecs_classify() {
        use tag_type::*;
        // IsExHeader | frame type << 4 | packet type, then the FourCC.
        assert_eq!(
            role(VIDEO, b"\x90hvc1conf"),
            Role::Config { variant: 0 },
            "HEVC SequenceStart"
        );
        assert_eq!(
            role(VIDEO, b"\x90av01conf"),
            Role::Config { variant: 0 },
            "AV1 SequenceStart"
        );
        assert_eq!(
            role(VIDEO, b"\x95av01conf"),
            Role::Config { variant: 5 },
            "MPEG2TSSequenceStart"
        );
        assert_eq!(role(VIDEO, b"\x91hvc1\0\0\0data"), Role::Keyframe, "CodedFrames");
        assert_eq!(role(VIDEO, b"\x93vp09data"), Role::Keyframe, "CodedFramesX");
        assert_eq!(role(VIDEO, b"\xa3vp09data"), Role::Frame, "inter frame");
        assert_eq!(role(VIDEO, b"\x92hvc1"), Role::Frame, "SequenceEnd");
        // ModEx (7) with one byte of data, then SequenceStart.
        assert_eq!(role(VIDEO, b"\x97\x00\x55\x00hvc1"), Role::Config { variant: 0 });
        // ModEx with a 16-bit size (first byte 255): 0x0001 + 1 = 2 bytes.
        assert_eq!(role(VIDEO, b"\x97\xff\x00\x01ab\x01hvc1"), Role::Keyframe);
        assert_eq!(role(VIDEO, b"\x97\x05ab"), Role::Frame, "ModEx cut short");
        // Multitrack: the tracks' packet type follows.
        assert_eq!(role(VIDEO, b"\x96\x00avc1"), Role::Config { variant: 0 });
        assert_eq!(role(VIDEO, b"\x96\x01avc1"), Role::Keyframe);
        assert_eq!(role(VIDEO, b"\x96"), Role::Frame);
        // Audio ExHeader (sound format 9).
        assert_eq!(role(AUDIO, b"\x90Opus"), Role::Config { variant: 0 });
        assert_eq!(
            role(AUDIO, b"\x94Opus"),
            Role::Config { variant: 4 },
            "MultichannelConfig"
        );
        assert_eq!(role(AUDIO, b"\x91Opus"), Role::Frame);
        assert_eq!(
            role(AUDIO, b"\x95\x00fLaC"),
            Role::Config { variant: 0 },
            "multitrack start"
        );
        assert_eq!(
            role(AUDIO, b"\x97\x00\x01\x00Opus"),
            Role::Config { variant: 0 },
            "ModEx start"
        );
    }

    #[test]
    fn metadata_is_recognised_with_or_without_set_data_frame() {
        use tag_type::SCRIPT;
        assert_eq!(role(SCRIPT, b"\x02\x00\x0aonMetaData\x08\0\0\0\0"), Role::Metadata);
        assert_eq!(
            role(SCRIPT, b"\x02\x00\x0d@setDataFrame\x02\x00\x0aonMetaData\x03"),
            Role::Metadata
        );
        assert_eq!(role(SCRIPT, b"\x02\x00\x0aonTextData"), Role::Data);
        assert_eq!(role(SCRIPT, b"\x02\x00\xffshort"), Role::Data);
        assert_eq!(role(SCRIPT, b""), Role::Data);
    }

    fn arb_tag() -> impl Strategy<Value = Tag> {
        (
            prop::sample::select(vec![tag_type::AUDIO, tag_type::VIDEO, tag_type::SCRIPT]),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(tag_type, timestamp, payload)| Tag {
                tag_type,
                timestamp,
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #[test]
        fn tags_survive_any_split_of_the_stream(
            tags in prop::collection::vec(arb_tag(), 0..20),
            cuts in prop::collection::vec(1usize..64, 1..200),
        ) {
            let mut bytes = FILE_HEADER.to_vec();
            for t in &tags {
                bytes.extend(encode_tag(t));
            }
            let mut d = FlvDecoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = d.decode(&mut buf).unwrap() {
                    got.push(item);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got.len(), tags.len() + 1);
            for (item, t) in got[1..].iter().zip(&tags) {
                prop_assert_eq!(item, &Item::Tag(t.clone()));
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FlvDecoder::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut last = buf.len();
            while let Ok(Some(_)) = d.decode(&mut buf) {
                prop_assert!(buf.len() < last, "progress on every item");
                last = buf.len();
            }
        }

        #[test]
        fn classify_never_panics(tag_type in 0u8..32, payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify(tag_type, &payload);
        }
    }
}
