//! Stateless SYN cookies for the induction phase.
//!
//! The proxy answers every induction with a cookie and keeps nothing; a
//! conclusion is taken only if it carries the cookie for its own source
//! address. A flood of inductions from spoofed or many source ports costs
//! one HMAC each and no memory, and a conclusion cannot be forged for an
//! address whose answers the sender does not see.
//!
//! The cookie is HMAC-SHA256 over the peer address under a random secret
//! that rotates (see [`ROTATION`]): a cookie stays good for one to two
//! rotation periods, which covers libsrt's induction → conclusion gap
//! (milliseconds, or its 3 s connect timeout at worst) with room to spare.

use std::net::SocketAddr;
use std::time::Duration;

use ring::hmac;
use ring::rand::SystemRandom;

/// How often the secret changes. libsrt bakes its own cookie from the
/// current minute, and so does this.
pub const ROTATION: Duration = Duration::from_secs(60);

/// The current and the previous secret.
pub struct CookieJar {
    current: hmac::Key,
    /// Keeps cookies issued just before a rotation valid just after it.
    previous: hmac::Key,
    rng: SystemRandom,
}

impl Default for CookieJar {
    fn default() -> Self {
        Self::new()
    }
}

impl CookieJar {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        Self {
            current: new_key(&rng),
            previous: new_key(&rng),
            rng,
        }
    }

    /// Starts a new period: cookies of the period before the previous one
    /// stop verifying.
    pub fn rotate(&mut self) {
        self.previous = std::mem::replace(&mut self.current, new_key(&self.rng));
    }

    /// The cookie for an induction from `peer`.
    pub fn issue(&self, peer: SocketAddr) -> u32 {
        bake(&self.current, peer)
    }

    /// Whether `cookie` was issued to `peer` in this period or the last.
    pub fn verify(&self, peer: SocketAddr, cookie: u32) -> bool {
        bake(&self.current, peer) == cookie || bake(&self.previous, peer) == cookie
    }
}

fn new_key(rng: &SystemRandom) -> hmac::Key {
    // The system RNG failing is not something a proxy can run without.
    hmac::Key::generate(hmac::HMAC_SHA256, rng).expect("system random number generator")
}

fn bake(key: &hmac::Key, peer: SocketAddr) -> u32 {
    // IPv4-mapped and plain IPv4 are one client (dual-stack sockets report
    // the former), so both bake the same.
    let ip = match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let mut input = [0u8; 18];
    input[..16].copy_from_slice(&ip);
    input[16..].copy_from_slice(&peer.port().to_be_bytes());
    let tag = hmac::sign(key, &input);
    let t = tag.as_ref();
    u32::from_be_bytes([t[0], t[1], t[2], t[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_cookie_belongs_to_its_address() {
        let jar = CookieJar::new();
        let a = addr("192.0.2.1:4000");
        let cookie = jar.issue(a);
        assert!(jar.verify(a, cookie));
        assert_eq!(jar.issue(a), cookie, "retransmitted inductions get the same cookie");
        assert!(!jar.verify(addr("192.0.2.1:4001"), cookie), "another port");
        assert!(!jar.verify(addr("192.0.2.2:4000"), cookie), "another host");
        assert!(!jar.verify(a, cookie ^ 1));
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_peer() {
        let jar = CookieJar::new();
        let cookie = jar.issue(addr("192.0.2.1:4000"));
        assert!(jar.verify(addr("[::ffff:192.0.2.1]:4000"), cookie));
    }

    #[test]
    fn cookies_outlive_one_rotation_but_not_two() {
        let mut jar = CookieJar::new();
        let a = addr("[2001:db8::1]:9000");
        let cookie = jar.issue(a);
        jar.rotate();
        assert!(jar.verify(a, cookie), "issued just before a rotation");
        assert_ne!(jar.issue(a), cookie, "the secret changed");
        jar.rotate();
        assert!(!jar.verify(a, cookie));
    }

    #[test]
    fn two_proxies_do_not_share_cookies() {
        // Not a constant: each process draws its own secret.
        let a = addr("192.0.2.1:4000");
        let cookies: std::collections::HashSet<u32> = (0..8).map(|_| CookieJar::new().issue(a)).collect();
        assert!(cookies.len() > 1);
    }
}
