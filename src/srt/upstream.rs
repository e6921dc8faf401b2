//! The proxy's own handshake with the origin, as an SRT caller.
//!
//! One new UDP socket per client connection, connected to the origin's
//! `srt` port, so the origin sees one peer per client and the kernel drops
//! datagrams from anyone else. The proxy sends its own induction (carrying
//! the client's socket id and parameters), then the client's conclusion
//! byte for byte except for the origin's cookie and the peer address.
//! The origin's answer — its socket id, HSRSP latencies, KMRSP — is what
//! the client gets, so everything SRT negotiates is end to end.
//!
//! [`connect`] is the single step where an origin is first contacted; its
//! error says whether the origin answered at all, which is what a retry on
//! another origin needs to know.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout_at, Instant};

use super::handshake::{self, Handshake, RejectReason, RequestType, SRT_MAGIC};
use super::MAX_DATAGRAM;

/// How often an unanswered handshake is sent again; libsrt's own pace.
pub const RESEND: Duration = Duration::from_millis(250);

/// The origin leg once the origin accepted.
pub struct Upstream {
    /// Connected to the origin's SRT port; used for this connection only.
    pub socket: UdpSocket,
    /// The origin's conclusion answer as it sent it.
    pub answer: Vec<u8>,
    /// The origin's socket id: where the client's packets are addressed.
    pub origin_socket: u32,
}

/// Which request the origin left unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing came back at all.
    Induction,
    /// The origin gave a cookie, then did not take the conclusion.
    Conclusion,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Induction => "induction",
            Phase::Conclusion => "conclusion",
        })
    }
}

/// Why the origin leg could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot open a UDP socket towards origin {0}: {1}")]
    Socket(SocketAddr, io::Error),
    #[error("origin {0} refused: nothing listens on its SRT port")]
    Refused(SocketAddr),
    #[error("origin {addr} did not answer the {phase} within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        timeout: Duration,
        phase: Phase,
    },
    #[error("origin {0} answered with handshake version 4; SRT clients need HSv5 for a stream id")]
    Version(SocketAddr),
    #[error("origin {addr} rejected the connection: {reason}")]
    Rejected {
        addr: SocketAddr,
        reason: RejectReason,
        /// The rejection as the origin sent it, to pass on to the client.
        answer: Vec<u8>,
    },
    #[error("origin {0}: {1}")]
    Io(SocketAddr, io::Error),
}

impl ConnectError {
    /// True when the origin never answered (refused, or silent until the
    /// deadline): nothing reached the client yet and the origin holds no
    /// state for it, so the same conclusion may go to another origin.
    pub fn retry_elsewhere(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused(_)
                | ConnectError::Timeout {
                    phase: Phase::Induction,
                    ..
                }
        )
    }
}

/// Performs the caller side of the handshake with `origin` for the client
/// whose parsed conclusion is `client` (raw bytes `conclusion`), within
/// `deadline` overall.
pub async fn connect(
    origin: SocketAddr,
    client: &Handshake,
    conclusion: &[u8],
    deadline: Duration,
) -> Result<Upstream, ConnectError> {
    let local = match origin {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| ConnectError::Socket(origin, e))?;
    socket
        .connect(origin)
        .await
        .map_err(|e| ConnectError::Socket(origin, e))?;
    let until = Instant::now() + deadline;
    let timed_out = |phase| ConnectError::Timeout {
        addr: origin,
        timeout: deadline,
        phase,
    };

    let induction = client.induction_request(origin).encode();
    let cookie = match timeout_at(
        until,
        exchange(&socket, origin, &induction, |hs, _| induction_answer(origin, hs)),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => return Err(timed_out(Phase::Induction)),
    };

    let mut request = conclusion.to_vec();
    handshake::set_cookie(&mut request, cookie);
    handshake::set_peer_address(&mut request, origin.ip());
    let client_socket = client.socket_id;
    let answer = exchange(&socket, origin, &request, |hs, bytes| {
        conclusion_answer(origin, client_socket, hs, bytes)
    });
    let (origin_socket, answer) = match timeout_at(until, answer).await {
        Ok(result) => result?,
        Err(_) => return Err(timed_out(Phase::Conclusion)),
    };
    Ok(Upstream {
        socket,
        answer,
        origin_socket,
    })
}

/// Sends `request` every [`RESEND`] until `accept` takes an answer (Some)
/// or fails; other datagrams are ignored.
async fn exchange<T>(
    socket: &UdpSocket,
    origin: SocketAddr,
    request: &[u8],
    mut accept: impl FnMut(&Handshake, &[u8]) -> Option<Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut resend = tokio::time::interval(RESEND);
    loop {
        tokio::select! {
            _ = resend.tick() => {
                if let Err(e) = socket.send(request).await {
                    return Err(io_error(origin, e));
                }
            }
            received = socket.recv(&mut buf) => {
                let n = received.map_err(|e| io_error(origin, e))?;
                let Ok(hs) = Handshake::parse(&buf[..n]) else { continue };
                if let Some(result) = accept(&hs, &buf[..n]) {
                    return result;
                }
            }
        }
    }
}

/// An ICMP port unreachable surfaces as ECONNREFUSED on a connected UDP
/// socket: nothing listens there.
fn io_error(origin: SocketAddr, e: io::Error) -> ConnectError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        ConnectError::Refused(origin)
    } else {
        ConnectError::Io(origin, e)
    }
}

fn induction_answer(origin: SocketAddr, hs: &Handshake) -> Option<Result<u32, ConnectError>> {
    match hs.request {
        RequestType::Induction if hs.version >= 5 && hs.extension == SRT_MAGIC => Some(Ok(hs.cookie)),
        RequestType::Induction => Some(Err(ConnectError::Version(origin))),
        RequestType::Rejection(reason) => Some(Err(ConnectError::Rejected {
            addr: origin,
            reason,
            answer: hs.encode(),
        })),
        _ => None,
    }
}

fn conclusion_answer(
    origin: SocketAddr,
    client_socket: u32,
    hs: &Handshake,
    bytes: &[u8],
) -> Option<Result<(u32, Vec<u8>), ConnectError>> {
    match hs.request {
        RequestType::Conclusion if hs.dest_socket == client_socket => Some(Ok((hs.socket_id, bytes.to_vec()))),
        RequestType::Rejection(reason) => Some(Err(ConnectError::Rejected {
            addr: origin,
            reason,
            answer: bytes.to_vec(),
        })),
        // A late answer to a resent induction, or a stray packet.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_silence_or_refusal_may_be_retried_elsewhere() {
        let addr: SocketAddr = "192.0.2.1:10080".parse().unwrap();
        let timeout = Duration::from_secs(1);
        assert!(ConnectError::Refused(addr).retry_elsewhere());
        assert!(ConnectError::Timeout {
            addr,
            timeout,
            phase: Phase::Induction
        }
        .retry_elsewhere());
        // The origin took the client's conclusion: it may hold a session.
        assert!(!ConnectError::Timeout {
            addr,
            timeout,
            phase: Phase::Conclusion
        }
        .retry_elsewhere());
        assert!(!ConnectError::Version(addr).retry_elsewhere());
        assert!(!ConnectError::Rejected {
            addr,
            reason: RejectReason::BAD_REQUEST,
            answer: vec![]
        }
        .retry_elsewhere());
    }
}
