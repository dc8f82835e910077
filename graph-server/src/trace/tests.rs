use super::*;
use crate::fixture::{MS, SECOND, T0, flow, request, server_side};
use crate::record::Outcome;
use view::SpanKind;

/// frontend → checkout (10 ms) → payments (3 ms, answered 503), each call seen at both
/// ends, the first hop through an HBONE tunnel.
fn fan_out(store: &mut TraceStore) -> (Request, Request, Request, Request) {
    let front = request("frontend", "checkout", T0, 10_000, 200);
    let checkout_in = server_side(&front, 7);
    let mut checkout_out = request("checkout", "payments", T0 + 2 * MS, 3_000, 503);
    checkout_out.node = "node-b".into();
    checkout_out.pid = 7;
    let mut payments_in = server_side(&checkout_out, 9);
    payments_in.node = "node-c".into();
    // Out of order, as batches from three nodes would arrive.
    store.add_request(payments_in.clone(), T0);
    store.add_request(checkout_out.clone(), T0);
    store.add_request(checkout_in.clone(), T0);
    store.add_request(front.clone(), T0);
    let mut tunnel = flow("frontend", "checkout", T0 + 20 * MS, Outcome::Closed);
    tunnel.start_ns = T0 - MS;
    tunnel.tunnel_setup_us = Some(900);
    store.add_flow(tunnel.clone());
    (front, checkout_in, checkout_out, payments_in)
}

fn shape(view: &TraceView) -> Vec<(SpanKind, &str, &str, Option<usize>)> {
    let index = |id: &Option<String>| {
        id.as_ref().map(|id| {
            view.spans
                .iter()
                .position(|s| &s.span_id == id)
                .expect("parent in trace")
        })
    };
    view.spans
        .iter()
        .map(|s| {
            (
                s.kind,
                s.service.as_str(),
                s.operation.as_str(),
                index(&s.parent_span_id),
            )
        })
        .collect()
}

#[test]
fn spans_nest_across_proxies_and_processes_without_traceparent() {
    let mut store = TraceStore::new();
    fan_out(&mut store);
    let found = store.search(&TraceQuery {
        service: Some("payments".into()),
        until_ns: u64::MAX,
        limit: 10,
        ..TraceQuery::default()
    });
    assert_eq!(found.len(), 1);
    let summary = &found[0];
    assert_eq!(summary.root_service, "frontend");
    assert_eq!(summary.root_operation, "GET /checkout");
    assert_eq!(summary.span_count, 5);
    assert_eq!(summary.error_count, 2, "payments' 503 at both ends");
    assert_eq!(summary.duration_us, 10_000);
    assert_eq!(summary.services, ["checkout", "frontend", "payments"]);
    assert!(summary.trace_id.starts_with("6e657068696c6961"));

    let view = store.trace(&summary.trace_id).expect("trace by its id");
    assert_eq!(
        shape(&view),
        [
            (SpanKind::Client, "frontend", "GET /checkout", None),
            (SpanKind::Tunnel, "ztunnel", "HBONE connect", Some(0)),
            (SpanKind::Server, "checkout", "GET /checkout", Some(1)),
            (SpanKind::Client, "checkout", "GET /payments", Some(2)),
            (SpanKind::Server, "payments", "GET /payments", Some(3)),
        ]
    );
    let tunnel = &view.spans[1];
    assert_eq!(tunnel.attributes["tunnel_setup_us"], "900");
    assert_eq!(
        tunnel.attributes["destination.identity"],
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    assert_eq!(view.spans[4].attributes["http.status_code"], "503");
}

#[test]
fn traceparent_ids_stitch_and_name_the_trace() {
    let mut store = TraceStore::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = request("frontend", "checkout", T0, 5_000, 200);
    client.trace_id = Some(trace.into());
    client.span_id = Some("00f067aa0ba902b7".into());
    // A different source ip would defeat the proxy join: only the header links them.
    let mut server = server_side(&client, 7);
    server.source.ip = "10.9.9.9".into();
    store.add_request(client, T0);
    store.add_request(server, T0);
    let view = store.trace(trace).expect("trace by traceparent id");
    assert_eq!(view.summary.trace_id, trace);
    assert_eq!(view.spans.len(), 2);
    assert_eq!(view.spans[0].span_id, "00f067aa0ba902b7");
    assert_eq!(
        view.spans[1].parent_span_id.as_deref(),
        Some("00f067aa0ba902b7")
    );
}

#[test]
fn search_filters_by_duration_error_operation_and_attributes() {
    let mut store = TraceStore::new();
    fan_out(&mut store);
    let mut other = request("frontend", "search", T0 + 100 * MS, 50_000, 200);
    other.pid = 0;
    store.add_request(other, T0);
    let q = |f: &dyn Fn(&mut TraceQuery)| {
        let mut query = TraceQuery {
            until_ns: u64::MAX,
            limit: 10,
            ..TraceQuery::default()
        };
        f(&mut query);
        store
            .search(&query)
            .into_iter()
            .map(|t| t.root_operation)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&|_| {}), ["GET /search", "GET /checkout"]);
    assert_eq!(q(&|q| q.min_duration_us = Some(20_000)), ["GET /search"]);
    assert_eq!(q(&|q| q.max_duration_us = Some(3_000)), ["GET /checkout"]);
    assert_eq!(q(&|q| q.error = Some(true)), ["GET /checkout"]);
    assert_eq!(
        q(&|q| q.operation = Some("GET /payments".into())),
        ["GET /checkout"]
    );
    assert_eq!(
        q(&|q| q.attributes = vec![("http.status_code".into(), "503".into())]),
        ["GET /checkout"]
    );
    assert_eq!(q(&|q| q.since_ns = T0 + 50 * MS), ["GET /search"]);
    assert_eq!(q(&|q| q.limit = 1), ["GET /search"]);
}

