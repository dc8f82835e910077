//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, written by hand next to
//! the handlers it describes (a router test checks every route is in it).
use serde_json::{Value, json};

fn param(name: &str, location: &str, description: &str, example: &str) -> Value {
    json!({
        "name": name,
        "in": location,
        "required": location == "path",
        "description": description,
        "schema": { "type": "string" },
        "example": example,
    })
}

fn window() -> Value {
    param(
        "window",
        "query",
        "Duration back from now, whole buckets (default 1m for the graph, 15m for a node); at least one bucket width (--bucket-width, 10s), or 400.",
        "5m",
    )
}

fn since_until() -> [Value; 2] {
    [
        param(
            "since",
            "query",
            "RFC 3339 time, unix nanoseconds, or a duration ago (15m). Default: everything kept.",
            "1h",
        ),
        param(
            "until",
            "query",
            "Same forms as since; not before since (400). Default: now.",
            "2026-01-01T12:10:00Z",
        ),
    ]
}

fn get(summary: &str, parameters: Vec<Value>, schema: &str) -> Value {
    json!({
        "get": {
            "summary": summary,
            "parameters": parameters,
            "security": [{ "bearer": [] }],
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } },
                "400": { "description": "A parameter is invalid; the message names it.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "401": { "description": "Missing or wrong bearer token (only with --api-token)." },
                "404": { "description": "Not found.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        }
    })
}

fn object(properties: Value) -> Value {
    json!({ "type": "object", "properties": properties })
}

fn percentiles() -> Value {
    json!({ "oneOf": [{ "type": "null" }, object(json!({
        "p50_us": { "type": "integer" }, "p95_us": { "type": "integer" }, "p99_us": { "type": "integer" }, "count": { "type": "integer" }
    }))] })
}

fn summary_properties() -> Value {
    json!({
        "protocol": { "enum": ["http", "grpc", "tcp"] },
        "connections": { "type": "integer" }, "requests": { "type": "integer" },
        "bytes_sent": { "type": "integer", "description": "Source to destination." },
        "bytes_received": { "type": "integer", "description": "Destination to source." },
        "connections_per_second": { "type": "number" }, "requests_per_second": { "type": "number" },
        "bytes_sent_per_second": { "type": "number" }, "bytes_received_per_second": { "type": "number" },
        "errors": object(json!({
            "http_5xx": { "type": "integer" }, "grpc_error": { "type": "integer" }, "refused": { "type": "integer" },
            "reset": { "type": "integer" }, "timeout": { "type": "integer" }, "unreachable": { "type": "integer" },
            "tunnel_failed": { "type": "integer" }
        })),
        "error_rate": { "type": "number", "description": "max(request errors / requests, connection errors / connections)" },
        "latency": percentiles(),
        "latency_kind": { "enum": ["request", "connect", null] },
        "tunnel_setup": percentiles(),
        "pool_reuse_ratio": { "type": ["number", "null"] },
        "mtls_share": { "type": ["number", "null"] },
        "health": { "$ref": "#/components/schemas/Health" }
    })
}

pub fn document() -> Value {
    let mut edge = summary_properties();
    edge["id"] =
        json!({ "type": "string", "example": "workload:shop:frontend->workload:shop:checkout" });
    edge["source"] = json!({ "type": "string" });
    edge["target"] = json!({ "type": "string" });
    let [since, until] = since_until();
    let edge_detail = object(json!({
        "edge": { "$ref": "#/components/schemas/Edge" },
        "level": { "enum": ["workload", "service", "namespace"] },
        "from_ns": { "type": "integer" }, "to_ns": { "type": "integer" }, "bucket_seconds": { "type": "number" },
        "series": { "type": "array", "items": { "allOf": [
            { "$ref": "#/components/schemas/Summary" },
            object(json!({ "start_ns": { "type": "integer" } }))
        ] } }
    }));
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Nephilia graph server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Topology, outages, traces and recent records from Nephilia's eBPF agents. Times are unix nanoseconds (`*_ns`) unless named otherwise."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": object(json!({ "error": { "type": "string", "example": "invalid parameter `window`: \"5x\" is not a duration like 5m or 250ms" } })),
                "Health": { "enum": ["idle", "healthy", "degraded", "failing"] },
                "Summary": object(summary_properties()),
                "Edge": object(edge),
                "Node": object(json!({
                    "id": { "type": "string", "example": "workload:shop:checkout" },
                    "kind": { "enum": ["workload", "service", "namespace", "external"] },
                    "name": { "type": "string" }, "namespace": { "type": ["string", "null"] },
                    "health": { "$ref": "#/components/schemas/Health" },
                    "inbound": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Summary" }] }
                })),
                "Graph": object(json!({
                    "level": { "enum": ["workload", "service", "namespace"] },
                    "namespace": { "type": ["string", "null"] },
                    "from_ns": { "type": "integer" }, "to_ns": { "type": "integer" }, "window_seconds": { "type": "number" },
                    "nodes": { "type": "array", "items": { "$ref": "#/components/schemas/Node" } },
                    "edges": { "type": "array", "items": { "$ref": "#/components/schemas/Edge" } }
                })),
                "NodeDetail": object(json!({
                    "node": { "$ref": "#/components/schemas/Node" },
                    "outbound": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Summary" }] },
                    "from_ns": { "type": "integer" }, "to_ns": { "type": "integer" }, "bucket_seconds": { "type": "number" },
                    "incoming": { "type": "array", "items": { "$ref": "#/components/schemas/Edge" } },
                    "outgoing": { "type": "array", "items": { "$ref": "#/components/schemas/Edge" } },
                    "series": { "type": "array", "items": object(json!({
                        "start_ns": { "type": "integer" },
                        "inbound": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Summary" }] },
                        "outbound": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Summary" }] }
                    })) }
                })),
                "Outages": object(json!({ "outages": { "type": "array", "items": object(json!({
                    "id": { "type": "integer" }, "start_ns": { "type": "integer" }, "end_ns": { "type": ["integer", "null"] },
                    "start": { "type": "string", "format": "date-time" }, "end": { "type": ["string", "null"] },
                    "open": { "type": "boolean" },
                    "affected_edges": { "type": "array", "items": object(json!({ "source": { "type": "string" }, "target": { "type": "string" } })) },
                    "affected_workloads": { "type": "array", "items": { "type": "string" } },
                    "failures": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "peak_error_rate": { "type": "number" },
                    "root_cause": { "oneOf": [{ "type": "null" }, object(json!({
                        "node": { "type": "string" }, "kind": { "type": "string" }, "rate": { "type": "number" },
                        "since_ns": { "type": "integer" },
                        "evidence": { "type": "string", "example": "payments refuses connections: 100 % refused since 12:03:10" }
                    }))] }
                })) } })),
                "TraceSummary": object(json!({
                    "trace_id": { "type": "string" }, "root_service": { "type": "string" }, "root_operation": { "type": "string" },
                    "start_ns": { "type": "integer" }, "duration_us": { "type": "integer" }, "span_count": { "type": "integer" },
                    "error_count": { "type": "integer" }, "services": { "type": "array", "items": { "type": "string" } },
                    "spans_dropped": { "type": "integer", "description": "Spans of the trace left out: a view holds at most 10000 (span_count, error_count and services cover those)." }
                })),
                "Traces": object(json!({ "traces": { "type": "array", "items": { "$ref": "#/components/schemas/TraceSummary" } } })),
                "Trace": { "allOf": [{ "$ref": "#/components/schemas/TraceSummary" }, object(json!({
                    "spans": { "type": "array", "items": object(json!({
                        "trace_id": { "type": "string" }, "span_id": { "type": "string" }, "parent_span_id": { "type": ["string", "null"] },
                        "kind": { "enum": ["client", "server", "tunnel"] }, "service": { "type": "string" }, "operation": { "type": "string" },
                        "start_ns": { "type": "integer" }, "duration_us": { "type": "integer" }, "error": { "type": "boolean" },
                        "node": { "type": "string" }, "attributes": { "type": "object", "additionalProperties": { "type": "string" } }
                    })) }
                }))] },
                "Records": object(json!({ "records": { "type": "array", "items": { "type": "object", "description": "connection, mesh_flow or request record with a `kind` field; fields as in README.md, Records." } } })),
                "Agents": object(json!({ "agents": { "type": "array", "items": object(json!({
                    "node": { "type": "string" }, "agent_version": { "type": "string" }, "kernel_release": { "type": "string" },
                    "attached_programs": { "type": "array", "items": { "type": "string" } },
                    "drop_counters": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "records_sent": { "type": "integer" }, "records_received": { "type": "integer" },
                    "records_refused": object(json!({ "too_old": { "type": "integer" }, "in_future": { "type": "integer" } })),
                    "last_heartbeat_ns": { "type": "integer", "description": "0 until the first heartbeat" },
                    "last_seen_ns": { "type": "integer", "description": "last heartbeat or batch" }
                })) } }))
            }
        },
        "paths": {
            "/api/v1/graph": get("The topology over a window", vec![
                window(),
                param("level", "query", "workload (default), service or namespace.", "service"),
                param("namespace", "query", "Only edges with an end in this namespace.", "shop"),
            ], "Graph"),
            "/api/v1/nodes/{id}": get("One node: its edges and metrics per bucket", vec![
                param("id", "path", "Node id: workload:<ns>:<name>, service:<ns>:<host>, namespace:<ns>, external:<ip>.", "workload:shop:checkout"),
                window(),
            ], "NodeDetail"),
            "/api/v1/outages": get("Outages overlapping a time range, newest first", vec![since.clone(), until.clone()], "Outages"),
            "/api/v1/traces": get("Newest traces with a span matching every filter", vec![
                param("service", "query", "Workload the span ran in.", "checkout"),
                param("operation", "query", "\"METHOD /path\".", "GET /cart/{id}"),
                param("min_duration", "query", "Span duration at least.", "100ms"),
                param("max_duration", "query", "Span duration at most.", "2s"),
                param("error", "query", "true: failed spans (5xx, gRPC non-OK); false: the others.", "true"),
                since.clone(), until.clone(),
                param("tag", "query", "attribute=value, repeatable (http.status_code=503).", "http.status_code=503"),
                param("limit", "query", "1–1000, default 20.", "20"),
            ], "Traces"),
            "/api/v1/traces/{trace_id}": get("One trace with its spans (at most 10000)", vec![
                param("trace_id", "path", "32 hex digits.", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ], "Trace"),
            "/api/v1/flows": get("Recent records, newest first", vec![
                param("kind", "query", "connection, mesh_flow or request.", "mesh_flow"),
                param("workload", "query", "Source or destination workload, service, pod or ip.", "payments"),
                param("namespace", "query", "Source or destination namespace.", "shop"),
                param("node", "query", "Reporting node.", "node-a"),
                param("outcome", "query", "closed, reset, refused, timeout, unreachable, open, tunnel_failed.", "refused"),
                param("error", "query", "Only failed (true) or successful (false) records.", "true"),
                since, until,
                param("limit", "query", "1–10000, default 100.", "100"),
            ], "Records"),
            "/api/v1/agents": get("Agents and their last heartbeat", vec![], "Agents"),
            "/api/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OK" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [{ "bearer": [] }], "responses": { "200": { "description": "text/plain; version=0.0.4" } } } },
            "/healthz": { "get": { "summary": "Liveness (no token needed)", "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "Readiness: both listeners bound (no token needed)", "responses": { "200": { "description": "ready" }, "503": { "description": "starting" } } } }
        }
    });
    // Added outside the literal above, which is at serde_json's macro recursion limit.
    doc["components"]["schemas"]["EdgeDetail"] = edge_detail;
    doc["paths"]["/api/v1/edge"] = get(
        "One edge: its metrics over the window and per bucket",
        vec![
            param(
                "source",
                "query",
                "Node id of the caller.",
                "workload:shop:checkout",
            ),
            param(
                "target",
                "query",
                "Node id of the callee.",
                "workload:shop:payments",
            ),
            window(),
            param(
                "level",
                "query",
                "workload (default), service or namespace: the level the ids are at.",
                "workload",
            ),
        ],
        "EdgeDetail",
    );
    doc
}
