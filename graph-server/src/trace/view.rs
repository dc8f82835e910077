//! Trace assembly and search over the [`TraceStore`].
use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::TraceStore;
use super::links::Links;
use crate::record::{MeshFlow, Request, Role};

/// "nephilia" in ASCII: the first half of trace ids the server made up.
const SYNTHETIC_TRACE: u64 = 0x6e65_7068_696c_6961;

/// Most spans a trace view holds (tunnel spans included); the rest of a larger trace is
/// counted in [`TraceSummary::spans_dropped`] and `nephilia_trace_spans_dropped_total`.
/// Ten thousand spans make a JSON answer of about 10 MB.
pub const MAX_TRACE_SPANS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    Client,
    Server,
    /// The HBONE tunnel ztunnel carried the call through.
    Tunnel,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub kind: SpanKind,
    /// The workload the span ran in (the source for client spans, the destination for
    /// server spans, "ztunnel" for tunnel spans); the ip when the workload is unknown.
    pub service: String,
    pub operation: String,
    pub start_ns: u64,
    pub duration_us: u64,
    pub error: bool,
    pub node: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_service: String,
    pub root_operation: String,
    pub start_ns: u64,
    pub duration_us: u64,
    /// Spans in the view; `span_count`, `error_count`, `services` and the times cover
    /// these.
    pub span_count: usize,
    pub error_count: usize,
    pub services: Vec<String>,
    /// Spans of the trace left out because it has more than [`MAX_TRACE_SPANS`]: the
    /// view keeps the first ones in walk order (parents before children).
    pub spans_dropped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    #[serde(flatten)]
    pub summary: TraceSummary,
    /// Parents before children, siblings by start time.
    pub spans: Vec<SpanView>,
}

/// `GET /api/v1/traces` filters; a trace matches when one of its spans matches all.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    pub min_duration_us: Option<u64>,
    pub max_duration_us: Option<u64>,
    pub error: Option<bool>,
    pub since_ns: u64,
    pub until_ns: u64,
    /// key=value pairs matched against span attributes.
    pub attributes: Vec<(String, String)>,
    pub limit: usize,
}

/// What a span of an assembled trace was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The request record with this store key.
    Request(u64),
    /// The HBONE flow that carried the client request with this store key.
    Tunnel(u64),
}

impl Origin {
    /// The request record the span stands or falls with.
    pub(super) fn request_key(self) -> u64 {
        match self {
            Self::Request(key) | Self::Tunnel(key) => key,
        }
    }
}

/// One depth-first walk over a trace: what it visited and collected.
struct Walk<'a> {
    trace_id: &'a str,
    /// Fill [`SpanView::attributes`].
    attributes: bool,
    /// Most spans collected; the walk goes on past it only to count the rest.
    max_spans: usize,
    spans: Vec<(SpanView, Origin)>,
    dropped: usize,
    seen: HashSet<u64>,
}

impl Walk<'_> {
    fn full(&self) -> bool {
        self.spans.len() >= self.max_spans
    }
}

/// The spans of one assembled trace, each with what it was made from.
pub(super) struct Assembled {
    pub trace_id: String,
    pub spans: Vec<(SpanView, Origin)>,
    /// Spans left out past the walk's limit.
    pub dropped: usize,
}

