//! Privileged end-to-end tests of `request` records on the testbed's ambient mesh: the
//! TC programs on each pod's `lo` copy the plaintext hop, the agent parses it. Every
//! request is counted on both sides (the caller's outbound capture, the callee's
//! delivery) and asserted exactly.

#[path = "connections/netns.rs"]
#[expect(dead_code, reason = "only the privilege check is used here")]
mod netns;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use nephilia_agent::{
    l7_capture::{L7Options, RequestProtocol, RequestRecord, TcAttachMode},
    metadata::{MetadataStore, static_file},
    observe::{BackgroundObserver, ObserveOptions, Summary},
    record::{ConnectionRole, Record},
};
use nephilia_testbed::{
    CallOutcome, Fault, Mesh, Protocol, Scenario, UpOptions, scenario::TrafficSpec,
};

const SCENARIO: &str = r#"
name: requests
nodes:
  - { name: node-a, ip: 10.200.0.1 }
  - { name: node-b, ip: 10.200.0.2 }
pods:
  - { name: client-0, namespace: shop, serviceAccount: client, workload: client, ip: 10.244.1.10, node: node-a }
  - name: front-0
    namespace: shop
    serviceAccount: front
    workload: front
    ip: 10.244.1.11
    node: node-a
    app:
      protocol: http
      port: 8080
      propagateTrace: true
      calls:
        - { to: "web.shop.svc.cluster.local:80", protocol: http }
  - { name: web-0, namespace: shop, serviceAccount: web, workload: web, ip: 10.244.2.10, node: node-b, app: { protocol: http, port: 8080 } }
  - name: rpc-0
    namespace: shop
    serviceAccount: rpc
    workload: rpc
    ip: 10.244.2.11
    node: node-b
    app: { protocol: grpc, port: 9090, latency: { baseMs: 100 } }
  - name: slow-0
    namespace: shop
    serviceAccount: slow
    workload: slow
    ip: 10.244.2.12
    node: node-b
    app: { protocol: http, port: 8080, latency: { baseMs: 500 } }
services:
  - { name: front, namespace: shop, vip: 10.96.0.33, selector: front, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: web, namespace: shop, vip: 10.96.0.30, selector: web, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: rpc, namespace: shop, vip: 10.96.0.31, selector: rpc, ports: [{ port: 9090, targetPort: 9090 }] }
  - { name: slow, namespace: shop, vip: 10.96.0.32, selector: slow, ports: [{ port: 80, targetPort: 8080 }] }
"#;

const WEB: &str = "web.shop.svc.cluster.local:80";
const RPC: &str = "rpc.shop.svc.cluster.local:9090";
const SLOW: &str = "slow.shop.svc.cluster.local:80";
const GRPC_PATH: &str = "/nephilia.testbed.demo.Demo/Call";

fn mesh() -> Mesh {
    let mut options = UpOptions::unique();
    options.run_schedule = false;
    Mesh::up(Scenario::from_yaml(SCENARIO).expect("scenario"), options).expect("mesh up")
}

fn observer(mesh: &Mesh, attach: TcAttachMode) -> BackgroundObserver {
    let metadata = MetadataStore::default();
    metadata.replace(static_file::load(mesh.metadata_path()).expect("metadata file"));
    BackgroundObserver::start(ObserveOptions {
        metadata,
        node: "test-node".into(),
        l7: L7Options {
            attach,
            ..L7Options::default()
        },
        ..ObserveOptions::default()
    })
    .expect("programs load")
}

/// Request records of this test's apps (they are threads of this process; other meshes
/// on the machine have apps of their own).
fn requests(records: &[Record]) -> Vec<RequestRecord> {
    let pid = std::process::id();
    records
        .iter()
        .filter_map(|record| match record {
            Record::Request(request) if request.pid == pid => Some(request.clone()),
            _ => None,
        })
        .collect()
}

fn stop(observer: BackgroundObserver) -> (Vec<RequestRecord>, Summary) {
    // Proxies close their sockets just after the apps; the agent drains every 100 ms.
    std::thread::sleep(Duration::from_millis(700));
    let (records, summary) = observer.stop().expect("observation");
    if std::env::var_os("DEBUG_REQUESTS").is_some() {
        for record in &records {
            if let Record::Request(_) = record {
                eprintln!("{}", serde_json::to_string(record).unwrap());
            }
        }
        eprintln!("{summary:?}");
    }
    (requests(&records), summary)
}

/// (side, protocol, method, path, status, grpc_status) → count.
type Tally = BTreeMap<
    (
        &'static str,
        RequestProtocol,
        String,
        String,
        Option<u16>,
        Option<i32>,
    ),
    usize,
