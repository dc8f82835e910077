//! The live topology: per-time-bucket edge metrics between endpoints, from mesh flows and
//! requests, rolled up at query time to the workload, service or namespace level.
//!
//! Each flow or request is counted once. Both ends report it when both nodes run an
//! agent, so the client side's record counts; the server side's record counts only when
//! the source is unknown (no agent saw the call leave). Server-side records still add the
//! inbound proxy's connect time to the application (`upstream_connect_us`), which only
//! that side measures.
use std::collections::{BTreeMap, HashMap};

use crate::record::{MeshFlow, MeshPath, Outcome, Peer, Protocol, Request, Role};

pub mod graph;
pub mod metrics;
pub mod node;
pub mod window;

pub use metrics::{EdgeMetrics, EdgeSummary, ErrorCounts, ErrorKind, Health};
pub use node::{Level, NodeKey, NodeKind};

/// (source endpoint id, destination endpoint id), ids from the [`Directory`].
pub type EdgeKey = (u32, u32);

/// Rough per-entry overhead of a hash map slot (control bytes, load factor).
const MAP_ENTRY_OVERHEAD: usize = 16;

/// Bytes a hash table holding `capacity` entries of `(K, V)` allocates: hashbrown keeps
/// one bucket per 7/8 of capacity, each with its entry and a control byte.
fn table_bytes<K, V>(capacity: usize) -> usize {
    capacity * 8 / 7 * (size_of::<(K, V)>() + 1)
}

/// Gives a table back its memory once eviction emptied most of it: a hash table never
/// shrinks by itself, so the memory bound would otherwise keep paying for its peak.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.len() * 8 < map.capacity() * 3 {
        map.shrink_to_fit();
    }
}

/// Interned endpoints and what was learned about them. Ids of endpoints no kept edge
/// refers to any more are forgotten ([`Topology::forget_unused_endpoints`]) and reused.
#[derive(Debug, Default)]
pub struct Directory {
    /// By id; `None` for a forgotten id waiting in `free`.
    keys: Vec<Option<NodeKey>>,
    free: Vec<u32>,
    ids: HashMap<NodeKey, u32>,
    /// namespace → name → id for workloads and services, ip → id for externals: lookups
    /// by `&str` so the hot path allocates nothing for endpoints already known.
    workloads: HashMap<String, HashMap<String, u32>>,
    services: HashMap<String, HashMap<String, u32>>,
    externals: HashMap<String, u32>,
    /// Workload → the service it was last reached through (for the service level).
    service_of: HashMap<u32, u32>,
    /// Heap bytes of the keys' strings (three copies each) and the nested per-namespace
    /// tables; the flat tables are counted by capacity in [`Directory::bytes`].
    bytes: usize,
}

impl Directory {
    /// Heap and nested-table bytes that interning `key` adds (see [`Directory::bytes`]).
    fn key_bytes(key: &NodeKey) -> usize {
        let strings = crate::store::heap_bytes(key.name().len())
            + crate::store::heap_bytes(key.namespace().map_or(0, str::len));
        let nested = match key {
            NodeKey::Workload { .. } | NodeKey::Service { .. } => {
                size_of::<(String, u32)>() + MAP_ENTRY_OVERHEAD
            }
            NodeKey::External { .. } | NodeKey::Namespace { .. } => 0,
        };
        3 * strings + nested
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
            + self.keys.capacity() * size_of::<Option<NodeKey>>()
            + self.free.capacity() * size_of::<u32>()
            + table_bytes::<NodeKey, u32>(self.ids.capacity())
            + table_bytes::<String, u32>(self.externals.capacity())
            + table_bytes::<u32, u32>(self.service_of.capacity())
    }

