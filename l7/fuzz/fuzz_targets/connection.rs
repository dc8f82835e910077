//! Arbitrary bytes as a script of segments, holes and retransmissions, both
//! directions, with small limits: no panic, memory within bound, all freed on close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nephilia_l7::{ConnectionParser, Direction, ParserLimits};

fuzz_target!(|data: &[u8]| run_script(data));

/// Script: each step is one control byte (direction, action, time step), then a
/// length byte and that many bytes for feeds, or a hole size for gaps.
fn run_script(data: &[u8]) {
    let limits = ParserLimits {
        max_head_bytes: 512,
        max_pending_requests: 4,
        max_streams: 4,
        max_hpack_table_bytes: 1024,
        max_queued_exchanges: 8,
        max_field_bytes: 64,
    };
    let mut parser = ConnectionParser::new(limits);
    let mut seq = [0u32; 2];
    let mut rest = data;
    let mut ts = 0u64;
    while let Some((&control, tail)) = rest.split_first() {
        rest = tail;
        let direction = if control & 1 == 0 { Direction::ClientToServer } else { Direction::ServerToClient };
        let d = usize::from(control & 1);
        ts += u64::from(control >> 4);
        match (control >> 1) & 0x7 {
            0 => {
                let n = u32::from(rest.first().copied().unwrap_or(0));
                parser.gap(direction, n);
                seq[d] = seq[d].wrapping_add(n);
                rest = rest.get(1..).unwrap_or_default();
            }
            1 => {
                // Retransmit from a little earlier.
                let n = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let back = u32::from(control >> 4);
                parser.feed(direction, seq[d].wrapping_sub(back), ts, feed_bytes(rest, n));
                rest = rest.get(1 + n..).unwrap_or_default();
            }
            _ => {
                let n = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let bytes = feed_bytes(rest, n);
                parser.feed(direction, seq[d], ts, bytes);
                seq[d] = seq[d].wrapping_add(bytes.len() as u32);
                rest = rest.get(1 + n..).unwrap_or_default();
            }
        }
        assert!(parser.memory_bytes() < 64 * 1024, "memory {}", parser.memory_bytes());
        let _ = parser.drain_exchanges().count();
    }
    let _ = parser.close();
    assert_eq!(parser.memory_bytes(), 0);
}

/// The `n` bytes after a step's length byte; none when the script ends at the control
/// byte (`rest` empty: slicing `rest[0..1]` panicked in the script, not in the parser).
fn feed_bytes(rest: &[u8], n: usize) -> &[u8] {
    rest.get(1..1 + n).unwrap_or_default()
}
