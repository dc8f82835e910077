//! `mesh_flow` records: one application connection as the mesh carried it, rebuilt from
//! `connection` records using only what ztunnel's in-pod mode shows the kernel
//! (shared/DESIGN.md):
//! - the app's socket dials the original destination; istio-cni's nat `OUTPUT` rule
//!   redirects it to the proxy's listener on 15001 *inside the pod's namespace*, whose
//!   accepted socket shows local `127.0.0.1:15001` and peer = the app's address;
//! - the proxy reaches the peer over TCP to `peerIP:15008` (HBONE), or plain TCP;
//! - on the destination, the proxy's socket connects to `podIP:appPort` from the original
//!   client IP, and the app accepts it;
//! - every proxy socket carries `SO_MARK` 0x539.
//!
//! `classify` names each socket's part in that picture; `builder` joins the parts.

pub mod builder;
pub mod classify;

use serde::{Deserialize, Serialize};

use crate::record::{ConnectionRole, Outcome};

pub use builder::FlowBuilder;
pub use classify::MeshPorts;

/// How the mesh carried a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshPath {
    /// Through the proxies over an HBONE tunnel (mTLS).
    Hbone,
    /// Through a proxy in plain TCP (destination outside the mesh or not enrolled, or an
    /// inbound connection from outside the mesh captured on 15006).
    Passthrough,
    /// No proxy: the pod is not enrolled.
    Direct,
}

/// One end of a flow, named from metadata when it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    /// SPIFFE identity; empty when unknown.
    pub identity: String,
    pub pod: String,
    pub ip: String,
    /// Destination only: the service hostname the app dialled (empty if it dialled a pod).
    pub service: String,
    /// Destination only: the port the destination app listens on.
    pub port: u16,
}

impl Peer {
    /// A peer named from metadata, or only its address.
    pub fn named(metadata: &crate::metadata::MeshMetadata, ip: std::net::IpAddr) -> Self {
        let mut peer = Self {
            ip: ip.to_string(),
            ..Self::default()
        };
        if let Some(workload) = metadata.workload(ip) {
            peer.workload = workload.workload.clone();
            peer.namespace = workload.namespace.clone();
            peer.service_account = workload.service_account.clone();
            peer.identity = workload.identity();
            peer.pod = workload.pod.clone();
        }
        peer
    }
}

/// One application connection as the mesh carried it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshFlowRecord {
    /// Unix time (ns) the application connection started.
    pub start_ns: u64,
    /// Unix time (ns) it closed; absent in interim records.
    pub end_ns: Option<u64>,
    /// `client`: the source pod's half (app → proxy); `server`: the destination pod's half
    /// (proxy → app). The graph server joins both halves.
    pub side: ConnectionRole,
    pub source: Peer,
    /// `ip:port` the source app dialled (a service VIP, a pod, or an outside address).
    pub original_destination: String,
    pub destination: Peer,
    pub path: MeshPath,
    pub mtls: bool,
    /// Client side: from the proxy accepting the app's connection to it first relaying
    /// bytes (the tunnel's CONNECT was answered 200).
    pub tunnel_setup_us: Option<u64>,
    /// Client side, HBONE: the flow rode an HBONE connection that already existed.
    pub tunnel_reused: Option<bool>,
    /// Client side, HBONE, new connection: its TCP handshake to `peer:15008`.
    pub tunnel_connect_us: Option<u64>,
    /// Server side: the destination proxy's connect to the app.
    pub upstream_connect_us: Option<u64>,
    /// As the source app saw them (client side) or the destination app (server side).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent_delta: u64,
    pub bytes_received_delta: u64,
    /// `tunnel_failed`: the proxy closed the app's connection without relaying a byte
    /// (CONNECT refused: 401 policy, 503 upstream). Otherwise the app socket's outcome.
    pub outcome: FlowOutcome,
    /// The reporting node.
    pub node: String,
}

/// How a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowOutcome {
    Closed,
    Reset,
    Refused,
    Timeout,
    Unreachable,
    /// The proxy closed the application's connection without relaying anything.
    TunnelFailed,
    Open,
}

impl From<Outcome> for FlowOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Closed => Self::Closed,
            Outcome::Reset => Self::Reset,
            Outcome::Refused => Self::Refused,
            Outcome::Timeout => Self::Timeout,
            Outcome::Unreachable => Self::Unreachable,
            Outcome::Open => Self::Open,
        }
    }
}
