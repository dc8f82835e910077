//! `/metrics` in the Prometheus text format: RED counters per edge with workload labels,
//! latency quantiles over the last minute, ingest and agent drop counters, memory, and
//! OTLP export counters when `--otlp-endpoint` is set.
use std::collections::HashMap;
use std::fmt::Write;

use crate::otlp::ExportStats;
use crate::store::{AgentStatus, IngestCounters, MemoryUsage, Store};
use crate::topology::metrics::Percentiles;
use crate::topology::{EdgeKey, EdgeMetrics, EdgeTotals, ErrorKind, NodeKey};

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

/// How many per-edge and per-agent series /metrics renders at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesLimits {
    /// Edges rendered: those with the most requests and connections.
    pub max_edges: usize,
    /// Agents rendered: the most recently seen.
    pub max_agents: usize,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        Self {
            max_edges: 1000,
            max_agents: 5000,
        }
    }
}

/// One edge's series: its labels, totals and last-minute latency quantiles.
struct EdgeSeries {
    labels: String,
    totals: EdgeTotals,
    latency: Option<Percentiles>,
}

/// What /metrics renders, copied out of the store under its lock so the text is written
/// without it. Per-edge and per-agent series are capped ([`SeriesLimits`]); how many were
/// left out is itself a series.
pub struct MetricsSnapshot {
    edges: Vec<EdgeSeries>,
    edges_known: usize,
    agents: Vec<AgentStatus>,
    agents_known: usize,
    counters: IngestCounters,
    late_records: u64,
    endpoints: usize,
    memory: MemoryUsage,
    memory_limit: usize,
    outages_open: usize,
    trace_spans: usize,
    trace_spans_dropped: u64,
    evicted_before_export: u64,
    held_for_export: usize,
}

impl MetricsSnapshot {
    /// Copies what /metrics needs: the busiest `limits.max_edges` edges (most requests and
    /// connections, then by id) and the `limits.max_agents` agents seen last.
    pub fn take(store: &Store, limits: SeriesLimits, now_ns: u64) -> Self {
        let topology = &store.topology;
        let mut edges: Vec<(EdgeKey, &EdgeTotals)> =
            topology.totals().iter().map(|(k, t)| (*k, t)).collect();
        let edges_known = edges.len();
        let busiest =
            |(k, t): &(EdgeKey, &EdgeTotals)| (std::cmp::Reverse(t.requests + t.connections), *k);
        if edges.len() > limits.max_edges {
            if limits.max_edges > 0 {
                edges.select_nth_unstable_by_key(limits.max_edges - 1, busiest);
            }
            edges.truncate(limits.max_edges);
        }
        edges.sort_unstable_by_key(|(k, _)| *k);
        // Latency over the last minute, for the rendered edges only.
        let slot: HashMap<EdgeKey, usize> = edges
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        let mut minute: Vec<Option<EdgeMetrics>> = vec![None; edges.len()];
        for (_, bucket) in topology.buckets(
            now_ns.saturating_sub(60_000_000_000),
            now_ns.saturating_add(1),
        ) {
            for (key, metrics) in bucket.edges() {
                if let Some(&i) = slot.get(&key) {
                    minute[i]
                        .get_or_insert_with(EdgeMetrics::default)
                        .merge(metrics);
                }
            }
        }
        let edges = edges
            .iter()
            .zip(minute)
            .map(|((key, totals), minute)| EdgeSeries {
                labels: edge_labels(store, *key),
                totals: **totals,
                latency: minute.and_then(|m| m.latency()).map(|(p, _)| p),
            })
            .collect();
        let mut agents: Vec<&AgentStatus> = store.agents().values().collect();
        let agents_known = agents.len();
        if agents.len() > limits.max_agents {
            agents.sort_unstable_by_key(|a| std::cmp::Reverse(a.last_seen_ns));
            agents.truncate(limits.max_agents);
            agents.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        }
        Self {
            edges,
            edges_known,
            agents: agents.into_iter().cloned().collect(),
            agents_known,
            counters: store.counters.clone(),
            late_records: topology.late_records,
            endpoints: topology.directory.endpoint_count(),
            memory: store.memory(),
            memory_limit: store.limits().max_memory_bytes,
            outages_open: store.outages.open_count(),
            trace_spans: store.traces.span_count(),
            trace_spans_dropped: store.traces.spans_dropped(),
            evicted_before_export: store.traces.evicted_before_export(),
            held_for_export: store.traces.pending_export(),
        }
    }

