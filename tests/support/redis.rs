//! Real `redis-server` processes for tests, on free loopback ports, with
//! nothing persisted (`--save '' --appendonly no`).
//!
//! * [`RedisServer::shared`] — the one standalone server of a test process
//!   (one per test binary under `cargo test`, one per test under nextest);
//!   tests keep apart by key prefix. A test that stops its server starts its
//!   own with [`RedisServer::start`].
//! * [`Sentinel`] — a primary, a replica and three sentinels
//!   (`redis-server --sentinel`), ready to fail over.
//! * [`Cluster`] — a Redis Cluster made by `redis-cli --cluster create`.
//! * [`RedisServer::start_tls`] — TLS with a certificate made at test time
//!   ([`TestCerts`]), with or without client certificates.
//!
//! Every process runs under a small `sh` guard that holds a pipe from this
//! process: when the process ends, however it ends, the pipe closes and the
//! guard kills the server, so no test leaves a redis-server behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use srs_proxy::config::RedisConfig;
use srs_proxy::origin::{Origin, OriginSource, Ports};

/// Runs its arguments in the background and kills them (SIGKILL) when its
/// stdin closes.
const GUARD: &str = r#""$@" &
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

/// A redis-server (or sentinel) this process started.
pub struct RedisServer {
    port: u16,
    /// Everything after `redis-server` but the port, to start it again.
    args: Vec<String>,
    running: Mutex<Option<Running>>,
    /// Its working directory: where a replica writes the RDB of its first
    /// sync (never the source tree).
    _dir: tempfile::TempDir,
}

/// A free port below the kernel's ephemeral range. A port from that range
/// (what binding port 0 gives) can, once its server is stopped, become the
/// source port of any outgoing connection on the machine (another test's
/// proxy talking to its own Redis), and a restart on it then fails.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(12000);
    loop {
        let port = 10000 + rand::random::<u16>() % (low - 10000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20000 + rand::random::<u16>() % 20000;
        let both =
            TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok();
        if both {
            return port;
        }
    }
}

fn base_args() -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
    ]
    .map(String::from)
    .to_vec()
}

impl RedisServer {
    /// The server shared by every test of this process.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(RedisServer::start)
    }

    /// Starts a standalone server of its own on a free port.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Starts a server on a free port with extra arguments.
    pub fn start_with(extra: Vec<String>) -> Self {
        Self::start_on(free_port, extra)
    }

    fn start_on(port: fn() -> u16, extra: Vec<String>) -> Self {
        let mut args = base_args();
        args.extend(extra);
        for _ in 0..5 {
            let server = Self::new(port(), args.clone());
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? apt-get install redis-server)");
    }

    /// A server not yet started, working in a directory of its own.
    fn new(port: u16, mut args: Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // After the arguments (a sentinel's config file must come first),
        // unless the caller names a directory of its own.
        if !args.iter().any(|a| a == "--dir") {
            args.extend(["--dir".to_string(), dir.path().display().to_string()]);
        }
        Self {
            port,
            args,
            running: Mutex::new(None),
            _dir: dir,
        }
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
        let mut command = Command::new("sh");
        command
            .args(["-c", GUARD, "redis-guard", "redis-server"])
            .args(&self.args)
            .args(["--port", &self.port.to_string()]);
        let mut guard = command
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

    /// Whether this process still runs the server.
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
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
        command(self.port, args)
    }

    /// Keys matching `pattern` (tests only: the product never lists keys).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.command(&["KEYS", pattern]).expect("redis reachable");
        keys.sort();
        keys
    }

    /// A field of `INFO <section>`, e.g. `("replication", "role")`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        let text = self.command(&["INFO", section])?.concat();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
    }
}

/// One command to the server on `port` (see [`RedisServer::command`]).
pub fn command(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
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

fn read_reply(reader: &mut impl BufRead, out: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    if line.is_empty() {
        return None;
    }
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

/// Waits until `check` holds, for at most `limit`; panics naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An origin for store-level tests, serving HTTP on `ip:http_port`
/// (nothing need listen there: the store never connects).
pub fn store_origin(id: &str, ip: &str, http_port: u16) -> Origin {
    Origin {
        id: id.into(),
        ip: ip.into(),
        ports: Ports {
            http: Some(http_port),
            ..Ports::default()
        },
        source: OriginSource::Static,
        weight: 1,
        max_streams: 0,
        pool: None,
        registered_by: None,
    }
}

/// Store config for `url`, with the tests' short timeout.
fn url_config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig {
        url,
        prefix: prefix.into(),
        timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    }
}

/// Two proxies on `config`'s Redis, each with its own connection, as two
/// replicas of a deployment.
pub async fn proxy_replicas(config: &srs_proxy::config::Config) -> [super::proxy::TestProxy; 2] {
    let mut out = Vec::new();
    for _ in 0..2 {
        let store = srs_proxy::store::RedisStore::connect(&config.redis).await.unwrap();
        out.push(
            super::proxy::TestProxy::start_with_store(config.clone(), srs_proxy::store::Store::Redis(store)).await,
        );
    }
    out.try_into().ok().unwrap()
}

/// The name sentinels monitor the primary under.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// A primary, its replica and three sentinels (quorum 2) on loopback.
pub struct Sentinel {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    /// Sentinels rewrite their config files; they live here.
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts everything and waits until a failover could happen: the
    /// replica is in sync and every sentinel knows the replica and the
    /// other two sentinels.
    pub fn start(down_after: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ]);
        let sentinels = (0..3)
            .map(|i| {
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_SERVICE} {}\n\
                         sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                         sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                        primary.port(),
                        down_after.as_millis()
                    ),
                )
                .unwrap();
                // The config file comes first, then `--sentinel`.
                let mut args = vec![conf.display().to_string(), "--sentinel".into()];
                args.extend(["--bind", "127.0.0.1", "--loglevel", "warning"].map(String::from));
                RedisServer::start_sentinel(args)
            })
            .collect();
        let sentinel = Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        wait_until(Duration::from_secs(20), "the replica to sync", || {
            sentinel.replica.info("replication", "master_link_status").as_deref() == Some("up")
        });
        wait_until(Duration::from_secs(30), "the sentinels to know each other", || {
            sentinel.sentinels.iter().all(|s| {
                let master = sentinel_master(s.port());
                master.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && master.get("num-slaves").map(String::as_str) == Some("1")
            })
        });
        sentinel
    }

    /// `redis-sentinel://` URL naming all three sentinels.
    pub fn url(&self) -> String {
        let ports: Vec<u16> = self.sentinels.iter().map(RedisServer::port).collect();
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    }

    pub fn config(&self, prefix: &str) -> RedisConfig {
        url_config(self.url(), prefix)
    }

    /// The port the sentinels currently name as primary.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = command(s.port(), &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE])?;
            reply.get(1)?.parse().ok()
        })
    }
}

