//! Reads of kernel structs at offsets the agent resolved from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use nephilia_common::{
    KernelOffsets,
    connection::{Endpoint, FAMILY_IPV4, FAMILY_IPV6},
};

/// Written by the agent with `EbpfLoader::set_global` before the programs load.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    family: 0,
    daddr: 0,
    rcv_saddr: 0,
    dport: 0,
    num: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    net: 0,
    net_ns_inum: 0,
    protocol: 0,
    mark: 0,
    err: 0,
    srtt_us: 0,
    total_retrans: 0,
};

/// One offset from `KERNEL_OFFSETS`. The volatile read keeps the compiler from folding
/// the zero initialiser into the code: the loader patches `.rodata` at load time.
macro_rules! offset {
    ($field:ident) => {
        core::ptr::read_volatile(&raw const KERNEL_OFFSETS.$field) as usize
    };
}

/// A kernel read failed; the caller counts it.
pub struct ReadFailed;

/// Reads a `T` at `base + offset` in kernel memory.
///
/// # Safety
/// `base` must be a kernel pointer; `bpf_probe_read_kernel` tolerates bad addresses by
/// failing, which is reported as `ReadFailed`.
#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, ReadFailed> {
    // SAFETY: the helper validates the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }.map_err(|_| ReadFailed)
}

pub const IPPROTO_TCP: u16 = 6;

/// A `struct sock *` from a tracepoint argument.
#[derive(Clone, Copy)]
pub struct Sock(pub *const u8);

impl Sock {
    pub fn family(self) -> Result<u16, ReadFailed> {
        // SAFETY: `self.0` is a kernel socket pointer.
        unsafe { read(self.0, offset!(family)) }
    }

    pub fn protocol(self) -> Result<u16, ReadFailed> {
        // SAFETY: as above.
        unsafe { read(self.0, offset!(protocol)) }
    }

    pub fn mark(self) -> Result<u32, ReadFailed> {
        // SAFETY: as above.
        unsafe { read(self.0, offset!(mark)) }
    }

    pub fn error(self) -> Result<i32, ReadFailed> {
        // SAFETY: as above.
        unsafe { read(self.0, offset!(err)) }
    }

    /// Smoothed RTT in microseconds; the kernel stores it shifted left by 3.
    pub fn srtt_us(self) -> Result<u32, ReadFailed> {
        // SAFETY: the socket is a TCP socket, so `struct sock` is the head of `struct tcp_sock`.
        unsafe { read::<u32>(self.0, offset!(srtt_us)) }.map(|v| v >> 3)
    }

    pub fn total_retrans(self) -> Result<u32, ReadFailed> {
        // SAFETY: as above.
        unsafe { read(self.0, offset!(total_retrans)) }
    }

    /// Inode number of the socket's network namespace.
    pub fn netns(self) -> Result<u32, ReadFailed> {
        // SAFETY: `skc_net` holds a kernel `struct net *`.
        let net: *const u8 = unsafe { read(self.0, offset!(net)) }?;
        // SAFETY: `net` is a kernel pointer.
        unsafe { read(net, offset!(net_ns_inum)) }
    }

    /// Reads the (local, remote) endpoints into `local` and `remote` in place: callers pass
    /// map memory, so the two 24-byte values never sit on the 512-byte BPF stack.
    /// IPv4-mapped IPv6 sockets report the IPv6 form.
    pub fn read_endpoints(
        self,
        family: u16,
        local: &mut Endpoint,
        remote: &mut Endpoint,
    ) -> Result<(), ReadFailed> {
        local.family = family;
        remote.family = family;
        local.addr = [0; 16];
        remote.addr = [0; 16];
        // SAFETY: all reads are of `struct sock_common` fields of a kernel socket.
        unsafe {
            local.port = read(self.0, offset!(num))?;
            remote.port = u16::from_be(read(self.0, offset!(dport))?);
            let (local_addr, remote_addr) = match family {
                FAMILY_IPV4 => (
                    (offset!(rcv_saddr), &mut local.addr[..4]),
                    (offset!(daddr), &mut remote.addr[..4]),
                ),
                FAMILY_IPV6 => (
                    (offset!(v6_rcv_saddr), &mut local.addr[..]),
                    (offset!(v6_daddr), &mut remote.addr[..]),
                ),
                _ => return Ok(()),
            };
            for (offset, bytes) in [local_addr, remote_addr] {
                bpf_probe_read_kernel_buf(self.0.wrapping_add(offset), bytes)
                    .map_err(|_| ReadFailed)?;
            }
        }
        Ok(())
    }
}
