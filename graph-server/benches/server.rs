//! `cargo bench -p nephilia-graph-server --bench server`: ingest records/s on one core and
//! graph query latency (p50/p95 over the HTTP router, JSON included) at 100, 1 000 and
//! 10 000 edges, side by side. Targets (issue 6): ≥ 200 000 records/s per core; graph p95
//! under 100 ms at 10 000 edges.
//!
//! Ingest runs in alternating rounds against a baseline on the same batches: decode and
//! validate only (what the wire costs before the store sees a record). Medians of the
//! rounds are printed with their ratio, so a slow moment of the machine shows in both.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request as HttpRequest;
use http_body_util::BodyExt;
use nephilia_graph_server::api::{AppState, Clock, app};
use nephilia_graph_server::config::HealthThresholds;
use nephilia_graph_server::ingest::validate;
use nephilia_graph_server::store::{Limits, Store};
use nephilia_graph_server::topology::Level;
use nephilia_proto::v1::{self, AgentMessage, agent_message};
use prost::Message;
use tower::ServiceExt;

const T0: u64 = 1_767_268_980_000_000_000;
const SECOND: u64 = 1_000_000_000;
const BATCH: usize = 1000;
/// Ingest rounds per size, each a baseline pass and a full pass.
const ROUNDS: usize = 5;

fn peer(workload: String, ip: String) -> Option<v1::Peer> {
    Some(v1::Peer {
        namespace: "bench".into(),
        identity: format!("spiffe://cluster.local/ns/bench/sa/{workload}"),
        pod: format!("{workload}-0"),
        service: format!("{workload}.bench.svc.cluster.local"),
        port: 8080,
        workload,
        ip,
        ..v1::Peer::default()
    })
}

/// Record `i` of a mix over `edges` edges spread over one minute: half requests, a
/// third mesh flows, the rest connection records; 2 % of calls fail.
fn record(i: usize, edges: usize) -> v1::Record {
    let edge = i % edges;
    let (src, dst) = (edge % 100, edge / 100);
    let at = T0 + (i as u64 * 7_919 % 60_000) * 1_000_000;
    let source = peer(
        format!("client-{src}"),
        format!("10.1.{}.{}", src / 250, src % 250 + 1),
    );
    let destination = peer(
        format!("service-{dst}"),
        format!("10.2.{}.{}", dst / 250, dst % 250 + 1),
    );
    let failed = i.is_multiple_of(50);
    match i % 6 {
        0..=2 => v1::Request {
            side: v1::Role::Client as i32,
            protocol: v1::Protocol::Http1 as i32,
            method: "GET".into(),
            path: "/items/{id}".into(),
            authority: "service".into(),
            status: Some(if failed { 503 } else { 200 }),
            start_ns: at,
            end_ns: at + 1_500_000,
            latency_us: 1_000 + (i as u64 % 997),
            request_bytes: 100,
            response_bytes: 2_000,
            source,
            destination,
            local: "10.1.0.1:40000".into(),
            remote: "10.2.0.1:8080".into(),
            pid: 1000 + src as u32,
            node: "node-a".into(),
            ..v1::Request::default()
        }
        .into(),
        3 | 4 => v1::MeshFlow {
            start_ns: at - 5_000_000,
            end_ns: Some(at),
            side: v1::Role::Client as i32,
            source,
            original_destination: "10.2.0.1:8080".into(),
            destination,
            path: v1::MeshPath::Hbone as i32,
            mtls: true,
            tunnel_setup_us: Some(500 + (i as u64 % 300)),
            tunnel_reused: Some(!i.is_multiple_of(3)),
            bytes_sent: 1_000,
            bytes_received: 20_000,
            bytes_sent_delta: 1_000,
            bytes_received_delta: 20_000,
            outcome: if failed {
                v1::Outcome::Refused
            } else {
                v1::Outcome::Closed
            } as i32,
            node: "node-a".into(),
            ..v1::MeshFlow::default()
        }
        .into(),
        _ => v1::Connection {
            start_ns: at - 5_000_000,
            end_ns: Some(at),
            pid: 1000,
            comm: "client".into(),
            role: v1::Role::Client as i32,
            local: "10.1.0.1:40000".into(),
            remote: "10.2.0.1:8080".into(),
            bytes_sent: 1_000,
            bytes_received: 20_000,
            outcome: v1::Outcome::Closed as i32,
            connect_latency_us: Some(80),
            ..v1::Connection::default()
        }
        .into(),
    }
}

fn store() -> Store {
    let limits = Limits {
        retention_ns: 3600 * SECOND,
        max_memory_bytes: 8 << 30,
    };
    Store::new(10 * SECOND, HealthThresholds::default(), limits, 50_000)
}

/// Encoded batches, as they come off the wire.
fn encoded(records: usize, edges: usize) -> Vec<Vec<u8>> {
    (0..records)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .enumerate()
        .map(|(n, chunk)| {
            let records = chunk.iter().map(|&i| record(i, edges)).collect();
            AgentMessage::batch("node-a", n as u64, records).encode_to_vec()
        })
        .collect()
}

