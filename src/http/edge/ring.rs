//! The frames of one shared upstream, and where each player is in them.
//!
//! One [`Ring`] per upstream holds the recent frames once, for every
//! player: at most the GOP cache's bytes and stream time, which covers the
//! frames since the last keyframe (what a joining player starts with).
//! Each player keeps only a [`Cursor`] into it. Pulling applies the rule
//! that keeps a slow player from slowing anyone else: a player whose next
//! frame arrived longer ago than the lag limit skips whole frames up to a
//! keyframe that arrived within it (or waits for the next one); decoder
//! configuration and metadata are never skipped. A player whose frames
//! were let go resumes at a keyframe too.
//!
//! Pure bookkeeping over [`Bytes`] handles: no I/O, and the time frames
//! arrive is handed in by the caller, so every rule is unit-tested by the
//! order of frames alone.

use std::collections::VecDeque;

use bytes::Bytes;

/// What a frame is to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Decoder configuration (sequence headers; a TS stream's PAT and
    /// PMT); the latest of each slot is kept for joining players.
    Config { slot: u8 },
    /// Stream metadata (`onMetaData`); the latest is kept.
    Metadata,
    /// A frame a decoder can start at (a video keyframe).
    Key,
    /// Any other frame of media; `video` tells whether the stream has
    /// video, so that an audio-only stream can be joined at any frame.
    Frame { video: bool },
    /// Other data (script tags): skipped like frames when lagging.
    Data,
}

/// One frame, shared by every player of the upstream.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the upstream, from 0.
    pub seq: u64,
    /// Stream time (ms) from the upstream's first frame: the origin's
    /// steps between frames, carried on across discontinuities (a
    /// republish starting again at 0), so it never jumps back further than
    /// audio and video interleave.
    pub clock: u64,
    pub kind: Kind,
    /// A player may start here: a keyframe, or any frame of a stream
    /// without video.
    pub join_point: bool,
    /// The FLV tag type of the frame (0 for a TS unit).
    pub tag_type: u8,
    pub payload: Bytes,
    /// Payload bytes of every frame before this one.
    pub offset: u64,
    /// When the upstream read it (ms on the caller's clock).
    pub arrived: u64,
}

/// The bounds of a ring, from the `edge` config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most frame bytes kept, so the longest GOP kept for joining players.
    pub gop_bytes: u64,
    /// Most stream time (ms) kept, so the longest GOP kept.
    pub gop_ms: u64,
    /// A player whose next frame arrived longer ago than this (ms) skips
    /// to a keyframe.
    pub lag_ms: u64,
}

/// A timestamp step forward larger than this is a discontinuity, not
/// stream time (an encoder restart, a republish).
const JUMP_MS: i64 = 10_000;
/// A step back up to this is audio and video interleaving; further back
/// is a discontinuity.
const JITTER_MS: i64 = 500;

/// The recent frames of one upstream.
#[derive(Debug)]
pub struct Ring {
    frames: VecDeque<Frame>,
    limits: Limits,
    /// Sequence number of the next frame pushed.
    next_seq: u64,
    /// Payload bytes pushed so far (the next frame's offset).
    next_offset: u64,
    /// Payload bytes held in `frames`.
    held: u64,
    /// The newest clock of any frame pushed.
    clock: u64,
    /// Timestamp and clock of the last frame pushed.
    last: Option<(u32, u64)>,
    /// The latest configuration of each slot, by slot.
    configs: Vec<Frame>,
    metadata: Option<Frame>,
    /// The most recent join point.
    last_join: Option<u64>,
    /// A video frame has been seen: audio frames stop being join points.
    has_video: bool,
}

/// Where one player is.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The next frame it gets.
    next: u64,
    /// It waits for a join point before it gets media again.
    waiting: Option<Wait>,
    /// The clock of the first frame it got: its timestamps count from
    /// here.
    start: Option<u64>,
}

/// Why a player waits for a join point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// It just joined and the GOP cache had nothing to start it with.
    Join,
    /// It fell behind.
    Lag,
}

/// What one pull got a player.
#[derive(Debug, Default)]
pub struct Pulled {
    pub frames: Vec<Frame>,
    /// Frames skipped because the player was too far behind.
    pub dropped: u64,
}

