//! The records agents report, as the server keeps them: validated copies of the protobuf
//! messages with the field names of the agent's JSON (README.md, "Records"), serialised as
//! the API returns them.
use std::sync::Arc;

use nephilia_proto::v1;
use serde::Serialize;

use crate::store::heap_bytes;

/// Why a record in a batch was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The `Record` message had no `kind` set.
    #[error("record has no kind (connection, mesh_flow or request)")]
    MissingKind,
    /// A required field was zero or empty.
    #[error("{record}.{field} is missing")]
    Missing {
        record: &'static str,
        field: &'static str,
    },
    /// An address field was not "ip:port". `value` is an [`excerpt`] of what was sent.
    #[error("{record}.{field} is not \"ip:port\": {value}")]
    BadAddress {
        record: &'static str,
        field: &'static str,
        value: String,
    },
    /// `node` was longer than [`MAX_NODE_BYTES`]; not shown, only its length.
    #[error("{record}.node is {len} bytes long, at most {MAX_NODE_BYTES} are accepted")]
    NodeTooLong { record: &'static str, len: usize },
    /// `end_ns` lies before `start_ns`.
    #[error("{record}.end_ns ({end_ns}) is before start_ns ({start_ns})")]
    EndBeforeStart {
        record: &'static str,
        start_ns: u64,
        end_ns: u64,
    },
    /// An enum field held a value this version does not know, or UNSPECIFIED.
    #[error("{record}.{field} has no valid value ({value})")]
    BadEnum {
        record: &'static str,
        field: &'static str,
        value: i32,
    },
}

type Result<T, E = RecordError> = std::result::Result<T, E>;

/// Longest string field kept (2 KiB), as the agent's L7 parser keeps at most that much of
/// a path, authority or grpc-message (`nephilia_l7::ParserLimits::max_field_bytes`). A
/// longer value, from a broken or hostile agent, is cut at a character boundary rather
/// than held whole in every store that shares the record.
pub const MAX_FIELD_BYTES: usize = 2048;

/// Longest node name accepted: a Kubernetes node name is a DNS subdomain (RFC 1123), at
/// most 253 characters. Node names key per-node state and appear in statuses and logs, so
/// a longer one is refused rather than cut (two cut names could collide).
pub const MAX_NODE_BYTES: usize = 253;

/// Bytes of a refused value an error shows: enough to recognise it, never the megabytes a
/// hostile agent may send into a gRPC status or a log line.
const EXCERPT_BYTES: usize = 64;

/// `value` cut to [`MAX_FIELD_BYTES`] at a character boundary, its spare capacity freed.
pub fn capped(mut value: String) -> String {
    if value.len() > MAX_FIELD_BYTES {
        value.truncate(value.floor_char_boundary(MAX_FIELD_BYTES));
        value.shrink_to_fit();
    }
    value
}

/// `value` quoted for an error message: whole when short, else its first
/// [`EXCERPT_BYTES`] and its length (`"xxxx…" (5242880 bytes)`).
pub fn excerpt(value: &str) -> String {
    if value.len() <= EXCERPT_BYTES {
        format!("{value:?}")
    } else {
        let head = &value[..value.floor_char_boundary(EXCERPT_BYTES)];
        format!("\"{}…\" ({} bytes)", head.escape_debug(), value.len())
    }
}

/// Refuses a `node` longer than [`MAX_NODE_BYTES`].
fn node(record: &'static str, value: String) -> Result<String> {
    if value.is_empty() {
        return Err(RecordError::Missing {
            record,
            field: "node",
        });
    }
    if value.len() > MAX_NODE_BYTES {
        return Err(RecordError::NodeTooLong {
            record,
            len: value.len(),
        });
    }
    Ok(value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Closed,
    Reset,
    Refused,
    Timeout,
    Unreachable,
    Open,
    TunnelFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Reset => "reset",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Open => "open",
            Self::TunnelFailed => "tunnel_failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshPath {
    Hbone,
    Passthrough,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }
}

