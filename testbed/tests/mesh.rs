//! Privileged end-to-end tests of the testbed: real namespaces, real iptables rules, real
//! mTLS HBONE between two proxies. Run as root, one at a time:
//! `cargo test -p nephilia-testbed -- --test-threads=1`.
//!
//! Every mesh gets a random prefix and is torn down by its `Mesh` guard, also when an
//! assertion fails. Traffic goes only to addresses inside the namespaces a test made.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use nephilia_testbed::metadata::LocalConfig;
use nephilia_testbed::netns::Netns;
use nephilia_testbed::proxy::{Direction, FlowPath};
use nephilia_testbed::scenario::Principal;
use nephilia_testbed::{CallOutcome, Fault, Mesh, Protocol, Scenario, TunnelEvent, UpOptions};

/// Two nodes; on node-a an enrolled client, a client that is not enrolled and a front
/// service that fans out; on node-b an enrolled HTTP server, a slow one, a gRPC server
/// and an HTTP server that is not enrolled.
const SCENARIO: &str = r#"
name: test
nodes:
  - { name: node-a, ip: 10.200.0.1 }
  - { name: node-b, ip: 10.200.0.2 }
pods:
  - { name: client, namespace: shop, serviceAccount: client, ip: 10.244.1.10, node: node-a }
  - { name: plain, namespace: shop, serviceAccount: plain, ip: 10.244.1.11, node: node-a, enrolled: false }
  - name: server
    namespace: shop
    serviceAccount: server
    ip: 10.244.2.20
    node: node-b
    app: { protocol: http, port: 8080 }
  - name: front
    namespace: shop
    serviceAccount: front
    ip: 10.244.1.12
    node: node-a
    app:
      protocol: http
      port: 8080
      propagateTrace: true
      calls:
        - { to: "server.shop.svc.cluster.local:80", protocol: http }
        - { to: "grpc.bank.svc.cluster.local:9090", protocol: grpc }
  - name: slow
    namespace: shop
    serviceAccount: slow
    ip: 10.244.2.21
    node: node-b
    app: { protocol: http, port: 8080, latency: { baseMs: 3000 } }
  - name: grpc
    namespace: bank
    serviceAccount: grpc
    ip: 10.244.2.22
    node: node-b
    app: { protocol: grpc, port: 9090 }
  - name: legacy
    namespace: shop
    serviceAccount: legacy
    ip: 10.244.2.30
    node: node-b
    enrolled: false
    app: { protocol: http, port: 8080 }
services:
  - { name: front, namespace: shop, vip: 10.96.0.12, selector: front, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: server, namespace: shop, vip: 10.96.0.20, selector: server, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: slow, namespace: shop, vip: 10.96.0.21, selector: slow, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: grpc, namespace: bank, vip: 10.96.0.22, selector: grpc, ports: [{ port: 9090, targetPort: 9090 }] }
  - { name: legacy, namespace: shop, vip: 10.96.0.30, selector: legacy, ports: [{ port: 80, targetPort: 8080 }] }
"#;

const CLIENT_IP: &str = "10.244.1.10";
const PLAIN_IP: &str = "10.244.1.11";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

fn up() -> Mesh {
    let scenario = Scenario::from_yaml(SCENARIO).expect("test scenario");
    Mesh::up(scenario, UpOptions::unique()).expect("mesh comes up")
}

/// What a hand-written HTTP/1.1 exchange returned.
#[derive(Debug)]
struct Exchange {
    /// Status code, if a response arrived.
    status: Option<u16>,
    body: String,
    /// Bytes received in total (0 when the connection closed without a response).
    received: usize,
    /// The read error that ended the exchange, if any (e.g. a reset).
    error: Option<ErrorKind>,
}

/// Sends one GET from inside `pod` and reads until the server closes.
fn get(mesh: &Mesh, pod: &str, to: &str) -> Exchange {
    let mut stream = mesh
        .connect(pod, addr(to), Duration::from_secs(5))
        .expect("connect from pod");
    send_get(&mut stream);
    read_exchange(&mut stream)
}

fn send_get(stream: &mut std::net::TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send request");
}

fn read_exchange(stream: &mut std::net::TcpStream) -> Exchange {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut bytes = Vec::new();
    let mut error = None;
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) => {
                error = Some(e.kind());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Exchange {
        status,
        body,
        received: bytes.len(),
        error,
    }
}

/// The `peer` the demo app reported in its JSON answer.
fn peer_ip(exchange: &Exchange) -> IpAddr {
    let answer: serde_json::Value = serde_json::from_str(&exchange.body)
        .unwrap_or_else(|e| panic!("JSON answer, got {:?}: {e}", exchange.body));
    let peer: SocketAddr = answer["peer"]
        .as_str()
        .expect("peer field")
        .parse()
        .expect("peer address");
    peer.ip()
}

