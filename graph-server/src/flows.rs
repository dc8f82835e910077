//! The most recent records as received, for `GET /api/v1/flows`.
use std::collections::VecDeque;

use crate::record::{Peer, Record};

/// Filters of `GET /api/v1/flows`; every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct FlowFilter {
    pub kind: Option<String>,
    /// Source or destination workload (or service hostname, or ip).
    pub workload: Option<String>,
    pub namespace: Option<String>,
    pub node: Option<String>,
    pub outcome: Option<String>,
    /// Only failed ones: error outcomes, 5xx and non-OK gRPC.
    pub error: Option<bool>,
    pub since_ns: u64,
    pub until_ns: u64,
    pub limit: usize,
}

#[derive(Debug)]
pub struct RecentRecords {
    records: VecDeque<Record>,
    capacity: usize,
    bytes: usize,
}

impl RecentRecords {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::new(),
            capacity,
            bytes: 0,
        }
    }

    pub fn push(&mut self, record: Record) {
        if self.records.len() == self.capacity
            && let Some(old) = self.records.pop_front()
        {
            self.bytes -= old.estimated_bytes();
        }
        if self.capacity > 0 {
            self.bytes += record.estimated_bytes();
            self.records.push_back(record);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Time of the oldest record kept.
    pub fn oldest_ns(&self) -> Option<u64> {
        self.records.front().map(Record::time_ns)
    }

    /// Drops records from the front while they are older than `t_ns`. Records arrive
    /// roughly in time order, so this is retention by arrival.
    pub fn evict_before(&mut self, t_ns: u64) -> usize {
        let mut freed = 0;
        while let Some(front) = self.records.front() {
            if front.time_ns() >= t_ns {
                break;
            }
            freed += front.estimated_bytes();
            self.records.pop_front();
        }
        self.bytes -= freed;
        freed
    }

    /// Newest first.
    pub fn query(&self, filter: &FlowFilter) -> Vec<&Record> {
        self.records
            .iter()
            .rev()
            .filter(|r| matches(r, filter))
            .take(filter.limit)
            .collect()
    }
}

fn peer_matches(peer: &Peer, name: &str) -> bool {
    peer.workload == name || peer.service == name || peer.ip == name || peer.pod == name
}

fn matches(record: &Record, f: &FlowFilter) -> bool {
    let t = record.time_ns();
    if t < f.since_ns || t > f.until_ns {
        return false;
    }
    if f.kind.as_deref().is_some_and(|k| k != record.kind()) {
        return false;
    }
    let (peers, node, outcome, failed) = match record {
        Record::Connection(c) => (
            None,
            None,
            c.outcome.as_str(),
            !matches!(c.outcome.as_str(), "closed" | "open"),
        ),
        Record::MeshFlow(m) => (
            Some((&m.source, &m.destination)),
            Some(m.node.as_str()),
            m.outcome.as_str(),
            !matches!(m.outcome.as_str(), "closed" | "open"),
        ),
        Record::Request(r) => (
            Some((&r.source, &r.destination)),
            Some(r.node.as_str()),
            "",
            r.is_error(),
        ),
    };
    if let Some(name) = &f.workload
        && !peers.is_some_and(|(s, d)| peer_matches(s, name) || peer_matches(d, name))
    {
        return false;
    }
    if let Some(ns) = &f.namespace
        && !peers.is_some_and(|(s, d)| &s.namespace == ns || &d.namespace == ns)
    {
        return false;
    }
    if f.node.as_ref().is_some_and(|n| Some(n.as_str()) != node) {
        return false;
    }
    if f.outcome.as_ref().is_some_and(|o| o != outcome) {
        return false;
    }
    f.error.is_none_or(|e| e == failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{SECOND, T0, flow, request};
    use crate::record::Outcome;

    #[test]
    fn keeps_the_newest_and_filters() {
        let mut recent = RecentRecords::new(3);
        recent.push(Record::Request(
            request("frontend", "checkout", T0, 100, 200).into(),
        ));
        recent.push(Record::MeshFlow(
            flow("checkout", "payments", T0 + SECOND, Outcome::Refused).into(),
        ));
        recent.push(Record::Request(
            request("frontend", "checkout", T0 + 2 * SECOND, 100, 503).into(),
        ));
        recent.push(Record::MeshFlow(
            flow("frontend", "checkout", T0 + 3 * SECOND, Outcome::Closed).into(),
        ));
        assert_eq!(recent.len(), 3);
        let all = FlowFilter {
            until_ns: u64::MAX,
            limit: 10,
            ..FlowFilter::default()
        };
        assert_eq!(recent.query(&all).len(), 3);
        let errors = FlowFilter {
            error: Some(true),
            ..all.clone()
        };
        let kinds: Vec<&str> = recent.query(&errors).iter().map(|r| r.kind()).collect();
        assert_eq!(kinds, ["request", "mesh_flow"]);
        let payments = FlowFilter {
            workload: Some("payments".into()),
            ..all.clone()
        };
        assert_eq!(recent.query(&payments).len(), 1);
        let bytes = recent.bytes();
        assert_eq!(
            recent.evict_before(T0 + 2 * SECOND + 1),
            bytes - recent.bytes()
        );
        assert_eq!(recent.len(), 2);
    }
}
