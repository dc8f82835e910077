//! One HTTP/2 stream (RFC 9113 §5.1) as an exchange in the making.

use super::grpc::{MessageCounter, percent_decode, split_path};
use crate::exchange::{Direction, L7Exchange, Protocol};
use crate::trace_context::{TraceHeaders, is_trace_header};

/// The fields of one decoded header block that matter.
#[derive(Debug, Default)]
pub(crate) struct HeaderFields {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub host: Option<String>,
    pub status: Option<u16>,
    pub grpc_content_type: bool,
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
    pub trace: TraceHeaders,
}

impl HeaderFields {
    /// Takes one decoded field; HPACK names are lower case on the wire (RFC 9113 §8.2.1).
    pub(crate) fn offer(&mut self, name: &[u8], value: &[u8], max_field: usize) {
        let text = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(max_field)]).into_owned();
        match name {
            b":method" => self.method = Some(text(value)),
            b":path" => self.path = Some(text(value)),
            b":authority" => self.authority = Some(text(value)),
            b"host" => self.host = Some(text(value)),
            b":status" => {
                self.status = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| v.len() == 3)
                    .and_then(|v| v.parse().ok())
            }
            // application/grpc, application/grpc+proto, application/grpc+json, …
            b"content-type" => self.grpc_content_type = value.starts_with(b"application/grpc"),
            b"grpc-status" => {
                self.grpc_status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            b"grpc-message" => {
                self.grpc_message = Some(percent_decode(&value[..value.len().min(max_field)]))
            }
            name if is_trace_header(name) => self.trace.offer(name, value),
            _ => {}
        }
    }
}

/// What a stream has seen so far.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub exchange: L7Exchange,
    pub final_response: bool,
    pub server_ended: bool,
    pub request_messages: MessageCounter,
    pub response_messages: MessageCounter,
}

impl Stream {
    /// A stream opened by the client's request headers.
    pub(crate) fn open(id: u32, fields: HeaderFields, start_ts: u64) -> Self {
        let grpc = fields.grpc_content_type;
        let path = fields.path.unwrap_or_default();
        let (grpc_service, grpc_method) = match grpc.then(|| split_path(&path)).flatten() {
            Some((s, m)) => (Some(s), Some(m)),
            None => (None, None),
        };
        Self {
            exchange: L7Exchange {
                protocol: if grpc {
                    Protocol::Grpc
                } else {
                    Protocol::Http2
                },
                method: fields.method.unwrap_or_default(),
                path,
                authority: fields.authority.or(fields.host),
                grpc_service,
                grpc_method,
                stream_id: Some(id),
                request_start_ns: start_ts,
                request_end_ns: start_ts,
                trace: fields.trace.resolve(),
                ..L7Exchange::default()
            },
            ..Self::default()
        }
    }

    /// Response headers, informational headers, or trailers from the server.
    pub(crate) fn response_headers(&mut self, fields: HeaderFields, start_ts: u64) {
        let e = &mut self.exchange;
        e.response_start_ns.get_or_insert(start_ts);
        if !self.final_response
            && let Some(status) = fields.status
        {
            // 1xx are interim (RFC 9113 §8.1); the final status comes later.
            if status >= 200 {
                e.status = Some(status);
                self.final_response = true;
            }
        }
        // grpc-status arrives in trailers, or in the only HEADERS of a
        // trailers-only response.
        if fields.grpc_status.is_some() {
            e.grpc_status = fields.grpc_status;
            e.grpc_message = fields.grpc_message;
        }
    }

    pub(crate) fn add_bytes(&mut self, direction: Direction, bytes: u64, ts: u64) {
        let e = &mut self.exchange;
        match direction {
            Direction::ClientToServer => {
                e.request_bytes += bytes;
                e.request_end_ns = ts.max(e.request_start_ns);
            }
            Direction::ServerToClient => {
                e.response_bytes += bytes;
                e.response_start_ns.get_or_insert(ts);
                e.response_end_ns = Some(ts);
            }
        }
    }

    pub(crate) fn messages(&mut self, direction: Direction) -> &mut MessageCounter {
        match direction {
            Direction::ClientToServer => &mut self.request_messages,
            Direction::ServerToClient => &mut self.response_messages,
        }
    }

    pub(crate) fn into_exchange(self) -> L7Exchange {
        let mut e = self.exchange;
        if e.protocol == Protocol::Grpc {
            e.request_messages = self.request_messages.messages;
            e.response_messages = self.response_messages.messages;
        }
        e
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.exchange.method.capacity()
            + self.exchange.path.capacity()
            + self.exchange.authority.as_ref().map_or(0, String::capacity)
            + self
                .exchange
                .grpc_message
                .as_ref()
                .map_or(0, String::capacity)
            + self
                .exchange
                .grpc_service
                .as_ref()
                .map_or(0, String::capacity)
            + self
                .exchange
                .grpc_method
                .as_ref()
                .map_or(0, String::capacity)
            + self.exchange.trace.as_ref().map_or(0, |_| 96)
    }
}