>;

fn tally<'a>(requests: impl IntoIterator<Item = &'a RequestRecord>) -> Tally {
    let mut tally = Tally::new();
    for r in requests {
        let side = match r.side {
            ConnectionRole::Client => "client",
            ConnectionRole::Server => "server",
        };
        *tally
            .entry((
                side,
                r.protocol,
                r.method.clone(),
                r.path.clone(),
                r.status,
                r.grpc_status,
            ))
            .or_default() += 1;
    }
    tally
}

/// One HTTP/1.1 request on a kept-alive connection; returns (status, request bytes).
fn keep_alive_get(stream: &mut TcStream, host: &str, path: &str, extra: &str) -> (u16, usize) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n");
    stream.0.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.0.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0; length];
    stream.0.read_exact(&mut body).unwrap();
    (status, request.len())
}

struct TcStream(TcpStream);

fn connect(mesh: &Mesh, pod: &str, to: &str) -> TcStream {
    let address: SocketAddr = to.parse().unwrap();
    let stream = mesh
        .connect(pod, address, Duration::from_secs(5))
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    TcStream(stream)
}

fn call(mesh: &Mesh, target: &str, protocol: Protocol) -> CallOutcome {
    mesh.call("client-0", target, protocol).expect("call")
}

/// Waits (bounded) for a load generator to finish.
fn wait_finished(mesh: &Mesh, to: &str) -> nephilia_testbed::apps::TrafficCounts {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = mesh
            .traffic()
            .into_iter()
            .find(|c| c.to == to)
            .expect("traffic started");
        if counts.finished || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Most requests in flight at once among `requests`.
fn max_overlap(requests: &[&RequestRecord]) -> usize {
    let mut events: Vec<(u64, i32)> = requests
        .iter()
        .flat_map(|r| [(r.start_ns, 1), (r.end_ns, -1)])
        .collect();
    events.sort();
    let mut current = 0i32;
    let mut max = 0i32;
    for (_, delta) in events {
        current += delta;
        max = max.max(current);
    }
    max as usize
}

/// No program of ours (TCX link or netlink filter) nor a clsact qdisc is left on `lo` or
/// `eth0` of the pod.
fn assert_nothing_attached(mesh: &Mesh, pod: &str) {
    let namespace = mesh.pod_namespace(pod).unwrap();
    for device in ["lo", "eth0"] {
        let qdiscs = run(&[
            "ip", "netns", "exec", &namespace, "tc", "qdisc", "show", "dev", device,
        ]);
        assert!(!qdiscs.contains("clsact"), "{pod} {device}: {qdiscs}");
        for hook in ["egress", "ingress"] {
            let filters = run(&[
                "ip", "netns", "exec", &namespace, "tc", "filter", "show", "dev", device, hook,
            ]);
            assert!(
                !filters.contains("l7_capture"),
                "{pod} {device} {hook}: {filters}"
            );
        }
    }
    let links = run(&[
        "ip", "netns", "exec", &namespace, "ip", "-d", "link", "show", "dev", "lo",
    ]);
    assert!(!links.contains("tcx"), "{pod} lo: {links}");
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn http_and_grpc_calls_yield_exact_request_records_on_both_sides() {
    if !netns::privileged("http_and_grpc_calls_yield_exact_request_records_on_both_sides") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh, TcAttachMode::Auto);

    // HTTP/1.1 keep-alive: five requests on one connection.
    let mut stream = connect(&mesh, "client-0", "10.96.0.30:80");
    let mut keep_alive_bytes = Vec::new();
    for id in 1..=5 {
        let (status, sent) = keep_alive_get(
            &mut stream,
            "web.shop.svc.cluster.local",
            &format!("/items/{id}"),
            "",
        );
        assert_eq!(status, 200);
        keep_alive_bytes.push(sent as u64);
    }
    drop(stream);
    // A fresh connection per call, then errors.
    for _ in 0..3 {
        assert_eq!(call(&mesh, WEB, Protocol::Http), CallOutcome::Http(200));
    }
    let failing_web = Fault::ErrorRate {
        pod: "web-0".into(),
        rate: 1.0,
    };
    mesh.inject(failing_web.clone()).unwrap();
    for _ in 0..2 {
        assert_eq!(call(&mesh, WEB, Protocol::Http), CallOutcome::Http(503));
    }
    mesh.revert(&failing_web).unwrap();

    // gRPC on one channel: sequential calls, then 40 from the load generator with up to
    // several streams in flight (the service takes 100 ms), then errors.
    for _ in 0..4 {
        assert_eq!(call(&mesh, RPC, Protocol::Grpc), CallOutcome::Grpc(0));
    }
    mesh.start_traffic(TrafficSpec {
        from: "client-0".into(),
        to: RPC.into(),
        protocol: Protocol::Grpc,
        rate: 40,
        duration: Duration::from_secs(1),
        start: Duration::ZERO,
    })
    .unwrap();
    let load = wait_finished(&mesh, RPC);
    assert_eq!(
        (load.sent, load.succeeded, load.failed, load.skipped),
        (40, 40, 0, 0)
    );
    let failing_rpc = Fault::ErrorRate {
        pod: "rpc-0".into(),
        rate: 1.0,
    };
    mesh.inject(failing_rpc.clone()).unwrap();
    for _ in 0..2 {
        // UNAVAILABLE
        assert_eq!(call(&mesh, RPC, Protocol::Grpc), CallOutcome::Grpc(14));
    }
    mesh.revert(&failing_rpc).unwrap();

    let (requests, summary) = stop(observer);
    let http = |side, path: &str, status| {
        (
            side,
            RequestProtocol::Http1,
            "GET".to_owned(),
            path.to_owned(),
            Some(status),
            None,
        )
    };
    let grpc = |side, code| {
        (
            side,
            RequestProtocol::Grpc,
            "POST".to_owned(),
            GRPC_PATH.to_owned(),
            Some(200),
            Some(code),
        )
    };
    let mut expected = Tally::new();
    for side in ["client", "server"] {
        expected.insert(http(side, "/items/{id}", 200), 5);
        expected.insert(http(side, "/", 200), 3);
        expected.insert(http(side, "/", 503), 2);
        expected.insert(grpc(side, 0), 44);
        expected.insert(grpc(side, 14), 2);
    }
    assert_eq!(tally(&requests), expected, "{requests:#?}");

    // Names, addresses and sizes, as each side saw them.
    let items: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/items/{id}")
        .collect();
    for r in &items {
        assert_eq!(r.authority, "web.shop.svc.cluster.local");
        assert_eq!(r.source.workload, "client");
        assert_eq!(
            r.source.identity,
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(r.source.ip, "10.244.1.10");
        assert_eq!(
            (r.destination.workload.as_str(), r.destination.port),
            ("web", 8080)
        );
        assert_eq!(r.node, "test-node");
        assert!(r.latency_us > 0 && r.end_ns > r.start_ns, "{r:?}");
        match r.side {
            ConnectionRole::Client => {
                assert_eq!(r.remote, "10.96.0.30:80");
                assert_eq!(r.destination.service, "web.shop.svc.cluster.local");
            }
            ConnectionRole::Server => {
                assert_eq!(r.local, "10.244.2.10:8080");
                assert_eq!(r.destination.ip, "10.244.2.10");
            }
        }
    }
    let client_items: Vec<u64> = items
        .iter()
        .filter(|r| r.side == ConnectionRole::Client)
        .map(|r| r.request_bytes)
        .collect();
    assert_eq!(client_items, keep_alive_bytes);
    // The keep-alive requests rode one connection on each side.
    for side in [ConnectionRole::Client, ConnectionRole::Server] {
        let mut locals: Vec<_> = items
            .iter()
            .filter(|r| r.side == side)
            .map(|r| &r.local)
            .collect();
        locals.dedup();
        assert_eq!(locals.len(), 1, "{side:?}: {locals:?}");
    }

    // The load generator's gRPC calls: each trace once per side, streams concurrent.
    let traced: Vec<_> = requests
        .iter()
        .filter(|r| r.protocol == RequestProtocol::Grpc && r.trace_id.is_some())
        .collect();
    for side in [ConnectionRole::Client, ConnectionRole::Server] {
        let mut traces: Vec<_> = traced
            .iter()
            .filter(|r| r.side == side)
            .map(|r| r.trace_id.clone().unwrap())
            .collect();
        traces.sort();
        traces.dedup();
        assert_eq!(traces.len(), 40, "{side:?}");
        let side_requests: Vec<_> = traced.iter().copied().filter(|r| r.side == side).collect();
        assert!(
            max_overlap(&side_requests) >= 2,
            "{side:?}: streams were not concurrent"
        );
    }
    let grpc_error = requests
        .iter()
        .find(|r| r.grpc_status == Some(14))
        .expect("a gRPC error");
    assert_eq!(grpc_error.authority, RPC);
    assert_eq!(grpc_error.destination.workload, "rpc");

    assert!(
        summary
            .l7_hooks
            .iter()
            .any(|(_, interface, _)| interface == "lo"),
        "{summary:?}"
    );
    for pod in ["client-0", "web-0", "rpc-0"] {
        assert_nothing_attached(&mesh, pod);
    }
}

#[test]
fn injected_service_delay_shows_in_request_latency() {
    if !netns::privileged("injected_service_delay_shows_in_request_latency") {
        return;
    }
    let mesh = mesh();
    // Unobserved: dials the pooled HBONE connection, whose TLS setup would otherwise add
    // to the first call's latency on the client side.
    assert_eq!(call(&mesh, SLOW, Protocol::Http), CallOutcome::Http(200));
    let observer = observer(&mesh, TcAttachMode::Auto);
    for _ in 0..3 {
        assert_eq!(call(&mesh, SLOW, Protocol::Http), CallOutcome::Http(200));
    }
    let (requests, _) = stop(observer);
    let slow: Vec<_> = requests
        .iter()
        .filter(|r| r.destination.workload == "slow")
        .collect();
    assert_eq!(slow.len(), 6, "{requests:#?}");
    for r in slow {
        // The app waits 500 ms before answering: ±10 % (the client side adds two proxies
        // and HBONE, a few ms on an idle machine, tens on a busy one).
        assert!((450_000..=550_000).contains(&r.latency_us), "{r:?}");
        assert_eq!(r.status, Some(200));
    }
}

#[test]
fn traceparent_of_a_propagating_app_lands_in_both_hops() {
    if !netns::privileged("traceparent_of_a_propagating_app_lands_in_both_hops") {
        return;
    }
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    let mesh = mesh();
    let observer = observer(&mesh, TcAttachMode::Auto);
    let mut stream = connect(&mesh, "client-0", "10.96.0.33:80");
    let (status, _) = keep_alive_get(
        &mut stream,
        "front.shop.svc.cluster.local",
        "/orders/7",
        &format!("traceparent: 00-{TRACE}-{SPAN}-01\r\n"),
    );
    assert_eq!(status, 200);
    drop(stream);
    let (requests, _) = stop(observer);
    assert_eq!(requests.len(), 4, "{requests:#?}");
    let find = |side, source: &str| {
        requests
            .iter()
            .find(|r| r.side == side && r.source.workload == source)
            .unwrap_or_else(|| panic!("{side:?} from {source}: {requests:#?}"))
    };
    let (caller, front_in) = (
        find(ConnectionRole::Client, "client"),
        find(ConnectionRole::Server, "client"),
    );
    let (front_out, web_in) = (
        find(ConnectionRole::Client, "front"),
        find(ConnectionRole::Server, "front"),
    );
    for r in [caller, front_in, front_out, web_in] {
        assert_eq!(r.trace_id.as_deref(), Some(TRACE), "{r:?}");
    }
    assert_eq!(
        (caller.path.as_str(), front_in.path.as_str()),
        ("/orders/{id}", "/orders/{id}")
    );
    assert_eq!(caller.authority, "front.shop.svc.cluster.local");
    assert_eq!(caller.span_id.as_deref(), Some(SPAN));
    assert_eq!(front_in.span_id.as_deref(), Some(SPAN));
    // The front app continued the trace with a span of its own.
    assert_eq!(front_out.span_id, web_in.span_id);
    assert_ne!(front_out.span_id.as_deref(), Some(SPAN));
    assert_eq!(front_out.destination.workload, "web");
    assert_eq!(web_in.destination.workload, "web");
    // The downstream call happened inside the upstream request.
    assert!(front_in.start_ns < front_out.start_ns && front_out.end_ns < front_in.end_ns);
}

#[test]
fn netlink_attachment_adds_and_removes_its_clsact_qdisc() {
    if !netns::privileged("netlink_attachment_adds_and_removes_its_clsact_qdisc") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh, TcAttachMode::Netlink);
    let namespace = mesh.pod_namespace("client-0").unwrap();
    let qdiscs = run(&[
        "ip", "netns", "exec", &namespace, "tc", "qdisc", "show", "dev", "lo",
    ]);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    let filters = run(&[
        "ip", "netns", "exec", &namespace, "tc", "filter", "show", "dev", "lo", "egress",
    ]);
    assert!(filters.contains("l7_capture_egress"), "{filters}");
    assert_eq!(call(&mesh, WEB, Protocol::Http), CallOutcome::Http(200));
    let (requests, _) = stop(observer);
    assert_eq!(tally(&requests).values().sum::<usize>(), 2, "{requests:#?}");
    for pod in ["client-0", "web-0"] {
        assert_nothing_attached(&mesh, pod);
    }
}
