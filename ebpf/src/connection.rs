//! TCP connection lifecycle: every TCP socket in every network namespace, from
//! `connect()` (or the passive handshake) to its destruction.
//!
//! Hooks (all BTF tracepoints, first argument `struct sock *`):
//! - `inet_sock_set_state`: opens a `ConnectionState` on `CLOSE → SYN_SENT` (client,
//!   process context of `connect()`) and `SYN_RECV → ESTABLISHED` (server, softirq);
//!   records the handshake and the move to `TCP_CLOSE`.
//! - `sock_send_length` / `sock_recv_length`: payload bytes the owner moved, and the
//!   owner's pid for accepted sockets (the first call is the first moment in process context).
//! - `inet_sk_error_report`, `tcp_receive_reset`, `tcp_send_reset`: why a connection failed.
//! - `tcp_retransmit_skb`: a SYN retransmission, the last moment a connect that will time
//!   out still has its local port.
//! - `tcp_destroy_sock`: the socket is gone; its final state goes to the ring buffer.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_socket_cookie},
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use nephilia_common::{
    ConnectionEvent, ConnectionEventKind, ConnectionState, ProbeFailure, Role,
    connection::{Endpoint, FAMILY_IPV4, FAMILY_IPV6},
};

use crate::kernel::{IPPROTO_TCP, ReadFailed, Sock};

// Kernel TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// `MSG_PEEK`: a peek does not consume bytes, so it is not counted.
const MSG_PEEK: i32 = 2;

/// Connections being tracked, keyed by socket cookie.
#[map]
pub(crate) static CONNECTIONS: HashMap<u64, ConnectionState> = HashMap::with_max_entries(65_536, 0);

/// `ConnectionEvent`s for the agent.
#[map]
static CONNECTION_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Unread bytes in `CONNECTION_EVENTS` above which a submit wakes the agent. Below it the
/// agent drains on its own timer: a wake-up per event costs a context switch per
/// connection, which is most of the probes' overhead on short connections.
const WAKEUP_THRESHOLD_BYTES: u64 = 256 << 10;

/// Where `open` builds a new `ConnectionState`: it is too large for the 512-byte BPF stack
/// next to its copies.
#[map]
static SCRATCH: PerCpuArray<ConnectionState> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU failure counters, indexed by `ProbeFailure`.
#[map]
static PROBE_FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProbeFailure::COUNT, 0);

pub(crate) fn count(failure: ProbeFailure) {
    if let Some(counter) = PROBE_FAILURES.get_ptr_mut(failure as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}

fn cookie(sk: Sock) -> u64 {
    // SAFETY: `sk` is the `struct sock *` argument of a BTF tracepoint, which is what the
    // tracing flavour of this helper takes.
    unsafe { bpf_get_socket_cookie(sk.0 as *mut c_void) }
}

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

fn tracked(sk: Sock) -> Option<&'static mut ConnectionState> {
    let state = CONNECTIONS.get_ptr_mut(cookie(sk))?;
    // SAFETY: map values stay valid for the duration of the program.
    Some(unsafe { &mut *state })
}

fn emit(kind: ConnectionEventKind, state: &ConnectionState) -> Result<(), ()> {
    let Some(mut entry) = CONNECTION_EVENTS.reserve::<ConnectionEvent>(0) else {
        return Err(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable `ConnectionEvent`; the state is copied
    // in place rather than through the stack.
    unsafe {
        (*event).kind = kind as u32;
        (*event)._pad = 0;
        core::ptr::copy_nonoverlapping(state, &raw mut (*event).state, 1);
    }
    let pending = CONNECTION_EVENTS.query(BPF_RB_AVAIL_DATA.into());
    entry.submit(if pending >= WAKEUP_THRESHOLD_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    });
    Ok(())
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn on_inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock(ctx.arg(0));
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let result = match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => open(sk, Role::Client, new),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => open(sk, Role::Server, new),
        _ => transition(sk, new),
    };
    if let Err(failure) = result {
        count(failure);
    }
    0
}

