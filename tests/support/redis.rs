//! A real `redis-server` for tests, on a free loopback port, with nothing
//! persisted (`--save '' --appendonly no`).
//!
//! [`RedisServer::shared`] is the one server of a test process (one per
//! test binary under `cargo test`, one per test under nextest); tests keep
//! apart by key prefix. A test that stops the server starts its own with
//! [`RedisServer::start`].
//!
//! The server runs under a small `sh` guard that holds a pipe from this
//! process: when the process ends, however it ends, the pipe closes and the
//! guard kills the server, so no test leaves a redis-server behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use srs_proxy::config::RedisConfig;

const GUARD: &str = r#"redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning &
pid=$!
read _ignored
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;

struct Running {
    guard: Child,
    /// Closing it tells the guard to kill the server.
    stdin: ChildStdin,
}

/// A redis-server this process started.
pub struct RedisServer {
    port: u16,
    running: Mutex<Option<Running>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// The server shared by every test of this process.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(RedisServer::start)
    }

    /// Starts a server of its own on a free port.
    pub fn start() -> Self {
        for _ in 0..5 {
            let server = Self {
                port: free_port(),
                running: Mutex::new(None),
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? apt-get install redis-server)");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Store config pointing at this server, with its own key prefix.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            prefix: prefix.into(),
            timeout: Duration::from_millis(500),
            ..RedisConfig::default()
        }
    }

    fn launch(&self) -> bool {
        let mut guard = Command::new("sh")
            .args(["-c", GUARD, "redis-guard", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let stdin = guard.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                *self.running.lock().unwrap() = Some(Running { guard, stdin });
                return true;
            }
            if let Ok(Some(_)) = guard.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stdin);
        let _ = guard.wait();
        false
    }

    /// Kills the server (SIGKILL, like a crash) and waits until it is gone.
    pub fn stop(&self) {
        if let Some(Running { mut guard, stdin }) = self.running.lock().unwrap().take() {
            drop(stdin);
            let _ = guard.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ping(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r == ["PONG"])
    }

    /// Runs one command and returns its reply as lines of text (an array
    /// flattened, a nil as nothing); `None` if the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<Vec<String>> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        tcp.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(tcp);
        let mut out = Vec::new();
        read_reply(&mut reader, &mut out)?;
        Some(out)
    }

    /// Keys matching `pattern` (tests only: the product never lists keys).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.command(&["KEYS", pattern]).expect("redis reachable");
        keys.sort();
        keys
    }
}

fn read_reply(reader: &mut impl BufRead, out: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => out.push(format!("ERROR {rest}")),
        "$" => {
            let len: i64 = rest.parse().ok()?;
            if len >= 0 {
                let mut buf = vec![0; len as usize + 2];
                reader.read_exact(&mut buf).ok()?;
                buf.truncate(len as usize);
                out.push(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            for _ in 0..n.max(0) {
                read_reply(reader, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
