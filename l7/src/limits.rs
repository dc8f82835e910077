//! Per-connection memory caps. Exceeding one counts an error and degrades the
//! parser (drops the oldest, or stops parsing the connection); nothing grows past them.

/// Caps on what one [`crate::ConnectionParser`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Buffered message head (HTTP/1 request/status line + headers, chunk trailers)
    /// or HTTP/2 header block (HEADERS + CONTINUATION) per direction.
    pub max_head_bytes: usize,
    /// HTTP/1 requests awaiting their response (pipelining, RFC 9112 §9.3.2).
    pub max_pending_requests: usize,
    /// HTTP/2 streams open at once (RFC 9113 §5.1.2; gRPC servers default to 100).
    pub max_streams: usize,
    /// Hard cap on each HPACK dynamic table, whatever SETTINGS_HEADER_TABLE_SIZE says.
    pub max_hpack_table_bytes: usize,
    /// Completed exchanges queued until the agent drains them.
    pub max_queued_exchanges: usize,
    /// Longest string kept for a path, authority or grpc-message.
    pub max_field_bytes: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_pending_requests: 64,
            max_streams: 128,
            max_hpack_table_bytes: 64 * 1024,
            max_queued_exchanges: 1024,
            max_field_bytes: 2048,
        }
    }
}
