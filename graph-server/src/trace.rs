//! Traces, assembled from request records and HBONE mesh flows without touching the
//! applications.
//!
//! Every request record is a span: the client side's record is the client span at the
//! caller, the server side's record the server span at the callee. Spans are linked when
//! asked for (search, `GET /traces/{id}`), from indexes kept at ingest, so records may
//! arrive in any order from any node:
//! - a server span's parent is the client span of the same call: the one carrying the
//!   same `traceparent` ids when the request had the header, otherwise the client span
//!   from the same source ip to the same destination workload with the same method and
//!   path whose time range contains the server span (ztunnel keeps the client's ip on
//!   inbound delivery, not its port);
//! - a client span's parent is the innermost server span of the same process (node + pid)
//!   in flight when the call was made: the outbound call was made while serving it;
//! - between a client span and its server span sits a tunnel span when a client-side
//!   HBONE mesh flow carried the call (same source ip and dialled address, open at the
//!   time), with the tunnel's setup time, reuse and identities.
//!
//! Trace ids are the `traceparent` trace id when the root request carried one; otherwise
//! `6e657068696c6961` ("nephilia") followed by the root span's store key, so the id can be
//! looked up without a table.
//!
//! With `--otlp-endpoint`, [`export`] decides when a trace's spans are settled enough to
//! leave for an OTLP collector.
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::record::{MeshFlow, MeshPath, Request, Role};

pub mod export;
mod links;
pub mod view;

pub use export::{ExportSpan, SpanRecord};
pub use view::{MAX_TRACE_SPANS, SpanKind, SpanView, TraceQuery, TraceSummary, TraceView};

/// How far apart the clocks of two nodes may be when matching the two sides of a call.
const SKEW_NS: u64 = 50_000_000;
/// Longest a client may wait between starting a call and the server seeing it.
const MAX_LEAD_NS: u64 = 10_000_000_000;
/// Longest server span searched for when nesting an outbound call.
const MAX_NESTING_NS: u64 = 300_000_000_000;
/// Rough bytes per index entry (a B-tree element and its share of the node).
const INDEX_ENTRY_BYTES: usize = 40;

/// Entries (start_ns, store key) under many lookup hashes, each hash's entries in start
/// order: one B-tree of (hash, start, key). Records arriving in any order cost a
/// logarithmic insert, and a hash with a million entries (a busy socket, a busy call) costs
/// no more to add to than one with a single entry.
#[derive(Debug, Default)]
struct TimeIndex(BTreeSet<(u64, u64, u64)>);

impl TimeIndex {
    fn insert(&mut self, hash: u64, (start_ns, key): (u64, u64)) {
        self.0.insert((hash, start_ns, key));
    }

    fn remove(&mut self, hash: u64, (start_ns, key): (u64, u64)) {
        self.0.remove(&(hash, start_ns, key));
    }

    /// Entries under `hash` starting in `[from_ns, to_ns)`, by (start, key).
    fn range(
        &self,
        hash: u64,
        from_ns: u64,
        to_ns: u64,
    ) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
        (from_ns < to_ns)
            .then(|| self.0.range((hash, from_ns, 0)..(hash, to_ns, 0)))
            .into_iter()
            .flatten()
            .map(|&(_, start_ns, key)| (start_ns, key))
    }

    /// The entry under `hash` starting in `range` that `matches`, nearest in start time
    /// to `at_ns`, ties to the lower key. It looks outwards from `at_ns`, so a busy call
    /// (thousands of entries in the range) costs a few lookups, not thousands.
    fn nearest(
        &self,
        hash: u64,
        range: std::ops::Range<u64>,
        at_ns: u64,
        matches: impl Fn(u64) -> bool,
    ) -> Option<(u64, u64)> {
        if range.is_empty() {
            return None;
        }
        let at_ns = at_ns.clamp(range.start, range.end);
        // At or after `at_ns`, ascending (start, key): the first match is the best.
        let after = self.range(hash, at_ns, range.end).find(|e| matches(e.1));
        // Before `at_ns`, read backwards: the first match has the nearest start, but one
        // with the same start and a lower key may precede it.
        let before = self
            .range(hash, range.start, at_ns)
            .rev()
            .find(|e| matches(e.1))
            .and_then(|found| {
                self.range(hash, found.0, found.0 + 1)
                    .find(|e| matches(e.1))
            });
        [before, after]
            .into_iter()
            .flatten()
            .min_by_key(|&(start, k)| (at_ns.abs_diff(start), k))
    }
}

