//! Bearer authentication of the system API's admin side: origin
//! registration, the origin and stream listings, and `/metrics` when
//! asked. The Go proxy's v8 settings (`PROXY_HTTP_API_AUTH_*`) turn it on;
//! SRS sends the token from its `SRS_HEARTBEAT_AUTH_*` settings.
//!
//! The comparison takes the same time wherever the tokens differ, so the
//! token cannot be guessed byte by byte from response times.

use http::{header, HeaderMap, HeaderValue};

use crate::config::AuthConfig;

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

/// The header a 401 carries, as RFC 6750 and the Go proxy send it.
pub fn challenge() -> (header::HeaderName, HeaderValue) {
    (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// The token requests must carry, or `None` when authentication is off.
pub fn required_token(config: &AuthConfig) -> Option<&[u8]> {
    (config.enabled && !config.token.is_empty()).then(|| config.token.expose().as_bytes())
}

/// Checks the `Authorization` header against the configured token; always
/// `Ok` when authentication is off.
pub fn check(config: &AuthConfig, headers: &HeaderMap) -> Result<(), AuthError> {
    let Some(expected) = required_token(config) else {
        return Ok(());
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthError::Missing);
    };
    let presented = bearer_token(value.as_bytes()).ok_or(AuthError::Missing)?;
    if equal_in_constant_time(presented, expected) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares two byte strings in time that depends only on their lengths:
/// every byte is looked at whatever the first difference.
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(token: &str) -> AuthConfig {
        AuthConfig {
            enabled: true,
            kind: "bearer".into(),
            token: Secret(token.into()),
            ..AuthConfig::default()
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens() {
        let c = config("s3cret");
        assert_eq!(check(&c, &headers(&["Bearer s3cret"])), Ok(()));
        assert_eq!(check(&c, &headers(&["bearer  s3cret "])), Ok(()));
        assert_eq!(check(&c, &headers(&[])), Err(AuthError::Missing));
        assert_eq!(check(&c, &headers(&["Basic czNjcmV0"])), Err(AuthError::Missing));
        assert_eq!(check(&c, &headers(&["Bearer"])), Err(AuthError::Missing));
        assert_eq!(check(&c, &headers(&["Bearers3cret"])), Err(AuthError::Missing));
        assert_eq!(check(&c, &headers(&["Bearer s3cre"])), Err(AuthError::Invalid));
        assert_eq!(check(&c, &headers(&["Bearer s3cret2"])), Err(AuthError::Invalid));
        assert_eq!(check(&c, &headers(&["Bearer S3CRET"])), Err(AuthError::Invalid));
        assert_eq!(
            check(&c, &headers(&["Bearer s3cret", "Bearer x"])),
            Err(AuthError::Missing),
            "two Authorization headers are not a credential"
        );
    }

    #[test]
    fn off_lets_everything_in() {
        let mut c = config("s3cret");
        c.enabled = false;
        assert_eq!(check(&c, &headers(&[])), Ok(()));
    }

    #[test]
    fn constant_time_equality() {
        assert!(equal_in_constant_time(b"", b""));
        assert!(equal_in_constant_time(b"abc", b"abc"));
        assert!(!equal_in_constant_time(b"abc", b"abd"));
        assert!(!equal_in_constant_time(b"abc", b"ab"));
        assert!(!equal_in_constant_time(b"\x00", b"\x80"));
    }
}