fn open(sk: Sock, role: Role, new_state: i32) -> Result<(), ProbeFailure> {
    let failed = |_: ReadFailed| ProbeFailure::SetStateReadFailed;
    if sk.protocol().map_err(failed)? != IPPROTO_TCP {
        return Ok(());
    }
    let family = sk.family().map_err(failed)?;
    if family != FAMILY_IPV4 && family != FAMILY_IPV6 {
        return Ok(());
    }
    let state = SCRATCH
        .get_ptr_mut(0)
        .ok_or(ProbeFailure::SetStateMapFull)?;
    // SAFETY: the per-CPU scratch slot is only used by this program on this CPU.
    let state = unsafe { &mut *state };
    let now = now();
    state.cookie = cookie(sk);
    state.start_ns = now;
    state.established_ns = 0;
    state.close_ns = 0;
    state.first_data_ns = 0;
    state.bytes_sent = 0;
    state.bytes_received = 0;
    state.role = role as u8;
    state.tcp_state = new_state as u8;
    state.netns = sk.netns().map_err(failed)?;
    state.mark = sk.mark().map_err(failed)?;
    state.srtt_us = 0;
    state.retransmits = 0;
    state.error = 0;
    state.resets_sent = 0;
    state.resets_received = 0;
    sk.read_endpoints(family, &mut state.local, &mut state.remote)
        .map_err(failed)?;
    match role {
        // `connect()` runs in the caller's process context.
        Role::Client => record_owner(state),
        // The passive handshake completes in softirq: `current` is whoever was
        // interrupted, so the owner is learnt at its first read or write instead.
        Role::Server => {
            state.established_ns = now;
            state.pid = 0;
            state.comm = [0; 16];
        }
    }
    // By reference: a copy of the value lands on the stack beside the scratch slot, which
    // pushed the program over the verifier's 512-byte limit with LLVM 22.1.8.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "`*state` would copy the value onto the BPF stack"
    )]
    CONNECTIONS
        .insert(state.cookie, &*state, BPF_ANY.into())
        .map_err(|_| ProbeFailure::SetStateMapFull)?;
    emit(ConnectionEventKind::Opened, state).map_err(|()| ProbeFailure::SetStateRingBufferFull)
}

fn transition(sk: Sock, new_state: i32) -> Result<(), ProbeFailure> {
    // The closing handshake's intermediate states (FIN_WAIT*, CLOSE_WAIT, LAST_ACK…) are
    // not recorded: skipping them before the map lookup keeps the per-connection cost low.
    if new_state != TCP_ESTABLISHED && new_state != TCP_CLOSE {
        return Ok(());
    }
    let Some(state) = tracked(sk) else {
        return Ok(());
    };
    state.tcp_state = new_state as u8;
    let failed = |_: ReadFailed| ProbeFailure::SetStateReadFailed;
    let now = now();
    if new_state == TCP_ESTABLISHED && state.established_ns == 0 {
        state.established_ns = now;
    }
    if new_state == TCP_CLOSE {
        // `tcp_done_with_error` sets `sk_err` before the move to `TCP_CLOSE`, and the woken
        // `connect()` may clear it (`sock_error`) before `inet_sk_error_report` fires.
        record_error(sk, state).map_err(failed)?;
        state.close_ns = now;
        state.srtt_us = sk.srtt_us().map_err(failed)?;
        state.retransmits = sk.total_retrans().map_err(failed)?;
    }
    state.mark = sk.mark().map_err(failed)?;
    refresh_endpoints(sk, state).map_err(failed)
}

