//! HTTP/2 framing (RFC 9113 §4, §6): reads frames of one direction from segments
//! split anywhere, buffering only the payloads the parser must read.

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_ACK: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;

/// Why framing cannot be followed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The client did not start with the connection preface.
    #[error("bad connection preface")]
    Preface,
    /// A frame whose payload the parser must buffer is larger than the cap.
    #[error("frame of {0} bytes exceeds the header block cap")]
    TooLarge(u32),
    /// Padding longer than the payload (RFC 9113 §6.1: a connection error).
    #[error("padding exceeds the frame payload")]
    Padding,
}

/// The 9-octet frame header (RFC 9113 §4.1) and when its first byte was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub start_ts: u64,
}

impl FrameHeader {
    fn parse(b: &[u8; 9], start_ts: u64) -> Self {
        Self {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // The reserved high bit is ignored on receipt (RFC 9113 §4.1).
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
            start_ts,
        }
    }

    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Frame bytes on the wire.
    pub(crate) fn wire_len(&self) -> u64 {
        9 + u64::from(self.length)
    }
}

/// What the reader found in its input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameEvent<'a> {
    /// A whole buffered payload is in [`FrameReader::payload`].
    Buffered(FrameHeader),
    /// Some DATA payload bytes (padding removed).
    Data(FrameHeader, &'a [u8]),
    /// A streamed (DATA) or skipped frame ended.
    Ended(FrameHeader),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Preface {
        matched: usize,
    },
    Header {
        have: usize,
        start_ts: u64,
    },
    Buffer(FrameHeader),
    Data {
        header: FrameHeader,
        remaining: u32,
        data_left: u32,
        need_pad_len: bool,
    },
    Skip {
        header: FrameHeader,
        remaining: u32,
    },
}

/// The frame reader of one direction.
#[derive(Debug)]
pub(crate) struct FrameReader {
    state: State,
    header: [u8; 9],
    pub(crate) payload: Vec<u8>,
}

/// Frames whose payload the parser reads: header blocks and the small control frames.
fn buffered(kind: u8) -> bool {
    matches!(
        kind,
        HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM
    )
}

impl FrameReader {
    pub(crate) fn new(expect_preface: bool) -> Self {
        Self {
            state: if expect_preface {
                State::Preface { matched: 0 }
            } else {
                State::Header {
                    have: 0,
                    start_ts: 0,
                }
            },
            header: [0; 9],
            payload: Vec::new(),
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.payload.capacity()
    }

    /// Reads from `input` (advancing it) up to the next event; `Ok(None)` when
    /// `input` is used up.
    pub(crate) fn next<'a>(
        &mut self,
        input: &mut &'a [u8],
        ts: u64,
        max_buffer: usize,
    ) -> Result<Option<FrameEvent<'a>>, FrameError> {
        loop {
            if input.is_empty() {
                // A zero-length payload completes as soon as its header does.
                return Ok(self.complete_empty());
            }
            match &mut self.state {
                State::Preface { matched } => {
                    let n = input.len().min(PREFACE.len() - *matched);
                    if input[..n] != PREFACE[*matched..*matched + n] {
                        return Err(FrameError::Preface);
                    }
                    *matched += n;
                    *input = &input[n..];
                    if *matched == PREFACE.len() {
                        self.state = State::Header {
                            have: 0,
                            start_ts: ts,
                        };
                    }
                }
                State::Header { have, start_ts } => {
                    if *have == 0 {
                        *start_ts = ts;
                    }
                    let n = input.len().min(9 - *have);
                    self.header[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    *input = &input[n..];
                    if *have == 9 {
                        let header = FrameHeader::parse(&self.header, *start_ts);
                        self.start_payload(header, max_buffer)?;
                        if let Some(event) = self.complete_empty() {
                            return Ok(Some(event));
                        }
                    }
                }
                State::Buffer(header) => {
                    let header = *header;
                    let want = header.length as usize - self.payload.len();
                    let n = input.len().min(want);
                    self.payload.extend_from_slice(&input[..n]);
                    *input = &input[n..];
                    if self.payload.len() == header.length as usize {
                        self.state = State::Header {
                            have: 0,
                            start_ts: ts,
                        };
                        return Ok(Some(FrameEvent::Buffered(header)));
                    }
                }
                State::Data {
                    header,
                    remaining,
                    data_left,
                    need_pad_len,
                } => {
                    let header = *header;
                    if *need_pad_len {
                        let pad = u32::from(input[0]);
                        *input = &input[1..];
                        *remaining -= 1;
                        *need_pad_len = false;
                        if pad > *remaining {
                            return Err(FrameError::Padding);
                        }
                        *data_left = *remaining - pad;
                    } else if *data_left > 0 {
                        let n = input.len().min(*data_left as usize);
                        let (data, rest) = input.split_at(n);
                        *input = rest;
                        *data_left -= n as u32;
                        *remaining -= n as u32;
                        return Ok(Some(FrameEvent::Data(header, data)));
                    } else {
                        // Padding octets.
                        let n = input.len().min(*remaining as usize);
                        *input = &input[n..];
                        *remaining -= n as u32;
                    }
                    if *remaining == 0 {
                        self.state = State::Header {
                            have: 0,
                            start_ts: ts,
                        };
                        return Ok(Some(FrameEvent::Ended(header)));
                    }
                }
                State::Skip { header, remaining } => {
                    let header = *header;
                    let n = input.len().min(*remaining as usize);
                    *input = &input[n..];
                    *remaining -= n as u32;
                    if *remaining == 0 {
                        self.state = State::Header {
                            have: 0,
                            start_ts: ts,
                        };
                        return Ok(Some(FrameEvent::Ended(header)));
                    }
                }
            }
        }
    }