/// One side of a mesh flow or request. Empty `workload` means the agent could not
/// identify it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    pub identity: String,
    pub pod: String,
    pub ip: String,
    pub service: String,
    pub port: u32,
}

/// See README.md, "The connection record".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Connection {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub netns: u32,
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    pub local: String,
    pub remote: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent_delta: u64,
    pub bytes_received_delta: u64,
    pub outcome: Outcome,
    pub connect_latency_us: Option<u64>,
    pub rtt_us: u32,
    pub retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    pub mark: u32,
    pub error: Option<String>,
    pub cookie: u64,
}

/// One application connection as the mesh carried it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeshFlow {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub side: Role,
    pub source: Peer,
    pub original_destination: String,
    pub destination: Peer,
    pub path: MeshPath,
    pub mtls: bool,
    pub tunnel_setup_us: Option<u64>,
    pub tunnel_reused: Option<bool>,
    pub tunnel_connect_us: Option<u64>,
    pub upstream_connect_us: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent_delta: u64,
    pub bytes_received_delta: u64,
    pub outcome: Outcome,
    pub node: String,
}

/// One L7 exchange.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Request {
    pub side: Role,
    pub protocol: Protocol,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub status: Option<u32>,
    pub grpc_status: Option<i32>,
    pub grpc_message: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub latency_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub source: Peer,
    pub destination: Peer,
    pub local: String,
    pub remote: String,
    pub pid: u32,
    pub node: String,
}

impl Request {
    /// A request failed if the server answered 5xx or a non-OK gRPC status.
    pub fn is_error(&self) -> bool {
        self.status.is_some_and(|s| s >= 500) || self.grpc_status.is_some_and(|s| s != 0)
    }

    /// "GET /users/{id}" — the span and search operation name.
    pub fn operation(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Any record, tagged with `kind` in JSON as in `nephilia-agent observe`. Requests and
/// mesh flows are shared, not copied, between the trace store and the recent records.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Connection(Connection),
    MeshFlow(Arc<MeshFlow>),
    Request(Arc<Request>),
}

impl Record {
    /// The time the record describes: its end, or its start while still open.
    pub fn time_ns(&self) -> u64 {
        match self {
            Self::Connection(c) => c.end_ns.unwrap_or(c.start_ns),
            Self::MeshFlow(f) => f.end_ns.unwrap_or(f.start_ns),
            Self::Request(r) => r.end_ns,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connection(_) => "connection",
            Self::MeshFlow(_) => "mesh_flow",
            Self::Request(_) => "request",
        }
    }

    /// Rough heap + inline size, for memory accounting: what the allocator hands out for
    /// the record and its strings. A request or mesh flow shared with the trace store is
    /// counted in full by both, so the estimate errs high.
    pub fn estimated_bytes(&self) -> usize {
        let heap = match self {
            Self::Connection(c) => c.heap_bytes(),
            // An `Arc`'s allocation: two counts, then the value.
            Self::MeshFlow(f) => heap_bytes(16 + size_of::<MeshFlow>()) + f.heap_bytes(),
            Self::Request(r) => heap_bytes(16 + size_of::<Request>()) + r.heap_bytes(),
        };
        size_of::<Self>() + heap
    }
}

/// What the allocator hands out for a string's bytes.
fn text(s: &str) -> usize {
    heap_bytes(s.len())
}

fn opt_text(s: &Option<String>) -> usize {
    s.as_deref().map_or(0, text)
}

impl Connection {
    pub fn heap_bytes(&self) -> usize {
        text(&self.comm) + text(&self.local) + text(&self.remote) + opt_text(&self.error)
    }
}

impl MeshFlow {
    pub fn heap_bytes(&self) -> usize {
        self.source.heap_bytes()
            + self.destination.heap_bytes()
            + text(&self.original_destination)
            + text(&self.node)
    }
}

impl Request {
    pub fn heap_bytes(&self) -> usize {
        text(&self.method)
            + text(&self.path)
            + text(&self.authority)
            + opt_text(&self.grpc_message)
            + opt_text(&self.trace_id)
            + opt_text(&self.span_id)
            + opt_text(&self.parent_span_id)
            + self.source.heap_bytes()
            + self.destination.heap_bytes()
            + text(&self.local)
            + text(&self.remote)
            + text(&self.node)
    }
}

impl Peer {
    pub fn heap_bytes(&self) -> usize {
        text(&self.workload)
            + text(&self.namespace)
            + text(&self.service_account)
            + text(&self.identity)
            + text(&self.pod)
            + text(&self.ip)
            + text(&self.service)
    }
}

impl TryFrom<v1::Record> for Record {
    type Error = RecordError;

