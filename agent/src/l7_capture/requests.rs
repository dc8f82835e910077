//! Captured segments in, `request` records out: one `nephilia_l7::ConnectionParser` per
//! TCP connection (per capture point), closed when a socket of the connection closes or
//! after an idle timeout.
//!
//! Memory is bounded twice: in number of connections and in bytes. Each parser caps its
//! own state (`ParserLimits`: one HPACK table per direction, 128 streams, …), but 4096
//! connections at their caps would hold gigabytes; so the tracker accounts each
//! connection's bytes (its parser's `memory_bytes`, the HPACK tables and buffered streams
//! included, plus the tracker's own entry) after every segment and, over
//! `memory_budget_bytes`, evicts the least recently seen connections. An evicted
//! connection is closed as if its socket had closed: what it parsed still becomes
//! records (unanswered requests as incomplete), and the eviction is counted by cause.
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
use nephilia_l7::{
    ConnectionParser, Direction, L7Exchange, ParserCounters, ParserLimits, PathTemplater, Protocol,
};
use serde::{Deserialize, Serialize};

use super::segment::{Segment, Sender};
use crate::{
    clock::BootClock,
    mesh_flow::{MeshPorts, Peer},
    metadata::{MeshMetadata, MetadataStore},
    recency::Recency,
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
    /// Bytes all parsers may hold together (`--l7-memory-budget-mib`); the least recently
    /// seen connections are evicted to stay under it.
    pub memory_budget_bytes: usize,
    /// Per-connection parser caps.
    pub parser: ParserLimits,
}

/// Default of `--l7-memory-budget-mib`: a quarter of the agent's 512 MiB memory limit
/// (deploy/), while 4096 connections at their parser caps could hold several GiB.
pub const DEFAULT_MEMORY_BUDGET_MIB: u16 = 128;

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            memory_budget_bytes: usize::from(DEFAULT_MEMORY_BUDGET_MIB) << 20,
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
    /// Its place in the least-recently-seen order.
    recency_stamp: u64,
    /// Bytes accounted for it at its last segment or drain.
    accounted_bytes: usize,
    /// Set when a socket of the connection closed: the parser is closed after the next
    /// drain of the segment ring buffer, which holds the connection's last segments.
    closing_after_drain: Option<u64>,
}

/// Bytes of one tracked connection outside its parser's heap: the map entry, its place in
/// the recency order, and the two socket-cookie entries that point at it.
const CONNECTION_ENTRY_BYTES: usize = size_of::<(ConnectionKey, Connection)>()
    + size_of::<(u64, ConnectionKey)>()
    + 2 * size_of::<(u64, ConnectionKey)>();

/// Why a connection was dropped before it closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eviction {
    /// `max_connections` were tracked and another one appeared.
    ConnectionLimit,
    /// The parsers together held more than `memory_budget_bytes`.
    MemoryBudget,
}

/// What the tracker did, for logs, heartbeats and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    pub segments: u64,
    pub exchanges: u64,
    pub closed: u64,
    /// Connections evicted because `max_connections` were tracked.
    pub evicted_connection_limit: u64,
    /// Connections evicted to bring the accounted bytes back under the memory budget.
    pub evicted_memory_budget: u64,
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
    recency: Recency<ConnectionKey>,
    /// Sum of the connections' `accounted_bytes`.
    accounted_bytes: usize,
    /// Records of evicted connections, handed out by the next `finish_drain`.
    evicted_records: Vec<RequestRecord>,
    /// Counters of the parsers already closed or evicted.
    retired_parsers: ParserCounters,
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
            recency: Recency::new(),
            accounted_bytes: 0,
            evicted_records: Vec::new(),
            retired_parsers: ParserCounters::default(),
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

    /// What every parser did with its input, closed and evicted ones included: their
    /// errors count what the parsers dropped (streams and requests beyond their caps,
    /// heads that do not decode).
    pub fn parser_counters(&self) -> ParserCounters {
        let mut counters = self.retired_parsers.clone();
        for connection in self.connections.values() {
            counters.merge(connection.parser.counters());
        }
        counters
    }

    /// Bytes accounted to the tracked connections: what the memory budget bounds.
    pub fn memory_bytes(&self) -> usize {
        self.accounted_bytes
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
                self.evict_oldest(Eviction::ConnectionLimit);
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
                    recency_stamp: self.recency.touch(key, None),
                    accounted_bytes: 0,
                    closing_after_drain: None,
                },
            );
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        connection.last_seen = Instant::now();
        connection.recency_stamp = self.recency.touch(key, Some(connection.recency_stamp));
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
        self.account(key);
        self.keep_within_budget();
    }

    /// Brings the accounted bytes of `key` up to date with its parser.
    fn account(&mut self, key: ConnectionKey) {
        if let Some(connection) = self.connections.get_mut(&key) {
            let bytes = CONNECTION_ENTRY_BYTES + connection.parser.memory_bytes();
            self.accounted_bytes = self.accounted_bytes - connection.accounted_bytes + bytes;
            connection.accounted_bytes = bytes;
        }
    }

    /// Evicts the least recently seen connections while over the budget (the one just fed
    /// last: it goes too if it alone holds more than the budget).
    fn keep_within_budget(&mut self) {
        while self.accounted_bytes > self.limits.memory_budget_bytes && !self.is_empty() {
            self.evict_oldest(Eviction::MemoryBudget);
        }
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
                // Drained exchanges no longer count against the budget.
                self.account(key);
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
        let mut records: Vec<RequestRecord> = std::mem::take(&mut self.evicted_records);
        records.extend(exchanges.into_iter().filter_map(|(key, exchange)| {
            let connection = self.connections.get(&key)?;
            Some(self.record(connection, exchange, &metadata))
        }));
        for key in finished {
            let Some(connection) = self.connections.get(&key) else {
                continue;
            };
            if connection.closing_after_drain.is_some() {
                self.counters.closed += 1;
            } else {
                self.counters.idle_closed += 1;
            }
            let last = self.close(key, &metadata);
            records.extend(last);
        }
        self.counters.exchanges += records.len() as u64;
        records.sort_by_key(|record| record.start_ns);
        records
    }

    /// Removes a connection: closes its parser (its last exchanges become records) and
    /// releases everything accounted to it.
    fn close(&mut self, key: ConnectionKey, metadata: &MeshMetadata) -> Vec<RequestRecord> {
        let Some(mut connection) = self.connections.remove(&key) else {
            return Vec::new();
        };
        self.touched.remove(&key);
        self.recency.remove(connection.recency_stamp);
        self.accounted_bytes -= connection.accounted_bytes;
        for sender in connection.senders.iter().flatten() {
            self.by_cookie.remove(&sender.cookie);
        }
        let last = connection.parser.close();
        self.retired_parsers.merge(connection.parser.counters());
        last.into_iter()
            .map(|exchange| self.record(&connection, exchange, metadata))
            .collect()
    }

    /// Closes the least recently seen connection to make room; what it parsed goes out
    /// with the next drain.
    fn evict_oldest(&mut self, cause: Eviction) {
        let Some(oldest) = self.recency.oldest() else {
            return;
        };
        match cause {
            Eviction::ConnectionLimit => self.counters.evicted_connection_limit += 1,
            Eviction::MemoryBudget => self.counters.evicted_memory_budget += 1,
        }
        let metadata = self.metadata.snapshot();
        let last = self.close(oldest, &metadata);
        self.evicted_records.extend(last);
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
mod tests;