    fn intern(&mut self, key: NodeKey) -> u32 {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => u32::try_from(self.keys.len()).expect("fewer than 4 billion endpoints"),
        };
        self.bytes += Self::key_bytes(&key);
        match &key {
            NodeKey::Workload { namespace, name } => {
                self.workloads
                    .entry(namespace.clone())
                    .or_default()
                    .insert(name.clone(), id);
            }
            NodeKey::Service {
                namespace,
                hostname,
            } => {
                self.services
                    .entry(namespace.clone())
                    .or_default()
                    .insert(hostname.clone(), id);
            }
            NodeKey::External { address } => {
                self.externals.insert(address.clone(), id);
            }
            NodeKey::Namespace { .. } => {}
        }
        if id as usize == self.keys.len() {
            self.keys.push(Some(key.clone()));
        } else {
            self.keys[id as usize] = Some(key.clone());
        }
        self.ids.insert(key, id);
        id
    }

    /// Forgets every endpoint `used` does not mark (indexed by id); returns how many.
    fn forget_unused(&mut self, used: &[bool]) -> u64 {
        let mut forgotten = 0;
        for (id, slot) in self.keys.iter_mut().enumerate() {
            if used.get(id).copied().unwrap_or(false) {
                continue;
            }
            let Some(key) = slot.take() else {
                continue;
            };
            self.bytes -= Self::key_bytes(&key);
            match &key {
                NodeKey::Workload { namespace, name } => {
                    remove_nested(&mut self.workloads, namespace, name);
                }
                NodeKey::Service {
                    namespace,
                    hostname,
                } => remove_nested(&mut self.services, namespace, hostname),
                NodeKey::External { address } => {
                    self.externals.remove(address);
                }
                NodeKey::Namespace { .. } => {}
            }
            self.ids.remove(&key);
            let id = id as u32;
            self.service_of.remove(&id);
            self.free.push(id);
            forgotten += 1;
        }
        if forgotten > 0 {
            shrink_if_sparse(&mut self.ids);
            shrink_if_sparse(&mut self.externals);
            shrink_if_sparse(&mut self.service_of);
        }
        forgotten
    }

    fn workload(&mut self, namespace: &str, name: &str) -> u32 {
        match self.workloads.get(namespace).and_then(|m| m.get(name)) {
            Some(&id) => id,
            None => self.intern(NodeKey::Workload {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    fn service(&mut self, namespace: &str, hostname: &str) -> u32 {
        match self.services.get(namespace).and_then(|m| m.get(hostname)) {
            Some(&id) => id,
            None => self.intern(NodeKey::Service {
                namespace: namespace.to_owned(),
                hostname: hostname.to_owned(),
            }),
        }
    }

    fn external(&mut self, address: &str) -> u32 {
        match self.externals.get(address) {
            Some(&id) => id,
            None => self.intern(NodeKey::External {
                address: address.to_owned(),
            }),
        }
    }

    /// Slots for ids: every id in use is below this.
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Endpoints known now.
    pub fn endpoint_count(&self) -> usize {
        self.ids.len()
    }

    /// The endpoint `id` names. Ids come from the buckets, totals and open outages, which
    /// keep their endpoints from being forgotten.
    pub fn key(&self, id: u32) -> &NodeKey {
        self.keys[id as usize]
            .as_ref()
            .expect("an id in use names a kept endpoint")
    }

    pub fn id(&self, key: &NodeKey) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The node `id` is drawn as at `level`.
    pub fn node_at(&self, id: u32, level: Level) -> NodeKey {
        let key = self.key(id);
        match (level, key) {
            (Level::Workload, _) | (_, NodeKey::External { .. }) => key.clone(),
            (Level::Service, NodeKey::Workload { .. }) => match self.service_of.get(&id) {
                Some(&service) => self.key(service).clone(),
                None => key.clone(),
            },
            (Level::Service, _) => key.clone(),
            (Level::Namespace, _) => NodeKey::Namespace {
                name: key.namespace().unwrap_or_default().to_owned(),
            },
        }
    }

    fn source(&mut self, peer: &Peer) -> u32 {
        if peer.workload.is_empty() {
            self.external(&peer.ip)
        } else {
            self.workload(&peer.namespace, &peer.workload)
        }
    }

    /// A destination is its workload; else its service (unknown backends behind a known
    /// service are one node); else the address dialled.
    fn destination(&mut self, peer: &Peer, dialled: &str) -> u32 {
        let service =
            (!peer.service.is_empty()).then(|| self.service(&peer.namespace, &peer.service));
        if !peer.workload.is_empty() {
            let id = self.workload(&peer.namespace, &peer.workload);
            if let Some(service) = service {
                self.service_of.insert(id, service);
            }
            return id;
        }
        if let Some(service) = service {
            return service;
        }
        let address = if peer.ip.is_empty() {
            dialled.rsplit_once(':').map_or(dialled, |(ip, _)| ip)
        } else {
            &peer.ip
        };
        self.external(address.trim_matches(['[', ']']))
    }
}

/// Removes `name` from `namespace`'s table, and the table once empty.
fn remove_nested(tables: &mut HashMap<String, HashMap<String, u32>>, namespace: &str, name: &str) {
    if let Some(table) = tables.get_mut(namespace) {
        table.remove(name);
        if table.is_empty() {
            tables.remove(namespace);
        }
    }
}

/// Interned ids, not attacker-chosen bytes, on the per-record path: a fast hasher (still
/// randomly seeded) rather than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Edge metrics of one time bucket, in the order the edges first showed up in it.
///
/// A `Vec` with an index rather than a map of metrics: a window query reads every entry
/// of every bucket it covers, and a dense array is one sequential stream, where a hash
/// table's ~280-byte slots are half empty and defeat the prefetcher.
#[derive(Debug, Default)]
pub struct Bucket {
    index: FastMap<EdgeKey, u32>,
    entries: Vec<(EdgeKey, EdgeMetrics)>,
    bytes: usize,
}

impl Bucket {
    /// Every edge's metrics.
    pub fn edges(&self) -> impl ExactSizeIterator<Item = (EdgeKey, &EdgeMetrics)> {
        self.entries.iter().map(|(key, metrics)| (*key, metrics))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the entry list and its index allocate, by capacity.
    fn tables_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<(EdgeKey, EdgeMetrics)>()
            + table_bytes::<EdgeKey, u32>(self.index.capacity())
    }

    /// The metrics of `key`, made if missing, and the bytes making them took.
    fn entry(&mut self, key: EdgeKey) -> (&mut EdgeMetrics, usize) {
        let before = self.tables_bytes();
        let i = *self.index.entry(key).or_insert_with(|| {
            self.entries.push((key, EdgeMetrics::default()));
            (self.entries.len() - 1) as u32
        });
        let added = self.tables_bytes() - before;
        self.bytes += added;
        (&mut self.entries[i as usize].1, added)
    }
}

/// Cumulative counters per edge for Prometheus, since the edge was first seen. An edge
/// without traffic for `--retention` (or the oldest ones, when `--max-memory` needs room)
/// is forgotten, and counts again from zero if it comes back: a counter reset.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeTotals {
    pub connections: u64,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: ErrorCounts,
    /// Time of the latest record counted (the record's own time, as buckets use).
    pub last_seen_ns: u64,
}

/// What [`Topology::evict_before`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Estimated bytes freed.
    pub bytes: usize,
    pub buckets: usize,
    pub edge_totals: u64,
}

/// The aggregated topology.
#[derive(Debug)]
pub struct Topology {
    bucket_width_ns: u64,
    pub directory: Directory,
    buckets: BTreeMap<u64, Bucket>,
    totals: FastMap<EdgeKey, EdgeTotals>,
    /// Buckets before this were evicted; records for them are late and dropped.
    floor_ns: u64,
    /// Estimated bytes of the buckets (the tables are counted by capacity in `bytes()`).
    bytes: usize,
    /// Records dropped because their bucket was already evicted.
    pub late_records: u64,
    /// Open connections already counted from an interim record (see [`Topology::add_flow`]),
    /// by [`ConnectionKey`], with when they were last reported.
    counted_open: HashMap<ConnectionKey, u64>,
    key_hasher: std::hash::RandomState,
}

/// One connection as one side's agent reports it: a hash of (node, side, source address,
/// start). Hashed, not kept: the map holds no strings per open connection.
type ConnectionKey = u64;

fn connection_key(hasher: &std::hash::RandomState, flow: &MeshFlow) -> ConnectionKey {
    use std::hash::BuildHasher as _;
    hasher.hash_one((
        &flow.node,
        flow.side,
        &flow.source.ip,
        flow.source.port,
        flow.start_ns,
    ))
}

impl Topology {
    pub fn new(bucket_width_ns: u64) -> Self {
        assert!(bucket_width_ns > 0, "bucket width must be positive");
        Self {
            bucket_width_ns,
            directory: Directory::default(),
            buckets: BTreeMap::new(),
            totals: FastMap::default(),
            floor_ns: 0,
            bytes: 0,
            late_records: 0,
            counted_open: HashMap::new(),
            key_hasher: std::hash::RandomState::new(),
        }
    }

    pub fn bucket_width_ns(&self) -> u64 {
        self.bucket_width_ns
    }

    pub fn bucket_start(&self, t_ns: u64) -> u64 {
        t_ns - t_ns % self.bucket_width_ns
    }

    /// Estimated bytes held by buckets, totals and the directory.
    pub fn bytes(&self) -> usize {
        self.bytes
            + self.directory.bytes()
            + table_bytes::<EdgeKey, EdgeTotals>(self.totals.capacity())
            + table_bytes::<ConnectionKey, u64>(self.counted_open.capacity())
    }

    /// When the least recently seen edge total was last seen.
    pub fn oldest_total_ns(&self) -> Option<u64> {
        self.totals.values().map(|t| t.last_seen_ns).min()
    }

    pub fn oldest_ns(&self) -> Option<u64> {
        self.buckets.keys().next().copied()
    }

    pub fn totals(&self) -> &HashMap<EdgeKey, EdgeTotals, impl std::hash::BuildHasher> {
        &self.totals
    }

    /// Drops every bucket that starts before `t_ns`'s bucket, and the edge totals last
    /// seen before it. Endpoints stay until [`Topology::forget_unused_endpoints`].
    pub fn evict_before(&mut self, t_ns: u64) -> Evicted {
        let before = self.bytes();
        let cut = self.bucket_start(t_ns);
        let keep = self.buckets.split_off(&cut);
        let dropped = std::mem::replace(&mut self.buckets, keep);
        self.bytes -= dropped.values().map(|b| b.bytes).sum::<usize>();
        self.floor_ns = self.floor_ns.max(cut);
        // Connections not reported since (an agent stopped) are forgotten.
        self.counted_open.retain(|_, last_ns| *last_ns >= t_ns);
        shrink_if_sparse(&mut self.counted_open);
        // A kept bucket's edges were seen at or after its start, so keep their totals.
        let totals = self.totals.len();
        self.totals.retain(|_, t| t.last_seen_ns >= cut);
        let edge_totals = (totals - self.totals.len()) as u64;
        shrink_if_sparse(&mut self.totals);
        Evicted {
            bytes: before.saturating_sub(self.bytes()),
            buckets: dropped.len(),
            edge_totals,
        }
    }

    /// Forgets the endpoints that no bucket, edge total or `pinned` id (an open outage's)
    /// refers to; returns how many.
    pub fn forget_unused_endpoints(&mut self, pinned: impl IntoIterator<Item = u32>) -> u64 {
        let mut used = vec![false; self.directory.len()];
        let mut mark = |id: u32| used[id as usize] = true;
        for bucket in self.buckets.values() {
            for ((src, dst), _) in bucket.edges() {
                mark(src);
                mark(dst);
            }
        }
        for &(src, dst) in self.totals.keys() {
            mark(src);
            mark(dst);
        }
        pinned.into_iter().for_each(&mut mark);
        // The service level draws a kept workload as its service.
        for (&workload, &service) in &self.directory.service_of {
            if used[workload as usize] {
                used[service as usize] = true;
            }
        }
        self.directory.forget_unused(&used)
    }

    /// Finds (or makes) the metrics of `edge` in the bucket of `at_ns`; `None` if late.
    fn slot(&mut self, edge: EdgeKey, at_ns: u64) -> Option<&mut EdgeMetrics> {
        let start = self.bucket_start(at_ns);
        if start < self.floor_ns {
            self.late_records += 1;
            return None;
        }
        let bucket = self.buckets.entry(start).or_insert_with(|| {
            self.bytes += size_of::<Bucket>() + size_of::<u64>() + MAP_ENTRY_OVERHEAD;
            Bucket::default()
        });
        let (metrics, added) = bucket.entry(edge);
        self.bytes += added;
        Some(metrics)
    }

    /// Adds histogram growth to the byte counts of the bucket of `at_ns`.
    fn grew(&mut self, at_ns: u64, bytes: usize) {
        if bytes > 0 {
            if let Some(bucket) = self.buckets.get_mut(&self.bucket_start(at_ns)) {
                bucket.bytes += bytes;
            }
            self.bytes += bytes;
        }
    }

    fn total(&mut self, edge: EdgeKey, at_ns: u64) -> &mut EdgeTotals {
        let total = self.totals.entry(edge).or_default();
        total.last_seen_ns = total.last_seen_ns.max(at_ns);
        total
    }

    /// Counts a mesh flow record. Bytes count as they are reported: open flows at `now_ns`
    /// (the record says how much moved since the last one, not when), closed flows at
    /// `end_ns`. A connection counts once, with its mTLS, tunnel setup and pool reuse, at
    /// its first record: the first interim record of a long-lived connection (a gRPC
    /// channel may stay open for hours), else the closing one. Its outcome counts when it
    /// closes.
    pub fn add_flow(&mut self, flow: &MeshFlow, now_ns: u64) {
        let src = self.directory.source(&flow.source);
        let dst = self
            .directory
            .destination(&flow.destination, &flow.original_destination);
        let edge = (src, dst);
        let at = flow.end_ns.unwrap_or(now_ns);
        let counting = flow.side == Role::Client || flow.source.workload.is_empty();
        let first_record = if !counting {
            false
        } else if flow.outcome == Outcome::Open {
            self.counted_open
                .insert(connection_key(&self.key_hasher, flow), at)
                .is_none()
        } else {
            self.counted_open
                .remove(&connection_key(&self.key_hasher, flow))
                .is_none()
        };
        let mut grown = 0;
        let Some(m) = self.slot(edge, at) else {
            return;
        };
        if let Some(us) = flow.upstream_connect_us {
            grown += m.record_connect_latency(us);
        }
        if counting {
            m.bytes_sent += flow.bytes_sent_delta;
            m.bytes_received += flow.bytes_received_delta;
        }
        if first_record {
            m.connections += 1;
            m.mtls_connections += u64::from(flow.mtls);
            if flow.path == MeshPath::Hbone {
                match flow.tunnel_reused {
                    Some(true) => m.tunnels_reused += 1,
                    Some(false) => m.tunnels_new += 1,
                    None => {}
                }
            }
            if let Some(us) = flow.tunnel_setup_us {
                grown += m.record_tunnel_setup(us);
            }
        }
        let error = outcome_error(flow.outcome).filter(|_| counting);
        if let Some(kind) = error {
            m.record_error(kind, at);
        }
        self.grew(at, grown);
        if counting {
            let total = self.total(edge, at);
            total.bytes_sent += flow.bytes_sent_delta;
            total.bytes_received += flow.bytes_received_delta;
            total.connections += u64::from(first_record);
            if let Some(kind) = error {
                total.errors.add(kind, 1);
            }
        }
    }

    /// Counts a request at its `end_ns`.
    pub fn add_request(&mut self, request: &Request) {
        if request.side == Role::Server && !request.source.workload.is_empty() {
            return;
        }
        let src = self.directory.source(&request.source);
        let dst = self
            .directory
            .destination(&request.destination, &request.remote);
        let edge = (src, dst);
        let at = request.end_ns;
        let error = request_error(request);
        let Some(m) = self.slot(edge, at) else {
            return;
        };
        m.requests += 1;
        match request.protocol {
            Protocol::Grpc => m.protocols.grpc = true,
            Protocol::Http1 | Protocol::Http2 => m.protocols.http = true,
        }
        if let Some(kind) = error {
            m.record_error(kind, at);
        }
        let grown = m.record_request_latency(request.latency_us);
        self.grew(at, grown);
        let total = self.total(edge, at);
        total.requests += 1;
        if let Some(kind) = error {
            total.errors.add(kind, 1);
        }
    }

    /// Buckets whose start lies in `[from_ns, to_ns)` (none when `to_ns` is not after
    /// `from_ns`'s bucket).
    pub fn buckets(&self, from_ns: u64, to_ns: u64) -> impl Iterator<Item = (u64, &Bucket)> {
        let from = self.bucket_start(from_ns);
        (from < to_ns)
            .then(|| self.buckets.range(from..to_ns))
            .into_iter()
            .flatten()
            .map(|(&start, bucket)| (start, bucket))
    }

    /// Every edge's metrics merged over `[from_ns, to_ns)`, at workload level.
    pub fn merged(&self, from_ns: u64, to_ns: u64) -> HashMap<EdgeKey, EdgeMetrics> {
        let mut merged: HashMap<EdgeKey, EdgeMetrics> = HashMap::new();
        for (_, bucket) in self.buckets(from_ns, to_ns) {
            for (edge, metrics) in bucket.edges() {
                merged.entry(edge).or_default().merge(metrics);
            }
        }
        merged
    }
}

fn outcome_error(outcome: Outcome) -> Option<ErrorKind> {
    match outcome {
        Outcome::Closed | Outcome::Open => None,
        Outcome::Reset => Some(ErrorKind::Reset),
        Outcome::Refused => Some(ErrorKind::Refused),
        Outcome::Timeout => Some(ErrorKind::Timeout),
        Outcome::Unreachable => Some(ErrorKind::Unreachable),
        Outcome::TunnelFailed => Some(ErrorKind::TunnelFailed),
    }
}

fn request_error(request: &Request) -> Option<ErrorKind> {
    if request.grpc_status.is_some_and(|s| s != 0) {
        Some(ErrorKind::GrpcError)
    } else if request.status.is_some_and(|s| s >= 500) {
        Some(ErrorKind::Http5xx)
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests;
