//! Builds the eBPF programs of `ebpf/` for the BPF target and leaves the object in
//! `OUT_DIR/nephilia`, which `probes.rs` embeds.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "nephilia-ebpf")
        .ok_or_else(|| anyhow!("the nephilia-ebpf package is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    rebuild_when_the_toolchain_changes();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// aya-build reruns when the eBPF sources change, not when the tools that compile them do.
/// A bpf-linker rebuilt against a newer LLVM (`cargo xtask setup` does that after a Debian
/// point release) or an updated nightly can change the programs' stack use, so either one
/// rebuilds them.
fn rebuild_when_the_toolchain_changes() {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(linker) = on_path("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    let nightly_rustc = std::process::Command::new("rustup")
        .args(["which", "rustc", "--toolchain", "nightly"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    if let Some(rustc) = nightly_rustc {
        println!("cargo:rerun-if-changed={rustc}");
    }
}
