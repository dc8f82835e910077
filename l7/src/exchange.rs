//! The record a parser emits for one request/response exchange.

use crate::trace_context::TraceContext;

/// Direction of a captured segment, seen from the TCP connection's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes sent by the side that opened the connection (requests).
    ClientToServer,
    /// Bytes sent by the side that accepted the connection (responses).
    ServerToClient,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Self {
        match self {
            Self::ClientToServer => Self::ServerToClient,
            Self::ServerToClient => Self::ClientToServer,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 1,
        }
    }
}

/// Application protocol of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1 (RFC 9112).
    #[default]
    Http1,
    /// HTTP/2 (RFC 9113) that is not gRPC.
    Http2,
    /// gRPC over HTTP/2 (`content-type: application/grpc*`).
    Grpc,
}

impl Protocol {
    /// Lower-case name used in `request` records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }
}

/// One L7 exchange: a request and (unless `incomplete`) its response.
///
/// Times are the capture timestamps of the segments that carried the bytes,
/// in the clock the agent feeds (monotonic ns in the agent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct L7Exchange {
    /// Protocol of the exchange.
    pub protocol: Protocol,
    /// Request method (`GET`, `POST`, …); `POST` for gRPC.
    pub method: String,
    /// Request target as sent (origin-form path with query, or `:path`).
    pub path: String,
    /// `path` without its query, variable segments replaced (see [`crate::PathTemplater`]).
    pub path_template: String,
    /// `Host` header (HTTP/1) or `:authority` (HTTP/2, falling back to `host`).
    pub authority: Option<String>,
    /// Final HTTP status; `None` when no response head was seen.
    pub status: Option<u16>,
    /// `grpc-status` from the trailers or a trailers-only response.
    pub grpc_status: Option<u32>,
    /// `grpc-message`, percent-decoded (gRPC over HTTP/2 protocol spec).
    pub grpc_message: Option<String>,
    /// `package.Service` of a gRPC path `/package.Service/Method`.
    pub grpc_service: Option<String>,
    /// `Method` of a gRPC path `/package.Service/Method`.
    pub grpc_method: Option<String>,
    /// HTTP/2 stream id; `None` for HTTP/1.
    pub stream_id: Option<u32>,
    /// Timestamp of the segment carrying the first request byte.
    pub request_start_ns: u64,
    /// Timestamp of the segment carrying the last request byte seen.
    pub request_end_ns: u64,
    /// Timestamp of the segment carrying the first response byte.
    pub response_start_ns: Option<u64>,
    /// Timestamp of the segment carrying the last response byte.
    pub response_end_ns: Option<u64>,
    /// First request byte → last response byte; `None` without a response end.
    pub latency_ns: Option<u64>,
    /// Request bytes on the wire: head + body (HTTP/1), frames of the stream (HTTP/2).
    pub request_bytes: u64,
    /// Response bytes on the wire, counted as `request_bytes`.
    pub response_bytes: u64,
    /// gRPC length-prefixed messages sent by the client (0 when not gRPC).
    pub request_messages: u32,
    /// gRPC length-prefixed messages sent by the server (0 when not gRPC).
    pub response_messages: u32,
    /// Trace context from `traceparent` or B3 headers of the request.
    pub trace: Option<TraceContext>,
    /// 5xx, non-zero gRPC status, RST_STREAM, or connection closed mid-response.
    pub error: bool,
    /// The response did not complete (connection closed, reset, lost to a gap).
    pub incomplete: bool,
}

impl L7Exchange {
    /// Fills `latency_ns` and `error` from the other fields.
    pub(crate) fn finish(&mut self) {
        self.latency_ns = self
            .response_end_ns
            .filter(|_| !self.incomplete)
            .map(|end| end.saturating_sub(self.request_start_ns));
        let server_error = self.status.is_some_and(|s| s >= 500);
        let grpc_error = self.grpc_status.is_some_and(|s| s != 0);
        self.error |= server_error || grpc_error || self.incomplete;
    }
}
