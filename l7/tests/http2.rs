//! HTTP/2 and gRPC edge cases on hand-built frames (RFC 9113 §6): padding,
//! priority, CONTINUATION, interleaving, resets, push, table size, holes, caps.

use loona_hpack::Encoder;
use nephilia_l7::{
    ConnectionParser, ConnectionProtocol, Direction, L7Exchange, ParseErrorKind, ParserLimits,
    Protocol,
};

const C: Direction = Direction::ClientToServer;
const S: Direction = Direction::ServerToClient;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// One side of a connection: its encoder and the sequence number of its next byte.
struct Peer {
    direction: Direction,
    encoder: Encoder<'static>,
    seq: u32,
}

impl Peer {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            encoder: Encoder::new(),
            seq: 0,
        }
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        self.encoder
            .encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn send(&mut self, parser: &mut ConnectionParser, ts: u64, bytes: &[u8]) {
        parser.feed(self.direction, self.seq, ts, bytes);
        self.seq = self.seq.wrapping_add(bytes.len() as u32);
    }

    fn lose(&mut self, parser: &mut ConnectionParser, n: u32) {
        parser.gap(self.direction, n);
        self.seq = self.seq.wrapping_add(n);
    }
}

fn start() -> (ConnectionParser, Peer, Peer) {
    start_with(ParserLimits::default())
}

fn start_with(limits: ParserLimits) -> (ConnectionParser, Peer, Peer) {
    let mut parser = ConnectionParser::new(limits);
    let mut client = Peer::new(C);
    let mut server = Peer::new(S);
    // The server's SETTINGS may be captured before the client preface.
    server.send(&mut parser, 1, &frame(4, 0, 0, &[]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    client.send(&mut parser, 2, &hello);
    (parser, client, server)
}

fn request(client: &mut Peer, path: &str, grpc: bool) -> Vec<u8> {
    let mut headers = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "svc:50051"),
    ];
    if grpc {
        headers.push(("content-type", "application/grpc+proto"));
    }
    headers.push((
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    ));
    client.block(&headers)
}

fn drain(parser: &mut ConnectionParser) -> Vec<L7Exchange> {
    parser.drain_exchanges().collect()
}

#[test]
fn interleaved_streams_padding_priority_continuation_trailers() {
    let (mut parser, mut client, mut server) = start();
    // Stream 1: HEADERS padded + priority; stream 3: HEADERS + CONTINUATION.
    let b1 = request(&mut client, "/pkg.Svc/One", true);
    let mut p1 = vec![4u8];
    p1.extend([0x80, 0, 0, 0, 16]);
    p1.extend(&b1);
    p1.extend([0; 4]);
    let h1 = frame(1, 0x4 | 0x8 | 0x20, 1, &p1);
    let b3 = request(&mut client, "/pkg.Svc/Two", true);
    let (first, rest) = b3.split_at(b3.len() / 2);
    let h3 = [frame(1, 0, 3, first), frame(9, 0x4, 3, rest)].concat();
    let msg = [&[0u8, 0, 0, 0, 2][..], b"hi"].concat();
    // Padded DATA with END_STREAM for both.
    let d1 = frame(0, 0x1 | 0x8, 1, &[[2u8].as_slice(), &msg, &[0, 0]].concat());
    let d3 = frame(0, 0x1, 3, &msg);
    client.send(
        &mut parser,
        10,
        &[h1.clone(), h3.clone(), d3.clone(), d1.clone()].concat(),
    );
    // Responses interleaved; stream 3 ends first with trailers, stream 1 is reset.
    let r3 = server.block(&[(":status", "200"), ("content-type", "application/grpc")]);
    let t3 = server.block(&[("grpc-status", "7"), ("grpc-message", "denied%21")]);
    let r1 = server.block(&[(":status", "200"), ("content-type", "application/grpc")]);
    let wire = [
        frame(1, 0x4, 3, &r3),
        frame(1, 0x4, 1, &r1),
        frame(0, 0, 3, &msg),
        frame(0, 0, 3, &msg),
        frame(1, 0x4 | 0x1, 3, &t3),
        frame(3, 0, 1, &8u32.to_be_bytes()),
    ]
    .concat();
    server.send(&mut parser, 50, &wire);
    let got: Vec<_> = drain(&mut parser)
        .into_iter()
        .map(|e| {
            (
                e.stream_id,
                e.grpc_method,
                e.grpc_status,
                e.grpc_message,
                e.request_messages,
                e.response_messages,
                e.request_bytes,
                e.error,
                e.incomplete,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Some(3),
                Some("Two".into()),
                Some(7),
                Some("denied!".into()),
                1,
                2,
                (h3.len() + d3.len()) as u64,
                true,
                false
            ),
            (
                Some(1),
                Some("One".into()),
                None,
                None,
                1,
                0,
                (h1.len() + d1.len()) as u64,
                true,
                true
            ),
        ]
    );
    assert_eq!(parser.counters().total_errors(), 0);
}

