//! The processes under test: the proxy binary and nginx, each started by
//! the bench on loopback and pinned to one core, and what /proc says about
//! them (resident memory, CPU time).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The core the process under test runs on; the bench (origin and load)
/// takes the other.
pub const TARGET_CPU: &str = "1";
pub const BENCH_CPU: &str = "0";

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A child process under test; killed when dropped.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system CPU seconds used so far.
    pub fn cpu_split(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        (ticks(11) / 100.0, ticks(12) / 100.0)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pinned(program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(TARGET_CPU).arg(program);
    cmd
}

/// `program` pinned, run under `wrapper` (valgrind) when there is one.
fn pinned_under(wrapper: &[&str], program: &Path) -> Command {
    match wrapper.split_first() {
        None => pinned(program),
        Some((first, args)) => {
            let mut cmd = pinned(Path::new(first));
            cmd.args(args).arg(program);
            cmd
        }
    }
}

/// Waits until `child` accepts connections on `addr`; false if it exited
/// first (a port it was given was taken meanwhile, say by one of the
/// load's own connections).
fn wait_listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The proxy binary on one worker thread, with `origin` as its static
/// origin. `wrapper` runs it under another program (valgrind).
pub fn proxy(binary: &Path, origin: SocketAddr, wrapper: &[&str], name: &'static str) -> Target {
    proxy_with(binary, origin, wrapper, name, &[])
}

/// [`proxy`] with more settings.
pub fn proxy_with(
    binary: &Path,
    origin: SocketAddr,
    wrapper: &[&str],
    name: &'static str,
    settings: &[(&str, &str)],
) -> Target {
    start(name, |addr| {
        let mut cmd = pinned_under(wrapper, binary);
        cmd.env_clear()
            .env("PROXY_HTTP_SERVER", addr.to_string())
            .env("PROXY_RTMP_SERVER", free_port().to_string())
            .env("PROXY_SYSTEM_API", free_port().to_string())
            // Every listener on a port of its own, so that two proxies
            // (this build and another) can run side by side.
            .env("PROXY_HTTP_API", free_port().to_string())
            .env("PROXY_WEBRTC_SERVER", free_port().to_string())
            .env("PROXY_SRT_SERVER", free_port().to_string())
            .env("PROXY_DEFAULT_BACKEND_ENABLED", "on")
            .env("PROXY_DEFAULT_BACKEND_IP", "127.0.0.1")
            .env("PROXY_DEFAULT_BACKEND_HTTP", origin.port().to_string())
            .env("PROXY_WORKER_THREADS", "1")
            .env("PROXY_HTTP_MAX_CONNECTIONS", "0")
            .env("PROXY_GRACE_QUIT_TIMEOUT", "1s")
            .env("PROXY_FORCE_QUIT_TIMEOUT", "2s")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_PROXY_LOG").unwrap_or_else(|_| "error".into()),
            )
            .envs(settings.iter().copied());
        cmd
    })
}

/// `program` pinned to the target core (under `wrapper`, if any), told by
/// `configure` to listen on the address it is given.
pub fn spawn_pinned(
    program: &Path,
    wrapper: &[&str],
    name: &'static str,
    configure: impl Fn(&mut Command, SocketAddr),
) -> Target {
    start(name, |addr| {
        let mut cmd = pinned_under(wrapper, program);
        configure(&mut cmd, addr);
        cmd
    })
}

/// Starts the command `build` makes for a port free a moment ago, until
/// one listens: a start that exits before listening (a load connection
/// took the port meanwhile) is tried again on other ports, five times.
fn start(name: &'static str, build: impl Fn(SocketAddr) -> Command) -> Target {
    for _ in 0..5 {
        let addr = free_port();
        let mut child = build(addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the process under test");
        if wait_listening(&mut child, addr) {
            return Target {
                name,
                addr,
                child,
                _dir: None,
            };
        }
    }
    panic!("{name} did not start five times in a row");
}

/// Debian's nginx as a plain reverse proxy: one worker, no master, no
/// buffering of responses, 64 KiB buffers, kept-alive upstream
/// connections, and no cap on requests per connection either side (as
/// the proxy: its default of 1,000 would reconnect in long rounds); its
/// files in a temporary directory.
pub fn nginx(origin: SocketAddr) -> Option<Target> {
    nginx_under(origin, &[])
}

/// [`nginx`] run under `wrapper` (valgrind).
pub fn nginx_under(origin: SocketAddr, wrapper: &[&str]) -> Option<Target> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 30000;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log error;\n\
events {{ worker_connections 20000; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
  upstream origin {{ server {origin}; keepalive 64; keepalive_requests 1000000; }}\n\
  server {{\n    listen {addr} backlog=4096;\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_buffer_size 64k;\n      proxy_buffers 8 64k;\n      proxy_busy_buffers_size 128k;\n    }}\n  }}\n}}\n",
        dir = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut child = pinned_under(wrapper, &binary)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    // nginx refuses a configuration at start: say why instead of waiting.
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut why = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut why);
            }
            panic!("nginx exited at start ({status}): {why}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Target {
        name: "nginx",
        addr,
        child,
        _dir: Some(dir),
    })
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it); returns the limit in force.
pub fn raise_nofile() -> u64 {
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:unlimited"])
        .status();
    let hard = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--noheadings", "--output=HARD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(hard) = hard {
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status();
    }
    Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--noheadings", "--output=SOFT"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Pins this process (the origin and the load) to the bench core.
pub fn pin_self() {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", BENCH_CPU, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
}
