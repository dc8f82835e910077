//! `/metrics` in the Prometheus text format: RED counters per edge with workload labels,
//! latency quantiles over the last minute, ingest and agent drop counters, memory, and
//! OTLP export counters when `--otlp-endpoint` is set.
use std::fmt::Write;

use crate::otlp::ExportStats;
use crate::store::Store;
use crate::topology::{EdgeKey, ErrorKind, NodeKey};

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `source_workload="frontend",source_namespace="shop",...` for one edge.
fn edge_labels(store: &Store, (src, dst): EdgeKey) -> String {
    let directory = &store.topology.directory;
    let side = |prefix: &str, key: &NodeKey| {
        format!(
            "{prefix}_kind=\"{}\",{prefix}_workload=\"{}\",{prefix}_namespace=\"{}\"",
            key.kind().as_str(),
            escape(key.name()),
            escape(key.namespace().unwrap_or_default())
        )
    };
    let service = match directory.node_at(dst, crate::topology::Level::Service) {
        NodeKey::Service { hostname, .. } => hostname,
        _ => String::new(),
    };
    format!(
        "{},{},destination_service=\"{}\"",
        side("source", directory.key(src)),
        side("destination", directory.key(dst)),
        escape(&service)
    )
}

pub fn render(store: &Store, otlp: Option<ExportStats>, now_ns: u64) -> String {
    let mut out = String::new();
    let mut edges: Vec<(&EdgeKey, _)> = store.topology.totals().iter().collect();
    edges.sort_by_key(|(k, _)| **k);
    let labelled: Vec<(String, _)> = edges
        .iter()
        .map(|(k, t)| (edge_labels(store, **k), *t))
        .collect();

    header(
        &mut out,
        "nephilia_edge_requests_total",
        "counter",
        "L7 requests per edge.",
    );
    for (l, t) in &labelled {
        let _ = writeln!(out, "nephilia_edge_requests_total{{{l}}} {}", t.requests);
    }
    header(
        &mut out,
        "nephilia_edge_connections_total",
        "counter",
        "Connections (mesh flows) per edge that ended.",
    );
    for (l, t) in &labelled {
        let _ = writeln!(
            out,
            "nephilia_edge_connections_total{{{l}}} {}",
            t.connections
        );
    }
    header(
        &mut out,
        "nephilia_edge_errors_total",
        "counter",
        "Failed requests and connections per edge, by kind.",
    );
    for (l, t) in &labelled {
        for kind in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "nephilia_edge_errors_total{{{l},kind=\"{}\"}} {}",
                kind.as_str(),
                t.errors.get(kind)
            );
        }
    }
    header(
        &mut out,
        "nephilia_edge_bytes_total",
        "counter",
        "Bytes per edge; sent = source to destination.",
    );
    for (l, t) in &labelled {
        let _ = writeln!(
            out,
            "nephilia_edge_bytes_total{{{l},direction=\"sent\"}} {}",
            t.bytes_sent
        );
        let _ = writeln!(
            out,
            "nephilia_edge_bytes_total{{{l},direction=\"received\"}} {}",
            t.bytes_received
        );
    }
    header(
        &mut out,
        "nephilia_edge_latency_microseconds",
        "gauge",
        "Request (L7) or connect (L4) latency quantiles per edge over the last minute.",
    );
    let minute = store.topology.merged(
        now_ns.saturating_sub(60_000_000_000),
        now_ns.saturating_add(1),
    );
    let mut recent: Vec<_> = minute.iter().collect();
    recent.sort_by_key(|(k, _)| **k);
    for (k, m) in recent {
        if let Some((p, _)) = m.latency() {
            let l = edge_labels(store, *k);
            for (q, v) in [("0.5", p.p50_us), ("0.95", p.p95_us), ("0.99", p.p99_us)] {
                let _ = writeln!(
                    out,
                    "nephilia_edge_latency_microseconds{{{l},quantile=\"{q}\"}} {v}"
                );
            }
        }
    }

    let c = &store.counters;
    header(
        &mut out,
        "nephilia_ingest_records_total",
        "counter",
        "Records accepted, by kind.",
    );
    for (kind, n) in [
        ("connection", c.connections),
        ("mesh_flow", c.mesh_flows),
        ("request", c.requests),
    ] {
        let _ = writeln!(out, "nephilia_ingest_records_total{{kind=\"{kind}\"}} {n}");
    }
    header(
        &mut out,
        "nephilia_ingest_batches_total",
        "counter",
        "Batches accepted.",
    );
    let _ = writeln!(out, "nephilia_ingest_batches_total {}", c.batches);
    header(
        &mut out,
        "nephilia_ingest_heartbeats_total",
        "counter",
        "Heartbeats received.",
    );
    let _ = writeln!(out, "nephilia_ingest_heartbeats_total {}", c.heartbeats);
    header(
        &mut out,
        "nephilia_ingest_rejected_total",
        "counter",
        "Agent messages rejected, by reason.",
    );
    for reason in [
        "malformed",
        "version",
        "too_many_records",
        "too_large",
        "undecodable",
    ] {
        let n = c.rejected.get(reason).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "nephilia_ingest_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "nephilia_ingest_late_records_total",
        "counter",
        "Records whose time bucket was already dropped.",
    );
    let _ = writeln!(
        out,
        "nephilia_ingest_late_records_total {}",
        store.topology.late_records
    );

    header(
        &mut out,
        "nephilia_agent_drops_total",
        "counter",
        "Drop counters reported by each agent's last heartbeat.",
    );
    for a in store.agents.values() {
        for (counter, n) in &a.drop_counters {
            let _ = writeln!(
                out,
                "nephilia_agent_drops_total{{node=\"{}\",counter=\"{}\"}} {n}",
                escape(&a.node),
                escape(counter)
            );
        }
    }
    header(
        &mut out,
        "nephilia_agent_records_sent_total",
        "counter",
        "Records each agent says it sent.",
    );
    for a in store.agents.values() {
        let _ = writeln!(
            out,
            "nephilia_agent_records_sent_total{{node=\"{}\"}} {}",
            escape(&a.node),
            a.records_sent
        );
    }
    header(
        &mut out,
        "nephilia_agent_records_received_total",
        "counter",
        "Records accepted from each agent.",
    );
    for a in store.agents.values() {
        let _ = writeln!(
            out,
            "nephilia_agent_records_received_total{{node=\"{}\"}} {}",
            escape(&a.node),
            a.records_received
        );
    }

    let m = store.memory();
    header(
        &mut out,
        "nephilia_memory_bytes",
        "gauge",
        "Estimated bytes held, by store.",
    );
    for (name, bytes) in [
        ("topology", m.topology),
        ("traces", m.traces),
        ("flows", m.flows),
        ("outages", m.outages),
    ] {
        let _ = writeln!(out, "nephilia_memory_bytes{{store=\"{name}\"}} {bytes}");
    }
    header(
        &mut out,
        "nephilia_memory_limit_bytes",
        "gauge",
        "--max-memory.",
    );
    let _ = writeln!(
        out,
        "nephilia_memory_limit_bytes {}",
        store.limits().max_memory_bytes
    );
    header(
        &mut out,
        "nephilia_memory_evicted_bytes_total",
        "counter",
        "Bytes dropped early to stay under --max-memory.",
    );
    let _ = writeln!(
        out,
        "nephilia_memory_evicted_bytes_total {}",
        c.evicted_for_memory_bytes
    );
    header(
        &mut out,
        "nephilia_outages_open",
        "gauge",
        "Outages currently open.",
    );
    let _ = writeln!(out, "nephilia_outages_open {}", store.outages.open_count());
    header(
        &mut out,
        "nephilia_trace_spans",
        "gauge",
        "Spans kept for traces.",
    );
    let _ = writeln!(out, "nephilia_trace_spans {}", store.traces.span_count());
    header(
        &mut out,
        "nephilia_trace_spans_dropped_total",
        "counter",
        "Spans left out of trace views (GET /api/v1/traces/{id}) because their trace had more than 10000 spans; each answer counts its own.",
    );
    let _ = writeln!(
        out,
        "nephilia_trace_spans_dropped_total {}",
        store.traces.spans_dropped()
    );
    if let Some(otlp) = otlp {
        render_otlp(&mut out, store, otlp);
    }
    out
}

