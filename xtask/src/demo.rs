//! `cargo xtask demo`: the local ambient mesh of `testbed/scenarios/demo.yaml` with live
//! traffic and a scheduled outage, the agent observing it and the graph server showing it.
//! Runs until Ctrl-C (or `--duration`), then stops everything in order and removes the
//! mesh.

use std::{
    path::Path,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_command, step, workspace_root};

const PREFIX: &str = "demo";
const HTTP_ADDR: &str = "127.0.0.1:9696";
const GRPC_ADDR: &str = "127.0.0.1:9697";

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    fn start(name: &'static str, command: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        // Its own process group: Ctrl-C reaches only this task, which stops the children
        // in order.
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name, child })
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        eprintln!("    stopped {}", self.name);
    }
}

/// Waits until the agent's first heartbeat reached the server (its programs are attached).
fn wait_for_agent() -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(HTTP_ADDR) {
            let request = format!(
                "GET /api/v1/agents HTTP/1.1\r\nhost: {HTTP_ADDR}\r\nconnection: close\r\n\r\n"
            );
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.contains("demo-host")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("the agent did not report to the server within a minute (see its log above)")
}

pub fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    let root = workspace_root();
    step("building the agent, the graph server (with its web UI) and the testbed");
    run_command(cargo().args([
        "build",
        "--release",
        "--package",
        "nephilia-agent",
        "--package",
        "nephilia-graph-server",
        "--package",
        "nephilia-testbed",
    ]))?;
    let bin = |name: &str| root.join("target/release").join(name);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }

    step("removing what an earlier demo may have left");
    let _ = Command::new(bin("nephilia-testbed"))
        .args(["down", "--prefix", PREFIX])
        .status();

    step("starting the graph server");
    let server = Running::start(
        "nephilia-server",
        Command::new(bin("nephilia-server")).args([
            "--http-addr",
            HTTP_ADDR,
            "--grpc-addr",
            GRPC_ADDR,
        ]),
    )?;

    // The agent starts before the mesh, so it sees every connection from the first one
    // (pooled HBONE connections included); it loads the mesh's metadata file once the
    // testbed writes it.
    let metadata = format!("/run/nephilia-testbed/{PREFIX}-metadata.yaml");
    let _ = std::fs::remove_file(&metadata);
    step("starting the agent");
    let agent = Running::start(
        "nephilia-agent",
        Command::new(bin("nephilia-agent")).args([
            "run",
            "--server",
            &format!("http://{GRPC_ADDR}"),
            "--metadata",
            &format!("static:{metadata}"),
            "--node-name",
            "demo-host",
        ]),
    )?;
    wait_for_agent()?;

    step("bringing up the ambient mesh (testbed/scenarios/demo.yaml)");
    let mut testbed = Running::start(
        "nephilia-testbed",
        Command::new(bin("nephilia-testbed")).args([
            "up",
            "--scenario",
            &root
                .join("testbed/scenarios/demo.yaml")
                .display()
                .to_string(),
            "--prefix",
            PREFIX,
            "--metadata",
            &metadata,
            // The agent attaches its L7 capture to new pods within its 3 s rescan: a gRPC
            // channel opened before that could not be decoded (its HPACK state is missed).
            "--start-after",
            "5s",
        ]),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&metadata).exists() {
        if testbed.exited() || Instant::now() > deadline {
            bail!("the testbed did not come up (see its log above)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    eprintln!(
        "\n\x1b[1mNephilia UI: http://{HTTP_ADDR}/\x1b[0m\n\
         Traffic starts in 5 s; then payments stops at 60 s for 30 s (an outage), and\n\
         inventory fails 30 % of its requests from 120 s for 30 s (another). Ctrl-C stops\n\
         the demo.\n"
    );
    let started = Instant::now();
    let mut children = [agent, testbed, server];
    while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| started.elapsed() < d) {
        if let Some(dead) = children
            .iter_mut()
            .find_map(|c| c.exited().then_some(c.name))
        {
            eprintln!("{dead} exited; stopping the demo");
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    step("stopping the agent, the testbed and the server");
    // Dropped in order: agent, testbed (removes its namespaces), server.
    drop(children);
    let _ = Command::new(bin("nephilia-testbed"))
        .args(["down", "--prefix", PREFIX])
        .status();
    step("demo stopped; nothing left behind");
    Ok(())
}
