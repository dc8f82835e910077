//! The records the agent emits (the vocabulary of shared/DESIGN.md). Serialized as one
//! JSON object per line by `observe`, with `kind` first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nephilia_common::{
    ConnectionState, Endpoint, Role,
    connection::{FAMILY_IPV4, FAMILY_IPV6},
};
use serde::{Deserialize, Serialize};

use crate::clock::BootClock;

/// Any record the agent emits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Connection(ConnectionRecord),
    MeshFlow(crate::mesh_flow::MeshFlowRecord),
    Request(crate::l7_capture::RequestRecord),
}

/// Which side of a TCP connection a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionRole {
    /// Called `connect()`.
    Client,
    /// Was accepted by a listener.
    Server,
}

/// How a connection ended, or `Open` for an interim record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Closed without error.
    Closed,
    /// A reset was sent or received after the handshake.
    Reset,
    /// The peer answered the SYN with a reset (nothing listening).
    Refused,
    /// The handshake or the connection timed out.
    Timeout,
    /// No route or no neighbour for the peer (`EHOSTUNREACH`/`ENETUNREACH`).
    Unreachable,
    /// Still open: an interim record.
    Open,
}

impl Outcome {
    /// Classifies a socket's state. `closed` is false for interim records.
    pub fn of(state: &ConnectionState, closed: bool) -> Self {
        if !closed {
            return Self::Open;
        }
        let error = i32::try_from(state.error).unwrap_or(0);
        if state.established_ns == 0 {
            return match error {
                libc::ECONNREFUSED => Self::Refused,
                libc::ETIMEDOUT => Self::Timeout,
                libc::EHOSTUNREACH | libc::ENETUNREACH => Self::Unreachable,
                _ if state.resets_received > 0 => Self::Refused,
                // The caller gave up (closed the socket or was interrupted) mid-handshake.
                _ => Self::Closed,
            };
        }
        if state.resets_received > 0 || state.resets_sent > 0 {
            Self::Reset
        } else if error == libc::ETIMEDOUT {
            Self::Timeout
        } else {
            Self::Closed
        }
    }
}

/// One TCP connection seen from one socket. Byte counts are from that socket's point
/// of view; `bytes_*` are totals so far, `bytes_*_delta` what is new since the previous
/// record of the same connection (interim records come every few seconds while open).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Unix time (ns) of `connect()` (client) or of the completed handshake (server).
    pub start_ns: u64,
    /// Unix time (ns) the socket closed; absent while open.
    pub end_ns: Option<u64>,
    /// Inode of the socket's network namespace, as in `/proc/PID/ns/net`.
    pub netns: u32,
    /// Process (thread-group id) owning the socket; 0 if it never ran in process context.
    pub pid: u32,
    /// That process's `comm`.
    pub comm: String,
    pub role: ConnectionRole,
    /// Unix time (ns) the owner first sent or received payload; absent if it never did.
    pub first_data_ns: Option<u64>,
    /// `ip:port` of this socket.
    pub local: String,
    /// `ip:port` of the peer.
    pub remote: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent_delta: u64,
    pub bytes_received_delta: u64,
    pub outcome: Outcome,
    /// `connect()` to established, clients only.
    pub connect_latency_us: Option<u64>,
    /// Smoothed RTT at close (0 while open or when no RTT was sampled).
    pub rtt_us: u32,
    pub retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// `SO_MARK` of the socket.
    pub mark: u32,
    /// The last socket error, by errno name (`ECONNREFUSED`, `ETIMEDOUT`, …).
    pub error: Option<String>,
    /// Socket cookie: identifies the socket across records.
    pub cookie: u64,
}

