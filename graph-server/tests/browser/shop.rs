//! A small shop and a bank as agents on three nodes would report them over 4 minutes
//! ending now: HTTP and gRPC request chains with traceparent, both sides of every call,
//! HBONE flows (pooled, with tunnel setup times) and one passthrough flow to a card
//! network outside the mesh; payments stops for a minute (its callers see refused
//! connections, the frontend 503s) and recovers.
//!
//! ```text
//!  shop: frontend ─▶ checkout ─▶ inventory        bank: gateway ─▶ ledger
//!            │            └────▶ payments ───────────────▶ │
//!            └─▶ catalog                                    └─▶ 203.0.113.10:443
//! ```
use nephilia_proto::v1::{MeshFlow, MeshPath, Outcome, Peer, Protocol, Record, Request, Role};

pub const SECOND: u64 = 1_000_000_000;
pub const MS: u64 = 1_000_000;
/// One checkout every 500 ms for 240 s.
pub const CHECKOUTS: u64 = 480;
/// Checkouts whose payment failed while payments was down (60 s).
pub const FAILED_CHECKOUTS: u64 = 120;

/// A workload: namespace, name, pod ip, service VIP, port, node, pid.
#[derive(Clone, Copy)]
pub struct Workload {
    pub namespace: &'static str,
    pub name: &'static str,
    ip: &'static str,
    vip: &'static str,
    port: u32,
    node: &'static str,
    pid: u32,
    pod_suffix: &'static str,
}

pub const FRONTEND: Workload = w(
    "shop",
    "frontend",
    "10.42.0.11",
    "10.96.12.40",
    8080,
    "node-a",
    1101,
    "6d5f9c7b8-x2k4q",
);
pub const CHECKOUT: Workload = w(
    "shop",
    "checkout",
    "10.42.0.12",
    "10.96.12.41",
    8080,
    "node-a",
    1102,
    "84c6b9f5d-7hz2m",
);
pub const CATALOG: Workload = w(
    "shop",
    "catalog",
    "10.42.1.21",
    "10.96.12.42",
    8080,
    "node-b",
    2101,
    "5b8d7f6c9-qp4rw",
);
pub const INVENTORY: Workload = w(
    "shop",
    "inventory",
    "10.42.1.22",
    "10.96.12.43",
    8080,
    "node-b",
    2102,
    "7f9c5d8b6-m3n8t",
);
pub const PAYMENTS: Workload = w(
    "shop",
    "payments",
    "10.42.1.23",
    "10.96.12.44",
    9090,
    "node-b",
    2103,
    "69d8f7c5b-k9v2s",
);
pub const GATEWAY: Workload = w(
    "bank",
    "gateway",
    "10.42.2.31",
    "10.96.20.10",
    9090,
    "node-c",
    3101,
    "58c9d6f7b-r5t7y",
);
pub const LEDGER: Workload = w(
    "bank",
    "ledger",
    "10.42.2.32",
    "10.96.20.11",
    9090,
    "node-c",
    3102,
    "6f7b8c9d5-w2e4u",
);
pub const CARD_NETWORK: &str = "203.0.113.10";

#[expect(clippy::too_many_arguments, reason = "a table of constants")]
const fn w(
    namespace: &'static str,
    name: &'static str,
    ip: &'static str,
    vip: &'static str,
    port: u32,
    node: &'static str,
    pid: u32,
    pod_suffix: &'static str,
) -> Workload {
    Workload {
        namespace,
        name,
        ip,
        vip,
        port,
        node,
        pid,
        pod_suffix,
    }
}

impl Workload {
    pub fn id(&self) -> String {
        format!("workload:{}:{}", self.namespace, self.name)
    }

    fn peer(&self) -> Peer {
        Peer {
            workload: self.name.into(),
            namespace: self.namespace.into(),
            service_account: self.name.into(),
            identity: format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                self.namespace, self.name
            ),
            pod: format!("{}-{}", self.name, self.pod_suffix),
            ip: self.ip.into(),
            service: String::new(),
            port: 0,
        }
    }

    fn service(&self) -> Peer {
        Peer {
            service: format!("{}.{}.svc.cluster.local", self.name, self.namespace),
            port: self.port,
            ..self.peer()
        }
    }

    fn dialled(&self) -> String {
        format!("{}:{}", self.vip, self.port)
    }
}

/// Deterministic jitter (xorshift), so every run feeds the same shape.
struct Jitter(u64);

impl Jitter {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

/// Records per reporting node, in the order to send them: node-a first, because its
/// client-side records (frontend and checkout) are the ones that decide the outage.
pub struct Shop {
    pub batches: Vec<(&'static str, Vec<Record>)>,
}

#[derive(Default)]
struct Out {
    by_node: std::collections::BTreeMap<&'static str, Vec<Record>>,
}

impl Out {
    fn push(&mut self, node: &'static str, record: impl Into<Record>) {
        self.by_node.entry(node).or_default().push(record.into());
    }