fn events(mesh: &Mesh, pod: &str, direction: Direction) -> Vec<TunnelEvent> {
    mesh.tunnel_events()
        .into_iter()
        .filter(|event| event.pod == pod && event.direction == direction)
        .collect()
}

/// `ss` lines of established sockets matching `filter`, inside a pod.
fn sockets(mesh: &Mesh, pod: &str, filter: &str) -> Vec<String> {
    let output = mesh
        .command(pod, "ss")
        .expect("pod exists")
        .args(["-Htne", "state", "established", filter])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until `check` holds, for events recorded just after a response.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hbone_request_crosses_two_proxies_and_app_sees_client_address() {
    if !nephilia_testbed::privileged(
        "hbone_request_crosses_two_proxies_and_app_sees_client_address",
    ) {
        return;
    }
    let mesh = up();
    let exchange = get(&mesh, "client", "10.96.0.20:80");
    assert_eq!(exchange.status, Some(200), "{exchange:?}");
    // The app's TCP peer is the client pod, not a proxy address.
    assert_eq!(peer_ip(&exchange), CLIENT_IP.parse::<IpAddr>().unwrap());

    let outbound = events(&mesh, "client", Direction::Outbound);
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(outbound[0].path, FlowPath::Hbone);
    assert_eq!(outbound[0].status, 200);
    assert_eq!(outbound[0].target, addr("10.244.2.20:8080"));
    assert_eq!(outbound[0].source_identity.as_deref(), Some(CLIENT_ID));
    assert_eq!(outbound[0].destination_identity.as_deref(), Some(SERVER_ID));
    assert_eq!(outbound[0].node, "node-a");
    let inbound = events(&mesh, "server", Direction::Inbound);
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(inbound[0].status, 200);
    assert_eq!(inbound[0].node, "node-b");
    // The identity came from the client's certificate over mTLS.
    assert_eq!(inbound[0].source_identity.as_deref(), Some(CLIENT_ID));

    let a = mesh.proxy_stats("node-a").expect("node-a proxy");
    let b = mesh.proxy_stats("node-b").expect("node-b proxy");
    assert_eq!((a.hbone_connections_dialed, a.connect_streams_sent), (1, 1));
    assert_eq!(
        (b.hbone_connections_accepted, b.connect_streams_received),
        (1, 1)
    );

    // The tunnel is TCP from the client pod to the server pod's 15008, marked 0x539.
    let tunnel = sockets(&mesh, "client", "dst 10.244.2.20:15008");
    assert_eq!(tunnel.len(), 1, "{tunnel:?}");
    assert!(tunnel[0].contains("fwmark:0x539"), "{tunnel:?}");

    // The metadata file describes the mesh in ztunnel's shape.
    let text = std::fs::read_to_string(mesh.metadata_path()).expect("metadata written");
    let metadata: LocalConfig = serde_yaml_ng::from_str(&text).expect("metadata parses");
    assert_eq!(metadata.workloads.len(), 7);
    assert_eq!(metadata.services.len(), 5);
    let legacy = metadata
        .workloads
        .iter()
        .find(|w| w.name == "legacy")
        .unwrap();
    assert_eq!(legacy.protocol, "TCP");
    let server = metadata
        .workloads
        .iter()
        .find(|w| w.name == "server")
        .unwrap();
    assert_eq!(server.protocol, "HBONE");
    assert_eq!(server.workload_ips, vec!["10.244.2.20".to_owned()]);
}

#[test]
fn concurrent_connections_share_one_hbone_connection() {
    if !nephilia_testbed::privileged("concurrent_connections_share_one_hbone_connection") {
        return;
    }
    const CONNECTIONS: usize = 8;
    let mesh = up();
    let mut streams: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            mesh.connect("client", addr("10.96.0.20:80"), Duration::from_secs(5))
                .expect("connect")
        })
        .collect();
    // All requests are in flight before any answer is read.
    streams.iter_mut().for_each(send_get);
    let statuses: Vec<_> = streams
        .iter_mut()
        .map(|stream| read_exchange(stream).status)
        .collect();
    assert_eq!(statuses, vec![Some(200); CONNECTIONS]);

    let b = mesh.proxy_stats("node-b").expect("node-b proxy");
    assert_eq!(b.hbone_connections_accepted, 1, "{b:?}");
    assert_eq!(b.connect_streams_received, CONNECTIONS as u64, "{b:?}");
    let outbound = events(&mesh, "client", Direction::Outbound);
    assert_eq!(outbound.len(), CONNECTIONS);
    assert_eq!(
        outbound.iter().filter(|e| !e.reused).count(),
        1,
        "{outbound:?}"
    );
    let tls = sockets(&mesh, "server", "sport = :15008");
    assert_eq!(tls.len(), 1, "one TLS connection to 15008: {tls:?}");
}

