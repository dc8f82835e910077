//! L7 requests without waypoints (issue 5): the TC programs of `ebpf/src/l7.rs` copy the
//! heads of the plaintext app ↔ ztunnel hop on each pod's `lo` (and of pods outside the
//! mesh on their interface); the parsers of `nephilia-l7` turn them into `request` records.
//!
//! - `namespaces`: finds network namespaces and what is in them;
//! - `attach`: attaches the programs where they are needed, detaches on drop;
//! - `clsact`: removes the `clsact` qdisc over rtnetlink (no `tc` binary needed);
//! - `segment`: decodes the ring buffer's records;
//! - `requests`: one parser per connection, exchanges → `RequestRecord`s.

pub mod attach;
pub mod clsact;
pub mod namespaces;
pub mod requests;
pub mod segment;

use std::time::Duration;

pub use attach::Attachments;
pub use requests::{RequestProtocol, RequestRecord, RequestTracker, TrackerLimits};

/// Which namespaces get the capture programs (`--l7-capture`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// No L7 capture.
    Off,
    /// Enrolled pods (ztunnel's outbound listener in the namespace) and namespaces that
    /// hold a pod IP from metadata.
    #[default]
    Mesh,
    /// `mesh`, plus `lo` of every namespace that is not the host's.
    All,
}

/// How TC programs are attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttachMode {
    /// TCX links on Linux 6.6+, else netlink with a `clsact` qdisc.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+): no qdisc, detached when the agent's descriptors close.
    Tcx,
    /// Netlink filters on a `clsact` qdisc (any kernel with clsact).
    Netlink,
}

/// How `observe` captures requests.
#[derive(Clone, Debug)]
pub struct L7Options {
    pub mode: CaptureMode,
    pub attach: TcAttachMode,
    /// How often namespaces are looked for (and gone ones detached).
    pub rescan_interval: Duration,
    pub limits: TrackerLimits,
}

impl Default for L7Options {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Mesh,
            attach: TcAttachMode::Auto,
            rescan_interval: Duration::from_secs(3),
            limits: TrackerLimits::default(),
        }
    }
}
