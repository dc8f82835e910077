//! Per-edge accumulators (one per edge per time bucket) and their window summaries.
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::HealthThresholds;

/// How a call or connection failed. Counted separately on every edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// HTTP status 500–599.
    Http5xx,
    /// gRPC status other than OK.
    GrpcError,
    /// The connection was refused (RST answered the SYN).
    Refused,
    /// The connection was reset after the handshake.
    Reset,
    /// The handshake or retransmissions timed out.
    Timeout,
    /// No route to the destination.
    Unreachable,
    /// The HBONE tunnel could not be set up.
    TunnelFailed,
}

impl ErrorKind {
    pub const ALL: [Self; 7] = [
        Self::Http5xx,
        Self::GrpcError,
        Self::Refused,
        Self::Reset,
        Self::Timeout,
        Self::Unreachable,
        Self::TunnelFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http5xx => "http_5xx",
            Self::GrpcError => "grpc_error",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::TunnelFailed => "tunnel_failed",
        }
    }

    /// Request-level kinds are rated against requests, the others against connections.
    pub fn is_request_level(self) -> bool {
        matches!(self, Self::Http5xx | Self::GrpcError)
    }
}

/// Counts per [`ErrorKind`], serialised as `{"http_5xx": 0, "grpc_error": 0, ...}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; 7]);

impl ErrorCounts {
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize]
    }

    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        self.0[kind as usize] += n;
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn request_errors(&self) -> u64 {
        self.get(ErrorKind::Http5xx) + self.get(ErrorKind::GrpcError)
    }

    pub fn connection_errors(&self) -> u64 {
        self.0.iter().sum::<u64>() - self.request_errors()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for ErrorCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(ErrorKind::ALL.len()))?;
        for kind in ErrorKind::ALL {
            map.serialize_entry(kind.as_str(), &self.get(kind))?;
        }
        map.end()
    }
}

/// Samples an edge keeps as a plain list before switching to a histogram.
const MAX_SAMPLES: usize = 64;

/// Samples kept in place, before a list is allocated.
const INLINE_SAMPLES: usize = 6;

/// A mergeable latency distribution: hdrhistogram with 2 significant digits (≤ 1 % error)
/// and u32 counts, auto-resizing so it only pays for the range its values span.
///
/// Most edges see few calls per bucket, and an hdrhistogram costs ~1–6 KiB and a scan of
/// its whole counts array to merge, whatever it holds. So a bucket keeps up to
/// [`MAX_SAMPLES`] raw values first and becomes a histogram past that; percentiles always
/// come out of an hdrhistogram, so numbers do not change meaning when an edge gets busy.
/// The first [`INLINE_SAMPLES`] values stay in place: a quiet edge then costs no
/// allocation when recorded and no pointer chase when a window reads it.
#[derive(Clone, Debug)]
pub enum Latency {
    Few {
        len: u8,
        values: [u32; INLINE_SAMPLES],
    },
    Samples(Vec<u32>),
    Histogram(Box<Histogram<u32>>),
}

/// Bucket boundaries only depend on the precision, so one histogram answers
/// `highest_equivalent` for all.
static TEMPLATE: std::sync::LazyLock<Histogram<u32>> = std::sync::LazyLock::new(histogram);

pub(super) fn histogram() -> Histogram<u32> {
    Histogram::new(2).expect("2 significant digits is a valid precision")
}