    fn try_from(record: v1::Record) -> Result<Self> {
        match record.kind.ok_or(RecordError::MissingKind)? {
            v1::record::Kind::Connection(c) => Connection::try_from(c).map(Self::Connection),
            v1::record::Kind::MeshFlow(f) => {
                MeshFlow::try_from(f).map(|f| Self::MeshFlow(Arc::new(f)))
            }
            v1::record::Kind::Request(r) => {
                Request::try_from(r).map(|r| Self::Request(Arc::new(r)))
            }
        }
    }
}

fn role(record: &'static str, field: &'static str, value: i32) -> Result<Role> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Client) => Ok(Role::Client),
        Ok(v1::Role::Server) => Ok(Role::Server),
        _ => Err(RecordError::BadEnum {
            record,
            field,
            value,
        }),
    }
}

fn outcome(record: &'static str, value: i32) -> Result<Outcome> {
    let outcome = match v1::Outcome::try_from(value) {
        Ok(v1::Outcome::Closed) => Outcome::Closed,
        Ok(v1::Outcome::Reset) => Outcome::Reset,
        Ok(v1::Outcome::Refused) => Outcome::Refused,
        Ok(v1::Outcome::Timeout) => Outcome::Timeout,
        Ok(v1::Outcome::Unreachable) => Outcome::Unreachable,
        Ok(v1::Outcome::Open) => Outcome::Open,
        Ok(v1::Outcome::TunnelFailed) => Outcome::TunnelFailed,
        Ok(v1::Outcome::Unspecified) | Err(_) => {
            return Err(RecordError::BadEnum {
                record,
                field: "outcome",
                value,
            });
        }
    };
    Ok(outcome)
}

/// Checks "ip:port" (IPv6 as "[::1]:80").
fn address(record: &'static str, field: &'static str, value: String) -> Result<String> {
    if value.parse::<std::net::SocketAddr>().is_ok() {
        Ok(value)
    } else {
        Err(RecordError::BadAddress {
            record,
            field,
            value: excerpt(&value),
        })
    }
}

fn times(record: &'static str, start_ns: u64, end_ns: Option<u64>) -> Result<()> {
    if start_ns == 0 {
        return Err(RecordError::Missing {
            record,
            field: "start_ns",
        });
    }
    match end_ns {
        Some(end_ns) if end_ns < start_ns => Err(RecordError::EndBeforeStart {
            record,
            start_ns,
            end_ns,
        }),
        _ => Ok(()),
    }
}

fn peer(peer: Option<v1::Peer>) -> Peer {
    let p = peer.unwrap_or_default();
    Peer {
        workload: capped(p.workload),
        namespace: capped(p.namespace),
        service_account: capped(p.service_account),
        identity: capped(p.identity),
        pod: capped(p.pod),
        ip: capped(p.ip),
        service: capped(p.service),
        port: p.port,
    }
}

