//! Everything the server knows, behind one lock: topology, outages, traces, recent
//! records and agent status, with retention and the memory bound applied in one place.
use std::collections::BTreeMap;
use std::sync::Arc;

use nephilia_proto::v1;
use serde::Serialize;

use crate::config::HealthThresholds;
use crate::flows::RecentRecords;
use crate::outage::OutageDetector;
use crate::record::Record;
use crate::topology::Topology;
use crate::trace::TraceStore;

/// How far ahead of the server's clock a record's time may lie: agents' clocks drift, but
/// not by minutes. Records further ahead are refused rather than kept in buckets that no
/// window reaches (and whose ends overflow bucket arithmetic near `u64::MAX`).
pub const MAX_CLOCK_AHEAD_NS: u64 = 300_000_000_000;

/// Records refused because their time lay outside `[now − --retention, now + 5 min]`.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RefusedRecords {
    /// Ended before `now − --retention`: older than anything kept.
    pub too_old: u64,
    /// Started or ended more than [`MAX_CLOCK_AHEAD_NS`] after the server's clock.
    pub in_future: u64,
}

impl RefusedRecords {
    pub fn total(&self) -> u64 {
        self.too_old + self.in_future
    }

    fn merge(&mut self, other: &Self) {
        self.too_old += other.too_old;
        self.in_future += other.in_future;
    }
}

/// What the server knows of one node's agent: its last heartbeat and what it reported.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub node: String,
    /// From the last heartbeat; empty until one arrived.
    pub agent_version: String,
    pub kernel_release: String,
    pub attached_programs: Vec<String>,
    pub drop_counters: BTreeMap<String, u64>,
    pub records_sent: u64,
    /// Records this server accepted from the node.
    pub records_received: u64,
    /// Records this server refused from the node for their time.
    pub records_refused: RefusedRecords,
    /// 0 until the first heartbeat.
    pub last_heartbeat_ns: u64,
    /// Last heartbeat or batch; agents silent for `--retention` are forgotten.
    pub last_seen_ns: u64,
}

impl AgentStatus {
    fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            agent_version: String::new(),
            kernel_release: String::new(),
            attached_programs: Vec::new(),
            drop_counters: BTreeMap::new(),
            records_sent: 0,
            records_received: 0,
            records_refused: RefusedRecords::default(),
            last_heartbeat_ns: 0,
            last_seen_ns: 0,
        }
    }

    /// Estimated bytes held, its entry in [`Store::agents`] included.
    fn bytes(&self) -> usize {
        let strings = heap_bytes(self.node.len())
            + heap_bytes(self.agent_version.len())
            + heap_bytes(self.kernel_release.len());
        let programs: usize = self
            .attached_programs
            .iter()
            .map(|p| size_of::<String>() + heap_bytes(p.len()))
            .sum();
        let counters: usize = self
            .drop_counters
            .keys()
            .map(|c| size_of::<(String, u64)>() + BTREE_ENTRY_OVERHEAD + heap_bytes(c.len()))
            .sum();
        // The map's key is a second copy of the node name.
        size_of::<(String, Self)>()
            + BTREE_ENTRY_OVERHEAD
            + heap_bytes(self.node.len())
            + strings
            + programs
            + counters
    }
}

/// Bytes a heap allocation of `len` bytes takes from the allocator (glibc: 8 bytes of
/// header, 16-byte granules, 32 bytes at least); 0 for an empty string, which allocates
/// nothing.
pub fn heap_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8 + 15) & !15).max(32)
    }
}

/// Rough bytes per B-tree entry beyond the entry itself (its share of the node).
const BTREE_ENTRY_OVERHEAD: usize = 16;

/// Ingest counters exported on /metrics.
#[derive(Debug, Default, Clone)]
pub struct IngestCounters {
    pub connections: u64,
    pub mesh_flows: u64,
    pub requests: u64,
    pub batches: u64,
    pub heartbeats: u64,
    /// Rejected messages by reason (malformed, too_large, version, ...).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Records refused for their time, all nodes together (also counted per agent).
    pub refused: RefusedRecords,
    /// Bytes freed by evicting the oldest data to stay under --max-memory.
    pub evicted_for_memory_bytes: u64,
    /// Entries evicted early (before --retention) to stay under --max-memory.
    pub evicted_for_memory: EvictedEntries,
}