impl Ring {
    pub fn new(limits: Limits) -> Self {
        Self {
            frames: VecDeque::new(),
            limits,
            next_seq: 0,
            next_offset: 0,
            held: 0,
            clock: 0,
            last: None,
            configs: Vec::new(),
            metadata: None,
            last_join: None,
            has_video: false,
        }
    }

    /// Appends a frame that arrived at `arrived` (ms); returns its sequence
    /// number. Frames beyond the GOP cache's bounds are let go.
    pub fn push(&mut self, arrived: u64, time: u32, kind: Kind, tag_type: u8, payload: Bytes) -> u64 {
        let clock = self.advance_clock(time);
        if matches!(kind, Kind::Key | Kind::Frame { video: true }) {
            self.has_video = true;
        }
        let join_point = match kind {
            Kind::Key => true,
            Kind::Frame { video: false } => !self.has_video,
            _ => false,
        };
        let seq = self.next_seq;
        let frame = Frame {
            seq,
            clock,
            kind,
            join_point,
            tag_type,
            offset: self.next_offset,
            arrived,
            payload,
        };
        match kind {
            Kind::Config { slot } => match self.configs.iter_mut().find(|c| c.kind == kind) {
                Some(c) => *c = frame.clone(),
                None => {
                    self.configs.push(frame.clone());
                    self.configs.sort_by_key(|c| match c.kind {
                        Kind::Config { slot } => slot,
                        _ => u8::MAX,
                    });
                    let _ = slot;
                }
            },
            Kind::Metadata => self.metadata = Some(frame.clone()),
            _ => {}
        }
        if join_point {
            self.last_join = Some(seq);
        }
        self.next_seq += 1;
        self.next_offset += frame.payload.len() as u64;
        self.held += frame.payload.len() as u64;
        self.frames.push_back(frame);
        self.evict();
        seq
    }

    /// The clock of a frame stamped `time`: the step from the previous
    /// frame is kept (audio slightly behind video stays so), a step that is
    /// a discontinuity (a republish starting again at 0, a jump forward)
    /// carries on from the newest clock instead.
    fn advance_clock(&mut self, time: u32) -> u64 {
        let clock = match self.last {
            None => 0,
            Some((last_time, last_clock)) => {
                let step = i64::from(time.wrapping_sub(last_time) as i32);
                if (-JITTER_MS..=JUMP_MS).contains(&step) {
                    last_clock.saturating_add_signed(step)
                } else {
                    self.clock
                }
            }
        };
        self.last = Some((time, clock));
        self.clock = self.clock.max(clock);
        clock
    }

    fn evict(&mut self) {
        let keep_bytes = self.limits.gop_bytes;
        let keep_ms = self.limits.gop_ms;
        while self.frames.len() > 1 {
            let front = &self.frames[0];
            if self.held <= keep_bytes && self.clock - front.clock <= keep_ms {
                break;
            }
            self.held -= front.payload.len() as u64;
            self.frames.pop_front();
        }
    }

