//! Stable-Rust fuzzing of the parsers: a seeded mutator over the corpus runs for a
//! bounded time (`L7_FUZZ_SECONDS`, default 8) and asserts that no input panics,
//! that the parser's own memory accounting stays under what its limits allow,
//! and that `close` releases everything. Deeper runs: `l7/fuzz/` (cargo fuzz).
//!
//! A failure prints the seed; rerun it with `L7_FUZZ_SEED=<seed>`.

#[path = "support/capture.rs"]
mod capture;

use std::time::{Duration, Instant};

use capture::Segment;
use nephilia_l7::{ConnectionParser, Direction, ParserLimits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds beyond the corpus: shapes the captures don't have.
fn extra_seeds() -> Vec<Vec<Segment>> {
    let c = Direction::ClientToServer;
    let s = Direction::ServerToClient;
    let seg = |direction, seq, bytes: &[u8]| Segment {
        direction,
        seq,
        timestamp_ns: u64::from(seq),
        bytes: bytes.to_vec(),
    };
    vec![
        vec![
            seg(c, 0, b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n"),
            seg(s, 0, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nbody until close"),
        ],
        vec![
            seg(c, 0, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            seg(s, 0, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello"),
        ],
        vec![seg(c, 0, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")],
        vec![seg(s, 0, b"220 smtp ready\r\n"), seg(c, 0, b"EHLO x\r\n")],
    ]
}

fn mutate_bytes(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.random());
        return;
    }
    match rng.random_range(0..7) {
        0 => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        2 => {
            let i = rng.random_range(0..=bytes.len());
            let n = rng.random_range(1..16);
            let fill: u8 = rng.random();
            bytes.splice(i..i, std::iter::repeat_n(fill, n));
        }
        3 => {
            let i = rng.random_range(0..bytes.len());
            let n = rng.random_range(1..=(bytes.len() - i).min(32));
            bytes.drain(i..i + n);
        }
        4 => {
            // Interesting values where lengths and flags live.
            let i = rng.random_range(0..bytes.len());
            bytes[i] =
                [0x00, 0xff, 0x7f, 0x80, b'\r', b'\n', b':', b' ', b'0'][rng.random_range(0..9)];
        }
        5 => {
            let n = rng.random_range(0..=bytes.len());
            bytes.truncate(n);
        }
        _ => {
            // Duplicate a slice (repeated headers, frames, chunks).
            let i = rng.random_range(0..bytes.len());
            let n = rng.random_range(1..=(bytes.len() - i).min(64));
            let copy = bytes[i..i + n].to_vec();
            let at = rng.random_range(0..=bytes.len());
            bytes.splice(at..at, copy);
        }
    }
}

/// How a mutated capture is fed: segments, holes, retransmissions, re-splits.
enum Step {
    Feed(Segment),
    Gap(Direction, u32),
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<Segment>]) -> Vec<Step> {
    let mut segments = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(0..6) {
        if segments.is_empty() {
            break;
        }
        match rng.random_range(0..5) {
            0..=1 => {
                let i = rng.random_range(0..segments.len());
                mutate_bytes(rng, &mut segments[i].bytes);
            }
            2 => {
                // Splice a segment from another capture.
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let s = other[rng.random_range(0..other.len())].clone();
                    let at = rng.random_range(0..=segments.len());
                    segments.insert(at, s);
                }
            }
            3 => {
                let i = rng.random_range(0..segments.len());
                segments.remove(i);
            }
            _ => {
                let i = rng.random_range(0..segments.len());
                let s = segments[i].clone();
                segments.insert(i, s);
            }
        }
    }
    // Sequence numbers follow the (mutated) bytes, then holes and retransmissions.
    let mut next = [rng.random::<u32>(), rng.random::<u32>()];
    let mut steps = Vec::new();
    for s in segments {
        let d = usize::from(s.direction == Direction::ServerToClient);
        let mut pieces = vec![s.bytes.clone()];
        if rng.random_bool(0.3) && s.bytes.len() > 1 {
            let at = rng.random_range(1..s.bytes.len());
            pieces = vec![s.bytes[..at].to_vec(), s.bytes[at..].to_vec()];
        }
        for bytes in pieces {
            match rng.random_range(0..20) {
                0 => {
                    let n = rng.random_range(1..64);
                    steps.push(Step::Gap(s.direction, n));
                    next[d] = next[d].wrapping_add(n);
                }
                1 => next[d] = next[d].wrapping_add(rng.random_range(1..200)),
                2 => steps.push(Step::Feed(Segment {
                    seq: next[d].wrapping_sub(rng.random_range(1..50)),
                    bytes: bytes.clone(),
                    ..s.clone()
                })),
                _ => {}
            }
            let len = bytes.len() as u32;
            steps.push(Step::Feed(Segment {
                seq: next[d],
                bytes,
                ..s.clone()
            }));
            next[d] = next[d].wrapping_add(len);
        }
    }
    steps
}

fn limits(rng: &mut StdRng) -> ParserLimits {
    if rng.random_bool(0.5) {
        ParserLimits::default()
    } else {
        ParserLimits {
            max_head_bytes: rng.random_range(16..512),
            max_pending_requests: rng.random_range(1..4),
            max_streams: rng.random_range(1..4),
            max_hpack_table_bytes: rng.random_range(0..512),
            max_queued_exchanges: rng.random_range(1..4),
            max_field_bytes: rng.random_range(1..64),
        }
    }
}

/// What the limits allow one parser to hold, generously: buffers per direction,
/// pending requests or streams with their fields, both HPACK tables (twice their
/// RFC 7541 size for allocation overhead), queued exchanges, detection buffers.
fn memory_budget(l: &ParserLimits, largest_segment: usize) -> usize {
    let head = l.max_head_bytes.max(64);
    let per_item = 1024 + 6 * l.max_field_bytes;
    6 * head
        + 2 * largest_segment
        + (l.max_pending_requests.max(l.max_streams) + 1) * per_item
        + 4 * l.max_hpack_table_bytes
        + l.max_queued_exchanges * per_item
        + 4096
}

fn run_one(seed: u64, seeds: &[Vec<Segment>]) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let limits = limits(&mut rng);
    let steps = mutate(&mut rng, seeds);
    let largest = steps
        .iter()
        .map(|s| match s {
            Step::Feed(s) => s.bytes.len(),
            Step::Gap(..) => 0,
        })
        .max()
        .unwrap_or(0);
    let budget = memory_budget(&limits, largest);
    let mut parser = ConnectionParser::new(limits);
    let mut emitted = 0;
    for step in &steps {
        match step {
            Step::Feed(s) => parser.feed(s.direction, s.seq, s.timestamp_ns, &s.bytes),
            Step::Gap(d, n) => parser.gap(*d, *n),
        }
        let memory = parser.memory_bytes();
        assert!(
            memory <= budget,
            "seed {seed}: {memory} bytes > budget {budget}"
        );
        if rng.random_bool(0.5) {
            for e in parser.drain_exchanges() {
                assert!(
                    e.response_end_ns.is_none() || e.latency_ns.is_some() || e.incomplete,
                    "seed {seed}"
                );
                emitted += 1;
            }
        }
    }
    assert!(
        parser.queued_exchanges() <= limits.max_queued_exchanges.max(1),
        "seed {seed}"
    );
    emitted += parser.queued_exchanges();
    emitted += parser.close().len();
    assert_eq!(
        parser.memory_bytes(),
        0,
        "seed {seed}: close must release everything"
    );
    // Input after close is dropped without growing anything.
    parser.feed(Direction::ClientToServer, 0, 0, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(parser.memory_bytes(), 0, "seed {seed}");
    emitted
}

#[test]
fn mutated_corpus_never_panics_and_stays_bounded() {
    let mut seeds: Vec<Vec<Segment>> = capture::all().into_iter().map(|(_, s)| s).collect();
    seeds.extend(extra_seeds());
    if let Ok(seed) = std::env::var("L7_FUZZ_SEED") {
        run_one(seed.parse().expect("L7_FUZZ_SEED is a u64"), &seeds);
        return;
    }
    let seconds = std::env::var("L7_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut iterations = 0u64;
    let mut exchanges = 0;
    while Instant::now() < deadline {
        let seed = iterations;
        let result = std::panic::catch_unwind(|| run_one(seed, &seeds));
        match result {
            Ok(n) => exchanges += n,
            Err(_) => panic!("L7 fuzz: seed {seed} failed; rerun with L7_FUZZ_SEED={seed}"),
        }
        iterations += 1;
    }
    eprintln!("L7 fuzz: {iterations} inputs in {seconds} s, {exchanges} exchanges");
    assert!(
        iterations > 100,
        "too few iterations to mean anything: {iterations}"
    );
}
