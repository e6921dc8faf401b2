//! The floor under the HLS figures: a bare keep-alive relay on the
//! proxy's runtime (tokio's single-threaded scheduler, which the proxy
//! uses on one core) and nothing else. It reads a
//! request head, sends it as is on a pooled origin connection, and streams
//! the origin's `Content-Length` answer back: no routing, no claim, no
//! session token, no playlist rewrite, no metrics, no HTTP server library.
//! What it adds over direct is what the runtime and the two extra hops
//! cost; what the proxy adds over it is the proxy's own work per request.
//!
//! It runs as this bench binary started again with [`ENV`] set, pinned to
//! the core of the process under test like the proxy and nginx.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::process::{self, Target};

/// `<listen address> <origin address>`: run as the bare relay.
pub const ENV: &str = "BENCH_BARE_RELAY";

/// The bare relay in front of `origin`, as a child process.
pub fn start(origin: SocketAddr) -> Target {
    start_under(origin, &[])
}

/// [`start`] under `wrapper` (valgrind).
pub fn start_under(origin: SocketAddr, wrapper: &[&str]) -> Target {
    let exe = std::env::current_exe().expect("the bench binary's path");
    process::spawn_pinned(&exe, wrapper, "bare tokio relay", |cmd, listen| {
        cmd.env(ENV, format!("{listen} {origin}"));
    })
}

/// When this process was started as the bare relay, serves until killed;
/// otherwise returns at once.
pub fn run_if_asked() {
    let Ok(spec) = std::env::var(ENV) else { return };
    let (listen, origin) = spec.split_once(' ').expect("<listen> <origin>");
    let (listen, origin): (SocketAddr, SocketAddr) = (listen.parse().unwrap(), origin.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind the bare relay");
        let pool: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let pool = pool.clone();
            tokio::spawn(async move {
                let _ = serve(client, origin, &pool).await;
            });
        }
    });
    std::process::exit(0);
}

/// One client connection, request after request.
async fn serve(mut client: TcpStream, origin: SocketAddr, pool: &Mutex<Vec<TcpStream>>) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    // The answer's buffer, also kept for the connection's life.
    let mut answer = vec![0u8; 64 * 1024];
    let mut have = 0;
    loop {
        let head = loop {
            if let Some(end) = head_end(&buf[..have]) {
                break end;
            }
            if have == buf.len() {
                return Ok(());
            }
            let n = client.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        let pooled = pool.lock().unwrap().pop();
        let mut upstream = match pooled {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(origin).await?;
                c.set_nodelay(true)?;
                c
            }
        };
        upstream.write_all(&buf[..head]).await?;
        buf.copy_within(head..have, 0);
        have -= head;
        relay_answer(&mut upstream, &mut client, &mut answer).await?;
        pool.lock().unwrap().push(upstream);
    }
}

/// Streams one `Content-Length` answer from `upstream` to `client`.
async fn relay_answer(upstream: &mut TcpStream, client: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut have = 0;
    let (head, length) = loop {
        if let Some(end) = head_end(&buf[..have]) {
            break (end, content_length(&buf[..end]));
        }
        if have == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let n = upstream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    };
    let mut left = (head + length).saturating_sub(have);
    client.write_all(&buf[..have]).await?;
    while left > 0 {
        let room = left.min(buf.len());
        let n = upstream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        client.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Where a head ends (after its blank line), once it is all there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &[u8]) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let _ = resp.parse(head);
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}
