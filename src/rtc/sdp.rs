//! SDP as WebRTC signalling uses it (RFC 8866 grammar, RFC 8839 ICE
//! attributes): read the ICE credentials of an offer or answer, and rewrite
//! an answer's candidates to where clients reach the proxy.
//!
//! The description is parsed into lines (`<type>=<value>`) grouped into the
//! session part and one section per `m=` line, and candidates are parsed
//! field by field, so a rewrite touches exactly the candidate's address and
//! port and nothing that merely looks like them (a port number inside a
//! fingerprint, an address inside `o=`).

use std::fmt;

/// Longest `ice-ufrag`/`ice-pwd` accepted (RFC 8839 §5.4: 4–256 chars).
const MAX_ICE_CREDENTIAL: usize = 256;

/// Why an SDP was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is empty")]
    Empty,
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("SDP line {0} is not <type>=<value>")]
    BadLine(usize),
    #[error("SDP has no media section (m=)")]
    NoMedia,
    #[error("SDP has no a=ice-ufrag")]
    NoUfrag,
    #[error("SDP has no a=ice-pwd")]
    NoPwd,
    #[error("SDP a=ice-ufrag/ice-pwd is empty, too long or has characters outside ice-char")]
    BadCredential,
}

/// One `<type>=<value>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    kind: u8,
    value: String,
}

impl Line {
    /// For `a=name:value` (or `a=name`), the value when the name matches.
    fn attribute(&self, name: &str) -> Option<&str> {
        if self.kind != b'a' {
            return None;
        }
        match self.value.split_once(':') {
            Some((n, v)) if n == name => Some(v),
            None if self.value == name => Some(""),
            _ => None,
        }
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Lines before the first `m=`.
    session: Vec<Line>,
    /// Each media section, its `m=` line first.
    media: Vec<Vec<Line>>,
}

/// The ICE credentials of one side of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

/// A parsed `a=candidate` value (RFC 8839 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub foundation: String,
    pub component: String,
    pub transport: String,
    pub priority: u32,
    pub address: String,
    pub port: u16,
    /// `typ` and every extension after it, verbatim.
    pub rest: String,
}

impl Candidate {
    /// Parses the value of `a=candidate:`; `None` if it is not a candidate.
    pub fn parse(value: &str) -> Option<Self> {
        let mut fields = value.split_ascii_whitespace();
        let foundation = fields.next()?.to_string();
        let component = fields.next()?.to_string();
        let transport = fields.next()?.to_string();
        let priority = fields.next()?.parse().ok()?;
        let address = fields.next()?.to_string();
        let port = fields.next()?.parse().ok()?;
        let rest: Vec<&str> = fields.collect();
        if rest.first() != Some(&"typ") || rest.len() < 2 {
            return None;
        }
        Some(Self {
            foundation,
            component,
            transport,
            priority,
            address,
            port,
            rest: rest.join(" "),
        })
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {}",
            self.foundation, self.component, self.transport, self.priority, self.address, self.port, self.rest
        )
    }
}

/// Where an answer's candidates must point after the rewrite.
#[derive(Debug, Clone)]
pub struct CandidateRewrite<'a> {
    /// The origin's WebRTC UDP port: only candidates on it are relayed.
    pub origin_port: u16,
    /// The proxy's public UDP port.
    pub proxy_port: u16,
    /// Public addresses of the proxy; empty keeps each candidate's address.
    pub public: &'a [String],
}

fn is_ice_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '+' || c == '/'
}

fn credential(value: &str) -> Result<String, SdpError> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_ICE_CREDENTIAL || !value.chars().all(is_ice_char) {
        return Err(SdpError::BadCredential);
    }
    Ok(value.to_string())
}