#[test]
fn b3_authority_status_and_informational_headers() {
    let (mut parser, mut client, mut server) = start();
    let b = client.block(&[
        (":method", "GET"),
        (":path", "/items/1234"),
        ("host", "fallback:80"),
    ]);
    client.send(&mut parser, 10, &frame(1, 0x5, 1, &b));
    let interim = server.block(&[(":status", "103")]);
    let fin = server.block(&[(":status", "503")]);
    server.send(&mut parser, 20, &frame(1, 0x4, 1, &interim));
    server.send(&mut parser, 30, &frame(1, 0x5, 1, &fin));
    let e = drain(&mut parser).pop().expect("exchange");
    assert_eq!(e.protocol, Protocol::Http2);
    assert_eq!(
        (e.path_template.as_str(), e.authority.as_deref()),
        ("/items/{id}", Some("fallback:80"))
    );
    assert_eq!(
        (e.status, e.error, e.response_start_ns, e.latency_ns),
        (Some(503), true, Some(20), Some(20))
    );
}

#[test]
fn push_promise_keeps_the_table_in_step() {
    let (mut parser, mut client, mut server) = start();
    let b = request(&mut client, "/a", false);
    client.send(&mut parser, 10, &frame(1, 0x5, 1, &b));
    // The promised request's fields enter the server encoder's table; the
    // response then refers to them by index.
    let promise = server.block(&[
        (":method", "GET"),
        (":path", "/pushed.css"),
        ("x-custom", "reused"),
    ]);
    let mut pp = 2u32.to_be_bytes().to_vec();
    pp.extend(&promise);
    server.send(&mut parser, 20, &frame(5, 0x4, 1, &pp));
    let r = server.block(&[(":status", "200"), ("x-custom", "reused")]);
    server.send(&mut parser, 30, &frame(1, 0x5, 1, &r));
    let got: Vec<_> = drain(&mut parser)
        .into_iter()
        .map(|e| (e.path, e.status))
        .collect();
    assert_eq!(got, vec![("/a".to_owned(), Some(200))]);
    assert_eq!(parser.counters().total_errors(), 0);
}

#[test]
fn table_size_update_over_settings_limit_is_an_hpack_error() {
    let (mut parser, mut client, mut server) = start();
    // The server allows a 256-byte table for what the client sends.
    server.send(&mut parser, 3, &frame(4, 0, 0, &[0, 1, 0, 0, 1, 0]));
    let b = request(&mut client, "/ok", false);
    // Size update to 256 (allowed) at the start of a block (RFC 7541 §4.2).
    let mut ok = vec![0x3f, 0xe1, 0x01];
    ok.extend(&b);
    client.send(&mut parser, 10, &frame(1, 0x5, 1, &ok));
    // Size update to 4096: over the SETTINGS value.
    let mut bad = vec![0x3f, 0xe1, 0x1f];
    bad.extend(request(&mut client, "/bad", false));
    client.send(&mut parser, 11, &frame(1, 0x5, 3, &bad));
    assert_eq!(parser.counters().error(ParseErrorKind::HpackError), 1);
    assert_eq!(parser.protocol(), ConnectionProtocol::Opaque);
    // Stream 1 was open: reported incomplete when the connection was given up.
    let got: Vec<_> = drain(&mut parser)
        .into_iter()
        .map(|e| (e.path, e.incomplete))
        .collect();
    assert_eq!(got, vec![("/ok".to_owned(), true)]);
    assert!(parser.close().is_empty());
    assert_eq!(parser.memory_bytes(), 0);
}

