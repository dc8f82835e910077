//! End to end on the testbed's ambient mesh, the whole data path with nothing recorded:
//! the agent (in this process, exactly what `nephilia-agent run` does) observes a small
//! shop, streams to a real `nephilia-server`, and the HTTP API must show what the test's
//! own traffic did — the graph's edges with exact request counts, a trace matching the
//! fan-out of one request, an outage that opens when payments stops and closes when it
//! is back, with payments as its root cause — and the web UI in headless Chromium must
//! show them (`ui/tests/browser.mjs`; screenshots in `target/artifacts/live-ui/`).
//!
//! Privileged (network namespaces, eBPF): skips outside CI when not root.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nephilia_agent::{
    background::Background,
    metadata::{MetadataStore, static_file},
    observe::ObserveOptions,
    report::{self, Reported, ReporterOptions},
};
use nephilia_testbed::{CallOutcome, Fault, Mesh, Protocol, Scenario, UpOptions};
use serde_json::{Value, json};
use support::{ServerProcess, wait_until};

const SCENARIO: &str = r#"
name: live
nodes:
  - { name: node-a, ip: 10.200.0.1 }
  - { name: node-b, ip: 10.200.0.2 }
pods:
  - { name: client-0, namespace: shop, serviceAccount: client, workload: client, ip: 10.244.1.10, node: node-a }
  - name: frontend-0
    namespace: shop
    serviceAccount: frontend
    workload: frontend
    ip: 10.244.1.11
    node: node-a
    app:
      protocol: http
      port: 8080
      propagateTrace: true
      calls:
        - { to: "checkout.shop.svc.cluster.local:80", protocol: http }
        - { to: "catalog.shop.svc.cluster.local:9090", protocol: grpc }
  - name: checkout-0
    namespace: shop
    serviceAccount: checkout
    workload: checkout
    ip: 10.244.2.12
    node: node-b
    app:
      protocol: http
      port: 8080
      propagateTrace: true
      calls:
        - { to: "payments.bank.svc.cluster.local:9090", protocol: grpc }
  - { name: catalog-0, namespace: shop, serviceAccount: catalog, workload: catalog, ip: 10.244.2.14, node: node-b, app: { protocol: grpc, port: 9090, propagateTrace: true } }
  - { name: payments-0, namespace: bank, serviceAccount: payments, workload: payments, ip: 10.244.1.20, node: node-a, app: { protocol: grpc, port: 9090, propagateTrace: true } }
services:
  - { name: frontend, namespace: shop, vip: 10.96.0.11, selector: frontend, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: checkout, namespace: shop, vip: 10.96.0.12, selector: checkout, ports: [{ port: 80, targetPort: 8080 }] }
  - { name: catalog, namespace: shop, vip: 10.96.0.14, selector: catalog, ports: [{ port: 9090, targetPort: 9090 }] }
  - { name: payments, namespace: bank, vip: 10.96.0.20, selector: payments, ports: [{ port: 9090, targetPort: 9090 }] }
"#;

const FRONTEND: &str = "frontend.shop.svc.cluster.local:80";
const NODE: &str = "live-node";
const CLIENT: &str = "workload:shop:client";
const FRONTEND_ID: &str = "workload:shop:frontend";
const CHECKOUT: &str = "workload:shop:checkout";
const CATALOG: &str = "workload:shop:catalog";
const PAYMENTS: &str = "workload:bank:payments";
/// Healthy calls before the outage.
const HEALTHY_CALLS: usize = 20;
/// Calls while payments is stopped (150 ms apart).
const OUTAGE_CALLS: usize = 40;

/// The agent on a thread of its own, reporting to `grpc` with the mesh's metadata, exactly
/// as `nephilia-agent run` does; returns once attached, stops (detaching its programs)
/// when dropped.
fn start_agent(mesh: &Mesh, grpc: std::net::SocketAddr) -> Background<report::Result<Reported>> {
    let metadata = MetadataStore::default();
    metadata.replace(static_file::load(mesh.metadata_path()).expect("metadata file"));
    let options = ObserveOptions {
        metadata,
        node: NODE.into(),
        ..ObserveOptions::default()
    };
    let reporter = ReporterOptions::new(format!("http://{grpc}"), NODE);
    Background::start("nephilia-agent", move |stop, ready| {
        report::observe_and_report(reporter, options, stop, ready)
    })
    .unwrap_or_else(|ended| panic!("the agent stopped before attaching: {ended:?}"))
}

