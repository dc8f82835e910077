//! Captured segments in, `request` records out: one `nephilia_l7::ConnectionParser` per
//! TCP connection (per capture point), bounded in number (least recently seen evicted),
//! closed when a socket of the connection closes or after an idle timeout.
//!
//! Which side a connection is reported as, from what ambient mode shows on a pod's `lo`
//! (shared/DESIGN.md):
//! - the server end is the mesh's outbound capture port (15001): the app's outbound
//!   connection, captured after istio-cni's redirect → **client** side; the original
//!   destination is the app socket's own peer (the kernel's connection table);
//! - two different non-loopback addresses on `lo`: the proxy's delivery into the app,
//!   from the original client's (spoofed) address → **server** side;
//! - on a pod interface (not enrolled): the side whose endpoint lives in the namespace.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use nephilia_common::Role;
use nephilia_l7::{ConnectionParser, Direction, L7Exchange, ParserLimits, PathTemplater, Protocol};
use serde::{Deserialize, Serialize};

use super::segment::{Segment, Sender};
use crate::{
    clock::BootClock,
    mesh_flow::{MeshPorts, Peer},
    metadata::{MeshMetadata, MetadataStore},
    record::{ConnectionRecord, ConnectionRole},
};

/// Application protocol of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestProtocol {
    Http1,
    Http2,
    Grpc,
}

impl From<Protocol> for RequestProtocol {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http1 => Self::Http1,
            Protocol::Http2 => Self::Http2,
            Protocol::Grpc => Self::Grpc,
        }
    }
}

/// One L7 exchange (`request` record); field names as in proto/nephilia/v1/records.proto.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// `client`: captured on the source app's outbound connection; `server`: on the
    /// connection into the destination app.
    pub side: ConnectionRole,
    pub protocol: RequestProtocol,
    pub method: String,
    /// Templated (`/users/{id}`); gRPC paths as they are.
    pub path: String,
    /// `Host` or `:authority`; empty when absent.
    pub authority: String,
    /// HTTP status; absent when no response was seen.
    pub status: Option<u16>,
    pub grpc_status: Option<i32>,
    pub grpc_message: Option<String>,
    /// Unix time (ns) of the first request byte.
    pub start_ns: u64,
    /// Unix time (ns) of the last response byte (of the last request byte without one).
    pub end_ns: u64,
    /// First request byte → last response byte; 0 without a complete response.
    pub latency_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub trace_id: Option<String>,
    /// The calling span (the `parent-id` of `traceparent`).
    pub span_id: Option<String>,
    /// The calling span's parent (B3 only).
    pub parent_span_id: Option<String>,
    pub source: Peer,
    pub destination: Peer,
    /// `ip:port` of the reporting app's socket, and of its peer as that socket sees it.
    pub local: String,
    pub remote: String,
    /// The reporting app's process; 0 when unknown.
    pub pid: u32,
    pub node: String,
}

/// Bounds and timeouts of the tracker.
#[derive(Clone, Debug)]
pub struct TrackerLimits {
    /// Connections parsed at once; the least recently seen is closed to make room.
    pub max_connections: usize,
    /// A connection without segments this long is closed.
    pub idle_timeout: Duration,
    /// Per-connection parser caps.
    pub parser: ParserLimits,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            parser: ParserLimits::default(),
        }
    }
}

/// Where a connection was seen: on `lo` (both ends local) or a pod interface (one end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Locality {
    Loopback,
    Local(SocketAddr),
}

/// A connection at one capture point, by its client endpoint: on `lo` the two directions
/// of a redirected connection carry different server addresses (`127.0.0.1:15001` one
/// way, the original destination the other: see `L7FlowKey` in common/src/l7.rs), the
/// client's is the same. The same TCP connection seen at both ends (two pods that are
/// not enrolled) is two connections, one per capture point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnectionKey {
    /// Namespace of the sockets on `lo` (0 when unknown, and on pod interfaces).
    netns: u32,
    client: SocketAddr,
    locality: Locality,
}