    /// The Prometheus text, with the OTLP series when export is on.
    pub fn render(&self, otlp: Option<ExportStats>) -> String {
        let mut out = String::with_capacity(4096 + self.edges.len() * 4096);
        self.render_edges(&mut out);
        self.render_ingest(&mut out);
        self.render_agents(&mut out);
        self.render_memory(&mut out);
        if let Some(otlp) = otlp {
            render_otlp(&mut out, self, otlp);
        }
        out
    }

    fn render_edges(&self, out: &mut String) {
        header(
            out,
            "nephilia_edge_requests_total",
            "counter",
            "L7 requests per edge.",
        );
        for e in &self.edges {
            let _ = writeln!(
                out,
                "nephilia_edge_requests_total{{{}}} {}",
                e.labels, e.totals.requests
            );
        }
        header(
            out,
            "nephilia_edge_connections_total",
            "counter",
            "Connections (mesh flows) per edge that ended.",
        );
        for e in &self.edges {
            let _ = writeln!(
                out,
                "nephilia_edge_connections_total{{{}}} {}",
                e.labels, e.totals.connections
            );
        }
        header(
            out,
            "nephilia_edge_errors_total",
            "counter",
            "Failed requests and connections per edge, by kind.",
        );
        for e in &self.edges {
            for kind in ErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "nephilia_edge_errors_total{{{},kind=\"{}\"}} {}",
                    e.labels,
                    kind.as_str(),
                    e.totals.errors.get(kind)
                );
            }
        }
        header(
            out,
            "nephilia_edge_bytes_total",
            "counter",
            "Bytes per edge; sent = source to destination.",
        );
        for e in &self.edges {
            let _ = writeln!(
                out,
                "nephilia_edge_bytes_total{{{},direction=\"sent\"}} {}",
                e.labels, e.totals.bytes_sent
            );
            let _ = writeln!(
                out,
                "nephilia_edge_bytes_total{{{},direction=\"received\"}} {}",
                e.labels, e.totals.bytes_received
            );
        }
        header(
            out,
            "nephilia_edge_latency_microseconds",
            "gauge",
            "Request (L7) or connect (L4) latency quantiles per edge over the last minute.",
        );
        for e in &self.edges {
            if let Some(p) = &e.latency {
                for (q, v) in [("0.5", p.p50_us), ("0.95", p.p95_us), ("0.99", p.p99_us)] {
                    let _ = writeln!(
                        out,
                        "nephilia_edge_latency_microseconds{{{},quantile=\"{q}\"}} {v}",
                        e.labels
                    );
                }
            }
        }
        header(
            out,
            "nephilia_topology_edges",
            "gauge",
            "Edges with cumulative counters kept (seen within --retention).",
        );
        let _ = writeln!(out, "nephilia_topology_edges {}", self.edges_known);
        header(
            out,
            "nephilia_topology_endpoints",
            "gauge",
            "Endpoints (workloads, services, ips) known.",
        );
        let _ = writeln!(out, "nephilia_topology_endpoints {}", self.endpoints);
        header(
            out,
            "nephilia_metrics_omitted",
            "gauge",
            "Edges and agents left out of this page by --metrics-max-edges and --metrics-max-agents.",
        );
        let _ = writeln!(
            out,
            "nephilia_metrics_omitted{{what=\"edges\"}} {}",
            self.edges_known - self.edges.len()
        );
        let _ = writeln!(
            out,
            "nephilia_metrics_omitted{{what=\"agents\"}} {}",
            self.agents_known - self.agents.len()
        );
    }

    fn render_ingest(&self, out: &mut String) {
        let c = &self.counters;
        header(
            out,
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
            out,
            "nephilia_ingest_batches_total",
            "counter",
            "Batches accepted.",
        );
        let _ = writeln!(out, "nephilia_ingest_batches_total {}", c.batches);
        header(
            out,
            "nephilia_ingest_heartbeats_total",
            "counter",
            "Heartbeats received.",
        );
        let _ = writeln!(out, "nephilia_ingest_heartbeats_total {}", c.heartbeats);
        header(
            out,
            "nephilia_ingest_rejected_total",
            "counter",
            "Agent messages rejected, by reason.",
        );
        for reason in crate::ingest::REJECT_REASONS {
            let n = c.rejected.get(reason).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "nephilia_ingest_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            out,
            "nephilia_ingest_refused_records_total",
            "counter",
            "Records refused for their time: ended before now - --retention (too_old) or lie more than 5 minutes ahead of the server's clock (in_future).",
        );
        for (reason, n) in [
            ("too_old", c.refused.too_old),
            ("in_future", c.refused.in_future),
        ] {
            let _ = writeln!(
                out,
                "nephilia_ingest_refused_records_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            out,
            "nephilia_ingest_late_records_total",
            "counter",
            "Records whose time bucket was already dropped.",
        );
        let _ = writeln!(
            out,
            "nephilia_ingest_late_records_total {}",
            self.late_records
        );
    }

    fn render_agents(&self, out: &mut String) {
        header(
            out,
            "nephilia_agent_drops_total",
            "counter",
            "Drop counters reported by each agent's last heartbeat.",
        );
        for a in &self.agents {
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
            out,
            "nephilia_agent_records_sent_total",
            "counter",
            "Records each agent says it sent.",
        );
        for a in &self.agents {
            let _ = writeln!(
                out,
                "nephilia_agent_records_sent_total{{node=\"{}\"}} {}",
                escape(&a.node),
                a.records_sent
            );
        }
        header(
            out,
            "nephilia_agent_records_received_total",
            "counter",
            "Records accepted from each agent.",
        );
        for a in &self.agents {
            let _ = writeln!(
                out,
                "nephilia_agent_records_received_total{{node=\"{}\"}} {}",
                escape(&a.node),
                a.records_received
            );
        }
        header(
            out,
            "nephilia_agent_records_refused_total",
            "counter",
            "Records refused from each agent for their time, by reason (too_old, in_future).",
        );
        for a in &self.agents {
            let node = escape(&a.node);
            for (reason, n) in [
                ("too_old", a.records_refused.too_old),
                ("in_future", a.records_refused.in_future),
            ] {
                let _ = writeln!(
                    out,
                    "nephilia_agent_records_refused_total{{node=\"{node}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
    }

    fn render_memory(&self, out: &mut String) {
        let m = &self.memory;
        header(
            out,
            "nephilia_memory_bytes",
            "gauge",
            "Estimated bytes held, by store.",
        );
        for (name, bytes) in [
            ("topology", m.topology),
            ("traces", m.traces),
            ("flows", m.flows),
            ("outages", m.outages),
            ("agents", m.agents),
        ] {
            let _ = writeln!(out, "nephilia_memory_bytes{{store=\"{name}\"}} {bytes}");
        }
        header(out, "nephilia_memory_limit_bytes", "gauge", "--max-memory.");
        let _ = writeln!(out, "nephilia_memory_limit_bytes {}", self.memory_limit);
        let c = &self.counters;
        header(
            out,
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
            out,
            "nephilia_memory_evicted_entries_total",
            "counter",
            "Edge totals, endpoints and agent statuses dropped early (least recently seen first) to stay under --max-memory.",
        );
        let e = &c.evicted_for_memory;
        for (what, n) in [
            ("edge_totals", e.edge_totals),
            ("endpoints", e.endpoints),
            ("agents", e.agents),
        ] {
            let _ = writeln!(
                out,
                "nephilia_memory_evicted_entries_total{{what=\"{what}\"}} {n}"
            );
        }
        header(
            out,
            "nephilia_outages_open",
            "gauge",
            "Outages currently open.",
        );
        let _ = writeln!(out, "nephilia_outages_open {}", self.outages_open);
        header(
            out,
            "nephilia_trace_spans",
            "gauge",
            "Spans kept for traces.",
        );
        let _ = writeln!(out, "nephilia_trace_spans {}", self.trace_spans);
        header(
            out,
            "nephilia_trace_spans_dropped_total",
            "counter",
            "Spans left out of trace views (GET /api/v1/traces/{id}) because their trace had more than 10000 spans; each answer counts its own.",
        );
        let _ = writeln!(
            out,
            "nephilia_trace_spans_dropped_total {}",
            self.trace_spans_dropped
        );
    }
}

fn render_otlp(out: &mut String, snapshot: &MetricsSnapshot, s: ExportStats) {
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
        ("evicted", snapshot.evicted_before_export),
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
    let _ = writeln!(out, "nephilia_otlp_held_spans {}", snapshot.held_for_export);
}
