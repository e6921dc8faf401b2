//! An SRS origin: where it is and which port serves which protocol.
//!
//! Every discovery path (heartbeat API, static config, Kubernetes) produces
//! the same [`Origin`]. The endpoint parser here is the one place that reads
//! the forms SRS advertises (`1935`, `0.0.0.0:1935`, `[::]:1935`,
//! `tcp://0.0.0.0:1935`, `udp://8000`, …); the host part of an endpoint is
//! always ignored, because the origin's reachable address is its `ip`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where an origin's registration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginSource {
    /// SRS `heartbeat { ports on; }` to the register API.
    Heartbeat,
    /// `PROXY_DEFAULT_BACKEND_*` or `origins:` in the config file.
    Static,
    /// A ready endpoint of a watched EndpointSlice.
    Kubernetes,
}

impl OriginSource {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Static => "static",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// The protocols an origin may serve; used to pick a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rtmp,
    Http,
    Api,
    Srt,
    Rtc,
}

impl Protocol {
    /// Every protocol, in the order status reports them.
    pub const ALL: [Protocol; 5] = [Self::Rtmp, Self::Http, Self::Api, Self::Srt, Self::Rtc];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rtmp => "rtmp",
            Self::Http => "http",
            Self::Api => "api",
            Self::Srt => "srt",
            Self::Rtc => "rtc",
        })
    }
}

/// Per-protocol ports; `None` means the origin does not serve it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub rtmp: Option<u16>,
    pub http: Option<u16>,
    pub api: Option<u16>,
    pub srt: Option<u16>,
    pub rtc: Option<u16>,
}

/// One SRS origin server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Stable identity: SRS's server id, a pod name, or `ip:port` for static
    /// entries. A new registration with the same id replaces the old one.
    pub id: Arc<str>,
    /// Address the proxy connects to (an IP, or a DNS name for static
    /// origins). Never taken from a client request.
    pub ip: Arc<str>,
    pub ports: Ports,
    pub source: OriginSource,
    /// Relative share of new streams for weighted policies (≥ 1).
    pub weight: u32,
    /// New streams are not placed here once it holds this many; 0 = no limit.
    pub max_streams: u32,
    /// The `OriginPool` that discovered it, for status and metrics.
    #[serde(default)]
    pub pool: Option<String>,
    /// For a heartbeat registration: the address it came from. Only that
    /// peer may refresh or change the id; it counts against that peer's cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<IpAddr>,
}

impl Origin {
    /// The port for `protocol`, if the origin serves it.
    pub fn port(&self, protocol: Protocol) -> Option<u16> {
        match protocol {
            Protocol::Rtmp => self.ports.rtmp,
            Protocol::Http => self.ports.http,
            Protocol::Api => self.ports.api,
            Protocol::Srt => self.ports.srt,
            Protocol::Rtc => self.ports.rtc,
        }
    }

    /// Whether a new stream arriving on `protocol` can be placed here.
    /// WebRTC needs two ports: signalling on `api`, media on `rtc`.
    pub fn serves(&self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Rtc => self.ports.rtc.is_some() && self.ports.api.is_some(),
            p => self.port(p).is_some(),
        }
    }

    /// `host:port` to connect to for `protocol`, IPv6 bracketed.
    pub fn authority(&self, protocol: Protocol) -> Option<String> {
        self.addr(protocol).map(|addr| addr.authority())
    }

    /// The address of the origin's `protocol` port, not yet written out.
    pub fn addr(&self, protocol: Protocol) -> Option<Addr> {
        Some(Addr {
            ip: self.ip.clone(),
            port: self.port(protocol)?,
        })
    }
}

/// An origin's address and one of its ports: a key that costs no
/// formatting (the keep-alive pool's, looked up on every HLS request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addr {
    pub ip: Arc<str>,
    pub port: u16,
}

impl Addr {
    /// `host:port`, IPv6 bracketed.
    pub fn authority(&self) -> String {
        let v6 = self.ip.contains(':');
        let mut out = String::with_capacity(self.ip.len() + 8);
        if v6 {
            out.push('[');
        }
        out.push_str(&self.ip);
        if v6 {
            out.push(']');
        }
        out.push(':');
        out.push_str(itoa::Buffer::new().format(self.port));
        out
    }
}

/// Why an endpoint string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("empty endpoint")]
    Empty,
    #[error("unknown scheme in endpoint {0:?} (expected tcp:// or udp://)")]
    Scheme(String),
    #[error("no valid port in endpoint {0:?}")]
    Port(String),
}

/// Extracts the port from an endpoint as SRS writes it in its heartbeat:
/// `1935`, `:1935`, `0.0.0.0:1935`, `[::]:1935`, `tcp://0.0.0.0:1935`,
/// `udp://0.0.0.0:8000`, `udp://8000`, `tcp://:1935`. Port 0 is rejected:
/// nothing can be reached there.
pub fn parse_endpoint_port(endpoint: &str) -> Result<u16, EndpointError> {
    let s = endpoint.trim();
    if s.is_empty() {
        return Err(EndpointError::Empty);
    }
    let rest = match s.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme.to_ascii_lowercase().as_str(), "tcp" | "udp") {
                return Err(EndpointError::Scheme(s.to_string()));
            }
            rest
        }
        None => s,
    };
    let port_text = if let Some(after_bracket) = rest.strip_prefix('[') {
        // [v6]:port
        let (_, tail) = after_bracket
            .split_once(']')
            .ok_or_else(|| EndpointError::Port(s.to_string()))?;
        tail.strip_prefix(':')
            .ok_or_else(|| EndpointError::Port(s.to_string()))?
    } else {
        match rest.rsplit_once(':') {
            // A bare v6 address without brackets has several colons and no
            // port we could tell apart from the address.
            Some((host, _)) if host.contains(':') => return Err(EndpointError::Port(s.to_string())),
            Some((_, port)) => port,
            None => rest,
        }
    };
    match port_text.parse::<u16>() {
        Ok(p) if p != 0 && port_text.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(EndpointError::Port(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_srs_sends() {
        for (input, port) in [
            ("1935", 1935),
            (" 1935 ", 1935),
            (":1935", 1935),
            ("0.0.0.0:1935", 1935),
            ("127.0.0.1:8080", 8080),
            ("[::]:1935", 1935),
            ("[::1]:1985", 1985),
            ("tcp://0.0.0.0:1935", 1935),
            ("TCP://0.0.0.0:1935", 1935),
            ("udp://0.0.0.0:8000", 8000),
            ("udp://8000", 8000),
            ("tcp://:1935", 1935),
            ("udp://[::]:10080", 10080),
        ] {
            assert_eq!(parse_endpoint_port(input), Ok(port), "{input}");
        }
    }

    #[test]
    fn rejects() {
        for input in [
            "",
            "   ",
            "0",
            "65536",
            "-1",
            "+80",
            "abc",
            "http://1.2.3.4:80",
            "tcp://",
            "1.2.3.4:",
            "[::]",
            "[::]1935",
            "::1:1935",
            "1935x",
            "udp://0.0.0.0:0",
            "1.2.3.4:99999",
        ] {
            assert!(parse_endpoint_port(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn authority_brackets_v6() {
        let o = Origin {
            id: "a".into(),
            ip: "fd00::1".into(),
            ports: Ports {
                http: Some(8080),
                ..Ports::default()
            },
            source: OriginSource::Static,
            weight: 1,
            max_streams: 0,
            pool: None,
            registered_by: None,
        };
        assert_eq!(o.authority(Protocol::Http).unwrap(), "[fd00::1]:8080");
        assert_eq!(o.authority(Protocol::Rtmp), None);
    }
}
