//! The topology as a petgraph graph at one level over one window, and its JSON views.
use std::collections::HashMap;
use std::sync::Arc;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use super::metrics::{EdgeMetrics, EdgeSummary, Health};
use super::node::{Level, NodeKey, NodeKind};
use super::window::{Summariser, WindowGraph};
use super::{Bucket, Topology};
use crate::config::HealthThresholds;

/// Nodes at one level, edges carrying their metrics merged over the window.
#[derive(Debug, Default)]
pub struct TopologyGraph {
    pub graph: DiGraph<NodeKey, EdgeMetrics>,
    pub index: HashMap<NodeKey, NodeIndex>,
    /// petgraph's `find_edge` walks a node's edge list; busy callers have thousands.
    edges: HashMap<(NodeIndex, NodeIndex), petgraph::graph::EdgeIndex>,
}

impl TopologyGraph {
    fn node(&mut self, key: NodeKey) -> NodeIndex {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.graph.add_node(key.clone());
        self.index.insert(key, i);
        i
    }

    /// Adds one bucket's edges, mapped to `level` and kept if `keep` accepts both ends.
    fn add_bucket(
        &mut self,
        topology: &Topology,
        bucket: &Bucket,
        level: Level,
        mapped: &mut HashMap<u32, Option<NodeIndex>>,
        keep: &dyn Fn(&NodeKey, &NodeKey) -> bool,
    ) {
        for ((src, dst), metrics) in bucket.edges() {
            let mut map = |id: u32, this: &mut Self| {
                *mapped
                    .entry(id)
                    .or_insert_with(|| Some(this.node(topology.directory.node_at(id, level))))
            };
            let (Some(a), Some(b)) = (map(src, self), map(dst, self)) else {
                continue;
            };
            if !keep(&self.graph[a], &self.graph[b]) {
                continue;
            }
            match self.edges.get(&(a, b)) {
                Some(&e) => self.graph[e].merge(metrics),
                None => {
                    let e = self.graph.add_edge(a, b, metrics.clone());
                    self.edges.insert((a, b), e);
                }
            }
        }
    }

    /// The merged metrics of every edge into (`Incoming`) or out of (`Outgoing`) `node`.
    pub fn sum(&self, node: NodeIndex, direction: Direction) -> Option<EdgeMetrics> {
        let mut edges = self.graph.edges_directed(node, direction).peekable();
        edges.peek()?;
        let mut sum = EdgeMetrics::default();
        for e in edges {
            sum.merge(e.weight());
        }
        Some(sum)
    }
}

impl Topology {
    /// The graph at `level` over `[from_ns, to_ns)`. With `namespace`, only edges with at
    /// least one end in that namespace (so callers from elsewhere stay visible).
    pub fn graph(
        &self,
        level: Level,
        namespace: Option<&str>,
        from_ns: u64,
        to_ns: u64,
    ) -> TopologyGraph {
        let mut graph = TopologyGraph::default();
        let mut mapped = HashMap::new();
        let keep = |a: &NodeKey, b: &NodeKey| {
            namespace.is_none_or(|ns| a.namespace() == Some(ns) || b.namespace() == Some(ns))
        };
        for (_, bucket) in self.buckets(from_ns, to_ns) {
            graph.add_bucket(self, bucket, level, &mut mapped, &keep);
        }
        graph.edges.clear();
        // Nodes only reached by filtered-out edges are left without edges: drop them.
        graph
            .graph
            .retain_nodes(|g, n| g.neighbors_undirected(n).next().is_some());
        graph.index = graph
            .graph
            .node_indices()
            .map(|i| (graph.graph[i].clone(), i))
            .collect();
        graph
    }

    /// `GET /api/v1/graph`. Built from a [`WindowGraph`], not [`Self::graph`]: each edge
    /// and each node's inbound traffic is summarised once from the buckets in place.
    pub fn graph_view(
        &self,
        level: Level,
        namespace: Option<&str>,
        from_ns: u64,
        to_ns: u64,
        thresholds: &HealthThresholds,
    ) -> GraphView {
        let window = WindowGraph::new(self, level, namespace, from_ns, to_ns);
        let seconds = window_seconds(from_ns, to_ns);
        let mut summariser = Summariser::default();
        let nodes = window
            .incoming()
            .into_iter()
            .zip(&window.nodes)
            .map(|(incoming, node)| {
                let inbound = (!incoming.is_empty())
                    .then(|| window.summary_of(&mut summariser, &incoming, seconds, thresholds));
                let health = inbound.as_ref().map_or(Health::Idle, |s| s.health);
                NodeView::with_id(node.id.to_string(), &node.key, health, inbound)
            })
            .collect();
        let edges = window
            .edges
            .iter()
            .map(|e| {
                let metrics = window.summary(&mut summariser, e, seconds, thresholds);
                EdgeView {
                    source: window.nodes[e.source as usize].id.clone(),
                    target: window.nodes[e.target as usize].id.clone(),
                    metrics,
                }
            })
            .collect();
        GraphView {
            level,
            namespace: namespace.map(str::to_owned),
            from_ns,
            to_ns,
            window_seconds: seconds,
            nodes,
            edges,
        }
    }

