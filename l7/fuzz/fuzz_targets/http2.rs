//! HTTP/2: the preface, then the input split into client and server frames, so
//! framing, HPACK and stream handling get the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nephilia_l7::{ConnectionParser, Direction, ParserLimits};

fuzz_target!(|data: &[u8]| {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    parser.feed(Direction::ClientToServer, 0, 0, preface);
    let mut seq = [preface.len() as u32, 0];
    // Alternate directions every 64 bytes: interleaved streams both ways.
    for (i, piece) in data.chunks(64).enumerate() {
        let d = i % 2;
        let direction = if d == 0 { Direction::ClientToServer } else { Direction::ServerToClient };
        parser.feed(direction, seq[d], i as u64, piece);
        seq[d] = seq[d].wrapping_add(piece.len() as u32);
    }
    assert!(parser.memory_bytes() < 1024 * 1024);
    let _ = parser.close();
    assert_eq!(parser.memory_bytes(), 0);
});
