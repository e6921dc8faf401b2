//! MPEG-TS as an origin sends it over HTTP-TS, cut into units a shared
//! upstream keeps for its players: the PAT and PMT (what a joining player
//! gets first), and runs of whole 188-byte packets that each start at a
//! frame, a video random access point being where a player may join.
//!
//! Packets are never rewritten (continuity counters, PCR, PTS/DTS pass as
//! the origin sent them): units are slices of the buffer they were read
//! into. Only what the cutting needs is read: packet headers and the
//! random access indicator, single-packet PAT and PMT sections (CRC
//! checked; which PID is video, of which codec, and which are audio), PES
//! headers (DTS, else PTS, for stream time) and the NAL unit types at the
//! start of a video PES when the muxer sets no random access indicator.
//!
//! Pure functions over bytes; every offset is checked. A lost sync byte
//! is skipped over up to the next two packets that line up again
//! ([`TsCutter::take_skipped`] tells how much), and
//! [`MAX_RESYNC_BYTES`] without sync is an error: what is left unparsed is
//! never more than a packet.

use bytes::{Bytes, BytesMut};

/// A TS packet.
pub const PACKET: usize = 188;
/// The first byte of every packet.
pub const SYNC: u8 = 0x47;
/// Bytes skipped looking for sync before the body is declared not TS.
pub const MAX_RESYNC_BYTES: usize = 64 * PACKET;
const PAT_PID: u16 = 0;
const NULL_PID: u16 = 0x1fff;
/// PMT PIDs followed at most (a multi-program stream has one per program).
const MAX_PROGRAMS: usize = 16;

/// Stream types (ISO/IEC 13818-1 table 2-34 and registered ones).
pub mod stream_type {
    pub const MPEG1_VIDEO: u8 = 0x01;
    pub const MPEG2_VIDEO: u8 = 0x02;
    pub const MPEG1_AUDIO: u8 = 0x03;
    pub const MPEG2_AUDIO: u8 = 0x04;
    pub const AAC: u8 = 0x0f;
    pub const MPEG4_VIDEO: u8 = 0x10;
    pub const AAC_LATM: u8 = 0x11;
    pub const H264: u8 = 0x1b;
    pub const HEVC: u8 = 0x24;
    pub const VVC: u8 = 0x33;
    pub const AC3: u8 = 0x81;
    pub const EAC3: u8 = 0x87;
}
const VIDEO_TYPES: [u8; 6] = {
    use stream_type::*;
    [MPEG1_VIDEO, MPEG2_VIDEO, MPEG4_VIDEO, H264, HEVC, VVC]
};
const AUDIO_TYPES: [u8; 6] = {
    use stream_type::*;
    [MPEG1_AUDIO, MPEG2_AUDIO, AAC, AAC_LATM, AC3, EAC3]
};

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// A PAT packet (a whole section).
    Pat,
    /// A PMT packet (a whole section).
    Pmt,
    /// Starts with a video PES a decoder can start at.
    Key,
    /// Starts with any other video PES.
    Video,
    /// Starts with an audio PES of a stream without video: every one is a
    /// place to join.
    Audio,
    /// Starts with no frame: the rest of one begun in an earlier read,
    /// other PIDs, or packets before the PMT said what the streams are.
    Other,
}

/// A run of whole packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub kind: UnitKind,
    /// Stream time in ms: the DTS (else PTS) of the last PES that started
    /// a unit at or before this one, 0 before the first. It wraps with the
    /// 33-bit 90 kHz clock (every 26.5 hours).
    pub time: u32,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("not MPEG-TS: no sync byte 0x47 every 188 bytes in {0} bytes")]
    Sync(usize),
}

/// The elementary streams a PMT lists, as far as the cutting cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Streams {
    /// The video PID and its stream type (the first video stream).
    video: Option<(u16, u8)>,
    /// Audio PIDs; without video each of their PES starts is a join point
    /// (every PES start of any listed PID when none is known audio).
    audio: Vec<u16>,
    /// Every listed PID.
    all: Vec<u16>,
}

