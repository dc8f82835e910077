//! `cargo xtask fuzz`: runs every libFuzzer target of the project for a set time each,
//! one after the other, from a random seed (printed, so a run can be replayed with
//! `-seed=`), growing a corpus that is kept between runs (`<fuzz dir>/corpus/<target>`,
//! ignored by git). Needs the nightly toolchain; installs cargo-fuzz when it is missing.
//!
//! A crash, a panic or an input slower than [`INPUT_TIMEOUT_SECONDS`] stops that target
//! and leaves the input in `<fuzz dir>/artifacts/<target>/`; the others still run, and the
//! task fails at the end naming the targets that found something. Once fixed, such an
//! input goes to `<fuzz dir>/regressions/<target>/` (kept in git), which every run reads.
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{run_command, step, workspace_root};

/// One libFuzzer target: the crate holding the `fuzz/` directory, its name, and a seed
/// corpus kept in git (read, never written), if it has one.
struct Target {
    dir: &'static str,
    name: &'static str,
    seeds: Option<&'static str>,
}

const TARGETS: &[Target] = &[
    Target {
        dir: "l7",
        name: "connection",
        seeds: Some("tests/corpus"),
    },
    Target {
        dir: "l7",
        name: "http1",
        seeds: Some("tests/corpus"),
    },
    Target {
        dir: "l7",
        name: "http2",
        seeds: Some("tests/corpus"),
    },
    Target {
        dir: "graph-server",
        name: "batch",
        seeds: Some("fuzz/seeds/batch"),
    },
];

/// One input taking longer than this is a finding (a quadratic path, a loop).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct Fuzz {
    /// Minutes each target runs.
    #[arg(long, default_value_t = 1)]
    minutes: u64,
    /// Run only this target (connection, http1, http2, batch); repeatable.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

pub fn run(args: Fuzz) -> anyhow::Result<()> {
    for name in &args.targets {
        if !TARGETS.iter().any(|t| t.name == name) {
            bail!(
                "no fuzz target {name:?}; there are {}",
                TARGETS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    nightly()?;
    cargo_fuzz()?;
    let mut found = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        if !fuzz(target, args.minutes)? {
            found.push(format!(
                "{name} (input in {dir}/fuzz/artifacts/{name}/)",
                name = target.name,
                dir = target.dir
            ));
        }
    }
    if !found.is_empty() {
        bail!("fuzzing found failures in: {}", found.join(", "));
    }
    step("fuzzing found nothing");
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("cannot run rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|line| line.starts_with("nightly"))
    {
        bail!("cargo-fuzz needs the nightly toolchain: `rustup toolchain install nightly`");
    }
    Ok(())
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
fn cargo_fuzz() -> anyhow::Result<()> {
    let present = crate::cargo()
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(version) = present {
        step(&format!("{version}: present"));
        return Ok(());
    }
    step("cargo-fuzz: installing (a minute or two)");
    run_command(crate::cargo().args(["install", "--locked", "cargo-fuzz"]))
}

/// Runs one target for `minutes`; false when it found a failing input.
fn fuzz(target: &Target, minutes: u64) -> anyhow::Result<bool> {
    let root = workspace_root();
    let crate_dir = root.join(target.dir);
    let fuzz_dir = crate_dir.join("fuzz");
    same_versions_as_workspace(&root, &fuzz_dir)?;
    let corpus = fuzz_dir.join("corpus").join(target.name);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    // libFuzzer's seed is an unsigned int; 0 would mean "pick one" without telling us.
    let seed =
        (RandomState::new().hash_one(std::time::SystemTime::now()) % u64::from(u32::MAX)).max(1);
    step(&format!(
        "fuzz {}/{} for {minutes} min, seed {seed}, corpus {}",
        target.dir,
        target.name,
        corpus.display()
    ));
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz", "run"])
        // Overflow checks on: an overflow is a finding, not a silent wrap.
        .arg("--debug-assertions")
        // The code under test is safe Rust: AddressSanitizer would halve the speed to
        // look for what the compiler already rules out.
        .args(["--sanitizer", "none"])
        .arg(target.name)
        .arg(&corpus);
    if let Some(seeds) = target.seeds {
        command.arg(crate_dir.join(seeds));
    }
    // Inputs that once failed, kept in git: every run tries them first.
    let regressions = fuzz_dir.join("regressions").join(target.name);
    if regressions.is_dir() {
        command.arg(regressions);
    }
    command.arg("--").args([
        format!("-max_total_time={}", minutes * 60),
        format!("-seed={seed}"),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        "-print_final_stats=1".to_string(),
    ]);
    let status = command
        .current_dir(&crate_dir)
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    Ok(status.success())
}

/// Starts a fuzz crate's own lockfile (it is a workspace of its own) from the
/// workspace's, so it builds the same dependency versions the project tests.
fn same_versions_as_workspace(root: &Path, fuzz_dir: &Path) -> anyhow::Result<()> {
    let lock = fuzz_dir.join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(root.join("Cargo.lock"), &lock)
            .with_context(|| format!("cannot write {}", lock.display()))?;
    }
    Ok(())
}
