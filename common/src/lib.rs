//! Records that cross the kernel boundary, defined once for both sides.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and no `bool`, so the
//! eBPF programs and the agent agree on its layout byte for byte.
#![no_std]

pub mod connection;
pub mod failure;
pub mod l7;
pub mod offsets;

pub use connection::{ConnectionEvent, ConnectionEventKind, ConnectionState, Endpoint, Role};
pub use failure::ProbeFailure;
pub use l7::{L7Budget, L7FlowKey, L7Segment};
pub use offsets::KernelOffsets;
