//! `nephilia-testbed`: bring a local ambient mesh up, tear it down, run commands in its
//! pods and inject faults into it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nephilia_testbed::mesh::{ControlRequest, send_control};
use nephilia_testbed::scenario::{Principal, parse_duration};
use nephilia_testbed::state::{self, MeshState};
use nephilia_testbed::{Fault, Mesh, Scenario, UpOptions};

#[derive(Parser)]
#[command(name = "nephilia-testbed", version, about)]
struct Cli {
    /// Directory of state files, metadata files and control sockets.
    #[arg(long, global = true, default_value = state::STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the mesh of a scenario and keep it running until Ctrl-C (or `down`).
    Up {
        #[arg(long)]
        scenario: PathBuf,
        /// Namespace name prefix (1-8 of [a-z0-9]).
        #[arg(long, default_value = "nt")]
        prefix: String,
        /// Where to write the ztunnel-shaped metadata file.
        #[arg(long)]
        metadata: Option<PathBuf>,
        /// Do not start the scenario's traffic and scheduled faults.
        #[arg(long)]
        no_schedule: bool,
        /// Start the traffic and the scheduled faults this long after the mesh is up
        /// (e.g. 5s: time for an observer to attach to the new pods).
        #[arg(long, value_parser = duration, conflicts_with = "no_schedule")]
        start_after: Option<Duration>,
    },
    /// Remove meshes (all of them, or the one with --prefix), even after a crash.
    Down {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        #[arg(long)]
        prefix: Option<String>,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Inject (or revert) a fault in a running mesh.
    Fault {
        #[arg(long, global = true)]
        prefix: Option<String>,
        /// Revert after this long (e.g. 30s).
        #[arg(long = "for", global = true, value_parser = duration)]
        duration: Option<Duration>,
        /// Revert the fault instead of injecting it.
        #[arg(long, global = true)]
        revert: bool,
        #[command(subcommand)]
        fault: FaultCommand,
    },
    /// Print the metadata file a scenario produces, without bringing it up.
    Metadata {
        #[arg(long)]
        scenario: PathBuf,
    },
    /// List running meshes.
    Status,
}

#[derive(Subcommand)]
enum FaultCommand {
    /// Stop a pod's app (connection refused, 503 at the tunnel).
    StopPod { pod: String },
    /// Drop every packet to a pod (timeouts).
    Blackhole { pod: String },
    /// Delay a pod's packets (netem).
    Latency { pod: String, ms: u64 },
    /// Answer a share of requests with 503 / UNAVAILABLE.
    ErrorRate { pod: String, rate: f64 },
    /// Deny callers from a namespace (and service account) to a workload: 401.
    Deny {
        #[arg(long)]
        from_namespace: String,
        #[arg(long)]
        from_service_account: Option<String>,
        #[arg(long)]
        to: String,
    },
    /// Reset every open tunnel to a pod.
    KillTunnel { pod: String },
    /// Revert every active fault.
    Clear,
    /// List active faults.
    Status,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("not a duration: {text}"))
}