    /// Payload bytes held (the decoder configurations and metadata kept
    /// apart are small and not counted).
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// The stream clock of the newest frame.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    fn first_seq(&self) -> u64 {
        self.frames.front().map_or(self.next_seq, |f| f.seq)
    }

    fn get(&self, seq: u64) -> Option<&Frame> {
        let first = self.first_seq();
        seq.checked_sub(first)
            .and_then(|i| self.frames.get(usize::try_from(i).ok()?))
    }

    /// Whether the frames from `seq` on fit the GOP cache's bounds.
    fn within_gop(&self, seq: u64) -> bool {
        self.get(seq).is_some_and(|f| {
            self.next_offset - f.offset <= self.limits.gop_bytes && self.clock - f.clock <= self.limits.gop_ms
        })
    }

    /// A new player: the metadata and decoder configurations it must get
    /// first, and its cursor, at the start of the cached GOP when there is
    /// one within the GOP limits, else waiting for the next join point.
    pub fn join(&self) -> (Vec<Frame>, Cursor) {
        let mut prefix: Vec<Frame> = self.metadata.iter().cloned().collect();
        prefix.extend(self.configs.iter().cloned());
        let start = self.last_join.filter(|&seq| self.within_gop(seq));
        let cursor = match start {
            Some(seq) => Cursor {
                next: seq,
                waiting: None,
                start: None,
            },
            None => Cursor {
                next: self.next_seq,
                waiting: Some(Wait::Join),
                start: None,
            },
        };
        (prefix, cursor)
    }

    /// The frames a player gets next at `now` (ms), at most about
    /// `max_bytes` of them (always at least one if there is one), after the
    /// lag rules.
    pub fn pull(&self, cursor: &mut Cursor, max_bytes: usize, now: u64) -> Pulled {
        let mut out = Pulled::default();
        let first = self.first_seq();
        if cursor.next < first {
            // Its frames are gone: what it missed is dropped.
            out.dropped += first - cursor.next;
            cursor.next = first;
            cursor.waiting = Some(Wait::Lag);
        }
        let fresh = |f: &Frame| now.saturating_sub(f.arrived) <= self.limits.lag_ms;
        if self.get(cursor.next).is_some_and(|f| !fresh(f)) {
            // The newest join point that arrived within the limit; else it
            // waits for the next one.
            let resume = self
                .frames
                .iter()
                .rev()
                .take_while(|f| f.seq >= cursor.next)
                .filter(|f| f.join_point)
                .find(|f| fresh(f))
                .map(|f| f.seq);
            let until = resume.unwrap_or(self.next_seq);
            for f in (cursor.next..until).filter_map(|seq| self.get(seq)) {
                if keeps(f.kind) {
                    out.frames.push(f.clone());
                } else {
                    out.dropped += 1;
                }
            }
            cursor.next = until;
            cursor.waiting = if resume.is_some() { None } else { Some(Wait::Lag) };
        }
        let mut bytes = 0usize;
        while let Some(f) = self.get(cursor.next) {
            if bytes >= max_bytes && !out.frames.is_empty() {
                break;
            }
            cursor.next += 1;
            if let Some(wait) = cursor.waiting {
                if f.join_point {
                    cursor.waiting = None;
                } else if !keeps(f.kind) {
                    if wait == Wait::Lag {
                        out.dropped += 1;
                    }
                    continue;
                }
            }
            if cursor.start.is_none() && !keeps(f.kind) {
                cursor.start = Some(f.clock);
            }
            bytes += f.payload.len();
            out.frames.push(f.clone());
        }
        out
    }

    /// Whether `cursor` has frames to pull.
    pub fn has_more(&self, cursor: &Cursor) -> bool {
        cursor.next < self.next_seq
    }
}

/// Frames a lagging player never skips: without them it cannot decode.
fn keeps(kind: Kind) -> bool {
    matches!(kind, Kind::Config { .. } | Kind::Metadata)
}

