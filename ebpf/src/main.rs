//! Nephilia's kernel programs. Only portable hooks are used (BTF tracepoints and TC
//! classifiers); kprobes and fentry/fexit are not available on the nodes Nephilia targets.
//!
//! - `connection.rs`: the TCP connection lifecycle (`connection` records).
//! - `l7.rs`: payload prefixes of the pod's plaintext hop for the L7 parsers (`request` records).
#![no_std]
#![no_main]
// `atomic_xadd` is the only atomic add the BPF target lowers (to `BPF_XADD`).
#![expect(internal_features, reason = "atomic_xadd is unstable")]
#![feature(core_intrinsics)]

mod connection;
mod kernel;
mod l7;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_probe_read_kernel` and the tracing helpers require a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