fn span_id(key: u64) -> String {
    format!("{:016x}", key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

fn service_of(request: &Request) -> String {
    let peer = match request.side {
        Role::Client => &request.source,
        Role::Server => &request.destination,
    };
    if peer.workload.is_empty() {
        peer.ip.clone()
    } else {
        peer.workload.clone()
    }
}

fn attributes(request: &Request) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            a.insert(k.to_owned(), v);
        }
    };
    put("protocol", request.protocol.as_str().to_owned());
    put("http.method", request.method.clone());
    put("http.path", request.path.clone());
    put("http.authority", request.authority.clone());
    put(
        "http.status_code",
        request.status.map(|s| s.to_string()).unwrap_or_default(),
    );
    put(
        "grpc.status",
        request
            .grpc_status
            .map(|s| s.to_string())
            .unwrap_or_default(),
    );
    put(
        "grpc.message",
        request.grpc_message.clone().unwrap_or_default(),
    );
    put("request_bytes", request.request_bytes.to_string());
    put("response_bytes", request.response_bytes.to_string());
    put("source.workload", request.source.workload.clone());
    put("source.namespace", request.source.namespace.clone());
    put("source.identity", request.source.identity.clone());
    put("source.ip", request.source.ip.clone());
    put("destination.workload", request.destination.workload.clone());
    put(
        "destination.namespace",
        request.destination.namespace.clone(),
    );
    put("destination.service", request.destination.service.clone());
    put("destination.identity", request.destination.identity.clone());
    put("destination.ip", request.destination.ip.clone());
    put("local", request.local.clone());
    put("remote", request.remote.clone());
    put("pid", request.pid.to_string());
    put(
        "traceparent.trace_id",
        request.trace_id.clone().unwrap_or_default(),
    );
    put(
        "traceparent.span_id",
        request.span_id.clone().unwrap_or_default(),
    );
    a
}

fn duration_us(request: &Request) -> u64 {
    if request.latency_us > 0 {
        request.latency_us
    } else {
        (request.end_ns - request.start_ns) / 1000
    }
}

impl TraceStore {
    pub(super) fn trace_id_of(&self, root: u64) -> String {
        match self.requests.get(&root).and_then(|r| r.trace_id.clone()) {
            Some(id) => id,
            None => format!("{SYNTHETIC_TRACE:016x}{root:016x}"),
        }
    }

    /// Roots of the trace `trace_id`: the root of every span carrying it in its
    /// traceparent, and for an id the server made up, the span it names. (A traceparent
    /// may carry an id that looks made up: both count.)
    pub(super) fn roots_of(&self, links: &mut Links, trace_id: &str) -> Vec<u64> {
        let mut roots: Vec<u64> = self
            .with_trace_id(trace_id)
            .into_iter()
            .map(|k| links.root(k))
            .collect();
        let synthetic = u64::from_str_radix(trace_id.get(..16).unwrap_or(""), 16).ok();
        if trace_id.len() == 32
            && synthetic == Some(SYNTHETIC_TRACE)
            && let Some(key) = u64::from_str_radix(&trace_id[16..], 16)
                .ok()
                .filter(|k| self.requests.contains_key(k))
        {
            roots.push(links.root(key));
        }
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// `GET /api/v1/traces/{trace_id}`: at most [`MAX_TRACE_SPANS`] spans; the spans left
    /// out are counted in the view and in [`Self::spans_dropped`].
    pub fn trace(&mut self, trace_id: &str) -> Option<TraceView> {
        let view = {
            let mut links = Links::new(self);
            let roots = self.roots_of(&mut links, trace_id);
            if roots.is_empty() {
                return None;
            }
            self.assemble(&mut links, trace_id.to_owned(), &roots, true)
        };
        self.spans_dropped += view.summary.spans_dropped as u64;
        Some(view)
    }

    /// Spans left out of trace views (API answers) so far, because their trace had more
    /// than [`MAX_TRACE_SPANS`]; each answer counts its own.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_dropped
    }

    /// The spans under `roots`, in the trace `trace_id` (the id they were found by: a
    /// traceparent id that looks made up gathers two traces under it, and both are named
    /// by it), parents before children, each with what it was made from,
    /// at most `max_spans` of them (the rest counted); without `attributes` the spans'
    /// attribute maps stay empty (the OTLP export builds its own from the records, and the
    /// maps are most of the cost of a walk).
    pub(super) fn assemble_spans(
        &self,
        links: &mut Links,
        trace_id: String,
        roots: &[u64],
        attributes: bool,
        max_spans: usize,
    ) -> Assembled {
        let mut walk = Walk {
            trace_id: &trace_id,
            attributes,
            max_spans,
            spans: Vec::new(),
            dropped: 0,
            seen: HashSet::new(),
        };
        let mut roots: Vec<u64> = roots.to_vec();
        roots.sort_by_key(|k| (self.requests[k].start_ns, *k));
        self.walk(links, &roots, &mut walk);
        let (spans, dropped) = (walk.spans, walk.dropped);
        Assembled {
            trace_id,
            spans,
            dropped,
        }
    }

