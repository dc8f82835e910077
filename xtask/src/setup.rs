//! `cargo xtask setup`: everything a fresh Debian machine needs to build, test and run
//! Nephilia. Each step checks first and only installs what is missing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{run_command, step};

/// Debian packages: LLVM 22 for bpf-linker; iproute2/iptables/procps for the network
/// namespaces of the tests and the testbed; Chromium (and an emoji font for the UI's
/// lock glyph) for the browser tests.
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

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        step(&format!("bpf-linker: present ({})", version.trim()));
        return Ok(());
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 (about a minute)"
    ));
    run_command(
        crate::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
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
