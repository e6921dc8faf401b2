//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager (the EndpointSlice controller), built from
//! source by `make kube-bin` (tools/kube/build.sh).
//!
//! * The test binary runs in a network and PID namespace of its own
//!   ([`in_own_namespaces`]). The API server rejects loopback addresses in
//!   EndpointSlices, so Pods get addresses from [`POD_NET`], which is put on
//!   that namespace's `lo`: fake origins listen on those "Pod IPs" and
//!   nothing leaves the machine. When the binary ends, however it ends, the
//!   kernel kills every process of its PID namespace, so no etcd or API
//!   server outlives it.
//! * [`KubeCluster::start`] runs the three servers on loopback with RBAC
//!   authorization, ServiceAccount token issuing (TokenRequest) and an
//!   admin token (group `system:masters`) for the test's own setup; the
//!   proxy gets a ServiceAccount token instead ([`KubeCluster::token_for`]).
//! * [`chart_render`] renders the Helm chart (with the Python helpers in
//!   tests/chart) so tests apply what the chart would install.
//!
//! Anything missing (the binaries, `unshare`, `ip`, the chart's Python
//! environment) is a test failure that names it, never a skip.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::Client;
use serde_json::{json, Value};
use srs_proxy::crd::OriginPool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use tempfile::TempDir;

use super::discovery::WAIT;
use super::origin::FakeOrigin;

/// Pod addresses: a benchmark-testing range (RFC 2544), placed on `lo` of
/// the test's own network namespace.
pub const POD_NET: &str = "198.18.0.0/24";
/// The Service ClusterIP range the API server allocates from (never dialled).
const SERVICE_NET: &str = "198.19.0.0/24";
/// The one Node every test Pod is bound to (there is no kubelet).
pub const NODE: &str = "node-0";
/// Marks the re-executed test binary inside its namespaces.
const INSIDE: &str = "SRS_PROXY_TEST_NAMESPACES";
/// Field manager of everything the tests apply.
pub const MANAGER: &str = "srs-proxy-tests";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `n`th Pod address (n < 240).
pub fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + n)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Runs `main` in a network and PID namespace of its own, with [`POD_NET`]
/// on `lo`: re-executes this binary under `unshare` unless it already runs
/// there. `--list` runs in place (nothing is started for it).
pub fn in_own_namespaces(main: impl FnOnce() -> ExitCode) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os(INSIDE).is_some() || args.iter().any(|a| a == "--list") {
        return main();
    }
    let exe = std::env::current_exe().expect("own executable");
    let unshare = |program: &[&str]| {
        let mut cmd = Command::new("unshare");
        if !is_root() {
            cmd.args(["--user", "--map-root-user"]);
        }
        // The test binary becomes PID 1 of the new PID namespace: when it
        // exits, the kernel kills the control plane with it.
        cmd.args(["--net", "--pid", "--fork", "--kill-child", "--"])
            .args(program);
        cmd
    };
    match unshare(&["true"]).stderr(Stdio::piped()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "cannot create a network and PID namespace for the Kubernetes tests (`unshare --net --pid`): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return ExitCode::from(101);
        }
        Err(e) => {
            eprintln!(
                "cannot run `unshare` ({e}): the Kubernetes tests need util-linux's unshare for a network namespace holding the Pod addresses"
            );
            return ExitCode::from(101);
        }
    }
    let script = format!(
        "ip link set lo up && ip addr add {POD_NET} dev lo || {{ echo 'cannot put {POD_NET} on lo in the tests network namespace: needs iproute2 (ip)' >&2; exit 101; }}\nexec \"$0\" \"$@\""
    );
    let status = unshare(&["sh", "-c", &script])
        .arg(exe)
        .args(&args[1..])
        .env(INSIDE, "1")
        .status();
    match status {
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(101)).unwrap_or(101)),
        Err(e) => {
            eprintln!("cannot run `unshare`: {e}");
            ExitCode::from(101)
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One server process of the control plane.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Self { name, child, log })
    }

    /// Fails with the end of the log when the process has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}):\n{}", self.name, self.log_tail())),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running control plane. Dropping it stops the servers and removes
/// their data.
pub struct KubeCluster {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Certificate bundle the API server's self-signed serving cert chains to.
    pub ca: PathBuf,
    /// Kubeconfig with the admin token: for test setup only.
    pub admin_kubeconfig: PathBuf,
    /// Where the binaries came from (for messages).
    pub bin_dir: PathBuf,
    // Stopped in reverse start order: the controller manager, the API
    // server, then etcd.
    servers: Mutex<Vec<Server>>,
    dir: TempDir,
}

