//! HTTP/1.x edge cases: framing rules, holes, caps, upgrades, unknown protocols.

#[path = "support/capture.rs"]
mod capture;
#[path = "support/replay.rs"]
mod replay;

use nephilia_l7::{ConnectionParser, ConnectionProtocol, Direction, ParseErrorKind, ParserLimits};
use replay::segments;

const C: Direction = Direction::ClientToServer;
const S: Direction = Direction::ServerToClient;

#[test]
fn chunked_with_trailers_and_interim_response_at_every_split() {
    let request: &[u8] =
        b"POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=v\r\nhello\r\n0\r\nChecksum: abc\r\n\r\n";
    let response: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let reference = replay::run(&segments(&[(C, 10, request), (S, 30, response)]));
    assert_eq!(reference.len(), 1);
    let e = &reference[0];
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.status),
        ("POST", "/upload", Some(201))
    );
    assert_eq!(
        (e.request_bytes, e.response_bytes),
        (request.len() as u64, response.len() as u64)
    );
    assert_eq!((e.response_start_ns, e.latency_ns), (Some(30), Some(20)));
    for at in 1..request.len() {
        let split = segments(&[
            (C, 10, &request[..at]),
            (C, 10, &request[at..]),
            (S, 30, response),
        ]);
        assert_eq!(replay::run(&split), reference, "request split at {at}");
    }
    for at in 1..response.len() {
        let split = segments(&[
            (C, 10, request),
            (S, 30, &response[..at]),
            (S, 30, &response[at..]),
        ]);
        assert_eq!(replay::run(&split), reference, "response split at {at}");
    }
}