impl Sdp {
    /// Parses a description: CRLF or LF line ends, `v=` first.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut session = Vec::new();
        let mut media: Vec<Vec<Line>> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let bytes = raw.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(SdpError::BadLine(i + 1));
            }
            let line = Line {
                kind: bytes[0],
                value: raw[2..].to_string(),
            };
            if session.is_empty() && media.is_empty() && !(line.kind == b'v' && line.value == "0") {
                return Err(SdpError::NoVersion);
            }
            if line.kind == b'm' {
                media.push(vec![line]);
            } else if let Some(section) = media.last_mut() {
                section.push(line);
            } else {
                session.push(line);
            }
        }
        if session.is_empty() {
            return Err(SdpError::Empty);
        }
        Ok(Self { session, media })
    }

    /// Number of media sections.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// The ICE credentials: those of the first media section, or the
    /// session-level ones it inherits (with BUNDLE every section shares
    /// them). An SDP without media or without both credentials is refused.
    pub fn ice_credentials(&self) -> Result<IceCredentials, SdpError> {
        let first = self.media.first().ok_or(SdpError::NoMedia)?;
        let find = |name: &str| {
            first
                .iter()
                .chain(&self.session)
                .find_map(|l| l.attribute(name))
                .map(str::to_string)
        };
        let ufrag = find("ice-ufrag").ok_or(SdpError::NoUfrag)?;
        let pwd = find("ice-pwd").ok_or(SdpError::NoPwd)?;
        Ok(IceCredentials {
            ufrag: credential(&ufrag)?,
            pwd: credential(&pwd)?,
        })
    }

    /// Every candidate, in order (for tests and logs).
    pub fn candidates(&self) -> Vec<Candidate> {
        self.session
            .iter()
            .chain(self.media.iter().flatten())
            .filter_map(|l| l.attribute("candidate"))
            .filter_map(Candidate::parse)
            .collect()
    }

    /// Rewrites the candidates of every section to where clients reach the
    /// proxy and returns how many remain. Only UDP candidates on the
    /// origin's WebRTC port are relayed; the rest (TCP, other ports,
    /// unparsable) are removed. With public addresses, each section gets one
    /// candidate per address, modelled on its first relayed candidate, the
    /// first address preferred; without, each relayed candidate keeps its
    /// address. Either way the port becomes the proxy's.
    pub fn rewrite_candidates(&mut self, to: &CandidateRewrite<'_>) -> usize {
        let mut kept = rewrite_section(&mut self.session, to);
        for section in &mut self.media {
            kept += rewrite_section(section, to);
        }
        kept
    }
}

fn rewrite_section(lines: &mut Vec<Line>, to: &CandidateRewrite<'_>) -> usize {
    let Some(first_at) = lines.iter().position(|l| l.attribute("candidate").is_some()) else {
        return 0;
    };
    let relayed: Vec<Candidate> = lines
        .iter()
        .filter_map(|l| l.attribute("candidate"))
        .filter_map(Candidate::parse)
        .filter(|c| c.transport.eq_ignore_ascii_case("udp") && c.port == to.origin_port)
        .collect();
    let mut out: Vec<Candidate> = Vec::new();
    if to.public.is_empty() {
        for mut c in relayed {
            c.port = to.proxy_port;
            if !out.iter().any(|o| o.address == c.address && o.component == c.component) {
                out.push(c);
            }
        }
    } else if let Some(template) = relayed.first() {
        for (i, address) in to.public.iter().enumerate() {
            if out.iter().any(|o| &o.address == address) {
                continue;
            }
            let mut c = template.clone();
            if i > 0 {
                c.foundation = format!("{}{i}", template.foundation);
            }
            c.priority = template.priority.saturating_sub(i as u32);
            c.address = address.clone();
            c.port = to.proxy_port;
            out.push(c);
        }
    }
    lines.retain(|l| l.attribute("candidate").is_none());
    let kept = out.len();
    let new_lines = out.into_iter().map(|c| Line {
        kind: b'a',
        value: format!("candidate:{c}"),
    });
    lines.splice(first_at..first_at, new_lines);
    kept
}

