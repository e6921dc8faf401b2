//! A fake SRS origin that speaks RTMP, built on the proxy's own RTMP codec
//! in the server role, plus an HTTP side that serves what was published.
//!
//! * RTMP: answers `connect` and the publish/play setup like SRS (with its
//!   own chunk size, a small acknowledgement window and stream id 5, so the
//!   proxy has to translate all three), records every message it receives,
//!   serves a published stream to players (history, then live), and answers
//!   `NetStream.Publish.BadName` for a second publisher and
//!   `NetStream.Play.StreamNotFound` for a stream nobody publishes, and an
//!   `_error` to `connect` for the app [`FORBIDDEN_APP`] — each followed by
//!   closing the connection, as SRS does.
//! * HTTP: `/{app}/{stream}.flv` is the published stream as FLV (history,
//!   then live); `/{app}/{stream}.m3u8` is a one-segment playlist for a
//!   published stream. Anything else is 404.
//!
//! It registers through the real register API, and can be killed to
//! simulate a dead pod.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use srs_proxy::rtmp::amf0::{Object, Value};
use srs_proxy::rtmp::chunk::Message;
use srs_proxy::rtmp::command::{status, Command};
use srs_proxy::rtmp::conn::{MessageReader, MessageWriter};
use srs_proxy::rtmp::handshake;
use srs_proxy::rtmp::message::{limit_type, type_id, Control, UserControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The message stream id the origin hands out (the proxy gives clients 1).
pub const ORIGIN_STREAM_ID: u32 = 5;
/// The origin's outgoing chunk size (the proxy uses 60000).
pub const ORIGIN_CHUNK_SIZE: u32 = 4096;
/// The acknowledgement window the origin announces: small, so relays of a
/// few hundred kilobytes must acknowledge.
pub const ORIGIN_WINDOW: u32 = 64 * 1024;

/// Connecting to this app is refused with `_error`, as an SRS `on_connect`
/// hook that says no.
pub const FORBIDDEN_APP: &str = "forbidden";

/// Something that happened on one RTMP connection of the origin.
#[derive(Debug, Clone)]
pub enum Event {
    Connected {
        conn: usize,
        properties: Object,
    },
    Published {
        conn: usize,
        name: String,
    },
    Played {
        conn: usize,
        name: String,
    },
    /// Every message received, in order (commands and control included).
    Received {
        conn: usize,
        message: Message,
    },
    Closed {
        conn: usize,
    },
}

#[derive(Default)]
struct Published {
    /// The connection publishing it right now, if any.
    publisher: Option<usize>,
    /// Audio, video and data messages, in arrival order.
    history: Vec<Message>,
    live: Option<broadcast::Sender<Message>>,
}

#[derive(Default)]
struct State {
    events: Mutex<Vec<Event>>,
    streams: Mutex<HashMap<String, Published>>,
    open: AtomicUsize,
    next_conn: AtomicUsize,
}

impl State {
    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// A running fake RTMP origin; stops when dropped.
pub struct RtmpOrigin {
    pub name: String,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    state: Arc<State>,
    kill: CancellationToken,
}

impl Drop for RtmpOrigin {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

impl RtmpOrigin {
    pub async fn start(name: &str) -> Self {
        let rtmp = TcpListener::bind("127.0.0.1:0").await.expect("bind rtmp");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let origin = RtmpOrigin {
            name: name.to_string(),
            rtmp: rtmp.local_addr().unwrap(),
            http: http.local_addr().unwrap(),
            state: Arc::new(State::default()),
            kill: CancellationToken::new(),
        };
        let (state, kill) = (origin.state.clone(), origin.kill.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = rtmp.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    _ = kill.cancelled() => return,
                };
                let conn = state.next_conn.fetch_add(1, Ordering::SeqCst);
                let (state, kill) = (state.clone(), kill.clone());
                tokio::spawn(async move {
                    state.open.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = serve_rtmp(tcp, conn, &state) => {}
                        _ = kill.cancelled() => {}
                    }
                    unpublish(&state, conn);
                    state.open.fetch_sub(1, Ordering::SeqCst);
                    state.record(Event::Closed { conn });
                });
            }
        });
        let (state, kill) = (origin.state.clone(), origin.kill.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = http.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    _ = kill.cancelled() => return,
                };
                let (state, kill) = (state.clone(), kill.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_http(tcp, &state) => {}
                        _ = kill.cancelled() => {}
                    }
                });
            }
        });
        origin
    }

    /// The body SRS sends with `heartbeat { ports on; }`.
    pub fn register_body(&self) -> String {
        serde_json::json!({
            "device_id": self.name,
            "ip": "127.0.0.1",
            "server": self.name,
            "service": "rtmp-svc",
            "pid": "4343",
            "rtmp": [self.rtmp.port().to_string()],
            "http": [format!("0.0.0.0:{}", self.http.port())],
            "api": ["1985"],
            "summaries": {"ok": true}
        })
        .to_string()
    }

    /// Registers through the proxy's real register API.
    pub async fn register(&self, system_api: SocketAddr) {
        super::origin::post_register(system_api, self.register_body()).await;
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.events.lock().unwrap().clone()
    }

    /// Command objects of every `connect` received.
    pub fn connects(&self) -> Vec<Object> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Connected { properties, .. } => Some(properties),
                _ => None,
            })
            .collect()
    }

    /// Stream names of every `publish` received, as sent.
    pub fn published_names(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Published { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// Audio, video and data published on `stream` (`app/stream`).
    pub fn media(&self, stream: &str) -> Vec<Message> {
        self.state
            .streams
            .lock()
            .unwrap()
            .get(stream)
            .map(|s| s.history.clone())
            .unwrap_or_default()
    }

    pub fn is_publishing(&self, stream: &str) -> bool {
        self.state
            .streams
            .lock()
            .unwrap()
            .get(stream)
            .is_some_and(|s| s.publisher.is_some())
    }

    /// Acknowledgements received from the proxy.
    pub fn acknowledgements(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Received { message, .. } if message.type_id == type_id::ACKNOWLEDGEMENT))
            .count()
    }

    /// RTMP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Dies like a crashed pod: stops accepting and drops every connection.
    pub fn kill(&self) {
        self.kill.cancel();
    }
}

