//! The agent's table of open connections, keyed by socket cookie. It turns the kernel's
//! `Opened`/`Closed` events into `connection` records and, for long-lived connections,
//! interim records with the bytes moved since the previous record.

use std::collections::HashMap;

use nephilia_common::{ConnectionEvent, ConnectionEventKind, ConnectionState};

use crate::{clock::BootClock, record::ConnectionRecord};

/// A ring-buffer record that is not a `ConnectionEvent`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The record is shorter or longer than a `ConnectionEvent`.
    #[error("connection event of {0} bytes, expected {expected}", expected = size_of::<ConnectionEvent>())]
    Size(usize),
    /// The record's kind is unknown.
    #[error("connection event of unknown kind {0}")]
    Kind(u32),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<(ConnectionEventKind, ConnectionState)> {
    if bytes.len() != size_of::<ConnectionEvent>() {
        return Err(Error::Size(bytes.len()));
    }
    // SAFETY: the length matches and `ConnectionEvent` is plain data valid for any bytes;
    // `read_unaligned` because ring-buffer records are only 8-byte aligned by contract.
    let event = unsafe { bytes.as_ptr().cast::<ConnectionEvent>().read_unaligned() };
    let kind = match event.kind {
        1 => ConnectionEventKind::Opened,
        2 => ConnectionEventKind::Closed,
        other => return Err(Error::Kind(other)),
    };
    Ok((kind, event.state))
}

struct OpenConnection {
    /// Kernel time the connection was last reported (opened, or last interim record).
    last_report_ns: u64,
    /// Byte totals in the last record.
    reported: (u64, u64),
    /// When the kernel map was first found without the connection: it closed, and its
    /// `Closed` event may still wait in the ring buffer.
    missing_since_ns: Option<u64>,
}

/// Open connections and what has been reported of them.
pub struct ConnectionTable {
    open: HashMap<u64, OpenConnection>,
    clock: BootClock,
    interim_interval_ns: u64,
}

impl ConnectionTable {
    pub fn new(clock: BootClock, interim_interval: std::time::Duration) -> Self {
        Self {
            open: HashMap::new(),
            clock,
            interim_interval_ns: interim_interval.as_nanos() as u64,
        }
    }

    /// Number of open connections being tracked.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Applies one kernel event. A `Closed` event yields the connection's final record;
    /// an `Opened` event a first sight of it (outcome `open`), which is not reported but
    /// lets the mesh-flow builder know the socket.
    pub fn apply(
        &mut self,
        kind: ConnectionEventKind,
        state: &ConnectionState,
    ) -> ConnectionRecord {
        match kind {
            ConnectionEventKind::Opened => {
                self.open.insert(
                    state.cookie,
                    OpenConnection {
                        last_report_ns: state.start_ns,
                        reported: (0, 0),
                        missing_since_ns: None,
                    },
                );
                ConnectionRecord::from_state(state, false, (0, 0), &self.clock)
            }
            ConnectionEventKind::Closed => {
                // An `Opened` event lost to a full ring buffer still gets its final record.
                let reported = self
                    .open
                    .remove(&state.cookie)
                    .map_or((0, 0), |open| open.reported);
                ConnectionRecord::from_state(state, true, reported, &self.clock)
            }
        }
    }

    /// The current view of an open connection from its live kernel state.
    pub fn live(&self, state: &ConnectionState) -> ConnectionRecord {
        let reported = self
            .open
            .get(&state.cookie)
            .map_or((0, 0), |open| open.reported);
        ConnectionRecord::from_state(state, false, reported, &self.clock)
    }

