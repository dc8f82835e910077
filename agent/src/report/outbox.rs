//! Records waiting to be sent or acknowledged, shared by the observe loop (which pushes)
//! and the delivery loop (which takes batches and keeps them until the server acknowledges
//! them).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use nephilia_common::ProbeFailure;
use nephilia_proto::v1;
use tokio::sync::Notify;

use super::convert;
use crate::record::Record;

/// A batch sent on a stream whose summary has not acknowledged it yet.
#[derive(Clone, Debug)]
pub(super) struct SentBatch {
    pub(super) sequence: u64,
    pub(super) records: Vec<v1::Record>,
}

/// Records waiting to be sent, shared by the observe loop and the reporter.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    pub(super) ready: Notify,
}

#[derive(Default)]
pub(super) struct OutboxState {
    queue: VecDeque<v1::Record>,
    /// Sent, not acknowledged yet: sent again on the next stream.
    pub(super) unacknowledged: VecDeque<SentBatch>,
    capacity: usize,
    /// Records that could not be kept or were refused by the server.
    pub(super) unsent: u64,
    pub(super) sent: u64,
    /// In-kernel failure counters, refreshed by the observe loop.
    pub(super) probe_failures: Vec<(ProbeFailure, u64)>,
    /// The agent's own drop counters (`observe::Summary::drop_counters`), likewise.
    pub(super) agent_drops: Vec<(String, u64)>,
    /// Observation stopped: deliver what is left, then stop.
    closing: bool,
}

impl OutboxState {
    fn unacknowledged_records(&self) -> usize {
        self.unacknowledged.iter().map(|b| b.records.len()).sum()
    }
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

    pub(super) fn lock(&self) -> MutexGuard<'_, OutboxState> {
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

    /// No more records will come: the delivery loop sends what is left without waiting
    /// for a full batch, and ends once the server acknowledged everything.
    pub fn close(&self) {
        self.lock().closing = true;
        self.ready.notify_one();
    }

    pub(super) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Records counted as unsent so far.
    pub fn unsent(&self) -> u64 {
        self.lock().unsent
    }

    /// Records acknowledged by the server so far.
    pub fn sent(&self) -> u64 {
        self.lock().sent
    }

    /// Records waiting to be sent (not taken into a batch yet).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records not delivered yet: waiting, or sent without an acknowledgement.
    pub fn still_queued(&self) -> usize {
        let state = self.lock();
        state.queue.len() + state.unacknowledged_records()
    }

    /// Takes up to `max` records as batch `sequence`, kept as unacknowledged.
    pub(super) fn take(&self, max: usize, sequence: u64) -> Option<SentBatch> {
        let mut state = self.lock();
        let n = state.queue.len().min(max);
        if n == 0 {
            return None;
        }
        let batch = SentBatch {
            sequence,
            records: state.queue.drain(..n).collect(),
        };
        state.unacknowledged.push_back(batch.clone());
        Some(batch)
    }

    /// The batches sent and not acknowledged, oldest first.
    pub(super) fn unacknowledged(&self) -> Vec<SentBatch> {
        self.lock().unacknowledged.iter().cloned().collect()
    }

    /// The server kept every batch up to `last_sequence`.
    pub(super) fn acknowledge(&self, last_sequence: u64) {
        let mut state = self.lock();
        while state
            .unacknowledged
            .front()
            .is_some_and(|batch| batch.sequence <= last_sequence)
        {
            if let Some(batch) = state.unacknowledged.pop_front() {
                state.sent += batch.records.len() as u64;
            }
        }
    }

    /// The server refused the unacknowledged batches: resending cannot help, so they are
    /// counted as unsent. Returns how many records that was.
    pub(super) fn refuse_unacknowledged(&self) -> usize {
        let mut state = self.lock();
        let records = state.unacknowledged_records();
        state.unacknowledged.clear();
        state.unsent += records as u64;
        records
    }

    /// Keeps what is not acknowledged within the buffer bound, dropping the oldest
    /// batches (counted as unsent).
    pub(super) fn bound_unacknowledged(&self) {
        let mut state = self.lock();
        while state.unacknowledged_records() > state.capacity {
            if let Some(dropped) = state.unacknowledged.pop_front() {
                state.unsent += dropped.records.len() as u64;
            }
        }
    }
}