impl KubeCluster {
    /// Stops every server and removes their data (also done on drop; a
    /// cluster in a `static` is never dropped).
    pub fn stop(&self) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(server) = servers.pop() {
            drop(server);
        }
        let _ = std::fs::remove_dir_all(self.dir.path());
    }

    fn check_alive(&self) -> Result<(), String> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.iter_mut().try_for_each(Server::check_alive)
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory `make kube-bin` builds into, checked to hold all three
/// binaries.
pub fn bin_dir() -> Result<PathBuf, String> {
    let script = repo().join("tools/kube/build.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg("--dir")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --dir failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let missing: Vec<&str> = ["etcd", "kube-apiserver", "kube-controller-manager"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "{} missing from {}: build the control plane with `make kube-bin` (needs Go and the Go module proxy; `make test` does it first)",
            missing.join(", "),
            dir.display()
        ))
    }
}

impl KubeCluster {
    /// Starts etcd, the API server and the controller manager and waits
    /// until the API server is ready and its bootstrap RBAC exists. Blocks;
    /// call it outside any async runtime.
    pub fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("srs-proxy-kube-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let admin_token = format!("admin-{:016x}", rand::random::<u64>());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )
        .map_err(|e| e.to_string())?;
        write_signing_key(&d.join("sa.key"))?;

        let etcd_client = free_port();
        let etcd_peer = free_port();
        let api_port = free_port();
        let mut servers = Vec::new();

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        servers.push(Server::spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Test data: durability buys nothing and costs fsyncs.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            d,
        )?);

        let sa_key = d.join("sa.key").display().to_string();
        let certs = d.join("certs");
        servers.push(Server::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", certs.display()),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={sa_key}"),
                format!("--service-account-signing-key-file={sa_key}"),
                format!("--service-cluster-ip-range={SERVICE_NET}"),
                // The "kubernetes" Service's endpoints would be 127.0.0.1,
                // which the API server itself refuses in Endpoints.
                "--endpoint-reconciler-type=none".into(),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
            d,
        )?);

        let server = format!("https://127.0.0.1:{api_port}");
        let ca = certs.join("apiserver.crt");
        let admin_kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, &server, &ca, &admin_token, "default")?;

        let cluster = Self {
            server,
            ca,
            admin_kubeconfig,
            bin_dir: bin,
            servers: Mutex::new(servers),
            dir,
        };
        cluster.wait_ready()?;

        let kcm = Server::spawn(
            "kube-controller-manager",
            &cluster.bin_dir.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", cluster.admin_kubeconfig.display()),
                // Only what a cluster needs for Services to get slices.
                "--controllers=endpointslice".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=0".into(),
            ],
            cluster.dir.path(),
        )?;
        cluster.servers.lock().unwrap().push(kcm);
        // Give it a moment to fail on a bad flag, so the message is its own.
        std::thread::sleep(Duration::from_millis(300));
        cluster.check_alive()?;
        Ok(cluster)
    }

    /// Polls `/readyz` and the bootstrap ClusterRoles with the admin token.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            if self.ca.exists() {
                let ready = rt.block_on(async {
                    let client = client_from(&self.admin_kubeconfig).await?;
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    let text = client.request_text(req).await.map_err(|e| e.to_string())?;
                    if text.trim() != "ok" {
                        return Err(format!("/readyz: {text}"));
                    }
                    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client);
                    roles.get("system:basic-user").await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                });
                match ready {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let logs: String = self
            .servers
            .lock()
            .unwrap()
            .iter()
            .map(|s| format!("--- {} ---\n{}\n", s.name, s.log_tail()))
            .collect();
        Err(format!("kube-apiserver not ready after 120 s ({last}):\n{logs}"))
    }

    /// A client with the admin token, for test setup.
    pub async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig).await.expect("admin client")
    }

    /// Issues a token for a ServiceAccount (TokenRequest, as the kubelet
    /// would for a Pod) and writes a kubeconfig holding it, defaulting to
    /// the account's namespace.
    pub async fn token_for(&self, namespace: &str, service_account: &str, dir: &Path) -> PathBuf {
        let admin = self.admin().await;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin, namespace);
        let request: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        }))
        .unwrap();
        let issued = accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"));
        let token = issued.status.expect("issued token").token;
        let path = dir.join(format!("{service_account}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.ca, &token, namespace).unwrap();
        path
    }

    /// The end of a server's log (for failure messages).
    pub fn log_tail(&self, name: &str) -> String {
        self.servers
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name)
            .map(Server::log_tail)
            .unwrap_or_default()
    }
}

