//! `nephilia-agent run`: streams records to the graph server over gRPC.
//!
//! Delivery is at least once within a bounded buffer, and exactly once into the store:
//! - the observe loop puts records in an [`Outbox`] (bounded; when full, new records are
//!   counted as `unsent_records` and reported in the next heartbeat, never silently lost);
//! - each gRPC stream lives at most `STREAM_LIFETIME`, then the agent closes its side and
//!   the server's `ReportSummary.last_sequence` acknowledges the batches it kept;
//! - batches not acknowledged (server restarted, network cut, server silent past
//!   `ACK_TIMEOUT`) are sent again on the next stream, after a reconnect with jittered
//!   exponential backoff; the server drops the ones it already kept (node, agent instance
//!   and sequence name a batch);
//! - when observation stops (SIGTERM), the outbox is closed and delivered, within
//!   `FLUSH_TIMEOUT`, before the agent exits.

pub mod convert;
pub mod delivery;
pub mod outbox;

use std::{sync::Arc, time::Duration};

use nephilia_proto::v1::{AgentMessage, Heartbeat};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

pub use delivery::{ACK_TIMEOUT, STREAM_LIFETIME, run};
pub use outbox::Outbox;

/// How long a stopping agent keeps delivering what its outbox holds.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the reporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--server` is not a URL tonic accepts.
    #[error(
        "--server {url:?} is not a valid URL (expected http://host:9697 or https://…): {source}"
    )]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read {flag} file {path}: {source}")]
    TlsFile {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    /// The eBPF programs could not be loaded.
    #[error("loading the eBPF programs (try `nephilia-agent check`): {0}")]
    Probes(#[from] crate::probes::Error),
    /// Observation stopped on an error.
    #[error("observing: {0}")]
    Observe(#[from] crate::observe::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `--tls-cert/--tls-key/--tls-ca`: mutual TLS towards the server.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

/// How the reporter runs.
#[derive(Clone, Debug)]
pub struct ReporterOptions {
    pub server: String,
    pub node: String,
    pub tls: Option<TlsFiles>,
    /// Records per batch.
    pub batch_records: usize,
    /// Records the outbox holds while the server is unreachable.
    pub buffer_records: usize,
    /// A partial batch is sent after this long.
    pub flush_interval: Duration,
}

impl ReporterOptions {
    pub fn new(server: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            node: node.into(),
            tls: None,
            batch_records: 500,
            buffer_records: 100_000,
            flush_interval: Duration::from_millis(500),
        }
    }
}

/// What the agent tells the server about itself in heartbeats.
#[derive(Clone, Debug, Default)]
pub struct AgentFacts {
    pub attached_programs: Vec<String>,
    pub kernel_release: String,
}

async fn endpoint(options: &ReporterOptions) -> Result<Endpoint> {
    let url_error = |source| Error::Url {
        url: options.server.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(options.server.clone())
        .map_err(url_error)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(delivery::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(delivery::KEEPALIVE_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        let read = |flag, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| Error::TlsFile {
                flag,
                path: path.display().to_string(),
                source,
            })
        };
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("--tls-ca", &tls.ca)?))
            .identity(Identity::from_pem(
                read("--tls-cert", &tls.cert)?,
                read("--tls-key", &tls.key)?,
            ));
        endpoint = endpoint.tls_config(config).map_err(Error::Tls)?;
    }
    Ok(endpoint)
}

/// Checks the options (URL, TLS files) before anything runs.
pub async fn validate(options: &ReporterOptions) -> Result<()> {
    endpoint(options).await.map(|_| ())
}

fn heartbeat(options: &ReporterOptions, facts: &AgentFacts, outbox: &Outbox) -> AgentMessage {
    let state = outbox.lock();
    let mut drop_counters: std::collections::HashMap<String, u64> = state
        .probe_failures
        .iter()
        .map(|(failure, count)| {
            let (program, kind) = failure.labels();
            (format!("{program}_{kind}"), *count)
        })
        .collect();
    drop_counters.extend(state.agent_drops.iter().cloned());
    drop_counters.insert("unsent_records".into(), state.unsent);
    AgentMessage::heartbeat(Heartbeat {
        node: options.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: facts.kernel_release.clone(),
        attached_programs: facts.attached_programs.clone(),
        drop_counters,
        records_sent: state.sent,
        time_ns: crate::clock::BootClock::sample()
            .unix_ns(crate::clock::BootClock::monotonic_now_ns()),
        ..Heartbeat::current()
    })
}

/// What an observation that reported to the server ended with.
#[derive(Debug)]
pub struct Reported {
    pub summary: crate::observe::Summary,
    /// Records that could not be kept or that the server refused.
    pub unsent: u64,
    /// Records the server had not acknowledged when the agent gave up delivering
    /// (`FLUSH_TIMEOUT` after observation stopped); 0 when everything was delivered.
    pub still_queued: usize,
}

/// `nephilia-agent run`: loads and attaches the programs, observes with `options` and
/// streams every record to the server until `stop` resolves; then detaches the programs.
/// `ready` runs once everything is attached, before the first record is read.
pub async fn observe_and_report(
    reporter: ReporterOptions,
    mut options: crate::observe::ObserveOptions,
    stop: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<Reported> {
    validate(&reporter).await?;
    let outbox = Outbox::new(reporter.buffer_records);
    let failures = Arc::clone(&outbox);
    options.on_probe_failures = Some(Arc::new(move |counters: &[_]| {
        failures.set_probe_failures(counters.to_vec());
    }));
    let drops = Arc::clone(&outbox);
    options.on_agent_drops = Some(Arc::new(move |counters: &[_]| {
        drops.set_agent_drops(counters.to_vec());
    }));
    let mut probes = crate::probes::Probes::load()?;
    let facts = AgentFacts {
        attached_programs: probes.attached().iter().map(|p| (*p).to_owned()).collect(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    tracing::info!(server = %reporter.server, node = %reporter.node, "reporting to the graph server");
    let mut reporting = tokio::spawn(run(reporter, facts, Arc::clone(&outbox)));
    let queued = Arc::clone(&outbox);
    let sink = move |record| queued.push(&record);
    let observed =
        crate::observe::observe_when_ready(&mut probes, &options, stop, sink, ready).await;
    // Observation is over: nothing more comes in. Deliver what is left.
    outbox.close();
    match tokio::time::timeout(FLUSH_TIMEOUT, &mut reporting).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "reporting stopped"),
        Ok(Err(join)) => tracing::error!(%join, "report task failed"),
        Err(_) => {
            reporting.abort();
            tracing::warn!(
                still_queued = outbox.still_queued(),
                timeout = ?FLUSH_TIMEOUT,
                "the graph server did not take every record before the agent stopped"
            );
        }
    }
    Ok(Reported {
        summary: observed?,
        unsent: outbox.unsent(),
        still_queued: outbox.still_queued(),
    })
}