    /// The trace under `roots` as the API shows it, at most [`MAX_TRACE_SPANS`] spans.
    fn assemble(
        &self,
        links: &mut Links,
        trace_id: String,
        roots: &[u64],
        attributes: bool,
    ) -> TraceView {
        let assembled = self.assemble_spans(links, trace_id, roots, attributes, MAX_TRACE_SPANS);
        let spans: Vec<SpanView> = assembled.spans.into_iter().map(|(span, _)| span).collect();
        let start_ns = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
        let end_ns = spans
            .iter()
            .map(|s| {
                s.start_ns
                    .saturating_add(s.duration_us.saturating_mul(1000))
            })
            .max()
            .unwrap_or_default();
        let mut services: Vec<String> = spans
            .iter()
            .filter(|s| s.kind != SpanKind::Tunnel)
            .map(|s| s.service.clone())
            .collect();
        services.sort();
        services.dedup();
        let summary = TraceSummary {
            trace_id: assembled.trace_id,
            root_service: spans.first().map(|s| s.service.clone()).unwrap_or_default(),
            root_operation: spans
                .first()
                .map(|s| s.operation.clone())
                .unwrap_or_default(),
            start_ns,
            duration_us: end_ns.saturating_sub(start_ns) / 1000,
            span_count: spans.len(),
            error_count: spans.iter().filter(|s| s.error).count(),
            services,
            spans_dropped: assembled.dropped,
        };
        TraceView { summary, spans }
    }

    /// Depth-first from each root in turn: a span, then (for client spans) its tunnel,
    /// then its children by start time. Iterative, with the spans still to visit on a
    /// stack, because a call chain may be as deep as the records make it.
    fn walk(&self, links: &mut Links, roots: &[u64], walk: &mut Walk) {
        // (span, its parent's span id), the next to visit on top.
        let mut stack: Vec<(u64, Option<String>)> =
            roots.iter().rev().map(|&root| (root, None)).collect();
        while let Some((key, parent)) = stack.pop() {
            if !walk.seen.insert(key) {
                continue;
            }
            let request = &self.requests[&key];
            let tunnel = match request.side {
                Role::Client => self.tunnel(request),
                Role::Server => None,
            };
            if walk.full() {
                // Past the limit: only count, and go on to count the span's children.
                walk.dropped += 1 + usize::from(tunnel.is_some());
                stack.extend(links.children(key).into_iter().map(|child| (child, None)));
                continue;
            }
            let id = match (request.side, &request.span_id) {
                (Role::Client, Some(header)) => header.clone(),
                _ => span_id(key),
            };
            let span = SpanView {
                trace_id: walk.trace_id.to_owned(),
                span_id: id.clone(),
                parent_span_id: parent,
                kind: match request.side {
                    Role::Client => SpanKind::Client,
                    Role::Server => SpanKind::Server,
                },
                service: service_of(request),
                operation: request.operation(),
                start_ns: request.start_ns,
                duration_us: duration_us(request),
                error: request.is_error(),
                node: request.node.clone(),
                attributes: if walk.attributes {
                    attributes(request)
                } else {
                    BTreeMap::new()
                },
            };
            walk.spans.push((span, Origin::Request(key)));
            let mut parent_of_children = id;
            if let Some(flow) = tunnel {
                if walk.full() {
                    walk.dropped += 1;
                } else {
                    let first = self.first_on_connection(key, request, flow);
                    let mut tunnel = tunnel_span(
                        walk.trace_id,
                        &parent_of_children,
                        key,
                        request,
                        flow,
                        first,
                    );
                    if !walk.attributes {
                        tunnel.attributes.clear();
                    }
                    parent_of_children = tunnel.span_id.clone();
                    walk.spans.push((tunnel, Origin::Tunnel(key)));
                }
            }
            let mut children = links.children(key);
            // Pushed latest first, so the earliest is visited next.
            children.sort_by_key(|k| std::cmp::Reverse((self.requests[k].start_ns, *k)));
            stack.extend(
                children
                    .into_iter()
                    .map(|child| (child, Some(parent_of_children.clone()))),
            );
        }
    }

