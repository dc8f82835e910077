//! Exact values parsed from the captures of real hyper traffic in `tests/corpus/`
//! (regenerate with `cargo run -p nephilia-l7 --example capture_corpus`), fed whole,
//! split at every position, byte by byte and with retransmissions.

#[path = "support/capture.rs"]
mod capture;
#[path = "support/replay.rs"]
mod replay;

use capture::Segment;
use nephilia_l7::{Direction, L7Exchange, ParserLimits, Protocol};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn bytes_of(segments: &[Segment], direction: Direction) -> u64 {
    segments
        .iter()
        .filter(|s| s.direction == direction)
        .map(|s| s.bytes.len() as u64)
        .sum()
}

fn summary(e: &L7Exchange) -> (&str, &str, &str, Option<u16>, u64, u64) {
    (
        e.method.as_str(),
        e.path.as_str(),
        e.path_template.as_str(),
        e.status,
        e.request_bytes,
        e.response_bytes,
    )
}

#[test]
fn http1_keepalive() {
    let segments = capture::load("http1_keepalive.cap");
    let exchanges = replay::run(&segments);
    let got: Vec<_> = exchanges.iter().map(summary).collect();
    let upload = "/upload/123e4567-e89b-12d3-a456-426614174000";
    assert_eq!(
        got,
        vec![
            ("GET", "/users/42", "/users/{id}", Some(200), 121, 98),
            ("POST", "/orders", "/orders", Some(200), 241, 98),
            // Chunked response: 3 chunks and the last-chunk.
            ("GET", "/stream", "/stream", Some(200), 49, 123),
            // Chunked request body.
            ("PUT", upload, "/upload/{id}", Some(200), 146, 98),
            // HEAD: content-length 22 but no body (RFC 9110 §9.3.2).
            ("HEAD", "/users/7", "/users/{id}", Some(200), 51, 76),
            ("GET", "/missing", "/missing", Some(404), 50, 82),
            ("GET", "/fail", "/fail", Some(500), 47, 98),
            ("GET", "/slow", "/slow", Some(200), 47, 82),
        ]
    );
    // Every byte of the capture belongs to one exchange.
    let request_total: u64 = exchanges.iter().map(|e| e.request_bytes).sum();
    let response_total: u64 = exchanges.iter().map(|e| e.response_bytes).sum();
    assert_eq!(
        request_total,
        bytes_of(&segments, Direction::ClientToServer)
    );
    assert_eq!(
        response_total,
        bytes_of(&segments, Direction::ServerToClient)
    );

    for e in &exchanges {
        assert_eq!(e.protocol, Protocol::Http1);
        assert_eq!(e.authority.as_deref(), Some("api.demo.svc:8080"));
        assert!(!e.incomplete);
        assert_eq!(e.error, e.status == Some(500), "{e:?}");
        assert_eq!(
            e.latency_ns,
            Some(e.response_end_ns.unwrap() - e.request_start_ns)
        );
    }
    // Timestamps are those of the segments carrying the bytes.
    let requests: Vec<_> = segments
        .iter()
        .filter(|s| s.direction == Direction::ClientToServer)
        .collect();
    let responses: Vec<_> = segments
        .iter()
        .filter(|s| s.direction == Direction::ServerToClient)
        .collect();
    for (i, e) in exchanges.iter().enumerate() {
        assert_eq!(e.request_start_ns, requests[i].timestamp_ns);
        assert_eq!(e.response_start_ns, Some(responses[i].timestamp_ns));
    }
    let t = exchanges[0].trace.as_ref().expect("traceparent");
    assert_eq!(
        (t.trace_id.as_str(), t.span_id.as_str()),
        (TRACE_ID, "00f067aa0ba902b7")
    );
    let b3 = exchanges[1].trace.as_ref().expect("x-b3 headers");
    assert_eq!(b3.trace_id, "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(b3.span_id, "a2fb4a1d1a96d312");
    assert_eq!(b3.parent_span_id.as_deref(), Some("0020000000000001"));
    assert!(exchanges[2..].iter().all(|e| e.trace.is_none()));
    // The server slept 20 ms on /slow.
    assert!(
        exchanges[7].latency_ns.unwrap() >= 20_000_000,
        "{:?}",
        exchanges[7].latency_ns
    );
}

#[test]
fn http1_pipelined() {
    let segments = capture::load("http1_pipelined.cap");
    // Three requests in one segment, three responses in one segment.
    assert_eq!(segments.len(), 2);
    let exchanges = replay::run(&segments);
    let got: Vec<_> = exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("GET", "/users/1", "/users/{id}", Some(200), 36, 98),
            ("POST", "/orders", "/orders", Some(200), 60, 98),
            ("GET", "/missing", "/missing", Some(404), 55, 101),
        ]
    );
    assert!(
        exchanges
            .iter()
            .all(|e| e.authority.as_deref() == Some("api"))
    );
}

