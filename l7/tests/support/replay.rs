//! Feeding captures to a parser in different ways.

#![allow(dead_code, reason = "each test crate uses a different part")]

use nephilia_l7::{ConnectionParser, L7Exchange, ParserLimits};

use super::capture::Segment;

/// Feeds segments as captured, then closes; returns every exchange in order.
pub fn run(segments: &[Segment]) -> Vec<L7Exchange> {
    run_with(segments, ParserLimits::default()).0
}

pub fn run_with(segments: &[Segment], limits: ParserLimits) -> (Vec<L7Exchange>, ConnectionParser) {
    let mut parser = ConnectionParser::new(limits);
    let mut out = Vec::new();
    for s in segments {
        parser.feed(s.direction, s.seq, s.timestamp_ns, &s.bytes);
        out.extend(parser.drain_exchanges());
    }
    out.extend(parser.close());
    (out, parser)
}

/// The same capture with segment `index` cut in two at `at`.
pub fn split_one(segments: &[Segment], index: usize, at: usize) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segments.len() + 1);
    for (i, s) in segments.iter().enumerate() {
        if i == index && at > 0 && at < s.bytes.len() {
            out.push(Segment {
                bytes: s.bytes[..at].to_vec(),
                ..s.clone()
            });
            out.push(Segment {
                seq: s.seq.wrapping_add(at as u32),
                bytes: s.bytes[at..].to_vec(),
                ..s.clone()
            });
        } else {
            out.push(s.clone());
        }
    }
    out
}

/// The same capture one byte per segment.
pub fn bytewise(segments: &[Segment]) -> Vec<Segment> {
    segments
        .iter()
        .flat_map(|s| {
            s.bytes.iter().enumerate().map(|(i, &b)| Segment {
                seq: s.seq.wrapping_add(i as u32),
                bytes: vec![b],
                ..s.clone()
            })
        })
        .collect()
}

/// Builds segments of one connection from (direction, timestamp, bytes), with
/// sequence numbers continuing per direction.
pub fn segments(parts: &[(nephilia_l7::Direction, u64, &[u8])]) -> Vec<Segment> {
    let mut seq = [1000u32, 9000u32];
    parts
        .iter()
        .map(|&(direction, timestamp_ns, bytes)| {
            let i = match direction {
                nephilia_l7::Direction::ClientToServer => 0,
                nephilia_l7::Direction::ServerToClient => 1,
            };
            let s = Segment {
                direction,
                seq: seq[i],
                timestamp_ns,
                bytes: bytes.to_vec(),
            };
            seq[i] = seq[i].wrapping_add(bytes.len() as u32);
            s
        })
        .collect()
}
