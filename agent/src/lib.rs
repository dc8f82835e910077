//! Nephilia's node agent.
//!
//! The data path, in order:
//! 1. `probes`: loads the kernel programs of `ebpf/` with offsets from `kernel_offsets`.
//! 2. `connection_table`: turns their ring-buffer events into `record::ConnectionRecord`s.
//! 3. `observe`: drives both and hands records to a sink (JSON lines on stdout).
//! 4. `metadata`: names the addresses (static file, Kubernetes or none).
//! 5. `mesh_flow`: joins the sockets of the app and the proxies into `mesh_flow` records.
//! 6. `report`: streams the records to the graph server (`nephilia-agent run`).
//! 7. `l7_capture`: copies the plaintext hop's heads on each pod's `lo` and parses them
//!    into `request` records.
//!
//! `check` tells whether this node can run any of it, and `verifier_figures` how much
//! room each program leaves under the verifier's limits.

pub mod background;
pub mod check;
pub mod clock;
pub mod connection_table;
pub mod kernel_offsets;
pub mod l7_capture;
pub mod mesh_flow;
pub mod metadata;
pub mod observe;
pub mod probes;
mod recency;
pub mod record;
pub mod report;
pub mod verifier_figures;