impl Cursor {
    /// The timestamp a player sees for `frame`: stream time since its first
    /// frame, so every player starts at 0 and never goes back.
    pub fn timestamp(&self, frame: &Frame) -> u32 {
        match self.start {
            Some(start) => frame.clock.saturating_sub(start) as u32,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        gop_bytes: 10_000,
        gop_ms: 10_000,
        lag_ms: 400,
    };

    /// A 25 fps stream arriving in real time: a keyframe every `gop`
    /// frames, `size` bytes each, frame `i` at `i * 40` ms.
    fn video(ring: &mut Ring, from: u32, n: u32, gop: u32, size: usize) {
        for i in from..from + n {
            let kind = if i % gop == 0 {
                Kind::Key
            } else {
                Kind::Frame { video: true }
            };
            ring.push(u64::from(i) * 40, i * 40, kind, 9, Bytes::from(vec![i as u8; size]));
        }
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn a_joining_player_starts_at_the_cached_gop_after_metadata_and_configs() {
        let mut ring = Ring::new(LIMITS);
        ring.push(0, 0, Kind::Metadata, 18, Bytes::from_static(b"meta"));
        ring.push(0, 0, Kind::Config { slot: 8 }, 8, Bytes::from_static(b"aac"));
        ring.push(0, 0, Kind::Config { slot: 0 }, 9, Bytes::from_static(b"avc"));
        video(&mut ring, 0, 12, 5, 10);
        let (prefix, mut cursor) = ring.join();
        let payloads: Vec<&[u8]> = prefix.iter().map(|f| &f.payload[..]).collect();
        assert_eq!(
            payloads,
            [&b"meta"[..], b"avc", b"aac"],
            "metadata, then configs by slot"
        );
        let pulled = ring.pull(&mut cursor, usize::MAX, 440);
        // Frames 0..12 are seq 3..15; the last keyframe is frame 10 (seq 13).
        assert_eq!(seqs(&pulled.frames), [13, 14]);
        assert!(pulled.frames[0].join_point);
        assert_eq!(cursor.timestamp(&pulled.frames[0]), 0);
        assert_eq!(cursor.timestamp(&pulled.frames[1]), 40);
        assert_eq!(pulled.dropped, 0);
    }

    #[test]
    fn a_joiner_gets_a_whole_gop_that_arrived_at_once() {
        // An origin sends its own GOP cache in one burst: frames that
        // arrived together are not lag, however much stream time they span.
        let mut ring = Ring::new(LIMITS);
        for i in 0..100u32 {
            let kind = if i == 0 { Kind::Key } else { Kind::Frame { video: true } };
            ring.push(5, i * 40, kind, 9, Bytes::from(vec![0; 10]));
        }
        let (_, mut cursor) = ring.join();
        let pulled = ring.pull(&mut cursor, usize::MAX, 6);
        assert_eq!(pulled.frames.len(), 100);
        assert_eq!(pulled.dropped, 0);
    }

    #[test]
    fn without_a_cached_gop_a_player_waits_for_the_next_keyframe() {
        let limits = Limits {
            gop_bytes: 35,
            ..LIMITS
        };
        let mut ring = Ring::new(limits);
        video(&mut ring, 0, 4, 10, 10);
        let (_, mut cursor) = ring.join();
        assert!(
            ring.pull(&mut cursor, usize::MAX, 120).frames.is_empty(),
            "GOP over the limit"
        );
        let mut got = Vec::new();
        for i in 4..14 {
            video(&mut ring, i, 1, 10, 10);
            let pulled = ring.pull(&mut cursor, usize::MAX, u64::from(i) * 40);
            assert_eq!(pulled.dropped, 0, "waiting to start is not dropping");
            got.extend(pulled.frames);
        }
        assert_eq!(seqs(&got), [10, 11, 12, 13]);
    }

    #[test]
    fn a_lagging_player_skips_to_the_newest_keyframe_within_the_limit() {
        let mut ring = Ring::new(LIMITS);
        video(&mut ring, 0, 1, 5, 100);
        let (_, mut slow) = ring.join();
        assert_eq!(seqs(&ring.pull(&mut slow, usize::MAX, 0).frames), [0]);
        // 24 more frames; at 960 ms its next frame arrived 920 ms ago.
        video(&mut ring, 1, 24, 5, 100);
        let pulled = ring.pull(&mut slow, usize::MAX, 960);
        // Keyframes at 5, 10, 15, 20; only 20 arrived within 400 ms.
        assert_eq!(seqs(&pulled.frames), [20, 21, 22, 23, 24]);
        assert_eq!(pulled.dropped, 19);
        assert_eq!(slow.timestamp(&pulled.frames[0]), 800, "time keeps running");
    }

    #[test]
    fn a_player_with_no_keyframe_in_reach_waits_and_keeps_configs() {
        let mut ring = Ring::new(LIMITS);
        video(&mut ring, 0, 1, 100, 100);
        let (_, mut slow) = ring.join();
        ring.pull(&mut slow, usize::MAX, 0);
        video(&mut ring, 1, 10, 100, 100);
        ring.push(440, 440, Kind::Config { slot: 0 }, 9, Bytes::from_static(b"new sps"));
        video(&mut ring, 11, 5, 100, 100);
        let pulled = ring.pull(&mut slow, usize::MAX, 600);
        assert_eq!(pulled.frames.len(), 1, "only the configuration");
        assert_eq!(&pulled.frames[0].payload[..], b"new sps");
        assert_eq!(pulled.dropped, 15);
        video(&mut ring, 16, 84, 100, 1);
        video(&mut ring, 100, 2, 100, 1);
        let pulled = ring.pull(&mut slow, usize::MAX, 4040);
        assert!(pulled.frames[0].join_point, "resumes at a keyframe");
        assert_eq!(pulled.frames.len(), 2);
        assert_eq!(pulled.dropped, 84);
    }

    #[test]
    fn a_player_whose_frames_were_let_go_resumes_at_a_keyframe() {
        let mut ring = Ring::new(LIMITS);
        video(&mut ring, 0, 1, 5, 10);
        let (_, mut gone) = ring.join();
        // 12 s of stream: everything older than 10 s is let go.
        video(&mut ring, 1, 300, 5, 10);
        let pulled = ring.pull(&mut gone, 50, 12_000);
        assert!(pulled.frames[0].join_point);
        assert!(pulled.dropped >= 290, "{}", pulled.dropped);
        assert!(ring.held_bytes() <= LIMITS.gop_bytes);
    }

    #[test]
    fn the_clock_follows_the_stream_and_carries_on_across_discontinuities() {
        let mut ring = Ring::new(LIMITS);
        for (t, want) in [
            (1000, 0),
            (1040, 40),
            (1030, 30),    // audio slightly behind: kept so
            (1080, 80),    //
            (0, 80),       // republish: carries on from the newest
            (40, 120),     //
            (40_000, 120), // a jump forward
            (40_040, 160), //
            (u32::MAX, 160),
            (39, 200), // wraps: 40 ms later
        ] {
            let seq = ring.push(0, t, Kind::Frame { video: false }, 8, Bytes::new());
            assert_eq!(ring.get(seq).unwrap().clock, want, "at {t}");
        }
    }

    #[test]
    fn audio_only_streams_join_at_any_frame_until_video_appears() {
        let mut ring = Ring::new(LIMITS);
        ring.push(0, 0, Kind::Frame { video: false }, 8, Bytes::new());
        ring.push(23, 23, Kind::Frame { video: false }, 8, Bytes::new());
        let (_, mut c) = ring.join();
        assert_eq!(seqs(&ring.pull(&mut c, usize::MAX, 23).frames), [1]);
        ring.push(40, 40, Kind::Frame { video: true }, 9, Bytes::new());
        ring.push(46, 46, Kind::Frame { video: false }, 8, Bytes::new());
        let (_, mut c) = ring.join();
        assert_eq!(
            seqs(&ring.pull(&mut c, usize::MAX, 46).frames),
            [1, 2, 3],
            "from the last join point"
        );
    }

    proptest! {
        /// Whatever the stream and however players pull, each gets frames
        /// in order with nothing repeated, media only from a join point on
        /// (after a start or a skip), and the ring stays within its bounds.
        #[test]
        fn players_get_ordered_suffixes_within_bounds(
            frames in prop::collection::vec((0u8..6, 1usize..400, 0u32..80, 0u64..100), 1..300),
            pulls in prop::collection::vec((0usize..300, 1usize..3000), 1..40),
        ) {
            let mut ring = Ring::new(LIMITS);
            let (mut time, mut now) = (0u32, 0u64);
            let mut players: Vec<(Cursor, Vec<Frame>)> = Vec::new();
            let mut pending = pulls.into_iter().peekable();
            for (i, (k, size, step, wait)) in frames.into_iter().enumerate() {
                time = time.wrapping_add(step);
                now += wait;
                let kind = match k {
                    0 => Kind::Key,
                    1 => Kind::Config { slot: 0 },
                    2 => Kind::Frame { video: false },
                    3 => Kind::Data,
                    _ => Kind::Frame { video: true },
                };
                ring.push(now, time, kind, 9, Bytes::from(vec![0u8; size]));
                prop_assert!(ring.held_bytes() <= LIMITS.gop_bytes + 400);
                if i % 7 == 0 {
                    let (_, c) = ring.join();
                    players.push((c, Vec::new()));
                }
                while let Some(&(who, max)) = pending.peek() {
                    if who > i { break; }
                    pending.next();
                    if players.is_empty() { continue; }
                    let n = players.len();
                    let (c, got) = &mut players[who % n];
                    let pulled = ring.pull(c, max, now);
                    let started = got.iter().any(|f| !keeps(f.kind));
                    if pulled.dropped > 0 || !started {
                        if let Some(first) = pulled.frames.iter().find(|f| !keeps(f.kind)) {
                            prop_assert!(first.join_point, "media starts and resumes at a join point: {:?}", first);
                        }
                    }
                    got.extend(pulled.frames);
                }
            }
            for (_, got) in &players {
                prop_assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "in order, no repeats");
            }
        }
    }
}