pub(super) fn record_into(h: &mut Histogram<u32>, us: u64) {
    // `record` grows the histogram (`saturating_record` would clamp to its current
    // range); it only fails past u64 index space, where clamping is the best answer.
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

impl Latency {
    fn new() -> Self {
        Self::Few {
            len: 0,
            values: [0; INLINE_SAMPLES],
        }
    }

    /// The recorded values, until they moved into a histogram.
    pub fn samples(&self) -> Option<&[u32]> {
        match self {
            Self::Few { len, values } => Some(&values[..usize::from(*len)]),
            Self::Samples(samples) => Some(samples),
            Self::Histogram(_) => None,
        }
    }

    fn record(&mut self, us: u64) {
        let value = u32::try_from(us).unwrap_or(u32::MAX);
        match self {
            Self::Few { len, values } if usize::from(*len) < INLINE_SAMPLES => {
                values[usize::from(*len)] = value;
                *len += 1;
            }
            Self::Few { values, .. } => {
                let mut samples = Vec::with_capacity(2 * INLINE_SAMPLES);
                samples.extend_from_slice(values);
                samples.push(value);
                *self = Self::Samples(samples);
            }
            Self::Samples(samples) if samples.len() < MAX_SAMPLES => samples.push(value),
            Self::Samples(samples) => {
                let mut h = histogram();
                for &v in samples.iter() {
                    record_into(&mut h, u64::from(v));
                }
                record_into(&mut h, us);
                *self = Self::Histogram(Box::new(h));
            }
            Self::Histogram(h) => record_into(h, us),
        }
    }

    fn merge(&mut self, other: &Self) {
        let Self::Histogram(b) = other else {
            // Value by value, so a list becomes a histogram where recording would.
            for &v in other.samples().unwrap_or_default() {
                self.record(u64::from(v));
            }
            return;
        };
        match self {
            // Both auto-resize, so adding never fails for range reasons.
            Self::Histogram(a) => {
                let _ = a.add(&**b);
            }
            _ => {
                let mut merged = (**b).clone();
                for &v in self.samples().unwrap_or_default() {
                    record_into(&mut merged, u64::from(v));
                }
                *self = Self::Histogram(Box::new(merged));
            }
        }
    }

    /// Bytes this distribution holds.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Few { .. } => size_of::<Self>(),
            Self::Samples(s) => size_of::<Self>() + s.capacity() * size_of::<u32>(),
            Self::Histogram(h) => {
                size_of::<Self>()
                    + size_of::<Histogram<u32>>()
                    + h.distinct_values() * size_of::<u32>()
            }
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        if let Self::Histogram(h) = self {
            return histogram_percentiles(h);
        }
        let mut sorted = self.samples().unwrap_or_default().to_vec();
        sorted.sort_unstable();
        sorted_percentiles(&sorted)
    }
}

pub(super) fn histogram_percentiles(h: &Histogram<u32>) -> Percentiles {
    // One scan of the counts for all three (`value_at_quantile` scans once per call).
    let mut at = h.value_at_quantiles([0.50, 0.95, 0.99]);
    let mut next = || at.next().expect("one value per quantile asked for");
    Percentiles {
        p50_us: next(),
        p95_us: next(),
        p99_us: next(),
        count: h.len(),
    }
}

/// The answer hdrhistogram's `value_at_quantile` gives for these values (the k-th
/// smallest value's bucket top, k = ceil(q·n)), without building a histogram.
pub(super) fn sorted_percentiles(sorted: &[u32]) -> Percentiles {
    let at = |q: f64| {
        let k = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted
            .get(k - 1)
            .map_or(0, |&v| TEMPLATE.highest_equivalent(u64::from(v)))
    };
    Percentiles {
        p50_us: at(0.50),
        p95_us: at(0.95),
        p99_us: at(0.99),
        count: sorted.len() as u64,
    }
}

/// Latency percentiles in microseconds. Values are hdrhistogram's highest equivalent value
/// of the bucket, so they can exceed a recorded value by up to 1 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub count: u64,
}

/// Protocols seen on an edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    pub http: bool,
    pub grpc: bool,
}

/// Everything counted for one edge in one bucket (or, merged, over a window).
#[derive(Clone, Debug, Default)]
pub struct EdgeMetrics {
    /// Connections (mesh flows) that ended.
    pub connections: u64,
    /// Of those, carried with mTLS.
    pub mtls_connections: u64,
    /// HBONE flows that reused a pooled tunnel connection / opened a new one.
    pub tunnels_reused: u64,
    pub tunnels_new: u64,
    /// L7 exchanges.
    pub requests: u64,
    /// Source → destination, and back.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: ErrorCounts,
    /// Unix ns of the first error of each kind (0 when none), for outage evidence.
    pub first_error_ns: [u64; 7],
    pub protocols: Protocols,
    pub request_latency: Option<Latency>,
    pub connect_latency: Option<Latency>,
    pub tunnel_setup: Option<Latency>,
}

