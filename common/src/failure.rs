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
}

impl ProbeFailure {
    /// Every counter, in index order.
    pub const ALL: [ProbeFailure; 7] = [
        ProbeFailure::SetStateRingBufferFull,
        ProbeFailure::SetStateMapFull,
        ProbeFailure::SetStateReadFailed,
        ProbeFailure::DestroyRingBufferFull,
        ProbeFailure::DestroyReadFailed,
        ProbeFailure::ErrorReportReadFailed,
        ProbeFailure::ResetReadFailed,
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
        }
    }
}
