//! A server that hostile or broken input cannot take down, on the real `nephilia-server`:
//! records whose time lies outside what the server keeps are refused and counted without
//! stopping maintenance, and memory stays under `--max-memory` however many endpoints and
//! nodes report, with the last minute's graph intact and /metrics bounded.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nephilia_proto::IngestClient;
use nephilia_proto::v1::{
    AgentMessage, Heartbeat, MeshFlow, MeshPath, Outcome, Protocol, Record, Request, Role,
};
use serde_json::Value;

mod support;

use support::{Api, ServerProcess, now_ns, peer, wait_until};

const SECOND: u64 = 1_000_000_000;
const MIB: u64 = 1 << 20;

/// A closed client-side flow from `source` to `destination` (a workload, or an ip when
/// `workload` is empty) ending at `end_ns`.
fn flow(
    node: &str,
    source: (&str, &str),
    destination: (&str, &str),
    end_ns: u64,
    outcome: Outcome,
) -> Record {
    MeshFlow {
        start_ns: end_ns - 1_000_000,
        end_ns: Some(end_ns),
        side: Role::Client as i32,
        source: peer(source.0, source.1),
        original_destination: format!("{}:443", destination.1),
        destination: peer(destination.0, destination.1),
        path: MeshPath::Passthrough as i32,
        outcome: outcome as i32,
        bytes_sent: 100,
        bytes_received: 1000,
        bytes_sent_delta: 100,
        bytes_received_delta: 1000,
        node: node.into(),
        ..MeshFlow::default()
    }
    .into()
}

fn heartbeat(node: &str) -> AgentMessage {
    AgentMessage::heartbeat(Heartbeat {
        node: node.into(),
        agent_version: "0.1.0".into(),
        kernel_release: "6.12.0".into(),
        ..Heartbeat::current()
    })
}

/// One agent stream: a heartbeat and one batch from `node`; the records accepted.
async fn report(grpc: SocketAddr, node: &str, records: Vec<Record>) -> u64 {
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to ingest");
    report_on(&mut client, node, records).await
}

async fn report_on(
    client: &mut IngestClient<tonic::transport::Channel>,
    node: &str,
    records: Vec<Record>,
) -> u64 {
    let messages = vec![heartbeat(node), AgentMessage::batch(node, 1, records)];
    client
        .report(tokio_stream::iter(messages))
        .await
        .unwrap_or_else(|status| panic!("{node}: ingest refused the stream: {status}"))
        .into_inner()
        .records_accepted
}

/// Ten refused connections from `source` to `destination` (workloads) just now: a failing
/// edge that opens an outage.
fn refusals(node: &str, source: (&str, &str), destination: (&str, &str)) -> Vec<Record> {
    let now = now_ns();
    (0..10)
        .map(|i| {
            flow(
                node,
                source,
                destination,
                now - SECOND + i * 1_000_000,
                Outcome::Refused,
            )
        })
        .collect()
}

