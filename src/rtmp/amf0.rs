//! AMF0, the value encoding RTMP commands and metadata are written in.
//!
//! This module owns the [`Value`] model and the byte-level codec. It knows
//! nothing about RTMP messages or which command carries which value; that is
//! `command.rs`. Input comes from the network, so every length is checked
//! against the bytes actually present before anything is allocated, and
//! nesting is bounded so a hostile payload cannot exhaust the stack.

use bytes::{BufMut, Bytes, BytesMut};

/// How deep objects and arrays may nest before decoding gives up. Real
/// commands nest two or three levels (`connect`'s `data` ECMA array inside
/// the info object); 32 leaves plenty of room and keeps recursion shallow.
pub const DEFAULT_MAX_DEPTH: usize = 32;

mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
}

/// One AMF0 value.
///
/// Strings are one variant whatever their length: the decoder accepts both
/// the short (16-bit length) and the long (32-bit length) form, and the
/// encoder picks the long form only when the text does not fit the short
/// one, which is what every RTMP peer expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Object),
    Null,
    Undefined,
    /// An associative array; AMF0 writes a count, but peers disagree on what
    /// it means, so it is ignored on input and recomputed on output.
    EcmaArray(Object),
    StrictArray(Vec<Value>),
    /// Milliseconds since the Unix epoch, plus the time-zone field the
    /// format reserves (peers write 0 there).
    Date {
        millis: f64,
        timezone: i16,
    },
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) | Value::EcmaArray(o) => Some(o),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}

/// Ordered key/value pairs. Order is kept because peers (and tests that
/// compare bytes) care about it, and duplicate keys are kept because a
/// decoder has no business rewriting what the peer sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(pub Vec<(String, Value)>);

impl Object {
    pub fn new() -> Self {
        Object(Vec::new())
    }

    /// Builder-style insert, for assembling replies.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.push((key.to_owned(), value.into()));
        self
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    #[error("AMF0 input ends inside {0}")]
    Truncated(&'static str),
    #[error("unsupported AMF0 marker {0:#04x}")]
    UnknownMarker(u8),
    #[error("AMF0 values nest deeper than {0} levels")]
    TooDeep(usize),
    #[error("AMF0 string is not valid UTF-8")]
    InvalidUtf8,
    #[error("AMF0 object-end marker outside an object")]
    UnexpectedObjectEnd,
}

/// Reads AMF0 values one after another from a byte slice.
pub struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    /// Nesting allowed for objects and arrays, so hostile input cannot
    /// recurse the stack away.
    max_depth: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Decoder {
            input,
            pos: 0,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.input.len()
    }

