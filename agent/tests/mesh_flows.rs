//! Privileged end-to-end tests of `mesh_flow` records on the testbed's ambient mesh:
//! real HBONE through two proxies that behave as ztunnel does, observed by the real
//! programs, named from the testbed's ztunnel-shaped metadata file.

#[path = "connections/netns.rs"]
#[expect(dead_code, reason = "only the privilege check is used here")]
mod netns;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use nephilia_agent::{
    mesh_flow::{FlowOutcome, MeshFlowRecord, MeshPath},
    metadata::{MetadataStore, static_file},
    observe::{BackgroundObserver, ObserveOptions},
    record::{ConnectionRole, Record},
};
use nephilia_testbed::{Fault, Mesh, Scenario, UpOptions, scenario::Principal};

const SCENARIO: &str = r#"
name: flows
nodes:
  - { name: node-a, ip: 10.200.0.1 }
  - { name: node-b, ip: 10.200.0.2 }
pods:
  - { name: client-0, namespace: shop, serviceAccount: client, workload: client, ip: 10.244.1.10, node: node-a }
  - { name: legacy-0, namespace: legacy, serviceAccount: legacy, workload: legacy, ip: 10.244.1.20, node: node-a, enrolled: false }
  - name: server-0
    namespace: shop
    serviceAccount: server
    workload: server
    ip: 10.244.2.10
    node: node-b
    app: { protocol: http, port: 8080 }
services:
  - { name: server, namespace: shop, vip: 10.96.0.20, selector: server, ports: [{ port: 80, targetPort: 8080 }] }
"#;

const SERVICE: &str = "10.96.0.20:80";
const REQUEST: &[u8] =
    b"GET /hello HTTP/1.1\r\nhost: server.shop.svc.cluster.local\r\nconnection: close\r\n\r\n";

fn mesh() -> Mesh {
    let mut options = UpOptions::unique();
    options.run_schedule = false;
    Mesh::up(Scenario::from_yaml(SCENARIO).expect("scenario"), options).expect("mesh up")
}

fn observer(mesh: &Mesh) -> BackgroundObserver {
    let metadata = MetadataStore::default();
    metadata.replace(static_file::load(mesh.metadata_path()).expect("metadata file"));
    BackgroundObserver::start(ObserveOptions {
        metadata,
        node: "test-node".into(),
        ..ObserveOptions::default()
    })
    .expect("programs load")
}

/// One HTTP exchange from a pod; returns (bytes written, bytes read).
fn exchange(mesh: &Mesh, pod: &str, to: &str) -> (usize, usize) {
    let address: SocketAddr = to.parse().unwrap();
    let mut stream = mesh
        .connect(pod, address, Duration::from_secs(5))
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(REQUEST).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    (REQUEST.len(), response.len())
}

fn flows(records: &[Record]) -> Vec<MeshFlowRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::MeshFlow(flow) if flow.end_ns.is_some() => Some(flow.clone()),
            _ => None,
        })
        .collect()
}

fn side(flows: &[MeshFlowRecord], side: ConnectionRole, source: &str) -> Vec<MeshFlowRecord> {
    flows
        .iter()
        .filter(|f| f.side == side && f.source.workload == source)
        .cloned()
        .collect()
}