struct Connection {
    parser: ConnectionParser,
    client: SocketAddr,
    server: SocketAddr,
    locality: Locality,
    /// What the kernel knew of each direction's sending socket (client's, server's).
    senders: [Option<Sender>; 2],
    last_seen: Instant,
    /// Set when a socket of the connection closed: the parser is closed after the next
    /// drain of the segment ring buffer, which holds the connection's last segments.
    closing_after_drain: Option<u64>,
}

/// What the tracker did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    pub segments: u64,
    pub exchanges: u64,
    pub closed: u64,
    pub evicted: u64,
    pub idle_closed: u64,
}

/// Parsers of the captured connections.
pub struct RequestTracker {
    ports: MeshPorts,
    node: String,
    metadata: MetadataStore,
    clock: BootClock,
    limits: TrackerLimits,
    templater: Arc<PathTemplater>,
    connections: HashMap<ConnectionKey, Connection>,
    by_cookie: HashMap<u64, ConnectionKey>,
    touched: HashSet<ConnectionKey>,
    drains: u64,
    counters: TrackerCounters,
}

/// Linux's default ephemeral range (`net.ipv4.ip_local_port_range`).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

impl RequestTracker {
    pub fn new(
        ports: MeshPorts,
        node: String,
        metadata: MetadataStore,
        clock: BootClock,
        limits: TrackerLimits,
    ) -> Self {
        Self {
            ports,
            node,
            metadata,
            clock,
            limits,
            templater: Arc::new(PathTemplater::default()),
            connections: HashMap::new(),
            by_cookie: HashMap::new(),
            touched: HashSet::new(),
            drains: 0,
            counters: TrackerCounters::default(),
        }
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// Connections being parsed.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Heap bytes held by the parsers.
    pub fn memory_bytes(&self) -> usize {
        self.connections
            .values()
            .map(|c| c.parser.memory_bytes())
            .sum()
    }

    /// Starts a drain of the segment ring buffer.
    pub fn begin_drain(&mut self) {
        self.drains += 1;
    }

    /// The connection a segment belongs to and its direction: by the sending socket's
    /// role, else by a connection already known, else by ports.
    fn key(&self, segment: &Segment) -> (ConnectionKey, Direction) {
        let (locality, netns) = if segment.on_loopback() {
            (Locality::Loopback, segment.sender.map_or(0, |s| s.netns))
        } else {
            (Locality::Local(segment.local_endpoint()), 0)
        };
        let key = |client| ConnectionKey {
            netns,
            client,
            locality,
        };
        match segment.sender.and_then(|s| s.role) {
            Some(Role::Client) => return (key(segment.src), Direction::ClientToServer),
            Some(Role::Server) => return (key(segment.dst), Direction::ServerToClient),
            None => {}
        }
        if self.connections.contains_key(&key(segment.src)) {
            return (key(segment.src), Direction::ClientToServer);
        }
        if self.connections.contains_key(&key(segment.dst)) {
            return (key(segment.dst), Direction::ServerToClient);
        }
        if is_client_by_ports(segment.src, segment.dst) {
            (key(segment.src), Direction::ClientToServer)
        } else {
            (key(segment.dst), Direction::ServerToClient)
        }
    }

    /// Feeds one segment.
    pub fn segment(&mut self, segment: &Segment) {
        self.counters.segments += 1;
        let (key, direction) = self.key(segment);
        let (client, server) = match direction {
            Direction::ClientToServer => (segment.src, segment.dst),
            Direction::ServerToClient => (segment.dst, segment.src),
        };
        if !self.connections.contains_key(&key) {
            if self.connections.len() >= self.limits.max_connections {
                self.evict_oldest();
            }
            self.connections.insert(
                key,
                Connection {
                    parser: ConnectionParser::with_templater(
                        self.limits.parser,
                        Arc::clone(&self.templater),
                    ),
                    client,
                    server,
                    locality: key.locality,
                    senders: [None, None],
                    last_seen: Instant::now(),
                    closing_after_drain: None,
                },
            );
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        connection.last_seen = Instant::now();
        if direction == Direction::ClientToServer {
            // The server as the client's segments address it (`127.0.0.1:15001` for an
            // outbound capture); replies may come from the original destination.
            connection.server = server;
        }
        if let Some(sender) = segment.sender {
            let slot = &mut connection.senders[index(direction)];
            if slot.is_none_or(|known| known.cookie != sender.cookie || known.pid == 0) {
                *slot = Some(sender);
                self.by_cookie.insert(sender.cookie, key);
            }
        }
        connection
            .parser
            .feed(direction, segment.seq, segment.timestamp_ns, &segment.data);
        if segment.missing_after > 0 {
            connection.parser.gap(direction, segment.missing_after);
        }
        self.touched.insert(key);
    }

    /// A socket closed: its connection's parser is closed after the next drain.
    pub fn connection_closed(&mut self, record: &ConnectionRecord) {
        let mut keys = Vec::new();
        if let Some(key) = self.by_cookie.remove(&record.cookie) {
            keys.push(key);
        }
        if let (Ok(local), Ok(remote)) = (
            record.local.parse::<SocketAddr>(),
            record.remote.parse::<SocketAddr>(),
        ) {
            for client in [local, remote] {
                keys.push(ConnectionKey {
                    netns: record.netns,
                    client,
                    locality: Locality::Loopback,
                });
                keys.push(ConnectionKey {
                    netns: 0,
                    client,
                    locality: Locality::Local(local),
                });
            }
        }
        let drains = self.drains;
        for key in keys {
            if let Some(connection) = self.connections.get_mut(&key) {
                connection.closing_after_drain.get_or_insert(drains);
            }
        }
    }

    /// Requests completed since the last call, and the last ones of connections that
    /// closed (before this drain) or went idle.
    pub fn finish_drain(&mut self) -> Vec<RequestRecord> {
        let metadata = self.metadata.snapshot();
        let mut exchanges: Vec<(ConnectionKey, L7Exchange)> = Vec::new();
        for key in std::mem::take(&mut self.touched) {
            if let Some(connection) = self.connections.get_mut(&key) {
                exchanges.extend(connection.parser.drain_exchanges().map(|e| (key, e)));
            }
        }
        let drains = self.drains;
        let idle = self.limits.idle_timeout;
        let finished: Vec<ConnectionKey> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.closing_after_drain.is_some_and(|mark| mark < drains)
                    || c.last_seen.elapsed() >= idle
            })
            .map(|(key, _)| *key)
            .collect();
        let mut records: Vec<RequestRecord> = exchanges
            .into_iter()
            .filter_map(|(key, exchange)| {
                let connection = self.connections.get(&key)?;
                Some(self.record(connection, exchange, &metadata))
            })
            .collect();
        for key in finished {
            if let Some(mut connection) = self.connections.remove(&key) {
                if connection.closing_after_drain.is_some() {
                    self.counters.closed += 1;
                } else {
                    self.counters.idle_closed += 1;
                }
                for exchange in connection.parser.close() {
                    records.push(self.record(&connection, exchange, &metadata));
                }
                self.forget_cookies(&connection);
            }
        }
        self.counters.exchanges += records.len() as u64;
        records.sort_by_key(|record| record.start_ns);
        records
    }