#[test]
fn policy_deny_closes_caller_and_proxy_answers_401() {
    if !nephilia_testbed::privileged("policy_deny_closes_caller_and_proxy_answers_401") {
        return;
    }
    let mesh = up();
    let deny = Fault::Deny {
        from: Principal {
            namespace: "shop".into(),
            service_account: Some("client".into()),
        },
        to: "server".into(),
    };
    mesh.inject(deny.clone()).expect("deny");
    let exchange = get(&mesh, "client", "10.96.0.20:80");
    assert_eq!(
        exchange.received, 0,
        "no response may reach the caller: {exchange:?}"
    );
    assert_eq!(exchange.status, None);
    eventually("401 events", || {
        events(&mesh, "server", Direction::Inbound).len() == 1
            && events(&mesh, "client", Direction::Outbound).len() == 1
    });
    let inbound = events(&mesh, "server", Direction::Inbound);
    assert_eq!(inbound[0].status, 401);
    assert_eq!(inbound[0].source_identity.as_deref(), Some(CLIENT_ID));
    assert_eq!(events(&mesh, "client", Direction::Outbound)[0].status, 401);

    mesh.revert(&deny).expect("revert");
    assert_eq!(get(&mesh, "client", "10.96.0.20:80").status, Some(200));
}

#[test]
fn stopped_pod_gives_503_at_the_tunnel() {
    if !nephilia_testbed::privileged("stopped_pod_gives_503_at_the_tunnel") {
        return;
    }
    let mesh = up();
    let stop = Fault::StopPod {
        pod: "server".into(),
    };
    mesh.inject(stop.clone()).expect("stop");
    let exchange = get(&mesh, "client", "10.96.0.20:80");
    assert_eq!(exchange.received, 0, "{exchange:?}");
    eventually("503 events", || {
        events(&mesh, "server", Direction::Inbound).len() == 1
            && events(&mesh, "client", Direction::Outbound).len() == 1
    });
    let inbound = events(&mesh, "server", Direction::Inbound);
    assert_eq!(
        (inbound[0].status, inbound[0].target),
        (503, addr("10.244.2.20:8080"))
    );
    assert_eq!(events(&mesh, "client", Direction::Outbound)[0].status, 503);

    mesh.revert(&stop).expect("start again");
    assert_eq!(get(&mesh, "client", "10.96.0.20:80").status, Some(200));
}

#[test]
fn pods_not_enrolled_talk_plain_tcp() {
    if !nephilia_testbed::privileged("pods_not_enrolled_talk_plain_tcp") {
        return;
    }
    let mesh = up();
    // Not enrolled → not enrolled: no proxy at all (the node DNATs the VIP).
    let exchange = get(&mesh, "plain", "10.96.0.30:80");
    assert_eq!(exchange.status, Some(200), "{exchange:?}");
    assert_eq!(peer_ip(&exchange), PLAIN_IP.parse::<IpAddr>().unwrap());
    assert!(
        mesh.tunnel_events().is_empty(),
        "{:?}",
        mesh.tunnel_events()
    );

    // Enrolled → not enrolled: the proxy dials plain TCP from the client pod.
    let exchange = get(&mesh, "client", "10.96.0.30:80");
    assert_eq!(exchange.status, Some(200), "{exchange:?}");
    assert_eq!(peer_ip(&exchange), CLIENT_IP.parse::<IpAddr>().unwrap());
    let outbound = events(&mesh, "client", Direction::Outbound);
    assert_eq!(outbound.len(), 1);
    assert_eq!((outbound[0].path, outbound[0].status), (FlowPath::Tcp, 200));
    assert_eq!(outbound[0].target, addr("10.244.2.30:8080"));

    // Not enrolled → enrolled: plaintext arrives on the server's 15006 and the app still
    // sees the caller's address (the proxy connects with IP_TRANSPARENT).
    let exchange = get(&mesh, "plain", "10.96.0.20:80");
    assert_eq!(exchange.status, Some(200), "{exchange:?}");
    assert_eq!(peer_ip(&exchange), PLAIN_IP.parse::<IpAddr>().unwrap());
    let inbound = events(&mesh, "server", Direction::Inbound);
    assert_eq!(inbound.len(), 1);
    assert_eq!((inbound[0].path, inbound[0].status), (FlowPath::Tcp, 200));
    assert_eq!(inbound[0].source_identity, None);
    assert_eq!(
        mesh.proxy_stats("node-b")
            .unwrap()
            .hbone_connections_accepted,
        0
    );
}

