//! L7 parsers for the plaintext hop between an application and ztunnel.
//!
//! In ambient mode the app ↔ ztunnel hop runs over the `lo` of each pod's network
//! namespace in plaintext (see `shared/DESIGN.md`); TC programs copy a bounded prefix
//! of each segment. This crate turns those segments into request/response
//! exchanges: HTTP/1.x (RFC 9112), HTTP/2 with prior knowledge (RFC 9113, HPACK
//! RFC 7541) and gRPC on top of it. Everything else stays L4.
//!
//! ```
//! use nephilia_l7::{ConnectionParser, Direction, ParserLimits, Protocol};
//!
//! let mut parser = ConnectionParser::new(ParserLimits::default());
//! parser.feed(Direction::ClientToServer, 1000, 10, b"GET /users/42 HTTP/1.1\r\nHost: api\r\n\r\n");
//! parser.feed(Direction::ServerToClient, 5000, 25, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
//! let exchange = parser.drain_exchanges().next().expect("one exchange");
//! assert_eq!(exchange.protocol, Protocol::Http1);
//! assert_eq!(exchange.path_template, "/users/{id}");
//! assert_eq!(exchange.status, Some(200));
//! assert_eq!(exchange.latency_ns, Some(15));
//! ```

mod connection;
mod counters;
mod exchange;
mod http1;
mod http2;
mod limits;
mod output;
mod path_template;
mod reassembly;
mod trace_context;

pub use connection::{ConnectionParser, ConnectionProtocol};
pub use counters::{ParseErrorKind, ParserCounters};
pub use exchange::{Direction, L7Exchange, Protocol};
pub use limits::ParserLimits;
pub use path_template::{PathTemplater, SegmentPredicate, TemplateRule};
pub use trace_context::{TraceContext, parse_b3_single, parse_traceparent};
