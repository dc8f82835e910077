//! The latency distributions of every edge of a window, gathered while the buckets are
//! read in storage order: sample values are copied out into one array grouped by edge,
//! histograms are referenced. Percentiles then come from contiguous memory, once per
//! edge (or per node's inbound edges), with no distribution merged into a copy.
//!
//! An edge's values are copied up to [`MAX_GATHERED_VALUES`]; past that (a busy edge
//! over a long window) they are counted into a histogram of the edge's own, so what a
//! query holds stays bounded per edge, as when buckets were merged into copies.
//!
//! Gives exactly what [`EdgeMetrics::merge`] over the buckets followed by
//! [`EdgeMetrics::summary`] gives: the percentiles of a union of sample lists and
//! histograms do not depend on how it was merged (`sorted_percentiles` returns what a
//! histogram of the same values would), and `graph_view_equals_merging_copies_of_every_bucket`
//! in the topology tests checks it.
use hdrhistogram::Histogram;

use crate::config::HealthThresholds;
use crate::topology::metrics::{
    EdgeMetrics, EdgeSummary, Latency, LatencyKind, Percentiles, histogram, histogram_percentiles,
    record_into, sorted_percentiles,
};

/// Up to this many values in a union are sorted; more are counted in a histogram (a node
/// fed by thousands of edges over a long window would otherwise sort millions).
const MAX_SORTED_SAMPLES: usize = 4096;

/// Values copied per edge per distribution (12 bytes each while grouping) before the rest
/// go into a histogram of the edge's own, about the size of one.
const MAX_GATHERED_VALUES: u32 = 1024;

/// Request latency, connect latency, tunnel setup: the distributions an edge keeps.
const REQUEST: usize = 0;
const CONNECT: usize = 1;
const TUNNEL_SETUP: usize = 2;

/// The distributions of every edge slot (see `WindowGraph`) over the window.
#[derive(Debug, Default)]
pub struct WindowLatencies<'a> {
    kinds: [Gathered<'a>; 3],
}

/// One kind of distribution of every slot.
#[derive(Debug, Default)]
struct Gathered<'a> {
    slots: Vec<SlotState>,
    /// (slot, value) and (slot, histogram) in reading order, until [`Self::group`].
    read_values: Vec<(u32, u32)>,
    read_histograms: Vec<(u32, &'a Histogram<u32>)>,
    /// Per slot, after `group`: where its values and histograms start (and end, at the
    /// next slot's start).
    value_start: Vec<u32>,
    values: Vec<u32>,
    histogram_start: Vec<u32>,
    histograms: Vec<&'a Histogram<u32>>,
}

/// What one slot has of one kind of distribution besides its grouped values.
#[derive(Debug, Default)]
struct SlotState {
    /// Some bucket had this distribution.
    present: bool,
    /// Values copied into `read_values`.
    gathered: u32,
    /// Values past [`MAX_GATHERED_VALUES`].
    overflow: Option<Box<Histogram<u32>>>,
}

impl<'a> Gathered<'a> {
    fn add(&mut self, slot: u32, latency: Option<&'a Latency>) {
        let Some(latency) = latency else {
            return;
        };
        let i = slot as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, SlotState::default);
        }
        let state = &mut self.slots[i];
        state.present = true;
        let values = match latency {
            Latency::Histogram(h) => {
                self.read_histograms.push((slot, h));
                return;
            }
            list => list.samples().unwrap_or_default(),
        };
        let n = values.len() as u32;
        if state.gathered + n <= MAX_GATHERED_VALUES {
            state.gathered += n;
            self.read_values.extend(values.iter().map(|&v| (slot, v)));
        } else {
            let h = state.overflow.get_or_insert_with(|| Box::new(histogram()));
            for &v in values {
                record_into(h, u64::from(v));
            }
        }
    }

    fn group(&mut self, slots: usize) {
        self.slots.resize_with(slots, SlotState::default);
        (self.value_start, self.values) = group(slots, std::mem::take(&mut self.read_values));
        (self.histogram_start, self.histograms) =
            group(slots, std::mem::take(&mut self.read_histograms));
    }

    fn values(&self, slot: usize) -> &[u32] {
        &self.values[self.value_start[slot] as usize..self.value_start[slot + 1] as usize]
    }

    fn histograms(&self, slot: usize) -> &[&'a Histogram<u32>] {
        let (from, to) = (self.histogram_start[slot], self.histogram_start[slot + 1]);
        &self.histograms[from as usize..to as usize]
    }

    /// Percentiles of the union of `slots`' distributions; `None` if none has one.
    fn percentiles(
        &self,
        slots: impl Iterator<Item = usize> + Clone,
        scratch: &mut Summariser,
    ) -> Option<Percentiles> {
        if !slots.clone().any(|s| self.slots[s].present) {
            return None;
        }
        let values: usize = slots.clone().map(|s| self.values(s).len()).sum();
        let histograms = (slots.clone())
            .any(|s| !self.histograms(s).is_empty() || self.slots[s].overflow.is_some());
        if !histograms && values <= MAX_SORTED_SAMPLES {
            scratch.values.clear();
            for s in slots {
                scratch.values.extend_from_slice(self.values(s));
            }
            scratch.values.sort_unstable();
            return Some(sorted_percentiles(&scratch.values));
        }
        // `reset` keeps the counts array, so busy windows size it once.
        let h = &mut scratch.histogram;
        h.reset();
        for s in slots {
            for &v in self.values(s) {
                record_into(h, u64::from(v));
            }
            // Both auto-resize, so adding never fails for range reasons.
            for other in self.histograms(s) {
                let _ = h.add(*other);
            }
            if let Some(overflow) = &self.slots[s].overflow {
                let _ = h.add(&**overflow);
            }
        }
        Some(histogram_percentiles(h))
    }
}

