//! WebRTC through the proxy: WHIP/WHEP signalling and UDP media routed by
//! the ICE username.
//!
//! The request path, in file order:
//!
//! * [`signal`] — the `PROXY_HTTP_API` listener: WHIP/WHEP and SRS's JSON
//!   API; claims the stream, sends the offer on, rewrites the answer and
//!   records the session; `DELETE`/`PATCH` on the resource.
//! * [`offer`] — the one exchange with the origin's API port, with an error
//!   that says whether another origin could be tried.
//! * [`sdp`] — ICE credentials of offers and answers; the answer's
//!   candidates rewritten to the proxy's address and port.
//! * [`session`] — the replica's bounded session table.
//! * [`udp`] — the `PROXY_WEBRTC_SERVER` socket: classifies datagrams
//!   ([`demux`]), parses connectivity checks ([`stun`]), binds a client
//!   address once MESSAGE-INTEGRITY verifies, looks unknown usernames up in
//!   the store (rate-limited).
//! * [`relay`] — one task and one upstream socket per bound session.
//!
//! The proxy never terminates DTLS or decrypts SRTP: media is relayed as
//! opaque datagrams. It must not touch other protocols' listeners; it uses
//! the control plane only through [`Context`] and its claim.

pub mod demux;
pub mod offer;
pub mod relay;
pub mod sdp;
pub mod session;
pub mod signal;
pub mod stun;
pub mod udp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::config::WebrtcConfig;
use crate::context::Context;
use session::Sessions;

/// What signalling, the UDP listener and the relays share.
pub struct RtcState {
    pub ctx: Context,
    /// `ctx.config.webrtc`, at hand.
    pub settings: WebrtcConfig,
    pub sessions: Sessions,
    /// The client-facing UDP socket: datagrams in, origin replies out.
    pub socket: Arc<UdpSocket>,
    /// Port written into rewritten candidates.
    pub public_port: u16,
}

impl RtcState {
    pub fn new(ctx: Context, socket: UdpSocket) -> io::Result<Self> {
        let settings = ctx.config.webrtc.clone();
        let public_port = match settings.public_port {
            Some(port) => port,
            None => socket.local_addr()?.port(),
        };
        Ok(Self {
            sessions: Sessions::new(settings.max_sessions),
            ctx,
            settings,
            socket: Arc::new(socket),
            public_port,
        })
    }

    /// The configured public candidate addresses, host names resolved (a
    /// name that does not resolve is announced as it is, for clients that
    /// resolve candidates themselves).
    pub async fn public_addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for name in &self.settings.candidate {
            if name.parse::<IpAddr>().is_ok() {
                out.push(name.clone());
                continue;
            }
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                Ok(Ok(addrs)) => out.extend(addrs.map(|a: SocketAddr| a.ip().to_string())),
                Ok(Err(e)) => {
                    tracing::warn!(candidate = %name, error = %e, "cannot resolve WebRTC candidate; announcing the name");
                    out.push(name.clone());
                }
                Err(_) => {
                    tracing::warn!(candidate = %name, "resolving WebRTC candidate timed out; announcing the name");
                    out.push(name.clone());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|a| seen.insert(a.clone()));
        out
    }
}

/// Runs WebRTC signalling on `listener` and media on `socket` until the
/// proxy drains (both stop taking new sessions) and then aborts (open
/// sessions end).
pub async fn run(listener: TcpListener, socket: UdpSocket, ctx: Context) {
    let state = match RtcState::new(ctx, socket) {
        Ok(state) => Arc::new(state),
        Err(e) => {
            tracing::error!(error = %e, "WebRTC socket unusable; WebRTC is off");
            return;
        }
    };
    tokio::join!(signal::serve(listener, state.clone()), udp::serve(state));
}
