//! Payload capture for the L7 parsers: TC classifiers that copy a bounded prefix of each
//! TCP segment's payload to the `L7_SEGMENTS` ring buffer.
//!
//! Where they run (attached by the agent, `agent/src/l7_capture/attach.rs`):
//! - **egress of `lo`** in every enrolled pod namespace: ambient mode's plaintext hop
//!   (app ↔ ztunnel's 15001 outbound, ztunnel's delivery ↔ app inbound) only crosses that
//!   `lo` (shared/DESIGN.md). A loopback packet passes egress and then ingress of `lo`;
//!   egress alone sees it once, and at egress `skb->sk` is still the *sending* socket,
//!   so its cookie joins the segment to `CONNECTIONS` (namespace, role, pid, mark, the
//!   socket's own peer — the original destination of a redirected app connection).
//! - **egress and ingress of the pod's interface** in pods that are not enrolled: their
//!   traffic is plaintext on the wire. Ingress packets have no local socket yet
//!   (cookie 0); the agent tells their direction from the connection's other segments.
//!
//! "Heads matter, bodies don't": each direction of a connection has a copy budget
//! (`L7_BUDGET_BYTES`) that refills when the other side speaks (a turn: the next request
//! or response head starts), kept in an LRU map keyed by the connection's client endpoint
//! (`L7FlowKey` says why not by the address pair). Bytes past the
//! budget or past the per-segment cap are not copied; the segment's record says so
//! (`L7_FLAG_TRUNCATED`, a header-only record when nothing was copied) and the parsers
//! step over the gap. Drops are counted in `PROBE_FAILURES`.
//!
//! The programs never change a packet's fate: they return `TC_ACT_UNSPEC` (-1), which
//! netlink `cls_bpf` treats as "continue with the next filter" and TCX as `TCX_NEXT`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use nephilia_common::{
    Endpoint, L7Budget, L7FlowKey, L7Segment, ProbeFailure, Role,
    connection::{FAMILY_IPV4, FAMILY_IPV6},
    l7::{
        L7_BUDGET_BYTES, L7_CHUNK_BYTES, L7_CHUNKS_PER_SEGMENT, L7_FLAG_TRUNCATED, L7_HOOK_EGRESS,
        L7_HOOK_INGRESS, L7_SEGMENT_HEADER_BYTES,
    },
};

use crate::connection::{CONNECTIONS, count};

/// `TC_ACT_UNSPEC`: no verdict, the next filter or program decides.
const TC_ACT_UNSPEC: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;