#[test]
fn bodiless_responses_and_until_close() {
    let exchanges = replay::run(&segments(&[
        (C, 1, b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.0\r\n\r\n"),
        (S, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        (S, 3, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (S, 4, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        (S, 5, b"HTTP/1.0 200 OK\r\n\r\nuntil"),
        (S, 6, b" close"),
    ]));
    let got: Vec<_> = exchanges
        .iter()
        .map(|e| {
            (
                e.path.as_str(),
                e.status,
                e.response_bytes,
                e.response_end_ns,
                e.incomplete,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a", Some(200), 40, Some(2), false),
            ("/b", Some(204), 27, Some(3), false),
            ("/c", Some(304), 48, Some(4), false),
            // Delimited by the close (RFC 9112 §6.3 item 8): complete at close.
            ("/d", Some(200), 30, Some(6), false),
        ]
    );
}

#[test]
fn hole_inside_a_body_of_known_length_keeps_step() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(C, 100, 1, b"GET /big HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    parser.feed(S, 500, 2, head);
    parser.feed(S, 500 + head.len() as u32, 3, &[b'x'; 100]);
    // The kernel's budget ran out: 850 body bytes not copied, then the last 50.
    parser.gap(S, 850);
    parser.feed(S, 500 + head.len() as u32 + 950, 4, &[b'x'; 50]);
    parser.feed(C, 121, 5, b"GET /next HTTP/1.1\r\n\r\n");
    parser.feed(
        S,
        500 + head.len() as u32 + 1000,
        6,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let got: Vec<_> = parser
        .drain_exchanges()
        .map(|e| (e.path, e.status, e.response_bytes, e.latency_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "/big".to_owned(),
                Some(200),
                head.len() as u64 + 1000,
                Some(3)
            ),
            ("/next".to_owned(), Some(404), 45, Some(1)),
        ]
    );
    assert_eq!(parser.counters().total_errors(), 0);
    assert_eq!(parser.counters().bytes_missing, 850);
}

#[test]
fn hole_that_ends_a_body_completes_the_exchange_at_once() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(C, 100, 1, b"GET /big HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    parser.feed(S, 500, 2, head);
    parser.feed(S, 500 + head.len() as u32, 3, &[b'x'; 100]);
    // The segment's last 900 bytes were not copied: the response is over now, not when
    // the next message arrives.
    parser.gap(S, 900);
    let got: Vec<_> = parser
        .drain_exchanges()
        .map(|e| (e.path, e.status, e.response_bytes, e.latency_ns))
        .collect();
    assert_eq!(
        got,
        vec![(
            "/big".to_owned(),
            Some(200),
            head.len() as u64 + 1000,
            Some(2)
        )]
    );
    assert_eq!(parser.counters().total_errors(), 0);
}

#[test]
fn hole_past_a_body_resynchronises_on_the_next_message() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(C, 0, 1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    let r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123";
    parser.feed(S, 0, 2, r1);
    // The hole covers the rest of body 1 (6 bytes) and the head of response 2:
    // sequence jumps past it, into the middle of body 2 ("xxxx"), then response 3
    // would start on a new line. Here the next bytes start the next message.
    let r2 = b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nxxxx";
    let after = r1.len() as u32 + 6 + r2.len() as u32;
    parser.feed(C, 38, 3, b"GET /3 HTTP/1.1\r\n\r\n");
    parser.feed(
        S,
        after,
        4,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    let got: Vec<_> = parser
        .drain_exchanges()
        .map(|e| (e.path, e.status, e.incomplete))
        .collect();
    assert_eq!(
        got,
        vec![
            // Body 1 ended inside the hole: complete, with its status.
            ("/1".to_owned(), Some(200), false),
            // Its response head fell into the hole.
            ("/2".to_owned(), None, true),
            ("/3".to_owned(), Some(201), false),
        ]
    );
    assert_eq!(parser.counters().error(ParseErrorKind::LostSync), 1);
}

#[test]
fn hole_in_a_request_head_drops_that_request_and_its_response() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(C, 0, 1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HT");
    parser.gap(C, 10);
    // Resynchronise: garbage until a line that starts a request.
    parser.feed(C, 38, 2, b"ost: x\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    parser.feed(S, 0, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    parser.feed(S, 38, 4, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
    parser.feed(S, 76, 5, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = parser
        .drain_exchanges()
        .map(|e| (e.path, e.status))
        .collect();
    assert_eq!(
        got,
        vec![("/1".to_owned(), Some(200)), ("/3".to_owned(), Some(203))]
    );
    // The partial head (9 bytes) and the rest of it after the hole (10).
    assert_eq!(parser.counters().bytes_skipped, 19);
}

#[test]
fn caps_degrade_instead_of_growing() {
    let limits = ParserLimits {
        max_head_bytes: 128,
        max_pending_requests: 4,
        ..ParserLimits::default()
    };
    let mut parser = ConnectionParser::new(limits);
    let mut requests = Vec::new();
    for i in 0..10 {
        requests.extend(format!("GET /{i} HTTP/1.1\r\n\r\n").bytes());
    }
    parser.feed(C, 0, 1, &requests);
    assert_eq!(parser.counters().error(ParseErrorKind::PendingOverflow), 6);
    // A head over the cap: counted, skipped, and the next message still parses.
    let mut big = b"GET /big HTTP/1.1\r\nX: ".to_vec();
    big.extend([b'a'; 300]);
    big.extend(b"\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    parser.feed(C, requests.len() as u32, 2, &big);
    assert_eq!(parser.counters().error(ParseErrorKind::HeadTooLarge), 1);
    assert!(
        parser.memory_bytes() < 8 * 1024,
        "{}",
        parser.memory_bytes()
    );
    let exchanges = parser.close();
    let paths: Vec<_> = exchanges.iter().map(|e| e.path.as_str()).collect();
    // The oldest were dropped: six by the requests, one by the placeholder of
    // /big (lost to the cap, it keeps response order) and one by /after.
    assert_eq!(paths, ["/8", "/9", "/after"]);
    assert_eq!(parser.counters().error(ParseErrorKind::PendingOverflow), 8);
    assert!(
        exchanges
            .iter()
            .all(|e| e.incomplete && e.status.is_none() && e.error)
    );
    assert_eq!(parser.memory_bytes(), 0);
}

#[test]
fn upgrade_emits_then_stops() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(
        C,
        0,
        1,
        b"GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    parser.feed(
        S,
        0,
        2,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
    );
    assert_eq!(parser.protocol(), ConnectionProtocol::Opaque);
    let e: Vec<_> = parser
        .drain_exchanges()
        .map(|e| (e.path, e.status))
        .collect();
    assert_eq!(e, vec![("/chat".to_owned(), Some(101))]);
    parser.feed(C, 77, 3, b"\x81\x82garbage");
    assert_eq!(parser.queued_exchanges(), 0);
    assert!(parser.close().is_empty());
    assert_eq!(parser.memory_bytes(), 0);
}

#[test]
fn not_http_stays_l4() {
    // TLS ClientHello, a server-first protocol, lowercase "method", bad version.
    let cases: [&[(Direction, u64, &[u8])]; 4] = [
        &[(C, 1, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")],
        &[(S, 1, b"220 mail.example ESMTP\r\n"), (C, 2, b"EHLO x\r\n")],
        &[(C, 1, b"get / HTTP/1.1\r\n\r\n")],
        &[(C, 1, b"GET / HTTP/3.0\r\n\r\n")],
    ];
    for parts in cases {
        let mut parser = ConnectionParser::new(ParserLimits::default());
        for s in segments(parts) {
            parser.feed(s.direction, s.seq, s.timestamp_ns, &s.bytes);
        }
        assert_eq!(parser.protocol(), ConnectionProtocol::Opaque, "{parts:?}");
        parser.feed(C, 5000, 3, &[0u8; 4096]);
        assert_eq!(parser.memory_bytes(), 0);
        assert!(parser.close().is_empty());
    }
}

#[test]
fn request_without_response_is_reported_incomplete() {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    parser.feed(
        C,
        0,
        7,
        b"GET http://proxy.example:3128/x?y=1 HTTP/1.1\r\ntraceparent: 00-zz\r\n\r\n",
    );
    parser.feed(S, 0, 9, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    let e = parser.close();
    assert_eq!(e.len(), 1);
    // Absolute-form target (RFC 9112 §3.2.2): authority and path split out.
    assert_eq!(e[0].authority.as_deref(), Some("proxy.example:3128"));
    assert_eq!(
        (e[0].path.as_str(), e[0].path_template.as_str()),
        ("/x?y=1", "/x")
    );
    // Invalid traceparent ignored; mid-body close: incomplete with what was seen.
    assert_eq!(e[0].trace, None);
    assert_eq!(
        (e[0].status, e[0].incomplete, e[0].error, e[0].latency_ns),
        (Some(200), true, true, None)
    );
}
