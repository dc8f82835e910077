use super::*;
use std::sync::Arc;

use crate::fixture::{MS, SECOND, T0, flow, request, server_side};
use crate::trace::TraceStore;

/// frontend → checkout over a fresh HBONE tunnel (GET /checkout, 200), then checkout →
/// payments over gRPC answered UNAVAILABLE; each call seen at both ends.
fn shop() -> Vec<ExportSpan> {
    let mut store = TraceStore::new();
    store.track_export();
    let front = request("frontend", "checkout", T0, 10_000, 200);
    let checkout_in = server_side(&front, 7);
    let mut charge = request("checkout", "payments", T0 + 2 * MS, 3_000, 200);
    charge.protocol = Protocol::Grpc;
    charge.method = "POST".into();
    charge.path = "/shop.Payments/Charge".into();
    charge.grpc_status = Some(14);
    charge.grpc_message = Some("no healthy upstream".into());
    charge.node = "node-b".into();
    charge.pid = 7;
    let mut payments_in = server_side(&charge, 9);
    payments_in.node = "node-c".into();
    for r in [&payments_in, &charge, &checkout_in, &front] {
        store.add_request(r.clone(), T0);
    }
    let mut tunnel = flow("frontend", "checkout", T0 + 20 * MS, Outcome::Closed);
    tunnel.start_ns = T0 - MS;
    tunnel.tunnel_setup_us = Some(900);
    store.add_flow(tunnel.clone());
    store.take_settled(T0 + 10 * SECOND, SECOND)
}

/// Attributes as (key, value), in order.
type Pairs<'a> = Vec<(&'a str, Value)>;

fn s(v: &str) -> Value {
    Value::StringValue(v.to_owned())
}

fn i(v: i64) -> Value {
    Value::IntValue(v)
}