    /// One call seen at both ends: the caller's client record and the callee's server
    /// record, carrying the same traceparent ids.
    #[expect(clippy::too_many_arguments, reason = "one call's description")]
    fn call(
        &mut self,
        from: Workload,
        to: Workload,
        protocol: Protocol,
        method: &str,
        path: &str,
        start_ns: u64,
        latency_us: u64,
        status: u32,
        trace: (&str, String),
    ) {
        let grpc = protocol == Protocol::Grpc;
        let client = Request {
            side: Role::Client as i32,
            protocol: protocol as i32,
            method: method.into(),
            path: path.into(),
            authority: format!("{}.{}.svc.cluster.local:{}", to.name, to.namespace, to.port),
            status: Some(status),
            grpc_status: grpc.then_some(0),
            grpc_message: None,
            start_ns,
            end_ns: start_ns + latency_us * 1000,
            latency_us,
            request_bytes: if grpc { 182 } else { 420 },
            response_bytes: if grpc { 96 } else { 1830 },
            trace_id: Some(trace.0.into()),
            span_id: Some(trace.1),
            parent_span_id: None,
            source: Some(from.peer()),
            destination: Some(to.service()),
            local: format!("{}:{}", from.ip, 40000 + (start_ns / MS) % 20000),
            remote: to.dialled(),
            pid: from.pid,
            node: from.node.into(),
        };
        // The callee sees the call a little later and answers a little sooner; inbound
        // ztunnel keeps the caller's ip but not its port.
        let server = Request {
            side: Role::Server as i32,
            start_ns: start_ns + 300_000,
            end_ns: client.end_ns - 250_000,
            latency_us: latency_us - 550,
            local: format!("{}:{}", to.ip, to.port),
            remote: format!("{}:{}", from.ip, 51000 + (start_ns / MS) % 10000),
            pid: to.pid,
            node: to.node.into(),
            ..client.clone()
        };
        self.push(from.node, client);
        self.push(to.node, server);
    }

