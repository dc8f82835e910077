//! `cargo xtask`: the project's own commands. `setup` installs what building and testing
//! need (idempotently); `test`, `demo` and `bench` run it first. `fuzz` runs the libFuzzer
//! targets (it needs only nightly and cargo-fuzz, which it installs).
mod bench;
mod demo;
mod fuzz;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install Debian packages, the nightly rust-src component and bpf-linker; mount tracefs.
    Setup,
    /// Set up, then check formatting, lint (host and eBPF crates) and run every test.
    Test,
    /// Set up, build, and run a local ambient mesh with live traffic, the agent and the
    /// graph server; prints the UI's URL and runs until Ctrl-C.
    Demo {
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
    },
    /// Set up, then run a benchmark.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Run every libFuzzer target (L7 parsers, ingest batches) for some minutes each, from
    /// a random seed, keeping the corpus; installs cargo-fuzz if missing.
    Fuzz(fuzz::Fuzz),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            test()
        }
        Task::Demo { duration } => {
            setup::run()?;
            demo::run(duration.map(std::time::Duration::from_secs))
        }
        Task::Bench { bench } => {
            setup::run()?;
            bench::run(bench)
        }
        Task::Fuzz(args) => fuzz::run(args),
    }
}

/// Prints a step the way every task does.
pub fn step(message: &str) {
    eprintln!("\x1b[1m==> {message}\x1b[0m");
}

/// Runs a command from the workspace root, failing with the command line if it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test() -> anyhow::Result<()> {
    step("cargo fmt --check");
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy (host crates)");
    run_command(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo clippy (eBPF crate, bpfel-unknown-none)");
    run_command(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "nephilia-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]))?;
    verifier_margins()?;
    step("cargo test (privileged tests run one at a time: they share the kernel)");
    if !setup::is_root() {
        eprintln!("note: not root; privileged tests will skip unless CI is set");
    }
    run_command(cargo().args(["test", "--release", "--", "--test-threads=1"]))?;
    step("all checks and tests passed");
    Ok(())
}

/// Loads every eBPF program into this kernel (`nephilia-agent check`), prints its verifier
/// figures and fails when one leaves less than the margin (stack over 384 bytes,
/// instructions over half the verifier's limit). Needs root; outside CI it may skip.
fn verifier_margins() -> anyhow::Result<()> {
    step("eBPF programs: load each one and check its verifier margins (nephilia-agent check)");
    if !setup::is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("CI is set but this is not root: the eBPF programs cannot be loaded");
        }
        eprintln!(
            "skipped: not root, the programs cannot be loaded (the stack figures are still checked by the agent's unit tests)"
        );
        return Ok(());
    }
    run_command(cargo().args([
        "build",
        "--release",
        "-p",
        "nephilia-agent",
        "--bin",
        "nephilia-agent",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    run_command(Command::new(target.join("release/nephilia-agent")).arg("check"))
}
