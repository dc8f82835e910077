//! Parent links of one read (an API answer, an export round), each computed once.
//!
//! A span's parent is found from the indexes ([`TraceStore::parent`]); its children are
//! the spans whose parent it is, found by asking the candidates the indexes offer. Without
//! memory, every span of a trace asks each of its candidates for its parent, and a
//! `traceparent` shared by thousands of spans (a caller that reuses one) makes every one
//! of its client spans ask all of them: quadratic in links, cubic in work. Here each
//! span's parent is computed once, and the server spans sharing a `traceparent` are
//! grouped by parent once, so linking a trace costs about one lookup per span.
use std::collections::{HashMap, HashSet};

use super::{SKEW_NS, TraceStore, is_same_call};
use crate::record::Role;

pub(super) struct Links<'s> {
    store: &'s TraceStore,
    parents: HashMap<u64, Option<u64>>,
    roots: HashMap<u64, u64>,
    /// hash(trace_id, span_id) → client span → the server spans sharing that traceparent
    /// whose parent it is.
    header_children: HashMap<u64, HashMap<u64, Vec<u64>>>,
}

impl<'s> Links<'s> {
    pub(super) fn new(store: &'s TraceStore) -> Self {
        Self {
            store,
            parents: HashMap::new(),
            roots: HashMap::new(),
            header_children: HashMap::new(),
        }
    }

    /// The span `key` hangs under, if any.
    pub(super) fn parent(&mut self, key: u64) -> Option<u64> {
        *self
            .parents
            .entry(key)
            .or_insert_with(|| self.store.parent(key))
    }

    /// Follows parents up to the root. Records may form a cycle (a `traceparent` links a
    /// server span to a client span that its own process made later): then the lowest
    /// key on the cycle is the root, whichever span the walk started from.
    pub(super) fn root(&mut self, key: u64) -> u64 {
        let mut path = Vec::new();
        let mut on_path = HashSet::new();
        let mut at = key;
        let root = loop {
            if let Some(&root) = self.roots.get(&at) {
                break root;
            }
            if !on_path.insert(at) {
                let cycle_start = path.iter().position(|&k| k == at).unwrap_or(0);
                break path[cycle_start..].iter().copied().min().unwrap_or(at);
            }
            path.push(at);
            match self.parent(at) {
                Some(parent) => at = parent,
                None => break at,
            }
        };
        for k in path {
            self.roots.insert(k, root);
        }
        root
    }

    /// Spans whose parent is `key`, by store key.
    pub(super) fn children(&mut self, key: u64) -> Vec<u64> {
        let store = self.store;
        let Some(span) = store.requests.get(&key) else {
            return Vec::new();
        };
        let mut children: Vec<u64> = match span.side {
            Role::Client => {
                let mut c: Vec<u64> = store
                    .servers_by_call
                    .range(
                        store.call_key(span),
                        span.start_ns.saturating_sub(SKEW_NS),
                        span.end_ns.saturating_add(SKEW_NS),
                    )
                    .map(|e| e.1)
                    // Only the same call can hang here without the header (found below),
                    // and this is cheaper than asking each of a busy call's servers.
                    .filter(|k| {
                        store
                            .requests
                            .get(k)
                            .is_some_and(|server| is_same_call(span, server))
                    })
                    .collect();
                if let (Some(t), Some(s)) = (&span.trace_id, &span.span_id) {
                    let header = store.hash((t, s));
                    if let Some(under) = self.header_children(header).get(&key) {
                        c.extend(under);
                    }
                }
                c
            }
            Role::Server => store
                .clients_by_process
                .range(
                    store.process_key(span),
                    span.start_ns,
                    span.end_ns.saturating_add(1),
                )
                .map(|e| e.1)
                .collect(),
        };
        children.sort_unstable();
        children.dedup();
        children.retain(|&c| c != key && self.parent(c) == Some(key));
        children
    }

    /// The server spans carrying the traceparent `header`, grouped by parent (computed
    /// the first time a client span with it is expanded).
    fn header_children(&mut self, header: u64) -> &HashMap<u64, Vec<u64>> {
        if !self.header_children.contains_key(&header) {
            let servers: Vec<u64> = self
                .store
                .servers_by_header
                .range(header, 0, u64::MAX)
                .map(|e| e.1)
                .collect();
            let mut by_parent: HashMap<u64, Vec<u64>> = HashMap::new();
            for server in servers {
                if let Some(parent) = self.parent(server) {
                    by_parent.entry(parent).or_default().push(server);
                }
            }
            self.header_children.insert(header, by_parent);
        }
        &self.header_children[&header]
    }
}
