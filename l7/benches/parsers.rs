//! Parser throughput in MB/s over the corpus: HTTP/1 vs HTTP/2 vs gRPC.
//!
//! `cargo bench -p nephilia-l7 --bench parsers` (`L7_BENCH_SECONDS` per group,
//! default 2). Each iteration replays every capture of the group through a fresh
//! `ConnectionParser`, as the agent does per connection.

#[path = "../tests/support/capture.rs"]
mod capture;

use std::hint::black_box;
use std::time::{Duration, Instant};

use capture::Segment;
use nephilia_l7::{ConnectionParser, ParserLimits};

fn replay(captures: &[Vec<Segment>]) -> usize {
    let mut exchanges = 0;
    for segments in captures {
        let mut parser = ConnectionParser::new(ParserLimits::default());
        for s in segments {
            parser.feed(s.direction, s.seq, s.timestamp_ns, black_box(&s.bytes));
            exchanges += parser.drain_exchanges().count();
        }
        exchanges += parser.close().len();
    }
    exchanges
}

fn main() {
    let seconds: u64 = std::env::var("L7_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let all = capture::all();
    let group = |prefix: &str| -> Vec<Vec<Segment>> {
        all.iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, s)| s.clone())
            .collect()
    };
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>14}",
        "group", "MB/s", "exchanges/s", "captures", "bytes/iter"
    );
    for (label, prefix) in [("http1", "http1_"), ("http2", "h2c_"), ("grpc", "grpc_")] {
        let captures = group(prefix);
        let bytes: usize = captures.iter().flatten().map(|s| s.bytes.len()).sum();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let (mut iterations, mut exchanges) = (0u64, 0usize);
        while Instant::now() < deadline {
            exchanges += replay(&captures);
            iterations += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mb_per_s = (bytes as f64 * iterations as f64) / elapsed / 1e6;
        println!(
            "{label:<8} {mb_per_s:>10.1} {:>12.0} {:>10} {bytes:>14}",
            exchanges as f64 / elapsed,
            captures.len()
        );
    }
}