/// A flow or request must say where it came from and went to, at least by ip.
fn required_peer(
    record: &'static str,
    field: &'static str,
    value: Option<v1::Peer>,
) -> Result<Peer> {
    let value = peer(value);
    if value.ip.is_empty() && value.workload.is_empty() {
        return Err(RecordError::Missing { record, field });
    }
    Ok(value)
}

impl TryFrom<v1::Connection> for Connection {
    type Error = RecordError;

    fn try_from(c: v1::Connection) -> Result<Self> {
        const R: &str = "connection";
        times(R, c.start_ns, c.end_ns)?;
        let outcome = outcome(R, c.outcome)?;
        if outcome == Outcome::TunnelFailed {
            return Err(RecordError::BadEnum {
                record: R,
                field: "outcome",
                value: c.outcome,
            });
        }
        Ok(Self {
            start_ns: c.start_ns,
            end_ns: c.end_ns,
            netns: c.netns,
            pid: c.pid,
            comm: capped(c.comm),
            role: role(R, "role", c.role)?,
            local: address(R, "local", c.local)?,
            remote: address(R, "remote", c.remote)?,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            bytes_sent_delta: c.bytes_sent_delta,
            bytes_received_delta: c.bytes_received_delta,
            outcome,
            connect_latency_us: c.connect_latency_us,
            rtt_us: c.rtt_us,
            retransmits: c.retransmits,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            mark: c.mark,
            error: c.error.map(capped),
            cookie: c.cookie,
        })
    }
}

impl TryFrom<v1::MeshFlow> for MeshFlow {
    type Error = RecordError;

    fn try_from(f: v1::MeshFlow) -> Result<Self> {
        const R: &str = "mesh_flow";
        times(R, f.start_ns, f.end_ns)?;
        let path = match v1::MeshPath::try_from(f.path) {
            Ok(v1::MeshPath::Hbone) => MeshPath::Hbone,
            Ok(v1::MeshPath::Passthrough) => MeshPath::Passthrough,
            Ok(v1::MeshPath::Direct) => MeshPath::Direct,
            _ => {
                return Err(RecordError::BadEnum {
                    record: R,
                    field: "path",
                    value: f.path,
                });
            }
        };
        let outcome = outcome(R, f.outcome)?;
        if (outcome == Outcome::Open) != f.end_ns.is_none() {
            return Err(RecordError::Missing {
                record: R,
                field: if f.end_ns.is_none() {
                    "end_ns"
                } else {
                    "outcome (open flows have no end_ns)"
                },
            });
        }
        let node = node(R, f.node)?;
        Ok(Self {
            start_ns: f.start_ns,
            end_ns: f.end_ns,
            side: role(R, "side", f.side)?,
            source: required_peer(R, "source", f.source)?,
            original_destination: address(R, "original_destination", f.original_destination)?,
            destination: required_peer(R, "destination", f.destination)?,
            path,
            mtls: f.mtls,
            tunnel_setup_us: f.tunnel_setup_us,
            tunnel_reused: f.tunnel_reused,
            tunnel_connect_us: f.tunnel_connect_us,
            upstream_connect_us: f.upstream_connect_us,
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            bytes_sent_delta: f.bytes_sent_delta,
            bytes_received_delta: f.bytes_received_delta,
            outcome,
            node,
        })
    }
}

impl TryFrom<v1::Request> for Request {
    type Error = RecordError;

