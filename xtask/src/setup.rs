//! `cargo xtask setup`: everything a fresh Debian machine needs to build, test and run
//! Nephilia. Each step checks first and only installs what is missing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{run_command, step};

/// Debian packages: LLVM 22 for bpf-linker; iproute2/iptables/procps for the network
/// namespaces of the tests and the testbed; Chromium (and an emoji font for the UI's
/// lock glyph) for the browser tests; openssl for the chart's certificate script
/// (`deploy/tls/issue-certificates.sh`), which the deploy and ingest tests run.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "procps",
    "chromium",
    "fonts-noto-color-emoji",
    "openssl",
];

/// The bpf-linker release known to work with LLVM 22 and the aya 0.14 line.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    node()?;
    rust_src()?;
    bpf_linker()?;
    toolchain_versions()?;
    tracefs()?;
    step("setup complete");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", package]))
                .is_none_or(|status| !status.starts_with("ii"))
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    step(&format!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install {}` or run this as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run_command(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The web UI is built with npm by `graph-server/build.rs`: Node.js 20+ must be there.
fn node() -> anyhow::Result<()> {
    let version = output(Command::new("node").arg("--version"));
    let npm = output(Command::new("npm").arg("--version"));
    let major = version.as_deref().and_then(|v| {
        v.trim()
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match (major, npm) {
        (Some(major), Some(npm)) if major >= 20 => {
            step(&format!(
                "Node.js {} and npm {}: present",
                version.unwrap_or_default().trim(),
                npm.trim()
            ));
            return Ok(());
        }
        _ => {}
    }
    step("Node.js 20+ and npm: installing from Debian");
    if !is_root() {
        bail!(
            "Node.js 20+ and npm are needed to build the web UI: install them (`sudo apt-get install nodejs npm`)"
        );
    }
    run_command(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nodejs",
                "npm",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "the nightly toolchain is needed to build the eBPF programs and is not installed \
         (`rustup toolchain install nightly`)",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing (eBPF programs build core from source)");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// The Debian package bpf-linker links against; its version is what `setup` records.
const LLVM_PACKAGE: &str = "llvm-22-dev";

/// Where `setup` records which LLVM the installed bpf-linker was built against, beside the
/// binary. bpf-linker embeds LLVM: after a Debian point release of LLVM it must be rebuilt,
/// or the eBPF programs are compiled by one LLVM and checked against another's figures.
fn bpf_linker_stamp() -> Option<std::path::PathBuf> {
    let path = output(Command::new("which").arg("bpf-linker"))?;
    Some(Path::new(path.trim()).with_extension("nephilia-llvm"))
}

fn llvm_version() -> anyhow::Result<String> {
    output(Command::new("dpkg-query").args(["-W", "-f=${Version}", LLVM_PACKAGE]))
        .map(|version| version.trim().to_string())
        .with_context(|| format!("{LLVM_PACKAGE} is not installed"))
}

fn bpf_linker() -> anyhow::Result<()> {
    let llvm = llvm_version()?;
    let installed = output(Command::new("bpf-linker").arg("--version"));
    let built_against = bpf_linker_stamp()
        .and_then(|stamp| std::fs::read_to_string(stamp).ok())
        .map(|version| version.trim().to_string());
    match (&installed, &built_against) {
        (Some(version), Some(built)) if *built == llvm => {
            step(&format!(
                "bpf-linker: present ({}, built against {LLVM_PACKAGE} {built})",
                version.trim()
            ));
            return Ok(());
        }
        (Some(version), Some(built)) => step(&format!(
            "bpf-linker: {} was built against {LLVM_PACKAGE} {built}, now {llvm}: rebuilding \
             {BPF_LINKER_VERSION} (about a minute)",
            version.trim()
        )),
        (Some(version), None) => step(&format!(
            "bpf-linker: {} present but not built by setup (LLVM unknown): rebuilding \
             {BPF_LINKER_VERSION} against {LLVM_PACKAGE} {llvm} (about a minute)",
            version.trim()
        )),
        (None, _) => step(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: building against {LLVM_PACKAGE} {llvm} (about a minute)"
        )),
    }
    run_command(
        crate::cargo()
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    let stamp = bpf_linker_stamp().context("bpf-linker is not on PATH after `cargo install`")?;
    std::fs::write(&stamp, format!("{llvm}\n"))
        .with_context(|| format!("cannot write {}", stamp.display()))
}

/// Prints and records the versions the eBPF programs are built with, so a run's log says
/// which toolchain produced the verifier figures it shows.
fn toolchain_versions() -> anyhow::Result<()> {
    let versions = [
        (LLVM_PACKAGE, llvm_version()?),
        (
            "bpf-linker",
            output(Command::new("bpf-linker").arg("--version"))
                .unwrap_or_default()
                .trim()
                .trim_start_matches("bpf-linker ")
                .to_string(),
        ),
        (
            "nightly",
            output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
    ];
    let text: String = versions
        .iter()
        .map(|(what, version)| format!("{what}: {version}\n"))
        .collect();
    step(&format!(
        "eBPF toolchain: {}",
        versions
            .iter()
            .map(|(what, version)| format!("{what} {version}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let target = crate::workspace_root().join("target");
    std::fs::create_dir_all(&target)?;
    let path = target.join("ebpf-toolchain.txt");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn tracefs() -> anyhow::Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() {
        step("tracefs: mounted");
        return Ok(());
    }
    step("tracefs: mounting at /sys/kernel/tracing");
    if !is_root() {
        bail!("tracefs is not mounted: run `sudo mount -t tracefs tracefs /sys/kernel/tracing`");
    }
    run_command(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}