/// A client from a kubeconfig file, built the way the proxy builds its own.
pub async fn client_from(path: &Path) -> Result<Client, String> {
    let file = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str, namespace: &str) -> Result<(), String> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: {token}\n",
        ca.display()
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// An ECDSA P-256 key for signing ServiceAccount tokens, as a PEM file
/// holding the private key (PKCS#8, for signing) and the public key
/// (SubjectPublicKeyInfo, for verifying): the API server reads both flags
/// from the one file.
fn write_signing_key(path: &Path) -> Result<(), String> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|e| e.to_string())?;
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the point.
    const SPKI_P256: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut spki = SPKI_P256.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = pem("PRIVATE KEY", pkcs8.as_ref()) + &pem("PUBLIC KEY", &spki);
    std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// The chart rendered with one of tests/chart/values/*.yaml, as objects.
pub fn chart_render(value_set: &str, release: &str, namespace: &str) -> Vec<Value> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the chart is rendered with Helm's Go SDK from the chart's Python environment; create it with `make chart-venv`",
        python.display()
    );
    let out = Command::new(&python)
        .arg(repo().join("tests/chart/render_json.py"))
        .args([value_set, release, namespace])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the chart renderer");
    assert!(
        out.status.success(),
        "rendering the chart ({value_set}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("renderer prints JSON")
}

/// Every YAML document of a file, in order.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

/// The API of any object, found through the server's discovery.
pub struct Objects {
    client: Client,
    discovery: Discovery,
}

impl Objects {
    pub async fn new(client: Client) -> Self {
        let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
        Self { client, discovery }
    }