/// Decode + validate, then aggregate into `store` unless it is `None` (the baseline), on
/// this thread; records per second.
fn ingest(mut store: Option<&mut Store>, batches: &[Vec<u8>]) -> f64 {
    let start = Instant::now();
    let mut count = 0;
    for bytes in batches {
        let message = AgentMessage::decode(bytes.as_slice()).expect("valid encoding");
        let Some(agent_message::Body::Batch(batch)) = message.body else {
            unreachable!("only batches here")
        };
        let (node, records) = validate(batch, None).expect("valid batch");
        count += records.len();
        match store.as_deref_mut() {
            Some(store) => {
                store.ingest(&node, records, T0 + 60 * SECOND);
            }
            None => drop(std::hint::black_box(records)),
        }
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

struct Row {
    edges: usize,
    records_per_second: f64,
    decode_records_per_second: f64,
    graph_edges: usize,
    p50_ms: f64,
    p95_ms: f64,
    memory_mib: f64,
    aggregation_p50_ms: f64,
    body_mib: f64,
}

fn run(edges: usize, rt: &tokio::runtime::Runtime) -> Row {
    // Enough records that every edge has traffic in all six buckets of the minute.
    let records = (edges * 24).max(200_000);
    let batches = encoded(records, edges);
    // Warm-up pass on a separate store so allocation of the directory is not timed.
    ingest(Some(&mut store()), &batches[..batches.len().min(20)]);
    let (mut full, mut baseline) = (Vec::new(), Vec::new());
    let mut s = store();
    for _ in 0..ROUNDS {
        baseline.push(ingest(None, &batches));
        let mut fresh = store();
        full.push(ingest(Some(&mut fresh), &batches));
        // The last round's store answers the queries; dropping one is not timed.
        s = fresh;
    }
    let records_per_second = median(full);
    let decode_records_per_second = median(baseline);
    let memory_mib = s.memory().total as f64 / (1 << 20) as f64;
    let state = Arc::new(AppState::new(s, None, Clock::Fixed(T0 + 60 * SECOND)));
    let router = app(state.clone());
    let mut body_len = 0;
    let mut times = Vec::new();
    let mut graph_edges = 0;
    for _ in 0..25 {
        let start = Instant::now();
        let body = rt.block_on(async {
            let response = router
                .clone()
                .oneshot(
                    HttpRequest::get("/api/v1/graph?window=1m")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap().to_bytes()
        });
        times.push(start.elapsed());
        body_len = body.len();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        graph_edges = value["edges"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    // The same query without HTTP and JSON: how much is aggregation.
    let mut aggregation = Vec::new();
    for _ in 0..10 {
        let store = state.store();
        let start = Instant::now();
        let (from, to) = (T0, T0 + 60 * SECOND);
        let view = store
            .topology
            .graph_view(Level::Workload, None, from, to, &store.thresholds);
        aggregation.push(start.elapsed());
        assert_eq!(view.edges.len(), graph_edges);
    }
    aggregation.sort();
    Row {
        aggregation_p50_ms: percentile(&aggregation, 0.5),
        body_mib: body_len as f64 / (1 << 20) as f64,
        edges,
        records_per_second,
        decode_records_per_second,
        graph_edges,
        p50_ms: percentile(&times, 0.5),
        p95_ms: percentile(&times, 0.95),
        memory_mib,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rows: Vec<Row> = [100, 1_000, 10_000]
        .into_iter()
        .map(|e| run(e, &rt))
        .collect();
    println!(
        "graph server benchmark: one core, {BATCH}-record batches (decode + validate + aggregate, median of {ROUNDS} rounds), graph over 1 minute via the router"
    );
    print!("{:<28}", "");
    for r in &rows {
        print!("{:>14}", format!("{} edges", r.edges));
    }
    println!();
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        print!("{name:<28}");
        for r in &rows {
            print!("{:>14}", f(r));
        }
        println!();
    };
    line("ingest records/s per core", &|r| {
        format!("{:.0}", r.records_per_second)
    });
    line("  baseline: decode + validate", &|r| {
        format!("{:.0}", r.decode_records_per_second)
    });
    line("  ingest / baseline", &|r| {
        format!("{:.2}", r.records_per_second / r.decode_records_per_second)
    });
    line("graph edges returned", &|r| r.graph_edges.to_string());
    line("graph query p50 ms", &|r| format!("{:.2}", r.p50_ms));
    line("graph query p95 ms", &|r| format!("{:.2}", r.p95_ms));
    line("  of which aggregation p50", &|r| {
        format!("{:.2}", r.aggregation_p50_ms)
    });
    line("  response MiB", &|r| format!("{:.1}", r.body_mib));
    line("memory estimate MiB", &|r| format!("{:.1}", r.memory_mib));
    println!("targets: >= 200000 records/s per core; graph p95 < 100 ms at 10000 edges");
}
