//! The agent's main loop: drains the ring buffers as the kernel fills them (woken by
//! epoll, never polling), keeps the connection table, emits interim records on a timer,
//! keeps the L7 capture attached in the pod namespaces, and watches the in-kernel failure
//! counters.

use std::{future::Future, time::Duration};

use nephilia_common::{ConnectionEventKind, ConnectionState, ProbeFailure};
use nephilia_l7::{ParseErrorKind, ParserCounters};
use tokio::io::unix::AsyncFd;

use crate::{
    background::Background,
    clock::BootClock,
    connection_table::{self, ConnectionTable},
    l7_capture::{self, Attachments, L7Options, RequestTracker, attach::Direction},
    mesh_flow::{
        FlowBuilder, MeshPorts,
        builder::{FlowCounters, FlowLimits},
    },
    metadata::MetadataStore,
    probes::{self, Probes},
    record::Record,
};

/// Longest time an event waits in the ring buffer before the agent reads it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// How `observe` runs.
#[derive(Clone)]
pub struct ObserveOptions {
    /// Stop after this long; `None` runs until `stop` resolves.
    pub duration: Option<Duration>,
    /// A connection open this long without a record gets an interim record.
    pub interim_interval: Duration,
    /// Names addresses in `mesh_flow` records.
    pub metadata: MetadataStore,
    /// The node's name, reported in `mesh_flow` records.
    pub node: String,
    /// ztunnel's ports and mark.
    pub mesh_ports: MeshPorts,
    /// Told the in-kernel failure counters at every interim tick (the reporter puts them
    /// in heartbeats).
    pub on_probe_failures: Option<ProbeFailureSink>,
    /// Told the agent's own drop counters (`Summary::drop_counters`) at every interim tick
    /// (the reporter puts them in heartbeats).
    pub on_agent_drops: Option<AgentDropSink>,
    /// L7 capture (`request` records).
    pub l7: L7Options,
}

/// Receives the in-kernel failure counters.
pub type ProbeFailureSink = std::sync::Arc<dyn Fn(&[(ProbeFailure, u64)]) + Send + Sync>;

/// Receives the agent's own drop counters, by the names heartbeats carry them under.
pub type AgentDropSink = std::sync::Arc<dyn Fn(&[(String, u64)]) + Send + Sync>;

