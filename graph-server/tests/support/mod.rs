//! What the tests that run a real `nephilia-server` share: the server process, an
//! in-process gRPC ingest server, a small HTTP client for its API, waiting, the browser
//! driver (`ui/tests/browser.mjs`), test certificates and temporary directories.
#![allow(dead_code, reason = "each test binary uses its own part")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const TOKEN: &str = "test-token";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `nephilia-server` on two ephemeral loopback ports with an API token; killed when the
/// test ends, however it ends.
pub struct ServerProcess {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

impl ServerProcess {
    /// Starts the server with `extra` flags and waits until it is ready.
    pub fn start(extra: &[&str]) -> Self {
        let http = free_port();
        let grpc = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_nephilia-server"))
            .args(["--http-addr", &http.to_string()])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(extra)
            .env("NEPHILIA_API_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start nephilia-server");
        let server = Self { child, http, grpc };
        let api = server.api();
        wait_until("the server to be ready", Duration::from_secs(15), || {
            api.get("/readyz").filter(|(status, _)| *status == 200)
        });
        server
    }

    pub fn api(&self) -> Api {
        Api(self.http)
    }

    /// `(VmRSS, VmHWM)` of the server process in bytes: its resident memory now and at
    /// its peak.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing from /proc status"));
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unreadable {line:?}"));
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's HTTP API with the bearer token.
#[derive(Clone, Copy)]
pub struct Api(pub SocketAddr);

impl Api {
    /// A minimal HTTP/1.1 GET (the server speaks plain HTTP on loopback): status and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.0;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// The JSON body of a 200 answer.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let (status, body) = self.get(path)?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// Polls `check` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn workspace_target() -> PathBuf {
    // CARGO_TARGET_DIR when set, else <workspace>/target.
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Whether Chromium is here; in CI (`CI` set) its absence fails the test.
pub fn chromium_present() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing and CI is set: install Debian's chromium package"
    );
    eprintln!(
        "skipping: {CHROMIUM} is missing (apt-get install chromium); set CI to make this a failure"
    );
    false
}

/// Runs `ui/tests/browser.mjs` in headless Chromium against the server at `api` with the
/// expectations `expect`; screenshots of `views` must land in `target/artifacts/<name>/`.
pub fn run_browser(name: &str, api: Api, expect: &Value, views: &[&str]) {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    assert!(
        ui.join("node_modules/playwright-core").exists(),
        "ui/node_modules/playwright-core is missing: build.rs runs `npm ci` in graph-server/ui"
    );
    let started = Instant::now();
    let artifacts = workspace_target().join("artifacts").join(name);
    std::fs::create_dir_all(&artifacts).expect("create the artifacts directory");
    let profile = std::env::temp_dir().join(format!(
        "nephilia-chromium-{}-{}",
        std::process::id(),
        now_ns()
    ));
    std::fs::create_dir_all(&profile).expect("create a Chromium profile directory");
    let output = Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(&ui)
        .env("NEPHILIA_URL", format!("http://{}", api.0))
        .env("NEPHILIA_TOKEN", TOKEN)
        .env("CHROMIUM", CHROMIUM)
        .env("ARTIFACTS", &artifacts)
        .env("USER_DATA_DIR", &profile)
        .env("EXPECT", expect.to_string())
        .output()
        .expect("run node (Node.js 20+ is needed for the browser test)");
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for view in views {
        let shot = artifacts.join(format!("{view}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 10_000),
            "{} missing or empty",
            shot.display()
        );
    }
    eprintln!(
        "browser test took {:?}; screenshots in {}",
        started.elapsed(),
        artifacts.display()
    );
}

/// A CA and a leaf it signed, PEM.
pub struct Pki {
    pub ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Self { ca }
    }

    /// (certificate, key) for `localhost`.
    pub fn leaf(&self) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A fresh directory under the system's temporary one, removed when the test ends.
pub fn tempdir(name: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&path).expect("create a temporary directory");
    TempDir(path)
}

pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The graph server's gRPC ingest in this process on a loopback port, its clock standing
/// at `now_ns` (so the records a test makes lie inside the window the store accepts).
/// Stops when dropped.
pub struct IngestServer {
    pub state: std::sync::Arc<nephilia_graph_server::api::AppState>,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for IngestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server state with a one-hour retention, 10 s buckets and a fixed clock at `now_ns`.
pub fn state_at(now_ns: u64) -> std::sync::Arc<nephilia_graph_server::api::AppState> {
    use nephilia_graph_server::{api, config, store};
    let limits = store::Limits {
        retention_ns: 3_600_000_000_000,
        max_memory_bytes: 64 << 20,
    };
    let store = store::Store::new(
        10_000_000_000,
        config::HealthThresholds::default(),
        limits,
        1000,
    );
    std::sync::Arc::new(api::AppState::new(store, None, api::Clock::Fixed(now_ns)))
}

pub async fn ingest_server_at(now_ns: u64) -> IngestServer {
    let state = state_at(now_ns);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(nephilia_graph_server::server::serve_grpc(
        listener,
        state.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    IngestServer {
        state,
        url,
        stop: Some(stop),
    }
}

/// A peer in namespace `shop` (no namespace when `workload` is empty: a bare IP).
pub fn peer(workload: &str, ip: &str) -> Option<nephilia_proto::v1::Peer> {
    Some(nephilia_proto::v1::Peer {
        workload: workload.into(),
        namespace: if workload.is_empty() { "" } else { "shop" }.into(),
        ip: ip.into(),
        ..nephilia_proto::v1::Peer::default()
    })
}
