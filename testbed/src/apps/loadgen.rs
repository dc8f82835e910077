//! The load generator: a fixed number of requests (`rate × duration`) at a fixed pace,
//! at most [`MAX_IN_FLIGHT`] at once, and never past its deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::{AppContext, child_traceparent, client};
use crate::scenario::{MAX_RATE_PER_SECOND, MAX_TRAFFIC_DURATION, TrafficSpec};

/// Most requests of one traffic entry in flight at once; a tick with none free is skipped.
pub const MAX_IN_FLIGHT: usize = 64;

/// Counts of one traffic entry.
#[derive(Debug, Default)]
pub struct TrafficReport {
    pub from: String,
    pub to: String,
    sent: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    finished: AtomicU64,
}

/// A snapshot of a [`TrafficReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficCounts {
    pub from: String,
    pub to: String,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Ticks dropped because too many requests were in flight.
    pub skipped: u64,
    pub finished: bool,
}

impl TrafficReport {
    pub(crate) fn new(spec: &TrafficSpec) -> Self {
        Self {
            from: spec.from.clone(),
            to: spec.to.clone(),
            ..Self::default()
        }
    }

    pub fn counts(&self) -> TrafficCounts {
        TrafficCounts {
            from: self.from.clone(),
            to: self.to.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed) == 1,
        }
    }
}

pub(crate) async fn run(context: Arc<AppContext>, spec: TrafficSpec, report: Arc<TrafficReport>) {
    tokio::time::sleep(spec.start).await;
    let rate = spec.rate.clamp(1, MAX_RATE_PER_SECOND);
    let duration = spec.duration.min(MAX_TRAFFIC_DURATION);
    let total = (u128::from(rate) * duration.as_millis() / 1000).max(1) as u64;
    let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(1);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    for _ in 0..total {
        ticks.tick().await;
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            report.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        report.sent.fetch_add(1, Ordering::Relaxed);
        let context = context.clone();
        let report = report.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            // Like an ingress, the load generator starts a sampled trace per request.
            let outcome = client::call(
                &context.scenario,
                &context.grpc_channels,
                &context.pod.name,
                &spec.to,
                spec.protocol,
                Some(child_traceparent(None)),
            )
            .await;
            let counter = if outcome.is_success() {
                &report.succeeded
            } else {
                &report.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    // Wait for the last requests (each is bounded by the call timeout).
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    report.finished.store(1, Ordering::Relaxed);
}