/// Cuts a TS byte stream into [`Unit`]s.
#[derive(Debug, Default)]
pub struct TsCutter {
    /// PIDs the PAT names as programs' PMTs.
    pmt_pids: Vec<u16>,
    /// From the latest PMT; `None` until one was read.
    streams: Option<Streams>,
    /// The muxer marks video random access points itself: trust only
    /// that from then on.
    random_access_seen: bool,
    /// Time of the last unit-opening PES.
    time: u32,
    /// A packet did not start with the sync byte; not found again yet.
    lost: bool,
    /// Bytes skipped since sync was lost.
    skipping: usize,
    /// Bytes skipped since the last [`TsCutter::take_skipped`].
    skipped: usize,
}

/// One packet's header fields.
#[derive(Debug)]
struct Header<'a> {
    pid: u16,
    /// payload_unit_start_indicator: a PES or a section starts here.
    start: bool,
    /// random_access_indicator of the adaptation field.
    random_access: bool,
    payload: &'a [u8],
}

fn header(p: &[u8; PACKET]) -> Header<'_> {
    let start = p[1] & 0x40 != 0;
    let pid = u16::from_be_bytes([p[1] & 0x1f, p[2]]);
    let control = (p[3] >> 4) & 0x03;
    let mut at = 4;
    let mut random_access = false;
    if control & 0x02 != 0 {
        let len = usize::from(p[4]);
        random_access = len > 0 && p[5] & 0x40 != 0;
        at = 5 + len;
    }
    let payload = match control & 0x01 {
        0 => &[][..],
        _ => p.get(at..).unwrap_or(&[]),
    };
    Header {
        pid,
        start,
        random_access,
        payload,
    }
}

impl TsCutter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Units of the whole packets at the front of `buf` (consumed); a
    /// partial packet stays for the next call.
    pub fn cut(&mut self, buf: &mut BytesMut) -> Result<Vec<Unit>, TsError> {
        // Units as ranges of `buf`, sliced from one frozen buffer at the end.
        let mut cuts: Vec<(usize, usize, UnitKind, u32)> = Vec::new();
        // The unit being built: where it starts, its kind and time.
        let mut open: Option<(usize, UnitKind, u32)> = None;
        let mut at = 0;
        while buf.len() - at >= PACKET {
            if self.lost || buf[at] != SYNC {
                self.lost = true;
                if let Some((from, kind, time)) = open.take() {
                    cuts.push((from, at, kind, time));
                }
                match find_sync(&buf[at..]) {
                    Some(skip) => {
                        self.skip(skip)?;
                        at += skip;
                        self.lost = false;
                        self.skipping = 0;
                    }
                    None => {
                        // Every place a packet could start was tried but
                        // the last packet's worth, which more bytes will
                        // confirm or not.
                        let skip = buf.len() - at - PACKET;
                        self.skip(skip)?;
                        at += skip;
                        break;
                    }
                }
            }
            let packet: &[u8; PACKET] = buf[at..at + PACKET].try_into().expect("a whole packet");
            let time_before = self.time;
            match self.boundary(&header(packet)) {
                Some(kind @ (UnitKind::Pat | UnitKind::Pmt)) => {
                    if let Some((from, k, t)) = open.take() {
                        cuts.push((from, at, k, t));
                    }
                    cuts.push((at, at + PACKET, kind, time_before));
                }
                Some(kind) => {
                    if let Some((from, k, t)) = open.take() {
                        cuts.push((from, at, k, t));
                    }
                    open = Some((at, kind, self.time));
                }
                None => {
                    open.get_or_insert((at, UnitKind::Other, self.time));
                }
            }
            at += PACKET;
        }
        if let Some((from, kind, time)) = open {
            cuts.push((from, at, kind, time));
        }
        let data = buf.split_to(at).freeze();
        Ok(cuts
            .into_iter()
            .map(|(from, to, kind, time)| Unit {
                kind,
                time,
                bytes: data.slice(from..to),
            })
            .collect())
    }

    fn skip(&mut self, n: usize) -> Result<(), TsError> {
        self.skipping += n;
        self.skipped += n;
        if self.skipping > MAX_RESYNC_BYTES {
            return Err(TsError::Sync(self.skipping));
        }
        Ok(())
    }

    /// Bytes skipped to regain sync since the last call.
    pub fn take_skipped(&mut self) -> usize {
        std::mem::take(&mut self.skipped)
    }

    /// Whether a packet starts a unit, and which; learns the tables and
    /// the stream time as they pass.
    fn boundary(&mut self, h: &Header<'_>) -> Option<UnitKind> {
        if h.pid == NULL_PID {
            return None;
        }
        if h.pid == PAT_PID {
            let pids = h.start.then(|| read_pat(h.payload)).flatten()?;
            self.pmt_pids = pids;
            return Some(UnitKind::Pat);
        }
        if self.pmt_pids.contains(&h.pid) {
            let streams = h.start.then(|| read_pmt(h.payload)).flatten()?;
            if self.streams.as_ref().and_then(|s| s.video) != streams.video {
                self.random_access_seen = false;
            }
            self.streams = Some(streams);
            return Some(UnitKind::Pmt);
        }
        if !h.start {
            return None;
        }
        let streams = self.streams.as_ref()?;
        let (time, es) = pes_start(h.payload)?;
        let kind = match streams.video {
            Some((pid, codec)) if pid == h.pid => {
                self.random_access_seen |= h.random_access;
                let key = if self.random_access_seen {
                    h.random_access
                } else {
                    starts_random_access(codec, es)
                };
                if key {
                    UnitKind::Key
                } else {
                    UnitKind::Video
                }
            }
            Some(_) => return None,
            None if streams.audio.contains(&h.pid) => UnitKind::Audio,
            None if streams.audio.is_empty() && streams.all.contains(&h.pid) => UnitKind::Audio,
            None => return None,
        };
        if let Some(time) = time {
            self.time = time;
        }
        Some(kind)
    }
}

