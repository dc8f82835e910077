//! Shapes of records and queries meant to hurt: answered within the 1 s guard,
//! with the exact spans the records describe, and never a panic.
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::trace::MAX_TRACE_SPANS;

const US: u64 = 1_000;

/// A store holding `records` from node-a; the clock at T0 + 10 s.
fn state_with(records: Vec<Record>) -> Arc<AppState> {
    let limits = Limits {
        retention_ns: 3600 * SECOND,
        max_memory_bytes: 256 << 20,
    };
    let mut store = Store::new(10 * SECOND, HealthThresholds::default(), limits, 1000);
    store.ingest("node-a", records, T0 + 9 * SECOND);
    Arc::new(AppState::new(store, None, Clock::Fixed(T0 + 10 * SECOND)))
}

/// `json`, failing when the answer (status and whole body) took longer than the issue's
/// generous second; reading the JSON in the test is not timed.
async fn json_within_a_second(state: &Arc<AppState>, uri: &str) -> Value {
    let started = Instant::now();
    let (status, body) = call(state, uri, None).await;
    let took = started.elapsed();
    eprintln!("{uri}: {took:?}, {} bytes", body.len());
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    assert!(took < Duration::from_secs(1), "{uri} took {took:?}");
    serde_json::from_str(&body).unwrap()
}

fn field<'v>(spans: &'v [Value], name: &str) -> Vec<&'v Value> {
    spans.iter().map(|s| &s[name]).collect()
}

/// w0 → w1 → … → w`hops`: each hop's server span runs in the process (node-a, pid
/// 1000 + i) that makes the next call, all nested in time, no traceparent anywhere.
fn call_chain(hops: u64) -> Vec<Record> {
    let mut records = Vec::new();
    for i in 0..hops {
        // Span j starts j µs after T0 and ends j µs before T0 + 1 s.
        let (c, s) = (2 * i, 2 * i + 1);
        let mut client = request(&format!("w{i}"), &format!("w{}", i + 1), T0, 0, 200);
        client.start_ns = T0 + c * US;
        client.end_ns = T0 + SECOND - c * US;
        client.latency_us = (client.end_ns - client.start_ns) / 1000;
        client.pid = 1000 + u32::try_from(i).unwrap();
        let mut server = server_side(&client, client.pid + 1);
        server.node = "node-a".into();
        server.start_ns = T0 + s * US;
        server.end_ns = T0 + SECOND - s * US;
        server.latency_us = (server.end_ns - server.start_ns) / 1000;
        records.push(Record::Request(server.into()));
        records.push(Record::Request(client.into()));
    }
    records
}

#[tokio::test]
async fn a_call_chain_five_thousand_hops_deep_is_one_trace() {
    let s = state_with(call_chain(5_000));
    // Found from its deepest span: the root is 10 000 spans up.
    let found = json_within_a_second(&s, "/api/v1/traces?service=w5000").await;
    let traces = found["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0]["span_count"], 10_000);
    assert_eq!(traces[0]["spans_dropped"], 0);
    assert_eq!(traces[0]["root_service"], "w0");
    assert_eq!(traces[0]["root_operation"], "GET /w1");
    assert_eq!(traces[0]["duration_us"], 1_000_000);
    let id = traces[0]["trace_id"].as_str().unwrap();
    let trace = json_within_a_second(&s, &format!("/api/v1/traces/{id}")).await;
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 10_000);
    assert_eq!(trace["spans_dropped"], 0);
    // One line: client w0, server w1, client w1, server w2, …, each under the one before.
    let kinds: Vec<&str> = field(spans, "kind")
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let expected_kinds: Vec<&str> = (0..5_000).flat_map(|_| ["client", "server"]).collect();
    assert_eq!(kinds, expected_kinds);
    let services: Vec<&str> = field(spans, "service")
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let expected_services: Vec<String> = (0..5_000)
        .flat_map(|i| [format!("w{i}"), format!("w{}", i + 1)])
        .collect();
    assert_eq!(services, expected_services);
    assert_eq!(spans[0]["parent_span_id"], Value::Null);
    for j in 1..spans.len() {
        assert_eq!(
            spans[j]["parent_span_id"],
            spans[j - 1]["span_id"],
            "span {j}"
        );
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn two_thousand_spans_sharing_one_traceparent_link_in_pairs() {
    // A caller that sends one traceparent with 1 000 calls, 1 ms apart, each seen at
    // both ends.
    let mut records = Vec::new();
    for i in 0..1_000 {
        let mut client = request("frontend", "checkout", T0 + i * MS, 500, 200);
        client.trace_id = Some(TRACE.into());
        client.span_id = Some(SPAN.into());
        records.push(Record::Request(server_side(&client, 7).into()));
        records.push(Record::Request(client.into()));
    }
    let s = state_with(records);
    let trace = json_within_a_second(&s, &format!("/api/v1/traces/{TRACE}")).await;
    assert_eq!(trace["span_count"], 2_000);
    assert_eq!(trace["spans_dropped"], 0);
    assert_eq!(trace["error_count"], 0);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2_000);
    // Each call's server span right under its own client span (the nearest in time).
    let shape: Vec<(&str, u64, Option<&str>)> = spans
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap(),
                s["start_ns"].as_u64().unwrap(),
                s["parent_span_id"].as_str(),
            )
        })
        .collect();
    let expected: Vec<(&str, u64, Option<&str>)> = (0..1_000)
        .flat_map(|i| {
            [
                ("client", T0 + i * MS, None),
                ("server", T0 + i * MS + 200 * US, Some(SPAN)),
            ]
        })
        .collect();
    assert_eq!(shape, expected);
    let found = json_within_a_second(&s, "/api/v1/traces?service=checkout").await;
    let traces = found["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0]["trace_id"], TRACE);
    assert_eq!(traces[0]["span_count"], 2_000);
}