impl EdgeMetrics {
    pub fn record_error(&mut self, kind: ErrorKind, at_ns: u64) {
        self.errors.add(kind, 1);
        let first = &mut self.first_error_ns[kind as usize];
        if *first == 0 || at_ns < *first {
            *first = at_ns;
        }
    }

    pub fn record_request_latency(&mut self, us: u64) -> usize {
        record(&mut self.request_latency, us)
    }

    pub fn record_connect_latency(&mut self, us: u64) -> usize {
        record(&mut self.connect_latency, us)
    }

    pub fn record_tunnel_setup(&mut self, us: u64) -> usize {
        record(&mut self.tunnel_setup, us)
    }

    pub fn merge(&mut self, other: &Self) {
        self.merge_counts(other);
        merge_latency(&mut self.request_latency, &other.request_latency);
        merge_latency(&mut self.connect_latency, &other.connect_latency);
        merge_latency(&mut self.tunnel_setup, &other.tunnel_setup);
    }

    /// Adds `other`'s counters, error times and protocols, not its latency distributions.
    pub fn merge_counts(&mut self, other: &Self) {
        self.connections += other.connections;
        self.mtls_connections += other.mtls_connections;
        self.tunnels_reused += other.tunnels_reused;
        self.tunnels_new += other.tunnels_new;
        self.requests += other.requests;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.errors.merge(&other.errors);
        for (a, b) in self.first_error_ns.iter_mut().zip(other.first_error_ns) {
            if b != 0 && (*a == 0 || b < *a) {
                *a = b;
            }
        }
        self.protocols.http |= other.protocols.http;
        self.protocols.grpc |= other.protocols.grpc;
    }

    /// Estimated bytes held, histograms included.
    pub fn bytes(&self) -> usize {
        size_of::<Self>()
            + [
                &self.request_latency,
                &self.connect_latency,
                &self.tunnel_setup,
            ]
            .into_iter()
            .flatten()
            .map(Latency::bytes)
            .sum::<usize>()
    }

    /// Attempts health is judged on: requests when the edge speaks L7, else connections.
    pub fn attempts(&self) -> u64 {
        self.requests.max(self.connections)
    }

    /// The larger of the request error rate and the connection error rate.
    pub fn error_rate(&self) -> f64 {
        let l7 = ratio(self.errors.request_errors(), self.requests).unwrap_or(0.0);
        let l4 = ratio(self.errors.connection_errors(), self.connections).unwrap_or(0.0);
        l7.max(l4)
    }

    /// Share of the attempts of `kind`'s level that failed with `kind`.
    pub fn kind_rate(&self, kind: ErrorKind) -> f64 {
        let base = if kind.is_request_level() {
            self.requests
        } else {
            self.connections
        };
        ratio(self.errors.get(kind), base).unwrap_or(0.0)
    }

    pub fn health(&self, thresholds: &HealthThresholds) -> Health {
        // Percentiles only matter with a latency threshold; don't compute them otherwise.
        let latency = thresholds
            .degraded_p95_latency
            .and_then(|_| self.latency())
            .map(|(p, _)| p);
        self.health_with(thresholds, latency.as_ref())
    }