fn call(mesh: &Mesh) -> CallOutcome {
    mesh.call("client-0", FRONTEND, Protocol::Http)
        .expect("call from client-0")
}

/// The workload graph's edges, by "source->target".
fn edges(graph: &Value) -> BTreeMap<String, Value> {
    graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| (e["id"].as_str().expect("edge id").to_owned(), e.clone()))
        .collect()
}

fn edge_id(source: &str, target: &str) -> String {
    format!("{source}->{target}")
}

/// Every span of a trace as the path of "kind:service:operation" from its root, " > "
/// between the steps. Tunnel spans are "HBONE" here: whether one opened its connection
/// ("HBONE connect") or rode an open one ("HBONE stream") is counted by `tunnel_kinds`.
fn span_paths(trace: &Value) -> BTreeSet<String> {
    let spans = trace["spans"].as_array().expect("spans");
    let by_id: BTreeMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().expect("span id"), s))
        .collect();
    spans
        .iter()
        .map(|span| {
            let mut path = Vec::new();
            let mut at = Some(span);
            while let Some(s) = at {
                let operation = if s["kind"] == "tunnel" {
                    "HBONE"
                } else {
                    s["operation"].as_str().unwrap_or_default()
                };
                path.push(format!("{}:{}:{operation}", s["kind"], s["service"]).replace('"', ""));
                at = s["parent_span_id"]
                    .as_str()
                    .and_then(|p| by_id.get(p).copied());
            }
            path.reverse();
            path.join(" > ")
        })
        .collect()
}

/// (calling service and operation, tunnel operation) → tunnel spans.
fn tunnel_kinds(trace: &Value, tally: &mut BTreeMap<(String, String), usize>) {
    let spans = trace["spans"].as_array().expect("spans");
    for tunnel in spans.iter().filter(|s| s["kind"] == "tunnel") {
        let caller = spans
            .iter()
            .find(|s| s["span_id"] == tunnel["parent_span_id"])
            .expect("a tunnel span's parent is the client span");
        let key = (
            format!("{} {}", caller["service"], caller["operation"]).replace('"', ""),
            tunnel["operation"].as_str().unwrap_or_default().to_owned(),
        );
        *tally.entry(key).or_default() += 1;
    }
}

/// The UI's percentage ("48 %", "1.2 %"): `percent` in ui/src/format.ts, whose
/// `toFixed` rounds halves up.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p == 0.0 || p >= 10.0 || p.fract() == 0.0 {
        format!("{}", (p + 0.5).floor()) + " %"
    } else {
        format!("{:.1} %", (p * 10.0 + 0.5).floor() / 10.0)
    }
}

