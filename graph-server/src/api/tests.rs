//! Router tests: `app().oneshot(...)`, no sockets.
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::config::HealthThresholds;
use crate::fixture::{MS, SECOND, T0, flow, request, server_side};
use crate::record::{Outcome, Record};
use crate::store::Limits;

mod hostile;

/// The shop at T0..T0+10 s: frontend → checkout (10 requests, one 503), checkout →
/// payments (4 refused flows out of 5); the clock stands at T0 + 10 s.
fn state(token: Option<&str>) -> Arc<AppState> {
    state_at(token, T0 + 10 * SECOND)
}

/// [`state`] with the clock at `now_ns`.
fn state_at(token: Option<&str>, now_ns: u64) -> Arc<AppState> {
    let limits = Limits {
        retention_ns: 3600 * SECOND,
        max_memory_bytes: 64 << 20,
    };
    let mut store = Store::new(10 * SECOND, HealthThresholds::default(), limits, 1000);
    let mut records = Vec::new();
    for i in 0..10 {
        let client = request(
            "frontend",
            "checkout",
            T0 + i * 100 * MS,
            2_000,
            if i == 9 { 503 } else { 200 },
        );
        records.push(Record::Request(server_side(&client, 7).into()));
        records.push(Record::Request(client.into()));
    }
    for i in 0..5 {
        let outcome = if i == 0 {
            Outcome::Closed
        } else {
            Outcome::Refused
        };
        records.push(Record::MeshFlow(
            flow("checkout", "payments", T0 + (i + 1) * SECOND, outcome).into(),
        ));
    }
    store.ingest("node-a", records, T0 + 9 * SECOND);
    Arc::new(AppState::new(
        store,
        token.map(str::to_owned),
        Clock::Fixed(now_ns),
    ))
}