    fn forget_cookies(&mut self, connection: &Connection) {
        for sender in connection.senders.iter().flatten() {
            self.by_cookie.remove(&sender.cookie);
        }
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self
            .connections
            .iter()
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(key, _)| *key)
        else {
            return;
        };
        if let Some(connection) = self.connections.remove(&oldest) {
            self.counters.evicted += 1;
            self.touched.remove(&oldest);
            self.forget_cookies(&connection);
        }
    }

    fn record(
        &self,
        connection: &Connection,
        exchange: L7Exchange,
        metadata: &MeshMetadata,
    ) -> RequestRecord {
        let [client_sender, server_sender] = connection.senders;
        let (client, server) = (connection.client, connection.server);
        let delivery = connection.locality == Locality::Loopback
            && client.ip() != server.ip()
            && !client.ip().is_loopback()
            && !server.ip().is_loopback();
        let side = if server.port() == self.ports.outbound {
            ConnectionRole::Client
        } else if delivery || client_sender.is_some_and(|s| self.ports.is_proxy_mark(s.mark)) {
            ConnectionRole::Server
        } else {
            match connection.locality {
                Locality::Local(local) if local == server => ConnectionRole::Server,
                _ => ConnectionRole::Client,
            }
        };
        let (source, destination, local, remote, pid) = match side {
            ConnectionRole::Client => {
                let dialled = client_sender.and_then(|s| s.remote).unwrap_or(server);
                (
                    Peer::named(metadata, client.ip()),
                    destination_peer(metadata, dialled),
                    client,
                    dialled,
                    client_sender.map_or(0, |s| s.pid),
                )
            }
            ConnectionRole::Server => {
                let mut destination = Peer::named(metadata, server.ip());
                destination.port = server.port();
                (
                    Peer::named(metadata, client.ip()),
                    destination,
                    server,
                    client,
                    server_sender.map_or(0, |s| s.pid),
                )
            }
        };
        let end = exchange.response_end_ns.unwrap_or(exchange.request_end_ns);
        let trace = exchange.trace.as_ref();
        RequestRecord {
            side,
            protocol: exchange.protocol.into(),
            method: exchange.method,
            path: exchange.path_template,
            authority: exchange.authority.unwrap_or_default(),
            status: exchange.status,
            grpc_status: exchange
                .grpc_status
                .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
            grpc_message: exchange.grpc_message,
            start_ns: self.clock.unix_ns(exchange.request_start_ns),
            end_ns: self.clock.unix_ns(end),
            latency_us: exchange.latency_ns.map_or(0, |ns| ns / 1_000),
            request_bytes: exchange.request_bytes,
            response_bytes: exchange.response_bytes,
            trace_id: trace.map(|t| t.trace_id.clone()),
            span_id: trace.map(|t| t.span_id.clone()),
            parent_span_id: trace.and_then(|t| t.parent_span_id.clone()),
            source,
            destination,
            local: local.to_string(),
            remote: remote.to_string(),
            pid,
            node: self.node.clone(),
        }
    }
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