#[test]
fn h2c_session_reuses_the_dynamic_table() {
    let exchanges = replay::run(&capture::load("h2c_session.cap"));
    let got: Vec<_> = exchanges
        .iter()
        .map(|e| {
            (
                e.stream_id,
                e.method.as_str(),
                e.path.as_str(),
                e.status,
                e.request_bytes,
            )
        })
        .collect();
    // The first HEADERS carries literals; later ones index them (RFC 7541 §2.3.2),
    // so the same request shrinks from 66 to 28 bytes on the wire. Stream 5 adds a
    // DATA frame (9 + 7 bytes) and a content-length field.
    assert_eq!(
        got,
        vec![
            (Some(1), "GET", "/users/100", Some(200), 66),
            (Some(3), "GET", "/users/101", Some(200), 28),
            (Some(5), "GET", "/users/102", Some(200), 48),
            (Some(7), "GET", "/users/103", Some(200), 28),
        ]
    );
    for e in &exchanges {
        assert_eq!(e.protocol, Protocol::Http2);
        assert_eq!(e.path_template, "/users/{id}");
        assert_eq!(e.authority.as_deref(), Some("api.demo.svc:8080"));
        assert!(!e.error && !e.incomplete);
    }
}

#[test]
fn h2c_concurrent_streams() {
    let (exchanges, parser) = replay::run_with(
        &capture::load("h2c_concurrent.cap"),
        ParserLimits::default(),
    );
    let mut got: Vec<_> = exchanges
        .iter()
        .map(|e| (e.stream_id.unwrap(), e.status))
        .collect();
    got.sort();
    assert_eq!(
        got,
        (0..6).map(|i| (1 + 2 * i, Some(200))).collect::<Vec<_>>()
    );
    let mut paths: Vec<_> = exchanges.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/users/100",
            "/users/101",
            "/users/102",
            "/users/103",
            "/users/104",
            "/users/105"
        ]
    );
    assert_eq!(parser.counters().total_errors(), 0);
}

#[test]
fn grpc_unary_with_trailers() {
    let segments = capture::load("grpc_unary.cap");
    let exchanges = replay::run(&segments);
    assert_eq!(exchanges.len(), 1);
    let e = &exchanges[0];
    assert_eq!(e.protocol, Protocol::Grpc);
    assert_eq!(
        (e.method.as_str(), e.path.as_str()),
        ("POST", "/helloworld.Greeter/SayHello")
    );
    assert_eq!(e.path_template, "/helloworld.Greeter/SayHello");
    assert_eq!(e.grpc_service.as_deref(), Some("helloworld.Greeter"));
    assert_eq!(e.grpc_method.as_deref(), Some("SayHello"));
    assert_eq!(e.authority.as_deref(), Some("greeter.demo.svc:50051"));
    assert_eq!(
        (e.status, e.grpc_status, e.grpc_message.as_deref()),
        (Some(200), Some(0), None)
    );
    assert_eq!((e.request_messages, e.response_messages), (1, 1));
    assert_eq!(
        e.trace.as_ref().map(|t| t.trace_id.as_str()),
        Some(TRACE_ID)
    );
    assert!(!e.error && !e.incomplete);
    // Request: preface and SETTINGS are connection bytes, not the stream's.
    assert_eq!((e.request_bytes, e.response_bytes), (152, 95));
}

#[test]
fn grpc_errors_trailers_only_and_in_trailers() {
    let exchanges = replay::run(&capture::load("grpc_error.cap"));
    let got: Vec<_> = exchanges
        .iter()
        .map(|e| {
            (
                e.grpc_method.as_deref(),
                e.status,
                e.grpc_status,
                e.grpc_message.as_deref(),
                e.response_messages,
                e.error,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            // Trailers-only: one HEADERS with END_STREAM carries grpc-status.
            (
                Some("Get"),
                Some(200),
                Some(5),
                Some("user 42 not found"),
                0,
                true
            ),
            (
                Some("Update"),
                Some(200),
                Some(13),
                Some("database unavailable"),
                0,
                true
            ),
        ]
    );
}

/// Same exchanges whatever the segmentation: the reference is the whole-segment run.
fn assert_segmentation_invariant(name: &str, segments: &[Segment]) {
    let reference = replay::run(segments);
    assert!(!reference.is_empty(), "{name}");
    assert_eq!(
        replay::run(&replay::bytewise(segments)),
        reference,
        "{name} byte by byte"
    );
    for (i, s) in segments.iter().enumerate() {
        let positions = 1..s.bytes.len();
        for at in positions {
            let split = replay::split_one(segments, i, at);
            assert_eq!(
                replay::run(&split),
                reference,
                "{name}: segment {i} split at {at}"
            );
        }
    }
}

#[test]
fn every_capture_at_every_split_point() {
    for (name, segments) in capture::all() {
        assert_segmentation_invariant(&name, &segments);
    }
}

#[test]
fn retransmissions_change_nothing() {
    for (name, segments) in capture::all() {
        let reference = replay::run(&segments);
        // Every segment sent twice, and a partial overlap of the next one.
        let mut noisy = Vec::new();
        for s in &segments {
            noisy.push(s.clone());
            noisy.push(s.clone());
            if s.bytes.len() > 2 {
                noisy.push(Segment {
                    seq: s.seq.wrapping_add(1),
                    bytes: s.bytes[1..].to_vec(),
                    ..s.clone()
                });
            }
        }
        let (exchanges, parser) = replay::run_with(&noisy, ParserLimits::default());
        assert_eq!(exchanges, reference, "{name}");
        let expected: u64 = segments
            .iter()
            .map(|s| {
                s.bytes.len() as u64
                    + if s.bytes.len() > 2 {
                        s.bytes.len() as u64 - 1
                    } else {
                        0
                    }
            })
            .sum();
        assert_eq!(parser.counters().bytes_retransmitted, expected, "{name}");
        assert_eq!(parser.counters().total_errors(), 0, "{name}");
    }
}
