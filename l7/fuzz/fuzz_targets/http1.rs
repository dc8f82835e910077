//! HTTP/1: raw bytes after a valid request line, so detection always picks HTTP/1
//! and the head, body and resynchronisation code gets the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nephilia_l7::{ConnectionParser, Direction, ParserLimits};

fuzz_target!(|data: &[u8]| {
    let mut parser = ConnectionParser::new(ParserLimits::default());
    // First half: requests; second half: responses; fed in 7-byte pieces.
    let (requests, responses) = data.split_at(data.len() / 2);
    let mut seq = [0u32; 2];
    parser.feed(Direction::ClientToServer, 0, 0, b"GET / HTTP/1.1\r\n");
    seq[0] = 16;
    for (d, bytes) in [(0, requests), (1, responses)] {
        let direction = if d == 0 { Direction::ClientToServer } else { Direction::ServerToClient };
        for piece in bytes.chunks(7) {
            parser.feed(direction, seq[d], 1, piece);
            seq[d] = seq[d].wrapping_add(piece.len() as u32);
        }
    }
    assert!(parser.memory_bytes() < 256 * 1024);
    let _ = parser.close();
    assert_eq!(parser.memory_bytes(), 0);
});
