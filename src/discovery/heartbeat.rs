//! Origins that register themselves: SRS's `heartbeat { ports on; }` body
//! posted to the register API, turned into an [`Origin`] — if it may be
//! one.
//!
//! Registration is how a client could make the proxy connect to an address
//! of its choosing (invariant 6), so a heartbeat is checked like an admin
//! action. In order:
//!
//! 1. the body parses, and the origin id is a plain name (charset and
//!    length, like a stream key), so it is safe to log and store;
//! 2. a host name in `ip` is resolved once, here, and the origin is stored
//!    with the address it resolved to (a later DNS answer cannot move it);
//! 3. every address passes the [address policy](check_address): no
//!    unspecified, link-local, multicast or broadcast address, none of the
//!    proxy's own listeners, inside `register.allow_cidrs`, and (when
//!    `register.require_peer_ip` is on) the heartbeat's own source;
//! 4. the id is not owned by another source — static config, Kubernetes
//!    discovery, or a heartbeat from another peer;
//! 5. a new id fits under the caps: heartbeat origins per peer and in total.
//!
//! The bearer token and whether registration is on at all are checked by
//! the system API before the body is read.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::config::RegisterConfig;
use crate::context::Context;
use crate::origin::{parse_endpoint_port, Origin, OriginSource, Ports};
use crate::store::StoreError;

/// Longest origin id accepted (Kubernetes pod names are at most 253).
pub const MAX_ORIGIN_ID: usize = 253;
/// Bound on resolving a host name in `ip`.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of a rejected value a reply quotes.
const QUOTE: usize = 64;

/// Why a register body was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("body is not a JSON object: {0}")]
    Json(String),
    #[error("missing or empty field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} has the wrong type")]
    Type(&'static str),
    #[error("field \"ip\" is not an IP address or host name: {0:?}")]
    Ip(String),
    #[error("field \"server\" (the origin id) is longer than {MAX_ORIGIN_ID} bytes")]
    IdTooLong,
    #[error("field \"server\" (the origin id) may only hold letters, digits, '.', '_', ':' and '-'")]
    IdChars,
    #[error("field {field:?}: {reason}")]
    Endpoint { field: &'static str, reason: String },
    #[error("no usable rtmp or http endpoint")]
    NoPort,
}

/// Quotes at most [`QUOTE`] characters of an untrusted value.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Checks an origin id: 1 to [`MAX_ORIGIN_ID`] bytes of
/// `[A-Za-z0-9._:-]`, so it can go into a log line, a store key and a
/// metric label as it is.
pub fn check_origin_id(id: &str) -> Result<(), RegisterError> {
    if id.is_empty() {
        return Err(RegisterError::Missing("server"));
    }
    if id.len() > MAX_ORIGIN_ID {
        return Err(RegisterError::IdTooLong);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(RegisterError::IdChars);
    }
    Ok(())
}

/// Parses an SRS heartbeat body into an origin (its `ip` as sent, not yet
/// resolved or checked against the address policy). Unknown fields (and
/// the `summaries` object SRS may add) are ignored.
pub fn parse_register(body: &[u8]) -> Result<Origin, RegisterError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RegisterError::Json(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| RegisterError::Json("not an object".into()))?;
    let text = |field: &'static str| -> Result<String, RegisterError> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(RegisterError::Missing(field)),
            Some(Value::String(s)) if s.trim().is_empty() => Err(RegisterError::Missing(field)),
            Some(Value::String(s)) => Ok(s.trim().to_string()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(RegisterError::Type(field)),
        }
    };
    let ip = text("ip")?;
    let server = text("server")?;
    check_origin_id(&server)?;
    text("service")?;
    text("pid")?;
    let valid_host = ip.parse::<IpAddr>().is_ok()
        || (ip.len() <= 253
            && ip
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
    if !valid_host {
        return Err(RegisterError::Ip(quote(&ip)));
    }
    let port = |field: &'static str| -> Result<Option<u16>, RegisterError> {
        let endpoints: Vec<String> = match obj.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(RegisterError::Type(field)),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(_) => return Err(RegisterError::Type(field)),
        };
        if endpoints.is_empty() {
            return Ok(None);
        }
        // SRS may listen on several endpoints; any of them reaches it.
        let mut last_err = None;
        for e in &endpoints {
            match parse_endpoint_port(e) {
                Ok(p) => return Ok(Some(p)),
                Err(err) => last_err = Some(err),
            }
        }
        Err(RegisterError::Endpoint {
            field,
            reason: quote(&last_err.map(|e| e.to_string()).unwrap_or_default()),
        })
    };
    let ports = Ports {
        rtmp: port("rtmp")?,
        http: port("http")?,
        api: port("api")?,
        srt: port("srt")?,
        rtc: port("rtc")?,
    };
    if ports.rtmp.is_none() && ports.http.is_none() {
        return Err(RegisterError::NoPort);
    }
    Ok(Origin {
        id: server.into(),
        ip: ip.into(),
        ports,
        source: OriginSource::Heartbeat,
        weight: 1,
        max_streams: 0,
        pool: None,
        registered_by: None,
    })
}