fn main() -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            scenario,
            prefix,
            metadata,
            no_schedule,
            start_after,
        } => {
            let schedule = match (no_schedule, start_after) {
                (true, _) => Schedule::Never,
                (false, None) => Schedule::Now,
                (false, Some(delay)) => Schedule::After(delay),
            };
            up(&cli.state_dir, &scenario, &prefix, metadata, schedule)
        }
        Command::Down { prefix } => down(&cli.state_dir, prefix.as_deref()),
        Command::Exec {
            prefix,
            pod,
            command,
        } => exec(&cli.state_dir, prefix.as_deref(), &pod, &command),
        Command::Fault {
            prefix,
            duration,
            revert,
            fault,
        } => fault_command(&cli.state_dir, prefix.as_deref(), duration, revert, fault),
        Command::Metadata { scenario } => {
            let scenario = Scenario::from_file(&scenario)?;
            print!(
                "{}",
                nephilia_testbed::metadata::LocalConfig::from_scenario(&scenario).to_yaml()?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            for (path, state) in MeshState::all(&cli.state_dir) {
                match state {
                    Ok(state) => println!(
                        "{} scenario={} pid={} namespaces={} metadata={}",
                        state.prefix,
                        state.scenario,
                        state.pid,
                        state.namespaces.len(),
                        state.metadata.display()
                    ),
                    Err(error) => println!("{}: {error}", path.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// When `up` starts the scenario's traffic and faults.
enum Schedule {
    Now,
    After(Duration),
    Never,
}

fn up(
    state_dir: &std::path::Path,
    scenario: &std::path::Path,
    prefix: &str,
    metadata: Option<PathBuf>,
    schedule: Schedule,
) -> Result<ExitCode> {
    let scenario = Scenario::from_file(scenario)?;
    let mut options = UpOptions::new(prefix);
    options.state_dir = state_dir.to_owned();
    options.metadata = metadata;
    options.control_socket = true;
    options.run_schedule = matches!(schedule, Schedule::Now);
    let mesh = Mesh::up(scenario, options).context("bringing the mesh up")?;
    println!(
        "mesh {} is up: {} nodes, {} pods; metadata {}",
        mesh.prefix(),
        mesh.scenario().nodes.len(),
        mesh.scenario().pods.len(),
        mesh.metadata_path().display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        if let Schedule::After(delay) = schedule {
            println!("traffic and faults start in {delay:?}");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            if let Err(error) = mesh.start_schedule() {
                tracing::error!(%error, "cannot start the scenario's traffic");
                return Ok(());
            }
        }
        let mut report = tokio::time::interval(Duration::from_secs(10));
        report.tick().await;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = report.tick() => {
                    for counts in mesh.traffic() {
                        tracing::info!(
                            from = %counts.from, to = %counts.to, sent = counts.sent,
                            ok = counts.succeeded, failed = counts.failed, "traffic"
                        );
                    }
                }
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    drop(runtime);
    let removed = mesh.down();
    println!("removed {} namespaces", removed.namespaces.len());
    Ok(ExitCode::SUCCESS)
}

fn down(state_dir: &std::path::Path, prefix: Option<&str>) -> Result<ExitCode> {
    let states: Vec<MeshState> = match prefix {
        Some(prefix) => match MeshState::find(state_dir, Some(prefix)) {
            Ok(state) => vec![state],
            // No state file: still sweep namespaces carrying the prefix.
            Err(state::Error::NotUp(_)) => vec![MeshState {
                prefix: prefix.to_owned(),
                scenario: String::new(),
                pid: std::process::id(),
                namespaces: Vec::new(),
                pods: Vec::new(),
                metadata: state_dir.join(format!("{prefix}-metadata.yaml")),
                control_socket: Some(state_dir.join(format!("{prefix}.sock"))),
            }],
            Err(error) => return Err(error.into()),
        },
        None => MeshState::all(state_dir)
            .into_iter()
            .filter_map(|(path, state)| match state {
                Ok(state) => Some(state),
                Err(error) => {
                    eprintln!("skipping {}: {error}", path.display());
                    None
                }
            })
            .collect(),
    };
    let mut failed = false;
    for state in &states {
        let removed = state::remove(state_dir, state);
        println!(
            "{}: stopped {} process(es), removed {} namespaces",
            state.prefix,
            removed.processes.len(),
            removed.namespaces.len()
        );
        for failure in &removed.failures {
            eprintln!("  could not remove {failure}");
            failed = true;
        }
    }
    if states.is_empty() {
        println!("nothing is up");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn exec(
    state_dir: &std::path::Path,
    prefix: Option<&str>,
    pod: &str,
    command: &[String],
) -> Result<ExitCode> {
    let state = MeshState::find(state_dir, prefix)?;
    let Some(namespace) = state.pod_namespace(pod) else {
        bail!("mesh {} has no pod {pod}", state.prefix);
    };
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", namespace])
        .args(command)
        .status()
        .context("running ip netns exec")?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn fault_command(
    state_dir: &std::path::Path,
    prefix: Option<&str>,
    duration: Option<Duration>,
    revert: bool,
    command: FaultCommand,
) -> Result<ExitCode> {
    let state = MeshState::find(state_dir, prefix)?;
    let Some(socket) = &state.control_socket else {
        bail!("mesh {} has no control socket", state.prefix);
    };
    let fault = match command {
        FaultCommand::StopPod { pod } => Fault::StopPod { pod },
        FaultCommand::Blackhole { pod } => Fault::Blackhole { pod },
        FaultCommand::Latency { pod, ms } => Fault::Latency { pod, millis: ms },
        FaultCommand::ErrorRate { pod, rate } => Fault::ErrorRate { pod, rate },
        FaultCommand::Deny {
            from_namespace,
            from_service_account,
            to,
        } => Fault::Deny {
            from: Principal {
                namespace: from_namespace,
                service_account: from_service_account,
            },
            to,
        },
        FaultCommand::KillTunnel { pod } => Fault::KillTunnel { pod },
        FaultCommand::Clear => return control(socket, ControlRequest::Clear),
        FaultCommand::Status => return control(socket, ControlRequest::Status),
    };
    let request = if revert {
        ControlRequest::Revert { fault }
    } else {
        ControlRequest::Inject {
            fault,
            seconds: duration.map(|d| d.as_secs().max(1)),
        }
    };
    control(socket, request)
}

fn control(socket: &std::path::Path, request: ControlRequest) -> Result<ExitCode> {
    let response = send_control(socket, &request)
        .with_context(|| format!("talking to {}", socket.display()))?;
    println!("{}", response.message);
    for fault in &response.active_faults {
        println!("active: {}", serde_json::to_string(fault)?);
    }
    Ok(if response.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
