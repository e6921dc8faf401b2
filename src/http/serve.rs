//! One HTTP/1.1 connection, for every HTTP listener (streaming, system API).
//!
//! [`HttpServer`] is what the listener runs per connection: hyper serves
//! the requests with a header-read deadline, finishes the response in
//! flight when draining starts, and answers connections over the listener's
//! cap with `503` and `Retry-After`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

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
        let svc = service_fn(move |req| {
            let answer = answer.clone();
            async move { Ok::<_, Infallible>(answer(req, peer).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(tcp), svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.ctx.shutdown.draining() => {
                // Finish the response in flight, take no new request; the
                // listener cuts the connection at abort.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
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
