//! One encoded `v1::Batch`, as an agent (or anything that reached the ingest port) sends
//! it, through everything it can reach: decoding, validation, ingest (twice: interim
//! records replace each other), maintenance, and every HTTP view that reads what was
//! stored. A panic anywhere is the failure; so is a 5xx, a view whose counts disagree
//! with its own contents, or one that is refused for an id the server itself handed out.
//!
//! Shared by the libFuzzer target (`graph-server/fuzz`, `cargo xtask fuzz`) and its
//! proptest twin (`tests/batch_fuzz.rs`, plain `cargo test`).
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nephilia_graph_server::api::{AppState, Clock, app};
use nephilia_graph_server::config::HealthThresholds;
use nephilia_graph_server::ingest::validate;
use nephilia_graph_server::outage::GRACE_NS;
use nephilia_graph_server::store::{Limits, Store};
use nephilia_graph_server::trace::MAX_TRACE_SPANS;
use nephilia_proto::v1::Batch;
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

const SECOND: u64 = 1_000_000_000;
/// 2026-01-01T12:03:20Z, 20 s after the twin's T0.
const NOW_NS: u64 = 1_767_269_000_000_000_000;

/// How far a batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Not a protobuf `Batch`.
    Undecodable,
    /// Decoded, refused by validation (nothing stored).
    Refused,
    /// Stored: this many records, then every view was read.
    Viewed { records: usize },
}

pub fn exercise(bytes: &[u8]) -> Reached {
    let Ok(batch) = Batch::decode(bytes) else {
        return Reached::Undecodable;
    };
    let Ok((node, records)) = validate(batch, None) else {
        return Reached::Refused;
    };
    let count = records.len();
    // The server's clock: just after the times most records carry (the twin's batches
    // are near T0); records may be stamped anywhere from 1 to u64::MAX.
    let now = NOW_NS;
    let limits = Limits {
        retention_ns: 3600 * SECOND,
        max_memory_bytes: 64 << 20,
    };
    let mut store = Store::new(10 * SECOND, HealthThresholds::default(), limits, 1000);
    store.ingest(&node, records.clone(), now);
    store.ingest(&node, records, now);
    store.maintain(now.saturating_add(10 * SECOND + GRACE_NS));
    let state = Arc::new(AppState::new(store, None, Clock::Fixed(now)));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
        .block_on(read_every_view(&state));
    Reached::Viewed { records: count }
}

async fn read_every_view(state: &Arc<AppState>) {
    for level in ["workload", "service", "namespace"] {
        let graph = get_json(state, &format!("/api/v1/graph?window=2h&level={level}")).await;
        for node in graph["nodes"].as_array().expect("nodes") {
            let id = node["id"].as_str().expect("node id");
            let uri = format!("/api/v1/nodes/{}?window=2h", encode(id));
            let (status, _) = get(state, &uri).await;
            // A node id built from hostile names may not parse back (or may name another
            // node): refused or not found, never an error of the server.
            assert!(
                matches!(
                    status,
                    StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
                ),
                "{uri}: {status}"
            );
        }
        for edge in graph["edges"].as_array().expect("edges") {
            let (source, target) = (
                edge["source"].as_str().expect("source"),
                edge["target"].as_str().expect("target"),
            );
            let uri = format!(
                "/api/v1/edge?source={}&target={}&level={level}&window=2h",
                encode(source),
                encode(target)
            );
            let (status, _) = get(state, &uri).await;
            assert!(
                matches!(
                    status,
                    StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
                ),
                "{uri}: {status}"
            );
        }
    }
    let traces = get_json(state, "/api/v1/traces?limit=1000").await;
    for summary in traces["traces"].as_array().expect("traces") {
        check_counts(summary, None);
        let id = summary["trace_id"].as_str().expect("trace id");
        let uri = format!("/api/v1/traces/{}", encode(id));
        let (status, body) = get(state, &uri).await;
        if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            // An id the search handed out is found, with the same spans.
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            let trace: Value = serde_json::from_str(&body).expect("trace JSON");
            check_counts(&trace, trace["spans"].as_array().map(Vec::len));
            assert_eq!(trace["span_count"], summary["span_count"], "{uri}");
        } else {
            // A traceparent trace id that is not 32 lowercase hex digits (the record
            // carried it so): refused, not found, or (upper case) the lower-case trace.
            assert!(
                matches!(
                    status,
                    StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
                ),
                "{uri}: {status}"
            );
        }
    }
    for uri in [
        "/api/v1/outages",
        "/api/v1/flows?limit=10000",
        "/api/v1/agents",
        "/metrics",
    ] {
        let (status, body) = get(state, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
}

/// `span_count` within the limit, and (for a whole trace) equal to its spans.
fn check_counts(trace: &Value, spans: Option<usize>) {
    let count = trace["span_count"].as_u64().expect("span_count");
    let dropped = trace["spans_dropped"].as_u64().expect("spans_dropped");
    assert!(count <= MAX_TRACE_SPANS as u64, "{count} spans");
    if dropped > 0 {
        assert_eq!(count, MAX_TRACE_SPANS as u64, "{dropped} dropped");
    }
    if let Some(spans) = spans {
        assert_eq!(count, spans as u64);
    }
}

async fn get(state: &Arc<AppState>, uri: &str) -> (StatusCode, String) {
    let request = Request::get(uri).body(Body::empty()).expect("request");
    let response = app(state.clone())
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(!status.is_server_error(), "{uri}: {status}");
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get_json(state: &Arc<AppState>, uri: &str) -> Value {
    let (status, body) = get(state, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Percent-encodes all but unreserved characters (RFC 3986), for a path segment or a
/// query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