/// Whether [`TraceStore::index_request`] adds a request's index entries or removes them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexing {
    Add,
    Remove,
}

#[derive(Debug, Default)]
pub struct TraceStore {
    next_key: u64,
    requests: HashMap<u64, Arc<Request>>,
    by_start: BTreeSet<(u64, u64)>,
    /// hash(trace_id, span_id) → client / server spans carrying that traceparent.
    clients_by_header: TimeIndex,
    servers_by_header: TimeIndex,
    /// hash(trace_id) of requests carrying one.
    by_trace: TimeIndex,
    /// hash(source ip, destination, method, path) → client / server spans.
    clients_by_call: TimeIndex,
    servers_by_call: TimeIndex,
    /// hash(node, local address) → client spans of one socket (one connection at a time).
    clients_by_socket: TimeIndex,
    /// hash(node, pid) → client / server spans of one process.
    clients_by_process: TimeIndex,
    servers_by_process: TimeIndex,
    flows: HashMap<u64, Arc<MeshFlow>>,
    /// hash(node, source ip, original destination, start) → flow key (interim records
    /// of the same flow replace each other).
    flow_ids: HashMap<u64, u64>,
    flows_by_start: BTreeSet<(u64, u64)>,
    /// hash(source ip, original destination) → client-side HBONE flows.
    flows_by_path: TimeIndex,
    /// Spans not yet exported over OTLP; `None` unless export is on.
    export: Option<export::PendingExport>,
    /// Spans left out of trace views because their trace had more than
    /// [`MAX_TRACE_SPANS`].
    spans_dropped: u64,
    bytes: usize,
    hasher: std::hash::RandomState,
}

