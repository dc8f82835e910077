//! Nephilia's kernel programs. Only portable hooks are used (BTF tracepoints here);
//! kprobes and fentry/fexit are not available on the nodes Nephilia targets.
//!
//! - `connection.rs`: the TCP connection lifecycle (`connection` records).
#![no_std]
#![no_main]
// `atomic_xadd` is the only atomic add the BPF target lowers (to `BPF_XADD`).
#![expect(internal_features, reason = "atomic_xadd is unstable")]
#![feature(core_intrinsics)]

mod connection;
mod kernel;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_probe_read_kernel` and the tracing helpers require a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
