//! A local Istio ambient mesh on one Linux machine, without Kubernetes.
//!
//! Nodes and pods are network namespaces ([`topology`]); a per-node [`proxy::HboneProxy`]
//! behaves as ztunnel does in in-pod mode (listeners 15001/15006/15008 inside each
//! enrolled pod, istio-cni redirect rules, `SO_MARK` 0x539, mTLS HBONE with SPIFFE
//! identities from a test CA, CONNECT pooling, 200/401/503); demo [`apps`] speak
//! HTTP/1.1 and gRPC; [`fault`]s are injected on purpose.
//!
//! From Rust: `Mesh::up(Scenario::from_file(path)?, UpOptions::unique())?` returns a
//! [`Mesh`] that removes everything it made when dropped. See `testbed/README.md`.

pub mod apps;
pub mod fault;
pub mod identity;
pub mod mesh;
pub mod metadata;
pub mod netns;
pub mod proxy;
pub mod scenario;
pub mod state;
pub mod topology;

pub use apps::CallOutcome;
pub use fault::Fault;
pub use mesh::{Mesh, UpOptions};
pub use proxy::{ProxyStats, TunnelEvent};
pub use scenario::{Protocol, Scenario};

/// Whether a test needing root (network namespaces, eBPF) can run here. In CI (`CI` set)
/// it must: not being root panics. Elsewhere it prints why it skips and returns false.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: privileged test must run as root in CI");
    }
    eprintln!("skipped {test}: needs root for network namespaces and eBPF (CI runs it as root)");
    false
}

/// Stops a runtime owned by a mesh component. Inside another runtime (e.g. a mesh dropped
/// from async code) blocking is not allowed, so its tasks are dropped in the background.
pub(crate) fn shutdown_runtime(runtime: tokio::runtime::Runtime) {
    if tokio::runtime::Handle::try_current().is_ok() {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    }
}
