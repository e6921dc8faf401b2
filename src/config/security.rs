//! The `http_api_auth` and `register` sections: who may call the admin
//! side of the system API, and which addresses a heartbeat may register.
//!
//! The Bearer settings keep the Go proxy's names and start-up checks (its
//! v8 line), so a v8 environment works unchanged. The token itself is a
//! [`Secret`]: never printed by `--check-config` or `{:?}`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::from_str_or_number;

/// A value that must not reach a log or a printout.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Bearer authentication of the system API's admin side (register,
/// origins, streams; metrics when `metrics` is on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `PROXY_HTTP_API_AUTH_ENABLED`.
    pub enabled: bool,
    /// `PROXY_HTTP_API_AUTH_TYPE`: only `bearer` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// `PROXY_HTTP_API_AUTH_TOKEN`.
    pub token: Secret,
    /// A file holding the token (a Kubernetes Secret mount); read once at
    /// start, surrounding white space dropped. Used when `token` is empty.
    pub token_file: Option<PathBuf>,
    /// Require the token on `/metrics` too.
    pub metrics: bool,
}

/// Whether the register API takes heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterMode {
    /// On, unless Kubernetes discovery is on (it is then the source of
    /// truth, and a heartbeat could only add origins nobody deployed).
    Auto,
    On,
    Off,
}

impl FromStr for RegisterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "yes" | "1" => Ok(Self::On),
            "off" | "false" | "no" | "0" => Ok(Self::Off),
            _ => Err("expected auto, on or off".into()),
        }
    }
}

/// Which origins a heartbeat may register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterConfig {
    pub enabled: RegisterMode,
    /// Addresses (after resolving a host name) an origin may have.
    pub allow_cidrs: CidrList,
    /// The registered `ip` must be the address the heartbeat came from.
    pub require_peer_ip: bool,
    /// Heartbeat origins in total; 0 = unlimited.
    pub max_origins: usize,
    /// Heartbeat origins registered from one peer address; 0 = unlimited.
    pub max_origins_per_peer: usize,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        Self {
            enabled: RegisterMode::Auto,
            allow_cidrs: CidrList::private(),
            require_peer_ip: false,
            max_origins: 1000,
            max_origins_per_peer: 16,
        }
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn masked(addr: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(bits - prefix);
    (addr >> shift) << shift
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Comma-separated ranges; empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    /// Private (RFC 1918), loopback and unique-local (RFC 4193) ranges:
    /// where origins live on a private network.
    pub fn private() -> Self {
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,::1/128,fc00::/7"
            .parse()
            .expect("valid ranges")
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl FromStr for CidrList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            c.fmt(f)?;
        }
        Ok(())
    }
}

impl Serialize for CidrList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CidrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_or_number(d)
    }
}

impl<'de> Deserialize<'de> for RegisterMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_or_number(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let list = CidrList::private();
        for inside in [
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "127.0.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(list.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "172.32.0.1",
            "8.8.8.8",
            "169.254.169.254",
            "fe80::1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!list.contains(ip(outside)), "{outside}");
        }
        let all: CidrList = "0.0.0.0/0, ::/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2001:db8::1")));
        let one: CidrList = "203.0.113.7".parse().unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        assert_eq!(CidrList::default(), "".parse().unwrap());
        for bad in ["10.0.0.0/33", "::/129", "x", "10.0.0.0/", "10.0.0.0/-1"] {
            assert!(bad.parse::<CidrList>().is_err(), "{bad}");
        }
        assert_eq!(
            CidrList::private().to_string().parse::<CidrList>().unwrap(),
            CidrList::private()
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let auth = AuthConfig {
            token: Secret("hunter2".into()),
            ..AuthConfig::default()
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