fn settle() {
    // Proxies close their sockets just after the app's; the agent drains every 100 ms.
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
fn hbone_flows_are_named_timed_and_counted_on_both_sides() {
    if !netns::privileged("hbone_flows_are_named_timed_and_counted_on_both_sides") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh);
    let mut exchanged = Vec::new();
    for _ in 0..5 {
        exchanged.push(exchange(&mesh, "client-0", SERVICE));
    }
    settle();
    let (records, _) = observer.stop().unwrap();
    let flows = flows(&records);
    if std::env::var_os("DEBUG_FLOWS").is_some() {
        for record in &records {
            eprintln!("{}", serde_json::to_string(record).unwrap());
        }
    }

    let clients = side(&flows, ConnectionRole::Client, "client");
    assert_eq!(clients.len(), 5, "{flows:#?}");
    for (flow, (sent, received)) in clients.iter().zip(&exchanged) {
        assert_eq!(
            flow.source.identity,
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(flow.source.pod, "client-0");
        assert_eq!(flow.original_destination, SERVICE);
        assert_eq!(flow.destination.workload, "server");
        assert_eq!(
            flow.destination.identity,
            "spiffe://cluster.local/ns/shop/sa/server"
        );
        assert_eq!(flow.destination.service, "server.shop.svc.cluster.local");
        assert_eq!(
            (flow.destination.ip.as_str(), flow.destination.port),
            ("10.244.2.10", 8080)
        );
        assert_eq!((flow.path, flow.mtls), (MeshPath::Hbone, true));
        assert_eq!(flow.outcome, FlowOutcome::Closed);
        assert_eq!(
            (flow.bytes_sent, flow.bytes_received),
            (*sent as u64, *received as u64)
        );
        assert!(flow.tunnel_setup_us.is_some_and(|us| us > 0), "{flow:?}");
    }
    // A cold pool: the first flow dialled the HBONE connection, the others rode it.
    let reused: Vec<_> = clients.iter().map(|f| f.tunnel_reused).collect();
    assert_eq!(
        reused,
        [Some(false), Some(true), Some(true), Some(true), Some(true)]
    );
    assert!(clients[0].tunnel_connect_us.is_some());
    assert!(clients[1..].iter().all(|f| f.tunnel_connect_us.is_none()));

    let servers = side(&flows, ConnectionRole::Server, "client");
    assert_eq!(servers.len(), 5, "{flows:#?}");
    for (flow, (sent, received)) in servers.iter().zip(&exchanged) {
        assert_eq!(
            flow.source.ip, "10.244.1.10",
            "the app saw the client pod's address"
        );
        assert_eq!(flow.destination.workload, "server");
        assert_eq!(flow.original_destination, "10.244.2.10:8080");
        assert_eq!((flow.path, flow.mtls), (MeshPath::Hbone, true));
        assert!(flow.upstream_connect_us.is_some());
        // The server app's view: it received the request and sent the response.
        assert_eq!(
            (flow.bytes_received, flow.bytes_sent),
            (*sent as u64, *received as u64)
        );
        assert_eq!(flow.outcome, FlowOutcome::Closed);
    }
}

#[test]
fn denied_and_stopped_destinations_are_tunnel_failures() {
    if !netns::privileged("denied_and_stopped_destinations_are_tunnel_failures") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh);
    let deny = Fault::Deny {
        from: Principal {
            namespace: "shop".into(),
            service_account: Some("client".into()),
        },
        to: "server".into(),
    };
    mesh.inject(deny.clone()).unwrap();
    assert_eq!(
        exchange(&mesh, "client-0", SERVICE).1,
        0,
        "denied: closed without a byte"
    );
    mesh.revert(&deny).unwrap();
    let stop = Fault::StopPod {
        pod: "server-0".into(),
    };
    mesh.inject(stop.clone()).unwrap();
    assert_eq!(
        exchange(&mesh, "client-0", SERVICE).1,
        0,
        "stopped: closed without a byte"
    );
    settle();
    let (records, _) = observer.stop().unwrap();
    let flows = flows(&records);

    let clients = side(&flows, ConnectionRole::Client, "client");
    assert_eq!(clients.len(), 2, "{flows:#?}");
    for flow in &clients {
        assert_eq!(flow.outcome, FlowOutcome::TunnelFailed, "{flow:?}");
        assert_eq!(flow.bytes_received, 0);
        assert_eq!(flow.tunnel_setup_us, None, "nothing was ever relayed");
    }
    // The stopped pod's proxy tried to deliver and was refused.
    let servers = side(&flows, ConnectionRole::Server, "client");
    assert_eq!(servers.len(), 1, "{flows:#?}");
    assert_eq!(servers[0].outcome, FlowOutcome::Refused);
    assert_eq!(servers[0].destination.workload, "server");
}

