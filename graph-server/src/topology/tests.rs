use super::*;
use crate::config::HealthThresholds;
use crate::fixture::{MS, SECOND, T0, flow, request, server_side};
use graph::GraphView;

fn shop() -> Topology {
    let mut t = Topology::new(10 * SECOND);
    // frontend → checkout: 10 requests, 1 answered 503; 4 HBONE flows, 3 reused tunnels.
    for i in 0..10 {
        let status = if i == 3 { 503 } else { 200 };
        t.add_request(&request(
            "frontend",
            "checkout",
            T0 + i * 100 * MS,
            1000 + i * 100,
            status,
        ));
    }
    for i in 0..4 {
        let mut f = flow(
            "frontend",
            "checkout",
            T0 + (i + 1) * SECOND,
            Outcome::Closed,
        );
        f.tunnel_reused = Some(i > 0);
        f.tunnel_setup_us = Some(if i == 0 { 2000 } else { 100 });
        t.add_flow(&f, T0 + 9 * SECOND);
    }
    // checkout → payments: 5 flows, 2 refused, 1 without mTLS, L4 only.
    for i in 0..5 {
        let outcome = if i < 2 {
            Outcome::Refused
        } else {
            Outcome::Closed
        };
        let mut f = flow("checkout", "payments", T0 + (i + 1) * SECOND, outcome);
        f.mtls = i != 4;
        t.add_flow(&f, T0 + 9 * SECOND);
    }
    t
}

fn summary(view: &GraphView, source: &str, target: &str) -> EdgeSummary {
    view.edges
        .iter()
        .find(|e| &*e.source == source && &*e.target == target)
        .unwrap_or_else(|| panic!("no edge {source} -> {target} in {:?}", view.edges))
        .metrics
        .clone()
}

#[test]
fn workload_graph_counts_requests_flows_and_errors_by_kind() {
    let view = shop().graph_view(
        Level::Workload,
        None,
        T0,
        T0 + 10 * SECOND,
        &HealthThresholds::default(),
    );
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "workload:shop:checkout",
            "workload:shop:frontend",
            "workload:shop:payments"
        ]
    );
    let fc = summary(&view, "workload:shop:frontend", "workload:shop:checkout");
    assert_eq!((fc.requests, fc.connections, fc.protocol), (10, 4, "http"));
    assert_eq!(fc.requests_per_second, 1.0);
    assert_eq!(fc.connections_per_second, 0.4);
    assert_eq!((fc.bytes_sent, fc.bytes_received), (400, 4000));
    assert_eq!(fc.bytes_received_per_second, 400.0);
    assert_eq!(fc.errors.get(ErrorKind::Http5xx), 1);
    assert_eq!(fc.error_rate, 0.1);
    assert_eq!(fc.health, Health::Failing);
    let latency = fc.latency.unwrap();
    // 1000..=1900 µs in steps of 100; 2-digit hdrhistogram rounds up by at most 8 µs here.
    assert_eq!(
        (latency.p50_us, latency.p95_us, latency.p99_us),
        (1407, 1903, 1903)
    );
    assert_eq!(fc.latency_kind, Some(metrics::LatencyKind::Request));
    assert_eq!(fc.pool_reuse_ratio, Some(0.75));
    let setup = fc.tunnel_setup.unwrap();
    // 2000 µs falls in the 2000..=2007 bucket (8 µs wide between 1024 and 2047).
    assert_eq!((setup.p50_us, setup.p99_us), (100, 2007));
    assert_eq!(fc.mtls_share, Some(1.0));

    let cp = summary(&view, "workload:shop:checkout", "workload:shop:payments");
    assert_eq!((cp.requests, cp.connections, cp.protocol), (0, 5, "tcp"));
    assert_eq!(cp.errors.get(ErrorKind::Refused), 2);
    assert_eq!(cp.errors.total(), 2);
    assert_eq!(cp.error_rate, 0.4);
    assert_eq!(cp.mtls_share, Some(0.8));
    assert_eq!(cp.latency, None, "no upstream connect times were reported");

    let payments = view.nodes.iter().find(|n| n.name == "payments").unwrap();
    assert_eq!(payments.health, Health::Failing);
    let frontend = view.nodes.iter().find(|n| n.name == "frontend").unwrap();
    assert_eq!(frontend.health, Health::Idle);
}

