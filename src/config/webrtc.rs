//! WebRTC settings: what clients are told in the answer's candidates, how
//! long a session lives without packets, and the bounds that keep spoofed
//! STUN from growing memory or flooding the store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::duration_serde;

/// `webrtc.*` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebrtcConfig {
    /// Public IPs or host names announced as the answer's candidates (the
    /// first preferred); empty keeps each origin candidate's address, as
    /// the Go proxy does when SRS's own `candidate` is the proxy.
    pub candidate: Vec<String>,
    /// UDP port announced in candidates; unset = `webrtc_server`'s port
    /// (set it when a load balancer maps another port to the proxy's).
    pub public_port: Option<u16>,
    /// A session with no packet either way this long ends; also the TTL
    /// of its store record, refreshed while it lives.
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
    /// Most sessions one replica holds, bound or awaiting their first
    /// connectivity check.
    pub max_sessions: usize,
    /// Store look-ups per second for STUN usernames the replica does not
    /// know (sessions signalled on another replica).
    pub lookup_rate: usize,
    /// Largest offer, answer or JSON signalling body.
    pub max_sdp_bytes: usize,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            candidate: Vec::new(),
            public_port: None,
            idle_timeout: Duration::from_secs(30),
            max_sessions: 10_000,
            lookup_rate: 100,
            max_sdp_bytes: 64 * 1024,
        }
    }
}

/// `PROXY_WEBRTC_CANDIDATE`: addresses separated by commas or spaces.
pub fn candidates(v: &str) -> Result<Vec<String>, String> {
    let out: Vec<String> = v
        .split([',', ' '])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    for a in &out {
        if a.chars()
            .any(|c| c.is_control() || c == '/' || c == '?' || c == '#' || c == '*')
        {
            return Err(format!("{a:?} is not an IP address or host name"));
        }
    }
    Ok(out)
}

/// A port; `0` means unset.
pub fn optional_port(v: &str) -> Result<Option<u16>, String> {
    let port: u16 = v.trim().parse().map_err(|e| format!("{e}"))?;
    Ok((port != 0).then_some(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_lists() {
        assert_eq!(
            candidates("203.0.113.7, proxy.example.com  2001:db8::1").unwrap(),
            vec!["203.0.113.7", "proxy.example.com", "2001:db8::1"]
        );
        assert_eq!(candidates(" , ").unwrap(), Vec::<String>::new());
        assert!(candidates("*").is_err(), "SRS's wildcard means nothing here");
        assert!(candidates("http://x").is_err());
        assert_eq!(optional_port("0").unwrap(), None);
        assert_eq!(optional_port("8000").unwrap(), Some(8000));
        assert!(optional_port("70000").is_err());
    }
}
