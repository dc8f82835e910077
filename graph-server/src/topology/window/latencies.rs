//! The latency distributions of every edge of a window, gathered while the buckets are
//! read in storage order: sample values are copied out into one array grouped by edge,
//! histograms are referenced. Percentiles then come from contiguous memory, once per
//! edge (or per node's inbound edges), with no distribution merged into a copy.
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
    /// Per slot: whether some bucket had this distribution.
    present: Vec<bool>,
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

impl<'a> Gathered<'a> {
    fn add(&mut self, slot: u32, latency: Option<&'a Latency>) {
        let Some(latency) = latency else {
            return;
        };
        let i = slot as usize;
        if i >= self.present.len() {
            self.present.resize(i + 1, false);
        }
        self.present[i] = true;
        match latency {
            Latency::Histogram(h) => self.read_histograms.push((slot, h)),
            list => {
                let values = list.samples().unwrap_or_default();
                self.read_values.extend(values.iter().map(|&v| (slot, v)));
            }
        }
    }

    fn group(&mut self, slots: usize) {
        self.present.resize(slots, false);
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
        if !slots.clone().any(|s| self.present[s]) {
            return None;
        }
        let values: usize = slots.clone().map(|s| self.values(s).len()).sum();
        let histograms = slots.clone().any(|s| !self.histograms(s).is_empty());
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
            for other in self.histograms(s) {
                // Both auto-resize, so adding never fails for range reasons.
                let _ = h.add(*other);
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