fn attributes(span: &Span) -> Pairs<'_> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = kv.value.clone().and_then(|v| v.value).expect("a value");
            (kv.key.as_str(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_fan_out_maps_to_client_tunnel_and_server_spans_with_their_links() {
    let exported = shop();
    let spans: Vec<OtlpSpan> = exported.iter().map(|e| span(e).unwrap()).collect();
    let index = |id: &[u8]| spans.iter().position(|s| s.span.span_id == id);
    let shape: Vec<_> = spans
        .iter()
        .map(|o| {
            let status = o.span.status.as_ref().expect("a status");
            (
                o.service.service.as_str(),
                o.span.name.as_str(),
                o.span.kind,
                index(&o.span.parent_span_id),
                status.code,
                status.message.as_str(),
            )
        })
        .collect();
    let (client, server, error, unset) = (
        OtlpKind::Client as i32,
        OtlpKind::Server as i32,
        StatusCode::Error as i32,
        StatusCode::Unset as i32,
    );
    assert_eq!(
        shape,
        [
            ("frontend", "GET /checkout", client, None, unset, ""),
            ("ztunnel", "HBONE connect", client, Some(0), unset, ""),
            ("checkout", "GET /checkout", server, Some(1), unset, ""),
            (
                "checkout",
                "shop.Payments/Charge",
                client,
                Some(2),
                error,
                "gRPC status 14 UNAVAILABLE: no healthy upstream"
            ),
            (
                "payments",
                "shop.Payments/Charge",
                server,
                Some(3),
                error,
                "gRPC status 14 UNAVAILABLE: no healthy upstream"
            ),
        ]
    );
    // No traceparent: the trace id is "nephilia" + the root's store key (the 4th record).
    for o in &spans {
        assert_eq!(hex(&o.span.trace_id), "6e657068696c69610000000000000003");
        assert_eq!(
            hex(&o.span.span_id),
            exported[index(&o.span.span_id).unwrap()].span.span_id
        );
    }
    assert!(spans[0].span.parent_span_id.is_empty());
    let front = &spans[0].span;
    assert_eq!(
        (front.start_time_unix_nano, front.end_time_unix_nano),
        (T0, T0 + 10 * MS)
    );
    assert_eq!(
        attributes(front),
        [
            ("network.protocol.name", s("http")),
            ("network.protocol.version", s("1.1")),
            ("http.request.method", s("GET")),
            ("http.response.status_code", i(200)),
            ("url.template", s("/checkout")),
            ("server.address", s("checkout")),
            ("server.port", i(8080)),
            ("network.peer.address", s("10.0.1.20")),
            ("network.peer.port", i(8080)),
            ("nephilia.source_workload", s("frontend")),
            ("nephilia.source_namespace", s("shop")),
            (
                "nephilia.source_identity",
                s("spiffe://cluster.local/ns/shop/sa/frontend")
            ),
            ("nephilia.destination_workload", s("checkout")),
            ("nephilia.destination_namespace", s("shop")),
            (
                "nephilia.destination_service",
                s("checkout.shop.svc.cluster.local")
            ),
            (
                "nephilia.destination_identity",
                s("spiffe://cluster.local/ns/shop/sa/checkout")
            ),
            ("nephilia.request_bytes", i(50)),
            ("nephilia.response_bytes", i(500)),
        ]
    );
    assert_eq!(
        attributes(&spans[1].span),
        [
            ("network.transport", s("tcp")),
            ("server.address", s("10.0.1.20")),
            ("server.port", i(8080)),
            ("network.peer.address", s("10.0.1.20")),
            ("nephilia.mesh_path", s("hbone")),
            ("nephilia.mtls", Value::BoolValue(true)),
            ("nephilia.tunnel_setup_us", i(900)),
            ("nephilia.tunnel_connect_us", i(600)),
            ("nephilia.tunnel_reused", Value::BoolValue(false)),
            ("nephilia.mesh_outcome", s("closed")),
            ("nephilia.source_workload", s("frontend")),
            (
                "nephilia.source_identity",
                s("spiffe://cluster.local/ns/shop/sa/frontend")
            ),
            ("nephilia.destination_workload", s("checkout")),
            (
                "nephilia.destination_service",
                s("checkout.shop.svc.cluster.local")
            ),
            (
                "nephilia.destination_identity",
                s("spiffe://cluster.local/ns/shop/sa/checkout")
            ),
        ]
    );
    let payments = attributes(&spans[4].span);
    assert_eq!(
        payments[..9],
        [
            ("network.protocol.name", s("http")),
            ("network.protocol.version", s("2")),
            ("rpc.system", s("grpc")),
            ("rpc.service", s("shop.Payments")),
            ("rpc.method", s("Charge")),
            ("rpc.grpc.status_code", i(14)),
            ("server.address", s("payments")),
            ("server.port", i(8080)),
            ("client.address", s("10.0.1.20")),
        ]
    );
    assert_eq!(
        payments[9..11],
        [
            ("network.peer.address", s("10.0.1.20")),
            ("network.peer.port", i(51000)),
        ]
    );
}

#[test]
fn one_resource_per_service_instance_with_kubernetes_attributes() {
    let spans = shop().iter().map(|e| span(e).unwrap()).collect();
    let request = export_request(spans);
    let resources: Vec<(Pairs, Vec<&str>)> = request
        .resource_spans
        .iter()
        .map(|rs| {
            let resource = rs.resource.as_ref().unwrap();
            let attributes = resource
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
                .collect();
            assert_eq!(rs.scope_spans.len(), 1);
            let scope = &rs.scope_spans[0];
            assert_eq!(scope.scope.as_ref().unwrap().name, "nephilia");
            let names = scope.spans.iter().map(|s| s.name.as_str()).collect();
            (attributes, names)
        })
        .collect();
    let k8s = |service: &str, pod: &str, node: &str| {
        vec![
            ("service.name", s(service)),
            ("service.namespace", s("shop")),
            ("k8s.namespace.name", s("shop")),
            ("k8s.pod.name", s(pod)),
            ("k8s.node.name", s(node)),
        ]
    };
    assert_eq!(
        resources,
        [
            (
                k8s("checkout", "checkout-0", "node-b"),
                vec!["GET /checkout", "shop.Payments/Charge"]
            ),
            (
                k8s("frontend", "frontend-0", "node-a"),
                vec!["GET /checkout"]
            ),
            (
                k8s("payments", "payments-0", "node-c"),
                vec!["shop.Payments/Charge"]
            ),
            (
                vec![
                    ("service.name", s("ztunnel")),
                    ("k8s.node.name", s("node-a"))
                ],
                vec!["HBONE connect"]
            ),
        ]
    );
}

#[test]
fn failed_flows_and_5xx_are_errors_and_bad_ids_are_refused() {
    let mut exported = shop();
    let SpanRecord::Tunnel(flow) = &mut exported[1].record else {
        panic!("the second span is the tunnel");
    };
    Arc::make_mut(flow).outcome = Outcome::Refused;
    let status = span(&exported[1]).unwrap().span.status.unwrap();
    assert_eq!(
        (status.code, status.message.as_str()),
        (StatusCode::Error as i32, "connection refused")
    );
    let SpanRecord::Request(front) = &mut exported[0].record else {
        panic!("the first span is frontend's request");
    };
    Arc::make_mut(front).status = Some(503);
    let status = span(&exported[0]).unwrap().span.status.unwrap();
    assert_eq!(
        (status.code, status.message.as_str()),
        (StatusCode::Error as i32, "HTTP 503")
    );
    exported[0].span.trace_id = "4BF92F3577B34DA6A3CE929D0E0E4736".into();
    assert_eq!(
        span(&exported[0]),
        Err(MappingError::BadId {
            field: "trace_id",
            value: "4BF92F3577B34DA6A3CE929D0E0E4736".into(),
            digits: 32
        })
    );
    exported[0].span.trace_id = "0".repeat(32);
    assert!(span(&exported[0]).is_err(), "an all-zero id is invalid");
}
