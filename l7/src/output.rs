//! Where parsers put what they produce: the bounded exchange queue and the counters.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::counters::{ParseErrorKind, ParserCounters};
use crate::exchange::{L7Exchange, Protocol};
use crate::limits::ParserLimits;
use crate::path_template::PathTemplater;

pub(crate) struct Output {
    queue: VecDeque<L7Exchange>,
    /// Heap bytes of the queued exchanges' strings, kept as they come and go so that
    /// `memory_bytes` (asked after every segment) does not walk the queue.
    queued_heap_bytes: usize,
    pub(crate) counters: ParserCounters,
    pub(crate) limits: ParserLimits,
    templater: Arc<PathTemplater>,
}

impl Output {
    pub(crate) fn new(limits: ParserLimits, templater: Arc<PathTemplater>) -> Self {
        Self {
            queue: VecDeque::new(),
            queued_heap_bytes: 0,
            counters: ParserCounters::default(),
            limits,
            templater,
        }
    }

    /// Finishes an exchange (template, latency, error flag) and queues it; the
    /// queue drops its oldest entry rather than grow past its cap.
    pub(crate) fn emit(&mut self, mut exchange: L7Exchange) {
        // gRPC paths name a method, never an identifier: keep them as they are.
        exchange.path_template = if exchange.protocol == Protocol::Grpc {
            exchange.path.clone()
        } else {
            self.templater.template(&exchange.path)
        };
        exchange.finish();
        self.counters.exchanges_emitted += 1;
        if exchange.incomplete {
            self.counters.exchanges_incomplete += 1;
        }
        if self.queue.len() >= self.limits.max_queued_exchanges.max(1)
            && let Some(dropped) = self.queue.pop_front()
        {
            self.queued_heap_bytes -= heap_bytes(&dropped);
            self.counters.count(ParseErrorKind::QueueOverflow);
        }
        self.queued_heap_bytes += heap_bytes(&exchange);
        self.queue.push_back(exchange);
    }

    /// Takes every queued exchange, oldest first.
    pub(crate) fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, L7Exchange> {
        self.queued_heap_bytes = 0;
        self.queue.drain(..)
    }

    /// Takes every queued exchange and releases the queue's memory.
    pub(crate) fn take_all(&mut self) -> Vec<L7Exchange> {
        self.queued_heap_bytes = 0;
        std::mem::take(&mut self.queue).into()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn error(&mut self, kind: ParseErrorKind) {
        self.counters.count(kind);
    }

    pub(crate) fn skipped(&mut self, bytes: usize) {
        self.counters.bytes_skipped += bytes as u64;
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.queue.capacity() * std::mem::size_of::<L7Exchange>() + self.queued_heap_bytes
    }
}

/// Heap bytes of one exchange's strings.
fn heap_bytes(e: &L7Exchange) -> usize {
    e.method.capacity()
        + e.path.capacity()
        + e.path_template.capacity()
        + e.authority.as_ref().map_or(0, String::capacity)
        + e.grpc_message.as_ref().map_or(0, String::capacity)
        + e.grpc_service.as_ref().map_or(0, String::capacity)
        + e.grpc_method.as_ref().map_or(0, String::capacity)
        + e.trace.as_ref().map_or(0, |t| {
            64 + t.parent_span_id.as_ref().map_or(0, String::capacity)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `memory_bytes` would be from walking the queue.
    fn walked(out: &Output) -> usize {
        out.queue.capacity() * std::mem::size_of::<L7Exchange>()
            + out.queue.iter().map(heap_bytes).sum::<usize>()
    }

    #[test]
    fn queued_bytes_follow_the_queue_through_overflow_and_drains() {
        let limits = ParserLimits {
            max_queued_exchanges: 3,
            ..ParserLimits::default()
        };
        let mut out = Output::new(limits, Arc::new(PathTemplater::default()));
        for i in 0..5 {
            out.emit(L7Exchange {
                method: "GET".into(),
                path: format!("/items/{}", "9".repeat(i * 10)),
                authority: (i % 2 == 0).then(|| "web".repeat(i + 1)),
                ..L7Exchange::default()
            });
            assert_eq!(out.memory_bytes(), walked(&out), "after exchange {i}");
        }
        assert_eq!(out.counters.error(ParseErrorKind::QueueOverflow), 2);
        assert_eq!(out.drain().count(), 3);
        assert_eq!(
            out.memory_bytes(),
            out.queue.capacity() * std::mem::size_of::<L7Exchange>()
        );
        out.emit(L7Exchange::default());
        assert_eq!(out.memory_bytes(), walked(&out));
        assert_eq!(out.take_all().len(), 1);
        assert_eq!(out.memory_bytes(), 0);
    }
}