async fn call(state: &Arc<AppState>, uri: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn json(state: &Arc<AppState>, uri: &str) -> Value {
    let (status, body) = call(state, uri, None).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn graph_reports_edges_with_counts_rates_and_health() {
    let s = state(None);
    let g = json(&s, "/api/v1/graph?window=10s").await;
    assert_eq!(g["window_seconds"], 10.0);
    let edges = g["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    let fc = &edges[1];
    assert_eq!(fc["id"], "workload:shop:frontend->workload:shop:checkout");
    assert_eq!(
        fc["requests"], 10,
        "server-side records of known callers are not counted twice"
    );
    assert_eq!(fc["requests_per_second"], 1.0);
    assert_eq!(fc["errors"]["http_5xx"], 1);
    assert_eq!(fc["error_rate"], 0.1);
    assert_eq!(fc["health"], "failing");
    // 2000 µs is reported as its hdrhistogram bucket's top, 2007.
    assert_eq!(fc["latency"]["p50_us"], 2_007);
    assert_eq!(fc["latency_kind"], "request");
    let cp = &edges[0];
    assert_eq!(cp["connections"], 5);
    assert_eq!(cp["errors"]["refused"], 4);
    assert_eq!(cp["bytes_sent"], 500);
    assert_eq!(cp["mtls_share"], 1.0);
    assert_eq!(cp["pool_reuse_ratio"], 0.0);
    let nodes: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [
            "workload:shop:checkout",
            "workload:shop:frontend",
            "workload:shop:payments"
        ]
    );
    assert_eq!(g["nodes"][2]["health"], "failing");

    let g = json(&s, "/api/v1/graph?window=10s&level=namespace").await;
    assert_eq!(g["edges"][0]["id"], "namespace:shop->namespace:shop");
    let g = json(&s, "/api/v1/graph?namespace=elsewhere").await;
    assert_eq!(g["edges"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let s = state(None);
    for (uri, message) in [
        (
            "/api/v1/graph?window=5x",
            "invalid parameter `window`: \"5x\" is not a duration like 5m or 250ms (unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations))",
        ),
        (
            "/api/v1/graph?level=pod",
            "invalid parameter `level`: \"pod\" is not one of workload, service, namespace",
        ),
        ("/api/v1/graph?windw=5m", "unknown parameter `windw`"),
        (
            "/api/v1/traces?limit=0",
            "invalid parameter `limit`: \"0\" is not a number from 1 to 1000",
        ),
        (
            "/api/v1/traces?error=maybe",
            "invalid parameter `error`: \"maybe\" is not true or false",
        ),
        (
            "/api/v1/outages?since=yesterday",
            "invalid parameter `since`: \"yesterday\" is not an RFC 3339 time, unix nanoseconds or a duration ago like 15m",
        ),
        (
            "/api/v1/traces/xyz",
            "invalid parameter `trace_id`: \"xyz\" is not 32 hex digits",
        ),
        (
            "/api/v1/flows?kind=packet",
            "invalid parameter `kind`: \"packet\" is not one of connection, mesh_flow, request",
        ),
    ] {
        let (status, body) = call(&s, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], message, "{uri}");
    }
}

#[tokio::test]
async fn bearer_token_guards_everything_but_health() {
    let s = state(Some("s3cret"));
    assert_eq!(
        call(&s, "/api/v1/graph", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&s, "/api/v1/graph", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&s, "/metrics", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&s, "/api/v1/graph", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, "/healthz", None).await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        call(&s, "/readyz", None).await,
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
    );
    s.set_ready();
    assert_eq!(
        call(&s, "/readyz", None).await,
        (StatusCode::OK, "ready\n".into())
    );
    assert_eq!(call(&s, "/nope", None).await.0, StatusCode::NOT_FOUND);
}

async fn page(state: &Arc<AppState>, uri: &str, accept: &str) -> (StatusCode, String, String) {
    let request = Request::get(uri)
        .header("accept", accept)
        .body(Body::empty())
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_ui_is_served_without_a_token_and_client_routes_fall_back_to_it() {
    let s = state(Some("s3cret"));
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    let (status, content_type, index) = page(&s, "/", "*/*").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(index.contains("<div id=\"app\""), "{index}");
    // The page names its script; that asset is served with a JavaScript content type.
    let script = index
        .split("src=\"/assets/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("index.html loads a script from /assets/");
    let (status, content_type, _) = page(&s, &format!("/assets/{script}"), "*/*").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    // Client-side routes load the page when a browser navigates to them...
    let (status, _, body) = page(&s, "/traces/0123", html).await;
    assert_eq!((status, body), (StatusCode::OK, index.clone()));
    // ...but missing assets and non-browser clients get 404, and the API is unaffected.
    assert_eq!(
        page(&s, "/assets/gone.js", html).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        page(&s, "/outages", "application/json").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, content_type, _) = page(&s, "/api/v1/nope", html).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/json");
    assert_eq!(
        page(&s, "/api/v1/graph", html).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn edge_detail_has_totals_and_a_series_per_bucket() {
    let s = state(None);
    let e = json(
        &s,
        "/api/v1/edge?source=workload:shop:frontend&target=workload:shop:checkout&window=10s",
    )
    .await;
    assert_eq!(
        e["edge"]["id"],
        "workload:shop:frontend->workload:shop:checkout"
    );
    assert_eq!(e["edge"]["requests"], 10);
    assert_eq!(e["edge"]["errors"]["http_5xx"], 1);
    assert_eq!(e["edge"]["error_rate"], 0.1);
    assert_eq!(e["level"], "workload");
    let series = e["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["start_ns"], T0);
    assert_eq!(series[0]["requests"], 10);
    assert_eq!(series[0]["requests_per_second"], 1.0);
    let e = json(
        &s,
        "/api/v1/edge?source=workload:shop:checkout&target=workload:shop:payments&window=10s",
    )
    .await;
    assert_eq!(e["edge"]["connections"], 5);
    assert_eq!(e["edge"]["errors"]["refused"], 4);
    // 800 µs is reported as its hdrhistogram bucket's top, 803.
    assert_eq!(e["series"][0]["tunnel_setup"]["p95_us"], 803);
    let e = json(
        &s,
        "/api/v1/edge?source=namespace:shop&target=namespace:shop&level=namespace&window=10s",
    )
    .await;
    assert_eq!(e["edge"]["requests"], 10);
    let (status, body) = call(&s, "/api/v1/edge?source=workload:shop:frontend", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("`target`: missing"), "{body}");
    assert_eq!(
        call(
            &s,
            "/api/v1/edge?source=workload:shop:payments&target=workload:shop:frontend",
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn node_detail_has_edges_and_a_series_per_bucket() {
    let s = state(None);
    let n = json(&s, "/api/v1/nodes/workload:shop:checkout?window=10s").await;
    assert_eq!(n["node"]["kind"], "workload");
    assert_eq!(n["node"]["inbound"]["requests"], 10);
    assert_eq!(n["outbound"]["connections"], 5);
    assert_eq!(n["incoming"][0]["source"], "workload:shop:frontend");
    assert_eq!(n["outgoing"][0]["target"], "workload:shop:payments");
    let series = n["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["start_ns"], T0);
    assert_eq!(series[0]["inbound"]["requests_per_second"], 1.0);
    let (status, body) = call(&s, "/api/v1/nodes/pod:x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid parameter `id`"), "{body}");
    assert_eq!(
        call(&s, "/api/v1/nodes/workload:shop:ghost", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn outages_show_root_cause_and_evidence() {
    let s = state(None);
    s.store()
        .maintain(T0 + 10 * SECOND + crate::outage::GRACE_NS);
    let o = json(&s, "/api/v1/outages?since=1h").await;
    let outages = o["outages"].as_array().unwrap();
    assert_eq!(outages.len(), 1);
    assert_eq!(outages[0]["open"], true);
    // The first failure is the 503 ending at 0.9 s + 2 ms.
    assert_eq!(outages[0]["start"], "2026-01-01T12:03:00.902Z");
    assert_eq!(outages[0]["root_cause"]["node"], "workload:shop:payments");
    assert_eq!(
        outages[0]["root_cause"]["evidence"],
        "payments refuses connections: 80 % refused since 12:03:02"
    );
    assert_eq!(outages[0]["failures"]["refused"], 4);
    let o = json(&s, "/api/v1/outages?until=2026-01-01T12:00:00Z").await;
    assert_eq!(o["outages"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn traces_search_and_fetch_by_id() {
    let s = state(None);
    let t = json(&s, "/api/v1/traces?service=checkout&error=true").await;
    let traces = t["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0]["span_count"], 2);
    assert_eq!(traces[0]["error_count"], 2);
    let id = traces[0]["trace_id"].as_str().unwrap();
    let trace = json(&s, &format!("/api/v1/traces/{id}")).await;
    let kinds: Vec<&str> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["client", "server"]);
    let t = json(&s, "/api/v1/traces?min_duration=1s").await;
    assert_eq!(t["traces"].as_array().unwrap().len(), 0);
    let t = json(&s, "/api/v1/traces?limit=3&tag=http.status_code=200").await;
    assert_eq!(t["traces"].as_array().unwrap().len(), 3);
    let missing = format!("/api/v1/traces/{}", "0".repeat(32));
    assert_eq!(call(&s, &missing, None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn flows_returns_recent_records_with_their_field_names() {
    let s = state(None);
    let f = json(&s, "/api/v1/flows?kind=mesh_flow&outcome=refused&limit=2").await;
    let records = f["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["kind"], "mesh_flow");
    assert_eq!(records[0]["end_ns"], T0 + 5 * SECOND);
    assert_eq!(records[0]["outcome"], "refused");
    assert_eq!(records[0]["path"], "hbone");
    assert_eq!(records[0]["destination"]["workload"], "payments");
    let f = json(&s, "/api/v1/flows?kind=request&error=true").await;
    assert_eq!(f["records"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn metrics_expose_red_ingest_and_memory() {
    let s = state(None);
    let (status, body) = call(&s, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let edge = "source_kind=\"workload\",source_workload=\"frontend\",source_namespace=\"shop\",destination_kind=\"workload\",destination_workload=\"checkout\",destination_namespace=\"shop\",destination_service=\"checkout.shop.svc.cluster.local\"";
    for line in [
        format!("nephilia_edge_requests_total{{{edge}}} 10"),
        format!("nephilia_edge_errors_total{{{edge},kind=\"http_5xx\"}} 1"),
        format!("nephilia_edge_latency_microseconds{{{edge},quantile=\"0.5\"}} 2007"),
        "nephilia_ingest_records_total{kind=\"request\"} 20".to_owned(),
        "nephilia_ingest_records_total{kind=\"mesh_flow\"} 5".to_owned(),
        "nephilia_ingest_batches_total 1".to_owned(),
        format!(
            "nephilia_memory_bytes{{store=\"traces\"}} {}",
            s.store().traces.bytes()
        ),
        "nephilia_memory_limit_bytes 67108864".to_owned(),
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let s = state(None);
    let doc = json(&s, "/api/v1/openapi.json").await;
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for route in [
        "/api/v1/graph",
        "/api/v1/nodes/{id}",
        "/api/v1/edge",
        "/api/v1/outages",
        "/api/v1/traces",
        "/api/v1/traces/{trace_id}",
        "/api/v1/flows",
        "/api/v1/agents",
        "/api/v1/openapi.json",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.iter().any(|p| *p == route),
            "{route} missing from {paths:?}"
        );
    }
    assert_eq!(doc["openapi"], "3.1.0");
}
