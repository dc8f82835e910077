//! Joins the sockets of one application connection into a `mesh_flow` record.
//!
//! Every `connection` record (opened, interim, closed) updates the builder's view of the
//! node's sockets. When an application socket reports (interim or final), its flow is
//! assembled from the sockets around it in the same network namespace:
//! - client half: the app socket `A` + the proxy's `:15001` socket `B` whose peer is `A`'s
//!   address + the upstream the proxy opened for it (a new HBONE connection dialled while
//!   `B` waited, or the pooled one it rode, or a plain upstream);
//! - server half: the app's accepted socket `E` + the proxy's delivery `D` (its mirror
//!   image) + the HBONE connection or `:15006` socket that carried it in.
//!
//! Sockets of proxies still open are read again through `lookup` (the kernel's live
//! state) so that a tunnel's handshake and a capture's first relayed byte are current.
//!
//! The socket table is bounded: a closed socket is kept `CLOSED_RETENTION`, an open one
//! as long as records about it keep coming (the connection table sends an interim record
//! every interval while the kernel has the connection). An open socket not heard of for
//! `FlowLimits::idle_timeout` lost its `Closed` event (ring buffer full) and is
//! forgotten; beyond `max_sockets` the least recently seen is. Both are counted.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    FlowOutcome, MeshFlowRecord, MeshPath, MeshPorts, Peer,
    classify::{SocketFacts, SocketKind},
};
use crate::{
    metadata::{MeshMetadata, MetadataStore, Protocol},
    recency::Recency,
    record::{ConnectionRecord, ConnectionRole, Outcome},
};

/// How long a closed socket is kept for joining with sockets that close later.
const CLOSED_RETENTION: Duration = Duration::from_secs(10);

/// How long flows wait for the metadata source's first load (a Kubernetes list, the
/// static file appearing) before they are built without names.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// How long a flow waits for a partner socket whose end the agent has not read yet (its
/// `Closed` event is still in the ring buffer) before it is built with what is known.
const PARTNER_WAIT: Duration = Duration::from_secs(2);

/// How much the builder keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// Sockets held at once (open, or closed within the retention).
    pub max_sockets: usize,
    /// An open socket without a record this long is forgotten: its `Closed` event was lost.
    pub idle_timeout: Duration,
}

impl FlowLimits {
    /// Limits for a connection table that reports open connections every
    /// `interim_interval`: a socket is idle after four intervals without a record.
    pub fn for_interim_interval(interim_interval: Duration) -> Self {
        Self {
            idle_timeout: interim_interval * 4,
            ..Self::default()
        }
    }
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            // The kernel tracks up to 65 536 open connections (`CONNECTIONS` in
            // ebpf/src/connection.rs); as many again may have closed within the retention.
            max_sockets: 2 * 65_536,
            idle_timeout: Duration::from_secs(20),
        }
    }
}

/// Sockets the builder forgot before they closed, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Open sockets without a record for `idle_timeout`: their `Closed` event was lost.
    pub forgotten_idle: u64,
    /// Least recently seen sockets forgotten to stay within `max_sockets`.
    pub forgotten_capacity: u64,
}

struct Socket {
    record: ConnectionRecord,
    local: SocketAddr,
    remote: SocketAddr,
    /// When the last record about it was observed.
    seen_at: Instant,
    /// Its place in the least-recently-seen order.
    recency_stamp: u64,
}

impl Socket {
    fn closed(&self) -> bool {
        self.record.end_ns.is_some()
    }

    /// Whether it is still kept at `now`: a closed socket for the retention, an open one
    /// while records about it keep coming.
    fn kept(&self, now: Instant, idle_timeout: Duration) -> bool {
        let age = now.saturating_duration_since(self.seen_at);
        if self.closed() {
            age < CLOSED_RETENTION
        } else {
            age < idle_timeout
        }
    }

    /// Kernel time the socket stopped being usable, or `u64::MAX` while open.
    fn end_ns(&self) -> u64 {
        self.record.end_ns.unwrap_or(u64::MAX)
    }
}

/// Builds `mesh_flow` records from `connection` records.
pub struct FlowBuilder {
    ports: MeshPorts,
    node: String,
    metadata: MetadataStore,
    sockets: HashMap<u64, Socket>,
    recency: Recency<u64>,
    limits: FlowLimits,
    counters: FlowCounters,
    /// Pod IP of each network namespace, learnt from its sockets' own addresses.
    pod_ips: HashMap<u32, IpAddr>,
    /// App sockets (and failed deliveries) whose report awaits assembly, with when they
    /// reported and whether that report was their last.
    pending: Vec<Pending>,
    last_prune: Instant,
}