    fn try_from(r: v1::Request) -> Result<Self> {
        const R: &str = "request";
        times(R, r.start_ns, Some(r.end_ns))?;
        if r.end_ns == 0 {
            return Err(RecordError::Missing {
                record: R,
                field: "end_ns",
            });
        }
        let protocol = match v1::Protocol::try_from(r.protocol) {
            Ok(v1::Protocol::Http1) => Protocol::Http1,
            Ok(v1::Protocol::Http2) => Protocol::Http2,
            Ok(v1::Protocol::Grpc) => Protocol::Grpc,
            _ => {
                return Err(RecordError::BadEnum {
                    record: R,
                    field: "protocol",
                    value: r.protocol,
                });
            }
        };
        if r.method.is_empty() {
            return Err(RecordError::Missing {
                record: R,
                field: "method",
            });
        }
        let node = node(R, r.node)?;
        Ok(Self {
            side: role(R, "side", r.side)?,
            protocol,
            method: capped(r.method),
            path: capped(r.path),
            authority: capped(r.authority),
            status: r.status,
            grpc_status: r.grpc_status,
            grpc_message: r.grpc_message.map(capped),
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            latency_us: r.latency_us,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            trace_id: r.trace_id.filter(|id| !id.is_empty()).map(capped),
            span_id: r.span_id.filter(|id| !id.is_empty()).map(capped),
            parent_span_id: r.parent_span_id.filter(|id| !id.is_empty()).map(capped),
            source: required_peer(R, "source", r.source)?,
            destination: required_peer(R, "destination", r.destination)?,
            local: address(R, "local", r.local)?,
            remote: address(R, "remote", r.remote)?,
            pid: r.pid,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_without_method_names_the_field() {
        let err = Request::try_from(v1::Request {
            side: v1::Role::Client as i32,
            protocol: v1::Protocol::Http1 as i32,
            start_ns: 10,
            end_ns: 20,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "request.method is missing");
    }

    #[test]
    fn mesh_flow_ending_before_it_starts_is_rejected() {
        let err = MeshFlow::try_from(v1::MeshFlow {
            start_ns: 20,
            end_ns: Some(10),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh_flow.end_ns (10) is before start_ns (20)"
        );
    }

    #[test]
    fn connection_with_bad_address_is_rejected() {
        let err = Connection::try_from(v1::Connection {
            start_ns: 1,
            end_ns: Some(2),
            role: v1::Role::Client as i32,
            outcome: v1::Outcome::Closed as i32,
            local: "10.0.0.1".into(),
            remote: "10.0.0.2:80".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection.local is not \"ip:port\": \"10.0.0.1\""
        );
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary_and_excerpted_in_errors() {
        let long = "é".repeat(MAX_FIELD_BYTES); // 2 bytes each
        let cut = capped(long);
        assert_eq!(
            (cut.len(), cut.capacity()),
            (MAX_FIELD_BYTES, MAX_FIELD_BYTES)
        );
        let odd = format!("x{}", "é".repeat(MAX_FIELD_BYTES));
        assert_eq!(capped(odd).len(), MAX_FIELD_BYTES - 1);
        assert_eq!(capped("short".into()), "short");

        assert_eq!(excerpt("10.0.0.1"), "\"10.0.0.1\"");
        let huge = "y".repeat(3 << 20);
        assert_eq!(
            excerpt(&huge),
            format!("\"{}…\" (3145728 bytes)", "y".repeat(EXCERPT_BYTES))
        );
    }

    #[test]
    fn a_node_name_longer_than_a_kubernetes_one_is_refused_without_echoing_it() {
        let flow = |node: String| v1::MeshFlow {
            start_ns: 10,
            end_ns: Some(20),
            side: v1::Role::Client as i32,
            source: Some(v1::Peer {
                ip: "10.0.0.1".into(),
                ..Default::default()
            }),
            destination: Some(v1::Peer {
                ip: "10.0.0.2".into(),
                ..Default::default()
            }),
            original_destination: "10.0.0.2:80".into(),
            path: v1::MeshPath::Hbone as i32,
            outcome: v1::Outcome::Closed as i32,
            node,
            ..Default::default()
        };
        assert_eq!(
            MeshFlow::try_from(flow("n".repeat(MAX_NODE_BYTES)))
                .unwrap()
                .node
                .len(),
            MAX_NODE_BYTES
        );
        let err = MeshFlow::try_from(flow("n".repeat(2 << 20))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh_flow.node is 2097152 bytes long, at most 253 are accepted"
        );
    }
}