#[test]
fn server_side_records_count_only_for_unknown_callers() {
    let mut t = Topology::new(10 * SECOND);
    let client = request("frontend", "checkout", T0, 1000, 200);
    t.add_request(&client);
    t.add_request(&server_side(&client, 7));
    let mut anonymous = server_side(&client, 7);
    anonymous.source = crate::fixture::peer("", "192.168.0.7");
    t.add_request(&anonymous);
    let view = t.graph_view(
        Level::Workload,
        None,
        T0,
        T0 + 10 * SECOND,
        &HealthThresholds::default(),
    );
    assert_eq!(view.edges.len(), 2);
    assert_eq!(
        summary(&view, "workload:shop:frontend", "workload:shop:checkout").requests,
        1
    );
    assert_eq!(
        summary(&view, "external:192.168.0.7", "workload:shop:checkout").requests,
        1
    );
}

#[test]
fn service_and_namespace_levels_roll_workloads_up() {
    let t = shop();
    let thresholds = HealthThresholds::default();
    let view = t.graph_view(Level::Service, None, T0, T0 + 10 * SECOND, &thresholds);
    let edges: Vec<(&str, &str)> = view
        .edges
        .iter()
        .map(|e| (&*e.source, &*e.target))
        .collect();
    // frontend is never a destination, so it has no service and stays a workload.
    assert_eq!(
        edges,
        [
            (
                "service:shop:checkout.shop.svc.cluster.local",
                "service:shop:payments.shop.svc.cluster.local"
            ),
            (
                "workload:shop:frontend",
                "service:shop:checkout.shop.svc.cluster.local"
            ),
        ]
    );
    let view = t.graph_view(Level::Namespace, None, T0, T0 + 10 * SECOND, &thresholds);
    assert_eq!(view.edges.len(), 1);
    let shop = &view.edges[0];
    assert_eq!(
        (&*shop.source, &*shop.target),
        ("namespace:shop", "namespace:shop")
    );
    assert_eq!((shop.metrics.requests, shop.metrics.connections), (10, 9));
}

#[test]
fn unknown_destinations_become_external_or_service_nodes() {
    let mut t = Topology::new(10 * SECOND);
    let mut f = flow("frontend", "x", T0, Outcome::Timeout);
    f.destination = crate::fixture::peer("", "");
    f.original_destination = "93.184.216.34:443".into();
    f.path = MeshPath::Passthrough;
    t.add_flow(&f, T0);
    let mut g = flow("frontend", "x", T0, Outcome::Closed);
    g.destination = crate::fixture::peer("", "10.96.0.10");
    g.destination.service = "dns.kube-system.svc.cluster.local".into();
    g.destination.namespace = "kube-system".into();
    t.add_flow(&g, T0);
    let view = t.graph_view(
        Level::Workload,
        None,
        T0,
        T0 + 10 * SECOND,
        &HealthThresholds::default(),
    );
    let targets: Vec<&str> = view.edges.iter().map(|e| &*e.target).collect();
    assert_eq!(
        targets,
        [
            "external:93.184.216.34",
            "service:kube-system:dns.kube-system.svc.cluster.local"
        ]
    );
    assert_eq!(view.edges[0].metrics.errors.get(ErrorKind::Timeout), 1);
}

#[test]
fn namespace_filter_keeps_edges_touching_the_namespace() {
    let mut t = shop();
    let mut f = flow("frontend", "x", T0, Outcome::Closed);
    f.source = crate::fixture::peer("", "192.168.0.7");
    f.side = Role::Server;
    f.destination.namespace = "other".into();
    t.add_flow(&f, T0);
    let thresholds = HealthThresholds::default();
    let all = t.graph_view(Level::Workload, None, T0, T0 + 10 * SECOND, &thresholds);
    assert_eq!(all.edges.len(), 3);
    let other = t.graph_view(
        Level::Workload,
        Some("other"),
        T0,
        T0 + 10 * SECOND,
        &thresholds,
    );
    assert_eq!(other.edges.len(), 1);
    assert_eq!(other.nodes.len(), 2);
    assert_eq!(&*other.edges[0].target, "workload:other:x");
}