fn strip(name: &str) -> &str {
    name.split('?').next().unwrap_or(name)
}

fn unpublish(state: &State, conn: usize) {
    for s in state.streams.lock().unwrap().values_mut() {
        if s.publisher == Some(conn) {
            s.publisher = None;
            s.live = None;
        }
    }
}

async fn serve_rtmp(mut tcp: TcpStream, conn: usize, state: &State) {
    if handshake::accept(&mut tcp, Duration::from_secs(5)).await.is_err() {
        return;
    }
    let (r, w) = tcp.into_split();
    let mut reader = MessageReader::new(r, 16 * 1024 * 1024);
    let mut writer = MessageWriter::new(w);
    let mut app = String::new();
    let mut live: Option<broadcast::Receiver<Message>> = None;
    loop {
        let message = tokio::select! {
            m = reader.read() => match m {
                Ok(Some(m)) => m,
                _ => return,
            },
            m = async {
                match live.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match m {
                    Ok(m) => {
                        if writer.send(&Message { stream_id: ORIGIN_STREAM_ID, ..for_players(&m) }).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => live = None,
                }
                continue;
            }
        };
        state.record(Event::Received {
            conn,
            message: message.clone(),
        });
        let control = Control::decode(&message).ok().flatten();
        for owed in reader.replies_owed(control.as_ref()) {
            let _ = writer.queue(&owed.to_message());
        }
        match message.type_id {
            type_id::AUDIO | type_id::VIDEO | type_id::DATA_AMF0 => {
                let key = format!("{app}/");
                let mut streams = state.streams.lock().unwrap();
                if let Some((_, s)) = streams
                    .iter_mut()
                    .find(|(k, s)| k.starts_with(&key) && s.publisher == Some(conn))
                {
                    s.history.push(message.clone());
                    if let Some(tx) = &s.live {
                        let _ = tx.send(message);
                    }
                }
            }
            type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3 => {
                let Ok(command) = Command::from_message(&message) else {
                    return;
                };
                let mut replies: Vec<Message> = Vec::new();
                let mut close = false;
                match command {
                    Command::Connect(c) if c.app() == Some(FORBIDDEN_APP) => {
                        state.record(Event::Connected {
                            conn,
                            properties: c.properties.clone(),
                        });
                        replies.push(
                            Command::error(
                                c.transaction_id,
                                status::CONNECT_REJECTED,
                                "app forbidden by on_connect",
                            )
                            .to_message(0),
                        );
                        close = true;
                    }
                    Command::Connect(c) => {
                        app = c.app().unwrap_or("").to_string();
                        state.record(Event::Connected {
                            conn,
                            properties: c.properties.clone(),
                        });
                        replies.push(Control::WindowAckSize(ORIGIN_WINDOW).to_message());
                        replies.push(
                            Control::SetPeerBandwidth {
                                size: ORIGIN_WINDOW,
                                limit: limit_type::DYNAMIC,
                            }
                            .to_message(),
                        );
                        replies.push(Control::SetChunkSize(ORIGIN_CHUNK_SIZE).to_message());
                        replies.push(Command::connect_result(c.transaction_id, c.object_encoding()).to_message(0));
                    }
                    Command::ReleaseStream { transaction_id, .. } | Command::FcPublish { transaction_id, .. } => {
                        replies.push(Command::result(transaction_id, Value::Undefined).to_message(0));
                    }
                    Command::CreateStream { transaction_id } => {
                        replies.push(
                            Command::result(transaction_id, Value::Number(f64::from(ORIGIN_STREAM_ID))).to_message(0),
                        );
                    }
                    Command::Publish { stream_name, .. } => {
                        state.record(Event::Published {
                            conn,
                            name: stream_name.clone(),
                        });
                        let key = format!("{app}/{}", strip(&stream_name));
                        let mut streams = state.streams.lock().unwrap();
                        let s = streams.entry(key).or_default();
                        if s.publisher.is_some() {
                            replies.push(status_message(
                                status::LEVEL_ERROR,
                                status::PUBLISH_BAD_NAME,
                                "Stream already publishing",
                            ));
                            close = true;
                        } else {
                            s.publisher = Some(conn);
                            s.history.clear();
                            s.live = Some(broadcast::channel(1024).0);
                            replies.push(
                                Command::Other {
                                    name: "onFCPublish".into(),
                                    transaction_id: 0.0,
                                    values: vec![Value::Null, Value::Object(start_info(status::PUBLISH_START))],
                                }
                                .to_message(0),
                            );
                            replies.push(status_message(
                                status::LEVEL_STATUS,
                                status::PUBLISH_START,
                                "Started publishing stream.",
                            ));
                        }
                    }
                    Command::Play { stream_name, .. } => {
                        state.record(Event::Played {
                            conn,
                            name: stream_name.clone(),
                        });
                        let key = format!("{app}/{}", strip(&stream_name));
                        let streams = state.streams.lock().unwrap();
                        match streams.get(&key).filter(|s| s.publisher.is_some()) {
                            None => {
                                replies.push(status_message(
                                    status::LEVEL_ERROR,
                                    status::PLAY_STREAM_NOT_FOUND,
                                    "Stream not found",
                                ));
                                close = true;
                            }
                            Some(s) => {
                                replies.push(Control::User(UserControl::StreamBegin(ORIGIN_STREAM_ID)).to_message());
                                replies.push(status_message(
                                    status::LEVEL_STATUS,
                                    status::PLAY_RESET,
                                    "Playing and resetting stream.",
                                ));
                                replies.push(status_message(
                                    status::LEVEL_STATUS,
                                    status::PLAY_START,
                                    "Started playing stream.",
                                ));
                                // History and subscription under one lock, so
                                // nothing falls between them.
                                replies.extend(s.history.iter().map(|m| Message {
                                    stream_id: ORIGIN_STREAM_ID,
                                    ..for_players(m)
                                }));
                                live = s.live.as_ref().map(|tx| tx.subscribe());
                            }
                        }
                    }
                    _ => {}
                }
                for reply in &replies {
                    if writer.queue(reply).is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() || close {
                    let _ = writer.shutdown().await;
                    // Let the reply reach the peer before the socket goes.
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Ok(n) = reader.get_mut().read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                    return;
                }
            }
            _ => {
                if writer.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What SRS sends players for a published message: data messages lose
/// the `@setDataFrame` the publisher wrapped metadata in.
fn for_players(message: &Message) -> Message {
    const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
    match message.payload.strip_prefix(SET_DATA_FRAME) {
        Some(rest) if message.type_id == type_id::DATA_AMF0 => Message {
            payload: Bytes::copy_from_slice(rest),
            ..message.clone()
        },
        _ => message.clone(),
    }
}

fn start_info(code: &str) -> Object {
    srs_proxy::rtmp::command::status_info(status::LEVEL_STATUS, code, "")
}

fn status_message(level: &str, code: &str, description: &str) -> Message {
    Command::on_status(level, code, description).to_message(ORIGIN_STREAM_ID)
}

/// FLV file header plus the zero "previous tag size" that precedes tag 1.
pub const FLV_HEADER: &[u8] = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00";

/// One FLV tag for an RTMP audio/video/data message.
pub fn flv_tag(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(15 + message.payload.len());
    out.put_u8(message.type_id);
    out.put_uint(message.payload.len() as u64, 3);
    out.put_uint(u64::from(message.timestamp & 0x00ff_ffff), 3);
    out.put_u8((message.timestamp >> 24) as u8);
    out.put_uint(0, 3);
    out.put_slice(&message.payload);
    out.put_u32(11 + message.payload.len() as u32);
    out.to_vec()
}

/// Splits an FLV body into (type, timestamp, payload) tags; stops at the
/// first incomplete tag.
pub fn parse_flv(body: &[u8]) -> Vec<(u8, u32, Bytes)> {
    let mut tags = Vec::new();
    let mut rest = body.get(FLV_HEADER.len()..).unwrap_or(&[]);
    while rest.len() >= 11 {
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
        if rest.len() < 11 + len + 4 {
            break;
        }
        tags.push((rest[0], ts, Bytes::copy_from_slice(&rest[11..11 + len])));
        rest = &rest[11 + len + 4..];
    }
    tags
}

async fn serve_http(mut tcp: TcpStream, state: &State) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path).trim_start_matches('/');
    let (key, ext) = path.rsplit_once('.').unwrap_or((path, ""));

    let found = {
        let streams = state.streams.lock().unwrap();
        streams
            .get(key)
            .filter(|s| s.publisher.is_some())
            .map(|s| (s.history.clone(), s.live.as_ref().map(|tx| tx.subscribe())))
    };
    let Some((history, mut live)) = found else {
        let _ = tcp
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 17\r\nConnection: close\r\n\r\nstream not found\n")
            .await;
        return;
    };
    match ext {
        "flv" => {
            let mut body = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\n\r\n".to_vec();
            body.extend_from_slice(FLV_HEADER);
            for m in &history {
                body.extend(flv_tag(&for_players(m)));
            }
            if tcp.write_all(&body).await.is_err() {
                return;
            }
            while let Some(rx) = live.as_mut() {
                match rx.recv().await {
                    Ok(m) => {
                        if tcp.write_all(&flv_tag(&for_players(&m))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
        "m3u8" => {
            let stream = key.rsplit('/').next().unwrap_or(key);
            let text = format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.000,\n{stream}-0.ts\n"
            );
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
        }
        _ => {
            let _ = tcp
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n")
                .await;
        }
    }
}