    /// `GET /api/v1/traces`: summaries of the newest traces with a matching span (each
    /// trace assembled as `GET /api/v1/traces/{id}` would, [`MAX_TRACE_SPANS`] at most).
    /// An empty answer when `since_ns` is after `until_ns`.
    pub fn search(&self, query: &TraceQuery) -> Vec<TraceSummary> {
        let mut found = Vec::new();
        if query.since_ns > query.until_ns {
            return found;
        }
        let mut links = Links::new(self);
        let mut seen_roots = HashSet::new();
        let mut seen_ids = HashSet::new();
        let range = (query.since_ns, 0)..(query.until_ns.saturating_add(1), 0);
        for &(_, key) in self.by_start.range(range).rev() {
            if found.len() >= query.limit {
                break;
            }
            let request = &self.requests[&key];
            if !span_matches(request, query) {
                continue;
            }
            let root = links.root(key);
            if !seen_roots.insert(root) {
                continue;
            }
            let trace_id = self.trace_id_of(root);
            if !seen_ids.insert(trace_id.clone()) {
                continue;
            }
            // As `GET /api/v1/traces/{id}` finds it.
            let mut roots = self.roots_of(&mut links, &trace_id);
            // Its own root always in it (whatever ids the records carry).
            if !roots.contains(&root) {
                roots.push(root);
            }
            found.push(self.assemble(&mut links, trace_id, &roots, false).summary);
        }
        found
    }
}

fn span_matches(request: &Request, q: &TraceQuery) -> bool {
    let duration = duration_us(request);
    q.service.as_ref().is_none_or(|s| *s == service_of(request))
        && q.operation
            .as_ref()
            .is_none_or(|o| *o == request.operation())
        && q.min_duration_us.is_none_or(|min| duration >= min)
        && q.max_duration_us.is_none_or(|max| duration <= max)
        && q.error.is_none_or(|e| e == request.is_error())
        && (q.attributes.is_empty() || {
            let a = attributes(request);
            q.attributes.iter().all(|(k, v)| a.get(k) == Some(v))
        })
}

fn tunnel_span(
    trace_id: &str,
    parent: &str,
    client_key: u64,
    client: &Request,
    flow: &MeshFlow,
    first_on_connection: bool,
) -> SpanView {
    let mut a = BTreeMap::new();
    a.insert("mesh.path".to_owned(), "hbone".to_owned());
    a.insert("mesh.mtls".to_owned(), flow.mtls.to_string());
    a.insert("mesh.node".to_owned(), flow.node.clone());
    a.insert(
        "mesh.original_destination".to_owned(),
        flow.original_destination.clone(),
    );
    a.insert("mesh.outcome".to_owned(), flow.outcome.as_str().to_owned());
    a.insert("source.identity".to_owned(), flow.source.identity.clone());
    a.insert(
        "destination.identity".to_owned(),
        flow.destination.identity.clone(),
    );
    a.insert("mesh.flow_start_ns".to_owned(), flow.start_ns.to_string());
    for (k, v) in [
        ("tunnel_setup_us", flow.tunnel_setup_us),
        ("tunnel_connect_us", flow.tunnel_connect_us),
    ] {
        if let Some(v) = v {
            a.insert(k.to_owned(), v.to_string());
        }
    }
    if let Some(reused) = flow.tunnel_reused {
        a.insert("tunnel_reused".to_owned(), reused.to_string());
    }
    // The tunnel was set up for the first call on the connection; later calls rode it.
    let operation = if first_on_connection && flow.tunnel_setup_us.is_some() {
        "HBONE connect"
    } else {
        "HBONE stream"
    };
    SpanView {
        trace_id: trace_id.to_owned(),
        span_id: span_id(client_key ^ 0x7475_6e6e_656c),
        parent_span_id: Some(parent.to_owned()),
        kind: SpanKind::Tunnel,
        service: "ztunnel".to_owned(),
        operation: operation.to_owned(),
        start_ns: client.start_ns,
        duration_us: duration_us(client),
        error: !matches!(flow.outcome.as_str(), "closed" | "open"),
        node: flow.node.clone(),
        attributes: a,
    }
}