#[test]
fn grpc_call_crosses_hbone_and_error_rate_gives_unavailable() {
    if !nephilia_testbed::privileged("grpc_call_crosses_hbone_and_error_rate_gives_unavailable") {
        return;
    }
    let mesh = up();
    let target = "grpc.bank.svc.cluster.local:9090";
    assert_eq!(
        mesh.call("client", target, Protocol::Grpc).unwrap(),
        CallOutcome::Grpc(0)
    );
    let inbound = events(&mesh, "grpc", Direction::Inbound);
    assert_eq!(inbound.len(), 1);
    assert_eq!(
        inbound[0].source_identity.as_deref(),
        Some(CLIENT_ID),
        "{inbound:?}"
    );
    mesh.inject(Fault::ErrorRate {
        pod: "grpc".into(),
        rate: 1.0,
    })
    .expect("error rate");
    // UNAVAILABLE is code 14; the gRPC channel (one HTTP/2 connection) is reused.
    assert_eq!(
        mesh.call("client", target, Protocol::Grpc).unwrap(),
        CallOutcome::Grpc(14)
    );
    assert_eq!(events(&mesh, "grpc", Direction::Inbound).len(), 1);
}

#[test]
fn kill_tunnel_resets_the_open_connection() {
    if !nephilia_testbed::privileged("kill_tunnel_resets_the_open_connection") {
        return;
    }
    let mesh = up();
    let mut stream = mesh
        .connect("client", addr("10.96.0.21:80"), Duration::from_secs(5))
        .expect("connect");
    send_get(&mut stream);
    // The slow app holds the request for 3 s; kill the tunnel while it is open.
    eventually("tunnel to slow is open", || {
        events(&mesh, "slow", Direction::Inbound).len() == 1
    });
    mesh.inject(Fault::KillTunnel { pod: "slow".into() })
        .expect("kill tunnel");
    let exchange = read_exchange(&mut stream);
    assert_eq!(exchange.received, 0, "{exchange:?}");
    assert_eq!(
        exchange.error,
        Some(ErrorKind::ConnectionReset),
        "{exchange:?}"
    );
}

#[test]
fn down_leaves_no_namespace_link_or_rule() {
    if !nephilia_testbed::privileged("down_leaves_no_namespace_link_or_rule") {
        return;
    }
    let host_before = host_network();
    let mesh = up();
    let prefix = format!("{}-", mesh.prefix());
    let made = namespaces_with(&prefix);
    assert_eq!(made.len(), 1 + 2 + 7, "fabric, 2 nodes, 7 pods: {made:?}");
    let metadata = mesh.metadata_path().to_owned();
    let removed = mesh.down();
    assert!(removed.failures.is_empty(), "{:?}", removed.failures);
    assert_eq!(removed.namespaces.len(), 10);
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    assert!(!metadata.exists());
    assert_eq!(
        host_network(),
        host_before,
        "the host's links, rules and routes are untouched"
    );
}

