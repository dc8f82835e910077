//! Outages: an incident opens when an edge crosses the failing threshold in a bucket and
//! closes after `recovery_buckets` evaluated buckets without a failing edge. Edges that
//! fail together (connected through shared workloads) form one incident. Callers that keep
//! trying a workload whose traffic stopped show up as refused, timed-out or tunnel-failed
//! connections, so that case crosses the same threshold.
//!
//! The probable root cause is the deepest failing dependency: among the failing edges, the
//! destination that has no failing edge of its own and lies furthest down the failing
//! paths. A frontend answering 5xx because checkout cannot reach payments points at
//! payments, not at the frontend.
use std::collections::{BTreeSet, HashMap, HashSet};

use petgraph::graphmap::DiGraphMap;
use petgraph::unionfind::UnionFind;
use serde::Serialize;

use crate::config::HealthThresholds;
use crate::time::{clock, rfc3339};
use crate::topology::{EdgeKey, EdgeMetrics, ErrorCounts, ErrorKind, Health, Topology};

/// Records arrive in batches; a bucket is judged this long after it ends.
pub const GRACE_NS: u64 = 2_000_000_000;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AffectedEdge {
    pub source: String,
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RootCause {
    /// Node id of the failing dependency.
    pub node: String,
    pub kind: ErrorKind,
    /// Share of its callers' attempts that failed with `kind` during the incident.
    pub rate: f64,
    pub since_ns: u64,
    /// "payments refuses connections: 100 % refused since 12:03:10"
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outage {
    pub id: u64,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub start: String,
    pub end: Option<String>,
    pub open: bool,
    pub affected_edges: Vec<AffectedEdge>,
    pub affected_workloads: BTreeSet<String>,
    /// Failures on the affected edges while the incident was open, by kind.
    pub failures: ErrorCounts,
    pub peak_error_rate: f64,
    pub root_cause: Option<RootCause>,
    #[serde(skip)]
    edges: HashMap<EdgeKey, EdgeMetrics>,
    #[serde(skip)]
    nodes: HashSet<u32>,
    #[serde(skip)]
    quiet_buckets: u32,
    #[serde(skip)]
    last_failing_end_ns: u64,
}

/// Watches the topology bucket by bucket and keeps the incident list.
#[derive(Debug)]
pub struct OutageDetector {
    thresholds: HealthThresholds,
    outages: Vec<Outage>,
    next_id: u64,
    /// Start of the next bucket to evaluate.
    next_bucket_ns: u64,
}

impl OutageDetector {
    pub fn new(thresholds: HealthThresholds) -> Self {
        Self {
            thresholds,
            outages: Vec::new(),
            next_id: 1,
            next_bucket_ns: 0,
        }
    }

    /// Evaluates every bucket that ended at least [`GRACE_NS`] before `now_ns`.
    pub fn advance(&mut self, topology: &Topology, now_ns: u64) {
        let width = topology.bucket_width_ns();
        if self.next_bucket_ns == 0 {
            match topology.oldest_ns() {
                Some(oldest) => self.next_bucket_ns = oldest,
                None => return,
            }
        }
        // Saturating: a record stamped near u64::MAX (a broken or hostile agent) makes a
        // bucket whose end does not fit in u64.
        while self.next_bucket_ns.saturating_add(width + GRACE_NS) <= now_ns {
            let start = self.next_bucket_ns;
            self.evaluate(topology, start);
            // Skip empty stretches once nothing is open: there is nothing to close.
            self.next_bucket_ns = match topology
                .buckets(start.saturating_add(width), u64::MAX)
                .next()
            {
                Some((next, _)) if !self.outages.iter().any(|o| o.open) => next,
                _ => start.saturating_add(width),
            };
        }
    }

    /// Judges the bucket starting at `start_ns`.
    pub fn evaluate(&mut self, topology: &Topology, start_ns: u64) {
        let end_ns = start_ns.saturating_add(topology.bucket_width_ns());
        let failing: Vec<(EdgeKey, &EdgeMetrics)> = topology
            .buckets(start_ns, end_ns)
            .flat_map(|(_, b)| b.edges())
            .filter(|(_, m)| m.health(&self.thresholds) == Health::Failing)
            .collect();
        let mut touched = HashSet::new();
        for component in components(&failing) {
            let nodes: HashSet<u32> = component.iter().flat_map(|(k, _)| [k.0, k.1]).collect();
            let index = match self
                .outages
                .iter()
                .position(|o| o.open && !o.nodes.is_disjoint(&nodes))
            {
                Some(i) => i,
                None => {
                    self.open(&component);
                    self.outages.len() - 1
                }
            };
            touched.insert(index);
            let outage = &mut self.outages[index];
            outage.absorb(topology, &component, end_ns);
            outage.root_cause = root_cause(topology, &component, &outage.edges);
        }
        for (i, outage) in self.outages.iter_mut().enumerate() {
            if outage.open && !touched.contains(&i) {
                outage.quiet_buckets += 1;
                if outage.quiet_buckets >= self.thresholds.recovery_buckets {
                    outage.open = false;
                    outage.end_ns = Some(outage.last_failing_end_ns);
                    outage.end = Some(rfc3339(outage.last_failing_end_ns));
                }
            }
        }
    }

    fn open(&mut self, component: &[(EdgeKey, &EdgeMetrics)]) {
        let start_ns = component
            .iter()
            .flat_map(|(_, m)| m.first_error_ns)
            .filter(|&t| t != 0)
            .min()
            .unwrap_or_default();
        self.outages.push(Outage {
            id: self.next_id,
            start_ns,
            end_ns: None,
            start: rfc3339(start_ns),
            end: None,
            open: true,
            affected_edges: Vec::new(),
            affected_workloads: BTreeSet::new(),
            failures: ErrorCounts::default(),
            peak_error_rate: 0.0,
            root_cause: None,
            edges: HashMap::new(),
            nodes: HashSet::new(),
            quiet_buckets: 0,
            last_failing_end_ns: 0,
        });
        self.next_id += 1;
    }

    /// Outages overlapping `[since_ns, until_ns]`, newest first.
    pub fn list(&self, since_ns: u64, until_ns: u64) -> Vec<&Outage> {
        let mut list: Vec<&Outage> = self
            .outages
            .iter()
            .filter(|o| o.start_ns <= until_ns && o.end_ns.is_none_or(|end| end >= since_ns))
            .collect();
        list.reverse();
        list
    }

    /// Forgets closed outages that ended before `t_ns`.
    pub fn evict_before(&mut self, t_ns: u64) {
        self.outages
            .retain(|o| o.end_ns.is_none_or(|end| end >= t_ns));
    }

    pub fn open_count(&self) -> usize {
        self.outages.iter().filter(|o| o.open).count()
    }

    pub fn bytes(&self) -> usize {
        self.outages
            .iter()
            .map(|o| size_of::<Outage>() + o.edges.len() * (size_of::<EdgeMetrics>() + 32) + 256)
            .sum()
    }
}

impl Outage {
    fn absorb(&mut self, topology: &Topology, component: &[(EdgeKey, &EdgeMetrics)], end_ns: u64) {
        self.quiet_buckets = 0;
        self.last_failing_end_ns = end_ns;
        for (key, metrics) in component {
            let directory = &topology.directory;
            let (source, target) = (
                directory.key(key.0).to_string(),
                directory.key(key.1).to_string(),
            );
            if !self.edges.contains_key(key) {
                self.affected_edges.push(AffectedEdge {
                    source: source.clone(),
                    target: target.clone(),
                });
            }
            self.affected_workloads.insert(source);
            self.affected_workloads.insert(target);
            self.nodes.extend([key.0, key.1]);
            self.failures.merge(&metrics.errors);
            self.peak_error_rate = self.peak_error_rate.max(metrics.error_rate());
            self.edges
                .entry(*key)
                .or_default()
                .merge(&counters(metrics));
        }
    }
}

/// `metrics` without its histograms: outages only need counts.
fn counters(metrics: &EdgeMetrics) -> EdgeMetrics {
    EdgeMetrics {
        request_latency: None,
        connect_latency: None,
        tunnel_setup: None,
        ..metrics.clone()
    }
}

/// Groups failing edges that share a node.
fn components<'a>(failing: &[(EdgeKey, &'a EdgeMetrics)]) -> Vec<Vec<(EdgeKey, &'a EdgeMetrics)>> {
    let mut ids: Vec<u32> = failing.iter().flat_map(|(k, _)| [k.0, k.1]).collect();
    ids.sort_unstable();
    ids.dedup();
    let index = |id: u32| ids.binary_search(&id).expect("id collected above");
    let mut sets = UnionFind::<usize>::new(ids.len());
    for (k, _) in failing {
        sets.union(index(k.0), index(k.1));
    }
    let mut groups: HashMap<usize, Vec<(EdgeKey, &EdgeMetrics)>> = HashMap::new();
    for &(k, m) in failing {
        groups
            .entry(sets.find(index(k.0)))
            .or_default()
            .push((k, m));
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    for g in &mut groups {
        g.sort_by_key(|(k, _)| *k);
    }
    groups.sort_by_key(|g| g[0].0);
    groups
}

/// The deepest failing dependency of one component, with evidence from the incident's
/// accumulated counts.
fn root_cause(
    topology: &Topology,
    component: &[(EdgeKey, &EdgeMetrics)],
    incident: &HashMap<EdgeKey, EdgeMetrics>,
) -> Option<RootCause> {
    let mut graph = DiGraphMap::<u32, ()>::new();
    for (k, _) in component {
        graph.add_edge(k.0, k.1, ());
    }
    let depth = depths(&graph);
    let errors_into = |node: u32| -> u64 {
        component
            .iter()
            .filter(|(k, _)| k.1 == node)
            .map(|(_, m)| m.errors.total())
            .sum()
    };
    let sinks = graph.nodes().filter(|&n| {
        graph
            .neighbors_directed(n, petgraph::Direction::Outgoing)
            .next()
            .is_none()
    });
    // A cycle of failures has no sink: fall back to the node receiving the most errors.
    let root = sinks
        .max_by_key(|&n| (depth[&n], errors_into(n), std::cmp::Reverse(n)))
        .or_else(|| {
            graph
                .nodes()
                .max_by_key(|&n| (errors_into(n), std::cmp::Reverse(n)))
        })?;
    let mut into = EdgeMetrics::default();
    for (k, m) in incident {
        if k.1 == root {
            into.merge(m);
        }
    }
    let kind = ErrorKind::ALL
        .into_iter()
        .filter(|&k| into.errors.get(k) > 0)
        .max_by_key(|&k| (into.errors.get(k), std::cmp::Reverse(k)))?;
    let key = topology.directory.key(root);
    let rate = into.kind_rate(kind);
    let since_ns = into.first_error_ns[kind as usize];
    Some(RootCause {
        node: key.to_string(),
        kind,
        rate: (rate * 1000.0).round() / 1000.0,
        since_ns,
        evidence: evidence(key.name(), kind, rate, since_ns),
    })
}

/// Longest path (in edges) from a node without failing callers, per node.
fn depths(graph: &DiGraphMap<u32, ()>) -> HashMap<u32, usize> {
    let mut depth: HashMap<u32, usize> = graph.nodes().map(|n| (n, 0)).collect();
    let mut frontier: Vec<u32> = graph
        .nodes()
        .filter(|&n| {
            graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .next()
                .is_none()
        })
        .collect();
    // Relaxation bounded by the node count, so cycles cannot loop forever.
    for _ in 0..graph.node_count() {
        let mut next = Vec::new();
        for n in frontier {
            for m in graph.neighbors(n) {
                if depth[&m] < depth[&n] + 1 {
                    depth.insert(m, depth[&n] + 1);
                    next.push(m);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    depth
}

fn evidence(name: &str, kind: ErrorKind, rate: f64, since_ns: u64) -> String {
    let percent = format!("{:.0} %", rate * 100.0);
    let since = clock(since_ns);
    match kind {
        ErrorKind::Refused => {
            format!("{name} refuses connections: {percent} refused since {since}")
        }
        ErrorKind::Reset => format!("{name} resets connections: {percent} reset since {since}"),
        ErrorKind::Timeout => {
            format!("{name} does not answer: {percent} of connections timed out since {since}")
        }
        ErrorKind::Unreachable => {
            format!("{name} is unreachable: {percent} of connections found no route since {since}")
        }
        ErrorKind::TunnelFailed => {
            format!("HBONE tunnels to {name} fail: {percent} tunnel failures since {since}")
        }
        ErrorKind::Http5xx => {
            format!("{name} answers 5xx: {percent} of requests failed since {since}")
        }
        ErrorKind::GrpcError => {
            format!("{name} returns gRPC errors: {percent} of calls failed since {since}")
        }
    }
}

#[cfg(test)]
mod tests;
