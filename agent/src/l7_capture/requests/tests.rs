//! The tracker on hand-made segments: sides, closes, evictions and the memory budget.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::l7_capture::segment::Hook;
use crate::metadata::{Protocol as MeshProtocol, Service, Workload};

fn metadata() -> MetadataStore {
    let workload = |name: &str, ip: &str| Workload {
        pod: format!("{name}-0"),
        workload: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
        trust_domain: "cluster.local".into(),
        ips: vec![ip.parse().unwrap()],
        protocol: MeshProtocol::Hbone,
        node: "node-a".into(),
        services: vec![format!("{name}.shop.svc.cluster.local")],
    };
    let store = MetadataStore::default();
    store.replace(MeshMetadata::new(
        vec![
            workload("client", "10.244.1.10"),
            workload("web", "10.244.2.10"),
        ],
        vec![Service {
            name: "web".into(),
            namespace: "shop".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            vips: vec!["10.96.0.30".parse().unwrap()],
            ports: BTreeMap::from([(80, 8080)]),
        }],
    ));
    store
}

fn tracker() -> RequestTracker {
    RequestTracker::new(
        MeshPorts::default(),
        "node-a".into(),
        metadata(),
        BootClock::identity(),
        TrackerLimits::default(),
    )
}

fn sender(cookie: u64, role: Role, remote: &str, mark: u32) -> Option<Sender> {
    Some(Sender {
        cookie,
        role: Some(role),
        netns: 1,
        pid: cookie as u32 * 10,
        mark,
        remote: Some(remote.parse().unwrap()),
    })
}

fn segment(src: &str, dst: &str, seq: u32, ts: u64, data: &[u8], from: Option<Sender>) -> Segment {
    Segment {
        timestamp_ns: ts,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sender: from,
        seq,
        segment_len: data.len() as u32,
        offset: 0,
        ifindex: 1,
        hook: Hook::Egress,
        missing_after: 0,
        data: data.to_vec(),
    }
}

const REQUEST: &[u8] = b"GET /items/42 HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[test]
fn outbound_capture_on_lo_is_the_client_side_with_the_original_destination() {
    let mut tracker = tracker();
    let app = "10.244.1.10:40000";
    let capture = "127.0.0.1:15001";
    // nat POSTROUTING gave the proxy's replies the original destination as source.
    let original = "10.96.0.30:80";
    tracker.begin_drain();
    tracker.segment(&segment(
        app,
        capture,
        1,
        1_000_000,
        REQUEST,
        sender(1, Role::Client, "10.96.0.30:80", 0),
    ));
    tracker.segment(&segment(
        original,
        app,
        9,
        5_000_000,
        RESPONSE,
        sender(2, Role::Server, app, 0x539),
    ));
    let records = tracker.finish_drain();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r.side, ConnectionRole::Client);
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.status),
        ("GET", "/items/{id}", Some(200))
    );
    assert_eq!(r.authority, "web.shop.svc.cluster.local");
    assert_eq!(r.latency_us, 4_000);
    assert_eq!((r.start_ns, r.end_ns), (1_000_000, 5_000_000));
    assert_eq!(r.source.workload, "client");
    assert_eq!(r.destination.service, "web.shop.svc.cluster.local");
    assert_eq!(
        (r.destination.workload.as_str(), r.destination.port),
        ("web", 8080)
    );
    assert_eq!(
        (r.local.as_str(), r.remote.as_str()),
        (app, "10.96.0.30:80")
    );
    assert_eq!(r.pid, 10);
    assert_eq!(
        r.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(r.request_bytes, REQUEST.len() as u64);
    assert_eq!(r.response_bytes, RESPONSE.len() as u64);
}