fn render_otlp(out: &mut String, store: &Store, s: ExportStats) {
    header(
        out,
        "nephilia_otlp_spans_exported_total",
        "counter",
        "Spans the OTLP collector accepted.",
    );
    let _ = writeln!(out, "nephilia_otlp_spans_exported_total {}", s.exported);
    header(
        out,
        "nephilia_otlp_spans_dropped_total",
        "counter",
        "Spans that will never reach the OTLP collector, by reason.",
    );
    for (reason, n) in [
        ("queue_full", s.dropped_queue_full),
        ("rejected", s.dropped_rejected),
        ("invalid_id", s.dropped_invalid_id),
        ("evicted", store.traces.evicted_before_export()),
    ] {
        let _ = writeln!(
            out,
            "nephilia_otlp_spans_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        out,
        "nephilia_otlp_export_failures_total",
        "counter",
        "OTLP Export calls that failed, each retry counted.",
    );
    let _ = writeln!(out, "nephilia_otlp_export_failures_total {}", s.failures);
    header(
        out,
        "nephilia_otlp_queue_spans",
        "gauge",
        "Spans waiting for the OTLP collector, the batch being sent included.",
    );
    let _ = writeln!(out, "nephilia_otlp_queue_spans {}", s.queued);
    header(
        out,
        "nephilia_otlp_held_spans",
        "gauge",
        "Spans held until their trace has been quiet for --otlp-delay.",
    );
    let _ = writeln!(
        out,
        "nephilia_otlp_held_spans {}",
        store.traces.pending_export()
    );
}
