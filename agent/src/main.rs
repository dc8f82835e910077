//! `nephilia-agent`: see `nephilia_agent` for the data path.
use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use nephilia_agent::{
    check,
    l7_capture::{L7Options, TrackerLimits, requests::DEFAULT_MEMORY_BUDGET_MIB},
    metadata::{MetadataSource, MetadataStore, kubernetes, static_file},
    observe::{self, ObserveOptions},
    probes::Probes,
    report::{self, ReporterOptions, TlsFiles},
};

#[derive(Parser)]
#[command(
    name = "nephilia-agent",
    version,
    about = "Nephilia node agent: eBPF observer for ambient-mode meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print records of what the kernel sees, one JSON object per line, on stdout.
    Observe {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
        /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Seconds between interim records of a long-lived connection.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
        interim_interval: f64,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Stream records to the graph server (what the DaemonSet runs).
    Run {
        /// The graph server's gRPC address, e.g. `http://nephilia-server.nephilia-system.svc:9697`.
        #[arg(long)]
        server: String,
        /// Client certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca.
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        /// Client key (PEM) for mutual TLS.
        #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
        tls_key: Option<PathBuf>,
        /// CA (PEM) that signed the server's certificate.
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_ca: Option<PathBuf>,
        /// Records kept while the server is unreachable; beyond, they are counted as unsent.
        #[arg(long, default_value_t = 100_000)]
        buffer_records: usize,
        /// Seconds between interim records of a long-lived connection.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
        interim_interval: f64,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// List the kernel features the agent needs and whether this node has them.
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
}

/// Where names come from and which node this is.
#[derive(clap::Args)]
struct MeshArgs {
    /// Metadata source: `static:FILE` (ztunnel local-config YAML), `kubernetes`, or `none`.
    #[arg(long, default_value = "none")]
    metadata: MetadataSource,
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// SPIFFE trust domain of the mesh (Kubernetes metadata).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Cluster DNS domain for service hostnames (Kubernetes metadata).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// L7 capture (`request` records) of `observe` and `run`: `mesh` (enrolled pods and pods from metadata),
    /// `all` (also `lo` of every other namespace) or `off`.
    #[arg(long, value_enum, default_value = "mesh")]
    l7_capture: nephilia_agent::l7_capture::CaptureMode,
    /// MiB all L7 parsers may hold together (HPACK tables, buffered heads and streams);
    /// beyond, the least recently seen connections are evicted and counted.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = DEFAULT_MEMORY_BUDGET_MIB,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    l7_memory_budget_mib: u16,
    /// How the L7 capture attaches: `auto` (TCX links on Linux 6.6+, else netlink),
    /// `tcx`, or `netlink` (filters on a `clsact` qdisc).
    #[arg(long, value_enum, default_value = "auto")]
    tc_attach: nephilia_agent::l7_capture::TcAttachMode,
}

impl MeshArgs {
    fn l7(&self) -> L7Options {
        L7Options {
            mode: self.l7_capture,
            attach: self.tc_attach,
            limits: TrackerLimits {
                memory_budget_bytes: usize::from(self.l7_memory_budget_mib) << 20,
                ..TrackerLimits::default()
            },
            ..L7Options::default()
        }
    }

    /// Starts the metadata source; Kubernetes keeps watching in the background.
    async fn start(&self) -> anyhow::Result<MetadataStore> {
        let store = match self.metadata {
            MetadataSource::None => MetadataStore::default(),
            _ => MetadataStore::awaiting_first_load(),
        };
        match &self.metadata {
            MetadataSource::None => {}
            MetadataSource::Static(path) => {
                static_file::watch(path.clone(), store.clone()).await?;
            }
            MetadataSource::Kubernetes => {
                anyhow::ensure!(
                    !self.node_name.is_empty(),
                    "--metadata kubernetes needs --node-name (or NODE_NAME)"
                );
                let client = kubernetes::client().await?;
                let options = kubernetes::ClusterOptions {
                    node: self.node_name.clone(),
                    trust_domain: self.trust_domain.clone(),
                    cluster_domain: self.cluster_domain.clone(),
                };
                let watched = store.clone();
                tokio::spawn(async move {
                    if let Err(error) = kubernetes::watch(client, options, watched).await {
                        tracing::error!(%error, "kubernetes metadata stopped");
                    }
                });
            }
        }
        Ok(store)
    }
}

fn seconds(value: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a positive number of seconds, got {value}"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check => return run_check(),
        Command::Observe {
            output: Output::Json,
            duration,
            interim_interval,
            mesh,
        } => run_observe(duration, interim_interval, mesh),
        Command::Run {
            server,
            tls_cert,
            tls_key,
            tls_ca,
            buffer_records,
            interim_interval,
            mesh,
        } => {
            let mut options = ReporterOptions::new(server, mesh.node_name.clone());
            options.buffer_records = buffer_records;
            if let (Some(cert), Some(key), Some(ca)) = (tls_cert, tls_key, tls_ca) {
                options.tls = Some(TlsFiles { cert, key, ca });
            }
            run_reporting(options, interim_interval, mesh)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nephilia-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_check() -> ExitCode {
    let findings = check::run();
    let mut missing = 0;
    for finding in &findings {
        match &finding.problem {
            None => println!("present  {}", finding.feature),
            Some(problem) => {
                missing += 1;
                println!("MISSING  {}\n         {problem}", finding.feature);
            }
        }
    }
    if missing == 0 {
        println!("\nThis node can run the Nephilia agent.");
        ExitCode::SUCCESS
    } else {
        println!(
            "\n{missing} required feature(s) missing: the agent cannot run here until they are provided."
        );
        ExitCode::FAILURE
    }
}

#[tokio::main]
async fn run_observe(
    duration: Option<f64>,
    interim_interval: f64,
    mesh: MeshArgs,
) -> anyhow::Result<()> {
    let options = ObserveOptions {
        duration: duration.map(|d| seconds(d, "duration")).transpose()?,
        interim_interval: seconds(interim_interval, "interim-interval")?,
        metadata: mesh.start().await?,
        node: mesh.node_name.clone(),
        l7: mesh.l7(),
        ..ObserveOptions::default()
    };
    let mut probes =
        Probes::load().context("loading the eBPF programs (try `nephilia-agent check`)")?;
    tracing::info!(attached = ?probes.attached(), "observing TCP connections");
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let mut write_failed = None;
    let summary = observe::observe(&mut probes, &options, shutdown_signal(), |record| {
        if write_failed.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut out, &record)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(error) = written {
            write_failed = Some(error);
        }
    })
    .await?;
    for (failure, count) in &summary.probe_failures {
        let (program, kind) = failure.labels();
        tracing::info!(program, kind, count, "in-kernel failure counter");
    }
    tracing::info!(
        records = summary.records,
        undecodable = summary.undecodable_events,
        "stopped; programs detached"
    );
    match write_failed {
        Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Some(error) => Err(error).context("writing records to stdout"),
        None => Ok(()),
    }
}

#[tokio::main]
async fn run_reporting(
    reporter: ReporterOptions,
    interim_interval: f64,
    mesh: MeshArgs,
) -> anyhow::Result<()> {
    report::validate(&reporter).await?;
    let options = ObserveOptions {
        interim_interval: seconds(interim_interval, "interim-interval")?,
        metadata: mesh.start().await?,
        node: mesh.node_name.clone(),
        l7: mesh.l7(),
        ..ObserveOptions::default()
    };
    let attached = || tracing::info!("programs attached; observing");
    let reported =
        report::observe_and_report(reporter, options, shutdown_signal(), attached).await?;
    tracing::info!(
        records = reported.summary.records,
        unsent = reported.unsent,
        still_queued = reported.still_queued,
        "stopped; programs detached"
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
