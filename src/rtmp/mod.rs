//! RTMP publish and play through the proxy.
//!
//! A client connection goes: handshake → `connect` and the preparatory
//! calls, answered here → publish/play names the stream → claim the origin
//! → connect to the origin as a client and replay the client's setup →
//! relay both ways until either side ends.
//!
//! # Layout
//!
//! The codec is pure and knows nothing of the proxy:
//!
//! * [`handshake`] — C0/C1/C2 and S0/S1/S2, simple and digest variants.
//! * [`chunk`] — chunk stream decoder/encoder producing whole messages.
//! * [`amf0`] — the value encoding of commands and metadata.
//! * [`message`] — message types, protocol and user control messages.
//! * [`command`] — `connect`, `publish`, `_result`, `onStatus`, ….
//! * [`conn`] — messages over a socket, with acknowledgement bookkeeping.
//!
//! The connection pipeline, in request order:
//!
//! * [`session`] — the client until it publishes or plays.
//! * [`key`] — tcUrl and stream name to [`crate::stream_key::StreamKey`].
//! * [`upstream`] — the origin connection and the replayed setup.
//! * [`relay`] — both directions until either side ends.
//! * [`edge`] — instead of the last two, with edge mode on: a play joins
//!   the stream's shared upstream (the one HTTP-FLV players join).
//!
//! Failures that the client should hear about become an `_error` or an
//! `onStatus` error in one place, [`RtmpError::reply`].

pub mod amf0;
pub mod chunk;
pub mod command;
pub mod conn;
pub mod edge;
pub mod handshake;
pub mod key;
pub mod message;
pub mod relay;
pub mod session;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use self::chunk::Message;
use self::command::{status, Command};
use self::conn::{ConnError, MessageReader, MessageWriter};
use self::relay::{Counters, Side, StreamIds};
use self::session::{Request, Role};
use crate::claim::ClaimError;
use crate::context::Context;
use crate::error::{Failure, Fault};
use crate::http::edge::Edge;
use crate::listener::Handler;
use crate::origin::{Origin, Protocol};
use crate::stream_key::StreamKeyError;

/// Our outgoing chunk size on both legs, as SRS uses: large enough that a
/// video frame takes few chunk headers, inside what SRS accepts.
pub const CHUNK_SIZE: u32 = 60_000;
/// The acknowledgement window the proxy announces, SRS's value.
pub const WINDOW_ACK_SIZE: u32 = 2_500_000;

/// Largest message a client may send before it publishes or plays: its
/// commands are a few hundred bytes; media only flows afterwards.
pub const SETUP_MAX_MESSAGE: u32 = 64 * 1024;

/// The limits a connection runs under, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest message accepted from either side (`rtmp_max_message_bytes`).
    pub max_message_size: u32,
    /// From accept to publish/play, whatever the client sends meanwhile.
    pub setup_timeout: Duration,
    /// Bounds the handshake, each wait for a client command before it
    /// publishes or plays, and the origin's answers to the replayed setup.
    pub handshake_timeout: Duration,
    /// Bound on connecting to the origin.
    pub connect_timeout: Duration,
}

impl Settings {
    pub fn from_context(ctx: &Context) -> Self {
        Settings {
            max_message_size: u32::try_from(ctx.config.rtmp_max_message_bytes).unwrap_or(u32::MAX),
            setup_timeout: ctx.config.rtmp_setup_timeout,
            handshake_timeout: ctx.config.rtmp_handshake_timeout,
            connect_timeout: ctx.config.origin_connect_timeout,
        }
    }
}

/// Why an RTMP connection ended before or instead of relaying.
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("handshake: {0}")]
    Handshake(handshake::HandshakeError),
    #[error("client: {0}")]
    Client(ConnError),
    #[error("client sent a bad command: {0}")]
    ClientCommand(command::CommandError),
    #[error("client sent `{command}` before connect")]
    NotConnected { command: String, transaction_id: f64 },
    #[error("client sent connect twice")]
    DuplicateConnect,
    #[error("client asked to {} on stream 0 without createStream", verb(*.0))]
    NoStream(Role),
    #[error("client closed the connection before publishing or playing")]
    ClientLeft,
    #[error("client sent nothing for {0:?} before publishing or playing")]
    ClientIdle(Duration),
    #[error("client did not publish or play within {0:?}")]
    SetupTimeout(Duration),
    #[error("client's setup messages exceed {0} bytes")]
    SetupTooLarge(usize),
    #[error("invalid stream name: {0}")]
    BadStream(StreamKeyError),
    #[error("{0}")]
    Claim(#[from] ClaimError),
    #[error("origin {0} serves no RTMP")]
    NoRtmpPort(String),
    #[error("cannot connect to origin {0}: {1}")]
    OriginConnect(String, String),
    #[error("origin handshake: {0}")]
    OriginHandshake(handshake::HandshakeError),
    #[error("origin: {0}")]
    Origin(ConnError),
    #[error("origin closed the connection during setup")]
    OriginClosed,
    #[error("origin did not answer within {0:?}")]
    OriginTimeout(Duration),
    #[error("origin sent an unusable reply: {0}")]
    OriginBadReply(&'static str),
    #[error("origin refused {call}: {code} {description}")]
    OriginRefused {
        call: &'static str,
        code: String,
        description: String,
    },
    /// Edge mode: the stream's shared upstream did not start.
    #[error("{reason}")]
    SharedUpstream {
        /// The `onStatus` code the player gets.
        code: &'static str,
        reason: String,
        fault: Fault,
    },
}

fn verb(role: Role) -> &'static str {
    match role {
        Role::Publisher => "publish",
        Role::Player => "play",
    }
}