#[test]
fn down_cleans_up_after_a_killed_up() {
    if !nephilia_testbed::privileged("down_cleans_up_after_a_killed_up") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_nephilia-testbed");
    let directory = std::env::temp_dir().join(format!("nephilia-testbed-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let scenario = directory.join("scenario.yaml");
    std::fs::write(&scenario, SCENARIO).expect("write scenario");
    let prefix = UpOptions::unique().prefix;
    let state_dir = directory.join("state");
    let mut up = ChildGuard(
        Command::new(binary)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["up", "--prefix", &prefix, "--scenario"])
            .arg(&scenario)
            .spawn()
            .expect("start up"),
    );
    let metadata = state_dir.join(format!("{prefix}-metadata.yaml"));
    eventually_for("up writes its metadata", Duration::from_secs(30), || {
        metadata.exists()
    });
    assert_eq!(namespaces_with(&format!("{prefix}-")).len(), 10);
    // A crash: no chance to clean up.
    up.0.kill().expect("kill up");
    up.0.wait().expect("reap up");
    assert_eq!(namespaces_with(&format!("{prefix}-")).len(), 10);
    let down = Command::new(binary)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["down", "--prefix", &prefix])
        .output()
        .expect("run down");
    assert!(down.status.success(), "{down:?}");
    assert_eq!(namespaces_with(&format!("{prefix}-")), Vec::<String>::new());
    assert!(!metadata.exists());
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn destination_outside_the_mesh_is_passthrough() {
    if !nephilia_testbed::privileged("destination_outside_the_mesh_is_passthrough") {
        return;
    }
    let mesh = up();
    // A listener on node-b's own address: inside the test's namespaces, outside the mesh.
    let node = Netns::open(&mesh.node_namespace("node-b")).expect("node netns");
    let listener = node
        .run(|| std::net::TcpListener::bind("10.200.0.2:7000"))
        .expect("enter node")
        .expect("bind");
    let mut stream = mesh
        .connect("client", addr("10.200.0.2:7000"), Duration::from_secs(5))
        .expect("connect");
    stream.write_all(b"ping").expect("write");
    listener.set_nonblocking(false).expect("blocking listener");
    let (mut accepted, peer) = listener.accept().expect("accept");
    let mut received = [0u8; 4];
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    accepted.read_exact(&mut received).expect("read");
    assert_eq!(&received, b"ping");
    // Dialled from the client pod itself, not from a proxy address.
    assert_eq!(peer.ip(), CLIENT_IP.parse::<IpAddr>().unwrap());
    eventually("passthrough event", || {
        events(&mesh, "client", Direction::Outbound).len() == 1
    });
    let outbound = events(&mesh, "client", Direction::Outbound);
    assert_eq!(outbound[0].path, FlowPath::Passthrough);
    assert_eq!(outbound[0].target, addr("10.200.0.2:7000"));
    assert_eq!(outbound[0].destination_identity, None);
}

#[test]
fn fan_out_and_bounded_load() {
    if !nephilia_testbed::privileged("fan_out_and_bounded_load") {
        return;
    }
    let mesh = up();
    let exchange = get(&mesh, "client", "10.96.0.12:80");
    assert_eq!(exchange.status, Some(200), "{exchange:?}");
    let answer: serde_json::Value = serde_json::from_str(&exchange.body).expect("JSON");
    assert_eq!(
        answer["downstream"],
        serde_json::json!([
            "server.shop.svc.cluster.local:80: http 200",
            "grpc.bank.svc.cluster.local:9090: grpc 0"
        ])
    );
    // front → server and front → grpc each crossed HBONE with front's identity.
    let front_id = "spiffe://cluster.local/ns/shop/sa/front";
    for pod in ["server", "grpc"] {
        let inbound = events(&mesh, pod, Direction::Inbound);
        assert_eq!(inbound.len(), 1, "{pod}: {inbound:?}");
        assert_eq!(inbound[0].source_identity.as_deref(), Some(front_id));
    }

    // 20 requests per second for one second: exactly 20, all answered.
    let traffic: nephilia_testbed::scenario::TrafficSpec = serde_yaml_ng::from_str(
        "{ from: client, to: 'server.shop.svc.cluster.local:80', rate: 20, duration: 1s }",
    )
    .expect("traffic spec");
    let report = mesh.start_traffic(traffic).expect("start traffic");
    eventually_for("load to finish", Duration::from_secs(10), || {
        report.counts().finished
    });
    let counts = report.counts();
    assert_eq!(
        (counts.sent, counts.succeeded, counts.failed),
        (20, 20, 0),
        "{counts:?}"
    );
}

#[test]
fn blackholed_pod_times_out_and_recovers() {
    if !nephilia_testbed::privileged("blackholed_pod_times_out_and_recovers") {
        return;
    }
    let mesh = up();
    let blackhole = Fault::Blackhole {
        pod: "legacy".into(),
    };
    mesh.inject(blackhole.clone()).expect("blackhole");
    // Plain TCP straight to the pod: the SYN is dropped, so the connect times out.
    let started = Instant::now();
    let error = mesh
        .connect(
            "plain",
            addr("10.244.2.30:8080"),
            Duration::from_millis(1500),
        )
        .expect_err("a blackholed pod does not answer");
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    mesh.revert(&blackhole).expect("revert");
    assert_eq!(get(&mesh, "plain", "10.244.2.30:8080").status, Some(200));
}

/// Kills and reaps a child process if the test fails before it does.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn eventually_for(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = nephilia_testbed::netns::list()
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The host namespace's links, rules, routes and nat rules, to compare before/after.
fn host_network() -> Vec<String> {
    [
        ("ip", vec!["-o", "link", "show"]),
        ("ip", vec!["rule", "show"]),
        ("ip", vec!["route", "show", "table", "all"]),
        ("iptables", vec!["-t", "nat", "-S"]),
        ("iptables", vec!["-t", "mangle", "-S"]),
    ]
    .into_iter()
    .map(|(program, args)| {
        let output = Command::new(program).args(&args).output().expect("runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .collect()
}
