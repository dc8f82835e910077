//! Captures in `tests/corpus/*.cap`: the bytes each direction carried, in order.
//!
//! Format, one record after another:
//! `C|S <seq> <timestamp_ns> <len>\n` followed by `len` raw bytes and `\n`.
//! `C` is client → server, `S` server → client; `seq` is the TCP sequence
//! number of the first byte (the generator starts each direction at an ISN).

#![allow(dead_code, reason = "each test crate uses a different part")]

use std::path::PathBuf;

use nephilia_l7::Direction;

/// One captured segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub direction: Direction,
    pub seq: u32,
    pub timestamp_ns: u64,
    pub bytes: Vec<u8>,
}

pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Reads a capture; panics with the file name on a malformed file.
pub fn load(name: &str) -> Vec<Segment> {
    let path = corpus_dir().join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse(&data).unwrap_or_else(|| panic!("malformed capture {}", path.display()))
}

pub fn parse(mut data: &[u8]) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    while !data.is_empty() {
        let eol = data.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&data[..eol]).ok()?;
        let mut fields = line.split(' ');
        let direction = match fields.next()? {
            "C" => Direction::ClientToServer,
            "S" => Direction::ServerToClient,
            _ => return None,
        };
        let seq = fields.next()?.parse().ok()?;
        let timestamp_ns = fields.next()?.parse().ok()?;
        let len: usize = fields.next()?.parse().ok()?;
        let bytes = data.get(eol + 1..eol + 1 + len)?.to_vec();
        if data.get(eol + 1 + len) != Some(&b'\n') {
            return None;
        }
        data = &data[eol + 2 + len..];
        segments.push(Segment {
            direction,
            seq,
            timestamp_ns,
            bytes,
        });
    }
    Some(segments)
}

pub fn write(segments: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        let d = match s.direction {
            Direction::ClientToServer => 'C',
            Direction::ServerToClient => 'S',
        };
        out.extend(format!("{d} {} {} {}\n", s.seq, s.timestamp_ns, s.bytes.len()).bytes());
        out.extend(&s.bytes);
        out.push(b'\n');
    }
    out
}

/// Every capture of the corpus, by file name.
pub fn all() -> Vec<(String, Vec<Segment>)> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cap"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let s = load(&n);
            (n, s)
        })
        .collect()
}
