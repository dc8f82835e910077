use super::*;
use crate::fixture::{MS, SECOND, T0, flow, request};
use crate::record::Outcome;

const W: u64 = 10 * SECOND;

/// frontend → checkout (HTTP) and checkout → payments (TCP), healthy or with payments down
/// in bucket `b` (starting at T0 + b·10 s).
fn traffic(t: &mut Topology, b: u64, payments_down: bool) {
    let start = T0 + b * W;
    for i in 0..10 {
        let at = start + SECOND + i * 500 * MS;
        let status = if payments_down { 503 } else { 200 };
        t.add_request(&request("frontend", "checkout", at, 2000, status));
        let outcome = if payments_down {
            Outcome::Refused
        } else {
            Outcome::Closed
        };
        t.add_flow(&flow("checkout", "payments", at, outcome), at);
    }
}

#[test]
fn outage_opens_with_deepest_root_cause_and_closes_after_recovery() {
    let mut t = Topology::new(W);
    let mut detector = OutageDetector::new(HealthThresholds::default());
    traffic(&mut t, 0, false);
    traffic(&mut t, 1, true);
    traffic(&mut t, 2, true);
    traffic(&mut t, 3, false);
    traffic(&mut t, 4, false);
    detector.advance(&t, T0 + 2 * W + GRACE_NS);
    assert_eq!(detector.open_count(), 1, "bucket 1 failed");
    detector.advance(&t, T0 + 5 * W + GRACE_NS);
    assert_eq!(detector.open_count(), 0, "two healthy buckets close it");
    let outages = detector.list(0, u64::MAX);
    assert_eq!(outages.len(), 1);
    let o = outages[0];
    // The first refused connection (the first 503 ends 2 ms later): bucket 1 + 1 s.
    assert_eq!(o.start_ns, T0 + W + SECOND);
    assert_eq!(o.start, "2026-01-01T12:03:11.000Z");
    assert_eq!(o.end_ns, Some(T0 + 3 * W));
    assert_eq!(
        o.affected_edges,
        [
            AffectedEdge {
                source: "workload:shop:frontend".into(),
                target: "workload:shop:checkout".into()
            },
            AffectedEdge {
                source: "workload:shop:checkout".into(),
                target: "workload:shop:payments".into()
            },
        ]
    );
    assert_eq!(o.affected_workloads.len(), 3);
    assert_eq!(o.failures.get(ErrorKind::Refused), 20);
    assert_eq!(o.failures.get(ErrorKind::Http5xx), 20);
    assert_eq!(o.failures.total(), 40);
    assert_eq!(o.peak_error_rate, 1.0);
    let cause = o.root_cause.as_ref().unwrap();
    assert_eq!(cause.node, "workload:shop:payments");
    assert_eq!(cause.kind, ErrorKind::Refused);
    assert_eq!(cause.rate, 1.0);
    assert_eq!(
        cause.evidence,
        "payments refuses connections: 100 % refused since 12:03:11"
    );
}

#[test]
fn independent_failures_are_separate_outages() {
    let mut t = Topology::new(W);
    let mut detector = OutageDetector::new(HealthThresholds::default());
    for i in 0..4 {
        let at = T0 + SECOND + i * MS;
        t.add_flow(&flow("frontend", "checkout", at, Outcome::Timeout), at);
        t.add_flow(&flow("payments", "ledger", at, Outcome::Reset), at);
    }
    detector.advance(&t, T0 + W + GRACE_NS);
    let outages = detector.list(0, u64::MAX);
    assert_eq!(outages.len(), 2);
    let causes: Vec<&str> = outages
        .iter()
        .map(|o| o.root_cause.as_ref().unwrap().evidence.as_str())
        .collect();
    assert_eq!(
        causes,
        [
            "ledger resets connections: 100 % reset since 12:03:01",
            "checkout does not answer: 100 % of connections timed out since 12:03:01",
        ]
    );
}

#[test]
fn a_few_errors_below_the_threshold_open_nothing() {
    let mut t = Topology::new(W);
    let mut detector = OutageDetector::new(HealthThresholds::default());
    for i in 0..20 {
        let status = if i == 0 { 500 } else { 200 };
        t.add_request(&request("frontend", "checkout", T0 + i * MS, 100, status));
    }
    detector.advance(&t, T0 + 3 * W);
    assert_eq!(detector.list(0, u64::MAX).len(), 0);
}

#[test]
fn a_bucket_at_the_end_of_time_is_never_due_and_judging_goes_on() {
    let mut t = Topology::new(W);
    let mut detector = OutageDetector::new(HealthThresholds::default());
    traffic(&mut t, 0, true);
    // An agent's clock (or a hostile one) put a request at the end of u64 time: its
    // bucket's judging time does not fit in a u64.
    t.add_request(&request("frontend", "checkout", u64::MAX - SECOND, 1, 200));
    detector.advance(&t, T0 + 4 * W + GRACE_NS);
    assert_eq!(
        detector.open_count(),
        0,
        "bucket 0 opened it, 1 and 2 closed it"
    );
    // Outages after it still open: the detector neither wrapped around nor panicked.
    traffic(&mut t, 5, true);
    detector.advance(&t, T0 + 6 * W + GRACE_NS);
    assert_eq!(detector.open_count(), 1);
    let outages = detector.list(0, u64::MAX);
    assert_eq!(outages.len(), 2);
    assert_eq!(outages[0].start_ns, T0 + 5 * W + SECOND);
    assert_eq!(outages[1].end_ns, Some(T0 + W));
}
