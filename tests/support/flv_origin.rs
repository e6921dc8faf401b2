//! A fake SRS origin serving real FLV, tag by tag, as the test feeds it
//! (or, started with [`FlvOrigin::start_ts`], MPEG-TS bytes).
//!
//! `GET /{app}/{stream}.flv` (any name) answers `video/x-flv`, chunked,
//! with its name in `X-Origin`:
//! the FLV file header, every tag fed so far, then each tag as it is fed,
//! until [`FlvOrigin::end`] ends every body. A TS origin answers
//! `video/MP2T` with every piece fed so far, then each as it is fed. The origin keeps an ordered
//! log of [`Event`]s (requests, bodies closing, marks the test adds), so a
//! test can assert what happened in which order without timing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{header, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use srs_proxy::http::edge::flv::{self, Tag};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::origin::{serve_http, Body, BoxError};

/// Something the origin saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A stream request on connection `conn` (1, 2, … in accept order).
    Request { conn: usize, path: String },
    /// The body of connection `conn` was dropped: its reader went away or
    /// the body ended.
    Closed { conn: usize },
    /// A mark the test put in the log.
    Mark(&'static str),
}

#[derive(Default)]
struct Feed {
    /// What every body starts with (the FLV file header).
    header: &'static [u8],
    /// Every tag (or TS piece) fed, encoded.
    tags: Mutex<Vec<Bytes>>,
    ended: Mutex<bool>,
    /// Woken when a tag is fed or the stream ends.
    more: Notify,
    events: Mutex<Vec<Event>>,
}

impl Feed {
    fn log(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// A running FLV origin; stops when dropped.
pub struct FlvOrigin {
    pub name: String,
    pub addr: SocketAddr,
    feed: Arc<Feed>,
    kill: CancellationToken,
}

impl Drop for FlvOrigin {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

/// Logs `Closed` when a body goes.
struct BodyGuard {
    feed: Arc<Feed>,
    conn: usize,
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.feed.log(Event::Closed { conn: self.conn });
    }
}

fn body(feed: Arc<Feed>, conn: usize) -> Body {
    let guard = BodyGuard { feed, conn };
    let chunks = stream::unfold((0usize, guard), |(next, guard)| async move {
        loop {
            let feed = guard.feed.clone();
            let notified = feed.more.notified();
            let ready: Vec<Bytes> = feed.tags.lock().unwrap()[next..].to_vec();
            if !ready.is_empty() {
                let mut data = Vec::new();
                if next == 0 {
                    data.extend_from_slice(feed.header);
                }
                for tag in &ready {
                    data.extend_from_slice(tag);
                }
                let next = next + ready.len();
                drop(notified);
                return Some((Ok::<_, BoxError>(Frame::data(Bytes::from(data))), (next, guard)));
            }
            if *feed.ended.lock().unwrap() {
                return None;
            }
            notified.await;
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

impl FlvOrigin {
    /// Starts on 127.0.0.1:0.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, flv::FILE_HEADER, "video/x-flv").await
    }

    /// An origin of MPEG-TS: what is fed with [`FlvOrigin::feed_bytes`].
    pub async fn start_ts(name: &str) -> Self {
        Self::start_with(name, b"", "video/MP2T").await
    }

    async fn start_with(name: &str, header: &'static [u8], content_type: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind flv origin");
        let addr = listener.local_addr().unwrap();
        let feed = Arc::new(Feed {
            header,
            ..Feed::default()
        });
        let kill = CancellationToken::new();
        let (f, n) = (feed.clone(), name.to_string());
        let mut conns = 0;
        let accepted = move || {
            conns += 1;
            conns
        };
        serve_http(listener, kill.clone(), accepted, move |conn, req| {
            let path = req.uri().path().to_string();
            f.log(Event::Request { conn, path });
            let mut resp = Response::new(body(f.clone(), conn));
            *resp.status_mut() = StatusCode::OK;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            h.insert("x-origin", n.parse().unwrap());
            resp
        });
        Self {
            name: name.to_string(),
            addr,
            feed,
            kill,
        }
    }

    /// Registers through the proxy's real register API.
    pub async fn register(&self, system_api: SocketAddr) {
        super::origin::post_register(system_api, super::origin::register_body(&self.name, self.addr)).await;
    }

    /// Sends `tags` to every open body (and to later requests).
    pub fn feed(&self, tags: &[Tag]) {
        let mut all = self.feed.tags.lock().unwrap();
        all.extend(tags.iter().map(|t| Bytes::from(flv::encode_tag(t))));
        drop(all);
        self.feed.more.notify_waiters();
    }

    /// Sends `bytes` as they are to every open body (and to later
    /// requests).
    pub fn feed_bytes(&self, bytes: &[u8]) {
        self.feed.tags.lock().unwrap().push(Bytes::copy_from_slice(bytes));
        self.feed.more.notify_waiters();
    }

    /// Ends every body after the tags fed so far.
    pub fn end(&self) {
        *self.feed.ended.lock().unwrap() = true;
        self.feed.more.notify_waiters();
    }

    /// Puts a mark in the event log.
    pub fn mark(&self, what: &'static str) {
        self.feed.log(Event::Mark(what));
    }

    pub fn events(&self) -> Vec<Event> {
        self.feed.events.lock().unwrap().clone()
    }

    /// The stream requests received so far, in order.
    pub fn request_events(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, Event::Request { .. }))
            .collect()
    }

    /// Stream requests received so far.
    pub fn requests(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Request { .. }))
            .count()
    }

    /// Bodies being served now.
    pub fn open_bodies(&self) -> usize {
        let events = self.events();
        let closed = events.iter().filter(|e| matches!(e, Event::Closed { .. })).count();
        self.requests() - closed
    }
}