    fn start_payload(&mut self, header: FrameHeader, max_buffer: usize) -> Result<(), FrameError> {
        self.state = if header.kind == DATA {
            State::Data {
                header,
                remaining: header.length,
                data_left: if header.has(FLAG_PADDED) {
                    0
                } else {
                    header.length
                },
                need_pad_len: header.has(FLAG_PADDED),
            }
        } else if buffered(header.kind) {
            if header.length as usize > max_buffer {
                if matches!(header.kind, SETTINGS | RST_STREAM) {
                    // Not needed to stay in step; skipping keeps the connection.
                    State::Skip {
                        header,
                        remaining: header.length,
                    }
                } else {
                    return Err(FrameError::TooLarge(header.length));
                }
            } else {
                self.payload.clear();
                State::Buffer(header)
            }
        } else {
            State::Skip {
                header,
                remaining: header.length,
            }
        };
        Ok(())
    }

    /// Completes a frame whose payload is empty (or a padded DATA frame of length 0,
    /// which RFC 9113 §6.1 makes a connection error: reported as padding).
    fn complete_empty(&mut self) -> Option<FrameEvent<'static>> {
        let event = match self.state {
            State::Buffer(header) if header.length == 0 => FrameEvent::Buffered(header),
            State::Data {
                header,
                remaining: 0,
                ..
            }
            | State::Skip {
                header,
                remaining: 0,
            } => FrameEvent::Ended(header),
            _ => return None,
        };
        self.state = State::Header {
            have: 0,
            start_ts: 0,
        };
        Some(event)
    }

    /// Bytes of this direction were not captured. Only payloads the parser does
    /// not read can be stepped over; returns the frame that ended inside the hole,
    /// or `Err` when framing is lost.
    pub(crate) fn gap(&mut self, missing: u64) -> Result<Option<FrameHeader>, ()> {
        let (header, remaining) = match &mut self.state {
            State::Data {
                header,
                remaining,
                data_left,
                need_pad_len: false,
            } if missing <= u64::from(*remaining) => {
                let m = missing as u32;
                *remaining -= m;
                *data_left = data_left.saturating_sub(m);
                (*header, *remaining)
            }
            State::Skip { header, remaining } if missing <= u64::from(*remaining) => {
                *remaining -= missing as u32;
                (*header, *remaining)
            }
            _ => return Err(()),
        };
        if remaining == 0 {
            self.state = State::Header {
                have: 0,
                start_ts: 0,
            };
            return Ok(Some(header));
        }
        Ok(None)
    }

    /// Whether the reader is in a DATA payload (a gap there loses gRPC message framing).
    pub(crate) fn in_data(&self) -> Option<u32> {
        match self.state {
            State::Data { header, .. } => Some(header.stream_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[test]
    fn padded_data_split_everywhere() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            DATA,
            FLAG_PADDED | FLAG_END_STREAM,
            1,
            b"\x03helloXXX",
        ));
        wire.extend(frame(SETTINGS, 0, 0, b""));
        for split in 0..wire.len() {
            let mut reader = FrameReader::new(true);
            let mut data = Vec::new();
            let mut events = Vec::new();
            for mut input in [&wire[..split], &wire[split..]] {
                while let Some(event) = reader.next(&mut input, 7, 1024).expect("valid") {
                    match event {
                        FrameEvent::Data(_, bytes) => data.extend_from_slice(bytes),
                        FrameEvent::Ended(h) | FrameEvent::Buffered(h) => {
                            events.push((h.kind, h.length))
                        }
                    }
                }
            }
            assert_eq!(data, b"hello", "split {split}");
            assert_eq!(events, vec![(DATA, 9), (SETTINGS, 0)], "split {split}");
        }
    }

    #[test]
    fn bad_preface_and_padding() {
        let mut reader = FrameReader::new(true);
        assert_eq!(
            reader.next(&mut &b"GET / HTTP/1.1"[..], 0, 64),
            Err(FrameError::Preface)
        );
        let mut reader = FrameReader::new(false);
        let f = frame(DATA, FLAG_PADDED, 1, b"\x09ab");
        let mut input = &f[..];
        assert_eq!(reader.next(&mut input, 0, 64), Err(FrameError::Padding));
    }
}
