//! Decoding of the `L7_SEGMENTS` ring buffer records written by `ebpf/src/l7.rs`.

use std::net::SocketAddr;

use nephilia_common::{
    L7Segment, Role,
    l7::{
        L7_CHUNK_BYTES, L7_FLAG_TRUNCATED, L7_HOOK_EGRESS, L7_HOOK_INGRESS, L7_SEGMENT_HEADER_BYTES,
    },
};

use crate::record::endpoint;

/// A ring-buffer record that is not a segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header, or longer than a full record.
    #[error("L7 segment record of {0} bytes, expected {L7_SEGMENT_HEADER_BYTES}..={max}", max = L7_SEGMENT_HEADER_BYTES + L7_CHUNK_BYTES)]
    Size(usize),
    /// `captured` does not match the bytes that follow the header.
    #[error("L7 segment record says {captured} payload bytes but carries {carried}")]
    Captured { captured: u32, carried: usize },
    /// The hook is neither egress nor ingress.
    #[error("L7 segment record of unknown hook {0}")]
    Hook(u8),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the program ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

/// What the kernel knew of the socket that sent a segment (egress only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub cookie: u64,
    /// `None` when the socket is not in the kernel's connection table (it predates the
    /// agent) or is not a full socket.
    pub role: Option<Role>,
    pub netns: u32,
    pub pid: u32,
    pub mark: u32,
    /// The socket's own peer: for an app's redirected connection, the original destination.
    pub remote: Option<SocketAddr>,
}

/// One decoded record: a piece of one TCP segment's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub timestamp_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub sender: Option<Sender>,
    pub seq: u32,
    /// Payload bytes of the whole TCP segment.
    pub segment_len: u32,
    /// Offset of `data` in the segment's payload.
    pub offset: u32,
    pub ifindex: u32,
    pub hook: Hook,
    /// Bytes of the segment after `data` that no record carries.
    pub missing_after: u32,
    pub data: Vec<u8>,
}

/// `lo` has this index in every network namespace (`LOOPBACK_IFINDEX`).
pub const LOOPBACK_IFINDEX: u32 = 1;

impl Segment {
    /// Captured on `lo`: both ends are sockets of the same namespace.
    pub fn on_loopback(&self) -> bool {
        self.ifindex == LOOPBACK_IFINDEX
    }