#[test]
fn eviction_forgets_old_spans_and_their_bytes() {
    let mut store = TraceStore::new();
    fan_out(&mut store);
    assert_eq!(store.span_count(), 4);
    let bytes = store.bytes();
    let freed = store.evict_before(T0 + MS);
    assert_eq!(
        store.span_count(),
        2,
        "the two spans of the payments call remain"
    );
    assert_eq!(store.bytes(), bytes - freed);
    // checkout → payments: the client span by start, call, process and socket; the server
    // span by start, call and process. The tunnel (started before T0) is gone.
    assert_eq!(index_entries(&store), (7, 0));
    store.evict_before(u64::MAX);
    assert_eq!((store.span_count(), store.bytes()), (0, 0));
    assert_eq!(index_entries(&store), (0, 0));
}

/// Entries left in the span indexes and the flow indexes.
fn index_entries(store: &TraceStore) -> (usize, usize) {
    let spans = [
        &store.clients_by_header,
        &store.servers_by_header,
        &store.by_trace,
        &store.clients_by_call,
        &store.servers_by_call,
        &store.clients_by_socket,
        &store.clients_by_process,
        &store.servers_by_process,
    ]
    .iter()
    .map(|index| index.0.len())
    .sum::<usize>()
        + store.by_start.len();
    let flows = store.flows_by_path.0.len() + store.flows_by_start.len() + store.flow_ids.len();
    (spans, flows)
}

#[test]
fn only_the_first_call_on_a_connection_waits_for_the_tunnel() {
    let mut store = TraceStore::new();
    // One kept-alive connection (one client socket), three calls 5 ms apart, then a
    // call from another socket of the same pod over the same tunnel flow path.
    let mut tunnel = flow("frontend", "checkout", T0 + 100 * MS, Outcome::Open);
    tunnel.start_ns = T0 - MS;
    tunnel.end_ns = None;
    store.add_flow(tunnel.clone());
    let calls: Vec<Request> = (0..3)
        .map(|i| request("frontend", "checkout", T0 + i * 5 * MS, 1_000, 200))
        .collect();
    // Arrival order must not matter.
    for call in calls.iter().rev() {
        store.add_request(call.clone(), T0);
    }
    let operations: Vec<String> = calls
        .iter()
        .map(|call| {
            let found = store.search(&TraceQuery {
                since_ns: call.start_ns,
                until_ns: call.start_ns + 1,
                limit: 1,
                ..TraceQuery::default()
            });
            let view = store.trace(&found[0].trace_id).expect("trace");
            view.spans[1].operation.clone()
        })
        .collect();
    assert_eq!(
        operations,
        ["HBONE connect", "HBONE stream", "HBONE stream"]
    );
}

fn ids(spans: impl IntoIterator<Item = SpanView>) -> Vec<(String, Option<String>, SpanKind)> {
    spans
        .into_iter()
        .map(|s| (s.span_id, s.parent_span_id, s.kind))
        .collect()
}

