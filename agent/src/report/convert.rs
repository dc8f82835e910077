//! The agent's records in the protocol's terms (proto/nephilia/v1/records.proto uses the
//! same field names).

use nephilia_proto::v1;

use crate::{
    l7_capture::{RequestProtocol, RequestRecord},
    mesh_flow::{FlowOutcome, MeshFlowRecord, MeshPath, Peer},
    record::{ConnectionRecord, ConnectionRole, Record},
};

pub fn record(record: &Record) -> v1::Record {
    match record {
        Record::Connection(connection) => self::connection(connection).into(),
        Record::MeshFlow(flow) => mesh_flow(flow).into(),
        Record::Request(request) => self::request(request).into(),
    }
}

fn role(role: ConnectionRole) -> i32 {
    match role {
        ConnectionRole::Client => v1::Role::Client,
        ConnectionRole::Server => v1::Role::Server,
    }
    .into()
}

fn outcome(outcome: FlowOutcome) -> i32 {
    match outcome {
        FlowOutcome::Closed => v1::Outcome::Closed,
        FlowOutcome::Reset => v1::Outcome::Reset,
        FlowOutcome::Refused => v1::Outcome::Refused,
        FlowOutcome::Timeout => v1::Outcome::Timeout,
        FlowOutcome::Unreachable => v1::Outcome::Unreachable,
        FlowOutcome::TunnelFailed => v1::Outcome::TunnelFailed,
        FlowOutcome::Open => v1::Outcome::Open,
    }
    .into()
}

fn connection(c: &ConnectionRecord) -> v1::Connection {
    v1::Connection {
        start_ns: c.start_ns,
        end_ns: c.end_ns,
        netns: c.netns,
        pid: c.pid,
        comm: c.comm.clone(),
        role: role(c.role),
        local: c.local.clone(),
        remote: c.remote.clone(),
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        outcome: outcome(FlowOutcome::from(c.outcome)),
        connect_latency_us: c.connect_latency_us,
        rtt_us: c.rtt_us,
        retransmits: c.retransmits,
        mark: c.mark,
        cookie: c.cookie,
        resets_sent: c.resets_sent,
        resets_received: c.resets_received,
        bytes_sent_delta: c.bytes_sent_delta,
        bytes_received_delta: c.bytes_received_delta,
        error: c.error.clone(),
    }
}

fn peer(p: &Peer) -> v1::Peer {
    v1::Peer {
        workload: p.workload.clone(),
        namespace: p.namespace.clone(),
        service_account: p.service_account.clone(),
        identity: p.identity.clone(),
        pod: p.pod.clone(),
        ip: p.ip.clone(),
        service: p.service.clone(),
        port: u32::from(p.port),
    }
}

fn mesh_flow(f: &MeshFlowRecord) -> v1::MeshFlow {
    v1::MeshFlow {
        start_ns: f.start_ns,
        end_ns: f.end_ns,
        side: role(f.side),
        source: Some(peer(&f.source)),
        original_destination: f.original_destination.clone(),
        destination: Some(peer(&f.destination)),
        path: match f.path {
            MeshPath::Hbone => v1::MeshPath::Hbone,
            MeshPath::Passthrough => v1::MeshPath::Passthrough,
            MeshPath::Direct => v1::MeshPath::Direct,
        }
        .into(),
        mtls: f.mtls,
        tunnel_setup_us: f.tunnel_setup_us,
        tunnel_reused: f.tunnel_reused,
        tunnel_connect_us: f.tunnel_connect_us,
        upstream_connect_us: f.upstream_connect_us,
        bytes_sent: f.bytes_sent,
        bytes_received: f.bytes_received,
        bytes_sent_delta: f.bytes_sent_delta,
        bytes_received_delta: f.bytes_received_delta,
        outcome: outcome(f.outcome),
        node: f.node.clone(),
    }
}

fn request(r: &RequestRecord) -> v1::Request {
    v1::Request {
        side: role(r.side),
        protocol: match r.protocol {
            RequestProtocol::Http1 => v1::Protocol::Http1,
            RequestProtocol::Http2 => v1::Protocol::Http2,
            RequestProtocol::Grpc => v1::Protocol::Grpc,
        }
        .into(),
        method: r.method.clone(),
        path: r.path.clone(),
        authority: r.authority.clone(),
        status: r.status.map(u32::from),
        grpc_status: r.grpc_status,
        grpc_message: r.grpc_message.clone(),
        start_ns: r.start_ns,
        end_ns: r.end_ns,
        latency_us: r.latency_us,
        request_bytes: r.request_bytes,
        response_bytes: r.response_bytes,
        trace_id: r.trace_id.clone(),
        span_id: r.span_id.clone(),
        parent_span_id: r.parent_span_id.clone(),
        source: Some(peer(&r.source)),
        destination: Some(peer(&r.destination)),
        local: r.local.clone(),
        remote: r.remote.clone(),
        pid: r.pid,
        node: r.node.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;

    #[test]
    fn open_connection_keeps_optional_fields_absent() {
        let record = ConnectionRecord {
            start_ns: 5,
            end_ns: None,
            netns: 7,
            pid: 9,
            comm: "curl".into(),
            role: ConnectionRole::Client,
            first_data_ns: None,
            local: "10.0.0.1:4000".into(),
            remote: "10.0.0.2:80".into(),
            bytes_sent: 10,
            bytes_received: 20,
            bytes_sent_delta: 1,
            bytes_received_delta: 2,
            outcome: Outcome::Open,
            connect_latency_us: None,
            rtt_us: 0,
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            mark: 0x539,
            error: None,
            cookie: 42,
        };
        let v1::Record {
            kind: Some(v1::record::Kind::Connection(c)),
        } = self::record(&Record::Connection(record))
        else {
            panic!("a connection record");
        };
        assert_eq!((c.end_ns, c.connect_latency_us), (None, None));
        assert_eq!(c.outcome, i32::from(v1::Outcome::Open));
        assert_eq!(
            (c.role, c.mark, c.cookie),
            (i32::from(v1::Role::Client), 0x539, 42)
        );
        assert_eq!((c.bytes_sent_delta, c.bytes_received_delta), (1, 2));
    }
}
