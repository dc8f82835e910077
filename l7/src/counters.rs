//! Counters every parser keeps, exported by the agent per connection or summed.

/// Why a parser dropped or could not interpret input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// An HTTP/1 request line, status line or header line that RFC 9112 rejects.
    MalformedHead,
    /// A message head or HTTP/2 header block larger than `max_head_bytes`.
    HeadTooLarge,
    /// A chunk-size line that is not hex (RFC 9112 §7.1) or overflows.
    MalformedChunk,
    /// Conflicting `Content-Length` values (RFC 9112 §6.3, item 5).
    InvalidContentLength,
    /// An HTTP/1 response with no request waiting for it.
    UnmatchedResponse,
    /// More pipelined HTTP/1 requests than `max_pending_requests`: oldest dropped.
    PendingOverflow,
    /// More HTTP/2 streams than `max_streams`: oldest dropped.
    StreamOverflow,
    /// More completed exchanges than `max_queued_exchanges`: oldest dropped.
    QueueOverflow,
    /// A frame that breaks RFC 9113 framing (bad preface, bad padding, CONTINUATION order).
    FrameViolation,
    /// An HPACK block that does not decode (RFC 7541); the table is out of sync.
    HpackError,
    /// Missing bytes where the parser cannot tell where the next message starts.
    LostSync,
    /// Missing bytes inside an HTTP/2 header-bearing frame: the connection is given up.
    Unrecoverable,
}

impl ParseErrorKind {
    /// Every kind, in the order of [`ParserCounters::errors`].
    pub const ALL: [Self; 12] = [
        Self::MalformedHead,
        Self::HeadTooLarge,
        Self::MalformedChunk,
        Self::InvalidContentLength,
        Self::UnmatchedResponse,
        Self::PendingOverflow,
        Self::StreamOverflow,
        Self::QueueOverflow,
        Self::FrameViolation,
        Self::HpackError,
        Self::LostSync,
        Self::Unrecoverable,
    ];

    /// Snake-case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedHead => "malformed_head",
            Self::HeadTooLarge => "head_too_large",
            Self::MalformedChunk => "malformed_chunk",
            Self::InvalidContentLength => "invalid_content_length",
            Self::UnmatchedResponse => "unmatched_response",
            Self::PendingOverflow => "pending_overflow",
            Self::StreamOverflow => "stream_overflow",
            Self::QueueOverflow => "queue_overflow",
            Self::FrameViolation => "frame_violation",
            Self::HpackError => "hpack_error",
            Self::LostSync => "lost_sync",
            Self::Unrecoverable => "unrecoverable",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// What one parser did with its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParserCounters {
    /// Errors by kind, indexed as [`ParseErrorKind::ALL`].
    pub errors: [u64; ParseErrorKind::ALL.len()],
    /// Bytes fed but not interpreted: resynchronisation, unknown protocol, after giving up.
    pub bytes_skipped: u64,
    /// Bytes announced missing (`gap` calls and sequence holes).
    pub bytes_missing: u64,
    /// Bytes dropped because their sequence range was already seen (retransmissions).
    pub bytes_retransmitted: u64,
    /// Exchanges handed to the queue (complete and incomplete).
    pub exchanges_emitted: u64,
    /// Of those, exchanges flagged `incomplete`.
    pub exchanges_incomplete: u64,
}

impl ParserCounters {
    /// Count of one error kind.
    pub fn error(&self, kind: ParseErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// Sum over all kinds.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub(crate) fn count(&mut self, kind: ParseErrorKind) {
        self.errors[kind.index()] += 1;
    }

    /// Adds another parser's counters (for per-node totals).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes_skipped += other.bytes_skipped;
        self.bytes_missing += other.bytes_missing;
        self.bytes_retransmitted += other.bytes_retransmitted;
        self.exchanges_emitted += other.exchanges_emitted;
        self.exchanges_incomplete += other.exchanges_incomplete;
    }
}