#[test]
fn traffic_outage_and_traces_of_a_live_mesh_reach_the_api_and_the_ui() {
    let test = "traffic_outage_and_traces_of_a_live_mesh_reach_the_api_and_the_ui";
    if !nephilia_testbed::privileged(test) || !support::chromium_present() {
        return;
    }
    let mut options = UpOptions::unique();
    options.run_schedule = false;
    let mesh =
        Mesh::up(Scenario::from_yaml(SCENARIO).expect("scenario"), options).expect("mesh up");
    // One failed attempt in a bucket is enough to fail an edge, so the outage's counts
    // start with the first failure, wherever the stop falls in a bucket.
    let server = ServerProcess::start(&["--bucket-width", "2s", "--min-attempts", "1"]);
    let api = server.api();
    let _agent = start_agent(&mesh, server.grpc);
    wait_until("the agent's heartbeat", Duration::from_secs(20), || {
        let agents = api.get_json("/api/v1/agents")?;
        agents.to_string().contains(NODE).then_some(())
    });

    // 1. Healthy traffic: each call fans out to checkout → payments and to catalog. HTTP
    //    calls open a connection each; gRPC channels stay open and report interim flows.
    for _ in 0..HEALTHY_CALLS {
        assert_eq!(call(&mesh), CallOutcome::Http(200));
    }
    let graph_query = "/api/v1/graph?window=5m&level=workload";
    let shop_edges: BTreeSet<String> = [
        edge_id(CLIENT, FRONTEND_ID),
        edge_id(FRONTEND_ID, CHECKOUT),
        edge_id(FRONTEND_ID, CATALOG),
        edge_id(CHECKOUT, PAYMENTS),
    ]
    .into();
    let healthy = wait_until(
        "every healthy request and connection in the graph",
        Duration::from_secs(30),
        || {
            let edges = edges(&api.get_json(graph_query)?);
            let all_there = shop_edges.iter().all(|id| {
                edges
                    .get(id)
                    .is_some_and(|m| m["requests"] == HEALTHY_CALLS && m["mtls_share"] == 1.0)
            });
            all_there.then_some(edges)
        },
    );
    let request_bytes = format!("GET / HTTP/1.1\r\nhost: {FRONTEND}\r\n\r\n").len();
    let client_requests = api
        .get_json("/api/v1/flows?kind=request&workload=client&limit=1000")
        .expect("request records");
    let responses: Vec<u64> = client_requests["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["side"] == "client")
        .map(|r| r["response_bytes"].as_u64().expect("response_bytes"))
        .collect();
    assert_eq!(
        responses.len(),
        HEALTHY_CALLS,
        "client-side request records"
    );
    for (id, edge) in &healthy {
        let http = id.ends_with(FRONTEND_ID) || id.ends_with(CHECKOUT);
        assert_eq!(edge["protocol"], if http { "http" } else { "grpc" }, "{id}");
        assert_eq!(edge["requests"], HEALTHY_CALLS, "{id} requests");
        assert_eq!(edge["latency_kind"], "request", "{id}");
        assert_eq!(edge["latency"]["count"], HEALTHY_CALLS, "{id} latencies");
        assert_eq!(edge["error_rate"], 0.0, "{id} error rate");
        assert_eq!(edge["health"], "healthy", "{id}");
        assert_eq!(edge["mtls_share"], 1.0, "{id} is mTLS over HBONE");
        // One connection per HTTP call, the first dialling the HBONE pool and the others
        // reusing it; one long-lived connection per gRPC channel.
        let connections = if http { HEALTHY_CALLS } else { 1 };
        assert_eq!(edge["connections"], connections, "{id} connections");
        assert_eq!(
            edge["tunnel_setup"]["count"], connections,
            "{id} tunnel setups"
        );
        if http {
            assert_eq!(edge["pool_reuse_ratio"], 0.95, "{id} pool reuse");
        }
    }
    let client_edge = &healthy[&edge_id(CLIENT, FRONTEND_ID)];
    assert_eq!(client_edge["bytes_sent"], HEALTHY_CALLS * request_bytes);
    assert_eq!(client_edge["bytes_received"], responses.iter().sum::<u64>());
    assert_eq!(
        healthy.keys().cloned().collect::<BTreeSet<_>>(),
        shop_edges,
        "nothing but the shop's calls in the graph"
    );

    // 2. Each call is one trace with the whole fan-out, an HBONE span on every hop.
    let traces = api
        .get_json("/api/v1/traces?service=client&limit=100")
        .expect("traces");
    let traces = traces["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), HEALTHY_CALLS, "one trace per call");
    let client = "client:client:GET /";
    let frontend = format!("{client} > tunnel:ztunnel:HBONE > server:frontend:GET /");
    let grpc_call = "POST /nephilia.testbed.demo.Demo/Call";
    let checkout = format!(
        "{frontend} > client:frontend:GET / > tunnel:ztunnel:HBONE > server:checkout:GET /"
    );
    let payments = format!(
        "{checkout} > client:checkout:{grpc_call} > tunnel:ztunnel:HBONE > server:payments:{grpc_call}"
    );
    let catalog = format!(
        "{frontend} > client:frontend:{grpc_call} > tunnel:ztunnel:HBONE > server:catalog:{grpc_call}"
    );
    let prefixes = |path: &str| -> Vec<String> {
        let parts: Vec<&str> = path.split(" > ").collect();
        (1..=parts.len()).map(|n| parts[..n].join(" > ")).collect()
    };
    let fan_out: BTreeSet<String> = [payments, catalog]
        .iter()
        .flat_map(|p| prefixes(p))
        .collect();
    assert_eq!(fan_out.len(), 12);
    let mut tunnels = BTreeMap::new();
    for summary in traces {
        assert_eq!(summary["root_service"], "client");
        assert_eq!(summary["root_operation"], "GET /");
        assert_eq!(summary["error_count"], 0);
        let id = summary["trace_id"].as_str().expect("trace id");
        let trace = api
            .get_json(&format!("/api/v1/traces/{id}"))
            .expect("trace");
        assert_eq!(span_paths(&trace), fan_out, "trace {id}");
        tunnel_kinds(&trace, &mut tunnels);
        for span in trace["spans"].as_array().expect("spans") {
            assert_eq!(span["trace_id"], id);
            if span["kind"] == "tunnel" {
                assert_eq!(span["attributes"]["mesh.mtls"], "true");
                assert!(span["attributes"]["tunnel_setup_us"].is_string(), "{span}");
            }
        }
    }

    // Every HTTP call opened its connection; each gRPC channel was opened by the first.
    let tunnel = |caller: &str, operation: &str| (caller.to_owned(), operation.to_owned());
    let grpc_callers = [
        format!("checkout {grpc_call}"),
        format!("frontend {grpc_call}"),
    ];
    let mut expected_tunnels = BTreeMap::from([
        (tunnel("client GET /", "HBONE connect"), HEALTHY_CALLS),
        (tunnel("frontend GET /", "HBONE connect"), HEALTHY_CALLS),
    ]);
    for caller in &grpc_callers {
        expected_tunnels.insert(tunnel(caller, "HBONE connect"), 1);
        expected_tunnels.insert(tunnel(caller, "HBONE stream"), HEALTHY_CALLS - 1);
    }
    assert_eq!(tunnels, expected_tunnels);

    // 3. Payments stops while callers keep trying; then it comes back.
    let stop = Fault::StopPod {
        pod: "payments-0".into(),
    };
    let stopped_ns = support::now_ns();
    mesh.inject(stop.clone()).expect("stop payments");
    let mut failed_calls = 0;
    for _ in 0..OUTAGE_CALLS {
        assert_eq!(call(&mesh), CallOutcome::Http(502), "payments is stopped");
        failed_calls += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    mesh.revert(&stop).expect("restart payments");
    let restarted_ns = support::now_ns();
    let mut recovered_calls = 0;
    let outage = wait_until("the outage to close", Duration::from_secs(60), || {
        assert_eq!(call(&mesh), CallOutcome::Http(200), "payments is back");
        recovered_calls += 1;
        std::thread::sleep(Duration::from_millis(150));
        let outages = api.get_json("/api/v1/outages?since=10m")?;
        outages["outages"]
            .as_array()?
            .iter()
            .find(|o| o["open"] == false)
            .cloned()
    });
    // The ground truth: tunnels checkout's proxy could not open (CONNECT answered 503).
    let tunnel_failures = mesh
        .tunnel_events()
        .iter()
        .filter(|e| e.pod == "checkout-0" && e.status == 503)
        .count();
    assert!(tunnel_failures > 0, "the testbed saw failed tunnels");
    let outages = api.get_json("/api/v1/outages?since=10m").expect("outages");
    assert_eq!(
        outages["outages"].as_array().map(Vec::len),
        Some(1),
        "{outages}"
    );
    assert_eq!(outage["root_cause"]["node"], PAYMENTS, "{outage}");
    assert_eq!(outage["root_cause"]["kind"], "tunnel_failed", "{outage}");
    let evidence = outage["root_cause"]["evidence"].as_str().expect("evidence");
    assert!(
        evidence.starts_with("HBONE tunnels to payments fail: "),
        "{evidence}"
    );
    assert_eq!(outage["failures"]["tunnel_failed"], tunnel_failures);
    // Each failed call answered 502 twice: frontend to client, checkout to frontend.
    assert_eq!(outage["failures"]["http_5xx"], 2 * failed_calls);
    for kind in ["refused", "reset", "timeout", "unreachable", "grpc_error"] {
        assert_eq!(outage["failures"][kind], 0, "{kind}");
    }
    assert_eq!(outage["peak_error_rate"], 1.0);
    let affected: BTreeSet<String> = outage["affected_edges"]
        .as_array()
        .expect("affected edges")
        .iter()
        .map(|e| edge_id(e["source"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    let failing_path: BTreeSet<String> = [
        edge_id(CLIENT, FRONTEND_ID),
        edge_id(FRONTEND_ID, CHECKOUT),
        edge_id(CHECKOUT, PAYMENTS),
    ]
    .into();
    assert_eq!(affected, failing_path);
    let start_ns = outage["start_ns"].as_u64().expect("start");
    let end_ns = outage["end_ns"].as_u64().expect("end");
    assert!(
        (stopped_ns..restarted_ns).contains(&start_ns),
        "the outage starts after payments stopped and before it came back"
    );
    assert!(
        end_ns > restarted_ns - 2_000_000_000,
        "ends with the recovery"
    );

    // 4. The UI shows all of it.
    let calls = HEALTHY_CALLS + failed_calls + recovered_calls;
    let graph = api.get_json(graph_query).expect("graph");
    let frontend_checkout = &edges(&graph)[&edge_id(FRONTEND_ID, CHECKOUT)];
    assert_eq!(frontend_checkout["requests"], calls);
    assert_eq!(frontend_checkout["errors"]["http_5xx"], failed_calls);
    let checkout_payments = &edges(&graph)[&edge_id(CHECKOUT, PAYMENTS)];
    assert_eq!(
        checkout_payments["errors"]["tunnel_failed"],
        tunnel_failures
    );
    let error_rate = frontend_checkout["error_rate"]
        .as_f64()
        .expect("error rate");
    let exact = failed_calls as f64 / calls as f64;
    assert!(
        (error_rate - exact).abs() <= 0.0005,
        "{error_rate} is {exact} to 3 places"
    );
    let error_rate = percent(error_rate);
    let expect = json!({
        "nodes": [CLIENT, FRONTEND_ID, CHECKOUT, CATALOG, PAYMENTS],
        "edges": shop_edges,
        "boxes": ["bank", "shop"],
        "clicked_edge": {
            "source": FRONTEND_ID,
            "target": CHECKOUT,
            "title": "frontend → checkout",
            "label": format!("^\u{1F512} [\\d.]+ rps · {error_rate}\np95 [\\d.]+ ms · tun [\\d.]+ (µs|ms)$"),
        },
        "requests": calls.to_string(),
        "error_rate": error_rate,
        "errors": format!("http_5xx {failed_calls}"),
        "recent_failure": "GET / → HTTP 502",
        "outage": {
            "count": 1,
            "root_cause": PAYMENTS,
            "evidence": "^HBONE tunnels to payments fail: \\d+ % tunnel failures since \\d\\d:\\d\\d:\\d\\d$",
            "failures": [
                format!("tunnel failed\\s+{tunnel_failures}"),
                format!("http 5xx\\s+{}", 2 * failed_calls),
            ],
            "peak_error_rate": "100 %",
            "affected_edges": failing_path,
        },
        "trace": {
            "service": "client",
            "operation": "GET /",
            "first_spans": ["span-client:client", "span-tunnel:ztunnel", "span-server:frontend"],
            "servers": ["checkout", "payments", "catalog"],
        },
    });
    support::run_browser(
        "live-ui",
        api,
        &expect,
        &[
            "topology",
            "edge-panel",
            "outage",
            "outage-in-topology",
            "trace",
        ],
    );
}