struct Pending {
    record: ConnectionRecord,
    since: Instant,
}

/// A partner socket's view could not be read yet.
struct NotYet;

impl FlowBuilder {
    pub fn new(ports: MeshPorts, node: String, metadata: MetadataStore) -> Self {
        Self::with_limits(ports, node, metadata, FlowLimits::default())
    }

    pub fn with_limits(
        ports: MeshPorts,
        node: String,
        metadata: MetadataStore,
        limits: FlowLimits,
    ) -> Self {
        Self {
            ports,
            node,
            metadata,
            sockets: HashMap::new(),
            recency: Recency::new(),
            limits,
            counters: FlowCounters::default(),
            pod_ips: HashMap::new(),
            pending: Vec::new(),
            last_prune: Instant::now(),
        }
    }

    /// Sockets currently held (open, or closed within the retention).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sockets forgotten before they closed.
    pub fn counters(&self) -> &FlowCounters {
        &self.counters
    }

    /// Takes one `connection` record (`opened` is true for a connection's first sight,
    /// which is not itself reported). Flows are built by `flush`, once every event read
    /// so far has been taken in.
    pub fn observe(&mut self, record: &ConnectionRecord, opened: bool) {
        let (Ok(local), Ok(remote)) = (record.local.parse(), record.remote.parse()) else {
            return;
        };
        let previous = self.sockets.get(&record.cookie).map(|s| s.recency_stamp);
        if previous.is_none() && self.sockets.len() >= self.limits.max_sockets {
            self.forget_least_recently_seen();
        }
        let socket = Socket {
            record: record.clone(),
            local,
            remote,
            seen_at: Instant::now(),
            recency_stamp: self.recency.touch(record.cookie, previous),
        };
        self.learn_pod_ip(&socket);
        let reports = !opened
            && match self.kind(&socket) {
                SocketKind::App => true,
                // A delivery that never connected has no app socket to report it.
                SocketKind::InboundDelivery => {
                    socket.closed() && socket.record.connect_latency_us.is_none()
                }
                _ => false,
            };
        self.sockets.insert(record.cookie, socket);
        if reports {
            self.pending.push(Pending {
                record: record.clone(),
                since: Instant::now(),
            });
        }
    }

    /// Builds the flows whose sockets are all known. `lookup` reads an open socket's live
    /// state from the kernel; a partner that is neither closed here nor live there has
    /// an unread `Closed` event, and its flow waits for it (up to `PARTNER_WAIT`).
    pub fn flush(
        &mut self,
        lookup: &mut dyn FnMut(u64) -> Option<ConnectionRecord>,
    ) -> Vec<MeshFlowRecord> {
        self.prune();
        let metadata = self.metadata.snapshot();
        let mut flows = Vec::new();
        let mut waiting = Vec::new();
        let synced = self.metadata.is_synced();
        for pending in std::mem::take(&mut self.pending) {
            if !synced && pending.since.elapsed() < METADATA_WAIT {
                waiting.push(pending);
                continue;
            }
            let patient = pending.since.elapsed() < PARTNER_WAIT;
            match self.assemble(&pending.record, &metadata, lookup, patient) {
                Ok(Some(flow)) => flows.push(flow),
                Ok(None) => {}
                Err(NotYet) => waiting.push(pending),
            }
        }
        self.pending = waiting;
        flows
    }

    fn assemble(
        &self,
        record: &ConnectionRecord,
        metadata: &MeshMetadata,
        lookup: &mut dyn FnMut(u64) -> Option<ConnectionRecord>,
        patient: bool,
    ) -> Result<Option<MeshFlowRecord>, NotYet> {
        let (Ok(local), Ok(remote)) = (record.local.parse(), record.remote.parse()) else {
            return Ok(None);
        };
        let socket = Socket {
            record: record.clone(),
            local,
            remote,
            seen_at: Instant::now(),
            recency_stamp: 0,
        };
        match (self.kind(&socket), record.role) {
            (SocketKind::App, ConnectionRole::Client) => {
                self.client_flow(&socket, metadata, lookup, patient)
            }
            (SocketKind::App, ConnectionRole::Server) => Ok(self.server_flow(&socket, metadata)),
            (SocketKind::InboundDelivery, _) => Ok(Some(self.delivered_flow(&socket, metadata))),
            _ => Ok(None),
        }
    }