impl fmt::Display for Sdp {
    /// Serialises with CRLF line ends, as RFC 8866 requires.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.session.iter().chain(self.media.iter().flatten()) {
            write!(f, "{}={}\r\n", line.kind as char, line.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An answer shaped like SRS 6's.
    const SRS_ANSWER: &str = "v=0\r\n\
o=SRS/6.0.184(Bee) 94051611466320 2 IN IP4 0.0.0.0\r\n\
s=SRSPublishSession\r\n\
t=0 0\r\n\
a=ice-lite\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS live/livestream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:8000abcd\r\n\
a=ice-pwd:0123456789abcdef0123456789abcdef\r\n\
a=fingerprint:sha-256 8000:8000:AB\r\n\
a=setup:passive\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=candidate:0 1 udp 2130706431 10.0.0.7 8000 typ host generation 0\r\n\
a=candidate:1 1 tcp 2130706430 10.0.0.7 8000 typ host tcptype passive\r\n\
a=candidate:2 1 udp 2130706429 10.0.0.7 9000 typ host generation 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 106\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:8000abcd\r\n\
a=ice-pwd:0123456789abcdef0123456789abcdef\r\n\
a=mid:1\r\n\
a=rtpmap:106 H264/90000\r\n\
a=candidate:0 1 udp 2130706431 10.0.0.7 8000 typ host generation 0\r\n\
a=candidate:3 1 udp 2130706431 fd00::7 8000 typ host generation 0\r\n\
a=end-of-candidates\r\n";

    fn rewrite(sdp: &str, public: &[&str]) -> (Sdp, usize) {
        let public: Vec<String> = public.iter().map(|s| s.to_string()).collect();
        let mut sdp = Sdp::parse(sdp).unwrap();
        let kept = sdp.rewrite_candidates(&CandidateRewrite {
            origin_port: 8000,
            proxy_port: 18000,
            public: &public,
        });
        (sdp, kept)
    }

    #[test]
    fn reads_credentials() {
        let sdp = Sdp::parse(SRS_ANSWER).unwrap();
        assert_eq!(sdp.media_count(), 2);
        assert_eq!(
            sdp.ice_credentials().unwrap(),
            IceCredentials {
                ufrag: "8000abcd".into(),
                pwd: "0123456789abcdef0123456789abcdef".into()
            }
        );
    }

    #[test]
    fn session_level_credentials_are_inherited() {
        let sdp = "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\na=ice-ufrag:abcd\na=ice-pwd:efghijklmnopqrstuvwxyz01\nm=video 9 UDP/TLS/RTP/SAVPF 96\n";
        let creds = Sdp::parse(sdp).unwrap().ice_credentials().unwrap();
        assert_eq!(creds.ufrag, "abcd");
    }

    #[test]
    fn keeps_addresses_moves_ports_when_no_public_address() {
        let (sdp, kept) = rewrite(SRS_ANSWER, &[]);
        assert_eq!(kept, 3, "audio: one; video: IPv4 and IPv6");
        let text = sdp.to_string();
        assert!(text.contains("a=candidate:0 1 udp 2130706431 10.0.0.7 18000 typ host generation 0\r\n"));
        assert!(text.contains("a=candidate:3 1 udp 2130706431 fd00::7 18000 typ host generation 0\r\n"));
        assert!(!text.contains(" tcp "), "TCP candidates are not relayed");
        assert!(!text.contains(" 9000 "), "candidates on other ports are not relayed");
        assert!(!text.contains(" 8000 typ"));
        // Everything that is not a candidate is untouched, including
        // values that contain the port number.
        assert!(text.contains("a=fingerprint:sha-256 8000:8000:AB\r\n"));
        assert!(text.contains("a=ice-ufrag:8000abcd\r\n"));
        assert!(text.contains("a=end-of-candidates\r\n"));
        assert!(text.starts_with("v=0\r\no=SRS/6.0.184(Bee) 94051611466320 2 IN IP4 0.0.0.0\r\n"));
    }

    #[test]
    fn public_addresses_replace_candidates() {
        let (sdp, kept) = rewrite(SRS_ANSWER, &["203.0.113.9", "proxy.example.com"]);
        assert_eq!(kept, 4, "two sections, two public addresses each");
        let cands = sdp.candidates();
        let summary: Vec<(String, u16, u32)> = cands.iter().map(|c| (c.address.clone(), c.port, c.priority)).collect();
        assert_eq!(
            summary,
            vec![
                ("203.0.113.9".into(), 18000, 2130706431),
                ("proxy.example.com".into(), 18000, 2130706430),
                ("203.0.113.9".into(), 18000, 2130706431),
                ("proxy.example.com".into(), 18000, 2130706430),
            ]
        );
        assert!(cands
            .iter()
            .all(|c| c.transport == "udp" && c.rest.starts_with("typ host")));
        assert_ne!(
            cands[0].foundation, cands[1].foundation,
            "distinct addresses, distinct foundations"
        );
        // Candidates stay where they were: before end-of-candidates.
        let text = sdp.to_string();
        assert!(text.find("proxy.example.com").unwrap() < text.find("a=end-of-candidates").unwrap());
    }

    #[test]
    fn no_relayable_candidate_leaves_none() {
        let answer = SRS_ANSWER.replace(" 8000 typ", " 8001 typ");
        let (sdp, kept) = rewrite(&answer, &["203.0.113.9"]);
        assert_eq!(kept, 0);
        assert!(sdp.candidates().is_empty());
    }

    #[test]
    fn rejects_what_is_not_an_sdp() {
        assert_eq!(Sdp::parse("").unwrap_err(), SdpError::Empty);
        assert_eq!(Sdp::parse("\r\n\r\n").unwrap_err(), SdpError::Empty);
        assert_eq!(Sdp::parse("{\"sdp\":1}").unwrap_err(), SdpError::BadLine(1));
        assert_eq!(Sdp::parse("o=- 1 1 IN IP4 0.0.0.0\n").unwrap_err(), SdpError::NoVersion);
        assert_eq!(Sdp::parse("v=0\nhello\n").unwrap_err(), SdpError::BadLine(2));
        assert_eq!(Sdp::parse("v=0\nA=b\n").unwrap_err(), SdpError::BadLine(2));
    }

    #[test]
    fn offers_need_media_and_credentials() {
        let no_media =
            "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\na=ice-ufrag:abcd\na=ice-pwd:efghijklmnopqrstuvwxyz01\n";
        assert_eq!(
            Sdp::parse(no_media).unwrap().ice_credentials().unwrap_err(),
            SdpError::NoMedia
        );
        let no_ufrag = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=ice-pwd:efghijklmnopqrstuvwxyz01\n";
        assert_eq!(
            Sdp::parse(no_ufrag).unwrap().ice_credentials().unwrap_err(),
            SdpError::NoUfrag
        );
        let no_pwd = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=ice-ufrag:abcd\n";
        assert_eq!(
            Sdp::parse(no_pwd).unwrap().ice_credentials().unwrap_err(),
            SdpError::NoPwd
        );
        let colon = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=ice-ufrag:ab:cd\na=ice-pwd:efghijklmnopqrstuvwxyz01\n";
        assert_eq!(
            Sdp::parse(colon).unwrap().ice_credentials().unwrap_err(),
            SdpError::BadCredential,
            "a ufrag with ':' would make the STUN username ambiguous"
        );
    }

    #[test]
    fn candidate_grammar() {
        let c = Candidate::parse(
            "842163049 1 udp 1677729535 198.51.100.1 46154 typ srflx raddr 0.0.0.0 rport 0 generation 0",
        )
        .unwrap();
        assert_eq!((c.address.as_str(), c.port), ("198.51.100.1", 46154));
        assert_eq!(c.rest, "typ srflx raddr 0.0.0.0 rport 0 generation 0");
        assert_eq!(
            c.to_string(),
            "842163049 1 udp 1677729535 198.51.100.1 46154 typ srflx raddr 0.0.0.0 rport 0 generation 0"
        );
        for bad in [
            "",
            "1 1 udp",
            "1 1 udp x 1.2.3.4 5 typ host",
            "1 1 udp 1 1.2.3.4 70000 typ host",
            "1 1 udp 1 1.2.3.4 5 host",
        ] {
            assert_eq!(Candidate::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_and_rewrite_never_panic(text in "(v=0\r?\n)?([a-z]=[ -~]{0,40}\r?\n){0,20}") {
            if let Ok(mut sdp) = Sdp::parse(&text) {
                let _ = sdp.ice_credentials();
                sdp.rewrite_candidates(&CandidateRewrite { origin_port: 8000, proxy_port: 1, public: &[] });
                let again = Sdp::parse(&sdp.to_string()).unwrap();
                prop_assert_eq!(again, sdp);
            }
        }

        #[test]
        fn rewrite_leaves_only_proxy_ports(
            ports in proptest::collection::vec(prop_oneof![Just(8000u16), any::<u16>()], 1..6),
            tcp in proptest::collection::vec(any::<bool>(), 6),
            public in proptest::collection::vec("[a-z]{1,8}\\.example", 0..3),
        ) {
            let mut text = String::from("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
            for (i, port) in ports.iter().enumerate() {
                let transport = if tcp[i] { "tcp" } else { "udp" };
                text.push_str(&format!("a=candidate:{i} 1 {transport} {} 10.0.0.{i} {port} typ host\r\n", 100 - i));
            }
            let mut sdp = Sdp::parse(&text).unwrap();
            let kept = sdp.rewrite_candidates(&CandidateRewrite { origin_port: 8000, proxy_port: 18000, public: &public });
            let cands = sdp.candidates();
            prop_assert_eq!(cands.len(), kept);
            prop_assert!(cands.iter().all(|c| c.port == 18000 && c.transport == "udp"));
            let relayable = ports.iter().zip(&tcp).any(|(p, t)| *p == 8000 && !t);
            prop_assert_eq!(kept > 0, relayable);
            if !public.is_empty() {
                prop_assert!(cands.iter().all(|c| public.contains(&c.address)));
            }
        }
    }
}
