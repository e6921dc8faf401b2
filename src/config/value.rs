//! Text → value parsers shared by env values, flags and the YAML file, so
//! a value reads the same whatever its source.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest duration any setting accepts. Far above every sensible value,
/// far below what would overflow an `Instant` when added to now.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A listen address: `port` (all interfaces) or `ip:port`, as the Go proxy
/// accepts for every `PROXY_*_SERVER` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            // `[::]` accepts IPv4 too on Linux (dual stack), but not where
            // IPv6 is disabled; 0.0.0.0 is what the Go proxy binds.
            return Ok(Self(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)));
        }
        if let Some(port) = s.strip_prefix(':') {
            let port = port.parse::<u16>().map_err(|_| "bad port".to_string())?;
            return Ok(Self(SocketAddr::new(IpAddr::from(Ipv6Addr::UNSPECIFIED), port)));
        }
        s.parse::<SocketAddr>()
            .map(Self)
            .map_err(|_| "expected a port or ip:port".into())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_or_number(d)
    }
}

/// Parses a duration the way Go's `time.ParseDuration` writes the common
/// cases (`20s`, `1m`, `1m30s`, `500ms`, `2h`); a bare number is seconds.
/// Anything longer than [`MAX_DURATION`] is an error, never a panic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let too_long = || format!("longer than the limit of {}", format_duration(MAX_DURATION));
    if let Ok(secs) = s.parse::<u64>() {
        let d = Duration::from_secs(secs);
        return if d > MAX_DURATION { Err(too_long()) } else { Ok(d) };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in {s:?} (use s, ms, m or h)"))?;
        if digits == 0 {
            return Err(format!("expected a number in {s:?}"));
        }
        let value: f64 = rest[..digits].parse().map_err(|_| format!("bad number in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} (use s, ms, m or h)")),
        };
        rest = &rest[unit_len..];
        let part = Duration::try_from_secs_f64(value * unit).map_err(|_| too_long())?;
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// Formats a duration so that [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 && !d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// `#[serde(with = "duration_serde")]`: durations as text in YAML.
pub mod duration_serde {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw: StrOrNum = Deserialize::deserialize(d)?;
        parse_duration(&raw.0).map_err(serde::de::Error::custom)
    }
}

/// Accepts `on`/`off` (the Go proxy's spelling) and `true`/`false`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" | "" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

/// A scalar YAML value read as text, so numbers and strings both reach the
/// same `FromStr` parser that env values use.
pub struct StrOrNum(pub String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(StrOrNum(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::U(n) => n.to_string(),
            Raw::I(n) => n.to_string(),
            Raw::F(n) => n.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

/// Deserializes any scalar through `T`'s `FromStr`.
pub fn from_str_or_number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let raw = StrOrNum::deserialize(d)?;
    raw.0.parse().map_err(serde::de::Error::custom)
}

/// Any `FromStr` value, trimmed.
pub fn parsed<T: FromStr>(v: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

/// A count or size that must not be 0.
pub fn positive(v: &str) -> Result<usize, String> {
    match parsed::<usize>(v)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

/// Text as given, trimmed.
pub fn text(v: &str) -> Result<String, String> {
    Ok(v.trim().to_string())
}

/// Text as given, untrimmed (passwords, prefixes: spaces may matter).
pub fn raw(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_forms() {
        assert_eq!("8080".parse::<ListenAddr>().unwrap().0, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            "127.0.0.1:81".parse::<ListenAddr>().unwrap().0,
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!("[::1]:82".parse::<ListenAddr>().unwrap().0, "[::1]:82".parse().unwrap());
        assert_eq!(":83".parse::<ListenAddr>().unwrap().0.port(), 83);
        for bad in ["", "http", "70000", "1.2.3.4", "1.2.3.4:x"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "abc", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in [
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_millis(5),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn durations_that_would_overflow_are_errors() {
        for huge in [
            "99999999999999999999h",
            "18446744073709551615",
            "18446744073709551615s",
            "1e308s",
            "9999999999h9999999999h",
            "366d",
            "8761h",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge} must be refused, not panic");
        }
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
    }
}
