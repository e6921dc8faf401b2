//! Origins from config: the Go proxy's default backend and the YAML file's
//! `origins:` list.

use serde::{Deserialize, Deserializer, Serialize};

use super::value::StrOrNum;
use crate::origin::{parse_endpoint_port, Origin, OriginSource, Ports};

/// The Go proxy's debugging origin, registered from config at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultBackend {
    pub enabled: bool,
    pub ip: String,
    pub rtmp: Option<u16>,
    pub http: Option<u16>,
    pub api: Option<u16>,
    pub srt: Option<u16>,
    pub rtc: Option<u16>,
}

impl Default for DefaultBackend {
    fn default() -> Self {
        Self {
            enabled: false,
            ip: "127.0.0.1".into(),
            rtmp: Some(1935),
            http: Some(8080),
            api: Some(1985),
            srt: Some(10080),
            rtc: Some(8000),
        }
    }
}

/// An origin listed in the YAML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticOrigin {
    /// Defaults to `ip:rtmp` (or `ip:http`).
    #[serde(default)]
    pub id: Option<String>,
    pub ip: String,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub rtmp: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub http: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub api: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub srt: Option<u16>,
    #[serde(default, deserialize_with = "de_endpoint")]
    pub rtc: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_streams: u32,
}

fn one() -> u32 {
    1
}

fn de_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let raw = StrOrNum::deserialize(d)?;
    parse_endpoint_port(&raw.0).map(Some).map_err(serde::de::Error::custom)
}

impl StaticOrigin {
    /// The origin this entry describes.
    pub fn to_origin(&self) -> Origin {
        let ports = Ports {
            rtmp: self.rtmp,
            http: self.http,
            api: self.api,
            srt: self.srt,
            rtc: self.rtc,
        };
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.ip, self.rtmp.or(self.http).unwrap_or(0)));
        Origin {
            id: id.into(),
            ip: self.ip.as_str().into(),
            ports,
            source: OriginSource::Static,
            weight: self.weight.max(1),
            max_streams: self.max_streams,
            pool: None,
            registered_by: None,
        }
    }
}