impl RtmpError {
    /// The description a client reads: the whole error for its own
    /// mistakes and for an origin's own refusal, one short line for
    /// failures inside the cluster — never an address or an OS error (the
    /// log has those).
    pub fn client_reason(&self) -> String {
        match self {
            RtmpError::Claim(ClaimError::Store(_)) => crate::store::STORE_UNAVAILABLE.to_string(),
            RtmpError::NoRtmpPort(id) => format!("origin {id} serves no RTMP"),
            RtmpError::OriginConnect(..) => "origin unreachable".to_string(),
            RtmpError::OriginTimeout(_) => "origin did not answer in time".to_string(),
            RtmpError::OriginHandshake(_)
            | RtmpError::Origin(_)
            | RtmpError::OriginClosed
            | RtmpError::OriginBadReply(_) => "origin failed".to_string(),
            other => other.to_string(),
        }
    }

    /// What the client is told before the connection closes, if anything.
    /// Protocol violations get nothing: a peer that cannot frame messages
    /// cannot read a reply either.
    pub fn reply(&self, request: Option<&Request>) -> Option<Message> {
        if let RtmpError::NotConnected { transaction_id, .. } = self {
            return Some(
                Command::error(*transaction_id, "NetConnection.Call.Failed", &self.client_reason()).to_message(0),
            );
        }
        let request = request?;
        let code = match (self, request.role) {
            (RtmpError::OriginRefused { code, .. }, _) if !code.is_empty() => code.as_str(),
            (RtmpError::SharedUpstream { code, .. }, _) => code,
            (_, Role::Publisher) => status::PUBLISH_REJECTED,
            (_, Role::Player) => status::PLAY_FAILED,
        };
        Some(Command::on_status(status::LEVEL_ERROR, code, &self.client_reason()).to_message(request.client_stream_id))
    }
}

impl Failure for RtmpError {
    fn fault(&self) -> Fault {
        match self {
            RtmpError::Claim(e) => e.fault(),
            RtmpError::SharedUpstream { fault, .. } => *fault,
            RtmpError::NoRtmpPort(_)
            | RtmpError::OriginConnect(..)
            | RtmpError::OriginHandshake(_)
            | RtmpError::Origin(_)
            | RtmpError::OriginClosed
            | RtmpError::OriginTimeout(_)
            | RtmpError::OriginBadReply(_)
            | RtmpError::OriginRefused { .. } => Fault::Origin,
            _ => Fault::Client,
        }
    }

    fn retry_elsewhere(&self) -> bool {
        // A connect that failed, or a handshake the origin hung up on or
        // never answered: it heard nothing of the client's session.
        matches!(
            self,
            RtmpError::OriginConnect(..)
                | RtmpError::OriginHandshake(
                    handshake::HandshakeError::Truncated
                        | handshake::HandshakeError::Timeout(_)
                        | handshake::HandshakeError::Io(_)
                )
        )
    }
}

/// The RTMP server's connection handler.
#[derive(Clone)]
struct RtmpServer {
    ctx: Context,
    settings: Settings,
    /// The replica's shared upstreams, which players join in edge mode.
    edge: Edge,
}

impl Handler for RtmpServer {
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let span = tracing::info_span!(
            "rtmp",
            %peer,
            role = tracing::field::Empty,
            stream = tracing::field::Empty,
            origin = tracing::field::Empty,
        );
        serve(tcp, peer, self.ctx.clone(), self.settings.clone(), &self.edge)
            .instrument(span)
            .await
    }

    async fn refuse(&self, mut tcp: TcpStream, _peer: SocketAddr) {
        if handshake::accept(&mut tcp, self.settings.handshake_timeout)
            .await
            .is_err()
        {
            return;
        }
        let (r, w) = tcp.into_split();
        let mut reader = MessageReader::new(r, self.settings.max_message_size);
        let mut writer = MessageWriter::new(w);
        session::reject_connect(
            &mut reader,
            &mut writer,
            "server is at its connection limit; retry later",
        )
        .await;
    }
}