    /// Bytes not yet decoded.
    pub fn remaining(&self) -> &'a [u8] {
        &self.input[self.pos.min(self.input.len())..]
    }

    /// Decodes the next value. On error the position is unspecified; callers
    /// drop the decoder.
    pub fn decode(&mut self) -> Result<Value, Amf0Error> {
        self.value(0)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Amf0Error> {
        let m = self.u8("a value marker")?;
        match m {
            marker::NUMBER => Ok(Value::Number(self.f64("a number")?)),
            marker::BOOLEAN => Ok(Value::Boolean(self.u8("a boolean")? != 0)),
            marker::STRING => {
                let len = usize::from(self.u16("a string length")?);
                Ok(Value::String(self.utf8(len, "a string")?))
            }
            marker::LONG_STRING => {
                let len = self.u32_len("a long string length")?;
                Ok(Value::String(self.utf8(len, "a long string")?))
            }
            marker::NULL => Ok(Value::Null),
            marker::UNDEFINED => Ok(Value::Undefined),
            marker::OBJECT => Ok(Value::Object(self.properties(depth + 1)?)),
            marker::ECMA_ARRAY => {
                // The count is advisory (some encoders write 0); the
                // object-end marker is what terminates the array.
                self.u32_len("an ECMA array count")?;
                Ok(Value::EcmaArray(self.properties(depth + 1)?))
            }
            marker::STRICT_ARRAY => {
                let count = self.u32_len("a strict array count")?;
                // Every element takes at least its marker byte, so a count
                // larger than what is left is a lie; refuse before
                // allocating for it.
                if count > self.remaining().len() {
                    return Err(Amf0Error::Truncated("a strict array"));
                }
                if depth + 1 > self.max_depth {
                    return Err(Amf0Error::TooDeep(self.max_depth));
                }
                // Capacity grows with what actually decodes, not with the
                // claimed count.
                let mut items = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Value::StrictArray(items))
            }
            marker::DATE => {
                let millis = self.f64("a date")?;
                let timezone = self.u16("a date time zone")? as i16;
                Ok(Value::Date { millis, timezone })
            }
            marker::OBJECT_END => Err(Amf0Error::UnexpectedObjectEnd),
            other => Err(Amf0Error::UnknownMarker(other)),
        }
    }

    /// Key/value pairs up to and including the empty-key object-end marker.
    fn properties(&mut self, depth: usize) -> Result<Object, Amf0Error> {
        if depth > self.max_depth {
            return Err(Amf0Error::TooDeep(self.max_depth));
        }
        let mut pairs = Vec::new();
        loop {
            let key_len = usize::from(self.u16("an object key length")?);
            if key_len == 0 && self.peek() == Some(marker::OBJECT_END) {
                self.pos += 1;
                return Ok(Object(pairs));
            }
            let key = self.utf8(key_len, "an object key")?;
            let value = self.value(depth)?;
            pairs.push((key, value));
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Amf0Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.input.len())
            .ok_or(Amf0Error::Truncated(what))?;
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Amf0Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Amf0Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32_len(&mut self, what: &'static str) -> Result<usize, Amf0Error> {
        let b = self.take(4, what)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| Amf0Error::Truncated(what))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, Amf0Error> {
        let b = self.take(8, what)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(f64::from_be_bytes(raw))
    }

    fn utf8(&mut self, len: usize, what: &'static str) -> Result<String, Amf0Error> {
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Amf0Error::InvalidUtf8)
    }
}

/// Decodes every value in `input`; trailing garbage is an error like any
/// other malformed value.
pub fn decode_all(input: &[u8]) -> Result<Vec<Value>, Amf0Error> {
    let mut decoder = Decoder::new(input);
    let mut values = Vec::new();
    while !decoder.is_empty() {
        values.push(decoder.decode()?);
    }
    Ok(values)
}

/// Appends the encoding of `value` to `out`.
///
/// Object keys longer than 65535 bytes cannot be expressed in AMF0; they are
/// cut at a character boundary. Decoded keys never are that long, so values
/// that came off the wire re-encode exactly.
pub fn encode(value: &Value, out: &mut BytesMut) {
    match value {
        Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Value::String(s) => match u16::try_from(s.len()) {
            Ok(len) => {
                out.put_u8(marker::STRING);
                out.put_u16(len);
                out.put_slice(s.as_bytes());
            }
            Err(_) => {
                let text = truncate_to(s, u32::MAX as usize);
                out.put_u8(marker::LONG_STRING);
                out.put_u32(text.len() as u32);
                out.put_slice(text.as_bytes());
            }
        },
        Value::Object(o) => {
            out.put_u8(marker::OBJECT);
            encode_properties(o, out);
        }
        Value::Null => out.put_u8(marker::NULL),
        Value::Undefined => out.put_u8(marker::UNDEFINED),
        Value::EcmaArray(o) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(u32::try_from(o.0.len()).unwrap_or(u32::MAX));
            encode_properties(o, out);
        }
        Value::StrictArray(items) => {
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
            for item in items {
                encode(item, out);
            }
        }
        Value::Date { millis, timezone } => {
            out.put_u8(marker::DATE);
            out.put_f64(*millis);
            out.put_i16(*timezone);
        }
    }
}