    fn resource(&self, object: &Value) -> Option<(ApiResource, ApiCapabilities)> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        self.discovery.resolve_gvk(&gvk)
    }

    /// Whether the server serves this object's kind.
    pub fn serves(&self, object: &Value) -> bool {
        self.resource(object).is_some()
    }

    fn api(&self, object: &Value) -> Api<DynamicObject> {
        let (resource, caps) = self
            .resource(object)
            .unwrap_or_else(|| panic!("the server does not serve {} {}", object["apiVersion"], object["kind"]));
        match (caps.scope, object["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &resource),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Server-side apply; with `dry_run` the server validates and admits
    /// the object (schema, defaults, admission) without storing it.
    pub async fn apply(&self, object: &Value, dry_run: bool) -> Result<DynamicObject, kube::Error> {
        let name = object["metadata"]["name"].as_str().expect("metadata.name");
        let mut params = PatchParams::apply(MANAGER).force();
        params.dry_run = dry_run;
        self.api(object).patch(name, &params, &Patch::Apply(object)).await
    }
}

/// A namespace of one test, with the admin client for its setup.
pub struct TestNamespace {
    pub name: String,
    pub admin: Client,
    cluster: &'static KubeCluster,
    /// Kubeconfigs written for it.
    dir: TempDir,
}

impl TestNamespace {
    /// Creates the namespace and its "default" ServiceAccount, which Pods
    /// run as (the ServiceAccount controller that would create it does not
    /// run).
    pub async fn create(cluster: &'static KubeCluster, name: &str) -> Self {
        let admin = cluster.admin().await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), name);
        let default = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        accounts
            .create(&PostParams::default(), &default)
            .await
            .expect("default ServiceAccount");
        Self {
            name: name.to_string(),
            admin,
            cluster,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.name)
    }

    /// Installs the proxy's ServiceAccount, Role and RoleBinding as the
    /// chart renders them with `value_set` in this namespace; returns a
    /// kubeconfig holding a token of that ServiceAccount.
    pub async fn install_chart_rbac(&self, value_set: &str) -> PathBuf {
        let objects = Objects::new(self.admin.clone()).await;
        let rendered = chart_render(value_set, "srs-proxy", &self.name);
        let mut account = None;
        for kind in ["ServiceAccount", "Role", "RoleBinding"] {
            for object in rendered.iter().filter(|o| o["kind"] == kind) {
                objects
                    .apply(object, false)
                    .await
                    .unwrap_or_else(|e| panic!("chart {kind} rejected: {e}"));
                if kind == "ServiceAccount" {
                    account = object["metadata"]["name"].as_str().map(String::from);
                }
            }
        }
        let account = account.expect("the chart renders a ServiceAccount");
        self.cluster.token_for(&self.name, &account, self.dir.path()).await
    }

    /// A Service selecting Pods labelled `app: <name>`, with the named ports
    /// discovery maps; only http has something listening behind it.
    pub async fn service(&self, name: &str, http_port: u16) {
        let service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [
                    {"name": "rtmp", "port": 1935, "targetPort": 1935},
                    {"name": "http", "port": 8080, "targetPort": http_port},
                    {"name": "api", "port": 1985, "targetPort": 1985},
                ],
            },
        }))
        .unwrap();
        self.api::<Service>()
            .create(&PostParams::default(), &service)
            .await
            .expect("Service");
    }

    /// A Pod of `service` bound to the test Node, running at `origin`'s
    /// address, ready or not.
    pub async fn pod(&self, service: &str, origin: &FakeOrigin, ready: bool) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": origin.name, "labels": {"app": service}},
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": false,
                "containers": [{"name": "srs", "image": "ossrs/srs:7"}],
            },
        }))
        .unwrap();
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .expect("Pod");
        let ip = origin.addr.ip().to_string();
        self.pod_status(
            &origin.name,
            json!({"phase": "Running", "hostIP": "198.18.0.1", "podIP": ip, "podIPs": [{"ip": ip}]}),
        )
        .await;
        self.set_ready(&origin.name, ready).await;
    }

    /// A Service and one Pod per entry of `ready` (ready or not), each
    /// with a fake origin on its address; the origins are named like the
    /// Pods (`srs-0`, `srs-1`, …).
    pub async fn service_with_pods(&self, service: &str, ready: &[bool]) -> Vec<FakeOrigin> {
        let origins = pods(ready.len()).await;
        self.service(service, origins[0].addr.port()).await;
        for (origin, ready) in origins.iter().zip(ready) {
            self.pod(service, origin, *ready).await;
        }
        origins
    }

    /// Sets the Pod's Ready condition, as the kubelet would after a probe.
    pub async fn set_ready(&self, pod: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        self.pod_status(
            pod,
            json!({"conditions": [
                {"type": "Ready", "status": status},
                {"type": "ContainersReady", "status": status},
            ]}),
        )
        .await;
    }

    pub async fn pod_status(&self, pod: &str, status: Value) {
        self.api::<Pod>()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .unwrap_or_else(|e| panic!("status of Pod {pod}: {e}"));
    }

    pub async fn pool(&self, name: &str, spec: Value) {
        let pools: Api<OriginPool> = self.api();
        let pool = json!({"apiVersion": "srsproxy.io/v1alpha1", "kind": "OriginPool", "metadata": {"name": name}, "spec": spec});
        pools
            .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&pool))
            .await
            .unwrap_or_else(|e| panic!("OriginPool {name}: {e}"));
    }

    /// Waits for the status of pool `name` to pass `check`.
    pub async fn pool_status(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let pools: Api<OriginPool> = self.api();
        let found = super::eventually(WAIT, || async {
            let pool = pools.get(name).await.ok()?;
            let status = serde_json::to_value(pool.status?).ok()?;
            check(&status).then_some(status)
        })
        .await;
        match found {
            Some(status) => status,
            None => panic!(
                "status never matched; last: {:?}",
                pools.get(name).await.map(|p| p.status)
            ),
        }
    }
}

/// Fake origins named like pods on Pod addresses no other test uses,
/// sharing one port as the pods of one Service do.
pub async fn pods(n: usize) -> Vec<FakeOrigin> {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let first = NEXT.fetch_add(u8::try_from(n).unwrap(), Ordering::SeqCst);
    assert!(first < 200, "out of Pod addresses");
    let mut all = vec![FakeOrigin::start_on(SocketAddr::new(pod_ip(first).into(), 0), "srs-0").await];
    let port = all[0].addr.port();
    for i in 1..n {
        let addr = SocketAddr::new(pod_ip(first + u8::try_from(i).unwrap()).into(), port);
        all.push(FakeOrigin::start_on(addr, &format!("srs-{i}")).await);
    }
    all
}