    /// `GET /api/v1/nodes/{id}`: the node's edges over the window and its inbound and
    /// outbound metrics per bucket. `None` if the node saw no traffic in the window.
    pub fn node_detail(
        &self,
        key: &NodeKey,
        from_ns: u64,
        to_ns: u64,
        thresholds: &HealthThresholds,
    ) -> Option<NodeDetail> {
        let level = match key.kind() {
            NodeKind::Workload | NodeKind::External => Level::Workload,
            NodeKind::Service => Level::Service,
            NodeKind::Namespace => Level::Namespace,
        };
        let graph = self.graph(level, None, from_ns, to_ns);
        let &i = graph.index.get(key)?;
        let seconds = window_seconds(from_ns, to_ns);
        let g = &graph.graph;
        let edges = |direction| {
            let mut list: Vec<EdgeView> = g
                .edges_directed(i, direction)
                .map(|e| {
                    use petgraph::visit::EdgeRef;
                    EdgeView::new(
                        &g[e.source()],
                        &g[e.target()],
                        e.weight().summary(seconds, thresholds),
                    )
                })
                .collect();
            list.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
            list
        };
        let bucket_seconds = self.bucket_width_ns as f64 / 1e9;
        let mut series = Vec::new();
        for (start, bucket) in self.buckets(from_ns, to_ns) {
            let mut inbound: Option<EdgeMetrics> = None;
            let mut outbound: Option<EdgeMetrics> = None;
            for ((src, dst), metrics) in bucket.edges() {
                let add =
                    |slot: &mut Option<EdgeMetrics>| slot.get_or_insert_default().merge(metrics);
                if self.directory.node_at(dst, level) == *key {
                    add(&mut inbound);
                }
                if self.directory.node_at(src, level) == *key {
                    add(&mut outbound);
                }
            }
            if inbound.is_some() || outbound.is_some() {
                series.push(NodePoint {
                    start_ns: start,
                    inbound: inbound.map(|m| m.summary(bucket_seconds, thresholds)),
                    outbound: outbound.map(|m| m.summary(bucket_seconds, thresholds)),
                });
            }
        }
        let inbound = graph.sum(i, Direction::Incoming);
        let health = inbound
            .as_ref()
            .map_or(Health::Idle, |m| m.health(thresholds));
        Some(NodeDetail {
            node: NodeView::new(key, health, inbound.map(|m| m.summary(seconds, thresholds))),
            outbound: graph
                .sum(i, Direction::Outgoing)
                .map(|m| m.summary(seconds, thresholds)),
            from_ns,
            to_ns,
            bucket_seconds,
            incoming: edges(Direction::Incoming),
            outgoing: edges(Direction::Outgoing),
            series,
        })
    }
}

impl Topology {
    /// `GET /api/v1/edge`: one edge at `level` over the window and its metrics per
    /// bucket. `None` if the edge carried nothing in the window.
    pub fn edge_detail(
        &self,
        level: Level,
        source: &NodeKey,
        target: &NodeKey,
        from_ns: u64,
        to_ns: u64,
        thresholds: &HealthThresholds,
    ) -> Option<EdgeDetail> {
        let bucket_seconds = self.bucket_width_ns as f64 / 1e9;
        let mut total: Option<EdgeMetrics> = None;
        let mut series = Vec::new();
        for (start, bucket) in self.buckets(from_ns, to_ns) {
            let mut point: Option<EdgeMetrics> = None;
            for ((src, dst), metrics) in bucket.edges() {
                if self.directory.node_at(src, level) == *source
                    && self.directory.node_at(dst, level) == *target
                {
                    point.get_or_insert_default().merge(metrics);
                }
            }
            if let Some(point) = point {
                total.get_or_insert_default().merge(&point);
                series.push(EdgePoint {
                    start_ns: start,
                    metrics: point.summary(bucket_seconds, thresholds),
                });
            }
        }
        let seconds = window_seconds(from_ns, to_ns);
        Some(EdgeDetail {
            edge: EdgeView::new(source, target, total?.summary(seconds, thresholds)),
            level,
            from_ns,
            to_ns,
            bucket_seconds,
            series,
        })
    }
}

