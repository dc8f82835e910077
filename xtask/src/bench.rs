//! `cargo xtask bench …`: benchmarks that compare against a baseline in the same run.

use clap::Subcommand;

use crate::{run_command, step};

#[derive(Subcommand)]
pub enum Bench {
    /// Loopback connections/s and throughput with and without the probes attached.
    Probes,
    /// Requests/s through the testbed with and without L7 capture, then L7 parser
    /// throughput (MB/s) per protocol over the captured corpus.
    L7,
    /// Graph server ingest records/s per core and graph query latency at 100/1k/10k edges,
    /// then ingest with and without OTLP span export.
    Server,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    if let Bench::L7 = bench {
        step(
            "bench l7: requests/s through the testbed, alternating rounds without and with L7 capture",
        );
        run_command(crate::cargo().args([
            "bench",
            "--package",
            "nephilia-agent",
            "--bench",
            "l7",
        ]))?;
    }
    let (package, target, what) = match bench {
        Bench::Probes => (
            "nephilia-agent",
            "probes",
            "alternating rounds without and with the programs attached",
        ),
        Bench::L7 => (
            "nephilia-l7",
            "parsers",
            "parser throughput on the captured corpus",
        ),
        Bench::Server => (
            "nephilia-graph-server",
            "server",
            "ingest and graph queries at 100, 1 000 and 10 000 edges",
        ),
    };
    step(&format!("bench {target}: {what}"));
    run_command(crate::cargo().args(["bench", "--package", package, "--bench", target]))?;
    if let Bench::Server = bench {
        step("bench otlp: ingest with OTLP span export off and on, span preparation and encoding");
        run_command(crate::cargo().args(["bench", "--package", package, "--bench", "otlp"]))?;
    }
    Ok(())
}