/// The RTMP listener's name in metrics.
pub const LISTENER_NAME: &str = "rtmp";

/// Accepts RTMP clients until draining starts, then waits for open relays
/// (which end at the latest when the proxy aborts them). `edge` is the
/// replica's table of shared upstreams.
pub async fn run(listener: TcpListener, ctx: Context, edge: Edge) {
    let server = RtmpServer {
        settings: Settings::from_context(&ctx),
        ctx: ctx.clone(),
        edge,
    };
    let max = ctx.config.rtmp_max_connections;
    crate::listener::serve(listener, ctx, LISTENER_NAME, max, server).await
}

/// One client connection, start to end.
async fn serve(mut tcp: TcpStream, peer: SocketAddr, ctx: Context, settings: Settings, edge: &Edge) {
    let _ = tcp.set_nodelay(true);
    // One deadline for everything before publish/play: a client that keeps
    // sending pings never reaches an idle timeout, but reaches this.
    let setup_deadline = tokio::time::Instant::now() + settings.setup_timeout;
    let setup_timed_out = || {
        ctx.metrics
            .listener_refused_total
            .with_label_values(&[LISTENER_NAME, "setup_timeout"])
            .inc();
        RtmpError::SetupTimeout(settings.setup_timeout)
    };
    let handshake = handshake::accept(&mut tcp, settings.handshake_timeout);
    let kind = match tokio::time::timeout_at(setup_deadline, handshake).await {
        Ok(Ok(kind)) => kind,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "closing RTMP connection");
            return;
        }
        Err(_) => {
            tracing::info!(error = %setup_timed_out(), "closing RTMP connection");
            return;
        }
    };
    tracing::debug!(?kind, "handshake done");
    let (r, w) = tcp.into_split();
    // Small messages until the client publishes or plays.
    let mut reader = MessageReader::new(r, SETUP_MAX_MESSAGE.min(settings.max_message_size));
    let mut writer = MessageWriter::new(w);

    let setup = session::accept(&mut reader, &mut writer, &settings);
    let request = match tokio::time::timeout_at(setup_deadline, setup).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return refuse(&mut writer, &mut reader, None, e).await,
        Err(_) => return refuse(&mut writer, &mut reader, None, setup_timed_out()).await,
    };
    reader.set_max_message_size(settings.max_message_size);
    let span = tracing::Span::current();
    span.record("role", request.role.as_str());
    span.record("stream", request.stream_name.as_str());
    let _connection = ctx.metrics.connection("rtmp", request.role.as_str());

    let key = match &request.key {
        Ok(key) => key.clone(),
        Err(e) => {
            return refuse(
                &mut writer,
                &mut reader,
                Some(&request),
                RtmpError::BadStream(e.clone()),
            )
            .await
        }
    };
    if request.role == Role::Player && ctx.config.edge.enabled() {
        return edge::play(&ctx, edge, &key, &request, peer, reader, writer).await;
    }
    // A failed connect undoes only a mapping this request created (an
    // origin refusing a second publisher must not unmap the first one's
    // stream); an unreachable origin is tried once elsewhere.
    let (request_ref, settings_ref) = (&request, &settings);
    let connect = |origin: Origin| async move { upstream::connect(&origin, request_ref, settings_ref).await };
    let (mut lease, upstream) = match ctx.claim_with(&key, Protocol::Rtmp, connect).await {
        Ok(connected) => connected,
        Err(e) => return refuse(&mut writer, &mut reader, Some(&request), e).await,
    };
    span.record("origin", &*lease.origin().id);
    if request.role == Role::Publisher {
        // The publisher is the stream: when it leaves, the mapping goes.
        lease.release_on_drop(&ctx);
    }
    tracing::info!(key = %key, "relaying");

    let counters = Counters {
        inbound: ctx.metrics.bytes_relayed_total.with_label_values(&["rtmp", "in"]),
        outbound: ctx.metrics.bytes_relayed_total.with_label_values(&["rtmp", "out"]),
    };
    let ids = StreamIds {
        client: request.client_stream_id,
        origin: upstream.stream_id,
    };
    let started = std::sync::atomic::AtomicBool::new(false);
    let end = relay::relay(
        Side { reader, writer },
        Side {
            reader: upstream.reader,
            writer: upstream.writer,
        },
        ids,
        &upstream.answered,
        &counters,
        lease.lost(),
        &started,
    )
    .await;
    tracing::info!(%peer, reason = %end, "relay ended");
    if request.role == Role::Publisher && !started.load(std::sync::atomic::Ordering::Relaxed) {
        // The origin never accepted this publish (a second publisher of a
        // live stream gets BadName): the stream is someone else's, or
        // nobody's if this request created the mapping.
        lease.keep_on_drop();
        ctx.forget_claim(&key, &lease.origin().id, lease.outcome()).await;
    }
}

