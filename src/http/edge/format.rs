//! What a shared upstream carries, and how its origin's body is cut into
//! the frames of its [`Ring`](super::ring::Ring).
//!
//! * **FLV** ([`super::flv`]): the file header's flags, then tags; the
//!   metadata and sequence headers are kept for joining players, a video
//!   keyframe is where they join.
//! * **MPEG-TS** ([`super::ts`]): whole 188-byte packets; the PAT and PMT
//!   are kept for joining players (as decoder configurations), a video
//!   random access point (or, without video, any audio PES) is where they
//!   join, and the PES DTS/PTS is the ring's stream time.
//!
//! Pure: bytes in, frames out; the hub does the reading and the locking.

use bytes::{Bytes, BytesMut};

use super::flv::{self, FlvDecoder, FlvError, Item, Role, Track};
use super::ring::Kind;
use super::ts::{self, TsCutter, TsError, UnitKind};

/// The format of a live stream; an FLV and a TS upstream of one stream
/// are different upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Flv,
    Ts,
}

impl Format {
    /// The players' protocol, as metrics label it.
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Flv => "http-flv",
            Self::Ts => "http-ts",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Flv => "FLV",
            Self::Ts => "MPEG-TS",
        }
    }
}

/// Ring slots of decoder configurations: FLV video variants from 0, audio
/// from 8; the TS PAT and PMT after them.
const PAT_SLOT: u8 = 16;
const PMT_SLOT: u8 = 17;

#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error(transparent)]
    Flv(#[from] FlvError),
    #[error(transparent)]
    Ts(#[from] TsError),
    #[error("the body does not start with a TS packet (byte {0:#04x}, not 0x47)")]
    NotTs(u8),
    #[error("an FLV tag before the FLV header")]
    TagFirst,
}

/// A frame for the ring: time (ms, the origin's), kind, FLV tag type (0
/// for TS), payload.
pub type Cut = (u32, Kind, u8, Bytes);

/// The cutter of one upstream's body.
pub enum Cutter {
    Flv(FlvDecoder),
    Ts(TsCutter),
}

impl Cutter {
    /// `max_tag`: the largest FLV tag accepted.
    pub fn new(format: Format, max_tag: u32) -> Self {
        match format {
            Format::Flv => Self::Flv(FlvDecoder::new(max_tag)),
            Format::Ts => Self::Ts(TsCutter::new()),
        }
    }

    /// What starts the body, read before players are answered: the FLV
    /// file header's flags, or (TS) `0` once the first byte is a sync
    /// byte; `None` while `buf` does not hold it yet.
    pub fn start(&mut self, buf: &mut BytesMut) -> Result<Option<u8>, CutError> {
        match self {
            Self::Flv(decoder) => match decoder.decode(buf)? {
                Some(Item::Header { flags }) => Ok(Some(flags)),
                Some(Item::Tag(_)) => Err(CutError::TagFirst),
                None => Ok(None),
            },
            Self::Ts(_) => match buf.first() {
                None => Ok(None),
                Some(&ts::SYNC) => Ok(Some(0)),
                Some(&b) => Err(CutError::NotTs(b)),
            },
        }
    }

    /// Cuts what `buf` holds into frames, handed to `push` in order; what
    /// is left is an incomplete tag or packet.
    pub fn cut(&mut self, buf: &mut BytesMut, mut push: impl FnMut(Cut)) -> Result<(), CutError> {
        match self {
            Self::Flv(decoder) => loop {
                match decoder.decode(buf)? {
                    // Read before the hub went live; never twice.
                    Some(Item::Header { .. }) => {}
                    Some(Item::Tag(tag)) => push((tag.timestamp, flv_kind(&tag), tag.tag_type, tag.payload)),
                    None => return Ok(()),
                }
            },
            Self::Ts(cutter) => {
                for unit in cutter.cut(buf)? {
                    push((unit.time, ts_kind(unit.kind), 0, unit.bytes));
                }
                Ok(())
            }
        }
    }

    /// Bytes of the body skipped to regain sync since the last call.
    pub fn take_skipped(&mut self) -> usize {
        match self {
            Self::Flv(_) => 0,
            Self::Ts(cutter) => cutter.take_skipped(),
        }
    }
}

fn flv_kind(tag: &flv::Tag) -> Kind {
    let class = flv::classify(tag.tag_type, &tag.payload);
    match class.role {
        Role::Config { variant } => Kind::Config {
            slot: match class.track {
                Track::Audio => 8 + variant.min(7),
                _ => variant.min(7),
            },
        },
        Role::Keyframe => Kind::Key,
        Role::Frame => Kind::Frame {
            video: class.track == Track::Video,
        },
        Role::Metadata => Kind::Metadata,
        Role::Data => Kind::Data,
    }
}

/// TS units to the ring: the tables are configurations (the latest of
/// each kept for joining players, never skipped), packets that start no
/// frame are data (neither a join point nor evidence of video).
fn ts_kind(kind: UnitKind) -> Kind {
    match kind {
        UnitKind::Pat => Kind::Config { slot: PAT_SLOT },
        UnitKind::Pmt => Kind::Config { slot: PMT_SLOT },
        UnitKind::Key => Kind::Key,
        UnitKind::Video => Kind::Frame { video: true },
        UnitKind::Audio => Kind::Frame { video: false },
        UnitKind::Other => Kind::Data,
    }
}