impl TraceStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn span_count(&self) -> usize {
        self.requests.len()
    }

    pub fn oldest_ns(&self) -> Option<u64> {
        let spans = self.by_start.first().map(|e| e.0);
        let flows = self.flows_by_start.first().map(|e| e.0);
        spans.into_iter().chain(flows).min()
    }

    fn call_key(&self, request: &Request) -> u64 {
        let d = &request.destination;
        let destination = if d.workload.is_empty() {
            &d.ip
        } else {
            &d.workload
        };
        self.hash((
            &request.source.ip,
            &d.namespace,
            destination,
            &request.method,
            &request.path,
        ))
    }

    fn process_key(&self, request: &Request) -> u64 {
        self.hash((&request.node, request.pid))
    }

    /// Adds a request record that reached the server at `arrived_ns` (the server's clock;
    /// OTLP export waits for traces to be quiet by this time, not by the nodes' clocks).
    pub fn add_request(&mut self, request: impl Into<Arc<Request>>, arrived_ns: u64) {
        let request = request.into();
        let key = self.next_key;
        self.next_key += 1;
        if let Some(pending) = &mut self.export {
            pending.insert(key, arrived_ns);
            self.bytes += export::PENDING_ENTRY_BYTES;
        }
        let entries = self.index_request(&request, key, Indexing::Add);
        self.bytes += size_of::<Request>() + request.heap_bytes() + entries * INDEX_ENTRY_BYTES;
        self.requests.insert(key, request);
    }

    /// Adds (or removes) the entries of request `key` in every index that finds it;
    /// returns how many. Adding and evicting both come here, so they cannot disagree.
    fn index_request(&mut self, request: &Request, key: u64, indexing: Indexing) -> usize {
        let entry = (request.start_ns, key);
        let apply = |index: &mut TimeIndex, hash: u64| match indexing {
            Indexing::Add => index.insert(hash, entry),
            Indexing::Remove => index.remove(hash, entry),
        };
        let mut entries = 1;
        if let Some(t) = &request.trace_id {
            // By trace id even without a span id: `GET /api/v1/traces/{id}` must find
            // every span the search shows under that id.
            let trace = self.hash(t);
            apply(&mut self.by_trace, trace);
            entries += 1;
            if let Some(s) = &request.span_id {
                let header = self.hash((t, s));
                let by_header = match request.side {
                    Role::Client => &mut self.clients_by_header,
                    Role::Server => &mut self.servers_by_header,
                };
                apply(by_header, header);
                entries += 1;
            }
        }
        let call = self.call_key(request);
        let process = self.process_key(request);
        match request.side {
            Role::Client => {
                let socket = self.hash((&request.node, &request.local));
                apply(&mut self.clients_by_call, call);
                apply(&mut self.clients_by_process, process);
                apply(&mut self.clients_by_socket, socket);
                entries += 3;
            }
            Role::Server => {
                apply(&mut self.servers_by_call, call);
                apply(&mut self.servers_by_process, process);
                entries += 2;
            }
        }
        match indexing {
            Indexing::Add => self.by_start.insert(entry),
            Indexing::Remove => self.by_start.remove(&entry),
        };
        entries
    }

    /// Keeps client-side HBONE flows: they become tunnel spans.
    pub fn add_flow(&mut self, flow: impl Into<Arc<MeshFlow>>) {
        let flow = flow.into();
        if flow.side != Role::Client || flow.path != MeshPath::Hbone {
            return;
        }
        let id = self.flow_id(&flow);
        if let Some(&key) = self.flow_ids.get(&id) {
            // A later record of the same flow: keep the newest state.
            self.bytes += flow_bytes(&flow);
            if let Some(old) = self.flows.insert(key, flow) {
                self.bytes -= flow_bytes(&old);
            }
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let path = self.flow_path(&flow);
        self.flows_by_path.insert(path, (flow.start_ns, key));
        self.flows_by_start.insert((flow.start_ns, key));
        self.flow_ids.insert(id, key);
        self.bytes += flow_bytes(&flow) + 3 * INDEX_ENTRY_BYTES;
        self.flows.insert(key, flow);
    }

    /// The same flow in every record of it, interim or final.
    fn flow_id(&self, flow: &MeshFlow) -> u64 {
        self.hash((
            &flow.node,
            &flow.source.ip,
            &flow.original_destination,
            flow.start_ns,
        ))
    }

    fn flow_path(&self, flow: &MeshFlow) -> u64 {
        self.hash((&flow.source.ip, &flow.original_destination))
    }

    /// Drops spans and flows that started before `t_ns`; returns the bytes freed.
    pub fn evict_before(&mut self, t_ns: u64) -> usize {
        let before = self.bytes;
        let old: Vec<u64> = self.by_start.range(..(t_ns, 0)).map(|e| e.1).collect();
        for key in old {
            if let Some(request) = self.requests.remove(&key) {
                let entries = self.index_request(&request, key, Indexing::Remove);
                self.bytes -=
                    size_of::<Request>() + request.heap_bytes() + entries * INDEX_ENTRY_BYTES;
            }
            if let Some(pending) = &mut self.export
                && pending.remove(key)
            {
                pending.evicted += 1;
                self.bytes -= export::PENDING_ENTRY_BYTES;
            }
        }
        let keep = self.flows_by_start.split_off(&(t_ns, 0));
        for (start_ns, key) in std::mem::replace(&mut self.flows_by_start, keep) {
            if let Some(flow) = self.flows.remove(&key) {
                let path = self.flow_path(&flow);
                self.flows_by_path.remove(path, (start_ns, key));
                self.flow_ids.remove(&self.flow_id(&flow));
                self.bytes -= flow_bytes(&flow) + 3 * INDEX_ENTRY_BYTES;
            }
        }
        before - self.bytes
    }

    pub fn request(&self, key: u64) -> Option<&Request> {
        self.requests.get(&key).map(Arc::as_ref)
    }

    /// The span `key` hangs under, if any.
    pub fn parent(&self, key: u64) -> Option<u64> {
        let span = self.requests.get(&key)?;
        match span.side {
            Role::Server => self.server_parent(span),
            Role::Client => self.client_parent(key, span),
        }
    }

    /// The client span of the same call.
    fn server_parent(&self, server: &Request) -> Option<u64> {
        if let (Some(t), Some(s)) = (&server.trace_id, &server.span_id) {
            // The client with the same traceparent nearest in time: a caller that reuses
            // one traceparent for thousands of calls costs a lookup, not a scan of them.
            let found = self.clients_by_header.nearest(
                self.hash((t, s)),
                0..u64::MAX,
                server.start_ns,
                |k| {
                    self.requests.get(&k).is_some_and(|c| {
                        c.trace_id == server.trace_id && c.span_id == server.span_id
                    })
                },
            );
            if let Some((_, k)) = found {
                return Some(k);
            }
        }
        let from = server.start_ns.saturating_sub(MAX_LEAD_NS);
        self.clients_by_call
            .nearest(
                self.call_key(server),
                from..server.start_ns.saturating_add(SKEW_NS),
                server.start_ns,
                |k| {
                    self.requests
                        .get(&k)
                        .is_some_and(|c| is_same_call(c, server))
                },
            )
            .map(|(_, k)| k)
    }

    /// The innermost server span of the same process in flight around the call.
    fn client_parent(&self, key: u64, client: &Request) -> Option<u64> {
        if client.pid == 0 {
            return None;
        }
        let from = client.start_ns.saturating_sub(MAX_NESTING_NS);
        self.servers_by_process
            .range(self.process_key(client), from, client.start_ns)
            // Newest first: the first span that contains the call is the innermost, and a
            // busy process has many older server spans that need not be looked at.
            .rev()
            .find(|&(_, k)| {
                k != key
                    && self.requests.get(&k).is_some_and(|s| {
                        s.node == client.node
                            && s.pid == client.pid
                            && s.end_ns >= client.end_ns
                            && compatible_traces(s, client)
                    })
            })
            .map(|(_, k)| k)
    }

    /// The HBONE flow that carried a client span's call.
    pub fn tunnel(&self, client: &Request) -> Option<&Arc<MeshFlow>> {
        let path = self.hash((&client.source.ip, &client.remote));
        self.flows_by_path
            .range(path, 0, client.start_ns.saturating_add(SKEW_NS))
            .rev()
            .filter_map(|(_, k)| self.flows.get(&k))
            .find(|f| {
                f.source.ip == client.source.ip
                    && f.original_destination == client.remote
                    && f.end_ns
                        .is_none_or(|end| end.saturating_add(SKEW_NS) >= client.start_ns)
            })
    }

    /// Whether the client span `key` is the first call on the connection `flow` (which
    /// carried it): no client span of the same socket started between the flow's start
    /// and it. That call waited for the tunnel to be set up; later ones did not.
    pub fn first_on_connection(&self, key: u64, client: &Request, flow: &MeshFlow) -> bool {
        let socket = self.hash((&client.node, &client.local));
        self.clients_by_socket
            .range(socket, flow.start_ns, u64::MAX)
            .next()
            .is_none_or(|(_, first)| first == key)
    }

    /// Request keys carrying `trace_id` in their traceparent.
    fn with_trace_id(&self, trace_id: &str) -> Vec<u64> {
        self.by_trace
            .range(self.hash(trace_id), 0, u64::MAX)
            .map(|e| e.1)
            .filter(|k| {
                self.requests
                    .get(k)
                    .is_some_and(|r| r.trace_id.as_deref() == Some(trace_id))
            })
            .collect()
    }
}

fn flow_bytes(flow: &MeshFlow) -> usize {
    size_of::<MeshFlow>() + flow.heap_bytes()
}

/// Both sides of one call: same source ip, destination, method and path; the server's
/// time inside the client's (give or take clock skew); the same trace if both carry one.
fn is_same_call(client: &Request, server: &Request) -> bool {
    let (c, s) = (&client.destination, &server.destination);
    let same_destination = if c.workload.is_empty() {
        c.ip == s.ip
    } else {
        c.workload == s.workload && c.namespace == s.namespace
    };
    client.side == Role::Client
        && client.source.ip == server.source.ip
        && same_destination
        && client.method == server.method
        && client.path == server.path
        && client.start_ns <= server.start_ns.saturating_add(SKEW_NS)
        && server.end_ns <= client.end_ns.saturating_add(SKEW_NS)
        && compatible_traces(client, server)
}

fn compatible_traces(a: &Request, b: &Request) -> bool {
    match (&a.trace_id, &b.trace_id) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