impl Default for ObserveOptions {
    fn default() -> Self {
        Self {
            duration: None,
            interim_interval: Duration::from_secs(5),
            metadata: MetadataStore::default(),
            node: String::new(),
            mesh_ports: MeshPorts::default(),
            on_probe_failures: None,
            on_agent_drops: None,
            l7: L7Options::default(),
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
    /// L7 capture hooks attached at the end (namespace inode, interface, hook), all
    /// detached since.
    pub l7_hooks: Vec<(u64, String, Direction)>,
    /// What the L7 tracker did (evictions by cause among it).
    pub l7: l7_capture::requests::TrackerCounters,
    /// What the L7 parsers did, closed and evicted ones included.
    pub l7_parser: ParserCounters,
    /// L7 ring-buffer records that did not decode.
    pub undecodable_segments: u64,
    /// Sockets the mesh-flow builder forgot before they closed.
    pub flows: FlowCounters,
}

impl Summary {
    /// Every drop the agent itself made, named as heartbeats carry them (beside the
    /// in-kernel failure counters and `unsent_records`): records that did not decode,
    /// L7 connections evicted by cause, what the L7 parsers dropped by error kind
    /// (`l7_parser_stream_overflow`: streams beyond the cap, …), and mesh-flow sockets
    /// forgotten by cause. All of them are present, zeros included.
    pub fn drop_counters(&self) -> Vec<(String, u64)> {
        let mut counters = vec![
            ("undecodable_events".to_owned(), self.undecodable_events),
            (
                "l7_undecodable_segments".to_owned(),
                self.undecodable_segments,
            ),
            (
                "l7_evicted_connection_limit".to_owned(),
                self.l7.evicted_connection_limit,
            ),
            (
                "l7_evicted_memory_budget".to_owned(),
                self.l7.evicted_memory_budget,
            ),
        ];
        counters.extend(ParseErrorKind::ALL.iter().map(|kind| {
            (
                format!("l7_parser_{}", kind.as_str()),
                self.l7_parser.error(*kind),
            )
        }));
        counters.push((
            "mesh_flow_forgotten_idle".to_owned(),
            self.flows.forgotten_idle,
        ));
        counters.push((
            "mesh_flow_forgotten_capacity".to_owned(),
            self.flows.forgotten_capacity,
        ));
        counters
    }
}

type ConnectionsMap<'a> = aya::maps::HashMap<&'a aya::maps::MapData, u64, ConnectionState>;

/// Kernel events in, records out: connection table then mesh-flow builder.
struct Pipeline<S> {
    table: ConnectionTable,
    flows: FlowBuilder,
    requests: RequestTracker,
    summary: Summary,
    sink: S,
}

impl<S: FnMut(Record)> Pipeline<S> {
    fn emit(&mut self, record: Record) {
        self.summary.records += 1;
        (self.sink)(record);
    }

    /// Emits the flows whose sockets are all known.
    fn flush_flows(&mut self, connections: &ConnectionsMap) {
        let table = &self.table;
        let mut lookup = |cookie| {
            connections
                .get(&cookie, 0)
                .ok()
                .map(|state| table.live(&state))
        };
        for flow in self.flows.flush(&mut lookup) {
            self.emit(Record::MeshFlow(flow));
        }
    }

    fn drain(
        &mut self,
        events: &mut aya::maps::RingBuf<aya::maps::MapData>,
        connections: &ConnectionsMap,
    ) {
        while let Some(item) = events.next() {
            match connection_table::decode(&item) {
                Ok((kind, state)) => {
                    let record = self.table.apply(kind, &state);
                    let opened = kind == ConnectionEventKind::Opened;
                    self.flows.observe(&record, opened);
                    if !opened {
                        if record.end_ns.is_some() {
                            self.requests.connection_closed(&record);
                        }
                        self.emit(Record::Connection(record));
                    }
                }
                Err(error) => {
                    self.summary.undecodable_events += 1;
                    tracing::warn!(%error, "dropping undecodable ring buffer record");
                }
            }
        }
        self.flush_flows(connections);
    }

    /// Feeds captured segments to the parsers and emits the completed requests.
    fn drain_l7(&mut self, segments: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        self.requests.begin_drain();
        while let Some(item) = segments.next() {
            match l7_capture::segment::decode(&item) {
                Ok(segment) => self.requests.segment(&segment),
                Err(error) => {
                    self.summary.undecodable_segments += 1;
                    tracing::warn!(%error, "dropping undecodable L7 segment");
                }
            }
        }
        for request in self.requests.finish_drain() {
            self.emit(Record::Request(request));
        }
    }

    /// Brings the summary's counters up to date with the tracker and the builder.
    fn refresh_counters(&mut self) {
        self.summary.l7 = self.requests.counters().clone();
        self.summary.l7_parser = self.requests.parser_counters();
        self.summary.flows = self.flows.counters().clone();
    }

    fn interim(&mut self, connections: &ConnectionsMap) {
        let now = BootClock::monotonic_now_ns();
        let records = self
            .table
            .interim_records(now, |cookie| connections.get(&cookie, 0).ok());
        for record in records {
            self.flows.observe(&record, false);
            self.emit(Record::Connection(record));
        }
        self.flush_flows(connections);
    }
}

/// Observes until `options.duration` elapses or `stop` resolves, handing every record to
/// `sink`.
pub async fn observe(
    probes: &mut Probes,
    options: &ObserveOptions,
    stop: impl Future<Output = ()>,
    sink: impl FnMut(Record),
) -> Result<Summary> {
    observe_when_ready(probes, options, stop, sink, || {}).await
}

/// `observe`, calling `ready` once the L7 capture is attached in the namespaces present
/// at the start (before any record is read).
pub async fn observe_when_ready(
    probes: &mut Probes,
    options: &ObserveOptions,
    stop: impl Future<Output = ()>,
    sink: impl FnMut(Record),
    ready: impl FnOnce(),
) -> Result<Summary> {
    // SAFETY: the ring buffer owns its map's fd and keeps it open until it is dropped,
    // which happens with the `AsyncFd`.
    let mut events = unsafe { AsyncFd::register(probes.take_connection_events()?) }
        .map_err(std::io::Error::from)?;
    // SAFETY: as above.
    let mut segments =
        unsafe { AsyncFd::register(probes.take_l7_segments()?) }.map_err(std::io::Error::from)?;
    for leftover in l7_capture::attach::remove_leftovers() {
        tracing::info!(
            netns = leftover.netns,
            interface = leftover.interface,
            hook = ?leftover.direction,
            removed_clsact = leftover.removed_clsact,
            "removed an L7 capture filter a previous agent left"
        );
    }
    let mut attachments = Attachments::new(options.l7.mode, options.l7.attach, options.mesh_ports);
    rescan(&mut attachments, probes, &options.metadata);
    ready();
    let mut rescans = tokio::time::interval(options.l7.rescan_interval);
    rescans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescans.reset();
    let mut pipeline = Pipeline {
        table: ConnectionTable::new(BootClock::sample(), options.interim_interval),
        flows: FlowBuilder::with_limits(
            options.mesh_ports,
            options.node.clone(),
            options.metadata.clone(),
            FlowLimits::for_interim_interval(options.interim_interval),
        ),
        requests: RequestTracker::new(
            options.mesh_ports,
            options.node.clone(),
            options.metadata.clone(),
            BootClock::sample(),
            options.l7.limits.clone(),
        ),
        summary: Summary::default(),
        sink,
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
                pipeline.drain(ready.get_inner_mut(), &probes.connections()?);
                ready.clear_ready();
            }
            ready = segments.readable_mut() => {
                let mut ready = ready?;
                pipeline.drain_l7(ready.get_inner_mut());
                ready.clear_ready();
            }
            _ = drains.tick() => {
                pipeline.drain(events.get_mut(), &probes.connections()?);
                pipeline.drain_l7(segments.get_mut());
            }
            _ = rescans.tick() => rescan(&mut attachments, probes, &options.metadata),
            _ = ticks.tick() => {
                pipeline.interim(&probes.connections()?);
                let failures = probes.failures()?;
                warn_on_new_failures(&failures_seen, &failures);
                if let Some(sink) = &options.on_probe_failures {
                    sink(&failures);
                }
                failures_seen = failures;
                pipeline.refresh_counters();
                if let Some(sink) = &options.on_agent_drops {
                    sink(&pipeline.summary.drop_counters());
                }
            }
            () = &mut stop => break,
            () = &mut deadline => break,
        }
    }
    // Whatever the kernel wrote before the stop still belongs to this observation.
    pipeline.drain(events.get_mut(), &probes.connections()?);
    pipeline.drain_l7(segments.get_mut());
    let hooks = attachments.hooks();
    drop(attachments);
    pipeline.refresh_counters();
    let mut summary = pipeline.summary;
    summary.l7_hooks = hooks;
    summary.probe_failures = probes.failures()?;
    Ok(summary)
}