    /// A client-side HBONE flow `[start, end)` carrying `from`'s connection to `to`.
    #[expect(clippy::too_many_arguments, reason = "one flow's description")]
    fn hbone(
        &mut self,
        from: Workload,
        to: Workload,
        start_ns: u64,
        end_ns: u64,
        setup_us: u64,
        reused: bool,
        outcome: Outcome,
        bytes: (u64, u64),
    ) {
        self.push(
            from.node,
            MeshFlow {
                start_ns,
                end_ns: Some(end_ns),
                side: Role::Client as i32,
                source: Some(from.peer()),
                original_destination: to.dialled(),
                destination: Some(to.service()),
                path: MeshPath::Hbone as i32,
                mtls: true,
                tunnel_setup_us: Some(setup_us),
                tunnel_reused: Some(reused),
                tunnel_connect_us: (!reused).then_some(setup_us * 7 / 10),
                upstream_connect_us: None,
                bytes_sent: bytes.0,
                bytes_received: bytes.1,
                bytes_sent_delta: bytes.0,
                bytes_received_delta: bytes.1,
                outcome: outcome as i32,
                node: from.node.into(),
            },
        );
    }
}

/// The shop over 240 s from the 10 s boundary before `now - 245 s`.
pub fn shop(now_ns: u64) -> Shop {
    // Aligned to the server's 10 s buckets so the outage covers whole buckets and every
    // failure lands in one of them, whenever the test runs.
    let start = (now_ns - 245 * SECOND) / (10 * SECOND) * (10 * SECOND);
    let end = start + CHECKOUTS * 500 * MS;
    let outage_start = start + 90 * SECOND;
    let outage_end = outage_start + 60 * SECOND;
    let mut out = Out::default();
    let mut j = Jitter(0x9e37_79b9_7f4a_7c15);
    let down = |t: u64| (outage_start..outage_end).contains(&t);

    for i in 0..CHECKOUTS {
        let s = start + i * 500 * MS + j.between(0, 40) * MS;
        let trace_id = format!("4bf92f3577b34da6{:016x}", 0xa3ce_929d_0e0e_0000 + i);
        let span = |hop: u64| format!("{:016x}", 0x00f0_67aa_0ba9_0000 + i * 16 + hop);
        let inventory = j.between(4_000, 9_000);
        out.call(
            CHECKOUT,
            INVENTORY,
            Protocol::Http1,
            "GET",
            &format!("/api/stock/{}", 1000 + i % 37),
            s + MS,
            inventory,
            200,
            (&trace_id, span(2)),
        );
        let (total, status) = if down(s) {
            (inventory + j.between(2_000, 4_000), 503)
        } else {
            let pay_start = s + MS + inventory * 1000 + MS;
            let ledger = j.between(2_000, 5_000);
            let gateway = ledger + j.between(10_000, 20_000);
            let payments = gateway + j.between(6_000, 12_000);
            out.call(
                CHECKOUT,
                PAYMENTS,
                Protocol::Grpc,
                "POST",
                "/payments.v1.Payments/Charge",
                pay_start,
                payments,
                200,
                (&trace_id, span(3)),
            );
            let gw_start = pay_start + 2 * MS;
            out.call(
                PAYMENTS,
                GATEWAY,
                Protocol::Grpc,
                "POST",
                "/bank.v1.Gateway/Authorize",
                gw_start,
                gateway,
                200,
                (&trace_id, span(4)),
            );
            out.call(
                GATEWAY,
                LEDGER,
                Protocol::Grpc,
                "POST",
                "/bank.v1.Ledger/Record",
                gw_start + 3 * MS,
                ledger,
                200,
                (&trace_id, span(5)),
            );
            (inventory + payments + j.between(6_000, 14_000), 200)
        };
        out.call(
            FRONTEND,
            CHECKOUT,
            Protocol::Http1,
            "POST",
            "/api/checkout",
            s,
            total,
            status,
            (&trace_id, span(1)),
        );
        if down(s) {
            // checkout's connect to payments: inbound ztunnel answers 503, the app's
            // connection is closed: a refused flow, no request.
            let t = s + MS + inventory * 1000 + MS;
            out.hbone(
                CHECKOUT,
                PAYMENTS,
                t,
                t + j.between(900, 1_600) * 1000,
                j.between(900, 1_600),
                true,
                Outcome::Refused,
                (0, 0),
            );
        }
        // Three product listings per checkout: the busiest, healthy edge.
        for k in 0..3 {
            let t = s + (k * 160 + 60) * MS;
            let trace = format!("5a1c0e7d2b9f4e83{:016x}", i * 3 + k);
            out.call(
                FRONTEND,
                CATALOG,
                Protocol::Http1,
                "GET",
                "/api/products",
                t,
                j.between(6_000, 14_000),
                200,
                (&trace, format!("{:016x}", 0x1c0d_0000 + i * 3 + k)),
            );
        }
    }

    // Keep-alive connections, one per 30 s per edge, over one pooled HBONE tunnel: the
    // first opens the tunnel (a few ms), later ones are CONNECT streams on it.
    let chunks = |from: u64, to: u64| {
        let mut list = Vec::new();
        let mut t = from;
        while t < to {
            list.push((t, (t + 30 * SECOND).min(to)));
            t += 30 * SECOND;
        }
        list
    };
    for (from, to, per_conn) in [
        (FRONTEND, CHECKOUT, (25_000, 110_000)),
        (FRONTEND, CATALOG, (60_000, 330_000)),
        (CHECKOUT, INVENTORY, (20_000, 90_000)),
        (GATEWAY, LEDGER, (12_000, 9_000)),
    ] {
        for (n, (a, b)) in chunks(start - SECOND, end + SECOND).into_iter().enumerate() {
            let (setup, reused) = if n == 0 {
                (j.between(1_800, 2_600), false)
            } else {
                (j.between(150, 450), true)
            };
            out.hbone(from, to, a, b, setup, reused, Outcome::Closed, per_conn);
        }
    }
    // payments: checkout's connection open when it went down is reset (payments' own
    // connection to the gateway closes as it shuts down), then nothing connects until it
    // is back; the first connection after opens a new tunnel.
    for (from, to) in [(CHECKOUT, PAYMENTS), (PAYMENTS, GATEWAY)] {
        for (n, (a, b)) in chunks(start - SECOND, outage_start).into_iter().enumerate() {
            let reset = b == outage_start && to.name == PAYMENTS.name;
            let (setup, reused) = if n == 0 {
                (j.between(1_900, 2_800), false)
            } else {
                (j.between(150, 450), true)
            };
            out.hbone(
                from,
                to,
                a,
                b,
                setup,
                reused,
                if reset {
                    Outcome::Reset
                } else {
                    Outcome::Closed
                },
                (18_000, 6_000),
            );
        }
        for (n, (a, b)) in chunks(outage_end, end + SECOND).into_iter().enumerate() {
            let (setup, reused) = if n == 0 {
                (j.between(2_200, 3_200), false)
            } else {
                (j.between(150, 450), true)
            };
            out.hbone(
                from,
                to,
                a,
                b,
                setup,
                reused,
                Outcome::Closed,
                (18_000, 6_000),
            );
        }
    }
    // gateway → card network: TLS straight through, outside the mesh (no HBONE, no mTLS
    // from ztunnel), a pooled connection every 10 s.
    let mut t = start;
    while t < end {
        if !down(t) {
            out.push(
                GATEWAY.node,
                MeshFlow {
                    start_ns: t,
                    end_ns: Some(t + 9 * SECOND),
                    side: Role::Client as i32,
                    source: Some(GATEWAY.peer()),
                    original_destination: format!("{CARD_NETWORK}:443"),
                    destination: Some(Peer {
                        ip: CARD_NETWORK.into(),
                        port: 443,
                        ..Peer::default()
                    }),
                    path: MeshPath::Passthrough as i32,
                    mtls: false,
                    bytes_sent: 24_000,
                    bytes_received: 9_500,
                    bytes_sent_delta: 24_000,
                    bytes_received_delta: 9_500,
                    outcome: Outcome::Closed as i32,
                    node: GATEWAY.node.into(),
                    ..MeshFlow::default()
                },
            );
        }
        t += 10 * SECOND;
    }

    Shop {
        batches: out.by_node.into_iter().collect(),
    }
}
