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

/// What an agent said in its last heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub node: String,
    pub agent_version: String,
    pub kernel_release: String,
    pub attached_programs: Vec<String>,
    pub drop_counters: BTreeMap<String, u64>,
    pub records_sent: u64,
    /// Records this server accepted from the node.
    pub records_received: u64,
    pub last_heartbeat_ns: u64,
}

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
    /// Bytes freed by evicting the oldest data to stay under --max-memory.
    pub evicted_for_memory_bytes: u64,
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
    pub total: usize,
}

#[derive(Debug)]
pub struct Store {
    pub topology: Topology,
    pub outages: OutageDetector,
    pub traces: TraceStore,
    pub flows: RecentRecords,
    pub agents: BTreeMap<String, AgentStatus>,
    pub counters: IngestCounters,
    pub thresholds: HealthThresholds,
    limits: Limits,
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
            counters: IngestCounters::default(),
            thresholds,
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Adds one validated batch from `node`, then keeps memory under the bound.
    pub fn ingest(&mut self, node: &str, records: Vec<Record>, now_ns: u64) {
        self.counters.batches += 1;
        if let Some(agent) = self.agents.get_mut(node) {
            agent.records_received += records.len() as u64;
        }
        for record in records {
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
        self.enforce_memory();
    }

    pub fn heartbeat(&mut self, heartbeat: v1::Heartbeat, now_ns: u64) {
        self.counters.heartbeats += 1;
        let received = self
            .agents
            .get(&heartbeat.node)
            .map_or(0, |a| a.records_received);
        self.agents.insert(
            heartbeat.node.clone(),
            AgentStatus {
                node: heartbeat.node,
                agent_version: heartbeat.agent_version,
                kernel_release: heartbeat.kernel_release,
                attached_programs: heartbeat.attached_programs,
                drop_counters: heartbeat.drop_counters.into_iter().collect(),
                records_sent: heartbeat.records_sent,
                records_received: received,
                last_heartbeat_ns: now_ns,
            },
        );
    }

    pub fn reject(&mut self, reason: &'static str) {
        *self.counters.rejected.entry(reason).or_default() += 1;
    }

    /// Periodic work: judge finished buckets for outages, apply retention and the bound.
    pub fn maintain(&mut self, now_ns: u64) {
        self.outages.advance(&self.topology, now_ns);
        let horizon = now_ns.saturating_sub(self.limits.retention_ns);
        self.topology.evict_before(horizon);
        self.traces.evict_before(horizon);
        self.flows.evict_before(horizon);
        self.outages.evict_before(horizon);
        self.enforce_memory();
    }

    pub fn memory(&self) -> MemoryUsage {
        let topology = self.topology.bytes();
        let traces = self.traces.bytes();
        let flows = self.flows.bytes();
        let outages = self.outages.bytes();
        MemoryUsage {
            topology,
            traces,
            flows,
            outages,
            total: topology + traces + flows + outages,
        }
    }

    /// Drops the oldest data, one bucket width at a time across all stores, until the
    /// estimate is under `--max-memory`.
    fn enforce_memory(&mut self) {
        let width = self.topology.bucket_width_ns();
        loop {
            let before = self.memory().total;
            if before <= self.limits.max_memory_bytes {
                return;
            }
            let oldest = [
                self.topology.oldest_ns(),
                self.traces.oldest_ns(),
                self.flows.oldest_ns(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(oldest) = oldest else {
                return;
            };
            let cut = oldest + width;
            self.topology.evict_before(cut);
            self.traces.evict_before(cut);
            self.flows.evict_before(cut);
            let after = self.memory().total;
            self.counters.evicted_for_memory_bytes += (before - after) as u64;
            if after == before {
                // Only the directory and totals are left; nothing more to drop.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{SECOND, T0, request};

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
        store.ingest("node-a", batch(T0 + 10 * SECOND), T0);
        let two = store.memory().total;
        assert!(two > one);
        // A bound between one and two bucket's worth keeps only the newest bucket.
        store.limits.max_memory_bytes = two - 1;
        store.ingest("node-a", batch(T0 + 20 * SECOND), T0);
        assert!(store.memory().total < two);
        assert_eq!(store.topology.oldest_ns(), Some(T0 + 20 * SECOND));
        assert_eq!(store.traces.span_count(), 50);
        assert_eq!(store.flows.len(), 50);
        assert!(store.counters.evicted_for_memory_bytes > 0);
        assert_eq!(store.counters.requests, 150);
    }
}
