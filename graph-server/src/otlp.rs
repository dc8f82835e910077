//! OTLP/gRPC export of trace spans to a collector (`--otlp-endpoint`: Jaeger, Tempo, an
//! OpenTelemetry Collector).
//!
//! Once a second the maintenance tick takes the spans of traces that have been quiet for
//! `--otlp-delay` from the trace store ([`crate::trace::export`] says why and when),
//! maps them ([`mapping`]) and puts them in a bounded queue. One task sends the queue in
//! batches of up to [`BATCH_SPANS`] with `TraceService/Export`, one batch at a time.
//!
//! Nothing is lost without being counted (`/metrics`):
//! - a failed call is retried with exponential backoff ([`FIRST_BACKOFF`] to
//!   [`MAX_BACKOFF`]) while the collector answers with a code the OTLP specification calls
//!   retryable (<https://opentelemetry.io/docs/specs/otlp/#failures>; a collector that
//!   cannot be reached is `UNAVAILABLE`); other codes drop the batch as `rejected`, and
//!   so do the spans a collector's partial success names;
//! - at most `--otlp-queue` spans wait, the batch being sent included; a span that finds
//!   the queue full pushes out the oldest span waiting behind that batch (`queue_full`),
//!   or is itself dropped when the batch in flight fills the whole queue;
//! - a span whose ids are not valid W3C ids is dropped as `invalid_id`, and one evicted
//!   from the store (retention, `--max-memory`) before its trace went quiet as `evicted`.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::http::Uri;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::trace::ExportSpan;

pub mod mapping;

use mapping::OtlpSpan;

/// Spans per `Export` call (the OpenTelemetry SDKs' default batch size).
pub const BATCH_SPANS: usize = 512;
/// Wait before the first retry of a failed call; doubled after each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of `/metrics`, since start.
#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_rejected: AtomicU64,
    dropped_invalid_id: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of the exporter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_rejected: u64,
    pub dropped_invalid_id: u64,
    /// `Export` calls that failed, each retry counted.
    pub failures: u64,
    /// Spans waiting or in the batch being sent.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<OtlpSpan>,
    /// Spans of the batch being sent or retried.
    in_flight: usize,
}

/// The queue between the trace store and the collector, and its counters.
#[derive(Debug)]
pub struct SpanExporter {
    /// The collector's address with timeouts and, for https://, TLS.
    channel: Endpoint,
    quiet_ns: u64,
    capacity: usize,
    queue: Mutex<Queue>,
    wake: Notify,
    counters: Counters,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// OTLP's retryable codes: the collector may take the same batch later.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

impl SpanExporter {
    /// `quiet` is `--otlp-delay`, `capacity` `--otlp-queue` (at least 1).
    /// Fails only when `tls` cannot be applied to the endpoint.
    pub fn new(
        endpoint: Uri,
        tls: Option<ClientTlsConfig>,
        quiet: Duration,
        capacity: usize,
    ) -> Result<Self, tonic::transport::Error> {
        let mut channel = Endpoint::from(endpoint)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if let Some(tls) = tls {
            channel = channel.tls_config(tls)?;
        }
        Ok(Self {
            channel,
            quiet_ns: u64::try_from(quiet.as_nanos()).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            counters: Counters::default(),
        })
    }

    pub fn endpoint(&self) -> &Uri {
        self.channel.uri()
    }

    /// How long a trace must be quiet before it is exported.
    pub fn quiet_ns(&self) -> u64 {
        self.quiet_ns
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> ExportStats {
        let c = &self.counters;
        let queued = {
            let q = self.queue();
            q.waiting.len() + q.in_flight
        };
        ExportStats {
            exported: c.exported.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_rejected: c.dropped_rejected.load(Ordering::Relaxed),
            dropped_invalid_id: c.dropped_invalid_id.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            queued,
        }
    }

    /// Maps `spans` and queues them for the sender, oldest first.
    pub fn enqueue(&self, spans: &[ExportSpan]) {
        if spans.is_empty() {
            return;
        }
        let mut mapped = Vec::with_capacity(spans.len());
        for span in spans {
            match mapping::span(span) {
                Ok(s) => mapped.push(s),
                Err(e) => {
                    add(&self.counters.dropped_invalid_id, 1);
                    tracing::debug!(error = %e, "span not exported");
                }
            }
        }
        let mut dropped = 0;
        {
            let mut q = self.queue();
            for span in mapped {
                if q.waiting.len() + q.in_flight >= self.capacity {
                    dropped += 1;
                    if q.waiting.pop_front().is_none() {
                        continue; // the batch in flight fills the queue: drop the newcomer
                    }
                }
                q.waiting.push_back(span);
            }
        }
        if dropped > 0 {
            add(&self.counters.dropped_queue_full, dropped);
            tracing::debug!(dropped, "OTLP queue full, oldest spans dropped");
        }
        self.wake.notify_one();
    }

    /// Waits for spans and takes up to [`BATCH_SPANS`] of them as the batch in flight.
    async fn next_batch(&self) -> Vec<OtlpSpan> {
        loop {
            {
                let mut q = self.queue();
                if !q.waiting.is_empty() {
                    let n = q.waiting.len().min(BATCH_SPANS);
                    q.in_flight = n;
                    return q.waiting.drain(..n).collect();
                }
            }
            // A notify_one between the check and here leaves a permit: no lost wake-up.
            self.wake.notified().await;
        }
    }

    fn finish_batch(&self) {
        self.queue().in_flight = 0;
    }

    /// Sends the queue to the collector until the task is aborted. The connection is
    /// made on the first call and remade after failures.
    pub async fn run(&self) {
        let mut client = TraceServiceClient::new(self.channel.connect_lazy());
        let endpoint = self.endpoint().to_string();
        let mut failing = false;
        loop {
            let batch = self.next_batch().await;
            let count = batch.len() as u64;
            let request = mapping::export_request(batch);
            let mut backoff = FIRST_BACKOFF;
            loop {
                match client.export(request.clone()).await {
                    Ok(response) => {
                        let partial = response.into_inner().partial_success;
                        let rejected = partial.as_ref().map_or(0, |p| {
                            u64::try_from(p.rejected_spans).unwrap_or(0).min(count)
                        });
                        add(&self.counters.exported, count - rejected);
                        if rejected > 0 {
                            add(&self.counters.dropped_rejected, rejected);
                            let message = partial.map(|p| p.error_message).unwrap_or_default();
                            tracing::warn!(%endpoint, rejected, %message, "OTLP collector rejected spans");
                        }
                        if failing {
                            tracing::info!(%endpoint, "OTLP export works again");
                            failing = false;
                        }
                        break;
                    }
                    Err(status) => {
                        add(&self.counters.failures, 1);
                        if !retryable(status.code()) {
                            add(&self.counters.dropped_rejected, count);
                            tracing::warn!(%endpoint, %status, dropped = count, "OTLP export refused; batch dropped");
                            break;
                        }
                        if !failing {
                            tracing::warn!(%endpoint, %status, "OTLP export failed; retrying with backoff");
                            failing = true;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.finish_batch();
        }
    }
}
