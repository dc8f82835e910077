//! HPACK header block decoding (RFC 7541) with a bounded dynamic table.
//!
//! Huffman strings are decoded by `loona-hpack`'s decoder, built once per thread:
//! `loona_hpack::Decoder` rebuilds its Huffman table for every string, which held
//! HTTP/2 parsing under 1 MB/s (see `benches/parsers.rs`). Representations,
//! integers and the table follow the RFC sections cited below.

use std::cell::RefCell;
use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

/// Why a header block does not decode. Any of these leaves the table out of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    /// An integer longer than 5 octets or past the end of the block (§5.1).
    #[error("malformed integer")]
    Integer,
    /// A string longer than what is left of the block (§5.2).
    #[error("truncated string")]
    Truncated,
    /// Index 0 or past the end of both tables (§2.3.3).
    #[error("index {0} out of range")]
    Index(usize),
    /// Bad Huffman code or padding (§5.2).
    #[error("invalid huffman string")]
    Huffman,
    /// A size update above the SETTINGS limit, or after a field (§4.2, §6.3).
    #[error("dynamic table size update to {0} refused")]
    SizeUpdate(usize),
}

thread_local! {
    static HUFFMAN: RefCell<HuffmanDecoder> = RefCell::new(HuffmanDecoder::new());
}

/// Static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// One dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// Per-entry overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The decoder of one direction: its dynamic table and the limit on its size.
#[derive(Debug)]
pub(crate) struct HpackDecoder {
    /// Newest first: index 62 is `entries[0]` (§2.3.3).
    entries: VecDeque<Entry>,
    size: usize,
    /// Current maximum, changed by size updates; 4096 until then (RFC 9113 §6.5.2).
    max_size: usize,
    /// What a size update may ask for: SETTINGS_HEADER_TABLE_SIZE, capped.
    limit: usize,
}

impl HpackDecoder {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: 4096.min(limit),
            limit,
        }
    }

    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Heap bytes: the entries and their bookkeeping.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.size + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    /// Decodes a whole header block, handing each field to `field`.
    pub(crate) fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut seen_field = false;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let (index, n) = integer(block, 7)?;
                block = &block[n..];
                let (name, value) = self.get(index)?;
                field(name, value);
                seen_field = true;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3), only before the first field (§4.2).
                let (size, n) = integer(block, 5)?;
                block = &block[n..];
                if seen_field || size > self.limit {
                    return Err(HpackError::SizeUpdate(size));
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // Literal with incremental indexing (§6.2.1), without indexing
                // (§6.2.2) or never indexed (§6.2.3).
                let indexing = first & 0x40 != 0;
                let (index, n) = integer(block, if indexing { 6 } else { 4 })?;
                block = &block[n..];
                let name = if index == 0 {
                    let (name, n) = string(block)?;
                    block = &block[n..];
                    name
                } else {
                    self.get(index)?.0.to_vec()
                };
                let (value, n) = string(block)?;
                block = &block[n..];
                field(&name, &value);
                if indexing {
                    self.insert(name, value);
                }
                seen_field = true;
            }
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::Index(index)),
        }
    }

    /// §4.4: evict oldest entries to make room; an entry larger than the table
    /// empties it and is not added.
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries
            .push_front((name.into_boxed_slice(), value.into_boxed_slice()));
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.entries.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Integer with an N-bit prefix (§5.1); at most 4 continuation octets (values up
/// to 2^28 and more), which covers every length and index a sane peer sends.
fn integer(block: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = usize::from(*block.first().ok_or(HpackError::Integer)?) & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    for (i, &b) in block.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::Integer)
}

/// String literal (§5.2): H flag, 7-bit prefix length, octets.
fn string(block: &[u8]) -> Result<(Vec<u8>, usize), HpackError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let (len, n) = integer(block, 7)?;
    let raw = block.get(n..n + len).ok_or(HpackError::Truncated)?;
    let value = if huffman {
        HUFFMAN
            .with(|h| h.borrow_mut().decode(raw))
            .map_err(|_| HpackError::Huffman)?
    } else {
        raw.to_vec()
    };
    Ok((value, n + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        // RFC 7541 Appendix C.3: three requests sharing one dynamic table.
        let blocks: [&[u8]; 3] = [
            b"\x82\x86\x84\x41\x0fwww.example.com",
            b"\x82\x86\x84\xbe\x58\x08no-cache",
            b"\x82\x87\x85\xbf\x40\x0acustom-key\x0ccustom-value",
        ];
        let mut decoder = HpackDecoder::new(4096);
        let mut all = Vec::new();
        for block in blocks {
            let mut fields = Vec::new();
            decoder
                .decode(block, |n, v| {
                    fields.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    ))
                })
                .expect("valid block");
            all.push(fields.join(" "));
        }
        assert_eq!(
            all,
            [
                ":method=GET :scheme=http :path=/ :authority=www.example.com",
                ":method=GET :scheme=http :path=/ :authority=www.example.com cache-control=no-cache",
                ":method=GET :scheme=https :path=/index.html :authority=www.example.com custom-key=custom-value",
            ]
        );
        // 57 + 53 + 54 octets (C.3.3).
        assert_eq!(decoder.size, 164);
    }

    #[test]
    fn rfc7541_c4_huffman_and_eviction() {
        // C.4.1 with Huffman, then C.5-style eviction in a 256-octet table.
        let block = b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff";
        let mut decoder = HpackDecoder::new(256);
        let mut authority = Vec::new();
        decoder
            .decode(block, |n, v| {
                if n == b":authority" {
                    authority = v.to_vec();
                }
            })
            .expect("valid block");
        assert_eq!(authority, b"www.example.com");
        assert_eq!(decoder.max_size, 256);
        for i in 0..10u8 {
            let mut b = vec![0x40, 0x01, b'k', 0x40];
            b.extend([b'v'; 0x40]);
            b[2] = b'a' + i;
            decoder.decode(&b, |_, _| {}).expect("valid");
            assert!(decoder.size <= 256);
        }
        assert_eq!(decoder.entries.len(), 2);
    }

    #[test]
    fn rejects_bad_blocks() {
        let mut d = HpackDecoder::new(100);
        assert_eq!(d.decode(b"\x80", |_, _| {}), Err(HpackError::Index(0)));
        assert_eq!(d.decode(b"\xbe", |_, _| {}), Err(HpackError::Index(62)));
        assert_eq!(d.decode(b"\xff", |_, _| {}), Err(HpackError::Integer));
        assert_eq!(
            d.decode(b"\xff\xff\xff\xff\xff\x01", |_, _| {}),
            Err(HpackError::Integer)
        );
        assert_eq!(
            d.decode(b"\x3f\xe1\x01", |_, _| {}),
            Err(HpackError::SizeUpdate(256))
        );
        assert_eq!(
            d.decode(b"\x82\x20", |_, _| {}),
            Err(HpackError::SizeUpdate(0))
        );
        assert_eq!(
            d.decode(b"\x40\x05ab", |_, _| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(b"\x00\x81\xff\x00", |_, _| {}),
            Err(HpackError::Huffman)
        );
    }
}
