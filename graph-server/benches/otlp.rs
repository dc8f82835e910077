//! `cargo bench -p nephilia-graph-server --bench otlp`: what OTLP export costs on one
//! core. Traces of four request records (frontend → checkout → payments, seen at both
//! ends) and one HBONE flow, so five spans each, 1000 a second between one pod per
//! workload, with and without traceparent. Measured: ingest with and without holding
//! spans for export, `take_settled` (runs under the store lock once a second), and
//! mapping + protobuf encoding (outside the lock).
use std::sync::Arc;
use std::time::Instant;

use nephilia_graph_server::config::HealthThresholds;
use nephilia_graph_server::otlp::{BATCH_SPANS, mapping};
use nephilia_graph_server::record::Record;
use nephilia_graph_server::store::{Limits, Store};
use nephilia_proto::v1;
use prost::Message;

const T0: u64 = 1_767_268_980_000_000_000;
const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const TRACES: u64 = 20_000;

fn peer(workload: &str, ip: String, port: u32) -> Option<v1::Peer> {
    Some(v1::Peer {
        workload: workload.into(),
        namespace: "bench".into(),
        identity: format!("spiffe://cluster.local/ns/bench/sa/{workload}"),
        pod: format!("{workload}-0"),
        ip,
        service: format!("{workload}.bench.svc.cluster.local"),
        port,
        ..v1::Peer::default()
    })
}

/// Trace `n`: four request records and the HBONE flow of the first call.
fn trace(n: u64) -> Vec<Record> {
    let at = T0 + n * MS;
    let ip = |host: u64| format!("10.0.0.{host}");
    let trace_id = format!("{:032x}", n + 1);
    let call = |side: v1::Role,
                from: (&str, u64),
                to: (&str, u64),
                start,
                us,
                span: u64,
                node: &str,
                pid| {
        let (local, remote) = match side {
            v1::Role::Client => (
                format!("{}:40000", ip(from.1)),
                format!("{}:8080", ip(to.1)),
            ),
            _ => (
                format!("{}:8080", ip(to.1)),
                format!("{}:51000", ip(from.1)),
            ),
        };
        v1::Request {
            side: side as i32,
            protocol: v1::Protocol::Http1 as i32,
            method: "GET".into(),
            path: format!("/{}", to.0),
            authority: format!("{}:8080", to.0),
            status: Some(200),
            start_ns: start,
            end_ns: start + us * 1000,
            latency_us: us,
            trace_id: Some(trace_id.clone()),
            span_id: Some(format!("{span:016x}")),
            source: peer(from.0, ip(from.1), 0),
            destination: peer(to.0, ip(to.1), 8080),
            local,
            remote,
            pid,
            node: node.into(),
            ..v1::Request::default()
        }
    };
    let (f, c, p) = (("frontend", 1), ("checkout", 2), ("payments", 3));
    let records: Vec<v1::Record> = vec![
        call(v1::Role::Client, f, c, at, 900, 2 * n + 1, "node-a", 11).into(),
        call(
            v1::Role::Server,
            f,
            c,
            at + MS / 10,
            800,
            2 * n + 1,
            "node-b",
            7,
        )
        .into(),
        call(
            v1::Role::Client,
            c,
            p,
            at + MS / 5,
            300,
            2 * n + 2,
            "node-b",
            7,
        )
        .into(),
        call(
            v1::Role::Server,
            c,
            p,
            at + MS / 4,
            200,
            2 * n + 2,
            "node-c",
            9,
        )
        .into(),
        v1::MeshFlow {
            start_ns: at - MS,
            end_ns: Some(at + 2 * MS),
            side: v1::Role::Client as i32,
            source: peer(f.0, ip(f.1), 0),
            original_destination: format!("{}:8080", ip(c.1)),
            destination: peer(c.0, ip(c.1), 8080),
            path: v1::MeshPath::Hbone as i32,
            mtls: true,
            tunnel_setup_us: Some(700),
            tunnel_reused: Some(false),
            outcome: v1::Outcome::Closed as i32,
            node: "node-a".into(),
            ..v1::MeshFlow::default()
        }
        .into(),
    ];
    records
        .into_iter()
        .map(|r| Record::try_from(r).expect("valid record"))
        .collect()
}

fn store(export: bool) -> Store {
    let limits = Limits {
        retention_ns: 3600 * SECOND,
        max_memory_bytes: 8 << 30,
    };
    let mut store = Store::new(10 * SECOND, HealthThresholds::default(), limits, 50_000);
    if export {
        store.traces.track_export();
    }
    store
}

/// Records per second into `store`, in batches of 1000 records.
fn ingest(store: &mut Store, batches: &[Vec<Record>]) -> f64 {
    let start = Instant::now();
    let mut count = 0;
    for batch in batches {
        count += batch.len();
        store.ingest("node-a", batch.clone(), T0);
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// Ingest `TRACES` traces and export them; one line of figures.
fn run(traceparent: bool) {
    let mut records: Vec<Record> = (0..TRACES).flat_map(trace).collect();
    if !traceparent {
        for record in &mut records {
            if let Record::Request(r) = record {
                let r = Arc::make_mut(r);
                r.trace_id = None;
                r.span_id = None;
            }
        }
    }
    let batches: Vec<Vec<Record>> = records.chunks(1000).map(<[Record]>::to_vec).collect();
    ingest(&mut store(true), &batches[..10]); // warm-up
    let without = ingest(&mut store(false), &batches);
    let mut s = store(true);
    let with = ingest(&mut s, &batches);

    let start = Instant::now();
    let settled = s.traces.take_settled(T0 + 60 * SECOND, 10 * SECOND);
    let settle = start.elapsed();
    assert_eq!(settled.len() as u64, 5 * TRACES, "five spans per trace");

    let start = Instant::now();
    let mut bytes = 0;
    for chunk in settled.chunks(BATCH_SPANS) {
        let spans = chunk
            .iter()
            .map(|e| mapping::span(e).expect("valid ids"))
            .collect();
        bytes += mapping::export_request(spans).encode_to_vec().len();
    }
    let map = start.elapsed();
    let spans = settled.len() as f64;
    println!(
        "{:<18}{without:>10.0}{with:>10.0}{:>12.0}{:>10.1}{:>12.0}{:>8.0}",
        if traceparent {
            "traceparent"
        } else {
            "no traceparent"
        },
        spans / settle.as_secs_f64(),
        settle.as_secs_f64() * 1e6 / spans,
        spans / map.as_secs_f64(),
        bytes as f64 / spans,
    );
}

fn main() {
    println!(
        "OTLP export, one core: {TRACES} traces of 5 spans, 1000 traces/s from one pod per workload"
    );
    println!(
        "{:<18}{:>10}{:>10}{:>12}{:>10}{:>12}{:>8}",
        "", "ingest/s", "ingest/s", "settle", "lock ms", "map+encode", "bytes"
    );
    println!(
        "{:<18}{:>10}{:>10}{:>12}{:>10}{:>12}{:>8}",
        "", "export off", "on", "spans/s", "/1k spans", "spans/s", "/span"
    );
    run(true);
    run(false);
}
