//! Decoding a chunked response body (RFC 9112 §7.1) as it arrives from an
//! origin, for the kept-alive exchanges of [`super::exchange`]: payload
//! bytes are split off the read buffer without copying; framing is
//! consumed and checked, under the same limits as the live relay's
//! [`ChunkScanner`](super::framing::ChunkScanner).
//!
//! Pure: bytes in, payload out; nothing here touches a socket.

use bytes::{Buf, Bytes, BytesMut};

use super::framing::FramingError;

/// Longest chunk-size line (size and extensions), CRLF excluded.
const MAX_LINE: usize = 4096;
/// Most bytes of trailer fields after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits of a chunk size: it fits in a `u64`.
const MAX_SIZE_DIGITS: usize = 16;

/// What one call to [`ChunkDecoder::decode`] found at the front of the
/// buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Payload bytes, taken off the buffer.
    Data(Bytes),
    /// More bytes are needed; what was there has been consumed or kept.
    Incomplete,
    /// The last chunk and its trailers have been consumed; the buffer
    /// holds what followed the body.
    End,
}

/// Where a chunked body stands between two calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// A chunk-size line is next.
    #[default]
    SizeLine,
    /// This many payload bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's payload is next.
    DataEnd,
    /// Trailer lines, then the empty line; this many trailer bytes so far.
    Trailers(usize),
    Done,
}

/// Takes a chunked body apart as its bytes come in.
#[derive(Debug, Clone, Default)]
pub struct ChunkDecoder {
    state: State,
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the last chunk and its trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from the front of `buf` up to the next payload
    /// bytes, and returns those (as many as `buf` holds of the chunk).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    let n = left.min(buf.len() as u64);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return match buf.first() {
                            Some(b'\r') | None => Ok(Decoded::Incomplete),
                            Some(_) => Err(FramingError::ChunkEnd),
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::SizeLine;
                }
                State::SizeLine => {
                    let Some(len) = line(buf, MAX_LINE, FramingError::ChunkLine, FramingError::ChunkSize)? else {
                        return Ok(Decoded::Incomplete);
                    };
                    let size = chunk_size(&buf[..len])?;
                    buf.advance(len + 2);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Trailers(total) => {
                    let room = MAX_TRAILERS.saturating_sub(total);
                    let Some(len) = line(buf, room, FramingError::Trailers, FramingError::Trailers)? else {
                        return Ok(Decoded::Incomplete);
                    };
                    if len == 0 {
                        buf.advance(2);
                        self.state = State::Done;
                        continue;
                    }
                    if total + len + 2 > MAX_TRAILERS {
                        return Err(FramingError::Trailers);
                    }
                    buf.advance(len + 2);
                    self.state = State::Trailers(total + len + 2);
                }
            }
        }
    }
}

/// The length of the CRLF-terminated line at the front of `buf`, CRLF
/// excluded; `None` while it is incomplete. A line over `max` bytes is
/// `too_long`; a bare CR or LF in it is `bad`.
fn line(buf: &[u8], max: usize, too_long: FramingError, bad: FramingError) -> Result<Option<usize>, FramingError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(at) if window[at] == b'\n' => Err(bad),
        Some(at) if at > max => Err(too_long),
        Some(at) => match window.get(at + 1) {
            Some(b'\n') => Ok(Some(at)),
            Some(_) => Err(bad),
            None => Ok(None),
        },
        None if window.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// The size a chunk-size line declares: hex digits, then optionally