/// Whether `src` is the client of a connection nothing else is known of: the end on an
/// ephemeral port, or else the higher port.
fn is_client_by_ports(src: SocketAddr, dst: SocketAddr) -> bool {
    let ephemeral = |a: SocketAddr| EPHEMERAL_PORTS.contains(&a.port());
    match (ephemeral(src), ephemeral(dst)) {
        (true, false) => true,
        (false, true) => false,
        _ => src.port() >= dst.port(),
    }
}

/// The destination an app dialled: a service VIP names the service (and its workload
/// when all its endpoints belong to one), a pod IP names the pod.
fn destination_peer(metadata: &MeshMetadata, dialled: SocketAddr) -> Peer {
    let Some(service) = metadata.service_by_vip(dialled.ip()) else {
        let mut destination = Peer::named(metadata, dialled.ip());
        destination.port = dialled.port();
        return destination;
    };
    let mut destination = Peer {
        ip: dialled.ip().to_string(),
        service: service.hostname.clone(),
        port: service
            .ports
            .get(&dialled.port())
            .copied()
            .unwrap_or(dialled.port()),
        ..Peer::default()
    };
    let endpoints = metadata.endpoints(service);
    if let Some(first) = endpoints.first()
        && endpoints
            .iter()
            .all(|w| w.workload == first.workload && w.namespace == first.namespace)
    {
        destination.workload = first.workload.clone();
        destination.namespace = first.namespace.clone();
        destination.service_account = first.service_account.clone();
        destination.identity = first.identity();
    }
    destination
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    fn segment(
        src: &str,
        dst: &str,
        seq: u32,
        ts: u64,
        data: &[u8],
        from: Option<Sender>,
    ) -> Segment {
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
        assert_eq!((tracker.len(), tracker.counters().evicted), (2, 1));
    }
}