fn window_seconds(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns.saturating_sub(from_ns) as f64 / 1e9).max(1e-9)
}

#[derive(Debug, Serialize)]
pub struct GraphView {
    pub level: Level,
    pub namespace: Option<String>,
    pub from_ns: u64,
    pub to_ns: u64,
    pub window_seconds: f64,
    pub nodes: Vec<NodeView>,
    pub edges: Vec<EdgeView>,
}

impl GraphView {
    /// About the size of this view as JSON, to size the response buffer: an edge's
    /// summary takes ~600 bytes, plus its id, source and target; a node's ~700.
    pub fn json_size_hint(&self) -> usize {
        let edges: usize = (self.edges.iter())
            .map(|e| 600 + 2 * (e.source.len() + e.target.len()))
            .sum();
        let nodes: usize = self.nodes.iter().map(|n| 700 + 2 * n.id.len()).sum();
        256 + edges + nodes
    }
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub kind: NodeKind,
    pub name: String,
    pub namespace: Option<String>,
    /// Health of the traffic the node receives (`idle` when it receives none).
    pub health: Health,
    /// Everything the node received over the window.
    pub inbound: Option<EdgeSummary>,
}

impl NodeView {
    fn new(key: &NodeKey, health: Health, inbound: Option<EdgeSummary>) -> Self {
        Self::with_id(key.to_string(), key, health, inbound)
    }

    /// With `id`, `key.to_string()` made already.
    fn with_id(id: String, key: &NodeKey, health: Health, inbound: Option<EdgeSummary>) -> Self {
        Self {
            id,
            kind: key.kind(),
            name: key.name().to_owned(),
            namespace: key.namespace().map(str::to_owned),
            health,
            inbound,
        }
    }
}

/// An edge as the API returns it: `{"id": "<source>-><target>", "source", "target", ...the
/// summary's fields}`. The id is written while serialising, and the ends are shared with
/// every other edge at the same node, so a view of many edges allocates nothing per edge.
#[derive(Debug)]
pub struct EdgeView {
    pub source: Arc<str>,
    pub target: Arc<str>,
    pub metrics: EdgeSummary,
}

impl EdgeView {
    fn new(source: &NodeKey, target: &NodeKey, metrics: EdgeSummary) -> Self {
        Self {
            source: source.to_string().into(),
            target: target.to_string().into(),
            metrics,
        }
    }
}

impl Serialize for EdgeView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: EdgeId<'a>,
            source: &'a str,
            target: &'a str,
            #[serde(flatten)]
            metrics: &'a EdgeSummary,
        }
        Wire {
            id: EdgeId(&self.source, &self.target),
            source: &self.source,
            target: &self.target,
            metrics: &self.metrics,
        }
        .serialize(serializer)
    }
}

/// `source->target`, serialised without building the string.
struct EdgeId<'a>(&'a str, &'a str);

impl Serialize for EdgeId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}->{}", self.0, self.1))
    }
}

#[derive(Debug, Serialize)]
pub struct NodeDetail {
    pub node: NodeView,
    pub outbound: Option<EdgeSummary>,
    pub from_ns: u64,
    pub to_ns: u64,
    pub bucket_seconds: f64,
    pub incoming: Vec<EdgeView>,
    pub outgoing: Vec<EdgeView>,
    /// One point per bucket with traffic; rates are per second within the bucket.
    pub series: Vec<NodePoint>,
}

#[derive(Debug, Serialize)]
pub struct NodePoint {
    pub start_ns: u64,
    pub inbound: Option<EdgeSummary>,
    pub outbound: Option<EdgeSummary>,
}

#[derive(Debug, Serialize)]
pub struct EdgeDetail {
    pub edge: EdgeView,
    pub level: Level,
    pub from_ns: u64,
    pub to_ns: u64,
    pub bucket_seconds: f64,
    /// One point per bucket with traffic on the edge; rates are per second within it.
    pub series: Vec<EdgePoint>,
}

#[derive(Debug, Serialize)]
pub struct EdgePoint {
    pub start_ns: u64,
    #[serde(flatten)]
    pub metrics: EdgeSummary,
}