/// Segment records for the agent. Sized for bursts: a full budget in both directions
/// of a few hundred connections.
#[map]
static L7_SEGMENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Unread bytes above which a record wakes the agent (see `WAKEUP_THRESHOLD_BYTES` in
/// connection.rs); below it the agent drains on its 100 ms timer.
const WAKEUP_THRESHOLD_BYTES: u64 = 1 << 20;

/// Per-connection copy budgets; LRU so idle connections make room for new ones.
#[map]
static L7_BUDGETS: LruHashMap<L7FlowKey, L7Budget> = LruHashMap::with_max_entries(65_536, 0);

/// Where a record is assembled: too large for the 512-byte stack.
#[map]
static L7_SCRATCH: PerCpuArray<L7Segment> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn l7_capture_egress(ctx: TcContext) -> i32 {
    if let Err(failure) = capture(&ctx, L7_HOOK_EGRESS) {
        count(failure);
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l7_capture_ingress(ctx: TcContext) -> i32 {
    if let Err(failure) = capture(&ctx, L7_HOOK_INGRESS) {
        count(failure);
    }
    TC_ACT_UNSPEC
}

/// Where a TCP segment's payload is; its addresses go straight into the record.
struct Tcp {
    seq: u32,
    payload_offset: u32,
    payload_len: u32,
}

fn read_failed<E>(_: E) -> ProbeFailure {
    ProbeFailure::L7ReadFailed
}

fn capture(ctx: &TcContext, hook: u8) -> Result<(), ProbeFailure> {
    let scratch = L7_SCRATCH.get_ptr_mut(0).ok_or(ProbeFailure::L7MapFull)?;
    // SAFETY: the per-CPU slot is only used by this program invocation on this CPU.
    let record = unsafe { &mut *scratch };
    // The addresses are parsed into the record (map memory): two endpoints on the stack
    // and their copies cost 100 bytes of the 512-byte BPF stack.
    let Some(tcp) = parse(ctx, &mut record.src, &mut record.dst)? else {
        return Ok(());
    };
    if tcp.payload_len == 0 {
        return Ok(());
    }
    record.timestamp_ns = bpf_ktime_get_ns_safe();
    // SAFETY: the context is a `__sk_buff`, which this helper takes in TC programs.
    record.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    record.sender_remote = Endpoint::default();
    record.netns = 0;
    record.pid = 0;
    record.mark = 0;
    record.sender_role = 0;
    if record.cookie != 0
        && let Some(state) = CONNECTIONS.get_ptr(record.cookie)
    {
        // SAFETY: map values stay valid for the duration of the program.
        let state = unsafe { &*state };
        record.sender_remote = state.remote;
        record.netns = state.netns;
        record.pid = state.pid;
        record.mark = state.mark;
        record.sender_role = state.role;
    }
    record.segment_len = tcp.payload_len;
    // SAFETY: reading a field of the program's own context.
    record.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let allowed = take_budget(&tcp, record)?;
    record.hook = hook;
    record._pad = [0; 5];

    if allowed < tcp.payload_len {
        count(ProbeFailure::L7OverBudget);
    }
    if allowed == 0 {
        // Nothing copied: a header-only record still tells the parsers where the
        // message's bytes went, so an exchange completes on time.
        return emit(ctx, record, &tcp, 0, 0, L7_FLAG_TRUNCATED);
    }
    let mut offset: u32 = 0;
    for _ in 0..L7_CHUNKS_PER_SEGMENT {
        if offset >= allowed {
            break;
        }
        let left = allowed - offset;
        let len = if left > L7_CHUNK_BYTES as u32 {
            L7_CHUNK_BYTES as u32
        } else {
            left
        };
        let last = offset + len >= allowed;
        let flags = if last && allowed < tcp.payload_len {
            L7_FLAG_TRUNCATED
        } else {
            0
        };
        emit(ctx, record, &tcp, offset, len, flags)?;
        offset += len;
    }
    Ok(())
}

fn bpf_ktime_get_ns_safe() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Copies `len` payload bytes at `offset` and writes the record.
fn emit(
    ctx: &TcContext,
    record: &mut L7Segment,
    tcp: &Tcp,
    offset: u32,
    len: u32,
    flags: u8,
) -> Result<(), ProbeFailure> {
    record.seq = tcp.seq.wrapping_add(offset);
    record.offset = offset;
    record.flags = flags;
    // The verifier needs the length bounded in 1..=L7_CHUNK_BYTES at the helper call.
    // LLVM proves the caller's bounds and drops a plain check, so the value is made
    // opaque first and the checks are made on what the verifier will see.
    let len = opaque(len);
    let len = if len > L7_CHUNK_BYTES as u32 {
        L7_CHUNK_BYTES as u32
    } else {
        len
    };
    record.captured = len;
    if len > 0 {
        // SAFETY: `data` has room for `L7_CHUNK_BYTES` bytes and `len` is at most that;
        // the helper checks the packet bounds.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                tcp.payload_offset + offset,
                record.data.as_mut_ptr().cast(),
                len,
            )
        };
        if ret != 0 {
            return Err(ProbeFailure::L7ReadFailed);
        }
    }
    let size = L7_SEGMENT_HEADER_BYTES + len as usize;
    // SAFETY: `size` is within the record, which is plain data.
    let bytes =
        unsafe { core::slice::from_raw_parts((record as *const L7Segment).cast::<u8>(), size) };
    let pending = L7_SEGMENTS.query(BPF_RB_AVAIL_DATA.into());
    let wakeup = if pending >= WAKEUP_THRESHOLD_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    L7_SEGMENTS
        .output::<[u8]>(bytes, wakeup.into())
        .map_err(|_| ProbeFailure::L7RingBufferFull)
}

/// `value`, hidden from the optimiser (a volatile round trip through the stack).
#[inline(always)]
fn opaque(value: u32) -> u32 {
    let slot = value;
    // SAFETY: reading a local that is initialised.
    unsafe { core::ptr::read_volatile(&raw const slot) }
}

/// Reads the IP and TCP headers; `None` for anything that is not TCP over IPv4/IPv6.
fn parse(
    ctx: &TcContext,
    src: &mut Endpoint,
    dst: &mut Endpoint,
) -> Result<Option<Tcp>, ProbeFailure> {
    let protocol = u16::from_be(ctx.skb.protocol() as u16);
    let skb_len = ctx.len();
    *src = Endpoint::default();
    *dst = Endpoint::default();
    let (l4, ip_payload) = match protocol {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(read_failed)?;
            let ihl = u32::from(version_ihl & 0x0f) * 4;
            if version_ihl >> 4 != 4 || ihl < 20 {
                return Ok(None);
            }
            if ctx.load::<u8>(ETH_HLEN + 9).map_err(read_failed)? != IPPROTO_TCP {
                return Ok(None);
            }
            // Later fragments carry no TCP header.
            let fragment = u16::from_be(ctx.load(ETH_HLEN + 6).map_err(read_failed)?);
            if fragment & 0x1fff != 0 {
                return Ok(None);
            }
            let total = u32::from(u16::from_be(ctx.load(ETH_HLEN + 2).map_err(read_failed)?));
            src.family = FAMILY_IPV4;
            dst.family = FAMILY_IPV4;
            let s: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(read_failed)?;
            let d: [u8; 4] = ctx.load(ETH_HLEN + 16).map_err(read_failed)?;
            src.addr[..4].copy_from_slice(&s);
            dst.addr[..4].copy_from_slice(&d);
            // A GSO packet above 64 KiB (BIG TCP) has a zero total length.
            let ip_len = if total == 0 {
                skb_len.saturating_sub(ETH_HLEN as u32)
            } else {
                total
            };
            (ETH_HLEN as u32 + ihl, ip_len.saturating_sub(ihl))
        }
        ETH_P_IPV6 => {
            // Extension headers are not followed: TCP must be the next header.
            if ctx.load::<u8>(ETH_HLEN + 6).map_err(read_failed)? != IPPROTO_TCP {
                return Ok(None);
            }
            let payload = u32::from(u16::from_be(ctx.load(ETH_HLEN + 4).map_err(read_failed)?));
            src.family = FAMILY_IPV6;
            dst.family = FAMILY_IPV6;
            src.addr = ctx.load(ETH_HLEN + 8).map_err(read_failed)?;
            dst.addr = ctx.load(ETH_HLEN + 24).map_err(read_failed)?;
            let payload = if payload == 0 {
                skb_len.saturating_sub((ETH_HLEN + IPV6_HLEN) as u32)
            } else {
                payload
            };
            ((ETH_HLEN + IPV6_HLEN) as u32, payload)
        }
        _ => return Ok(None),
    };
    let l4 = l4 as usize;
    src.port = u16::from_be(ctx.load(l4).map_err(read_failed)?);
    dst.port = u16::from_be(ctx.load(l4 + 2).map_err(read_failed)?);
    let seq = u32::from_be(ctx.load(l4 + 4).map_err(read_failed)?);
    let data_offset: u8 = ctx.load(l4 + 12).map_err(read_failed)?;
    let tcp_header = u32::from(data_offset >> 4) * 4;
    if tcp_header < 20 {
        return Ok(None);
    }
    // Never beyond the packet, whatever the IP header says.
    let in_packet = skb_len.saturating_sub(l4 as u32 + tcp_header);
    let payload_len = ip_payload.saturating_sub(tcp_header).min(in_packet);
    Ok(Some(Tcp {
        seq,
        payload_offset: l4 as u32 + tcp_header,
        payload_len,
    }))
}

