//! The `edge` section: whether the HTTP-FLV and RTMP players of one
//! stream share one origin connection per replica (and its HTTP-TS
//! players another), and the bounds of what that sharing keeps in memory
//! (the GOP cache, how far a player may fall behind, the HLS cache).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::{duration_serde, from_str_or_number, parse_bool};

/// `edge.mode`: `off` (transparent, one origin request per client
/// request) or `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EdgeMode {
    #[default]
    Off,
    On,
}

impl FromStr for EdgeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(if parse_bool(s)? { Self::On } else { Self::Off })
    }
}

impl fmt::Display for EdgeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
        })
    }
}

impl Serialize for EdgeMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EdgeMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_or_number(d)
    }
}

/// `edge.*` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// On: one upstream per stream per replica for its HTTP-FLV and RTMP
    /// players, one for its HTTP-TS players.
    pub mode: EdgeMode,
    /// Most bytes of frames kept per stream, so the longest GOP kept for
    /// players that join (joiners of a longer one wait for the next
    /// keyframe).
    pub gop_cache_bytes: usize,
    /// Most stream time of frames kept per stream.
    #[serde(with = "duration_serde")]
    pub gop_cache_duration: Duration,
    /// A player whose next frame arrived this long ago skips whole frames
    /// to a keyframe.
    #[serde(with = "duration_serde")]
    pub player_lag: Duration,
    /// A player whose connection could not take what was queued for it
    /// while the stream went on this long (stream time) is disconnected.
    #[serde(with = "duration_serde")]
    pub player_timeout: Duration,
    /// How long an upstream stays open after its last player left.
    #[serde(with = "duration_serde")]
    pub linger: Duration,
    /// Most bytes of HLS playlists and segments kept for players (the
    /// least recently used go first).
    pub hls_cache_bytes: usize,
    /// A segment larger than this is not cached: every player fetches it
    /// on its own, as with edge mode off.
    pub hls_max_segment_bytes: usize,
    /// How long a segment is served from the cache: about how long it
    /// stays in its live playlist (SRS's `hls_window`).
    #[serde(with = "duration_serde")]
    pub hls_segment_ttl: Duration,
    /// How long a playlist is served from the cache; zero: half its
    /// `#EXT-X-TARGETDURATION`.
    #[serde(with = "duration_serde")]
    pub hls_playlist_ttl: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            mode: EdgeMode::Off,
            gop_cache_bytes: 8 * 1024 * 1024,
            gop_cache_duration: Duration::from_secs(10),
            player_lag: Duration::from_secs(3),
            player_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            hls_cache_bytes: 256 * 1024 * 1024,
            hls_max_segment_bytes: 32 * 1024 * 1024,
            hls_segment_ttl: Duration::from_secs(60),
            hls_playlist_ttl: Duration::ZERO,
        }
    }
}

impl EdgeConfig {
    pub fn enabled(&self) -> bool {
        self.mode == EdgeMode::On
    }

    /// Checks the values; a bad one is named by its key, with why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("edge.gop_cache_duration", self.gop_cache_duration),
            ("edge.player_lag", self.player_lag),
            ("edge.player_timeout", self.player_timeout),
            ("edge.hls_segment_ttl", self.hls_segment_ttl),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.hls_max_segment_bytes > self.hls_cache_bytes {
            return Err((
                "edge.hls_max_segment_bytes",
                format!(
                    "{} is above edge.hls_cache_bytes {}",
                    self.hls_max_segment_bytes, self.hls_cache_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_reads_like_the_go_proxys_switches() {
        for on in ["on", "true", "1", " ON "] {
            assert_eq!(on.parse::<EdgeMode>(), Ok(EdgeMode::On), "{on}");
        }
        for off in ["off", "false", "0"] {
            assert_eq!(off.parse::<EdgeMode>(), Ok(EdgeMode::Off), "{off}");
        }
        assert!("maybe".parse::<EdgeMode>().is_err());
        let yaml: EdgeConfig = serde_yaml::from_str("mode: on\nlinger: 2s\n").unwrap();
        assert!(yaml.enabled());
        assert_eq!(yaml.linger, Duration::from_secs(2));
        assert_eq!(serde_yaml::to_value(&yaml).unwrap()["mode"], "on");
    }

    #[test]
    fn zero_durations_are_refused_by_name() {
        let c = EdgeConfig {
            player_timeout: Duration::ZERO,
            ..EdgeConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "edge.player_timeout");
        assert!(EdgeConfig::default().check().is_ok());
        let c = EdgeConfig {
            hls_cache_bytes: 1000,
            hls_max_segment_bytes: 1001,
            ..EdgeConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "edge.hls_max_segment_bytes");
    }
}
