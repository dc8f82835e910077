//! `nephilia-agent run`: streams records to the graph server over gRPC.
//!
//! Delivery is at least once within a bounded buffer:
//! - the observe loop puts records in an `Outbox` (bounded; when full, new records are
//!   counted as `unsent_records` and reported in the next heartbeat, never silently lost);
//! - each gRPC stream lives at most `STREAM_LIFETIME`, then the agent closes its side and
//!   the server's `ReportSummary.last_sequence` acknowledges the batches it kept;
//! - batches not acknowledged (server restarted, network cut) are sent again on the
//!   next stream, after a reconnect with exponential backoff.

pub mod convert;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use nephilia_common::ProbeFailure;
use nephilia_proto::{
    IngestClient,
    v1::{self, AgentMessage, Heartbeat},
};
use tokio::sync::{Notify, mpsc};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::record::Record;

/// How long one stream carries batches before it is closed for acknowledgement.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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

/// Records waiting to be sent, shared by the observe loop and the reporter.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
}

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<v1::Record>,
    capacity: usize,
    /// Records that could not be kept or were refused by the server.
    unsent: u64,
    sent: u64,
    /// In-kernel failure counters, refreshed by the observe loop.
    probe_failures: Vec<(ProbeFailure, u64)>,
    /// The agent's own drop counters (`observe::Summary::drop_counters`), likewise.
    agent_drops: Vec<(String, u64)>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutboxState {
                capacity,
                ..OutboxState::default()
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a record, or counts it as unsent when the buffer is full.
    pub fn push(&self, record: &Record) {
        let mut state = self.lock();
        if state.queue.len() >= state.capacity {
            state.unsent += 1;
            return;
        }
        state.queue.push_back(convert::record(record));
        let len = state.queue.len();
        drop(state);
        if len == 1 || len.is_multiple_of(64) {
            self.ready.notify_one();
        }
    }

    pub fn set_probe_failures(&self, failures: Vec<(ProbeFailure, u64)>) {
        self.lock().probe_failures = failures;
    }

    /// The agent's own drop counters for the next heartbeat.
    pub fn set_agent_drops(&self, drops: Vec<(String, u64)>) {
        self.lock().agent_drops = drops;
    }

    /// Records counted as unsent so far.
    pub fn unsent(&self) -> u64 {
        self.lock().unsent
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, max: usize) -> Vec<v1::Record> {
        let mut state = self.lock();
        let n = state.queue.len().min(max);
        state.queue.drain(..n).collect()
    }

    fn count_unsent(&self, records: usize) {
        self.lock().unsent += records as u64;
    }

    fn count_sent(&self, records: usize) {
        self.lock().sent += records as u64;
    }
}

async fn endpoint(options: &ReporterOptions) -> Result<Endpoint> {
    let url_error = |source| Error::Url {
        url: options.server.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(options.server.clone())
        .map_err(url_error)?
        .connect_timeout(Duration::from_secs(5))
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

/// Whether the server refused the batches themselves (resending cannot help).
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::FailedPrecondition
    )
}

/// What an observation that reported to the server ended with.
#[derive(Debug)]
pub struct Reported {
    pub summary: crate::observe::Summary,
    /// Records that could not be kept or that the server refused.
    pub unsent: u64,
    /// Records still waiting in the outbox when observation stopped.
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
    let reporting = tokio::spawn(run(reporter, facts, Arc::clone(&outbox)));
    let queued = Arc::clone(&outbox);
    let sink = move |record| queued.push(&record);
    let observed =
        crate::observe::observe_when_ready(&mut probes, &options, stop, sink, ready).await;
    reporting.abort();
    Ok(Reported {
        summary: observed?,
        unsent: outbox.unsent(),
        still_queued: outbox.len(),
    })
}

/// Sends the outbox's records until the process ends.
pub async fn run(options: ReporterOptions, facts: AgentFacts, outbox: Arc<Outbox>) -> Result<()> {
    let endpoint = endpoint(&options).await?;
    let mut backoff = Duration::from_millis(100);
    let mut sequence = 0u64;
    let mut unacknowledged: VecDeque<(u64, Vec<v1::Record>)> = VecDeque::new();
    loop {
        let channel: Channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(server = %options.server, %error, retry_in = ?backoff, "cannot reach the graph server");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut client = IngestClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(64);
        let call = tokio::spawn(async move {
            client
                .report(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // Every stream starts with a heartbeat, so the server hears from the node at least
        // every `STREAM_LIFETIME`.
        let mut open = tx.send(heartbeat(&options, &facts, &outbox)).await.is_ok();
        for (batch_sequence, records) in &unacknowledged {
            if !open {
                break;
            }
            open = tx
                .send(AgentMessage::batch(
                    options.node.clone(),
                    *batch_sequence,
                    records.clone(),
                ))
                .await
                .is_ok();
        }
        let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
        while open && tokio::time::Instant::now() < deadline {
            if outbox.len() < options.batch_records {
                let wait = options
                    .flush_interval
                    .min(deadline - tokio::time::Instant::now());
                let _ = tokio::time::timeout(wait, outbox.ready.notified()).await;
            }
            let records = outbox.take(options.batch_records);
            if records.is_empty() {
                continue;
            }
            sequence += 1;
            unacknowledged.push_back((sequence, records.clone()));
            open = tx
                .send(AgentMessage::batch(options.node.clone(), sequence, records))
                .await
                .is_ok();
        }
        drop(tx);
        match call.await {
            Ok(Ok(summary)) => {
                let last = summary.into_inner().last_sequence;
                let (acknowledged, pending): (Vec<_>, Vec<_>) =
                    unacknowledged.drain(..).partition(|(s, _)| *s <= last);
                outbox.count_sent(acknowledged.iter().map(|(_, r)| r.len()).sum());
                unacknowledged = pending.into();
                backoff = Duration::from_millis(100);
            }
            Ok(Err(status)) if refused(status.code()) => {
                let records: usize = unacknowledged.iter().map(|(_, r)| r.len()).sum();
                tracing::error!(%status, records, "the graph server refused batches; counted as unsent");
                outbox.count_unsent(records);
                unacknowledged.clear();
            }
            Ok(Err(status)) => {
                tracing::warn!(%status, retry_in = ?backoff, "stream to the graph server ended");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(join) => tracing::error!(%join, "report task failed"),
        }
        // Keep what is not acknowledged within the buffer bound.
        let capacity = options.buffer_records;
        while unacknowledged.iter().map(|(_, r)| r.len()).sum::<usize>() > capacity {
            if let Some((_, dropped)) = unacknowledged.pop_front() {
                outbox.count_unsent(dropped.len());
            }
        }
    }
}
