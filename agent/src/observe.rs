//! The agent's main loop: drains the ring buffer as the kernel fills it (woken by epoll,
//! never polling), keeps the connection table, emits interim records on a timer, and
//! watches the in-kernel failure counters.

use std::{future::Future, time::Duration};

use nephilia_common::{ConnectionEventKind, ProbeFailure};
use tokio::io::unix::AsyncFd;

use crate::{
    clock::BootClock,
    connection_table::{self, ConnectionTable},
    probes::{self, Probes},
    record::Record,
};

/// Longest time an event waits in the ring buffer before the agent reads it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// How `observe` runs.
#[derive(Clone, Debug)]
pub struct ObserveOptions {
    /// Stop after this long; `None` runs until `stop` resolves.
    pub duration: Option<Duration>,
    /// A connection open this long without a record gets an interim record.
    pub interim_interval: Duration,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        Self {
            duration: None,
            interim_interval: Duration::from_secs(5),
        }
    }
}

/// Why observation stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the programs' maps failed.
    #[error(transparent)]
    Probes(#[from] probes::Error),
    /// Waiting on the ring buffer failed.
    #[error("waiting for ring buffer events: {0}")]
    Poll(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one observation saw, for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Records handed to the sink.
    pub records: u64,
    /// Ring-buffer records that did not decode.
    pub undecodable_events: u64,
    /// In-kernel failure counters at the end.
    pub probe_failures: Vec<(ProbeFailure, u64)>,
}

/// Observes until `options.duration` elapses or `stop` resolves, handing every record to
/// `sink`.
pub async fn observe(
    probes: &mut Probes,
    options: &ObserveOptions,
    stop: impl Future<Output = ()>,
    mut sink: impl FnMut(Record),
) -> Result<Summary> {
    // SAFETY: the ring buffer owns its map's fd and keeps it open until it is dropped,
    // which happens with the `AsyncFd`.
    let mut events = unsafe { AsyncFd::register(probes.take_connection_events()?) }
        .map_err(std::io::Error::from)?;
    let mut table = ConnectionTable::new(BootClock::sample(), options.interim_interval);
    let mut summary = Summary::default();
    let mut emit = |record, summary: &mut Summary| {
        summary.records += 1;
        sink(record);
    };
    let deadline = async {
        match options.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    // Ticks at a fraction of the interval so a record is never late by more than that.
    let mut ticks = tokio::time::interval(options.interim_interval / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The programs wake the agent only when the ring buffer fills past a threshold
    // (`WAKEUP_THRESHOLD_BYTES` in ebpf/src/connection.rs); the rest is drained on this
    // timer, so a record is at most `DRAIN_INTERVAL` late.
    let mut drains = tokio::time::interval(DRAIN_INTERVAL);
    drains.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures_seen = probes.failures()?;

    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut ready = ready?;
                drain(ready.get_inner_mut(), &mut table, &mut summary, &mut emit);
                ready.clear_ready();
            }
            _ = drains.tick() => {
                drain(events.get_mut(), &mut table, &mut summary, &mut emit);
            }
            _ = ticks.tick() => {
                let connections = probes.connections()?;
                let now = BootClock::monotonic_now_ns();
                for record in table.interim_records(now, |cookie| connections.get(&cookie, 0).ok()) {
                    emit(Record::Connection(record), &mut summary);
                }
                let failures = probes.failures()?;
                warn_on_new_failures(&failures_seen, &failures);
                failures_seen = failures;
            }
            () = &mut stop => break,
            () = &mut deadline => break,
        }
    }
    // Whatever the kernel wrote before the stop still belongs to this observation.
    drain(events.get_mut(), &mut table, &mut summary, &mut emit);
    summary.probe_failures = probes.failures()?;
    Ok(summary)
}

fn drain(
    events: &mut aya::maps::RingBuf<aya::maps::MapData>,
    table: &mut ConnectionTable,
    summary: &mut Summary,
    emit: &mut impl FnMut(Record, &mut Summary),
) {
    while let Some(item) = events.next() {
        match connection_table::decode(&item) {
            Ok((kind, state)) => {
                if let Some(record) = table.apply(kind, &state) {
                    emit(Record::Connection(record), summary);
                } else if kind == ConnectionEventKind::Opened {
                    tracing::trace!(cookie = state.cookie, "connection opened");
                }
            }
            Err(error) => {
                summary.undecodable_events += 1;
                tracing::warn!(%error, "dropping undecodable ring buffer record");
            }
        }
    }
}

fn warn_on_new_failures(before: &[(ProbeFailure, u64)], after: &[(ProbeFailure, u64)]) {
    for (&(failure, old), &(_, new)) in before.iter().zip(after) {
        if new > old {
            let (program, kind) = failure.labels();
            tracing::warn!(program, kind, count = new - old, "in-kernel failures");
        }
    }
}

/// `observe` on a thread of its own, collecting records; for tests and benchmarks that
/// drive traffic from the calling thread.
pub struct BackgroundObserver {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<Observed>>>,
}

/// Every record of an observation, and its summary.
pub type Observed = (Vec<Record>, Summary);

impl BackgroundObserver {
    /// Loads and attaches the programs, and returns once they are attached.
    pub fn start(options: ObserveOptions) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), probes::Error>>();
        let thread = std::thread::Builder::new()
            .name("nephilia-observe".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut probes = match Probes::load() {
                        Ok(probes) => {
                            let _ = ready_tx.send(Ok(()));
                            probes
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return Ok((Vec::new(), Summary::default()));
                        }
                    };
                    let mut records = Vec::new();
                    let stop = async {
                        let _ = stopped.await;
                    };
                    let summary =
                        observe(&mut probes, &options, stop, |record| records.push(record)).await?;
                    Ok((records, summary))
                })
            })?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => match thread.join() {
                Ok(Err(error)) => Err(error),
                _ => Err(Error::Poll(std::io::Error::other("observer thread died"))),
            },
        }
    }

    /// Stops observing, detaches the programs and returns everything recorded.
    pub fn stop(mut self) -> Result<Observed> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Observed> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Poll(std::io::Error::other(
                "observer thread panicked",
            ))),
            None => Ok((Vec::new(), Summary::default())),
        }
    }
}

impl Drop for BackgroundObserver {
    /// Detaches the programs even when a test fails before calling `stop`.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