#[test]
fn pod_not_enrolled_talks_directly_without_mtls() {
    if !netns::privileged("pod_not_enrolled_talks_directly_without_mtls") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh);
    let (sent, received) = exchange(&mesh, "legacy-0", SERVICE);
    assert!(received > 0);
    settle();
    let (records, _) = observer.stop().unwrap();
    let flows = flows(&records);
    let legacy = side(&flows, ConnectionRole::Client, "legacy");
    assert_eq!(legacy.len(), 1, "{flows:#?}");
    let flow = &legacy[0];
    assert_eq!((flow.path, flow.mtls), (MeshPath::Direct, false));
    assert_eq!(
        flow.source.identity,
        "spiffe://cluster.local/ns/legacy/sa/legacy"
    );
    assert_eq!(flow.destination.service, "server.shop.svc.cluster.local");
    assert_eq!(
        (flow.bytes_sent, flow.bytes_received),
        (sent as u64, received as u64)
    );
    assert_eq!(flow.outcome, FlowOutcome::Closed);
    // The enrolled destination took it in on its plaintext capture port (15006).
    let server = side(&flows, ConnectionRole::Server, "legacy");
    assert_eq!(server.len(), 1, "{flows:#?}");
    assert_eq!(
        (server[0].path, server[0].mtls),
        (MeshPath::Passthrough, false)
    );
    assert_eq!(server[0].destination.workload, "server");
}

/// A slow connect from the destination proxy to its app shows in the server half's
/// `upstream_connect_us` and in the client half's `tunnel_setup_us` (the source proxy
/// relays only once the CONNECT was answered, after that connect). The delay is the
/// kernel's own initial retransmission timeout (1 s): the first SYN to the app is dropped
/// (this kernel has no netem to add a smaller fixed delay).
#[test]
fn a_slow_upstream_connect_shows_in_upstream_connect_and_tunnel_setup() {
    if !netns::privileged("a_slow_upstream_connect_shows_in_upstream_connect_and_tunnel_setup") {
        return;
    }
    let mesh = mesh();
    let observer = observer(&mesh);
    // A warm pool: the tunnel setup then holds no TCP or TLS handshake to the peer.
    exchange(&mesh, "client-0", SERVICE);
    let status = mesh
        .command("server-0", "iptables")
        .unwrap()
        .args([
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            "8080",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            "2",
            "--packet",
            "0",
            "-j",
            "DROP",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (_, received) = exchange(&mesh, "client-0", SERVICE);
    assert!(received > 0);
    settle();
    let (records, _) = observer.stop().unwrap();
    let flows = flows(&records);

    let server = side(&flows, ConnectionRole::Server, "client");
    assert_eq!(server.len(), 2, "{flows:#?}");
    assert!(
        server[0].upstream_connect_us.unwrap() < 100_000,
        "{:?}",
        server[0]
    );
    let upstream = server[1].upstream_connect_us.unwrap();
    assert!(
        (900_000..1_300_000).contains(&upstream),
        "upstream connect {upstream} µs"
    );
    let client = side(&flows, ConnectionRole::Client, "client");
    assert_eq!(client.len(), 2, "{flows:#?}");
    assert_eq!(client[1].tunnel_reused, Some(true));
    let setup = client[1].tunnel_setup_us.unwrap();
    assert!(
        setup >= upstream && setup < upstream + 300_000,
        "tunnel setup {setup} µs, upstream connect {upstream} µs"
    );
}

#[test]
fn flows_wait_for_the_first_metadata_load() {
    if !netns::privileged("flows_wait_for_the_first_metadata_load") {
        return;
    }
    let mesh = mesh();
    // The source has not loaded yet (a Kubernetes list in flight, a file not there yet).
    let metadata = MetadataStore::awaiting_first_load();
    let observer = BackgroundObserver::start(ObserveOptions {
        metadata: metadata.clone(),
        node: "test-node".into(),
        ..ObserveOptions::default()
    })
    .expect("programs load");
    for _ in 0..3 {
        exchange(&mesh, "client-0", SERVICE);
    }
    // Well past the partner wait (2 s): without names the flows would be out by now.
    std::thread::sleep(Duration::from_secs(3));
    metadata.replace(static_file::load(mesh.metadata_path()).expect("metadata file"));
    settle();
    let (records, _) = observer.stop().unwrap();
    let flows = flows(&records);
    let clients = side(&flows, ConnectionRole::Client, "client");
    assert_eq!(clients.len(), 3, "named once the metadata came: {flows:#?}");
    for flow in &clients {
        assert_eq!(flow.destination.workload, "server");
        assert_eq!(flow.source.pod, "client-0");
    }
}
