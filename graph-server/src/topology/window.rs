//! The graph at one level over one window, for `GET /api/v1/graph`. One pass over the
//! buckets, in storage order, adds each edge's counters up and gathers its latency
//! distributions ([`WindowLatencies`]); each edge (and each node's inbound traffic) is
//! then summarised once from those. No bucket's metrics are copied or merged.
//!
//! With 10 000 edges over six buckets, cloning and merging each bucket's metrics into a
//! petgraph graph ([`Topology::graph`]) and reading them edge by edge cost most of the
//! query, mostly in allocation and cache misses.
use std::collections::HashMap;
use std::sync::Arc;

use super::metrics::{EdgeMetrics, EdgeSummary};
use super::node::{Level, NodeKey};
use super::{FastMap, Topology};
use crate::config::HealthThresholds;

mod latencies;

pub use latencies::Summariser;
use latencies::WindowLatencies;

/// No node yet.
const NONE: u32 = u32::MAX;

/// A node at the graph's level.
#[derive(Debug)]
pub struct WindowNode {
    pub key: NodeKey,
    /// `key.to_string()`, made once for the node and every edge that touches it.
    pub id: Arc<str>,
}

/// An edge between two [`WindowNode`]s (indices into [`WindowGraph::nodes`]).
#[derive(Debug, Clone, Copy)]
pub struct WindowEdge {
    pub source: u32,
    pub target: u32,
    /// Index of its counters and distributions.
    slot: u32,
}

/// Nodes sorted by id, and edges sorted by (source id, target id), with what each edge
/// carried over the window.
#[derive(Debug)]
pub struct WindowGraph<'a> {
    pub nodes: Vec<WindowNode>,
    pub edges: Vec<WindowEdge>,
    /// Per edge slot: its counters added up over the window, without distributions.
    counts: Vec<EdgeMetrics>,
    latencies: WindowLatencies<'a>,
}

impl<'a> WindowGraph<'a> {
    /// The graph at `level` over the buckets starting in `[from_ns, to_ns)`. With
    /// `namespace`, only edges with at least one end in it, and only nodes those touch.
    pub fn new(
        topology: &'a Topology,
        level: Level,
        namespace: Option<&str>,
        from_ns: u64,
        to_ns: u64,
    ) -> Self {
        let mut level_nodes = LevelNodes::new(topology, level, namespace);
        let mut edges: Vec<WindowEdge> = Vec::new();
        let mut counts: Vec<EdgeMetrics> = Vec::new();
        let mut slots: FastMap<(u32, u32), u32> = FastMap::default();
        let mut latencies = WindowLatencies::default();
        for (_, bucket) in topology.buckets(from_ns, to_ns) {
            if edges.is_empty() {
                // Most edges show up in most buckets: the first sizes the rest.
                let n = bucket.len();
                slots.reserve(n);
                edges.reserve(n);
                counts.reserve(n);
            }
            for ((src, dst), metrics) in bucket.edges() {
                let (a, b) = (level_nodes.node(src), level_nodes.node(dst));
                if !level_nodes.in_namespace[a as usize] && !level_nodes.in_namespace[b as usize] {
                    continue;
                }
                let slot = *slots.entry((a, b)).or_insert_with(|| {
                    let slot = edges.len() as u32;
                    edges.push(WindowEdge {
                        source: a,
                        target: b,
                        slot,
                    });
                    counts.push(EdgeMetrics::default());
                    slot
                });
                counts[slot as usize].merge_counts(metrics);
                latencies.add(slot, metrics);
            }
        }
        latencies.group(edges.len());
        drop(slots);
        let keys = level_nodes.keys;
        // Keep the nodes some kept edge touches, sorted by id; renumber the edges' ends.
        let mut used = vec![false; keys.len()];
        for e in &edges {
            used[e.source as usize] = true;
            used[e.target as usize] = true;
        }
        let mut nodes: Vec<(u32, WindowNode)> = keys
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| used[i])
            .map(|(i, key)| {
                let id = key.to_string().into();
                (i as u32, WindowNode { key, id })
            })
            .collect();
        nodes.sort_unstable_by(|(_, a), (_, b)| a.id.cmp(&b.id));
        let mut rank = vec![NONE; used.len()];
        for (r, (i, _)) in nodes.iter().enumerate() {
            rank[*i as usize] = r as u32;
        }
        for e in &mut edges {
            e.source = rank[e.source as usize];
            e.target = rank[e.target as usize];
        }
        // Ids are unique, so ordering by rank is ordering by (source id, target id).
        edges.sort_unstable_by_key(|e| (e.source, e.target));
        Self {
            nodes: nodes.into_iter().map(|(_, n)| n).collect(),
            edges,
            counts,
            latencies,
        }
    }

    /// `edge` over the window.
    pub fn summary(
        &self,
        scratch: &mut Summariser,
        edge: &WindowEdge,
        window_seconds: f64,
        thresholds: &HealthThresholds,
    ) -> EdgeSummary {
        let counts = &self.counts[edge.slot as usize];
        let slot = std::iter::once(edge.slot as usize);
        self.latencies
            .summary(scratch, counts, slot, window_seconds, thresholds)
    }

    /// `edges` merged over the window (a node's inbound traffic).
    pub fn summary_of(
        &self,
        scratch: &mut Summariser,
        edges: &[&WindowEdge],
        window_seconds: f64,
        thresholds: &HealthThresholds,
    ) -> EdgeSummary {
        let mut counts = EdgeMetrics::default();
        for e in edges {
            counts.merge_counts(&self.counts[e.slot as usize]);
        }
        let slots = edges.iter().map(|e| e.slot as usize);
        self.latencies
            .summary(scratch, &counts, slots, window_seconds, thresholds)
    }

    /// For every node, the edges into it.
    pub fn incoming(&self) -> Vec<Vec<&WindowEdge>> {
        let mut incoming = vec![Vec::new(); self.nodes.len()];
        for e in &self.edges {
            incoming[e.target as usize].push(e);
        }
        incoming
    }
}

/// Endpoints mapped to nodes at one level, numbered as they show up.
struct LevelNodes<'t> {
    topology: &'t Topology,
    level: Level,
    namespace: Option<&'t str>,
    /// Endpoint id → node, [`NONE`] until the endpoint shows up.
    node_of: Vec<u32>,
    keys: Vec<NodeKey>,
    index: HashMap<NodeKey, u32>,
    /// Per node: in the namespace asked for (all are when none was).
    in_namespace: Vec<bool>,
}

impl<'t> LevelNodes<'t> {
    fn new(topology: &'t Topology, level: Level, namespace: Option<&'t str>) -> Self {
        Self {
            topology,
            level,
            namespace,
            node_of: vec![NONE; topology.directory.len()],
            keys: Vec::new(),
            index: HashMap::new(),
            in_namespace: Vec::new(),
        }
    }

    /// The node endpoint `id` is drawn as.
    fn node(&mut self, id: u32) -> u32 {
        let slot = &mut self.node_of[id as usize];
        if *slot == NONE {
            let key = self.topology.directory.node_at(id, self.level);
            *slot = match self.index.get(&key) {
                Some(&n) => n,
                None => {
                    let n = self.keys.len() as u32;
                    let ns = self.namespace;
                    self.in_namespace
                        .push(ns.is_none_or(|ns| key.namespace() == Some(ns)));
                    self.keys.push(key.clone());
                    self.index.insert(key, n);
                    n
                }
            };
        }
        *slot
    }
}
