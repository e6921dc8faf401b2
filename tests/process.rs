//! The real `srs-proxy` binary as an operator runs it: logging that cannot
//! take the process down, plain text when stderr is not a terminal, and
//! signals that always end it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A UDP port nothing is bound to right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proxy {
    child: Child,
    http: SocketAddr,
    rtmp: SocketAddr,
    api: SocketAddr,
}

impl Proxy {
    /// Starts the binary on free loopback ports with `stderr` as given.
    fn start(stderr: Stdio, extra_env: &[(&str, &str)]) -> Self {
        let (http, rtmp, api) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_srs-proxy"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PROXY_HTTP_SERVER", format!("127.0.0.1:{http}"))
            .env("PROXY_RTMP_SERVER", format!("127.0.0.1:{rtmp}"))
            .env("PROXY_SYSTEM_API", format!("127.0.0.1:{api}"))
            .env("PROXY_HTTP_API", format!("127.0.0.1:{}", free_port()))
            .env("PROXY_WEBRTC_SERVER", format!("127.0.0.1:{}", free_udp_port()))
            .env("PROXY_SRT_SERVER", format!("127.0.0.1:{}", free_udp_port()))
            .env("PROXY_GRACE_QUIT_TIMEOUT", "30s")
            .env("PROXY_FORCE_QUIT_TIMEOUT", "60s")
            .env("RUST_LOG", "debug")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let proxy = Proxy {
            child: cmd.spawn().expect("spawn srs-proxy"),
            http: format!("127.0.0.1:{http}").parse().unwrap(),
            rtmp: format!("127.0.0.1:{rtmp}").parse().unwrap(),
            api: format!("127.0.0.1:{api}").parse().unwrap(),
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if get(self.api, "/api/v1/versions").starts_with("HTTP/1.1 200") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy did not become ready");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to end, at most `limit` (a bound that only
    /// catches a process that ignores its signals).
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on its own connection; the raw reply.
fn get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return String::new();
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(tcp, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out
}

#[test]
fn with_stderr_a_closed_pipe_requests_are_answered_and_sigterm_ends_the_process() {
    let mut proxy = Proxy::start(Stdio::piped(), &[]);
    // `srs-proxy 2>&1 | head` after head has exited: nobody reads stderr.
    drop(proxy.child.stderr.take());
    for _ in 0..20 {
        // Each of these logs (debug and info lines), into the closed pipe.
        let reply = get(proxy.http, "/live/nobody.flv");
        assert!(reply.starts_with("HTTP/1.1 503"), "a request that logs got {reply:?}");
        assert!(reply.contains("no live origin"), "{reply}");
    }
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("SIGTERM ignored with a closed stderr");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_signal_quits_at_once_while_the_first_is_draining() {
    let mut proxy = Proxy::start(Stdio::null(), &[("PROXY_RTMP_HANDSHAKE_TIMEOUT", "60s")]);
    // Something for the drain to wait for: an RTMP client that stays in
    // its handshake past the whole 30 s grace period.
    let held = TcpStream::connect(proxy.rtmp).unwrap();
    proxy.signal("TERM");
    // The drain has begun once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(proxy.http).is_ok() {
        assert!(Instant::now() < deadline, "listener still open after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(proxy.child.try_wait().unwrap().is_none(), "still draining");
    proxy.signal("INT");
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("the second signal did not end the process");
    assert!(!status.success(), "a forced quit is not a clean exit: {status:?}");
    drop(held);
}
#[test]
fn text_logs_in_a_file_have_no_colour_and_one_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.log");
    let file = std::fs::File::create(&path).unwrap();
    let mut proxy = Proxy::start(Stdio::from(file), &[("PROXY_LOG_FORMAT", "text")]);
    // Untrusted text that reaches the log: a register body with a forged
    // line in its origin id.
    let body = "{\"ip\":\"10.0.0.1\",\"server\":\"evil\\n\\u001b[31mFAKE LOG LINE\",\"service\":\"s\",\"pid\":\"1\",\"rtmp\":[\"1935\"]}";
    let mut tcp = TcpStream::connect(proxy.api).unwrap();
    write!(
        tcp,
        "POST /api/v1/srs/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(30)).expect("exit");
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("registration refused"), "{log}");
    assert!(!log.contains('\u{1b}'), "no escape sequence in a file: {log}");
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("FAKE"), "a forged line: {line:?}");
    }
}

/// The names of the process's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap_or_default().trim().to_string()
        })
        .collect()
}

/// `PROXY_WORKER_THREADS` reaches the runtime: that many worker threads,
/// or with one, the single-threaded scheduler on the main thread and no
/// worker thread at all; `0` is as many as the process may use.
#[test]
fn worker_threads_set_the_runtime() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (setting, workers) in [("3", 3), ("1", 1), ("0", cores)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.log");
        let file = std::fs::File::create(&path).unwrap();
        let mut proxy = Proxy::start(
            Stdio::from(file),
            &[("PROXY_LOG_FORMAT", "text"), ("PROXY_WORKER_THREADS", setting)],
        );
        // It serves on either scheduler.
        let reply = get(proxy.http, "/live/nobody.flv");
        assert!(reply.starts_with("HTTP/1.1 503"), "{setting}: {reply:?}");
        // Worker threads are named by tokio; blocking threads, which
        // share the name, start only for blocking work, and none has
        // been asked for yet.
        let names = thread_names(proxy.child.id());
        let worker_threads = names.iter().filter(|n| n.starts_with("tokio-")).count();
        let kind = if workers == 1 {
            assert_eq!(worker_threads, 0, "{setting}: {names:?}");
            "current_thread"
        } else {
            assert_eq!(worker_threads, workers, "{setting}: {names:?}");
            "multi_thread"
        };
        proxy.signal("TERM");
        proxy.wait_exit(Duration::from_secs(30)).expect("exit");
        let log = std::fs::read_to_string(&path).unwrap();
        let serving = log.lines().find(|l| l.contains("serving")).expect("a serving line");
        assert!(serving.contains(&format!("runtime=\"{kind}\"")), "{setting}: {serving}");
        assert!(serving.contains(&format!("workers={workers}")), "{setting}: {serving}");
    }
}
