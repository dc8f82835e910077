//! In-kernel failures the programs count in the `PROBE_FAILURES` per-CPU array.

/// Index into `PROBE_FAILURES`. Each program counts its own failures so a reader can
/// tell which hook lost data and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// `inet_sock_set_state`: the ring buffer had no room for an `Opened` event.
    SetStateRingBufferFull = 0,
    /// `inet_sock_set_state`: the `CONNECTIONS` map was full; the connection is not tracked.
    SetStateMapFull = 1,
    /// `inet_sock_set_state`: a kernel read (`bpf_probe_read_kernel`) failed.
    SetStateReadFailed = 2,
    /// `tcp_destroy_sock`: the ring buffer had no room for a `Closed` event.
    DestroyRingBufferFull = 3,
    /// `tcp_destroy_sock`: a kernel read failed.
    DestroyReadFailed = 4,
    /// `inet_sk_error_report`: a kernel read failed.
    ErrorReportReadFailed = 5,
    /// `tcp_receive_reset` or `tcp_retransmit_skb`: a kernel read failed.
    ResetReadFailed = 6,
    /// `l7_capture_*`: the L7 ring buffer had no room for a segment record.
    L7RingBufferFull = 7,
    /// `l7_capture_*`: a segment's payload was copied only in part (the per-connection
    /// budget or the per-segment cap); the rest reaches the parsers as a gap.
    L7OverBudget = 8,
    /// `l7_capture_*`: the per-CPU scratch or the budget map was unavailable.
    L7MapFull = 9,
    /// `l7_capture_*`: reading the packet (`bpf_skb_load_bytes`) failed.
    L7ReadFailed = 10,
}

impl ProbeFailure {
    /// Every counter, in index order.
    pub const ALL: [ProbeFailure; 11] = [
        ProbeFailure::SetStateRingBufferFull,
        ProbeFailure::SetStateMapFull,
        ProbeFailure::SetStateReadFailed,
        ProbeFailure::DestroyRingBufferFull,
        ProbeFailure::DestroyReadFailed,
        ProbeFailure::ErrorReportReadFailed,
        ProbeFailure::ResetReadFailed,
        ProbeFailure::L7RingBufferFull,
        ProbeFailure::L7OverBudget,
        ProbeFailure::L7MapFull,
        ProbeFailure::L7ReadFailed,
    ];

    /// Number of counters, the size of `PROBE_FAILURES`.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// (program, failure) as exported by the agent.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::SetStateRingBufferFull => ("inet_sock_set_state", "ring_buffer_full"),
            Self::SetStateMapFull => ("inet_sock_set_state", "map_full"),
            Self::SetStateReadFailed => ("inet_sock_set_state", "read_failed"),
            Self::DestroyRingBufferFull => ("tcp_destroy_sock", "ring_buffer_full"),
            Self::DestroyReadFailed => ("tcp_destroy_sock", "read_failed"),
            Self::ErrorReportReadFailed => ("inet_sk_error_report", "read_failed"),
            Self::ResetReadFailed => ("tcp_receive_reset", "read_failed"),
            Self::L7RingBufferFull => ("l7_capture", "ring_buffer_full"),
            Self::L7OverBudget => ("l7_capture", "over_budget"),
            Self::L7MapFull => ("l7_capture", "map_full"),
            Self::L7ReadFailed => ("l7_capture", "read_failed"),
        }
    }
}
