//! Kernel struct field offsets, resolved in userspace from the running kernel's BTF.
//!
//! aya does not apply CO-RE relocations to Rust eBPF programs, so the agent looks the
//! offsets up in `/sys/kernel/btf/vmlinux` and hands them to the programs through the
//! `KERNEL_OFFSETS` global before loading them. Nothing here is hard-coded.

/// Byte offsets of the fields the programs read. All offsets are from the start of
/// `struct sock` (which begins with `struct sock_common`) unless noted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock.__sk_common.skc_family` (`u16`).
    pub family: u32,
    /// `sock.__sk_common.skc_daddr` (`__be32`).
    pub daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (`__be32`).
    pub rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (`__be16`).
    pub dport: u32,
    /// `sock.__sk_common.skc_num` (`u16`, host order).
    pub num: u32,
    /// `sock.__sk_common.skc_v6_daddr` (`struct in6_addr`).
    pub v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (`struct in6_addr`).
    pub v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net` (`possible_net_t`, a `struct net *`).
    pub net: u32,
    /// `net.ns.inum` (`unsigned int`), from the start of `struct net`.
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (`u16`).
    pub protocol: u32,
    /// `sock.sk_mark` (`u32`).
    pub mark: u32,
    /// `sock.sk_err` (`int`).
    pub err: u32,
    /// `tcp_sock.srtt_us` (`u32`, smoothed RTT << 3), from the start of `struct tcp_sock`.
    pub srtt_us: u32,
    /// `tcp_sock.total_retrans` (`u32`), from the start of `struct tcp_sock`.
    pub total_retrans: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data made of `u32`s.
unsafe impl aya::Pod for KernelOffsets {}
