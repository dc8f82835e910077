//! When a trace's spans are settled enough to leave for an OTLP collector
//! (`--otlp-endpoint`).
//!
//! Spans are linked on read (see the parent module), so a span's parent, and with it the
//! trace id, is only as good as the records that have arrived: the two sides of a call
//! come from two nodes, and a caller's server span arrives after the calls it made. A
//! span is therefore held until its trace has been quiet — no span of it arrived — for
//! `quiet_ns` (`--otlp-delay`); then every span of the trace not yet exported leaves at
//! once, with the trace id, span ids and parent ids `GET /api/v1/traces/{id}` shows at
//! that moment. Each request record leaves once (a client span together with the tunnel
//! span under it).
//!
//! Ids come from store keys and `traceparent` headers, so they do not change later: a
//! span arriving after its trace left is exported alone once it settles and still names
//! its parent. A late *parent*, though, becomes the root of a trace of its own, because
//! its children already left under the trace id they had then; and a tunnel span is only
//! exported when the HBONE flow record had arrived when its client span left. A trace that
//! never goes quiet (a `traceparent` reused for ever) leaves anyway once its oldest held
//! span has waited [`HOLD_FACTOR`] × `quiet_ns`.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::TraceStore;
use super::links::Links;
use super::view::{Origin, SpanView};
use crate::record::{MeshFlow, Request};

/// A held span leaves after at most this many quiet periods, quiet or not.
pub const HOLD_FACTOR: u64 = 6;
/// Rough bytes per held span (hash map slot + ordered set entry).
pub(super) const PENDING_ENTRY_BYTES: usize = 64;

/// Request records not yet exported, by arrival.
#[derive(Debug, Default)]
pub(super) struct PendingExport {
    /// Store key → arrival time (server clock).
    arrived: HashMap<u64, u64>,
    /// (arrival time, store key).
    by_arrival: BTreeSet<(u64, u64)>,
    /// Held spans evicted (retention, `--max-memory`) before they could leave.
    pub evicted: u64,
}

impl PendingExport {
    pub(super) fn insert(&mut self, key: u64, arrived_ns: u64) {
        self.arrived.insert(key, arrived_ns);
        self.by_arrival.insert((arrived_ns, key));
    }

    /// Forgets `key`; false when it was not held.
    pub(super) fn remove(&mut self, key: u64) -> bool {
        match self.arrived.remove(&key) {
            Some(at) => {
                self.by_arrival.remove(&(at, key));
                true
            }
            None => false,
        }
    }
}

/// One span ready for export: as the trace API shows it but without its string attribute
/// map, and the record it was made from (for the typed attributes an OTLP backend
/// expects).
#[derive(Debug, Clone)]
pub struct ExportSpan {
    pub span: SpanView,
    pub record: SpanRecord,
}

#[derive(Debug, Clone)]
pub enum SpanRecord {
    /// A client or server span: the request record of that side.
    Request(Arc<Request>),
    /// A tunnel span: the client-side HBONE flow that carried the call (its times are
    /// the client span's).
    Tunnel(Arc<MeshFlow>),
}

impl TraceStore {
    /// Starts holding every request added from now on until [`Self::take_settled`]
    /// exports it.
    pub fn track_export(&mut self) {
        if self.export.is_none() {
            self.export = Some(PendingExport::default());
        }
    }

    /// Spans held for export.
    pub fn pending_export(&self) -> usize {
        self.export.as_ref().map_or(0, |p| p.arrived.len())
    }

    /// Held spans that were evicted before they could be exported.
    pub fn evicted_before_export(&self) -> u64 {
        self.export.as_ref().map_or(0, |p| p.evicted)
    }

    /// The spans of every trace that has been quiet for `quiet_ns` at `now_ns` (or held
    /// longer than [`HOLD_FACTOR`] × `quiet_ns`), each exactly once, traces in the order
    /// their spans arrived, parents before children within a trace.
    pub fn take_settled(&mut self, now_ns: u64, quiet_ns: u64) -> Vec<ExportSpan> {
        let Some(mut pending) = self.export.take() else {
            return Vec::new();
        };
        let quiet_since = now_ns.saturating_sub(quiet_ns);
        let overdue_since = now_ns.saturating_sub(quiet_ns.saturating_mul(HOLD_FACTOR));
        let settled: Vec<u64> = pending
            .by_arrival
            .range(..(quiet_since.saturating_add(1), 0))
            .map(|&(_, key)| key)
            .collect();
        let mut judged_roots = HashSet::new();
        let mut out = Vec::new();
        let mut left_total = 0;
        let mut links = Links::new(self);
        for key in settled {
            if !pending.arrived.contains_key(&key) {
                continue; // left with an earlier trace this round
            }
            let root = links.root(key);
            if judged_roots.contains(&root) {
                continue;
            }
            // The trace as `GET /api/v1/traces/{id}` assembles it; its own root always in
            // it (whatever ids the records carry).
            let trace_id = self.trace_id_of(root);
            let mut roots = self.roots_of(&mut links, &trace_id);
            if !roots.contains(&root) {
                roots.push(root);
            }
            judged_roots.extend(roots.iter().copied());
            // Every span leaves: no limit on the spans of one trace here.
            let spans = self
                .assemble_spans(&mut links, trace_id, &roots, false, usize::MAX)
                .spans;
            let held: Vec<(SpanView, Origin, u64)> = spans
                .into_iter()
                .filter_map(|(span, origin)| {
                    let at = *pending.arrived.get(&origin.request_key())?;
                    Some((span, origin, at))
                })
                .collect();
            let quiet = held.iter().all(|&(_, _, at)| at <= quiet_since);
            let overdue = held.iter().any(|&(_, _, at)| at <= overdue_since);
            if !quiet && !overdue {
                continue;
            }
            let mut left = Vec::with_capacity(held.len());
            for (span, origin, _) in held {
                let request = &self.requests[&origin.request_key()];
                let record = match origin {
                    Origin::Request(k) => {
                        left.push(k);
                        SpanRecord::Request(Arc::clone(request))
                    }
                    // The walk made this span from the flow `tunnel` finds.
                    Origin::Tunnel(_) => match self.tunnel(request) {
                        Some(flow) => SpanRecord::Tunnel(Arc::clone(flow)),
                        None => continue,
                    },
                };
                out.push(ExportSpan { span, record });
            }
            if !left.contains(&key) {
                // Every span is under its root, so the walk from the root reaches it;
                // never hold a span for ever if that were not so.
                tracing::warn!(key, "settled span missing from its trace; not exported");
                left.push(key);
            }
            for k in left {
                if pending.remove(k) {
                    left_total += 1;
                }
            }
        }
        self.bytes -= left_total * PENDING_ENTRY_BYTES;
        self.export = Some(pending);
        out
    }
}