/// Where packets line up again in `data`: the first sync byte followed
/// by another a packet later.
fn find_sync(data: &[u8]) -> Option<usize> {
    (0..data.len().saturating_sub(PACKET)).find(|&i| data[i] == SYNC && data[i + PACKET] == SYNC)
}

/// The section of table `table_id` that starts in a packet's payload
/// (after the pointer field), when it is whole in the packet and its CRC
/// is right: the bytes between the 5-byte syntax header after
/// section_length and the CRC.
fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    if *s.first()? != table_id || s.get(1)? & 0x80 == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([s.get(1)? & 0x0f, *s.get(2)?]));
    let whole = s.get(..3 + len)?;
    if len < 9 || crc32_mpeg2(whole) != 0 {
        return None;
    }
    whole.get(8..whole.len() - 4)
}

/// The PMT PIDs a PAT names (the network PID of program 0 aside).
fn read_pat(payload: &[u8]) -> Option<Vec<u16>> {
    let programs = section(payload, 0x00)?;
    Some(
        programs
            .chunks_exact(4)
            .filter(|p| u16::from_be_bytes([p[0], p[1]]) != 0)
            .map(|p| u16::from_be_bytes([p[2] & 0x1f, p[3]]))
            .take(MAX_PROGRAMS)
            .collect(),
    )
}

/// The elementary streams a PMT lists.
fn read_pmt(payload: &[u8]) -> Option<Streams> {
    let body = section(payload, 0x02)?;
    // PCR PID (2 bytes), program_info_length (2), descriptors, then the
    // elementary streams.
    let info = usize::from(u16::from_be_bytes([body.get(2)? & 0x0f, *body.get(3)?]));
    let mut rest = body.get(4 + info..)?;
    let mut streams = Streams::default();
    while let Some(es) = rest.get(..5) {
        let codec = es[0];
        let pid = u16::from_be_bytes([es[1] & 0x1f, es[2]]);
        let es_info = usize::from(u16::from_be_bytes([es[3] & 0x0f, es[4]]));
        if streams.video.is_none() && VIDEO_TYPES.contains(&codec) {
            streams.video = Some((pid, codec));
        }
        if AUDIO_TYPES.contains(&codec) {
            streams.audio.push(pid);
        }
        streams.all.push(pid);
        rest = rest.get(5 + es_info..)?;
    }
    Some(streams)
}

