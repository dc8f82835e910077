//! OTLP/gRPC export end to end: a `nephilia-server` process fed over its real gRPC ingest
//! exports spans to an in-process OTLP collector (the opentelemetry-proto `TraceService`)
//! on loopback; what the collector receives is compared span by span with what was fed,
//! and with the server's own trace API. The export counters are read from `/metrics`.
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nephilia_proto::IngestClient;
use nephilia_proto::v1::{
    AgentMessage, MeshFlow, MeshPath, Outcome, Peer, Protocol, Record, Request, Role,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value as Json;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

mod support;

use support::{Api, Pki, ServerProcess, free_port, now_ns, tempdir, wait_until};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const FRONTEND_SPAN: &str = "00f067aa0ba902b7";
const CHECKOUT_SPAN: &str = "b7ad6b7169203331";
const MS: u64 = 1_000_000;

/// A span as a collector received it, with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

/// An OTLP collector that keeps every span it is sent, with its resource's attributes.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.unwrap_or_default().attributes;
            for scope in rs.scope_spans {
                assert_eq!(scope.scope.unwrap_or_default().name, "nephilia");
                for span in scope.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Stops what it guards when the test ends, however it ends.
struct StopOnDrop(Option<oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl Collector {
    async fn start(&self, addr: SocketAddr) -> StopOnDrop {
        self.start_with_tls(addr, None).await
    }

    /// Listens on `addr`, over TLS with `tls` (certificate, key) when given.
    async fn start_with_tls(&self, addr: SocketAddr, tls: Option<(String, String)>) -> StopOnDrop {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the collector");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(self.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("collector TLS");
        }
        tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        StopOnDrop(Some(stop))
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The names of the spans received, sorted.
    fn span_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.spans().into_iter().map(|(_, s)| s.name).collect();
        names.sort();
        names
    }
}

/// `nephilia-server` exporting to `collector`, with these extra flags.
fn server(collector: SocketAddr, flags: &[&str]) -> ServerProcess {
    let endpoint = format!("http://{collector}");
    let mut extra = vec!["--otlp-endpoint", &endpoint];
    extra.extend_from_slice(flags);
    ServerProcess::start(&extra)
}

/// The `nephilia_otlp_*` lines of `/metrics`, name{labels} → value.
fn otlp_metrics(api: Api) -> Vec<(String, u64)> {
    let (status, body) = api.get("/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("nephilia_otlp_"))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.parse().expect("a count"))
        })
        .collect()
}

fn metric(metrics: &[(String, u64)], name: &str) -> u64 {
    metrics
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing from {metrics:?}"))
        .1
}

/// One agent stream from `node` with one batch of `records`.
fn report(rt: &Runtime, grpc: SocketAddr, node: &str, records: Vec<Record>) {
    rt.block_on(async {
        let mut client = IngestClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect to ingest");
        let summary = client
            .report(tokio_stream::iter(vec![AgentMessage::batch(
                node, 1, records,
            )]))
            .await
            .expect("batch accepted")
            .into_inner();
        assert_eq!(summary.batches_accepted, 1);
    });
}

fn peer(workload: &str, ip: &str, port: u32) -> Option<Peer> {
    Some(Peer {
        workload: workload.into(),
        namespace: "shop".into(),
        service_account: workload.into(),
        identity: format!("spiffe://cluster.local/ns/shop/sa/{workload}"),
        pod: format!("{workload}-0"),
        ip: ip.into(),
        service: if port == 0 {
            String::new()
        } else {
            format!("{workload}.shop.svc.cluster.local")
        },
        port,
    })
}

/// One call seen at the caller (`Role::Client`) or the callee.
#[derive(Clone, Copy)]
struct Call {
    side: Role,
    protocol: Protocol,
    method: &'static str,
    path: &'static str,
    from: (&'static str, &'static str),
    to: (&'static str, &'static str, u32),
    start_ns: u64,
    latency_us: u64,
    span_id: &'static str,
    grpc_status: Option<i32>,
    node: &'static str,
    pid: u32,
}

impl Call {
    fn record(&self) -> Record {
        let (to, to_ip, port) = self.to;
        let (local, remote) = match self.side {
            Role::Client => (format!("{}:40100", self.from.1), format!("{to_ip}:{port}")),
            // ztunnel delivers with the client's ip, not its port.
            _ => (format!("{to_ip}:{port}"), format!("{}:51000", self.from.1)),
        };
        Request {
            side: self.side as i32,
            protocol: self.protocol as i32,
            method: self.method.into(),
            path: self.path.into(),
            authority: format!("{to}.shop.svc.cluster.local:{port}"),
            status: Some(200),
            grpc_status: self.grpc_status,
            grpc_message: self.grpc_status.map(|_| "no healthy upstream".into()),
            start_ns: self.start_ns,
            end_ns: self.start_ns + self.latency_us * 1000,
            latency_us: self.latency_us,
            request_bytes: 120,
            response_bytes: 340,
            trace_id: Some(TRACE.into()),
            span_id: Some(self.span_id.into()),
            source: peer(self.from.0, self.from.1, 0),
            destination: peer(to, to_ip, port),
            local,
            remote,
            pid: self.pid,
            node: self.node.into(),
            ..Request::default()
        }
        .into()
    }

    /// The callee's record of the same call, 0.2 ms inside the caller's.
    fn at_server(&self, node: &'static str, pid: u32) -> Call {
        Call {
            side: Role::Server,
            start_ns: self.start_ns + MS / 5,
            latency_us: self.latency_us - 400,
            node,
            pid,
            ..*self
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hbone(
    from: (&str, &str),
    to: (&str, &str, u32),
    start_ns: u64,
    end_ns: Option<u64>,
    setup_us: u64,
    reused: bool,
    node: &str,
) -> Record {
    MeshFlow {
        start_ns,
        end_ns,
        side: Role::Client as i32,
        source: peer(from.0, from.1, 0),
        original_destination: format!("{}:{}", to.1, to.2),
        destination: peer(to.0, to.1, to.2),
        path: MeshPath::Hbone as i32,
        mtls: true,
        tunnel_setup_us: Some(setup_us),
        tunnel_reused: Some(reused),
        outcome: if end_ns.is_some() {
            Outcome::Closed
        } else {
            Outcome::Open
        } as i32,
        node: node.into(),
        ..MeshFlow::default()
    }
    .into()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn text(v: &str) -> Option<Value> {
    Some(Value::StringValue(v.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_fan_out_reaches_the_collector_as_the_trace_api_shows_it() {
    let rt = Runtime::new().expect("a tokio runtime");
    let collector = Collector::default();
    let collector_addr = free_port();
    let _collector = rt.block_on(collector.start(collector_addr));
    let server = server(collector_addr, &["--otlp-delay", "300ms"]);

    // frontend → checkout (HTTP, over a fresh HBONE tunnel), checkout → payments (gRPC,
    // UNAVAILABLE, a new connection over a pooled tunnel); traceparent on both calls. Both
    // are the first call on their connection, so both tunnel spans are "HBONE connect".
    let t = now_ns() - 3_000 * MS;
    let frontend = ("frontend", "10.0.1.10");
    let checkout = ("checkout", "10.0.1.20");
    let to_checkout = ("checkout", "10.0.1.20", 8080);
    let to_payments = ("payments", "10.0.2.30", 9090);
    let front = Call {
        side: Role::Client,
        protocol: Protocol::Http1,
        method: "GET",
        path: "/checkout",
        from: frontend,
        to: to_checkout,
        start_ns: t,
        latency_us: 10_000,
        span_id: FRONTEND_SPAN,
        grpc_status: None,
        node: "node-a",
        pid: 11,
    };
    let charge = Call {
        protocol: Protocol::Grpc,
        method: "POST",
        path: "/shop.Payments/Charge",
        from: checkout,
        to: to_payments,
        start_ns: t + 2 * MS,
        latency_us: 3_000,
        span_id: CHECKOUT_SPAN,
        grpc_status: Some(14),
        node: "node-b",
        pid: 7,
        ..front
    };
    // As three nodes would report them: callee before caller.
    report(
        &rt,
        server.grpc,
        "node-c",
        vec![charge.at_server("node-c", 9).record()],
    );
    report(
        &rt,
        server.grpc,
        "node-b",
        vec![
            front.at_server("node-b", 7).record(),
            charge.record(),
            hbone(
                checkout,
                to_payments,
                t - 5_000 * MS,
                None,
                1_200,
                true,
                "node-b",
            ),
        ],
    );
    report(
        &rt,
        server.grpc,
        "node-a",
        vec![
            front.record(),
            hbone(
                frontend,
                to_checkout,
                t - MS,
                Some(t + 20 * MS),
                900,
                false,
                "node-a",
            ),
        ],
    );

    let got = wait_until("6 spans at the collector", Duration::from_secs(15), || {
        let spans = collector.spans();
        (spans.len() >= 6).then_some(spans)
    });
    // Two more ticks: nothing is sent twice.
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(collector.spans().len(), 6, "{got:#?}");

    // The spans, ids and parents of GET /api/v1/traces/{id}, in its order.
    let view: Json = server
        .api()
        .get_json(&format!("/api/v1/traces/{TRACE}"))
        .expect("the trace from the API");
    let api_spans = view["spans"].as_array().unwrap();
    assert_eq!(api_spans.len(), 6);
    let ordered: Vec<&Received> = api_spans
        .iter()
        .map(|api| {
            let id = api["span_id"].as_str().unwrap();
            let found = got
                .iter()
                .find(|(_, s)| hex(&s.span_id) == id)
                .unwrap_or_else(|| panic!("span {id} of the trace API was not exported"));
            assert_eq!(
                hex(&found.1.parent_span_id),
                api["parent_span_id"].as_str().unwrap_or_default()
            );
            found
        })
        .collect();
    let index = |id: &[u8]| ordered.iter().position(|(_, s)| s.span_id == id);
    let shape: Vec<_> = ordered
        .iter()
        .map(|(resource, s)| {
            let status = s.status.clone().unwrap_or_default();
            (
                attribute(resource, "service.name"),
                attribute(resource, "k8s.node.name"),
                s.name.as_str(),
                s.kind,
                index(&s.parent_span_id),
                status.code,
                status.message,
            )
        })
        .collect();
    let (client, server_kind) = (3, 2); // SPAN_KIND_CLIENT, SPAN_KIND_SERVER
    let unavailable = "gRPC status 14 UNAVAILABLE: no healthy upstream".to_owned();
    assert_eq!(
        shape,
        [
            (
                text("frontend"),
                text("node-a"),
                "GET /checkout",
                client,
                None,
                0,
                String::new()
            ),
            (
                text("ztunnel"),
                text("node-a"),
                "HBONE connect",
                client,
                Some(0),
                0,
                String::new()
            ),
            (
                text("checkout"),
                text("node-b"),
                "GET /checkout",
                server_kind,
                Some(1),
                0,
                String::new()
            ),
            (
                text("checkout"),
                text("node-b"),
                "shop.Payments/Charge",
                client,
                Some(2),
                2,
                unavailable.clone()
            ),
            (
                text("ztunnel"),
                text("node-b"),
                "HBONE connect",
                client,
                Some(3),
                0,
                String::new()
            ),
            (
                text("payments"),
                text("node-c"),
                "shop.Payments/Charge",
                server_kind,
                Some(4),
                2,
                unavailable
            ),
        ]
    );
    for (_, span) in &ordered {
        assert_eq!(hex(&span.trace_id), TRACE);
    }
    // Client spans keep the ids their traceparent headers carried.
    assert_eq!(hex(&ordered[0].1.span_id), FRONTEND_SPAN);
    assert_eq!(hex(&ordered[3].1.span_id), CHECKOUT_SPAN);
    let front_span = &ordered[0].1;
    assert_eq!(
        (
            front_span.start_time_unix_nano,
            front_span.end_time_unix_nano
        ),
        (t, t + 10 * MS)
    );

    let (front_resource, front_span) = ordered[0];
    for (key, value) in [
        ("service.name", "frontend"),
        ("service.namespace", "shop"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "frontend-0"),
        ("k8s.node.name", "node-a"),
    ] {
        assert_eq!(attribute(front_resource, key), text(value), "{key}");
    }
    let a = &front_span.attributes;
    assert_eq!(attribute(a, "http.request.method"), text("GET"));
    assert_eq!(
        attribute(a, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(attribute(a, "url.template"), text("/checkout"));
    assert_eq!(
        attribute(a, "server.address"),
        text("checkout.shop.svc.cluster.local")
    );
    assert_eq!(attribute(a, "server.port"), Some(Value::IntValue(8080)));
    assert_eq!(attribute(a, "network.peer.address"), text("10.0.1.20"));

    let tunnel = &ordered[1].1.attributes;
    assert_eq!(
        attribute(tunnel, "nephilia.tunnel_setup_us"),
        Some(Value::IntValue(900))
    );
    assert_eq!(
        attribute(tunnel, "nephilia.mtls"),
        Some(Value::BoolValue(true))
    );
    assert_eq!(
        attribute(tunnel, "nephilia.tunnel_reused"),
        Some(Value::BoolValue(false))
    );
    assert_eq!(
        attribute(tunnel, "nephilia.source_identity"),
        text("spiffe://cluster.local/ns/shop/sa/frontend")
    );
    assert_eq!(
        attribute(tunnel, "nephilia.destination_identity"),
        text("spiffe://cluster.local/ns/shop/sa/checkout")
    );
    let pooled = &ordered[4].1.attributes;
    assert_eq!(
        attribute(pooled, "nephilia.tunnel_reused"),
        Some(Value::BoolValue(true))
    );
    assert_eq!(attribute(pooled, "nephilia.mesh_outcome"), text("open"));

    let checkout_in = &ordered[2].1.attributes;
    assert_eq!(attribute(checkout_in, "client.address"), text("10.0.1.10"));
    assert_eq!(
        attribute(checkout_in, "network.peer.port"),
        Some(Value::IntValue(51000))
    );
    let payments_in = &ordered[5].1.attributes;
    assert_eq!(attribute(payments_in, "rpc.system"), text("grpc"));
    assert_eq!(attribute(payments_in, "rpc.service"), text("shop.Payments"));
    assert_eq!(attribute(payments_in, "rpc.method"), text("Charge"));
    assert_eq!(
        attribute(payments_in, "rpc.grpc.status_code"),
        Some(Value::IntValue(14))
    );
    assert_eq!(attribute(payments_in, "http.request.method"), None);

    let metrics = otlp_metrics(server.api());
    assert_eq!(
        metrics,
        [
            ("nephilia_otlp_spans_exported_total", 6),
            (
                "nephilia_otlp_spans_dropped_total{reason=\"queue_full\"}",
                0
            ),
            ("nephilia_otlp_spans_dropped_total{reason=\"rejected\"}", 0),
            (
                "nephilia_otlp_spans_dropped_total{reason=\"invalid_id\"}",
                0
            ),
            ("nephilia_otlp_spans_dropped_total{reason=\"evicted\"}", 0),
            ("nephilia_otlp_export_failures_total", 0),
            ("nephilia_otlp_queue_spans", 0),
            ("nephilia_otlp_held_spans", 0),
        ]
        .map(|(n, v)| (n.to_owned(), v))
    );
}

/// `item(i)` for each of `items` from node-a, starting a second ago.
fn report_items(rt: &Runtime, grpc: SocketAddr, items: std::ops::Range<u64>) {
    let t = now_ns() - 1_000 * MS;
    report(rt, grpc, "node-a", items.map(|i| item(i, t)).collect());
}

/// A single client span `GET /item/{i}` with no traceparent: a trace of its own.
fn item(i: u64, start_ns: u64) -> Record {
    let mut record = Call {
        side: Role::Client,
        protocol: Protocol::Http1,
        method: "GET",
        path: "/item",
        from: ("frontend", "10.0.1.10"),
        to: ("catalog", "10.0.3.40", 8080),
        start_ns: start_ns + i * MS,
        latency_us: 500,
        span_id: FRONTEND_SPAN,
        grpc_status: None,
        node: "node-a",
        pid: 0,
    }
    .record();
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut record.kind {
        r.path = format!("/item/{i}");
        r.trace_id = None;
        r.span_id = None;
    }
    record
}

#[test]
fn spans_wait_for_a_collector_that_is_down_within_the_queue_bound_and_the_rest_are_counted() {
    let rt = Runtime::new().expect("a tokio runtime");
    let collector = Collector::default();
    let collector_addr = free_port(); // nobody listens there yet
    let server = server(
        collector_addr,
        &["--otlp-delay", "200ms", "--otlp-queue", "4"],
    );
    report_items(&rt, server.grpc, 0..10);

    // All ten leave the store in one tick; the queue keeps the newest four.
    let metrics = wait_until(
        "the collector to be found down",
        Duration::from_secs(10),
        || {
            let m = otlp_metrics(server.api());
            (metric(&m, "nephilia_otlp_export_failures_total") >= 1).then_some(m)
        },
    );
    assert_eq!(
        metric(
            &metrics,
            "nephilia_otlp_spans_dropped_total{reason=\"queue_full\"}"
        ),
        6
    );
    assert_eq!(metric(&metrics, "nephilia_otlp_queue_spans"), 4);
    assert_eq!(metric(&metrics, "nephilia_otlp_spans_exported_total"), 0);
    assert!(collector.spans().is_empty());

    let _collector = rt.block_on(collector.start(collector_addr));
    wait_until(
        "the queued spans to arrive",
        Duration::from_secs(15),
        || {
            let m = otlp_metrics(server.api());
            (metric(&m, "nephilia_otlp_spans_exported_total") == 4).then_some(())
        },
    );
    let names = collector.span_names();
    assert_eq!(
        names,
        ["GET /item/6", "GET /item/7", "GET /item/8", "GET /item/9"]
    );

    // With the collector up, new spans go straight through.
    report_items(&rt, server.grpc, 10..12);
    wait_until("two more spans", Duration::from_secs(10), || {
        (collector.spans().len() >= 6).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(collector.spans().len(), 6);
    let metrics = otlp_metrics(server.api());
    for (name, value) in [
        ("nephilia_otlp_spans_exported_total", 6),
        (
            "nephilia_otlp_spans_dropped_total{reason=\"queue_full\"}",
            6,
        ),
        ("nephilia_otlp_spans_dropped_total{reason=\"rejected\"}", 0),
        (
            "nephilia_otlp_spans_dropped_total{reason=\"invalid_id\"}",
            0,
        ),
        ("nephilia_otlp_spans_dropped_total{reason=\"evicted\"}", 0),
        ("nephilia_otlp_queue_spans", 0),
        ("nephilia_otlp_held_spans", 0),
    ] {
        assert_eq!(metric(&metrics, name), value, "{name}");
    }
}

#[test]
fn a_tls_collector_gets_the_spans_when_its_certificate_chains_to_otlp_ca() {
    let rt = Runtime::new().expect("a tokio runtime");
    let pki = Pki::new("nephilia test collector CA");
    let collector = Collector::default();
    let collector_addr = free_port();
    let _collector = rt.block_on(collector.start_with_tls(collector_addr, Some(pki.leaf())));
    let dir = tempdir("nephilia-otlp-tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).expect("write the CA");
    let endpoint = format!("https://localhost:{}", collector_addr.port());
    let server = ServerProcess::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-ca",
        ca.to_str().expect("utf-8 path"),
        "--otlp-delay",
        "200ms",
    ]);
    report_items(&rt, server.grpc, 0..3);
    wait_until("three spans over TLS", Duration::from_secs(15), || {
        (collector.spans().len() >= 3).then_some(())
    });
    let names = collector.span_names();
    assert_eq!(names, ["GET /item/0", "GET /item/1", "GET /item/2"]);
    // The server counts a batch once the collector's answer is back, a moment after the
    // collector has the spans.
    let metrics = wait_until("the export to be counted", Duration::from_secs(5), || {
        let m = otlp_metrics(server.api());
        (metric(&m, "nephilia_otlp_spans_exported_total") == 3).then_some(m)
    });
    assert_eq!(metric(&metrics, "nephilia_otlp_export_failures_total"), 0);
}

#[test]
fn a_bad_endpoint_stops_the_server_at_startup_naming_the_flag() {
    for (args, env) in [
        (vec!["--otlp-endpoint", "tempo:4317"], None),
        (vec![], Some("ftp://tempo:4317")),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nephilia-server"));
        command.args(&args).env_remove("NEPHILIA_OTLP_ENDPOINT");
        if let Some(value) = env {
            command.env("NEPHILIA_OTLP_ENDPOINT", value);
        }
        let output = command.output().expect("run nephilia-server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--otlp-endpoint")
                && stderr.contains("expected http://host:port or https://host:port"),
            "{stderr}"
        );
    }
}