/// Entries without a time bucket of their own, evicted by age when the memory bound
/// needs room: least recently seen first.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvictedEntries {
    /// Per-edge cumulative counters (the `nephilia_edge_*_total` series).
    pub edge_totals: u64,
    /// Endpoints (workloads, services, ips) no kept edge or open outage refers to.
    pub endpoints: u64,
    /// Agent statuses.
    pub agents: u64,
}

/// What [`Store::ingest`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub refused: RefusedRecords,
}

/// Limits applied by [`Store::maintain`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retention_ns: u64,
    pub max_memory_bytes: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct MemoryUsage {
    pub topology: usize,
    pub traces: usize,
    pub flows: usize,
    pub outages: usize,
    pub agents: usize,
    pub total: usize,
}

#[derive(Debug)]
pub struct Store {
    pub topology: Topology,
    pub outages: OutageDetector,
    pub traces: TraceStore,
    pub flows: RecentRecords,
    agents: BTreeMap<String, AgentStatus>,
    agents_bytes: usize,
    pub counters: IngestCounters,
    pub thresholds: HealthThresholds,
    limits: Limits,
}

/// Why a record's time is refused.
enum TimeVerdict {
    Kept,
    TooOld,
    InFuture,
}

/// A record is kept when it ended within `[now − retention, now + MAX_CLOCK_AHEAD_NS]`.
/// Open connections and flows (no end yet) are counted at `now`, so only their start must
/// not lie ahead: a gRPC channel may have been open for longer than the retention.
fn judge_time(record: &Record, now_ns: u64, retention_ns: u64) -> TimeVerdict {
    let (start_ns, end_ns) = match record {
        Record::Connection(c) => (c.start_ns, c.end_ns),
        Record::MeshFlow(f) => (f.start_ns, f.end_ns),
        Record::Request(r) => (r.start_ns, Some(r.end_ns)),
    };
    let latest = end_ns.unwrap_or(start_ns).max(start_ns);
    if latest > now_ns.saturating_add(MAX_CLOCK_AHEAD_NS) {
        TimeVerdict::InFuture
    } else if end_ns.is_some_and(|end| end < now_ns.saturating_sub(retention_ns)) {
        TimeVerdict::TooOld
    } else {
        TimeVerdict::Kept
    }
}

