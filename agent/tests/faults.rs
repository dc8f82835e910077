//! The `nephilia-agent` binary under the faults of a node's life: SIGTERM (everything
//! observed reaches the graph server before it exits), SIGKILL in netlink mode (the next
//! agent removes the filters the dead one left), and no `tc` binary (the agent image has
//! none: the `clsact` qdisc is removed over netlink).
//!
//! Privileged (eBPF, network namespaces): skips outside CI when not root. Run one at a
//! time with the other privileged tests (they share the kernel).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use nephilia_graph_server::{
    api::{AppState, Clock},
    config::HealthThresholds,
    server::serve_grpc,
    store::{Limits, Store},
};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_nephilia-agent");

/// A network namespace made with `ip netns add` that looks like an enrolled pod to the
/// agent (a listener on ztunnel's outbound port, 15001), so `--l7-capture mesh` attaches
/// to its `lo`; deleted on drop.
struct Netns(String, Option<TcpListener>);

impl Netns {
    fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        let file = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        // A socket stays in the namespace it was made in; the thread that made it ends.
        let listener = std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("127.0.0.1:15001").expect("listen on 15001 in the pod")
        })
        .join()
        .unwrap();
        Self(name.to_owned(), Some(listener))
    }

    /// `tc QDISC_OR_FILTER show dev lo [HOOK]` inside the namespace.
    fn tc_show(&self, what: &[&str]) -> String {
        let mut args = vec!["ip", "netns", "exec", &self.0, "tc"];
        args.extend_from_slice(what);
        run(&args)
    }

    fn capture_filters(&self) -> String {
        format!(
            "{}{}",
            self.tc_show(&["filter", "show", "dev", "lo", "egress"]),
            self.tc_show(&["filter", "show", "dev", "lo", "ingress"])
        )
    }

    fn has_clsact(&self) -> bool {
        self.tc_show(&["qdisc", "show", "dev", "lo"])
            .contains("clsact")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.1.take());
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running agent whose JSON log lines arrive on `lines`; killed on drop.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Agent {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(AGENT)
            .args(args)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nephilia-agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value =
                    serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a log line whose message is `message` and returns its fields.
    fn wait_for(&self, message: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line["fields"]["message"] == message => return line["fields"].clone(),
                Ok(Value::String(text)) => eprintln!("agent: {text}"),
                Ok(_) => {}
                Err(_) => panic!("no {message:?} from the agent within {within:?}"),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the agent");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loopback connections with a request and an answer each, closed by both sides.
fn traffic(connections: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(b"pong").unwrap();
        }
    });
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).unwrap();
    }
    server.join().unwrap();
}

#[test]
fn sigterm_delivers_every_observed_record_to_the_graph_server_before_exit() {
    if !nephilia_testbed::privileged(
        "sigterm_delivers_every_observed_record_to_the_graph_server_before_exit",
    ) {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (state, addr) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            retention_ns: 3_600_000_000_000,
            max_memory_bytes: 256 << 20,
        };
        let store = Store::new(
            10_000_000_000,
            HealthThresholds::default(),
            limits,
            1_000_000,
        );
        let state = Arc::new(AppState::new(store, None, Clock::System));
        tokio::spawn(serve_grpc(
            listener,
            Arc::clone(&state),
            None,
            std::future::pending(),
        ));
        (state, addr)
    });
    let server = format!("http://{addr}");
    let mut agent = Agent::start(
        &[
            "run",
            "--server",
            &server,
            "--node-name",
            "faults-node",
            "--l7-capture",
            "off",
        ],
        &[],
    );
    agent.wait_for("programs attached; observing", Duration::from_secs(30));
    // Connections that close right before the signal: their records are still in the
    // ring buffer or the outbox when SIGTERM arrives.
    traffic(200);
    agent.signal(Signal::SIGTERM);
    let stopped = agent.wait_for("stopped; programs detached", Duration::from_secs(30));
    let status = agent.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}");

    let records = stopped["records"].as_u64().unwrap();
    let unsent = stopped["unsent"].as_u64().unwrap();
    assert_eq!(stopped["still_queued"], 0, "{stopped}");
    // Both sockets of each of the test's connections, at least.
    assert!(records >= 400, "{stopped}");
    let store = state.store();
    let stored = store.counters.connections + store.counters.mesh_flows + store.counters.requests;
    assert_eq!(
        stored + unsent,
        records,
        "every record the agent observed reached the server or was counted as unsent: {stopped}"
    );
    assert_eq!(store.agents()["faults-node"].records_received, stored);
    drop(store);
    drop(runtime);
}

#[test]
fn filters_a_sigkilled_agent_left_are_removed_by_the_next_agent() {
    if !nephilia_testbed::privileged("filters_a_sigkilled_agent_left_are_removed_by_the_next_agent")
    {
        return;
    }
    let pod = Netns::create("nephilia-faults-killed");
    let agent = Agent::start(
        &["observe", "--l7-capture", "mesh", "--tc-attach", "netlink"],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pod.capture_filters().contains("l7_capture_egress") {
        assert!(
            Instant::now() < deadline,
            "the agent never attached in {}",
            pod.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(Signal::SIGKILL);
    drop(agent);
    let left = pod.capture_filters();
    assert!(
        left.contains("l7_capture_egress"),
        "SIGKILL leaves the netlink filter: {left}"
    );
    assert!(pod.has_clsact());

    // The next agent, even with the capture off, removes what the dead one left.
    let mut next = Agent::start(&["observe", "--l7-capture", "off", "--duration", "1"], &[]);
    assert!(next.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(pod.capture_filters(), "", "no capture filter is left");
    let removed = next.wait_for(
        "removed an L7 capture filter a previous agent left",
        Duration::from_secs(5),
    );
    assert_eq!(removed["interface"], "lo", "{removed}");
    assert!(!pod.has_clsact(), "the qdisc the dead agent added went too");
}

#[test]
fn netlink_mode_removes_its_clsact_qdisc_without_the_tc_binary() {
    if !nephilia_testbed::privileged("netlink_mode_removes_its_clsact_qdisc_without_the_tc_binary")
    {
        return;
    }
    let pod = Netns::create("nephilia-faults-notc");
    // The agent image has no `tc`: an empty PATH finds none.
    let mut agent = Agent::start(
        &[
            "observe",
            "--l7-capture",
            "mesh",
            "--tc-attach",
            "netlink",
            "--duration",
            "4",
        ],
        &[("PATH", "/nonexistent")],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pod.has_clsact() {
        assert!(
            Instant::now() < deadline,
            "the agent never attached in {}",
            pod.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pod.capture_filters().contains("l7_capture_egress"));
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(pod.capture_filters(), "");
    assert!(
        !pod.has_clsact(),
        "the agent removed the clsact qdisc it added"
    );
}