    /// Interim records for connections not reported for an interval. `lookup` reads a
    /// connection's current state from the kernel map; `None` means the kernel no longer
    /// has it: it closed. Its `Closed` event (which reports the rest of its bytes) may
    /// still be in the ring buffer, so the connection is forgotten only when that event has
    /// not come an interval later (lost to a full ring buffer).
    pub fn interim_records(
        &mut self,
        now_ns: u64,
        mut lookup: impl FnMut(u64) -> Option<ConnectionState>,
    ) -> Vec<ConnectionRecord> {
        let mut records = Vec::new();
        self.open.retain(|&cookie, open| {
            if now_ns.saturating_sub(open.last_report_ns) < self.interim_interval_ns {
                return true;
            }
            let Some(state) = lookup(cookie) else {
                let since = *open.missing_since_ns.get_or_insert(now_ns);
                return now_ns.saturating_sub(since) < self.interim_interval_ns;
            };
            records.push(ConnectionRecord::from_state(
                &state,
                false,
                open.reported,
                &self.clock,
            ));
            open.last_report_ns = now_ns;
            open.reported = (state.bytes_sent, state.bytes_received);
            true
        });
        records.sort_by_key(|record| record.cookie);
        records
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nephilia_common::Role;

    use super::*;
    use crate::record::Outcome;

    const SECOND: u64 = 1_000_000_000;

    fn state(cookie: u64, sent: u64, received: u64) -> ConnectionState {
        ConnectionState {
            cookie,
            start_ns: 10 * SECOND,
            established_ns: 10 * SECOND + 1_000,
            bytes_sent: sent,
            bytes_received: received,
            role: Role::Client as u8,
            ..ConnectionState::default()
        }
    }

    fn table() -> ConnectionTable {
        ConnectionTable::new(BootClock::identity(), Duration::from_secs(5))
    }

    #[test]
    fn decode_rejects_wrong_sizes_and_kinds() {
        assert_eq!(decode(&[0; 3]).unwrap_err(), Error::Size(3));
        let event = ConnectionEvent {
            kind: 9,
            _pad: 0,
            state: state(1, 0, 0),
        };
        // SAFETY: viewing a plain `#[repr(C)]` value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const event).cast::<u8>(),
                size_of::<ConnectionEvent>(),
            )
        };
        assert_eq!(decode(bytes).unwrap_err(), Error::Kind(9));
        let mut good = bytes.to_vec();
        good[0] = 2;
        let (kind, decoded) = decode(&good).unwrap();
        assert_eq!(kind, ConnectionEventKind::Closed);
        assert_eq!(decoded.cookie, 1);
    }

    #[test]
    fn interim_records_carry_deltas_and_final_record_the_rest() {
        let mut table = table();
        let opened = table.apply(ConnectionEventKind::Opened, &state(7, 0, 0));
        assert_eq!((opened.outcome, opened.end_ns), (Outcome::Open, None));
        // Too early: no interim record.
        assert!(
            table
                .interim_records(12 * SECOND, |_| Some(state(7, 100, 10)))
                .is_empty()
        );
        let first = table.interim_records(15 * SECOND, |_| Some(state(7, 100, 10)));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].outcome, Outcome::Open);
        assert_eq!(first[0].end_ns, None);
        assert_eq!(
            (first[0].bytes_sent_delta, first[0].bytes_received_delta),
            (100, 10)
        );
        let second = table.interim_records(20 * SECOND, |_| Some(state(7, 250, 10)));
        assert_eq!(
            (second[0].bytes_sent_delta, second[0].bytes_received_delta),
            (150, 0)
        );
        let mut closed = state(7, 300, 40);
        closed.close_ns = 21 * SECOND;
        let last = table.apply(ConnectionEventKind::Closed, &closed);
        assert_eq!(last.outcome, Outcome::Closed);
        assert_eq!((last.bytes_sent, last.bytes_received), (300, 40));
        assert_eq!((last.bytes_sent_delta, last.bytes_received_delta), (50, 30));
        assert!(table.is_empty());
    }

    #[test]
    fn connections_the_kernel_forgot_are_dropped_an_interval_later() {
        let mut table = table();
        table.apply(ConnectionEventKind::Opened, &state(1, 0, 0));
        assert!(table.interim_records(30 * SECOND, |_| None).is_empty());
        assert_eq!(table.len(), 1, "its Closed event may still come");
        assert!(table.interim_records(34 * SECOND, |_| None).is_empty());
        assert_eq!(table.len(), 1);
        assert!(table.interim_records(35 * SECOND, |_| None).is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn closed_event_after_the_kernel_forgot_reports_only_the_rest() {
        // An interim record, then the connection closes; the next interim round finds it
        // gone from the kernel map before its Closed event is read from the ring buffer.
        let mut table = table();
        table.apply(ConnectionEventKind::Opened, &state(7, 0, 0));
        let interim = table.interim_records(15 * SECOND, |_| Some(state(7, 1_000, 0)));
        assert_eq!(interim[0].bytes_sent_delta, 1_000);
        assert!(table.interim_records(20 * SECOND, |_| None).is_empty());
        let mut closed = state(7, 3_000, 0);
        closed.close_ns = 19 * SECOND;
        let last = table.apply(ConnectionEventKind::Closed, &closed);
        assert_eq!(
            (last.bytes_sent, last.bytes_sent_delta),
            (3_000, 2_000),
            "deltas add up to the total"
        );
        assert!(table.is_empty());
    }

    #[test]
    fn closed_without_opened_still_reports_totals() {
        let mut table = table();
        let record = table.apply(ConnectionEventKind::Closed, &state(3, 9, 8));
        assert_eq!(
            (record.bytes_sent_delta, record.bytes_received_delta),
            (9, 8)
        );
    }
}
