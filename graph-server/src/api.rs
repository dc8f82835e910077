//! The HTTP API (axum). [`app`] builds the router so tests call it without a socket.
//! Every endpoint but /healthz and /readyz needs the bearer token when one is set.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::flows::FlowFilter;
use crate::otlp::SpanExporter;
use crate::store::Store;
use crate::topology::graph::{EdgeDetail, NodeDetail};
use crate::topology::{Level, NodeKey};
use crate::trace::TraceQuery;
use crate::trace::TraceView;

mod error;
pub mod openapi;
mod params;
mod prometheus;

pub use error::AppError;
use params::Params;
pub use prometheus::SeriesLimits;

/// Where "now" comes from: the wall clock, or a fixed instant in tests.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(u64),
}

/// Shared by the HTTP handlers, the gRPC service and the maintenance task.
#[derive(Debug)]
pub struct AppState {
    store: Mutex<Store>,
    token: Option<String>,
    clock: Clock,
    ready: AtomicBool,
    /// Why a background task (maintenance, OTLP sender) died: the server is then no
    /// longer ready, and stops.
    failure: OnceLock<String>,
    /// Caps on the per-edge and per-agent series of /metrics.
    series_limits: SeriesLimits,
    /// Set with `--otlp-endpoint`.
    otlp: Option<Arc<SpanExporter>>,
}

impl AppState {
    pub fn new(store: Store, token: Option<String>, clock: Clock) -> Self {
        Self {
            store: Mutex::new(store),
            token: token.filter(|t| !t.is_empty()),
            clock,
            ready: AtomicBool::new(false),
            failure: OnceLock::new(),
            series_limits: SeriesLimits::default(),
            otlp: None,
        }
    }

    /// Exports trace spans through `exporter` (the store must
    /// [track](crate::trace::TraceStore::track_export) them).
    pub fn with_otlp(mut self, exporter: Arc<SpanExporter>) -> Self {
        self.otlp = Some(exporter);
        self
    }

    /// Caps the per-edge and per-agent series of /metrics at `limits`.
    pub fn with_series_limits(mut self, limits: SeriesLimits) -> Self {
        self.series_limits = limits;
        self
    }

    pub fn otlp(&self) -> Option<&Arc<SpanExporter>> {
        self.otlp.as_ref()
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves counts possibly half-updated, which is
        // better than refusing every later request.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn now_ns(&self) -> u64 {
        match self.clock {
            Clock::System => crate::time::now_ns(),
            Clock::Fixed(t) => t,
        }
    }

    /// Called once both listeners are bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the server failed (the first reason given stays): /readyz answers 503 with it.
    pub fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
    }

    /// Why the server failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/edge", get(edge))
        .route("/api/v1/outages", get(outages))
        .route("/api/v1/traces", get(traces))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(crate::ui::serve)
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return AppError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(reason) = state.failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {reason}\n"),
        )
            .into_response()
    } else if state.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// `[from, to)` covering whole buckets back from `now`, and `now` as the end. A window
/// shorter than one bucket holds no whole bucket: 400, naming the bucket width.
fn window(store: &Store, now: u64, window_ns: u64) -> Result<(u64, u64), AppError> {
    let width = store.topology.bucket_width_ns();
    if window_ns < width {
        return Err(AppError::bad(
            "window",
            format!(
                "{} is shorter than one bucket ({}), the finest resolution kept",
                humantime::format_duration(Duration::from_nanos(window_ns)),
                humantime::format_duration(Duration::from_nanos(width)),
            ),
        ));
    }
    let from = store
        .topology
        .bucket_start(now.saturating_sub(window_ns).saturating_add(width - 1));
    Ok((from, now))
}

/// `level`: workload (default), service or namespace.
fn level(p: &mut Params) -> Result<Level, AppError> {
    match p.take("level") {
        None => Ok(Level::Workload),
        Some(text) => Level::parse(&text).ok_or_else(|| {
            AppError::bad(
                "level",
                format!("{text:?} is not one of workload, service, namespace"),
            )
        }),
    }
}

async fn graph(State(state): State<Arc<AppState>>, query: Q) -> Result<Response, AppError> {
    let mut p = Params::new(query)?;
    let window_ns = p.duration("window", 60_000_000_000)?;
    let level = level(&mut p)?;
    let namespace = p.take("namespace");
    p.finish()?;
    let now = state.now_ns();
    let store = state.store();
    let (from, to) = window(&store, now, window_ns)?;
    let view = store
        .topology
        .graph_view(level, namespace.as_deref(), from, to, &store.thresholds);
    drop(store);
    Ok(json_sized(&view, view.json_size_hint()))
}

