//! Where parsers put what they produce: the bounded exchange queue and the counters.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::counters::{ParseErrorKind, ParserCounters};
use crate::exchange::{L7Exchange, Protocol};
use crate::limits::ParserLimits;
use crate::path_template::PathTemplater;

pub(crate) struct Output {
    pub(crate) queue: VecDeque<L7Exchange>,
    pub(crate) counters: ParserCounters,
    pub(crate) limits: ParserLimits,
    templater: Arc<PathTemplater>,
}

impl Output {
    pub(crate) fn new(limits: ParserLimits, templater: Arc<PathTemplater>) -> Self {
        Self {
            queue: VecDeque::new(),
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
        if self.queue.len() >= self.limits.max_queued_exchanges.max(1) {
            self.queue.pop_front();
            self.counters.count(ParseErrorKind::QueueOverflow);
        }
        self.queue.push_back(exchange);
    }

    pub(crate) fn error(&mut self, kind: ParseErrorKind) {
        self.counters.count(kind);
    }

    pub(crate) fn skipped(&mut self, bytes: usize) {
        self.counters.bytes_skipped += bytes as u64;
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.queue.capacity() * std::mem::size_of::<L7Exchange>()
            + self
                .queue
                .iter()
                .map(|e| {
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
                })
                .sum::<usize>()
    }
}