/// extensions after `;` (or whitespace), which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(FramingError::ChunkSize);
    }
    if let Some(&next) = line.get(digits) {
        if !matches!(next, b';' | b' ' | b'\t') {
            return Err(FramingError::ChunkSize);
        }
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| FramingError::ChunkSize)?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::ChunkSize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::framing::chunked;
    use proptest::prelude::*;

    /// Everything `decoder` makes of `input` given in pieces cut at
    /// `cuts`: the payload, whether it ended, and what followed the end.
    fn run(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool, Vec<u8>), FramingError> {
        let mut decoder = ChunkDecoder::new();
        let mut buf = BytesMut::new();
        let mut payload = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(input.len());
        let mut from = 0;
        for to in bounds {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(data) => payload.extend_from_slice(&data),
                    Decoded::Incomplete => break,
                    Decoded::End => return Ok((payload, true, [&buf[..], &input[from..]].concat())),
                }
            }
        }
        Ok((payload, false, buf.to_vec()))
    }

    #[test]
    fn payload_comes_out_and_the_end_is_found() {
        let body = chunked(&[b"hello", b" ", b"world"]);
        let mut input = body.clone();
        input.extend_from_slice(b"NEXT");
        assert_eq!(run(&input, &[]), Ok((b"hello world".to_vec(), true, b"NEXT".to_vec())));

        let with_ext = b"5;name=value\r\nhello\r\nA \r\n0123456789\r\n0;x\r\nTrailer: 1\r\nOther: 2\r\n\r\n";
        assert_eq!(run(with_ext, &[]), Ok((b"hello0123456789".to_vec(), true, vec![])));
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        let body = chunked(&[b"hello"]);
        for cut in 0..body.len() {
            let (payload, ended, _) = run(&body[..cut], &[]).unwrap();
            assert!(!ended, "ended after {cut} bytes");
            assert!(b"hello".starts_with(&payload));
        }
    }

    #[test]
    fn broken_framing_is_an_error() {
        for (bad, want) in [
            (&b"x\r\n"[..], FramingError::ChunkSize),
            (b"\r\n", FramingError::ChunkSize),
            (b"5\nhello\r\n", FramingError::ChunkSize),
            (b"5\rhello\r\n", FramingError::ChunkSize),
            (b"5x\r\nhello\r\n", FramingError::ChunkSize),
            (b"11111111111111111\r\n", FramingError::ChunkSize),
            (b"5\r\nhelloX\r\n", FramingError::ChunkEnd),
            (b"5\r\nhello\rX", FramingError::ChunkEnd),
            (b"0\r\nTrailer\rX", FramingError::Trailers),
            (b"0\r\nTrailer\n", FramingError::Trailers),
        ] {
            assert_eq!(run(bad, &[]).unwrap_err(), want, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'e', MAX_LINE));
        assert_eq!(run(&long, &[]).unwrap_err(), FramingError::ChunkLine);
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS / 10 {
            trailers.extend_from_slice(b"X-A: 123\r\n");
        }
        assert_eq!(run(&trailers, &[]).unwrap_err(), FramingError::Trailers);
    }

    #[test]
    fn the_largest_chunk_size_parses_and_larger_ones_do_not() {
        assert_eq!(chunk_size(b"ffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(chunk_size(b"0000000000000000"), Ok(0));
        assert_eq!(chunk_size(b"1ffffffffffffffff"), Err(FramingError::ChunkSize));
    }

    proptest! {
        /// However the bytes are split, the payload comes out whole and in
        /// order, the end is found where it is, and what follows is left.
        #[test]
        fn any_split_gives_the_same_payload(
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in prop::collection::vec(0usize..3000, 0..6),
            trailing in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut input = chunked(&parts);
            input.extend_from_slice(&trailing);
            let (payload, ended, rest) = run(&input, &cuts).unwrap();
            prop_assert_eq!(payload, parts.concat());
            prop_assert!(ended);
            prop_assert_eq!(rest, trailing);
        }

        /// The decoder agrees with the live relay's scanner on payload
        /// length, on where a body ends and on whether it is well formed.
        #[test]
        fn the_decoder_and_the_scanner_agree(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let decoded = run(&bytes, &[]);
            let scanned = super::super::framing::ChunkScanner::new().scan(&bytes);
            if let (Ok((payload, ended, rest)), Ok(scanned)) = (&decoded, &scanned) {
                prop_assert_eq!(payload.len() as u64, scanned.payload);
                prop_assert_eq!(ended.then(|| bytes.len() - rest.len()), scanned.end);
            }
        }
    }
}