impl ConnectionRecord {
    /// Builds a record from kernel state. `reported` holds the byte totals already
    /// reported for this connection, to compute the deltas.
    pub fn from_state(
        state: &ConnectionState,
        closed: bool,
        reported: (u64, u64),
        clock: &BootClock,
    ) -> Self {
        let role = match Role::from_u8(state.role) {
            Some(Role::Server) => ConnectionRole::Server,
            _ => ConnectionRole::Client,
        };
        let connect_latency_us = (role == ConnectionRole::Client && state.established_ns != 0)
            .then(|| state.established_ns.saturating_sub(state.start_ns) / 1_000);
        Self {
            start_ns: clock.unix_ns(state.start_ns),
            end_ns: (closed && state.close_ns != 0).then(|| clock.unix_ns(state.close_ns)),
            netns: state.netns,
            pid: state.pid,
            comm: comm(&state.comm),
            role,
            first_data_ns: (state.first_data_ns != 0).then(|| clock.unix_ns(state.first_data_ns)),
            local: endpoint(&state.local).to_string(),
            remote: endpoint(&state.remote).to_string(),
            bytes_sent: state.bytes_sent,
            bytes_received: state.bytes_received,
            bytes_sent_delta: state.bytes_sent.saturating_sub(reported.0),
            bytes_received_delta: state.bytes_received.saturating_sub(reported.1),
            outcome: Outcome::of(state, closed),
            connect_latency_us,
            rtt_us: state.srtt_us,
            retransmits: state.retransmits,
            resets_sent: state.resets_sent,
            resets_received: state.resets_received,
            mark: state.mark,
            error: errno_name(state.error),
            cookie: state.cookie,
        }
    }
}

/// The socket address of an endpoint; IPv4-mapped IPv6 addresses print as IPv4.
pub fn endpoint(endpoint: &Endpoint) -> SocketAddr {
    let ip = match endpoint.family {
        FAMILY_IPV6 => {
            let v6 = Ipv6Addr::from(endpoint.addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        FAMILY_IPV4 => {
            let [a, b, c, d, ..] = endpoint.addr;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, endpoint.port)
}

fn errno_name(errno: u32) -> Option<String> {
    let name = match i32::try_from(errno).ok()? {
        0 => return None,
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EPIPE => "EPIPE",
        other => return Some(format!("errno {other}")),
    };
    Some(name.to_owned())
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(error: i32) -> ConnectionState {
        ConnectionState {
            role: Role::Client as u8,
            start_ns: 1_000,
            error: error as u32,
            ..ConnectionState::default()
        }
    }

    #[test]
    fn failed_handshakes_are_classified_by_errno() {
        assert_eq!(
            Outcome::of(&client(libc::ECONNREFUSED), true),
            Outcome::Refused
        );
        assert_eq!(
            Outcome::of(&client(libc::ETIMEDOUT), true),
            Outcome::Timeout
        );
        assert_eq!(
            Outcome::of(&client(libc::EHOSTUNREACH), true),
            Outcome::Unreachable
        );
        assert_eq!(
            Outcome::of(&client(libc::ENETUNREACH), true),
            Outcome::Unreachable
        );
        assert_eq!(Outcome::of(&client(0), true), Outcome::Closed);
        assert_eq!(Outcome::of(&client(0), false), Outcome::Open);
    }

    #[test]
    fn resets_after_the_handshake_are_resets() {
        let mut state = client(libc::ECONNRESET);
        state.established_ns = 2_000;
        state.resets_received = 1;
        assert_eq!(Outcome::of(&state, true), Outcome::Reset);
        state.resets_received = 0;
        state.resets_sent = 1;
        assert_eq!(Outcome::of(&state, true), Outcome::Reset);
        state.resets_sent = 0;
        state.error = 0;
        assert_eq!(Outcome::of(&state, true), Outcome::Closed);
    }

    #[test]
    fn record_decodes_addresses_comm_latency_and_deltas() {
        let mut state = client(0);
        state.established_ns = 251_000;
        state.close_ns = 900_000;
        state.local = Endpoint {
            addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 40_000,
            family: FAMILY_IPV4,
            _pad: 0,
        };
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        state.remote = Endpoint {
            addr: mapped,
            port: 8080,
            family: FAMILY_IPV6,
            _pad: 0,
        };
        state.comm[..4].copy_from_slice(b"curl");
        state.bytes_sent = 100;
        state.bytes_received = 5_000;
        let record = ConnectionRecord::from_state(&state, true, (40, 0), &BootClock::identity());
        assert_eq!(record.local, "10.0.0.1:40000");
        assert_eq!(record.remote, "127.0.0.1:8080");
        assert_eq!(record.comm, "curl");
        assert_eq!(record.connect_latency_us, Some(250));
        assert_eq!(record.end_ns, Some(900_000));
        assert_eq!(
            (record.bytes_sent_delta, record.bytes_received_delta),
            (60, 5_000)
        );
        let json = serde_json::to_string(&Record::Connection(record)).unwrap();
        assert!(json.starts_with(r#"{"kind":"connection","#), "{json}");
    }
}
