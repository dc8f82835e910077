//! Payload segments the TC programs of `ebpf/src/l7.rs` copy for the L7 parsers.

use crate::connection::Endpoint;

/// Payload bytes one `L7Segment` carries at most. A longer segment (a GSO segment on `lo`
/// reaches 64 KiB) is copied as several records, up to `L7_CHUNKS_PER_SEGMENT`.
pub const L7_CHUNK_BYTES: usize = 2048;

/// Records one TCP segment yields at most: the per-segment copy cap is
/// `L7_CHUNK_BYTES * L7_CHUNKS_PER_SEGMENT` (16 KiB).
pub const L7_CHUNKS_PER_SEGMENT: u32 = 8;

/// Payload bytes copied per direction of a connection since the last turn (the other side
/// sent data). A request or response starts after a turn, so its head is always inside the
/// budget; a body longer than this is reported as a gap, not copied.
pub const L7_BUDGET_BYTES: u32 = 16 * 1024;

/// `L7Segment::hook`: the program ran on the egress of the interface.
pub const L7_HOOK_EGRESS: u8 = 1;
/// `L7Segment::hook`: the program ran on the ingress of the interface.
pub const L7_HOOK_INGRESS: u8 = 2;

/// `L7Segment::flags`: the segment's payload goes on past this record's bytes but no
/// further record of it follows (per-segment cap or budget): the rest is a gap.
pub const L7_FLAG_TRUNCATED: u8 = 1;

/// Size of an `L7Segment` without its payload: the ring buffer record of a segment is
/// this header followed by `captured` bytes.
pub const L7_SEGMENT_HEADER_BYTES: usize = core::mem::offset_of!(L7Segment, data);

/// One copied piece of a TCP segment's payload, with what the program knew of its
/// connection. In the ring buffer only the first `L7_SEGMENT_HEADER_BYTES + captured`
/// bytes are written.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L7Segment {
    /// `bpf_ktime_get_ns` when the program saw the segment.
    pub timestamp_ns: u64,
    /// Cookie of the socket that sent the segment (egress only; 0 when unknown).
    pub cookie: u64,
    /// Source of the packet (address and port as on the wire, port in host order).
    pub src: Endpoint,
    /// Destination of the packet.
    pub dst: Endpoint,
    /// The sending socket's own view of its peer (its `connect()` destination: for an
    /// app whose connection the mesh redirected, the original destination). Zero when
    /// the socket is not in `CONNECTIONS`.
    pub sender_remote: Endpoint,
    /// Network namespace inode of the sending socket; 0 when unknown.
    pub netns: u32,
    /// Process of the sending socket (`ConnectionState::pid`); 0 when unknown.
    pub pid: u32,
    /// `SO_MARK` of the sending socket; 0 when unknown.
    pub mark: u32,
    /// TCP sequence number of `data[0]`.
    pub seq: u32,
    /// TCP payload bytes of the whole segment.
    pub segment_len: u32,
    /// Offset of `data[0]` in the segment's payload.
    pub offset: u32,
    /// Bytes of `data` that were copied.
    pub captured: u32,
    /// Interface the program ran on (1 is `lo` in every namespace).
    pub ifindex: u32,
    /// `Role` of the sending socket as its `u8` value; 0 when unknown.
    pub sender_role: u8,
    /// `L7_HOOK_EGRESS` or `L7_HOOK_INGRESS`.
    pub hook: u8,
    /// `L7_FLAG_*` bits.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 5],
    /// The copied payload, `captured` bytes.
    pub data: [u8; L7_CHUNK_BYTES],
}

/// The connection key of the in-kernel copy budget, the same for both directions.
///
/// On `lo` the two directions of a redirected connection do not carry the same
/// addresses: the app's segments go to `127.0.0.1:15001` (nat `OUTPUT` rewrote the
/// destination), the proxy's replies come from the original destination (the reverse
/// rewrite happens in `POSTROUTING`, before TC egress). Their one common endpoint is the
/// client's, so when the sending socket's role is known the key is the client endpoint
/// (`addr_b`/`port_b` zero) and its namespace. Otherwise (pod interfaces, where there is
/// no such rewrite, and sockets older than the agent) it is both endpoints in a fixed
/// order (lower port first, then lower address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7FlowKey {
    /// Address of the client, or of the first endpoint (IPv4 in the first 4 bytes).
    pub addr_a: [u8; 16],
    /// Address of the second endpoint; zero when keyed by the client.
    pub addr_b: [u8; 16],
    /// Port of the client or the first endpoint, host order.
    pub port_a: u16,
    /// Port of the second endpoint, host order; zero when keyed by the client.
    pub port_b: u16,
    /// Namespace inode of the sending socket when keyed by the client, else 0.
    pub netns: u32,
}

/// What is left of a connection's copy budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Budget {
    /// Bytes still to copy from the client or endpoint a (index 0) and from the server or
    /// endpoint b (index 1).
    pub remaining: [u32; 2],
    /// Which side sent the last payload (0 or 1, as `remaining`).
    pub last_sender: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::L7Segment {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::L7FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::L7Budget {}
}