#[test]
fn spans_leave_for_export_once_when_their_trace_has_been_quiet() {
    let quiet = 5 * SECOND;
    let mut store = TraceStore::new();
    assert!(store.take_settled(u64::MAX, quiet).is_empty(), "export off");
    store.track_export();
    fan_out(&mut store);
    assert!(store.take_settled(T0 + quiet - 1, quiet).is_empty());
    assert_eq!(store.pending_export(), 4);
    let settled = store.take_settled(T0 + quiet, quiet);
    assert_eq!(settled.len(), 5, "4 requests and the tunnel");
    let view = store.trace(&settled[0].span.trace_id).expect("the trace");
    assert_eq!(
        ids(settled.iter().map(|e| e.span.clone())),
        ids(view.spans),
        "the spans, ids and parents the trace API shows"
    );
    assert!(matches!(settled[1].record, SpanRecord::Tunnel(_)));
    assert_eq!(store.pending_export(), 0);
    assert!(
        store.take_settled(T0 + 60 * SECOND, quiet).is_empty(),
        "each span once"
    );

    // A call payments made, reported late: it leaves alone, under payments' server span,
    // in the trace already exported.
    let mut late = request("payments", "ledger", T0 + 3 * MS, 500, 200);
    late.node = "node-c".into();
    late.pid = 9;
    store.add_request(late, T0 + 20 * SECOND);
    assert!(store.take_settled(T0 + 24 * SECOND, quiet).is_empty());
    let again = store.take_settled(T0 + 25 * SECOND, quiet);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].span.operation, "GET /ledger");
    assert_eq!(again[0].span.trace_id, settled[0].span.trace_id);
    assert_eq!(
        again[0].span.parent_span_id.as_ref(),
        Some(&settled[4].span.span_id),
        "payments' server span"
    );
}

#[test]
fn a_trace_waits_for_its_last_span_but_not_for_ever() {
    let quiet = 5 * SECOND;
    let mut store = TraceStore::new();
    store.track_export();
    // One traceparent, a new span every 4 s: the trace is never quiet for 5 s.
    for i in 0..8 {
        let mut r = request("frontend", "checkout", T0 + i * MS, 100, 200);
        r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        r.span_id = Some(format!("{:016x}", i + 1));
        r.pid = 0;
        let arrived = T0 + i * 4 * SECOND;
        store.add_request(r, arrived);
        assert!(store.take_settled(arrived, quiet).is_empty(), "span {i}");
    }
    assert!(store.take_settled(T0 + 30 * SECOND - 1, quiet).is_empty());
    // The first span has waited HOLD_FACTOR quiet periods: the whole trace leaves.
    let settled = store.take_settled(T0 + 30 * SECOND, quiet);
    let span_ids: Vec<&str> = settled.iter().map(|e| e.span.span_id.as_str()).collect();
    assert_eq!(
        span_ids,
        (1..=8).map(|i| format!("{i:016x}")).collect::<Vec<_>>()
    );
    assert_eq!(store.pending_export(), 0);
}

#[test]
fn spans_evicted_before_export_are_counted() {
    let mut store = TraceStore::new();
    store.track_export();
    fan_out(&mut store);
    store.evict_before(T0 + MS);
    assert_eq!(
        (store.evicted_before_export(), store.pending_export()),
        (2, 2)
    );
    store.evict_before(u64::MAX);
    assert_eq!(
        (
            store.evicted_before_export(),
            store.pending_export(),
            store.bytes()
        ),
        (4, 0, 0)
    );
}

#[test]
fn nearest_finds_what_a_full_scan_finds() {
    // Entries with repeated start times, a few hundred windows and predicates, compared
    // with filtering everything and taking the minimum.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let entries: Vec<(u64, u64)> = (0..300).map(|k| (next(100), k)).collect();
    // The entries under hash 7, inserted unsorted, between neighbours under 6 and 8 that
    // must never be returned.
    let mut index = TimeIndex::default();
    for &entry in &entries {
        index.insert(7, entry);
        index.insert(6, entry);
        index.insert(8, (entry.0, entry.1 + 1000));
    }
    for _ in 0..500 {
        let (a, b) = (next(110), next(110));
        // Half the ranges are inverted (empty): nothing is found, nothing panics.
        let range = a..b;
        let at = next(110);
        let (modulus, rest) = (next(7) + 1, next(3));
        let matches = |k: u64| k % modulus == rest % modulus;
        let full = entries
            .iter()
            .copied()
            .filter(|&(start, k)| range.contains(&start) && matches(k))
            .min_by_key(|&(start, k)| (at.abs_diff(start), k));
        assert_eq!(
            index.nearest(7, range.clone(), at, matches),
            full,
            "{range:?} at {at}"
        );
    }
}