#[test]
fn open_flows_count_bytes_now_and_the_connection_at_its_first_record() {
    let mut t = Topology::new(10 * SECOND);
    let mut open = flow("frontend", "checkout", T0, Outcome::Open);
    open.end_ns = None;
    open.bytes_sent_delta = 10;
    open.bytes_received_delta = 20;
    t.add_flow(&open, T0 + 15 * SECOND);
    let mut closed = flow("frontend", "checkout", T0 + 25 * SECOND, Outcome::Closed);
    closed.start_ns = open.start_ns;
    closed.bytes_sent_delta = 1;
    closed.bytes_received_delta = 2;
    t.add_flow(&closed, T0 + 25 * SECOND);
    let merged = t.merged(T0, T0 + 30 * SECOND);
    let m = merged.values().next().unwrap();
    assert_eq!((m.connections, m.bytes_sent, m.bytes_received), (1, 11, 22));
    let second_bucket = t.merged(T0 + 10 * SECOND, T0 + 20 * SECOND);
    assert_eq!(second_bucket.values().next().unwrap().connections, 1);
    let third_bucket = t.merged(T0 + 20 * SECOND, T0 + 30 * SECOND);
    assert_eq!(third_bucket.values().next().unwrap().connections, 0);
}

#[test]
fn eviction_frees_the_bytes_it_accounted_and_drops_late_records() {
    let mut t = shop();
    let before = t.bytes();
    assert!(before > 0);
    let endpoints = t.directory.endpoint_count();
    let evicted = t.evict_before(T0 + 10 * SECOND);
    assert_eq!(t.bytes(), before - evicted.bytes);
    assert_eq!((evicted.buckets, evicted.edge_totals), (1, 2));
    assert_eq!(t.merged(0, u64::MAX).len(), 0);
    t.add_request(&request("frontend", "checkout", T0, 1000, 200));
    assert_eq!(t.late_records, 1);
    // The totals went with their last bucket; the endpoints go once nothing refers to them.
    assert_eq!(t.oldest_ns(), None);
    assert_eq!(t.totals().len(), 0);
    assert_eq!(t.directory.endpoint_count(), endpoints);
    assert_eq!(t.forget_unused_endpoints([]), endpoints as u64);
    assert_eq!(t.directory.endpoint_count(), 0);
}

#[test]
fn a_long_lived_connection_counts_once_from_its_first_interim_record() {
    let mut t = Topology::new(10 * SECOND);
    let start = T0 + SECOND;
    // A gRPC channel reported open three times, then closed, by the client's agent.
    for (i, at) in [3, 5, 7].into_iter().enumerate() {
        let mut f = flow("checkout", "payments", start, Outcome::Open);
        f.start_ns = start;
        f.end_ns = None;
        f.source.port = 40_000;
        f.bytes_sent_delta = 10;
        f.bytes_received_delta = 100;
        f.bytes_sent = 10 * (i as u64 + 1);
        f.bytes_received = 100 * (i as u64 + 1);
        t.add_flow(&f, T0 + at * SECOND);
    }
    let mut closed = flow("checkout", "payments", T0 + 9 * SECOND, Outcome::Reset);
    closed.start_ns = start;
    closed.source.port = 40_000;
    closed.bytes_sent_delta = 5;
    closed.bytes_received_delta = 50;
    t.add_flow(&closed, T0 + 9 * SECOND);
    // Another connection from the same pod (another port), reported only when closed.
    let mut short = flow("checkout", "payments", T0 + 8 * SECOND, Outcome::Closed);
    short.source.port = 40_001;
    short.tunnel_reused = Some(true);
    t.add_flow(&short, T0 + 8 * SECOND);

    let view = t.graph_view(
        Level::Workload,
        None,
        T0,
        T0 + 10 * SECOND,
        &HealthThresholds::default(),
    );
    let edge = summary(&view, "workload:shop:checkout", "workload:shop:payments");
    assert_eq!(edge.connections, 2);
    assert_eq!(edge.mtls_share, Some(1.0));
    assert_eq!(edge.tunnel_setup.map(|p| p.count), Some(2));
    assert_eq!(edge.pool_reuse_ratio, Some(0.5));
    assert_eq!(edge.bytes_sent, 3 * 10 + 5 + 100);
    assert_eq!(edge.bytes_received, 3 * 100 + 50 + 1000);
    assert_eq!(edge.errors.get(ErrorKind::Reset), 1);
    assert!(
        t.counted_open.is_empty(),
        "the close forgets the connection"
    );
}