#[test]
fn delivery_on_lo_is_the_server_side_and_closes_with_the_socket() {
    let mut tracker = tracker();
    let proxy = "10.244.1.10:41000";
    let app = "10.244.2.10:8080";
    tracker.begin_drain();
    // The first segment has no known sender: roles come from the ports.
    // The proxy's socket carries no mark here: the addresses tell a delivery.
    tracker.segment(&segment(
        proxy,
        app,
        1,
        1_000,
        REQUEST,
        sender(4, Role::Client, app, 0),
    ));
    // The response's body is cut short: the rest comes as a gap.
    let mut response = segment(
        app,
        proxy,
        9,
        3_000,
        &RESPONSE[..RESPONSE.len() - 1],
        sender(3, Role::Server, proxy, 0),
    );
    response.segment_len = RESPONSE.len() as u32;
    response.missing_after = 1;
    tracker.segment(&response);
    let records = tracker.finish_drain();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r.side, ConnectionRole::Server);
    assert_eq!(r.source.workload, "client");
    assert_eq!(
        (r.destination.workload.as_str(), r.destination.port),
        ("web", 8080)
    );
    assert_eq!((r.local.as_str(), r.remote.as_str()), (app, proxy));
    assert_eq!(r.pid, 30);
    assert_eq!(r.latency_us, 2);
    assert_eq!(tracker.len(), 1);

    // A request without an answer, then the app's socket closes.
    tracker.begin_drain();
    tracker.segment(&segment(
        proxy,
        app,
        1 + REQUEST.len() as u32,
        10_000,
        REQUEST,
        sender(4, Role::Client, app, 0),
    ));
    assert!(tracker.finish_drain().is_empty());
    let closed = ConnectionRecord {
        cookie: 3,
        ..closed_record(app, proxy)
    };
    tracker.connection_closed(&closed);
    // Closed only after one more drain of the segments.
    assert!(tracker.finish_drain().is_empty());
    assert_eq!(tracker.len(), 1);
    tracker.begin_drain();
    let last = tracker.finish_drain();
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].status, last[0].latency_us), (None, 0));
    assert!(tracker.is_empty());
    assert_eq!(tracker.memory_bytes(), 0);
}

fn closed_record(local: &str, remote: &str) -> ConnectionRecord {
    ConnectionRecord {
        start_ns: 0,
        end_ns: Some(1),
        netns: 1,
        pid: 0,
        comm: String::new(),
        role: ConnectionRole::Server,
        first_data_ns: None,
        local: local.into(),
        remote: remote.into(),
        bytes_sent: 0,
        bytes_received: 0,
        bytes_sent_delta: 0,
        bytes_received_delta: 0,
        outcome: crate::record::Outcome::Closed,
        connect_latency_us: None,
        rtt_us: 0,
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        mark: 0,
        error: None,
        cookie: 0,
    }
}