/// Encodes a sequence of values, the shape of a command or data message.
pub fn encode_all<'v>(values: impl IntoIterator<Item = &'v Value>) -> Bytes {
    let mut out = BytesMut::new();
    for value in values {
        encode(value, &mut out);
    }
    out.freeze()
}

fn encode_properties(o: &Object, out: &mut BytesMut) {
    for (key, value) in &o.0 {
        let key = truncate_to(key, usize::from(u16::MAX));
        out.put_u16(key.len() as u16);
        out.put_slice(key.as_bytes());
        encode(value, out);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
}

fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(v, &mut out);
        out.to_vec()
    }

    fn dec(bytes: &[u8]) -> Result<Value, Amf0Error> {
        Decoder::new(bytes).decode()
    }

    #[test]
    fn encodes_the_wire_forms_peers_expect() {
        assert_eq!(enc(&Value::Number(1.0)), [0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(&Value::Boolean(true)), [0x01, 0x01]);
        assert_eq!(enc(&"app".into()), [0x02, 0, 3, b'a', b'p', b'p']);
        assert_eq!(enc(&Value::Null), [0x05]);
        assert_eq!(enc(&Value::Undefined), [0x06]);
        assert_eq!(
            enc(&Value::Object(Object::new().with("a", 1.0))),
            [0x03, 0, 1, b'a', 0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0, 0x09]
        );
        assert_eq!(enc(&Value::EcmaArray(Object::new())), [0x08, 0, 0, 0, 0, 0, 0, 0x09]);
        assert_eq!(enc(&Value::StrictArray(vec![Value::Null])), [0x0a, 0, 0, 0, 1, 0x05]);
        assert_eq!(
            enc(&Value::Date {
                millis: 0.0,
                timezone: -1
            }),
            [0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
    }

    #[test]
    fn long_strings_use_the_32_bit_form_both_ways() {
        let text = "x".repeat(70_000);
        let bytes = enc(&Value::String(text.clone()));
        assert_eq!(bytes[0], marker::LONG_STRING);
        assert_eq!(&bytes[1..5], &70_000u32.to_be_bytes());
        assert_eq!(dec(&bytes), Ok(Value::String(text)));
        // A short text in the long form still decodes.
        assert_eq!(dec(&[0x0c, 0, 0, 0, 2, b'h', b'i']), Ok(Value::String("hi".into())));
    }

    #[test]
    fn ecma_array_count_is_advisory() {
        // Count says 5, one pair follows, then the end marker.
        let bytes = [0x08, 0, 0, 0, 5, 0, 1, b'k', 0x05, 0, 0, 0x09];
        assert_eq!(dec(&bytes), Ok(Value::EcmaArray(Object::new().with("k", Value::Null))));
    }

    #[test]
    fn empty_key_that_is_not_the_end_marker_is_a_property() {
        let bytes = [0x03, 0, 0, 0x05, 0, 0, 0x09];
        assert_eq!(dec(&bytes), Ok(Value::Object(Object::new().with("", Value::Null))));
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x00, 0x3f, 0xf0],
            &[0x01],
            &[0x02, 0x00],
            &[0x02, 0x00, 0x05, b'a', b'b'],
            &[0x02, 0xff, 0xff],
            &[0x0c, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0x03, 0x00, 0x01, b'a'],
            &[0x03, 0x00, 0x01, b'a', 0x05],
            &[0x03, 0x00, 0x00],
            &[0x08, 0x00, 0x00],
            &[0x0a, 0xff, 0xff, 0xff, 0xff],
            &[0x0a, 0x00, 0x00, 0x00, 0x02, 0x05],
            &[0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for case in cases {
            assert!(
                matches!(dec(case), Err(Amf0Error::Truncated(_))),
                "{case:02x?} gave {:?}",
                dec(case)
            );
        }
    }

    #[test]
    fn unknown_and_unsupported_markers_are_errors() {
        // movieclip, reference, unsupported, recordset, XML, typed object,
        // AVM+ switch, and bytes past the end of the table.
        for m in [0x04u8, 0x07, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0xff] {
            assert_eq!(dec(&[m, 0, 0, 0, 0]), Err(Amf0Error::UnknownMarker(m)));
        }
    }

    #[test]
    fn object_end_outside_an_object_is_an_error() {
        assert_eq!(dec(&[0x09]), Err(Amf0Error::UnexpectedObjectEnd));
        assert_eq!(dec(&[0x0a, 0, 0, 0, 1, 0x09]), Err(Amf0Error::UnexpectedObjectEnd));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(dec(&[0x02, 0, 2, 0xc3, 0x28]), Err(Amf0Error::InvalidUtf8));
        assert_eq!(dec(&[0x03, 0, 1, 0xff, 0x05, 0, 0, 0x09]), Err(Amf0Error::InvalidUtf8));
    }

    #[test]
    fn deep_nesting_stops_at_the_limit_without_overflowing_the_stack() {
        // 100 000 nested objects: a recursive decoder without a limit would
        // blow the stack long before reaching the end.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0x03, 0, 1, b'k']);
        }
        assert_eq!(dec(&bytes), Err(Amf0Error::TooDeep(DEFAULT_MAX_DEPTH)));

        let mut arrays = Vec::new();
        for _ in 0..100_000 {
            arrays.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        assert_eq!(dec(&arrays), Err(Amf0Error::TooDeep(DEFAULT_MAX_DEPTH)));
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        let mut v = Value::Null;
        for _ in 0..3 {
            v = Value::Object(Object::new().with("k", v));
        }
        let bytes = enc(&v);
        assert_eq!(Decoder::new(&bytes).with_max_depth(3).decode(), Ok(v));
        assert_eq!(
            Decoder::new(&bytes).with_max_depth(2).decode(),
            Err(Amf0Error::TooDeep(2))
        );
    }

    #[test]
    fn decode_all_reads_a_command_shaped_sequence() {
        let values = vec![
            Value::from("connect"),
            Value::Number(1.0),
            Value::Object(Object::new().with("app", "live")),
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes), Ok(values));
        let mut trailing = bytes.to_vec();
        trailing.push(0x02);
        assert!(decode_all(&trailing).is_err());
    }

    #[test]
    fn object_lookup_helpers() {
        let o = Object::new().with("app", "live").with("n", 2.0).with("app", "dup");
        assert_eq!(o.get_str("app"), Some("live"));
        assert_eq!(o.get_f64("n"), Some(2.0));
        assert_eq!(o.get_str("n"), None);
        assert_eq!(o.get("missing"), None);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<f64>()
                .prop_filter("NaN never equals itself", |n| !n.is_nan())
                .prop_map(Value::Number),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,40}".prop_map(Value::String),
            Just(Value::Null),
            Just(Value::Undefined),
            (-1e15f64..1e15, any::<i16>()).prop_map(|(millis, timezone)| Value::Date { millis, timezone }),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            let pairs = prop::collection::vec((".{0,12}", inner.clone()), 0..8).prop_map(Object);
            prop_oneof![
                pairs.clone().prop_map(Value::Object),
                pairs.prop_map(Value::EcmaArray),
                prop::collection::vec(inner, 0..8).prop_map(Value::StrictArray),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(v in arb_value()) {
            let bytes = enc(&v);
            let mut decoder = Decoder::new(&bytes);
            prop_assert_eq!(decoder.decode(), Ok(v));
            prop_assert!(decoder.is_empty());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_all(&bytes);
        }

        #[test]
        fn every_strict_prefix_of_a_value_is_truncated(v in arb_value()) {
            let bytes = enc(&v);
            for cut in 0..bytes.len() {
                prop_assert!(dec(&bytes[..cut]).is_err());
            }
        }
    }
}
