//! `cargo xtask bench …`: benchmarks that compare against a baseline in the same run.

use clap::Subcommand;

use crate::{run_command, step};

#[derive(Subcommand)]
pub enum Bench {
    /// Loopback connections/s and throughput with and without the probes attached.
    Probes,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Probes => {
            step("bench probes: alternating rounds without and with the programs attached");
            run_command(crate::cargo().args([
                "bench",
                "--package",
                "nephilia-agent",
                "--bench",
                "probes",
            ]))
        }
    }
}