/// A PES header at the start of a payload: its DTS (else PTS) in ms, and
/// the elementary stream data after it in this packet.
fn pes_start(p: &[u8]) -> Option<(Option<u32>, &[u8])> {
    if p.get(..3)? != [0, 0, 1] {
        return None;
    }
    let stream_id = *p.get(3)?;
    // Streams without the optional header (padding, private 2, ...).
    if matches!(stream_id, 0xbc | 0xbe | 0xbf | 0xf0 | 0xf1 | 0xf2 | 0xf8 | 0xff) {
        return Some((None, p.get(6..).unwrap_or(&[])));
    }
    let flags = *p.get(7)? >> 6;
    let header_len = usize::from(*p.get(8)?);
    let stamp = |at: usize| -> Option<u32> {
        if at + 5 > 9 + header_len {
            return None;
        }
        let b = p.get(at..at + 5)?;
        let ticks = (u64::from(b[0] >> 1) & 0x07) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1);
        u32::try_from(ticks / 90).ok()
    };
    let time = match flags {
        0b11 => stamp(14).or_else(|| stamp(9)),
        0b10 => stamp(9),
        _ => None,
    };
    Some((time, p.get(9 + header_len..).unwrap_or(&[])))
}

/// Whether the start of a video PES shows a picture a decoder can start
/// at, for a muxer that does not flag them: an IDR (H.264) or IRAP (HEVC)
/// slice, or parameter sets ahead of any other slice (encoders put
/// SPS/PPS, or VPS/SPS/PPS, before those pictures, and with a large SEI
/// the slice itself may only start in a later packet). Other codecs:
/// every picture (their decoders recover at the next intra picture).
fn starts_random_access(codec: u8, es: &[u8]) -> bool {
    match codec {
        stream_type::H264 => {
            let mut types = nal_headers(es).map(|b| b & 0x1f);
            types.find(|t| matches!(t, 1 | 5 | 7)).is_some_and(|t| t != 1)
        }
        stream_type::HEVC => {
            let mut types = nal_headers(es).map(|b| (b >> 1) & 0x3f);
            types.find(|t| matches!(t, 0..=23 | 32 | 33)).is_some_and(|t| t >= 16)
        }
        _ => true,
    }
}

/// The first byte of every NAL unit that starts (after `00 00 01`) in
/// `data`.
fn nal_headers(data: &[u8]) -> impl Iterator<Item = u8> + '_ {
    data.windows(4).filter(|w| w[..3] == [0, 0, 1]).map(|w| w[3])
}

/// CRC-32/MPEG-2 (the PSI sections' CRC); 0 over a section with its CRC.
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Builders of packets and sections, for tests here and elsewhere.
pub mod build {
    use super::*;

    /// A packet: header (continuity counter 0), an adaptation field with
    /// the random access indicator when asked, payload padded with 0xff.
    pub fn packet(pid: u16, start: bool, random_access: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![SYNC, (u8::from(start) << 6) | (pid >> 8) as u8, pid as u8];
        if random_access {
            p.extend([0x30, 1, 0x40]);
        } else {
            p.push(0x10);
        }
        p.extend_from_slice(&payload[..payload.len().min(PACKET - p.len())]);
        p.resize(PACKET, 0xff);
        p
    }

    /// A section's packet payload: pointer field, `table_id`, the syntax
    /// header, `body`, CRC.
    fn section(table_id: u8, body: &[u8]) -> Vec<u8> {
        let len = 5 + body.len() + 4;
        let mut s = vec![0, table_id, 0xb0 | (len >> 8) as u8, len as u8, 0, 1, 0xc1, 0, 0];
        s.extend_from_slice(body);
        let crc = crc32_mpeg2(&s[1..]);
        s.extend(crc.to_be_bytes());
        s
    }

    pub fn pat(pmt_pid: u16) -> Vec<u8> {
        let body = [0, 1, 0xe0 | (pmt_pid >> 8) as u8, pmt_pid as u8];
        packet(PAT_PID, true, false, &section(0x00, &body))
    }

    /// A PMT of `streams` (PID, stream type).
    pub fn pmt(pmt_pid: u16, streams: &[(u16, u8)]) -> Vec<u8> {
        let pcr = streams.first().map_or(NULL_PID, |s| s.0);
        let mut body = vec![0xe0 | (pcr >> 8) as u8, pcr as u8, 0xf0, 0];
        for &(pid, codec) in streams {
            body.extend([codec, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 0]);
        }
        packet(pmt_pid, true, false, &section(0x02, &body))
    }