/// `value` as a JSON response, written into a buffer of `capacity` bytes: `Json` starts
/// at 128 bytes and doubles, copying a 10 000-edge graph (~7 MiB) many times over.
fn json_sized(value: &impl serde::Serialize, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        // What `Json` answers too (our views have no map with non-string keys).
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Q,
) -> Result<Json<NodeDetail>, AppError> {
    let key = NodeKey::parse(&id).ok_or_else(|| {
        AppError::bad(
            "id",
            format!("{id:?} is not a node id (workload:<ns>:<name>, service:<ns>:<host>, namespace:<ns>, external:<ip>)"),
        )
    })?;
    let mut p = Params::new(query)?;
    let window_ns = p.duration("window", 15 * 60_000_000_000)?;
    p.finish()?;
    let now = state.now_ns();
    let store = state.store();
    let (from, to) = window(&store, now, window_ns)?;
    let detail = store
        .topology
        .node_detail(&key, from, to, &store.thresholds)
        .ok_or_else(|| AppError::NotFound(format!("node {id} had no traffic in the window")))?;
    Ok(Json(detail))
}

async fn edge(State(state): State<Arc<AppState>>, query: Q) -> Result<Json<EdgeDetail>, AppError> {
    let mut p = Params::new(query)?;
    let mut key = |name: &'static str| {
        let id = p
            .take(name)
            .ok_or_else(|| AppError::bad(name, "missing (a node id)"))?;
        NodeKey::parse(&id).ok_or_else(|| AppError::bad(name, format!("{id:?} is not a node id")))
    };
    let source = key("source")?;
    let target = key("target")?;
    let window_ns = p.duration("window", 15 * 60_000_000_000)?;
    let level = level(&mut p)?;
    p.finish()?;
    let now = state.now_ns();
    let store = state.store();
    let (from, to) = window(&store, now, window_ns)?;
    let detail = store
        .topology
        .edge_detail(level, &source, &target, from, to, &store.thresholds)
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "edge {source}->{target} had no traffic in the window"
            ))
        })?;
    Ok(Json(detail))
}

async fn outages(State(state): State<Arc<AppState>>, query: Q) -> Result<Json<Value>, AppError> {
    let now = state.now_ns();
    let mut p = Params::new(query)?;
    let (since, until) = p.time_range(now)?;
    p.finish()?;
    let store = state.store();
    let list = store.outages.list(since, until);
    Ok(Json(json!({ "outages": list })))
}

async fn traces(State(state): State<Arc<AppState>>, query: Q) -> Result<Json<Value>, AppError> {
    let now = state.now_ns();
    let mut p = Params::new(query)?;
    let (since_ns, until_ns) = p.time_range(now)?;
    let mut q = TraceQuery {
        service: p.take("service"),
        operation: p.take("operation"),
        min_duration_us: p.optional_duration("min_duration")?.map(|ns| ns / 1000),
        max_duration_us: p.optional_duration("max_duration")?.map(|ns| ns / 1000),
        error: p.bool("error")?,
        since_ns,
        until_ns,
        attributes: Vec::new(),
        limit: p.limit("limit", 20, 1000)?,
    };
    for tag in p.take_all("tag") {
        let (k, v) = tag
            .split_once('=')
            .ok_or_else(|| AppError::bad("tag", format!("{tag:?} is not key=value")))?;
        q.attributes.push((k.to_owned(), v.to_owned()));
    }
    p.finish()?;
    let found = state.store().traces.search(&q);
    Ok(Json(json!({ "traces": found })))
}

async fn trace(
    State(state): State<Arc<AppState>>,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceView>, AppError> {
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AppError::bad(
            "trace_id",
            format!("{trace_id:?} is not 32 hex digits"),
        ));
    }
    let view = state
        .store()
        .traces
        .trace(&trace_id.to_ascii_lowercase())
        .ok_or_else(|| AppError::NotFound(format!("no trace {trace_id}")))?;
    Ok(Json(view))
}

async fn flows(State(state): State<Arc<AppState>>, query: Q) -> Result<Json<Value>, AppError> {
    let now = state.now_ns();
    let mut p = Params::new(query)?;
    let (since_ns, until_ns) = p.time_range(now)?;
    let kind = p.one_of("kind", &["connection", "mesh_flow", "request"])?;
    let outcome = p.one_of(
        "outcome",
        &[
            "closed",
            "reset",
            "refused",
            "timeout",
            "unreachable",
            "open",
            "tunnel_failed",
        ],
    )?;
    let filter = FlowFilter {
        kind,
        workload: p.take("workload"),
        namespace: p.take("namespace"),
        node: p.take("node"),
        outcome,
        error: p.bool("error")?,
        since_ns,
        until_ns,
        limit: p.limit("limit", 100, 10_000)?,
    };
    p.finish()?;
    let store = state.store();
    let records = store.flows.query(&filter);
    Ok(Json(json!({ "records": records })))
}

async fn agents(State(state): State<Arc<AppState>>) -> Json<Value> {
    let store = state.store();
    let agents: Vec<_> = store.agents().values().collect();
    Json(json!({ "agents": agents }))
}

async fn openapi() -> Json<Value> {
    Json(openapi::document())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let now = state.now_ns();
    let otlp = state.otlp().map(|e| e.stats());
    let snapshot = prometheus::MetricsSnapshot::take(&state.store(), state.series_limits, now);
    let body = snapshot.render(otlp);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