/// Reads the endpoints again, keeping what the kernel has already cleared. A client's
/// local port is bound only after `SYN_SENT`, and `inet_sk_state_store` fires the
/// `TCP_CLOSE` transition after `inet_put_port` zeroed it, so the port is caught at the
/// handshake, a received reset or a SYN retransmission.
fn refresh_endpoints(sk: Sock, state: &mut ConnectionState) -> Result<(), ReadFailed> {
    let mut local = Endpoint::default();
    let mut remote = Endpoint::default();
    sk.read_endpoints(state.local.family, &mut local, &mut remote)?;
    state.local.merge(&local);
    state.remote.merge(&remote);
    Ok(())
}

/// The current process owns the socket: its pid and thread name, written straight into
/// the map value (a returned `[u8; 16]` would be one more copy on the stack).
fn record_owner(state: &mut ConnectionState) {
    state.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: `comm` is 16 writable bytes of a map value, the size passed.
    if unsafe { bpf_get_current_comm(state.comm.as_mut_ptr().cast(), state.comm.len() as u32) } != 0
    {
        state.comm = [0; 16];
    }
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn on_sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret > 0 {
        count_bytes(Sock(ctx.arg(0)), ret as u64, Direction::Sent);
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn on_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret > 0 && flags & MSG_PEEK == 0 {
        count_bytes(Sock(ctx.arg(0)), ret as u64, Direction::Received);
    }
    0
}

enum Direction {
    Sent,
    Received,
}

fn count_bytes(sk: Sock, bytes: u64, direction: Direction) {
    let Some(state) = tracked(sk) else {
        return;
    };
    if state.first_data_ns == 0 {
        state.first_data_ns = now();
    }
    let counter = match direction {
        Direction::Sent => &raw mut state.bytes_sent,
        Direction::Received => &raw mut state.bytes_received,
    };
    // SAFETY: the counter is an aligned `u64` inside a map value; several threads of the
    // owner may send at once, hence the atomic add (BPF has no compare-and-swap loop for
    // `AtomicU64::fetch_add`, but it has `BPF_XADD`).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, bytes) };
    if state.pid == 0 {
        // `sock_sendmsg`/`sock_recvmsg` run in the owner's process context.
        record_owner(state);
    }
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn on_inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock(ctx.arg(0));
    if let Some(state) = tracked(sk)
        && record_error(sk, state).is_err()
    {
        count(ProbeFailure::ErrorReportReadFailed);
    }
    0
}

/// Keeps the socket's pending error, if it has one: a zero means the owner already
/// consumed it, not that there was none.
fn record_error(sk: Sock, state: &mut ConnectionState) -> Result<(), ReadFailed> {
    let error = sk.error()?;
    if error != 0 {
        state.error = error as u32;
    }
    Ok(())
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn on_tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock(ctx.arg(0));
    if let Some(state) = tracked(sk) {
        state.resets_received += 1;
        if refresh_endpoints(sk, state).is_err() {
            count(ProbeFailure::ResetReadFailed);
        }
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn on_tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock(ctx.arg(0));
    if let Some(state) = tracked(sk)
        && state.established_ns == 0
        && state.local.port == 0
        && refresh_endpoints(sk, state).is_err()
    {
        count(ProbeFailure::ResetReadFailed);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn on_tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    // A reset answering a segment for no socket has no `sk`.
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    if let Some(state) = tracked(Sock(sk)) {
        state.resets_sent += 1;
    }
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn on_tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock(ctx.arg(0));
    let Some(state) = tracked(sk) else {
        return 0;
    };
    if state.close_ns == 0 {
        state.close_ns = now();
        match (sk.srtt_us(), sk.total_retrans()) {
            (Ok(srtt), Ok(retrans)) => {
                state.srtt_us = srtt;
                state.retransmits = retrans;
            }
            _ => count(ProbeFailure::DestroyReadFailed),
        }
    }
    if emit(ConnectionEventKind::Closed, state).is_err() {
        count(ProbeFailure::DestroyRingBufferFull);
    }
    let _ = CONNECTIONS.remove(state.cookie);
    0
}
