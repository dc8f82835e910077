//! Per-direction TCP sequence tracking: drops retransmitted bytes, finds holes.

/// What to do with one captured segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Bytes at the front of the segment already seen (retransmission overlap).
    pub duplicate: usize,
    /// Bytes missing between the last byte seen and this segment's first new byte.
    pub missing: u64,
}

/// Next expected sequence number of one direction (RFC 9293 §3.4 arithmetic, mod 2^32).
#[derive(Debug, Default)]
pub(crate) struct SequenceTracker {
    next: Option<u32>,
}

impl SequenceTracker {
    /// Places a segment of `len` bytes starting at `seq`.
    ///
    /// Sequence comparison is modular: a segment starting up to 2^31 after the
    /// expected byte is a hole, one starting before it overlaps what was seen.
    /// Capture on `lo` is in order, so an earlier segment is a retransmission,
    /// never a late original.
    pub(crate) fn place(&mut self, seq: u32, len: usize) -> Placement {
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let Some(next) = self.next else {
            self.next = Some(seq.wrapping_add(len32));
            return Placement {
                duplicate: 0,
                missing: 0,
            };
        };
        let delta = seq.wrapping_sub(next) as i32;
        if delta >= 0 {
            self.next = Some(seq.wrapping_add(len32));
            return Placement {
                duplicate: 0,
                missing: u64::from(delta.unsigned_abs()),
            };
        }
        let overlap = delta.unsigned_abs() as usize;
        if overlap >= len {
            return Placement {
                duplicate: len,
                missing: 0,
            };
        }
        self.next = Some(seq.wrapping_add(len32));
        Placement {
            duplicate: overlap,
            missing: 0,
        }
    }

    /// Bytes the kernel announced it did not copy.
    pub(crate) fn skip(&mut self, missing: u32) {
        if let Some(next) = self.next.as_mut() {
            *next = next.wrapping_add(missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmission_overlap_and_hole() {
        let mut t = SequenceTracker::default();
        assert_eq!(
            t.place(u32::MAX - 4, 10),
            Placement {
                duplicate: 0,
                missing: 0
            }
        );
        // Wrapped: next is 5. Full retransmission.
        assert_eq!(
            t.place(u32::MAX - 4, 10),
            Placement {
                duplicate: 10,
                missing: 0
            }
        );
        // Partial overlap: 3 old bytes then 4 new.
        assert_eq!(
            t.place(2, 7),
            Placement {
                duplicate: 3,
                missing: 0
            }
        );
        // Hole of 11 bytes.
        assert_eq!(
            t.place(20, 1),
            Placement {
                duplicate: 0,
                missing: 11
            }
        );
        t.skip(100);
        assert_eq!(
            t.place(121, 1),
            Placement {
                duplicate: 0,
                missing: 0
            }
        );
    }
}