/// Whether `a` sorts before `b` (port, then address): picks the budget key's order.
fn before(a: &Endpoint, b: &Endpoint) -> bool {
    if a.port != b.port {
        return a.port < b.port;
    }
    let (a0, a1) = halves(&a.addr);
    let (b0, b1) = halves(&b.addr);
    (a0, a1) < (b0, b1)
}

fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let mut high = [0u8; 8];
    let mut low = [0u8; 8];
    high.copy_from_slice(&addr[..8]);
    low.copy_from_slice(&addr[8..]);
    (u64::from_be_bytes(high), u64::from_be_bytes(low))
}

/// `lo` has this index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// The budget entry of a segment (see `L7FlowKey`) and which side sent it.
fn budget_key(record: &L7Segment) -> (L7FlowKey, u8) {
    let client = if record.ifindex != LOOPBACK_IFINDEX {
        None
    } else if record.sender_role == Role::Client as u8 {
        Some((&record.src, 0))
    } else if record.sender_role == Role::Server as u8 {
        Some((&record.dst, 1))
    } else {
        None
    };
    if let Some((client, sender)) = client {
        let key = L7FlowKey {
            addr_a: client.addr,
            addr_b: [0; 16],
            port_a: client.port,
            port_b: 0,
            netns: record.netns,
        };
        return (key, sender);
    }
    let src_first = before(&record.src, &record.dst);
    let (a, b) = if src_first {
        (&record.src, &record.dst)
    } else {
        (&record.dst, &record.src)
    };
    let key = L7FlowKey {
        addr_a: a.addr,
        addr_b: b.addr,
        port_a: a.port,
        port_b: b.port,
        netns: 0,
    };
    (key, if src_first { 0 } else { 1 })
}

/// Takes up to the segment's length from its sender's budget; returns the bytes to copy.
fn take_budget(tcp: &Tcp, record: &L7Segment) -> Result<u32, ProbeFailure> {
    let (key, sender) = budget_key(record);
    let budget = match L7_BUDGETS.get_ptr_mut(key) {
        Some(budget) => budget,
        None => {
            let fresh = L7Budget {
                remaining: [L7_BUDGET_BYTES; 2],
                last_sender: sender,
                _pad: [0; 7],
            };
            // Another CPU may have inserted it meanwhile; either entry will do.
            let _ = L7_BUDGETS.insert(key, fresh, BPF_NOEXIST.into());
            L7_BUDGETS.get_ptr_mut(key).ok_or(ProbeFailure::L7MapFull)?
        }
    };
    // SAFETY: map values stay valid for the duration of the program; a racing update
    // from another CPU only makes the budget approximate.
    let budget = unsafe { &mut *budget };
    let remaining = if sender == 0 {
        &mut budget.remaining[0]
    } else {
        &mut budget.remaining[1]
    };
    if budget.last_sender != sender {
        // A turn: this side starts a new message.
        *remaining = L7_BUDGET_BYTES;
        budget.last_sender = sender;
    }
    let cap = L7_CHUNK_BYTES as u32 * L7_CHUNKS_PER_SEGMENT;
    let allowed = tcp.payload_len.min(*remaining).min(cap);
    *remaining -= allowed;
    Ok(allowed)
}
