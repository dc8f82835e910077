//! HTTP/1.x message bodies: `Content-Length`, chunked (RFC 9112 §7.1) and until-close.

/// Why a body could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// A chunk-size line that is not `1*HEXDIG [ chunk-ext ] CRLF`, or overflows.
    #[error("malformed chunk framing")]
    Chunk,
    /// A trailer section longer than the head cap.
    #[error("trailer section too large")]
    TrailerTooLarge,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex chunk size; `digits` so far.
    Size { value: u64, digits: u8 },
    /// In a chunk extension, skipping to LF.
    Extension { value: u64 },
    /// Saw CR after the size; expecting LF.
    SizeLf { value: u64 },
    /// Chunk data left.
    Data { remaining: u64 },
    /// Expecting the CRLF closing a chunk's data (`CR` optional, as lines may end in LF).
    DataEnd,
    /// At the start of a trailer line (after the last chunk), `seen` trailer bytes.
    TrailerLineStart { seen: usize },
    /// Inside a trailer line.
    TrailerLine { seen: usize },
    /// Saw CR at the start of a trailer line: LF ends the message.
    TrailerEndLf,
}

/// State of one body being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyReader {
    Length { remaining: u64 },
    Chunked(ChunkedBody),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkedBody {
    state: Chunk,
    max_trailer: usize,
}

/// Result of feeding bytes to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyProgress {
    /// Bytes that belong to the body.
    pub consumed: usize,
    /// The body ended within those bytes.
    pub done: bool,
}

/// Result of telling a body that bytes are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapOutcome {
    /// The hole lies inside the body; still in step.
    Absorbed,
    /// The body ended inside the hole; `rest` missing bytes belong to what follows.
    Ended { rest: u64 },
    /// The hole covers framing the reader needed: where the message ends is unknown.
    Lost,
}

impl BodyReader {
    pub(crate) fn chunked(max_trailer: usize) -> Self {
        Self::Chunked(ChunkedBody {
            state: Chunk::Size {
                value: 0,
                digits: 0,
            },
            max_trailer,
        })
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<BodyProgress, BodyError> {
        match self {
            Self::Length { remaining } => {
                let n = bytes
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= n as u64;
                Ok(BodyProgress {
                    consumed: n,
                    done: *remaining == 0,
                })
            }
            Self::UntilClose => Ok(BodyProgress {
                consumed: bytes.len(),
                done: false,
            }),
            Self::Chunked(body) => body.feed(bytes),
        }
    }

    pub(crate) fn gap(&mut self, missing: u64) -> GapOutcome {
        match self {
            // A hole that takes the body's last byte ends the message now: waiting for the
            // next byte would date the response's end by the next message's.
            Self::Length { remaining } if missing < *remaining => {
                *remaining -= missing;
                GapOutcome::Absorbed
            }
            Self::Length { remaining } => GapOutcome::Ended {
                rest: missing - *remaining,
            },
            Self::UntilClose => GapOutcome::Absorbed,
            Self::Chunked(ChunkedBody {
                state: Chunk::Data { remaining },
                ..
            }) if missing <= *remaining => {
                *remaining -= missing;
                GapOutcome::Absorbed
            }
            Self::Chunked(_) => GapOutcome::Lost,
        }
    }
}

impl ChunkedBody {
    fn feed(&mut self, bytes: &[u8]) -> Result<BodyProgress, BodyError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match &mut self.state {
                Chunk::Data { remaining } => {
                    let n =
                        (bytes.len() - i).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    i += n;
                    if *remaining == 0 {
                        self.state = Chunk::DataEnd;
                    }
                    continue;
                }
                Chunk::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // 15 hex digits keep the size below 2^60: no overflow.
                        if *digits >= 15 {
                            return Err(BodyError::Chunk);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        *value = *value * 16 + u64::from(d);
                        *digits += 1;
                    }
                    b';' | b' ' | b'\t' if *digits > 0 => {
                        self.state = Chunk::Extension { value: *value };
                    }
                    b'\r' if *digits > 0 => self.state = Chunk::SizeLf { value: *value },
                    b'\n' if *digits > 0 => self.state = after_size(*value),
                    _ => return Err(BodyError::Chunk),
                },
                Chunk::Extension { value } => {
                    if b == b'\n' {
                        self.state = after_size(*value);
                    }
                }
                Chunk::SizeLf { value } => match b {
                    b'\n' => self.state = after_size(*value),
                    _ => return Err(BodyError::Chunk),
                },
                Chunk::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.state = Chunk::Size {
                            value: 0,
                            digits: 0,
                        }
                    }
                    _ => return Err(BodyError::Chunk),
                },
                Chunk::TrailerLineStart { seen } => match b {
                    b'\r' => self.state = Chunk::TrailerEndLf,
                    b'\n' => {
                        i += 1;
                        return Ok(BodyProgress {
                            consumed: i,
                            done: true,
                        });
                    }
                    _ => self.state = Chunk::TrailerLine { seen: *seen + 1 },
                },
                Chunk::TrailerLine { seen } => {
                    // Trailers are skipped, not kept; the cap only bounds how long
                    // a peer can keep us from finding the end of the message.
                    if *seen > self.max_trailer {
                        return Err(BodyError::TrailerTooLarge);
                    }
                    match b {
                        b'\n' => self.state = Chunk::TrailerLineStart { seen: *seen + 1 },
                        _ => *seen += 1,
                    }
                }
                Chunk::TrailerEndLf => match b {
                    b'\n' => {
                        i += 1;
                        return Ok(BodyProgress {
                            consumed: i,
                            done: true,
                        });
                    }
                    _ => return Err(BodyError::Chunk),
                },
            }
            i += 1;
        }
        Ok(BodyProgress {
            consumed: i,
            done: false,
        })
    }
}

/// A zero size is the last chunk: the trailer section follows (RFC 9112 §7.1.2).
fn after_size(value: u64) -> Chunk {
    if value == 0 {
        Chunk::TrailerLineStart { seen: 0 }
    } else {
        Chunk::Data { remaining: value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(body: &[u8], step: usize) -> (usize, bool) {
        let mut reader = BodyReader::chunked(1024);
        let mut total = 0;
        for piece in body.chunks(step) {
            let p = reader.feed(piece).expect("valid chunked body");
            total += p.consumed;
            if p.done {
                return (total, true);
            }
        }
        (total, false)
    }

    #[test]
    fn chunked_at_every_step() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nGET";
        let len = body.len() - 3;
        for step in 1..body.len() {
            assert_eq!(read_all(body, step), (len, true), "step {step}");
        }
    }

    #[test]
    fn chunk_errors_and_gaps() {
        assert_eq!(
            BodyReader::chunked(64).feed(b"zz\r\n"),
            Err(BodyError::Chunk)
        );
        assert_eq!(
            BodyReader::chunked(64).feed(b"1234567890abcdef0\r\n"),
            Err(BodyError::Chunk)
        );
        let mut r = BodyReader::chunked(64);
        r.feed(b"10\r\nab").expect("valid");
        assert_eq!(r.gap(10), GapOutcome::Absorbed);
        assert_eq!(r.gap(10), GapOutcome::Lost);
        let mut r = BodyReader::Length { remaining: 10 };
        assert_eq!(r.gap(4), GapOutcome::Absorbed);
        assert_eq!(r.gap(9), GapOutcome::Ended { rest: 3 });
    }
}