    /// The endpoint that lives in the namespace where the segment was captured (for a
    /// pod interface: the sender on egress, the receiver on ingress).
    pub fn local_endpoint(&self) -> SocketAddr {
        match self.hook {
            Hook::Egress => self.src,
            Hook::Ingress => self.dst,
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Segment> {
    if bytes.len() < L7_SEGMENT_HEADER_BYTES
        || bytes.len() > L7_SEGMENT_HEADER_BYTES + L7_CHUNK_BYTES
    {
        return Err(Error::Size(bytes.len()));
    }
    let mut raw = std::mem::MaybeUninit::<L7Segment>::zeroed();
    // SAFETY: at most `size_of::<L7Segment>()` bytes are copied into a zeroed, plain-data
    // value, which is valid for any bytes.
    let raw = unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.as_mut_ptr().cast::<u8>(), bytes.len());
        raw.assume_init()
    };
    let carried = bytes.len() - L7_SEGMENT_HEADER_BYTES;
    if raw.captured as usize != carried {
        return Err(Error::Captured {
            captured: raw.captured,
            carried,
        });
    }
    let hook = match raw.hook {
        L7_HOOK_EGRESS => Hook::Egress,
        L7_HOOK_INGRESS => Hook::Ingress,
        other => return Err(Error::Hook(other)),
    };
    let sender = (raw.cookie != 0).then(|| {
        let role = Role::from_u8(raw.sender_role);
        Sender {
            cookie: raw.cookie,
            role,
            netns: raw.netns,
            pid: raw.pid,
            mark: raw.mark,
            remote: role.map(|_| endpoint(&raw.sender_remote)),
        }
    });
    let end = raw.offset.saturating_add(raw.captured);
    let missing_after = if raw.flags & L7_FLAG_TRUNCATED != 0 {
        raw.segment_len.saturating_sub(end)
    } else {
        0
    };
    Ok(Segment {
        timestamp_ns: raw.timestamp_ns,
        src: endpoint(&raw.src),
        dst: endpoint(&raw.dst),
        sender,
        seq: raw.seq,
        segment_len: raw.segment_len,
        offset: raw.offset,
        ifindex: raw.ifindex,
        hook,
        missing_after,
        data: bytes[L7_SEGMENT_HEADER_BYTES..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use nephilia_common::{Endpoint, ProbeFailure, connection::FAMILY_IPV4};

    use super::*;

    fn ipv4(addr: [u8; 4], port: u16) -> Endpoint {
        let mut endpoint = Endpoint {
            port,
            family: FAMILY_IPV4,
            ..Endpoint::default()
        };
        endpoint.addr[..4].copy_from_slice(&addr);
        endpoint
    }

    /// The bytes the kernel writes: the header, then `captured` payload bytes.
    fn record(segment: &L7Segment) -> Vec<u8> {
        // SAFETY: viewing a plain `#[repr(C)]` value as bytes.
        let all = unsafe {
            std::slice::from_raw_parts(
                (segment as *const L7Segment).cast::<u8>(),
                size_of::<L7Segment>(),
            )
        };
        all[..L7_SEGMENT_HEADER_BYTES + segment.captured as usize].to_vec()
    }

    fn segment(payload: &[u8]) -> L7Segment {
        let mut data = [0u8; L7_CHUNK_BYTES];
        data[..payload.len()].copy_from_slice(payload);
        L7Segment {
            timestamp_ns: 42_000,
            cookie: 7,
            src: ipv4([10, 244, 1, 10], 40_000),
            dst: ipv4([127, 0, 0, 1], 15001),
            sender_remote: ipv4([10, 96, 0, 20], 80),
            netns: 4_026_532_000,
            pid: 1234,
            mark: 0,
            seq: 1_000,
            segment_len: 5_000,
            offset: 2_048,
            captured: payload.len() as u32,
            ifindex: 1,
            sender_role: Role::Client as u8,
            hook: L7_HOOK_EGRESS,
            flags: L7_FLAG_TRUNCATED,
            _pad: [0; 5],
            data,
        }
    }

    #[test]
    fn kernel_record_decodes_with_sender_and_gap() {
        let bytes = record(&segment(b"GET / HTTP/1.1\r\n"));
        assert_eq!(bytes.len(), L7_SEGMENT_HEADER_BYTES + 16);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.src, "10.244.1.10:40000".parse().unwrap());
        assert_eq!(decoded.dst, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(decoded.data, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            (decoded.seq, decoded.offset, decoded.segment_len),
            (1_000, 2_048, 5_000)
        );
        // 5000 - (2048 + 16) bytes of the segment were not copied.
        assert_eq!(decoded.missing_after, 2_936);
        assert!(decoded.on_loopback());
        assert_eq!(decoded.local_endpoint(), decoded.src);
        assert_eq!(
            decoded.sender,
            Some(Sender {
                cookie: 7,
                role: Some(Role::Client),
                netns: 4_026_532_000,
                pid: 1234,
                mark: 0,
                remote: Some("10.96.0.20:80".parse().unwrap()),
            })
        );
    }

    #[test]
    fn header_only_ingress_record_without_sender() {
        let mut raw = segment(b"");
        raw.cookie = 0;
        raw.hook = L7_HOOK_INGRESS;
        raw.offset = 0;
        raw.ifindex = 3;
        let decoded = decode(&record(&raw)).unwrap();
        assert_eq!(decoded.sender, None);
        assert_eq!(decoded.missing_after, 5_000);
        assert!(!decoded.on_loopback());
        assert_eq!(decoded.local_endpoint(), decoded.dst);
        raw.flags = 0;
        assert_eq!(decode(&record(&raw)).unwrap().missing_after, 0);
    }

    #[test]
    fn malformed_records_are_rejected() {
        assert_eq!(decode(&[0; 10]).unwrap_err(), Error::Size(10));
        let mut bytes = record(&segment(b"abc"));
        bytes.pop();
        assert_eq!(
            decode(&bytes).unwrap_err(),
            Error::Captured {
                captured: 3,
                carried: 2
            }
        );
        let mut raw = segment(b"abc");
        raw.hook = 9;
        assert_eq!(decode(&record(&raw)).unwrap_err(), Error::Hook(9));
    }

    #[test]
    fn failure_counters_are_indexed_in_order() {
        for (index, failure) in ProbeFailure::ALL.iter().enumerate() {
            assert_eq!(*failure as usize, index);
        }
        assert_eq!(
            ProbeFailure::L7OverBudget.labels(),
            ("l7_capture", "over_budget")
        );
    }
}
