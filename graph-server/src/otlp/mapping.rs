//! Spans as OTLP protobufs: one `ResourceSpans` per service instance (workload,
//! namespace, pod, node), scope `nephilia`, attributes after the OpenTelemetry semantic
//! conventions where one exists (<https://opentelemetry.io/docs/specs/semconv/>) and
//! `nephilia.*` for what only the mesh knows.
//!
//! - Client and server spans are `CLIENT` and `SERVER`. gRPC spans are named
//!   `package.Service/Method` and carry `rpc.*`; HTTP spans are named `GET /path` and carry
//!   `http.*` and `url.template`, not `url.path`: the agent templates ids in paths to
//!   `{id}`, so the path is a template, not what was requested.
//! - The tunnel span is `CLIENT` in service `ztunnel`: ztunnel opens the HBONE connection
//!   to the destination's ztunnel on the caller's behalf, an outgoing remote call, and the
//!   callee's `SERVER` span is its child, so backends that pair client and server spans
//!   (Tempo's service graph, Jaeger's dependencies) see the hop. `INTERNAL` would say the
//!   work stayed inside one process.
//! - Status is `ERROR` for what the trace API counts as an error (HTTP 5xx, gRPC non-OK,
//!   a mesh flow that did not close cleanly), with a message; otherwise unset, as the
//!   conventions ask of instrumentation.
use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::uri::Authority;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use crate::record::{MeshFlow, Outcome, Protocol, Request, Role};
use crate::trace::{ExportSpan, SpanKind, SpanRecord, SpanView};

/// The instrumentation scope of every exported span.
pub const SCOPE: &str = "nephilia";
/// `service.name` of tunnel spans.
const ZTUNNEL: &str = "ztunnel";

/// A span that cannot be expressed in OTLP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// A trace or span id was not lower-case hex of its length, or all zeros (a
    /// malformed `traceparent` an agent passed on).
    #[error("{field} {value:?} is not {digits} hex digits (and not all zeros)")]
    BadId {
        field: &'static str,
        value: String,
        digits: usize,
    },
}

/// What emitted a span: the resource of its `ResourceSpans`. Empty fields are unknown.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceInstance {
    /// `service.name`: the workload, its ip when unknown, or `ztunnel`.
    pub service: String,
    pub namespace: String,
    pub pod: String,
    pub node: String,
}

impl ServiceInstance {
    fn resource(&self) -> Resource {
        let mut a = Attributes::default();
        a.str("service.name", &self.service);
        a.str("service.namespace", &self.namespace);
        a.str("k8s.namespace.name", &self.namespace);
        a.str("k8s.pod.name", &self.pod);
        a.str("k8s.node.name", &self.node);
        Resource {
            attributes: a.0,
            ..Resource::default()
        }
    }
}

/// One span and who emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSpan {
    pub service: ServiceInstance,
    pub span: Span,
}

/// Attributes in insertion order; empty strings are left out (unknown).
#[derive(Debug, Default)]
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn put(&mut self, key: &str, value: Value) {
        self.0.push(KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        });
    }

    fn str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.put(key, Value::StringValue(value.to_owned()));
        }
    }

    fn int(&mut self, key: &str, value: impl Into<i64>) {
        self.put(key, Value::IntValue(value.into()));
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.put(key, Value::BoolValue(value));
    }

    /// `network.peer.address` and `network.peer.port` of an "ip:port" socket address.
    fn peer(&mut self, socket: &str) {
        if let Ok(addr) = socket.parse::<SocketAddr>() {
            self.str("network.peer.address", &addr.ip().to_string());
            self.int("network.peer.port", addr.port());
        }
    }
}

