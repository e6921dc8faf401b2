//! One HTTP/1.1 connection, for every HTTP listener (streaming, system API).
//!
//! [`HttpServer`] is what the listener runs per connection: hyper serves
//! the requests with a header-read deadline, finishes the response in
//! flight when draining starts, and answers connections over the listener's
//! cap with `503` and `Retry-After`. A response carrying a [`Detach`] is
//! not written by hyper: the connection leaves hyper and the detached
//! handler writes the response on the socket itself (live relays).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{full, server_header, Body};
use crate::context::Context;
use crate::listener::Handler;

/// A client must send its request head within this long (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1.1 on each connection, calling `answer` per request.
#[derive(Clone)]
pub struct HttpServer<A> {
    /// For the drain signal.
    ctx: Context,
    /// Answers one request.
    answer: A,
}

impl<A, F> HttpServer<A>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    pub fn new(ctx: Context, answer: A) -> Self {
        Self { ctx, answer }
    }
}

impl<A, F> Handler for HttpServer<A>
where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let answer = self.answer.clone();
        let handover = Arc::new(Handover::default());
        let to_hand_over = handover.clone();
        let svc = service_fn(move |req| {
            let (answer, handover) = (answer.clone(), to_hand_over.clone());
            async move {
                let resp = answer(req, peer).await;
                match resp.extensions().get::<Detach>().and_then(Detach::take) {
                    Some(detached) => {
                        handover.put(detached, resp.into_parts().0);
                        // hyper writes nothing for this request; the
                        // connection is taken from it below.
                        std::future::pending().await
                    }
                    None => Ok::<_, Infallible>(resp),
                }
            }
        });
        let mut conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(tcp), svc);
        let mut draining = false;
        let result = loop {
            tokio::select! {
                r = &mut conn => break r,
                _ = handover.ready.notified() => {
                    let Some((detached, head)) = handover.take() else { continue };
                    let tcp = conn.into_parts().io.into_inner();
                    detached(tcp, head).await;
                    return;
                }
                _ = self.ctx.shutdown.draining(), if !draining => {
                    // Finish the response in flight, take no new request;
                    // the listener cuts the connection at abort.
                    draining = true;
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    async fn refuse(&self, tcp: TcpStream, _peer: SocketAddr) {
        let svc = service_fn(|_req| async {
            let mut resp = Response::new(full("server is at its connection limit; retry later\n"));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(header::SERVER, server_header());
            Ok::<_, Infallible>(resp)
        });
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    }
}

/// Writes a whole response, head included, on the raw connection.
pub type Detached = Box<dyn FnOnce(TcpStream, http::response::Parts) -> BoxFuture<'static, ()> + Send>;

/// A response extension: instead of hyper writing the response, the
/// connection leaves hyper and this writes it, given the final head (after
/// every header the router adds). The connection closes afterwards.
#[derive(Clone)]
pub struct Detach(Arc<Mutex<Option<Detached>>>);

impl Detach {
    pub fn new(f: impl FnOnce(TcpStream, http::response::Parts) -> BoxFuture<'static, ()> + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::new(f)))))
    }

    fn take(&self) -> Option<Detached> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// From the request's task to the connection's: the detached handler and
/// the head it is to write.
#[derive(Default)]
struct Handover {
    slot: Mutex<Option<(Detached, http::response::Parts)>>,
    ready: Notify,
}

impl Handover {
    fn put(&self, detached: Detached, head: http::response::Parts) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((detached, head));
        self.ready.notify_one();
    }

    fn take(&self) -> Option<(Detached, http::response::Parts)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