    /// Health given the percentiles of this edge's latency (from [`Self::latency`]).
    fn health_with(&self, thresholds: &HealthThresholds, latency: Option<&Percentiles>) -> Health {
        let attempts = self.attempts();
        if attempts == 0 {
            return Health::Idle;
        }
        if attempts < thresholds.min_attempts {
            return Health::Healthy;
        }
        let rate = self.error_rate();
        if rate >= thresholds.failing_error_rate {
            return Health::Failing;
        }
        let slow = thresholds.degraded_p95_latency.is_some_and(|limit| {
            latency.is_some_and(|p| u128::from(p.p95_us) >= limit.as_micros())
        });
        if rate >= thresholds.degraded_error_rate || slow {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// Request latency for L7 edges, connect latency for L4 edges.
    pub fn latency(&self) -> Option<(Percentiles, LatencyKind)> {
        if let Some(h) = &self.request_latency {
            return Some((h.percentiles(), LatencyKind::Request));
        }
        self.connect_latency
            .as_ref()
            .map(|h| (h.percentiles(), LatencyKind::Connect))
    }

    pub fn summary(&self, window_seconds: f64, thresholds: &HealthThresholds) -> EdgeSummary {
        let tunnel_setup = self.tunnel_setup.as_ref().map(Latency::percentiles);
        self.summary_with(window_seconds, thresholds, self.latency(), tunnel_setup)
    }

    /// The summary of these counters with latency percentiles computed elsewhere (from
    /// distributions this value does not hold, see `window::latencies`).
    pub(super) fn summary_with(
        &self,
        window_seconds: f64,
        thresholds: &HealthThresholds,
        latency: Option<(Percentiles, LatencyKind)>,
        tunnel_setup: Option<Percentiles>,
    ) -> EdgeSummary {
        let per_second = |n: u64| round3(n as f64 / window_seconds);
        EdgeSummary {
            protocol: if self.protocols.grpc {
                "grpc"
            } else if self.protocols.http {
                "http"
            } else {
                "tcp"
            },
            connections: self.connections,
            requests: self.requests,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            connections_per_second: per_second(self.connections),
            requests_per_second: per_second(self.requests),
            bytes_sent_per_second: per_second(self.bytes_sent),
            bytes_received_per_second: per_second(self.bytes_received),
            errors: self.errors,
            error_rate: round3(self.error_rate()),
            latency: latency.map(|(p, _)| p),
            latency_kind: latency.map(|(_, k)| k),
            tunnel_setup,
            pool_reuse_ratio: ratio(self.tunnels_reused, self.tunnels_reused + self.tunnels_new)
                .map(round3),
            mtls_share: ratio(self.mtls_connections, self.connections).map(round3),
            health: self.health_with(thresholds, latency.as_ref().map(|(p, _)| p)),
        }
    }
}

fn record(slot: &mut Option<Latency>, us: u64) -> usize {
    let histogram = slot.get_or_insert_with(Latency::new);
    let before = histogram.bytes();
    histogram.record(us);
    histogram.bytes() - before
}

fn merge_latency(into: &mut Option<Latency>, from: &Option<Latency>) {
    match (into.as_mut(), from) {
        (_, None) => {}
        (Some(a), Some(b)) => a.merge(b),
        (None, Some(b)) => *into = Some(b.clone()),
    }
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No attempts in the window.
    Idle,
    Healthy,
    Degraded,
    Failing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyKind {
    Request,
    Connect,
}

/// An edge's (or node's) metrics over a window, as the API returns them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeSummary {
    /// "grpc", "http" or "tcp".
    pub protocol: &'static str,
    pub connections: u64,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connections_per_second: f64,
    pub requests_per_second: f64,
    pub bytes_sent_per_second: f64,
    pub bytes_received_per_second: f64,
    pub errors: ErrorCounts,
    pub error_rate: f64,
    pub latency: Option<Percentiles>,
    pub latency_kind: Option<LatencyKind>,
    pub tunnel_setup: Option<Percentiles>,
    pub pool_reuse_ratio: Option<f64>,
    pub mtls_share: Option<f64>,
    pub health: Health,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(requests: u64, errors_5xx: u64, connections: u64, refused: u64) -> EdgeMetrics {
        let mut m = EdgeMetrics {
            requests,
            connections,
            ..EdgeMetrics::default()
        };
        m.errors.add(ErrorKind::Http5xx, errors_5xx);
        m.errors.add(ErrorKind::Refused, refused);
        m
    }

    #[test]
    fn health_follows_the_documented_thresholds() {
        let t = HealthThresholds::default();
        assert_eq!(edge(0, 0, 0, 0).health(&t), Health::Idle);
        assert_eq!(
            edge(2, 2, 0, 0).health(&t),
            Health::Healthy,
            "below min_attempts"
        );
        assert_eq!(edge(100, 0, 10, 0).health(&t), Health::Healthy);
        assert_eq!(edge(100, 1, 10, 0).health(&t), Health::Degraded);
        assert_eq!(edge(100, 10, 10, 0).health(&t), Health::Failing);
        // Connection errors are rated against connections, not requests.
        assert_eq!(edge(100, 0, 10, 1).health(&t), Health::Failing);
        assert_eq!(edge(100, 0, 10, 1).error_rate(), 0.1);
    }

    #[test]
    fn merged_histograms_give_percentiles_of_the_union() {
        let mut a = EdgeMetrics::default();
        let mut b = EdgeMetrics::default();
        for us in 1..=50 {
            a.record_request_latency(us);
        }
        for us in 51..=100 {
            b.record_request_latency(us);
        }
        a.merge(&b);
        let (p, kind) = a.latency().unwrap();
        assert_eq!(kind, LatencyKind::Request);
        // Below 256 µs hdrhistogram with 2 digits is exact.
        assert_eq!((p.p50_us, p.p95_us, p.p99_us, p.count), (50, 95, 99, 100));
    }

    #[test]
    fn sample_lists_and_histograms_give_the_same_percentiles() {
        let mut busy = EdgeMetrics::default();
        let mut quiet = EdgeMetrics::default();
        for us in 1000..1200 {
            busy.record_request_latency(us);
        }
        for chunk in (1000..1200).collect::<Vec<u64>>().chunks(50) {
            let mut part = EdgeMetrics::default();
            for &us in chunk {
                part.record_request_latency(us);
            }
            assert!(matches!(part.request_latency, Some(Latency::Samples(_))));
            quiet.merge(&part);
        }
        assert!(matches!(busy.request_latency, Some(Latency::Histogram(_))));
        let (a, _) = busy.latency().unwrap();
        let (b, _) = quiet.latency().unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (a.p50_us, a.p95_us, a.p99_us, a.count),
            (1103, 1191, 1199, 200)
        );
    }

    #[test]
    fn quiet_edges_keep_samples_in_place_until_a_list_is_needed() {
        let mut m = EdgeMetrics::default();
        let kind = |m: &EdgeMetrics| match m.request_latency.as_ref().unwrap() {
            Latency::Few { len, .. } => format!("few {len}"),
            Latency::Samples(s) => format!("list {}", s.len()),
            Latency::Histogram(h) => format!("histogram {}", h.len()),
        };
        let grown = |m: &mut EdgeMetrics, us| m.record_request_latency(us);
        assert_eq!(grown(&mut m, 40), 0, "the first value allocates nothing");
        for us in [10, 30, 20, 60, 55] {
            assert_eq!(grown(&mut m, us), 0);
        }
        assert_eq!(kind(&m), "few 6");
        let samples = m.request_latency.as_ref().unwrap().samples();
        assert_eq!(samples, Some(&[40, 10, 30, 20, 60, 55][..]));
        let p = m.latency().unwrap().0;
        assert_eq!((p.p50_us, p.p95_us, p.count), (30, 60, 6));
        // The seventh moves them to a list, the 65th to a histogram.
        assert_eq!(grown(&mut m, 50), 12 * size_of::<u32>());
        assert_eq!(kind(&m), "list 7");
        let mut other = EdgeMetrics::default();
        for us in 100..158 {
            other.record_request_latency(us);
        }
        assert_eq!(kind(&other), "list 58");
        m.merge(&other);
        assert_eq!(kind(&m), "histogram 65");
        let p = m.latency().unwrap().0;
        assert_eq!((p.p50_us, p.p99_us, p.count), (125, 157, 65));
        // Few merged into few past six becomes a list, with every value.
        let mut a = EdgeMetrics::default();
        let mut b = EdgeMetrics::default();
        for us in 1..=4 {
            a.record_request_latency(us);
            b.record_request_latency(us + 10);
        }
        a.merge(&b);
        assert_eq!(kind(&a), "list 8");
        assert_eq!(a.latency().unwrap().0.count, 8);
    }

    #[test]
    fn first_error_time_is_the_earliest_across_merges() {
        let mut a = EdgeMetrics::default();
        a.record_error(ErrorKind::Refused, 300);
        let mut b = EdgeMetrics::default();
        b.record_error(ErrorKind::Refused, 100);
        b.record_error(ErrorKind::Reset, 200);
        a.merge(&b);
        assert_eq!(a.first_error_ns[ErrorKind::Refused as usize], 100);
        assert_eq!(a.first_error_ns[ErrorKind::Reset as usize], 200);
        assert_eq!(a.errors.total(), 3);
    }
}