#[tokio::test]
async fn a_trace_over_the_span_limit_is_cut_and_the_rest_counted() {
    // 10 050 calls carrying one trace id, each its own root.
    let total = MAX_TRACE_SPANS as u64 + 50;
    let records = (0..total)
        .map(|i| {
            let mut client = request("frontend", "checkout", T0 + i * US, 100, 200);
            client.trace_id = Some(TRACE.into());
            client.span_id = Some(format!("{:016x}", i + 1));
            Record::Request(client.into())
        })
        .collect();
    let s = state_with(records);
    let trace = json_within_a_second(&s, &format!("/api/v1/traces/{TRACE}")).await;
    assert_eq!(trace["span_count"], 10_000);
    assert_eq!(trace["spans_dropped"], 50);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 10_000);
    // The earliest roots are kept.
    assert_eq!(spans[0]["span_id"], "0000000000000001");
    assert_eq!(spans[9_999]["span_id"], format!("{:016x}", 10_000));
    let (status, metrics) = call(&s, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .lines()
            .any(|l| l == "nephilia_trace_spans_dropped_total 50"),
        "{metrics}"
    );
    let found = json_within_a_second(&s, "/api/v1/traces?limit=1").await;
    assert_eq!(found["traces"][0]["span_count"], 10_000);
    assert_eq!(found["traces"][0]["spans_dropped"], 50);
}

#[tokio::test]
async fn a_window_shorter_than_a_bucket_is_refused() {
    // Mid-bucket: the window's first whole bucket would start after now.
    let s = state_at(None, T0 + 15 * SECOND);
    for uri in [
        "/api/v1/graph?window=1s",
        "/api/v1/nodes/workload:shop:checkout?window=1s",
        "/api/v1/edge?source=workload:shop:frontend&target=workload:shop:checkout&window=1s",
    ] {
        let (status, body) = call(&s, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["error"],
            "invalid parameter `window`: 1s is shorter than one bucket (10s), the finest resolution kept",
            "{uri}"
        );
    }
    // The shortest window accepted that holds the shop's bucket (T0..T0 + 10 s).
    let g = json(&s, "/api/v1/graph?window=20s").await;
    assert_eq!(g["edges"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn until_before_since_is_refused() {
    let s = state(None);
    for uri in [
        "/api/v1/traces?since=5m&until=10m",
        "/api/v1/outages?since=5m&until=10m",
        "/api/v1/flows?since=5m&until=10m",
    ] {
        let (status, body) = call(&s, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["error"],
            "invalid parameter `until`: 2026-01-01T11:53:10.000000000Z is before since (2026-01-01T11:58:10.000000000Z)",
            "{uri}"
        );
    }
}

/// A duration as a user might type one: any count of any unit humantime reads.
fn duration_text() -> impl Strategy<Value = String> {
    (
        0u64..100_000,
        prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "y"]),
    )
        .prop_map(|(n, unit)| format!("{n}{unit}"))
}

/// `since` / `until`: unix nanoseconds around the shop's traffic, or a duration ago.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (T0 - 2 * SECOND..T0 + 12 * SECOND).prop_map(|ns| ns.to_string()),
        (0u64..15_000).prop_map(|ms| format!("{ms}ms")),
    ]
}

/// What [`time_text`] means with the clock at `now`.
fn time_ns(text: &str, now: u64) -> u64 {
    match text.strip_suffix("ms") {
        Some(ms) => now - ms.parse::<u64>().unwrap() * MS,
        None => text.parse().unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_window_or_range_is_answered_or_refused(
        window in duration_text(),
        since in time_text(),
        until in time_text(),
    ) {
        let now = T0 + 10 * SECOND;
        let s = state(None);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let window_ns = humantime::parse_duration(&window)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap();
            for uri in [
                format!("/api/v1/graph?window={window}"),
                format!("/api/v1/nodes/workload:shop:checkout?window={window}"),
                format!(
                    "/api/v1/edge?source=workload:shop:frontend&target=workload:shop:checkout&window={window}"
                ),
            ] {
                let (status, body) = call(&s, &uri, None).await;
                if window_ns < 10 * SECOND {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
                    assert!(body.contains("invalid parameter `window`"), "{uri}: {body}");
                } else {
                    // Every window of a bucket or more holds the shop's bucket.
                    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
                }
            }

            let (since_ns, until_ns) = (time_ns(&since, now), time_ns(&until, now));
            let uri = format!("/api/v1/traces?since={since}&until={until}");
            let (status, body) = call(&s, &uri, None).await;
            if until_ns < since_ns {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
                assert!(body.contains("invalid parameter `until`"), "{uri}: {body}");
            } else {
                assert_eq!(status, StatusCode::OK, "{uri}: {body}");
                // The shop's call i: client span at T0 + i × 100 ms, server span 200 µs
                // later; a trace is found when one of its spans starts in the range.
                let expected = (0..10)
                    .filter(|i| {
                        let client = T0 + i * 100 * MS;
                        [client, client + 200 * US]
                            .iter()
                            .any(|t| (since_ns..=until_ns).contains(t))
                    })
                    .count();
                let found: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(found["traces"].as_array().unwrap().len(), expected, "{uri}");
            }
            for path in ["outages", "flows"] {
                let uri = format!("/api/v1/{path}?since={since}&until={until}");
                let (status, body) = call(&s, &uri, None).await;
                let expected = if until_ns < since_ns {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                assert_eq!(status, expected, "{uri}: {body}");
            }
        });
    }
}
