//! The per-connection entry point: sequence tracking, protocol detection and
//! dispatch to the HTTP/1 or HTTP/2 parser.

use std::sync::Arc;

use crate::counters::ParserCounters;
use crate::exchange::{Direction, L7Exchange};
use crate::http1::{self, Http1Parser, is_request_line, looks_like_request_start};
use crate::http2::{Http2Parser, PREFACE};
use crate::limits::ParserLimits;
use crate::output::Output;
use crate::path_template::PathTemplater;
use crate::reassembly::SequenceTracker;

/// What a connection turned out to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionProtocol {
    /// Not enough client bytes yet.
    Detecting,
    /// HTTP/1.x requests.
    Http1,
    /// HTTP/2 with prior knowledge (h2c; what gRPC uses on the plaintext hop).
    Http2,
    /// Not HTTP, or no longer parseable: the connection stays L4 and input is dropped.
    Opaque,
}

/// Protocol-specific state; `Opaque` holds nothing, so giving up frees everything.
enum Engine {
    Detecting(Detection),
    Http1(Box<Http1Parser>),
    Http2(Box<Http2Parser>),
    Opaque,
}

/// Segments seen before the protocol is known, replayed once it is (an h2 server
/// may send its SETTINGS before the client preface is captured).
#[derive(Default)]
struct Detection {
    segments: Vec<(Direction, u64, Vec<u8>)>,
    /// The client's first bytes, up to the end of the first line or the head cap.
    client: Vec<u8>,
    server_bytes: usize,
}

/// Parses the captured payload of one TCP connection into [`L7Exchange`]s.
///
/// Feed every captured segment of both directions in capture order; drain the
/// completed exchanges after each feed or batch. Memory stays within
/// [`ParserLimits`] and is released by [`ConnectionParser::close`].
pub struct ConnectionParser {
    engine: Engine,
    sequence: [SequenceTracker; 2],
    out: Output,
}

impl ConnectionParser {
    /// A parser with the default path templater.
    pub fn new(limits: ParserLimits) -> Self {
        Self::with_templater(limits, Arc::new(PathTemplater::default()))
    }

    /// A parser sharing the agent's configured templater.
    pub fn with_templater(mut limits: ParserLimits, templater: Arc<PathTemplater>) -> Self {
        // A head must at least hold a request line and a frame header.
        limits.max_head_bytes = limits.max_head_bytes.max(64);
        Self {
            engine: Engine::Detecting(Detection::default()),
            sequence: Default::default(),
            out: Output::new(limits, templater),
        }
    }

    /// What the connection carries, as far as known.
    pub fn protocol(&self) -> ConnectionProtocol {
        match self.engine {
            Engine::Detecting(_) => ConnectionProtocol::Detecting,
            Engine::Http1(_) => ConnectionProtocol::Http1,
            Engine::Http2(_) => ConnectionProtocol::Http2,
            Engine::Opaque => ConnectionProtocol::Opaque,
        }
    }

    /// Feeds one captured segment: `seq` is the TCP sequence number of its first
    /// byte, `timestamp_ns` its capture time. Retransmitted bytes are dropped, a
    /// hole in the sequence is handled as [`ConnectionParser::gap`].
    pub fn feed(&mut self, direction: Direction, seq: u32, timestamp_ns: u64, bytes: &[u8]) {
        let placement = self.sequence[direction.index()].place(seq, bytes.len());
        self.out.counters.bytes_retransmitted += placement.duplicate as u64;
        if placement.missing > 0 {
            self.missing(direction, placement.missing);
        }
        let bytes = &bytes[placement.duplicate..];
        if !bytes.is_empty() {
            self.dispatch(direction, timestamp_ns, bytes);
        }
    }

    /// `missing_bytes` of `direction` were not copied by the kernel (capture budget)
    /// right after the last byte fed.
    pub fn gap(&mut self, direction: Direction, missing_bytes: u32) {
        self.sequence[direction.index()].skip(missing_bytes);
        if missing_bytes > 0 {
            self.missing(direction, u64::from(missing_bytes));
        }
    }

    fn missing(&mut self, direction: Direction, missing: u64) {
        self.out.counters.bytes_missing += missing;
        match &mut self.engine {
            // Without the first bytes the protocol cannot be told.
            Engine::Detecting(_) => self.engine = Engine::Opaque,
            Engine::Http1(parser) => parser.gap(direction, missing, &mut self.out),
            Engine::Http2(parser) => {
                if parser.gap(direction, missing, &mut self.out).is_err() {
                    self.engine = Engine::Opaque;
                }
            }
            Engine::Opaque => {}
        }
    }