impl RedisServer {
    fn start_sentinel(args: Vec<String>) -> Self {
        for _ in 0..5 {
            let server = Self::new(free_port(), args.clone());
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server --sentinel did not start");
    }
}

/// `SENTINEL MASTER` as field → value.
fn sentinel_master(port: u16) -> std::collections::HashMap<String, String> {
    let reply = command(port, &["SENTINEL", "MASTER", SENTINEL_SERVICE]).unwrap_or_default();
    reply.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
}

/// A Redis Cluster on loopback: `primaries` primaries, each with
/// `replicas` replicas.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    /// Node config files (`nodes-<port>.conf`).
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and
    /// waits until every slot is served and every replica is in sync.
    /// `node_timeout` is how long a primary may be silent before its
    /// replica takes over; `extra` are more arguments for every node.
    pub fn start(primaries: usize, replicas: usize, node_timeout: Duration, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &node_timeout.as_millis().to_string(),
                    "--dir",
                    &dir.path().display().to_string(),
                ]
                .map(String::from)
                .to_vec();
                let mut args = args;
                // Each node its own config file, named after its port below.
                args.push("--cluster-config-file".into());
                args.push(format!("nodes-{}.conf", rand::random::<u64>()));
                args.extend(extra.iter().map(|a| a.to_string()));
                RedisServer::start_on(free_cluster_port, args)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (apt-get install redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        wait_until(Duration::from_secs(30), "the cluster to be ok", || {
            cluster
                .nodes
                .iter()
                .all(|n| n.info_cluster("cluster_state").as_deref() == Some("ok"))
        });
        wait_until(Duration::from_secs(30), "every replica to sync", || {
            cluster.nodes.iter().all(|n| {
                n.info("replication", "role").as_deref() == Some("master")
                    || n.info("replication", "master_link_status").as_deref() == Some("up")
            })
        });
        cluster
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port()));
        }
        url
    }

    pub fn config(&self, prefix: &str) -> RedisConfig {
        url_config(self.url(), prefix)
    }

    /// The node that serves `key`'s slot now, as any live node sees it.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let port = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| {
                let slot: u16 = n.command(&["CLUSTER", "KEYSLOT", key])?.first()?.parse().ok()?;
                let nodes = n.command(&["CLUSTER", "NODES"])?.concat();
                owner_port(&nodes, slot)
            })
            .expect("a live node that knows the slot's owner");
        self.node(port)
    }

    /// The replica of the node on `port`.
    pub fn replica_of(&self, primary: &RedisServer) -> &RedisServer {
        let nodes = primary.command(&["CLUSTER", "NODES"]).unwrap().concat();
        let id = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .to_string();
        let port = nodes
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(id.as_str()))
            .and_then(|l| node_port(l.split(' ').nth(1)?))
            .expect("a replica");
        self.node(port)
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }
}

impl RedisServer {
    fn info_cluster(&self, field: &str) -> Option<String> {
        let text = self.command(&["CLUSTER", "INFO"])?.concat();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
    }
}

/// `127.0.0.1:7000@17000` → 7000.
fn node_port(addr: &str) -> Option<u16> {
    addr.split('@').next()?.rsplit(':').next()?.parse().ok()
}

/// The port of the primary serving `slot` in `CLUSTER NODES` output.
fn owner_port(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.iter().skip(8).any(|range| match range.split_once('-') {
            Some((a, b)) => a.parse().is_ok_and(|a: u16| a <= slot) && b.parse().is_ok_and(|b: u16| slot <= b),
            None => range.parse() == Ok(slot),
        });
        serves.then(|| node_port(fields[1]))?
    })
}

/// A certificate authority and a server and a client certificate signed by
/// it, written as PEM files into a temporary directory.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates the CA and both certificates (for `127.0.0.1` and
    /// `localhost`).
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "srs-proxy test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("redis");
        let (client_cert, client_key) = leaf("srs-proxy");
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            _dir: dir,
        }
    }
}

/// A standalone server that also listens with TLS.
pub struct TlsRedis {
    /// Plain port for the test's own commands; the proxy uses the TLS one.
    pub server: RedisServer,
    pub tls_port: u16,
}

impl RedisServer {
    /// A server with a TLS port using `certs`; `client_certs` makes it
    /// refuse clients without a certificate signed by the test CA.
    pub fn start_tls(certs: &TestCerts, client_certs: bool) -> TlsRedis {
        let tls_port = free_port();
        let path = |p: &Path| p.display().to_string();
        let server = RedisServer::start_with(vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
        ]);
        TlsRedis { server, tls_port }
    }
}