#[test]
fn pod_interface_sides_and_eviction() {
    let mut tracker = RequestTracker::new(
        MeshPorts::default(),
        String::new(),
        metadata(),
        BootClock::identity(),
        TrackerLimits {
            max_connections: 2,
            ..TrackerLimits::default()
        },
    );
    let client = "10.244.1.10:40001";
    let server = "10.244.2.10:8080";
    tracker.begin_drain();
    // Seen in the client's namespace: egress request, ingress response.
    let mut request = segment(
        client,
        server,
        1,
        100,
        REQUEST,
        sender(5, Role::Client, server, 0),
    );
    request.ifindex = 2;
    let mut response = segment(server, client, 7, 300, RESPONSE, None);
    response.ifindex = 2;
    response.hook = Hook::Ingress;
    tracker.segment(&request);
    tracker.segment(&response);
    // Seen in the server's namespace: ingress request, egress response.
    let mut request_in = request.clone();
    request_in.hook = Hook::Ingress;
    request_in.sender = None;
    let mut response_out = response.clone();
    response_out.hook = Hook::Egress;
    response_out.sender = sender(6, Role::Server, client, 0);
    tracker.segment(&request_in);
    tracker.segment(&response_out);
    let mut records = tracker.finish_drain();
    records.sort_by_key(|r| r.side == ConnectionRole::Server);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0].side, ConnectionRole::Client);
    assert_eq!(records[0].pid, 50);
    assert_eq!(records[1].side, ConnectionRole::Server);
    assert_eq!(records[1].pid, 60);
    assert_eq!(tracker.len(), 2);
    // A third connection evicts the least recently seen.
    tracker.segment(&segment("10.244.1.10:40002", server, 1, 400, REQUEST, None));
    assert_eq!(
        (tracker.len(), tracker.counters().evicted_connection_limit),
        (2, 1)
    );
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix bits in `first`.
fn hpack_integer(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push(0x80 | (value % 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream_id.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Streams each connection opens: two more than the parser's 128.
const H2_STREAMS: u32 = 130;

/// One h2c connection from `client_port` at its parser's caps: the server allows a 64 KiB
/// HPACK table, the client fills it with a 500-byte header per request and opens
/// `H2_STREAMS` streams nobody answers. `after_each` runs after every segment.
fn h2_connection_at_caps(
    tracker: &mut RequestTracker,
    client_port: u16,
    mut after_each: impl FnMut(&RequestTracker),
) {
    let client = format!("10.244.1.10:{client_port}");
    let server = "10.244.2.10:8080";
    let mut client_seq = 1u32;
    let mut send = |tracker: &mut RequestTracker, from_client: bool, bytes: Vec<u8>| {
        if from_client {
            tracker.segment(&segment(&client, server, client_seq, 1_000, &bytes, None));
            client_seq += bytes.len() as u32;
        } else {
            tracker.segment(&segment(server, &client, 1, 1_000, &bytes, None));
        }
        after_each(tracker);
    };
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(h2_frame(0x4, 0, 0, &[]));
    send(tracker, true, opening);
    // SETTINGS_HEADER_TABLE_SIZE = 65536 from the server.
    send(tracker, false, h2_frame(0x4, 0, 0, &[0, 1, 0, 1, 0, 0]));
    for i in 0..H2_STREAMS {
        let mut block = Vec::new();
        if i == 0 {
            // Dynamic table size update to the allowed 64 KiB (RFC 7541 §6.3).
            hpack_integer(0x20, 5, 65_536, &mut block);
        }
        block.extend([0x82, 0x86]); // :method GET, :scheme http
        let path = format!("/items/{i}");
        block.push(0x44); // :path, literal with incremental indexing
        hpack_integer(0, 7, path.len(), &mut block);
        block.extend(path.as_bytes());
        block.push(0x40); // new name, literal with incremental indexing
        hpack_integer(0, 7, 5, &mut block);
        block.extend(b"x-pad");
        let pad = format!("{i:0>500}");
        hpack_integer(0, 7, pad.len(), &mut block);
        block.extend(pad.as_bytes());
        // HEADERS, END_STREAM | END_HEADERS: a request waiting for its response.
        send(tracker, true, h2_frame(0x1, 0x5, 2 * i + 1, &block));
    }
}

#[test]
fn memory_budget_evicts_the_least_recently_seen_connections_and_counts_them() {
    // What one connection at its caps is accounted.
    let mut one = tracker();
    h2_connection_at_caps(&mut one, 40_000, |_| {});
    let per_connection = one.memory_bytes();
    assert_eq!(one.len(), 1);
    assert_eq!(
        one.parser_counters()
            .error(nephilia_l7::ParseErrorKind::StreamOverflow),
        2
    );
    // The HPACK table alone is 64 KiB, the 128 streams more.
    assert!(per_connection > 64 * 1024, "{per_connection} bytes");
    eprintln!("one h2 connection at the parser caps: {per_connection} accounted bytes");

    // Room for four and a half such connections; ten come, one after the other.
    let budget = 4 * per_connection + per_connection / 2;
    let mut tracker = RequestTracker::new(
        MeshPorts::default(),
        "node-a".into(),
        metadata(),
        BootClock::identity(),
        TrackerLimits {
            memory_budget_bytes: budget,
            ..TrackerLimits::default()
        },
    );
    let mut highest = 0;
    tracker.begin_drain();
    for port in 40_000..40_010 {
        h2_connection_at_caps(&mut tracker, port, |tracker| {
            highest = highest.max(tracker.memory_bytes());
        });
    }
    assert!(highest <= budget, "{highest} accounted > budget {budget}");
    let counters = tracker.counters().clone();
    assert_eq!(
        (
            counters.evicted_memory_budget,
            counters.evicted_connection_limit
        ),
        (6, 0)
    );
    assert_eq!(tracker.len(), 4);
    assert_eq!(tracker.memory_bytes(), 4 * per_connection);
    // The streams beyond 128 were dropped by every parser, the evicted ones included.
    assert_eq!(
        tracker
            .parser_counters()
            .error(nephilia_l7::ParseErrorKind::StreamOverflow),
        10 * 2
    );
    // The evicted connections' unanswered requests still go out, incomplete.
    let records = tracker.finish_drain();
    assert_eq!(records.len(), 6 * 128);
    assert!(records.iter().all(|r| r.status.is_none()));
    let evicted_ports: BTreeSet<u16> = records
        .iter()
        .map(|r| r.remote.parse::<SocketAddr>().unwrap().port())
        .collect();
    assert_eq!(evicted_ports, (40_000..40_006).collect());
}