    fn dispatch(&mut self, direction: Direction, ts: u64, bytes: &[u8]) {
        match &mut self.engine {
            Engine::Detecting(detection) => {
                match direction {
                    Direction::ClientToServer => {
                        let room = (self.out.limits.max_head_bytes + 1)
                            .saturating_sub(detection.client.len());
                        detection
                            .client
                            .extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                    Direction::ServerToClient => detection.server_bytes += bytes.len(),
                }
                detection.segments.push((direction, ts, bytes.to_vec()));
                self.detect();
            }
            Engine::Http1(parser) => {
                if parser.feed(direction, ts, bytes, &mut self.out) == http1::Verdict::Stop {
                    self.give_up();
                }
            }
            Engine::Http2(parser) => {
                if parser.feed(direction, ts, bytes, &mut self.out).is_err() {
                    self.engine = Engine::Opaque;
                }
            }
            Engine::Opaque => self.out.skipped(bytes.len()),
        }
    }

    /// Decides from the client's first bytes (RFC 9113 §3.4 preface, RFC 9112 §3
    /// request line) and replays what was held back.
    fn detect(&mut self) {
        let Engine::Detecting(detection) = &mut self.engine else {
            return;
        };
        let max = self.out.limits.max_head_bytes;
        let client = &detection.client;
        let n = client.len().min(PREFACE.len());
        let decision = if client.is_empty() {
            None
        } else if client[..n] == PREFACE[..n] {
            (client.len() >= PREFACE.len()).then_some(ConnectionProtocol::Http2)
        } else {
            match looks_like_request_start(client) {
                Some(false) => Some(ConnectionProtocol::Opaque),
                None => None,
                // The whole request line decides: `EHLO x` or `get /` are not HTTP.
                Some(true) => match client.iter().position(|&b| b == b'\n') {
                    Some(lf) if is_request_line(&client[..lf]) => Some(ConnectionProtocol::Http1),
                    Some(_) => Some(ConnectionProtocol::Opaque),
                    None => (client.len() > max).then_some(ConnectionProtocol::Opaque),
                },
            }
        };
        // A peer that talks first and long is not an HTTP server.
        let decision =
            decision.or((detection.server_bytes > max).then_some(ConnectionProtocol::Opaque));
        let Some(decision) = decision else {
            return;
        };
        let segments = std::mem::take(&mut detection.segments);
        self.engine = match decision {
            ConnectionProtocol::Http1 => Engine::Http1(Box::new(Http1Parser::new())),
            ConnectionProtocol::Http2 => Engine::Http2(Box::new(Http2Parser::new(
                self.out.limits.max_hpack_table_bytes,
            ))),
            _ => {
                let skipped = segments.iter().map(|s| s.2.len()).sum();
                self.out.skipped(skipped);
                Engine::Opaque
            }
        };
        for (direction, ts, bytes) in segments {
            self.dispatch(direction, ts, &bytes);
        }
    }

    fn give_up(&mut self) {
        if let Engine::Http1(parser) = &mut self.engine {
            parser.close(&mut self.out);
        }
        self.engine = Engine::Opaque;
    }

    /// Completed exchanges, oldest first.
    pub fn drain_exchanges(&mut self) -> impl Iterator<Item = L7Exchange> + '_ {
        self.out.drain()
    }

    /// Number of exchanges waiting to be drained.
    pub fn queued_exchanges(&self) -> usize {
        self.out.queued()
    }

    /// The connection ended: flushes what can be (a body delimited by the close),
    /// reports unanswered requests as incomplete and frees all parser state. The
    /// returned exchanges are the last; later input is dropped.
    pub fn close(&mut self) -> Vec<L7Exchange> {
        match std::mem::replace(&mut self.engine, Engine::Opaque) {
            Engine::Http1(mut parser) => parser.close(&mut self.out),
            Engine::Http2(mut parser) => parser.close(&mut self.out),
            Engine::Detecting(_) | Engine::Opaque => {}
        }
        self.out.take_all()
    }

    /// What this parser did with its input.
    pub fn counters(&self) -> &ParserCounters {
        &self.out.counters
    }

    /// Heap bytes held by this parser (buffers, pending requests and streams,
    /// queued exchanges, an upper bound of the HPACK tables): what the caps bound.
    pub fn memory_bytes(&self) -> usize {
        let engine = match &self.engine {
            Engine::Detecting(d) => {
                d.segments
                    .iter()
                    .map(|s| s.2.capacity() + 32)
                    .sum::<usize>()
                    + d.segments.capacity() * std::mem::size_of::<(Direction, u64, Vec<u8>)>()
            }
            Engine::Http1(p) => p.memory_bytes(),
            Engine::Http2(p) => p.memory_bytes(),
            Engine::Opaque => 0,
        };
        engine + self.out.memory_bytes()
    }
}