impl Store {
    pub fn new(
        bucket_width_ns: u64,
        thresholds: HealthThresholds,
        limits: Limits,
        max_flows: usize,
    ) -> Self {
        Self {
            topology: Topology::new(bucket_width_ns),
            outages: OutageDetector::new(thresholds),
            traces: TraceStore::new(),
            flows: RecentRecords::new(max_flows),
            agents: BTreeMap::new(),
            agents_bytes: 0,
            counters: IngestCounters::default(),
            thresholds,
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Agents by node name.
    pub fn agents(&self) -> &BTreeMap<String, AgentStatus> {
        &self.agents
    }

    /// The status of `node`, made if missing, seen at `now_ns`.
    fn agent(&mut self, node: &str, now_ns: u64) -> &mut AgentStatus {
        if !self.agents.contains_key(node) {
            let status = AgentStatus::new(node);
            self.agents_bytes += status.bytes();
            self.agents.insert(node.to_owned(), status);
        }
        let agent = self.agents.get_mut(node).expect("inserted above");
        agent.last_seen_ns = agent.last_seen_ns.max(now_ns);
        agent
    }

    /// Adds one validated batch from `node`, then keeps memory under the bound. Records
    /// whose time lies outside `[now − retention, now + 5 min]` are refused and counted
    /// (per node and in total); the others are kept.
    pub fn ingest(&mut self, node: &str, records: Vec<Record>, now_ns: u64) -> IngestOutcome {
        self.counters.batches += 1;
        let mut outcome = IngestOutcome::default();
        for record in records {
            match judge_time(&record, now_ns, self.limits.retention_ns) {
                TimeVerdict::Kept => outcome.accepted += 1,
                TimeVerdict::TooOld => {
                    outcome.refused.too_old += 1;
                    continue;
                }
                TimeVerdict::InFuture => {
                    outcome.refused.in_future += 1;
                    continue;
                }
            }
            match &record {
                Record::Connection(_) => self.counters.connections += 1,
                Record::MeshFlow(flow) => {
                    self.counters.mesh_flows += 1;
                    self.topology.add_flow(flow, now_ns);
                    self.traces.add_flow(Arc::clone(flow));
                }
                Record::Request(request) => {
                    self.counters.requests += 1;
                    self.topology.add_request(request);
                    self.traces.add_request(Arc::clone(request), now_ns);
                }
            }
            self.flows.push(record);
        }
        self.counters.refused.merge(&outcome.refused);
        let agent = self.agent(node, now_ns);
        agent.records_received += outcome.accepted;
        agent.records_refused.merge(&outcome.refused);
        self.enforce_memory();
        outcome
    }

    pub fn heartbeat(&mut self, heartbeat: v1::Heartbeat, now_ns: u64) {
        self.counters.heartbeats += 1;
        let agent = self.agent(&heartbeat.node, now_ns);
        let before = agent.bytes();
        agent.agent_version = heartbeat.agent_version;
        agent.kernel_release = heartbeat.kernel_release;
        agent.attached_programs = heartbeat.attached_programs;
        agent.drop_counters = heartbeat.drop_counters.into_iter().collect();
        agent.records_sent = heartbeat.records_sent;
        agent.last_heartbeat_ns = now_ns;
        let after = agent.bytes();
        self.agents_bytes = self.agents_bytes + after - before;
        self.enforce_memory();
    }

    pub fn reject(&mut self, reason: &'static str) {
        *self.counters.rejected.entry(reason).or_default() += 1;
    }

    /// Periodic work: judge finished buckets for outages, apply retention and the bound.
    pub fn maintain(&mut self, now_ns: u64) {
        self.outages.advance(&self.topology, now_ns);
        let horizon = now_ns.saturating_sub(self.limits.retention_ns);
        self.outages.evict_before(horizon);
        self.evict_before(horizon);
        self.enforce_memory();
    }

    /// Drops everything last seen before `t_ns`: buckets, spans, records, edge totals,
    /// agent statuses, then the endpoints nothing kept refers to. Returns what went.
    fn evict_before(&mut self, t_ns: u64) -> EvictedEntries {
        let topology = self.topology.evict_before(t_ns);
        self.traces.evict_before(t_ns);
        self.flows.evict_before(t_ns);
        let before = self.agents.len();
        let mut freed = 0;
        // Cut where the topology cuts, so a node's status goes with its last bucket.
        let cut = self.topology.bucket_start(t_ns);
        self.agents.retain(|_, agent| {
            let keep = agent.last_seen_ns >= cut;
            if !keep {
                freed += agent.bytes();
            }
            keep
        });
        self.agents_bytes -= freed;
        let agents = (before - self.agents.len()) as u64;
        // Endpoints only fall out of use when buckets or totals go.
        let endpoints = if topology.buckets > 0 || topology.edge_totals > 0 {
            self.topology
                .forget_unused_endpoints(self.outages.open_endpoints())
        } else {
            0
        };
        EvictedEntries {
            edge_totals: topology.edge_totals,
            endpoints,
            agents,
        }
    }

    pub fn memory(&self) -> MemoryUsage {
        let topology = self.topology.bytes();
        let traces = self.traces.bytes();
        let flows = self.flows.bytes();
        let outages = self.outages.bytes();
        let agents = self.agents_bytes;
        MemoryUsage {
            topology,
            traces,
            flows,
            outages,
            agents,
            total: topology + traces + flows + outages + agents,
        }
    }

    /// Drops the oldest data, one bucket width at a time across all stores (edge totals
    /// and agent statuses by when they were last seen), until the estimate is under
    /// `--max-memory`.
    fn enforce_memory(&mut self) {
        let width = self.topology.bucket_width_ns();
        loop {
            let before = self.memory().total;
            if before <= self.limits.max_memory_bytes {
                return;
            }
            let oldest = [
                self.topology
                    .oldest_ns()
                    .or_else(|| self.topology.oldest_total_ns()),
                self.traces.oldest_ns(),
                self.flows.oldest_ns(),
                self.agents.values().map(|a| a.last_seen_ns).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(oldest) = oldest else {
                return;
            };
            let evicted = self.evict_before(oldest.saturating_add(width));
            let after = self.memory().total;
            let e = &mut self.counters.evicted_for_memory;
            e.edge_totals += evicted.edge_totals;
            e.endpoints += evicted.endpoints;
            e.agents += evicted.agents;
            self.counters.evicted_for_memory_bytes += before.saturating_sub(after) as u64;
            if after >= before {
                // Nothing left that eviction can reach (open outages, hash tables that
                // shrink later): stop rather than spin.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{SECOND, T0, flow, peer, request};
    use crate::record::Outcome;

    const HOUR: u64 = 3600 * SECOND;

    fn store(max_memory_bytes: usize) -> Store {
        let limits = Limits {
            retention_ns: HOUR,
            max_memory_bytes,
        };
        Store::new(10 * SECOND, HealthThresholds::default(), limits, 1000)
    }

    /// A closed passthrough flow from frontend to the external address `ip`.
    fn to_external(ip: &str, end_ns: u64) -> Record {
        let mut f = flow("frontend", "checkout", end_ns, Outcome::Closed);
        f.destination = peer("", ip);
        f.original_destination = format!("{ip}:443");
        Record::MeshFlow(Arc::new(f))
    }

    #[test]
    fn records_outside_retention_or_ahead_of_the_clock_are_refused_and_counted_per_node() {
        let mut store = store(usize::MAX);
        let now = T0 + 2 * HOUR;
        let mut open = flow("checkout", "payments", now, Outcome::Open);
        // Open for longer than the retention: counted at now, so kept.
        open.start_ns = T0;
        open.end_ns = None;
        let records = vec![
            Record::Request(Arc::new(request(
                "frontend",
                "checkout",
                now - SECOND,
                100,
                200,
            ))),
            Record::Request(Arc::new(request(
                "frontend",
                "checkout",
                now - HOUR - SECOND,
                100,
                200,
            ))),
            Record::Request(Arc::new(request(
                "frontend",
                "checkout",
                now + 4 * 60 * SECOND,
                100,
                200,
            ))),
            Record::Request(Arc::new(request(
                "frontend",
                "checkout",
                now + 6 * 60 * SECOND,
                100,
                200,
            ))),
            Record::Request(Arc::new(request(
                "frontend",
                "checkout",
                u64::MAX - SECOND,
                1,
                200,
            ))),
            Record::MeshFlow(Arc::new(open)),
        ];
        let outcome = store.ingest("node-a", records, now);
        let refused = RefusedRecords {
            too_old: 1,
            in_future: 2,
        };
        assert_eq!(
            outcome,
            IngestOutcome {
                accepted: 3,
                refused
            }
        );
        let agent = &store.agents()["node-a"];
        assert_eq!(agent.records_received, 3);
        assert_eq!(agent.records_refused, refused);
        assert_eq!(agent.last_heartbeat_ns, 0);
        assert_eq!(agent.last_seen_ns, now);
        assert_eq!(store.counters.refused, refused);
        assert_eq!(store.counters.requests, 2);
        assert_eq!(store.flows.len(), 3);
        assert_eq!(store.traces.span_count(), 2);
        let buckets: Vec<u64> = store
            .topology
            .buckets(0, u64::MAX)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(buckets, [now - 10 * SECOND, now, now + 240 * SECOND]);
        // Maintenance past every bucket neither panics nor stops judging.
        store.maintain(now + 300 * SECOND);
        assert_eq!(store.outages.open_count(), 0);
    }

    #[test]
    fn retention_forgets_edge_totals_endpoints_and_agents_not_seen_since() {
        let mut store = store(usize::MAX);
        let externals: Vec<Record> = (0..100)
            .map(|i| to_external(&format!("203.0.113.{i}"), T0 + SECOND))
            .collect();
        store.ingest("node-a", externals, T0 + 2 * SECOND);
        store.heartbeat(
            v1::Heartbeat {
                node: "node-b".into(),
                agent_version: "0.1.0".into(),
                ..v1::Heartbeat::default()
            },
            T0 + 2 * SECOND,
        );
        let later = T0 + 30 * 60 * SECOND;
        let recent = vec![Record::Request(Arc::new(request(
            "frontend", "checkout", later, 100, 200,
        )))];
        store.ingest("node-c", recent, later);
        assert_eq!(store.topology.totals().len(), 101);
        assert_eq!(store.topology.directory.endpoint_count(), 103);
        assert_eq!(store.agents().len(), 3);
        let before = store.memory();

        store.maintain(T0 + HOUR + 20 * SECOND);
        assert_eq!(store.topology.totals().len(), 1);
        // frontend, checkout and its service (the service level draws checkout as it).
        assert_eq!(store.topology.directory.endpoint_count(), 3);
        assert_eq!(store.agents().keys().collect::<Vec<_>>(), ["node-c"]);
        let after = store.memory();
        assert!(after.topology < before.topology, "{before:?} -> {after:?}");
        assert!(after.agents < before.agents, "{before:?} -> {after:?}");
        // Nothing was early: retention is not the memory bound.
        assert_eq!(store.counters.evicted_for_memory, EvictedEntries::default());
        // Forgotten ids are reused and the graph still reads right.
        store.ingest(
            "node-c",
            vec![to_external("198.51.100.7", later + SECOND)],
            later + SECOND,
        );
        assert_eq!(store.topology.directory.endpoint_count(), 4);
        let view = store.topology.graph_view(
            crate::topology::Level::Workload,
            None,
            later - 10 * SECOND,
            later + 10 * SECOND,
            &HealthThresholds::default(),
        );
        let edges: Vec<String> = view
            .edges
            .iter()
            .map(|e| format!("{}->{}", e.source, e.target))
            .collect();
        assert_eq!(
            edges,
            [
                "workload:shop:frontend->external:198.51.100.7",
                "workload:shop:frontend->workload:shop:checkout"
            ]
        );
    }

    #[test]
    fn the_memory_bound_evicts_least_recently_seen_edges_endpoints_and_agents() {
        let mut store = store(usize::MAX);
        // One minute apart, 200 new external addresses each, from a node of their own.
        for minute in 0..10u64 {
            let at = T0 + minute * 60 * SECOND;
            let batch = (0..200)
                .map(|i| to_external(&format!("10.0.{minute}.{i}"), at))
                .collect();
            store.ingest(&format!("node-{minute}"), batch, at);
        }
        assert_eq!(store.topology.totals().len(), 2000);
        let full = store.memory().total;
        // Room for about half: the oldest minutes go, the newest stay whole.
        store.limits.max_memory_bytes = full / 2;
        store.maintain(T0 + 9 * 60 * SECOND);
        assert!(store.memory().total <= full / 2);
        let kept = store.topology.totals().len();
        assert!((600..2000).contains(&kept), "{kept}");
        let minutes_kept = kept / 200;
        assert_eq!(kept % 200, 0, "whole minutes go");
        let newest: Vec<&String> = store.agents().keys().collect();
        assert_eq!(newest.len(), minutes_kept);
        assert_eq!(newest.last().map(|n| n.as_str()), Some("node-9"));
        assert_eq!(
            store.topology.directory.endpoint_count(),
            kept + 1,
            "the kept externals and frontend"
        );
        let evicted = store.counters.evicted_for_memory;
        assert_eq!(evicted.edge_totals, 2000 - kept as u64);
        assert_eq!(evicted.endpoints, 2000 - kept as u64);
        assert_eq!(evicted.agents, 10 - minutes_kept as u64);
        assert!(store.counters.evicted_for_memory_bytes > 0);
    }

    #[test]
    fn memory_bound_drops_the_oldest_buckets_first() {
        let limits = Limits {
            retention_ns: 3600 * SECOND,
            max_memory_bytes: usize::MAX,
        };
        let mut store = Store::new(10 * SECOND, HealthThresholds::default(), limits, 1000);
        let batch = |at: u64| -> Vec<Record> {
            (0..50)
                .map(|i| {
                    Record::Request(Arc::new(request(
                        "frontend",
                        "checkout",
                        at + i * 1000,
                        100 + i,
                        200,
                    )))
                })
                .collect()
        };
        store.ingest("node-a", batch(T0), T0);
        let one = store.memory().total;
        store.ingest("node-a", batch(T0 + 10 * SECOND), T0 + 10 * SECOND);
        let two = store.memory().total;
        assert!(two > one);
        // A bound between one and two bucket's worth keeps only the newest bucket.
        store.limits.max_memory_bytes = two - 1;
        store.ingest("node-a", batch(T0 + 20 * SECOND), T0 + 20 * SECOND);
        assert!(store.memory().total < two);
        assert_eq!(store.topology.oldest_ns(), Some(T0 + 20 * SECOND));
        assert_eq!(store.traces.span_count(), 50);
        assert_eq!(store.flows.len(), 50);
        assert!(store.counters.evicted_for_memory_bytes > 0);
        assert_eq!(store.counters.requests, 150);
    }
}
