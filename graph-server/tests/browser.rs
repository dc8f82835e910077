//! The web UI in headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `ui/node_modules`, see `ui/tests/browser.mjs`) against a real `nephilia-server` fed
//! over its gRPC ingest with a small shop (`browser/shop.rs`). Screenshots of every view
//! land in `target/artifacts/ui/`.
//!
//! Skips with a reason when Chromium is absent, unless `CI` is set.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nephilia_proto::IngestClient;
use nephilia_proto::v1::{AgentMessage, Heartbeat};
use serde_json::{Value, json};

#[path = "browser/shop.rs"]
mod shop;

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "ui-test-token";

/// Kills the server when the test ends, however it ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// A minimal HTTP/1.1 GET (the server speaks plain HTTP on loopback).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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

fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn workspace_target() -> PathBuf {
    // CARGO_TARGET_DIR when set, else <workspace>/target.
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[test]
fn ui_shows_topology_side_panel_outage_and_trace() {
    let ci = std::env::var_os("CI").is_some();
    if !Path::new(CHROMIUM).exists() {
        assert!(
            !ci,
            "{CHROMIUM} is missing and CI is set: install Debian's chromium package"
        );
        eprintln!(
            "skipping: {CHROMIUM} is missing (apt-get install chromium); set CI to make this a failure"
        );
        return;
    }
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    assert!(
        ui.join("node_modules/playwright-core").exists(),
        "ui/node_modules/playwright-core is missing: build.rs runs `npm ci` in graph-server/ui"
    );
    let started = Instant::now();

    let http = free_port();
    let grpc = free_port();
    let _server = ServerProcess(
        Command::new(env!("CARGO_BIN_EXE_nephilia-server"))
            .args([
                "--http-addr",
                &http.to_string(),
                "--grpc-addr",
                &grpc.to_string(),
            ])
            .env("NEPHILIA_API_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start nephilia-server"),
    );
    wait_until("the server to be ready", Duration::from_secs(15), || {
        http_get(http, "/readyz").filter(|(status, _)| *status == 200)
    });

    // Feed the shop over the real gRPC ingest, one stream per node as agents do.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let shop = shop::shop(now);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (node, records) in shop.batches {
            let mut client = IngestClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect to ingest");
            let count = records.len();
            let messages = vec![
                AgentMessage::heartbeat(Heartbeat {
                    node: node.into(),
                    agent_version: "0.1.0".into(),
                    kernel_release: "6.12.0".into(),
                    ..Heartbeat::current()
                }),
                AgentMessage::batch(node, 1, records),
            ];
            let summary = client
                .report(tokio_stream::iter(messages))
                .await
                .unwrap_or_else(|status| panic!("{node}: ingest refused the batch: {status}"))
                .into_inner();
            eprintln!("fed {count} records from {node}: {summary:?}");
        }
    });

    // The outage is judged 2 s after its buckets end: wait until it is closed with a cause.
    let outage = wait_until("the payments outage", Duration::from_secs(20), || {
        let (_, body) = http_get(http, "/api/v1/outages?since=15m")?;
        let doc: Value = serde_json::from_str(&body).ok()?;
        doc["outages"]
            .as_array()?
            .iter()
            .find(|o| o["open"] == false && o["root_cause"]["node"] == "workload:shop:payments")
            .cloned()
    });
    eprintln!("outage: {outage}");

    let nodes = [
        shop::CATALOG.id(),
        shop::CHECKOUT.id(),
        shop::FRONTEND.id(),
        shop::INVENTORY.id(),
        shop::PAYMENTS.id(),
        shop::GATEWAY.id(),
        shop::LEDGER.id(),
        format!("external:{}", shop::CARD_NETWORK),
    ];
    let edge = |a: &shop::Workload, b: String| format!("{}->{b}", a.id());
    let edges = [
        edge(&shop::FRONTEND, shop::CHECKOUT.id()),
        edge(&shop::FRONTEND, shop::CATALOG.id()),
        edge(&shop::CHECKOUT, shop::INVENTORY.id()),
        edge(&shop::CHECKOUT, shop::PAYMENTS.id()),
        edge(&shop::PAYMENTS, shop::GATEWAY.id()),
        edge(&shop::GATEWAY, shop::LEDGER.id()),
        edge(&shop::GATEWAY, format!("external:{}", shop::CARD_NETWORK)),
    ];
    let artifacts = workspace_target().join("artifacts/ui");
    std::fs::create_dir_all(&artifacts).expect("create target/artifacts/ui");
    let profile = tempdir("nephilia-chromium");
    let expect = json!({
        "nodes": nodes,
        "edges": edges,
        "clicked_edge": { "source": shop::FRONTEND.id(), "target": shop::CHECKOUT.id() },
        // 480 checkouts, the 120 made while payments was down answered 503.
        "requests": shop::CHECKOUTS.to_string(),
        "error_rate": format!("{} %", shop::FAILED_CHECKOUTS * 100 / shop::CHECKOUTS),
        "root_cause": "workload:shop:payments",
        "trace_service": "frontend",
        "trace_operation": "POST /api/checkout",
    });
    let output = Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(&ui)
        .env("NEPHILIA_URL", format!("http://{http}"))
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
    for view in [
        "topology",
        "edge-panel",
        "outage",
        "outage-in-topology",
        "trace",
    ] {
        let shot = artifacts.join(format!("{view}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 10_000),
            "{} missing or empty",
            shot.display()
        );
    }
    eprintln!("browser test took {:?}", started.elapsed());
}

fn tempdir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a Chromium profile directory");
    dir
}