fn rescan(attachments: &mut Attachments, probes: &mut Probes, metadata: &MetadataStore) {
    let report = attachments.rescan(probes, &metadata.snapshot());
    for (netns, interface, hook) in &report.attached {
        tracing::debug!(netns, interface, ?hook, "L7 capture attached");
    }
    for netns in &report.detached_namespaces {
        tracing::debug!(netns, "network namespace gone: L7 capture detached");
    }
    for error in &report.errors {
        tracing::warn!(%error, "L7 capture not attached");
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
pub struct BackgroundObserver(Background<Result<Observed>>);

/// Every record of an observation, and its summary.
pub type Observed = (Vec<Record>, Summary);

impl BackgroundObserver {
    /// Loads and attaches the programs (the L7 capture in the namespaces present now), and
    /// returns once they are attached.
    pub fn start(options: ObserveOptions) -> Result<Self> {
        let observe = move |stop, ready| async move {
            let mut probes = Probes::load()?;
            let mut records = Vec::new();
            let summary = observe_when_ready(
                &mut probes,
                &options,
                stop,
                |record| records.push(record),
                ready,
            )
            .await?;
            Ok((records, summary))
        };
        match Background::start("nephilia-observe", observe) {
            Ok(background) => Ok(Self(background)),
            Err(ended) => Err(ended.err().unwrap_or_else(|| {
                Error::Poll(std::io::Error::other("observer stopped before attaching"))
            })),
        }
    }

    /// Stops observing, detaches the programs and returns everything recorded.
    pub fn stop(self) -> Result<Observed> {
        self.0.stop()
    }
}