/// (id, health, inbound) per node and (source, target, summary) per edge, sorted.
type NodeRows = Vec<(String, Health, Option<EdgeSummary>)>;
type EdgeRows = Vec<(String, String, EdgeSummary)>;

/// What `graph_view` computed before it read the buckets in place: a petgraph graph of
/// per-bucket metrics cloned and merged, summarised edge by edge and node by node.
fn graph_view_by_copies(
    t: &Topology,
    level: Level,
    namespace: Option<&str>,
    (from, to): (u64, u64),
    thresholds: &HealthThresholds,
) -> (NodeRows, EdgeRows) {
    use petgraph::Direction;
    let seconds = (to - from) as f64 / 1e9;
    let graph = t.graph(level, namespace, from, to);
    let g = &graph.graph;
    let mut nodes: Vec<_> = g
        .node_indices()
        .map(|i| {
            let inbound = graph.sum(i, Direction::Incoming);
            let health = inbound
                .as_ref()
                .map_or(Health::Idle, |m| m.health(thresholds));
            (
                g[i].to_string(),
                health,
                inbound.map(|m| m.summary(seconds, thresholds)),
            )
        })
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut edges: Vec<_> = g
        .edge_indices()
        .map(|e| {
            let (a, b) = g.edge_endpoints(e).unwrap();
            (
                g[a].to_string(),
                g[b].to_string(),
                g[e].summary(seconds, thresholds),
            )
        })
        .collect();
    edges.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    (nodes, edges)
}

fn assert_same_view(
    t: &Topology,
    level: Level,
    namespace: Option<&str>,
    (from, to): (u64, u64),
    thresholds: &HealthThresholds,
) {
    let view = t.graph_view(level, namespace, from, to, thresholds);
    let nodes: NodeRows = (view.nodes.iter())
        .map(|n| (n.id.clone(), n.health, n.inbound.clone()))
        .collect();
    let edges: EdgeRows = (view.edges.iter())
        .map(|e| {
            (
                e.source.to_string(),
                e.target.to_string(),
                e.metrics.clone(),
            )
        })
        .collect();
    let (expected_nodes, expected_edges) =
        graph_view_by_copies(t, level, namespace, (from, to), thresholds);
    assert_eq!(nodes, expected_nodes, "nodes at {level:?} in {namespace:?}");
    assert_eq!(edges, expected_edges, "edges at {level:?} in {namespace:?}");
}