/// `read` grouped by slot, keeping reading order within a slot (a counting sort): per
/// slot the start of its items, then the items.
fn group<T: Copy>(slots: usize, read: Vec<(u32, T)>) -> (Vec<u32>, Vec<T>) {
    let mut start = vec![0u32; slots + 1];
    for &(slot, _) in &read {
        start[slot as usize + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let Some(&(_, fill)) = read.first() else {
        return (start, Vec::new());
    };
    let mut next = start.clone();
    let mut items = vec![fill; read.len()];
    for (slot, item) in read {
        let at = &mut next[slot as usize];
        items[*at as usize] = item;
        *at += 1;
    }
    (start, items)
}

impl<'a> WindowLatencies<'a> {
    /// Adds one bucket's distributions of the edge in `slot`.
    pub fn add(&mut self, slot: u32, metrics: &'a EdgeMetrics) {
        self.kinds[REQUEST].add(slot, metrics.request_latency.as_ref());
        self.kinds[CONNECT].add(slot, metrics.connect_latency.as_ref());
        self.kinds[TUNNEL_SETUP].add(slot, metrics.tunnel_setup.as_ref());
    }

    /// Call once every bucket was added; `slots` is the number of edge slots.
    pub fn group(&mut self, slots: usize) {
        for kind in &mut self.kinds {
            kind.group(slots);
        }
    }

    /// The summary of the edges in `slots` merged over `window_seconds`, `counts` being
    /// their counters added up ([`EdgeMetrics::merge_counts`]).
    pub fn summary(
        &self,
        scratch: &mut Summariser,
        counts: &EdgeMetrics,
        slots: impl Iterator<Item = usize> + Clone,
        window_seconds: f64,
        thresholds: &HealthThresholds,
    ) -> EdgeSummary {
        let latency = match self.kinds[REQUEST].percentiles(slots.clone(), scratch) {
            Some(p) => Some((p, LatencyKind::Request)),
            None => self.kinds[CONNECT]
                .percentiles(slots.clone(), scratch)
                .map(|p| (p, LatencyKind::Connect)),
        };
        let tunnel_setup = self.kinds[TUNNEL_SETUP].percentiles(slots, scratch);
        counts.summary_with(window_seconds, thresholds, latency, tunnel_setup)
    }
}

/// Buffers for computing percentiles, reused from one union to the next.
#[derive(Debug)]
pub struct Summariser {
    values: Vec<u32>,
    histogram: Histogram<u32>,
}

impl Default for Summariser {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            histogram: histogram(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 buckets of 50 request latencies each for slot 0, 2 each for slot 1.
    fn buckets() -> Vec<EdgeMetrics> {
        let mut buckets = Vec::new();
        for b in 0..30u64 {
            let mut busy = EdgeMetrics::default();
            for i in 0..50 {
                busy.record_request_latency(1_000 + b * 100 + i);
            }
            let mut quiet = EdgeMetrics::default();
            quiet.record_request_latency(7 + b);
            quiet.record_request_latency(100_000 + b);
            buckets.extend([busy, quiet]);
        }
        buckets
    }

    #[test]
    fn values_past_the_gathered_limit_go_into_the_edges_own_histogram() {
        let buckets = buckets();
        let mut window = WindowLatencies::default();
        for pair in buckets.chunks(2) {
            window.add(0, &pair[0]);
            window.add(1, &pair[1]);
        }
        window.group(2);
        let request = &window.kinds[REQUEST];
        // 20 buckets × 50 fit under 1024; the other 10 buckets' 500 overflow.
        assert_eq!(request.slots[0].gathered, 1000);
        assert_eq!(request.values(0).len(), 1000);
        let overflow = request.slots[0]
            .overflow
            .as_ref()
            .expect("slot 0 overflowed");
        assert_eq!(overflow.len(), 500);
        assert_eq!(
            (request.slots[1].gathered, request.values(1).len()),
            (60, 60)
        );
        assert!(request.slots[1].overflow.is_none());
        assert!(!window.kinds[CONNECT].slots[0].present);

        // Same percentiles as merging copies of every bucket.
        let mut scratch = Summariser::default();
        for slots in [vec![0], vec![1], vec![0, 1]] {
            let mut merged = EdgeMetrics::default();
            for (i, m) in buckets.iter().enumerate() {
                if slots.contains(&(i % 2)) {
                    merged.merge(m);
                }
            }
            let expected = merged.latency().map(|(p, _)| p);
            let got = request.percentiles(slots.iter().copied(), &mut scratch);
            assert_eq!(got, expected, "slots {slots:?}");
        }
        let all = request
            .percentiles([0, 1].into_iter(), &mut scratch)
            .unwrap();
        assert_eq!(all.count, 1560);
    }
}