    fn learn_pod_ip(&mut self, socket: &Socket) {
        let ip = socket.local.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            return;
        }
        // A proxy's client sockets may carry another pod's (spoofed) address.
        let own_address = socket.record.role == ConnectionRole::Server
            || !self.ports.is_proxy_mark(socket.record.mark);
        if own_address {
            self.pod_ips.insert(socket.record.netns, ip);
        }
    }

    fn kind(&self, socket: &Socket) -> SocketKind {
        self.ports.classify(&SocketFacts {
            role: socket.record.role,
            local: socket.local,
            remote: socket.remote,
            mark: socket.record.mark,
            pod_ip: self.pod_ips.get(&socket.record.netns).copied(),
        })
    }

    fn in_netns(&self, netns: u32, kind: SocketKind) -> impl Iterator<Item = &Socket> {
        self.sockets
            .values()
            .filter(move |s| s.record.netns == netns && self.kind(s) == kind)
    }

    /// The freshest view of a socket: its final record, or the kernel's live state while
    /// it is open. A socket the kernel no longer has, whose end was not read yet, is
    /// `NotYet` while `patient`, else taken as last seen.
    fn current(
        &self,
        socket: &Socket,
        lookup: &mut dyn FnMut(u64) -> Option<ConnectionRecord>,
        patient: bool,
    ) -> Result<ConnectionRecord, NotYet> {
        if socket.closed() {
            return Ok(socket.record.clone());
        }
        match lookup(socket.record.cookie) {
            Some(live) => Ok(live),
            None if patient => Err(NotYet),
            None => Ok(socket.record.clone()),
        }
    }

    fn client_flow(
        &self,
        app: &Socket,
        metadata: &MeshMetadata,
        lookup: &mut dyn FnMut(u64) -> Option<ConnectionRecord>,
        patient: bool,
    ) -> Result<Option<MeshFlowRecord>, NotYet> {
        if app.remote.ip().is_loopback() {
            return Ok(None);
        }
        let netns = app.record.netns;
        let capture = self
            .in_netns(netns, SocketKind::OutboundCapture)
            .find(|capture| capture.remote == app.local);
        let Some(capture) = capture else {
            return Ok(self.direct_client_flow(app, metadata));
        };
        let capture = self.current(capture, lookup, patient)?;
        let relay_start = capture.first_data_ns.unwrap_or(u64::MAX);

        // A connection the proxy dialled while this flow waited, and no later capture
        // was accepted before it: this flow triggered the dial.
        let dialled = self
            .sockets
            .values()
            .filter(|s| {
                s.record.netns == netns
                    && matches!(
                        self.kind(s),
                        SocketKind::TunnelClient | SocketKind::ProxyUpstream
                    )
                    && s.record.start_ns >= capture.start_ns
                    && s.record.start_ns <= relay_start.min(capture.end_ns.unwrap_or(u64::MAX))
            })
            .filter(|s| {
                !self
                    .in_netns(netns, SocketKind::OutboundCapture)
                    .any(|other| {
                        other.record.start_ns > capture.start_ns
                            && other.record.start_ns <= s.record.start_ns
                    })
            })
            .min_by_key(|s| s.record.start_ns);
        // Otherwise the pooled HBONE connection that was open when the flow began.
        let pooled = || {
            let candidates = destination_candidates(metadata, app.remote);
            self.in_netns(netns, SocketKind::TunnelClient)
                .filter(|t| t.record.start_ns <= capture.start_ns && t.end_ns() >= capture.start_ns)
                .filter(|t| candidates.is_empty() || candidates.contains(&t.remote.ip()))
                .max_by_key(|t| t.record.start_ns)
        };
        let (upstream, reused) = match dialled {
            Some(socket) => (Some(socket), false),
            None => (pooled(), true),
        };
        let upstream = match upstream {
            Some(socket) => Some((self.kind(socket), self.current(socket, lookup, patient)?)),
            None => None,
        };

        let (path, destination_ip, tunnel_reused, tunnel_connect_us) = match &upstream {
            Some((SocketKind::TunnelClient, tunnel)) => {
                let ip = tunnel.remote.parse::<SocketAddr>().ok().map(|a| a.ip());
                let connect = (!reused).then_some(tunnel.connect_latency_us).flatten();
                (MeshPath::Hbone, ip, Some(reused), connect)
            }
            Some((_, plain)) => {
                let ip = plain.remote.parse::<SocketAddr>().ok().map(|a| a.ip());
                (MeshPath::Passthrough, ip, None, None)
            }
            None => (MeshPath::Hbone, None, None, None),
        };
        let destination = destination_peer(metadata, app.remote, destination_ip);

        let outcome = if app.record.end_ns.is_none() {
            FlowOutcome::Open
        } else if capture.first_data_ns.is_none() {
            match &upstream {
                Some((SocketKind::ProxyUpstream, plain))
                    if plain.connect_latency_us.is_none() && plain.outcome != Outcome::Open =>
                {
                    plain.outcome.into()
                }
                _ => FlowOutcome::TunnelFailed,
            }
        } else {
            app.record.outcome.into()
        };
        Ok(Some(MeshFlowRecord {
            start_ns: app.record.start_ns,
            end_ns: app.record.end_ns,
            side: ConnectionRole::Client,
            source: Peer::named(metadata, app.local.ip()),
            original_destination: app.record.remote.clone(),
            destination,
            mtls: path == MeshPath::Hbone,
            path,
            tunnel_setup_us: capture
                .first_data_ns
                .map(|first| first.saturating_sub(capture.start_ns) / 1_000),
            tunnel_reused,
            tunnel_connect_us,
            upstream_connect_us: None,
            bytes_sent: app.record.bytes_sent,
            bytes_received: app.record.bytes_received,
            bytes_sent_delta: app.record.bytes_sent_delta,
            bytes_received_delta: app.record.bytes_received_delta,
            outcome,
            node: self.node.clone(),
        }))
    }

    /// An app connection no proxy captured: a flow only if one end is a known workload
    /// that is not enrolled (an enrolled pod's traffic is always captured).
    fn direct_client_flow(&self, app: &Socket, metadata: &MeshMetadata) -> Option<MeshFlowRecord> {
        let source = metadata.workload(app.local.ip())?;
        if source.protocol == Protocol::Hbone {
            return None;
        }
        let destination = destination_peer(metadata, app.remote, None);
        Some(self.plain_flow(
            app,
            ConnectionRole::Client,
            Peer::named(metadata, app.local.ip()),
            destination,
        ))
    }

    fn plain_flow(
        &self,
        app: &Socket,
        side: ConnectionRole,
        source: Peer,
        destination: Peer,
    ) -> MeshFlowRecord {
        MeshFlowRecord {
            start_ns: app.record.start_ns,
            end_ns: app.record.end_ns,
            side,
            source,
            original_destination: match side {
                ConnectionRole::Client => app.record.remote.clone(),
                ConnectionRole::Server => app.record.local.clone(),
            },
            destination,
            path: MeshPath::Direct,
            mtls: false,
            tunnel_setup_us: None,
            tunnel_reused: None,
            tunnel_connect_us: None,
            upstream_connect_us: None,
            bytes_sent: app.record.bytes_sent,
            bytes_received: app.record.bytes_received,
            bytes_sent_delta: app.record.bytes_sent_delta,
            bytes_received_delta: app.record.bytes_received_delta,
            outcome: app.record.outcome.into(),
            node: self.node.clone(),
        }
    }

    fn server_flow(&self, app: &Socket, metadata: &MeshMetadata) -> Option<MeshFlowRecord> {
        if app.remote.ip().is_loopback() {
            return None;
        }
        let delivery = self
            .in_netns(app.record.netns, SocketKind::InboundDelivery)
            .find(|d| d.local == app.remote && d.remote == app.local);
        let Some(delivery) = delivery else {
            // Not delivered by a proxy: a plain connection into a workload that is not
            // enrolled.
            let workload = metadata.workload(app.local.ip())?;
            if workload.protocol == Protocol::Hbone {
                return None;
            }
            let mut destination = Peer::named(metadata, app.local.ip());
            destination.port = app.local.port();
            return Some(self.plain_flow(
                app,
                ConnectionRole::Server,
                Peer::named(metadata, app.remote.ip()),
                destination,
            ));
        };
        let mut flow = self.delivered_flow(delivery, metadata);
        flow.start_ns = app.record.start_ns;
        flow.end_ns = app.record.end_ns;
        flow.bytes_sent = app.record.bytes_sent;
        flow.bytes_received = app.record.bytes_received;
        flow.bytes_sent_delta = app.record.bytes_sent_delta;
        flow.bytes_received_delta = app.record.bytes_received_delta;
        flow.outcome = app.record.outcome.into();
        Some(flow)
    }

    /// The server half as the delivery socket shows it.
    fn delivered_flow(&self, delivery: &Socket, metadata: &MeshMetadata) -> MeshFlowRecord {
        let netns = delivery.record.netns;
        let source_ip = delivery.local.ip();
        // The HBONE connection or plaintext capture that brought the flow in: the latest
        // from the source's address opened before the delivery.
        let carrier = self
            .sockets
            .values()
            .filter(|s| {
                s.record.netns == netns
                    && matches!(
                        self.kind(s),
                        SocketKind::TunnelServer | SocketKind::InboundPlaintextCapture
                    )
                    && s.remote.ip() == source_ip
                    && s.record.start_ns <= delivery.record.start_ns
                    && s.end_ns() >= delivery.record.start_ns
            })
            .max_by_key(|s| s.record.start_ns);
        let path = match carrier.map(|s| self.kind(s)) {
            Some(SocketKind::InboundPlaintextCapture) => MeshPath::Passthrough,
            Some(_) => MeshPath::Hbone,
            None => match metadata.workload(source_ip) {
                Some(workload) if workload.protocol == Protocol::Tcp => MeshPath::Passthrough,
                _ => MeshPath::Hbone,
            },
        };
        let mut destination = Peer::named(metadata, delivery.remote.ip());
        destination.port = delivery.remote.port();
        MeshFlowRecord {
            start_ns: delivery.record.start_ns,
            end_ns: delivery.record.end_ns,
            side: ConnectionRole::Server,
            source: Peer::named(metadata, source_ip),
            original_destination: delivery.record.remote.clone(),
            destination,
            mtls: path == MeshPath::Hbone,
            path,
            tunnel_setup_us: None,
            tunnel_reused: None,
            tunnel_connect_us: None,
            upstream_connect_us: delivery.record.connect_latency_us,
            bytes_sent: 0,
            bytes_received: 0,
            bytes_sent_delta: 0,
            bytes_received_delta: 0,
            outcome: delivery.record.outcome.into(),
            node: self.node.clone(),
        }
    }

    fn prune(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_prune = Instant::now();
        self.forget_stale(self.last_prune);
    }

    /// Forgets the sockets no longer kept at `now`: closed ones past the retention, open
    /// ones idle past `idle_timeout` (counted).
    pub fn forget_stale(&mut self, now: Instant) {
        let idle_timeout = self.limits.idle_timeout;
        let (recency, counters) = (&mut self.recency, &mut self.counters);
        self.sockets.retain(|_, socket| {
            if socket.kept(now, idle_timeout) {
                return true;
            }
            if !socket.closed() {
                counters.forgotten_idle += 1;
            }
            recency.remove(socket.recency_stamp);
            false
        });
    }

    fn forget_least_recently_seen(&mut self) {
        let Some(cookie) = self.recency.oldest() else {
            return;
        };
        if let Some(socket) = self.sockets.remove(&cookie) {
            self.recency.remove(socket.recency_stamp);
            self.counters.forgotten_capacity += 1;
        }
    }
}