/// The value of the series `name` (with its labels, exactly) in a /metrics page.
fn series(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn outages(api: Api) -> Option<Vec<Value>> {
    let doc = api.get_json("/api/v1/outages?since=15m")?;
    doc["outages"].as_array().cloned()
}

#[tokio::test]
async fn a_record_from_the_far_future_is_refused_and_maintenance_keeps_judging() {
    let mut server = ServerProcess::start(&["--bucket-width", "1s"]);
    let (api, grpc) = (server.api(), server.grpc);

    // node-a's failing edge, and one request whose end lies at the end of u64 time: its
    // bucket overflowed the outage detector's arithmetic and killed the maintenance task.
    let mut records = refusals(
        "node-a",
        ("checkout", "10.0.1.20"),
        ("payments", "10.0.2.30"),
    );
    let now = now_ns();
    records.push(
        Request {
            side: Role::Client as i32,
            protocol: Protocol::Http1 as i32,
            method: "GET".into(),
            path: "/cart".into(),
            status: Some(200),
            start_ns: now,
            end_ns: u64::MAX - 5,
            latency_us: 500,
            source: peer("frontend", "10.0.1.10"),
            destination: peer("checkout", "10.0.1.20"),
            local: "10.0.1.10:40000".into(),
            remote: "10.0.1.20:8080".into(),
            node: "node-a".into(),
            ..Request::default()
        }
        .into(),
    );
    let accepted = report(grpc, "node-a", records).await;

    // The outage opens, and closes two quiet buckets later.
    wait_until(
        "the payments outage to close",
        Duration::from_secs(20),
        || {
            outages(api)?
                .iter()
                .any(|o| {
                    o["open"] == false && o["affected_workloads"].to_string().contains("payments")
                })
                .then_some(())
        },
    );
    // Past the tick that would have judged the far-future bucket.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Outages after it are still judged: maintenance is alive.
    report(
        grpc,
        "node-b",
        refusals("node-b", ("cart", "10.0.3.10"), ("inventory", "10.0.3.20")),
    )
    .await;
    wait_until("the inventory outage", Duration::from_secs(20), || {
        outages(api)?
            .iter()
            .any(|o| o["affected_workloads"].to_string().contains("inventory"))
            .then_some(())
    });
    assert!(server.running(), "the server exited");
    assert_eq!(api.get("/readyz").map(|(status, _)| status), Some(200));

    // The record was refused, counted for its node, and the stream said so.
    assert_eq!(accepted, 10);
    let agents = api.get_json("/api/v1/agents").expect("agents");
    let node_a = agents["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["node"] == "node-a"))
        .unwrap_or_else(|| panic!("node-a missing in {agents}"));
    assert_eq!(node_a["records_received"], 10);
    assert_eq!(
        node_a["records_refused"],
        serde_json::json!({"too_old": 0, "in_future": 1})
    );
    let (status, page) = api.get("/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        series(
            &page,
            "nephilia_ingest_refused_records_total{reason=\"in_future\"}"
        ),
        Some(1)
    );
    assert_eq!(
        series(
            &page,
            "nephilia_agent_records_refused_total{node=\"node-a\",reason=\"in_future\"}"
        ),
        Some(1)
    );
}

/// `10.a.b.c` for the k-th external address.
fn external_ip(k: u64) -> String {
    format!("10.{}.{}.{}", 100 + (k >> 16), (k >> 8) & 255, k & 255)
}

const NODES: u64 = 10_000;
const FLOWS_PER_NODE: u64 = 50;
/// The last nodes report the last minute (10 000 flows); the others the 53 minutes before.
const RECENT_NODES: u64 = 200;
/// Bytes a running server holds beyond its estimate: code and runtime (7 MiB at start),
/// what the allocator keeps between two trims while 35 000 records a second churn through
/// (~20 MiB), the graph response for 10 000 edges (~13 MiB). Measured peak: 103 MiB.
const FIXED_OVERHEAD: u64 = 48 * MIB;

/// One fake node's batch: 50 flows, each to a new external address, ending at `end_ns`
/// plus up to 49 ms.
fn fake_node_batch(n: u64, end_ns: u64) -> (String, Vec<Record>) {
    let node = format!("fake-node-{n:05}");
    let records = (0..FLOWS_PER_NODE)
        .map(|j| {
            let k = n * FLOWS_PER_NODE + j;
            let client = format!("client-{}", k % 10);
            let ip = external_ip(k);
            flow(
                &node,
                (&client, &format!("10.200.0.{}", k % 10)),
                ("", &ip),
                end_ns + j * 1_000_000,
                Outcome::Closed,
            )
        })
        .collect();
    (node, records)
}

#[tokio::test]
async fn memory_stays_under_the_bound_with_500k_external_ips_and_10k_nodes() {
    let server = ServerProcess::start(&["--max-memory", "64MiB"]);
    let (api, grpc) = (server.api(), server.grpc);
    let (baseline, _) = server.rss();
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to ingest");
    let started = Instant::now();

    // 490 000 flows spread over the 53 minutes up to 2 minutes ago, oldest first.
    let now = now_ns();
    let bulk_start = now - 55 * 60 * SECOND;
    let bulk_nodes = NODES - RECENT_NODES;
    let step = 53 * 60 * SECOND / bulk_nodes;
    for n in 0..bulk_nodes {
        let (node, records) = fake_node_batch(n, bulk_start + n * step);
        assert_eq!(report_on(&mut client, &node, records).await, FLOWS_PER_NODE);
    }
    // The last minute: 10 000 flows to 10 000 more addresses, within the last 20 s.
    let now = now_ns();
    let mut recent = BTreeSet::new();
    for n in bulk_nodes..NODES {
        let end = now - 20 * SECOND + (n - bulk_nodes) * 90_000_000;
        let (node, records) = fake_node_batch(n, end);
        recent.extend((0..FLOWS_PER_NODE).map(|j| external_ip(n * FLOWS_PER_NODE + j)));
        assert_eq!(report_on(&mut client, &node, records).await, FLOWS_PER_NODE);
    }
    let graph = api.get_json("/api/v1/graph?window=1m").expect("graph");
    eprintln!(
        "ingested {} flows from {NODES} nodes in {:?}",
        NODES * FLOWS_PER_NODE,
        started.elapsed()
    );

    // Resident memory stayed within the bound plus what any server holds.
    let (rss, peak) = server.rss();
    eprintln!(
        "RSS {} MiB (peak {} MiB, {} MiB at start)",
        rss / MIB,
        peak / MIB,
        baseline / MIB,
    );
    assert!(
        peak <= 64 * MIB + FIXED_OVERHEAD,
        "peak RSS {} MiB over 64 MiB + {} MiB",
        peak / MIB,
        FIXED_OVERHEAD / MIB
    );
    let page = api.get("/metrics").map(|(_, page)| page).expect("/metrics");
    let estimate: u64 = ["topology", "traces", "flows", "outages", "agents"]
        .iter()
        .map(|store| {
            series(
                &page,
                &format!("nephilia_memory_bytes{{store=\"{store}\"}}"),
            )
            .unwrap_or_else(|| panic!("no memory series for {store}"))
        })
        .sum();
    assert!(estimate <= 64 * MIB, "estimate {estimate} over the bound");

    // The last minute's graph is whole: every recent address once, nothing else external.
    let mut seen = BTreeSet::new();
    for edge in graph["edges"].as_array().expect("edges") {
        let target = edge["target"].as_str().unwrap_or_default();
        if let Some(ip) = target.strip_prefix("external:") {
            assert_eq!(edge["connections"], 1, "{edge}");
            assert_eq!(edge["bytes_sent"], 100, "{edge}");
            assert!(seen.insert(ip.to_owned()), "{ip} twice");
        }
    }
    assert_eq!(seen.len(), recent.len());
    assert!(seen == recent, "the last minute's external edges differ");

    // Old entries went, counted; /metrics renders at most --metrics-max-edges edges.
    let evicted = |what: &str| {
        series(
            &page,
            &format!("nephilia_memory_evicted_entries_total{{what=\"{what}\"}}"),
        )
        .unwrap_or_default()
    };
    assert!(
        evicted("edge_totals") > 0 && evicted("endpoints") > 0,
        "{page:.2000}"
    );
    let edges = series(&page, "nephilia_topology_edges").expect("edge count");
    assert!(edges >= recent.len() as u64, "{edges}");
    let rendered = page
        .lines()
        .filter(|l| l.starts_with("nephilia_edge_requests_total{"))
        .count() as u64;
    assert_eq!(rendered, 1000);
    assert_eq!(
        series(&page, "nephilia_metrics_omitted{what=\"edges\"}"),
        Some(edges - 1000)
    );
    let agents = api.get_json("/api/v1/agents").expect("agents");
    let agents = agents["agents"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(
        series(&page, "nephilia_metrics_omitted{what=\"agents\"}"),
        Some(agents.saturating_sub(5000))
    );
    assert!(page.len() < 8 << 20, "/metrics is {} bytes", page.len());
}
