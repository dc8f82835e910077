//! Nothing to link against: this crate exists for its tests (`tests/manifests.rs`), which
//! parse the Helm chart under `helm/nephilia/` and the manifests under `kustomize/` into
//! Kubernetes API types and check the invariants the deployment promises (see
//! `deploy/README.md`).

/// Directory of the Helm chart.
pub const CHART_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/nephilia");

/// Directory of the `kubectl apply -k` manifests (the chart rendered with default values).
pub const KUSTOMIZE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kustomize");

/// The script that issues the mTLS certificates without cert-manager.
pub const ISSUE_CERTIFICATES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tls/issue-certificates.sh");