/// Tells the client why (when it can be told), then closes.
async fn refuse<R, W>(
    writer: &mut MessageWriter<W>,
    reader: &mut MessageReader<R>,
    request: Option<&Request>,
    error: RtmpError,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if error.fault() == Fault::Origin {
        tracing::warn!(error = %error, "refusing RTMP client");
    } else {
        tracing::info!(error = %error, "closing RTMP connection");
    }
    if let Some(reply) = error.reply(request) {
        let _ = writer.send(&reply).await;
    }
    let _ = writer.shutdown().await;
    relay::linger(reader.get_mut()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::Value;
    use bytes::Bytes;

    fn request(role: Role) -> Request {
        let message = Message {
            csid: 3,
            timestamp: 0,
            type_id: message::type_id::COMMAND_AMF0,
            stream_id: 1,
            payload: Bytes::new(),
        };
        Request {
            role,
            key: key::stream_key(Some("rtmp://h/live"), None, "s"),
            stream_name: "s".into(),
            client_stream_id: 1,
            connect: message.clone(),
            connect_transaction: 1.0,
            prelude: vec![],
            create_stream: None,
            start: message,
            buffer_millis: None,
        }
    }

    fn status_of(reply: Option<Message>) -> (u32, Option<String>, String) {
        let reply = reply.expect("a reply");
        let command = Command::from_message(&reply).unwrap();
        let description = match &command {
            Command::OnStatus { info, .. } => info.get_str("description").unwrap_or("").to_string(),
            _ => String::new(),
        };
        (reply.stream_id, command.status_code().map(str::to_string), description)
    }

    #[test]
    fn refusals_after_publish_or_play_are_error_statuses_on_the_clients_stream() {
        let e = RtmpError::Claim(ClaimError::NoOrigin);
        let (stream, code, description) = status_of(e.reply(Some(&request(Role::Publisher))));
        assert_eq!((stream, code.as_deref()), (1, Some(status::PUBLISH_REJECTED)));
        assert_eq!(description, "no live origin can take the stream");
        let (_, code, _) = status_of(e.reply(Some(&request(Role::Player))));
        assert_eq!(code.as_deref(), Some(status::PLAY_FAILED));
    }

    #[test]
    fn an_origin_refusal_passes_its_own_code_on() {
        let e = RtmpError::OriginRefused {
            call: "connect",
            code: "NetConnection.Connect.Rejected".into(),
            description: "auth failed".into(),
        };
        let (_, code, description) = status_of(e.reply(Some(&request(Role::Publisher))));
        assert_eq!(code.as_deref(), Some("NetConnection.Connect.Rejected"));
        assert!(description.contains("auth failed"), "{description}");
    }

    #[test]
    fn origin_failures_reach_the_client_without_addresses_or_os_errors() {
        let leaky = [
            RtmpError::OriginConnect("127.0.0.1:22".into(), "Connection refused (os error 111)".into()),
            RtmpError::Origin(ConnError::Io(std::io::Error::other("10.1.2.3:1935 reset"))),
            RtmpError::OriginHandshake(handshake::HandshakeError::Io(std::io::Error::other(
                "10.1.2.3:1935 broken pipe (os error 32)",
            ))),
            RtmpError::Claim(ClaimError::Store(crate::store::StoreError::Unavailable(
                "redis: 10.9.9.9:6379 connection refused".into(),
            ))),
        ];
        for e in leaky {
            for role in [Role::Publisher, Role::Player] {
                let (_, _, description) = status_of(e.reply(Some(&request(role))));
                assert!(
                    !description.contains("os error") && !description.contains(':') && !description.contains("10."),
                    "{e}: {description}"
                );
            }
        }
    }

    #[test]
    fn calls_before_connect_get_an_error_result() {
        let e = RtmpError::NotConnected {
            command: "publish".into(),
            transaction_id: 5.0,
        };
        let reply = e.reply(None).unwrap();
        match Command::from_message(&reply).unwrap() {
            Command::Error { transaction_id, values } => {
                assert_eq!(transaction_id, 5.0);
                assert!(matches!(&values[1], Value::Object(o) if o.get_str("level") == Some("error")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_violations_get_no_reply() {
        let e = RtmpError::Client(ConnError::Chunk(chunk::ChunkError::InvalidChunkSize(0)));
        assert!(e.reply(None).is_none());
    }
}