#[test]
fn hole_in_data_is_stepped_over_hole_in_headers_gives_up() {
    let (mut parser, mut client, mut server) = start();
    let b = request(&mut client, "/pkg.Svc/Up", true);
    client.send(&mut parser, 10, &frame(1, 0x4, 1, &b));
    let mut body = vec![0u8, 0, 0, 3, 0xe8];
    body.extend(vec![7u8; 1000]);
    let data = frame(0, 0x1, 1, &body);
    client.send(&mut parser, 11, &data[..100]);
    client.lose(&mut parser, 900);
    client.send(&mut parser, 12, &data[1000..]);
    let r = server.block(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "0"),
    ]);
    server.send(&mut parser, 20, &frame(1, 0x5, 1, &r));
    let e = drain(&mut parser).pop().expect("exchange");
    assert_eq!(
        (e.grpc_status, e.request_bytes, e.request_end_ns),
        (Some(0), (9 + b.len() + data.len()) as u64, 12)
    );
    assert_eq!(e.request_messages, 1);
    assert_eq!(parser.counters().total_errors(), 0);
    // A hole in a HEADERS frame: the HPACK table can't be trusted any more.
    let b = request(&mut client, "/pkg.Svc/Down", true);
    let h = frame(1, 0x4, 3, &b);
    client.send(&mut parser, 30, &h[..5]);
    client.lose(&mut parser, 3);
    assert_eq!(parser.counters().error(ParseErrorKind::Unrecoverable), 1);
    assert_eq!(parser.protocol(), ConnectionProtocol::Opaque);
    assert!(parser.close().is_empty());
    assert_eq!(parser.memory_bytes(), 0);
}

#[test]
fn stream_cap_drops_the_oldest_and_close_reports_the_rest() {
    let limits = ParserLimits {
        max_streams: 2,
        ..ParserLimits::default()
    };
    let (mut parser, mut client, _server) = start_with(limits);
    for id in [1u32, 3, 5] {
        let b = request(&mut client, &format!("/s/{id}"), false);
        client.send(&mut parser, u64::from(id), &frame(1, 0x5, id, &b));
    }
    assert_eq!(parser.counters().error(ParseErrorKind::StreamOverflow), 1);
    let got: Vec<_> = parser
        .close()
        .into_iter()
        .map(|e| (e.path, e.status, e.incomplete))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/s/3".to_owned(), None, true),
            ("/s/5".to_owned(), None, true)
        ]
    );
    assert_eq!(parser.memory_bytes(), 0);
}

#[test]
fn frame_violations_stop_cleanly() {
    let cases: Vec<Vec<u8>> = vec![
        // DATA between HEADERS and its CONTINUATION (RFC 9113 §6.10).
        [frame(1, 0, 1, &[0x82]), frame(0, 0, 1, b"x")].concat(),
        // Padding longer than the payload (RFC 9113 §6.1).
        frame(0, 0x8, 1, &[9, 1, 2]),
        // A header frame over the head cap.
        frame(1, 0x4, 1, &vec![0x82; 20_000]),
        // Garbage HPACK: index 127 of an empty table.
        frame(1, 0x4, 1, &[0xff, 0x00]),
    ];
    for (i, wire) in cases.into_iter().enumerate() {
        let (mut parser, mut client, _) = start();
        client.send(&mut parser, 10, &wire);
        assert_eq!(parser.protocol(), ConnectionProtocol::Opaque, "case {i}");
        assert_eq!(parser.counters().total_errors(), 1, "case {i}");
        client.send(&mut parser, 11, &[0u8; 100]);
        assert_eq!(parser.memory_bytes(), 0, "case {i}");
    }
}