    /// A PES start with a PTS of `ms` and elementary data `es`.
    pub fn pes(ms: u32, es: &[u8]) -> Vec<u8> {
        let t = u64::from(ms) * 90;
        let mut p = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        p.extend([
            0x21 | ((t >> 29) & 0x0e) as u8,
            (t >> 22) as u8,
            0x01 | ((t >> 14) & 0xfe) as u8,
            (t >> 7) as u8,
            0x01 | ((t << 1) & 0xfe) as u8,
        ]);
        p.extend_from_slice(es);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::stream_type::{AAC, H264, HEVC};
    use super::*;
    use proptest::prelude::*;

    const IDR: &[u8] = b"\0\0\0\x01\x09\xf0\0\0\0\x01\x67sps\0\0\x01\x68pps\0\0\x01\x65idr";
    const P_FRAME: &[u8] = b"\0\0\0\x01\x09\xf0\0\0\x01\x41slice";

    fn kinds(units: &[Unit]) -> Vec<(UnitKind, u32, usize)> {
        units.iter().map(|u| (u.kind, u.time, u.bytes.len() / PACKET)).collect()
    }

    /// PAT, PMT (H.264 0x100, AAC 0x101), then frames: a keyframe the
    /// muxer flags, audio, a P frame, a keyframe flagged again.
    fn flagged() -> Vec<u8> {
        let mut s = pat(0x1000);
        s.extend(pmt(0x1000, &[(0x100, H264), (0x101, AAC)]));
        s.extend(packet(0x100, true, true, &pes(1000, IDR)));
        s.extend(packet(0x100, false, false, b"more of the keyframe"));
        s.extend(packet(0x101, true, false, &pes(1010, b"aac")));
        s.extend(packet(0x100, true, false, &pes(1040, P_FRAME)));
        s.extend(packet(0x100, true, true, &pes(1080, P_FRAME)));
        s
    }

    fn cut_all(cutter: &mut TsCutter, bytes: &[u8]) -> Vec<Unit> {
        let mut buf = BytesMut::from(bytes);
        let units = cutter.cut(&mut buf).unwrap();
        assert!(buf.is_empty());
        units
    }

    #[test]
    fn tables_and_frames_become_units_of_untouched_packets() {
        let bytes = flagged();
        let units = cut_all(&mut TsCutter::new(), &bytes);
        assert_eq!(
            kinds(&units),
            [
                (UnitKind::Pat, 0, 1),
                (UnitKind::Pmt, 0, 1),
                (UnitKind::Key, 1000, 3),
                (UnitKind::Video, 1040, 1),
                // The flag is what counts once the muxer sets it: a P
                // frame it flags is a join point.
                (UnitKind::Key, 1080, 1),
            ]
        );
        let joined: Vec<u8> = units.iter().flat_map(|u| u.bytes.to_vec()).collect();
        assert_eq!(joined, bytes, "packets pass untouched and in order");
    }

    #[test]
    fn the_pat_and_pmt_say_which_pid_is_video_and_of_which_codec() {
        let mut cutter = TsCutter::new();
        cut_all(&mut cutter, &pat(0x1000));
        assert_eq!(cutter.pmt_pids, [0x1000]);
        cut_all(&mut cutter, &pmt(0x1000, &[(0x101, AAC), (0x100, HEVC), (0x102, H264)]));
        let streams = cutter.streams.clone().unwrap();
        assert_eq!(streams.video, Some((0x100, HEVC)), "the first video stream");
        assert_eq!(streams.audio, [0x101]);

        // A section with a bad CRC, or another table on the PMT PID, is
        // not a PMT: the packet passes as an ordinary one.
        let mut bad = pmt(0x1000, &[(0x200, H264)]);
        bad[20] ^= 1;
        let units = cut_all(&mut cutter, &bad);
        assert_eq!(units[0].kind, UnitKind::Other);
        let mut other = pmt(0x1000, &[(0x200, H264)]);
        other[5] = 0x42;
        assert_eq!(cut_all(&mut cutter, &other)[0].kind, UnitKind::Other);
        assert_eq!(cutter.streams.unwrap().video, Some((0x100, HEVC)));
    }

    #[test]
    fn before_the_pmt_nothing_is_a_join_point() {
        let mut s = packet(0x100, true, true, &pes(0, IDR));
        s.extend(pat(0x1000));
        s.extend(pmt(0x1000, &[(0x100, H264)]));
        s.extend(packet(0x100, true, true, &pes(40, IDR)));
        let units = cut_all(&mut TsCutter::new(), &s);
        assert_eq!(
            kinds(&units),
            [
                (UnitKind::Other, 0, 1),
                (UnitKind::Pat, 0, 1),
                (UnitKind::Pmt, 0, 1),
                (UnitKind::Key, 40, 1)
            ]
        );
    }

    #[test]
    fn without_random_access_flags_idr_and_parameter_sets_are_join_points() {
        let mut s = pat(0x1000);
        s.extend(pmt(0x1000, &[(0x100, H264)]));
        s.extend(packet(0x100, true, false, &pes(0, IDR)));
        s.extend(packet(0x100, true, false, &pes(40, P_FRAME)));
        // The IDR slice alone, and SPS/PPS whose slice is in the next packet.
        s.extend(packet(0x100, true, false, &pes(80, b"\0\0\x01\x65idr")));
        s.extend(packet(
            0x100,
            true,
            false,
            &pes(120, b"\0\0\x01\x09\xf0\0\0\x01\x67sps\0\0\x01\x68pps"),
        ));
        s.extend(packet(0x100, false, false, b"\0\0\x01\x06sei\0\0\x01\x65idr"));
        // A P slice that happens to be followed by bytes looking like an IDR.
        s.extend(packet(0x100, true, false, &pes(160, b"\0\0\x01\x41p\0\0\x01\x65")));
        let units = cut_all(&mut TsCutter::new(), &s);
        assert_eq!(
            kinds(&units)[2..],
            [
                (UnitKind::Key, 0, 1),
                (UnitKind::Video, 40, 1),
                (UnitKind::Key, 80, 1),
                (UnitKind::Key, 120, 2),
                (UnitKind::Video, 160, 1),
            ]
        );

        // HEVC: VPS (32) or an IRAP slice (CRA 21) start one; TRAIL_R (1)
        // does not.
        let mut s = pat(0x20);
        s.extend(pmt(0x20, &[(0x100, HEVC), (0x101, AAC)]));
        s.extend(packet(0x100, true, false, &pes(0, b"\0\0\x01\x40\x01vps")));
        s.extend(packet(0x100, true, false, &pes(40, b"\0\0\x01\x02\x01trail")));
        s.extend(packet(0x100, true, false, &pes(80, b"\0\0\x01\x2a\x01cra")));
        let kinds: Vec<UnitKind> = cut_all(&mut TsCutter::new(), &s).iter().map(|u| u.kind).collect();
        assert_eq!(kinds[2..], [UnitKind::Key, UnitKind::Video, UnitKind::Key]);
    }

    #[test]
    fn audio_only_streams_join_at_every_audio_pes() {
        let mut s = pat(0x1000);
        s.extend(pmt(0x1000, &[(0x101, AAC)]));
        s.extend(packet(0x101, true, false, &pes(5, b"audio")));
        s.extend(packet(0x101, false, false, b"rest"));
        s.extend(packet(0x101, true, false, &pes(28, b"audio")));
        let units = cut_all(&mut TsCutter::new(), &s);
        assert_eq!(kinds(&units)[2..], [(UnitKind::Audio, 5, 2), (UnitKind::Audio, 28, 1)]);
    }

    #[test]
    fn the_dts_is_stream_time_when_there_is_one() {
        let mut s = pat(0x1000);
        s.extend(pmt(0x1000, &[(0x100, H264)]));
        // PTS 1080 ms, DTS 1000 ms.
        let mut pes_dts = pes(1080, b"");
        pes_dts[7] = 0xc0;
        pes_dts[8] = 10;
        pes_dts.extend(&pes(1000, b"")[9..14]);
        pes_dts[14] = (pes_dts[14] & 0x0f) | 0x10;
        pes_dts.extend_from_slice(IDR);
        s.extend(packet(0x100, true, true, &pes_dts));
        let units = cut_all(&mut TsCutter::new(), &s);
        assert_eq!(kinds(&units)[2..], [(UnitKind::Key, 1000, 1)]);
    }

    #[test]
    fn packets_split_across_reads_give_the_same_units() {
        let bytes = flagged();
        for piece in [1, 100, 187, 188, 189, 500] {
            let mut cutter = TsCutter::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut keys = Vec::new();
            for c in bytes.chunks(piece) {
                buf.extend_from_slice(c);
                for u in cutter.cut(&mut buf).unwrap() {
                    if u.kind == UnitKind::Key {
                        keys.push(u.time);
                    }
                    out.extend_from_slice(&u.bytes);
                }
                assert!(buf.len() < PACKET, "piece {piece}: at most a partial packet is left");
            }
            assert_eq!(out, bytes, "piece {piece}");
            assert_eq!(keys, [1000, 1080], "piece {piece}");
        }
    }

    #[test]
    fn a_lost_sync_byte_is_skipped_to_where_packets_line_up_again() {
        let clean = flagged();
        // Garbage in the middle: 5 bytes before the P frame's packet.
        let at = 5 * PACKET;
        let mut bytes = clean[..at].to_vec();
        bytes.extend(b"\0\0\0\0\0");
        bytes.extend(&clean[at..]);
        for piece in [7, 188, 4096] {
            let mut cutter = TsCutter::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut kinds = Vec::new();
            for c in bytes.chunks(piece) {
                buf.extend_from_slice(c);
                for u in cutter.cut(&mut buf).unwrap() {
                    assert_eq!(u.bytes.len() % PACKET, 0);
                    assert_eq!(u.bytes[0], SYNC);
                    kinds.push(u.kind);
                    out.extend_from_slice(&u.bytes);
                }
            }
            assert_eq!(out, clean, "piece {piece}: every packet, none of the garbage");
            assert_eq!(cutter.take_skipped(), 5, "piece {piece}");
            assert_eq!(cutter.take_skipped(), 0);
            assert_eq!(kinds.last(), Some(&UnitKind::Key), "piece {piece}");
        }
    }

    #[test]
    fn a_body_that_is_not_ts_is_an_error_within_a_bound() {
        let mut cutter = TsCutter::new();
        let mut buf = BytesMut::new();
        let noise = b"<html>not a stream</html>".repeat(100);
        let mut failed = None;
        for _ in 0..1000 {
            buf.extend_from_slice(&noise);
            match cutter.cut(&mut buf) {
                Ok(units) => assert!(units.is_empty()),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            assert!(buf.len() <= PACKET, "{} bytes held", buf.len());
        }
        assert!(matches!(failed, Some(TsError::Sync(n)) if n > MAX_RESYNC_BYTES));
    }

    proptest! {
        /// Whatever the packets (and garbage between them), cutting in
        /// any pieces never panics, keeps at most a packet,
        /// and what comes out is whole packets in the order they came.
        #[test]
        fn any_packets_cut_without_panicking(
            packets in prop::collection::vec((0u16..0x2000, any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..190), 0usize..3), 0..30),
            piece in 1usize..600,
        ) {
            let mut bytes = pat(0x1000);
            bytes.extend(pmt(0x1000, &[(0x100, H264), (0x101, AAC)]));
            for (pid, start, ra, payload, garbage) in &packets {
                let mut p = packet(*pid % 0x103, *start, *ra, payload);
                // Arbitrary adaptation field lengths too.
                if *ra { p[4] = payload.first().copied().unwrap_or(0); }
                bytes.extend(payload.iter().take(*garbage));
                bytes.extend(p);
            }
            let mut cutter = TsCutter::new();
            let mut buf = BytesMut::new();
            let mut out = 0;
            for c in bytes.chunks(piece) {
                buf.extend_from_slice(c);
                for u in cutter.cut(&mut buf).unwrap() {
                    prop_assert_eq!(u.bytes.len() % PACKET, 0);
                    prop_assert!(!u.bytes.is_empty());
                    out += u.bytes.len();
                }
                prop_assert!(buf.len() <= PACKET);
            }
            prop_assert!(out + buf.len() + cutter.take_skipped() == bytes.len());
        }
    }
}