/// Lower-case hex of `digits` digits, not all zeros (W3C trace context) → bytes.
fn id_bytes(field: &'static str, value: &str, digits: usize) -> Result<Vec<u8>, MappingError> {
    let bad = || MappingError::BadId {
        field,
        value: value.to_owned(),
        digits,
    };
    if value.len() != digits
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..digits)
        .step_by(2)
        .map(|i| u8::from_str_radix(&value[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if bytes.iter().all(|&b| b == 0) {
        return Err(bad());
    }
    Ok(bytes)
}

/// One exported span as OTLP.
pub fn span(export: &ExportSpan) -> Result<OtlpSpan, MappingError> {
    let view = &export.span;
    let (service, name, kind, attributes, status) = match &export.record {
        SpanRecord::Request(request) => request_span(view, request),
        SpanRecord::Tunnel(flow) => tunnel_span(view, flow),
    };
    let parent_span_id = match &view.parent_span_id {
        Some(id) => id_bytes("parent_span_id", id, 16)?,
        None => Vec::new(),
    };
    let span = Span {
        trace_id: id_bytes("trace_id", &view.trace_id, 32)?,
        span_id: id_bytes("span_id", &view.span_id, 16)?,
        parent_span_id,
        name,
        kind: kind as i32,
        start_time_unix_nano: view.start_ns,
        end_time_unix_nano: view.start_ns + view.duration_us * 1000,
        attributes: attributes.0,
        status: Some(status),
        ..Span::default()
    };
    Ok(OtlpSpan { service, span })
}

fn error_status(message: String) -> Status {
    Status {
        message,
        code: StatusCode::Error as i32,
    }
}

fn request_span(
    view: &SpanView,
    r: &Request,
) -> (ServiceInstance, String, OtlpKind, Attributes, Status) {
    let (me, kind) = match r.side {
        Role::Client => (&r.source, OtlpKind::Client),
        Role::Server => (&r.destination, OtlpKind::Server),
    };
    let service = ServiceInstance {
        service: view.service.clone(),
        namespace: me.namespace.clone(),
        pod: me.pod.clone(),
        node: r.node.clone(),
    };
    let mut a = Attributes::default();
    a.str("network.protocol.name", "http");
    a.str(
        "network.protocol.version",
        match r.protocol {
            Protocol::Http1 => "1.1",
            Protocol::Http2 | Protocol::Grpc => "2",
        },
    );
    let name = if r.protocol == Protocol::Grpc {
        // "/package.Service/Method"
        let full = r.path.trim_start_matches('/');
        let (rpc_service, rpc_method) = full.rsplit_once('/').unwrap_or((full, ""));
        a.str("rpc.system", "grpc");
        a.str("rpc.service", rpc_service);
        a.str("rpc.method", rpc_method);
        if let Some(code) = r.grpc_status {
            a.int("rpc.grpc.status_code", code);
        }
        full.to_owned()
    } else {
        a.str("http.request.method", &r.method);
        if let Some(status) = r.status {
            a.int("http.response.status_code", status);
        }
        a.str("url.template", &r.path);
        view.operation.clone()
    };
    // The logical server: the authority the client asked for, else what it dialled.
    let authority = r.authority.parse::<Authority>().ok();
    let dialled = match r.side {
        Role::Client => &r.remote,
        Role::Server => &r.local,
    };
    let dialled = dialled.parse::<SocketAddr>().ok();
    let server_address = match &authority {
        Some(authority) => authority.host().to_owned(),
        None if !r.destination.service.is_empty() => r.destination.service.clone(),
        None => r.destination.ip.clone(),
    };
    a.str("server.address", &server_address);
    if let Some(port) = authority
        .and_then(|a| a.port_u16())
        .or(dialled.map(|d| d.port()))
    {
        a.int("server.port", port);
    }
    if r.side == Role::Server {
        a.str("client.address", &r.source.ip);
    }
    a.peer(&r.remote);
    a.str("nephilia.source_workload", &r.source.workload);
    a.str("nephilia.source_namespace", &r.source.namespace);
    a.str("nephilia.source_identity", &r.source.identity);
    a.str("nephilia.destination_workload", &r.destination.workload);
    a.str("nephilia.destination_namespace", &r.destination.namespace);
    a.str("nephilia.destination_service", &r.destination.service);
    a.str("nephilia.destination_identity", &r.destination.identity);
    a.int(
        "nephilia.request_bytes",
        i64::try_from(r.request_bytes).unwrap_or(i64::MAX),
    );
    a.int(
        "nephilia.response_bytes",
        i64::try_from(r.response_bytes).unwrap_or(i64::MAX),
    );
    let status = match (r.status, r.grpc_status) {
        (_, Some(code)) if code != 0 => {
            let detail = r.grpc_message.as_deref().unwrap_or_default();
            let mut message = format!("gRPC status {code} {}", grpc_code_name(code));
            if !detail.is_empty() {
                message = format!("{message}: {detail}");
            }
            error_status(message)
        }
        (Some(status), _) if status >= 500 => error_status(format!("HTTP {status}")),
        _ => Status::default(),
    };
    (service, name, kind, a, status)
}

fn tunnel_span(
    view: &SpanView,
    flow: &MeshFlow,
) -> (ServiceInstance, String, OtlpKind, Attributes, Status) {
    debug_assert_eq!(view.kind, SpanKind::Tunnel);
    let service = ServiceInstance {
        service: ZTUNNEL.to_owned(),
        namespace: String::new(),
        pod: String::new(),
        node: flow.node.clone(),
    };
    let mut a = Attributes::default();
    a.str("network.transport", "tcp");
    // What the app dialled (often a service VIP); ztunnel tunnels it to the pod.
    if let Ok(dialled) = flow.original_destination.parse::<SocketAddr>() {
        a.str("server.address", &dialled.ip().to_string());
        a.int("server.port", dialled.port());
    }
    a.str("network.peer.address", &flow.destination.ip);
    a.str("nephilia.mesh_path", "hbone");
    a.bool("nephilia.mtls", flow.mtls);
    if let Some(us) = flow.tunnel_setup_us {
        a.int(
            "nephilia.tunnel_setup_us",
            i64::try_from(us).unwrap_or(i64::MAX),
        );
    }
    if let Some(us) = flow.tunnel_connect_us {
        a.int(
            "nephilia.tunnel_connect_us",
            i64::try_from(us).unwrap_or(i64::MAX),
        );
    }
    if let Some(reused) = flow.tunnel_reused {
        a.bool("nephilia.tunnel_reused", reused);
    }
    a.str("nephilia.mesh_outcome", flow.outcome.as_str());
    a.str("nephilia.source_workload", &flow.source.workload);
    a.str("nephilia.source_identity", &flow.source.identity);
    a.str("nephilia.destination_workload", &flow.destination.workload);
    a.str("nephilia.destination_service", &flow.destination.service);
    a.str("nephilia.destination_identity", &flow.destination.identity);
    let failure = match flow.outcome {
        Outcome::Closed | Outcome::Open => None,
        Outcome::Refused => Some("connection refused"),
        Outcome::Reset => Some("connection reset"),
        Outcome::Timeout => Some("connection timed out"),
        Outcome::Unreachable => Some("destination unreachable"),
        Outcome::TunnelFailed => Some("HBONE tunnel could not be set up"),
    };
    let status = failure.map_or_else(Status::default, |m| error_status(m.to_owned()));
    (service, view.operation.clone(), OtlpKind::Client, a, status)
}

/// <https://grpc.io/docs/guides/status-codes/>
fn grpc_code_name(code: i32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "(unknown code)",
    }
}

/// One `Export` call's worth of spans: a `ResourceSpans` per service instance (sorted),
/// each with one `ScopeSpans` of scope `nephilia`, spans in the order given.
pub fn export_request(spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<ServiceInstance, Vec<Span>> = BTreeMap::new();
    for OtlpSpan { service, span } in spans {
        by_service.entry(service).or_default().push(span);
    }
    let scope = InstrumentationScope {
        name: SCOPE.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(service.resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