/// Pod IPs a connection to `dialled` may reach: the service's endpoints, or the address.
fn destination_candidates(metadata: &MeshMetadata, dialled: SocketAddr) -> Vec<IpAddr> {
    match metadata.service_by_vip(dialled.ip()) {
        Some(service) => metadata
            .endpoints(service)
            .iter()
            .flat_map(|w| w.ips.iter().copied())
            .collect(),
        None => vec![dialled.ip()],
    }
}

/// The peer an app connection to `dialled` reached: the pod at `reached` when the
/// upstream is known, else — a connection whose pooled tunnel opened before the agent
/// started, or a direct one — the service's only endpoint, or the service alone.
fn destination_peer(metadata: &MeshMetadata, dialled: SocketAddr, reached: Option<IpAddr>) -> Peer {
    let service = metadata.service_by_vip(dialled.ip());
    let ip = reached.unwrap_or_else(|| match service.map(|s| metadata.endpoints(s)).as_deref() {
        Some([only]) => only.ips.first().copied().unwrap_or(dialled.ip()),
        _ => dialled.ip(),
    });
    let mut destination = Peer::named(metadata, ip);
    destination.port = service
        .and_then(|s| s.ports.get(&dialled.port()).copied())
        .unwrap_or(dialled.port());
    if let Some(service) = service {
        destination.service = service.hostname.clone();
        if destination.namespace.is_empty() {
            destination.namespace = service.namespace.clone();
        }
    }
    destination
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(limits: FlowLimits) -> FlowBuilder {
        FlowBuilder::with_limits(
            MeshPorts::default(),
            "node-a".into(),
            MetadataStore::default(),
            limits,
        )
    }

    /// An app's client socket in namespace 1, open unless `end_ns` is set.
    fn socket(cookie: u64, end_ns: Option<u64>) -> ConnectionRecord {
        ConnectionRecord {
            start_ns: 1_000,
            end_ns,
            netns: 1,
            pid: 7,
            comm: "app".into(),
            role: ConnectionRole::Client,
            first_data_ns: None,
            local: format!("10.244.1.10:{}", 40_000 + cookie),
            remote: "10.244.2.10:8080".into(),
            bytes_sent: 0,
            bytes_received: 0,
            bytes_sent_delta: 0,
            bytes_received_delta: 0,
            outcome: if end_ns.is_some() {
                Outcome::Closed
            } else {
                Outcome::Open
            },
            connect_latency_us: Some(10),
            rtt_us: 0,
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            mark: 0,
            error: None,
            cookie,
        }
    }

    #[test]
    fn a_socket_whose_closed_event_was_lost_is_forgotten_after_the_idle_bound() {
        let idle = Duration::from_secs(20);
        let mut flows = builder(FlowLimits {
            idle_timeout: idle,
            ..FlowLimits::default()
        });
        let start = Instant::now();
        // Socket 1 opens and its Closed event is lost; socket 2 closes normally; socket 3
        // stays open and its interim records keep coming.
        flows.observe(&socket(1, None), true);
        flows.observe(&socket(2, None), true);
        flows.observe(&socket(2, Some(2_000)), false);
        flows.observe(&socket(3, None), true);
        assert_eq!(flows.len(), 3);

        // Within the retention and the idle bound everything is kept.
        flows.forget_stale(start + CLOSED_RETENTION - Duration::from_millis(100));
        assert_eq!(flows.len(), 3);
        // Past the retention the closed socket goes, not counted: it was not lost.
        flows.forget_stale(start + CLOSED_RETENTION + Duration::from_millis(100));
        assert_eq!(flows.len(), 2);
        assert_eq!(flows.counters(), &FlowCounters::default());

        // An interim record of socket 3 just before the bound keeps it.
        std::thread::sleep(Duration::from_millis(20));
        flows.observe(&socket(3, None), false);
        let socket_3_seen = flows.sockets[&3].seen_at;
        flows.forget_stale(start + idle + Duration::from_millis(10));
        assert_eq!(flows.len(), 1, "socket 1 is forgotten, socket 3 kept");
        assert!(flows.sockets.contains_key(&3));
        assert_eq!(
            flows.counters(),
            &FlowCounters {
                forgotten_idle: 1,
                forgotten_capacity: 0
            }
        );
        flows.forget_stale(socket_3_seen + idle);
        assert!(flows.is_empty());
        assert_eq!(flows.counters().forgotten_idle, 2);
    }

    #[test]
    fn over_capacity_the_least_recently_seen_socket_is_forgotten() {
        let mut flows = builder(FlowLimits {
            max_sockets: 3,
            ..FlowLimits::default()
        });
        for cookie in 1..=3 {
            flows.observe(&socket(cookie, None), true);
        }
        // Socket 1 reports again: socket 2 is now the least recently seen.
        flows.observe(&socket(1, None), false);
        flows.observe(&socket(4, None), true);
        let mut held: Vec<u64> = flows.sockets.keys().copied().collect();
        held.sort_unstable();
        assert_eq!(held, [1, 3, 4]);
        // A record of a socket already held takes no room.
        flows.observe(&socket(4, Some(3_000)), false);
        flows.observe(&socket(5, None), true);
        let mut held: Vec<u64> = flows.sockets.keys().copied().collect();
        held.sort_unstable();
        assert_eq!(held, [1, 4, 5]);
        assert_eq!(
            flows.counters(),
            &FlowCounters {
                forgotten_idle: 0,
                forgotten_capacity: 2
            }
        );
    }
}