/// A minute of mixed traffic over six buckets: quiet edges (sample lists), busy ones
/// (histograms), a node fed by enough quiet edges that its inbound union is counted in a
/// histogram, L4-only edges with upstream connect times, failures, two namespaces.
fn mixed_minute() -> Topology {
    let mut t = Topology::new(10 * SECOND);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for bucket in 0..6 {
        let at = T0 + bucket * 10 * SECOND;
        // 80 callers of `hub`, 1–60 requests each per bucket: 80 sample lists, ~2400
        // values per bucket, so the hub's inbound union is past the sorted-list limit.
        for caller in 0..80 {
            let src = format!("caller-{caller}");
            for i in 0..1 + next() % 60 {
                let latency = 200 + next() % 50_000;
                let status = if next() % 40 == 0 { 503 } else { 200 };
                t.add_request(&request(&src, "hub", at + i * MS, latency, status));
            }
        }
        // A busy edge: 300 requests per bucket, a histogram in every bucket.
        for i in 0..300 {
            let latency = 1_000 + next() % 2_000_000;
            t.add_request(&request("frontend", "checkout", at + i * MS, latency, 200));
        }
        // Quiet in some buckets, busy in others: sample lists merged with histograms.
        let n = if bucket % 2 == 0 { 3 } else { 100 };
        for i in 0..n {
            t.add_request(&request("checkout", "hub", at + i * MS, 900 + i, 200));
        }
        // L4 only, from the server side: connect latency; some refused; tunnels.
        for i in 0..1 + next() % 5 {
            let mut f = flow("checkout", "payments", at + (i + 1) * MS, Outcome::Closed);
            if next() % 3 == 0 {
                f.outcome = Outcome::Refused;
            }
            f.tunnel_reused = Some(next() % 2 == 0);
            f.tunnel_setup_us = Some(100 + next() % 5_000);
            t.add_flow(&f, at);
            let mut inbound = f.clone();
            inbound.side = Role::Server;
            inbound.upstream_connect_us = Some(50 + next() % 900);
            t.add_flow(&inbound, at);
        }
        // Another namespace, and an external caller.
        let mut f = flow("frontend", "x", at + MS, Outcome::Closed);
        f.destination.namespace = "other".into();
        t.add_flow(&f, at);
        let mut g = flow("", "hub", at + MS, Outcome::Timeout);
        g.source = crate::fixture::peer("", "192.168.0.7");
        g.side = Role::Server;
        t.add_flow(&g, at);
    }
    t
}

#[test]
fn graph_view_equals_merging_copies_of_every_bucket() {
    let t = mixed_minute();
    let thresholds = HealthThresholds {
        degraded_p95_latency: Some(std::time::Duration::from_millis(20)),
        ..HealthThresholds::default()
    };
    for (level, namespace) in [
        (Level::Workload, None),
        (Level::Workload, Some("other")),
        (Level::Service, None),
        (Level::Namespace, None),
        (Level::Namespace, Some("shop")),
    ] {
        assert_same_view(&t, level, namespace, (T0, T0 + 60 * SECOND), &thresholds);
    }
    // The fixture reaches every path: busy and mixed edges, a hub whose inbound union
    // is past the sorted-list limit, connect latency, and more than one health.
    let view = t.graph_view(Level::Workload, None, T0, T0 + 60 * SECOND, &thresholds);
    let edge = |s: &str, d: &str| summary(&view, s, d);
    let busy = edge("workload:shop:frontend", "workload:shop:checkout");
    assert_eq!(busy.latency.unwrap().count, 1800);
    let mixed = edge("workload:shop:checkout", "workload:shop:hub");
    assert_eq!(mixed.latency.unwrap().count, 3 * 3 + 3 * 100);
    let l4 = edge("workload:shop:checkout", "workload:shop:payments");
    assert_eq!(l4.latency_kind, Some(metrics::LatencyKind::Connect));
    let hub = view.nodes.iter().find(|n| n.name == "hub").unwrap();
    assert!(hub.inbound.as_ref().unwrap().latency.unwrap().count > 4096);
    let healths: std::collections::BTreeSet<_> =
        view.edges.iter().map(|e| e.metrics.health).collect();
    assert!(healths.len() > 1, "{healths:?}");
}

#[test]
fn long_windows_give_the_same_view_as_merging_copies() {
    // Half an hour of a quiet edge: 50 requests per bucket stay sample lists, and 180
    // buckets of them are past what a window copies per edge (the rest is counted in a
    // histogram of the edge's own); a second caller keeps the hub's union mixed.
    let mut t = Topology::new(10 * SECOND);
    for bucket in 0..180 {
        let at = T0 + bucket * 10 * SECOND;
        for i in 0..50 {
            t.add_request(&request(
                "frontend",
                "hub",
                at + i * MS,
                1_000 + bucket * 37 + i,
                200,
            ));
        }
        t.add_request(&request("checkout", "hub", at, 90 + bucket, 200));
    }
    let thresholds = HealthThresholds::default();
    let window = (T0, T0 + 1800 * SECOND);
    assert_same_view(&t, Level::Workload, None, window, &thresholds);
    let view = t.graph_view(Level::Workload, None, window.0, window.1, &thresholds);
    let busy = summary(&view, "workload:shop:frontend", "workload:shop:hub");
    assert_eq!(busy.latency.unwrap().count, 9000);
}
