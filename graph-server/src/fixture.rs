//! Record builders for unit tests: a small shop (frontend → checkout → payments).
use crate::record::{MeshFlow, MeshPath, Outcome, Peer, Protocol, Request, Role};

/// 2026-01-01T12:03:00Z: tests start here so times print readably.
pub const T0: u64 = 1_767_268_980_000_000_000;
pub const SECOND: u64 = 1_000_000_000;
pub const MS: u64 = 1_000_000;

pub fn peer(workload: &str, ip: &str) -> Peer {
    Peer {
        workload: workload.into(),
        namespace: if workload.is_empty() {
            String::new()
        } else {
            "shop".into()
        },
        service_account: workload.into(),
        identity: if workload.is_empty() {
            String::new()
        } else {
            format!("spiffe://cluster.local/ns/shop/sa/{workload}")
        },
        pod: if workload.is_empty() {
            String::new()
        } else {
            format!("{workload}-0")
        },
        ip: ip.into(),
        service: String::new(),
        port: 0,
    }
}

/// The destination side: workload behind `<workload>.shop.svc.cluster.local:port`.
pub fn service(workload: &str, ip: &str, port: u32) -> Peer {
    Peer {
        service: format!("{workload}.shop.svc.cluster.local"),
        port,
        ..peer(workload, ip)
    }
}

pub fn ip_of(workload: &str) -> &'static str {
    match workload {
        "frontend" => "10.0.1.10",
        "checkout" => "10.0.1.20",
        "payments" => "10.0.2.30",
        _ => "10.0.9.99",
    }
}

/// A closed client-side HBONE flow from `src` to `dst` ending at `end_ns`.
pub fn flow(src: &str, dst: &str, end_ns: u64, outcome: Outcome) -> MeshFlow {
    MeshFlow {
        start_ns: end_ns - 5 * MS,
        end_ns: Some(end_ns),
        side: Role::Client,
        source: peer(src, ip_of(src)),
        original_destination: format!("{}:8080", ip_of(dst)),
        destination: service(dst, ip_of(dst), 8080),
        path: MeshPath::Hbone,
        mtls: true,
        tunnel_setup_us: Some(800),
        tunnel_reused: Some(false),
        tunnel_connect_us: Some(600),
        upstream_connect_us: None,
        bytes_sent: 100,
        bytes_received: 1000,
        bytes_sent_delta: 100,
        bytes_received_delta: 1000,
        outcome,
        node: "node-a".into(),
    }
}

/// A client-side HTTP/1 request `GET /path` from `src` to `dst`.
pub fn request(src: &str, dst: &str, start_ns: u64, latency_us: u64, status: u32) -> Request {
    Request {
        side: Role::Client,
        protocol: Protocol::Http1,
        method: "GET".into(),
        path: format!("/{dst}"),
        authority: format!("{dst}:8080"),
        status: Some(status),
        grpc_status: None,
        grpc_message: None,
        start_ns,
        end_ns: start_ns + latency_us * 1000,
        latency_us,
        request_bytes: 50,
        response_bytes: 500,
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        source: peer(src, ip_of(src)),
        destination: service(dst, ip_of(dst), 8080),
        local: format!("{}:40000", ip_of(src)),
        remote: format!("{}:8080", ip_of(dst)),
        pid: 100,
        node: "node-a".into(),
    }
}

/// The server side of `request(...)`, as the callee's node reports it.
pub fn server_side(client: &Request, pid: u32) -> Request {
    Request {
        side: Role::Server,
        start_ns: client.start_ns + 200_000,
        end_ns: client.end_ns - 200_000,
        latency_us: client.latency_us - 400,
        local: format!("{}:8080", client.destination.ip),
        // The inbound proxy keeps the client's address but not its port.
        remote: format!("{}:51000", client.source.ip),
        pid,
        node: "node-b".into(),
        ..client.clone()
    }
}