/// Why an address may not be an origin's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefusal {
    #[error("{0} is an unspecified address")]
    Unspecified(IpAddr),
    #[error("{0} is a link-local address")]
    LinkLocal(IpAddr),
    #[error("{0} is a multicast or broadcast address")]
    Multicast(IpAddr),
    #[error("{0} is one of this proxy's own listeners")]
    Own(SocketAddr),
    #[error("{0} is outside the allowed ranges (register.allow_cidrs)")]
    NotAllowed(IpAddr),
    #[error("{ip} is not the address the heartbeat came from (register.require_peer_ip)")]
    NotPeer { ip: IpAddr },
}

/// The address policy for one address of an origin with `ports`.
/// `is_local` tells whether an address belongs to this host (for
/// listeners bound to every interface).
pub fn check_address(
    ip: IpAddr,
    ports: &Ports,
    peer: IpAddr,
    policy: &RegisterConfig,
    own: &[SocketAddr],
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Result<(), AddressRefusal> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Err(AddressRefusal::Unspecified(ip));
    }
    let (link_local, multicast) = match ip {
        IpAddr::V4(v4) => (v4.is_link_local(), v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => (v6.is_unicast_link_local(), v6.is_multicast()),
    };
    if link_local {
        return Err(AddressRefusal::LinkLocal(ip));
    }
    if multicast {
        return Err(AddressRefusal::Multicast(ip));
    }
    let registered = [ports.rtmp, ports.http, ports.api, ports.srt, ports.rtc];
    for port in registered.into_iter().flatten() {
        let hit = own
            .iter()
            .find(|a| a.port() == port && (a.ip().to_canonical() == ip || (a.ip().is_unspecified() && is_local(ip))));
        if hit.is_some() {
            return Err(AddressRefusal::Own(SocketAddr::new(ip, port)));
        }
    }
    if !policy.allow_cidrs.contains(ip) {
        return Err(AddressRefusal::NotAllowed(ip));
    }
    if policy.require_peer_ip && ip != peer.to_canonical() {
        return Err(AddressRefusal::NotPeer { ip });
    }
    Ok(())
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind
/// to it.
pub fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why a heartbeat was not registered.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(#[from] RegisterError),
    #[error("host name {0:?} in \"ip\" does not resolve")]
    Unresolvable(String),
    #[error("address refused: {0}")]
    Address(AddressRefusal),
    #[error("origin id {id:?} is registered by {owner}; heartbeat refused")]
    Owned { id: String, owner: &'static str },
    #[error("{0}")]
    Limit(String),
    #[error("{}", crate::store::STORE_UNAVAILABLE)]
    Store(StoreError),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::Unresolvable(_) => StatusCode::BAD_REQUEST,
            Self::Address(_) => StatusCode::FORBIDDEN,
            Self::Owned { .. } => StatusCode::CONFLICT,
            Self::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `result` label of `srs_proxy_registrations_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) | Self::Unresolvable(_) => "invalid",
            Self::Address(_) => "address_refused",
            Self::Owned { .. } => "conflict",
            Self::Limit(_) => "limit",
            Self::Store(_) => "error",
        }
    }
}

/// What a successful heartbeat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new origin, or one whose address or ports changed.
    Changed(Origin),
    /// The same registration, refreshed.
    Refreshed,
}

/// Resolves `host` to the addresses the policy judges; an IP literal is
/// itself.
async fn resolve(host: &str) -> Result<Vec<IpAddr>, Refusal> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let unresolvable = || Refusal::Unresolvable(quote(host));
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0)))
        .await
        .map_err(|_| unresolvable())?
        .map_err(|_| unresolvable())?;
    let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    ips.dedup();
    if ips.is_empty() {
        return Err(unresolvable());
    }
    Ok(ips)
}

/// Registers (or refreshes) the origin a heartbeat body describes, sent
/// from `peer`.
pub async fn register(ctx: &Context, body: &[u8], peer: SocketAddr) -> Result<Registered, Refusal> {
    let mut origin = parse_register(body)?;
    let peer_ip = peer.ip().to_canonical();
    let policy = &ctx.config.register;
    let own = ctx.registrar.own_addrs();
    let addresses = resolve(&origin.ip).await?;
    for ip in &addresses {
        check_address(*ip, &origin.ports, peer_ip, policy, &own, &is_local_address).map_err(Refusal::Address)?;
    }
    origin.ip = addresses[0].to_canonical().to_string().into();
    origin.registered_by = Some(peer_ip);

    let known = ctx
        .store_op("registration", ctx.store.registration(&origin.id))
        .await
        .map_err(Refusal::Store)?;
    match &known {
        Some(k) if k.source != OriginSource::Heartbeat => {
            return Err(Refusal::Owned {
                id: origin.id.to_string(),
                owner: match k.source {
                    OriginSource::Kubernetes => "Kubernetes discovery",
                    _ => "static config",
                },
            })
        }
        Some(k) if k.registered_by.is_some_and(|by| by != peer_ip) => {
            return Err(Refusal::Owned {
                id: origin.id.to_string(),
                owner: "another peer",
            })
        }
        Some(k) if *k == origin => {
            upsert(ctx, origin).await?;
            return Ok(Registered::Refreshed);
        }
        Some(_) => {
            upsert(ctx, origin.clone()).await?;
            return Ok(Registered::Changed(origin));
        }
        None => {}
    }
    // A new id: count and add as one step (on this replica; replicas racing
    // may overshoot a cap by the number of replicas).
    let _one_at_a_time = ctx.registrar.adding().await;
    let live = ctx
        .store_op("list_origins", ctx.store.list_origins())
        .await
        .map_err(Refusal::Store)?;
    let heartbeats = live.iter().filter(|o| o.origin.source == OriginSource::Heartbeat);
    let (total, from_peer) = heartbeats.fold((0usize, 0usize), |(t, p), o| {
        (t + 1, p + usize::from(o.origin.registered_by == Some(peer_ip)))
    });
    if policy.max_origins_per_peer > 0 && from_peer >= policy.max_origins_per_peer {
        return Err(Refusal::Limit(format!(
            "{peer_ip} already registered {from_peer} origins (register.max_origins_per_peer)"
        )));
    }
    if policy.max_origins > 0 && total >= policy.max_origins {
        return Err(Refusal::Limit(format!(
            "{total} heartbeat origins are registered (register.max_origins)"
        )));
    }
    upsert(ctx, origin.clone()).await?;
    Ok(Registered::Changed(origin))
}

async fn upsert(ctx: &Context, origin: Origin) -> Result<(), Refusal> {
    ctx.store_op(
        "upsert_origin",
        ctx.store.upsert_origin(origin, Some(ctx.config.registration_ttl)),
    )
    .await
    .map_err(Refusal::Store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CidrList;

    const SRS_BODY: &str = r#"{"device_id":"origin2","ip":"10.78.122.184","server":"vid-46p14mm","service":"z2s3w865","pid":"42583","rtmp":["19352"],"http":["8082"],"api":["19853"],"srt":["10082"],"rtc":["udp://0.0.0.0:8001"],"summaries":{"ok":true,"data":{"pid":1,"cpu":0.5}}}"#;

    #[test]
    fn srs_heartbeat_body() {
        let o = parse_register(SRS_BODY.as_bytes()).unwrap();
        assert_eq!(&*o.id, "vid-46p14mm");
        assert_eq!(&*o.ip, "10.78.122.184");
        assert_eq!(
            o.ports,
            Ports {
                rtmp: Some(19352),
                http: Some(8082),
                api: Some(19853),
                srt: Some(10082),
                rtc: Some(8001)
            }
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "JSON"),
            ("[1,2]", "object"),
            (r#"{"server":"s","service":"x","pid":"1","rtmp":["1935"]}"#, "\"ip\""),
            (
                r#"{"ip":"1.2.3.4","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"server\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","pid":"1","rtmp":["1935"]}"#,
                "\"service\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","rtmp":["1935"]}"#,
                "\"pid\"",
            ),
            (r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1"}"#, "no usable"),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1","rtmp":["abc"]}"#,
                "\"rtmp\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"s","service":"x","pid":"1","rtmp":[{}]}"#,
                "\"rtmp\"",
            ),
            (
                r#"{"ip":"a b","server":"s","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"ip\"",
            ),
            (
                r#"{"ip":["x"],"server":"s","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"ip\"",
            ),
            (
                r#"{"ip":"1.2.3.4","server":"","service":"x","pid":"1","rtmp":["1935"]}"#,
                "\"server\"",
            ),
            (
                "{\"ip\":\"1.2.3.4\",\"server\":\"evil\\n\\u001b[31mFAKE LOG LINE\",\"service\":\"x\",\"pid\":\"1\",\"rtmp\":[\"1935\"]}",
                "may only hold",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_register(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn origin_ids_are_plain_names_of_bounded_length() {
        for ok in ["vid-46p14mm", "srs-origin-0", "10.0.0.1:1935", "a.b_c"] {
            assert_eq!(check_origin_id(ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(10 * 1024);
        assert_eq!(check_origin_id(&long), Err(RegisterError::IdTooLong));
        for bad in ["a b", "a/b", "a\nb", "é", "a\u{1b}[31m", "a\"b", "a%0a"] {
            assert_eq!(check_origin_id(bad), Err(RegisterError::IdChars), "{bad:?}");
        }
        // A rejected value is quoted, never echoed whole.
        let body = format!(
            r#"{{"ip":"{}","server":"s","service":"x","pid":"1","rtmp":["1"]}}"#,
            "x y".repeat(5000)
        );
        assert!(parse_register(body.as_bytes()).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn http_only_and_number_forms() {
        let o =
            parse_register(br#"{"ip":"srs-0.srs","server":"s","service":"x","pid":12,"http":8080,"rtmp":[]}"#).unwrap();
        assert_eq!(o.ports.http, Some(8080));
        assert_eq!(o.ports.rtmp, None);
        let o =
            parse_register(br#"{"ip":"::1","server":"s","service":"x","pid":"1","rtmp":["bad","tcp://0.0.0.0:1936"]}"#)
                .unwrap();
        assert_eq!(o.ports.rtmp, Some(1936));
    }

    fn ports(http: u16) -> Ports {
        Ports {
            http: Some(http),
            ..Ports::default()
        }
    }

    #[test]
    fn address_policy() {
        let policy = RegisterConfig::default();
        let own: Vec<SocketAddr> = vec!["0.0.0.0:18080".parse().unwrap(), "127.0.0.1:12025".parse().unwrap()];
        let local = |ip: IpAddr| ip.is_loopback() || ip == "10.0.0.9".parse::<IpAddr>().unwrap();
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let check = |ip: &str, port: u16| check_address(ip.parse().unwrap(), &ports(port), peer, &policy, &own, &local);
        assert_eq!(check("10.0.0.7", 8080), Ok(()));
        assert_eq!(check("127.0.0.1", 8080), Ok(()), "loopback is allowed by default");
        assert_eq!(check("fd00::5", 8080), Ok(()));
        for (ip, what) in [
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("8.8.8.8", "allowed ranges"),
            ("2001:db8::1", "allowed ranges"),
        ] {
            let err = check(ip, 8080).unwrap_err().to_string();
            assert!(err.contains(what), "{ip}: {err}");
        }
        // The proxy's own listeners: the exact address, or any local one
        // for a listener on every interface.
        for (ip, port) in [("127.0.0.1", 12025), ("127.0.0.1", 18080), ("10.0.0.9", 18080)] {
            let err = check(ip, port).unwrap_err();
            assert!(matches!(err, AddressRefusal::Own(_)), "{ip}:{port}: {err}");
        }
        assert_eq!(check("10.0.0.8", 18080), Ok(()), "another host on the same port");
        assert_eq!(check("127.0.0.2", 12025), Ok(()), "a listener on one address only");

        let strict = RegisterConfig {
            allow_cidrs: "10.0.0.0/8".parse::<CidrList>().unwrap(),
            require_peer_ip: true,
            ..RegisterConfig::default()
        };
        let check = |ip: &str| check_address(ip.parse().unwrap(), &ports(80), peer, &strict, &own, &local);
        assert_eq!(check("10.0.0.7"), Ok(()));
        assert!(matches!(check("127.0.0.1"), Err(AddressRefusal::NotAllowed(_))));
        assert!(matches!(check("10.0.0.8"), Err(AddressRefusal::NotPeer { .. })));
    }

    #[test]
    fn local_addresses_are_the_ones_this_host_can_bind() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(
            !is_local_address("192.0.2.1".parse().unwrap()),
            "TEST-NET-1 is nobody's"
        );
    }
}
